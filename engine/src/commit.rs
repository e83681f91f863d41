//! The group-commit pipeline. Writers queue commands; whoever commits takes
//! everything waiting, applies it into one WriteBatch, writes it with one
//! fsync, and completes every waiter. Concurrent writers share fsyncs.
//!
//! Who commits: a blocking caller ([`Pipeline::execute`]) that finds no
//! commit in progress leads one group itself, saving two thread hand-offs
//! on the latency path; everything else (and whatever is still queued when
//! a leader finishes) is committed by the background committer thread. A
//! caller never leads more than one group, so none is held hostage by
//! other writers' load. Exactly one committer is active at a time
//! (`Queue::committing`), so the committer state needs no real locking.

use std::collections::BTreeMap;
use std::mem;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use lru::LruCache;
use rocksdb::WriteBatch;

use crate::apply::{ApplyLimits, CommittedState, GroupApplier, GroupEffects, Space};
use crate::codec::{ConversationState, DedupEntry};
use crate::store::{ShardId, ShardView, Store, CF_IM, CF_RECEIPTS, CF_SEGMENTS};
use crate::tail::TailCache;
use crate::{read, Command, CommitNotice, CommitStats, Error, Message, Outcome, Result};

/// Called once with the command's result, after its write is durable.
pub(crate) type Completion = Box<dyn FnOnce(Result<Outcome>) + Send>;

/// Told what each durable group changed, on the commit thread.
pub(crate) type Listener = Arc<dyn Fn(&CommitNotice) + Send + Sync>;

type Group = Vec<(ShardId, Command, Completion)>;

struct Queue {
    waiting: Group,
    closed: bool,
    /// A group is being committed (by a caller or the background thread).
    committing: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    groups: AtomicU64,
    commands: AtomicU64,
    messages: AtomicU64,
    batch_operations: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CommitStats {
        CommitStats {
            groups: self.groups.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            batch_operations: self.batch_operations.load(Ordering::Relaxed),
            // Filled in by the engine, which owns the syncer.
            background_wal_syncs: 0,
        }
    }
}

pub(crate) struct Pipeline {
    queue: Mutex<Queue>,
    /// Wakes the background committer.
    wake: Condvar,
    /// Only ever locked by the one active committer.
    committer: Mutex<Committer>,
    max_group: usize,
    pub(crate) counters: Counters,
    pub(crate) listener: Arc<RwLock<Option<Listener>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        // A panic while committing is a bug; the state it guards is only
        // ever updated after durable writes, so carrying on is safe.
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Pipeline {
    /// Starts the background committer over `store`.
    pub(crate) fn start(
        store: Arc<Store>,
        tail: Arc<TailCache>,
        limits: ApplyLimits,
        max_group: usize,
        cache_entries: usize,
    ) -> Result<(Arc<Pipeline>, JoinHandle<()>)> {
        let listener: Arc<RwLock<Option<Listener>>> = Arc::new(RwLock::new(None));
        let entries = NonZeroUsize::new(cache_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        let cache = LruCache::new(entries);
        let inbox_heads = LruCache::new(entries);
        let pipeline = Arc::new(Pipeline {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                closed: false,
                committing: false,
            }),
            wake: Condvar::new(),
            committer: Mutex::new(Committer {
                store,
                tail,
                limits,
                cache,
                inbox_heads,
                listener: Arc::clone(&listener),
            }),
            max_group: max_group.max(1),
            counters: Counters::default(),
            listener,
        });
        let worker = Arc::clone(&pipeline);
        let handle = std::thread::Builder::new()
            .name("imstore-commit".into())
            .spawn(move || worker.run_background())?;
        Ok((pipeline, handle))
    }

