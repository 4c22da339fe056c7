//! Device threads: the threads that poll the models (descriptor rings, the wire, interrupts).
//!
//! A lab-nic runs a fixed number of them ([`DeviceThreads`]), each polling the functions given to
//! it in turn; a function joins the thread with the fewest functions when it starts and leaves
//! when it stops. One thread per function ([`ThreadCount::PerFunction`]) was the only form
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

/// The longest idle sleep of a thread that passed over a function whose state a control path
/// held: it looks again this soon, as the old blocking `lock` resumed at once.
const PASSED_OVER_SLEEP: Duration = Duration::from_micros(50);

/// What one look at a function gave.
#[derive(Default)]
struct Round {
    /// A model did work.
    did: bool,
    /// A function was kicked (a driver is active).
    busy: bool,
    /// A control path waits for a function's lock.
    waiting: bool,
    /// A function was passed over: a control path held its state.
    passed_over: bool,
}

/// Polls one function once, unless a control path holds its state: then the round passes it over
/// (its kick, if any, kept for the next round) and the thread sleeps no longer than
/// [`PASSED_OVER_SLEEP`]. A model that panics (in a poll, or in a control path's access, which
/// leaves its lock poisoned) is never polled again: its function stays served, its traffic
/// stopped, as a hung NIC's, `threads` says `(dead)`, and the thread polls the others.
fn poll_one(s: &Shared, r: &mut Round) {
    if s.stop.load(Ordering::Relaxed) || s.dead.load(Ordering::Relaxed) {
        return;
    }
    let mut guard = match s.dev.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(_)) => {
            s.dead.store(true, Ordering::Relaxed);
            tracing::error!(bdf = %s.bdf, "the device model panicked in an access: the function is no longer polled");
            return;
        }
        Err(TryLockError::WouldBlock) => {
            r.waiting = true;
            r.passed_over = true;
            return;
        }
    };
    r.busy |= s.kick.swap(false, Ordering::AcqRel);
    let d = &mut *guard;
    // A stopped device (migration) does no DMA and raises nothing.
    if d.mig.running() {
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let did = d.model.poll(&mut d.dma);
            (did, d.model.take_irqs())
        }));
        match polled {
            Ok((did, irqs)) => {
                r.did |= did;
                if irqs != 0 {
                    d.raise(irqs);
                }
                d.raise_intx();
            }
            Err(_) => {
                s.dead.store(true, Ordering::Relaxed);
                tracing::error!(bdf = %s.bdf, "the device model panicked: the function is no longer polled");
            }
        }
    }
    drop(guard);
    r.waiting |= s.waiting.load(Ordering::Acquire) > 0;
}

/// Sets [`Poller::exited`] when the thread ends, by return or by unwinding.
struct Exited<'a>(&'a Poller);

impl Drop for Exited<'_> {
    fn drop(&mut self) {
        self.0.exited.store(true, Ordering::Release);
    }
}

/// The device thread: polls its functions in turn, spins while there is work, backs off to
/// sleeping when all are idle (see [`idle_back_off`]); with no function it parks until one joins.
fn run(p: &Poller) {
    // Declared before `members`, so dropped after it: `exited` tells a waiting `leave` that the
    // thread holds no function any more.
    let _exited = Exited(p);
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
            IdleStep::Sleep(d) if r.passed_over => std::thread::park_timeout(d.min(PASSED_OVER_SLEEP)),
            IdleStep::Sleep(d) => std::thread::park_timeout(d),
        }
    }
}

/// A `--device-threads` value that is none of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --device-threads {value} (auto, per-function or 1-{max})", max = ThreadCount::MAX)]
pub struct ThreadCountError {
    /// The value as given.
    pub value: String,
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
    pub fn parse(v: &str) -> Result<Self, ThreadCountError> {
        match v {
            "auto" => Ok(Self::Auto),
            "per-function" => Ok(Self::PerFunction),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=Self::MAX).contains(n))
                .map(Self::Fixed)
                .ok_or_else(|| ThreadCountError { value: v.to_owned() }),
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
    use crate::model::{self, BarDef, DeviceModel, ModelConfig, PciIds, PortStats};
    use crate::server::Function;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    /// An 82599 that counts its polls, panics in the poll numbered `panic_at`, and says when it
    /// is dropped.
    struct Probe {
        inner: Box<dyn DeviceModel>,
        polls: Arc<AtomicU32>,
        panic_at: Option<u32>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl DeviceModel for Probe {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn ids(&self) -> PciIds {
            self.inner.ids()
        }
        fn bars(&self) -> [BarDef; 6] {
            self.inner.bars()
        }
        fn config_size(&self) -> u64 {
            self.inner.config_size()
        }
        fn config_read(&mut self, off: u64, data: &mut [u8]) {
            self.inner.config_read(off, data)
        }
        fn config_write(&mut self, off: u64, data: &[u8]) {
            self.inner.config_write(off, data)
        }
        fn bar_read(&mut self, bar: u32, off: u64, data: &mut [u8]) {
            self.inner.bar_read(bar, off, data)
        }
        fn bar_write(&mut self, bar: u32, off: u64, data: &[u8]) {
            self.inner.bar_write(bar, off, data)
        }
        fn sparse_areas(&self, bar: u32) -> Vec<(u64, u64)> {
            self.inner.sparse_areas(bar)
        }
        fn bar_memory(&self, bar: u32) -> Option<Arc<crate::mem::Mapping>> {
            self.inner.bar_memory(bar)
        }
        fn msix_count(&self) -> u32 {
            self.inner.msix_count()
        }
        fn poll(&mut self, dma: &mut dyn crate::dma::Dma) -> bool {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(self.panic_at != Some(n), "a model bug in poll {n}");
            self.inner.poll(dma)
        }
        fn take_irqs(&mut self) -> u64 {
            self.inner.take_irqs()
        }
        fn intx_asserted(&self) -> bool {
            self.inner.intx_asserted()
        }
        fn reset(&mut self) {
            self.inner.reset()
        }
        fn link_set(&mut self, up: bool) {
            self.inner.link_set(up)
        }
        fn stats(&self) -> PortStats {
            self.inner.stats()
        }
        fn faults(&self) -> &crate::fault::FaultLog {
            self.inner.faults()
        }
        fn faults_mut(&mut self) -> &mut crate::fault::FaultLog {
            self.inner.faults_mut()
        }
    }

