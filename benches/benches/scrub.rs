//! Scrubbing and backups, imstore against SQLite on the same data, in one
//! run: `Engine::verify` (every record's CRC, version and seq, seq
//! continuity, dedup and inbox references, every other row) against
//! SQLite's `PRAGMA integrity_check`; `Engine::backup_to` (a checkpoint
//! plus a checksummed manifest) against `VACUUM INTO`; and
//! `restore_backup` (checks every file, copies, fsyncs, opens).
//!
//! `cargo bench -p imstore-benches --bench scrub`. Scale with
//! `IMSTORE_BENCH_CONVERSATIONS` (default 1,000) and
//! `IMSTORE_BENCH_PER_CONVERSATION` (default 1,000): 1M messages of 100
//! bytes by default.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imstore_benches::{bench_dir, message, Imstore, Sqlite, Timelines};
use imstore_engine::{restore_backup, Options};

const PAYLOAD: usize = 100;
/// Messages per append batch while filling.
const FILL_BATCH: usize = 1_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn filled(stores: &[&dyn Timelines], conversations: usize, per: usize) {
    for c in 0..conversations as u64 {
        let mut n = 0;
        while n < per {
            let take = FILL_BATCH.min(per - n);
            let batch: Vec<_> = (n..n + take)
                .map(|i| message(c, 1, c * per as u64 + i as u64, PAYLOAD))
                .collect();
            for store in stores {
                store.append_batch(&batch);
            }
            n += take;
        }
    }
    for store in stores {
        store.settle();
    }
}

fn scrub(c: &mut Criterion) {
    let conversations = env_usize("IMSTORE_BENCH_CONVERSATIONS", 1_000);
    let per = env_usize("IMSTORE_BENCH_PER_CONVERSATION", 1_000);
    let messages = (conversations * per) as u64;
    let imstore_dir = bench_dir("scrub-imstore");
    let sqlite_dir = bench_dir("scrub-sqlite");
    let options = Options {
        ballast_bytes: Some(0),
        ..Options::default()
    };
    let imstore = Imstore::open(imstore_dir.path(), options);
    let sqlite = Sqlite::open(sqlite_dir.path());
    filled(&[&imstore, &sqlite], conversations, per);

    let mut group = c.benchmark_group(format!("verify_{messages}_messages"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(messages));
    group.bench_function("imstore", |b| {
        b.iter(|| {
            let report = imstore
                .0
                .verify(&mut |_| {})
                .unwrap_or_else(|e| panic!("verify: {e}"));
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(report.messages, messages);
        })
    });
    group.bench_function("sqlite_integrity_check", |b| {
        b.iter(|| sqlite.integrity_check())
    });
    group.finish();

    let mut group = c.benchmark_group(format!("backup_{messages}_messages"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(messages));
    let backups = bench_dir("scrub-backups");
    let mut n = 0u64;
    let mut last_backup = None;
    group.bench_function("imstore", |b| {
        b.iter(|| {
            n += 1;
            let to = backups.path().join(format!("imstore-{n}"));
            imstore
                .0
                .backup_to(&to, &mut |_| {})
                .unwrap_or_else(|e| panic!("backup: {e}"));
            if let Some(previous) = last_backup.replace(to) {
                let _ = std::fs::remove_dir_all(previous);
            }
        })
    });
    group.bench_function("sqlite_vacuum_into", |b| {
        b.iter(|| {
            n += 1;
            let to = backups.path().join(format!("sqlite-{n}.db"));
            sqlite.backup_to(&to);
            let _ = std::fs::remove_file(to);
        })
    });
    group.finish();

    let Some(backup) = last_backup else { return };
    let mut group = c.benchmark_group(format!("restore_{messages}_messages"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(messages));
    group.bench_function("imstore", |b| {
        b.iter(|| {
            n += 1;
            let to = backups.path().join(format!("restored-{n}"));
            restore_backup(&backup, &to, &mut |_| {}).unwrap_or_else(|e| panic!("restore: {e}"));
            let _ = std::fs::remove_dir_all(to);
        })
    });
    group.finish();
}

criterion_group!(benches, scrub);
criterion_main!(benches);
