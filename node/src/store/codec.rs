//! The on-disk layout: redb tables, how a stored version is encoded, the meta entries, and
//! the snapshot format.

use prost::Message;
use redb::TableDefinition;

use super::error::StoreError;
use super::index::Revision;
use crate::proto::etcdserverpb::{AlarmMember, AlarmResponse};
use crate::proto::mvccpb::KeyValue;

/// Stored versions in chunks of consecutive revisions, each under its newest revision (16
/// bytes, big-endian main then sub); see [`super::chunks`].
pub(crate) const VERSIONS: TableDefinition<&[u8; 16], &[u8]> =
    TableDefinition::new("version_chunks");

/// The layout of files written before chunks: revision to stored version, one row each.
/// [`super::Store::open`] moves its rows into [`VERSIONS`].
pub(crate) const LEGACY_REVISIONS: TableDefinition<&[u8; 16], &[u8]> =
    TableDefinition::new("revisions");

/// Store-wide facts, by the names below.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Lease ID (8 bytes, big-endian) to the lease, see [`encode_lease`]. A lease's keys are not
/// stored here: they are the live keys whose newest version names the lease.
pub(crate) const LEASES: TableDefinition<&[u8; 8], &[u8]> = TableDefinition::new("leases");

pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACT_REVISION: &str = "compact_revision";
pub(crate) const META_ALARMS: &str = "alarms";
pub(crate) const META_RAFT: &str = "raft";

/// First byte of a stored version: a put, or a tombstone (etcd marks tombstones in the
/// revision key; here the key stays a plain revision and the mark travels with the value).
const PUT: u8 = 0;
const TOMBSTONE: u8 = 1;

/// A stored version, borrowed from the table without decoding the value.
pub(crate) struct Stored<'a> {
    pub tombstone: bool,
    /// The protobuf-encoded `mvccpb.KeyValue`.
    pub encoded: &'a [u8],
}

impl<'a> Stored<'a> {
    pub fn parse(bytes: &'a [u8], revision: Revision) -> Result<Self, StoreError> {
        let tombstone = match bytes.first() {
            Some(&PUT) => false,
            Some(&TOMBSTONE) => true,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "revision {}.{} has an unknown version marker",
                    revision.main, revision.sub
                )))
            }
        };
        Ok(Stored {
            tombstone,
            encoded: &bytes[1..],
        })
    }

    pub fn decode(&self, revision: Revision) -> Result<KeyValue, StoreError> {
        KeyValue::decode(self.encoded).map_err(|error| {
            StoreError::Corrupt(format!(
                "revision {}.{} does not decode: {error}",
                revision.main, revision.sub
            ))
        })
    }
}

/// The fields of a version to store, borrowed from the request so that a put copies the key
/// and value once, into the encoded bytes.
pub(crate) struct NewVersion<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl NewVersion<'_> {
    /// The stored bytes of a put: the marker, then exactly what `KeyValue::encode` produces
    /// for these fields (a test pins the equality).
    pub fn encode_put(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 + 40 + self.key.len() + self.value.len());
        bytes.push(PUT);
        put_bytes_field(&mut bytes, 1, self.key);
        put_varint_field(&mut bytes, 2, self.create_revision);
        put_varint_field(&mut bytes, 3, self.mod_revision);
        put_varint_field(&mut bytes, 4, self.version);
        put_bytes_field(&mut bytes, 5, self.value);
        put_varint_field(&mut bytes, 6, self.lease);
        bytes
    }
}

/// The stored bytes of a tombstone: the key and the revision that deleted it (what a watcher
/// receives for a delete).
pub(crate) fn encode_tombstone(key: &[u8], revision: i64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 20 + key.len());
    bytes.push(TOMBSTONE);
    put_bytes_field(&mut bytes, 1, key);
    put_varint_field(&mut bytes, 3, revision);
    bytes
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

