//! Real `cairn` clusters: each member its own process, address, data dir and log file;
//! readiness, leadership and convergence found by polling with deadlines; no process,
//! namespace or bridge left behind, also when a test fails.
//!
//! Members of a loopback cluster listen on their own address `127.A.B.i` (ports 2379 and
//! 2380), unique to the test, so a restarted member finds its ports free and tests running
//! side by side never meet. Members of a namespaced cluster ([`ClusterSpec::in_namespaces`])
//! each run in a network namespace of a [`Lab`], which lets a test cut one off.
//!
//! A member that exits on its own fails the test when the cluster is dropped, with the tails
//! of all members' logs; so does any failing test.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_tests::cairn_bin;
use cairn_tests::launch::{exited, wait_for_exit, LaunchError};
use etcd_client::{Client, ConnectOptions, GetOptions, MemberAddOptions};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

use cairn_tests::netns::Lab;
use cairn_tests::power_cut::Disk;

/// `--heartbeat-interval` of every member: short, to keep the tests quick.
const HEARTBEAT: Duration = Duration::from_millis(50);

/// `--election-timeout` of every member: ten heartbeats, enough on a busy two-core box.
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest a test waits for the cluster to reach a state: readiness, a leader,
/// convergence, a catch-up.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The longest a member may take to exit after SIGTERM (a service manager's stop waits for
/// it; systemd's default patience is 90 s, far beyond what a clean stop needs).
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Pause between two checks of a polled condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Deadline of one client request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of one probe of a member (`Status`, `HashKV`) while polling.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The member ports; every member has addresses of its own.
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// etcd's customary metrics port (`--listen-metrics-urls`), on the member's client address.
const METRICS_PORT: u16 = 2381;

/// How many lines of each member's log a failing test prints.
const LOG_TAIL_LINES: usize = 80;

/// Clusters run one at a time: two at once on a two-core box would make elections flaky.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Loopback clusters created by this process so far; part of their addresses.
static LOOPBACK_CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// What cluster to start.
pub struct ClusterSpec {
    size: u8,
    namespaces: bool,
    power_cut_disks: bool,
    settings: Vec<(String, String)>,
}

impl ClusterSpec {
    /// A loopback cluster of `size` voting members.
    pub fn new(size: u8) -> ClusterSpec {
        ClusterSpec {
            size,
            namespaces: false,
            power_cut_disks: false,
            settings: Vec::new(),
        }
    }

    /// Keeps each member's data dir on a [`Disk`] of its own, so a test can cut a member's
    /// power ([`Member::power_cut`]): what it wrote but did not fsync is lost.
    pub fn on_power_cut_disks(mut self) -> ClusterSpec {
        self.power_cut_disks = true;
        self
    }

    /// Runs each member in a network namespace of its own, so it can be cut off.
    pub fn in_namespaces(mut self) -> ClusterSpec {
        self.namespaces = true;
        self
    }

    /// Gives every member the setting `--FLAG=VALUE`.
    pub fn setting(mut self, flag: &str, value: &str) -> ClusterSpec {
        self.settings.push((flag.to_owned(), value.to_owned()));
        self
    }
}

/// Where the members' addresses come from.
enum Network {
    /// `127.A.B.i`.
    Loopback(u8, u8),
    Namespaces(Lab),
}

/// What a member was started as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClusterState {
    New,
    Existing,
}

/// One member: a `cairn` process (or none while stopped) with its data dir and log.
pub struct Member {
    name: String,
    index: u8,
    client_url: String,
    peer_url: String,
    /// The address `/metrics` and `/health` are served on.
    metrics_host: String,
    namespace: Option<String>,
    /// The disk mounted on the data dir, if the cluster has them; before `dir`, so it is
    /// unmounted before the directory is removed.
    disk: Option<Disk>,
    dir: TempDir,
    initial_cluster: String,
    state: ClusterState,
    settings: Vec<(String, String)>,
    child: Option<Child>,
    id: u64,
    paused: bool,
    /// Removed from the cluster: it may exit on its own.
    retired: bool,
}

impl Member {
    /// The member's name, `n1`, `n2`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL.
    pub fn endpoint(&self) -> &str {
        &self.client_url
    }

