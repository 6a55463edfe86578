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

const RADIX_BITS: u32 = 8;
const RADIX_BUCKETS: usize = 1 << RADIX_BITS;

/// Buckets of at least this many keys are partitioned again before being sorted, so that a
/// bucket sort stays in cache and no single task holds a large share of the work.
const SPLIT_BUCKET: usize = 1 << 16;

/// Twice the average rank (1-based) of each element: ties share the mean of their ranks, and
/// doubling makes it an integer.
///
/// One radix pass partitions the values' keys, with their indices, into up to 256 buckets (see
/// `split`: quantiles for large inputs, so that the buckets hold about equally many); then each
/// bucket is ranked on its own (`rank_bucket`). Equal keys fall in one bucket, so a tie run never
/// crosses a bucket border and a bucket's ranks follow from its sorted keys and its first
/// position. The pass runs in `CHUNK`-sized pieces in parallel and the buckets as parallel tasks
/// (large inputs, several threads): a thread slowed by another process on its core leaves the
/// remaining buckets to the others. The work is the same with one thread and with several.
///
/// Memory: n keys, n indices and n ranks, and a bucket's worth of scratch per thread.
fn doubled_average_ranks(v: &[f64]) -> Vec<u64> {
    let n = v.len();
    let mut ranks = vec![0u64; n];
    if n <= RANK_BY_SORT {
        let mut pairs: Vec<(u64, u32)> = v.iter().map(|&a| order_key(a)).zip(0..).collect();
        pairs.sort_unstable();
        let (keys, order): (Vec<u64>, Vec<u32>) = pairs.into_iter().unzip();
        write_ranks(&keys, &order, 0, &SharedMut::new(&mut ranks));
        return ranks;
    }
    if n < SPLIT_BUCKET {
        // Ranked whole like a bucket: a partition pass would only add work at this size.
        let mut keys: Vec<u64> = v.iter().map(|&a| order_key(a)).collect();
        let mut order: Vec<u32> = (0..n as u32).collect();
        let (mut sk, mut so) = (vec![0; n], vec![0; n]);
        let out = SharedMut::new(&mut ranks);
        rank_bucket(&mut keys, &mut order, &mut sk, &mut so, 0, None, &out);
        return ranks;
    }
    let Some((split, mut counts)) = split::<RADIX_BUCKETS, _>(v, order_key, None, RADIX_BITS)
    else {
        ranks.fill(n as u64 + 1);
        return ranks;
    };
    let ends = counts.make_slots();
    let mut keys = vec![0u64; n];
    let mut order = vec![0u32; n];
    scatter_keys(
        &mut counts,
        &split,
        v,
        order_key,
        |i| i as u32,
        &mut keys,
        &mut order,
    );
    let out = SharedMut::new(&mut ranks);
    let tasks = buckets(&mut keys, &ends)
        .into_iter()
        .zip(buckets(&mut order, &ends))
        .zip(std::iter::once(0).chain(ends))
        .enumerate()
        .filter(|(_, ((keys, _), _))| !keys.is_empty())
        .map(|(b, ((keys, order), first))| (b, first, keys, order));
    let rank = |scratch: &mut (Vec<u64>, Vec<u32>), (b, first, keys, order): RankTask| {
        let len = keys.len();
        if scratch.0.len() < len {
            scratch.0.resize(len, 0);
            scratch.1.resize(len, 0);
        }
        let (sk, so) = (&mut scratch.0[..len], &mut scratch.1[..len]);
        rank_bucket(keys, order, sk, so, first, split.bucket_range(b), &out);
    };
    if in_parallel(n, PARALLEL_BUCKETS) {
        tasks
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each_init(|| (Vec::new(), Vec::new()), rank);
    } else {
        let mut scratch = (Vec::new(), Vec::new());
        tasks.for_each(|task| rank(&mut scratch, task));
    }
    ranks
}

/// The radix pass of `doubled_average_ranks` and `rank_bucket`: writes the key `key(item)` and the
/// index `index(p)` of each item (at position p of `items`) to `keys` and `order`, in the bucket
/// order of `split` whose slots `counts.make_slots()` has made.
fn scatter_keys<T: Copy + Sync>(
    counts: &mut BucketCounts<RADIX_BUCKETS>,
    split: &Split,
    items: &[T],
    key: impl Fn(T) -> u64 + Sync,
    index: impl Fn(usize) -> u32 + Sync,
    keys: &mut [u64],
    order: &mut [u32],
) {
    let (to_keys, to_order) = (SharedMut::new(keys), SharedMut::new(order));
    counts.scatter(items, |start, items, slots| {
        for (&item, p) in items.iter().zip(start..) {
            let k = key(item);
            let d = split.bucket::<RADIX_BUCKETS>(k);
            let slot = slots[d];
            slots[d] += 1;
            // SAFETY: as in `sort_by_x`: the slots of one piece and bucket are disjoint from
            // every other's and below n, and the buffers are not read until `scatter` returns.
            unsafe {
                to_keys.write(slot, k);
                to_order.write(slot, index(p));
            }
        }
        0
    });
}

/// A bucket of `doubled_average_ranks`: its index, first sorted position, keys and indices.
type RankTask<'a> = (usize, usize, &'a mut [u64], &'a mut [u32]);

