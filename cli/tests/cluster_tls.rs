//! A cluster over mutual TLS: 3 real `imstore node` processes with
//! certificates of one CA (`dev/make-certs`), bootstrapped with `--peers`.
//!
//! - Clients reach the client API over TLS without a certificate, with a
//!   bearer token, and writes, reads and watches go through any node
//!   (forwards and watch relays between nodes are mutual TLS too, and a
//!   relayed watch carries the caller's token).
//! - Cluster administration takes a certificate of the cluster's CA: the
//!   CLI with `--cert` works, without it the node refuses.
//! - A fourth process, `imstore node` with a certificate of another CA,
//!   tries to bootstrap with the cluster as its peers: its handshakes are
//!   refused, which the nodes log and count in `/metrics`, and it never
//!   joins. A client with that certificate cannot send a raft message.
//! - A certificate of the cluster's CA that names no member may administer
//!   but not send raft messages (`PERMISSION_DENIED`, reason `PEER`).

mod common;
mod nodes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::make_cert;
use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{
    eventually_async, fetch_metrics, free_port, labelled_sample, retry_unavailable,
    spawn_node_logging,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

type Failure = Box<dyn std::error::Error>;

/// A TLS channel to `addr` trusting `ca`, presenting `name`'s certificate
/// from `dir` if given.
async fn channel(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &str)>,
) -> Result<Channel, Failure> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    if let Some((dir, name)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join(format!("{name}.pem")))?,
            std::fs::read(dir.join(format!("{name}.key")))?,
        ));
    }
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

const TOKEN: &str = "mtls-service-token";

