//! Device threads: the threads that poll the models (descriptor rings, the wire, interrupts).
//!
//! A lab-nic runs a fixed number of them ([`DeviceThreads`]), each polling the functions given to
//! it in turn; a function joins the thread with the fewest functions when it starts and leaves
//! when it stops. One thread per function ([`DeviceThreads::per_function`]) was the only form
//! before; on a machine with fewer cores than functions it put more spinning threads than cores
//! beside the applications that poll the same devices. With several functions on one thread, a
//! function whose state a control path holds (a trapped register access, a reset, a migration
//! step) is passed over for that round (`try_lock`), so one client's slow access never stalls
//! the other functions' traffic.
//!
//! Membership changes are rare (plug, unplug) and cost one allocation; the loop itself reads one
//! atomic per round to see them and takes no lock but the functions' own, with `try_lock`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use super::{idle_back_off, lock, IdleStep, Shared};

/// How long [`Poller::leave`] waits between looks at the thread's progress.
const LEAVE_STEP: Duration = Duration::from_micros(50);

/// One device thread's side of the pool: the functions it polls.
pub(super) struct Poller {
    name: String,
    members: Mutex<Vec<Arc<Shared>>>,
    /// Bumped under `members` on every change; the thread copies the list when it sees a new one.
    gen: AtomicU64,
    /// The generation the thread polls (its copy holds no function of an older one).
    seen: AtomicU64,
    stop: AtomicBool,
    /// Set when the thread has exited (a leave then has nothing to wait for).
    exited: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Poller {
    fn new(name: String) -> Self {
        Self {
            name,
            members: Mutex::new(Vec::new()),
            gen: AtomicU64::new(1),
            seen: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            thread: OnceLock::new(),
        }
    }

    /// The thread's name (`device-N`).
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Wakes the thread out of an idle sleep.
    pub(super) fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    fn members(&self) -> usize {
        lock(&self.members).len()
    }

    /// Adds a function: the thread polls it from its next round on.
    pub(super) fn join(&self, s: Arc<Shared>) {
        let mut m = lock(&self.members);
        m.push(s);
        self.gen.fetch_add(1, Ordering::AcqRel);
        drop(m);
        self.unpark();
    }

    /// Removes a function and waits until the thread no longer holds it: when this returns, the
    /// function is not being polled and never will be again by this thread.
    pub(super) fn leave(&self, s: &Arc<Shared>) {
        let mut m = lock(&self.members);
        let before = m.len();
        m.retain(|x| !Arc::ptr_eq(x, s));
        if m.len() == before {
            return;
        }
        let g = self.gen.fetch_add(1, Ordering::AcqRel) + 1;
        drop(m);
        self.unpark();
        while self.seen.load(Ordering::Acquire) < g && !self.exited.load(Ordering::Acquire) {
            self.unpark();
            std::thread::sleep(LEAVE_STEP);
        }
    }
}

/// What one look at a function gave.
#[derive(Default)]
struct Round {
    /// A model did work.
    did: bool,
    /// A function was kicked (a driver is active) or its state was held by a control path.
    busy: bool,
    /// A control path waits for a function's lock.
    waiting: bool,
}

/// Polls one function once, unless its state is held (then it counts as busy, not idle).
fn poll_one(s: &Shared, r: &mut Round) {
    if s.stop.load(Ordering::Relaxed) {
        return;
    }
    r.busy |= s.kick.swap(false, Ordering::AcqRel);
    let mut guard = match s.dev.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            r.busy = true;
            r.waiting = true;
            return;
        }
    };
    let d = &mut *guard;
    // A stopped device (migration) does no DMA and raises nothing.
    if d.mig.running() {
        r.did |= d.model.poll(&mut d.dma);
        let irqs = d.model.take_irqs();
        if irqs != 0 {
            d.raise(irqs);
        }
        d.raise_intx();
    }
    drop(guard);
    r.waiting |= s.waiting.load(Ordering::Acquire) > 0;
}

/// The device thread: polls its functions in turn, spins while there is work, backs off to
/// sleeping when all are idle (see [`idle_back_off`]); with no function it parks until one joins.
fn run(p: &Poller) {
    let mut members: Vec<Arc<Shared>> = Vec::new();
    let mut seen = 0;
    let mut idle: u32 = 0;
    while !p.stop.load(Ordering::Relaxed) {
        let g = p.gen.load(Ordering::Acquire);
        if g != seen {
            members = lock(&p.members).clone();
            seen = g;
            p.seen.store(g, Ordering::Release);
            idle = 0;
        }
        if members.is_empty() {
            std::thread::park();
            continue;
        }
        let mut r = Round::default();
        for s in &members {
            poll_one(s, &mut r);
        }
        if r.did || r.busy {
            idle = 0;
            if r.did {
                if r.waiting {
                    std::thread::yield_now();
                }
                continue;
            }
        }
        idle = idle.saturating_add(1);
        match idle_back_off(idle) {
            // A thread waiting for a model's lock (a trapped access) gets the CPU rather than a
            // spin beside it.
            IdleStep::Spin if !r.waiting => std::hint::spin_loop(),
            IdleStep::Spin | IdleStep::Yield => std::thread::yield_now(),
            IdleStep::Sleep(d) => std::thread::park_timeout(d),
        }
    }
    drop(members);
    p.exited.store(true, Ordering::Release);
}

