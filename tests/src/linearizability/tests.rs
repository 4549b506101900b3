//! The checker's own tests: hand-written histories with a known verdict; histories built to
//! make a search without its pruning explode; random histories from a sequential model
//! (which must pass) and one-answer mutations of them (which must fail); small random
//! histories with arbitrary answers, against a brute-force search; the recorder under
//! tokio; and the time a fault-test-sized history takes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;

/// A completed operation.
fn done(client: ClientId, invoked: u64, completed: u64, op: Op, output: Output) -> Operation {
    Operation {
        client,
        op,
        invoked,
        completed: Some(completed),
        outcome: Outcome::Ok(output),
    }
}

/// An operation whose client gave up at `gave_up`, not knowing whether it took effect.
fn unsure(client: ClientId, invoked: u64, gave_up: u64, op: Op) -> Operation {
    Operation {
        client,
        op,
        invoked,
        completed: Some(gave_up),
        outcome: Outcome::Indeterminate,
    }
}

fn history(ops: Vec<Operation>) -> History {
    let mut history = History::new();
    for op in ops {
        history.push(op);
    }
    history
}

fn saw(value: &str) -> Output {
    Output::Read(Some(value.to_owned()))
}

fn assert_linearizable(history: &History) {
    let result = check(history);
    assert_eq!(result, CheckResult::Linearizable, "{result}");
}

/// Asserts a violation on `key` and returns its explanation.
fn assert_violation(history: &History, key: &str) -> String {
    match check(history) {
        CheckResult::Violation {
            key: found,
            explanation,
        } if found == key => explanation,
        other => panic!("expected a violation on {key:?}, got: {other}"),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::read("k"), Output::Read(None)),
        done(1, 2, 3, Op::write("k", "a"), Output::Ack),
        done(2, 4, 5, Op::read("k"), saw("a")),
        done(1, 6, 7, Op::cas("k", Some("a"), "b"), Output::Cas(true)),
        done(2, 8, 9, Op::cas("k", Some("a"), "c"), Output::Cas(false)),
        done(1, 10, 11, Op::read("k"), saw("b")),
        done(2, 12, 13, Op::delete("k"), Output::Ack),
        done(1, 14, 15, Op::read("k"), Output::Read(None)),
        done(2, 16, 17, Op::cas("k", None, "d"), Output::Cas(true)),
        done(1, 18, 19, Op::cas("k", None, "e"), Output::Cas(false)),
        done(2, 20, 21, Op::read("k"), saw("d")),
    ]));
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&History::new());
}

#[test]
fn reads_after_concurrent_writes_may_see_either() {
    for last in ["a", "b"] {
        assert_linearizable(&history(vec![
            done(1, 0, 10, Op::write("k", "a"), Output::Ack),
            done(2, 0, 10, Op::write("k", "b"), Output::Ack),
            done(3, 11, 12, Op::read("k"), saw(last)),
            done(1, 13, 14, Op::read("k"), saw(last)),
        ]));
    }
}

#[test]
fn reads_during_a_write_see_old_then_new() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        done(1, 2, 20, Op::write("k", "b"), Output::Ack),
        done(2, 3, 4, Op::read("k"), saw("a")),
        done(2, 5, 6, Op::read("k"), saw("b")),
        done(3, 7, 8, Op::read("k"), saw("b")),
    ]));
}

#[test]
fn overlapping_reads_may_see_new_and_old() {
    // The read that saw "a" overlaps the one that saw "b", so it may take effect first.
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        done(1, 2, 10, Op::write("k", "b"), Output::Ack),
        done(2, 3, 6, Op::read("k"), saw("b")),
        done(3, 4, 7, Op::read("k"), saw("a")),
    ]));
}

#[test]
fn operations_touching_at_an_instant_count_as_concurrent() {
    assert_linearizable(&history(vec![
        done(1, 0, 5, Op::read("k"), saw("a")),
        done(2, 5, 6, Op::write("k", "a"), Output::Ack),
    ]));
}

#[test]
fn indeterminate_write_that_took_effect() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        unsure(2, 2, 5, Op::write("k", "b")),
        done(3, 10, 11, Op::read("k"), saw("b")),
    ]));
}

