//! The proxy tier with real processes: 3 `imstore node --shards 4`
//! processes and 2 `imstore proxy` processes in front of them.
//!
//! - Writers send through both proxies while a shard's leader is
//!   SIGKILLed (and later restarted) and one proxy is SIGKILLed and
//!   restarted: every acknowledged message is in its timeline exactly
//!   once, at the seq it was acknowledged with, seqs continuous.
//! - Linearizability across proxies: a write acknowledged through one
//!   proxy at seq N is seen by a read started afterwards through the
//!   other.
//! - Recall, edit, delete-for-me and cleared history read through a proxy
//!   as through a node.
//! - A watch through a proxy hears a user's inbox (relayed from a node).

mod nodes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{
    cluster_init, eventually_async, fetch_metrics, free_port, shard_status, spawn_node,
    spawn_proxy, start_three, until_acked, TaskResult, TestResult,
};

const SHARDS: u64 = 4;
const GROUPS: [u64; 4] = [401, 402, 403, 404];
const PER_GROUP: u64 = 60;

async fn client(
    addr: SocketAddr,
) -> Result<ImstoreClient<tonic::transport::Channel>, tonic::transport::Error> {
    ImstoreClient::connect(format!("http://{addr}")).await
}

/// Creates `group` owned by user 1 with users 1 to 3, through `proxies`
/// (retried until acknowledged; a retry that finds it made is done).
async fn create_group(proxies: &[SocketAddr], group: u64) -> TaskResult<()> {
    let request = pb::CreateGroupRequest {
        conversation: group,
        owner: 1,
        members: vec![1, 2, 3],
    };
    until_acked(proxies, "create_group", |mut c| {
        let request = request.clone();
        async move {
            match c.create_group(request).await {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(s) => Err(s),
            }
        }
    })
    .await
}

/// Every message of `group` as user 1 reads it through `proxy`.
async fn timeline(proxy: SocketAddr, group: u64) -> TaskResult<Vec<pb::Message>> {
    let mut c = client(proxy).await?;
    let page = c
        .read_as(pb::ReadAsRequest {
            viewer: 1,
            conversation: group,
            from: 1,
            limit: 10_000,
            direction: pb::Direction::Forward as i32,
            stale_ok: false,
        })
        .await?
        .into_inner();
    Ok(page.messages)
}

/// An unlabelled figure of a `/metrics` body.
fn counter(body: &str, name: &str) -> Result<u64, String> {
    nodes::labelled_sample(body, name, "").ok_or(format!("no {name}"))
}

