//! A 3-node cluster in this process for the gRPC benches: three
//! `imstore node` servers (the real server, `imstore_proxy::Server`, each
//! with its outbox drains), forming their cluster from `peers`, every node
//! a replica of every shard, on 127.0.0.1 ports picked free. Shared by the
//! benches that include it (`#[path = "common/cluster.rs"]`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proxy::{NodeConfig, Server, ServerConfig};
use tonic::transport::Channel;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Three running nodes; dropping it stops them and removes their data.
pub struct Cluster {
    /// One client per node, node 1 first.
    pub clients: Vec<ImstoreClient<Channel>>,
    /// Each node's `/metrics` address.
    metrics: Vec<SocketAddr>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Stops every node.
    pub fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
    }
}

/// Starts three nodes of `shards` shards; `configure` adjusts each node's
/// server config (the fan-out threshold, say). `name` labels the data
/// directories.
pub async fn start(name: &str, shards: u64, configure: impl Fn(&mut ServerConfig)) -> Cluster {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = (1u64..)
        .zip(&addrs)
        .map(|(id, a)| format!("{id}={a}"))
        .collect();
    let (mut stops, mut dirs, mut clients) = (Vec::new(), Vec::new(), Vec::new());
    let metrics: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    for (i, &addr) in addrs.iter().enumerate() {
        let dir = imstore_benches::bench_dir(&format!("{name}-{shards}-{i}"));
        let mut config = ServerConfig {
            listen: addr,
            metrics_listen: Some(metrics[i]),
            data_dir: dir.path().to_path_buf(),
            node: Some(NodeConfig {
                shards,
                peers: peers.clone(),
                replicas: 3,
                // The node's default (100 ms, 500 ms above 16 shards), as
                // `imstore node` runs.
                heartbeat_ms: None,
                // Idle groups go quiet, as by default; `IMSTORE_BENCH_QUIET=0`
                // keeps every group heartbeating.
                quiet_idle_groups: quiet_groups(),
                ..NodeConfig::new(i as u64 + 1)
            }),
            ..ServerConfig::default()
        };
        configure(&mut config);
        let server = Server::bind(config).await.unwrap_or_else(|e| panic!("{e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        stops.push(stop);
        dirs.push(dir);
    }
    for addr in &addrs {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_lazy();
        clients.push(ImstoreClient::new(channel));
    }
    Cluster {
        clients,
        metrics,
        stops,
        _dirs: dirs,
    }
}

impl Cluster {
    /// Waits until every node reports at least `share` (0 to 1) of its
    /// data shards' groups quiet (`imstore_raft_quiet`: idle groups stop
    /// their heartbeats a few heartbeat intervals after their last write),
    /// for at most `patience`; returns the fraction quiet over all nodes.
    #[allow(dead_code)] // Not every bench that includes this file waits.
    pub async fn settle_quiet(&self, shards: u64, share: f64, patience: Duration) -> f64 {
        let deadline = Instant::now() + patience;
        loop {
            let mut quiet = 0u64;
            let mut least = f64::MAX;
            for &addr in &self.metrics {
                let n = quiet_count(addr).await.unwrap_or(0);
                quiet += n;
                least = least.min(n as f64 / shards.max(1) as f64);
            }
            if least >= share || Instant::now() >= deadline {
                return quiet as f64 / (3 * shards.max(1)) as f64;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The sum of `imstore_raft_quiet` on the node whose `/metrics` is at
/// `addr`.
#[allow(dead_code)] // As `settle_quiet`.
async fn quiet_count(addr: SocketAddr) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("imstore_raft_quiet{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// Whether idle groups go quiet (`IMSTORE_BENCH_QUIET=0`: they do not).
pub fn quiet_groups() -> bool {
    std::env::var("IMSTORE_BENCH_QUIET").map_or(true, |v| v != "0")
}

/// Retries `call` until it succeeds (elections at start), for at most 60 s.
pub async fn until_ok<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("gave up: {e}"),
        }
    }
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The shard counts to run: `IMSTORE_BENCH_SHARDS` (comma-separated)
/// under `cargo bench`, else `default`.
pub fn shard_counts(bench: bool, default: Vec<u64>) -> Vec<u64> {
    std::env::var("IMSTORE_BENCH_SHARDS")
        .ok()
        .filter(|_| bench)
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or(default)
}
