//! TLS on a server's port, and the mutual TLS that guards a node's
//! transport (docs/security.md).
//!
//! - [`TlsSetup::load`] reads and checks the configured PEM files once, at
//!   startup, so a missing file, a key that does not belong to its
//!   certificate, an expired certificate or (on a node) one the cluster's
//!   CA did not sign stops the start with a message naming the file.
//! - [`incoming`] accepts connections and runs each TLS handshake itself
//!   (rather than through tonic's acceptor, which drops failures silently),
//!   so every refused handshake is logged and counted.
//! - [`PeerGateLayer`] admits `imstore.raft.v1` calls on a node with TLS
//!   only from a certificate of the cluster's CA (the handshake checked
//!   the chain), and raft traffic only from one whose name is a member's
//!   host (`MemberNames`).
//!
//! The client API on the same port takes connections without a
//! certificate: IM servers authenticate with bearer tokens (`auth`).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use imstore_raft::Dialer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::gate::{Check, CheckLayer};
use crate::{ServeError, ServerConfig};

/// The path prefix of the node transport's calls.
const TRANSPORT: &str = "/imstore.raft.v1.RaftTransport/";

/// Transport calls any certificate of the cluster's CA may make: cluster
/// administration, which the CLI sends with an operator's certificate
/// (`imstore --cert`), and what a proxy asks of a node (the shard map, a
/// client write proposed to a shard's leader, a read of a shard). Every
/// other transport call is raft traffic between members.
const ANY_CERTIFICATE: [&str; 10] = [
    "Initialize",
    "Status",
    "AddNode",
    "RemoveNode",
    "RetireReplica",
    "SetFaults",
    "ShardMap",
    "ExportShard",
    "Propose",
    "ShardRead",
];

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The checked TLS material of a server.
pub(crate) struct TlsSetup {
    /// Runs the server side of each handshake.
    pub(crate) acceptor: TlsAcceptor,
    /// How this node reaches its peers: mutual TLS with its own
    /// certificate (plaintext on a single server, which has no peers).
    pub(crate) dialer: Dialer,
    /// Whether client certificates are checked against a CA (a node).
    pub(crate) mutual: bool,
}

/// A PEM file's bytes, or an error naming it.
fn read(path: &Path, what: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path)
        .map_err(|e| ServeError::Config(format!("TLS {what} {}: {e}", path.display())))
}

