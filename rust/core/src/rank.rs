//! Relative rank reward (paper Eq. 3–5), the FRank fidelity between predicted and true order.
//!
//! For completion k of image i with parsed score o_ik:
//!
//! ```text
//! p_ikj    = Φ((o_ik − μ_j) / sqrt(σ_i² + σ_j² + γ))                   (Eq. 3)
//! p_c(i,j) = 1 if s_i >= s_j else 0     (ties = Half: 1/2 when s_i == s_j)   (Eq. 5)
//! r_rank   = mean over j in J_i of sqrt(p_c p_ikj) + sqrt((1 − p_c)(1 − p_ikj))   (Eq. 4)
//! ```
//!
//! μ_j and σ_j² are the mean and unbiased variance of image j's parseable predictions (variance 0
//! with fewer than two), J_i the other images with at least one parseable prediction. An empty J_i
//! gives 0; unparseable predictions (NaN) get 0 and are left out of μ and σ².
//!
//! With p_c ∈ {0, 1} a term is sqrt(Φ(±z)), so each pair costs one Φ and one square root; 1 − p is
//! evaluated as Φ(−z), which keeps the small tail exact instead of rounding it to zero.
//!
//! Cost is O(N²K). Images are processed in parallel, but each completion's sum over partners runs
//! on one thread in a fixed order, so results are bit-identical for any number of threads.
//!
//! [`preference_probability`] evaluates Eq. 3 on its own, P(A more aesthetic than B) from two
//! images' means and standard deviations, with the same code as the reward.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::groups::Groups;
use crate::normal::{ndtr, ndtr_pair, phi};
use crate::simd::{Lanes8, Portable8};

/// How Eq. 5 treats two images with equal ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ties {
    /// p_c = 1 when s_i == s_j, as Eq. 5 is written.
    #[default]
    Strict,
    /// p_c = 1/2 when s_i == s_j.
    Half,
}

/// Count, mean and unbiased variance of one image's parseable predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupStats {
    pub count: usize,
    pub mean: f64,
    /// Unbiased (ddof = 1) variance; 0 when count < 2.
    pub var: f64,
}

/// Statistics of each group's non-NaN values; `grouped` is in grouped order.
pub fn group_stats(grouped: &[f64], groups: &Groups) -> Vec<GroupStats> {
    (0..groups.num_groups())
        .map(|g| {
            let values = &grouped[groups.span(g)];
            let (count, sum) = values
                .iter()
                .filter(|v| !v.is_nan())
                .fold((0usize, 0.0), |(c, s), &v| (c + 1, s + v));
            if count == 0 {
                return GroupStats {
                    count,
                    mean: f64::NAN,
                    var: 0.0,
                };
            }
            let mean = sum / count as f64;
            let var = if count >= 2 {
                let ss: f64 = values
                    .iter()
                    .filter(|v| !v.is_nan())
                    .map(|&v| (v - mean) * (v - mean))
                    .sum();
                ss / (count - 1) as f64
            } else {
                0.0
            };
            GroupStats { count, mean, var }
        })
        .collect()
}

/// Partner images (those with a parseable prediction), sorted by mean and padded to whole
/// vectors of eight. Sorting makes the arguments of consecutive Φ evaluations similar, so vectors
/// mostly fall in one of Φ's ranges and take its shortcut (see `normal::phi`); the order depends
/// on the data alone.
struct Partners {
    /// Number of partners (the buffers below hold `n` rounded up to a multiple of 8).
    n: usize,
    /// Position of each image in the sorted order (`usize::MAX` when it is not a partner).
    position: Vec<usize>,
    mean: Vec<f64>,
    var: Vec<f64>,
    gt: Vec<f64>,
}

