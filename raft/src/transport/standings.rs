//! Each peer's batcher of `RaftTransport/ReadStandings` asks: the asks of
//! every shard this node reads, bound for one peer, travel in one call,
//! and whatever queues up while calls are in flight goes in the next. An
//! ask is answered by a call that leaves after it was queued, so after the
//! read that queued it began.

use std::sync::Arc;

use imstore_proto::raft as pb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use tonic::transport::Channel;

use super::client::Peers;

/// Calls in flight to one peer at a time.
const CALLS_IN_FLIGHT: usize = 2;
/// Most shards in one call.
const MAX_SHARDS_PER_CALL: usize = 4096;

/// Where an ask's answer goes: the peer's id, with its standing (`None`:
/// the peer could not be asked).
pub(crate) type Answers = tokio::sync::mpsc::UnboundedSender<(u64, Option<pb::ReadStanding>)>;

/// One queued ask: the shard, the asked peer's id, where its answer goes.
type Ask = (u64, u64, Answers);

/// The queue of one peer's batcher task.
#[derive(Clone)]
pub(crate) struct Asker {
    queue: tokio::sync::mpsc::UnboundedSender<Ask>,
}

impl Peers {
    /// Asks the peer `peer` at `addr` for its standing in `shard`; the
    /// answer goes to `answers`, or nothing does if no batcher can be set
    /// up for the address.
    pub(crate) fn ask_standing(
        &self,
        peer: u64,
        addr: &str,
        from: u64,
        shard: u64,
        answers: &Answers,
    ) {
        if let Some(asker) = self.asker(addr, from) {
            if let Err(tokio::sync::mpsc::error::SendError((_, peer, answers))) =
                asker.queue.send((shard, peer, answers.clone()))
            {
                let _ = answers.send((peer, None));
            }
        }
    }

    fn asker(&self, addr: &str, from: u64) -> Option<Asker> {
        let mut askers = self.askers();
        if let Some(a) = askers.get(addr) {
            if !a.queue.is_closed() {
                return Some(a.clone());
            }
        }
        let client = self.client(addr)?;
        let (queue, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_asker(rx, client, from));
        let asker = Asker { queue };
        askers.insert(addr.to_owned(), asker.clone());
        Some(asker)
    }
}

/// Sends whatever asks queued up for one peer as one `ReadStandings`
/// call, with at most [`CALLS_IN_FLIGHT`] outstanding.
async fn run_asker(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Ask>,
    client: RaftTransportClient<Channel>,
    from: u64,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // Reads begun together (a user-wide read's shards) queue their
        // asks from tasks that are ready to run now: let them, so that
        // one call carries them all.
        tokio::task::yield_now().await;
        // Taken after the permit: what queued meanwhile joins this call.
        let mut asks = vec![first];
        while asks.len() < MAX_SHARDS_PER_CALL {
            match queue.try_recv() {
                Ok(next) => asks.push(next),
                Err(_) => break,
            }
        }
        let mut client = client.clone();
        tokio::spawn(async move {
            let shards = asks.iter().map(|(shard, _, _)| *shard).collect();
            // UNIMPLEMENTED from a node of an older build, or the peer is
            // down: no standing (the reader falls back to openraft's
            // check).
            let standings = match client
                .read_standings(pb::ReadStandingsRequest { from, shards })
                .await
            {
                Ok(answer) => answer.into_inner().standings,
                Err(_) => Vec::new(),
            };
            let mut standings = if standings.len() == asks.len() {
                standings.into_iter().map(Some).collect()
            } else {
                vec![None; asks.len()]
            };
            for ((_, peer, answers), standing) in asks.into_iter().zip(standings.drain(..)) {
                let _ = answers.send((peer, standing));
            }
            drop(permit);
        });
    }
}
