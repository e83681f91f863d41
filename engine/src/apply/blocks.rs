//! Blocks: `user` blocks `other` in the pair's shard (`K user other`),
//! where the pair's direct conversation and friend rows are, so a direct
//! send or a friend request is checked against it in the same apply; the
//! user's own list (`L user other`) follows in the user's shard through
//! [`Effect::Block`].

use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{im_key, tag, Effect};
use crate::{Error, Outcome, Result};

impl<S: CommittedState> GroupApplier<'_, S> {
    pub(super) fn block(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        other: u64,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        check_block_pair(user, other)?;
        let key = im_key(tag::BLOCK, &[user, other], &[]);
        if self.kv_get(scratch, Space::Im, &key)?.is_some() {
            return Ok(Outcome::Done);
        }
        Self::kv_put(scratch, Space::Im, key, timestamp_ms.to_be_bytes().to_vec());
        self.emit(
            scratch,
            Effect::Block {
                user,
                other,
                since_ms: Some(timestamp_ms),
            },
        )?;
        Ok(Outcome::Done)
    }

    pub(super) fn unblock(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        other: u64,
    ) -> Result<Outcome> {
        check_block_pair(user, other)?;
        let key = im_key(tag::BLOCK, &[user, other], &[]);
        if self.kv_get(scratch, Space::Im, &key)?.is_none() {
            return Ok(Outcome::Done);
        }
        Self::kv_delete(scratch, Space::Im, key);
        self.emit(
            scratch,
            Effect::Block {
                user,
                other,
                since_ms: None,
            },
        )?;
        Ok(Outcome::Done)
    }

    /// [`Error::Blocked`] if `by` blocks `user` (in the pair's shard: the
    /// caller runs there).
    pub(super) fn refuse_if_blocked(
        &mut self,
        scratch: &Pending,
        by: u64,
        user: u64,
    ) -> Result<()> {
        let key = im_key(tag::BLOCK, &[by, user], &[]);
        match self.kv_get(scratch, Space::Im, &key)? {
            Some(_) => Err(Error::Blocked { user, by }),
            None => Ok(()),
        }
    }

    /// [`Effect::Block`] in the user's shard.
    pub(super) fn apply_block_effect(
        scratch: &mut Pending,
        user: u64,
        other: u64,
        since_ms: Option<u64>,
    ) {
        let key = im_key(tag::BLOCK_LIST, &[user, other], &[]);
        match since_ms {
            Some(at) => Self::kv_put(scratch, Space::Im, key, at.to_be_bytes().to_vec()),
            None => Self::kv_delete(scratch, Space::Im, key),
        }
    }
}

fn check_block_pair(user: u64, other: u64) -> Result<()> {
    if user == other || user == 0 || other == 0 {
        return Err(Error::InvalidArgument(format!(
            "a block needs two distinct non-zero users, got {user} and {other}"
        )));
    }
    Ok(())
}
