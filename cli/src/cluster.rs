//! `imstore node` (a raft replica serving clients and peers on one
//! address) and `imstore cluster init|status`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use clap::Subcommand;
use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1::imstore_server::ImstoreServer;
use imstore_proxy::{
    serve_metrics, Hub, ImstoreService, Metrics, RenderMetrics, ServiceLimits, ShardedBackend,
};
use imstore_raft::{
    spawn_publisher, start_shard, Faults, NodeStorage, ReplicaConfig, Shards, TransportService,
    META_SHARD,
};
use serde_json::json;

/// The file in a node's data directory holding its shard count.
const SHARD_COUNT_FILE: &str = "shard-count";

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
    /// How many shards the cluster has (the same on every node; `cluster
    /// init` places each on some of the nodes, and a node serves the
    /// others through the shard map). Fixed when the node's data
    /// directory is created: a restart with another count is refused.
    #[arg(long, default_value_t = 1)]
    shards: u64,
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
    /// Bootstrap the cluster: `--members 1=127.0.0.1:7101,2=…,3=…`, every
    /// node started with `imstore node`. Each data shard is placed on
    /// `--replicas` of them (see `placement`), the metadata group on all.
    Init {
        /// id=host:port of every node.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        /// Replicas of each data shard (the replication factor); all
        /// members when there are fewer.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Where the node behind `--server` stands in every shard: health, leader,
    /// term, log, applied lag, members, snapshots.
    Status,
    /// Add a running node (learner, caught up, then voter) to a shard's
    /// group, or to every shard's; each request goes to that shard's
    /// leader (found from `--server`).
    AddNode {
        #[arg(long)]
        id: u64,
        /// Its host:port.
        #[arg(long)]
        address: String,
        /// Only this shard (default: every shard).
        #[arg(long)]
        shard: Option<u64>,
    },
    /// Remove a voter from a shard's group, or from every shard's.
    RemoveNode {
        #[arg(long)]
        id: u64,
        /// Only this shard (default: every shard).
        #[arg(long)]
        shard: Option<u64>,
    },
    /// Move a shard's replica (or every shard's) from one node to another:
    /// add `--to` (a learner until caught up, then a voter), then remove
    /// `--from`.
    MoveShard {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// host:port of `--to`.
        #[arg(long)]
        address: String,
        /// Only this shard (default: every shard).
        #[arg(long)]
        shard: Option<u64>,
    },
}

type Failure = Box<dyn std::error::Error>;

