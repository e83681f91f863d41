//! The read index of a linearizable read on any replica, found in one
//! round of calls to the shard's other voters (`RaftTransport/
//! ReadStandings`, batched per peer node over every shard being read),
//! instead of openraft's per-shard heartbeat round on the leader plus, on
//! a follower, a `ReadIndex` call to the leader before it.
//!
//! Why: a user-wide read asks the user's shard and then the shards of the
//! user's big groups, each behind a read barrier. On a follower that was
//! two round trips in sequence per shard (to the leader, then the
//! leader's heartbeats), and on a cluster with many shards most of the
//! shards a read touches are led elsewhere.
//!
//! Why it is linearizable (no clocks involved). The reader asks, after the
//! read began, every voter it knows of (itself included):
//! 1. The leader answers from its raft state: it leads in term T and its
//!    commit index is of an entry of term T. That index covers every entry
//!    committed before its term (they precede its first entry) and every
//!    write it acknowledged (a write is acknowledged once applied, after
//!    it commits).
//! 2. Every node answers the term of its *persisted* vote. Raft persists a
//!    vote before granting it or following a leader, so a term of T or
//!    earlier means the node had helped no later leader when it answered.
//!    A later leader needs a quorum of such promises; a quorum of answers
//!    (the leader's included) in every configuration of the leader's
//!    effective membership intersects every quorum a later candidate could
//!    use (the same rule openraft's own check applies). So no later leader
//!    had been elected, nor had acknowledged a write, when the read began.
//! 3. The reader waits until its replica has applied the index.
//!
//! Anything this cannot tell (no leader answered, its term has no
//! committed entry yet, a peer of an older build, no quorum within a
//! heartbeat interval) falls back to openraft's own check, so the fast
//! path never decides alone. A stale leader that still believes it leads
//! is outvoted: its term's quorum no longer holds once a later one voted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{Raft, ServerState};

use crate::transport::{Faults, Peers};
use crate::TypeConfig;
use imstore_proto::raft as pb;

/// What a leader's raft state says, read after a read began.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    /// The term it leads in.
    pub term: u64,
    /// Its commit index (of an entry of `term`): the read index.
    pub index: u64,
    /// The voters of each configuration of its effective membership (two
    /// during a joint change).
    pub configs: Vec<Vec<u64>>,
}

/// Node `me`'s standing as the leader of `raft`'s group, if it leads with
/// an entry of its own term committed; `None` otherwise (or if the raft
/// core has stopped).
pub(crate) async fn leader_standing(raft: &Raft<TypeConfig>, me: u64) -> Option<Standing> {
    raft.with_raft_state(move |state| {
        let vote = state.vote_ref();
        if state.server_state != ServerState::Leader
            || !vote.is_committed()
            || vote.leader_id.node_id != me
        {
            return None;
        }
        let term = vote.leader_id.term;
        let committed = state.committed?;
        if committed.leader_id.term != term {
            return None;
        }
        Some(Standing {
            term,
            index: committed.index,
            configs: state
                .membership_state
                .effective()
                .get_joint_config()
                .clone(),
        })
    })
    .await
    .ok()
    .flatten()
}

/// The read index of `shard`, if the answers of the other voters `asked`
/// (id and address) and this node's own standing `own` establish it
/// within `patience`; `None` when they do not (fall back to openraft),
/// or when `own` cannot be read.
///
/// The asks leave before this node's own standing is read (a leader's
/// takes a hop through its raft core), so that the asks of reads begun
/// together queue up together and share one call per peer.
pub(crate) async fn read_index(
    peers: &Peers,
    faults: &Faults,
    me: u64,
    shard: u64,
    own: impl std::future::Future<Output = Option<pb::ReadStanding>>,
    asked: Vec<(u64, String)>,
    patience: Duration,
) -> Option<u64> {
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    for (id, addr) in asked {
        if id != me && !faults.is_cut_off(id) {
            peers.ask_standing(id, &addr, me, shard, &answers);
        }
    }
    // Once every ask has answered (or was dropped), the channel ends.
    drop(answers);
    let mut tally = Tally::default();
    tally.add(me, own.await?);
    if let Some(index) = tally.index() {
        return Some(index);
    }
    let gather = async {
        while let Some((id, standing)) = answered.recv().await {
            if let Some(standing) = standing {
                tally.add(id, standing);
                if let Some(index) = tally.index() {
                    return Some(index);
                }
            }
        }
        None
    };
    tokio::time::timeout(patience, gather).await.ok().flatten()
}

