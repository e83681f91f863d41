//! A follower down long enough that the leader purges the log it needs,
//! over 3 real `imstore node` processes: the follower is SIGKILLed, the
//! others go on (snapshotting every 50 entries, keeping no log behind a
//! snapshot), and on restart it catches up by an installed snapshot,
//! then by the log, to the same timeline.

mod nodes;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use nodes::{
    check_replicas, create_group, fetch_metrics, free_port, highest_applied, initialize, sample,
    send_until_acked, spawn_node, start_three, status, stop_all, wait_all_applied, wait_for_leader,
    wait_for_status, TestResult,
};

const GROUP: u64 = 12;
/// Sends while the follower is down: several snapshots' worth.
const WHILE_DOWN: u64 = 200;
const SNAPSHOT_FLAGS: [&str; 4] = ["--snapshot-every", "50", "--keep-log", "0"];

#[test]
fn a_follower_behind_the_purged_log_catches_up_by_snapshot() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, mut nodes) = start_three(root.path(), &SNAPSHOT_FLAGS)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let acked = runtime.block_on(async {
        initialize(&addrs).await?;
        create_group(&addrs, GROUP, vec![1, 2]).await?;
        let mut acked = BTreeMap::new();
        for i in 0..10u64 {
            let id = format!("before-{i}");
            let (seq, _) = send_until_acked(&addrs, GROUP, 1 + i % 2, &id)
                .await
                .map_err(|e| e.to_string())?;
            acked.insert(id, seq);
        }
        wait_all_applied(&addrs, highest_applied(&addrs).await).await?;

        // A follower goes down.
        let leader = wait_for_leader(&addrs).await?;
        let follower_addr = *addrs.iter().find(|&&a| a != leader).ok_or("follower")?;
        let follower_id = addrs
            .iter()
            .position(|&a| a == follower_addr)
            .map(|i| i as u64 + 1)
            .ok_or("follower id")?;
        let had = status(follower_addr)
            .await
            .ok_or("follower status")?
            .last_log_index;
        let mut down = nodes.remove(&follower_id).ok_or("follower process")?;
        down.child.kill()?;
        down.child.wait()?;
        let dir = down.dir.clone();
        drop(down);

        let up: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|&a| a != follower_addr)
            .collect();
        for i in 0..WHILE_DOWN {
            let id = format!("down-{i}");
            let (seq, _) = send_until_acked(&up, GROUP, 1 + i % 2, &id)
                .await
                .map_err(|e| e.to_string())?;
            acked.insert(id, seq);
        }
        // The leader snapshotted and purged past what the follower has.
        let leader = wait_for_leader(&up).await?;
        wait_for_status(leader, "log purged past the follower", |s| {
            s.purged_index > had
        })
        .await?;

        // Back up: only a snapshot can bring it level.
        let metrics_addr = free_port()?.to_string();
        let mut flags = SNAPSHOT_FLAGS.to_vec();
        flags.extend(["--metrics-listen", &metrics_addr]);
        nodes.insert(
            follower_id,
            spawn_node(follower_id, follower_addr, &dir, &flags)?,
        );
        wait_all_applied(&addrs, highest_applied(&up).await).await?;
        let caught_up = status(follower_addr).await.ok_or("follower status")?;
        assert!(
            caught_up.snapshots_installed >= 1 && caught_up.last_snapshot_bytes > 0,
            "{caught_up:?}"
        );
        // The same figures in its Prometheus metrics.
        let body = fetch_metrics(metrics_addr.parse()?)?;
        assert_eq!(
            sample(&body, "imstore_raft_snapshots_installed_total"),
            Some(caught_up.snapshots_installed),
            "{body}"
        );
        assert!(sample(&body, "imstore_raft_snapshot_installed_bytes").is_some_and(|b| b > 0));
        assert_eq!(sample(&body, "imstore_raft_snapshot_installing"), Some(0));
        assert!(sample(&body, "imstore_raft_last_applied_index").is_some_and(|i| i > had));
        // And it follows the log again from there.
        let (seq, _) = send_until_acked(&addrs, GROUP, 1, "after")
            .await
            .map_err(|e| e.to_string())?;
        acked.insert("after".to_owned(), seq);
        wait_all_applied(&addrs, highest_applied(&addrs).await).await?;
        Ok::<_, Box<dyn std::error::Error>>(acked)
    })?;
    let dirs = stop_all(nodes);
    assert_eq!(acked.len() as u64, 10 + WHILE_DOWN + 1);
    check_replicas(&dirs, GROUP, &acked)
}
