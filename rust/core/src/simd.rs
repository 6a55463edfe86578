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
    type Mask: Copy;

    fn splat(v: f64) -> Self;
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
fn pick_by_select<V: Vf64>(first: V::Mask, third: V::Mask, table: &[f64; 8]) -> V {
    if table[0] == table[2] {
        V::select(V::or(first, third), V::splat(table[0]), V::splat(table[1]))
    } else {
        V::select(
            first,
            V::splat(table[0]),
            V::select(third, V::splat(table[2]), V::splat(table[1])),
        )
    }
}

/// Eight lanes loaded from and reduced to memory.
pub(crate) trait Lanes8: Vf64 {
    /// # Safety
    /// `p` must point to 8 readable doubles.
    unsafe fn load(p: *const f64) -> Self;
    fn to_array(self) -> [f64; 8];
}

impl Vf64 for f64 {
    type Mask = bool;

    #[inline(always)]
    fn splat(v: f64) -> Self {
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
        pick_by_select::<f64>(cases.0, cases.1, table)
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
    type Mask = [bool; 8];

    #[inline(always)]
    fn splat(v: f64) -> Self {
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
        pick_by_select::<Self>(cases.0, cases.1, table)
    }
}

impl Lanes8 for Portable8 {
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees 8 readable doubles.
        Portable8(unsafe { std::ptr::read_unaligned(p as *const [f64; 8]) })
    }
    #[inline(always)]
    fn to_array(self) -> [f64; 8] {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2x2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The intrinsics below are only reached through functions compiled with the matching
    //! `#[target_feature]` (see `rank::partner_sums`), after a runtime CPU check.
    use super::{pick_by_select, Lanes8, Vf64};
    use std::arch::x86_64::*;

    /// Eight lanes in one AVX-512 register.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512d);

    impl Vf64 for Avx512 {
        type Mask = __mmask8;

        #[inline(always)]
        fn splat(v: f64) -> Self {
            Avx512(unsafe { _mm512_set1_pd(v) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_add_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_sub_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_mul_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_div_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_pd(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn sqrt(self) -> Self {
            Avx512(unsafe { _mm512_sqrt_pd(self.0) })
        }
        #[inline(always)]
        fn abs(self) -> Self {
            Avx512(unsafe { _mm512_abs_pd(self.0) })
        }
        #[inline(always)]
        fn lt(self, o: Self) -> __mmask8 {
            unsafe { _mm512_cmp_pd_mask::<_CMP_LT_OQ>(self.0, o.0) }
        }
        #[inline(always)]
        fn le(self, o: Self) -> __mmask8 {
            unsafe { _mm512_cmp_pd_mask::<_CMP_LE_OQ>(self.0, o.0) }
        }
        #[inline(always)]
        fn gt(self, o: Self) -> __mmask8 {
            unsafe { _mm512_cmp_pd_mask::<_CMP_GT_OQ>(self.0, o.0) }
        }
        #[inline(always)]
        fn ge(self, o: Self) -> __mmask8 {
            unsafe { _mm512_cmp_pd_mask::<_CMP_GE_OQ>(self.0, o.0) }
        }
        #[inline(always)]
        fn eq(self, o: Self) -> __mmask8 {
            unsafe { _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(self.0, o.0) }
        }
        #[inline(always)]
        fn or(a: __mmask8, b: __mmask8) -> __mmask8 {
            a | b
        }
        #[inline(always)]
        fn all(m: __mmask8) -> bool {
            m == 0xff
        }
        #[inline(always)]
        fn any(m: __mmask8) -> bool {
            m != 0
        }
        #[inline(always)]
        fn select(m: __mmask8, a: Self, b: Self) -> Self {
            Avx512(unsafe { _mm512_mask_blend_pd(m, b.0, a.0) })
        }
        #[inline(always)]
        fn pow2_from_shifted(self) -> Self {
            unsafe {
                let bits = _mm512_add_epi64(_mm512_castpd_si512(self.0), _mm512_set1_epi64(1023));
                Avx512(_mm512_castsi512_pd(_mm512_slli_epi64::<52>(bits)))
            }
        }
        /// Case numbers 0, 1, 2 as 64-bit lane indices for a permute.
        type Cases = __m512i;
        #[inline(always)]
        fn cases(first: __mmask8, third: __mmask8) -> __m512i {
            unsafe {
                let second_or_third =
                    _mm512_mask_blend_epi64(third, _mm512_set1_epi64(1), _mm512_set1_epi64(2));
                _mm512_mask_blend_epi64(first, second_or_third, _mm512_set1_epi64(0))
            }
        }
        #[inline(always)]
        fn pick(cases: __m512i, table: &[f64; 8]) -> Self {
            Avx512(unsafe { _mm512_permutexvar_pd(cases, _mm512_loadu_pd(table.as_ptr())) })
        }
    }

    impl Lanes8 for Avx512 {
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Avx512(unsafe { _mm512_loadu_pd(p) })
        }
        #[inline(always)]
        fn to_array(self) -> [f64; 8] {
            let mut out = [0.0; 8];
            unsafe { _mm512_storeu_pd(out.as_mut_ptr(), self.0) };
            out
        }
    }

    /// Eight lanes in two AVX2 registers (used with the FMA extension).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2x2(__m256d, __m256d);

    macro_rules! both {
        ($a:expr, $b:expr, $f:ident) => {
            Avx2x2(unsafe { $f($a.0, $b.0) }, unsafe { $f($a.1, $b.1) })
        };
    }
    macro_rules! cmp {
        ($a:expr, $b:expr, $imm:ident) => {
            (unsafe { _mm256_cmp_pd::<$imm>($a.0, $b.0) }, unsafe {
                _mm256_cmp_pd::<$imm>($a.1, $b.1)
            })
        };
    }

    impl Vf64 for Avx2x2 {
        type Mask = (__m256d, __m256d);

        #[inline(always)]
        fn splat(v: f64) -> Self {
            let x = unsafe { _mm256_set1_pd(v) };
            Avx2x2(x, x)
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            both!(self, o, _mm256_add_pd)
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            both!(self, o, _mm256_sub_pd)
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            both!(self, o, _mm256_mul_pd)
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            both!(self, o, _mm256_div_pd)
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            Avx2x2(unsafe { _mm256_fmadd_pd(self.0, b.0, c.0) }, unsafe {
                _mm256_fmadd_pd(self.1, b.1, c.1)
            })
        }
        #[inline(always)]
        fn sqrt(self) -> Self {
            Avx2x2(unsafe { _mm256_sqrt_pd(self.0) }, unsafe {
                _mm256_sqrt_pd(self.1)
            })
        }
        #[inline(always)]
        fn abs(self) -> Self {
            let sign = Self::splat(-0.0);
            Avx2x2(unsafe { _mm256_andnot_pd(sign.0, self.0) }, unsafe {
                _mm256_andnot_pd(sign.1, self.1)
            })
        }
        #[inline(always)]
        fn lt(self, o: Self) -> Self::Mask {
            cmp!(self, o, _CMP_LT_OQ)
        }
        #[inline(always)]
        fn le(self, o: Self) -> Self::Mask {
            cmp!(self, o, _CMP_LE_OQ)
        }
        #[inline(always)]
        fn gt(self, o: Self) -> Self::Mask {
            cmp!(self, o, _CMP_GT_OQ)
        }
        #[inline(always)]
        fn ge(self, o: Self) -> Self::Mask {
            cmp!(self, o, _CMP_GE_OQ)
        }
        #[inline(always)]
        fn eq(self, o: Self) -> Self::Mask {
            cmp!(self, o, _CMP_EQ_OQ)
        }
        #[inline(always)]
        fn or(a: Self::Mask, b: Self::Mask) -> Self::Mask {
            (unsafe { _mm256_or_pd(a.0, b.0) }, unsafe {
                _mm256_or_pd(a.1, b.1)
            })
        }
        #[inline(always)]
        fn all(m: Self::Mask) -> bool {
            unsafe { _mm256_movemask_pd(_mm256_and_pd(m.0, m.1)) == 0xf }
        }
        #[inline(always)]
        fn any(m: Self::Mask) -> bool {
            unsafe { _mm256_movemask_pd(_mm256_or_pd(m.0, m.1)) != 0 }
        }
        #[inline(always)]
        fn select(m: Self::Mask, a: Self, b: Self) -> Self {
            Avx2x2(unsafe { _mm256_blendv_pd(b.0, a.0, m.0) }, unsafe {
                _mm256_blendv_pd(b.1, a.1, m.1)
            })
        }
        #[inline(always)]
        fn pow2_from_shifted(self) -> Self {
            unsafe {
                let bias = _mm256_set1_epi64x(1023);
                let lo =
                    _mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_castpd_si256(self.0), bias));
                let hi =
                    _mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_castpd_si256(self.1), bias));
                Avx2x2(_mm256_castsi256_pd(lo), _mm256_castsi256_pd(hi))
            }
        }
        type Cases = (Self::Mask, Self::Mask);
        #[inline(always)]
        fn cases(first: Self::Mask, third: Self::Mask) -> Self::Cases {
            (first, third)
        }
        #[inline(always)]
        fn pick(cases: Self::Cases, table: &[f64; 8]) -> Self {
            pick_by_select::<Self>(cases.0, cases.1, table)
        }
    }

    impl Lanes8 for Avx2x2 {
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            unsafe { Avx2x2(_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))) }
        }
        #[inline(always)]
        fn to_array(self) -> [f64; 8] {
            let mut out = [0.0; 8];
            unsafe {
                _mm256_storeu_pd(out.as_mut_ptr(), self.0);
                _mm256_storeu_pd(out.as_mut_ptr().add(4), self.1);
            }
            out
        }
    }
}
