//! A linearizability checker for histories of a key-value store, for the fault tests.
//!
//! # What is checked
//!
//! Concurrent clients run reads, writes, deletes and compare-and-set against the cluster
//! while a [`Recorder`] notes, for every operation, when it was invoked, when its answer
//! arrived and what the answer was. Such a history is *linearizable* if one total order of
//! its operations exists that
//!
//! 1. respects real time: an operation that completed before another was invoked comes
//!    first; operations whose intervals overlap may go either way, and
//! 2. is a legal run of the model, a map of registers that starts with every key absent,
//!    in which every operation returns exactly what it returned in the history.
//!
//! That is the guarantee etcd gives for writes and for (default, non-serializable) reads.
//!
//! Outcomes need care. An operation that definitely did not happen ([`Outcome::Failed`],
//! e.g. a request the server rejected before proposing it) is left out. An
//! [`Outcome::Indeterminate`] one (a timeout, a connection lost during a leader change) may
//! take effect at any moment after its invocation, even long after the client gave up, or
//! never: its completion is taken to be +∞ and its result to be unknown. "Never" needs no
//! separate case: it looks the same as taking effect after every other operation. An
//! indeterminate read changes nothing and constrains nothing, so it is dropped too.
//!
//! # How
//!
//! **One key at a time.** Registers are independent objects, and a history of independent
//! objects is linearizable exactly when the sub-history of each object is (Herlihy and
//! Wing's locality, a.k.a. P-compositionality). Splitting by key makes the cost exponential
//! in the concurrency on one key rather than in the length of the whole history.
//!
//! **Wing and Gong's search.** Per key, the call and return events of the operations sit
//! in a doubly linked list, sorted by time. An operation may be the next one in the order
//! when its call comes before the first return still in the list, the *barrier*: every
//! operation not placed yet that returned before it was invoked would otherwise come after
//! it. The search walks the list from its head, places the first such candidate whose
//! result the model accepts, unlinks its call and return, and starts again from the head.
//! When it reaches the barrier without placing anything it backtracks: it takes back the
//! last choice, restoring the list and the register's value, and tries the candidates
//! after that one. The list is empty when every operation is placed: the history is
//! linearizable. The list is restored in O(1) because an unlinked node keeps its own links,
//! so nodes relinked in the reverse order of their removal land where they were.
//!
//! **Lowe's memoization.** What the search can still do from some point depends only on
//! the set of operations placed and the register's value, not on the order that led there.
//! Each such configuration is explored once; a choice leading to a configuration seen
//! before is skipped. That bounds the work by the number of configurations, roughly
//! operations × 2^(concurrent operations) × values, and on a well-behaved history the
//! search goes almost straight through. The set is stored compactly: with operations ranked
//! by invocation, every rank below the lowest one not placed is placed, and none is placed
//! that was invoked after that operation returned, so a window about as wide as the
//! concurrency says it all.
//!
//! **Indeterminate operations** never form a barrier (their return would be the last
//! event), so they stay out of the event list, in a side list ordered by invocation, and are
//! tried after the ordinary candidates, those invoked before the barrier. Left alone they
//! would multiply the search: each is a candidate at every step from its invocation on, so
//! any subset of them could be placed anywhere. Three observations keep that in check
//! without losing any legal order:
//!
//! - *Place one only where it is needed.* Take a legal order. If an indeterminate
//!   operation in it leaves the value unchanged, or the next operation would end at the
//!   same value without it (a write, a delete), moving it to the end keeps the order legal.
//!   If the next operation is determinate and would end at the same value placed before it
//!   (a compare-and-set that fails either way), swapping the two keeps the order legal.
//!   Each move takes it past a determinate operation, so repeating them ends: only orders
//!   where no move applies need searching, where every indeterminate operation placed is
//!   followed by one that depends on it. So the search works out which values the
//!   candidates for the next place could need and only tries open operations producing
//!   one; and as what the next operation may be depends on the last operation placed and
//!   the value before it, both are part of the memoized configuration when that operation
//!   is indeterminate.
//! - *Twins go in order.* Open operations with the same effect (two deletes, say) are
//!   interchangeable, except that the one invoked first may take effect earlier: they are
//!   placed in invocation order.
//! - *Fewer used is better.* A configuration dominates another with the same determinate
//!   operations placed and the same value but a superset of indeterminate ones placed: an
//!   indeterminate operation not placed yet can still take effect later, or never, so
//!   whatever finishes from the second finishes from the first. A configuration that a
//!   recently explored one dominates is skipped, so an indeterminate operation used up to
//!   no lasting effect does not double the work that follows.
//!
//! **Budget.** A search that is exponential in the worst case gets a budget of steps and
//! time per key ([`Budget`]); running out is reported as [`CheckResult::Unknown`], never as
//! a violation.
//!
//! **Explanation.** A violation is only declared once every configuration has been
//! explored (or found dominated by one that was), so the furthest barrier the search ever
//! reached is exactly where the history stops being linearizable: all operations completed
//! before that barrier's operation fit a legal order, and no legal order takes in that
//! operation as well. The report names that operation, the values the register could hold
//! just before it, the operations still open at that point, and one longest legal order
//! found.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Who issued an operation. Only shown in reports: the checker relies on times alone.
pub type ClientId = u32;

