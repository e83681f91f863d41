//! Scrubbing: [`Engine::verify`] reads every stored byte of a store and
//! checks it, one shard at a time, each from a RocksDB snapshot of its own
//! (so it may run while writes go on, and holds no snapshot, nor any
//! shard's bookkeeping, longer than one shard's walk).
//!
//! Per conversation: its state decodes; its segments run without a hole
//! from the one holding the first kept seq to the state's last seq; every
//! record's frame, CRC, version and seq check out. Then every dedup entry
//! and every inbox entry must point at a seq its conversation has given
//! out, and every other row of every column family must be readable
//! (RocksDB checks each block's checksum on the way). Damage is collected,
//! not returned at the first hit, so one report names every damaged
//! conversation.

use std::collections::HashMap;

use rocksdb::{DBRawIteratorWithThreadMode, ReadOptions, SnapshotWithThreadMode, DB};

use crate::codec::{self, ConversationState, DedupEntry, Frames, InboxCopy};
use crate::store::{
    ShardId, ALL_CFS, CF_CONVERSATIONS, CF_DEDUP, CF_IM, CF_META, CF_RECEIPTS, CF_SEGMENTS,
    SHARD_PREFIX_LEN,
};
use crate::{Engine, Error, Result};

/// One damaged thing [`Engine::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The shard it is in, when known.
    pub shard: Option<ShardId>,
    /// The conversation it concerns, when known.
    pub conversation: Option<u64>,
    /// The segment (its base seq), when known.
    pub segment: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(shard) = self.shard {
            write!(f, "shard {shard} ")?;
        }
        if let Some(c) = self.conversation {
            write!(f, "conversation {c} ")?;
        }
        if let Some(s) = self.segment {
            write!(f, "segment {s} ")?;
        }
        write!(f, "{}", self.what)
    }
}

/// What [`Engine::verify`] checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Conversations whose state was read.
    pub conversations: u64,
    /// Segments walked.
    pub segments: u64,
    /// Message records checked (CRC, version, seq).
    pub messages: u64,
    /// Dedup entries checked.
    pub dedup_entries: u64,
    /// Inbox entries checked.
    pub inbox_entries: u64,
    /// Other rows read (members, receipts, metadata).
    pub other_rows: u64,
    /// Everything damaged, in the order found.
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    /// `true` when nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// The damaged conversations, each once, ascending (shard, conversation).
    pub fn damaged_conversations(&self) -> Vec<(Option<ShardId>, u64)> {
        let mut out: Vec<_> = self
            .damage
            .iter()
            .filter_map(|d| d.conversation.map(|c| (d.shard, c)))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Where a running [`Engine::verify`] stands, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Conversations checked so far.
    pub conversations_done: u64,
    /// Conversations in the store (RocksDB's estimate until counted).
    pub conversations_total: u64,
    /// Messages checked so far.
    pub messages: u64,
    /// Damage found so far.
    pub damaged: u64,
}

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;
type RawIter<'a> = DBRawIteratorWithThreadMode<'a, DB>;

/// Splits a stored key into its shard and the rest.
fn split_shard(key: &[u8]) -> (ShardId, &[u8]) {
    match key {
        [a, b, rest @ ..] => (ShardId::from_be_bytes([*a, *b]), rest),
        _ => (0, &[]),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

/// An iterator over one shard's part of a column family of the snapshot
/// (prefix `0xFFFF`, the store-wide rows, counts as a shard here).
fn shard_of_cf<'a>(
    engine: &'a Engine,
    snapshot: &'a Snapshot<'_>,
    cf: &'static str,
    shard: ShardId,
) -> Result<RawIter<'a>> {
    let mut ro = ReadOptions::default();
    ro.set_total_order_seek(true);
    ro.fill_cache(false);
    ro.set_iterate_lower_bound(shard.to_be_bytes().to_vec());
    if let Some(next) = shard.checked_add(1) {
        ro.set_iterate_upper_bound(next.to_be_bytes().to_vec());
    }
    let mut it = snapshot.raw_iterator_cf_opt(engine.whole_store().cf(cf)?, ro);
    it.seek(shard.to_be_bytes());
    Ok(it)
}

