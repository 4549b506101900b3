//! Carries writes that reach a follower to the leader, many in one message.
//!
//! One call per write would cost each forwarded write a gRPC exchange on both members;
//! under load that overhead, not Raft, limited a cluster whose clients spread over every
//! member. The forwarder keeps one stream open to the leader with a few batches on it at
//! once and, while they travel, gathers what arrives; the next batch carries it all. A lone
//! write still goes out at once. The leader answers a stream's batches in their order.

use std::collections::VecDeque;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::network::Peers;
use super::types::{Applied, Member};
use crate::api::errors;
use crate::proto::cairnpb::{ProposeResponse, RaftBatch, RaftRequest};

/// Most requests in one batch, and most bytes: the leader's proposer takes them as they come.
const MAX_BATCH_REQUESTS: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Writes waiting for the next batch before callers are pushed back.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Batches on their way at once, so one is gathered while the previous ones are replicated.
const IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<Applied, Status>>;

struct Forward {
    leader: Member,
    request: RaftRequest,
    reply: Reply,
}

/// A handle to the member's forwarder task; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Forward>,
}

impl Forwarder {
    /// Starts the forwarder task. It ends when every handle is dropped.
    pub fn start(peers: Peers) -> Forwarder {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(peers, receiver));
        Forwarder { queue }
    }

    /// Has `leader` replicate `request`; returns the state machine's answer. A leader that
    /// cannot be reached answers etcd's "no leader", so the client retries.
    pub async fn forward(&self, leader: &Member, request: RaftRequest) -> Result<Applied, Status> {
        let (reply, answer) = oneshot::channel();
        let forward = Forward {
            leader: leader.clone(),
            request,
            reply,
        };
        self.queue
            .send(forward)
            .await
            .map_err(|_| errors::stopped())?;
        answer.await.map_err(|_| errors::stopped())?
    }
}

/// A gathered batch: the writes, and where each one's answer goes.
struct Batch {
    requests: Vec<RaftRequest>,
    replies: Vec<Reply>,
}

/// The stream to one leader, run by its own task.
struct Link {
    leader: Member,
    batches: mpsc::Sender<Batch>,
}

async fn run(peers: Peers, mut receiver: mpsc::Receiver<Forward>) {
    let mut link: Option<Link> = None;
    // A write for another leader than the batch's (the leader changed meanwhile) starts the
    // next batch.
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match receiver.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let leader = first.leader.clone();
        let mut bytes = first.request.encoded_len();
        let mut gathered = vec![first];
        while gathered.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match receiver.try_recv() {
                Ok(next) if next.leader == leader => {
                    bytes += next.request.encoded_len();
                    gathered.push(next);
                }
                Ok(next) => {
                    held = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let (requests, replies) = gathered
            .into_iter()
            .map(|forward| (forward.request, forward.reply))
            .unzip();
        let batch = Batch { requests, replies };
        // A new leader, or a stream that failed, gets a new link; an old link ends once its
        // batches are answered.
        let current = link
            .as_ref()
            .filter(|link| link.leader == leader && !link.batches.is_closed());
        let batches = match current {
            Some(link) => link.batches.clone(),
            None => {
                let (batches, queued) = mpsc::channel(1);
                tokio::spawn(carry(peers.clone(), leader.clone(), queued));
                link = Some(Link {
                    leader,
                    batches: batches.clone(),
                });
                batches
            }
        };
        // Waits while the link has its fill of batches on their way: meanwhile the queue
        // gathers the next batch.
        if let Err(mpsc::error::SendError(batch)) = batches.send(batch).await {
            fail(batch.replies, &errors::no_leader());
        }
    }
}

/// Sends the batches for `leader` on one stream and hands each write its answer. Ends when
/// the stream fails (every write on its way or waiting gets the error) or when the last
/// batch is answered after the forwarder moved on to another link.
async fn carry(peers: Peers, leader: Member, mut batches: mpsc::Receiver<Batch>) {
    let Some(first) = batches.recv().await else {
        return;
    };
    let (requests, queued) = mpsc::channel(IN_FLIGHT);
    let mut pending = VecDeque::with_capacity(IN_FLIGHT);
    let _ = requests.try_send(RaftBatch {
        requests: first.requests,
    });
    pending.push_back(first.replies);
    let opened = match peers.client(&leader) {
        Ok(mut client) => client
            .propose(ReceiverStream::new(queued))
            .await
            .map(tonic::Response::into_inner)
            .map_err(errors::from_peer_status),
        Err(_) => Err(errors::no_leader()),
    };
    let status = match opened {
        Ok(answers) => relay(&requests, answers, &mut batches, &mut pending).await,
        Err(status) => Some(status),
    };
    let Some(status) = status else {
        return;
    };
    for replies in pending {
        fail(replies, &status);
    }
    batches.close();
    while let Some(batch) = batches.recv().await {
        fail(batch.replies, &status);
    }
}

/// Moves batches onto the stream and answers off it until the forwarder has moved on and
/// nothing is left on its way (`None`), or the stream fails (its error).
async fn relay(
    requests: &mpsc::Sender<RaftBatch>,
    mut answers: Streaming<ProposeResponse>,
    batches: &mut mpsc::Receiver<Batch>,
    pending: &mut VecDeque<Vec<Reply>>,
) -> Option<Status> {
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open && pending.len() < IN_FLIGHT => match batch {
                Some(batch) => {
                    // The channel has room for IN_FLIGHT batches, and no more are on their
                    // way: this cannot wait.
                    if requests.send(RaftBatch { requests: batch.requests }).await.is_err() {
                        fail(batch.replies, &errors::no_leader());
                        return Some(errors::no_leader());
                    }
                    pending.push_back(batch.replies);
                }
                None if pending.is_empty() => return None,
                None => open = false,
            },
            answer = answers.message(), if !pending.is_empty() => match answer {
                Ok(Some(response)) => {
                    let replies = pending.pop_front().unwrap_or_default();
                    deliver(replies, response);
                    if !open && pending.is_empty() {
                        return None;
                    }
                }
                Ok(None) => return Some(errors::no_leader()),
                Err(status) => return Some(errors::from_peer_status(status)),
            },
        }
    }
}

/// Hands each write of a batch its answer from the leader's response.
fn deliver(replies: Vec<Reply>, response: ProposeResponse) {
    if response.applied.len() != replies.len() {
        let status = Status::internal(format!(
            "cairn: the leader answered {} of {} forwarded writes",
            response.applied.len(),
            replies.len()
        ));
        return fail(replies, &status);
    }
    for (reply, applied) in replies.into_iter().zip(response.applied) {
        let answer = postcard::from_bytes(&applied).map_err(|e| {
            Status::internal(format!("cairn: undecodable answer from the leader: {e}"))
        });
        let _ = reply.send(answer);
    }
}

fn fail(replies: Vec<Reply>, status: &Status) {
    for reply in replies {
        let _ = reply.send(Err(status.clone()));
    }
}
