//! The fault sweep's cases and the runner's parallel map.

use super::*;

/// The sweep's cases for a scenario: every process x {attach, pre-detach, detach} x {fail,
/// hang, crash}.
pub fn sweep_cases(sc: &Scenario) -> Vec<FaultCase> {
    let mut v = Vec::new();
    for p in process_names(&sc.lab) {
        for op in ["attach", "pre-detach", "detach"] {
            for mode in ["fail", "hang", "crash"] {
                v.push(FaultCase { process: p.clone(), op, mode });
            }
        }
    }
    v
}

/// Runs `jobs` in parallel on `threads` workers; results in input order.
pub fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    stop: &AtomicBool,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<Option<R>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<R>>> = std::sync::Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                let r = f(i, item);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}