/// An operation on one key, as issued by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read the key's value; [`Output::Read`] with `None` if the key is absent.
    Read { key: String },
    /// Put `value`; [`Output::Ack`].
    Write { key: String, value: String },
    /// A Txn comparing the key's value: if it equals `expected` (`None`: the key is absent)
    /// put `new`. [`Output::Cas`] says whether the comparison held.
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    /// Delete the key; [`Output::Ack`] (whether it existed is not modelled).
    Delete { key: String },
}

impl Op {
    /// A [`Op::Read`] of `key`.
    pub fn read(key: impl Into<String>) -> Self {
        Self::Read { key: key.into() }
    }

    /// A [`Op::Write`] of `value` to `key`.
    pub fn write(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::Write {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A [`Op::Cas`] of `key` from `expected` (`None`: absent) to `new`.
    pub fn cas(key: impl Into<String>, expected: Option<&str>, new: impl Into<String>) -> Self {
        Self::Cas {
            key: key.into(),
            expected: expected.map(str::to_owned),
            new: new.into(),
        }
    }

    /// A [`Op::Delete`] of `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Self::Read { key }
            | Self::Write { key, .. }
            | Self::Cas { key, .. }
            | Self::Delete { key } => key,
        }
    }

    /// Whether `output` is the kind of answer this operation gets.
    fn accepts(&self, output: &Output) -> bool {
        matches!(
            (self, output),
            (Self::Read { .. }, Output::Read(_))
                | (Self::Cas { .. }, Output::Cas(_))
                | (Self::Write { .. } | Self::Delete { .. }, Output::Ack)
        )
    }
}

/// The answer to an operation that completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The value a [`Op::Read`] saw; `None`: the key was absent.
    Read(Option<String>),
    /// Whether the comparison of a [`Op::Cas`] held (and the new value was put).
    Cas(bool),
    /// A [`Op::Write`] or [`Op::Delete`] was applied.
    Ack,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect, with this answer.
    Ok(Output),
    /// It definitely did not take effect (rejected before being proposed); left out of the
    /// check.
    Failed,
    /// Unknown whether, and when, it took effect: a timeout, a lost connection, an
    /// unavailable cluster. Also the state of an operation still in flight.
    Indeterminate,
}

/// One operation of a [`History`]. Times are nanoseconds on one monotonic clock (the
/// [`Recorder`]'s: since its creation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: ClientId,
    pub op: Op,
    /// When the client sent it.
    pub invoked: u64,
    /// When the client got its outcome (for an indeterminate operation: when it gave up;
    /// the checker then ignores this time). `None`: it never completed.
    pub completed: Option<u64>,
    pub outcome: Outcome,
}

impl Operation {
    /// Panics if the parts contradict each other: the recorder and the tests build
    /// operations, so a contradiction is a bug in them, not in the system under test.
    fn validate(&self) {
        if let Outcome::Ok(output) = &self.outcome {
            assert!(
                self.op.accepts(output),
                "{:?} cannot answer {:?}",
                output,
                self.op
            );
            assert!(
                self.completed.is_some(),
                "an operation with an answer needs a completion time: {self:?}"
            );
        }
        if let Some(completed) = self.completed {
            assert!(
                completed >= self.invoked,
                "completed before it was invoked: {self:?}"
            );
        }
    }
}

/// A recorded history: operations on any number of keys, in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an operation. Panics if it is malformed: an answer of the wrong kind (e.g.
    /// [`Output::Cas`] for a read), an answer without a completion time, or a completion
    /// before the invocation.
    pub fn push(&mut self, operation: Operation) {
        operation.validate();
        self.ops.push(operation);
    }

    /// The operations, in the order they were added. Reports refer to them as `#index`.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }
}

