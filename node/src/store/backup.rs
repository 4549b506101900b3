//! The file `etcdctl snapshot save` writes from a Cairn member: the store's snapshot, zero
//! padding, the snapshot's length (8 bytes, big-endian) and a SHA-256 of all that.
//!
//! etcdctl keeps a download only if its length is 32 more than a multiple of 512, the shape
//! of etcd's own (a bbolt file of whole pages, then a SHA-256), so the padding gives it that
//! shape; `cairn snapshot restore` checks the hash as etcd's restore does.

use sha2::{Digest, Sha256};

use super::error::StoreError;

/// The hash's bytes at the end.
const HASH_BYTES: usize = 32;
/// The length field's bytes before the hash.
const LENGTH_BYTES: usize = 8;
/// What etcdctl expects the length before the hash to be a multiple of.
const BLOCK_BYTES: usize = 512;

/// Frames `snapshot` as a backup.
pub fn encode(mut snapshot: Vec<u8>) -> Vec<u8> {
    let length = snapshot.len() as u64;
    let padded = (snapshot.len() + LENGTH_BYTES).next_multiple_of(BLOCK_BYTES) - LENGTH_BYTES;
    snapshot.resize(padded, 0);
    snapshot.extend_from_slice(&length.to_be_bytes());
    let hash = Sha256::digest(&snapshot);
    snapshot.extend_from_slice(&hash);
    snapshot
}

/// The snapshot inside `backup`, once its hash and framing check out.
pub fn decode(backup: &[u8]) -> Result<&[u8], StoreError> {
    let invalid =
        |reason: &str| StoreError::InvalidSnapshot(format!("not a Cairn backup: {reason}"));
    if backup.len() < LENGTH_BYTES + HASH_BYTES || backup.len() % BLOCK_BYTES != HASH_BYTES {
        return Err(invalid("its length is not that of a whole download"));
    }
    let (framed, hash) = backup.split_at(backup.len() - HASH_BYTES);
    if Sha256::digest(framed).as_slice() != hash {
        return Err(invalid("SHA-256 mismatch (damaged or cut short)"));
    }
    let (padded, length) = framed.split_at(framed.len() - LENGTH_BYTES);
    let length: [u8; LENGTH_BYTES] = length.try_into().map_err(|_| invalid("no length field"))?;
    let length = usize::try_from(u64::from_be_bytes(length))
        .ok()
        .filter(|&length| length <= padded.len())
        .ok_or_else(|| invalid("its length field is past its end"))?;
    let (snapshot, padding) = padded.split_at(length);
    if padding.iter().any(|&byte| byte != 0) {
        return Err(invalid("bytes where padding belongs"));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_has_etcds_shape_and_gives_back_its_snapshot() {
        for size in [0, 1, 100, 471, 472, 473, 504, 505, 4096, 70_000] {
            let snapshot: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
            let backup = encode(snapshot.clone());
            assert_eq!(backup.len() % BLOCK_BYTES, HASH_BYTES, "size {size}");
            assert_eq!(decode(&backup).unwrap(), snapshot.as_slice(), "size {size}");
        }
    }

    #[test]
    fn a_damaged_or_cut_backup_is_refused() {
        let backup = encode(vec![7; 1000]);
        let mut damaged = backup.clone();
        damaged[10] ^= 1;
        let cut = &backup[..backup.len() - 512];
        for (what, bytes) in [("damaged", &damaged[..]), ("cut", cut), ("empty", &[][..])] {
            assert!(
                matches!(decode(bytes), Err(StoreError::InvalidSnapshot(_))),
                "{what}"
            );
        }
    }
}
