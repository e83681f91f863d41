//! The workloads on Redis streams (`--against`): `append` as XADD,
//! `latest` as XREVRANGE, with the preload and the check after the run.

use super::{resp, Ack, Failure, Plan, Tally, Workload, PRELOAD_BATCH};

/// The Redis stream of a conversation.
fn stream_key(plan: &Plan, conversation: u64) -> Vec<u8> {
    format!("imstore-bench:{}:{conversation}", plan.run).into_bytes()
}

/// Redis's side of `append` (XADD) and `latest` (XREVRANGE).
pub(super) async fn request(redis: &mut resp::Resp, plan: &Plan, i: u64) -> Result<Ack, String> {
    let conversation = plan.conversation(i);
    let key = stream_key(plan, conversation);
    match plan.workload {
        Workload::Latest => {
            let count = plan.limit.to_string();
            let reply = redis
                .call(&[b"XREVRANGE", &key, b"+", b"-", b"COUNT", count.as_bytes()])
                .await?;
            let len = match reply {
                resp::Reply::Array(Some(entries)) => entries.len(),
                other => return Err(format!("XREVRANGE answered {other:?}")),
            };
            Ok(Ack::Page {
                len,
                expected: plan.preload.min(u64::from(plan.limit)) as usize,
            })
        }
        _ => match redis
            .call(&[b"XADD", &key, b"*", b"m", &plan.payload])
            .await?
        {
            // A stream id: the count is checked after the run (XLEN).
            resp::Reply::Bulk(Some(_)) => Ok(Ack::Written {
                conversation,
                seq: 0,
                duplicate: false,
            }),
            other => Err(format!("XADD answered {other:?}")),
        },
    }
}

/// Preloads each stream of `latest` with --preload entries, pipelined.
pub(super) async fn prepare(plan: &Plan, redis: &mut resp::Resp) -> Result<(), Failure> {
    if plan.workload != Workload::Latest {
        return Ok(());
    }
    for j in 0..plan.conversations {
        let key = stream_key(plan, plan.first + j);
        let mut written = 0;
        while written < plan.preload {
            let batch = (plan.preload - written).min(PRELOAD_BATCH);
            let command: Vec<&[u8]> = vec![b"XADD", &key, b"*", b"m", &plan.payload];
            let commands = vec![command; batch as usize];
            for reply in redis.pipeline(&commands).await? {
                if let resp::Reply::Error(e) = reply {
                    return Err(format!("redis: {e}").into());
                }
            }
            written += batch;
        }
    }
    Ok(())
}

/// After `append` on Redis: each stream holds exactly the entries
/// acknowledged there.
pub(super) async fn verify(
    plan: &Plan,
    redis: &mut resp::Resp,
    tally: &Tally,
) -> Result<bool, Failure> {
    if tally.bad > 0 {
        return Ok(false);
    }
    for (&conversation, &(count, _)) in &tally.written {
        let key = stream_key(plan, conversation);
        match redis.call(&[b"XLEN", &key]).await? {
            resp::Reply::Integer(len) if len == count as i64 => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}
