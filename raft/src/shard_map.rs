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

use imstore_engine::{Command, Error};
use imstore_proto::raft as pb;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;

use crate::{Proposal, ReplicaNode, Response};

/// The engine shard (and raft group id) of the metadata group: above every
/// data shard (`imstore node --shards` allows at most this many).
pub const META_SHARD: u64 = imstore_engine::MAX_SHARD as u64;

/// Meta-row key prefix of shard-map entries (outside `raft/`, so a
/// snapshot of the metadata group carries them as data).
const KEY_PREFIX: &[u8] = b"shardmap/";
/// Version byte of an encoded entry.
const ENTRY_VERSION: u8 = 1;
/// How often a leader re-checks its shard's entry.
const RECHECK: Duration = Duration::from_secs(1);

/// One shard's entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardMapEntry {
    /// The data shard.
    pub shard: u64,
    /// Its replicas: (node id, address), ascending ids.
    pub members: Vec<(u64, String)>,
    /// The node that last published itself as leader.
    pub leader: u64,
    /// Its term then.
    pub term: u64,
}

/// The meta-row key of `shard`'s entry.
pub(crate) fn entry_key(shard: u64) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

impl ShardMapEntry {
    /// Encodes: version, shard, term, leader (u64 BE each after the
    /// version byte), member count (u32 BE), then per member its id (u64
    /// BE), address length (u16 BE) and address bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENTRY_VERSION];
        for n in [self.shard, self.term, self.leader] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        let count = u32::try_from(self.members.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (id, address) in self.members.iter().take(count as usize) {
            out.extend_from_slice(&id.to_be_bytes());
            let bytes = address.as_bytes();
            let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&bytes[..len as usize]);
        }
        out
    }

    /// Decodes [`ShardMapEntry::encode`]'s bytes; anything else is an error,
    /// never a panic.
    pub fn decode(bytes: &[u8]) -> Result<ShardMapEntry, Error> {
        let bad = |why: &str| Error::Storage(format!("bad shard-map entry: {why}"));
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], Error> {
            if rest.len() < n {
                return Err(bad("too short"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u64_of = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        };
        if take(1)?[0] != ENTRY_VERSION {
            return Err(bad("unknown version"));
        }
        let shard = u64_of(take(8)?);
        let term = u64_of(take(8)?);
        let leader = u64_of(take(8)?);
        let mut count = [0u8; 4];
        count.copy_from_slice(take(4)?);
        let mut members = Vec::new();
        for _ in 0..u32::from_be_bytes(count) {
            let id = u64_of(take(8)?);
            let mut len = [0u8; 2];
            len.copy_from_slice(take(2)?);
            let address = std::str::from_utf8(take(u16::from_be_bytes(len) as usize)?)
                .map_err(|_| bad("address is not UTF-8"))?
                .to_owned();
            members.push((id, address));
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(ShardMapEntry {
            shard,
            members,
            leader,
            term,
        })
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

    /// From the wire form.
    pub fn from_message(m: &pb::ShardMapEntry) -> ShardMapEntry {
        ShardMapEntry {
            shard: m.shard,
            members: m
                .members
                .iter()
                .map(|m| (m.id, m.address.clone()))
                .collect(),
            leader: m.leader,
            term: m.term,
        }
    }
}

/// `shard`'s entry as this node's replica of the metadata group holds it
/// (no read barrier: callers that need the latest take one first).
pub fn read_entry(meta: &ReplicaNode, shard: u64) -> Result<Option<ShardMapEntry>, Error> {
    meta.engine
        .meta(&entry_key(shard))?
        .map(|bytes| ShardMapEntry::decode(&bytes))
        .transpose()
}

/// What proposing an entry on this node's metadata replica came to.
pub(crate) enum WriteHere {
    /// Applied.
    Written,
    /// This node does not lead the metadata group (the leader's address,
    /// if known).
    Elsewhere(Option<String>),
    /// Raft or the apply failed.
    Failed(Error),
}

/// Proposes `entry` on this node's replica of the metadata group.
pub(crate) async fn write_here(meta: &ReplicaNode, entry: &ShardMapEntry) -> WriteHere {
    let command = Command::PutMeta(vec![(entry_key(entry.shard), entry.encode())]);
    match meta.raft.client_write(Proposal(vec![command])).await {
        Ok(response) => match response.data.0.into_iter().next() {
            Some(Response(Ok(_))) => WriteHere::Written,
            Some(Response(Err((reason, message)))) => {
                WriteHere::Failed(Error::Remote { reason, message })
            }
            None => WriteHere::Failed(Error::Storage("no response to a shard-map write".into())),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            WriteHere::Elsewhere(f.leader_node.map(|n| n.addr))
        }
        Err(e) => WriteHere::Failed(Error::Remote {
            reason: "UNAVAILABLE".into(),
            message: e.to_string(),
        }),
    }
}

/// Writes `entry` through the metadata group: proposed on this node's
/// replica if it leads the group, else sent to the group's leader
/// (`PublishShard`).
pub async fn publish(meta: &ReplicaNode, entry: &ShardMapEntry) -> Result<(), Error> {
    match write_here(meta, entry).await {
        WriteHere::Written => Ok(()),
        WriteHere::Failed(e) => Err(e),
        WriteHere::Elsewhere(None) => Err(Error::NotLeader {
            leader: None,
            address: None,
        }),
        WriteHere::Elsewhere(Some(address)) => {
            let mut client = meta.peer_client(&address)?;
            let sent = client.publish_shard(entry.to_message());
            match tokio::time::timeout(RECHECK * 5, sent).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(s)) => Err(Error::Remote {
                    reason: "UNAVAILABLE".into(),
                    message: s.message().to_owned(),
                }),
                Err(_) => Err(Error::Remote {
                    reason: "UNAVAILABLE".into(),
                    message: "the metadata group's leader did not answer".into(),
                }),
            }
        }
    }
}

/// Keeps `data`'s entry in the map while this node leads it: every
/// second, if this node is the shard's leader and the map (as this node's
/// metadata replica holds it) says otherwise, publishes. A tick rather
/// than a watch of the raft metrics, which change at every append. Ends
/// when the shard's raft shuts down.
pub fn spawn_publisher(node_id: u64, data: ReplicaNode, meta: ReplicaNode) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let current = data.raft.metrics().borrow().clone();
            match current.state {
                ServerState::Shutdown => return,
                ServerState::Leader => {}
                _ => continue,
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
    fn entries_round_trip_and_garbage_is_an_error() {
        let entry = ShardMapEntry {
            shard: 7,
            members: vec![(1, "127.0.0.1:7101".into()), (3, "h:1".into())],
            leader: 3,
            term: 12,
        };
        let bytes = entry.encode();
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
        assert_eq!(
            ShardMapEntry::from_message(&entry.to_message()),
            entry,
            "wire form"
        );
    }
}
