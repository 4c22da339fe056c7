//! The queue memzone both PCI drivers use and its bookkeeping: header, descriptor ring, software
//! ring, the tail doorbell, the software counters. The drivers keep what differs: descriptor
//! formats, the receive burst and the transmit clean-up rule.
//!
//! Each queue is one memzone the primary reserves (`<driver>_<port>_rxq<q>`, `<driver>_<port>_txq<q>`):
//!
//! ```text
//! offset 0     QueueHdr (128 bytes): magic, ring size, next descriptor to clean/fill, counters
//! offset 128   descriptor ring: nb_desc x DLEN bytes (128-byte aligned)
//! then         software ring: nb_desc x u64, the mbuf (shared-memory offset) posted to each descriptor
//! ```
//!
//! The layout is the same for both drivers; only the magic (and so which driver may attach a zone)
//! and the descriptor length differ. Everything a queue needs to continue lives in its zone, so
//! whichever process runs a queue continues where the last one stopped (one process per queue at a
//! time, as in DPDK). A process only adds its own view ([`Queue`]): pointers into its mapping, its
//! doorbell; the buffers come from the port's one mempool handle in this process (its cache shared
//! by all the port's queues, so transmit completions feed receive refills warm).
//!
//! Descriptors are written by the device (another process, or a NIC): every field read from one is
//! untrusted. Indices read from the header are bounded by the ring size by the callers.

use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use lab_core::ethdev::PortId;
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use crate::error::{Ctx, DriverError};

/// Bytes before the descriptor ring in a queue zone.
pub const HDR_LEN: u64 = 128;

/// Shared state of one queue, at the start of its memzone.
#[repr(C, align(128))]
pub struct QueueHdr {
    magic: AtomicU64,
    nb_desc: u32,
    /// Nonzero while the queue is stopped (`rx_queue_stop`/`tx_queue_stop`, by any process):
    /// bursts on it do nothing. A fresh zone is zeroed: queues start running.
    stopped: AtomicU32,
    /// RX: next descriptor to check for DD. TX: next descriptor to fill (the tail).
    pub(crate) next: AtomicU32,
    /// TX: next descriptor to clean (oldest in flight). RX (ixgbe): next descriptor to refill.
    pub(crate) clean: AtomicU32,
    /// Packets received / sent by software on this queue.
    pub(crate) pkts: AtomicU64,
    /// Bytes received / sent.
    pub(crate) bytes: AtomicU64,
    /// RX: frames refused (error bits, no end of packet, length over the buffer). TX: unsendable
    /// mbufs dropped.
    pub(crate) errors: AtomicU64,
    /// RX: refills that found the pool empty.
    pub(crate) nombuf: AtomicU64,
    /// Virtio TX: the next descriptor to fill (a chained packet takes several descriptors and
    /// one available-ring slot, so this runs ahead of `next`).
    pub(crate) desc: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<QueueHdr>() as u64 == HDR_LEN);

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

fn add(a: &AtomicU64, n: u64) {
    // One process runs a queue at a time: a plain add, no locked instruction.
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl QueueHdr {
    pub(crate) fn counters(&self) -> QueueCounters {
        QueueCounters {
            pkts: self.pkts.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            nombuf: self.nombuf.load(Ordering::Relaxed),
        }
    }

    /// Whether the queue is stopped.
    #[inline]
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire) != 0
    }

    /// Marks the queue stopped or running.
    pub(crate) fn set_stopped(&self, on: bool) {
        self.stopped.store(u32::from(on), Ordering::Release);
    }

    pub(crate) fn reset_counters(&self) {
        for c in [&self.pkts, &self.bytes, &self.errors, &self.nombuf] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Adds one burst's counts; counters with nothing to add are not written.
    #[inline]
    pub(crate) fn count(&self, pkts: u64, bytes: u64, errors: u64, nombuf: u64) {
        if pkts > 0 {
            add(&self.pkts, pkts);
        }
        if bytes > 0 {
            add(&self.bytes, bytes);
        }
        if errors > 0 {
            add(&self.errors, errors);
        }
        if nombuf > 0 {
            add(&self.nombuf, nombuf);
        }
    }
}

