//! [`TierBackend`]: the service's backend in a proxy, every write and read
//! a call to a node.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imstore_engine::{Command, Direction, Reader, SealedMessages, ShardAnswer, ShardQuery};
use imstore_proto::raft as pb;
use imstore_raft::{Proposal, Responses};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::directory::{Directory, NodeClient};
use super::flights::{Boarding, ConversationGate, Flights};
use super::segments::SegmentCache;
use crate::backend::{answer_writers, place, spawn_batcher, Answer, Backend, Done, Route};
use crate::error::ServiceError as Error;

/// Proposals of one shard a proxy has in flight at a time: writes that
/// queue behind them go together in the next.
const PROPOSALS_IN_FLIGHT: usize = 2;
/// The first pause before a round of retries; it doubles up to
/// [`MOST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MOST_PAUSE: Duration = Duration::from_millis(250);

/// A read's single-flight key: the shard, whether it may be stale, and the
/// encoded query (identical reads encode identically).
type ReadKey = (u64, bool, Vec<u8>);

/// A member's page read's key: the shard, whether it may be stale, the
/// conversation, where the page starts, its limit and whether it reads
/// forward; its riders are the viewers.
type PageKey = (u64, bool, u64, u64, u32, bool);

/// Reads that share one backend request.
type Shared<K, R> = Flights<K, R, ShardAnswer, Error>;

/// What the proxy tier counts, for `/metrics`.
#[derive(Default, Debug)]
pub struct TierFigures {
    /// Reads asked of nodes (`ShardRead` calls that went out, retries
    /// included).
    pub backend_reads: AtomicU64,
    /// Client reads that shared a backend read another reader started.
    pub reads_coalesced: AtomicU64,
    /// Reads that waited for their conversation's turn.
    pub reads_queued: AtomicU64,
    /// Proposals sent to nodes (retries included).
    pub backend_writes: AtomicU64,
    /// Calls sent again: to the next replica or after a pause.
    pub retries: AtomicU64,
    /// Sealed segments a page read took from the proxy's cache.
    pub segments_from_cache: AtomicU64,
    /// Sealed segments page reads brought from nodes.
    pub segments_fetched: AtomicU64,
}

/// The proxy's backend: a write is proposed to its shard's leader, a read
/// asked of a replica (`RaftTransport/Propose`, `RaftTransport/ShardRead`);
/// `NOT_LEADER` and unavailability are retried within the request
/// deadline, writes only when retrying them cannot apply them twice.
pub struct TierBackend {
    calls: Arc<Calls>,
    queues: Vec<UnboundedSender<(Command, Done)>>,
    /// Identical reads.
    reads: Arc<Shared<ReadKey, ()>>,
    /// Members' reads of the same page: one `ViewerPages` read for all.
    pages: Arc<Shared<PageKey, u64>>,
}

/// What the backend's tasks share.
/// How long a request may take, and each attempt at one node of one
/// that may be sent twice; backend reads of one conversation out at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) deadline: Duration,
    pub(crate) attempt: Duration,
    pub(crate) reads_in_flight: usize,
    /// The sealed-segment cache's budget in bytes.
    pub(crate) segment_cache_bytes: usize,
}

struct Calls {
    directory: Arc<Directory>,
    /// Turns of reads any replica may answer, spread over the replicas.
    turns: std::sync::atomic::AtomicUsize,
    deadline: Duration,
    attempt: Duration,
    gate: Arc<ConversationGate>,
    segments: SegmentCache,
    figures: Arc<TierFigures>,
}

impl TierBackend {
    /// A backend over `directory`'s cluster, within `limits`. Must be
    /// called inside a tokio runtime.
    pub(crate) fn new(directory: Arc<Directory>, limits: Limits) -> TierBackend {
        let calls = Arc::new(Calls {
            directory,
            turns: std::sync::atomic::AtomicUsize::new(0),
            deadline: limits.deadline,
            attempt: limits.attempt,
            gate: ConversationGate::new(limits.reads_in_flight),
            segments: SegmentCache::new(limits.segment_cache_bytes),
            figures: Arc::default(),
        });
        let queues = (0..calls.directory.shard_count())
            .map(|shard| {
                let calls = Arc::clone(&calls);
                spawn_batcher(PROPOSALS_IN_FLIGHT, move |batch| {
                    let calls = Arc::clone(&calls);
                    async move { calls.propose(shard, batch).await }
                })
            })
            .collect();
        TierBackend {
            calls,
            queues,
            reads: Arc::new(Flights::new(1)),
            pages: Arc::new(Flights::new(imstore_engine::MAX_VIEWERS)),
        }
    }

