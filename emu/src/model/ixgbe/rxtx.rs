//! 82599 data path: queue-page doorbells, advanced TX/RX descriptors (datasheet 7.1.6, 7.2.3), the wire.
//!
//! Bounded work per poll: at most [`BUDGET`] descriptors per TX queue and [`BUDGET`] received frames.
//! Every DMA goes through [`Dma`]; a failed one is recorded as a fault and never stops the model.
//!
//! Per frame, nothing is allocated and the bytes are copied twice: a TX buffer straight into the
//! wire's buffer ([`Wire::transmit_with`]), and from there straight into an RX buffer
//! ([`Wire::receive_with`]). Frames spanning several TX descriptors (and link-down transmits) go
//! through the model's staging buffer instead.
//!
//! Ordering against the driver (another process): a doorbell (RDT/TDT) is one Acquire load, so the
//! descriptors the driver wrote before ringing it are seen; a write-back is the data, then the other
//! fields, then the word with DD as one Release store ([`Dma::publish_u32`]), the last store to that
//! descriptor; RDH/TDH are Release stores after the batch.

use super::regs::*;
use super::{Ixgbe, Ring};
use crate::dma::{Dma, DmaError};
use crate::wire::{Wire, MAX_FRAME};

/// Descriptors (TX) or frames (RX) handled per queue per poll.
pub const BUDGET: u32 = 256;
/// Busy polls between two full scans of the 192 queue enable bits (see the module docs of `ixgbe`).
pub const SCAN_EVERY: u32 = 8;
const DESC: u64 = 16;
/// RX descriptors whose buffer address is read ahead at once.
const READ_AHEAD: usize = 32;
const MIN_FRAME: usize = 60;
const FCS: u64 = 4;

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3) of `data`, as the MAC appends it as FCS.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc = (crc >> 8) ^ CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize];
    }
    !crc
}

fn is_broadcast(dst: &[u8]) -> bool {
    dst.iter().all(|b| *b == 0xff)
}

/// Destination class of a frame, for the broadcast/multicast counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dest {
    Unicast,
    Multicast,
    Broadcast,
}

fn dest(frame: &[u8]) -> Dest {
    let dst = &frame[..6.min(frame.len())];
    if dst.is_empty() {
        Dest::Unicast
    } else if is_broadcast(dst) {
        Dest::Broadcast
    } else if dst[0] & 1 != 0 {
        Dest::Multicast
    } else {
        Dest::Unicast
    }
}

/// Receive configuration, read once per poll.
#[derive(Clone, Copy)]
struct RxCfg {
    bsize: usize,
    legacy: bool,
    strip: bool,
    fctrl: u32,
}

/// RX queue 0 as one poll sees it: the head the device owns, the free descriptors it knows of.
struct RxBatch {
    ready: bool,
    /// False once the ring faulted (stalled until the driver moves the tail).
    usable: bool,
    ring: Ring,
    head: u32,
    tail: u32,
    free: u32,
    /// RDH needs writing back.
    moved: bool,
    dma_checked: bool,
    delivered: bool,
    cfg: RxCfg,
    /// Buffer addresses of the descriptors from `head` on, read ahead in one go (loads only), so
    /// reading descriptors does not interleave with writing them back on lines the driver polls.
    ahead: [u64; READ_AHEAD],
    /// `ahead[next..len]` are valid, for descriptors `head..`.
    ahead_next: usize,
    ahead_len: usize,
}

impl Ixgbe {
    /// True when the enable bits should be scanned for edges this poll.
    pub(super) fn scan_due(&self) -> bool {
        self.queue_gen != self.scanned_gen || self.last_poll_idle || self.polls_since_scan >= SCAN_EVERY
    }

    /// Latches ring configuration on ENABLE 0->1 and drops it on 1->0 (RXDCTL/TXDCTL in the pages).
    pub(super) fn scan_queue_enables(&mut self) -> bool {
        self.scanned_gen = self.queue_gen;
        self.polls_since_scan = 0;
        let mut changed = false;
        for q in 0..RX_QUEUES {
            let en = self.page32(rxdctl(q)) & RXDCTL_ENABLE != 0;
            if en != self.rxq[q as usize].enabled {
                let ring = if en {
                    self.latch_ring(rdbal(q), rdbah(q), rdlen(q), "rx ring length invalid")
                } else {
                    Ring::default()
                };
                self.rxq[q as usize] = ring;
                tracing::debug!(bdf = %self.bdf, q, enabled = en, count = ring.count, "rx queue");
                changed = true;
            }
        }
        let mut tx_changed = false;
        for q in 0..TX_QUEUES {
            let en = self.page32(txdctl(q)) & TXDCTL_ENABLE != 0;
            if en != self.txq[q as usize].enabled {
                let ring = if en {
                    self.latch_ring(tdbal(q), tdbah(q), tdlen(q), "tx ring length invalid")
                } else {
                    Ring::default()
                };
                self.txq[q as usize] = ring;
                tracing::debug!(bdf = %self.bdf, q, enabled = en, count = ring.count, "tx queue");
                tx_changed = true;
            }
        }
        if tx_changed {
            self.tx_active.clear();
            for q in 0..TX_QUEUES {
                let r = &self.txq[q as usize];
                if r.enabled && r.count > 0 {
                    self.tx_active.push(q);
                }
            }
        }
        changed | tx_changed
    }

