//! RAPO rewards (paper §3.3) and group advantages.
//!
//! * rank reward, Eq. 3–5: [`crate::rank`]
//! * absolute error reward, Eq. 6: `exp(−½(|o − s|/σ)²) + ε`
//! * binary reward, Eq. 13 (Table 2's ablation): `1 if |o − s| < threshold else 0`
//! * format reward: 1 when the completion is `<think>…</think><answer>…</answer>` ([`crate::parse`])
//! * total, Eq. 7 generalised: a weighted sum of the components (RAPO: rank 1, abs 1)
//! * advantage, Eq. 9: `(r − mean(R_i)) / (std(R_i) + 1e-4)` within each image's group
//!
//! An unparseable completion (prediction NaN) gets 0 from every component (the format reward too)
//! and is left out of the rank reward's means and variances.

use crate::error::{Error, Result};
use crate::groups::Groups;
use crate::rank::{rank_reward_grouped, Ties};

/// Added to the group standard deviation in Eq. 9 so constant groups do not divide by zero.
pub const ADVANTAGE_EPS: f64 = 1e-4;

/// Weights of the reward components in the total reward (Eq. 7 is rank = abs = 1, others 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub rank: f64,
    pub abs: f64,
    pub binary: f64,
    pub format: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            rank: 1.0,
            abs: 1.0,
            binary: 0.0,
            format: 0.0,
        }
    }
}

/// Hyperparameters of the RAPO reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardConfig {
    /// Component weights of the total reward.
    pub weights: Weights,
    /// σ of the absolute error reward, Eq. 6 (paper: 0.1).
    pub sigma: f64,
    /// ε added to the absolute error reward, Eq. 6.
    pub eps: f64,
    /// γ under the square root of Eq. 3.
    pub gamma: f64,
    /// Tolerance of the binary reward, Eq. 13.
    pub threshold: f64,
    /// Treatment of equal ground truths in Eq. 5.
    pub ties: Ties,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            sigma: 0.1,
            eps: 1e-5,
            gamma: 1e-6,
            threshold: 0.1,
            ties: Ties::Strict,
        }
    }
}

impl RewardConfig {
    /// Checks every parameter; called by the reward functions before any work.
    pub fn validate(&self) -> Result<()> {
        let positive = |arg, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(Error::Parameter {
                    arg,
                    value,
                    requirement: "must be a finite number > 0",
                })
            }
        };
        let non_negative = |arg, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(Error::Parameter {
                    arg,
                    value,
                    requirement: "must be a finite number >= 0",
                })
            }
        };
        positive("sigma", self.sigma)?;
        non_negative("eps", self.eps)?;
        positive("gamma", self.gamma)?;
        non_negative("threshold", self.threshold)?;
        let w = &self.weights;
        for (arg, value) in [
            ("weights.rank", w.rank),
            ("weights.abs", w.abs),
            ("weights.binary", w.binary),
            ("weights.format", w.format),
        ] {
            if !value.is_finite() {
                return Err(Error::Parameter {
                    arg,
                    value,
                    requirement: "must be finite",
                });
            }
        }
        Ok(())
    }
}

/// Per-completion outputs of [`rapo`], in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct RapoOutput {
    pub total: Vec<f64>,
    pub rank: Vec<f64>,
    pub abs: Vec<f64>,
    pub binary: Vec<f64>,
    pub format: Vec<f64>,
    pub advantages: Vec<f64>,
    /// Completions whose score could not be parsed (NaN predictions).
    pub num_unparseable: usize,
}

/// Largest |prediction| accepted: scores are O(1) (parsed ones lie in [0, 1]); the bound keeps
/// every mean and variance finite.
pub const MAX_ABS_PREDICTION: f64 = 1e150;

/// Predictions may be NaN (unparseable) but must otherwise be finite and at most
/// [`MAX_ABS_PREDICTION`] in magnitude.
pub(crate) fn check_predictions(pred: &[f64]) -> Result<()> {
    for (index, &value) in pred.iter().enumerate() {
        if value.is_infinite() {
            return Err(Error::NonFinite {
                arg: "pred",
                index,
                value,
            });
        }
        if value.abs() > MAX_ABS_PREDICTION {
            return Err(Error::OutOfRange {
                arg: "pred",
                index,
                value,
                range: "[-1e150, 1e150] (or NaN)",
            });
        }
    }
    Ok(())
}

