//! Friends: requests, acceptances, declines and removals, each pair's
//! rows written together in the pair's shard, and each side sent on to
//! its user's shard ([`Effect::Friend`]), whose list `ListFriends` reads.

use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{im_key, tag, Effect, FriendEntry, FriendStatus};
use crate::{Entity, Error, FriendOutcome, Outcome, Result};

impl<S: CommittedState> GroupApplier<'_, S> {
    fn put_friend(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        other: u64,
        entry: FriendEntry,
    ) -> Result<()> {
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::FRIEND, &[user, other], &[]),
            entry.encode(),
        );
        self.emit(
            scratch,
            Effect::Friend {
                user,
                other,
                entry: Some(entry),
            },
        )
    }

    fn delete_friend_pair(&mut self, scratch: &mut Pending, a: u64, b: u64) -> Result<()> {
        for (user, other) in [(a, b), (b, a)] {
            Self::kv_delete(scratch, Space::Im, im_key(tag::FRIEND, &[user, other], &[]));
            self.emit(
                scratch,
                Effect::Friend {
                    user,
                    other,
                    entry: None,
                },
            )?;
        }
        Ok(())
    }

    /// [`Effect::Friend`] in the user's shard.
    pub(super) fn apply_friend_effect(
        scratch: &mut Pending,
        user: u64,
        other: u64,
        entry: Option<FriendEntry>,
    ) {
        let key = im_key(tag::FRIEND_LIST, &[user, other], &[]);
        match entry {
            Some(entry) => Self::kv_put(scratch, Space::Im, key, entry.encode()),
            None => Self::kv_delete(scratch, Space::Im, key),
        }
    }

    pub(super) fn check_pair(a: u64, b: u64) -> Result<()> {
        if a == b || a == 0 || b == 0 {
            return Err(Error::InvalidArgument(format!(
                "friendship needs two distinct non-zero users, got {a} and {b}"
            )));
        }
        Ok(())
    }

    pub(super) fn become_friends(
        &mut self,
        scratch: &mut Pending,
        a: u64,
        b: u64,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        let (conversation, _) = self.open_direct(scratch, a, b, timestamp_ms)?;
        let entry = FriendEntry {
            status: FriendStatus::Friends,
            since_ms: timestamp_ms,
            conversation,
        };
        self.put_friend(scratch, a, b, entry)?;
        self.put_friend(scratch, b, a, entry)?;
        Ok(Outcome::Friend(FriendOutcome::BecameFriends {
            conversation,
        }))
    }

    pub(super) fn friend_request(
        &mut self,
        scratch: &mut Pending,
        from: u64,
        to: u64,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        Self::check_pair(from, to)?;
        self.refuse_if_blocked(scratch, to, from)?;
        match self.friend(scratch, from, to)? {
            Some(FriendEntry {
                status: FriendStatus::Friends,
                conversation,
                ..
            }) => Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                conversation,
            })),
            Some(FriendEntry {
                status: FriendStatus::Outgoing,
                ..
            }) => Ok(Outcome::Friend(FriendOutcome::AlreadyRequested)),
            // They asked first: asking back is accepting.
            Some(FriendEntry {
                status: FriendStatus::Incoming,
                ..
            }) => self.become_friends(scratch, from, to, timestamp_ms),
            None => {
                let side = |status| FriendEntry {
                    status,
                    since_ms: timestamp_ms,
                    conversation: 0,
                };
                self.put_friend(scratch, from, to, side(FriendStatus::Outgoing))?;
                self.put_friend(scratch, to, from, side(FriendStatus::Incoming))?;
                Ok(Outcome::Friend(FriendOutcome::Requested))
            }
        }
    }

    pub(super) fn friend_accept(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        requester: u64,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        Self::check_pair(user, requester)?;
        match self.friend(scratch, user, requester)? {
            Some(FriendEntry {
                status: FriendStatus::Incoming,
                ..
            }) => self.become_friends(scratch, user, requester, timestamp_ms),
            Some(FriendEntry {
                status: FriendStatus::Friends,
                conversation,
                ..
            }) => Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                conversation,
            })),
            _ => Err(Error::NotFound {
                what: Entity::FriendRequest,
                id: requester,
            }),
        }
    }

    pub(super) fn friend_decline(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        requester: u64,
    ) -> Result<Outcome> {
        Self::check_pair(user, requester)?;
        match self.friend(scratch, user, requester)? {
            Some(FriendEntry {
                status: FriendStatus::Incoming,
                ..
            }) => {
                self.delete_friend_pair(scratch, user, requester)?;
                Ok(Outcome::Friend(FriendOutcome::Declined))
            }
            _ => Err(Error::NotFound {
                what: Entity::FriendRequest,
                id: requester,
            }),
        }
    }

    pub(super) fn friend_remove(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        friend: u64,
    ) -> Result<Outcome> {
        Self::check_pair(user, friend)?;
        match self.friend(scratch, user, friend)? {
            Some(FriendEntry {
                status: FriendStatus::Friends,
                ..
            }) => {
                self.delete_friend_pair(scratch, user, friend)?;
                Ok(Outcome::Friend(FriendOutcome::Removed))
            }
            Some(FriendEntry {
                status: FriendStatus::Outgoing,
                ..
            }) => {
                self.delete_friend_pair(scratch, user, friend)?;
                Ok(Outcome::Friend(FriendOutcome::Declined))
            }
            _ => Err(Error::NotFound {
                what: Entity::Friend,
                id: friend,
            }),
        }
    }
}
