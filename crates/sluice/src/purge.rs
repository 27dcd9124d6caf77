//! Giving freed memory back to the OS while `sluice run` is idle.
//!
//! mimalloc (the global allocator, `main.rs`) returns freed pages to the OS
//! only `purge_delay` (1 s) after they were freed, and only from inside a
//! later allocator call that frees a page. A reload's transient peak (the
//! YAML text, its JSON documents, the previous table and objects) would
//! stay resident for as long as the process stays idle afterwards: with
//! 10,000 routes, 77 MB instead of 46 MB (loadtests/07-memory). mimalloc's
//! `mi_collect` does this directly, but calling it is `unsafe` (FFI) and the
//! workspace forbids unsafe code; the `purge_delay` option has no
//! compile-time default to set either (`MIMALLOC_PURGE_DELAY=0` in the
//! environment also works). So this task makes mimalloc purge: every
//! [`PERIOD`] it allocates and frees one huge block, never touched (no
//! resident memory), whose page free runs mimalloc's purge of every range
//! whose delay has passed. A few microseconds every two seconds.

use std::time::Duration;

/// How often the purge is nudged (after a change, freed memory goes back
/// within `purge_delay` + `PERIOD`).
const PERIOD: Duration = Duration::from_secs(2);

/// Larger than mimalloc's large-object limit, so the block gets a page of
/// its own that is freed (not kept for reuse) when the block is.
const BLOCK: usize = 8 << 20;

/// Runs forever; spawn it on the runtime.
pub(crate) async fn nudge_forever() {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        nudge();
    }
}

fn nudge() {
    let block: Vec<u8> = Vec::with_capacity(BLOCK);
    drop(std::hint::black_box(block));
}
