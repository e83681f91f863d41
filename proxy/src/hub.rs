//! Push: the hub between the engine's commit listener and `Watch` streams.
//!
//! The engine tells the hub, on its commit thread, which inboxes and big
//! conversations each durable group advanced. The hub forwards a small
//! notification to every subscriber watching them, with `try_send` into a
//! bounded buffer: a slow subscriber never slows writers. One whose buffer
//! is full is dropped from the hub; its stream drains what it has, then
//! yields `Resync` and ends, and the subscriber resumes from its cursor.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use imstore_engine::CommitNotice;
use imstore_proto::v1::{
    notification, ConversationAdvanced, InboxAdvanced, Notification, ReactionChanged, Resync,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;

/// One `Watch` stream's registration.
pub struct Subscriber {
    id: u64,
    users: HashSet<u64>,
    /// Grows as watched users join conversations.
    conversations: Mutex<HashSet<u64>>,
    /// While the watch reads where things stand (`Some`): the (user,
    /// conversation) views that became remote late, not followed then.
    /// The read may still find and follow them; [`Subscriber::settle`]
    /// judges them after it. Locked after `conversations`.
    doubts: Mutex<Option<Vec<(u64, u64)>>>,
    tx: mpsc::Sender<Notification>,
    overflowed: AtomicBool,
}

impl Subscriber {
    /// Queues a notification; on a full buffer marks the subscriber for
    /// resync. Returns `false` when the subscriber is gone or overflowed.
    pub fn offer(&self, notification: Notification) -> bool {
        match self.tx.try_send(notification) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Follows `conversations` from now on as well. Returns `true` when any
    /// of them was not followed yet.
    pub fn follow(&self, conversations: impl IntoIterator<Item = u64>) -> bool {
        let mut followed = lock(&self.conversations);
        let before = followed.len();
        followed.extend(conversations);
        followed.len() > before
    }

    /// Ends the watch's start: from now on a late remote view that is not
    /// followed ends the subscription at once. Returns one noted during
    /// the start that is still not followed, if any: advances of it may
    /// have been missed, so the watch must end with a resync.
    pub fn settle(&self) -> Option<(u64, u64)> {
        let followed = lock(&self.conversations);
        let doubts = lock(&self.doubts).take().unwrap_or_default();
        doubts.into_iter().find(|(_, c)| !followed.contains(c))
    }

    /// Ends the subscription: what is buffered is still delivered, then a
    /// `Resync` with `reason` (or, on a full buffer, the overflow's).
    pub fn end(&self, reason: String) {
        self.overflowed.store(true, Ordering::Release);
        let _ = self.tx.try_send(resync(reason));
    }

    /// Completes once the subscriber's stream is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// All current subscribers.
#[derive(Default)]
pub struct Hub {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    next_id: AtomicU64,
    /// Woken when a commit wrote outbox records.
    deliveries: std::sync::OnceLock<Arc<crate::delivery::DeliveryWakes>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// Active subscribers.
    pub fn len(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// `true` with no subscriber.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a subscriber with a buffer of `buffer` notifications.
    pub fn subscribe(
        self: &Arc<Self>,
        users: HashSet<u64>,
        conversations: HashSet<u64>,
        buffer: usize,
    ) -> (Arc<Subscriber>, WatchStream) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let subscriber = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            users,
            conversations: Mutex::new(conversations),
            doubts: Mutex::new(Some(Vec::new())),
            tx,
            overflowed: AtomicBool::new(false),
        });
        lock(&self.subscribers).push(Arc::clone(&subscriber));
        let stream = WatchStream {
            rx,
            subscriber: Arc::clone(&subscriber),
            hub: Arc::clone(self),
            finished: false,
        };
        (subscriber, stream)
    }

    fn remove(&self, id: u64) {
        lock(&self.subscribers).retain(|s| s.id != id);
    }

    /// Ends every stream with a `Resync` (the server is shutting down):
    /// graceful shutdown waits for streams, and a watch never ends alone.
    pub fn close_all(&self, reason: &str) {
        let subscribers = std::mem::take(&mut *lock(&self.subscribers));
        for sub in subscribers {
            sub.end(reason.to_owned());
        }
    }

    /// From now on, a commit that writes outbox records wakes its shard's
    /// drain in `wakes`. Set once; later calls change nothing.
    pub fn wake_deliveries(&self, wakes: Arc<crate::delivery::DeliveryWakes>) {
        let _ = self.deliveries.set(wakes);
    }

    /// Forwards one commit's changes. Runs on the engine's commit thread:
    /// never blocks.
    pub fn publish(&self, notice: &CommitNotice) {
        if notice.outbox {
            if let Some(wakes) = self.deliveries.get() {
                wakes.wake(u64::from(notice.shard));
            }
        }
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|sub| {
            let mut conversations = lock(&sub.conversations);
            for &(user, conversation) in &notice.joined {
                if sub.users.contains(&user) {
                    conversations.insert(conversation);
                }
            }
            // A big conversation the subscriber did not follow may have
            // advanced before its view got here: only a sync can tell
            // (unless the watch is starting, and its read finds it).
            for &(user, conversation) in &notice.remote_views {
                if sub.users.contains(&user) && !conversations.contains(&conversation) {
                    if let Some(doubts) = lock(&sub.doubts).as_mut() {
                        doubts.push((user, conversation));
                        continue;
                    }
                    sub.end(unfollowed(user, conversation));
                    return false;
                }
            }
            for &(user, head) in &notice.inbox_heads {
                let muted = notice.muted_inboxes.binary_search(&user).is_ok();
                if sub.users.contains(&user)
                    && !sub.offer(inbox_advanced(user, head, notice.shard.into(), muted))
                {
                    return false;
                }
            }
            for &(conversation, seq, change) in &notice.conversations {
                if conversations.contains(&conversation)
                    && !sub.offer(conversation_advanced(
                        conversation,
                        seq,
                        change,
                        notice.shard.into(),
                    ))
                {
                    return false;
                }
            }
            for &(conversation, seq) in &notice.reacted {
                if conversations.contains(&conversation)
                    && !sub.offer(reaction_changed(conversation, seq, notice.shard.into()))
                {
                    return false;
                }
            }
            true
        });
    }
}