/// Writes to `out` the doubled ranks of the elements whose keys and indices are `keys` and
/// `order`: the bucket of sorted positions from `first` on (`range`, when known, holds its keys).
/// `scratch_*` have the bucket's length; all four buffers are left in any order.
///
/// A large bucket is partitioned again like the whole input (its parts ranked as parallel tasks
/// when large), a small one sorted by LSD radix passes, in cache.
fn rank_bucket(
    keys: &mut [u64],
    order: &mut [u32],
    scratch_keys: &mut [u64],
    scratch_order: &mut [u32],
    first: usize,
    range: Option<Range>,
    out: &SharedMut<u64>,
) {
    let n = keys.len();
    if n <= RANK_LEAF {
        insertion_sort(keys, order);
        write_ranks(keys, order, first, out);
        return;
    }
    if n < SPLIT_BUCKET {
        if lsd_passes(keys, order, scratch_keys, scratch_order, 64 / RADIX_BITS) {
            write_ranks(scratch_keys, scratch_order, first, out);
        } else {
            write_ranks(keys, order, first, out);
        }
        return;
    }
    let Some((split, mut counts)) = split::<RADIX_BUCKETS, _>(keys, |k| k, range, RADIX_BITS)
    else {
        write_ranks(keys, order, first, out);
        return;
    };
    let ends = counts.make_slots();
    let index = |p: usize| order[p];
    scatter_keys(
        &mut counts,
        &split,
        keys,
        |k| k,
        index,
        scratch_keys,
        scratch_order,
    );
    let tasks = buckets(scratch_keys, &ends)
        .into_iter()
        .zip(buckets(scratch_order, &ends))
        .zip(buckets(keys, &ends).into_iter().zip(buckets(order, &ends)))
        .zip(std::iter::once(0).chain(ends))
        .enumerate()
        .filter(|(_, (((k, _), _), _))| !k.is_empty());
    let rank = |(b, (((k, o), (sk, so)), start)): (usize, ((_, (_, _)), usize))| {
        rank_bucket(k, o, sk, so, first + start, split.bucket_range(b), out)
    };
    if in_parallel(n, PARALLEL_BUCKETS) {
        tasks.collect::<Vec<_>>().into_par_iter().for_each(rank);
    } else {
        tasks.for_each(rank);
    }
}

/// Inputs of at most this many values are ranked by a comparison sort of (key, index) pairs, and
/// buckets of at most `RANK_LEAF` keys by insertion: radix passes cost more than they save there.
const RANK_BY_SORT: usize = 256;
const RANK_LEAF: usize = 32;

/// Sorts a few keys, carrying their indices along, by insertion.
fn insertion_sort(keys: &mut [u64], order: &mut [u32]) {
    for i in 1..keys.len() {
        let (k, o) = (keys[i], order[i]);
        let mut j = i;
        while j > 0 && keys[j - 1] > k {
            keys[j] = keys[j - 1];
            order[j] = order[j - 1];
            j -= 1;
        }
        keys[j] = k;
        order[j] = o;
    }
}

/// Writes to `out` the doubled ranks of the elements with sorted `keys` and indices `order`,
/// which hold the sorted positions from `first` on, whole tie runs only.
fn write_ranks(keys: &[u64], order: &[u32], first: usize, out: &SharedMut<u64>) {
    let mut pos = 0;
    while pos < keys.len() {
        let key = keys[pos];
        let end = pos + keys[pos..].iter().take_while(|&&k| k == key).count();
        // Ranks first + pos + 1 ..= first + end: twice their mean.
        let doubled = (2 * first + pos + 1 + end) as u64;
        for &i in &order[pos..end] {
            // SAFETY: the indices are a permutation of 0..len(out) split among the buckets, so
            // each is written once; `out` is read after every bucket is done.
            unsafe { out.write(i as usize, doubled) };
        }
        pos = end;
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
    let mut all_counts = [[0usize; RADIX_BUCKETS]; 64 / RADIX_BITS as usize];
    let counts = &mut all_counts[..digits as usize];
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

/// Kendall's tau-b, reproducing `scipy.stats.kendalltau`'s float arithmetic exactly.
fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as u64;
    let c = kendall_counts(x, y);
    let tot = n * (n - 1) / 2;
    if c.x_ties == tot || c.y_ties == tot {
        return f64::NAN;
    }
    // SciPy: con_minus_dis = tot - xtie - ytie + ntie - 2 * dis (Python ints), then
    // tau = con_minus_dis / np.sqrt(tot - xtie) / np.sqrt(tot - ytie), clipped to [-1, 1].
    let con_minus_dis = tot as i128 - c.x_ties as i128 - c.y_ties as i128 + c.xy_ties as i128
        - 2 * c.discordant as i128;
    let tau =
        con_minus_dis as f64 / ((tot - c.x_ties) as f64).sqrt() / ((tot - c.y_ties) as f64).sqrt();
    tau.clamp(-1.0, 1.0)
}

/// The exact pair counts of Kendall's tau-b.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct KendallCounts {
    /// Pairs that x and y order oppositely.
    discordant: u64,
    /// Pairs with equal x.
    x_ties: u64,
    /// Pairs with equal y.
    y_ties: u64,
    /// Pairs with equal x and equal y.
    xy_ties: u64,
}

/// Kendall's pair counts in two radix phases:
///
/// 1. `sort_by_x` sorts the points, as (x, y) key pairs, by x, and each run of equal x by y,
///    counting the ties of x and of (x, y) on the way; y's keys come out in that order.
/// 2. Then the discordant pairs are exactly the strict inversions of y's keys: `count_inversions`
///    counts them, and y's ties.
///
/// Memory: n points (16 bytes each), n y keys, and a bucket's worth of points per thread.
fn kendall_counts(x: &[f64], y: &[f64]) -> KendallCounts {
    let n = x.len();
    let mut points = vec![[0u64; 2]; n];
    let mut ys = vec![0u64; n];
    let ties = sort_by_x(x, y, &mut points, &mut ys);
    let scratch = &mut points.as_flattened_mut()[..n];
    let (discordant, y_ties) = count_inversions(&mut ys, scratch, None);
    KendallCounts {
        discordant,
        x_ties: ties.x,
        y_ties,
        xy_ties: ties.xy,
    }
}

/// c(c−1)/2, the pairs among c items.
fn pairs(c: usize) -> u64 {
    let c = c as u64;
    c * c.saturating_sub(1) / 2
}

/// Σ c(c−1)/2 over runs of c equal items in a sorted sequence.
fn tied_pairs<T: PartialEq>(sorted: impl IntoIterator<Item = T>) -> u64 {
    let (mut ties, mut run) = (0, 0);
    let mut last = None;
    for item in sorted {
        if last.as_ref() == Some(&item) {
            ties += run;
            run += 1;
        } else {
            (last, run) = (Some(item), 1);
        }
    }
    ties
}

