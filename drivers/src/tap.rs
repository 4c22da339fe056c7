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
//! The kernel calls (TUNSETIFF, reads and writes of frames) are in `sys::tun`.

#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

pub use crate::sys::tun::has_net_admin;
use crate::sys::{netif, share, tun};

use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};

use crate::error::{Ctx, DriverError};

const NAME: &str = "net_tap";
const MAX_QUEUES: u16 = 16;
/// IPC action of the primary that hands TAP queue descriptors to secondaries.
pub const FDS_ACTION: &str = "net_tap_fds";

static KEYS: [KeySpec; 3] = [
    KeySpec::new("iface", KeyKind::Iface, "TAP interface name (default dtap<port>)"),
    KeySpec::new("mac", KeyKind::Mac, "MAC address of the port (default 02:64:74:61:70:<port>)"),
    KeySpec::new("persist", KeyKind::Bool, "keep the interface after the port is removed (default 0)"),
];

/// The net_tap driver.
pub struct TapDriver;

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
            .ctx(format!("buffer pool {}", ctx.conf.pool))
            .map_err(|e| ctx.error(NAME, e))?;
        let (fds, published) = if ctx.is_primary() {
            let existed = netif::exists(&iface);
            let mut fds = Vec::with_capacity(nq);
            for q in 0..nq {
                // On error the descriptors opened so far close here, which deletes the interface
                // again unless it existed before (and is persistent).
                let fd = tun::open_queue(&iface).map_err(|e| {
                    let hint = match e.raw_os_error() {
                        Some(libc::EPERM) | Some(libc::EACCES) => " (needs CAP_NET_ADMIN)",
                        Some(libc::EBUSY) | Some(libc::EINVAL) if existed => {
                            " (an interface of that name exists and is not a multi-queue TAP)"
                        }
                        Some(libc::ENOENT) | Some(libc::ENODEV) => " (/dev/net/tun missing: no TUN/TAP support)",
                        _ => "",
                    };
                    ctx.error(
                        NAME,
                        DriverError::Os { what: format!("interface {iface}: queue {q}: TUNSETIFF{hint}"), source: e },
                    )
                })?;
                fds.push(fd);
            }
            let mac = ctx.kvargs.get_mac("mac").unwrap_or([0x02, 0x64, 0x74, 0x61, 0x70, ctx.port.0 as u8]);
            if !existed || ctx.kvargs.get_mac("mac").is_some() {
                netif::set_mac(&iface, mac)
                    .ctx(format!("interface {iface}: setting MAC {}", netif::mac_str(&mac)))
                    .map_err(|e| ctx.error(NAME, e))?;
            }
            netif::set_up(&iface, false)
                .ctx(format!("interface {iface}: bringing up"))
                .map_err(|e| ctx.error(NAME, e))?;
            if persist {
                tun::set_persist(&fds[0], true)
                    .ctx(format!("interface {iface}: TUNSETPERSIST"))
                    .map_err(|e| ctx.error(NAME, e))?;
            }
            let p = share::publish(ctx.runtime, FDS_ACTION, ctx.name, &fds, iface.as_bytes().to_vec())
                .ctx("sharing queue descriptors")
                .map_err(|e| ctx.error(NAME, e))?;
            tracing::info!(device = ctx.name, iface = %iface, queues = nq, existed, persist, "net_tap created");
            (fds, Some(p))
        } else {
            let (fds, _meta) = share::fetch(ctx.runtime, FDS_ACTION, ctx.name)
                .ctx(format!("queue descriptors of {iface}"))
                .map_err(|e| ctx.error(NAME, e))?;
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
        netif::set_promisc(&self.iface, on).ctx("set promiscuous mode").map_err(|e| e.device(NAME))
    }
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(q) = self.rx.get_mut(queue as usize) else { return 0 };
        let mut n = 0;
        while n < pkts.len() {
            let Some(mut m) = q.spare.take().or_else(|| q.pool.alloc()) else {
                q.nombuf += 1;
                break;
            };
            match tun::read_into(q.fd, &mut m) {
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
            if slot.as_ref().is_some_and(|m| m.nb_segs() > 1) {
                // One write per frame: a chained packet is copied into one buffer first.
                match slot.take().map(|m| q.pool.linearize(m)) {
                    Some(Ok(one)) => *slot = Some(one),
                    Some(Err(m)) => {
                        q.errs += 1;
                        q.pool.free(m);
                        n += 1;
                        continue;
                    }
                    None => {}
                }
            }
            let Some(m) = slot.as_ref() else { break };
            let d = m.data();
            if let Err(err) = tun::write_frame(q.fd, d) {
                let e = err.raw_os_error();
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
