//! Real `imstore node` processes on 127.0.0.1 for the cluster tests, and
//! the client-side helpers they share: finding the leader, sending with
//! retries that follow leader hints, reading a replica's timeline.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imstore_engine::{Direction, Engine, Options};
use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
pub use imstore_testkit::{eventually, eventually_async, holds};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type TaskResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A running `imstore node`; killed when dropped.
pub struct NodeProcess {
    pub id: u64,
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The lines the node wrote to stderr, as they come.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Whether some line of the node's log so far contains every one of
    /// `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter()
            .any(|line| parts.iter().all(|p| line.contains(p)))
    }
}

impl NodeProcess {
    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `imstore` command against `server`; its stdout, or an error
/// with its stderr.
pub fn imstore(server: SocketAddr, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let server = format!("http://{server}");
    let mut all = vec!["--server", &server];
    all.extend_from_slice(args);
    imstore_command(&all)
}

/// Runs the `imstore` command with `args`; its stdout, or an error with
/// its stderr.
pub fn imstore_command(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_imstore"))
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "imstore {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `imstore cluster init` of nodes 1, 2, … at `addrs` (in order), sent to
/// the first, with the extra flags; its output.
pub fn cluster_init(
    addrs: &[SocketAddr],
    extra: &[&str],
) -> Result<String, Box<dyn std::error::Error>> {
    let members: Vec<String> = (1..)
        .zip(addrs)
        .map(|(id, a)| format!("{id}={a}"))
        .collect();
    let members = members.join(",");
    let mut args = vec!["cluster", "init", "--members", &members];
    args.extend_from_slice(extra);
    imstore(addrs[0], &args)
}

pub fn free_port() -> Result<SocketAddr, std::io::Error> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Starts node `id` on `addr` with `dir` as data directory (extra flags
/// passed through) and waits for its "serving on" line.
pub fn spawn_node(
    id: u64,
    addr: SocketAddr,
    dir: &Path,
    extra: &[&str],
) -> Result<NodeProcess, Box<dyn std::error::Error>> {
    spawn_node_logging(id, addr, dir, extra, "error")
}

/// [`spawn_node`] with the node's `RUST_LOG` filter.
pub fn spawn_node_logging(
    id: u64,
    addr: SocketAddr,
    dir: &Path,
    extra: &[&str],
    rust_log: &str,
) -> Result<NodeProcess, Box<dyn std::error::Error>> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imstore"));
    command
        .args([
            "node",
            "--id",
            &id.to_string(),
            "--listen",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", rust_log);
    spawn_server(command, id, addr, dir)
}

/// Starts `imstore proxy` on `addr` in front of `nodes` (extra flags
/// passed through) and waits for its "serving on" line (it has learned
/// the shard map by then). Its `id` is 0 and its `dir` empty.
pub fn spawn_proxy(
    addr: SocketAddr,
    nodes: &[SocketAddr],
    extra: &[&str],
) -> Result<NodeProcess, Box<dyn std::error::Error>> {
    let nodes: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_imstore"));
    command
        .args([
            "proxy",
            "--listen",
            &addr.to_string(),
            "--nodes",
            &nodes.join(","),
        ])
        .args(extra)
        .env("RUST_LOG", "error");
    spawn_server(command, 0, addr, Path::new(""))
}

/// Runs `command` (a server subcommand), keeping its stderr lines, and
/// waits for its "serving on" line.
fn spawn_server(
    mut command: Command,
    id: u64,
    addr: SocketAddr,
    dir: &Path,
) -> Result<NodeProcess, Box<dyn std::error::Error>> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    loop {
        let Some(line) = lines.next() else {
            return Err(format!("server exited before serving: {}", said.join(" | ")).into());
        };
        let line = line?;
        if line.contains("serving on") {
            break;
        }
        said.push(line);
    }
    let log = std::sync::Arc::new(std::sync::Mutex::new(said));
    let kept = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    Ok(NodeProcess {
        id,
        child,
        addr,
        dir: dir.to_path_buf(),
        log,
    })
}

/// Bootstraps shard 0 on `addrs` (node ids 1, 2, … in order) through the
/// first of them.
pub async fn initialize(addrs: &[SocketAddr]) -> TestResult {
    let mut admin = RaftTransportClient::connect(format!("http://{}", addrs[0])).await?;
    // Shard 0 and the metadata group, as `imstore cluster init` does.
    for shard in [0, imstore_raft::META_SHARD] {
        admin
            .initialize(rpb::InitializeRequest {
                shard,
                members: addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| rpb::Member {
                        id: i as u64 + 1,
                        address: a.to_string(),
                    })
                    .collect(),
            })
            .await?;
    }
    Ok(())
}

pub async fn status(addr: SocketAddr) -> Option<rpb::NodeStatus> {
    shard_status(addr, 0).await
}

/// Where node `addr`'s replica of `shard` stands (`None` if it does not
/// answer).
pub async fn shard_status(addr: SocketAddr, shard: u64) -> Option<rpb::NodeStatus> {
    let mut client = RaftTransportClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    client
        .status(rpb::NodeStatusRequest { shard })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Running nodes by id.
pub type Nodes = BTreeMap<u64, NodeProcess>;

/// Starts nodes 1, 2, 3 on free ports under `root` (`node1`, …) with the
/// extra flags.
pub fn start_three(
    root: &Path,
    extra: &[&str],
) -> Result<(Vec<SocketAddr>, Nodes), Box<dyn std::error::Error>> {
    start_nodes(root, 3, extra)
}

/// Starts nodes 1 to `count` on free ports under `root` (`node1`, …) with
/// the extra flags.
pub fn start_nodes(
    root: &Path,
    count: u64,
    extra: &[&str],
) -> Result<(Vec<SocketAddr>, Nodes), Box<dyn std::error::Error>> {
    let addrs: Vec<SocketAddr> = (0..count).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut nodes = BTreeMap::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let dir = root.join(format!("node{id}"));
        nodes.insert(id, spawn_node(id, addr, &dir, extra)?);
    }
    Ok((addrs, nodes))
}

/// Stops every node (SIGTERM) and returns their data directories.
pub fn stop_all(mut nodes: Nodes) -> Vec<PathBuf> {
    for node in nodes.values_mut() {
        node.stop();
    }
    nodes.values().map(|n| n.dir.clone()).collect()
}

/// Polls `addrs` until one reports itself leader (bounded).
pub async fn wait_for_leader(
    addrs: &[SocketAddr],
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    Ok(
        eventually_async("a leader of shard 0", Duration::from_secs(30), || async {
            for &addr in addrs {
                if status(addr).await.is_some_and(|s| s.state == "Leader") {
                    return Ok(addr);
                }
            }
            Err("no node leads yet")
        })
        .await?,
    )
}

/// Polls `addr` until `done` holds for its status (shard 0; bounded),
/// returning that status.
pub async fn wait_for_status(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&rpb::NodeStatus) -> bool,
) -> Result<rpb::NodeStatus, Box<dyn std::error::Error>> {
    wait_for_shard(addr, 0, what, done).await
}

/// Polls `addr`'s replica of `shard` until `done` holds for its status
/// (bounded), returning that status.
pub async fn wait_for_shard(
    addr: SocketAddr,
    shard: u64,
    what: &str,
    done: impl Fn(&rpb::NodeStatus) -> bool,
) -> Result<rpb::NodeStatus, Box<dyn std::error::Error>> {
    let what = format!("{addr} shard {shard}: {what}");
    Ok(eventually_async(&what, Duration::from_secs(120), || async {
        match shard_status(addr, shard).await {
            Some(s) if done(&s) => Ok(s),
            Some(s) => Err(format!("status {s:?}")),
            None => Err("no answer".to_owned()),
        }
    })
    .await?)
}

/// Waits until every node in `addrs` has applied at least `index`.
pub async fn wait_all_applied(addrs: &[SocketAddr], index: u64) -> TestResult {
    for &addr in addrs {
        wait_for_status(addr, &format!("applied {index}"), |s| {
            s.last_applied >= index
        })
        .await?;
    }
    Ok(())
}

/// The highest applied index any of `addrs` reports.
pub async fn highest_applied(addrs: &[SocketAddr]) -> u64 {
    let mut highest = 0;
    for &addr in addrs {
        highest = highest.max(status(addr).await.map_or(0, |s| s.last_applied));
    }
    highest
}

/// The leader address a NOT_LEADER status names in its `ErrorInfo`.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    let (reason, mut metadata) = imstore_proto::errors::error_info(status)?;
    (reason == "NOT_LEADER")
        .then(|| metadata.remove("leader_address"))
        .flatten()
}

