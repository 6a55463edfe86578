//! The FRank preference probability (paper Eq. 3): a float64 reference from the C library's erfc,
//! symmetry, monotonicity, agreement with the rank reward's own Φ term, and input errors.

use aesr1_core::{preference_probability, rank_reward, Error, Groups, Ties};
use proptest::prelude::*;

extern "C" {
    /// The C library's complementary error function (C99), an independent implementation.
    fn erfc(x: f64) -> f64;
}

/// Eq. 3 written from the definition: Φ(x) = erfc(−x/√2)/2.
fn preference_ref(mu_a: f64, std_a: f64, mu_b: f64, std_b: f64, gamma: f64) -> f64 {
    let x = (mu_a - mu_b) / (std_a * std_a + std_b * std_b + gamma).sqrt();
    // SAFETY: erfc is a pure C99 math function.
    0.5 * unsafe { erfc(-x / std::f64::consts::SQRT_2) }
}

fn one(mu_a: f64, std_a: f64, mu_b: f64, std_b: f64, gamma: f64) -> f64 {
    preference_probability(&[mu_a], &[std_a], &[mu_b], &[std_b], gamma).unwrap()[0]
}

#[test]
fn known_values() {
    // Equal means: 1/2 exactly, whatever the spreads.
    assert_eq!(one(0.4, 0.1, 0.4, 0.3, 1e-6), 0.5);
    // 0.25 + 0.25 + 0.5 = 1 exactly, so the argument is μ_A − μ_B. Values from mpmath.
    assert_eq!(one(1.0, 0.5, 0.0, 0.5, 0.5), 0.841_344_746_068_542_9);
    assert_eq!(one(0.0, 0.5, 1.0, 0.5, 0.5), 0.158_655_253_931_457_05);
    // γ alone keeps two point estimates comparable.
    let p = one(0.6, 0.0, 0.5, 0.0, 1e-2);
    assert!((p - 0.841_344_746_068_542_9).abs() < 1e-15, "{p}");
    // The far tail keeps its relative accuracy instead of rounding 1 − Φ to 0.
    let tail = one(0.0, 0.0, 1.0, 0.0, 1e-2);
    assert!(((tail - 7.619_853_024_160_525e-24) / 7.619_853_024_160_525e-24).abs() < 1e-14);
    assert_eq!(
        preference_probability(&[], &[], &[], &[], 0.0).unwrap(),
        Vec::<f64>::new()
    );
}

#[test]
fn bad_inputs_are_errors() {
    let err =
        |a: &[f64], sa: &[f64], b: &[f64], sb: &[f64], g| preference_probability(a, sa, b, sb, g);
    assert!(matches!(
        err(&[0.5], &[0.1], &[0.5], &[0.1], -1e-6),
        Err(Error::Parameter { arg: "gamma", .. })
    ));
    assert!(matches!(
        err(&[0.5], &[0.1], &[0.5], &[0.1], f64::NAN),
        Err(Error::Parameter { arg: "gamma", .. })
    ));
    assert!(matches!(
        err(&[0.5, 0.6], &[0.1], &[0.5, 0.2], &[0.1, 0.1], 0.0),
        Err(Error::Length {
            arg: "std_a",
            got: 1,
            expected: 2,
            ..
        })
    ));
    assert!(matches!(
        err(&[0.5], &[0.1], &[0.5], &[0.1, 0.2], 0.0),
        Err(Error::Length { arg: "std_b", .. })
    ));
    assert!(matches!(
        err(&[0.5, f64::NAN], &[0.1; 2], &[0.5; 2], &[0.1; 2], 0.0),
        Err(Error::NonFinite {
            arg: "mu_a",
            index: 1,
            ..
        })
    ));
    assert!(matches!(
        err(&[0.5], &[0.1], &[f64::INFINITY], &[0.1], 0.0),
        Err(Error::NonFinite { arg: "mu_b", .. })
    ));
    assert!(matches!(
        err(&[0.5], &[-0.1], &[0.5], &[0.1], 0.0),
        Err(Error::OutOfRange { arg: "std_a", .. })
    ));
    assert!(matches!(
        err(&[0.5], &[0.1], &[0.5], &[f64::INFINITY], 0.0),
        Err(Error::NonFinite { arg: "std_b", .. })
    ));
    // Finite σ whose square overflows.
    assert!(matches!(
        err(&[0.5], &[1e200], &[0.5], &[0.1], 0.0),
        Err(Error::Overflow { arg: "std_a", .. })
    ));
    // σ_A = σ_B = γ = 0, and a nonzero σ whose square underflows to 0: both divide by zero.
    for std in [0.0, 1e-200] {
        let e = err(&[0.5, 0.4], &[0.1, std], &[0.5, 0.3], &[0.1, 0.0], 0.0).unwrap_err();
        assert_eq!(
            e,
            Error::ZeroDivisor {
                arg: "gamma",
                what: "std_a² + std_b² + gamma",
                index: 1
            }
        );
        assert!(e.to_string().contains("division by zero"), "{e}");
    }
    // σ_A = σ_B = 0 is fine once γ > 0; γ = 0 is fine with a spread.
    assert!(err(&[0.5], &[0.0], &[0.4], &[0.0], 1e-6).is_ok());
    assert!(err(&[0.5], &[0.0], &[0.4], &[0.1], 0.0).is_ok());
}

