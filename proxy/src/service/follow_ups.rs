//! The shards each user's last user-wide read asked in its second round
//! (the shards of the user's big groups it read), so that the user's next
//! user-wide read starts their read barriers when it begins
//! ([`crate::Backend::start_read_barriers`]), alongside its first round's,
//! instead of after it (`docs/replication.md`, "User shards").
//!
//! A guess, never an answer: what a read returns comes from its own
//! rounds. A shard guessed but not asked costs one read-index round that
//! nothing joins; a shard asked but not guessed takes its barrier in the
//! second round, as without the guess.

use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Users whose guesses are kept; the least recently reading go first.
const USERS: NonZeroUsize = match NonZeroUsize::new(65_536) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// Most shards guessed for one user: a user in more big groups than this
/// reads their shards in the second round, one batched round.
pub(super) const MAX_GUESSED_SHARDS: usize = 16;

pub(super) struct FollowUps {
    users: Mutex<lru::LruCache<u64, Box<[u64]>>>,
}

impl Default for FollowUps {
    fn default() -> Self {
        FollowUps {
            users: Mutex::new(lru::LruCache::new(USERS)),
        }
    }
}

impl FollowUps {
    /// The shards `user`'s last second round asked (none if unknown).
    pub(super) fn guess(&self, user: u64) -> Box<[u64]> {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .cloned()
            .unwrap_or_default()
    }

    /// Keeps `shards` (sorted, distinct) as `user`'s guess; more than
    /// [`MAX_GUESSED_SHARDS`] are not kept.
    pub(super) fn note(&self, user: u64, shards: &[u64]) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if shards.len() > MAX_GUESSED_SHARDS {
            users.pop(&user);
        } else if users.peek(&user).map(|kept| &**kept) != Some(shards) {
            users.put(user, shards.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guess_is_the_last_second_round_and_a_large_one_is_dropped() {
        let follow_ups = FollowUps::default();
        assert!(follow_ups.guess(7).is_empty(), "unknown user");
        follow_ups.note(7, &[1, 4]);
        assert_eq!(&*follow_ups.guess(7), &[1, 4]);
        follow_ups.note(7, &[2]);
        assert_eq!(&*follow_ups.guess(7), &[2], "replaced, not merged");
        let many: Vec<u64> = (0..=MAX_GUESSED_SHARDS as u64).collect();
        follow_ups.note(7, &many);
        assert!(follow_ups.guess(7).is_empty(), "too many to guess");
        assert!(follow_ups.guess(8).is_empty(), "other users unaffected");
    }
}
