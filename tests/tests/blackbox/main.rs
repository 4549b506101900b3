//! Black-box tests of `cairn`: each test starts its own `cairn` process(es) on free loopback
//! ports, with a private data dir, and talks to them with unmodified clients (the
//! `etcd-client` crate and `etcdctl`), checking etcd v3's behaviour byte for byte.
//!
//! The binary is `$CAIRN_BIN`, else `target/debug/cairn` (`cargo build -p cairn`).
//! `etcdctl` comes from `scripts/install-test-deps.sh`.

mod backup;
mod cli;
mod durability;
mod errors;
mod etcdctl;
mod harness;
mod http;
mod kv;
mod lease;
mod limits;
mod lock_election;
mod txn;
mod watch;