/// proto3 leaves fields at their default out; int64 is a varint of the two's complement.
fn put_varint_field(bytes: &mut Vec<u8>, field: u8, value: i64) {
    if value != 0 {
        bytes.push(field << 3);
        put_varint(bytes, value as u64);
    }
}

fn put_bytes_field(bytes: &mut Vec<u8>, field: u8, value: &[u8]) {
    if !value.is_empty() {
        bytes.push((field << 3) | 2);
        put_varint(bytes, value.len() as u64);
        bytes.extend_from_slice(value);
    }
}

pub(crate) fn encode_i64(value: i64) -> [u8; 8] {
    value.to_be_bytes()
}

pub(crate) fn decode_i64(name: &str, bytes: &[u8]) -> Result<i64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("meta entry {name} is not 8 bytes")))?;
    Ok(i64::from_be_bytes(bytes))
}

/// A lease's stored form: its granted TTL in seconds, 8 bytes big-endian.
pub(crate) fn encode_lease(ttl: i64) -> [u8; 8] {
    ttl.to_be_bytes()
}

pub(crate) fn decode_lease(id: &[u8; 8], bytes: &[u8]) -> Result<(i64, i64), StoreError> {
    let id = i64::from_be_bytes(*id);
    let ttl: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("lease {id:x} is not 8 bytes")))?;
    Ok((id, i64::from_be_bytes(ttl)))
}

pub(crate) fn encode_alarms(alarms: &[AlarmMember]) -> Vec<u8> {
    AlarmResponse {
        header: None,
        alarms: alarms.to_vec(),
    }
    .encode_to_vec()
}

pub(crate) fn decode_alarms(bytes: &[u8]) -> Result<Vec<AlarmMember>, StoreError> {
    AlarmResponse::decode(bytes)
        .map(|response| response.alarms)
        .map_err(|error| StoreError::Corrupt(format!("alarm list does not decode: {error}")))
}

/// A snapshot is the tables entry by entry, then a checksum:
/// `MAGIC`, records `[table: u8][key length: u32][key][value length: u32][value]`,
/// `[END][crc32 of everything before: u32]`, integers big-endian.
const MAGIC: &[u8; 8] = b"CAIRNSS1";
const SNAPSHOT_META: u8 = 1;
const SNAPSHOT_REVISIONS: u8 = 2;
const SNAPSHOT_LEASES: u8 = 3;
const END: u8 = 0xff;

/// One entry of a snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SnapshotRecord<'a> {
    Meta(&'a str, &'a [u8]),
    Version(&'a [u8; 16], &'a [u8]),
    Lease(&'a [u8; 8], &'a [u8]),
}

pub(crate) struct SnapshotWriter {
    bytes: Vec<u8>,
}

impl SnapshotWriter {
    pub fn new() -> Self {
        SnapshotWriter {
            bytes: MAGIC.to_vec(),
        }
    }

    pub fn record(&mut self, record: SnapshotRecord<'_>) -> Result<(), StoreError> {
        let (table, key, value) = match record {
            SnapshotRecord::Meta(name, value) => (SNAPSHOT_META, name.as_bytes(), value),
            SnapshotRecord::Version(revision, value) => (SNAPSHOT_REVISIONS, &revision[..], value),
            SnapshotRecord::Lease(id, value) => (SNAPSHOT_LEASES, &id[..], value),
        };
        self.bytes.push(table);
        for part in [key, value] {
            let len = u32::try_from(part.len())
                .map_err(|_| StoreError::Corrupt("an entry exceeds 4 GiB".into()))?;
            self.bytes.extend_from_slice(&len.to_be_bytes());
            self.bytes.extend_from_slice(part);
        }
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.push(END);
        let crc = crc32fast::hash(&self.bytes);
        self.bytes.extend_from_slice(&crc.to_be_bytes());
        self.bytes
    }
}

