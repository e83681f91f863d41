//! A replica's reads: here after the read barrier (by the one batched
//! round of `crate::read_index` or, when that cannot tell, openraft's own
//! check on the leader or the leader's `ReadIndex` on a follower), or at a
//! host the shard map names when this node does not serve them.
//!
//! Reads share rounds. A round's index covers every write acknowledged
//! before the round started (it asks after that), so any read that began
//! before then may wait for it instead of asking again: a read begun at
//! `since` joins the latest round if that started at or after `since`.
//! A user-wide read uses this twice: its second round's shards (the
//! user's big groups) start their barriers when the read begins
//! ([`ReplicaNode::start_read_barrier`]), alongside the first round's, and
//! a shard read twice in one request asks once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use imstore_engine::{Reader, ShardAnswer, ShardQuery};
use imstore_proto::raft as pb;
use openraft::error::{CheckIsLeaderError, RaftError};

use super::{unavailable, ReplicaNode, FORWARD_TIMEOUT};
use crate::Error;

/// Longest a read barrier waits (for the leader's read index, then for
/// this replica to apply up to it) before answering `UNAVAILABLE`.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// One round of `ReadStandings` asks: the read index it found (`None`:
/// it could not tell, and each of its readers falls back on its own).
pub(crate) struct ReadRound {
    started: Instant,
    index: tokio::sync::OnceCell<Option<u64>>,
}

impl ReplicaNode {
    /// The latest round, if it started at or after `since` and has not
    /// come back empty; else a new round, now the latest.
    fn round_since(&self, since: Instant) -> Arc<ReadRound> {
        let mut latest = self
            .lifecycle
            .read_round
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(round) = latest.as_ref() {
            if round.started >= since && round.index.get() != Some(&None) {
                return Arc::clone(round);
            }
        }
        let round = Arc::new(ReadRound {
            started: Instant::now(),
            index: tokio::sync::OnceCell::new(),
        });
        *latest = Some(Arc::clone(&round));
        round
    }