fn certificates(
    path: &Path,
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Config(format!("TLS {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Config(format!(
            "TLS {what} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Refuses a certificate outside its validity period: an expired one
/// would fail every handshake, long after the start that could have said
/// so.
fn check_validity(path: &Path, der: &CertificateDer<'_>, now: Duration) -> Result<(), ServeError> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| {
        ServeError::Config(format!(
            "TLS certificate {}: not X.509: {e}",
            path.display()
        ))
    })?;
    let validity = cert.tbs_certificate.validity;
    if now > validity.not_after.to_unix_duration() {
        return Err(ServeError::Config(format!(
            "TLS certificate {} expired at {}",
            path.display(),
            validity.not_after.to_date_time()
        )));
    }
    if now < validity.not_before.to_unix_duration() {
        return Err(ServeError::Config(format!(
            "TLS certificate {} is not valid before {}",
            path.display(),
            validity.not_before.to_date_time()
        )));
    }
    Ok(())
}

impl TlsSetup {
    /// The TLS of `config`, checked, or `None` without `tls_cert`.
    pub(crate) fn load(config: &ServerConfig) -> Result<Option<TlsSetup>, ServeError> {
        let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
            (None, None) if config.tls_ca.is_none() => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                return Err(ServeError::Config(
                    "tls_ca needs tls_cert and tls_key (--tls-cert, --tls-key)".into(),
                ))
            }
            _ => {
                return Err(ServeError::Config(
                    "TLS needs both tls_cert and tls_key (--tls-cert, --tls-key)".into(),
                ))
            }
        };
        let in_cluster = config.node.is_some() || config.proxy.is_some();
        match (in_cluster, &config.tls_ca) {
            (true, None) => {
                return Err(ServeError::Config(
                    "TLS on a cluster node or proxy needs tls_ca (--tls-ca), the cluster's CA: \
                     nodes and proxies present their certificates to nodes (mutual TLS)"
                        .into(),
                ))
            }
            (false, Some(_)) => {
                return Err(ServeError::Config(
                    "tls_ca is the cluster's CA of a node's mutual TLS; `imstore serve` takes \
                     no client certificates"
                        .into(),
                ))
            }
            _ => {}
        }
        let cert_pem = read(cert_path, "certificate")?;
        let key_pem = read(key_path, "key")?;
        let chain = certificates(cert_path, &cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| ServeError::Config(format!("TLS key {}: {e}", key_path.display())))?;
        let now = UnixTime::now();
        check_validity(cert_path, &chain[0], Duration::from_secs(now.as_secs()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Config(format!("TLS: {e}")))?;
        let (builder, dialer) = match &config.tls_ca {
            None => (builder.with_no_client_auth(), Dialer::plaintext()),
            Some(ca_path) => {
                let ca_pem = read(ca_path, "CA")?;
                let mut roots = rustls::RootCertStore::empty();
                for ca in certificates(ca_path, &ca_pem, "CA")? {
                    roots.add(ca).map_err(|e| {
                        ServeError::Config(format!("TLS CA {}: {e}", ca_path.display()))
                    })?;
                }
                let parsed = ParsedCertificate::try_from(&chain[0]).map_err(|e| {
                    ServeError::Config(format!("TLS certificate {}: {e}", cert_path.display()))
                })?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots,
                    &chain[1..],
                    now,
                    provider.signature_verification_algorithms.all,
                )
                .map_err(|e| {
                    ServeError::Config(format!(
                        "TLS certificate {} does not chain to the cluster's CA {}: {e}",
                        cert_path.display(),
                        ca_path.display()
                    ))
                })?;
                // The client API shares the port: IM servers connect
                // without a certificate; raft calls need one (PeerGate).
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServeError::Config(format!("TLS CA {}: {e}", ca_path.display())))?;
                let client = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                    .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
                (
                    builder.with_client_cert_verifier(verifier),
                    Dialer::tls(client),
                )
            }
        };
        let mut server = builder.with_single_cert(chain, key).map_err(|e| {
            ServeError::Config(format!(
                "TLS certificate {} with key {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(TlsSetup {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            mutual: config.tls_ca.is_some(),
            dialer,
        }))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// What the TLS acceptor and the peer gate refused, for `/metrics`.
#[derive(Default)]
pub(crate) struct Refusals {
    handshakes: Family<ReasonLabels, Counter>,
    transport_calls: Family<ReasonLabels, Counter>,
}

impl Refusals {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "imstore_tls_handshakes_refused",
            "TLS handshakes refused, by reason (bad_certificate: a client certificate the \
             CA did not sign; protocol: not TLS; alert: the client refused ours).",
            self.handshakes.clone(),
        );
        registry.register(
            "imstore_transport_calls_refused",
            "Node transport calls refused, by reason (no_certificate, not_a_member).",
            self.transport_calls.clone(),
        );
    }

    fn handshake(&self, reason: &'static str) {
        self.handshakes
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn transport_call(&self, reason: &'static str) {
        self.transport_calls
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// Why a handshake failed, as a metric label.
fn handshake_reason(error: &std::io::Error) -> &'static str {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => "protocol",
        Some(_) => "other",
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => "closed",
        None => "other",
    }
}

