//! Minimal lane abstraction for the rank reward's Φ kernel.
//!
//! Why hand-written: LLVM does not auto-vectorise the blended, three-range Φ evaluation, and
//! stable Rust has no portable SIMD. Every implementation performs the same correctly rounded
//! IEEE-754 operation on every lane (fused multiply-add only where written as `mul_add`, which
//! `f64::mul_add` reproduces exactly; no approximate reciprocals), so a lane computed with
//! AVX-512, with AVX2+FMA or with plain scalar code holds the same bits.
//!
//! `f64` is the one-lane implementation (scalar Φ); the 8-lane types are used by the rank kernel
//! so that its accumulation pattern, and thus its rounding, is the same on every CPU.

pub(crate) trait Vf64: Copy {
    /// Proof that the CPU can run this type's instructions: needed to make a first vector, and
    /// recoverable from any vector (which could only have been made with one).
    type Token: Copy;
    type Mask: Copy;

    fn token(self) -> Self::Token;
    fn splat(t: Self::Token, v: f64) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// `self · b + c` with a single rounding (IEEE fused multiply-add, exact on every path).
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn lt(self, o: Self) -> Self::Mask;
    fn le(self, o: Self) -> Self::Mask;
    fn gt(self, o: Self) -> Self::Mask;
    fn ge(self, o: Self) -> Self::Mask;
    fn eq(self, o: Self) -> Self::Mask;
    fn or(a: Self::Mask, b: Self::Mask) -> Self::Mask;
    /// Whether every lane of `m` is set.
    fn all(m: Self::Mask) -> bool;
    /// Whether any lane of `m` is set.
    fn any(m: Self::Mask) -> bool;
    /// `if m { a } else { b }` per lane.
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// 2ⁿ for lanes holding `1.5·2⁵² + n` (see `normal::exp_dd`): the bits plus 1023, shifted
    /// into the exponent field.
    fn pow2_from_shifted(self) -> Self;

    /// Which of three cases each lane is in (first, else second, else third).
    type Cases: Copy;
    fn cases(first: Self::Mask, third: Self::Mask) -> Self::Cases;
    /// `table[0]`, `table[1]` or `table[2]` per lane, by case.
    fn pick(cases: Self::Cases, table: &[f64; 8]) -> Self;
}

/// `pick` from selects, for lane types without a cheap permute.
#[inline(always)]
fn pick_by_select<V: Vf64>(t: V::Token, first: V::Mask, third: V::Mask, table: &[f64; 8]) -> V {
    let s = |v| V::splat(t, v);
    if table[0] == table[2] {
        V::select(V::or(first, third), s(table[0]), s(table[1]))
    } else {
        V::select(
            first,
            s(table[0]),
            V::select(third, s(table[2]), s(table[1])),
        )
    }
}

/// Eight lanes loaded from and reduced to memory.
pub(crate) trait Lanes8: Vf64 {
    /// # Safety
    /// `p` must point to 8 readable doubles.
    unsafe fn load(t: Self::Token, p: *const f64) -> Self;
    fn to_array(self) -> [f64; 8];
}

impl Vf64 for f64 {
    type Token = ();
    type Mask = bool;

