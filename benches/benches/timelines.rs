//! imstore against a key-per-message RocksDB layout and SQLite, on the same
//! workload, in one run. Every write is durable (WAL fsynced) in all three.
//!
//! `cargo bench -p imstore-benches --bench timelines`, then
//! `python3 benches/report.py` for the table in `docs/benchmarks.md`.
//!
//! Scale with `IMSTORE_BENCH_CONVERSATIONS` (default 1,000) and
//! `IMSTORE_BENCH_PER_CONVERSATION` (default 1,000): the read benches run
//! over conversations × per-conversation messages of 100 bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imstore_benches::{
    bench_dir, message, Imstore, Msg, RocksKv, Sqlite, Timelines, FULL_CHECKSUMS,
};
use imstore_engine::Options;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PAYLOAD: usize = 100;
const SEED: u64 = 0x1a57_0e5e;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn conversations() -> usize {
    env_usize("IMSTORE_BENCH_CONVERSATIONS", 1_000)
}

fn per_conversation() -> usize {
    env_usize("IMSTORE_BENCH_PER_CONVERSATION", 1_000)
}

/// Fresh, empty stores of each kind; the dirs live as long as the stores.
fn engines(tag: &str) -> Vec<(Box<dyn Timelines>, tempfile::TempDir)> {
    let a = bench_dir(&format!("{tag}-imstore"));
    let b = bench_dir(&format!("{tag}-kv"));
    let c = bench_dir(&format!("{tag}-sqlite"));
    vec![
        (
            Box::new(Imstore::open(a.path(), Options::default())) as Box<dyn Timelines>,
            a,
        ),
        (Box::new(RocksKv::open(b.path(), conversations())), b),
        (Box::new(Sqlite::open(c.path())), c),
    ]
}

/// Unique message numbers, so no append is ever a dedup hit.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn next_message(sender: u64) -> Msg {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    message(n % conversations() as u64, sender, n, PAYLOAD)
}

