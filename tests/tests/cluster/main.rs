//! Cluster tests of `cairn`: each test starts its own cluster of real `cairn` processes and
//! checks etcd's behaviour as members fail, lose power, restart, fall behind, join, leave
//! and are cut off, and that a concurrent history under faults is linearizable.
//!
//! The binary is `$CAIRN_BIN`, else `target/debug/cairn` (`cargo build -p cairn`). Partition
//! tests use network namespaces: they need root and `ip` (`scripts/install-test-deps.sh`);
//! power-cut tests mount a FUSE file system: they need root and `/dev/fuse`.
//! Clusters run one at a time (see [`harness`]).

mod backup;
mod failover;
mod faults;
mod harness;
mod leadership;
mod lease;
mod lease_failover;
mod membership;
mod metrics;
mod partition;
mod power_cut;
mod replication;
mod snapshot;
mod watch_failover;
