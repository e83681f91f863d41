//! Reads as values: every read the gRPC service makes of one shard, named
//! by a [`ShardQuery`] and answered by a [`ShardAnswer`]. A node that does
//! not host a shard sends the query to one that does (serialized, with
//! the `serde` feature); a node that does answers it with
//! [`Engine::query`]. Same code path either way, so a remote read returns
//! exactly what a local one would.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::engine::sync_read::{BigHead, UserSyncPage};
use crate::{
    ConversationSummary, Direction, Engine, Error, Friend, FriendStatus, ListCursor, ListIndexPage,
    Member, Message, MessageView, OutboxBacklog, ReceiptPage, Receipts, Result, SyncCursor,
};

/// Where a shard's part of a sync starts.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFrom {
    /// The client's cursor for this shard.
    Cursor(SyncCursor),
    /// The cursor this shard keeps for the device.
    Device(Bytes),
}

/// One read of one shard.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardQuery {
    /// [`Engine::read`].
    Read {
        /// The conversation.
        conversation: u64,
        /// Where the page starts (or ends, backward).
        from: u64,
        /// Most messages.
        limit: u32,
        /// Which way from `from`.
        direction: Direction,
    },
    /// [`Engine::read_as`].
    ReadAs {
        /// Who reads.
        viewer: u64,
        /// The conversation.
        conversation: u64,
        /// Where the page starts (or ends, backward).
        from: u64,
        /// Most messages.
        limit: u32,
        /// Which way from `from`.
        direction: Direction,
    },
    /// [`Engine::members`] and [`Engine::member_count`].
    Members {
        /// The conversation.
        conversation: u64,
        /// Members with ids above this one.
        after: u64,
        /// Most members.
        limit: u32,
    },
    /// [`Engine::receipts`].
    Receipts {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
    },
    /// [`Engine::unread`].
    Unread {
        /// The reader.
        user: u64,
        /// The conversation.
        conversation: u64,
    },
    /// [`Engine::unread_index`]: in the user's shard.
    UnreadIndex {
        /// The reader.
        user: u64,
    },
    /// [`Engine::unread_sum`]: in the conversations' shard.
    UnreadSum {
        /// The reader.
        user: u64,
        /// Conversations of this shard.
        conversations: Vec<u64>,
    },
    /// [`Engine::friends`] kept in this shard.
    Friends {
        /// Whose.
        user: u64,
        /// Which list.
        status: FriendStatus,
        /// Users with ids above this one.
        after: u64,
        /// Most entries.
        limit: u32,
    },
    /// [`Engine::user_sync`] in the user's shard, from a cursor or a
    /// device's saved one.
    Sync {
        /// Whose inbox.
        user: u64,
        /// Where it starts.
        from: SyncFrom,
        /// Most entries.
        limit: u32,
    },
    /// [`Engine::conversation_index`]: in the user's shard.
    ConversationIndex {
        /// Whose list.
        user: u64,
        /// After this entry of the previous page.
        after: Option<ListCursor>,
        /// Most entries.
        limit: u32,
    },
    /// [`Engine::summaries`]: in the conversations' shard.
    Summaries {
        /// Whose list.
        user: u64,
        /// Conversations of this shard.
        conversations: Vec<u64>,
        /// After this entry of the previous page.
        after: Option<ListCursor>,
        /// Most entries.
        limit: u32,
    },
    /// [`Engine::big_heads`]: in the conversations' shard.
    BigHeads {
        /// Whose heads.
        user: u64,
        /// Conversations of this shard, each with the seq the user's
        /// cursor reported it up to.
        conversations: Vec<crate::Advanced>,
    },
    /// Where a watch's subjects stand in this shard: the users' inbox
    /// heads and remote views (their big conversations, wherever those
    /// live), and the big conversations of this shard, among the listed
    /// ones and those views, that advanced past what the watcher knows.
    WatchState {
        /// The watched users.
        users: Vec<u64>,
        /// Conversations named by the watcher that live in this shard.
        listed: Vec<u64>,
        /// What the watcher knows of big conversations: the reported
        /// list of its sync cursor (and, from before data format 7, a
        /// change counter: advances at or below it are known). Its inbox
        /// seq is not used.
        known: SyncCursor,
    },
    /// [`Engine::outbox_backlog`]: what this shard's outbox holds, per
    /// destination shard.
    OutboxBacklog,
    /// [`Engine::outbox_records`]: the oldest records toward `dest`.
    OutboxRecords {
        /// The destination shard.
        dest: u64,
        /// Most records.
        limit: u32,
        /// Most bytes past the first record.
        max_bytes: u32,
    },
    /// [`Engine::receipt_pages`]. (New variants go last: a node may ask a
    /// peer of the previous release, whose decoder numbers them.)
    ReceiptPages {
        /// The conversation.
        conversation: u64,
        /// The messages.
        seqs: Vec<u64>,
        /// `Some((after, limit))` for a page of the lists; `None` for
        /// counts only.
        lists: Option<(u64, u32)>,
    },
    /// [`Engine::viewer_pages`]: one `ReadAs` page for many viewers (a
    /// proxy's readers of a hot group).
    ViewerPages {
        /// The conversation.
        conversation: u64,
        /// Where the page starts (or ends, backward).
        from: u64,
        /// Most messages per viewer.
        limit: u32,
        /// Which way from `from`.
        direction: Direction,
        /// Who reads, at most [`crate::MAX_VIEWERS`].
        viewers: Vec<u64>,
    },
    /// [`Engine::reactors`].
    Reactors {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// The reaction.
        reaction: String,
        /// Users with ids above this one.
        after: u64,
        /// Most users.
        limit: u32,
    },
    /// [`Engine::blocked`], in the user's shard.
    Blocked {
        /// Whose list.
        user: u64,
        /// Users with ids above this one.
        after: u64,
        /// Most entries.
        limit: u32,
    },
    /// [`Engine::user_list_page`]: in the user's shard, settings applied
    /// (what [`ShardQuery::ConversationIndex`] answered before settings).
    ListPage {
        /// Whose list.
        user: u64,
        /// After this entry of the previous page.
        after: Option<ListCursor>,
        /// Most entries.
        limit: u32,
    },
    /// [`ShardQuery::Sync`] with the user's settings of the page's
    /// conversations.
    SyncWithSettings {
        /// Whose inbox.
        user: u64,
        /// Where it starts.
        from: SyncFrom,
        /// Most entries.
        limit: u32,
    },
    /// [`Engine::page_parts`]: [`ShardQuery::ViewerPages`] without the
    /// sealed segments the asker holds.
    PageParts {
        /// The conversation.
        conversation: u64,
        /// Where the page starts (or ends, backward).
        from: u64,
        /// Most messages per viewer.
        limit: u32,
        /// Which way from `from`.
        direction: Direction,
        /// Who reads, at most [`crate::MAX_VIEWERS`].
        viewers: Vec<u64>,
        /// Bases of the sealed segments the asker holds, at most
        /// [`crate::MAX_CACHED_SEGMENTS`].
        cached: Vec<u64>,
    },
}

