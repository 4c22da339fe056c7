//! 82599 data path: advanced receive and transmit descriptors (datasheet 7.1.6, 7.2.3), burst
//! receive and transmit.
//!
//! Each queue is one memzone the primary reserves (`ixgbe_<port>_rxq<q>`, `ixgbe_<port>_txq<q>`):
//!
//! ```text
//! offset 0     QueueHdr (128 bytes): magic, ring size, next descriptor to clean/fill, counters
//! offset 128   descriptor ring: nb_desc x 16 bytes (128-byte aligned, as RDBAL/TDBAL require)
//! then         software ring: nb_desc x u64, the mbuf (shared-memory offset) posted to each descriptor
//! ```
//!
//! Everything a queue needs to continue lives there, so whichever process runs a queue continues
//! where the last one stopped (one process per queue at a time, as in DPDK). A process only adds
//! its own view: pointers into its mapping, its doorbell pointer, its mempool handle with its cache.
//!
//! Descriptors are written by the device (another process, or a NIC): every field read from one is
//! untrusted. Lengths are bounded by the buffer size, indices by the ring size.
//!
//! Receive refills lag one descriptor behind what was consumed (see `RxQueue::burst`); transmit
//! asks for a write-back on every 32nd descriptor only and frees buffers 32 at a time
//! ([`TX_RS_THRESH`]), which halves the device's descriptor writes against RS on every one.

use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use super::regs::*;

/// Size of one advanced descriptor.
pub const DESC_LEN: u64 = 16;
/// Bytes before the descriptor ring in a queue zone.
pub const HDR_LEN: u64 = 128;
/// RS is set on every 32nd transmit descriptor (those whose index is 31 mod 32): the device
/// writes back DD for those only, and software frees buffers 32 at a time (DPDK's tx_rs_thresh).
/// Ring sizes are multiples of it.
pub const TX_RS_THRESH: u32 = 32;
/// Largest frame one transmit descriptor carries (DTALEN is 16 bits; we send single-buffer frames).
pub const MAX_TX_LEN: usize = 16 * 1024 - 1;
/// Bursts that wait for a done descriptor's length before dropping it as bad.
pub const MAX_INCOMPLETE_POLLS: u32 = 4096;
const QUEUE_MAGIC: u64 = 0x4958_4742_5151_0001;

/// Shared state of one queue, at the start of its memzone.
#[repr(C, align(128))]
pub struct QueueHdr {
    magic: AtomicU64,
    nb_desc: u32,
    _r: u32,
    /// RX: next descriptor to check for DD. TX: next descriptor to fill (the tail).
    next: AtomicU32,
    /// TX: next descriptor to clean (oldest in flight). RX: next descriptor to refill.
    clean: AtomicU32,
    /// Packets received / sent by software on this queue.
    pkts: AtomicU64,
    /// Bytes received / sent.
    bytes: AtomicU64,
    /// RX: frames refused (error bits, no EOP, length over the buffer). TX: unsendable mbufs dropped.
    errors: AtomicU64,
    /// RX: refills that found the pool empty.
    nombuf: AtomicU64,
}
const _: () = assert!(std::mem::size_of::<QueueHdr>() as u64 == HDR_LEN);

/// Bytes of a queue zone with `n` descriptors.
pub fn zone_len(n: u32) -> u64 {
    HDR_LEN + u64::from(n) * (DESC_LEN + 8)
}

/// The memzone name of a queue.
pub fn zone_name(port: u16, rx: bool, q: u16) -> String {
    format!("ixgbe_{port}_{}q{q}", if rx { "rx" } else { "tx" })
}

/// Where the tail register of a queue is written.
#[derive(Clone, Copy)]
enum Doorbell {
    /// In a sparse-mmapped page: a volatile store.
    Mapped(NonNull<u32>),
    /// Trapped: a register write through the transport (kernel VFIO without mmap).
    Trapped(u64),
}

