//! `net_virtio_user`: a virtio-net front end over vhost-user, DPDK's virtio_user PMD. The other
//! end is any vhost-user net back end: DPDK's `net_vhost` (testpmd), QEMU's, ours.
//!
//! `net_virtio_user0,path=PATH[,queues=N][,queue_size=N][,server=0|1][,mac=..]`: `path` is the
//! back end's socket (`server=0`, the default: we connect) or ours (`server=1`: we listen, and
//! the probe waits up to the hotplug timeout for the back end to connect, as DPDK's does).
//!
//! The control path (the primary) speaks vhost-user through rust-vmm's `vhost` crate
//! (`Frontend`): SET_OWNER, features (VERSION_1 required; MQ and the protocol
//! features MQ and REPLY_ACK when offered), SET_MEM_TABLE, then per virtqueue NUM, BASE, ADDR,
//! KICK, CALL and (with protocol features) ENABLE. The memory table is one region: the lab's
//! whole shared-memory file, passed as its descriptor, at guest address [`IOVA_BASE`]. Rings
//! and buffers live in that file, so descriptors carry the lab's IOVAs, which mean the same in
//! every process: any process of the lab can run any queue.
//!
//! The virtqueues are net_virtio's ([`super::vq`]): receive queue `q` is virtqueue `2q`,
//! transmit queue `q` is `2q + 1`, each in a memzone of its own (`virtio_user_<port>_{rx,tx}q<q>`).
//! We poll: every available ring says VIRTQ_AVAIL_F_NO_INTERRUPT, and a kick (a write to the
//! queue's eventfd) is made only when the back end's used ring asks for one, once per burst.
//! Secondaries get duplicates of the kick eventfds from the primary over IPC (action
//! [`FDS_ACTION`]).
//!
//! Link state is the connection's: up once the handshake is done, down when the back end hangs
//! up (checked at each link query, without blocking). A link query in the primary that finds
//! the link down reconnects: `server=0` connects again, `server=1` takes a back end waiting on
//! our socket. The rings keep their state; each virtqueue restarts at the used index the old back
//! end reached (SET_VRING_BASE), so frames posted while it was away go out after.
//!
//! Mergeable receive buffers (`mrg_rxbuf=1`, the default, as DPDK's): MRG_RXBUF is negotiated
//! when the back end offers it, and a frame the back end spreads over several receive buffers
//! (`num_buffers` in its header) arrives as one chained packet ([`Mbuf::nb_segs`]). A chained
//! packet given to transmit is copied into one buffer (dropped and counted when over one
//! buffer's room: one descriptor per frame).
//!
//! Not yet: offloads, the control queue, packed rings, link events by interrupt (the link is
//! found by query), transmit descriptor chains.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortId, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{Shm, IOVA_BASE};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vq::{NoBar, RxVq, TxVq, Vq};
use crate::error::{Ctx, DriverError};
use crate::pci::fmt_mac;
use crate::sys::share;

const NAME: &str = "net_virtio_user";
/// Queue pairs at most.
pub const MAX_QUEUES: u16 = 8;
/// IPC action of the primary that hands the kick eventfds to secondaries.
pub const FDS_ACTION: &str = "net_virtio_user_fds";
const DEFAULT_QSIZE: u64 = 256;
const MTU: u16 = 1500;
/// The whole vhost-user set-up (or tear-down) gets at most this long; a back end that has not
/// answered by then is cut off (the socket shut down, so the request in flight fails).
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
const MAGIC: u64 = 0x5649_5553_4552_0001;

// Feature bits (virtio 1.2, 5.1.3 and 6; vhost-user's bit 30).
const F_MRG_RXBUF: u64 = 1 << 15;
const F_MQ: u64 = 1 << 22;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;

