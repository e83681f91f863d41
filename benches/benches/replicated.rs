//! Replicated durable appends: a 3-node cluster on 127.0.0.1 with 1, 16 and
//! 256 shards (one raft group each, every node hosting a replica of every
//! shard over its one engine store and one log database; real gRPC
//! transport; every log append durable before it counts), all three nodes
//! in this process and on the machine's 2 cores. Appends go to
//! conversations spread over the shards, each through the proxy's
//! `RaftBackend` on its shard's leader (which batches concurrent writes into
//! one raft entry), as the server's do. Throughput for 1, 32, 64 and 256
//! concurrent writers, and per-write latency percentiles printed at the
//! end of each run; then (under `cargo bench` only) the latency
//! target as stated: an open-loop load paced at half the measured maximum,
//! with its p50 and p99.
//!
//! Then `routed`: what serving a shard from a node that does not host it
//! costs (4 nodes, the shard on 3): a linearizable read and an append on
//! the leader, on a follower, and on the fourth node, which sends them to
//! a host through the shard map.
//!
//! `cargo bench -p imstore-benches --bench replicated`
//! (`IMSTORE_BENCH_SHARDS=1,16` runs only those shard counts;
//! `IMSTORE_BENCH_PACE=3000` paces the open-loop phase at that rate;
//! `-- routed` only the second part). The open-loop phase prints a line as
//! its closed-loop measurement and its paced part start, so a profiler can
//! attach to just that part: `dev/cpu-per-write` does, with `perf stat`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imstore_benches::bench_dir;
use imstore_engine::{Bytes, Command, Direction, NewMessage, ShardAnswer, ShardQuery};
use imstore_raft::{
    shard_for, spawn_publisher, start_shard, NodeStorage, ReplicaConfig, ReplicaNode, Shards,
    TransportService, META_SHARD,
};
use openraft::BasicNode;

struct Cluster {
    runtime: tokio::runtime::Runtime,
    /// Per shard, the backend on its leader's replica.
    leaders: Vec<Arc<imstore_proxy::RaftBackend>>,
    _dirs: Vec<tempfile::TempDir>,
    _nodes: Vec<ReplicaNode>,
}

/// A node's replica settings: with many shards, every group heartbeats
/// (coalesced per peer, but each still costs openraft work), so the
/// interval grows with the shard count to keep them from eating the two
/// cores.
fn replica_config(shards: u64) -> ReplicaConfig {
    ReplicaConfig {
        heartbeat_ms: if shards > 16 { 500 } else { 100 },
        ..ReplicaConfig::default()
    }
}

/// One in-process node: its replicas of `groups`, served over gRPC on
/// 127.0.0.1 (a free port).
struct Node {
    addr: SocketAddr,
    replicas: BTreeMap<u64, ReplicaNode>,
    dir: tempfile::TempDir,
}

