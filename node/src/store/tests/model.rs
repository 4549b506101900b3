//! The store against a reference model: thousands of seeded random commands (in batches of
//! varying size), reads at historical revisions, compactions, leases and reopens, each answer
//! compared with what a plain map of every revision's contents says etcd would answer.

use std::collections::BTreeMap;
use std::mem::discriminant;

use super::*;
use crate::proto::etcdserverpb::{
    CompactionResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse,
};

/// Marsaglia's xorshift64: deterministic, so a failure replays from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn key(&mut self) -> Vec<u8> {
        format!("k{:02}", self.below(12)).into_bytes()
    }

    /// A lease ID from a small set, so that grants collide and puts name unknown leases.
    fn lease(&mut self) -> i64 {
        1 + self.below(4) as i64
    }

    /// No lease most of the time.
    fn put_lease(&mut self) -> i64 {
        if self.chance(60) {
            0
        } else {
            self.lease()
        }
    }

    fn value(&mut self) -> Vec<u8> {
        let len = self.below(6) as usize;
        (0..len).map(|_| b'a' + self.below(3) as u8).collect()
    }

    /// A span: one key, an interval (possibly empty or reversed), or everything from a key.
    fn span(&mut self) -> (Vec<u8>, Vec<u8>) {
        let key = self.key();
        let end = match self.below(4) {
            0 | 1 => Vec::new(),
            2 => self.key(),
            _ => vec![0],
        };
        (key, end)
    }
}

type Contents = BTreeMap<Vec<u8>, KeyValue>;