static KEYS: [KeySpec; 6] = [
    KeySpec::new("path", KeyKind::Path, "the vhost-user socket: the back end's (server=0) or ours (server=1)"),
    KeySpec::new(
        "queues",
        KeyKind::U64 { min: 1, max: MAX_QUEUES as u64 },
        "queue pairs (default: the port configuration's receive queues); more than 1 needs the back end's MQ",
    ),
    KeySpec::new(
        "queue_size",
        KeyKind::U64 { min: 64, max: 32768 },
        "descriptors per virtqueue, a power of 2 (default 256)",
    ),
    KeySpec::new("server", KeyKind::Bool, "listen on path for the back end instead of connecting to it (default 0)"),
    KeySpec::new("mac", KeyKind::Mac, "MAC address of the port (default 02:76:75:00:00:<port>)"),
    KeySpec::new(
        "mrg_rxbuf",
        KeyKind::Bool,
        "negotiate mergeable receive buffers when the back end offers them: a frame over several buffers arrives as one chained packet (default 1)",
    ),
];

/// The net_virtio_user driver.
pub struct VirtioUserDriver;

/// Port state every process sees (memzone `virtio_user_<port>`).
#[repr(C, align(64))]
struct Shared {
    magic: AtomicU64,
    features: AtomicU64,
    pairs: AtomicU32,
    qsize: AtomicU32,
    /// 1 while a back end is connected and set up.
    link: AtomicU32,
    mac_lo: AtomicU32,
    mac_hi: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<Shared>() == 64);

fn shared_zone(port: PortId) -> String {
    format!("virtio_user_{port}")
}

fn queue_zone(port: PortId, rx: bool, q: u16) -> String {
    format!("virtio_user_{port}_{}q{q}", if rx { "rx" } else { "tx" })
}

/// How the primary reaches the back end.
enum Mode {
    /// We connect to the back end's socket.
    Client,
    /// We listen on our socket (non-blocking once the probe's first accept is done).
    Server(UnixListener),
}

/// The primary's side of the connection.
struct Control {
    path: PathBuf,
    mode: Mode,
    /// The live connection: the crate's front end and a handle on its socket to check for a hang-up.
    conn: Option<(Frontend, UnixStream)>,
    /// Kick and call eventfds, one per virtqueue (rx0, tx0, rx1, ...), kept across reconnects.
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    qsize: u16,
    /// `mrg_rxbuf=`: MRG_RXBUF is asked for when offered.
    mrg: bool,
    /// When the last reconnect was tried (one try per 100 ms at most).
    last_try: Option<Instant>,
    /// The last failed handshake or disconnect left rings the back end may have started and
    /// did not confirm stopped: their buffers and zones must not be reused.
    unstopped: bool,
}

/// This process's handle on one port.
struct Port {
    info: DevInfo,
    port: PortId,
    shm: Arc<Shm>,
    sh: NonNull<Shared>,
    rx: Vec<RxVq>,
    tx: Vec<TxVq>,
    pool: Mempool,
    /// Primary only.
    ctl: Option<Control>,
    /// Secondary only: the kick eventfds the queues' bells write (duplicates from the primary).
    _kicks: Vec<OwnedFd>,
    /// Primary only: the published duplicates of the kick eventfds.
    _published: Option<share::Published>,
}

// SAFETY: `sh` points into the shared-memory mapping that `shm` keeps alive; its fields are
// atomics. The queues are Send (vq.rs); the front end is Send.
unsafe impl Send for Port {}

impl Port {
    fn sh(&self) -> &Shared {
        // SAFETY: a 64-byte, 64-aligned zone inside the mapping `self.shm` keeps; atomics only.
        unsafe { self.sh.as_ref() }
    }
}

fn shared_at(shm: &Shm, name: &str, create: bool) -> Result<NonNull<Shared>, DriverError> {
    let len = std::mem::size_of::<Shared>() as u64;
    let z = if create { shm.reserve(name, len, 64) } else { shm.lookup(name) }.ctx(format!("memzone {name}"))?;
    if z.len < len {
        return Err(DriverError::state(format!("memzone {name} is {} bytes, {len} needed", z.len)));
    }
    let p =
        shm.ptr(z.offset, len).ok_or_else(|| DriverError::state(format!("memzone {name} outside shared memory")))?;
    if !(p.as_ptr() as usize).is_multiple_of(64) {
        return Err(DriverError::state(format!("memzone {name} is not 64-byte aligned")));
    }
    Ok(p.cast())
}

