//! The vfio-user server framework: one emulated function = one [`Function`].
//!
//! ```text
//!  client ──► public socket (<sysfs>/<BDF>/vfio-user.sock)
//!               │ gatekeeper thread: accept; pool full? close + log (a clear refusal, never a hang)
//!               ▼
//!          relay thread per connection ──► private socket (0600) ──► worker (pool of N threads,
//!          (frames messages, checks sizes,                              each looping Server::run with
//!           passes fds through)                                         a per-connection ConnBackend)
//!                                         device thread (a pool's, see [`DeviceThreads`]):
//!                                         model.poll(dma) + interrupts, its functions in turn
//! ```
//!
//! Why a relay: `vfio_user::Server::run` accepts on its own listener and never exposes the connection,
//! so the backend can neither count clients nor close one. The gatekeeper owns the public socket, so it
//! knows exactly how many clients are live, refuses the one beyond the pool, and can close every client
//! of an unplugged function (by shutting down the relay's sockets). The relay also drops malformed
//! messages the crate would panic on or lose sync over (bad VERSION strings, unsupported commands),
//! answering them with an error reply itself. Doorbells are mmapped, and the relay does the
//! trapped region accesses (REGION_READ/WRITE) on the model itself, so a register access costs
//! client -> relay -> client, no more than without a relay; it forwards an access to the worker
//! only while a forwarded request may still be in the worker's hands, so every request keeps its
//! order. A posted write (*No_reply*) is done and not answered.
//!
//! The relay is also where the protocol is checked as the spec says (negotiation first, sizes
//! from argsz, flags, ranges against the regions and the connection's DMA maps, deadlines for
//! silent clients), so an error reply always carries its errno, which the crate's server leaves
//! at 0 for backend errors. Backend rules: an access inside a region that the model does not
//! implement reads all-ones, is ignored on write, and is recorded as a fault. DMA maps are per
//! connection and dropped when the connection's `run` returns; device state stays.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea};

use crate::dma::{ConnId, DmaTable};
use crate::fault::Fault;
use crate::mem::Mapping;
use crate::model::{DeviceModel, PortStats};

mod backend;
mod feature;
mod migration;
mod relay;
mod threads;

use self::backend::ConnBackend;
use self::relay::start_relay;
use self::threads::Poller;
pub use self::threads::{DeviceThreads, ThreadCount, ThreadCountError};

/// Name of the workers' socket in the function's directory (the relays' only way in).
pub const WORKER_SOCKET: &str = "worker.sock";
/// Default number of concurrent client connections per function.
pub const DEFAULT_POOL: usize = 8;
/// Largest REGION_READ/REGION_WRITE payload accepted (the crate advertises 1 MiB).
pub const MAX_DATA_XFER: u32 = 1 << 20;
/// Longest idle sleep of the device thread.
pub const MAX_IDLE_SLEEP: Duration = Duration::from_micros(200);
/// Sleep of the device thread after a long idle period (no traffic, no register access).
pub const DEEP_IDLE_SLEEP: Duration = Duration::from_millis(2);
/// Sleep of the device thread after several seconds without traffic or register access.
pub const DEEPEST_IDLE_SLEEP: Duration = Duration::from_millis(10);
const HEADER: usize = 16;
const NUM_REGIONS: usize = 9;
const NUM_IRQS: usize = 5;
const MAX_FDS: usize = 16;