fn in_span(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

fn header_at(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

/// etcd's answers, computed from the contents at every revision.
struct Model {
    revision: i64,
    compacted: i64,
    /// The contents after each revision that changed something (and at revision 1).
    history: BTreeMap<i64, Contents>,
    /// Lease ID to granted TTL.
    leases: BTreeMap<i64, i64>,
}

/// A write command in progress in the model: all its changes share one revision.
struct Pending {
    contents: Contents,
    revision: i64,
    changed: bool,
}

impl Pending {
    fn view_revision(&self) -> i64 {
        if self.changed {
            self.revision
        } else {
            self.revision - 1
        }
    }

    /// A put whose lease and `ignore_lease` precondition were checked by the caller.
    fn put(&mut self, request: &PutRequest) -> PutResponse {
        let previous = self.contents.get(&request.key).cloned();
        let lease = match &previous {
            Some(previous) if request.ignore_lease => previous.lease,
            _ => request.lease,
        };
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision: previous
                .as_ref()
                .map_or(self.revision, |kv| kv.create_revision),
            mod_revision: self.revision,
            version: previous.as_ref().map_or(1, |kv| kv.version + 1),
            value: request.value.clone(),
            lease,
        };
        self.contents.insert(request.key.clone(), kv);
        self.changed = true;
        PutResponse {
            header: header_at(self.revision),
            prev_kv: previous.filter(|_| request.prev_kv),
        }
    }

    fn delete(&mut self, request: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed: Vec<_> = self
            .contents
            .keys()
            .filter(|key| in_span(key, &request.key, &request.range_end))
            .cloned()
            .collect();
        let prev_kvs = doomed
            .iter()
            .filter_map(|key| self.contents.remove(key))
            .filter(|_| request.prev_kv)
            .collect();
        self.changed |= !doomed.is_empty();
        DeleteRangeResponse {
            header: header_at(self.view_revision()),
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn range(&self, request: &RangeRequest) -> RangeResponse {
        range_of(&self.contents, request, self.view_revision())
    }

    /// Deletes the keys attached to `lease`, in key order.
    fn revoke(&mut self, lease: i64) -> LeaseRevokeResponse {
        let doomed: Vec<_> = self
            .contents
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.key.clone())
            .collect();
        for key in &doomed {
            self.contents.remove(key);
        }
        self.changed |= !doomed.is_empty();
        LeaseRevokeResponse {
            header: header_at(self.view_revision()),
        }
    }

    /// Runs a Txn whose compares were decided against `before`.
    fn txn(&mut self, request: &TxnRequest, before: &Contents) -> TxnResponse {
        let succeeded = request
            .compare
            .iter()
            .all(|compare| compare_model(compare, before));
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let responses = ops
            .iter()
            .map(|op| {
                let response = match op.request.as_ref().expect("generated ops are set") {
                    request_op::Request::RequestPut(put) => {
                        response_op::Response::ResponsePut(self.put(put))
                    }
                    request_op::Request::RequestDeleteRange(delete) => {
                        response_op::Response::ResponseDeleteRange(self.delete(delete))
                    }
                    request_op::Request::RequestRange(range) => {
                        response_op::Response::ResponseRange(self.range(range))
                    }
                    request_op::Request::RequestTxn(nested) => {
                        response_op::Response::ResponseTxn(self.txn(nested, before))
                    }
                };
                ResponseOp {
                    response: Some(response),
                }
            })
            .collect();
        TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        }
    }
}

fn range_of(contents: &Contents, request: &RangeRequest, header: i64) -> RangeResponse {
    let matching: Vec<_> = contents
        .values()
        .filter(|kv| in_span(&kv.key, &request.key, &request.range_end))
        .cloned()
        .collect();
    let count = matching.len() as i64;
    let limit = if request.limit > 0 {
        request.limit as usize
    } else {
        usize::MAX
    };
    RangeResponse {
        header: header_at(header),
        more: matching.len() > limit,
        kvs: matching.into_iter().take(limit).collect(),
        count,
    }
}

fn compare_model(compare: &Compare, contents: &Contents) -> bool {
    let kvs: Vec<&KeyValue> = contents
        .values()
        .filter(|kv| in_span(&kv.key, &compare.key, &compare.range_end))
        .collect();
    let is_value = compare.target == CompareTarget::Value as i32;
    let missing = KeyValue::default();
    let checked: Vec<&KeyValue> = match (kvs.is_empty(), is_value) {
        (true, true) => return false,
        (true, false) => vec![&missing],
        (false, _) => kvs,
    };
    checked.into_iter().all(|kv| {
        let ordering = match (compare.target_union.as_ref().unwrap(), is_value) {
            (TargetUnion::Value(value), true) => kv.value.cmp(value),
            (TargetUnion::Version(version), false) => kv.version.cmp(version),
            (TargetUnion::ModRevision(revision), false) => kv.mod_revision.cmp(revision),
            other => unreachable!("the generator pairs targets and operands: {other:?}"),
        };
        match CompareResult::try_from(compare.result).unwrap() {
            CompareResult::Equal => ordering.is_eq(),
            CompareResult::NotEqual => ordering.is_ne(),
            CompareResult::Greater => ordering.is_gt(),
            CompareResult::Less => ordering.is_lt(),
        }
    })
}

/// etcd checks the puts of the branches a Txn takes (nested ones too) before it runs: one
/// naming an unknown lease fails the whole Txn.
fn check_txn_leases(
    request: &TxnRequest,
    before: &Contents,
    leases: &BTreeMap<i64, i64>,
) -> Result<(), KvError> {
    let succeeded = request
        .compare
        .iter()
        .all(|compare| compare_model(compare, before));
    let ops = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    for op in ops {
        match op.request.as_ref().expect("generated ops are set") {
            request_op::Request::RequestPut(put)
                if put.lease != 0 && !leases.contains_key(&put.lease) =>
            {
                return Err(KvError::LeaseNotFound)
            }
            request_op::Request::RequestTxn(nested) => check_txn_leases(nested, before, leases)?,
            _ => {}
        }
    }
    Ok(())
}

impl Model {
    fn new() -> Self {
        Model {
            revision: 1,
            compacted: -1,
            history: BTreeMap::from([(1, Contents::new())]),
            leases: BTreeMap::new(),
        }
    }

    /// The keys attached to each lease, as the store should list them.
    fn lease_keys(&self) -> BTreeMap<i64, Vec<Vec<u8>>> {
        let mut keys: BTreeMap<i64, Vec<Vec<u8>>> =
            self.leases.keys().map(|&id| (id, Vec::new())).collect();
        for kv in self.contents_at(self.revision).values() {
            if kv.lease != 0 {
                keys.get_mut(&kv.lease)
                    .expect("a live key's lease exists")
                    .push(kv.key.clone());
            }
        }
        keys
    }

    fn contents_at(&self, revision: i64) -> &Contents {
        // Revision 0 (a compaction at 0, which etcd accepts) is the empty store of revision 1.
        self.history
            .range(..=revision.max(1))
            .next_back()
            .expect("revision 1")
            .1
    }

    fn write(&mut self, run: impl FnOnce(&mut Pending) -> Reply) -> Reply {
        let mut pending = Pending {
            contents: self.contents_at(self.revision).clone(),
            revision: self.revision + 1,
            changed: false,
        };
        let mut reply = run(&mut pending);
        if pending.changed {
            self.revision += 1;
            self.history.insert(self.revision, pending.contents);
        }
        if let Reply::Txn(response) = &mut reply {
            response.header = header_at(self.revision);
        }
        reply
    }

    fn apply(&mut self, command: &Command) -> Result<Reply, KvError> {
        match command {
            Command::Put(put) => {
                if put.lease != 0 && !self.leases.contains_key(&put.lease) {
                    return Err(KvError::LeaseNotFound);
                }
                if put.ignore_lease && !self.contents_at(self.revision).contains_key(&put.key) {
                    return Err(KvError::KeyNotFound);
                }
                Ok(self.write(|pending| Reply::Put(pending.put(put))))
            }
            Command::DeleteRange(delete) => {
                Ok(self.write(|pending| Reply::DeleteRange(pending.delete(delete))))
            }
            Command::Txn(txn) => {
                let before = self.contents_at(self.revision).clone();
                check_txn_leases(txn, &before, &self.leases)?;
                Ok(self.write(|pending| Reply::Txn(pending.txn(txn, &before))))
            }
            Command::LeaseGrant(grant) => {
                if grant.ttl > MAX_LEASE_TTL {
                    return Err(KvError::LeaseTtlTooLarge);
                }
                if self.leases.contains_key(&grant.id) {
                    return Err(KvError::LeaseExists);
                }
                self.leases.insert(grant.id, grant.ttl);
                Ok(Reply::LeaseGrant(LeaseGrantResponse {
                    header: header_at(self.revision),
                    id: grant.id,
                    ttl: grant.ttl,
                    error: String::new(),
                }))
            }
            Command::LeaseRevoke(revoke) => {
                if self.leases.remove(&revoke.id).is_none() {
                    return Err(KvError::LeaseNotFound);
                }
                Ok(self.write(|pending| Reply::LeaseRevoke(pending.revoke(revoke.id))))
            }
            Command::Compaction(compaction) => {
                if compaction.revision <= self.compacted {
                    return Err(KvError::Compacted);
                }
                if compaction.revision > self.revision {
                    return Err(KvError::FutureRevision);
                }
                self.compacted = compaction.revision;
                // Contents at or after the compaction revision stay readable.
                let kept = self.contents_at(self.compacted).clone();
                self.history = self.history.split_off(&self.compacted);
                self.history.insert(self.compacted, kept);
                Ok(Reply::Compaction(CompactionResponse {
                    header: header_at(self.revision),
                }))
            }
            Command::Alarm(_) => unreachable!("the generator makes no alarms"),
        }
    }

    fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        if request.revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        let at = if request.revision <= 0 {
            self.revision
        } else {
            request.revision
        };
        if at < self.compacted {
            return Err(KvError::Compacted);
        }
        Ok(range_of(self.contents_at(at), request, self.revision))
    }
}