impl Doorbell {
    fn new(bar: &Bar, off: u64) -> Doorbell {
        match bar.mapped_ptr(off).and_then(NonNull::new) {
            Some(p) => Doorbell::Mapped(p),
            None => Doorbell::Trapped(off),
        }
    }

    #[inline]
    fn ring(self, bar: &Bar, v: u32) {
        // Descriptors and the software ring must be visible before the device sees the tail.
        fence(Ordering::Release);
        match self {
            // SAFETY: the pointer came from `Bar::mapped_ptr`, 4-byte aligned inside a mapping that
            // the `Bar` owns; the port keeps the `Bar` alive as long as its queues.
            Doorbell::Mapped(p) => unsafe { p.as_ptr().write_volatile(v.to_le()) },
            Doorbell::Trapped(off) => bar.write32(off, v),
        }
    }
}

/// A process's view of one queue's memzone.
struct QueueView {
    hdr: NonNull<QueueHdr>,
    ring: NonNull<u8>,
    sw: NonNull<u64>,
    n: u32,
    /// IOVA of the descriptor ring.
    ring_iova: u64,
    zone: String,
}

impl QueueView {
    /// Maps the view onto zone `name` (reserving it when `create`).
    fn open(shm: &Shm, name: &str, n: u32, create: bool) -> Result<QueueView, String> {
        let z =
            if create { shm.reserve(name, zone_len(n), 4096) } else { shm.lookup(name) }.map_err(|e| e.to_string())?;
        if z.len < zone_len(n) {
            return Err(format!("memzone {name} is {} bytes, {} needed", z.len, zone_len(n)));
        }
        let base = shm.ptr(z.offset, zone_len(n)).ok_or_else(|| format!("memzone {name} outside shared memory"))?;
        if !(base.as_ptr() as usize).is_multiple_of(128) {
            return Err(format!("memzone {name} is not 128-byte aligned"));
        }
        let hdr = base.cast::<QueueHdr>();
        // SAFETY: the zone holds at least zone_len(n) bytes from `base` (checked by `ptr`), and
        // `base` is 128-aligned: HDR_LEN + n * 16 is inside, 8-aligned for the software ring.
        let (ring, sw) = unsafe {
            (NonNull::new_unchecked(base.as_ptr().add(HDR_LEN as usize)), {
                let p = base.as_ptr().add((HDR_LEN + u64::from(n) * DESC_LEN) as usize);
                NonNull::new_unchecked(p.cast::<u64>())
            })
        };
        let v = QueueView { hdr, ring, sw, n, ring_iova: ShmOffset(z.offset.0 + HDR_LEN).iova().0, zone: name.into() };
        if create {
            // SAFETY: a fresh, zeroed zone that nobody else knows yet.
            unsafe {
                let h = hdr.as_ptr();
                std::ptr::addr_of_mut!((*h).nb_desc).write(n);
                // Ring memory starts all-ones (4.6.7.1, as ixy does) until descriptors are written.
                std::ptr::write_bytes(ring.as_ptr(), 0xff, (u64::from(n) * DESC_LEN) as usize);
            }
            v.h().magic.store(QUEUE_MAGIC, Ordering::Release);
        } else {
            let h = v.h();
            // SAFETY: plain read of a field written once before the magic was published.
            let nd = unsafe { std::ptr::addr_of!((*hdr.as_ptr()).nb_desc).read() };
            if h.magic.load(Ordering::Acquire) != QUEUE_MAGIC || nd != n {
                return Err(format!("memzone {name} holds no ixgbe queue of {n} descriptors"));
            }
        }
        Ok(v)
    }

    #[inline]
    fn h(&self) -> &QueueHdr {
        // SAFETY: hdr points at a QueueHdr inside a mapping that is never unmapped; its mutable
        // fields are atomics.
        unsafe { self.hdr.as_ref() }
    }

