//! Correlation metrics of the paper's evaluation (§4): PLCC, SRCC, and Kendall's tau-b.
//!
//! * PLCC: Pearson's r, computed on mean-centred data scaled by its largest magnitude (no
//!   overflow), with compensated sums over fixed blocks.
//! * SRCC: Pearson's r of average ranks (ties share the mean of their ranks, as
//!   `scipy.stats.spearmanr`). Doubled ranks are integers, so the sums are exact integers and the
//!   only rounding is in the final division.
//! * KRCC: Kendall's tau-b with exact integer pair counts and `scipy.stats.kendalltau`'s final
//!   float expression, so the result is bit-identical to SciPy's.
//!
//! All three are O(n log n) or better and do not depend on the number of threads: sorts and
//! integer counts are exact, and float sums use a fixed block partition.
//!
//! Conventions (SciPy's): a constant input gives NaN (callers warn); two points give ±1.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{Error, Result};

/// What to do with NaN or infinite values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NanPolicy {
    /// Reject them with an error.
    #[default]
    Raise,
    /// Drop every pair in which either value is NaN or infinite.
    Omit,
}

/// PLCC, SRCC and KRCC of one pair of series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correlations {
    pub plcc: f64,
    pub srcc: f64,
    pub krcc: f64,
    /// Number of pairs used (after omission).
    pub n: usize,
}

/// Validated pair of series, borrowed when nothing had to be dropped.
struct Pairs<'a> {
    x: Cow<'a, [f64]>,
    y: Cow<'a, [f64]>,
}

fn prepare<'a>(x: &'a [f64], y: &'a [f64], policy: NanPolicy) -> Result<Pairs<'a>> {
    if x.is_empty() {
        return Err(Error::Empty { arg: "pred" });
    }
    if y.len() != x.len() {
        return Err(Error::Length {
            arg: "gt",
            got: y.len(),
            expected: x.len(),
            why: "same length as `pred`",
        });
    }
    let pairs = match policy {
        NanPolicy::Raise => {
            for (arg, values) in [("pred", x), ("gt", y)] {
                if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        arg,
                        index,
                        value: values[index],
                    });
                }
            }
            Pairs {
                x: Cow::Borrowed(x),
                y: Cow::Borrowed(y),
            }
        }
        NanPolicy::Omit => {
            if x.iter().chain(y).all(|v| v.is_finite()) {
                Pairs {
                    x: Cow::Borrowed(x),
                    y: Cow::Borrowed(y),
                }
            } else {
                let (kx, ky) = x
                    .iter()
                    .zip(y)
                    .filter(|(a, b)| a.is_finite() && b.is_finite())
                    .unzip();
                Pairs {
                    x: Cow::Owned(kx),
                    y: Cow::Owned(ky),
                }
            }
        }
    };
    if pairs.x.len() > u32::MAX as usize {
        // Sort orders are stored as u32.
        return Err(Error::Length {
            arg: "pred",
            got: pairs.x.len(),
            expected: u32::MAX as usize,
            why: "at most 2^32 - 1 points",
        });
    }
    if pairs.x.len() < 2 {
        return Err(Error::TooFew {
            arg: "pred",
            needed: 2,
            got: pairs.x.len(),
        });
    }
    Ok(pairs)
}

fn is_constant(v: &[f64]) -> bool {
    v.iter().all(|&a| a == v[0])
}

/// Pearson linear correlation coefficient (PLCC) of `pred` and `gt`.
pub fn plcc(pred: &[f64], gt: &[f64], policy: NanPolicy) -> Result<f64> {
    let p = prepare(pred, gt, policy)?;
    Ok(pearson(&p.x, &p.y))
}

/// Spearman rank-order correlation coefficient (SRCC), average ranks for ties.
pub fn srcc(pred: &[f64], gt: &[f64], policy: NanPolicy) -> Result<f64> {
    let p = prepare(pred, gt, policy)?;
    Ok(spearman(&p.x, &p.y))
}

/// Kendall rank correlation coefficient tau-b (KRCC).
pub fn krcc(pred: &[f64], gt: &[f64], policy: NanPolicy) -> Result<f64> {
    let p = prepare(pred, gt, policy)?;
    Ok(kendall_tau_b(&p.x, &p.y))
}

