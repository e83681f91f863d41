//! The hottest conversations by reads and by writes over a sliding
//! window, found with the Space-Saving algorithm (Metwally, Agrawal and
//! El Abbadi, 2005): a fixed number of counters, not a map of every
//! conversation, so its memory and cost per request do not grow with the
//! traffic. What `/metrics` and `imstore cluster hot` show: the seeds want
//! hot groups found automatically (自动识别热点群).
//!
//! Guarantees of Space-Saving with `m` counters over `n` requests: every
//! conversation with more than `n / m` requests is listed, and a listed
//! count overstates the true one by at most its `error` (the count the
//! counter held when the conversation took it over).
//!
//! The window: two summaries, the current one and the previous one; the
//! current becomes the previous every half window, so an answer covers
//! between a half and a whole window of traffic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters per summary.
pub const COUNTERS: usize = 256;
/// The window an answer covers, at most.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A conversation the summary counts, with its estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hot {
    /// The conversation.
    pub conversation: u64,
    /// Requests counted (an overestimate by at most `error`).
    pub count: u64,
    /// How much of `count` may belong to conversations this counter
    /// tracked before.
    pub error: u64,
}

/// One Space-Saving summary.
#[derive(Default)]
struct Summary {
    /// Conversation → (count, error).
    counters: HashMap<u64, (u64, u64)>,
}

impl Summary {
    fn offer(&mut self, conversation: u64) {
        if let Some((count, _)) = self.counters.get_mut(&conversation) {
            *count += 1;
            return;
        }
        if self.counters.len() < COUNTERS {
            self.counters.insert(conversation, (1, 0));
            return;
        }
        // Take over the smallest counter.
        let smallest = self
            .counters
            .iter()
            .min_by_key(|(id, (count, _))| (*count, **id))
            .map(|(id, (count, _))| (*id, *count));
        if let Some((evicted, count)) = smallest {
            self.counters.remove(&evicted);
            self.counters.insert(conversation, (count + 1, count));
        }
    }
}

/// Reads and writes of one window: the current and the previous summary.
struct Windowed {
    current: Summary,
    previous: Summary,
    since: Instant,
}

impl Windowed {
    fn new() -> Self {
        Windowed {
            current: Summary::default(),
            previous: Summary::default(),
            since: Instant::now(),
        }
    }

    fn roll(&mut self, now: Instant) {
        let half = WINDOW / 2;
        if now.duration_since(self.since) < half {
            return;
        }
        // More than a whole window idle: both halves are stale.
        self.previous = if now.duration_since(self.since) >= WINDOW {
            Summary::default()
        } else {
            std::mem::take(&mut self.current)
        };
        self.current = Summary::default();
        self.since = now;
    }

    /// The top `limit` of both halves together.
    fn top(&self, limit: usize) -> Vec<Hot> {
        let mut merged: HashMap<u64, (u64, u64)> = self.previous.counters.clone();
        for (&id, &(count, error)) in &self.current.counters {
            let entry = merged.entry(id).or_default();
            entry.0 += count;
            entry.1 += error;
        }
        let mut hot: Vec<Hot> = merged
            .into_iter()
            .map(|(conversation, (count, error))| Hot {
                conversation,
                count,
                error,
            })
            .collect();
        hot.sort_by_key(|h| (std::cmp::Reverse(h.count), h.conversation));
        hot.truncate(limit);
        hot
    }
}

/// The hottest conversations of this server, by reads and by writes.
pub struct HotConversations {
    reads: Mutex<Windowed>,
    writes: Mutex<Windowed>,
}

impl Default for HotConversations {
    fn default() -> Self {
        HotConversations {
            reads: Mutex::new(Windowed::new()),
            writes: Mutex::new(Windowed::new()),
        }
    }
}

impl HotConversations {
    /// Counts a read of `conversation`.
    pub fn read(&self, conversation: u64) {
        offer(&self.reads, conversation);
    }

    /// Counts a write to `conversation`.
    pub fn wrote(&self, conversation: u64) {
        offer(&self.writes, conversation);
    }

    /// The `limit` most read and the `limit` most written conversations of
    /// the window, hottest first.
    pub fn top(&self, limit: usize) -> (Vec<Hot>, Vec<Hot>) {
        (top(&self.reads, limit), top(&self.writes, limit))
    }
}

fn offer(windowed: &Mutex<Windowed>, conversation: u64) {
    let mut w = windowed.lock().unwrap_or_else(|p| p.into_inner());
    w.roll(Instant::now());
    w.current.offer(conversation);
}

fn top(windowed: &Mutex<Windowed>, limit: usize) -> Vec<Hot> {
    let mut w = windowed.lock().unwrap_or_else(|p| p.into_inner());
    w.roll(Instant::now());
    w.top(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_are_found_among_many_more_conversations_than_counters() {
        let hot = HotConversations::default();
        // 100,000 reads over 20,000 conversations, of which three take
        // 5,000, 3,000 and 2,000.
        let mut requests = Vec::new();
        for i in 0..90_000u64 {
            requests.push(1_000_000 + i % 20_000);
        }
        requests.extend(std::iter::repeat_n(7, 5_000));
        requests.extend(std::iter::repeat_n(8, 3_000));
        requests.extend(std::iter::repeat_n(9, 2_000));
        // Interleaved, so the heavy ones must survive evictions.
        let mut mixed = Vec::with_capacity(requests.len());
        let (mut a, mut b) = (0, requests.len() / 2);
        while a < requests.len() / 2 || b < requests.len() {
            if a < requests.len() / 2 {
                mixed.push(requests[a]);
                a += 1;
            }
            if b < requests.len() {
                mixed.push(requests[b]);
                b += 1;
            }
        }
        for c in mixed {
            hot.read(c);
        }
        let (reads, writes) = hot.top(3);
        let ids: Vec<u64> = reads.iter().map(|h| h.conversation).collect();
        assert_eq!(ids, vec![7, 8, 9]);
        for h in &reads {
            let truth = match h.conversation {
                7 => 5_000,
                8 => 3_000,
                _ => 2_000,
            };
            assert!(h.count >= truth && h.count - h.error <= truth, "{h:?}");
        }
        assert!(writes.is_empty());
    }

    #[test]
    fn the_window_forgets_old_traffic() {
        let mut w = Windowed::new();
        let start = w.since;
        w.current.offer(1);
        w.roll(start + WINDOW / 2);
        w.current.offer(2);
        let ids: Vec<u64> = w.top(10).iter().map(|h| h.conversation).collect();
        assert_eq!(ids, vec![1, 2], "the previous half still counts");
        w.roll(start + WINDOW);
        let ids: Vec<u64> = w.top(10).iter().map(|h| h.conversation).collect();
        assert_eq!(ids, vec![2]);
        w.roll(start + WINDOW * 3);
        assert!(w.top(10).is_empty(), "a whole window idle forgets all");
    }
}
