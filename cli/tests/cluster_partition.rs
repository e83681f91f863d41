//! A minority partition over 3 real `imstore node` processes: the leader
//! is cut off from both followers by the nodes' fault-injecting transport
//! (`--fault-injection`, `SetFaults`; no real network is available). The
//! cut-off leader cannot acknowledge a write; the majority elects a leader
//! and goes on acknowledging; a linearizable read on the cut-off leader
//! fails rather than answer stale, while one on the majority's follower
//! sees every acknowledged send; after healing, the old leader catches up and
//! every replica holds exactly the acknowledged sends, the minority's
//! write nowhere.

mod nodes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{
    check_replicas, create_group, highest_applied, initialize, send_until_acked, start_three,
    status, stop_all, timeline, wait_all_applied, wait_for_leader, TestResult,
};

const GROUP: u64 = 11;
/// Sends before the partition, and again on the majority side during it.
const PER_PHASE: u64 = 40;

async fn cut_off(addr: SocketAddr, peers: Vec<u64>) -> TestResult {
    let mut admin = RaftTransportClient::connect(format!("http://{addr}")).await?;
    let now = admin
        .set_faults(rpb::Faults {
            cut_off: peers.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(now.cut_off, peers);
    Ok(())
}

#[test]
fn a_cut_off_leader_cannot_acknowledge_and_the_majority_goes_on() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, nodes) = start_three(root.path(), &["--fault-injection"])?;
    let id_of = |addr: SocketAddr| addrs.iter().position(|&a| a == addr).map(|i| i as u64 + 1);
    let runtime = tokio::runtime::Runtime::new()?;
    let acked = runtime.block_on(async {
        initialize(&addrs).await?;
        create_group(&addrs, GROUP, vec![1, 2]).await?;
        let mut acked = BTreeMap::new();
        for i in 0..PER_PHASE {
            let id = format!("before-{i}");
            let (seq, _) = send_until_acked(&addrs, GROUP, 1 + i % 2, &id)
                .await
                .map_err(|e| e.to_string())?;
            acked.insert(id, seq);
        }

        // Cut the leader off, on its side and on theirs.
        let old_leader = wait_for_leader(&addrs).await?;
        let old_id = id_of(old_leader).ok_or("leader id")?;
        let majority: Vec<SocketAddr> =
            addrs.iter().copied().filter(|&a| a != old_leader).collect();
        let majority_ids: Vec<u64> = (1..=3).filter(|&id| id != old_id).collect();
        cut_off(old_leader, majority_ids.clone()).await?;
        for &addr in &majority {
            cut_off(addr, vec![old_id]).await?;
        }

        // The cut-off leader cannot acknowledge: its write neither succeeds
        // nor is retried anywhere else.
        let mut lonely = ImstoreClient::connect(format!("http://{old_leader}")).await?;
        let mut request = tonic::Request::new(pb::SendRequest {
            conversation: GROUP,
            sender: 1,
            client_msg_id: b"minority".to_vec(),
            payload: b"written where no quorum is".to_vec(),
            receipt: false,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(3));
        let refused = lonely.send(request).await;
        assert!(
            refused.is_err(),
            "a leader cut off from its quorum acknowledged {refused:?}"
        );

        // The majority elects a leader of its own and acknowledges writes.
        let new_leader = wait_for_leader(&majority).await?;
        assert_ne!(new_leader, old_leader);
        for i in 0..PER_PHASE {
            let id = format!("during-{i}");
            let (seq, _) = send_until_acked(&majority, GROUP, 1 + i % 2, &id)
                .await
                .map_err(|e| e.to_string())?;
            acked.insert(id, seq);
        }
        // Linearizable reads: the cut-off leader, which still believes it
        // leads, must not answer from its stale state (its standing is
        // outvoted or unconfirmed: an error, never an old page); the
        // majority's follower sees every send the new leader acknowledged.
        let read = |stale_ok| pb::ReadRequest {
            conversation: GROUP,
            from: 1,
            limit: 10_000,
            direction: pb::Direction::Forward as i32,
            stale_ok,
        };
        let mut request = tonic::Request::new(read(false));
        request.set_timeout(Duration::from_secs(8));
        let stale = lonely.read(request).await;
        assert!(
            stale.is_err(),
            "a leader cut off from its quorum answered a linearizable read: {:?}",
            stale.map(|r| r.into_inner().messages.len())
        );
        let follower = *majority
            .iter()
            .find(|&&a| a != new_leader)
            .ok_or("no follower")?;
        let reader = ImstoreClient::connect(format!("http://{follower}")).await?;
        let page = nodes::retry_unavailable(|| {
            let mut reader = reader.clone();
            async move { reader.read(read(false)).await }
        })
        .await?
        .into_inner();
        let seen: Vec<&[u8]> = page
            .messages
            .iter()
            .map(|m| m.client_msg_id.as_slice())
            .collect();
        for i in 0..PER_PHASE {
            let id = format!("during-{i}");
            assert!(
                seen.contains(&id.as_bytes()),
                "the follower's linearizable read missed the acknowledged {id}"
            );
        }
        drop(reader);

        let old_status = status(old_leader).await.ok_or("old leader status")?;
        assert!(
            old_status.last_applied < highest_applied(&majority).await,
            "the cut-off node applied what only the majority committed"
        );

        // Heal: the old leader learns the new term, drops its unacknowledged
        // entry and catches up.
        for &addr in &addrs {
            cut_off(addr, Vec::new()).await?;
        }
        let target = highest_applied(&majority).await;
        wait_all_applied(&addrs, target).await?;
        let (seq, _) = send_until_acked(&addrs, GROUP, 2, "after")
            .await
            .map_err(|e| e.to_string())?;
        acked.insert("after".to_owned(), seq);
        wait_all_applied(&addrs, highest_applied(&addrs).await).await?;
        Ok::<_, Box<dyn std::error::Error>>(acked)
    })?;
    let dirs = stop_all(nodes);
    assert_eq!(acked.len() as u64, 2 * PER_PHASE + 1);
    check_replicas(&dirs, GROUP, &acked)?;
    let any = timeline(&dirs[0], GROUP)?;
    assert!(!any.iter().any(|(_, id)| id == b"minority"));
    Ok(())
}
