//! A 3-node cluster as 3 real `imstore node` processes on 127.0.0.1: the
//! leader is killed with SIGKILL under an append load; a new leader is
//! elected; clients retry through it with the same client message ids;
//! every acknowledged send is present exactly once with continuous seqs;
//! the killed node restarts and catches up to the same bytes; then, under
//! load again, the shard's replica moves from that node to a new node 4
//! (learner, caught up, voter; old one removed) with no acknowledged write
//! lost.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imstore_engine::{Direction, Engine, Options};
use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use tonic_types_shim::leader_hint;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const GROUP: u64 = 9;
const WRITERS: u64 = 4;
const PER_WRITER: u64 = 150;
/// Sends per writer while the shard moves to a new node.
const MOVE_PER_WRITER: u64 = 50;

mod tonic_types_shim {
    /// The leader address a NOT_LEADER status carries in its message.
    pub fn leader_hint(status: &tonic::Status) -> Option<String> {
        let message = status.message();
        let at = message.find(" at ")?;
        Some(message[at + 4..].trim().to_owned())
    }
}

struct NodeProcess {
    id: u64,
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<SocketAddr, std::io::Error> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn spawn_node(
    id: u64,
    addr: SocketAddr,
    dir: &Path,
) -> Result<NodeProcess, Box<dyn std::error::Error>> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imstore"))
        .args([
            "node",
            "--id",
            &id.to_string(),
            "--listen",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().ok_or("node exited before serving")??;
        if line.contains("serving on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(NodeProcess {
        id,
        child,
        addr,
        dir: dir.to_path_buf(),
    })
}

async fn status(addr: SocketAddr) -> Option<rpb::NodeStatus> {
    let mut client = RaftTransportClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    client
        .status(rpb::NodeStatusRequest { shard: 0 })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Polls the nodes until one reports itself leader (bounded).
async fn wait_for_leader(addrs: &[SocketAddr]) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for &addr in addrs {
            if let Some(s) = status(addr).await {
                if s.state == "Leader" {
                    return Ok(addr);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("no leader elected within 30 s".into())
}

/// Sends until acknowledged, following leader hints and moving on from
/// dead nodes; the same client id every time, so retries never duplicate.
async fn send_until_acked(
    addrs: &[SocketAddr],
    sender: u64,
    id: &str,
) -> Result<(u64, bool), Box<dyn std::error::Error + Send + Sync>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut target = 0usize;
    let mut hint: Option<String> = None;
    while Instant::now() < deadline {
        let url = match hint.take() {
            Some(h) => format!("http://{h}"),
            None => format!("http://{}", addrs[target % addrs.len()]),
        };
        if let Ok(mut client) = ImstoreClient::connect(url).await {
            let sent = client
                .send(pb::SendRequest {
                    conversation: GROUP,
                    sender,
                    client_msg_id: id.as_bytes().to_vec(),
                    payload: format!("payload {id}").into_bytes(),
                    receipt: false,
                })
                .await;
            match sent {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok((r.seq, r.duplicate));
                }
                Err(status) => hint = leader_hint(&status),
            }
        }
        target += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{id} was never acknowledged").into())
}

/// (seq, client message id) of every message of the test group.
type Timeline = Vec<(u64, Vec<u8>)>;

fn timeline(dir: &Path) -> Result<Timeline, Box<dyn std::error::Error>> {
    let engine = Engine::open(dir.join("shard-0/engine"), Options::default())?;
    Ok(engine
        .read(GROUP, 1, 10_000, Direction::Forward)?
        .into_iter()
        .map(|m| (m.seq, m.client_msg_id.to_vec()))
        .collect())
}

#[test]
fn three_processes_survive_sigkill_of_the_leader() -> TestResult {
    let root = tempfile::tempdir()?;
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut nodes: BTreeMap<u64, NodeProcess> = BTreeMap::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        nodes.insert(
            id,
            spawn_node(id, addr, &root.path().join(format!("node{id}")))?,
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let (acked, moved_away) = runtime.block_on(async {
        let mut admin = RaftTransportClient::connect(format!("http://{}", addrs[0])).await?;
        admin
            .initialize(rpb::InitializeRequest {
                shard: 0,
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
        let leader = wait_for_leader(&addrs).await?;
        let mut client = ImstoreClient::connect(format!("http://{leader}")).await?;
        client
            .create_group(pb::CreateGroupRequest {
                conversation: GROUP,
                owner: 1,
                members: (1..=WRITERS).collect(),
            })
            .await?;

        // The load: each writer sends PER_WRITER messages, retrying each
        // until acknowledged.
        let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let under_way = Arc::new(tokio::sync::Notify::new());
        let mut writers = Vec::new();
        for w in 1..=WRITERS {
            let (addrs, acked, under_way) =
                (addrs.clone(), Arc::clone(&acked), Arc::clone(&under_way));
            writers.push(tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    let id = format!("w{w}-{i}");
                    let (seq, _) = send_until_acked(&addrs, w, &id).await?;
                    let mut acked = acked.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(previous) = acked.insert(id.clone(), seq) {
                        assert_eq!(previous, seq, "{id} acknowledged at two seqs");
                    }
                    if acked.len() == 100 {
                        under_way.notify_one();
                    }
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        // SIGKILL the leader once the load is under way.
        under_way.notified().await;
        let leader_id = nodes
            .values()
            .find(|n| n.addr == leader)
            .map(|n| n.id)
            .ok_or("leader process")?;
        let mut killed = nodes.remove(&leader_id).ok_or("leader node")?;
        killed.child.kill()?;
        killed.child.wait()?;
        for w in writers {
            w.await?.map_err(|e| e.to_string())?;
        }
        // The killed node comes back and catches up.
        let dir = killed.dir.clone();
        drop(killed);
        nodes.insert(leader_id, spawn_node(leader_id, leader, &dir)?);
        // Every acknowledged write is applied on the leader that took
        // over; the restarted node may briefly believe its old vote, so the
        // target is the highest applied index any node reports.
        let mut target = 0;
        for &addr in &addrs {
            target = target.max(status(addr).await.map_or(0, |s| s.last_applied));
        }
        // Every replica, the restarted one included, applies up to the
        // leader's last applied entry.
        let deadline = Instant::now() + Duration::from_secs(60);
        for &addr in &addrs {
            loop {
                let applied = status(addr).await.map_or(0, |s| s.last_applied);
                if applied >= target {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{addr} stuck at {applied}, leader at {target}").into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // History pulls: a follower serves `stale_ok` reads from its applied
        // state, and refuses linearizable ones with the leader's address.
        let leader_now = wait_for_leader(&addrs).await?;
        let follower = *addrs
            .iter()
            .find(|&&a| a != leader_now)
            .ok_or("a follower")?;
        let mut reader = ImstoreClient::connect(format!("http://{follower}")).await?;
        let read = |stale_ok| pb::ReadAsRequest {
            stale_ok,
            viewer: 1,
            conversation: GROUP,
            from: 1,
            limit: 10_000,
            direction: pb::Direction::Forward as i32,
        };
        let stale = reader.read_as(read(true)).await?.into_inner();
        assert_eq!(stale.messages.len() as u64, WRITERS * PER_WRITER);
        let acked_so_far = acked.lock().map(|a| a.len()).unwrap_or(0);
        assert_eq!(acked_so_far as u64, WRITERS * PER_WRITER);
        let refused = reader
            .read_as(read(false))
            .await
            .err()
            .ok_or("a follower served a linearizable read")?;
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(leader_hint(&refused), Some(leader_now.to_string()));
        // Move the shard's replica from the restarted node to a new node 4
        // while writers keep sending.
        let new_addr = free_port()?;
        let new_dir = root.path().join("node4");
        nodes.insert(4, spawn_node(4, new_addr, &new_dir)?);
        let mut movers = Vec::new();
        for w in 1..=WRITERS {
            let (addrs, acked) = (addrs.clone(), Arc::clone(&acked));
            movers.push(tokio::spawn(async move {
                for i in 0..MOVE_PER_WRITER {
                    let id = format!("m{w}-{i}");
                    let (seq, _) = send_until_acked(&addrs, w, &id).await?;
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, seq);
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        let mut admin = RaftTransportClient::connect(format!("http://{leader_now}")).await?;
        admin
            .add_node(rpb::MemberChange {
                shard: 0,
                id: 4,
                address: new_addr.to_string(),
            })
            .await?;
        let moved = admin
            .remove_node(rpb::MemberChange {
                shard: 0,
                id: leader_id,
                address: String::new(),
            })
            .await?
            .into_inner();
        let members: Vec<u64> = moved.members.iter().map(|m| m.id).collect();
        assert!(
            members.contains(&4) && !members.contains(&leader_id),
            "{members:?}"
        );
        for m in movers {
            m.await?.map_err(|e| e.to_string())?;
        }
        // The new replica applies everything the leader has.
        let target = status(leader_now)
            .await
            .ok_or("leader status")?
            .last_applied;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let applied = status(new_addr).await.map_or(0, |s| s.last_applied);
            if applied >= target {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node 4 stuck at {applied}, leader at {target}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let acked = acked.lock().map_err(|_| "poisoned")?.clone();
        Ok::<_, Box<dyn std::error::Error>>((acked, leader_id))
    })?;
    // Stop everything, then compare the three stores.
    for node in nodes.values_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status();
        let _ = node.child.wait();
    }
    // The node the shard moved away from stopped receiving the log.
    let dirs: Vec<PathBuf> = nodes
        .values()
        .filter(|n| n.id != moved_away)
        .map(|n| n.dir.clone())
        .collect();
    assert_eq!(dirs.len(), 3);
    drop(nodes);
    let reference = timeline(&dirs[0])?;
    for dir in &dirs[1..] {
        let other = timeline(dir)?;
        assert!(
            other == reference,
            "replicas differ: {} vs {} messages",
            other.len(),
            reference.len()
        );
    }
    assert_eq!(acked.len() as u64, WRITERS * (PER_WRITER + MOVE_PER_WRITER));
    assert_eq!(reference.len(), acked.len(), "every send exactly once");
    for (i, (seq, _)) in reference.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "continuous seqs");
    }
    for (id, seq) in &acked {
        assert_eq!(
            reference.get(*seq as usize - 1).map(|(_, c)| c.as_slice()),
            Some(id.as_bytes()),
            "{id} at #{seq}"
        );
    }
    Ok(())
}
