//! What has been applied but not yet written to the state file.
//!
//! A batch no longer writes the file: its versions join this set when it publishes, and a
//! flush writes the whole set in one redb transaction now and then (every second, before a
//! snapshot or a hash, and when the set grows large). A redb commit per applied batch cost
//! several page writes and about a quarter of the server's CPU per write; etcd likewise
//! commits its bolt database only every 100 ms. Nothing here is needed for durability: the
//! Raft log holds every applied entry until a snapshot, and a snapshot is taken only after a
//! flush.
//!
//! Readers consult the set before the file. A version stays here until the flush that wrote
//! it has committed, and leaves under the state's write lock, so a reader that does not find
//! it here (under the read lock) finds it in a file transaction opened under that same lock.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A stored version's key in the revision table (main and sub revision, big-endian).
pub(crate) type RevisionKey = [u8; 16];

#[derive(Default)]
pub(crate) struct Unflushed {
    versions: BTreeMap<RevisionKey, Arc<[u8]>>,
    /// Versions compaction removed that the file may still hold, oldest first.
    removed: Vec<RevisionKey>,
    /// Leases granted (`Some(ttl)`) or revoked (`None`) since the last flush.
    leases: BTreeMap<i64, Option<i64>>,
    bytes: usize,
}

/// A copy of the set taken for one flush.
pub(crate) struct FlushSet {
    pub versions: Vec<(RevisionKey, Arc<[u8]>)>,
    pub removed: Vec<RevisionKey>,
    pub leases: Vec<(i64, Option<i64>)>,
}

impl Unflushed {
    pub fn get(&self, key: &RevisionKey) -> Option<&Arc<[u8]>> {
        self.versions.get(key)
    }

    /// The unflushed versions from `first` to `last`, in revision order.
    pub fn range(&self, first: &RevisionKey, last: &RevisionKey) -> Vec<(RevisionKey, Arc<[u8]>)> {
        self.versions
            .range(*first..=*last)
            .map(|(key, value)| (*key, value.clone()))
            .collect()
    }

    /// Bytes of versions waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.removed.is_empty() && self.leases.is_empty()
    }

    /// Takes a published batch's versions, compactions and lease changes.
    pub fn add(
        &mut self,
        written: BTreeMap<RevisionKey, Vec<u8>>,
        removed: Vec<RevisionKey>,
        leases: &BTreeMap<i64, Option<i64>>,
    ) {
        for (key, value) in written {
            self.bytes += value.len();
            self.versions.insert(key, value.into());
        }
        for key in removed {
            if let Some(value) = self.versions.remove(&key) {
                self.bytes -= value.len();
            }
            // Also when it was found here: a flush in progress may be writing it.
            self.removed.push(key);
        }
        for (&id, &ttl) in leases {
            self.leases.insert(id, ttl);
        }
    }

    pub fn flush_set(&self) -> FlushSet {
        FlushSet {
            versions: self
                .versions
                .iter()
                .map(|(key, value)| (*key, value.clone()))
                .collect(),
            removed: self.removed.clone(),
            leases: self.leases.iter().map(|(&id, &ttl)| (id, ttl)).collect(),
        }
    }

    /// Forgets what `flushed` wrote, now that the file holds it; changes made since it was
    /// taken stay.
    pub fn forget(&mut self, flushed: &FlushSet) {
        for (key, _) in &flushed.versions {
            if let Some(value) = self.versions.remove(key) {
                self.bytes -= value.len();
            }
        }
        // Removals are only ever appended, so the flushed ones are the oldest.
        self.removed.drain(..flushed.removed.len());
        for (id, ttl) in &flushed.leases {
            if self.leases.get(id) == Some(ttl) {
                self.leases.remove(id);
            }
        }
    }
}
