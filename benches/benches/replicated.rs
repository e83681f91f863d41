//! Replicated durable appends: a 3-node cluster on 127.0.0.1 with 1, 16 and
//! 256 shards (one raft group each, every node hosting a replica of every
//! shard over its one engine store and one log database; real gRPC
//! transport; every log append durable before it counts), all three nodes
//! in this process and on the machine's 2 cores. Appends go to
//! conversations spread over the shards, each through the proxy's
//! `RaftBackend` on its shard's leader (which batches concurrent writes into
//! one raft entry), as the server's do. Throughput for 1, 32, 64 and 256
//! concurrent writers, and per-write latency percentiles printed at the
//! end of each run.
//!
//! `cargo bench -p imstore-benches --bench replicated`
//! (`IMSTORE_BENCH_SHARDS=1,16` runs only those shard counts).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imstore_benches::bench_dir;
use imstore_engine::{Bytes, Command, NewMessage};
use imstore_raft::{
    shard_for, start_shard, NodeStorage, ReplicaConfig, ReplicaNode, Shards, TransportService,
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

fn cluster(shards: u64) -> Cluster {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (leaders, nodes, dirs) = runtime.block_on(async {
        let mut dirs = Vec::new();
        let mut nodes: Vec<Vec<ReplicaNode>> = Vec::new();
        let mut members = BTreeMap::new();
        let config = replica_config(shards);
        for id in 1..=3u64 {
            let dir = bench_dir(&format!("replicated-{shards}-{id}"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let addr: SocketAddr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let storage = NodeStorage::open(dir.path(), config.engine.clone())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut replicas = Vec::new();
            for shard in 0..shards {
                replicas.push(
                    start_shard(&storage, id, shard, &config)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
            let map: Shards = Arc::new(RwLock::new(
                replicas
                    .iter()
                    .enumerate()
                    .map(|(shard, r)| (shard as u64, r.clone()))
                    .collect(),
            ));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TransportService::new(id, map).into_server())
                    .serve_with_incoming(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                    ),
            );
            members.insert(id, BasicNode::new(addr.to_string()));
            nodes.push(replicas);
            dirs.push(dir);
        }
        // Spread the first elections: shard s is bootstrapped by node
        // s % 3 + 1, which then usually leads it.
        for (shard, first) in (0..shards as usize).map(|s| (s, s % 3)) {
            nodes[first][shard]
                .raft
                .initialize(members.clone())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut leaders = Vec::new();
        for (shard, replica) in nodes[0].iter().enumerate() {
            let metrics = replica
                .raft
                .wait(Some(Duration::from_secs(60)))
                .metrics(|m| m.current_leader.is_some(), "leader")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let leader_id = metrics.current_leader.unwrap_or(1);
            leaders.push(Arc::new(imstore_proxy::RaftBackend::new(
                nodes[(leader_id - 1) as usize][shard].clone(),
            )));
        }
        (leaders, nodes.into_iter().flatten().collect(), dirs)
    });
    Cluster {
        runtime,
        leaders,
        _dirs: dirs,
        _nodes: nodes,
    }
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
                                        let shard = shard_for(conversation, shards) as usize;
                                        let t = Instant::now();
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
        drop(cluster);
    }
    group.finish();
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
    targets = replicated
}
criterion_main!(benches);