/// Server framework errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The private socket between relays and workers could not be created.
    #[error("cannot create the private worker socket for {bdf}: {source}")]
    PrivateSocket {
        /// Function.
        bdf: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread for {bdf}: {source}")]
    Spawn {
        /// Function.
        bdf: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The model declares sparse areas for a BAR but provides no memory for it.
    #[error("model {model} has sparse areas in BAR{bar} but no BAR memory")]
    BarMemoryMissing {
        /// Model name.
        model: &'static str,
        /// BAR index.
        bar: u32,
    },
}

/// Device state shared by the device thread and every connection of a function.
pub struct DeviceState {
    /// The hardware.
    pub model: Box<dyn DeviceModel>,
    /// The union of the live connections' DMA maps.
    pub dma: DmaTable,
    /// MSI-X eventfds per connection (index = vector).
    irqs: HashMap<ConnId, Vec<Option<File>>>,
    /// INTx per connection: its eventfd and whether it is masked.
    intx: HashMap<ConnId, Intx>,
    /// Migration state and data stream.
    mig: migration::Migration,
}

/// One connection's INTx: an eventfd, signalled when the function asserts INTx and the
/// connection has it unmasked. Automasked, as vfio-pci's INTx is: a signal masks it until the
/// client unmasks it (SET_IRQS UNMASK), so a level that stays asserted is one signal, not a
/// storm, and is signalled again after an unmask if the driver has not cleared its cause.
#[derive(Debug, Default)]
struct Intx {
    fd: Option<File>,
    masked: bool,
}

impl DeviceState {
    /// Wraps a model with no DMA maps and no interrupts.
    pub fn new(model: Box<dyn DeviceModel>) -> Self {
        Self { model, dma: DmaTable::default(), irqs: HashMap::new(), intx: HashMap::new(), mig: Default::default() }
    }

    /// Signals INTx to every connection that has it unmasked while the function asserts it, and
    /// masks it there (automask). Cheap when no connection uses INTx.
    fn raise_intx(&mut self) {
        if self.intx.is_empty() || !self.model.intx_asserted() {
            return;
        }
        for x in self.intx.values_mut() {
            if let (Some(mut f), false) = (x.fd.as_ref(), x.masked) {
                let _ = f.write(&1u64.to_ne_bytes());
                x.masked = true;
            }
        }
    }

    /// Signals every eventfd registered for the vectors in `vectors` (bit n = vector n).
    fn raise(&self, vectors: u64) {
        for fds in self.irqs.values() {
            for (v, fd) in fds.iter().enumerate() {
                if vectors & (1u64 << v) != 0 {
                    if let Some(mut f) = fd.as_ref() {
                        let _ = f.write(&1u64.to_ne_bytes());
                    }
                }
            }
        }
    }
}

struct ConnRecord {
    client: UnixStream,
    worker: UnixStream,
    since: Instant,
    /// The client's pid as the kernel saw it connect (SO_PEERCRED), 0 if unknown.
    pid: i32,
}

struct Shared {
    bdf: String,
    /// Region sizes (by index) and MSI-X vectors, for the relay's request checks.
    region_sizes: Vec<u64>,
    msix: u32,
    dev: Mutex<DeviceState>,
    conns: Mutex<HashMap<u64, ConnRecord>>,
    stop: AtomicBool,
    next_conn: AtomicU64,
    pool: usize,
    refused: AtomicU64,
    /// The workers' socket (`/proc/self/fd/<dir>/worker.sock`).
    private: std::path::PathBuf,
    /// Keeps the directory of `private` open, so its path above stays valid.
    _private_dir: File,
    /// The workers' listener, shut down at stop to wake every worker blocked in accept.
    accept_wake: UnixListener,
    kick: AtomicBool,
    waiting: AtomicUsize,
    /// The device thread that polls this function.
    poller: Arc<Poller>,
    /// The model panicked in a poll: it is not polled again.
    dead: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Locks the device state for a control-path access, telling the device thread someone waits
    /// (it yields between polls while a waiter exists, so trapped accesses are not starved by traffic).
    fn dev(&self) -> MutexGuard<'_, DeviceState> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let g = lock(&self.dev);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        g
    }

    /// Wakes the device thread out of an idle sleep (a driver is active).
    fn kick(&self) {
        self.kick.store(true, Ordering::Release);
        self.poller.unpark();
    }
}

/// One emulated PCI function served over vfio-user.
pub struct Function {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    wake: UnixStream,
    _server: Arc<Server>,
    _bar_memory: Vec<Arc<Mapping>>,
    /// The device thread of this function alone, when it was started without a pool.
    own_threads: Option<DeviceThreads>,
    stopped: bool,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("bdf", &self.shared.bdf)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

fn region(index: u32, size: u64, mmap: bool) -> vfio_region_info {
    let mut flags = 0;
    if size > 0 {
        flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        if mmap {
            flags |= VFIO_REGION_INFO_FLAG_MMAP;
        }
    }
    vfio_region_info {
        argsz: std::mem::size_of::<vfio_region_info>() as u32,
        flags,
        index,
        cap_offset: 0,
        size,
        offset: 0,
    }
}

impl Function {
    /// Starts serving `model` on `listener` (already bound and listening, usually by
    /// [`crate::sysfs::SysfsFunction`]) with `pool` concurrent connections and a device thread of
    /// its own; the workers' own socket ([`WORKER_SOCKET`], owner-only) goes in `private_dir`
    /// (the function's directory).
    pub fn start(
        bdf: &str,
        model: Box<dyn DeviceModel>,
        listener: UnixListener,
        pool: usize,
        private_dir: &std::path::Path,
    ) -> Result<Self, ServerError> {
        let own = DeviceThreads::own().map_err(|source| ServerError::Spawn { bdf: bdf.to_owned(), source })?;
        let mut f = Self::start_on(bdf, model, listener, pool, private_dir, &own)?;
        f.own_threads = Some(own);
        Ok(f)
    }