/// Records a history from many concurrent clients. Cloning is cheap (an `Arc`) and every
/// clone records into the same history, so each tokio task can own one.
///
/// A client calls [`Recorder::invoke`] just before sending a request and
/// [`OpHandle::complete`] as soon as it has the outcome, so the recorded interval contains
/// the real one.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    origin: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                origin: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Records that `client` is about to send `op`. Until completed, the operation is
    /// indeterminate, so a task that is cancelled or panics mid-request leaves a correct
    /// record behind.
    pub fn invoke(&self, client: ClientId, op: Op) -> OpHandle {
        // The time is taken before the lock: waiting for the lock must not make the
        // recorded invocation later than the real one.
        let invoked = self.now();
        let mut ops = self.lock();
        ops.push(Operation {
            client,
            op,
            invoked,
            completed: None,
            outcome: Outcome::Indeterminate,
        });
        OpHandle {
            recorder: self.clone(),
            index: ops.len() - 1,
        }
    }

    /// A copy of everything recorded so far; operations still in flight are indeterminate.
    pub fn history(&self) -> History {
        History {
            ops: self.lock().clone(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.shared.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation>> {
        // A panic elsewhere while holding the lock cannot leave the list half-updated (every
        // update is a single push or assignment), so a poisoned lock is still usable.
        self.shared
            .ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// An invoked operation waiting for its outcome. Dropping it leaves the operation
/// indeterminate.
#[must_use = "an operation never completed is recorded as indeterminate"]
pub struct OpHandle {
    recorder: Recorder,
    index: usize,
}

impl OpHandle {
    /// Records the outcome, now. Panics if an [`Outcome::Ok`] answer is of the wrong kind
    /// for the operation.
    pub fn complete(self, outcome: Outcome) {
        let completed = self.recorder.now();
        let mut ops = self.recorder.lock();
        let operation = &mut ops[self.index];
        operation.completed = Some(completed);
        operation.outcome = outcome;
        operation.validate();
    }
}

/// How much work the search may do on one key before giving up with
/// [`CheckResult::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Steps (a candidate considered, or a choice taken back) per key.
    pub max_steps: u64,
    /// Wall-clock time per key.
    pub max_time: Duration,
}

impl Default for Budget {
    /// Generous for the fault tests: a history of thousands of operations per key, a few
    /// concurrent clients and tens of indeterminate operations, linearizable or not, needs
    /// around a second in a debug build. Memory grows with the steps taken, to a few
    /// hundred MB at the limit.
    fn default() -> Self {
        Self {
            max_steps: 20_000_000,
            max_time: Duration::from_secs(30),
        }
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's sub-history is linearizable.
    Linearizable,
    /// `key`'s sub-history is not linearizable; `explanation` says where and why.
    Violation { key: String, explanation: String },
    /// No violation was found, but the search on `key` ran out of [`Budget`], so its
    /// sub-history may or may not be linearizable.
    Unknown { key: String },
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linearizable => f.write_str("linearizable"),
            Self::Violation { key, explanation } => {
                write!(f, "not linearizable on key {key:?}:\n{explanation}")
            }
            Self::Unknown { key } => write!(f, "unknown: budget exhausted on key {key:?}"),
        }
    }
}

/// Checks `history` with the default [`Budget`].
pub fn check(history: &History) -> CheckResult {
    check_with_budget(history, Budget::default())
}

/// Checks `history`, one key at a time in key order, giving each key `budget`. A violation
/// on any key wins over a key whose check ran out of budget.
pub fn check_with_budget(history: &History, budget: Budget) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.ops.iter().enumerate() {
        by_key.entry(operation.op.key()).or_default().push(index);
    }
    let mut unknown = None;
    for (key, indices) in by_key {
        let key_history = KeyHistory::new(history, &indices);
        match Search::new(&key_history).run(budget) {
            Verdict::Linearizable => {}
            Verdict::Violation(explanation) => {
                return CheckResult::Violation {
                    key: key.to_owned(),
                    explanation,
                }
            }
            Verdict::Exhausted => {
                unknown.get_or_insert_with(|| key.to_owned());
            }
        }
    }
    match unknown {
        Some(key) => CheckResult::Unknown { key },
        None => CheckResult::Linearizable,
    }
}

/// A register value, interned: the search compares and hashes small integers, not strings.
type Value = u32;

/// The interned value of an absent key.
const ABSENT: Value = 0;

/// What one operation does to, and requires of, the register, with interned values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    /// A read that saw this value.
    Read(Value),
    /// A write, or a delete (of [`ABSENT`]).
    Write(Value),
    /// A compare-and-set; `swapped` is `None` when the answer is unknown.
    Cas {
        expected: Value,
        new: Value,
        swapped: Option<bool>,
    },
}

impl Step {
    /// The register's value after this step from `state`, or `None` if the step could not
    /// have returned its recorded answer there.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Self::Read(seen) => (seen == state).then_some(state),
            Self::Write(value) => Some(value),
            Self::Cas {
                expected,
                new,
                swapped,
            } => {
                let holds = state == expected;
                if swapped.is_some_and(|swapped| swapped != holds) {
                    None
                } else {
                    Some(if holds { new } else { state })
                }
            }
        }
    }
}

/// The operations of one key that matter to the search.
struct KeyHistory<'h> {
    /// Each operation with its index in the [`History`], for reports.
    ops: Vec<(usize, &'h Operation)>,
    steps: Vec<Step>,
    /// Whether the outcome is known (else completion is +∞ and the answer unknown).
    determinate: Vec<bool>,
    /// The value behind each interned [`Value`].
    values: Vec<Option<&'h str>>,
}

