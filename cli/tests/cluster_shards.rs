//! A 3-node cluster with 4 shards, as 3 real `imstore node --shards 4`
//! processes bootstrapped by one `imstore cluster init`: every shard elects
//! a leader, `imstore cluster status` shows each shard, appends and group
//! sends to conversations spread over the shards are acknowledged (clients
//! follow each shard's leader hint), and on every node each conversation's
//! messages are stored in exactly the shard `shard_for` names and no other.
//! Node 1 (which bootstrapped every shard) is then SIGKILLed: each shard
//! re-elects among the other two and appends go on; node 1 restarts and
//! catches up. User-wide reads (sync, the conversation list, the unread
//! total, friends) of a user with data in two shards are answered by every
//! node, each a follower of some shards (reads wait for each shard's read
//! index), and a device's sync cursors are replicated per shard. The
//! shard map, a raft group of its own, names each shard's replicas and
//! leader, and follows the leaders after node 1's death. A node cannot be
//! restarted with another shard count.

mod nodes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use imstore_engine::{Direction, Engine, Options};
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{
    cluster_init, free_port, imstore, spawn_node, start_three, stop_all, until_acked, TestResult,
};

const SHARDS: u64 = 4;
const CONVERSATIONS: u64 = 12;
const GROUP: u64 = 1_000;

