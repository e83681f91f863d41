//! What the service runs on: the in-process engine ([`EngineBackend`]), a
//! node's replica of a raft-replicated shard ([`RaftBackend`]), or a node's
//! replicas of every shard of a cluster ([`ShardedBackend`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use imstore_engine::{Command, Engine, Outcome, Reader, ShardAnswer, ShardQuery};
use imstore_raft::ReplicaNode;

use crate::error::ServiceError as Error;

/// A future the service awaits before a read.
pub type Barrier<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// A read's answer, once the backend has it.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<ShardAnswer, Error>> + Send + 'a>>;

/// The engine a read may run on here, once its barrier has passed
/// (`None`: the backend reads it elsewhere).
pub type LocalReader<'a> = Pin<Box<dyn Future<Output = Result<Option<Reader>, Error>> + Send + 'a>>;

/// Several reads' answers, in the order asked.
pub type Answers<'a> = Pin<Box<dyn Future<Output = Result<Vec<ShardAnswer>, Error>> + Send + 'a>>;

/// Called once with a write's result, after it is durable. Must not block.
pub type Done = Box<dyn FnOnce(Result<Outcome, Error>) + Send>;

/// What a read is about, which decides the shard that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One conversation's data: its shard.
    Conversation(u64),
    /// One shard: the user's shard for data kept there (the inbox, the
    /// friend list), or one shard's part of a user's data still spread
    /// over shards (conversation list, totals, device cursors), which a
    /// user-wide read visits on every shard of [`Backend::shard_count`].
    Shard(u64),
    /// Store-wide figures (any shard's engine: they share one store).
    Any,
}

impl Route {
    /// The shard that serves this route in a store of `shards` shards.
    pub(crate) fn shard(self, shards: u64) -> u64 {
        match self {
            _ if shards <= 1 => 0,
            Route::Conversation(c) => imstore_raft::shard_for(c, shards),
            Route::Shard(s) => s,
            Route::Any => 0,
        }
    }
}