/// Bytes of a queue zone with `n` descriptors of `dlen` bytes.
pub fn zone_len(n: u32, dlen: u64) -> u64 {
    HDR_LEN + u64::from(n) * (dlen + 8)
}

/// What tells one driver's queue zones from another's.
pub(crate) struct ZoneKind {
    /// Driver name as in zone names and error texts (`ixgbe`, `i40e`).
    pub(crate) driver: &'static str,
    /// The header's magic.
    pub(crate) magic: u64,
    /// Byte a fresh descriptor ring is filled with, if any (ixgbe: all-ones, as ixy does).
    pub(crate) fresh_ring: Option<u8>,
}

impl ZoneKind {
    /// The memzone name of a queue.
    pub(crate) fn zone_name(&self, port: PortId, rx: bool, q: u16) -> String {
        format!("{}_{port}_{}q{q}", self.driver, if rx { "rx" } else { "tx" })
    }
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

/// A process's view of one queue's memzone, with descriptors of `DLEN` bytes.
pub(crate) struct QueueView<const DLEN: usize> {
    hdr: NonNull<QueueHdr>,
    ring: NonNull<u8>,
    sw: NonNull<u64>,
    n: u32,
    /// IOVA of the descriptor ring.
    ring_iova: u64,
    zone: String,
}

impl<const DLEN: usize> QueueView<DLEN> {
    /// Descriptors are 16 or 32 bytes: each one aligned to its size inside the 128-aligned ring.
    const DLEN_OK: () = assert!(DLEN == 16 || DLEN == 32);

    /// Maps the view onto zone `name` (reserving it when `create`).
    pub(crate) fn open(shm: &Shm, name: &str, n: u32, kind: &ZoneKind, create: bool) -> Result<Self, DriverError> {
        let () = Self::DLEN_OK;
        let len = zone_len(n, DLEN as u64);
        let z = if create { shm.reserve(name, len, 4096) } else { shm.lookup(name) }.ctx(format!("memzone {name}"))?;
        if z.len < len {
            return Err(DriverError::state(format!("memzone {name} is {} bytes, {len} needed", z.len)));
        }
        let base = shm
            .ptr(z.offset, len)
            .ok_or_else(|| DriverError::state(format!("memzone {name} outside shared memory")))?;
        if !(base.as_ptr() as usize).is_multiple_of(128) {
            return Err(DriverError::state(format!("memzone {name} is not 128-byte aligned")));
        }
        let hdr = base.cast::<QueueHdr>();
        // SAFETY: the zone holds `len` bytes from `base` (checked by `ptr`), `base` is 128-aligned:
        // the ring at HDR_LEN and the software ring after n descriptors are inside and 8-aligned.
        let (ring, sw) = unsafe {
            (
                NonNull::new_unchecked(base.as_ptr().add(HDR_LEN as usize)),
                NonNull::new_unchecked(base.as_ptr().add(HDR_LEN as usize + n as usize * DLEN).cast::<u64>()),
            )
        };
        let v = QueueView { hdr, ring, sw, n, ring_iova: ShmOffset(z.offset.0 + HDR_LEN).iova().0, zone: name.into() };
        if create {
            // SAFETY: a fresh, zeroed zone that nobody else knows yet.
            unsafe { std::ptr::addr_of_mut!((*hdr.as_ptr()).nb_desc).write(n) };
            if let Some(b) = kind.fresh_ring {
                // SAFETY: as above; the ring is n * DLEN bytes inside the zone.
                unsafe { std::ptr::write_bytes(ring.as_ptr(), b, n as usize * DLEN) };
            }
            v.h().magic.store(kind.magic, Ordering::Release);
        } else {
            // SAFETY: plain read of a field written once before the magic was published.
            let nd = unsafe { std::ptr::addr_of!((*hdr.as_ptr()).nb_desc).read() };
            if v.h().magic.load(Ordering::Acquire) != kind.magic || nd != n {
                return Err(DriverError::state(format!(
                    "memzone {name} holds no {} queue of {n} descriptors",
                    kind.driver
                )));
            }
        }
        Ok(v)
    }

