//! The watch hub: etcd's watchable store on top of [`Store`], on every member.
//!
//! The store hands the hub each batch's events as it publishes them ([`ChangeSink`]), on
//! every member alike: followers apply the same log, so a watch works on any member and
//! carries on across leader changes. While no watcher is synced the store skips noting the
//! events; a watcher that syncs during such a batch reads it from the history.
//!
//! # Synced and unsynced watchers
//! A *synced* watcher is in the hub's registry and gets events pushed: one publish matches
//! the batch against the registry once and queues, per matching watcher, a delivery (the
//! shared batch and which of its events the watcher gets) in the outbox of the watcher's
//! stream. Publishing never waits: each watcher may have only a few deliveries queued
//! ([`HubLimits`]); one whose queue is full leaves the registry instead and becomes
//! *unsynced*, as does a watcher created at an old revision. Its stream catches it up from
//! the store's history in bounded pages, one page per turn, and puts it back in the registry
//! once it has read everything the hub has published. Every step happens under the registry
//! lock or on the watcher's own stream, in this order, so no event is lost or repeated:
//!
//! - `next_revision` is the first revision the watcher has not been given. The hub moves it
//!   past each delivery it queues; a watcher that falls behind resumes at the first revision
//!   of the batch it missed (it had everything before).
//! - A stream reads history for a watcher only when its outbox is empty, so everything queued
//!   for the watcher earlier has been sent first.
//! - A watcher rejoins only if nothing was published after the page it read (checked under
//!   the registry lock, which publishing holds); otherwise it reads again.
//!
//! Events of one revision always travel together: a publish carries whole revisions, and a
//! history page never splits one.
//!
//! # Memory
//! A watcher costs its [`Watcher`] (about 100 bytes plus its key and range end) and a slot in
//! the registry and in its stream's table. What a stream holds beyond that is bounded by the
//! limits: its watchers' queued deliveries and one history page at a time.

mod stream;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use prost::Message;
use tokio::sync::Notify;

pub use stream::{Created, Output, WatchStream};

use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::WatchCreateRequest;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::store::{ChangeSink, KvError, Store};

/// How far watchers may lag before they read history instead, and how much history one
/// read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// Deliveries (one per batch that matched) a watcher may have waiting to be sent.
    pub queued_per_watcher: u32,
    /// Encoded event bytes a watcher may have waiting, beyond its first delivery (which is
    /// always taken: the batch is in memory anyway).
    pub queued_bytes_per_watcher: usize,
    /// Revisions one history read covers at most (etcd reads 1000 per unsynced batch).
    pub page_revisions: i64,
    /// A history read ends with the revision in which its events reach this many bytes.
    pub page_bytes: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            queued_per_watcher: 32,
            queued_bytes_per_watcher: 1024 * 1024,
            page_revisions: 1000,
            page_bytes: 1024 * 1024,
        }
    }
}

/// The hub of one member. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("revision", &self.shared.revision())
            .finish_non_exhaustive()
    }
}

impl WatchHub {
    /// A hub fed by `store` from its current revision on.
    ///
    /// # Panics
    /// If the store already feeds another hub.
    pub fn attach(store: Store, limits: HubLimits) -> WatchHub {
        let feed = store.clone();
        let shared = feed.attach_sink(|revision| {
            Arc::new(Shared {
                store,
                limits,
                registry: Mutex::new(Registry {
                    revision,
                    keys: HashMap::new(),
                    ranges: Vec::new(),
                    progress_waiters: Vec::new(),
                }),
            })
        });
        WatchHub { shared }
    }

    /// A new stream of watchers (one per client `Watch` call).
    pub fn stream(&self) -> WatchStream {
        WatchStream::new(self.shared.clone())
    }

    /// The last revision published to the hub.
    pub fn revision(&self) -> i64 {
        self.shared.revision()
    }
}

struct Shared {
    store: Store,
    limits: HubLimits,
    registry: Mutex<Registry>,
}

impl Shared {
    // Publishing runs on the thread that applies Raft entries; a panic while the registry
    // was held leaves it half-updated, so the poison propagates.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().expect("watch registry lock poisoned")
    }

    fn revision(&self) -> i64 {
        self.registry().revision
    }
}

