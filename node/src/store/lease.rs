//! Leases as the store keeps them: every lease's granted TTL, and which live keys each one
//! holds. Expiry is not the store's business (the leader's lessor decides it and proposes a
//! revoke); the store only makes grants, attachments and revokes replicated and durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// etcd's `MaxLeaseTTL`: a grant asking for more fails with "too large lease TTL".
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease: its ID and the TTL, in seconds, it was granted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// A change to the lease table, as reported to the observer after a batch commits (or a
/// snapshot is installed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Granted(Lease),
    Revoked(i64),
}

/// The lease table and, derived from the key index, each lease's keys.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    ttls: BTreeMap<i64, i64>,
    /// Only leases holding at least one key have an entry.
    keys: HashMap<i64, BTreeSet<Vec<u8>>>,
}

impl Leases {
    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.ttls.get(&id).copied()
    }

    /// The keys `id` holds, in key order.
    pub fn keys(&self, id: i64) -> impl Iterator<Item = &Vec<u8>> {
        self.keys.get(&id).into_iter().flatten()
    }

    pub fn iter(&self) -> impl Iterator<Item = Lease> + '_ {
        self.ttls.iter().map(|(&id, &ttl)| Lease { id, ttl })
    }

    /// Grants (`Some(ttl)`) or revokes (`None`) a lease.
    pub fn set(&mut self, id: i64, ttl: Option<i64>) {
        match ttl {
            Some(ttl) => {
                self.ttls.insert(id, ttl);
            }
            None => {
                self.ttls.remove(&id);
                self.keys.remove(&id);
            }
        }
    }

    /// Moves `key` from the lease `before` to the lease `after` (0: none).
    pub fn reattach(&mut self, key: &[u8], before: i64, after: i64) {
        if before == after {
            return;
        }
        if before != 0 {
            if let Some(keys) = self.keys.get_mut(&before) {
                keys.remove(key);
                if keys.is_empty() {
                    self.keys.remove(&before);
                }
            }
        }
        if after != 0 {
            self.keys.entry(after).or_default().insert(key.to_vec());
        }
    }

    /// What turns `self` into `other`, for the observer after a snapshot install.
    pub fn changes_to(&self, other: &Leases) -> Vec<LeaseChange> {
        let revoked = self
            .ttls
            .keys()
            .filter(|id| !other.ttls.contains_key(id))
            .map(|&id| LeaseChange::Revoked(id));
        let granted = other
            .iter()
            .filter(|lease| self.ttl(lease.id) != Some(lease.ttl))
            .map(LeaseChange::Granted);
        revoked.chain(granted).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reattaching_moves_a_key_between_leases() {
        let mut leases = Leases::default();
        leases.set(1, Some(10));
        leases.set(2, Some(20));
        leases.reattach(b"k", 0, 1);
        leases.reattach(b"j", 0, 1);
        leases.reattach(b"k", 1, 2);
        assert_eq!(leases.keys(1).collect::<Vec<_>>(), [b"j"]);
        assert_eq!(leases.keys(2).collect::<Vec<_>>(), [b"k"]);
        leases.reattach(b"k", 2, 0);
        assert_eq!(leases.keys(2).count(), 0);
        leases.set(1, None);
        assert_eq!((leases.ttl(1), leases.keys(1).count()), (None, 0));
    }

    #[test]
    fn changes_between_two_tables() {
        let mut before = Leases::default();
        before.set(1, Some(10));
        before.set(2, Some(20));
        let mut after = Leases::default();
        after.set(2, Some(20));
        after.set(3, Some(30));
        assert_eq!(
            before.changes_to(&after),
            [
                LeaseChange::Revoked(1),
                LeaseChange::Granted(Lease { id: 3, ttl: 30 })
            ]
        );
    }
}