impl<'h> KeyHistory<'h> {
    fn new(history: &'h History, indices: &[usize]) -> Self {
        let mut key_history = Self {
            ops: Vec::new(),
            steps: Vec::new(),
            determinate: Vec::new(),
            values: vec![None],
        };
        let mut interned: HashMap<&'h str, Value> = HashMap::new();
        let mut intern = |value: Option<&'h str>| match value {
            None => ABSENT,
            Some(value) => *interned.entry(value).or_insert_with(|| {
                key_history.values.push(Some(value));
                Value::try_from(key_history.values.len() - 1).expect("fewer than 2^32 values")
            }),
        };
        for &index in indices {
            let operation = &history.ops[index];
            let answer = match &operation.outcome {
                Outcome::Failed => continue,
                Outcome::Indeterminate => None,
                Outcome::Ok(output) => Some(output),
            };
            let step = match (&operation.op, answer) {
                (Op::Read { .. }, Some(Output::Read(seen))) => Step::Read(intern(seen.as_deref())),
                // A read with no answer neither changes nor constrains anything.
                (Op::Read { .. }, _) => continue,
                (Op::Write { value, .. }, _) => Step::Write(intern(Some(value))),
                (Op::Delete { .. }, _) => Step::Write(ABSENT),
                (Op::Cas { expected, new, .. }, answer) => Step::Cas {
                    expected: intern(expected.as_deref()),
                    new: intern(Some(new)),
                    swapped: match answer {
                        Some(Output::Cas(swapped)) => Some(*swapped),
                        _ => None,
                    },
                },
            };
            key_history.ops.push((index, operation));
            key_history.steps.push(step);
            key_history.determinate.push(answer.is_some());
        }
        key_history
    }

    fn describe(&self, op: usize) -> String {
        let (index, operation) = self.ops[op];
        format!("#{index} {operation}")
    }

    fn value_name(&self, value: Value) -> String {
        display_value(self.values[value as usize])
    }
}

/// How many recently explored configurations a new one is checked against for dominance
/// (see [`Search::place`]). Checking all of them would be quadratic when a history has many
/// indeterminate operations; the recent ones are those a sibling branch of the search left
/// behind, the likeliest to dominate.
const RECENT_DOMINATORS: usize = 32;

/// The list head; node `len + 1` is the tail.
const HEAD: usize = 0;

/// A doubly linked list over nodes `1..=len` between a head and a tail sentinel, whose
/// removals are undone by relinking in the reverse order.
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Links {
    fn new(len: usize) -> Self {
        Self {
            next: (1..=len + 2).collect(),
            prev: (0..len + 2).map(|node| node.saturating_sub(1)).collect(),
        }
    }

    fn tail(&self) -> usize {
        self.next.len() - 1
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }
}

/// A call or return of a determinate operation.
struct Event {
    op: usize,
    time: u64,
    /// For a call, the node of its return; `None` for a return.
    return_node: Option<usize>,
}

/// Where the search is looking for the next operation to place.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this node of the event list.
    Event(usize),
    /// Past the barrier `barrier` (an event node), at this node of the indeterminate list.
    Open { node: usize, barrier: usize },
}

/// An indeterminate operation.
struct OpenOp {
    invoked: u64,
    op: usize,
    /// The node of the last operation invoked before this one that has the same effect (a
    /// delete, or a compare-and-set with the same values). Two such operations are
    /// interchangeable, except that the earlier one may take effect earlier; so in any
    /// legal order they can be taken in the order of invocation, and this one is only
    /// placed after its twin.
    twin: Option<usize>,
}

/// A placed operation, to be taken back on backtracking.
struct Choice {
    /// Where it was found, which is also where to resume after taking it back.
    at: Cursor,
    op: usize,
    /// The register's value before it.
    before: Value,
}

/// The furthest the search got, for the explanation.
struct Frontier {
    /// The furthest barrier reached (an event node; [`HEAD`] before any).
    barrier: usize,
    /// One legal order of operations reaching it.
    order: Vec<usize>,
    /// Every register value seen there.
    values: Vec<Value>,
}

/// The indeterminate operations worth placing now: those that produce a value that a
/// candidate for the next place needs.
#[derive(Default)]
struct Wanted {
    /// Any value but the current one will do.
    any_change: bool,
    values: Vec<Value>,
    /// Unless `any_change`, the nodes of the open list that may produce one of `values`,
    /// in list order.
    nodes: Vec<usize>,
}

impl Wanted {
    fn includes(&self, value: Value) -> bool {
        self.any_change || self.values.contains(&value)
    }

    /// The first node from `node` on in the open list that is worth trying.
    fn next_node(&self, node: usize, tail: usize) -> usize {
        if self.any_change {
            return node;
        }
        let position = self.nodes.partition_point(|&wanted| wanted < node);
        self.nodes.get(position).copied().unwrap_or(tail)
    }
}

enum Verdict {
    Linearizable,
    Violation(String),
    Exhausted,
}

/// Wing and Gong's search with Lowe's memoization over one key (see the module docs).
struct Search<'k, 'h> {
    history: &'k KeyHistory<'h>,
    /// Node `n` is `events[n - 1]`, in time order; calls before returns at equal times,
    /// so that operations touching at an instant count as concurrent.
    events: Vec<Event>,
    event_links: Links,
    /// Indeterminate operations: node `n` is `open[n - 1]`, in order of invocation.
    open: Vec<OpenOp>,
    /// The nodes of the open list whose operation may produce each value, in list order.
    producers: FastMap<Value, Vec<usize>>,
    open_links: Links,
    /// Each determinate operation's rank: the position of its call among the calls.
    rank: Vec<usize>,
    /// For each rank, how many calls come before that operation's return: while it is not
    /// placed, no rank from that number on can be.
    reach: Vec<usize>,
    /// The determinate operations placed, one bit per rank.
    placed: Vec<u64>,
    /// The lowest rank not placed.
    low: usize,
    /// The indeterminate operations placed, one bit per node of the open list.
    placed_open: Vec<u64>,
    /// Every configuration explored, encoded by [`Search::encode`].
    explored: HashSet<Vec<u64>, BuildHasherDefault<WordHasher>>,
    /// For each determinate part of an encoded configuration, the last few `placed_open`
    /// sets explored with it, each with its [`Search::last_open_word`], to check whether a
    /// new configuration is dominated.
    recent: FastMap<Vec<u64>, VecDeque<(Vec<u64>, u64)>>,
    /// Scratch space for an encoded configuration.
    key: Vec<u64>,
    frontier: Frontier,
}

