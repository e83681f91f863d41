//! Pages bounded in bytes as well as in count: a read answers at most
//! `max_page_bytes` of encoded messages (at least one message), so that a
//! page of large messages still fits a client's receive limit (4 MiB by
//! default in most gRPC libraries). A page cut short says `more`; the
//! client reads on from after its last message.

use imstore_engine::Direction;
use imstore_proto::v1 as pb;

/// The default of `max_page_bytes`: under gRPC's usual 4 MiB receive
/// limit, with room for the rest of the answer.
pub const DEFAULT_MAX_PAGE_BYTES: usize = 4_000_000;

/// Bytes `item` adds to a repeated field of an answer.
pub(super) fn wire_bytes(item: &impl prost::Message) -> usize {
    item.encoded_len() + prost::length_delimiter_len(item.encoded_len()) + 1
}

/// Keeps the items of a page nearest its start in reading order (the
/// first ones, or the last ones when `from_end`: a backward page's newest)
/// while they fit `budget` bytes, and at least `floor` of them. Returns
/// whether any were left out, and the bytes kept.
pub(super) fn keep_within<T: prost::Message>(
    items: &mut Vec<T>,
    from_end: bool,
    budget: usize,
    floor: usize,
) -> (bool, usize) {
    let count = items.len();
    let (mut used, mut kept) = (0, 0);
    while kept < count {
        let at = if from_end { count - 1 - kept } else { kept };
        let bytes = wire_bytes(&items[at]);
        if kept >= floor && used + bytes > budget {
            break;
        }
        used += bytes;
        kept += 1;
    }
    if from_end {
        items.drain(..count - kept);
    } else {
        items.truncate(kept);
    }
    (kept < count, used)
}

/// [`keep_within`] for a page of messages read in `direction`.
pub(super) fn bound_messages(
    messages: &mut Vec<pb::Message>,
    direction: Direction,
    budget: usize,
    floor: usize,
) -> (bool, usize) {
    keep_within(messages, direction == Direction::Backward, budget, floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, bytes: usize) -> pb::Message {
        pb::Message {
            seq,
            payload: vec![7; bytes],
            ..Default::default()
        }
    }

    #[test]
    fn pages_keep_what_fits_from_their_start() {
        let page: Vec<pb::Message> = (1..=10).map(|s| message(s, 100)).collect();
        let one = wire_bytes(&page[0]);
        let mut forward = page.clone();
        assert_eq!(
            bound_messages(&mut forward, Direction::Forward, 3 * one, 1),
            (true, 3 * one)
        );
        assert_eq!(forward.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let mut backward = page.clone();
        assert!(bound_messages(&mut backward, Direction::Backward, 3 * one + 1, 1).0);
        assert_eq!(
            backward.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        // At least the floor, even past the budget; nothing cut when it fits.
        let mut tiny = page.clone();
        assert!(bound_messages(&mut tiny, Direction::Forward, 1, 1).0);
        assert_eq!(tiny.len(), 1);
        let mut none = page.clone();
        assert_eq!(
            bound_messages(&mut none, Direction::Forward, 0, 0),
            (true, 0)
        );
        assert!(none.is_empty());
        let mut all = page.clone();
        assert!(!bound_messages(&mut all, Direction::Forward, usize::MAX, 1).0);
        assert_eq!(all, page);
    }
}
