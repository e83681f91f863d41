//! The replication layer's one error type, and how it crosses the node
//! transport intact.
//!
//! An engine error raised by a replica's state machine travels in the
//! answer's payload (bincode, as the rest of the payload); every other
//! failure of a transport RPC is a status built by [`Error::to_status`]:
//! the code and `ErrorInfo` of the client API's error model (reason and
//! metadata, `imstore_proto::errors`), plus the error itself, bincode in
//! the binary metadata entry [`ERROR_METADATA_KEY`], from which
//! [`Error::from_status`] rebuilds it on the other side. A status from a
//! peer of another version (no such entry) is rebuilt from its `ErrorInfo`
//! reason and metadata; nobody parses its text.

use imstore_proto::errors;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::EntryFormatError;

/// The binary gRPC metadata entry a transport status carries its error in.
pub const ERROR_METADATA_KEY: &str = "imstore-error-bin";

/// Everything the replication layer can fail with: an engine error from
/// the state machine, or a replication failure, each with what a caller
/// needs to retry it where it can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The engine refused or failed the command or read (its own typed
    /// error, unchanged by the hops it crossed).
    #[error(transparent)]
    Engine(#[from] imstore_engine::Error),
    /// The node does not lead the shard, so it did not propose the write
    /// (or confirm the read index). Retryable at the leader, when one is
    /// known.
    #[error("node {node} is not the leader of shard {shard}{}", match (leader, address) {
        (Some(l), Some(a)) => format!("; the leader is node {l} at {a}"),
        (Some(l), None) => format!("; the leader is node {l}"),
        _ => "; no leader is known yet".to_owned(),
    })]
    NotLeader {
        /// The shard.
        shard: u64,
        /// The node that refused.
        node: u64,
        /// The leader's node id, if known.
        leader: Option<u64>,
        /// The leader's address, if known.
        address: Option<String>,
    },
    /// The node holds no replica of the shard (or one that does not host
    /// its data). Another replica may answer.
    #[error("shard {shard} is not hosted on node {node}")]
    NotHosted {
        /// The shard.
        shard: u64,
        /// The node asked.
        node: u64,
    },
    /// A node, a leader or a quorum could not be reached or did not answer
    /// in time, or a replica is between states (installing a snapshot,
    /// being retired, shutting down). Retryable; a write whose answer was
    /// lost may still be applied (sends are deduplicated).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A peer's raft messages are in an entry format this build does not
    /// read: nothing of them was applied.
    #[error(transparent)]
    EntryFormat(#[from] EntryFormatError),
    /// The request is not one this node can act on (a malformed transport
    /// message, a membership change that names no node): nothing was done.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An administrative request the state does not allow: initializing
    /// an initialized group, fault injection on a node started without it.
    #[error("refused: {0}")]
    Refused(String),
    /// Raft itself failed (a fatal error of the group, an encoding that
    /// cannot be produced). Not retryable on this node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The `ErrorInfo` reason: the engine's for [`Error::Engine`], else
    /// the replication failure's (`NOT_LEADER`, `NOT_HOSTED`,
    /// `UNAVAILABLE`, `ENTRY_FORMAT`, `INVALID_ARGUMENT`,
    /// `FAILED_PRECONDITION`, `INTERNAL`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Engine(e) => e.reason(),
            Error::NotLeader { .. } => "NOT_LEADER",
            Error::NotHosted { .. } => "NOT_HOSTED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::EntryFormat(_) => "ENTRY_FORMAT",
            Error::InvalidRequest(_) => "INVALID_ARGUMENT",
            Error::Refused(_) => "FAILED_PRECONDITION",
            Error::Internal(_) => "INTERNAL",
        }
    }

    /// The `ErrorInfo` metadata: the engine's for [`Error::Engine`], else
    /// the numbers a caller retries with (`shard`, `node`, `leader_id`,
    /// `leader_address`).
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::Engine(e) => e.metadata(),
            Error::NotLeader {
                shard,
                node,
                leader,
                address,
            } => {
                let mut out = vec![
                    ("case", "not_leader".to_owned()),
                    ("shard", shard.to_string()),
                    ("node", node.to_string()),
                ];
                out.extend(leader.map(|l| ("leader_id", l.to_string())));
                out.extend(address.clone().map(|a| ("leader_address", a)));
                out
            }
            Error::NotHosted { shard, node } => vec![
                ("case", "not_hosted".to_owned()),
                ("shard", shard.to_string()),
                ("node", node.to_string()),
            ],
            Error::Unavailable(_) => vec![("case", "unavailable".to_owned())],
            Error::EntryFormat(_) => vec![("case", "entry_format".to_owned())],
            Error::InvalidRequest(_) => vec![("case", "invalid_request".to_owned())],
            Error::Refused(_) => vec![("case", "refused".to_owned())],
            Error::Internal(_) => vec![("case", "internal".to_owned())],
        }
    }

    /// Whether another node (the leader, another replica) may succeed
    /// where this one refused before doing anything.
    pub fn is_refused_up_front(&self) -> bool {
        matches!(self, Error::NotLeader { .. } | Error::NotHosted { .. })
    }

    /// The status a transport RPC answers this error with: the client
    /// API's code and `ErrorInfo`, and the error itself in
    /// [`ERROR_METADATA_KEY`].
    pub fn to_status(&self) -> Status {
        let mut status = errors::status(self.reason(), self.to_string(), self.metadata());
        if let Ok(bytes) = bincode::serialize(self) {
            status
                .metadata_mut()
                .insert_bin(ERROR_METADATA_KEY, MetadataValue::from_bytes(&bytes));
        }
        status
    }

    /// The error a peer's status stands for: the one it carries in
    /// [`ERROR_METADATA_KEY`], else one rebuilt from its `ErrorInfo`, else
    /// (a status of the gRPC layer itself: a connection refused, a
    /// deadline) [`Error::Unavailable`] or [`Error::Internal`] by its code.
    pub fn from_status(status: &Status) -> Error {
        if let Some(value) = status.metadata().get_bin(ERROR_METADATA_KEY) {
            if let Ok(bytes) = value.to_bytes() {
                if let Ok(error) = bincode::deserialize::<Error>(&bytes) {
                    return error;
                }
            }
        }
        let message = status.message().to_owned();
        if let Some((reason, metadata)) = errors::error_info(status) {
            let number = |key| errors::metadata_u64(&metadata, key);
            match reason.as_str() {
                "NOT_LEADER" => {
                    return Error::NotLeader {
                        shard: number("shard").unwrap_or_default(),
                        node: number("node").unwrap_or_default(),
                        leader: number("leader_id"),
                        address: metadata.get("leader_address").cloned(),
                    }
                }
                "NOT_HOSTED" => {
                    return Error::NotHosted {
                        shard: number("shard").unwrap_or_default(),
                        node: number("node").unwrap_or_default(),
                    }
                }
                "INVALID_ARGUMENT" => return Error::InvalidRequest(message),
                "FAILED_PRECONDITION" => return Error::Refused(message),
                "INTERNAL" => return Error::Internal(message),
                _ => {}
            }
        }
        match status.code() {
            Code::Internal | Code::Unimplemented | Code::DataLoss => Error::Internal(message),
            _ => Error::Unavailable(format!("{:?}: {message}", status.code())),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Error {
        Error::Engine(imstore_engine::Error::from(err))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        error.to_status()
    }
}

/// The replication layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_crosses_a_status_intact() {
        let errors = [
            Error::Engine(imstore_engine::Error::AlreadyExists {
                what: imstore_engine::Entity::Conversation,
                id: 7,
            }),
            Error::Engine(imstore_engine::Error::GroupFull {
                conversation: 3,
                members: 9,
                max: 8,
            }),
            Error::NotLeader {
                shard: 2,
                node: 1,
                leader: Some(3),
                address: Some("127.0.0.1:1".into()),
            },
            Error::NotHosted { shard: 4, node: 2 },
            Error::Unavailable("x".into()),
            Error::InvalidRequest("y".into()),
            Error::Refused("z".into()),
            Error::Internal("w".into()),
        ];
        for error in errors {
            let status = error.to_status();
            assert_eq!(
                errors::error_info(&status).map(|(r, _)| r).as_deref(),
                Some(error.reason())
            );
            assert_eq!(Error::from_status(&status), error);
        }
    }

    #[test]
    fn a_status_without_the_binary_entry_is_rebuilt_from_its_error_info() {
        let error = Error::NotLeader {
            shard: 2,
            node: 1,
            leader: Some(3),
            address: Some("127.0.0.1:1".into()),
        };
        let status = errors::status(error.reason(), error.to_string(), error.metadata());
        assert_eq!(Error::from_status(&status), error);
        let plain = Status::unavailable("connection refused");
        assert!(matches!(Error::from_status(&plain), Error::Unavailable(_)));
    }
}
