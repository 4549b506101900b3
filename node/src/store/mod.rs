//! The MVCC key-value store: etcd's data model (revisions, versions, tombstones, compaction,
//! historical reads, Txn) on one redb file, applied to by the Raft state machine.
//!
//! # Layout
//! - `codec`: the redb tables, how a version is stored, the meta entries, the snapshot format.
//! - `index`: the in-memory key index (every stored revision of every key), rebuilt at open.
//! - `state`: what readers consult (index and counters), and how a batch is published.
//! - `apply`: Raft commands (Put, DeleteRange, Txn, Compaction, Alarm, LeaseGrant,
//!   LeaseRevoke) applied as one batch.
//! - `unflushed`: what batches published that the file does not hold yet, written by
//!   [`Store::sync`] and whenever it grows large.
//! - `lease`: the lease table and each lease's keys (derived from the key index).
//! - `range`: range and Txn compare semantics, shared by client reads and Txn reads.
//! - `history`: the events each batch publishes (to a [`ChangeSink`], the watch hub), history
//!   pages from the revision table, and previous versions for `prev_kv`.
//! - `error`: [`KvError`] (what clients see, etcd's messages) and [`StoreError`].
//!
//! # Reads and writes side by side
//! A batch never changes the published state while it runs; it keeps its versions and index
//! changes to itself, then publishes them under a short write lock. The file changes only
//! at a flush. A read walks the published index under the read lock, takes the versions it
//! needs that are still unflushed and, for the rest, opens a redb read transaction before
//! letting go of the lock; it reads the versions after. The read transaction holds every
//! version the index named that was not unflushed: a flush commits before the versions it
//! wrote leave the unflushed set, and it removes only versions that compaction took out of
//! the published index before.

mod apply;
mod backup;
mod chunks;
mod codec;
mod error;
mod history;
mod index;
mod lease;
mod range;
mod state;
#[cfg(test)]
mod tests;
mod unflushed;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableHandle};

pub use error::{KvError, StoreError};
pub use history::{ChangeSink, EventPage};
pub use lease::{Lease, LeaseChange, MAX_LEASE_TTL};

use apply::Batch;
use codec::{
    encode_alarms, encode_i64, encode_lease, parse_snapshot, SnapshotRecord, SnapshotWriter,
    LEASES, LEGACY_REVISIONS, META, META_ALARMS, META_COMPACT_REVISION, META_RAFT, META_REVISION,
    VERSIONS,
};
use index::Revision;
use range::{finish_range, plan_range, read_versions, FileVersions, GatheredVersions};
use state::{State, StateBuilder};

use crate::proto::cairnpb::{raft_request, raft_response};
use crate::proto::etcdserverpb::{AlarmMember, RangeRequest, RangeResponse};

/// The MVCC store of one member. Cheap to clone; all clones share one redb file.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The state file: redb's database behind a lock that only [`Store::defragment`] takes for
/// writing, since redb compacts a file only while no transaction is open.
struct StateFile(RwLock<Database>);

impl StateFile {
    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let db = self.0.read().expect("state file lock poisoned");
        Ok(db.begin_read()?)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let db = self.0.read().expect("state file lock poisoned");
        Ok(db.begin_write()?)
    }
}

struct Inner {
    db: StateFile,
    path: PathBuf,
    /// std locks rather than tokio's: no critical section awaits and each is short (an index
    /// walk, or publishing a batch), so a blocking lock is cheaper than an async one. A
    /// RwLock so that reads run in parallel with each other and with a batch being applied.
    state: RwLock<State>,
    /// Serialises batches and snapshot installs: each starts from the published state, so the
    /// next may begin only once the previous one has published.
    writer: Mutex<()>,
    /// Serialises flushes, and holds the Raft metadata of the last durable one. Lock order:
    /// `writer`, then `flusher`, then `state`.
    flusher: Mutex<Option<Vec<u8>>>,
    /// The state file's size, measured after every commit (the file changes only then), so
    /// that the quota check of every write does not ask the file system.
    file_size: AtomicI64,
    /// Told about every change to the lease table once it is published (see
    /// [`Store::observe_leases`]).
    lease_observer: OnceLock<LeaseObserver>,
    /// Where published changes go (the watch hub); see [`Store::attach_sink`].
    sink: OnceLock<std::sync::Weak<dyn ChangeSink>>,
}