/// The store behind the service.
pub trait Backend: Send + Sync + 'static {
    /// Queues a write; `done` runs once it is durable or has failed.
    fn submit(&self, command: Command, done: Done);
    /// A read-only handle on the engine that serves a read about `route`:
    /// nothing the service holds can write around [`Backend::submit`]
    /// (on a cluster node, around raft).
    fn reader(&self, route: Route) -> Result<Reader, Error>;
    /// Completes when a read of [`Backend::reader`] for `route` would see
    /// every write acknowledged before it began (linearizable). Immediate
    /// for one embedded engine.
    fn read_barrier(&self, route: Route) -> Barrier<'_> {
        let _ = route;
        Box::pin(std::future::ready(Ok(())))
    }

    /// The barrier of a read that accepts this replica's applied state
    /// (`stale_ok`): immediate everywhere.
    fn stale_read_barrier(&self, route: Route) -> Barrier<'_> {
        let _ = route;
        Box::pin(std::future::ready(Ok(())))
    }

    /// Answers one read about `route`: by default on [`Backend::reader`]
    /// (from memory when the tail cache holds it, else on tokio's blocking
    /// pool) after [`Backend::read_barrier`], or
    /// [`Backend::stale_read_barrier`] when `stale_ok`. A replica of a
    /// shard this node does not host reads it at one that does.
    fn query(&self, route: Route, stale_ok: bool, query: ShardQuery) -> Answer<'_> {
        Box::pin(async move {
            // The shard first: a read the backend cannot route fails
            // before waiting on any barrier.
            let reader = self.reader(route)?;
            if stale_ok {
                self.stale_read_barrier(route).await?;
            } else {
                self.read_barrier(route).await?;
            }
            // A page the tail cache holds is answered here: a hop to the
            // blocking pool costs more than the read (two thread
            // switches; about a third of the server's CPU on newest-50).
            if let Some(answer) = reader.query_cached(&query) {
                return Ok(answer);
            }
            match tokio::task::spawn_blocking(move || reader.query(query)).await {
                Ok(answer) => Ok(answer?),
                Err(e) => Err(Error::Internal(format!("a read task failed: {e}"))),
            }
        })
    }

    /// [`Backend::query`] of a linearizable read that began at `since`: a
    /// replica may serve it after a read barrier begun at or after then
    /// (another read's, or one [`Backend::start_read_barriers`] began), not
    /// only one of its own. By default, a read with a barrier of its own.
    fn query_since(&self, route: Route, since: Instant, query: ShardQuery) -> Answer<'_> {
        let _ = since;
        self.query(route, false, query)
    }

    /// The engine a linearizable read about `route` begun at `since` may
    /// run on in this process, once its barrier has passed; `None` when
    /// the backend serves it otherwise ([`Backend::query_since`]). `None`
    /// by default.
    fn reader_since(&self, route: Route, since: Instant) -> LocalReader<'_> {
        let _ = (route, since);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Linearizable reads of a request that began at `since`, at once:
    /// their barriers side by side, then every read this process serves
    /// from its own engine ([`Backend::reader_since`]) in one task of the
    /// blocking pool (one thread hop for them all, where
    /// [`Backend::query`] takes one each), the others by
    /// [`Backend::query_since`]. Answers in the order asked; the first
    /// error fails them all.
    fn query_many_since(&self, since: Instant, queries: Vec<(Route, ShardQuery)>) -> Answers<'_> {
        Box::pin(async move {
            let readers = futures_util::future::try_join_all(
                queries
                    .iter()
                    .map(|(route, _)| self.reader_since(*route, since)),
            )
            .await?;
            let mut answers: Vec<Option<ShardAnswer>> = queries.iter().map(|_| None).collect();
            let (mut here, mut elsewhere) = (Vec::new(), Vec::new());
            for (i, ((route, query), reader)) in queries.into_iter().zip(readers).enumerate() {
                match reader {
                    Some(reader) => match reader.query_cached(&query) {
                        Some(answer) => answers[i] = Some(answer),
                        None => here.push((i, reader, query)),
                    },
                    None => elsewhere.push((i, route, query)),
                }
            }
            let served_elsewhere = futures_util::future::try_join_all(elsewhere.into_iter().map(
                |(i, route, query)| async move {
                    Ok::<_, Error>((i, self.query_since(route, since, query).await?))
                },
            ));
            let served_here = async move {
                if here.is_empty() {
                    return Ok(Vec::new());
                }
                tokio::task::spawn_blocking(move || {
                    here.into_iter()
                        .map(|(i, reader, query)| Ok((i, reader.query(query)?)))
                        .collect::<Result<Vec<_>, Error>>()
                })
                .await
                .map_err(|e| Error::Internal(format!("a read task failed: {e}")))?
            };
            let (there, here) =
                futures_util::future::try_join(served_elsewhere, served_here).await?;
            for (i, answer) in there.into_iter().chain(here) {
                answers[i] = Some(answer);
            }
            answers
                .into_iter()
                .map(|a| a.ok_or_else(|| Error::Internal("a read went unanswered".into())))
                .collect()
        })
    }

    /// Begins the read barriers of `shards` now, for reads about to follow
    /// ([`Backend::query_since`]): the second round of a user-wide read,
    /// whose barriers then run alongside the first's. Nothing by default.
    fn start_read_barriers(&self, shards: &[u64]) {
        let _ = shards;
    }

    /// Whether this node holds `shard`'s data, so that its commits reach
    /// this node's engine (and `Watch` hub). Always, for one engine.
    fn hosts(&self, shard: u64) -> bool {
        let _ = shard;
        true
    }

    /// Addresses (host:port) of nodes that hold `shard`'s data, the
    /// likely leader first: where to follow what this node cannot see.
    fn replicas_of(&self, shard: u64) -> Result<Vec<String>, Error> {
        Err(Error::Unavailable(format!(
            "shard {shard} has no other replica"
        )))
    }

    /// The shards a user's data is spread over (1 for one engine).
    fn shard_count(&self) -> u64 {
        1
    }

    /// Whether the data is replicated by raft (a cluster node), so that
    /// this node's engine alone is not the store: a backup of it would be
    /// one replica's view, not the cluster's.
    fn replicated(&self) -> bool {
        false
    }

    /// Whether commands submitted one after another are applied in that
    /// order (their seqs follow it): true for one engine, whose commit
    /// pipeline is a queue; false where writes in flight side by side may
    /// commit in either order (raft proposals). `SendStream` relies on it
    /// to keep a conversation's messages in stream order.
    fn submits_in_order(&self) -> bool {
        false
    }

    /// Queues a write of one shard's part of a user's data (a device's
    /// cursor in that shard), or one of the delivery commands.
    fn submit_to_shard(&self, shard: u64, command: Command, done: Done) {
        let _ = shard;
        self.submit(command, done);
    }

    /// Whether this process delivers `shard`'s outbox now: always for
    /// engines of its own; on a cluster, while this node leads the shard.
    fn drains(&self, shard: u64) -> bool {
        let _ = shard;
        true
    }
}

