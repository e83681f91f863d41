use bytes::Bytes;

/// Tuning and limits of an [`Engine`](crate::Engine). `Options::default()`
/// is durable and is what the benchmarks in `docs/benchmarks.md` measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// A segment is sealed once it holds this many records. Default 64,
    /// chosen by the `segment_capacity` bench (see `docs/benchmarks.md`).
    pub segment_max_records: u32,
    /// A segment is sealed before a record would take it past this many
    /// framed bytes (a single larger record gets a segment of its own).
    /// Default 32 KiB.
    pub segment_max_bytes: u32,
    /// Largest payload accepted, in bytes. Default 64 KiB.
    pub max_payload_bytes: usize,
    /// Longest client message id accepted, in bytes. Default 128.
    pub max_client_msg_id_bytes: usize,
    /// Most messages in one batch append. Default 1,000.
    pub max_batch_messages: usize,
    /// Most messages one read returns. Default 10,000.
    pub max_page_messages: usize,
    /// How long, in server-time milliseconds, a retried send is recognised
    /// as a duplicate. Default 24 hours. A retry later than this appends a
    /// new message.
    pub dedup_window_ms: u64,
    /// Extra time an expired dedup entry is kept on disk before compaction
    /// may drop it, so a replayed command never sees a different answer.
    /// Default 24 hours.
    pub dedup_gc_grace_ms: u64,
    /// fsync the WAL before acknowledging a write. Default `true`; turning
    /// it off makes an acknowledged write survive a process crash but not a
    /// power loss or kernel crash.
    pub sync_writes: bool,
    /// With `sync_writes` off: a background thread fsyncs the WAL this
    /// often (in milliseconds) when something was written since its last
    /// sync, so a power loss takes at most about this much, and an explicit
    /// [`Engine::make_durable`](crate::Engine::make_durable) finds little
    /// left to write (a raft replica calls it at every snapshot point,
    /// where one fsync of everything since the last point stalled appends;
    /// see `docs/benchmarks.md`). Default 50; 0 turns the thread off.
    /// Unused when `sync_writes` is on.
    pub wal_sync_interval_ms: u64,
    /// Most commands the commit pipeline gathers into one write. Default 4,096.
    pub max_group_commands: usize,
    /// Conversation states the committer keeps in memory. Default 100,000.
    pub conversation_cache_entries: usize,
    /// RocksDB block cache shared by all column families. Default 256 MiB.
    pub block_cache_bytes: usize,
    /// Memory for the tail cache: the newest messages of recently written
    /// or read conversations, which serves latest-page reads and pulls near
    /// the end of a timeline without touching RocksDB. Default 64 MiB;
    /// 0 turns it off.
    pub tail_cache_bytes: usize,
    /// Newest messages the tail cache keeps per conversation. Default 128.
    pub tail_cache_records: usize,
    /// The fan-out threshold T: a message to a conversation with at most
    /// this many members is also written to every member's inbox (write
    /// fan-out); above it, only to the conversation (read fan-out), and
    /// sync reports the conversation as advanced. Default 500, the size of
    /// the seeds' typical active group (average 320): at most 500 small
    /// inbox writes per message. Must be the same on every replica.
    pub fanout_max_members: u32,
    /// Groups with at most this many members keep a read list for every
    /// message. Above it, only messages sent with `receipt: true` get one;
    /// the rest answer receipt queries from members' read positions.
    /// Default 500. Must be the same on every replica.
    pub receipt_list_max_members: u32,
    /// How long after sending the sender may recall a message (an admin
    /// recall has no limit). Default 2 minutes.
    pub recall_window_ms: u64,
    /// How long after sending the sender may edit a message. Default 24 h.
    pub edit_window_ms: u64,
    /// Most members a group may have. Default 100,000.
    pub max_group_members: u32,
    /// Most users one create/add/remove command may name. Default 10,000.
    pub max_users_per_command: usize,
    /// Longest device id accepted, in bytes. Default 64.
    pub max_device_id_bytes: usize,
    /// The cluster's shard count, for placement: a pair's direct
    /// conversation gets an id in the pair's shard
    /// ([`shard_for`](crate::shard_for)). Default 1 (one store); it must
    /// never change for a store, like the shard count itself.
    pub placement_shards: u64,
    /// Size of the emergency ballast file kept in the data directory
    /// (see [`release_ballast`](crate::release_ballast)): `None` for the
    /// default, 1% of the volume and at most 256 MiB; `Some(0)` for none.
    pub ballast_bytes: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_max_records: 64,
            segment_max_bytes: 32 * 1024,
            max_payload_bytes: 64 * 1024,
            max_client_msg_id_bytes: 128,
            max_batch_messages: 1_000,
            max_page_messages: 10_000,
            dedup_window_ms: 24 * 3600 * 1000,
            dedup_gc_grace_ms: 24 * 3600 * 1000,
            sync_writes: true,
            wal_sync_interval_ms: 50,
            max_group_commands: 4_096,
            conversation_cache_entries: 100_000,
            block_cache_bytes: 256 << 20,
            tail_cache_bytes: 64 << 20,
            tail_cache_records: 128,
            fanout_max_members: 500,
            receipt_list_max_members: 500,
            recall_window_ms: 2 * 60 * 1000,
            edit_window_ms: 24 * 3600 * 1000,
            max_group_members: 100_000,
            max_users_per_command: 10_000,
            max_device_id_bytes: 64,
            placement_shards: 1,
            ballast_bytes: None,
        }
    }
}

