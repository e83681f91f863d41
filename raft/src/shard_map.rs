//! The shard map: for every data shard, its replicas and a leader hint,
//! kept in a small raft group of its own (the metadata group, engine shard
//! [`META_SHARD`], on every node like the data shards), so the map is
//! replicated and survives the loss of a minority like any shard.
//!
//! Who writes it: the leader of each data shard checks every second that
//! the map holds that shard's entry as it sees it (members as of its
//! current membership, itself as leader, its term) and publishes it if
//! not, so a new leader or membership is in the map within about a second
//! and a late write of an earlier leader is corrected.
//! Hints are therefore eventually fresh, never authoritative: a client
//! that follows one to a node that no longer leads gets `NOT_LEADER` with
//! the current leader.

use std::time::Duration;

use bincode::Options as _;
use imstore_engine::Command;
use imstore_proto::raft as pb;
use openraft::ServerState;

use crate::{Error, Proposal, ReplicaNode, Response};

/// The engine shard (and raft group id) of the metadata group: above every
/// data shard (`imstore node --shards` allows at most this many).
pub const META_SHARD: u64 = imstore_engine::MAX_SHARD as u64;

/// Version byte of an encoded entry.
const ENTRY_VERSION: u8 = 1;
/// How often a leader re-checks its shard's entry.
const RECHECK: Duration = Duration::from_secs(1);
/// How often (in publisher ticks of a second) a non-leader checks whether
/// its replica was moved away while its node was down.
const RETIRE_RECHECK_TICKS: u64 = 5;

/// One shard's entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ShardMapEntry {
    /// The data shard.
    pub shard: u64,
    /// Its replicas: (node id, address), ascending ids.
    pub members: Vec<(u64, String)>,
    /// The node that last published itself as leader.
    pub leader: u64,
    /// Its term then.
    pub term: u64,
}

/// The meta-row key of `shard`'s entry: a replicated row (not a
/// replica-local one), so a snapshot of the metadata group carries it as
/// data.
fn entry_key(shard: u64) -> Vec<u8> {
    imstore_engine::replication::replicated_meta_key(&shard.to_be_bytes())
}

/// bincode as the replica-local meta rows use it (fixed-width integers),
/// but refusing trailing bytes.
fn codec() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

impl ShardMapEntry {
    /// Encodes: the version byte, then bincode of the entry.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = vec![ENTRY_VERSION];
        codec()
            .serialize_into(&mut out, self)
            .map_err(|e| Error::Internal(format!("shard-map entry: {e}")))?;
        Ok(out)
    }

    /// Decodes [`ShardMapEntry::encode`]'s bytes; anything else is an error,
    /// never a panic.
    pub fn decode(bytes: &[u8]) -> Result<ShardMapEntry, Error> {
        let bad = |why: String| Error::Internal(format!("bad shard-map entry: {why}"));
        match bytes.split_first() {
            Some((&ENTRY_VERSION, rest)) => {
                codec().deserialize(rest).map_err(|e| bad(e.to_string()))
            }
            Some(_) => Err(bad("unknown version".into())),
            None => Err(bad("empty".into())),
        }
    }

    /// The wire form.
    pub fn to_message(&self) -> pb::ShardMapEntry {
        pb::ShardMapEntry {
            shard: self.shard,
            members: self
                .members
                .iter()
                .map(|(id, address)| pb::Member {
                    id: *id,
                    address: address.clone(),
                })
                .collect(),
            leader: self.leader,
            term: self.term,
        }
    }
}

/// `shard`'s entry as this node's replica of the metadata group holds it
/// (no read barrier: callers that need the latest take one first).
pub(crate) fn read_entry(meta: &ReplicaNode, shard: u64) -> Result<Option<ShardMapEntry>, Error> {
    meta.engine()
        .meta(&entry_key(shard))?
        .map(|bytes| ShardMapEntry::decode(&bytes))
        .transpose()
}

/// Writes `entry` through the metadata group, like any proposal: on this
/// node's replica if it leads the group, else forwarded to the leader
/// ([`ReplicaNode::propose`]).
async fn publish(meta: &ReplicaNode, entry: &ShardMapEntry) -> Result<(), Error> {
    let command = Command::PutMeta(vec![(entry_key(entry.shard), entry.encode()?)]);
    match meta
        .propose(Proposal(vec![command]))
        .await?
        .0
        .into_iter()
        .next()
    {
        Some(Response(Ok(_))) => Ok(()),
        Some(Response(Err(refused))) => Err(refused.into()),
        None => Err(Error::Internal("no response to a shard-map write".into())),
    }
}

/// Keeps `data`'s entry in the map while this node leads it: every
/// second, if this node is the shard's leader and the map (as this node's
/// metadata replica holds it) says otherwise, publishes. A tick rather
/// than a watch of the raft metrics, which change at every append. On a
/// node that does not lead the shard, every 5 ticks, retires the replica
/// if the map has moved it away while the node was down
/// ([`ReplicaNode::retire_if_moved_away`]). Ends when the shard's raft
/// shuts down (not while a retire replaces it).
pub fn spawn_publisher(node_id: u64, data: ReplicaNode, meta: ReplicaNode) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks += 1;
            let current = data.raft().metrics().borrow().clone();
            match current.state {
                // A retired replica is between two instances; one shut
                // down for good ends the publisher.
                ServerState::Shutdown if data.is_being_replaced() => continue,
                ServerState::Shutdown => return,
                ServerState::Leader => {}
                _ => {
                    if ticks % RETIRE_RECHECK_TICKS == 1 {
                        match data.retire_if_moved_away().await {
                            Ok(Some(crate::Retired::Deleted)) => tracing::info!(
                                shard = data.shard(),
                                "retired a replica moved away while this node was down"
                            ),
                            Ok(Some(crate::Retired::Kept(reason))) => tracing::info!(
                                shard = data.shard(),
                                %reason,
                                "kept a replica the shard map no longer lists"
                            ),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(
                                shard = data.shard(),
                                error = %e,
                                "could not check whether to retire a replica"
                            ),
                        }
                    }
                    continue;
                }
            }
            let entry = ShardMapEntry {
                shard: data.shard(),
                members: current
                    .membership_config
                    .nodes()
                    .map(|(id, node)| (*id, node.addr.clone()))
                    .collect(),
                leader: node_id,
                term: current.current_term,
            };
            if read_entry(&meta, entry.shard).ok().flatten().as_ref() != Some(&entry) {
                // A failure (no metadata leader yet) is retried next tick.
                let _ = publish(&meta, &entry).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_an_error() -> Result<(), Error> {
        let entry = ShardMapEntry {
            shard: 7,
            members: vec![(1, "127.0.0.1:7101".into()), (3, "h:1".into())],
            leader: 3,
            term: 12,
        };
        let bytes = entry.encode()?;
        assert_eq!(ShardMapEntry::decode(&bytes).ok(), Some(entry.clone()));
        for cut in 0..bytes.len() {
            assert!(
                ShardMapEntry::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ShardMapEntry::decode(&longer).is_err());
        let mut version = bytes;
        version[0] = 9;
        assert!(ShardMapEntry::decode(&version).is_err());
        let wire = entry.to_message();
        assert_eq!(
            (wire.shard, wire.leader, wire.term, wire.members.len()),
            (7, 3, 12, 2),
            "wire form"
        );
        Ok(())
    }
}
