//! The unmodified `etcdctl` (Debian's `etcd-client` package, API v3) against a node.

use std::process::{Output, Stdio};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::harness::{put, Node, NodeOptions, DEADLINE};

/// Runs `etcdctl` against one endpoint (the lease, lock and election tests use it too).
pub(crate) struct Etcdctl {
    endpoint: String,
}

impl Etcdctl {
    /// Names the node by its URL, `http://127.0.0.1:PORT`.
    pub(crate) fn new(node: &Node) -> Etcdctl {
        Etcdctl {
            endpoint: node.endpoint(),
        }
    }

    /// Names the node as `127.0.0.1:PORT`, without a scheme.
    fn by_address(node: &Node) -> Etcdctl {
        let endpoint = node.endpoint();
        let address = endpoint
            .strip_prefix("http://")
            .expect("an http:// endpoint");
        Etcdctl {
            endpoint: address.to_owned(),
        }
    }

    /// `etcdctl --endpoints=E ARGS`, to run or to spawn.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .kill_on_drop(true);
        command
    }

    /// Runs `etcdctl --endpoints=E ARGS`, feeding `stdin`, and returns its output.
    pub(crate) async fn run(&self, args: &[&str], stdin: &str) -> Output {
        let spawned = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "etcdctl is not on PATH: run scripts/install-test-deps.sh (it installs Debian's \
                 etcd-client package)"
            ),
            Err(e) => panic!("cannot run etcdctl: {e}"),
        };
        let mut input = child.stdin.take().expect("etcdctl stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("feed etcdctl");
        drop(input);
        tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within {DEADLINE:?}"))
            .expect("wait for etcdctl")
    }

    /// Runs a command that must succeed and returns its stdout.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        self.ok_with_stdin(args, "").await
    }

    async fn ok_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        let output = self.run(args, stdin).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed with {}: {stderr}",
            output.status
        );
        String::from_utf8(output.stdout).expect("etcdctl prints UTF-8")
    }

    /// Runs a command with `-w json` and parses its output.
    async fn json(&self, args: &[&str]) -> Value {
        let args = [&["-w", "json"], args].concat();
        let stdout = self.ok(&args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e} in {stdout:?}"))
    }
}

fn u64_at(json: &Value, pointer: &str) -> u64 {
    json.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned integer at {pointer} in {json}"))
}

fn i64_at(json: &Value, pointer: &str) -> i64 {
    json.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {json}"))
}

fn str_at<'a>(json: &'a Value, pointer: &str) -> &'a str {
    json.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {json}"))
}

#[tokio::test]
async fn etcdctl_puts_gets_and_deletes() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);

    assert_eq!(ctl.ok(&["put", "foo", "bar"]).await, "OK\n");
    assert_eq!(ctl.ok(&["get", "foo"]).await, "foo\nbar\n");
    assert_eq!(ctl.ok(&["del", "foo"]).await, "1\n");
    assert_eq!(ctl.ok(&["get", "foo"]).await, "");
    assert_eq!(ctl.ok(&["del", "foo"]).await, "0\n");
}

#[tokio::test]
async fn etcdctl_gets_by_prefix_revision_limit_and_sort() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);
    let mut c = node.client().await;
    let first = put(&mut c, "a/1", "x").await;
    put(&mut c, "a/2", "y").await;
    put(&mut c, "a/3", "z").await;
    put(&mut c, "b", "w").await;
    put(&mut c, "a/1", "x2").await;

    assert_eq!(
        ctl.ok(&["get", "--prefix", "a/"]).await,
        "a/1\nx2\na/2\ny\na/3\nz\n"
    );
    assert_eq!(
        ctl.ok(&["get", "--prefix", "--limit=2", "a/"]).await,
        "a/1\nx2\na/2\ny\n"
    );
    assert_eq!(
        ctl.ok(&["get", &format!("--rev={first}"), "a/1"]).await,
        "a/1\nx\n"
    );
    assert_eq!(
        ctl.ok(&[
            "get",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "a/"
        ])
        .await,
        "a/1\nx2\na/3\nz\na/2\ny\n"
    );
}

#[tokio::test]
async fn etcdctl_json_output_carries_the_header_and_base64_pairs() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);
    let mut c = node.client().await;
    put(&mut c, "foo", "old").await;
    let written = c.put("foo", "bar", None).await.expect("put");
    let header = written.header().expect("put header");

    let json = ctl.json(&["get", "foo"]).await;
    assert_eq!(u64_at(&json, "/header/cluster_id"), header.cluster_id());
    assert_eq!(u64_at(&json, "/header/member_id"), header.member_id());
    assert_eq!(i64_at(&json, "/header/revision"), header.revision());
    assert_eq!(u64_at(&json, "/header/raft_term"), header.raft_term());
    assert_eq!(str_at(&json, "/kvs/0/key"), BASE64.encode("foo"));
    assert_eq!(str_at(&json, "/kvs/0/value"), BASE64.encode("bar"));
    assert_eq!(
        i64_at(&json, "/kvs/0/create_revision"),
        header.revision() - 1
    );
    assert_eq!(i64_at(&json, "/kvs/0/mod_revision"), header.revision());
    assert_eq!(i64_at(&json, "/kvs/0/version"), 2);
    assert_eq!(i64_at(&json, "/count"), 1);
}

