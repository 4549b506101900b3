//! The store's changes as watchers see them: the events each batch publishes (handed to a
//! [`ChangeSink`]), pages of history read back from the revision table, and the previous
//! versions that `prev_kv` asks for.

use std::ops::Bound;
use std::sync::{Arc, Weak};

use super::chunks;
use super::codec::{Stored, VERSIONS};
use super::error::{KvError, StoreError};
use super::index::{IndexView, KeySpan, Revision};
use super::range::{read_version, FileVersions, GatheredVersions};
use super::{Inner, Store};
use crate::proto::mvccpb::{event::EventType, Event};

/// Receives every change the store publishes, in order. The store calls it while it holds
/// its writer lock, right after readers can see the change: a sink sees changes in exactly
/// the order the store made them, and must return quickly (no I/O, no waiting).
pub trait ChangeSink: Send + Sync {
    /// Whether the next batch's events are wanted. Decoding every change into an event costs
    /// each member about as much as a tenth of applying a put; a sink with no one to hand
    /// them to says no, and hears of the batch through [`ChangeSink::advanced`].
    fn wants_events(&self) -> bool;

    /// A batch moved the store to `revision` with `events` (at least one), in revision order.
    fn published(&self, revision: i64, events: Vec<Event>);

    /// A batch moved the store to `revision` without its events: the sink did not want them
    /// when the batch began. Anyone who wants them since reads them from the history.
    fn advanced(&self, revision: i64);

    /// A snapshot replaced the whole state; the store is now at `revision`. What changed
    /// since the last published batch is only in the history.
    fn replaced(&self, revision: i64);
}

/// A page of history: every matching event of revisions `from..=through`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub through: i64,
}

impl Inner {
    pub(super) fn sink(&self) -> Option<Arc<dyn ChangeSink>> {
        self.sink.get().and_then(Weak::upgrade)
    }
}

