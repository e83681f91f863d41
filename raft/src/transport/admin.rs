//! Cluster administration over the transport: membership changes, the
//! retire of a removed replica, fault injection, the shard map and a
//! replica's status. Each fails with a typed [`Error`]; a change sent to a
//! follower is [`Error::NotLeader`] with the leader's id and address.

use std::collections::{BTreeMap, BTreeSet};

use imstore_proto::raft as pb;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};

use super::server::{decode, TransportService};
use crate::{Error, TypeConfig};

/// Most attempts of one membership change refused because the previous
/// one is still in progress.
const MEMBERSHIP_ATTEMPTS: u32 = 100;

impl TransportService {
    pub(super) async fn initialize_group(
        &self,
        r: pb::InitializeRequest,
    ) -> Result<pb::InitializeResponse, Error> {
        let raft = self.shard(r.shard)?;
        let members: BTreeMap<u64, BasicNode> = r
            .members
            .into_iter()
            .map(|m| (m.id, BasicNode::new(m.address)))
            .collect();
        if !members.contains_key(&self.node_id) {
            return Err(Error::InvalidRequest(format!(
                "node {} must be one of the members",
                self.node_id
            )));
        }
        raft.initialize(members)
            .await
            .map_err(|e| Error::Refused(e.to_string()))?;
        Ok(pb::InitializeResponse {})
    }

    pub(super) async fn add_member(&self, r: pb::MemberChange) -> Result<pb::NodeStatus, Error> {
        let raft = self.shard(r.shard)?;
        if r.id == 0 || r.address.is_empty() {
            return Err(Error::InvalidRequest(
                "a node needs a non-zero id and an address".into(),
            ));
        }
        // A learner first, caught up (blocking), then a voter: the quorum
        // never waits on an empty node.
        let node = BasicNode::new(r.address.clone());
        let change_error = |e| self.change_error(r.shard, e);
        settled(&raft, change_error, || {
            raft.add_learner(r.id, node.clone(), true)
        })
        .await?;
        settled(&raft, change_error, || {
            raft.change_membership(ChangeMembers::AddVoterIds([r.id].into()), false)
        })
        .await?;
        self.replica_status(r.shard)
    }

    pub(super) async fn remove_member(&self, r: pb::MemberChange) -> Result<pb::NodeStatus, Error> {
        let replica = self.replica(r.shard)?;
        let raft = replica.raft();
        // Its address, before the change takes it out of the membership.
        let address = raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .find(|(id, _)| **id == r.id)
            .map(|(_, node)| node.addr.clone());
        let changed = settled(
            &raft,
            |e| self.change_error(r.shard, e),
            || raft.change_membership(ChangeMembers::RemoveVoters([r.id].into()), false),
        )
        .await?;
        let retired = self.retire_removed(&replica, r.id, address, &changed).await;
        tracing::info!(shard = r.shard, node = r.id, %retired, "removed a replica");
        let mut status = self.replica_status(r.shard)?;
        status.retired = retired;
        Ok(status)
    }

    /// A membership change refused: by a follower (with the leader, as
    /// [`Error::NotLeader`]) or by raft itself.
    fn change_error(
        &self,
        shard: u64,
        e: RaftError<u64, ClientWriteError<u64, BasicNode>>,
    ) -> Error {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
                shard,
                node: self.node_id,
                leader: f.leader_id,
                address: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(other) => Error::Refused(other.to_string()),
            RaftError::Fatal(fatal) => Error::Internal(fatal.to_string()),
        }
    }

    pub(super) async fn retire_here(
        &self,
        r: pb::RetireRequest,
    ) -> Result<pb::RetireResponse, Error> {
        self.accepting_from(r.from)?;
        let replica = self.replica(r.shard)?;
        let removed_at: openraft::LogId<u64> = decode(&r.removed_at)?;
        let (deleted, kept_because) = match replica.retire(removed_at).await? {
            crate::Retired::Deleted => (true, String::new()),
            crate::Retired::Kept(reason) => (false, reason),
        };
        Ok(pb::RetireResponse {
            deleted,
            kept_because,
        })
    }

    pub(super) fn set_cut_off(&self, r: pb::Faults) -> Result<pb::Faults, Error> {
        if !self.faults.is_injectable() {
            return Err(Error::Refused(
                "fault injection is off (start the node with --fault-injection)".into(),
            ));
        }
        let peers: BTreeSet<u64> = r.cut_off.into_iter().collect();
        self.faults.cut_off_from(peers);
        Ok(pb::Faults {
            cut_off: self.faults.cut_off().into_iter().collect(),
        })
    }

    pub(super) async fn read_shard_map(&self) -> Result<pb::ShardMapResponse, Error> {
        let meta = self.replica(crate::META_SHARD)?;
        meta.read_barrier().await?;
        let mut entries = Vec::new();
        for shard in 0..self.data_shard_count() {
            if let Some(entry) = crate::shard_map::read_entry(&meta, shard)? {
                entries.push(entry.to_message());
            }
        }
        Ok(pb::ShardMapResponse {
            entries,
            shard_count: self.data_shard_count(),
        })
    }

    pub(super) fn replica_status(&self, shard: u64) -> Result<pb::NodeStatus, Error> {
        let replica = self.replica(shard)?;
        let m = replica.raft().metrics().borrow().clone();
        let snapshots = replica.state_machine().snapshot_stats();
        let state = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        Ok(pb::NodeStatus {
            id: self.node_id,
            shard,
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            state: state.into(),
            snapshot_index: m.snapshot.map_or(0, |s| s.index),
            snapshots_built: snapshots.built,
            last_snapshot_bytes: snapshots
                .last_built_bytes
                .max(snapshots.last_installed_bytes),
            last_snapshot_build_ms: snapshots.last_build_ms,
            snapshots_installed: snapshots.installed,
            purged_index: m.purged.map_or(0, |p| p.index),
            shard_count: self.data_shard_count(),
            last_snapshot_install_ms: snapshots.last_install_ms,
            members: m
                .membership_config
                .nodes()
                .map(|(id, node)| pb::Member {
                    id: *id,
                    address: node.addr.clone(),
                })
                .collect(),
            replicas_behind: m
                .replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, matched)| {
                    let matched_index = matched.map_or(0, |l| l.index);
                    pb::ReplicaLag {
                        id: *id,
                        matched_index,
                        lag: m.last_log_index.unwrap_or(0).saturating_sub(matched_index),
                    }
                })
                .collect(),
            retired: String::new(),
            outbox: replica
                .reader()
                .outbox_backlog()
                .unwrap_or_default()
                .into_iter()
                .map(|b| pb::OutboxBacklog {
                    dest: b.dest,
                    first: b.first,
                    last: b.last,
                    waiting: b.waiting(),
                })
                .collect(),
        })
    }
}