impl Command {
    /// The one conversation this command writes, when it writes one (an
    /// append batch over several conversations writes none in particular):
    /// where a sharded node places it, and what a storage error met while
    /// applying it names.
    pub fn conversation(&self) -> Option<u64> {
        match self {
            Command::Append(messages) => {
                let first = messages.first()?.conversation;
                messages
                    .iter()
                    .all(|m| m.conversation == first)
                    .then_some(first)
            }
            Command::Send(m) => Some(m.conversation),
            Command::CreateGroup { conversation, .. }
            | Command::AddMembers { conversation, .. }
            | Command::RemoveMembers { conversation, .. }
            | Command::MarkRead { conversation, .. }
            | Command::Recall { conversation, .. }
            | Command::Edit { conversation, .. }
            | Command::DeleteForMe { conversation, .. }
            | Command::ClearHistory { conversation, .. }
            | Command::SetRetention { conversation, .. } => Some(*conversation),
            _ => None,
        }
    }

    /// Whether it writes a store image (a snapshot install): such a
    /// command is committed in a group of its own.
    pub(crate) fn installs_image(&self) -> bool {
        #[cfg(feature = "replication")]
        if matches!(
            self,
            Command::ReplaceState(_) | Command::AddImageRows { .. }
        ) {
            return true;
        }
        false
    }

    /// Whether it completes a store image: its write is always synced.
    pub(crate) fn completes_image(&self) -> bool {
        #[cfg(feature = "replication")]
        if matches!(
            self,
            Command::ReplaceState(_) | Command::AddImageRows { complete: true, .. }
        ) {
            return true;
        }
        false
    }
}

/// A message to append.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The conversation it goes to.
    pub conversation: u64,
    /// The sending user.
    pub sender: u64,
    /// The sender's own id for this message, 1 to
    /// [`Options::max_client_msg_id_bytes`] bytes. Sending the same
    /// (conversation, sender, client id) again is recognised as a retry.
    pub client_msg_id: Bytes,
    /// The message body; the engine never looks inside.
    pub payload: Bytes,
    /// Server time in milliseconds since the Unix epoch, chosen by the
    /// caller (the leader, in a cluster) so that applying is deterministic.
    pub timestamp_ms: u64,
}

/// The result of appending one message.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's seq in its conversation.
    pub seq: u64,
    /// `true` when this was a retry of an earlier send: `seq` is the
    /// original one and nothing was written.
    pub duplicate: bool,
}

/// A stored message as read back.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The conversation.
    pub conversation: u64,
    /// Its seq, 1-based and continuous per conversation.
    pub seq: u64,
    /// The sending user.
    pub sender: u64,
    /// Server time in milliseconds, as given at append.
    pub timestamp_ms: u64,
    /// The sender's client message id.
    pub client_msg_id: Bytes,
    /// The body.
    pub payload: Bytes,
}