fn random_compare(rng: &mut XorShift) -> Compare {
    let (key, range_end) = if rng.chance(80) {
        (rng.key(), Vec::new())
    } else {
        rng.span()
    };
    let (target, operand) = match rng.below(3) {
        0 => (
            CompareTarget::Version,
            TargetUnion::Version(rng.below(4) as i64),
        ),
        1 => (CompareTarget::Value, TargetUnion::Value(rng.value())),
        _ => (
            CompareTarget::Mod,
            TargetUnion::ModRevision(rng.below(400) as i64),
        ),
    };
    let result = [
        CompareResult::Equal,
        CompareResult::NotEqual,
        CompareResult::Greater,
        CompareResult::Less,
    ][rng.below(4) as usize];
    Compare {
        range_end,
        ..compare(&key, target, result, operand)
    }
}

fn random_ops(rng: &mut XorShift, nested: bool) -> Vec<RequestOp> {
    (0..rng.below(4))
        .map(|_| match rng.below(10) {
            0..=3 => op(request_op::Request::RequestPut(PutRequest {
                lease: rng.put_lease(),
                ..put_request(&rng.key(), &rng.value())
            })),
            4 | 5 => {
                let (key, end) = rng.span();
                op_delete(&key, &end)
            }
            6..=8 => {
                let (key, end) = rng.span();
                op(request_op::Request::RequestRange(RangeRequest {
                    limit: rng.below(3) as i64,
                    ..range_request(&key, &end)
                }))
            }
            _ if nested => op(request_op::Request::RequestTxn(random_txn(rng, false))),
            _ => op_put(&rng.key(), &rng.value()),
        })
        .collect()
}

fn random_txn(rng: &mut XorShift, allow_nested: bool) -> TxnRequest {
    TxnRequest {
        compare: (0..rng.below(3)).map(|_| random_compare(rng)).collect(),
        success: random_ops(rng, allow_nested),
        failure: random_ops(rng, allow_nested),
    }
}

