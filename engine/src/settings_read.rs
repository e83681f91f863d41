//! The conversation list with the user's settings applied (`docs/im.md`,
//! "Conversation settings"): pinned conversations first, latest pin
//! first; archived ones left out until a newer message; every entry with
//! its settings. The user's shard answers [`Engine::user_list_page`];
//! the pinned and unpinned big groups' summaries come from their shards;
//! [`assemble_list`] puts the parts together, on one shard as in a
//! cluster.

use std::collections::HashMap;

use super::view_read::merge_list_pages;
use super::Engine;
use crate::codec::{self, activity_key, im_key, pinned_key, tag, ConversationSettings, UserView};
use crate::error::corrupt_metadata as corrupt;
use crate::store::CF_IM;
use crate::{ConversationSummary, ListCursor, Result};

/// A page of a user's conversation list as their shard holds it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserListPage {
    /// The pinned conversations of the page, latest pin first, each with
    /// the summary its local view gives (`None`: the conversation's shard
    /// gives it, see [`UserListPage::remote_pinned`]).
    pub pinned: Vec<(u64, Option<ConversationSummary>)>,
    /// The page goes on past the pinned conversations, after this entry
    /// (`Some(None)`: from the top of the unpinned ones). `None`: the
    /// pinned ones fill it.
    pub unpinned_after: Option<Option<ListCursor>>,
    /// Unpinned local views after `unpinned_after`, not archived, in list
    /// order, at most the limit less the pinned ones.
    pub local: Vec<ConversationSummary>,
    /// Every remote view's conversation, ascending.
    pub remote: Vec<u64>,
    /// The settings of the page's conversations and of every remote view,
    /// where any is set.
    pub settings: Vec<(u64, ConversationSettings)>,
}

impl UserListPage {
    /// The pinned conversations whose summaries their own shards give.
    pub fn remote_pinned(&self) -> Vec<u64> {
        self.pinned
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(c, _)| *c)
            .collect()
    }

    /// The remote views to ask for the unpinned part, and how many
    /// summaries to ask of them so that `limit` remain once the pinned
    /// and archived ones are left out; `None` when the pinned ones fill
    /// the page.
    pub fn remote_unpinned(&self, limit: usize) -> Option<(Option<ListCursor>, Vec<u64>, usize)> {
        let after = self.unpinned_after?;
        let settings: HashMap<u64, &ConversationSettings> =
            self.settings.iter().map(|(c, s)| (*c, s)).collect();
        let (mut ask, mut skipped) = (Vec::new(), 0);
        for &c in &self.remote {
            match settings.get(&c) {
                Some(s) if s.pinned() => {}
                Some(s) if s.archived => {
                    skipped += 1;
                    ask.push(c);
                }
                _ => ask.push(c),
            }
        }
        let want = limit.saturating_sub(self.pinned.len()) + skipped;
        (!ask.is_empty() && want > 0).then_some((after, ask, want))
    }
}

/// A page of the conversation list from the user's shard's part, the
/// summaries of its remote pinned conversations, and the pages of its
/// remote unpinned ones (each asked after `unpinned_after`): the pinned
/// ones in pin order, then the rest in list order, archived ones left
/// out, at most `limit`.
pub fn assemble_list(
    page: UserListPage,
    remote_pinned: Vec<ConversationSummary>,
    remote_unpinned: impl IntoIterator<Item = Vec<ConversationSummary>>,
    limit: usize,
) -> Vec<ConversationSummary> {
    let settings: HashMap<u64, ConversationSettings> = page.settings.into_iter().collect();
    let mut remote_pinned: HashMap<u64, ConversationSummary> = remote_pinned
        .into_iter()
        .map(|s| (s.conversation, s))
        .collect();
    let mut out: Vec<ConversationSummary> = page
        .pinned
        .into_iter()
        .filter_map(|(c, local)| local.or_else(|| remote_pinned.remove(&c)))
        .take(limit)
        .collect();
    if page.unpinned_after.is_none() {
        return out;
    }
    // Local and remote views are apart, so the parts hold each
    // conversation once.
    let remote: Vec<ConversationSummary> = remote_unpinned
        .into_iter()
        .flatten()
        .filter(|s| {
            settings
                .get(&s.conversation)
                .is_none_or(|set| !set.pinned() && !set.hides(s.last_seq))
        })
        .collect();
    let room = limit.saturating_sub(out.len());
    out.extend(merge_list_pages([page.local, remote], room));
    out
}

