//! The IM operations of the engine: sends to groups of 2, 200 and 10,000
//! members (write fan-out at the first two, read fan-out at the third),
//! `mark_read` of 100 messages and one message's read list in a
//! 10,000-member group, and sync and the conversation list for a user in
//! 1,000 conversations. Every write is durable (WAL fsynced).
//!
//! `cargo bench -p imstore-benches --bench im`, then
//! `python3 benches/report.py` for the table in `docs/benchmarks.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imstore_benches::bench_dir;
use imstore_engine::{Bytes, Command, Engine, Options, Outcome, SendMessage, SyncCursor};

const PAYLOAD: usize = 100;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn send(conversation: u64, sender: u64) -> Command {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Command::Send(SendMessage {
        conversation,
        sender,
        client_msg_id: Bytes::from(format!("bench-{n}")),
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
        timestamp_ms: 1_700_000_000_000 + n,
        receipt: false,
    })
}

fn run(engine: &Engine, command: Command) {
    if let Err(e) = engine.execute(command) {
        panic!("bench command failed: {e}");
    }
}

fn run_all(engine: &Engine, commands: Vec<Command>) {
    for result in engine.execute_all(commands) {
        if let Err(e) = result {
            panic!("bench command failed: {e}");
        }
    }
}

fn create_group(engine: &Engine, conversation: u64, members: u64) {
    run(
        engine,
        Command::CreateGroup {
            conversation,
            owner: 1,
            members: (1..=members).collect(),
            timestamp_ms: 1,
        },
    );
}

fn sends(c: &mut Criterion) {
    let dir = bench_dir("im-send");
    let engine = Engine::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("im_send");
    group.throughput(Throughput::Elements(1));
    for (conversation, members) in [(2u64, 2u64), (200, 200), (10_000, 10_000)] {
        create_group(&engine, conversation, members);
        run(&engine, send(conversation, 1));
        group.bench_function(
            BenchmarkId::new("imstore", format!("{members}_members")),
            |b| b.iter(|| run(&engine, send(conversation, 1))),
        );
    }
    group.finish();
}

fn receipts(c: &mut Criterion) {
    let dir = bench_dir("im-receipts");
    let engine = Engine::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let conversation = 77;
    create_group(&engine, conversation, 10_000);
    let mut group = c.benchmark_group("im_receipts");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new("imstore", "mark_read_100_of_10000_members"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // 100 new messages (one group commit, not timed), then
                    // one reader marks them read.
                    run_all(&engine, (0..100).map(|_| send(conversation, 1)).collect());
                    let last = engine.last_seq(conversation).unwrap_or_else(|e| panic!("{e}"));
                    let start = Instant::now();
                    engine
                        .mark_read(2, conversation, last)
                        .unwrap_or_else(|e| panic!("{e}"));
                    total += start.elapsed();
                }
                total
            })
        },
    );
    // Half the group has read the message.
    run(&engine, send(conversation, 1));
    let seq = engine.last_seq(conversation).unwrap_or_else(|e| panic!("{e}"));
    let marks: Vec<Command> = (2..=5_000)
        .map(|user| Command::MarkRead {
            user,
            conversation,
            up_to: seq,
        })
        .collect();
    for chunk in marks.chunks(1_000) {
        run_all(&engine, chunk.to_vec());
    }
    group.bench_function(
        BenchmarkId::new("imstore", "read_list_of_10000_members"),
        |b| {
            b.iter(|| {
                let r = engine
                    .receipts(conversation, seq)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(r.read.len() + r.unread.len(), 9_999);
            })
        },
    );
    group.finish();
}

/// A user (1) in 1,000 conversations: 500 direct ones and 500 groups of 3
/// with the fan-out threshold lowered to 2, so the groups take the read
/// fan-out path that groups above 500 members take by default. Each
/// conversation has 3 messages from the others.
fn user_in_1000_conversations() -> (tempfile::TempDir, Engine) {
    let dir = bench_dir("im-sync");
    let options = Options {
        fanout_max_members: 2,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), options).unwrap_or_else(|e| panic!("{e}"));
    let mut setup = Vec::new();
    let mut conversations = Vec::new();
    for peer in 2..502u64 {
        setup.push(Command::OpenDirect {
            user: 1,
            peer,
            timestamp_ms: 1,
        });
    }
    for (i, outcome) in engine.execute_all(setup).into_iter().enumerate() {
        match outcome {
            Ok(Outcome::Conversation { conversation, .. }) => {
                conversations.push((conversation, 2 + i as u64))
            }
            other => panic!("open direct: {other:?}"),
        }
    }
    let mut groups = Vec::new();
    for g in 0..500u64 {
        let id = 10_000 + g;
        groups.push(Command::CreateGroup {
            conversation: id,
            owner: 1,
            members: vec![2, 3],
            timestamp_ms: 1,
        });
        conversations.push((id, 2));
    }
    run_all(&engine, groups);
    for _ in 0..3 {
        let messages: Vec<Command> = conversations
            .iter()
            .map(|&(conversation, sender)| send(conversation, sender))
            .collect();
        run_all(&engine, messages);
    }
    (dir, engine)
}

fn sync_and_list(c: &mut Criterion) {
    let (_dir, engine) = user_in_1000_conversations();
    let head = engine
        .sync(1, SyncCursor::default(), 10_000)
        .unwrap_or_else(|e| panic!("{e}"))
        .cursor;
    let mut group = c.benchmark_group("im_user_1000_conversations");
    group.throughput(Throughput::Elements(1));
    // The last 100 inbox entries, and the big groups advanced since the
    // cursor was taken (all 500 of them: the cursor's change counter is 0).
    let cursor = SyncCursor {
        inbox_seq: head.inbox_seq - 100,
        change: 0,
    };
    group.bench_function(BenchmarkId::new("imstore", "sync_100"), |b| {
        b.iter(|| {
            let page = engine.sync(1, cursor, 100).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(page.messages.len(), 100);
            assert_eq!(page.advanced.len(), 500);
        })
    });
    group.bench_function(BenchmarkId::new("imstore", "sync_nothing_new"), |b| {
        b.iter(|| {
            let page = engine.sync(1, head, 100).unwrap_or_else(|e| panic!("{e}"));
            assert!(page.messages.is_empty() && page.advanced.is_empty());
        })
    });
    group.bench_function(BenchmarkId::new("imstore", "conversation_list_20"), |b| {
        b.iter(|| {
            let page = engine
                .conversation_list(1, None, 20)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(page.len(), 20);
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
