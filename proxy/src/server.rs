//! The server `imstore serve` and `imstore node` both run: the service on
//! a TCP port with health, reflection (`v1` and `v1alpha`), limits, a
//! Prometheus endpoint and graceful shutdown, over one engine (a single
//! server, with its retention sweep) or, when the configuration has a
//! `[node]` table, over a cluster node's replicas, with the node-to-node
//! transport on the same port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imstore_engine::{Engine, Options};
use imstore_proto::v1::imstore_server::ImstoreServer;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::auth::{AuthLayer, Tokens};
use crate::node::{NodeConfig, NodeParts};
use crate::tier::{ProxyConfig, ProxyParts};
use crate::tls::{MemberNames, PeerGate, PeerGateLayer, TlsSetup};
use crate::{
    spawn_delivery, Backend, DeliveryWakes, EngineBackend, Hub, ImstoreService, Metrics,
    ServiceLimits, ShardedBackend,
};
use imstore_proto::raft::raft_transport_server::RaftTransportServer;
use imstore_raft::TransportService;

/// Everything `imstore serve` can be told, from a TOML file and flags.
/// Defaults work with no configuration at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC address. Default `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address; none to turn it off. Default `127.0.0.1:7071`.
    pub metrics_listen: Option<SocketAddr>,
    /// Data directory, created if missing. Default `./imstore-data`.
    pub data_dir: PathBuf,
    /// Largest message body, bytes. Default 64 KiB.
    pub max_message_bytes: usize,
    /// Most messages in one Append. Default 1,000.
    pub max_batch_messages: usize,
    /// Most messages (or entries) one read returns. Default 10,000.
    pub max_page_messages: usize,
    /// Most bytes of messages (or entries) one read answers, at least one
    /// message; a page cut short says `more`. Default 4,000,000 (under
    /// gRPC's usual 4 MiB receive limit).
    pub max_page_bytes: usize,
    /// Concurrent HTTP/2 streams per client connection. Default 1,024.
    pub max_concurrent_streams: u32,
    /// Concurrent Watch streams. Default 1,024.
    pub max_watchers: usize,
    /// Notifications buffered per Watch before it is told to resync. Default 1,024.
    pub watch_buffer: usize,
    /// Fan-out threshold T (see docs/im.md). Default 500.
    pub fanout_max_members: u32,
    /// Groups up to this size keep per-message read lists. Default 500.
    pub receipt_list_max_members: u32,
    /// Seconds between retention sweeps (conversations with a TTL). Default 60.
    pub retention_sweep_secs: u64,
    /// Size of the emergency ballast file in the data directory, bytes;
    /// 0 for none. Default: 1% of the volume, at most 256 MiB.
    pub ballast_bytes: Option<u64>,
    /// Bearer tokens the client API requires (`docs/server.md`,
    /// "Authentication"): a TOML file of SHA-256 hashes and roles,
    /// followed for changes. Default: none, every call is let through.
    pub tokens_file: Option<PathBuf>,
    /// TLS on the gRPC address: the server's certificate chain, a PEM
    /// file (with `tls_key`). On a node it is also the certificate the
    /// node presents to its peers. Default: none, plaintext.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`, a PEM file.
    pub tls_key: Option<PathBuf>,
    /// A node's cluster CA, a PEM file, required with TLS on a node:
    /// peers' certificates must chain to it, and raft calls are taken
    /// only from a certificate naming a member (docs/security.md).
    /// Default: none.
    pub tls_ca: Option<PathBuf>,
    /// Serve a non-loopback address without TLS and tokens (logged as a
    /// warning at every start). Default false: such a server refuses to
    /// start.
    pub insecure: bool,
    /// Run as a cluster node with these settings (`[node]`); a single
    /// server without.
    pub node: Option<NodeConfig>,
    /// Run as a proxy in front of a cluster's nodes (`[proxy]`,
    /// `imstore proxy`): no data directory, no store of its own.
    pub proxy: Option<ProxyConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let engine = Options::default();
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7071))),
            data_dir: PathBuf::from("./imstore-data"),
            max_message_bytes: engine.max_payload_bytes,
            max_batch_messages: engine.max_batch_messages,
            max_page_messages: engine.max_page_messages,
            max_page_bytes: crate::DEFAULT_MAX_PAGE_BYTES,
            max_concurrent_streams: 1_024,
            max_watchers: 1_024,
            watch_buffer: 1_024,
            fanout_max_members: engine.fanout_max_members,
            receipt_list_max_members: engine.receipt_list_max_members,
            retention_sweep_secs: 60,
            ballast_bytes: None,
            tokens_file: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            insecure: false,
            node: None,
            proxy: None,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file; keys left out keep their defaults.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))
    }

    pub(crate) fn engine_options(&self) -> Options {
        Options {
            max_payload_bytes: self.max_message_bytes,
            max_batch_messages: self.max_batch_messages,
            max_page_messages: self.max_page_messages,
            fanout_max_members: self.fanout_max_members,
            receipt_list_max_members: self.receipt_list_max_members,
            ballast_bytes: self.ballast_bytes,
            ..Options::default()
        }
    }

    /// The largest request a client may send: a full batch of full messages
    /// with room for ids and framing.
    fn max_request_bytes(&self) -> usize {
        self.max_batch_messages
            .saturating_mul(self.max_message_bytes.saturating_add(256))
            .max(1 << 20)
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration file or a flag is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory could not be opened.
    #[error("opening the data directory: {0}")]
    Engine(#[from] imstore_engine::Error),
    /// A socket could not be bound or served.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Server reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// A cluster node's replicas could not be started or stopped.
    #[error("replication: {0}")]
    Replica(String),
}

/// A server with its sockets bound and its stores open, not yet serving.
pub struct Server {
    config: ServerConfig,
    stores: Stores,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    tokens: Option<Arc<Tokens>>,
    tls: Option<TlsSetup>,
    /// How this server reaches nodes (a node's peers, a relayed watch).
    dialer: imstore_raft::Dialer,
}

/// What a server serves.
enum Stores {
    /// `imstore serve`: one engine.
    Single(Engine),
    /// `imstore node`: a cluster node's replicas.
    Node(Box<NodeParts>),
    /// `imstore proxy`: no store, calls to the nodes.
    Proxy(ProxyParts),
}

impl Stores {
    fn engine(&self) -> Option<&Engine> {
        match self {
            Stores::Single(engine) => Some(engine),
            Stores::Node(node) => Some(node.engine()),
            Stores::Proxy(_) => None,
        }
    }
}

impl Server {
    /// Opens the data directory (a node's: its stores, and starts its
    /// replicas) and binds the sockets (port 0 picks a free one).
    pub async fn bind(config: ServerConfig) -> Result<Server, ServeError> {
        // A bad token file stops the start before anything is opened.
        let tokens = match &config.tokens_file {
            Some(path) => {
                let tokens = Tokens::load(path).map_err(|e| ServeError::Config(e.to_string()))?;
                tracing::info!(path = %path.display(), tokens = tokens.len(), "client API requires bearer tokens");
                Some(tokens)
            }
            None => None,
        };
        let tls = TlsSetup::load(&config)?;
        let dialer = tls.as_ref().map(|t| t.dialer.clone()).unwrap_or_default();
        check_exposure(&config)?;
        let hub = Arc::new(Hub::default());
        let stores = match (&config.node, &config.proxy) {
            (Some(_), Some(_)) => {
                return Err(ServeError::Config(
                    "a server is a node ([node]) or a proxy ([proxy]), not both".into(),
                ))
            }
            (None, Some(proxy)) => Stores::Proxy(ProxyParts::start(proxy, dialer.clone()).await?),
            (None, None) => {
                let options = config.engine_options();
                let dir = config.data_dir.clone();
                let engine = tokio::task::spawn_blocking(move || Engine::open(dir, options))
                    .await
                    .map_err(|e| ServeError::Config(e.to_string()))??;
                let publish = Arc::clone(&hub);
                engine.set_commit_listener(move |notice| publish.publish(notice));
                Stores::Single(engine)
            }
            (Some(node), None) => {
                check_peers(node)?;
                Stores::Node(Box::new(
                    NodeParts::open(&config, node, &hub, dialer.clone()).await?,
                ))
            }
        };
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Server {
            config,
            stores,
            listener,
            metrics_listener,
            hub,
            metrics: Arc::new(Metrics::default()),
            tokens,
            tls,
            dialer,
        })
    }

    /// The gRPC address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The metrics address actually bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The store being served (for tests and embedding; a node's holds
    /// every shard it hosts, written only through raft; a proxy has none).
    pub fn engine(&self) -> Option<&Engine> {
        self.stores.engine()
    }

    /// A node's or a proxy's data shard count (`None` for a single
    /// server).
    pub fn shard_count(&self) -> Option<u64> {
        match &self.stores {
            Stores::Single(_) => None,
            Stores::Node(node) => Some(node.shard_count()),
            Stores::Proxy(proxy) => Some(proxy.backend.shard_count()),
        }
    }

    /// Serves until `shutdown` completes, then stops taking requests,
    /// ends every Watch, lets in-flight calls finish, and closes the
    /// stores after their last queued write is durable (a node's raft
    /// instances stopped first).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            config,
            stores,
            listener,
            metrics_listener,
            hub,
            metrics,
            tokens,
            tls,
            dialer,
        } = self;
        let mut sockets = Sockets {
            listener,
            metrics_listener,
            tokens,
            tls,
            dialer,
            gate: None,
        };
        match stores {
            Stores::Single(engine) => {
                let endpoint = HttpEndpoint {
                    registry: Arc::new(crate::metrics::registry(
                        &metrics,
                        engine.reader(),
                        Arc::clone(&hub),
                        Vec::new(),
                    )),
                    // One open store serves as soon as it is bound.
                    ready: Arc::new(|| Ok(())),
                };
                let mut background = Vec::new();
                if config.retention_sweep_secs > 0 {
                    let every = Duration::from_secs(config.retention_sweep_secs);
                    background.push(tokio::spawn(sweep_retention(engine.clone(), every)));
                }
                let backend = Arc::new(EngineBackend::new(engine.clone()));
                let served = serve(
                    &config, sockets, backend, None, endpoint, hub, metrics, shutdown,
                )
                .await;
                for task in background {
                    task.abort();
                }
                // Closing the store joins its commit thread: off the async runtime.
                let closed = tokio::task::spawn_blocking(move || drop(engine)).await;
                if closed.is_err() {
                    tracing::error!("closing the store panicked");
                }
                served?;
            }
            Stores::Node(node) => {
                // Each shard's leader proposes what has expired.
                let sweep = (config.retention_sweep_secs > 0).then(|| {
                    let every = Duration::from_secs(config.retention_sweep_secs);
                    imstore_raft::spawn_retention_sweep(node.replicas(), every)
                });
                // Idle groups go quiet (no heartbeats).
                let quiescer = config
                    .node
                    .as_ref()
                    .filter(|n| n.quiet_idle_groups)
                    .and_then(|_| imstore_raft::spawn_quiescer(node.groups()));
                let endpoint = node.http_endpoint(&metrics, Arc::clone(&hub));
                let bootstrap = config
                    .node
                    .as_ref()
                    .and_then(|n| spawn_bootstrap(n, node.shard_count(), sockets.dialer.clone()));
                // Mutual TLS: raft calls only from certificates naming a
                // member, followed as the membership changes.
                let following = match (&sockets.tls, &config.node) {
                    (Some(tls), Some(node_config)) if tls.mutual => {
                        let members = Arc::new(MemberNames::default());
                        sockets.gate = Some(PeerGate {
                            members: Arc::clone(&members),
                            refusals: Arc::clone(&metrics.refusals),
                        });
                        Some(node.follow_members(members, node_config.peers.clone()))
                    }
                    _ => None,
                };
                let backend = Arc::new(ShardedBackend::new(node.replicas()));
                // Each shard's leader carries its outbox to the users' shards.
                let wakes = Arc::new(DeliveryWakes::new(node.shard_count()));
                hub.wake_deliveries(Arc::clone(&wakes));
                let deliveries =
                    spawn_delivery(Arc::clone(&backend), wakes, Arc::clone(&metrics.delivery));
                let transport = Some(node.transport());
                let served = serve(
                    &config, sockets, backend, transport, endpoint, hub, metrics, shutdown,
                )
                .await;
                for task in [sweep, quiescer, bootstrap, following]
                    .into_iter()
                    .flatten()
                    .chain(deliveries)
                {
                    task.abort();
                }
                node.close().await?;
                served?;
            }
            Stores::Proxy(proxy) => {
                let endpoint = HttpEndpoint {
                    registry: Arc::new(crate::metrics::proxy_registry(
                        &metrics,
                        Arc::clone(&proxy.backend),
                    )),
                    // It learned the shard map before binding.
                    ready: Arc::new(|| Ok(())),
                };
                let backend = Arc::clone(&proxy.backend);
                let served = serve(
                    &config, sockets, backend, None, endpoint, hub, metrics, shutdown,
                )
                .await;
                proxy.stop();
                served?;
                tracing::info!("stopped");
                return Ok(());
            }
        }
        tracing::info!("stopped; every acknowledged write is durable");
        Ok(())
    }
}

