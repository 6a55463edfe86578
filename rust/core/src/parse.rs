//! Reading scores out of completions, and the format check.
//!
//! The scoring prompt (paper Appendix B) asks for `<think>…</think><answer>score</answer>`.
//!
//! * Score: among the complete `<answer>…</answer>` blocks, the last one whose content is a single
//!   decimal number in [0, 1] (whitespace around it allowed); NaN when there is none. A block is
//!   an `<answer>` and the next `</answer>` with no `<answer>` in between (the regex
//!   `<answer>((?:(?!<answer>).)*?)</answer>` applied left to right). A decimal number is
//!   `[+-]?(\d+(\.\d*)?|\.\d+)` with ASCII digits: no exponent, no `nan`/`inf`.
//! * Format: after trimming whitespace the text is `<think>T</think>`, optional whitespace,
//!   `<answer>A</answer>`, where T and A contain none of the four tags.
//!
//! Whitespace means Python's `string.whitespace` (space, \t, \n, \r, \v, \f), so the Python
//! reference and this parser agree on every input.

use rayon::prelude::*;

const OPEN: &str = "<answer>";
const CLOSE: &str = "</answer>";
const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn trim_ws(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_ws(c as u8))
}

/// The value of `content` if it is one decimal number in [0, 1], surrounded by optional
/// whitespace.
fn decimal_in_unit_interval(content: &str) -> Option<f64> {
    let number = trim_ws(content);
    let bytes = number.as_bytes();
    let unsigned = match bytes.first() {
        Some(b'+' | b'-') => &bytes[1..],
        _ => bytes,
    };
    let int_digits = unsigned.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = &unsigned[int_digits..];
    let frac_digits = match rest.split_first() {
        None => 0,
        Some((b'.', frac)) => {
            let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
            if n != frac.len() {
                return None;
            }
            n
        }
        Some(_) => return None,
    };
    if int_digits + frac_digits == 0 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    // `+ 0.0` turns -0 into 0.
    (0.0..=1.0).contains(&value).then_some(value + 0.0)
}

/// The score of one completion, or NaN when it has no valid answer (see the module docs).
pub fn parse_score(text: &str) -> f64 {
    let bytes = text.as_bytes();
    let mut score = f64::NAN;
    let mut open: Option<usize> = None;
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'<') {
        i += offset;
        let rest = &text[i..];
        if rest.starts_with(OPEN) {
            i += OPEN.len();
            open = Some(i);
        } else if rest.starts_with(CLOSE) {
            if let Some(start) = open.take() {
                if let Some(value) = decimal_in_unit_interval(&text[start..i]) {
                    score = value;
                }
            }
            i += CLOSE.len();
        } else {
            i += 1;
        }
    }
    score
}

fn has_tag(s: &str) -> bool {
    [THINK_OPEN, THINK_CLOSE, OPEN, CLOSE]
        .iter()
        .any(|tag| s.contains(tag))
}

/// Whether the completion is exactly `<think>…</think><answer>…</answer>` (see the module docs).
pub fn format_ok(text: &str) -> bool {
    let Some(rest) = trim_ws(text).strip_prefix(THINK_OPEN) else {
        return false;
    };
    let Some(think_end) = rest.find(THINK_CLOSE) else {
        return false;
    };
    let think = &rest[..think_end];
    let after = trim_ws_start(&rest[think_end + THINK_CLOSE.len()..]);
    let Some(answer) = after.strip_prefix(OPEN).and_then(|a| a.strip_suffix(CLOSE)) else {
        return false;
    };
    !has_tag(think) && !has_tag(answer)
}

fn trim_ws_start(s: &str) -> &str {
    s.trim_start_matches(|c: char| c.is_ascii() && is_ws(c as u8))
}

/// Below this many completions the thread pool costs more than it saves.
const PARALLEL_MIN: usize = 256;

/// [`parse_score`] over a batch, in parallel for large batches.
pub fn parse_scores<S: AsRef<str> + Sync>(texts: &[S]) -> Vec<f64> {
    if texts.len() < PARALLEL_MIN {
        texts.iter().map(|t| parse_score(t.as_ref())).collect()
    } else {
        texts
            .par_iter()
            .with_min_len(64)
            .map(|t| parse_score(t.as_ref()))
            .collect()
    }
}

/// Format reward over a batch: 1.0 where [`format_ok`], else 0.0.
pub fn format_rewards<S: AsRef<str> + Sync>(texts: &[S]) -> Vec<f64> {
    let one = |t: &S| if format_ok(t.as_ref()) { 1.0 } else { 0.0 };
    if texts.len() < PARALLEL_MIN {
        texts.iter().map(one).collect()
    } else {
        texts.par_iter().with_min_len(64).map(one).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores() {
        assert_eq!(parse_score("<think>x</think><answer>0.85</answer>"), 0.85);
        assert_eq!(parse_score("<answer> 1 </answer>"), 1.0);
        assert_eq!(parse_score("<answer>.5</answer>"), 0.5);
        assert_eq!(parse_score("<answer>0.</answer>"), 0.0);
        assert_eq!(
            parse_score("<answer>-0.0</answer>").to_bits(),
            0.0f64.to_bits()
        );
        assert_eq!(
            parse_score("<answer>0.3</answer> then <answer>0.7</answer>"),
            0.7
        );
        assert_eq!(
            parse_score("<answer>0.3</answer> then <answer>high</answer>"),
            0.3
        );
        assert_eq!(parse_score("<answer><answer>0.4</answer>"), 0.4);
        assert_eq!(parse_score("<answer>0.2<answer>0.4</answer>"), 0.4);
        for bad in [
            "",
            "0.5",
            "<answer>0.5",
            "<answer>1.5</answer>",
            "<answer>0.5 0.6</answer>",
            "<answer>5e-1</answer>",
            "<answer>nan</answer>",
            "<answer>inf</answer>",
            "<answer>.</answer>",
            "<answer>+</answer>",
            "<answer>-0.1</answer>",
            "<answer>0.5/1</answer>",
            "<answer>\u{00a0}0.5</answer>",
            "<answer>\u{0661}</answer>",
        ] {
            assert!(parse_score(bad).is_nan(), "{bad:?}");
        }
    }

    #[test]
    fn format() {
        assert!(format_ok("<think>a</think><answer>0.5</answer>"));
        assert!(format_ok("  <think>\na\n</think>\n<answer>x</answer>\n"));
        assert!(format_ok("<think></think><answer></answer>"));
        assert!(!format_ok("<think>a</think>b<answer>0.5</answer>"));
        assert!(!format_ok("<think>a</think><answer>0.5</answer>c"));
        assert!(!format_ok("x<think>a</think><answer>0.5</answer>"));
        assert!(!format_ok(
            "<think>a<answer>1</answer></think><answer>0.5</answer>"
        ));
        assert!(!format_ok("<think>a</think><answer>0.5</answer></answer>"));
        assert!(!format_ok(
            "<think>a</think><think>b</think><answer>0.5</answer>"
        ));
        assert!(!format_ok("<answer>0.5</answer>"));
    }
}
