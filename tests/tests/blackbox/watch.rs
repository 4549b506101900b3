//! The Watch service with etcd's guarantees: live events, replay from history, prev_kv,
//! filters, cancel, compaction, progress, fragments, and the watch guarantees (ordered,
//! unique, atomic per revision, resumable) under concurrent writers.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_tests::watch_range::{seen, text, Range, Seen};
use etcd_client::{
    Client, CompactionOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::{put, revision, Node, NodeOptions, DEADLINE, POLL_INTERVAL};

/// How long the tests wait to be sure that nothing more arrives.
const QUIET: Duration = Duration::from_millis(300);

fn put_event(key: &str, value: &str, revision: i64) -> Seen {
    (EventType::Put, key.to_owned(), value.to_owned(), revision)
}

fn delete_event(key: &str, revision: i64) -> Seen {
    (EventType::Delete, key.to_owned(), String::new(), revision)
}

/// The next response on the stream.
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no watch response within {DEADLINE:?}"))
        .expect("the watch stream failed")
        .expect("the watch stream ended")
}

/// Asserts that nothing arrives for a while.
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(response) = tokio::time::timeout(QUIET, stream.message()).await {
        panic!("expected nothing more, got {response:?}");
    }
}

/// Opens a stream with one watcher and returns it with the created response.
async fn watch(
    client: &mut Client,
    key: &str,
    options: WatchOptions,
) -> (WatchStream, WatchResponse) {
    let mut stream = client.watch(key, Some(options)).await.expect("watch");
    let created = next(&mut stream).await;
    assert!(
        created.created(),
        "the first response confirms the watcher: {created:?}"
    );
    assert!(!created.canceled(), "{created:?}");
    (stream, created)
}

/// Reads responses until `count` events have arrived.
async fn events(stream: &mut WatchStream, count: usize) -> Vec<Seen> {
    let mut all = Vec::new();
    while all.len() < count {
        let response = next(stream).await;
        assert!(!response.canceled(), "{response:?}");
        all.extend(seen(&response));
    }
    all
}

#[tokio::test]
async fn live_events_arrive_in_order_with_etcds_headers() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "/a/0", "before").await;
    let status = c.status().await.expect("status");
    let member = status.header().expect("a header").member_id();

    let (mut stream, created) = watch(&mut c, "/a/", WatchOptions::new().with_prefix()).await;
    let header = created.header().expect("a header");
    assert_eq!((header.revision(), header.member_id()), (2, member));
    assert!(header.cluster_id() != 0 && header.raft_term() > 0);
    let watch_id = created.watch_id();

    let r1 = put(&mut c, "/a/1", "one").await;
    put(&mut c, "/b/1", "elsewhere").await;
    let r2 = put(&mut c, "/a/1", "two").await;
    let deleted = c
        .delete("/a/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    let r3 = revision(deleted.header());

    let first = next(&mut stream).await;
    assert_eq!(first.watch_id(), watch_id);
    assert_eq!(revision(first.header()), r1);
    assert_eq!(seen(&first), [put_event("/a/1", "one", r1)]);
    assert_eq!(
        events(&mut stream, 3).await,
        [
            put_event("/a/1", "two", r2),
            delete_event("/a/0", r3),
            delete_event("/a/1", r3),
        ]
    );
    assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn a_delete_range_arrives_as_one_response() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for key in ["/r/1", "/r/2", "/r/3"] {
        put(&mut c, key, "v").await;
    }
    let (mut stream, _) = watch(&mut c, "/r/", WatchOptions::new().with_prefix()).await;
    c.delete("/r/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    let response = next(&mut stream).await;
    assert_eq!(response.events().len(), 3, "one revision, one response");
}

#[tokio::test]
async fn replay_from_an_old_revision_then_live() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "k", "1").await;
    let r2 = put(&mut c, "k", "2").await;
    let r3 = revision(c.delete("k", None).await.expect("delete").header());
    let r4 = put(&mut c, "k", "4").await;

    let (mut stream, created) =
        watch(&mut c, "k", WatchOptions::new().with_start_revision(r2)).await;
    assert_eq!(revision(created.header()), r4);
    assert_eq!(
        events(&mut stream, 3).await,
        [
            put_event("k", "2", r2),
            delete_event("k", r3),
            put_event("k", "4", r4)
        ]
    );
    let r5 = put(&mut c, "k", "5").await;
    assert_eq!(events(&mut stream, 1).await, [put_event("k", "5", r5)]);

    // A start revision in the future waits for it.
    let (mut future, _) = watch(&mut c, "k", WatchOptions::new().with_start_revision(r5 + 2)).await;
    put(&mut c, "k", "6").await;
    let r7 = put(&mut c, "k", "7").await;
    assert_eq!(events(&mut future, 1).await, [put_event("k", "7", r7)]);
    assert_quiet(&mut future).await;
}

