//! X710 data path: 32-byte receive descriptors and transmit data descriptors (datasheet "LAN receive
//! descriptors" / "Transmit descriptors"), burst receive and transmit.
//!
//! Each queue is one memzone the primary reserves (`i40e_<port>_rxq<q>`, `i40e_<port>_txq<q>`):
//!
//! ```text
//! offset 0     QueueHdr (128 bytes): magic, ring size, next descriptor to clean/fill, counters
//! offset 128   descriptor ring: nb_desc x 32 (RX) or 16 (TX) bytes, 128-byte aligned as the queue
//!              context's base field (in 128-byte units) requires
//! then         software ring: nb_desc x u64, the mbuf (shared-memory offset) posted to each descriptor
//! ```
//!
//! Whichever process runs a queue continues where the last one stopped (one process per queue at a
//! time, as in DPDK); a process only adds its own view (pointers, doorbell, mempool handle).
//!
//! Descriptors are written by the device: every field read from one is untrusted. Lengths are bounded
//! by the buffer size, indices by the ring size.

use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use super::regs::*;

/// Receive descriptor size (32-byte format, context dsize = 1).
pub const RX_DESC_LEN: u64 = 32;
/// Transmit descriptor size.
pub const TX_DESC_LEN: u64 = 16;
/// Bytes before the descriptor ring in a queue zone.
pub const HDR_LEN: u64 = 128;
/// Descriptors freed per transmit clean-up step (done state checked on the last one of the batch).
pub const TX_CLEAN_BATCH: u32 = 32;
/// Largest frame one transmit descriptor carries (BUF_SZ is 14 bits).
pub const MAX_TX_LEN: usize = 16 * 1024 - 1;
const QUEUE_MAGIC: u64 = 0x4934_3045_5151_0001;

/// Shared state of one queue, at the start of its memzone.
#[repr(C, align(128))]
pub struct QueueHdr {
    magic: AtomicU64,
    nb_desc: u32,
    _r: u32,
    /// RX: next descriptor to check for DD. TX: next descriptor to fill (the tail).
    next: AtomicU32,
    /// TX: next descriptor to clean (oldest in flight).
    clean: AtomicU32,
    /// Packets received / sent by software on this queue.
    pkts: AtomicU64,
    /// Bytes received / sent.
    bytes: AtomicU64,
    /// RX: frames refused (error bits, no EOF, bad length). TX: unsendable mbufs dropped.
    errors: AtomicU64,
    /// RX: refills that found the pool empty.
    nombuf: AtomicU64,
}
const _: () = assert!(std::mem::size_of::<QueueHdr>() as u64 == HDR_LEN);

/// Bytes of a queue zone with `n` descriptors of `dlen` bytes.
pub fn zone_len(n: u32, dlen: u64) -> u64 {
    HDR_LEN + u64::from(n) * (dlen + 8)
}

/// The memzone name of a queue.
pub fn zone_name(port: u16, rx: bool, q: u16) -> String {
    format!("i40e_{port}_{}q{q}", if rx { "rx" } else { "tx" })
}

/// Where the tail register of a queue is written.
#[derive(Clone, Copy)]
enum Doorbell {
    /// In a sparse-mmapped page: a volatile store.
    Mapped(NonNull<u32>),
    /// Trapped: a register write through the transport.
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
    dlen: u64,
    ring_iova: u64,
    zone: String,
}

