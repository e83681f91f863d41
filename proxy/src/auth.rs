//! Client authentication and roles: bearer tokens checked before any
//! `imstore.v1.Imstore` handler runs.
//!
//! The server knows tokens only by their SHA-256, from a TOML token file
//! (`tokens_file` in the config, `--tokens-file`), each with a name, a
//! [`Role`] and an optional expiry:
//!
//! ```toml
//! [[tokens]]
//! name = "im-gateway"
//! sha256 = "<64 hex digits: SHA-256 of the token>"
//! role = "service"           # readonly | service | admin
//! expires_at = 1798761600    # optional, Unix seconds
//! ```
//!
//! A call carries `authorization: Bearer <token>`. A missing, malformed,
//! unknown or expired token gets `UNAUTHENTICATED` (reason
//! `UNAUTHENTICATED`, metadata `case`); a role without the right gets
//! `PERMISSION_DENIED` (reason `ROLE`, metadata `role` and `rpc`). Either
//! way no handler runs, so nothing is written, and the connection stays
//! usable. The file is read again when its contents change (checked every
//! second) and on SIGHUP; a file that no longer parses keeps the previous
//! tokens and logs an error. Health and reflection stay open (load
//! balancers and tools use them); the node transport is not covered here.
//!
//! Without a token file nothing is checked, as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::gate::{Check, CheckLayer};

/// The path prefix of the service the tokens guard.
const GUARDED: &str = "/imstore.v1.Imstore/";

/// How often the token file is looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads, sync and watch only.
    Readonly,
    /// The IM server: every data RPC.
    Service,
    /// Everything: adds `ClearHistory`, `SetRetention`, `Verify`,
    /// `Backup` and admin recall.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Readonly => "readonly",
            Role::Service => "service",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may call `rpc` (the method name). Admin recall
    /// is checked in `Recall` itself ([`Caller::may_recall_as_admin`]).
    pub fn may_call(self, rpc: &str) -> bool {
        match self {
            Role::Admin => true,
            Role::Service => !ADMIN_ONLY.contains(&rpc),
            Role::Readonly => READ_ONLY.contains(&rpc),
        }
    }
}

/// The RPCs a `readonly` token may call.
const READ_ONLY: &[&str] = &[
    "Read",
    "ReadAs",
    "ReadAsMany",
    "ListMembers",
    "ListFriends",
    "ListBlocked",
    "ListReactors",
    "Sync",
    "Watch",
    "GetReceipts",
    "GetReceiptCounts",
    "GetUnread",
    "ListConversations",
    "Status",
    "HotConversations",
];

/// The RPCs only an `admin` token may call.
const ADMIN_ONLY: &[&str] = &["ClearHistory", "SetRetention", "Verify", "Backup"];

/// Who made a call, put in the request's extensions by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name in the token file.
    pub name: Arc<str>,
    /// What the token may do.
    pub role: Role,
}

impl Caller {
    /// Whether a call with these extensions may recall someone else's
    /// message (`admin = true`): any call when no tokens are configured.
    pub fn may_recall_as_admin(extensions: &http::Extensions) -> Result<(), Status> {
        match extensions.get::<Caller>() {
            Some(caller) if caller.role != Role::Admin => Err(role_denied(caller.role, "Recall")),
            _ => Ok(()),
        }
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("token file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// What reading it failed with.
        error: std::io::Error,
    },
    /// The file is not a valid token file.
    #[error("token file {path}: {error}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong with it.
        error: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    name: String,
    sha256: String,
    role: Role,
    expires_at: Option<u64>,
}

struct Entry {
    caller: Caller,
    expires_at: Option<u64>,
}

/// The tokens the server accepts, from a token file it follows.
pub struct Tokens {
    path: PathBuf,
    table: RwLock<(String, HashMap<[u8; 32], Entry>)>,
}

impl Tokens {
    /// Reads `path`: an error names the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Arc<Tokens>, TokenFileError> {
        let text = read(path)?;
        let table = parse(path, &text)?;
        Ok(Arc::new(Tokens {
            path: path.to_path_buf(),
            table: RwLock::new((text, table)),
        }))
    }

    /// How many tokens are accepted now.
    pub fn len(&self) -> usize {
        self.lock_read().1.len()
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, (String, HashMap<[u8; 32], Entry>)> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the file again if its contents changed; a file that does not
    /// parse keeps the tokens as they are. Returns whether they changed.
    pub fn reload(&self) -> Result<bool, TokenFileError> {
        let text = read(&self.path)?;
        if text == self.lock_read().0 {
            return Ok(false);
        }
        let table = parse(&self.path, &text)?;
        let count = table.len();
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (text, table);
        tracing::info!(path = %self.path.display(), tokens = count, "token file reloaded");
        Ok(true)
    }

    /// Follows the file: every second, and at each SIGHUP. Runs until the
    /// runtime stops.
    pub fn follow(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tokens = Arc::clone(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                {
                    let hup = async {
                        match hangup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = hup => tracing::info!("SIGHUP: reading the token file again"),
                    }
                }
                #[cfg(not(unix))]
                tick.tick().await;
                if let Err(e) = tokens.reload() {
                    tracing::error!(error = %e, "the token file could not be read again; the previous tokens stay");
                }
            }
        })
    }

    /// Checks a call to `rpc` carrying `authorization`.
    pub fn check(&self, rpc: &str, authorization: Option<&[u8]>) -> Result<Caller, Status> {
        let header = authorization.ok_or_else(|| unauthenticated("missing", "no bearer token"))?;
        let token = header
            .strip_prefix(b"Bearer ")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthenticated(
                    "malformed",
                    "the authorization header is not `Bearer <token>`",
                )
            })?;
        let hash: [u8; 32] = Sha256::digest(token).into();
        let table = self.lock_read();
        let entry = table
            .1
            .get(&hash)
            .ok_or_else(|| unauthenticated("unknown", "the token is not accepted"))?;
        if let Some(expires_at) = entry.expires_at {
            if unix_now() >= expires_at {
                return Err(unauthenticated("expired", "the token has expired"));
            }
        }
        if !entry.caller.role.may_call(rpc) {
            return Err(role_denied(entry.caller.role, rpc));
        }
        Ok(entry.caller.clone())
    }
}

