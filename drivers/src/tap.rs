//! `net_tap`: a TAP interface of the kernel as a port, DPDK's tap PMD.
//!
//! Keys: `iface=NAME` (default `dtap<port>`), `mac=aa:bb:..` (default `02:64:74:61:70:<port>`), `persist`
//! (the interface outlives the port). The primary opens `/dev/net/tun` once per queue pair with
//! `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE`), which creates the interface (or attaches
//! to an existing TAP of that name), sets the MAC and brings it up. Queue `i` reads and writes
//! frames on descriptor `i`, non-blocking, one syscall per frame (as DPDK's tap does: a TAP queue
//! has no batch interface).
//!
//! A secondary cannot open the same queues itself: it asks the primary over the IPC channel
//! (action `net_tap_fds`, payload the device name) and receives duplicates of the queue
//! descriptors (`SCM_RIGHTS`). Removing the port in the primary closes its descriptors; the kernel
//! deletes a non-persistent TAP when the last descriptor of any process is closed, so the lab
//! removes it from the secondaries (`close(Local)` closes their duplicates) before the primary.
//!
//! This file also holds what the kernel-facing virtual PMDs share: `netif` (interface ioctls)
//! and `share` (descriptors handed from the primary to secondaries).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};

const NAME: &str = "net_tap";
const MAX_QUEUES: u16 = 16;
/// IPC action of the primary that hands TAP queue descriptors to secondaries.
pub const FDS_ACTION: &str = "net_tap_fds";

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

static KEYS: [KeySpec; 3] = [
    KeySpec::new("iface", KeyKind::Iface, "TAP interface name (default dtap<port>)"),
    KeySpec::new("mac", KeyKind::Mac, "MAC address of the port (default 02:64:74:61:70:<port>)"),
    KeySpec::new("persist", KeyKind::Bool, "keep the interface after the port is removed (default 0)"),
];