    /// [`Function::start`], polled by the device thread of `threads` with the fewest functions.
    pub fn start_on(
        bdf: &str,
        model: Box<dyn DeviceModel>,
        listener: UnixListener,
        pool: usize,
        private_dir: &std::path::Path,
        threads: &DeviceThreads,
    ) -> Result<Self, ServerError> {
        let pool = pool.max(1);
        let mut regions = Vec::with_capacity(NUM_REGIONS);
        let mut bar_memory = Vec::new();
        let bars = model.bars();
        for (i, bar) in bars.iter().enumerate() {
            let areas = model.sparse_areas(i as u32);
            let mem = if areas.is_empty() {
                None
            } else {
                let m = model
                    .bar_memory(i as u32)
                    .ok_or(ServerError::BarMemoryMissing { model: model.name(), bar: i as u32 })?;
                bar_memory.push(m.clone());
                Some(m)
            };
            regions.push(ServerRegion {
                region_info: region(i as u32, bar.size, mem.is_some()),
                sparse_areas: areas
                    .iter()
                    .map(|(offset, size)| SparseArea {
                        area: vfio_region_sparse_mmap_area { offset: *offset, size: *size },
                    })
                    .collect(),
                mmap_fd: mem.and_then(|m| m.raw_fd()),
            });
        }
        regions.push(ServerRegion { region_info: region(6, 0, false), sparse_areas: Vec::new(), mmap_fd: None });
        regions.push(ServerRegion {
            region_info: region(VFIO_PCI_CONFIG_REGION_INDEX, model.config_size(), false),
            sparse_areas: Vec::new(),
            mmap_fd: None,
        });
        regions.push(ServerRegion { region_info: region(8, 0, false), sparse_areas: Vec::new(), mmap_fd: None });
        let irqs = (0..NUM_IRQS as u32)
            .map(|index| match index {
                // Both NICs have an interrupt pin (INTA): one INTx line, maskable, automasked.
                VFIO_PCI_INTX_IRQ_INDEX => IrqInfo {
                    index,
                    flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
                    count: 1,
                },
                VFIO_PCI_MSIX_IRQ_INDEX => IrqInfo { index, flags: VFIO_IRQ_INFO_EVENTFD, count: model.msix_count() },
                _ => IrqInfo { index, flags: VFIO_IRQ_INFO_EVENTFD, count: 0 },
            })
            .collect();

        // The workers' socket: a file only this user can connect to, in `private_dir`, reached
        // through an O_PATH descriptor of it (any path length). Not an abstract socket: those
        // have no permissions, and /proc/net/unix shows their names to every user, who could
        // then talk to the crate directly, past the relay's checks and deadlines.
        let perr = |source| ServerError::PrivateSocket { bdf: bdf.to_owned(), source };
        let private_dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(private_dir)
            .map_err(perr)?;
        let private = std::path::PathBuf::from(format!("/proc/self/fd/{}/{WORKER_SOCKET}", private_dir.as_raw_fd()));
        let _ = std::fs::remove_file(&private);
        let private_listener = crate::sysfs::listen_owner_only(&private).map_err(perr)?;
        let accept_wake = private_listener.try_clone().map_err(perr)?;
        let mut region_sizes = vec![0u64; NUM_REGIONS];
        for r in &regions {
            if let Some(s) = region_sizes.get_mut(r.region_info.index as usize) {
                *s = r.region_info.size;
            }
        }
        let msix = model.msix_count();
        let server = Arc::new(Server::from_owned_fd(OwnedFd::from(private_listener), true, irqs, regions));
        let shared = Arc::new(Shared {
            bdf: bdf.to_owned(),
            region_sizes,
            msix,
            dev: Mutex::new(DeviceState::new(model)),
            conns: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            pool,
            refused: AtomicU64::new(0),
            private,
            _private_dir: private_dir,
            accept_wake,
            kick: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            poller: threads.pick(),
            dead: AtomicBool::new(false),
        });
        let (wake, wake_rx) = UnixStream::pair().map_err(perr)?;
        let mut f = Self {
            shared: shared.clone(),
            threads: Vec::new(),
            wake,
            _server: server.clone(),
            _bar_memory: bar_memory,
            own_threads: None,
            stopped: false,
        };
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(body)
                .map_err(|source| ServerError::Spawn { bdf: bdf.to_owned(), source })
        };
        for i in 0..pool {
            let (s, srv) = (shared.clone(), server.clone());
            f.threads.push(spawn(format!("vfu-{i}"), Box::new(move || worker(&s, &srv)))?);
        }
        let s = shared.clone();
        f.threads.push(spawn("gatekeeper".into(), Box::new(move || gatekeeper(&s, &listener, &wake_rx)))?);
        shared.poller.join(shared.clone());
        tracing::info!(bdf, pool, device_thread = shared.poller.name(), "function serving");
        Ok(f)
    }

