//! The user-wide reads and the device cursor: `Sync` and `SaveCursor`,
//! asked of every shard and merged (`crate::fanout`); `GetUnread`'s total
//! and `ListConversations`, asked of the user's shard and of the shards of
//! the user's big groups; `ListFriends`, asked of the user's shard.

use std::collections::BTreeMap;

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
            let count = self.backend.shard_count();
            // A client's cursor (one per shard), or a device whose saved
            // cursors each shard keeps.
            let (given, device) = match r.from {
                Some(pb::sync_request::From::Device(device)) => (None, Some(Bytes::from(device))),
                Some(pb::sync_request::From::Cursor(c)) => (Some(shard_cursors(count, &c)?), None),
                None => (Some(vec![SyncCursor::default(); count as usize]), None),
            };
            let pages = self
                .ask_every_shard(
                    |shard| ShardQuery::Sync {
                        user,
                        from: match (&given, &device) {
                            (Some(cursors), _) => SyncFrom::Cursor(cursors[shard as usize]),
                            (None, Some(device)) => SyncFrom::Device(device.clone()),
                            (None, None) => SyncFrom::Cursor(SyncCursor::default()),
                        },
                        limit: n,
                    },
                    |shard, answer| match answer {
                        ShardAnswer::Sync { from, page } => Some(ShardPage { shard, from, page }),
                        _ => None,
                    },
                )
                .await?;
            let started: Vec<SyncCursor> = pages.iter().map(|p| p.from).collect();
            let merged = merge_sync(pages, n as usize);
            if let Some(device) = device {
                // Saved (durably, in every shard that moved) before the
                // page is answered: a device gets each page at most once.
                let moved = merged
                    .cursors
                    .iter()
                    .zip(&started)
                    .zip(0u64..)
                    .filter(|((now, was), _)| now != was)
                    .map(|((now, _), shard)| {
                        (
                            shard,
                            Command::SaveCursor {
                                user,
                                device: device.clone(),
                                cursor: *now,
                            },
                        )
                    })
                    .collect();
                self.write_shards(moved).await?;
            }
            Ok(pb::SyncResponse {
                entries: merged
                    .entries
                    .into_iter()
                    .map(|(shard, inbox_seq, v)| pb::InboxEntry {
                        inbox_seq,
                        message: Some(message(v)),
                        shard: u32::try_from(shard).unwrap_or(u32::MAX),
                    })
                    .collect(),
                advanced: merged
                    .advanced
                    .into_iter()
                    .map(|a| pb::Advanced {
                        conversation: a.conversation,
                        last_seq: a.last_seq,
                    })
                    .collect(),
                cursor: Some(cursor_message(&merged.cursors)),
                more: merged.more,
            })
        })
        .await
    }

    pub(super) async fn save_cursor_rpc(
        &self,
        request: Request<pb::SaveCursorRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe("SaveCursor", async {
            let c = r.cursor.ok_or_else(|| invalid("cursor is required"))?;
            let cursors = shard_cursors(self.backend.shard_count(), &c)?;
            let device = Bytes::from(r.device);
            self.write_shards(
                cursors
                    .into_iter()
                    .zip(0u64..)
                    .map(|(cursor, shard)| {
                        (
                            shard,
                            Command::SaveCursor {
                                user: r.user,
                                device: device.clone(),
                                cursor,
                            },
                        )
                    })
                    .collect(),
            )
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
            let list = self.conversation_list(r.user, after, n).await?;
            Ok(pb::ListConversationsResponse {
                conversations: list
                    .into_iter()
                    .map(|s| pb::ConversationSummary {
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
    fn user_shard(&self, user: u64) -> u64 {
        imstore_engine::shard_for_user(user, self.backend.shard_count())
    }

    /// `conversations` grouped by the shard that holds them, ascending.
    fn by_shard(&self, conversations: &[u64]) -> BTreeMap<u64, Vec<u64>> {
        let count = self.backend.shard_count();
        let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &c in conversations {
            out.entry(imstore_engine::shard_for(c, count))
                .or_default()
                .push(c);
        }
        out
    }

    /// A page of the user's conversation list: the activity index of the
    /// user's shard, merged with the summaries of the user's big groups
    /// from their shards (one read per shard that holds any).
    async fn conversation_list(
        &self,
        user: u64,
        after: Option<ListCursor>,
        limit: u32,
    ) -> Result<Vec<imstore_engine::ConversationSummary>, Status> {
        let index = self
            .ask_shards(
                &[self.user_shard(user)],
                |_| ShardQuery::ConversationIndex { user, after, limit },
                |_, answer| match answer {
                    ShardAnswer::Index(page) => Some(page),
                    _ => None,
                },
            )
            .await?
            .pop()
            .ok_or_else(mismatched)?;
        let remote = self.by_shard(&index.remote);
        let shards: Vec<u64> = remote.keys().copied().collect();
        let mut pages = self
            .ask_shards(
                &shards,
                |shard| ShardQuery::Summaries {
                    user,
                    conversations: remote.get(&shard).cloned().unwrap_or_default(),
                    after,
                    limit,
                },
                |_, answer| match answer {
                    ShardAnswer::List(page) => Some(page),
                    _ => None,
                },
            )
            .await?;
        pages.push(index.local);
        Ok(imstore_engine::merge_list_pages(pages, limit as usize))
    }

    /// The user's unread messages over all their conversations: the local
    /// views' count from the user's shard, the big groups' from theirs.
    async fn unread_total(&self, user: u64) -> Result<u64, Status> {
        let (local, remote) = self
            .ask_shards(
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
        let remote = self.by_shard(&remote);
        let shards: Vec<u64> = remote.keys().copied().collect();
        let counts = self
            .ask_shards(
                &shards,
                |shard| ShardQuery::UnreadSum {
                    user,
                    conversations: remote.get(&shard).cloned().unwrap_or_default(),
                },
                |_, answer| match answer {
                    ShardAnswer::Count(n) => Some(n),
                    _ => None,
                },
            )
            .await?;
        Ok(local + counts.into_iter().sum::<u64>())
    }
}