impl Partners {
    fn new(stats: &[GroupStats], gt: &[f64]) -> Self {
        let mut image: Vec<usize> = (0..stats.len()).filter(|&g| stats[g].count > 0).collect();
        image.sort_by(|&a, &b| stats[a].mean.total_cmp(&stats[b].mean).then(a.cmp(&b)));
        let n = image.len();
        let mut position = vec![usize::MAX; stats.len()];
        for (p, &g) in image.iter().enumerate() {
            position[g] = p;
        }
        // Padding repeats the last partner, so the last vector's lanes stay in one range of Φ;
        // the kernels mask padding out.
        let padded = |f: &dyn Fn(usize) -> f64| {
            let mut v: Vec<f64> = image.iter().map(|&g| f(g)).collect();
            let last = v.last().copied().unwrap_or(0.0);
            v.resize(n.div_ceil(8) * 8, last);
            v
        };
        Self {
            n,
            mean: padded(&|g| stats[g].mean),
            var: padded(&|g| stats[g].var),
            gt: padded(&|g| gt[g]),
            position,
        }
    }
}

/// 1 / sqrt(σ_i² + σ_j² + γ), the scale of Eq. 3's argument. The rank kernels compute the same
/// reciprocal eight lanes at a time with the same operations, so scalar and vector paths agree
/// bit for bit.
#[inline]
pub(crate) fn inv_spread(var_i: f64, var_j: f64, gamma: f64) -> f64 {
    1.0 / (var_i + var_j + gamma).sqrt()
}

/// The argument of Φ in Eq. 3, (o − μ_j) · inv_spread.
#[inline]
pub(crate) fn eq3_argument(o: f64, mu_j: f64, inv_spread: f64) -> f64 {
    (o - mu_j) * inv_spread
}

/// Below this many pairs waking the thread pool costs more than evaluating them on one thread.
const PREFERENCE_SEQUENTIAL_BELOW: usize = 1 << 14;

/// The FRank preference probability of paper Eq. 3 for each pair (A, B):
///
/// ```text
/// P(A more aesthetic than B) = Φ((μ_A − μ_B) / sqrt(σ_A² + σ_B² + γ))
/// ```
///
/// the probability that s_A − s_B > 0 when each score is Gaussian, s ~ N(μ, σ²), and γ keeps the
/// denominator positive (Eq. 3 with o_ik replaced by the image's mean μ_i). It is the Φ of the
/// rank reward (Eq. 4), computed by the same code: for two images with one prediction each
/// (σ = 0) it is the reward's Φ bit for bit. P(A, B) + P(B, A) = 1 up to one rounding, and the
/// small tail keeps full relative accuracy.
///
/// All four slices hold one value per pair (an empty batch gives an empty result). Errors, before
/// any work: `gamma` not finite or negative; a slice whose length differs from `mu_a`'s; a μ not
/// finite; a σ not finite or negative; σ_A² + σ_B² + γ infinite ([`Error::Overflow`]) or zero
/// ([`Error::ZeroDivisor`]: σ_A = σ_B = 0, or squares that underflow, with γ = 0).
pub fn preference_probability(
    mu_a: &[f64],
    std_a: &[f64],
    mu_b: &[f64],
    std_b: &[f64],
    gamma: f64,
) -> Result<Vec<f64>> {
    if !(gamma.is_finite() && gamma >= 0.0) {
        return Err(Error::Parameter {
            arg: "gamma",
            value: gamma,
            requirement: "must be a finite number >= 0",
        });
    }
    let n = mu_a.len();
    for (arg, values) in [("std_a", std_a), ("mu_b", mu_b), ("std_b", std_b)] {
        if values.len() != n {
            return Err(Error::Length {
                arg,
                got: values.len(),
                expected: n,
                why: "one value per pair, as in `mu_a`",
            });
        }
    }
    for (arg, values) in [("mu_a", mu_a), ("mu_b", mu_b)] {
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                arg,
                index,
                value: values[index],
            });
        }
    }
    for (arg, values) in [("std_a", std_a), ("std_b", std_b)] {
        for (index, &value) in values.iter().enumerate() {
            if !value.is_finite() {
                return Err(Error::NonFinite { arg, index, value });
            }
            if value < 0.0 {
                return Err(Error::OutOfRange {
                    arg,
                    index,
                    value,
                    range: "[0, inf)",
                });
            }
        }
    }
    // Checked on the computed sum, not on the inputs: a tiny nonzero σ squares to 0 and a huge
    // one to infinity, and either would turn Φ's argument into NaN.
    let variances = |i: usize| (std_a[i] * std_a[i], std_b[i] * std_b[i]);
    for index in 0..n {
        let (var_a, var_b) = variances(index);
        let total = var_a + var_b + gamma;
        if total.is_infinite() {
            return Err(Error::Overflow {
                arg: if var_a.is_infinite() {
                    "std_a"
                } else {
                    "std_b"
                },
                what: "std_a² + std_b² + gamma",
                index,
                value: total,
            });
        }
        if total == 0.0 {
            return Err(Error::ZeroDivisor {
                arg: "gamma",
                what: "std_a² + std_b² + gamma",
                index,
            });
        }
    }
    let one = |i: usize| {
        let (var_a, var_b) = variances(i);
        ndtr(eq3_argument(
            mu_a[i],
            mu_b[i],
            inv_spread(var_a, var_b, gamma),
        ))
    };
    // Each value depends on its own pair only, so splitting the batch changes no bits.
    Ok(if n < PREFERENCE_SEQUENTIAL_BELOW {
        (0..n).map(one).collect()
    } else {
        (0..n).into_par_iter().map(one).collect()
    })
}

