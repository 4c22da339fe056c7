//! Split virtqueues (virtio 1.x, section 2.7) in the lab's shared memory, and the net_virtio
//! receive and transmit bursts over them.
//!
//! One memzone per queue (`virtio_<port>_rxq<q>`, `virtio_<port>_txq<q>`), reserved by the
//! primary, found by secondaries:
//!
//! ```text
//! offset 0      QueueHdr (128 bytes): magic, size, avail index (next), last used index (clean), counters
//! offset 128    descriptor table: n x 16 bytes (addr u64, len u32, flags u16, next u16)
//! then          available ring: flags u16, idx u16, ring[n] u16, used_event u16
//! then (4-al.)  used ring: flags u16, idx u16, ring[n] {id u32, len u32}, avail_event u16
//! then (8-al.)  software ring: n x u64, the mbuf (shared-memory offset) each descriptor holds
//! ```
//!
//! On a receive queue descriptor `i` is always the one of available-ring slot `i mod n`, and all
//! n stay posted (a frame whose buffer cannot be replaced is dropped and its buffer posted
//! again). A transmit queue gives a packet of k segments k consecutive descriptors chained with
//! NEXT and one available slot (`TxVq`), and fills a descriptor again only once the device
//! gave its packet back, so a device that completes out of order slows the queue down and never
//! makes it overwrite a buffer in flight.
//! The used ring is written by the device: ids and lengths are bounded before use.

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use lab_core::ethdev::PortId;
use lab_core::mbuf::{Mbuf, Mempool, MAX_SEGS};
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use crate::error::{Ctx, DriverError};
pub use crate::pci::queue::QueueHdr;
use crate::pci::queue::HDR_LEN;

/// `virtio_net_hdr` with VIRTIO_F_VERSION_1: always 12 bytes (`num_buffers` included).
pub const NET_HDR_LEN: usize = 12;
/// Descriptor flag: the device writes the buffer.
const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Used ring flag: the device needs no notification.
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Available ring flag: the driver needs no used-buffer notification (it polls).
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
const MAGIC: u64 = 0x5649_5254_5151_0001;

/// Byte offsets of a queue zone's parts for `n` descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Software ring.
    pub sw: u64,
    /// Whole zone.
    pub len: u64,
}

impl Layout {
    /// The layout for `n` descriptors (alignment as the spec's 2.7 table: 16, 2, 4).
    pub fn new(n: u32) -> Layout {
        let n = u64::from(n);
        let desc = HDR_LEN;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let sw = (used + 6 + 8 * n).next_multiple_of(8);
        Layout { desc, avail, used, sw, len: sw + 8 * n }
    }
}

/// The memzone name of a queue.
pub fn zone_name(port: PortId, rx: bool, q: u16) -> String {
    format!("virtio_{port}_{}q{q}", if rx { "rx" } else { "tx" })
}

/// Where a queue's available-buffer notification goes.
#[derive(Clone, Copy, Debug)]
enum Bell {
    /// A notify register in a mapped BAR: a store.
    Mapped(NonNull<u16>),
    /// A notify register at this BAR offset, trapped: through the transport.
    Trapped(u64),
    /// A vhost-user kick eventfd (owned by the port, which outlives the queue): a write of 1.
    Kick(RawFd),
}

/// What the bursts notify through when a queue's bell is a trapped register: a BAR; the
/// vhost-user front end passes [`NoBar`] (its bells are eventfds).
pub(crate) trait Doorbell {
    /// Writes `v` to the 16-bit register at `off`.
    fn write16(&self, off: u64, v: u16);
}

impl Doorbell for Bar {
    #[inline]
    fn write16(&self, off: u64, v: u16) {
        Bar::write16(self, off, v)
    }
}

/// No BAR: for queues whose bell is an eventfd.
pub(crate) struct NoBar;

impl Doorbell for NoBar {
    fn write16(&self, _off: u64, _v: u16) {}
}

/// A process's view of one virtqueue zone.
pub(crate) struct Vq {
    base: NonNull<u8>,
    pub(crate) n: u32,
    lay: Layout,
    iova: u64,
    zone: String,
    /// The queue's notification: a notify register (mapped or trapped) or a kick eventfd.
    bell: Bell,
    /// The virtqueue index written to the notify register.
    index: u16,
    shm: Arc<Shm>,
    port: u16,
}

// SAFETY: the pointers point into this process's shared-memory and BAR mappings, which outlive
// the queue (the port holds both); one thread runs a queue at a time (&mut self on the data path).
unsafe impl Send for Vq {}

