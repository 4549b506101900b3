//! The in-memory key index: for every key, the revisions of its versions and tombstones that
//! are still stored, so that a read at any revision finds the right version without scanning
//! the revision table.
//!
//! etcd keeps the same information as "generations" (one list of revisions per life of a
//! key). A flat, revision-ordered list of changes holds the same facts: the version visible
//! at a revision is the newest change at or before it, and it is absent if that change is a
//! tombstone. Compaction then is "drop everything before the newest change at or below the
//! compaction revision, and that change too if it is a tombstone".

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

/// An MVCC revision: `main` is the store revision a write command produced, `sub` orders the
/// changes within that command (a Txn may change several keys in one revision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    /// The revision table's key: big-endian `main` then `sub`, so that byte order is revision
    /// order (both are never negative).
    pub fn to_key(self) -> [u8; 16] {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&self.main.to_be_bytes());
        key[8..].copy_from_slice(&self.sub.to_be_bytes());
        key
    }

    pub fn from_key(key: &[u8; 16]) -> Self {
        let (main, sub) = key.split_at(8);
        Revision {
            main: i64::from_be_bytes(main.try_into().expect("8 bytes")),
            sub: i64::from_be_bytes(sub.try_into().expect("8 bytes")),
        }
    }
}

/// One stored change of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub revision: Revision,
    pub tombstone: bool,
}

/// The stored history of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    /// Ascending by revision.
    changes: Vec<Change>,
    /// `create_revision`, `version` and `lease` of the newest put; meaningful while the key
    /// is live. Kept here so that a put needs no read of the previous version, and so that a
    /// lease's keys follow from the index alone.
    created: i64,
    version: i64,
    lease: i64,
}

/// What a failed command must restore for one key (see [`KeyIndex::mark`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyMark {
    len: usize,
    created: i64,
    version: i64,
    lease: i64,
}

impl KeyIndex {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The newest change at or before `at`.
    pub fn change_at(&self, at: i64) -> Option<Change> {
        let after = self.changes.partition_point(|c| c.revision.main <= at);
        after.checked_sub(1).map(|i| self.changes[i])
    }

    /// `(create_revision, version)` of the live version, `None` if the key is deleted or has
    /// no change here.
    pub fn live(&self) -> Option<(i64, i64)> {
        match self.changes.last() {
            Some(last) if !last.tombstone => Some((self.created, self.version)),
            _ => None,
        }
    }

    /// The lease of the live version (0: none), `None` if the key is deleted or has no
    /// change here.
    pub fn live_lease(&self) -> Option<i64> {
        self.live().map(|_| self.lease)
    }

    /// Records a put; revisions must arrive in ascending order.
    pub fn put(&mut self, revision: Revision, created: i64, version: i64, lease: i64) {
        self.push(Change {
            revision,
            tombstone: false,
        });
        self.created = created;
        self.version = version;
        self.lease = lease;
    }

    /// Records a delete; revisions must arrive in ascending order.
    pub fn tombstone(&mut self, revision: Revision) {
        self.push(Change {
            revision,
            tombstone: true,
        });
    }

    fn push(&mut self, change: Change) {
        debug_assert!(self
            .changes
            .last()
            .is_none_or(|last| last.revision < change.revision));
        self.changes.push(change);
    }

    /// Appends the changes of `newer`, whose revisions all follow this key's.
    pub fn append(&mut self, newer: KeyIndex) {
        debug_assert!(match (self.changes.last(), newer.changes.first()) {
            (Some(last), Some(first)) => last.revision < first.revision,
            _ => true,
        });
        self.changes.extend(newer.changes);
        self.created = newer.created;
        self.version = newer.version;
        self.lease = newer.lease;
    }

    pub fn mark(&self) -> KeyMark {
        KeyMark {
            len: self.changes.len(),
            created: self.created,
            version: self.version,
            lease: self.lease,
        }
    }

    /// Forgets every change recorded after `mark` was taken.
    pub fn restore(&mut self, mark: KeyMark) {
        self.changes.truncate(mark.len);
        self.created = mark.created;
        self.version = mark.version;
        self.lease = mark.lease;
    }

