//! The `imstore.v1.Imstore` service: request validation, conversion to
//! engine commands and reads, and back. Writes go through
//! [`Backend::submit`] (no thread blocks on an fsync); reads run on tokio's
//! blocking pool. Every call is timed into [`Metrics`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use imstore_engine::{
    Command, ConversationKind, FriendStatus, ListCursor, NewMessage, Outcome, SendMessage,
    ShardAnswer, ShardQuery, SyncCursor, SyncFrom,
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
    raw_message, shard_cursors, unexpected,
};
use crate::error::{invalid, status, to_status};
use crate::fanout::{merge_friends, merge_lists, merge_sync, ShardPage};
use crate::hub::{conversation_advanced, inbox_advanced, resync, Hub, Subscriber, WatchStream};
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
    /// Channels to the other nodes a watch is relayed from, one per
    /// address, shared by every watch (a channel multiplexes its calls
    /// and reconnects by itself).
    relay_channels: std::sync::Mutex<HashMap<String, Channel>>,
}

/// Request metadata that scopes a `Watch` to one shard, which the node must
/// host: how a node follows, for its own watcher, a shard it does not.
pub const WATCH_SHARD_HEADER: &str = "imstore-watch-shard";

/// Whether a watch another node refused may be taken by the next
/// replica: that node does not host the shard (`NOT_HOSTED`) or is down
/// (`UNAVAILABLE`, `NOT_LEADER`, or no `ErrorInfo` at all: a connection
/// that failed). Decided by the reason, not the text.
fn watch_elsewhere_may_help(status: &Status) -> bool {
    match imstore_proto::errors::error_info(status) {
        Some((reason, _)) => matches!(reason.as_str(), "NOT_HOSTED" | "UNAVAILABLE" | "NOT_LEADER"),
        None => status.code() == Code::Unavailable,
    }
}