/// Rank reward of every completion, in grouped order. `gt` holds one ground truth per group.
pub(crate) fn rank_reward_grouped(
    grouped: &[f64],
    gt: &[f64],
    groups: &Groups,
    gamma: f64,
    ties: Ties,
) -> Vec<f64> {
    let stats = group_stats(grouped, groups);
    let partners = Partners::new(&stats, gt);
    let mut out = vec![0.0; grouped.len()];
    // Disjoint output slices, one per group, so rows can be written in parallel.
    let mut rows: Vec<(usize, &mut [f64])> = Vec::with_capacity(groups.num_groups());
    let mut rest = out.as_mut_slice();
    for g in 0..groups.num_groups() {
        let (head, tail) = rest.split_at_mut(groups.span(g).len());
        rows.push((g, head));
        rest = tail;
    }
    let run = |(g, row): (usize, &mut [f64])| {
        let p = partners.position[g];
        if p != usize::MAX {
            let values = &grouped[groups.span(g)];
            rank_row(p, values, stats[g].var, gt[g], &partners, gamma, ties, row);
        }
    };
    // Waking the pool costs more than tiny batches take.
    if grouped.len() * partners.n < 4096 {
        rows.into_iter().for_each(run);
    } else {
        rows.into_par_iter().for_each(run);
    }
    out
}

/// Rank rewards of one image's completions; `me` is the image's position among the partners.
#[allow(clippy::too_many_arguments)]
fn rank_row(
    me: usize,
    values: &[f64],
    var_i: f64,
    gt_i: f64,
    partners: &Partners,
    gamma: f64,
    ties: Ties,
    out: &mut [f64],
) {
    let half = ties == Ties::Half;
    let tied: Vec<usize> = if half {
        (0..partners.n)
            .filter(|&p| p != me && partners.gt[p] == gt_i)
            .collect()
    } else {
        Vec::new()
    };
    let count = partners.n - 1;
    if count == 0 {
        return;
    }
    let row = Row {
        me,
        gt_i,
        var_i,
        gamma,
        half,
        partners,
    };
    // Completions of one image often give the same score (two-decimal answers): evaluate each
    // distinct score once. Equal inputs give equal bits, so this changes no result (-0 and +0
    // give the same terms, so `+ 0.0` may merge them).
    let mut distinct: Vec<f64> = values
        .iter()
        .filter(|v| !v.is_nan())
        .map(|v| v + 0.0)
        .collect();
    distinct.sort_unstable_by(f64::total_cmp);
    distinct.dedup_by(|a, b| a == b);
    let mut sums = vec![0.0; distinct.len()];
    row.partner_sums(&distinct, &mut sums);
    for (&v, o) in values.iter().zip(out.iter_mut()) {
        if v.is_nan() {
            continue;
        }
        let key = v + 0.0;
        *o = sums[distinct.partition_point(|d| d.total_cmp(&key).is_lt())];
        for &p in &tied {
            let (p_ij, q_ij) = ndtr_pair(eq3_argument(
                v,
                partners.mean[p],
                inv_spread(var_i, partners.var[p], gamma),
            ));
            *o += (0.5 * p_ij).sqrt() + (0.5 * q_ij).sqrt();
        }
        *o /= count as f64;
    }
}

