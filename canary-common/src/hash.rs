//! The flow hash and the bucket/slot rule, identical in the kernel and in userspace.
//!
//! `MurmurHash3` (x86, 32-bit) over fixed-size keys: deterministic across restarts and machines
//! for a given seed, so every balancer node with the same seed sends a flow to the same bucket.
//! Loops are over constant-length arrays, which the verifier accepts (and LLVM unrolls).

use crate::{FlowKey, BUCKETS, MAGLEV_TABLE_SIZE};

/// Salt that derives the Maglev slot hash from the bucket hash's seed, so the slot inside a
/// group is independent of the bucket that chose the group.
const SLOT_SALT: u32 = 0x9e37_79b9;

/// The scramble of one 32-bit block before it is mixed into the state.
#[inline(always)]
const fn scramble(k: u32) -> u32 {
    k.wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593)
}

#[inline(always)]
fn mix_word(mut h: u32, k: u32) -> u32 {
    h ^= scramble(k);
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len_bytes: u32) -> u32 {
    h ^= len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// `MurmurHash3` `x86_32` of `words` read as little-endian bytes (equal to the byte-wise hash).
#[inline(always)]
pub fn murmur3_words<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < N {
        h = mix_word(h, words[i]);
        i += 1;
    }
    finish(h, (N * 4) as u32)
}

/// `MurmurHash3` `x86_32` of any bytes (the same rounds as [`murmur3_words`], with the tail
/// handling needed for data of any length). Userspace only: the Maglev permutation of a
/// backend name.
pub fn murmur3_bytes(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        h = mix_word(
            h,
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
        );
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= scramble(k);
    }
    finish(h, data.len() as u32)
}

#[inline(always)]
fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_le_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_le_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_le_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_le_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Hash of the whole 5-tuple (`flow` affinity).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let s = addr_words(&key.src);
    let d = addr_words(&key.dst);
    let words = [
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
        u32::from(key.src_port) | (u32::from(key.dst_port) << 16),
        u32::from(key.protocol) | (u32::from(key.family) << 8),
    ];
    murmur3_words(&words, seed)
}

/// Hash of the client address only (`client-ip` affinity): every port of a client agrees.
#[inline(always)]
pub fn client_hash(key: &FlowKey, seed: u32) -> u32 {
    let s = addr_words(&key.src);
    murmur3_words(&[s[0], s[1], s[2], s[3], u32::from(key.family)], seed)
}

/// Where a new flow lands: its bucket (`0..BUCKETS`, compared with the canary weight) and its
/// slot in the chosen group's Maglev table (`0..MAGLEV_TABLE_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub bucket: u32,
    pub slot: u32,
}

/// Bucket of a flow for the given affinity.
#[inline(always)]
pub fn bucket_of(key: &FlowKey, client_ip_affinity: bool, seed: u32) -> u32 {
    let h = if client_ip_affinity {
        client_hash(key, seed)
    } else {
        flow_hash(key, seed)
    };
    h % BUCKETS
}

/// Maglev slot of a flow for the given affinity (independent of its bucket).
#[inline(always)]
pub fn slot_of(key: &FlowKey, client_ip_affinity: bool, seed: u32) -> u32 {
    let seed = seed ^ SLOT_SALT;
    let h = if client_ip_affinity {
        client_hash(key, seed)
    } else {
        flow_hash(key, seed)
    };
    h % MAGLEV_TABLE_SIZE
}

impl Selection {
    #[inline(always)]
    pub fn of(key: &FlowKey, client_ip_affinity: bool, seed: u32) -> Self {
        Selection {
            bucket: bucket_of(key, client_ip_affinity, seed),
            slot: slot_of(key, client_ip_affinity, seed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_IPV4, PROTO_TCP};

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        let mut k = FlowKey {
            dst_port: 8080u16.to_be(),
            src_port: sport.to_be(),
            protocol: PROTO_TCP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&[198, 18, 0, 100]);
        k
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Reference values of MurmurHash3_x86_32 over the little-endian bytes.
        assert_eq!(murmur3_words::<0>(&[], 0), 0);
        assert_eq!(murmur3_words::<0>(&[], 1), 0x514e_28b7);
        assert_eq!(
            murmur3_words(&[u32::from_le_bytes(*b"test")], 0),
            0xba6b_d213
        );
        assert_eq!(murmur3_words(&[0x8765_4321], 0x5082_edee), 0x2362_f9de);
    }

    #[test]
    fn murmur3_bytes_matches_reference_vectors_and_the_word_hash() {
        assert_eq!(murmur3_bytes(b"", 0), 0);
        assert_eq!(murmur3_bytes(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_bytes(b"test", 0), 0xba6b_d213);
        assert_eq!(murmur3_bytes(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
        assert_eq!(murmur3_bytes(b"abc", 0), 0xb3dd_93fa);
        let words = [0x0403_0201, 0x0807_0605];
        assert_eq!(
            murmur3_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], 9),
            murmur3_words(&words, 9)
        );
    }

    #[test]
    fn hash_is_deterministic_and_seeded() {
        let k = key([198, 18, 1, 1], 40000);
        assert_eq!(flow_hash(&k, 7), flow_hash(&k, 7));
        assert_ne!(flow_hash(&k, 7), flow_hash(&k, 8));
        let other = key([198, 18, 1, 1], 40001);
        assert_ne!(flow_hash(&k, 7), flow_hash(&other, 7));
    }

    #[test]
    fn client_affinity_ignores_ports() {
        let a = Selection::of(&key([198, 18, 1, 1], 1000), true, 42);
        let b = Selection::of(&key([198, 18, 1, 1], 65000), true, 42);
        assert_eq!(a, b);
        assert_ne!(
            Selection::of(&key([198, 18, 1, 1], 1000), false, 42),
            Selection::of(&key([198, 18, 1, 1], 65000), false, 42)
        );
    }

    #[test]
    fn buckets_are_uniform() {
        // 100 000 flows: every tenth of the bucket range holds 10% +- 0.5%.
        let mut deciles = [0u32; 10];
        for i in 0..100_000u32 {
            let k = key([198, 18, (i >> 16) as u8 | 2, (i >> 8) as u8], i as u16);
            let b = bucket_of(&k, false, 1);
            assert!(b < BUCKETS);
            assert!(slot_of(&k, false, 1) < MAGLEV_TABLE_SIZE);
            deciles[(b / 1000) as usize] += 1;
        }
        for d in deciles {
            assert!((9_500..=10_500).contains(&d), "decile count {d}");
        }
    }
}
