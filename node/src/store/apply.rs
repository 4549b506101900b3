//! Applying a batch of Raft commands.
//!
//! The shared index is not touched while a batch runs (readers keep using it): the batch
//! records its index changes in `newer`, reads through both layers, and hands `newer` over to
//! be published. Versions go into the batch's own `written` map, where its reads see them
//! before the unflushed versions and the file; publishing moves them to the unflushed set
//! (see `unflushed`). A command that fails undoes what it wrote, so that it changes nothing,
//! and the batch carries on with the next one.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};

use redb::ReadOnlyTable;

use super::codec::{encode_tombstone, NewVersion, Stored, VERSIONS};
use super::error::{KvError, StoreError};
use super::history::to_event;
use super::index::{
    compaction_cut, Change, Index, IndexView, KeyIndex, KeyMark, KeySpan, Layered, Revision,
};
use super::lease::MAX_LEASE_TTL;
use super::range::{
    compare_holds, finish_range, plan_range, read_version, read_versions, FileVersions,
    VersionSource,
};
use super::state::{BatchOutcome, State};
use super::unflushed::RevisionKey;
use super::StateFile;
use crate::proto::cairnpb::{raft_request, raft_response};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{
    request_op, response_op, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::Event;

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

/// Whether a Txn puts anything in either branch, nested Txns included (what the NOSPACE alarm
/// refuses).
fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(nested)) => txn_puts(nested),
            _ => false,
        })
}

fn branch(txn: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

impl VersionSource for Batch<'_> {
    fn with_stored<R>(
        &self,
        revision: &RevisionKey,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        if let Some(stored) = self.written.get(revision) {
            return Ok(Some(read(stored)));
        }
        if let Some(stored) = self.base.unflushed.get(revision) {
            return Ok(Some(read(stored)));
        }
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let table = self.db.begin_read()?.open_table(VERSIONS)?;
                self.file.get_or_init(|| FileVersions(table))
            }
        };
        file.with_stored(revision, read)
    }
}

/// Which branch each Txn takes. etcd decides all of them, nested ones included, against the
/// store as it was before the outer Txn ran.
struct TxnPath {
    succeeded: bool,
    /// One per nested Txn of the taken branch, in order.
    nested: Vec<TxnPath>,
}

/// What undoes one change of the command in progress.
enum Undo {
    Stored(Revision),
    /// The key's batch history before the change; `None` when it had none.
    Key(Vec<u8>, Option<KeyMark>),
}

type FileTable = FileVersions<ReadOnlyTable<&'static [u8; 16], &'static [u8]>>;

pub(crate) struct Batch<'s> {
    base: &'s State,
    db: &'s StateFile,
    /// Opened the first time the batch reads a version that is neither its own nor unflushed.
    file: OnceCell<FileTable>,
    /// Versions the batch stored.
    written: BTreeMap<RevisionKey, Vec<u8>>,
    /// Versions older batches stored that the batch's compactions removed.
    removed: Vec<RevisionKey>,
    newer: Index,
    /// The store revision after the commands applied so far.
    revision: i64,
    compact_revision: i64,
    alarms: Vec<AlarmMember>,
    compacted_keys: BTreeSet<Vec<u8>>,
    /// Leases granted (`Some(ttl)`) or revoked (`None`) by the batch so far.
    leases: BTreeMap<i64, Option<i64>>,
    /// Keys the batch put with a lease, by lease. With the published attachments this is a
    /// superset of a lease's keys (a later change or a rolled-back command may have moved a
    /// key away), so each is checked against the index before use; it needs no undo.
    attached: BTreeMap<i64, BTreeSet<Vec<u8>>>,
    /// Changes the command in progress has made: the next sub revision.
    changes: i64,
    undo: Vec<Undo>,
    /// What the commands applied so far changed, for watchers, in revision order; `None`
    /// when no watcher wanted them as the batch began (they can read them from history).
    events: Option<Vec<Event>>,
}