    #[inline]
    pub(crate) fn h(&self) -> &QueueHdr {
        // SAFETY: hdr points at a QueueHdr inside a mapping that is never unmapped; its mutable
        // fields are atomics.
        unsafe { self.hdr.as_ref() }
    }

    /// Ring size in descriptors.
    #[inline]
    pub(crate) fn n(&self) -> u32 {
        self.n
    }

    /// IOVA of the descriptor ring.
    pub(crate) fn ring_iova(&self) -> u64 {
        self.ring_iova
    }

    /// The memzone's name.
    pub(crate) fn zone(&self) -> &str {
        &self.zone
    }

    /// Pointer to descriptor `i` (callers keep `i < n`).
    #[inline]
    pub(crate) fn desc(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.n);
        // SAFETY: i < n, the ring holds n descriptors of DLEN bytes.
        unsafe { self.ring.as_ptr().add(i as usize * DLEN) }
    }

    /// Reads the little-endian u32 at byte `off` of descriptor `i`, as the device left it.
    #[inline]
    pub(crate) fn read32(&self, i: u32, off: usize) -> u32 {
        assert!(off.is_multiple_of(4) && off + 4 <= DLEN);
        // SAFETY: `desc(i)` is a DLEN-byte, DLEN-aligned descriptor; off is an aligned u32 inside
        // it. Volatile: the device writes it from another process.
        u32::from_le(unsafe { self.desc(i).add(off).cast::<u32>().read_volatile() })
    }

    /// Reads the little-endian qword at byte `off` of descriptor `i`, as the device left it.
    #[inline]
    pub(crate) fn read64(&self, i: u32, off: usize) -> u64 {
        assert!(off.is_multiple_of(8) && off + 8 <= DLEN);
        // SAFETY: as in `read32`, an aligned u64 inside the descriptor.
        u64::from_le(unsafe { self.desc(i).add(off).cast::<u64>().read_volatile() })
    }

    /// Writes the first `Q` qwords of descriptor `i` (in order, the first one first).
    #[inline]
    pub(crate) fn write<const Q: usize>(&self, i: u32, qw: [u64; Q]) {
        assert!(Q * 8 <= DLEN);
        let d = self.desc(i);
        for (k, q) in qw.iter().enumerate() {
            // SAFETY: qword k < Q is inside the DLEN-byte, 8-aligned descriptor, which this driver
            // owns at this moment (not handed to the device: the tail has not passed it).
            unsafe { d.add(8 * k).cast::<u64>().write_volatile(q.to_le()) };
        }
    }

    #[inline]
    pub(crate) fn sw_get(&self, i: u32) -> u64 {
        // SAFETY: i < n (callers), the software ring holds n u64s, 8-aligned; one process runs a
        // queue at a time, so this is not written concurrently.
        unsafe { self.sw.as_ptr().add(i as usize).read_volatile() }
    }

    #[inline]
    pub(crate) fn sw_set(&self, i: u32, v: u64) {
        // SAFETY: as in `sw_get`.
        unsafe { self.sw.as_ptr().add(i as usize).write_volatile(v) }
    }

    #[inline]
    pub(crate) fn next(&self, i: u32) -> u32 {
        if i + 1 == self.n {
            0
        } else {
            i + 1
        }
    }

    /// Sets both ring indices to 0 (a fresh queue).
    pub(crate) fn reset_indices(&self) {
        self.h().next.store(0, Ordering::Relaxed);
        self.h().clean.store(0, Ordering::Release);
    }
}

/// One queue as this process sees it: the zone view and the doorbell. Buffers come from and go
/// back to the port's pool handle, passed in: one handle (and one cache) for all the queues of a
/// port in a process, so the buffers transmit frees are the ones receive posts next, still warm
/// (what DPDK's per-lcore mempool cache gives an RX/TX queue pair on one lcore).
pub(crate) struct Queue<const DLEN: usize> {
    pub(crate) v: QueueView<DLEN>,
    bell: Doorbell,
    pub(crate) shm: Arc<Shm>,
}

