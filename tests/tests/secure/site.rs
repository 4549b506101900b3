//! A site: hosts in network namespaces of a [`Lab`], each able to run `cairn` commands and
//! a long-running `cairn` member, and `etcdctl` run from the test's namespace against them.
//!
//! Every member's output goes to a log file; a failing test prints the tails. Members are
//! killed and the namespaces removed when the site is dropped.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn_tests::cairn_bin;
use cairn_tests::netns::{Host, Lab};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;

/// Raft timing of every member: short, to keep the tests quick.
const TIMING: [(&str, &str); 2] = [
    ("CAIRN_HEARTBEAT_INTERVAL", "50"),
    ("CAIRN_ELECTION_TIMEOUT", "500"),
];

/// The longest a test waits for a state: readiness, a join, a promotion, a renewal.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Pause between two checks of a polled condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How many lines of each member's log a failing test prints.
const LOG_TAIL_LINES: usize = 60;

/// Sites run one at a time: three members each on a two-core box are enough.
static ONE_SITE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One host: its namespace, data dir and member process.
pub struct SiteHost {
    pub net: Host,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl SiteHost {
    /// The member's client URL on the address the test reaches.
    pub fn client_url(&self) -> String {
        format!("https://{}:2379", self.net.client_ip)
    }

    /// A peer URL of the member, on its link to the other hosts.
    pub fn peer_url(&self) -> String {
        format!("https://{}:2380", self.net.peer_ip)
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        self.data_dir.join("pki").join(file)
    }
}

pub struct Site {
    hosts: Vec<SiteHost>,
    dir: TempDir,
    // Dropped after the hosts' processes are killed (see `Drop`).
    _lab: Lab,
    _turn: MutexGuard<'static, ()>,
}

impl Site {
    /// `count` hosts on one bridge.
    pub fn new(count: u8) -> Site {
        let turn = ONE_SITE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lab = Lab::create();
        let dir = tempfile::tempdir().expect("temp dir");
        let hosts = (0..count)
            .map(|index| SiteHost {
                net: lab.add_host(index),
                data_dir: dir.path().join(format!("host{index}")),
                log: dir.path().join(format!("host{index}.log")),
                child: None,
            })
            .collect();
        Site {
            hosts,
            dir,
            _lab: lab,
            _turn: turn,
        }
    }

    /// A directory of the site's own for files a test makes.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn host(&self, index: usize) -> &SiteHost {
        &self.hosts[index]
    }

