//! A backup taken from one member of a running cluster founds a whole new cluster: every
//! member restored from the same file, started together as a new cluster, serves the same
//! keys, revision and history, and goes on taking writes.

use cairn_tests::{download_backup, restore_backup};

use crate::harness::{
    expect_ok, linearizable_value, put_acknowledged, retry, Cluster, ClusterSpec,
};

#[tokio::test]
async fn a_backup_of_one_member_restores_a_whole_new_cluster() {
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let writer = cluster.member(leader).client().await;
    put_acknowledged(&writer, "a", "1").await;
    let b_written = put_acknowledged(&writer, "b", "2").await;
    let deleted = retry("delete b", || {
        let mut client = writer.clone();
        async move { client.delete("b", None).await }
    })
    .await;
    expect_ok(deleted);
    let last = put_acknowledged(&writer, "c", "3").await;

    // From a follower, once a linearizable read shows it has applied the last write.
    let follower = (leader + 1) % cluster.len();
    let mut source = cluster.member(follower).client().await;
    assert_eq!(linearizable_value(&source, "c").await.as_deref(), Some("3"));
    let backup = download_backup(&mut source)
        .await
        .expect("download a backup");
    let files = tempfile::tempdir().expect("a temporary directory");
    let file = files.path().join("backup.db");
    std::fs::write(&file, backup).expect("save the backup");

    for index in 0..cluster.len() {
        let member = cluster.member_mut(index);
        member.kill9();
        std::fs::remove_dir_all(member.data_dir()).expect("empty the data dir");
        let restored = restore_backup(&file, &member.data_dir()).expect("run the restore");
        assert!(restored.status.success(), "{restored:?}");
    }
    cluster.restart_all().await;

    for index in 0..cluster.len() {
        let client = cluster.member(index).client().await;
        let name = cluster.member(index).name();
        assert_eq!(
            linearizable_value(&client, "a").await.as_deref(),
            Some("1"),
            "{name}"
        );
        assert_eq!(linearizable_value(&client, "b").await, None, "{name}");
        let at = Some(etcd_client::GetOptions::new().with_revision(b_written));
        let old = retry("b at its old revision", || {
            let (mut client, at) = (client.clone(), at.clone());
            async move { client.get("b", at).await }
        })
        .await;
        let old = expect_ok(old);
        assert_eq!(old.kvs()[0].value(), b"2", "history on {name}");
    }
    let next = cluster.member(cluster.leader().await).client().await;
    assert_eq!(put_acknowledged(&next, "after", "v").await, last + 1);
    cluster.assert_converged(&[0, 1, 2]).await;
}
