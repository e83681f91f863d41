//! A cluster that bootstraps itself: 3 real `imstore node` processes
//! started with `--peers` (every member) and no `imstore cluster init`.
//! The lowest id initializes every group once all peers answer; each data
//! shard lands on `--replicas` nodes, the metadata group on all; writes
//! through any node are acknowledged. A restart of that node finds the
//! memberships and initializes nothing: the timeline goes on.

mod nodes;

use std::time::Duration;

use nodes::{create_group, free_port, send_until_acked, shard_status, spawn_node, stop_all};

const GROUP: u64 = 77;

#[test]
fn nodes_started_with_peers_form_the_cluster_themselves() -> nodes::TestResult {
    let root = tempfile::tempdir()?;
    let addrs = [free_port()?, free_port()?, free_port()?];
    let peers: Vec<String> = (1..)
        .zip(&addrs)
        .map(|(id, a)| format!("{id}={a}"))
        .collect();
    let peers = peers.join(",");
    let flags = [
        "--shards",
        "2",
        "--peers",
        &peers,
        "--replicas",
        "2",
        "--metrics-listen",
        "off",
    ];
    let mut nodes = nodes::Nodes::new();
    for (id, addr) in (1..).zip(addrs) {
        let dir = root.path().join(format!("node{id}"));
        nodes.insert(id, spawn_node(id, addr, &dir, &flags)?);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let first_seq = runtime.block_on(async {
        // Every group gets its members from node 1's bootstrap.
        for shard in [0, 1, imstore_raft::META_SHARD] {
            let expected = if shard == imstore_raft::META_SHARD {
                3
            } else {
                2
            };
            let members = nodes::eventually_async(
                "the bootstrap to place the shard",
                Duration::from_secs(60),
                || async {
                    let mut seen = Vec::new();
                    for &addr in &addrs {
                        if let Some(s) = shard_status(addr, shard).await {
                            if !s.members.is_empty() {
                                seen.push(s.members.len());
                            }
                        }
                    }
                    if seen.len() == expected && seen.iter().all(|&n| n == expected) {
                        Ok(seen)
                    } else {
                        Err(format!("members seen: {seen:?}"))
                    }
                },
            )
            .await?;
            assert!(members.iter().all(|&n| n == expected), "shard {shard}");
        }
        create_group(&addrs, GROUP, vec![2, 3]).await?;
        let (seq, _) = send_until_acked(&addrs[2..], GROUP, 1, "through-node-3")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, Box<dyn std::error::Error>>(seq)
    })?;
    assert_eq!(first_seq, 1);

    // Node 1 (the bootstrapper) restarts: it must not initialize again.
    let dir = {
        let node = nodes.get_mut(&1).ok_or("node 1")?;
        node.stop();
        node.dir.clone()
    };
    nodes.insert(1, spawn_node(1, addrs[0], &dir, &flags)?);
    runtime.block_on(async {
        let (seq, _) = send_until_acked(&addrs, GROUP, 1, "after-restart")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(seq, first_seq + 1, "the timeline goes on");
        // Shard 0 starts on nodes 1 and 2: node 1 is still one of its two.
        let s = nodes::wait_for_shard(addrs[0], 0, "a leader", |s| s.leader != 0).await?;
        let members: Vec<u64> = s.members.iter().map(|m| m.id).collect();
        assert_eq!(members, vec![1, 2]);
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    stop_all(nodes);
    Ok(())
}