impl Engine {
    /// `user`'s settings of each of `conversations` that has any set.
    pub fn conversation_settings(
        &self,
        user: u64,
        conversations: &[u64],
    ) -> Result<Vec<(u64, ConversationSettings)>> {
        let mut ids = conversations.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|&c| im_key(tag::SETTINGS, &[user, c], &[]))
            .collect();
        let found = self.view().multi_get_in(CF_IM, &keys, true, |v| {
            v.map(|bytes| ConversationSettings::decode(bytes).map_err(corrupt("settings")))
                .transpose()
        })?;
        Ok(ids
            .into_iter()
            .zip(found)
            .filter_map(|(c, s)| Some((c, s?)))
            .collect())
    }

    /// The conversations `user` muted, ascending.
    pub(crate) fn muted(&self, user: u64) -> Result<Vec<u64>> {
        let lo = im_key(tag::SETTINGS, &[user], &[]);
        let hi = im_key(tag::SETTINGS, &[user.saturating_add(1)], &[]);
        let mut muted = Vec::new();
        for (key, value) in self.view().scan_in(CF_IM, &lo, &hi, usize::MAX)? {
            if ConversationSettings::decode(&value)
                .map_err(corrupt("settings"))?
                .muted
            {
                muted.push(codec::im_key_id(&key, 1).map_err(corrupt("settings key"))?);
            }
        }
        Ok(muted)
    }

    /// The part of `user`'s conversation list their own shard answers,
    /// settings applied: see [`UserListPage`]. A cursor naming a pinned
    /// conversation continues the pinned ones after it; any other, the
    /// unpinned ones.
    pub fn user_list_page(
        &self,
        user: u64,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<UserListPage> {
        self.check_limit(limit)?;
        let cursor_rank = match after {
            None => Some(0),
            Some(c) => self
                .conversation_settings(user, &[c.conversation])?
                .first()
                .map(|(_, s)| s.pin_rank)
                .filter(|&r| r > 0),
        };
        let mut page = UserListPage {
            unpinned_after: Some(after),
            remote: self.remote_views(user)?,
            ..Default::default()
        };
        if let Some(rank) = cursor_rank {
            page.pinned = self.pinned_after(user, rank, limit)?;
            page.unpinned_after = (page.pinned.len() < limit).then_some(None);
        }
        if let Some(unpinned_after) = page.unpinned_after {
            page.local = self.unpinned_local(user, unpinned_after, limit - page.pinned.len())?;
        }
        let mut ids: Vec<u64> = page.pinned.iter().map(|(c, _)| *c).collect();
        ids.extend(page.local.iter().map(|s| s.conversation));
        ids.extend(&page.remote);
        page.settings = self.conversation_settings(user, &ids)?;
        Ok(page)
    }

    /// Pinned conversations of `user` with ranks below `rank` (0: all),
    /// latest pin first, at most `limit`.
    fn pinned_after(
        &self,
        user: u64,
        rank: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Option<ConversationSummary>)>> {
        let store = self.view();
        let lo = if rank == 0 {
            im_key(tag::PINNED, &[user], &[])
        } else {
            let mut key = pinned_key(user, rank);
            key.push(0);
            key
        };
        let hi = im_key(tag::PINNED, &[user.saturating_add(1)], &[]);
        let mut out = Vec::new();
        for (_, value) in store.scan_in(CF_IM, &lo, &hi, limit)? {
            let conversation = crate::store::decode_u64(&value, "pinned conversation")?;
            let view = store
                .get_in(CF_IM, &im_key(tag::VIEW, &[user, conversation], &[]))?
                .map(|v| UserView::decode(&v).map_err(corrupt("user view")))
                .transpose()?;
            let summary = match view {
                Some(view) if !view.remote => Some(self.view_summary(user, conversation, &view)?),
                // A remote view, or one the conversation's shard has not
                // sent yet: that shard gives the summary.
                _ => None,
            };
            out.push((conversation, summary));
        }
        Ok(out)
    }

    /// Local views of `user` after `after` in list order, neither pinned
    /// nor archived, at most `want`: the activity index read in chunks,
    /// skipping those.
    fn unpinned_local(
        &self,
        user: u64,
        after: Option<ListCursor>,
        want: usize,
    ) -> Result<Vec<ConversationSummary>> {
        let store = self.view();
        let mut lo = match after {
            Some(c) => activity_key(user, c.last_activity_ms, c.conversation),
            None => im_key(tag::ACTIVITY, &[user], &[]),
        };
        if after.is_some() {
            lo.push(0);
        }
        let hi = im_key(tag::ACTIVITY, &[user.saturating_add(1)], &[]);
        let mut out = Vec::new();
        while out.len() < want {
            let chunk = want - out.len();
            let keys = store.scan_in(CF_IM, &lo, &hi, chunk)?;
            let Some((last, _)) = keys.last() else {
                break;
            };
            lo = last.clone();
            lo.push(0);
            let views = self.indexed_views(user, &keys)?;
            let ids: Vec<u64> = views.iter().map(|(c, _)| *c).collect();
            let settings: HashMap<u64, ConversationSettings> = self
                .conversation_settings(user, &ids)?
                .into_iter()
                .collect();
            for (conversation, view) in views {
                let shown = settings
                    .get(&conversation)
                    .is_none_or(|s| !s.pinned() && !s.hides(view.last_seq));
                if shown {
                    out.push(self.view_summary(user, conversation, &view)?);
                }
            }
            if keys.len() < chunk {
                break;
            }
        }
        Ok(out)
    }
}