impl Vq {
    /// Reserves (primary, zeroed) or finds (secondary) the zone of virtqueue `index` with `n`
    /// descriptors; `notify` is its notify register's offset in `bar`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        name: String,
        index: u16,
        n: u32,
        notify: u64,
        port: PortId,
        create: bool,
    ) -> Result<Vq, DriverError> {
        let bell = match bar.mapped_ptr16(notify).and_then(NonNull::new) {
            Some(p) => Bell::Mapped(p),
            None => Bell::Trapped(notify),
        };
        Vq::open_with(shm, name, index, n, bell, port, create)
    }

    /// As [`Vq::open`], for a vhost-user front end: the bell is the kick eventfd `kick`, which
    /// the caller keeps open as long as the queue.
    pub(crate) fn open_kicked(
        shm: &Arc<Shm>,
        name: String,
        index: u16,
        n: u32,
        kick: RawFd,
        port: PortId,
        create: bool,
    ) -> Result<Vq, DriverError> {
        Vq::open_with(shm, name, index, n, Bell::Kick(kick), port, create)
    }

    fn open_with(
        shm: &Arc<Shm>,
        name: String,
        index: u16,
        n: u32,
        bell: Bell,
        port: PortId,
        create: bool,
    ) -> Result<Vq, DriverError> {
        if !n.is_power_of_two() || n > 32768 {
            return Err(DriverError::config(format!("virtqueue size {n}: a power of 2 up to 32768")));
        }
        let lay = Layout::new(n);
        let z = if create { shm.reserve(&name, lay.len, 4096) } else { shm.lookup(&name) }
            .ctx(format!("memzone {name}"))?;
        if z.len < lay.len {
            return Err(DriverError::state(format!("memzone {name} is {} bytes, {} needed", z.len, lay.len)));
        }
        let base = shm
            .ptr(z.offset, lay.len)
            .ok_or_else(|| DriverError::state(format!("memzone {name} outside shared memory")))?;
        if !(base.as_ptr() as usize).is_multiple_of(128) {
            return Err(DriverError::state(format!("memzone {name} is not 128-byte aligned")));
        }
        let iova = ShmOffset(z.offset.0).iova().0;
        let v = Vq { base, n, lay, iova, zone: name, bell, index, shm: shm.clone(), port: port.0 };
        let h = v.h();
        if create {
            // A fresh zone: the size, then the magic that publishes it.
            v.magic_and_size().1.store(u64::from(n), Ordering::Relaxed);
            h.next.store(0, Ordering::Relaxed);
            h.clean.store(0, Ordering::Relaxed);
            v.magic_and_size().0.store(MAGIC, Ordering::Release);
        } else {
            let (m, s) = v.magic_and_size();
            if m.load(Ordering::Acquire) != MAGIC || s.load(Ordering::Relaxed) != u64::from(n) {
                return Err(DriverError::state(format!("memzone {} holds no virtqueue of {n}", v.zone)));
            }
        }
        Ok(v)
    }

    /// The header's first two words, as atomics: magic and (in the word after it) the size.
    fn magic_and_size(&self) -> (&AtomicU64, &AtomicU64) {
        // SAFETY: the zone starts with a 128-byte, 128-aligned QueueHdr whose first 16 bytes are
        // the magic (u64) and nb_desc + reserved (2 x u32): read here as two u64 atomics, which
        // is how this module alone writes them.
        unsafe {
            let p = self.base.as_ptr().cast::<AtomicU64>();
            (&*p, &*p.add(1))
        }
    }

    pub(crate) fn h(&self) -> &QueueHdr {
        // SAFETY: a QueueHdr at the start of the zone (128 bytes, 128-aligned, inside the
        // mapping); its mutable fields are atomics.
        unsafe { self.base.cast::<QueueHdr>().as_ref() }
    }

    pub(crate) fn zone(&self) -> &str {
        &self.zone
    }

    /// IOVAs of the descriptor table, available ring and used ring, for queue_desc/driver/device.
    pub(crate) fn addrs(&self) -> (u64, u64, u64) {
        (self.iova + self.lay.desc, self.iova + self.lay.avail, self.iova + self.lay.used)
    }

    /// This process's addresses of the descriptor table, available ring and used ring: what
    /// vhost-user's SET_VRING_ADDR carries (the back end translates them by the memory table).
    pub(crate) fn user_addrs(&self) -> (u64, u64, u64) {
        let b = self.base.as_ptr() as u64;
        (b + self.lay.desc, b + self.lay.avail, b + self.lay.used)
    }

    /// Tells the device not to send used-buffer notifications: the driver polls (2.7.7).
    pub(crate) fn set_no_interrupt(&self) {
        // SAFETY: avail.flags, 2-aligned at the start of the available ring inside the zone.
        unsafe { self.at::<u16>(self.lay.avail).write_volatile(VIRTQ_AVAIL_F_NO_INTERRUPT.to_le()) }
    }

    /// The used ring's index as the device last wrote it: where a new back end resumes
    /// (vhost-user SET_VRING_BASE after a reconnect).
    pub(crate) fn device_used(&self) -> u16 {
        self.used_idx()
    }

    fn at<T>(&self, off: u64) -> *mut T {
        debug_assert!(off + std::mem::size_of::<T>() as u64 <= self.lay.len);
        // SAFETY: callers pass offsets inside the zone (bounded by the layout and i < n).
        unsafe { self.base.as_ptr().add(off as usize).cast::<T>() }
    }

    fn write_desc(&self, i: u32, addr: u64, len: u32, flags: u16) {
        self.write_desc_next(i, addr, len, flags, 0);
    }

    /// Descriptor `i` with its `next` field (read by the device when `flags` has NEXT).
    fn write_desc_next(&self, i: u32, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.lay.desc + 16 * u64::from(i % self.n);
        // SAFETY: descriptor i < n is inside the table, 16-aligned; the driver owns it now (it
        // is not in the available ring the device reads).
        unsafe {
            self.at::<u64>(d).write_volatile(addr.to_le());
            self.at::<u32>(d + 8).write_volatile(len.to_le());
            self.at::<u16>(d + 12).write_volatile(flags.to_le());
            self.at::<u16>(d + 14).write_volatile(next.to_le());
        }
    }

    fn set_avail_slot(&self, idx: u16, id: u16) {
        let s = self.lay.avail + 4 + 2 * u64::from(u32::from(idx) % self.n);
        // SAFETY: slot < n inside the available ring, 2-aligned; written before idx publishes it.
        unsafe { self.at::<u16>(s).write_volatile(id.to_le()) }
    }

    fn publish_avail(&self, idx: u16) {
        // The descriptors and slots must be visible before the index (2.7.13.3).
        fence(Ordering::Release);
        // SAFETY: avail.idx, 2-aligned inside the zone.
        unsafe { self.at::<u16>(self.lay.avail + 2).write_volatile(idx.to_le()) }
        self.h().next.store(u32::from(idx), Ordering::Release);
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: used.idx, 2-aligned inside the zone; the device writes it.
        let v = u16::from_le(unsafe { self.at::<u16>(self.lay.used + 2).read_volatile() });
        // Elements before the index are read only after it (2.7.14).
        fence(Ordering::Acquire);
        v
    }

    fn used_elem(&self, idx: u16) -> (u32, u32) {
        let e = self.lay.used + 4 + 8 * u64::from(u32::from(idx) % self.n);
        // SAFETY: element < n inside the used ring, 4-aligned.
        unsafe {
            (u32::from_le(self.at::<u32>(e).read_volatile()), u32::from_le(self.at::<u32>(e + 4).read_volatile()))
        }
    }

    fn device_wants_notify(&self) -> bool {
        // SAFETY: used.flags, 2-aligned inside the zone.
        let f = u16::from_le(unsafe { self.at::<u16>(self.lay.used).read_volatile() });
        f & VIRTQ_USED_F_NO_NOTIFY == 0
    }

    fn sw_get(&self, i: u32) -> u64 {
        // SAFETY: i % n < n inside the software ring, 8-aligned; one process runs a queue.
        unsafe { self.at::<u64>(self.lay.sw + 8 * u64::from(i % self.n)).read_volatile() }
    }

    fn sw_set(&self, i: u32, v: u64) {
        // SAFETY: as in `sw_get`.
        unsafe { self.at::<u64>(self.lay.sw + 8 * u64::from(i % self.n)).write_volatile(v) }
    }

    fn notify<D: Doorbell + ?Sized>(&self, bar: &D) {
        // The index must be visible before the device is told (2.7.13.4).
        fence(Ordering::SeqCst);
        match self.bell {
            // SAFETY: from `Bar::mapped_ptr16`, inside the BAR mapping the port keeps alive.
            Bell::Mapped(p) => unsafe { p.as_ptr().write_volatile(self.index.to_le()) },
            Bell::Trapped(off) => bar.write16(off, self.index),
            Bell::Kick(fd) => {
                let one = 1u64.to_ne_bytes();
                // SAFETY: `fd` is the kick eventfd the port keeps open while the queue exists;
                // the write reads 8 bytes from a live stack buffer. A full counter (EAGAIN on a
                // non-blocking eventfd) still leaves the back end a kick pending: nothing lost.
                let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
            }
        }
    }

    /// The avail index and last used index, as u16 counters.
    fn indices(&self) -> (u16, u16) {
        let h = self.h();
        (h.next.load(Ordering::Acquire) as u16, h.clean.load(Ordering::Acquire) as u16)
    }

    /// Posts one chain of descriptors 0.. (address, length, device-writable), makes it available,
    /// notifies, and waits (at most `within`) for the device to use it: the control queue's one
    /// command at a time (the caller holds the lock that makes it so).
    pub(crate) fn command<const N: usize, D: Doorbell>(
        &self,
        bar: &D,
        parts: [(u64, u32, bool); N],
        within: std::time::Duration,
    ) -> bool {
        const { assert!(N >= 1 && N <= 4) };
        let (avail, last) = self.indices();
        for (i, (addr, len, write)) in parts.iter().enumerate() {
            let d = self.lay.desc + 16 * i as u64;
            let flags = if *write { VIRTQ_DESC_F_WRITE } else { 0 } | if i + 1 < N { 1 } else { 0 };
            // SAFETY: descriptors 0..N (N <= 4 < n) are inside the table and not available to the
            // device (the previous command was used before this one is written).
            unsafe {
                self.at::<u64>(d).write_volatile(addr.to_le());
                self.at::<u32>(d + 8).write_volatile(len.to_le());
                self.at::<u16>(d + 12).write_volatile(flags.to_le());
                self.at::<u16>(d + 14).write_volatile((i as u16 + 1).to_le());
            }
        }
        self.set_avail_slot(avail, 0);
        self.publish_avail(avail.wrapping_add(1));
        self.notify(bar);
        let t = std::time::Instant::now();
        loop {
            if self.used_idx() != last {
                self.h().clean.store(u32::from(last.wrapping_add(1)), Ordering::Release);
                return true;
            }
            if t.elapsed() > within {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// Frees every buffer the software ring holds (device reset first). Primary at release.
    pub(crate) fn drain(&mut self, pool: &mut Mempool) {
        for i in 0..self.n {
            let off = self.sw_get(i);
            self.sw_set(i, 0);
            // (A transmit chain's later descriptors hold CHAINED, no buffer.)
            if let Some(m) = Mbuf::from_offset(&self.shm, ShmOffset(off)).filter(|_| off > CHAINED) {
                pool.free(m);
            }
        }
    }

    /// The buffer posted at descriptor `id`, as an owned handle (the software ring still
    /// names it: post it again or put it back with `into_offset`); None for an id that is not
    /// ours or a slot without a buffer.
    fn posted(&self, id: u32) -> Option<Mbuf> {
        if id >= self.n {
            return None;
        }
        let off = self.sw_get(id);
        Mbuf::from_offset(&self.shm, ShmOffset(off)).filter(|_| off != 0)
    }

    /// Prefetches the header line of the buffer the device used at `idx`, if `idx` is before
    /// `used` (the device wrote it on its core: the burst's reads of it then overlap).
    #[inline]
    fn prefetch_used(&self, idx: u16, used: u16) {
        if used.wrapping_sub(idx).wrapping_sub(1) as u32 >= self.n {
            return;
        }
        let (id, _) = self.used_elem(idx);
        let off = self.sw_get(id);
        if off <= CHAINED {
            return;
        }
        // Posted with HEADROOM in front of the data, the 12-byte header just before it.
        let at = off.checked_add(64 + u64::from(lab_core::mbuf::HEADROOM) - NET_HDR_LEN as u64);
        if let Some(p) = at.and_then(|at| self.shm.ptr(ShmOffset(at), 1)) {
            super::prefetch(p.as_ptr());
        }
    }

    /// `post_rx`, then descriptor `id` made available in slot `avail` (which moves on).
    #[inline]
    fn repost(&self, id: u32, m: Mbuf, avail: &mut u16) {
        self.post_rx(id, m);
        self.set_avail_slot(*avail, id as u16);
        *avail = avail.wrapping_add(1);
    }

    /// Posts `m` as writable buffer `id` (header room in front of its data). The buffer is reset
    /// first: one coming back from a dropped frame may have its data moved (the header
    /// prepended) or a length set, and its descriptor must start where a fresh one's does.
    fn post_rx(&self, id: u32, mut m: Mbuf) {
        m.reset();
        let room = (m.buf_len() - m.headroom()) as u32;
        self.write_desc(id, m.data_iova().0 - NET_HDR_LEN as u64, room + NET_HDR_LEN as u32, VIRTQ_DESC_F_WRITE);
        self.sw_set(id, m.into_offset().0);
    }
}

/// One receive virtqueue.
pub(crate) struct RxVq {
    pub(crate) q: Vq,
    /// MRG_RXBUF negotiated: a frame's header says over how many buffers (`num_buffers`) it
    /// lies. Without it the field says nothing we use (DPDK's vhost leaves it 0).
    pub(crate) mergeable: bool,
}

impl RxVq {
    /// Posts a buffer to every descriptor and makes them available. Primary, before DRIVER_OK.
    pub(crate) fn fill(&mut self, pool: &mut Mempool) -> Result<(), DriverError> {
        for i in 0..self.q.n {
            let m = pool.alloc().ok_or_else(|| {
                DriverError::state(format!("buffer pool {} ran out filling {}", pool.name(), self.q.zone))
            })?;
            if m.headroom() < NET_HDR_LEN {
                return Err(DriverError::config("buffer headroom under the 12-byte virtio-net header"));
            }
            self.q.post_rx(i, m);
            self.q.set_avail_slot(i as u16, i as u16);
        }
        self.q.h().clean.store(0, Ordering::Relaxed);
        self.q.publish_avail(self.q.n as u16);
        Ok(())
    }

    /// Tells the device buffers are there (after DRIVER_OK).
    pub(crate) fn kick<D: Doorbell>(&self, bar: &D) {
        self.q.notify(bar);
    }

    /// Receives into the front of `pkts`: each used element is a frame behind its 12-byte header,
    /// or with MRG_RXBUF the first of the `num_buffers` elements a frame fills (made one
    /// chained packet, [`merge`]). Each descriptor is posted again at once with a fresh buffer
    /// (or, with none to be had or a bad frame, with the same one), so all n stay posted. One
    /// index update and at most one notify.
    #[inline]
    pub(crate) fn burst<D: Doorbell>(&mut self, bar: &D, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize {
        let q = &self.q;
        let (mut avail, mut last) = q.indices();
        let used = q.used_idx();
        // More used than the device can have: corrupt shared state, do nothing.
        if used.wrapping_sub(last) as u32 > q.n {
            return 0;
        }
        let mut c = RxCount::default();
        let mut reposted = false;
        for k in 0..AHEAD {
            q.prefetch_used(last.wrapping_add(k), used);
        }
        while c.got < pkts.len() && last != used {
            q.prefetch_used(last.wrapping_add(AHEAD), used);
            let (id, len) = q.used_elem(last);
            let Some(mut m) = q.posted(id) else {
                // Not a descriptor of ours, or no buffer of ours behind it: the frame is lost.
                last = last.wrapping_add(1);
                c.errors += 1;
                continue;
            };
            // The header sits just before the data (posted so): its num_buffers (offset 10).
            m.reset();
            let nbuf = m.prepend(NET_HDR_LEN).map_or(0, |h| u16::from_le_bytes([h[10], h[11]]));
            m.reset();
            if self.mergeable && nbuf > MAX_SEGS && u32::from(nbuf) <= q.n {
                // Over the longest chain we build: the whole frame is dropped, every one of its
                // descriptors posted again with its own buffer (read one at a time, its later
                // buffers would pass for frames).
                let _ = m.into_offset(); // still posted: taken again below, or next burst
                if used.wrapping_sub(last) < nbuf {
                    break;
                }
                for k in 0..nbuf {
                    let (id, _) = q.used_elem(last.wrapping_add(k));
                    if let Some(m) = q.posted(id) {
                        q.repost(id, m, &mut avail);
                    }
                }
                last = last.wrapping_add(nbuf);
                c.errors += 1;
                reposted = true;
                continue;
            }
            if self.mergeable && nbuf > 1 && u32::from(nbuf) <= q.n {
                if used.wrapping_sub(last) < nbuf {
                    // The frame's other buffers are not used yet: it waits for the next burst,
                    // its first buffer still posted.
                    let _ = m.into_offset();
                    break;
                }
                let frame = merge(q, pool, last, nbuf, m, &mut avail, &mut c);
                last = last.wrapping_add(nbuf);
                reposted = true;
                if let Some(f) = frame {
                    pkts[c.got] = Some(f);
                    c.got += 1;
                }
                continue;
            }
            last = last.wrapping_add(1);
            let frame = (len as usize).checked_sub(NET_HDR_LEN);
            // Without MRG_RXBUF the field says nothing we use (DPDK's vhost leaves it 0).
            let ok =
                matches!(frame, Some(f) if f > 0 && f <= m.buf_len() - m.headroom()) && (nbuf == 1 || !self.mergeable);
            // A replacement first: without one the frame is dropped and its buffer reposted.
            let back = match (ok, if ok { pool.alloc() } else { None }) {
                (true, Some(fresh)) => {
                    let f = frame.unwrap_or(0);
                    let _ = m.set_len(f);
                    m.set_port(q.port);
                    c.bytes += f as u64;
                    pkts[c.got] = Some(m);
                    c.got += 1;
                    fresh
                }
                (true, None) => {
                    c.nombuf += 1;
                    m
                }
                (false, _) => {
                    c.errors += 1;
                    m
                }
            };
            q.repost(id, back, &mut avail);
            reposted = true;
        }
        q.h().clean.store(u32::from(last), Ordering::Release);
        if reposted {
            q.publish_avail(avail);
            if q.device_wants_notify() {
                q.notify(bar);
            }
        }
        q.h().count(c.got as u64, c.bytes, c.errors, c.nombuf);
        c.got
    }
}

/// A receive burst's counts.
#[derive(Default)]
struct RxCount {
    got: usize,
    bytes: u64,
    errors: u64,
    nombuf: u64,
}

/// One frame over the `nbuf` used elements from `last` (MRG_RXBUF), `head` the first's buffer:
/// the buffers chained in order (the first without its header, the others whole), each
/// descriptor posted again with a fresh buffer. With too few fresh buffers the frame is dropped
/// (`nombuf`) and every descriptor gets its own buffer back; a bad element (not our descriptor,
/// a length over the buffer, an empty one) drops it too (`errors`).
fn merge(
    q: &Vq,
    pool: &mut Mempool,
    last: u16,
    nbuf: u16,
    head: Mbuf,
    avail: &mut u16,
    c: &mut RxCount,
) -> Option<Mbuf> {
    let mut fresh: arrayvec::ArrayVec<Option<Mbuf>, { MAX_SEGS as usize }> = arrayvec::ArrayVec::new();
    fresh.extend((0..nbuf).map(|_| None));
    let have = pool.alloc_bulk(&mut fresh);
    let mut frame: Option<Mbuf> = None;
    let mut head = Some(head);
    let mut bad = false;
    for k in 0..nbuf {
        let (id, len) = q.used_elem(last.wrapping_add(k));
        let Some(mut m) = (if k == 0 { head.take() } else { q.posted(id) }) else {
            bad = true; // lost: nothing to post again
            continue;
        };
        m.reset();
        // The first holds the header; the others are frame bytes from the descriptor's start.
        let fits = if k == 0 {
            (len as usize).checked_sub(NET_HDR_LEN).is_some_and(|f| f > 0 && m.set_len(f))
        } else {
            len > 0 && m.prepend(NET_HDR_LEN).is_some() && m.set_len(len as usize)
        };
        match fresh[usize::from(k)].take() {
            Some(f) if fits && !bad => {
                q.repost(id, f, avail);
                match frame.as_mut() {
                    None => frame = Some(m),
                    Some(h) => {
                        if let Err(m) = h.chain(m) {
                            bad = true;
                            pool.free(m);
                        }
                    }
                }
            }
            other => {
                bad |= !fits;
                if let Some(f) = other {
                    pool.free(f);
                }
                q.repost(id, m, avail);
            }
        }
    }
    pool.free_bulk(&mut fresh);
    match frame {
        Some(mut f) if have && !bad => {
            f.set_port(q.port);
            c.bytes += f.pkt_len() as u64;
            Some(f)
        }
        f => {
            if have {
                c.errors += 1;
            } else {
                c.nombuf += 1;
            }
            if let Some(f) = f {
                pool.free(f);
            }
            None
        }
    }
}

/// One transmit virtqueue.
///
/// A packet of k segments takes k consecutive descriptors (from `QueueHdr::desc`), chained
/// with NEXT, and one available-ring slot naming the first; the software ring holds the packet
/// at its first descriptor and [`CHAINED`] at the others. A descriptor is filled again only
/// once the device gave its packet back, so a device that completes out of order slows the
/// queue down and never makes it overwrite a descriptor in flight.
pub(crate) struct TxVq {
    pub(crate) q: Vq,
}

/// Used elements a receive burst looks ahead (prefetching their buffers).
const AHEAD: u16 = 4;

/// Software-ring mark of a transmit descriptor that continues a chain (no mbuf header is at
/// offset 1: they are 64-byte aligned).
const CHAINED: u64 = 1;
/// Descriptor flag: the chain goes on at `next`.
const VIRTQ_DESC_F_NEXT: u16 = 1;

impl TxVq {
    /// Frees what the device has sent: each used element names a packet's first descriptor;
    /// its packet (every segment) goes back, and the chain's other descriptors are free again.
    fn clean(&mut self, pool: &mut Mempool) {
        let q = &self.q;
        let (_, mut last) = q.indices();
        let used = q.used_idx();
        if used.wrapping_sub(last) as u32 > q.n {
            return;
        }
        while last != used {
            let (id, _) = q.used_elem(last);
            last = last.wrapping_add(1);
            if id >= q.n {
                continue;
            }
            let off = q.sw_get(id);
            // Not a packet's first descriptor (a device naming a chain's middle): nothing.
            let Some(m) = Mbuf::from_offset(&q.shm, ShmOffset(off)).filter(|_| off > CHAINED) else { continue };
            q.sw_set(id, 0);
            for j in 1..u32::from(m.nb_segs()) {
                let d = (id + j) % q.n;
                if q.sw_get(d) == CHAINED {
                    q.sw_set(d, 0);
                }
            }
            pool.free(m);
        }
        q.h().clean.store(u32::from(last), Ordering::Release);
    }

    /// Sends from the front of `pkts`: the 12-byte header prepended to the first segment
    /// (zeroed: no offloads), one descriptor per segment chained with NEXT, the available index
    /// published once, one notify. Returns how many were taken (unsendable ones are dropped and
    /// counted).
    #[inline]
    pub(crate) fn burst<D: Doorbell>(&mut self, bar: &D, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize {
        self.clean(pool);
        let q = &self.q;
        let (mut avail, _) = q.indices();
        let mut pos = q.h().desc.load(Ordering::Relaxed) % q.n;
        let (mut taken, mut bytes, mut errors) = (0usize, 0u64, 0u64);
        let mut posted = false;
        for slot in pkts.iter_mut() {
            let Some(m) = slot.as_ref() else { break };
            let k = u32::from(m.nb_segs());
            // Every descriptor it needs given back by the device (else the ring is full): one
            // for a chain longer than the ring (copied into one buffer below).
            let need = if k > q.n { 1 } else { k };
            if (0..need).any(|j| q.sw_get((pos + j) % q.n) != 0) {
                break;
            }
            let Some(mut m) = slot.take() else { break };
            taken += 1;
            if k > q.n || m.headroom() < NET_HDR_LEN {
                // Longer than the ring, or no room for the header: one buffer of ours, or dropped.
                match pool.linearize(m) {
                    Ok(one) => m = one,
                    Err(m) => {
                        errors += 1;
                        pool.free(m);
                        continue;
                    }
                }
            }
            let len = m.pkt_len();
            if len == 0 || m.prepend(NET_HDR_LEN).map(|h| h.fill(0)).is_none() {
                errors += 1;
                pool.free(m);
                continue;
            }
            // A copy has one descriptor: never more than were checked free.
            let k = u32::from(m.nb_segs());
            debug_assert!(k <= need);
            for (j, (iova, l)) in (0u32..).zip(m.seg_iovas()) {
                let (id, more) = ((pos + j) % q.n, j + 1 < k);
                let next = if more { ((pos + j + 1) % q.n) as u16 } else { 0 };
                q.write_desc_next(id, iova.0, l as u32, if more { VIRTQ_DESC_F_NEXT } else { 0 }, next);
                if j > 0 {
                    q.sw_set(id, CHAINED);
                }
            }
            q.sw_set(pos, m.into_offset().0);
            q.set_avail_slot(avail, pos as u16);
            avail = avail.wrapping_add(1);
            pos = (pos + k) % q.n;
            bytes += len as u64;
            posted = true;
        }
        if posted {
            q.h().desc.store(pos, Ordering::Relaxed);
            q.publish_avail(avail);
            if q.device_wants_notify() {
                q.notify(bar);
            }
        }
        q.h().count((taken as u64).saturating_sub(errors), bytes, errors, 0);
        taken
    }
}

/// `PortQueue` for both virtqueue kinds: the header, draining every buffer the software ring
/// holds, and the inherent burst.
macro_rules! vq_port_queue {
    ($($t:ty),+) => {$(
        impl crate::pci::PortQueue for $t {
            fn hdr(&self) -> &QueueHdr {
                self.q.h()
            }
            fn drain(&mut self, pool: &mut Mempool) {
                self.q.drain(pool)
            }
            #[inline]
            fn burst(&mut self, bar: &Bar, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize {
                <$t>::burst(self, bar, pool, pkts)
            }
        }
    )+};
}
vq_port_queue!(RxVq, TxVq);

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::mem::{ShmPlacement, IOVA_BASE};

    /// A device written for these tests: it takes available descriptors in order, writes the
    /// bytes given for each at the descriptor's address and puts them in the used ring.
    struct Dev<'a> {
        shm: &'a Shm,
        avail: u16,
        used: u16,
    }

    impl Dev<'_> {
        /// Fills the next available descriptor with `bytes`; its id.
        fn put(&mut self, q: &Vq, bytes: &[u8]) -> u32 {
            // SAFETY: an available-ring slot < n, a descriptor < n and a used element < n, all
            // inside the zone; the test's one thread plays the device.
            unsafe {
                let slot = q.lay.avail + 4 + 2 * u64::from(u32::from(self.avail) % q.n);
                let id = u32::from(u16::from_le(q.at::<u16>(slot).read_volatile()));
                let d = q.lay.desc + 16 * u64::from(id);
                let addr = u64::from_le(q.at::<u64>(d).read_volatile());
                let len = u32::from_le(q.at::<u32>(d + 8).read_volatile());
                assert!(bytes.len() as u32 <= len, "{} bytes into a {len}-byte descriptor", bytes.len());
                let p = self.shm.ptr(ShmOffset(addr - IOVA_BASE), u64::from(len)).unwrap();
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.as_ptr(), bytes.len());
                let e = q.lay.used + 4 + 8 * u64::from(u32::from(self.used) % q.n);
                q.at::<u32>(e).write_volatile(id.to_le());
                q.at::<u32>(e + 4).write_volatile((bytes.len() as u32).to_le());
                self.avail = self.avail.wrapping_add(1);
                self.used = self.used.wrapping_add(1);
                id
            }
        }

        /// Makes the used elements so far visible to the driver.
        fn publish(&self, q: &Vq) {
            fence(Ordering::Release);
            // SAFETY: used.idx inside the zone.
            unsafe { q.at::<u16>(q.lay.used + 2).write_volatile(self.used.to_le()) }
        }

        /// A frame over descriptors of `room` bytes: the 12-byte header with `num_buffers` in
        /// front of `payload`, split descriptor by descriptor. How many it took.
        fn frame(&mut self, q: &Vq, payload: &[u8], room: usize) -> u16 {
            let mut all = vec![0u8; NET_HDR_LEN];
            all.extend_from_slice(payload);
            let nbuf = all.len().div_ceil(room) as u16;
            all[10..12].copy_from_slice(&nbuf.to_le_bytes());
            for chunk in all.chunks(room) {
                self.put(q, chunk);
            }
            nbuf
        }
    }

    fn rxq(n: u32, bufs: u32) -> (tempfile::TempDir, Arc<Shm>, Mempool, RxVq) {
        let d = tempfile::tempdir().unwrap();
        let p = ShmPlacement { path: d.path().join("mem"), hugepages: false, page_size: 4096 };
        let shm = Arc::new(Shm::create(p, 16).unwrap());
        let mut pool = Mempool::create(&shm, "rx", bufs, 256, 0).unwrap();
        let q = Vq::open_with(&shm, "rxq".into(), 0, n, Bell::Trapped(0), PortId(0), true).unwrap();
        let mut rx = RxVq { q, mergeable: true };
        rx.fill(&mut pool).unwrap();
        (d, shm, pool, rx)
    }

    fn bytes_of(m: &Mbuf) -> Vec<u8> {
        let mut v = vec![0; m.pkt_len()];
        m.copy_to(&mut v).unwrap();
        v
    }

    /// Descriptor room of a posted buffer: the header and the data room.
    fn room(pool: &mut Mempool) -> usize {
        let m = pool.alloc().unwrap();
        let r = m.buf_len() - m.headroom() + NET_HDR_LEN;
        pool.free(m);
        r
    }

    /// What the device reads of available slot `slot`: the head descriptor, and the bytes of
    /// the chain from it (following NEXT), with the descriptor ids.
    fn read_chain(q: &Vq, shm: &Shm, slot: u16) -> (u32, Vec<u8>, Vec<u32>) {
        // SAFETY: slots and descriptors < n inside the zone; buffers checked in the mapping.
        unsafe {
            let s = q.lay.avail + 4 + 2 * u64::from(u32::from(slot) % q.n);
            let head = u32::from(u16::from_le(q.at::<u16>(s).read_volatile()));
            let (mut id, mut bytes, mut ids) = (head, Vec::new(), Vec::new());
            loop {
                let d = q.lay.desc + 16 * u64::from(id);
                let addr = u64::from_le(q.at::<u64>(d).read_volatile());
                let len = u32::from_le(q.at::<u32>(d + 8).read_volatile()) as usize;
                let flags = u16::from_le(q.at::<u16>(d + 12).read_volatile());
                let next = u16::from_le(q.at::<u16>(d + 14).read_volatile());
                let p = shm.ptr(ShmOffset(addr - IOVA_BASE), len as u64).unwrap();
                bytes.extend_from_slice(std::slice::from_raw_parts(p.as_ptr(), len));
                ids.push(id);
                if flags & VIRTQ_DESC_F_NEXT == 0 || ids.len() > q.n as usize {
                    break;
                }
                id = u32::from(next);
            }
            (head, bytes, ids)
        }
    }

    /// The device gives back the packet whose first descriptor is `id`.
    fn complete(q: &Vq, used: &mut u16, id: u32) {
        // SAFETY: a used element < n and used.idx inside the zone.
        unsafe {
            let e = q.lay.used + 4 + 8 * u64::from(u32::from(*used) % q.n);
            q.at::<u32>(e).write_volatile(id.to_le());
            q.at::<u32>(e + 4).write_volatile(0);
            *used = used.wrapping_add(1);
            fence(Ordering::Release);
            q.at::<u16>(q.lay.used + 2).write_volatile(used.to_le());
        }
    }

    #[test]
    fn chained_packets_leave_as_descriptor_chains_and_wait_for_their_descriptors() {
        let d = tempfile::tempdir().unwrap();
        let p = ShmPlacement { path: d.path().join("mem"), hugepages: false, page_size: 4096 };
        let shm = Arc::new(Shm::create(p, 16).unwrap());
        let mut pool = Mempool::create(&shm, "tx", 64, 512, 0).unwrap();
        let q = Vq::open_with(&shm, "txq".into(), 1, 8, Bell::Trapped(0), PortId(0), true).unwrap();
        let mut tx = TxVq { q };
        let pkt = |pool: &mut Mempool, seed: u8, segs: &[usize]| {
            let mut bytes = Vec::new();
            let mut head: Option<Mbuf> = None;
            for (i, &n) in segs.iter().enumerate() {
                let part: Vec<u8> = (0..n).map(|j| seed.wrapping_add((i * 31 + j) as u8)).collect();
                let mut m = pool.alloc().unwrap();
                assert!(m.copy_from(&part));
                bytes.extend_from_slice(&part);
                match head.as_mut() {
                    None => head = Some(m),
                    Some(h) => assert!(h.chain(m).is_ok()),
                }
            }
            (head.unwrap(), bytes)
        };
        let wire = |b: &[u8]| [vec![0u8; NET_HDR_LEN], b.to_vec()].concat();
        let (a, ab) = pkt(&mut pool, 1, &[100, 200, 50]);
        let (b, bb) = pkt(&mut pool, 2, &[60]);
        let (c, cb) = pkt(&mut pool, 3, &[10, 20, 30]);
        let (e, eb) = pkt(&mut pool, 4, &[40, 40, 40]);
        let mut pkts = [Some(a), Some(b), Some(c), Some(e)];
        // 3 + 1 + 3 descriptors of 8: the fourth packet's three do not fit.
        assert_eq!(tx.burst(&NoBar, &mut pool, &mut pkts), 3);
        assert!(pkts[3].is_some(), "left with the caller");
        let (h0, b0, i0) = read_chain(&tx.q, &shm, 0);
        let (h1, b1, i1) = read_chain(&tx.q, &shm, 1);
        let (h2, b2, i2) = read_chain(&tx.q, &shm, 2);
        assert_eq!((h0, i0), (0, vec![0, 1, 2]));
        assert_eq!((h1, i1), (3, vec![3]));
        assert_eq!((h2, i2), (4, vec![4, 5, 6]));
        assert_eq!((b0, b1, b2), (wire(&ab), wire(&bb), wire(&cb)), "header and segments, in order");
        let mut used = 0u16;
        // Out of order: the one-descriptor packet first, then a chain's middle (nothing), so
        // descriptors 7, 0 and 1 are not all free yet.
        complete(&tx.q, &mut used, 3);
        complete(&tx.q, &mut used, 1);
        let mut rest = [pkts[3].take()];
        assert_eq!(tx.burst(&NoBar, &mut pool, &mut rest), 0, "its descriptors are still in flight");
        complete(&tx.q, &mut used, 0);
        assert_eq!(tx.burst(&NoBar, &mut pool, &mut rest), 1, "7, 0 and 1 free: the chain wraps");
        let (h3, b3, i3) = read_chain(&tx.q, &shm, 3);
        assert_eq!((h3, i3, b3), (7, vec![7, 0, 1], wire(&eb)));
        complete(&tx.q, &mut used, 4);
        complete(&tx.q, &mut used, 7);
        assert_eq!(tx.burst(&NoBar, &mut pool, &mut [None]), 0);
        let c = tx.q.h().counters();
        assert_eq!((c.pkts, c.errors), (4, 0));
        assert_eq!(pool.avail_count(), 64, "every segment back once its packet came back");
    }

    #[test]
    fn a_merged_frame_dropped_for_want_of_buffers_leaves_its_descriptors_as_fresh_ones() {
        let (_d, shm, mut pool, mut rx) = rxq(4, 12);
        let room = room(&mut pool);
        let mut dev = Dev { shm: &shm, avail: 0, used: 0 };
        let first: Vec<u8> = (0..2 * room as u32 + 40).map(|i| i as u8).collect();
        assert_eq!(dev.frame(&rx.q, &first, room), 3);
        dev.publish(&rx.q);
        // No fresh buffer to be had: the frame is dropped, its three descriptors posted again.
        let held: Vec<Mbuf> = std::iter::from_fn(|| pool.alloc()).collect();
        let mut pkts: [Option<Mbuf>; 8] = Default::default();
        assert_eq!(rx.burst(&NoBar, &mut pool, &mut pkts), 0);
        assert_eq!(rx.q.h().counters().nombuf, 1);
        for m in held {
            pool.free(m);
        }
        // The next frame lies over descriptor 3 and the two first reposted ones (0 and 1, the
        // second a later buffer of the dropped frame): it arrives byte for byte.
        let mut dev = Dev { shm: &shm, avail: 3, used: 3 };
        let second: Vec<u8> = (0..2 * room as u32 + 7).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(dev.frame(&rx.q, &second, room), 3);
        dev.publish(&rx.q);
        assert_eq!(rx.burst(&NoBar, &mut pool, &mut pkts), 1);
        let m = pkts[0].take().unwrap();
        assert_eq!(m.nb_segs(), 3);
        assert_eq!(bytes_of(&m), second);
        assert_eq!(rx.q.h().counters().errors, 0);
        pool.free(m);
    }

    #[test]
    fn a_frame_over_more_buffers_than_a_chain_holds_is_dropped_whole() {
        let n = 256u32;
        let (_d, shm, mut pool, mut rx) = rxq(n, n + 64);
        let nbuf = MAX_SEGS + 2;
        let mut dev = Dev { shm: &shm, avail: 0, used: 0 };
        let mut head = vec![0u8; NET_HDR_LEN + 100];
        head[10..12].copy_from_slice(&nbuf.to_le_bytes());
        dev.put(&rx.q, &head);
        // Its later buffers hold frame bytes that would pass for one-buffer frames' headers.
        let mut later = vec![0u8; 100];
        later[10..12].copy_from_slice(&1u16.to_le_bytes());
        for _ in 1..100 {
            dev.put(&rx.q, &later);
        }
        dev.publish(&rx.q);
        let mut pkts: [Option<Mbuf>; 32] = Default::default();
        // Not all of it used yet: nothing taken.
        assert_eq!(rx.burst(&NoBar, &mut pool, &mut pkts), 0);
        assert_eq!(rx.q.h().counters().errors, 0);
        for _ in 100..nbuf {
            dev.put(&rx.q, &later);
        }
        let good: Vec<u8> = (0..60u8).collect();
        assert_eq!(dev.frame(&rx.q, &good, 2048), 1);
        dev.publish(&rx.q);
        assert_eq!(rx.burst(&NoBar, &mut pool, &mut pkts), 1);
        let m = pkts[0].take().unwrap();
        assert_eq!(bytes_of(&m), good);
        pool.free(m);
        let c = rx.q.h().counters();
        assert_eq!((c.pkts, c.errors), (1, 1));
        // Made available again, in order: the dropped frame's descriptors, then the good one's.
        let q = &rx.q;
        assert_eq!(q.h().next.load(Ordering::Relaxed), n + u32::from(nbuf) + 1);
        for j in 0..=u32::from(nbuf) {
            // SAFETY: an available-ring slot < n inside the zone.
            let id = unsafe { q.at::<u16>(q.lay.avail + 4 + 2 * u64::from((n + j) % n)).read_volatile() };
            assert_eq!(u32::from(u16::from_le(id)), j, "available slot {}", n + j);
        }
        // Every descriptor still holds a buffer, and the rest are in the pool.
        assert!((0..n).all(|i| rx.q.sw_get(i) != 0));
        let free: Vec<Mbuf> = std::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(free.len(), 64);
        for m in free {
            pool.free(m);
        }
    }

    #[test]
    fn layout_follows_the_spec_alignments() {
        let l = Layout::new(256);
        assert_eq!(l.desc, 128);
        assert_eq!(l.avail, 128 + 16 * 256);
        assert_eq!(l.used % 4, 0);
        assert!(l.used >= l.avail + 6 + 2 * 256);
        assert_eq!(l.sw % 8, 0);
        assert!(l.sw >= l.used + 6 + 8 * 256);
        assert_eq!(l.len, l.sw + 8 * 256);
    }
}
