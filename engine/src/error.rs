use std::borrow::Cow;

use crate::codec::CodecError;

/// What a [`Error::NotFound`] or [`Error::AlreadyExists`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Entity {
    /// A conversation (plain timeline, direct conversation or group).
    Conversation,
    /// A message, by its seq (or one cleared by retention).
    Message,
    /// A friendship, by the other user's id.
    Friend,
    /// A pending friend request, by the requesting user's id.
    FriendRequest,
}

impl Entity {
    /// The entity's name in messages and in the gRPC `ErrorInfo`'s
    /// `what` metadata.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Conversation => "conversation",
            Entity::Message => "message",
            Entity::Friend => "friend",
            Entity::FriendRequest => "friend request from user",
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The timed operations on a sent message, whose window can close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum TimedAction {
    /// Recalling a message for everyone.
    Recall,
    /// Editing a message's payload.
    Edit,
}

impl std::fmt::Display for TimedAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimedAction::Recall => "recall",
            TimedAction::Edit => "edit",
        })
    }
}

/// Everything that can go wrong in the engine. Callers branch on the
/// variant: each names its domain case and carries the numbers a caller
/// needs. With the `serde` feature every error serializes, so that it
/// crosses a process or a replication hop intact. The gRPC layer maps each
/// [`Error::reason`] to a status code in one place
/// (`imstore_proto::errors`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
        what: Entity,
        /// Its id.
        id: u64,
    },
    /// A group with this id exists already. Nothing was written.
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// What kind of thing.
        what: Entity,
        /// Its id.
        id: u64,
    },
    /// The acting user is not (or was never) a member of the conversation.
    /// Nothing was written.
    #[error("user {user} is not a member of conversation {conversation}")]
    NotAMember {
        /// The conversation.
        conversation: u64,
        /// The acting user.
        user: u64,
    },
    /// Only a message's sender may recall or edit it. Nothing was written.
    #[error("user {user} did not send message {seq} of conversation {conversation}")]
    NotTheSender {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// The acting user.
        user: u64,
    },
    /// Only the group's owner may do this (remove another member).
    /// Nothing was written.
    #[error("only the owner {owner} of conversation {conversation} may do this, not user {user}")]
    NotTheOwner {
        /// The conversation.
        conversation: u64,
        /// The acting user.
        user: u64,
        /// The group's owner.
        owner: u64,
    },
    /// The message is outside what the acting user sees of the
    /// conversation (from before their join or after their leave).
    /// Nothing was written.
    #[error("user {user} does not see message {seq} of conversation {conversation}")]
    NotVisible {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// The acting user.
        user: u64,
    },
    /// A group would have more members than
    /// [`Options::max_group_members`](crate::Options). Nothing was written.
    #[error("{members} members is over the group limit of {max}")]
    GroupFull {
        /// The conversation.
        conversation: u64,
        /// Members it would have.
        members: u64,
        /// The configured limit.
        max: u64,
    },
    /// A direct conversation's two members are fixed. Nothing was written.
    #[error("conversation {conversation} is a direct conversation; its members are fixed")]
    MembersFixed {
        /// The conversation.
        conversation: u64,
    },
    /// The message was recalled; it can no longer be edited. Nothing was
    /// written.
    #[error("message {seq} of conversation {conversation} was recalled")]
    AlreadyRecalled {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
    },
    /// The recall or edit window of a message has closed. Nothing was
    /// written.
    #[error("the {action} window of message {seq} of conversation {conversation} closed at {deadline_ms} ms")]
    WindowClosed {
        /// What was attempted.
        action: TimedAction,
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// When the window closed (server time, ms since the epoch).
        deadline_ms: u64,
    },
    /// A plain append to a direct or group conversation, whose messages go
    /// through `send`. Nothing was written.
    #[error(
        "conversation {conversation} is a direct or group conversation: send to it, do not append"
    )]
    ManagedConversation {
        /// The conversation.
        conversation: u64,
    },
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
    /// A sync cursor (or a watch's change counter) ahead of anything the
    /// store has given out: it was not made by this store, or the store
    /// was restored from an older copy.
    #[error("cursor (change {change}{}) is past the store's (change {store_change}{})",
        inbox_seq.map(|s| format!(", inbox {s}")).unwrap_or_default(),
        store_inbox_seq.map(|s| format!(", inbox {s}")).unwrap_or_default())]
    CursorFromFuture {
        /// The cursor's change counter.
        change: u64,
        /// The store's change counter.
        store_change: u64,
        /// The cursor's inbox position (a sync cursor's).
        inbox_seq: Option<u64>,
        /// The store's inbox position for the user (with `inbox_seq`).
        store_inbox_seq: Option<u64>,
    },
    /// A [`Command::Deliver`](crate::Command::Deliver) skipped outbox
    /// records: shard `from`'s records reach a shard strictly in order, so
    /// this means a lost record or a bug. Nothing was written; the drain
    /// retries from the record the destination expects.
    #[error("delivery from shard {from} starts at outbox record {found}, but the next one expected is {expected}")]
    DeliveryGap {
        /// The source shard.
        from: u64,
        /// The outbox seq the destination expects next.
        expected: u64,
        /// The first outbox seq delivered.
        found: u64,
    },
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
    /// format marker) failed to decode (`corrupt_metadata`).
    #[error("corrupt {what}: {reason}")]
    CorruptMetadata {
        /// Which kind of value.
        what: Cow<'static, str>,
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
    /// RocksDB reported corruption of its own files: a block checksum in a
    /// table file (SST), a damaged write-ahead log record, a bad MANIFEST,
    /// a missing or truncated file. At open, the store refuses to start and
    /// leaves every file in place; on a read, only the conversations whose
    /// data sits in the damaged block fail. `docs/format.md` lists what
    /// each kind of damage gives.
    #[error("storage corruption{}{}: {message}",
        file.as_ref().map(|f| format!(" in {f}")).unwrap_or_default(),
        conversation.map(|c| format!(" (conversation {c}{})",
            segment.map(|s| format!(", segment {s}")).unwrap_or_default())).unwrap_or_default())]
    StorageCorruption {
        /// The damaged file, when known (RocksDB names table files; a
        /// refused open names the write-ahead logs or MANIFEST it read).
        file: Option<String>,
        /// The conversation whose read met the damage, when known.
        conversation: Option<u64>,
        /// The segment (its base seq) being read, when known.
        segment: Option<u64>,
        /// RocksDB's description.
        message: String,
    },
    /// The disk is full; the write was not acknowledged. Writes resume by
    /// themselves once enough space is free (RocksDB checks every few
    /// seconds); releasing the ballast file gives that room at once.
    #[error("disk full: {message}{}", match (free_bytes, needed_bytes) {
        (Some(f), Some(n)) => format!(" ({f} bytes free on the data volume; writes resume once {n} are free)"),
        (Some(f), None) => format!(" ({f} bytes free on the data volume)"),
        _ => String::new(),
    })]
    DiskFull {
        /// What failed.
        message: String,
        /// Free bytes on the data volume when the error was raised, when known.
        free_bytes: Option<u64>,
        /// Free bytes RocksDB waits for before it resumes writes, when known.
        needed_bytes: Option<u64>,
    },
    /// A backup is damaged or incomplete: its manifest is missing or fails
    /// its checksum, or a file it lists is missing, of another size, or
    /// fails its CRC32. Nothing was restored.
    #[error("backup {path} cannot be used: {reason}")]
    DamagedBackup {
        /// The backup directory.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other RocksDB or IO failure. The write was not acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
    /// The engine is shutting down or its commit pipeline has stopped.
    #[error("engine is closed")]
    Closed,
    /// `by` blocks `user`: `user`'s sends to their direct conversation
    /// and friend requests to `by` are refused. Nothing was written.
    #[error("user {by} blocks user {user}")]
    Blocked {
        /// The acting user.
        user: u64,
        /// The user who blocks them.
        by: u64,
    },
}