/// Relays `remote`'s notifications about `shard` to `subscriber` until
/// either ends; a remote end becomes a resync.
async fn relay(
    shard: u64,
    mut remote: tonic::Streaming<pb::Notification>,
    subscriber: Arc<Subscriber>,
) {
    let about_shard = |n: &pb::Notification| match &n.event {
        Some(pb::notification::Event::Inbox(a)) => u64::from(a.shard) == shard,
        Some(pb::notification::Event::Conversation(a)) => u64::from(a.shard) == shard,
        _ => false,
    };
    let why = loop {
        tokio::select! {
            _ = subscriber.closed() => return,
            next = remote.message() => match next {
                Ok(Some(n)) => {
                    if let Some(pb::notification::Event::Resync(r)) = &n.event {
                        break r.reason.clone();
                    }
                    if about_shard(&n) && !subscriber.offer(n) {
                        return;
                    }
                }
                Ok(None) => break "its stream ended".to_owned(),
                Err(s) => break s.message().to_owned(),
            }
        }
    };
    subscriber.offer(resync(format!(
        "shard {shard} is watched at another node, which stopped ({why}); sync and watch again"
    )));
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
        }
    }

    /// The shared channel to the node at `address`.
    fn relay_channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self
            .relay_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
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
        self.backend
            .query(route, stale_ok, query)
            .await
            .map_err(to_status)
    }

    /// A user-wide read: `query(shard)` asked of every shard at once
    /// (each after its own read barrier), `pick(shard, answer)` taking the
    /// expected answer out of each, in shard order. One shard for an
    /// embedded engine.
    async fn ask_every_shard<T>(
        &self,
        query: impl Fn(u64) -> ShardQuery,
        pick: impl Fn(u64, ShardAnswer) -> Option<T>,
    ) -> Result<Vec<T>, Status> {
        let every: Vec<u64> = (0..self.backend.shard_count()).collect();
        self.ask_shards(&every, query, pick).await
    }

    /// `query(shard)` asked of each of `shards` at once; each answer
    /// through `pick` (`None`: another query's answer, `INTERNAL`), in
    /// order.
    async fn ask_shards<T>(
        &self,
        shards: &[u64],
        query: impl Fn(u64) -> ShardQuery,
        pick: impl Fn(u64, ShardAnswer) -> Option<T>,
    ) -> Result<Vec<T>, Status> {
        let answers = futures_util::future::try_join_all(
            shards
                .iter()
                .map(|&s| self.backend.query(Route::Shard(s), false, query(s))),
        )
        .await
        .map_err(to_status)?;
        shards
            .iter()
            .zip(answers)
            .map(|(&shard, answer)| pick(shard, answer).ok_or_else(mismatched))
            .collect()
    }

    /// Follows `shard`, which this node does not host, for a watch: the
    /// same request, scoped to that shard ([`WATCH_SHARD_HEADER`]), at a
    /// node that hosts it (the likely leader first), and that stream's
    /// notifications about the shard relayed to `subscriber`. The remote
    /// node sends the shard's catch-up itself. Once the remote stream
    /// ends, the subscriber is told to resync.
    async fn watch_elsewhere(
        &self,
        shard: u64,
        request: &pb::WatchRequest,
        subscriber: Arc<Subscriber>,
    ) -> Result<(), Status> {
        let mut failures = Vec::new();
        for address in self.backend.replicas_of(shard).map_err(to_status)? {
            let mut client = match self.relay_channel(&address) {
                Ok(channel) => ImstoreClient::new(channel),
                Err(e) => {
                    failures.push(format!("{address}: {e}"));
                    continue;
                }
            };
            let mut scoped = Request::new(request.clone());
            scoped
                .metadata_mut()
                .insert(WATCH_SHARD_HEADER, MetadataValue::from(shard));
            match client.watch(scoped).await {
                Ok(remote) => {
                    tokio::spawn(relay(shard, remote.into_inner(), subscriber));
                    return Ok(());
                }
                // Not (or no longer) hosted there, or down: the next one.
                Err(s) if watch_elsewhere_may_help(&s) => {
                    failures.push(format!("{address}: {}", s.message()))
                }
                Err(s) => return Err(s),
            }
        }
        Err(status(
            "UNAVAILABLE",
            format!(
                "shard {shard}: no replica took the watch ({})",
                failures.join("; ")
            ),
            &[],
        ))
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
            let query = ShardQuery::Members {
                conversation: r.conversation,
                after: r.after_user,
                limit: n,
            };
            let ShardAnswer::Members { members, count } = self
                .ask(Route::Conversation(r.conversation), false, query)
                .await?
            else {
                return Err(mismatched());
            };
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
            let query = ShardQuery::ReadAs {
                viewer: r.viewer,
                conversation: r.conversation,
                from: r.from,
                limit: n,
                direction: dir,
            };
            let ShardAnswer::Views(views) = self
                .ask(Route::Conversation(r.conversation), r.stale_ok, query)
                .await?
            else {
                return Err(mismatched());
            };
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
            let pages = self
                .ask_every_shard(
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
                .await?;
            let friends = merge_friends(pages, n as usize);
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

    async fn save_cursor(
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

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let scope = match request.metadata().get(WATCH_SHARD_HEADER) {
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| invalid(format!("{WATCH_SHARD_HEADER} is not a shard id")))?,
            ),
            None => None,
        };
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
                    "RESOURCE_EXHAUSTED",
                    format!(
                        "{} watch streams is the server's limit",
                        self.limits.max_watchers
                    ),
                    &[("max_watchers", self.limits.max_watchers as u64)],
                ));
            }
            let count = self.backend.shard_count();
            // What the subscriber knows: each user's inbox seq and the
            // change counter, per shard.
            let mut known_inbox: Vec<(u64, Vec<u64>)> = Vec::with_capacity(r.users.len());
            for p in &r.users {
                let cursors = shard_cursors(
                    count,
                    &pb::Cursor {
                        inbox_seq: p.inbox_seq,
                        change: 0,
                        shards: p.shards.clone(),
                    },
                )?;
                known_inbox.push((p.user, cursors.iter().map(|c| c.inbox_seq).collect()));
            }
            let known_change: Vec<u64> = shard_cursors(
                count,
                &pb::Cursor {
                    inbox_seq: 0,
                    change: r.change,
                    shards: r.shards.clone(),
                },
            )?
            .iter()
            .map(|c| c.change)
            .collect();
            let users: Vec<u64> = known_inbox.iter().map(|(u, _)| *u).collect();
            // The shards whose commits reach this node's hub are watched
            // here; each other one at a node hosting it, whose stream is
            // relayed (a relayed watch is one shard's, never relayed on).
            let (here, elsewhere): (Vec<u64>, Vec<u64>) = match scope {
                Some(shard) if shard >= count => {
                    return Err(invalid(format!("shard {shard} of {count}")))
                }
                Some(shard) if !self.backend.hosts(shard) => {
                    return Err(status(
                        "NOT_HOSTED",
                        format!("this node does not host shard {shard}"),
                        &[("shard", shard)],
                    ))
                }
                Some(shard) => (vec![shard], Vec::new()),
                None => (0..count).partition(|&shard| self.backend.hosts(shard)),
            };
            // The big conversations of the watched users, and where every
            // watched thing stands now, in each shard watched here.
            let per_shard = self
                .ask_shards(
                    &here,
                    |shard| ShardQuery::WatchState {
                        users: users.clone(),
                        listed: r
                            .conversations
                            .iter()
                            .copied()
                            .filter(|&c| imstore_engine::shard_for(c, count) == shard)
                            .collect(),
                        known_change: known_change[shard as usize],
                    },
                    |_, answer| match answer {
                        ShardAnswer::WatchState {
                            conversations,
                            heads,
                            advanced,
                        } => Some((conversations, heads, advanced)),
                        _ => None,
                    },
                )
                .await?;
            // Subscribe first, then send the catch-up: an event in between
            // is delivered twice at worst, never lost.
            let user_set: HashSet<u64> = known_inbox.iter().map(|(u, _)| *u).collect();
            // Listed conversations are among their own shard's.
            let conversations: HashSet<u64> = per_shard
                .iter()
                .flat_map(|(c, _, _)| c.iter().copied())
                .collect();
            let (subscriber, stream) =
                self.hub
                    .subscribe(user_set, conversations, self.limits.watch_buffer);
            for ((_, heads, advanced), &shard) in per_shard.iter().zip(&here) {
                let label = u32::try_from(shard).unwrap_or(u32::MAX);
                for ((user, known), head) in known_inbox.iter().zip(heads) {
                    if *head > known[shard as usize] {
                        subscriber.offer(inbox_advanced(*user, *head, label));
                    }
                }
                for &(c, seq, ch) in advanced {
                    subscriber.offer(conversation_advanced(c, seq, ch, label));
                }
            }
            for shard in elsewhere {
                self.watch_elsewhere(shard, &r, Arc::clone(&subscriber))
                    .await?;
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
            let query = ShardQuery::Receipts {
                conversation: r.conversation,
                seq: r.seq,
            };
            let ShardAnswer::Receipts(receipts) = self
                .ask(Route::Conversation(r.conversation), false, query)
                .await?
            else {
                return Err(mismatched());
            };
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
            let unread = match r.conversation {
                0 => self
                    .ask_every_shard(
                        |_| ShardQuery::UnreadTotal { user: r.user },
                        |_, answer| match answer {
                            ShardAnswer::Count(n) => Some(n),
                            _ => None,
                        },
                    )
                    .await?
                    .into_iter()
                    .sum(),
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
            let pages = self
                .ask_every_shard(
                    |_| ShardQuery::ConversationList {
                        user: r.user,
                        after,
                        limit: n,
                    },
                    |_, answer| match answer {
                        ShardAnswer::List(page) => Some(page),
                        _ => None,
                    },
                )
                .await?;
            let list = merge_lists(pages, n as usize);
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