/// Keys known to lie in `[base, base + 2^bits)`.
#[derive(Clone, Copy)]
struct Range {
    base: u64,
    bits: u32,
}

/// The smallest `Range` of the `key`s of `items`, with `base` their minimum; `None` when they
/// are all equal.
fn key_range<T: Copy + Sync>(items: &[T], key: impl Fn(T) -> u64 + Sync) -> Option<Range> {
    let min_max = |items: &[T]| {
        items.iter().fold((u64::MAX, 0), |(lo, hi), &item| {
            let k = key(item);
            (lo.min(k), hi.max(k))
        })
    };
    let (lo, hi) = if in_parallel(items.len(), PARALLEL_PASS) {
        items
            .par_chunks(CHUNK)
            .map(min_max)
            .reduce(|| (u64::MAX, 0), |a, b| (a.0.min(b.0), a.1.max(b.1)))
    } else {
        min_max(items)
    };
    (lo < hi).then(|| Range {
        base: lo,
        bits: u64::BITS - (hi - lo).leading_zeros(),
    })
}

/// A radix pass over at least this many keys counts and scatters them in `CHUNK`-sized pieces in
/// parallel (when the pool has more than one thread): the passes at the top of the sort and of
/// the count are single tasks otherwise, and one thread slowed by another process would hold
/// the others up.
const PARALLEL_PASS: usize = 1 << 17;

/// The buckets of a pass over at least this many keys are finished as parallel tasks.
const PARALLEL_BUCKETS: usize = 1 << 14;

fn in_parallel(n: usize, threshold: usize) -> bool {
    n >= threshold && rayon::current_num_threads() > 1
}

/// The bucket counts of one radix pass: one array for the whole input, or one per `CHUNK`-sized
/// piece when the pass runs in parallel.
enum BucketCounts<const B: usize> {
    Whole([usize; B]),
    Pieces(Vec<[usize; B]>),
}

impl<const B: usize> BucketCounts<B> {
    /// Counts of `bucket(item)` over `items`.
    fn new<T: Copy + Sync>(items: &[T], bucket: impl Fn(T) -> usize + Sync) -> Self {
        let count = |items: &[T]| {
            let mut counts = [0usize; B];
            for &item in items {
                counts[bucket(item)] += 1;
            }
            counts
        };
        if in_parallel(items.len(), PARALLEL_PASS) {
            Self::Pieces(items.par_chunks(CHUNK).map(count).collect())
        } else {
            Self::Whole(count(items))
        }
    }

    fn pieces(&self) -> &[[usize; B]] {
        match self {
            Self::Whole(counts) => std::slice::from_ref(counts),
            Self::Pieces(pieces) => pieces,
        }
    }

    /// Whether all `n` items fall in one bucket.
    fn single_bucket(&self, n: usize) -> bool {
        (0..B).any(|b| self.pieces().iter().map(|c| c[b]).sum::<usize>() == n)
    }

    /// Turns the counts into each piece's first slot per bucket (buckets in order, and the
    /// pieces in order within a bucket, so that scattering every piece in order is stable);
    /// returns the bucket ends.
    fn make_slots(&mut self) -> [usize; B] {
        let pieces = match self {
            Self::Whole(counts) => std::slice::from_mut(counts),
            Self::Pieces(pieces) => pieces.as_mut_slice(),
        };
        let mut ends = [0usize; B];
        let mut sum = 0;
        for (d, end) in ends.iter_mut().enumerate() {
            for counts in pieces.iter_mut() {
                let here = counts[d];
                counts[d] = sum;
                sum += here;
            }
            *end = sum;
        }
        ends
    }

    /// Runs `scatter(start, items, slots)` on every piece of `items` (in parallel when there are
    /// several), `start` being the piece's offset; returns the sum of the results. The counts
    /// must have been turned into slots.
    fn scatter<T: Sync>(
        &mut self,
        items: &[T],
        scatter: impl Fn(usize, &[T], &mut [usize; B]) -> u64 + Sync,
    ) -> u64 {
        match self {
            Self::Whole(slots) => scatter(0, items, slots),
            Self::Pieces(pieces) => items
                .par_chunks(CHUNK)
                .zip(pieces.par_iter_mut())
                .enumerate()
                .map(|(c, (items, slots))| scatter(c * CHUNK, items, slots))
                .sum(),
        }
    }
}

/// Inputs of at least this many keys are split by quantiles (`Split::Quantiles`): a digit can
/// leave almost all keys in one bucket (floating-point keys crowd into few exponents, and one
/// tiny value or zero among scores in [0.5, 1] makes the top varying digit separate it alone).
const QUANTILE_SPLIT: usize = 1 << 16;

/// Where a radix pass puts each key; keys below `base` do not occur.
enum Split {
    /// The digit `(key - base) >> shift`, the keys lying in `[base, base + (buckets << shift))`.
    Digit { base: u64, shift: u32 },
    /// `table[(key - base) >> shift]`, the keys lying in `[base, base + 2^(16 + shift))`: a
    /// nondecreasing map from their top 16 bits above `base` to buckets, built from a sample of
    /// the keys so that the buckets hold about equally many (`quantiles`).
    Quantiles {
        base: u64,
        shift: u32,
        table: Box<[u8; 1 << 16]>,
    },
}

impl Split {
    #[inline(always)]
    fn bucket<const B: usize>(&self, key: u64) -> usize {
        match self {
            Self::Digit { base, shift } => ((key - base) >> shift) as usize & (B - 1),
            Self::Quantiles { base, shift, table } => {
                usize::from(table[((key - base) >> shift) as usize & 0xffff])
            }
        }
    }

    /// The `Range` of the keys in bucket `b`, when known.
    fn bucket_range(&self, b: usize) -> Option<Range> {
        match *self {
            Self::Digit { base, shift } => Some(Range {
                base: base + ((b as u64) << shift),
                bits: shift,
            }),
            Self::Quantiles { .. } => None,
        }
    }
}

