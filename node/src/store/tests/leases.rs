//! Leases in the store: grants, attachments through puts, revokes that delete a lease's
//! keys in one revision, persistence, snapshots and the change observer.

use std::sync::{Arc, Mutex};

use super::*;
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};

fn grant(store: &Store, id: i64, ttl: i64) -> Result<Reply, KvError> {
    apply(store, Command::LeaseGrant(LeaseGrantRequest { ttl, id }))
}

fn revoke(store: &Store, id: i64) -> Result<Reply, KvError> {
    apply(store, Command::LeaseRevoke(LeaseRevokeRequest { id }))
}

fn put_with_lease(key: &[u8], value: &[u8], lease: i64) -> Command {
    Command::Put(PutRequest {
        lease,
        ..put_request(key, value)
    })
}

fn lease_keys(store: &Store, id: i64) -> Vec<String> {
    store
        .lease_keys(id)
        .into_iter()
        .map(|key| String::from_utf8(key).unwrap())
        .collect()
}

#[test]
fn grant_answers_the_lease_and_keeps_the_revision() {
    let (_dir, store) = open_temp();
    match grant(&store, 7, 30) {
        Ok(Reply::LeaseGrant(response)) => {
            assert_eq!(
                (response.id, response.ttl, response.error.as_str()),
                (7, 30, "")
            );
            assert_eq!(header_revision(&response.header), 1);
        }
        other => panic!("expected a grant response, got {other:?}"),
    }
    assert_eq!(store.lease(7), Some(Lease { id: 7, ttl: 30 }));
    assert_eq!(store.current_revision(), 1);
}

#[test]
fn grant_refuses_an_existing_id_a_zero_id_and_a_too_large_ttl() {
    let (_dir, store) = open_temp();
    grant(&store, 7, 30).unwrap();
    assert!(matches!(grant(&store, 7, 60), Err(KvError::LeaseExists)));
    assert!(matches!(grant(&store, 0, 60), Err(KvError::LeaseNotFound)));
    assert!(matches!(
        grant(&store, 8, MAX_LEASE_TTL + 1),
        Err(KvError::LeaseTtlTooLarge)
    ));
    grant(&store, 8, MAX_LEASE_TTL).unwrap();
    assert_eq!(store.lease(7), Some(Lease { id: 7, ttl: 30 }));
    assert_eq!(store.leases().len(), 2);
}

#[test]
fn grant_under_the_nospace_alarm_is_refused() {
    let (_dir, store) = open_temp();
    alarm(&store, AlarmAction::Activate, 1, AlarmType::Nospace);
    assert!(matches!(grant(&store, 7, 30), Err(KvError::NoSpace)));
    assert_eq!(store.lease(7), None);
}

#[test]
fn put_attaches_a_key_and_a_later_put_or_delete_detaches_it() {
    let (_dir, store) = open_temp();
    grant(&store, 1, 30).unwrap();
    grant(&store, 2, 30).unwrap();
    for key in [&b"a"[..], b"b", b"c"] {
        apply(&store, put_with_lease(key, b"v", 1)).unwrap();
    }
    assert_eq!(get(&store, b"a").unwrap().lease, 1);
    assert_eq!(lease_keys(&store, 1), ["a", "b", "c"]);

    put(&store, b"a", b"plain");
    apply(&store, put_with_lease(b"b", b"moved", 2)).unwrap();
    delete(&store, b"c", b"");
    assert_eq!(get(&store, b"a").unwrap().lease, 0);
    assert_eq!(lease_keys(&store, 1), Vec::<String>::new());
    assert_eq!(lease_keys(&store, 2), ["b"]);
}

#[test]
fn ignore_lease_keeps_the_current_lease() {
    let (_dir, store) = open_temp();
    grant(&store, 1, 30).unwrap();
    apply(&store, put_with_lease(b"k", b"v1", 1)).unwrap();
    apply(
        &store,
        Command::Put(PutRequest {
            ignore_lease: true,
            ..put_request(b"k", b"v2")
        }),
    )
    .unwrap();
    let kv = get(&store, b"k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v2"[..], 1));
    assert_eq!(lease_keys(&store, 1), ["k"]);
}