impl Store {
    /// Hands every change published from now on to the sink that `build` makes. `build` is
    /// given the current revision, so the sink knows that its first change follows it; no
    /// batch runs in between. The store keeps only a weak reference: the sink may own the
    /// store without a cycle.
    ///
    /// # Panics
    /// If the store already has a sink.
    pub fn attach_sink<S: ChangeSink + 'static>(
        &self,
        build: impl FnOnce(i64) -> Arc<S>,
    ) -> Arc<S> {
        let _writer = self
            .inner
            .writer
            .lock()
            .expect("store writer lock poisoned");
        let sink = build(self.current_revision());
        let weak: Weak<dyn ChangeSink> = Arc::downgrade(&sink) as Weak<dyn ChangeSink>;
        assert!(
            self.inner.sink.set(weak).is_ok(),
            "a store feeds only one change sink"
        );
        sink
    }

    /// The changes of revisions `from..=to` (`to` capped at the current revision) to the keys
    /// that `key` and `range_end` name (etcd's range rules), in revision order.
    ///
    /// A page never splits a revision: once its events reach `max_bytes` (encoded), it ends
    /// with the revision in progress, so it may exceed `max_bytes` by that revision.
    ///
    /// Fails with [`KvError::Compacted`] when `from` is at or below the compact revision: a
    /// compaction keeps the puts of its own revision but removes its tombstones, so the
    /// history is complete only above it.
    pub fn events(
        &self,
        from: i64,
        to: i64,
        key: &[u8],
        range_end: &[u8],
        max_bytes: usize,
    ) -> Result<EventPage, KvError> {
        let span = KeySpan::new(key, range_end);
        let first = Revision { main: from, sub: 0 }.to_key();
        let (memory, read, to) = {
            let state = self.inner.state();
            if from <= state.compact_revision {
                return Err(KvError::Compacted);
            }
            let to = to.min(state.revision);
            if from > to {
                return Ok(EventPage {
                    events: Vec::new(),
                    through: to.max(from - 1),
                });
            }
            let last = Revision {
                main: to,
                sub: i64::MAX,
            }
            .to_key();
            // Opened under the lock, so that it holds the history the check above promised
            // beside what is still unflushed.
            (
                state.unflushed.range(&first, &last),
                self.inner.db.begin_read()?,
                to,
            )
        };
        let table = read.open_table(VERSIONS)?;
        let last = Revision {
            main: to,
            sub: i64::MAX,
        }
        .to_key();
        let mut file = chunks::range(&table, &first, &last)?.peekable();
        let mut memory = memory.into_iter().peekable();
        let mut page = PageBuilder {
            span,
            max_bytes,
            page: EventPage {
                events: Vec::new(),
                through: to,
            },
            bytes: 0,
            full_at: None,
        };
        loop {
            // The two sources merged in revision order; a version a flush has just written
            // may be in both, and is taken once.
            let from_file = match (file.peek(), memory.peek()) {
                (None, None) => break,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => true,
                (None, Some(_)) => false,
                (Some(Ok((stored_key, _))), Some((memory_key, _))) => {
                    if stored_key == memory_key {
                        file.next();
                        false
                    } else {
                        stored_key < memory_key
                    }
                }
            };
            let more = if from_file {
                let (stored_key, stored) = file.next().expect("peeked")?;
                page.take(Revision::from_key(&stored_key), &stored)?
            } else {
                let (memory_key, stored) = memory.next().expect("peeked");
                page.take(Revision::from_key(&memory_key), &stored)?
            };
            if !more {
                break;
            }
        }
        Ok(page.page)
    }

    /// Fills in each event's `prev_kv`: the key's version just before the event, as etcd's
    /// watch does for `prev_kv`. A creation has none, and neither has an event whose previous
    /// version compaction removed.
    pub fn fill_prev_kvs(&self, events: &mut [Event]) -> Result<(), KvError> {
        let mut wanted = Vec::new();
        let versions = {
            let state = self.inner.state();
            for (at, event) in events.iter().enumerate() {
                let Some(kv) = &event.kv else { continue };
                if event.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision {
                    continue;
                }
                // The index keeps a suffix of each key's history, so the version it names at
                // an older revision is either the right one or none at all.
                if let Some(revision) = state.index.visible(&kv.key, kv.mod_revision - 1) {
                    wanted.push((at, revision));
                }
            }
            if wanted.is_empty() {
                return Ok(());
            }
            let revisions: Vec<Revision> = wanted.iter().map(|&(_, revision)| revision).collect();
            let (mut versions, needs_file) = GatheredVersions::gather(&state.unflushed, &revisions);
            if needs_file {
                // Opened under the lock: it holds every version the index named.
                let read = self.inner.db.begin_read()?;
                versions.file = Some(FileVersions(read.open_table(VERSIONS)?));
            }
            versions
        };
        for (at, revision) in wanted {
            events[at].prev_kv = Some(read_version(&versions, revision)?);
        }
        Ok(())
    }
}

/// A history page being filled, version by version in revision order.
struct PageBuilder<'a> {
    span: KeySpan<'a>,
    max_bytes: usize,
    page: EventPage,
    bytes: usize,
    /// The revision in which the page reached `max_bytes`: it ends with that revision.
    full_at: Option<i64>,
}

impl PageBuilder<'_> {
    /// Adds the version if its key is in the span; false once the page is complete.
    fn take(&mut self, revision: Revision, stored: &[u8]) -> Result<bool, KvError> {
        if let Some(full) = self.full_at {
            if revision.main > full {
                self.page.through = full;
                return Ok(false);
            }
        }
        let version = Stored::parse(stored, revision)?;
        let key = encoded_key(version.encoded).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "revision {}.{} has no readable key",
                revision.main, revision.sub
            ))
        })?;
        if span_contains(self.span, key) {
            self.bytes += version.encoded.len();
            self.page.events.push(to_event(&version, revision)?);
            if self.bytes >= self.max_bytes {
                self.full_at = Some(revision.main);
            }
        }
        Ok(true)
    }
}

/// The event a stored version records: a put, or a delete carrying the key and the revision.
pub(super) fn to_event(version: &Stored<'_>, revision: Revision) -> Result<Event, StoreError> {
    let kind = if version.tombstone {
        EventType::Delete
    } else {
        EventType::Put
    };
    Ok(Event {
        r#type: kind as i32,
        kv: Some(version.decode(revision)?),
        prev_kv: None,
    })
}