    /// Drops the history compaction at `at` removes.
    pub fn compact(&mut self, at: i64) {
        let cut = compaction_cut(&self.changes, at);
        self.changes.drain(..cut);
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}

/// How many of the oldest `changes` (ascending) compaction at `at` removes: everything before
/// the newest change at or below `at`, and that change too when it is a tombstone (a deleted
/// key keeps no history at all).
pub(crate) fn compaction_cut(changes: &[Change], at: i64) -> usize {
    let after = changes.partition_point(|c| c.revision.main <= at);
    match after.checked_sub(1) {
        None => 0,
        Some(newest) if changes[newest].tombstone => after,
        Some(newest) => newest,
    }
}

/// Key to history, in key order (ranges are key intervals).
pub(crate) type Index = BTreeMap<Vec<u8>, KeyIndex>;

/// The keys a request names, from etcd's `key` / `range_end` pair.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeySpan<'a> {
    /// `range_end` empty: exactly `key`.
    Key(&'a [u8]),
    /// `[start, end)`; `end` unbounded when `range_end` is "\0".
    Interval(&'a [u8], Bound<&'a [u8]>),
    /// `range_end` at or before `key`: nothing.
    Nothing,
}

impl<'a> KeySpan<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeySpan::Key(key),
            [0] => KeySpan::Interval(key, Bound::Unbounded),
            end if end > key => KeySpan::Interval(key, Bound::Excluded(end)),
            _ => KeySpan::Nothing,
        }
    }
}

/// Read access to an index as of some set of applied changes.
pub(crate) trait IndexView {
    /// The put revision of `key` visible at revision `at`, if the key exists then.
    fn visible(&self, key: &[u8], at: i64) -> Option<Revision>;

    /// Calls `visit` in key order with every key of `span` that exists at `at` and its
    /// visible put revision.
    fn for_each_visible(&self, span: KeySpan<'_>, at: i64, visit: impl FnMut(&[u8], Revision));
}

fn visible_put(change: Option<Change>) -> Option<Revision> {
    change.filter(|c| !c.tombstone).map(|c| c.revision)
}

impl IndexView for Index {
    fn visible(&self, key: &[u8], at: i64) -> Option<Revision> {
        visible_put(self.get(key)?.change_at(at))
    }

    fn for_each_visible(&self, span: KeySpan<'_>, at: i64, mut visit: impl FnMut(&[u8], Revision)) {
        match span {
            KeySpan::Key(key) => {
                if let Some(revision) = self.visible(key, at) {
                    visit(key, revision);
                }
            }
            KeySpan::Interval(start, end) => {
                for (key, history) in self.range::<[u8], _>((Bound::Included(start), end)) {
                    if let Some(revision) = visible_put(history.change_at(at)) {
                        visit(key, revision);
                    }
                }
            }
            KeySpan::Nothing => {}
        }
    }
}

/// The shared index with the changes of a batch in progress on top: `newer` holds, per key,
/// only changes that follow all of `base`'s.
pub(crate) struct Layered<'a> {
    pub base: &'a Index,
    pub newer: &'a Index,
}

impl Layered<'_> {
    fn change_at(&self, key: &[u8], at: i64) -> Option<Change> {
        self.newer
            .get(key)
            .and_then(|history| history.change_at(at))
            .or_else(|| self.base.get(key)?.change_at(at))
    }

    /// Calls `visit` in key order for every key of `span` present in either layer.
    pub fn for_each_key(
        &self,
        span: KeySpan<'_>,
        mut visit: impl FnMut(&[u8], Option<&KeyIndex>, Option<&KeyIndex>),
    ) {
        let (start, end) = match span {
            KeySpan::Key(key) => {
                let (base, newer) = (self.base.get(key), self.newer.get(key));
                if base.is_some() || newer.is_some() {
                    visit(key, base, newer);
                }
                return;
            }
            KeySpan::Interval(start, end) => (Bound::Included(start), end),
            KeySpan::Nothing => return,
        };
        let mut base = self.base.range::<[u8], _>((start, end)).peekable();
        let mut newer = self.newer.range::<[u8], _>((start, end)).peekable();
        loop {
            let order = match (base.peek(), newer.peek()) {
                (None, None) => return,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((b, _)), Some((n, _))) => b.cmp(n),
            };
            match order {
                Ordering::Less => {
                    let (key, history) = base.next().expect("peeked");
                    visit(key, Some(history), None);
                }
                Ordering::Greater => {
                    let (key, history) = newer.next().expect("peeked");
                    visit(key, None, Some(history));
                }
                Ordering::Equal => {
                    let (key, base_history) = base.next().expect("peeked");
                    let (_, newer_history) = newer.next().expect("peeked");
                    visit(key, Some(base_history), Some(newer_history));
                }
            }
        }
    }
}