/// How to split `items` into `B` buckets by their `key`s, with the buckets' counts; `None` when
/// all keys are equal. `range`, when known, holds all keys.
///
/// Small inputs are split on a `digit_bits`-bit digit above the base of their range: the top
/// digit of the known range, or of their smallest range when they all share that one (one more
/// pass). Large inputs are split by quantiles of the top 16 bits of the known range (of the key
/// when there is none), or, when a sample crowds into one value of these, of their smallest
/// range; and on a digit when that still leaves them in one bucket. Every split leaves at least
/// two buckets, so that the recursion ends.
fn split<const B: usize, T: Copy + Sync>(
    items: &[T],
    key: impl Fn(T) -> u64 + Sync + Copy,
    range: Option<Range>,
    digit_bits: u32,
) -> Option<(Split, BucketCounts<B>)> {
    let n = items.len();
    let count = |split: &Split| BucketCounts::<B>::new(items, |item| split.bucket::<B>(key(item)));
    let digit = |range: Range| Split::Digit {
        base: range.base,
        shift: range.bits.saturating_sub(digit_bits),
    };
    if range.is_some_and(|r| r.bits == 0) {
        return None;
    }
    let known = match range {
        _ if n >= QUANTILE_SPLIT => {
            quantiles::<B, T>(items, key, range.unwrap_or(Range { base: 0, bits: 64 }))
        }
        Some(range) => Some(digit(range)),
        None => None,
    };
    if let Some(split) = known {
        let counts = count(&split);
        if !counts.single_bucket(n) {
            return Some((split, counts));
        }
    }
    let range = key_range(items, key)?;
    if n >= QUANTILE_SPLIT {
        if let Some(split) = quantiles::<B, T>(items, key, range) {
            let counts = count(&split);
            if !counts.single_bucket(n) {
                return Some((split, counts));
            }
        }
    }
    let split = digit(range);
    let counts = count(&split);
    Some((split, counts))
}

/// `Split::Quantiles` on the top 16 bits of `range`, which holds all keys, from at most 2^16
/// evenly spaced keys; `None` when more than half of these share their top 16 bits.
fn quantiles<const B: usize, T: Copy>(
    items: &[T],
    key: impl Fn(T) -> u64,
    range: Range,
) -> Option<Split> {
    let (base, shift) = (range.base, range.bits.saturating_sub(16));
    let step = items.len().div_ceil(1 << 16);
    let mut histogram = vec![0usize; 1 << 16];
    for &item in items.iter().step_by(step) {
        histogram[((key(item) - base) >> shift) as usize & 0xffff] += 1;
    }
    let samples = items.len().div_ceil(step);
    if histogram.iter().any(|&count| 2 * count > samples) {
        return None;
    }
    let mut table = Box::new([0u8; 1 << 16]);
    let mut below = 0;
    for (bucket, &count) in table.iter_mut().zip(&histogram) {
        *bucket = (below * B / samples).min(B - 1) as u8;
        below += count;
    }
    Some(Split::Quantiles { base, shift, table })
}

/// The buckets `[previous end, end)` of `v`, empty ones included.
fn buckets<'a, T>(mut v: &'a mut [T], ends: &[usize]) -> Vec<&'a mut [T]> {
    let mut buckets = Vec::with_capacity(ends.len());
    let mut start = 0;
    for &end in ends {
        let (bucket, rest) = std::mem::take(&mut v).split_at_mut(end - start);
        buckets.push(bucket);
        v = rest;
        start = end;
    }
    buckets
}

// Sorting the points.

/// Digit of the point sort: a byte (256 buckets: few enough write streams for the cache).
const SORT_DIGIT: u32 = 8;
const SORT_BUCKETS: usize = 1 << SORT_DIGIT;
/// Buckets of at most this many points are sorted by insertion.
const SORT_LEAF: usize = 32;

/// A point as the keys of its x and y.
type Point = [u64; 2];

/// Ties found by `sort_points`: pairs with equal x, and with equal x and equal y.
#[derive(Clone, Copy, Default)]
struct Ties {
    x: u64,
    xy: u64,
}

impl std::ops::Add for Ties {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            x: self.x + other.x,
            xy: self.xy + other.xy,
        }
    }
}

/// Sorts the points (x[i], y[i]) by x, and equal x by y, writing y's keys in that order to `ys`;
/// returns their ties. `points` (as long as `x`) receives the points' keys.
///
/// The first radix pass reads the values themselves and scatters their keys into `points`; then
/// `sort_points` sorts each bucket with a scratch buffer of the bucket's length (one per thread,
/// reused), so that the sort needs memory for n points, not 2n.
fn sort_by_x(x: &[f64], y: &[f64], points: &mut [Point], ys: &mut [u64]) -> Ties {
    let n = x.len();
    let Some((split, mut counts)) = split::<SORT_BUCKETS, _>(x, order_key, None, SORT_DIGIT) else {
        return sort_equal_x(y.iter().map(|&v| order_key(v)), ys);
    };
    let ends = counts.make_slots();
    let to = SharedMut::new(points);
    counts.scatter(x, |start, xs, slots| {
        for (&a, &b) in xs.iter().zip(&y[start..]) {
            let p = [order_key(a), order_key(b)];
            let d = split.bucket::<SORT_BUCKETS>(p[0]);
            let slot = slots[d];
            slots[d] += 1;
            // SAFETY: the slots of one piece and bucket are the `count(piece, bucket)` indices
            // from its first slot, disjoint from every other piece's and bucket's and below n
            // (`make_slots`); `points` is not read until `scatter` returns.
            unsafe { to.write(slot, p) };
        }
        0
    });
    let sort = |scratch: &mut Vec<Point>,
                (b, (bucket, ys)): (usize, (&mut [Point], &mut [u64]))| {
        if scratch.len() < bucket.len() {
            scratch.resize(bucket.len(), [0; 2]);
        }
        sort_points(
            bucket,
            &mut scratch[..bucket.len()],
            ys,
            split.bucket_range(b),
        )
    };
    let tasks = buckets(points, &ends)
        .into_iter()
        .zip(buckets(ys, &ends))
        .enumerate()
        .filter(|(_, (bucket, _))| !bucket.is_empty());
    if in_parallel(n, PARALLEL_BUCKETS) {
        tasks
            .collect::<Vec<_>>()
            .into_par_iter()
            .map_init(Vec::new, sort)
            .reduce(Ties::default, |a, b| a + b)
    } else {
        let mut scratch = Vec::new();
        tasks.fold(Ties::default(), |ties, task| {
            ties + sort(&mut scratch, task)
        })
    }
}