/// How a node of `config` reaches its peers: mutual TLS with its
/// certificate when it has TLS, else plaintext (checked as a start
/// checks it).
pub fn node_dialer(config: &ServerConfig) -> Result<imstore_raft::Dialer, ServeError> {
    Ok(TlsSetup::load(config)?
        .map(|t| t.dialer)
        .unwrap_or_default())
}

/// A server reachable from other machines needs TLS and tokens (a
/// node's TLS is mutual, `tls_ca`, checked by `TlsSetup::load`), unless
/// told `insecure`, which is then logged at every start.
fn check_exposure(config: &ServerConfig) -> Result<(), ServeError> {
    let ip = config.listen.ip();
    let secured = config.tls_cert.is_some() && config.tokens_file.is_some();
    if ip.is_loopback() || secured {
        return Ok(());
    }
    if config.insecure {
        tracing::warn!(
            listen = %config.listen,
            tls = config.tls_cert.is_some(),
            tokens = config.tokens_file.is_some(),
            "serving a non-loopback address without TLS and tokens (--insecure): anyone who \
             can reach it can read and write every conversation{}",
            if config.node.is_some() && config.tls_cert.is_none() {
                ", and send this node raft messages"
            } else {
                ""
            }
        );
        return Ok(());
    }
    Err(ServeError::Config(format!(
        "{} is not a loopback address: serving it needs TLS (tls_cert, tls_key{}) and bearer \
         tokens (tokens_file), or --insecure (insecure = true) to serve without them",
        config.listen,
        if config.node.is_some() {
            ", tls_ca"
        } else {
            ""
        }
    )))
}

