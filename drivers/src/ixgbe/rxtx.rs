//! 82599 data path: advanced receive and transmit descriptors (datasheet 7.1.6, 7.2.3), burst
//! receive and transmit.
//!
//! Each queue is one memzone the primary reserves (`ixgbe_<port>_rxq<q>`, `ixgbe_<port>_txq<q>`),
//! laid out and kept as the `pci::queue` module (shared with net_i40e) describes:
//!
//! ```text
//! offset 0     QueueHdr (128 bytes): magic, ring size, next descriptor to clean/fill, counters
//! offset 128   descriptor ring: nb_desc x 16 bytes (128-byte aligned, as RDBAL/TDBAL require)
//! then         software ring: nb_desc x u64, the mbuf (shared-memory offset) posted to each descriptor
//! ```
//!
//! Everything a queue needs to continue lives there, so whichever process runs a queue continues
//! where the last one stopped (one process per queue at a time, as in DPDK). A process only adds
//! its own view: pointers into its mapping, its doorbell pointer; buffers come from the port's pool handle.
//!
//! Descriptors are written by the device (another process, or a NIC): every field read from one is
//! untrusted. Lengths are bounded by the buffer size, indices by the ring size.
//!
//! Receive refills lag one descriptor behind what was consumed (see `RxQueue::burst`); transmit
//! asks for a write-back on every 32nd descriptor only and frees buffers 32 at a time
//! ([`TX_RS_THRESH`]), which halves the device's descriptor writes against RS on every one.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use lab_core::ethdev::PortId;
use lab_core::mbuf::{Mbuf, Mempool, RX_RSS_HASH};
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use super::regs::*;
use crate::error::DriverError;
use crate::pci::queue::{Queue, ZoneKind};
pub use crate::pci::queue::{QueueCounters, QueueHdr, HDR_LEN};

/// Size of one advanced descriptor.
pub const DESC_LEN: u64 = 16;
/// RS is set on every 32nd transmit descriptor (those whose index is 31 mod 32): the device
/// writes back DD for those only, and software frees buffers 32 at a time (DPDK's tx_rs_thresh).
/// Ring sizes are multiples of it.
pub const TX_RS_THRESH: u32 = 32;
/// Largest frame one transmit descriptor carries (DTALEN is 16 bits; we send single-buffer frames).
pub const MAX_TX_LEN: usize = 16 * 1024 - 1;
/// Bursts that wait for a done descriptor's length before dropping it as bad.
pub const MAX_INCOMPLETE_POLLS: u32 = 4096;
const DLEN: usize = DESC_LEN as usize;
/// ixgbe queue zones: their magic; rings start all-ones (4.6.7.1, as ixy does) until descriptors
/// are written.
const KIND: ZoneKind = ZoneKind { driver: "ixgbe", magic: 0x4958_4742_5151_0001, fresh_ring: Some(0xff) };

/// Bytes of a queue zone with `n` descriptors.
pub fn zone_len(n: u32) -> u64 {
    crate::pci::queue::zone_len(n, DESC_LEN)
}

/// The memzone name of a queue.
pub fn zone_name(port: PortId, rx: bool, q: u16) -> String {
    KIND.zone_name(port, rx, q)
}

/// One receive queue, as this process sees it.
pub(super) struct RxQueue {
    pub(super) q: Queue<DLEN>,
    /// Bytes the device may write into one buffer (SRRCTL.BSIZEPACKET).
    buf_size: usize,
    port: u16,
    /// Bursts in a row that found the next descriptor done but without a length.
    incomplete_polls: u32,
}