/// The ties of points with equal x and the y keys `y`, which it writes to `ys` sorted.
fn sort_equal_x(y: impl Iterator<Item = u64>, ys: &mut [u64]) -> Ties {
    for (k, v) in ys.iter_mut().zip(y) {
        *k = v;
    }
    if in_parallel(ys.len(), PARALLEL_PASS) {
        ys.par_sort_unstable();
    } else {
        ys.sort_unstable();
    }
    Ties {
        x: pairs(ys.len()),
        xy: tied_pairs(ys.iter()),
    }
}

/// Sorts `points` by x, and equal x by y, writing their y keys in that order to `ys` and
/// returning their ties; `scratch` and `ys` have the same length as `points`, and `bits`, when
/// known, is the bit from which the x keys agree. `points` and `scratch` are left in any order.
///
/// MSD radix sort: one pass scatters the points into `scratch` by their x keys' bucket (see
/// `split`: a byte of the keys, or quantiles for large inputs), then every bucket is sorted the
/// same way, `scratch` and `points` swapping roles. Small buckets are sorted by insertion, and a
/// bucket whose x keys are all equal by sorting its y keys. Large passes run in parallel pieces,
/// and the buckets of large passes as parallel tasks.
fn sort_points(
    points: &mut [Point],
    scratch: &mut [Point],
    ys: &mut [u64],
    range: Option<Range>,
) -> Ties {
    let n = points.len();
    if n <= SORT_LEAF {
        return sort_leaf(points, ys);
    }
    let Some((split, mut counts)) = split::<SORT_BUCKETS, _>(points, |p| p[0], range, SORT_DIGIT)
    else {
        return sort_equal_x(points.iter().map(|p| p[1]), ys);
    };
    let ends = counts.make_slots();
    let to = SharedMut::new(scratch);
    counts.scatter(points, |_, points, slots| {
        for &p in points {
            let d = split.bucket::<SORT_BUCKETS>(p[0]);
            let slot = slots[d];
            slots[d] += 1;
            // SAFETY: as in `sort_by_x`: the slots of one piece and bucket are disjoint from
            // every other's and below n, and `scratch` is not read until `scatter` returns.
            unsafe { to.write(slot, p) };
        }
        0
    });
    let sort = |b: usize, bucket: &mut [Point], scratch: &mut [Point], ys: &mut [u64]| {
        sort_points(bucket, scratch, ys, split.bucket_range(b))
    };
    if in_parallel(n, PARALLEL_BUCKETS) {
        let tasks = buckets(scratch, &ends)
            .into_iter()
            .zip(buckets(points, &ends))
            .zip(buckets(ys, &ends));
        tasks
            .enumerate()
            .filter(|(_, ((bucket, _), _))| !bucket.is_empty())
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(b, ((bucket, s), y))| sort(b, bucket, s, y))
            .reduce(Ties::default, |a, b| a + b)
    } else {
        let mut ties = Ties::default();
        let mut start = 0;
        for (b, end) in ends.into_iter().enumerate() {
            if end > start {
                let r = start..end;
                let (bucket, s) = (&mut scratch[r.clone()], &mut points[r.clone()]);
                ties = ties + sort(b, bucket, s, &mut ys[r]);
            }
            start = end;
        }
        ties
    }
}

/// Sorts a few points by (x, y) by insertion and writes their y keys to `ys`; returns their ties.
fn sort_leaf(points: &mut [Point], ys: &mut [u64]) -> Ties {
    for i in 1..points.len() {
        let p = points[i];
        let mut j = i;
        while j > 0 && points[j - 1] > p {
            points[j] = points[j - 1];
            j -= 1;
        }
        points[j] = p;
    }
    for (y, p) in ys.iter_mut().zip(points.iter()) {
        *y = p[1];
    }
    Ties {
        x: tied_pairs(points.iter().map(|p| p[0])),
        xy: tied_pairs(points.iter()),
    }
}

// Counting inversions.

/// Digit of the inversion count: 4 bits, so that the counters of a pass are one 16-lane vector.
const COUNT_DIGIT: u32 = 4;
const COUNT_BUCKETS: usize = 1 << COUNT_DIGIT;
/// Buckets of at most this many keys are counted by insertion sort.
const COUNT_LEAF: usize = 16;

/// `LOWER[d][e]` is 1 for the buckets e below d.
static LOWER: [[u32; COUNT_BUCKETS]; COUNT_BUCKETS] = {
    let mut lower = [[0; COUNT_BUCKETS]; COUNT_BUCKETS];
    let mut d = 0;
    while d < COUNT_BUCKETS {
        let mut e = 0;
        while e < d {
            lower[d][e] = 1;
            e += 1;
        }
        d += 1;
    }
    lower
};

