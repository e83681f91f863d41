//! Single-flight reads: identical concurrent reads share one backend
//! request, and a conversation has a bounded number of backend reads in
//! flight.
//!
//! A read may only share a request that was *sent after it began*, or it
//! could miss a write acknowledged between the request's start and its
//! own (a linearizable read must see every such write). So per key there
//! is at most one request in flight and one waiting: a read that finds a
//! request in flight joins the waiting one, which is sent when the one in
//! flight ends. Under any number of readers a key costs at most one
//! backend request per round trip, and each reader waits at most two.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// What every reader of one flight gets: the answer or the error, shared.
type Outcome<T, E> = Option<Result<T, E>>;

/// The flights of one kind of read, by key.
pub(crate) struct Flights<K, T, E> {
    slots: Mutex<HashMap<K, Slot<T, E>>>,
}

/// A key with a request in flight, and the readers waiting for the next.
struct Slot<T, E> {
    next: Option<watch::Sender<Outcome<T, E>>>,
}

/// How a reader came to its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boarding {
    /// It started a request of its own (no request for the key was out).
    Led,
    /// It joined the request that goes out next, with other readers.
    Joined,
}

impl<K, T, E> Default for Flights<K, T, E> {
    fn default() -> Self {
        Flights {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, T, E> Flights<K, T, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// The answer of a request for `key` sent after this call began:
    /// `fetch()`'s, run by a task of its own (so a reader that gives up
    /// does not cancel it for the others). `gone` is the error when that
    /// task ends without an answer (it panicked).
    pub(crate) async fn read<F, Fut>(
        self: &Arc<Self>,
        key: K,
        fetch: F,
        gone: E,
    ) -> (Result<T, E>, Boarding)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (mut answer, boarding) = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get_mut(&key) {
                Some(slot) => {
                    let next = slot.next.get_or_insert_with(|| watch::channel(None).0);
                    (next.subscribe(), Boarding::Joined)
                }
                None => {
                    let (sender, receiver) = watch::channel(None);
                    slots.insert(key.clone(), Slot { next: None });
                    let flights = Arc::clone(self);
                    tokio::spawn(flights.fly(key, sender, fetch));
                    (receiver, Boarding::Led)
                }
            }
        };
        let result = match answer.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Err(gone)),
            Err(_) => Err(gone),
        };
        (result, boarding)
    }

    /// Sends `key`'s requests one after another, each answering the
    /// readers that boarded it, until no reader waits.
    async fn fly<F, Fut>(
        self: Arc<Self>,
        key: K,
        mut sender: watch::Sender<Outcome<T, E>>,
        fetch: F,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // Whatever ends this task, the key is free again afterwards.
        let mut landing = Landing {
            flights: &self,
            key: key.clone(),
            landed: false,
        };
        loop {
            let answer = fetch().await;
            sender.send_replace(Some(answer));
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get_mut(&key).and_then(|slot| slot.next.take()) {
                Some(next) => sender = next,
                None => {
                    // Under the same lock: a reader arriving now starts a
                    // request of its own instead of boarding a slot about
                    // to go.
                    slots.remove(&key);
                    landing.landed = true;
                    return;
                }
            }
        }
    }

    /// Keys with a request in flight (for tests and figures).
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Frees a key whose flying task ended without landing (its fetch
/// panicked): the senders dropped with it end their readers' waits with
/// `gone`.
struct Landing<'a, K: Hash + Eq, T, E> {
    flights: &'a Flights<K, T, E>,
    key: K,
    landed: bool,
}

impl<K: Hash + Eq, T, E> Drop for Landing<'_, K, T, E> {
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        let mut slots = self.flights.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(&self.key);
    }
}

/// At most `limit` backend reads of one conversation at a time; more wait
/// their turn. Idle conversations hold no state.
pub(crate) struct ConversationGate {
    limit: usize,
    gates: Mutex<HashMap<u64, Arc<Semaphore>>>,
}

/// A turn at a conversation's backend; the next waiting read goes when it
/// is dropped.
pub(crate) struct Turn {
    _permit: OwnedSemaphorePermit,
    conversation: u64,
    gate: Arc<ConversationGate>,
}

