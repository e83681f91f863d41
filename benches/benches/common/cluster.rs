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
    for (i, &addr) in addrs.iter().enumerate() {
        let dir = imstore_benches::bench_dir(&format!("{name}-{shards}-{i}"));
        let mut config = ServerConfig {
            listen: addr,
            metrics_listen: None,
            data_dir: dir.path().to_path_buf(),
            node: Some(NodeConfig {
                shards,
                peers: peers.clone(),
                replicas: 3,
                // The node's default (100 ms, 500 ms above 16 shards), as
                // `imstore node` runs.
                heartbeat_ms: None,
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
        stops,
        _dirs: dirs,
    }
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