fn read(path: &Path) -> Result<String, TokenFileError> {
    std::fs::read_to_string(path).map_err(|error| TokenFileError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn parse(path: &Path, text: &str) -> Result<HashMap<[u8; 32], Entry>, TokenFileError> {
    let bad = |error: String| TokenFileError::Parse {
        path: path.display().to_string(),
        error,
    };
    let file: TokenFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut table = HashMap::with_capacity(file.tokens.len());
    for spec in file.tokens {
        let hash = decode_sha256(&spec.sha256).ok_or_else(|| {
            bad(format!(
                "token {:?}: sha256 must be 64 hex digits (the SHA-256 of the token)",
                spec.name
            ))
        })?;
        let entry = Entry {
            caller: Caller {
                name: Arc::from(spec.name.as_str()),
                role: spec.role,
            },
            expires_at: spec.expires_at,
        };
        if table.insert(hash, entry).is_some() {
            return Err(bad(format!("token {:?}: the same token twice", spec.name)));
        }
    }
    Ok(table)
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// The SHA-256 of `token`, in hex: what a token file holds.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unauthenticated(case: &str, message: &str) -> Status {
    imstore_proto::errors::status("UNAUTHENTICATED", message.to_owned(), [("case", case)])
}

fn role_denied(role: Role, rpc: &str) -> Status {
    imstore_proto::errors::status(
        "ROLE",
        format!("a {} token may not call {rpc}", role.name()),
        [("role", role.name()), ("rpc", rpc)],
    )
}

/// The tower layer that checks every `imstore.v1.Imstore` call against
/// [`Tokens`] (nothing when there are none) and puts its [`Caller`] in the
/// request's extensions.
pub type AuthLayer = CheckLayer<Arc<Tokens>>;

impl Check for Arc<Tokens> {
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &mut http::Extensions,
    ) -> Result<(), Status> {
        let Some(rpc) = path.strip_prefix(GUARDED) else {
            return Ok(());
        };
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        extensions.insert(self.check(rpc, authorization)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("tokens.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn roles_tokens_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "[[tokens]]\nname = \"gw\"\nsha256 = \"{}\"\nrole = \"service\"\n\
             [[tokens]]\nname = \"ro\"\nsha256 = \"{}\"\nrole = \"readonly\"\n\
             [[tokens]]\nname = \"old\"\nsha256 = \"{}\"\nrole = \"admin\"\nexpires_at = 1\n",
            token_sha256("s3cret"),
            token_sha256("reader"),
            token_sha256("stale"),
        );
        let tokens = Tokens::load(&file(dir.path(), &body)).unwrap();
        assert_eq!(tokens.len(), 3);
        let caller = tokens.check("Send", Some(b"Bearer s3cret")).unwrap();
        assert_eq!((&*caller.name, caller.role), ("gw", Role::Service));
        let case = |s: Status| {
            use tonic_types::StatusExt;
            let info = s.get_error_details().error_info().cloned().unwrap();
            (s.code(), info.reason, info.metadata.get("case").cloned())
        };
        assert_eq!(
            case(tokens.check("Send", None).unwrap_err()),
            (
                tonic::Code::Unauthenticated,
                "UNAUTHENTICATED".into(),
                Some("missing".into())
            )
        );
        assert_eq!(
            case(tokens.check("Send", Some(b"Basic abc")).unwrap_err()).2,
            Some("malformed".into())
        );
        assert_eq!(
            case(tokens.check("Send", Some(b"Bearer nope")).unwrap_err()).2,
            Some("unknown".into())
        );
        assert_eq!(
            case(tokens.check("Read", Some(b"Bearer stale")).unwrap_err()).2,
            Some("expired".into())
        );
        let denied = tokens.check("Send", Some(b"Bearer reader")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(tokens.check("Sync", Some(b"Bearer reader")).is_ok());
        assert!(tokens
            .check("ClearHistory", Some(b"Bearer s3cret"))
            .is_err());
    }

    #[test]
    fn a_bad_file_is_refused_and_a_bad_reload_keeps_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!(
            "[[tokens]]\nname = \"gw\"\nsha256 = \"{}\"\nrole = \"service\"\n",
            token_sha256("a")
        );
        let path = file(dir.path(), &good);
        let tokens = Tokens::load(&path).unwrap();
        for bad in [
            "[[tokens]]\nname = \"x\"\nsha256 = \"zz\"\nrole = \"service\"\n",
            "[[tokens]]\nname = \"x\"\nsha256 = \"00\"\nrole = \"root\"\n",
            "tokens = 3",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(tokens.reload().is_err(), "{bad}");
            assert!(Tokens::load(&path).is_err(), "{bad}");
            assert!(tokens.check("Send", Some(b"Bearer a")).is_ok());
        }
        assert!(matches!(
            Tokens::load(&dir.path().join("missing.toml")),
            Err(TokenFileError::Read { .. })
        ));
    }
}