#[test]
fn indeterminate_write_that_did_not_take_effect() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        unsure(2, 2, 5, Op::write("k", "b")),
        done(3, 10, 11, Op::read("k"), saw("a")),
        done(3, 12, 13, Op::read("k"), saw("a")),
    ]));
}

#[test]
fn indeterminate_write_may_take_effect_after_the_client_gave_up() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        unsure(2, 2, 3, Op::write("k", "b")),
        done(3, 10, 11, Op::read("k"), saw("a")),
        done(3, 20, 21, Op::read("k"), saw("b")),
    ]));
}

#[test]
fn indeterminate_cas_that_took_effect() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        unsure(2, 2, 3, Op::cas("k", Some("a"), "b")),
        done(3, 10, 11, Op::read("k"), saw("b")),
    ]));
}

#[test]
fn cas_race_with_exactly_one_winner() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        done(2, 2, 10, Op::cas("k", Some("a"), "b"), Output::Cas(true)),
        done(3, 3, 9, Op::cas("k", Some("a"), "c"), Output::Cas(false)),
        done(1, 11, 12, Op::read("k"), saw("b")),
    ]));
    // The same with create-if-absent.
    assert_linearizable(&history(vec![
        done(1, 0, 10, Op::cas("k", None, "x"), Output::Cas(false)),
        done(2, 1, 9, Op::cas("k", None, "y"), Output::Cas(true)),
        done(1, 11, 12, Op::read("k"), saw("y")),
    ]));
}

#[test]
fn failed_operations_are_left_out() {
    let failed_write = Operation {
        client: 2,
        op: Op::write("k", "x"),
        invoked: 2,
        completed: Some(3),
        outcome: Outcome::Failed,
    };
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        failed_write.clone(),
        done(1, 4, 5, Op::read("k"), saw("a")),
    ]));
    // A failed write did not happen, so no read may see it.
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            failed_write,
            done(1, 4, 5, Op::read("k"), saw("x")),
        ]),
        "k",
    );
}

#[test]
fn stale_read_is_a_violation() {
    let explanation = assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(2, 2, 3, Op::write("k", "b"), Output::Ack),
            done(3, 4, 5, Op::read("k"), saw("a")),
        ]),
        "k",
    );
    // The explanation names the read that cannot be placed, and what it could have seen.
    assert!(
        explanation.contains(
            "ends at the completion (0.000005ms) of\n    #2 client 3: read(\"k\") -> \"a\""
        ),
        "{explanation}"
    );
    assert!(
        explanation.contains("could only hold \"b\"."),
        "{explanation}"
    );
    assert!(
        explanation.contains("#1 client 2: write(\"k\", \"b\") -> ok"),
        "{explanation}"
    );
}

/// The first order tried (write a, write b) gets stuck at the read of "a"; only the other
/// one gets as far as the read of "ghost", which is where the history really fails.
#[test]
fn explanation_names_the_furthest_point_any_order_reaches() {
    let explanation = assert_violation(
        &history(vec![
            done(1, 0, 10, Op::write("k", "a"), Output::Ack),
            done(2, 0, 10, Op::write("k", "b"), Output::Ack),
            done(3, 11, 12, Op::read("k"), saw("a")),
            done(3, 13, 14, Op::read("k"), saw("ghost")),
        ]),
        "k",
    );
    assert!(
        explanation.contains("of\n    #3 client 3: read(\"k\") -> \"ghost\""),
        "{explanation}"
    );
    assert!(
        explanation.contains("could only hold \"a\"."),
        "{explanation}"
    );
}

#[test]
fn lost_write_is_a_violation() {
    // "b" was acknowledged, yet the cas still found "a" and a later read sees the cas.
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(2, 2, 3, Op::write("k", "b"), Output::Ack),
            done(3, 4, 5, Op::cas("k", Some("a"), "c"), Output::Cas(true)),
            done(1, 6, 7, Op::read("k"), saw("c")),
        ]),
        "k",
    );
}

