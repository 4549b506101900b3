//! Stored versions packed into chunks: the state file's version table.
//!
//! One redb row per version made every flush insert tens of thousands of small rows, and redb
//! rebuilds a leaf and its branch pages for each insert; with revisions always appended at
//! the end, its leaves also split half full. That was most of the flush's CPU and about a
//! tenth of a busy member's. A row of [`VERSIONS`] instead holds consecutive versions, up to
//! about a page of them, under the key of the newest: the version of a revision is in the
//! first chunk whose key is not below it.
//!
//! A chunk is a sequence of `[revision key: 16][length: u32, big-endian][stored version]` in
//! revision order. Chunks cover disjoint spans of revisions, in key order.

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{AccessGuard, ReadableTable, Table};

use super::error::StoreError;
use super::unflushed::RevisionKey;

/// Bytes of versions after which a chunk is closed: one chunk and redb's leaf overhead fill
/// one 4 KiB page. A larger version makes a chunk of its own.
const CHUNK_BYTES: usize = 4000;

const RECORD_HEADER: usize = 16 + 4;

/// One version record in a chunk: its key, its bytes and where the next record starts.
fn record_at(chunk: &[u8], at: usize) -> Result<(&RevisionKey, &[u8], usize), StoreError> {
    let corrupt = || StoreError::Corrupt("a version chunk is truncated".into());
    let header = chunk.get(at..at + RECORD_HEADER).ok_or_else(corrupt)?;
    let (key, len) = header.split_at(16);
    let key: &RevisionKey = key.try_into().expect("16 bytes");
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    let start = at + RECORD_HEADER;
    let value = chunk.get(start..start + len).ok_or_else(corrupt)?;
    Ok((key, value, start + len))
}

/// Every record of a chunk, in revision order.
fn records(chunk: &[u8]) -> Result<Vec<(RevisionKey, &[u8])>, StoreError> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < chunk.len() {
        let (key, value, next) = record_at(chunk, at)?;
        out.push((*key, value));
        at = next;
    }
    Ok(out)
}

type VersionTable<'txn> = Table<'txn, &'static RevisionKey, &'static [u8]>;