/// One embedded engine: `imstore serve` on a local data directory.
pub struct EngineBackend {
    engine: Engine,
}

impl EngineBackend {
    /// Serves this engine.
    pub fn new(engine: Engine) -> Self {
        EngineBackend { engine }
    }
}

impl Backend for EngineBackend {
    fn submit(&self, command: Command, done: Done) {
        self.engine.submit(
            command,
            Box::new(move |result: imstore_engine::Result<Outcome>| {
                done(result.map_err(Error::from))
            }),
        );
    }

    fn reader(&self, _route: Route) -> Result<Reader, Error> {
        Ok(self.engine.reader())
    }

    fn reader_since(&self, _route: Route, _since: Instant) -> LocalReader<'_> {
        // One engine: every acknowledged write is already readable.
        Box::pin(std::future::ready(Ok(Some(self.engine.reader()))))
    }

    fn submits_in_order(&self) -> bool {
        true
    }
}

/// This node's replica of a replicated shard: writes are proposed to raft
/// (by a follower, forwarded to the shard's leader; `NotLeader` with the
/// leader's address only when that fails), reads wait
/// for the shard's read index ([`ReplicaNode::read_barrier`]: on the
/// leader, or asked of it by a follower) and are served locally, so every
/// replica serves linearizable reads.
///
/// Concurrent writes are batched: whatever queued up while earlier
/// proposals were in flight goes into one raft entry (at most
/// [`MAX_PROPOSAL`] commands; [`PROPOSALS_IN_FLIGHT`] entries in flight,
/// or what [`RaftBackend::with_proposals_in_flight`] says).
pub struct RaftBackend {
    node: ReplicaNode,
    queue: tokio::sync::mpsc::UnboundedSender<(Command, Done)>,
}

/// Most commands in one raft entry.
pub const MAX_PROPOSAL: usize = 256;

/// Proposals of one shard in flight at a time: under load, writes queue up
/// behind them and travel together in the next, so an entry carries many
/// commands instead of each writer paying raft's per-entry cost alone.
pub const PROPOSALS_IN_FLIGHT: usize = 2;

/// Proposals in flight per shard for a node serving `shards` data shards:
/// [`PROPOSALS_IN_FLIGHT`] with few shards, where the second entry keeps
/// the shard's pipeline busy; 1 with more, where the other shards' entries
/// do that and fewer, fuller entries cost less CPU. Measured on the bench
/// machine (3 nodes on 2 cores, `docs/benchmarks.md`): with 1 shard, 2 in
/// flight carried 15.6k/s at 64 writers against 13.3k/s for 1; with 16
/// shards, 1 in flight carried 9.6–10.0k/s at 256 writers against
/// 7.5–7.7k/s for 2, and with 256 shards 2.9k against 2.7k/s. The cut at 4
/// lies between what was measured.
pub fn proposals_in_flight_for(shards: usize) -> usize {
    if shards < 4 {
        PROPOSALS_IN_FLIGHT
    } else {
        1
    }
}

