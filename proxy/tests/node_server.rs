//! A cluster node is the same server as `imstore serve`: built from a TOML
//! configuration with a `[node]` table, it serves health, reflection (v1
//! and v1alpha), the request-size limit and `/metrics`, beside the
//! node-to-node transport on the same port.

use std::time::Duration;

use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proxy::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn config(dir: &std::path::Path) -> Result<ServerConfig, Box<dyn std::error::Error>> {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
data_dir = "{}"
max_message_bytes = 1000
max_batch_messages = 1

[node]
id = 1
shards = 2
snapshot_every = 100
"#,
        dir.display()
    );
    Ok(toml::from_str(&text)?)
}

/// The services reflection `v1alpha` lists.
async fn listed_by_v1alpha(
    channel: tonic::transport::Channel,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.next().await.ok_or("no reflection answer")??;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        return Err("not a service list".into());
    };
    Ok(list.service.into_iter().map(|s| s.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_from_a_toml_file_serves_health_reflection_limits_and_metrics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::bind(config(dir.path())?).await?;
    assert_eq!(server.shard_count(), Some(2));
    let addr = server.local_addr()?;
    let metrics_addr = server.metrics_addr().ok_or("metrics off")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // Before its groups are initialized a node has no leaders: alive,
    // not ready.
    let healthz = http_get(metrics_addr, "/healthz").await?;
    assert!(healthz.starts_with("HTTP/1.1 200 OK"), "{healthz}");
    let readyz = http_get(metrics_addr, "/readyz").await?;
    assert!(
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("no leader"),
        "{readyz}"
    );

    // A one-node cluster: both data shards and the metadata group.
    let url = format!("http://{addr}");
    let mut admin = RaftTransportClient::connect(url.clone()).await?;
    for shard in [0, 1, imstore_raft::META_SHARD] {
        admin
            .initialize(rpb::InitializeRequest {
                shard,
                members: vec![rpb::Member {
                    id: 1,
                    address: addr.to_string(),
                }],
            })
            .await?;
    }
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut client = ImstoreClient::new(channel.clone());
    let send = |client_msg_id: &str, payload: Vec<u8>| pb::SendRequest {
        conversation: 5,
        sender: 1,
        client_msg_id: client_msg_id.as_bytes().to_vec(),
        payload,
        receipt: false,
        ..Default::default()
    };
    // The node elects its leaders meanwhile.
    let sent = imstore_testkit::eventually_async("the first send", Duration::from_secs(60), || {
        let mut client = client.clone();
        let request = send("first", b"hello".to_vec());
        async move {
            let _ = client
                .create_group(pb::CreateGroupRequest {
                    conversation: 5,
                    owner: 1,
                    members: vec![1, 2],
                })
                .await;
            client.send(request).await.map(|r| r.into_inner())
        }
    })
    .await?;
    assert_eq!(sent.seq, 1);

    // Health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "imstore.v1.Imstore".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Reflection, as Python's grpcio-reflection asks.
    let names = listed_by_v1alpha(channel.clone()).await?;
    assert!(
        names.contains(&"imstore.v1.Imstore".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"imstore.raft.v1.RaftTransport".to_owned()),
        "{names:?}"
    );
    // The configured limits: a body over max_message_bytes, and a request
    // over the request-size limit (1 MiB here), are refused.
    let too_big = client.send(send("big", vec![7; 1_001])).await;
    assert_eq!(
        too_big.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    let huge = client.send(send("huge", vec![7; 2 << 20])).await;
    assert_eq!(huge.err().map(|s| s.code()), Some(tonic::Code::OutOfRange));
    // Metrics, the raft figures included.
    let mut socket = tokio::net::TcpStream::connect(metrics_addr).await?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    socket.read_to_string(&mut body).await?;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(
        body.contains("imstore_rpc_requests_total{rpc=\"Send\"}"),
        "{body}"
    );
    assert!(body.contains("imstore_raft_is_leader"), "{body}");
    // Liveness and readiness, for load balancers: every shard has a leader.
    let healthz = http_get(metrics_addr, "/healthz").await?;
    assert!(
        healthz.starts_with("HTTP/1.1 200 OK") && healthz.ends_with("ok\n"),
        "{healthz}"
    );
    imstore_testkit::eventually_async(
        "/readyz to answer ready",
        Duration::from_secs(60),
        || async {
            let readyz = http_get(metrics_addr, "/readyz").await?;
            if readyz.starts_with("HTTP/1.1 200 OK") && readyz.ends_with("ready\n") {
                Ok(())
            } else {
                Err(readyz)
            }
        },
    )
    .await?;

    let _ = stop.send(());
    running.await?.map_err(|e| e.to_string())?;
    // Restarted with another shard count, the directory is refused.
    let mut other = config(dir.path())?;
    if let Some(node) = other.node.as_mut() {
        node.shards = 3;
    }
    let refused = Server::bind(other)
        .await
        .err()
        .ok_or("a changed shard count")?;
    assert!(refused.to_string().contains("shard count"), "{refused}");
    Ok(())
}

/// The whole HTTP/1.1 response to `GET path` at `addr`.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    socket
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response)
}
