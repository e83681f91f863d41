//! The proxy's cache of sealed segments (`docs/server.md`, "Running
//! proxies"): a sealed segment never changes, so the messages of one read
//! once are kept by (conversation, base), the least recently used dropped
//! past a budget in bytes. A page read tells the node which of the page's
//! segments the proxy holds ([`SegmentCache::held`]) and gets the rest
//! (`ShardQuery::PageParts`); what may change (the open segment, recalls,
//! edits, reactions, each reader's cut) comes fresh with every read, so
//! the cache never shows what the node would not.

use std::collections::BTreeSet;
use std::sync::Mutex;

use imstore_engine::{Direction, SealedMessages};
use lru::LruCache;

/// Most held bases a page read names: enough for a long page of small
/// segments, few enough to keep the request small.
pub(crate) const HELD_PER_READ: usize = 64;

/// Bytes a cached message costs beyond its id and payload.
const MESSAGE_OVERHEAD: usize = 64;

/// Sealed segments by (conversation, base), bounded in bytes.
pub(crate) struct SegmentCache {
    budget: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    segments: LruCache<(u64, u64), (SealedMessages, usize)>,
    /// The same keys, ordered: the held bases of a conversation near a
    /// page.
    keys: BTreeSet<(u64, u64)>,
    bytes: usize,
}

impl SegmentCache {
    /// A cache of at most `budget` bytes (0: nothing is kept).
    pub(crate) fn new(budget: usize) -> SegmentCache {
        SegmentCache {
            budget,
            inner: Mutex::new(Inner {
                segments: LruCache::unbounded(),
                keys: BTreeSet::new(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The held bases of `conversation` a page from `from` (`direction`)
    /// may read, at most [`HELD_PER_READ`], ascending: forward, from the
    /// segment that holds `from` on; backward, the segments up to it.
    pub(crate) fn held(&self, conversation: u64, from: u64, direction: Direction) -> Vec<u64> {
        let inner = self.lock();
        let of = |lo: u64, hi: u64| inner.keys.range((conversation, lo)..=(conversation, hi));
        let mut bases: Vec<u64> = match direction {
            Direction::Forward => {
                let start = of(0, from).next_back().map_or(from, |&(_, b)| b);
                of(start, u64::MAX)
                    .take(HELD_PER_READ)
                    .map(|&(_, b)| b)
                    .collect()
            }
            Direction::Backward => of(0, from)
                .rev()
                .take(HELD_PER_READ)
                .map(|&(_, b)| b)
                .collect(),
        };
        bases.sort_unstable();
        bases
    }

    /// A held segment, marked as used.
    pub(crate) fn get(&self, conversation: u64, base: u64) -> Option<SealedMessages> {
        self.lock()
            .segments
            .get(&(conversation, base))
            .map(|(messages, _)| SealedMessages::clone(messages))
    }

    /// Keeps `segments` of `conversation`, dropping the least recently
    /// used past the budget.
    pub(crate) fn keep(&self, conversation: u64, segments: Vec<(u64, SealedMessages)>) {
        if self.budget == 0 {
            return;
        }
        let mut inner = self.lock();
        for (base, messages) in segments {
            let size: usize = messages
                .iter()
                .map(|m| m.payload.len() + m.client_msg_id.len() + MESSAGE_OVERHEAD)
                .sum();
            if size > self.budget {
                continue;
            }
            let key = (conversation, base);
            if let Some((_, old)) = inner.segments.put(key, (messages, size)) {
                inner.bytes -= old;
            }
            inner.keys.insert(key);
            inner.bytes += size;
            while inner.bytes > self.budget {
                let Some((gone, (_, size))) = inner.segments.pop_lru() else {
                    break;
                };
                inner.keys.remove(&gone);
                inner.bytes -= size;
            }
        }
    }

    /// Bytes held now, and segments.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.bytes, inner.segments.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn segment(conversation: u64, base: u64, records: u64, payload: usize) -> SealedMessages {
        Arc::new(
            (base..base + records)
                .map(|seq| imstore_engine::Message {
                    conversation,
                    seq,
                    sender: 1,
                    timestamp_ms: 0,
                    client_msg_id: bytes::Bytes::new(),
                    payload: bytes::Bytes::from(vec![b'x'; payload]),
                })
                .collect(),
        )
    }

    #[test]
    fn pages_name_the_held_segments_around_them() {
        let cache = SegmentCache::new(1 << 20);
        cache.keep(
            7,
            vec![(1, segment(7, 1, 4, 10)), (5, segment(7, 5, 4, 10))],
        );
        cache.keep(7, vec![(13, segment(7, 13, 4, 10))]);
        cache.keep(8, vec![(1, segment(8, 1, 4, 10))]);
        assert_eq!(cache.held(7, 6, Direction::Forward), vec![5, 13]);
        assert_eq!(cache.held(7, 1, Direction::Forward), vec![1, 5, 13]);
        assert_eq!(cache.held(7, 12, Direction::Backward), vec![1, 5]);
        assert_eq!(cache.held(9, 1, Direction::Forward), Vec::<u64>::new());
        assert_eq!(cache.get(7, 5).map(|s| s.len()), Some(4));
        assert!(cache.get(7, 9).is_none());
    }

    #[test]
    fn the_least_recently_used_go_past_the_budget() {
        // Each segment: 4 messages of 100 + 64 bytes.
        let cache = SegmentCache::new(2 * 4 * 164);
        cache.keep(
            1,
            vec![(1, segment(1, 1, 4, 100)), (5, segment(1, 5, 4, 100))],
        );
        assert!(
            cache.get(1, 1).is_some(),
            "used: segment 5 is now the oldest"
        );
        cache.keep(1, vec![(9, segment(1, 9, 4, 100))]);
        assert!(cache.get(1, 5).is_none());
        assert!(cache.get(1, 1).is_some() && cache.get(1, 9).is_some());
        assert_eq!(cache.usage(), (2 * 4 * 164, 2));
        assert_eq!(cache.held(1, 1, Direction::Forward), vec![1, 9]);
        let off = SegmentCache::new(0);
        off.keep(1, vec![(1, segment(1, 1, 4, 100))]);
        assert_eq!(off.usage(), (0, 0));
    }
}
