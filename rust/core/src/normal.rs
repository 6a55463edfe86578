//! Standard normal distribution function Φ, written for the rank reward's hot loop.
//!
//! Why hand-written: Rust's standard library has no `erf`, and the rank reward (paper Eq. 3–5)
//! evaluates Φ N²·K times per RL step, so it must vectorise. The approximation is W. J. Cody's
//! rational Chebyshev algorithm for the normal integral (ACM TOMS 19(1):22–32, 1993, SPECFUN
//! `ANORM`): three ranges of |x|, each a ratio of polynomials, times `exp(-x²/2)` outside the
//! centre. It is accurate to a few units in the last place over the whole range where Φ(x) is a
//! normal double (x > -37.5193), including the far lower tail.
//!
//! The same generic code evaluates one lane (`f64`) or eight (`crate::simd`), with ranges selected
//! by blends, so a scalar call gives the bit-identical result a vector lane gives. Fused
//! multiply-adds are written out explicitly and are exact IEEE operations on every path, so the
//! results do not depend on the CPU either.

// Coefficients are quoted to the digits Cody published, more than a double holds.
#![allow(clippy::excessive_precision)]

use crate::simd::Vf64;

/// Below this |x| Cody's first range applies (x = qnorm(3/4)).
const SMALL: f64 = 0.674_489_75;
/// Above this |x| (sqrt 32) the asymptotic range applies.
const LARGE: f64 = 5.656_854_249_492_381;
/// Beyond this |x| Φ(-|x|) is below the smallest normal double: Cody returns 0 / 1.
const CUTOFF: f64 = 37.5193;
/// 1/sqrt(2π).
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_677_94;

// Cody (1993) coefficients. Range 1 (|x| <= SMALL), rational in x².
const A: [f64; 5] = [
    2.235_252_035_460_683_928_7,
    161.028_231_068_555_878_81,
    1_067.689_485_460_370_958_2,
    18_154.981_253_343_561_249,
    0.065_682_337_918_207_449_113,
];
const B: [f64; 4] = [
    47.202_581_904_688_241_87,
    976.098_551_737_776_693_22,
    10_260.932_208_618_978_205,
    45_507.789_335_026_729_956,
];
// Range 2 (SMALL < |x| <= LARGE), rational in |x|.
const C: [f64; 9] = [
    0.398_941_512_088_134_667_64,
    8.883_149_794_388_375_941_2,
    93.506_656_132_177_855_979,
    597.270_276_394_800_262_26,
    2_494.537_585_290_372_671_1,
    6_848.190_450_536_282_332_6,
    11_602.651_437_647_350_124,
    9_842.714_838_383_978_021_8,
    1.076_557_677_372_019_231_7e-8,
];
const D: [f64; 8] = [
    22.266_688_044_328_115_691,
    235.387_901_782_624_998_61,
    1_519.377_599_407_554_805,
    6_485.558_298_266_760_755,
    18_615.571_640_885_098_091,
    34_900.952_721_145_977_266,
    38_912.003_286_093_271_411,
    19_685.429_676_859_990_727,
];
// Range 3 (|x| > LARGE), rational in 1/x².
const P: [f64; 6] = [
    0.215_898_534_057_956_99,
    0.127_401_161_160_247_363_9,
    0.022_235_277_870_649_807,
    0.001_421_619_193_227_893_466,
    2.911_287_495_116_879_2e-5,
    0.023_073_441_764_940_173_03,
];
const Q: [f64; 5] = [
    1.284_260_096_144_911_21,
    0.468_238_212_480_865_118,
    0.065_988_137_868_928_551_5,
    0.003_782_396_332_027_582_44,
    7.297_515_550_839_662_05e-5,
];

