//! `imstore cluster`: init (placement), status, add-node, rebalance,
//! remove-node, move-shard, each sent to the group leader it concerns.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use clap::Subcommand;
use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_raft::META_SHARD;
use serde_json::json;

use crate::cluster_print::{print_leader_view, print_map_entry, print_status};

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Bootstrap the cluster: `--members 1=127.0.0.1:7101,2=…,3=…`, every
    /// node started with `imstore node`. Each data shard is placed on
    /// `--replicas` of them (shard s on consecutive members in id order,
    /// from the one at s mod their count), the metadata group on all.
    Init {
        /// id=host:port of every node.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        /// Replicas of each data shard (the replication factor); all
        /// members when there are fewer.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Where the node behind `--server` stands in every shard: health, leader,
    /// term, log, applied lag, members, snapshots; then the shard map and
    /// each group's replication lag as its leader reports it.
    Status,
    /// Add a running node to the cluster: to the metadata group, then
    /// shards are moved onto it until every node hosts about as many
    /// (`rebalance`). With `--shard S`, instead add it to that shard's
    /// group only (one more replica). Each change is a learner, caught
    /// up, then a voter, sent to that group's leader (found from
    /// `--server`).
    AddNode {
        #[arg(long)]
        id: u64,
        /// Its host:port.
        #[arg(long)]
        address: String,
        /// Only this shard's group (adds a replica; moves nothing).
        #[arg(long)]
        shard: Option<u64>,
    },
    /// Move replicas between the nodes of the metadata group until each
    /// hosts as many as the others or one fewer (every shard keeps its
    /// replica count); one `move-shard` at a time, a progress line each.
    Rebalance,
    /// Remove a voter from a shard's group, or from every group it is in
    /// (its shards each lose a replica: `move-shard` keeps the count).
    RemoveNode {
        #[arg(long)]
        id: u64,
        /// Only this shard (default: every group the node is in).
        #[arg(long)]
        shard: Option<u64>,
    },
    /// The conversations the server behind `--server` (a proxy, a node or
    /// a single server) saw most read and most written over the last 30 to
    /// 60 seconds (Space-Saving estimates: a count overstates by at most
    /// its error). A proxy sees its clients' traffic; ask each proxy.
    Hot {
        /// How many of each, 1 to 256.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// Move a shard's replica (or every replica `--from` holds, the
    /// metadata group's included) from one node to another: add `--to` (a
    /// learner until caught up, then a voter), then remove `--from`.
    MoveShard {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// host:port of `--to`.
        #[arg(long)]
        address: String,
        /// Only this shard (default: every group `--from` is in).
        #[arg(long)]
        shard: Option<u64>,
    },
}

pub(crate) type Failure = Box<dyn std::error::Error>;

pub(crate) type Client = RaftTransportClient<tonic::transport::Channel>;

fn failure(s: tonic::Status) -> Failure {
    crate::status_text(&s).into()
}

/// The data shards of the node behind `client` and its metadata group
/// (which spans the same nodes), or just `only`.
async fn groups_of(client: &mut Client, only: Option<u64>) -> Result<Vec<u64>, Failure> {
    Ok(match only {
        Some(META_SHARD) => vec![META_SHARD],
        Some(_) => shards_of(client, only).await?,
        None => {
            let mut all = shards_of(client, None).await?;
            all.push(META_SHARD);
            all
        }
    })
}

/// The data shards of the node behind `client`, or just `only`.
async fn shards_of(client: &mut Client, only: Option<u64>) -> Result<Vec<u64>, Failure> {
    let count = client
        .status(rpb::NodeStatusRequest { shard: 0 })
        .await
        .map_err(failure)?
        .into_inner()
        .shard_count
        .max(1);
    match only {
        Some(shard) if shard < count => Ok(vec![shard]),
        Some(shard) => Err(format!("shard {shard}: the cluster has {count} shards").into()),
        None => Ok((0..count).collect()),
    }
}

/// A membership change on `shard`'s leader: sent to `server`, then to the
/// leader a refusal names (a shard's leader may be any node). When the
/// node asked knows no leader (it does not host the shard, or an election
/// is under way after the leader stopped) or cannot be reached, it asks
/// the shard's replicas the shard map names in turn, every 200 ms, for up
/// to about 10 s.
pub(crate) async fn on_leader(
    server: &str,
    shard: u64,
    change: rpb::MemberChange,
    add: bool,
) -> Result<rpb::NodeStatus, Failure> {
    let mut target = server.to_owned();
    // The map's replicas of the shard, leader hint first, once needed.
    let mut replicas: Vec<String> = Vec::new();
    let mut next_replica = 0;
    let mut last_error = String::from("no leader answered");
    for _ in 0..55 {
        let answer = match crate::access::transport(&target).await {
            Ok(mut client) => {
                let request = rpb::MemberChange {
                    shard,
                    ..change.clone()
                };
                let result = if add {
                    client.add_node(request).await
                } else {
                    client.remove_node(request).await
                };
                match result {
                    Ok(status) => return Ok(status.into_inner()),
                    // Branches on the typed error the status carries.
                    Err(s) => match imstore_raft::Error::from_status(&s) {
                        imstore_raft::Error::NotLeader {
                            address: Some(leader),
                            ..
                        } => {
                            target = format!("http://{leader}");
                            continue;
                        }
                        // No leader known yet (an election is under way),
                        // or not a host of the shard: the map's replicas.
                        refused @ (imstore_raft::Error::NotLeader { address: None, .. }
                        | imstore_raft::Error::NotHosted { .. }) => refused.to_string(),
                        // Anything else (a change still in progress, a
                        // timeout) may have been applied: not sent again.
                        _ => return Err(failure(s)),
                    },
                }
            }
            Err(e) => format!("cannot reach {target}: {e}"),
        };
        last_error = answer;
        if replicas.is_empty() {
            replicas = map_replicas(server, shard).await;
        }
        if replicas.is_empty() {
            return Err(format!("shard {shard}: {last_error}").into());
        }
        target = replicas[next_replica % replicas.len()].clone();
        next_replica += 1;
        if next_replica % replicas.len() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Err(format!("shard {shard}: no leader answered ({last_error})").into())
}

/// The addresses (as URLs) of `shard`'s replicas in the shard map that
/// `server` reads, its leader hint first; empty if it cannot tell.
async fn map_replicas(server: &str, shard: u64) -> Vec<String> {
    let Ok(mut client) = crate::access::transport(server).await else {
        return Vec::new();
    };
    let Ok(map) = client.shard_map(rpb::ShardMapRequest {}).await else {
        return Vec::new();
    };
    let Some(entry) = map
        .into_inner()
        .entries
        .into_iter()
        .find(|e| e.shard == shard)
    else {
        return Vec::new();
    };
    let mut members = entry.members;
    members.sort_by_key(|m| m.id != entry.leader);
    members
        .into_iter()
        .map(|m| format!("http://{}", m.address))
        .collect()
}

/// Where the shards are: each data shard's replicas (from the shard map,
/// read linearizably) and the cluster's nodes with their addresses (the
/// metadata group's members, which every node joins).
async fn cluster_view(
    client: &mut Client,
) -> Result<(BTreeMap<u64, BTreeSet<u64>>, BTreeMap<u64, String>), Failure> {
    let count = shards_of(client, None).await?.len();
    let entries = client
        .shard_map(rpb::ShardMapRequest {})
        .await
        .map_err(failure)?
        .into_inner()
        .entries;
    if entries.len() != count {
        return Err(format!(
            "the shard map has {} of {count} shards yet (leaders publish within a second of \
             election); try again",
            entries.len()
        )
        .into());
    }
    let placement = entries
        .iter()
        .map(|e| (e.shard, e.members.iter().map(|m| m.id).collect()))
        .collect();
    let nodes = client
        .status(rpb::NodeStatusRequest { shard: META_SHARD })
        .await
        .map_err(failure)?
        .into_inner()
        .members
        .into_iter()
        .map(|m| (m.id, m.address))
        .collect();
    Ok((placement, nodes))
}

/// Every group `node` is a member of (shards are placed on some nodes
/// only), the metadata group last.
pub(crate) async fn groups_holding(client: &mut Client, node: u64) -> Result<Vec<u64>, Failure> {
    let (placement, nodes) = cluster_view(client).await?;
    let mut groups: Vec<u64> = placement
        .iter()
        .filter(|(_, replicas)| replicas.contains(&node))
        .map(|(&shard, _)| shard)
        .collect();
    if nodes.contains_key(&node) {
        groups.push(META_SHARD);
    }
    Ok(groups)
}

/// The moves (shard, from, to) that even out how many replicas each of
/// `nodes` hosts, every shard keeping its replica count: while the most
/// loaded node hosts at least two more than the least loaded, one shard
/// of the former that the latter lacks moves (lowest shard id first; ties
/// between nodes go to the lowest id). Replicas on nodes outside `nodes`
/// stay where they are and are not counted.
fn rebalance_moves(
    placement: &BTreeMap<u64, BTreeSet<u64>>,
    nodes: &BTreeSet<u64>,
) -> Vec<(u64, u64, u64)> {
    let mut placement = placement.clone();
    let mut moves = Vec::new();
    loop {
        let load = |node: u64, placement: &BTreeMap<u64, BTreeSet<u64>>| {
            placement.values().filter(|r| r.contains(&node)).count()
        };
        let mut by_load: Vec<(usize, u64)> =
            nodes.iter().map(|&n| (load(n, &placement), n)).collect();
        by_load.sort();
        let found = by_load.iter().rev().find_map(|&(high, from)| {
            by_load
                .iter()
                .take_while(|&&(low, _)| low + 2 <= high)
                .find_map(|&(_, to)| {
                    placement
                        .iter()
                        .find(|(_, r)| r.contains(&from) && !r.contains(&to))
                        .map(|(&shard, _)| (shard, from, to))
                })
        });
        let Some((shard, from, to)) = found else {
            return moves;
        };
        if let Some(replicas) = placement.get_mut(&shard) {
            replicas.remove(&from);
            replicas.insert(to);
        }
        moves.push((shard, from, to));
    }
}

/// Runs [`rebalance_moves`] on the cluster behind `client`: each move is
/// an add (learner, caught up, voter) then a remove, at the shard's
/// leader.
async fn rebalance(client: &mut Client, server: &str, json_output: bool) -> Result<(), Failure> {
    let (placement, nodes) = cluster_view(client).await?;
    let ids: BTreeSet<u64> = nodes.keys().copied().collect();
    let moves = rebalance_moves(&placement, &ids);
    for (done, &(shard, from, to)) in moves.iter().enumerate() {
        let address = nodes.get(&to).cloned().unwrap_or_default();
        if !json_output {
            println!(
                "moving shard {shard} from node {from} to node {to} ({}/{})",
                done + 1,
                moves.len()
            );
        }
        let add = rpb::MemberChange {
            shard,
            id: to,
            address,
        };
        on_leader(server, shard, add, true).await?;
        let remove = rpb::MemberChange {
            shard,
            id: from,
            address: String::new(),
        };
        let removed = on_leader(server, shard, remove, false).await?;
        if json_output {
            println!(
                "{}",
                json!({"moved_shard": shard, "from": from, "to": to, "retired": removed.retired})
            );
        } else {
            println!(
                "  node {from}'s replica of shard {shard}: {}",
                removed.retired
            );
        }
    }
    if !json_output {
        let mut after = placement;
        for &(shard, from, to) in &moves {
            if let Some(replicas) = after.get_mut(&shard) {
                replicas.remove(&from);
                replicas.insert(to);
            }
        }
        let per_node: Vec<String> = ids
            .iter()
            .map(|&n| format!("{n}={}", after.values().filter(|r| r.contains(&n)).count()))
            .collect();
        println!(
            "balanced: {} move(s); replicas per node: {}",
            moves.len(),
            per_node.join(",")
        );
    }
    Ok(())
}

pub fn admin(cmd: ClusterCmd, server: &str, json_output: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut client = crate::access::transport(server)
            .await
            .map_err(|e| format!("cannot reach {server}: {e}"))?;
        match cmd {
            ClusterCmd::Init { members, replicas } => {
                let members = members
                    .iter()
                    .map(|m| imstore_raft::parse_member(m))
                    .collect::<Result<Vec<_>, _>>()?;
                let shards = shards_of(&mut client, None).await?;
                let replicas = imstore_raft::initialize_cluster(
                    &crate::access::dialer(),
                    members.clone(),
                    shards.len() as u64,
                    replicas,
                )
                .await?;
                if json_output {
                    println!(
                        "{}",
                        json!({"initialized": true, "shards": shards.len(), "replicas": replicas})
                    );
                } else {
                    println!(
                        "cluster initialized with {} shard(s) of {replicas} replica(s) on {} \
                         node(s); leaders are being elected",
                        shards.len(),
                        members.len()
                    );
                }
            }
            ClusterCmd::AddNode {
                id,
                address,
                shard: Some(shard),
            } => {
                let shard = shards_of(&mut client, Some(shard)).await?[0];
                let change = rpb::MemberChange { shard, id, address };
                print_status(
                    &on_leader(server, shard, change, true).await?,
                    false,
                    json_output,
                );
            }
            ClusterCmd::AddNode {
                id,
                address,
                shard: None,
            } => {
                let change = rpb::MemberChange {
                    shard: META_SHARD,
                    id,
                    address,
                };
                print_status(
                    &on_leader(server, META_SHARD, change, true).await?,
                    false,
                    json_output,
                );
                rebalance(&mut client, server, json_output).await?;
            }
            ClusterCmd::Rebalance => rebalance(&mut client, server, json_output).await?,
            ClusterCmd::RemoveNode { id, shard } => {
                let groups = match shard {
                    Some(_) => groups_of(&mut client, shard).await?,
                    None => groups_holding(&mut client, id).await?,
                };
                for shard in groups {
                    let change = rpb::MemberChange {
                        shard,
                        id,
                        address: String::new(),
                    };
                    print_status(
                        &on_leader(server, shard, change, false).await?,
                        false,
                        json_output,
                    );
                }
            }
            ClusterCmd::MoveShard {
                from,
                to,
                address,
                shard,
            } => {
                let groups = match shard {
                    Some(_) => groups_of(&mut client, shard).await?,
                    None => groups_holding(&mut client, from).await?,
                };
                for shard in groups {
                    let add = rpb::MemberChange {
                        shard,
                        id: to,
                        address: address.clone(),
                    };
                    on_leader(server, shard, add, true).await?;
                    let remove = rpb::MemberChange {
                        shard,
                        id: from,
                        address: String::new(),
                    };
                    print_status(
                        &on_leader(server, shard, remove, false).await?,
                        false,
                        json_output,
                    );
                }
            }
            // Through the client API, which proxies serve too.
            ClusterCmd::Hot { limit } => {
                crate::cluster_hot::hot(server, limit, json_output).await?
            }
            ClusterCmd::Status => {
                // The replicated shard map, if the metadata group answers:
                // it says where the shards this node does not host are.
                let map = client.shard_map(rpb::ShardMapRequest {}).await;
                let entries = match &map {
                    Ok(map) => map.get_ref().entries.clone(),
                    Err(_) => Vec::new(),
                };
                let placed: HashMap<u64, &rpb::ShardMapEntry> =
                    entries.iter().map(|e| (e.shard, e)).collect();
                // Groups led by another node: (shard, its leader's address).
                let mut led_elsewhere = Vec::new();
                for shard in groups_of(&mut client, None).await? {
                    let s = client
                        .status(rpb::NodeStatusRequest { shard })
                        .await
                        .map_err(failure)?
                        .into_inner();
                    let entry = placed.get(&shard);
                    let hosted_elsewhere = entry.is_some_and(|e| {
                        !e.members.is_empty() && !e.members.iter().any(|m| m.id == s.id)
                    }) && !s.members.iter().any(|m| m.id == s.id);
                    print_status(&s, hosted_elsewhere, json_output);
                    let leader = match (hosted_elsewhere, entry) {
                        (true, Some(e)) => Some((e.leader, &e.members)),
                        _ => Some((s.leader, &s.members)),
                    };
                    if let Some((leader, members)) = leader.filter(|(l, _)| *l != 0 && *l != s.id) {
                        if let Some(m) = members.iter().find(|m| m.id == leader) {
                            led_elsewhere.push((shard, m.address.clone()));
                        }
                    }
                }
                for e in &entries {
                    print_map_entry(e, json_output);
                }
                match map {
                    Err(s) if json_output => {
                        println!("{}", json!({"shard_map_error": s.message()}))
                    }
                    Err(s) => println!("shard map: unavailable ({})", s.message()),
                    Ok(_) => {}
                }
                // Replication lag is known to leaders: ask each.
                for (shard, address) in led_elsewhere {
                    let answer = match crate::access::transport(&address).await {
                        Ok(mut leader) => leader
                            .status(rpb::NodeStatusRequest { shard })
                            .await
                            .map(|s| s.into_inner())
                            .map_err(|s| s.message().to_owned()),
                        Err(e) => Err(e.to_string()),
                    };
                    print_leader_view(shard, &address, answer, json_output);
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(placement: &BTreeMap<u64, BTreeSet<u64>>, nodes: &BTreeSet<u64>) -> Vec<usize> {
        nodes
            .iter()
            .map(|n| placement.values().filter(|r| r.contains(n)).count())
            .collect()
    }

    fn apply(
        placement: &BTreeMap<u64, BTreeSet<u64>>,
        moves: &[(u64, u64, u64)],
    ) -> BTreeMap<u64, BTreeSet<u64>> {
        let mut after = placement.clone();
        for &(shard, from, to) in moves {
            let replicas = after.get_mut(&shard).expect("a moved shard exists");
            assert!(replicas.remove(&from), "{from} held shard {shard}");
            assert!(replicas.insert(to), "{to} did not hold shard {shard}");
        }
        after
    }

    #[test]
    fn init_placement_spreads_shards_evenly() {
        let members: Vec<rpb::Member> = (1..=4)
            .map(|id| rpb::Member {
                id,
                address: format!("h:{id}"),
            })
            .collect();
        let placement: BTreeMap<u64, BTreeSet<u64>> = (0..8)
            .map(|s| {
                (
                    s,
                    imstore_raft::placement(s, &members, 3)
                        .iter()
                        .map(|m| m.id)
                        .collect(),
                )
            })
            .collect();
        assert!(placement.values().all(|r| r.len() == 3));
        let nodes: BTreeSet<u64> = (1..=4).collect();
        assert_eq!(loads(&placement, &nodes), vec![6, 6, 6, 6]);
        assert_eq!(placement[&1], BTreeSet::from([2, 3, 4]));
        // Fewer members than replicas: all of them.
        assert_eq!(imstore_raft::placement(5, &members[..2], 3).len(), 2);
        assert!(rebalance_moves(&placement, &nodes).is_empty());
    }

    #[test]
    fn rebalance_fills_a_new_node_and_keeps_replica_counts() {
        // 8 shards on nodes 1-4 (3 each), then node 5 joins empty.
        let members: Vec<rpb::Member> = (1..=4)
            .map(|id| rpb::Member {
                id,
                address: String::new(),
            })
            .collect();
        let placement: BTreeMap<u64, BTreeSet<u64>> = (0..8)
            .map(|s| {
                (
                    s,
                    imstore_raft::placement(s, &members, 3)
                        .iter()
                        .map(|m| m.id)
                        .collect(),
                )
            })
            .collect();
        let nodes: BTreeSet<u64> = (1..=5).collect();
        let moves = rebalance_moves(&placement, &nodes);
        let after = apply(&placement, &moves);
        assert!(after.values().all(|r| r.len() == 3), "{after:?}");
        let load = loads(&after, &nodes);
        let (low, high) = (load.iter().min(), load.iter().max());
        assert!(high.zip(low).is_some_and(|(h, l)| h - l <= 1), "{load:?}");
        // 24 replicas over 5 nodes: node 5 gets 4 or 5, by 4 or 5 moves.
        assert!(load[4] >= 4, "{load:?}");
        assert_eq!(moves.len(), load[4]);
        // Balanced already: nothing to do.
        assert!(rebalance_moves(&after, &nodes).is_empty());
    }

    proptest::proptest! {
        /// Against any placement: every shard keeps its replica count with
        /// no node twice, only nodes of the cluster move, and afterwards
        /// node loads differ by at most one and nothing is left to move.
        #[test]
        fn rebalance_keeps_counts_and_evens_loads(
            nodes in 2u64..8,
            shards in proptest::collection::vec(
                proptest::collection::btree_set(1u64..8, 1..4),
                1..24,
            ),
        ) {
            let ids: BTreeSet<u64> = (1..=nodes).collect();
            // Replicas on ids past `nodes` stand for nodes that left the
            // metadata group: never counted, never moved.
            let placement: BTreeMap<u64, BTreeSet<u64>> =
                (0u64..).zip(shards).collect();
            let moves = rebalance_moves(&placement, &ids);
            for &(_, from, to) in &moves {
                proptest::prop_assert!(ids.contains(&from) && ids.contains(&to));
            }
            let after = apply(&placement, &moves);
            for (shard, replicas) in &after {
                proptest::prop_assert_eq!(replicas.len(), placement[shard].len());
                let outside: BTreeSet<u64> = replicas.difference(&ids).copied().collect();
                let before: BTreeSet<u64> = placement[shard].difference(&ids).copied().collect();
                proptest::prop_assert_eq!(outside, before);
            }
            let load = loads(&after, &ids);
            let spread = load.iter().max().zip(load.iter().min()).map_or(0, |(h, l)| h - l);
            proptest::prop_assert!(spread <= 1, "{:?} after {:?}", load, moves);
            proptest::prop_assert!(rebalance_moves(&after, &ids).is_empty());
        }
    }

    #[test]
    fn rebalance_never_puts_two_replicas_of_a_shard_on_one_node() {
        // Node 3 holds every shard, nodes 1, 2 and 4 hold one each: the
        // only moves possible are of shards their target lacks.
        let placement: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::from([
            (0, BTreeSet::from([1, 3])),
            (1, BTreeSet::from([2, 3])),
            (2, BTreeSet::from([3, 4])),
            (3, BTreeSet::from([1, 3])),
        ]);
        let nodes: BTreeSet<u64> = (1..=4).collect();
        let moves = rebalance_moves(&placement, &nodes);
        let after = apply(&placement, &moves);
        assert!(after.values().all(|r| r.len() == 2));
        assert_eq!(loads(&after, &nodes), vec![2, 2, 2, 2], "{moves:?}");
    }
}
