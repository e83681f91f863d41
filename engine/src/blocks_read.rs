//! The block list a user keeps (`Engine::blocked`), read in the user's
//! shard, where the pair's shard delivers each block and unblock.

use super::im_read::{corrupt_value, key_id};
use super::Engine;
use crate::codec::{im_key, tag};
use crate::store::CF_IM;
use crate::Result;

/// A user someone blocks.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedUser {
    /// The blocked user.
    pub user: u64,
    /// Server time of the block.
    pub since_ms: u64,
}

impl Engine {
    /// The users `user` blocks with ids above `after`, ascending, at most
    /// `limit`: the list kept in the user's shard (on a cluster, as of the
    /// last delivery from the pairs' shards, where blocks are checked).
    pub fn blocked(&self, user: u64, after: u64, limit: usize) -> Result<Vec<BlockedUser>> {
        self.check_limit(limit)?;
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let lo = im_key(tag::BLOCK_LIST, &[user, start], &[]);
        let hi = im_key(tag::BLOCK_LIST, &[user.saturating_add(1)], &[]);
        self.store()
            .scan_in(CF_IM, &lo, &hi, limit)?
            .into_iter()
            .map(|(key, value)| {
                let since: [u8; 8] = value.as_slice().try_into().map_err(|_| {
                    corrupt_value("block row")(crate::codec::CodecError::BadLength {
                        what: "block row".into(),
                        len: value.len(),
                    })
                })?;
                Ok(BlockedUser {
                    user: key_id(&key, 1)?,
                    since_ms: u64::from_be_bytes(since),
                })
            })
            .collect()
    }
}