    /// The name of the device thread that polls this function (`device`, or `device-N` in a pool).
    pub fn device_thread(&self) -> &str {
        self.shared.poller.name()
    }

    /// Whether the model panicked (in a poll or an access) and is no longer polled.
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Relaxed)
    }

    /// PCI address.
    pub fn bdf(&self) -> &str {
        &self.shared.bdf
    }

    /// Live client connections.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Connections refused because the pool was full.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Id, age and client pid (0 if unknown) of the live connections (for `connections BDF`).
    pub fn connection_ages(&self) -> Vec<(u64, Duration, i32)> {
        let mut v: Vec<_> = lock(&self.shared.conns).iter().map(|(id, c)| (*id, c.since.elapsed(), c.pid)).collect();
        v.sort();
        v
    }

    /// Sets the link (cable) state.
    pub fn link_set(&self, up: bool) {
        self.shared.dev().model.link_set(up);
        self.shared.kick();
    }

    /// Lifetime port counters.
    pub fn stats(&self) -> PortStats {
        self.shared.dev().model.stats()
    }

    /// Total faults and the last `n` records.
    pub fn faults(&self, n: usize) -> (u64, Vec<Fault>) {
        let d = self.shared.dev();
        (d.model.faults().total(), d.model.faults().last(n))
    }

    /// Runs `f` on the device state (tests, diagnostics).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut DeviceState) -> R) -> R {
        f(&mut self.shared.dev())
    }

    /// Stops serving: closes every client connection, stops the threads and waits for them.
    /// The public listener is closed; removing its socket file is the caller's job (sysfs).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let s = &self.shared;
        s.stop.store(true, Ordering::SeqCst);
        // Off the device thread first: when this returns the model is not polled any more.
        s.poller.leave(s);
        let _ = self.wake.write(&[1]);
        for c in lock(&s.conns).values() {
            let _ = c.client.shutdown(std::net::Shutdown::Both);
            let _ = c.worker.shutdown(std::net::Shutdown::Both);
        }
        // Wake workers blocked in accept: each takes an empty connection and sees `stop`.
        // (accept then fails with EINVAL; the function's directory may already be gone).
        let _ = nix::sys::socket::shutdown(s.accept_wake.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = std::fs::remove_file(&s.private);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.own_threads = None;
        tracing::info!(bdf = %s.bdf, "function stopped");
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts clients on the public socket and hands each to a relay, or refuses it.
fn gatekeeper(s: &Arc<Shared>, listener: &UnixListener, wake: &UnixStream) {
    let mut relays: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN), PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            tracing::error!(bdf = %s.bdf, "poll on listener failed: {e}");
            break;
        }
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        if !ready {
            continue;
        }
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(bdf = %s.bdf, "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        relays.retain(|h| !h.is_finished());
        let live = lock(&s.conns).len();
        if live >= s.pool {
            s.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                bdf = %s.bdf,
                "refusing a vfio-user client: all {} connection slots are in use (connection closed)",
                s.pool
            );
            drop(client);
            continue;
        }
        match start_relay(s, client) {
            Ok(h) => relays.push(h),
            Err(e) => tracing::warn!(bdf = %s.bdf, "cannot serve a client: {e}"),
        }
    }
    // No new connection can appear now: close the live ones so their relays end.
    for c in lock(&s.conns).values() {
        let _ = c.client.shutdown(std::net::Shutdown::Both);
        let _ = c.worker.shutdown(std::net::Shutdown::Both);
    }
    for h in relays {
        let _ = h.join();
    }
}