impl<'k, 'h> Search<'k, 'h> {
    fn new(history: &'k KeyHistory<'h>) -> Self {
        let mut events = Vec::new();
        let mut open = Vec::new();
        for (op, &(_, operation)) in history.ops.iter().enumerate() {
            match operation.completed {
                Some(completed) if history.determinate[op] => {
                    events.push((operation.invoked, false, op));
                    events.push((completed, true, op));
                }
                _ => open.push((operation.invoked, op)),
            }
        }
        events.sort_unstable();
        open.sort_unstable();
        let mut producers: FastMap<Value, Vec<usize>> = HashMap::default();
        for (position, &(_, op)) in open.iter().enumerate() {
            if let Step::Write(value) | Step::Cas { new: value, .. } = history.steps[op] {
                producers.entry(value).or_default().push(position + 1);
            }
        }
        let mut last_with_effect = HashMap::new();
        let open: Vec<OpenOp> = open
            .into_iter()
            .enumerate()
            .map(|(position, (invoked, op))| OpenOp {
                invoked,
                op,
                twin: last_with_effect.insert(history.steps[op], position + 1),
            })
            .collect();
        let mut return_nodes = vec![0; history.ops.len()];
        let mut rank = vec![0; history.ops.len()];
        let mut reach = vec![0; events.len() / 2];
        let mut calls = 0;
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            if is_return {
                return_nodes[op] = position + 1;
                reach[rank[op]] = calls;
            } else {
                rank[op] = calls;
                calls += 1;
            }
        }
        let events: Vec<Event> = events
            .into_iter()
            .map(|(time, is_return, op)| Event {
                op,
                time,
                return_node: (!is_return).then_some(return_nodes[op]),
            })
            .collect();
        Self {
            history,
            event_links: Links::new(events.len()),
            events,
            open_links: Links::new(open.len()),
            placed_open: vec![0; open.len().div_ceil(64)],
            open,
            producers,
            placed: vec![0; calls.div_ceil(64)],
            low: 0,
            rank,
            reach,
            explored: HashSet::default(),
            recent: HashMap::default(),
            key: Vec::new(),
            frontier: Frontier {
                barrier: HEAD,
                order: Vec::new(),
                values: Vec::new(),
            },
        }
    }

    fn event(&self, node: usize) -> &Event {
        &self.events[node - 1]
    }

    fn run(mut self, budget: Budget) -> Verdict {
        let started = Instant::now();
        let mut steps: u64 = 0;
        // Reading the clock at every step would cost more than the step itself.
        const STEPS_PER_CLOCK_READING: u64 = 4096;
        let mut next_clock_reading = STEPS_PER_CLOCK_READING;
        let mut state = ABSENT;
        let mut placed: Vec<Choice> = Vec::new();
        let mut cursor = Cursor::Event(self.event_links.first());
        // Set whenever the cursor moves into the open list.
        let mut wanted = Wanted::default();
        loop {
            if self.event_links.first() == self.event_links.tail() {
                // Every determinate operation is placed; indeterminate ones still open
                // take effect after them, or never.
                return Verdict::Linearizable;
            }
            steps += 1;
            if steps > budget.max_steps {
                return Verdict::Exhausted;
            }
            if steps == next_clock_reading {
                if started.elapsed() > budget.max_time {
                    return Verdict::Exhausted;
                }
                next_clock_reading += STEPS_PER_CLOCK_READING;
            }
            let open_top = placed
                .last()
                .filter(|choice| matches!(choice.at, Cursor::Open { .. }))
                .map(|choice| (choice.op, choice.before));
            match cursor {
                Cursor::Event(node) => {
                    let Some(return_node) = self.event(node).return_node else {
                        self.note_barrier(node, state, &placed);
                        wanted = self.wanted(node, state);
                        cursor = Cursor::Open {
                            node: self.open_links.first(),
                            barrier: node,
                        };
                        continue;
                    };
                    let op = self.event(node).op;
                    if let Some(after) = self.place(cursor, op, state, open_top) {
                        self.event_links.unlink(node);
                        self.event_links.unlink(return_node);
                        placed.push(Choice {
                            at: cursor,
                            op,
                            before: state,
                        });
                        state = after;
                        cursor = Cursor::Event(self.event_links.first());
                    } else {
                        cursor = Cursor::Event(self.event_links.next[node]);
                    }
                }
                Cursor::Open { node, barrier } => {
                    let node = wanted.next_node(node, self.open_links.tail());
                    cursor = Cursor::Open { node, barrier };
                    let candidate = (node != self.open_links.tail())
                        .then(|| &self.open[node - 1])
                        .filter(|open| open.invoked <= self.event(barrier).time);
                    if let Some(&OpenOp { op, twin, .. }) = candidate {
                        let placeable = twin.is_none_or(|twin| bit(&self.placed_open, twin - 1))
                            && self.history.steps[op]
                                .apply(state)
                                .is_some_and(|after| wanted.includes(after));
                        if let Some(after) = placeable
                            .then(|| self.place(cursor, op, state, open_top))
                            .flatten()
                        {
                            self.open_links.unlink(node);
                            placed.push(Choice {
                                at: cursor,
                                op,
                                before: state,
                            });
                            state = after;
                            cursor = Cursor::Event(self.event_links.first());
                        } else {
                            cursor = Cursor::Open {
                                node: self.open_links.next[node],
                                barrier,
                            };
                        }
                        continue;
                    }
                    // Nothing more can go before the barrier: take back the last choice.
                    let Some(choice) = placed.pop() else {
                        return Verdict::Violation(self.explain());
                    };
                    self.set_placed(choice.at, choice.op, false);
                    state = choice.before;
                    cursor = match choice.at {
                        Cursor::Event(node) => {
                            let return_node = self.event(node).return_node;
                            self.event_links
                                .relink(return_node.expect("placed from a call"));
                            self.event_links.relink(node);
                            Cursor::Event(self.event_links.next[node])
                        }
                        Cursor::Open { node, barrier } => {
                            self.open_links.relink(node);
                            wanted = self.wanted(barrier, state);
                            Cursor::Open {
                                node: self.open_links.next[node],
                                barrier,
                            }
                        }
                    };
                }
            }
        }
    }

    /// Tries to place `op`, found at `at`, next, from register value `state`, after
    /// `open_top` (the last operation placed, with the value before it, if it is
    /// indeterminate): the value after `op`, or `None` if the model rejects it, a pruning
    /// rule forbids it, or the configuration it leads to was explored already or is
    /// dominated by one explored recently. On success `op` is marked placed.
    ///
    /// A configuration dominates another with the same determinate operations placed, the
    /// same value, and a superset of indeterminate operations placed (with the same last
    /// operation, or any if its own last is determinate, as the last one restricts what
    /// may follow): any way to finish from the other also finishes from it, as an
    /// indeterminate operation not placed yet can take effect later, or never.
    fn place(
        &mut self,
        at: Cursor,
        op: usize,
        state: Value,
        open_top: Option<(usize, Value)>,
    ) -> Option<Value> {
        let after = self.history.steps[op].apply(state)?;
        let determinate = self.history.determinate[op];
        // An indeterminate operation that changes nothing could as well come last.
        if !determinate && after == state {
            return None;
        }
        if open_top.is_some_and(|(open, before)| self.is_unneeded(open, before, op, after)) {
            return None;
        }
        self.set_placed(at, op, true);
        let last_open = if determinate {
            0
        } else {
            Self::last_open_word(op, state)
        };
        let determinate_part = self.encode(after, last_open);
        let dominated = self.explored.contains(self.key.as_slice()) || {
            self.explored.insert(self.key.clone());
            // Without indeterminate operations dominance is equality, checked just above.
            !self.open.is_empty() && self.is_recently_dominated(determinate_part, last_open)
        };
        if dominated {
            self.set_placed(at, op, false);
            return None;
        }
        Some(after)
    }

    /// Whether the configuration in `key` (whose determinate part is that long, and whose
    /// last open word is `last_open`) is dominated by one explored recently; if not, it
    /// becomes one of those.
    fn is_recently_dominated(&mut self, determinate_part: usize, last_open: u64) -> bool {
        let determinate_key = &self.key[..determinate_part];
        if !self.recent.contains_key(determinate_key) {
            self.recent
                .insert(determinate_key.to_vec(), VecDeque::new());
        }
        let recent = self
            .recent
            .get_mut(determinate_key)
            .expect("inserted above");
        // With no indeterminate operation placed, only an equal configuration could
        // dominate, and equality was checked already.
        let any_open = self.placed_open.iter().any(|&word| word != 0);
        let dominated = any_open
            && recent
                .iter()
                .any(|(open, last)| dominates(open, *last, &self.placed_open, last_open));
        if !dominated {
            if recent.len() == RECENT_DOMINATORS {
                recent.pop_front();
            }
            recent.push_back((self.placed_open.clone(), last_open));
        }
        dominated
    }

    /// Encodes the configuration into `key`: the lowest rank not placed, the register's
    /// value `state`, the bits of the ranks from there up to its reach (a window as wide as
    /// the concurrency, where a bitset of all operations would make memory and hashing grow
    /// with the history), then `last_open` and the indeterminate operations placed. Returns
    /// the length of the part before `last_open`.
    fn encode(&mut self, state: Value, last_open: u64) -> usize {
        self.key.clear();
        self.key.push(self.low as u64);
        self.key.push(u64::from(state));
        // Past the last rank (all placed: the search is about to succeed) the window is empty.
        let reach = self.reach.get(self.low).copied().unwrap_or(self.low);
        let mut start = self.low;
        while start < reach {
            let (word, shift) = (start / 64, start % 64);
            let mut bits = self.placed[word] >> shift;
            if shift > 0 {
                if let Some(next) = self.placed.get(word + 1) {
                    bits |= next << (64 - shift);
                }
            }
            if reach - start < 64 {
                bits &= (1 << (reach - start)) - 1;
            }
            self.key.push(bits);
            start += 64;
        }
        let determinate_part = self.key.len();
        self.key.push(last_open);
        self.key.extend_from_slice(&self.placed_open);
        determinate_part
    }

    /// The memoized trace of an indeterminate `op` placed last from value `before`, on
    /// which the pruning rules depend; 0 stands for a determinate operation placed last.
    fn last_open_word(op: usize, before: Value) -> u64 {
        let op = u32::try_from(op + 1).expect("fewer than 2^32 operations per key");
        u64::from(op) | (u64::from(before) << 32)
    }

    /// What an indeterminate operation placed now, from value `state` with the barrier
    /// `barrier`, must produce for a candidate for the next place to need it (see
    /// [`Search::is_unneeded`]); placing it is pointless otherwise. Candidates are the
    /// calls before the barrier and the open operations invoked before it.
    fn wanted(&self, barrier: usize, state: Value) -> Wanted {
        let mut wanted = Wanted::default();
        let mut node = self.event_links.first();
        while node != barrier {
            match self.history.steps[self.event(node).op] {
                Step::Read(seen) if seen != state => wanted.values.push(seen),
                Step::Cas {
                    expected,
                    swapped: Some(true),
                    ..
                } if expected != state => wanted.values.push(expected),
                // It fails because something took the value it expects away.
                Step::Cas {
                    expected,
                    swapped: Some(false),
                    ..
                } if expected == state => wanted.any_change = true,
                _ => {}
            }
            node = self.event_links.next[node];
        }
        let deadline = self.event(barrier).time;
        // An open compare-and-set needs its expected value to change anything; what needs
        // it in turn is not followed up: wanting too much only costs time.
        let mut node = self.open_links.first();
        while node != self.open_links.tail() && self.open[node - 1].invoked <= deadline {
            if let Step::Cas { expected, .. } = self.history.steps[self.open[node - 1].op] {
                if expected != state {
                    wanted.values.push(expected);
                }
            }
            node = self.open_links.next[node];
        }
        if !wanted.any_change {
            for value in &wanted.values {
                let producers = self.producers.get(value).map_or(&[][..], Vec::as_slice);
                wanted
                    .nodes
                    .extend(producers.iter().copied().filter(|&node| {
                        self.open[node - 1].invoked <= deadline && !bit(&self.placed_open, node - 1)
                    }));
            }
            wanted.nodes.sort_unstable();
            wanted.nodes.dedup();
        }
        wanted
    }

    /// Whether `op`, placed right after the indeterminate `open` (which was placed from
    /// value `before`) and ending at value `after`, does without `open`: either `op` alone
    /// from `before` ends at `after` too, and `open` could come last instead; or `op` is
    /// determinate and `op` then `open` ends at `after`, and `open` could come one place
    /// later. Either move leaves a legal order legal, and each takes `open` past one more
    /// determinate operation, so repeating them ends: searching only orders where no such
    /// move applies misses no legal order.
    fn is_unneeded(&self, open: usize, before: Value, op: usize, after: Value) -> bool {
        let Some(without) = self.history.steps[op].apply(before) else {
            return false;
        };
        without == after
            || (self.history.determinate[op]
                && self.history.steps[open].apply(without) == Some(after))
    }

    fn set_placed(&mut self, at: Cursor, op: usize, placed: bool) {
        match at {
            Cursor::Event(_) => {
                let rank = self.rank[op];
                set_bit(&mut self.placed, rank, placed);
                if !placed {
                    self.low = self.low.min(rank);
                }
                while self.low < self.reach.len() && bit(&self.placed, self.low) {
                    self.low += 1;
                }
            }
            Cursor::Open { node, .. } => set_bit(&mut self.placed_open, node - 1, placed),
        }
    }

    fn note_barrier(&mut self, barrier: usize, state: Value, placed: &[Choice]) {
        if barrier > self.frontier.barrier {
            self.frontier.barrier = barrier;
            self.frontier.order.clear();
            self.frontier
                .order
                .extend(placed.iter().map(|choice| choice.op));
            self.frontier.values.clear();
        }
        if barrier == self.frontier.barrier && !self.frontier.values.contains(&state) {
            self.frontier.values.push(state);
        }
    }

    /// Describes the furthest barrier: the operation that cannot be placed, the context a
    /// human needs to see why.
    fn explain(&self) -> String {
        /// Longest lists shown; the rest is counted.
        const SHOWN: usize = 15;
        let history = self.history;
        let barrier = self.event(self.frontier.barrier);
        let stuck = barrier.op;
        let indeterminate = history.determinate.iter().filter(|d| !**d).count();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "{} operations on this key ({indeterminate} indeterminate, kept as possibly \
             taking effect at any time after their invocation). The shortest prefix of its \
             history that is not linearizable ends at the completion ({}) of\n    {}\n\
             Every operation that completed before then fits a legal order, but none of \
             those orders lets this one return what it returned: just before it the \
             register could only hold {}.",
            history.ops.len(),
            format_time(barrier.time),
            history.describe(stuck),
            join(self.frontier.values.iter().map(|&v| history.value_name(v))),
        );
        let in_order: HashSet<usize> = self.frontier.order.iter().copied().collect();
        let concurrent: Vec<usize> = (0..history.ops.len())
            .filter(|&op| {
                op != stuck && !in_order.contains(&op) && history.ops[op].1.invoked <= barrier.time
            })
            .collect();
        let _ = writeln!(
            out,
            "Operations invoked by then and not in the order below ({}):",
            concurrent.len()
        );
        for &op in concurrent.iter().take(SHOWN) {
            let _ = writeln!(out, "    {}", history.describe(op));
        }
        if concurrent.len() > SHOWN {
            let _ = writeln!(out, "    ... and {} more", concurrent.len() - SHOWN);
        }
        let order = &self.frontier.order;
        let skipped = order.len().saturating_sub(SHOWN);
        let _ = writeln!(
            out,
            "A longest legal order found ({} operations, oldest first{}), with the value \
             after each:",
            order.len(),
            if skipped > 0 {
                format!("; the first {skipped} not shown")
            } else {
                String::new()
            }
        );
        let mut state = ABSENT;
        for (position, &op) in order.iter().enumerate() {
            state = history.steps[op]
                .apply(state)
                .expect("the order was legal when found");
            if position >= skipped {
                let _ = writeln!(
                    out,
                    "    {}  => {}",
                    history.describe(op),
                    history.value_name(state)
                );
            }
        }
        out
    }
}