/// The connections `listener` accepts, each after its TLS handshake: a
/// handshake that fails (or takes longer than 10 s) is logged and counted
/// in `refusals`, and never reaches the server. The accept loop ends when
/// the stream is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    refusals: Arc<Refusals>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: pass, and retry.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, sender, refusals) =
                (acceptor.clone(), sender.clone(), Arc::clone(&refusals));
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        let reason = handshake_reason(&e);
                        refusals.handshake(reason);
                        tracing::warn!(%peer, reason, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        refusals.handshake("timeout");
                        tracing::warn!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// The names a raft peer's certificate may carry: the hosts of the
/// members of the node's metadata group (every node of the cluster,
/// learners included) and of its configured `peers`.
#[derive(Default)]
pub(crate) struct MemberNames {
    names: RwLock<Vec<ServerName<'static>>>,
}

impl MemberNames {
    /// Replaces the names with the hosts of `addresses` (`host:port`).
    pub(crate) fn set<'a>(&self, addresses: impl IntoIterator<Item = &'a str>) {
        let mut names: Vec<ServerName<'static>> = addresses
            .into_iter()
            .filter_map(|address| {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned()).ok()
            })
            .collect();
        names.sort_by_key(|n| n.to_str().into_owned());
        names.dedup();
        let mut current = self.names.write().unwrap_or_else(|p| p.into_inner());
        if *current != names {
            tracing::info!(names = ?names.iter().map(|n| n.to_str()).collect::<Vec<_>>(), "raft peers admitted by certificate name");
            *current = names;
        }
    }

    /// Whether `certificate` names a member. A node that knows no member
    /// yet (new, waiting to be added) admits any certificate of the CA.
    fn admits(&self, certificate: &CertificateDer<'_>) -> bool {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        if names.is_empty() {
            return true;
        }
        let Ok(parsed) = ParsedCertificate::try_from(certificate) else {
            return false;
        };
        names
            .iter()
            .any(|name| rustls::client::verify_server_name(&parsed, name).is_ok())
    }
}

/// What a node with mutual TLS checks on each transport call.
#[derive(Clone)]
pub(crate) struct PeerGate {
    pub(crate) members: Arc<MemberNames>,
    pub(crate) refusals: Arc<Refusals>,
}

impl PeerGate {
    fn check(&self, rpc: &str, extensions: &http::Extensions) -> Result<(), Status> {
        let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer = info.and_then(|i| i.get_ref().remote_addr());
        let certificates = info.and_then(TlsConnectInfo::peer_certs);
        let refuse = |reason: &'static str, message: String| {
            self.refusals.transport_call(reason);
            tracing::warn!(?peer, rpc, reason, "node transport call refused");
            Err(imstore_proto::errors::status(
                "PEER",
                message,
                [("case", reason), ("rpc", rpc)],
            ))
        };
        let Some(leaf) = certificates.as_ref().and_then(|c| c.first()) else {
            return refuse(
                "no_certificate",
                format!(
                    "{rpc} is a node transport call: it needs a certificate of the cluster's CA"
                ),
            );
        };
        if ANY_CERTIFICATE.contains(&rpc) || self.members.admits(leaf) {
            return Ok(());
        }
        refuse(
            "not_a_member",
            format!("{rpc}: the certificate names no member of the cluster"),
        )
    }
}

/// The tower layer that puts [`PeerGate`] before the node transport
/// (nothing without one: plaintext nodes and single servers).
pub(crate) type PeerGateLayer = CheckLayer<PeerGate>;

impl Check for PeerGate {
    fn admit(
        &self,
        path: &str,
        _headers: &http::HeaderMap,
        extensions: &mut http::Extensions,
    ) -> Result<(), Status> {
        match path.strip_prefix(TRANSPORT) {
            Some(rpc) => self.check(rpc, extensions),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_the_hosts_of_addresses() {
        let names = MemberNames::default();
        names.set([
            "10.0.0.1:7070",
            "node-b.example:7070",
            "[::1]:7070",
            "10.0.0.1:7071",
        ]);
        let held: Vec<String> = names
            .names
            .read()
            .unwrap()
            .iter()
            .map(|n| n.to_str().into_owned())
            .collect();
        assert_eq!(held, ["10.0.0.1", "::1", "node-b.example"]);
    }
}