    /// Pointer to descriptor `i` (callers keep `i < n`).
    #[inline]
    fn desc(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.n);
        // SAFETY: i < n, the ring holds n descriptors.
        unsafe { self.ring.as_ptr().add(i as usize * DESC_LEN as usize) }
    }

    #[inline]
    fn sw_get(&self, i: u32) -> u64 {
        // SAFETY: i < n (callers), the software ring holds n u64s, 8-aligned; one process runs a
        // queue at a time, so this is not written concurrently.
        unsafe { self.sw.as_ptr().add(i as usize).read_volatile() }
    }

    #[inline]
    fn sw_set(&self, i: u32, v: u64) {
        // SAFETY: as in `sw_get`.
        unsafe { self.sw.as_ptr().add(i as usize).write_volatile(v) }
    }

    #[inline]
    fn next(&self, i: u32) -> u32 {
        if i + 1 == self.n {
            0
        } else {
            i + 1
        }
    }
}

/// Reads the little-endian u32 at byte `off` of a descriptor, as the device left it.
#[inline]
fn desc_read32(d: *mut u8, off: usize) -> u32 {
    // SAFETY: `d` points at a 16-byte descriptor (16-aligned); off is 8 or 12: an aligned u32
    // inside it. Volatile: the device writes it from another process.
    u32::from_le(unsafe { d.add(off).cast::<u32>().read_volatile() })
}

/// Writes a descriptor's two 64-bit halves (low half first).
#[inline]
fn desc_write(d: *mut u8, lo: u64, hi: u64) {
    // SAFETY: `d` points at a 16-byte, 16-aligned descriptor this driver owns at this moment (not
    // handed to the device: the tail has not passed it).
    unsafe {
        d.cast::<u64>().write_volatile(lo.to_le());
        d.add(8).cast::<u64>().write_volatile(hi.to_le());
    }
}

/// Counters of one queue as software saw them.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueCounters {
    /// Packets.
    pub pkts: u64,
    /// Bytes.
    pub bytes: u64,
    /// Errors (see [`QueueHdr`]).
    pub errors: u64,
    /// Allocation failures (RX).
    pub nombuf: u64,
}

fn counters(v: &QueueView) -> QueueCounters {
    let h = v.h();
    QueueCounters {
        pkts: h.pkts.load(Ordering::Relaxed),
        bytes: h.bytes.load(Ordering::Relaxed),
        errors: h.errors.load(Ordering::Relaxed),
        nombuf: h.nombuf.load(Ordering::Relaxed),
    }
}