/// A hash map keyed by the search's words and values, with [`WordHasher`].
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// A hasher for the search's keys, which are words of bits: far cheaper than the default
/// SipHash, whose resistance to crafted collisions the checker has no use for.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.write_u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for &byte in chunks.remainder() {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        // Multiplying by an odd constant (2^64 / golden ratio) carries every bit of the
        // word into the bits above it; folding the high half back down lets the high bits
        // reach the low ones too, as the table uses both.
        let mixed = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 32);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

fn bit(words: &[u64], index: usize) -> bool {
    words[index / 64] & (1 << (index % 64)) != 0
}

fn set_bit(words: &mut [u64], index: usize, on: bool) {
    if on {
        words[index / 64] |= 1 << (index % 64);
    } else {
        words[index / 64] &= !(1 << (index % 64));
    }
}

/// Whether a configuration with indeterminate operations `open` placed, the last one as
/// `last` ([`Search::last_open_word`]), dominates one with `other_open` and `other_last`
/// (and the same determinate operations and value); see [`Search::place`].
fn dominates(open: &[u64], last: u64, other_open: &[u64], other_last: u64) -> bool {
    (last == 0 || last == other_last) && is_subset(open, other_open)
}

/// Whether every bit set in `small` is set in `large`.
fn is_subset(small: &[u64], large: &[u64]) -> bool {
    // A plain loop: this is the innermost loop of the dominance check, and the tests
    // crate is built without optimization, where iterator adaptors cost calls.
    let mut word = 0;
    while word < small.len() {
        if small[word] & !large[word] != 0 {
            return false;
        }
        word += 1;
    }
    true
}

