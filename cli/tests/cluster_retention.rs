//! Retention on a cluster: 3 real `imstore node --shards 2` processes
//! sweeping every second. A group's history is cleared by its shard's
//! leader proposing `ClearHistory` through raft, so every replica clears
//! exactly the same messages; seqs go on after the cleared ones.

mod nodes;

use std::time::Duration;

use imstore_proto::v1 as pb;
use nodes::{cluster_init, create_group, send_until_acked, start_three, stop_all, until_acked};

const GROUP: u64 = 41;
const SENDS: u64 = 20;

#[test]
fn each_shards_leader_clears_expired_history_on_every_replica() -> nodes::TestResult {
    let root = tempfile::tempdir()?;
    let config = root.path().join("node.toml");
    std::fs::write(&config, "retention_sweep_secs = 1\n")?;
    let config = config.display().to_string();
    let flags = [
        "--shards",
        "2",
        "--config",
        &config,
        "--metrics-listen",
        "off",
    ];
    let (addrs, nodes) = start_three(root.path(), &flags)?;
    cluster_init(&addrs, &[])?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        create_group(&addrs, GROUP, vec![1, 2, 3]).await?;
        for i in 0..SENDS {
            send_until_acked(&addrs, GROUP, 1, &format!("old-{i}"))
                .await
                .map_err(|e| e.to_string())?;
        }
        // Everything older than a millisecond expires.
        let set = |ttl_ms| pb::SetRetentionRequest {
            conversation: GROUP,
            ttl_ms,
        };
        until_acked(&addrs, "set retention", |mut c| async move {
            c.set_retention(set(1)).await.map(|_| ())
        })
        .await
        .map_err(|e| e.to_string())?;
        nodes::eventually_async(
            "the sweep to clear the group",
            Duration::from_secs(60),
            || async {
                let page = until_acked(&addrs, "read", |mut c| async move {
                    c.read(pb::ReadRequest {
                        conversation: GROUP,
                        from: 1,
                        limit: 100,
                        direction: pb::Direction::Forward as i32,
                        stale_ok: false,
                    })
                    .await
                    .map(|r| r.into_inner().messages)
                })
                .await
                .map_err(|e| e.to_string())?;
                nodes::holds(page.is_empty(), || format!("{} messages left", page.len()))
            },
        )
        .await?;
        // Kept forever from now on; seqs continue after the cleared ones.
        until_acked(&addrs, "keep", |mut c| async move {
            c.set_retention(set(0)).await.map(|_| ())
        })
        .await
        .map_err(|e| e.to_string())?;
        let (seq, _) = send_until_acked(&addrs, GROUP, 1, "after")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(seq, SENDS + 1);
        // Every replica has applied it.
        let shard = imstore_raft::shard_for(GROUP, 2);
        let mut want = 0;
        for &addr in &addrs {
            if let Some(s) = nodes::shard_status(addr, shard).await {
                want = want.max(s.last_applied);
            }
        }
        for &addr in &addrs {
            nodes::wait_for_shard(addr, shard, "caught up", |s| s.last_applied >= want).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let dirs = stop_all(nodes);
    let shard = u16::try_from(imstore_raft::shard_for(GROUP, 2))?;
    for dir in &dirs {
        let timeline = nodes::timeline_in(dir, shard, GROUP)?;
        assert_eq!(
            timeline,
            vec![(SENDS + 1, b"after".to_vec())],
            "{}",
            dir.display()
        );
    }
    Ok(())
}