/// Appends one message to `conversation` until acknowledged, following
/// leader hints (each shard has its own leader).
async fn append_until_acked(
    addrs: &[SocketAddr],
    conversation: u64,
    id: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    let request = pb::AppendRequest {
        messages: vec![pb::NewMessage {
            conversation,
            sender: 1,
            client_msg_id: id.as_bytes().to_vec(),
            payload: format!("in {conversation}").into_bytes(),
        }],
    };
    let seq = until_acked(addrs, id, |mut client| {
        let request = request.clone();
        async move {
            let results = client.append(request).await?.into_inner().results;
            Ok(results.first().map(|a| a.seq))
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    seq.ok_or_else(|| "no result".into())
}

#[test]
fn four_shards_on_three_processes() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, mut nodes) = start_three(root.path(), &["--shards", "4"])?;
    let init = cluster_init(&addrs, &[])?;
    assert!(init.contains("4 shard"), "{init}");

    // Every shard elects a leader (bounded polling of the status command).
    let status = nodes::eventually(
        "every shard to have a leader",
        Duration::from_secs(60),
        || {
            let status =
                imstore(addrs[1], &["--json", "cluster", "status"]).map_err(|e| e.to_string())?;
            let led = status
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["leader"].as_u64().unwrap_or(0) != 0)
                .count();
            // The data shards and the metadata group.
            if led == SHARDS as usize + 1 {
                Ok(status)
            } else {
                Err(status)
            }
        },
    )?;
    for shard in 0..SHARDS {
        assert!(status.contains(&format!("\"shard\":{shard}")), "{status}");
    }
    // Every shard healthy as node 3 sees it too (it may learn the leaders
    // a moment later: bounded polling).
    nodes::eventually("every shard healthy", Duration::from_secs(60), || {
        let human = imstore(addrs[2], &["cluster", "status"]).map_err(|e| e.to_string())?;
        let replicas: Vec<&str> = human.lines().filter(|l| l.starts_with("node ")).collect();
        assert_eq!(replicas.len(), SHARDS as usize + 1, "{human}");
        assert!(human.contains("shard meta ["), "{human}");
        if replicas.iter().all(|l| l.contains("[healthy]")) {
            Ok(())
        } else {
            Err(human)
        }
    })?;

    // The replicated shard map names every shard's three replicas and,
    // once each leader has published, that leader.
    wait_for_map_of_leaders(addrs[1])?;

    let runtime = tokio::runtime::Runtime::new()?;
    let mut direct_id = 0;
    let acked = runtime.block_on(async {
        let mut acked: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for round in 0..3 {
            for conversation in 1..=CONVERSATIONS {
                let id = format!("c{conversation}-{round}");
                let seq = append_until_acked(&addrs, conversation, &id).await?;
                acked.entry(conversation).or_default().push(seq);
            }
        }
        // Node 1 dies; every shard it led elects another leader.
        let mut killed = nodes.remove(&1).ok_or("node 1")?;
        killed.child.kill()?;
        killed.child.wait()?;
        let dir = killed.dir.clone();
        drop(killed);
        for round in 3..5 {
            for conversation in 1..=CONVERSATIONS {
                let id = format!("c{conversation}-{round}");
                let seq = append_until_acked(&addrs[1..], conversation, &id).await?;
                acked.entry(conversation).or_default().push(seq);
            }
        }
        nodes.insert(1, spawn_node(1, addrs[0], &dir, &["--shards", "4"])?);
        // A group lives in its conversation's shard like any timeline.
        let group_shard = imstore_raft::shard_for(GROUP, SHARDS);
        let mut created = false;
        for &addr in &addrs {
            let mut client = ImstoreClient::connect(format!("http://{addr}")).await?;
            if client
                .create_group(pb::CreateGroupRequest {
                    conversation: GROUP,
                    owner: 1,
                    members: vec![1, 2],
                })
                .await
                .is_ok()
            {
                let sent = client
                    .send(pb::SendRequest {
                        conversation: GROUP,
                        sender: 2,
                        client_msg_id: b"hello".to_vec(),
                        payload: b"hello".to_vec(),
                        receipt: false,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                assert_eq!(sent.seq, 1);
                created = true;
                break;
            }
        }
        assert!(created, "no node led shard {group_shard}");
        // Friends and their direct conversation live in the pair's shard:
        // request, accept, then a send to the direct conversation.
        let request = |user: u64, other: u64| pb::FriendPairRequest { user, other };
        until_acked(&addrs, "friend request", |mut client| async move {
            client.request_friend(request(3, 4)).await?;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let direct = until_acked(&addrs, "friend accept", |mut client| async move {
            Ok(client
                .accept_friend(request(4, 3))
                .await?
                .into_inner()
                .conversation)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(
            imstore_raft::shard_for(direct, SHARDS),
            imstore_raft::shard_for(imstore_engine::pair_key(3, 4), SHARDS)
        );
        let sent = until_acked(&addrs, "direct send", |mut client| async move {
            Ok(client
                .send(pb::SendRequest {
                    conversation: direct,
                    sender: 3,
                    client_msg_id: b"hi".to_vec(),
                    payload: b"hi, friend".to_vec(),
                    receipt: false,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .seq)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(sent, 1);
        direct_id = direct;
        // User 1 now has inbox entries in two shards: a second group in
        // another shard than the first, and a send to it.
        let second = (GROUP + 1..GROUP + 100)
            .find(|&c| imstore_raft::shard_for(c, SHARDS) != group_shard)
            .ok_or("no conversation in another shard")?;
        until_acked(&addrs, "second group", |mut client| async move {
            match client
                .create_group(pb::CreateGroupRequest {
                    conversation: second,
                    owner: 2,
                    members: vec![1],
                })
                .await
            {
                Err(s) if s.code() != tonic::Code::AlreadyExists => Err(s),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        until_acked(
            &addrs,
            "send to the second group",
            |mut client| async move {
                client
                    .send(pb::SendRequest {
                        conversation: second,
                        sender: 2,
                        client_msg_id: b"second".to_vec(),
                        payload: b"in another shard".to_vec(),
                        receipt: false,
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        // Every node (each follows some shards) answers user-wide reads
        // over all shards. The copies reach user 1's shard through the
        // groups' shards' outboxes, within the delivery lag.
        let user_shard = imstore_engine::shard_for_user(1, SHARDS) as u32;
        for &addr in &addrs {
            let client = ImstoreClient::connect(format!("http://{addr}")).await?;
            let what = format!("both copies in user 1's inbox, read on {addr}");
            let page = nodes::eventually_async(&what, Duration::from_secs(60), || {
                let mut client = client.clone();
                async move {
                    let page = client
                        .sync(pb::SyncRequest {
                            user: 1,
                            from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
                            limit: 10,
                            ack: None,
                        })
                        .await?
                        .into_inner();
                    if page.entries.len() < 2 {
                        return Err(format!("{} entries", page.entries.len()).into());
                    }
                    Ok::<_, Box<dyn std::error::Error>>(page)
                }
            })
            .await?;
            let mut client = client.clone();
            let mut got: Vec<(u32, u64)> = page
                .entries
                .iter()
                .map(|e| (e.shard, e.message.as_ref().map_or(0, |m| m.conversation)))
                .collect();
            got.sort();
            let mut expected = vec![(user_shard, GROUP), (user_shard, second)];
            expected.sort();
            assert_eq!(got, expected, "sync of user 1 on {addr}");
            // One cursor per user, on any shard count.
            let cursor = page.cursor.unwrap_or_default();
            assert!(cursor.shards.is_empty() && cursor.inbox_seq > 0);
            let list = client
                .list_conversations(pb::ListConversationsRequest {
                    user: 1,
                    after: None,
                    limit: 10,
                })
                .await?
                .into_inner()
                .conversations;
            assert_eq!(list.len(), 2, "conversation list of user 1 on {addr}");
            let unread = client
                .get_unread(pb::GetUnreadRequest {
                    user: 1,
                    conversation: 0,
                })
                .await?
                .into_inner()
                .unread;
            assert_eq!(unread, 2, "unread total of user 1 on {addr}");
            let friends = nodes::friends_once_delivered(addr, 3).await?;
            assert_eq!(friends.len(), 1, "friends of user 3 on {addr}");
            assert_eq!((friends[0].user, friends[0].conversation), (4, direct));
        }
        // A device's cursor is kept in the user's shard, replicated: the
        // first sync delivers both entries; the next (on another node),
        // acknowledging it, none.
        let device = |addr: SocketAddr, ack: Option<pb::Cursor>| async move {
            let mut client = ImstoreClient::connect(format!("http://{addr}")).await?;
            let page = client
                .sync(pb::SyncRequest {
                    user: 1,
                    from: Some(pb::sync_request::From::Device(b"phone".to_vec())),
                    limit: 10,
                    ack,
                })
                .await?
                .into_inner();
            Ok::<_, Box<dyn std::error::Error>>(page)
        };
        let first = device(addrs[1], None).await?;
        assert_eq!(first.entries.len(), 2);
        assert_eq!(device(addrs[2], first.cursor).await?.entries.len(), 0);
        // Let every replica apply everything before the stores are read.
        for &addr in &addrs {
            for shard in 0..SHARDS {
                let what = format!("{addr} shard {shard} to catch up");
                nodes::eventually_async(&what, Duration::from_secs(60), || async {
                    let s = nodes::shard_status(addr, shard).await;
                    let leader_applied = leader_applied(&addrs, shard).await;
                    match s {
                        Some(s) if s.last_applied >= leader_applied => Ok(()),
                        other => Err(format!("{other:?}, the leader at {leader_applied}")),
                    }
                })
                .await?;
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(acked)
    })?;
    // Leaders moved when node 1 died: the map followed them.
    wait_for_map_of_leaders(addrs[2])?;
    let dirs = stop_all(nodes);

    // Each conversation is in its shard, on every node, and nowhere else.
    for dir in &dirs {
        let engine = Engine::open(dir.join("engine"), Options::default())?;
        for conversation in 1..=CONVERSATIONS {
            let home = imstore_raft::shard_for(conversation, SHARDS);
            for shard in 0..SHARDS {
                let stored = engine.with_shard(shard as u16)?.read(
                    conversation,
                    1,
                    100,
                    Direction::Forward,
                )?;
                if shard == home {
                    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
                    assert_eq!(seqs, acked[&conversation], "conversation {conversation}");
                } else {
                    assert!(
                        stored.is_empty(),
                        "{conversation} leaked into shard {shard}"
                    );
                }
            }
        }
        let group = engine.with_shard(imstore_raft::shard_for(GROUP, SHARDS) as u16)?;
        assert_eq!(group.last_seq(GROUP)?, 1);
        let pair = engine.with_shard(imstore_raft::shard_for(direct_id, SHARDS) as u16)?;
        assert_eq!(pair.last_seq(direct_id)?, 1);
        // The pair's rows stay in its shard; user 3's list is in theirs.
        let users = engine.with_shard(imstore_engine::shard_for_user(3, SHARDS) as u16)?;
        assert_eq!(
            users
                .friends(3, imstore_engine::FriendStatus::Friends, 0, 10)?
                .len(),
            1
        );
    }
    // More conversations than shards landed in more than one shard.
    let used: std::collections::BTreeSet<u64> = (1..=CONVERSATIONS)
        .map(|c| imstore_raft::shard_for(c, SHARDS))
        .collect();
    assert!(used.len() > 1);

    // The shard count is fixed at creation.
    let out = Command::new(env!("CARGO_BIN_EXE_imstore"))
        .args(["node", "--id", "1", "--listen", &free_port()?.to_string()])
        .arg("--data-dir")
        .arg(&dirs[0])
        .args(["--shards", "2"])
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the shard count never changes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Polls `imstore cluster status` on `addr` (at most 60 s) until the shard
/// map has an entry for every shard with three replicas and, as leader
/// hint, the leader that shard's replica on `addr` follows.
fn wait_for_map_of_leaders(addr: SocketAddr) -> TestResult {
    nodes::eventually(
        "the shard map to name the leaders",
        Duration::from_secs(60),
        || {
            let status =
                imstore(addr, &["--json", "cluster", "status"]).map_err(|e| e.to_string())?;
            let lines: Vec<serde_json::Value> = status
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let leaders: BTreeMap<u64, u64> = lines
                .iter()
                .filter_map(|v| Some((v["shard"].as_u64()?, v["leader"].as_u64()?)))
                .collect();
            let map: BTreeMap<u64, (u64, usize)> = lines
                .iter()
                .filter_map(|v| {
                    Some((
                        v["map_shard"].as_u64()?,
                        (v["leader_hint"].as_u64()?, v["replicas"].as_array()?.len()),
                    ))
                })
                .collect();
            let matches = (0..SHARDS).all(|shard| {
                map.get(&shard).is_some_and(|&(hint, replicas)| {
                    replicas == 3 && hint != 0 && leaders.get(&shard) == Some(&hint)
                })
            });
            if matches {
                Ok(())
            } else {
                Err(status)
            }
        },
    )?;
    Ok(())
}

/// The applied index of `shard` on whichever node leads it.
async fn leader_applied(addrs: &[SocketAddr], shard: u64) -> u64 {
    let mut best = 0;
    for &addr in addrs {
        if let Some(s) = nodes::shard_status(addr, shard).await {
            if s.state == "Leader" {
                best = best.max(s.last_applied);
            }
        }
    }
    best
}