/// An owned duplicate of an eventfd's descriptor.
fn owned_copy(e: &EventFd) -> Result<OwnedFd, DriverError> {
    let c = e.try_clone().ctx("dup eventfd")?;
    // SAFETY: `into_raw_fd` hands over `c`'s descriptor, which nothing else owns or closes.
    Ok(unsafe { OwnedFd::from_raw_fd(c.into_raw_fd()) })
}

/// Runs `f` (vhost-user requests over `s`). Past `limit`, `s` is shut down so that the request
/// in flight fails: the vhost crate retries a read that timed out forever, so a socket timeout
/// alone would not stop a silent back end from holding us. Returns `f`'s result and whether the
/// limit cut it off.
fn within<T>(s: &UnixStream, limit: Duration, f: impl FnOnce() -> T) -> (T, bool) {
    let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let guard = s.try_clone().ok().and_then(|w| {
        let late = late.clone();
        std::thread::Builder::new()
            .name("vhost-user-limit".into())
            .spawn(move || {
                if rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    late.store(true, Ordering::Relaxed);
                    let _ = w.shutdown(std::net::Shutdown::Both);
                }
            })
            .ok()
    });
    let r = f();
    drop(tx);
    if let Some(h) = guard {
        let _ = h.join();
    }
    (r, late.load(Ordering::Relaxed))
}