fn add(a: &AtomicU64, n: u64) {
    // One process runs a queue at a time: a plain add, no locked instruction.
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// One receive queue, as this process sees it.
pub(super) struct RxQueue {
    v: QueueView,
    bell: Doorbell,
    pool: Mempool,
    shm: Arc<Shm>,
    /// Bytes the device may write into one buffer (SRRCTL.BSIZEPACKET).
    buf_size: usize,
    port: u16,
    /// Bursts in a row that found the next descriptor done but without a length.
    incomplete_polls: u32,
}

// SAFETY: the raw pointers point into the process's shared-memory and BAR mappings, which outlive
// the queue; the queue is used by one thread at a time (&mut self on the data path).
unsafe impl Send for RxQueue {}

impl RxQueue {
    /// Reserves (primary) or finds (secondary) queue `q`'s zone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        pool: Mempool,
        port: u16,
        q: u16,
        n: u32,
        buf_size: usize,
        create: bool,
    ) -> Result<RxQueue, String> {
        let v = QueueView::open(shm, &zone_name(port, true, q), n, create)?;
        let bell = Doorbell::new(bar, rdt(q.into()));
        Ok(RxQueue { v, bell, pool, shm: shm.clone(), buf_size, port, incomplete_polls: 0 })
    }

    /// IOVA and byte length of the descriptor ring.
    pub(super) fn ring(&self) -> (u64, u32) {
        (self.v.ring_iova, self.v.n * DESC_LEN as u32)
    }

    /// Posts a fresh buffer to every descriptor (4.6.7.1, before enabling the queue). Primary.
    pub(super) fn fill(&mut self) -> Result<(), String> {
        for i in 0..self.v.n {
            let m = self
                .pool
                .alloc()
                .ok_or_else(|| format!("buffer pool {} ran out filling {}", self.pool.name(), self.v.zone))?;
            desc_write(self.v.desc(i), m.data_iova().0, 0);
            self.v.sw_set(i, m.into_offset().0);
        }
        self.v.h().next.store(0, Ordering::Relaxed);
        self.v.h().clean.store(0, Ordering::Release);
        Ok(())
    }

    /// Returns every posted buffer to its pool (the queue is disabled). Primary at release.
    pub(super) fn drain(&mut self) {
        for i in 0..self.v.n {
            let off = self.v.sw_get(i);
            self.v.sw_set(i, 0);
            if let Some(m) = Mbuf::from_offset(&self.shm, ShmOffset(off)).filter(|_| off != 0) {
                self.pool.free(m);
            }
        }
    }

    pub(super) fn zone(&self) -> &str {
        &self.v.zone
    }

    pub(super) fn counters(&self) -> QueueCounters {
        counters(&self.v)
    }

    pub(super) fn reset_counters(&self) {
        let h = self.v.h();
        for c in [&h.pkts, &h.bytes, &h.errors, &h.nombuf] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Receives into the empty slots at the front of `pkts` (7.1.6: DD, EOP, length from the
    /// write-back), then refills consumed descriptors with fresh buffers and writes RDT once.
    ///
    /// Refill lags by one: the newest consumed descriptor is refilled only once a later one has
    /// been seen done (next burst or later), so a device that lands part of its write-back after
    /// DD (lab-nic does, see the tests) cannot overwrite a fresh buffer address. RDT stays at the
    /// last refilled descriptor, so the device never owns a descriptor without a buffer.
    #[inline]
    pub(super) fn burst(&mut self, bar: &Bar, pkts: &mut [Option<Mbuf>]) -> usize {
        let n = self.v.n;
        let h = self.v.h();
        let (mut i, mut r) = (h.next.load(Ordering::Acquire), h.clean.load(Ordering::Acquire));
        if i >= n || r >= n {
            // Corrupt shared state: never index out of the ring.
            return 0;
        }
        let (mut got, mut bytes, mut errors) = (0usize, 0u64, 0u64);
        // Consumed but not refilled: [r, i). Never let it grow to the whole ring.
        let mut pending = (i + n - r) % n;
        while got < pkts.len() && pending + 1 < n {
            let d = self.v.desc(i);
            let status = desc_read32(d, 8);
            if status & RXD_STAT_DD == 0 {
                break;
            }
            // Read the rest of the write-back only after DD (the device writes DD last).
            fence(Ordering::Acquire);
            let len = (desc_read32(d, 12) & 0xffff) as usize;
            let mut bad = status & RXD_STAT_EOP == 0 || status & RXD_ERR_RXE != 0 || len > self.buf_size;
            if len == 0 && !bad {
                // DD without a length: the write-back is not complete yet (lab-nic has been seen
                // to publish DD before the length). A good frame is never empty: look again later,
                // but not forever: a device that leaves it so has written a bad descriptor.
                self.incomplete_polls += 1;
                if self.incomplete_polls <= MAX_INCOMPLETE_POLLS {
                    break;
                }
                bad = true;
            }
            self.incomplete_polls = 0;
            let off = self.v.sw_get(i);
            if bad {
                // The frame is dropped; its buffer stays in the software ring and is posted again.
                errors += 1;
            } else if let Some(mut m) = Mbuf::from_offset(&self.shm, ShmOffset(off)) {
                if !m.set_len(len) {
                    errors += 1;
                }
                m.set_port(self.port);
                self.v.sw_set(i, 0);
                bytes += len as u64;
                pkts[got] = Some(m);
                got += 1;
            } else {
                // No buffer recorded for this descriptor (damaged shared state): drop the frame,
                // the refill below posts a fresh buffer.
                errors += 1;
                self.v.sw_set(i, 0);
            }
            i = self.v.next(i);
            pending += 1;
        }
        h.next.store(i, Ordering::Release);

        // Refill [r, i - 1): everything consumed except the newest.
        let mut nombuf = 0u64;
        let mut refilled = 0u32;
        while pending > 1 {
            let off = self.v.sw_get(r);
            let m = if off == 0 {
                // A fresh buffer (alloc resets it).
                let Some(m) = self.pool.alloc() else {
                    nombuf += 1;
                    break;
                };
                m
            } else {
                // The buffer of a dropped frame, posted again.
                let Some(mut m) = Mbuf::from_offset(&self.shm, ShmOffset(off)) else {
                    // Not a buffer: forget it and retry this slot with a fresh one next time.
                    self.v.sw_set(r, 0);
                    break;
                };
                m.reset();
                m
            };
            desc_write(self.v.desc(r), m.data_iova().0, 0);
            self.v.sw_set(r, m.into_offset().0); // owned by the software ring
            r = self.v.next(r);
            pending -= 1;
            refilled += 1;
        }
        if refilled > 0 {
            h.clean.store(r, Ordering::Release);
            // RDT = last refilled descriptor: the device owns [RDH, RDT).
            self.bell.ring(bar, if r == 0 { n - 1 } else { r - 1 });
        }
        if got > 0 {
            add(&h.pkts, got as u64);
            add(&h.bytes, bytes);
        }
        if errors > 0 {
            add(&h.errors, errors);
        }
        if nombuf > 0 {
            add(&h.nombuf, nombuf);
        }
        got
    }
}

/// One transmit queue, as this process sees it.
pub(super) struct TxQueue {
    v: QueueView,
    bell: Doorbell,
    pool: Mempool,
    shm: Arc<Shm>,
}

// SAFETY: as for RxQueue.
unsafe impl Send for TxQueue {}

impl TxQueue {
    /// Reserves (primary) or finds (secondary) queue `q`'s zone.
    pub(super) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        pool: Mempool,
        port: u16,
        q: u16,
        n: u32,
        create: bool,
    ) -> Result<TxQueue, String> {
        let v = QueueView::open(shm, &zone_name(port, false, q), n, create)?;
        if create {
            v.h().next.store(0, Ordering::Relaxed);
            v.h().clean.store(0, Ordering::Release);
        }
        Ok(TxQueue { v, bell: Doorbell::new(bar, tdt(q.into())), pool, shm: shm.clone() })
    }

    pub(super) fn ring(&self) -> (u64, u32) {
        (self.v.ring_iova, self.v.n * DESC_LEN as u32)
    }

    pub(super) fn zone(&self) -> &str {
        &self.v.zone
    }

    pub(super) fn counters(&self) -> QueueCounters {
        counters(&self.v)
    }

    pub(super) fn reset_counters(&self) {
        let h = self.v.h();
        for c in [&h.pkts, &h.bytes, &h.errors, &h.nombuf] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Frees every buffer still in flight (the queue is disabled). Primary at release.
    pub(super) fn drain(&mut self) {
        let h = self.v.h();
        let (mut c, t) = (h.clean.load(Ordering::Acquire), h.next.load(Ordering::Acquire));
        if c >= self.v.n || t >= self.v.n {
            return;
        }
        while c != t {
            let off = self.v.sw_get(c);
            self.v.sw_set(c, 0);
            if let Some(m) = Mbuf::from_offset(&self.shm, ShmOffset(off)).filter(|_| off != 0) {
                self.pool.free(m);
            }
            c = self.v.next(c);
        }
        h.clean.store(t, Ordering::Release);
    }

    /// Frees sent buffers in batches of [`TX_RS_THRESH`]: a batch is done when the device wrote DD
    /// into its last descriptor, the one that carries RS (7.2.3.2.4, 7.2.3.5.1).
    #[inline]
    fn clean(&mut self, tail: u32) -> u32 {
        let h = self.v.h();
        let n = self.v.n;
        let mut c = h.clean.load(Ordering::Acquire);
        if c >= n || !c.is_multiple_of(TX_RS_THRESH) {
            // Damaged shared state: do not walk it, and report the ring full so nothing in flight
            // is overwritten (the buffers are reclaimed at release).
            return self.v.next(tail);
        }
        while (tail + n - c) % n >= TX_RS_THRESH {
            let last = c + TX_RS_THRESH - 1;
            if desc_read32(self.v.desc(last), 12) & TXD_STAT_DD == 0 {
                break;
            }
            fence(Ordering::Acquire);
            for _ in 0..TX_RS_THRESH {
                if let Some(m) = Mbuf::from_offset(&self.shm, ShmOffset(self.v.sw_get(c))) {
                    self.pool.free(m);
                }
                self.v.sw_set(c, 0);
                c = self.v.next(c);
            }
        }
        h.clean.store(c, Ordering::Release);
        c
    }

    /// Sends from the front of `pkts`: one advanced data descriptor per packet (7.2.3.2.4), TDT
    /// written once. Returns how many were taken (unsendable ones are dropped and counted).
    #[inline]
    pub(super) fn burst(&mut self, bar: &Bar, pkts: &mut [Option<Mbuf>]) -> usize {
        let n = self.v.n;
        let mut tail = self.v.h().next.load(Ordering::Acquire);
        if tail >= n {
            return 0;
        }
        let clean = self.clean(tail);
        let h = self.v.h();
        let mut free = n - 1 - (tail + n - clean) % n;
        let (mut taken, mut sent, mut bytes, mut errors) = (0usize, 0u64, 0u64, 0u64);
        for slot in pkts.iter_mut() {
            if free == 0 {
                break;
            }
            let Some(m) = slot.take() else { break };
            taken += 1;
            let len = m.len();
            if len == 0 || len > MAX_TX_LEN {
                errors += 1;
                self.pool.free(m);
                continue;
            }
            let rs = if tail % TX_RS_THRESH == TX_RS_THRESH - 1 { TXD_DCMD_RS } else { 0 };
            let cmd = len as u32 | TXD_DTYP_DATA | TXD_DCMD_EOP | TXD_DCMD_IFCS | TXD_DCMD_DEXT | rs;
            let olinfo = (len as u32) << TXD_PAYLEN_SHIFT;
            desc_write(self.v.desc(tail), m.data_iova().0, u64::from(cmd) | (u64::from(olinfo) << 32));
            self.v.sw_set(tail, m.into_offset().0);
            tail = self.v.next(tail);
            free -= 1;
            sent += 1;
            bytes += len as u64;
        }
        if sent > 0 {
            h.next.store(tail, Ordering::Release);
            self.bell.ring(bar, tail);
            add(&h.pkts, sent);
            add(&h.bytes, bytes);
        }
        if errors > 0 {
            add(&h.errors, errors);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    //! The data path against a device that is plain memory (`MemDevice`): the test plays the
    //! NIC by writing descriptors into the rings, including what a broken NIC might write.
    use super::*;
    use lab_core::mem::ShmPlacement;
    use lab_vfio::fake::MemDevice;
    use lab_vfio::DeviceIo;

    const N: u32 = 64;

    struct Rig {
        _dir: tempfile::TempDir,
        shm: Arc<Shm>,
        dev: Arc<MemDevice>,
        bar: Bar,
        pool: Mempool,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let p = ShmPlacement { path: dir.path().join("mem"), hugepages: false, page_size: 4096 };
        let shm = Arc::new(Shm::create(p, 16).unwrap());
        let pool = Mempool::create(&shm, "pool", 512, 2048, 0).unwrap();
        let dev = Arc::new(MemDevice::nic("0000:00:05.0").unwrap());
        // The fake maps 0x1000..0x2000 (RX queue page): RX doorbells are stores, TX ones trapped.
        let bar = Bar::open(dev.clone() as Arc<dyn DeviceIo>, 0).unwrap();
        Rig { _dir: dir, shm, dev, bar, pool }
    }

    fn reg(dev: &MemDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.peek(0, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    /// The device's write-back of descriptor `i`: length, then status.
    fn complete(q: &QueueView, i: u32, len: u16, status: u32) {
        let d = q.desc(i);
        // SAFETY: d is a descriptor inside the test ring.
        unsafe {
            d.cast::<u64>().write_volatile(0);
            d.add(12).cast::<u32>().write_volatile(u32::from(len));
            d.add(8).cast::<u32>().write_volatile(status);
        }
    }

    fn slots(n: usize) -> Vec<Option<Mbuf>> {
        (0..n).map(|_| None).collect()
    }

    #[test]
    fn rx_drops_what_the_device_got_wrong_and_keeps_its_buffers() {
        let mut r = rig();
        let mut q = RxQueue::open(&r.shm, &r.bar, r.pool.new_handle(), 0, 0, N, 2048, true).unwrap();
        q.fill().unwrap();
        assert_eq!(r.pool.avail_count(), 512 - N);
        let ok = RXD_STAT_DD | RXD_STAT_EOP;
        complete(&q.v, 0, 60, ok);
        complete(&q.v, 1, 5000, ok); // longer than the buffer
        complete(&q.v, 2, 100, RXD_STAT_DD); // no EOP: would need a second buffer
        complete(&q.v, 3, 0, ok | RXD_ERR_RXE); // device-reported error
        complete(&q.v, 4, 0, ok); // DD, length not there yet
        let mut pkts = slots(32);
        assert_eq!(q.burst(&r.bar, &mut pkts), 1);
        assert_eq!(pkts[0].as_ref().map(Mbuf::len), Some(60));
        let c = q.counters();
        assert_eq!((c.pkts, c.bytes, c.errors), (1, 60, 3));
        // Stopped at 4; refilled 0..3 (the newest consumed one waits), RDT at the last refilled.
        assert_eq!(q.v.h().next.load(Ordering::Relaxed), 4);
        assert_eq!(q.v.h().clean.load(Ordering::Relaxed), 3);
        assert_eq!(reg(&r.dev, rdt(0)), 2);
        for i in 0..3 {
            assert_eq!(desc_read32(q.v.desc(i), 8) & RXD_STAT_DD, 0, "descriptor {i} handed back");
            assert_ne!(desc_read32(q.v.desc(i), 0), 0, "descriptor {i} has a buffer");
        }
        // The length arrives: the frame is received; refill catches up to it.
        complete(&q.v, 4, 70, ok);
        assert_eq!(q.burst(&r.bar, &mut pkts[1..]), 1);
        assert_eq!(pkts[1].as_ref().map(Mbuf::len), Some(70));
        assert_eq!(reg(&r.dev, rdt(0)), 3);
        // One buffer handed out per good frame, one fresh taken per refill: nothing lost.
        r.pool.free_bulk(&mut pkts);
        q.drain();
        drop(q);
        assert_eq!(r.pool.avail_count(), 512);
    }

    #[test]
    fn rx_drops_a_done_descriptor_whose_length_never_comes() {
        let r = rig();
        let mut q = RxQueue::open(&r.shm, &r.bar, r.pool.new_handle(), 0, 0, N, 2048, true).unwrap();
        q.fill().unwrap();
        complete(&q.v, 0, 0, RXD_STAT_DD | RXD_STAT_EOP);
        complete(&q.v, 1, 80, RXD_STAT_DD | RXD_STAT_EOP);
        let mut pkts = slots(32);
        for _ in 0..MAX_INCOMPLETE_POLLS {
            assert_eq!(q.burst(&r.bar, &mut pkts), 0);
        }
        assert_eq!(q.counters().errors, 0);
        assert_eq!(q.burst(&r.bar, &mut pkts), 1);
        assert_eq!(pkts[0].as_ref().map(Mbuf::len), Some(80));
        assert_eq!(q.counters().errors, 1);
    }

    #[test]
    fn rx_with_damaged_shared_indices_receives_nothing_and_does_not_panic() {
        let r = rig();
        let mut q = RxQueue::open(&r.shm, &r.bar, r.pool.new_handle(), 0, 0, N, 2048, true).unwrap();
        q.fill().unwrap();
        q.v.h().next.store(N + 7, Ordering::Relaxed);
        assert_eq!(q.burst(&r.bar, &mut slots(32)), 0);
        q.v.h().next.store(0, Ordering::Relaxed);
        q.v.h().clean.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(q.burst(&r.bar, &mut slots(32)), 0);
    }

    #[test]
    fn tx_with_a_damaged_clean_index_sends_nothing_rather_than_overwrite() {
        let mut r = rig();
        let mut q = TxQueue::open(&r.shm, &r.bar, r.pool.new_handle(), 0, 0, N, true).unwrap();
        q.v.h().clean.store(7, Ordering::Relaxed);
        let mut pkts = slots(4);
        assert!(r.pool.alloc_bulk(&mut pkts));
        assert_eq!(q.burst(&r.bar, &mut pkts), 0);
        assert!(pkts.iter().all(Option::is_some), "the caller keeps its packets");
        r.pool.free_bulk(&mut pkts);
    }

    #[test]
    fn tx_sets_rs_every_32nd_descriptor_and_frees_in_batches() {
        let mut r = rig();
        let mut q = TxQueue::open(&r.shm, &r.bar, r.pool.new_handle(), 0, 0, N, true).unwrap();
        let mut pkts = slots(40);
        assert!(r.pool.alloc_bulk(&mut pkts));
        for m in pkts.iter_mut().flatten() {
            m.set_len(64);
        }
        pkts[5].as_mut().map(|m| m.set_len(0)); // unsendable: dropped and counted
        assert_eq!(q.burst(&r.bar, &mut pkts), 40);
        assert!(pkts.iter().all(Option::is_none));
        assert_eq!(reg(&r.dev, tdt(0)), 39, "the trapped doorbell got the tail");
        let rs: Vec<u32> = (0..39).filter(|i| desc_read32(q.v.desc(*i), 8) & TXD_DCMD_RS != 0).collect();
        assert_eq!(rs, vec![31]);
        let cmd = desc_read32(q.v.desc(0), 8);
        assert_eq!(cmd & TXD_DTALEN_MASK, 64);
        assert_eq!(cmd & (TXD_DTYP_DATA | TXD_DCMD_EOP | TXD_DCMD_IFCS | TXD_DCMD_DEXT), TXD_DTYP_DATA | 0x2300_0000);
        assert_eq!(desc_read32(q.v.desc(0), 12) >> TXD_PAYLEN_SHIFT, 64);
        let before = r.pool.avail_count();
        // Nothing is freed until the device reports the RS descriptor done.
        assert_eq!(q.burst(&r.bar, &mut []), 0);
        assert_eq!(r.pool.avail_count(), before);
        // SAFETY: descriptor 31 is inside the ring; the test plays the device's write-back.
        unsafe { q.v.desc(31).add(12).cast::<u32>().write_volatile(TXD_STAT_DD) };
        assert_eq!(q.burst(&r.bar, &mut []), 0);
        drop(q); // flushes the queue's pool cache
        assert_eq!(r.pool.avail_count(), before + 32);
        let c = counters(&QueueView::open(&r.shm, &zone_name(0, false, 0), N, false).unwrap());
        assert_eq!((c.pkts, c.bytes, c.errors), (39, 39 * 64, 1));
    }

    #[test]
    fn zone_layout_is_as_documented() {
        assert_eq!(zone_len(512), 128 + 512 * 24);
        assert_eq!(zone_name(3, true, 1), "ixgbe_3_rxq1");
        assert_eq!(zone_name(0, false, 15), "ixgbe_0_txq15");
    }
}
