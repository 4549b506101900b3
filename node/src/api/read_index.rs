//! Shares one read-index round among all the linearizable reads waiting for it.
//!
//! A read index costs a round of heartbeats to a quorum (or a call to the leader). A round
//! that starts after a read arrived serves that read just as well as one of its own, so each
//! round answers every read queued before it began, and reads arriving meanwhile wait for the
//! next round.

use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::{errors, Node};

type Waiter = oneshot::Sender<Result<u64, Status>>;

pub struct ReadIndexBatcher {
    queue: mpsc::UnboundedSender<Waiter>,
}

impl ReadIndexBatcher {
    /// Starts the rounds for `node`; they stop when the node is dropped.
    pub fn start(node: Weak<Node>) -> ReadIndexBatcher {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(node, receiver));
        ReadIndexBatcher { queue }
    }

    /// The commit index a linearizable read must wait for.
    pub async fn read_index(&self) -> Result<u64, Status> {
        let (waiter, answer) = oneshot::channel();
        self.queue.send(waiter).map_err(|_| errors::stopped())?;
        answer.await.map_err(|_| errors::stopped())?
    }
}

async fn run(node: Weak<Node>, mut receiver: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = receiver.recv().await {
        let mut waiters = vec![first];
        while let Ok(next) = receiver.try_recv() {
            waiters.push(next);
        }
        let Some(node) = node.upgrade() else {
            return;
        };
        let index = node.fetch_read_index().await;
        drop(node);
        for waiter in waiters {
            let _ = waiter.send(index.clone());
        }
    }
}