fn display_value(value: Option<&str>) -> String {
    value.map_or_else(|| "<absent>".to_owned(), |value| format!("{value:?}"))
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(" or ")
}

/// Nanoseconds as milliseconds with full precision.
fn format_time(nanos: u64) -> String {
    format!("{}.{:06}ms", nanos / 1_000_000, nanos % 1_000_000)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { key } => write!(f, "read({key:?})"),
            Self::Write { key, value } => write!(f, "write({key:?}, {value:?})"),
            Self::Cas { key, expected, new } => write!(
                f,
                "cas({key:?}, {} -> {new:?})",
                display_value(expected.as_deref())
            ),
            Self::Delete { key } => write!(f, "delete({key:?})"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}: {} -> ", self.client, self.op)?;
        match &self.outcome {
            Outcome::Ok(Output::Read(value)) => f.write_str(&display_value(value.as_deref()))?,
            Outcome::Ok(Output::Cas(swapped)) => write!(f, "{swapped}")?,
            Outcome::Ok(Output::Ack) => f.write_str("ok")?,
            Outcome::Failed => f.write_str("failed")?,
            Outcome::Indeterminate => f.write_str("? (indeterminate)")?,
        }
        write!(f, "  [invoked {}", format_time(self.invoked))?;
        match (self.completed, &self.outcome) {
            (None, _) => f.write_str(", never completed]"),
            (Some(at), Outcome::Indeterminate) => write!(f, ", gave up {}]", format_time(at)),
            (Some(at), _) => write!(f, ", completed {}]", format_time(at)),
        }
    }
}

#[cfg(test)]
mod tests;