impl QueueView {
    fn open(shm: &Shm, name: &str, n: u32, dlen: u64, create: bool) -> Result<QueueView, String> {
        let len = zone_len(n, dlen);
        let z = if create { shm.reserve(name, len, 4096) } else { shm.lookup(name) }.map_err(|e| e.to_string())?;
        if z.len < len {
            return Err(format!("memzone {name} is {} bytes, {len} needed", z.len));
        }
        let base = shm.ptr(z.offset, len).ok_or_else(|| format!("memzone {name} outside shared memory"))?;
        if !(base.as_ptr() as usize).is_multiple_of(128) {
            return Err(format!("memzone {name} is not 128-byte aligned"));
        }
        let hdr = base.cast::<QueueHdr>();
        // SAFETY: the zone holds `len` bytes from `base` (checked by `ptr`), `base` is 128-aligned:
        // the ring at HDR_LEN and the software ring after n descriptors are inside and 8-aligned.
        let (ring, sw) = unsafe {
            (
                NonNull::new_unchecked(base.as_ptr().add(HDR_LEN as usize)),
                NonNull::new_unchecked(base.as_ptr().add((HDR_LEN + u64::from(n) * dlen) as usize).cast::<u64>()),
            )
        };
        let v = QueueView {
            hdr,
            ring,
            sw,
            n,
            dlen,
            ring_iova: ShmOffset(z.offset.0 + HDR_LEN).iova().0,
            zone: name.into(),
        };
        if create {
            // SAFETY: a fresh, zeroed zone that nobody else knows yet.
            unsafe { std::ptr::addr_of_mut!((*hdr.as_ptr()).nb_desc).write(n) };
            v.h().magic.store(QUEUE_MAGIC, Ordering::Release);
        } else {
            // SAFETY: plain read of a field written once before the magic was published.
            let nd = unsafe { std::ptr::addr_of!((*hdr.as_ptr()).nb_desc).read() };
            if v.h().magic.load(Ordering::Acquire) != QUEUE_MAGIC || nd != n {
                return Err(format!("memzone {name} holds no i40e queue of {n} descriptors"));
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
        // SAFETY: i < n, the ring holds n descriptors of dlen bytes.
        unsafe { self.ring.as_ptr().add(i as usize * self.dlen as usize) }
    }

    #[inline]
    fn sw_get(&self, i: u32) -> u64 {
        // SAFETY: i < n (callers), the software ring holds n u64s, 8-aligned; one process runs a
        // queue at a time.
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

/// Reads the little-endian qword at byte `off` of a descriptor, as the device left it.
#[inline]
fn desc_read64(d: *mut u8, off: usize) -> u64 {
    // SAFETY: `d` points at a 16- or 32-byte, 16-aligned descriptor; off is 0, 8, 16 or 24 within it.
    // Volatile: the device writes it from another process.
    u64::from_le(unsafe { d.add(off).cast::<u64>().read_volatile() })
}

/// Writes descriptor qwords (in order, the first one first).
#[inline]
fn desc_write(d: *mut u8, qw: &[u64]) {
    for (i, q) in qw.iter().enumerate() {
        // SAFETY: `d` points at a descriptor of at least qw.len() * 8 bytes that this driver owns at this
        // moment (not handed to the device: the tail has not passed it).
        unsafe { d.add(8 * i).cast::<u64>().write_volatile(q.to_le()) };
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

fn reset_counters(v: &QueueView) {
    let h = v.h();
    for c in [&h.pkts, &h.bytes, &h.errors, &h.nombuf] {
        c.store(0, Ordering::Relaxed);
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
    /// Bytes the device may write into one buffer (context dbuff).
    buf_size: usize,
    port: u16,
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
        abs_q: u32,
        n: u32,
        buf_size: usize,
        create: bool,
    ) -> Result<RxQueue, String> {
        let v = QueueView::open(shm, &zone_name(port, true, q), n, RX_DESC_LEN, create)?;
        Ok(RxQueue { v, bell: Doorbell::new(bar, qrx_tail(abs_q)), pool, shm: shm.clone(), buf_size, port })
    }

    /// IOVA of the descriptor ring and its descriptor count.
    pub(super) fn ring(&self) -> (u64, u32) {
        (self.v.ring_iova, self.v.n)
    }

    /// Posts a fresh buffer to every descriptor (before the queue is enabled). Primary.
    pub(super) fn fill(&mut self) -> Result<(), String> {
        for i in 0..self.v.n {
            let m = self
                .pool
                .alloc()
                .ok_or_else(|| format!("buffer pool {} ran out filling {}", self.pool.name(), self.v.zone))?;
            desc_write(self.v.desc(i), &[m.data_iova().0, 0, 0, 0]);
            self.v.sw_set(i, m.into_offset().0);
        }
        self.v.h().next.store(0, Ordering::Release);
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
        reset_counters(&self.v)
    }

    /// Receives into the empty slots at the front of `pkts` (write-back: DD, EOF, length), refills
    /// each descriptor with a fresh buffer and writes QRX_TAIL once.
    #[inline]
    pub(super) fn burst(&mut self, bar: &Bar, pkts: &mut [Option<Mbuf>]) -> usize {
        let h = self.v.h();
        let mut i = h.next.load(Ordering::Acquire);
        if i >= self.v.n {
            i = 0;
        }
        let (mut got, mut bytes, mut errors, mut nombuf, mut done) = (0usize, 0u64, 0u64, 0u64, 0u32);
        while got < pkts.len() {
            let d = self.v.desc(i);
            let qw1 = desc_read64(d, 8);
            if qw1 & RXD_STATUS_DD == 0 {
                break;
            }
            // Nothing else of the write-back is read before DD (the device writes qword1 last).
            fence(Ordering::Acquire);
            let len = ((qw1 >> RXD_LEN_PBUF_SHIFT) & RXD_LEN_PBUF_MASK) as usize;
            let err = (qw1 >> RXD_ERROR_SHIFT) & RXD_ERROR_MASK;
            let Some(mut m) = Mbuf::from_offset(&self.shm, ShmOffset(self.v.sw_get(i))) else {
                errors += 1;
                break;
            };
            let bad = qw1 & RXD_STATUS_EOF == 0 || err != 0 || len > self.buf_size || len == 0;
            if bad {
                errors += 1;
                m.reset();
                desc_write(d, &[m.data_iova().0, 0, 0, 0]);
                self.v.sw_set(i, m.into_offset().0);
            } else {
                let Some(fresh) = self.pool.alloc() else {
                    nombuf += 1;
                    let _ = m.into_offset();
                    break;
                };
                if !m.set_len(len) {
                    errors += 1;
                }
                m.set_port(self.port);
                desc_write(d, &[fresh.data_iova().0, 0, 0, 0]);
                self.v.sw_set(i, fresh.into_offset().0);
                bytes += len as u64;
                pkts[got] = Some(m);
                got += 1;
            }
            i = self.v.next(i);
            done += 1;
        }
        if done > 0 {
            h.next.store(i, Ordering::Release);
            // QRX_TAIL = last refilled descriptor: the device owns [head, tail).
            let last = if i == 0 { self.v.n - 1 } else { i - 1 };
            self.bell.ring(bar, last);
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
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        pool: Mempool,
        port: u16,
        q: u16,
        abs_q: u32,
        n: u32,
        create: bool,
    ) -> Result<TxQueue, String> {
        let v = QueueView::open(shm, &zone_name(port, false, q), n, TX_DESC_LEN, create)?;
        if create {
            v.h().next.store(0, Ordering::Relaxed);
            v.h().clean.store(0, Ordering::Release);
        }
        Ok(TxQueue { v, bell: Doorbell::new(bar, qtx_tail(abs_q)), pool, shm: shm.clone() })
    }

    pub(super) fn ring(&self) -> (u64, u32) {
        (self.v.ring_iova, self.v.n)
    }

    pub(super) fn zone(&self) -> &str {
        &self.v.zone
    }

    pub(super) fn counters(&self) -> QueueCounters {
        counters(&self.v)
    }

    pub(super) fn reset_counters(&self) {
        reset_counters(&self.v)
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

    /// Frees sent buffers in batches: a batch is done when the device rewrote its last descriptor's
    /// DTYPE to 0xF (every descriptor carries RS).
    #[inline]
    fn clean(&mut self, tail: u32) -> u32 {
        let h = self.v.h();
        let n = self.v.n;
        let mut c = h.clean.load(Ordering::Acquire);
        if c >= n {
            c = tail;
        }
        loop {
            let in_flight = (tail + n - c) % n;
            if in_flight == 0 {
                break;
            }
            let batch = in_flight.min(TX_CLEAN_BATCH);
            let last = (c + batch - 1) % n;
            if desc_read64(self.v.desc(last), 8) & TXD_DTYPE_MASK != TXD_DTYPE_DESC_DONE {
                break;
            }
            fence(Ordering::Acquire);
            for _ in 0..batch {
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

    /// Sends from the front of `pkts`: one data descriptor per packet (EOP|RS|ICRC), QTX_TAIL written
    /// once. Returns how many were taken (unsendable ones are dropped and counted).
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
            let cmd = (TXD_CMD_EOP | TXD_CMD_RS | TXD_CMD_ICRC) << TXD_CMD_SHIFT;
            let qw1 = TXD_DTYPE_DATA | cmd | ((len as u64) << TXD_BSZ_SHIFT);
            desc_write(self.v.desc(tail), &[m.data_iova().0, qw1]);
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
