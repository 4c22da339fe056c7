//! `net_af_packet`: a kernel interface through `AF_PACKET` sockets with `PACKET_MMAP` rings,
//! DPDK's af_packet PMD.
//!
//! Keys: `iface=NAME` (required), `qpairs=N` (1..=16, default 1), `blocksz`, `framesz`, `framecnt`
//! (ring geometry, defaults 4096, 2048, 512), `qdisc_bypass` (send past the qdisc layer).
//!
//! Each queue pair is one socket bound to the interface with a `TPACKET_V2` receive ring and
//! transmit ring, mapped once (rx ring then tx ring). With more than one pair the sockets join one
//! `PACKET_FANOUT_HASH` group (its id chosen by the kernel, `PACKET_FANOUT_FLAG_UNIQUEID`), so the
//! kernel spreads flows over the queues. Receiving reads frames the kernel marked
//! `TP_STATUS_USER`, copies them into mbufs and hands the frames back: no syscall at all.
//! Transmitting copies mbufs into `TP_STATUS_AVAILABLE` frames, marks them `SEND_REQUEST` and
//! kicks the kernel with one `send()` per burst.
//!
//! A secondary gets duplicates of the sockets from the primary over IPC (action
//! `net_af_packet_fds`, as net_tap) and maps the rings itself: the kernel gives every mapping of
//! a packet socket's ring the same pages. Where each queue's rx and tx ring stands (the next
//! frame index) lives in a memzone (`net_af_packet_<device>`), so a queue handed from one process
//! to another continues where the other left it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::Shm;

use crate::error::{Ctx, DriverError};
use crate::sys::packet::{join_fanout, kick_tx, open_ring_socket, RingMap, TpacketReq};
use crate::sys::{netif, share};

const NAME: &str = "net_af_packet";
const MAX_QPAIRS: u64 = 16;
/// IPC action of the primary that hands the queue sockets to secondaries.
pub const FDS_ACTION: &str = "net_af_packet_fds";

// <linux/if_packet.h>
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
const TPACKET_ALIGNMENT: u64 = 16;
/// Where transmit data starts in a tx frame: `TPACKET2_HDRLEN - sizeof(sockaddr_ll)`.
const TX_DATA_OFF: usize = 32;
/// `TPACKET2_HDRLEN`: aligned header plus the sockaddr_ll the kernel writes after it on rx.
const TPACKET2_HDRLEN: u64 = 32 + 20;

/// `struct tpacket2_hdr`.
#[repr(C)]
struct Tpacket2Hdr {
    tp_status: AtomicU32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_sec: u32,
    tp_nsec: u32,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
    tp_padding: [u8; 4],
}
const _: () = assert!(std::mem::size_of::<Tpacket2Hdr>() == 32);

static KEYS: [KeySpec; 6] = [
    KeySpec::new("iface", KeyKind::Iface, "kernel interface to attach to").required(),
    KeySpec::new("qpairs", KeyKind::U64 { min: 1, max: MAX_QPAIRS }, "queue pairs (default 1)"),
    KeySpec::new("blocksz", KeyKind::U64 { min: 4096, max: 1 << 22 }, "ring block size (default 4096)"),
    KeySpec::new("framesz", KeyKind::U64 { min: 128, max: 1 << 16 }, "ring frame size (default 2048)"),
    KeySpec::new("framecnt", KeyKind::U64 { min: 2, max: 1 << 18 }, "frames per ring (default 512)"),
    KeySpec::new("qdisc_bypass", KeyKind::Bool, "bypass the qdisc layer on transmit (default 0)"),
];

/// Ring geometry of every queue (the same for rx and tx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per block.
    pub blocksz: u32,
    /// Bytes per frame.
    pub framesz: u32,
    /// Frames per ring.
    pub framecnt: u32,
}