/// Runs a membership change, trying again (bounded) while raft refuses it
/// because the previous change is not committed yet: openraft 0.9 answers
/// a change once applied, and its core may see the next request before it
/// has recorded that commit (a `change_membership` right after an
/// `add_learner`, or the uniform step right after the joint one, then
/// fails with `InProgress`; seen in the 5-node placement test).
async fn settled<F, Fut>(
    raft: &Raft<TypeConfig>,
    change_error: impl Fn(RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Error,
    change: F,
) -> Result<openraft::raft::ClientWriteResponse<TypeConfig>, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<
        Output = Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<u64, ClientWriteError<u64, BasicNode>>,
        >,
    >,
{
    use openraft::error::ChangeMembershipError;
    for _ in 0..MEMBERSHIP_ATTEMPTS {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(p),
            ))) => {
                if let Some(log) = p.membership_log_id {
                    raft.wait(Some(std::time::Duration::from_secs(30)))
                        .applied_index_at_least(Some(log.index), "membership change committed")
                        .await
                        .map_err(|e| Error::Unavailable(e.to_string()))?;
                }
                // Applied there; give the core a moment to record it.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other.map_err(change_error),
        }
    }
    Err(Error::Unavailable(
        "a membership change is still in progress; try again".into(),
    ))
}

/// Longest the leader waits for a removed node to retire its replica.
const RETIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl TransportService {
    /// After `changed` (a committed membership) removed node `removed`
    /// (at `address`) from `replica`'s group: asks that node to delete its
    /// replica (`RetireReplica`), and says how it went. A node that does
    /// not answer keeps its data (the answer says so; it is not retried).
    async fn retire_removed(
        &self,
        replica: &crate::ReplicaNode,
        removed: u64,
        address: Option<String>,
        changed: &openraft::raft::ClientWriteResponse<TypeConfig>,
    ) -> String {
        let still_member = changed
            .membership
            .as_ref()
            .is_some_and(|m| m.get_node(&removed).is_some());
        let address = match address {
            None => return format!("node {removed} was not a member"),
            Some(_) if still_member => return format!("node {removed} is still a member"),
            Some(address) => address,
        };
        let removed_at = match bincode::serialize(&changed.log_id) {
            Ok(bytes) => bytes,
            Err(e) => return format!("not retired: {e}"),
        };
        let mut client = match replica.peer_client(&address) {
            Ok(client) => client,
            Err(e) => return format!("not retired: {e}"),
        };
        let asked = client.retire_replica(pb::RetireRequest {
            shard: replica.shard(),
            from: self.node_id,
            removed_at,
        });
        match tokio::time::timeout(RETIRE_TIMEOUT, asked).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                if answer.deleted {
                    "deleted".into()
                } else {
                    format!("kept: {}", answer.kept_because)
                }
            }
            Ok(Err(status)) => format!("not retired: node {removed} answered {}", status.message()),
            Err(_) => format!("not retired: node {removed} did not answer in {RETIRE_TIMEOUT:?}"),
        }
    }
}
