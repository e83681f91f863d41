//! Range reads over a conversation's segments.
//!
//! A read positions one iterator on the segment holding the first wanted
//! seq (`seek_for_prev` on the segment key) and walks segments from there.
//! Frames are located by their length prefixes; only the records returned
//! are checksummed and copied out.

use bytes::Bytes;
use rocksdb::DBRawIterator;

use crate::codec::{self, CodecError, Frame, Frames};
use crate::store::{ShardView, SHARD_PREFIX_LEN};
use crate::{Error, Message, Result, SegmentInfo};

fn segment_iterator<'a>(store: &ShardView<'a>, conversation: u64) -> Result<DBRawIterator<'a>> {
    store.segment_iterator(conversation)
}

/// The (conversation, base) of the iterator's current segment, if it is
/// one of `conversation`'s.
fn current_segment(it: &DBRawIterator<'_>, conversation: u64) -> Result<Option<u64>> {
    let Some(key) = it.key() else {
        it.status()?;
        return Ok(None);
    };
    let key = key.get(SHARD_PREFIX_LEN..).unwrap_or_default();
    let (c, base) = codec::parse_segment_key(key).map_err(|reason| Error::CorruptMetadata {
        what: "segment key".into(),
        reason,
    })?;
    Ok((c == conversation).then_some(base))
}

fn corrupt(conversation: u64, segment: u64) -> impl Fn(CodecError) -> Error {
    move |reason| Error::Corruption {
        conversation,
        segment,
        reason,
    }
}

/// Copies `frames` (consecutive, from one segment whose bytes are `value`)
/// out as messages, checking each CRC and seq.
fn to_messages(
    conversation: u64,
    base: u64,
    first_index: usize,
    value: &[u8],
    frames: &[Frame<'_>],
    out: &mut Vec<Message>,
) -> Result<()> {
    let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
        return Ok(());
    };
    let err = corrupt(conversation, base);
    // One copy of the byte range the returned records span; messages slice it.
    let start = first.offset;
    let shared = Bytes::copy_from_slice(&value[start..last.end()]);
    for (i, frame) in frames.iter().enumerate() {
        let record = frame.decode().map_err(&err)?;
        let expected = base + (first_index + i) as u64;
        if record.seq != expected {
            return Err(err(CodecError::SeqMismatch {
                expected,
                found: record.seq,
            }));
        }
        out.push(Message {
            conversation,
            seq: record.seq,
            sender: record.sender,
            timestamp_ms: record.timestamp_ms,
            client_msg_id: slice_of(&shared, start, value, record.client_msg_id),
            payload: slice_of(&shared, start, value, record.payload),
        });
    }
    Ok(())
}

/// The part of `shared` (a copy of `value[start..]`) that holds `sub`, a
/// subslice of `value`.
fn slice_of(shared: &Bytes, start: usize, value: &[u8], sub: &[u8]) -> Bytes {
    let at = sub.as_ptr() as usize - value.as_ptr() as usize - start;
    shared.slice(at..at + sub.len())
}

/// The highest seq committed in `conversation` and the first one retained.
/// Read before the segments, so the segments seen hold at least this much;
/// reads stop there, which also lets them notice records missing at the end.
fn bounds(store: &ShardView<'_>, conversation: u64) -> Result<(u64, u64)> {
    let state = store.conversation_state(conversation)?;
    Ok((state.last_seq, state.first_retained()))
}

/// Up to `limit` messages with seq ≥ `from`, ascending, and the
/// conversation's last seq when the read began.
pub(crate) fn forward(
    store: &ShardView<'_>,
    conversation: u64,
    from: u64,
    limit: usize,
) -> Result<(Vec<Message>, u64)> {
    let mut at = None;
    forward_at(store, conversation, from, limit, &mut at)
        .map_err(|e| e.in_conversation(conversation, at))
}

/// [`forward`], noting in `at` the segment it is reading, so that damage
/// RocksDB reports can name it.
fn forward_at(
    store: &ShardView<'_>,
    conversation: u64,
    from: u64,
    limit: usize,
    at: &mut Option<u64>,
) -> Result<(Vec<Message>, u64)> {
    let (last, first) = bounds(store, conversation)?;
    let from = from.max(first);
    if from > last {
        return Ok((Vec::new(), last));
    }
    let want_end = last.min(from.saturating_add(limit as u64 - 1));
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut it = segment_iterator(store, conversation)?;
    it.seek_for_prev(store.segment_key(conversation, from));
    if current_segment(&it, conversation)?.is_none() {
        it.seek(store.segment_key(conversation, 0));
    }
    let mut next_base: Option<u64> = None;
    let mut visited = from;
    while out.last().is_none_or(|m: &Message| m.seq < want_end) {
        let Some(base) = current_segment(&it, conversation)? else {
            break;
        };
        visited = base;
        *at = Some(base);
        // The first segment must hold `from` (retention only deletes whole
        // segments below the first retained seq); each later one must start
        // where the previous ended.
        let expected = next_base.unwrap_or(base.min(from));
        if base != expected {
            return Err(corrupt(conversation, base)(CodecError::SeqMismatch {
                expected,
                found: base,
            }));
        }
        let value = it.value().unwrap_or_default();
        let skip = from.saturating_sub(base);
        let mut wanted = Vec::new();
        let mut count = 0u64;
        for frame in Frames::new(value) {
            let frame = frame.map_err(corrupt(conversation, base))?;
            let seq = base + count;
            if seq >= from && seq <= want_end {
                wanted.push(frame);
            }
            count += 1;
        }
        let first_index = usize::try_from(skip.min(count)).unwrap_or(usize::MAX);
        to_messages(conversation, base, first_index, value, &wanted, &mut out)?;
        next_base = Some(base + count);
        it.next();
    }
    it.status()?;
    if out.last().map_or(0, |m| m.seq) < want_end {
        // The conversation state says more exists than the segments hold.
        return Err(corrupt(conversation, visited)(CodecError::SeqMismatch {
            expected: want_end,
            found: out.last().map_or(0, |m| m.seq),
        }));
    }
    Ok((out, last))
}

