//! User-wide reads over shards: the service over one engine store split
//! into 4 shards ([`ShardedBackend`] over [`EngineBackend`]s, as a node of
//! `imstore node --shards 4` splits its store) must answer like the same
//! service over one unsharded engine. A property test runs random IM
//! operations against both, then pages every user's sync (by cursor and by
//! device), conversation list, unread total and friends out of both and
//! compares; a direct conversation gets another id on the sharded store
//! (one in its pair's shard), so ids are translated (watch over shards:
//! `shards_watch.rs`). A user's inbox is in the user's
//! shard, fed through the conversations' shards' outboxes by the drain
//! the sharded service runs; the comparisons wait until every outbox is
//! empty (delivery has quiesced).

use std::collections::{BTreeMap, BTreeSet};

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use proptest::prelude::*;
use tonic::transport::Channel;
use tonic::Code;

mod sharded;

use sharded::{serve, Store, TestResult};

const SHARDS: u64 = 4;
const USERS: u64 = 5;

#[derive(Debug, Clone)]
enum Op {
    Group {
        conversation: u64,
        owner: u64,
        members: Vec<u64>,
    },
    Send {
        target: usize,
        sender: u64,
    },
    Direct {
        user: u64,
        peer: u64,
    },
    Befriend {
        user: u64,
        other: u64,
        accept: bool,
    },
    MarkRead {
        user: u64,
        target: usize,
        up_to: u64,
    },
    SyncDevice {
        user: u64,
        limit: u32,
        /// The answer is lost (or the device crashes before processing
        /// it): nothing is taken, nothing acknowledged.
        lost: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 1..=USERS;
    prop_oneof![
        1 => (1u64..=24, user.clone(), prop::collection::vec(1..=USERS, 0..4)).prop_map(
            |(conversation, owner, members)| Op::Group {
                conversation,
                owner,
                members
            }
        ),
        4 => (any::<usize>(), user.clone()).prop_map(|(target, sender)| Op::Send { target, sender }),
        1 => (user.clone(), user.clone()).prop_map(|(user, peer)| Op::Direct { user, peer }),
        1 => (user.clone(), user.clone(), any::<bool>())
            .prop_map(|(user, other, accept)| Op::Befriend { user, other, accept }),
        1 => (user.clone(), any::<usize>(), 0u64..6)
            .prop_map(|(user, target, up_to)| Op::MarkRead { user, target, up_to }),
        1 => (user, 1u32..4, any::<bool>()).prop_map(|(user, limit, lost)| Op::SyncDevice { user, limit, lost }),
    ]
}

/// The two stores, the conversations both know (unsharded id, sharded id),
/// and what device syncs delivered on each.
struct Pair {
    one: Store,
    sharded: Store,
    conversations: Vec<(u64, u64)>,
    /// Sharded id to unsharded id.
    translate: BTreeMap<u64, u64>,
    delivered_one: BTreeSet<(u64, u64, u64)>,
    delivered_sharded: BTreeSet<(u64, u64, u64)>,
    /// Each user's phone's next acknowledgement, on each store.
    acks_one: BTreeMap<u64, pb::Cursor>,
    acks_sharded: BTreeMap<u64, pb::Cursor>,
    sends: u64,
}

fn code<T>(r: &Result<T, tonic::Status>) -> Option<Code> {
    r.as_ref().err().map(|s| s.code())
}

impl Pair {
    fn learn(&mut self, one: u64, sharded: u64) {
        if one != 0 && !self.translate.contains_key(&sharded) {
            self.translate.insert(sharded, one);
            self.conversations.push((one, sharded));
        }
    }

    fn original(&self, sharded: u64) -> u64 {
        self.translate.get(&sharded).copied().unwrap_or(sharded)
    }