/// The strict inversions (pairs p < q with keys[p] > keys[q]) and the equal pairs of `keys`;
/// `scratch` has the same length, `bits`, when known, is the bit from which the keys agree, and
/// both buffers are left permuted.
///
/// MSD radix partition into 16 buckets (see `split`: 4 bits of the keys, or quantiles for large
/// inputs): one stable pass scatters the keys by bucket and counts, for each key, the earlier
/// keys in a higher bucket (a 16-lane counter vector); the inverted pairs within a bucket are
/// counted the same way in the bucket, `scratch` and `keys` swapping roles. Small buckets are
/// counted by insertion sort, and a bucket of equal keys gives only equal pairs. Large passes run
/// in parallel pieces, the inverted pairs across pieces counted from the pieces' bucket counts,
/// and the buckets of large passes as parallel tasks.
fn count_inversions(keys: &mut [u64], scratch: &mut [u64], range: Option<Range>) -> (u64, u64) {
    let n = keys.len();
    if n <= COUNT_LEAF {
        return count_leaf(keys);
    }
    let Some((split, mut counts)) = split::<COUNT_BUCKETS, _>(keys, |k| k, range, COUNT_DIGIT)
    else {
        return (0, pairs(n));
    };
    let across = inversions_across(counts.pieces());
    let ends = counts.make_slots();
    let to = SharedMut::new(scratch);
    let within = counts.scatter(keys, |_, keys, slots| {
        // greater[e]: the keys so far whose bucket is above e.
        let mut greater = [0u32; COUNT_BUCKETS];
        let mut inversions = 0;
        for &k in keys {
            let d = split.bucket::<COUNT_BUCKETS>(k);
            inversions += u64::from(greater[d]);
            for (g, lower) in greater.iter_mut().zip(&LOWER[d]) {
                *g += lower;
            }
            let slot = slots[d];
            slots[d] += 1;
            // SAFETY: as in `sort_by_x`: the slots of one piece and bucket are disjoint from
            // every other's and below n, and `scratch` is not read until `scatter` returns.
            unsafe { to.write(slot, k) };
        }
        inversions
    });
    let count = |b: usize, bucket: &mut [u64], scratch: &mut [u64]| {
        count_inversions(bucket, scratch, split.bucket_range(b))
    };
    let add = |a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1);
    let (below, equal) = if in_parallel(n, PARALLEL_BUCKETS) {
        let tasks = buckets(scratch, &ends)
            .into_iter()
            .zip(buckets(keys, &ends));
        tasks
            .enumerate()
            .filter(|(_, (bucket, _))| bucket.len() > 1)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(b, (bucket, s))| count(b, bucket, s))
            .reduce(|| (0, 0), add)
    } else {
        let mut total = (0, 0);
        let mut start = 0;
        for (b, end) in ends.into_iter().enumerate() {
            if end - start > 1 {
                let r = start..end;
                total = add(total, count(b, &mut scratch[r.clone()], &mut keys[r]));
            }
            start = end;
        }
        total
    };
    (across + within + below, equal)
}

/// The pairs of keys in different pieces whose earlier key is in the higher bucket, from the
/// pieces' bucket counts.
fn inversions_across(pieces: &[[usize; COUNT_BUCKETS]]) -> u64 {
    let mut before = [0u64; COUNT_BUCKETS];
    let mut inversions = 0;
    for counts in pieces {
        let mut greater = 0;
        for d in (0..COUNT_BUCKETS).rev() {
            inversions += counts[d] as u64 * greater;
            greater += before[d];
        }
        for (b, &c) in before.iter_mut().zip(counts) {
            *b += c as u64;
        }
    }
    inversions
}

