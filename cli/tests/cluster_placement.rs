//! Placement: 4 real `imstore node --shards 4` processes and one
//! `imstore cluster init` with the default replication factor of 3. Each
//! shard is placed on 3 of the 4 nodes (shard s on the nodes from the one
//! at s mod 4 on, in id order), so every node hosts 3 shards and not the
//! fourth. Every node still serves everything: writes to the shard it
//! does not host are proposed at a node the shard map names, reads of it
//! are answered there, user-wide reads (sync, the conversation list, the
//! unread total, friends) merge the shards it hosts with the one it does
//! not, and a `Watch` relays the notifications of that shard from a node
//! that hosts it. On disk, each node holds exactly the shards placed on it.

mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use imstore_engine::{Direction, Engine, Options};
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{cluster_init, free_port, imstore, spawn_node, start_nodes, stop_all, TestResult};

const SHARDS: u64 = 4;
const NODES: u64 = 4;

/// The nodes `cluster init` places shard `shard` on (ids 1..=4).
fn placed(shard: u64) -> BTreeSet<u64> {
    (0..3).map(|i| (shard + i) % NODES + 1).collect()
}

/// The shard map as `imstore cluster status` prints it: shard → (leader
/// hint, replica ids).
type Map = BTreeMap<u64, (u64, BTreeSet<u64>)>;

/// The shard map as `imstore cluster status` on `addr` prints it.
fn map_of(addr: SocketAddr) -> Result<Map, Box<dyn std::error::Error>> {
    let status = imstore(addr, &["--json", "cluster", "status"])?;
    Ok(status
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let replicas = v["replicas"]
                .as_array()?
                .iter()
                .filter_map(|r| r.as_str()?.split_once('=')?.0.parse().ok())
                .collect();
            Some((
                v["map_shard"].as_u64()?,
                (v["leader_hint"].as_u64()?, replicas),
            ))
        })
        .collect())
}

/// Polls the shard map on `addr` (at most 60 s) until it has every shard
/// and `done` holds for it; returns it.
fn wait_for_map(
    addr: SocketAddr,
    done: impl Fn(&Map) -> bool,
) -> Result<Map, Box<dyn std::error::Error>> {
    Ok(nodes::eventually(
        "the shard map to get there",
        Duration::from_secs(60),
        || {
            let map = map_of(addr).map_err(|e| e.to_string())?;
            if map.len() == SHARDS as usize && done(&map) {
                Ok(map)
            } else {
                Err(format!("{map:?}"))
            }
        },
    )?)
}

/// Creates group `group` (owner 1, members 1 and 2) through `addr`; a
/// retry of a create whose answer was lost finds it made.
async fn create_group(addr: SocketAddr, group: u64) -> Result<(), tonic::Status> {
    on_node(addr, |mut c| async move {
        match c
            .create_group(pb::CreateGroupRequest {
                conversation: group,
                owner: 1,
                members: vec![1, 2],
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            other => other.map(|_| ()),
        }
    })
    .await
}

/// User 1's first sync page (at most `limit` entries) through `addr`.
async fn sync_of(addr: SocketAddr, limit: u32) -> Result<pb::SyncResponse, tonic::Status> {
    on_node(addr, |mut c| async move {
        c.sync(pb::SyncRequest {
            user: 1,
            from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
            limit,
            ack: None,
        })
        .await
    })
    .await
    .map(|r| r.into_inner())
}

/// Runs `call` against one node until it answers other than UNAVAILABLE
/// (a leader hint a moment stale, an election), for at most 60 s: the
/// node itself must serve the request.
async fn on_node<T, F, Fut>(addr: SocketAddr, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut(ImstoreClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let client = ImstoreClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    nodes::retry_unavailable(|| call(client.clone())).await
}

/// The first notification of `stream` that `pick` takes (others late
/// applies may send first are skipped), waited for at most 30 s; a
/// resync or the end of the stream fails.
async fn first_picked<T>(
    stream: &mut tonic::Streaming<pb::Notification>,
    what: &str,
    pick: impl Fn(pb::notification::Event) -> Option<T>,
) -> Result<T, Box<dyn std::error::Error>> {
    let picked = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(notification) = stream.message().await? {
            match notification.event {
                Some(pb::notification::Event::Resync(r)) => {
                    return Err(tonic::Status::aborted(r.reason))
                }
                Some(event) => {
                    if let Some(picked) = pick(event) {
                        return Ok(Some(picked));
                    }
                }
                None => {}
            }
        }
        Ok(None)
    })
    .await
    .map_err(|_| format!("no notification of {what} within 30 s"))??;
    Ok(picked.ok_or("the watch ended")?)
}