/// How many device threads to run, as `lab-nic --device-threads` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadCount {
    /// One thread per function (each function starts and stops its own).
    PerFunction,
    /// This many threads shared by every function (at least 1).
    Fixed(usize),
    /// Half the cores this process may run on (at least 1), but no more than the functions: the
    /// other half is left to the applications, which poll the same devices from their own cores.
    Auto,
}

impl ThreadCount {
    /// Largest `Fixed` count accepted.
    pub const MAX: usize = 256;

    /// Parses `auto`, `per-function` or a count 1..=[`ThreadCount::MAX`]; the error names the value.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "auto" => Ok(Self::Auto),
            "per-function" => Ok(Self::PerFunction),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=Self::MAX).contains(n))
                .map(Self::Fixed)
                .ok_or_else(|| format!("invalid --device-threads {v} (auto, per-function or 1-{})", Self::MAX)),
        }
    }

    /// The number of shared threads for `functions` functions on `cores` cores; `None`: one per
    /// function.
    pub fn resolve(self, functions: usize, cores: usize) -> Option<usize> {
        match self {
            Self::PerFunction => None,
            Self::Fixed(n) => Some(n.max(1)),
            Self::Auto => Some((cores / 2).max(1).min(functions.max(1))),
        }
    }
}

/// A pool of device threads shared by the functions of one emulator. Dropping it stops the threads
/// (its functions must have stopped first; one still in it is simply no longer polled).
pub struct DeviceThreads {
    pollers: Vec<Arc<Poller>>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DeviceThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceThreads").field("threads", &self.pollers.len()).finish_non_exhaustive()
    }
}

impl DeviceThreads {
    /// Starts `n` device threads (at least 1), named `device-0` .. `device-(n-1)`.
    pub fn start(n: usize) -> std::io::Result<Self> {
        Self::spawn((0..n.max(1)).map(|i| format!("device-{i}")).collect())
    }

    /// One thread named `device`, for one function of its own.
    pub(super) fn own() -> std::io::Result<Self> {
        Self::spawn(vec!["device".to_owned()])
    }

    fn spawn(names: Vec<String>) -> std::io::Result<Self> {
        let mut t = Self { pollers: Vec::new(), handles: Vec::new() };
        for name in names {
            let p = Arc::new(Poller::new(name.clone()));
            let p2 = p.clone();
            // On an error, `t` drops here and stops the threads already started.
            let h = std::thread::Builder::new().name(name).spawn(move || run(&p2))?;
            let _ = p.thread.set(h.thread().clone());
            t.pollers.push(p);
            t.handles.push(h);
        }
        Ok(t)
    }

    /// Number of threads.
    pub fn len(&self) -> usize {
        self.pollers.len()
    }

    /// Always false: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.pollers.is_empty()
    }

    /// The thread with the fewest functions (the first of those), for a function that starts.
    pub(super) fn pick(&self) -> Arc<Poller> {
        self.pollers.iter().min_by_key(|p| p.members()).expect("a pool has a thread").clone()
    }
}

impl Drop for DeviceThreads {
    fn drop(&mut self) {
        for p in &self.pollers {
            p.stop.store(true, Ordering::SeqCst);
            p.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_parse_and_resolve() {
        assert_eq!(ThreadCount::parse("auto"), Ok(ThreadCount::Auto));
        assert_eq!(ThreadCount::parse("per-function"), Ok(ThreadCount::PerFunction));
        assert_eq!(ThreadCount::parse("3"), Ok(ThreadCount::Fixed(3)));
        for bad in ["0", "257", "-1", "two", ""] {
            let e = ThreadCount::parse(bad).unwrap_err();
            assert!(e.contains(&format!("--device-threads {bad} ")), "{e}");
        }
        // Auto: half the cores, at least one, no more than the functions.
        assert_eq!(ThreadCount::Auto.resolve(4, 2), Some(1));
        assert_eq!(ThreadCount::Auto.resolve(4, 1), Some(1));
        assert_eq!(ThreadCount::Auto.resolve(4, 16), Some(4));
        assert_eq!(ThreadCount::Auto.resolve(1, 16), Some(1));
        assert_eq!(ThreadCount::Auto.resolve(0, 16), Some(1));
        assert_eq!(ThreadCount::Fixed(3).resolve(1, 2), Some(3));
        assert_eq!(ThreadCount::PerFunction.resolve(4, 2), None);
    }
}