fn random_command(rng: &mut XorShift, model: &Model) -> Command {
    match rng.below(100) {
        0..=38 => Command::Put(PutRequest {
            prev_kv: rng.chance(30),
            lease: rng.put_lease(),
            ..put_request(&rng.key(), &rng.value())
        }),
        39..=40 => Command::Put(PutRequest {
            ignore_lease: true,
            ..put_request(&rng.key(), &rng.value())
        }),
        41..=42 => Command::LeaseGrant(LeaseGrantRequest {
            ttl: if rng.chance(10) {
                MAX_LEASE_TTL + 1
            } else {
                1 + rng.below(100) as i64
            },
            id: rng.lease(),
        }),
        43..=44 => Command::LeaseRevoke(LeaseRevokeRequest { id: rng.lease() }),
        45..=64 => {
            let (key, end) = rng.span();
            Command::DeleteRange(DeleteRangeRequest {
                prev_kv: rng.chance(50),
                ..delete_request(&key, &end)
            })
        }
        65..=94 => Command::Txn(random_txn(rng, true)),
        _ => {
            // Mostly valid compactions, some at or below the last one or in the future.
            let low = model.compacted.max(0) - 1;
            let revision = low + rng.below((model.revision - low + 2) as u64) as i64;
            Command::Compaction(CompactionRequest {
                revision,
                physical: false,
            })
        }
    }
}

fn assert_same_result<T: PartialEq + std::fmt::Debug>(
    actual: &Result<T, KvError>,
    expected: &Result<T, KvError>,
    context: &str,
) {
    match (actual, expected) {
        (Ok(actual), Ok(expected)) => assert_eq!(actual, expected, "{context}"),
        (Err(actual), Err(expected)) => {
            assert_eq!(discriminant(actual), discriminant(expected), "{context}")
        }
        _ => panic!("{context}: store said {actual:?}, model says {expected:?}"),
    }
}

fn check_leases(store: &Store, model: &Model, step: usize) {
    let actual: BTreeMap<i64, (i64, Vec<Vec<u8>>)> = store
        .leases()
        .into_iter()
        .map(|lease| (lease.id, (lease.ttl, store.lease_keys(lease.id))))
        .collect();
    let expected: BTreeMap<i64, (i64, Vec<Vec<u8>>)> = model
        .lease_keys()
        .into_iter()
        .map(|(id, keys)| (id, (model.leases[&id], keys)))
        .collect();
    assert_eq!(actual, expected, "step {step}: leases");
}

fn check_reads(store: &Store, model: &Model, rng: &mut XorShift, step: usize) {
    for _ in 0..3 {
        let (key, range_end) = rng.span();
        let low = model.compacted.max(1) - 2;
        let revision = match rng.below(3) {
            0 => 0,
            _ => low + rng.below((model.revision - low + 2) as u64) as i64,
        };
        let request = RangeRequest {
            revision,
            limit: rng.below(4) as i64,
            ..range_request(&key, &range_end)
        };
        assert_same_result(
            &store.range(&request),
            &model.range(&request),
            &format!("step {step}: {request:?}"),
        );
    }
}

#[test]
fn random_histories_match_the_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut store = Store::open(&path).unwrap();
    let mut model = Model::new();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut step = 0usize;
    while step < 4000 {
        let batch: Vec<Command> = (0..1 + rng.below(4))
            .map(|_| random_command(&mut rng, &model))
            .collect();
        let expected: Vec<_> = batch.iter().map(|command| model.apply(command)).collect();
        let meta = step.to_be_bytes();
        let actual = store.apply_batch(&batch, &meta).unwrap();
        for (i, (actual, expected)) in actual.iter().zip(&expected).enumerate() {
            assert_same_result(
                actual,
                expected,
                &format!("step {}: {:?}", step + i, batch[i]),
            );
        }
        step += batch.len();
        assert_eq!(store.current_revision(), model.revision, "step {step}");
        assert_eq!(store.compact_revision(), model.compacted, "step {step}");
        check_reads(&store, &model, &mut rng, step);
        check_leases(&store, &model, step);

        if rng.chance(5) {
            // Part of the history moves to the file, the rest stays unflushed: reads and
            // compactions now straddle the two.
            store.sync().unwrap();
            check_reads(&store, &model, &mut rng, step);
        }
        if rng.chance(2) {
            store.sync().unwrap();
            drop(store);
            store = Store::open(&path).unwrap();
            assert_eq!(store.raft_meta().as_deref(), Some(&meta[..]));
            check_reads(&store, &model, &mut rng, step);
            check_leases(&store, &model, step);
        }
    }

    // Every readable revision, through a snapshot installed elsewhere too.
    let (_other_dir, other) = open_temp();
    other.install_snapshot(&store.snapshot().unwrap()).unwrap();
    for revision in model.compacted.max(1)..=model.revision {
        let request = RangeRequest {
            revision,
            ..range_request(b"", b"\0")
        };
        let expected = model.range(&request);
        assert_same_result(&store.range(&request), &expected, "final");
        assert_same_result(&other.range(&request), &expected, "installed");
    }
    assert_eq!(other.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());
    check_leases(&other, &model, step);
}
