//! `Watch`: push notifications of a user's inbox and big-conversation
//! advances, served from this node's hub for the shards it hosts, and
//! relayed from a node that hosts each other one.

use std::collections::{BTreeMap, BTreeSet};

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
        Some(pb::notification::Event::Reaction(a)) => u64::from(a.shard) == shard,
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

/// `items` (users or conversations) grouped by their shard, `shard_of`,
/// keeping only `scope`'s when set.
fn by_shard(
    items: impl IntoIterator<Item = u64>,
    shard_of: impl Fn(u64) -> u64,
    scope: Option<u64>,
) -> BTreeMap<u64, Vec<u64>> {
    let mut grouped: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for item in items {
        let shard = shard_of(item);
        if scope.is_none_or(|s| s == shard) {
            grouped.entry(shard).or_default().push(item);
        }
    }
    grouped
}

/// What round one of a watch found in one user shard: the users' remote
/// views, and their inbox heads in the order asked.
type AtHome = (BTreeSet<u64>, Vec<u64>);

impl<B: Backend> ImstoreService<B> {
    /// Round one of a watch: each shard of `homes` answers its users'
    /// inbox heads and remote views.
    async fn watch_homes(
        &self,
        homes: &BTreeMap<u64, Vec<u64>>,
        known: &SyncCursor,
    ) -> Result<BTreeMap<u64, AtHome>, Status> {
        let shards: Vec<u64> = homes.keys().copied().collect();
        let answers = self
            .ask_shards(
                Instant::now(),
                &shards,
                |shard| ShardQuery::WatchState {
                    users: homes.get(&shard).cloned().unwrap_or_default(),
                    listed: Vec::new(),
                    known: known.clone(),
                },
                |_, answer| match answer {
                    ShardAnswer::WatchState {
                        conversations,
                        heads,
                        ..
                    } => Some((conversations, heads)),
                    _ => None,
                },
            )
            .await?;
        Ok(shards.into_iter().zip(answers).collect())
    }

    /// Round two of a watch: each shard of `conversations` this node hosts
    /// answers which of its conversations advanced past `known` (a relayed
    /// shard's node sends its own catch-up).
    async fn watch_advances(
        &self,
        conversations: &BTreeMap<u64, Vec<u64>>,
        known: &SyncCursor,
    ) -> Result<Vec<(u64, Vec<(u64, u64, u64)>)>, Status> {
        let shards: Vec<u64> = conversations
            .keys()
            .copied()
            .filter(|&s| self.backend.hosts(s))
            .collect();
        let answers = self
            .ask_shards(
                Instant::now(),
                &shards,
                |shard| ShardQuery::WatchState {
                    users: Vec::new(),
                    listed: conversations.get(&shard).cloned().unwrap_or_default(),
                    known: known.clone(),
                },
                |_, answer| match answer {
                    ShardAnswer::WatchState { advanced, .. } => Some(advanced),
                    _ => None,
                },
            )
            .await?;
        Ok(shards.into_iter().zip(answers).collect())
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
        let channel = self.relay_dialer.lazy(address).map_err(|e| e.to_string())?;
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
        authorization: Option<&tonic::metadata::AsciiMetadataValue>,
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
            // The caller's own token: the other node checks it as this one did.
            if let Some(token) = authorization {
                scoped.metadata_mut().insert("authorization", token.clone());
            }
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
        let authorization = request.metadata().get("authorization").cloned();
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
            let users: Vec<u64> = r.users.iter().map(|p| p.user).collect();
            let known_inbox: HashMap<u64, u64> =
                r.users.iter().map(|p| (p.user, p.inbox_seq)).collect();
            if let Some(shard) = scope {
                if shard >= count {
                    return Err(invalid(format!("shard {shard} of {count}")));
                }
                if !self.backend.hosts(shard) {
                    return Err(status(
                        "NOT_HOSTED",
                        format!("this node does not host shard {shard}"),
                        &[("shard", shard)],
                    ));
                }
            }
            // Subscribe before reading where things stand, so an event
            // between the read and the subscription cannot be lost (it is
            // delivered twice at worst): the users and the listed
            // conversations first. Joins after this are followed by the hub.
            let listed: BTreeSet<u64> = r.conversations.iter().copied().collect();
            let (subscriber, stream) = self.hub.subscribe(
                users.iter().copied().collect(),
                listed.iter().copied().collect(),
                self.limits.watch_buffer,
            );
            // Round one, in the users' shards: the inbox heads, and the
            // remote views (big conversations) to follow.
            let homes = by_shard(
                users.iter().copied(),
                |user| imstore_engine::shard_for_user(user, count),
                scope,
            );
            let at_home = self.watch_homes(&homes, &known).await?;
            let remote: BTreeSet<u64> = at_home
                .values()
                .flat_map(|(conversations, _)| conversations.iter().copied())
                .collect();
            if scope.is_some() {
                // A relayed watch follows what its origin found; a view
                // that became remote since is one the origin does not
                // follow, so advances of it would be missed there.
                if let Some(&c) = remote.difference(&listed).next() {
                    subscriber.end(format!(
                        "a watched user has a new big conversation {c}; sync and watch again"
                    ));
                    return Ok(stream);
                }
            }
            subscriber.follow(remote.iter().copied());
            // A view that became remote while this ran is fine if the read
            // found it (followed now, so round two catches it up).
            if let Some((user, c)) = subscriber.settle() {
                subscriber.end(unfollowed(user, c));
                return Ok(stream);
            }
            let followed: BTreeSet<u64> = listed.union(&remote).copied().collect();
            // Round two, in the followed conversations' shards hosted here
            // (a relayed shard's node sends its own catch-up): their
            // advances past what the watcher knows, read now that they are
            // followed.
            let conversations = by_shard(
                followed.iter().copied(),
                |c| imstore_engine::shard_for(c, count),
                scope,
            );
            let advances = self.watch_advances(&conversations, &known).await?;
            let label = |shard: u64| u32::try_from(shard).unwrap_or(u32::MAX);
            for (shard, (_, heads)) in &at_home {
                if !self.backend.hosts(*shard) {
                    continue;
                }
                for (user, head) in homes.get(shard).into_iter().flatten().zip(heads) {
                    if *head > known_inbox.get(user).copied().unwrap_or(0) {
                        // A catch-up does not know what the entries are:
                        // never marked muted.
                        subscriber.offer(inbox_advanced(*user, *head, label(*shard), false));
                    }
                }
            }
            for (shard, advanced) in advances {
                for (c, seq, ch) in advanced {
                    subscriber.offer(conversation_advanced(c, seq, ch, label(shard)));
                }
            }
            // Every other shard the watch needs (a user's home, a followed
            // conversation's) is followed at a node hosting it, with the
            // conversations this watch follows; a relayed watch is one
            // shard's and never relayed on.
            let needed: BTreeSet<u64> = homes.keys().chain(conversations.keys()).copied().collect();
            let relayed = pb::WatchRequest {
                conversations: followed.iter().copied().collect(),
                ..r.clone()
            };
            for shard in needed {
                if !self.backend.hosts(shard) {
                    self.watch_elsewhere(
                        shard,
                        &relayed,
                        authorization.as_ref(),
                        Arc::clone(&subscriber),
                    )
                    .await?;
                }
            }
            Ok(stream)
        })
        .await
    }
}
