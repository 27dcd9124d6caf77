//! A fast thread-local xorshift64* generator for weighted backend picks.
//!
//! Not cryptographic: it only spreads traffic. Each thread is seeded from
//! `RandomState` (the OS-seeded SipHash keys std already draws), so no extra
//! dependency and no lock or syscall per request.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A uniformly distributed `u64` from this thread's generator.
pub fn next_u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn seed() -> u64 {
    // Any per-thread random value will do; xorshift must not start at zero.
    RandomState::new().hash_one(0x5EED_u64) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_evenly_over_small_ranges() {
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[(next_u64() % 4) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