    /// One backend read of `shard` shared by every reader whose `key` and
    /// time match ([`Flights`]), asking the query `encoded(riders)` gives
    /// (with what it pins for `finish`, which makes the answer they
    /// share); a conversation's reads take turns at its gate.
    async fn shared_read<K, R, P>(
        &self,
        flights: &Arc<Shared<K, R>>,
        key: K,
        rider: R,
        (shard, stale_ok, conversation): (u64, bool, Option<u64>),
        encoded: impl Fn(Vec<R>) -> Result<(Vec<u8>, P), Error> + Send + Sync + 'static,
        finish: impl Fn(&Calls, ShardAnswer, P) -> Result<ShardAnswer, Error> + Send + Sync + 'static,
    ) -> Result<ShardAnswer, Error>
    where
        K: std::hash::Hash + Eq + Clone + Send + 'static,
        R: PartialEq + Send + 'static,
        P: Send + 'static,
    {
        let calls = Arc::clone(&self.calls);
        let (encoded, finish) = (Arc::new(encoded), Arc::new(finish));
        let fetch = move |riders: Vec<R>| {
            let (calls, encoded) = (Arc::clone(&calls), Arc::clone(&encoded));
            let finish = Arc::clone(&finish);
            async move {
                let (encoded, pinned) = encoded(riders)?;
                let _turn = match conversation {
                    Some(c) => {
                        let (turn, waited) = calls.gate.turn(c).await;
                        if waited {
                            calls.figures.reads_queued.fetch_add(1, Ordering::Relaxed);
                        }
                        turn
                    }
                    None => None,
                };
                let answer = calls.read(shard, stale_ok, encoded).await?;
                finish(&calls, answer, pinned)
            }
        };
        let gone = Error::Internal("a proxy's backend read ended without an answer".into());
        let (answer, boarding) = flights.read(key, rider, fetch, gone).await;
        if boarding == Boarding::Joined {
            self.calls
                .figures
                .reads_coalesced
                .fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// What the backend has counted.
    pub(crate) fn figures(&self) -> &TierFigures {
        &self.calls.figures
    }

    /// Bytes and sealed segments the segment cache holds now.
    pub(crate) fn segment_cache_usage(&self) -> (usize, usize) {
        self.calls.segments.usage()
    }

    /// Keys with a backend read in flight, and conversations with reads
    /// out or waiting.
    pub(crate) fn reads_in_flight(&self) -> (usize, usize) {
        (
            self.reads.in_flight() + self.pages.in_flight(),
            self.calls.gate.busy(),
        )
    }
}

/// Whether a command may be proposed again after an attempt whose answer
/// was lost (it may have been applied): deduplicated sends, and commands
/// whose second application changes nothing. A group's creation (the
/// second is `ALREADY_EXISTS`), a friend request's answer, a recall and an
/// edit are not retried then: the caller learns the attempt's fate by
/// reading.
fn retry_safe(command: &Command) -> bool {
    match command {
        Command::Append(messages) => messages.iter().all(|m| !m.client_msg_id.is_empty()),
        Command::Send(message) | Command::SendMentioning { message, .. } => {
            !message.client_msg_id.is_empty()
        }
        Command::OpenDirect { .. }
        | Command::AddMembers { .. }
        | Command::RemoveMembers { .. }
        | Command::FriendRequest { .. }
        | Command::FriendRemove { .. }
        | Command::MarkRead { .. }
        | Command::DeleteForMe { .. }
        | Command::ClearHistory { .. }
        | Command::SetRetention { .. }
        | Command::SaveCursor { .. }
        | Command::SaveCursorV1 { .. }
        | Command::Block { .. }
        | Command::Unblock { .. }
        | Command::React { .. }
        | Command::NoteRead { .. }
        | Command::SetSettings { .. } => true,
        _ => false,
    }
}

/// Whether a node's error means "nothing was done, ask elsewhere".
fn ask_elsewhere(error: &Error) -> bool {
    error.is_refused_up_front()
}

impl Calls {
    /// Proposes one batch of `shard` and answers each of its writers.
    async fn propose(&self, shard: u64, batch: Vec<(Command, Done)>) {
        let (commands, done): (Vec<Command>, Vec<Done>) = batch.into_iter().unzip();
        let again_if_lost = commands.iter().all(retry_safe);
        let proposal = Proposal(commands);
        let result = match bincode::serialize(&proposal) {
            Ok(payload) => {
                self.call(shard, again_if_lost, false, |mut client| {
                    self.figures.backend_writes.fetch_add(1, Ordering::Relaxed);
                    let payload = payload.clone();
                    async move {
                        let answer = client
                            .propose(pb::RaftMessage {
                                shard,
                                payload,
                                from: 0,
                                error: String::new(),
                                format: u32::from(imstore_raft::ENTRY_FORMAT_VERSION),
                            })
                            .await
                            .map_err(|s| (Error::from_status(&s), transport_failed(&s)))?;
                        bincode::deserialize::<Responses>(&answer.into_inner().payload).map_err(
                            |e| {
                                (
                                    Error::Internal(format!("a node's answer to a write: {e}")),
                                    false,
                                )
                            },
                        )
                    }
                })
                .await
            }
            Err(e) => Err(Error::Internal(format!("encoding a proposal: {e}"))),
        };
        answer_writers(done, result);
    }

    /// One read of `shard`, on a replica (after its read barrier unless
    /// `stale_ok`).
    async fn read(&self, shard: u64, stale_ok: bool, query: Vec<u8>) -> Result<ShardAnswer, Error> {
        // A linearizable read goes to the leader hint first (its read index
        // is cheapest there); one that may be stale to the replicas in turn.
        self.call(shard, true, stale_ok, |mut client| {
            self.figures.backend_reads.fetch_add(1, Ordering::Relaxed);
            let query = query.clone();
            async move {
                let answer = client
                    .shard_read(pb::ShardReadRequest {
                        shard,
                        from: 0,
                        stale_ok,
                        query,
                    })
                    .await
                    .map_err(|s| (Error::from_status(&s), transport_failed(&s)))?;
                // The engine's own errors travel in the answer.
                bincode::deserialize::<Result<ShardAnswer, Error>>(&answer.into_inner().payload)
                    .map_err(|e| {
                        (
                            Error::Internal(format!("a node's answer to a read: {e}")),
                            false,
                        )
                    })
            }
        })
        .await?
    }

    /// Makes `call` on the nodes that may answer for `shard`, in the
    /// directory's order (the replicas in turn when `spread`), until one
    /// answers or the deadline passes. A
    /// refusal up front (`NOT_LEADER`, `NOT_HOSTED`; its leader hint is
    /// followed) and a failure to connect always go on to the next node;
    /// any other unavailability only when `again_if_lost`. Rounds of
    /// every node are paused between, longer each time, with the map read
    /// again.
    async fn call<T, F, Fut>(
        &self,
        shard: u64,
        again_if_lost: bool,
        spread: bool,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: Future<Output = Result<T, (Error, bool)>>,
    {
        let deadline = Instant::now() + self.deadline;
        let mut pause = FIRST_PAUSE;
        let mut tried = 0u64;
        let mut last = None;
        // Hops to a hinted leader restart the round without a pause, a
        // bounded number of times per pause (hints may chase each other).
        let mut hops = 0;
        'rounds: loop {
            let targets = if spread {
                let turn = self.turns.fetch_add(1, Ordering::Relaxed);
                self.directory.targets_from(shard, turn)
            } else {
                self.directory.targets(shard)
            };
            let mut at = 0;
            while let Some(address) = targets.get(at).cloned() {
                at += 1;
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break 'rounds;
                };
                if tried > 0 {
                    self.figures.retries.fetch_add(1, Ordering::Relaxed);
                }
                tried += 1;
                let client = match self.directory.client(&address).await {
                    Ok(client) => client,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
                // What may be sent twice gives up on a node that hangs
                // after one attempt's time; the rest waits for its answer.
                let wait = if again_if_lost {
                    left.min(self.attempt)
                } else {
                    left
                };
                let error = match tokio::time::timeout(wait, call(client)).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err((error, transport))) => {
                        if transport {
                            self.directory.forget(&address);
                        }
                        error
                    }
                    Err(_) => {
                        // A node that hangs may hold a broken connection:
                        // the next call dials afresh.
                        self.directory.forget(&address);
                        Error::Unavailable(format!(
                            "shard {shard}: {address} did not answer within {wait:?}"
                        ))
                    }
                };
                if ask_elsewhere(&error) {
                    if let Error::NotLeader {
                        address: Some(leader),
                        ..
                    } = &error
                    {
                        if leader != &address && hops < 3 {
                            hops += 1;
                            self.directory.note_leader(shard, leader);
                            last = Some(error);
                            continue 'rounds;
                        }
                    }
                    last = Some(error);
                    continue;
                }
                match error {
                    Error::Unavailable(_) if again_if_lost => last = Some(error),
                    other => return Err(other),
                }
            }
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MOST_PAUSE);
            hops = 0;
            if let Err(e) = self.directory.refresh().await {
                tracing::debug!(error = %e, "re-reading the shard map for a retry failed");
            }
        }
        Err(match last {
            Some(Error::Unavailable(why)) => Error::Unavailable(format!(
                "shard {shard}: no node answered within the proxy's request deadline \
                 ({:?}): {why}",
                self.deadline
            )),
            Some(other) => other,
            None => Error::Unavailable(format!(
                "shard {shard}: no node answered within the proxy's request deadline ({:?})",
                self.deadline
            )),
        })
    }
}

