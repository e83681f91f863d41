//! Merging the per-shard answers of a sync: a user's big-group advances
//! are still spread over the shards that hold their conversations, so a
//! sync asks every shard and merges here. Pure functions: the service
//! does the I/O. (The conversation list and the unread total are read
//! from the user's shard: `imstore_engine::merge_list_pages`.)

use imstore_engine::{MessageView, SyncCursor, SyncPage};

/// One shard's sync page, with the cursor it started from.
pub(crate) struct ShardPage {
    pub shard: u64,
    pub from: SyncCursor,
    pub page: SyncPage,
}

/// A merged sync page.
#[derive(Debug)]
pub(crate) struct MergedSync {
    /// (shard, inbox seq in that shard, message), in delivery order.
    pub entries: Vec<(u64, u64, MessageView)>,
    /// Big conversations that advanced, from every shard.
    pub advanced: Vec<imstore_engine::Advanced>,
    /// Where each shard's sync stands after this page, by shard.
    pub cursors: Vec<SyncCursor>,
    /// More entries are waiting in some shard.
    pub more: bool,
}

/// Merges shards' sync pages (each fetched with `limit`) into one page of
/// at most `limit` entries. Entries are taken oldest timestamp first
/// (ties by shard), always from the head of a shard's page, so what is
/// taken from a shard is a prefix of its page and that shard's cursor
/// moves exactly past it: an entry left out is delivered by a later page,
/// never skipped. A shard's change counter moves with its page whatever
/// was taken, since its `advanced` list is delivered whole.
pub(crate) fn merge_sync(pages: Vec<ShardPage>, limit: usize) -> MergedSync {
    let mut taken = vec![0usize; pages.len()];
    let mut entries = Vec::new();
    while entries.len() < limit {
        let next = pages
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.page
                    .messages
                    .get(taken[i])
                    .map(|(_, view)| ((view.message.timestamp_ms, p.shard), i))
            })
            .min();
        let Some((_, i)) = next else { break };
        let (inbox_seq, view) = pages[i].page.messages[taken[i]].clone();
        entries.push((pages[i].shard, inbox_seq, view));
        taken[i] += 1;
    }
    let mut more = false;
    let mut advanced = Vec::new();
    let mut cursors = Vec::with_capacity(pages.len());
    for (p, taken) in pages.into_iter().zip(taken) {
        let complete = taken == p.page.messages.len();
        more |= p.page.more || !complete;
        advanced.extend(p.page.advanced);
        cursors.push(if complete {
            p.page.cursor
        } else {
            SyncCursor {
                inbox_seq: match taken {
                    0 => p.from.inbox_seq,
                    n => p.page.messages[n - 1].0,
                },
                change: p.page.cursor.change,
            }
        });
    }
    MergedSync {
        entries,
        advanced,
        cursors,
        more,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imstore_engine::{Bytes, Message};

    fn view(conversation: u64, timestamp_ms: u64) -> MessageView {
        MessageView {
            message: Message {
                conversation,
                seq: 1,
                sender: 1,
                timestamp_ms,
                client_msg_id: Bytes::new(),
                payload: Bytes::new(),
            },
            recalled: false,
            edited: false,
            deleted_for_me: false,
        }
    }

    /// A shard's inbox as (inbox seq, timestamp) pairs, and the page a
    /// sync from `from` with `limit` would return.
    fn page_of(shard: u64, inbox: &[(u64, u64)], from: u64, limit: usize) -> ShardPage {
        let after: Vec<&(u64, u64)> = inbox.iter().filter(|(seq, _)| *seq > from).collect();
        let messages: Vec<(u64, MessageView)> = after
            .iter()
            .take(limit)
            .map(|(seq, ts)| (*seq, view(shard * 1000 + seq, *ts)))
            .collect();
        let last = messages.last().map_or(from, |m| m.0);
        ShardPage {
            shard,
            from: SyncCursor {
                inbox_seq: from,
                change: 0,
            },
            page: SyncPage {
                messages,
                advanced: Vec::new(),
                cursor: SyncCursor {
                    inbox_seq: last,
                    change: 0,
                },
                more: after.len() > limit,
            },
        }
    }

    #[test]
    fn paging_a_merged_sync_delivers_every_entry_once_in_shard_order() {
        // Three shards' inboxes with interleaved timestamps (one shard's
        // own timestamps not even monotonic: nodes' clocks differ).
        let inboxes: Vec<Vec<(u64, u64)>> = vec![
            (1..=7).map(|s| (s, s * 10)).collect(),
            vec![(1, 5), (2, 50), (3, 15), (4, 90)],
            Vec::new(),
        ];
        for limit in 1..=12 {
            let mut cursors = vec![0u64; 3];
            let mut seen: Vec<(u64, u64)> = Vec::new();
            for _round in 0..100 {
                let pages = (0..3)
                    .map(|s| page_of(s, &inboxes[s as usize], cursors[s as usize], limit))
                    .collect();
                let merged = merge_sync(pages, limit);
                assert!(merged.entries.len() <= limit);
                seen.extend(merged.entries.iter().map(|(s, seq, _)| (*s, *seq)));
                cursors = merged.cursors.iter().map(|c| c.inbox_seq).collect();
                if !merged.more {
                    break;
                }
                assert!(!merged.entries.is_empty(), "more, but nothing delivered");
            }
            let mut expected: Vec<(u64, u64)> = inboxes
                .iter()
                .enumerate()
                .flat_map(|(s, inbox)| inbox.iter().map(move |(seq, _)| (s as u64, *seq)))
                .collect();
            let mut got = seen.clone();
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "limit {limit}: every entry exactly once");
            for shard in 0..3 {
                let order: Vec<u64> = seen
                    .iter()
                    .filter(|(s, _)| *s == shard)
                    .map(|(_, seq)| *seq)
                    .collect();
                assert!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "shard {shard} in order"
                );
            }
            assert_eq!(cursors, vec![7, 4, 0]);
        }
    }

    #[test]
    fn a_page_takes_the_oldest_heads_first() {
        let pages = vec![
            page_of(0, &[(1, 30), (2, 40)], 0, 2),
            page_of(1, &[(1, 10), (2, 35)], 0, 2),
        ];
        let merged = merge_sync(pages, 3);
        let order: Vec<(u64, u64)> = merged.entries.iter().map(|(s, q, _)| (*s, *q)).collect();
        assert_eq!(order, vec![(1, 1), (0, 1), (1, 2)]);
        assert!(merged.more);
        assert_eq!(merged.cursors[0].inbox_seq, 1);
        assert_eq!(merged.cursors[1].inbox_seq, 2);
    }
}
