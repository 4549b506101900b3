//! A lease across a leader failover: kept alive (its keepalive stream moving to another
//! member when its member dies) it outlives the old leader for as long as the keepalives go
//! on; once they stop, the new leader expires it within its TTL and some election slack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};

use crate::harness::{
    connect, expect_ok, poll, retry, within, Cluster, ClusterSpec, ELECTION_TIMEOUT, POLL_INTERVAL,
    REQUEST_TIMEOUT,
};

/// The lease's TTL, in seconds.
const TTL: i64 = 5;

/// Pause between two keepalives of the keeper: well under a third of the TTL.
const KEEPALIVE_PERIOD: Duration = Duration::from_millis(500);

/// How long the keeper waits for the answer to one keepalive before it gives up its stream.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Election timeouts a new leader may take, beyond the TTL and etcd's extra second, before
/// it expires an abandoned lease.
const ELECTION_SLACK: u32 = 4;

const KEY: &str = "leased-across-failover";

fn ttl_secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).expect("a positive TTL"))
}

/// One answered keepalive.
#[derive(Clone, Copy, Debug)]
struct Answered {
    sent: Instant,
    answered: Instant,
    /// Index of the endpoint it went through.
    via: usize,
}

/// What the keeper did.
#[derive(Default, Debug)]
struct KeeperLog {
    answered: Vec<Answered>,
    /// Answers that said the lease is gone (TTL 0), or had another TTL.
    wrong: Vec<String>,
    /// Streams given up: endpoint index and why.
    switches: Vec<(usize, String)>,
}

/// Keeps `lease` alive through `endpoints[0]`, moving its stream to the next endpoint when
/// the stream fails, until `stop`.
async fn keep_alive(
    endpoints: Vec<String>,
    lease: i64,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<KeeperLog>>,
) {
    let mut via = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut client = connect(&endpoints[via], REQUEST_TIMEOUT).await;
        let failure = match within(REQUEST_TIMEOUT, client.lease_keep_alive(lease)).await {
            Err(why) => why,
            Ok((mut keeper, mut answers)) => loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let sent = Instant::now();
                if let Err(e) = keeper.keep_alive().await {
                    break format!("send: {e}");
                }
                match tokio::time::timeout(ANSWER_TIMEOUT, answers.message()).await {
                    Ok(Ok(Some(answer))) => {
                        let mut log = log.lock().expect("not poisoned");
                        if answer.ttl() == TTL && answer.id() == lease {
                            log.answered.push(Answered {
                                sent,
                                answered: Instant::now(),
                                via,
                            });
                        } else {
                            log.wrong.push(format!("{answer:?}"));
                        }
                    }
                    Ok(Ok(None)) => break "the stream ended".to_owned(),
                    Ok(Err(e)) => break e.to_string(),
                    Err(_) => break format!("no answer within {ANSWER_TIMEOUT:?}"),
                }
                tokio::time::sleep(KEEPALIVE_PERIOD).await;
            },
        };
        log.lock()
            .expect("not poisoned")
            .switches
            .push((via, failure));
        via = (via + 1) % endpoints.len();
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether [`KEY`] exists, by a linearizable read through `client`, retried while reads
/// fail.
async fn key_exists(client: &Client) -> bool {
    let read = retry(&format!("a linearizable read of {KEY}"), || {
        let mut client = client.clone();
        async move { client.get(KEY, None).await }
    })
    .await;
    !expect_ok(read).kvs().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_lease_survives_a_leader_failover_and_expires_after_keepalives_stop() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..cluster.len()).filter(|&i| i != leader).collect();
    let follower = cluster.member(followers[0]).client().await;
    let other_follower = cluster.member(followers[1]).client().await;

    let granted = retry("a grant through a follower", || {
        let mut client = follower.clone();
        async move { client.lease_grant(TTL, None).await }
    })
    .await;
    let lease = expect_ok(granted).id();
    expect_ok(
        retry("a put with the lease", || {
            let mut client = follower.clone();
            async move {
                client
                    .put(KEY, "v", Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await,
    );

    // The keeper starts on the leader, whose death moves it to a follower.
    let endpoints: Vec<String> = [leader, followers[0], followers[1]]
        .iter()
        .map(|&index| cluster.member(index).endpoint().to_owned())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(KeeperLog::default()));
    let keeper = tokio::spawn(keep_alive(endpoints, lease, stop.clone(), log.clone()));
    expect_ok(
        poll("a keepalive answered by the leader", || async {
            match log.lock().expect("not poisoned").answered.first() {
                Some(_) => Ok(()),
                None => Err("none yet".to_owned()),
            }
        })
        .await,
    );

    cluster.member_mut(leader).kill9();
    let new_leader = cluster.leader_among(&followers).await;
    let failover = Instant::now();
    println!(
        "killed leader {}, new leader {}",
        cluster.member(leader).name(),
        cluster.member(new_leader).name()
    );

    // Kept alive, the key stays for two TTLs after the failover, seen by both survivors.
    let held_until = failover + 2 * ttl_secs(TTL);
    while Instant::now() < held_until {
        for client in [&follower, &other_follower] {
            assert!(
                key_exists(client).await,
                "{KEY} vanished {:?} after the failover while kept alive; keeper: {:?}",
                failover.elapsed(),
                log.lock().expect("not poisoned")
            );
        }
        tokio::time::sleep(POLL_INTERVAL * 4).await;
    }

    stop.store(true, Ordering::Relaxed);
    // The keeper notices within one request or one answer's wait.
    tokio::time::timeout(REQUEST_TIMEOUT + ANSWER_TIMEOUT, keeper)
        .await
        .expect("the keeper stops")
        .expect("the keeper task");
    let stopped = log.lock().expect("not poisoned").answered.last().copied();
    {
        let log = log.lock().expect("not poisoned");
        assert!(
            log.wrong.is_empty(),
            "unexpected keepalive answers: {log:?}"
        );
        assert!(
            log.answered
                .iter()
                .any(|answer| answer.via != 0 && answer.sent > failover),
            "no keepalive answered by a survivor after the failover: {log:?}"
        );
        println!(
            "{} keepalives answered; streams given up: {:?}",
            log.answered.len(),
            log.switches
        );
    }
    let last = stopped.expect("answered keepalives");

    // Gone, everywhere, not before the TTL after the last keepalive was sent, and within
    // TTL + 1 s + a few election timeouts after its answer.
    let gone = poll(&format!("the expiry of {KEY}"), || async {
        for client in [&follower, &other_follower] {
            if key_exists(client).await {
                return Err("still there".to_owned());
            }
        }
        Ok(Instant::now())
    })
    .await;
    let gone = expect_ok(gone);
    let after_sent = gone - last.sent;
    let after_answer = gone - last.answered;
    let limit = ttl_secs(TTL) + Duration::from_secs(1) + ELECTION_TIMEOUT * ELECTION_SLACK;
    println!("gone {after_sent:?} after the last keepalive was sent");
    assert!(
        after_sent >= ttl_secs(TTL),
        "{KEY} expired {after_sent:?} after the last keepalive, before its TTL of {TTL} s"
    );
    assert!(
        after_answer <= limit,
        "{KEY} outlived its last keepalive's answer by {after_answer:?}, more than {limit:?}"
    );

    let ttl = expect_ok(
        retry("TimeToLive of the expired lease", || {
            let mut client = other_follower.clone();
            async move { client.lease_time_to_live(lease, None).await }
        })
        .await,
    );
    assert_eq!(ttl.ttl(), -1, "an expired lease is gone: {ttl:?}");
    println!("{:?} in all", started.elapsed());
}
