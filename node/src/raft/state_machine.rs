//! The replicated state machine: committed entries applied to the MVCC store.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::types::{
    Applied, AppliedBatch, Entry, LogId, Member, MemberId, StorageError, StoredMembership,
    TypeConfig,
};
use crate::store::Store;

/// Batches up to this many commands are applied on the async worker itself: a put applies
/// in about 3 µs here, so they take well under a millisecond, the budget tokio allows a task
/// between two awaits. 64 writers at once make entries of up to about 64 commands; with 32,
/// a 3-member cluster at 64 clients spent 4% more CPU per put, handing workers to other
/// threads.
const INLINE_APPLY_COMMANDS: usize = 128;

/// What Raft needs to find again after a restart, committed in the same store transaction as
/// the data it describes, so the two can never disagree.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Clone)]
struct BuiltSnapshot {
    meta: SnapshotMeta<MemberId, Member>,
    data: Vec<u8>,
}

/// The state machine handed to openraft; `store` is shared with the read path.
pub struct StateMachine {
    store: Store,
    applied: AppliedState,
    // Shared with snapshot builders; a std mutex because it is never held across an await.
    current_snapshot: Arc<Mutex<Option<BuiltSnapshot>>>,
    snapshots_built: u64,
}

impl StateMachine {
    pub fn new(store: Store) -> anyhow::Result<StateMachine> {
        let applied = match store.raft_meta() {
            Some(record) => postcard::from_bytes(&record)?,
            None => AppliedState::default(),
        };
        Ok(StateMachine {
            store,
            applied,
            current_snapshot: Arc::new(Mutex::new(None)),
            snapshots_built: 0,
        })
    }

    /// The membership of the last applied entry (or snapshot).
    pub fn membership(&self) -> &openraft::Membership<MemberId, Member> {
        self.applied.membership.membership()
    }
}

fn store_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&error).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<AppliedBatch>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Every client request of every entry goes to the store in one batch; `slots` says
        // which entry and position each answer belongs to.
        let mut commands = Vec::new();
        let mut slots = Vec::new();
        let mut replies = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            let mut reply = AppliedBatch::default();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(membership) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
                EntryPayload::Normal(proposal) => {
                    for request in proposal.0.requests {
                        if let Some(request) = request.request {
                            slots.push((replies.len(), reply.0.len()));
                            commands.push(request);
                        }
                        reply.0.push(Applied::Nothing);
                    }
                }
            }
            replies.push(reply);
        }
        let record = postcard::to_allocvec(&self.applied).map_err(store_error)?;
        let store = self.store.clone();
        let apply = || store.apply_batch(&commands, &record);
        // `block_in_place` hands this worker's other tasks to another thread, which costs a
        // thread wake-up per apply: worth it only when the batch keeps the thread long.
        let results = if commands.len() > INLINE_APPLY_COMMANDS {
            tokio::task::block_in_place(apply)
        } else {
            apply()
        }
        .map_err(store_error)?;
        for ((entry, position), result) in slots.into_iter().zip(results) {
            replies[entry].0[position] = match result {
                Ok(response) => Applied::Response(crate::proto::cairnpb::RaftResponse {
                    response: Some(response),
                }),
                Err(error) => {
                    let status = tonic::Status::from(error);
                    Applied::Rejected {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }
                }
            };
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.snapshots_built += 1;
        // The dump is taken here, between two applies, so it matches `applied` exactly. The
        // log is purged up to the snapshot, so the state it covers is made durable first.
        let store = self.store.clone();
        let dump = tokio::task::block_in_place(|| {
            store.sync()?;
            store.snapshot()
        })
        .map_err(|error| error.to_string());
        SnapshotBuilder {
            dump,
            applied: self.applied.clone(),
            sequence: self.snapshots_built,
            current_snapshot: self.current_snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MemberId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let store = self.store.clone();
        tokio::task::block_in_place(|| store.install_snapshot(&data)).map_err(store_error)?;
        self.applied = match self.store.raft_meta() {
            Some(record) => postcard::from_bytes(&record).map_err(store_error)?,
            None => AppliedState::default(),
        };
        *self
            .current_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(BuiltSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .current_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Ok(current.map(|built| Snapshot {
            meta: built.meta,
            snapshot: Box::new(Cursor::new(built.data)),
        }))
    }
}

/// Builds a snapshot from a consistent dump of the store.
pub struct SnapshotBuilder {
    dump: Result<Vec<u8>, String>,
    applied: AppliedState,
    sequence: u64,
    current_snapshot: Arc<Mutex<Option<BuiltSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = self
            .dump
            .clone()
            .map_err(|error| StorageIOError::read_state_machine(&std::io::Error::other(error)))?;
        let applied = self.applied.clone();
        let snapshot_id = match applied.last_applied {
            Some(log_id) => format!(
                "{}-{}-{}",
                log_id.leader_id.term, log_id.index, self.sequence
            ),
            None => format!("0-0-{}", self.sequence),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        *self
            .current_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(BuiltSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
