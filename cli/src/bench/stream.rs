//! The `send-stream` workload's client: one `SendStream` per connection,
//! shared by the clients on that connection. A client puts its request on
//! the stream and waits for the answer with its (conversation, client
//! message id), which one reader task per stream hands back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use imstore_proto::v1 as pb;
use pb::send_stream_response::Result as Answer;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Failure;

/// Requests one stream queues before its clients wait to send.
const QUEUE: usize = 1_024;

type Key = (u64, Vec<u8>);
type Waiting = Arc<Mutex<HashMap<Key, oneshot::Sender<Result<pb::SendResponse, Status>>>>>;

/// One open `SendStream`; cloned for each client on its connection.
#[derive(Clone)]
pub(super) struct StreamSender {
    requests: mpsc::Sender<pb::SendRequest>,
    waiting: Waiting,
}

impl StreamSender {
    /// Opens a stream on `channel` and starts its reader.
    pub(super) async fn open(channel: Channel) -> Result<Self, Failure> {
        let (requests, rx) = mpsc::channel(QUEUE);
        let answers = crate::access::client(channel)
            .send_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let waiting: Waiting = Arc::default();
        tokio::spawn(read_answers(answers, Arc::clone(&waiting)));
        Ok(StreamSender { requests, waiting })
    }

    /// Sends `request` on the stream and waits for its answer.
    pub(super) async fn send(&self, request: pb::SendRequest) -> Result<pb::SendResponse, Status> {
        let (tx, rx) = oneshot::channel();
        let key = (request.conversation, request.client_msg_id.clone());
        lock(&self.waiting).insert(key, tx);
        self.requests
            .send(request)
            .await
            .map_err(|_| Status::unavailable("the send stream is closed"))?;
        rx.await
            .map_err(|_| Status::unavailable("the send stream ended before this answer"))?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hands each answer to its waiting client; when the stream ends, the
/// clients still waiting are told so (their senders drop).
async fn read_answers(mut answers: tonic::Streaming<pb::SendStreamResponse>, waiting: Waiting) {
    while let Ok(Some(answer)) = answers.message().await {
        let key = (answer.conversation, answer.client_msg_id);
        let Some(tx) = lock(&waiting).remove(&key) else {
            continue;
        };
        let result = match answer.result {
            Some(Answer::Sent(sent)) => Ok(sent),
            Some(Answer::Error(e)) => Err(Status::new(Code::from(e.code), e.message)),
            None => Err(Status::internal("a stream answer with no result")),
        };
        let _ = tx.send(result);
    }
    lock(&waiting).clear();
}