/// PLCC, SRCC and KRCC together, validating and omitting once.
pub fn evaluate(pred: &[f64], gt: &[f64], policy: NanPolicy) -> Result<Correlations> {
    let p = prepare(pred, gt, policy)?;
    let (x, y) = (&*p.x, &*p.y);
    let (plcc, (srcc, krcc)) = rayon::join(
        || pearson(x, y),
        || rayon::join(|| spearman(x, y), || kendall_tau_b(x, y)),
    );
    Ok(Correlations {
        plcc,
        srcc,
        krcc,
        n: x.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Pearson

/// Fixed block length of the float sums: the partition, hence every rounding, is independent of
/// the thread count.
const BLOCK: usize = 4096;

/// Kahan–Babuška–Neumaier accumulator.
#[derive(Clone, Copy, Default)]
struct Neumaier {
    sum: f64,
    carry: f64,
}

impl Neumaier {
    #[inline]
    fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if self.sum.abs() >= v.abs() {
            self.carry += (self.sum - t) + v;
        } else {
            self.carry += (v - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(self) -> f64 {
        self.sum + self.carry
    }
}

/// Compensated sums of `f(i)` over blocks, combined in block order.
fn block_sums<const K: usize>(n: usize, f: impl Fn(usize) -> [f64; K] + Sync) -> [f64; K] {
    let blocks = n.div_ceil(BLOCK);
    let partial: Vec<[f64; K]> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let mut acc = [Neumaier::default(); K];
            for i in b * BLOCK..((b + 1) * BLOCK).min(n) {
                for (a, v) in acc.iter_mut().zip(f(i)) {
                    a.add(v);
                }
            }
            acc.map(Neumaier::value)
        })
        .collect();
    let mut total = [Neumaier::default(); K];
    for p in partial {
        for (t, v) in total.iter_mut().zip(p) {
            t.add(v);
        }
    }
    total.map(Neumaier::value)
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    if is_constant(x) || is_constant(y) {
        return f64::NAN;
    }
    let n = x.len();
    if n == 2 {
        // SciPy returns exactly ±1 for two points.
        return (x[1] - x[0]).signum() * (y[1] - y[0]).signum();
    }
    let [sx, sy] = block_sums(n, |i| [x[i], y[i]]);
    let (mx, my) = (sx / n as f64, sy / n as f64);
    // Scale the centred values by their largest magnitude so squares cannot overflow or
    // underflow (SciPy does the same).
    let max_dev = |v: &[f64], m: f64| {
        v.par_iter()
            .with_min_len(BLOCK)
            .map(|&a| (a - m).abs())
            .reduce(|| 0.0, f64::max)
    };
    let (ax, ay) = (max_dev(x, mx), max_dev(y, my));
    let [sxx, syy, sxy] = block_sums(n, |i| {
        let (u, v) = ((x[i] - mx) / ax, (y[i] - my) / ay);
        [u * u, v * v, u * v]
    });
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

// ---------------------------------------------------------------------------------------------
// Ranking

/// A key whose unsigned order is the numeric order of finite doubles, with -0 equal to +0.
#[inline]
fn order_key(v: f64) -> u64 {
    let bits = (v + 0.0).to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The ascending order of a series: sorted keys (equal values have equal keys) and the index of
/// each, as separate arrays (less memory traffic per radix pass than pairs).
struct Sorted {
    keys: Vec<u64>,
    order: Vec<u32>,
}

impl Sorted {
    fn new(v: &[f64]) -> Self {
        let mut keys: Vec<u64> = Vec::new();
        v.par_iter()
            .with_min_len(CHUNK)
            .map(|&a| order_key(a))
            .collect_into_vec(&mut keys);
        let mut order: Vec<u32> = Vec::new();
        (0..v.len() as u32)
            .into_par_iter()
            .with_min_len(CHUNK)
            .collect_into_vec(&mut order);
        radix_sort(&mut keys, &mut order);
        Self { keys, order }
    }

    /// Runs of equal keys, as (start, end) half-open ranges.
    fn tie_runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let keys = &self.keys;
        let mut start = 0;
        std::iter::from_fn(move || {
            if start >= keys.len() {
                return None;
            }
            let key = keys[start];
            let end = start + keys[start..].iter().take_while(|&&k| k == key).count();
            let run = (start, end);
            start = end;
            Some(run)
        })
    }
}

/// Work unit of the parallel phases (radix passes, ranking, gathers): many more units than
/// threads, so that when one thread is slowed (another process on its core) the others take
/// over its share instead of waiting for it; large enough that scheduling costs stay small.
const CHUNK: usize = 1 << 14;

/// Raw destination for parallel writes to distinct indices of one buffer.
struct SharedMut<T>(*mut T);

// SAFETY: the pointer is only written through `write`, whose callers guarantee that no index is
// written by two tasks and that nothing reads the buffer meanwhile.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    fn new(buf: &mut [T]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// # Safety
    /// `i` is in bounds of the buffer, and no other task writes or reads index `i` while the
    /// buffer is shared.
    #[inline(always)]
    unsafe fn write(&self, i: usize, v: T) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.0.add(i).write(v) }
    }
}

/// Stable LSD radix sort of `keys`, carrying `order` along: 8 bits per pass (256 buckets keep
/// the scatter in cache), skipping passes whose digit is the same for every element (common for
/// scores in [0, 1], whose top bits agree).
///
/// Large inputs are sorted in parallel (`radix_sort_parallel`); being stable, the result is that
/// of the sequential sort whatever the number of threads.
fn radix_sort(keys: &mut Vec<u64>, order: &mut Vec<u32>) {
    let n = keys.len();
    if n < 256 {
        let mut pairs: Vec<(u64, u32)> = keys.iter().copied().zip(order.iter().copied()).collect();
        pairs.sort_unstable();
        (*keys, *order) = pairs.into_iter().unzip();
        return;
    }
    if n < 4 * CHUNK || rayon::current_num_threads() == 1 {
        // The parallel form makes more passes over the keys (finding the varying digits, the
        // split's count and scatter): that only pays with a second thread.
        radix_sort_sequential(keys, order);
    } else {
        radix_sort_parallel(keys, order);
    }
}

/// The parallel form: one most-significant-digit pass splits the keys into up to 256 buckets
/// (counted and scattered by chunks, in chunk order, so stably), then every bucket is finished
/// independently by the sequential sort on the lower digits, large buckets split again first.
/// The total work is that of the sequential sort plus about two reads and one copy, and the
/// buckets are many independent tasks: a thread slowed by another process on its core leaves
/// its share to the others instead of holding every pass up at a barrier.
fn radix_sort_parallel(keys: &mut Vec<u64>, order: &mut Vec<u32>) {
    let first = keys[0];
    let varying = keys
        .par_iter()
        .with_min_len(CHUNK)
        .map(|&k| k ^ first)
        .reduce(|| 0, |a, b| a | b);
    if varying == 0 {
        return;
    }
    let top = (63 - varying.leading_zeros()) / RADIX_BITS;
    let n = keys.len();
    let mut scratch_keys = vec![0u64; n];
    let mut scratch_order = vec![0u32; n];
    let digit = |k: u64| ((k >> (top * RADIX_BITS)) as usize) & (RADIX_BUCKETS - 1);
    // Per chunk and digit, the first slot the chunk writes: digits in order, and within a digit
    // the chunks in order (which keeps the sort stable).
    let mut slots: Vec<[usize; RADIX_BUCKETS]> = keys
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut h = [0usize; RADIX_BUCKETS];
            for &k in chunk {
                h[digit(k)] += 1;
            }
            h
        })
        .collect();
    let mut bucket_ends = [0usize; RADIX_BUCKETS];
    let mut sum = 0;
    for (d, end) in bucket_ends.iter_mut().enumerate() {
        for h in slots.iter_mut() {
            let here = h[d];
            h[d] = sum;
            sum += here;
        }
        *end = sum;
    }
    let (to_keys, to_order) = (
        SharedMut::new(&mut scratch_keys),
        SharedMut::new(&mut scratch_order),
    );
    keys.par_chunks(CHUNK)
        .zip(order.par_chunks(CHUNK))
        .zip(slots.par_iter_mut())
        .for_each(|((ks, is), slot)| {
            for (&k, &i) in ks.iter().zip(is) {
                let d = digit(k);
                let to = slot[d];
                slot[d] += 1;
                // SAFETY: a chunk's slots for digit d are the `count(chunk, d)` indices from its
                // start above, disjoint from every other (chunk, digit) and below n; the buffers
                // are not read until `for_each` returns.
                unsafe {
                    to_keys.write(to, k);
                    to_order.write(to, i);
                }
            }
        });
    std::mem::swap(keys, &mut scratch_keys);
    std::mem::swap(order, &mut scratch_order);
    sort_buckets(
        keys,
        order,
        &mut scratch_keys,
        &mut scratch_order,
        &bucket_ends,
        top,
    );
}

