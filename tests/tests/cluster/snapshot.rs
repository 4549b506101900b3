//! A member that was down while the others wrote more than the log they keep catches up
//! from a snapshot of the leader's state, and ends up with the same data.

use etcd_client::GetOptions;
use tokio::task::JoinSet;

use crate::harness::{expect_ok, put_acknowledged, retry, Cluster, ClusterSpec};

/// `--snapshot-count`: a snapshot, and a log purge behind it, every hundred entries.
const SNAPSHOT_COUNT: usize = 100;

/// Entries a leader keeps behind its last snapshot for slow followers: etcd's (and
/// Cairn's) default of 5000. Writing more than that while a member is down leaves it
/// behind the purge point.
const CATCH_UP_ENTRIES: usize = 5_000;

/// Writes while the member is down: past the purge point by ten snapshots.
const WRITES_WHILE_DOWN: usize = CATCH_UP_ENTRIES + 10 * SNAPSHOT_COUNT;

/// Concurrent writers, so the writes take seconds rather than minutes.
const WRITERS: usize = 16;

#[tokio::test]
async fn member_down_past_the_log_purge_point_catches_up_by_snapshot() {
    let snapshot_count = SNAPSHOT_COUNT.to_string();
    let mut cluster =
        Cluster::start(ClusterSpec::new(3).setting("snapshot-count", &snapshot_count)).await;
    let leader = cluster.leader().await;
    let behind = (leader + 1) % cluster.len();
    cluster.member_mut(behind).kill9();

    let client = cluster.member(leader).client().await;
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        writers.spawn(async move {
            for n in (writer..WRITES_WHILE_DOWN).step_by(WRITERS) {
                let key = format!("bulk/{n:05}");
                put_acknowledged(
                    &client,
                    &key,
                    &format!("{key} written while a member was down"),
                )
                .await;
            }
        });
    }
    while let Some(finished) = writers.join_next().await {
        finished.expect("a writer task");
    }

    cluster.member_mut(behind).restart().await;
    cluster.assert_converged(&[0, 1, 2]).await;
    let caught_up = cluster.member(behind).client().await;
    let counted = expect_ok(
        retry("a serializable count of the keys written", || {
            let mut client = caught_up.clone();
            let options = GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_serializable();
            async move { client.get("bulk/", Some(options)).await }
        })
        .await,
    );
    assert_eq!(
        usize::try_from(counted.count()).expect("a count is not negative"),
        WRITES_WHILE_DOWN,
        "keys on the member that caught up"
    );
}
