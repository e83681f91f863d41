//! `imstore node` (a raft replica serving clients and peers on one
//! address) and `imstore cluster init|status`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use clap::Subcommand;
use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::raft::raft_transport_server::RaftTransportServer;
use imstore_proto::v1::imstore_server::ImstoreServer;
use imstore_proxy::{
    serve_metrics, Hub, ImstoreService, Metrics, RaftBackend, RenderMetrics, ServiceLimits,
};
use imstore_raft::{Faults, ReplicaConfig, Shards, TransportService};
use serde_json::json;

/// The one shard a cluster has today.
const SHARD: u64 = 0;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// This node's id (non-zero, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Address for clients and peers.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Data directory.
    #[arg(long, default_value = "./imstore-node")]
    data_dir: PathBuf,
    /// Build a snapshot after this many log entries since the last one.
    #[arg(long, default_value_t = 5_000)]
    snapshot_every: u64,
    /// Log entries kept behind a snapshot for slightly lagging followers;
    /// one further behind is sent the snapshot.
    #[arg(long, default_value_t = 1_000)]
    keep_log: u64,
    /// Prometheus /metrics address (RPC, engine, raft and snapshot
    /// figures); off unless given.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Testing only: accept `SetFaults` (cut this node off from peers).
    #[arg(long, hide = true)]
    fault_injection: bool,
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Bootstrap the cluster: `--members 1=127.0.0.1:7101,2=…,3=…`, sent to
    /// one of them (`--server`).
    Init {
        /// id=host:port of every voter.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
    },
    /// Where the node behind `--server` stands: leader, term, log, members.
    Status,
    /// Add a running node (learner, caught up, then voter); `--server` is
    /// the leader.
    AddNode {
        #[arg(long)]
        id: u64,
        /// Its host:port.
        #[arg(long)]
        address: String,
    },
    /// Remove a voter; `--server` is the leader.
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Move the shard's replica from one node to another: add `--to` (a
    /// learner until caught up, then a voter), then remove `--from`.
    MoveShard {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// host:port of `--to`.
        #[arg(long)]
        address: String,
    },
}

type Failure = Box<dyn std::error::Error>;

pub fn node(args: NodeArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let faults = if args.fault_injection {
            Faults::injectable()
        } else {
            Faults::default()
        };
        let config = ReplicaConfig {
            snapshot_every: args.snapshot_every,
            keep_log: args.keep_log,
            faults: faults.clone(),
            ..ReplicaConfig::default()
        };
        let replica = imstore_raft::start(args.id, SHARD, &args.data_dir, config)
            .await
            .map_err(|e| e.to_string())?;
        let hub = Arc::new(Hub::default());
        let publish = Arc::clone(&hub);
        replica
            .engine
            .set_commit_listener(move |notice| publish.publish(notice));
        let shards: Shards = Arc::new(RwLock::new([(SHARD, replica.clone())].into()));
        let metrics = Arc::new(Metrics::default());
        let service = ImstoreService::new(
            Arc::new(RaftBackend::new(replica.clone())),
            Arc::clone(&hub),
            Arc::clone(&metrics),
            ServiceLimits::default(),
            args.data_dir.display().to_string(),
        );
        let metrics_task = match args.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                eprintln!(
                    "imstore node {} metrics on {}",
                    args.id,
                    listener.local_addr()?
                );
                let (replica, hub) = (replica.clone(), Arc::clone(&hub));
                let render: RenderMetrics = Arc::new(move || {
                    metrics.render(&replica.engine, hub.len()) + &replica.render_metrics(SHARD)
                });
                Some(tokio::spawn(serve_metrics(listener, render)))
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        eprintln!("imstore node {} serving on {addr}", args.id);
        let closing = Arc::clone(&hub);
        let signal = async move {
            crate::shutdown_signal().await;
            closing.close_all("the node is shutting down");
        };
        tonic::transport::Server::builder()
            .add_service(RaftTransportServer::new(TransportService::with_faults(
                args.id, shards, faults,
            )))
            .add_service(ImstoreServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                signal,
            )
            .await?;
        if let Some(task) = metrics_task {
            task.abort();
        }
        replica.raft.shutdown().await.map_err(|e| e.to_string())?;
        let engine = replica.engine;
        tokio::task::spawn_blocking(move || drop(engine)).await?;
        Ok(())
    })
}

