//! The model's friends and blocks: what a friend command or a block
//! should do, kept in the pairs' state.

use imstore_engine::placement::direct_conversation_id;
use imstore_engine::{FriendOutcome, FriendStatus, Outcome};

use super::{Expect, Model};

impl Model {
    /// `a` blocks `b` since `since` (`None`: unblocks).
    pub(super) fn block(&mut self, a: u64, b: u64, since: Option<u64>) -> Expect {
        if a == b {
            return Err("invalid argument");
        }
        match since {
            Some(at) => {
                self.blocks.entry((a, b)).or_insert(at);
            }
            None => {
                self.blocks.remove(&(a, b));
            }
        }
        Ok(Outcome::Done)
    }

    pub(super) fn friend(&mut self, kind: u8, a: u64, b: u64) -> Expect {
        if a == b {
            return Err("invalid argument");
        }
        if kind == 0 && self.blocks.contains_key(&(b, a)) {
            return Err("blocked");
        }
        let status = self.friends.get(&(a, b)).copied();
        let become_friends = |m: &mut Model| -> Expect {
            let (conversation, _) = m.open_direct(a, b)?;
            m.friends.insert((a, b), FriendStatus::Friends);
            m.friends.insert((b, a), FriendStatus::Friends);
            Ok(Outcome::Friend(FriendOutcome::BecameFriends {
                conversation,
            }))
        };
        let pair_conv = direct_conversation_id(a, b, 0);
        match (kind, status) {
            // request
            (0, Some(FriendStatus::Friends)) => {
                Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                    conversation: pair_conv,
                }))
            }
            (0, Some(FriendStatus::Outgoing)) => {
                Ok(Outcome::Friend(FriendOutcome::AlreadyRequested))
            }
            (0, Some(FriendStatus::Incoming)) => become_friends(self),
            (0, None) => {
                self.friends.insert((a, b), FriendStatus::Outgoing);
                self.friends.insert((b, a), FriendStatus::Incoming);
                Ok(Outcome::Friend(FriendOutcome::Requested))
            }
            // accept
            (1, Some(FriendStatus::Incoming)) => become_friends(self),
            (1, Some(FriendStatus::Friends)) => {
                Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                    conversation: pair_conv,
                }))
            }
            (1, _) => Err("not found"),
            // decline
            (2, Some(FriendStatus::Incoming)) => {
                self.friends.remove(&(a, b));
                self.friends.remove(&(b, a));
                Ok(Outcome::Friend(FriendOutcome::Declined))
            }
            (2, _) => Err("not found"),
            // remove
            (_, Some(s @ (FriendStatus::Friends | FriendStatus::Outgoing))) => {
                self.friends.remove(&(a, b));
                self.friends.remove(&(b, a));
                Ok(Outcome::Friend(if s == FriendStatus::Friends {
                    FriendOutcome::Removed
                } else {
                    FriendOutcome::Declined
                }))
            }
            _ => Err("not found"),
        }
    }
}
