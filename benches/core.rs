//! Criterion benchmarks of aesr1-core: the RAPO reward at the paper's and a large RL batch size,
//! its rank kernel alone, score parsing, and the correlation metrics at n = 10^6.
//!
//! Run from the repository root: `cargo bench` (or `cargo bench -- rapo` for a subset).

use std::hint::black_box;

use aesr1_core::{
    evaluate, krcc, parse_scores, plcc, rank_reward, rapo, srcc, Groups, NanPolicy, RewardConfig,
    Ties,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Deterministic pseudo-random numbers (SplitMix64), so runs compare like with like.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal noise (sum of uniforms), enough for benchmark inputs.
    fn noise(&mut self) -> f64 {
        (0..4).map(|_| self.next_f64()).sum::<f64>() - 2.0
    }
}

/// N ground truths in [0, 1] and K predictions each: truth plus noise, clipped and rounded to two
/// decimals as a model's answers are.
fn batch(n: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng(seed);
    let gt: Vec<f64> = (0..n).map(|_| rng.next_f64()).collect();
    let pred = gt
        .iter()
        .flat_map(|&s| {
            (0..k)
                .map(|_| ((s + 0.17 * rng.noise()).clamp(0.0, 1.0) * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        })
        .collect();
    (pred, gt)
}

fn bench_rewards(c: &mut Criterion) {
    let mut group = c.benchmark_group("rapo");
    for (n, k) in [(128, 4), (1024, 16)] {
        let (pred, gt) = batch(n, k, 7);
        let groups = Groups::uniform(n, k).unwrap();
        let config = RewardConfig::default();
        group.throughput(Throughput::Elements((n * n * k) as u64));
        group.bench_with_input(
            BenchmarkId::new("total", format!("N{n}_K{k}")),
            &(),
            |b, _| {
                b.iter(|| rapo(black_box(&pred), black_box(&gt), &groups, &config, None).unwrap())
            },
        );
        group.bench_with_input(
            BenchmarkId::new("rank_only", format!("N{n}_K{k}")),
            &(),
            |b, _| {
                b.iter(|| {
                    rank_reward(
                        black_box(&pred),
                        black_box(&gt),
                        &groups,
                        1e-6,
                        Ties::Strict,
                    )
                    .unwrap()
                })
            },
        );
    }
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let texts: Vec<String> = (0..4096)
        .map(|i| {
            format!(
                "<think>{}</think><answer>0.{:02}</answer>",
                "The composition is balanced. ".repeat(20),
                i % 100
            )
        })
        .collect();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("scores_4096", |b| {
        b.iter(|| parse_scores(black_box(&texts)))
    });
    group.finish();
}

fn bench_metrics(c: &mut Criterion) {
    let n = 1_000_000;
    let mut rng = Rng(11);
    let x: Vec<f64> = (0..n).map(|_| rng.next_f64()).collect();
    let y: Vec<f64> = x.iter().map(|&v| v + 0.3 * rng.noise()).collect();
    let mut group = c.benchmark_group("metrics_1e6");
    group.sample_size(20);
    group.bench_function("plcc", |b| {
        b.iter(|| plcc(black_box(&x), black_box(&y), NanPolicy::Raise).unwrap())
    });
    group.bench_function("srcc", |b| {
        b.iter(|| srcc(black_box(&x), black_box(&y), NanPolicy::Raise).unwrap())
    });
    group.bench_function("krcc", |b| {
        b.iter(|| krcc(black_box(&x), black_box(&y), NanPolicy::Raise).unwrap())
    });
    group.bench_function("evaluate", |b| {
        b.iter(|| evaluate(black_box(&x), black_box(&y), NanPolicy::Raise).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_rewards, bench_parse, bench_metrics);
criterion_main!(benches);
