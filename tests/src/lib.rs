//! Shared test support. The black-box tests and their harness live in `tests/blackbox/`;
//! [`linearizability`] checks the histories that the cluster fault tests record, [`netns`]
//! builds the private networks of the partition and zero-config tests.

pub mod linearizability;
pub mod netns;

use std::path::{Path, PathBuf};

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