#[test]
fn revoke_deletes_every_attached_key_in_one_revision() {
    let (_dir, store) = open_temp();
    grant(&store, 1, 30).unwrap();
    apply(&store, put_with_lease(b"b", b"v", 1)).unwrap();
    apply(&store, put_with_lease(b"a", b"v", 1)).unwrap();
    put(&store, b"other", b"v");
    let before = store.current_revision();

    match revoke(&store, 1) {
        Ok(Reply::LeaseRevoke(response)) => {
            assert_eq!(header_revision(&response.header), before + 1)
        }
        other => panic!("expected a revoke response, got {other:?}"),
    }
    assert_eq!(store.current_revision(), before + 1);
    assert_eq!(get(&store, b"a"), None);
    assert_eq!(get(&store, b"b"), None);
    assert!(get(&store, b"other").is_some());
    assert_eq!(store.lease(1), None);
    // Both deletions are in the revoke's revision, in key order.
    let deleted_at = |key: &[u8]| {
        let revision = store.inner.state().index[key]
            .changes()
            .last()
            .unwrap()
            .revision;
        (revision.main, revision.sub)
    };
    assert_eq!(deleted_at(b"a"), (before + 1, 0));
    assert_eq!(deleted_at(b"b"), (before + 1, 1));

    assert!(matches!(revoke(&store, 1), Err(KvError::LeaseNotFound)));
    assert!(matches!(
        apply(&store, put_with_lease(b"a", b"v", 1)),
        Err(KvError::LeaseNotFound)
    ));
}

#[test]
fn revoke_of_a_lease_without_keys_keeps_the_revision() {
    let (_dir, store) = open_temp();
    grant(&store, 1, 30).unwrap();
    revoke(&store, 1).unwrap();
    assert_eq!(store.current_revision(), 1);
}

#[test]
fn revoke_sees_the_attachments_made_earlier_in_its_batch() {
    let (_dir, store) = open_temp();
    grant(&store, 1, 30).unwrap();
    apply(&store, put_with_lease(b"published", b"v", 1)).unwrap();
    put(&store, b"k", b"v");
    let batch = [
        put_with_lease(b"kept", b"v", 1),
        put_with_lease(b"doomed", b"v", 1),
        Command::Put(put_request(b"kept", b"detached")),
        Command::Txn(TxnRequest {
            // Fails midway (k is gone when the last put needs it): its leased put is undone.
            success: vec![
                op(request_op::Request::RequestPut(PutRequest {
                    lease: 1,
                    ..put_request(b"rolled-back", b"v")
                })),
                op_delete(b"k", b""),
                op(request_op::Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put_request(b"k", b"")
                })),
            ],
            ..TxnRequest::default()
        }),
        Command::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
    ];
    let results = store.apply_batch(&batch, b"applied").unwrap();
    assert!(matches!(results[3], Err(KvError::KeyNotFound)));
    assert!(results[4].is_ok());
    assert_eq!(get(&store, b"published"), None);
    assert_eq!(get(&store, b"doomed"), None);
    assert_eq!(get(&store, b"kept").unwrap().value, b"detached");
    assert_eq!(get(&store, b"rolled-back"), None);
    assert_eq!(store.lease(1), None);
    assert!(store.lease_keys(1).is_empty());
}

#[test]
fn a_put_with_a_lease_revoked_earlier_in_its_batch_is_lease_not_found() {
    let (_dir, store) = open_temp();
    let batch = [
        Command::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 1 }),
        put_with_lease(b"a", b"v", 1),
        Command::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
        put_with_lease(b"b", b"v", 1),
    ];
    let results = store.apply_batch(&batch, b"applied").unwrap();
    assert!(results[..3].iter().all(Result::is_ok));
    assert!(matches!(results[3], Err(KvError::LeaseNotFound)));
    assert_eq!(store.current_revision(), 3);
    assert!(store.leases().is_empty());
}

