//! The reads of a user's own shard: the conversation list and the unread
//! total, from the views the conversations' shards keep there
//! (`codec::UserView`). A local view answers here; a remote one (a big
//! group) is a pointer whose summary the conversation's shard gives
//! ([`Engine::summaries`], [`Engine::unread_sum`]). On one shard every
//! view's conversation is here too, and the reads below put both halves
//! together; a cluster's proxy does the same across shards.

use super::im_read::{cursor_order, list_order};
use super::settings_read::assemble_list;
use super::Engine;
use crate::codec::{self, activity_key, im_key, tag, InboxCopy, UserView};
use crate::store::{decode_u64, CF_IM};
use crate::{ConversationSummary, Error, ListCursor, Message, MessageView, Result};

use crate::error::corrupt_metadata as corrupt;

/// A page of a user's conversation list as their shard holds it: the
/// local views in list order, and every remote view's conversation.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListIndexPage {
    /// Summaries of local views after the cursor, at most the limit.
    pub local: Vec<ConversationSummary>,
    /// Conversations whose summaries their own shards give, ascending.
    pub remote: Vec<u64>,
}

/// One page of a conversation list from the pages of its parts (each in
/// list order, each after the same cursor): the first `limit` of all.
pub fn merge_list_pages(
    pages: impl IntoIterator<Item = Vec<ConversationSummary>>,
    limit: usize,
) -> Vec<ConversationSummary> {
    let mut all: Vec<ConversationSummary> = pages.into_iter().flatten().collect();
    all.sort_by_key(list_order);
    all.truncate(limit);
    all
}

