//! Placement: which shard a key belongs to, and the ids of direct
//! conversations. Stable forever: data is placed, and direct conversation
//! ids are stored, by these functions (`docs/format.md`).

/// The id of the direct conversation of a user pair at probe `attempt`.
/// Stable forever (it is on disk): SplitMix64 over the ordered pair and the
/// attempt, with the top bit set. Group ids must keep the top bit clear, so
/// the two never collide; a collision between pairs moves to the next attempt.
pub fn direct_conversation_id(a: u64, b: u64, attempt: u32) -> u64 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut x = splitmix(low ^ 0x6a09_e667_f3bc_c908);
    x = splitmix(x ^ high);
    x = splitmix(x ^ u64::from(attempt));
    x | DIRECT_ID_BIT
}

/// The bit that marks direct conversation ids.
pub const DIRECT_ID_BIT: u64 = 1 << 63;

/// The shard a key belongs to among `shards`: `SplitMix64(key) % shards`.
/// A conversation's key is its id; a user pair's (friend rows, their
/// direct conversation) is [`pair_key`]. Stable forever: data is placed by
/// it.
pub fn shard_for(key: u64, shards: u64) -> u64 {
    splitmix(key) % shards.max(1)
}

/// The shard that holds `user`'s own data among `shards`: their inbox
/// (message copies delivered from the conversations' shards), and, as the
/// user-shard work lands, the rest of what only that user reads
/// (`docs/replication.md`, "User shards"). `SplitMix64(user ^ USER_SEED)
/// % shards`: seeded apart from [`shard_for`], so that a user and a
/// conversation with the same number do not always share a shard. Stable
/// forever: data is placed by it.
pub fn shard_for_user(user: u64, shards: u64) -> u64 {
    splitmix(user ^ USER_SEED) % shards.max(1)
}

/// Seed of [`shard_for_user`] (the first 64 bits of the fractional part of
/// the square root of 3, as SHA-512 uses them).
const USER_SEED: u64 = 0xbb67_ae85_84ca_a73b;

/// The placement key of a user pair: its direct conversation's first
/// candidate id.
pub fn pair_key(a: u64, b: u64) -> u64 {
    direct_conversation_id(a, b, 0)
}

/// The candidate ids of a pair's direct conversation among `shards`, in
/// probe order: only those in the pair's shard, so the conversation lives
/// where the pair's friend rows do. The first is always attempt 0 (the
/// pair key itself); later ones are used only on a collision.
pub fn direct_candidates(a: u64, b: u64, shards: u64) -> impl Iterator<Item = u64> {
    let home = shard_for(pair_key(a, b), shards);
    (0..u32::MAX)
        .map(move |attempt| direct_conversation_id(a, b, attempt))
        .filter(move |&id| shard_for(id, shards) == home)
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `z`.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The placements are on disk: these values must never change.
    #[test]
    fn placements_are_stable() {
        assert_eq!(shard_for(7, 16), shard_for(7, 16));
        let users: Vec<u64> = (1..=8).map(|u| shard_for_user(u, 16)).collect();
        assert_eq!(users, PINNED_USER_SHARDS);
        assert_eq!(shard_for_user(42, 1), 0);
        assert_eq!(shard_for_user(42, 0), 0);
    }

    const PINNED_USER_SHARDS: [u64; 8] = [11, 15, 8, 9, 3, 14, 10, 1];

    #[test]
    fn users_spread_over_shards() {
        let mut counts = [0u32; 16];
        for user in 0..16_000u64 {
            counts[shard_for_user(user, 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
