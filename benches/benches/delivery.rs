//! Delivery lag: the time from a send being acknowledged to its copy being
//! durable in the recipient's inbox, in the recipient's shard
//! (`docs/replication.md`, "User shards"). Three `imstore node` servers in
//! this process (the real server: `imstore_proxy::Server`, which runs each
//! shard's outbox drain), forming their cluster from `peers`, with 1 and
//! 16 shards; on the machine's 2 cores.
//!
//! Workload: 64 two-member groups, each with one sender and one recipient
//! whose user shard differs from the group's shard (with 16 shards), so
//! every copy crosses shards through an outbox. With
//! `IMSTORE_BENCH_MEMBERS=N`, each group has N members: the sender, the
//! watched recipient, and N − 2 more (spread over every shard; with
//! `IMSTORE_BENCH_LOCAL=1`, all in the group's shard), each getting a copy. First the maximum send
//! rate (64 closed-loop senders for 3 s), then an open-loop load at half
//! of it for 5 s. A `Watch` on the recipients (on node 1, a replica of
//! every shard) timestamps each inbox advance as node 1 applies it; the
//! lag of a message is its first advance at or past the message's inbox
//! seq minus its acknowledgement. Printed: the sends' p50/p99 and the
//! lag's p50/p99, and their ratio (the targets: lag p99 ≤ 10 ms
//! on 1 shard; on 16, within 2× the send's own p99).
//!
//! `cargo bench -p imstore-benches --bench delivery`
//! (`IMSTORE_BENCH_SHARDS=1,16` picks shard counts;
//! `IMSTORE_BENCH_LOCAL=1` puts each recipient in its group's shard, so
//! no copy crosses shards: the same load without the outbox). Not a
//! criterion bench: one measured run per shard count, printed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imstore_proto::v1 as pb;
use tokio_stream::StreamExt;

#[path = "common/cluster.rs"]
mod cluster;
use cluster::{percentile, shard_counts, start, until_ok};

const GROUPS: u64 = 64;
const FIRST_GROUP: u64 = 10_000;
/// Senders are users 1..=GROUPS; recipients are picked above this.
const FIRST_RECIPIENT: u64 = 1_000;

/// Per recipient, each inbox advance seen: (new inbox head, when).
type Advances = BTreeMap<u64, Vec<(u64, Instant)>>;

/// The recipient of group `g`: a user whose shard is not the group's,
/// or, with `IMSTORE_BENCH_LOCAL=1`, is (no copy crosses shards: the
/// baseline that shows what the outbox costs).
fn recipient(group: u64, shards: u64) -> u64 {
    let home = imstore_engine::shard_for(group, shards);
    let local = std::env::var("IMSTORE_BENCH_LOCAL").is_ok_and(|v| v == "1");
    (FIRST_RECIPIENT + group * 100..)
        .find(|&u| shards == 1 || (imstore_engine::shard_for_user(u, shards) == home) == local)
        .unwrap_or(FIRST_RECIPIENT)
}