/// A read as the node transport carries it (bincode).
/// A page from a node's parts and the segments pinned for it; the
/// segments the node brought are kept.
fn assemble_page(
    calls: &Calls,
    answer: ShardAnswer,
    pinned: Vec<(u64, SealedMessages)>,
) -> Result<ShardAnswer, Error> {
    let ShardAnswer::PageParts(parts) = answer else {
        return Err(Error::Internal(
            "a node answered a page read with something else".into(),
        ));
    };
    let conversation = parts.conversation;
    let used = parts.bases.len() - parts.sealed.len();
    let (pages, brought) = parts.assemble(|base| {
        pinned
            .binary_search_by_key(&base, |(b, _)| *b)
            .ok()
            .map(|at| SealedMessages::clone(&pinned[at].1))
    })?;
    let figures = &calls.figures;
    figures
        .segments_from_cache
        .fetch_add(used as u64, Ordering::Relaxed);
    figures
        .segments_fetched
        .fetch_add(brought.len() as u64, Ordering::Relaxed);
    calls.segments.keep(conversation, brought);
    Ok(ShardAnswer::ViewerPages(pages))
}

fn encode(query: &ShardQuery) -> Result<Vec<u8>, Error> {
    bincode::serialize(query).map_err(|e| Error::Internal(format!("encoding a read: {e}")))
}

