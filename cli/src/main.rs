//! The `imstore` command.
//!
//! - `imstore serve`: the single-node server on an embedded data directory
//!   (defaults: 127.0.0.1:7070, `./imstore-data`, metrics on 127.0.0.1:7071).
//! - client subcommands (`send`, `read`, `sync`, `friends`, `groups`,
//!   `receipts`, `unread`, `conversations`, `watch`, …) against a running
//!   server; human-readable output, `--json` for scripts.
//! - `imstore demo`: the embedded engine, no server.

#![forbid(unsafe_code)]

mod client;
mod cluster;
mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imstore_proxy::{Server, ServerConfig};

#[derive(Parser)]
#[command(
    name = "imstore",
    version,
    about = "A storage engine for instant-messaging timelines"
)]
struct Cli {
    /// The server a client subcommand talks to.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7070")]
    server: String,
    /// Print a client subcommand's result as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the single-node gRPC server on a local data directory.
    Serve(ServeArgs),
    /// Run a cluster node: a raft replica of the store, serving both the
    /// client API and the node-to-node transport on one address.
    Node(cluster::NodeArgs),
    /// Cluster administration: init, status, add-node, rebalance, remove-node, move-shard.
    Cluster {
        #[command(subcommand)]
        action: cluster::ClusterCmd,
    },
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
    /// gRPC address [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./imstore-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Prometheus /metrics address [default: 127.0.0.1:7071]; "off" turns it off.
    #[arg(long)]
    metrics_listen: Option<String>,
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
    let result = match cli.command {
        Cmd::Demo { data_dir } => demo::demo(&data_dir),
        Cmd::Serve(args) => serve(args),
        Cmd::Node(args) => cluster::node(args),
        Cmd::Cluster { action } => cluster::admin(action, &cli.server, cli.json),
        Cmd::Client(cmd) => client::run(cmd, &cli.server, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imstore: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_toml_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    match args.metrics_listen.as_deref() {
        None => {}
        Some("off") => config.metrics_listen = None,
        Some(addr) => config.metrics_listen = Some(addr.parse()?),
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