/// Which end of a range a read starts from.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From `from` upwards: `from, from + 1, …`.
    Forward,
    /// From `from` downwards: `…, from - 1, from`. Results are still
    /// returned in ascending seq order.
    Backward,
}

/// One segment of a conversation, as listed by
/// [`Engine::segments`](crate::Engine::segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Seq of its first record; the segment number in its key.
    pub base_seq: u64,
    /// Records it holds.
    pub records: u32,
    /// Its size in bytes, framing included.
    pub bytes: u32,
}

/// A write the engine applies atomically: the unit the commit pipeline
/// gathers, and the unit a raft log entry will carry.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Append these messages to plain timelines, in order, in one atomic
    /// write. Any number of conversations may appear; if one message is
    /// rejected, none is written. Direct and group conversations refuse it
    /// ([`Error::FailedPrecondition`](crate::Error::FailedPrecondition)):
    /// they take [`Command::Send`].
    Append(Vec<NewMessage>),
    /// Send one message to a direct or group conversation as a member:
    /// appended to the timeline, fanned out to inboxes at or below the
    /// fan-out threshold, and the sender's read position moved to it.
    Send(SendMessage),
    /// Create a group with `owner` and `members` (the owner is added if
    /// missing). Group ids must have the top bit clear.
    CreateGroup {
        /// The new group's id, chosen by the caller.
        conversation: u64,
        /// The creator; the only user who may remove others.
        owner: u64,
        /// The first members.
        members: Vec<u64>,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Find or create the direct conversation of two distinct users.
    OpenDirect {
        /// One user.
        user: u64,
        /// The other.
        peer: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Add users to a group; `by` must be a member. Users already in it are
    /// left as they are.
    AddMembers {
        /// The group.
        conversation: u64,
        /// Who adds them.
        by: u64,
        /// The users to add.
        users: Vec<u64>,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Remove users from a group: the owner may remove anyone, a member
    /// only themself. Users not in it are left as they are.
    RemoveMembers {
        /// The group.
        conversation: u64,
        /// Who removes them.
        by: u64,
        /// The users to remove.
        users: Vec<u64>,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `from` asks `to` to be friends. Repeating it changes nothing; if `to`
    /// had already asked `from`, they become friends.
    FriendRequest {
        /// The asking user.
        from: u64,
        /// The asked user.
        to: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `user` accepts `requester`'s request; the pair's direct conversation
    /// is created or reused.
    FriendAccept {
        /// The user answering.
        user: u64,
        /// The user who asked.
        requester: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `user` declines `requester`'s request; both sides forget it.
    FriendDecline {
        /// The user answering.
        user: u64,
        /// The user who asked.
        requester: u64,
    },
    /// Ends a friendship on both sides (or withdraws `user`'s own request).
    /// The direct conversation and its history stay.
    FriendRemove {
        /// The user ending it.
        user: u64,
        /// The other side.
        friend: u64,
    },
    /// Moves `user`'s read position in `conversation` forward to `up_to`
    /// (never back), adding the user to the read list of every tracked
    /// message in between.
    MarkRead {
        /// The reader.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The new read position; at most the conversation's last seq.
        up_to: u64,
    },
    /// Recall a message: its seq stays, its content is gone for everyone.
    /// The sender may recall within [`Options::recall_window_ms`]; `admin`
    /// lifts both the sender check and the window.
    Recall {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// Who recalls it.
        by: u64,
        /// An administrator's recall.
        admin: bool,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Replace a message's content; only its sender, within
    /// [`Options::edit_window_ms`]. Readers see it flagged as edited.
    Edit {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// Who edits it (must be the sender).
        by: u64,
        /// The new content.
        payload: Bytes,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Hide a message from one user's reads and syncs.
    DeleteForMe {
        /// The user.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
    },
    /// Remove every message of a direct or group conversation with seq
    /// below `before_seq` (at most last seq + 1), with its read list and
    /// overlays. Seqs are never reused.
    ClearHistory {
        /// The conversation.
        conversation: u64,
        /// The first seq kept.
        before_seq: u64,
    },
    /// Set a conversation's time-to-live (0 keeps messages forever);
    /// [`Engine::enforce_retention`](crate::Engine::enforce_retention)
    /// clears what has expired.
    SetRetention {
        /// The conversation.
        conversation: u64,
        /// Time-to-live in milliseconds of server time.
        ttl_ms: u64,
    },
    /// Replication only (feature `replication`, see [`crate::replication`]):
    /// write replica metadata rows, keyed in one of the engine's two
    /// metadata namespaces ([`crate::replication::local_meta_key`],
    /// [`crate::replication::replicated_meta_key`]), in the same WriteBatch
    /// as the commands before it in its group: how the raft state machine
    /// persists `last_applied` atomically with the data.
    #[cfg(feature = "replication")]
    PutMeta(Vec<(Vec<u8>, Vec<u8>)>),
    /// Replication only (feature `replication`): replace the whole shard
    /// with an image from [`Engine::export_state`](crate::Engine::export_state)
    /// (a raft snapshot being installed).
    #[cfg(feature = "replication")]
    ReplaceState(Vec<u8>),
    /// A device's sync cursor as raft log entries of entry formats 1 to 3
    /// carry it; applied as [`Command::SaveCursor`] of the same cursor
    /// with nothing reported.
    SaveCursorV1 {
        /// The user.
        user: u64,
        /// The device's id, 1 to [`Options::max_device_id_bytes`] bytes.
        device: Bytes,
        /// Where its sync stands.
        cursor: CursorV1,
    },
    /// Replication only (feature `replication`): add rows of a store image
    /// to the shard, removing nothing: the parts
    /// after the first of an image too large to install in one write (a
    /// raft snapshot install streams it: [`Command::ReplaceState`] with
    /// the first part, then these). `rows` are image rows without the
    /// image's leading [`IMAGE_MAGIC`](crate::replication::IMAGE_MAGIC).
    /// Until one with `complete` is written the shard is incomplete and the
    /// caller keeps reads away from it; that one is synced and drops every
    /// cache.
    #[cfg(feature = "replication")]
    AddImageRows {
        /// Whole rows, as [`image_rows_prefix`](crate::image_rows_prefix) cuts them.
        rows: Vec<u8>,
        /// The last part: the shard is whole again.
        complete: bool,
    },
    /// Cross-shard delivery: apply outbox records `first`, `first + 1`, …
    /// of shard `from` addressed to this shard (their effects: message
    /// copies into inboxes, and what later happens to those messages).
    /// Records this shard already has from `from` are skipped, so
    /// delivering again after a crash or a leader change is a no-op; a
    /// record past the next one expected is refused
    /// ([`Error::DeliveryGap`](crate::Error::DeliveryGap)). Sent by the
    /// source shard's drain, not by clients (`docs/replication.md`,
    /// "User shards").
    Deliver {
        /// The shard whose outbox the records come from.
        from: u64,
        /// The outbox seq of the first record.
        first: u64,
        /// The records, as the source's outbox holds them.
        records: Vec<Bytes>,
    },
    /// Forget this shard's outbox records toward shard `dest` up to
    /// `through`: `dest` has them durably ([`Command::Deliver`] succeeded).
    AckOutbox {
        /// The destination shard.
        dest: u64,
        /// The last outbox seq it has.
        through: u64,
    },
    /// In the user's shard: the user's read position in `conversation`
    /// is now `read_seq`, as a [`Command::MarkRead`] in the
    /// conversation's shard answered. The proxy writes it before it
    /// answers the `MarkRead`, so the user's own unread total and list
    /// show it at once; the view that the conversation's shard sends
    /// through its outbox brings the same position later (both keep the
    /// higher one, so their order does not matter).
    NoteRead {
        /// The reader.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The read position the conversation's shard gave.
        read_seq: u64,
    },
    /// Store a device's sync cursor on the server, in the user's shard.
    SaveCursor {
        /// The user.
        user: u64,
        /// The device's id, 1 to [`Options::max_device_id_bytes`] bytes.
        device: Bytes,
        /// Where its sync stands.
        cursor: SyncCursor,
    },
    /// `user` blocks `other`, in the pair's shard: from then on `other`'s
    /// sends to their direct conversation and friend requests to `user`
    /// are refused ([`Error::Blocked`](crate::Error::Blocked)), with
    /// nothing written. Group messages are not filtered. Blocking again
    /// changes nothing. The block goes on to `user`'s shard, whose list
    /// [`Engine::blocked`](crate::Engine::blocked) reads.
    Block {
        /// Who blocks.
        user: u64,
        /// Who is blocked.
        other: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `user` unblocks `other`; unblocking someone not blocked changes
    /// nothing.
    Unblock {
        /// Who unblocks.
        user: u64,
        /// Who was blocked.
        other: u64,
    },
}

/// A message sent to a direct or group conversation with [`Command::Send`].
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMessage {
    /// The conversation.
    pub conversation: u64,
    /// The sending member.
    pub sender: u64,
    /// The sender's own id for this message (retries are recognised by it).
    pub client_msg_id: Bytes,
    /// The body.
    pub payload: Bytes,
    /// Server time in milliseconds, chosen by the caller.
    pub timestamp_ms: u64,
    /// Keep a per-message read list even in a group above
    /// [`Options::receipt_list_max_members`].
    pub receipt: bool,
}

/// What applying a [`Command`] produced.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// One entry per message of [`Command::Append`], in the same order.
    Appended(Vec<Appended>),
    /// The result of [`Command::Send`].
    Sent(Appended),
    /// The conversation a create or open refers to.
    Conversation {
        /// Its id.
        conversation: u64,
        /// `false` when it existed already.
        created: bool,
    },
    /// The users whose membership changed (the others were already there,
    /// or already gone).
    MembersChanged(Vec<u64>),
    /// The result of a friend command.
    Friend(FriendOutcome),
    /// The read position after [`Command::MarkRead`].
    ReadUpTo(u64),
    /// The command was applied; it has nothing to report.
    Done,
}

/// What a friend command did.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendOutcome {
    /// A new request is pending.
    Requested,
    /// The same request was already pending; nothing changed.
    AlreadyRequested,
    /// The two are now friends, with this direct conversation.
    BecameFriends {
        /// The pair's direct conversation.
        conversation: u64,
    },
    /// They were already friends; nothing changed.
    AlreadyFriends {
        /// The pair's direct conversation.
        conversation: u64,
    },
    /// The request was declined (or withdrawn) and forgotten.
    Declined,
    /// The friendship was ended.
    Removed,
}

pub use crate::codec::{Advanced, ConversationKind, CursorV1, FriendStatus, SyncCursor};

/// A message as one user sees it: overlays (recall, edit, delete-for-me)
/// applied. A recalled or deleted message keeps its seq and loses its
/// payload, so pages stay continuous.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The message; `payload` is the edited content, or empty when the
    /// message was recalled or deleted for this user.
    pub message: Message,
    /// Recalled (for everyone).
    pub recalled: bool,
    /// Edited at least once.
    pub edited: bool,
    /// Deleted by this user for themself.
    pub deleted_for_me: bool,
}

/// What a shard's outbox holds toward one destination shard.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// The destination shard.
    pub dest: u64,
    /// The outbox seq of the oldest record waiting.
    pub first: u64,
    /// The outbox seq of the newest record written.
    pub last: u64,
}

impl OutboxBacklog {
    /// Records waiting.
    pub fn waiting(&self) -> u64 {
        self.last.saturating_sub(self.first) + 1
    }
}

/// One page of a sync.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPage {
    /// New inbox entries, oldest first, each with the message as the user
    /// sees it. Entries whose message was cleared by retention are skipped.
    pub messages: Vec<(u64, MessageView)>,
    /// Big conversations that advanced since the cursor's change counter.
    pub advanced: Vec<Advanced>,
    /// Where the next sync starts.
    pub cursor: SyncCursor,
    /// More inbox entries are waiting beyond this page.
    pub more: bool,
}

/// One conversation in a user's conversation list.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: u64,
    /// Direct or group.
    pub kind: ConversationKind,
    /// The newest seq this user sees (a former member's stops at leaving).
    pub last_seq: u64,
    /// Time of that message (or of the conversation's creation): the order
    /// of the list, newest first.
    pub last_activity_ms: u64,
    /// The user's read position.
    pub read_seq: u64,
    /// Messages after the read position that the user sees.
    pub unread: u64,
    /// The user is still a member.
    pub member: bool,
    /// The newest message, as the user sees it, if any is left.
    pub last_message: Option<MessageView>,
}

/// Where a conversation-list page starts: after this entry of the previous one.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// `last_activity_ms` of the last entry returned.
    pub last_activity_ms: u64,
    /// Its conversation.
    pub conversation: u64,
}

/// A friend or a pending request, seen from one user.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Friend {
    /// The other user.
    pub user: u64,
    /// Where it stands.
    pub status: FriendStatus,
    /// Server time of the request or acceptance.
    pub since_ms: u64,
    /// The direct conversation once friends, else 0.
    pub conversation: u64,
}

