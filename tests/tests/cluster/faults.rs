//! Concurrent clients read, write, delete and compare-and-set a few keys while a nemesis
//! kills (SIGKILL) and restarts members, cuts their power (what they had not fsynced is
//! lost) and restarts them, and pauses (SIGSTOP) and resumes them, one member at a time;
//! the history the clients record must be linearizable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_tests::linearizability::{
    check, CheckResult, ClientId, History, Op, Outcome, Output, Recorder,
};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::task::JoinSet;

use crate::harness::{connect, Cluster, ClusterSpec};

/// Concurrent clients; client `c` talks to member `c % 3`.
const CLIENTS: ClientId = 5;

/// The keys the clients share: few, so that their operations overlap.
const KEYS: [&str; 3] = ["x", "y", "z"];

/// How long the clients run and the nemesis strikes.
const LOAD: Duration = Duration::from_secs(25);

/// Deadline of each client request.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// A client pauses this long after an operation that got no answer, rather than spin
/// against a member that is down; an operation with an unknown outcome also stays open to
/// the end of the history and widens the checker's search.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(200);

/// Range of a fault's length, and of the calm between two faults, in milliseconds.
const FAULT_MILLIS: (u64, u64) = (500, 2_500);
const CALM_MILLIS: (u64, u64) = (500, 1_500);

/// Fewer successful operations than this means the test checked too little.
const MIN_SUCCESSFUL_OPERATIONS: usize = 500;

/// SplitMix64: reproducible random choices without another dependency.
struct Choices(u64);

impl Choices {
    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (mixed ^ (mixed >> 31)) % bound
    }

    /// A duration in the millisecond range `(low, high)`.
    fn millis(&mut self, (low, high): (u64, u64)) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// The outcome of a write, delete or compare-and-set that got an error or no answer.
fn unanswered(error: Option<&etcd_client::Error>) -> Outcome {
    match error {
        // The connection could not even be made: the request never left the client.
        Some(etcd_client::Error::GRpcStatus(status))
            if status.code() == tonic::Code::Unavailable
                && status.message() == "tcp connect error" =>
        {
            Outcome::Failed
        }
        // Anything else (a timeout, "no leader", a connection lost mid-request) may have
        // been proposed, and may take effect later.
        _ => Outcome::Indeterminate,
    }
}

/// `request` within [`OPERATION_TIMEOUT`]: its answer, or the error if there was one.
async fn answer<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Option<etcd_client::Error>> {
    match tokio::time::timeout(OPERATION_TIMEOUT, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(Some(error)),
        Err(_) => Err(None),
    }
}

/// One client: random operations on [`KEYS`] until `stop`, each recorded in `recorder`.
/// A compare-and-set expects the value the client last saw for the key.
async fn run_client(id: ClientId, client: Client, recorder: Recorder, stop: Arc<AtomicBool>) {
    let mut choices = Choices(u64::from(id) + 1);
    let mut last_seen: HashMap<&str, Option<String>> = HashMap::new();
    let mut sequence = 0_u32;
    while !stop.load(Ordering::Relaxed) {
        let key = KEYS[usize::try_from(choices.below(3)).expect("a small index")];
        sequence += 1;
        let value = format!("{id}-{sequence}");
        let mut client = client.clone();
        let outcome = match choices.below(100) {
            0..50 => {
                let handle = recorder.invoke(id, Op::read(key));
                match answer(client.get(key, None)).await {
                    Ok(response) => {
                        let seen = response
                            .kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                        last_seen.insert(key, seen.clone());
                        let outcome = Outcome::Ok(Output::Read(seen));
                        handle.complete(outcome.clone());
                        outcome
                    }
                    // A failed read is dropped: it changed nothing.
                    Err(_) => {
                        handle.complete(Outcome::Failed);
                        Outcome::Failed
                    }
                }
            }
            50..75 => {
                let handle = recorder.invoke(id, Op::write(key, value.as_str()));
                let outcome = match answer(client.put(key, value.as_str(), None)).await {
                    Ok(_) => {
                        last_seen.insert(key, Some(value));
                        Outcome::Ok(Output::Ack)
                    }
                    Err(error) => unanswered(error.as_ref()),
                };
                handle.complete(outcome.clone());
                outcome
            }
            75..95 => {
                let expected = last_seen.get(key).cloned().flatten();
                let compare = match &expected {
                    Some(expected) => Compare::value(key, CompareOp::Equal, expected.as_str()),
                    None => Compare::version(key, CompareOp::Equal, 0),
                };
                let txn =
                    Txn::new()
                        .when([compare])
                        .and_then([TxnOp::put(key, value.as_str(), None)]);
                let op = Op::cas(key, expected.as_deref(), value.as_str());
                let handle = recorder.invoke(id, op);
                let outcome = match answer(client.txn(txn)).await {
                    Ok(response) => {
                        if response.succeeded() {
                            last_seen.insert(key, Some(value));
                        }
                        Outcome::Ok(Output::Cas(response.succeeded()))
                    }
                    Err(error) => unanswered(error.as_ref()),
                };
                handle.complete(outcome.clone());
                outcome
            }
            _ => {
                let handle = recorder.invoke(id, Op::delete(key));
                let outcome = match answer(client.delete(key, None)).await {
                    Ok(_) => {
                        last_seen.insert(key, None);
                        Outcome::Ok(Output::Ack)
                    }
                    Err(error) => unanswered(error.as_ref()),
                };
                handle.complete(outcome.clone());
                outcome
            }
        };
        if !matches!(outcome, Outcome::Ok(_)) {
            tokio::time::sleep(PAUSE_AFTER_ERROR).await;
        }
    }
}