    fn command(&self, index: usize, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[index].net.namespace])
            .arg(cairn_bin())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .envs(TIMING)
            .envs(envs.iter().copied());
        cmd
    }

    /// Starts `cairn ARGS --data-dir <the host's>` as the host's member.
    pub fn start(&mut self, index: usize, args: &[&str], envs: &[(&str, &str)]) {
        let data_dir = self.hosts[index].data_dir.clone();
        self.start_in(index, &data_dir, args, envs);
    }

    /// Starts `cairn ARGS --data-dir DATA_DIR` as the host's member.
    pub fn start_in(
        &mut self,
        index: usize,
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) {
        assert!(
            self.hosts[index].child.is_none(),
            "host {index} runs a member already"
        );
        let data_dir = data_dir.display().to_string();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--data-dir", &data_dir]);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.hosts[index].log)
            .expect("log file");
        let child = self
            .command(index, &full, envs)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start cairn");
        self.hosts[index].child = Some(child);
    }

    /// Runs `cairn ARGS` to completion on host `index`.
    pub fn run(&self, index: usize, args: &[&str]) -> Output {
        self.command(index, args, &[])
            .stdin(Stdio::null())
            .output()
            .expect("run cairn")
    }

    /// Waits for host `index`'s member to exit and returns its status and log.
    pub fn wait_exit(
        &mut self,
        index: usize,
        within: Duration,
    ) -> (std::process::ExitStatus, String) {
        let give_up = Instant::now() + within;
        let child = self.hosts[index].child.as_mut().expect("a member");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.hosts[index].child = None;
                return (status, self.log(index));
            }
            if Instant::now() > give_up {
                self.fail(&format!("host {index}'s member did not exit"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills host `index`'s member.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.hosts[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self, index: usize) -> String {
        fs::read_to_string(&self.hosts[index].log).unwrap_or_default()
    }

    /// Panics with `why` and the tail of every member's log.
    pub fn fail(&self, why: &str) -> ! {
        panic!("{why}\n{}", self.log_tails());
    }

    fn log_tails(&self) -> String {
        let mut tails = String::new();
        for (index, _) in self.hosts.iter().enumerate() {
            let log = self.log(index);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            tails.push_str(&format!("--- host {index} ---\n{}\n", tail.join("\n")));
        }
        tails
    }

    /// The join token of host `index`'s member.
    pub fn token(&self, index: usize) -> String {
        let output = Command::new(cairn_bin())
            .args(["token", "--data-dir"])
            .arg(&self.hosts[index].data_dir)
            .output()
            .expect("run cairn token");
        assert!(
            output.status.success(),
            "cairn token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Polls `check` until it gives `Some`, failing the test at the deadline.
    pub fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let give_up = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() > give_up {
                self.fail(&format!("timed out waiting for {what}"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        for index in 0..self.hosts.len() {
            self.kill(index);
        }
    }
}

/// The certificate files a client shows: CA, certificate, key.
#[derive(Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientFiles {
    /// The admin client certificate `cairn init` made in `data_dir`.
    pub fn admin_of(host: &SiteHost) -> ClientFiles {
        ClientFiles {
            ca: host.pki("ca.crt"),
            cert: host.pki("admin.crt"),
            key: host.pki("admin.key"),
        }
    }
}

/// Runs `etcdctl ARGS` against `endpoint` with the given TLS files, from the test's
/// namespace.
pub fn etcdctl(
    endpoint: &str,
    tls: Option<&ClientFiles>,
    ca_only: Option<&Path>,
    args: &[&str],
) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3").args([
        "--endpoints",
        endpoint,
        "--dial-timeout=3s",
        "--command-timeout=5s",
    ]);
    if let Some(files) = tls {
        cmd.arg("--cacert")
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key);
    } else if let Some(ca) = ca_only {
        cmd.arg("--cacert").arg(ca);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run etcdctl (scripts/install-test-deps.sh installs etcd-client): {e}")
        })
}

/// Each member's name and whether it is a learner, as `etcdctl member list` shows them.
pub fn member_list(endpoint: &str, tls: &ClientFiles) -> Option<Vec<(String, bool)>> {
    let output = etcdctl(endpoint, Some(tls), None, &["member", "list", "-w", "json"]);
    if !output.status.success() {
        return None;
    }
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    Some(
        list["members"]
            .as_array()?
            .iter()
            .map(|member| {
                (
                    member["name"].as_str().unwrap_or("").to_owned(),
                    member["isLearner"].as_bool().unwrap_or(false),
                )
            })
            .collect(),
    )
}

/// Text of a command's standard output and error.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a gRPC client sends
/// first, so that a server that accepted the session answers with its own SETTINGS.
const HTTP2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Opens TLS to the client port of the member at `ip`, trusting `ca` and showing `client`'s
/// certificate if given, and checks the server then talks HTTP/2. Returns the serial number
/// and the end of validity (Unix seconds) of the certificate it serves, or why the session
/// failed: with TLS 1.3 a refused client certificate shows as an alert after the handshake.
pub fn tls_session(
    ip: &str,
    ca: &Path,
    client: Option<&ClientFiles>,
) -> Result<(Vec<u8>, i64), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(files) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(ip.to_owned()).map_err(|e| e.to_string())?;
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect((ip, 2379)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::Stream::new(&mut connection, &mut tcp);
    stream
        .write_all(HTTP2_PREFACE)
        .map_err(|e| format!("TLS session refused: {e}"))?;
    let mut answer = [0u8; 9];
    match stream.read(&mut answer) {
        Ok(0) => return Err("the server closed the session".to_owned()),
        Ok(_) => {}
        Err(error) => return Err(format!("TLS session refused: {error}")),
    }
    let leaf = connection
        .peer_certificates()
        .and_then(<[_]>::first)
        .ok_or("no server certificate")?
        .clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| e.to_string())?;
    Ok((
        cert.raw_serial().to_vec(),
        cert.validity().not_after.timestamp(),
    ))
}