impl Geometry {
    /// Checks a geometry as the kernel will; the error names the keys.
    pub fn new(blocksz: u64, framesz: u64, framecnt: u64) -> Result<Geometry, DriverError> {
        let page = 4096;
        if !blocksz.is_multiple_of(page) {
            return Err(DriverError::config(format!("blocksz={blocksz} is not a multiple of the page size {page}")));
        }
        if !framesz.is_multiple_of(TPACKET_ALIGNMENT) || framesz < TPACKET2_HDRLEN + 64 {
            return Err(DriverError::config(format!(
                "framesz={framesz} must be a multiple of 16 and at least {}",
                TPACKET2_HDRLEN + 64
            )));
        }
        if framesz > blocksz {
            return Err(DriverError::config(format!("framesz={framesz} is larger than blocksz={blocksz}")));
        }
        let fpb = blocksz / framesz;
        if !framecnt.is_multiple_of(fpb) {
            return Err(DriverError::config(format!(
                "framecnt={framecnt} is not a multiple of the {fpb} frames per block (blocksz={blocksz} / framesz={framesz})"
            )));
        }
        if blocksz * (framecnt / fpb) > 1 << 30 {
            return Err(DriverError::config(format!(
                "ring of framecnt={framecnt} blocks of blocksz={blocksz} is over 1 GiB"
            )));
        }
        Ok(Geometry { blocksz: blocksz as u32, framesz: framesz as u32, framecnt: framecnt as u32 })
    }
    fn frames_per_block(&self) -> u32 {
        self.blocksz / self.framesz
    }
    fn blocks(&self) -> u32 {
        self.framecnt / self.frames_per_block()
    }
    /// Bytes of one ring (rx or tx).
    fn ring_len(&self) -> usize {
        self.blocksz as usize * self.blocks() as usize
    }
    /// Offset of frame `i` in a ring: frames never straddle blocks.
    #[inline]
    fn frame_off(&self, i: u32) -> usize {
        let fpb = self.frames_per_block();
        (i / fpb) as usize * self.blocksz as usize + (i % fpb) as usize * self.framesz as usize
    }
    fn req(&self) -> TpacketReq {
        TpacketReq {
            tp_block_size: self.blocksz,
            tp_block_nr: self.blocks(),
            tp_frame_size: self.framesz,
            tp_frame_nr: self.framecnt,
        }
    }
}

/// The net_af_packet driver.
pub struct AfPacketDriver;

/// Per-queue ring positions in shared memory.
#[repr(C, align(64))]
struct QueuePos {
    rx: AtomicU32,
    tx: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<QueuePos>() == 64); // one cache line per queue

fn zone_name(dev: &str) -> String {
    format!("net_af_packet_{dev}")
}

