//! Sync: a user's new inbox entries and the big conversations that
//! advanced, with one cursor per user on any number of shards
//! (`docs/im.md`, "Sync"; `docs/replication.md`, "User shards").
//!
//! A sync has two parts. The user's shard answers the inbox page and the
//! user's remote views ([`Engine::user_sync`]): the conversations a send
//! can advance without a copy in the inbox. Each of those conversations'
//! shards answers where it stands for the user ([`Engine::big_heads`]),
//! one batched read per shard, and only of those whose newest message sent
//! without copies is past what the cursor reported (a state lookup each;
//! the member row only for those). [`finish_sync`] puts the two together
//! against the cursor: a big conversation is reported when its head for
//! the user is past the seq the cursor says it was reported up to. Nothing
//! in it counts shards, so its cost grows with the user's big
//! conversations, never with the cluster.

use bytes::Bytes;

use super::im_read::{corrupt_value, key_id};
use super::Engine;
use crate::codec::{im_key, tag, InboxCopy, SyncCursor};
use crate::store::CF_IM;
use crate::{Advanced, Command, Error, MessageView, Result, SyncPage};

/// The user's shard's part of a sync page.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserSyncPage {
    /// New inbox entries after the cursor, oldest first (entries whose
    /// message was cleared are skipped).
    pub messages: Vec<(u64, MessageView)>,
    /// The inbox seq the page ends at.
    pub inbox_seq: u64,
    /// More inbox entries are waiting.
    pub more: bool,
    /// The user's remote views, ascending: the conversations whose heads
    /// their shards answer ([`Engine::big_heads`]).
    pub remote: Vec<u64>,
}