    struct Probed {
        f: Function,
        polls: Arc<AtomicU32>,
        dropped: Arc<AtomicBool>,
        _dir: tempfile::TempDir,
    }

    fn probed(bdf: &str, panic_at: Option<u32>, threads: &DeviceThreads) -> Probed {
        let cfg = ModelConfig {
            bdf: bdf.into(),
            function: 0,
            mac: [2, 0, 0, 0, 0, 1],
            wire: Box::new(crate::wire::NullWire::default()),
        };
        let (polls, dropped) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(false)));
        let inner = model::create("ixgbe", cfg).unwrap();
        let m = Box::new(Probe { inner, polls: polls.clone(), panic_at, dropped: dropped.clone() });
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s.sock")).unwrap();
        let f = Function::start_on(bdf, m, listener, 1, dir.path(), threads).unwrap();
        Probed { f, polls, dropped, _dir: dir }
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_panicking_model_stops_alone_and_every_stop_returns() {
        let threads = DeviceThreads::start(1).unwrap();
        let mut bad = probed("0000:00:05.0", Some(3), &threads);
        let mut good = probed("0000:00:06.0", None, &threads);
        assert_eq!((bad.f.device_thread(), good.f.device_thread()), ("device-0", "device-0"));
        // Kicks keep the thread polling rather than sleeping.
        let kick = |p: &Probed| p.f.link_set(true);
        wait_for("the bad model's panic", || {
            kick(&bad);
            bad.polls.load(Ordering::SeqCst) >= 3
        });
        let at = good.polls.load(Ordering::SeqCst);
        wait_for("the good model polled on", || {
            kick(&good);
            good.polls.load(Ordering::SeqCst) > at + 50
        });
        assert_eq!(bad.polls.load(Ordering::SeqCst), 3, "a model that panicked is not polled again");
        // Its control path still answers.
        assert_eq!(bad.f.stats(), PortStats::default());
        assert!(bad.f.is_dead() && !good.f.is_dead());
        bad.f.stop();
        drop(bad.f);
        assert!(bad.dropped.load(Ordering::SeqCst), "the thread holds nothing of a stopped function");
        // A function that leaves is not polled once `stop` has returned.
        good.f.stop();
        let n = good.polls.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(good.polls.load(Ordering::SeqCst), n);
        drop(good.f);
        assert!(good.dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn a_model_that_panicked_in_an_access_is_no_longer_polled() {
        let threads = DeviceThreads::start(1).unwrap();
        let p = probed("0000:00:05.0", None, &threads);
        wait_for("a first poll", || {
            p.f.link_set(true);
            p.polls.load(Ordering::SeqCst) > 0
        });
        // A control path's access panics with the device lock held (a model bug): the lock is
        // left poisoned, the model half-updated.
        let hit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.f.with_device(|_| panic!("a model bug in an access"));
        }));
        assert!(hit.is_err());
        wait_for("the thread to see it", || p.f.is_dead());
        let n = p.polls.load(Ordering::SeqCst);
        for _ in 0..20 {
            p.f.link_set(true);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.polls.load(Ordering::SeqCst), n, "not polled after the panic");
        drop(p);
    }

    #[test]
    fn functions_spread_over_the_threads_with_the_fewest() {
        let threads = DeviceThreads::start(2).unwrap();
        let a = probed("0000:00:05.0", None, &threads);
        let b = probed("0000:00:06.0", None, &threads);
        let c = probed("0000:00:07.0", None, &threads);
        let on = |p: &Probed| p.f.device_thread().to_owned();
        assert_eq!([on(&a), on(&b), on(&c)], ["device-0", "device-1", "device-0"]);
        drop(a);
        let d = probed("0000:00:08.0", None, &threads);
        assert_eq!(on(&d), "device-0", "device-0 lost one: the first of the least busy");
        for p in [&b, &c, &d] {
            let at = p.polls.load(Ordering::SeqCst);
            wait_for("every function polled", || {
                p.f.link_set(true);
                p.polls.load(Ordering::SeqCst) > at + 10
            });
        }
        // A pool dropped first only stops polling: the functions still stop.
        drop(threads);
        drop((b, c, d));
    }

    #[test]
    fn thread_counts_parse_and_resolve() {
        assert_eq!(ThreadCount::parse("auto"), Ok(ThreadCount::Auto));
        assert_eq!(ThreadCount::parse("per-function"), Ok(ThreadCount::PerFunction));
        assert_eq!(ThreadCount::parse("3"), Ok(ThreadCount::Fixed(3)));
        for bad in ["0", "257", "-1", "two", ""] {
            let e = ThreadCount::parse(bad).unwrap_err();
            assert_eq!(e.value, bad);
            assert!(e.to_string().contains(&format!("--device-threads {bad} ")), "{e}");
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
