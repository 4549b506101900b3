//! Batches concurrent client writes into one Raft entry.
//!
//! openraft 0.9 waits for each append to be flushed before it takes the next one, so one
//! entry per client write would cost one fsync per write. The proposer instead sends one
//! entry at a time and, while it is being written, gathers every write that arrives; the next
//! entry carries them all. Under load one fsync covers many writes (etcd batches the same
//! way); a lone client still pays one fsync per write and waits no longer than that.

use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::types::{Applied, Member, MemberId, Proposal, Raft};
use crate::proto::cairnpb::{RaftBatch, RaftRequest};

/// Most requests in one entry; a bound so that one entry never grows without limit.
const MAX_BATCH_REQUESTS: usize = 1024;
/// Most bytes of requests in one entry.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Writes waiting for the next entry before callers are pushed back.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Entries in flight at once. One: the next entry is cut only when the last is applied, so
/// under load each entry carries a whole replication round's writes. A 3-member cluster at 64
/// clients spent 10% less CPU per put than with two in flight (23 against 15 writes per
/// entry); one member was unchanged (docs/benchmarks.md, seventh session).
const IN_FLIGHT: usize = 1;

pub type WriteError = RaftError<MemberId, ClientWriteError<MemberId, Member>>;

struct Pending {
    request: RaftRequest,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// A handle to the member's proposer task; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the proposer task for `raft`. It ends when every handle is dropped.
    pub fn start(raft: Raft) -> Proposer {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(raft, receiver));
        Proposer { queue }
    }

    /// Replicates `request` and returns the state machine's answer to it.
    pub async fn propose(&self, request: RaftRequest) -> Result<Applied, WriteError> {
        let answer = self.enqueue(request).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Replicates `requests` (writes a follower forwarded together), in their order, and
    /// returns one answer per request. They are queued before any is awaited, so they share
    /// entries with each other and with local writes.
    pub async fn propose_all(
        &self,
        requests: Vec<RaftRequest>,
    ) -> Vec<Result<Applied, WriteError>> {
        let mut queued = Vec::with_capacity(requests.len());
        for request in requests {
            queued.push(self.enqueue(request).await);
        }
        let mut answers = Vec::with_capacity(queued.len());
        for answer in queued {
            answers.push(match answer {
                Ok(answer) => match answer.await {
                    Ok(result) => result,
                    Err(_) => Err(stopped()),
                },
                Err(error) => Err(error),
            });
        }
        answers
    }

    async fn enqueue(
        &self,
        request: RaftRequest,
    ) -> Result<oneshot::Receiver<Result<Applied, WriteError>>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| stopped())?;
        Ok(answer)
    }
}

fn stopped() -> WriteError {
    RaftError::Fatal(openraft::error::Fatal::Stopped)
}

async fn run(raft: Raft, mut receiver: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = receiver.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.request.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match receiver.try_recv() {
                Ok(next) => {
                    bytes += next.request.encoded_len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.request, pending.reply))
            .unzip();
        let raft = raft.clone();
        tokio::spawn(async move {
            let written = raft.client_write(Proposal(RaftBatch { requests })).await;
            drop(slot);
            match written {
                Ok(written) => {
                    let mut answers = written.data.0.into_iter();
                    for reply in replies {
                        let _ = reply.send(Ok(answers.next().unwrap_or(Applied::Nothing)));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