/// Whether a failed call failed in the connection (no `ErrorInfo`: the
/// node never answered), so the connection should be made afresh.
fn transport_failed(status: &tonic::Status) -> bool {
    imstore_proto::errors::error_info(status).is_none()
}

impl Backend for TierBackend {
    fn submit(&self, command: Command, done: Done) {
        match place(&command, self.shard_count()) {
            Ok(shard) => self.submit_to_shard(shard, command, done),
            Err(e) => done(Err(e)),
        }
    }

    fn reader(&self, _route: Route) -> Result<Reader, Error> {
        Err(Error::Refused(
            "a proxy holds no data: ask a node (status, verify and backup are node RPCs)".into(),
        ))
    }

    /// Identical concurrent reads share one backend read, and members'
    /// reads of the same page one `ViewerPages` read ([`Flights`]); a
    /// conversation has a bounded number out.
    fn query(&self, route: Route, stale_ok: bool, query: ShardQuery) -> Answer<'_> {
        Box::pin(async move {
            let shard = route.shard(self.shard_count());
            let conversation = match route {
                Route::Conversation(c) => Some(c),
                _ => None,
            };
            let at = (shard, stale_ok, conversation);
            if let ShardQuery::ReadAs {
                viewer,
                conversation,
                from,
                limit,
                direction,
            } = query
            {
                let forward = direction == Direction::Forward;
                let key = (shard, stale_ok, conversation, from, limit, forward);
                let calls = Arc::clone(&self.calls);
                // The page in parts: the sealed segments held here are
                // pinned while the read is out and left out of the answer.
                let ask = move |viewers| {
                    let pinned: Vec<(u64, SealedMessages)> = calls
                        .segments
                        .held(conversation, from, direction)
                        .into_iter()
                        .filter_map(|base| Some((base, calls.segments.get(conversation, base)?)))
                        .collect();
                    let query = ShardQuery::PageParts {
                        conversation,
                        from,
                        limit,
                        direction,
                        viewers,
                        cached: pinned.iter().map(|(base, _)| *base).collect(),
                    };
                    Ok((encode(&query)?, pinned))
                };
                let answer = self
                    .shared_read(&self.pages, key, viewer, at, ask, assemble_page)
                    .await?;
                let ShardAnswer::ViewerPages(pages) = answer else {
                    return Err(Error::Internal(
                        "a node answered a page read with something else".into(),
                    ));
                };
                return match pages.page(viewer) {
                    Some(page) => Ok(ShardAnswer::Views(page?)),
                    None => Err(Error::Internal(
                        "a node's page read left out a viewer it was asked for".into(),
                    )),
                };
            }
            // The encoded query is both the key and what is sent.
            let encoded = encode(&query)?;
            let key = (shard, stale_ok, encoded.clone());
            let ask = move |_| Ok((encoded.clone(), ()));
            self.shared_read(&self.reads, key, (), at, ask, |_, answer, ()| Ok(answer))
                .await
        })
    }

    fn hosts(&self, _shard: u64) -> bool {
        false
    }

    fn replicas_of(&self, shard: u64) -> Result<Vec<String>, Error> {
        let targets = self.calls.directory.targets(shard);
        if targets.is_empty() {
            return Err(Error::Unavailable(format!(
                "shard {shard}: the proxy knows no node to reach it"
            )));
        }
        Ok(targets)
    }

    fn shard_count(&self) -> u64 {
        self.calls.directory.shard_count().max(1)
    }

    fn replicated(&self) -> bool {
        true
    }

    fn submit_to_shard(&self, shard: u64, command: Command, done: Done) {
        match self.queues.get(shard as usize) {
            Some(queue) => {
                if let Err(tokio::sync::mpsc::error::SendError((_, done))) =
                    queue.send((command, done))
                {
                    done(Err(imstore_engine::Error::Closed.into()));
                }
            }
            None => done(Err(Error::InvalidRequest(format!(
                "shard {shard} is not one of this cluster's {} shards",
                self.shard_count()
            )))),
        }
    }

    fn drains(&self, _shard: u64) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn only_writes_that_cannot_apply_twice_are_sent_again_after_a_lost_answer() {
        let send = |id: &'static str| {
            Command::Send(imstore_engine::SendMessage {
                conversation: 1,
                sender: 2,
                client_msg_id: Bytes::from_static(id.as_bytes()),
                payload: Bytes::new(),
                timestamp_ms: 0,
                receipt: false,
            })
        };
        assert!(retry_safe(&send("a")));
        assert!(
            !retry_safe(&send("")),
            "a send without a client id is not deduplicated"
        );
        assert!(retry_safe(&Command::MarkRead {
            user: 1,
            conversation: 2,
            up_to: 3
        }));
        assert!(!retry_safe(&Command::CreateGroup {
            conversation: 1,
            owner: 1,
            members: vec![],
            timestamp_ms: 0
        }));
        assert!(!retry_safe(&Command::Recall {
            conversation: 1,
            seq: 1,
            by: 1,
            admin: false,
            timestamp_ms: 0
        }));
    }

    /// A listener on 127.0.0.1 that takes connections and never answers:
    /// a node that hangs.
    async fn hanging_node() -> Result<String, Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(address)
    }

    fn calls(replicas: Vec<String>, deadline: Duration, attempt: Duration) -> Calls {
        Calls {
            directory: Arc::new(Directory::fixed(replicas)),
            turns: std::sync::atomic::AtomicUsize::new(0),
            deadline,
            attempt,
            gate: ConversationGate::new(1),
            segments: SegmentCache::new(0),
            figures: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_node_that_hangs_costs_a_call_that_may_be_sent_twice_one_attempt(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let replicas = vec![hanging_node().await?, hanging_node().await?];
        // A deadline far beyond the test's patience: only the attempt's
        // bound lets the call reach the second node.
        let calls = calls(
            replicas,
            Duration::from_secs(3_600),
            Duration::from_millis(50),
        );
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let call = calls.call(0, true, false, |_client| {
            let first = tries.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok::<u64, (Error, bool)>(7)
            }
        });
        // A guard, not a measure: without the bound the call would wait
        // for the hour-long deadline.
        let answer = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .map_err(|_| "the call waited on the hanging node")??;
        assert_eq!(answer, 7);
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_call_that_may_not_be_sent_twice_waits_for_its_node(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let replicas = vec![hanging_node().await?, hanging_node().await?];
        let calls = calls(
            replicas,
            Duration::from_millis(300),
            Duration::from_millis(50),
        );
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let answer = calls
            .call(0, false, false, |_client| {
                tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    std::future::pending::<()>().await;
                    Ok::<u64, (Error, bool)>(7)
                }
            })
            .await;
        assert!(matches!(answer, Err(Error::Unavailable(_))), "{answer:?}");
        assert_eq!(
            tries.load(Ordering::SeqCst),
            1,
            "never sent to a second node"
        );
        Ok(())
    }
}