impl RaftBackend {
    /// Serves this replica, with [`PROPOSALS_IN_FLIGHT`] proposals in
    /// flight. Must be called inside a tokio runtime: it starts the task
    /// that forms proposals.
    pub fn new(node: ReplicaNode) -> Self {
        Self::with_proposals_in_flight(node, PROPOSALS_IN_FLIGHT)
    }

    /// Serves this replica with at most `in_flight` (at least 1) of its
    /// proposals in flight at a time.
    pub fn with_proposals_in_flight(node: ReplicaNode, in_flight: usize) -> Self {
        let replica = node.clone();
        let queue = spawn_batcher(in_flight, move |batch| propose(replica.clone(), batch));
        RaftBackend { node, queue }
    }
}

/// The queue of a shard's writes: a task takes what waits (at most
/// [`MAX_PROPOSAL`] commands) whenever fewer than `in_flight` (at least 1)
/// batches are out, and runs `propose` on each batch in a task of its own.
/// Must be called inside a tokio runtime.
pub(crate) fn spawn_batcher<F, Fut>(
    in_flight: usize,
    propose: F,
) -> tokio::sync::mpsc::UnboundedSender<(Command, Done)>
where
    F: Fn(Vec<(Command, Done)>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Command, Done)>();
    tokio::spawn(async move {
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        while let Some(first) = rx.recv().await {
            let Ok(permit) = std::sync::Arc::clone(&in_flight).acquire_owned().await else {
                return;
            };
            // Taken after the permit: what queued meanwhile joins.
            let mut batch = vec![first];
            while batch.len() < MAX_PROPOSAL {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let proposed = propose(batch);
            tokio::spawn(async move {
                proposed.await;
                drop(permit);
            });
        }
    });
    queue
}

/// Proposes one batch (forwarded to the shard's leader when this replica
/// follows) and answers each of its writers.
async fn propose(node: ReplicaNode, batch: Vec<(Command, Done)>) {
    let (commands, done): (Vec<Command>, Vec<Done>) = batch.into_iter().unzip();
    answer_writers(done, node.propose(imstore_raft::Proposal(commands)).await);
}

/// Answers each writer of a proposed batch, in order, with its command's
/// result, or all of them with the proposal's error.
pub(crate) fn answer_writers(done: Vec<Done>, result: Result<imstore_raft::Responses, Error>) {
    match result {
        Ok(responses) => {
            let mut responses = responses.0.into_iter();
            for d in done {
                d(match responses.next() {
                    Some(imstore_raft::Response(result)) => result.map_err(Error::from),
                    None => Err(Error::Internal("no response for a proposed command".into())),
                });
            }
        }
        Err(err) => {
            for d in done {
                d(Err(err.clone()));
            }
        }
    }
}

impl Backend for RaftBackend {
    fn submit(&self, command: Command, done: Done) {
        if let Err(tokio::sync::mpsc::error::SendError((_, done))) =
            self.queue.send((command, done))
        {
            done(Err(imstore_engine::Error::Closed.into()));
        }
    }

    fn reader(&self, _route: Route) -> Result<Reader, Error> {
        Ok(self.node.reader())
    }

    fn read_barrier(&self, _route: Route) -> Barrier<'_> {
        Box::pin(self.node.read_barrier())
    }

    fn query(&self, _route: Route, stale_ok: bool, query: ShardQuery) -> Answer<'_> {
        Box::pin(self.node.read(stale_ok, query))
    }

    fn query_since(&self, _route: Route, since: Instant, query: ShardQuery) -> Answer<'_> {
        Box::pin(self.node.read_since(since, query))
    }

    fn reader_since(&self, _route: Route, since: Instant) -> LocalReader<'_> {
        Box::pin(self.node.reader_since(since))
    }

    fn start_read_barriers(&self, _shards: &[u64]) {
        self.node.start_read_barrier();
    }

    fn hosts(&self, _shard: u64) -> bool {
        !self.node.routes_elsewhere()
    }

    fn drains(&self, _shard: u64) -> bool {
        self.node.leads()
    }

    fn replicas_of(&self, _shard: u64) -> Result<Vec<String>, Error> {
        self.node.replicas_elsewhere()
    }

    fn replicated(&self) -> bool {
        true
    }
}