/// One image's comparison against its partners.
struct Row<'a> {
    /// The image's own position among the partners (left out of the sums).
    me: usize,
    gt_i: f64,
    var_i: f64,
    gamma: f64,
    /// `Ties::Half`: partners with the same ground truth are left out here and added separately.
    half: bool,
    partners: &'a Partners,
}

impl Row<'_> {
    /// For each parseable `values[k]`, `out[k] = Σ_j sqrt(Φ(±z_kj))` over the partners with
    /// p_c ∈ {0, 1}, eight at a time with the widest instruction set the CPU has. Every path
    /// does the same IEEE operations in the same order per lane and accumulates eight lanes the
    /// same way, so all return identical bits.
    fn partner_sums(&self, values: &[f64], out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(t) = crate::simd::Avx512F::detect() {
                // SAFETY: the token proves the CPU has AVX-512F, the function's target feature.
                return unsafe { self.partner_sums_avx512(t, values, out) };
            }
            if let Some(t) = crate::simd::Avx2Fma::detect() {
                // SAFETY: the token proves the CPU has AVX2 and FMA, the function's features.
                return unsafe { self.partner_sums_avx2(t, values, out) };
            }
        }
        self.partner_sums_lanes::<Portable8>((), values, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn partner_sums_avx512(&self, t: crate::simd::Avx512F, values: &[f64], out: &mut [f64]) {
        self.partner_sums_lanes::<crate::simd::Avx512>(t, values, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn partner_sums_avx2(&self, t: crate::simd::Avx2Fma, values: &[f64], out: &mut [f64]) {
        self.partner_sums_lanes::<crate::simd::Avx2x2>(t, values, out)
    }

    #[inline(always)]
    fn partner_sums_lanes<L: Lanes8>(&self, t: L::Token, values: &[f64], out: &mut [f64]) {
        if self.half {
            self.partner_sums_impl::<L, true>(t, values, out)
        } else {
            self.partner_sums_impl::<L, false>(t, values, out)
        }
    }

    /// With `HALF`, a per-partner weight of 0 leaves out the image itself, padding and equal
    /// ground truths (added separately by the caller); without it only the image itself and the
    /// padding are left out, masked in the two vectors that hold them.
    #[inline(always)]
    fn partner_sums_impl<L: Lanes8, const HALF: bool>(
        &self,
        t: L::Token,
        values: &[f64],
        out: &mut [f64],
    ) {
        let p = self.partners;
        let splat = |v| L::splat(t, v);
        let chunks = p.mean.len() / 8;
        // Per partner: scale = ±1/sqrt(σ_i² + σ_j² + γ), whose sign folds p_c into the argument:
        // Φ(z) when p_c = 1 (s_i >= s_j), Φ(−z) = 1 − Φ(z) when p_c = 0.
        let mut scale = vec![0.0; chunks * 8];
        let (var_i, gamma, gt_i) = (splat(self.var_i), splat(self.gamma), splat(self.gt_i));
        for c in 0..chunks {
            // SAFETY: the partner buffers hold `chunks * 8` doubles.
            let (var_j, gt_j) = unsafe {
                (
                    L::load(t, p.var.as_ptr().add(8 * c)),
                    L::load(t, p.gt.as_ptr().add(8 * c)),
                )
            };
            // The vector form of `inv_spread`: the same operations in the same order.
            let inv = splat(1.0).div(var_i.add(var_j).add(gamma).sqrt());
            let signed = L::select(gt_i.ge(gt_j), inv, inv.mul(splat(-1.0)));
            scale[8 * c..8 * c + 8].copy_from_slice(&signed.to_array());
        }
        let weight: Vec<f64> = if HALF {
            (0..chunks * 8)
                .map(|j| {
                    if j >= p.n || j == self.me || p.gt[j] == self.gt_i {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        // Lanes to leave out (strict ties): the image itself, and padding in the last vector.
        let lanes = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        // SAFETY: `lanes` holds 8 doubles.
        let lane = unsafe { L::load(t, lanes.as_ptr()) };
        let me_chunk = self.me / 8;
        let last = chunks - 1;
        let me_lane = lane.eq(splat((self.me % 8) as f64));
        let padding = lane.ge(splat(if p.n.is_multiple_of(8) {
            8.0
        } else {
            (p.n % 8) as f64
        }));
        let last_out = if me_chunk == last {
            L::or(me_lane, padding)
        } else {
            padding
        };
        for (&o, sum) in values.iter().zip(out.iter_mut()) {
            if o.is_nan() {
                continue;
            }
            let ov = splat(o);
            let mut acc = splat(0.0);
            for c in 0..chunks {
                // SAFETY: chunk c < chunks lies inside the padded buffers.
                let (m, s) = unsafe {
                    (
                        L::load(t, p.mean.as_ptr().add(8 * c)),
                        L::load(t, scale.as_ptr().add(8 * c)),
                    )
                };
                let term = sqrt_phi_term(ov, m, s);
                let term = if HALF {
                    // SAFETY: as above.
                    term.mul(unsafe { L::load(t, weight.as_ptr().add(8 * c)) })
                } else if c == last {
                    L::select(last_out, splat(0.0), term)
                } else if c == me_chunk {
                    L::select(me_lane, splat(0.0), term)
                } else {
                    term
                };
                acc = acc.add(term);
            }
            let acc = acc.to_array();
            *sum =
                ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
    }
}

/// sqrt(Φ((o − m) · s)) per lane: `eq3_argument` on vectors. A function, not a closure: closures cannot be forced inline,
/// and an out-of-line body would lose the caller's target features.
#[inline(always)]
fn sqrt_phi_term<L: Lanes8>(o: L, m: L, s: L) -> L {
    phi(o.sub(m).mul(s)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_isa_paths_agree_bitwise() {
        let n = 37;
        let stats: Vec<GroupStats> = (0..n)
            .map(|j| GroupStats {
                count: 3,
                mean: (j as f64 * 0.37).sin() * 0.5 + 0.5,
                var: if j % 3 == 0 { 0.0 } else { 1e-4 * j as f64 },
            })
            .collect();
        let gt: Vec<f64> = (0..n)
            .map(|j| ((j as f64 * 0.91).cos() * 5.0).round() / 10.0 + 0.5)
            .collect();
        let partners = Partners::new(&stats, &gt);
        let values = [0.0, 0.13, f64::NAN, 0.5, 0.77, 1.0, 40.0, -3.0];
        for half in [false, true] {
            let row = Row {
                me: 5,
                gt_i: gt[5],
                var_i: 0.003,
                gamma: 1e-6,
                half,
                partners: &partners,
            };
            let mut portable = [0.0; 8];
            row.partner_sums_lanes::<Portable8>((), &values, &mut portable);
            let mut dispatched = [0.0; 8];
            row.partner_sums(&values, &mut dispatched);
            assert_eq!(portable.map(f64::to_bits), dispatched.map(f64::to_bits));
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = crate::simd::Avx2Fma::detect() {
                let mut avx2 = [0.0; 8];
                // SAFETY: the token proves the CPU has AVX2 and FMA, the function's features.
                unsafe { row.partner_sums_avx2(t, &values, &mut avx2) };
                assert_eq!(portable.map(f64::to_bits), avx2.map(f64::to_bits));
            }
        }
    }
}