impl IndexView for Layered<'_> {
    fn visible(&self, key: &[u8], at: i64) -> Option<Revision> {
        visible_put(self.change_at(key, at))
    }

    fn for_each_visible(&self, span: KeySpan<'_>, at: i64, mut visit: impl FnMut(&[u8], Revision)) {
        self.for_each_key(span, |key, base, newer| {
            let change = newer
                .and_then(|history| history.change_at(at))
                .or_else(|| base?.change_at(at));
            if let Some(revision) = visible_put(change) {
                visit(key, revision);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    #[test]
    fn revision_key_orders_like_revision() {
        let a = Revision { main: 2, sub: 300 };
        let b = Revision { main: 3, sub: 0 };
        assert!(a.to_key() < b.to_key());
        assert_eq!(Revision::from_key(&a.to_key()), a);
    }

    #[test]
    fn tombstone_hides_key_until_next_put() {
        let mut history = KeyIndex::default();
        history.put(rev(2), 2, 1, 0);
        history.put(rev(3), 2, 2, 0);
        history.tombstone(rev(4));
        history.put(rev(6), 6, 1, 0);
        assert_eq!(visible_put(history.change_at(1)), None);
        assert_eq!(visible_put(history.change_at(3)), Some(rev(3)));
        assert_eq!(visible_put(history.change_at(5)), None);
        assert_eq!(visible_put(history.change_at(9)), Some(rev(6)));
        assert_eq!(history.live(), Some((6, 1)));
    }

    #[test]
    fn live_lease_follows_the_newest_put_and_a_failed_change_restores_it() {
        let mut history = KeyIndex::default();
        assert_eq!(history.live_lease(), None);
        history.put(rev(2), 2, 1, 7);
        assert_eq!(history.live_lease(), Some(7));
        let mark = history.mark();
        history.put(rev(3), 2, 2, 0);
        assert_eq!(history.live_lease(), Some(0));
        history.restore(mark);
        assert_eq!(history.live_lease(), Some(7));
        history.tombstone(rev(4));
        assert_eq!(history.live_lease(), None);
    }

    #[test]
    fn compaction_keeps_newest_live_version_and_drops_deleted_history() {
        let mut history = KeyIndex::default();
        history.put(rev(2), 2, 1, 0);
        history.put(rev(3), 2, 2, 0);
        history.tombstone(rev(4));
        history.put(rev(6), 6, 1, 0);
        history.put(rev(7), 6, 2, 0);

        let mains = |history: &KeyIndex| -> Vec<i64> {
            history.changes().iter().map(|c| c.revision.main).collect()
        };
        history.compact(3);
        assert_eq!(mains(&history), [3, 4, 6, 7]);
        history.compact(4);
        assert_eq!(mains(&history), [6, 7]);
        history.compact(6);
        assert_eq!(mains(&history), [6, 7]);
        history.compact(9);
        assert_eq!(mains(&history), [7]);
        assert_eq!(history.live(), Some((6, 2)));
    }

    #[test]
    fn span_from_range_end() {
        assert!(matches!(KeySpan::new(b"a", b""), KeySpan::Key(b"a")));
        assert!(matches!(
            KeySpan::new(b"a", b"\0"),
            KeySpan::Interval(b"a", Bound::Unbounded)
        ));
        assert!(matches!(KeySpan::new(b"b", b"a"), KeySpan::Nothing));
        assert!(matches!(KeySpan::new(b"b", b"b"), KeySpan::Nothing));
    }

    #[test]
    fn layered_view_merges_keys_and_prefers_newer_changes() {
        let mut base = Index::new();
        let mut newer = Index::new();
        for (key, main) in [(&b"a"[..], 2), (b"c", 3), (b"d", 4)] {
            base.entry(key.to_vec())
                .or_default()
                .put(rev(main), main, 1, 0);
        }
        newer.entry(b"b".to_vec()).or_default().put(rev(5), 5, 1, 0);
        newer.entry(b"c".to_vec()).or_default().tombstone(rev(6));
        let view = Layered {
            base: &base,
            newer: &newer,
        };
        let mut seen = Vec::new();
        view.for_each_visible(KeySpan::new(b"a", b"\0"), 6, |key, revision| {
            seen.push((key.to_vec(), revision.main))
        });
        assert_eq!(
            seen,
            [(b"a".to_vec(), 2), (b"b".to_vec(), 5), (b"d".to_vec(), 4)]
        );
        assert_eq!(view.visible(b"c", 5), Some(rev(3)));
        assert_eq!(view.visible(b"c", 6), None);
    }
}
