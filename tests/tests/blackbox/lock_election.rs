//! etcd's Lock and Election services through the `etcd-client` crate, and `etcdctl lock` and
//! `etcdctl elect` (which run the same recipes in the client, over KV, Lease and Watch).

use std::process::Stdio;
use std::time::Duration;

use etcd_client::{Client, LockOptions, ObserveStream, ProclaimOptions, ResignOptions};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::etcdctl::Etcdctl;
use crate::harness::{assert_etcd_error, Node, NodeOptions, DEADLINE};

/// How long a contender that must wait is watched for not getting through.
const STILL_WAITING: Duration = Duration::from_millis(500);

async fn lease(c: &mut Client) -> i64 {
    c.lease_grant(30, None).await.expect("grant").id()
}

fn with_lease(lease: i64) -> Option<LockOptions> {
    Some(LockOptions::new().with_lease(lease))
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8")
}

/// The value in the next answer of an Observe stream.
async fn next_value(observed: &mut ObserveStream) -> Vec<u8> {
    let response = tokio::time::timeout(DEADLINE, observed.message())
        .await
        .expect("an observation")
        .expect("observe")
        .expect("the stream stays open");
    response.kv().expect("a key-value").value().to_vec()
}

#[tokio::test]
async fn lock_excludes_a_second_holder_until_unlock() {
    let node = Node::start(NodeOptions::default()).await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    let (lease_a, lease_b) = (lease(&mut a).await, lease(&mut b).await);

    let held = a.lock("L", with_lease(lease_a)).await.expect("lock");
    assert_eq!(text(held.key()), format!("L/{lease_a:x}"));
    let waiting = tokio::spawn(async move { b.lock("L", with_lease(lease_b)).await });
    tokio::time::sleep(STILL_WAITING).await;
    assert!(!waiting.is_finished(), "a second holder got the lock");

    let unlocked = a.unlock(held.key()).await.expect("unlock");
    let taken = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiter gets the lock")
        .expect("join")
        .expect("lock");
    assert_eq!(text(taken.key()), format!("L/{lease_b:x}"));
    let unlocked_at = unlocked.header().expect("header").revision();
    assert!(taken.header().expect("header").revision() >= unlocked_at);
}

#[tokio::test]
async fn a_lock_is_released_when_its_lease_is_revoked() {
    let node = Node::start(NodeOptions::default()).await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    let (lease_a, lease_b) = (lease(&mut a).await, lease(&mut b).await);
    a.lock("L", with_lease(lease_a)).await.expect("lock");
    let waiting = tokio::spawn(async move { b.lock("L", with_lease(lease_b)).await });
    tokio::time::sleep(STILL_WAITING).await;
    assert!(!waiting.is_finished());

    a.lease_revoke(lease_a).await.expect("revoke");
    let taken = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiter gets the lock")
        .expect("join")
        .expect("lock");
    assert_eq!(text(taken.key()), format!("L/{lease_b:x}"));
}

#[tokio::test]
async fn lock_without_a_lease_grants_one_and_with_an_unknown_lease_fails() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let held = c.lock("L", None).await.expect("lock");
    let hex = text(held.key()).strip_prefix("L/").expect("L/ prefix");
    let granted = i64::from_str_radix(hex, 16).expect("a hex lease ID");
    let ttl = c.lease_time_to_live(granted, None).await.expect("ttl");
    assert_eq!(ttl.granted_ttl(), 60, "etcd's default session TTL");

    // etcd's lock server returns its client's errors, which gRPC sends as Unknown.
    assert_etcd_error(
        c.lock("M", with_lease(0x5eed)).await,
        tonic::Code::Unknown,
        "etcdserver: requested lease not found",
    );
}