fn parse_member(text: &str) -> Result<rpb::Member, Failure> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| format!("member {text:?} is not id=host:port"))?;
    Ok(rpb::Member {
        id: id.parse()?,
        address: address.to_owned(),
    })
}

pub fn admin(cmd: ClusterCmd, server: &str, json_output: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut client = RaftTransportClient::connect(server.to_owned())
            .await
            .map_err(|e| format!("cannot reach {server}: {e}"))?;
        match cmd {
            ClusterCmd::Init { members } => {
                let members = members
                    .iter()
                    .map(|m| parse_member(m))
                    .collect::<Result<Vec<_>, _>>()?;
                let ids: HashSet<u64> = members.iter().map(|m| m.id).collect();
                if ids.len() != members.len() || ids.contains(&0) {
                    return Err("member ids must be distinct and non-zero".into());
                }
                client
                    .initialize(rpb::InitializeRequest {
                        shard: SHARD,
                        members,
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                if json_output {
                    println!("{}", json!({"initialized": true}));
                } else {
                    println!("cluster initialized; a leader is being elected");
                }
            }
            ClusterCmd::AddNode { id, address } => {
                let s = add_node(&mut client, id, address).await?;
                print_status(&s, json_output);
            }
            ClusterCmd::RemoveNode { id } => {
                let s = remove_node(&mut client, id).await?;
                print_status(&s, json_output);
            }
            ClusterCmd::MoveShard { from, to, address } => {
                add_node(&mut client, to, address).await?;
                let s = remove_node(&mut client, from).await?;
                print_status(&s, json_output);
            }
            ClusterCmd::Status => {
                let s = client
                    .status(rpb::NodeStatusRequest { shard: SHARD })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                print_status(&s, json_output);
            }
        }
        Ok(())
    })
}

async fn add_node(
    client: &mut RaftTransportClient<tonic::transport::Channel>,
    id: u64,
    address: String,
) -> Result<rpb::NodeStatus, Failure> {
    Ok(client
        .add_node(rpb::MemberChange {
            shard: SHARD,
            id,
            address,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner())
}

async fn remove_node(
    client: &mut RaftTransportClient<tonic::transport::Channel>,
    id: u64,
) -> Result<rpb::NodeStatus, Failure> {
    Ok(client
        .remove_node(rpb::MemberChange {
            shard: SHARD,
            id,
            address: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner())
}

fn print_status(s: &rpb::NodeStatus, json_output: bool) {
    if json_output {
        println!(
            "{}",
            json!({"id": s.id, "shard": s.shard, "state": s.state, "leader": s.leader,
                               "term": s.term, "last_log_index": s.last_log_index,
                               "last_applied": s.last_applied,
            "snapshot_index": s.snapshot_index, "snapshots_built": s.snapshots_built,
            "snapshots_installed": s.snapshots_installed, "last_snapshot_bytes": s.last_snapshot_bytes,
            "last_snapshot_build_ms": s.last_snapshot_build_ms,
            "last_snapshot_install_ms": s.last_snapshot_install_ms,
            "purged_index": s.purged_index,
                               "members": s.members.iter().map(|m| json!({"id": m.id, "address": m.address})).collect::<Vec<_>>()})
        );
    } else {
        let members: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.address))
            .collect();
        println!(
            "node {} shard {}: {} in term {}, leader {}, log {} applied {} (lag {}), members {}; log purged to {}, snapshot at {} ({} built, {} installed, last {} bytes, build {} ms, install {} ms)",
            s.id,
            s.shard,
            s.state,
            s.term,
            s.leader,
            s.last_log_index,
            s.last_applied,
            s.last_log_index.saturating_sub(s.last_applied),
            members.join(","),
            s.purged_index,
            s.snapshot_index,
            s.snapshots_built,
            s.snapshots_installed,
            s.last_snapshot_bytes,
            s.last_snapshot_build_ms,
            s.last_snapshot_install_ms
        );
    }
}