/// Adds the service token to every call.
fn bearer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let value = format!("Bearer {TOKEN}")
        .parse()
        .map_err(|_| tonic::Status::internal("token"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn tls_flags(certs: &Path, name: &str, ca: &Path) -> Vec<String> {
    let file = |ext: &str| certs.join(format!("{name}.{ext}")).display().to_string();
    vec![
        "--tls-cert".into(),
        file("pem"),
        "--tls-key".into(),
        file("key"),
        "--tls-ca".into(),
        ca.display().to_string(),
    ]
}

#[test]
fn a_cluster_over_mutual_tls_refuses_other_cas_and_non_members() -> nodes::TestResult {
    let root = tempfile::tempdir()?;
    let certs = root.path().join("certs");
    let rogue = root.path().join("rogue");
    for name in ["node2", "node3", "node4", "admin", "proxy"] {
        make_cert(&certs, name, &[])?;
    }
    // Of the cluster's CA, but naming no member (no 127.0.0.1).
    make_cert(&certs, "intruder.example", &[("LOOPBACK", "no")])?;
    make_cert(&rogue, "rogue", &[])?;
    let ca = certs.join("ca.pem");
    // The rogue node trusts the cluster's (public) CA as well as its own,
    // so that its handshakes get as far as the nodes' check of its
    // certificate.
    let rogue_trust = rogue.join("trust.pem");
    std::fs::write(
        &rogue_trust,
        [std::fs::read(rogue.join("ca.pem"))?, std::fs::read(&ca)?].concat(),
    )?;

    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let metrics: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let rogue_addr = free_port()?;
    let tokens = root.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"gateway\"\nsha256 = \"{}\"\nrole = \"service\"\n",
            imstore_proxy::token_sha256(TOKEN)
        ),
    )?;
    let member = |id: u64, addr: &SocketAddr| format!("{id}={addr}");
    let peers: Vec<String> = (2..).zip(&addrs).map(|(id, a)| member(id, a)).collect();
    let peers = peers.join(",");
    let mut nodes = nodes::Nodes::new();
    for ((id, addr), metrics) in (2..).zip(&addrs).zip(&metrics) {
        let mut flags: Vec<String> = vec![
            "--shards".into(),
            "2".into(),
            "--peers".into(),
            peers.clone(),
            // Each shard on 2 of the 3: some watches are relayed.
            "--replicas".into(),
            "2".into(),
            "--tokens-file".into(),
            tokens.display().to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
        ];
        flags.extend(tls_flags(&certs, &format!("node{id}"), &ca));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let dir = root.path().join(format!("node{id}"));
        nodes.insert(id, spawn_node_logging(id, *addr, &dir, &flags, "warn")?);
    }

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Node 2 bootstraps every group over mutual TLS.
        let admin = |addr| channel(addr, &ca, Some((&certs, "admin")));
        for shard in [0, 1, imstore_raft::META_SHARD] {
            eventually_async(
                "every group to elect a leader",
                Duration::from_secs(60),
                || async {
                    // Asked of every node: each data shard is on 2 of them.
                    for &addr in &addrs {
                        let mut client =
                            RaftTransportClient::new(admin(addr).await.map_err(|e| e.to_string())?);
                        let status = client
                            .status(rpb::NodeStatusRequest { shard })
                            .await
                            .map_err(|e| e.to_string())?
                            .into_inner();
                        if status.state == "Leader" {
                            return Ok(());
                        }
                    }
                    Err(format!("shard {shard}: no leader yet"))
                },
            )
            .await?;
        }

        // The client API: TLS, no client certificate, through any node.
        let mut clients = Vec::new();
        for &addr in &addrs {
            clients.push(ImstoreClient::with_interceptor(
                channel(addr, &ca, None).await?,
                bearer as fn(_) -> _,
            ));
        }
        for conversation in [1u64, 2, 3, 4] {
            let request = pb::CreateGroupRequest {
                conversation,
                owner: 1,
                members: vec![1, 2],
            };
            let client = clients[conversation as usize % 3].clone();
            let created = retry_unavailable(|| {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.create_group(request).await }
            })
            .await;
            match created {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(s.into()),
            }
            for n in 0..3u64 {
                let request = pb::SendRequest {
                    conversation,
                    sender: 1,
                    client_msg_id: format!("m{conversation}-{n}").into_bytes(),
                    payload: format!("over mTLS {n}").into_bytes(),
                    receipt: false,
                    ..Default::default()
                };
                let client = clients[(conversation + n) as usize % 3].clone();
                let sent = retry_unavailable(|| {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move { client.send(request).await }
                })
                .await?
                .into_inner();
                assert_eq!(sent.seq, n + 1, "conversation {conversation}");
            }
        }

        // A watch of user 2 through every node, one of which does not
        // host the user's shard and relays it from one that does.
        for (node, client) in clients.iter().enumerate() {
            let mut stream = client
                .clone()
                .watch(pb::WatchRequest {
                    users: vec![pb::UserPosition {
                        user: 2,
                        inbox_seq: 0,
                        shards: Vec::new(),
                    }],
                    ..Default::default()
                })
                .await?
                .into_inner();
            let heard = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(notification) = stream.message().await? {
                    match notification.event {
                        Some(pb::notification::Event::Inbox(advanced)) if advanced.user == 2 => {
                            return Ok(advanced.inbox_seq);
                        }
                        Some(pb::notification::Event::Resync(resync)) => {
                            return Err(format!("told to resync: {resync:?}").into());
                        }
                        _ => {}
                    }
                }
                Err::<u64, Failure>("the watch ended".into())
            })
            .await
            .map_err(|_| format!("node {} never notified user 2's inbox", node + 2))??;
            assert!(heard >= 1, "node {}: inbox seq {heard}", node + 2);
        }

        // A proxy in front of the nodes: clients reach it over TLS with a
        // token; it reaches the nodes over mutual TLS with a certificate
        // of the CA that names no member (proxies are not raft members).
        let mut proxy_flags = vec!["--tokens-file".to_owned(), tokens.display().to_string()];
        proxy_flags.extend(tls_flags(&certs, "proxy", &ca));
        let proxy_flags: Vec<&str> = proxy_flags.iter().map(String::as_str).collect();
        let proxy = nodes::spawn_proxy(free_port()?, &addrs, &proxy_flags)?;
        let mut through_proxy = ImstoreClient::with_interceptor(
            channel(proxy.addr, &ca, None).await?,
            bearer as fn(_) -> _,
        );
        let request = pb::SendRequest {
            conversation: 1,
            sender: 2,
            client_msg_id: b"via-proxy".to_vec(),
            payload: b"through the proxy".to_vec(),
            receipt: false,
            ..Default::default()
        };
        let sent = through_proxy.send(request).await?.into_inner();
        assert_eq!(sent.seq, 4, "after the three sent through the nodes");
        let page = through_proxy
            .read_as(pb::ReadAsRequest {
                viewer: 1,
                conversation: 1,
                from: 1,
                limit: 10,
                direction: pb::Direction::Forward as i32,
                stale_ok: false,
            })
            .await?
            .into_inner();
        assert_eq!(page.messages.len(), 4);
        // Without a token the proxy refuses, as a node does.
        let mut anonymous = ImstoreClient::new(channel(proxy.addr, &ca, None).await?);
        let refused = anonymous
            .get_unread(pb::GetUnreadRequest {
                user: 1,
                conversation: 0,
            })
            .await
            .expect_err("a call without a token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        drop(proxy);

        // Cluster administration: the CLI with the operator's certificate.
        let server = format!("https://{}", addrs[1]);
        let ca_arg = ca.display().to_string();
        let admin_cert = certs.join("admin.pem").display().to_string();
        let admin_key = certs.join("admin.key").display().to_string();
        let status = nodes::imstore_command(&[
            "--server",
            &server,
            "--ca",
            &ca_arg,
            "--cert",
            &admin_cert,
            "--key",
            &admin_key,
            "cluster",
            "status",
        ])?;
        assert!(status.contains("Leader"), "cluster status: {status}");
        let refused =
            nodes::imstore_command(&["--server", &server, "--ca", &ca_arg, "cluster", "status"])
                .expect_err("cluster status without a certificate was answered");
        assert!(refused.to_string().contains("certificate"), "{refused}");

        // A fourth node, with a certificate of another CA, sets out to
        // bootstrap a cluster of itself and the three.
        let rogue_peers = format!("1={rogue_addr},{peers}");
        let mut flags: Vec<String> = vec![
            "--shards".into(),
            "2".into(),
            "--peers".into(),
            rogue_peers,
            "--metrics-listen".into(),
            "off".into(),
        ];
        flags.extend(tls_flags(&rogue, "rogue", &rogue_trust));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let intruder_node = spawn_node_logging(
            1,
            rogue_addr,
            &root.path().join("rogue-node"),
            &flags,
            "warn",
        )?;
        let node2 = &nodes[&2];
        eventually_async(
            "node 2 to refuse the rogue's handshakes",
            Duration::from_secs(60),
            || async {
                let body = fetch_metrics(metrics[0]).map_err(|e| e.to_string())?;
                let refused = labelled_sample(
                    &body,
                    "imstore_tls_handshakes_refused_total",
                    "reason=\"bad_certificate\"",
                )
                .unwrap_or(0);
                if refused == 0 || !node2.logged(&["TLS handshake refused", "bad_certificate"]) {
                    return Err(format!("{refused} refused so far"));
                }
                Ok(())
            },
        )
        .await?;

        // Its certificate cannot carry a raft message either.
        let vote = rpb::RaftMessage {
            shard: 0,
            payload: Vec::new(),
            from: 1,
            error: String::new(),
            format: 0,
        };
        let rogue_call = async {
            let mut client =
                RaftTransportClient::new(channel(addrs[0], &ca, Some((&rogue, "rogue"))).await?);
            client.vote(vote.clone()).await?;
            Ok::<(), Failure>(())
        };
        assert!(
            rogue_call.await.is_err(),
            "a raft message under another CA's certificate was taken"
        );

        // A certificate of the cluster's CA naming no member: it may ask
        // for status (administration) but not vote.
        let mut intruder = RaftTransportClient::new(
            channel(addrs[0], &ca, Some((&certs, "intruder.example"))).await?,
        );
        intruder.status(rpb::NodeStatusRequest { shard: 0 }).await?;
        let refused = intruder
            .vote(vote.clone())
            .await
            .expect_err("a non-member's vote was taken");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let (reason, metadata) =
            imstore_proto::errors::error_info(&refused).ok_or("no ErrorInfo")?;
        assert_eq!(reason, "PEER");
        assert_eq!(
            metadata.get("case").map(String::as_str),
            Some("not_a_member")
        );
        let body = fetch_metrics(metrics[0])?;
        assert!(
            labelled_sample(
                &body,
                "imstore_transport_calls_refused_total",
                "reason=\"not_a_member\""
            )
            .unwrap_or(0)
                >= 1
        );
        assert!(node2.logged(&["node transport call refused", "not_a_member"]));
        // Without a certificate, not even status.
        let mut anonymous = RaftTransportClient::new(channel(addrs[0], &ca, None).await?);
        let refused = anonymous
            .status(rpb::NodeStatusRequest { shard: 0 })
            .await
            .expect_err("status without a certificate");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // And plaintext gets nothing.
        let plain = async {
            let mut client = RaftTransportClient::connect(format!("http://{}", addrs[0])).await?;
            client.status(rpb::NodeStatusRequest { shard: 0 }).await?;
            Ok::<(), Failure>(())
        };
        assert!(
            plain.await.is_err(),
            "a plaintext transport call was answered"
        );

        // The rogue joined nothing, and every message reads back.
        for shard in [0, 1, imstore_raft::META_SHARD] {
            let mut client = RaftTransportClient::new(admin(addrs[2]).await?);
            let status = client
                .status(rpb::NodeStatusRequest { shard })
                .await?
                .into_inner();
            let mut ids: Vec<u64> = status.members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            assert!(!ids.contains(&1), "shard {shard} members {ids:?}");
        }
        for conversation in [1u64, 2, 3, 4] {
            let mut client = clients[(conversation as usize + 1) % 3].clone();
            let page = client
                .read(pb::ReadRequest {
                    conversation,
                    from: 1,
                    limit: 10,
                    direction: pb::Direction::Forward as i32,
                    stale_ok: false,
                })
                .await?
                .into_inner();
            let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
            // Conversation 1 has the message sent through the proxy too.
            let sent = if conversation == 1 { 4 } else { 3 };
            assert_eq!(
                seqs,
                (1..=sent).collect::<Vec<u64>>(),
                "conversation {conversation}"
            );
        }
        drop(intruder_node);
        Ok::<(), Failure>(())
    })?;
    let _dirs: Vec<PathBuf> = nodes::stop_all(nodes);
    Ok(())
}