impl ChangeSink for Shared {
    fn wants_events(&self) -> bool {
        let registry = self.registry();
        !(registry.keys.is_empty() && registry.ranges.is_empty())
    }

    fn published(&self, revision: i64, events: Vec<Event>) {
        let batch = Arc::new(Batch::new(revision, events));
        let mut registry = self.registry();
        let first = registry.revision + 1;
        for (watcher, picks) in registry.matches(&batch) {
            let bytes = picks.iter().map(|&at| batch.sizes[at as usize]).sum();
            if watcher
                .outbox
                .offer(&watcher, &batch, picks, bytes, &self.limits)
            {
                watcher.next_revision.store(revision + 1, Ordering::Relaxed);
            } else {
                registry.remove(&watcher);
                watcher.fall_behind(first);
            }
        }
        registry.revision = revision;
        for outbox in registry.progress_waiters.drain(..) {
            outbox.wake.notify_one();
        }
    }

    /// No watcher was synced as the batch began. One that rejoined the registry since has
    /// missed the batch's events, and reads them from the history, as after a snapshot.
    fn advanced(&self, revision: i64) {
        self.replaced(revision);
    }

    fn replaced(&self, revision: i64) {
        let mut guard = self.registry();
        let registry = &mut *guard;
        let first = registry.revision + 1;
        // The state jumped without events: every watcher reads what it missed from the
        // history of the new state (or learns that it was compacted).
        let synced: Vec<Arc<Watcher>> = registry
            .keys
            .drain()
            .flat_map(|(_, watchers)| watchers)
            .chain(registry.ranges.drain(..))
            .collect();
        for watcher in synced {
            watcher.clear(SYNCED);
            watcher.fall_behind(first);
        }
        registry.revision = revision;
        for outbox in registry.progress_waiters.drain(..) {
            outbox.wake.notify_one();
        }
    }
}

/// The synced watchers, by what they watch.
struct Registry {
    /// The last revision published to the hub.
    revision: i64,
    /// Watchers of a single key.
    keys: HashMap<Box<[u8]>, Vec<Arc<Watcher>>>,
    /// Watchers of a range; checked one by one, which suits the tens of prefix watchers
    /// clients such as Kubernetes keep.
    ranges: Vec<Arc<Watcher>>,
    /// Streams waiting for the revision to move before they can answer a progress request.
    progress_waiters: Vec<Arc<Outbox>>,
}

impl Registry {
    fn add(&mut self, watcher: Arc<Watcher>) {
        watcher.set(SYNCED);
        if watcher.is_range() {
            self.ranges.push(watcher);
        } else {
            self.keys
                .entry(watcher.key.clone())
                .or_default()
                .push(watcher);
        }
    }

    fn remove(&mut self, watcher: &Arc<Watcher>) {
        if !watcher.is(SYNCED) {
            return;
        }
        watcher.clear(SYNCED);
        if watcher.is_range() {
            self.ranges.retain(|other| !Arc::ptr_eq(other, watcher));
        } else if let Some(watchers) = self.keys.get_mut(&watcher.key) {
            watchers.retain(|other| !Arc::ptr_eq(other, watcher));
            if watchers.is_empty() {
                self.keys.remove(&watcher.key);
            }
        }
    }

    /// Removes every watcher of one stream in one pass per list.
    fn remove_stream<'w>(
        &mut self,
        outbox: &Arc<Outbox>,
        watchers: impl Iterator<Item = &'w Arc<Watcher>>,
    ) {
        let mut keys = HashSet::new();
        for watcher in watchers {
            if watcher.is(SYNCED) && !watcher.is_range() {
                keys.insert(&watcher.key);
            }
            watcher.clear(SYNCED);
        }
        self.ranges
            .retain(|watcher| !Arc::ptr_eq(&watcher.outbox, outbox));
        for key in keys {
            if let Some(watchers) = self.keys.get_mut(key) {
                watchers.retain(|watcher| !Arc::ptr_eq(&watcher.outbox, outbox));
                if watchers.is_empty() {
                    self.keys.remove(key);
                }
            }
        }
        self.progress_waiters
            .retain(|waiter| !Arc::ptr_eq(waiter, outbox));
    }

    /// Each synced watcher that wants some of the batch's events, with their positions.
    fn matches(&self, batch: &Batch) -> Vec<(Arc<Watcher>, Vec<u32>)> {
        let mut found: Vec<(Arc<Watcher>, Vec<u32>)> = Vec::new();
        let mut slots: HashMap<*const Watcher, usize> = HashMap::new();
        for (at, event) in batch.events.iter().enumerate() {
            let Some(kv) = &event.kv else { continue };
            let exact = self.keys.get(kv.key.as_slice()).into_iter().flatten();
            let ranges = self.ranges.iter().filter(|watcher| watcher.covers(&kv.key));
            for watcher in exact.chain(ranges) {
                if kv.mod_revision < watcher.next_revision() || !watcher.passes(event) {
                    continue;
                }
                let slot = *slots.entry(Arc::as_ptr(watcher)).or_insert_with(|| {
                    found.push((watcher.clone(), Vec::new()));
                    found.len() - 1
                });
                found[slot].1.push(at as u32);
            }
        }
        found
    }
}

