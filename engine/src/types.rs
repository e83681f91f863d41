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
            max_group_commands: 4_096,
            conversation_cache_entries: 100_000,
            block_cache_bytes: 256 << 20,
            tail_cache_bytes: 64 << 20,
            tail_cache_records: 128,
        }
    }
}

/// A message to append.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's seq in its conversation.
    pub seq: u64,
    /// `true` when this was a retry of an earlier send: `seq` is the
    /// original one and nothing was written.
    pub duplicate: bool,
}

/// A stored message as read back.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Append these messages, in order, in one atomic write. Any number of
    /// conversations may appear; if one message is rejected, none is written.
    Append(Vec<NewMessage>),
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// One entry per message of [`Command::Append`], in the same order.
    Appended(Vec<Appended>),
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
}
