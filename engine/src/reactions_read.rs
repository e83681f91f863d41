//! Reactions as reads see them: the counts of a range of messages (which
//! `read_as` attaches to each message) and, for one reaction to one
//! message, the users who gave it, in pages by user id.

use std::collections::BTreeMap;

use super::im_read::{corrupt_value, key_id};
use super::Engine;
use crate::codec::{im_key, reaction_tail, tag, CodecError};
use crate::store::CF_IM;
use crate::{Reaction, Result};

/// The reaction and, after it, the rest of a reaction key's tail (the
/// part after the conversation and seq ids).
fn split_tail(tail: &[u8]) -> Result<(String, &[u8])> {
    let bad = || {
        corrupt_value("reaction key")(CodecError::BadLength {
            what: "reaction key".into(),
            len: tail.len(),
        })
    };
    let (&len, rest) = tail.split_first().ok_or_else(bad)?;
    let (reaction, rest) = rest.split_at_checked(usize::from(len)).ok_or_else(bad)?;
    let reaction = String::from_utf8(reaction.to_vec()).map_err(|_| bad())?;
    Ok((reaction, rest))
}

/// Bytes of the tag and the two ids that start a reaction key.
const IDS: usize = 1 + 16;

impl Engine {
    /// The reactions of `conversation`'s messages `lo..=hi`, by seq, each
    /// message's in byte order of the reaction.
    pub(super) fn reactions_in(
        &self,
        conversation: u64,
        lo: u64,
        hi: u64,
    ) -> Result<BTreeMap<u64, Vec<Reaction>>> {
        let mut out: BTreeMap<u64, Vec<Reaction>> = BTreeMap::new();
        for (key, value) in self.store().scan_in(
            CF_IM,
            &im_key(tag::REACTION_COUNT, &[conversation, lo], &[]),
            &im_key(
                tag::REACTION_COUNT,
                &[conversation, hi.saturating_add(1)],
                &[],
            ),
            usize::MAX,
        )? {
            let seq = key_id(&key, 1)?;
            let (reaction, _) = split_tail(key.get(IDS..).unwrap_or_default())?;
            let count = crate::store::decode_u64(&value, "reaction count")?;
            out.entry(seq)
                .or_default()
                .push(Reaction { reaction, count });
        }
        // Keys sort shorter reactions first (their length leads the tail);
        // answers list them in byte order.
        for reactions in out.values_mut() {
            reactions.sort_by(|a, b| a.reaction.cmp(&b.reaction));
        }
        Ok(out)
    }

    /// The users who gave `reaction` to message `seq` of `conversation`,
    /// with ids above `after`, ascending, at most `limit`.
    pub fn reactors(
        &self,
        conversation: u64,
        seq: u64,
        reaction: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>> {
        self.check_limit(limit)?;
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let prefix = reaction_tail(reaction, None);
        let mut lo_tail = prefix.clone();
        lo_tail.extend_from_slice(&start.to_be_bytes());
        let mut hi_tail = prefix;
        hi_tail.extend_from_slice(&u64::MAX.to_be_bytes());
        hi_tail.push(0);
        self.store()
            .scan_in(
                CF_IM,
                &im_key(tag::REACTION, &[conversation, seq], &lo_tail),
                &im_key(tag::REACTION, &[conversation, seq], &hi_tail),
                limit,
            )?
            .into_iter()
            .map(|(key, _)| {
                let (_, user) = split_tail(key.get(IDS..).unwrap_or_default())?;
                let user: [u8; 8] = user.try_into().map_err(|_| {
                    corrupt_value("reaction key")(CodecError::BadLength {
                        what: "reaction key user".into(),
                        len: user.len(),
                    })
                })?;
                Ok(u64::from_be_bytes(user))
            })
            .collect()
    }
}