/// Ground truths are finite scores in [0, 1] (the paper normalises every dataset's MOS to [0, 1]).
pub(crate) fn check_ground_truth(gt: &[f64]) -> Result<()> {
    if gt.is_empty() {
        return Err(Error::Empty { arg: "gt" });
    }
    for (index, &value) in gt.iter().enumerate() {
        if !value.is_finite() {
            return Err(Error::NonFinite {
                arg: "gt",
                index,
                value,
            });
        }
        if !(0.0..=1.0).contains(&value) {
            return Err(Error::OutOfRange {
                arg: "gt",
                index,
                value,
                range: "[0, 1]",
            });
        }
    }
    Ok(())
}

fn check_groups_gt(groups: &Groups, gt: &[f64]) -> Result<()> {
    if gt.len() != groups.num_groups() {
        return Err(Error::Length {
            arg: "gt",
            got: gt.len(),
            expected: groups.num_groups(),
            why: "one ground truth per image",
        });
    }
    Ok(())
}

/// Absolute error reward, Eq. 6, element-wise: `exp(−½(|o − s|/σ)²) + ε`; NaN predictions get 0.
pub fn abs_reward(pred: &[f64], gt: &[f64], sigma: f64, eps: f64) -> Result<Vec<f64>> {
    RewardConfig {
        sigma,
        eps,
        ..Default::default()
    }
    .validate()?;
    check_pair(pred, gt)?;
    Ok(pred
        .iter()
        .zip(gt)
        .map(|(&o, &s)| abs_one(o, s, sigma, eps))
        .collect())
}

/// Binary reward, Eq. 13, element-wise: 1 when |o − s| < threshold, else 0 (NaN gets 0).
pub fn binary_reward(pred: &[f64], gt: &[f64], threshold: f64) -> Result<Vec<f64>> {
    RewardConfig {
        threshold,
        ..Default::default()
    }
    .validate()?;
    check_pair(pred, gt)?;
    Ok(pred
        .iter()
        .zip(gt)
        .map(|(&o, &s)| binary_one(o, s, threshold))
        .collect())
}

fn check_pair(pred: &[f64], gt: &[f64]) -> Result<()> {
    if pred.is_empty() {
        return Err(Error::Empty { arg: "pred" });
    }
    if gt.len() != pred.len() {
        return Err(Error::Length {
            arg: "gt",
            got: gt.len(),
            expected: pred.len(),
            why: "one ground truth per prediction",
        });
    }
    check_predictions(pred)?;
    check_ground_truth(gt)
}

#[inline]
fn abs_one(o: f64, s: f64, sigma: f64, eps: f64) -> f64 {
    if o.is_nan() {
        return 0.0;
    }
    let u = (o - s).abs() / sigma;
    (-0.5 * (u * u)).exp() + eps
}

#[inline]
fn binary_one(o: f64, s: f64, threshold: f64) -> f64 {
    if !o.is_nan() && (o - s).abs() < threshold {
        1.0
    } else {
        0.0
    }
}

/// Rank reward, Eq. 3–5, of every completion (input order). `gt` has one value per group.
pub fn rank_reward(
    pred: &[f64],
    gt: &[f64],
    groups: &Groups,
    gamma: f64,
    ties: Ties,
) -> Result<Vec<f64>> {
    RewardConfig {
        gamma,
        ..Default::default()
    }
    .validate()?;
    groups.check_len("pred", pred.len())?;
    check_groups_gt(groups, gt)?;
    check_predictions(pred)?;
    check_ground_truth(gt)?;
    let grouped = groups.gather(pred);
    Ok(groups.scatter(rank_reward_grouped(&grouped, gt, groups, gamma, ties)))
}

/// Groups whose largest |reward| exceeds this are scaled down by a power of two before their
/// statistics: squared deviations of rewards near 1e154 would overflow, and the sums of huge rewards
/// even sooner. Below it every product and sum is finite for any group size, so the arithmetic runs
/// unscaled. (2^480 keeps `k · (2 · 2^480)²` finite for up to 2^40 members.)
const SCALE_ABOVE: f64 = f64::from_bits((1023 + 480) << 52);