/// The bound sockets a server serves on, and the tokens its client API
/// requires.
struct Sockets {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tokens: Option<Arc<Tokens>>,
    tls: Option<TlsSetup>,
    /// How this server reaches nodes.
    dialer: imstore_raft::Dialer,
    /// A node's check of its transport's callers (mutual TLS).
    gate: Option<PeerGate>,
}

/// Serves `backend` (and a node's transport) on the sockets until
/// `shutdown`, with health, reflection and the configured limits.
#[allow(clippy::too_many_arguments)]
async fn serve<B: Backend + 'static>(
    config: &ServerConfig,
    sockets: Sockets,
    backend: Arc<B>,
    transport: Option<RaftTransportServer<TransportService>>,
    endpoint: HttpEndpoint,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let refusals = Arc::clone(&metrics.refusals);
    let service = ImstoreService::new(
        backend,
        Arc::clone(&hub),
        metrics,
        ServiceLimits {
            max_watchers: config.max_watchers,
            max_watch_users: 10_000,
            watch_buffer: config.watch_buffer,
            max_page_messages: config.max_page_messages,
            max_page_bytes: config.max_page_bytes,
        },
        config.data_dir.display().to_string(),
    )
    .relaying_with(sockets.dialer.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ImstoreServer<ImstoreService<B>>>()
        .await;
    // Python's grpcio-reflection and older grpcurl speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(imstore_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let metrics_task = sockets
        .metrics_listener
        .map(|listener| tokio::spawn(serve_http(listener, endpoint)));

    let addr = sockets.listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "imstore serving");
    let closing = Arc::clone(&hub);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        closing.close_all("the server is shutting down");
    };
    let following = sockets.tokens.as_ref().map(Tokens::follow);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .layer(AuthLayer::new(sockets.tokens.clone()))
        .layer(PeerGateLayer::new(sockets.gate))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(transport)
        .add_service(
            ImstoreServer::new(service).max_decoding_message_size(config.max_request_bytes()),
        );
    let result = match sockets.tls {
        Some(tls) => {
            let incoming =
                crate::tls::incoming(sockets.listener, tls.acceptor, Arc::clone(&refusals));
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(sockets.listener)
                        .with_nodelay(Some(true)),
                    signal,
                )
                .await
        }
    };
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(task) = following {
        task.abort();
    }
    Ok(result?)
}

