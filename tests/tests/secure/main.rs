//! Zero-config secure clusters: `cairn init`, `cairn join --token`, mDNS discovery, mutual
//! TLS and certificate renewal, each test on "hosts" that are network namespaces joined by a
//! bridge (real multicast between them).
//!
//! Needs root and `ip` (`scripts/install-test-deps.sh`), `etcdctl`, and the `cairn` binary
//! (`$CAIRN_BIN`, else `target/debug/cairn`). Sites run one at a time (see [`site`]).

mod etcd_flags;
mod renewal;
mod setup;
mod site;
mod zero_config;
