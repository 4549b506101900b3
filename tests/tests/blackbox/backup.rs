//! Backups as etcd users take them: `etcdctl snapshot save` from a running member, then
//! `cairn snapshot restore` into a new data directory, from which a member founds a new
//! cluster holding the same keys, history and leases.

use std::path::Path;
use std::process::Output;

use etcd_client::GetOptions;

use crate::etcdctl::Etcdctl;
use crate::harness::{put, revision, Node, NodeOptions};

fn restore(file: &Path, data_dir: &Path) -> Output {
    cairn_tests::restore_backup(file, data_dir).expect("run cairn snapshot restore")
}

#[tokio::test]
async fn a_snapshot_saved_with_etcdctl_restores_into_a_new_member_with_its_history() {
    let source = Node::start(NodeOptions::default()).await;
    let mut c = source.client().await;
    put(&mut c, "a", "1").await;
    let b_written = put(&mut c, "b", "2").await;
    c.delete("b", None).await.expect("delete");
    let lease = c.lease_grant(600, None).await.expect("lease grant").id();
    let leased = etcd_client::PutOptions::new().with_lease(lease);
    let last = revision(
        c.put("leased", "x", Some(leased))
            .await
            .expect("put with a lease")
            .header(),
    );

    let files = tempfile::tempdir().expect("a temporary directory");
    let backup = files.path().join("backup.db");
    let saved = Etcdctl::new(&source)
        .ok(&["snapshot", "save", backup.to_str().expect("a UTF-8 path")])
        .await;
    assert!(saved.contains("Snapshot saved at"), "{saved}");

    let refused = restore(&backup, &source.data_dir());
    assert!(
        !refused.status.success(),
        "restored over a member: {refused:?}"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already holds a member"), "{stderr}");

    let mut damaged = std::fs::read(&backup).expect("read the backup");
    damaged[20] ^= 1;
    let damaged_file = files.path().join("damaged.db");
    std::fs::write(&damaged_file, damaged).expect("write the damaged copy");
    let untouched = files.path().join("untouched");
    let refused = restore(&damaged_file, &untouched);
    assert!(
        !refused.status.success(),
        "restored a damaged backup: {refused:?}"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("SHA-256 mismatch"), "{stderr}");
    assert!(
        !untouched.join("state.redb").exists(),
        "a refused restore left a store behind"
    );

    let mut target = Node::start(NodeOptions::default()).await;
    target.terminate().await;
    std::fs::remove_dir_all(target.data_dir()).expect("empty the new member's data dir");
    let restored = restore(&backup, &target.data_dir());
    assert!(restored.status.success(), "{restored:?}");
    target.restart().await;

    let mut r = target.client().await;
    let a = r.get("a", None).await.expect("get a");
    assert_eq!(a.kvs()[0].value(), b"1");
    assert_eq!(revision(a.header()), last, "the restored revision");
    assert!(r.get("b", None).await.expect("get b").kvs().is_empty());
    let old = r
        .get("b", Some(GetOptions::new().with_revision(b_written)))
        .await
        .expect("get b at an old revision");
    assert_eq!(old.kvs()[0].value(), b"2", "history survives the restore");
    let ttl = r
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .expect("lease time to live");
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);
    assert!(ttl.ttl() > 0, "the lease is alive: {ttl:?}");
    assert_eq!(put(&mut r, "after", "v").await, last + 1);
}
