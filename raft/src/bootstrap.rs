//! Bootstrapping a new cluster: where each data shard starts
//! ([`placement`]), initializing every raft group once
//! ([`initialize_cluster`], what `imstore cluster init` runs), and the
//! same done by a node itself from its configured peers
//! ([`bootstrap_from_peers`]), like etcd's `initial-cluster`.

use std::time::Duration;

use imstore_proto::raft as pb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;

use crate::{Dialer, Error, META_SHARD};

/// One member of a cluster being bootstrapped: (node id, address).
pub type Member = (u64, String);

/// The members a data shard starts on: `replicas` of `members` (in id
/// order), consecutive from the one at `shard mod count`, so shards spread
/// evenly. All members when there are fewer.
pub fn placement<M: Clone>(shard: u64, members: &[M], replicas: usize) -> Vec<M> {
    let n = members.len();
    if n == 0 {
        return Vec::new();
    }
    let start = (shard % n as u64) as usize;
    (0..replicas.min(n))
        .map(|i| members[(start + i) % n].clone())
        .collect()
}

/// Parses `id=host:port` (the form of `--members` and `peers`).
pub fn parse_member(text: &str) -> Result<Member, Error> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| Error::InvalidRequest(format!("member {text:?} is not id=host:port")))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| Error::InvalidRequest(format!("member {text:?}: the id is not a number")))?;
    if id == 0 || address.trim().is_empty() {
        return Err(Error::InvalidRequest(format!(
            "member {text:?}: a node needs a non-zero id and an address"
        )));
    }
    Ok((id, address.trim().to_owned()))
}

/// A node's `peers` (`id=host:port` each), parsed, sorted by id and
/// checked: ids distinct, `node_id` among them.
pub fn parse_peers(node_id: u64, peers: &[String]) -> Result<Vec<Member>, Error> {
    let peers = checked(
        peers
            .iter()
            .map(|p| parse_member(p))
            .collect::<Result<_, _>>()?,
    )?;
    if !peers.iter().any(|(id, _)| *id == node_id) {
        return Err(Error::InvalidRequest(format!(
            "the peers must list this node ({node_id}) too"
        )));
    }
    Ok(peers)
}

/// Sorts `members` by id and refuses duplicates.
fn checked(mut members: Vec<Member>) -> Result<Vec<Member>, Error> {
    members.sort();
    if members.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Error::InvalidRequest("member ids must be distinct".into()));
    }
    if members.is_empty() {
        return Err(Error::InvalidRequest("a cluster needs members".into()));
    }
    Ok(members)
}

fn to_message(members: &[Member]) -> Vec<pb::Member> {
    members
        .iter()
        .map(|(id, address)| pb::Member {
            id: *id,
            address: address.clone(),
        })
        .collect()
}

async fn connect(
    dialer: &Dialer,
    address: &str,
) -> Result<RaftTransportClient<tonic::transport::Channel>, Error> {
    Ok(RaftTransportClient::new(dialer.connect(address).await?))
}

/// Initializes every group of a new cluster of `members`: each of its
/// `shard_count` data shards on [`placement`]'s `replicas` members, the
/// metadata group on all, each through its first member (raft
/// initializes only a node that is one). Returns the replicas per shard.
pub async fn initialize_cluster(
    dialer: &Dialer,
    members: Vec<Member>,
    shard_count: u64,
    replicas: usize,
) -> Result<usize, Error> {
    let members = checked(members)?;
    if replicas == 0 {
        return Err(Error::InvalidRequest(
            "a shard needs at least 1 replica".into(),
        ));
    }
    let groups = (0..shard_count)
        .map(|shard| (shard, placement(shard, &members, replicas)))
        .chain([(META_SHARD, members.clone())]);
    for (shard, group) in groups {
        let Some((_, first)) = group.first() else {
            continue;
        };
        connect(dialer, first)
            .await?
            .initialize(pb::InitializeRequest {
                shard,
                members: to_message(&group),
            })
            .await
            .map_err(|status| Error::from_status(&status))?;
    }
    Ok(replicas.min(members.len()))
}

/// How a node's bootstrap from its peers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// This node initialized the new cluster.
    Initialized,
    /// Another node (the lowest id) initializes it.
    LeftToNode(u64),
    /// A peer already holds a membership: the cluster exists (a restart,
    /// or a node that joined later); nothing was initialized.
    AlreadyInitialized,
}

/// What a node started with `peers` (every member, itself included) does:
/// the member with the lowest id waits until every peer answers, and, if
/// none of them holds any membership yet (a new cluster: no data to
/// overwrite), initializes every group as [`initialize_cluster`] does.
/// Every other member leaves it to that one. Polls every 200 ms until it
/// can decide; the caller bounds it (a node's task ends with the node).
pub async fn bootstrap_from_peers(
    dialer: &Dialer,
    node_id: u64,
    peers: &[String],
    shard_count: u64,
    replicas: usize,
) -> Result<Bootstrap, Error> {
    let peers = parse_peers(node_id, peers)?;
    let lowest = peers[0].0;
    if lowest != node_id {
        return Ok(Bootstrap::LeftToNode(lowest));
    }
    let groups: Vec<u64> = (0..shard_count).chain([META_SHARD]).collect();
    loop {
        match any_membership(dialer, &peers, &groups).await {
            Ok(true) => return Ok(Bootstrap::AlreadyInitialized),
            Ok(false) => {
                initialize_cluster(dialer, peers, shard_count, replicas).await?;
                return Ok(Bootstrap::Initialized);
            }
            Err(waiting) => {
                tracing::debug!(%waiting, "bootstrap: waiting for every peer");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Whether any peer's replica of any group holds a membership; an error
/// while some peer does not answer.
async fn any_membership(dialer: &Dialer, peers: &[Member], groups: &[u64]) -> Result<bool, Error> {
    for (_, address) in peers {
        let mut client = connect(dialer, address).await?;
        for &shard in groups {
            let status = client
                .status(pb::NodeStatusRequest { shard })
                .await
                .map_err(|status| Error::from_status(&status))?
                .into_inner();
            if !status.members.is_empty() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_are_checked() {
        assert_eq!(
            parse_member("2=127.0.0.1:7102").ok(),
            Some((2, "127.0.0.1:7102".to_owned()))
        );
        for bad in ["2", "0=h:1", "x=h:1", "3="] {
            assert!(
                matches!(parse_member(bad), Err(Error::InvalidRequest(_))),
                "{bad}"
            );
        }
        assert!(checked(vec![(1, "a".into()), (1, "b".into())]).is_err());
        assert_eq!(
            placement(4, &[1, 2, 3], 2),
            vec![2, 3],
            "shard 4 of 3 members starts at member 4 mod 3"
        );
    }
}