    /// Queues a command and returns at once; `done` runs on whichever
    /// thread commits the command's group, once it is durable (or failed).
    /// After [`Pipeline::close`], `done` gets [`Error::Closed`] at once.
    pub(crate) fn submit(&self, shard: ShardId, command: Command, done: Completion) {
        let mut queue = lock(&self.queue);
        if queue.closed {
            drop(queue);
            done(Err(Error::Closed));
            return;
        }
        queue.waiting.push((shard, command, done));
        let wake = !queue.committing;
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Queues a command and waits until it is durable, leading the group
    /// commit itself when no commit is in progress.
    pub(crate) fn execute(&self, shard: ShardId, command: Command) -> Result<Outcome> {
        self.execute_all(shard, vec![command])
            .pop()
            .unwrap_or(Err(Error::Closed))
    }

    /// Queues commands together (so they are committed in one group when
    /// they fit) and waits until all are durable.
    pub(crate) fn execute_all(
        &self,
        shard: ShardId,
        commands: Vec<Command>,
    ) -> Vec<Result<Outcome>> {
        let count = commands.len();
        let (tx, rx) = mpsc::sync_channel(count);
        let mut queue = lock(&self.queue);
        if queue.closed {
            return (0..count).map(|_| Err(Error::Closed)).collect();
        }
        for (index, command) in commands.into_iter().enumerate() {
            let tx = tx.clone();
            let done: Completion = Box::new(move |result| {
                // The receiver is on this caller's stack; it is still there.
                let _ = tx.send((index, result));
            });
            queue.waiting.push((shard, command, done));
        }
        drop(tx);
        if !queue.committing {
            queue.committing = true;
            let group = self.take_group(&mut queue);
            drop(queue);
            self.commit(group);
            self.finish_commit();
        } else {
            drop(queue);
        }
        let mut results: Vec<Result<Outcome>> = (0..count).map(|_| Err(Error::Closed)).collect();
        for (index, result) in rx.iter() {
            results[index] = result;
        }
        results
    }

    /// Stops taking commands; queued ones are still committed, then the
    /// background committer exits.
    pub(crate) fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_all();
    }

    fn take_group(&self, queue: &mut Queue) -> Group {
        // A store replacement is committed alone: commands after it must
        // read the new state, not the old one.
        let is_replace = |(_, c, _): &(ShardId, Command, Completion)| c.installs_image();
        let cut = match queue.waiting.iter().position(is_replace) {
            Some(0) => 1,
            Some(at) => at,
            None => queue.waiting.len(),
        }
        .min(self.max_group);
        if cut == queue.waiting.len() {
            mem::take(&mut queue.waiting)
        } else {
            queue.waiting.drain(..cut).collect()
        }
    }

    /// Commits a group. A panic while committing (a bug) must not stop
    /// the pipeline: the caches, which may no longer match the store, are
    /// dropped, the commands not yet answered fail (whether their write
    /// is durable is unknown: a retry with the same client message id is
    /// deduplicated), and the next group goes on.
    fn commit(&self, mut group: Group) {
        let mut committer = lock(&self.committer);
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            committer.commit_group(&mut group, &self.counters)
        }));
        if let Err(panic) = committed {
            let what = panic_message(panic.as_ref());
            tracing::error!(panic = %what, "a panic while committing a group; its caches dropped");
            committer.forget_caches();
            let err = Error::Storage(format!(
                "the commit of this write panicked ({what}); it may or may not be durable: \
                 retry it with the same client message id"
            ));
            for (_, _, done) in group.drain(..) {
                answer(done, Err(err.clone()));
            }
        }
    }

    /// Ends a commit; hands what queued up meanwhile to the background thread.
    fn finish_commit(&self) {
        let mut queue = lock(&self.queue);
        queue.committing = false;
        let more = !queue.waiting.is_empty() || queue.closed;
        drop(queue);
        if more {
            self.wake.notify_one();
        }
    }

    fn run_background(&self) {
        loop {
            let group = {
                let mut queue = lock(&self.queue);
                while queue.committing || (queue.waiting.is_empty() && !queue.closed) {
                    queue = match self.wake.wait(queue) {
                        Ok(q) => q,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                }
                if queue.waiting.is_empty() {
                    return; // closed and drained
                }
                queue.committing = true;
                self.take_group(&mut queue)
            };
            self.commit(group);
            self.finish_commit();
        }
    }
}