/// Interface ioctls on a throw-away socket: index, flags, MAC, existence.
pub(crate) mod netif {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// `struct ifreq`: the name and a 24-byte union.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct IfReq {
        pub(crate) name: [u8; 16],
        pub(crate) data: [u8; 24],
    }
    const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

    impl IfReq {
        pub(crate) fn new(iface: &str) -> io::Result<IfReq> {
            let b = iface.as_bytes();
            if b.is_empty() || b.len() > 15 || b.contains(&0) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {iface:?}")));
            }
            let mut r = IfReq { name: [0; 16], data: [0; 24] };
            r.name[..b.len()].copy_from_slice(b);
            Ok(r)
        }
    }

    fn ctl_socket() -> io::Result<OwnedFd> {
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Runs an interface ioctl (`SIOC*IF*`) on a control socket.
    pub(crate) fn ioctl(req: libc::c_ulong, r: &mut IfReq) -> io::Result<()> {
        let s = ctl_socket()?;
        // SAFETY: every SIOC[GS]IF* request used here reads/writes one struct ifreq (40 bytes), which
        // `r` is, for the duration of the call.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), req as _, r as *mut IfReq) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Interface index, or an error when there is no such interface.
    pub(crate) fn index(iface: &str) -> io::Result<u32> {
        let c = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: c is a valid NUL-terminated string for the duration of the call.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if i == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(i)
    }

    /// Whether an interface of that name exists.
    pub(crate) fn exists(iface: &str) -> bool {
        index(iface).is_ok()
    }

    /// Sets IFF_UP (and, for `promisc`, IFF_PROMISC).
    pub(crate) fn set_up(iface: &str, promisc: bool) -> io::Result<()> {
        let mut r = IfReq::new(iface)?;
        ioctl(libc::SIOCGIFFLAGS, &mut r)?;
        let mut flags = i16::from_ne_bytes([r.data[0], r.data[1]]);
        flags |= libc::IFF_UP as i16;
        if promisc {
            flags |= libc::IFF_PROMISC as i16;
        }
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(libc::SIOCSIFFLAGS, &mut r)
    }

    /// Turns IFF_PROMISC on or off.
    pub(crate) fn set_promisc(iface: &str, on: bool) -> io::Result<()> {
        let mut r = IfReq::new(iface)?;
        ioctl(libc::SIOCGIFFLAGS, &mut r)?;
        let mut flags = i16::from_ne_bytes([r.data[0], r.data[1]]);
        if on {
            flags |= libc::IFF_PROMISC as i16;
        } else {
            flags &= !(libc::IFF_PROMISC as i16);
        }
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(libc::SIOCSIFFLAGS, &mut r)
    }

    /// Whether the interface is up and running (carrier).
    pub(crate) fn is_running(iface: &str) -> bool {
        let Ok(mut r) = IfReq::new(iface) else { return false };
        if ioctl(libc::SIOCGIFFLAGS, &mut r).is_err() {
            return false;
        }
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) as i32;
        flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
    }

    /// The interface's MAC address.
    pub(crate) fn mac(iface: &str) -> io::Result<[u8; 6]> {
        let mut r = IfReq::new(iface)?;
        ioctl(libc::SIOCGIFHWADDR, &mut r)?;
        let mut m = [0u8; 6];
        m.copy_from_slice(&r.data[2..8]);
        Ok(m)
    }

    /// Sets the interface's MAC address.
    pub(crate) fn set_mac(iface: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut r = IfReq::new(iface)?;
        r.data[..2].copy_from_slice(&(libc::ARPHRD_ETHER).to_ne_bytes());
        r.data[2..8].copy_from_slice(&mac);
        ioctl(libc::SIOCSIFHWADDR, &mut r)
    }

    /// The interface's MTU.
    pub(crate) fn mtu(iface: &str) -> io::Result<u16> {
        let mut r = IfReq::new(iface)?;
        ioctl(libc::SIOCGIFMTU, &mut r)?;
        Ok(i32::from_ne_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]).clamp(0, u16::MAX as i32) as u16)
    }

    /// Formats a MAC address.
    pub(crate) fn mac_str(m: &[u8; 6]) -> String {
        format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// Descriptors the primary hands to secondaries over the IPC channel.
///
/// The primary [`publish`]es duplicates of a device's descriptors under its runtime dir and device
/// name and registers the driver's action once per channel (a second registration is refused by
/// the channel as a duplicate, which is what "once" means here). A secondary [`fetch`]es them:
/// one `request_sync` to the primary per 8 descriptors (the channel's limit). The published
/// duplicates are closed when the [`Published`] handle is dropped (port removed).
pub(crate) mod share {
    use std::collections::HashMap;
    use std::os::fd::OwnedFd;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use lab_core::ipc::{Dispatch, IpcError, Msg, MAX_FDS};
    use lab_core::runtime::Runtime;

    struct Entry {
        fds: Vec<OwnedFd>,
        meta: Vec<u8>,
    }

    fn table() -> &'static Mutex<HashMap<String, Entry>> {
        static T: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();
        T.get_or_init(|| Mutex::new(HashMap::new()))
    }

    fn key(dir: &std::path::Path, dev: &str) -> String {
        format!("{}\n{dev}", dir.display())
    }

    /// Keeps a device's descriptors published; withdraws (closes the duplicates) on drop.
    pub(crate) struct Published {
        key: String,
    }

    impl Drop for Published {
        fn drop(&mut self) {
            table().lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        }
    }

    /// Primary: publishes duplicates of `fds` (and `meta`, returned to fetchers as is) for `dev`,
    /// and makes sure `action` answers for them on this runtime's channel.
    pub(crate) fn publish(
        rt: &Runtime,
        action: &'static str,
        dev: &str,
        fds: &[OwnedFd],
        meta: Vec<u8>,
    ) -> Result<Published, String> {
        let dups = fds.iter().map(|f| f.try_clone()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("dup: {e}"))?;
        let dir = rt.dir().to_path_buf();
        let k = key(&dir, dev);
        table().lock().unwrap_or_else(|e| e.into_inner()).insert(k.clone(), Entry { fds: dups, meta });
        let published = Published { key: k };
        match rt.ipc().register_action(action, Dispatch::Inline, move |ch, req| {
            let text = String::from_utf8_lossy(&req.msg.payload).into_owned();
            let (dev, start) = match text.split_once('\n') {
                Some((d, s)) => (d.to_string(), s.trim().parse::<usize>().unwrap_or(0)),
                None => (text.clone(), 0),
            };
            let reply = {
                let t = table().lock().unwrap_or_else(|e| e.into_inner());
                match t.get(&key(&dir, &dev)) {
                    Some(e) => {
                        let end = (start + MAX_FDS).min(e.fds.len());
                        let fds: Result<Vec<OwnedFd>, _> =
                            e.fds.get(start..end).unwrap_or(&[]).iter().map(|f| f.try_clone()).collect();
                        match fds {
                            Ok(fds) => {
                                let mut p = format!("ok {}\n", e.fds.len()).into_bytes();
                                p.extend_from_slice(&e.meta);
                                Msg::new(action, p).with_fds(fds)
                            }
                            Err(err) => Msg::new(action, format!("err dup: {err}")),
                        }
                    }
                    None => Msg::new(action, format!("err device {dev} is not attached in the primary")),
                }
            };
            if let Err(e) = ch.reply(req, &reply) {
                tracing::warn!(action, error = %e, "could not answer a descriptor request");
            }
        }) {
            Ok(()) | Err(IpcError::Duplicate { .. }) => Ok(published),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Secondary: asks the primary for `dev`'s descriptors; returns them and the primary's meta.
    pub(crate) fn fetch(rt: &Runtime, action: &str, dev: &str) -> Result<(Vec<OwnedFd>, Vec<u8>), String> {
        let timeout = Duration::from_millis(rt.options().hotplug_timeout_ms.max(1000));
        let mut fds = Vec::new();
        let mut meta = Vec::new();
        loop {
            let msg = Msg::new(action, format!("{dev}\n{}", fds.len()));
            let r = rt.ipc().request_sync(&msg, timeout).map_err(|e| format!("asking the primary: {e}"))?;
            let Some(rep) = r.replies.into_iter().next() else {
                return Err(format!("the primary did not answer {action} within {timeout:?}"));
            };
            let p = rep.msg.payload;
            let nl = p.iter().position(|b| *b == b'\n').unwrap_or(p.len());
            let head = String::from_utf8_lossy(&p[..nl]).into_owned();
            let total = match head.strip_prefix("ok ").and_then(|n| n.trim().parse::<usize>().ok()) {
                Some(t) => t,
                None => return Err(format!("the primary refused: {}", head.strip_prefix("err ").unwrap_or(&head))),
            };
            meta.clear();
            meta.extend_from_slice(p.get(nl + 1..).unwrap_or(&[]));
            let got = rep.msg.fds.len();
            fds.extend(rep.msg.fds);
            if fds.len() >= total {
                break;
            }
            if got == 0 {
                return Err(format!("the primary sent {} of {total} descriptors", fds.len()));
            }
        }
        Ok((fds, meta))
    }
}

/// The net_tap driver.
pub struct TapDriver;

fn open_queue(iface: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: the path is a NUL-terminated literal.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut r = netif::IfReq::new(iface)?;
    r.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `r` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut r as *mut netif::IfReq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_persist(fd: &OwnedFd, on: bool) -> std::io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, on as libc::c_ulong) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process may create interfaces (CAP_NET_ADMIN in its effective set).
pub fn has_net_admin() -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return false };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

impl Driver for TapDriver {
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
        let (nrx, ntx) = (ctx.conf.nb_rxq, ctx.conf.nb_txq);
        if nrx == 0 || nrx > MAX_QUEUES || ntx == 0 || ntx > MAX_QUEUES {
            return Err(ctx.error(NAME, format!("queue counts {nrx}/{ntx} out of range 1..={MAX_QUEUES}")));
        }
        let nq = nrx.max(ntx) as usize;
        let iface = ctx.kvargs.get_str("iface").map(str::to_string).unwrap_or_else(|| format!("dtap{}", ctx.port.0));
        let persist = ctx.kvargs.get_bool("persist").unwrap_or(false);
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(shm, &ctx.conf.pool, 64)
            .map_err(|e| ctx.error(NAME, format!("buffer pool {}: {e}", ctx.conf.pool)))?;
        let (fds, published) = if ctx.is_primary() {
            let existed = netif::exists(&iface);
            let mut fds = Vec::with_capacity(nq);
            for q in 0..nq {
                // On error the descriptors opened so far close here, which deletes the interface
                // again unless it existed before (and is persistent).
                let fd = open_queue(&iface).map_err(|e| {
                    let hint = match e.raw_os_error() {
                        Some(libc::EPERM) | Some(libc::EACCES) => " (needs CAP_NET_ADMIN)",
                        Some(libc::EBUSY) | Some(libc::EINVAL) if existed => {
                            " (an interface of that name exists and is not a multi-queue TAP)"
                        }
                        Some(libc::ENOENT) | Some(libc::ENODEV) => " (/dev/net/tun missing: no TUN/TAP support)",
                        _ => "",
                    };
                    ctx.error(NAME, format!("interface {iface}: queue {q}: TUNSETIFF: {e}{hint}"))
                })?;
                fds.push(fd);
            }
            let mac = ctx.kvargs.get_mac("mac").unwrap_or([0x02, 0x64, 0x74, 0x61, 0x70, ctx.port.0 as u8]);
            if !existed || ctx.kvargs.get_mac("mac").is_some() {
                netif::set_mac(&iface, mac).map_err(|e| {
                    ctx.error(NAME, format!("interface {iface}: setting MAC {}: {e}", netif::mac_str(&mac)))
                })?;
            }
            netif::set_up(&iface, false)
                .map_err(|e| ctx.error(NAME, format!("interface {iface}: bringing up: {e}")))?;
            if persist {
                set_persist(&fds[0], true)
                    .map_err(|e| ctx.error(NAME, format!("interface {iface}: TUNSETPERSIST: {e}")))?;
            }
            let p = share::publish(ctx.runtime, FDS_ACTION, ctx.name, &fds, iface.as_bytes().to_vec())
                .map_err(|e| ctx.error(NAME, format!("sharing queue descriptors: {e}")))?;
            tracing::info!(device = ctx.name, iface = %iface, queues = nq, existed, persist, "net_tap created");
            (fds, Some(p))
        } else {
            let (fds, _meta) = share::fetch(ctx.runtime, FDS_ACTION, ctx.name)
                .map_err(|e| ctx.error(NAME, format!("queue descriptors of {iface}: {e}")))?;
            if fds.len() < nq {
                return Err(ctx.error(NAME, format!("the primary has {} queues, {nq} asked", fds.len())));
            }
            tracing::info!(device = ctx.name, iface = %iface, queues = fds.len(), "net_tap attached in a secondary");
            (fds, None)
        };
        let mac = netif::mac(&iface).unwrap_or([0; 6]);
        let mtu = netif::mtu(&iface).unwrap_or(1500);
        let port = ctx.port.0;
        Ok(Box::new(TapPort {
            info: DevInfo {
                driver: NAME,
                mac,
                mtu,
                nb_rxq: nrx,
                nb_txq: ntx,
                max_rxq: MAX_QUEUES,
                max_txq: MAX_QUEUES,
            },
            iface,
            rx: fds
                .iter()
                .take(nrx as usize)
                .map(|f| RxQ {
                    fd: f.as_raw_fd(),
                    pool: pool.new_handle(),
                    spare: None,
                    port,
                    pkts: 0,
                    bytes: 0,
                    nombuf: 0,
                    errs: 0,
                })
                .collect(),
            tx: fds
                .iter()
                .take(ntx as usize)
                .map(|f| TxQ { fd: f.as_raw_fd(), pool: pool.new_handle(), pkts: 0, bytes: 0, errs: 0 })
                .collect(),
            _fds: fds,
            _published: published,
        }))
    }
}