type LeaseObserver = Box<dyn Fn(&[LeaseChange]) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Inner {
    // A panic while a lock was held may have left the index half-published; carrying on
    // would serve wrong data, so the poison propagates.
    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("store state lock poisoned")
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("store state lock poisoned")
    }

    /// Writes the unflushed changes and the counters to the file in one transaction,
    /// durable (fsynced) or not.
    fn flush(&self, durable: bool) -> Result<(), StoreError> {
        let durable_meta = self.flusher.lock().expect("store flusher lock poisoned");
        self.flush_locked(durable_meta, durable)
    }

    /// A non-durable flush, unless one is under way: that one takes everything published
    /// before it began, and waiting for it would hold applying up behind the sync thread,
    /// which runs at a lower priority. A later batch tries again.
    fn flush_unless_flushing(&self) -> Result<(), StoreError> {
        match self.flusher.try_lock() {
            Ok(durable_meta) => self.flush_locked(durable_meta, false),
            Err(TryLockError::WouldBlock) => Ok(()),
            Err(TryLockError::Poisoned(_)) => panic!("store flusher lock poisoned"),
        }
    }

    fn flush_locked(
        &self,
        mut durable_meta: MutexGuard<'_, Option<Vec<u8>>>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let (set, meta) = {
            let mut state = self.state_mut();
            // Every applied batch moves the Raft metadata, so an unchanged one means that
            // nothing was applied since: an idle member does not fsync every second.
            let unchanged = state.unflushed.is_empty()
                && (!durable || (durable_meta.is_some() && *durable_meta == state.raft_meta));
            if unchanged {
                return Ok(());
            }
            (state.unflushed.flush_set(), MetaRecord::of(&state))
        };
        let mut txn = self.db.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None);
        }
        {
            let mut versions = txn.open_table(VERSIONS)?;
            // Compaction may have removed versions this flush would write; the rest of its
            // removals are in the file.
            let mut removed = set.removed.clone();
            removed.sort_unstable();
            chunks::insert(
                &mut versions,
                set.versions
                    .iter()
                    .filter(|(key, _)| removed.binary_search(key).is_err())
                    .map(|(key, value)| (*key, &**value)),
            )?;
            removed.retain(|key| !set.versions.contains_key(key));
            chunks::remove(&mut versions, &removed)?;
            let mut leases = txn.open_table(LEASES)?;
            for &(id, ttl) in &set.leases {
                match ttl {
                    Some(ttl) => leases.insert(&id.to_be_bytes(), encode_lease(ttl).as_slice())?,
                    None => leases.remove(&id.to_be_bytes())?,
                };
            }
            meta.write(&mut txn.open_table(META)?)?;
        }
        txn.commit()?;
        self.measure_file_size();
        self.state_mut().unflushed.forget(&set);
        // The flushed versions are freed here, outside the state's lock.
        drop(set);
        if durable {
            *durable_meta = meta.raft;
        }
        Ok(())
    }

    fn measure_file_size(&self) {
        let size = match std::fs::metadata(&self.path) {
            Ok(metadata) => i64::try_from(metadata.len()).unwrap_or(i64::MAX),
            Err(error) => {
                let path = self.path.display();
                tracing::warn!(%path, %error, "cannot read the state file's size");
                0
            }
        };
        self.file_size.store(size, Ordering::Relaxed);
    }
}

impl Drop for Inner {
    /// A store dropped without a crash keeps what it applied, as a closed file would.
    fn drop(&mut self) {
        if let Err(error) = self.flush(true) {
            tracing::warn!(%error, "cannot flush the store as it closes");
        }
    }
}

/// How long [`Store::defragment`] waits for reads of the file that began before it.
const DEFRAGMENT_WAIT: Duration = Duration::from_secs(5);
/// How often it checks whether they ended.
const DEFRAGMENT_POLL: Duration = Duration::from_millis(5);

