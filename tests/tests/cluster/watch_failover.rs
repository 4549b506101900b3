//! Watchers across a leader failover: writers go on through the new leader, and every
//! watcher, on the leader or a follower, started live or at an old revision, sees exactly
//! the committed history of its range; one whose member dies resumes on another member
//! from the revision after the last it saw, and loses nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_tests::watch_range::{seen, text, Range, Seen};
use etcd_client::{
    Client, DeleteOptions, EventType, GetOptions, ResponseHeader, Txn, TxnOp, WatchOptions,
};

use crate::harness::{
    connect, expect_ok, poll, retry, wait_for_count, within, Cluster, ClusterSpec, DEADLINE,
    POLL_INTERVAL, REQUEST_TIMEOUT,
};

/// Acknowledged writes (of all writers) wanted before the kill, and again after the new
/// election.
const WRITES_PER_PHASE: usize = 60;

/// How long a watcher that has all its expected events waits to be sure no more come.
const QUIET: Duration = Duration::from_millis(300);

/// Keys the writers touch: `/wf/0` ... `/wf/15`, and `/wf/16` ... `/wf/19` by transactions.
const PREFIX: &str = "/wf/";

fn revision_of(header: Option<&ResponseHeader>) -> i64 {
    header.map_or(0, ResponseHeader::revision)
}

/// One acknowledged write, as the events it committed at its revision.
struct Committed {
    revision: i64,
    events: Vec<Seen>,
}

