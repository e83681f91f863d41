//! How client subcommands reach a server: over TLS for an `https://`
//! server (`--ca`, else `IMSTORE_CA`: the CA that signed the server's
//! certificate), with the bearer token (`--token`, else `IMSTORE_TOKEN`,
//! which keeps it out of the process list); how cluster commands reach a
//! node's transport (TLS once there is a CA, presenting `--cert`/`--key`,
//! else `IMSTORE_CERT`/`IMSTORE_KEY`: mutual TLS); and `imstore token`,
//! which makes tokens and their token-file entries (`docs/server.md`,
//! "Authentication" and "TLS"; `docs/security.md`).

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_raft::Dialer;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

type Failure = Box<dyn std::error::Error>;

/// A client of the `imstore.v1` API that sends the process's token.
pub(crate) type Api = ImstoreClient<InterceptedService<Channel, Bearer>>;

static TOKEN: OnceLock<Option<MetadataValue<Ascii>>> = OnceLock::new();
static CA: OnceLock<Option<Certificate>> = OnceLock::new();
static IDENTITY: OnceLock<Option<Identity>> = OnceLock::new();
/// A node's own dialer (its certificate and cluster CA), which its
/// `--rebuild` uses instead of the flags'.
static NODE_DIALER: OnceLock<Dialer> = OnceLock::new();

/// Makes cluster calls of this process (a node's rebuild) go through
/// `dialer`.
pub(crate) fn use_node_dialer(dialer: Dialer) {
    let _ = NODE_DIALER.set(dialer);
}

/// A node transport client (cluster administration).
pub(crate) type Transport = RaftTransportClient<Channel>;

/// `flag`, else the environment variable `name` when set and not empty.
fn flag_or_env(flag: Option<PathBuf>, name: &str) -> Option<PathBuf> {
    flag.or_else(|| {
        std::env::var_os(name)
            .filter(|p| !p.is_empty())
            .map(Into::into)
    })
}

/// Sets the certificate cluster commands present to a node with mutual
/// TLS: `cert` and `key` (else `IMSTORE_CERT`, `IMSTORE_KEY`), both or
/// neither; unreadable files are refused.
pub(crate) fn set_identity(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<(), Failure> {
    let identity = match (
        flag_or_env(cert, "IMSTORE_CERT"),
        flag_or_env(key, "IMSTORE_KEY"),
    ) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf, what: &str| {
                std::fs::read(path).map_err(|e| format!("the {what} file {}: {e}", path.display()))
            };
            Some(Identity::from_pem(
                read(&cert, "certificate")?,
                read(&key, "key")?,
            ))
        }
        _ => return Err("--cert and --key (IMSTORE_CERT, IMSTORE_KEY) go together".into()),
    };
    let _ = IDENTITY.set(identity);
    Ok(())
}

/// How cluster commands reach nodes: TLS when there is a CA (presenting
/// the certificate, if one is set), plaintext without.
pub(crate) fn dialer() -> Dialer {
    if let Some(dialer) = NODE_DIALER.get() {
        return dialer.clone();
    }
    match CA.get().cloned().flatten() {
        Some(ca) => {
            let mut tls = ClientTlsConfig::new().ca_certificate(ca);
            if let Some(Some(identity)) = IDENTITY.get() {
                tls = tls.identity(identity.clone());
            }
            Dialer::tls(tls)
        }
        None => Dialer::plaintext(),
    }
}

/// A transport client of the node at `server` (`host:port` or a URL;
/// the scheme follows [`dialer`]).
pub(crate) async fn transport(server: &str) -> Result<Transport, imstore_raft::Error> {
    Ok(RaftTransportClient::new(dialer().connect(server).await?))
}

/// Sets the CA that `https://` servers' certificates must chain to:
/// `flag`, else `IMSTORE_CA`, else none. An unreadable file is refused.
pub(crate) fn set_ca(flag: Option<PathBuf>) -> Result<(), Failure> {
    let path = flag_or_env(flag, "IMSTORE_CA");
    let ca = match path {
        Some(path) => Some(Certificate::from_pem(
            std::fs::read(&path).map_err(|e| format!("the CA file {}: {e}", path.display()))?,
        )),
        None => None,
    };
    let _ = CA.set(ca);
    Ok(())
}

/// An endpoint for `url`: TLS with the CA for `https://`, plaintext for
/// `http://`.
pub(crate) fn endpoint(url: &str) -> Result<Endpoint, Failure> {
    let endpoint = Endpoint::from_shared(url.to_owned())?;
    let ca = CA.get().cloned().flatten();
    match (url.starts_with("https://"), ca) {
        (true, Some(ca)) => Ok(endpoint.tls_config(ClientTlsConfig::new().ca_certificate(ca))?),
        (true, None) => Err(format!(
            "{url}: an https:// server needs --ca (or IMSTORE_CA), the CA that signed its certificate"
        )
        .into()),
        (false, Some(_)) => Err(format!(
            "{url}: --ca (or IMSTORE_CA) is for TLS; name the server https://"
        )
        .into()),
        (false, None) => Ok(endpoint),
    }
}

/// Sets the token every client of this process sends: `flag`, else
/// `IMSTORE_TOKEN`, else none. A token that cannot be a header is refused.
pub(crate) fn set_token(flag: Option<String>) -> Result<(), Failure> {
    let token = flag.or_else(|| {
        std::env::var("IMSTORE_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    let value = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| "the token must be printable ASCII")?,
        ),
        None => None,
    };
    // Set once, from main; a second call keeps the first.
    let _ = TOKEN.set(value);
    Ok(())
}

/// Adds `authorization: Bearer <token>` to every call, when there is one.
#[derive(Clone, Default)]
pub(crate) struct Bearer;

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(Some(value)) = TOKEN.get() {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client over `channel` that sends the token.
pub(crate) fn client(channel: Channel) -> Api {
    ImstoreClient::with_interceptor(channel, Bearer)
}

/// Connects to `server` and sends the token.
pub(crate) async fn connect(server: &str) -> Result<Api, Failure> {
    let channel = endpoint(server)?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    Ok(client(channel))
}

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Make a new random token; prints it (once: it is not kept anywhere)
    /// and the entry to add to the server's token file.
    New {
        /// The token's name in the token file (who holds it).
        #[arg(long)]
        name: String,
        /// What it may do: readonly, service or admin.
        #[arg(long, value_parser = ["readonly", "service", "admin"])]
        role: String,
        /// Expire it this many days from now.
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// Print the SHA-256 (what a token file holds) of a token read from
    /// standard input.
    Hash,
}

/// `imstore token`.
pub fn token(cmd: TokenCmd) -> Result<(), Failure> {
    match cmd {
        TokenCmd::New {
            name,
            role,
            expires_in_days,
        } => {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(|e| format!("no random bytes from /dev/urandom: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let expiry = match expires_in_days {
                Some(days) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_secs();
                    format!(
                        "expires_at = {}\n",
                        now.saturating_add(days.saturating_mul(86_400))
                    )
                }
                None => String::new(),
            };
            println!("token: {token}");
            println!();
            println!("# add to the token file:");
            println!(
                "[[tokens]]\nname = {name:?}\nsha256 = \"{}\"\nrole = \"{role}\"\n{expiry}",
                imstore_proxy::token_sha256(&token)
            );
            Ok(())
        }
        TokenCmd::Hash => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let token = input.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                return Err("no token on standard input".into());
            }
            println!("{}", imstore_proxy::token_sha256(token));
            Ok(())
        }
    }
}
