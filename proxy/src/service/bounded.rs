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

/// Keeps the messages of a page (ascending seqs) nearest its start in
/// reading order (the oldest for `Forward`, the newest for `Backward`)
/// while they fit `budget` bytes, and at least `floor` of them. Returns
/// whether any were left out, and the bytes kept.
pub(super) fn bound_messages(
    messages: &mut Vec<pb::Message>,
    direction: Direction,
    budget: usize,
    floor: usize,
) -> (bool, usize) {
    let mut used = 0;
    let mut kept = 0;
    let order: Box<dyn Iterator<Item = &pb::Message>> = match direction {
        Direction::Forward => Box::new(messages.iter()),
        Direction::Backward => Box::new(messages.iter().rev()),
    };
    for message in order {
        let bytes = wire_bytes(message);
        if kept >= floor && used + bytes > budget {
            break;
        }
        used += bytes;
        kept += 1;
    }
    let cut = kept < messages.len();
    match direction {
        Direction::Forward => messages.truncate(kept),
        Direction::Backward => {
            messages.drain(..messages.len() - kept);
        }
    }
    (cut, used)
}

/// Keeps the first entries of a sync page while they fit `budget` bytes
/// (at least one). Returns the inbox seq of the last one kept when any
/// were left out.
pub(super) fn bound_entries(entries: &mut Vec<pb::InboxEntry>, budget: usize) -> Option<u64> {
    let mut used = 0;
    let mut kept = 0;
    for entry in entries.iter() {
        let bytes = wire_bytes(entry);
        if kept >= 1 && used + bytes > budget {
            break;
        }
        used += bytes;
        kept += 1;
    }
    if kept == entries.len() {
        return None;
    }
    entries.truncate(kept);
    entries.last().map(|e| e.inbox_seq)
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