/// Buckets of at least this many keys are split on their next digit before being sorted.
const SPLIT_BUCKET: usize = 1 << 16;

/// Sorts each bucket `[end of the previous, end)` of `keys` (whose digits from `digit` up agree
/// within a bucket) on its lower digits, the buckets in parallel; `scratch_*` have `keys`' length.
fn sort_buckets(
    keys: &mut [u64],
    order: &mut [u32],
    scratch_keys: &mut [u64],
    scratch_order: &mut [u32],
    bucket_ends: &[usize],
    digit: u32,
) {
    let mut tasks = Vec::with_capacity(bucket_ends.len());
    let (mut k, mut o, mut sk, mut so) = (keys, order, scratch_keys, scratch_order);
    let mut start = 0;
    for &end in bucket_ends {
        let len = end - start;
        let (k_head, k_tail) = std::mem::take(&mut k).split_at_mut(len);
        let (o_head, o_tail) = std::mem::take(&mut o).split_at_mut(len);
        let (sk_head, sk_tail) = std::mem::take(&mut sk).split_at_mut(len);
        let (so_head, so_tail) = std::mem::take(&mut so).split_at_mut(len);
        (k, o, sk, so) = (k_tail, o_tail, sk_tail, so_tail);
        if len > 1 {
            tasks.push((k_head, o_head, sk_head, so_head));
        }
        start = end;
    }
    tasks.into_par_iter().for_each(|(k, o, sk, so)| {
        if digit == 0 {
            return;
        }
        if k.len() < SPLIT_BUCKET {
            radix_sort_lower_digits(k, o, sk, so, digit);
            return;
        }
        let below = digit - 1;
        let d = |key: u64| ((key >> (below * RADIX_BITS)) as usize) & (RADIX_BUCKETS - 1);
        let mut ends = [0usize; RADIX_BUCKETS];
        for &key in k.iter() {
            ends[d(key)] += 1;
        }
        if ends.contains(&k.len()) {
            // The same digit throughout: nothing to move.
            sort_buckets(k, o, sk, so, &[k.len()], below);
            return;
        }
        let mut next = [0usize; RADIX_BUCKETS];
        let mut sum = 0;
        for (slot, end) in next.iter_mut().zip(ends.iter_mut()) {
            *slot = sum;
            sum += *end;
            *end = sum;
        }
        for (&key, &i) in k.iter().zip(o.iter()) {
            let to = &mut next[d(key)];
            sk[*to] = key;
            so[*to] = i;
            *to += 1;
        }
        k.copy_from_slice(sk);
        o.copy_from_slice(so);
        sort_buckets(k, o, sk, so, &ends, below);
    });
}