/// Refuses `peers` that do not parse as `id=host:port`, repeat an id, or
/// leave this node out (`imstore_raft::parse_peers`), and no replicas.
fn check_peers(node: &NodeConfig) -> Result<(), ServeError> {
    if node.peers.is_empty() {
        return Ok(());
    }
    imstore_raft::parse_peers(node.id, &node.peers)
        .map_err(|e| ServeError::Config(format!("peers: {e}")))?;
    if node.replicas == 0 {
        return Err(ServeError::Config("replicas must be at least 1".into()));
    }
    Ok(())
}

/// A new cluster's bootstrap from the node's `peers`, if it has any (the
/// lowest id initializes it; `imstore_raft::bootstrap_from_peers`).
fn spawn_bootstrap(
    node: &NodeConfig,
    shard_count: u64,
    dialer: imstore_raft::Dialer,
) -> Option<tokio::task::JoinHandle<()>> {
    if node.peers.is_empty() {
        return None;
    }
    let (id, peers, replicas) = (node.id, node.peers.clone(), node.replicas);
    Some(tokio::spawn(async move {
        match imstore_raft::bootstrap_from_peers(&dialer, id, &peers, shard_count, replicas).await {
            Ok(outcome) => tracing::info!(?outcome, "bootstrap from peers"),
            Err(e) => tracing::error!(error = %e, "bootstrap from peers failed"),
        }
    }))
}

