//! One client stream of watchers: creating and canceling them, and producing what to send,
//! in order, from the hub's deliveries, history pages and progress notifications.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{
    Delivery, Outbox, Shared, Watcher, CANCELED, FRAGMENT, PREV_KV, PROGRESS_NOTIFY, SENT,
};
use crate::proto::etcdserverpb::WatchCreateRequest;
use crate::proto::mvccpb::Event;
use crate::store::KvError;

/// etcd's reasons for refusing a watch, sent as the `cancel_reason` of a created response.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// The answer to a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Watching {
        watch_id: i64,
        revision: i64,
    },
    /// etcd answers these with `created` and `canceled` both set and watch ID -1.
    Refused {
        reason: &'static str,
        revision: i64,
    },
}

/// Something for the stream to send, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Events of whole revisions for one watcher; `revision` is the store revision the
    /// response header reports. `fragment`: the watcher accepts it split across responses.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
        fragment: bool,
    },
    /// The watcher's next revision was compacted away: it is canceled.
    Compacted {
        watch_id: i64,
        compact_revision: i64,
    },
    /// Every event up to `revision` has been sent, for one watcher or (watch ID -1) all of
    /// the stream's watchers.
    Progress { watch_id: i64, revision: i64 },
}

/// What one turn of the stream came to.
enum Step {
    Send(Output),
    /// Work was done without anything to send (a page with no matching events).
    Worked,
    /// Nothing to do until the hub wakes the stream.
    Idle,
}

/// The watchers of one client stream. Dropping it cancels them all.
pub struct WatchStream {
    shared: Arc<Shared>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) watchers: HashMap<i64, Arc<Watcher>>,
    /// Watchers that read history, in turn.
    unsynced: VecDeque<Arc<Watcher>>,
    /// Where etcd's automatic watch IDs continue.
    next_id: i64,
    /// Watchers whose periodic progress notification is due.
    progress_due: Vec<Arc<Watcher>>,
    /// A progress request waits until every watcher has caught up.
    progress_requested: bool,
}

impl WatchStream {
    pub(super) fn new(shared: Arc<Shared>) -> WatchStream {
        WatchStream {
            shared,
            outbox: Arc::default(),
            watchers: HashMap::new(),
            unsynced: VecDeque::new(),
            next_id: 0,
            progress_due: Vec::new(),
            progress_requested: false,
        }
    }

    /// Creates a watcher as etcd 3.5 does: an empty key means `\0`, a range end of `\0`
    /// means every key from `key` on; watch ID 0 picks the next free ID; start revision 0
    /// means "after the current revision", an older one replays history first, a future one
    /// waits for it.
    pub fn create(&mut self, request: &WatchCreateRequest) -> Created {
        let refuse = |reason| Created::Refused {
            reason,
            revision: self.shared.revision(),
        };
        if request.start_revision < 0 {
            return refuse(COMPACTED);
        }
        let key: &[u8] = if request.key.is_empty() {
            &[0]
        } else {
            &request.key
        };
        if !matches!(request.range_end.as_slice(), [] | [0]) && key >= request.range_end.as_slice()
        {
            return refuse(EMPTY_RANGE);
        }
        let watch_id = if request.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watchers.contains_key(&request.watch_id) {
            return refuse(DUPLICATE_ID);
        } else {
            request.watch_id
        };

        let watcher = Arc::new(Watcher::new(watch_id, request, key, self.outbox.clone()));
        let mut registry = self.shared.registry();
        let revision = registry.revision;
        let start = request.start_revision;
        if start == 0 || start > revision {
            watcher
                .next_revision
                .store(start.max(revision + 1), Ordering::Relaxed);
            registry.add(watcher.clone());
        } else {
            self.unsynced.push_back(watcher.clone());
        }
        drop(registry);
        self.watchers.insert(watch_id, watcher);
        Created::Watching { watch_id, revision }
    }

    /// Cancels a watcher; returns the revision for the response, `None` for an unknown ID
    /// (etcd does not answer those).
    pub fn cancel(&mut self, watch_id: i64) -> Option<i64> {
        let watcher = self.watchers.remove(&watch_id)?;
        let mut registry = self.shared.registry();
        watcher.set(CANCELED);
        registry.remove(&watcher);
        let revision = registry.revision;
        drop(registry);
        self.unsynced.retain(|other| !Arc::ptr_eq(other, &watcher));
        Some(revision)
    }

    /// Asks for a progress notification with watch ID -1, sent once every watcher of the
    /// stream has caught up. (etcd 3.5 drops a request that comes while a watcher is behind;
    /// answering it later keeps its guarantee and spares clients a retry.)
    pub fn request_progress(&mut self) {
        self.progress_requested = true;
    }

    /// The periodic progress tick: each watcher that asked for progress notifications and
    /// was sent no events since the last tick gets one, as in etcd.
    pub fn progress_tick(&mut self) {
        self.progress_due.clear();
        for watcher in self.watchers.values() {
            if !watcher.has(PROGRESS_NOTIFY) {
                continue;
            }
            if watcher.is(SENT) {
                watcher.clear(SENT);
            } else {
                self.progress_due.push(watcher.clone());
            }
        }
    }

    /// The next thing to send. Cancel-safe: between its waits nothing is held back.
    pub async fn next(&mut self) -> Result<Output, KvError> {
        loop {
            match self.step()? {
                Step::Send(output) => return Ok(output),
                // A long catch-up must not keep the other streams of this thread waiting.
                Step::Worked => tokio::task::yield_now().await,
                Step::Idle => self.outbox.wake.notified().await,
            }
        }
    }