#[tokio::test]
async fn etcdctl_txn_reads_compares_and_both_branches_from_stdin() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);
    let mut c = node.client().await;
    put(&mut c, "k", "v").await;

    // Compares, blank line, success ops, blank line, failure ops, blank line.
    let holds =
        "value(\"k\") = \"v\"\nmod(\"k\") > \"0\"\n\nput then yes\nget k\n\nput else yes\n\n";
    assert_eq!(
        ctl.ok_with_stdin(&["txn"], holds).await,
        "SUCCESS\n\nOK\n\nk\nv\n"
    );
    let fails = "value(\"k\") = \"other\"\n\nput then2 yes\n\nput else2 yes\ndel then\n\n";
    assert_eq!(
        ctl.ok_with_stdin(&["txn"], fails).await,
        "FAILURE\n\nOK\n\n1\n"
    );

    let all = etcd_client::GetOptions::new().with_all_keys();
    let got = c.get("", Some(all)).await.expect("get");
    assert_eq!(crate::harness::keys(got.kvs()), ["else2", "k"]);
}

#[tokio::test]
async fn etcdctl_get_below_a_compaction_shows_the_compaction_error() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);
    let mut c = node.client().await;
    let old = put(&mut c, "k", "v1").await;
    let compacted = put(&mut c, "k", "v2").await;

    assert_eq!(
        ctl.ok(&["compaction", &compacted.to_string()]).await,
        format!("compacted revision {compacted}\n")
    );
    let output = ctl.run(&["get", &format!("--rev={old}"), "k"], "").await;
    assert!(
        !output.status.success(),
        "a read below the compaction fails"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "stderr: {stderr}"
    );
    assert_eq!(
        ctl.ok(&["get", &format!("--rev={compacted}"), "k"]).await,
        "k\nv2\n"
    );
}

/// etcdctl 3.4 dials each endpoint of `endpoint status`, `endpoint hashkv` and `defrag` on
/// its own and then sends an endpoint written as a URL as the HTTP/2 `:authority`; both forms
/// of the endpoint must work.
#[tokio::test]
async fn etcdctl_endpoint_status_hashkv_and_defrag_work_with_urls_and_addresses() {
    let node = Node::start(NodeOptions::default()).await;
    Etcdctl::new(&node).ok(&["put", "k", "v"]).await;
    for ctl in [Etcdctl::new(&node), Etcdctl::by_address(&node)] {
        let json = ctl.json(&["endpoint", "status"]).await;
        let statuses = json.as_array().expect("a list of endpoint statuses");
        assert_eq!(statuses.len(), 1, "{json}");
        let status = &statuses[0];
        assert_eq!(str_at(status, "/Endpoint"), ctl.endpoint);
        let version = str_at(status, "/Status/version");
        let parts: Vec<u64> = version
            .split('.')
            .map(|p| p.parse().unwrap_or_else(|_| panic!("version {version:?}")))
            .collect();
        assert!(
            parts.as_slice() >= [3, 5, 13].as_slice(),
            "version {version} is below 3.5.13"
        );
        assert!(i64_at(status, "/Status/dbSize") > 0, "{status}");
        let member = u64_at(status, "/Status/header/member_id");
        assert_eq!(u64_at(status, "/Status/leader"), member);
        assert!(u64_at(status, "/Status/raftTerm") > 0, "{status}");
        let revision = i64_at(status, "/Status/header/revision");

        let json = ctl.json(&["endpoint", "hashkv"]).await;
        assert_eq!(str_at(&json[0], "/Endpoint"), ctl.endpoint, "{json}");
        assert!(u64_at(&json[0], "/HashKV/hash") > 0, "{json}");
        assert_eq!(
            i64_at(&json[0], "/HashKV/header/revision"),
            revision,
            "{json}"
        );

        let defragmented = ctl.ok(&["defrag"]).await;
        assert_eq!(
            defragmented,
            format!("Finished defragmenting etcd member[{}]\n", ctl.endpoint)
        );
    }
    assert_eq!(Etcdctl::new(&node).ok(&["get", "k"]).await, "k\nv\n");
}

#[tokio::test]
async fn etcdctl_member_list_shows_the_member() {
    let node = Node::start(NodeOptions::default().name("ctl-node")).await;
    let ctl = Etcdctl::new(&node);

    let json = ctl.json(&["member", "list"]).await;
    let members = json
        .pointer("/members")
        .and_then(Value::as_array)
        .expect("members");
    assert_eq!(members.len(), 1, "{json}");
    let member = &members[0];
    assert_eq!(
        u64_at(member, "/ID"),
        u64_at(&json, "/header/member_id"),
        "{json}"
    );
    assert_eq!(str_at(member, "/name"), "ctl-node");
    assert_eq!(member["peerURLs"], serde_json::json!([node.peer_url()]));
    assert_eq!(member["clientURLs"], serde_json::json!([node.endpoint()]));
}