fn writes(c: &mut Criterion) {
    let stores = engines("writes");

    let mut group = c.benchmark_group("append_single");
    group.throughput(Throughput::Elements(1));
    for (store, _) in &stores {
        group.bench_function(BenchmarkId::new(store.name(), "1_writer"), |b| {
            b.iter(|| store.append(&next_message(0)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("append_concurrent");
    group.throughput(Throughput::Elements(1));
    for writers in [1u64, 8, 64] {
        for (store, _) in &stores {
            group.bench_function(
                BenchmarkId::new(store.name(), format!("{writers}_writers")),
                |b| b.iter_custom(|iters| concurrent_appends(store.as_ref(), writers, iters)),
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("append_batch");
    group.throughput(Throughput::Elements(100));
    for (store, _) in &stores {
        group.bench_function(BenchmarkId::new(store.name(), "100_messages"), |b| {
            b.iter(|| {
                let batch: Vec<Msg> = (0..100).map(|_| next_message(1)).collect();
                store.append_batch(&batch)
            })
        });
    }
    group.finish();
}

/// `iters` appends spread over `writers` threads; returns the wall time.
fn concurrent_appends(store: &dyn Timelines, writers: u64, iters: u64) -> Duration {
    let per_writer = iters.div_ceil(writers).max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            s.spawn(move || {
                for _ in 0..per_writer {
                    store.append(&next_message(w));
                }
            });
        }
    });
    let elapsed = start.elapsed();
    // Scale to exactly `iters` operations.
    elapsed.mul_f64(iters as f64 / (per_writer * writers) as f64)
}

fn load(store: &dyn Timelines, conversations: usize, per_conversation: usize) {
    // Interleave conversations, 1,000 messages per transaction.
    let mut batch = Vec::with_capacity(1000);
    for n in 0..per_conversation as u64 {
        for conversation in 0..conversations as u64 {
            batch.push(message(
                conversation,
                conversation % 7,
                1_000_000_000 + n,
                PAYLOAD,
            ));
            if batch.len() == 1000 {
                store.append_batch(&batch);
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        store.append_batch(&batch);
    }
    store.settle();
}

fn reads(c: &mut Criterion) {
    let (convs, per) = (conversations(), per_conversation());
    let stores = engines("reads");
    // Loaded on first use, so a filtered run that skips reads skips loading.
    let loaded = std::sync::Once::new();
    let ensure_loaded = || {
        loaded.call_once(|| {
            for (store, _) in &stores {
                let start = Instant::now();
                load(store.as_ref(), convs, per);
                eprintln!(
                    "loaded {} messages into {} in {:.1?}",
                    convs * per,
                    store.name(),
                    start.elapsed()
                );
            }
            // Checksummed reads: every engine returns the same data, byte for byte.
            FULL_CHECKSUMS.store(true, Ordering::Relaxed);
            let mut rng = StdRng::seed_from_u64(SEED);
            for _ in 0..20 {
                let conversation = rng.random_range(0..convs as u64);
                let from = rng.random_range(1..=per as u64);
                let want = (
                    stores[0].0.latest(conversation, 50),
                    stores[0].0.range(conversation, from, 100),
                );
                for (store, _) in &stores[1..] {
                    let got = (
                        store.latest(conversation, 50),
                        store.range(conversation, from, 100),
                    );
                    assert_eq!(
                        got,
                        want,
                        "{} disagrees with imstore on conversation {conversation}",
                        store.name()
                    );
                }
            }
            FULL_CHECKSUMS.store(false, Ordering::Relaxed);
        })
    };

    let mut group = c.benchmark_group("read_latest");
    group.throughput(Throughput::Elements(1));
    for (store, _) in &stores {
        let mut rng = StdRng::seed_from_u64(SEED);
        group.bench_function(BenchmarkId::new(store.name(), "50"), |b| {
            ensure_loaded();
            b.iter(|| store.latest(rng.random_range(0..convs as u64), 50))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("read_range");
    group.throughput(Throughput::Elements(1));
    let span = 1000.min(per);
    for (store, _) in &stores {
        let mut rng = StdRng::seed_from_u64(SEED);
        group.bench_function(BenchmarkId::new(store.name(), span), |b| {
            ensure_loaded();
            b.iter(|| {
                let from = rng.random_range(1..=(per - span + 1) as u64);
                store.range(rng.random_range(0..convs as u64), from, span)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("read_after");
    group.throughput(Throughput::Elements(1));
    for (store, _) in &stores {
        let mut rng = StdRng::seed_from_u64(SEED);
        group.bench_function(BenchmarkId::new(store.name(), "100"), |b| {
            ensure_loaded();
            b.iter(|| {
                let after = rng.random_range(0..per.saturating_sub(100).max(1) as u64);
                store.range(rng.random_range(0..convs as u64), after + 1, 100)
            })
        });
    }
    group.finish();
}

/// How segment capacity trades read cost: latest 50 and a range of 1,000
/// with segments of 16 … 256 records, on 200 conversations × 1,000.
fn segment_capacity(c: &mut Criterion) {
    let (convs, per) = (200usize, per_conversation());
    let mut group = c.benchmark_group("segment_capacity");
    group.throughput(Throughput::Elements(1));
    for records in [16u32, 32, 64, 128, 256] {
        let dir = bench_dir(&format!("segcap-{records}"));
        let store = Imstore::open(
            dir.path(),
            Options {
                segment_max_records: records,
                segment_max_bytes: u32::MAX,
                // Measure the segment read path, not the tail cache.
                tail_cache_bytes: 0,
                ..Options::default()
            },
        );
        let loaded = std::sync::Once::new();
        let ensure_loaded = || loaded.call_once(|| load(&store, convs, per));
        let mut rng = StdRng::seed_from_u64(SEED);
        group.bench_function(BenchmarkId::new("latest_50", records), |b| {
            ensure_loaded();
            b.iter(|| store.latest(rng.random_range(0..convs as u64), 50))
        });
        group.bench_function(BenchmarkId::new("range_1000", records), |b| {
            ensure_loaded();
            b.iter(|| store.range(rng.random_range(0..convs as u64), 1, 1000.min(per)))
        });
        group.bench_function(BenchmarkId::new("after_100", records), |b| {
            ensure_loaded();
            b.iter(|| {
                let after = rng.random_range(0..per.saturating_sub(100).max(1) as u64);
                store.range(rng.random_range(0..convs as u64), after + 1, 100)
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = writes, reads, segment_capacity
}
criterion_main!(benches);
