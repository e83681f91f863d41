//! The sharded test service: one engine store split into shards
//! ([`ShardedBackend`] over [`EngineBackend`]s, as a node of `imstore node
//! --shards N` splits its store), or one unsharded store, served on a free
//! port of 127.0.0.1 with the outbox drains running. Each test crate uses
//! part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use imstore_engine::{Engine, Options};
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proto::v1::imstore_server::ImstoreServer;
use imstore_proxy::{
    spawn_delivery, Backend, DeliveryFigures, DeliveryWakes, EngineBackend, Hub, ImstoreService,
    Metrics, ServiceLimits, ShardedBackend,
};
use tonic::transport::Channel;

/// A client of the test service.
pub type Client = ImstoreClient<Channel>;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A service on a free port of 127.0.0.1, stopped when dropped.
pub struct Store {
    pub client: Client,
    pub engine: Engine,
    pub shards: u64,
    pub deliveries: Vec<tokio::task::JoinHandle<()>>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Store {
    /// Stops the outbox drains: from now on, effects for users of other
    /// shards stay in their outboxes.
    pub fn stop_delivery(&mut self) {
        for task in self.deliveries.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for task in &self.deliveries {
            task.abort();
        }
    }
}

impl Store {
    /// Waits until no shard's outbox holds a record: every effect is in
    /// its user's shard.
    pub async fn quiesce(&self) -> TestResult {
        let engine = self.engine.clone();
        let shards = self.shards;
        imstore_testkit::eventually_async(
            "every outbox to drain",
            std::time::Duration::from_secs(60),
            || {
                let engine = engine.clone();
                async move {
                    for shard in 0..shards {
                        let backlog = engine.with_shard(u16::try_from(shard)?)?.outbox_backlog()?;
                        if !backlog.is_empty() {
                            return Err(format!("shard {shard} still holds {backlog:?}").into());
                        }
                    }
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                }
            },
        )
        .await?;
        Ok(())
    }
}

pub async fn serve(shards: u64) -> Result<Store, Box<dyn std::error::Error + Send + Sync>> {
    serve_with(shards, Options::default()).await
}

/// [`serve`] with engine `options` (their `placement_shards` is `shards`).
pub async fn serve_with(
    shards: u64,
    options: Options,
) -> Result<Store, Box<dyn std::error::Error + Send + Sync>> {
    serve_limited(shards, options, ServiceLimits::default()).await
}

/// [`serve_with`] under the service's `limits`.
pub async fn serve_limited(
    shards: u64,
    options: Options,
    limits: ServiceLimits,
) -> Result<Store, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(
        dir.path().join("engine"),
        Options {
            placement_shards: shards,
            ..options
        },
    )?;
    let hub = Arc::new(Hub::default());
    let publish = Arc::clone(&hub);
    engine.set_commit_listener(move |notice| publish.publish(notice));
    let mut deliveries = Vec::new();
    let addr = if shards == 1 {
        start(
            Arc::new(EngineBackend::new(engine.clone())),
            hub,
            dir.path(),
            limits,
        )
        .await?
    } else {
        let backends = (0..shards)
            .map(|s| Ok(EngineBackend::new(engine.with_shard(u16::try_from(s)?)?)))
            .collect::<Result<Vec<_>, Box<dyn std::error::Error + Send + Sync>>>()?;
        let backend = Arc::new(ShardedBackend::over(backends));
        let wakes = Arc::new(DeliveryWakes::new(shards));
        hub.wake_deliveries(Arc::clone(&wakes));
        deliveries = spawn_delivery(
            Arc::clone(&backend),
            wakes,
            Arc::new(DeliveryFigures::default()),
        );
        start(backend, hub, dir.path(), limits).await?
    };
    Ok(Store {
        client: ImstoreClient::connect(format!("http://{}", addr.0)).await?,
        engine,
        shards,
        deliveries,
        _stop: addr.1,
        _dir: dir,
    })
}

async fn start<B: Backend>(
    backend: Arc<B>,
    hub: Arc<Hub>,
    dir: &std::path::Path,
    limits: ServiceLimits,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>), Box<dyn std::error::Error + Send + Sync>>
{
    let service = ImstoreService::new(
        backend,
        hub,
        Arc::new(Metrics::default()),
        limits,
        dir.display().to_string(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ImstoreServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    Ok((addr, stop))
}
