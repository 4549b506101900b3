//! Key and value generation for the benchmark workloads.

use anyhow::{bail, ensure};

/// A fixed-size key space of `size` keys, each `key_size` bytes long.
///
/// Key `n` is `n` in big-endian, right-aligned in `key_size` bytes and zero-padded on
/// the left, so distinct indices always give distinct keys of exactly the requested size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    key_size: usize,
    size: u64,
}

impl KeySpace {
    pub fn new(key_size: usize, size: u64) -> anyhow::Result<Self> {
        ensure!(key_size > 0, "--key-size must be at least 1");
        ensure!(size > 0, "--key-space-size must be at least 1");
        if key_size < 8 {
            let capacity = 1u64 << (8 * key_size);
            if size > capacity {
                bail!(
                    "--key-space-size {size} needs keys longer than --key-size {key_size} \
                     (at most {capacity} distinct keys fit)"
                );
            }
        }
        Ok(Self { key_size, size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The key for `index`, wrapping around the key space.
    pub fn key(&self, index: u64) -> Vec<u8> {
        let be = (index % self.size).to_be_bytes();
        let used = self.key_size.min(be.len());
        let mut key = vec![0; self.key_size];
        key[self.key_size - used..].copy_from_slice(&be[be.len() - used..]);
        key
    }
}

/// SplitMix64: a tiny, fast, well-distributed generator. Benchmark key choice needs
/// no cryptographic quality, and this avoids a dependency on `rand`.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound`. The modulo bias is below 2^-40 for any key space a
    /// benchmark can use, which is irrelevant for load generation.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// Random bytes, so values are not trivially compressible by any layer.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_are_distinct() {
        let space = KeySpace::new(8, 1000).unwrap();
        let keys: std::collections::HashSet<_> = (0..1000).map(|i| space.key(i)).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys.iter().all(|k| k.len() == 8));
    }

    #[test]
    fn keys_wrap_around_the_key_space() {
        let space = KeySpace::new(4, 3).unwrap();
        assert_eq!(space.key(0), vec![0, 0, 0, 0]);
        assert_eq!(space.key(2), vec![0, 0, 0, 2]);
        assert_eq!(space.key(3), space.key(0));
        assert_eq!(space.key(1_000_001), space.key(2));
    }

    #[test]
    fn long_keys_are_zero_padded() {
        let space = KeySpace::new(12, u64::MAX).unwrap();
        assert_eq!(space.key(0x0102), [vec![0; 10], vec![1, 2]].concat());
    }

    #[test]
    fn short_keys_reject_key_spaces_they_cannot_hold() {
        assert!(KeySpace::new(1, 256).is_ok());
        let err = KeySpace::new(1, 257).unwrap_err().to_string();
        assert!(err.contains("at most 256"), "{err}");
        assert!(KeySpace::new(0, 1).is_err());
        assert!(KeySpace::new(8, 0).is_err());
    }

    #[test]
    fn generator_is_deterministic_and_in_bounds() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let v = a.below(10);
            assert_eq!(v, b.below(10));
            assert!(v < 10);
        }
        assert_eq!(a.bytes(13).len(), 13);
        assert!(a.bytes(0).is_empty());
    }
}