/// Checks a snapshot's framing and checksum and returns its records.
pub(crate) fn parse_snapshot(snapshot: &[u8]) -> Result<Vec<SnapshotRecord<'_>>, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidSnapshot(reason.into());
    let body_len = snapshot
        .len()
        .checked_sub(4)
        .filter(|&len| len > MAGIC.len())
        .ok_or_else(|| invalid("too short"))?;
    let (body, crc) = snapshot.split_at(body_len);
    if !body.starts_with(MAGIC) {
        return Err(invalid("not a Cairn state snapshot"));
    }
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(invalid("checksum mismatch"));
    }
    let mut rest = &body[MAGIC.len()..];
    let mut records = Vec::new();
    loop {
        let (&table, tail) = rest.split_first().ok_or_else(|| invalid("truncated"))?;
        if table == END {
            return if tail.is_empty() {
                Ok(records)
            } else {
                Err(invalid("data after the end marker"))
            };
        }
        let (key, tail) = take_sized(tail).ok_or_else(|| invalid("truncated record"))?;
        let (value, tail) = take_sized(tail).ok_or_else(|| invalid("truncated record"))?;
        records.push(match table {
            SNAPSHOT_META => SnapshotRecord::Meta(
                std::str::from_utf8(key).map_err(|_| invalid("a meta name is not UTF-8"))?,
                value,
            ),
            SNAPSHOT_REVISIONS => SnapshotRecord::Version(
                key.try_into()
                    .map_err(|_| invalid("a revision is not 16 bytes"))?,
                value,
            ),
            SNAPSHOT_LEASES => SnapshotRecord::Lease(
                key.try_into()
                    .map_err(|_| invalid("a lease ID is not 8 bytes"))?,
                value,
            ),
            _ => return Err(invalid("unknown table")),
        });
        rest = tail;
    }
}

fn take_sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_encoding_is_prost_encoding() {
        for (key, value, lease) in [
            (&b"k"[..], &b"v"[..], 0),
            (b"", b"", -3),
            (&[7; 300][..], &[1; 70_000][..], 1 << 40),
        ] {
            let version = NewVersion {
                key,
                value,
                create_revision: 5,
                mod_revision: 300,
                version: 0,
                lease,
            };
            let stored = version.encode_put();
            let parsed = Stored::parse(&stored, Revision { main: 300, sub: 0 }).unwrap();
            assert!(!parsed.tombstone);
            let expected = KeyValue {
                key: key.to_vec(),
                create_revision: 5,
                mod_revision: 300,
                version: 0,
                value: value.to_vec(),
                lease,
            };
            assert_eq!(parsed.encoded, expected.encode_to_vec());
        }
    }

    #[test]
    fn tombstone_carries_key_and_revision() {
        let stored = encode_tombstone(b"gone", 9);
        let revision = Revision { main: 9, sub: 0 };
        let parsed = Stored::parse(&stored, revision).unwrap();
        assert!(parsed.tombstone);
        let kv = parsed.decode(revision).unwrap();
        assert_eq!((kv.key.as_slice(), kv.mod_revision), (&b"gone"[..], 9));
    }

    #[test]
    fn snapshot_framing_round_trips_and_rejects_damage() {
        let mut writer = SnapshotWriter::new();
        writer.record(SnapshotRecord::Meta("a", b"")).unwrap();
        writer
            .record(SnapshotRecord::Version(&[1; 16], b"xyz"))
            .unwrap();
        writer
            .record(SnapshotRecord::Lease(&[2; 8], &encode_lease(60)))
            .unwrap();
        let mut snapshot = writer.finish();
        let records = parse_snapshot(&snapshot).unwrap();
        assert_eq!(
            records,
            [
                SnapshotRecord::Meta("a", b""),
                SnapshotRecord::Version(&[1; 16], b"xyz"),
                SnapshotRecord::Lease(&[2; 8], &60i64.to_be_bytes()),
            ]
        );
        snapshot[10] ^= 1;
        assert!(matches!(
            parse_snapshot(&snapshot),
            Err(StoreError::InvalidSnapshot(reason)) if reason == "checksum mismatch"
        ));
        assert!(parse_snapshot(b"CAIRN").is_err());
    }
}