/// The events of one published batch, shared by every delivery that names some of them.
struct Batch {
    /// The store revision after the batch.
    revision: i64,
    events: Vec<Event>,
    /// Encoded size of each event, for the queue limits.
    sizes: Vec<usize>,
    /// The previous version of each event's key, read once for all watchers with `prev_kv`.
    prev_kvs: OnceLock<Vec<Option<KeyValue>>>,
}

impl Batch {
    fn new(revision: i64, events: Vec<Event>) -> Batch {
        Batch {
            revision,
            sizes: events.iter().map(Message::encoded_len).collect(),
            events,
            prev_kvs: OnceLock::new(),
        }
    }

    fn prev_kvs(&self, store: &Store) -> Result<&[Option<KeyValue>], KvError> {
        if let Some(prev) = self.prev_kvs.get() {
            return Ok(prev);
        }
        let mut events = self.events.clone();
        store.fill_prev_kvs(&mut events)?;
        // Two streams may race here; both read the same versions.
        Ok(self
            .prev_kvs
            .get_or_init(|| events.into_iter().map(|event| event.prev_kv).collect()))
    }
}

/// Events waiting for one stream, in the order the stream must send them.
struct Delivery {
    watcher: Arc<Watcher>,
    batch: Arc<Batch>,
    /// Positions in `batch.events`, ascending.
    picks: Vec<u32>,
    bytes: usize,
}

/// What the hub hands one stream: deliveries, and the watchers that fell behind.
#[derive(Default)]
struct Outbox {
    queue: Mutex<OutboxQueue>,
    /// Wakes the stream; a wake with no stream waiting is kept for its next wait.
    wake: Notify,
}

#[derive(Default)]
struct OutboxQueue {
    deliveries: VecDeque<Delivery>,
    /// Watchers taken out of the registry; the stream catches them up from history.
    behind: Vec<Arc<Watcher>>,
}

impl Outbox {
    // Lock order: the registry, then an outbox.
    fn lock(&self) -> MutexGuard<'_, OutboxQueue> {
        self.queue.lock().expect("watch outbox lock poisoned")
    }

    /// Queues a delivery unless the watcher's queue is full.
    fn offer(
        &self,
        watcher: &Arc<Watcher>,
        batch: &Arc<Batch>,
        picks: Vec<u32>,
        bytes: usize,
        limits: &HubLimits,
    ) -> bool {
        let mut queue = self.lock();
        let queued = watcher.queued.load(Ordering::Relaxed);
        let queued_bytes = watcher.queued_bytes.load(Ordering::Relaxed);
        if queued > 0
            && (queued >= limits.queued_per_watcher
                || queued_bytes + bytes > limits.queued_bytes_per_watcher)
        {
            return false;
        }
        watcher.queued.store(queued + 1, Ordering::Relaxed);
        watcher
            .queued_bytes
            .store(queued_bytes + bytes, Ordering::Relaxed);
        queue.deliveries.push_back(Delivery {
            watcher: watcher.clone(),
            batch: batch.clone(),
            picks,
            bytes,
        });
        drop(queue);
        self.wake.notify_one();
        true
    }

    fn pop(&self) -> (Option<Delivery>, Vec<Arc<Watcher>>) {
        let mut queue = self.lock();
        let behind = std::mem::take(&mut queue.behind);
        let delivery = queue.deliveries.pop_front();
        if let Some(delivery) = &delivery {
            let watcher = &delivery.watcher;
            watcher.queued.fetch_sub(1, Ordering::Relaxed);
            watcher
                .queued_bytes
                .fetch_sub(delivery.bytes, Ordering::Relaxed);
        }
        (delivery, behind)
    }
}

