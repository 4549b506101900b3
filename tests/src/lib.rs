//! Shared test support. The black-box tests and their harness live in `tests/blackbox/`;
//! [`linearizability`] checks the histories that the cluster fault tests record, [`netns`]
//! builds the private networks of the partition and zero-config tests, [`watch_range`] the
//! ranges the watch-guarantee tests watch and the events they compare, [`launch`] what the
//! node and cluster harnesses make of a process that ended before it was ready, [`power_cut`]
//! the disk whose unsynced writes a power cut loses; the rest are small helpers several
//! suites use (HTTP pages, backups).

pub mod launch;
pub mod linearizability;
pub mod netns;
pub mod power_cut;
pub mod watch_range;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `cairn` binary under test: `$CAIRN_BIN`, else the workspace's debug build.
pub fn cairn_bin() -> PathBuf {
    let path = std::env::var_os("CAIRN_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/cairn"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "cairn binary not found at {}: run `cargo build -p cairn` first (or set CAIRN_BIN)",
        path.display()
    );
    path
}

/// The whole HTTP/1.1 response (status line, headers, body) to `GET PATH` on a member's
/// client or `--listen-metrics-urls` address.
pub fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((ip, port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// A member's backup as etcd's Snapshot call sends it (what `etcdctl snapshot save` writes).
pub async fn download_backup(client: &mut etcd_client::Client) -> Result<Vec<u8>, String> {
    let mut stream = client.snapshot().await.map_err(|e| e.to_string())?;
    let mut backup = Vec::new();
    while let Some(response) = stream.message().await.map_err(|e| e.to_string())? {
        backup.extend_from_slice(response.blob());
    }
    Ok(backup)
}

/// `cairn snapshot restore FILE --data-dir DIR`, run to its end (it only reads and writes
/// local files).
pub fn restore_backup(file: &Path, data_dir: &Path) -> std::io::Result<Output> {
    Command::new(cairn_bin())
        .arg("snapshot")
        .arg("restore")
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
}
