//! The user-wide reads and the device cursor: `Sync`, `GetUnread`'s total
//! and `ListConversations`, asked of the user's shard and of the shards of
//! the user's big groups (`docs/replication.md`, "User shards");
//! `SaveCursor` and `ListFriends`, of the user's shard alone.

use std::collections::{BTreeMap, HashMap};

use imstore_engine::ConversationSettings;

use super::*;

impl<B: Backend> ImstoreService<B> {
    pub(super) async fn sync_rpc(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let r = request.into_inner();
        self.observe("Sync", async {
            let n = limit(r.limit)?;
            let user = r.user;
            let home = self.user_shard(user);
            // A client's cursor, or a device whose cursor the user's shard
            // keeps, moved only by the device's acknowledgement.
            let from = match (r.from, r.ack) {
                (Some(pb::sync_request::From::Device(device)), Some(ack)) => {
                    let ack = sync_cursor(self.backend.shard_count(), &ack)?;
                    // Durable before the read: the device has processed
                    // everything up to it.
                    self.write(Command::SaveCursor {
                        user,
                        device: Bytes::from(device),
                        cursor: ack.clone(),
                    })
                    .await?;
                    SyncFrom::Cursor(ack)
                }
                (Some(pb::sync_request::From::Device(device)), None) => {
                    SyncFrom::Device(Bytes::from(device))
                }
                (Some(pb::sync_request::From::Cursor(c)), None) => {
                    SyncFrom::Cursor(sync_cursor(self.backend.shard_count(), &c)?)
                }
                (Some(pb::sync_request::From::Cursor(_)), Some(_)) => {
                    return Err(invalid(
                        "ack is a device's acknowledgement: a sync from a cursor the client \
                         keeps has none",
                    ))
                }
                (None, _) => {
                    return Err(invalid(
                        "a sync starts from a cursor (a zero cursor for the beginning) or a \
                         device",
                    ))
                }
            };
            let since = self.begin_user_read(user);
            let (from, page, settings) = self
                .ask_shards(
                    since,
                    &[home],
                    |_| ShardQuery::SyncWithSettings {
                        user,
                        from: from.clone(),
                        limit: n,
                    },
                    |_, answer| match answer {
                        ShardAnswer::SyncWithSettings {
                            from,
                            page,
                            settings,
                        } => Some((from, page, settings)),
                        _ => None,
                    },
                )
                .await?
                .pop()
                .ok_or_else(mismatched)?;
            let heads = self
                .big_heads(since, user, &from.asked(&page.remote))
                .await?;
            let page = imstore_engine::finish_sync(&from, page, heads).with_settings(settings);
            let label = u32::try_from(home).unwrap_or(u32::MAX);
            let mut entries: Vec<pb::InboxEntry> = page
                .messages
                .into_iter()
                .map(|(inbox_seq, v)| pb::InboxEntry {
                    inbox_seq,
                    message: Some(message(v)),
                    shard: label,
                })
                .collect();
            // Cut at the byte bound: the cursor stops after the last entry
            // kept, so the next sync starts with the first left out.
            let mut cursor = cursor_message(&page.cursor);
            let (cut, _) =
                super::bounded::keep_within(&mut entries, false, self.limits.max_page_bytes, 1);
            if let (true, Some(last_kept)) = (cut, entries.last()) {
                cursor.inbox_seq = last_kept.inbox_seq;
            }
            Ok(pb::SyncResponse {
                entries,
                advanced: page
                    .advanced
                    .into_iter()
                    .map(|a| pb::Advanced {
                        conversation: a.conversation,
                        last_seq: a.last_seq,
                    })
                    .collect(),
                cursor: Some(cursor),
                more: page.more || cut,
                settings: page
                    .settings
                    .iter()
                    .map(|(c, s)| super::settings::settings_message(*c, s))
                    .collect(),
            })
        })
        .await
    }

    /// Where each of `conversations` (the user's remote views, with the
    /// seqs the cursor reported) stands for the user, when it may have
    /// moved: one read per shard that holds any, at once.
    async fn big_heads(
        &self,
        since: Instant,
        user: u64,
        conversations: &[imstore_engine::Advanced],
    ) -> Result<Vec<imstore_engine::BigHead>, Status> {
        self.note_follow_up(user, conversations.iter().map(|a| a.conversation));
        let heads = self
            .ask_by_shard(
                since,
                conversations,
                |a| a.conversation,
                |part| ShardQuery::BigHeads {
                    user,
                    conversations: part,
                },
                |answer| match answer {
                    ShardAnswer::BigHeads(heads) => Some(heads),
                    _ => None,
                },
            )
            .await?;
        Ok(heads.into_iter().flatten().collect())
    }

