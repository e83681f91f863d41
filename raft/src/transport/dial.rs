//! How a node (or the CLI) opens a connection to a node's port: plaintext,
//! or TLS verified against the cluster's CA and, on a node, presenting the
//! node's own certificate (mutual TLS; docs/security.md).

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::Error;

/// Opens connections to nodes, one way for every node-to-node call: raft
/// messages, forwards, bootstrap, relays, and the CLI's administration.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<std::sync::Arc<ClientTlsConfig>>,
}

impl Dialer {
    /// Plaintext (`http://`), the default.
    pub fn plaintext() -> Dialer {
        Dialer::default()
    }

    /// TLS (`https://`) with `config`: the CA the node's certificate must
    /// chain to (its name checked against the address dialled), and the
    /// certificate to present, if any.
    pub fn tls(config: ClientTlsConfig) -> Dialer {
        Dialer {
            tls: Some(std::sync::Arc::new(config)),
        }
    }

    /// The endpoint of `address`: `host:port`, or a URL whose scheme is
    /// replaced by the dialer's own.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, Error> {
        let bare = address
            .strip_prefix("http://")
            .or_else(|| address.strip_prefix("https://"))
            .unwrap_or(address);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))
            .map_err(|e| Error::InvalidRequest(format!("bad node address {address:?}: {e}")))?;
        let endpoint = match &self.tls {
            Some(tls) => endpoint
                .tls_config(ClientTlsConfig::clone(tls))
                .map_err(|e| Error::InvalidRequest(format!("TLS settings for {address:?}: {e}")))?,
            None => endpoint,
        };
        Ok(endpoint.tcp_nodelay(true))
    }

    /// A channel to `address` that connects on first use.
    pub fn lazy(&self, address: &str) -> Result<Channel, Error> {
        Ok(self.endpoint(address)?.connect_lazy())
    }

    /// A channel to `address`, connected now.
    pub async fn connect(&self, address: &str) -> Result<Channel, Error> {
        self.endpoint(address)?
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot reach {address}: {}", chain(&e))))
    }
}

/// An error with its sources, which for a TLS failure hold the reason.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_the_dialers_scheme() {
        let plain = Dialer::plaintext();
        for address in [
            "127.0.0.1:7070",
            "http://127.0.0.1:7070",
            "https://127.0.0.1:7070",
        ] {
            let endpoint = plain.endpoint(address).unwrap();
            assert_eq!(endpoint.uri().to_string(), "http://127.0.0.1:7070/");
        }
        assert!(plain.endpoint("not an address").is_err());
    }
}