const RADIX_BITS: u32 = 8;
const RADIX_BUCKETS: usize = 1 << RADIX_BITS;

/// The stable LSD radix sort of one bucket on its digits below `digit`, with scratch buffers of
/// its length; the result is left in `keys` / `order`.
fn radix_sort_lower_digits(
    keys: &mut [u64],
    order: &mut [u32],
    scratch_keys: &mut [u64],
    scratch_order: &mut [u32],
    digit: u32,
) {
    if lsd_passes(keys, order, scratch_keys, scratch_order, digit) {
        keys.copy_from_slice(scratch_keys);
        order.copy_from_slice(scratch_order);
    }
}

/// `radix_sort` on one thread: all digit counts from one read of the keys.
fn radix_sort_sequential(keys: &mut Vec<u64>, order: &mut Vec<u32>) {
    let n = keys.len();
    let mut scratch_keys = vec![0u64; n];
    let mut scratch_order = vec![0u32; n];
    if lsd_passes(
        keys,
        order,
        &mut scratch_keys,
        &mut scratch_order,
        64 / RADIX_BITS,
    ) {
        std::mem::swap(keys, &mut scratch_keys);
        std::mem::swap(order, &mut scratch_order);
    }
}

/// The LSD passes over the `digits` lowest digits, all counted in one read of the keys and each
/// skipped when its digit is the same throughout; the buffers alternate between `keys` and
/// `scratch_*`. True when the sorted data ended in `scratch_*`.
fn lsd_passes(
    keys: &mut [u64],
    order: &mut [u32],
    scratch_keys: &mut [u64],
    scratch_order: &mut [u32],
    digits: u32,
) -> bool {
    let n = keys.len();
    let mut counts = vec![[0usize; RADIX_BUCKETS]; digits as usize];
    for &k in keys.iter() {
        for (pass, c) in counts.iter_mut().enumerate() {
            c[((k >> (pass as u32 * RADIX_BITS)) as usize) & (RADIX_BUCKETS - 1)] += 1;
        }
    }
    let (mut from_keys, mut from_order, mut to_keys, mut to_order) =
        (keys, order, scratch_keys, scratch_order);
    let mut in_scratch = false;
    for (pass, c) in counts.iter_mut().enumerate() {
        if c.contains(&n) {
            continue;
        }
        let mut sum = 0;
        for slot in c.iter_mut() {
            let here = *slot;
            *slot = sum;
            sum += here;
        }
        let shift = pass as u32 * RADIX_BITS;
        for (&k, &i) in from_keys.iter().zip(from_order.iter()) {
            let d = ((k >> shift) as usize) & (RADIX_BUCKETS - 1);
            let to = c[d];
            to_keys[to] = k;
            to_order[to] = i;
            c[d] += 1;
        }
        std::mem::swap(&mut from_keys, &mut to_keys);
        std::mem::swap(&mut from_order, &mut to_order);
        in_scratch = !in_scratch;
    }
    in_scratch
}