/// The bytes of every segment of `conversation` that holds a seq in
/// `lo..=hi`, with its base, ascending: what a proxy caches of sealed
/// segments (`Engine::page_parts`).
pub(crate) fn raw_segments(
    store: &ShardView<'_>,
    conversation: u64,
    lo: u64,
    hi: u64,
) -> Result<Vec<(u64, Bytes)>> {
    let mut out = Vec::new();
    let mut it = segment_iterator(store, conversation)?;
    it.seek_for_prev(store.segment_key(conversation, lo));
    if current_segment(&it, conversation)?.is_none() {
        it.seek(store.segment_key(conversation, 0));
    }
    while let Some(base) = current_segment(&it, conversation)? {
        if base > hi {
            break;
        }
        out.push((base, Bytes::copy_from_slice(it.value().unwrap_or_default())));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Up to `limit` messages with seq ≤ `to`, the highest ones, ascending, and
/// the conversation's last seq when the read began.
pub(crate) fn backward(
    store: &ShardView<'_>,
    conversation: u64,
    to: u64,
    limit: usize,
) -> Result<(Vec<Message>, u64)> {
    let mut at = None;
    backward_at(store, conversation, to, limit, &mut at)
        .map_err(|e| e.in_conversation(conversation, at))
}

/// [`backward`], noting in `at` the segment it is reading.
fn backward_at(
    store: &ShardView<'_>,
    conversation: u64,
    to: u64,
    limit: usize,
    at: &mut Option<u64>,
) -> Result<(Vec<Message>, u64)> {
    // Segments are visited newest first; each contributes its tail.
    let (last, first) = bounds(store, conversation)?;
    let to = to.min(last);
    if to < first {
        return Ok((Vec::new(), last));
    }
    let mut pieces: Vec<Vec<Message>> = Vec::new();
    let mut collected = 0usize;
    let mut it = segment_iterator(store, conversation)?;
    it.seek_for_prev(store.segment_key(conversation, to));
    let mut expected_end: Option<u64> = None;
    while collected < limit {
        let Some(base) = current_segment(&it, conversation)? else {
            break;
        };
        *at = Some(base);
        let value = it.value().unwrap_or_default();
        let frames = Frames::new(value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt(conversation, base))?;
        // One past the segment's last seq. The first segment visited must
        // reach `to`; each later one must end where the one after it begins.
        let end = base + frames.len() as u64;
        let expected = expected_end.unwrap_or(end.max(to + 1));
        if end != expected {
            return Err(corrupt(conversation, base)(CodecError::SeqMismatch {
                expected,
                found: end,
            }));
        }
        // Records with seq <= to: indexes 0..upto.
        let upto = usize::try_from(to.saturating_sub(base).saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(frames.len());
        // Records below the first retained seq (in the segment that holds
        // it) are not returned.
        let lowest = usize::try_from(first.saturating_sub(base))
            .unwrap_or(usize::MAX)
            .min(upto);
        let take = (upto - lowest).min(limit - collected);
        let first_index = upto - take;
        let mut piece = Vec::with_capacity(take);
        to_messages(
            conversation,
            base,
            first_index,
            value,
            &frames[first_index..upto],
            &mut piece,
        )?;
        collected += piece.len();
        pieces.push(piece);
        expected_end = Some(base);
        if base <= first {
            break;
        }
        it.prev();
    }
    it.status()?;
    if let Some(oldest) = expected_end.filter(|&base| base > first && collected < limit) {
        // Ran out of segments before the first retained seq: the oldest
        // ones are missing.
        return Err(corrupt(conversation, oldest)(CodecError::SeqMismatch {
            expected: first,
            found: oldest,
        }));
    }
    if collected == 0 {
        // The state says `to` exists, but no segment holds it.
        return Err(corrupt(conversation, to)(CodecError::SeqMismatch {
            expected: to,
            found: 0,
        }));
    }
    let mut out = Vec::with_capacity(collected);
    for piece in pieces.into_iter().rev() {
        out.extend(piece);
    }
    Ok((out, last))
}

/// Every segment of a conversation, oldest first.
pub(crate) fn segments(store: &ShardView<'_>, conversation: u64) -> Result<Vec<SegmentInfo>> {
    let mut at = None;
    segments_at(store, conversation, &mut at).map_err(|e| e.in_conversation(conversation, at))
}

fn segments_at(
    store: &ShardView<'_>,
    conversation: u64,
    at: &mut Option<u64>,
) -> Result<Vec<SegmentInfo>> {
    let mut out = Vec::new();
    let mut it = segment_iterator(store, conversation)?;
    it.seek(store.segment_key(conversation, 0));
    while let Some(base) = current_segment(&it, conversation)? {
        *at = Some(base);
        let value = it.value().unwrap_or_default();
        let mut records = 0u32;
        for frame in Frames::new(value) {
            frame.map_err(corrupt(conversation, base))?;
            records += 1;
        }
        out.push(SegmentInfo {
            base_seq: base,
            records,
            bytes: u32::try_from(value.len()).unwrap_or(u32::MAX),
        });
        it.next();
    }
    it.status()?;
    Ok(out)
}
