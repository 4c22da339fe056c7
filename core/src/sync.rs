//! The atomics, fences and spin hints of the lock-free structures processes share: std's, or
//! loom's when built with `RUSTFLAGS="--cfg loom"`, so loom explores every interleaving and
//! weak-memory outcome of the same code (`ci/run.sh` runs those tests: the ring's, the mempool
//! cache's and cache slots', the port table's).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A wait on another thread's or process's progress: spins a while, then yields. Under loom
/// every turn yields, so the model checker schedules the thread waited for.
#[inline]
pub(crate) fn backoff(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    {
        if *spins < 128 {
            std::hint::spin_loop()
        } else {
            std::thread::yield_now()
        }
    }
}
