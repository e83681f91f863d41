//! Single-flight reads: identical concurrent reads share one backend
//! request, and a conversation has a bounded number of backend reads in
//! flight. Reads that differ only in who asks (a page of a group read by
//! many members) share one request too: each reader is a *rider* of the
//! request, which asks for all of its riders at once.
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

/// The flights of one kind of read, by key; `R` is what a reader adds
/// to the request it boards (`()` when identical reads share it).
pub(crate) struct Flights<K, R, T, E> {
    slots: Mutex<HashMap<K, Slot<R, T, E>>>,
    /// Most riders of one request: a reader that finds the next request
    /// full sends one of its own.
    max_riders: usize,
}

/// A key with a request in flight, and the readers waiting for the next.
struct Slot<R, T, E> {
    next: Option<Next<R, T, E>>,
}

/// The request that goes out when the one in flight ends.
struct Next<R, T, E> {
    sender: watch::Sender<Outcome<T, E>>,
    riders: Vec<R>,
}

/// How a reader came to its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boarding {
    /// It started a request of its own (no request for the key was out).
    Led,
    /// It joined the request that goes out next, with other readers.
    Joined,
}

impl<K, R, T, E> Flights<K, R, T, E> {
    /// Flights whose requests carry at most `max_riders` (at least 1).
    pub(crate) fn new(max_riders: usize) -> Self {
        Flights {
            slots: Mutex::new(HashMap::new()),
            max_riders: max_riders.max(1),
        }
    }
}