/// Numerator and denominator coefficients of the three ranges, by ascending power, padded with
/// zeros to degree 8 so one blended evaluation serves all lanes.
///
/// Range 1 in v = x²: N = A3 + A2 v + A1 v² + A0 v³ + A4 v⁴, D = B3 + B2 v + … + v⁴ (Cody's form).
/// Range 2 in v = |x|: N = C7 + C6 v + … + C0 v⁷ + C8 v⁸, D = D7 + D6 v + … + v⁸ (Cody's form).
/// Range 3: Cody evaluates u·N(u)/D(u) in u = 1/x²; multiplying N and D by w⁵ with w = x² gives
/// polynomials in w with the coefficients reversed, which saves a division per lane.
///
/// Every coefficient is positive and v >= 0, so all terms are positive and any evaluation order
/// is accurate to a few ulp; Estrin's scheme is used for its short dependency chains.
const NUM: [[f64; 9]; 3] = [
    [A[3], A[2], A[1], A[0], A[4], 0.0, 0.0, 0.0, 0.0],
    [C[7], C[6], C[5], C[4], C[3], C[2], C[1], C[0], C[8]],
    [P[5], P[0], P[1], P[2], P[3], P[4], 0.0, 0.0, 0.0],
];
const DEN: [[f64; 9]; 3] = [
    [B[3], B[2], B[1], B[0], 1.0, 0.0, 0.0, 0.0, 0.0],
    [D[7], D[6], D[5], D[4], D[3], D[2], D[1], D[0], 1.0],
    [1.0, Q[0], Q[1], Q[2], Q[3], Q[4], 0.0, 0.0, 0.0],
];

/// Powers v, v², v⁴, v⁸ shared by the two degree-8 polynomials of one lane.
#[derive(Clone, Copy)]
struct Powers<V> {
    v: V,
    v2: V,
    v4: V,
    v8: V,
}

impl<V: Vf64> Powers<V> {
    #[inline(always)]
    fn new(v: V) -> Self {
        let v2 = v.mul(v);
        let v4 = v2.mul(v2);
        Self {
            v,
            v2,
            v4,
            v8: v4.mul(v4),
        }
    }

    /// Σ c[i] vⁱ for i = 0..=8 by Estrin's scheme (depth 4 instead of Horner's 8).
    #[inline(always)]
    fn estrin9(&self, c: [V; 9]) -> V {
        let q0 = c[1].mul_add(self.v, c[0]);
        let q1 = c[3].mul_add(self.v, c[2]);
        let q2 = c[5].mul_add(self.v, c[4]);
        let q3 = c[7].mul_add(self.v, c[6]);
        let s0 = q1.mul_add(self.v2, q0);
        let s1 = q3.mul_add(self.v2, q2);
        c[8].mul_add(self.v8, s1.mul_add(self.v4, s0))
    }
}

/// The coefficients of one range, splatted.
///
/// A loop, not `std::array::from_fn`: `from_fn` is not always inlined, and compiled on its own it
/// lacks the caller's target features, so every lane intrinsic in it becomes a function call
/// (measured: the rank reward ~100x slower on AVX2).
#[inline(always)]
fn splat9<V: Vf64>(t: V::Token, c: &[f64; 9]) -> [V; 9] {
    let mut out = [V::splat(t, 0.0); 9];
    for (o, &v) in out.iter_mut().zip(c) {
        *o = V::splat(t, v);
    }
    out
}

/// 1.5·2⁵²: adding and subtracting it rounds a double of magnitude < 2⁵¹ to the nearest integer
/// (ties to even) with plain additions, which vectorise on every x86-64 level, unlike `round`.
const ROUND_SHIFTER: f64 = 6_755_399_441_055_744.0;
const LOG2_E: f64 = std::f64::consts::LOG2_E;
// ln 2 split so that n·LN2_HI is exact for |n| < 2²⁰ (fdlibm's split).
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
/// Largest |x| fed to the exponential; larger arguments are cut off afterwards. Keeps the scale
/// 2ⁿ a normal double.
const EXP_CLAMP: f64 = 37.6;