/// Puts, deletes and two-key transactions under [`PREFIX`] through `clients[0]` (then the
/// next client whenever a request fails: its member may be dead) until `stop`; returns the
/// acknowledged writes. A failed write is not repeated: it may or may not have committed.
async fn write_until_stopped(
    clients: Vec<Client>,
    writer: u64,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
) -> Vec<Committed> {
    let mut state = (writer + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut roll = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut committed = Vec::new();
    let mut via = 0;
    let mut n = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut client = clients[via].clone();
        let key = format!("{PREFIX}{}", roll(16));
        let value = format!("w{writer}-{n}");
        let outcome = match roll(4) {
            0 => within(
                REQUEST_TIMEOUT,
                client.delete(key.as_str(), Some(DeleteOptions::new().with_prev_key())),
            )
            .await
            .map(|deleted| {
                // Deleting a missing key makes no revision.
                (deleted.deleted() == 1).then(|| {
                    let revision = revision_of(deleted.header());
                    Committed {
                        revision,
                        events: vec![(EventType::Delete, key.clone(), String::new(), revision)],
                    }
                })
            }),
            1 => {
                let other = format!("{PREFIX}{}", 16 + roll(4));
                let txn = Txn::new().and_then([
                    TxnOp::put(key.as_str(), value.as_str(), None),
                    TxnOp::put(other.as_str(), value.as_str(), None),
                ]);
                within(REQUEST_TIMEOUT, client.txn(txn))
                    .await
                    .map(|response| {
                        let revision = revision_of(response.header());
                        let put =
                            |key: &str| (EventType::Put, key.to_owned(), value.clone(), revision);
                        Some(Committed {
                            revision,
                            events: vec![put(&key), put(&other)],
                        })
                    })
            }
            _ => within(
                REQUEST_TIMEOUT,
                client.put(key.as_str(), value.as_str(), None),
            )
            .await
            .map(|response| {
                let revision = revision_of(response.header());
                Some(Committed {
                    revision,
                    events: vec![(EventType::Put, key.clone(), value.clone(), revision)],
                })
            }),
        };
        match outcome {
            Ok(write) => {
                committed.extend(write);
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            // An election, or a dead member: try the next one, after a breath.
            Err(_) => {
                via = (via + 1) % clients.len();
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
    committed
}

/// What one watcher received: its responses' events, and the members it watched on.
#[derive(Default)]
struct Received {
    responses: Vec<Vec<Seen>>,
    /// Endpoint index and start revision of each (re)connection.
    sessions: Vec<(usize, i64)>,
}

/// A watcher of `range` from `start` on `endpoints[0]`; when its stream fails or ends it
/// watches again on the next endpoint from the revision after the last event it saw.
async fn follow(endpoints: Vec<String>, range: Range, start: i64, received: Arc<Mutex<Received>>) {
    let mut via = 0;
    let mut next_revision = start;
    loop {
        let mut client = connect(&endpoints[via], REQUEST_TIMEOUT).await;
        let options = range.options().with_start_revision(next_revision);
        let stream = within(REQUEST_TIMEOUT, client.watch(range.key(), Some(options))).await;
        let Ok(mut stream) = stream else {
            via = (via + 1) % endpoints.len();
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        received
            .lock()
            .expect("not poisoned")
            .sessions
            .push((via, next_revision));
        // Until the stream breaks (its member died) or ends.
        while let Ok(Some(response)) = stream.message().await {
            assert!(
                !response.canceled(),
                "watcher of {range:?} canceled on {}: {response:?}",
                endpoints[via]
            );
            let events = seen(&response);
            let Some(last) = events.last().map(|event| event.3) else {
                continue;
            };
            next_revision = last + 1;
            received
                .lock()
                .expect("not poisoned")
                .responses
                .push(events);
        }
        via = (via + 1) % endpoints.len();
    }
}

/// A linearizable read through `client` of the latest revision.
async fn current_revision(client: &Client) -> i64 {
    let read = retry("a linearizable read of the latest revision", || {
        let mut client = client.clone();
        async move { client.get(PREFIX, None).await }
    })
    .await;
    revision_of(expect_ok(read).header())
}

/// The committed history of [`PREFIX`] from revision 1 to `through`, read back by a fresh
/// watcher on `endpoint`, as one entry per revision.
async fn history_through(endpoint: &str, through: i64) -> Vec<Committed> {
    let mut client = connect(endpoint, REQUEST_TIMEOUT).await;
    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = expect_ok(within(REQUEST_TIMEOUT, client.watch(PREFIX, Some(options))).await);
    let mut history: Vec<Committed> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while history.last().map_or(0, |write| write.revision) < through {
        let left = deadline.saturating_duration_since(Instant::now());
        let response = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the history through {through} not replayed in time"))
            .expect("the history watch failed")
            .expect("the history watch ended");
        for event in seen(&response) {
            match history.last_mut() {
                Some(write) if write.revision == event.3 => write.events.push(event),
                _ => history.push(Committed {
                    revision: event.3,
                    events: vec![event],
                }),
            }
        }
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_exactly_the_committed_history_across_a_leader_kill() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..cluster.len()).filter(|&i| i != leader).collect();
    let endpoints: Vec<String> = (0..cluster.len())
        .map(|index| cluster.member(index).endpoint().to_owned())
        .collect();
    let names: Vec<String> = (0..cluster.len())
        .map(|index| cluster.member(index).name().to_owned())
        .collect();
    // Member `first` first, then the others in order.
    let order = |first: usize| -> Vec<usize> {
        let mut order = vec![first];
        order.extend((0..endpoints.len()).filter(|&i| i != first));
        order
    };
    let probe = cluster.member(followers[0]).client().await;

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for (writer, first) in [leader, followers[0], followers[1]].into_iter().enumerate() {
        let mut clients = Vec::new();
        for index in order(first) {
            clients.push(cluster.member(index).client().await);
        }
        writers.push(tokio::spawn(write_until_stopped(
            clients,
            writer as u64,
            stop.clone(),
            acknowledged.clone(),
        )));
    }

    let ranges = [
        Range::Prefix(PREFIX),
        Range::Prefix("/wf/1"),
        Range::Key("/wf/3"),
        Range::Between("/wf/2", "/wf/5"),
    ];
    let mut watchers = Vec::new();
    let mut add_watcher = |first: usize, range: Range, start: i64| {
        let received = Arc::new(Mutex::new(Received::default()));
        let via = order(first)
            .into_iter()
            .map(|i| endpoints[i].clone())
            .collect();
        let task = tokio::spawn(follow(via, range, start, received.clone()));
        watchers.push((names[first].clone(), range, start, received, task));
    };
    // From the start, on every member.
    for (n, &first) in [leader, followers[0], followers[1], leader]
        .iter()
        .enumerate()
    {
        add_watcher(first, ranges[n % ranges.len()], 1);
    }
    wait_for_count(
        &acknowledged,
        WRITES_PER_PHASE / 2,
        "writes before the kill",
    )
    .await;
    // Live and from old revisions, while the writers run.
    let now = current_revision(&probe).await;
    for (n, &first) in [leader, followers[1], followers[0], leader]
        .iter()
        .enumerate()
    {
        let start = if n % 2 == 0 { now + 1 } else { 1 + now / 3 };
        add_watcher(first, ranges[(n + 1) % ranges.len()], start);
    }
    wait_for_count(&acknowledged, WRITES_PER_PHASE, "writes before the kill").await;

    let killed_revision = current_revision(&probe).await;
    cluster.member_mut(leader).kill9();
    let killed_at = Instant::now();
    let new_leader = cluster.leader_among(&followers).await;
    println!(
        "killed leader {} near revision {killed_revision}; new leader {} after {:?}",
        cluster.member(leader).name(),
        cluster.member(new_leader).name(),
        killed_at.elapsed()
    );
    // Watchers joining after the failover, from before it.
    let now = current_revision(&probe).await;
    for (n, &first) in [new_leader, followers[0], followers[1]].iter().enumerate() {
        add_watcher(
            first,
            ranges[(n + 2) % ranges.len()],
            1 + (n as i64 * now) / 3,
        );
    }
    let after_election = acknowledged.load(Ordering::Relaxed);
    wait_for_count(
        &acknowledged,
        after_election + WRITES_PER_PHASE,
        "writes after the election",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged_writes = Vec::new();
    for writer in writers {
        acknowledged_writes.extend(writer.await.expect("a writer task"));
    }

    // The committed history, from a fresh watcher on a survivor; checked against the store.
    let last = current_revision(&probe).await;
    let history = history_through(&endpoints[followers[1]], last).await;
    let revisions: Vec<i64> = history.iter().map(|write| write.revision).collect();
    assert_eq!(
        revisions,
        (2..=last).collect::<Vec<i64>>(),
        "every revision after 1 is a write under {PREFIX}, replayed once, in order"
    );
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    for (kind, key, value, _) in history.iter().flat_map(|write| &write.events) {
        match kind {
            EventType::Put => state.insert(key.clone(), value.clone()),
            EventType::Delete => state.remove(key),
        };
    }
    let stored = expect_ok(
        retry("a linearizable read of the prefix", || {
            let mut client = probe.clone();
            async move {
                client
                    .get(PREFIX, Some(GetOptions::new().with_prefix()))
                    .await
            }
        })
        .await,
    );
    let stored: BTreeMap<String, String> = stored
        .kvs()
        .iter()
        .map(|kv| (text(kv.key()), text(kv.value())))
        .collect();
    assert_eq!(stored, state, "the store differs from its replayed history");
    // No acknowledged write is missing or different in the history.
    let by_revision: BTreeMap<i64, &Vec<Seen>> = history
        .iter()
        .map(|write| (write.revision, &write.events))
        .collect();
    for write in &acknowledged_writes {
        assert_eq!(
            by_revision.get(&write.revision),
            Some(&&write.events),
            "acknowledged write at revision {} in the history",
            write.revision
        );
    }

    let mut resumed = 0;
    for (name, range, start, received, task) in watchers {
        let expected: Vec<Seen> = history
            .iter()
            .filter(|write| write.revision >= start)
            .flat_map(|write| write.events.iter().filter(|event| range.contains(&event.1)))
            .cloned()
            .collect();
        let count = || -> usize {
            let received = received.lock().expect("not poisoned");
            received.responses.iter().map(Vec::len).sum()
        };
        let caught_up = poll("the watcher's events", || async {
            let got = count();
            if got >= expected.len() {
                Ok(())
            } else {
                Err(format!("{got} of {}", expected.len()))
            }
        })
        .await;
        // Duplicates at the end would show up as extra events by now.
        tokio::time::sleep(QUIET).await;
        task.abort();
        let received = received.lock().expect("not poisoned");
        let what = format!(
            "watcher of {range:?} from {start} on {name}, sessions (endpoint, start) {:?}",
            received.sessions
        );
        expect_ok(caught_up.map_err(|why| format!("{what}: {why}")));
        let got: Vec<Seen> = received.responses.iter().flatten().cloned().collect();
        if got != expected {
            let first_difference = got
                .iter()
                .zip(&expected)
                .position(|(got, expected)| got != expected)
                .unwrap_or(got.len().min(expected.len()));
            panic!(
                "{what}: got {} events, expected {}; first difference at {first_difference}: \
                 got {:?}, expected {:?}",
                got.len(),
                expected.len(),
                got.get(first_difference),
                expected.get(first_difference)
            );
        }
        // Atomic revisions: a revision never continues in the next response.
        for pair in received.responses.windows(2) {
            let (end, begin) = (pair[0].last().expect("events").3, pair[1][0].3);
            assert!(end < begin, "{what}: revision {end} split or repeated");
        }
        if received.sessions.len() > 1 {
            resumed += 1;
        }
    }
    assert!(
        resumed >= 1,
        "no watcher had to resume on another member: the kill tested nothing"
    );
    println!(
        "{} acknowledged writes, history through revision {last}, {resumed} watchers resumed, \
         {:?} in all",
        acknowledged_writes.len(),
        started.elapsed()
    );
}