impl RxQueue {
    /// Reserves (primary) or finds (secondary) queue `q`'s zone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        port: PortId,
        q: u16,
        n: u32,
        buf_size: usize,
        create: bool,
    ) -> Result<RxQueue, DriverError> {
        let q = Queue::open(shm, bar, &zone_name(port, true, q), n, &KIND, rdt(q.into()), create)?;
        Ok(RxQueue { q, buf_size, port: port.0, incomplete_polls: 0 })
    }

    /// IOVA and byte length of the descriptor ring.
    pub(super) fn ring(&self) -> (u64, u32) {
        (self.q.v.ring_iova(), self.q.v.n() * DESC_LEN as u32)
    }

    /// Posts a fresh buffer to every descriptor (4.6.7.1, before enabling the queue). Primary.
    pub(super) fn fill(&mut self, pool: &mut Mempool) -> Result<(), DriverError> {
        self.q.fill(pool, |iova| [iova, 0])?;
        self.q.v.reset_indices();
        Ok(())
    }

    /// Receives into the empty slots at the front of `pkts` (7.1.6: DD, EOP, length from the
    /// write-back), then refills consumed descriptors with fresh buffers and writes RDT once.
    ///
    /// Refill lags by one: the newest consumed descriptor is refilled only once a later one has
    /// been seen done (next burst or later), so a device that lands part of its write-back after
    /// DD (lab-nic does, see the tests) cannot overwrite a fresh buffer address. RDT stays at the
    /// last refilled descriptor, so the device never owns a descriptor without a buffer.
    #[inline]
    pub(super) fn burst(&mut self, bar: &Bar, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize {
        let v = &self.q.v;
        let n = v.n();
        let h = v.h();
        let (mut i, mut r) = (h.next.load(Ordering::Acquire), h.clean.load(Ordering::Acquire));
        if i >= n || r >= n {
            // Corrupt shared state: never index out of the ring.
            return 0;
        }
        let (mut got, mut bytes, mut errors) = (0usize, 0u64, 0u64);
        // Consumed but not refilled: [r, i). Never let it grow to the whole ring.
        let mut pending = (i + n - r) % n;
        while got < pkts.len() && pending + 1 < n {
            let status = v.read32(i, 8);
            if status & RXD_STAT_DD == 0 {
                break;
            }
            // Read the rest of the write-back only after DD (the device writes DD last).
            fence(Ordering::Acquire);
            let len = (v.read32(i, 12) & 0xffff) as usize;
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
            let off = v.sw_get(i);
            if bad {
                // The frame is dropped; its buffer stays in the software ring and is posted again.
                errors += 1;
            } else if let Some(mut m) = Mbuf::from_offset(&self.q.shm, ShmOffset(off)) {
                if !m.set_len(len) {
                    errors += 1;
                }
                m.set_port(self.port);
                // 7.1.6.2: an RSS type in dword 0 means dword 1 holds the hash (RXCSUM.PCSD).
                if v.read32(i, 0) & RXD_RSSTYPE_MASK != 0 {
                    let hdr = m.hdr_mut();
                    hdr.rss_hash = v.read32(i, 4);
                    hdr.ol_flags |= RX_RSS_HASH;
                }
                v.sw_set(i, 0);
                bytes += len as u64;
                pkts[got] = Some(m);
                got += 1;
            } else {
                // No buffer recorded for this descriptor (damaged shared state): drop the frame,
                // the refill below posts a fresh buffer.
                errors += 1;
                v.sw_set(i, 0);
            }
            i = v.next(i);
            pending += 1;
        }
        h.next.store(i, Ordering::Release);

        // Refill [r, i - 1): everything consumed except the newest.
        let mut nombuf = 0u64;
        let mut refilled = 0u32;
        while pending > 1 {
            let off = v.sw_get(r);
            let m = if off == 0 {
                // A fresh buffer (alloc resets it).
                let Some(m) = pool.alloc() else {
                    nombuf += 1;
                    break;
                };
                m
            } else {
                // The buffer of a dropped frame, posted again.
                let Some(mut m) = Mbuf::from_offset(&self.q.shm, ShmOffset(off)) else {
                    // Not a buffer: forget it and retry this slot with a fresh one next time.
                    v.sw_set(r, 0);
                    break;
                };
                m.reset();
                m
            };
            v.write(r, [m.data_iova().0, 0]);
            v.sw_set(r, m.into_offset().0); // owned by the software ring
            r = v.next(r);
            pending -= 1;
            refilled += 1;
        }
        if refilled > 0 {
            h.clean.store(r, Ordering::Release);
            // RDT = last refilled descriptor: the device owns [RDH, RDT).
            self.q.ring_doorbell(bar, if r == 0 { n - 1 } else { r - 1 });
        }
        h.count(got as u64, bytes, errors, nombuf);
        got
    }
}

/// One transmit queue, as this process sees it.
pub(super) struct TxQueue {
    pub(super) q: Queue<DLEN>,
}

