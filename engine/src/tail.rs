//! The tail cache: the newest messages of recently written or read
//! conversations, in memory, so that "latest page" reads and device pulls
//! near the end of a timeline touch no RocksDB structure at all.
//!
//! Every entry is a contiguous run of messages that **ends at the
//! conversation's committed last seq**. The commit pipeline keeps that true:
//! after each durable write it extends (or creates) the entries of the
//! conversations it wrote, under the shard lock. A reader that missed may
//! fill an entry from what it read from RocksDB, but only if no commit
//! touched the shard between the start of its read and the fill (a per-shard
//! version), so a fill can never install a tail that a later write has
//! already outgrown.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use lru::LruCache;

use crate::{Direction, Message};

const SHARDS: usize = 64;

/// A cached conversation: (data shard, conversation).
pub(crate) type TailKey = (crate::store::ShardId, u64);
/// Bookkeeping bytes charged per cached message on top of its payload.
const MESSAGE_OVERHEAD: usize = 96;

struct Tail {
    /// Contiguous messages ending at the conversation's last seq.
    messages: VecDeque<Message>,
    bytes: usize,
    /// Where appended messages' bytes are copied, so that a conversation's
    /// cached messages share a few buffers (and refcounts): a cached page
    /// then touches a handful of cache lines for its refcounts instead of
    /// two per message.
    arena: BytesMut,
}

/// Size of one arena chunk; at most this much slack per cached conversation.
const ARENA_CHUNK: usize = 4096;

impl Tail {
    fn empty() -> Tail {
        Tail {
            messages: VecDeque::new(),
            bytes: 0,
            arena: BytesMut::new(),
        }
    }

    /// `m` with its client id and payload moved into this tail's arena.
    fn rebase(&mut self, m: Message) -> Message {
        let cid_len = m.client_msg_id.len();
        let need = cid_len + m.payload.len();
        if self.arena.capacity() - self.arena.len() < need {
            self.arena = BytesMut::with_capacity(ARENA_CHUNK.max(need));
        }
        self.arena.extend_from_slice(&m.client_msg_id);
        self.arena.extend_from_slice(&m.payload);
        let both = self.arena.split().freeze();
        Message {
            client_msg_id: both.slice(..cid_len),
            payload: both.slice(cid_len..),
            ..m
        }
    }
}

impl Tail {
    fn first_seq(&self) -> u64 {
        self.messages.front().map_or(0, |m| m.seq)
    }
    fn last_seq(&self) -> u64 {
        self.messages.back().map_or(0, |m| m.seq)
    }
}

struct Shard {
    entries: LruCache<TailKey, Tail>,
    /// Bumped by every commit that touches a conversation of this shard.
    version: u64,
    bytes: usize,
}

pub(crate) struct TailCache {
    shards: Vec<Mutex<Shard>>,
    max_records: usize,
    max_shard_bytes: usize,
}

fn charge(m: &Message) -> usize {
    m.payload.len() + m.client_msg_id.len() + MESSAGE_OVERHEAD
}

