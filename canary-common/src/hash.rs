//! The flow hash and the bucket/slot rule, identical in the kernel and in userspace.
//!
//! `MurmurHash3` (x86, 32-bit) over fixed-size keys: deterministic across restarts and machines
//! for a given seed, so every balancer node with the same seed sends a flow to the same bucket.
//! Loops are over constant-length arrays, which the verifier accepts (and LLVM unrolls).

use crate::{FlowKey, BUCKETS, FAMILY_IPV6, MAGLEV_TABLE_SIZE};

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

/// The first 4 bytes of an address as one little-endian word (an IPv4 address).
#[inline(always)]
fn first_word(a: &[u8; 16]) -> u32 {
    u32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

/// Hash of the whole 5-tuple (`flow` affinity). An IPv4 key is hashed over its 4 meaningful
/// words (source, destination, ports, protocol and family), not over the 12 zero bytes of each
/// 16-byte address field: the family word keeps IPv4 and IPv6 keys apart.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let ports = u32::from(key.src_port) | (u32::from(key.dst_port) << 16);
    let protocol = u32::from(key.protocol) | (u32::from(key.family) << 8);
    if key.family == FAMILY_IPV6 {
        let s = addr_words(&key.src);
        let d = addr_words(&key.dst);
        murmur3_words(
            &[
                s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], ports, protocol,
            ],
            seed,
        )
    } else {
        murmur3_words(
            &[first_word(&key.src), first_word(&key.dst), ports, protocol],
            seed,
        )
    }
}

/// Hash of the client address only (`client-ip` affinity): every port of a client agrees.
#[inline(always)]
pub fn client_hash(key: &FlowKey, seed: u32) -> u32 {
    let family = u32::from(key.family);
    if key.family == FAMILY_IPV6 {
        let s = addr_words(&key.src);
        murmur3_words(&[s[0], s[1], s[2], s[3], family], seed)
    } else {
        murmur3_words(&[first_word(&key.src), family], seed)
    }
}

/// Where a new flow lands: its bucket (`0..BUCKETS`, compared with the canary weight) and its
/// slot in the chosen group's Maglev table (`0..MAGLEV_TABLE_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub bucket: u32,
    pub slot: u32,
}

/// The hash of a flow for the given affinity.
#[inline(always)]
pub fn selection_hash(key: &FlowKey, client_ip_affinity: bool, seed: u32) -> u32 {
    if client_ip_affinity {
        client_hash(key, seed)
    } else {
        flow_hash(key, seed)
    }
}

/// Bucket of a flow for the given affinity.
#[inline(always)]
pub fn bucket_of(key: &FlowKey, client_ip_affinity: bool, seed: u32) -> u32 {
    Selection::from_hash(selection_hash(key, client_ip_affinity, seed)).bucket
}

/// Maglev slot of a flow for the given affinity (independent of its bucket).
#[inline(always)]
pub fn slot_of(key: &FlowKey, client_ip_affinity: bool, seed: u32) -> u32 {
    Selection::from_hash(selection_hash(key, client_ip_affinity, seed)).slot
}

impl Selection {
    #[inline(always)]
    pub fn of(key: &FlowKey, client_ip_affinity: bool, seed: u32) -> Self {
        Self::from_hash(selection_hash(key, client_ip_affinity, seed))
    }

    /// Bucket and slot from one 32-bit hash: the bucket is the hash modulo `BUCKETS` (its low
    /// digits), the slot the hash scaled onto the table (`h * MAGLEV_TABLE_SIZE / 2^32`, its
    /// high bits). The hash is uniform, so the slot is uniform whatever the bucket: every
    /// range of buckets (a group's share) spreads evenly over the group's Maglev table.
    #[inline(always)]
    pub const fn from_hash(h: u32) -> Self {
        Selection {
            bucket: h % BUCKETS,
            slot: ((h as u64 * MAGLEV_TABLE_SIZE as u64) >> 32) as u32,
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
    fn slots_are_uniform_inside_a_bucket_range() {
        // The canary group's flows are those with a bucket below the weight: their slots must
        // still cover the group's table evenly (the bucket and slot come from one hash).
        let mut deciles = [0u32; 10];
        let mut canary = 0;
        for i in 0..400_000u32 {
            let k = key([198, 18, (i >> 16) as u8 | 2, (i >> 8) as u8], i as u16);
            let s = Selection::of(&k, false, 1);
            if s.bucket < 1_000 {
                canary += 1;
                deciles[(s.slot * 10 / MAGLEV_TABLE_SIZE) as usize] += 1;
            }
        }
        assert!((38_000..=42_000).contains(&canary), "{canary} canary flows");
        for d in deciles {
            let share = f64::from(d) / f64::from(canary);
            assert!((0.095..=0.105).contains(&share), "decile share {share}");
        }
    }

    #[test]
    fn ipv4_and_ipv6_keys_never_share_a_hash_input() {
        // The same 16 address bytes as IPv4 (first 4 bytes) and IPv6: different hashes.
        let v4 = key([198, 18, 1, 1], 40000);
        let mut v6 = v4;
        v6.family = crate::FAMILY_IPV6;
        assert_ne!(flow_hash(&v4, 3), flow_hash(&v6, 3));
        assert_ne!(client_hash(&v4, 3), client_hash(&v6, 3));
    }

    #[test]
    fn from_hash_stays_in_range() {
        for h in [0, 1, 9_999, 10_000, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
            let s = Selection::from_hash(h);
            assert!(
                s.bucket < BUCKETS && s.slot < MAGLEV_TABLE_SIZE,
                "{h}: {s:?}"
            );
        }
        assert_eq!(Selection::from_hash(u32::MAX).slot, MAGLEV_TABLE_SIZE - 1);
        assert_eq!(Selection::from_hash(12_345).bucket, 2_345);
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
