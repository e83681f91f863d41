//! A single `imstore serve` server on a free port of 127.0.0.1, stopped
//! by the test, and the helpers the end-to-end test crates share. Each
//! test crate uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

use imstore_engine::Engine;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proxy::{ServeError, Server, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Running {
    pub async fn client(&self) -> Result<ImstoreClient<Channel>, tonic::transport::Error> {
        ImstoreClient::connect(format!("http://{}", self.addr)).await
    }

    pub async fn channel(&self) -> Result<Channel, Box<dyn std::error::Error>> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    pub async fn stop(mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

pub async fn start(
    tune: impl FnOnce(&mut ServerConfig),
) -> Result<Running, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: Some("127.0.0.1:0".parse()?),
        data_dir: dir.path().to_path_buf(),
        retention_sweep_secs: 0,
        ..ServerConfig::default()
    };
    tune(&mut config);
    let server = Server::bind(config).await?;
    let addr = server.local_addr()?;
    let metrics = server.metrics_addr();
    let engine = server.engine().ok_or("a server with a store")?.clone();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        metrics,
        engine,
        stop: Some(tx),
        task: Some(task),
        _dir: dir,
    })
}

pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

pub async fn send(
    client: &mut ImstoreClient<Channel>,
    conversation: u64,
    sender: u64,
    id: &str,
    text: &str,
) -> Result<pb::SendResponse, Status> {
    client
        .send(pb::SendRequest {
            conversation,
            sender,
            client_msg_id: id.as_bytes().to_vec(),
            payload: text.as_bytes().to_vec(),
            receipt: false,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, why: &str) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("{why}: expected {code:?}, got {other:?}"),
    }
}

/// A loopback config on `data_dir` with no metrics endpoint, for tests of
/// what stops a start.
pub fn quiet_config(
    data_dir: &std::path::Path,
) -> Result<ServerConfig, Box<dyn std::error::Error>> {
    Ok(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: None,
        data_dir: data_dir.to_path_buf(),
        ..ServerConfig::default()
    })
}

/// Checks that `config` stops the start with a configuration error whose
/// message contains `named` (`what` says which case, for the failure).
pub async fn refused_start(config: ServerConfig, what: &str, named: &str) -> TestResult {
    match Server::bind(config).await {
        Err(ServeError::Config(message)) => {
            assert!(message.contains(named), "{what}: {message}");
            Ok(())
        }
        Err(other) => Err(format!("{what}: the wrong error: {other}").into()),
        Ok(_) => Err(format!("{what}: the server started").into()),
    }
}