/// Packs versions, given in revision order, into chunks and stores each under its newest
/// revision.
fn pack<'v>(
    table: &mut VersionTable<'_>,
    versions: impl IntoIterator<Item = (RevisionKey, &'v [u8])>,
) -> Result<(), StoreError> {
    let mut chunk = Vec::new();
    let mut last = [0; 16];
    for (key, value) in versions {
        let len = u32::try_from(value.len())
            .map_err(|_| StoreError::Corrupt("a version exceeds 4 GiB".into()))?;
        chunk.extend_from_slice(&key);
        chunk.extend_from_slice(&len.to_be_bytes());
        chunk.extend_from_slice(value);
        last = key;
        if chunk.len() >= CHUNK_BYTES {
            table.insert(&last, chunk.as_slice())?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        table.insert(&last, chunk.as_slice())?;
    }
    Ok(())
}

/// Stores `versions`, given in revision order. They normally all follow what the table
/// holds; chunks they overlap are taken apart and packed again with them, a newly given
/// version replacing a stored one of the same revision.
pub(crate) fn insert<'v>(
    table: &mut VersionTable<'_>,
    versions: impl IntoIterator<Item = (RevisionKey, &'v [u8])>,
) -> Result<(), StoreError> {
    let mut versions = versions.into_iter().peekable();
    let Some(&(first, _)) = versions.peek() else {
        return Ok(());
    };
    let mut overlapped = Vec::new();
    for entry in table.range::<&RevisionKey>(&first..)? {
        let (key, chunk) = entry?;
        overlapped.push((*key.value(), chunk.value().to_vec()));
    }
    if overlapped.is_empty() {
        return pack(table, versions);
    }
    let mut merged: BTreeMap<RevisionKey, &[u8]> = BTreeMap::new();
    for (key, chunk) in &overlapped {
        table.remove(key)?;
        merged.extend(records(chunk)?);
    }
    for (key, value) in versions {
        merged.insert(key, value);
    }
    pack(table, merged)
}

/// Removes the versions of `revisions` (in any order) that the table holds.
pub(crate) fn remove(
    table: &mut VersionTable<'_>,
    revisions: &[RevisionKey],
) -> Result<(), StoreError> {
    let mut revisions = revisions.to_vec();
    revisions.sort_unstable();
    revisions.dedup();
    let mut rest = &revisions[..];
    while let Some(first) = rest.first() {
        let found = table.range::<&RevisionKey>(first..)?.next().transpose()?;
        let Some((key, chunk)) = found.map(|(key, chunk)| (*key.value(), chunk.value().to_vec()))
        else {
            return Ok(());
        };
        let within = rest.partition_point(|revision| *revision <= key);
        let (gone, later) = rest.split_at(within);
        let stored = records(&chunk)?;
        let kept: Vec<(RevisionKey, &[u8])> = stored
            .iter()
            .filter(|(revision, _)| gone.binary_search(revision).is_err())
            .copied()
            .collect();
        rest = later;
        if kept.len() == stored.len() {
            continue;
        }
        table.remove(&key)?;
        pack(table, kept)?;
    }
    Ok(())
}

/// Calls `read` with the stored version of `revision`, if the table holds it.
pub(crate) fn with_version<R>(
    table: &impl ReadableTable<&'static RevisionKey, &'static [u8]>,
    revision: &RevisionKey,
    read: impl FnOnce(&[u8]) -> R,
) -> Result<Option<R>, StoreError> {
    let Some(entry) = table.range::<&RevisionKey>(revision..)?.next() else {
        return Ok(None);
    };
    let (_, chunk) = entry?;
    let chunk = chunk.value();
    let mut at = 0;
    while at < chunk.len() {
        let (key, value, next) = record_at(chunk, at)?;
        if key == revision {
            return Ok(Some(read(value)));
        }
        if key > revision {
            break;
        }
        at = next;
    }
    Ok(None)
}

/// The stored versions from `first` through `last`, in revision order.
pub(crate) fn range<'t>(
    table: &'t impl ReadableTable<&'static RevisionKey, &'static [u8]>,
    first: &RevisionKey,
    last: &RevisionKey,
) -> Result<Versions<'t>, StoreError> {
    Ok(Versions {
        chunks: table.range::<&RevisionKey>((Bound::Included(first), Bound::Unbounded))?,
        chunk: None,
        at: 0,
        first: *first,
        last: *last,
        done: false,
    })
}

/// Every stored version, in revision order.
pub(crate) fn all<'t>(
    table: &'t impl ReadableTable<&'static RevisionKey, &'static [u8]>,
) -> Result<Versions<'t>, StoreError> {
    range(table, &[0; 16], &[0xff; 16])
}

/// An iterator over stored versions (see [`range`]).
pub(crate) struct Versions<'t> {
    chunks: redb::Range<'t, &'static RevisionKey, &'static [u8]>,
    chunk: Option<AccessGuard<'t, &'static [u8]>>,
    at: usize,
    first: RevisionKey,
    last: RevisionKey,
    done: bool,
}