/// Runs a completion, which is the caller's code: a panic in it is logged
/// and goes no further, so the rest of the group is still answered (its
/// caller sees its channel closed, an error).
fn answer(done: Completion, result: Result<Outcome>) {
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(result)));
    if let Err(panic) = answered {
        tracing::error!(panic = %panic_message(panic.as_ref()), "a write's completion panicked");
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// State of the one active committer.
struct Committer {
    store: Arc<Store>,
    /// Extended after every durable write, before any waiter is completed.
    tail: Arc<TailCache>,
    limits: ApplyLimits,
    /// Committed conversation states by (shard, conversation); only ever
    /// updated after a durable write.
    cache: LruCache<(ShardId, u64), ConversationState>,
    /// Committed inbox heads by (shard, user); only ever updated after a
    /// durable write.
    inbox_heads: LruCache<(ShardId, u64), u64>,
    listener: Arc<RwLock<Option<Listener>>>,
}

struct CachedState<'a> {
    store: ShardView<'a>,
    cache: &'a mut LruCache<(ShardId, u64), ConversationState>,
    inbox_heads: &'a mut LruCache<(ShardId, u64), u64>,
}

impl CommittedState for CachedState<'_> {
    fn conversation(&mut self, conversation: u64) -> Result<ConversationState> {
        let key = (self.store.id(), conversation);
        if let Some(s) = self.cache.get(&key) {
            return Ok(*s);
        }
        let s = self.store.conversation_state(conversation)?;
        self.cache.put(key, s);
        Ok(s)
    }

    fn dedup(&mut self, key: &[u8]) -> Result<Option<DedupEntry>> {
        self.store.dedup_entry(key)
    }

    fn get(&mut self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.store.get_in(space_cf(space), key)
    }

    fn scan(&mut self, space: Space, lo: &[u8], hi: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.store.scan_in(space_cf(space), lo, hi, usize::MAX)
    }

    fn message(&mut self, conversation: u64, seq: u64) -> Result<Option<Message>> {
        let (messages, _) = read::forward(&self.store, conversation, seq, 1)?;
        Ok(messages.into_iter().find(|m| m.seq == seq))
    }

    fn segment_base(&mut self, conversation: u64, seq: u64) -> Result<Option<u64>> {
        self.store.segment_base(conversation, seq)
    }

    fn inbox_last(&mut self, user: u64) -> Result<u64> {
        let key = (self.store.id(), user);
        if let Some(head) = self.inbox_heads.get(&key) {
            return Ok(*head);
        }
        let head = self.store.inbox_last(user)?;
        self.inbox_heads.put(key, head);
        Ok(head)
    }
}

fn space_cf(space: Space) -> &'static str {
    match space {
        Space::Im => CF_IM,
        Space::Receipts => CF_RECEIPTS,
        Space::Segments => CF_SEGMENTS,
        Space::Conversations => crate::store::CF_CONVERSATIONS,
        Space::Dedup => crate::store::CF_DEDUP,
        Space::Meta => crate::store::CF_META,
    }
}