#[test]
fn two_cas_from_the_same_value_cannot_both_succeed() {
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(2, 2, 5, Op::cas("k", Some("a"), "b"), Output::Cas(true)),
            done(3, 3, 6, Op::cas("k", Some("a"), "c"), Output::Cas(true)),
        ]),
        "k",
    );
    assert_violation(
        &history(vec![
            done(1, 0, 5, Op::cas("k", None, "x"), Output::Cas(true)),
            done(2, 1, 6, Op::cas("k", None, "y"), Output::Cas(true)),
        ]),
        "k",
    );
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(2, 2, 3, Op::read("k"), saw("ghost")),
        ]),
        "k",
    );
}

#[test]
fn read_of_absent_after_a_completed_write_is_a_violation() {
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(2, 2, 3, Op::read("k"), Output::Read(None)),
        ]),
        "k",
    );
}

#[test]
fn read_of_a_deleted_value_is_a_violation() {
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(1, 2, 3, Op::delete("k"), Output::Ack),
            done(2, 4, 5, Op::read("k"), saw("a")),
        ]),
        "k",
    );
}

#[test]
fn read_going_back_in_time_is_a_violation() {
    // Unlike `overlapping_reads_may_see_new_and_old`, the read of "a" starts after the
    // read of "b" ended.
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(1, 2, 10, Op::write("k", "b"), Output::Ack),
            done(2, 3, 4, Op::read("k"), saw("b")),
            done(3, 5, 6, Op::read("k"), saw("a")),
        ]),
        "k",
    );
}

#[test]
fn values_do_not_leak_between_keys() {
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("x", "a"), Output::Ack),
            done(2, 2, 3, Op::read("y"), saw("a")),
        ]),
        "y",
    );
}

#[test]
fn violation_is_reported_on_its_key_among_good_ones() {
    let explanation = assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("a", "1"), Output::Ack),
            done(1, 2, 3, Op::write("b", "old"), Output::Ack),
            done(2, 4, 5, Op::write("b", "new"), Output::Ack),
            done(3, 6, 7, Op::read("a"), saw("1")),
            done(3, 8, 9, Op::read("b"), saw("old")),
            done(2, 10, 11, Op::write("c", "1"), Output::Ack),
        ]),
        "b",
    );
    assert!(
        explanation.contains("#4 client 3: read(\"b\")"),
        "{explanation}"
    );
}

#[test]
fn unrelated_indeterminate_write_does_not_excuse_a_stale_read() {
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            unsure(4, 1, 2, Op::write("k", "z")),
            done(2, 2, 3, Op::write("k", "b"), Output::Ack),
            done(3, 4, 5, Op::read("k"), saw("a")),
        ]),
        "k",
    );
}

#[test]
fn indeterminate_write_explains_a_read_only_if_invoked_before_the_read_ended() {
    let with_write_invoked_at = |invoked| {
        history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(2, 2, 3, Op::read("k"), saw("b")),
            unsure(3, invoked, invoked + 1, Op::write("k", "b")),
        ])
    };
    assert_linearizable(&with_write_invoked_at(3));
    assert_violation(&with_write_invoked_at(4), "k");
}

#[test]
fn indeterminate_write_can_explain_two_successful_cas_only_when_it_fits_between() {
    let with_write_invoked_at = |invoked| {
        history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            done(2, 2, 5, Op::cas("k", Some("a"), "b"), Output::Cas(true)),
            done(3, 3, 6, Op::cas("k", Some("a"), "c"), Output::Cas(true)),
            unsure(4, invoked, invoked + 1, Op::write("k", "a")),
        ])
    };
    // Written again between the two: cas a->b, write a, cas a->c.
    assert_linearizable(&with_write_invoked_at(4));
    assert_violation(&with_write_invoked_at(7), "k");
}

#[test]
fn indeterminate_cas_explains_only_what_its_comparison_allows() {
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            unsure(2, 2, 3, Op::cas("k", Some("x"), "b")),
            done(3, 10, 11, Op::read("k"), saw("b")),
        ]),
        "k",
    );
}

