//! `ReadAsMany`: each page is exactly the `ReadAs` of its request, in
//! request order; a failing page carries its error and the others are
//! answered; too many pages, or too many messages asked together, fail the
//! call. On one engine and on a sharded store (pages in several shards).

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use pb::page_result::Result as Page;
use tonic::transport::Channel;
use tonic::Code;

mod sharded;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn page(conversation: u64, from: u64, limit: u32, direction: pb::Direction) -> pb::ReadAsPage {
    pb::ReadAsPage {
        conversation,
        from,
        limit,
        direction: direction as i32,
    }
}

async fn scenario(mut c: ImstoreClient<Channel>) -> TestResult {
    // Viewer 2 is in groups 11 and 12, not in 13.
    for (group, members) in [(11, vec![1, 2]), (12, vec![1, 2, 3]), (13, vec![1, 3])] {
        c.create_group(pb::CreateGroupRequest {
            conversation: group,
            owner: 1,
            members,
        })
        .await?;
        for i in 0..5 {
            c.send(pb::SendRequest {
                conversation: group,
                sender: 1,
                client_msg_id: format!("{group}-{i}").into_bytes(),
                payload: format!("message {i} of {group}").into_bytes(),
                receipt: false,
                ..Default::default()
            })
            .await?;
        }
    }
    let pages = vec![
        page(11, 1, 10, pb::Direction::Forward),
        page(12, u64::MAX, 3, pb::Direction::Backward),
        page(13, 1, 10, pb::Direction::Forward),
        page(11, 1, 0, pb::Direction::Forward),
        page(12, 2, 2, pb::Direction::Forward),
    ];
    let answer = c
        .read_as_many(pb::ReadAsManyRequest {
            viewer: 2,
            pages: pages.clone(),
            stale_ok: false,
        })
        .await?
        .into_inner();
    assert_eq!(answer.pages.len(), pages.len());
    for (asked, got) in pages.iter().zip(&answer.pages) {
        assert_eq!(got.conversation, asked.conversation);
        let alone = c
            .read_as(pb::ReadAsRequest {
                viewer: 2,
                conversation: asked.conversation,
                from: asked.from,
                limit: asked.limit,
                direction: asked.direction,
                stale_ok: false,
            })
            .await;
        match (&got.result, alone) {
            (Some(Page::Page(page)), Ok(alone)) => {
                assert_eq!(page, &alone.into_inner(), "{asked:?}")
            }
            (Some(Page::Error(e)), Err(status)) => {
                assert_eq!(e.code, status.code() as i32, "{asked:?}");
                assert_eq!(e.message, status.message(), "{asked:?}");
            }
            (got, alone) => panic!("{asked:?}: ReadAsMany {got:?}, ReadAs {alone:?}"),
        }
    }
    // The non-member's page and the zero-limit page failed, in-band.
    assert!(
        matches!(&answer.pages[2].result, Some(Page::Error(e)) if e.code == Code::PermissionDenied as i32)
    );
    assert!(
        matches!(&answer.pages[3].result, Some(Page::Error(e)) if e.code == Code::InvalidArgument as i32)
    );

    // Too many pages, or too many messages together: the call fails.
    for pages in [
        vec![page(11, 1, 1, pb::Direction::Forward); 101],
        vec![page(11, 1, 6_000, pb::Direction::Forward); 2],
    ] {
        let refused = c
            .read_as_many(pb::ReadAsManyRequest {
                viewer: 2,
                pages,
                stale_ok: false,
            })
            .await
            .expect_err("over a limit");
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    let empty = c
        .read_as_many(pb::ReadAsManyRequest {
            viewer: 2,
            pages: Vec::new(),
            stale_ok: false,
        })
        .await?
        .into_inner();
    assert!(empty.pages.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_one_engine_are_each_a_read_as() -> TestResult {
    let store = sharded::serve(1).await?;
    scenario(store.client.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_across_shards_are_each_a_read_as() -> TestResult {
    let store = sharded::serve(4).await?;
    scenario(store.client.clone()).await
}