    /// The member id, as its `Status` reports it.
    pub fn id(&self) -> u64 {
        assert_ne!(self.id, 0, "{} has not been ready yet", self.name);
        self.id
    }

    /// Running, not paused, not removed: expected to answer.
    pub fn is_serving(&self) -> bool {
        self.child.is_some() && !self.paused && !self.retired
    }

    /// The member's `GET /metrics` document.
    pub async fn metrics(&self) -> Result<String, String> {
        match self.page("/metrics").await? {
            (status, body) if status.starts_with("HTTP/1.1 200") => Ok(body),
            (status, body) => Err(format!("GET /metrics from {}: {status}\n{body}", self.name)),
        }
    }

    /// The status line and body of `GET path` on the member's metrics URL.
    pub async fn page(&self, path: &str) -> Result<(String, String), String> {
        let (host, target) = (self.metrics_host.clone(), path.to_owned());
        let response = tokio::task::spawn_blocking(move || {
            cairn_tests::http_get(&host, METRICS_PORT, &target)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("GET {path} from {}: {e}", self.name))?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) => Ok((
                head.lines().next().unwrap_or_default().to_owned(),
                body.to_owned(),
            )),
            None => Err(format!("GET {path} from {}: {response}", self.name)),
        }
    }

    /// A client of this member alone.
    pub async fn client(&self) -> Client {
        connect(&self.client_url, REQUEST_TIMEOUT).await
    }

    /// A client whose requests and streams require a leader (clientv3's
    /// `WithRequireLeader`, as kube-apiserver's watches use it).
    pub async fn client_requiring_leader(&self) -> Client {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_require_leader(true);
        Client::connect([&self.client_url], Some(options))
            .await
            .unwrap_or_else(|e| panic!("cannot make a client of {}: {e}", self.client_url))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9() needs a running member");
        child.kill().expect("send SIGKILL");
        child.wait().expect("reap the killed member");
        self.paused = false;
    }

    /// Sends SIGTERM and returns the exit status once the process has exited; fails the
    /// test if it is still running after [`STOP_DEADLINE`].
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let child = self
            .child
            .as_mut()
            .expect("terminate() needs a running member");
        match wait_for_exit(child, Instant::now() + STOP_DEADLINE, POLL_INTERVAL).await {
            Some(status) => {
                self.child = None;
                status
            }
            None => self.fail(&format!("still running {STOP_DEADLINE:?} after SIGTERM")),
        }
    }

    /// Cuts the member's power: kills the process (SIGKILL, reaped) and loses every write
    /// to its data dir that was not fsynced; returns how many bytes that was.
    /// [`Member::restart`] powers it on again.
    pub fn power_cut(&mut self) -> u64 {
        self.disk().power_off();
        self.kill9();
        self.disk().power_cut()
    }

    fn disk(&self) -> &Disk {
        self.disk
            .as_ref()
            .expect("power cuts need a cluster on power-cut disks")
    }

    /// Freezes the process with SIGSTOP.
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.paused = true;
    }

    /// Lets a paused process run again with SIGCONT.
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
    }

    /// The member's data dir (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the stopped member again on its data dir and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped member");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let launch_offset = self.spawn();
            match self.wait_ready(launch_offset).await {
                Ok(()) => return,
                // The killed process's sockets can hold the address for a moment.
                Err(LaunchError::AddressInUse) if Instant::now() < deadline => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(LaunchError::AddressInUse) => self.fail("its address stayed in use"),
                Err(LaunchError::Failed(why)) => self.fail(&why),
            }
        }
    }

    /// Marks the member as removed from the cluster: it may exit on its own from now on.
    pub fn retire(&mut self) {
        self.retired = true;
    }

    /// Whether the process has exited (it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if child.try_wait().expect("poll the member").is_some() {
            self.child = None;
            return true;
        }
        false
    }

    /// Fails the test naming this member; the cluster prints the logs as it is dropped.
    pub fn fail(&self, why: &str) -> ! {
        panic!("cairn member {}: {why}", self.name)
    }

    fn signal(&self, sig: Signal) {
        let child = self.child.as_ref().expect("a running member");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        signal::kill(pid, sig).expect("signal the member");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn log_tail(&self) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.namespace {
            Some(namespace) => {
                // `ip netns exec` execs cairn in place: the child's pid is cairn's.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", namespace]).arg(cairn_bin());
                cmd
            }
            None => Command::new(cairn_bin()),
        };
        // The member sees only the settings of this test, none from the test's environment.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("CAIRN_") {
                cmd.env_remove(var);
            }
        }
        let state = match self.state {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        };
        let data_dir = self.data_dir();
        let settings = [
            ("name", self.name.as_str()),
            ("data-dir", &data_dir.display().to_string()),
            ("listen-client-urls", &self.client_url),
            ("advertise-client-urls", &self.client_url),
            ("listen-peer-urls", &self.peer_url),
            ("initial-advertise-peer-urls", &self.peer_url),
            ("initial-cluster", &self.initial_cluster),
            (
                "listen-metrics-urls",
                &format!("http://{}:{METRICS_PORT}", self.metrics_host),
            ),
            ("initial-cluster-state", state),
            ("heartbeat-interval", &HEARTBEAT.as_millis().to_string()),
            (
                "election-timeout",
                &ELECTION_TIMEOUT.as_millis().to_string(),
            ),
        ]
        .map(|(flag, value)| (flag.to_owned(), value.to_owned()));
        // A test's own setting replaces the harness's default for the same flag.
        let defaults = settings
            .iter()
            .filter(|(flag, _)| !self.settings.iter().any(|(own, _)| own == flag));
        for (flag, value) in defaults.chain(&self.settings) {
            // One argument: `--auto-promote-learners=false` needs the `=`.
            cmd.arg(format!("--{flag}={value}"));
        }
        cmd
    }

    /// Spawns the process with its output appended to the log; returns where this launch's
    /// output starts in the log.
    fn spawn(&mut self) -> u64 {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the member log");
        writeln!(log, "==== harness: starting {} ====", self.name).expect("write the member log");
        let launch_offset = log.metadata().expect("member log metadata").len();
        let stderr = log.try_clone().expect("clone the log handle");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawn cairn");
        self.child = Some(child);
        launch_offset
    }

    /// Polls until the member answers `Status` naming a leader, or has exited.
    async fn wait_ready(&mut self, launch_offset: u64) -> Result<(), LaunchError> {
        let deadline = Instant::now() + DEADLINE;
        let log = self.log_path();
        loop {
            let child = self.child.as_mut().expect("a launched member");
            if let Some(error) = exited(child, &log, launch_offset) {
                self.child = None;
                return Err(error);
            }
            let why = match self.probe().await {
                Ok(id) => {
                    assert!(
                        self.id == 0 || self.id == id,
                        "{} came back with member id {id:x}, was {:x}",
                        self.name,
                        self.id
                    );
                    self.id = id;
                    return Ok(());
                }
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(LaunchError::Failed(format!(
                    "not ready within {DEADLINE:?}; last probe: {why}"
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Ready means `Status` answers and names a leader; gives the member id.
    async fn probe(&self) -> Result<u64, String> {
        let mut client = connect(&self.client_url, PROBE_TIMEOUT).await;
        let status = within(PROBE_TIMEOUT, client.status()).await?;
        if status.leader() == 0 {
            return Err("Status reports no leader yet".to_owned());
        }
        Ok(status.header().map_or(0, |header| header.member_id()))
    }
}

/// The members of one test and the network they live on.
pub struct Cluster {
    /// Before `network`: the processes stop before their namespaces go.
    members: Vec<Member>,
    network: Network,
    token: String,
    settings: Vec<(String, String)>,
    /// Members keep their data dirs on [`Disk`]s.
    power_cut_disks: bool,
    /// Last: the next test's cluster starts only after this one is gone.
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts the members, all founding a new cluster, and waits until each is ready.
    pub async fn start(spec: ClusterSpec) -> Cluster {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().await;
        let network = if spec.namespaces {
            Network::Namespaces(Lab::create())
        } else {
            loopback_network()
        };
        let token = format!("cairn-test-{}", std::process::id());
        let mut cluster = Cluster {
            members: Vec::new(),
            network,
            token,
            settings: spec.settings,
            power_cut_disks: spec.power_cut_disks,
            _turn: turn,
        };
        for _ in 0..spec.size {
            cluster.prepare_member(ClusterState::New);
        }
        let initial_cluster = cluster.initial_cluster();
        let mut offsets = Vec::new();
        for member in &mut cluster.members {
            member.initial_cluster.clone_from(&initial_cluster);
            offsets.push(member.spawn());
        }
        for (member, offset) in cluster.members.iter_mut().zip(offsets) {
            match member.wait_ready(offset).await {
                Ok(()) => {}
                Err(LaunchError::AddressInUse) => member.fail("its address is in use"),
                Err(LaunchError::Failed(why)) => member.fail(&why),
            }
        }
        cluster
    }

    /// Starts every member, all stopped, at once (none can be ready before a quorum runs)
    /// and waits until each is ready.
    pub async fn restart_all(&mut self) {
        let offsets: Vec<u64> = self
            .members
            .iter_mut()
            .map(|member| {
                assert!(
                    member.child.is_none(),
                    "restart_all() needs stopped members"
                );
                member.spawn()
            })
            .collect();
        for (member, offset) in self.members.iter_mut().zip(offsets) {
            match member.wait_ready(offset).await {
                Ok(()) => {}
                // The killed process's sockets held the address: try this one alone again.
                Err(LaunchError::AddressInUse) => member.restart().await,
                Err(LaunchError::Failed(why)) => member.fail(&why),
            }
        }
    }

    /// Member `index` (in the order started, from 0).
    pub fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    /// Member `index`, to stop, pause or restart it.
    pub fn member_mut(&mut self, index: usize) -> &mut Member {
        &mut self.members[index]
    }

    /// How many members were started, removed ones included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Indices of the members expected to answer.
    pub fn serving(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&index| self.members[index].is_serving())
            .collect()
    }

    /// The index of the member with id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|member| member.id == id)
    }

    /// Waits until every member in `among` names the same leader, itself one of `among`;
    /// returns the leader's index.
    pub async fn leader_among(&self, among: &[usize]) -> usize {
        let found = poll(&format!("a leader agreed by members {among:?}"), || async {
            let mut leaders = Vec::new();
            for &index in among {
                let mut client = connect(self.members[index].endpoint(), PROBE_TIMEOUT).await;
                let status = within(PROBE_TIMEOUT, client.status()).await?;
                leaders.push(status.leader());
            }
            let leader = leaders[0];
            if leader == 0 || leaders.iter().any(|&other| other != leader) {
                return Err(format!("members report leaders {leaders:x?}"));
            }
            match self.index_of(leader) {
                Some(index) if among.contains(&index) => Ok(index),
                _ => Err(format!("the leader {leader:x} is not among them")),
            }
        })
        .await;
        expect_ok(found)
    }

    /// The leader as all serving members see it.
    pub async fn leader(&self) -> usize {
        self.leader_among(&self.serving()).await
    }

    /// Waits until every member in `among` has applied the cluster's latest revision and
    /// asserts that their `HashKV` at it agree.
    pub async fn assert_converged(&self, among: &[usize]) {
        let client = self.members[among[0]].client().await;
        let revision = expect_ok(
            retry("a linearizable read for the latest revision", || {
                let mut client = client.clone();
                async move { client.get("converged", None).await }
            })
            .await
            .map(|response| response.header().map_or(0, |header| header.revision())),
        );
        let mut hashes = Vec::new();
        for &index in among {
            let member = &self.members[index];
            let hash = poll(
                &format!("HashKV at {revision} on {}", member.name),
                || async {
                    let mut client = connect(member.endpoint(), PROBE_TIMEOUT).await;
                    within(PROBE_TIMEOUT, client.hash_kv(revision)).await
                },
            )
            .await;
            hashes.push((member.name.clone(), expect_ok(hash).hash()));
        }
        assert!(
            hashes.iter().all(|(_, hash)| *hash == hashes[0].1),
            "HashKV at revision {revision} differs between members: {hashes:x?}"
        );
    }

    /// Fails unless a linearizable read of `prefix` through member `index` finds every key of
    /// `written`, each holding its own name as its value (as the tests' writers make them).
    pub async fn assert_none_missing(&self, index: usize, prefix: &str, written: &[String]) {
        let client = self.members[index].client().await;
        let stored = expect_ok(
            retry("a linearizable read of every written key", || {
                let mut client = client.clone();
                async move {
                    client
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await,
        );
        let stored: HashSet<(&[u8], &[u8])> = stored
            .kvs()
            .iter()
            .map(|kv| (kv.key(), kv.value()))
            .collect();
        let lost: Vec<&String> = written
            .iter()
            .filter(|key| !stored.contains(&(key.as_bytes(), key.as_bytes())))
            .collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes missing on {}: {:?}",
            lost.len(),
            written.len(),
            self.members[index].name,
            &lost[..lost.len().min(20)]
        );
    }

    /// Asks member `via` to add a member (a learner when `learner`), then starts it with
    /// `--initial-cluster-state existing`; returns its index once it is ready.
    pub async fn add_member(&mut self, via: usize, learner: bool) -> usize {
        let index = self.prepare_member(ClusterState::Existing);
        let peer_url = self.members[index].peer_url.clone();
        let mut client = self.members[via].client().await;
        let options = learner.then(|| MemberAddOptions::new().with_is_learner());
        // One attempt, as `etcdctl member add` makes: MemberAdd is not idempotent.
        let added =
            expect_ok(within(REQUEST_TIMEOUT, client.member_add([&peer_url], options)).await);
        let announced = added
            .member()
            .unwrap_or_else(|| panic!("MemberAdd answered without the member: {added:?}"));
        assert_eq!(
            (announced.peer_urls(), announced.is_learner()),
            ([peer_url].as_slice(), learner),
            "MemberAdd answered with another member"
        );
        let announced_id = announced.id();
        let initial_cluster = self.initial_cluster();
        let member = &mut self.members[index];
        member.initial_cluster = initial_cluster;
        let offset = member.spawn();
        match member.wait_ready(offset).await {
            Ok(()) => {}
            Err(LaunchError::AddressInUse) => member.fail("its address is in use"),
            Err(LaunchError::Failed(why)) => member.fail(&why),
        }
        assert_eq!(
            member.id, announced_id,
            "the new member's id differs from the one MemberAdd gave"
        );
        index
    }

    /// Cuts member `index` off from the other members; clients still reach it.
    pub fn cut(&self, index: usize) {
        self.lab().cut(self.members[index].index);
    }

    /// Reconnects member `index` to the other members.
    pub fn heal(&self, index: usize) {
        self.lab().heal(self.members[index].index);
    }

    fn lab(&self) -> &Lab {
        match &self.network {
            Network::Namespaces(lab) => lab,
            Network::Loopback(..) => panic!("cutting members needs ClusterSpec::in_namespaces"),
        }
    }

    /// `name=peerURL,...` of the members not removed.
    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .filter(|member| !member.retired)
            .map(|member| format!("{}={}", member.name, member.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Adds a member that is not started yet, with the next name and address.
    fn prepare_member(&mut self, state: ClusterState) -> usize {
        let index = u8::try_from(self.members.len()).expect("fewer than 256 members");
        let (client_host, peer_host, namespace) = match &mut self.network {
            Network::Loopback(a, b) => {
                let host = format!("127.{a}.{b}.{}", index + 1);
                (host.clone(), host, None)
            }
            Network::Namespaces(lab) => {
                let host = lab.add_host(index);
                (host.client_ip, host.peer_ip, Some(host.namespace))
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("cairn-cluster-")
            .tempdir()
            .expect("create a temporary directory for the member");
        let disk = self.power_cut_disks.then(|| {
            let data_dir = dir.path().join("data");
            fs::create_dir(&data_dir).expect("create the member's data dir");
            Disk::mount(&data_dir).expect("mount a power-cut disk on the member's data dir")
        });
        let mut settings = vec![("initial-cluster-token".to_owned(), self.token.clone())];
        settings.extend(self.settings.iter().cloned());
        self.members.push(Member {
            name: format!("n{}", index + 1),
            index,
            client_url: format!("http://{client_host}:{CLIENT_PORT}"),
            peer_url: format!("http://{peer_host}:{PEER_PORT}"),
            metrics_host: client_host.to_string(),
            namespace,
            disk,
            dir,
            initial_cluster: String::new(),
            state,
            settings,
            child: None,
            id: 0,
            paused: false,
            retired: false,
        });
        self.members.len() - 1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut died = Vec::new();
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                if let Ok(Some(status)) = child.try_wait() {
                    if !member.retired {
                        died.push(format!("{} exited with {status}", member.name));
                    }
                }
                // Best effort: nothing can be done here about a failing kill or wait.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !std::thread::panicking() && died.is_empty() {
            return;
        }
        for member in &self.members {
            eprintln!(
                "---- log of cairn member {} ({}) ----\n{}\n---- end of {}'s log ----",
                member.name,
                member.log_path().display(),
                member.log_tail(),
                member.name
            );
        }
        if !std::thread::panicking() {
            panic!("members died during the test: {}", died.join("; "));
        }
    }
}

/// `127.A.B.0/24` for a loopback cluster, with `A.B` unique to the process and the cluster.
fn loopback_network() -> Network {
    let pid = std::process::id();
    loop {
        let serial = LOOPBACK_CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let a = u8::try_from(1 + (pid + serial / 256) % 250).expect("fits in u8");
        let b = u8::try_from(serial % 256).expect("fits in u8");
        // Someone else's member on this address would take the ports.
        if TcpListener::bind((format!("127.{a}.{b}.1"), CLIENT_PORT)).is_ok() {
            return Network::Loopback(a, b);
        }
    }
}

/// The value of `result`, or a failed test saying what went wrong.
#[track_caller]
pub fn expect_ok<T>(result: Result<T, String>) -> T {
    match result {
        Ok(value) => value,
        Err(why) => panic!("{why}"),
    }
}

/// Connects an etcd client to `endpoint` with `timeout` for each request. The connection
/// itself is made lazily, so this does not fail for a member that is down.
pub async fn connect(endpoint: &str, timeout: Duration) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    Client::connect([endpoint], Some(options))
        .await
        .unwrap_or_else(|e| panic!("cannot make a client of {endpoint}: {e}"))
}

/// `request` with a deadline, its error as text.
pub async fn within<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Waits until `counter` reaches `target`.
pub async fn wait_for_count(counter: &AtomicUsize, target: usize, what: &str) {
    expect_ok(
        poll(what, || async {
            let count = counter.load(Ordering::Relaxed);
            if count >= target {
                Ok(())
            } else {
                Err(format!("{count} of {target}"))
            }
        })
        .await,
    );
}

/// Calls `attempt` until it succeeds or [`DEADLINE`] passes; the error names `what` and the
/// last failure.
pub async fn poll<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!("no {what} within {DEADLINE:?}; last: {why}"))
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// A client request repeated until it succeeds (elections make requests fail for a
/// moment), each try within [`REQUEST_TIMEOUT`].
pub async fn retry<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    poll(what, || within(REQUEST_TIMEOUT, attempt())).await
}

/// Puts `key` = `value` through `client`, retrying until acknowledged; the write's revision.
pub async fn put_acknowledged(client: &Client, key: &str, value: &str) -> i64 {
    let written = retry(&format!("acknowledged put of {key}"), || {
        let mut client = client.clone();
        async move { client.put(key, value, None).await }
    })
    .await;
    expect_ok(written)
        .header()
        .map_or(0, |header| header.revision())
}

/// The value of `key` in a linearizable read through `client`, retried while the read
/// fails (during an election); the first answer counts. `None` when absent.
pub async fn linearizable_value(client: &Client, key: &str) -> Option<String> {
    let read = poll(&format!("a linearizable read of {key}"), || {
        value_of(client, key, false)
    })
    .await;
    expect_ok(read)
}

/// The value of `key` through `client`, linearizable or serializable; `None` when absent.
pub async fn value_of(
    client: &Client,
    key: &str,
    serializable: bool,
) -> Result<Option<String>, String> {
    let options = serializable.then(|| GetOptions::new().with_serializable());
    let mut client = client.clone();
    let response = within(REQUEST_TIMEOUT, client.get(key, options)).await?;
    Ok(response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}