    pub(super) async fn save_cursor_rpc(
        &self,
        request: Request<pb::SaveCursorRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe("SaveCursor", async {
            let c = r.cursor.ok_or_else(|| invalid("cursor is required"))?;
            let cursor = sync_cursor(self.backend.shard_count(), &c)?;
            self.write(Command::SaveCursor {
                user: r.user,
                device: Bytes::from(r.device),
                cursor,
            })
            .await?;
            Ok(pb::Empty {})
        })
        .await
    }

    pub(super) async fn get_unread_rpc(
        &self,
        request: Request<pb::GetUnreadRequest>,
    ) -> Result<Response<pb::GetUnreadResponse>, Status> {
        let r = request.into_inner();
        self.observe("GetUnread", async {
            let unread = match r.conversation {
                0 => self.unread_total(r.user).await?,
                c => {
                    let query = ShardQuery::Unread {
                        user: r.user,
                        conversation: c,
                    };
                    match self.ask(Route::Conversation(c), false, query).await? {
                        ShardAnswer::Count(n) => n,
                        _ => return Err(mismatched()),
                    }
                }
            };
            Ok(pb::GetUnreadResponse { unread })
        })
        .await
    }

    pub(super) async fn list_conversations_rpc(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let r = request.into_inner();
        self.observe("ListConversations", async {
            let n = limit(r.limit)?;
            let after = r.after.map(|a| ListCursor {
                last_activity_ms: a.last_activity_ms,
                conversation: a.conversation,
            });
            let (list, settings) = self.conversation_list(r.user, after, n).await?;
            let none = ConversationSettings::default();
            Ok(pb::ListConversationsResponse {
                conversations: list
                    .into_iter()
                    .map(|s| {
                        let set = settings.get(&s.conversation).unwrap_or(&none);
                        pb::ConversationSummary {
                            conversation: s.conversation,
                            kind: match s.kind {
                                ConversationKind::Direct => pb::ConversationKind::Direct,
                                ConversationKind::Group => pb::ConversationKind::Group,
                                _ => pb::ConversationKind::Unspecified,
                            } as i32,
                            last_seq: s.last_seq,
                            last_activity_ms: s.last_activity_ms,
                            read_seq: s.read_seq,
                            unread: s.unread,
                            member: s.member,
                            last_message: s.last_message.map(message),
                            mentions: s.mentions,
                            pinned: set.pinned(),
                            muted: set.muted,
                            value: set.value.clone(),
                        }
                    })
                    .collect(),
            })
        })
        .await
    }

    pub(super) async fn list_friends_rpc(
        &self,
        request: Request<pb::ListFriendsRequest>,
    ) -> Result<Response<pb::ListFriendsResponse>, Status> {
        let r = request.into_inner();
        self.observe("ListFriends", async {
            let n = limit(r.limit)?;
            let status = match pb::FriendStatus::try_from(r.status) {
                Ok(pb::FriendStatus::Friends) => FriendStatus::Friends,
                Ok(pb::FriendStatus::Outgoing) => FriendStatus::Outgoing,
                Ok(pb::FriendStatus::Incoming) => FriendStatus::Incoming,
                _ => return Err(invalid(format!("friend status {} is not a list", r.status))),
            };
            // The user's list lives in the user's shard alone.
            let friends = self
                .ask_shards(
                    Instant::now(),
                    &[self.user_shard(r.user)],
                    |_| ShardQuery::Friends {
                        user: r.user,
                        status,
                        after: r.after_user,
                        limit: n,
                    },
                    |_, answer| match answer {
                        ShardAnswer::Friends(page) => Some(page),
                        _ => None,
                    },
                )
                .await?
                .into_iter()
                .flatten();
            Ok(pb::ListFriendsResponse {
                friends: friends
                    .map(|f| pb::Friend {
                        user: f.user,
                        status: friend_status(f.status) as i32,
                        since_ms: f.since_ms,
                        conversation: f.conversation,
                    })
                    .collect(),
            })
        })
        .await
    }

    /// The user's own shard.
    pub(super) fn user_shard(&self, user: u64) -> u64 {
        imstore_engine::shard_for_user(user, self.backend.shard_count())
    }

    /// The start of a user-wide read of `user`: now, and the read
    /// barriers of the shards its last second round asked begin at once
    /// (`follow_ups.rs`), so that its second round may find them done.
    fn begin_user_read(&self, user: u64) -> Instant {
        let since = Instant::now();
        self.backend
            .start_read_barriers(&self.follow_ups.guess(user));
        since
    }

