//! One page of a conversation as many members see it
//! ([`Engine::viewer_pages`]): the messages read and their recalls and
//! edits looked up once, each viewer's cut of them (membership intervals,
//! own deletions) alongside. What a proxy asks for when many members read
//! the same page of a hot group at once: one backend read for all of them,
//! answered in bytes that grow with the page plus a few numbers per
//! viewer, not with a page per viewer.

use super::im_read::view;
use super::Engine;
use crate::{Direction, Error, MessageView, Result};

/// Most viewers one [`Engine::viewer_pages`] call answers.
pub const MAX_VIEWERS: usize = 10_000;

/// One page of a conversation as several viewers see it
/// ([`Engine::viewer_pages`]).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerPages {
    /// Every message some viewer's page holds, ascending, with recalls,
    /// edits and reactions applied (nobody's own deletions).
    pub messages: Vec<MessageView>,
    /// Each viewer asked about, once, by ascending id: its cut of
    /// `messages`, or why it may not read them.
    pub viewers: Vec<(u64, Result<ViewerCut>)>,
}

/// Each viewer's page ranges (inclusive, ascending), or why it may not
/// read, by ascending viewer.
pub(super) type ViewerRanges = Vec<(u64, Result<Vec<(u64, u64)>>)>;

/// One viewer's page of [`ViewerPages::messages`].
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerCut {
    /// The seq ranges (inclusive, ascending) of the viewer's page.
    pub ranges: Vec<(u64, u64)>,
    /// The seqs of the page the viewer deleted for themself, ascending.
    pub deleted: Vec<u64>,
}

impl Engine {
    /// Messages of `conversation` as each of `viewers` reads them with
    /// [`Engine::read_as`]`(viewer, conversation, from, limit,
    /// direction)`: [`ViewerPages::page`] of a viewer is that call's
    /// answer, its error included (a viewer who never was a member gets
    /// `NotAMember`). Errors of the whole call: 0 or more than
    /// [`MAX_VIEWERS`] viewers, a bad limit, an unknown conversation, and
    /// a damaged record of any viewer's page.
    pub fn viewer_pages(
        &self,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
        viewers: &[u64],
    ) -> Result<ViewerPages> {
        let (cuts, wanted) = self.viewer_ranges(conversation, from, limit, direction, viewers)?;
        let mut messages = Vec::new();
        for (lo, hi) in wanted {
            self.read_range(conversation, lo, hi, limit, &mut messages)?;
        }
        let (overlays, mut reactions) = match (messages.first(), messages.last()) {
            (Some(lo), Some(hi)) => (
                self.overlays_in(conversation, lo.seq, hi.seq)?,
                self.reactions_in(conversation, lo.seq, hi.seq)?,
            ),
            _ => Default::default(),
        };
        let messages: Vec<MessageView> = messages
            .into_iter()
            .map(|m| {
                let seq = m.seq;
                let mut v = view(m, overlays.get(&seq), false);
                v.reactions = reactions.remove(&seq).unwrap_or_default();
                v
            })
            .collect();
        let viewers = self.viewer_cuts(conversation, cuts)?;
        Ok(ViewerPages { messages, viewers })
    }

    /// The messages of `conversation` from `lo` to `hi` (inclusive),
    /// read `limit` at a time, appended to `out`.
    pub(super) fn read_range(
        &self,
        conversation: u64,
        lo: u64,
        hi: u64,
        limit: usize,
        out: &mut Vec<crate::Message>,
    ) -> Result<()> {
        let mut at = lo;
        while at <= hi {
            let want = usize::try_from(hi - at + 1)
                .unwrap_or(usize::MAX)
                .min(limit);
            let read = self.read(conversation, at, want, Direction::Forward)?;
            let Some(last) = read.last().map(|m| m.seq) else {
                break;
            };
            out.extend(read);
            at = last.saturating_add(1);
        }
        Ok(())
    }