// `Watcher::options`.
const NO_PUT: u8 = 1;
const NO_DELETE: u8 = 2;
const PREV_KV: u8 = 4;
const FRAGMENT: u8 = 8;
const PROGRESS_NOTIFY: u8 = 16;

// `Watcher::state`.
/// In the registry (changed only under the registry lock).
const SYNCED: u8 = 1;
/// Canceled, compacted or its stream ended: whatever is still queued for it is dropped.
const CANCELED: u8 = 2;
/// Events were sent since the last progress tick (etcd then skips the notification).
const SENT: u8 = 4;

/// One watcher of one stream.
struct Watcher {
    id: i64,
    key: Box<[u8]>,
    /// Empty: `key` alone; `[0]`: `key` and every key after it; else `[key, range_end)`.
    range_end: Box<[u8]>,
    /// As requested (0: none); progress is reported only once the store has reached it.
    start_revision: i64,
    options: u8,
    state: AtomicU8,
    /// The first revision the watcher has not been given (queued or sent).
    next_revision: AtomicI64,
    /// Its deliveries in the outbox and their bytes (changed under the outbox lock).
    queued: AtomicU32,
    queued_bytes: AtomicUsize,
    outbox: Arc<Outbox>,
}

impl Watcher {
    /// A watcher as etcd's server makes it from a create request, with the key and range
    /// end already normalised.
    fn new(id: i64, request: &WatchCreateRequest, key: &[u8], outbox: Arc<Outbox>) -> Watcher {
        let mut options = 0;
        for filter in &request.filters {
            options |= match FilterType::try_from(*filter) {
                Ok(FilterType::Noput) => NO_PUT,
                Ok(FilterType::Nodelete) => NO_DELETE,
                // etcd ignores filters it does not know.
                Err(_) => 0,
            };
        }
        for (wanted, flag) in [
            (request.prev_kv, PREV_KV),
            (request.fragment, FRAGMENT),
            (request.progress_notify, PROGRESS_NOTIFY),
        ] {
            if wanted {
                options |= flag;
            }
        }
        Watcher {
            id,
            key: key.into(),
            range_end: request.range_end.as_slice().into(),
            start_revision: request.start_revision,
            options,
            state: AtomicU8::new(0),
            next_revision: AtomicI64::new(request.start_revision),
            queued: AtomicU32::new(0),
            queued_bytes: AtomicUsize::new(0),
            outbox,
        }
    }

    fn has(&self, option: u8) -> bool {
        self.options & option != 0
    }

    fn is(&self, state: u8) -> bool {
        self.state.load(Ordering::Acquire) & state != 0
    }

    fn set(&self, state: u8) {
        self.state.fetch_or(state, Ordering::AcqRel);
    }

    fn clear(&self, state: u8) {
        self.state.fetch_and(!state, Ordering::AcqRel);
    }

    fn next_revision(&self) -> i64 {
        self.next_revision.load(Ordering::Relaxed)
    }

    fn is_range(&self) -> bool {
        !self.range_end.is_empty()
    }

    fn covers(&self, key: &[u8]) -> bool {
        match &*self.range_end {
            [] => key == &*self.key,
            [0] => key >= &*self.key,
            end => key >= &*self.key && key < end,
        }
    }

    /// Whether the watcher's filters let the event through.
    fn passes(&self, event: &Event) -> bool {
        let filtered = if event.r#type == EventType::Delete as i32 {
            NO_DELETE
        } else {
            NO_PUT
        };
        !self.has(filtered)
    }

    /// Takes the watcher out of the synced set (the caller holds the registry lock and has
    /// removed it): it resumes at `first`, the first revision it was not given, unless it
    /// waits for a later start.
    fn fall_behind(self: &Arc<Self>, first: i64) {
        self.next_revision.fetch_max(first, Ordering::Relaxed);
        self.outbox.lock().behind.push(self.clone());
        self.outbox.wake.notify_one();
    }
}