    #[inline(always)]
    fn token(self) {}
    #[inline(always)]
    fn splat(_: (), v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self / o
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        f64::mul_add(self, b, c)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline(always)]
    fn lt(self, o: Self) -> bool {
        self < o
    }
    #[inline(always)]
    fn le(self, o: Self) -> bool {
        self <= o
    }
    #[inline(always)]
    fn gt(self, o: Self) -> bool {
        self > o
    }
    #[inline(always)]
    fn ge(self, o: Self) -> bool {
        self >= o
    }
    #[inline(always)]
    fn eq(self, o: Self) -> bool {
        self == o
    }
    #[inline(always)]
    fn or(a: bool, b: bool) -> bool {
        a | b
    }
    #[inline(always)]
    fn all(m: bool) -> bool {
        m
    }
    #[inline(always)]
    fn any(m: bool) -> bool {
        m
    }
    #[inline(always)]
    fn select(m: bool, a: Self, b: Self) -> Self {
        if m {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn pow2_from_shifted(self) -> Self {
        f64::from_bits(self.to_bits().wrapping_add(1023) << 52)
    }
    type Cases = (bool, bool);
    #[inline(always)]
    fn cases(first: bool, third: bool) -> Self::Cases {
        (first, third)
    }
    #[inline(always)]
    fn pick(cases: Self::Cases, table: &[f64; 8]) -> Self {
        pick_by_select::<f64>((), cases.0, cases.1, table)
    }
}

/// Portable eight lanes (no SIMD guarantees; the fallback on CPUs without AVX2).
#[derive(Clone, Copy)]
pub(crate) struct Portable8([f64; 8]);

macro_rules! lanewise {
    ($a:expr, $b:expr, $f:expr) => {{
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = $f($a.0[i], $b.0[i]);
        }
        Portable8(r)
    }};
}

impl Vf64 for Portable8 {
    type Token = ();
    type Mask = [bool; 8];

    #[inline(always)]
    fn token(self) {}
    #[inline(always)]
    fn splat(_: (), v: f64) -> Self {
        Portable8([v; 8])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        lanewise!(self, o, |a: f64, b: f64| a + b)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        lanewise!(self, o, |a: f64, b: f64| a - b)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        lanewise!(self, o, |a: f64, b: f64| a * b)
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        lanewise!(self, o, |a: f64, b: f64| a / b)
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        Portable8(std::array::from_fn(|i| {
            f64::mul_add(self.0[i], b.0[i], c.0[i])
        }))
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        Portable8(self.0.map(f64::sqrt))
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Portable8(self.0.map(f64::abs))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> [bool; 8] {
        std::array::from_fn(|i| self.0[i] < o.0[i])
    }
    #[inline(always)]
    fn le(self, o: Self) -> [bool; 8] {
        std::array::from_fn(|i| self.0[i] <= o.0[i])
    }
    #[inline(always)]
    fn gt(self, o: Self) -> [bool; 8] {
        std::array::from_fn(|i| self.0[i] > o.0[i])
    }
    #[inline(always)]
    fn ge(self, o: Self) -> [bool; 8] {
        std::array::from_fn(|i| self.0[i] >= o.0[i])
    }
    #[inline(always)]
    fn eq(self, o: Self) -> [bool; 8] {
        std::array::from_fn(|i| self.0[i] == o.0[i])
    }
    #[inline(always)]
    fn or(a: [bool; 8], b: [bool; 8]) -> [bool; 8] {
        std::array::from_fn(|i| a[i] | b[i])
    }
    #[inline(always)]
    fn all(m: [bool; 8]) -> bool {
        m.iter().all(|&b| b)
    }
    #[inline(always)]
    fn any(m: [bool; 8]) -> bool {
        m.iter().any(|&b| b)
    }
    #[inline(always)]
    fn select(m: [bool; 8], a: Self, b: Self) -> Self {
        Portable8(std::array::from_fn(|i| if m[i] { a.0[i] } else { b.0[i] }))
    }
    #[inline(always)]
    fn pow2_from_shifted(self) -> Self {
        Portable8(self.0.map(<f64 as Vf64>::pow2_from_shifted))
    }
    type Cases = ([bool; 8], [bool; 8]);
    #[inline(always)]
    fn cases(first: [bool; 8], third: [bool; 8]) -> Self::Cases {
        (first, third)
    }
    #[inline(always)]
    fn pick(cases: Self::Cases, table: &[f64; 8]) -> Self {
        pick_by_select::<Self>((), cases.0, cases.1, table)
    }
}

impl Lanes8 for Portable8 {
    #[inline(always)]
    unsafe fn load(_: (), p: *const f64) -> Self {
        // SAFETY: the caller guarantees 8 readable doubles.
        Portable8(unsafe { std::ptr::read_unaligned(p as *const [f64; 8]) })
    }
    #[inline(always)]
    fn to_array(self) -> [f64; 8] {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2Fma, Avx2x2, Avx512, Avx512F};

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Soundness: an intrinsic may only run on a CPU that has its instruction set. Every vector,
    //! mask and case type here has private fields and is made either from a token (`Avx512F`,
    //! `Avx2Fma`), which only a runtime CPU check hands out, or from values of these types. So
    //! holding any of them proves the check passed, and the methods can be safe.
    use super::{pick_by_select, Lanes8, Vf64};
    use std::arch::x86_64::*;