impl<'s> Batch<'s> {
    /// A batch on top of `base`; it notes watch events only if `record_events`.
    pub fn new(base: &'s State, db: &'s StateFile, record_events: bool) -> Self {
        Batch {
            base,
            db,
            file: OnceCell::new(),
            written: BTreeMap::new(),
            removed: Vec::new(),
            newer: Index::new(),
            revision: base.revision,
            compact_revision: base.compact_revision,
            alarms: base.alarms.clone(),
            compacted_keys: BTreeSet::new(),
            leases: BTreeMap::new(),
            attached: BTreeMap::new(),
            changes: 0,
            undo: Vec::new(),
            events: record_events.then(Vec::new),
        }
    }

    /// The events of the commands applied so far, in revision order, if they were noted.
    pub fn take_events(&mut self) -> Option<Vec<Event>> {
        self.events.take()
    }

    pub fn finish(self) -> BatchOutcome {
        BatchOutcome {
            written: self.written,
            removed: self.removed,
            newer: self.newer,
            revision: self.revision,
            compact_revision: self.compact_revision,
            alarms: self.alarms,
            compacted_keys: self.compacted_keys,
            leases: self.leases,
        }
    }

    /// Applies one command. The outer error is a storage failure that ends the batch; the
    /// inner one is the command's own answer.
    pub fn apply(
        &mut self,
        command: &raft_request::Request,
    ) -> Result<Result<raft_response::Response, KvError>, StoreError> {
        use raft_request::Request;
        use raft_response::Response;
        self.changes = 0;
        self.undo.clear();
        let outcome = match command {
            Request::Put(put) => self.put_command(put).map(Response::Put),
            Request::DeleteRange(delete) => self.delete_range(delete).map(Response::DeleteRange),
            Request::Txn(txn) => self.txn_command(txn).map(Response::Txn),
            Request::Compaction(compaction) => self.compact(compaction).map(Response::Compaction),
            Request::Alarm(alarm) => Ok(Response::Alarm(self.alarm(alarm))),
            Request::LeaseGrant(grant) => self.lease_grant(grant).map(Response::LeaseGrant),
            Request::LeaseRevoke(revoke) => self.lease_revoke(revoke).map(Response::LeaseRevoke),
        };
        match outcome {
            Ok(response) => {
                self.record_events()?;
                self.revision = self.view_revision();
                Ok(Ok(response))
            }
            Err(KvError::Storage(error)) => Err(error),
            Err(error) => {
                self.rollback()?;
                Ok(Err(error))
            }
        }
    }

    /// Reads back the versions the command just applied stored. Reading them here rather than
    /// where each is written covers every kind of change at once, and a compaction later in
    /// the batch cannot take away a tombstone before its event is noted.
    fn record_events(&mut self) -> Result<(), StoreError> {
        let Some(events) = self.events.as_mut() else {
            return Ok(());
        };
        if self.changes == 0 {
            return Ok(());
        }
        let main = self.revision + 1;
        let first = Revision { main, sub: 0 }.to_key();
        let last = Revision {
            main,
            sub: self.changes - 1,
        }
        .to_key();
        for (key, stored) in self.written.range(first..=last) {
            let revision = Revision::from_key(key);
            let version = Stored::parse(stored, revision)?;
            events.push(to_event(&version, revision)?);
        }
        Ok(())
    }

    /// The revision reads see inside the command in progress: its own writes count.
    fn view_revision(&self) -> i64 {
        self.revision + i64::from(self.changes > 0)
    }