/// redb's page cache for the state file.
const STATE_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl Store {
    /// Opens the store in the redb file at `path`, creating it if needed, and rebuilds the key
    /// index from it. After a crash the file holds the last durable state (see [`Store::sync`]);
    /// the Raft log re-applies what followed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // redb caches 1 GiB by default; edge boards have far less memory, and the key index
        // already lives in memory, so the page cache only needs the hot values.
        let db = Database::builder()
            .set_cache_size(STATE_CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        migrate_legacy_revisions(&txn)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(META)?;
        txn.open_table(LEASES)?;
        txn.commit()?;

        let state = load_state(&db)?;

        tracing::info!(
            path = %path.display(),
            revision = state.revision,
            compact_revision = state.compact_revision,
            keys = state.index.len(),
            "opened MVCC store"
        );
        let store = Store {
            inner: Arc::new(Inner {
                db: StateFile(RwLock::new(db)),
                path: path.to_path_buf(),
                state: RwLock::new(state),
                writer: Mutex::new(()),
                flusher: Mutex::new(None),
                lease_observer: OnceLock::new(),
                sink: OnceLock::new(),
                file_size: AtomicI64::new(0),
            }),
        };
        store.inner.measure_file_size();
        Ok(store)
    }

    /// The blob last written by [`Store::apply_batch`] or [`Store::install_snapshot`].
    pub fn raft_meta(&self) -> Option<Vec<u8>> {
        self.inner.state().raft_meta.clone()
    }

    /// Applies `commands` as one batch and records `raft_meta` (the applied log position)
    /// with it.
    ///
    /// The batch is published to readers at once and reaches the file at the next flush
    /// ([`Store::sync`], or when the unflushed changes grow past [`FLUSH_BYTES`]): the Raft
    /// log is the durable record, and re-applying its tail after a crash is safe because the
    /// applied position is flushed together with the data it covers.
    ///
    /// Each command gets its own result; a command that fails changes nothing. An `Err` is a
    /// storage failure: nothing of the batch was applied.
    pub fn apply_batch(
        &self,
        commands: &[raft_request::Request],
        raft_meta: &[u8],
    ) -> Result<Vec<Result<raft_response::Response, KvError>>, StoreError> {
        let _writer = self
            .inner
            .writer
            .lock()
            .expect("store writer lock poisoned");
        let sink = self.inner.sink();
        let record_events = sink.as_ref().is_some_and(|sink| sink.wants_events());
        let published = self.inner.state();
        let before = published.revision;
        let mut batch = Batch::new(&published, &self.inner.db, record_events);
        let results = commands
            .iter()
            .map(|command| batch.apply(command))
            .collect::<Result<Vec<_>, _>>()?;
        let events = batch.take_events();
        let outcome = batch.finish();
        drop(published);
        let revision = outcome.revision;
        let lease_changes: Vec<LeaseChange> = outcome
            .leases
            .iter()
            .map(|(&id, &ttl)| match ttl {
                Some(ttl) => LeaseChange::Granted(Lease { id, ttl }),
                None => LeaseChange::Revoked(id),
            })
            .collect();
        let flush_now = {
            let mut state = self.inner.state_mut();
            state.publish(outcome, raft_meta);
            state.unflushed.bytes() >= FLUSH_BYTES
        };
        self.notify_lease_changes(&lease_changes);
        // Still under the writer lock: the sink sees batches in the order they published.
        if let Some(sink) = sink {
            match events {
                Some(events) if !events.is_empty() => sink.published(revision, events),
                None if revision > before => sink.advanced(revision),
                _ => {}
            }
        }
        if flush_now {
            self.inner.flush_unless_flushing()?;
        }
        Ok(results)
    }

    fn flush(&self, durable: bool) -> Result<(), StoreError> {
        self.inner.flush(durable)
    }

    /// A read transaction over a file that holds everything published, for the reads that
    /// scan the whole file. Applying waits meanwhile, so it is for rare requests only.
    fn read_everything(&self) -> Result<redb::ReadTransaction, StoreError> {
        let _writer = self
            .inner
            .writer
            .lock()
            .expect("store writer lock poisoned");
        self.flush(false)?;
        self.inner.db.begin_read()
    }

    /// Registers the one observer of lease changes (the lessor). It is called after each
    /// batch or snapshot install that changed the lease table, once the change is visible to
    /// readers, with no store lock held, on the thread that applies Raft entries: it must be
    /// quick. Returns false if an observer was already registered.
    pub fn observe_leases(
        &self,
        observer: impl Fn(&[LeaseChange]) + Send + Sync + 'static,
    ) -> bool {
        self.inner.lease_observer.set(Box::new(observer)).is_ok()
    }

    fn notify_lease_changes(&self, changes: &[LeaseChange]) {
        if changes.is_empty() {
            return;
        }
        if let Some(observer) = self.inner.lease_observer.get() {
            observer(changes);
        }
    }

    /// The lease `id`, if it exists.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        let ttl = self.inner.state().leases.ttl(id)?;
        Some(Lease { id, ttl })
    }

    /// Every lease, by ID.
    pub fn leases(&self) -> Vec<Lease> {
        self.inner.state().leases.iter().collect()
    }

    /// The keys attached to the lease `id`, in key order (none if it does not exist).
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.inner.state().leases.keys(id).cloned().collect()
    }

    /// A range read at the published state; `header.revision` is the current revision.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        let (plan, versions) = {
            let state = self.inner.state();
            let plan = plan_range(
                &state.index,
                state.revision,
                state.compact_revision,
                request,
            )?;
            let (mut versions, needs_file) =
                GatheredVersions::gather(&state.unflushed, &plan.revisions);
            if needs_file {
                let read = self.inner.db.begin_read()?;
                versions.file = Some(FileVersions(read.open_table(VERSIONS)?));
            }
            (plan, versions)
        };
        let kvs = read_versions(&versions, &plan.revisions)?;
        Ok(finish_range(request, plan, kvs))
    }

    pub fn current_revision(&self) -> i64 {
        self.inner.state().revision
    }

    /// The revision of the last compaction; -1 before the first, as etcd reports it.
    pub fn compact_revision(&self) -> i64 {
        self.inner.state().compact_revision
    }

    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.inner.state().alarms.clone()
    }

    /// Makes everything applied so far durable: a flush with an fsync. It also lets redb
    /// reuse the pages that non-durable flushes freed.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.flush(true)
    }

    /// The size of the state file.
    pub fn db_size(&self) -> i64 {
        self.inner.file_size.load(Ordering::Relaxed)
    }

    /// Bytes of the state file in use. redb can only count its allocated pages by walking
    /// every tree under the write lock (tens of milliseconds per hundred megabytes, stalling
    /// every write), so this reports the file size, which redb keeps close to what is in use
    /// by reusing pages freed at each durable commit.
    pub fn db_size_in_use(&self) -> i64 {
        self.db_size()
    }

    /// etcd's defragment: compacts the state file so that the space compaction and deletes
    /// freed goes back to the file system (and the file size, which the quota counts, falls).
    /// Applying, flushing and reads of the file wait meanwhile, as they do in etcd; reads
    /// that began before have [`DEFRAGMENT_WAIT`] to finish.
    pub fn defragment(&self) -> Result<(), StoreError> {
        let _writer = self
            .inner
            .writer
            .lock()
            .expect("store writer lock poisoned");
        // What compaction and deletes removed leaves the file first, so its pages are free;
        // durably, because redb counts every non-durable commit since the last durable one as
        // an open transaction, and compacts only with none open.
        self.flush(true)?;
        let _flusher = self
            .inner
            .flusher
            .lock()
            .expect("store flusher lock poisoned");
        let mut db = self.inner.db.0.write().expect("state file lock poisoned");
        let deadline = Instant::now() + DEFRAGMENT_WAIT;
        loop {
            match db.compact() {
                Ok(_) => break,
                // No transaction can begin now, so the open ones are about to end.
                Err(redb::CompactionError::TransactionInProgress) if Instant::now() < deadline => {
                    std::thread::sleep(DEFRAGMENT_POLL);
                }
                Err(error) => return Err(error.into()),
            }
        }
        drop(db);
        self.inner.measure_file_size();
        Ok(())
    }

    /// A CRC-32 over every stored version up to `revision` (0: the current revision), so that
    /// members can check that they hold the same data. Returns the hash, the compact revision
    /// and the revision hashed.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), KvError> {
        let read = self.read_everything()?;
        let (compact_revision, at) = {
            let state = self.inner.state();
            if revision > 0 && revision < state.compact_revision {
                return Err(KvError::Compacted);
            }
            if revision > state.revision {
                return Err(KvError::FutureRevision);
            }
            let at = if revision <= 0 {
                state.revision
            } else {
                revision
            };
            (state.compact_revision, at)
        };
        let versions = read.open_table(VERSIONS)?;
        let mut hasher = crc32fast::Hasher::new();
        let last = Revision {
            main: at,
            sub: i64::MAX,
        }
        .to_key();
        for entry in chunks::range(&versions, &[0; 16], &last)? {
            let (revision, value) = entry?;
            hasher.update(&revision);
            hasher.update(&value);
        }
        Ok((hasher.finalize(), compact_revision, at))
    }

    /// A consistent copy of the whole state (versions, counters, alarms, Raft metadata) for
    /// [`Store::install_snapshot`] on another member.
    pub fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        // One redb read transaction of a flushed file: the Raft metadata matches the data
        // exactly.
        let read = self.read_everything()?;
        let mut snapshot = SnapshotWriter::new();
        for entry in read.open_table(META)?.iter()? {
            let (name, value) = entry?;
            snapshot.record(SnapshotRecord::Meta(name.value(), value.value()))?;
        }
        for entry in chunks::all(&read.open_table(VERSIONS)?)? {
            let (revision, value) = entry?;
            snapshot.record(SnapshotRecord::Version(&revision, &value))?;
        }
        for entry in read.open_table(LEASES)?.iter()? {
            let (id, value) = entry?;
            snapshot.record(SnapshotRecord::Lease(id.value(), value.value()))?;
        }
        Ok(snapshot.finish())
    }

    /// Replaces the whole state with `snapshot`; durable when it returns.
    pub fn install_snapshot(&self, snapshot: &[u8]) -> Result<(), StoreError> {
        self.install_records(&parse_snapshot(snapshot)?)
    }

    /// The whole store as a backup file (see [`backup`]): what etcd's Snapshot call sends.
    pub fn backup(&self) -> Result<Vec<u8>, StoreError> {
        Ok(backup::encode(self.snapshot()?))
    }

    /// Loads a backup (a [`Store::backup`] saved with `etcdctl snapshot save`) as the state
    /// of a member that will found a new cluster: every version, lease and alarm, but not the
    /// Raft position of the cluster it came from, so that Raft starts afresh on top of it.
    /// Durable when it returns; answers the restored revision.
    pub fn restore_backup(&self, backup: &[u8]) -> Result<i64, StoreError> {
        let records: Vec<SnapshotRecord<'_>> = parse_snapshot(backup::decode(backup)?)?
            .into_iter()
            .filter(|record| !matches!(record, SnapshotRecord::Meta(META_RAFT, _)))
            .collect();
        self.install_records(&records)?;
        Ok(self.current_revision())
    }

    fn install_records(&self, records: &[SnapshotRecord<'_>]) -> Result<(), StoreError> {
        let mut builder = StateBuilder::new();
        let state = records
            .iter()
            .try_for_each(|record| builder.record(record))
            .and_then(|()| builder.finish())
            .map_err(|error| match error {
                StoreError::Corrupt(reason) => StoreError::InvalidSnapshot(reason),
                other => other,
            })?;

        let _writer = self
            .inner
            .writer
            .lock()
            .expect("store writer lock poisoned");
        // No flush may write the old state's unflushed changes over the new one.
        let mut durable_meta = self
            .inner
            .flusher
            .lock()
            .expect("store flusher lock poisoned");
        // Durability::Immediate, redb's default: durable on return, as the caller requires.
        let txn = self.inner.db.begin_write()?;
        txn.delete_table(VERSIONS)?;
        txn.delete_table(META)?;
        txn.delete_table(LEASES)?;
        {
            let mut meta = txn.open_table(META)?;
            let mut leases = txn.open_table(LEASES)?;
            let mut versions = Vec::new();
            for record in records {
                match *record {
                    SnapshotRecord::Meta(name, value) => {
                        meta.insert(name, value)?;
                    }
                    SnapshotRecord::Version(revision, value) => versions.push((*revision, value)),
                    SnapshotRecord::Lease(id, value) => {
                        leases.insert(id, value)?;
                    }
                }
            }
            // The state builder above accepted the versions only in revision order.
            chunks::insert(&mut txn.open_table(VERSIONS)?, versions)?;
        }
        // Versions the published index names are gone once this commits.
        let mut published = self.inner.state_mut();
        txn.commit()?;
        self.inner.measure_file_size();
        let lease_changes = published.leases.changes_to(&state.leases);
        let revision = state.revision;
        durable_meta.clone_from(&state.raft_meta);
        *published = state;
        drop(published);
        if let Some(sink) = self.inner.sink() {
            sink.replaced(revision);
        }
        self.notify_lease_changes(&lease_changes);
        Ok(())
    }
}

