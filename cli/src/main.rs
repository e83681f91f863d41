//! The `imstore` command.
//!
//! - `imstore serve`: the single-node server on an embedded data directory
//!   (defaults: 127.0.0.1:7070, `./imstore-data`, metrics on 127.0.0.1:7071).
//! - client subcommands (`send`, `read`, `sync`, `friends`, `groups`,
//!   `receipts`, `unread`, `conversations`, `watch`, …) against a running
//!   server; human-readable output, `--json` for scripts.
//! - `imstore bench`: the load generator, against `--server` or an
//!   `imstore serve` it starts on a temporary directory.
//! - `imstore demo`: the embedded engine, no server.

#![forbid(unsafe_code)]

mod access;
mod bench;
mod client;
mod cluster;
mod cluster_hot;
mod cluster_print;
mod demo;
mod node;
mod ops;
mod proxy;
mod rebuild;
mod server_args;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imstore_proxy::{Server, ServerConfig};

/// mimalloc instead of glibc's malloc: a profile of the gRPC append path
/// spent about a tenth of the server's CPU in glibc's malloc and free
/// (`malloc_consolidate`, `_int_free`); `docs/benchmarks.md` has the A/B.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where a client subcommand connects without `--server`.
const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

#[derive(Parser)]
#[command(
    name = "imstore",
    version,
    about = "A storage engine for instant-messaging timelines"
)]
struct Cli {
    /// The server a client subcommand talks to [default:
    /// http://127.0.0.1:7070; `bench` without it starts its own].
    #[arg(long, global = true)]
    server: Option<String>,
    /// Print a client subcommand's result as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// The bearer token client subcommands send, for a server that
    /// requires tokens [default: the IMSTORE_TOKEN environment variable,
    /// which keeps it out of the process list].
    #[arg(long, global = true)]
    token: Option<String>,
    /// The CA (PEM) an `https://` server's certificate must chain to
    /// [default: the IMSTORE_CA environment variable].
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// The certificate (PEM) cluster commands present to nodes with
    /// mutual TLS, one the cluster's CA signed; with --key [default: the
    /// IMSTORE_CERT environment variable].
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert [default: IMSTORE_KEY].
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the single-node gRPC server on a local data directory.
    Serve(ServeArgs),
    /// Run a cluster node: a raft replica of the store, serving both the
    /// client API and the node-to-node transport on one address.
    Node(node::NodeArgs),
    /// Run a proxy in front of a cluster's nodes: the client API, holding
    /// no data (writes to each shard's leader, reads to a replica,
    /// identical reads shared).
    Proxy(proxy::ProxyArgs),
    /// Cluster administration: init, status, add-node, rebalance, remove-node, move-shard.
    Cluster {
        #[command(subcommand)]
        action: cluster::ClusterCmd,
    },
    /// Check every stored byte: offline on a data directory (`--data-dir`,
    /// the server stopped, or a copy), or online through a server
    /// (`--server`). Exits non-zero when anything is damaged.
    Verify {
        /// The data directory to check offline (a server's or a node's);
        /// without it, the server named by `--server` checks its store.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write a consistent backup while writes go on into a new directory.
    /// Of a single-node server (`imstore serve`): its store, on the
    /// server's machine. Of a cluster (`--server` any node): every shard's
    /// image from one of its replicas, on this machine.
    Backup {
        /// The new backup directory (a single server's: on its machine; a
        /// cluster's: on this one).
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup into a new data directory (no server running on
    /// it), after checking every file; `--check` only checks the backup.
    /// A cluster backup is restored node by node: `--node ID` writes that
    /// node's data directory (run it for every node, then start them).
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// The new (or empty) data directory to restore into.
        #[arg(long, required_unless_present = "check")]
        data_dir: Option<PathBuf>,
        /// Of a cluster backup: the node whose data directory to write.
        #[arg(long, conflicts_with = "check")]
        node: Option<u64>,
        /// Only check the backup against its manifest.
        #[arg(long, conflicts_with = "data_dir")]
        check: bool,
    },
    /// The emergency ballast file of a data directory.
    Ballast {
        #[command(subcommand)]
        action: ops::BallastCmd,
    },
    /// Make bearer tokens for a server's token file.
    Token {
        #[command(subcommand)]
        action: access::TokenCmd,
    },
    /// Load a server with one workload and report throughput, latency
    /// percentiles and CPU; every acknowledgement is checked.
    Bench(bench::BenchArgs),
    /// Write and read a few conversations in an embedded data directory.
    Demo {
        /// Data directory (created if missing).
        #[arg(long, default_value = "./imstore-data")]
        data_dir: PathBuf,
    },
    #[command(flatten)]
    Client(client::ClientCmd),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./imstore-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    listen: server_args::ListenArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(err) = access::set_token(cli.token.clone())
        .and_then(|()| access::set_ca(cli.ca.clone()))
        .and_then(|()| access::set_identity(cli.cert.clone(), cli.key.clone()))
    {
        eprintln!("imstore: {err}");
        return ExitCode::FAILURE;
    }
    let server = cli
        .server
        .clone()
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let result = match cli.command {
        Cmd::Bench(args) => bench::bench(args, cli.server.as_deref(), cli.json),
        Cmd::Demo { data_dir } => demo::demo(&data_dir),
        Cmd::Serve(args) => serve(args),
        Cmd::Node(args) => node::node(args),
        Cmd::Proxy(args) => proxy::proxy(args),
        Cmd::Cluster { action } => cluster::admin(action, &server, cli.json),
        Cmd::Verify {
            data_dir: Some(dir),
        } => ops::verify_offline(&dir, cli.json),
        Cmd::Verify { data_dir: None } => ops::verify_online(&server, cli.json),
        Cmd::Backup { to } => ops::backup(&server, &to, cli.json),
        Cmd::Restore {
            from,
            data_dir,
            node,
            ..
        } => ops::restore(&from, data_dir.as_deref(), node, cli.json),
        Cmd::Ballast { action } => ops::ballast(action, cli.json),
        Cmd::Token { action } => access::token(action),
        Cmd::Client(cmd) => client::run(cmd, &server, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imstore: {err}");
            if refused_as_damaged(err.as_ref()) {
                eprintln!(
                    "imstore: the data directory is damaged and was not opened; every file is left \
                     as it was. See docs/server.md, \"Damaged files\": check it with `imstore verify \
                     --data-dir`, restore a backup, or rebuild a cluster node from its peers."
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// A server's or node's refusal, as every subcommand reports it: the
/// reason its `ErrorInfo` names (the status code when it has none), then
/// the message.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    match imstore_proto::errors::error_info(status) {
        Some((reason, _)) => format!("{reason}: {}", status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Whether `err` (or what it wraps) is a store that refused to open
/// because its files are damaged.
fn refused_as_damaged(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(imstore_engine::Error::StorageCorruption { .. }) =
            e.downcast_ref::<imstore_engine::Error>()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if refused_as_damaged(inner) {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_toml_file(path)?,
        None => ServerConfig::default(),
    };
    args.listen.apply(&mut config)?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        match server.metrics_addr() {
            Some(m) => eprintln!("imstore serving on {addr} (metrics on http://{m}/metrics)"),
            None => eprintln!("imstore serving on {addr}"),
        }
        server.run(shutdown_signal()).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
