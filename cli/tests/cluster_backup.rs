//! A cluster backup under a write load, restored: 3 real `imstore node
//! --shards 2` processes (each data shard on 2 of them), a group in each
//! shard, sends acknowledged, then `imstore backup` through one node while
//! a writer keeps sending. The cluster is stopped, a damaged copy of the
//! backup is refused, and every node's directory is restored from the
//! backup (`imstore restore --node`). The restored directories hold every
//! send acknowledged before the backup began, at its seq, with no gap;
//! the restarted cluster continues each conversation's seqs and
//! deduplicates retries of backed-up sends; every replica agrees.

mod nodes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodes::{
    cluster_init, create_group, imstore_command, send_until_acked, spawn_node, start_three,
    stop_all, wait_for_leader, TestResult, Timeline,
};

const FLAGS: [&str; 2] = ["--shards", "2"];
const SENDS_BEFORE: u64 = 40;

/// Client message id → acknowledged seq, per conversation.
type Acked = BTreeMap<u64, BTreeMap<String, u64>>;

/// The first conversation id from 100 up that lands in `shard` of 2.
fn conversation_in(shard: u64) -> u64 {
    (100..)
        .find(|c| imstore_raft::shard_for(*c, 2) == shard)
        .unwrap_or(100)
}

/// Every seq of `timeline` from 1 with no gap, each client id once, and
/// every one of `acked` at its acknowledged seq when it is there.
fn check_timeline(timeline: &Timeline, acked: &BTreeMap<String, u64>) -> TestResult {
    let mut seen = std::collections::BTreeSet::new();
    for (i, (seq, id)) in timeline.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "a gap in the restored seqs");
        let id = String::from_utf8(id.clone())?;
        if let Some(want) = acked.get(&id) {
            assert_eq!(seq, want, "{id} moved");
        }
        assert!(seen.insert(id.clone()), "{id} twice");
    }
    Ok(())
}