impl Driver for AfPacketDriver {
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
        let Some(iface) = ctx.kvargs.get_str("iface").map(str::to_string) else {
            return Err(ctx.error(NAME, "missing required key \"iface\""));
        };
        let qpairs = ctx.kvargs.get_u64("qpairs").unwrap_or(1) as u16;
        let (nrx, ntx) = (ctx.conf.nb_rxq, ctx.conf.nb_txq);
        if nrx == 0 || nrx > qpairs || ntx == 0 || ntx > qpairs {
            return Err(ctx.error(NAME, format!("queue counts {nrx}/{ntx} out of range 1..=qpairs={qpairs}")));
        }
        let mut geo = Geometry::new(
            ctx.kvargs.get_u64("blocksz").unwrap_or(4096),
            ctx.kvargs.get_u64("framesz").unwrap_or(2048),
            ctx.kvargs.get_u64("framecnt").unwrap_or(512),
        )
        .map_err(|e| ctx.error(NAME, e))?;
        let ifindex =
            netif::index(&iface).ctx(format!("interface {iface} not found")).map_err(|e| ctx.error(NAME, e))?;
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(shm, &ctx.conf.pool, 64)
            .ctx(format!("buffer pool {}", ctx.conf.pool))
            .map_err(|e| ctx.error(NAME, e))?;
        let zname = zone_name(ctx.name);
        let primary = ctx.is_primary();
        let (fds, published, zone) = if primary {
            let bypass = ctx.kvargs.get_bool("qdisc_bypass").unwrap_or(false);
            let fds = (0..qpairs)
                .map(|q| open_ring_socket(ifindex, &geo.req(), bypass).ctx(format!("queue {q}")))
                .collect::<Result<Vec<_>, _>>()
                .ctx(format!("interface {iface}"))
                .map_err(|e| ctx.error(NAME, e))?;
            if qpairs > 1 {
                join_fanout(&fds).ctx(format!("interface {iface}")).map_err(|e| ctx.error(NAME, e))?;
            }
            let zone = shm
                .reserve(&zname, std::mem::size_of::<QueuePos>() as u64 * MAX_QPAIRS, 64)
                .ctx("ring positions")
                .map_err(|e| ctx.error(NAME, e))?;
            let guard = ZoneGuard { shm: shm.clone(), name: Some(zname.clone()) };
            let meta = format!("{} {} {} {qpairs}", geo.blocksz, geo.framesz, geo.framecnt).into_bytes();
            let p = share::publish(ctx.runtime, FDS_ACTION, ctx.name, &fds, meta)
                .ctx("sharing queue sockets")
                .map_err(|e| ctx.error(NAME, e))?;
            (fds, Some(p), (zone.offset, guard))
        } else {
            let (fds, meta) = share::fetch(ctx.runtime, FDS_ACTION, ctx.name)
                .ctx(format!("queue sockets of {iface}"))
                .map_err(|e| ctx.error(NAME, e))?;
            let m: Vec<u64> =
                String::from_utf8_lossy(&meta).split_whitespace().filter_map(|w| w.parse().ok()).collect();
            if m.len() != 4 || (m[3] as usize) != fds.len() || fds.len() < qpairs as usize {
                return Err(
                    ctx.error(NAME, format!("the primary's ring description {m:?} does not fit qpairs={qpairs}"))
                );
            }
            geo = Geometry::new(m[0], m[1], m[2]).ctx("primary's geometry").map_err(|e| ctx.error(NAME, e))?;
            let zone = shm.lookup(&zname).ctx("ring positions").map_err(|e| ctx.error(NAME, e))?;
            (fds, None, (zone.offset, ZoneGuard { shm: shm.clone(), name: None }))
        };
        let pos_base = shm
            .ptr(zone.0, std::mem::size_of::<QueuePos>() as u64 * MAX_QPAIRS)
            .ok_or_else(|| ctx.error(NAME, "ring positions outside shared memory"))?;
        let mut queues = Vec::with_capacity(qpairs as usize);
        for (q, fd) in fds.iter().enumerate() {
            let map = RingMap::new(fd.as_fd(), 2 * geo.ring_len())
                .ctx(format!("interface {iface}: queue {q}"))
                .map_err(|e| ctx.error(NAME, e))?;
            // SAFETY: q < MAX_QPAIRS; the zone holds MAX_QPAIRS QueuePos, 64-aligned, zeroed at
            // creation, in a mapping never unmapped; only atomics are accessed.
            let pos = unsafe { NonNull::new_unchecked(pos_base.as_ptr().cast::<QueuePos>().add(q)) };
            queues.push(Queue {
                fd: fd.as_raw_fd(),
                map,
                pos,
                geo,
                pool: pool.new_handle(),
                port: ctx.port.0,
                st: QStats::default(),
            });
        }
        let mac = netif::mac(&iface).unwrap_or([0; 6]);
        let mtu = netif::mtu(&iface).unwrap_or(1500);
        if nrx < qpairs {
            tracing::warn!(
                device = ctx.name,
                qpairs,
                nb_rxq = nrx,
                "the kernel spreads flows over all qpairs sockets: flows hashed to queues past nb_rxq are not received"
            );
        }
        tracing::info!(device = ctx.name, iface = %iface, qpairs, ?geo, primary, "net_af_packet probed");
        Ok(Box::new(AfPacketPort {
            info: DevInfo { driver: NAME, mac, mtu, nb_rxq: nrx, nb_txq: ntx, max_rxq: qpairs, max_txq: qpairs },
            iface,
            queues,
            _fds: fds,
            _published: published,
            _zone: zone.1,
        }))
    }
}

/// Frees the ring-position zone when dropped with a name (primary), unless disarmed.
struct ZoneGuard {
    shm: Arc<Shm>,
    name: Option<String>,
}

impl Drop for ZoneGuard {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            let _ = self.shm.free(&n);
        }
    }
}

#[derive(Default)]
struct QStats {
    ipackets: u64,
    ibytes: u64,
    opackets: u64,
    obytes: u64,
    nombuf: u64,
    ierrors: u64,
    oerrors: u64,
}

struct Queue {
    /// Owned by `AfPacketPort::_fds`, which outlives the queue.
    fd: RawFd,
    map: RingMap,
    pos: NonNull<QueuePos>,
    geo: Geometry,
    pool: Mempool,
    port: u16,
    st: QStats,
}