#[tokio::test]
async fn prev_kv_and_filters() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let (mut with_prev, _) = watch(&mut c, "k", WatchOptions::new().with_prev_key()).await;
    let mut no_put = c
        .watch(
            "k",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        )
        .await
        .expect("watch");
    assert!(next(&mut no_put).await.created());
    let mut no_delete = c
        .watch(
            "k",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])),
        )
        .await
        .expect("watch");
    assert!(next(&mut no_delete).await.created());

    let r1 = put(&mut c, "k", "1").await;
    let r2 = put(&mut c, "k", "2").await;
    let r3 = revision(c.delete("k", None).await.expect("delete").header());

    let mut prevs = Vec::new();
    while prevs.len() < 3 {
        for event in next(&mut with_prev).await.events() {
            prevs.push(
                event
                    .prev_kv()
                    .map(|kv| (text(kv.value()), kv.mod_revision())),
            );
        }
    }
    assert_eq!(
        prevs,
        [None, Some(("1".to_owned(), r1)), Some(("2".to_owned(), r2))]
    );
    assert_eq!(events(&mut no_put, 1).await, [delete_event("k", r3)]);
    assert_eq!(
        events(&mut no_delete, 2).await,
        [put_event("k", "1", r1), put_event("k", "2", r2)]
    );
    assert_quiet(&mut no_put).await;
    assert_quiet(&mut no_delete).await;
}

#[tokio::test]
async fn many_watchers_share_a_stream_and_cancel_one_by_one() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let (mut stream, first) = watch(&mut c, "a", WatchOptions::new()).await;
    stream
        .watch("b", Some(WatchOptions::new()))
        .await
        .expect("second watcher");
    let second = next(&mut stream).await;
    assert!(second.created());
    assert_ne!(second.watch_id(), first.watch_id());

    stream.cancel(first.watch_id()).await.expect("cancel");
    let canceled = next(&mut stream).await;
    assert!(canceled.canceled() && !canceled.created());
    assert_eq!(canceled.watch_id(), first.watch_id());
    assert_eq!(canceled.cancel_reason(), "");

    put(&mut c, "a", "ignored").await;
    let rb = put(&mut c, "b", "seen").await;
    let response = next(&mut stream).await;
    assert_eq!(response.watch_id(), second.watch_id());
    assert_eq!(seen(&response), [put_event("b", "seen", rb)]);

    // Canceling an unknown watcher gets no answer, as in etcd.
    stream.cancel(999).await.expect("cancel");
    assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn chosen_watch_ids_and_duplicates() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let (mut stream, created) = watch(&mut c, "a", WatchOptions::new().with_watch_id(7)).await;
    assert_eq!(created.watch_id(), 7);
    stream
        .watch("b", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("duplicate");
    let refused = next(&mut stream).await;
    assert!(refused.created() && refused.canceled());
    assert_eq!(refused.watch_id(), -1);
    assert_eq!(
        refused.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // The first watcher is unaffected.
    let r = put(&mut c, "a", "v").await;
    assert_eq!(events(&mut stream, 1).await, [put_event("a", "v", r)]);
}

#[tokio::test]
async fn a_compacted_start_revision_is_canceled_with_the_compact_revision() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for n in 0..5 {
        put(&mut c, "k", &n.to_string()).await;
    }
    c.compact(4, Some(CompactionOptions::new()))
        .await
        .expect("compact");

    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(3)))
        .await
        .expect("watch");
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled());
    let compacted = next(&mut stream).await;
    assert!(compacted.canceled(), "{compacted:?}");
    assert_eq!(compacted.watch_id(), created.watch_id());
    assert_eq!(compacted.compact_revision(), 4);
    assert!(compacted.events().is_empty());

    // Just above the compaction, the whole history is there.
    let (mut kept, _) = watch(&mut c, "k", WatchOptions::new().with_start_revision(5)).await;
    assert_eq!(
        events(&mut kept, 2).await,
        [put_event("k", "3", 5), put_event("k", "4", 6)]
    );
}