/// One member of a conversation, current or former.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user: u64,
    /// Membership intervals as (joined_after, left_at): the user sees seqs
    /// `joined_after < seq <= left_at`; `left_at` is `u64::MAX` while a member.
    pub intervals: Vec<(u64, u64)>,
    /// The user's read position.
    pub read_seq: u64,
}

/// Who has and has not read one message.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipts {
    /// Members at send time, other than the sender, who read it (ascending).
    pub read: Vec<u64>,
    /// Members at send time, other than the sender, who have not (ascending).
    pub unread: Vec<u64>,
    /// `true` when the list is stored under the message id; `false` when it
    /// was derived from read positions (a big group's untracked message).
    pub stored: bool,
}

/// A message's receipts counted ([`Engine::receipt_pages`]), with a page
/// of who read it and who has not when asked.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptPage {
    /// The message.
    pub seq: u64,
    /// How many read it (the stored list's length, or the members at send
    /// time whose read position is past it).
    pub read_count: u64,
    /// Members at send time, other than the sender, who have not.
    pub unread_count: u64,
    /// Readers in the page (ascending).
    pub read: Vec<u64>,
    /// Non-readers in the page (ascending).
    pub unread: Vec<u64>,
    /// The last user of a page that is not the last: the next page starts
    /// after it. 0 when nothing is left (or for counts only).
    pub next_after: u64,
    /// Whether the message's read list is stored (see [`Receipts::stored`]).
    pub stored: bool,
}