    async fn apply(&mut self, op: &Op) -> TestResult {
        match op.clone() {
            Op::Group {
                conversation,
                owner,
                members,
            } => {
                let request = pb::CreateGroupRequest {
                    conversation,
                    owner,
                    members,
                };
                let a = self.one.client.create_group(request.clone()).await;
                let b = self.sharded.client.create_group(request).await;
                assert_eq!(code(&a), code(&b), "create group {op:?}");
                if a.is_ok() {
                    self.learn(conversation, conversation);
                }
            }
            Op::Send { target, sender } => {
                let Some(&(one, sharded)) = self
                    .conversations
                    .get(target % self.conversations.len().max(1))
                else {
                    return Ok(());
                };
                self.sends += 1;
                let request = |conversation| pb::SendRequest {
                    conversation,
                    sender,
                    client_msg_id: format!("m{}", self.sends).into_bytes(),
                    payload: format!("hello {}", self.sends).into_bytes(),
                    receipt: false,
                    ..Default::default()
                };
                let a = self.one.client.send(request(one)).await;
                let b = self.sharded.client.send(request(sharded)).await;
                assert_eq!(code(&a), code(&b), "send {op:?}");
                if let (Ok(a), Ok(b)) = (a, b) {
                    assert_eq!(a.into_inner().seq, b.into_inner().seq, "seq of {op:?}");
                }
            }
            Op::Direct { user, peer } => {
                let request = pb::OpenDirectRequest { user, peer };
                let a = self.one.client.open_direct(request).await;
                let b = self.sharded.client.open_direct(request).await;
                assert_eq!(code(&a), code(&b), "open direct {op:?}");
                if let (Ok(a), Ok(b)) = (a, b) {
                    let (a, b) = (a.into_inner(), b.into_inner());
                    assert_eq!(a.created, b.created);
                    self.learn(a.conversation, b.conversation);
                }
            }
            Op::Befriend {
                user,
                other,
                accept,
            } => {
                let request = pb::FriendPairRequest { user, other };
                let a = self.one.client.request_friend(request).await;
                let b = self.sharded.client.request_friend(request).await;
                assert_eq!(code(&a), code(&b), "friend request {op:?}");
                if accept {
                    let request = pb::FriendPairRequest {
                        user: other,
                        other: user,
                    };
                    let a = self.one.client.accept_friend(request).await;
                    let b = self.sharded.client.accept_friend(request).await;
                    assert_eq!(code(&a), code(&b), "friend accept {op:?}");
                    if let (Ok(a), Ok(b)) = (a, b) {
                        let (a, b) = (a.into_inner(), b.into_inner());
                        assert_eq!(a.outcome, b.outcome);
                        self.learn(a.conversation, b.conversation);
                    }
                }
            }
            Op::MarkRead {
                user,
                target,
                up_to,
            } => {
                let Some(&(one, sharded)) = self
                    .conversations
                    .get(target % self.conversations.len().max(1))
                else {
                    return Ok(());
                };
                let request = |conversation| pb::MarkReadRequest {
                    user,
                    conversation,
                    up_to,
                };
                let a = self.one.client.mark_read(request(one)).await;
                let b = self.sharded.client.mark_read(request(sharded)).await;
                assert_eq!(code(&a), code(&b), "mark read {op:?}");
                if let (Ok(a), Ok(b)) = (a, b) {
                    assert_eq!(a.into_inner().read_seq, b.into_inner().read_seq);
                }
            }
            Op::SyncDevice { user, limit, lost } => {
                self.device_sync(user, limit, lost).await?;
            }
        }
        Ok(())
    }

