//! Property tests against float64 references written here from the definitions (naive loops,
//! Φ from the C library's erfc, Kendall counts over all pairs), plus thread-count independence.

use aesr1_core::{
    abs_reward, binary_reward, group_advantages, krcc, ndtr, plcc, rank_reward, rapo, srcc, Groups,
    NanPolicy, RewardConfig, Ties, Weights,
};
use proptest::prelude::*;

const TOL: f64 = 1e-12;

extern "C" {
    /// The C library's complementary error function (C99), an independent implementation.
    fn erfc(x: f64) -> f64;
}

fn phi_ref(x: f64) -> f64 {
    // SAFETY: erfc is a pure C99 math function.
    0.5 * unsafe { erfc(-x / std::f64::consts::SQRT_2) }
}

/// Eq. 3–5 with three nested loops. `pred` is row-major (n, k), NaN = unparseable.
fn rank_ref(pred: &[f64], gt: &[f64], k: usize, gamma: f64, ties: Ties) -> Vec<f64> {
    let n = gt.len();
    let stats: Vec<(usize, f64, f64)> = (0..n)
        .map(|i| {
            let v: Vec<f64> = pred[i * k..(i + 1) * k]
                .iter()
                .copied()
                .filter(|x| !x.is_nan())
                .collect();
            let c = v.len();
            let mean = if c > 0 {
                v.iter().sum::<f64>() / c as f64
            } else {
                f64::NAN
            };
            let var = if c >= 2 {
                v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (c - 1) as f64
            } else {
                0.0
            };
            (c, mean, var)
        })
        .collect();
    let mut out = vec![0.0; n * k];
    for i in 0..n {
        for kk in 0..k {
            let o = pred[i * k + kk];
            if o.is_nan() {
                continue;
            }
            let (mut sum, mut count) = (0.0, 0usize);
            for j in 0..n {
                if j == i || stats[j].0 == 0 {
                    continue;
                }
                let z = (o - stats[j].1) / (stats[i].2 + stats[j].2 + gamma).sqrt();
                let pc = if ties == Ties::Half && gt[i] == gt[j] {
                    0.5
                } else if gt[i] >= gt[j] {
                    1.0
                } else {
                    0.0
                };
                sum += (pc * phi_ref(z)).sqrt() + ((1.0 - pc) * phi_ref(-z)).sqrt();
                count += 1;
            }
            out[i * k + kk] = if count > 0 { sum / count as f64 } else { 0.0 };
        }
    }
    out
}

fn advantages_ref(r: &[f64], k: usize) -> Vec<f64> {
    advantages_ref_eps(r, k, 1e-4)
}

/// Eq. 9 with `eps` in place of 1e-4.
fn advantages_ref_eps(r: &[f64], k: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; r.len()];
    if k < 2 {
        return out;
    }
    for (row, o) in r.chunks(k).zip(out.chunks_mut(k)) {
        let mean = row[0] + row.iter().map(|v| v - row[0]).sum::<f64>() / k as f64;
        let std =
            (row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (k - 1) as f64).sqrt();
        for (x, v) in o.iter_mut().zip(row) {
            *x = (v - mean) / (std + eps);
        }
    }
    out
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "{what}[{i}]: got {g:e}, want {w:e}");
    }
}

/// Scores with the cases that matter: free values, a two-decimal grid (ties), 0.5, NaN.
fn score() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..=1.0f64,
        (0..=100u32).prop_map(|v| v as f64 / 100.0),
        Just(0.5),
        Just(f64::NAN)
    ]
}

fn truth() -> impl Strategy<Value = f64> {
    prop_oneof![0.0..=1.0f64, (0..=10u32).prop_map(|v| v as f64 / 10.0)]
}

/// (n, k, pred, gt): N = 1 and K = 1 included, identical rows sometimes.
fn batch() -> impl Strategy<Value = (usize, usize, Vec<f64>, Vec<f64>)> {
    (1usize..=12, 1usize..=6, any::<bool>()).prop_flat_map(|(n, k, identical)| {
        let rows = if identical { n } else { n * k };
        (
            Just(n),
            Just(k),
            prop::collection::vec(score(), rows),
            prop::collection::vec(truth(), n),
        )
            .prop_map(move |(n, k, v, gt)| {
                let pred = if identical {
                    v.iter().flat_map(|&x| std::iter::repeat_n(x, k)).collect()
                } else {
                    v
                };
                (n, k, pred, gt)
            })
    })
}