    fn latch_ring(&mut self, bal: u32, bah: u32, len: u32, what: &'static str) -> Ring {
        let base = u64::from(self.page32(bal) & !0x7f) | (u64::from(self.page32(bah)) << 32);
        let bytes = self.page32(len) & 0x000f_ff80;
        if bytes == 0 {
            self.faults.record(base, u64::from(self.page32(len)), what);
        }
        Ring { enabled: true, base, count: bytes / DESC as u32, stalled_at_tail: None }
    }

    fn check_dma_allowed(&mut self) {
        let bme = self.cfg.bus_master();
        if !bme && !self.dma_without_bme_recorded {
            // Lenient: the access still happens, but the driver's omission is on record (once per
            // stretch without bus master enable, so the history is not flooded).
            self.faults.record(0, 0, "dma without bus master enable");
        }
        self.dma_without_bme_recorded = !bme;
    }

    /// Walks every enabled TX ring from TDH to TDT.
    pub(super) fn process_tx(&mut self, dma: &mut dyn Dma, wire: &mut dyn Wire) -> bool {
        if self.reg(DMATXCTL) & DMATXCTL_TE == 0 {
            return false;
        }
        let pad = self.reg(HLREG0) & HLREG0_TXPADEN != 0;
        let mut did = false;
        let mut i = 0;
        while i < self.tx_active.len() {
            let q = self.tx_active[i];
            i += 1;
            if self.page32(txdctl(q)) & TXDCTL_ENABLE == 0 {
                // Disabled by the driver: no more DMA on this ring; the next poll's scan drops it.
                self.queue_gen += 1;
                continue;
            }
            did |= self.tx_queue(dma, wire, q, pad);
        }
        did
    }

    fn tx_queue(&mut self, dma: &mut dyn Dma, wire: &mut dyn Wire, q: u32, pad: bool) -> bool {
        let ring = self.txq[q as usize];
        let tail = self.page32(tdt(q));
        if ring.stalled_at_tail == Some(tail) {
            return false;
        }
        let mut head = self.page32(tdh(q));
        if head >= ring.count || tail >= ring.count {
            self.faults.record(u64::from(tail), u64::from(head), "tx head/tail beyond ring");
            self.txq[q as usize].stalled_at_tail = Some(tail);
            return false;
        }
        if head == tail {
            return false;
        }
        self.check_dma_allowed();
        let link = self.link_up();
        let mut completed = false;
        let mut n = 0;
        while head != tail && n < BUDGET {
            let addr = ring.base + u64::from(head) * DESC;
            let mut d = [0u8; 16];
            if dma.read(addr, &mut d).is_err() {
                self.faults.record(addr, DESC, "tx descriptor read");
                self.txq[q as usize].stalled_at_tail = Some(tail);
                break;
            }
            let buf = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            let ctl = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            let dtyp = (ctl >> TXD_DTYP_SHIFT) & 0xf;
            if ctl & TXD_CMD_DEXT != 0 && dtyp == TXD_DTYP_CTXT {
                // Context descriptor: offload parameters we do not model; no write-back.
            } else {
                let len = (ctl & TXD_DTALEN_MASK) as usize;
                let whole = ctl & TXD_CMD_EOP != 0 && self.tx_frame.is_empty();
                if whole && link && len > 0 && len <= MAX_FRAME {
                    self.tx_direct(dma, wire, buf, len, pad);
                } else {
                    self.tx_gather(dma, buf, len);
                    if ctl & TXD_CMD_EOP != 0 {
                        self.tx_finish_frame(wire, pad);
                    }
                }
                if ctl & TXD_CMD_RS != 0 {
                    // DD last, one Release store: the buffer reads above are done before the driver
                    // may free the buffer.
                    if dma.publish_u32(addr + 12, TXD_STAT_DD).is_err() {
                        self.faults.record(addr + 12, 4, "tx descriptor write-back");
                    }
                    completed = true;
                }
            }
            head = if head + 1 == ring.count { 0 } else { head + 1 };
            n += 1;
        }
        if n > 0 {
            self.set_page32(tdh(q), head);
        }
        if completed {
            self.queue_interrupt(q, true);
        }
        n > 0
    }