/// A node's replicas of every shard of a cluster (`imstore node --shards
/// N`), or any other per-shard backends ([`ShardedBackend::over`]): each
/// write goes to the backend of its shard, each conversation read to the
/// replica of its shard, by the stable placement of
/// [`imstore_raft::shard_for`]: a conversation's data lives in the shard of
/// its id. A follower of a shard forwards writes to that shard's leader
/// (`NOT_LEADER` with the leader only when it cannot); reads are served by
/// any replica after that shard's read barrier.
///
/// A user pair's friend rows and direct conversation live in the pair's
/// shard (`shard_for(pair_key(a, b))`; the engine, told the shard count,
/// picks the direct conversation's id in that shard), so friend requests,
/// acceptances and sends to direct conversations work on any shard count.
/// A user's inbox entries, conversation list rows and unread counts live
/// with the conversations they are about; user-wide reads visit every
/// shard ([`Route::Shard`]) and merge.
///
/// Limits (more than one shard): a batch of appends must stay within one
/// shard.
pub struct ShardedBackend<B: Backend = RaftBackend> {
    shards: Vec<B>,
}

impl ShardedBackend<RaftBackend> {
    /// Serves `replicas`, the replica of shard `i` at index `i`, each with
    /// [`proposals_in_flight_for`] their count. Must be called inside a
    /// tokio runtime.
    pub fn new(replicas: Vec<ReplicaNode>) -> Self {
        let in_flight = proposals_in_flight_for(replicas.len());
        Self::over(
            replicas
                .into_iter()
                .map(|r| RaftBackend::with_proposals_in_flight(r, in_flight))
                .collect(),
        )
    }
}

impl<B: Backend> ShardedBackend<B> {
    /// Serves `shards`, the backend of shard `i` at index `i` (for one
    /// engine store split into shards: [`EngineBackend`]s over
    /// [`Engine::with_shard`], with `Options::placement_shards` set to
    /// their count).
    pub fn over(shards: Vec<B>) -> Self {
        ShardedBackend { shards }
    }

    fn count(&self) -> u64 {
        self.shards.len() as u64
    }

    fn backend(&self, route: Route) -> Result<&B, Error> {
        let at = route.shard(self.count());
        self.shards.get(at as usize).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "shard {at} is not one of this cluster's {} shards",
                self.count()
            ))
        })
    }
}

/// The shard `command` belongs to in a store of `shards` shards: a
/// conversation's commands its conversation's, a pair's friend rows and
/// direct conversation the pair's, a user's views and device cursors the
/// user's. Errors: a batch of appends over several shards, and the
/// commands clients do not send.
pub(crate) fn place(command: &Command, shards: u64) -> Result<u64, Error> {
    if shards <= 1 {
        return Ok(0);
    }
    let of = |conversation: u64| Ok(imstore_raft::shard_for(conversation, shards));
    match command {
        Command::Append(messages) => {
            let mut placed = messages
                .iter()
                .map(|m| imstore_raft::shard_for(m.conversation, shards));
            let first = placed.next().unwrap_or(0);
            if placed.all(|s| s == first) {
                Ok(first)
            } else {
                Err(invalid_command(
                    "a batch of appends must stay within one shard: its conversations map \
                     to different shards",
                ))
            }
        }
        // A pair's friend rows and direct conversation live in the
        // pair's shard (the engine picks the direct id there).
        Command::OpenDirect { user, peer, .. } => of(imstore_engine::pair_key(*user, *peer)),
        Command::FriendRequest { from, to, .. } => of(imstore_engine::pair_key(*from, *to)),
        Command::FriendAccept {
            user, requester, ..
        }
        | Command::FriendDecline { user, requester } => {
            of(imstore_engine::pair_key(*user, *requester))
        }
        Command::FriendRemove { user, friend } => of(imstore_engine::pair_key(*user, *friend)),
        // A block is checked where the pair's direct conversation and
        // friend rows are.
        Command::Block { user, other, .. } | Command::Unblock { user, other } => {
            of(imstore_engine::pair_key(*user, *other))
        }
        // A user's views, settings and device cursors live in the user's
        // shard.
        Command::NoteRead { user, .. }
        | Command::SetSettings { user, .. }
        | Command::SaveCursor { user, .. }
        | Command::SaveCursorV1 { user, .. } => Ok(imstore_engine::shard_for_user(*user, shards)),
        Command::Deliver { .. } | Command::AckOutbox { .. } => Err(invalid_command(
            "delivery commands are sent to their shard by the outbox drain (submit_to_shard)",
        )),
        Command::PutMeta(_) | Command::ReplaceState(_) | Command::AddImageRows { .. } => Err(
            invalid_command("replication commands are not client writes"),
        ),
        // Every other command writes one conversation: its shard.
        other => match other.conversation() {
            Some(conversation) => of(conversation),
            None => Err(invalid_command(
                "this command names no conversation to place it by",
            )),
        },
    }
}

