//! Range and Txn compare semantics, shared by client reads and by the reads inside a Txn.
//!
//! A range runs in two steps so that a client read holds the index lock only while it walks
//! the index: [`plan_range`] picks the revisions, the caller fetches those versions from a
//! redb read transaction, and [`finish_range`] filters, sorts and trims them as etcd 3.5's
//! `applierV3backend.Range` does.

use std::cmp::Ordering;

use std::sync::Arc;

use redb::{ReadOnlyTable, ReadableTable};

use super::chunks;
use super::codec::Stored;
use super::error::{KvError, StoreError};
use super::index::{IndexView, KeySpan, Revision};
use super::unflushed::{RevisionKey, Unflushed};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{Compare, RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

/// The revision a read at `requested` sees (0 or less: the current one).
pub(crate) fn resolve_revision(
    requested: i64,
    current: i64,
    compacted: i64,
) -> Result<i64, KvError> {
    if requested > current {
        return Err(KvError::FutureRevision);
    }
    let at = if requested <= 0 { current } else { requested };
    if at < compacted {
        return Err(KvError::Compacted);
    }
    Ok(at)
}

/// What the index says a range returns, before the versions are read.
pub(crate) struct RangePlan {
    /// The header revision: the store's revision (including a Txn's own earlier writes).
    pub revision: i64,
    /// Keys in the span at the read revision, before the limit and the revision filters.
    pub count: i64,
    /// Revisions of the versions to read, in key order.
    pub revisions: Vec<Revision>,
}

pub(crate) fn plan_range(
    view: &impl IndexView,
    current: i64,
    compacted: i64,
    request: &RangeRequest,
) -> Result<RangePlan, KvError> {
    let at = resolve_revision(request.revision, current, compacted)?;
    // etcd reads every key when it has to sort or filter before trimming, and otherwise one
    // more than the limit so that it can tell whether there are more.
    let reads_everything = request.sort_order != SortOrder::None as i32
        || request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    let fetch = match usize::try_from(request.limit) {
        Ok(limit) if limit > 0 && !reads_everything => limit.saturating_add(1),
        _ => usize::MAX,
    };
    let mut plan = RangePlan {
        revision: current,
        count: 0,
        revisions: Vec::new(),
    };
    let span = KeySpan::new(&request.key, &request.range_end);
    view.for_each_visible(span, at, |_, revision| {
        plan.count += 1;
        if !request.count_only && plan.revisions.len() < fetch {
            plan.revisions.push(revision);
        }
    });
    Ok(plan)
}

/// Where stored versions are read from by revision: the file, or the versions not yet
/// flushed in front of it.
pub(crate) trait VersionSource {
    /// Calls `read` with the stored bytes of `revision`, if they exist.
    fn with_stored<R>(
        &self,
        revision: &RevisionKey,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError>;
}

/// The file's revision table, in any transaction.
pub(crate) struct FileVersions<T>(pub T);

impl<T: ReadableTable<&'static [u8; 16], &'static [u8]>> VersionSource for FileVersions<T> {
    fn with_stored<R>(
        &self,
        revision: &RevisionKey,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        chunks::with_version(&self.0, revision, read)
    }
}

/// Versions a client read found unflushed (gathered under the state lock), and the file for
/// the rest.
pub(crate) struct GatheredVersions {
    pub memory: Vec<(RevisionKey, Arc<[u8]>)>,
    pub file: Option<FileVersions<ReadOnlyTable<&'static [u8; 16], &'static [u8]>>>,
}

impl GatheredVersions {
    /// Looks `revisions` up in `unflushed`; the caller opens the file for what is missing
    /// before it lets go of the state lock.
    pub fn gather(unflushed: &Unflushed, revisions: &[Revision]) -> (Self, bool) {
        let mut memory: Vec<(RevisionKey, Arc<[u8]>)> = revisions
            .iter()
            .filter_map(|revision| {
                let key = revision.to_key();
                unflushed.get(&key).map(|value| (key, value.clone()))
            })
            .collect();
        // A range wants its revisions in key order; lookups search them by revision.
        memory.sort_unstable_by_key(|(key, _)| *key);
        let needs_file = memory.len() < revisions.len();
        (GatheredVersions { memory, file: None }, needs_file)
    }
}

impl VersionSource for GatheredVersions {
    fn with_stored<R>(
        &self,
        revision: &RevisionKey,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        if let Ok(at) = self.memory.binary_search_by(|(key, _)| key.cmp(revision)) {
            return Ok(Some(read(&self.memory[at].1)));
        }
        match &self.file {
            Some(file) => file.with_stored(revision, read),
            None => Ok(None),
        }
    }
}

/// Reads one stored version the index points at.
pub(crate) fn read_version(
    source: &impl VersionSource,
    revision: Revision,
) -> Result<KeyValue, StoreError> {
    source
        .with_stored(&revision.to_key(), |stored| {
            Stored::parse(stored, revision)?.decode(revision)
        })?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the key index names revision {}.{} but the revision table lacks it",
                revision.main, revision.sub
            ))
        })?
}