/// The answers so far: each node's persisted vote term, and the leader
/// with the highest term that answered as one.
#[derive(Default)]
struct Tally {
    votes: BTreeMap<u64, u64>,
    leader: Option<(u64, Standing)>,
}

impl Tally {
    fn add(&mut self, id: u64, standing: pb::ReadStanding) {
        if !standing.hosted {
            return;
        }
        self.votes.insert(id, standing.vote_term);
        let leads = standing.leader_term > 0;
        if leads
            && self
                .leader
                .as_ref()
                .is_none_or(|(_, l)| l.term < standing.leader_term)
        {
            let standing = Standing {
                term: standing.leader_term,
                index: standing.commit_index,
                configs: standing.configs.into_iter().map(|v| v.ids).collect(),
            };
            self.leader = Some((id, standing));
        }
    }

    /// The leader's commit index once a quorum of its membership has
    /// promised no term after the leader's.
    fn index(&self) -> Option<u64> {
        let (leader, standing) = self.leader.as_ref()?;
        let mut granted: BTreeSet<u64> = self
            .votes
            .iter()
            .filter(|(_, &term)| term <= standing.term)
            .map(|(&id, _)| id)
            .collect();
        granted.insert(*leader);
        is_quorum(&standing.configs, &granted).then_some(standing.index)
    }
}

/// Whether `granted` holds a majority of every configuration.
fn is_quorum(configs: &[Vec<u64>], granted: &BTreeSet<u64>) -> bool {
    !configs.is_empty()
        && configs.iter().all(|voters| {
            let yes = voters.iter().filter(|v| granted.contains(v)).count();
            yes * 2 > voters.len()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let granted = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let three = vec![vec![1, 2, 3]];
        assert!(!is_quorum(&three, &granted(&[1])));
        assert!(is_quorum(&three, &granted(&[1, 3])));
        assert!(is_quorum(&[vec![1]], &granted(&[1])));
        // Joint: {1,2,3} and {3,4,5}; 1 and 3 are a majority of the first
        // only.
        let joint = vec![vec![1, 2, 3], vec![3, 4, 5]];
        assert!(!is_quorum(&joint, &granted(&[1, 3])));
        assert!(is_quorum(&joint, &granted(&[1, 3, 4])));
        // Four voters need three.
        assert!(!is_quorum(&[vec![1, 2, 3, 4]], &granted(&[1, 2])));
        assert!(!is_quorum(&[], &granted(&[1])));
    }

    fn voter(vote_term: u64) -> pb::ReadStanding {
        pb::ReadStanding {
            hosted: true,
            vote_term,
            ..Default::default()
        }
    }

    fn leader(term: u64, commit_index: u64) -> pb::ReadStanding {
        pb::ReadStanding {
            hosted: true,
            vote_term: term,
            leader_term: term,
            commit_index,
            configs: vec![pb::Voters { ids: vec![1, 2, 3] }],
        }
    }

    #[test]
    fn a_follower_reads_with_the_leaders_answer_and_its_own_vote() {
        let mut tally = Tally::default();
        tally.add(2, voter(5));
        assert_eq!(tally.index(), None, "no leader has answered");
        tally.add(1, leader(5, 40));
        assert_eq!(tally.index(), Some(40));
    }

    #[test]
    fn a_stale_leader_is_outvoted_by_a_later_term() {
        // Node 1 still believes it leads term 5; nodes 2 and 3 voted in
        // term 6 (node 3 leads it but has not answered).
        let mut tally = Tally::default();
        tally.add(2, voter(6));
        tally.add(1, leader(5, 40));
        assert_eq!(tally.index(), None, "1 of 3 promised nothing later");
        tally.add(3, leader(6, 52));
        assert_eq!(tally.index(), Some(52), "the later leader's index");
        // Its answer first, then the stale one's: the later still wins.
        let mut tally = Tally::default();
        tally.add(3, leader(6, 52));
        assert_eq!(tally.index(), None, "only the leader itself so far");
        tally.add(1, leader(5, 40));
        // Node 1's vote (term 5) promises nothing after term 6 either.
        assert_eq!(tally.index(), Some(52));
    }

    #[test]
    fn a_node_without_the_shard_does_not_count() {
        let mut tally = Tally::default();
        tally.add(1, leader(5, 40));
        tally.add(2, pb::ReadStanding::default());
        assert_eq!(tally.index(), None);
        tally.add(3, voter(0));
        assert_eq!(tally.index(), Some(40), "never voted: promised nothing");
    }
}