/// A conversation id in `shard`, the `nth` one.
fn in_shard(shard: u64, nth: usize) -> Result<u64, String> {
    (1_000..100_000)
        .filter(|&c| imstore_raft::shard_for(c, SHARDS) == shard)
        .nth(nth)
        .ok_or_else(|| format!("no conversation in shard {shard}"))
}

#[test]
fn four_nodes_each_serve_the_shard_they_do_not_host() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, mut nodes) = start_nodes(root.path(), NODES, &["--shards", "4"])?;
    let init = cluster_init(&addrs, &[])?;
    assert!(
        init.contains("4 shard(s) of 3 replica(s) on 4 node(s)"),
        "{init}"
    );
    wait_for_map(addrs[0], |map| {
        map.iter()
            .all(|(&shard, (hint, replicas))| *hint != 0 && *replicas == placed(shard))
    })?;
    let not_hosted = |node: u64| (0..SHARDS).find(|&s| !placed(s).contains(&node));
    for node in 1..=NODES {
        let shard = not_hosted(node).ok_or("every node misses one shard")?;
        let human = imstore(addrs[node as usize - 1], &["cluster", "status"])?;
        assert!(
            human.contains(&format!("node {node} shard {shard} [elsewhere]")),
            "{human}"
        );
        assert_eq!(human.matches("[healthy]").count(), 4, "{human}");
        // Replication lag comes from each shard's leader: for the shard
        // this node misses, from a leader elsewhere, two replicas behind it.
        let lag = human
            .lines()
            .find(|l| l.starts_with(&format!("lag: shard {shard} at its leader node")))
            .ok_or_else(|| format!("no lag line for shard {shard}: {human}"))?;
        assert_eq!(lag.matches(" by ").count(), 2, "{lag}");
    }

    // Node 5, started now, joins later.
    let fifth = free_port()?;
    nodes.insert(
        5,
        spawn_node(5, fifth, &root.path().join("node5"), &["--shards", "4"])?,
    );

    let runtime = tokio::runtime::Runtime::new()?;
    let moved = runtime.block_on(async {
        // Through each node, a group in the shard it does not host: user
        // 1 and 2 in it, a send by 2; then the same node reads it back.
        let mut groups = Vec::new();
        for node in 1..=NODES {
            let addr = addrs[node as usize - 1];
            let shard = not_hosted(node).ok_or("a shard")?;
            let group = in_shard(shard, node as usize)?;
            create_group(addr, group).await?;
            let sent = on_node(addr, |mut c| async move {
                c.send(pb::SendRequest {
                    conversation: group,
                    sender: 2,
                    client_msg_id: format!("m{group}").into_bytes(),
                    payload: b"from elsewhere".to_vec(),
                    receipt: true,
                    ..Default::default()
                })
                .await
            })
            .await?
            .into_inner();
            assert_eq!(
                (sent.seq, sent.duplicate),
                (1, false),
                "send via node {node}"
            );
            let read = on_node(addr, |mut c| async move {
                c.read(pb::ReadRequest {
                    conversation: group,
                    from: 1,
                    limit: 10,
                    direction: pb::Direction::Forward as i32,
                    stale_ok: false,
                })
                .await
            })
            .await?
            .into_inner();
            assert_eq!(read.messages.len(), 1, "read via node {node}");
            assert_eq!(read.messages[0].payload, b"from elsewhere");
            let members = on_node(addr, |mut c| async move {
                c.list_members(pb::ListMembersRequest {
                    conversation: group,
                    after_user: 0,
                    limit: 10,
                })
                .await
            })
            .await?
            .into_inner();
            assert_eq!(members.member_count, 2);
            let receipts = on_node(addr, |mut c| async move {
                c.get_receipts(pb::GetReceiptsRequest {
                    conversation: group,
                    seq: 1,
                    ..Default::default()
                })
                .await
            })
            .await?
            .into_inner();
            assert_eq!(receipts.unread, vec![1]);
            // Counted and paged (`ShardRead` of a newer query kind).
            let counted = on_node(addr, |mut c| async move {
                c.get_receipt_counts(pb::GetReceiptCountsRequest {
                    conversation: group,
                    seqs: vec![1],
                })
                .await
            })
            .await?
            .into_inner()
            .counts;
            assert_eq!(
                counted
                    .iter()
                    .map(|c| (c.read_count, c.unread_count))
                    .collect::<Vec<_>>(),
                [(receipts.read_count, receipts.unread_count)]
            );
            groups.push(group);
        }
        // Friends 3 and 4: their pair's shard, through a node missing it.
        let pair_shard = imstore_raft::shard_for(imstore_engine::pair_key(3, 4), SHARDS);
        let via = (1..=NODES)
            .find(|&n| !placed(pair_shard).contains(&n))
            .ok_or("a node")?;
        let via = addrs[via as usize - 1];
        let pair = |user, other| pb::FriendPairRequest { user, other };
        on_node(
            via,
            |mut c| async move { c.request_friend(pair(3, 4)).await },
        )
        .await?;
        on_node(
            via,
            |mut c| async move { c.accept_friend(pair(4, 3)).await },
        )
        .await?;

        // Every node answers user-wide reads over all four shards. The
        // copies reach user 1's shard within the delivery lag.
        let mut expected: Vec<u64> = groups.clone();
        expected.sort();
        let want = expected.len();
        for &addr in &addrs {
            let what = format!("user 1's four copies, read on {addr}");
            let page = nodes::eventually_async(&what, Duration::from_secs(60), || async move {
                let page = sync_of(addr, 10).await?;
                if page.entries.len() < want {
                    return Err(format!("{} entries", page.entries.len()).into());
                }
                Ok::<_, Box<dyn std::error::Error>>(page)
            })
            .await?;
            let mut got: Vec<u64> = page
                .entries
                .iter()
                .filter_map(|e| e.message.as_ref().map(|m| m.conversation))
                .collect();
            got.sort();
            assert_eq!(got, expected, "sync of user 1 on {addr}");
            let list = on_node(addr, |mut c| async move {
                c.list_conversations(pb::ListConversationsRequest {
                    user: 1,
                    after: None,
                    limit: 10,
                })
                .await
            })
            .await?
            .into_inner()
            .conversations;
            assert_eq!(list.len(), 4, "conversation list on {addr}");
            let unread = on_node(addr, |mut c| async move {
                c.get_unread(pb::GetUnreadRequest {
                    user: 1,
                    conversation: 0,
                })
                .await
            })
            .await?
            .into_inner()
            .unread;
            assert_eq!(unread, 4, "unread total on {addr}");
            let friends = nodes::friends_once_delivered(addr, 3).await?;
            assert_eq!(friends.len(), 1, "friends of 3 on {addr}");
        }

        // A device syncs on node 1, then on node 2 acknowledging the first
        // answer: each entry once.
        let device = |addr: SocketAddr, ack: Option<pb::Cursor>| async move {
            on_node(addr, |mut c| {
                let ack = ack.clone();
                async move {
                    c.sync(pb::SyncRequest {
                        user: 1,
                        from: Some(pb::sync_request::From::Device(b"phone".to_vec())),
                        limit: 10,
                        ack,
                    })
                    .await
                }
            })
            .await
            .map(|r| r.into_inner())
        };
        let first = device(addrs[0], None).await?;
        assert_eq!(first.entries.len(), 4);
        assert_eq!(device(addrs[1], first.cursor).await?.entries.len(), 0);

        // A watch on a node that does not host user 1's shard (where the
        // user's inbox is) hears about a send made through another node:
        // relayed from a host.
        let missing = imstore_engine::shard_for_user(1, SHARDS);
        let watching = (1..=NODES)
            .find(|&n| !placed(missing).contains(&n))
            .ok_or("a node without user 1's shard")?;
        let watching = addrs[watching as usize - 1];
        let cursor = sync_of(watching, 10).await?.cursor.unwrap_or_default();
        let mut watcher = ImstoreClient::connect(format!("http://{watching}")).await?;
        let mut stream = watcher
            .watch(pb::WatchRequest {
                users: vec![pb::UserPosition {
                    user: 1,
                    inbox_seq: cursor.inbox_seq,
                    shards: Vec::new(),
                }],
                conversations: Vec::new(),
                change: 0,
                shards: Vec::new(),
                reported: cursor.reported.clone(),
            })
            .await?
            .into_inner();
        let group = groups[0];
        let through = *addrs
            .iter()
            .find(|&&a| a != watching)
            .ok_or("another node")?;
        on_node(through, |mut c| async move {
            c.send(pb::SendRequest {
                conversation: group,
                sender: 2,
                client_msg_id: b"watched".to_vec(),
                payload: b"news".to_vec(),
                receipt: false,
                ..Default::default()
            })
            .await
        })
        .await?;
        // Late applies of earlier writes may notify the hosted shards
        // first; the relayed one must come (bounded wait).
        let heard = first_picked(&mut stream, "the relayed shard", |event| match event {
            pb::notification::Event::Inbox(a) if u64::from(a.shard) == missing => Some(a),
            _ => None,
        })
        .await?;
        assert_eq!(heard.user, 1);
        assert!(heard.inbox_seq > cursor.inbox_seq, "{heard:?}");
        drop(stream);

        // A big group (past the default fan-out threshold of 500) in the
        // shard a node does not host, watched on that node for user 1,
        // whose shard it does host: the watch finds the group among user
        // 1's remote views in the user's shard, and follows the group's
        // shard through a relay, with the group named in the relayed
        // request.
        let home = imstore_engine::shard_for_user(1, SHARDS);
        let watching = (1..=NODES)
            .find(|&n| placed(home).contains(&n))
            .ok_or("a node hosting user 1's shard")?;
        let away = not_hosted(watching).ok_or("a shard the node does not host")?;
        let big = in_shard(away, 50)?;
        let watching = addrs[watching as usize - 1];
        on_node(watching, |mut c| async move {
            match c
                .create_group(pb::CreateGroupRequest {
                    conversation: big,
                    owner: 2,
                    members: (1..=600).collect(),
                })
                .await
            {
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await?;
        // The view reaches user 1's shard through the group's outbox.
        let cursor = nodes::eventually_async(
            "user 1's view of the big group to arrive",
            Duration::from_secs(60),
            || async move {
                let page = sync_of(watching, 100).await.map_err(|s| s.to_string())?;
                let cursor = page.cursor.unwrap_or_default();
                let list = on_node(watching, |mut c| async move {
                    c.list_conversations(pb::ListConversationsRequest {
                        user: 1,
                        limit: 100,
                        ..Default::default()
                    })
                    .await
                })
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
                if list.conversations.iter().any(|c| c.conversation == big) {
                    Ok(cursor)
                } else {
                    Err(format!("{big} not listed yet"))
                }
            },
        )
        .await?;
        let mut watcher = ImstoreClient::connect(format!("http://{watching}")).await?;
        let mut stream = watcher
            .watch(pb::WatchRequest {
                users: vec![pb::UserPosition {
                    user: 1,
                    inbox_seq: cursor.inbox_seq,
                    shards: Vec::new(),
                }],
                reported: cursor.reported.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        on_node(through, |mut c| async move {
            c.send(pb::SendRequest {
                conversation: big,
                sender: 2,
                client_msg_id: b"big news".to_vec(),
                payload: b"to 600".to_vec(),
                receipt: false,
                ..Default::default()
            })
            .await
        })
        .await?;
        let heard = first_picked(&mut stream, "the relayed big group", |event| match event {
            pb::notification::Event::Conversation(a) if a.conversation == big => Some(a),
            _ => None,
        })
        .await?;
        assert_eq!((heard.seq, u64::from(heard.shard)), (1, away), "{heard:?}");
        drop(stream);

        // Node 5 joins under load: four writers send to a group in each
        // shard (through any node, retrying with the same ids) while
        // `imstore cluster add-node` adds node 5 to the metadata group and
        // moves shards onto it.
        let mut load = Vec::new();
        for shard in 0..SHARDS {
            let group = in_shard(shard, 10)?;
            create_group(addrs[0], group).await?;
            load.push(group);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = load
            .iter()
            .map(|&group| {
                let (addrs, stop) = (addrs.clone(), std::sync::Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    // Bounded: stops when told, or after 2,000 sends.
                    for i in 0..2_000 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) && i >= 20 {
                            break;
                        }
                        let id = format!("load-{group}-{i}");
                        acked.push(nodes::send_until_acked(&addrs, group, 2, &id).await?.0);
                    }
                    nodes::TaskResult::Ok(acked)
                })
            })
            .collect();
        let joined = imstore(
            addrs[1],
            &[
                "cluster",
                "add-node",
                "--id",
                "5",
                "--address",
                &fifth.to_string(),
            ],
        )?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(joined.contains("moving shard"), "{joined}");
        eprintln!("{joined}");
        assert!(joined.contains("5=2"), "12 replicas over 5 nodes: {joined}");
        // Each node moved away deleted its replica (RetireReplica).
        let moves = joined.matches("moving shard").count();
        let retired: Vec<&str> = joined
            .lines()
            .filter(|l| l.contains("'s replica of shard"))
            .collect();
        assert_eq!(retired.len(), moves, "{joined}");
        assert!(retired.iter().all(|l| l.ends_with(": deleted")), "{joined}");
        let mut all = addrs.clone();
        all.push(fifth);
        let mut sends = BTreeMap::new();
        for (writer, &group) in writers.into_iter().zip(&load) {
            let acked = writer.await?.map_err(|e| e.to_string())?;
            sends.insert(group, acked.len() as u64);
            eprintln!("group {group}: {} sends acknowledged", acked.len());
            // Every acknowledged send once, seqs continuous, read through
            // every node, node 5 included (which hosts some shards now).
            let expected: Vec<u64> = (1..=acked.len() as u64).collect();
            let mut sorted = acked.clone();
            sorted.sort();
            assert_eq!(sorted, expected, "acks of group {group}");
            for &addr in &all {
                let mut seqs = Vec::new();
                while seqs.len() < acked.len() {
                    let from = seqs.len() as u64 + 1;
                    let page = on_node(addr, |mut c| async move {
                        c.read(pb::ReadRequest {
                            conversation: group,
                            from,
                            limit: 500,
                            direction: pb::Direction::Forward as i32,
                            stale_ok: false,
                        })
                        .await
                    })
                    .await?
                    .into_inner()
                    .messages;
                    if page.is_empty() {
                        break;
                    }
                    seqs.extend(page.iter().map(|m| m.seq));
                }
                assert_eq!(seqs, expected, "group {group} read on {addr}");
            }
        }
        // The map follows the moves: 3 replicas a shard, 2 on node 5.
        wait_for_map(fifth, |map| {
            map.values().all(|(_, r)| r.len() == 3)
                && map.values().filter(|(_, r)| r.contains(&5)).count() == 2
        })?;

        // A node that retired its replica can host the shard again: the
        // first move goes back (`move-shard`), the node catches up from
        // nothing, and node 5 retires its replica in turn.
        let first = joined
            .lines()
            .find_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                match words.as_slice() {
                    ["moving", "shard", s, "from", "node", from, ..] => {
                        Some((s.parse::<u64>().ok()?, from.parse::<u64>().ok()?))
                    }
                    _ => None,
                }
            })
            .ok_or("no move in the add-node output")?;
        let (shard, back_to) = first;
        let back = imstore(
            fifth,
            &[
                "cluster",
                "move-shard",
                "--from",
                "5",
                "--to",
                &back_to.to_string(),
                "--address",
                &addrs[back_to as usize - 1].to_string(),
                "--shard",
                &shard.to_string(),
            ],
        )?;
        assert!(
            back.contains("the removed node's replica: deleted"),
            "{back}"
        );
        let placement = wait_for_map(fifth, |map| {
            map.values().all(|(_, r)| r.len() == 3)
                && map
                    .get(&shard)
                    .is_some_and(|(_, r)| r.contains(&back_to) && !r.contains(&5))
        })?
        .into_iter()
        .map(|(shard, (_, replicas))| (shard, replicas))
        .collect::<BTreeMap<u64, BTreeSet<u64>>>();
        let group = load[shard as usize];
        let expected: Vec<u64> = (1..=sends[&group]).collect();
        let addr = addrs[back_to as usize - 1];
        let page = on_node(addr, |mut c| async move {
            c.read(pb::ReadRequest {
                conversation: group,
                from: 1,
                limit: 5_000,
                direction: pb::Direction::Forward as i32,
                stale_ok: false,
            })
            .await
        })
        .await?
        .into_inner()
        .messages;
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs, expected,
            "group {group} read on node {back_to}, hosting it again"
        );

        // A node that is down when it is removed retires its replica once
        // it is back: the map has moved it away, and a host's applied
        // membership leaves it out.
        let down = *placement[&shard]
            .iter()
            .find(|&&n| n != back_to && n != 5)
            .ok_or("a third replica")?;
        let down_addr = addrs[down as usize - 1];
        nodes.get_mut(&down).ok_or("the node to stop")?.stop();
        let moved_off = imstore(
            fifth,
            &[
                "cluster",
                "move-shard",
                "--from",
                &down.to_string(),
                "--to",
                "5",
                "--address",
                &fifth.to_string(),
                "--shard",
                &shard.to_string(),
            ],
        )?;
        assert!(
            moved_off.contains("the removed node's replica: not retired"),
            "{moved_off}"
        );
        nodes.insert(
            down,
            spawn_node(
                down,
                down_addr,
                &root.path().join(format!("node{down}")),
                &["--shards", "4"],
            )?,
        );
        // Retired: an empty replica that kept its vote. (A replica whose
        // raft has not reported yet also shows no members and nothing
        // applied, but term 0: waiting on that alone raced the retire.)
        nodes::wait_for_shard(down_addr, shard, "the replica retired", |s| {
            s.members.is_empty() && s.last_applied == 0 && s.term > 0
        })
        .await?;
        let placement = wait_for_map(fifth, |map| {
            map.values().all(|(_, r)| r.len() == 3)
                && map
                    .get(&shard)
                    .is_some_and(|(_, r)| r.contains(&5) && !r.contains(&down))
        })?
        .into_iter()
        .map(|(shard, (_, replicas))| (shard, replicas))
        .collect::<BTreeMap<u64, BTreeSet<u64>>>();
        let sync = sync_of(fifth, 100).await?;
        assert!(sync.entries.len() >= 8, "user-wide read on node 5");
        Ok::<_, Box<dyn std::error::Error>>(placement)
    })?;

    // Each node holds the shards placed on it and no other.
    let groups: Vec<u64> = (1..=NODES)
        .map(|n| in_shard(not_hosted(n).unwrap_or(0), n as usize))
        .collect::<Result<_, _>>()?;
    let dirs = stop_all(nodes);
    let mut holders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (dir, node) in dirs.iter().zip(1u64..) {
        let engine = Engine::open(dir.join("engine"), Options::default())?;
        for &group in &groups {
            let shard = imstore_raft::shard_for(group, SHARDS);
            let stored = engine
                .with_shard(shard as u16)?
                .read(group, 1, 10, Direction::Forward)?;
            if !stored.is_empty() {
                holders.entry(group).or_default().insert(node);
            }
        }
    }
    for &group in &groups {
        // At least the leader applied it (followers may not have yet);
        // nobody outside the placement after the moves has it: a replica
        // moved away deleted its data.
        let shard = imstore_raft::shard_for(group, SHARDS);
        let held = holders.get(&group).cloned().unwrap_or_default();
        let allowed = moved.get(&shard).cloned().unwrap_or_else(|| placed(shard));
        assert!(!held.is_empty(), "nobody holds {group}");
        assert!(
            held.is_subset(&allowed),
            "{group} of shard {shard} on {held:?}"
        );
    }
    Ok(())
}