/// Twice the average rank (1-based) of each element: ties share the mean of their ranks, and
/// doubling makes it an integer.
fn doubled_average_ranks(v: &[f64]) -> Vec<u64> {
    let sorted = Sorted::new(v);
    let keys = &sorted.keys;
    let mut ranks = vec![0u64; v.len()];
    let out = SharedMut::new(&mut ranks);
    sorted
        .order
        .par_chunks(CHUNK)
        .enumerate()
        .for_each(|(c, indices)| {
            // Sorted positions lo..hi; a tie run may start before lo or end after hi, so its
            // bounds are searched for (at most twice per chunk).
            let (lo, hi) = (c * CHUNK, c * CHUNK + indices.len());
            let mut start = keys[..lo].partition_point(|&k| k < keys[lo]);
            let mut pos = lo;
            while pos < hi {
                let key = keys[pos];
                let mut end = pos + 1;
                while end < hi && keys[end] == key {
                    end += 1;
                }
                if end == hi {
                    end = hi + keys[hi..].partition_point(|&k| k <= key);
                }
                // Ranks start+1 ..= end: mean (start + 1 + end) / 2.
                let doubled = (start + 1 + end) as u64;
                for &i in &indices[pos - lo..end.min(hi) - lo] {
                    // SAFETY: `order` is a permutation of 0..n, so each index is written once,
                    // by the chunk holding its sorted position; `ranks` is read after `for_each`.
                    unsafe { out.write(i as usize, doubled) };
                }
                start = end;
                pos = end;
            }
        });
    ranks
}

fn spearman(x: &[f64], y: &[f64]) -> f64 {
    if is_constant(x) || is_constant(y) {
        return f64::NAN;
    }
    let n = x.len();
    let (rx, ry) = rayon::join(|| doubled_average_ranks(x), || doubled_average_ranks(y));
    // Centred doubled ranks 2r − (n + 1) are integers: the sums below are exact.
    let centre = (n + 1) as i128;
    let (sxx, syy, sxy) = rx
        .par_iter()
        .zip(&ry)
        .with_min_len(BLOCK)
        .map(|(&a, &b)| {
            let (u, v) = (a as i128 - centre, b as i128 - centre);
            (u * u, v * v, u * v)
        })
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    // The product is exact in i128 up to n ≈ 2.5e6, leaving three roundings in all.
    let denom = match sxx.checked_mul(syy) {
        Some(p) => (p as f64).sqrt(),
        None => (sxx as f64 * syy as f64).sqrt(),
    };
    (sxy as f64 / denom).clamp(-1.0, 1.0)
}

