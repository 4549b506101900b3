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
//!
//! A flush takes the waiting versions as a whole (a frozen generation that readers still
//! consult) and lets go of them as a whole once committed: the state's locks are held for
//! a pointer swap, not for copying or dropping a second's worth of versions, which stalled
//! applying and reads for milliseconds once a second.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A stored version's key in the revision table (main and sub revision, big-endian).
pub(crate) type RevisionKey = [u8; 16];

type Versions = BTreeMap<RevisionKey, Arc<[u8]>>;

#[derive(Default)]
pub(crate) struct Unflushed {
    /// Versions published since the last flush began.
    versions: Versions,
    /// The versions the flush in progress (or one that failed) writes: older than all of
    /// `versions`.
    flushing: Arc<Versions>,
    /// Versions compaction removed that the file may still hold, oldest first.
    removed: Vec<RevisionKey>,
    /// Leases granted (`Some(ttl)`) or revoked (`None`) since the last flush.
    leases: BTreeMap<i64, Option<i64>>,
    /// Bytes of `versions`.
    bytes: usize,
}

/// What one flush writes.
pub(crate) struct FlushSet {
    pub versions: Arc<Versions>,
    pub removed: Vec<RevisionKey>,
    pub leases: Vec<(i64, Option<i64>)>,
}

impl Unflushed {
    pub fn get(&self, key: &RevisionKey) -> Option<&Arc<[u8]>> {
        self.versions.get(key).or_else(|| self.flushing.get(key))
    }

    /// The unflushed versions from `first` to `last`, in revision order.
    pub fn range(&self, first: &RevisionKey, last: &RevisionKey) -> Vec<(RevisionKey, Arc<[u8]>)> {
        // The flushing generation holds only revisions older than the waiting one's.
        self.flushing
            .range(*first..=*last)
            .chain(self.versions.range(*first..=*last))
            .map(|(key, value)| (*key, value.clone()))
            .collect()
    }

    /// Bytes of versions published since the last flush began.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
            && self.flushing.is_empty()
            && self.removed.is_empty()
            && self.leases.is_empty()
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
            // Also when it was found here, and when the flushing generation holds it (that
            // flush writes it): the next flush removes it from the file. Readers no longer
            // look for it meanwhile: compaction took it out of the index.
            self.removed.push(key);
        }
        for (&id, &ttl) in leases {
            self.leases.insert(id, ttl);
        }
    }

    /// Freezes the waiting versions into the flushing generation and hands them out; a
    /// generation left by a failed flush is written again with them.
    pub fn flush_set(&mut self) -> FlushSet {
        let waiting = std::mem::take(&mut self.versions);
        self.bytes = 0;
        if self.flushing.is_empty() {
            self.flushing = Arc::new(waiting);
        } else {
            let mut retried = (*self.flushing).clone();
            retried.extend(waiting);
            self.flushing = Arc::new(retried);
        }
        FlushSet {
            versions: self.flushing.clone(),
            removed: self.removed.clone(),
            leases: self.leases.iter().map(|(&id, &ttl)| (id, ttl)).collect(),
        }
    }

    /// Forgets what `flushed` wrote, now that the file holds it; changes made since it was
    /// taken stay. The versions themselves are freed when `flushed` is dropped, which the
    /// caller does after letting go of the state's lock.
    pub fn forget(&mut self, flushed: &FlushSet) {
        debug_assert!(Arc::ptr_eq(&self.flushing, &flushed.versions));
        self.flushing = Arc::default();
        // Removals are only ever appended, so the flushed ones are the oldest.
        self.removed.drain(..flushed.removed.len());
        for (id, ttl) in &flushed.leases {
            if self.leases.get(id) == Some(ttl) {
                self.leases.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(main: u64) -> RevisionKey {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&main.to_be_bytes());
        key
    }

    fn publish(unflushed: &mut Unflushed, mains: &[u64]) {
        let written = mains
            .iter()
            .map(|&main| (key(main), format!("v{main}").into_bytes()))
            .collect();
        unflushed.add(written, Vec::new(), &BTreeMap::new());
    }

    fn mains(versions: &[(RevisionKey, Arc<[u8]>)]) -> Vec<u64> {
        versions
            .iter()
            .map(|(key, _)| u64::from_be_bytes(key[..8].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn versions_being_flushed_stay_readable_until_forgotten_and_later_ones_stay_after() {
        let mut unflushed = Unflushed::default();
        publish(&mut unflushed, &[2, 3]);
        let set = unflushed.flush_set();
        assert_eq!(
            set.versions.keys().copied().collect::<Vec<_>>(),
            [key(2), key(3)]
        );
        assert_eq!(
            unflushed.bytes(),
            0,
            "the waiting versions were handed to the flush"
        );

        publish(&mut unflushed, &[4]);
        assert_eq!(unflushed.get(&key(2)).map(|v| &v[..]), Some(&b"v2"[..]));
        assert_eq!(mains(&unflushed.range(&key(1), &key(9))), [2, 3, 4]);

        unflushed.forget(&set);
        assert_eq!(unflushed.get(&key(2)), None);
        assert_eq!(mains(&unflushed.range(&key(1), &key(9))), [4]);
        assert!(!unflushed.is_empty());
        assert_eq!(
            unflushed
                .flush_set()
                .versions
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [key(4)]
        );
    }

    #[test]
    fn a_failed_flush_is_written_again_with_the_next() {
        let mut unflushed = Unflushed::default();
        publish(&mut unflushed, &[2]);
        let failed = unflushed.flush_set();
        drop(failed);
        publish(&mut unflushed, &[3]);
        let set = unflushed.flush_set();
        assert_eq!(
            set.versions.keys().copied().collect::<Vec<_>>(),
            [key(2), key(3)]
        );
        unflushed.forget(&set);
        assert!(unflushed.is_empty());
    }
}
