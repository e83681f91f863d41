use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::apply::ApplyLimits;
use crate::commit::Pipeline;
use crate::store::{ShardId, ShardView, Store, CF_CONVERSATIONS, CF_DEDUP, CF_SEGMENTS, MAX_SHARD};
use crate::tail::TailCache;
use crate::wal_sync::WalSyncer;
use crate::{
    read, Appended, Command, CommitNotice, CommitStats, Direction, Error, Message, NewMessage,
    Options, Outcome, Result, SegmentInfo, SendMessage,
};

#[path = "blocks_read.rs"]
pub(crate) mod blocks_read;
#[path = "im_read.rs"]
mod im_read;
#[path = "outbox_read.rs"]
mod outbox_read;
#[path = "reactions_read.rs"]
pub(crate) mod reactions_read;
#[path = "receipt_read.rs"]
pub(crate) mod receipt_read;
#[path = "segment_pages.rs"]
pub(crate) mod segment_pages;
#[path = "settings_read.rs"]
pub(crate) mod settings_read;
#[path = "sync_read.rs"]
pub(crate) mod sync_read;
#[path = "view_read.rs"]
pub(crate) mod view_read;
#[path = "viewer_pages.rs"]
pub(crate) mod viewer_pages;

/// An open imstore data directory, seen through one of its shards. Cheap
/// to clone; every clone is the same store. [`Engine::open`] gives shard 0,
/// [`Engine::with_shard`] any other: a store holds many shards (each a
/// separate set of conversations, users and counters, as one raft group
/// replicates), all written by one commit pipeline with shared fsyncs. The
/// store closes when the last clone is dropped, after the commit pipeline
/// has finished every queued write.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    shard: ShardId,
}