// SAFETY: `pos` points into shared memory that is never unmapped and is only accessed through
// atomics; the mapping moves with the queue.
unsafe impl Send for Queue {}

impl Queue {
    #[inline]
    fn pos(&self) -> &QueuePos {
        // SAFETY: see the Send impl: a live QueuePos of atomics.
        unsafe { self.pos.as_ref() }
    }

    /// Frame `i` of the rx ring (`tx` false) or the tx ring.
    #[inline]
    fn frame(&self, tx: bool, i: u32) -> *mut u8 {
        let off = self.geo.frame_off(i) + if tx { self.geo.ring_len() } else { 0 };
        // SAFETY: i < framecnt so off + framesz <= 2 * ring_len, the mapping's length.
        unsafe { self.map.base().add(off) }
    }

    #[inline]
    fn rx_burst(&mut self, pkts: &mut [Option<Mbuf>]) -> usize {
        let mut idx = self.pos().rx.load(Ordering::Relaxed) % self.geo.framecnt;
        let fsz = self.geo.framesz as usize;
        let mut n = 0;
        while n < pkts.len() {
            let f = self.frame(false, idx);
            // SAFETY: f is a frame start inside the mapping, 16-aligned; the header is shared
            // with the kernel, which hands the frame over by setting TP_STATUS_USER (acquire).
            let h = unsafe { &*f.cast::<Tpacket2Hdr>() };
            let status = h.tp_status.load(Ordering::Acquire);
            if status & TP_STATUS_USER == 0 {
                break;
            }
            let (mac, len) = (h.tp_mac as usize, h.tp_snaplen as usize);
            // The kernel took a VLAN tag out of the frame: put it back after the MAC addresses.
            let vlan = (status & TP_STATUS_VLAN_VALID != 0 && len >= 12).then(|| {
                let tpid = if status & TP_STATUS_VLAN_TPID_VALID != 0 { h.tp_vlan_tpid } else { 0x8100 };
                (tpid, h.tp_vlan_tci)
            });
            if mac.checked_add(len).is_none_or(|end| end > fsz) {
                // A header that does not fit its frame: skip the frame, never read past it.
                self.st.ierrors += 1;
            } else {
                let Some(mut m) = self.pool.alloc() else {
                    // Leave the frame to the kernel's next look: retried on the next burst.
                    self.st.nombuf += 1;
                    break;
                };
                let total = len + if vlan.is_some() { 4 } else { 0 };
                if !m.set_len(total) {
                    self.st.ierrors += 1;
                    self.pool.free(m);
                } else {
                    // SAFETY: [mac, mac+len) lies inside this frame (checked above); the kernel
                    // does not write a USER frame until we give it back.
                    let src = unsafe { std::slice::from_raw_parts(f.add(mac), len) };
                    let d = m.data_mut();
                    match vlan {
                        Some((tpid, tci)) => {
                            d[..12].copy_from_slice(&src[..12]);
                            d[12..14].copy_from_slice(&tpid.to_be_bytes());
                            d[14..16].copy_from_slice(&tci.to_be_bytes());
                            d[16..].copy_from_slice(&src[12..]);
                        }
                        None => d.copy_from_slice(src),
                    }
                    m.set_port(self.port);
                    m.hdr_mut().timestamp = h.tp_sec as u64 * 1_000_000_000 + h.tp_nsec as u64;
                    self.st.ibytes += total as u64;
                    pkts[n] = Some(m);
                    n += 1;
                }
            }
            h.tp_status.store(TP_STATUS_KERNEL, Ordering::Release);
            idx = if idx + 1 == self.geo.framecnt { 0 } else { idx + 1 };
        }
        self.pos().rx.store(idx, Ordering::Relaxed);
        self.st.ipackets += n as u64;
        n
    }

