//! Quiet groups: a shard's group with nothing to do stops its heartbeats
//! and election timers, and one call per peer node every heartbeat interval
//! stands in for all of them (`RaftTransport/Quiesce`;
//! `docs/replication.md`, "Quiet groups").
//!
//! Why: every raft group heartbeats, so a node with hundreds of shards
//! spends its cores on the heartbeats and timer ticks of groups nobody
//! writes, and every read waits behind them. TiKV calls this hibernating
//! regions.
//!
//! How, per node ([`spawn_quiescer`]):
//! 1. A shard this node leads is *idle* once, for [`IDLE_PASSES`] passes
//!    in a row, its log has not grown and every member has matched and
//!    applied all of it (so every follower knows the commit index), with
//!    one configuration in which this node is a voter.
//! 2. The leader then lists the shard, with its term and last index, in
//!    its `Quiesce` call to each other member's node. A member *holds* it:
//!    when its replica follows that leader in that term with the same
//!    log, all applied, it turns its replica's ticks off (no election
//!    timer) until eight heartbeat intervals (the longest election
//!    timeout) pass without another such call.
//! 3. Once every other member holds the shard, the leader turns its own
//!    ticks off: no more heartbeats. It goes on listing the shard every
//!    pass, which renews the holds.
//! 4. A group wakes (ticks back on) as soon as anything happens: the
//!    leader sends an AppendEntries with entries or a snapshot (a write,
//!    a membership change), or a member receives one; a hold expires (the
//!    leader's node stopped calling: dead, cut off, restarted); a member
//!    stops holding, or the leader stops leading. Raft then runs as
//!    before.
//!
//! Safety does not depend on any of this: ticks only drive heartbeats and
//! elections, never what is committed. A stale quiet leader cannot serve
//! reads (the read index asks a quorum's votes, `crate::read_index`) nor
//! commit. What quieting changes is when a dead leader is noticed: a
//! held follower waits for its hold to expire (eight heartbeat
//! intervals), then for its election timeout, which has long passed: about
//! what an awake follower waits.
//!
//! Empty AppendEntries (heartbeats, openraft's leadership checks) neither
//! wake a leader nor a member: they are what quiet groups do without.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imstore_proto::raft as pb;
use openraft::{Raft, ServerState};

use crate::{ReplicaNode, TypeConfig};

/// Passes (heartbeat intervals) a led shard must stay idle before it is
/// quieted.
pub(crate) const IDLE_PASSES: u32 = 3;

/// Heartbeat intervals a hold lasts without a renewing call: the longest
/// election timeout (`election_timeout_max` is eight intervals), so that a
/// quiet group whose leader's node stalls for a few passes does not hold
/// an election it would not have held awake.
const HOLD_INTERVALS: u32 = 8;

/// A node's quiet groups: those it leads and has quieted (or is about to),
/// and those its leader on another node holds quiet here. Shared by the
/// node's transport (which wakes groups as messages pass) and its
/// quiescer.
#[derive(Clone, Default)]
pub(crate) struct Quiet {
    state: Arc<Mutex<QuietState>>,
}

#[derive(Default)]
struct QuietState {
    /// Shards this node leads, being quieted (`quiet: false`, its calls
    /// out) or quiet.
    led: BTreeMap<u64, Led>,
    /// Shards held quiet for their leader on another node.
    held: BTreeMap<u64, Held>,
}

struct Led {
    raft: Raft<TypeConfig>,
    quiet: bool,
}

struct Held {
    raft: Raft<TypeConfig>,
    leader: u64,
    term: u64,
    until: Instant,
}

/// Ticks on or off: heartbeats on a leader, the election timer on others.
fn ticks(raft: &Raft<TypeConfig>, on: bool) {
    raft.runtime_config().tick(on);
}

impl Quiet {
    fn state(&self) -> std::sync::MutexGuard<'_, QuietState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes `shard` if this node quieted it (or is quieting it): it is
    /// sending the group entries or a snapshot, or the group has work, or
    /// this node no longer leads it.
    pub(crate) fn wake_led(&self, shard: u64) {
        let mut state = self.state();
        if let Some(led) = state.led.remove(&shard) {
            if led.quiet {
                ticks(&led.raft, true);
            }
        }
    }

