//! Where a proxy finds each shard: the cluster's shard map, learned from
//! any node and followed, with the leader hints its own calls correct,
//! and one connection per node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use imstore_proto::raft as pb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_raft::{Dialer, Error};
use tonic::transport::Channel;

/// Longest a connection attempt to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a shard-map read may take.
const MAP_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's transport client.
pub(crate) type NodeClient = RaftTransportClient<Channel>;

/// The proxy's view of the cluster.
pub(crate) struct Directory {
    /// The nodes it was told of: where the map is read, and where a shard
    /// with no entry yet is tried (a node forwards what it does not host).
    seeds: Vec<String>,
    dialer: Dialer,
    shard_count: u64,
    /// Per data shard, the addresses of its replicas, the leader hint
    /// first.
    routes: RwLock<Vec<Vec<String>>>,
    /// One connected channel per node address.
    channels: Mutex<HashMap<String, Channel>>,
}

impl Directory {
    /// Learns the shard map from the first of `seeds` that gives one,
    /// going round them until `timeout`. Errors: no node answered with a
    /// map in time (each one's failure named), or the nodes are older than
    /// the proxy tier (they give no shard count).
    pub(crate) async fn learn(
        seeds: Vec<String>,
        dialer: Dialer,
        timeout: Duration,
    ) -> Result<Directory, Error> {
        if seeds.is_empty() {
            return Err(Error::InvalidRequest(
                "a proxy needs the address of at least one node (nodes, --nodes)".into(),
            ));
        }
        let mut directory = Directory {
            seeds,
            dialer,
            shard_count: 0,
            routes: RwLock::new(Vec::new()),
            channels: Mutex::new(HashMap::new()),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let mut failures = Vec::new();
            for seed in directory.seeds.clone() {
                match directory.read_map(&seed).await {
                    Ok(map) if map.shard_count == 0 => {
                        return Err(Error::Refused(format!(
                            "node {seed} gives no shard count: its imstore predates the proxy \
                             tier; upgrade the nodes first"
                        )))
                    }
                    Ok(map) => {
                        directory.shard_count = map.shard_count;
                        directory.apply(&map);
                        return Ok(directory);
                    }
                    Err(e) => failures.push(format!("{seed}: {e}")),
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(Error::Unavailable(format!(
                    "no node gave the shard map within {timeout:?} ({})",
                    failures.join("; ")
                )));
            }
            tracing::info!(failures = %failures.join("; "), "waiting for a node to give the shard map");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// A directory of a cluster whose shard 0 is on `replicas` (leader
    /// hint first), without reading any map: for tests of the calls.
    #[cfg(test)]
    pub(crate) fn fixed(replicas: Vec<String>) -> Directory {
        Directory {
            seeds: replicas.clone(),
            dialer: Dialer::plaintext(),
            shard_count: 1,
            routes: RwLock::new(vec![replicas]),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster's data shard count (fixed for its lifetime).
    pub(crate) fn shard_count(&self) -> u64 {
        self.shard_count
    }

    /// Where to send a call about `shard`, in order: its replicas, the
    /// leader hint first, then the other nodes the proxy was told of.
    pub(crate) fn targets(&self, shard: u64) -> Vec<String> {
        let mut targets = self.replicas(shard);
        for seed in &self.seeds {
            if !targets.contains(seed) {
                targets.push(seed.clone());
            }
        }
        targets
    }

    /// [`Directory::targets`] with the replicas taken in turn, starting at
    /// the `turn`th: for reads any replica may answer (`stale_ok`), which
    /// then spread over the replicas instead of all going to the leader.
    pub(crate) fn targets_from(&self, shard: u64, turn: usize) -> Vec<String> {
        let mut targets = self.targets(shard);
        let replicas = self.replicas(shard).len().min(targets.len());
        if replicas > 1 {
            targets[..replicas].rotate_left(turn % replicas);
        }
        targets
    }

    /// The addresses of `shard`'s replicas as the map has them, the leader
    /// hint first (none before its leader publishes it).
    pub(crate) fn replicas(&self, shard: u64) -> Vec<String> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(shard as usize).cloned().unwrap_or_default()
    }

    /// Takes a node's word that `address` leads `shard`: tried first from
    /// now on, until the next map says otherwise.
    pub(crate) fn note_leader(&self, shard: u64, address: &str) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(replicas) = routes.get_mut(shard as usize) {
            replicas.retain(|a| a != address);
            replicas.insert(0, address.to_owned());
        }
    }

    /// A client of the node at `address`, connecting first if the proxy has
    /// no connection to it. An error means nothing was sent.
    pub(crate) async fn client(&self, address: &str) -> Result<NodeClient, Error> {
        let cached = {
            let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels.get(address).cloned()
        };
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let connecting = self.dialer.connect(address);
                let channel = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                    .await
                    .map_err(|_| {
                        Error::Unavailable(format!(
                            "no connection to {address} within {CONNECT_TIMEOUT:?}"
                        ))
                    })??;
                let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
                channels
                    .entry(address.to_owned())
                    .or_insert(channel)
                    .clone()
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(imstore_raft::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(imstore_raft::MAX_MESSAGE_BYTES))
    }

    /// Drops the connection to `address` after it failed, so the next call
    /// connects afresh (and knows whether it got through).
    pub(crate) fn forget(&self, address: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.remove(address);
    }

    /// Reads the map again from a node: the leader hint of a shard first,
    /// then the others. Keeps the current map if none answers.
    pub(crate) async fn refresh(&self) -> Result<(), Error> {
        let mut asked = Vec::new();
        let mut last = None;
        for address in self.targets(0).into_iter().chain(self.all_replicas()) {
            if asked.contains(&address) {
                continue;
            }
            match self.read_map(&address).await {
                Ok(map) => {
                    self.apply(&map);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            asked.push(address);
        }
        Err(last.unwrap_or_else(|| Error::Unavailable("no node to read the shard map from".into())))
    }

    /// Re-reads the map every `every`, until the task is dropped.
    pub(crate) fn follow(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let directory = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = directory.refresh().await {
                    tracing::warn!(error = %e, "the shard map could not be re-read");
                }
            }
        })
    }

    /// Every replica address the map names.
    fn all_replicas(&self) -> Vec<String> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<String> = routes.iter().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    }

    async fn read_map(&self, address: &str) -> Result<pb::ShardMapResponse, Error> {
        let mut client = self.client(address).await?;
        match tokio::time::timeout(MAP_TIMEOUT, client.shard_map(pb::ShardMapRequest {})).await {
            Ok(Ok(map)) => Ok(map.into_inner()),
            Ok(Err(status)) => {
                if imstore_proto::errors::error_info(&status).is_none() {
                    self.forget(address);
                }
                Err(Error::from_status(&status))
            }
            Err(_) => {
                self.forget(address);
                Err(Error::Unavailable(format!(
                    "{address} gave no shard map within {MAP_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Takes `map`'s entries (a shard without one keeps what it had).
    fn apply(&self, map: &pb::ShardMapResponse) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.resize(self.shard_count as usize, Vec::new());
        for entry in &map.entries {
            let Some(route) = routes.get_mut(entry.shard as usize) else {
                continue;
            };
            let mut members: Vec<&pb::Member> = entry.members.iter().collect();
            members.sort_by_key(|m| m.id != entry.leader);
            *route = members.into_iter().map(|m| m.address.clone()).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        Directory {
            seeds: vec!["a:1".into(), "s:1".into()],
            dialer: Dialer::plaintext(),
            shard_count: 2,
            routes: RwLock::new(vec![
                vec!["a:1".into(), "b:1".into(), "c:1".into()],
                Vec::new(),
            ]),
            channels: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn the_leader_hint_comes_first_and_stale_reads_take_turns() {
        let d = directory();
        assert_eq!(d.targets(0), ["a:1", "b:1", "c:1", "s:1"]);
        assert_eq!(d.targets_from(0, 1), ["b:1", "c:1", "a:1", "s:1"]);
        assert_eq!(d.targets_from(0, 5), ["c:1", "a:1", "b:1", "s:1"]);
        // A shard without an entry yet goes to the nodes the proxy knows.
        assert_eq!(d.targets(1), ["a:1", "s:1"]);
        assert_eq!(d.targets_from(1, 3), ["a:1", "s:1"]);
        d.note_leader(0, "c:1");
        assert_eq!(d.targets(0), ["c:1", "a:1", "b:1", "s:1"]);
        d.note_leader(0, "d:1");
        assert_eq!(d.replicas(0), ["d:1", "c:1", "a:1", "b:1"]);
    }
}
