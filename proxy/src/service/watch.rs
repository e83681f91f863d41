//! `Watch`: push notifications of a user's inbox and big-conversation
//! advances, served from this node's hub for the shards it hosts, and
//! relayed from a node that hosts each other one.

use super::*;

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

    pub(super) async fn watch_rpc(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
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
            // What the subscriber knows: each user's inbox seq (in the
            // user's shard), and how far big conversations are known.
            if !r.shards.is_empty() || r.users.iter().any(|p| !p.shards.is_empty()) {
                return Err(invalid(
                    "per-shard positions (`shards`) ended with data format 7: pass the inbox \
                     seq and the reported list of the users' sync cursors",
                ));
            }
            let known = sync_cursor(
                count,
                &pb::Cursor {
                    change: r.change,
                    reported: r.reported.clone(),
                    ..pb::Cursor::default()
                },
            )?;
            let known_inbox: Vec<(u64, u64)> =
                r.users.iter().map(|p| (p.user, p.inbox_seq)).collect();
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
            // Subscribe before reading where things stand, so an event
            // between the read and the subscription cannot be lost (it is
            // delivered twice at worst): the users and the listed
            // conversations first. Joins after this are followed by the hub.
            let user_set: HashSet<u64> = users.iter().copied().collect();
            let (subscriber, stream) = self.hub.subscribe(
                user_set,
                r.conversations.iter().copied().collect(),
                self.limits.watch_buffer,
            );
            // The big conversations of the watched users, and where every
            // watched thing stands now, in each shard watched here.
            let read_state = || {
                self.ask_shards(
                    &here,
                    |shard| ShardQuery::WatchState {
                        users: users.clone(),
                        listed: r
                            .conversations
                            .iter()
                            .copied()
                            .filter(|&c| imstore_engine::shard_for(c, count) == shard)
                            .collect(),
                        known: known.clone(),
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
            };
            let mut per_shard = read_state().await?;
            // Conversations first learnt from the read were not followed
            // while it ran: read again, now that they are, so an advance in
            // between shows in the catch-up. (Ones joined after the
            // subscription are followed already.)
            let learnt = per_shard.iter().flat_map(|(c, _, _)| c.iter().copied());
            if subscriber.follow(learnt.collect::<Vec<_>>()) {
                per_shard = read_state().await?;
            }
            for ((_, heads, advanced), &shard) in per_shard.iter().zip(&here) {
                let label = u32::try_from(shard).unwrap_or(u32::MAX);
                for ((user, known), head) in known_inbox.iter().zip(heads) {
                    // Inboxes live in their users' shards alone.
                    let home = imstore_engine::shard_for_user(*user, count) == shard;
                    if home && *head > *known {
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
}