impl Iterator for Versions<'_> {
    type Item = Result<(RevisionKey, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some(chunk) = &self.chunk {
                let bytes = chunk.value();
                if self.at < bytes.len() {
                    let (key, value, next) = match record_at(bytes, self.at) {
                        Ok(record) => record,
                        Err(error) => {
                            self.done = true;
                            return Some(Err(error));
                        }
                    };
                    self.at = next;
                    if *key < self.first {
                        continue;
                    }
                    if *key > self.last {
                        break;
                    }
                    return Some(Ok((*key, value.to_vec())));
                }
                self.chunk = None;
            }
            match self.chunks.next()? {
                Ok((_, chunk)) => {
                    self.chunk = Some(chunk);
                    self.at = 0;
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error.into()));
                }
            }
        }
        self.done = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableTableMetadata, TableDefinition};

    const TABLE: TableDefinition<&RevisionKey, &[u8]> = TableDefinition::new("t");

    fn key(main: u8) -> RevisionKey {
        let mut key = [0; 16];
        key[7] = main;
        key
    }

    fn value(main: u8) -> Vec<u8> {
        vec![main; 100 + main as usize * 7]
    }

    fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        (dir, db)
    }

    fn write(db: &Database, change: impl FnOnce(&mut VersionTable<'_>)) {
        let txn = db.begin_write().unwrap();
        change(&mut txn.open_table(TABLE).unwrap());
        txn.commit().unwrap();
    }

    /// The versions of `mains`, stored in one transaction.
    fn insert_versions(
        db: &Database,
        mains: impl Iterator<Item = u8>,
    ) -> Vec<(RevisionKey, Vec<u8>)> {
        let versions: Vec<(RevisionKey, Vec<u8>)> =
            mains.map(|main| (key(main), value(main))).collect();
        write(db, |table| {
            insert(table, versions.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap()
        });
        versions
    }

    fn stored(db: &Database) -> Vec<(RevisionKey, Vec<u8>)> {
        let read = db.begin_read().unwrap();
        let table = read.open_table(TABLE).unwrap();
        all(&table).unwrap().collect::<Result<_, _>>().unwrap()
    }

    fn chunk_count(db: &Database) -> u64 {
        let read = db.begin_read().unwrap();
        read.open_table(TABLE).unwrap().len().unwrap()
    }

    #[test]
    fn versions_are_found_by_revision_and_read_back_in_order() {
        let (_dir, db) = database();
        let versions = insert_versions(&db, 1..=200);
        let chunks = chunk_count(&db);
        assert!(
            (10..100).contains(&chunks),
            "200 versions of about 800 bytes in page-sized chunks, not {chunks}"
        );
        assert_eq!(stored(&db), versions);

        let read = db.begin_read().unwrap();
        let table = read.open_table(TABLE).unwrap();
        for main in [1, 2, 77, 199, 200] {
            let found = with_version(&table, &key(main), |bytes| bytes.to_vec()).unwrap();
            assert_eq!(found, Some(value(main)), "revision {main}");
        }
        assert_eq!(with_version(&table, &key(0), |_| ()).unwrap(), None);
        assert_eq!(with_version(&table, &key(201), |_| ()).unwrap(), None);
        let middle: Vec<_> = range(&table, &key(50), &key(60))
            .unwrap()
            .map(|entry| entry.unwrap().0)
            .collect();
        assert_eq!(middle, (50..=60).map(key).collect::<Vec<_>>());
    }

    #[test]
    fn removal_keeps_the_rest_of_each_chunk() {
        let (_dir, db) = database();
        let versions = insert_versions(&db, 1..=100);
        // Every third version, the last one (a chunk's key) and one never stored.
        let mut gone: Vec<RevisionKey> = (1..=100).step_by(3).map(key).collect();
        gone.extend([key(100), key(150)]);
        gone.reverse();
        write(&db, |table| remove(table, &gone).unwrap());
        let expected: Vec<_> = versions
            .into_iter()
            .filter(|(k, _)| !gone.contains(k))
            .collect();
        assert_eq!(stored(&db), expected);
        let read = db.begin_read().unwrap();
        let table = read.open_table(TABLE).unwrap();
        assert_eq!(with_version(&table, &key(4), |_| ()).unwrap(), None);
        assert_eq!(
            with_version(&table, &key(99), |b| b.len()).unwrap(),
            Some(793)
        );
    }

    #[test]
    fn versions_overlapping_stored_chunks_are_merged_in() {
        let (_dir, db) = database();
        let odd = insert_versions(&db, (1..=60).filter(|main| main % 2 == 1));
        let even = insert_versions(&db, (30..=80).filter(|main| main % 2 == 0));
        let mut expected = odd;
        expected.extend(even);
        expected.sort();
        assert_eq!(stored(&db), expected);
    }

    #[test]
    fn a_truncated_chunk_is_reported_as_corrupt() {
        let (_dir, db) = database();
        write(&db, |table| {
            table.insert(&key(5), &[1u8, 2, 3][..]).unwrap();
        });
        let read = db.begin_read().unwrap();
        let table = read.open_table(TABLE).unwrap();
        assert!(matches!(
            with_version(&table, &key(5), |_| ()),
            Err(StoreError::Corrupt(_))
        ));
        let first = all(&table).unwrap().next().unwrap();
        assert!(matches!(first, Err(StoreError::Corrupt(_))));
    }
}
