//! The workloads on imstore: each request, the setup before a run (groups,
//! preloads, delivery) and the check after it.

use std::time::{Duration, Instant};

use super::stream::StreamSender;
use super::{pb, Ack, Client, Failure, Plan, Tally, Workload, PRELOAD_BATCH};

pub(super) async fn request(
    client: &mut Client,
    plan: &Plan,
    i: u64,
    seen: &Tally,
) -> Result<Ack, tonic::Status> {
    let conversation = plan.conversation(i);
    let member = member(plan, i, conversation);
    match plan.workload {
        Workload::Append => {
            let answer = client
                .append(pb::AppendRequest {
                    messages: vec![pb::NewMessage {
                        conversation,
                        sender: 1,
                        client_msg_id: plan.message_id(i),
                        payload: plan.payload.to_vec(),
                    }],
                })
                .await?
                .into_inner();
            let first = answer.results.first().ok_or_else(|| {
                tonic::Status::internal("an Append answered no result for its message")
            })?;
            Ok(Ack::Written {
                conversation,
                seq: first.seq,
                duplicate: first.duplicate,
            })
        }
        Workload::Send | Workload::SendStream => send(client, plan, i, conversation, member).await,
        // The operation by a hash of i, not i mod 20: the conversation is
        // i mod --conversations, which the operation must not follow.
        Workload::Mixed => match (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 20 {
            0..8 => send(client, plan, i, conversation, member).await,
            14..17 if seen.written.contains_key(&conversation) => {
                let up_to = seen.written.get(&conversation).map_or(0, |w| w.1);
                client
                    .mark_read(pb::MarkReadRequest {
                        user: member,
                        conversation,
                        up_to,
                    })
                    .await?;
                Ok(Ack::Read)
            }
            17..20 => {
                client
                    .list_conversations(pb::ListConversationsRequest {
                        user: member,
                        after: None,
                        limit: 20,
                    })
                    .await?;
                Ok(Ack::Read)
            }
            _ => {
                client
                    .sync(pb::SyncRequest {
                        user: member,
                        limit: plan.limit,
                        from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
                        ack: None,
                    })
                    .await?;
                Ok(Ack::Read)
            }
        },
        Workload::HotGroup => {
            let page = client
                .read_as(pb::ReadAsRequest {
                    viewer: member,
                    conversation,
                    from: u64::MAX,
                    limit: plan.limit,
                    direction: pb::Direction::Backward as i32,
                    stale_ok: false,
                })
                .await?
                .into_inner();
            Ok(Ack::Page {
                len: page.messages.len(),
                expected: plan.limit as usize,
            })
        }
        Workload::History => {
            // Page after page from the start; a pass is one page each.
            let pages = plan.preload.div_ceil(u64::from(plan.limit)).max(1);
            let from = 1 + (i % pages) * u64::from(plan.limit);
            let page = client
                .read_as(pb::ReadAsRequest {
                    viewer: member,
                    conversation,
                    from,
                    limit: plan.limit,
                    direction: pb::Direction::Forward as i32,
                    stale_ok: false,
                })
                .await?
                .into_inner();
            Ok(Ack::Page {
                len: page.messages.len(),
                expected: (plan.preload - (from - 1)).min(u64::from(plan.limit)) as usize,
            })
        }
        Workload::Latest => {
            let page = client
                .read(pb::ReadRequest {
                    conversation,
                    from: u64::MAX,
                    limit: plan.limit,
                    direction: pb::Direction::Backward as i32,
                    stale_ok: false,
                })
                .await?
                .into_inner();
            Ok(Ack::Page {
                len: page.messages.len(),
                expected: plan.preload.min(u64::from(plan.limit)) as usize,
            })
        }
        Workload::Sync => {
            let page = client
                .sync(pb::SyncRequest {
                    user: member,
                    limit: plan.limit,
                    from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
                    ack: None,
                })
                .await?
                .into_inner();
            // A member of one group, which holds `preload` messages (or,
            // with read fan-out, reports it advanced instead).
            let len = page.entries.len() + page.advanced.len();
            let expected = if page.advanced.is_empty() {
                plan.preload.min(u64::from(plan.limit)) as usize
            } else {
                1
            };
            Ok(Ack::Page { len, expected })
        }
    }
}

/// Request `i`'s member of `conversation`: each conversation's members
/// take turns.
fn member(plan: &Plan, i: u64, conversation: u64) -> u64 {
    let members = plan.members(conversation);
    members
        .get((i / plan.conversations) as usize % members.len().max(1))
        .copied()
        .unwrap_or(1)
}

/// The `Send` of request `i` by `sender`.
fn send_request(plan: &Plan, i: u64, conversation: u64, sender: u64) -> pb::SendRequest {
    pb::SendRequest {
        conversation,
        sender,
        client_msg_id: plan.message_id(i),
        payload: plan.payload.to_vec(),
        receipt: false,
        ..Default::default()
    }
}

/// Request `i` of `send-stream`: the `send` workload's request, on the
/// client's stream.
pub(super) async fn stream_send(
    stream: &StreamSender,
    plan: &Plan,
    i: u64,
) -> Result<Ack, tonic::Status> {
    let conversation = plan.conversation(i);
    let sender = member(plan, i, conversation);
    let answer = stream
        .send(send_request(plan, i, conversation, sender))
        .await?;
    Ok(Ack::Written {
        conversation,
        seq: answer.seq,
        duplicate: answer.duplicate,
    })
}

/// One `Send` of request `i` by `sender`.
async fn send(
    client: &mut Client,
    plan: &Plan,
    i: u64,
    conversation: u64,
    sender: u64,
) -> Result<Ack, tonic::Status> {
    let answer = client
        .send(send_request(plan, i, conversation, sender))
        .await?
        .into_inner();
    Ok(Ack::Written {
        conversation,
        seq: answer.seq,
        duplicate: answer.duplicate,
    })
}

/// Creates the groups of `send`, `sync` and `mixed`, and preloads the read
/// workloads' conversations.
pub(super) async fn prepare(plan: &Plan, client: &mut Client) -> Result<(), Failure> {
    let groups = matches!(
        plan.workload,
        Workload::Send
            | Workload::SendStream
            | Workload::Sync
            | Workload::Mixed
            | Workload::HotGroup
            | Workload::History
    );
    let preload = !plan.workload.writes();
    let setup = indicatif::ProgressBar::new(plan.conversations);
    setup.set_message("preparing");
    for j in 0..plan.conversations {
        let conversation = plan.first + j;
        let members = plan.members(conversation);
        if groups {
            client
                .create_group(pb::CreateGroupRequest {
                    conversation,
                    owner: members[0],
                    members: members.clone(),
                })
                .await?;
        }
        if preload {
            let mut written = 0;
            while written < plan.preload {
                let batch = (plan.preload - written).min(PRELOAD_BATCH);
                let messages = (written..written + batch).map(|k| pb::NewMessage {
                    conversation,
                    sender: members[0],
                    client_msg_id: format!("preload-{}-{k}", plan.run).into_bytes(),
                    payload: plan.payload.to_vec(),
                });
                if groups {
                    for m in messages {
                        client
                            .send(pb::SendRequest {
                                conversation: m.conversation,
                                sender: m.sender,
                                client_msg_id: m.client_msg_id,
                                payload: m.payload,
                                receipt: false,
                                ..Default::default()
                            })
                            .await?;
                    }
                } else {
                    client
                        .append(pb::AppendRequest {
                            messages: messages.collect(),
                        })
                        .await?;
                }
                written += batch;
            }
        }
        setup.inc(1);
    }
    if plan.workload == Workload::Sync {
        delivered(plan, client).await?;
    }
    setup.finish_and_clear();
    Ok(())
}

/// `hot-group`'s writer: sends to the group at `rate` per second, by its
/// members in turn, until `deadline`. Returns (sends acknowledged, sends
/// failed or marked duplicate).
pub(super) async fn hot_writer(
    mut client: Client,
    plan: Plan,
    rate: f64,
    deadline: Instant,
) -> (u64, u64) {
    let conversation = plan.conversation(0);
    let members = plan.members(conversation);
    let started = Instant::now();
    let (mut written, mut failed) = (0u64, 0u64);
    for k in 0u64.. {
        let at = started + Duration::from_secs_f64(k as f64 / rate);
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let sender = members[(k as usize) % members.len()];
        let request = pb::SendRequest {
            conversation,
            sender,
            client_msg_id: format!("hot-{}-{k}", plan.run).into_bytes(),
            payload: plan.payload.to_vec(),
            receipt: false,
            ..Default::default()
        };
        match client.send(request).await {
            Ok(answer) if !answer.get_ref().duplicate => written += 1,
            _ => failed += 1,
        }
    }
    (written, failed)
}

/// Waits (at most 60 s) until every member's inbox holds what a sync
/// workload expects: copies reach inboxes through the outbox, a moment
/// after the send is acknowledged.
async fn delivered(plan: &Plan, client: &mut Client) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for j in 0..plan.conversations {
        for k in 0..plan.group_size {
            // The request number whose sync is member k's of group j.
            let i = j + plan.conversations * k;
            loop {
                let ack = request(client, plan, i, &Tally::default()).await?;
                if let Ack::Page { len, expected } = ack {
                    if len == expected {
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the inboxes of group {}'s members were not filled within 60 s",
                        plan.first + j
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    Ok(())
}

/// After a write workload: each conversation's newest seq is the count
/// of sends acknowledged there (fresh conversations: seqs 1, 2, 3, …),
/// and nothing came back marked a duplicate. After a read workload: every
/// page had its expected size.
pub(super) async fn verify(client: &mut Client, tally: &Tally) -> Result<bool, Failure> {
    if tally.bad > 0 {
        return Ok(false);
    }
    for (&conversation, &(count, highest)) in &tally.written {
        let page = client
            .read(pb::ReadRequest {
                conversation,
                from: u64::MAX,
                limit: 1,
                direction: pb::Direction::Backward as i32,
                stale_ok: false,
            })
            .await?
            .into_inner();
        let newest = page.messages.first().map_or(0, |m| m.seq);
        if newest != count || highest != count {
            return Ok(false);
        }
    }
    Ok(true)
}
