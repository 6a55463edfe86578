//! The one error type of the crate. Every variant names the offending argument, so bindings can
//! surface it unchanged (the Python binding raises `ValueError` with this message).

/// Invalid input to a reward or metric function. Checked before any heavy work starts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An argument has no elements.
    #[error("`{arg}` is empty")]
    Empty { arg: &'static str },
    /// Two arguments that must agree in length do not.
    #[error("`{arg}` has length {got}, expected {expected} ({why})")]
    Length {
        arg: &'static str,
        got: usize,
        expected: usize,
        why: &'static str,
    },
    /// A value that must be finite is NaN or infinite.
    #[error("`{arg}` must be finite, found {value} at index {index}")]
    NonFinite {
        arg: &'static str,
        index: usize,
        value: f64,
    },
    /// A value lies outside its allowed range.
    #[error("`{arg}` must lie in {range}, found {value} at index {index}")]
    OutOfRange {
        arg: &'static str,
        index: usize,
        value: f64,
        range: &'static str,
    },
    /// A scalar parameter is invalid.
    #[error("`{arg}` {requirement}, got {value}")]
    Parameter {
        arg: &'static str,
        value: f64,
        requirement: &'static str,
    },
    /// Too few observations for a statistic.
    #[error("`{arg}` needs at least {needed} points, got {got}")]
    TooFew {
        arg: &'static str,
        needed: usize,
        got: usize,
    },
    /// Group labels are inconsistent with the other inputs.
    #[error("`{arg}`: {msg}")]
    Groups { arg: &'static str, msg: String },
    /// A result overflows because an argument is too large in magnitude.
    #[error("`{arg}` is too large: {what} at index {index} overflows to {value}")]
    Overflow {
        arg: &'static str,
        what: &'static str,
        index: usize,
        value: f64,
    },
    /// A denominator is zero although every argument is valid on its own.
    #[error("`{arg}`: {what} is 0 at index {index}, a division by zero (make `{arg}` > 0)")]
    ZeroDivisor {
        arg: &'static str,
        what: &'static str,
        index: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The argument the error is about.
    pub fn arg(&self) -> &'static str {
        match self {
            Error::Empty { arg }
            | Error::Length { arg, .. }
            | Error::NonFinite { arg, .. }
            | Error::OutOfRange { arg, .. }
            | Error::Parameter { arg, .. }
            | Error::TooFew { arg, .. }
            | Error::Groups { arg, .. }
            | Error::Overflow { arg, .. }
            | Error::ZeroDivisor { arg, .. } => arg,
        }
    }
}