/// Clears expired history every `every` (a single server; on a node each
/// shard's leader proposes it instead, `imstore_raft::spawn_retention_sweep`).
async fn sweep_retention(engine: Engine, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let engine = engine.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            engine.enforce_retention(now)
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(conversations = n, "retention sweep cleared history"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention sweep failed"),
            Err(e) => tracing::warn!(error = %e, "retention sweep panicked"),
        }
    }
}

/// Whether the server is ready for traffic (`/readyz`): `Err` says why
/// not (a shard with no leader yet, a snapshot install under way).
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the HTTP endpoint serves: the metrics registry and the readiness
/// check.
#[derive(Clone)]
pub struct HttpEndpoint {
    /// Every metric family and collector of the server.
    pub registry: Arc<Registry>,
    /// The readiness check.
    pub ready: Readiness,
}

/// The server's HTTP endpoint (axum over hyper): `GET /metrics` (the
/// OpenMetrics text of `endpoint.registry`), `GET /healthz` (200 while the
/// process serves) and `GET /readyz` (200 when `endpoint.ready` says so,
/// else 503 with the reason), for scrapers and load balancers. Runs until
/// its task is dropped.
pub async fn serve_http(listener: TcpListener, endpoint: HttpEndpoint) {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let HttpEndpoint { registry, ready } = endpoint;
    let metrics = move || {
        let registry = Arc::clone(&registry);
        async move {
            // Reads RocksDB properties: off the async runtime.
            let body = tokio::task::spawn_blocking(move || crate::metrics::render(&registry))
                .await
                .unwrap_or_default();
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                body,
            )
        }
    };
    let readyz = move || {
        let ready = Arc::clone(&ready);
        async move {
            match ready() {
                Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> ServerConfig {
        ServerConfig {
            listen: listen.parse().expect("a test address"),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn only_loopback_serves_without_tls_and_tokens_unless_insecure() {
        assert!(check_exposure(&config("127.0.0.1:7070")).is_ok());
        assert!(check_exposure(&config("[::1]:7070")).is_ok());
        for exposed in ["0.0.0.0:7070", "10.0.0.5:7070", "[::]:7070"] {
            match check_exposure(&config(exposed)) {
                Err(ServeError::Config(m)) => assert!(m.contains("not a loopback"), "{m}"),
                other => panic!("{exposed}: {other:?}"),
            }
            let mut tls_only = config(exposed);
            tls_only.tls_cert = Some("c.pem".into());
            tls_only.tls_key = Some("k.pem".into());
            assert!(check_exposure(&tls_only).is_err(), "TLS without tokens");
            let mut secured = tls_only.clone();
            secured.tokens_file = Some("tokens.toml".into());
            assert!(check_exposure(&secured).is_ok());
            let mut insecure = config(exposed);
            insecure.insecure = true;
            assert!(check_exposure(&insecure).is_ok());
        }
    }

    #[test]
    fn the_documented_example_config_is_the_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/imstore.toml");
        let parsed = ServerConfig::from_toml_file(&path).expect("docs/imstore.toml parses");
        let default = ServerConfig::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn the_documented_node_config_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/node.toml");
        let parsed = ServerConfig::from_toml_file(&path).expect("docs/node.toml parses");
        let node = parsed.node.expect("a [node] table");
        assert_eq!((node.id, node.shards), (1, 16));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<ServerConfig>("listn = \"127.0.0.1:1\"").is_err());
        assert!(toml::from_str::<ServerConfig>("listen = \"nowhere\"").is_err());
        // The [node] table: id required, unknown keys refused.
        assert!(toml::from_str::<ServerConfig>("[node]\nshards = 2").is_err());
        assert!(toml::from_str::<ServerConfig>("[node]\nid = 1\nshard = 2").is_err());
        let node: ServerConfig = toml::from_str("[node]\nid = 4").expect("node");
        assert_eq!(node.node, Some(NodeConfig::new(4)));
        // A peers list must parse, list ids once, and include the node.
        let with_peers = |peers: &str| {
            let text = format!("[node]\nid = 1\npeers = [{peers}]");
            let config: ServerConfig = toml::from_str(&text).expect("parses");
            check_peers(config.node.as_ref().expect("node"))
        };
        assert!(with_peers("\"1=h:1\", \"2=h:2\"").is_ok());
        assert!(with_peers("\"2=h:2\", \"3=h:3\"").is_err());
        assert!(with_peers("\"1=h:1\", \"1=h:2\"").is_err());
        assert!(with_peers("\"1=h:1\", \"two\"").is_err());
        let partial: ServerConfig = toml::from_str("max_watchers = 3").expect("partial");
        assert_eq!(partial.max_watchers, 3);
        assert_eq!(partial.listen, ServerConfig::default().listen);
    }
}
