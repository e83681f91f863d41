//! The `imstore.v1.Imstore` service: request validation, conversion to
//! engine commands and reads, and back. Writes go through
//! [`Backend::submit`] (no thread blocks on an fsync); reads run on tokio's
//! blocking pool. Every call is timed into [`Metrics`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use imstore_engine::{
    Command, ConversationKind, Direction, Engine, Error, FriendOutcome, FriendStatus, ListCursor,
    MessageView, NewMessage, Outcome, SendMessage, SyncCursor,
};
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_server::Imstore;
use tonic::{Code, Request, Response, Status};

use crate::error::{invalid, status, to_status};
use crate::hub::{conversation_advanced, inbox_advanced, Hub, WatchStream};
use crate::{Backend, Metrics, Route};

/// Limits the service enforces before the engine sees a request.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    /// Most concurrent `Watch` streams.
    pub max_watchers: usize,
    /// Most users one `Watch` may name.
    pub max_watch_users: usize,
    /// Buffered notifications per `Watch` before it is told to resync.
    pub watch_buffer: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            max_watchers: 1_024,
            max_watch_users: 10_000,
            watch_buffer: 1_024,
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn direction(value: i32) -> Result<Direction, Status> {
    match pb::Direction::try_from(value) {
        Ok(pb::Direction::Forward) => Ok(Direction::Forward),
        Ok(pb::Direction::Backward) => Ok(Direction::Backward),
        Err(_) => Err(invalid(format!("unknown direction {value}"))),
    }
}

fn limit(value: u32) -> Result<usize, Status> {
    if value == 0 {
        return Err(invalid("limit must be at least 1"));
    }
    Ok(value as usize)
}

fn message(v: MessageView) -> pb::Message {
    let m = v.message;
    pb::Message {
        conversation: m.conversation,
        seq: m.seq,
        sender: m.sender,
        timestamp_ms: m.timestamp_ms,
        client_msg_id: m.client_msg_id.to_vec(),
        payload: m.payload.to_vec(),
        recalled: v.recalled,
        edited: v.edited,
        deleted_for_me: v.deleted_for_me,
    }
}

fn raw_message(m: imstore_engine::Message) -> pb::Message {
    message(MessageView {
        message: m,
        recalled: false,
        edited: false,
        deleted_for_me: false,
    })
}

fn friend_outcome(o: FriendOutcome) -> pb::FriendResponse {
    let (outcome, conversation) = match o {
        FriendOutcome::Requested => (pb::FriendOutcome::Requested, 0),
        FriendOutcome::AlreadyRequested => (pb::FriendOutcome::AlreadyRequested, 0),
        FriendOutcome::BecameFriends { conversation } => {
            (pb::FriendOutcome::BecameFriends, conversation)
        }
        FriendOutcome::AlreadyFriends { conversation } => {
            (pb::FriendOutcome::AlreadyFriends, conversation)
        }
        FriendOutcome::Declined => (pb::FriendOutcome::Declined, 0),
        FriendOutcome::Removed => (pb::FriendOutcome::Removed, 0),
    };
    pb::FriendResponse {
        outcome: outcome as i32,
        conversation,
    }
}

fn friend_status(s: FriendStatus) -> pb::FriendStatus {
    match s {
        FriendStatus::Friends => pb::FriendStatus::Friends,
        FriendStatus::Outgoing => pb::FriendStatus::Outgoing,
        FriendStatus::Incoming => pb::FriendStatus::Incoming,
    }
}