/// Why a watch ends when `user` got big conversation `conversation`
/// without the watch following it.
pub fn unfollowed(user: u64, conversation: u64) -> String {
    format!(
        "user {user} has a new big conversation {conversation}, which this watch did not \
         follow; sync and watch again"
    )
}

/// "Sync and watch again": ends the stream it is delivered on.
pub fn resync(reason: String) -> Notification {
    Notification {
        event: Some(notification::Event::Resync(Resync { reason })),
    }
}

/// "User U's inbox in shard S advanced to N" (`muted`: with entries of
/// muted conversations only).
pub fn inbox_advanced(user: u64, inbox_seq: u64, shard: u32, muted: bool) -> Notification {
    Notification {
        event: Some(notification::Event::Inbox(InboxAdvanced {
            user,
            inbox_seq,
            shard,
            muted,
        })),
    }
}

/// "Big conversation C (of shard S) advanced to seq N."
pub fn conversation_advanced(conversation: u64, seq: u64, change: u64, shard: u32) -> Notification {
    Notification {
        event: Some(notification::Event::Conversation(ConversationAdvanced {
            conversation,
            seq,
            change,
            shard,
        })),
    }
}

/// "Message S of conversation C (of shard H) has new reactions."
pub fn reaction_changed(conversation: u64, seq: u64, shard: u32) -> Notification {
    Notification {
        event: Some(notification::Event::Reaction(ReactionChanged {
            conversation,
            seq,
            shard,
        })),
    }
}

/// The stream a `Watch` call returns.
pub struct WatchStream {
    rx: mpsc::Receiver<Notification>,
    subscriber: Arc<Subscriber>,
    hub: Arc<Hub>,
    finished: bool,
}