    /// The next thing to send if it is ready without waiting.
    pub fn ready(&mut self) -> Result<Option<Output>, KvError> {
        Ok(match self.step()? {
            Step::Send(output) => Some(output),
            Step::Worked | Step::Idle => None,
        })
    }

    fn step(&mut self) -> Result<Step, KvError> {
        loop {
            let (delivery, behind) = self.outbox.pop();
            self.unsynced.extend(behind);
            let Some(delivery) = delivery else { break };
            if !delivery.watcher.is(CANCELED) {
                return self.deliver(delivery).map(Step::Send);
            }
        }
        // Only now that the outbox is empty has everything queued before a watcher fell
        // behind been sent, so that its history may follow.
        while let Some(watcher) = self.unsynced.pop_front() {
            if !watcher.is(CANCELED) {
                return self.catch_up(watcher);
            }
        }
        Ok(self.progress().map_or(Step::Idle, Step::Send))
    }

    fn deliver(&mut self, delivery: Delivery) -> Result<Output, KvError> {
        let Delivery {
            watcher,
            batch,
            picks,
            ..
        } = delivery;
        let mut events: Vec<Event> = picks
            .iter()
            .map(|&at| batch.events[at as usize].clone())
            .collect();
        if watcher.has(PREV_KV) {
            let prev_kvs = batch.prev_kvs(&self.shared.store)?;
            for (event, &at) in events.iter_mut().zip(&picks) {
                event.prev_kv = prev_kvs[at as usize].clone();
            }
        }
        watcher.set(SENT);
        Ok(Output::Events {
            watch_id: watcher.id,
            revision: batch.revision,
            events,
            fragment: watcher.has(FRAGMENT),
        })
    }

    /// One page of history for an unsynced watcher, then back to the synced set if it has
    /// read everything published, or to the end of the line.
    fn catch_up(&mut self, watcher: Arc<Watcher>) -> Result<Step, KvError> {
        let limits = self.shared.limits;
        let revision = self.shared.revision();
        let from = watcher.next_revision();
        let mut output = None;
        if from <= revision {
            let to = revision.min(from.saturating_add(limits.page_revisions - 1));
            let store = &self.shared.store;
            let page = match store.events(
                from,
                to,
                &watcher.key,
                &watcher.range_end,
                limits.page_bytes,
            ) {
                Ok(page) => page,
                Err(KvError::Compacted) => {
                    watcher.set(CANCELED);
                    self.watchers.remove(&watcher.id);
                    return Ok(Step::Send(Output::Compacted {
                        watch_id: watcher.id,
                        compact_revision: store.compact_revision(),
                    }));
                }
                Err(error) => return Err(error),
            };
            watcher
                .next_revision
                .store(page.through + 1, Ordering::Relaxed);
            let mut events = page.events;
            events.retain(|event| watcher.passes(event));
            if !events.is_empty() {
                if watcher.has(PREV_KV) {
                    store.fill_prev_kvs(&mut events)?;
                }
                watcher.set(SENT);
                output = Some(Output::Events {
                    watch_id: watcher.id,
                    revision,
                    events,
                    fragment: watcher.has(FRAGMENT),
                });
            }
        }
        let mut registry = self.shared.registry();
        if watcher.next_revision() > registry.revision {
            registry.add(watcher);
        } else {
            self.unsynced.push_back(watcher);
        }
        drop(registry);
        Ok(output.map_or(Step::Worked, Step::Send))
    }

    /// A due progress notification, if its conditions hold now. Checked under the registry
    /// lock, which publishing holds while it queues: a notification never overtakes events
    /// of its revision.
    fn progress(&mut self) -> Option<Output> {
        if self.progress_due.is_empty() && !self.progress_requested {
            return None;
        }
        let mut registry = self.shared.registry();
        let revision = registry.revision;
        // etcd sends a periodic notification only to a synced watcher, and skips it if the
        // watcher has events pending or waits for a start revision not yet reached.
        while let Some(watcher) = self.progress_due.pop() {
            if watcher.is(super::SYNCED)
                && !watcher.is(CANCELED)
                && watcher.queued.load(Ordering::Relaxed) == 0
                && revision >= watcher.start_revision
            {
                return Some(Output::Progress {
                    watch_id: watcher.id,
                    revision,
                });
            }
        }
        if !self.progress_requested {
            return None;
        }
        let queue = self.outbox.lock();
        let caught_up =
            self.unsynced.is_empty() && queue.behind.is_empty() && queue.deliveries.is_empty();
        drop(queue);
        if !caught_up {
            // The stream is woken when whatever is pending moves.
            return None;
        }
        if self
            .watchers
            .values()
            .any(|watcher| revision < watcher.start_revision)
        {
            if !registry
                .progress_waiters
                .iter()
                .any(|waiter| Arc::ptr_eq(waiter, &self.outbox))
            {
                registry.progress_waiters.push(self.outbox.clone());
            }
            return None;
        }
        self.progress_requested = false;
        Some(Output::Progress {
            watch_id: -1,
            revision,
        })
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        for watcher in self.watchers.values() {
            watcher.set(CANCELED);
        }
        self.shared
            .registry()
            .remove_stream(&self.outbox, self.watchers.values());
    }
}