struct RxQ {
    /// Owned by `TapPort::fds`, which outlives the queue.
    fd: RawFd,
    pool: Mempool,
    spare: Option<Mbuf>,
    port: u16,
    pkts: u64,
    bytes: u64,
    nombuf: u64,
    errs: u64,
}

struct TxQ {
    /// Owned by `TapPort::fds`.
    fd: RawFd,
    pool: Mempool,
    pkts: u64,
    bytes: u64,
    errs: u64,
}

struct TapPort {
    info: DevInfo,
    iface: String,
    rx: Vec<RxQ>,
    tx: Vec<TxQ>,
    /// Queue descriptors (queue `i` reads and writes the `i`th), closed when the port drops.
    _fds: Vec<OwnedFd>,
    _published: Option<share::Published>,
}

/// Reads one frame into `m` (its whole data room); the frame length, or None (nothing or error).
#[inline]
pub(crate) fn read_into(fd: RawFd, m: &mut Mbuf) -> Result<usize, std::io::Error> {
    let room = m.buf_len() - m.headroom();
    m.set_len(room);
    let b = m.data_mut();
    // SAFETY: reads at most b.len() bytes into the buffer we own mutably.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl EthDev for TapPort {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }
    fn link(&mut self) -> LinkStatus {
        let up = netif::is_running(&self.iface);
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }
    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        for q in &self.rx {
            s.ipackets += q.pkts;
            s.ibytes += q.bytes;
            s.rx_nombuf += q.nombuf;
            s.ierrors += q.errs;
        }
        for q in &self.tx {
            s.opackets += q.pkts;
            s.obytes += q.bytes;
            s.oerrors += q.errs;
        }
        s
    }
    fn stats_reset(&mut self) {
        for q in &mut self.rx {
            (q.pkts, q.bytes, q.nombuf, q.errs) = (0, 0, 0, 0);
        }
        for q in &mut self.tx {
            (q.pkts, q.bytes, q.errs) = (0, 0, 0);
        }
    }
    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        netif::set_promisc(&self.iface, on).map_err(|e| EthError::Device { driver: NAME, reason: e.to_string() })
    }
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(q) = self.rx.get_mut(queue as usize) else { return 0 };
        let mut n = 0;
        while n < pkts.len() {
            let Some(mut m) = q.spare.take().or_else(|| q.pool.alloc()) else {
                q.nombuf += 1;
                break;
            };
            match read_into(q.fd, &mut m) {
                Ok(len) if len > 0 => {
                    m.set_len(len);
                    m.set_port(q.port);
                    q.bytes += len as u64;
                    pkts[n] = Some(m);
                    n += 1;
                }
                Ok(_) => {
                    q.spare = Some(m);
                    break;
                }
                Err(e) => {
                    if e.raw_os_error() != Some(libc::EAGAIN) {
                        q.errs += 1;
                    }
                    q.spare = Some(m);
                    break;
                }
            }
        }
        q.pkts += n as u64;
        n
    }
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(q) = self.tx.get_mut(queue as usize) else { return 0 };
        let mut n = 0;
        for slot in pkts.iter_mut() {
            let Some(m) = slot.as_ref() else { break };
            let d = m.data();
            // SAFETY: writes d.len() bytes from a buffer we own for the duration of the call.
            let w = unsafe { libc::write(q.fd, d.as_ptr().cast(), d.len()) };
            if w < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e == Some(libc::EAGAIN) || e == Some(libc::ENOBUFS) {
                    break;
                }
                // The kernel refused this frame (down interface, bad length): drop it.
                q.errs += 1;
            } else {
                q.pkts += 1;
                q.bytes += d.len() as u64;
            }
            if let Some(m) = slot.take() {
                q.pool.free(m);
            }
            n += 1;
        }
        n
    }
    fn close(self: Box<Self>, how: Release) {
        let me = *self;
        tracing::info!(iface = %me.iface, shared = how == Release::Shared, "net_tap closed");
        // Descriptors and the published duplicates close as `me` drops.
        drop(me);
    }
}

impl Drop for RxQ {
    fn drop(&mut self) {
        if let Some(m) = self.spare.take() {
            self.pool.free(m);
        }
    }
}