struct Inner {
    store: Arc<Store>,
    tail: Arc<TailCache>,
    pipeline: Arc<Pipeline>,
    committer: Mutex<Option<JoinHandle<()>>>,
    wal_syncer: Option<WalSyncer>,
    max_page_messages: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.pipeline.close();
        let handle = match self.committer.lock() {
            Ok(mut h) => h.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // The last clone can be dropped by a completion running on the
        // commit thread itself; that thread exits on its own after `close`.
        if let Some(handle) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            if handle.join().is_err() {
                tracing::error!("commit thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens (creating if needed) the data directory at `path`.
    ///
    /// Fails with [`Error::UnsupportedFormat`] when the directory was
    /// written by another format version, and with
    /// [`Error::NotAnImstoreDirectory`] when it holds some other RocksDB.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Engine> {
        let store = Arc::new(Store::open(path.as_ref(), &options)?);
        let tail = Arc::new(TailCache::new(
            options.tail_cache_bytes,
            options.tail_cache_records,
        ));
        let (pipeline, handle) = Pipeline::start(
            Arc::clone(&store),
            Arc::clone(&tail),
            ApplyLimits::from(&options),
            options.max_group_commands,
            options.conversation_cache_entries,
        )?;
        let wal_syncer = if options.sync_writes || options.wal_sync_interval_ms == 0 {
            None
        } else {
            Some(WalSyncer::start(
                Arc::clone(&store),
                std::time::Duration::from_millis(options.wal_sync_interval_ms),
            )?)
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                tail,
                pipeline,
                committer: Mutex::new(Some(handle)),
                wal_syncer,
                max_page_messages: options.max_page_messages,
            }),
            shard: 0,
        })
    }

    /// The same store seen through `shard` (0 to [`MAX_SHARD`]): every read
    /// and command of the returned handle touches only that shard's data.
    pub fn with_shard(&self, shard: ShardId) -> Result<Engine> {
        if shard > MAX_SHARD {
            return Err(Error::InvalidArgument(format!(
                "shard {shard} is over the highest shard id {MAX_SHARD}"
            )));
        }
        Ok(Engine {
            inner: Arc::clone(&self.inner),
            shard,
        })
    }

    /// The shard this handle reads and writes.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The store under every shard's handle.
    pub(crate) fn whole_store(&self) -> &Store {
        &self.inner.store
    }

    fn view(&self) -> ShardView<'_> {
        self.inner.store.shard(self.shard)
    }

    /// Appends one message and returns its seq once it is durable. A retry
    /// of an earlier send returns the original seq with `duplicate` set.
    pub fn append(&self, message: NewMessage) -> Result<Appended> {
        let mut appended = self.append_batch(vec![message])?;
        appended
            .pop()
            .ok_or_else(|| Error::Storage("append produced no result".into()))
    }

    /// Appends messages to any number of conversations in one atomic write:
    /// all of them become durable together, or none does.
    pub fn append_batch(&self, messages: Vec<NewMessage>) -> Result<Vec<Appended>> {
        match self.execute(Command::Append(messages))? {
            Outcome::Appended(appended) => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    /// Sends one message to a direct or group conversation as a member
    /// ([`Command::Send`]) and returns its seq once it is durable.
    pub fn send(&self, message: SendMessage) -> Result<Appended> {
        match self.execute(Command::Send(message))? {
            Outcome::Sent(appended) => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    /// Moves `user`'s read position forward ([`Command::MarkRead`]) and
    /// returns it.
    pub fn mark_read(&self, user: u64, conversation: u64, up_to: u64) -> Result<u64> {
        match self.execute(Command::MarkRead {
            user,
            conversation,
            up_to,
        })? {
            Outcome::ReadUpTo(seq) => Ok(seq),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a command through the commit pipeline and waits until it is
    /// durable.
    pub fn execute(&self, command: Command) -> Result<Outcome> {
        self.inner.pipeline.execute(self.shard, command)
    }

    /// Runs commands in order through the commit pipeline, queued together
    /// so that they share one group commit (as a raft state machine applies
    /// a batch of committed entries), and waits until all are durable. Each
    /// command is still atomic on its own: one failing leaves the others.
    pub fn execute_all(&self, commands: Vec<Command>) -> Vec<Result<Outcome>> {
        self.inner.pipeline.execute_all(self.shard, commands)
    }

    /// Sets the function told, on the commit thread, what each durable
    /// group commit changed (inbox heads, big conversations advanced),
    /// before any of its writers is answered. It must not block: it delays
    /// every later write. The server's push hub is one.
    pub fn set_commit_listener(&self, listener: impl Fn(&CommitNotice) + Send + Sync + 'static) {
        let mut slot = match self.inner.pipeline.listener.write() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(Arc::new(listener));
    }

    /// A consistent image of the shard (for a raft snapshot), to be
    /// installed elsewhere with `Command::ReplaceState`
    /// ([`crate::replication`]).
    #[cfg(feature = "replication")]
    pub fn export_state(&self) -> Result<Vec<u8>> {
        let mut image = Vec::new();
        self.view().export_to(&mut image)?;
        Ok(image)
    }

    /// Streams a consistent image of the whole store to `out` (memory
    /// bounded by one row) in two steps over one RocksDB snapshot:
    /// `proceed` first sees the replica-local metadata rows of that moment
    /// ([`crate::replication::local_meta_key`]), which the image leaves
    /// out; the image is streamed only if it answers `true` (otherwise
    /// `None`, nothing written).
    #[cfg(feature = "replication")]
    pub fn export_state_if(
        &self,
        out: &mut dyn std::io::Write,
        proceed: &mut dyn FnMut(&[crate::store::MetaRow]) -> bool,
    ) -> Result<Option<crate::store::StateExport>> {
        self.view().export_if(out, proceed)
    }

    /// Makes every write committed so far durable (fsyncs the WAL): what a
    /// store opened with `sync_writes: false` calls before it relies on its
    /// own state, as a raft replica does before its log is purged.
    pub fn make_durable(&self) -> Result<()> {
        self.inner.store.sync_wal()
    }

    /// Whether every commit fsyncs before it returns (`Options::sync_writes`):
    /// when it does not, a small `execute_all` costs memtable inserts only,
    /// cheap enough to run on an async runtime's thread.
    pub fn syncs_writes(&self) -> bool {
        self.inner.store.syncs_writes()
    }

    /// A metadata row written with `Command::PutMeta`
    /// ([`crate::replication`]).
    #[cfg(feature = "replication")]
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.view().get_in(crate::store::CF_META, key)
    }

    /// The shard's change counter: bumped by every command that advances a
    /// big conversation (sync cursors and watch positions hold it).
    pub fn change_counter(&self) -> u64 {
        self.inner.store.change_counter(self.shard)
    }

    /// `user`'s newest inbox seq (0 for an empty inbox).
    pub fn inbox_head(&self, user: u64) -> Result<u64> {
        self.view().inbox_last(user)
    }

    /// Queues a command and returns at once; `done` is called on the commit
    /// thread with the result once the command is durable or has failed.
    /// `done` must not block: it delays every later write.
    pub fn submit(&self, command: Command, done: impl FnOnce(Result<Outcome>) + Send + 'static) {
        self.inner
            .pipeline
            .submit(self.shard, command, Box::new(done));
    }

    /// Up to `limit` messages of `conversation`, in ascending seq order.
    /// [`Direction::Forward`] returns seqs `from, from + 1, …`;
    /// [`Direction::Backward`] returns the highest seqs `≤ from`.
    /// A page shorter than `limit` means the end of the timeline was reached.
    pub fn read(
        &self,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
    ) -> Result<Vec<Message>> {
        self.check_limit(limit)?;
        // The tail cache first; on a miss RocksDB, and a page that reaches
        // the end of the timeline is offered back to the cache.
        let tail = &self.inner.tail;
        let key = (self.shard, conversation);
        let version = match tail.read(key, from, limit, direction) {
            Ok(cached) => return Ok(cached),
            Err(version) => version,
        };
        let store = self.view();
        let (messages, last_seq) = match direction {
            Direction::Forward => read::forward(&store, conversation, from, limit)?,
            Direction::Backward => read::backward(&store, conversation, from, limit)?,
        };
        tail.fill(key, version, &messages, last_seq);
        Ok(messages)
    }

    /// [`Engine::read`]'s page if the tail cache holds all of it.
    pub(crate) fn cached_page(
        &self,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
    ) -> Option<Vec<Message>> {
        self.check_limit(limit).ok()?;
        let key = (self.shard, conversation);
        self.inner.tail.read(key, from, limit, direction).ok()
    }

    /// The latest `limit` messages, ascending.
    pub fn latest(&self, conversation: u64, limit: usize) -> Result<Vec<Message>> {
        self.read(conversation, u64::MAX, limit, Direction::Backward)
    }

    /// Up to `limit` messages with seq greater than `after`, ascending: what
    /// a device that has seen everything up to `after` pulls next.
    pub fn read_after(&self, conversation: u64, after: u64, limit: usize) -> Result<Vec<Message>> {
        self.check_limit(limit)?;
        match after.checked_add(1) {
            Some(from) => self.read(conversation, from, limit, Direction::Forward),
            None => Ok(Vec::new()),
        }
    }

    /// The highest seq of `conversation`, 0 when it has no message.
    pub fn last_seq(&self, conversation: u64) -> Result<u64> {
        Ok(self.view().conversation_state(conversation)?.last_seq)
    }

    /// The segments `conversation` is stored in, oldest first.
    pub fn segments(&self, conversation: u64) -> Result<Vec<SegmentInfo>> {
        read::segments(&self.view(), conversation)
    }

    /// Counters of the commit pipeline since open: groups written, commands
    /// and messages they carried. `messages / groups` is the mean group size.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            background_wal_syncs: self.inner.wal_syncer.as_ref().map_or(0, WalSyncer::syncs),
            ..self.inner.pipeline.counters.snapshot()
        }
    }

    /// Free space on the data directory's volume and the ballast's size,
    /// for monitoring (the server's `/metrics`).
    pub fn disk_space(&self) -> Result<crate::DiskSpace> {
        crate::disk::disk_space(self.inner.store.path())
    }

    /// A few RocksDB figures for monitoring: live data size, memtable and
    /// block-cache memory, running flushes and compactions, SST bytes.
    /// Properties RocksDB cannot report are left out.
    pub fn storage_stats(&self) -> Vec<(&'static str, u64)> {
        const PROPERTIES: [&str; 7] = [
            "rocksdb.estimate-live-data-size",
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
            "rocksdb.block-cache-usage",
            "rocksdb.num-running-flushes",
            "rocksdb.num-running-compactions",
            "rocksdb.estimate-pending-compaction-bytes",
        ];
        let store = &self.inner.store;
        PROPERTIES
            .iter()
            .filter_map(|&p| store.property_over_cfs(p).map(|v| (p, v)))
            .collect()
    }

    /// RocksDB's estimate of the idempotency entries on disk.
    pub fn dedup_entries_estimate(&self) -> Result<u64> {
        self.inner.store.estimate_keys(CF_DEDUP)
    }

    /// Flushes memtables and compacts everything now. Expired dedup entries
    /// are dropped here (and in RocksDB's background compactions).
    pub fn compact(&self) -> Result<()> {
        self.inner.store.compact()
    }

    /// The stored bytes of one segment, unchecked. For corruption tests and
    /// the fuzz corpus; not a stable API.
    #[doc(hidden)]
    pub fn raw_segment(&self, conversation: u64, base_seq: u64) -> Result<Option<Vec<u8>>> {
        let store = &self.inner.store;
        Ok(store.db().get_cf(
            store.cf(CF_SEGMENTS)?,
            self.view().segment_key(conversation, base_seq),
        )?)
    }

    /// Overwrites the stored bytes of one segment, bypassing every check.
    /// For corruption tests only; not a stable API.
    #[doc(hidden)]
    pub fn raw_overwrite_segment(
        &self,
        conversation: u64,
        base_seq: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let store = &self.inner.store;
        store.db().put_cf(
            store.cf(CF_SEGMENTS)?,
            self.view().segment_key(conversation, base_seq),
            bytes,
        )?;
        self.inner.tail.invalidate((self.shard, conversation));
        Ok(())
    }

    /// Deletes one segment, bypassing every check. For corruption tests
    /// only; not a stable API.
    #[doc(hidden)]
    pub fn raw_delete_segment(&self, conversation: u64, base_seq: u64) -> Result<()> {
        let store = &self.inner.store;
        store.db().delete_cf(
            store.cf(CF_SEGMENTS)?,
            self.view().segment_key(conversation, base_seq),
        )?;
        self.inner.tail.invalidate((self.shard, conversation));
        Ok(())
    }

    /// The stored bytes of a conversation's state, unchecked. For
    /// corruption tests only; not a stable API.
    #[doc(hidden)]
    pub fn raw_conversation_state(&self, conversation: u64) -> Result<Option<Vec<u8>>> {
        let view = self.view();
        view.get_in(
            CF_CONVERSATIONS,
            &crate::codec::conversation_key(conversation),
        )
    }

    /// Overwrites a conversation's state, bypassing every check (and the
    /// commit pipeline's cache: reopen before writing to it). For
    /// corruption tests only; not a stable API.
    #[doc(hidden)]
    pub fn raw_overwrite_conversation_state(&self, conversation: u64, bytes: &[u8]) -> Result<()> {
        let store = &self.inner.store;
        let key =
            crate::store::shard_key(self.shard, &crate::codec::conversation_key(conversation));
        store.db().put_cf(store.cf(CF_CONVERSATIONS)?, key, bytes)?;
        self.inner.tail.invalidate((self.shard, conversation));
        Ok(())
    }

    pub(crate) fn check_limit(&self, limit: usize) -> Result<()> {
        if limit == 0 {
            return Err(Error::InvalidArgument("limit must be at least 1".into()));
        }
        if limit > self.inner.max_page_messages {
            return Err(Error::InvalidArgument(format!(
                "limit {limit} is over the page limit of {}",
                self.inner.max_page_messages
            )));
        }
        Ok(())
    }
}

fn unexpected(outcome: Outcome) -> Error {
    Error::Storage(format!("unexpected outcome {outcome:?}"))
}