    /// A one-descriptor frame: guest buffer -> wire buffer, one copy (padded to 60 bytes if TXPADEN).
    fn tx_direct(&mut self, dma: &mut dyn Dma, wire: &mut dyn Wire, buf: u64, len: usize, pad: bool) {
        let wire_len = if pad { len.max(MIN_FRAME) } else { len };
        let mut read_ok = true;
        let mut class = None;
        wire.transmit_with(wire_len, &mut |slot: &mut [u8]| {
            if dma.read(buf, &mut slot[..len]).is_err() {
                read_ok = false;
                return false;
            }
            slot[len..].fill(0);
            class = Some(dest(slot));
            true
        });
        if !read_ok {
            self.faults.record(buf, len as u64, "tx buffer read");
        }
        if let Some(d) = class {
            self.count_tx(wire_len as u64, d);
        }
    }

    fn tx_gather(&mut self, dma: &mut dyn Dma, buf: u64, len: usize) {
        let start = self.tx_frame.len();
        if start + len > MAX_FRAME {
            self.faults.record(buf, len as u64, "tx frame longer than 16 KiB");
            self.tx_frame.clear();
            return;
        }
        self.tx_frame.resize(start + len, 0);
        if dma.read(buf, &mut self.tx_frame[start..]).is_err() {
            self.faults.record(buf, len as u64, "tx buffer read");
            self.tx_frame.truncate(start);
        }
    }

    fn tx_finish_frame(&mut self, wire: &mut dyn Wire, pad: bool) {
        if self.tx_frame.is_empty() {
            return;
        }
        if pad && self.tx_frame.len() < MIN_FRAME {
            self.tx_frame.resize(MIN_FRAME, 0);
        }
        self.count_tx(self.tx_frame.len() as u64, dest(&self.tx_frame));
        if self.link_up() {
            wire.transmit(&self.tx_frame);
        }
        self.tx_frame.clear();
    }

    fn count_tx(&mut self, len: u64, d: Dest) {
        let c = &mut self.counters;
        c.gptc = c.gptc.wrapping_add(1);
        c.tpt = c.tpt.wrapping_add(1);
        c.gotc += len + FCS;
        match d {
            Dest::Broadcast => c.bptc = c.bptc.wrapping_add(1),
            Dest::Multicast => c.mptc = c.mptc.wrapping_add(1),
            Dest::Unicast => {}
        }
        self.totals.tx_packets += 1;
        self.totals.tx_bytes += len;
    }

    fn rx_cfg(&self) -> RxCfg {
        let srrctl0 = self.reg(srrctl(0));
        let kib = (srrctl0 & SRRCTL_BSIZEPACKET_MASK) as usize;
        RxCfg {
            bsize: if kib == 0 { 2048 } else { kib * 1024 },
            legacy: srrctl0 & SRRCTL_DESCTYPE_MASK == 0,
            strip: self.reg(HLREG0) & HLREG0_RXCRCSTRP != 0,
            fctrl: self.reg(FCTRL),
        }
    }

    /// Queue 0's state for this poll: reception on, ring latched and still enabled, indices sane.
    fn rx_batch(&mut self) -> RxBatch {
        let ring = self.rxq[0];
        let mut b = RxBatch {
            ready: false,
            usable: false,
            ring,
            head: 0,
            tail: 0,
            free: 0,
            moved: false,
            dma_checked: false,
            delivered: false,
            cfg: self.rx_cfg(),
            ahead: [0; READ_AHEAD],
            ahead_next: 0,
            ahead_len: 0,
        };
        if !ring.enabled {
            return b;
        }
        if self.page32(rxdctl(0)) & RXDCTL_ENABLE == 0 {
            // Disabled by the driver: no DMA into its buffers; the next poll's scan drops the ring.
            self.queue_gen += 1;
            return b;
        }
        b.ready = self.reg(RXCTRL) & RXCTRL_RXEN != 0 && self.link_up();
        if !b.ready {
            return b;
        }
        b.tail = self.page32(rdt(0));
        if ring.stalled_at_tail == Some(b.tail) {
            return b;
        }
        b.head = self.page32(rdh(0));
        if ring.count == 0 || b.head >= ring.count || b.tail >= ring.count {
            self.faults.record(u64::from(b.tail), 0, "rx head/tail beyond ring");
            self.rxq[0].stalled_at_tail = Some(b.tail);
            return b;
        }
        b.usable = true;
        b.free = (b.tail + ring.count - b.head) % ring.count;
        b
    }