/// The answer to a [`ShardQuery`], the variant named after it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardAnswer {
    /// Raw messages, ascending.
    Messages(Vec<Message>),
    /// Messages as one user sees them, ascending.
    Views(Vec<MessageView>),
    /// A page of members and the conversation's member count.
    Members {
        /// The page.
        members: Vec<Member>,
        /// Current members in all.
        count: u32,
    },
    /// A message's receipts.
    Receipts(Receipts),
    /// A count (unread messages).
    Count(u64),
    /// A page of friends.
    Friends(Vec<Friend>),
    /// The user's shard's part of a sync, and the cursor it started from.
    Sync {
        /// The cursor the page started from (the device's saved one).
        from: SyncCursor,
        /// The page.
        page: UserSyncPage,
    },
    /// See [`ShardQuery::BigHeads`].
    BigHeads(Vec<BigHead>),
    /// A page of the conversation list.
    List(Vec<ConversationSummary>),
    /// See [`ShardQuery::ConversationIndex`].
    Index(ListIndexPage),
    /// See [`ShardQuery::UnreadIndex`].
    UnreadIndex {
        /// The unread messages of the user's local views.
        local: u64,
        /// The conversations of the user's remote views, ascending.
        remote: Vec<u64>,
    },
    /// See [`ShardQuery::WatchState`].
    WatchState {
        /// Conversations to follow: the listed ones and the users'
        /// remote views.
        conversations: BTreeSet<u64>,
        /// Each watched user's inbox head, in the order asked.
        heads: Vec<u64>,
        /// Big conversations past the known change: (conversation, seq,
        /// change counter).
        advanced: Vec<(u64, u64, u64)>,
    },
    /// See [`ShardQuery::OutboxBacklog`].
    OutboxBacklog(Vec<OutboxBacklog>),
    /// See [`ShardQuery::OutboxRecords`].
    OutboxRecords {
        /// The outbox seq of the first record (0 when there is none).
        first: u64,
        /// The records, consecutive from `first`.
        records: Vec<Bytes>,
    },
    /// Each message's receipts, in the order asked.
    ReceiptPages(Vec<ReceiptPage>),
    /// See [`ShardQuery::ViewerPages`].
    ViewerPages(crate::ViewerPages),
    /// A page of the users someone blocks.
    Blocked(Vec<crate::BlockedUser>),
    /// A page of user ids (who gave a reaction).
    Users(Vec<u64>),
    /// See [`ShardQuery::ListPage`].
    ListPage(crate::UserListPage),
    /// See [`ShardQuery::PageParts`].
    PageParts(crate::PageParts),
    /// See [`ShardQuery::SyncWithSettings`].
    SyncWithSettings {
        /// The cursor the page started from (the device's saved one).
        from: SyncCursor,
        /// The page.
        page: UserSyncPage,
        /// The user's settings of the page's conversations and remote
        /// views, where any is set.
        settings: Vec<(u64, crate::ConversationSettings)>,
    },
}

