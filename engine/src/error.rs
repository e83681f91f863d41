use crate::codec::CodecError;

/// Everything that can go wrong in the engine. Callers branch on the
/// variant; the gRPC layer maps each one to a status code in one place.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A payload is larger than [`Options::max_payload_bytes`](crate::Options).
    /// Nothing was written.
    #[error("payload of {len} bytes is over the limit of {max}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A batch holds more messages than [`Options::max_batch_messages`](crate::Options).
    /// Nothing was written.
    #[error("batch of {len} messages is over the limit of {max}")]
    BatchTooLarge {
        /// Messages in the batch.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// An argument is malformed: an empty or over-long client message id,
    /// a zero page limit, an empty batch. Nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The named thing does not exist: an unknown conversation, a message
    /// cleared by retention, no pending friend request. Nothing was written.
    #[error("{what} {id} not found")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its id.
        id: u64,
    },
    /// A group with this id exists already. Nothing was written.
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// What kind of thing.
        what: &'static str,
        /// Its id.
        id: u64,
    },
    /// The acting user may not do this: not a member, not the sender, not
    /// the owner. Nothing was written.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request is well-formed but the state does not allow it: a plain
    /// append to a managed conversation, a recall after its window, an edit
    /// of a recalled message, a group over its member limit. Nothing was
    /// written.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A seq past the conversation's last one. Nothing was written.
    #[error("seq {seq} is beyond the last seq {last} of conversation {conversation}")]
    SeqBeyondLast {
        /// The conversation.
        conversation: u64,
        /// The seq asked for.
        seq: u64,
        /// The conversation's last seq.
        last: u64,
    },
    /// A sync cursor ahead of anything the store has given out: it was not
    /// made by this store (or the store was restored from an older copy).
    #[error("sync cursor is from the future: {0}")]
    CursorFromFuture(String),
    /// A conversation has used every seq a u64 can hold. Nothing was written.
    #[error("conversation {conversation} has no seq left")]
    SeqExhausted {
        /// The conversation.
        conversation: u64,
    },
    /// Stored bytes of one segment failed their check (CRC, framing, seq
    /// continuity). The conversation's other segments and every other
    /// conversation remain readable.
    #[error("corrupt segment {segment} of conversation {conversation}: {reason}")]
    Corruption {
        /// The conversation whose data is corrupt.
        conversation: u64,
        /// Base seq of the corrupt segment (its key's segment number).
        segment: u64,
        /// What check failed.
        reason: CodecError,
    },
    /// A stored value other than a segment (conversation state, dedup entry,
    /// format marker) failed to decode.
    #[error("corrupt {what}: {reason}")]
    CorruptMetadata {
        /// Which kind of value.
        what: &'static str,
        /// What check failed.
        reason: CodecError,
    },
    /// The data directory was written by a newer or unknown format version.
    /// It is left untouched.
    #[error("on-disk format version {found} is not supported (this build reads {supported})")]
    UnsupportedFormat {
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Another [`Engine`](crate::Engine) (in this or another process) has
    /// the directory open. Close it first; one directory has one owner.
    #[error("{0} is already open elsewhere")]
    DirectoryLocked(String),
    /// The directory holds a RocksDB database that imstore did not create.
    #[error("{0} is not an imstore data directory")]
    NotAnImstoreDirectory(String),
    /// RocksDB reported corruption of its own files (block checksum, bad
    /// SST or WAL); the message names the file.
    #[error("storage corruption: {0}")]
    StorageCorruption(String),
    /// The disk is full; the write was not acknowledged.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Any other RocksDB or IO failure. The write was not acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
    /// The engine is shutting down or its commit pipeline has stopped.
    #[error("engine is closed")]
    Closed,
    /// A replicated write reached a node that is not its shard's leader.
    /// Retryable at the leader, when one is known.
    #[error("not the leader{}", match (leader, address) {
        (Some(l), Some(a)) => format!("; the leader is node {l} at {a}"),
        (Some(l), None) => format!("; the leader is node {l}"),
        _ => "; no leader is known yet".to_owned(),
    })]
    NotLeader {
        /// The leader's node id, if known.
        leader: Option<u64>,
        /// The leader's address, if known.
        address: Option<String>,
    },
    /// An error raised by a replica's state machine, carried back by its
    /// stable reason code ([`Error::reason`]).
    #[error("{message}")]
    Remote {
        /// The reason code of the original error.
        reason: String,
        /// Its message.
        message: String,
    },
}

impl Error {
    /// A stable, machine-readable code for the error's kind: the `reason`
    /// of the gRPC `ErrorInfo`, and what a replicated error travels as.
    pub fn reason(&self) -> &str {
        match self {
            Error::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Error::BatchTooLarge { .. } => "BATCH_TOO_LARGE",
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound { .. } => "NOT_FOUND",
            Error::AlreadyExists { .. } => "ALREADY_EXISTS",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::FailedPrecondition(_) | Error::UnsupportedFormat { .. } => "FAILED_PRECONDITION",
            Error::SeqBeyondLast { .. } => "SEQ_BEYOND_LAST",
            Error::CursorFromFuture(_) => "CURSOR_FROM_FUTURE",
            Error::SeqExhausted { .. } => "SEQ_EXHAUSTED",
            Error::DiskFull(_) => "DISK_FULL",
            Error::Corruption { .. }
            | Error::CorruptMetadata { .. }
            | Error::StorageCorruption(_) => "CORRUPTION",
            Error::Closed => "UNAVAILABLE",
            Error::NotLeader { .. } => "NOT_LEADER",
            Error::DirectoryLocked(_) | Error::NotAnImstoreDirectory(_) | Error::Storage(_) => {
                "STORAGE"
            }
            Error::Remote { reason, .. } => reason,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rocksdb::Error> for Error {
    fn from(err: rocksdb::Error) -> Self {
        let text = err.into_string();
        match () {
            _ if text.starts_with("Corruption") => Error::StorageCorruption(text),
            _ if text.contains("No space left") || text.contains("NoSpace") => {
                Error::DiskFull(text)
            }
            _ => Error::Storage(text),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        if err.raw_os_error() == Some(28) {
            Error::DiskFull(err.to_string())
        } else {
            Error::Storage(err.to_string())
        }
    }
}