/// The lowest shard at or after `from` with a row in any column family
/// not in `broken`. A column family whose seek fails is added to `broken`
/// and its error returned as damage (once: it is skipped from then on).
fn next_shard(
    engine: &Engine,
    from: u32,
    broken: &mut Vec<&'static str>,
) -> Result<(Option<ShardId>, Vec<Damage>)> {
    let mut damage = Vec::new();
    let Ok(from) = ShardId::try_from(from) else {
        return Ok((None, damage));
    };
    let store = engine.whole_store();
    let mut lowest: Option<ShardId> = None;
    for cf in ALL_CFS {
        if broken.contains(&cf) {
            continue;
        }
        let mut ro = ReadOptions::default();
        ro.set_total_order_seek(true);
        ro.fill_cache(false);
        let mut it = store.db().raw_iterator_cf_opt(store.cf(cf)?, ro);
        it.seek(from.to_be_bytes());
        match (it.key(), it.status()) {
            (Some(key), _) => {
                let (shard, _) = split_shard(key);
                lowest = Some(lowest.map_or(shard, |l| l.min(shard)));
            }
            (None, Ok(())) => {}
            (None, Err(e)) => {
                broken.push(cf);
                damage.push(storage_damage(e.into(), None, None, None));
            }
        }
    }
    Ok((lowest, damage))
}

/// A storage error as damage (shard and conversation when known).
fn storage_damage(
    err: Error,
    shard: Option<ShardId>,
    conversation: Option<u64>,
    segment: Option<u64>,
) -> Damage {
    Damage {
        shard,
        conversation,
        segment,
        what: err.to_string(),
    }
}

struct Walk<'a, 'p> {
    engine: &'a Engine,
    /// The shard being walked.
    shard: ShardId,
    report: VerifyReport,
    /// Each conversation's last seq, for the references to it.
    last_seqs: HashMap<(ShardId, u64), u64>,
    progress: &'p mut dyn FnMut(VerifyProgress),
    total: u64,
}

impl Engine {
    /// Reads and checks every stored byte of the whole store (every
    /// shard), one shard at a time, each from a RocksDB snapshot of its
    /// own, so it may run while writes go on. Calls `progress` now and
    /// then. Damage is reported in the [`VerifyReport`], not as an error;
    /// an error means the walk itself could not run.
    pub fn verify(&self, progress: &mut dyn FnMut(VerifyProgress)) -> Result<VerifyReport> {
        let total = self
            .whole_store()
            .estimate_keys(CF_CONVERSATIONS)
            .unwrap_or(0);
        let mut walk = Walk {
            engine: self,
            shard: 0,
            report: VerifyReport::default(),
            last_seqs: HashMap::new(),
            progress,
            total,
        };
        let mut from = 0u32;
        let mut broken = Vec::new();
        loop {
            let (next, damage) = next_shard(self, from, &mut broken)?;
            for d in damage {
                walk.damage(d);
            }
            let Some(shard) = next else { break };
            walk.shard = shard;
            walk.last_seqs.clear();
            let snapshot = self.whole_store().db().snapshot();
            walk.conversations(&snapshot)?;
            walk.dedup(&snapshot)?;
            walk.inboxes(&snapshot)?;
            for cf in [CF_META, CF_RECEIPTS] {
                walk.readable(&snapshot, cf)?;
            }
            walk.tick();
            from = u32::from(shard) + 1;
        }
        walk.total = walk.report.conversations;
        walk.tick();
        Ok(walk.report)
    }
}

impl Walk<'_, '_> {
    fn tick(&mut self) {
        let report = &self.report;
        (self.progress)(VerifyProgress {
            conversations_done: report.conversations,
            conversations_total: self.total.max(report.conversations),
            messages: report.messages,
            damaged: report.damage.len() as u64,
        });
    }

    fn damage(&mut self, damage: Damage) {
        tracing::warn!(%damage, "verify: damage found");
        self.report.damage.push(damage);
    }

    /// Walks a whole column family of the snapshot, handing each row to
    /// `each`, which returns damage it finds in the row; a storage error
    /// that ends the walk early is damage too.
    fn scan(
        &mut self,
        snapshot: &Snapshot<'_>,
        cf: &'static str,
        mut each: impl FnMut(ShardId, &[u8], &[u8]) -> Option<Damage>,
    ) -> Result<()> {
        let mut found = Vec::new();
        let status = {
            let mut it = shard_of_cf(self.engine, snapshot, cf, self.shard)?;
            while let (Some(key), Some(value)) = (it.key(), it.value()) {
                let (shard, rest) = split_shard(key);
                found.extend(each(shard, rest, value));
                it.next();
            }
            it.status()
        };
        if let Err(e) = status {
            found.push(storage_damage(e.into(), Some(self.shard), None, None));
        }
        for damage in found {
            self.damage(damage);
        }
        Ok(())
    }

