//! Raft: openraft wired to the redb log, the MVCC state machine and the peer network.
//!
//! Built in the order openraft expects: log store, state machine, network, then `Raft::new`.

mod forwarder;
mod log_store;
pub mod membership;
mod network;
mod peer_service;
mod proposer;
mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use forwarder::Forwarder;
pub use log_store::LogStore;
pub use network::{decode as decode_peer_message, encode as encode_peer_message, Peers};
pub use peer_service::PeerService;
pub use proposer::{Proposer, WriteError};
pub use types::{Applied, AppliedBatch, Member, MemberId, Proposal, Raft, TypeConfig};

use openraft::error::{CheckIsLeaderError, RaftError};

use crate::store::Store;

/// The index a linearizable read must see applied, once a quorum has confirmed that this
/// member leads: openraft's read log id (the commit index, or this leader's first entry of
/// its term), raised to the last index of this leader's log.
///
/// openraft resumes a restarted leader in its old term without its commit index, and its
/// first entry of the term can lie well behind writes it acknowledged before the restart: a
/// read index of that entry let a follower that had not yet learned of those writes answer
/// without them (the fault test caught it). The entries of the leader's own log are all
/// committed before, or by, the time they are applied, so waiting for them is always enough.
pub async fn read_index(
    raft: &Raft,
) -> Result<u64, RaftError<MemberId, CheckIsLeaderError<MemberId, Member>>> {
    let last = raft.metrics().borrow().last_log_index.unwrap_or(0);
    let (read, _) = raft.get_read_log_id().await?;
    Ok(read.map_or(0, |log_id| log_id.index).max(last))
}

/// Raft timing and log retention, with etcd's meanings.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// Committed entries between two snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot so slow followers can catch up from the log.
    pub catch_up_entries: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            catch_up_entries: 5_000,
        }
    }
}

/// A running Raft member and the storage behind it.
pub struct RaftNode {
    pub raft: Raft,
    pub proposer: Proposer,
    pub log: LogStore,
    pub store: Store,
}

/// How a member that has never been part of a cluster starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Found a new cluster with these members (`--initial-cluster-state new`). Every initial
    /// member proposes the same membership, so whichever is elected first agrees with the rest.
    New(BTreeMap<MemberId, Member>),
    /// Join a cluster that already added this member (`--initial-cluster-state existing`):
    /// wait for its leader to replicate the log here.
    Existing,
}

/// The Raft log's file in a member's data directory.
pub const LOG_FILE: &str = "raft.wal";
/// The store's file in a member's data directory.
pub const STATE_FILE: &str = "state.redb";

/// Opens the storage in `data_dir` and starts Raft.
pub async fn start(
    data_dir: &Path,
    member_id: MemberId,
    bootstrap: Bootstrap,
    peers: Peers,
    settings: &RaftSettings,
) -> anyhow::Result<RaftNode> {
    std::fs::create_dir_all(data_dir)?;
    let log = LogStore::open(&data_dir.join(LOG_FILE))?;
    let store = Store::open(&data_dir.join(STATE_FILE))?;
    let state_machine = state_machine::StateMachine::new(store.clone())?;
    log.lead_as(member_id, state_machine.membership());
    peers.attach_log(log.clone());

    let heartbeat = settings.heartbeat_interval.as_millis() as u64;
    let election = settings.election_timeout.as_millis() as u64;
    let config = openraft::Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election,
        // openraft's leader lease is the maximum: keep it short so a dead leader is replaced
        // within about two election timeouts.
        election_timeout_max: election + election / 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_count),
        max_in_snapshot_log_to_keep: settings.catch_up_entries,
        ..Default::default()
    }
    .validate()?;

    let raft = Raft::new(
        member_id,
        Arc::new(config),
        peers.clone(),
        log.clone(),
        state_machine,
    )
    .await?;

    match bootstrap {
        Bootstrap::New(members) if !raft.is_initialized().await? => {
            tracing::info!(member_id = %format!("{member_id:x}"), members = members.len(), "bootstrapping a new cluster");
            raft.initialize(members).await?;
        }
        Bootstrap::New(_) => {}
        Bootstrap::Existing => {
            tracing::info!(member_id = %format!("{member_id:x}"), "joining an existing cluster");
        }
    }
    let proposer = Proposer::start(raft.clone(), log.clone());
    peers.on_acknowledged(proposer.acknowledgements());
    Ok(RaftNode {
        raft,
        proposer,
        log,
        store,
    })
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::state_machine::StateMachine;
    use super::types::{StorageError, TypeConfig};
    use super::LogStore;
    use crate::store::Store;

    /// Each test of openraft's suite gets a fresh log and state machine in a directory that
    /// lives as long as they do.
    struct FreshStorage;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FreshStorage {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let failed = |error: anyhow::Error| -> StorageError {
                openraft::StorageIOError::write(&std::io::Error::other(error.to_string())).into()
            };
            let dir = tempfile::tempdir().map_err(|e| failed(e.into()))?;
            let log = LogStore::open(&dir.path().join("raft.wal")).map_err(failed)?;
            let store =
                Store::open(&dir.path().join("state.redb")).map_err(|e| failed(e.into()))?;
            let state_machine = StateMachine::new(store).map_err(failed)?;
            Ok((dir, log, state_machine))
        }
    }

    #[test]
    fn log_and_state_machine_pass_openraft_storage_suite() {
        Suite::test_all(FreshStorage).expect("openraft's storage suite passes");
    }
}
