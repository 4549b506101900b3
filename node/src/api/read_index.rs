//! Shares one read-index round among all the linearizable reads waiting for it.
//!
//! A read index costs a round of heartbeats to a quorum (or a call to the leader). A round
//! that starts after a read arrived serves that read just as well as one of its own, so a
//! read that finds such a round finished while it waited takes that round's answer, and
//! only the first read to find none runs the next round.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tonic::Status;

#[derive(Default)]
pub struct ReadIndexBatcher {
    /// Tickets ordering read arrivals and round starts.
    clock: AtomicU64,
    /// Held while a round runs, so rounds never overlap.
    round: tokio::sync::Mutex<()>,
    /// The last finished round: the ticket it started at and its answer. A std mutex: held
    /// only to copy it in or out.
    last: Mutex<Option<(u64, Result<u64, Status>)>>,
}

impl ReadIndexBatcher {
    /// The commit index a linearizable read must wait for; `fetch` runs one round.
    pub async fn read_index(
        &self,
        fetch: impl Future<Output = Result<u64, Status>>,
    ) -> Result<u64, Status> {
        let arrived = self.clock.fetch_add(1, Ordering::SeqCst);
        let _round = self.round.lock().await;
        if let Some((started, answer)) = self.last_round() {
            if started > arrived {
                return answer;
            }
        }
        let started = self.clock.fetch_add(1, Ordering::SeqCst);
        let answer = fetch.await;
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((started, answer.clone()));
        answer
    }

    fn last_round(&self) -> Option<(u64, Result<u64, Status>)> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn reads_waiting_behind_a_round_share_the_next_one() {
        let batcher = Arc::new(ReadIndexBatcher::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Notify::new());

        // A round in progress: reads that arrive now must not take its answer.
        let first = {
            let (batcher, rounds, release) = (batcher.clone(), rounds.clone(), release.clone());
            tokio::spawn(async move {
                batcher
                    .read_index(async {
                        rounds.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Ok(1)
                    })
                    .await
            })
        };
        while rounds.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let (batcher, rounds) = (batcher.clone(), rounds.clone());
                tokio::spawn(async move {
                    batcher
                        .read_index(async { Ok(10 + rounds.fetch_add(1, Ordering::SeqCst)) })
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        release.notify_one();

        assert_eq!(first.await.unwrap().unwrap(), 1);
        for read in waiting {
            assert_eq!(read.await.unwrap().unwrap(), 11, "one shared second round");
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }
}