impl Error {
    /// A stable, machine-readable code for the error's kind: the `reason`
    /// of the gRPC `ErrorInfo`. Several variants share a reason (the
    /// proto's list); [`Error::metadata`] tells them apart.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Error::BatchTooLarge { .. } => "BATCH_TOO_LARGE",
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound { .. } => "NOT_FOUND",
            Error::AlreadyExists { .. } => "ALREADY_EXISTS",
            Error::NotAMember { .. }
            | Error::NotTheSender { .. }
            | Error::NotTheOwner { .. }
            | Error::NotVisible { .. } => "PERMISSION_DENIED",
            Error::GroupFull { .. }
            | Error::MembersFixed { .. }
            | Error::AlreadyRecalled { .. }
            | Error::WindowClosed { .. }
            | Error::ManagedConversation { .. }
            | Error::DeliveryGap { .. }
            | Error::UnsupportedFormat { .. } => "FAILED_PRECONDITION",
            Error::SeqBeyondLast { .. } => "SEQ_BEYOND_LAST",
            Error::CursorFromFuture { .. } => "CURSOR_FROM_FUTURE",
            Error::SeqExhausted { .. } => "SEQ_EXHAUSTED",
            Error::DiskFull { .. } => "DISK_FULL",
            Error::Corruption { .. }
            | Error::CorruptMetadata { .. }
            | Error::StorageCorruption { .. }
            | Error::DamagedBackup { .. } => "CORRUPTION",
            Error::Closed => "UNAVAILABLE",
            Error::Blocked { .. } => "BLOCKED",
            Error::DirectoryLocked(_) | Error::NotAnImstoreDirectory(_) | Error::Storage(_) => {
                "STORAGE"
            }
        }
    }

    /// The name of the domain case, in snake case (`not_a_member`,
    /// `window_closed`): the `case` of the gRPC `ErrorInfo`'s metadata,
    /// which tells apart the variants that share a [`Error::reason`].
    pub fn case(&self) -> &'static str {
        match self {
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::BatchTooLarge { .. } => "batch_too_large",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::NotAMember { .. } => "not_a_member",
            Error::NotTheSender { .. } => "not_the_sender",
            Error::NotTheOwner { .. } => "not_the_owner",
            Error::NotVisible { .. } => "not_visible",
            Error::GroupFull { .. } => "group_full",
            Error::MembersFixed { .. } => "members_fixed",
            Error::AlreadyRecalled { .. } => "already_recalled",
            Error::WindowClosed { .. } => "window_closed",
            Error::ManagedConversation { .. } => "managed_conversation",
            Error::UnsupportedFormat { .. } => "unsupported_format",
            Error::SeqBeyondLast { .. } => "seq_beyond_last",
            Error::CursorFromFuture { .. } => "cursor_from_future",
            Error::SeqExhausted { .. } => "seq_exhausted",
            Error::DeliveryGap { .. } => "delivery_gap",
            Error::DiskFull { .. } => "disk_full",
            Error::Corruption { .. } => "corrupt_segment",
            Error::CorruptMetadata { .. } => "corrupt_value",
            Error::StorageCorruption { .. } => "storage_corruption",
            Error::DamagedBackup { .. } => "damaged_backup",
            Error::Closed => "closed",
            Error::Blocked { .. } => "blocked",
            Error::DirectoryLocked(_) => "directory_locked",
            Error::NotAnImstoreDirectory(_) => "not_an_imstore_directory",
            Error::Storage(_) => "storage",
        }
    }

    /// The numbers and names a caller needs, as `ErrorInfo` metadata: the
    /// variant's fields under the names `docs/server.md` lists (`case`
    /// always among them).
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("case", self.case().to_owned())];
        let mut put = |key: &'static str, value: u64| out.push((key, value.to_string()));
        match self {
            Error::PayloadTooLarge { len, max } | Error::BatchTooLarge { len, max } => {
                put("len", *len as u64);
                put("max", *max as u64);
            }
            Error::NotFound { id, .. } | Error::AlreadyExists { id, .. } => put("id", *id),
            Error::NotAMember { conversation, user } => {
                put("conversation", *conversation);
                put("user", *user);
            }
            Error::Blocked { user, by } => {
                put("user", *user);
                put("by", *by);
            }
            Error::NotTheSender {
                conversation,
                seq,
                user,
            }
            | Error::NotVisible {
                conversation,
                seq,
                user,
            } => {
                put("conversation", *conversation);
                put("seq", *seq);
                put("user", *user);
            }
            Error::NotTheOwner {
                conversation,
                user,
                owner,
            } => {
                put("conversation", *conversation);
                put("user", *user);
                put("owner", *owner);
            }
            Error::GroupFull {
                conversation,
                members,
                max,
            } => {
                put("conversation", *conversation);
                put("members", *members);
                put("max", *max);
            }
            Error::MembersFixed { conversation }
            | Error::ManagedConversation { conversation }
            | Error::SeqExhausted { conversation } => put("conversation", *conversation),
            Error::AlreadyRecalled { conversation, seq } => {
                put("conversation", *conversation);
                put("seq", *seq);
            }
            Error::WindowClosed {
                conversation,
                seq,
                deadline_ms,
                ..
            } => {
                put("conversation", *conversation);
                put("seq", *seq);
                put("deadline_ms", *deadline_ms);
            }
            Error::DeliveryGap {
                from,
                expected,
                found,
            } => {
                put("from", *from);
                put("expected", *expected);
                put("found", *found);
            }
            Error::UnsupportedFormat { found, supported } => {
                put("found", u64::from(*found));
                put("supported", u64::from(*supported));
            }
            Error::SeqBeyondLast {
                conversation,
                seq,
                last,
            } => {
                put("conversation", *conversation);
                put("seq", *seq);
                put("last_seq", *last);
            }
            Error::CursorFromFuture {
                change,
                store_change,
                inbox_seq,
                store_inbox_seq,
            } => {
                put("change", *change);
                put("store_change", *store_change);
                if let (Some(seq), Some(store)) = (inbox_seq, store_inbox_seq) {
                    put("inbox_seq", *seq);
                    put("store_inbox_seq", *store);
                }
            }
            Error::Corruption {
                conversation,
                segment,
                ..
            } => {
                put("conversation", *conversation);
                put("segment", *segment);
            }
            Error::StorageCorruption {
                conversation,
                segment,
                ..
            } => {
                if let Some(c) = conversation {
                    put("conversation", *c);
                }
                if let Some(s) = segment {
                    put("segment", *s);
                }
            }
            Error::DiskFull {
                free_bytes,
                needed_bytes,
                ..
            } => {
                if let Some(f) = free_bytes {
                    put("free_bytes", *f);
                }
                if let Some(n) = needed_bytes {
                    put("needed_bytes", *n);
                }
            }
            _ => {}
        }
        match self {
            Error::NotFound { what, .. } | Error::AlreadyExists { what, .. } => {
                out.push(("what", what.name().to_owned()))
            }
            Error::WindowClosed { action, .. } => out.push(("action", action.to_string())),
            Error::StorageCorruption {
                file: Some(file), ..
            } => out.push(("file", file.clone())),
            _ => {}
        }
        out
    }

    /// A storage error met while reading `conversation` (at `segment`,
    /// when known): corruption reported by RocksDB gains that context so
    /// that callers learn which conversation is damaged. Other errors pass
    /// through unchanged.
    pub(crate) fn in_conversation(self, conversation: u64, segment: Option<u64>) -> Error {
        match self {
            Error::StorageCorruption {
                file,
                conversation: None,
                segment: old_segment,
                message,
            } => Error::StorageCorruption {
                file,
                conversation: Some(conversation),
                segment: old_segment.or(segment),
                message,
            },
            other => other,
        }
    }

    /// The error of a RocksDB that failed to open at `path`: another
    /// handle holding its lock is [`Error::DirectoryLocked`]; a corruption
    /// gets the files it most likely concerns (those RocksDB named, else
    /// the write-ahead logs and MANIFEST it replays). Public for the raft
    /// log store, which opens a RocksDB of its own.
    pub fn opening(err: rocksdb::Error, path: &std::path::Path) -> Error {
        let text = err.clone().into_string();
        // RocksDB's LOCK file: another handle owns the directory.
        if text.contains("lock") && text.contains("LOCK") {
            return Error::DirectoryLocked(path.display().to_string());
        }
        Error::from(err).at_open(path)
    }

    fn at_open(self, path: &std::path::Path) -> Error {
        match self {
            Error::StorageCorruption {
                file: None,
                conversation,
                segment,
                message,
            } => Error::StorageCorruption {
                file: recovery_files(path),
                conversation,
                segment,
                message,
            },
            other => other,
        }
    }
}