/// `2^exponent` for exponents of normal numbers (−1022..=1023).
fn pow2(exponent: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&exponent));
    f64::from_bits(((exponent + 1023) as u64) << 52)
}

/// Group-relative advantages, Eq. 9: `(r − mean(R_i)) / (std(R_i) + 1e-4)` with the unbiased
/// standard deviation over each group's rewards; 0 for groups of one.
///
/// Any finite rewards work: a group whose rewards are too large to square is computed on rewards
/// scaled by a power of two (with the 1e-4 scaled alike), which is exact, so its advantages are
/// those of the formula rather than 0 or NaN. Other groups are computed unscaled.
pub fn group_advantages(rewards: &[f64], groups: &Groups) -> Result<Vec<f64>> {
    groups.check_len("rewards", rewards.len())?;
    if let Some(index) = rewards.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            arg: "rewards",
            index,
            value: rewards[index],
        });
    }
    let mut out = vec![0.0; rewards.len()];
    for g in 0..groups.num_groups() {
        let members = groups.members(g);
        let k = members.len();
        if k < 2 {
            continue;
        }
        let largest = members
            .iter()
            .fold(0.0f64, |acc, &m| acc.max(rewards[m].abs()));
        let scale = if largest > SCALE_ABOVE {
            // Brings the largest |reward| into [2^10, 2^11): far from overflow, and the scale
            // itself stays a normal number (largest < 2^1024).
            let exponent = ((largest.to_bits() >> 52) & 0x7ff) as i32 - 1023;
            pow2(10 - exponent)
        } else {
            1.0
        };
        let r = |m: usize| rewards[m] * scale;
        // Mean as first + mean offset: exact for equal rewards, so a constant group gets
        // advantages of exactly 0 rather than ±1 ulp / 1e-4.
        let first = r(members[0]);
        let offset: f64 = members.iter().map(|&m| r(m) - first).sum::<f64>() / k as f64;
        let mean = first + offset;
        let ss: f64 = members.iter().map(|&m| (r(m) - mean) * (r(m) - mean)).sum();
        let denom = (ss / (k - 1) as f64).sqrt() + ADVANTAGE_EPS * scale;
        for &m in members {
            out[m] = (r(m) - mean) / denom;
        }
    }
    Ok(out)
}

