//! The group-commit pipeline: one committer thread takes whatever commands
//! are waiting, applies them into one WriteBatch, writes it with one fsync,
//! and then completes every waiter. Concurrent writers share fsyncs.

use std::mem;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use lru::LruCache;
use rocksdb::WriteBatch;

use crate::apply::{ApplyLimits, CommittedState, GroupApplier};
use crate::codec::{ConversationState, DedupEntry};
use crate::store::Store;
use crate::tail::TailCache;
use crate::{Command, CommitStats, Error, Outcome, Result};

/// Called once with the command's result, after its write is durable.
pub(crate) type Completion = Box<dyn FnOnce(Result<Outcome>) + Send>;

struct Queue {
    waiting: Vec<(Command, Completion)>,
    closed: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    groups: AtomicU64,
    commands: AtomicU64,
    messages: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CommitStats {
        CommitStats {
            groups: self.groups.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Pipeline {
    queue: Mutex<Queue>,
    wake: Condvar,
    pub(crate) counters: Counters,
}

impl Pipeline {
    /// Starts the committer thread over `store`.
    pub(crate) fn start(
        store: Arc<Store>,
        tail: Arc<TailCache>,
        limits: ApplyLimits,
        max_group: usize,
        cache_entries: usize,
    ) -> Result<(Arc<Pipeline>, JoinHandle<()>)> {
        let pipeline = Arc::new(Pipeline {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            counters: Counters::default(),
        });
        let worker = Arc::clone(&pipeline);
        let cache =
            LruCache::new(NonZeroUsize::new(cache_entries.max(1)).unwrap_or(NonZeroUsize::MIN));
        let handle = std::thread::Builder::new()
            .name("imstore-commit".into())
            .spawn(move || {
                let mut committer = Committer {
                    store,
                    tail,
                    limits,
                    cache,
                };
                worker.run(&mut committer, max_group.max(1));
            })?;
        Ok((pipeline, handle))
    }

    /// Queues a command; `done` runs on the committer thread once the
    /// command's group is durable (or failed). After [`Pipeline::close`],
    /// `done` gets [`Error::Closed`] at once.
    pub(crate) fn submit(&self, command: Command, done: Completion) {
        let mut queue = match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        if queue.closed {
            drop(queue);
            done(Err(Error::Closed));
            return;
        }
        queue.waiting.push((command, done));
        let first = queue.waiting.len() == 1;
        drop(queue);
        if first {
            self.wake.notify_one();
        }
    }

    /// Stops taking commands; the committer finishes what is queued, then exits.
    pub(crate) fn close(&self) {
        let mut queue = match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        queue.closed = true;
        drop(queue);
        self.wake.notify_all();
    }

    fn run(&self, committer: &mut Committer, max_group: usize) {
        let mut group = Vec::new();
        loop {
            {
                let mut queue = match self.queue.lock() {
                    Ok(q) => q,
                    Err(poisoned) => poisoned.into_inner(),
                };
                while queue.waiting.is_empty() && !queue.closed {
                    queue = match self.wake.wait(queue) {
                        Ok(q) => q,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                }
                if queue.waiting.is_empty() {
                    return; // closed and drained
                }
                if queue.waiting.len() <= max_group {
                    mem::swap(&mut group, &mut queue.waiting);
                } else {
                    group.extend(queue.waiting.drain(..max_group));
                }
            }
            committer.commit_group(&mut group, &self.counters);
        }
    }
}

/// State owned by the committer thread alone, so it needs no lock.
struct Committer {
    store: Arc<Store>,
    /// Extended after every durable write, before any waiter is completed.
    tail: Arc<TailCache>,
    limits: ApplyLimits,
    /// Committed conversation states; only ever updated after a durable write.
    cache: LruCache<u64, ConversationState>,
}

struct CachedState<'a> {
    store: &'a Store,
    cache: &'a mut LruCache<u64, ConversationState>,
}

impl CommittedState for CachedState<'_> {
    fn conversation(&mut self, conversation: u64) -> Result<ConversationState> {
        if let Some(s) = self.cache.get(&conversation) {
            return Ok(*s);
        }
        let s = self.store.conversation_state(conversation)?;
        self.cache.put(conversation, s);
        Ok(s)
    }

    fn dedup(&mut self, key: &[u8]) -> Result<Option<DedupEntry>> {
        self.store.dedup_entry(key)
    }
}

impl Committer {
    fn commit_group(&mut self, group: &mut Vec<(Command, Completion)>, counters: &Counters) {
        let mut state = CachedState {
            store: &self.store,
            cache: &mut self.cache,
        };
        let mut applier = GroupApplier::new(&mut state, self.limits);
        let outcomes: Vec<Result<Outcome>> = group
            .iter()
            .map(|(command, _)| applier.apply(command))
            .collect();

        let high_water = self.store.timestamp_high_water.load(Ordering::Relaxed);
        let mut batch = WriteBatch::default();
        let written = applier
            .finish(&self.store, high_water, &mut batch)
            .and_then(|effects| {
                // A group of only duplicates and rejections has nothing to write.
                let wrote = !effects.is_empty();
                if wrote {
                    self.store.write(batch)?;
                }
                Ok((effects, wrote))
            });

        let commands = group.len() as u64;
        match written {
            Ok((effects, wrote)) => {
                for (conversation, state) in effects.conversations {
                    self.cache.put(conversation, state);
                }
                for (conversation, appended) in effects.appended {
                    self.tail.extend(conversation, appended);
                }
                self.store
                    .timestamp_high_water
                    .store(effects.timestamp_high_water, Ordering::Relaxed);
                counters
                    .groups
                    .fetch_add(u64::from(wrote), Ordering::Relaxed);
                counters.commands.fetch_add(commands, Ordering::Relaxed);
                counters
                    .messages
                    .fetch_add(effects.new_messages, Ordering::Relaxed);
                for ((_, done), outcome) in group.drain(..).zip(outcomes) {
                    done(outcome);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, commands, "group commit failed");
                // Nothing of the group is durable: every command that had
                // applied cleanly fails with the write's error.
                for ((_, done), outcome) in group.drain(..).zip(outcomes) {
                    done(outcome.and(Err(err.clone())));
                }
            }
        }
    }
}