#[tokio::test]
async fn a_progress_request_reports_the_current_revision() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let (mut stream, _) = watch(&mut c, "quiet", WatchOptions::new()).await;
    let r = put(&mut c, "elsewhere", "v").await;
    stream.request_progress().await.expect("progress request");
    let progress = next(&mut stream).await;
    assert_eq!(progress.watch_id(), -1);
    assert!(progress.events().is_empty() && !progress.created() && !progress.canceled());
    assert_eq!(revision(progress.header()), r);
}

#[tokio::test]
async fn progress_notifications_come_at_the_configured_interval() {
    let node =
        Node::start(NodeOptions::default().setting("watch-progress-notify-interval", "200")).await;
    let mut c = node.client().await;
    let (mut stream, created) =
        watch(&mut c, "quiet", WatchOptions::new().with_progress_notify()).await;
    let r = put(&mut c, "elsewhere", "v").await;
    let started = Instant::now();
    let progress = next(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(progress.watch_id(), created.watch_id());
    assert!(progress.events().is_empty());
    assert_eq!(revision(progress.header()), r);
}

#[tokio::test]
async fn a_large_revision_is_split_only_for_a_watcher_that_accepts_fragments() {
    // Responses are split at --max-request-bytes plus etcd's 512 KiB allowance.
    let node = Node::start(NodeOptions::default().setting("max-request-bytes", "100000")).await;
    let mut c = node.client().await;
    let value = "x".repeat(50_000);
    for n in 0..20 {
        put(&mut c, &format!("/big/{n:02}"), &value).await;
    }
    let options = || WatchOptions::new().with_prefix().with_prev_key();
    let (mut whole, _) = watch(&mut c, "/big/", options()).await;
    let (mut fragmented, _) = watch(&mut c, "/big/", options().with_fragment()).await;
    c.delete("/big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");

    let response = next(&mut whole).await;
    assert_eq!(response.events().len(), 20, "one response for the revision");
    let mut parts = Vec::new();
    let mut keys = Vec::new();
    while keys.len() < 20 {
        let part = next(&mut fragmented).await;
        keys.extend(seen(&part).into_iter().map(|(_, key, ..)| key));
        parts.push(part.events().len());
    }
    assert!(parts.len() > 1, "split into fragments: {parts:?}");
    let expected: Vec<String> = (0..20).map(|n| format!("/big/{n:02}")).collect();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn a_client_with_many_idle_watchers_and_one_busy_one_loses_nothing() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let (mut stream, busy) = watch(&mut c, "/busy/", WatchOptions::new().with_prefix()).await;
    for n in 0..200 {
        stream
            .watch(format!("/idle/{n}"), None)
            .await
            .expect("idle watcher");
    }
    // The stream is not read while the writes go on, so its watchers fall behind.
    let mut written = Vec::new();
    for n in 0..300 {
        let key = format!("/busy/{}", n % 7);
        written.push(put_event(
            &key,
            &n.to_string(),
            put(&mut c, &key, &n.to_string()).await,
        ));
    }
    let mut got = Vec::new();
    while got.len() < written.len() {
        let response = next(&mut stream).await;
        if response.watch_id() == busy.watch_id() {
            got.extend(seen(&response));
        } else {
            assert!(
                response.created() && response.events().is_empty(),
                "{response:?}"
            );
        }
    }
    assert_eq!(got, written);
}

/// One write a writer made, as the events it committed.
struct Committed {
    revision: i64,
    events: Vec<Seen>,
}

async fn write_randomly(mut c: Client, writer: u64, writes: usize) -> Vec<Committed> {
    let mut state = writer.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut roll = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut committed = Vec::new();
    for n in 0..writes {
        let key = format!("/g/{}", roll(16));
        let value = format!("w{writer}-{n}");
        match roll(4) {
            0 => {
                let deleted = c
                    .delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
                    .await
                    .expect("delete");
                // Deleting a missing key makes no revision.
                if deleted.deleted() == 1 {
                    let revision = revision(deleted.header());
                    committed.push(Committed {
                        revision,
                        events: vec![delete_event(&key, revision)],
                    });
                }
            }
            1 => {
                let other = format!("/g/{}", 16 + roll(4));
                let txn = Txn::new().and_then([
                    TxnOp::put(key.as_str(), value.as_str(), None),
                    TxnOp::put(other.as_str(), value.as_str(), None),
                ]);
                let response = c.txn(txn).await.expect("txn");
                let revision = revision(response.header());
                committed.push(Committed {
                    revision,
                    events: vec![
                        put_event(&key, &value, revision),
                        put_event(&other, &value, revision),
                    ],
                });
            }
            _ => {
                let response = c
                    .put(key.as_str(), value.as_str(), Some(PutOptions::new()))
                    .await
                    .expect("put");
                let revision = revision(response.header());
                committed.push(Committed {
                    revision,
                    events: vec![put_event(&key, &value, revision)],
                });
            }
        }
    }
    committed
}

/// What one watcher received, response by response.
type Received = Arc<Mutex<Vec<Vec<Seen>>>>;

/// A watcher that reads into `received`; with `reconnect_after`, it drops its stream once
/// it has that many events and watches again from the revision after the last one it saw.
async fn follow(
    endpoint: String,
    range: Range,
    start: i64,
    mut reconnect_after: Option<usize>,
    received: Received,
) {
    let mut c = crate::harness::connect(&endpoint, DEADLINE)
        .await
        .expect("connect");
    let options = || range.options();
    let (mut stream, _) = watch(&mut c, range.key(), options().with_start_revision(start)).await;
    let mut count = 0;
    loop {
        let response = next(&mut stream).await;
        assert!(!response.canceled(), "{response:?}");
        let events = seen(&response);
        let Some(last) = events.last().map(|event| event.3) else {
            continue;
        };
        count += events.len();
        received.lock().expect("not poisoned").push(events);
        if reconnect_after.is_some_and(|after| count >= after) {
            reconnect_after = None;
            drop(stream);
            (stream, _) = watch(&mut c, range.key(), options().with_start_revision(last + 1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_watcher_sees_exactly_the_committed_history_of_its_range() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let c = c.clone();
            tokio::spawn(write_randomly(c, writer, 150))
        })
        .collect();

    // Watchers join while the writers run, each from a revision already written.
    let ranges = [
        Range::Prefix("/g/"),
        Range::Prefix("/g/1"),
        Range::Key("/g/3"),
        Range::Between("/g/2", "/g/5"),
    ];
    let mut watchers = Vec::new();
    for n in 0..8 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let current = revision(c.get("/", None).await.expect("get").header());
        let start = 1 + (n as i64 * 7919) % current;
        let range = ranges[n % ranges.len()];
        let received = Received::default();
        let reconnect = (n % 3 == 0).then_some(20);
        let task = tokio::spawn(follow(
            node.endpoint(),
            range,
            start,
            reconnect,
            received.clone(),
        ));
        watchers.push((range, start, received, task));
    }

    let mut history: Vec<Committed> = Vec::new();
    for writer in writers {
        history.extend(writer.await.expect("writer"));
    }
    history.sort_by_key(|write| write.revision);
    let revisions: Vec<i64> = history.iter().map(|write| write.revision).collect();
    let mut unique = revisions.clone();
    unique.dedup();
    assert_eq!(revisions, unique, "each write its own revision");

    for (range, start, received, task) in watchers {
        let expected: Vec<Seen> = history
            .iter()
            .filter(|write| write.revision >= start)
            .flat_map(|write| write.events.iter().filter(|seen| range.contains(&seen.1)))
            .cloned()
            .collect();
        let deadline = Instant::now() + DEADLINE;
        while received
            .lock()
            .expect("not poisoned")
            .iter()
            .map(Vec::len)
            .sum::<usize>()
            < expected.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        // Duplicates would show up as extra events by now.
        tokio::time::sleep(QUIET).await;
        task.abort();
        let responses = received.lock().expect("not poisoned").clone();
        let got: Vec<Seen> = responses.iter().flatten().cloned().collect();
        assert_eq!(got, expected, "watcher of {range:?} from {start}");
        // Atomic revisions: a revision never continues in the next response.
        for pair in responses.windows(2) {
            let (end, begin) = (pair[0].last().expect("events").3, pair[1][0].3);
            assert!(end < begin, "watcher of {range:?}: revision {end} split");
        }
    }
    // The watch history agrees with the store's history at every revision.
    let last = *revisions.last().expect("writes");
    let live = c
        .get("/g/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    for write in &history {
        for (kind, key, value, _) in &write.events {
            match kind {
                EventType::Put => state.insert(key.clone(), value.clone()),
                EventType::Delete => state.remove(key),
            };
        }
    }
    let stored: BTreeMap<String, String> = live
        .kvs()
        .iter()
        .map(|kv| (text(kv.key()), text(kv.value())))
        .collect();
    assert_eq!(stored, state);
    assert_eq!(revision(live.header()), last);
}

/// `etcdctl watch ARGS` until it has printed `lines` lines.
async fn etcdctl_watch(node: &Node, args: &[&str], lines: usize) -> Vec<String> {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", node.endpoint()))
        .arg("watch")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run etcdctl (scripts/install-test-deps.sh installs it)");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    while printed.len() < lines {
        let line = tokio::time::timeout(DEADLINE, out.next_line())
            .await
            .unwrap_or_else(|_| panic!("etcdctl watch {args:?} printed only {printed:?}"))
            .expect("read etcdctl")
            .unwrap_or_else(|| panic!("etcdctl watch {args:?} ended after {printed:?}"));
        printed.push(line);
    }
    printed
}

#[tokio::test]
async fn etcdctl_watch_replays_a_prefix_from_a_revision_and_follows() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "/a/1", "v1").await;
    let from = put(&mut c, "/a/2", "v2").await;
    put(&mut c, "/b/1", "other").await;
    c.delete("/a/1", None).await.expect("delete");

    let from = from.to_string();
    let args = ["--prefix", "/a", "--rev", &from];
    let watching = etcdctl_watch(&node, &args, 9);
    let writer = async {
        tokio::time::sleep(QUIET).await;
        put(&mut c, "/a/3", "v3").await;
    };
    let (printed, ()) = tokio::join!(watching, writer);
    assert_eq!(
        printed,
        ["PUT", "/a/2", "v2", "DELETE", "/a/1", "", "PUT", "/a/3", "v3"]
    );
}

#[tokio::test]
async fn etcdctl_watch_of_a_compacted_revision_fails_as_with_etcd() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for n in 0..4 {
        put(&mut c, "k", &n.to_string()).await;
    }
    c.compact(4, None).await.expect("compact");
    let output = tokio::time::timeout(
        DEADLINE,
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", node.endpoint()))
            .args(["watch", "k", "--rev", "2"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("etcdctl ends")
    .expect("run etcdctl");
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let mut node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let (mut stream, _) = watch(&mut c, "k", WatchOptions::new()).await;
    let status = node.terminate().await;
    assert!(status.success(), "a clean exit with a watch open: {status}");
    let end = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
