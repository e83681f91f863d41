//! Reactions through the API, on one engine and on 4 shards: added
//! (idempotently) and removed, counted in `ReadAs` (and in `ReadAsMany`),
//! the users of a reaction paged by id, pushed to a watch that lists the
//! conversation, gone with cleared history; bad input gets a typed error
//! and writes nothing.

use imstore_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

mod sharded;

use sharded::{Client, TestResult};

const GROUP: u64 = 700;

async fn react(
    c: &mut Client,
    seq: u64,
    user: u64,
    reaction: &str,
    add: bool,
) -> Result<(), tonic::Status> {
    let request = pb::ReactRequest {
        conversation: GROUP,
        seq,
        user,
        reaction: reaction.to_owned(),
    };
    if add {
        c.react(request).await?;
    } else {
        c.unreact(request).await?;
    }
    Ok(())
}

/// Each message's reactions as user 1 reads the group: (seq, [(reaction, count)]).
async fn counts(c: &mut Client) -> Result<Vec<(u64, Vec<(String, u64)>)>, tonic::Status> {
    let page = c
        .read_as(pb::ReadAsRequest {
            viewer: 1,
            conversation: GROUP,
            from: 1,
            limit: 100,
            direction: pb::Direction::Forward as i32,
            stale_ok: false,
        })
        .await?
        .into_inner();
    Ok(page
        .messages
        .iter()
        .map(|m| {
            let reactions = m.reactions.iter().map(|r| (r.reaction.clone(), r.count));
            (m.seq, reactions.collect())
        })
        .collect())
}

async fn reactors(
    c: &mut Client,
    seq: u64,
    reaction: &str,
    after_user: u64,
    limit: u32,
) -> Result<Vec<u64>, tonic::Status> {
    Ok(c.list_reactors(pb::ListReactorsRequest {
        conversation: GROUP,
        seq,
        reaction: reaction.to_owned(),
        after_user,
        limit,
    })
    .await?
    .into_inner()
    .users)
}

async fn scenario(mut c: Client) -> TestResult {
    c.create_group(pb::CreateGroupRequest {
        conversation: GROUP,
        owner: 1,
        members: (2..=20).collect(),
    })
    .await?;
    for i in 0..3 {
        c.send(pb::SendRequest {
            conversation: GROUP,
            sender: 1,
            client_msg_id: format!("r-{i}").into_bytes(),
            payload: b"hi".to_vec(),
            receipt: false,
            ..Default::default()
        })
        .await?;
    }
    for user in 1..=12 {
        react(&mut c, 2, user, "👍", true).await?;
    }
    // Adding again changes nothing.
    react(&mut c, 2, 5, "👍", true).await?;
    react(&mut c, 2, 3, "ok", true).await?;
    react(&mut c, 3, 4, "ok", true).await?;
    react(&mut c, 3, 4, "ok", false).await?;
    // Removing what is not there changes nothing.
    react(&mut c, 3, 4, "ok", false).await?;
    assert_eq!(
        counts(&mut c).await?,
        vec![
            (1, vec![]),
            (2, vec![("ok".to_owned(), 1), ("👍".to_owned(), 12)]),
            (3, vec![]),
        ]
    );
    // The users of a reaction, in pages of 5.
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let page = reactors(&mut c, 2, "👍", after, 5).await?;
        assert!(page.len() <= 5);
        let Some(&last) = page.last() else { break };
        all.extend(page);
        after = last;
    }
    assert_eq!(all, (1..=12).collect::<Vec<u64>>());

    // A watch that lists the group hears of a change of reactions (and
    // skips what else it is told, such as user 1's inbox head).
    let mut watch = c
        .watch(pb::WatchRequest {
            users: vec![pb::UserPosition {
                user: 1,
                inbox_seq: 0,
                shards: Vec::new(),
            }],
            conversations: vec![GROUP],
            change: 0,
            shards: Vec::new(),
            reported: Vec::new(),
        })
        .await?
        .into_inner();
    react(&mut c, 3, 7, "🎉", true).await?;
    let changed = loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), watch.next())
            .await
            .map_err(|_| "no notification within 60 s")?
            .ok_or("stream ended")??;
        match next.event {
            Some(pb::notification::Event::Reaction(r)) => break r,
            Some(pb::notification::Event::Resync(r)) => return Err(r.reason.into()),
            _ => continue,
        }
    };
    assert_eq!((changed.conversation, changed.seq), (GROUP, 3));
    drop(watch);
    react(&mut c, 3, 7, "🎉", false).await?;

    // Bad input: a typed error, nothing written.
    let long = "x".repeat(imstore_engine::MAX_REACTION_BYTES + 1);
    for (seq, user, reaction, code) in [
        (2, 1, "", Code::InvalidArgument),
        (2, 1, long.as_str(), Code::InvalidArgument),
        (9, 1, "👍", Code::InvalidArgument),
        (2, 99, "👍", Code::PermissionDenied),
    ] {
        let refused = react(&mut c, seq, user, reaction, true)
            .await
            .expect_err("a bad reaction");
        assert_eq!(refused.code(), code, "seq {seq} user {user} {reaction:?}");
    }
    let refused = reactors(&mut c, 2, "👍", 0, 0)
        .await
        .expect_err("a page of 0");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(counts(&mut c).await?[1].1.len(), 2, "nothing written");

    // Cleared history takes its reactions along.
    c.clear_history(pb::ClearHistoryRequest {
        conversation: GROUP,
        before_seq: 3,
    })
    .await?;
    assert!(reactors(&mut c, 2, "👍", 0, 100).await?.is_empty());
    let refused = react(&mut c, 2, 1, "👍", true)
        .await
        .expect_err("a reaction to a cleared message");
    assert_eq!(refused.code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_on_one_engine() -> TestResult {
    let store = sharded::serve(1).await?;
    scenario(store.client.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_across_shards() -> TestResult {
    let store = sharded::serve(4).await?;
    scenario(store.client.clone()).await
}