fn span_contains(span: KeySpan<'_>, key: &[u8]) -> bool {
    match span {
        KeySpan::Key(only) => key == only,
        KeySpan::Interval(start, end) => {
            key >= start
                && match end {
                    Bound::Unbounded => true,
                    Bound::Excluded(end) => key < end,
                    Bound::Included(end) => key <= end,
                }
        }
        KeySpan::Nothing => false,
    }
}

/// The `key` field (1) of a protobuf-encoded `mvccpb.KeyValue`, found without copying the
/// value: a history read looks at many versions whose key does not match. `None` if the
/// bytes are not a valid encoding.
fn encoded_key(mut bytes: &[u8]) -> Option<&[u8]> {
    const KEY_FIELD: u64 = 1;
    const VARINT: u64 = 0;
    const LENGTH_DELIMITED: u64 = 2;
    while !bytes.is_empty() {
        let tag = take_varint(&mut bytes)?;
        match tag & 7 {
            VARINT => {
                take_varint(&mut bytes)?;
            }
            LENGTH_DELIMITED => {
                let len = usize::try_from(take_varint(&mut bytes)?).ok()?;
                if len > bytes.len() {
                    return None;
                }
                let (field, rest) = bytes.split_at(len);
                if tag >> 3 == KEY_FIELD {
                    return Some(field);
                }
                bytes = rest;
            }
            _ => return None,
        }
    }
    // proto3 leaves an empty key out.
    Some(&[])
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (at, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            *bytes = &bytes[at + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use prost::Message;

    use super::*;
    use crate::proto::cairnpb::raft_request::Request as Command;
    use crate::proto::etcdserverpb::{
        request_op, CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    };
    use crate::proto::mvccpb::KeyValue;
    use crate::store::tests::{open_temp, put_request};

    /// A published batch: the revision, then each event's type, key and mod revision.
    type Published = (i64, Vec<(i32, Vec<u8>, i64)>);

    /// Records what the store hands its sink.
    #[derive(Default)]
    struct Recorder {
        /// Says it wants no events, as a hub without watchers does.
        ignores_events: bool,
        seen: Mutex<Vec<Published>>,
        advanced: Mutex<Vec<i64>>,
        replaced: Mutex<Vec<i64>>,
    }

    impl ChangeSink for Recorder {
        fn wants_events(&self) -> bool {
            !self.ignores_events
        }

        fn advanced(&self, revision: i64) {
            self.advanced.lock().unwrap().push(revision);
        }

        fn published(&self, revision: i64, events: Vec<Event>) {
            let events = events
                .into_iter()
                .map(|event| {
                    let kv = event.kv.unwrap();
                    (event.r#type, kv.key, kv.mod_revision)
                })
                .collect();
            self.seen.lock().unwrap().push((revision, events));
        }

        fn replaced(&self, revision: i64) {
            self.replaced.lock().unwrap().push(revision);
        }
    }

    const PUT: i32 = EventType::Put as i32;
    const DELETE: i32 = EventType::Delete as i32;

    fn put(key: &str) -> Command {
        Command::Put(put_request(key.as_bytes(), b"v"))
    }

    fn delete(key: &str) -> Command {
        Command::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        })
    }

    fn compact(revision: i64) -> Command {
        Command::Compaction(CompactionRequest {
            revision,
            physical: false,
        })
    }

    fn apply(store: &Store, commands: &[Command]) {
        store.apply_batch(commands, b"raft").unwrap();
    }

    fn keys_and_revisions(page: &EventPage) -> Vec<(String, i64)> {
        page.events
            .iter()
            .map(|event| {
                let kv = event.kv.as_ref().unwrap();
                (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision)
            })
            .collect()
    }

    #[test]
    fn a_batch_hands_its_events_to_the_sink_in_revision_order() {
        let (_dir, store) = open_temp();
        let recorder = store.attach_sink(|revision| {
            assert_eq!(revision, 1);
            Arc::new(Recorder::default())
        });
        let txn = Command::Txn(TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(put_request(b"b", b"1"))),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: b"a".to_vec(),
                            ..DeleteRangeRequest::default()
                        },
                    )),
                },
            ],
            ..TxnRequest::default()
        });
        // A failed command adds nothing; a compaction of the batch's own delete does not
        // take its event away.
        let failing = Command::Put(PutRequest {
            ignore_value: true,
            ..put_request(b"missing", b"")
        });
        apply(&store, &[put("a"), txn, failing, delete("b"), compact(4)]);
        apply(&store, &[compact(4)]);
        let seen = recorder.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [(
                4,
                vec![
                    (PUT, b"a".to_vec(), 2),
                    (PUT, b"b".to_vec(), 3),
                    (DELETE, b"a".to_vec(), 3),
                    (DELETE, b"b".to_vec(), 4),
                ]
            )],
            "one call per batch with events, none for a batch without"
        );
    }

    #[test]
    fn a_sink_that_wants_no_events_hears_only_of_each_new_revision() {
        let (_dir, store) = open_temp();
        let recorder = store.attach_sink(|_| {
            Arc::new(Recorder {
                ignores_events: true,
                ..Recorder::default()
            })
        });
        apply(&store, &[put("a"), put("b")]);
        apply(&store, &[compact(2)]);
        apply(&store, &[delete("a")]);
        assert_eq!(
            *recorder.advanced.lock().unwrap(),
            [3, 4],
            "one call per batch that moved the revision, none for the compaction"
        );
        assert!(recorder.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_snapshot_install_tells_the_sink() {
        let (_dir, store) = open_temp();
        let (_other_dir, other) = open_temp();
        apply(&other, &[put("a"), put("b")]);
        let recorder = store.attach_sink(|_| Arc::new(Recorder::default()));
        store.install_snapshot(&other.snapshot().unwrap()).unwrap();
        assert_eq!(*recorder.replaced.lock().unwrap(), [3]);
        assert!(recorder.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn history_pages_filter_keys_and_never_split_a_revision() {
        let (_dir, store) = open_temp();
        apply(&store, &[put("a"), put("b"), put("ab")]);
        let txn = Command::Txn(TxnRequest {
            success: ["a", "ac", "b"]
                .into_iter()
                .map(|key| RequestOp {
                    request: Some(request_op::Request::RequestPut(put_request(
                        key.as_bytes(),
                        b"v",
                    ))),
                })
                .collect(),
            ..TxnRequest::default()
        });
        apply(&store, &[txn, delete("a")]);
        // Revisions: a=2, b=3, ab=4, txn {a, ac, b}=5, delete a=6.
        let all = store.events(1, 100, b"a", b"b", usize::MAX).unwrap();
        assert_eq!(all.through, 6, "capped at the current revision");
        assert_eq!(
            keys_and_revisions(&all),
            [
                ("a".into(), 2),
                ("ab".into(), 4),
                ("a".into(), 5),
                ("ac".into(), 5),
                ("a".into(), 6)
            ]
        );
        assert_eq!(all.events[4].r#type, DELETE);
        // A one-byte budget: the first page ends with the first revision that matched.
        let page = store.events(2, 6, b"a", b"b", 1).unwrap();
        assert_eq!(
            (keys_and_revisions(&page), page.through),
            (vec![("a".into(), 2)], 2)
        );
        let page = store.events(5, 6, b"a", b"b", 1).unwrap();
        assert_eq!(page.through, 5, "both changes of revision 5 in one page");
        assert_eq!(page.events.len(), 2);
        let single = store.events(3, 6, b"b", b"", usize::MAX).unwrap();
        assert_eq!(
            keys_and_revisions(&single),
            [("b".into(), 3), ("b".into(), 5)]
        );
        let nothing = store.events(7, 9, b"a", b"", usize::MAX).unwrap();
        assert_eq!((nothing.events.len(), nothing.through), (0, 6));
    }

    #[test]
    fn history_reads_flushed_and_unflushed_versions_once_each_in_order() {
        let (_dir, store) = open_temp();
        apply(&store, &[put("a"), put("b")]);
        store.sync().unwrap();
        apply(&store, &[put("a"), delete("b"), put("c")]);
        store.sync().unwrap();
        apply(&store, &[put("b"), put("a")]);
        // Revisions 2 to 3 and 4 to 6 are in the file, 7 to 8 only in memory.
        let all = store.events(1, 100, b"a", b"\0", usize::MAX).unwrap();
        assert_eq!(
            keys_and_revisions(&all),
            [
                ("a".into(), 2),
                ("b".into(), 3),
                ("a".into(), 4),
                ("b".into(), 5),
                ("c".into(), 6),
                ("b".into(), 7),
                ("a".into(), 8)
            ]
        );
        assert_eq!(all.events[3].r#type, DELETE);
        let mut events = all.events.clone();
        store.fill_prev_kvs(&mut events).unwrap();
        let prev_revisions: Vec<Option<i64>> = events
            .iter()
            .map(|event| event.prev_kv.as_ref().map(|kv| kv.mod_revision))
            .collect();
        assert_eq!(
            prev_revisions,
            [None, None, Some(2), Some(3), None, None, Some(4)]
        );
    }

    #[test]
    fn history_at_or_below_the_compact_revision_is_refused() {
        let (_dir, store) = open_temp();
        apply(&store, &[put("a"), put("a"), delete("a"), put("a")]);
        apply(&store, &[compact(4)]);
        assert!(matches!(
            store.events(4, 5, b"a", b"", usize::MAX),
            Err(KvError::Compacted)
        ));
        let page = store.events(5, 5, b"a", b"", usize::MAX).unwrap();
        assert_eq!(keys_and_revisions(&page), [("a".into(), 5)]);
    }

    #[test]
    fn prev_kv_is_the_version_before_each_event() {
        let (_dir, store) = open_temp();
        apply(&store, &[put("k")]);
        apply(
            &store,
            &[
                Command::Put(put_request(b"k", b"second")),
                delete("k"),
                put("k"),
            ],
        );
        let mut events = store.events(2, 5, b"k", b"", usize::MAX).unwrap().events;
        store.fill_prev_kvs(&mut events).unwrap();
        let prev: Vec<Option<(Vec<u8>, i64)>> = events
            .iter()
            .map(|event| {
                event
                    .prev_kv
                    .as_ref()
                    .map(|kv| (kv.value.clone(), kv.mod_revision))
            })
            .collect();
        assert_eq!(
            prev,
            [
                None,
                Some((b"v".to_vec(), 2)),
                Some((b"second".to_vec(), 3)),
                None
            ]
        );
        // Once compaction removed the version before, there is none to give.
        apply(&store, &[compact(4)]);
        let mut late = vec![events[1].clone()];
        late[0].prev_kv = None;
        store.fill_prev_kvs(&mut late).unwrap();
        assert_eq!(late[0].prev_kv, None);
    }

    #[test]
    fn encoded_key_finds_the_key_of_any_encoding() {
        for kv in [
            KeyValue {
                key: b"k".to_vec(),
                value: vec![9; 300],
                create_revision: 3,
                mod_revision: 1 << 40,
                version: 2,
                lease: -1,
            },
            KeyValue::default(),
            KeyValue {
                key: vec![0xff; 200],
                ..KeyValue::default()
            },
        ] {
            let encoded = kv.encode_to_vec();
            assert_eq!(encoded_key(&encoded), Some(kv.key.as_slice()));
        }
        // Fields in any order: the key after the revisions.
        let mut reordered = vec![0x10, 0x05, 0x18, 0x07];
        reordered.extend_from_slice(&[0x0a, 0x02, b'a', b'b']);
        assert_eq!(encoded_key(&reordered), Some(&b"ab"[..]));
        assert_eq!(encoded_key(&[0x0a, 0x05, b'a']), None);
        assert_eq!(encoded_key(&[0x0b]), None);
    }

    #[test]
    fn span_membership_follows_etcd_ranges() {
        assert!(span_contains(KeySpan::new(b"a", b""), b"a"));
        assert!(!span_contains(KeySpan::new(b"a", b""), b"ab"));
        assert!(span_contains(KeySpan::new(b"a", b"b"), b"azz"));
        assert!(!span_contains(KeySpan::new(b"a", b"b"), b"b"));
        assert!(span_contains(KeySpan::new(b"a", b"\0"), b"zzz"));
        assert!(!span_contains(KeySpan::new(b"b", b"a"), b"b"));
    }
}
