//! Receipts at scale through the API: in a group of 10,000 (read
//! positions) and in a small group (stored read lists), counts only and
//! pages of the lists agree with the whole lists, and the answers stay
//! small; `GetReceiptCounts` counts a sender's last 20 messages in one
//! call. On one engine and on a sharded store.

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use prost::Message as _;
use tonic::transport::Channel;
use tonic::Code;

mod sharded;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const BIG: u64 = 500;
const SMALL: u64 = 501;
const MEMBERS: u64 = 10_000;

async fn receipts(
    c: &mut ImstoreClient<Channel>,
    conversation: u64,
    seq: u64,
    counts_only: bool,
    after_user: u64,
    limit: u32,
) -> Result<pb::GetReceiptsResponse, tonic::Status> {
    Ok(c.get_receipts(pb::GetReceiptsRequest {
        conversation,
        seq,
        counts_only,
        after_user,
        limit,
    })
    .await?
    .into_inner())
}

/// Every page of `limit` users from the start, the lists put together.
async fn paged(
    c: &mut ImstoreClient<Channel>,
    conversation: u64,
    seq: u64,
    limit: u32,
) -> Result<(Vec<u64>, Vec<u64>, usize), tonic::Status> {
    let (mut read, mut unread, mut pages, mut after) = (Vec::new(), Vec::new(), 0, 0);
    loop {
        let page = receipts(c, conversation, seq, false, after, limit).await?;
        assert!(page.read.len() + page.unread.len() <= limit as usize);
        read.extend(page.read);
        unread.extend(page.unread);
        pages += 1;
        if page.next_after_user == 0 {
            return Ok((read, unread, pages));
        }
        assert!(page.next_after_user > after);
        after = page.next_after_user;
    }
}

async fn scenario(mut c: ImstoreClient<Channel>) -> TestResult {
    c.create_group(pb::CreateGroupRequest {
        conversation: BIG,
        owner: 1,
        members: (2..=MEMBERS).collect(),
    })
    .await?;
    c.create_group(pb::CreateGroupRequest {
        conversation: SMALL,
        owner: 1,
        members: (2..=40).collect(),
    })
    .await?;
    for group in [BIG, SMALL] {
        for i in 0..25 {
            c.send(pb::SendRequest {
                conversation: group,
                sender: 1,
                client_msg_id: format!("{group}-{i}").into_bytes(),
                payload: b"hello".to_vec(),
                receipt: true,
                ..Default::default()
            })
            .await?;
        }
    }
    // Every third member reads up to message 20; member 7 reads it all.
    for (group, members) in [(BIG, MEMBERS), (SMALL, 40)] {
        for user in (2..=members).step_by(3) {
            c.mark_read(pb::MarkReadRequest {
                user,
                conversation: group,
                up_to: 20,
            })
            .await?;
        }
        c.mark_read(pb::MarkReadRequest {
            user: 7,
            conversation: group,
            up_to: 25,
        })
        .await?;
    }

    for (group, members) in [(BIG, MEMBERS), (SMALL, 40)] {
        for seq in [20, 25] {
            let whole = receipts(&mut c, group, seq, false, 0, 0).await?;
            assert_eq!(
                whole.read.len() + whole.unread.len(),
                members as usize - 1,
                "everyone but the sender"
            );
            let counts = receipts(&mut c, group, seq, true, 0, 0).await?;
            assert_eq!(
                (counts.read_count, counts.unread_count, counts.stored),
                (whole.read_count, whole.unread_count, whole.stored)
            );
            assert!(counts.read.is_empty() && counts.unread.is_empty());
            assert!(
                counts.encoded_len() < 32,
                "counts of a group of {members}: {} bytes",
                counts.encoded_len()
            );
            let limit = if group == BIG { 1_000 } else { 7 };
            let (read, unread, pages) = paged(&mut c, group, seq, limit).await?;
            assert_eq!((read, unread), (whole.read.clone(), whole.unread.clone()));
            assert_eq!(pages, (members as usize - 1).div_ceil(limit as usize));
            let first = receipts(&mut c, group, seq, false, 0, limit).await?;
            assert!(first.encoded_len() < whole.encoded_len() / 5 || group == SMALL);
            assert_eq!(first.read_count, whole.read_count);
        }
    }

    // A sender's last 20 messages, counted in one call.
    let seqs: Vec<u64> = (6..=25).rev().collect();
    for group in [BIG, SMALL] {
        let counted = c
            .get_receipt_counts(pb::GetReceiptCountsRequest {
                conversation: group,
                seqs: seqs.clone(),
            })
            .await?
            .into_inner()
            .counts;
        assert_eq!(counted.len(), seqs.len());
        for (count, &seq) in counted.iter().zip(&seqs) {
            let one = receipts(&mut c, group, seq, true, 0, 0).await?;
            assert_eq!(
                (
                    count.seq,
                    count.read_count,
                    count.unread_count,
                    count.stored
                ),
                (seq, one.read_count, one.unread_count, one.stored)
            );
        }
        // Up to 20: every third member and member 7; after: member 7.
        let members = if group == BIG { MEMBERS } else { 40 };
        let thirds = (2..=members).step_by(3).count() as u32;
        for count in &counted {
            let read = if count.seq <= 20 { thirds + 1 } else { 1 };
            assert_eq!(
                (count.read_count, count.unread_count),
                (read, members as u32 - 1 - read),
                "group {group} message {}",
                count.seq
            );
        }
    }

    // Bad asks change nothing and say why.
    for seqs in [Vec::new(), (1..=101).collect(), vec![3, 3], vec![26]] {
        let refused = c
            .get_receipt_counts(pb::GetReceiptCountsRequest {
                conversation: BIG,
                seqs,
            })
            .await
            .expect_err("a bad receipt-count ask");
        assert!(
            matches!(refused.code(), Code::InvalidArgument),
            "{refused:?}"
        );
    }
    let refused = receipts(&mut c, BIG, 20, false, 0, 1_000_000)
        .await
        .expect_err("a page past the limit");
    assert_eq!(refused.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_of_one_engine_count_and_page() -> TestResult {
    let store = sharded::serve(1).await?;
    scenario(store.client.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_across_shards_count_and_page() -> TestResult {
    let store = sharded::serve(4).await?;
    scenario(store.client.clone()).await
}
