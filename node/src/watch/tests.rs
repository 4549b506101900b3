//! The hub's guarantees, against a real store: order, no gaps, no duplicates, atomic
//! revisions, slow watchers catching up from history, compaction, filters, progress.

use std::time::Duration;

use super::*;
use crate::proto::cairnpb::raft_request::Request as Command;
use crate::proto::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};

/// Long enough for a stream that has something to send to produce it.
const QUIET: Duration = Duration::from_millis(100);

fn open(limits: HubLimits) -> (tempfile::TempDir, Store, WatchHub) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    let hub = WatchHub::attach(store.clone(), limits);
    (dir, store, hub)
}

fn apply(store: &Store, commands: &[Command]) {
    for result in store.apply_batch(commands, b"raft").unwrap() {
        result.unwrap();
    }
}

fn put_command(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    })
}

/// Puts and returns the new revision.
fn put(store: &Store, key: &str, value: &str) -> i64 {
    apply(store, &[put_command(key, value)]);
    store.current_revision()
}

fn delete(store: &Store, key: &str) -> i64 {
    apply(
        store,
        &[Command::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        })],
    );
    store.current_revision()
}

fn compact(store: &Store, revision: i64) {
    apply(
        store,
        &[Command::Compaction(CompactionRequest {
            revision,
            physical: false,
        })],
    );
}

fn watch(key: &str, range_end: &str, start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: range_end.into(),
        start_revision,
        ..WatchCreateRequest::default()
    }
}

fn created(stream: &mut WatchStream, request: &WatchCreateRequest) -> i64 {
    match stream.create(request) {
        Created::Watching { watch_id, .. } => watch_id,
        refused => panic!("expected a watcher, got {refused:?}"),
    }
}

/// Everything the stream produces until it has been quiet for a while.
async fn drain(stream: &mut WatchStream) -> Vec<Output> {
    let mut outputs = Vec::new();
    while let Ok(output) = tokio::time::timeout(QUIET, stream.next()).await {
        outputs.push(output.unwrap());
    }
    outputs
}

/// (watch ID, type, key, mod revision) of every event, in the order sent.
type Seen = (i64, &'static str, String, i64);

fn seen(outputs: &[Output]) -> Vec<Seen> {
    let mut seen = Vec::new();
    for output in outputs {
        if let Output::Events {
            watch_id, events, ..
        } = output
        {
            for event in events {
                let kv = event.kv.as_ref().unwrap();
                let kind = if event.r#type == EventType::Delete as i32 {
                    "DELETE"
                } else {
                    "PUT"
                };
                let key = String::from_utf8(kv.key.clone()).unwrap();
                seen.push((*watch_id, kind, key, kv.mod_revision));
            }
        }
    }
    seen
}

fn revisions_of(outputs: &[Output], id: i64) -> Vec<i64> {
    seen(outputs)
        .into_iter()
        .filter(|(watch_id, ..)| *watch_id == id)
        .map(|(.., revision)| revision)
        .collect()
}

#[tokio::test]
async fn synced_watchers_get_their_events_in_order_with_whole_revisions() {
    let (_dir, store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    let single = created(&mut stream, &watch("a", "", 0));
    let prefix = created(&mut stream, &watch("a", "b", 0));
    let from_b = created(&mut stream, &watch("b", "\0", 0));
    let all = created(&mut stream, &watch("", "\0", 0));

    let r1 = put(&store, "a", "1");
    let r2 = put(&store, "ab", "2");
    let r3 = put(&store, "b", "3");
    let txn = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"t".to_vec(),
            ..PutRequest::default()
        })),
    };
    apply(
        &store,
        &[Command::Txn(TxnRequest {
            success: vec![txn("a"), txn("c")],
            ..TxnRequest::default()
        })],
    );
    let r4 = store.current_revision();
    let r5 = delete(&store, "a");

    let outputs = drain(&mut stream).await;
    assert_eq!(revisions_of(&outputs, single), [r1, r4, r5]);
    assert_eq!(revisions_of(&outputs, prefix), [r1, r2, r4, r5]);
    assert_eq!(revisions_of(&outputs, from_b), [r3, r4]);
    assert_eq!(revisions_of(&outputs, all), [r1, r2, r3, r4, r4, r5]);
    // The txn's two changes travel together, with the header at its revision.
    let txn_output = outputs
        .iter()
        .find(|output| {
            matches!(output, Output::Events { watch_id, events, .. }
                if *watch_id == all && events.len() == 2)
        })
        .expect("one response with both changes of the txn");
    assert!(matches!(txn_output, Output::Events { revision, .. } if *revision == r4));
    let last = seen(&outputs).into_iter().last().unwrap();
    assert_eq!(last, (all, "DELETE", "a".to_owned(), r5));
}