impl TailCache {
    /// A cache of at most `max_bytes`, keeping up to `max_records` newest
    /// messages per conversation. Either being 0 disables it.
    pub(crate) fn new(max_bytes: usize, max_records: usize) -> Self {
        let enabled = max_bytes > 0 && max_records > 0;
        let shards = if enabled { SHARDS } else { 0 };
        TailCache {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: LruCache::unbounded(),
                        version: 0,
                        bytes: 0,
                    })
                })
                .collect(),
            max_records,
            max_shard_bytes: max_bytes / SHARDS,
        }
    }

    fn shard(&self, key: TailKey) -> Option<MutexGuard<'_, Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        // Fibonacci hashing spreads sequential conversation ids.
        let (shard, conversation) = key;
        let mixed = conversation ^ (u64::from(shard) << 48);
        let index = (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS;
        Some(match self.shards[index].lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        })
    }

    /// Serves a read from memory if the cached tail covers all of it.
    /// `Err(version)` means "not cached": read from RocksDB, then offer the
    /// result to [`TailCache::fill`] with that version.
    pub(crate) fn read(
        &self,
        key: TailKey,
        from: u64,
        limit: usize,
        direction: Direction,
    ) -> Result<Vec<Message>, u64> {
        let Some(mut shard) = self.shard(key) else {
            return Err(0);
        };
        let version = shard.version;
        let Some(tail) = shard.entries.get(&key) else {
            return Err(version);
        };
        let (first, last) = (tail.first_seq(), tail.last_seq());
        let (lo, hi) = match direction {
            Direction::Forward => {
                let from = from.max(1);
                if from > last {
                    return Ok(Vec::new());
                }
                (from, last.min(from.saturating_add(limit as u64 - 1)))
            }
            Direction::Backward => {
                let to = from.min(last);
                if to == 0 {
                    return Ok(Vec::new());
                }
                (to.saturating_sub(limit as u64 - 1).max(1), to)
            }
        };
        if lo < first {
            return Err(version);
        }
        let start = (lo - first) as usize;
        let end = (hi - first) as usize + 1;
        Ok(tail.messages.range(start..end).cloned().collect())
    }

    /// Installs what a reader read, if it ends at the conversation's last
    /// seq and no commit touched the shard since `version`.
    pub(crate) fn fill(&self, key: TailKey, version: u64, read: &[Message], last_seq: u64) {
        if read.last().map(|m| m.seq) != Some(last_seq) {
            return;
        }
        let Some(mut shard) = self.shard(key) else {
            return;
        };
        if shard.version != version {
            return;
        }
        let keep = &read[read.len().saturating_sub(self.max_records)..];
        if let Some(existing) = shard.entries.peek(&key) {
            if existing.messages.len() >= keep.len() {
                return;
            }
        }
        // Read messages already share one buffer per segment.
        let tail = Tail {
            bytes: keep.iter().map(charge).sum(),
            messages: keep.iter().cloned().collect(),
            arena: BytesMut::new(),
        };
        self.install(&mut shard, key, tail);
    }

    /// After a durable write: `appended` are the new messages of one
    /// conversation, in seq order, ending at its new last seq.
    pub(crate) fn extend(&self, key: TailKey, appended: Vec<Message>) {
        let Some(mut shard) = self.shard(key) else {
            return;
        };
        shard.version += 1;
        let Some(first_new) = appended.first().map(|m| m.seq) else {
            return;
        };
        let mut tail = match shard.entries.pop(&key) {
            Some(tail) if tail.last_seq() + 1 == first_new => {
                shard.bytes -= tail.bytes;
                tail
            }
            Some(stale) => {
                // Not contiguous (cannot happen while the invariant holds):
                // start over from the new messages.
                shard.bytes -= stale.bytes;
                Tail::empty()
            }
            None => Tail::empty(),
        };
        for m in appended {
            tail.bytes += charge(&m);
            let m = tail.rebase(m);
            tail.messages.push_back(m);
        }
        while tail.messages.len() > self.max_records {
            if let Some(old) = tail.messages.pop_front() {
                tail.bytes -= charge(&old);
            }
        }
        self.install(&mut shard, key, tail);
    }

    /// Drops a conversation's entry (used when its stored bytes are
    /// replaced behind the engine's back, by the corruption test hook).
    /// Drops every entry (the store under the cache was replaced).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            let mut shard = match shard.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            shard.version += 1;
            shard.entries.clear();
            shard.bytes = 0;
        }
    }

    pub(crate) fn invalidate(&self, key: TailKey) {
        if let Some(mut shard) = self.shard(key) {
            shard.version += 1;
            if let Some(old) = shard.entries.pop(&key) {
                shard.bytes -= old.bytes;
            }
        }
    }

    fn install(&self, shard: &mut Shard, key: TailKey, tail: Tail) {
        shard.bytes += tail.bytes;
        if let Some(old) = shard.entries.put(key, tail) {
            shard.bytes -= old.bytes;
        }
        while shard.bytes > self.max_shard_bytes {
            match shard.entries.pop_lru() {
                Some((_, evicted)) => shard.bytes -= evicted.bytes,
                None => break,
            }
        }
    }
}