    /// This node's replica of `shard` was sent entries or a snapshot (and
    /// has taken them: its election timer starts from now): it wakes, if
    /// held.
    pub(crate) fn heard(&self, shard: u64) {
        if let Some(held) = self.state().held.remove(&shard) {
            ticks(&held.raft, true);
        }
    }

    /// Whether `shard`'s group is quiet on this node (quieted as its
    /// leader, or held).
    pub(crate) fn is_quiet(&self, shard: u64) -> bool {
        let state = self.state();
        state.held.contains_key(&shard) || state.led.get(&shard).is_some_and(|l| l.quiet)
    }

    /// Holds `shard` quiet for `leader` in `term` until `until`.
    fn hold(&self, shard: u64, raft: Raft<TypeConfig>, leader: u64, term: u64, until: Instant) {
        ticks(&raft, false);
        self.state().held.insert(
            shard,
            Held {
                raft,
                leader,
                term,
                until,
            },
        );
    }

    /// Wakes every held shard whose hold ran out by `now`, or that a call
    /// from its leader's node no longer renews.
    fn expire(&self, now: Instant) {
        self.state().held.retain(|_, held| {
            let keep = held.until > now;
            if !keep {
                ticks(&held.raft, true);
            }
            keep
        });
    }

    /// Whether this node holds `shard` for `leader` in `term`.
    fn holds_for(&self, shard: u64, leader: u64, term: u64) -> bool {
        self.state()
            .held
            .get(&shard)
            .is_some_and(|h| h.leader == leader && h.term == term)
    }

    /// Starts quieting `shard`, led here (nothing if under way or quiet).
    fn begin(&self, shard: u64, raft: Raft<TypeConfig>) {
        self.state()
            .led
            .entry(shard)
            .or_insert(Led { raft, quiet: false });
    }

    /// Ends quieting `shard`: quiet if every other member holds it (and
    /// nothing woke it meanwhile), else awake again.
    fn settle(&self, shard: u64, held_by_all: bool) {
        let mut state = self.state();
        if held_by_all {
            if let Some(led) = state.led.get_mut(&shard) {
                if !led.quiet {
                    ticks(&led.raft, false);
                    led.quiet = true;
                }
            }
        } else if let Some(led) = state.led.remove(&shard) {
            if led.quiet {
                ticks(&led.raft, true);
            }
        }
    }
}

/// Whether `replica` may be held quiet for `leader` in `term` with its log
/// ending at `index`: it follows that leader in that term (a committed
/// vote), and its log ends there, all of it applied.
fn may_hold(replica: &ReplicaNode, leader: u64, term: u64, index: u64) -> bool {
    let raft = replica.raft();
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let vote = &m.vote;
    matches!(m.state, ServerState::Follower | ServerState::Learner)
        && vote.is_committed()
        && vote.leader_id.node_id == leader
        && vote.leader_id.term == term
        && m.current_leader == Some(leader)
        && m.last_log_index == Some(index)
        && m.last_applied.map(|l| l.index) == Some(index)
}

/// Answers a `Quiesce` call from node `from` (its leader-side half is the
/// quiescer's pass): holds every listed shard `replicas` may hold, and
/// says which it holds.
pub(crate) fn answer_quiesce(
    quiet: &Quiet,
    replica_of: impl Fn(u64) -> Option<ReplicaNode>,
    heartbeat: Duration,
    request: pb::QuiesceRequest,
) -> pb::QuiesceResponse {
    let until = Instant::now() + heartbeat * HOLD_INTERVALS;
    let mut held = Vec::new();
    for s in request.shards {
        let Some(replica) = replica_of(s.shard) else {
            continue;
        };
        if replica.hosts() && may_hold(&replica, request.from, s.term, s.index) {
            quiet.hold(s.shard, replica.raft(), request.from, s.term, until);
            held.push(s.shard);
        } else if quiet.holds_for(s.shard, request.from, s.term) {
            // Held before, no longer in step: awake until it is again.
            quiet.heard(s.shard);
        }
    }
    pb::QuiesceResponse { held }
}

/// What a led shard looked like at the last pass.
struct Idle {
    last_index: Option<u64>,
    passes: u32,
}

