//! Batches concurrent client writes into Raft entries.
//!
//! One entry per client write would cost one log write and one replication round per write.
//! The proposer instead submits an entry and, while it is replicated, gathers every write
//! that arrives; the next entry carries them all (etcd batches the same way). A lone client
//! still gets an entry of its own at once.
//!
//! When the next entry is cut matters. Cut only once the previous one is applied, it reaches
//! openraft after the followers were told of the commit with an empty append, and waits for
//! that append's round trip before it can go out. Cut as soon as the previous one is
//! submitted, it is small and waits a whole round trip at the leader. So the next entry is
//! cut when a follower acknowledges the previous one: the peer network reports the
//! acknowledgement ([`Proposer::acknowledgements`]) before openraft hears of it, so the new
//! entry is in the log when openraft commits the previous one, and the commit index travels
//! with it. A member alone hears no acknowledgements and keeps one entry in flight.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use futures::FutureExt;
use openraft::error::{ClientWriteError, Fatal, RaftError};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::log_store::LogStore;
use super::types::{Applied, Member, MemberId, Proposal, Raft};
use crate::proto::cairnpb::{RaftBatch, RaftRequest};

/// Most requests in one entry; a bound so that one entry never grows without limit.
const MAX_BATCH_REQUESTS: usize = 1024;
/// Most bytes of requests in one entry.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Writes waiting for the next entry before callers are pushed back.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Entries in flight at once: the one being committed and applied, and the next, cut when a
/// follower acknowledged the first. Without an acknowledgement (one member alone) only one is.
const IN_FLIGHT: usize = 2;

pub type WriteError = RaftError<MemberId, ClientWriteError<MemberId, Member>>;

struct Pending {
    request: RaftRequest,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// A handle to the member's proposer task; cheap to clone. The task ends when every handle
/// is dropped.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
    shared: Arc<Shared>,
}

struct Shared {
    raft: Raft,
    log: LogStore,
    flight: Mutex<Flight>,
}

/// The queue and the entries on their way. The proposer task and the peer network both cut
/// entries from the queue, under this lock.
struct Flight {
    queue: mpsc::Receiver<Pending>,
    /// Entries submitted whose answers have not come back.
    entries: usize,
    /// The log's last index when the newest entry was submitted: a follower that
    /// acknowledges an index past it holds that entry.
    before_newest: u64,
    /// Whether a follower acknowledged the newest entry.
    newest_acknowledged: bool,
    /// The proposer task, while it waits for room for another entry.
    waiting: Option<Waker>,
}

impl Flight {
    fn room(&self) -> bool {
        self.entries == 0 || (self.entries < IN_FLIGHT && self.newest_acknowledged)
    }

    /// Records that a follower accepted the log up to `index`; true if that made room for
    /// the next entry (it covers the newest entry, which is the only one in flight).
    fn acknowledge(&mut self, index: u64) -> bool {
        if self.entries == 0 || self.newest_acknowledged || index <= self.before_newest {
            return false;
        }
        self.newest_acknowledged = true;
        self.room()
    }

    /// Counts an entry submitted after the log's entry `last_index`.
    fn submitted(&mut self, last_index: u64) {
        self.entries += 1;
        self.before_newest = last_index;
        self.newest_acknowledged = false;
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

impl Proposer {
    /// Starts the proposer task for `raft`, whose log is `log`.
    pub fn start(raft: Raft, log: LogStore) -> Proposer {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let shared = Arc::new(Shared {
            raft,
            log,
            flight: Mutex::new(Flight {
                queue: receiver,
                entries: 0,
                before_newest: 0,
                newest_acknowledged: false,
                waiting: None,
            }),
        });
        tokio::spawn(run(shared.clone()));
        Proposer { queue, shared }
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

    /// What the peer network calls when a follower acknowledged the log up to an index. If
    /// that covers the newest entry, the next one is cut at once, from what is queued, before
    /// openraft hears of the acknowledgement. The function does not keep the proposer alive.
    pub fn acknowledgements(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move |index| {
            if let Some(shared) = shared.upgrade() {
                acknowledged(&shared, index);
            }
        }
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
    RaftError::Fatal(Fatal::Stopped)
}

fn acknowledged(shared: &Arc<Shared>, index: u64) {
    let mut flight = shared.lock();
    if !flight.acknowledge(index) {
        return;
    }
    match flight.queue.try_recv() {
        Ok(first) => shared.submit(&mut flight, first),
        // The task cuts the next entry as soon as a write arrives.
        Err(_) => flight.wake(),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().expect("proposer lock poisoned")
    }

    /// Cuts an entry of `first` and whatever else is queued, and submits it to openraft.
    /// The submission itself happens here, synchronously: the acknowledgement path relies on
    /// the entry reaching openraft before the acknowledgement does.
    fn submit(self: &Arc<Self>, flight: &mut Flight, first: Pending) {
        let mut bytes = first.request.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match flight.queue.try_recv() {
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
        flight.submitted(self.log.last_index());
        // Sending to openraft's unbounded channel completes at once; only a stopped Raft
        // leaves the future pending (it asks the stopped core why).
        let submitted = self
            .raft
            .client_write_ff(Proposal(RaftBatch { requests }))
            .now_or_never();
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let written = match submitted {
                Some(Ok(answer)) => match answer.await {
                    Ok(Ok(written)) => Ok(written),
                    Ok(Err(error)) => Err(RaftError::APIError(error)),
                    Err(_) => Err(stopped()),
                },
                Some(Err(fatal)) => Err(RaftError::Fatal(fatal)),
                None => Err(stopped()),
            };
            {
                let mut flight = shared.lock();
                flight.entries -= 1;
                flight.wake();
            }
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

/// Cuts an entry whenever there is room for one and a write waiting. Ends when the queue
/// closes (every handle dropped).
async fn run(shared: Arc<Shared>) {
    loop {
        let more = poll_fn(|cx| {
            let mut flight = shared.lock();
            if !flight.room() {
                flight.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match flight.queue.poll_recv(cx) {
                Poll::Ready(Some(first)) => {
                    shared.submit(&mut flight, first);
                    Poll::Ready(true)
                }
                Poll::Ready(None) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if !more {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight() -> Flight {
        Flight {
            queue: mpsc::channel(1).1,
            entries: 0,
            before_newest: 0,
            newest_acknowledged: false,
            waiting: None,
        }
    }

    #[test]
    fn the_next_entry_waits_for_an_acknowledgement_of_the_one_in_flight() {
        let mut flight = flight();
        assert!(flight.room(), "nothing in flight");
        assert!(
            !flight.acknowledge(5),
            "an acknowledgement with nothing in flight"
        );

        flight.submitted(10);
        assert!(!flight.room(), "one in flight, not acknowledged");
        assert!(!flight.acknowledge(10), "an older entry's acknowledgement");
        assert!(flight.acknowledge(11), "the newest entry acknowledged");
        assert!(!flight.acknowledge(11), "counted once");
        assert!(flight.room());

        flight.submitted(11);
        assert!(!flight.room(), "two in flight");
        assert!(!flight.acknowledge(12), "no third entry, even acknowledged");
        flight.entries -= 1;
        assert!(flight.room(), "the acknowledged one is left in flight");
    }
}