/// The write-ahead logs and MANIFEST of a RocksDB directory, which an open
/// replays: the files a corruption found at open concerns when RocksDB
/// names none.
fn recovery_files(path: &std::path::Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log") || n.starts_with("MANIFEST-"))
        .collect();
    names.sort();
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|n| path.join(n).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The file a RocksDB message names, if any: a table file, a log, a MANIFEST.
fn named_file(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ':' || c == '\'' || c == '"')
        .find(|word| {
            let name = word.rsplit('/').next().unwrap_or(word);
            name.ends_with(".sst")
                || name.ends_with(".log")
                || name.ends_with(".blob")
                || name.starts_with("MANIFEST-")
        })
        .map(str::to_owned)
}

/// Refuses a directory that holds a RocksDB database's files but no
/// `CURRENT` file: opening it with `create_if_missing` would start an empty
/// database over the old files (and RocksDB would then delete them as
/// obsolete). Public for the raft log store.
pub fn refuse_orphaned_files(path: &std::path::Path) -> Result<()> {
    if path.join("CURRENT").exists() {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Ok(());
    };
    let found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".sst")
                || n.ends_with(".log")
                || n.starts_with("MANIFEST-")
                || n.starts_with("OPTIONS-")
        })
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::StorageCorruption {
        file: Some(path.join("CURRENT").display().to_string()),
        conversation: None,
        segment: None,
        message: format!(
            "CURRENT is missing, though the directory holds {} database files ({}, …)",
            found.len(),
            found[0]
        ),
    })
}