/// The node's shard count: written when its data directory is new, and
/// required to match on every later start.
fn shard_count(dir: &std::path::Path, asked: u64) -> Result<u64, Failure> {
    // Data shards are 0..N; the metadata group takes the id after them.
    if asked == 0 || asked > META_SHARD {
        return Err(format!("--shards must be 1 to {META_SHARD}").into());
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(SHARD_COUNT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: u64 = text
                .trim()
                .parse()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if stored != asked {
                return Err(format!(
                    "{} was created with --shards {stored}; the shard count never changes",
                    dir.display()
                )
                .into());
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let temp = dir.join(format!("{SHARD_COUNT_FILE}.tmp"));
            let mut file = std::fs::File::create(&temp)?;
            std::io::Write::write_all(&mut file, format!("{asked}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            Ok(asked)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn node(args: NodeArgs) -> Result<(), Failure> {
    let count = shard_count(&args.data_dir, args.shards)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let faults = if args.fault_injection {
            Faults::injectable()
        } else {
            Faults::default()
        };
        let mut config = ReplicaConfig {
            snapshot_every: args.snapshot_every,
            keep_log: args.keep_log,
            // Every group heartbeats (coalesced per peer, still work each).
            heartbeat_ms: if count > 16 { 500 } else { 100 },
            faults: faults.clone(),
            ..ReplicaConfig::default()
        };
        // Direct conversations get ids in their pair's shard.
        config.engine.placement_shards = count;
        let storage =
            NodeStorage::open(&args.data_dir, config.engine.clone()).map_err(|e| e.to_string())?;
        let mut replicas = Vec::new();
        for shard in 0..count {
            replicas.push(
                start_shard(&storage, args.id, shard, &config)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let hub = Arc::new(Hub::default());
        let publish = Arc::clone(&hub);
        // One commit pipeline for every shard: one listener sees them all.
        storage
            .engine()
            .set_commit_listener(move |notice| publish.publish(notice));
        // The metadata group (the shard map), on every node: each data
        // shard's leader keeps its entry current, and every node finds
        // the shards it does not host in it.
        let meta = start_shard(&storage, args.id, META_SHARD, &config)
            .await
            .map_err(|e| e.to_string())?;
        for replica in &replicas {
            // A shard this node does not host is read and written where
            // the map says it is.
            replica.find_others_through(&meta);
            spawn_publisher(args.id, replica.clone(), meta.clone());
        }
        let shards: Shards = Arc::new(RwLock::new(
            replicas
                .iter()
                .enumerate()
                .map(|(shard, r)| (shard as u64, r.clone()))
                .chain([(META_SHARD, meta.clone())])
                .collect(),
        ));
        let metrics = Arc::new(Metrics::default());
        let service = ImstoreService::new(
            Arc::new(ShardedBackend::new(replicas.clone())),
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
                let (replicas, hub, engine) =
                    (replicas.clone(), Arc::clone(&hub), storage.engine().clone());
                let render: RenderMetrics = Arc::new(move || {
                    let mut text = metrics.render(&engine, hub.len());
                    for (shard, replica) in replicas.iter().enumerate() {
                        text += &replica.render_metrics(shard as u64);
                    }
                    text
                });
                Some(tokio::spawn(serve_metrics(listener, render)))
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        eprintln!(
            "imstore node {} serving on {addr} ({count} shard{})",
            args.id,
            if count == 1 { "" } else { "s" }
        );
        let closing = Arc::clone(&hub);
        let signal = async move {
            crate::shutdown_signal().await;
            closing.close_all("the node is shutting down");
        };
        tonic::transport::Server::builder()
            .add_service(TransportService::with_faults(args.id, shards, faults).into_server())
            .add_service(ImstoreServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                signal,
            )
            .await?;
        if let Some(task) = metrics_task {
            task.abort();
        }
        for replica in replicas.iter().chain([&meta]) {
            replica.raft.shutdown().await.map_err(|e| e.to_string())?;
        }
        drop(replicas);
        tokio::task::spawn_blocking(move || drop(storage)).await?;
        Ok(())
    })
}

/// Where a data shard's replicas go at `cluster init`: `replicas` of the
/// members (all when there are fewer), taken in id order starting at the
/// one at `shard mod members`, so consecutive shards start on
/// consecutive nodes and every node hosts about as many shards.
/// `members` are sorted by id.
fn placement(shard: u64, members: &[rpb::Member], replicas: usize) -> Vec<rpb::Member> {
    let n = members.len();
    if n == 0 {
        return Vec::new();
    }
    let start = (shard % n as u64) as usize;
    (0..replicas.min(n))
        .map(|i| members[(start + i) % n].clone())
        .collect()
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

type Client = RaftTransportClient<tonic::transport::Channel>;

fn failure(s: tonic::Status) -> Failure {
    format!("{:?}: {}", s.code(), s.message()).into()
}

/// The data shards of the node behind `client` and its metadata group
/// (which spans the same nodes), or just `only`.
async fn groups_of(client: &mut Client, only: Option<u64>) -> Result<Vec<u64>, Failure> {
    Ok(match only {
        Some(META_SHARD) => vec![META_SHARD],
        Some(_) => shards_of(client, only).await?,
        None => {
            let mut all = shards_of(client, None).await?;
            all.push(META_SHARD);
            all
        }
    })
}

/// The data shards of the node behind `client`, or just `only`.
async fn shards_of(client: &mut Client, only: Option<u64>) -> Result<Vec<u64>, Failure> {
    let count = client
        .status(rpb::NodeStatusRequest { shard: 0 })
        .await
        .map_err(failure)?
        .into_inner()
        .shard_count
        .max(1);
    match only {
        Some(shard) if shard < count => Ok(vec![shard]),
        Some(shard) => Err(format!("shard {shard}: the cluster has {count} shards").into()),
        None => Ok((0..count).collect()),
    }
}

/// A membership change on `shard`'s leader: sent to `server`, then to the
/// leader a refusal names (a shard's leader may be any node).
async fn on_leader(
    server: &str,
    shard: u64,
    change: rpb::MemberChange,
    add: bool,
) -> Result<rpb::NodeStatus, Failure> {
    let mut target = server.to_owned();
    for _ in 0..5 {
        let mut client = Client::connect(target.clone())
            .await
            .map_err(|e| format!("cannot reach {target}: {e}"))?;
        let request = rpb::MemberChange {
            shard,
            ..change.clone()
        };
        let result = if add {
            client.add_node(request).await
        } else {
            client.remove_node(request).await
        };
        match result {
            Ok(status) => return Ok(status.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                match s.message().rsplit_once(" at ") {
                    Some((_, leader)) => target = format!("http://{}", leader.trim()),
                    None => return Err(failure(s)),
                }
            }
            Err(s) => return Err(failure(s)),
        }
    }
    Err(format!("shard {shard}: no leader answered").into())
}

pub fn admin(cmd: ClusterCmd, server: &str, json_output: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut client = Client::connect(server.to_owned())
            .await
            .map_err(|e| format!("cannot reach {server}: {e}"))?;
        match cmd {
            ClusterCmd::Init { members, replicas } => {
                let mut members = members
                    .iter()
                    .map(|m| parse_member(m))
                    .collect::<Result<Vec<_>, _>>()?;
                members.sort_by_key(|m| m.id);
                let ids: HashSet<u64> = members.iter().map(|m| m.id).collect();
                if ids.len() != members.len() || ids.contains(&0) {
                    return Err("member ids must be distinct and non-zero".into());
                }
                if replicas == 0 {
                    return Err("--replicas must be at least 1".into());
                }
                let shards = shards_of(&mut client, None).await?;
                let mut groups: Vec<(u64, Vec<rpb::Member>)> = shards
                    .iter()
                    .map(|&shard| (shard, placement(shard, &members, replicas)))
                    .collect();
                groups.push((META_SHARD, members.clone()));
                for (shard, group) in groups {
                    // Sent to a member of the group (raft initializes
                    // only a node that is one).
                    let first = group
                        .first()
                        .ok_or("a shard with no replicas")?
                        .address
                        .clone();
                    let mut at = Client::connect(format!("http://{first}"))
                        .await
                        .map_err(|e| format!("cannot reach {first}: {e}"))?;
                    at.initialize(rpb::InitializeRequest {
                        shard,
                        members: group,
                    })
                    .await
                    .map_err(failure)?;
                }
                let replicas = replicas.min(members.len());
                if json_output {
                    println!(
                        "{}",
                        json!({"initialized": true, "shards": shards.len(), "replicas": replicas})
                    );
                } else {
                    println!(
                        "cluster initialized with {} shard(s) of {replicas} replica(s) on {} \
                         node(s); leaders are being elected",
                        shards.len(),
                        members.len()
                    );
                }
            }
            ClusterCmd::AddNode { id, address, shard } => {
                for shard in groups_of(&mut client, shard).await? {
                    let change = rpb::MemberChange {
                        shard,
                        id,
                        address: address.clone(),
                    };
                    print_status(
                        &on_leader(server, shard, change, true).await?,
                        false,
                        json_output,
                    );
                }
            }
            ClusterCmd::RemoveNode { id, shard } => {
                for shard in groups_of(&mut client, shard).await? {
                    let change = rpb::MemberChange {
                        shard,
                        id,
                        address: String::new(),
                    };
                    print_status(
                        &on_leader(server, shard, change, false).await?,
                        false,
                        json_output,
                    );
                }
            }
            ClusterCmd::MoveShard {
                from,
                to,
                address,
                shard,
            } => {
                for shard in groups_of(&mut client, shard).await? {
                    let add = rpb::MemberChange {
                        shard,
                        id: to,
                        address: address.clone(),
                    };
                    on_leader(server, shard, add, true).await?;
                    let remove = rpb::MemberChange {
                        shard,
                        id: from,
                        address: String::new(),
                    };
                    print_status(
                        &on_leader(server, shard, remove, false).await?,
                        false,
                        json_output,
                    );
                }
            }
            ClusterCmd::Status => {
                // The replicated shard map, if the metadata group answers:
                // it says where the shards this node does not host are.
                let map = client.shard_map(rpb::ShardMapRequest {}).await;
                let placed: HashMap<u64, HashSet<u64>> = match &map {
                    Ok(map) => map
                        .get_ref()
                        .entries
                        .iter()
                        .map(|e| (e.shard, e.members.iter().map(|m| m.id).collect()))
                        .collect(),
                    Err(_) => HashMap::new(),
                };
                for shard in groups_of(&mut client, None).await? {
                    let s = client
                        .status(rpb::NodeStatusRequest { shard })
                        .await
                        .map_err(failure)?
                        .into_inner();
                    let hosted_elsewhere = placed
                        .get(&shard)
                        .is_some_and(|ids| !ids.is_empty() && !ids.contains(&s.id))
                        && !s.members.iter().any(|m| m.id == s.id);
                    print_status(&s, hosted_elsewhere, json_output);
                }
                match map {
                    Ok(map) => {
                        for e in map.into_inner().entries {
                            print_map_entry(&e, json_output);
                        }
                    }
                    Err(s) if json_output => {
                        println!("{}", json!({"shard_map_error": s.message()}))
                    }
                    Err(s) => println!("shard map: unavailable ({})", s.message()),
                }
            }
        }
        Ok(())
    })
}

/// Apply lag (entries in the log not yet applied) above which a replica
/// is reported as lagging.
const LAGGING_ENTRIES: u64 = 1_000;

/// One word on a shard's replica, as this node sees it: `healthy`,
/// `no-leader` (an election is due or under way), `elsewhere` (the shard
/// map places the shard on other nodes; this one serves it through them),
/// `not-a-member` (the replica was removed or never added),
/// `uninitialized` (no `cluster init` yet), or `lagging` (more than
/// [`LAGGING_ENTRIES`] entries logged but not applied).
fn health(s: &rpb::NodeStatus, hosted_elsewhere: bool) -> &'static str {
    if hosted_elsewhere {
        "elsewhere"
    } else if s.members.is_empty() {
        "uninitialized"
    } else if !s.members.iter().any(|m| m.id == s.id) {
        "not-a-member"
    } else if s.leader == 0 {
        "no-leader"
    } else if s.last_log_index.saturating_sub(s.last_applied) > LAGGING_ENTRIES {
        "lagging"
    } else {
        "healthy"
    }
}

/// A shard's id as printed: the metadata group is `meta`.
fn shard_label(shard: u64) -> String {
    if shard == META_SHARD {
        "meta".into()
    } else {
        shard.to_string()
    }
}

fn print_map_entry(e: &rpb::ShardMapEntry, json_output: bool) {
    let members: Vec<String> = e
        .members
        .iter()
        .map(|m| format!("{}={}", m.id, m.address))
        .collect();
    if json_output {
        println!(
            "{}",
            json!({"map_shard": e.shard, "replicas": members, "leader_hint": e.leader, "term": e.term})
        );
    } else {
        println!(
            "map: shard {} replicas {} leader hint {} (term {})",
            e.shard,
            members.join(","),
            e.leader,
            e.term
        );
    }
}

fn print_status(s: &rpb::NodeStatus, hosted_elsewhere: bool, json_output: bool) {
    if json_output {
        println!(
            "{}",
            json!({"id": s.id, "shard": s.shard, "health": health(s, hosted_elsewhere), "state": s.state, "leader": s.leader,
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
            "node {} shard {} [{}]: {} in term {}, leader {}, log {} applied {} (lag {}), members {}; log purged to {}, snapshot at {} ({} built, {} installed, last {} bytes, build {} ms, install {} ms)",
            s.id,
            shard_label(s.shard),
            health(s, hosted_elsewhere),
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
