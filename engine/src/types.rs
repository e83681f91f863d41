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

/// A message sent to a direct or group conversation with [`Command::Send`](crate::Command::Send).
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

/// What applying a [`Command`](crate::Command) produced.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// One entry per message of [`Command::Append`](crate::Command::Append), in the same order.
    Appended(Vec<Appended>),
    /// The result of [`Command::Send`](crate::Command::Send).
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
    /// The read position after [`Command::MarkRead`](crate::Command::MarkRead).
    ReadUpTo(u64),
    /// The command was applied; it has nothing to report.
    Done,
    /// The user's settings of the conversation after
    /// [`Command::SetSettings`](crate::Command::SetSettings).
    Settings(crate::ConversationSettings),
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
    /// Its reactions and how many users gave each, in byte order of the
    /// reaction (empty in sync's inbox copies: read the timeline for
    /// them).
    pub reactions: Vec<Reaction>,
}

/// One reaction to a message and how many users gave it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The reaction.
    pub reaction: String,
    /// Users who gave it.
    pub count: u64,
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
    /// The user's settings of the conversations this page names (its
    /// entries' and advanced ones), where any is set, ascending.
    pub settings: Vec<(u64, crate::ConversationSettings)>,
}

impl SyncPage {
    /// The page with the settings of the conversations it names, picked
    /// from `settings` (ascending by conversation). A conversation the
    /// page shows a message newer than its archive of is no longer
    /// archived (its list brings it back).
    pub fn with_settings(mut self, settings: Vec<(u64, crate::ConversationSettings)>) -> Self {
        let mut newest = std::collections::BTreeMap::<u64, u64>::new();
        let named = self
            .messages
            .iter()
            .map(|(_, m)| (m.message.conversation, m.message.seq))
            .chain(self.advanced.iter().map(|a| (a.conversation, a.last_seq)));
        for (conversation, seq) in named {
            let slot = newest.entry(conversation).or_default();
            *slot = (*slot).max(seq);
        }
        self.settings = settings
            .into_iter()
            .filter_map(|(c, mut s)| {
                let seq = *newest.get(&c)?;
                if !s.hides(seq) {
                    s.archived = false;
                    s.archived_through = 0;
                }
                Some((c, s))
            })
            .collect();
        self
    }
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
    /// Unread messages (after the read position, still kept) that mention
    /// the user, by name or as everyone.
    pub mentions: u64,
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

/// A message's receipts counted ([`Engine::receipt_pages`](crate::Engine::receipt_pages)), with a page
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
    /// The users of `inbox_heads` whose new entries all came from
    /// conversations they muted, ascending.
    pub muted_inboxes: Vec<u64>,
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
    /// (conversation, seq) of messages whose reactions changed: a
    /// subscriber following the conversation is told.
    pub reacted: Vec<(u64, u64)>,
    /// The shard wrote outbox records: effects for users of other shards
    /// wait to be delivered ([`Command::Deliver`](crate::Command::Deliver)).
    pub outbox: bool,
}

impl CommitNotice {
    /// Nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.inbox_heads.is_empty()
            && self.reacted.is_empty()
            && self.conversations.is_empty()
            && self.joined.is_empty()
            && self.remote_views.is_empty()
            && !self.outbox
    }
}