#[test]
fn a_cluster_backup_under_load_restores_every_node() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, nodes) = start_three(root.path(), &FLAGS)?;
    cluster_init(&addrs, &["--replicas", "2"])?;
    let groups = [conversation_in(0), conversation_in(1)];
    let runtime = tokio::runtime::Runtime::new()?;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    runtime.block_on(async {
        wait_for_leader(&addrs).await?;
        for group in groups {
            create_group(&addrs, group, vec![1, 2, 3]).await?;
            for i in 0..SENDS_BEFORE {
                let id = format!("before-{group}-{i}");
                let (seq, _) = send_until_acked(&addrs, group, 1, &id)
                    .await
                    .map_err(|e| e.to_string())?;
                lock(&acked).entry(group).or_default().insert(id, seq);
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;

    // A writer sends to both groups until the backup is done.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, addrs) = (Arc::clone(&acked), Arc::clone(&stop), addrs.clone());
        runtime.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let group = groups[(i % 2) as usize];
                let id = format!("during-{group}-{i}");
                let (seq, _) = send_until_acked(&addrs, group, 2, &id).await?;
                lock(&acked).entry(group).or_default().insert(id, seq);
                i += 1;
            }
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(i)
        })
    };
    // Under way before the backup starts, so it runs throughout.
    nodes::eventually("the writer to get going", Duration::from_secs(60), || {
        let sent = count(&acked);
        nodes::holds(sent >= 2 * SENDS_BEFORE + 4, || format!("{sent} sent"))
    })?;
    let before_backup: Acked = lock(&acked).clone();
    let backup = root.path().join("backup");
    let server = format!("http://{}", addrs[1]);
    let written = imstore_command(&[
        "--server",
        &server,
        "--json",
        "backup",
        "--to",
        &backup.display().to_string(),
    ])?;
    stop.store(true, Ordering::SeqCst);
    let during = runtime
        .block_on(writer)?
        .map_err(|e| format!("writer: {e}"))?;
    let written: serde_json::Value = serde_json::from_str(written.trim())?;
    assert_eq!(written["cluster"], true, "{written}");
    assert_eq!(written["shard_count"], 2, "{written}");
    assert!(during > 4, "the writer stopped early");
    let acked_at_all: Acked = lock(&acked).clone();
    drop(stop_all(nodes));

    // The backup checks whole; a damaged copy of it is refused.
    let checked = imstore_command(&[
        "--json",
        "restore",
        "--from",
        &backup.display().to_string(),
        "--check",
    ])?;
    assert!(checked.contains("\"cluster\":true"), "{checked}");
    let damaged = root.path().join("damaged");
    copy_dir(&backup, &damaged)?;
    let image = damaged.join("shard-0.image");
    let mut bytes = std::fs::read(&image)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&image, bytes)?;
    let refused = imstore_command(&[
        "restore",
        "--from",
        &damaged.display().to_string(),
        "--node",
        "1",
        "--data-dir",
        &root.path().join("never").display().to_string(),
    ])
    .err()
    .ok_or("a damaged backup was restored")?
    .to_string();
    assert!(refused.contains("shard-0.image"), "{refused}");
    assert!(!root.path().join("never").exists());

    // Every node's directory from the backup.
    let mut hosts: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut restored_dirs = Vec::new();
    for id in 1..=3u64 {
        let dir = root.path().join(format!("restored{id}"));
        let said = imstore_command(&[
            "--json",
            "restore",
            "--from",
            &backup.display().to_string(),
            "--node",
            &id.to_string(),
            "--data-dir",
            &dir.display().to_string(),
        ])?;
        let said: serde_json::Value = serde_json::from_str(said.trim())?;
        assert_eq!(
            said["address"],
            addrs[id as usize - 1].to_string(),
            "{said}"
        );
        for shard in said["shards"].as_array().ok_or("no shards")? {
            let shard = shard.as_u64().ok_or("shard")?;
            hosts.entry(shard).or_default().push(dir.clone());
        }
        restored_dirs.push(dir);
    }
    assert_eq!(hosts.get(&0).map(Vec::len), Some(2), "{hosts:?}");
    assert_eq!(hosts.get(&1).map(Vec::len), Some(2), "{hosts:?}");
    assert_eq!(hosts.get(&imstore_raft::META_SHARD).map(Vec::len), Some(3));

    // Every send acknowledged before the backup began, at its seq.
    let mut restored: BTreeMap<u64, Timeline> = BTreeMap::new();
    for (shard, group) in groups.iter().enumerate() {
        let dirs = &hosts[&(shard as u64)];
        let timeline = nodes::timeline_in(&dirs[0], shard as u16, *group)?;
        check_timeline(&timeline, &acked_at_all[group])?;
        let ids: std::collections::BTreeSet<Vec<u8>> =
            timeline.iter().map(|(_, id)| id.clone()).collect();
        for id in before_backup[group].keys() {
            assert!(ids.contains(id.as_bytes()), "{id} is not in the backup");
        }
        restored.insert(*group, timeline);
    }

    // The restored cluster, on the same addresses.
    let mut running = BTreeMap::new();
    for (i, dir) in restored_dirs.iter().enumerate() {
        let id = i as u64 + 1;
        running.insert(id, spawn_node(id, addrs[i], dir, &FLAGS)?);
    }
    let mut expected: Acked = BTreeMap::new();
    runtime.block_on(async {
        for group in groups {
            let timeline = &restored[&group];
            let want = expected.entry(group).or_default();
            for (seq, id) in timeline {
                want.insert(String::from_utf8(id.clone())?, *seq);
            }
            // Seqs continue after the last backed-up one.
            let id = format!("after-{group}");
            let (seq, duplicate) = send_until_acked(&addrs, group, 3, &id)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!((seq, duplicate), (timeline.len() as u64 + 1, false));
            want.insert(id, seq);
            // A retry of a backed-up send is deduplicated.
            let (first_seq, first_id) = &timeline[0];
            let first_id = String::from_utf8(first_id.clone())?;
            let (seq, duplicate) = send_until_acked(&addrs, group, 1, &first_id)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!((seq, duplicate), (*first_seq, true), "{first_id}");
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    wait_replicas_applied(&runtime, &addrs)?;
    drop(stop_all(running));
    for (shard, group) in groups.iter().enumerate() {
        let shard = u16::try_from(shard)?;
        nodes::check_replicas_in(&hosts[&u64::from(shard)], shard, *group, &expected[group])?;
    }
    Ok(())
}

fn lock(acked: &Mutex<Acked>) -> std::sync::MutexGuard<'_, Acked> {
    acked.lock().unwrap_or_else(|p| p.into_inner())
}

fn count(acked: &Mutex<Acked>) -> u64 {
    lock(acked).values().map(|m| m.len() as u64).sum()
}

/// Each data shard's replicas have applied what its leader has.
fn wait_replicas_applied(runtime: &tokio::runtime::Runtime, addrs: &[SocketAddr]) -> TestResult {
    runtime.block_on(async {
        for shard in [0, 1] {
            let mut want = 0;
            for &addr in addrs {
                if let Some(s) = nodes::shard_status(addr, shard).await {
                    want = want.max(s.last_applied);
                }
            }
            for &addr in addrs {
                nodes::wait_for_shard(addr, shard, "caught up", |s| {
                    s.members
                        .iter()
                        .all(|m| m.address != addr.to_string() || s.last_applied >= want)
                })
                .await?;
            }
        }
        Ok(())
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
