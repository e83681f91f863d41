//! A cluster node with a damaged store: 3 real `imstore node --shards 2`
//! processes, acknowledged sends, then node 3 is killed and a byte of its
//! engine's write-ahead log flipped. It refuses to start (nothing it held
//! is silently dropped); `imstore node --rebuild --join` rebuilds it from
//! its peers while sends go on; afterwards every node holds every
//! acknowledged send, once, at its seq.

mod nodes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nodes::{
    cluster_init, create_group, send_until_acked, shard_status, spawn_node, start_three, stop_all,
    wait_for_leader, TestResult,
};

const GROUP: u64 = 77;
/// Snapshots every 50 entries, 10 kept behind: the peers' logs no longer
/// reach back to the start, so the rebuilt node catches up by snapshot.
const FLAGS: [&str; 6] = [
    "--shards",
    "2",
    "--snapshot-every",
    "50",
    "--keep-log",
    "10",
];
const SENDS: u64 = 120;

fn largest_log(dir: &std::path::Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .ok_or("no write-ahead log")?)
}

#[test]
fn a_damaged_node_refuses_to_start_and_is_rebuilt_from_its_peers() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, mut nodes) = start_three(root.path(), &FLAGS)?;
    cluster_init(&addrs, &[])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    runtime.block_on(async {
        wait_for_leader(&addrs).await?;
        create_group(&addrs, GROUP, vec![1, 2, 3]).await?;
        for i in 0..SENDS {
            let id = format!("before-{i}");
            let (seq, _) = send_until_acked(&addrs, GROUP, 1, &id)
                .await
                .map_err(|e| e.to_string())?;
            acked.insert(id, seq);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;

    // A crash, then a flipped byte in the engine's log.
    let mut third = nodes.remove(&3).ok_or("no node 3")?;
    third.child.kill()?;
    third.child.wait()?;
    let dir = third.dir.clone();
    let wal = largest_log(&dir.join("engine"))?;
    let mut bytes = std::fs::read(&wal)?;
    assert!(bytes.len() > 4096, "the sends are not in node 3's log");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x21;
    std::fs::write(&wal, &bytes)?;
    drop(third);

    // It refuses to start.
    let refused = spawn_node(3, addrs[2], &dir, &FLAGS);
    assert!(refused.is_err(), "node 3 started on a damaged store");

    // Rebuilt from its peers, while sends go on through the others.
    let join = format!("http://{}", addrs[0]);
    let mut flags = FLAGS.to_vec();
    flags.extend(["--rebuild", "--join", &join]);
    let rebuilt = spawn_node(3, addrs[2], &dir, &flags)?;
    nodes.insert(3, rebuilt);
    let damaged: Vec<PathBuf> = std::fs::read_dir(root.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("node3.damaged-"))
        .collect();
    assert_eq!(damaged.len(), 1, "the damaged data was not kept aside");
    assert_eq!(
        std::fs::read(
            damaged[0]
                .join("engine")
                .join(wal.file_name().ok_or("name")?)
        )?,
        bytes
    );

    runtime.block_on(async {
        for i in 0..SENDS {
            let id = format!("during-{i}");
            let (seq, _) = send_until_acked(&addrs[..2], GROUP, 2, &id)
                .await
                .map_err(|e| e.to_string())?;
            acked.insert(id, seq);
        }
        // Node 3 votes again in both shards and the metadata group, and
        // has applied everything the leaders have.
        for shard in [0, 1, imstore_raft::META_SHARD] {
            let reference = loop {
                if let Some(s) = shard_status(addrs[0], shard).await {
                    if s.leader != 0 {
                        break s;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let want = reference.last_applied;
            let rebuilt = nodes::wait_for_shard(addrs[2], shard, "node 3 a caught-up voter", |s| {
                s.members.iter().any(|m| m.id == 3) && s.last_applied >= want
            })
            .await?;
            if shard == imstore_raft::shard_for(GROUP, 2) {
                assert!(
                    rebuilt.snapshots_installed > 0,
                    "node 3 did not catch up by snapshot: {rebuilt:?}"
                );
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let id = "after-rebuild".to_owned();
    let (seq, _) = runtime
        .block_on(send_until_acked(&addrs, GROUP, 3, &id))
        .map_err(|e| e.to_string())?;
    acked.insert(id, seq);
    runtime.block_on(async {
        for shard in [0, 1] {
            let want = shard_status(addrs[0], shard)
                .await
                .map_or(0, |s| s.last_applied);
            for &addr in &addrs {
                nodes::wait_for_shard(addr, shard, "every replica caught up", |s| {
                    s.last_applied >= want
                })
                .await?;
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;

    // Online verify through a node checks the shards it holds.
    let report = nodes::imstore(addrs[2], &["--json", "verify"])?;
    let report: serde_json::Value = serde_json::from_str(report.trim())?;
    assert_eq!(report["clean"], true, "{report}");

    let dirs = stop_all(nodes);
    let shard = u16::try_from(imstore_raft::shard_for(GROUP, 2))?;
    nodes::check_replicas_in(&dirs, shard, GROUP, &acked)?;
    Ok(())
}