// SAFETY: the raw pointers point into the process's shared-memory and BAR mappings, which outlive
// the queue; the queue is used by one thread at a time (&mut self on the data path).
unsafe impl<const DLEN: usize> Send for Queue<DLEN> {}

impl<const DLEN: usize> Queue<DLEN> {
    /// Reserves (primary) or finds (secondary) zone `name`; `tail` is the tail register's offset.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        name: &str,
        n: u32,
        kind: &ZoneKind,
        tail: u64,
        create: bool,
    ) -> Result<Self, DriverError> {
        let v = QueueView::open(shm, name, n, kind, create)?;
        Ok(Queue { v, bell: Doorbell::new(bar, tail), shm: shm.clone() })
    }

    /// Writes the tail register (after a release fence).
    #[inline]
    pub(crate) fn ring_doorbell(&self, bar: &Bar, v: u32) {
        self.bell.ring(bar, v)
    }

    pub(crate) fn zone(&self) -> &str {
        self.v.zone()
    }

    pub(crate) fn h(&self) -> &QueueHdr {
        self.v.h()
    }

    /// Posts a fresh buffer to every descriptor, written as `desc(buffer IOVA)`. Primary, before
    /// the queue is enabled; the caller sets the indices.
    pub(crate) fn fill<const Q: usize>(
        &mut self,
        pool: &mut Mempool,
        desc: impl Fn(u64) -> [u64; Q],
    ) -> Result<(), DriverError> {
        for i in 0..self.v.n {
            let m = pool.alloc().ok_or_else(|| {
                DriverError::state(format!("buffer pool {} ran out filling {}", pool.name(), self.v.zone))
            })?;
            self.v.write(i, desc(m.data_iova().0));
            self.v.sw_set(i, m.into_offset().0);
        }
        Ok(())
    }

    /// Returns the buffer recorded for descriptor `i` to the pool and clears the slot.
    fn free_slot(&mut self, pool: &mut Mempool, i: u32) {
        let off = self.v.sw_get(i);
        self.v.sw_set(i, 0);
        if let Some(m) = Mbuf::from_offset(&self.shm, ShmOffset(off)).filter(|_| off != 0) {
            pool.free(m);
        }
    }

    /// Returns every posted buffer to its pool (RX; the queue is disabled). Primary at release.
    pub(crate) fn drain_posted(&mut self, pool: &mut Mempool) {
        for i in 0..self.v.n {
            self.free_slot(pool, i);
        }
    }

    /// Frees every buffer still in flight (TX; the queue is disabled). Primary at release.
    pub(crate) fn drain_in_flight(&mut self, pool: &mut Mempool) {
        let h = self.v.h();
        let (mut c, t) = (h.clean.load(Ordering::Acquire), h.next.load(Ordering::Acquire));
        if c >= self.v.n || t >= self.v.n {
            return;
        }
        while c != t {
            self.free_slot(pool, c);
            c = self.v.next(c);
        }
        self.v.h().clean.store(t, Ordering::Release);
    }

    /// Frees sent buffers batch by batch from descriptor `c` (the oldest in flight, inside the
    /// ring) up to `tail`: `done(view, c, in_flight)` names the next batch's size once the device
    /// is done with all of it, or stops. Records and returns the new oldest in flight.
    #[inline]
    pub(crate) fn reclaim_sent(
        &mut self,
        pool: &mut Mempool,
        mut c: u32,
        tail: u32,
        done: impl Fn(&QueueView<DLEN>, u32, u32) -> Option<u32>,
    ) -> u32 {
        let n = self.v.n;
        while let Some(batch) = done(&self.v, c, (tail + n - c) % n) {
            // The buffers are read back only after the done state was seen.
            fence(Ordering::Acquire);
            for _ in 0..batch {
                if let Some(m) = Mbuf::from_offset(&self.shm, ShmOffset(self.v.sw_get(c))) {
                    pool.free(m);
                }
                self.v.sw_set(c, 0);
                c = self.v.next(c);
            }
        }
        self.v.h().clean.store(c, Ordering::Release);
        c
    }

    /// The transmit tail, if the shared index is inside the ring.
    #[inline]
    pub(crate) fn tx_tail(&self) -> Option<u32> {
        let tail = self.v.h().next.load(Ordering::Acquire);
        (tail < self.v.n).then_some(tail)
    }

    /// Sends from the front of `pkts` into the free descriptors after `tail` (`clean` is the
    /// oldest one in flight): one descriptor per packet, `[buffer IOVA, qw1(index, length)]`, the
    /// tail register written once. Frames of 0 or over `max_len` bytes are dropped and counted.
    /// Returns how many were taken.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tx_post(
        &mut self,
        bar: &Bar,
        pool: &mut Mempool,
        pkts: &mut [Option<Mbuf>],
        mut tail: u32,
        clean: u32,
        max_len: usize,
        qw1: impl Fn(u32, usize) -> u64,
    ) -> usize {
        let n = self.v.n;
        let mut free = n - 1 - (tail + n - clean) % n;
        let (mut taken, mut sent, mut bytes, mut errors) = (0usize, 0u64, 0u64, 0u64);
        for slot in pkts.iter_mut() {
            if free == 0 {
                break;
            }
            let Some(m) = slot.take() else { break };
            taken += 1;
            // One descriptor per frame: a chained packet is copied into one buffer first.
            let m = match pool.linearize(m) {
                Ok(m) => m,
                Err(m) => {
                    errors += 1;
                    pool.free(m);
                    continue;
                }
            };
            let len = m.len();
            if len == 0 || len > max_len {
                errors += 1;
                pool.free(m);
                continue;
            }
            self.v.write(tail, [m.data_iova().0, qw1(tail, len)]);
            self.v.sw_set(tail, m.into_offset().0);
            tail = self.v.next(tail);
            free -= 1;
            sent += 1;
            bytes += len as u64;
        }
        let h = self.v.h();
        if sent > 0 {
            h.next.store(tail, Ordering::Release);
            self.bell.ring(bar, tail);
        }
        h.count(sent, bytes, errors, 0);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::mem::ShmPlacement;
    use std::mem::offset_of;

    #[test]
    fn header_layout_is_what_secondaries_attach_to() {
        // Both drivers' zones: changing any of these breaks a secondary of another build.
        assert_eq!(offset_of!(QueueHdr, magic), 0);
        assert_eq!(offset_of!(QueueHdr, nb_desc), 8);
        assert_eq!(offset_of!(QueueHdr, next), 16);
        assert_eq!(offset_of!(QueueHdr, clean), 20);
        assert_eq!(offset_of!(QueueHdr, pkts), 24);
        assert_eq!(offset_of!(QueueHdr, bytes), 32);
        assert_eq!(offset_of!(QueueHdr, errors), 40);
        assert_eq!(offset_of!(QueueHdr, nombuf), 48);
        assert_eq!(zone_len(512, 32), 128 + 512 * 40);
    }

    #[test]
    fn a_zone_attaches_only_as_the_queue_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = ShmPlacement { path: dir.path().join("mem"), hugepages: false, page_size: 4096 };
        let shm = Shm::create(p, 4).unwrap();
        let a = ZoneKind { driver: "a", magic: 1, fresh_ring: Some(0xff) };
        let b = ZoneKind { driver: "b", magic: 2, fresh_ring: None };
        let name = a.zone_name(PortId(0), true, 1);
        assert_eq!(name, "a_0_rxq1");
        let v = QueueView::<16>::open(&shm, &name, 64, &a, true).unwrap();
        assert_eq!(v.read32(63, 12), u32::MAX, "fresh ring filled");
        assert!(QueueView::<16>::open(&shm, &name, 64, &a, false).is_ok());
        let e = QueueView::<16>::open(&shm, &name, 32, &a, false).err().unwrap();
        assert_eq!(e.to_string(), "memzone a_0_rxq1 holds no a queue of 32 descriptors");
        let e = QueueView::<16>::open(&shm, &name, 64, &b, false).err().unwrap();
        assert_eq!(e.to_string(), "memzone a_0_rxq1 holds no b queue of 64 descriptors");
    }
}
