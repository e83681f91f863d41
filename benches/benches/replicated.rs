//! Replicated durable appends: a 3-node raft group on 127.0.0.1 (real gRPC
//! transport, every node's log append and engine write fsynced), all three
//! nodes in this process and on the machine's 2 cores. Writes go through
//! the proxy's `RaftBackend` on the leader (which batches concurrent
//! writes into one raft entry), as the server's do. Throughput for 1, 16,
//! 64 and 256 concurrent writers, and per-write latency percentiles printed
//! at the end of each run.
//!
//! `cargo bench -p imstore-benches --bench replicated`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imstore_benches::bench_dir;
use imstore_engine::{Bytes, Command, NewMessage};
use imstore_proto::raft::raft_transport_server::RaftTransportServer;
use imstore_raft::{ReplicaConfig, ReplicaNode, Shards, TransportService};
use openraft::BasicNode;

struct Cluster {
    runtime: tokio::runtime::Runtime,
    leader: Arc<imstore_proxy::RaftBackend>,
    _dirs: Vec<tempfile::TempDir>,
    _nodes: Vec<ReplicaNode>,
}

fn cluster() -> Cluster {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (leader, nodes, dirs) = runtime.block_on(async {
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        let mut members = BTreeMap::new();
        for id in 1..=3u64 {
            let dir = bench_dir(&format!("replicated-{id}"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let addr: SocketAddr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let node = imstore_raft::start(id, 0, dir.path(), ReplicaConfig::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let shards: Shards = Arc::new(RwLock::new([(0, node.clone())].into()));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(RaftTransportServer::new(TransportService::new(id, shards)))
                    .serve_with_incoming(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                    ),
            );
            members.insert(id, BasicNode::new(addr.to_string()));
            nodes.push(node);
            dirs.push(dir);
        }
        nodes[0]
            .raft
            .initialize(members)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = nodes[0]
            .raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader.is_some(), "leader")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let leader_id = metrics.current_leader.unwrap_or(1);
        let leader = Arc::new(imstore_proxy::RaftBackend::new(
            nodes[(leader_id - 1) as usize].clone(),
        ));
        (leader, nodes, dirs)
    });
    Cluster {
        runtime,
        leader,
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
    let cluster = cluster();
    let mut group = c.benchmark_group("replicated_append");
    group.throughput(Throughput::Elements(1));
    for writers in [1u64, 16, 64, 256] {
        let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
        group.bench_function(
            BenchmarkId::new("imstore_3_nodes", format!("{writers}_writers")),
            |b| {
                b.iter_custom(|iters| {
                    let per_writer = iters.div_ceil(writers).max(1);
                    let start = Instant::now();
                    cluster.runtime.block_on(async {
                        let mut tasks = Vec::new();
                        for w in 0..writers {
                            let backend = Arc::clone(&cluster.leader);
                            let latencies = Arc::clone(&latencies);
                            tasks.push(tokio::spawn(async move {
                                let mut mine = Vec::with_capacity(per_writer as usize);
                                for _ in 0..per_writer {
                                    let t = Instant::now();
                                    let (tx, rx) = tokio::sync::oneshot::channel();
                                    imstore_proxy::Backend::submit(
                                        backend.as_ref(),
                                        append(w % 1_000),
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
            "replicated_append {writers} writers: {} writes, p50 {:?}, p99 {:?}",
            all.len(),
            percentile(&all, 0.50),
            percentile(&all, 0.99)
        );
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
