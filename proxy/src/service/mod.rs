//! The `imstore.v1.Imstore` service: request validation, conversion to
//! engine commands and reads, and back. Writes go through
//! [`Backend::submit`] (no thread blocks on an fsync); reads run on tokio's
//! blocking pool. Every call is timed into [`Metrics`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use imstore_engine::{
    Command, ConversationKind, FriendStatus, ListCursor, NewMessage, Outcome, ShardAnswer,
    ShardQuery, SyncCursor, SyncFrom,
};
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proto::v1::imstore_server::Imstore;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::admin;
use crate::convert::{
    cursor_message, direction, friend_outcome, friend_status, limit, message, mismatched, now_ms,
    raw_message, sync_cursor, unexpected,
};
use crate::error::{invalid, status, to_status};
use crate::hub::{
    conversation_advanced, inbox_advanced, resync, unfollowed, Hub, Subscriber, WatchStream,
};
use crate::{Backend, Metrics, Route};

mod bounded;
mod follow_ups;
mod groups;
mod hot;
mod pages;
mod reactions;
mod receipts;
mod settings;
mod social;
mod stream;
mod user;
mod watch;

pub use bounded::DEFAULT_MAX_PAGE_BYTES;
pub use watch::WATCH_SHARD_HEADER;

/// Limits the service enforces before the engine sees a request.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    /// Most concurrent `Watch` streams.
    pub max_watchers: usize,
    /// Most users one `Watch` may name.
    pub max_watch_users: usize,
    /// Buffered notifications per `Watch` before it is told to resync.
    pub watch_buffer: usize,
    /// Most messages one read returns: also the most a `ReadAsMany`'s
    /// pages may ask for together.
    pub max_page_messages: usize,
    /// Most bytes of messages (or inbox entries) one answer carries, at
    /// least one message ([`DEFAULT_MAX_PAGE_BYTES`]); a page cut short
    /// says `more`.
    pub max_page_bytes: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            max_watchers: 1_024,
            max_watch_users: 10_000,
            watch_buffer: 1_024,
            max_page_messages: imstore_engine::Options::default().max_page_messages,
            max_page_bytes: DEFAULT_MAX_PAGE_BYTES,
        }
    }
}

/// The service over a backend.
pub struct ImstoreService<B: Backend> {
    backend: Arc<B>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    limits: ServiceLimits,
    data_dir: String,
    /// Channels to the other nodes a watch is relayed from, one per
    /// address, shared by every watch (a channel multiplexes its calls
    /// and reconnects by itself).
    relay_channels: std::sync::Mutex<HashMap<String, Channel>>,
    /// How relayed watches reach other nodes (mutual TLS on a node with
    /// TLS).
    relay_dialer: imstore_raft::Dialer,
    /// Each user's second-round shards, guessed from the last read.
    follow_ups: follow_ups::FollowUps,
}

impl<B: Backend> ImstoreService<B> {
    /// A service over `backend`, publishing commits to `hub`.
    pub fn new(
        backend: Arc<B>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        limits: ServiceLimits,
        data_dir: String,
    ) -> Self {
        ImstoreService {
            backend,
            hub,
            metrics,
            limits,
            data_dir,
            relay_channels: std::sync::Mutex::default(),
            relay_dialer: imstore_raft::Dialer::plaintext(),
            follow_ups: follow_ups::FollowUps::default(),
        }
    }

    /// Relays watches from other nodes through `dialer`.
    pub fn relaying_with(mut self, dialer: imstore_raft::Dialer) -> Self {
        self.relay_dialer = dialer;
        self
    }

