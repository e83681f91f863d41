//! History: clearing a conversation's messages up to a seq, and its
//! retention setting.

use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{self, im_key, tag};
use crate::{Entity, Error, Outcome, Result};

impl<S: CommittedState> GroupApplier<'_, S> {
    pub(super) fn clear_history(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        before_seq: u64,
    ) -> Result<Outcome> {
        // Plain timelines keep the 33-byte state, which has no room for the
        // cut; retention is for direct and group conversations.
        let mut state = self.managed(scratch, conversation)?;
        if before_seq > state.last_seq.saturating_add(1) {
            return Err(Error::SeqBeyondLast {
                conversation,
                seq: before_seq,
                last: state.last_seq,
            });
        }
        if before_seq <= state.first_retained() {
            return Ok(Outcome::Done);
        }
        self.clear_copies(scratch, conversation, state.first_retained(), before_seq)?;
        // Segments wholly below the cut go: everything before the segment
        // that holds `before_seq`, or every segment when the cut is past
        // the last message (the next append then starts a new segment).
        let cut = if before_seq > state.last_seq {
            state.open_records = 0;
            state.open_bytes = 0;
            before_seq
        } else {
            let pending = [&scratch.segments, &self.group.segments]
                .into_iter()
                .flat_map(|layer| {
                    layer
                        .range((conversation, 0)..=(conversation, before_seq))
                        .map(|(&(_, base), _)| base)
                })
                .max();
            let committed = self.state.segment_base(conversation, before_seq)?;
            pending.max(committed).unwrap_or(0)
        };
        state.cleared_before = before_seq;
        scratch.conversations.insert(conversation, state);
        self.touch_cleared_views(scratch, conversation)?;
        scratch.range_deletes.push((
            Space::Segments,
            codec::segment_key(conversation, 0).to_vec(),
            codec::segment_key(conversation, cut).to_vec(),
        ));
        scratch.range_deletes.push((
            Space::Receipts,
            codec::receipt_key(conversation, 0).to_vec(),
            codec::receipt_key(conversation, before_seq).to_vec(),
        ));
        for kind in [
            tag::OVERLAY,
            tag::REACTION,
            tag::REACTION_COUNT,
            tag::MENTIONS,
        ] {
            scratch.range_deletes.push((
                Space::Im,
                im_key(kind, &[conversation, 0], &[]),
                im_key(kind, &[conversation, before_seq], &[]),
            ));
        }
        scratch.cleared.insert(conversation);
        Ok(Outcome::Done)
    }

    pub(super) fn set_retention(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        ttl_ms: u64,
    ) -> Result<Outcome> {
        let mut state = self.conversation(scratch, conversation)?;
        if !state.is_managed() {
            return Err(Error::NotFound {
                what: Entity::Conversation,
                id: conversation,
            });
        }
        state.ttl_ms = ttl_ms;
        scratch.conversations.insert(conversation, state);
        let key = im_key(tag::RETENTION, &[conversation], &[]);
        if ttl_ms == 0 {
            Self::kv_delete(scratch, Space::Im, key);
        } else {
            Self::kv_put(scratch, Space::Im, key, ttl_ms.to_be_bytes().to_vec());
        }
        Ok(Outcome::Done)
    }
}