impl TxQueue {
    /// Reserves (primary) or finds (secondary) queue `q`'s zone.
    pub(super) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        port: PortId,
        q: u16,
        n: u32,
        create: bool,
    ) -> Result<TxQueue, DriverError> {
        let q = Queue::open(shm, bar, &zone_name(port, false, q), n, &KIND, tdt(q.into()), create)?;
        if create {
            q.v.reset_indices();
        }
        Ok(TxQueue { q })
    }

    pub(super) fn ring(&self) -> (u64, u32) {
        (self.q.v.ring_iova(), self.q.v.n() * DESC_LEN as u32)
    }

    /// Frees sent buffers in batches of [`TX_RS_THRESH`]: a batch is done when the device wrote DD
    /// into its last descriptor, the one that carries RS (7.2.3.2.4, 7.2.3.5.1).
    #[inline]
    fn clean(&mut self, pool: &mut Mempool, tail: u32) -> u32 {
        let c = self.q.h().clean.load(Ordering::Acquire);
        if c >= self.q.v.n() || !c.is_multiple_of(TX_RS_THRESH) {
            // Damaged shared state: do not walk it, and report the ring full so nothing in flight
            // is overwritten (the buffers are reclaimed at release).
            return self.q.v.next(tail);
        }
        self.q.reclaim_sent(pool, c, tail, |v, c, in_flight| {
            let done = in_flight >= TX_RS_THRESH && v.read32(c + TX_RS_THRESH - 1, 12) & TXD_STAT_DD != 0;
            done.then_some(TX_RS_THRESH)
        })
    }

    /// Sends from the front of `pkts`: one advanced data descriptor per packet (7.2.3.2.4), TDT
    /// written once. Returns how many were taken (unsendable ones are dropped and counted).
    #[inline]
    pub(super) fn burst(&mut self, bar: &Bar, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(tail) = self.q.tx_tail() else { return 0 };
        let clean = self.clean(pool, tail);
        self.q.tx_post(bar, pool, pkts, tail, clean, MAX_TX_LEN, |tail, len| {
            let rs = if tail % TX_RS_THRESH == TX_RS_THRESH - 1 { TXD_DCMD_RS } else { 0 };
            let cmd = len as u32 | TXD_DTYP_DATA | TXD_DCMD_EOP | TXD_DCMD_IFCS | TXD_DCMD_DEXT | rs;
            let olinfo = (len as u32) << TXD_PAYLEN_SHIFT;
            u64::from(cmd) | (u64::from(olinfo) << 32)
        })
    }
}

crate::pci::port_queues!(RxQueue, TxQueue);

#[cfg(test)]
mod tests {
    //! The data path against a device that is plain memory (`MemDevice`): the test plays the
    //! NIC by writing descriptors into the rings, including what a broken NIC might write.
    use super::*;
    use crate::pci::queue::QueueView;
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
    fn complete(q: &QueueView<DLEN>, i: u32, len: u16, status: u32) {
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
        let mut p = r.pool.new_handle();
        let mut q = RxQueue::open(&r.shm, &r.bar, PortId(0), 0, N, 2048, true).unwrap();
        q.fill(&mut p).unwrap();
        assert_eq!(r.pool.avail_count(), 512 - N);
        let ok = RXD_STAT_DD | RXD_STAT_EOP;
        complete(&q.q.v, 0, 60, ok);
        complete(&q.q.v, 1, 5000, ok); // longer than the buffer
        complete(&q.q.v, 2, 100, RXD_STAT_DD); // no EOP: would need a second buffer
        complete(&q.q.v, 3, 0, ok | RXD_ERR_RXE); // device-reported error
        complete(&q.q.v, 4, 0, ok); // DD, length not there yet
        let mut pkts = slots(32);
        assert_eq!(q.burst(&r.bar, &mut p, &mut pkts), 1);
        assert_eq!(pkts[0].as_ref().map(Mbuf::len), Some(60));
        let c = q.q.h().counters();
        assert_eq!((c.pkts, c.bytes, c.errors), (1, 60, 3));
        // Stopped at 4; refilled 0..3 (the newest consumed one waits), RDT at the last refilled.
        assert_eq!(q.q.h().next.load(Ordering::Relaxed), 4);
        assert_eq!(q.q.h().clean.load(Ordering::Relaxed), 3);
        assert_eq!(reg(&r.dev, rdt(0)), 2);
        for i in 0..3 {
            assert_eq!(q.q.v.read32(i, 8) & RXD_STAT_DD, 0, "descriptor {i} handed back");
            assert_ne!(q.q.v.read32(i, 0), 0, "descriptor {i} has a buffer");
        }
        // The length arrives: the frame is received; refill catches up to it.
        complete(&q.q.v, 4, 70, ok);
        assert_eq!(q.burst(&r.bar, &mut p, &mut pkts[1..]), 1);
        assert_eq!(pkts[1].as_ref().map(Mbuf::len), Some(70));
        assert_eq!(reg(&r.dev, rdt(0)), 3);
        // One buffer handed out per good frame, one fresh taken per refill: nothing lost.
        r.pool.free_bulk(&mut pkts);
        q.q.drain_posted(&mut p);
        drop(q);
        assert_eq!(r.pool.avail_count(), 512);
    }

