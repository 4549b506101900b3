//! Real `cairn` processes for the tests: free loopback ports, a private data dir, a log
//! file, readiness by polling, and no process left behind.
//!
//! A [`Node`] owns a temporary directory holding the data dir (`data/`, kept across
//! [`Node::restart`]), the process's combined stdout/stderr (`node.log`) and, when the
//! settings are given as a file, `cairn.toml`. The log's tail is printed when a test fails,
//! and a node that died on its own fails the test.

use std::fmt::Debug;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use cairn_tests::cairn_bin;
use cairn_tests::launch::{exited, wait_for_exit, LaunchError};
use etcd_client::{Client, ConnectOptions, KeyValue, ResponseHeader};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The longest the harness waits for anything: readiness, an exit after a signal.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Pause between two checks of a condition that is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How many lines of the node's log a failure message shows.
const LOG_TAIL_LINES: usize = 200;

/// Attempts with fresh ports when another process took a port between our probe and the
/// node's bind.
const PORT_ATTEMPTS: usize = 3;

/// How a node's settings reach the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingsVia {
    /// `--flag value` arguments.
    Flags,
    /// `CAIRN_FLAG_NAME=value` environment variables.
    Env,
    /// A TOML file with the flag names as keys, passed as `--config-file`.
    ConfigFile,
}

/// What to start: the member name, extra settings, and how the settings are passed.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    name: String,
    via: SettingsVia,
    extra: Vec<(String, String)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            name: "n1".to_owned(),
            via: SettingsVia::Flags,
            extra: Vec::new(),
        }
    }
}

impl NodeOptions {
    /// Sets the member name (`--name`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Chooses how the settings are passed.
    pub fn via(mut self, via: SettingsVia) -> Self {
        self.via = via;
        self
    }

    /// Adds a setting by its flag name without dashes, e.g. `("max-request-bytes", "4096")`.
    pub fn setting(mut self, flag: &str, value: &str) -> Self {
        self.extra.push((flag.to_owned(), value.to_owned()));
        self
    }
}

/// One running (or stopped) `cairn` process with its own ports and data dir.
pub struct Node {
    options: NodeOptions,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Node {
    /// Starts a node on free loopback ports with a fresh data dir and waits until it
    /// answers `Status` with a leader.
    pub async fn start(options: NodeOptions) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .expect("create a temporary directory for the node");
        let mut node = Node {
            options,
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            (node.client_port, node.peer_port) = free_port_pair();
            match node.launch().await {
                Ok(()) => return node,
                Err(LaunchError::AddressInUse) if attempt < PORT_ATTEMPTS => continue,
                Err(LaunchError::AddressInUse) => {
                    node.fail(&format!("no free ports in {PORT_ATTEMPTS} attempts"))
                }
                Err(LaunchError::Failed(why)) => node.fail(&why),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts the stopped node again on the same ports and data dir.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped node");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.launch().await {
                Ok(()) => return,
                // The old process's ports can be taken for a moment by a client's
                // ephemeral port; they come free again.
                Err(LaunchError::AddressInUse) if Instant::now() < deadline => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(LaunchError::AddressInUse) => self.fail("ports stayed in use"),
                Err(LaunchError::Failed(why)) => self.fail(&why),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URL's port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer URL, `http://127.0.0.1:PORT`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The node's data dir (it may not exist before the node creates it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A client connected to this node, with a request deadline.
    pub async fn client(&self) -> Client {
        connect(&self.endpoint(), DEADLINE)
            .await
            .unwrap_or_else(|e| self.fail(&format!("cannot connect a client: {e}")))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9() needs a running node");
        child.kill().expect("send SIGKILL");
        child.wait().expect("reap the killed node");
    }

    /// Sends SIGTERM and returns the exit status once the process has exited.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM).await
    }

    /// Sends `sig` and returns the exit status once the process has exited.
    pub async fn stop_with(&mut self, sig: Signal) -> ExitStatus {
        let id = self
            .child
            .as_ref()
            .expect("stop_with() needs a running node")
            .id();
        let pid = Pid::from_raw(i32::try_from(id).expect("pid fits in i32"));
        signal::kill(pid, sig).expect("send the signal");
        let child = self.child.as_mut().expect("a running node");
        match wait_for_exit(child, Instant::now() + DEADLINE, POLL_INTERVAL).await {
            Some(status) => {
                self.child = None;
                status
            }
            None => self.fail(&format!("no exit within {DEADLINE:?} after {sig}")),
        }
    }

    /// The last lines of the node's log.
    fn log_tail(&self) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Fails the test; dropping the node while panicking kills it and prints its log.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "cairn node {}: {why} (its log follows on stderr)",
            self.options.name
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("cairn.toml")
    }

    /// The settings every node gets, then the extra ones, as (flag name, value).
    fn settings(&self) -> Vec<(String, String)> {
        let name = &self.options.name;
        let client_url = self.endpoint();
        let peer_url = self.peer_url();
        let mut settings: Vec<(String, String)> = [
            ("name", name.clone()),
            ("data-dir", self.data_dir().display().to_string()),
            ("listen-client-urls", client_url.clone()),
            ("advertise-client-urls", client_url),
            ("listen-peer-urls", peer_url.clone()),
            ("initial-advertise-peer-urls", peer_url.clone()),
            ("initial-cluster", format!("{name}={peer_url}")),
            ("initial-cluster-state", "new".to_owned()),
        ]
        .into_iter()
        .map(|(flag, value)| (flag.to_owned(), value))
        .collect();
        settings.extend(self.options.extra.iter().cloned());
        settings
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(cairn_bin());
        // The node sees only the settings of this test, none from the test's environment.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("CAIRN_") {
                cmd.env_remove(var);
            }
        }
        let settings = self.settings();
        match self.options.via {
            SettingsVia::Flags => {
                for (flag, value) in settings {
                    cmd.arg(format!("--{flag}")).arg(value);
                }
            }
            SettingsVia::Env => {
                for (flag, value) in settings {
                    cmd.env(env_var_name(&flag), value);
                }
            }
            SettingsVia::ConfigFile => {
                fs::write(self.config_path(), toml_config(&settings)).expect("write cairn.toml");
                cmd.arg("--config-file").arg(self.config_path());
            }
        }
        cmd
    }

