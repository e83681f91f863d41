//! A page of a conversation in parts a proxy can cache
//! ([`Engine::page_parts`], [`PageParts::assemble`]): sealed segments never
//! change, so a proxy keeps them by (conversation, base) and asks the
//! shard only for what may change or it lacks: the sealed segments of the
//! page it does not hold (whole, raw), the messages of the open segment,
//! the recalls, edits and reactions of the page's range, and each viewer's
//! cut (membership, clearing and retention, own deletions), all as of the
//! read. Put together, the parts give exactly [`Engine::viewer_pages`]'s
//! answer: a cleared or expired message is outside every cut, and an
//! overlay comes fresh with each read, so a cached segment never shows
//! what the shard would not.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::im_read::view;
use super::viewer_pages::ViewerCut;
use super::Engine;
use crate::codec::{self, OverlayEntry};
use crate::{Direction, Error, Message, MessageView, Reaction, Result, ViewerPages};

/// Most sealed segments a proxy may say it holds in one ask.
pub const MAX_CACHED_SEGMENTS: usize = 10_000;

/// One page of a conversation for several viewers, in parts
/// ([`Engine::page_parts`]).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageParts {
    /// The conversation.
    pub conversation: u64,
    /// The page's seq ranges, all viewers together (ascending, disjoint).
    pub ranges: Vec<(u64, u64)>,
    /// Bases of the sealed segments the page reads, ascending: those the
    /// asker said it holds, and those in `sealed`.
    pub bases: Vec<u64>,
    /// The sealed segments of the page the asker does not hold: base and
    /// raw bytes (CRC-framed records, `docs/format.md`).
    pub sealed: Vec<(u64, Bytes)>,
    /// The page's messages in the open segment, ascending.
    pub open: Vec<Message>,
    /// Recalls and edits in the page's range.
    pub overlays: Vec<(u64, OverlayEntry)>,
    /// Reactions in the page's range.
    pub reactions: Vec<(u64, Vec<Reaction>)>,
    /// Each viewer's cut, as in [`ViewerPages::viewers`].
    pub viewers: Vec<(u64, Result<ViewerCut>)>,
}

/// A sealed segment's messages, ascending from its base.
pub type SealedMessages = Arc<Vec<Message>>;

impl Engine {
    /// [`Engine::viewer_pages`] in parts: the same page for the same
    /// viewers, but the sealed segments in `cached` (bases the asker
    /// holds) are left out, and the others of the page come whole and raw
    /// for the asker to keep. Errors: those of `viewer_pages`, and more
    /// than [`MAX_CACHED_SEGMENTS`] bases.
    pub fn page_parts(
        &self,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
        viewers: &[u64],
        cached: &[u64],
    ) -> Result<PageParts> {
        if cached.len() > MAX_CACHED_SEGMENTS {
            return Err(Error::InvalidArgument(format!(
                "a page is asked with at most {MAX_CACHED_SEGMENTS} cached segments, not {}",
                cached.len()
            )));
        }
        let (cuts, ranges) = self.viewer_ranges(conversation, from, limit, direction, viewers)?;
        let mut cached = cached.to_vec();
        cached.sort_unstable();
        // The state after the cuts: a segment sealed then is sealed now.
        let open_base = self.managed_state(conversation)?.open_base;
        let store = self.view();
        let mut bases = Vec::new();
        let mut sealed = Vec::new();
        let mut open = Vec::new();
        for &(lo, hi) in &ranges {
            if lo < open_base {
                let sealed_hi = hi.min(open_base - 1);
                for (base, bytes) in crate::read::raw_segments(&store, conversation, lo, sealed_hi)?
                {
                    if base >= open_base || bases.last().is_some_and(|&b| b >= base) {
                        continue;
                    }
                    bases.push(base);
                    if cached.binary_search(&base).is_err() {
                        sealed.push((base, bytes));
                    }
                }
            }
            self.read_range(conversation, lo.max(open_base), hi, limit, &mut open)?;
        }
        let (overlays, reactions) = match (ranges.first(), ranges.last()) {
            (Some(&(lo, _)), Some(&(_, hi))) => (
                self.overlays_in(conversation, lo, hi)?
                    .into_iter()
                    .collect(),
                self.reactions_in(conversation, lo, hi)?
                    .into_iter()
                    .collect(),
            ),
            _ => Default::default(),
        };
        Ok(PageParts {
            conversation,
            ranges,
            bases,
            sealed,
            open,
            overlays,
            reactions,
            viewers: self.viewer_cuts(conversation, cuts)?,
        })
    }
}

impl PageParts {
    /// The page, from these parts and the sealed segments the asker holds
    /// (`cached`, by base), as [`Engine::viewer_pages`] answers it; and
    /// the sealed segments the parts brought, decoded, for the asker to
    /// keep. Errors: a segment that does not decode (`Corruption`), or one
    /// the page reads that is neither brought nor held.
    pub fn assemble(
        self,
        cached: impl Fn(u64) -> Option<SealedMessages>,
    ) -> Result<(ViewerPages, Vec<(u64, SealedMessages)>)> {
        let conversation = self.conversation;
        let mut brought = Vec::with_capacity(self.sealed.len());
        for (base, bytes) in &self.sealed {
            brought.push((*base, Arc::new(decode_sealed(conversation, *base, bytes)?)));
        }
        let mut segments: Vec<SealedMessages> = Vec::with_capacity(self.bases.len());
        for base in &self.bases {
            let found = match brought.binary_search_by_key(base, |(b, _)| *b) {
                Ok(at) => Some(Arc::clone(&brought[at].1)),
                Err(_) => cached(*base),
            };
            segments.push(found.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "segment {base} of conversation {conversation} is neither held nor brought"
                ))
            })?);
        }
        let in_page = |seq: u64| self.ranges.iter().any(|&(lo, hi)| lo <= seq && seq <= hi);
        let overlays: BTreeMap<u64, OverlayEntry> = self.overlays.into_iter().collect();
        let mut reactions: BTreeMap<u64, Vec<Reaction>> = self.reactions.into_iter().collect();
        let messages: Vec<MessageView> = segments
            .iter()
            .flat_map(|s| s.iter())
            .filter(|m| in_page(m.seq))
            .cloned()
            .chain(self.open.into_iter().filter(|m| in_page(m.seq)))
            .map(|m| {
                let seq = m.seq;
                let mut v = view(m, overlays.get(&seq), false);
                v.reactions = reactions.remove(&seq).unwrap_or_default();
                v
            })
            .collect();
        Ok((
            ViewerPages {
                messages,
                viewers: self.viewers,
            },
            brought,
        ))
    }
}

/// The messages of a sealed segment's bytes, each record's CRC and seq
/// checked.
fn decode_sealed(conversation: u64, base: u64, bytes: &Bytes) -> Result<Vec<Message>> {
    let records = codec::decode_segment(bytes, base).map_err(|reason| Error::Corruption {
        conversation,
        segment: base,
        reason,
    })?;
    Ok(records
        .into_iter()
        .map(|r| Message {
            conversation,
            seq: r.seq,
            sender: r.sender,
            timestamp_ms: r.timestamp_ms,
            client_msg_id: bytes.slice_ref(r.client_msg_id),
            payload: bytes.slice_ref(r.payload),
        })
        .collect())
}