/// Whether the peer of `s` hung up (no wait).
fn hung_up(s: &UnixStream) -> bool {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd on the stack, timeout 0.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n < 0 || p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

impl Control {
    /// The whole vhost-user set-up over a fresh connection `s`: on success the connection is live.
    fn handshake(
        &mut self,
        s: UnixStream,
        shm: &Shm,
        pairs: u16,
        rx: &[RxVq],
        tx: &[TxVq],
    ) -> Result<u64, DriverError> {
        s.set_write_timeout(Some(SETUP_TIMEOUT)).ctx("socket write timeout")?;
        let watch = s.try_clone().ctx("dup vhost-user socket")?;
        let nvq = 2 * usize::from(pairs);
        let mut fe = Frontend::from_stream(s, nvq as u64);
        let mut started = 0;
        let (r, late) =
            within(&watch, SETUP_TIMEOUT, || self.handshake_steps(&mut fe, shm, pairs, rx, tx, &mut started));
        match r {
            Ok(f) => {
                self.conn = Some((fe, watch));
                self.unstopped = false;
                Ok(f)
            }
            Err(e) => {
                // A ring the back end may have started must be stopped (GET_VRING_BASE) before
                // its buffers and zones can go: a back end that hung up is gone; one that stays
                // but does not answer may still write them.
                self.unstopped = started > 0
                    && (late
                        || !hung_up(&watch)
                            && !within(&watch, SETUP_TIMEOUT, || (0..started).all(|i| fe.get_vring_base(i).is_ok())).0);
                if late {
                    Err(e).ctx(format!("the back end did not answer within {SETUP_TIMEOUT:?}"))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The handshake's messages; `started` counts the virtqueues the back end may have
    /// started (their kick sent or on its way).
    fn handshake_steps(
        &self,
        fe: &mut Frontend,
        shm: &Shm,
        pairs: u16,
        rx: &[RxVq],
        tx: &[TxVq],
        started: &mut usize,
    ) -> Result<u64, DriverError> {
        let nvq = 2 * usize::from(pairs);
        fe.set_owner().ctx("SET_OWNER")?;
        let offered = fe.get_features().ctx("GET_FEATURES")?;
        if offered & F_VERSION_1 == 0 {
            return Err(DriverError::state(format!("the back end offers features {offered:#x}, without VERSION_1")));
        }
        if pairs > 1 && offered & F_MQ == 0 {
            return Err(DriverError::config(format!("queues={pairs}: the back end does not offer MQ")));
        }
        let mut want = F_VERSION_1 | (offered & F_PROTOCOL_FEATURES);
        if self.mrg {
            want |= offered & F_MRG_RXBUF;
        }
        if pairs > 1 {
            want |= F_MQ;
        }
        if offered & F_PROTOCOL_FEATURES != 0 {
            let pf = fe.get_protocol_features().ctx("GET_PROTOCOL_FEATURES")?;
            let mut mine = pf & VhostUserProtocolFeatures::REPLY_ACK;
            if pairs > 1 {
                if !pf.contains(VhostUserProtocolFeatures::MQ) {
                    return Err(DriverError::config(format!(
                        "queues={pairs}: the back end does not offer the MQ protocol feature"
                    )));
                }
                mine |= VhostUserProtocolFeatures::MQ;
            }
            fe.set_protocol_features(mine).ctx("SET_PROTOCOL_FEATURES")?;
            if mine.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every message from here on is acknowledged (as DPDK's virtio_user asks): a
                // back end that refuses one says so, and the set-up fails naming it.
                fe.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
            }
            if pairs > 1 {
                let n = fe.get_queue_num().ctx("GET_QUEUE_NUM")?;
                if n < u64::from(pairs) {
                    return Err(DriverError::config(format!("queues={pairs}: the back end has {n} queue pairs")));
                }
            }
        }
        fe.set_features(want).ctx("SET_FEATURES")?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: IOVA_BASE,
            memory_size: shm.len(),
            userspace_addr: shm.base() as u64,
            mmap_offset: 0,
            mmap_handle: shm.fd().as_raw_fd(),
        };
        fe.set_mem_table(&[region]).ctx("SET_MEM_TABLE")?;
        for i in 0..nvq {
            let q = if i % 2 == 0 { &rx[i / 2].q } else { &tx[i / 2].q };
            let (desc, avail, used) = q.user_addrs();
            let base = q.device_used();
            let cfg = VringConfigData {
                queue_max_size: self.qsize,
                queue_size: self.qsize,
                flags: 0,
                desc_table_addr: desc,
                used_ring_addr: used,
                avail_ring_addr: avail,
                log_addr: None,
            };
            let what = |m: &str| format!("{m} (virtqueue {i})");
            fe.set_vring_num(i, self.qsize).ctx(what("SET_VRING_NUM"))?;
            fe.set_vring_base(i, base).ctx(what("SET_VRING_BASE"))?;
            fe.set_vring_addr(i, &cfg).ctx(what("SET_VRING_ADDR"))?;
            *started = i + 1;
            fe.set_vring_kick(i, &self.kicks[i]).ctx(what("SET_VRING_KICK"))?;
            fe.set_vring_call(i, &self.calls[i]).ctx(what("SET_VRING_CALL"))?;
        }
        if want & F_PROTOCOL_FEATURES != 0 {
            for i in 0..nvq {
                fe.set_vring_enable(i, true).ctx(format!("SET_VRING_ENABLE (virtqueue {i})"))?;
            }
        }
        // Receive buffers are all posted: tell the back end (a kick it may ignore when polling).
        for (i, k) in self.kicks.iter().enumerate() {
            if i % 2 == 0 {
                let _ = k.write(1);
            }
        }
        Ok(want)
    }

    /// A connection to try now, if one is to be had without waiting.
    fn next_stream(&mut self) -> Option<UnixStream> {
        if self.last_try.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return None;
        }
        self.last_try = Some(Instant::now());
        match &self.mode {
            Mode::Client => UnixStream::connect(&self.path).ok(),
            Mode::Server(l) => l.accept().ok().map(|(s, _)| s),
        }
    }

    /// Stops every ring in the back end (GET_VRING_BASE) and closes the connection; false
    /// ([`Control::unstopped`]) when a back end still there did not confirm it.
    fn disconnect(&mut self, nvq: usize) -> bool {
        if let Some((fe, w)) = self.conn.take() {
            let (all, late) = within(&w, SETUP_TIMEOUT, || (0..nvq).all(|i| fe.get_vring_base(i).is_ok()));
            self.unstopped = !all && (late || !hung_up(&w));
        }
        !self.unstopped
    }
}

impl Driver for VirtioUserDriver {
    fn name(&self) -> &'static str {
        NAME
    }
    fn bus(&self) -> BusKind {
        BusKind::Vdev
    }
    fn keys(&self) -> &'static [KeySpec] {
        &KEYS
    }
    fn probe(&self, ctx: &ProbeCtx<'_>) -> Result<Box<dyn EthDev>, EthError> {
        let err = |e: DriverError| ctx.error(NAME, e);
        let conf = ctx.conf;
        let (path, pairs) = super::socket_and_pairs(ctx, "path", MAX_QUEUES).map_err(err)?;
        let qsize = ctx.kvargs.get_u64("queue_size").unwrap_or(DEFAULT_QSIZE);
        if !qsize.is_power_of_two() {
            return Err(err(DriverError::config(format!("queue_size={qsize}: a power of 2"))));
        }
        let shm = ctx.runtime.shm();
        let mut pool = Mempool::lookup(shm, &conf.pool, 64).ctx(format!("buffer pool {}", conf.pool)).map_err(err)?;
        let primary = ctx.is_primary();
        let port = ctx.port;
        let mut zones = Vec::new();
        let (mut rx, mut tx) = (Vec::new(), Vec::new());
        // A failed handshake left rings the back end did not confirm stopped.
        let mut unstopped = false;
        let res = (|| {
            let name = shared_zone(port);
            let sh = shared_at(shm, &name, primary)?;
            zones.push(name);
            // SAFETY: as in `Port::sh`.
            let s = unsafe { sh.as_ref() };
            let mac = ctx.kvargs.get_mac("mac").unwrap_or([0x02, 0x76, 0x75, 0, 0, port.0 as u8]);
            let (kick_raw, kicks_owned, efds) = if primary {
                let mk = || EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).ctx("eventfd");
                let efds: Vec<(EventFd, EventFd)> =
                    (0..2 * pairs).map(|_| Ok((mk()?, mk()?))).collect::<Result<_, DriverError>>()?;
                (efds.iter().map(|(k, _)| k.as_raw_fd()).collect::<Vec<RawFd>>(), Vec::new(), Some(efds))
            } else {
                if s.magic.load(Ordering::Acquire) != MAGIC {
                    return Err(DriverError::state(format!(
                        "memzone {} holds no net_virtio_user port",
                        shared_zone(port)
                    )));
                }
                let have = s.pairs.load(Ordering::Relaxed) as u16;
                if pairs > have {
                    return Err(DriverError::config(format!("queues={pairs}: the primary set up {have}")));
                }
                let (fds, _) = share::fetch(ctx.runtime, FDS_ACTION, ctx.name).ctx("kick eventfds")?;
                if fds.len() < 2 * usize::from(pairs) {
                    return Err(DriverError::state(format!(
                        "the primary shares {} kick eventfds, {} needed",
                        fds.len(),
                        2 * pairs
                    )));
                }
                (fds.iter().map(|f| f.as_raw_fd()).collect(), fds, None)
            };
            let qsize = if primary { qsize as u32 } else { s.qsize.load(Ordering::Relaxed) };
            for q in 0..pairs {
                for is_rx in [true, false] {
                    let z = queue_zone(port, is_rx, q);
                    let i = 2 * q + u16::from(!is_rx);
                    let v = Vq::open_kicked(shm, z.clone(), i, qsize, kick_raw[i as usize], port, primary)?;
                    zones.push(z);
                    if is_rx {
                        rx.push(RxVq { q: v, mergeable: false });
                    } else {
                        tx.push(TxVq { q: v });
                    }
                }
            }
            let Some(efds) = efds else { return Ok((sh, None, None, kicks_owned)) };
            for q in rx.iter_mut() {
                q.fill(&mut pool)?;
            }
            for v in rx.iter().map(|q| &q.q).chain(tx.iter().map(|q| &q.q)) {
                v.set_no_interrupt();
            }
            let server = ctx.kvargs.get_bool("server").unwrap_or(false);
            let (kicks, calls): (Vec<EventFd>, Vec<EventFd>) = efds.into_iter().unzip();
            let copies = kicks.iter().map(owned_copy).collect::<Result<Vec<_>, _>>()?;
            let published =
                share::publish(ctx.runtime, FDS_ACTION, ctx.name, &copies, Vec::new()).ctx("sharing kick eventfds")?;
            let (mode, first) = if server {
                let l = UnixListener::bind(&path).ctx(format!("listening on {}", path.display()))?;
                let wait = Duration::from_millis(ctx.runtime.options().hotplug_timeout_ms.max(1000));
                match accept_within(&l, wait) {
                    Ok(s) => (Mode::Server(l), s),
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                }
            } else {
                let s = UnixStream::connect(&path).ctx(format!("connecting to {}", path.display()))?;
                (Mode::Client, s)
            };
            let mrg = ctx.kvargs.get_bool("mrg_rxbuf").unwrap_or(true);
            let mut c = Control {
                path: path.clone(),
                mode,
                conn: None,
                kicks,
                calls,
                qsize: qsize as u16,
                mrg,
                last_try: None,
                unstopped: false,
            };
            let features = match c.handshake(first, shm, pairs, &rx, &tx) {
                Ok(f) => f,
                Err(e) => {
                    unstopped = c.unstopped;
                    if matches!(c.mode, Mode::Server(_)) {
                        let _ = std::fs::remove_file(&path);
                    }
                    return Err(e).ctx(format!("vhost-user set-up over {}", path.display()));
                }
            };
            s.features.store(features, Ordering::Relaxed);
            s.pairs.store(u32::from(pairs), Ordering::Relaxed);
            s.qsize.store(qsize, Ordering::Relaxed);
            s.mac_lo.store(u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]), Ordering::Relaxed);
            s.mac_hi.store(u32::from(u16::from_le_bytes([mac[4], mac[5]])), Ordering::Relaxed);
            s.link.store(1, Ordering::Release);
            s.magic.store(MAGIC, Ordering::Release);
            Ok((sh, Some(c), Some(published), kicks_owned))
        })();
        let (sh, ctl, published, kicks) = match res {
            Ok(r) => r,
            Err(e) => {
                if primary {
                    // Nothing half-made stays: the buffers posted so far, then every zone. Unless
                    // the back end may still write the rings: then their buffers stay out of use
                    // (a leak, not memory another device gets under its writes) and the zones
                    // are retired (kept under names of their own: the port id stays usable).
                    if unstopped {
                        let n: u32 = rx.iter().map(|q| q.q.n).sum();
                        tracing::warn!(port = %port, buffers = n, zones = ?zones, "net_virtio_user: the back end did not confirm its rings stopped: their buffers and zones are kept out of use");
                    } else {
                        for q in rx.iter_mut().map(|q| &mut q.q).chain(tx.iter_mut().map(|q| &mut q.q)) {
                            q.drain(&mut pool);
                        }
                    }
                    drop((rx, tx));
                    for z in zones.iter().rev() {
                        let _ = if unstopped { shm.retire(z).map(drop) } else { shm.free(z) };
                    }
                }
                return Err(err(e));
            }
        };
        // SAFETY: as in `Port::sh`.
        let s = unsafe { sh.as_ref() };
        let lo = s.mac_lo.load(Ordering::Relaxed).to_le_bytes();
        let hi = s.mac_hi.load(Ordering::Relaxed).to_le_bytes();
        let p = Port {
            info: DevInfo {
                driver: NAME,
                mac: [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]],
                mtu: MTU,
                nb_rxq: conf.nb_rxq,
                nb_txq: conf.nb_txq,
                max_rxq: pairs,
                max_txq: pairs,
            },
            port,
            shm: shm.clone(),
            sh,
            rx,
            tx,
            pool: pool.new_handle(),
            ctl,
            _kicks: kicks,
            _published: published,
        };
        tracing::info!(device = %ctx.name, port = %port, role = if primary { "primary" } else { "secondary" },
            path = %path.display(), pairs, qsize, mac = %fmt_mac(&p.info.mac),
            features = %format!("{:#x}", p.sh().features.load(Ordering::Relaxed)), "net_virtio_user ready");
        Ok(Box::new(p))
    }
}