/// Runs `call` against the nodes until it succeeds, following leader
/// hints and moving on from dead or cut-off nodes (each attempt has a 3 s
/// deadline: a leader cut off from its quorum never answers). The caller
/// makes the call idempotent (the same client message id every time).
pub async fn until_acked<T, F, Fut>(addrs: &[SocketAddr], what: &str, mut call: F) -> TaskResult<T>
where
    F: FnMut(ImstoreClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut target = 0usize;
    let mut hint: Option<String> = None;
    while Instant::now() < deadline {
        let url = match hint.take() {
            Some(h) => format!("http://{h}"),
            None => format!("http://{}", addrs[target % addrs.len()]),
        };
        if let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url) {
            if let Ok(channel) = endpoint.timeout(Duration::from_secs(3)).connect().await {
                match call(ImstoreClient::new(channel)).await {
                    Ok(done) => return Ok(done),
                    Err(status) => hint = leader_hint(&status),
                }
            }
        }
        target += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{what} was never acknowledged").into())
}

/// Sends to `conversation` until acknowledged (see [`until_acked`]).
/// Returns (seq, duplicate).
pub async fn send_until_acked(
    addrs: &[SocketAddr],
    conversation: u64,
    sender: u64,
    id: &str,
) -> TaskResult<(u64, bool)> {
    let request = pb::SendRequest {
        conversation,
        sender,
        client_msg_id: id.as_bytes().to_vec(),
        payload: format!("payload {id}").into_bytes(),
        receipt: false,
        ..Default::default()
    };
    until_acked(addrs, id, |mut client| {
        let request = request.clone();
        async move {
            let r = client.send(request).await?.into_inner();
            Ok((r.seq, r.duplicate))
        }
    })
    .await
}