#[tokio::test]
async fn one_batch_of_many_commands_reaches_a_watcher_as_one_output() {
    let (_dir, store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    let id = created(&mut stream, &watch("k", "", 0));
    apply(
        &store,
        &[
            put_command("k", "1"),
            put_command("other", "x"),
            put_command("k", "2"),
        ],
    );
    let outputs = drain(&mut stream).await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(revisions_of(&outputs, id), [2, 4]);
}

#[tokio::test]
async fn replay_from_an_old_revision_joins_the_live_stream_without_gap_or_duplicate() {
    let limits = HubLimits {
        page_revisions: 4,
        ..HubLimits::default()
    };
    let (_dir, store, hub) = open(limits);
    for n in 0..30 {
        put(&store, &format!("k{}", n % 3), "v");
    }
    let mut stream = hub.stream();
    let id = created(&mut stream, &watch("k", "l", 5));
    // Writes keep coming while the watcher pages through history.
    let mut outputs = Vec::new();
    for n in 0..20 {
        outputs.push(stream.next().await.unwrap());
        put(&store, &format!("k{n}"), "live");
    }
    outputs.extend(drain(&mut stream).await);
    let expected: Vec<i64> = (5..=store.current_revision()).collect();
    assert_eq!(revisions_of(&outputs, id), expected);
    assert!(
        hub.shared.registry().ranges.len() == 1,
        "back in the synced set"
    );
}

#[tokio::test]
async fn a_slow_watcher_falls_behind_and_catches_up_while_others_stay_live() {
    let limits = HubLimits {
        queued_per_watcher: 2,
        page_revisions: 7,
        ..HubLimits::default()
    };
    let (_dir, store, hub) = open(limits);
    let mut slow = hub.stream();
    let mut fast = hub.stream();
    let slow_id = created(&mut slow, &watch("k", "", 0));
    let fast_id = created(&mut fast, &watch("k", "", 0));

    let mut fast_outputs = Vec::new();
    let mut written = Vec::new();
    for n in 0..40 {
        // The store never waits for the slow stream, which reads nothing yet.
        written.push(put(&store, "k", &n.to_string()));
        fast_outputs.push(fast.next().await.unwrap());
    }
    assert_eq!(revisions_of(&fast_outputs, fast_id), written);
    assert!(slow.outbox.lock().deliveries.len() <= 2, "bounded queue");
    assert!(!slow.watchers[&slow_id].is(SYNCED), "fell behind");

    let outputs = drain(&mut slow).await;
    assert_eq!(revisions_of(&outputs, slow_id), written);
    assert!(slow.watchers[&slow_id].is(SYNCED), "caught up and rejoined");
    let live = put(&store, "k", "after");
    assert_eq!(revisions_of(&drain(&mut slow).await, slow_id), [live]);
}

#[tokio::test]
async fn a_compacted_start_revision_cancels_the_watcher() {
    let (_dir, store, hub) = open(HubLimits::default());
    for n in 0..6 {
        put(&store, "k", &n.to_string());
    }
    compact(&store, 4);
    let mut stream = hub.stream();
    let gone = created(&mut stream, &watch("k", "", 4));
    let kept = created(&mut stream, &watch("k", "", 5));
    let outputs = drain(&mut stream).await;
    assert!(outputs.contains(&Output::Compacted {
        watch_id: gone,
        compact_revision: 4
    }));
    assert_eq!(revisions_of(&outputs, kept), [5, 6, 7]);
    assert!(revisions_of(&outputs, gone).is_empty());
    assert_eq!(stream.cancel(gone), None, "a compacted watcher is gone");
}

#[tokio::test]
async fn a_watcher_behind_a_compaction_is_canceled() {
    let limits = HubLimits {
        queued_per_watcher: 1,
        ..HubLimits::default()
    };
    let (_dir, store, hub) = open(limits);
    let mut stream = hub.stream();
    let id = created(&mut stream, &watch("k", "", 0));
    for n in 0..5 {
        put(&store, "k", &n.to_string());
    }
    compact(&store, store.current_revision());
    let outputs = drain(&mut stream).await;
    assert_eq!(
        revisions_of(&outputs, id),
        [2],
        "the one delivery it had queued"
    );
    assert_eq!(
        outputs.last(),
        Some(&Output::Compacted {
            watch_id: id,
            compact_revision: 6
        })
    );
}

#[tokio::test]
async fn filters_drop_puts_or_deletes_live_and_in_history() {
    let (_dir, store, hub) = open(HubLimits::default());
    let r1 = put(&store, "k", "1");
    let r2 = delete(&store, "k");
    let mut stream = hub.stream();
    let no_put = WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        ..watch("k", "", 1)
    };
    let no_delete = WatchCreateRequest {
        filters: vec![FilterType::Nodelete as i32],
        ..watch("k", "", 1)
    };
    let no_put = created(&mut stream, &no_put);
    let no_delete = created(&mut stream, &no_delete);
    let mut outputs = drain(&mut stream).await;
    let r3 = put(&store, "k", "3");
    let r4 = delete(&store, "k");
    outputs.extend(drain(&mut stream).await);
    assert_eq!(revisions_of(&outputs, no_put), [r2, r4]);
    assert_eq!(revisions_of(&outputs, no_delete), [r1, r3]);
    // Nothing at all is sent for a batch that the filter empties.
    assert_eq!(
        outputs.len(),
        4,
        "two history pages, then one output per live batch"
    );
}

