//! A user's reads on a growing cluster: `Sync` (limit 50) and
//! `ListConversations` (limit 20) for one user in 40 small groups and 5
//! big ones, on a 3-node cluster (in this process, real gRPC, every node
//! a replica of every shard; `common/cluster.rs`) of 1, 16, 64 and 256
//! shards (`docs/replication.md`, "User shards"). The user's inbox, views
//! and cursor live in the user's shard, so a read asks that shard and then
//! the shards of the user's 5 big groups: its cost should not grow with
//! the shard count (the target: p50 at 256 shards within 1.5× of
//! 1 shard).
//!
//! Workload: the fan-out threshold is 8; each small group has 3 members,
//! each big one 11. Two sends to every group, then, once every copy is in
//! the user's inbox, one client alternates a Sync from the start (50
//! entries and 5 big groups reported) and a first list page, 1,500 of each,
//! its calls spread over the three nodes in turn (`IMSTORE_BENCH_ENTRY=1`:
//! all to node 1). Printed: p50 and p99 of each, each p50 over the first
//! shard count's, and the process's CPU time per Sync and list.
//!
//! `cargo bench -p imstore-benches --bench user_reads`
//! (`IMSTORE_BENCH_SHARDS=1,256` picks shard counts, `IMSTORE_BENCH_ROUNDS`
//! the rounds, `IMSTORE_BENCH_QUIET=0` keeps idle groups heartbeating).
//! Before measuring, it waits until 90% of every node's groups are quiet
//! (at most 30 s). Not a criterion
//! bench: one measured run per shard count, printed. Under
//! `cargo test --benches` it runs once on 4 shards and checks the pages.

use std::time::{Duration, Instant};

use imstore_proto::v1 as pb;

#[path = "common/cluster.rs"]
mod cluster;
use cluster::{percentile, shard_counts, start, until_ok};

/// The user whose reads are measured.
const USER: u64 = 1;
const SMALL_GROUPS: u64 = 40;
const BIG_GROUPS: u64 = 5;
const FIRST_SMALL: u64 = 100_000;
const FIRST_BIG: u64 = 200_000;
/// The fan-out threshold: groups of more members are big.
const THRESHOLD: u32 = 8;
const SENDS_PER_GROUP: u64 = 2;

/// (group, owner, other members) of every group the user is in.
fn groups() -> Vec<(u64, u64, Vec<u64>)> {
    let small = (0..SMALL_GROUPS).map(|i| (FIRST_SMALL + i, 10_000 + i, vec![USER, 20_000 + i]));
    let big = (0..BIG_GROUPS).map(|j| {
        let others = (0..u64::from(THRESHOLD) + 1).map(|k| 30_000 + j * 100 + k);
        (
            FIRST_BIG + j,
            40_000 + j,
            std::iter::once(USER).chain(others).collect(),
        )
    });
    small.chain(big).collect()
}

/// Latencies of `rounds` Syncs and list pages, alternating; each page is
/// checked.
async fn measure(
    clients: &mut [imstore_proto::v1::imstore_client::ImstoreClient<tonic::transport::Channel>],
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut syncs, mut lists) = (Vec::new(), Vec::new());
    let n = clients.len();
    for round in 0..rounds {
        let client = &mut clients[round % n];
        let started = Instant::now();
        let page = client
            .sync(pb::SyncRequest {
                user: USER,
                from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
                limit: 50,
                ack: None,
            })
            .await
            .unwrap_or_else(|e| panic!("sync: {e}"))
            .into_inner();
        syncs.push(started.elapsed());
        assert_eq!(
            (page.entries.len(), page.advanced.len()),
            (50, BIG_GROUPS as usize)
        );
        let started = Instant::now();
        let list = client
            .list_conversations(pb::ListConversationsRequest {
                user: USER,
                after: None,
                limit: 20,
            })
            .await
            .unwrap_or_else(|e| panic!("list: {e}"))
            .into_inner();
        lists.push(started.elapsed());
        assert_eq!(list.conversations.len(), 20);
    }
    syncs.sort();
    lists.sort();
    (syncs, lists)
}