#[test]
fn txn_puts_check_the_lease_and_lease_compares_see_it() {
    let (_dir, store) = open_temp();
    grant(&store, 5, 30).unwrap();
    let with_unknown_lease = TxnRequest {
        success: vec![
            op_put(b"a", b"v"),
            op(request_op::Request::RequestPut(PutRequest {
                lease: 6,
                ..put_request(b"b", b"v")
            })),
        ],
        ..TxnRequest::default()
    };
    assert!(matches!(
        txn(&store, with_unknown_lease),
        Err(KvError::LeaseNotFound)
    ));
    assert_eq!(store.current_revision(), 1);

    apply(&store, put_with_lease(b"k", b"v", 5)).unwrap();
    let lease_is = |lease: i64| {
        txn(
            &store,
            TxnRequest {
                compare: vec![compare(
                    b"k",
                    CompareTarget::Lease,
                    CompareResult::Equal,
                    TargetUnion::Lease(lease),
                )],
                ..TxnRequest::default()
            },
        )
        .unwrap()
        .succeeded
    };
    assert!(lease_is(5));
    assert!(!lease_is(0));
}

#[test]
fn leases_and_attachments_survive_a_reopen_and_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let snapshot = {
        let store = Store::open(&path).unwrap();
        grant(&store, 1, 30).unwrap();
        grant(&store, -2, 60).unwrap();
        grant(&store, 3, 90).unwrap();
        apply(&store, put_with_lease(b"a", b"v", 1)).unwrap();
        apply(&store, put_with_lease(b"b", b"v", -2)).unwrap();
        revoke(&store, 3).unwrap();
        store.sync().unwrap();
        store.snapshot().unwrap()
    };
    let expected = [Lease { id: -2, ttl: 60 }, Lease { id: 1, ttl: 30 }];
    let reopened = Store::open(&path).unwrap();
    assert_eq!(reopened.leases(), expected);
    assert_eq!(lease_keys(&reopened, 1), ["a"]);
    assert_eq!(lease_keys(&reopened, -2), ["b"]);

    let (_dir2, other) = open_temp();
    grant(&other, 9, 10).unwrap();
    other.install_snapshot(&snapshot).unwrap();
    assert_eq!(other.leases(), expected);
    assert_eq!(lease_keys(&other, -2), ["b"]);
    revoke(&other, -2).unwrap();
    assert_eq!(get(&other, b"b"), None);
}

#[test]
fn the_observer_hears_grants_and_revokes_after_they_are_visible() {
    let (_dir, store) = open_temp();
    let heard = Arc::new(Mutex::new(Vec::new()));
    {
        let heard = heard.clone();
        let reader = store.clone();
        assert!(store.observe_leases(move |changes| {
            for change in changes {
                let visible = match change {
                    LeaseChange::Granted(lease) => reader.lease(lease.id) == Some(*lease),
                    LeaseChange::Revoked(id) => reader.lease(*id).is_none(),
                };
                heard.lock().unwrap().push((*change, visible));
            }
        }));
    }
    assert!(!store.observe_leases(|_| {}));
    grant(&store, 1, 30).unwrap();
    put(&store, b"k", b"v");
    revoke(&store, 1).unwrap();
    let _ = revoke(&store, 1);

    let (_dir2, source) = open_temp();
    grant(&source, 2, 20).unwrap();
    store.install_snapshot(&source.snapshot().unwrap()).unwrap();
    assert_eq!(
        *heard.lock().unwrap(),
        [
            (LeaseChange::Granted(Lease { id: 1, ttl: 30 }), true),
            (LeaseChange::Revoked(1), true),
            (LeaseChange::Granted(Lease { id: 2, ttl: 20 }), true),
        ]
    );
}