/// Large batches from a seed (proptest cannot shrink 4000 floats usefully anyway).
fn large_batch() -> impl Strategy<Value = (usize, usize, Vec<f64>, Vec<f64>)> {
    (100usize..=2048, 1usize..=2, any::<u64>(), 0usize..3).prop_map(|(n, k, seed, spread)| {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let gt: Vec<f64> = (0..n).map(|_| (next() * 100.0).round() / 100.0).collect();
        let sd = [0.0, 0.01, 0.2][spread];
        let pred = gt
            .iter()
            .flat_map(|&s| {
                (0..k)
                    .map(|_| {
                        if next() < 0.05 {
                            f64::NAN
                        } else {
                            (s + sd * (next() - 0.5)).clamp(0.0, 1.0)
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        (n, k, pred, gt)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn rank_reward_matches_reference((n, k, pred, gt) in batch(), half in any::<bool>()) {
        let ties = if half { Ties::Half } else { Ties::Strict };
        let got = rank_reward(&pred, &gt, &Groups::uniform(n, k).unwrap(), 1e-6, ties).unwrap();
        assert_close(&got, &rank_ref(&pred, &gt, k, 1e-6, ties), "rank");
    }

    #[test]
    fn rapo_matches_reference((n, k, pred, gt) in batch(), wr in 0.0..2.0f64, wa in 0.0..2.0f64, wb in 0.0..1.0f64) {
        let config = RewardConfig { weights: Weights { rank: wr, abs: wa, binary: wb, format: 0.0 }, ..Default::default() };
        let out = rapo(&pred, &gt, &Groups::uniform(n, k).unwrap(), &config, None).unwrap();
        let gt_item: Vec<f64> = gt.iter().flat_map(|&s| std::iter::repeat_n(s, k)).collect();
        let rank = rank_ref(&pred, &gt, k, 1e-6, Ties::Strict);
        let abs: Vec<f64> = pred.iter().zip(&gt_item)
            .map(|(o, s)| if o.is_nan() { 0.0 } else { (-0.5 * ((o - s).abs() / 0.1).powi(2)).exp() + 1e-5 }).collect();
        let bin: Vec<f64> = pred.iter().zip(&gt_item).map(|(o, s)| if (o - s).abs() < 0.1 { 1.0 } else { 0.0 }).collect();
        let total: Vec<f64> = (0..pred.len()).map(|m| wr * rank[m] + wa * abs[m] + wb * bin[m]).collect();
        assert_close(&out.rank, &rank, "rank");
        assert_close(&out.abs, &abs, "abs");
        assert_eq!(&out.binary, &bin);
        assert_close(&out.total, &total, "total");
        assert_close(&out.advantages, &advantages_ref(&out.total, k), "advantages");
        prop_assert_eq!(out.num_unparseable, pred.iter().filter(|v| v.is_nan()).count());
        // The element-wise functions agree with the batch.
        prop_assert_eq!(abs_reward(&pred, &gt_item, 0.1, 1e-5).unwrap(), out.abs);
        prop_assert_eq!(binary_reward(&pred, &gt_item, 0.1).unwrap(), out.binary);
    }

    /// Rewards far too large to square: Eq. 9 is invariant under r -> r·2^j with 1e-4 -> 1e-4·2^-j,
    /// and both sides are exact power-of-two rescalings, so the results agree bit for bit.
    #[test]
    fn huge_advantages_are_exact_rescalings(k in 2usize..8, j in 400i32..=1000, rows in prop::collection::vec(prop::collection::vec(-5.0..5.0f64, 8), 1..10)) {
        let r: Vec<f64> = rows.iter().flat_map(|row| row[..k].to_vec()).collect();
        let scale = 2f64.powi(j);
        let big: Vec<f64> = r.iter().map(|v| v * scale).collect();
        let got = group_advantages(&big, &Groups::uniform(rows.len(), k).unwrap()).unwrap();
        let want = advantages_ref_eps(&r, k, 1e-4 / scale);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&got), bits(&want), "got {:?}, want {:?}", got, want);
    }

    #[test]
    fn advantages_match_reference(k in 1usize..8, rows in prop::collection::vec(prop::collection::vec(-5.0..5.0f64, 8), 1..10)) {
        let r: Vec<f64> = rows.iter().flat_map(|row| row[..k].to_vec()).collect();
        let got = group_advantages(&r, &Groups::uniform(rows.len(), k).unwrap()).unwrap();
        assert_close(&got, &advantages_ref(&r, k), "advantages");
    }

    #[test]
    fn ndtr_matches_erfc(x in prop_oneof![-40.0..10.0f64, -1.0..1.0f64]) {
        let (got, want) = (ndtr(x), phi_ref(x));
        // erfc of the rounded argument -x/√2 is itself off by up to ~x²·ulp.
        let tol = 1e-15 + 4.0 * x * x * f64::EPSILON;
        prop_assert!(want < 1e-300 || ((got - want) / want).abs() <= tol, "x={} got={:e} want={:e}", x, got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn rank_reward_matches_reference_up_to_2048_images((n, k, pred, gt) in large_batch()) {
        let got = rank_reward(&pred, &gt, &Groups::uniform(n, k).unwrap(), 1e-6, Ties::Strict).unwrap();
        assert_close(&got, &rank_ref(&pred, &gt, k, 1e-6, Ties::Strict), "rank");
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Kendall's tau-b from all pairs, with SciPy's final expression.
fn kendall_ref(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    let (mut dis, mut xtie, mut ytie, mut ntie) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let (dx, dy) = (x[i] - x[j], y[i] - y[j]);
            xtie += (dx == 0.0) as i64;
            ytie += (dy == 0.0) as i64;
            ntie += (dx == 0.0 && dy == 0.0) as i64;
            dis += (dx * dy < 0.0) as i64;
        }
    }
    let tot = (n * (n - 1) / 2) as i64;
    if xtie == tot || ytie == tot {
        return f64::NAN;
    }
    let cmd = tot - xtie - ytie + ntie - 2 * dis;
    (cmd as f64 / ((tot - xtie) as f64).sqrt() / ((tot - ytie) as f64).sqrt()).clamp(-1.0, 1.0)
}

fn pearson_ref(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

fn average_ranks(v: &[f64]) -> Vec<f64> {
    v.iter()
        .map(|&a| {
            let less = v.iter().filter(|&&b| b < a).count() as f64;
            let equal = v.iter().filter(|&&b| b == a).count() as f64;
            less + (equal + 1.0) / 2.0
        })
        .collect()
}

fn metric_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e3..1e3f64,
        (-4i32..=4).prop_map(f64::from),
        (0..=20u32).prop_map(|v| v as f64 / 20.0)
    ]
}

fn close_rel(got: f64, want: f64) -> bool {
    (got.is_nan() && want.is_nan()) || (got - want).abs() <= 1e-12 * want.abs().max(1e-3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn metrics_match_references(xy in (2usize..80).prop_flat_map(|n| (prop::collection::vec(metric_value(), n), prop::collection::vec(metric_value(), n)))) {
        let (x, y) = xy;
        let p = NanPolicy::Raise;
        let tau = krcc(&x, &y, p).unwrap();
        let want = kendall_ref(&x, &y);
        prop_assert!(tau.to_bits() == want.to_bits() || (tau.is_nan() && want.is_nan()), "krcc {} vs {}", tau, want);
        let constant = x.iter().all(|&v| v == x[0]) || y.iter().all(|&v| v == y[0]);
        let (rho, r) = (srcc(&x, &y, p).unwrap(), plcc(&x, &y, p).unwrap());
        if constant {
            prop_assert!(rho.is_nan() && r.is_nan());
        } else {
            let want_rho = pearson_ref(&average_ranks(&x), &average_ranks(&y));
            prop_assert!(close_rel(rho, want_rho), "srcc {} vs {}", rho, want_rho);
            let want_r = if x.len() == 2 { want_rho } else { pearson_ref(&x, &y) };
            prop_assert!(close_rel(r, want_r), "plcc {} vs {}", r, want_r);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Threads

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let (n, k) = (400, 6);
    let mut state = 99u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let gt: Vec<f64> = (0..n).map(|_| next()).collect();
    let pred: Vec<f64> = (0..n * k)
        .map(|m| {
            if m % 17 == 0 {
                f64::NAN
            } else {
                (gt[m / k] + 0.2 * (next() - 0.5)).clamp(0.0, 1.0)
            }
        })
        .collect();
    let groups = Groups::uniform(n, k).unwrap();
    let x: Vec<f64> = (0..300_000).map(|_| next()).collect();
    let y: Vec<f64> = x.iter().map(|v| ((v + next()) * 100.0).round()).collect();
    let run = || {
        let mut bits = Vec::new();
        for ties in [Ties::Strict, Ties::Half] {
            let out = rapo(
                &pred,
                &gt,
                &groups,
                &RewardConfig {
                    ties,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
            bits.extend(out.total.iter().chain(&out.advantages).map(|v| v.to_bits()));
        }
        let c = aesr1_core::evaluate(&x, &y, NanPolicy::Raise).unwrap();
        bits.extend([c.plcc, c.srcc, c.krcc].map(f64::to_bits));
        bits
    };
    let one = in_pool(1, run);
    for threads in [2, 3, 5] {
        assert!(
            in_pool(threads, run) == one,
            "{threads} threads differ from 1"
        );
    }
}
