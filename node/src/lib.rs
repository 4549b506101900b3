//! # Cairn
//!
//! An etcd-compatible, Raft-replicated key-value store for edge clusters. This crate is the
//! `cairn` daemon and CLI, and a library so that tests and tools can run a member in-process.
//!
//! # Layout
//!
//! - [`proto`]: the etcd v3 wire API (`etcdserverpb`, `mvccpb`, `authpb`) and Cairn's own
//!   internal messages, generated from `node/proto/`.
//! - [`api`]: one file per etcd gRPC service; thin adapters from protobuf to Raft and the store.
//! - [`raft`]: openraft wiring: the type config, the append-only log file with group commit,
//!   the state machine that applies committed entries to the store, the peer network and
//!   the forwarding of followers' writes.
//! - [`store`]: the MVCC store on redb (revisions, history, compaction, alarms, leases).
//! - [`lease`]: the lessor: lease deadlines on the leader, expiry proposed through Raft.
//! - [`watch`]: the watch hub: pushes each applied batch's events to synced watchers and
//!   catches slow or replaying watchers up from the store's history.
//! - [`security`]: the cluster CA, join tokens and admission, TLS with live certificate
//!   renewal.
//! - [`discovery`]: mDNS advertisement and browsing (`_cairn._tcp.local.`).
//! - [`cli`]: the zero-config commands: `init`, `join`, `token`, `cert`, `discover`.
//! - [`health`]: `GET /health` and `GET /metrics` on `--listen-metrics-urls`, with
//!   certificate expiry.
//! - [`metrics`]: the Prometheus gauges `/metrics` serves (leader, sizes, follower lag).
//! - [`config`]: etcd-named flags, environment variables and the config file.
//! - [`setup`]: unconfigured nodes (`cairn serve --wait`): setup code, bootstrap or join on request.
//! - [`server`]: starts a member and serves the client listeners until shut down.
//! - [`bench`]: `cairn bench`, an etcd `benchmark`-style load generator for any etcd endpoint.

pub mod api;
pub mod authority;
pub mod bench;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod discovery;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod proto;
pub mod raft;
pub mod security;
pub mod server;
pub mod setup;
pub mod store;
pub mod watch;
