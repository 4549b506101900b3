//! Power cuts: each member keeps its data dir on a disk that loses every write not yet
//! fsynced when its power goes (`cairn_tests::power_cut`). A write is acknowledged only once
//! it is fsynced on a quorum, so no power cut may lose one: not of the leader alone, not of
//! a quorum while the third member runs on, not of every member at once. SIGKILL alone
//! cannot show this: the kernel keeps what a killed process wrote.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use tokio::task::JoinSet;

use crate::harness::{connect, wait_for_count, within, Cluster, ClusterSpec, REQUEST_TIMEOUT};

/// Concurrent writers; writer `w` talks to member `w % 3`.
const WRITERS: usize = 6;

/// Acknowledged writes wanted before each power cut.
const ACKS_PER_ROUND: usize = 300;

/// A writer pauses this long after a failed write rather than spin against a member that
/// is down.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);

/// `--snapshot-count` of the members: low, so that snapshots are taken and the log is
/// purged between the power cuts, and a member catches up from what its disk kept.
const SNAPSHOT_COUNT: &str = "50";

/// Writes `p/<writer>/<sequence>` (each key its own value) through `client` until `stop`,
/// adding each acknowledged key to `acknowledged` and counting it in `count`. A write that
/// fails is not retried: its key may or may not exist afterwards.
async fn write_until_stopped(
    writer: usize,
    client: Client,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
) {
    let mut sequence = 0_u32;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let key = format!("p/{writer}/{sequence:06}");
        let mut client = client.clone();
        match within(
            REQUEST_TIMEOUT,
            client.put(key.as_str(), key.as_str(), None),
        )
        .await
        {
            Ok(_) => {
                acknowledged
                    .lock()
                    .expect("acknowledged keys lock poisoned")
                    .push(key);
                count.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(PAUSE_AFTER_ERROR).await,
        }
    }
}

/// Which members lose power in a round.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// All three at once: every acknowledged write must come back from what two disks kept.
    Everyone,
    /// The leader alone, while the others go on.
    Leader,
    /// The leader and one follower, a quorum, while the third member goes on.
    LeaderAndAFollower,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_members_lose_power() {
    let mut cluster = Cluster::start(
        ClusterSpec::new(3)
            .on_power_cut_disks()
            .setting("snapshot-count", SNAPSHOT_COUNT),
    )
    .await;
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let endpoint = cluster.member(writer % cluster.len()).endpoint().to_owned();
        writers.spawn(write_until_stopped(
            writer,
            connect(&endpoint, REQUEST_TIMEOUT).await,
            stop.clone(),
            acknowledged.clone(),
            count.clone(),
        ));
    }

    let mut lost_bytes = Vec::new();
    for cut in [
        Cut::Everyone,
        Cut::Leader,
        Cut::LeaderAndAFollower,
        Cut::Everyone,
    ] {
        let target = count.load(Ordering::Relaxed) + ACKS_PER_ROUND;
        wait_for_count(&count, target, "acknowledged writes before the power cut").await;
        let leader = cluster.leader().await;
        let follower = (leader + 1) % cluster.len();
        let victims = match cut {
            Cut::Everyone => everyone.clone(),
            Cut::Leader => vec![leader],
            Cut::LeaderAndAFollower => vec![leader, follower],
        };
        // The writers go on: writes are on their way to every member when the power goes.
        for &victim in &victims {
            lost_bytes.push(cluster.member_mut(victim).power_cut());
        }
        if victims.len() == cluster.len() {
            cluster.restart_all().await;
        } else {
            for &victim in &victims {
                cluster.member_mut(victim).restart().await;
            }
        }
        cluster.leader_among(&everyone).await;
        let written = acknowledged
            .lock()
            .expect("acknowledged keys lock poisoned")
            .clone();
        println!(
            "after a power cut of {cut:?}: {} acknowledged writes",
            written.len()
        );
        for &index in &everyone {
            cluster.assert_none_missing(index, "p/", &written).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(finished) = writers.join_next().await {
        finished.expect("a writer task");
    }
    let written = acknowledged
        .lock()
        .expect("acknowledged keys lock poisoned")
        .clone();
    cluster.assert_none_missing(0, "p/", &written).await;
    cluster.assert_converged(&everyone).await;
    println!(
        "{} acknowledged writes kept through four rounds of power cuts; unsynced bytes lost \
         per cut member: {lost_bytes:?}",
        written.len()
    );
}