/// Counters of the commit pipeline since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Group commits written (each one WriteBatch and, when syncing, one
    /// fsync). A group of only duplicates or rejected commands writes
    /// nothing and is not counted.
    pub groups: u64,
    /// Commands the pipeline completed, written or not.
    pub commands: u64,
    /// Messages newly appended (duplicates not counted).
    pub messages: u64,
    /// Operations (puts, merges, deletes) in the written batches: what a
    /// command costs in writes, independent of timing.
    pub batch_operations: u64,
    /// WAL fsyncs the background syncer made (`sync_writes` off; see
    /// [`Options::wal_sync_interval_ms`]).
    pub background_wal_syncs: u64,
}

/// What one durable group commit changed that push subscribers care about,
/// handed to the listener set with
/// [`Engine::set_commit_listener`](crate::Engine::set_commit_listener).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitNotice {
    /// The shard the changes are in (one notice per shard a group wrote).
    pub shard: crate::ShardId,
    /// (user, new inbox head) for every user who got inbox entries.
    pub inbox_heads: Vec<(u64, u64)>,
    /// Big conversations that advanced: (conversation, seq, change counter).
    pub conversations: Vec<(u64, u64, u64)>,
    /// (user, conversation) memberships opened: a subscriber watching the
    /// user follows the conversation from now on.
    pub joined: Vec<(u64, u64)>,
    /// (user, conversation) views that became remote in this shard (the
    /// user's) through a delivery from the conversation's shard: the user
    /// joined a big group, or a group grew past the fan-out threshold,
    /// some time ago. Advances of the conversation since then were not
    /// told to a subscriber that did not follow it, so such a subscriber
    /// must resync. (A view that becomes remote in the command that made
    /// it so, one shard for both, is in `joined` instead: nothing came
    /// in between.)
    pub remote_views: Vec<(u64, u64)>,
    /// The shard wrote outbox records: effects for users of other shards
    /// wait to be delivered ([`Command::Deliver`]).
    pub outbox: bool,
}

impl CommitNotice {
    /// Nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.inbox_heads.is_empty()
            && self.conversations.is_empty()
            && self.joined.is_empty()
            && self.remote_views.is_empty()
            && !self.outbox
    }
}
