//! Pages bounded in bytes: under a small `max_page_bytes`, `Read` and
//! `ReadAs` (forward and backward), `ReadAsMany` and `Sync` answer what
//! fits, say `more`, and paging on from there gives every message exactly
//! once, in order; a message larger than the bound still comes, alone. On
//! one engine and on a sharded store.

use imstore_engine::Options;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proxy::ServiceLimits;
use prost::Message as _;
use tonic::transport::Channel;

mod sharded;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const BOUND: usize = 8_192;
const GROUP: u64 = 40;
const SENT: u64 = 60;

/// Every page of `limit`, forward from seq 1 or backward from the newest,
/// as `viewer` sees them (0: raw `Read`); the seqs in reading order and
/// how many pages said `more`.
async fn page_through(
    c: &mut ImstoreClient<Channel>,
    viewer: u64,
    backward: bool,
) -> Result<(Vec<u64>, usize), tonic::Status> {
    let direction = if backward {
        pb::Direction::Backward
    } else {
        pb::Direction::Forward
    };
    let (mut seqs, mut cut, mut from) = (Vec::new(), 0, if backward { u64::MAX } else { 1 });
    loop {
        let page = if viewer == 0 {
            c.read(pb::ReadRequest {
                conversation: GROUP,
                from,
                limit: 1_000,
                direction: direction as i32,
                stale_ok: false,
            })
            .await?
            .into_inner()
        } else {
            c.read_as(pb::ReadAsRequest {
                viewer,
                conversation: GROUP,
                from,
                limit: 1_000,
                direction: direction as i32,
                stale_ok: false,
            })
            .await?
            .into_inner()
        };
        assert!(
            page.encoded_len() <= BOUND + 70_000,
            "one big message at most"
        );
        let mut got: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        if backward {
            got.reverse();
        }
        if page.more {
            cut += 1;
            assert!(!got.is_empty(), "a page cut short holds a message");
        }
        let Some(&last) = got.last() else {
            return Ok((seqs, cut));
        };
        seqs.extend(got);
        if !page.more && page.messages.len() < 1_000 {
            return Ok((seqs, cut));
        }
        from = if backward { last - 1 } else { last + 1 };
        if backward && last == 1 {
            return Ok((seqs, cut));
        }
    }
}

async fn scenario(store: &sharded::Store) -> TestResult {
    let mut c = store.client.clone();
    c.create_group(pb::CreateGroupRequest {
        conversation: GROUP,
        owner: 1,
        members: vec![2, 3],
    })
    .await?;
    for i in 1..=SENT {
        // 1 KB messages, and one of 20 KB, past the bound on its own.
        let size = if i == 30 { 20_000 } else { 1_000 };
        c.send(pb::SendRequest {
            conversation: GROUP,
            sender: 1 + i % 2,
            client_msg_id: format!("m{i}").into_bytes(),
            payload: vec![b'x'; size],
            receipt: false,
            ..Default::default()
        })
        .await?;
    }
    let ascending: Vec<u64> = (1..=SENT).collect();
    let descending: Vec<u64> = (1..=SENT).rev().collect();
    for viewer in [0, 2] {
        let (forward, cut) = page_through(&mut c, viewer, false).await?;
        assert_eq!(forward, ascending, "viewer {viewer} forward");
        assert!(cut >= 6, "viewer {viewer}: {cut} pages cut");
        let (backward, _) = page_through(&mut c, viewer, true).await?;
        assert_eq!(backward, descending, "viewer {viewer} backward");
    }

    // ReadAsMany: the answer as a whole stays within the bound.
    let pages = (0..3)
        .map(|_| pb::ReadAsPage {
            conversation: GROUP,
            from: 1,
            limit: 20,
            direction: pb::Direction::Forward as i32,
        })
        .collect();
    let many = c
        .read_as_many(pb::ReadAsManyRequest {
            viewer: 3,
            pages,
            stale_ok: false,
        })
        .await?
        .into_inner();
    assert!(
        many.encoded_len() <= BOUND + 200,
        "{} bytes",
        many.encoded_len()
    );
    let counts: Vec<(usize, bool)> = many
        .pages
        .iter()
        .map(|p| match &p.result {
            Some(pb::page_result::Result::Page(page)) => (page.messages.len(), page.more),
            other => panic!("a failed page: {other:?}"),
        })
        .collect();
    assert!(counts[0].0 >= 1 && counts[0].1, "{counts:?}");
    assert_eq!(counts[2], (0, true), "nothing left for the last page");
    // A first message larger than the whole bound still comes, so that
    // reading on progresses.
    let big = c
        .read_as_many(pb::ReadAsManyRequest {
            viewer: 3,
            pages: vec![pb::ReadAsPage {
                conversation: GROUP,
                from: 30,
                limit: 5,
                direction: pb::Direction::Forward as i32,
            }],
            stale_ok: false,
        })
        .await?
        .into_inner();
    match &big.pages[0].result {
        Some(pb::page_result::Result::Page(page)) => {
            let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
            assert_eq!((seqs, page.more), (vec![30], true));
        }
        other => panic!("a failed page: {other:?}"),
    }

    // Sync pages by bytes too, the cursor stopping at the last entry (on
    // a sharded store, once delivery has filled user 2's inbox).
    store.quiesce().await?;
    let mut cursor = pb::Cursor::default();
    let mut synced = Vec::new();
    let mut cut = 0;
    for _ in 0..200 {
        let page = c
            .sync(pb::SyncRequest {
                user: 2,
                from: Some(pb::sync_request::From::Cursor(cursor.clone())),
                limit: 1_000,
                ack: None,
            })
            .await?
            .into_inner();
        synced.extend(
            page.entries
                .iter()
                .map(|e| e.message.as_ref().map_or(0, |m| m.seq)),
        );
        cursor = page.cursor.unwrap_or_default();
        if !page.more {
            break;
        }
        cut += 1;
        assert!(!page.entries.is_empty());
    }
    assert_eq!(synced, ascending, "user 2's inbox, once each");
    assert!(cut >= 6, "{cut} sync pages cut");
    Ok(())
}

fn limits() -> ServiceLimits {
    ServiceLimits {
        max_page_bytes: BOUND,
        ..ServiceLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_one_engine_fit_their_byte_bound() -> TestResult {
    let store = sharded::serve_limited(1, Options::default(), limits()).await?;
    scenario(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_across_shards_fit_their_byte_bound() -> TestResult {
    let store = sharded::serve_limited(4, Options::default(), limits()).await?;
    scenario(&store).await
}