#[test]
fn indeterminate_delete_cannot_bring_a_value_back() {
    assert_linearizable(&history(vec![
        done(1, 0, 1, Op::write("k", "a"), Output::Ack),
        unsure(2, 2, 3, Op::delete("k")),
        done(3, 4, 5, Op::read("k"), saw("a")),
        done(3, 6, 7, Op::read("k"), Output::Read(None)),
    ]));
    assert_violation(
        &history(vec![
            done(1, 0, 1, Op::write("k", "a"), Output::Ack),
            unsure(2, 2, 3, Op::delete("k")),
            done(3, 4, 5, Op::read("k"), Output::Read(None)),
            done(3, 6, 7, Op::read("k"), saw("a")),
        ]),
        "k",
    );
}

/// Many open indeterminate operations, none of them seen: lost writes, and compare-and-set
/// whose comparison never holds. Without the pruning of useless placements, refuting the
/// stale read at the end would take some 2^60 configurations.
#[test]
fn many_indeterminate_operations_do_not_blow_up_the_search() {
    let mut ops = vec![done(1, 0, 1, Op::write("k", "a"), Output::Ack)];
    for i in 0..30 {
        let invoked = 2 + u64::from(i);
        ops.push(unsure(
            100 + i,
            invoked,
            invoked + 1,
            Op::write("k", format!("lost{i}")),
        ));
        let cas = Op::cas("k", Some("never"), format!("new{i}"));
        ops.push(unsure(200 + i, invoked, invoked + 1, cas));
    }
    ops.push(done(2, 50, 51, Op::read("k"), saw("a")));
    ops.push(done(2, 52, 53, Op::write("k", "b"), Output::Ack));
    let good = history(ops.clone());
    ops.push(done(3, 54, 55, Op::read("k"), saw("a")));
    let bad = history(ops);
    let budget = Budget {
        max_steps: 1_000_000,
        max_time: Duration::from_secs(60),
    };
    assert_eq!(check_with_budget(&good, budget), CheckResult::Linearizable);
    assert!(
        matches!(
            check_with_budget(&bad, budget),
            CheckResult::Violation { .. }
        ),
        "{}",
        check_with_budget(&bad, budget)
    );
}

/// Every failing compare-and-set below needs something to have taken the value it
/// expects away: one of the open deletes, which are interchangeable. Trying each of them
/// at each point, or keeping every subset of them used up, would take some 30! or 2^30
/// configurations to refute the stale read at the end.
#[test]
fn interchangeable_indeterminate_deletes_do_not_blow_up_the_search() {
    let mut ops = vec![done(1, 0, 1, Op::write("k", "a"), Output::Ack)];
    for i in 0..30 {
        ops.push(unsure(
            100 + i,
            2 + u64::from(i),
            3 + u64::from(i),
            Op::delete("k"),
        ));
    }
    let mut now = 100;
    for i in 0..30 {
        let value = format!("x{i}");
        ops.push(done(1, now, now + 1, Op::write("k", &value), Output::Ack));
        let cas = Op::cas("k", Some(&value), format!("y{i}"));
        ops.push(done(2, now + 2, now + 3, cas, Output::Cas(false)));
        now += 4;
    }
    let good = history(ops.clone());
    ops.push(done(3, now, now + 1, Op::read("k"), saw("x0")));
    let bad = history(ops);
    let budget = Budget {
        max_steps: 1_000_000,
        max_time: Duration::from_secs(60),
    };
    assert_eq!(check_with_budget(&good, budget), CheckResult::Linearizable);
    assert!(
        matches!(
            check_with_budget(&bad, budget),
            CheckResult::Violation { .. }
        ),
        "{}",
        check_with_budget(&bad, budget)
    );
}