#[tokio::test]
async fn prev_kv_carries_the_version_before_each_event() {
    let (_dir, store, hub) = open(HubLimits::default());
    put(&store, "k", "1");
    put(&store, "k", "2");
    let mut stream = hub.stream();
    let request = WatchCreateRequest {
        prev_kv: true,
        ..watch("k", "", 3)
    };
    created(&mut stream, &request);
    let mut outputs = drain(&mut stream).await;
    delete(&store, "k");
    put(&store, "k", "4");
    outputs.extend(drain(&mut stream).await);
    let prev: Vec<Option<String>> = outputs
        .iter()
        .flat_map(|output| match output {
            Output::Events { events, .. } => events.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .map(|event| event.prev_kv.map(|kv| String::from_utf8(kv.value).unwrap()))
        .collect();
    // Replayed put of "2", live delete, live re-creation (which has no previous version).
    assert_eq!(prev, [Some("1".to_owned()), Some("2".to_owned()), None]);
}

#[tokio::test]
async fn watch_ids_follow_etcd() {
    let (_dir, _store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    let with_id = |watch_id| WatchCreateRequest {
        watch_id,
        ..watch("k", "", 0)
    };
    // etcd's own test: a chosen ID, its duplicate, then automatic IDs that skip it.
    assert!(matches!(
        stream.create(&with_id(1)),
        Created::Watching { watch_id: 1, .. }
    ));
    assert_eq!(
        stream.create(&with_id(1)),
        Created::Refused {
            reason: "mvcc: duplicate watch ID provided on the WatchStream",
            revision: 1
        }
    );
    assert!(matches!(
        stream.create(&with_id(0)),
        Created::Watching { watch_id: 0, .. }
    ));
    assert!(matches!(
        stream.create(&with_id(0)),
        Created::Watching { watch_id: 2, .. }
    ));
    // IDs are per stream.
    assert!(matches!(
        hub.stream().create(&with_id(0)),
        Created::Watching { watch_id: 0, .. }
    ));
}

#[tokio::test]
async fn invalid_watches_are_refused_as_etcd_does() {
    let (_dir, _store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    assert_eq!(
        stream.create(&watch("b", "a", 0)),
        Created::Refused {
            reason: "mvcc: watcher range is empty",
            revision: 1
        }
    );
    assert_eq!(
        stream.create(&watch("a", "", -1)),
        Created::Refused {
            reason: "etcdserver: mvcc: required revision has been compacted",
            revision: 1
        }
    );
    assert!(stream.watchers.is_empty());
}

#[tokio::test]
async fn a_future_start_revision_waits_for_it() {
    let (_dir, store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    let id = created(&mut stream, &watch("k", "", 4));
    for n in 0..5 {
        put(&store, "k", &n.to_string());
    }
    assert_eq!(revisions_of(&drain(&mut stream).await, id), [4, 5, 6]);
}

#[tokio::test]
async fn a_canceled_watcher_gets_nothing_more() {
    let (_dir, store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    let id = created(&mut stream, &watch("k", "", 0));
    put(&store, "k", "queued before the cancel");
    assert_eq!(stream.cancel(id), Some(2));
    put(&store, "k", "after");
    assert_eq!(drain(&mut stream).await, []);
    assert_eq!(stream.cancel(id), None);
    assert!(hub.shared.registry().keys.is_empty());
}

#[tokio::test]
async fn a_progress_request_is_answered_once_every_watcher_has_caught_up() {
    let limits = HubLimits {
        page_revisions: 2,
        ..HubLimits::default()
    };
    let (_dir, store, hub) = open(limits);
    let mut stream = hub.stream();
    // No watchers: answered at once.
    stream.request_progress();
    assert_eq!(
        drain(&mut stream).await,
        [Output::Progress {
            watch_id: -1,
            revision: 1
        }]
    );
    for n in 0..6 {
        put(&store, "k", &n.to_string());
    }
    let id = created(&mut stream, &watch("k", "", 2));
    stream.request_progress();
    let outputs = drain(&mut stream).await;
    assert_eq!(revisions_of(&outputs, id), [2, 3, 4, 5, 6, 7]);
    assert_eq!(
        outputs.last(),
        Some(&Output::Progress {
            watch_id: -1,
            revision: 7
        }),
        "after every event it covers"
    );
    assert_eq!(outputs.len(), 4, "three pages, then the progress");
}

#[tokio::test]
async fn a_progress_request_waits_for_a_future_start_revision() {
    let (_dir, store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    created(&mut stream, &watch("k", "", 3));
    stream.request_progress();
    assert_eq!(drain(&mut stream).await, []);
    put(&store, "elsewhere", "2");
    assert_eq!(drain(&mut stream).await, []);
    put(&store, "elsewhere", "3");
    assert_eq!(
        drain(&mut stream).await,
        [Output::Progress {
            watch_id: -1,
            revision: 3
        }]
    );
}

#[tokio::test]
async fn periodic_progress_goes_to_idle_synced_watchers_that_asked() {
    let (_dir, store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    let asked = created(
        &mut stream,
        &WatchCreateRequest {
            progress_notify: true,
            ..watch("k", "", 0)
        },
    );
    created(&mut stream, &watch("k", "", 0));
    stream.progress_tick();
    assert_eq!(
        drain(&mut stream).await,
        [Output::Progress {
            watch_id: asked,
            revision: 1
        }]
    );
    put(&store, "k", "v");
    assert_eq!(drain(&mut stream).await.len(), 2);
    // Events went out since the last tick: etcd skips this one.
    stream.progress_tick();
    assert_eq!(drain(&mut stream).await, []);
    stream.progress_tick();
    assert_eq!(
        drain(&mut stream).await,
        [Output::Progress {
            watch_id: asked,
            revision: 2
        }]
    );
}

#[tokio::test]
async fn a_snapshot_install_replays_what_the_watcher_missed() {
    let (_dir, store, hub) = open(HubLimits::default());
    let (_leader_dir, leader, _leader_hub) = open(HubLimits::default());
    for replica in [&store, &leader] {
        put(replica, "k", "1");
    }
    let mut stream = hub.stream();
    let id = created(&mut stream, &watch("k", "", 0));
    put(&leader, "k", "2");
    put(&leader, "other", "x");
    delete(&leader, "k");
    store.install_snapshot(&leader.snapshot().unwrap()).unwrap();
    let outputs = drain(&mut stream).await;
    assert_eq!(revisions_of(&outputs, id), [3, 5]);
    assert_eq!(hub.revision(), 5);
    put(&store, "k", "live again");
    assert_eq!(revisions_of(&drain(&mut stream).await, id), [6]);
}

#[tokio::test]
async fn a_dropped_stream_leaves_nothing_in_the_registry() {
    let (_dir, store, hub) = open(HubLimits::default());
    let mut stream = hub.stream();
    let mut other = hub.stream();
    for n in 0..100 {
        created(&mut stream, &watch(&format!("k{}", n % 10), "", 0));
        created(&mut stream, &watch("a", "b", 0));
    }
    let kept = created(&mut other, &watch("k1", "", 0));
    drop(stream);
    {
        let registry = hub.shared.registry();
        assert_eq!(registry.ranges.len(), 0);
        assert_eq!(registry.keys.len(), 1);
    }
    let revision = put(&store, "k1", "v");
    assert_eq!(revisions_of(&drain(&mut other).await, kept), [revision]);
}

#[test]
fn an_idle_watcher_is_small() {
    // What a watcher costs besides its key: the struct and its reference counts. The
    // registry and the stream add a pointer-sized slot each (plus map overhead).
    assert!(std::mem::size_of::<Watcher>() + 16 <= 128);
}

/// A tiny deterministic generator, so that a failing run can be replayed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, bound: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

fn random_command(dice: &mut Dice) -> Command {
    let key = |dice: &mut Dice| format!("k{}", dice.below(10));
    match dice.below(4) {
        0 => Command::DeleteRange(DeleteRangeRequest {
            key: key(dice).into(),
            ..DeleteRangeRequest::default()
        }),
        1 => Command::Txn(TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b"k0".to_vec(),
                        value: dice.below(1000).to_string().into(),
                        ..PutRequest::default()
                    })),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: b"k5".to_vec(),
                            range_end: b"k8".to_vec(),
                            ..DeleteRangeRequest::default()
                        },
                    )),
                },
            ],
            ..TxnRequest::default()
        }),
        _ => put_command(&key(dice), &dice.below(1000).to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_slow_streams_see_exactly_the_history() {
    let limits = HubLimits {
        queued_per_watcher: 2,
        queued_bytes_per_watcher: 300,
        page_revisions: 5,
        page_bytes: 200,
    };
    let (_dir, store, hub) = open(limits);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut dice = Dice(7);
            for _ in 0..400 {
                let commands: Vec<Command> = (0..=dice.below(3))
                    .map(|_| random_command(&mut dice))
                    .collect();
                // Deletes of missing keys fail; the batch goes on.
                store.apply_batch(&commands, b"raft").unwrap();
                if dice.below(8) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };

    let ranges = [("k3", ""), ("k2", "k6"), ("", "\0"), ("k5", "\0")];
    let mut readers = Vec::new();
    for reader in 0..4u64 {
        let hub = hub.clone();
        let store = store.clone();
        readers.push(tokio::spawn(async move {
            let mut dice = Dice(reader + 100);
            let mut stream = hub.stream();
            let mut watchers = Vec::new();
            let mut outputs = Vec::new();
            for round in 0..60 {
                if round % 15 == 0 {
                    let (key, end) = ranges[dice.below(4) as usize];
                    let start = 1 + dice.below(store.current_revision() as u64) as i64;
                    let id = created(&mut stream, &watch(key, end, start));
                    watchers.push((id, key, end, start));
                }
                if let Ok(output) = tokio::time::timeout(QUIET, stream.next()).await {
                    outputs.push(output.unwrap());
                }
                // A slow reader: its watchers' queues fill and they fall behind.
                if dice.below(3) == 0 {
                    tokio::time::sleep(Duration::from_millis(dice.below(5))).await;
                }
            }
            (stream, watchers, outputs)
        }));
    }
    writer.join().unwrap();
    let last = store.current_revision();
    for reader in readers {
        let (mut stream, watchers, mut outputs) = reader.await.unwrap();
        outputs.extend(drain(&mut stream).await);
        for (id, key, end, start) in watchers {
            let history = store
                .events(start, last, key.as_bytes(), end.as_bytes(), usize::MAX)
                .unwrap()
                .events;
            let mut got = Vec::new();
            for output in &outputs {
                if let Output::Events {
                    watch_id, events, ..
                } = output
                {
                    if *watch_id == id {
                        got.push(events.clone());
                    }
                }
            }
            // Atomic revisions: no revision spans two outputs.
            let mut ends = Vec::new();
            for events in &got {
                let first = events.first().unwrap().kv.as_ref().unwrap().mod_revision;
                let last = events.last().unwrap().kv.as_ref().unwrap().mod_revision;
                ends.push((first, last));
            }
            for pair in ends.windows(2) {
                assert!(
                    pair[0].1 < pair[1].0,
                    "watcher {id}: outputs overlap: {pair:?}"
                );
            }
            let got: Vec<Event> = got.into_iter().flatten().collect();
            assert_eq!(got.len(), history.len(), "watcher {id} from {start}");
            assert!(got == history, "watcher {id} from {start}: not the history");
        }
    }
}