fn accept_within(l: &UnixListener, wait: Duration) -> Result<UnixStream, DriverError> {
    l.set_nonblocking(true).ctx("non-blocking listener")?;
    let end = Instant::now() + wait;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ctx("blocking vhost-user socket")?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(DriverError::state(format!("server=1: no back end connected within {wait:?}")));
            }
            Err(e) => return Err(e).ctx("accept"),
        }
    }
}

impl EthDev for Port {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }

    fn link(&mut self) -> LinkStatus {
        let pairs = self.rx.len() as u16;
        if let Some(c) = self.ctl.as_mut() {
            if c.conn.as_ref().is_some_and(|(_, w)| hung_up(w)) {
                tracing::warn!(port = %self.port, path = %c.path.display(), "vhost-user back end hung up: link down");
                c.conn = None;
                // SAFETY: as in `Port::sh` (self.sh is not borrowed through `c`).
                unsafe { self.sh.as_ref() }.link.store(0, Ordering::Release);
            }
            if c.conn.is_none() {
                if let Some(s) = c.next_stream() {
                    match c.handshake(s, &self.shm, pairs, &self.rx, &self.tx) {
                        Ok(f) => {
                            tracing::info!(port = %self.port, path = %c.path.display(), "vhost-user back end reconnected: link up");
                            // SAFETY: as above.
                            let sh = unsafe { self.sh.as_ref() };
                            sh.features.store(f, Ordering::Relaxed);
                            sh.link.store(1, Ordering::Release);
                        }
                        Err(e) => tracing::debug!(port = %self.port, "vhost-user reconnect: {e}"),
                    }
                }
            }
        }
        let up = self.sh().link.load(Ordering::Acquire) != 0;
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }

    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        for q in &self.rx {
            let c = q.q.h().counters();
            s.ipackets += c.pkts;
            s.ibytes += c.bytes;
            s.ierrors += c.errors;
            s.rx_nombuf += c.nombuf;
        }
        for q in &self.tx {
            let c = q.q.h().counters();
            s.opackets += c.pkts;
            s.obytes += c.bytes;
            s.oerrors += c.errors;
        }
        s
    }

    fn stats_reset(&mut self) {
        for q in &self.rx {
            q.q.h().reset_counters();
        }
        for q in &self.tx {
            q.q.h().reset_counters();
        }
    }

    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        // A vhost-user net back end delivers every frame: promiscuous is all there is.
        if on {
            Ok(())
        } else {
            Err(EthError::Invalid { what: "promiscuous off: net_virtio_user has no control queue (not yet)".into() })
        }
    }

    #[inline]
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        // What the primary negotiated with the back end now (a reconnect may change it).
        let features = self.sh().features.load(Ordering::Relaxed);
        match self.rx.get_mut(usize::from(queue)) {
            Some(q) => {
                q.mergeable = features & F_MRG_RXBUF != 0;
                q.burst(&NoBar, &mut self.pool, pkts)
            }
            None => 0,
        }
    }

    #[inline]
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        match self.tx.get_mut(usize::from(queue)) {
            Some(q) => q.burst(&NoBar, &mut self.pool, pkts),
            None => 0,
        }
    }

    fn close(self: Box<Self>, how: Release) {
        let mut me = *self;
        let nvq = me.rx.len() * 2;
        if how == Release::Shared {
            let mut stopped = true;
            if let Some(c) = me.ctl.as_mut() {
                stopped = c.disconnect(nvq);
                if matches!(c.mode, Mode::Server(_)) {
                    let _ = std::fs::remove_file(&c.path);
                }
            }
            me.sh().link.store(0, Ordering::Release);
            me.sh().magic.store(0, Ordering::Release);
            if !stopped {
                let n: u32 = me.rx.iter().map(|q| q.q.n).sum();
                tracing::warn!(port = %me.port, buffers = n, "net_virtio_user close: the back end did not confirm its rings stopped: their buffers and zones are kept out of use");
            }
            let mut names = Vec::new();
            for q in me.rx.iter_mut().map(|q| &mut q.q).chain(me.tx.iter_mut().map(|q| &mut q.q)) {
                // A back end that may still write the rings keeps their buffers (a leak), and
                // their zones are retired (kept under names of their own: the id stays usable).
                if stopped {
                    q.drain(&mut me.pool);
                }
                names.push(q.zone().to_string());
            }
            me.rx.clear();
            me.tx.clear();
            names.push(shared_zone(me.port));
            for n in names {
                let r = if stopped { me.shm.free(&n) } else { me.shm.retire(&n).map(drop) };
                if let Err(e) = r {
                    tracing::warn!(zone = %n, "net_virtio_user close: {e}");
                }
            }
        }
        tracing::info!(port = %me.port, shared = how == Release::Shared, "net_virtio_user closed");
    }
}
