//! 82599 data path: queue-page doorbells, advanced TX/RX descriptors (datasheet 7.1.6, 7.2.3), the wire.
//!
//! Bounded work per poll: at most [`BUDGET`] descriptors per TX queue and [`BUDGET`] received frames.
//! Every DMA goes through a [`DmaView`]: one [`Xlate`] per poll translates each descriptor ring
//! once (a ring not wholly inside one DMA map faults before any of it is read) and each buffer
//! against the map the last one fell in; a failed access is recorded as a fault and never stops
//! the model.
//!
//! Per frame, nothing is allocated and the bytes are copied once or twice. On an idle loopback
//! (see [`Wire::loops_back_idle`]) a one-descriptor frame goes from its TX buffer straight into
//! an RX buffer, with the same filters, counters and misses as the wire path (cut-through);
//! otherwise a TX buffer is copied into the wire's buffer ([`Wire::transmit_with`]) and from there
//! into an RX buffer ([`Wire::receive_with`]). Frames spanning several TX descriptors (and
//! link-down transmits) go through the model's staging buffer.
//!
//! Descriptors move in bursts, as on the NIC: TX descriptors are fetched in bursts ([`DescFetch`]),
//! RX buffer addresses read [`READ_AHEAD`] at a time (loads only), and RX write-backs are held
//! back and stored [`WB_BATCH`] at a time, so the lines the driver writes and polls change hands
//! once per burst rather than once per frame.
//!
//! Ordering against the driver (another process): a doorbell (RDT/TDT) is one Acquire load, so the
//! descriptors the driver wrote before ringing it are seen; a write-back is the data, then the other
//! fields, then the word with DD as one Release store (advanced RX: DD and the length together in
//! one 64-bit store), the last store to that descriptor; RDH/TDH are Release stores after the
//! batch, after its write-backs.

use super::regs::*;
use super::rss::RSS_HEADER;
use super::{Ixgbe, Ring};
use std::sync::atomic::Ordering;

use crate::dma::{DmaView, Xlate};
use crate::model::frame::{crc32, dest, is_broadcast, prefetch_descs, DescFetch, Dest};
use crate::wire::{Wire, MAX_FRAME};

/// Descriptors (TX) or frames (RX) handled per queue per poll.
pub const BUDGET: u32 = 256;
/// Busy polls between two full scans of the 192 queue enable bits (see the module docs of `ixgbe`).
pub const SCAN_EVERY: u32 = 64;
const DESC: u64 = 16;
/// RX descriptors whose buffer address is read ahead at once.
const READ_AHEAD: usize = 32;
/// RX write-backs held back and then written together (see [`RxBatch::wb`]).
const WB_BATCH: usize = 32;
const MIN_FRAME: usize = 60;
const FCS: u64 = 4;

/// Receive configuration, read once per poll.
#[derive(Clone, Copy)]
struct RxCfg {
    bsize: usize,
    legacy: bool,
    strip: bool,
    fctrl: u32,
}

/// The receive queues one poll delivers to: queue 0, set up when the poll starts, and the others
/// RSS sends frames to, each set up when its first frame of the poll comes.
pub(super) struct RxSet<'d> {
    /// Frames transmitted now may go straight into a receive ring: the wire is a loopback that
    /// held nothing when the poll began and no frame of this poll has gone onto it since (see
    /// [`Wire::loops_back_idle`]); cleared by the first frame that takes the wire.
    pub(super) cut: bool,
    /// The queues set up this poll, in the order they were (storage not initialised until
    /// used: a poll that touches one queue pays for one), and by queue their index there.
    pub(super) batches: arrayvec::ArrayVec<RxBatch<'d>, { RSS_QUEUES }>,
    pub(super) index: [u8; RSS_QUEUES],
}