/// Until `until`: after a calm, kills, cuts the power of or pauses one member, holds the
/// fault, then restarts or resumes it and waits until every member follows one leader
/// again, so that never more than one member (a minority of three) is down or frozen.
/// Returns the faults done.
async fn run_nemesis(cluster: &mut Cluster, until: Instant) -> Vec<String> {
    // Seed 0: the clients use 1 to CLIENTS.
    let mut choices = Choices(0);
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    let mut faults = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(choices.millis(CALM_MILLIS)).await;
        let victim = usize::try_from(choices.below(3)).expect("a small index");
        let hold = choices.millis(FAULT_MILLIS);
        let member = cluster.member_mut(victim);
        // The kinds take turns, so every run has each of them.
        let fault = match faults.len() % 3 {
            0 => {
                member.kill9();
                tokio::time::sleep(hold).await;
                member.restart().await;
                "kill -9"
            }
            1 => {
                member.power_cut();
                tokio::time::sleep(hold).await;
                member.restart().await;
                "power cut"
            }
            _ => {
                member.pause();
                tokio::time::sleep(hold).await;
                member.resume();
                "SIGSTOP"
            }
        };
        faults.push(format!("{fault} {} for {hold:?}", member.name()));
        cluster.leader_among(&everyone).await;
    }
    faults
}

/// Counts of (successful, indeterminate, failed) operations.
fn tally(history: &History) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for operation in history.ops() {
        match operation.outcome {
            Outcome::Ok(_) => counts.0 += 1,
            Outcome::Indeterminate => counts.1 += 1,
            Outcome::Failed => counts.2 += 1,
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_concurrent_clients_under_kills_power_cuts_and_pauses_is_linearizable() {
    let mut cluster = Cluster::start(ClusterSpec::new(3).on_power_cut_disks()).await;
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for id in 0..CLIENTS {
        let index = usize::try_from(id).expect("a small id") % cluster.len();
        let client = connect(cluster.member(index).endpoint(), OPERATION_TIMEOUT).await;
        clients.spawn(run_client(id, client, recorder.clone(), stop.clone()));
    }
    let faults = run_nemesis(&mut cluster, Instant::now() + LOAD).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(finished) = clients.join_next().await {
        finished.expect("a client task");
    }
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    cluster.assert_converged(&everyone).await;

    let history = recorder.history();
    let (successful, indeterminate, failed) = tally(&history);
    let started = Instant::now();
    let verdict = check(&history);
    println!(
        "faults: {}\nhistory: {} operations ({successful} successful, {indeterminate} \
         indeterminate, {failed} failed); checked in {:?}: {verdict}",
        faults.join(", "),
        history.ops().len(),
        started.elapsed()
    );
    assert!(
        successful >= MIN_SUCCESSFUL_OPERATIONS,
        "only {successful} operations succeeded"
    );
    assert!(matches!(verdict, CheckResult::Linearizable), "{verdict}");
}