impl Committer {
    /// Applies a group (commands of any shards: each shard's in order,
    /// each over its own overlay), writes it with one fsync, publishes
    /// what changed, and completes every command.
    fn commit_group(&mut self, group: &mut Group, counters: &Counters) {
        let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        for (index, (shard, _, _)) in group.iter().enumerate() {
            by_shard.entry(*shard).or_default().push(index);
        }
        let mut outcomes: Vec<Result<Outcome>> =
            (0..group.len()).map(|_| Err(Error::Closed)).collect();
        let mut high_water = self.store.timestamp_high_water.load(Ordering::Relaxed);
        let mut batch = WriteBatch::default();
        let mut applied = Vec::with_capacity(by_shard.len());
        let mut written: Result<()> = Ok(());
        for (shard, indexes) in by_shard {
            let mut state = CachedState {
                store: self.store.shard(shard),
                cache: &mut self.cache,
                inbox_heads: &mut self.inbox_heads,
            };
            let change_base = self.store.change_counter(shard);
            let mut applier = GroupApplier::new(&mut state, self.limits, shard, change_base);
            for index in indexes {
                outcomes[index] = applier.apply(&group[index].1);
            }
            match applier.finish(&self.store, shard, high_water, &mut batch) {
                Ok(effects) => {
                    high_water = effects.timestamp_high_water;
                    applied.push((shard, change_base, effects));
                }
                Err(e) => {
                    written = Err(e);
                    break;
                }
            }
        }
        // A group of only duplicates and rejections has nothing to write.
        let operations = batch.len() as u64;
        if written.is_ok() && operations > 0 {
            // Replacing a shard is always synced, whatever `sync_writes`
            // says: raft drops the log the image replaces once the install
            // returns. (The parts of a streamed image before its last need
            // no sync of their own: the last one's covers the WAL before it.)
            let replacing = group.iter().any(|(_, c, _)| c.completes_image());
            written = self.store.write(batch, replacing);
        }

        let commands = group.len() as u64;
        match written {
            Ok(()) => {
                let listener = match self.listener.read() {
                    Ok(l) => l.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                let mut new_messages = 0;
                for (shard, change_base, effects) in applied {
                    new_messages += effects.new_messages;
                    self.publish(shard, change_base, effects, listener.as_ref());
                }
                counters
                    .batch_operations
                    .fetch_add(operations, Ordering::Relaxed);
                self.store
                    .timestamp_high_water
                    .store(high_water, Ordering::Relaxed);
                counters
                    .groups
                    .fetch_add(u64::from(operations > 0), Ordering::Relaxed);
                counters.commands.fetch_add(commands, Ordering::Relaxed);
                counters.messages.fetch_add(new_messages, Ordering::Relaxed);
                for ((_, _, done), outcome) in group.drain(..).zip(outcomes) {
                    answer(done, outcome);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, commands, "group commit failed");
                // Nothing of the group is durable: every command that had
                // applied cleanly fails with the write's error.
                for ((_, _, done), outcome) in group.drain(..).zip(outcomes) {
                    answer(done, outcome.and(Err(err.clone())));
                }
            }
        }
    }

    /// After a durable write: tells the listener what `shard`'s part of it
    /// changed and brings the caches and counters up to date.
    fn publish(
        &mut self,
        shard: ShardId,
        change_base: u64,
        effects: GroupEffects,
        listener: Option<&Listener>,
    ) {
        let notice = listener.map(|_| CommitNotice {
            shard,
            inbox_heads: effects.inbox_heads.iter().map(|(u, h)| (*u, *h)).collect(),
            muted_inboxes: effects
                .inbox_heads
                .keys()
                .filter(|u| !effects.loud_inboxes.contains(u))
                .copied()
                .collect(),
            conversations: effects
                .conversations
                .iter()
                .filter(|(_, s)| s.big_changed_at > change_base)
                .map(|(c, s)| (*c, s.big_last_seq, s.big_changed_at))
                .collect(),
            joined: effects.joined.clone(),
            remote_views: effects.remote_views.clone(),
            reacted: effects.reacted.clone(),
            outbox: effects.outbox_written,
        });
        // The caches first: they must match the store whatever the
        // listener does.
        for (conversation, state) in effects.conversations {
            self.cache.put((shard, conversation), state);
        }
        for (conversation, appended) in effects.appended {
            self.tail.extend((shard, conversation), appended);
        }
        for (user, head) in effects.inbox_heads {
            self.inbox_heads.put((shard, user), head);
        }
        if effects.replaced {
            // Rare (a raft snapshot install): every cache goes, not only
            // this shard's.
            self.forget_caches();
        }
        for conversation in effects.cleared {
            self.tail.invalidate((shard, conversation));
        }
        if let Some(change) = effects.change {
            self.store.set_change_counter(shard, change);
        }
        if let (Some(listener), Some(notice)) = (listener, notice) {
            if !notice.is_empty() {
                let told =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener(&notice)));
                if let Err(panic) = told {
                    tracing::error!(
                        panic = %panic_message(panic.as_ref()),
                        "the commit listener panicked; the write stands"
                    );
                }
            }
        }
    }

    /// Drops every cache (they are rebuilt from the store as read) and
    /// reloads the change counters.
    fn forget_caches(&mut self) {
        self.cache.clear();
        self.inbox_heads.clear();
        self.tail.clear();
        if let Err(e) = self.store.reload_counters() {
            tracing::error!(error = %e, "reloading counters after dropping the caches");
        }
    }
}