    /// Each viewer's page ranges (or why it may not read), by ascending
    /// viewer, and the ranges of all of them merged: checks the count of
    /// viewers, the limit and the conversation.
    pub(super) fn viewer_ranges(
        &self,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
        viewers: &[u64],
    ) -> Result<(ViewerRanges, Vec<(u64, u64)>)> {
        if viewers.is_empty() || viewers.len() > MAX_VIEWERS {
            return Err(Error::InvalidArgument(format!(
                "viewer pages are asked for 1 to {MAX_VIEWERS} viewers, not {}",
                viewers.len()
            )));
        }
        self.check_limit(limit)?;
        let state = self.managed_state(conversation)?;
        let first = state.first_retained();
        let mut viewers = viewers.to_vec();
        viewers.sort_unstable();
        viewers.dedup();
        let mut cuts = Vec::with_capacity(viewers.len());
        let mut wanted = Vec::new();
        for viewer in viewers {
            let ranges = self.viewer_entry(conversation, viewer).map(|entry| {
                // Each member interval (joined after j, left at l) clipped
                // to what the conversation still holds, as read_as does.
                let intervals: Vec<(u64, u64)> = entry
                    .intervals
                    .iter()
                    .map(|&(j, l)| (j.saturating_add(1).max(first), l.min(state.last_seq)))
                    .filter(|&(lo, hi)| lo <= hi)
                    .collect();
                page_ranges(&intervals, from, limit, direction)
            });
            match ranges {
                Ok(ranges) => {
                    wanted.extend_from_slice(&ranges);
                    cuts.push((viewer, Ok(ranges)));
                }
                Err(e) => cuts.push((viewer, Err(e.in_conversation(conversation, None)))),
            }
        }
        Ok((cuts, merge(wanted)))
    }

    /// Each viewer's cut: its ranges and its own deletions in them.
    pub(super) fn viewer_cuts(
        &self,
        conversation: u64,
        cuts: ViewerRanges,
    ) -> Result<Vec<(u64, Result<ViewerCut>)>> {
        let mut viewers = Vec::with_capacity(cuts.len());
        for (viewer, ranges) in cuts {
            let cut = match ranges {
                Ok(ranges) => {
                    let deleted = match (ranges.first(), ranges.last()) {
                        (Some(&(lo, _)), Some(&(_, hi))) => self
                            .hidden_in(viewer, conversation, lo, hi)?
                            .into_iter()
                            .collect(),
                        _ => Vec::new(),
                    };
                    Ok(ViewerCut { ranges, deleted })
                }
                Err(e) => Err(e),
            };
            viewers.push((viewer, cut));
        }
        Ok(viewers)
    }
}

/// The seq ranges (ascending) of the page that starts at `from` (ends at
/// it, backward) and holds at most `limit` seqs of `intervals` (ascending,
/// disjoint, inclusive): what [`Engine::read_as`] reads.
fn page_ranges(
    intervals: &[(u64, u64)],
    from: u64,
    limit: usize,
    direction: Direction,
) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut left = limit as u64;
    match direction {
        Direction::Forward => {
            for &(lo, hi) in intervals {
                let start = lo.max(from);
                if start > hi || left == 0 {
                    continue;
                }
                let take = left.min(hi - start + 1);
                ranges.push((start, start + take - 1));
                left -= take;
            }
        }
        Direction::Backward => {
            for &(lo, hi) in intervals.iter().rev() {
                let end = hi.min(from);
                if end < lo || left == 0 {
                    continue;
                }
                let take = left.min(end - lo + 1);
                ranges.push((end + 1 - take, end));
                left -= take;
            }
            ranges.reverse();
        }
    }
    ranges
}

/// `ranges` sorted, with overlapping and touching ones joined.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

impl ViewerPages {
    /// `viewer`'s page, as [`Engine::read_as`] answers it; `None` if the
    /// viewer was not asked about.
    pub fn page(&self, viewer: u64) -> Option<Result<Vec<MessageView>>> {
        let at = self
            .viewers
            .binary_search_by_key(&viewer, |(v, _)| *v)
            .ok()?;
        let (_, cut) = self.viewers.get(at)?;
        Some(match cut {
            Err(e) => Err(e.clone()),
            Ok(cut) => Ok(self
                .messages
                .iter()
                .filter(|m| {
                    let seq = m.message.seq;
                    cut.ranges.iter().any(|&(lo, hi)| lo <= seq && seq <= hi)
                })
                .map(|m| {
                    let mut m = m.clone();
                    if cut.deleted.binary_search(&m.message.seq).is_ok() {
                        m.deleted_for_me = true;
                        m.message.payload = bytes::Bytes::new();
                    }
                    m
                })
                .collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_walk_the_intervals_as_read_as_does() {
        let intervals = [(1, 10), (21, 30)];
        assert_eq!(
            page_ranges(&intervals, 5, 8, Direction::Forward),
            vec![(5, 10), (21, 22)]
        );
        assert_eq!(
            page_ranges(&intervals, u64::MAX, 15, Direction::Backward),
            vec![(6, 10), (21, 30)]
        );
        assert_eq!(
            page_ranges(&intervals, 15, 3, Direction::Backward),
            vec![(8, 10)]
        );
        assert!(page_ranges(&intervals, 31, 3, Direction::Forward).is_empty());
        assert!(page_ranges(&[], 1, 3, Direction::Forward).is_empty());
        assert_eq!(
            merge(vec![(5, 9), (1, 3), (4, 4), (20, 21)]),
            vec![(1, 9), (20, 21)]
        );
    }
}