async fn start_node(name: &str, id: u64, groups: &[u64], config: &ReplicaConfig) -> Node {
    let dir = bench_dir(name);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let storage =
        NodeStorage::open(dir.path(), config.engine.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut replicas = BTreeMap::new();
    for &group in groups {
        let replica = start_shard(&storage, id, group, config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        replicas.insert(group, replica);
    }
    let map: Shards = Arc::new(RwLock::new(replicas.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TransportService::new(id, map).into_server())
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    Node {
        addr,
        replicas,
        dir,
    }
}

/// The replica of `group` on `node`.
fn replica(node: &Node, group: u64) -> ReplicaNode {
    node.replicas
        .get(&group)
        .cloned()
        .unwrap_or_else(|| panic!("no replica of {group}"))
}

fn cluster(shards: u64) -> Cluster {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (leaders, nodes, dirs) = runtime.block_on(async {
        let config = replica_config(shards);
        let groups: Vec<u64> = (0..shards).collect();
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            nodes
                .push(start_node(&format!("replicated-{shards}-{id}"), id, &groups, &config).await);
        }
        let members: BTreeMap<u64, BasicNode> = (1u64..)
            .zip(&nodes)
            .map(|(id, n)| (id, BasicNode::new(n.addr.to_string())))
            .collect();
        // Spread the first elections: shard s is bootstrapped by node
        // s % 3 + 1, which then usually leads it.
        for shard in 0..shards {
            replica(&nodes[(shard % 3) as usize], shard)
                .raft()
                .initialize(members.clone())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut leaders = Vec::new();
        for shard in 0..shards {
            let metrics = replica(&nodes[0], shard)
                .raft()
                .wait(Some(Duration::from_secs(60)))
                .metrics(|m| m.current_leader.is_some(), "leader")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let leader_id = metrics.current_leader.unwrap_or(1);
            // As a node's server sets them up (`ShardedBackend::new`).
            leaders.push(Arc::new(
                imstore_proxy::RaftBackend::with_proposals_in_flight(
                    replica(&nodes[(leader_id - 1) as usize], shard),
                    imstore_proxy::proposals_in_flight_for(shards as usize),
                ),
            ));
        }
        let replicas = nodes
            .iter()
            .flat_map(|n| n.replicas.values().cloned())
            .collect();
        (
            leaders,
            replicas,
            nodes.into_iter().map(|n| n.dir).collect(),
        )
    });
    Cluster {
        runtime,
        leaders,
        _dirs: dirs,
        _nodes: nodes,
    }
}

/// Four nodes; one data shard placed on nodes 1-3, the metadata group on
/// all four, so node 4 serves the shard through the shard map.
struct Routed {
    runtime: tokio::runtime::Runtime,
    /// The shard's replicas by node id (node 4: the non-host).
    by_node: BTreeMap<u64, ReplicaNode>,
    leader: u64,
    _nodes: Vec<Node>,
}

fn routed_cluster() -> Routed {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (by_node, leader, nodes) = runtime.block_on(async {
        let config = replica_config(1);
        let mut nodes = Vec::new();
        for id in 1..=4u64 {
            let name = format!("routed-{id}");
            nodes.push(start_node(&name, id, &[0, META_SHARD], &config).await);
        }
        let members = |count: usize| -> BTreeMap<u64, BasicNode> {
            (1u64..)
                .zip(&nodes)
                .take(count)
                .map(|(id, n)| (id, BasicNode::new(n.addr.to_string())))
                .collect()
        };
        let first = &nodes[0];
        for (group, count) in [(0, 3), (META_SHARD, 4)] {
            replica(first, group)
                .raft()
                .initialize(members(count))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut by_node = BTreeMap::new();
        for (id, node) in (1u64..).zip(&nodes) {
            let (data, meta) = (replica(node, 0), replica(node, META_SHARD));
            data.find_others_through(&meta);
            spawn_publisher(id, data.clone(), meta);
            by_node.insert(id, data);
        }
        let leader = replica(first, 0)
            .raft()
            .wait(Some(Duration::from_secs(60)))
            .metrics(|m| m.current_leader.is_some(), "leader")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .current_leader
            .unwrap_or(1);
        // Node 4 can route once the shard's leader has published it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while by_node[&4].replicas_elsewhere().is_err() {
            assert!(Instant::now() < deadline, "the shard never reached the map");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (by_node, leader, nodes)
    });
    Routed {
        runtime,
        by_node,
        leader,
        _nodes: nodes,
    }
}

/// The cost of serving a shard from a node that does not host it: one
/// linearizable read of 10 messages and one append, on the shard's leader,
/// on a follower, and on node 4 (which asks a host), one at a time.
fn routed(c: &mut Criterion) {
    let cluster = routed_cluster();
    let follower = (1..=3).find(|&n| n != cluster.leader).unwrap_or(2);
    let places = [
        ("leader", cluster.leader),
        ("follower", follower),
        ("non_host", 4),
    ];
    let backends: BTreeMap<u64, imstore_proxy::RaftBackend> = cluster.runtime.block_on(async {
        cluster
            .by_node
            .iter()
            .map(|(&id, r)| (id, imstore_proxy::RaftBackend::new(r.clone())))
            .collect()
    });
    let submit = |node: u64| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        imstore_proxy::Backend::submit(
            &backends[&node],
            append(7),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        async move {
            rx.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    cluster.runtime.block_on(async {
        for _ in 0..10 {
            submit(cluster.leader).await;
        }
    });
    let mut group = c.benchmark_group("routed");
    group.throughput(Throughput::Elements(1));
    for (place, node) in places {
        let replica = &cluster.by_node[&node];
        group.bench_function(BenchmarkId::new("read", place), |b| {
            b.iter(|| {
                let query = ShardQuery::Read {
                    conversation: 7,
                    from: 1,
                    limit: 10,
                    direction: Direction::Forward,
                };
                let answer = cluster.runtime.block_on(replica.read(false, query));
                assert!(matches!(answer, Ok(ShardAnswer::Messages(m)) if m.len() == 10));
            })
        });
        group.bench_function(BenchmarkId::new("append", place), |b| {
            b.iter(|| cluster.runtime.block_on(submit(node)))
        });
    }
    group.finish();
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn append(conversation: u64) -> Command {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Command::Append(vec![NewMessage {
        conversation,
        sender: 1,
        client_msg_id: Bytes::from(format!("r{n}")),
        payload: Bytes::from(vec![b'x'; 100]),
        timestamp_ms: 1_700_000_000_000 + n,
    }])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn replicated(c: &mut Criterion) {
    let mut group = c.benchmark_group("replicated_append");
    group.throughput(Throughput::Elements(1));
    let counts: Vec<u64> = std::env::var("IMSTORE_BENCH_SHARDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256]);
    for shards in counts {
        let cluster = cluster(shards);
        for writers in [1u64, 32, 64, 256] {
            let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
            group.bench_function(
                BenchmarkId::new(format!("{shards}_shards"), format!("{writers}_writers")),
                |b| {
                    b.iter_custom(|iters| {
                        let per_writer = iters.div_ceil(writers).max(1);
                        let start = Instant::now();
                        cluster.runtime.block_on(async {
                            let mut tasks = Vec::new();
                            for w in 0..writers {
                                let leaders = cluster.leaders.clone();
                                let latencies = Arc::clone(&latencies);
                                tasks.push(tokio::spawn(async move {
                                    let mut mine = Vec::with_capacity(per_writer as usize);
                                    for i in 0..per_writer {
                                        // Conversations spread over the shards.
                                        let conversation = (w * 7 + i) % 1_000;
                                        let t = Instant::now();
                                        append_acked(&leaders, shards, conversation).await;
                                        mine.push(t.elapsed());
                                    }
                                    latencies
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .extend(mine);
                                }));
                            }
                            for t in tasks {
                                t.await.unwrap_or_else(|e| panic!("{e}"));
                            }
                        });
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per_writer * writers) as f64)
                    })
                },
            );
            let mut all = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
            all.sort();
            eprintln!(
                "replicated_append {shards} shards, {writers} writers: {} writes, p50 {:?}, p99 {:?}",
                all.len(),
                percentile(&all, 0.50),
                percentile(&all, 0.99)
            );
        }
        // Not in `cargo test --benches` (one quick pass of each bench).
        if std::env::args().any(|a| a == "--bench") {
            paced_at_half(&cluster, shards);
        }
        drop(cluster);
    }
    group.finish();
}

/// Appends one message to a conversation of `shards` through its leader;
/// completes once acknowledged.
async fn append_acked(leaders: &[Arc<imstore_proxy::RaftBackend>], shards: u64, conversation: u64) {
    let shard = shard_for(conversation, shards) as usize;
    let (tx, rx) = tokio::sync::oneshot::channel();
    imstore_proxy::Backend::submit(
        leaders[shard].as_ref(),
        append(conversation),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The latency target, measured as stated: the maximum rate (256
/// closed-loop writers for 3 s), then an open-loop load at half of it for
/// 5 s — sends start on a fixed schedule whatever the answers do, and
/// each latency counts from its scheduled start (no coordinated
/// omission) — with its p50 and p99. The schedule is kept by a plain
/// thread (`thread::sleep` wakes within tens of microseconds; tokio's
/// timer has millisecond ticks, which would add up to a tick to every
/// latency) that submits each send to its shard's leader directly.
fn paced_at_half(cluster: &Cluster, shards: u64) {
    let leaders = cluster.leaders.clone();
    eprintln!("replicated_append {shards} shards: 256 closed-loop writers for 3 s");
    let max_rate = cluster.runtime.block_on(async move {
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for w in 0..256u64 {
            let (leaders, done) = (leaders.clone(), Arc::clone(&done));
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < until {
                    append_acked(&leaders, shards, (w * 7 + i) % 1_000).await;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("{e}"));
        }
        done.load(std::sync::atomic::Ordering::Relaxed) as f64 / 3.0
    });
    // `IMSTORE_BENCH_PACE=<writes/s>` paces at that rate instead, to see
    // how latency grows with load.
    let rate = std::env::var("IMSTORE_BENCH_PACE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
        .unwrap_or(max_rate / 2.0);
    let total = (rate * 5.0) as u64;
    eprintln!("replicated_append {shards} shards: pacing {rate:.0}/s for 5 s");
    let (answered, answers) = std::sync::mpsc::channel::<Result<Duration, String>>();
    let start = Instant::now();
    for n in 0..total {
        let at = start + Duration::from_secs_f64(n as f64 / rate);
        if let Some(early) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(early);
        }
        let conversation = n % 1_000;
        let answered = answered.clone();
        imstore_proxy::Backend::submit(
            cluster.leaders[shard_for(conversation, shards) as usize].as_ref(),
            append(conversation),
            Box::new(move |r| {
                let _ = answered.send(r.map(|_| at.elapsed()).map_err(|e| e.to_string()));
            }),
        );
    }
    let mut latencies: Vec<Duration> = (0..total)
        .map(|_| {
            answers
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("a paced send was not answered: {e}"))
                .unwrap_or_else(|e| panic!("a paced send failed: {e}"))
        })
        .collect();
    let achieved = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    eprintln!(
        "replicated_append {shards} shards, paced at half the maximum ({max_rate:.0}/s): \
         target {rate:.0}/s, achieved {achieved:.0}/s, p50 {:?}, p99 {:?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = replicated, routed
}
criterion_main!(benches);