/// Members per group (`IMSTORE_BENCH_MEMBERS`, default 2, at least 2).
fn members_per_group() -> u64 {
    std::env::var("IMSTORE_BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2u64)
        .max(2)
}

/// The group's members beyond its sender and watched recipient: users
/// in any shard, or (`IMSTORE_BENCH_LOCAL=1`) in the group's shard only.
fn other_members(group: u64, shards: u64) -> Vec<u64> {
    let home = imstore_engine::shard_for(group, shards);
    let local = std::env::var("IMSTORE_BENCH_LOCAL").is_ok_and(|v| v == "1");
    (1_000_000_000 + group * 100_000..)
        .filter(|&u| !local || imstore_engine::shard_for_user(u, shards) == home)
        .take((members_per_group() - 2) as usize)
        .collect()
}

fn send_request(group: u64, n: u64) -> pb::SendRequest {
    pb::SendRequest {
        conversation: group,
        sender: group - FIRST_GROUP + 1,
        client_msg_id: format!("m{n}").into_bytes(),
        payload: vec![b'x'; 64],
        receipt: false,
        ..Default::default()
    }
}

/// How long each phase runs.
struct Phases {
    closed: Duration,
    paced: Duration,
}

async fn run(shards: u64, phases: &Phases) {
    let cluster = start("delivery", shards, |_| ()).await;
    let client = cluster.clients[0].clone();
    let groups: Vec<u64> = (FIRST_GROUP..FIRST_GROUP + GROUPS).collect();
    for &g in &groups {
        until_ok(|| {
            let mut c = client.clone();
            async move {
                match c
                    .create_group(pb::CreateGroupRequest {
                        conversation: g,
                        owner: g - FIRST_GROUP + 1,
                        members: std::iter::once(recipient(g, shards))
                            .chain(other_members(g, shards))
                            .collect(),
                    })
                    .await
                {
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    other => other.map(|_| ()),
                }
            }
        })
        .await;
    }
    // Each recipient's inbox advances, as node 1 applies them.
    let recipients: BTreeMap<u64, u64> =
        groups.iter().map(|&g| (recipient(g, shards), g)).collect();
    let advances: Arc<Mutex<Advances>> = Arc::default();
    let mut watch = client.clone();
    let mut stream = watch
        .watch(pb::WatchRequest {
            users: recipients
                .keys()
                .map(|&user| pb::UserPosition {
                    user,
                    inbox_seq: 0,
                    shards: Vec::new(),
                })
                .collect(),
            conversations: Vec::new(),
            change: 0,
            shards: Vec::new(),
            reported: Vec::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let seen = Arc::clone(&advances);
    tokio::spawn(async move {
        while let Some(Ok(n)) = stream.next().await {
            if let Some(pb::notification::Event::Inbox(a)) = n.event {
                let now = Instant::now();
                if let Ok(mut seen) = seen.lock() {
                    seen.entry(a.user).or_default().push((a.inbox_seq, now));
                }
            }
        }
    });

    // The maximum: 64 closed-loop senders, one per group.
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + phases.closed;
    let mut tasks = Vec::new();
    for (i, &g) in groups.iter().enumerate() {
        let mut c = cluster.clients[i % 3].clone();
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                if c.send(send_request(g, n)).await.is_ok() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += 1;
            }
            n
        }));
    }
    let mut next_id = Vec::new();
    for t in tasks {
        next_id.push(t.await.unwrap_or(0));
    }
    let max_rate =
        counter.load(std::sync::atomic::Ordering::Relaxed) as f64 / phases.closed.as_secs_f64();
    let rate = (max_rate / 2.0).max(1.0);
    let total = (rate * phases.paced.as_secs_f64()).max(1.0) as u64;
    eprintln!(
        "delivery {shards} shard(s), {} members per group: max {max_rate:.0} sends/s; \
         pacing {rate:.0}/s for {:?}",
        members_per_group(),
        phases.paced
    );

    // Paced: sends start on a schedule; each answer records (group, seq,
    // acknowledged at) and the send's latency from its scheduled start.
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    for k in 0..total {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let i = (k % GROUPS) as usize;
        let g = groups[i];
        let request = send_request(g, next_id[i] + k);
        let mut c = cluster.clients[i % 3].clone();
        let answered = answered.clone();
        tokio::spawn(async move {
            let result = c.send(request).await.map(|r| r.into_inner().seq);
            let _ = answered.send((g, result, at, Instant::now()));
        });
    }
    drop(answered);
    let mut sends = Vec::new();
    let mut acked = Vec::new();
    while let Some((g, result, at, done)) = answers.recv().await {
        if let Ok(seq) = result {
            sends.push(done - at);
            acked.push((recipient(g, shards), seq, done));
        }
    }
    // Give the last copies their time to arrive (bounded), then match.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lags = Vec::new();
    loop {
        lags.clear();
        let seen = advances.lock().map(|s| s.clone()).unwrap_or_default();
        let mut missing = 0;
        for &(user, seq, done) in &acked {
            // The recipient gets only its group's copies: inbox seq = seq.
            match seen
                .get(&user)
                .and_then(|v| v.iter().find(|(head, _)| *head >= seq))
            {
                Some(&(_, arrived)) => lags.push(arrived.saturating_duration_since(done)),
                None => missing += 1,
            }
        }
        if missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            panic!("delivery {shards} shard(s): {missing} copies not seen within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sends.sort();
    lags.sort();
    let (send_p99, lag_p99) = (percentile(&sends, 0.99), percentile(&lags, 0.99));
    eprintln!(
        "delivery {shards} shard(s) at {rate:.0} sends/s: send p50 {:?} p99 {:?}; delivery lag \
         p50 {:?} p99 {:?} ({} copies); lag p99 / send p99 = {:.2}",
        percentile(&sends, 0.50),
        send_p99,
        percentile(&lags, 0.50),
        lag_p99,
        lags.len(),
        lag_p99.as_secs_f64() / send_p99.as_secs_f64().max(1e-9)
    );
    cluster.stop();
}

fn main() {
    // `cargo test --benches` runs it once, briefly, on 4 shards: every
    // copy must arrive (a missing one panics).
    let bench = std::env::args().any(|a| a == "--bench");
    let (phases, default_counts) = if bench {
        let phases = Phases {
            closed: Duration::from_secs(3),
            paced: Duration::from_secs(5),
        };
        (phases, vec![1, 16])
    } else {
        let phases = Phases {
            closed: Duration::from_millis(300),
            paced: Duration::from_millis(300),
        };
        (phases, vec![4])
    };
    let counts = shard_counts(bench, default_counts);
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    for shards in counts {
        runtime.block_on(run(shards, &phases));
    }
}
