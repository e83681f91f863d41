//! SIGTERM during a write load: the server finishes what is in flight and
//! exits cleanly, and every write acknowledged to a client is present after
//! a restart, once, at the seq it was given.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{ServerProcess, TestResult};
use imstore_engine::{Direction, Engine, Options};
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;

const WRITERS: u64 = 8;
const GROUP: u64 = 5;
/// Bounds the load if SIGTERM never lands.
const MAX_PER_WRITER: u64 = 5_000;

#[test]
fn sigterm_under_load_loses_no_acknowledged_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(dir.path(), &[])?;
    let url = server.url();
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let runtime = tokio::runtime::Runtime::new()?;
    let refused = runtime.block_on({
        let acked = Arc::clone(&acked);
        async move {
            let mut setup = ImstoreClient::connect(url.clone()).await?;
            setup
                .create_group(pb::CreateGroupRequest {
                    conversation: GROUP,
                    owner: 1,
                    members: (1..=WRITERS).collect(),
                })
                .await?;
            let under_way = Arc::new(tokio::sync::Notify::new());
            let mut writers = Vec::new();
            for w in 1..=WRITERS {
                let (url, acked, under_way) =
                    (url.clone(), Arc::clone(&acked), Arc::clone(&under_way));
                writers.push(tokio::spawn(async move {
                    let Ok(mut client) = ImstoreClient::connect(url).await else {
                        return 0u64;
                    };
                    for i in 0..MAX_PER_WRITER {
                        let id = format!("w{w}-{i}");
                        let sent = client
                            .send(pb::SendRequest {
                                conversation: GROUP,
                                sender: w,
                                client_msg_id: id.clone().into_bytes(),
                                payload: format!("payload {id}").into_bytes(),
                                receipt: false,
                                ..Default::default()
                            })
                            .await;
                        match sent {
                            Ok(r) => {
                                let seq = r.into_inner().seq;
                                let mut acked = acked.lock().unwrap_or_else(|p| p.into_inner());
                                assert!(acked.insert(seq, id).is_none(), "seq acknowledged twice");
                                if acked.len() == 400 {
                                    under_way.notify_one();
                                }
                            }
                            // The server is going away: stop this writer.
                            Err(_) => return 1,
                        }
                    }
                    0
                }));
            }
            // SIGTERM once the load is well under way (400 acks).
            under_way.notified().await;
            server.terminate()?;
            let mut refused = 0;
            for w in writers {
                refused += w.await?;
            }
            let mut server = server;
            let status = server.child.wait()?;
            assert!(status.success(), "server exit after SIGTERM: {status}");
            Ok::<u64, Box<dyn std::error::Error>>(refused)
        }
    })?;

    let acked = acked.lock().map_err(|_| "poisoned")?.clone();
    eprintln!(
        "{} sends acknowledged; {refused} writers stopped by the shutdown",
        acked.len()
    );
    let engine = Engine::open(dir.path(), Options::default())?;
    let stored = engine.read(GROUP, 1, 10_000, Direction::Forward)?;
    assert_eq!(stored.len() as u64, engine.last_seq(GROUP)?);
    let mut ids = std::collections::BTreeSet::new();
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "seqs continuous");
        assert!(ids.insert(m.client_msg_id.clone()), "stored twice");
    }
    for (seq, id) in &acked {
        let m = stored
            .get(*seq as usize - 1)
            .ok_or_else(|| format!("acknowledged #{seq} ({id}) lost"))?;
        assert_eq!(
            &m.client_msg_id[..],
            id.as_bytes(),
            "#{seq} holds another message"
        );
        assert_eq!(&m.payload[..], format!("payload {id}").as_bytes());
    }
    Ok(())
}