/// Whether the group `m` describes, led by `me`, has nothing in flight:
/// its log is applied here and matched by every member, with one
/// configuration in which `me` votes.
fn in_step(m: &openraft::RaftMetrics<u64, openraft::BasicNode>, me: u64) -> bool {
    let last = m.last_log_index;
    let membership = m.membership_config.membership();
    m.running_state.is_ok()
        && m.state == ServerState::Leader
        && m.current_leader == Some(me)
        && m.last_applied.map(|l| l.index) == last
        && membership.get_joint_config().len() == 1
        && membership.voter_ids().any(|id| id == me)
        && m.replication.as_ref().is_some_and(|r| {
            r.iter()
                .filter(|(&id, _)| id != me)
                .all(|(_, matched)| matched.map(|l| l.index) == last)
        })
}

/// Every heartbeat interval, on the node of `replicas` (every replica it
/// runs, the metadata group's included): quiets the idle groups it leads
/// and renews the holds of those it has quieted, as the module describes.
/// Runs until aborted. Nothing to do for a node of one replica per group.
pub fn spawn_quiescer(replicas: Vec<ReplicaNode>) -> Option<tokio::task::JoinHandle<()>> {
    let first = replicas.first()?.clone();
    let heartbeat = Duration::from_millis(first.heartbeat_ms().max(1));
    Some(tokio::spawn(async move {
        let mut idle: BTreeMap<u64, Idle> = BTreeMap::new();
        let mut passes = tokio::time::interval(heartbeat);
        passes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            passes.tick().await;
            pass(&first, &replicas, &mut idle, heartbeat).await;
        }
    }))
}

/// One pass of the quiescer.
async fn pass(
    node: &ReplicaNode,
    replicas: &[ReplicaNode],
    idle: &mut BTreeMap<u64, Idle>,
    heartbeat: Duration,
) {
    let quiet = node.quiet();
    let me = node.node_id();
    quiet.expire(Instant::now());
    // Each peer's address, and the shards listed to it.
    let mut calls: BTreeMap<String, (u64, Vec<pb::QuietShard>)> = BTreeMap::new();
    let mut members: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for replica in replicas {
        let shard = replica.shard();
        let raft = replica.raft();
        let watch = raft.metrics();
        let metrics = watch.borrow();
        if !replica.hosts() || !in_step(&metrics, me) {
            idle.remove(&shard);
            quiet.wake_led(shard);
            continue;
        }
        let last = metrics.last_log_index;
        let entry = idle.entry(shard).or_insert(Idle {
            last_index: last,
            passes: 0,
        });
        if entry.last_index != last {
            entry.last_index = last;
            entry.passes = 0;
            quiet.wake_led(shard);
            continue;
        }
        entry.passes = entry.passes.saturating_add(1);
        if entry.passes < IDLE_PASSES {
            continue;
        }
        quiet.begin(shard, raft.clone());
        let listed = pb::QuietShard {
            shard,
            term: metrics.vote.leader_id.term,
            index: metrics.last_log_index.unwrap_or(0),
        };
        let others: Vec<String> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(&id, _)| id != me)
            .map(|(&id, n)| {
                calls
                    .entry(n.addr.clone())
                    .or_insert_with(|| (id, Vec::new()))
                    .1
                    .push(listed);
                n.addr.clone()
            })
            .collect();
        members.insert(shard, others);
    }
    if members.is_empty() {
        return;
    }
    let asked = calls.into_iter().map(|(addr, (peer, shards))| async move {
        let held = ask(node, &addr, peer, shards, heartbeat).await;
        (addr, held)
    });
    let held: BTreeMap<String, BTreeSet<u64>> = futures_util::future::join_all(asked)
        .await
        .into_iter()
        .collect();
    for (shard, others) in members {
        let held_by_all = others
            .iter()
            .all(|addr| held.get(addr).is_some_and(|h| h.contains(&shard)));
        quiet.settle(shard, held_by_all);
    }
}

/// One `Quiesce` call to the node `peer` at `addr`: the shards it holds
/// (none if it cannot be reached in time, or is cut off).
async fn ask(
    node: &ReplicaNode,
    addr: &str,
    peer: u64,
    shards: Vec<pb::QuietShard>,
    patience: Duration,
) -> BTreeSet<u64> {
    if node.faults().is_cut_off(peer) {
        return BTreeSet::new();
    }
    let Some(mut client) = node.peers().client(addr) else {
        return BTreeSet::new();
    };
    let call = client.quiesce(pb::QuiesceRequest {
        from: node.node_id(),
        shards,
    });
    match tokio::time::timeout(patience, call).await {
        Ok(Ok(answer)) => answer.into_inner().held.into_iter().collect(),
        _ => BTreeSet::new(),
    }
}