/// exp(hi + lo) for -708 <= hi <= 0 and |lo| <= 1.2, to about one ulp.
///
/// Cody–Waite reduction by ln 2 and a degree-13 Taylor polynomial (truncation error below
/// 5e-18 on |r| <= ln2/2); `lo` enters the reduced argument separately, so the double-double
/// argument is not rounded to one double first.
#[inline(always)]
fn exp_dd<V: Vf64>(hi: V, lo: V) -> V {
    let t = hi.token();
    let s = |v| V::splat(t, v);
    // n = round((hi + lo) / ln 2), kept both as a double (n) and in the low bits of `shifted`;
    // rounding the sum keeps |r| <= ln2/2 (+ rounding) even when |lo| is near 1.
    let shifted = hi.add(lo).mul_add(s(LOG2_E), s(ROUND_SHIFTER));
    let n = shifted.sub(s(ROUND_SHIFTER));
    let r = n.mul_add(s(-LN2_HI), hi).add(n.mul_add(s(-LN2_LO), lo));
    // exp(r) ≈ 1 + (r + r²·T(r)), T(r) = Σ rⁱ/(i+2)!, i = 0..=11, by Estrin's scheme (depth 4
    // instead of Horner's 12). Adding the large terms 1 and r last keeps the error near 1 ulp.
    const T: [f64; 12] = [
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let r2 = r.mul(r);
    let r4 = r2.mul(r2);
    let r8 = r4.mul(r4);
    let mut q = [s(0.0); 6];
    for (i, qi) in q.iter_mut().enumerate() {
        *qi = s(T[2 * i + 1]).mul_add(r, s(T[2 * i]));
    }
    let s0 = q[1].mul_add(r2, q[0]);
    let s1 = q[3].mul_add(r2, q[2]);
    let s2 = q[5].mul_add(r2, q[4]);
    let t = s2.mul_add(r8, s1.mul_add(r4, s0));
    let p = s(1.0).add(r2.mul_add(t, r));
    // 2ⁿ from bits without a float-to-int conversion (which AVX-512F lacks for doubles): the
    // low bits of `shifted` hold n in two's complement, and n + 1023 lies in [2, 1023] for the
    // clamped arguments, so shifting n + 1023 into the exponent field gives 2ⁿ.
    p.mul(shifted.pow2_from_shifted())
}

/// The coefficients of the three ranges regrouped per power: `[range 1, range 2, range 3]` in
/// the first three of eight slots, ready for a one-instruction lane permute.
const fn by_power(table: &[[f64; 9]; 3]) -> [[f64; 8]; 9] {
    let mut out = [[0.0; 8]; 9];
    let mut k = 0;
    while k < 9 {
        out[k][0] = table[0][k];
        out[k][1] = table[1][k];
        out[k][2] = table[2][k];
        k += 1;
    }
    out
}

static NUM_BY_POWER: [[f64; 8]; 9] = by_power(&NUM);
static DEN_BY_POWER: [[f64; 8]; 9] = by_power(&DEN);

/// The coefficients of each lane's range.
///
/// A loop, not `std::array::from_fn`, for the reason given at `splat9`.
#[inline(always)]
fn pick9<V: Vf64>(table: &[[f64; 8]; 9], cases: V::Cases) -> [V; 9] {
    let first = V::pick(cases, &table[0]);
    let mut out = [first; 9];
    for (o, row) in out.iter_mut().zip(table).skip(1) {
        *o = V::pick(cases, row);
    }
    out
}

/// Φ(x) and Φ(-x) for each lane, computed together: both come from the small tail Φ(-|x|), so
/// the one of them that is close to 1 is `1 - tail` and the other keeps full relative accuracy.
///
/// Straight-line code with blends, inlined into the callers' SIMD loops. NaN lanes give garbage;
/// callers never pass NaN.
#[inline(always)]
pub(crate) fn phi_pair<V: Vf64>(x: V) -> (V, V) {
    let t = x.token();
    let s = |v| V::splat(t, v);
    let a = x.abs();
    let in_small = a.le(s(SMALL));
    let in_large = a.gt(s(LARGE));
    let outer = V::or(in_small, in_large);
    let ac = V::select(a.lt(s(EXP_CLAMP)), a, s(EXP_CLAMP));
    let w = ac.mul(ac);
    let v = V::select(outer, w, ac);
    let powers = Powers::new(v);
    let cases = V::cases(in_small, in_large);
    let num = powers.estrin9(pick9(&NUM_BY_POWER, cases));
    let den = powers.estrin9(pick9(&DEN_BY_POWER, cases));
    // Range 3: Cody's (1/sqrt(2π) - u·N/D)/|x| with u = 1/w, as one fraction.
    let wden = w.mul(den);
    let ratio_num = V::select(
        in_small,
        ac.mul(num),
        V::select(
            in_large,
            s(INV_SQRT_2PI).mul_add(wden, s(0.0).sub(num)),
            num,
        ),
    );
    let ratio_den = V::select(in_large, wden.mul(ac), den);
    let ratio = ratio_num.div(ratio_den);

    let gauss = gaussian_factor(ac);

    let tail = V::select(in_small, s(0.5).sub(ratio), gauss.mul(ratio));
    let head = V::select(in_small, s(0.5).add(ratio), s(1.0).sub(tail));
    let cut = a.ge(s(CUTOFF));
    let (tail, head) = (V::select(cut, s(0.0), tail), V::select(cut, s(1.0), head));
    let negative = x.lt(s(0.0));
    (
        V::select(negative, tail, head),
        V::select(negative, head, tail),
    )
}

/// Φ(x) per lane, bit-identical to `phi_pair(x).0`, with shortcuts for vectors whose lanes all
/// fall in one of Cody's ranges (common once partners are sorted by mean): each shortcut performs
/// exactly the operations the blended code performs on such lanes, minus the blends and the
/// ranges not taken.
#[inline(always)]
pub(crate) fn phi<V: Vf64>(x: V) -> V {
    let t = x.token();
    let s = |v| V::splat(t, v);
    let a = x.abs();
    let in_small = a.le(s(SMALL));
    let in_large = a.gt(s(LARGE));
    let negative = x.lt(s(0.0));
    if V::all(in_small) {
        let powers = Powers::new(a.mul(a));
        let num = powers.estrin9(splat9(t, &NUM[0]));
        let den = powers.estrin9(splat9(t, &DEN[0]));
        let ratio = a.mul(num).div(den);
        return V::select(negative, s(0.5).sub(ratio), s(0.5).add(ratio));
    }
    if !V::any(V::or(in_small, in_large)) {
        let powers = Powers::new(a);
        let ratio = powers
            .estrin9(splat9(t, &NUM[1]))
            .div(powers.estrin9(splat9(t, &DEN[1])));
        let tail = gaussian_factor(a).mul(ratio);
        return V::select(negative, tail, s(1.0).sub(tail));
    }
    if V::all(a.ge(s(CUTOFF))) {
        return V::select(negative, s(0.0), s(1.0));
    }
    phi_pair(x).0
}

/// exp(-a²/2) for 0 <= a <= EXP_CLAMP (the clamped argument of `phi_pair`), with a² split as
/// ar² + (a - ar)(a + ar), ar = a rounded to 1/16: ar² is exact, so the rounding error of a² is
/// not amplified by the exponential (Cody's device).
#[inline(always)]
fn gaussian_factor<V: Vf64>(a: V) -> V {
    let t = a.token();
    let s = |v| V::splat(t, v);
    let ar = a
        .mul_add(s(16.0), s(ROUND_SHIFTER))
        .sub(s(ROUND_SHIFTER))
        .mul(s(0.0625));
    let del = a.sub(ar).mul(a.add(ar));
    exp_dd(s(-0.5).mul(ar.mul(ar)), s(-0.5).mul(del))
}

/// The standard normal distribution function Φ(x) = P(Z <= x), Z ~ N(0, 1).
///
/// Relative error of a few ulp wherever Φ(x) >= 2.2e-308 (x > -37.5193); 0 below; NaN for NaN.
pub fn ndtr(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    phi_pair(x).0
}

/// Φ(x) and Φ(-x) of one value; see [`ndtr`].
pub fn ndtr_pair(x: f64) -> (f64, f64) {
    if x.is_nan() {
        return (f64::NAN, f64::NAN);
    }
    phi_pair(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_dd_matches_std_exp() {
        let mut x = -707.0;
        while x <= 0.0 {
            let got = exp_dd(x, 0.0f64);
            let want = x.exp();
            assert!(
                ((got - want) / want).abs() < 4e-16,
                "x={x} got={got} want={want}"
            );
            x += 0.013_7;
        }
        // A low part near -1 (as Φ's argument split produces) must not leave the reduced range.
        let mut hi = -3.0;
        while hi <= 0.0 {
            let mut lo = -1.2;
            while lo <= 0.0 {
                let got = exp_dd(hi, lo);
                let want = hi.exp() * lo.exp();
                assert!(((got - want) / want).abs() < 5e-16, "hi={hi} lo={lo}");
                lo += 0.0371;
            }
            hi += 0.0625;
        }
    }

    /// The shortcuts of `phi` must reproduce the blended code bit for bit, for lanes of every
    /// range, vectors of one range (shortcut taken) and mixed vectors (blended code taken).
    #[test]
    fn shortcuts_match_blended_code() {
        use crate::simd::{Lanes8, Portable8};
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = |lo: f64, hi: f64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            lo + (hi - lo) * ((state >> 11) as f64 / (1u64 << 53) as f64)
        };
        let ranges = [
            (-0.67, 0.67),
            (0.68, 5.6),
            (-5.6, -0.68),
            (5.7, 37.0),
            (-37.0, -5.7),
            (37.6, 60.0),
            (-60.0, -37.6),
            (-60.0, 60.0),
        ];
        for &(lo, hi) in &ranges {
            for _ in 0..2000 {
                let lanes: [f64; 8] = std::array::from_fn(|_| uniform(lo, hi));
                let check = |got: [f64; 8], what: &str| {
                    for (l, &x) in lanes.iter().enumerate() {
                        assert_eq!(got[l].to_bits(), phi_pair(x).0.to_bits(), "{what} x={x}");
                        assert_eq!(phi(x).to_bits(), phi_pair(x).0.to_bits(), "scalar x={x}");
                    }
                };
                // SAFETY: `lanes` holds 8 doubles.
                let v = unsafe { Portable8::load((), lanes.as_ptr()) };
                check(phi(v).to_array(), "portable");
                #[cfg(target_arch = "x86_64")]
                {
                    use crate::simd::{Avx2Fma, Avx2x2, Avx512, Avx512F};
                    if let Some(t) = Avx512F::detect() {
                        #[target_feature(enable = "avx512f")]
                        fn run(t: Avx512F, x: &[f64; 8]) -> [f64; 8] {
                            // SAFETY: `x` holds 8 doubles.
                            phi(unsafe { Avx512::load(t, x.as_ptr()) }).to_array()
                        }
                        // SAFETY: the token proves the CPU has AVX-512F, which `run` enables.
                        check(unsafe { run(t, &lanes) }, "avx512");
                    }
                    if let Some(t) = Avx2Fma::detect() {
                        #[target_feature(enable = "avx2,fma")]
                        fn run(t: Avx2Fma, x: &[f64; 8]) -> [f64; 8] {
                            // SAFETY: `x` holds 8 doubles.
                            phi(unsafe { Avx2x2::load(t, x.as_ptr()) }).to_array()
                        }
                        // SAFETY: the token proves the CPU has AVX2 and FMA, which `run` enables.
                        check(unsafe { run(t, &lanes) }, "avx2");
                    }
                }
            }
        }
    }

    #[test]
    fn known_values() {
        // Φ(0) = 1/2 exactly; symmetric pairs sum to one.
        assert_eq!(ndtr(0.0), 0.5);
        assert_eq!(ndtr(-0.0), 0.5);
        assert_eq!(ndtr(f64::INFINITY), 1.0);
        assert_eq!(ndtr(f64::NEG_INFINITY), 0.0);
        assert!(ndtr(f64::NAN).is_nan());
        // Values from mpmath at 50 digits.
        let cases = [
            (-1.0, 0.158_655_253_931_457_05),
            (1.96, 0.975_002_104_851_779_5),
            (-5.0, 2.866_515_718_791_939e-7),
            (-10.0, 7.619_853_024_160_525e-24),
            (-37.0, 5.725_571_222_524_577e-300),
            (-20.0, 2.753_624_118_606_233_7e-89),
            (-0.5, 0.308_537_538_725_986_9),
            (0.3, 0.617_911_422_188_952_7),
        ];
        for (x, want) in cases {
            let got = ndtr(x);
            assert!(
                ((got - want) / want).abs() < 1e-15,
                "x={x} got={got} want={want}"
            );
        }
    }
}