impl<K, R, T, E> Flights<K, R, T, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    R: PartialEq + Send + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// The answer of a request for `key` sent after this call began, with
    /// `rider` among its riders: `fetch(riders)`'s, run by a task of its
    /// own (so a reader that gives up does not cancel it for the others).
    /// `gone` is the error when that task ends without an answer (it
    /// panicked).
    pub(crate) async fn read<F, Fut>(
        self: &Arc<Self>,
        key: K,
        rider: R,
        fetch: F,
        gone: E,
    ) -> (Result<T, E>, Boarding)
    where
        F: Fn(Vec<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        /// Where a reader found itself.
        enum Found<R, T, E> {
            Boarded(watch::Receiver<Outcome<T, E>>),
            Full(R),
            Free(R),
        }
        let boarding = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let found = match slots.get_mut(&key) {
                None => Found::Free(rider),
                Some(slot) => {
                    let next = slot.next.get_or_insert_with(|| Next {
                        sender: watch::channel(None).0,
                        riders: Vec::new(),
                    });
                    if next.riders.contains(&rider) {
                        Found::Boarded(next.sender.subscribe())
                    } else if next.riders.len() < self.max_riders {
                        next.riders.push(rider);
                        Found::Boarded(next.sender.subscribe())
                    } else {
                        Found::Full(rider)
                    }
                }
            };
            match found {
                Found::Boarded(receiver) => Ok((receiver, Boarding::Joined)),
                Found::Full(rider) => Err(rider),
                Found::Free(rider) => {
                    let (sender, receiver) = watch::channel(None);
                    slots.insert(key.clone(), Slot { next: None });
                    let flights = Arc::clone(self);
                    tokio::spawn(flights.fly(key, sender, vec![rider], fetch.clone()));
                    Ok((receiver, Boarding::Led))
                }
            }
        };
        let (mut answer, boarding) = match boarding {
            Ok(boarded) => boarded,
            // The next request is full: this reader goes alone, outside
            // the key's turn.
            Err(rider) => return (fetch(vec![rider]).await, Boarding::Led),
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
        mut riders: Vec<R>,
        fetch: F,
    ) where
        F: Fn(Vec<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // Whatever ends this task, the key is free again afterwards.
        let mut landing = Landing {
            flights: &self,
            key: key.clone(),
            landed: false,
        };
        loop {
            let answer = fetch(std::mem::take(&mut riders)).await;
            sender.send_replace(Some(answer));
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get_mut(&key).and_then(|slot| slot.next.take()) {
                Some(next) => (sender, riders) = (next.sender, next.riders),
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

    /// Readers waiting for `key`'s next request.
    #[cfg(test)]
    fn boarded(&self, key: &K) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .get(key)
            .and_then(|slot| slot.next.as_ref())
            .map_or(0, |next| next.sender.receiver_count())
    }

    /// Keys with a request in flight (for tests and figures).
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Frees a key whose flying task ended without landing (its fetch
/// panicked): the senders dropped with it end their readers' waits with
/// `gone`.
struct Landing<'a, K: Hash + Eq, R, T, E> {
    flights: &'a Flights<K, R, T, E>,
    key: K,
    landed: bool,
}

impl<K: Hash + Eq, R, T, E> Drop for Landing<'_, K, R, T, E> {
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

    type Answer = std::pin::Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

    /// A fetch that counts its calls and answers the count once the test
    /// lets it (a permit of `gate` per request), so readers board requests
    /// while they are out, whatever the machine's speed.
    fn gated(
        calls: &Arc<AtomicU64>,
        gate: &Arc<Semaphore>,
    ) -> impl Fn(Vec<()>) -> Answer + Send + Sync + Clone + 'static {
        let (calls, gate) = (Arc::clone(calls), Arc::clone(gate));
        move |_| {
            let (calls, gate) = (Arc::clone(&calls), Arc::clone(&gate));
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
                Ok(n)
            })
        }
    }

    fn flights<R>() -> Arc<Flights<u64, R, u64, String>> {
        Arc::new(Flights::new(usize::MAX))
    }

    /// Waits (bounded) until `holds` does, letting the spawned readers run.
    async fn until(what: &str, holds: impl Fn() -> bool) {
        imstore_testkit::eventually_async(what, std::time::Duration::from_secs(30), || {
            let held = holds();
            async move {
                if held {
                    Ok(())
                } else {
                    Err("not yet")
                }
            }
        })
        .await
        .expect(what);
    }

    #[tokio::test]
    async fn concurrent_readers_share_two_requests() {
        let flights = flights();
        let (calls, gate) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
        let mut readers = Vec::new();
        for _ in 0..500 {
            let (flights, fetch) = (Arc::clone(&flights), gated(&calls, &gate));
            readers.push(tokio::spawn(async move {
                flights.read(7, (), fetch, "gone".to_owned()).await
            }));
        }
        until("499 readers wait for the second request", || {
            flights.boarded(&7) == 499
        })
        .await;
        gate.add_permits(10);
        let mut answers = Vec::new();
        for reader in readers {
            answers.push(reader.await.expect("reader"));
        }
        // The first reader's request, and the one all the others boarded.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let led = answers.iter().filter(|(_, b)| *b == Boarding::Led).count();
        assert_eq!(led, 1);
        assert!(answers
            .iter()
            .all(|(a, _)| matches!(a, Ok(n) if (1..=2).contains(n))));
        assert_eq!(flights.in_flight(), 0, "the key is free once answered");
    }

    #[tokio::test]
    async fn a_reader_never_takes_a_request_sent_before_it_began() {
        let flights = flights();
        let (calls, gate) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
        let first = {
            let (flights, fetch) = (Arc::clone(&flights), gated(&calls, &gate));
            tokio::spawn(async move { flights.read(1, (), fetch, "gone".into()).await })
        };
        until("the first request is out", || {
            calls.load(Ordering::SeqCst) == 1
        })
        .await;
        let late = {
            let (flights, fetch) = (Arc::clone(&flights), gated(&calls, &gate));
            tokio::spawn(async move { flights.read(1, (), fetch, "gone".into()).await })
        };
        until("the late reader waits", || flights.boarded(&1) == 1).await;
        gate.add_permits(2);
        let (late, boarding) = late.await.expect("late");
        assert_eq!(boarding, Boarding::Joined);
        assert_eq!(late, Ok(2), "the late reader waited for the next request");
        assert_eq!(first.await.expect("first").0, Ok(1));
    }

    #[tokio::test]
    async fn different_keys_fly_apart_and_errors_reach_every_reader() {
        let flights = flights();
        let failing = |_| async { Err::<u64, String>("refused".into()) };
        let (a, b) = tokio::join!(
            flights.read(1, (), failing, "gone".into()),
            flights.read(2, (), |_| async { Ok(5) }, "gone".into())
        );
        assert_eq!(a.0, Err("refused".into()));
        assert_eq!(b.0, Ok(5));
    }

    #[tokio::test]
    async fn riders_of_one_request_are_asked_for_together_up_to_the_limit() {
        let flights: Arc<Flights<u64, u64, Vec<u64>, String>> = Arc::new(Flights::new(3));
        let gate = Arc::new(Semaphore::new(0));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let fetch = {
            let (asked, gate) = (Arc::clone(&asked), Arc::clone(&gate));
            move |riders: Vec<u64>| {
                let (asked, gate) = (Arc::clone(&asked), Arc::clone(&gate));
                async move {
                    asked.lock().expect("asked").push(riders.clone());
                    gate.acquire().await.map_err(|e| e.to_string())?.forget();
                    Ok(riders)
                }
            }
        };
        // Rider 1 leads; 2, 3, 3 again and 4 board the next request; 5
        // finds it full (3 riders) and goes alone.
        let riders = [1, 2, 3, 3, 4, 5];
        let mut readers = Vec::new();
        for (n, rider) in riders.into_iter().enumerate() {
            let (reading, fetch) = (Arc::clone(&flights), fetch.clone());
            readers.push(tokio::spawn(async move {
                reading.read(0, rider, fetch, "gone".into()).await
            }));
            if n == 0 {
                until("the first request is out", || {
                    asked.lock().expect("asked").len() == 1
                })
                .await;
            } else if n < 5 {
                until("the reader boards", || flights.boarded(&0) == n).await;
            }
        }
        until("the last reader asks alone", || {
            asked.lock().expect("asked").len() == 2
        })
        .await;
        gate.add_permits(3);
        for (reader, rider) in readers.into_iter().zip(riders) {
            let (answer, _) = reader.await.expect("reader");
            let asked_with = answer.expect("answer");
            assert!(asked_with.contains(&rider), "rider {rider} was asked for");
        }
        let mut asked = asked.lock().expect("asked").clone();
        asked.sort();
        assert_eq!(asked, vec![vec![1], vec![2, 3, 4], vec![5]]);
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
        let (other, waited_other) = gate.turn(10).await;
        assert!(!waited_other);
        drop(one);
        assert!(
            third.await.expect("third"),
            "the third read waited its turn"
        );
        drop(two);
        drop(other);
        assert_eq!(gate.busy(), 0, "idle conversations hold no state");
    }
}