impl From<rocksdb::Error> for Error {
    fn from(err: rocksdb::Error) -> Self {
        let text = err.into_string();
        // A file the database's MANIFEST lists is gone: as much damage as
        // a bad checksum, and RocksDB reports it as an IO error.
        let missing = text.starts_with("IO error: No such file") && named_file(&text).is_some();
        if text.starts_with("Corruption") || missing {
            return Error::StorageCorruption {
                file: named_file(&text),
                conversation: None,
                segment: None,
                message: text,
            };
        }
        if text.contains("No space left") || text.contains("NoSpace") {
            return Error::DiskFull {
                message: text,
                free_bytes: None,
                needed_bytes: None,
            };
        }
        Error::Storage(text)
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        if err.raw_os_error() == Some(28) {
            Error::DiskFull {
                message: err.to_string(),
                free_bytes: None,
                needed_bytes: None,
            }
        } else {
            Error::Storage(err.to_string())
        }
    }
}

/// Turns a decoding failure of a stored `what` (not a segment) into
/// [`Error::CorruptMetadata`]: the one mapping every reader and the apply
/// step use.
pub(crate) fn corrupt_metadata(what: &'static str) -> impl Fn(CodecError) -> Error {
    move |reason| Error::CorruptMetadata {
        what: what.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::named_file;

    #[test]
    fn the_file_rocksdb_names_is_found() {
        assert_eq!(
            named_file("Corruption: block checksum mismatch: stored = 1, computed = 2 in /d/000012.sst offset 0 size 4096").as_deref(),
            Some("/d/000012.sst")
        );
        assert_eq!(
            named_file(
                "Corruption: Corrupt or unsupported format_version: 9 in /x/MANIFEST-000005"
            )
            .as_deref(),
            Some("/x/MANIFEST-000005")
        );
        assert_eq!(named_file("Corruption: checksum mismatch"), None);
    }
}
