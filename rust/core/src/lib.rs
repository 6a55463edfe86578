//! aesr1-core: the numerical core of aesr1, in pure Rust (no Python needed to build or test).
//!
//! * RAPO rewards of the Aes-R1 paper (§3.3): rank reward (Eq. 3–5), absolute error reward
//!   (Eq. 6), binary reward (Eq. 13), format reward, weighted total (Eq. 7) and group-relative
//!   advantages (Eq. 9): [`rewards`], [`rank`].
//! * The FRank preference probability of Eq. 3, P(A more aesthetic than B) from two images' score
//!   means and standard deviations: [`preference_probability`].
//! * Score parsing of `<answer>…</answer>` completions: [`parse`].
//! * Evaluation metrics PLCC, SRCC and Kendall's tau-b: [`metrics`].
//! * The normal distribution function Φ used by the rank reward: [`normal`].
//! * Whether the host has a core to spare, for callers that choose a thread pool: [`host`].
//!
//! Results are bit-identical for any number of threads. All input errors are [`Error`] values
//! naming the offending argument; nothing panics on bad input.

// Every unsafe block states why it is sound, next to it.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod groups;
pub mod host;
pub mod metrics;
pub mod normal;
pub mod parse;
pub mod rank;
pub mod rewards;
mod simd;

pub use error::{Error, Result};
pub use groups::Groups;
pub use metrics::{evaluate, krcc, plcc, srcc, Correlations, NanPolicy};
pub use normal::ndtr;
pub use parse::{format_ok, format_rewards, parse_score, parse_scores};
pub use rank::{group_stats, preference_probability, GroupStats, Ties};
pub use rewards::{
    abs_reward, binary_reward, group_advantages, rank_reward, rapo, RapoOutput, RewardConfig,
    Weights,
};

/// Version of the crate (the Python package reports the same).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