    /// Re-reads RDT (the driver refills while we deliver). False if the ring became unusable.
    fn rx_refresh(&mut self, b: &mut RxBatch) -> bool {
        let tail = self.page32(rdt(0));
        if tail == b.tail {
            return true;
        }
        if tail >= b.ring.count {
            self.faults.record(u64::from(tail), 0, "rx head/tail beyond ring");
            self.rxq[0].stalled_at_tail = Some(tail);
            b.usable = false;
            return false;
        }
        b.tail = tail;
        b.free = (tail + b.ring.count - b.head) % b.ring.count;
        true
    }

    /// True if `need` descriptors are free, looking at RDT again when the known ones run short.
    fn rx_room(&mut self, b: &mut RxBatch, need: u32) -> bool {
        if b.free >= need {
            return true;
        }
        self.rx_refresh(b) && b.free >= need
    }

    /// Moves frames from the wire into RX queue 0 (no RSS or pools are modelled).
    pub(super) fn process_rx(&mut self, dma: &mut dyn Dma, wire: &mut dyn Wire) -> bool {
        let mut b = self.rx_batch();
        let backpressure = wire.backpressure();
        if !b.ready && backpressure {
            return false;
        }
        let mut did = false;
        for _ in 0..BUDGET {
            if b.ready && backpressure {
                let need = MAX_FRAME.min(1518).div_ceil(b.cfg.bsize).max(1) as u32;
                if !b.usable || !self.rx_room(&mut b, need) {
                    break;
                }
            }
            if !wire.receive_with(&mut |frame: &[u8]| self.rx_frame_in(dma, frame, &mut b)) {
                break;
            }
            did = true;
        }
        if b.moved {
            self.set_page32(rdh(0), b.head);
        }
        if b.delivered {
            self.queue_interrupt(0, false);
        }
        did
    }

    /// One frame off the wire: filtered, missed, or delivered.
    fn rx_frame_in(&mut self, dma: &mut dyn Dma, frame: &[u8], b: &mut RxBatch) {
        if !b.ready || !self.accept(frame, b.cfg.fctrl) {
            self.totals.rx_filtered += 1;
            return;
        }
        if !b.usable {
            self.count_missed();
            return;
        }
        let ok = if b.cfg.strip {
            self.rx_deliver(dma, frame, b)
        } else {
            let mut with_fcs = std::mem::take(&mut self.rx_frame);
            with_fcs.clear();
            with_fcs.extend_from_slice(frame);
            with_fcs.extend_from_slice(&crc32(frame).to_le_bytes());
            let ok = self.rx_deliver(dma, &with_fcs, b);
            self.rx_frame = with_fcs;
            ok
        };
        if ok {
            b.delivered = true;
            self.count_rx(frame);
        }
    }

    /// Receive filters (7.1.1): broadcast needs BAM, multicast MPE, unicast a valid RAR or UPE.
    fn accept(&self, frame: &[u8], fctrl: u32) -> bool {
        if frame.len() < 14 {
            return false;
        }
        let dst = &frame[..6];
        if is_broadcast(dst) {
            return fctrl & FCTRL_BAM != 0 || fctrl & FCTRL_MPE != 0;
        }
        if dst[0] & 1 != 0 {
            return fctrl & FCTRL_MPE != 0;
        }
        if fctrl & FCTRL_UPE != 0 {
            return true;
        }
        let lo = u32::from_le_bytes([dst[0], dst[1], dst[2], dst[3]]);
        let hi = u32::from(u16::from_le_bytes([dst[4], dst[5]]));
        self.rar.iter().any(|(l, h)| h & RAH_AV != 0 && *l == lo && (h & 0xffff) == hi)
    }

