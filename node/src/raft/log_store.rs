//! The Raft log on redb, with group commit.
//!
//! openraft hands the log one `append` per client write. Fsyncing each of them in turn would
//! cap throughput at one write per disk flush, so `append` only records the entries in memory
//! (where readers find them at once) and queues them for a writer thread. The writer takes
//! everything queued since its last flush, writes it in one redb transaction, fsyncs once,
//! and only then tells openraft the entries are durable. Under load a single fsync covers
//! every write that arrived while the previous one was in progress.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const LOG_CACHE_BYTES: usize = 8 * 1024 * 1024;
const PURGED_KEY: &str = "last_purged";

/// The log as openraft sees it: a handle shared by the log storage and its readers.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    // A std mutex: it is held only to copy entries in or out, never across an await.
    memory: Mutex<LogMemory>,
    // Sending is cheap and never blocks; the writer thread owns the database.
    writer: Mutex<mpsc::Sender<WriteOp>>,
}

#[derive(Default)]
struct LogMemory {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

enum WriteOp {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    Truncate {
        since: u64,
    },
    Purge {
        upto: u64,
        record: Vec<u8>,
    },
    Meta {
        key: &'static str,
        record: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
}

impl LogStore {
    /// Opens (or creates) the log file and loads the unpurged entries into memory.
    pub fn open(path: &Path) -> anyhow::Result<LogStore> {
        // Entries are served from memory, so redb's cache (1 GiB by default) only needs to
        // hold the pages being written.
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)?;
        let mut memory = LogMemory::default();
        {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.commit()?;
        }
        {
            let txn = db.begin_read()?;
            let log = txn.open_table(LOG)?;
            for row in log.iter()? {
                let (index, record) = row?;
                let entry: Entry = postcard::from_bytes(record.value())?;
                memory.entries.insert(index.value(), entry);
            }
            let meta = txn.open_table(META)?;
            if let Some(record) = meta.get(VOTE_KEY)? {
                memory.vote = Some(postcard::from_bytes(record.value())?);
            }
            if let Some(record) = meta.get(PURGED_KEY)? {
                memory.last_purged = Some(postcard::from_bytes(record.value())?);
            }
        }
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(db, receiver))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                memory: Mutex::new(memory),
                writer: Mutex::new(sender),
            }),
        })
    }

    /// The index of the newest entry, or of the last purged one when the log is empty.
    pub fn last_index(&self) -> u64 {
        let memory = self.memory();
        memory
            .entries
            .keys()
            .next_back()
            .copied()
            .or(memory.last_purged.map(|id| id.index))
            .unwrap_or(0)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, LogMemory> {
        self.shared
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        self.shared
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(op)
            .map_err(|_| io::Error::other("the raft log writer has stopped"))
    }

    async fn save_meta(&self, key: &'static str, record: Vec<u8>) -> Result<(), io::Error> {
        let (done, wait) = oneshot::channel();
        self.send(WriteOp::Meta { key, record, done })?;
        wait.await
            .map_err(|_| io::Error::other("the raft log writer has stopped"))?
    }
}

/// Drains every queued operation, writes them in one transaction, fsyncs once, then reports.
fn write_loop(db: Database, receiver: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = receiver.recv() {
        let mut ops = vec![first];
        ops.extend(receiver.try_iter());
        let result = write_batch(&db, &ops).map_err(|e| e.to_string());
        if let Err(error) = &result {
            tracing::error!(%error, "raft log write failed");
        }
        for op in ops {
            let outcome = result.clone().map_err(io::Error::other);
            match op {
                WriteOp::Append { flushed, .. } => flushed.log_io_completed(outcome),
                WriteOp::Meta { done, .. } => {
                    let _ = done.send(outcome);
                }
                WriteOp::Truncate { .. } | WriteOp::Purge { .. } => {}
            }
        }
    }
}

fn write_batch(db: &Database, ops: &[WriteOp]) -> anyhow::Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in ops {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (index, record) in entries {
                        log.insert(*index, record.as_slice())?;
                    }
                }
                WriteOp::Truncate { since } => {
                    log.retain_in(*since.., |_, _| false)?;
                }
                WriteOp::Purge { upto, record } => {
                    log.retain_in(..=*upto, |_, _| false)?;
                    meta.insert(PURGED_KEY, record.as_slice())?;
                }
                WriteOp::Meta { key, record, .. } => {
                    meta.insert(*key, record.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&error).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .memory()
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let memory = self.memory();
        let last_purged_log_id = memory.last_purged;
        let last_log_id = memory
            .entries
            .values()
            .next_back()
            .map(|entry| *entry.get_log_id())
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let record = encode(vote).map_err(write_error)?;
        self.save_meta(VOTE_KEY, record)
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.memory().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.memory().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        {
            let mut memory = self.memory();
            for entry in entries {
                let index = entry.get_log_id().index;
                records.push((index, encode(&entry).map_err(write_error)?));
                memory.entries.insert(index, entry);
            }
        }
        self.send(WriteOp::Append {
            entries: records,
            flushed: callback,
        })
        .map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.memory().entries.split_off(&log_id.index);
        self.send(WriteOp::Truncate {
            since: log_id.index,
        })
        .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let record = encode(&log_id).map_err(write_error)?;
        {
            let mut memory = self.memory();
            memory.entries = memory.entries.split_off(&(log_id.index + 1));
            memory.last_purged = Some(log_id);
        }
        self.send(WriteOp::Purge {
            upto: log_id.index,
            record,
        })
        .map_err(write_error)
    }
}