    #[test]
    fn rx_drops_a_done_descriptor_whose_length_never_comes() {
        let r = rig();
        let mut p = r.pool.new_handle();
        let mut q = RxQueue::open(&r.shm, &r.bar, PortId(0), 0, N, 2048, true).unwrap();
        q.fill(&mut p).unwrap();
        complete(&q.q.v, 0, 0, RXD_STAT_DD | RXD_STAT_EOP);
        complete(&q.q.v, 1, 80, RXD_STAT_DD | RXD_STAT_EOP);
        let mut pkts = slots(32);
        for _ in 0..MAX_INCOMPLETE_POLLS {
            assert_eq!(q.burst(&r.bar, &mut p, &mut pkts), 0);
        }
        assert_eq!(q.q.h().counters().errors, 0);
        assert_eq!(q.burst(&r.bar, &mut p, &mut pkts), 1);
        assert_eq!(pkts[0].as_ref().map(Mbuf::len), Some(80));
        assert_eq!(q.q.h().counters().errors, 1);
    }

    #[test]
    fn rx_with_damaged_shared_indices_receives_nothing_and_does_not_panic() {
        let r = rig();
        let mut p = r.pool.new_handle();
        let mut q = RxQueue::open(&r.shm, &r.bar, PortId(0), 0, N, 2048, true).unwrap();
        q.fill(&mut p).unwrap();
        q.q.h().next.store(N + 7, Ordering::Relaxed);
        assert_eq!(q.burst(&r.bar, &mut p, &mut slots(32)), 0);
        q.q.h().next.store(0, Ordering::Relaxed);
        q.q.h().clean.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(q.burst(&r.bar, &mut p, &mut slots(32)), 0);
    }

    #[test]
    fn tx_with_a_damaged_clean_index_sends_nothing_rather_than_overwrite() {
        let mut r = rig();
        let mut p = r.pool.new_handle();
        let mut q = TxQueue::open(&r.shm, &r.bar, PortId(0), 0, N, true).unwrap();
        q.q.h().clean.store(7, Ordering::Relaxed);
        let mut pkts = slots(4);
        assert!(r.pool.alloc_bulk(&mut pkts));
        assert_eq!(q.burst(&r.bar, &mut p, &mut pkts), 0);
        assert!(pkts.iter().all(Option::is_some), "the caller keeps its packets");
        r.pool.free_bulk(&mut pkts);
    }

    #[test]
    fn tx_sets_rs_every_32nd_descriptor_and_frees_in_batches() {
        let mut r = rig();
        let mut p = r.pool.new_handle();
        let mut q = TxQueue::open(&r.shm, &r.bar, PortId(0), 0, N, true).unwrap();
        let mut pkts = slots(40);
        assert!(r.pool.alloc_bulk(&mut pkts));
        for m in pkts.iter_mut().flatten() {
            m.set_len(64);
        }
        pkts[5].as_mut().map(|m| m.set_len(0)); // unsendable: dropped and counted
        assert_eq!(q.burst(&r.bar, &mut p, &mut pkts), 40);
        assert!(pkts.iter().all(Option::is_none));
        assert_eq!(reg(&r.dev, tdt(0)), 39, "the trapped doorbell got the tail");
        let rs: Vec<u32> = (0..39).filter(|i| q.q.v.read32(*i, 8) & TXD_DCMD_RS != 0).collect();
        assert_eq!(rs, vec![31]);
        let cmd = q.q.v.read32(0, 8);
        assert_eq!(cmd & TXD_DTALEN_MASK, 64);
        assert_eq!(cmd & (TXD_DTYP_DATA | TXD_DCMD_EOP | TXD_DCMD_IFCS | TXD_DCMD_DEXT), TXD_DTYP_DATA | 0x2300_0000);
        assert_eq!(q.q.v.read32(0, 12) >> TXD_PAYLEN_SHIFT, 64);
        let before = r.pool.avail_count();
        // Nothing is freed until the device reports the RS descriptor done.
        assert_eq!(q.burst(&r.bar, &mut p, &mut []), 0);
        assert_eq!(r.pool.avail_count(), before);
        // SAFETY: descriptor 31 is inside the ring; the test plays the device's write-back.
        unsafe { q.q.v.desc(31).add(12).cast::<u32>().write_volatile(TXD_STAT_DD) };
        assert_eq!(q.burst(&r.bar, &mut p, &mut []), 0);
        drop(q);
        drop(p); // the port's handle returns its cache
        assert_eq!(r.pool.avail_count(), before + 32);
        let c =
            QueueView::<DLEN>::open(&r.shm, &zone_name(PortId(0), false, 0), N, &KIND, false).unwrap().h().counters();
        assert_eq!((c.pkts, c.bytes, c.errors), (39, 39 * 64, 1));
    }

    #[test]
    fn zone_layout_is_as_documented() {
        assert_eq!(zone_len(512), 128 + 512 * 24);
        assert_eq!(zone_name(PortId(3), true, 1), "ixgbe_3_rxq1");
        assert_eq!(zone_name(PortId(0), false, 15), "ixgbe_0_txq15");
    }
}