    /// Writes `data` (the frame, with its FCS unless stripped) into queue 0's free buffers. Returns
    /// true if it was delivered.
    fn rx_deliver(&mut self, dma: &mut dyn Dma, data: &[u8], b: &mut RxBatch) -> bool {
        let bsize = b.cfg.bsize;
        let need = data.len().div_ceil(bsize).max(1) as u32;
        if !self.rx_room(b, need) {
            self.count_missed();
            return false;
        }
        if !b.dma_checked {
            self.check_dma_allowed();
            b.dma_checked = true;
        }
        let count = b.ring.count;
        let mut ok = true;
        let mut i = 0;
        while i < need {
            let addr = b.ring.base + u64::from(b.head) * DESC;
            let Some(pkt) = Self::rx_buffer_addr(dma, b) else {
                self.faults.record(addr, DESC, "rx descriptor read");
                self.rxq[0].stalled_at_tail = Some(b.tail);
                b.usable = false;
                return false;
            };
            let start = i as usize * bsize;
            let chunk = &data[start..data.len().min(start + bsize)];
            let last = i + 1 == need;
            let mut status = RXD_STAT_DD | if last { RXD_STAT_EOP } else { 0 };
            let mut len = chunk.len() as u16;
            if dma.write(pkt, chunk).is_err() {
                self.faults.record(pkt, chunk.len() as u64, "rx buffer write");
                status = RXD_STAT_DD | RXD_STAT_EOP | RXD_ERR_RXE;
                len = 0;
                ok = false;
            }
            let wb = if b.cfg.legacy {
                Self::rx_writeback_legacy(dma, addr, len, status)
            } else {
                Self::rx_writeback_adv(dma, addr, len, status)
            };
            if wb.is_err() {
                self.faults.record(addr, DESC, "rx descriptor write-back");
            }
            b.head = if b.head + 1 == count { 0 } else { b.head + 1 };
            b.free -= 1;
            b.moved = true;
            if !ok {
                return false;
            }
            i += 1;
        }
        true
    }

    /// The buffer address of descriptor `head`: from the read-ahead, refilled with up to
    /// [`READ_AHEAD`] descriptors the device owns (`head..tail`). `None` if it cannot be read.
    fn rx_buffer_addr(dma: &mut dyn Dma, b: &mut RxBatch) -> Option<u64> {
        if b.ahead_next == b.ahead_len {
            let n = (b.free as usize).clamp(1, READ_AHEAD);
            let (mut d, mut len) = (b.head, 0);
            while len < n {
                match dma.read_u64(b.ring.base + u64::from(d) * DESC) {
                    Ok(a) => b.ahead[len] = a,
                    Err(_) => break,
                }
                len += 1;
                d = if d + 1 == b.ring.count { 0 } else { d + 1 };
            }
            (b.ahead_next, b.ahead_len) = (0, len);
            if len == 0 {
                return None;
            }
        }
        let a = b.ahead[b.ahead_next];
        b.ahead_next += 1;
        Some(a)
    }

    fn count_rx(&mut self, frame: &[u8]) {
        let len = frame.len() as u64;
        let c = &mut self.counters;
        c.gprc = c.gprc.wrapping_add(1);
        c.tpr = c.tpr.wrapping_add(1);
        c.gorc += len + FCS;
        c.tor += len + FCS;
        match dest(frame) {
            Dest::Broadcast => c.bprc = c.bprc.wrapping_add(1),
            Dest::Multicast => c.mprc = c.mprc.wrapping_add(1),
            Dest::Unicast => {}
        }
        self.totals.rx_packets += 1;
        self.totals.rx_bytes += len;
    }

    /// Advanced one-buffer write-back (7.1.6.2): packet info and RSS hash (0) @0, length @12 (VLAN 0),
    /// then STATUS/ERROR with DD @8 as the last store, one 32-bit Release store.
    fn rx_writeback_adv(dma: &mut dyn Dma, addr: u64, len: u16, status: u32) -> Result<(), DmaError> {
        dma.write_u64(addr, 0)?;
        dma.write_u32(addr + 12, u32::from(len))?;
        dma.publish_u32(addr + 8, status)
    }

    /// Legacy write-back (7.1.5, SRRCTL.DESCTYPE = 0): length @8, checksum @10 (0), then the word
    /// @12 holding status (DD, EOP), errors @13 (RXE bit 7) and VLAN @14 (0) as the last store, one
    /// 32-bit Release store.
    fn rx_writeback_legacy(dma: &mut dyn Dma, addr: u64, len: u16, status: u32) -> Result<(), DmaError> {
        dma.write_u32(addr + 8, u32::from(len))?;
        let errors: u32 = if status & RXD_ERR_RXE != 0 { 0x80 } else { 0 };
        dma.publish_u32(addr + 12, (status & 0x3) | (errors << 8))
    }

    fn count_missed(&mut self) {
        self.counters.mpc[0] = self.counters.mpc[0].wrapping_add(1);
        self.totals.rx_missed += 1;
    }
}