    /// Every conversation state, and each conversation's segments.
    fn conversations(&mut self, snapshot: &Snapshot<'_>) -> Result<()> {
        let mut states = Vec::new();
        self.scan(snapshot, CF_CONVERSATIONS, |shard, rest, value| {
            let (conversation, what) = match (u64_at(rest, 0), ConversationState::decode(value)) {
                (Some(c), Ok(state)) if rest.len() == 8 => {
                    states.push((shard, c, state));
                    return None;
                }
                (c, Err(reason)) => (c, format!("conversation state does not decode: {reason}")),
                _ => (None, format!("conversation key of {} bytes", rest.len())),
            };
            Some(Damage {
                shard: Some(shard),
                conversation,
                segment: None,
                what,
            })
        })?;
        self.total = self
            .total
            .max(self.report.conversations + states.len() as u64);
        for (i, (shard, conversation, state)) in states.into_iter().enumerate() {
            self.last_seqs.insert((shard, conversation), state.last_seq);
            self.segments(snapshot, shard, conversation, &state)?;
            self.report.conversations += 1;
            if i % 256 == 0 {
                self.tick();
            }
        }
        Ok(())
    }

    /// One conversation's segments: a run without holes from the segment
    /// holding its first kept seq to its last seq, every record checked.
    fn segments(
        &mut self,
        snapshot: &Snapshot<'_>,
        shard: ShardId,
        conversation: u64,
        state: &ConversationState,
    ) -> Result<()> {
        let first = state.first_retained();
        let last = state.last_seq;
        let view = self.engine.whole_store().shard(shard);
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        ro.set_iterate_lower_bound(view.segment_key(conversation, 0));
        if let Some(next) = conversation.checked_add(1) {
            ro.set_iterate_upper_bound(view.segment_key(next, 0));
        }
        let cf = self.engine.whole_store().cf(CF_SEGMENTS)?;
        let mut it = snapshot.raw_iterator_cf_opt(cf, ro);
        it.seek(view.segment_key(conversation, 0));
        // One past the last seq seen so far, once a segment was walked.
        let mut next: Option<u64> = None;
        let damaged = |segment: Option<u64>, what: String| Damage {
            shard: Some(shard),
            conversation: Some(conversation),
            segment,
            what,
        };
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let base = match codec::parse_segment_key(split_shard(key).1) {
                Ok((c, base)) if c == conversation => base,
                Ok(_) => break,
                Err(reason) => {
                    self.damage(damaged(None, format!("segment key: {reason}")));
                    return Ok(());
                }
            };
            self.report.segments += 1;
            let mut count = 0u64;
            for frame in Frames::new(value) {
                let record = frame.and_then(|f| f.decode());
                match record {
                    Ok(record) if record.seq == base + count => {}
                    Ok(record) => {
                        self.damage(damaged(
                            Some(base),
                            format!("record {} holds seq {}", base + count, record.seq),
                        ));
                        return Ok(());
                    }
                    Err(reason) => {
                        self.damage(damaged(
                            Some(base),
                            format!("record {}: {reason}", base + count),
                        ));
                        return Ok(());
                    }
                }
                count += 1;
            }
            let end = base + count;
            // Segments wholly below the first kept seq are cleared ones a
            // range delete has not reached yet: only their records count.
            // The first one reaching past it must hold it; each later one
            // must start where the one before ended.
            if end > first {
                match next.filter(|&n| n > first) {
                    None if base > first => {
                        self.damage(damaged(
                            Some(base),
                            format!("the first kept seq {first} is in no segment (the first starts at {base})"),
                        ));
                        return Ok(());
                    }
                    Some(expected) if base != expected => {
                        self.damage(damaged(
                            Some(base),
                            format!(
                                "segment starts at {base}, the one before ended at {}",
                                expected - 1
                            ),
                        ));
                        return Ok(());
                    }
                    _ => {}
                }
                self.report.messages += end.min(last + 1).saturating_sub(base.max(first));
            }
            next = Some(end);
            it.next();
        }
        if let Err(e) = it.status() {
            self.damage(storage_damage(
                e.into(),
                Some(shard),
                Some(conversation),
                None,
            ));
            return Ok(());
        }
        let stored_last = next.map_or(0, |n| n - 1);
        if (first <= last && stored_last != last) || stored_last > last {
            self.damage(damaged(
                None,
                format!("the state's last seq is {last}, the segments end at {stored_last}"),
            ));
        }
        Ok(())
    }

    /// Every dedup entry names a seq its conversation gave out.
    fn dedup(&mut self, snapshot: &Snapshot<'_>) -> Result<()> {
        let mut found = Vec::new();
        self.scan(snapshot, CF_DEDUP, |shard, rest, value| {
            let id = rest.get(codec::DEDUP_PREFIX_LEN..).unwrap_or_default();
            let id_ok = rest.get(16..20) == Some(&crc32fast::hash(id).to_be_bytes()[..]);
            found.push((shard, u64_at(rest, 0), DedupEntry::decode(value), id_ok));
            None
        })?;
        for (shard, conversation, entry, id_ok) in found {
            self.report.dedup_entries += 1;
            let what = match (conversation, entry) {
                (None, _) => Some("dedup key too short".to_owned()),
                (_, Err(reason)) => Some(format!("dedup entry does not decode: {reason}")),
                (_, Ok(_)) if !id_ok => Some("dedup key's client id fails its CRC".to_owned()),
                (Some(c), Ok(e)) => self
                    .bad_reference(shard, c, e.seq)
                    .map(|why| format!("dedup entry names seq {}{why}", e.seq)),
            };
            if let Some(what) = what {
                self.damage(Damage {
                    shard: Some(shard),
                    conversation,
                    segment: None,
                    what,
                });
            }
        }
        Ok(())
    }

    /// Every inbox copy decodes and, when its conversation lives in the
    /// same shard, names a seq it gave out (a copy of another shard's
    /// conversation is checked there by nothing: the copy is the data);
    /// every other `im` row is readable.
    fn inboxes(&mut self, snapshot: &Snapshot<'_>) -> Result<()> {
        let mut found = Vec::new();
        let mut other_rows = 0;
        self.scan(snapshot, CF_IM, |shard, rest, value| {
            if rest.first() == Some(&codec::tag::INBOX) {
                found.push((shard, u64_at(rest, 1), InboxCopy::decode(value)));
            } else {
                other_rows += 1;
            }
            None
        })?;
        self.report.other_rows += other_rows;
        for (shard, user, entry) in found {
            self.report.inbox_entries += 1;
            let what = match entry {
                Err(reason) => Some((
                    None,
                    format!("inbox entry of user {user:?} does not decode: {reason}"),
                )),
                Ok(e) if !self.last_seqs.contains_key(&(shard, e.conversation)) => None,
                Ok(e) => self.bad_reference(shard, e.conversation, e.seq).map(|why| {
                    (
                        Some(e.conversation),
                        format!("inbox entry of user {user:?} names seq {}{why}", e.seq),
                    )
                }),
            };
            if let Some((conversation, what)) = what {
                self.damage(Damage {
                    shard: Some(shard),
                    conversation,
                    segment: None,
                    what,
                });
            }
        }
        Ok(())
    }

    /// What is wrong with a reference to `seq` of `conversation` (a dedup
    /// or inbox entry), if anything: a seq the conversation never gave out.
    fn bad_reference(&self, shard: ShardId, conversation: u64, seq: u64) -> Option<String> {
        match self.last_seqs.get(&(shard, conversation)) {
            Some(&last) if (1..=last).contains(&seq) => None,
            Some(&last) => Some(format!(" (last seq {last})")),
            None => Some(" of a conversation with no state".to_owned()),
        }
    }

    /// Every row of a column family reads back (block checksums).
    fn readable(&mut self, snapshot: &Snapshot<'_>, cf: &'static str) -> Result<()> {
        let mut rows = 0;
        self.scan(snapshot, cf, |_, _, _| {
            rows += 1;
            None
        })?;
        self.report.other_rows += rows;
        Ok(())
    }
}

// `split_shard` takes the prefix apart by hand.
const _: () = assert!(SHARD_PREFIX_LEN == 2);