    /// Drops the latest round (its index is of a replaced instance).
    pub(super) fn forget_read_round(&self) {
        *self
            .lifecycle
            .read_round
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The read index of a read begun at `since`, from a round shared
    /// with other reads. If the reader that runs the round is dropped
    /// midway, the next waiter asks anew (later than the round's start,
    /// which only covers more).
    async fn shared_read_index(&self, since: Instant) -> Option<u64> {
        let round = self.round_since(since);
        *round.index.get_or_init(|| self.fast_read_index()).await
    }

    /// Starts a read-index round now, in the background, for reads about
    /// to follow (they join it: [`ReplicaNode::read_since`]). Nothing when
    /// this node does not host the shard: its reads are served elsewhere.
    pub fn start_read_barrier(&self) {
        if self.routes_elsewhere() {
            return;
        }
        let round = self.round_since(Instant::now());
        if round.index.initialized() {
            return;
        }
        let replica = self.clone();
        tokio::spawn(async move {
            round.index.get_or_init(|| replica.fast_read_index()).await;
        });
    }

    /// The shard's read index, found by one round of `ReadStandings`
    /// calls to its other voters ([`crate::read_index`]), on the leader and
    /// on followers alike; `None` when that cannot tell, and openraft's own
    /// check must run.
    async fn fast_read_index(&self) -> Option<u64> {
        let asked = {
            let raft = self.raft();
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .filter(|&id| id != self.node_id)
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect()
        };
        let patience = Duration::from_millis(self.lifecycle.config.heartbeat_ms.max(1));
        crate::read_index::read_index(
            &self.peers,
            &self.faults,
            self.node_id,
            self.shard,
            async { self.standing().await.ok() },
            asked,
            patience,
        )
        .await
    }

    /// This replica's standing in its group, as `ReadStandings` answers
    /// it: its persisted vote term and, when it leads with an entry of its
    /// term committed, that term, its commit index and its membership.
    pub(crate) async fn standing(&self) -> Result<imstore_proto::raft::ReadStanding, Error> {
        let mut standing = imstore_proto::raft::ReadStanding {
            hosted: true,
            vote_term: self.saved_vote_term()?,
            ..Default::default()
        };
        let raft = self.raft();
        // Only a leader has more to say: skip the raft core's hop.
        if raft.metrics().borrow().current_leader == Some(self.node_id) {
            if let Some(leader) = crate::read_index::leader_standing(&raft, self.node_id).await {
                standing.leader_term = leader.term;
                standing.commit_index = leader.index;
                standing.configs = leader
                    .configs
                    .into_iter()
                    .map(|ids| imstore_proto::raft::Voters { ids })
                    .collect();
            }
        }
        Ok(standing)
    }

    /// The term of the vote this replica's log has persisted (0: none),
    /// which a peer's leadership check compares with its own term.
    pub(crate) fn saved_vote_term(&self) -> Result<u64, Error> {
        self.lifecycle
            .storage
            .log
            .for_shard(self.shard)
            .saved_vote()
            .map(|vote| vote.map_or(0, |v| v.leader_id.term))
            .map_err(unavailable)
    }

    /// Completes once a read of [`ReplicaNode::engine`] would see every
    /// write of the shard acknowledged before the call (linearizable), on
    /// the leader and on followers alike. The leader confirms its
    /// leadership with a quorum and waits until it has applied its commit
    /// index (raft's read index, `ensure_linearizable`); a follower asks
    /// the leader for that index (`ReadIndex`) and waits until it has
    /// applied it itself, so any replica serves linearizable reads.
    ///
    /// Errors: `NotLeader` with no leader known (an election is under way)
    /// and `UNAVAILABLE` when the leader cannot be reached or the wait
    /// passes 5 s; both are retryable.
    pub async fn read_barrier(&self) -> Result<(), Error> {
        self.read_barrier_since(Instant::now()).await
    }

    /// [`ReplicaNode::read_barrier`] of a read that began at `since`: a
    /// round begun at or after then serves it.
    pub async fn read_barrier_since(&self, since: Instant) -> Result<(), Error> {
        match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.wait_for_read_index(since)).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!(
                "shard {}: no read index within {READ_BARRIER_TIMEOUT:?}",
                self.shard
            ))),
        }
    }

    async fn wait_for_read_index(&self, since: Instant) -> Result<(), Error> {
        if let Some(index) = self.shared_read_index(since).await {
            return self.wait_applied(index).await;
        }
        let forward = match self.raft().ensure_linearizable().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => f,
            Err(e) => return Err(unavailable(e)),
        };
        let (Some(leader), Some(node)) = (forward.leader_id, forward.leader_node) else {
            return Err(self.not_leader(None, None));
        };
        if self.faults.is_cut_off(leader) {
            return Err(unavailable("partitioned from the leader (fault injection)"));
        }
        let mut client = self.peer_client(&node.addr)?;
        let index = client
            .read_index(pb::ReadIndexRequest {
                shard: self.shard,
                from: self.node_id,
            })
            .await
            .map_err(|status| match Error::from_status(&status) {
                Error::Unavailable(why) => unavailable(format!(
                    "shard {}: read index from node {leader}: {why}",
                    self.shard
                )),
                other => other,
            })?
            .into_inner()
            .index;
        if index > 0 {
            self.wait_applied(index).await?;
        }
        Ok(())
    }

    /// Completes once this replica has applied log index `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), Error> {
        self.raft()
            .wait(None)
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Answers one read of the shard: here, after the read barrier (none
    /// when `stale_ok`: this replica's applied state), if this node hosts
    /// the shard; else at a node the shard map names, which does the same
    /// (`RaftTransport/ShardRead`), the leader hint first, the others if
    /// it fails. Errors: the engine's, or `NotLeader`/`UNAVAILABLE`
    /// (retryable) when no replica answers.
    pub async fn read(&self, stale_ok: bool, query: ShardQuery) -> Result<ShardAnswer, Error> {
        let barrier = (!stale_ok).then(Instant::now);
        self.read_with(barrier, query).await
    }

    /// [`ReplicaNode::read`] of a linearizable read that began at `since`:
    /// here, a read-index round begun at or after `since` serves it, one
    /// another read began or [`ReplicaNode::start_read_barrier`] did.
    pub async fn read_since(
        &self,
        since: Instant,
        query: ShardQuery,
    ) -> Result<ShardAnswer, Error> {
        self.read_with(Some(since), query).await
    }

    /// The engine a linearizable read begun at `since` may run on here,
    /// once its read barrier has passed; `None` when this node does not
    /// serve the shard's reads itself (it does not host it, or is
    /// installing a snapshot): [`ReplicaNode::read_since`] then reads it
    /// elsewhere. What lets a caller run several shards' reads in one
    /// blocking task.
    pub async fn reader_since(&self, since: Instant) -> Result<Option<Reader>, Error> {
        if self.elsewhere().is_some() {
            return Ok(None);
        }
        self.read_barrier_since(since).await?;
        // A snapshot began installing meanwhile: its rows are half
        // replaced.
        Ok((!self.state_machine().is_installing()).then(|| self.reader()))
    }

    /// Where this replica's reads go instead of here: the metadata group
    /// that finds the shard's hosts, when this node does not host it or
    /// is installing a snapshot (half replaced).
    fn elsewhere(&self) -> Option<&ReplicaNode> {
        self.directory_if_not_hosted().or_else(|| {
            self.directory
                .get()
                .filter(|_| self.state_machine().is_installing())
        })
    }

    /// A read after the barrier of a read begun at `barrier` (none:
    /// `stale_ok`).
    async fn read_with(
        &self,
        barrier: Option<Instant>,
        query: ShardQuery,
    ) -> Result<ShardAnswer, Error> {
        match self.elsewhere() {
            Some(meta) => self.read_elsewhere(meta, barrier.is_none(), query).await,
            None => {
                if let Some(since) = barrier {
                    self.read_barrier_since(since).await?;
                }
                self.query_here(query).await
            }
        }
    }

    /// Runs `query` on this replica's engine (from memory when the tail
    /// cache holds it, else on the blocking pool), with no barrier.
    pub(crate) async fn query_here(&self, query: ShardQuery) -> Result<ShardAnswer, Error> {
        if self.state_machine().is_installing() {
            // Its rows are half replaced: nothing read now would be true.
            return Err(unavailable(format!(
                "shard {} is installing a snapshot on node {}; retry",
                self.shard, self.node_id
            )));
        }
        if let Some(answer) = self.engine.query_cached(&query) {
            return Ok(answer);
        }
        let engine = self.engine.clone();
        Ok(tokio::task::spawn_blocking(move || engine.query(query))
            .await
            .map_err(unavailable)??)
    }

    async fn read_elsewhere(
        &self,
        meta: &ReplicaNode,
        stale_ok: bool,
        query: ShardQuery,
    ) -> Result<ShardAnswer, Error> {
        let encoded = bincode::serialize(&query).map_err(unavailable)?;
        let mut failures = Vec::new();
        for (id, address) in self.replicas_from_map(meta)? {
            let mut client = self.peer_client(&address)?;
            let asked = client.shard_read(pb::ShardReadRequest {
                shard: self.shard,
                from: self.node_id,
                stale_ok,
                query: encoded.clone(),
            });
            match tokio::time::timeout(FORWARD_TIMEOUT, asked).await {
                Ok(Ok(answer)) => {
                    let answer: Result<ShardAnswer, Error> =
                        bincode::deserialize(&answer.into_inner().payload).map_err(unavailable)?;
                    return answer;
                }
                Ok(Err(status)) => failures.push(format!("node {id}: {}", status.message())),
                Err(_) => failures.push(format!("node {id}: no answer in {FORWARD_TIMEOUT:?}")),
            }
        }
        Err(unavailable(format!(
            "shard {}: no replica answered a read ({})",
            self.shard,
            failures.join("; ")
        )))
    }
}