// ---------------------------------------------------------------------------------------------
// Kendall

/// Σ c(c−1)/2 over runs of c equal values in a sorted sequence.
fn tied_pairs<T: PartialEq>(sorted: &[T]) -> u64 {
    let mut ties = 0u64;
    let mut start = 0;
    while start < sorted.len() {
        let c = sorted[start..]
            .iter()
            .take_while(|&v| *v == sorted[start])
            .count();
        ties += (c as u64) * (c as u64 - 1) / 2;
        start += c;
    }
    ties
}

/// Kendall's tau-b, reproducing `scipy.stats.kendalltau`'s float arithmetic exactly.
///
/// Sort by x (one radix sort), take y's keys in that order with each run of equal x sorted by y;
/// then the discordant pairs are exactly the strict inversions of that sequence (merge sort),
/// which leaves the sequence sorted, so y's ties can be counted from it.
fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as u64;
    let by_x = Sorted::new(x);
    let mut seq: Vec<u64> = Vec::new();
    by_x.order
        .par_iter()
        .with_min_len(CHUNK)
        .map(|&i| order_key(y[i as usize]))
        .collect_into_vec(&mut seq);
    let (mut xtie, mut ntie) = (0u64, 0u64);
    for (start, end) in by_x.tie_runs() {
        if end - start > 1 {
            let c = (end - start) as u64;
            xtie += c * (c - 1) / 2;
            let run = &mut seq[start..end];
            run.sort_unstable();
            ntie += tied_pairs(run);
        }
    }
    let dis = count_inversions(&mut seq);
    let ytie = tied_pairs(&seq);
    let tot = n * (n - 1) / 2;
    if xtie == tot || ytie == tot {
        return f64::NAN;
    }
    // SciPy: con_minus_dis = tot - xtie - ytie + ntie - 2 * dis (Python ints), then
    // tau = con_minus_dis / np.sqrt(tot - xtie) / np.sqrt(tot - ytie), clipped to [-1, 1].
    let con_minus_dis = tot as i128 - xtie as i128 - ytie as i128 + ntie as i128 - 2 * dis as i128;
    let tau = con_minus_dis as f64 / ((tot - xtie) as f64).sqrt() / ((tot - ytie) as f64).sqrt();
    tau.clamp(-1.0, 1.0)
}

/// Number of pairs p < q with v[p] > v[q]; sorts `v`. Merge sort with branch-free merges,
/// ping-ponging between `v` and one scratch buffer, halves in parallel near the top.
fn count_inversions(v: &mut [u64]) -> u64 {
    let mut scratch = vec![0u64; v.len()];
    sort_in_place(v, &mut scratch)
}

/// Below this length runs are sorted by insertion.
const LEAF: usize = 16;
/// Above this length the halves are sorted in parallel.
const PARALLEL_LEN: usize = 1 << 16;

/// Sorts `v` (using `tmp` as scratch); returns its inversions.
fn sort_in_place(v: &mut [u64], tmp: &mut [u64]) -> u64 {
    if v.len() <= LEAF {
        return insertion_sort(v);
    }
    let mid = v.len() / 2;
    let (vl, vr) = v.split_at_mut(mid);
    let (tl, tr) = tmp.split_at_mut(mid);
    let parallel = v_len_large(mid);
    let (a, b) = join_if(parallel, || sort_into(vl, tl), || sort_into(vr, tr));
    a + b + merge(parallel, tl, tr, v)
}

/// Sorts the contents of `v` into `out` (`v` is scratch afterwards); returns the inversions.
fn sort_into(v: &mut [u64], out: &mut [u64]) -> u64 {
    if v.len() <= LEAF {
        out.copy_from_slice(v);
        return insertion_sort(out);
    }
    let mid = v.len() / 2;
    let (vl, vr) = v.split_at_mut(mid);
    let (ol, or) = out.split_at_mut(mid);
    let parallel = v_len_large(mid);
    let (a, b) = join_if(parallel, || sort_in_place(vl, ol), || sort_in_place(vr, or));
    a + b + merge(parallel, vl, vr, out)
}

fn v_len_large(half: usize) -> bool {
    half >= PARALLEL_LEN / 2
}

