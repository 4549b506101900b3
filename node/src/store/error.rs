//! The store's two error families: [`KvError`] is what an etcd client sees (etcd's exact
//! messages and gRPC codes), [`StoreError`] is a failure of the storage itself.

/// A failure of the storage underneath the MVCC store: the node cannot go on applying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb reported an error (I/O, a full disk, a corrupted or locked file). Boxed: redb's
    /// error is large and every result of the store carries this type.
    #[error("state database: {0}; check the data directory's disk and permissions")]
    Database(Box<redb::Error>),
    /// The file system failed outside redb (for example reading the file's size).
    #[error("state file: {0}")]
    Io(#[from] std::io::Error),
    /// The data read back does not follow the store's own format or invariants.
    #[error("state database is corrupt: {0}; restore this member from a snapshot or re-add it")]
    Corrupt(String),
    /// A snapshot handed to `install_snapshot` is not one `Store::snapshot` produced.
    #[error("invalid state snapshot: {0}")]
    InvalidSnapshot(String),
}

/// An error of one key-value request, as etcd reports it to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The storage failed while serving the request (etcd would crash here; Cairn answers
    /// `Internal` and lets the caller decide).
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<KvError> for tonic::Status {
    fn from(error: KvError) -> Self {
        let code = match &error {
            KvError::Compacted | KvError::FutureRevision => tonic::Code::OutOfRange,
            KvError::KeyNotFound => tonic::Code::InvalidArgument,
            KvError::LeaseNotFound => tonic::Code::NotFound,
            KvError::LeaseExists => tonic::Code::FailedPrecondition,
            KvError::LeaseTtlTooLarge => tonic::Code::OutOfRange,
            KvError::NoSpace => tonic::Code::ResourceExhausted,
            KvError::Storage(_) => tonic::Code::Internal,
        };
        tonic::Status::new(code, error.to_string())
    }
}

/// redb splits its errors by operation; both families accept every one of them so that
/// `?` works on any redb call.
macro_rules! from_redb_errors {
    ($($redb_error:ty),* $(,)?) => {$(
        impl From<$redb_error> for StoreError {
            fn from(error: $redb_error) -> Self {
                StoreError::Database(Box::new(error.into()))
            }
        }
        impl From<$redb_error> for KvError {
            fn from(error: $redb_error) -> Self {
                KvError::Storage(error.into())
            }
        }
    )*};
}

from_redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
);
