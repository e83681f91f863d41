//! The flags every server subcommand (`serve`, `node`, `proxy`) shares:
//! where it listens and how it is secured, laid over its TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use imstore_proxy::ServerConfig;

type Failure = Box<dyn std::error::Error>;

#[derive(clap::Args)]
pub struct ListenArgs {
    /// gRPC address [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Prometheus /metrics address, or "off" (`serve`: on at
    /// 127.0.0.1:7071 unless off; `node`, `proxy`: off unless given).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Require bearer tokens on the client API: a TOML file of their
    /// SHA-256 hashes and roles (`imstore token new` makes entries),
    /// read again when it changes or on SIGHUP.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// TLS on the gRPC address: the server's certificate chain (PEM),
    /// with --tls-key. A node or proxy also presents it to the nodes it
    /// calls (mutual TLS, with --tls-ca).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Serve a non-loopback address without TLS and tokens (refused
    /// otherwise; warned about at every start).
    #[arg(long)]
    insecure: bool,
}

impl ListenArgs {
    /// Lays the flags given over `config`.
    pub fn apply(&self, config: &mut ServerConfig) -> Result<(), Failure> {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        for (flag, key) in [
            (&self.tokens_file, &mut config.tokens_file),
            (&self.tls_cert, &mut config.tls_cert),
            (&self.tls_key, &mut config.tls_key),
        ] {
            if let Some(path) = flag {
                *key = Some(path.clone());
            }
        }
        config.insecure |= self.insecure;
        match self.metrics_listen.as_deref() {
            None => {}
            Some("off") => config.metrics_listen = None,
            Some(addr) => config.metrics_listen = Some(addr.parse()?),
        }
        Ok(())
    }
}
