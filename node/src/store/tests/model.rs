//! The store against a reference model: thousands of seeded random commands (in batches of
//! varying size), reads at historical revisions, compactions and reopens, each answer
//! compared with what a plain map of every revision's contents says etcd would answer.

use std::collections::BTreeMap;
use std::mem::discriminant;

use super::*;
use crate::proto::etcdserverpb::CompactionResponse;

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

    fn put(&mut self, request: &PutRequest) -> PutResponse {
        let previous = self.contents.get(&request.key).cloned();
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision: previous
                .as_ref()
                .map_or(self.revision, |kv| kv.create_revision),
            mod_revision: self.revision,
            version: previous.as_ref().map_or(1, |kv| kv.version + 1),
            value: request.value.clone(),
            lease: 0,
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

impl Model {
    fn new() -> Self {
        Model {
            revision: 1,
            compacted: -1,
            history: BTreeMap::from([(1, Contents::new())]),
        }
    }

    fn contents_at(&self, revision: i64) -> &Contents {
        self.history
            .range(..=revision)
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
            Command::Put(put) => Ok(self.write(|pending| Reply::Put(pending.put(put)))),
            Command::DeleteRange(delete) => {
                Ok(self.write(|pending| Reply::DeleteRange(pending.delete(delete))))
            }
            Command::Txn(txn) => {
                let before = self.contents_at(self.revision).clone();
                Ok(self.write(|pending| Reply::Txn(pending.txn(txn, &before))))
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
            0..=3 => op_put(&rng.key(), &rng.value()),
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
        0..=44 => Command::Put(PutRequest {
            prev_kv: rng.chance(30),
            ..put_request(&rng.key(), &rng.value())
        }),
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

        if rng.chance(2) {
            store.sync().unwrap();
            drop(store);
            store = Store::open(&path).unwrap();
            assert_eq!(store.raft_meta().as_deref(), Some(&meta[..]));
            check_reads(&store, &model, &mut rng, step);
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
}
