//! `imstore node`: the library server (`imstore_proxy::Server`) with a
//! `[node]` table, from `--config` and flags, and `--rebuild`.

use std::path::PathBuf;

use imstore_proxy::{NodeConfig, Server, ServerConfig};

type Failure = Box<dyn std::error::Error>;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// A TOML file: the server's settings (docs/imstore.toml) with a
    /// `[node]` table (docs/server.md, "Running a cluster node"); the
    /// flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id (non-zero, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// Data directory [default: ./imstore-node].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How many shards the cluster has (the same on every node; `cluster
    /// init` places each on some of the nodes, and a node serves the
    /// others through the shard map). Fixed when the node's data
    /// directory is created: a restart with another count is refused
    /// [default: 1].
    #[arg(long)]
    shards: Option<u64>,
    /// Build a snapshot after this many log entries since the last one
    /// [default: 5000].
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot for slightly lagging followers;
    /// one further behind is sent the snapshot [default: 1000].
    #[arg(long)]
    keep_log: Option<u64>,
    #[command(flatten)]
    listen: crate::server_args::ListenArgs,
    /// The cluster's CA (PEM): peers' certificates must chain to it, and
    /// raft calls are taken only from one naming a member's host
    /// (docs/security.md).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Every member of a new cluster, this node included
    /// (`1=127.0.0.1:7101,2=…`): the lowest id initializes the cluster once
    /// every peer answers, instead of `imstore cluster init`.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// With `--peers`: replicas of each data shard [default: 3].
    #[arg(long)]
    replicas: Option<usize>,
    /// Testing only: accept `SetFaults` (cut this node off from peers).
    #[arg(long, hide = true)]
    fault_injection: bool,
    /// Rebuild this node from its peers: it leaves every group it is in,
    /// moves its data directory aside (`DIR.damaged-<time>`), starts
    /// empty, and rejoins each group as a learner caught up by snapshot,
    /// then a voter (docs/server.md, "Rebuilding a cluster node").
    #[arg(long, requires = "join")]
    rebuild: bool,
    /// With `--rebuild`: the client address of a healthy node of the
    /// cluster (`http://host:port`), through which the groups' leaders
    /// are found.
    #[arg(long)]
    join: Option<String>,
}

impl NodeArgs {
    /// The configuration: the file's (or the defaults, with a node's data
    /// directory and no metrics endpoint), then the flags.
    fn config(&self) -> Result<ServerConfig, Failure> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_toml_file(path)?,
            None => ServerConfig {
                data_dir: PathBuf::from("./imstore-node"),
                metrics_listen: None,
                ..ServerConfig::default()
            },
        };
        let mut node = match (config.node.take(), self.id) {
            (Some(mut node), Some(id)) => {
                node.id = id;
                node
            }
            (Some(node), None) => node,
            (None, Some(id)) => NodeConfig::new(id),
            (None, None) => return Err("a node needs an id: --id, or `id` in [node]".into()),
        };
        self.listen.apply(&mut config)?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(path) = &self.tls_ca {
            config.tls_ca = Some(path.clone());
        }
        if let Some(shards) = self.shards {
            node.shards = shards;
        }
        if let Some(every) = self.snapshot_every {
            node.snapshot_every = every;
        }
        if let Some(keep) = self.keep_log {
            node.keep_log = keep;
        }
        node.fault_injection |= self.fault_injection;
        if !self.peers.is_empty() {
            node.peers = self.peers.clone();
        }
        if let Some(replicas) = self.replicas {
            node.replicas = replicas;
        }
        config.node = Some(node);
        Ok(config)
    }
}

pub fn node(args: NodeArgs) -> Result<(), Failure> {
    let config = args.config()?;
    let id = config.node.as_ref().map_or(0, |n| n.id);
    // A node's rebuild reaches its peers as the node does.
    crate::access::use_node_dialer(imstore_proxy::node_dialer(&config)?);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        if args.rebuild {
            let join = args.join.as_deref().ok_or("--rebuild needs --join")?;
            crate::rebuild::prepare(&config.data_dir, id, join).await?;
        }
        let pending_rebuild = crate::rebuild::pending(&config.data_dir)?;
        let data_dir = config.data_dir.clone();
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        if let Some(m) = server.metrics_addr() {
            eprintln!("imstore node {id} metrics on {m}");
        }
        let count = server.shard_count().unwrap_or(1);
        eprintln!(
            "imstore node {id} serving on {addr} ({count} shard{})",
            if count == 1 { "" } else { "s" }
        );
        if let Some(pending) = pending_rebuild {
            tokio::spawn(crate::rebuild::rejoin(
                data_dir,
                id,
                addr.to_string(),
                pending,
            ));
        }
        server.run(crate::shutdown_signal()).await?;
        Ok(())
    })
}
