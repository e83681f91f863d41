//! IM operations, imstore against the SQLite schema an IM team would write
//! (messages, members, an inbox row per member per message, a receipt row
//! per reader per message), on the same workload in one run. Every write
//! is durable (WAL fsynced) in both.
//!
//! - sends to groups of 2, 200 and 10,000 members (imstore: write fan-out
//!   at the first two, read fan-out at 10,000; SQLite: inbox rows always);
//! - `mark_read` of 100 messages, and one message's read list, in a
//!   10,000-member group;
//! - sync and the conversation list for a user in 1,000 conversations
//!   (both stores return the same entries; the bench checks it);
//! - imstore alone: sync when 500 of those conversations are big groups.
//!
//! `cargo bench -p imstore-benches --bench im`, then
//! `python3 benches/report.py` for the tables in `docs/benchmarks.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imstore_benches::{bench_dir, ImStore, ImstoreIm, SqliteIm};
use imstore_engine::{Options, SyncCursor};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn next_id() -> String {
    format!("bench-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn stores(tag: &str, options: Options) -> Vec<(Box<dyn ImStore>, tempfile::TempDir)> {
    let a = bench_dir(&format!("{tag}-imstore"));
    let b = bench_dir(&format!("{tag}-sqlite"));
    vec![
        (
            Box::new(ImstoreIm::open(a.path(), options)) as Box<dyn ImStore>,
            a,
        ),
        (Box::new(SqliteIm::open(b.path())), b),
    ]
}

fn sends(c: &mut Criterion) {
    let stores = stores("im-send", Options::default());
    let mut group = c.benchmark_group("im_send");
    group.throughput(Throughput::Elements(1));
    for members in [2u64, 200, 10_000] {
        let conversation = members;
        for (store, _) in &stores {
            store.create_group(conversation, &(1..=members).collect::<Vec<_>>());
            store.send(conversation, 1, &next_id());
            group.bench_function(
                BenchmarkId::new(store.name(), format!("{members}_members")),
                |b| b.iter(|| store.send(conversation, 1, &next_id())),
            );
            if members == 10_000 {
                // The mention bench: 50 names in a big group,
                // against the plain send above.
                let named: Vec<u64> = (2..=10_000).step_by(200).collect();
                assert_eq!(named.len(), 50);
                group.bench_function(
                    BenchmarkId::new(store.name(), "10000_members_50_mentions"),
                    |b| b.iter(|| store.send_mentioning(conversation, 1, &next_id(), &named)),
                );
            }
        }
    }
    group.finish();
}

fn receipts(c: &mut Criterion) {
    let stores = stores("im-receipts", Options::default());
    let conversation = 77;
    let mut group = c.benchmark_group("im_receipts");
    group.throughput(Throughput::Elements(1));
    for (store, _) in &stores {
        store.create_group(conversation, &(1..=10_000).collect::<Vec<_>>());
        group.bench_function(
            BenchmarkId::new(store.name(), "mark_read_100_of_10000_members"),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // 100 new messages (one write, not timed), then one
                        // reader marks them read.
                        let batch: Vec<_> =
                            (0..100).map(|_| (conversation, 1, next_id())).collect();
                        store.send_all(&batch);
                        let last = store.last_seq(conversation);
                        let start = Instant::now();
                        store.mark_read(2, conversation, last);
                        total += start.elapsed();
                    }
                    total
                })
            },
        );
        // Half the group has read the newest message.
        let seq = store.send(conversation, 1, &next_id());
        let marks: Vec<(u64, u64, u64)> = (2..=5_000).map(|u| (u, conversation, seq)).collect();
        for chunk in marks.chunks(1_000) {
            store.mark_read_all(chunk);
        }
        group.bench_function(
            BenchmarkId::new(store.name(), "read_list_of_10000_members"),
            |b| {
                b.iter(|| {
                    let (read, unread) = store.read_list(conversation, seq);
                    assert_eq!((read, read + unread), (4_999, 9_999));
                })
            },
        );
        // What a client showing "4,999 read" needs: the counts alone
        // (GetReceipts counts_only).
        group.bench_function(
            BenchmarkId::new(store.name(), "read_counts_of_10000_members"),
            |b| {
                b.iter(|| {
                    let (read, unread) = store.read_counts(conversation, seq);
                    assert_eq!((read, read + unread), (4_999, 9_999));
                })
            },
        );
    }
    group.finish();
}

/// User 1 in 1,000 conversations: 500 direct ones and 500 groups of 3,
/// each with 3 messages from the others.
fn user_in_1000_conversations(store: &dyn ImStore) {
    let mut conversations = Vec::new();
    for peer in 2..502u64 {
        conversations.push((store.open_direct(1, peer), peer));
    }
    for g in 0..500u64 {
        let id = 10_000 + g;
        store.create_group(id, &[1, 2, 3]);
        conversations.push((id, 2));
    }
    for _ in 0..3 {
        let messages: Vec<_> = conversations
            .iter()
            .map(|&(conversation, sender)| (conversation, sender, next_id()))
            .collect();
        store.send_all(&messages);
    }
}

fn sync_and_list(c: &mut Criterion) {
    let stores = stores("im-sync", Options::default());
    let mut group = c.benchmark_group("im_user_1000_conversations");
    group.throughput(Throughput::Elements(1));
    let mut answers = Vec::new();
    for (store, _) in &stores {
        user_in_1000_conversations(store.as_ref());
        let head = store.inbox_head(1);
        // The same data from both, before timing.
        answers.push((
            store.sync(1, head - 100, 100),
            store.conversation_list(1, 20),
        ));
        group.bench_function(BenchmarkId::new(store.name(), "sync_100"), |b| {
            b.iter(|| assert_eq!(store.sync(1, head - 100, 100).0, 100))
        });
        group.bench_function(
            BenchmarkId::new(store.name(), "conversation_list_20"),
            |b| b.iter(|| assert_eq!(store.conversation_list(1, 20).0, 20)),
        );
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "stores disagree: {answers:?}"
    );

    // imstore alone: the 500 groups above the fan-out threshold (lowered to
    // 2 here, as groups above 500 members are by default), so sync also
    // reports every one of them as advanced.
    let dir = bench_dir("im-sync-big");
    let store = ImstoreIm::open(
        dir.path(),
        Options {
            fanout_max_members: 2,
            ..Options::default()
        },
    );
    user_in_1000_conversations(&store);
    let head = store.inbox_head(1);
    group.bench_function(
        BenchmarkId::new("imstore", "sync_100_and_500_big_groups"),
        |b| {
            b.iter(|| {
                let (entries, _, advanced) = store.sync(1, head - 100, 100);
                assert_eq!((entries, advanced), (100, 500));
            })
        },
    );
    // Every big group reported once: the cursor lists all 500.
    let reported = store
        .0
        .sync(1, SyncCursor::default(), 1)
        .map(|p| p.cursor.reported)
        .unwrap_or_else(|e| panic!("{e}"));
    group.bench_function(BenchmarkId::new("imstore", "sync_nothing_new"), |b| {
        b.iter(|| {
            let cursor = SyncCursor {
                inbox_seq: head,
                change: 0,
                reported: reported.clone(),
            };
            let page = store
                .0
                .sync(1, cursor, 100)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(page.messages.is_empty() && page.advanced.is_empty());
        })
    });
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
    targets = sends, receipts, sync_and_list
}
criterion_main!(benches);