/// A worker: serves one connection at a time through the crate's `Server::run`.
fn worker(s: &Arc<Shared>, server: &Arc<Server>) {
    while !s.stop.load(Ordering::SeqCst) {
        let conn = s.next_conn.fetch_add(1, Ordering::Relaxed) | (1 << 63);
        let mut backend = ConnBackend { shared: s.clone(), conn };
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.run(&mut backend)));
        // The relay introduced itself (see `relay::INTRO_OFFSET`): the connection's id is its own.
        let conn = backend.conn;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(bdf = %s.bdf, "connection ended: {e}"),
            Err(_) => tracing::error!(bdf = %s.bdf, "vfio-user server panicked on a connection; dropped it"),
        }
        let mut d = s.dev();
        let maps = d.dma.drop_conn(conn);
        let irqs = d.irqs.remove(&conn).is_some() | d.intx.remove(&conn).is_some();
        if maps > 0 || irqs {
            tracing::info!(bdf = %s.bdf, maps, "dropped a closed connection's DMA maps and eventfds");
        }
    }
}

/// What the device thread does after an empty poll (see [`idle_back_off`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStep {
    /// Poll again at once, with a CPU spin hint between (no system call).
    Spin,
    /// Give the CPU to another runnable thread, then poll again.
    Yield,
    /// Sleep this long (woken early by a kick).
    Sleep(Duration),
}

/// Idle back-off of the device thread after `idle` empty polls: a short bounded spin first (a
/// driver between two bursts rings again within microseconds, and a spin costs no system call;
/// kept short because on a machine with fewer cores than busy threads a spin takes the core from
/// the very processes that would give it work: 512 spins made `events/lsc/1` 2.5x slower here),
/// then yields, then sleeps growing to [`MAX_IDLE_SLEEP`]; after about 100 ms without work, 1 ms
/// sleeps, after about 1.5 s [`DEEP_IDLE_SLEEP`], and after about 5 s more
/// [`DEEPEST_IDLE_SLEEP`], so an idle lab costs no CPU. Any trapped register access (and
/// `link up|down`) kicks the thread back to spinning; the only cost of a deep sleep is the
/// latency of the first doorbell after a long silence.
pub fn idle_back_off(idle: u32) -> IdleStep {
    const SPINS: u32 = 32;
    const YIELDS: u32 = SPINS + 64;
    const RAMP: u32 = YIELDS + 16 * 8;
    const SHALLOW: u32 = RAMP + 500;
    const MEDIUM: u32 = SHALLOW + 1500;
    const DEEP: u32 = MEDIUM + 2500;
    let us = match idle {
        i if i < SPINS => return IdleStep::Spin,
        i if i < YIELDS => return IdleStep::Yield,
        i if i < RAMP => (10u64 << ((i - YIELDS) / 16)).min(MAX_IDLE_SLEEP.as_micros() as u64),
        i if i < SHALLOW => MAX_IDLE_SLEEP.as_micros() as u64,
        i if i < MEDIUM => 1000,
        i if i < DEEP => DEEP_IDLE_SLEEP.as_micros() as u64,
        _ => DEEPEST_IDLE_SLEEP.as_micros() as u64,
    };
    IdleStep::Sleep(Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_back_off_spins_then_yields_then_sleeps_longer() {
        assert_eq!(idle_back_off(1), IdleStep::Spin);
        assert_eq!(idle_back_off(31), IdleStep::Spin);
        assert_eq!(idle_back_off(32), IdleStep::Yield);
        assert_eq!(idle_back_off(96), IdleStep::Sleep(Duration::from_micros(10)));
        assert_eq!(idle_back_off(222), IdleStep::Sleep(MAX_IDLE_SLEEP));
        assert_eq!(idle_back_off(u32::MAX), IdleStep::Sleep(DEEPEST_IDLE_SLEEP));
        let mut last = Duration::ZERO;
        for i in 96..6000 {
            let IdleStep::Sleep(d) = idle_back_off(i) else { panic!("poll {i} does not sleep") };
            assert!(d >= last);
            last = d;
        }
    }
}
