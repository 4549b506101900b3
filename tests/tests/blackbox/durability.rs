//! Acknowledged writes survive `kill -9`: the Raft log is fsynced before a put is acked.

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::GetOptions;
use tokio::sync::mpsc;

use crate::harness::{connect, revision, Node, NodeOptions, DEADLINE};

const CYCLES: usize = 3;
const WRITERS: usize = 8;
const KEYS_PER_WRITER: u64 = 16;
/// Acknowledgements to collect in a cycle before the node is killed.
const ACKS_BEFORE_KILL: usize = 300;
/// Bound on one writer's puts in a cycle; the kill comes long before.
const MAX_PUTS_PER_WRITER: u64 = 50_000;
/// A put to a killed node fails within this.
const PUT_TIMEOUT: Duration = Duration::from_secs(10);

/// An acknowledged put: `key` = `seq` at `revision`.
struct Ack {
    key: String,
    seq: u64,
    revision: i64,
}

/// What the test knows about one key.
#[derive(Default)]
struct KeyState {
    /// Highest sequence number acknowledged for the key, and its revision.
    acked: Option<(u64, i64)>,
    /// Highest sequence number the key's writer may have sent.
    attempted: u64,
    /// Value and mod revision read after a restart once the writers were done with the key;
    /// later restarts must show exactly this.
    settled: Option<(u64, i64)>,
}

fn key_of(cycle: usize, writer: usize, seq: u64) -> String {
    format!("dur/{cycle}/{writer}/{:02}", seq % KEYS_PER_WRITER)
}

/// Puts `seq` = 1, 2, ... to the keys of (`cycle`, `writer`) in turn, reporting every
/// acknowledgement, until a put fails. Returns the last sequence number it sent.
async fn writer(
    endpoint: String,
    cycle: usize,
    writer: usize,
    acks: mpsc::UnboundedSender<Ack>,
) -> u64 {
    let mut client = connect(&endpoint, PUT_TIMEOUT)
        .await
        .expect("connect a writer");
    for seq in 1..=MAX_PUTS_PER_WRITER {
        let key = key_of(cycle, writer, seq);
        let put = client.put(key.clone(), seq.to_string(), None);
        match tokio::time::timeout(PUT_TIMEOUT, put).await {
            Ok(Ok(response)) => {
                let revision = revision(response.header());
                // The receiver is gone only when the test already failed.
                let _ = acks.send(Ack { key, seq, revision });
            }
            Ok(Err(_)) | Err(_) => return seq,
        }
    }
    MAX_PUTS_PER_WRITER
}

/// Reads every key written so far and checks it against what was acknowledged.
/// Returns the highest acknowledged revision.
async fn verify(node: &Node, state: &mut HashMap<String, KeyState>) -> i64 {
    let mut c = node.client().await;
    let all = c
        .get("dur/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read back");
    let stored: HashMap<String, (u64, i64)> = all
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let seq = String::from_utf8_lossy(kv.value())
                .parse()
                .expect("a sequence number");
            (key, (seq, kv.mod_revision()))
        })
        .collect();

    let mut wrong = Vec::new();
    let mut highest_acked = 0;
    for (key, known) in state.iter_mut() {
        let found = stored.get(key).copied();
        if let Some(settled) = known.settled {
            if found != Some(settled) {
                wrong.push(format!("{key}: had settled at {settled:?}, now {found:?}"));
            }
            continue;
        }
        let Some((acked_seq, acked_rev)) = known.acked else {
            continue;
        };
        highest_acked = highest_acked.max(acked_rev);
        let Some((seq, mod_rev)) = found else {
            wrong.push(format!(
                "{key}: acked seq {acked_seq} at revision {acked_rev}, now missing"
            ));
            continue;
        };
        let same_key = seq % KEYS_PER_WRITER == acked_seq % KEYS_PER_WRITER;
        if seq < acked_seq || seq > known.attempted || !same_key {
            wrong.push(format!(
                "{key}: acked seq {acked_seq}, writer sent up to {}, found {seq}",
                known.attempted
            ));
        } else if seq == acked_seq && mod_rev != acked_rev {
            wrong.push(format!(
                "{key}: seq {seq} acked at revision {acked_rev}, stored at {mod_rev}"
            ));
        }
        known.settled = found;
    }
    assert!(
        wrong.is_empty(),
        "acknowledged writes lost or changed:\n{}",
        wrong.join("\n")
    );
    let current = revision(all.header());
    assert!(
        current >= highest_acked,
        "revision {current} is below the acknowledged revision {highest_acked}"
    );
    highest_acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9_while_puts_are_in_flight() {
    let mut node = Node::start(NodeOptions::default()).await;
    let mut state: HashMap<String, KeyState> = HashMap::new();

    for cycle in 0..CYCLES {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(node.endpoint(), cycle, w, tx.clone())))
            .collect();
        drop(tx);

        let mut acked_this_cycle = 0;
        let waited = tokio::time::timeout(DEADLINE * 2, async {
            while acked_this_cycle < ACKS_BEFORE_KILL {
                let ack: Ack = rx.recv().await.expect("writers stopped before the kill");
                state.entry(ack.key).or_default().acked = Some((ack.seq, ack.revision));
                acked_this_cycle += 1;
            }
        })
        .await;
        if waited.is_err() {
            node.fail(&format!(
                "only {acked_this_cycle} of {ACKS_BEFORE_KILL} puts acknowledged in time"
            ));
        }
        node.kill9();

        for (w, handle) in writers.into_iter().enumerate() {
            let last_sent = handle.await.expect("writer task");
            for seq in last_sent.saturating_sub(KEYS_PER_WRITER - 1)..=last_sent {
                let known = state.entry(key_of(cycle, w, seq)).or_default();
                known.attempted = known.attempted.max(seq);
            }
        }
        // Acks that were on their way when the node died are acks too.
        while let Ok(ack) = rx.try_recv() {
            state.entry(ack.key).or_default().acked = Some((ack.seq, ack.revision));
        }

        node.restart().await;
        let highest = verify(&node, &mut state).await;
        assert!(highest > 0, "cycle {cycle} acknowledged nothing");
    }
}