/// Rebuilds the published state from the tables.
fn load_state(db: &Database) -> Result<State, StoreError> {
    let read = db.begin_read()?;
    let mut builder = StateBuilder::new();
    for entry in read.open_table(META)?.iter()? {
        let (name, value) = entry?;
        builder.record(&SnapshotRecord::Meta(name.value(), value.value()))?;
    }
    for entry in chunks::all(&read.open_table(VERSIONS)?)? {
        let (revision, value) = entry?;
        builder.record(&SnapshotRecord::Version(&revision, &value))?;
    }
    for entry in read.open_table(LEASES)?.iter()? {
        let (id, value) = entry?;
        builder.record(&SnapshotRecord::Lease(id.value(), value.value()))?;
    }
    builder.finish()
}

/// Moves the versions of a file written before chunks into [`VERSIONS`], in the opening
/// transaction.
fn migrate_legacy_revisions(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let legacy = txn
        .list_tables()?
        .any(|table| table.name() == LEGACY_REVISIONS.name());
    if !legacy {
        return Ok(());
    }
    {
        let old = txn.open_table(LEGACY_REVISIONS)?;
        let mut rows = Vec::new();
        for entry in old.iter()? {
            let (revision, value) = entry?;
            rows.push((*revision.value(), value.value().to_vec()));
        }
        let mut versions = txn.open_table(VERSIONS)?;
        chunks::insert(
            &mut versions,
            rows.iter()
                .map(|(revision, value)| (*revision, value.as_slice())),
        )?;
        tracing::info!(
            versions = rows.len(),
            "packed the state file's versions into chunks"
        );
    }
    txn.delete_table(LEGACY_REVISIONS)?;
    Ok(())
}

/// How much unflushed data makes a batch flush at once rather than wait for the next sync.
const FLUSH_BYTES: usize = 16 * 1024 * 1024;

/// The counters and the Raft metadata as of one published state, as the file keeps them.
struct MetaRecord {
    revision: i64,
    compact_revision: i64,
    alarms: Vec<u8>,
    raft: Option<Vec<u8>>,
}

impl MetaRecord {
    fn of(state: &State) -> MetaRecord {
        MetaRecord {
            revision: state.revision,
            compact_revision: state.compact_revision,
            alarms: encode_alarms(&state.alarms),
            raft: state.raft_meta.clone(),
        }
    }

    fn write(&self, meta: &mut redb::Table<'_, &str, &[u8]>) -> Result<(), StoreError> {
        meta.insert(META_REVISION, encode_i64(self.revision).as_slice())?;
        meta.insert(
            META_COMPACT_REVISION,
            encode_i64(self.compact_revision).as_slice(),
        )?;
        meta.insert(META_ALARMS, self.alarms.as_slice())?;
        if let Some(raft) = &self.raft {
            meta.insert(META_RAFT, raft.as_slice())?;
        }
        Ok(())
    }
}