    /// Spawns the process with its output appended to the log, then waits for readiness.
    async fn launch(&mut self) -> Result<(), LaunchError> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the node log");
        writeln!(
            log,
            "==== harness: starting cairn, client port {}, peer port {} ====",
            self.client_port, self.peer_port
        )
        .expect("write the node log");
        let launch_offset = log.metadata().expect("node log metadata").len();
        let stderr = log.try_clone().expect("clone the log handle");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawn cairn");
        self.child = Some(child);
        self.wait_ready(launch_offset).await
    }

    /// Polls until the node is ready or has exited; `launch_offset` is where this launch's
    /// output starts in the log.
    async fn wait_ready(&mut self, launch_offset: u64) -> Result<(), LaunchError> {
        let deadline = Instant::now() + DEADLINE;
        let log = self.log_path();
        loop {
            let child = self.child.as_mut().expect("a launched node");
            if let Some(error) = exited(child, &log, launch_offset) {
                self.child = None;
                return Err(error);
            }
            let why = match self.probe().await {
                Ok(()) => return Ok(()),
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

    /// Ready means: `Status` answers and names a leader.
    async fn probe(&self) -> Result<(), String> {
        let timeout = Duration::from_secs(2);
        let mut client = connect(&self.endpoint(), timeout)
            .await
            .map_err(|e| e.to_string())?;
        let status = tokio::time::timeout(timeout, client.status())
            .await
            .map_err(|_| "status timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if status.leader() == 0 {
            return Err("status reports no leader yet".to_owned());
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut exited = None;
        if let Some(mut child) = self.child.take() {
            exited = child.try_wait().ok().flatten();
            // Best effort: nothing can be done here about a failing kill or wait.
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = format!(
            "---- log of cairn node {} ({}) ----\n{}\n---- end of node log ----",
            self.options.name,
            self.log_path().display(),
            self.log_tail()
        );
        if std::thread::panicking() {
            eprintln!("{log}");
        } else if let Some(status) = exited {
            panic!(
                "cairn node {} died during the test with {status}\n{log}",
                self.options.name
            );
        }
    }
}

/// Connects an etcd client to `endpoint` with `timeout` for each request.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(timeout);
    Client::connect([endpoint], Some(options)).await
}

/// Two distinct ports that were free a moment ago.
fn free_port_pair() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("probe port address").port();
    (port(&a), port(&b))
}

/// `data-dir` → `CAIRN_DATA_DIR`.
fn env_var_name(flag: &str) -> String {
    format!("CAIRN_{}", flag.to_uppercase().replace('-', "_"))
}

/// A TOML document with one `flag = value` line per setting; values made only of digits
/// are integers, the rest strings.
fn toml_config(settings: &[(String, String)]) -> String {
    settings
        .iter()
        .map(|(flag, value)| {
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                format!("{flag} = {value}\n")
            } else {
                // A JSON string is a valid TOML basic string.
                format!("{flag} = {}\n", serde_json::Value::from(value.as_str()))
            }
        })
        .collect()
}

/// The revision in a response header that must be present.
#[track_caller]
pub fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.expect("the response has a header").revision()
}

/// Asserts that `result` is the gRPC error etcd returns: same code, same message.
#[track_caller]
pub fn assert_etcd_error<T: Debug>(
    result: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "wrong gRPC error: {status:?}"
        ),
        other => panic!("expected gRPC error {code:?} {message:?}, got {other:?}"),
    }
}

/// Puts `key` = `value` and returns the revision of the write.
pub async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    let response = client.put(key, value, None).await.expect("put");
    revision(response.header())
}

/// The keys of `kvs` as text, in the order given.
pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}