impl UserSyncPage {
    /// The conversations the page may name: its entries' and the remote
    /// views', ascending, each once.
    pub fn conversations(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .messages
            .iter()
            .map(|(_, m)| m.message.conversation)
            .chain(self.remote.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Where a big conversation stands for one user.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BigHead {
    /// The conversation.
    pub conversation: u64,
    /// The newest seq sent without write fan-out that the user may see
    /// and that is still kept (0: none).
    pub last_seq: u64,
    /// The shard's change counter at that send (what a cursor from before
    /// data format 7 is compared with).
    pub changed_at: u64,
}

/// A sync page from the user's shard's part and the heads its shards gave
/// for the user's remote conversations ([`Engine::big_heads`]: those that
/// may have moved past the cursor), against the cursor the sync started
/// from. A head past what the cursor reported is reported; the cursor
/// returned lists, for every remote conversation, the newest seq reported,
/// so each advance is reported once. A cursor from before data format 7
/// (`change` set, nothing reported) counts a conversation as reported up
/// to its head when its last advance is at or below that change counter,
/// which is what that cursor meant.
pub fn finish_sync(from: &SyncCursor, page: UserSyncPage, mut heads: Vec<BigHead>) -> SyncPage {
    heads.sort_by_key(|h| h.conversation);
    heads.dedup_by_key(|h| h.conversation);
    let mut advanced = Vec::new();
    let mut reported = Vec::new();
    for &conversation in &page.remote {
        let mut was = from.reported_seq(conversation);
        // No head: it cannot have moved past what was reported.
        let head = match heads.binary_search_by_key(&conversation, |h| h.conversation) {
            Ok(i) => heads[i],
            Err(_) => BigHead {
                conversation,
                last_seq: was,
                changed_at: 0,
            },
        };
        if was == 0 && from.change > 0 && head.changed_at <= from.change {
            was = head.last_seq;
        }
        if head.last_seq > was {
            advanced.push(Advanced {
                conversation,
                last_seq: head.last_seq,
            });
        }
        let now = head.last_seq.max(was);
        if now > 0 {
            reported.push(Advanced {
                conversation,
                last_seq: now,
            });
        }
    }
    SyncPage {
        messages: page.messages,
        advanced,
        cursor: SyncCursor {
            inbox_seq: page.inbox_seq,
            change: 0,
            reported,
        },
        more: page.more,
        settings: Vec::new(),
    }
}

impl Engine {
    /// New inbox entries and the big conversations that advanced since
    /// `cursor`, on a one-shard store (a sharded one puts
    /// [`Engine::user_sync`] and [`Engine::big_heads`] of several shards
    /// together). Pass the returned cursor to the next call; a default
    /// cursor starts from the beginning. Each inbox entry is returned once;
    /// each big conversation is reported once per advance.
    pub fn sync(&self, user: u64, cursor: SyncCursor, limit: usize) -> Result<SyncPage> {
        let page = self.user_sync(user, &cursor, limit)?;
        let heads = self.big_heads(user, &cursor.asked(&page.remote))?;
        let settings = self.conversation_settings(user, &page.conversations())?;
        Ok(finish_sync(&cursor, page, heads).with_settings(settings))
    }

    /// The user's shard's part of a sync: inbox entries after the cursor's
    /// inbox seq, and the user's remote views.
    pub fn user_sync(&self, user: u64, cursor: &SyncCursor, limit: usize) -> Result<UserSyncPage> {
        self.check_limit(limit)?;
        let change_now = self.change_counter();
        let inbox_last = self.store().inbox_last(user)?;
        if cursor.inbox_seq > inbox_last || cursor.change > change_now {
            return Err(Error::CursorFromFuture {
                change: cursor.change,
                store_change: change_now,
                inbox_seq: Some(cursor.inbox_seq),
                store_inbox_seq: Some(inbox_last),
            });
        }
        let lo = im_key(tag::INBOX, &[user, cursor.inbox_seq.saturating_add(1)], &[]);
        let hi = im_key(tag::INBOX, &[user.saturating_add(1)], &[]);
        let rows = self.store().scan_in(CF_IM, &lo, &hi, limit + 1)?;
        let more = rows.len() > limit;
        let mut inbox_seq = cursor.inbox_seq;
        let mut messages = Vec::new();
        for (key, value) in rows.into_iter().take(limit) {
            inbox_seq = key_id(&key, 1)?;
            let copy = InboxCopy::decode(&value).map_err(corrupt_value("inbox copy"))?;
            // Nothing when retention or a clear removed the message.
            if !copy.cleared {
                messages.push((inbox_seq, super::view_read::copy_view(copy)));
            }
        }
        Ok(UserSyncPage {
            messages,
            inbox_seq,
            more,
            remote: self.remote_views(user)?,
        })
    }

    /// Where each of `conversations` (this shard's, each with the seq it
    /// was reported up to) stands for `user`: the newest seq sent without
    /// write fan-out that the user may see, if still kept. Left out: those
    /// whose newest such message is at or below the reported seq (nothing
    /// to report: one state lookup each), and those the user never was in.
    pub fn big_heads(&self, user: u64, conversations: &[Advanced]) -> Result<Vec<BigHead>> {
        let mut asked = conversations.to_vec();
        SyncCursor::normalize_reported(&mut asked);
        let ids: Vec<u64> = asked.iter().map(|a| a.conversation).collect();
        let states = self.store().conversation_states(&ids, true)?;
        let moved: Vec<u64> = asked
            .iter()
            .zip(states)
            .filter(|(a, state)| state.big_last_seq > a.last_seq)
            .map(|(a, _)| a.conversation)
            .collect();
        Ok(self
            .memberships(user, moved)?
            .into_iter()
            .map(|(conversation, state, entry)| BigHead {
                conversation,
                last_seq: entry.big_head(&state),
                changed_at: state.big_changed_at,
            })
            .collect())
    }

    /// The sync cursor saved for a device (the default cursor if none).
    pub fn device_cursor(&self, user: u64, device: &[u8]) -> Result<SyncCursor> {
        match self
            .store()
            .get_in(CF_IM, &im_key(tag::DEVICE, &[user], device))?
        {
            Some(v) => SyncCursor::decode(&v).map_err(corrupt_value("sync cursor")),
            None => Ok(SyncCursor::default()),
        }
    }

    /// Syncs a device from the cursor the store keeps for it, after
    /// storing `ack` there (durably), the cursor of the last page the
    /// device has processed. The store never moves a device's cursor by
    /// itself: a page whose answer is lost, or that the device stops
    /// before processing, comes again with the next sync (at-least-once;
    /// the device drops what it already has by (conversation, seq)), and
    /// so does every big-conversation advance until a cursor that
    /// reports it is acknowledged.
    pub fn sync_device(
        &self,
        user: u64,
        device: &[u8],
        ack: Option<&SyncCursor>,
        limit: usize,
    ) -> Result<SyncPage> {
        let cursor = match ack {
            Some(ack) => {
                self.ack_device(user, device, ack)?;
                ack.clone()
            }
            None => self.device_cursor(user, device)?,
        };
        self.sync(user, cursor, limit)
    }

    /// Stores `cursor` as the device's (durably): it has processed every
    /// page up to it. [`Command::SaveCursor`].
    pub fn ack_device(&self, user: u64, device: &[u8], cursor: &SyncCursor) -> Result<()> {
        self.execute(Command::SaveCursor {
            user,
            device: Bytes::copy_from_slice(device),
            cursor: cursor.clone(),
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(conversation: u64, last_seq: u64, changed_at: u64) -> BigHead {
        BigHead {
            conversation,
            last_seq,
            changed_at,
        }
    }

    fn reported(pairs: &[(u64, u64)]) -> Vec<Advanced> {
        pairs
            .iter()
            .map(|&(conversation, last_seq)| Advanced {
                conversation,
                last_seq,
            })
            .collect()
    }

    fn remote(conversations: &[u64]) -> UserSyncPage {
        UserSyncPage {
            remote: conversations.to_vec(),
            ..UserSyncPage::default()
        }
    }

    #[test]
    fn a_head_is_reported_once_per_advance() {
        let start = SyncCursor::default();
        let heads = vec![head(9, 4, 1), head(3, 0, 0), head(5, 2, 2)];
        let first = finish_sync(&start, remote(&[3, 5, 9]), heads);
        assert_eq!(first.advanced, reported(&[(5, 2), (9, 4)]));
        assert_eq!(first.cursor.reported, reported(&[(5, 2), (9, 4)]));
        // Nothing moved (no head given, or the same): nothing reported,
        // the cursor stays.
        let again = finish_sync(&first.cursor, remote(&[3, 5, 9]), vec![head(9, 4, 1)]);
        assert!(again.advanced.is_empty());
        assert_eq!(again.cursor, first.cursor);
        // One advanced; a conversation no longer remote drops out.
        let third = finish_sync(&first.cursor, remote(&[9]), vec![head(9, 7, 3)]);
        assert_eq!(third.advanced, reported(&[(9, 7)]));
        assert_eq!(third.cursor.reported, reported(&[(9, 7)]));
    }

    #[test]
    fn a_cursor_from_before_format_7_keeps_its_meaning() {
        let old = SyncCursor {
            inbox_seq: 3,
            change: 10,
            reported: Vec::new(),
        };
        // Advanced at change 8 (reported then) and at change 12 (not yet).
        let heads = vec![head(1, 5, 8), head(2, 6, 12)];
        let page = finish_sync(&old, remote(&[1, 2]), heads);
        assert_eq!(page.advanced, reported(&[(2, 6)]));
        assert_eq!(page.cursor.change, 0);
        assert_eq!(page.cursor.reported, reported(&[(1, 5), (2, 6)]));
    }

    #[test]
    fn cursors_round_trip_and_version_1_still_reads(
    ) -> std::result::Result<(), crate::codec::CodecError> {
        let cursor = SyncCursor {
            inbox_seq: 7,
            change: 0,
            reported: reported(&[(1, 2), (3, 4)]),
        };
        assert_eq!(SyncCursor::decode(&cursor.encode())?, cursor);
        let old = crate::codec::CursorV1 {
            inbox_seq: 5,
            change: 9,
        };
        assert_eq!(SyncCursor::decode(&old.encode())?, SyncCursor::from(old));
        let mut truncated = cursor.encode();
        truncated.pop();
        assert!(SyncCursor::decode(&truncated).is_err());
        Ok(())
    }
}