    fn view(&self) -> Layered<'_> {
        Layered {
            base: &self.base.index,
            newer: &self.newer,
        }
    }

    fn nospace(&self) -> bool {
        self.alarms
            .iter()
            .any(|alarm| alarm.alarm == AlarmType::Nospace as i32)
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Stored(revision) => {
                    self.written.remove(&revision.to_key());
                }
                Undo::Key(key, None) => {
                    self.newer.remove(&key);
                }
                Undo::Key(key, Some(mark)) => {
                    if let Some(history) = self.newer.get_mut(&key) {
                        history.restore(mark);
                    }
                }
            }
        }
        self.changes = 0;
        Ok(())
    }

    /// The next revision of the command in progress.
    fn next_revision(&mut self) -> Revision {
        let revision = Revision {
            main: self.revision + 1,
            sub: self.changes,
        };
        self.changes += 1;
        revision
    }

    /// The key's batch history, noting how to undo the change about to be made.
    fn history_for_change(&mut self, key: &[u8]) -> &mut KeyIndex {
        let mark = self.newer.get(key).map(|history| history.mark());
        self.undo.push(Undo::Key(key.to_vec(), mark));
        self.newer.entry(key.to_vec()).or_default()
    }

    fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        let plan = plan_range(
            &self.view(),
            self.view_revision(),
            self.compact_revision,
            request,
        )?;
        let kvs = read_versions(self, &plan.revisions)?;
        Ok(finish_range(request, plan, kvs))
    }

    fn put_command(&mut self, request: &PutRequest) -> Result<PutResponse, KvError> {
        if self.nospace() {
            return Err(KvError::NoSpace);
        }
        self.put(request)
    }

    fn put(&mut self, request: &PutRequest) -> Result<PutResponse, KvError> {
        self.ensure_lease_exists(request.lease)?;
        let previous = if request.prev_kv || request.ignore_value || request.ignore_lease {
            match self.view().visible(&request.key, self.view_revision()) {
                Some(revision) => Some(read_version(self, revision)?),
                None => None,
            }
        } else {
            None
        };
        let (value, lease) = match &previous {
            None if request.ignore_value || request.ignore_lease => {
                return Err(KvError::KeyNotFound)
            }
            Some(previous) => (
                if request.ignore_value {
                    &previous.value
                } else {
                    &request.value
                },
                if request.ignore_lease {
                    previous.lease
                } else {
                    request.lease
                },
            ),
            None => (&request.value, request.lease),
        };

        let revision = self.next_revision();
        let (create_revision, version) = match self.live(&request.key) {
            Some((created, version)) => (created, version + 1),
            None => (revision.main, 1),
        };
        let new = NewVersion {
            key: &request.key,
            value,
            create_revision,
            mod_revision: revision.main,
            version,
            lease,
        };
        self.written.insert(revision.to_key(), new.encode_put());
        self.undo.push(Undo::Stored(revision));
        self.history_for_change(&request.key)
            .put(revision, create_revision, version, lease);
        if lease != 0 {
            self.attached
                .entry(lease)
                .or_default()
                .insert(request.key.clone());
        }
        Ok(PutResponse {
            header: header(revision.main),
            prev_kv: previous.filter(|_| request.prev_kv),
        })
    }

    /// `(create_revision, version)` of the key's newest version, if it is live.
    fn live(&self, key: &[u8]) -> Option<(i64, i64)> {
        self.newest(key)?.live()
    }

    /// The key's newest history: a key's batch history is never empty, and it is newer than
    /// the published one.
    fn newest(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.newer.get(key).or_else(|| self.base.index.get(key))
    }

    /// The TTL of a lease as of the commands applied so far, `None` if it does not exist.
    fn lease_ttl(&self, id: i64) -> Option<i64> {
        match self.leases.get(&id) {
            Some(&change) => change,
            None => self.base.leases.ttl(id),
        }
    }

    fn ensure_lease_exists(&self, lease: i64) -> Result<(), KvError> {
        if lease == 0 || self.lease_ttl(lease).is_some() {
            Ok(())
        } else {
            Err(KvError::LeaseNotFound)
        }
    }

    /// etcd's lessor `Grant`: the proposer has already chosen the ID and raised the TTL to
    /// the minimum, so that every member decides the same.
    fn lease_grant(&mut self, request: &LeaseGrantRequest) -> Result<LeaseGrantResponse, KvError> {
        if self.nospace() {
            return Err(KvError::NoSpace);
        }
        if request.id == 0 {
            return Err(KvError::LeaseNotFound);
        }
        if request.ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if self.lease_ttl(request.id).is_some() {
            return Err(KvError::LeaseExists);
        }
        self.leases.insert(request.id, Some(request.ttl));
        Ok(LeaseGrantResponse {
            header: header(self.view_revision()),
            id: request.id,
            ttl: request.ttl,
            error: String::new(),
        })
    }

    /// Deletes every key attached to the lease, in key order and all in one revision (as
    /// etcd's lessor does in one write transaction), then the lease.
    fn lease_revoke(
        &mut self,
        request: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, KvError> {
        let id = request.id;
        if self.lease_ttl(id).is_none() {
            return Err(KvError::LeaseNotFound);
        }
        let candidates: BTreeSet<&Vec<u8>> = self
            .base
            .leases
            .keys(id)
            .chain(self.attached.get(&id).into_iter().flatten())
            .collect();
        let doomed: Vec<Vec<u8>> = candidates
            .into_iter()
            .filter(|key| self.newest(key).and_then(KeyIndex::live_lease) == Some(id))
            .cloned()
            .collect();
        for key in doomed {
            self.tombstone(&key)?;
        }
        self.attached.remove(&id);
        self.leases.insert(id, None);
        Ok(LeaseRevokeResponse {
            header: header(self.view_revision()),
        })
    }

    fn delete_range(
        &mut self,
        request: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, KvError> {
        let mut doomed = Vec::new();
        self.view().for_each_visible(
            KeySpan::new(&request.key, &request.range_end),
            self.view_revision(),
            |key, revision| doomed.push((key.to_vec(), revision)),
        );
        let prev_kvs = if request.prev_kv {
            let revisions: Vec<_> = doomed.iter().map(|(_, revision)| *revision).collect();
            read_versions(self, &revisions)?
        } else {
            Vec::new()
        };
        let deleted = doomed.len() as i64;
        for (key, _) in doomed {
            self.tombstone(&key)?;
        }
        Ok(DeleteRangeResponse {
            header: header(self.view_revision()),
            deleted,
            prev_kvs,
        })
    }

    /// Deletes a live key at the next revision of the command in progress.
    fn tombstone(&mut self, key: &[u8]) -> Result<(), KvError> {
        let revision = self.next_revision();
        self.written
            .insert(revision.to_key(), encode_tombstone(key, revision.main));
        self.undo.push(Undo::Stored(revision));
        self.history_for_change(key).tombstone(revision);
        Ok(())
    }

    fn txn_command(&mut self, request: &TxnRequest) -> Result<TxnResponse, KvError> {
        if self.nospace() && txn_puts(request) {
            return Err(KvError::NoSpace);
        }
        let before = self.view_revision();
        let path = self.txn_path(request, before)?;
        self.check_txn(request, &path, before)?;
        let mut response = self.execute_txn(request, &path)?;
        response.header = header(self.view_revision());
        Ok(response)
    }

    fn txn_path(&self, request: &TxnRequest, at: i64) -> Result<TxnPath, KvError> {
        let mut succeeded = true;
        for compare in &request.compare {
            if !self.compare(compare, at)? {
                succeeded = false;
                break;
            }
        }
        let nested = branch(request, succeeded)
            .iter()
            .filter_map(|op| match &op.request {
                Some(request_op::Request::RequestTxn(nested)) => Some(self.txn_path(nested, at)),
                _ => None,
            })
            .collect::<Result<_, _>>()?;
        Ok(TxnPath { succeeded, nested })
    }

    fn compare(&self, compare: &Compare, at: i64) -> Result<bool, KvError> {
        let mut revisions = Vec::new();
        self.view().for_each_visible(
            KeySpan::new(&compare.key, &compare.range_end),
            at,
            |_, revision| revisions.push(revision),
        );
        let kvs = read_versions(self, &revisions)?;
        Ok(compare_holds(compare, &kvs))
    }

    /// etcd validates the ops of the taken branches against the store as it was before the
    /// Txn, before it changes anything.
    fn check_txn(&self, request: &TxnRequest, path: &TxnPath, at: i64) -> Result<(), KvError> {
        let mut nested = path.nested.iter();
        for op in branch(request, path.succeeded) {
            match &op.request {
                Some(request_op::Request::RequestTxn(txn)) => {
                    let nested_path = nested.next().expect("a path per nested txn");
                    self.check_txn(txn, nested_path, at)?;
                }
                Some(request_op::Request::RequestPut(put)) => {
                    if (put.ignore_value || put.ignore_lease)
                        && self.view().visible(&put.key, at).is_none()
                    {
                        return Err(KvError::KeyNotFound);
                    }
                    self.ensure_lease_exists(put.lease)?;
                }
                Some(request_op::Request::RequestRange(range)) => match range.revision {
                    0 => {}
                    revision if revision > at => return Err(KvError::FutureRevision),
                    revision if revision < self.compact_revision => return Err(KvError::Compacted),
                    _ => {}
                },
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn execute_txn(
        &mut self,
        request: &TxnRequest,
        path: &TxnPath,
    ) -> Result<TxnResponse, KvError> {
        use request_op::Request;
        use response_op::Response;
        let ops = branch(request, path.succeeded);
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => {
                    Some(Response::ResponseRange(self.range(range)?))
                }
                Some(Request::RequestPut(put)) => Some(Response::ResponsePut(self.put(put)?)),
                Some(Request::RequestDeleteRange(delete)) => {
                    Some(Response::ResponseDeleteRange(self.delete_range(delete)?))
                }
                Some(Request::RequestTxn(txn)) => {
                    let nested_path = nested.next().expect("a path per nested txn");
                    Some(Response::ResponseTxn(self.execute_txn(txn, nested_path)?))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        // A nested Txn's header stays empty, as in etcd; the outer one gets the revision.
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: path.succeeded,
            responses,
        })
    }

    fn compact(&mut self, request: &CompactionRequest) -> Result<CompactionResponse, KvError> {
        let at = request.revision;
        if at <= self.compact_revision {
            return Err(KvError::Compacted);
        }
        if at > self.revision {
            return Err(KvError::FutureRevision);
        }
        let mut removed = Vec::new();
        let compacted_keys = &mut self.compacted_keys;
        Layered {
            base: &self.base.index,
            newer: &self.newer,
        }
        .for_each_key(KeySpan::new(b"", b"\0"), |key, base, newer| {
            let joined: Vec<Change>;
            let changes = match (base, newer) {
                (Some(base), Some(newer)) => {
                    joined = [base.changes(), newer.changes()].concat();
                    &joined
                }
                (Some(only), None) | (None, Some(only)) => only.changes(),
                (None, None) => return,
            };
            let cut = compaction_cut(changes, at);
            if cut > 0 {
                removed.extend(changes[..cut].iter().map(|change| change.revision));
                compacted_keys.insert(key.to_vec());
            }
        });
        // An earlier compaction in this batch may have removed some already; removing a
        // missing revision is a no-op.
        for revision in removed {
            let key = revision.to_key();
            if self.written.remove(&key).is_none() {
                self.removed.push(key);
            }
        }
        self.compact_revision = at;
        Ok(CompactionResponse {
            header: header(self.revision),
        })
    }

    fn alarm(&mut self, request: &AlarmRequest) -> AlarmResponse {
        let member = AlarmMember {
            member_id: request.member_id,
            alarm: request.alarm,
        };
        let position = self
            .alarms
            .binary_search_by_key(&(member.alarm, member.member_id), |a| {
                (a.alarm, a.member_id)
            });
        let none = AlarmType::None as i32;
        let alarms = match AlarmAction::try_from(request.action) {
            Ok(AlarmAction::Get) => self
                .alarms
                .iter()
                .filter(|alarm| request.alarm == none || alarm.alarm == request.alarm)
                .copied()
                .collect(),
            Ok(AlarmAction::Activate) if request.alarm != none => {
                if let Err(at) = position {
                    self.alarms.insert(at, member);
                }
                vec![member]
            }
            Ok(AlarmAction::Deactivate) => match position {
                Ok(at) => vec![self.alarms.remove(at)],
                Err(_) => Vec::new(),
            },
            Ok(AlarmAction::Activate) | Err(_) => Vec::new(),
        };
        AlarmResponse {
            header: header(self.revision),
            alarms,
        }
    }
}