/// Creates group `conversation` owned by node-independent user 1 with
/// `members`, through any node (retried until acknowledged, as the
/// shard's leader and the shard map settle; a retry that finds it made
/// is done).
pub async fn create_group(
    addrs: &[SocketAddr],
    conversation: u64,
    members: Vec<u64>,
) -> TestResult {
    wait_for_leader(addrs).await?;
    let request = pb::CreateGroupRequest {
        conversation,
        owner: 1,
        members,
    };
    until_acked(addrs, "create_group", |mut client| {
        let request = request.clone();
        async move {
            match client.create_group(request).await {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(s) => Err(s),
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// (seq, client message id) of every message of a conversation.
pub type Timeline = Vec<(u64, Vec<u8>)>;

/// The timeline of `conversation` in a stopped node's data directory
/// (shard 0 of its store).
pub fn timeline(dir: &Path, conversation: u64) -> Result<Timeline, Box<dyn std::error::Error>> {
    timeline_in(dir, 0, conversation)
}

/// The timeline of `conversation` in `shard` of a stopped node's store.
pub fn timeline_in(
    dir: &Path,
    shard: u16,
    conversation: u64,
) -> Result<Timeline, Box<dyn std::error::Error>> {
    let engine = Engine::open(dir.join("engine"), Options::default())?.with_shard(shard)?;
    Ok(engine
        .read(conversation, 1, 10_000, Direction::Forward)?
        .into_iter()
        .map(|m| (m.seq, m.client_msg_id.to_vec()))
        .collect())
}

/// Every replica in `dirs` holds the same timeline of `conversation`, which
/// is exactly the acknowledged sends (client id → seq), each once, at
/// continuous seqs.
pub fn check_replicas(
    dirs: &[PathBuf],
    conversation: u64,
    acked: &std::collections::BTreeMap<String, u64>,
) -> TestResult {
    check_replicas_in(dirs, 0, conversation, acked)
}

/// [`check_replicas`] for a conversation of `shard`.
pub fn check_replicas_in(
    dirs: &[PathBuf],
    shard: u16,
    conversation: u64,
    acked: &std::collections::BTreeMap<String, u64>,
) -> TestResult {
    let reference = timeline_in(&dirs[0], shard, conversation)?;
    for dir in &dirs[1..] {
        let other = timeline_in(dir, shard, conversation)?;
        assert!(
            other == reference,
            "replicas differ: {} vs {} messages",
            other.len(),
            reference.len()
        );
    }
    assert_eq!(reference.len(), acked.len(), "every send exactly once");
    for (i, (seq, _)) in reference.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "continuous seqs");
    }
    for (id, seq) in acked {
        assert_eq!(
            reference.get(*seq as usize - 1).map(|(_, c)| c.as_slice()),
            Some(id.as_bytes()),
            "{id} at #{seq}"
        );
    }
    Ok(())
}

/// The body of `GET /metrics` at `addr`.
pub fn fetch_metrics(addr: SocketAddr) -> Result<String, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: imstore\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    socket.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or("no HTTP body")?;
    Ok(body)
}

/// The value of the sample `name{shard="0"}` in a Prometheus text body.
pub fn sample(body: &str, name: &str) -> Option<u64> {
    labelled_sample(body, name, "shard=\"0\"")
}

/// The value of the sample `name{labels}` (`name` alone when `labels` is
/// empty) in a Prometheus text body.
pub fn labelled_sample(body: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    body.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

/// Runs `call` until it answers other than UNAVAILABLE (an election, a
/// leader hint a moment stale, a restarted node catching up), for at most
/// 60 s; that answer, or UNAVAILABLE naming the last one.
pub async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    eventually_async(
        "an answer other than UNAVAILABLE",
        Duration::from_secs(60),
        || {
            let answer = call();
            async move {
                match answer.await {
                    Err(s) if s.code() == tonic::Code::Unavailable => Err(s.message().to_owned()),
                    other => Ok(other),
                }
            }
        },
    )
    .await
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?
}

/// `user`'s friends as read through `addr`, once the list holds at least
/// one: the list lives in the user's shard and follows a friend command
/// within the delivery lag (polled for at most 60 s).
pub async fn friends_once_delivered(
    addr: SocketAddr,
    user: u64,
) -> Result<Vec<pb::Friend>, Box<dyn std::error::Error>> {
    let what = format!("user {user}'s friend list, read on {addr}");
    Ok(
        eventually_async(&what, Duration::from_secs(60), || async move {
            let client = ImstoreClient::connect(format!("http://{addr}")).await?;
            let friends = retry_unavailable(|| {
                let mut client = client.clone();
                async move {
                    client
                        .list_friends(pb::ListFriendsRequest {
                            user,
                            status: pb::FriendStatus::Friends as i32,
                            after_user: 0,
                            limit: 10,
                        })
                        .await
                }
            })
            .await?
            .into_inner()
            .friends;
            if friends.is_empty() {
                return Err("no friend yet".into());
            }
            Ok::<_, Box<dyn std::error::Error>>(friends)
        })
        .await?,
    )
}