impl Stream for WatchStream {
    type Item = Result<Notification, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.subscriber.overflowed.load(Ordering::Acquire) {
            // Drop out of the hub so the sender side closes; what is
            // buffered is still delivered, then the resync.
            self.hub.remove(self.subscriber.id);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(n)) => {
                // A resync (overflow, or the server shutting down) ends the stream.
                if matches!(n.event, Some(notification::Event::Resync(_))) {
                    self.finished = true;
                }
                Poll::Ready(Some(Ok(n)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            // Everything buffered was delivered; what overflowed was not.
            Poll::Pending if self.subscriber.overflowed.load(Ordering::Acquire) => {
                self.finished = true;
                Poll::Ready(Some(Ok(Notification {
                    event: Some(notification::Event::Resync(Resync {
                        reason: "the subscriber fell behind; sync and watch again".into(),
                    })),
                })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub.remove(self.subscriber.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn notice(user: u64, head: u64) -> CommitNotice {
        CommitNotice {
            inbox_heads: vec![(user, head)],
            ..CommitNotice::default()
        }
    }

    async fn next(stream: &mut WatchStream) -> Option<Notification> {
        poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx))
            .await
            .map(|r| r.expect("ok"))
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_what_fit_then_a_resync_and_writers_never_wait() {
        let hub = Arc::new(Hub::default());
        let (_sub, mut stream) = hub.subscribe([7].into(), HashSet::new(), 2);
        // Five commits with nobody reading: publish never blocks.
        for head in 1..=5 {
            hub.publish(&notice(7, head));
        }
        assert_eq!(hub.len(), 0, "the overflowed subscriber left the hub");
        assert_eq!(
            next(&mut stream).await,
            Some(inbox_advanced(7, 1, 0, false))
        );
        assert_eq!(
            next(&mut stream).await,
            Some(inbox_advanced(7, 2, 0, false))
        );
        let resync = next(&mut stream).await.expect("a resync");
        assert!(matches!(resync.event, Some(notification::Event::Resync(_))));
        assert_eq!(next(&mut stream).await, None);
    }

    #[tokio::test]
    async fn only_watched_users_and_conversations_are_notified() {
        let hub = Arc::new(Hub::default());
        let (_sub, mut stream) = hub.subscribe([1].into(), [9].into(), 8);
        hub.publish(&CommitNotice {
            shard: 0,
            inbox_heads: vec![(2, 5), (1, 3)],
            muted_inboxes: vec![],
            conversations: vec![(8, 1, 1), (9, 4, 2)],
            joined: vec![],
            remote_views: vec![],
            reacted: vec![(8, 1), (9, 3)],
            outbox: false,
        });
        assert_eq!(
            next(&mut stream).await,
            Some(inbox_advanced(1, 3, 0, false))
        );
        assert_eq!(
            next(&mut stream).await,
            Some(conversation_advanced(9, 4, 2, 0))
        );
        assert_eq!(next(&mut stream).await, Some(reaction_changed(9, 3, 0)));
        // User 1 joins conversation 8 (in shard 3): followed from then on,
        // notified with its shard.
        hub.publish(&CommitNotice {
            shard: 3,
            joined: vec![(1, 8)],
            conversations: vec![(8, 2, 3)],
            ..CommitNotice::default()
        });
        assert_eq!(
            next(&mut stream).await,
            Some(conversation_advanced(8, 2, 3, 3))
        );
        hub.close_all("bye");
        let end = next(&mut stream).await.expect("a resync");
        assert!(matches!(end.event, Some(notification::Event::Resync(_))));
        assert_eq!(next(&mut stream).await, None);
    }

    #[tokio::test]
    async fn a_late_remote_view_not_followed_ends_the_watch_with_a_resync() {
        let hub = Arc::new(Hub::default());
        let (sub, mut stream) = hub.subscribe([1].into(), [9].into(), 8);
        // While the watch starts, one not followed is noted; the start's
        // read found it (followed now): nothing to tell.
        hub.publish(&CommitNotice {
            remote_views: vec![(1, 7)],
            ..CommitNotice::default()
        });
        sub.follow([7]);
        assert_eq!(sub.settle(), None);
        // Followed already, or another user's: nothing to tell.
        hub.publish(&CommitNotice {
            remote_views: vec![(1, 9), (2, 5)],
            inbox_heads: vec![(1, 4)],
            ..CommitNotice::default()
        });
        assert_eq!(
            next(&mut stream).await,
            Some(inbox_advanced(1, 4, 0, false))
        );
        // Joined in a shard this hub hears (in the same notice or before):
        // followed from the join, so nothing was missed.
        hub.publish(&CommitNotice {
            joined: vec![(1, 6)],
            remote_views: vec![(1, 6)],
            ..CommitNotice::default()
        });
        assert_eq!(hub.len(), 1);
        // Not followed: advances may have been missed.
        hub.publish(&CommitNotice {
            remote_views: vec![(1, 5)],
            ..CommitNotice::default()
        });
        assert_eq!(hub.len(), 0, "the subscriber left the hub");
        match next(&mut stream).await.and_then(|n| n.event) {
            Some(notification::Event::Resync(r)) => {
                assert!(r.reason.contains("conversation 5"), "{}", r.reason)
            }
            other => panic!("expected a resync, got {other:?}"),
        }
        assert_eq!(next(&mut stream).await, None);

        // Noted while starting and not found by the start's read.
        let (sub, _stream) = hub.subscribe([1].into(), HashSet::new(), 8);
        hub.publish(&CommitNotice {
            remote_views: vec![(1, 4)],
            ..CommitNotice::default()
        });
        assert_eq!(sub.settle(), Some((1, 4)));
    }
}
