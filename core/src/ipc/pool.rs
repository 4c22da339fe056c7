//! The worker pool `Worker` handlers and `request_async` run on: grows on demand up to a cap.
//!
//! Jobs go through one `crossbeam_channel` (multi-consumer: every worker receives from the same
//! queue without a mutex around the receiver, which `std::sync::mpsc` would need).

use super::*;
use crossbeam_channel::{Receiver, Sender};

pub(super) type Job = Box<dyn FnOnce() + Send>;

/// A pool of worker threads that grows on demand up to a cap.
pub(super) struct Workers {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    idle: Arc<AtomicUsize>,
    total: AtomicUsize,
    max: usize,
    pub(super) spin_us: AtomicU64,
}

impl Workers {
    pub(super) fn new(max: usize) -> Workers {
        let (tx, rx) = crossbeam_channel::unbounded();
        Workers {
            tx: Mutex::new(Some(tx)),
            rx,
            idle: Arc::new(AtomicUsize::new(0)),
            total: AtomicUsize::new(0),
            max,
            spin_us: AtomicU64::new(u64::MAX),
        }
    }

    pub(super) fn submit(&self, job: Job) {
        if self.idle.load(Ordering::Acquire) == 0 && self.total.load(Ordering::Relaxed) < self.max {
            self.total.fetch_add(1, Ordering::Relaxed);
            let rx = self.rx.clone();
            let idle = self.idle.clone();
            let spawned = std::thread::Builder::new().name("lab-ipc-worker".into()).spawn(move || loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let job = rx.recv();
                idle.fetch_sub(1, Ordering::AcqRel);
                match job {
                    Ok(j) => j(),
                    Err(_) => break,
                }
            });
            if spawned.is_err() {
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(job);
        }
    }

    pub(super) fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