    /// One device sync page on each store; returns whether either has more.
    /// A sync of `user`'s phone on both stores, acknowledging what it
    /// took last; an entry taken twice fails the test.
    async fn device_sync(
        &mut self,
        user: u64,
        limit: u32,
        lost: bool,
    ) -> Result<bool, tonic::Status> {
        let request = |ack: Option<&pb::Cursor>| pb::SyncRequest {
            user,
            from: Some(pb::sync_request::From::Device(b"phone".to_vec())),
            limit,
            ack: ack.cloned(),
        };
        let a = self
            .one
            .client
            .sync(request(self.acks_one.get(&user)))
            .await?
            .into_inner();
        let b = self
            .sharded
            .client
            .sync(request(self.acks_sharded.get(&user)))
            .await?
            .into_inner();
        if lost {
            return Ok(a.more || b.more);
        }
        self.acks_one
            .insert(user, a.cursor.clone().unwrap_or_default());
        self.acks_sharded
            .insert(user, b.cursor.clone().unwrap_or_default());
        for e in &a.entries {
            let m = e.message.clone().unwrap_or_default();
            assert!(
                self.delivered_one.insert((user, m.conversation, m.seq)),
                "a device got an entry twice"
            );
        }
        for e in &b.entries {
            let m = e.message.clone().unwrap_or_default();
            let original = self.original(m.conversation);
            assert!(
                self.delivered_sharded.insert((user, original, m.seq)),
                "a device got an entry twice (sharded)"
            );
        }
        Ok(a.more || b.more)
    }
}

/// Every entry of `user`'s inbox, paged by cursor with `limit`:
/// (conversation, seq) in delivery order, and the final cursor.
async fn sync_all(
    client: &mut ImstoreClient<Channel>,
    user: u64,
    limit: u32,
) -> Result<(Vec<(u64, u64)>, pb::Cursor), tonic::Status> {
    let mut cursor = pb::Cursor::default();
    let mut all = Vec::new();
    let mut last_in_shard: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..1_000 {
        let page = client
            .sync(pb::SyncRequest {
                user,
                from: Some(pb::sync_request::From::Cursor(cursor.clone())),
                limit,
                ack: None,
            })
            .await?
            .into_inner();
        assert!(page.entries.len() <= limit as usize);
        for e in &page.entries {
            let previous = last_in_shard.insert(e.shard, e.inbox_seq).unwrap_or(0);
            assert!(e.inbox_seq > previous, "a shard's inbox seqs ascend");
            let m = e.message.clone().unwrap_or_default();
            all.push((m.conversation, m.seq));
        }
        cursor = page.cursor.unwrap_or_default();
        if !page.more {
            return Ok((all, cursor));
        }
        assert!(!page.entries.is_empty(), "more, but an empty page");
    }
    panic!("sync never ended");
}

type Summary = (u64, u64, u64, u64, bool);

/// `user`'s whole conversation list, paged by 2.
async fn list_all(
    client: &mut ImstoreClient<Channel>,
    user: u64,
) -> Result<Vec<pb::ConversationSummary>, tonic::Status> {
    let mut after = None;
    let mut all: Vec<pb::ConversationSummary> = Vec::new();
    loop {
        let page = client
            .list_conversations(pb::ListConversationsRequest {
                user,
                after,
                limit: 2,
            })
            .await?
            .into_inner()
            .conversations;
        let full = page.len() == 2;
        all.extend(page);
        match all.last() {
            Some(last) if full => {
                after = Some(pb::ListCursor {
                    last_activity_ms: last.last_activity_ms,
                    conversation: last.conversation,
                })
            }
            _ => return Ok(all),
        }
    }
}

async fn friends_all(
    client: &mut ImstoreClient<Channel>,
    user: u64,
    status: pb::FriendStatus,
) -> Result<Vec<pb::Friend>, tonic::Status> {
    let mut after_user = 0;
    let mut all: Vec<pb::Friend> = Vec::new();
    loop {
        let page = client
            .list_friends(pb::ListFriendsRequest {
                user,
                status: status as i32,
                after_user,
                limit: 2,
            })
            .await?
            .into_inner()
            .friends;
        let full = page.len() == 2;
        all.extend(page);
        match all.last() {
            Some(last) if full => after_user = last.user,
            _ => return Ok(all),
        }
    }
}

async fn compare(pair: &mut Pair, limit: u32) -> TestResult {
    for user in 1..=USERS {
        // Sync by cursor: the same entries, each once.
        let (a, a_cursor) = sync_all(&mut pair.one.client, user, limit).await?;
        let (b, b_cursor) = sync_all(&mut pair.sharded.client, user, limit).await?;
        let a_set: BTreeSet<(u64, u64)> = a.iter().copied().collect();
        let b_set: BTreeSet<(u64, u64)> = b.iter().map(|&(c, s)| (pair.original(c), s)).collect();
        assert_eq!(a.len(), a_set.len(), "user {user}: an entry twice");
        assert_eq!(
            b.len(),
            b_set.len(),
            "user {user}: an entry twice (sharded)"
        );
        assert_eq!(a_set, b_set, "user {user}: sync");
        // One cursor per user on any shard count, reporting the same big
        // conversations up to the same seqs.
        assert!(a_cursor.shards.is_empty() && b_cursor.shards.is_empty());
        let reported = |cursor: &pb::Cursor, map: &dyn Fn(u64) -> u64| -> BTreeSet<(u64, u64)> {
            cursor
                .reported
                .iter()
                .map(|a| (map(a.conversation), a.last_seq))
                .collect()
        };
        assert_eq!(
            reported(&a_cursor, &|c| c),
            reported(&b_cursor, &|c| pair.original(c)),
            "user {user}: big conversations reported"
        );
        // Nothing after the final cursor.
        for (client, cursor) in [
            (&mut pair.one.client, a_cursor),
            (&mut pair.sharded.client, b_cursor),
        ] {
            let rest = client
                .sync(pb::SyncRequest {
                    user,
                    from: Some(pb::sync_request::From::Cursor(cursor)),
                    limit,
                    ack: None,
                })
                .await?
                .into_inner();
            assert!(rest.entries.is_empty() && !rest.more);
        }
        // The device's syncs delivered everything, once.
        while pair.device_sync(user, limit, false).await? {}
        let mine = |set: &BTreeSet<(u64, u64, u64)>| -> BTreeSet<(u64, u64)> {
            set.iter()
                .filter(|e| e.0 == user)
                .map(|e| (e.1, e.2))
                .collect()
        };
        assert_eq!(mine(&pair.delivered_one), a_set, "user {user}: device");
        assert_eq!(
            mine(&pair.delivered_sharded),
            a_set,
            "user {user}: device (sharded)"
        );

        // The conversation list: the same rows; the sharded one in list order.
        let a = list_all(&mut pair.one.client, user).await?;
        let b = list_all(&mut pair.sharded.client, user).await?;
        let row = |s: &pb::ConversationSummary, id: u64| -> Summary {
            (id, s.last_seq, s.read_seq, s.unread, s.member)
        };
        let a_rows: BTreeSet<Summary> = a.iter().map(|s| row(s, s.conversation)).collect();
        let b_rows: BTreeSet<Summary> = b
            .iter()
            .map(|s| row(s, pair.original(s.conversation)))
            .collect();
        assert_eq!(a.len(), a_rows.len());
        assert_eq!(b.len(), b_rows.len(), "user {user}: a list row twice");
        assert_eq!(a_rows, b_rows, "user {user}: conversation list");
        let order = |s: &pb::ConversationSummary| {
            (
                std::cmp::Reverse(s.last_activity_ms),
                std::cmp::Reverse(s.conversation),
            )
        };
        assert!(
            b.windows(2).all(|w| order(&w[0]) < order(&w[1])),
            "user {user}: the merged list is in list order"
        );

        // The unread total.
        let request = pb::GetUnreadRequest {
            user,
            conversation: 0,
        };
        let a = pair.one.client.get_unread(request).await?.into_inner();
        let b = pair.sharded.client.get_unread(request).await?.into_inner();
        assert_eq!(a.unread, b.unread, "user {user}: unread total");

        // Friends, requests out and in: the same, ascending.
        for status in [
            pb::FriendStatus::Friends,
            pb::FriendStatus::Outgoing,
            pb::FriendStatus::Incoming,
        ] {
            let a: Vec<(u64, i32, u64)> = friends_all(&mut pair.one.client, user, status)
                .await?
                .iter()
                .map(|f| (f.user, f.status, f.conversation))
                .collect();
            let b: Vec<(u64, i32, u64)> = friends_all(&mut pair.sharded.client, user, status)
                .await?
                .iter()
                .map(|f| (f.user, f.status, pair.original(f.conversation)))
                .collect();
            assert_eq!(a, b, "user {user}: friends {status:?}");
        }
        // The user's list is in the user's shard and nowhere else.
        let home = imstore_engine::shard_for_user(user, SHARDS);
        for shard in (0..SHARDS).filter(|&s| s != home) {
            let view = pair.sharded.engine.with_shard(u16::try_from(shard)?)?;
            for status in [
                imstore_engine::FriendStatus::Friends,
                imstore_engine::FriendStatus::Outgoing,
                imstore_engine::FriendStatus::Incoming,
            ] {
                assert!(
                    view.friends(user, status, 0, 100)?.is_empty(),
                    "user {user}: friends in shard {shard}, not theirs ({home})"
                );
            }
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, limit: u32) -> TestResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut pair = Pair {
            one: serve(1).await?,
            sharded: serve(SHARDS).await?,
            conversations: Vec::new(),
            translate: BTreeMap::new(),
            delivered_one: BTreeSet::new(),
            delivered_sharded: BTreeSet::new(),
            acks_one: BTreeMap::new(),
            acks_sharded: BTreeMap::new(),
            sends: 0,
        };
        for op in &ops {
            pair.apply(op).await?;
        }
        pair.sharded.quiesce().await?;
        compare(&mut pair, limit).await
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn user_wide_reads_over_four_shards_match_one_store(
        ops in prop::collection::vec(op(), 1..60),
        limit in 1u32..5,
    ) {
        if let Err(e) = run(ops, limit) {
            return Err(TestCaseError::fail(e.to_string()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_of_older_formats_are_refused_where_they_mean_nothing() -> TestResult {
    let mut sharded = serve(SHARDS).await?;
    let mut one = serve(1).await?;
    let sync = |cursor: pb::Cursor| pb::SyncRequest {
        user: 1,
        from: Some(pb::sync_request::From::Cursor(cursor)),
        limit: 10,
        ack: None,
    };
    let shard = |shard: u32| pb::ShardCursor {
        shard,
        inbox_seq: 0,
        change: 0,
    };
    // Per-shard cursors ended with data format 7, on any store; a change
    // counter means something on one shard only.
    let cases = [
        (
            "per-shard cursors",
            pb::Cursor {
                shards: vec![shard(1)],
                ..pb::Cursor::default()
            },
        ),
        (
            "a change counter on four shards",
            pb::Cursor {
                change: 3,
                ..pb::Cursor::default()
            },
        ),
    ];
    for (why, cursor) in cases {
        let status = sharded.client.sync(sync(cursor)).await.err().ok_or(why)?;
        assert_eq!(status.code(), Code::InvalidArgument, "{why}");
    }
    let status = one
        .client
        .sync(sync(pb::Cursor {
            shards: vec![shard(0)],
            ..pb::Cursor::default()
        }))
        .await
        .err()
        .ok_or("per-shard cursors on one shard")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    // An inbox seq ahead of the user's inbox is from the future.
    let status = sharded
        .client
        .sync(sync(pb::Cursor {
            inbox_seq: 5,
            ..pb::Cursor::default()
        }))
        .await
        .err()
        .ok_or("a cursor from the future")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("past the store"), "{status:?}");
    // A reported list in any order, or with a conversation twice, is
    // taken (sorted, the higher seq kept): the cursor comes back clean.
    let reported = |pairs: &[(u64, u64)]| -> Vec<pb::Advanced> {
        pairs
            .iter()
            .map(|&(conversation, last_seq)| pb::Advanced {
                conversation,
                last_seq,
            })
            .collect()
    };
    for store in [&mut sharded, &mut one] {
        let page = store
            .client
            .sync(sync(pb::Cursor {
                reported: reported(&[(9, 1), (4, 2), (9, 3)]),
                ..pb::Cursor::default()
            }))
            .await?
            .into_inner();
        // User 1 is in no big conversation: nothing is reported or kept.
        assert!(page.advanced.is_empty());
        assert_eq!(page.cursor.ok_or("no cursor")?.reported, Vec::new());
    }
    Ok(())
}