/// A command the sharded backend cannot place: the engine's
/// `InvalidArgument`, as if the engine had refused it.
fn invalid_command(why: &str) -> Error {
    imstore_engine::Error::InvalidArgument(why.to_owned()).into()
}

impl<B: Backend> Backend for ShardedBackend<B> {
    fn submit(&self, command: Command, done: Done) {
        match place(&command, self.count()) {
            Ok(shard) => self.submit_to_shard(shard, command, done),
            Err(e) => done(Err(e)),
        }
    }

    fn reader(&self, route: Route) -> Result<Reader, Error> {
        self.backend(route)?.reader(route)
    }

    fn read_barrier(&self, route: Route) -> Barrier<'_> {
        match self.backend(route) {
            Ok(backend) => backend.read_barrier(route),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn stale_read_barrier(&self, route: Route) -> Barrier<'_> {
        match self.backend(route) {
            Ok(backend) => backend.stale_read_barrier(route),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn query(&self, route: Route, stale_ok: bool, query: ShardQuery) -> Answer<'_> {
        match self.backend(route) {
            Ok(backend) => backend.query(route, stale_ok, query),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn query_since(&self, route: Route, since: Instant, query: ShardQuery) -> Answer<'_> {
        match self.backend(route) {
            Ok(backend) => backend.query_since(route, since, query),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn reader_since(&self, route: Route, since: Instant) -> LocalReader<'_> {
        match self.backend(route) {
            Ok(backend) => backend.reader_since(route, since),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn start_read_barriers(&self, shards: &[u64]) {
        for &shard in shards {
            if let Ok(backend) = self.backend(Route::Shard(shard)) {
                backend.start_read_barriers(&[shard]);
            }
        }
    }

    fn hosts(&self, shard: u64) -> bool {
        self.backend(Route::Shard(shard))
            .is_ok_and(|backend| backend.hosts(shard))
    }

    fn drains(&self, shard: u64) -> bool {
        self.backend(Route::Shard(shard))
            .is_ok_and(|backend| backend.drains(shard))
    }

    fn replicas_of(&self, shard: u64) -> Result<Vec<String>, Error> {
        self.backend(Route::Shard(shard))?.replicas_of(shard)
    }

    fn shard_count(&self) -> u64 {
        self.count().max(1)
    }

    fn replicated(&self) -> bool {
        self.shards.iter().any(Backend::replicated)
    }

    fn submit_to_shard(&self, shard: u64, command: Command, done: Done) {
        match self.shards.get(shard as usize) {
            Some(backend) => backend.submit(command, done),
            None => done(Err(Error::InvalidRequest(format!(
                "shard {shard} is not one of this cluster's {} shards",
                self.count()
            )))),
        }
    }
}