/// The node leading `shard`, by its index in `addrs`.
async fn leader_of(addrs: &[SocketAddr], shard: u64) -> TaskResult<usize> {
    Ok(eventually_async(
        &format!("a leader of shard {shard}"),
        Duration::from_secs(60),
        || async {
            for (i, &addr) in addrs.iter().enumerate() {
                if shard_status(addr, shard)
                    .await
                    .is_some_and(|s| s.state == "Leader")
                {
                    return Ok(i);
                }
            }
            Err("no node leads it yet")
        },
    )
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_two_proxies_survive_a_leader_kill_and_a_proxy_restart() -> TestResult {
    let root = tempfile::tempdir()?;
    let shards = SHARDS.to_string();
    let (addrs, mut nodes) = start_three(root.path(), &["--shards", &shards])?;
    cluster_init(&addrs, &[])?;
    let metrics_a = free_port()?;
    let proxy_a = spawn_proxy(
        free_port()?,
        &addrs,
        &["--metrics-listen", &metrics_a.to_string()],
    )?;
    let mut proxy_b = spawn_proxy(free_port()?, &addrs, &[])?;
    let (a, b) = (proxy_a.addr, proxy_b.addr);
    for group in GROUPS {
        create_group(&[a, b], group)
            .await
            .map_err(|e| e.to_string())?;
    }

    // One writer per group, alternating proxies; each send is retried
    // with the same client id until acknowledged.
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for group in GROUPS {
        let acked = Arc::clone(&acked);
        writers.push(tokio::spawn(async move {
            let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
            for i in 0..PER_GROUP {
                let id = format!("{group}-{i}");
                let order = if i % 2 == 0 { [a, b] } else { [b, a] };
                let request = pb::SendRequest {
                    conversation: group,
                    sender: 1 + i % 3,
                    client_msg_id: id.clone().into_bytes(),
                    payload: format!("payload {id}").into_bytes(),
                    receipt: false,
                    ..Default::default()
                };
                let seq = until_acked(&order, &id, |mut c| {
                    let request = request.clone();
                    async move { Ok(c.send(request).await?.into_inner().seq) }
                })
                .await?;
                seqs.insert(id, seq);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            TaskResult::Ok((group, seqs))
        }));
    }
    let total = PER_GROUP * GROUPS.len() as u64;
    let reached = |n: u64| {
        let acked = Arc::clone(&acked);
        async move {
            eventually_async(
                &format!("{n} sends acknowledged"),
                Duration::from_secs(120),
                || {
                    let acked = Arc::clone(&acked);
                    async move {
                        match acked.load(Ordering::SeqCst) {
                            done if done >= n => Ok(()),
                            done => Err(format!("{done} so far")),
                        }
                    }
                },
            )
            .await
        }
    };

    // SIGKILL the leader of the first group's shard mid-load.
    reached(total / 6).await?;
    let shard = imstore_raft::shard_for(GROUPS[0], SHARDS);
    let victim = leader_of(&addrs, shard).await.map_err(|e| e.to_string())?;
    let victim_id = victim as u64 + 1;
    let victim_dir = {
        let node = nodes.remove(&victim_id).ok_or("the victim node")?;
        let dir = node.dir.clone();
        drop(node); // SIGKILL
        dir
    };
    // SIGKILL proxy B, and start it again on its address.
    reached(total / 3).await?;
    proxy_b.child.kill()?;
    proxy_b.child.wait()?;
    proxy_b = spawn_proxy(b, &addrs, &[])?;
    // The killed node comes back.
    reached(total / 2).await?;
    nodes.insert(
        victim_id,
        spawn_node(
            victim_id,
            addrs[victim],
            &victim_dir,
            &["--shards", &shards],
        )?,
    );

    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        let (group, seqs) = writer.await?.map_err(|e| e.to_string())?;
        acknowledged.insert(group, seqs);
    }
    for group in GROUPS {
        let seqs = &acknowledged[&group];
        for proxy in [a, b] {
            let messages = timeline(proxy, group).await.map_err(|e| e.to_string())?;
            let read: Vec<u64> = messages.iter().map(|m| m.seq).collect();
            let expected: Vec<u64> = (1..=PER_GROUP).collect();
            assert_eq!(read, expected, "group {group} through {proxy}: seqs 1..=N");
            let mut ids = BTreeMap::new();
            for m in &messages {
                let id = String::from_utf8(m.client_msg_id.clone())?;
                assert!(ids.insert(id, m.seq).is_none(), "a message written twice");
            }
            assert_eq!(
                &ids, seqs,
                "group {group}: each acknowledged send at its seq"
            );
        }
    }
    // Proxy A lived through the leader's death: it sent calls again
    // (to the next node, or after a pause) instead of failing them all.
    let body = fetch_metrics(metrics_a).map_err(|e| e.to_string())?;
    let retries = counter(&body, "imstore_proxy_retries_total")?;
    assert!(retries > 0, "proxy A retried no call");
    drop((proxy_a, proxy_b));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_proxy_is_read_through_the_other() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, _nodes) = start_three(root.path(), &["--shards", "2"])?;
    cluster_init(&addrs, &[])?;
    let metrics = free_port()?.to_string();
    let proxy_a = spawn_proxy(free_port()?, &addrs, &[])?;
    let proxy_b = spawn_proxy(free_port()?, &addrs, &["--metrics-listen", &metrics])?;
    create_group(&[proxy_a.addr], 501)
        .await
        .map_err(|e| e.to_string())?;
    let mut writer = client(proxy_a.addr).await?;
    let mut reader = client(proxy_b.addr).await?;
    // A watch of user 3 through proxy B, which relays it from the node
    // hosting user 3's shard.
    let mut watch = reader
        .watch(pb::WatchRequest {
            users: vec![pb::UserPosition {
                user: 3,
                inbox_seq: 0,
                shards: Vec::new(),
            }],
            ..Default::default()
        })
        .await?
        .into_inner();
    for i in 1..=40u64 {
        let sent = writer
            .send(pb::SendRequest {
                conversation: 501,
                sender: 2,
                client_msg_id: format!("lin-{i}").into_bytes(),
                payload: vec![b'x'; 8],
                receipt: false,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(sent.seq, i);
        // A read that starts after the acknowledgement, through the other
        // proxy: the newest message, backward from the end.
        let newest = reader
            .read_as(pb::ReadAsRequest {
                viewer: 3,
                conversation: 501,
                from: u64::MAX,
                limit: 1,
                direction: pb::Direction::Backward as i32,
                stale_ok: false,
            })
            .await?
            .into_inner();
        let seen = newest.messages.first().map_or(0, |m| m.seq);
        assert!(
            seen >= sent.seq,
            "read {seen} after a write acknowledged at {}",
            sent.seq
        );
    }
    // Reads that may be stale go to the replicas in turn: each answers a
    // prefix of the history, and every replica catches up.
    eventually_async(
        "stale reads through the proxy see all 40",
        Duration::from_secs(60),
        || {
            let mut reader = reader.clone();
            async move {
                for _ in 0..6 {
                    let page = reader
                        .read_as(pb::ReadAsRequest {
                            viewer: 3,
                            conversation: 501,
                            from: 1,
                            limit: 100,
                            direction: pb::Direction::Forward as i32,
                            stale_ok: true,
                        })
                        .await
                        .map_err(|s| s.to_string())?
                        .into_inner();
                    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
                    let prefix: Vec<u64> = (1..=seqs.len() as u64).collect();
                    assert_eq!(seqs, prefix, "a stale page is a prefix of the history");
                    if seqs.len() < 40 {
                        return Err(format!("a replica has {} of 40", seqs.len()));
                    }
                }
                Ok(())
            }
        },
    )
    .await?;
    // The watch heard user 3's inbox advance (the copies of the sends,
    // delivered to user 3's shard).
    let heard = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(notification) = watch.message().await? {
            match notification.event {
                Some(pb::notification::Event::Inbox(advanced)) if advanced.user == 3 => {
                    return Ok(advanced.inbox_seq);
                }
                Some(pb::notification::Event::Resync(resync)) => {
                    return Err(format!("told to resync: {resync:?}").into());
                }
                _ => {}
            }
        }
        Err::<u64, Box<dyn std::error::Error>>("the watch ended".into())
    })
    .await
    .map_err(|_| "the watch through the proxy never heard user 3's inbox")??;
    assert!(heard >= 1, "inbox seq {heard}");
    let body = fetch_metrics(metrics.parse()?).map_err(|e| e.to_string())?;
    let reads = counter(&body, "imstore_proxy_backend_reads_total")?;
    assert!(
        reads >= 40,
        "{reads} backend reads for 40 client reads, one at a time"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlays_and_cleared_history_read_through_a_proxy_as_through_a_node() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, _nodes) = start_three(root.path(), &["--shards", "2"])?;
    cluster_init(&addrs, &[])?;
    let metrics = free_port()?.to_string();
    let proxy = spawn_proxy(free_port()?, &addrs, &["--metrics-listen", &metrics])?;
    create_group(&[proxy.addr], 601)
        .await
        .map_err(|e| e.to_string())?;
    let mut c = client(proxy.addr).await?;
    // 150 messages: the first two segments (64 records each by default)
    // are sealed, and the proxy keeps them after the first read.
    for i in 1..=150u64 {
        c.send(pb::SendRequest {
            conversation: 601,
            sender: 1,
            client_msg_id: format!("o-{i}").into_bytes(),
            payload: format!("body {i}").into_bytes(),
            receipt: false,
            ..Default::default()
        })
        .await?;
    }
    // Read once, so that the proxy's cache holds the sealed segments.
    assert_eq!(
        timeline(proxy.addr, 601)
            .await
            .map_err(|e| e.to_string())?
            .len(),
        150
    );
    c.recall(pb::RecallRequest {
        conversation: 601,
        seq: 4,
        by: 1,
        admin: false,
    })
    .await?;
    c.edit(pb::EditRequest {
        conversation: 601,
        seq: 5,
        by: 1,
        payload: b"edited".to_vec(),
    })
    .await?;
    c.delete_for_me(pb::DeleteForMeRequest {
        user: 1,
        conversation: 601,
        seq: 6,
    })
    .await?;
    c.clear_history(pb::ClearHistoryRequest {
        conversation: 601,
        before_seq: 3,
    })
    .await?;
    let through_proxy = timeline(proxy.addr, 601).await.map_err(|e| e.to_string())?;
    let through_node = timeline(addrs[0], 601).await.map_err(|e| e.to_string())?;
    assert_eq!(through_proxy, through_node);
    let seqs: Vec<u64> = through_proxy.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (3..=150).collect::<Vec<u64>>(), "cleared below 3");
    // The second read took the sealed segments from the proxy's cache.
    let body = fetch_metrics(metrics.parse()?).map_err(|e| e.to_string())?;
    let from_cache = counter(&body, "imstore_proxy_segments_from_cache_total")?;
    assert!(from_cache >= 2, "{from_cache} segments from the cache");
    assert!(through_proxy[1].recalled && through_proxy[1].payload.is_empty());
    assert!(through_proxy[2].edited);
    assert_eq!(through_proxy[2].payload, b"edited".to_vec());
    assert!(through_proxy[3].deleted_for_me && through_proxy[3].payload.is_empty());

    // A backward page from the middle of the sealed history, as from a node.
    let middle = |addr| async move {
        client(addr)
            .await
            .map_err(|e| e.to_string())?
            .read_as(pb::ReadAsRequest {
                viewer: 1,
                conversation: 601,
                from: 70,
                limit: 10,
                direction: pb::Direction::Backward as i32,
                stale_ok: false,
            })
            .await
            .map(|r| r.into_inner().messages)
            .map_err(|e| e.to_string())
    };
    assert_eq!(middle(proxy.addr).await?, middle(addrs[1]).await?);

    // Members (and a stranger) reading the newest page at once share the
    // proxy's backend reads; each still gets its own page or error, as
    // from a node.
    let mut readers = Vec::new();
    for round in 0..5u64 {
        for viewer in [1u64, 2, 3, 99] {
            let (proxy, node) = (proxy.addr, addrs[(round % 3) as usize]);
            readers.push(tokio::spawn(async move {
                let request = pb::ReadAsRequest {
                    viewer,
                    conversation: 601,
                    from: u64::MAX,
                    limit: 3,
                    direction: pb::Direction::Backward as i32,
                    stale_ok: false,
                };
                let via_proxy = client(proxy).await?.read_as(request).await;
                let via_node = client(node).await?.read_as(request).await;
                TaskResult::Ok((viewer, via_proxy, via_node))
            }));
        }
    }
    for reader in readers {
        let (viewer, via_proxy, via_node) = reader.await?.map_err(|e| e.to_string())?;
        match (via_proxy, via_node) {
            (Ok(p), Ok(n)) => assert_eq!(p.into_inner(), n.into_inner(), "viewer {viewer}"),
            (Err(p), Err(n)) => {
                assert_eq!(
                    (p.code(), viewer),
                    (n.code(), 99),
                    "only the stranger is refused"
                );
                assert_eq!(p.code(), tonic::Code::PermissionDenied);
            }
            (p, n) => panic!("viewer {viewer}: through the proxy {p:?}, through a node {n:?}"),
        }
    }
    Ok(())
}
