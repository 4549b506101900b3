//! Carries writes that reach a follower to the leader, many in one peer call.
//!
//! One call per write would cost each forwarded write a gRPC exchange on both members;
//! under load that overhead, not Raft, limited a cluster whose clients spread over every
//! member. The forwarder keeps a few calls in flight and, while they travel, gathers what
//! arrives; the next call carries it all. A lone write still goes out at once.

use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use super::network::Peers;
use super::types::{Applied, Member};
use crate::api::errors;
use crate::proto::cairnpb::{RaftBatch, RaftRequest};

/// Most requests in one call, and most bytes: the leader's proposer takes them as they come.
const MAX_BATCH_REQUESTS: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Writes waiting for the next call before callers are pushed back.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Calls in flight at once, so a batch is gathered while the previous ones are replicated.
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

async fn run(peers: Peers, mut receiver: mpsc::Receiver<Forward>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
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
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let leader = first.leader.clone();
        let mut bytes = first.request.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match receiver.try_recv() {
                Ok(next) if next.leader == leader => {
                    bytes += next.request.encoded_len();
                    batch.push(next);
                }
                Ok(next) => {
                    held = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let peers = peers.clone();
        tokio::spawn(async move {
            send(&peers, &leader, batch).await;
            drop(slot);
        });
    }
}

/// One peer call carrying `batch`; every write gets its own answer or the call's error.
async fn send(peers: &Peers, leader: &Member, batch: Vec<Forward>) {
    let (requests, replies): (Vec<_>, Vec<Reply>) = batch
        .into_iter()
        .map(|forward| (forward.request, forward.reply))
        .unzip();
    let answers = match call(peers, leader, requests).await {
        Ok(answers) if answers.len() == replies.len() => answers,
        Ok(answers) => {
            let status = Status::internal(format!(
                "cairn: the leader answered {} of {} forwarded writes",
                answers.len(),
                replies.len()
            ));
            replies.iter().map(|_| Err(status.clone())).collect()
        }
        Err(status) => replies.iter().map(|_| Err(status.clone())).collect(),
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

async fn call(
    peers: &Peers,
    leader: &Member,
    requests: Vec<RaftRequest>,
) -> Result<Vec<Result<Applied, Status>>, Status> {
    let mut client = peers.client(leader).map_err(|_| errors::no_leader())?;
    let response = client
        .propose(RaftBatch { requests })
        .await
        .map_err(errors::from_peer_status)?;
    Ok(response
        .into_inner()
        .applied
        .iter()
        .map(|applied| {
            postcard::from_bytes(applied).map_err(|e| {
                Status::internal(format!("cairn: undecodable answer from the leader: {e}"))
            })
        })
        .collect())
}