/// One RX queue as one poll sees it: the head the device owns, the free descriptors it knows of.
pub(super) struct RxBatch<'d> {
    q: u32,
    /// The descriptor ring, translated once for the poll (`None` unless `usable`).
    descs: Option<DmaView<'d>>,
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
    /// How many descriptors one read-ahead takes: all of [`READ_AHEAD`] for one queue, a
    /// quarter when RSS spreads a burst over several (each then gets a part of it).
    ahead_max: usize,
    /// Write-backs not yet stored: (descriptor byte offset, length, status, dword 0 and the RSS
    /// hash as the write-back's first 8 bytes). A device writes
    /// completed descriptors back in bursts, whole cache lines at a time; one store per descriptor
    /// as each frame lands would hand the line the driver is polling back and forth once per
    /// frame instead of once per burst.
    wb: [(u32, u16, u32, u64); WB_BATCH],
    wb_len: usize,
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
                self.set_rx_stopped(q, !en);
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

    fn set_rx_stopped(&mut self, q: u32, stopped: bool) {
        let bit = 1u64 << (q % 64);
        if stopped {
            self.rx_stopped |= bit;
        } else {
            self.rx_stopped &= !bit;
        }
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
    pub(super) fn process_tx<'d>(&mut self, xl: &mut Xlate<'d>, wire: &mut dyn Wire, rx: &mut RxSet<'d>) -> bool {
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
            did |= self.tx_queue(xl, wire, q, pad, rx);
        }
        did
    }

    fn tx_queue<'d>(&mut self, xl: &mut Xlate<'d>, wire: &mut dyn Wire, q: u32, pad: bool, rx: &mut RxSet<'d>) -> bool {
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
        // One translation for the whole ring this poll; a ring not wholly inside one DMA map
        // faults before any of it is read.
        let Some(descs) = xl.view(ring.base, u64::from(ring.count) * DESC) else {
            self.faults.record(ring.base.wrapping_add(u64::from(head) * DESC), DESC, "tx descriptor read");
            self.txq[q as usize].stalled_at_tail = Some(tail);
            return false;
        };
        let mut completed = false;
        let mut n = 0;
        // Descriptors are fetched in bursts (as the 82599 does, PTHRESH/HTHRESH).
        let mut fetch = DescFetch::new();
        let todo = ((tail + ring.count - head) % ring.count).min(BUDGET);
        while n < todo {
            let (buf, qw1) = fetch.next(&descs, head, ring.count, (todo - n) as usize, DESC as usize);
            let ctl = qw1 as u32;
            let o = head as usize * DESC as usize;
            let addr = ring.base.wrapping_add(o as u64);
            let dtyp = (ctl >> TXD_DTYP_SHIFT) & 0xf;
            if ctl & TXD_CMD_DEXT != 0 && dtyp == TXD_DTYP_CTXT {
                // Context descriptor: offload parameters we do not model; no write-back.
            } else {
                let len = (ctl & TXD_DTALEN_MASK) as usize;
                let whole = ctl & TXD_CMD_EOP != 0 && self.tx_frame.is_empty();
                if whole && link && len > 0 && len <= MAX_FRAME {
                    self.tx_direct(xl, wire, buf, len, pad, rx);
                } else {
                    self.tx_gather(xl, buf, len);
                    if ctl & TXD_CMD_EOP != 0 {
                        rx.cut = false;
                        self.tx_finish_frame(wire, pad);
                    }
                }
                if ctl & TXD_CMD_RS != 0 {
                    // DD last, one Release store: the buffer reads above are done before the driver
                    // may free the buffer.
                    if !descs.store_u32(o + 12, TXD_STAT_DD, Ordering::Release) {
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

    /// A one-descriptor frame (padded to 60 bytes if TXPADEN): guest buffer -> wire buffer, one
    /// copy; or, on an idle loopback, guest buffer -> RX buffer (see [`Wire::loops_back_idle`]).
    fn tx_direct<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        wire: &mut dyn Wire,
        buf: u64,
        len: usize,
        pad: bool,
        rx: &mut RxSet<'d>,
    ) {
        let Some(src) = xl.view(buf, len as u64) else {
            self.faults.record(buf, len as u64, "tx buffer read");
            return;
        };
        let wire_len = if pad { len.max(MIN_FRAME) } else { len };
        // The destination address decides filters and counters: one 8-byte load (zeros past a
        // short frame, as padding).
        let mut hdr = [0u8; 8];
        match src.load_u64(0, Ordering::Relaxed) {
            Some(w) => hdr = w.to_le_bytes(),
            None => _ = src.read(0, &mut hdr[..len.min(8)]),
        }
        let class = dest(&hdr[..wire_len.min(6)]);
        if rx.cut && self.rx_cut_through(xl, &src, len, wire_len, &hdr, rx) {
            self.count_tx(wire_len as u64, class);
            return;
        }
        rx.cut = false;
        let sent = wire.transmit_with(wire_len, &mut |slot: &mut [u8]| {
            if !src.read(0, &mut slot[..len]) {
                return false;
            }
            slot[len..].fill(0);
            true
        });
        if sent {
            self.count_tx(wire_len as u64, class);
        }
    }

    fn tx_gather(&mut self, xl: &mut Xlate<'_>, buf: u64, len: usize) {
        let start = self.tx_frame.len();
        if start + len > MAX_FRAME {
            self.faults.record(buf, len as u64, "tx frame longer than 16 KiB");
            self.tx_frame.clear();
            return;
        }
        self.tx_frame.resize(start + len, 0);
        if !xl.view(buf, len as u64).is_some_and(|v| v.read(0, &mut self.tx_frame[start..])) {
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

    fn rx_cfg(&self, q: u32) -> RxCfg {
        let srrctl = self.reg(srrctl(q));
        let kib = (srrctl & SRRCTL_BSIZEPACKET_MASK) as usize;
        RxCfg {
            bsize: if kib == 0 { 2048 } else { kib * 1024 },
            legacy: srrctl & SRRCTL_DESCTYPE_MASK == 0,
            strip: self.reg(HLREG0) & HLREG0_RXCRCSTRP != 0,
            fctrl: self.reg(FCTRL),
        }
    }

    /// Sets queue 0 up in a poll's (empty) receive set; the others come when RSS picks them.
    pub(super) fn rx_start(&mut self, set: &mut RxSet<'_>) {
        set.batches.push(self.rx_batch(0));
        set.index[0] = 0;
    }

    /// Queue `q` of `set`, set up on first use.
    #[inline]
    fn batch<'s, 'd>(&mut self, set: &'s mut RxSet<'d>, q: u32) -> &'s mut RxBatch<'d> {
        let q = q as usize % RSS_QUEUES;
        let mut i = usize::from(set.index[q]);
        if i >= set.batches.len() {
            // At most one batch per queue: the set never fills.
            i = set.batches.len();
            set.batches.push(self.rx_batch(q as u32));
            set.index[q] = i as u8;
        }
        &mut set.batches[i]
    }

    /// Queue `q`'s state for this poll: reception on, ring latched and still enabled, indices sane.
    fn rx_batch<'d>(&mut self, q: u32) -> RxBatch<'d> {
        let ring = self.rxq[q as usize];
        let mut b = RxBatch {
            q,
            descs: None,
            ready: false,
            usable: false,
            ring,
            head: 0,
            tail: 0,
            free: 0,
            moved: false,
            dma_checked: false,
            delivered: false,
            cfg: self.rx_cfg(q),
            ahead: [0; READ_AHEAD],
            ahead_next: 0,
            ahead_len: 0,
            ahead_max: if self.rss.on && self.rss.queues.count_ones() > 1 { READ_AHEAD / 4 } else { READ_AHEAD },
            wb: [(0, 0, 0, 0); WB_BATCH],
            wb_len: 0,
        };
        let enabled = self.page32(rxdctl(q)) & RXDCTL_ENABLE != 0;
        if !ring.enabled {
            if !enabled {
                return b;
            }
            // Enabled by the driver since the last scan: latch it now, so a frame that arrives in
            // this very poll finds the ring (a driver may send as soon as ENABLE reads back set).
            let ring = self.latch_ring(rdbal(q), rdbah(q), rdlen(q), "rx ring length invalid");
            tracing::debug!(bdf = %self.bdf, q, enabled = true, count = ring.count, "rx queue");
            self.rxq[q as usize] = ring;
            self.set_rx_stopped(q, false);
            b.ring = ring;
        } else if !enabled {
            // Disabled by the driver: no DMA into its buffers; the next poll's scan drops the ring.
            self.queue_gen += 1;
            self.set_rx_stopped(q, true);
            return b;
        }
        let ring = b.ring;
        b.ready = self.reg(RXCTRL) & RXCTRL_RXEN != 0 && self.link_up();
        if !b.ready {
            return b;
        }
        b.tail = self.page32(rdt(q));
        if ring.stalled_at_tail == Some(b.tail) {
            return b;
        }
        b.head = self.page32(rdh(q));
        if ring.count == 0 || b.head >= ring.count || b.tail >= ring.count {
            self.faults.record(u64::from(b.tail), 0, "rx head/tail beyond ring");
            self.rxq[q as usize].stalled_at_tail = Some(b.tail);
            return b;
        }
        // The ring is translated when the first frame needs a descriptor (`rx_place`): with no
        // traffic nothing of it is read, so nothing faults.
        b.usable = true;
        b.free = (b.tail + ring.count - b.head) % ring.count;
        b
    }

    /// Re-reads RDT (the driver refills while we deliver). False if the ring became unusable.
    fn rx_refresh(&mut self, b: &mut RxBatch<'_>) -> bool {
        let tail = self.page32(rdt(b.q));
        if tail == b.tail {
            return true;
        }
        if tail >= b.ring.count {
            self.faults.record(u64::from(tail), 0, "rx head/tail beyond ring");
            self.rxq[b.q as usize].stalled_at_tail = Some(tail);
            b.usable = false;
            return false;
        }
        b.tail = tail;
        b.free = (tail + b.ring.count - b.head) % b.ring.count;
        true
    }

    /// True if `need` descriptors are free, looking at RDT again when the known ones run short.
    fn rx_room(&mut self, b: &mut RxBatch<'_>, need: u32) -> bool {
        if b.free >= need {
            return true;
        }
        self.rx_refresh(b) && b.free >= need
    }

    /// Moves frames from the wire into the RX queues: queue 0, or the one RSS picks. On a wire
    /// with backpressure (a peer that waits rather than drops) a frame is taken only when every
    /// queue it may go to has room for it.
    pub(super) fn process_rx<'d>(&mut self, xl: &mut Xlate<'d>, wire: &mut dyn Wire, set: &mut RxSet<'d>) -> bool {
        let backpressure = wire.backpressure();
        let queues = if self.rss.on { self.rss.queues } else { 1 };
        let mut did = false;
        for _ in 0..BUDGET {
            if backpressure && !self.rx_room_all(set, queues) {
                break;
            }
            if !wire.receive_with(&mut |frame: &[u8]| self.rx_frame_in(xl, frame, set)) {
                break;
            }
            did = true;
        }
        did
    }

    /// Whether each queue in the `queues` mask can take a largest frame now. A queue the driver
    /// stopped (ENABLE 1 -> 0) does not hold the others back: frames for it are missed, as with
    /// SRRCTL.DROP_EN; receive off (RXEN, link) or a queue not enabled yet holds them all.
    fn rx_room_all(&mut self, set: &mut RxSet<'_>, queues: u16) -> bool {
        let mut m = queues;
        while m != 0 {
            let q = m.trailing_zeros();
            m &= m - 1;
            let b = self.batch(set, q);
            if !b.ready {
                return false;
            }
            if !b.usable {
                // A queue the driver stopped does not hold the others back; one not enabled
                // yet (the port coming up) does.
                if self.rx_stopped & (1u64 << (q % 64)) != 0 {
                    continue;
                }
                return false;
            }
            let need = MAX_FRAME.min(1518).div_ceil(b.cfg.bsize).max(1) as u32;
            if !self.rx_room(b, need) {
                return false;
            }
        }
        true
    }

    /// Ends the poll's receive work: per queue, write-backs stored, RDH moved, its interrupt.
    pub(super) fn rx_finish(&mut self, set: &mut RxSet<'_>) {
        for b in set.batches.iter_mut() {
            self.rx_flush(b);
            if b.moved {
                self.set_page32(rdh(b.q), b.head);
            }
            if b.delivered {
                self.queue_interrupt(b.q, false);
            }
        }
    }

    /// A frame this device just transmitted on an idle loopback, moved from its TX buffer `src`
    /// straight into an RX buffer. False if it must take the wire instead (receive not ready, the
    /// FCS is kept, or the frame needs more than one buffer): those cases stay on one path.
    fn rx_cut_through<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        src: &DmaView<'_>,
        len: usize,
        wire_len: usize,
        hdr: &[u8; 8],
        set: &mut RxSet<'d>,
    ) -> bool {
        let (q, qw0) = if self.rss.on {
            // The headers RSS hashes (zeros past a short frame, as padding).
            let mut head = [0u8; RSS_HEADER];
            let n = len.min(RSS_HEADER);
            if !src.read(0, &mut head[..n]) {
                return false;
            }
            self.rss_pick(&head[..wire_len.min(RSS_HEADER)])
        } else {
            (0, 0)
        };
        let b = self.batch(set, q);
        if !b.ready || !b.usable || !b.cfg.strip || wire_len > b.cfg.bsize {
            return false;
        }
        if !self.accept(hdr, wire_len, b.cfg.fctrl) {
            self.totals.rx_filtered += 1;
            return true;
        }
        if !self.rx_room(b, 1) {
            self.count_missed();
            return true;
        }
        let fill =
            |dst: &DmaView<'_>| dst.copy_from(0, src, 0, len) && (wire_len == len || dst.fill(len, wire_len - len, 0));
        if self.rx_place(xl, b, wire_len, true, qw0, fill) {
            b.delivered = true;
            self.count_rx(wire_len as u64, dest(&hdr[..wire_len.min(6)]));
        }
        true
    }

    /// One frame off the wire: filtered, missed, or delivered (to queue 0, or the one RSS picks).
    fn rx_frame_in<'d>(&mut self, xl: &mut Xlate<'d>, frame: &[u8], set: &mut RxSet<'d>) {
        let (q, qw0) = if self.rss.on { self.rss_pick(frame) } else { (0, 0) };
        let b = self.batch(set, q);
        if !b.ready || !self.accept(frame, frame.len(), b.cfg.fctrl) {
            self.totals.rx_filtered += 1;
            return;
        }
        if !b.usable {
            self.count_missed();
            return;
        }
        let ok = if b.cfg.strip {
            self.rx_deliver(xl, frame, qw0, b)
        } else {
            let mut with_fcs = std::mem::take(&mut self.rx_frame);
            with_fcs.clear();
            with_fcs.extend_from_slice(frame);
            with_fcs.extend_from_slice(&crc32(frame).to_le_bytes());
            let ok = self.rx_deliver(xl, &with_fcs, qw0, b);
            self.rx_frame = with_fcs;
            ok
        };
        if ok {
            b.delivered = true;
            self.count_rx(frame.len() as u64, dest(frame));
        }
    }

    /// Receive filters (7.1.1): broadcast needs BAM, multicast MPE, unicast a valid RAR or UPE.
    /// `head` holds at least the destination address of a frame of `len` bytes.
    fn accept(&self, head: &[u8], len: usize, fctrl: u32) -> bool {
        if len < 14 || head.len() < 6 {
            return false;
        }
        let dst = &head[..6];
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

    /// Writes `data` (the frame, with its FCS unless stripped) into the queue's free buffers, with
    /// `qw0` (RSS type and hash) in each write-back. Returns true if it was delivered.
    fn rx_deliver<'d>(&mut self, xl: &mut Xlate<'d>, data: &[u8], qw0: u64, b: &mut RxBatch<'d>) -> bool {
        let bsize = b.cfg.bsize;
        let need = data.len().div_ceil(bsize).max(1);
        if !self.rx_room(b, need as u32) {
            self.count_missed();
            return false;
        }
        if b.wb_len + need > WB_BATCH {
            self.rx_flush(b);
        }
        for i in 0..need {
            let chunk = &data[i * bsize..data.len().min((i + 1) * bsize)];
            if !self.rx_place(xl, b, chunk.len(), i + 1 == need, qw0, |v| v.write(0, chunk)) {
                return false;
            }
        }
        true
    }

    /// Fills the buffer of descriptor `head` with `len` bytes written by `fill` and holds back its
    /// write-back (DD, EOP if `last`, the length; RXE and length 0 if the buffer is not writable).
    /// The caller checked there is a free descriptor. Returns whether the buffer was written; false
    /// without using the descriptor if the ring cannot be read (a fault; the queue stalls).
    fn rx_place<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        b: &mut RxBatch<'d>,
        len: usize,
        last: bool,
        qw0: u64,
        fill: impl FnOnce(&DmaView<'_>) -> bool,
    ) -> bool {
        let descs = match b.descs {
            Some(d) => d,
            None => {
                // One translation for the whole ring this poll; a ring not wholly inside one DMA
                // map faults before any of it is read (the frame is lost, not counted as missed).
                let Some(d) = xl.view(b.ring.base, u64::from(b.ring.count) * DESC) else {
                    self.faults.record(b.ring.base.wrapping_add(u64::from(b.head) * DESC), DESC, "rx descriptor read");
                    self.rxq[b.q as usize].stalled_at_tail = Some(b.tail);
                    b.usable = false;
                    return false;
                };
                b.descs = Some(d);
                d
            }
        };
        if !b.dma_checked {
            self.check_dma_allowed();
            b.dma_checked = true;
        }
        if b.wb_len == WB_BATCH {
            self.rx_flush(b);
        }
        let o = b.head as usize * DESC as usize;
        let pkt = Self::rx_buffer_addr(&descs, b);
        let mut status = RXD_STAT_DD | if last { RXD_STAT_EOP } else { 0 };
        let mut wlen = len as u16;
        let ok = xl.view(pkt, len as u64).is_some_and(|v| fill(&v));
        if !ok {
            self.faults.record(pkt, len as u64, "rx buffer write");
            status = RXD_STAT_DD | RXD_STAT_EOP | RXD_ERR_RXE;
            wlen = 0;
        }
        b.wb[b.wb_len] = (o as u32, wlen, status, qw0);
        b.wb_len += 1;
        b.head = if b.head + 1 == b.ring.count { 0 } else { b.head + 1 };
        b.free -= 1;
        b.moved = true;
        ok
    }

    /// Stores the held-back write-backs, in ring order, each with its DD word last.
    fn rx_flush(&mut self, b: &mut RxBatch<'_>) {
        for i in 0..b.wb_len {
            let (o, len, status, qw0) = b.wb[i];
            self.rx_writeback(b, o as usize, len, status, qw0);
        }
        b.wb_len = 0;
    }

    fn rx_writeback(&mut self, b: &RxBatch<'_>, o: usize, len: u16, status: u32, qw0: u64) {
        let Some(descs) = b.descs else { return };
        let ok = if b.cfg.legacy {
            Self::rx_writeback_legacy(&descs, o, len, status)
        } else {
            Self::rx_writeback_adv(&descs, o, len, status, qw0)
        };
        if !ok {
            self.faults.record(b.ring.base.wrapping_add(o as u64), DESC, "rx descriptor write-back");
        }
    }

    /// The buffer address of descriptor `head`: from the read-ahead, refilled with up to
    /// [`READ_AHEAD`] descriptors the device owns (`head..tail`), loads only, so reading
    /// descriptors does not interleave with writing them back on lines the driver polls.
    fn rx_buffer_addr(descs: &DmaView<'_>, b: &mut RxBatch<'_>) -> u64 {
        if b.ahead_next == b.ahead_len {
            let n = (b.free as usize).clamp(1, b.ahead_max);
            let mut d = b.head;
            for slot in &mut b.ahead[..n] {
                // Inside the ring view by construction (d < count).
                *slot = descs.load_u64(d as usize * DESC as usize, Ordering::Relaxed).unwrap_or_default();
                d = if d + 1 == b.ring.count { 0 } else { d + 1 };
            }
            (b.ahead_next, b.ahead_len) = (0, n);
            // The next read-ahead's lines arrive while this one is used.
            prefetch_descs(descs, d, b.ring.count, (b.free as usize).saturating_sub(n).min(b.ahead_max), DESC as usize);
        }
        let a = b.ahead[b.ahead_next];
        b.ahead_next += 1;
        a
    }

    fn count_rx(&mut self, len: u64, class: Dest) {
        let c = &mut self.counters;
        c.gprc = c.gprc.wrapping_add(1);
        c.tpr = c.tpr.wrapping_add(1);
        c.gorc += len + FCS;
        c.tor += len + FCS;
        match class {
            Dest::Broadcast => c.bprc = c.bprc.wrapping_add(1),
            Dest::Multicast => c.mprc = c.mprc.wrapping_add(1),
            Dest::Unicast => {}
        }
        self.totals.rx_packets += 1;
        self.totals.rx_bytes += len;
    }

    /// Advanced one-buffer write-back (7.1.6.2) of the descriptor at `o`: `qw0` (RSS type in bits
    /// 3:0, packet type 0, the RSS hash in the upper dword) @0, then STATUS/ERROR with DD @8
    /// together with length @12 (VLAN 0) as the last store, one 64-bit Release store (a driver
    /// that sees DD sees the length in the same load or after it). False if outside the ring.
    fn rx_writeback_adv(descs: &DmaView<'_>, o: usize, len: u16, status: u32, qw0: u64) -> bool {
        descs.store_u64(o, qw0, Ordering::Relaxed)
            && descs.store_u64(o + 8, u64::from(status) | u64::from(len) << 32, Ordering::Release)
    }

    /// Legacy write-back (7.1.5, SRRCTL.DESCTYPE = 0): length @8, checksum @10 (0), then the word
    /// @12 holding status (DD, EOP), errors @13 and VLAN @14 (0) as the last store, one 32-bit
    /// Release store. A frame the device could not deliver is reported as RXE, errors bit 0
    /// (bit 7 is IPE, the IPv4 checksum error, which says something else).
    fn rx_writeback_legacy(descs: &DmaView<'_>, o: usize, len: u16, status: u32) -> bool {
        let errors: u32 = if status & RXD_ERR_RXE != 0 { LEGACY_RXD_ERR_RXE } else { 0 };
        descs.store_u32(o + 8, u32::from(len), Ordering::Relaxed)
            && descs.store_u32(o + 12, (status & 0x3) | (errors << 8), Ordering::Release)
    }

    fn count_missed(&mut self) {
        self.counters.mpc[0] = self.counters.mpc[0].wrapping_add(1);
        self.totals.rx_missed += 1;
    }
}