fn pair() -> impl Strategy<Value = (f64, f64, f64, f64)> {
    (
        prop_oneof![-0.5..1.5f64, -1e3..1e3f64],
        prop_oneof![Just(0.0), 0.0..0.5f64, 0.0..1e3f64],
        prop_oneof![-0.5..1.5f64, -1e3..1e3f64],
        prop_oneof![Just(0.0), 0.0..0.5f64, 0.0..1e3f64],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn matches_erfc_reference(pairs in prop::collection::vec(pair(), 1..40), gamma in prop_oneof![Just(1e-6), 1e-9..1.0f64]) {
        let (mu_a, std_a, mu_b, std_b) = unzip4(&pairs);
        let got = preference_probability(&mu_a, &std_a, &mu_b, &std_b, gamma).unwrap();
        for (i, &(a, sa, b, sb)) in pairs.iter().enumerate() {
            let want = preference_ref(a, sa, b, sb, gamma);
            let x = (a - b) / (sa * sa + sb * sb + gamma).sqrt();
            // erfc of the rounded argument −x/√2 is itself off by up to ~x²·ulp.
            let tol = 1e-14 + 4.0 * x * x * f64::EPSILON;
            prop_assert!(want < 1e-300 || ((got[i] - want) / want).abs() <= tol,
                "pair {:?} got {:e} want {:e}", pairs[i], got[i], want);
            prop_assert!((0.0..=1.0).contains(&got[i]));
        }
    }

    #[test]
    fn symmetric_and_monotone((a, sa, b, sb) in pair(), gamma in 1e-9..1.0f64, step in 0.0..1.0f64) {
        let forward = one(a, sa, b, sb, gamma);
        let backward = one(b, sb, a, sa, gamma);
        prop_assert!((forward + backward - 1.0).abs() <= f64::EPSILON, "{} + {}", forward, backward);
        prop_assert!(one(a + step, sa, b, sb, gamma) >= forward);
    }

    /// Two images with one completion each (σ = 0): the rank reward of the better one is
    /// sqrt(Φ(z)) with the same z, so it equals sqrt(P) bit for bit.
    #[test]
    fn is_the_rank_rewards_term(a in -0.5..1.5f64, b in -0.5..1.5f64, gamma in 1e-9..1.0f64) {
        let reward = rank_reward(&[a, b], &[0.9, 0.1], &Groups::uniform(2, 1).unwrap(), gamma, Ties::Strict).unwrap();
        prop_assert_eq!(reward[0].to_bits(), one(a, 0.0, b, 0.0, gamma).sqrt().to_bits());
        // The worse image's term is sqrt(1 − Φ((b − a)/s)) = sqrt(Φ((a − b)/s)): the same P.
        prop_assert_eq!(reward[1].to_bits(), one(a, 0.0, b, 0.0, gamma).sqrt().to_bits());
    }
}

#[test]
fn large_batches_match_pairwise_calls() {
    // Above the sequential threshold the batch is split over threads; every value must equal
    // the one computed alone.
    let n = 40_000;
    let mu_a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    let mu_b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
    let std_a: Vec<f64> = (0..n).map(|i| (i % 7) as f64 * 0.03).collect();
    let std_b: Vec<f64> = (0..n).map(|i| (i % 5) as f64 * 0.02).collect();
    let got = preference_probability(&mu_a, &std_a, &mu_b, &std_b, 1e-6).unwrap();
    for i in (0..n).step_by(997) {
        assert_eq!(
            got[i].to_bits(),
            one(mu_a[i], std_a[i], mu_b[i], std_b[i], 1e-6).to_bits()
        );
    }
}

fn unzip4(pairs: &[(f64, f64, f64, f64)]) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    (
        pairs.iter().map(|p| p.0).collect(),
        pairs.iter().map(|p| p.1).collect(),
        pairs.iter().map(|p| p.2).collect(),
        pairs.iter().map(|p| p.3).collect(),
    )
}