impl ShardQuery {
    /// The one conversation this query reads, if it reads one.
    fn conversation(&self) -> Option<u64> {
        match self {
            ShardQuery::Read { conversation, .. }
            | ShardQuery::ReadAs { conversation, .. }
            | ShardQuery::Members { conversation, .. }
            | ShardQuery::Receipts { conversation, .. }
            | ShardQuery::ReceiptPages { conversation, .. }
            | ShardQuery::ViewerPages { conversation, .. }
            | ShardQuery::PageParts { conversation, .. }
            | ShardQuery::Reactors { conversation, .. }
            | ShardQuery::Unread { conversation, .. } => Some(*conversation),
            _ => None,
        }
    }
}

fn limit(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Engine {
    /// Answers one read of this shard (see [`ShardQuery`]). Errors are
    /// those of the engine call the query names.
    pub fn query(&self, query: ShardQuery) -> Result<ShardAnswer> {
        let conversation = query.conversation();
        self.answer(query).map_err(|e| match conversation {
            Some(c) => e.in_conversation(c, None),
            None => e,
        })
    }

    /// The answer to `query` if memory alone holds it (a timeline page the
    /// tail cache covers), with no RocksDB read: cheap enough to run on an
    /// async worker, where a read that may touch disk goes to a blocking
    /// pool. `None` is not an error: ask [`Engine::query`], which also
    /// reports what is wrong with a bad query.
    pub fn query_cached(&self, query: &ShardQuery) -> Option<ShardAnswer> {
        match *query {
            ShardQuery::Read {
                conversation,
                from,
                limit: n,
                direction,
            } => {
                let cached = self.cached_page(conversation, from, limit(n), direction)?;
                Some(ShardAnswer::Messages(cached))
            }
            _ => None,
        }
    }

    fn answer(&self, query: ShardQuery) -> Result<ShardAnswer> {
        Ok(match query {
            ShardQuery::Read {
                conversation,
                from,
                limit: n,
                direction,
            } => ShardAnswer::Messages(self.read(conversation, from, limit(n), direction)?),
            ShardQuery::ReadAs {
                viewer,
                conversation,
                from,
                limit: n,
                direction,
            } => {
                ShardAnswer::Views(self.read_as(viewer, conversation, from, limit(n), direction)?)
            }
            ShardQuery::Members {
                conversation,
                after,
                limit: n,
            } => ShardAnswer::Members {
                members: self.members(conversation, after, limit(n))?,
                count: self.member_count(conversation)?,
            },
            ShardQuery::Receipts { conversation, seq } => {
                ShardAnswer::Receipts(self.receipts(conversation, seq)?)
            }
            ShardQuery::Unread { user, conversation } => {
                ShardAnswer::Count(self.unread(user, conversation)?)
            }
            ShardQuery::UnreadIndex { user } => {
                let (local, remote) = self.unread_index(user)?;
                ShardAnswer::UnreadIndex { local, remote }
            }
            ShardQuery::UnreadSum {
                user,
                conversations,
            } => ShardAnswer::Count(self.unread_sum(user, &conversations)?),
            ShardQuery::Friends {
                user,
                status,
                after,
                limit: n,
            } => ShardAnswer::Friends(self.friends(user, status, after, limit(n))?),
            ShardQuery::Sync {
                user,
                from,
                limit: n,
            } => {
                let from = self.sync_from(user, from)?;
                ShardAnswer::Sync {
                    page: self.user_sync(user, &from, limit(n))?,
                    from,
                }
            }
            ShardQuery::SyncWithSettings {
                user,
                from,
                limit: n,
            } => {
                let from = self.sync_from(user, from)?;
                let page = self.user_sync(user, &from, limit(n))?;
                let settings = self.conversation_settings(user, &page.conversations())?;
                ShardAnswer::SyncWithSettings {
                    from,
                    page,
                    settings,
                }
            }
            ShardQuery::ListPage {
                user,
                after,
                limit: n,
            } => ShardAnswer::ListPage(self.user_list_page(user, after, limit(n))?),
            ShardQuery::PageParts {
                conversation,
                from,
                limit: n,
                direction,
                viewers,
                cached,
            } => ShardAnswer::PageParts(self.page_parts(
                conversation,
                from,
                limit(n),
                direction,
                &viewers,
                &cached,
            )?),
            ShardQuery::BigHeads {
                user,
                conversations,
            } => ShardAnswer::BigHeads(self.big_heads(user, &conversations)?),
            ShardQuery::ConversationIndex {
                user,
                after,
                limit: n,
            } => ShardAnswer::Index(self.conversation_index(user, after, limit(n))?),
            ShardQuery::Summaries {
                user,
                conversations,
                after,
                limit: n,
            } => ShardAnswer::List(self.summaries(user, &conversations, after, limit(n))?),
            ShardQuery::WatchState {
                users,
                listed,
                known,
            } => self.watch_state(&users, listed, &known)?,
            ShardQuery::OutboxBacklog => ShardAnswer::OutboxBacklog(self.outbox_backlog()?),
            ShardQuery::OutboxRecords {
                dest,
                limit: n,
                max_bytes,
            } => {
                let (first, records) = self.outbox_records(dest, limit(n), limit(max_bytes))?;
                ShardAnswer::OutboxRecords { first, records }
            }
            ShardQuery::ReceiptPages {
                conversation,
                seqs,
                lists,
            } => ShardAnswer::ReceiptPages(self.receipt_pages(
                conversation,
                &seqs,
                lists.map(|(after, n)| (after, limit(n))),
            )?),
            ShardQuery::ViewerPages {
                conversation,
                from,
                limit: n,
                direction,
                viewers,
            } => ShardAnswer::ViewerPages(self.viewer_pages(
                conversation,
                from,
                limit(n),
                direction,
                &viewers,
            )?),
            ShardQuery::Blocked {
                user,
                after,
                limit: n,
            } => ShardAnswer::Blocked(self.blocked(user, after, limit(n))?),
            ShardQuery::Reactors {
                conversation,
                seq,
                reaction,
                after,
                limit: n,
            } => {
                ShardAnswer::Users(self.reactors(conversation, seq, &reaction, after, limit(n))?)
            }
        })
    }

    fn sync_from(&self, user: u64, from: SyncFrom) -> Result<SyncCursor> {
        match from {
            SyncFrom::Cursor(cursor) => Ok(cursor),
            SyncFrom::Device(device) => self.device_cursor(user, &device),
        }
    }

    fn watch_state(
        &self,
        users: &[u64],
        listed: Vec<u64>,
        known: &SyncCursor,
    ) -> Result<ShardAnswer> {
        let mut conversations: BTreeSet<u64> = listed.into_iter().collect();
        let mut heads = Vec::with_capacity(users.len());
        for &user in users {
            heads.push(self.inbox_head(user)?);
            // Small groups notify through the inbox; a view that becomes
            // remote later is told by a commit notice.
            conversations.extend(self.remote_views(user)?);
        }
        let now = self.change_counter();
        if known.change > now {
            return Err(Error::CursorFromFuture {
                change: known.change,
                store_change: now,
                inbox_seq: None,
                store_inbox_seq: None,
            });
        }
        let mut advanced = Vec::new();
        for &c in &conversations {
            if let Some(a) = self.big_advance(c)? {
                if a.2 > known.change && a.1 > known.reported_seq(c) {
                    advanced.push(a);
                }
            }
        }
        Ok(ShardAnswer::WatchState {
            conversations,
            heads,
            advanced,
        })
    }
}