impl ConversationGate {
    /// A gate of `limit` (at least 1) reads per conversation.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(ConversationGate {
            limit: limit.max(1),
            gates: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for a turn at `conversation`'s backend; `waited` says whether
    /// it had to.
    pub(crate) async fn turn(self: &Arc<Self>, conversation: u64) -> (Option<Turn>, bool) {
        let semaphore = {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(
                gates
                    .entry(conversation)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.limit))),
            )
        };
        let waited = semaphore.available_permits() == 0;
        match semaphore.acquire_owned().await {
            Ok(permit) => (
                Some(Turn {
                    _permit: permit,
                    conversation,
                    gate: Arc::clone(self),
                }),
                waited,
            ),
            // Never closed: go without a turn rather than fail the read.
            Err(_) => (None, waited),
        }
    }

    /// Conversations with a read out or waiting.
    pub(crate) fn busy(&self) -> usize {
        self.gates.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut gates = self.gate.gates.lock().unwrap_or_else(|p| p.into_inner());
        // The semaphore is held by the map, by every permit out and by
        // every read waiting for one (each took its clone under this
        // lock): held only by the map and this turn's permit, the gate is
        // idle once the permit is returned, after this body.
        if let Some(semaphore) = gates.get(&self.conversation) {
            if Arc::strong_count(semaphore) == 2 {
                gates.remove(&self.conversation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A fetch that counts its calls and answers the count, after a pause
    /// long enough for readers to pile up.
    fn counting(
        calls: &Arc<AtomicU64>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>
           + Send
           + Sync
           + 'static {
        let calls = Arc::clone(calls);
        move || {
            let calls = Arc::clone(&calls);
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(n)
            })
        }
    }

    #[tokio::test]
    async fn concurrent_readers_share_at_most_two_requests() {
        let flights: Arc<Flights<u64, u64, String>> = Arc::default();
        let calls = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for _ in 0..500 {
            let flights = Arc::clone(&flights);
            let fetch = counting(&calls);
            readers.push(tokio::spawn(async move {
                flights.read(7, fetch, "gone".to_owned()).await
            }));
        }
        let mut answers = Vec::new();
        for reader in readers {
            answers.push(reader.await.expect("reader"));
        }
        // All 500 boarded either the first request or the one after it.
        let made = calls.load(Ordering::SeqCst);
        assert!((1..=2).contains(&made), "{made} requests");
        let led = answers.iter().filter(|(_, b)| *b == Boarding::Led).count();
        assert_eq!(led, 1);
        assert!(answers
            .iter()
            .all(|(a, _)| matches!(a, Ok(n) if (1..=2).contains(n))));
        assert_eq!(flights.in_flight(), 0, "the key is free once answered");
    }

    #[tokio::test]
    async fn a_reader_never_takes_a_request_sent_before_it_began() {
        let flights: Arc<Flights<u64, u64, String>> = Arc::default();
        let calls = Arc::new(AtomicU64::new(0));
        let first = {
            let flights = Arc::clone(&flights);
            let fetch = counting(&calls);
            tokio::spawn(async move { flights.read(1, fetch, "gone".into()).await })
        };
        // Wait until the first request is out (it counted itself).
        imstore_testkit::eventually_async(
            "the first request is out",
            Duration::from_secs(30),
            || {
                let calls = Arc::clone(&calls);
                async move {
                    match calls.load(Ordering::SeqCst) {
                        1 => Ok(()),
                        n => Err(format!("{n} requests out")),
                    }
                }
            },
        )
        .await
        .expect("the first request goes out");
        let (late, boarding) = flights.read(1, counting(&calls), "gone".into()).await;
        assert_eq!(boarding, Boarding::Joined);
        assert_eq!(late, Ok(2), "the late reader waited for the next request");
        assert_eq!(first.await.expect("first").0, Ok(1));
    }

    #[tokio::test]
    async fn different_keys_fly_apart_and_errors_reach_every_reader() {
        let flights: Arc<Flights<u64, u64, String>> = Arc::default();
        let failing = || async { Err::<u64, String>("refused".into()) };
        let (a, b) = tokio::join!(
            flights.read(1, failing, "gone".into()),
            flights.read(2, || async { Ok(5) }, "gone".into())
        );
        assert_eq!(a.0, Err("refused".into()));
        assert_eq!(b.0, Ok(5));
    }

    #[tokio::test]
    async fn a_conversation_has_at_most_its_limit_of_turns() {
        let gate = ConversationGate::new(2);
        let (one, waited_one) = gate.turn(9).await;
        let (two, waited_two) = gate.turn(9).await;
        assert!(!waited_one && !waited_two);
        let third = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.turn(9).await.1 })
        };
        // The test runtime has one thread: yielding lets the third read
        // run until it waits.
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "a third read waits while two are out");
        // Another conversation is not held up.
        let (_other, waited_other) = gate.turn(10).await;
        assert!(!waited_other);
        drop(one);
        assert!(
            third.await.expect("third"),
            "the third read waited its turn"
        );
        drop(two);
        drop(_other);
        assert_eq!(gate.busy(), 0, "idle conversations hold no state");
    }
}