/// Strict inversions and equal pairs of a few keys, by insertion sort.
fn count_leaf(keys: &mut [u64]) -> (u64, u64) {
    let mut inversions = 0;
    for i in 1..keys.len() {
        let k = keys[i];
        let mut j = i;
        while j > 0 && keys[j - 1] > k {
            keys[j] = keys[j - 1];
            j -= 1;
        }
        inversions += (i - j) as u64;
        keys[j] = k;
    }
    (inversions, tied_pairs(keys.iter()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Doubled average ranks by std's sort.
    fn reference_ranks(values: &[f64]) -> Vec<u64> {
        let mut keyed: Vec<(u64, usize)> = values.iter().map(|&v| order_key(v)).zip(0..).collect();
        keyed.sort_unstable();
        let mut ranks = vec![0u64; values.len()];
        let mut start = 0;
        while start < keyed.len() {
            let run = keyed[start..]
                .iter()
                .take_while(|p| p.0 == keyed[start].0)
                .count();
            for p in &keyed[start..start + run] {
                ranks[p.1] = (2 * start + 1 + run) as u64;
            }
            start += run;
        }
        ranks
    }

    /// Ranks at lengths around every threshold of the ranking (the parallel buckets and passes,
    /// the quantile split, the buckets split again), with 1, 2 and 3 threads, on continuous
    /// values, two-decimal scores, a few values with long tie runs, and values crowded into one
    /// bucket of the first split (a bucket split again, its parts ranked in parallel).
    #[test]
    fn ranks_match_sort_at_thresholds() {
        let mut state = 99u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for n in [
            2,
            RANK_LEAF + 1,
            RANK_BY_SORT,
            RANK_BY_SORT + 1,
            PARALLEL_BUCKETS - 1,
            PARALLEL_BUCKETS + 1,
            SPLIT_BUCKET - 1,
            SPLIT_BUCKET + 1,
            QUANTILE_SPLIT + 3,
            PARALLEL_PASS + 1,
            4 * SPLIT_BUCKET + 1,
        ] {
            let continuous: Vec<f64> = (0..n).map(|_| next() - 0.3).collect();
            let decimals: Vec<f64> = continuous
                .iter()
                .map(|&a| (a * 100.0).round() / 100.0)
                .collect();
            let few: Vec<f64> = (0..n).map(|_| (next() * 3.0).floor() - 0.0).collect();
            // Nearly all in one 2^-40-wide interval, a few spread over many orders of magnitude.
            let crowded: Vec<f64> = (0..n)
                .map(|i| match i % 997 {
                    0 => -1e300 * next(),
                    1 => 1e10 * next(),
                    _ => 1.0 + next() * 1e-12,
                })
                .collect();
            for values in [continuous, decimals, few, crowded] {
                let want = reference_ranks(&values);
                for threads in [1, 2, 3] {
                    let got = in_pool(threads, || doubled_average_ranks(&values));
                    assert!(got == want, "n={n}, {threads} threads");
                }
            }
        }
        for threads in [1, 3] {
            let equal = vec![-0.0; SPLIT_BUCKET + 3];
            let got = in_pool(threads, || doubled_average_ranks(&equal));
            assert_eq!(got, reference_ranks(&equal));
            let mut zeros = equal.clone();
            zeros[17] = 0.0;
            zeros[5] = -1.0;
            let got = in_pool(threads, || doubled_average_ranks(&zeros));
            assert_eq!(got, reference_ranks(&zeros));
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
        let mut scratch = vec![0; v.len()];
        assert_eq!(count_inversions(&mut v, &mut scratch, None), (7, 1));
        let mut big: Vec<u64> = (0..100_000).rev().collect();
        let mut scratch = vec![0; big.len()];
        assert_eq!(
            count_inversions(&mut big, &mut scratch, None),
            (100_000 * 99_999 / 2, 0)
        );
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

    /// Strict inversions and equal pairs, from all pairs.
    fn naive_inversions(keys: &[u64]) -> (u64, u64) {
        let (mut inversions, mut equal) = (0, 0);
        for (i, &a) in keys.iter().enumerate() {
            for &b in &keys[i + 1..] {
                inversions += u64::from(a > b);
                equal += u64::from(a == b);
            }
        }
        (inversions, equal)
    }

    /// Strict inversions and equal pairs by a bottom-up merge sort, for inputs too long for
    /// `naive_inversions`.
    fn merge_inversions(keys: &[u64]) -> (u64, u64) {
        let (mut v, mut out) = (keys.to_vec(), vec![0; keys.len()]);
        let mut inversions = 0;
        let mut width = 1;
        while width < v.len() {
            for (run, merged) in v.chunks(2 * width).zip(out.chunks_mut(2 * width)) {
                let (left, right) = run.split_at(width.min(run.len()));
                let (mut i, mut j) = (0, 0);
                for slot in merged {
                    if j == right.len() || (i < left.len() && left[i] <= right[j]) {
                        *slot = left[i];
                        i += 1;
                    } else {
                        inversions += (left.len() - i) as u64;
                        *slot = right[j];
                        j += 1;
                    }
                }
            }
            std::mem::swap(&mut v, &mut out);
            width *= 2;
        }
        (inversions, tied_pairs(&v))
    }

    /// Kendall's pair counts from all pairs.
    fn naive_counts(x: &[f64], y: &[f64]) -> KendallCounts {
        let mut c = KendallCounts::default();
        for i in 0..x.len() {
            for j in i + 1..x.len() {
                let (dx, dy) = (x[i] - x[j], y[i] - y[j]);
                c.x_ties += u64::from(dx == 0.0);
                c.y_ties += u64::from(dy == 0.0);
                c.xy_ties += u64::from(dx == 0.0 && dy == 0.0);
                c.discordant += u64::from(dx * dy < 0.0);
            }
        }
        c
    }

    /// Kendall's pair counts with std's sort and `merge_inversions`.
    fn reference_counts(x: &[f64], y: &[f64]) -> KendallCounts {
        let mut points: Vec<(u64, u64)> = x
            .iter()
            .zip(y)
            .map(|(&a, &b)| (order_key(a), order_key(b)))
            .collect();
        points.sort_unstable();
        let xs: Vec<u64> = points.iter().map(|p| p.0).collect();
        let ys: Vec<u64> = points.iter().map(|p| p.1).collect();
        let (discordant, y_ties) = merge_inversions(&ys);
        KendallCounts {
            discordant,
            x_ties: tied_pairs(&xs),
            y_ties,
            xy_ties: tied_pairs(&points),
        }
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    fn counted(keys: &[u64]) -> (u64, u64) {
        let (mut keys, mut scratch) = (keys.to_vec(), vec![0; keys.len()]);
        count_inversions(&mut keys, &mut scratch, None)
    }

    /// Keys from a few values (heavy ties), from a shared high part with varying low bits (a
    /// digit that is the same throughout), or from all of u64.
    fn keys(n: usize) -> impl Strategy<Value = Vec<u64>> {
        prop_oneof![
            prop::collection::vec(0..4u64, n),
            prop::collection::vec(0..60u64, n),
            prop::collection::vec((0..3u64, any::<u16>()), n).prop_map(|v| v
                .into_iter()
                .map(|(h, l)| (h << 40) | u64::from(l))
                .collect()),
            prop::collection::vec(any::<u64>(), n),
        ]
    }

    /// Lengths on both sides of the leaf sizes and around a few bucket splits.
    fn lengths() -> impl Strategy<Value = usize> {
        prop_oneof![
            0..40usize,
            (COUNT_LEAF - 1)..=(COUNT_LEAF + 1),
            (SORT_LEAF - 1)..=(SORT_LEAF + 1),
            200..1200usize,
        ]
    }

    /// Scores as the models give them (two decimals) or continuous, with both zeros.
    fn scores(n: usize) -> impl Strategy<Value = Vec<f64>> {
        prop_oneof![
            prop::collection::vec((0..=100u32).prop_map(|v| f64::from(v) / 100.0), n),
            prop::collection::vec((0..3u32).prop_map(|v| [-0.0, 0.0, 1.0][v as usize]), n),
            prop::collection::vec(-1e3..1e3f64, n),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        #[test]
        fn inversion_count_matches_all_pairs(keys in lengths().prop_flat_map(keys)) {
            let want = naive_inversions(&keys);
            prop_assert_eq!(merge_inversions(&keys), want);
            prop_assert_eq!(counted(&keys), want);
        }

        #[test]
        fn ranks_match_sort(values in lengths().prop_flat_map(scores)) {
            prop_assert_eq!(doubled_average_ranks(&values), reference_ranks(&values));
        }

        #[test]
        fn kendall_counts_match_all_pairs(
            (x, y) in lengths().prop_flat_map(|n| (scores(n), scores(n)))
        ) {
            prop_assert_eq!(kendall_counts(&x, &y), naive_counts(&x, &y));
        }
    }

    /// Large inputs whose quantile split would leave one bucket (a lone key below many equal
    /// ones, which the sample may miss) or that crowd into one 16-bit prefix.
    #[test]
    fn skewed_large_inputs() {
        let n = QUANTILE_SPLIT + 5;
        let mut lone_low = vec![1u64 << 40; n];
        lone_low[n / 2 + 1] = 3;
        let mut lone_high = vec![5u64; n];
        lone_high[7] = u64::MAX;
        let crowded: Vec<u64> = (0..n as u64)
            .map(|i| {
                if i % 1000 == 0 {
                    i << 40
                } else {
                    (1 << 50) + (i * 7919) % 5000
                }
            })
            .collect();
        for keys in [lone_low, lone_high, crowded] {
            for threads in [1, 3] {
                assert_eq!(in_pool(threads, || counted(&keys)), merge_inversions(&keys));
            }
            let x: Vec<f64> = keys.iter().map(|&k| k as f64).collect();
            let y: Vec<f64> = keys.iter().rev().map(|&k| (k % 977) as f64).collect();
            for threads in [1, 3] {
                let got = in_pool(threads, || kendall_counts(&x, &y));
                assert_eq!(got, reference_counts(&x, &y));
            }
        }
        // One x for all but a few points: a bucket of equal x large enough to sort in parallel.
        let n = PARALLEL_PASS + 3;
        let x: Vec<f64> = (0..n)
            .map(|i| if i % 50_000 == 7 { i as f64 } else { 0.5 })
            .collect();
        let y: Vec<f64> = (0..n).map(|i| ((i * 7919) % 100_003) as f64).collect();
        let want = reference_counts(&x, &y);
        for threads in [1, 3] {
            assert_eq!(in_pool(threads, || kendall_counts(&x, &y)), want);
        }
    }

    /// Lengths around the parallel and quantile thresholds, with one thread and with several,
    /// continuous and heavily tied (the largest with fewer cases: they take seconds unoptimised).
    #[test]
    fn counts_at_thresholds() {
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let round = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .map(|&a| (a.clamp(0.0, 1.0) * 100.0).round() / 100.0)
                .collect()
        };
        for (n, threads) in [
            (PARALLEL_BUCKETS - 1, &[1, 3][..]),
            (PARALLEL_BUCKETS + 1, &[1, 3]),
            (QUANTILE_SPLIT - 1, &[1, 3]),
            (QUANTILE_SPLIT + 1, &[1, 3]),
            // Below this the passes run whole with any number of threads.
            (PARALLEL_PASS - 1, &[3]),
            (PARALLEL_PASS + 1, &[3]),
        ] {
            let x: Vec<f64> = (0..n).map(|_| next()).collect();
            let y: Vec<f64> = x.iter().map(|&a| a + 0.3 * (next() - 0.5)).collect();
            let (tx, ty) = (round(&x), round(&y));
            let mut cases = vec![(&x, &y), (&tx, &y)];
            if n < QUANTILE_SPLIT {
                cases.push((&tx, &ty));
            }
            for (x, y) in cases {
                let want = reference_counts(x, y);
                let keys: Vec<u64> = y.iter().map(|&v| order_key(v)).collect();
                let want_inversions = merge_inversions(&keys);
                for &threads in threads {
                    assert_eq!(in_pool(threads, || kendall_counts(x, y)), want, "n={n}");
                    let got = in_pool(threads, || counted(&keys));
                    assert_eq!(got, want_inversions, "n={n}");
                }
            }
        }
    }

    /// Where the time of SRCC and KRCC goes at n = 10^6, continuous, with two-decimal scores, and
    /// with two-decimal x only, with 1 and 2 threads: 9 rounds, each timing every phase with
    /// both pools in turn (the first pool alternating), so that background load on a shared
    /// machine hits both alike; prints the least and the median time of each phase:
    /// `cargo test --release --lib profile_ -- --ignored --nocapture --test-threads 1`.
    fn profile(metric: &str, phases: &[&str], run: impl Fn(&[f64], &[f64]) -> Vec<f64> + Sync) {
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let x: Vec<f64> = (0..1_000_000).map(|_| next()).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|&a| a + 0.3 * (next() + next() - 1.0))
            .collect();
        let round = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .map(|&a| (a.clamp(0.0, 1.0) * 100.0).round() / 100.0)
                .collect()
        };
        let pools = [1, 2].map(|threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        });
        for (data, x, y) in [
            ("continuous", x.clone(), y.clone()),
            ("2 decimals", round(&x), round(&y)),
            ("x 2 decimals", round(&x), y.clone()),
        ] {
            let mut times = [vec![], vec![]];
            for round in 0..10 {
                for p in [round % 2, 1 - round % 2] {
                    let t = pools[p].install(|| run(&x, &y));
                    // The first round warms the pools and the allocator.
                    if round > 0 {
                        times[p].push(t);
                    }
                }
            }
            for (p, times) in times.iter().enumerate() {
                let summary: Vec<String> = phases
                    .iter()
                    .enumerate()
                    .map(|(i, phase)| {
                        let mut t: Vec<f64> = times.iter().map(|t| t[i]).collect();
                        t.sort_by(f64::total_cmp);
                        format!("{phase} {:.1} / {:.1}", t[0], t[t.len() / 2])
                    })
                    .collect();
                println!(
                    "{metric}, {data}, {} thread(s), least / median ms: {}",
                    p + 1,
                    summary.join(", ")
                );
            }
        }
    }

    fn ms(start: std::time::Instant) -> f64 {
        start.elapsed().as_secs_f64() * 1e3
    }

    #[test]
    #[ignore]
    fn profile_spearman() {
        use std::time::Instant;
        profile("srcc", &["ranks of x", "ranks of y", "srcc"], |x, y| {
            let start = Instant::now();
            std::hint::black_box(doubled_average_ranks(x));
            let rank_x = ms(start);
            let start = Instant::now();
            std::hint::black_box(doubled_average_ranks(y));
            let rank_y = ms(start);
            let start = Instant::now();
            std::hint::black_box(spearman(x, y));
            vec![rank_x, rank_y, ms(start)]
        });
    }

    #[test]
    #[ignore]
    fn profile_kendall() {
        use std::time::Instant;
        profile("krcc", &["sort by x", "inversions", "krcc"], |x, y| {
            let start = Instant::now();
            let mut points = vec![[0; 2]; x.len()];
            let mut ys = vec![0; x.len()];
            sort_by_x(x, y, &mut points, &mut ys);
            let sort = ms(start);
            let start = Instant::now();
            let scratch = &mut points.as_flattened_mut()[..ys.len()];
            count_inversions(&mut ys, scratch, None);
            let count = ms(start);
            let start = Instant::now();
            std::hint::black_box(kendall_tau_b(x, y));
            vec![sort, count, ms(start)]
        });
    }
}