/// Each failing compare-and-set below is explained by the write that overlaps it, or by
/// any of the open writes, used up to no lasting effect. Keeping every subset of open
/// writes used up apart would take some 2^30 configurations to refute the stale read at
/// the end.
#[test]
fn indeterminate_writes_used_up_to_no_effect_do_not_blow_up_the_search() {
    let mut ops = vec![done(1, 0, 1, Op::write("k", "a"), Output::Ack)];
    for i in 0..30 {
        let write = Op::write("k", format!("z{i}"));
        ops.push(unsure(100 + i, 2 + u64::from(i), 3 + u64::from(i), write));
    }
    let mut now = 100;
    for i in 0..30 {
        let value = format!("x{i}");
        ops.push(done(1, now, now + 1, Op::write("k", &value), Output::Ack));
        let cas = Op::cas("k", Some(&value), format!("y{i}"));
        ops.push(done(2, now + 2, now + 5, cas, Output::Cas(false)));
        let write = Op::write("k", format!("w{i}"));
        ops.push(done(3, now + 3, now + 4, write, Output::Ack));
        now += 6;
    }
    let good = history(ops.clone());
    ops.push(done(3, now, now + 1, Op::read("k"), saw("x0")));
    let bad = history(ops);
    let budget = Budget {
        max_steps: 1_000_000,
        max_time: Duration::from_secs(60),
    };
    assert_eq!(check_with_budget(&good, budget), CheckResult::Linearizable);
    assert!(
        matches!(
            check_with_budget(&bad, budget),
            CheckResult::Violation { .. }
        ),
        "{}",
        check_with_budget(&bad, budget)
    );
}

#[test]
fn exhausted_budget_is_unknown_not_a_violation() {
    let mut rng = Rng::new(7);
    let shape = Shape {
        clients: 4,
        ops_per_client: 50,
        keys: 2,
        indeterminate_percent: 5,
    };
    let history = generate(&mut rng, &shape);
    let tiny = Budget {
        max_steps: 10,
        max_time: Duration::from_secs(60),
    };
    assert_eq!(
        check_with_budget(&history, tiny),
        CheckResult::Unknown {
            key: "k0".to_owned()
        }
    );
    assert_linearizable(&history);
}

#[test]
#[should_panic(expected = "cannot answer")]
fn history_rejects_an_answer_of_the_wrong_kind() {
    history(vec![done(1, 0, 1, Op::read("k"), Output::Cas(true))]);
}

#[test]
fn recorder_keeps_unfinished_operations_indeterminate() {
    let recorder = Recorder::new();
    let finished = recorder.invoke(1, Op::write("k", "a"));
    let abandoned = recorder.invoke(2, Op::write("k", "b"));
    let rejected = recorder.invoke(3, Op::write("", "c"));
    let in_flight = recorder.invoke(4, Op::read("k"));
    finished.complete(Outcome::Ok(Output::Ack));
    drop(abandoned);
    rejected.complete(Outcome::Failed);
    let ops = recorder.history().ops().to_vec();
    assert_eq!(ops.len(), 4);
    assert_eq!(ops[0].outcome, Outcome::Ok(Output::Ack));
    assert!(ops[0].completed.is_some_and(|at| at >= ops[0].invoked));
    for unfinished in [&ops[1], &ops[3]] {
        assert_eq!(unfinished.outcome, Outcome::Indeterminate);
        assert_eq!(unfinished.completed, None);
    }
    assert_eq!(ops[2].outcome, Outcome::Failed);
    in_flight.complete(Outcome::Ok(saw("a")));
    assert_eq!(recorder.history().ops()[3].outcome, Outcome::Ok(saw("a")));
    assert_linearizable(&recorder.history());
}

