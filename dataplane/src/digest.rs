//! Chunk digests of mirrored host memory: the client hashes what it pushes before a kernel, the server hashes its
//! mirror when asked (`MirrorDigest`), and only chunks whose hash changed travel back. Both sides use this one rule.

/// The bytes one hash covers.
pub const CHUNK: usize = 4096;

/// A 64-bit hash of a chunk (change detection, not security: a write that leaves the hash unchanged is as unlikely
/// as a random 64-bit collision; a tenant who forges one only hides its own kernel's write from itself).
pub fn chunk_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        h = (h.rotate_left(23) ^ v).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(23) ^ b as u64).wrapping_mul(K);
    }
    h ^ (h >> 29)
}

/// The hash of every `CHUNK` of `bytes` (the last one may be shorter).
pub fn chunk_hashes(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks(CHUNK).map(chunk_hash).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_changes_its_chunk_only() {
        let mut bytes = vec![7u8; 3 * CHUNK + 100];
        let before = chunk_hashes(&bytes);
        assert_eq!(before.len(), 4);
        bytes[CHUNK + 5] ^= 1;
        let after = chunk_hashes(&bytes);
        assert_eq!(after[0], before[0]);
        assert_ne!(after[1], before[1]);
        assert_eq!(after[2..], before[2..]);
    }

    #[test]
    fn zero_and_short_chunks_differ_from_each_other() {
        assert_ne!(chunk_hash(&[0u8; CHUNK]), chunk_hash(&[0u8; CHUNK - 8]));
        assert_ne!(chunk_hash(&[0u8; 16]), chunk_hash(&[0u8; 17]));
    }
}
