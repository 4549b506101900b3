//! Request validation done before anything is proposed, as etcd's gRPC layer does it, so an
//! invalid request is refused whole and never reaches the log.

use std::collections::HashSet;

use tonic::Status;

use super::errors;
use crate::proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

pub fn check_range(request: &RangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

pub fn check_put(request: &PutRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::empty_key());
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(errors::value_provided());
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

pub fn check_delete(request: &DeleteRangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

pub fn check_txn(request: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    if request.compare.len() > max_ops
        || request.success.len() > max_ops
        || request.failure.len() > max_ops
    {
        return Err(errors::too_many_ops());
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(errors::empty_key());
    }
    for op in request.success.iter().chain(&request.failure) {
        check_op(op, max_ops)?;
    }
    writes_of(&request.success)?;
    writes_of(&request.failure)?;
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), Status> {
    match &op.request {
        Some(request_op::Request::RequestRange(range)) => check_range(range),
        Some(request_op::Request::RequestPut(put)) => check_put(put),
        Some(request_op::Request::RequestDeleteRange(delete)) => check_delete(delete),
        Some(request_op::Request::RequestTxn(txn)) => check_txn(txn, max_ops),
        None => Ok(()),
    }
}

/// A key range deleted by a txn branch: `[start, end)`, a single key when `end` is empty,
/// open-ended when `end` is `\0`.
struct Deleted {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Deleted {
    fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            return key == self.start.as_slice();
        }
        key >= self.start.as_slice() && (self.end == [0] || key < self.end.as_slice())
    }
}

/// etcd's duplicate-key rule for one branch of a txn: a key may be put once, and not put
/// where the same branch deletes it. The two branches of a nested txn exclude each other, so
/// a key put in both of them is allowed.
fn writes_of(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>), Status> {
    let mut deleted: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(delete)) => Some(Deleted {
                start: delete.key.clone(),
                end: delete.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let is_deleted = |deleted: &[Deleted], key: &[u8]| deleted.iter().any(|d| d.contains(key));

    let mut puts = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deleted_then) = writes_of(&nested.success)?;
        let (puts_else, deleted_else) = writes_of(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || is_deleted(&deleted, key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(key.clone());
        }
        for key in puts_else {
            let in_other_branch = puts_then.contains(&key);
            if (puts.contains(&key) && !in_other_branch) || is_deleted(&deleted, &key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(key);
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(put)) = &op.request {
            if puts.contains(&put.key) || is_deleted(&deleted, &put.key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(put.key.clone());
        }
    }
    Ok((puts, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            success,
            ..Default::default()
        }
    }

    fn message(result: Result<(), Status>) -> String {
        result.unwrap_err().message().to_owned()
    }

    #[test]
    fn two_puts_of_one_key_are_a_duplicate() {
        let error = message(check_txn(&txn(vec![put("a"), put("a")]), 128));
        assert_eq!(error, "etcdserver: duplicate key given in txn request");
    }

    #[test]
    fn a_put_inside_a_deleted_range_is_a_duplicate() {
        assert!(check_txn(&txn(vec![delete("a", "c"), put("b")]), 128).is_err());
        assert!(check_txn(&txn(vec![delete("a", "\0"), put("zzz")]), 128).is_err());
        assert!(check_txn(&txn(vec![delete("a", "c"), put("c")]), 128).is_ok());
    }

    #[test]
    fn the_branches_of_a_nested_txn_may_put_the_same_key() {
        let ok = txn(vec![nested(vec![put("a")], vec![put("a")])]);
        assert!(check_txn(&ok, 128).is_ok());
        let clash = txn(vec![nested(vec![put("a")], vec![]), put("a")]);
        assert!(check_txn(&clash, 128).is_err());
    }

    #[test]
    fn success_and_failure_are_checked_apart() {
        let request = TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert!(check_txn(&request, 128).is_ok());
    }

    #[test]
    fn too_many_ops_and_empty_keys_are_refused() {
        let many = txn((0..129).map(|i| put(&format!("k{i}"))).collect());
        assert_eq!(
            message(check_txn(&many, 128)),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            message(check_txn(&txn(vec![put("")]), 128)),
            "etcdserver: key is not provided"
        );
    }
}