/// One shard count: the p50s of Sync and the list.
async fn run(shards: u64, rounds: usize) -> (Duration, Duration) {
    let cluster = start("user-reads", shards, |config| {
        config.fanout_max_members = THRESHOLD;
    })
    .await;
    let client = cluster.clients[0].clone();
    for (group, owner, members) in groups() {
        until_ok(|| {
            let mut c = client.clone();
            let members = members.clone();
            async move {
                match c
                    .create_group(pb::CreateGroupRequest {
                        conversation: group,
                        owner,
                        members,
                    })
                    .await
                {
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    other => other.map(|_| ()),
                }
            }
        })
        .await;
        for n in 0..SENDS_PER_GROUP {
            until_ok(|| {
                let mut c = client.clone();
                async move {
                    c.send(pb::SendRequest {
                        conversation: group,
                        sender: owner,
                        client_msg_id: format!("m{n}").into_bytes(),
                        payload: vec![b'x'; 64],
                        receipt: false,
                        ..Default::default()
                    })
                    .await
                }
            })
            .await;
        }
    }
    // Every copy delivered to the user's shard, every big group listed.
    let copies = (SMALL_GROUPS * SENDS_PER_GROUP) as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut c = client.clone();
        let page = c
            .sync(pb::SyncRequest {
                user: USER,
                from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
                limit: copies as u32 + 1,
                ack: None,
            })
            .await
            .map(|r| r.into_inner());
        if let Ok(page) = page {
            if page.entries.len() == copies && page.advanced.len() == BIG_GROUPS as usize {
                break;
            }
        }
        assert!(Instant::now() < deadline, "copies not delivered in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle groups quiet down (no heartbeats) a few heartbeat intervals
    // after their last write: measure the settled cluster.
    let wait = if cluster::quiet_groups() {
        Duration::from_secs(30)
    } else {
        Duration::ZERO
    };
    let quiet = cluster.settle_quiet(shards, 0.9, wait).await;
    println!(
        "{shards:>4} shards | {:.0}% of the groups quiet",
        quiet * 100.0
    );
    // A client behind a balancer spreads its calls over the nodes; one
    // pinned to node 1 (`IMSTORE_BENCH_ENTRY=1`) reads a one-shard
    // cluster at whichever speed that node's role (leader or follower)
    // gives, a coin flip at each start.
    let mut c = match std::env::var("IMSTORE_BENCH_ENTRY").ok().as_deref() {
        Some("1") => vec![client.clone()],
        _ => cluster.clients.clone(),
    };
    // Warm the connections and caches.
    measure(&mut c, rounds / 10 + 1).await;
    let cpu_before = process_cpu();
    let (syncs, lists) = measure(&mut c, rounds).await;
    if let (Some(before), Some(after)) = (cpu_before, process_cpu()) {
        // All three nodes and the client, idle work (heartbeats) included.
        println!(
            "{shards:>4} shards | process CPU {:.0} µs per Sync + list",
            (after - before).as_secs_f64() * 1e6 / rounds as f64
        );
    }
    println!(
        "{shards:>4} shards | sync p50 {:>7.2} ms p99 {:>7.2} ms | list p50 {:>7.2} ms p99 {:>7.2} ms",
        ms(percentile(&syncs, 0.50)),
        ms(percentile(&syncs, 0.99)),
        ms(percentile(&lists, 0.50)),
        ms(percentile(&lists, 0.99)),
    );
    cluster.stop();
    (percentile(&syncs, 0.50), percentile(&lists, 0.50))
}

/// This process's CPU time so far (user and system), from
/// `/proc/self/stat` (Linux; `None` elsewhere).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ, 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, default_counts) = if bench {
        (
            std::env::var("IMSTORE_BENCH_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(1_500),
            vec![1, 16, 64, 256],
        )
    } else {
        (10, vec![4])
    };
    let counts = shard_counts(bench, default_counts);
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mut first: Option<(Duration, Duration)> = None;
    for shards in counts {
        let (sync, list) = runtime.block_on(run(shards, rounds));
        let (sync_1, list_1) = *first.get_or_insert((sync, list));
        println!(
            "{shards:>4} shards | sync p50 {:.2}x, list p50 {:.2}x of the first count",
            sync.as_secs_f64() / sync_1.as_secs_f64().max(1e-9),
            list.as_secs_f64() / list_1.as_secs_f64().max(1e-9),
        );
    }
}
