//! X710 data path: 32-byte receive descriptors and transmit data descriptors (datasheet "LAN receive
//! descriptors" / "Transmit descriptors"), burst receive and transmit.
//!
//! Each queue is one memzone the primary reserves (`i40e_<port>_rxq<q>`, `i40e_<port>_txq<q>`),
//! laid out and kept as the `pci::queue` module (shared with net_ixgbe) describes:
//!
//! ```text
//! offset 0     QueueHdr (128 bytes): magic, ring size, next descriptor to clean/fill, counters
//! offset 128   descriptor ring: nb_desc x 32 (RX) or 16 (TX) bytes, 128-byte aligned as the queue
//!              context's base field (in 128-byte units) requires
//! then         software ring: nb_desc x u64, the mbuf (shared-memory offset) posted to each descriptor
//! ```
//!
//! Whichever process runs a queue continues where the last one stopped (one process per queue at a
//! time, as in DPDK); a process only adds its own view (pointers, doorbell); buffers come from the
//! port's pool handle.
//!
//! Descriptors are written by the device: every field read from one is untrusted. Lengths are bounded
//! by the buffer size, indices by the ring size.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use lab_core::ethdev::PortId;
use lab_core::mbuf::{Mbuf, Mempool, RX_RSS_HASH};
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use super::regs::*;
use crate::error::DriverError;
pub use crate::pci::queue::{zone_len, QueueCounters, QueueHdr, HDR_LEN};
use crate::pci::queue::{Queue, ZoneKind};

/// Receive descriptor size (32-byte format, context dsize = 1).
pub const RX_DESC_LEN: u64 = 32;
/// Transmit descriptor size.
pub const TX_DESC_LEN: u64 = 16;
/// Descriptors freed per transmit clean-up step (done state checked on the last one of the batch).
pub const TX_CLEAN_BATCH: u32 = 32;
/// Largest frame one transmit descriptor carries (BUF_SZ is 14 bits).
pub const MAX_TX_LEN: usize = 16 * 1024 - 1;
const RX_DLEN: usize = RX_DESC_LEN as usize;
const TX_DLEN: usize = TX_DESC_LEN as usize;
/// i40e queue zones: their magic; rings start zeroed.
const KIND: ZoneKind = ZoneKind { driver: "i40e", magic: 0x4934_3045_5151_0001, fresh_ring: None };

/// The memzone name of a queue.
pub fn zone_name(port: PortId, rx: bool, q: u16) -> String {
    KIND.zone_name(port, rx, q)
}

/// One receive queue, as this process sees it.
pub(super) struct RxQueue {
    pub(super) q: Queue<RX_DLEN>,
    /// Bytes the device may write into one buffer (context dbuff).
    buf_size: usize,
    port: u16,
}

