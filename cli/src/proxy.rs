//! `imstore proxy`: the library server (`imstore_proxy::Server`) with a
//! `[proxy]` table, from `--config` and flags: the client API in front of
//! a cluster's nodes, holding no data.

use std::path::PathBuf;

use imstore_proxy::{Server, ServerConfig};

type Failure = Box<dyn std::error::Error>;

#[derive(clap::Args)]
pub struct ProxyArgs {
    /// A TOML file: the server's settings (docs/imstore.toml) with a
    /// `[proxy]` table (docs/server.md, "Running proxies"); the flags
    /// below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Nodes of the cluster (`host:port`, comma-separated): where the
    /// shard map is learned. One is enough; more keep a start working
    /// while some are down.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    #[command(flatten)]
    listen: crate::server_args::ListenArgs,
    /// The cluster's CA (PEM), with TLS: the nodes' certificates must
    /// chain to it, and the proxy presents --tls-cert to them.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// How long a request may take in the proxy, retries included, in
    /// milliseconds [default: 10000].
    #[arg(long)]
    request_deadline_ms: Option<u64>,
    /// How long one attempt at one node may take before the next is tried,
    /// for calls that may be sent twice, in milliseconds [default: 3000].
    #[arg(long)]
    attempt_timeout_ms: Option<u64>,
}

impl ProxyArgs {
    /// The configuration: the file's (or the defaults, with no metrics
    /// endpoint), then the flags.
    fn config(&self) -> Result<ServerConfig, Failure> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_toml_file(path)?,
            None => ServerConfig {
                metrics_listen: None,
                ..ServerConfig::default()
            },
        };
        self.listen.apply(&mut config)?;
        if let Some(path) = &self.tls_ca {
            config.tls_ca = Some(path.clone());
        }
        let mut proxy = config.proxy.take().unwrap_or_default();
        if !self.nodes.is_empty() {
            proxy.nodes = self.nodes.clone();
        }
        if let Some(ms) = self.request_deadline_ms {
            proxy.request_deadline_ms = ms;
        }
        if let Some(ms) = self.attempt_timeout_ms {
            proxy.attempt_timeout_ms = ms;
        }
        if proxy.nodes.is_empty() {
            return Err("a proxy needs the cluster's nodes: --nodes, or `nodes` in [proxy]".into());
        }
        config.proxy = Some(proxy);
        Ok(config)
    }
}

pub fn proxy(args: ProxyArgs) -> Result<(), Failure> {
    let config = args.config()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        if let Some(m) = server.metrics_addr() {
            eprintln!("imstore proxy metrics on {m}");
        }
        let count = server.shard_count().unwrap_or(1);
        eprintln!(
            "imstore proxy serving on {addr} ({count} shard{})",
            if count == 1 { "" } else { "s" }
        );
        server.run(crate::shutdown_signal()).await?;
        Ok(())
    })
}
