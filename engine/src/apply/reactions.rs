//! Reactions: a row per (message, reaction, user) and a count per
//! (message, reaction), keyed by the message id in the conversation's
//! shard; the segments are untouched.

use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{im_key, reaction_tail, tag};
use crate::{Error, Outcome, Result, MAX_REACTION_BYTES};

impl<S: CommittedState> GroupApplier<'_, S> {
    pub(super) fn react(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        seq: u64,
        user: u64,
        reaction: &str,
        add: bool,
    ) -> Result<Outcome> {
        if reaction.is_empty() || reaction.len() > MAX_REACTION_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a reaction is 1 to {MAX_REACTION_BYTES} bytes, not {}",
                reaction.len()
            )));
        }
        self.message_seen_by(scratch, conversation, seq, user)?;
        let key = im_key(
            tag::REACTION,
            &[conversation, seq],
            &reaction_tail(reaction, Some(user)),
        );
        let present = self.kv_get(scratch, Space::Im, &key)?.is_some();
        if present == add {
            return Ok(Outcome::Done);
        }
        let count_key = im_key(
            tag::REACTION_COUNT,
            &[conversation, seq],
            &reaction_tail(reaction, None),
        );
        let count = match self.kv_get(scratch, Space::Im, &count_key)? {
            Some(v) => crate::store::decode_u64(&v, "reaction count")?,
            None => 0,
        };
        if add {
            Self::kv_put(scratch, Space::Im, key, Vec::new());
            let count = count.saturating_add(1);
            Self::kv_put(scratch, Space::Im, count_key, count.to_be_bytes().to_vec());
        } else {
            Self::kv_delete(scratch, Space::Im, key);
            match count.saturating_sub(1) {
                0 => Self::kv_delete(scratch, Space::Im, count_key),
                left => Self::kv_put(scratch, Space::Im, count_key, left.to_be_bytes().to_vec()),
            }
        }
        scratch.reacted.push((conversation, seq));
        Ok(Outcome::Done)
    }
}