    /// Proof that the CPU supports AVX-512F.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512F(());

    impl Avx512F {
        /// The token, if the running CPU supports AVX-512F.
        #[inline]
        pub(crate) fn detect() -> Option<Self> {
            std::arch::is_x86_feature_detected!("avx512f").then_some(Self(()))
        }
    }

    /// Proof that the CPU supports AVX2 and FMA.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2Fma(());

    impl Avx2Fma {
        /// The token, if the running CPU supports AVX2 and FMA.
        #[inline]
        pub(crate) fn detect() -> Option<Self> {
            (std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"))
            .then_some(Self(()))
        }
    }

    /// Eight lanes in one AVX-512 register.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512d);

    /// Lane mask of `Avx512` comparisons.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512Mask(__mmask8);

    /// Case numbers 0, 1, 2 as 64-bit lane indices for a permute.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512Cases(__m512i);

    impl Vf64 for Avx512 {
        type Token = Avx512F;
        type Mask = Avx512Mask;

        #[inline(always)]
        fn token(self) -> Avx512F {
            Avx512F(())
        }
        #[inline(always)]
        fn splat(_: Avx512F, v: f64) -> Self {
            // SAFETY: the token proves AVX-512F.
            Avx512(unsafe { _mm512_set1_pd(v) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_add_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_sub_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_mul_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_div_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_fmadd_pd(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn sqrt(self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_sqrt_pd(self.0) })
        }
        #[inline(always)]
        fn abs(self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_abs_pd(self.0) })
        }
        #[inline(always)]
        fn lt(self, o: Self) -> Avx512Mask {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512Mask(unsafe { _mm512_cmp_pd_mask::<_CMP_LT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn le(self, o: Self) -> Avx512Mask {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512Mask(unsafe { _mm512_cmp_pd_mask::<_CMP_LE_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn gt(self, o: Self) -> Avx512Mask {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512Mask(unsafe { _mm512_cmp_pd_mask::<_CMP_GT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn ge(self, o: Self) -> Avx512Mask {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512Mask(unsafe { _mm512_cmp_pd_mask::<_CMP_GE_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn eq(self, o: Self) -> Avx512Mask {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512Mask(unsafe { _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn or(a: Avx512Mask, b: Avx512Mask) -> Avx512Mask {
            Avx512Mask(a.0 | b.0)
        }
        #[inline(always)]
        fn all(m: Avx512Mask) -> bool {
            m.0 == 0xff
        }
        #[inline(always)]
        fn any(m: Avx512Mask) -> bool {
            m.0 != 0
        }
        #[inline(always)]
        fn select(m: Avx512Mask, a: Self, b: Self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            Avx512(unsafe { _mm512_mask_blend_pd(m.0, b.0, a.0) })
        }
        #[inline(always)]
        fn pow2_from_shifted(self) -> Self {
            // SAFETY: a vector exists, so AVX-512F was detected (module note).
            unsafe {
                let bits = _mm512_add_epi64(_mm512_castpd_si512(self.0), _mm512_set1_epi64(1023));
                Avx512(_mm512_castsi512_pd(_mm512_slli_epi64::<52>(bits)))
            }
        }
        type Cases = Avx512Cases;
        #[inline(always)]
        fn cases(first: Avx512Mask, third: Avx512Mask) -> Avx512Cases {
            // SAFETY: a mask exists, so AVX-512F was detected (module note).
            unsafe {
                let second_or_third =
                    _mm512_mask_blend_epi64(third.0, _mm512_set1_epi64(1), _mm512_set1_epi64(2));
                Avx512Cases(_mm512_mask_blend_epi64(
                    first.0,
                    second_or_third,
                    _mm512_set1_epi64(0),
                ))
            }
        }
        #[inline(always)]
        fn pick(cases: Avx512Cases, table: &[f64; 8]) -> Self {
            // SAFETY: a case vector exists, so AVX-512F was detected (module note); `table`
            // holds the 8 doubles read.
            Avx512(unsafe { _mm512_permutexvar_pd(cases.0, _mm512_loadu_pd(table.as_ptr())) })
        }
    }

    impl Lanes8 for Avx512 {
        #[inline(always)]
        unsafe fn load(_: Avx512F, p: *const f64) -> Self {
            // SAFETY: the token proves AVX-512F; the caller guarantees 8 readable doubles.
            Avx512(unsafe { _mm512_loadu_pd(p) })
        }
        #[inline(always)]
        fn to_array(self) -> [f64; 8] {
            let mut out = [0.0; 8];
            // SAFETY: a vector exists, so AVX-512F was detected (module note); `out` holds 8.
            unsafe { _mm512_storeu_pd(out.as_mut_ptr(), self.0) };
            out
        }
    }

    /// Eight lanes in two AVX2 registers (used with the FMA extension).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2x2(__m256d, __m256d);

    /// Lane masks of `Avx2x2` comparisons (all-ones or all-zeros lanes).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2Mask(__m256d, __m256d);

    /// Applies a two-operand AVX2 intrinsic to both halves; `$wrap` names the result type.
    macro_rules! both {
        ($wrap:ident, $a:expr, $b:expr, $f:ident) => {{
            let (a, b) = ($a, $b);
            // SAFETY: the operands exist, so AVX2 and FMA were detected (module note).
            unsafe { $wrap($f(a.0, b.0), $f(a.1, b.1)) }
        }};
    }
    macro_rules! cmp {
        ($a:expr, $b:expr, $imm:ident) => {{
            let (a, b) = ($a, $b);
            // SAFETY: the operands exist, so AVX2 and FMA were detected (module note).
            unsafe {
                Avx2Mask(
                    _mm256_cmp_pd::<$imm>(a.0, b.0),
                    _mm256_cmp_pd::<$imm>(a.1, b.1),
                )
            }
        }};
    }

    impl Vf64 for Avx2x2 {
        type Token = Avx2Fma;
        type Mask = Avx2Mask;

        #[inline(always)]
        fn token(self) -> Avx2Fma {
            Avx2Fma(())
        }
        #[inline(always)]
        fn splat(_: Avx2Fma, v: f64) -> Self {
            // SAFETY: the token proves AVX2 and FMA.
            let x = unsafe { _mm256_set1_pd(v) };
            Avx2x2(x, x)
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            both!(Avx2x2, self, o, _mm256_add_pd)
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            both!(Avx2x2, self, o, _mm256_sub_pd)
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            both!(Avx2x2, self, o, _mm256_mul_pd)
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            both!(Avx2x2, self, o, _mm256_div_pd)
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            // SAFETY: a vector exists, so AVX2 and FMA were detected (module note).
            unsafe {
                Avx2x2(
                    _mm256_fmadd_pd(self.0, b.0, c.0),
                    _mm256_fmadd_pd(self.1, b.1, c.1),
                )
            }
        }
        #[inline(always)]
        fn sqrt(self) -> Self {
            // SAFETY: a vector exists, so AVX2 and FMA were detected (module note).
            unsafe { Avx2x2(_mm256_sqrt_pd(self.0), _mm256_sqrt_pd(self.1)) }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            let sign = Self::splat(self.token(), -0.0);
            both!(Avx2x2, sign, self, _mm256_andnot_pd)
        }
        #[inline(always)]
        fn lt(self, o: Self) -> Avx2Mask {
            cmp!(self, o, _CMP_LT_OQ)
        }
        #[inline(always)]
        fn le(self, o: Self) -> Avx2Mask {
            cmp!(self, o, _CMP_LE_OQ)
        }
        #[inline(always)]
        fn gt(self, o: Self) -> Avx2Mask {
            cmp!(self, o, _CMP_GT_OQ)
        }
        #[inline(always)]
        fn ge(self, o: Self) -> Avx2Mask {
            cmp!(self, o, _CMP_GE_OQ)
        }
        #[inline(always)]
        fn eq(self, o: Self) -> Avx2Mask {
            cmp!(self, o, _CMP_EQ_OQ)
        }
        #[inline(always)]
        fn or(a: Avx2Mask, b: Avx2Mask) -> Avx2Mask {
            both!(Avx2Mask, a, b, _mm256_or_pd)
        }
        #[inline(always)]
        fn all(m: Avx2Mask) -> bool {
            // SAFETY: a mask exists, so AVX2 and FMA were detected (module note).
            unsafe { _mm256_movemask_pd(_mm256_and_pd(m.0, m.1)) == 0xf }
        }
        #[inline(always)]
        fn any(m: Avx2Mask) -> bool {
            // SAFETY: a mask exists, so AVX2 and FMA were detected (module note).
            unsafe { _mm256_movemask_pd(_mm256_or_pd(m.0, m.1)) != 0 }
        }
        #[inline(always)]
        fn select(m: Avx2Mask, a: Self, b: Self) -> Self {
            // SAFETY: vectors exist, so AVX2 and FMA were detected (module note).
            unsafe {
                Avx2x2(
                    _mm256_blendv_pd(b.0, a.0, m.0),
                    _mm256_blendv_pd(b.1, a.1, m.1),
                )
            }
        }
        #[inline(always)]
        fn pow2_from_shifted(self) -> Self {
            // SAFETY: a vector exists, so AVX2 and FMA were detected (module note).
            unsafe {
                let bias = _mm256_set1_epi64x(1023);
                let lo =
                    _mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_castpd_si256(self.0), bias));
                let hi =
                    _mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_castpd_si256(self.1), bias));
                Avx2x2(_mm256_castsi256_pd(lo), _mm256_castsi256_pd(hi))
            }
        }
        type Cases = (Avx2Mask, Avx2Mask);
        #[inline(always)]
        fn cases(first: Avx2Mask, third: Avx2Mask) -> Self::Cases {
            (first, third)
        }
        #[inline(always)]
        fn pick(cases: Self::Cases, table: &[f64; 8]) -> Self {
            // A case pair exists, so the check behind the token already passed.
            pick_by_select::<Self>(Avx2Fma(()), cases.0, cases.1, table)
        }
    }

    impl Lanes8 for Avx2x2 {
        #[inline(always)]
        unsafe fn load(_: Avx2Fma, p: *const f64) -> Self {
            // SAFETY: the token proves AVX2; the caller guarantees 8 readable doubles.
            unsafe { Avx2x2(_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))) }
        }
        #[inline(always)]
        fn to_array(self) -> [f64; 8] {
            let mut out = [0.0; 8];
            // SAFETY: a vector exists, so AVX2 and FMA were detected (module note); `out`
            // holds 8 doubles.
            unsafe {
                _mm256_storeu_pd(out.as_mut_ptr(), self.0);
                _mm256_storeu_pd(out.as_mut_ptr().add(4), self.1);
            }
            out
        }
    }
}
