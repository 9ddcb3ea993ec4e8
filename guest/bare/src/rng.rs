//! Guest randomness: xoshiro256** whose state every exec mixes with the host's
//! fresh seed, so two forks of one template never draw the same bytes.

use crate::cell::Global;

static STATE: Global<[u64; 4]> = Global::new([0; 4]);

/// Mixes 32 bytes of host randomness into the state.
pub fn reseed(seed: &[u8; 32]) {
    // SAFETY: the only borrow of STATE in this single-threaded program.
    let s = unsafe { STATE.get() };
    for (i, word) in s.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&seed[i * 8..i * 8 + 8]);
        *word ^= u64::from_le_bytes(b);
    }
    if s.iter().all(|w| *w == 0) {
        s[0] = 1;
    }
}

/// Next 64 random bits.
pub fn next() -> u64 {
    // SAFETY: the only borrow of STATE in this single-threaded program.
    let s = unsafe { STATE.get() };
    let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    out
}