impl Engine {
    /// `user`'s conversations, most recent activity first, starting after
    /// `after` (the last entry of the previous page), at most `limit`: a
    /// page of the user's activity index (O(page)), merged with the
    /// summaries of their big groups. For a store of one shard; a cluster
    /// asks the user's shard for [`Engine::conversation_index`] and the
    /// groups' shards for [`Engine::summaries`].
    ///
    /// The user's settings apply: pinned conversations come first, latest
    /// pin first, and archived ones are left out until a newer message
    /// (see [`UserListPage`](crate::UserListPage)).
    pub fn conversation_list(
        &self,
        user: u64,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>> {
        let page = self.user_list_page(user, after, limit)?;
        let pinned = page.remote_pinned();
        let remote_pinned = match pinned.len() {
            0 => Vec::new(),
            n => self.summaries(user, &pinned, None, n)?,
        };
        let remote_unpinned = match page.remote_unpinned(limit) {
            Some((after, ids, want)) => {
                self.summaries(user, &ids, after, want.min(self.inner.max_page_messages))?
            }
            None => Vec::new(),
        };
        Ok(assemble_list(page, remote_pinned, [remote_unpinned], limit))
    }

    /// `user`'s unread messages over all their conversations but the
    /// muted ones: the local views' counts, and the big groups' from
    /// their rows.
    pub fn unread_total(&self, user: u64) -> Result<u64> {
        let (local, remote) = self.unread_index(user)?;
        Ok(local + self.unread_sum(user, &remote)?)
    }

    /// The part of `user`'s conversation list their own shard answers:
    /// see [`ListIndexPage`].
    pub fn conversation_index(
        &self,
        user: u64,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<ListIndexPage> {
        self.check_limit(limit)?;
        let store = self.view();
        let lo = match after {
            Some(c) => {
                let mut key = activity_key(user, c.last_activity_ms, c.conversation);
                key.push(0);
                key
            }
            None => im_key(tag::ACTIVITY, &[user], &[]),
        };
        let hi = im_key(tag::ACTIVITY, &[user.saturating_add(1)], &[]);
        let keys = store.scan_in(CF_IM, &lo, &hi, limit)?;
        let mut local = Vec::with_capacity(keys.len());
        for (conversation, view) in self.indexed_views(user, &keys)? {
            local.push(self.view_summary(user, conversation, &view)?);
        }
        debug_assert!(local
            .windows(2)
            .all(|w| list_order(&w[0]) < list_order(&w[1])));
        debug_assert!(after.is_none_or(|c| local
            .first()
            .is_none_or(|s| list_order(s) > cursor_order(c))));
        Ok(ListIndexPage {
            local,
            remote: self.remote_views(user)?,
        })
    }

    /// The conversations of `user`'s activity index rows `keys` (as
    /// scanned, in list order) with their views, in one batched read.
    pub(super) fn indexed_views(
        &self,
        user: u64,
        keys: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<(u64, UserView)>> {
        let mut ids = Vec::with_capacity(keys.len());
        for (key, _) in keys {
            let rev = codec::im_key_id(key, 2).map_err(corrupt("activity key"))?;
            ids.push(u64::MAX - rev);
        }
        let view_keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|&c| im_key(tag::VIEW, &[user, c], &[]))
            .collect();
        let views = self
            .view()
            .multi_get_in(CF_IM, &view_keys, false, |v| match v {
                Some(bytes) => UserView::decode(bytes).map_err(corrupt("user view")),
                None => Err(missing("view of an indexed conversation")),
            })?;
        Ok(ids.into_iter().zip(views).collect())
    }

    /// The summary a local view gives.
    pub(super) fn view_summary(
        &self,
        user: u64,
        conversation: u64,
        view: &UserView,
    ) -> Result<ConversationSummary> {
        Ok(ConversationSummary {
            conversation,
            kind: view.kind,
            last_seq: view.last_seq,
            last_activity_ms: view.last_activity_ms,
            read_seq: view.read_seq(),
            unread: view.unread(),
            member: view.member,
            last_message: self.last_copy(user, conversation, view.last_seq)?,
            mentions: self.marked_mentions(user, conversation, view)?,
        })
    }

    /// The mention marks (`J`, one per copy that mentions the user) of a
    /// local view's unread, kept messages.
    fn marked_mentions(&self, user: u64, conversation: u64, view: &UserView) -> Result<u64> {
        let from = view.read_seq().saturating_add(1).max(view.first_retained);
        if from > view.last_seq {
            return Ok(0);
        }
        let lo = im_key(tag::MENTION, &[user, conversation, from], &[]);
        let hi = im_key(tag::MENTION, &[user, conversation, view.last_seq + 1], &[]);
        Ok(self.view().scan_in(CF_IM, &lo, &hi, usize::MAX)?.len() as u64)
    }

    /// The conversations of `user`'s remote views, ascending: big groups
    /// and the others whose shards answer for them (see `UserView::of`).
    pub(crate) fn remote_views(&self, user: u64) -> Result<Vec<u64>> {
        let lo = im_key(tag::REMOTE_VIEW, &[user], &[]);
        let hi = im_key(tag::REMOTE_VIEW, &[user.saturating_add(1)], &[]);
        self.view()
            .scan_in(CF_IM, &lo, &hi, usize::MAX)?
            .iter()
            .map(|(key, _)| codec::im_key_id(key, 1).map_err(corrupt("remote view key")))
            .collect()
    }

    /// The unread messages of `user`'s local views, and their remote
    /// views' conversations (ascending), muted ones left out: the part of
    /// the unread total the user's own shard answers.
    pub fn unread_index(&self, user: u64) -> Result<(u64, Vec<u64>)> {
        let muted = self.muted(user)?;
        let lo = im_key(tag::VIEW, &[user], &[]);
        let hi = im_key(tag::VIEW, &[user.saturating_add(1)], &[]);
        let (mut local, mut remote) = (0u64, Vec::new());
        for (key, value) in self.view().scan_in(CF_IM, &lo, &hi, usize::MAX)? {
            let conversation = codec::im_key_id(&key, 1).map_err(corrupt("view key"))?;
            if muted.binary_search(&conversation).is_ok() {
                continue;
            }
            let view = UserView::decode(&value).map_err(corrupt("user view"))?;
            if view.remote {
                remote.push(conversation);
            } else {
                local += view.unread();
            }
        }
        Ok((local, remote))
    }

    /// The newest copy of `conversation` at or below `last_seq` in
    /// `user`'s inbox, as the user sees it: a local view's last message.
    fn last_copy(
        &self,
        user: u64,
        conversation: u64,
        last_seq: u64,
    ) -> Result<Option<MessageView>> {
        if last_seq == 0 {
            return Ok(None);
        }
        let store = self.view();
        let Some((_, value)) = store.last_in(
            CF_IM,
            &im_key(tag::INBOX_INDEX, &[user, conversation], &[]),
            &im_key(tag::INBOX_INDEX, &[user, conversation, last_seq], &[]),
        )?
        else {
            return Ok(None);
        };
        let inbox_seq = decode_u64(&value, "inbox index")?;
        let copy = store
            .get_in(CF_IM, &im_key(tag::INBOX, &[user, inbox_seq], &[]))?
            .ok_or_else(|| missing("inbox copy of an index entry"))?;
        let copy = InboxCopy::decode(&copy).map_err(corrupt("inbox copy"))?;
        Ok((!copy.cleared).then(|| copy_view(copy)))
    }
}

fn missing(what: &'static str) -> Error {
    Error::CorruptMetadata {
        what: "user view".into(),
        reason: codec::CodecError::BadLength {
            what: what.into(),
            len: 0,
        },
    }
}

/// A message as its inbox copy shows it to the copy's user.
pub(crate) fn copy_view(copy: InboxCopy) -> MessageView {
    let hidden = copy.hidden;
    MessageView {
        message: Message {
            conversation: copy.conversation,
            seq: copy.seq,
            sender: copy.sender,
            timestamp_ms: copy.timestamp_ms,
            client_msg_id: bytes::Bytes::from(copy.client_msg_id),
            payload: if copy.recalled || hidden {
                bytes::Bytes::new()
            } else {
                bytes::Bytes::from(copy.payload)
            },
        },
        recalled: copy.recalled,
        edited: copy.edited,
        deleted_for_me: hidden,
        reactions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(conversation: u64, last_activity_ms: u64) -> ConversationSummary {
        ConversationSummary {
            conversation,
            kind: crate::ConversationKind::Group,
            last_seq: 1,
            last_activity_ms,
            read_seq: 0,
            unread: 1,
            member: true,
            last_message: None,
            mentions: 0,
        }
    }

    #[test]
    fn lists_merge_by_activity_then_id() {
        let merged = merge_list_pages(
            [
                vec![summary(1, 50), summary(4, 20)],
                vec![summary(2, 50), summary(3, 30)],
            ],
            3,
        );
        let ids: Vec<u64> = merged.iter().map(|s| s.conversation).collect();
        assert_eq!(ids, vec![2, 1, 3]);
    }
}
