//! `SendStream`: many sends over one HTTP/2 stream stay exactly-once and
//! in stream order per conversation, across a stream broken mid-way and
//! sent again; a bad request is answered in-band and the stream goes on.
//! On one engine (submits applied in order: all in flight at once) and on
//! a sharded store (a backend that may reorder: one request per
//! conversation in flight).

use std::collections::{BTreeMap, HashMap};

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use pb::send_stream_response::Result as Answer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

mod sharded;
mod single;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const GROUPS: [u64; 3] = [100, 101, 102];
const PER_GROUP: u64 = 120;
/// Answers read from the first stream before it is dropped.
const READ_BEFORE_BREAK: usize = 90;

/// Request `i`: group i mod 3, sender 1 + i mod 3 (all members).
fn request(i: u64) -> pb::SendRequest {
    pb::SendRequest {
        conversation: GROUPS[(i % 3) as usize],
        sender: 1 + i % 3,
        client_msg_id: format!("m{i}").into_bytes(),
        payload: format!("payload {i}").into_bytes(),
        receipt: false,
        ..Default::default()
    }
}

fn index_of(client_msg_id: &[u8]) -> Option<u64> {
    std::str::from_utf8(client_msg_id)
        .ok()?
        .strip_prefix('m')?
        .parse()
        .ok()
}

/// Sends `requests` on a new stream and reads at most `read` answers
/// (all of them when `None`), then drops the stream.
async fn stream(
    client: &mut ImstoreClient<Channel>,
    requests: Vec<pb::SendRequest>,
    read: Option<usize>,
) -> Result<Vec<pb::SendStreamResponse>, Box<dyn std::error::Error + Send + Sync>> {
    let expected = requests.len();
    let (tx, rx) = mpsc::channel(expected.max(1));
    for r in requests {
        tx.send(r).await?;
    }
    let want = read.unwrap_or(expected);
    if read.is_none() {
        // Done sending: the server ends the stream once all are answered.
        drop(tx);
    }
    let mut answers = client
        .send_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut got = Vec::new();
    while got.len() < want {
        match answers.message().await? {
            Some(answer) => got.push(answer),
            None => break,
        }
    }
    if read.is_none() {
        // Exactly one answer per request, then the end of the stream.
        assert_eq!(got.len(), expected, "one answer per request");
        assert!(
            answers.message().await?.is_none(),
            "no answer past the last"
        );
    }
    Ok(got)
}

async fn create_groups(client: &mut ImstoreClient<Channel>) -> TestResult {
    for g in GROUPS {
        client
            .create_group(pb::CreateGroupRequest {
                conversation: g,
                owner: 1,
                members: vec![1, 2, 3],
            })
            .await?;
    }
    Ok(())
}

/// The whole scenario against a server `client` talks to.
async fn exactly_once_in_order(mut client: ImstoreClient<Channel>) -> TestResult {
    create_groups(&mut client).await?;
    let total = PER_GROUP * GROUPS.len() as u64;

    // A first stream with every message, dropped after some answers.
    let first = stream(
        &mut client,
        (0..total).map(request).collect(),
        Some(READ_BEFORE_BREAK),
    )
    .await?;
    assert_eq!(first.len(), READ_BEFORE_BREAK);
    let mut acknowledged = HashMap::new();
    for a in &first {
        let Some(Answer::Sent(sent)) = &a.result else {
            return Err(format!("the first stream failed a send: {a:?}").into());
        };
        assert!(!sent.duplicate, "{a:?}");
        acknowledged.insert((a.conversation, a.client_msg_id.clone()), sent.seq);
    }

    // Everything again on a second stream, with two bad requests in the
    // middle: each gets its error in-band and the stream goes on.
    let mut again: Vec<pb::SendRequest> = (0..total).map(request).collect();
    let outsider = pb::SendRequest {
        sender: 99,
        client_msg_id: b"outsider".to_vec(),
        ..request(0)
    };
    let too_big = pb::SendRequest {
        client_msg_id: b"too-big".to_vec(),
        payload: vec![b'x'; 64 * 1024 + 1],
        ..request(1)
    };
    again.insert(50, outsider);
    again.insert(51, too_big);
    let second = stream(&mut client, again, None).await?;

    let mut seqs: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for a in &second {
        match &a.result {
            Some(Answer::Sent(sent)) => {
                let i = index_of(&a.client_msg_id).ok_or("an answer to an unknown id")?;
                assert_eq!(a.conversation, request(i).conversation);
                let key = (a.conversation, a.client_msg_id.clone());
                if let Some(&seq) = acknowledged.get(&key) {
                    // Acknowledged on the first stream: a duplicate, same seq.
                    assert!(sent.duplicate, "{a:?}");
                    assert_eq!(sent.seq, seq, "{a:?}");
                }
                seqs.entry(a.conversation).or_default().push((i, sent.seq));
            }
            Some(Answer::Error(e)) => {
                errors.insert(
                    String::from_utf8_lossy(&a.client_msg_id).into_owned(),
                    e.clone(),
                );
            }
            None => return Err(format!("an answer with no result: {a:?}").into()),
        }
    }
    let outsider = errors.get("outsider").ok_or("no answer to the outsider")?;
    assert_eq!(
        outsider.code,
        tonic::Code::PermissionDenied as i32,
        "{outsider:?}"
    );
    assert_eq!(outsider.reason, "PERMISSION_DENIED");
    assert!(outsider.metadata.contains_key("case"), "{outsider:?}");
    let too_big = errors
        .get("too-big")
        .ok_or("no answer to the oversized send")?;
    assert_eq!(
        too_big.code,
        tonic::Code::InvalidArgument as i32,
        "{too_big:?}"
    );
    assert_eq!(too_big.reason, "PAYLOAD_TOO_LARGE");
    assert_eq!(errors.len(), 2, "{errors:?}");

    // Per conversation: seqs 1..=PER_GROUP, each once, in stream order.
    for g in GROUPS {
        let mut written = seqs.remove(&g).ok_or("a group got no answer")?;
        written.sort_unstable();
        let got: Vec<u64> = written.iter().map(|&(_, seq)| seq).collect();
        let want: Vec<u64> = (1..=PER_GROUP).collect();
        assert_eq!(got, want, "group {g}: seqs in stream order");
        // And the timeline holds exactly those messages at those seqs.
        let page = client
            .read(pb::ReadRequest {
                conversation: g,
                from: 1,
                limit: PER_GROUP as u32 + 10,
                direction: pb::Direction::Forward as i32,
                stale_ok: false,
            })
            .await?
            .into_inner();
        let stored: Vec<(u64, Vec<u8>)> = page
            .messages
            .into_iter()
            .map(|m| (m.seq, m.client_msg_id))
            .collect();
        let expected: Vec<(u64, Vec<u8>)> = written
            .iter()
            .map(|&(i, seq)| (seq, request(i).client_msg_id))
            .collect();
        assert_eq!(stored, expected, "group {g}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_engine_keeps_stream_sends_exactly_once_and_in_order() -> TestResult {
    let server = single::start(|_| {}).await.map_err(|e| e.to_string())?;
    exactly_once_in_order(server.client().await?).await?;
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_store_keeps_stream_sends_exactly_once_and_in_order() -> TestResult {
    let store = sharded::serve(4).await?;
    exactly_once_in_order(store.client.clone()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stream_ends_with_no_answer() -> TestResult {
    let server = single::start(|_| {}).await.map_err(|e| e.to_string())?;
    let mut client = server.client().await?;
    let answers = stream(&mut client, Vec::new(), None).await?;
    assert!(answers.is_empty());
    server.stop().await?;
    Ok(())
}