pub(crate) fn read_versions(
    source: &impl VersionSource,
    revisions: &[Revision],
) -> Result<Vec<KeyValue>, StoreError> {
    revisions
        .iter()
        .map(|&revision| read_version(source, revision))
        .collect()
}

pub(crate) fn finish_range(
    request: &RangeRequest,
    plan: RangePlan,
    mut kvs: Vec<KeyValue>,
) -> RangeResponse {
    let bound =
        |limit: i64, value: i64, keep: fn(i64, i64) -> bool| limit == 0 || keep(value, limit);
    kvs.retain(|kv| {
        bound(request.max_mod_revision, kv.mod_revision, |v, l| v <= l)
            && bound(request.min_mod_revision, kv.mod_revision, |v, l| v >= l)
            && bound(request.max_create_revision, kv.create_revision, |v, l| {
                v <= l
            })
            && bound(request.min_create_revision, kv.create_revision, |v, l| {
                v >= l
            })
    });

    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None) {
        // The index already yields keys in ascending order.
        SortOrder::Ascend if target == SortTarget::Key => SortOrder::None,
        // etcd sorts ascending when only a target is given.
        SortOrder::None if target != SortTarget::Key => SortOrder::Ascend,
        order => order,
    };
    if order != SortOrder::None {
        let by_target = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        // Stable sorts: equal targets stay in key order (etcd leaves their order unspecified).
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| by_target(b, a));
        } else {
            kvs.sort_by(by_target);
        }
    }

    let mut more = false;
    if let Ok(limit) = usize::try_from(request.limit) {
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    if request.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    RangeResponse {
        header: Some(ResponseHeader {
            revision: plan.revision,
            ..ResponseHeader::default()
        }),
        kvs,
        more,
        count: plan.count,
    }
}

/// Whether a Txn compare holds for the versions its span names (as etcd's `applyCompare`):
/// it must hold for every key; with no key it is judged against an empty version, except
/// that a value compare on a missing key is false.
pub(crate) fn compare_holds(compare: &Compare, kvs: &[KeyValue]) -> bool {
    let target = CompareTarget::try_from(compare.target);
    if kvs.is_empty() {
        return target != Ok(CompareTarget::Value)
            && compare_one(compare, target, &KeyValue::default());
    }
    kvs.iter().all(|kv| compare_one(compare, target, kv))
}

fn compare_one(
    compare: &Compare,
    target: Result<CompareTarget, prost::UnknownEnumValue>,
    kv: &KeyValue,
) -> bool {
    // A target_union that does not match the target counts as the zero value, as in etcd.
    let number = |pick: fn(&TargetUnion) -> Option<i64>| {
        compare.target_union.as_ref().and_then(pick).unwrap_or(0)
    };
    let ordering = match target {
        Ok(CompareTarget::Version) => kv.version.cmp(&number(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&number(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&number(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&number(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Value) => {
            let value = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(value)
        }
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}