/// The full RAPO reward of one batch.
///
/// * `pred`: one parsed score per completion (NaN when unparseable), input order.
/// * `gt`: one ground truth in [0, 1] per group.
/// * `format`: the format reward per completion (see [`crate::format_ok`]), required when
///   `weights.format != 0`; it counts only for completions with a parseable score.
pub fn rapo(
    pred: &[f64],
    gt: &[f64],
    groups: &Groups,
    config: &RewardConfig,
    format: Option<&[f64]>,
) -> Result<RapoOutput> {
    config.validate()?;
    groups.check_len("pred", pred.len())?;
    check_groups_gt(groups, gt)?;
    check_predictions(pred)?;
    check_ground_truth(gt)?;
    if let Some(f) = format {
        groups.check_len("format", f.len())?;
        if let Some(index) = f.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                arg: "format",
                index,
                value: f[index],
            });
        }
    } else if config.weights.format != 0.0 {
        return Err(Error::Parameter {
            arg: "weights.format",
            value: config.weights.format,
            requirement: "needs completions (the format reward is computed from the text)",
        });
    }

    let grouped = groups.gather(pred);
    let rank = if config.weights.rank != 0.0 {
        groups.scatter(rank_reward_grouped(
            &grouped,
            gt,
            groups,
            config.gamma,
            config.ties,
        ))
    } else {
        // Not requested: skip the O(N²K) work but still report the component as zeros.
        vec![0.0; pred.len()]
    };
    let mut gt_item = vec![0.0; pred.len()];
    for (g, &s) in gt.iter().enumerate() {
        for &m in groups.members(g) {
            gt_item[m] = s;
        }
    }
    let abs: Vec<f64> = pred
        .iter()
        .zip(&gt_item)
        .map(|(&o, &s)| abs_one(o, s, config.sigma, config.eps))
        .collect();
    let binary: Vec<f64> = pred
        .iter()
        .zip(&gt_item)
        .map(|(&o, &s)| binary_one(o, s, config.threshold))
        .collect();
    // An unparseable completion gets 0 from every component, the format reward included.
    let format: Vec<f64> = match format {
        Some(f) => f
            .iter()
            .zip(pred)
            .map(|(&v, o)| if o.is_nan() { 0.0 } else { v })
            .collect(),
        None => vec![0.0; pred.len()],
    };
    let w = config.weights;
    let total: Vec<f64> = (0..pred.len())
        .map(|m| {
            ((w.rank * rank[m] + w.abs * abs[m]) + w.binary * binary[m]) + w.format * format[m]
        })
        .collect();
    // Every component is bounded (by 1, or 1 + eps), so only large weights (with a large eps)
    // overflow; left to `group_advantages` it would blame `rewards`, which the caller never gave.
    if let Some(index) = total.iter().position(|v| !v.is_finite()) {
        return Err(Error::Overflow {
            arg: "weights",
            what: "the weighted total reward (Eq. 7)",
            index,
            value: total[index],
        });
    }
    let advantages = group_advantages(&total, groups)?;
    Ok(RapoOutput {
        total,
        rank,
        abs,
        binary,
        format,
        advantages,
        num_unparseable: pred.iter().filter(|v| v.is_nan()).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::FRAC_1_SQRT_2;

    #[test]
    fn advantages_of_rewards_too_large_to_square() {
        let groups = Groups::uniform(2, 2).unwrap();
        for big in [1e200, 1e308, f64::MAX] {
            let got = group_advantages(&[big, -big, 2.0, 3.0], &groups).unwrap();
            for (g, want) in got.iter().zip([FRAC_1_SQRT_2, -FRAC_1_SQRT_2]) {
                assert!((g - want).abs() < 1e-15, "{big:e}: got {got:?}");
            }
            // The ordinary group is untouched by the other one's scaling.
            assert_eq!(
                &got[2..],
                &group_advantages(&[2.0, 3.0], &Groups::uniform(1, 2).unwrap()).unwrap()[..]
            );
        }
        // Equal huge rewards: exactly 0, as for any constant group.
        let got = group_advantages(&[1e300; 3], &Groups::uniform(1, 3).unwrap()).unwrap();
        assert!(got.iter().all(|&v| v == 0.0), "{got:?}");
    }

    #[test]
    fn huge_weights_scale_the_total_not_the_advantages() {
        let (pred, gt) = ([0.1, 0.9, 0.5, 0.45], [0.2, 0.6]);
        let groups = Groups::uniform(2, 2).unwrap();
        let with = |w: f64| {
            let config = RewardConfig {
                weights: Weights {
                    rank: w,
                    abs: w,
                    ..Default::default()
                },
                ..Default::default()
            };
            rapo(&pred, &gt, &groups, &config, None)
        };
        let unit = with(1.0).unwrap();
        let huge = with(1e200).unwrap();
        for (a, b) in huge.advantages.iter().zip(&unit.advantages) {
            // Only the 1e-4 of Eq. 9 weighs less next to a 1e200-times larger spread.
            assert!(
                a.abs() > 0.5 && (a - b).abs() < 1e-3,
                "{:?} vs {:?}",
                huge.advantages,
                unit.advantages
            );
        }
        // Perfect predictions: rank + abs ≈ 2, so 1e308·2 overflows.
        let config = RewardConfig {
            weights: Weights {
                rank: 1e308,
                abs: 1e308,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = rapo(&[0.2, 0.2, 0.6, 0.6], &gt, &groups, &config, None).unwrap_err();
        assert_eq!(err.arg(), "weights");
        assert!(err.to_string().contains("total reward"), "{err}");
    }

    #[test]
    fn non_finite_format_is_an_error_naming_format() {
        let config = RewardConfig {
            weights: Weights {
                format: 1.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = rapo(
            &[0.5, 0.5],
            &[0.5],
            &Groups::uniform(1, 2).unwrap(),
            &config,
            Some(&[1.0, f64::NAN]),
        )
        .unwrap_err();
        assert_eq!(err.arg(), "format");
    }
}
