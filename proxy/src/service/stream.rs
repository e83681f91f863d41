//! `SendStream`: many sends over one HTTP/2 stream, for IM gateways.
//!
//! Each request is one unary `Send` (the same command through
//! [`Backend::submit`], so durable before its answer and deduplicated by
//! client message id); what the stream saves is the per-call HTTP/2 and
//! gRPC work. One task per stream reads requests, submits them, and writes
//! each answer as its write completes. Two promises shape it:
//!
//! - **Per conversation, stream order is seq order.** A backend whose
//!   submits apply in submit order ([`Backend::submits_in_order`]: one
//!   engine's commit pipeline) gets every request at once. Any other (raft
//!   proposals in flight side by side may commit out of order) gets one
//!   request per conversation at a time; the rest of that conversation's
//!   requests wait in the task, and other conversations are not held up.
//! - **Bounded.** At most [`MAX_IN_FLIGHT`] requests read and not yet
//!   answered; past that the task stops reading, and HTTP/2 flow control
//!   holds the sender back. A slow reader of answers stops the reading too.
//!
//! A failed request is answered in-band ([`pb::StreamError`], from the
//! status the unary call would have returned) and the stream goes on. A
//! broken stream stops the reading; writes already submitted still
//! complete, and a client that sends the unanswered ones again on a new
//! stream gets each written one back as a duplicate with its seq.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use imstore_engine::{Command, Outcome, SendMessage};
use imstore_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Status, Streaming};
use tonic_types::StatusExt;

use crate::convert::{now_ms, unexpected};
use crate::error::{to_status, ServiceError};
use crate::{Backend, Metrics};

/// Requests of one stream read and not yet answered, at most.
pub const MAX_IN_FLIGHT: usize = 1_024;

/// Answers queued for a client that is slow to read them, at most.
const ANSWER_QUEUE: usize = 256;

/// The response stream of `SendStream`.
pub type SendStream = Pin<Box<dyn Stream<Item = Result<pb::SendStreamResponse, Status>> + Send>>;

/// The message of one `Send` request, stamped with the server's time.
/// The command a send request is: a plain send, or one that mentions.
pub(super) fn send_command(r: pb::SendRequest) -> Command {
    let message = SendMessage {
        conversation: r.conversation,
        sender: r.sender,
        client_msg_id: Bytes::from(r.client_msg_id),
        payload: Bytes::from(r.payload),
        timestamp_ms: now_ms(),
        receipt: r.receipt,
    };
    if r.mentions.is_empty() && !r.mention_everyone {
        Command::Send(message)
    } else {
        Command::SendMentioning {
            message,
            mentions: imstore_engine::codec::Mentions {
                everyone: r.mention_everyone,
                users: r.mentions,
            },
        }
    }
}

/// Serves one `SendStream` call: starts its task and returns its answers.
pub(super) fn open<B: Backend>(
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    incoming: Streaming<pb::SendRequest>,
) -> SendStream {
    let (answers, rx) = mpsc::channel(ANSWER_QUEUE);
    tokio::spawn(run(backend, metrics, incoming, answers));
    Box::pin(ReceiverStream::new(rx))
}

/// One completed write, back on the stream's task.
struct Completed {
    conversation: u64,
    client_msg_id: Bytes,
    started: Instant,
    result: Result<Outcome, ServiceError>,
}

async fn run<B: Backend>(
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    mut incoming: Streaming<pb::SendRequest>,
    answers: mpsc::Sender<Result<pb::SendStreamResponse, Status>>,
) {
    let in_order = backend.submits_in_order();
    let (completed_tx, mut completed) = mpsc::unbounded_channel::<Completed>();
    let submit = |request: pb::SendRequest| {
        let command = send_command(request);
        let (Command::Send(message) | Command::SendMentioning { message, .. }) = &command else {
            return;
        };
        // The answer's copy of the id shares the command's bytes.
        let (conversation, client_msg_id) = (message.conversation, message.client_msg_id.clone());
        let started = Instant::now();
        let tx = completed_tx.clone();
        metrics.hot.wrote(conversation);
        backend.submit(
            command,
            Box::new(move |result| {
                // The task is gone only once nothing is in flight.
                let _ = tx.send(Completed {
                    conversation,
                    client_msg_id,
                    started,
                    result,
                });
            }),
        );
    };
    // Read and not yet answered (submitted, or waiting behind their
    // conversation's request in flight).
    let mut unanswered = 0usize;
    // For a backend that may reorder: the conversations with a request in
    // flight, and the requests waiting behind it, in stream order.
    let mut held: HashMap<u64, VecDeque<pb::SendRequest>> = HashMap::new();
    let mut reading = true;
    let mut listening = true;
    while reading || unanswered > 0 {
        tokio::select! {
            // Answers first: they free room to read more.
            biased;
            Some(done) = completed.recv() => {
                unanswered -= 1;
                if !in_order {
                    if let Entry::Occupied(mut waiting) = held.entry(done.conversation) {
                        match waiting.get_mut().pop_front() {
                            Some(next) => submit(next),
                            None => {
                                waiting.remove();
                            }
                        }
                    }
                }
                let (response, code) = answer(done.conversation, done.client_msg_id, done.result);
                metrics.record("SendStream", done.started.elapsed(), code);
                // A client that stopped reading answers still has its
                // writes completed; they are just not told.
                if listening && answers.send(Ok(response)).await.is_err() {
                    listening = false;
                }
            }
            next = incoming.message(), if reading && unanswered < MAX_IN_FLIGHT => match next {
                Ok(Some(request)) => {
                    unanswered += 1;
                    if in_order {
                        submit(request);
                    } else {
                        match held.entry(request.conversation) {
                            Entry::Occupied(mut waiting) => waiting.get_mut().push_back(request),
                            Entry::Vacant(slot) => {
                                slot.insert(VecDeque::new());
                                submit(request);
                            }
                        }
                    }
                }
                // The client finished sending, or the stream broke: answer
                // what was read, then end.
                Ok(None) | Err(_) => reading = false,
            },
            else => break,
        }
    }
}

/// The response to one request, and its outcome for the metrics.
fn answer(
    conversation: u64,
    client_msg_id: Bytes,
    result: Result<Outcome, ServiceError>,
) -> (pb::SendStreamResponse, Result<(), tonic::Code>) {
    let result = match result {
        Ok(Outcome::Sent(sent)) => Ok(pb::send_stream_response::Result::Sent(pb::SendResponse {
            seq: sent.seq,
            duplicate: sent.duplicate,
        })),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(to_status(e)),
    };
    let code = result.as_ref().map(|_| ()).map_err(Status::code);
    let response = pb::SendStreamResponse {
        conversation,
        client_msg_id: client_msg_id.to_vec(),
        result: Some(result.unwrap_or_else(|status| {
            pb::send_stream_response::Result::Error(stream_error(&status))
        })),
    };
    (response, code)
}

/// What a failed unary call's status carries, as a message.
pub(crate) fn stream_error(status: &Status) -> pb::StreamError {
    let info = status.get_details_error_info();
    pb::StreamError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        metadata: info
            .map(|i| i.metadata.into_iter().collect())
            .unwrap_or_default(),
    }
}