    /// Times a call and counts its outcome.
    async fn observe<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let result = call.await;
        self.metrics.record(
            rpc,
            start.elapsed(),
            result.as_ref().map(|_| ()).map_err(Status::code),
        );
        result.map(Response::new)
    }

    /// A durable write.
    async fn write(&self, command: Command) -> Result<Outcome, Status> {
        if let Some(conversation) = command.conversation() {
            self.metrics.hot.wrote(conversation);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.backend.submit(
            command,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        match rx.await {
            Ok(result) => result.map_err(to_status),
            Err(_) => Err(to_status(imstore_engine::Error::Closed)),
        }
    }

    /// Durable writes of one command per shard (a device's cursor in each
    /// shard), all queued at once; the first error, once all are done.
    async fn write_shards(&self, commands: Vec<(u64, Command)>) -> Result<(), Status> {
        let mut pending = Vec::with_capacity(commands.len());
        for (shard, command) in commands {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.backend.submit_to_shard(
                shard,
                command,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            pending.push(rx);
        }
        let mut first_error = None;
        for rx in pending {
            let result = match rx.await {
                Ok(result) => result.map(|_| ()),
                Err(_) => Err(imstore_engine::Error::Closed.into()),
            };
            if let (Err(e), None) = (result, &first_error) {
                first_error = Some(to_status(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One read about `route` ([`Backend::query`]): linearizable unless
    /// `stale_ok`.
    async fn ask(
        &self,
        route: Route,
        stale_ok: bool,
        query: ShardQuery,
    ) -> Result<ShardAnswer, Status> {
        if let Route::Conversation(conversation) = route {
            self.metrics.hot.read(conversation);
        }
        self.backend
            .query(route, stale_ok, query)
            .await
            .map_err(to_status)
    }

    /// `query(shard)` asked of each of `shards` at once, as linearizable
    /// reads of a request that began at `since`; each answer through
    /// `pick` (`None`: another query's answer, `INTERNAL`), in order.
    async fn ask_shards<T>(
        &self,
        since: Instant,
        shards: &[u64],
        query: impl Fn(u64) -> ShardQuery,
        pick: impl Fn(u64, ShardAnswer) -> Option<T>,
    ) -> Result<Vec<T>, Status> {
        let answers = self
            .backend
            .query_many_since(
                since,
                shards
                    .iter()
                    .map(|&s| (Route::Shard(s), query(s)))
                    .collect(),
            )
            .await
            .map_err(to_status)?;
        shards
            .iter()
            .zip(answers)
            .map(|(&shard, answer)| pick(shard, answer).ok_or_else(mismatched))
            .collect()
    }

    async fn done(&self, command: Command) -> Result<pb::Empty, Status> {
        self.write(command).await.map(|_| pb::Empty {})
    }
}

#[tonic::async_trait]
impl<B: Backend> Imstore for ImstoreService<B> {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let r = request.into_inner();
        self.observe("Append", async {
            let now = now_ms();
            let messages = r
                .messages
                .into_iter()
                .map(|m| NewMessage {
                    conversation: m.conversation,
                    sender: m.sender,
                    client_msg_id: Bytes::from(m.client_msg_id),
                    payload: Bytes::from(m.payload),
                    timestamp_ms: now,
                })
                .collect();
            match self.write(Command::Append(messages)).await? {
                Outcome::Appended(results) => Ok(pb::AppendResponse {
                    results: results
                        .into_iter()
                        .map(|a| pb::Appended {
                            seq: a.seq,
                            duplicate: a.duplicate,
                        })
                        .collect(),
                }),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let r = request.into_inner();
        self.observe("Read", async {
            let (dir, n) = (direction(r.direction)?, limit(r.limit)?);
            let query = ShardQuery::Read {
                conversation: r.conversation,
                from: r.from,
                limit: n,
                direction: dir,
            };
            let ShardAnswer::Messages(messages) = self
                .ask(Route::Conversation(r.conversation), r.stale_ok, query)
                .await?
            else {
                return Err(mismatched());
            };
            let mut messages: Vec<pb::Message> = messages.into_iter().map(raw_message).collect();
            let (more, _) =
                bounded::bound_messages(&mut messages, dir, self.limits.max_page_bytes, 1);
            Ok(pb::ReadResponse { messages, more })
        })
        .await
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::ConversationResponse>, Status> {
        self.create_group_rpc(request).await
    }

    async fn open_direct(
        &self,
        request: Request<pb::OpenDirectRequest>,
    ) -> Result<Response<pb::ConversationResponse>, Status> {
        self.open_direct_rpc(request).await
    }

    async fn add_members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersChangedResponse>, Status> {
        self.members_rpc("AddMembers", request, |r| Command::AddMembers {
            conversation: r.conversation,
            by: r.by,
            users: r.users,
            timestamp_ms: now_ms(),
        })
        .await
    }

    async fn remove_members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersChangedResponse>, Status> {
        self.members_rpc("RemoveMembers", request, |r| Command::RemoveMembers {
            conversation: r.conversation,
            by: r.by,
            users: r.users,
            timestamp_ms: now_ms(),
        })
        .await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        self.list_members_rpc(request).await
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let r = request.into_inner();
        self.observe("Send", async {
            match self.write(stream::send_command(r)).await? {
                Outcome::Sent(a) => Ok(pb::SendResponse {
                    seq: a.seq,
                    duplicate: a.duplicate,
                }),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    type SendStreamStream = stream::SendStream;

    async fn send_stream(
        &self,
        request: Request<tonic::Streaming<pb::SendRequest>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        Ok(Response::new(stream::open(
            Arc::clone(&self.backend),
            Arc::clone(&self.metrics),
            request.into_inner(),
        )))
    }

    async fn read_as(
        &self,
        request: Request<pb::ReadAsRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "ReadAs",
            self.read_page(
                r.viewer,
                r.stale_ok,
                pb::ReadAsPage {
                    conversation: r.conversation,
                    from: r.from,
                    limit: r.limit,
                    direction: r.direction,
                },
            ),
        )
        .await
    }

    async fn read_as_many(
        &self,
        request: Request<pb::ReadAsManyRequest>,
    ) -> Result<Response<pb::ReadAsManyResponse>, Status> {
        let r = request.into_inner();
        self.observe("ReadAsMany", self.read_pages(r)).await
    }

    async fn recall(
        &self,
        request: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        // Recalling anyone's message takes an admin token (when the
        // server requires tokens).
        let allowed = if request.get_ref().admin {
            crate::auth::Caller::may_recall_as_admin(request.extensions())
        } else {
            Ok(())
        };
        let r = request.into_inner();
        self.observe("Recall", async {
            allowed?;
            self.done(Command::Recall {
                conversation: r.conversation,
                seq: r.seq,
                by: r.by,
                admin: r.admin,
                timestamp_ms: now_ms(),
            })
            .await
        })
        .await
    }

    async fn edit(&self, request: Request<pb::EditRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe(
            "Edit",
            self.done(Command::Edit {
                conversation: r.conversation,
                seq: r.seq,
                by: r.by,
                payload: Bytes::from(r.payload),
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    async fn delete_for_me(
        &self,
        request: Request<pb::DeleteForMeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe(
            "DeleteForMe",
            self.done(Command::DeleteForMe {
                user: r.user,
                conversation: r.conversation,
                seq: r.seq,
            }),
        )
        .await
    }

    async fn react(
        &self,
        request: Request<pb::ReactRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.react_rpc(request, true).await
    }

    async fn unreact(
        &self,
        request: Request<pb::ReactRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.react_rpc(request, false).await
    }

    async fn list_reactors(
        &self,
        request: Request<pb::ListReactorsRequest>,
    ) -> Result<Response<pb::ListReactorsResponse>, Status> {
        self.list_reactors_rpc(request).await
    }

    async fn request_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        self.friend_rpc("RequestFriend", request, |user, other| {
            Command::FriendRequest {
                from: user,
                to: other,
                timestamp_ms: now_ms(),
            }
        })
        .await
    }

    async fn accept_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        self.friend_rpc("AcceptFriend", request, |user, other| {
            Command::FriendAccept {
                user,
                requester: other,
                timestamp_ms: now_ms(),
            }
        })
        .await
    }

    async fn decline_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        self.friend_rpc("DeclineFriend", request, |user, other| {
            Command::FriendDecline {
                user,
                requester: other,
            }
        })
        .await
    }

    async fn remove_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        self.friend_rpc("RemoveFriend", request, |user, other| {
            Command::FriendRemove {
                user,
                friend: other,
            }
        })
        .await
    }

    async fn list_friends(
        &self,
        request: Request<pb::ListFriendsRequest>,
    ) -> Result<Response<pb::ListFriendsResponse>, Status> {
        self.list_friends_rpc(request).await
    }

    async fn block(
        &self,
        request: Request<pb::BlockRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.block_rpc(request, true).await
    }

    async fn unblock(
        &self,
        request: Request<pb::BlockRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.block_rpc(request, false).await
    }

    async fn list_blocked(
        &self,
        request: Request<pb::ListBlockedRequest>,
    ) -> Result<Response<pb::ListBlockedResponse>, Status> {
        self.list_blocked_rpc(request).await
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        self.sync_rpc(request).await
    }

    async fn save_cursor(
        &self,
        request: Request<pb::SaveCursorRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.save_cursor_rpc(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.watch_rpc(request).await
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let r = request.into_inner();
        self.observe("MarkRead", async {
            let read_seq = match self
                .write(Command::MarkRead {
                    user: r.user,
                    conversation: r.conversation,
                    up_to: r.up_to,
                })
                .await?
            {
                Outcome::ReadUpTo(read_seq) => read_seq,
                other => return Err(unexpected(other)),
            };
            // Read-your-writes for the user's own unread total and list:
            // the user's shard gets the position now, not only with the
            // view the conversation's shard sends through its outbox.
            let count = self.backend.shard_count();
            let user_shard = imstore_engine::shard_for_user(r.user, count);
            if user_shard != imstore_engine::shard_for(r.conversation, count) {
                self.write_shards(vec![(
                    user_shard,
                    Command::NoteRead {
                        user: r.user,
                        conversation: r.conversation,
                        read_seq,
                    },
                )])
                .await?;
            }
            Ok(pb::MarkReadResponse { read_seq })
        })
        .await
    }

    async fn set_conversation_settings(
        &self,
        request: Request<pb::SetConversationSettingsRequest>,
    ) -> Result<Response<pb::ConversationSettings>, Status> {
        self.set_conversation_settings_rpc(request).await
    }

    async fn get_receipts(
        &self,
        request: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        self.get_receipts_rpc(request).await
    }

    async fn get_receipt_counts(
        &self,
        request: Request<pb::GetReceiptCountsRequest>,
    ) -> Result<Response<pb::GetReceiptCountsResponse>, Status> {
        self.get_receipt_counts_rpc(request).await
    }

    async fn get_unread(
        &self,
        request: Request<pb::GetUnreadRequest>,
    ) -> Result<Response<pb::GetUnreadResponse>, Status> {
        self.get_unread_rpc(request).await
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        self.list_conversations_rpc(request).await
    }

    async fn clear_history(
        &self,
        request: Request<pb::ClearHistoryRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe(
            "ClearHistory",
            self.done(Command::ClearHistory {
                conversation: r.conversation,
                before_seq: r.before_seq,
            }),
        )
        .await
    }

    async fn set_retention(
        &self,
        request: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe(
            "SetRetention",
            self.done(Command::SetRetention {
                conversation: r.conversation,
                ttl_ms: r.ttl_ms,
            }),
        )
        .await
    }

    async fn hot_conversations(
        &self,
        request: Request<pb::HotConversationsRequest>,
    ) -> Result<Response<pb::HotConversationsResponse>, Status> {
        self.hot_conversations_rpc(request).await
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.observe("Status", async {
            let stats = self
                .backend
                .reader(Route::Any)
                .map_err(to_status)?
                .commit_stats();
            Ok(pb::StatusResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                data_dir: self.data_dir.clone(),
                commit_groups: stats.groups,
                commit_commands: stats.commands,
                messages: stats.messages,
                batch_operations: stats.batch_operations,
                watchers: u32::try_from(self.hub.len()).unwrap_or(u32::MAX),
            })
        })
        .await
    }

    type VerifyStream = admin::EventStream<pb::VerifyEvent>;

    async fn verify(
        &self,
        _request: Request<pb::VerifyRequest>,
    ) -> Result<Response<Self::VerifyStream>, Status> {
        self.observe("Verify", async {
            let reader = self.backend.reader(Route::Any).map_err(to_status)?;
            Ok(admin::verify(reader))
        })
        .await
    }

    type BackupStream = admin::EventStream<pb::BackupEvent>;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let r = request.into_inner();
        self.observe("Backup", async {
            let reader = self.backend.reader(Route::Any).map_err(to_status)?;
            admin::backup(reader, self.backend.replicated(), r.to)
        })
        .await
    }
}