#[tokio::test]
async fn election_campaign_leader_proclaim_observe_and_resign() {
    let node = Node::start(NodeOptions::default()).await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    let mut watcher = node.client().await;
    let (lease_a, lease_b) = (lease(&mut a).await, lease(&mut b).await);

    let campaign = a.campaign("E", "alice", lease_a).await.expect("campaign");
    let alice = campaign.leader().expect("a leader key").clone();
    assert_eq!(
        (text(alice.name()), text(alice.key()), alice.lease()),
        ("E", format!("E/{lease_a:x}").as_str(), lease_a)
    );
    let leader = a.leader("E").await.expect("leader");
    let kv = leader.kv().expect("the leader's key-value");
    assert_eq!((kv.key(), kv.value()), (alice.key(), &b"alice"[..]));
    assert_eq!(kv.create_revision(), alice.rev());

    let mut observed = watcher.observe("E").await.expect("observe");
    assert_eq!(next_value(&mut observed).await, b"alice");

    let challenger = tokio::spawn(async move { b.campaign("E", "bob", lease_b).await });
    tokio::time::sleep(STILL_WAITING).await;
    assert!(!challenger.is_finished(), "two leaders at once");

    let proclaim = ProclaimOptions::new().with_leader(alice.clone());
    a.proclaim("alice-2", Some(proclaim))
        .await
        .expect("proclaim");
    assert_eq!(next_value(&mut observed).await, b"alice-2");

    let resign = ResignOptions::new().with_leader(alice.clone());
    a.resign(Some(resign)).await.expect("resign");
    let elected = tokio::time::timeout(DEADLINE, challenger)
        .await
        .expect("the challenger is elected")
        .expect("join")
        .expect("campaign");
    let bob = elected.leader().expect("a leader key");
    assert_eq!(text(bob.key()), format!("E/{lease_b:x}"));
    assert_eq!(next_value(&mut observed).await, b"bob");
    let leader = a.leader("E").await.expect("leader");
    assert_eq!(leader.kv().expect("kv").value(), b"bob");

    // The old leader key no longer leads.
    assert_etcd_error(
        a.proclaim("stale", Some(ProclaimOptions::new().with_leader(alice)))
            .await,
        tonic::Code::Unknown,
        "election: not leader",
    );
}

#[tokio::test]
async fn election_errors_are_etcds() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    assert_etcd_error(
        c.leader("nobody").await,
        tonic::Code::Unknown,
        "election: no leader",
    );
    assert_etcd_error(
        c.proclaim("v", None).await,
        tonic::Code::Unknown,
        "\"leader\" field must be provided",
    );
    assert_etcd_error(
        c.resign(None).await,
        tonic::Code::Unknown,
        "\"leader\" field must be provided",
    );
}

#[tokio::test]
async fn etcdctl_lock_runs_one_holder_at_a_time() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = dir.path().join("log");
    let script = format!(
        "echo start >> {0}; sleep 0.5; echo end >> {0}",
        log.display()
    );
    let holders: Vec<Child> = (0..2)
        .map(|_| {
            ctl.command(&["lock", "L", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn etcdctl lock")
        })
        .collect();
    for mut holder in holders {
        let status = tokio::time::timeout(DEADLINE, holder.wait())
            .await
            .expect("etcdctl lock finishes")
            .expect("wait for etcdctl");
        assert!(status.success(), "etcdctl lock failed: {status}");
    }
    let order = std::fs::read_to_string(&log).expect("read the log");
    assert_eq!(order, "start\nend\nstart\nend\n");
}

/// The stdout lines of an `etcdctl` process.
fn lines_of(child: &mut Child) -> Lines<BufReader<ChildStdout>> {
    BufReader::new(child.stdout.take().expect("piped stdout")).lines()
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("etcdctl prints in time")
        .expect("read etcdctl's output")
        .expect("etcdctl is still running")
}

/// The next two lines (`etcdctl` prints a key, then its value).
async fn key_and_value(lines: &mut Lines<BufReader<ChildStdout>>) -> (String, String) {
    let key = next_line(lines).await;
    (key, next_line(lines).await)
}

#[tokio::test]
async fn etcdctl_elect_campaigns_observes_and_hands_over_on_interrupt() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);
    let spawn = |args: &[&str]| {
        ctl.command(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl elect")
    };

    let mut alice = spawn(&["elect", "E", "alice"]);
    let (alice_key, value) = key_and_value(&mut lines_of(&mut alice)).await;
    assert!(alice_key.starts_with("E/"), "{alice_key:?}");
    assert_eq!(value, "alice");

    let mut observer = spawn(&["elect", "-l", "E"]);
    let mut observed = lines_of(&mut observer);
    assert_eq!(
        key_and_value(&mut observed).await,
        (alice_key.clone(), "alice".to_owned())
    );

    let mut bob = spawn(&["elect", "E", "bob"]);
    let mut bob_lines = lines_of(&mut bob);
    let early = tokio::time::timeout(STILL_WAITING, bob_lines.next_line()).await;
    assert!(early.is_err(), "bob was elected while alice leads");

    // On an interrupt etcdctl resigns, and the next candidate takes over.
    let pid = alice.id().expect("alice is running");
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    signal::kill(pid, Signal::SIGINT).expect("interrupt alice");
    let (bob_key, value) = key_and_value(&mut bob_lines).await;
    assert_eq!(value, "bob");
    assert_ne!(bob_key, alice_key);
    assert_eq!(
        key_and_value(&mut observed).await,
        (bob_key, "bob".to_owned())
    );
}