fn join_if<A: Send, B: Send>(
    parallel: bool,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if parallel {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}

fn merge(parallel: bool, a: &[u64], b: &[u64], out: &mut [u64]) -> u64 {
    if parallel {
        merge_count_par(a, b, out)
    } else {
        merge_count(a, b, out)
    }
}

/// `merge_count` split into independent pieces, so that the top merges of the sort, which are
/// otherwise one long sequential task each, are shared between threads.
///
/// The larger input is cut at its middle element e; the other input splits where its elements
/// stop going before e in `merge_count`'s order (ties: `a` first). Output and count are those of
/// `merge_count`: every pair across the cut is either an inversion for certain or for certain
/// not.
fn merge_count_par(a: &[u64], b: &[u64], out: &mut [u64]) -> u64 {
    if a.len() + b.len() <= CHUNK || a.is_empty() || b.is_empty() {
        return merge_count(a, b, out);
    }
    let (i, j) = if a.len() >= b.len() {
        let i = a.len() / 2;
        (i, b.partition_point(|&y| y < a[i]))
    } else {
        let j = b.len() / 2;
        (a.partition_point(|&x| x <= b[j]), j)
    };
    // a[i..] against b[..j]: every such pair is an inversion (b's part is below the cut
    // element, a's part is above it or, for a cut in b, strictly above); a[..i] against b[j..]:
    // none is.
    let across = (a.len() - i) as u64 * j as u64;
    let (lo, hi) = out.split_at_mut(i + j);
    let (x, y) = rayon::join(
        || merge_count_par(&a[..i], &b[..j], lo),
        || merge_count_par(&a[i..], &b[j..], hi),
    );
    x + y + across
}

fn insertion_sort(v: &mut [u64]) -> u64 {
    let mut inv = 0u64;
    for i in 1..v.len() {
        let x = v[i];
        let mut j = i;
        while j > 0 && v[j - 1] > x {
            v[j] = v[j - 1];
            j -= 1;
        }
        inv += (i - j) as u64;
        v[j] = x;
    }
    inv
}

/// Merges sorted `a` and `b` into `out`; each element of `b` placed before remaining elements of
/// `a` is one inversion per such element. The main loop has no data-dependent branch.
fn merge_count(a: &[u64], b: &[u64], out: &mut [u64]) -> u64 {
    assert_eq!(a.len() + b.len(), out.len());
    let (na, nb) = (a.len(), b.len());
    let (mut i, mut j, mut k) = (0, 0, 0);
    let mut inv = 0u64;
    while i < na && j < nb {
        // SAFETY: i < na, j < nb and k = i + j < na + nb = out.len().
        let (x, y) = unsafe { (*a.get_unchecked(i), *b.get_unchecked(j)) };
        let take_b = y < x;
        // SAFETY: k < out.len(), as above.
        unsafe { *out.get_unchecked_mut(k) = if take_b { y } else { x } };
        inv += (na - i) as u64 * take_b as u64;
        i += !take_b as usize;
        j += take_b as usize;
        k += 1;
    }
    out[k..k + na - i].copy_from_slice(&a[i..]);
    out[k + na - i..].copy_from_slice(&b[j..]);
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_matches_std_sort() {
        let mut state = 12345u64;
        let values: Vec<f64> = (0..200_000)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                if i % 3 == 0 {
                    (u * 10.0).round() - 5.0
                } else {
                    (u - 0.5) * 1e6
                }
            })
            .collect();
        let keys: Vec<u64> = values.iter().map(|&v| order_key(v)).collect();
        let order: Vec<u32> = (0..values.len() as u32).collect();
        let mut expected: Vec<(u64, u32)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (order_key(v), i as u32))
            .collect();
        expected.sort();
        let (expected_keys, expected_order): (Vec<u64>, Vec<u32>) = expected.into_iter().unzip();
        for sort in [radix_sort_sequential, radix_sort_parallel] {
            let (mut k, mut o) = (keys.clone(), order.clone());
            sort(&mut k, &mut o);
            assert_eq!(k, expected_keys);
            assert_eq!(o, expected_order);
        }
        // Few top digits: buckets larger than SPLIT_BUCKET are split again (twice here), with
        // many equal keys to keep stable.
        let skewed: Vec<u64> = (0..400_000u64)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((i % 3) << 40) | ((state >> 60) << 24) | ((state >> 20) % 5000)
            })
            .collect();
        let order: Vec<u32> = (0..skewed.len() as u32).collect();
        let mut expected: Vec<(u64, u32)> = skewed.iter().copied().zip(0..).collect();
        expected.sort();
        let (expected_keys, expected_order): (Vec<u64>, Vec<u32>) = expected.into_iter().unzip();
        let (mut k, mut o) = (skewed, order);
        radix_sort_parallel(&mut k, &mut o);
        assert_eq!(k, expected_keys);
        assert_eq!(o, expected_order);
    }

    /// Tie runs longer than a chunk and crossing chunk borders, against a sequential reference.
    #[test]
    fn parallel_ranks_and_inversions_match_sequential() {
        let mut state = 99u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 11
        };
        for distinct in [2u64, 7, 1000, 1 << 40] {
            let values: Vec<f64> = (0..150_000).map(|_| (next() % distinct) as f64).collect();
            let mut pairs: Vec<(f64, usize)> = values.iter().copied().zip(0..).collect();
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut expected = vec![0u64; values.len()];
            let mut start = 0;
            while start < pairs.len() {
                let end = start
                    + pairs[start..]
                        .iter()
                        .take_while(|p| p.0 == pairs[start].0)
                        .count();
                for p in &pairs[start..end] {
                    expected[p.1] = (start + 1 + end) as u64;
                }
                start = end;
            }
            assert_eq!(doubled_average_ranks(&values), expected);

            let keys: Vec<u64> = values.iter().map(|&v| order_key(v)).collect();
            let (a, b) = keys.split_at(keys.len() / 3);
            let (mut a, mut b) = (a.to_vec(), b.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            let (mut seq, mut par) = (vec![0; keys.len()], vec![0; keys.len()]);
            assert_eq!(
                merge_count(&a, &b, &mut seq),
                merge_count_par(&a, &b, &mut par)
            );
            assert_eq!(seq, par);
            assert_eq!(
                merge_count(&b, &a, &mut seq),
                merge_count_par(&b, &a, &mut par)
            );
            assert_eq!(seq, par);
        }
    }

    #[test]
    fn order_key_orders_doubles() {
        let v = [-1e300, -2.5, -1e-300, -0.0, 0.0, 1e-300, 3.0, 1e300];
        for w in v.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]));
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
    }

    #[test]
    fn inversions() {
        let mut v = vec![3, 1, 2, 2, 0];
        assert_eq!(count_inversions(&mut v), 7);
        let mut big: Vec<u64> = (0..100_000).rev().collect();
        assert_eq!(count_inversions(&mut big), 100_000 * 99_999 / 2);
    }

    #[test]
    fn small_cases() {
        let p = NanPolicy::Raise;
        assert_eq!(plcc(&[1.0, 2.0], &[3.0, 1.0], p).unwrap(), -1.0);
        // 1 / sqrt(3) / sqrt(3), SciPy's value bit for bit.
        assert_eq!(
            krcc(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0], p).unwrap(),
            0.333_333_333_333_333_37
        );
        assert_eq!(srcc(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0], p).unwrap(), 0.5);
        assert!(plcc(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0], p)
            .unwrap()
            .is_nan());
        assert!(krcc(&[1.0, 2.0, 3.0], &[2.0, 2.0, 2.0], p)
            .unwrap()
            .is_nan());
        assert_eq!(plcc(&[1.0], &[1.0], p).unwrap_err().arg(), "pred");
        assert_eq!(
            plcc(&[1.0, f64::NAN], &[1.0, 2.0], p).unwrap_err().arg(),
            "pred"
        );
        assert_eq!(
            plcc(&[1.0, 2.0], &[1.0, f64::INFINITY], p)
                .unwrap_err()
                .arg(),
            "gt"
        );
        let omit = NanPolicy::Omit;
        assert_eq!(
            plcc(&[1.0, f64::NAN, 2.0], &[1.0, 5.0, 3.0], omit).unwrap(),
            1.0
        );
        assert_eq!(
            plcc(&[1.0, f64::NAN, 2.0], &[1.0, 5.0, 3.0], omit).unwrap(),
            1.0
        );
    }
}
