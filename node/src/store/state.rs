//! The in-memory state every read consults: the key index and the store-wide counters, as
//! of the last published batch. Built from the tables (or a snapshot) at start.

use std::collections::{BTreeMap, BTreeSet};

use super::codec::{
    decode_alarms, decode_i64, decode_lease, SnapshotRecord, Stored, META_ALARMS,
    META_COMPACT_REVISION, META_RAFT, META_REVISION,
};
use super::error::StoreError;
use super::index::{Index, Revision};
use super::lease::Leases;
use super::unflushed::{RevisionKey, Unflushed};
use crate::proto::etcdserverpb::AlarmMember;
use crate::proto::mvccpb::KeyValue;

pub(crate) struct State {
    pub index: Index,
    /// The store revision: the main revision of the newest write (1 in a new store, as etcd).
    pub revision: i64,
    /// Reads below this revision fail; -1 until the first compaction, as etcd reports it.
    pub compact_revision: i64,
    /// Sorted by (alarm type, member), so that it persists and lists deterministically.
    pub alarms: Vec<AlarmMember>,
    pub leases: Leases,
    pub raft_meta: Option<Vec<u8>>,
    /// Published changes the file does not hold yet.
    pub unflushed: Unflushed,
}

impl State {
    /// Takes the changes of an applied batch.
    pub fn publish(&mut self, batch: BatchOutcome, raft_meta: &[u8]) {
        self.unflushed
            .add(batch.written, batch.removed, &batch.leases);
        for (key, newer) in batch.newer {
            // A key's lease is the one its live version names: follow each changed key.
            let after = newer.live_lease().unwrap_or(0);
            let before = match self.index.get_mut(&key) {
                Some(history) => {
                    let before = history.live_lease().unwrap_or(0);
                    history.append(newer);
                    before
                }
                None => {
                    self.index.insert(key.clone(), newer);
                    0
                }
            };
            self.leases.reattach(&key, before, after);
        }
        for (&id, &ttl) in &batch.leases {
            self.leases.set(id, ttl);
        }
        // Compacting after appending the batch's later changes gives the same history as
        // compacting in between: compaction never touches revisions above its own.
        for key in batch.compacted_keys {
            if let Some(history) = self.index.get_mut(&key) {
                history.compact(batch.compact_revision);
                if history.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
        self.revision = batch.revision;
        self.compact_revision = batch.compact_revision;
        self.alarms = batch.alarms;
        self.raft_meta = Some(raft_meta.to_vec());
    }
}

/// What a batch changed, to publish.
pub(crate) struct BatchOutcome {
    /// The versions it stored, by revision.
    pub written: BTreeMap<RevisionKey, Vec<u8>>,
    /// Versions of earlier batches its compactions removed.
    pub removed: Vec<RevisionKey>,
    /// Per key, only the changes the batch made (all newer than the published ones).
    pub newer: Index,
    pub revision: i64,
    pub compact_revision: i64,
    pub alarms: Vec<AlarmMember>,
    /// Keys whose history the batch's compactions cut.
    pub compacted_keys: BTreeSet<Vec<u8>>,
    /// Leases the batch granted (`Some(ttl)`) or revoked (`None`), the last change of each.
    pub leases: BTreeMap<i64, Option<i64>>,
}

/// Rebuilds a [`State`] from meta entries and stored versions (in revision order).
pub(crate) struct StateBuilder {
    state: State,
    last: Option<Revision>,
}

impl StateBuilder {
    pub fn new() -> Self {
        StateBuilder {
            state: State {
                index: Index::new(),
                revision: 1,
                compact_revision: -1,
                alarms: Vec::new(),
                leases: Leases::default(),
                raft_meta: None,
                unflushed: Unflushed::default(),
            },
            last: None,
        }
    }

    pub fn record(&mut self, record: &SnapshotRecord<'_>) -> Result<(), StoreError> {
        match *record {
            SnapshotRecord::Meta(name, value) => self.meta(name, value),
            SnapshotRecord::Version(revision, value) => self.version(revision, value),
            SnapshotRecord::Lease(id, value) => {
                let (id, ttl) = decode_lease(id, value)?;
                self.state.leases.set(id, Some(ttl));
                Ok(())
            }
        }
    }

    fn meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        match name {
            META_REVISION => self.state.revision = decode_i64(name, value)?,
            META_COMPACT_REVISION => self.state.compact_revision = decode_i64(name, value)?,
            META_ALARMS => self.state.alarms = decode_alarms(value)?,
            META_RAFT => self.state.raft_meta = Some(value.to_vec()),
            other => {
                return Err(StoreError::Corrupt(format!("unknown meta entry {other:?}")));
            }
        }
        Ok(())
    }

    fn version(&mut self, key: &[u8; 16], value: &[u8]) -> Result<(), StoreError> {
        let revision = Revision::from_key(key);
        if self.last.is_some_and(|last| last >= revision) {
            return Err(StoreError::Corrupt(format!(
                "revision {}.{} is out of order",
                revision.main, revision.sub
            )));
        }
        self.last = Some(revision);
        let stored = Stored::parse(value, revision)?;
        let KeyValue {
            key,
            create_revision,
            version,
            lease,
            ..
        } = stored.decode(revision)?;
        if stored.tombstone {
            match self.state.index.get_mut(&key) {
                Some(history) if history.live().is_some() => history.tombstone(revision),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "revision {} deletes a key that does not exist",
                        revision.main
                    )))
                }
            }
        } else {
            self.state
                .index
                .entry(key)
                .or_default()
                .put(revision, create_revision, version, lease);
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<State, StoreError> {
        if let Some(last) = self.last {
            if last.main > self.state.revision {
                return Err(StoreError::Corrupt(format!(
                    "stored revision {} is newer than the store revision {}",
                    last.main, self.state.revision
                )));
            }
        }
        for (key, history) in &self.state.index {
            let lease = history.live_lease().unwrap_or(0);
            if lease == 0 {
                continue;
            }
            // A put names only existing leases and a revoke deletes the lease's keys, so a
            // live key never outlives its lease.
            if self.state.leases.ttl(lease).is_none() {
                return Err(StoreError::Corrupt(format!(
                    "key {:?} is attached to lease {lease:x}, which does not exist",
                    String::from_utf8_lossy(key)
                )));
            }
            self.state.leases.reattach(key, 0, lease);
        }
        Ok(self.state)
    }
}