    /// Keeps the shards of `conversations`, which a second round of
    /// `user`'s read is about to ask, as the next read's guess.
    fn note_follow_up(&self, user: u64, conversations: impl Iterator<Item = u64>) {
        let count = self.backend.shard_count();
        let shards: std::collections::BTreeSet<u64> = conversations
            .map(|c| imstore_engine::shard_for(c, count))
            .collect();
        self.follow_ups
            .note(user, &shards.into_iter().collect::<Vec<_>>());
    }

    /// `items` grouped by the shard of their conversation, and
    /// `query(part)` asked of each shard that holds any, at once; each
    /// answer through `pick` (`None`: another query's answer).
    async fn ask_by_shard<T: Clone, A>(
        &self,
        since: Instant,
        items: &[T],
        conversation: impl Fn(&T) -> u64,
        query: impl Fn(Vec<T>) -> ShardQuery,
        pick: impl Fn(ShardAnswer) -> Option<A>,
    ) -> Result<Vec<A>, Status> {
        let count = self.backend.shard_count();
        let mut parts: BTreeMap<u64, Vec<T>> = BTreeMap::new();
        for item in items {
            parts
                .entry(imstore_engine::shard_for(conversation(item), count))
                .or_default()
                .push(item.clone());
        }
        let shards: Vec<u64> = parts.keys().copied().collect();
        self.ask_shards(
            since,
            &shards,
            |shard| query(parts.get(&shard).cloned().unwrap_or_default()),
            |_, answer| pick(answer),
        )
        .await
    }

    /// A page of the user's conversation list, and the user's settings
    /// of its conversations: the user's shard's part (pinned ones, the
    /// activity index, settings), merged with the summaries of the user's
    /// big groups from their shards (one read per shard that holds any,
    /// the pinned and unpinned ones at once).
    async fn conversation_list(
        &self,
        user: u64,
        after: Option<ListCursor>,
        limit: u32,
    ) -> Result<
        (
            Vec<imstore_engine::ConversationSummary>,
            HashMap<u64, ConversationSettings>,
        ),
        Status,
    > {
        let since = self.begin_user_read(user);
        let page = self
            .ask_shards(
                since,
                &[self.user_shard(user)],
                |_| ShardQuery::ListPage { user, after, limit },
                |_, answer| match answer {
                    ShardAnswer::ListPage(page) => Some(page),
                    _ => None,
                },
            )
            .await?
            .pop()
            .ok_or_else(mismatched)?;
        let summaries = |conversations: Vec<u64>, after: Option<ListCursor>, limit: usize| {
            let limit = u32::try_from(limit.min(self.limits.max_page_messages)).unwrap_or(u32::MAX);
            async move {
                self.ask_by_shard(
                    since,
                    &conversations,
                    |&c| c,
                    |part| ShardQuery::Summaries {
                        user,
                        conversations: part,
                        after,
                        limit,
                    },
                    |answer| match answer {
                        ShardAnswer::List(page) => Some(page),
                        _ => None,
                    },
                )
                .await
            }
        };
        let pinned = page.remote_pinned();
        let pinned_count = pinned.len();
        let unpinned = page.remote_unpinned(limit as usize);
        let unpinned_ids = unpinned.iter().flat_map(|(_, ids, _)| ids);
        self.note_follow_up(user, pinned.iter().chain(unpinned_ids).copied());
        let (pinned, unpinned) = match unpinned {
            Some((after, ids, want)) => {
                futures_util::future::try_join(
                    summaries(pinned, None, pinned_count),
                    summaries(ids, after, want),
                )
                .await?
            }
            None => (summaries(pinned, None, pinned_count).await?, Vec::new()),
        };
        let settings = page.settings.iter().cloned().collect();
        let list = imstore_engine::assemble_list(
            page,
            pinned.into_iter().flatten().collect(),
            unpinned,
            limit as usize,
        );
        Ok((list, settings))
    }

    /// The user's unread messages over all their conversations: the local
    /// views' count from the user's shard, the big groups' from theirs.
    async fn unread_total(&self, user: u64) -> Result<u64, Status> {
        let since = self.begin_user_read(user);
        let (local, remote) = self
            .ask_shards(
                since,
                &[self.user_shard(user)],
                |_| ShardQuery::UnreadIndex { user },
                |_, answer| match answer {
                    ShardAnswer::UnreadIndex { local, remote } => Some((local, remote)),
                    _ => None,
                },
            )
            .await?
            .pop()
            .ok_or_else(mismatched)?;
        self.note_follow_up(user, remote.iter().copied());
        let counts = self
            .ask_by_shard(
                since,
                &remote,
                |&c| c,
                |part| ShardQuery::UnreadSum {
                    user,
                    conversations: part,
                },
                |answer| match answer {
                    ShardAnswer::Count(n) => Some(n),
                    _ => None,
                },
            )
            .await?;
        Ok(local + counts.into_iter().sum::<u64>())
    }
}
