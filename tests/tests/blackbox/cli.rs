//! The daemon's command line: `--version`, clean shutdown on signals, and settings given as
//! environment variables or as a config file.

use std::process::Stdio;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tonic::Code;

use crate::harness::{
    assert_etcd_error, cairn_bin, put, revision, Node, NodeOptions, SettingsVia, DEADLINE,
};

#[tokio::test]
async fn version_flag_prints_the_version_and_exits() {
    let child = Command::new(cairn_bin())
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, child)
        .await
        .expect("`cairn --version` exits")
        .expect("run cairn --version");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "`cairn --version` printed {stdout:?}, without the workspace version"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_a_restart_keeps_the_data() {
    let mut node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let rev = put(&mut c, "k", "kept").await;

    let status = node.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    node.restart().await;
    let mut c = node.client().await;
    let got = c.get("k", None).await.expect("get after restart");
    assert_eq!(got.kvs()[0].value(), b"kept");
    assert_eq!(revision(got.header()), rev);
}

#[tokio::test]
async fn sigint_shuts_down_cleanly() {
    let mut node = Node::start(NodeOptions::default()).await;
    let status = node.stop_with(Signal::SIGINT).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGINT: {status}");
}

#[tokio::test]
async fn settings_from_environment_variables_are_honoured() {
    settings_are_honoured(SettingsVia::Env, "from-env").await;
}

#[tokio::test]
async fn settings_from_a_config_file_are_honoured() {
    settings_are_honoured(SettingsVia::ConfigFile, "from-file").await;
}

/// Starts a node with every setting passed `via` the given channel (the harness picks ports
/// and a data dir it passes the same way) and checks that each took effect.
async fn settings_are_honoured(via: SettingsVia, name: &str) {
    let options = NodeOptions::default()
        .name(name)
        .via(via)
        .setting("max-request-bytes", "4096");
    let node = Node::start(options).await;
    let mut c = node.client().await;

    let members = c.member_list().await.expect("member list");
    let names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    assert_eq!(names, [name]);
    let client_urls = members.members()[0].client_urls();
    assert_eq!(client_urls, [node.endpoint()]);

    put(&mut c, "k", "v").await;
    let data_dir = node.data_dir();
    let entries = std::fs::read_dir(&data_dir)
        .unwrap_or_else(|e| panic!("data dir {} not created: {e}", data_dir.display()))
        .count();
    assert!(entries > 0, "data dir {} is empty", data_dir.display());

    assert_etcd_error(
        c.put("big", vec![b'x'; 8000], None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
}