impl RxQueue {
    /// Reserves (primary) or finds (secondary) queue `q`'s zone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        port: PortId,
        q: u16,
        abs_q: u32,
        n: u32,
        buf_size: usize,
        create: bool,
    ) -> Result<RxQueue, DriverError> {
        let q = Queue::open(shm, bar, &zone_name(port, true, q), n, &KIND, qrx_tail(abs_q), create)?;
        Ok(RxQueue { q, buf_size, port: port.0 })
    }

    /// IOVA of the descriptor ring and its descriptor count.
    pub(super) fn ring(&self) -> (u64, u32) {
        (self.q.v.ring_iova(), self.q.v.n())
    }

    /// Posts a fresh buffer to every descriptor (before the queue is enabled). Primary.
    pub(super) fn fill(&mut self, pool: &mut Mempool) -> Result<(), DriverError> {
        self.q.fill(pool, |iova| [iova, 0, 0, 0])?;
        self.q.h().next.store(0, Ordering::Release);
        Ok(())
    }

    /// Receives into the empty slots at the front of `pkts` (write-back: DD, EOF, length), refills
    /// each descriptor with a fresh buffer and writes QRX_TAIL once.
    #[inline]
    pub(super) fn burst(&mut self, bar: &Bar, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize {
        let v = &self.q.v;
        let h = v.h();
        let mut i = h.next.load(Ordering::Acquire);
        if i >= v.n() {
            i = 0;
        }
        let (mut got, mut bytes, mut errors, mut nombuf, mut done) = (0usize, 0u64, 0u64, 0u64, 0u32);
        while got < pkts.len() {
            let qw1 = v.read64(i, 8);
            if qw1 & RXD_STATUS_DD == 0 {
                break;
            }
            // Nothing else of the write-back is read before DD (the device writes qword1 last).
            fence(Ordering::Acquire);
            let len = ((qw1 >> RXD_LEN_PBUF_SHIFT) & RXD_LEN_PBUF_MASK) as usize;
            let err = (qw1 >> RXD_ERROR_SHIFT) & RXD_ERROR_MASK;
            let Some(mut m) = Mbuf::from_offset(&self.q.shm, ShmOffset(v.sw_get(i))) else {
                errors += 1;
                break;
            };
            let bad = qw1 & RXD_STATUS_EOF == 0 || err != 0 || len > self.buf_size || len == 0;
            if bad {
                errors += 1;
                m.reset();
                v.write(i, [m.data_iova().0, 0, 0, 0]);
                v.sw_set(i, m.into_offset().0);
            } else {
                let Some(fresh) = pool.alloc() else {
                    nombuf += 1;
                    let _ = m.into_offset();
                    break;
                };
                if !m.set_len(len) {
                    errors += 1;
                }
                m.set_port(self.port);
                // FLTSTAT 3: qword0 bits 63:32 hold the RSS hash.
                if (qw1 >> RXD_FLTSTAT_SHIFT) & RXD_FLTSTAT_MASK == RXD_FLTSTAT_RSS_HASH {
                    let h = m.hdr_mut();
                    h.rss_hash = (v.read64(i, 0) >> 32) as u32;
                    h.ol_flags |= RX_RSS_HASH;
                }
                v.write(i, [fresh.data_iova().0, 0, 0, 0]);
                v.sw_set(i, fresh.into_offset().0);
                bytes += len as u64;
                pkts[got] = Some(m);
                got += 1;
            }
            i = v.next(i);
            done += 1;
        }
        if done > 0 {
            h.next.store(i, Ordering::Release);
            // QRX_TAIL = last refilled descriptor: the device owns [head, tail).
            let last = if i == 0 { v.n() - 1 } else { i - 1 };
            self.q.ring_doorbell(bar, last);
        }
        h.count(got as u64, bytes, errors, nombuf);
        got
    }
}

/// One transmit queue, as this process sees it.
pub(super) struct TxQueue {
    pub(super) q: Queue<TX_DLEN>,
}

impl TxQueue {
    /// Reserves (primary) or finds (secondary) queue `q`'s zone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        shm: &Arc<Shm>,
        bar: &Bar,
        port: PortId,
        q: u16,
        abs_q: u32,
        n: u32,
        create: bool,
    ) -> Result<TxQueue, DriverError> {
        let q = Queue::open(shm, bar, &zone_name(port, false, q), n, &KIND, qtx_tail(abs_q), create)?;
        if create {
            q.v.reset_indices();
        }
        Ok(TxQueue { q })
    }

    pub(super) fn ring(&self) -> (u64, u32) {
        (self.q.v.ring_iova(), self.q.v.n())
    }

    /// Frees sent buffers in batches: a batch is done when the device rewrote its last descriptor's
    /// DTYPE to 0xF (every descriptor carries RS).
    #[inline]
    fn clean(&mut self, pool: &mut Mempool, tail: u32) -> u32 {
        let n = self.q.v.n();
        let mut c = self.q.h().clean.load(Ordering::Acquire);
        if c >= n {
            c = tail;
        }
        self.q.reclaim_sent(pool, c, tail, |v, c, in_flight| {
            if in_flight == 0 {
                return None;
            }
            let batch = in_flight.min(TX_CLEAN_BATCH);
            let last = (c + batch - 1) % n;
            (v.read64(last, 8) & TXD_DTYPE_MASK == TXD_DTYPE_DESC_DONE).then_some(batch)
        })
    }

    /// Sends from the front of `pkts`: one data descriptor per packet (EOP|RS|ICRC), QTX_TAIL written
    /// once. Returns how many were taken (unsendable ones are dropped and counted).
    #[inline]
    pub(super) fn burst(&mut self, bar: &Bar, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(tail) = self.q.tx_tail() else { return 0 };
        let clean = self.clean(pool, tail);
        self.q.tx_post(bar, pool, pkts, tail, clean, MAX_TX_LEN, |_, len| {
            let cmd = (TXD_CMD_EOP | TXD_CMD_RS | TXD_CMD_ICRC) << TXD_CMD_SHIFT;
            TXD_DTYPE_DATA | cmd | ((len as u64) << TXD_BSZ_SHIFT)
        })
    }
}

crate::pci::port_queues!(RxQueue, TxQueue);