/// Tokio tasks share one recorder and run against a map behind a mutex, which is
/// linearizable by construction: the recorded history must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_history_of_concurrent_tasks_is_linearizable() {
    const CLIENTS: u32 = 4;
    const OPS: usize = 100;
    let recorder = Recorder::new();
    let store = std::sync::Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let recorder = recorder.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(u64::from(client) + 1);
            for i in 0..OPS {
                let key = format!("k{}", rng.below(2));
                let value = format!("c{client}-{i}");
                let op = match rng.below(4) {
                    0 => Op::read(&key),
                    1 => Op::write(&key, &value),
                    2 => Op::cas(
                        &key,
                        Some(format!("c{}-{i}", rng.below(CLIENTS.into())).as_str()),
                        &value,
                    ),
                    _ => Op::delete(&key),
                };
                let handle = recorder.invoke(client, op.clone());
                tokio::task::yield_now().await;
                let output = apply(&mut store.lock().expect("store lock"), &op);
                tokio::task::yield_now().await;
                // Now and then, the client loses the answer.
                if rng.percent(5) {
                    handle.complete(Outcome::Indeterminate);
                } else {
                    handle.complete(Outcome::Ok(output));
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let history = recorder.history();
    assert_eq!(history.ops().len(), CLIENTS as usize * OPS);
    assert!(history.ops().iter().all(|op| op.completed.is_some()));
    assert_linearizable(&history);
}

/// The model itself, sequentially, over a map.
fn apply(store: &mut HashMap<String, String>, op: &Op) -> Output {
    match op {
        Op::Read { key } => Output::Read(store.get(key).cloned()),
        Op::Write { key, value } => {
            store.insert(key.clone(), value.clone());
            Output::Ack
        }
        Op::Cas { key, expected, new } => {
            let holds = store.get(key) == expected.as_ref();
            if holds {
                store.insert(key.clone(), new.clone());
            }
            Output::Cas(holds)
        }
        Op::Delete { key } => {
            store.remove(key);
            Output::Ack
        }
    }
}

/// A xorshift64 generator: reproducible from a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Any non-zero state works; spreading the seed's bits avoids near-identical
        // streams for neighbouring seeds.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The size of a generated history.
struct Shape {
    clients: u32,
    ops_per_client: usize,
    keys: u64,
    indeterminate_percent: u64,
}

/// A history that is linearizable by construction: each client runs operations one after
/// another with random durations, each takes effect on a sequential model at a random
/// instant of its interval, and its answer is the model's. Indeterminate operations take
/// effect at a random instant after their invocation, possibly after the client gave up,
/// or not at all. Every written value is unique.
fn generate(rng: &mut Rng, shape: &Shape) -> History {
    struct Planned {
        client: ClientId,
        invoked: u64,
        effect: u64,
        completed: u64,
        indeterminate: bool,
    }
    let mut planned = Vec::new();
    for client in 0..shape.clients {
        let mut now = rng.below(10);
        for _ in 0..shape.ops_per_client {
            let duration = 1 + rng.below(50);
            let indeterminate = rng.percent(shape.indeterminate_percent);
            let reach = if indeterminate {
                4 * duration
            } else {
                duration + 1
            };
            planned.push(Planned {
                client,
                invoked: now,
                effect: now + rng.below(reach),
                completed: now + duration,
                indeterminate,
            });
            now += duration + rng.below(20);
        }
    }
    planned.sort_by_key(|planned| planned.effect);
    let mut store = HashMap::new();
    let mut fresh = 0;
    let mut ops = Vec::new();
    for planned in planned {
        let key = format!("k{}", rng.below(shape.keys));
        fresh += 1;
        let value = format!("v{fresh}");
        let op = match rng.below(10) {
            0..=3 => Op::read(key),
            4..=6 => Op::write(key, value),
            7..=8 => {
                // Mostly the current value, so that some succeed.
                let expected = match rng.below(4) {
                    0 | 1 => store.get(&key).cloned(),
                    2 => None,
                    _ => Some(format!("v{}", 1 + rng.below(fresh))),
                };
                Op::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
            _ => Op::delete(key),
        };
        let outcome = if !planned.indeterminate {
            Outcome::Ok(apply(&mut store, &op))
        } else {
            if rng.percent(50) {
                apply(&mut store, &op);
            }
            Outcome::Indeterminate
        };
        ops.push(Operation {
            client: planned.client,
            op,
            invoked: planned.invoked,
            completed: Some(planned.completed),
            outcome,
        });
    }
    // Recorded in invocation order, as a recorder would, not in the order of effect.
    ops.sort_by_key(|op| (op.invoked, op.client));
    history(ops)
}

/// Whether `op` definitely replaced the register's value.
fn overwrote(op: &Operation) -> bool {
    matches!(
        (&op.op, &op.outcome),
        (Op::Write { .. } | Op::Delete { .. }, Outcome::Ok(_))
            | (Op::Cas { .. }, Outcome::Ok(Output::Cas(true)))
    )
}

/// Changes one read's answer to a value that it certainly cannot have seen, given that
/// every value is written once: one that is only written after the read completed, one
/// whose only write failed its comparison, or one written and then definitely overwritten
/// before the read began. Returns the key, or `None` if no read allows that.
fn mutate(rng: &mut Rng, original: &History) -> Option<(History, String)> {
    let ops = original.ops();
    let completed = |op: &Operation| op.completed.expect("generated operations complete");
    // Each written value with its key, when it became possible, whether its write failed
    // its comparison, and when it was certainly gone: the earliest completion of a
    // definite overwrite invoked after its own write completed.
    let mut written = Vec::new();
    for (index, writer) in ops.iter().enumerate() {
        let (Op::Write { key, value }
        | Op::Cas {
            key, new: value, ..
        }) = &writer.op
        else {
            continue;
        };
        let gone = overwrote(writer)
            .then(|| {
                ops.iter()
                    .enumerate()
                    .filter(|&(other_index, other)| {
                        other_index != index
                            && other.op.key() == key
                            && overwrote(other)
                            && other.invoked > completed(writer)
                    })
                    .map(|(_, other)| completed(other))
                    .min()
            })
            .flatten();
        let never = writer.outcome == Outcome::Ok(Output::Cas(false));
        written.push((key, value, writer.invoked, never, gone));
    }
    let mut candidates = Vec::new();
    for (read_index, read) in ops.iter().enumerate() {
        let (Op::Read { key }, Outcome::Ok(_)) = (&read.op, &read.outcome) else {
            continue;
        };
        for &(written_key, value, invoked, never, gone) in &written {
            let future = invoked > completed(read);
            let stale = gone.is_some_and(|gone| gone < read.invoked);
            if written_key == key && (never || future || stale) {
                candidates.push((read_index, value.clone()));
            }
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (read_index, value) = candidates.swap_remove(rng.below(candidates.len() as u64) as usize);
    let mut mutated = ops.to_vec();
    mutated[read_index].outcome = Outcome::Ok(Output::Read(Some(value)));
    let key = mutated[read_index].op.key().to_owned();
    Some((history(mutated), key))
}

#[test]
fn random_histories_pass_and_their_mutations_fail() {
    let mut mutated = 0;
    for seed in 1..=300 {
        let mut rng = Rng::new(seed);
        let shape = Shape {
            clients: 2 + rng.below(4) as u32,
            ops_per_client: 5 + rng.below(30) as usize,
            keys: 1 + rng.below(3),
            indeterminate_percent: rng.below(40),
        };
        let good = generate(&mut rng, &shape);
        let result = check(&good);
        assert_eq!(result, CheckResult::Linearizable, "seed {seed}: {result}");
        if let Some((bad, key)) = mutate(&mut rng, &good) {
            mutated += 1;
            match check(&bad) {
                CheckResult::Violation { key: found, .. } if found == key => {}
                other => panic!("seed {seed}: expected a violation on {key:?}, got: {other}"),
            }
        }
    }
    // Nearly every history has a read to spoil; make sure the second half really ran.
    assert!(mutated > 250, "only {mutated} histories mutated");
}

/// Longer one-key histories where many operations are indeterminate, many of which did
/// take effect: the search has to place them, and take them back, in many ways.
#[test]
fn random_histories_with_many_indeterminate_operations_pass() {
    for seed in 1..=30 {
        let mut rng = Rng::new(seed);
        let shape = Shape {
            clients: 3 + rng.below(3) as u32,
            ops_per_client: 100,
            keys: 1,
            indeterminate_percent: 10 + rng.below(30),
        };
        let history = generate(&mut rng, &shape);
        let result = check(&history);
        assert_eq!(result, CheckResult::Linearizable, "seed {seed}: {result}");
    }
}

/// Whether a one-key history is linearizable, by trying every order that respects real
/// time, with every indeterminate operation either placed or left out: no event list, no
/// memoization, no pruning, so it is a check of all three.
fn brute_force(ops: &[Operation], left: &mut Vec<usize>, state: Option<String>) -> bool {
    let determinate = |op: &Operation| matches!(op.outcome, Outcome::Ok(_));
    if !left.iter().any(|&i| determinate(&ops[i])) {
        return true;
    }
    for position in 0..left.len() {
        let op = &ops[left[position]];
        // Anything that completed before `op` was invoked must already be placed.
        let blocked = left.iter().any(|&other| {
            determinate(&ops[other]) && ops[other].completed.expect("determinate") < op.invoked
        });
        if blocked {
            continue;
        }
        let mut store: HashMap<String, String> = state
            .iter()
            .map(|value| ("k".to_owned(), value.clone()))
            .collect();
        let output = apply(&mut store, &op.op);
        if let Outcome::Ok(expected) = &op.outcome {
            if *expected != output {
                continue;
            }
        }
        let taken = left.remove(position);
        let found = brute_force(ops, left, store.remove("k"));
        left.insert(position, taken);
        if found {
            return true;
        }
    }
    false
}

#[test]
fn small_random_histories_agree_with_brute_force() {
    let (mut linearizable, mut not) = (0, 0);
    for seed in 1..=3000 {
        let mut rng = Rng::new(seed);
        // Few values so that answers are often, but not always, possible.
        let value = |rng: &mut Rng| ["a", "b", "c"][rng.below(3) as usize];
        let mut ops = Vec::new();
        for client in 0..1 + rng.below(11) as u32 {
            let invoked = rng.below(40);
            let completed = invoked + rng.below(12);
            let op = match rng.below(4) {
                0 => Op::read("k"),
                1 => Op::write("k", value(&mut rng)),
                2 => Op::cas(
                    "k",
                    rng.percent(70).then(|| value(&mut rng)),
                    value(&mut rng),
                ),
                _ => Op::delete("k"),
            };
            let output = match &op {
                Op::Read { .. } => Output::Read(rng.percent(70).then(|| value(&mut rng).into())),
                Op::Cas { .. } => Output::Cas(rng.percent(50)),
                _ => Output::Ack,
            };
            let outcome = if rng.percent(30) {
                Outcome::Indeterminate
            } else {
                Outcome::Ok(output)
            };
            ops.push(Operation {
                client,
                op,
                invoked,
                completed: Some(completed),
                outcome,
            });
        }
        let expected = brute_force(&ops, &mut (0..ops.len()).collect(), None);
        let result = check(&history(ops.clone()));
        assert_eq!(
            result == CheckResult::Linearizable,
            expected,
            "seed {seed}: brute force says {expected}, the checker: {result}\n{ops:#?}"
        );
        if expected {
            linearizable += 1;
        } else {
            not += 1;
        }
    }
    // Both verdicts must be well represented for the comparison to mean anything.
    assert!(linearizable > 400 && not > 400, "{linearizable} vs {not}");
}

/// A fault-test-sized history: 5 clients × 400 operations on 3 keys, 2% indeterminate.
#[test]
fn fault_test_sized_history_checks_quickly() {
    let shape = Shape {
        clients: 5,
        ops_per_client: 400,
        keys: 3,
        indeterminate_percent: 2,
    };
    // Debug build on a shared 2-core machine: a generous ceiling, far above the typical time.
    let ceiling = Duration::from_secs(10);
    for seed in 1..=3 {
        let mut rng = Rng::new(seed);
        let good = generate(&mut rng, &shape);
        let started = Instant::now();
        let result = check(&good);
        let good_time = started.elapsed();
        assert_eq!(result, CheckResult::Linearizable, "seed {seed}: {result}");

        let (bad, key) = mutate(&mut rng, &good).expect("a read to spoil");
        let started = Instant::now();
        let result = check(&bad);
        let bad_time = started.elapsed();
        assert!(
            matches!(&result, CheckResult::Violation { key: found, .. } if *found == key),
            "seed {seed}: expected a violation on {key:?}, got: {result}"
        );
        println!(
            "seed {seed}: {} ops, linearizable in {good_time:?}, violation found in {bad_time:?}",
            good.ops().len()
        );
        assert!(good_time < ceiling && bad_time < ceiling);
    }
}
