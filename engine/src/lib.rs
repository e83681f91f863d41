//! imstore-engine: durable, exactly-once conversation timelines for instant
//! messaging, embedded over RocksDB.
//!
//! **Owns:** the on-disk layout of timelines (segmented append-only lists of
//! CRC-framed records, see `docs/format.md`), seq assignment (1, 2, 3, … per
//! conversation, no gaps, no duplicates), client-retry deduplication, the
//! deterministic apply step, and the group-commit pipeline that makes every
//! acknowledged write durable with shared fsyncs. On top of the timelines,
//! the IM state (`docs/im.md`): direct and group conversations with
//! membership history, friends, per-user inboxes with hybrid fan-out and
//! device sync, read positions and read lists keyed by message id, unread
//! counts, the conversation list, recall/edit/delete-for-me overlays and
//! retention, all as [`Command`]s through the same apply step.
//!
//! A store holds many **shards** ([`Engine::with_shard`]; [`Engine::open`]
//! gives shard 0): independent sets of conversations, users and counters
//! under a key prefix, each what one raft group replicates, all committed
//! by one pipeline with shared fsyncs.
//!
//! **Is not:** a network server (that is `imstore-proxy`), a replicated log
//! (that is `imstore-raft`, which feeds committed commands through the same
//! apply step), or a cache of hot reads (the proxy's single-flight cache).
//! Only this crate and the raft log store touch RocksDB.
//!
//! **Limits:** one writer thread per open directory (the committer; a store
//! opened with `sync_writes` off also runs a WAL sync thread); a
//! payload is at most [`Options::max_payload_bytes`], a batch at most
//! [`Options::max_batch_messages`], a page at most
//! [`Options::max_page_messages`]. A retry is recognised as a duplicate for
//! [`Options::dedup_window_ms`] of server time (24 h by default). The
//! engine trusts its caller (the IM server) for identity and for admin
//! operations (clearing history, admin recalls); it enforces membership for
//! sends and reads, sender ownership for recalls and edits, and group
//! ownership for removals. Inboxes are never trimmed yet; the conversation
//! list and sync cost one state lookup per conversation of the user.
//!
//! ```
//! use imstore_engine::{Engine, NewMessage, Options};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), Options::default())?;
//! let hello = NewMessage {
//!     conversation: 42,
//!     sender: 7,
//!     client_msg_id: "phone-1".into(),
//!     payload: "hello".into(),
//!     timestamp_ms: 1_700_000_000_000,
//! };
//! assert_eq!(engine.append(hello.clone())?.seq, 1);
//! // A client retry gets the same seq back and writes nothing.
//! let retry = engine.append(hello)?;
//! assert!(retry.duplicate && retry.seq == 1);
//! assert_eq!(engine.latest(42, 50)?[0].payload, "hello");
//! # Ok(())
//! # }
//! ```
//!
//! The IM core: a group, a send fanned out to the members' inboxes, and a
//! member's device catching up with `sync` from its cursor.
//!
//! ```
//! use imstore_engine::{Command, Engine, Options, SendMessage, SyncCursor};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), Options::default())?;
//! let now = 1_700_000_000_000;
//! engine.execute(Command::CreateGroup {
//!     conversation: 7,
//!     owner: 1,
//!     members: vec![2, 3],
//!     timestamp_ms: now,
//! })?;
//! let sent = engine.send(SendMessage {
//!     conversation: 7,
//!     sender: 1,
//!     client_msg_id: "phone-1:1".into(),
//!     payload: "hi all".into(),
//!     timestamp_ms: now + 1,
//!     receipt: false,
//! })?;
//! assert_eq!((sent.seq, sent.duplicate), (1, false));
//!
//! // User 2's device syncs from the start: the message is in its inbox.
//! let page = engine.sync(2, SyncCursor::default(), 50)?;
//! let (_, view) = &page.messages[0];
//! assert_eq!((view.message.seq, &view.message.payload[..]), (1, &b"hi all"[..]));
//! // The next sync from the returned cursor has nothing new.
//! assert!(engine.sync(2, page.cursor, 50)?.messages.is_empty());
//! assert_eq!(engine.unread(2, 7)?, 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// Without `replication` the image and metadata plumbing has no caller.
#![cfg_attr(not(feature = "replication"), allow(dead_code))]

mod apply;
mod backup;
mod cf_options;
mod clean_close;
mod command;
mod commit;
mod disk;
mod engine;
mod error;
mod query;
mod read;
mod reader;
#[cfg(feature = "replication")]
pub mod replication;
mod store;
mod tail;
mod types;
mod verify;
mod wal_sync;

/// The record and segment codec. Public so the fuzz targets and the
/// benchmarks can exercise the decoder and the merge operator directly;
/// the engine's API never needs it.
#[doc(hidden)]
pub mod codec;
pub mod placement;

pub use crate::backup::{
    check_backup, restore_backup, staging_path, BackupInfo, CopyProgress, PartialBackup,
    BACKUP_MANIFEST,
};
pub use crate::clean_close::CLEAN_CLOSE_MARKER;
pub use crate::disk::{
    default_ballast_bytes, disk_space, release_ballast, DiskSpace, BALLAST_FILE,
    DEFAULT_BALLAST_MAX_BYTES, RESUME_HEADROOM_BYTES,
};
pub use crate::engine::blocks_read::BlockedUser;
pub use crate::engine::receipt_read::MAX_RECEIPT_MESSAGES;
pub use crate::engine::segment_pages::{PageParts, SealedMessages, MAX_CACHED_SEGMENTS};
pub use crate::engine::settings_read::{assemble_list, UserListPage};
pub use crate::engine::sync_read::{finish_sync, BigHead, UserSyncPage};
pub use crate::engine::view_read::{merge_list_pages, ListIndexPage};
pub use crate::engine::viewer_pages::{ViewerCut, ViewerPages, MAX_VIEWERS};
pub use crate::engine::Engine;
pub use crate::error::{refuse_orphaned_files, Entity, Error, Result, TimedAction};
pub use crate::placement::{pair_key, shard_for, shard_for_user};

/// For the raft log store, which opens a RocksDB of its own and guards it
/// as the engine guards its store: refuse a crashed database whose
/// write-ahead log is gone, and mark a clean close.
pub mod guard {
    pub use crate::clean_close::{check_before_open, closed_cleanly, opened};
}
pub use crate::codec::{ConversationSettings, MAX_PINNED, MAX_SETTINGS_VALUE_BYTES};
pub use crate::command::{Command, SettingsChange, MAX_REACTION_BYTES};
pub use crate::query::{ShardAnswer, ShardQuery, SyncFrom};
pub use crate::reader::Reader;
pub use crate::store::{ShardId, MAX_SHARD, WAL_RECOVERY_MODE};
pub use crate::types::{
    Advanced, Appended, CommitNotice, CommitStats, ConversationKind, ConversationSummary, CursorV1,
    Direction, Friend, FriendOutcome, FriendStatus, ListCursor, Member, Message, MessageView,
    NewMessage, Options, OutboxBacklog, Outcome, Reaction, ReceiptPage, Receipts, SegmentInfo,
    SendMessage, SyncCursor, SyncPage,
};
pub use crate::verify::{Damage, VerifyProgress, VerifyReport};
pub use bytes::Bytes;