fn unexpected(outcome: Outcome) -> Status {
    status(
        Code::Internal,
        "INTERNAL",
        format!("unexpected outcome {outcome:?}"),
        &[],
    )
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
        }
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.backend.submit(
            command,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        match rx.await {
            Ok(result) => result.map_err(to_status),
            Err(_) => Err(to_status(Error::Closed)),
        }
    }

    /// A read on the blocking pool, after the backend's read barrier.
    async fn read<T: Send + 'static>(
        &self,
        route: Route,
        f: impl FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        self.read_with(route, false, f).await
    }

    /// A read that may accept this replica's applied state (`stale_ok`).
    async fn read_with<T: Send + 'static>(
        &self,
        route: Route,
        stale_ok: bool,
        f: impl FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        // The shard first: a read the backend cannot route fails before
        // waiting on any barrier.
        let engine = self.backend.engine(route).map_err(to_status)?.clone();
        let barrier = if stale_ok {
            self.backend.stale_read_barrier(route)
        } else {
            self.backend.read_barrier(route)
        };
        barrier.await.map_err(to_status)?;
        match tokio::task::spawn_blocking(move || f(&engine)).await {
            Ok(result) => result.map_err(to_status),
            Err(e) => Err(status(Code::Internal, "INTERNAL", e.to_string(), &[])),
        }
    }

    async fn conversation(&self, command: Command) -> Result<pb::ConversationResponse, Status> {
        match self.write(command).await? {
            Outcome::Conversation {
                conversation,
                created,
            } => Ok(pb::ConversationResponse {
                conversation,
                created,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn members_changed(
        &self,
        command: Command,
    ) -> Result<pb::MembersChangedResponse, Status> {
        match self.write(command).await? {
            Outcome::MembersChanged(changed) => Ok(pb::MembersChangedResponse { changed }),
            other => Err(unexpected(other)),
        }
    }

    async fn friend(&self, command: Command) -> Result<pb::FriendResponse, Status> {
        match self.write(command).await? {
            Outcome::Friend(o) => Ok(friend_outcome(o)),
            other => Err(unexpected(other)),
        }
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
            let messages = self
                .read_with(Route::Conversation(r.conversation), r.stale_ok, move |e| {
                    e.read(r.conversation, r.from, n, dir)
                })
                .await?;
            Ok(pb::ReadResponse {
                messages: messages.into_iter().map(raw_message).collect(),
            })
        })
        .await
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::ConversationResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "CreateGroup",
            self.conversation(Command::CreateGroup {
                conversation: r.conversation,
                owner: r.owner,
                members: r.members,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    async fn open_direct(
        &self,
        request: Request<pb::OpenDirectRequest>,
    ) -> Result<Response<pb::ConversationResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "OpenDirect",
            self.conversation(Command::OpenDirect {
                user: r.user,
                peer: r.peer,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    async fn add_members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersChangedResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "AddMembers",
            self.members_changed(Command::AddMembers {
                conversation: r.conversation,
                by: r.by,
                users: r.users,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    async fn remove_members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersChangedResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "RemoveMembers",
            self.members_changed(Command::RemoveMembers {
                conversation: r.conversation,
                by: r.by,
                users: r.users,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let r = request.into_inner();
        self.observe("ListMembers", async {
            let n = limit(r.limit)?;
            let (members, count) = self
                .read(Route::Conversation(r.conversation), move |e| {
                    Ok((
                        e.members(r.conversation, r.after_user, n)?,
                        e.member_count(r.conversation)?,
                    ))
                })
                .await?;
            Ok(pb::ListMembersResponse {
                members: members
                    .into_iter()
                    .map(|m| pb::Member {
                        user: m.user,
                        read_seq: m.read_seq,
                        joined_after: m.intervals.last().map_or(0, |i| i.0),
                    })
                    .collect(),
                member_count: count,
            })
        })
        .await
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let r = request.into_inner();
        self.observe("Send", async {
            let command = Command::Send(SendMessage {
                conversation: r.conversation,
                sender: r.sender,
                client_msg_id: Bytes::from(r.client_msg_id),
                payload: Bytes::from(r.payload),
                timestamp_ms: now_ms(),
                receipt: r.receipt,
            });
            match self.write(command).await? {
                Outcome::Sent(a) => Ok(pb::SendResponse {
                    seq: a.seq,
                    duplicate: a.duplicate,
                }),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn read_as(
        &self,
        request: Request<pb::ReadAsRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let r = request.into_inner();
        self.observe("ReadAs", async {
            let (dir, n) = (direction(r.direction)?, limit(r.limit)?);
            let views = self
                .read_with(Route::Conversation(r.conversation), r.stale_ok, move |e| {
                    e.read_as(r.viewer, r.conversation, r.from, n, dir)
                })
                .await?;
            Ok(pb::ReadResponse {
                messages: views.into_iter().map(message).collect(),
            })
        })
        .await
    }

    async fn recall(
        &self,
        request: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe(
            "Recall",
            self.done(Command::Recall {
                conversation: r.conversation,
                seq: r.seq,
                by: r.by,
                admin: r.admin,
                timestamp_ms: now_ms(),
            }),
        )
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

    async fn request_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "RequestFriend",
            self.friend(Command::FriendRequest {
                from: r.user,
                to: r.other,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    async fn accept_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "AcceptFriend",
            self.friend(Command::FriendAccept {
                user: r.user,
                requester: r.other,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    async fn decline_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "DeclineFriend",
            self.friend(Command::FriendDecline {
                user: r.user,
                requester: r.other,
            }),
        )
        .await
    }

    async fn remove_friend(
        &self,
        request: Request<pb::FriendPairRequest>,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "RemoveFriend",
            self.friend(Command::FriendRemove {
                user: r.user,
                friend: r.other,
            }),
        )
        .await
    }

    async fn list_friends(
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
            let friends = self
                .read(Route::User(r.user), move |e| {
                    e.friends(r.user, status, r.after_user, n)
                })
                .await?;
            Ok(pb::ListFriendsResponse {
                friends: friends
                    .into_iter()
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

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let r = request.into_inner();
        self.observe("Sync", async {
            let n = limit(r.limit)?;
            let user = r.user;
            let page = match r.from {
                Some(pb::sync_request::From::Device(device)) => {
                    self.read(Route::User(user), move |e| e.sync_device(user, &device, n))
                        .await?
                }
                Some(pb::sync_request::From::Cursor(c)) => {
                    let cursor = SyncCursor {
                        inbox_seq: c.inbox_seq,
                        change: c.change,
                    };
                    self.read(Route::User(user), move |e| e.sync(user, cursor, n))
                        .await?
                }
                None => {
                    self.read(Route::User(user), move |e| {
                        e.sync(user, SyncCursor::default(), n)
                    })
                    .await?
                }
            };
            Ok(pb::SyncResponse {
                entries: page
                    .messages
                    .into_iter()
                    .map(|(inbox_seq, v)| pb::InboxEntry {
                        inbox_seq,
                        message: Some(message(v)),
                    })
                    .collect(),
                advanced: page
                    .advanced
                    .into_iter()
                    .map(|a| pb::Advanced {
                        conversation: a.conversation,
                        last_seq: a.last_seq,
                    })
                    .collect(),
                cursor: Some(pb::Cursor {
                    inbox_seq: page.cursor.inbox_seq,
                    change: page.cursor.change,
                }),
                more: page.more,
            })
        })
        .await
    }

    async fn save_cursor(
        &self,
        request: Request<pb::SaveCursorRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.observe("SaveCursor", async {
            let c = r.cursor.ok_or_else(|| invalid("cursor is required"))?;
            self.done(Command::SaveCursor {
                user: r.user,
                device: Bytes::from(r.device),
                cursor: SyncCursor {
                    inbox_seq: c.inbox_seq,
                    change: c.change,
                },
            })
            .await
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        self.observe("Watch", async {
            if r.users.len() > self.limits.max_watch_users {
                return Err(invalid(format!(
                    "{} users in one watch is over the limit of {}",
                    r.users.len(),
                    self.limits.max_watch_users
                )));
            }
            if self.hub.len() >= self.limits.max_watchers {
                return Err(status(
                    Code::ResourceExhausted,
                    "RESOURCE_EXHAUSTED",
                    format!(
                        "{} watch streams is the server's limit",
                        self.limits.max_watchers
                    ),
                    &[("max_watchers", self.limits.max_watchers as u64)],
                ));
            }
            let positions: Vec<(u64, u64)> =
                r.users.iter().map(|p| (p.user, p.inbox_seq)).collect();
            let users: Vec<u64> = positions.iter().map(|p| p.0).collect();
            let listed = r.conversations.clone();
            let change = r.change;
            // The big conversations of the watched users, and where every
            // watched thing stands now.
            let route = Route::User(users.first().copied().unwrap_or(0));
            let (conversations, heads, advanced) = self
                .read(route, move |e| {
                    let mut conversations: HashSet<u64> = listed.into_iter().collect();
                    let mut advanced = Vec::new();
                    let mut heads = Vec::new();
                    for &user in &users {
                        heads.push((user, e.inbox_head(user)?));
                        // All of them: a small group may grow past the threshold.
                        conversations.extend(e.conversations_of(user)?);
                    }
                    let now = e.change_counter();
                    if change > now {
                        return Err(Error::CursorFromFuture(format!(
                            "change {change} is past the store's {now}"
                        )));
                    }
                    for &c in &conversations {
                        if let Some(a) = e.big_advance(c)? {
                            if a.2 > change {
                                advanced.push(a);
                            }
                        }
                    }
                    Ok((conversations, heads, advanced))
                })
                .await?;
            // Subscribe first, then send the catch-up: an event in between
            // is delivered twice at worst, never lost.
            let user_set: HashSet<u64> = positions.iter().map(|p| p.0).collect();
            let (subscriber, stream) =
                self.hub
                    .subscribe(user_set, conversations, self.limits.watch_buffer);
            for ((user, known), (_, head)) in positions.iter().zip(heads) {
                if head > *known {
                    subscriber.offer(inbox_advanced(*user, head));
                }
            }
            for (c, seq, ch) in advanced {
                subscriber.offer(conversation_advanced(c, seq, ch));
            }
            Ok(stream)
        })
        .await
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let r = request.into_inner();
        self.observe("MarkRead", async {
            match self
                .write(Command::MarkRead {
                    user: r.user,
                    conversation: r.conversation,
                    up_to: r.up_to,
                })
                .await?
            {
                Outcome::ReadUpTo(read_seq) => Ok(pb::MarkReadResponse { read_seq }),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn get_receipts(
        &self,
        request: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let r = request.into_inner();
        self.observe("GetReceipts", async {
            let receipts = self
                .read(Route::Conversation(r.conversation), move |e| {
                    e.receipts(r.conversation, r.seq)
                })
                .await?;
            Ok(pb::GetReceiptsResponse {
                read_count: u32::try_from(receipts.read.len()).unwrap_or(u32::MAX),
                unread_count: u32::try_from(receipts.unread.len()).unwrap_or(u32::MAX),
                read: receipts.read,
                unread: receipts.unread,
                stored: receipts.stored,
            })
        })
        .await
    }

    async fn get_unread(
        &self,
        request: Request<pb::GetUnreadRequest>,
    ) -> Result<Response<pb::GetUnreadResponse>, Status> {
        let r = request.into_inner();
        self.observe("GetUnread", async {
            let unread = self
                .read(
                    match r.conversation {
                        0 => Route::User(r.user),
                        c => Route::Conversation(c),
                    },
                    move |e| match r.conversation {
                        0 => e.unread_total(r.user),
                        c => e.unread(r.user, c),
                    },
                )
                .await?;
            Ok(pb::GetUnreadResponse { unread })
        })
        .await
    }

    async fn list_conversations(
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
            let list = self
                .read(Route::User(r.user), move |e| {
                    e.conversation_list(r.user, after, n)
                })
                .await?;
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

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.observe("Status", async {
            let stats = self
                .backend
                .engine(Route::Any)
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
}