    #[inline]
    fn tx_burst(&mut self, pkts: &mut [Option<Mbuf>]) -> usize {
        let mut idx = self.pos().tx.load(Ordering::Relaxed) % self.geo.framecnt;
        let room = self.geo.framesz as usize - TX_DATA_OFF;
        let mut n = 0;
        let mut queued = 0;
        for slot in pkts.iter_mut() {
            let Some(m) = slot.as_ref() else { break };
            let f = self.frame(true, idx);
            // SAFETY: as in rx: a frame header shared with the kernel; AVAILABLE (acquire) means the
            // kernel is done with the frame and it is ours to fill.
            let h = unsafe { &mut *f.cast::<Tpacket2Hdr>() };
            let st = h.tp_status.load(Ordering::Acquire);
            if st != TP_STATUS_AVAILABLE && st != TP_STATUS_WRONG_FORMAT {
                break; // ring full: the kernel has not sent this frame yet
            }
            let len = m.pkt_len();
            if len > room {
                self.st.oerrors += 1;
            } else {
                // SAFETY: [TX_DATA_OFF, TX_DATA_OFF + len) is inside this frame (len <= room).
                let dst = unsafe { std::slice::from_raw_parts_mut(f.add(TX_DATA_OFF), len) };
                let _ = m.copy_to(dst); // every segment, in order
                h.tp_len = len as u32;
                h.tp_snaplen = len as u32;
                h.tp_status.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
                self.st.opackets += 1;
                self.st.obytes += len as u64;
                idx = if idx + 1 == self.geo.framecnt { 0 } else { idx + 1 };
                queued += 1;
            }
            if let Some(m) = slot.take() {
                self.pool.free(m);
            }
            n += 1;
        }
        self.pos().tx.store(idx, Ordering::Relaxed);
        if queued > 0 {
            // One kick per burst: the kernel sends every SEND_REQUEST frame of the ring.
            if let Err(err) = kick_tx(self.fd) {
                let e = err.raw_os_error();
                if e != Some(libc::EAGAIN) && e != Some(libc::ENOBUFS) {
                    self.st.oerrors += 1;
                }
            }
        }
        n
    }
}

struct AfPacketPort {
    info: DevInfo,
    iface: String,
    /// Declared before `_fds`: rings are unmapped before their sockets close.
    queues: Vec<Queue>,
    _fds: Vec<OwnedFd>,
    _published: Option<share::Published>,
    _zone: ZoneGuard,
}

impl EthDev for AfPacketPort {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }
    fn link(&mut self) -> LinkStatus {
        let up = netif::is_running(&self.iface);
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }
    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        for q in &self.queues {
            s.ipackets += q.st.ipackets;
            s.ibytes += q.st.ibytes;
            s.opackets += q.st.opackets;
            s.obytes += q.st.obytes;
            s.rx_nombuf += q.st.nombuf;
            s.ierrors += q.st.ierrors;
            s.oerrors += q.st.oerrors;
        }
        s
    }
    fn stats_reset(&mut self) {
        for q in &mut self.queues {
            q.st = QStats::default();
        }
    }
    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        netif::set_promisc(&self.iface, on).ctx("set promiscuous mode").map_err(|e| e.device(NAME))
    }
    #[inline]
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        match self.queues.get_mut(queue as usize) {
            Some(q) if queue < self.info.nb_rxq => q.rx_burst(pkts),
            _ => 0,
        }
    }
    #[inline]
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        match self.queues.get_mut(queue as usize) {
            Some(q) if queue < self.info.nb_txq => q.tx_burst(pkts),
            _ => 0,
        }
    }
    fn close(self: Box<Self>, how: Release) {
        // The ring-position zone goes with the process that created it (the primary), whichever
        // way it releases; a secondary's guard holds no name.
        let me = *self;
        tracing::info!(iface = %me.iface, shared = how == Release::Shared, "net_af_packet closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_checked_as_the_kernel_does_and_errors_name_the_keys() {
        let g = Geometry::new(4096, 2048, 512).unwrap();
        assert_eq!((g.frames_per_block(), g.blocks(), g.ring_len()), (2, 256, 1 << 20));
        assert_eq!(g.frame_off(3), 4096 + 2048);
        assert!(Geometry::new(4000, 2048, 512).unwrap_err().to_string().contains("blocksz=4000"));
        assert!(Geometry::new(4096, 2008, 512).unwrap_err().to_string().contains("framesz=2008"));
        assert!(Geometry::new(4096, 8192, 512).unwrap_err().to_string().contains("larger than blocksz"));
        assert!(Geometry::new(8192, 2048, 6).unwrap_err().to_string().contains("framecnt=6"));
    }
}
