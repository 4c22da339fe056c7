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
//! otherwise a TX buffer is copied into the wire's buffer and from there into an RX buffer: by
//! burst loops over the wire's ring when it has one ([`Wire::tx_ring`], [`Wire::rx_ring`]: one
//! lock per burst on a peer cable), else frame by frame ([`Wire::transmit_with`],
//! [`Wire::receive_burst`]). Frames spanning several TX descriptors (and
//! link-down transmits) go through the model's staging buffer.
//!
//! Descriptors are read one at a time, with the ring lines a few ahead prefetched
//! ([`prefetch_ahead`], as the NIC fetches descriptors ahead by its thresholds), and RX write-backs
//! are held back and stored [`WB_BATCH`] at a time, so the lines the driver writes and polls
//! change hands once per burst rather than once per frame.
//!
//! Ordering against the driver (another process): a doorbell (RDT/TDT) is one Acquire load, so the
//! descriptors the driver wrote before ringing it are seen; a write-back is the data, then the other
//! fields, then the word with DD as one Release store (advanced RX: DD and the length together in
//! one 64-bit store), the last store to that descriptor; RDH/TDH are Release stores after the
//! batch, after its write-backs.

use super::regs::*;
use super::{Ixgbe, Ring};
use std::sync::atomic::Ordering;

use crate::dma::{DmaView, Xlate};
use crate::model::frame::{
    crc32, dest, is_broadcast, prefetch_ahead, push_padded, rss_head, store_runs, tx_ring_span, Dest, Tally, Verdict,
};
use crate::wire::{FrameRing, Wire, MAX_FRAME};

/// Descriptors (TX) or frames (RX) handled per queue per poll.
pub const BUDGET: u32 = 256;
/// Busy polls between two full scans of the 192 queue enable bits (see the module docs of `ixgbe`).
pub const SCAN_EVERY: u32 = 64;
const DESC: u64 = 16;
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
    /// The receive filter's verdict on the last destination address off the wire.
    pub(super) verdict: Verdict<u64>,
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
    delivered: bool,
    cfg: RxCfg,
    /// Write-backs not yet stored, for the descriptors from `wb_first` on: the advanced format's
    /// two quadwords (RSS type and hash; status, errors and length). A device writes
    /// completed descriptors back in bursts, whole cache lines at a time; one store per descriptor
    /// as each frame lands would hand the line the driver is polling back and forth once per
    /// frame instead of once per burst.
    wb: [(u64, u64); WB_BATCH],
    wb_len: usize,
    wb_first: u32,
    /// Frames delivered to this queue this poll, counted into the registers by `rx_finish`.
    got: Tally,
}

/// Queue 0 as a burst loop delivers to it, one-buffer frames only: the ring's translation and
/// the queue's head, free descriptors and held write-backs in locals, written back to the
/// queue ([`Q0Run::close`]) before anything else looks at it. Shared by the cut-through loop
/// ([`Ixgbe::tx_cut_run`]) and the wire's receive loop ([`Ixgbe::rx_wire_run_q0`]).
struct Q0Run<'d> {
    ring: DmaView<'d>,
    /// Descriptors in the ring.
    count: u32,
    /// The translation is the queue's already (the bus master check done).
    taken: bool,
    head: u32,
    free: u32,
    wbn: usize,
    /// RDT went bad in a refresh: the loop ends after this frame.
    stop: bool,
}

impl<'d> Q0Run<'d> {
    /// Starts on `b`: `None` if its ring does not translate (left to the general path, which
    /// records the fault when a frame needs it).
    #[inline(always)]
    fn open(xl: &mut Xlate<'d>, b: &RxBatch<'d>) -> Option<Self> {
        let ring = b.descs.or_else(|| xl.view(b.ring.base, u64::from(b.ring.count) * DESC))?;
        let taken = b.descs.is_some();
        Some(Q0Run { ring, count: b.ring.count, taken, head: b.head, free: b.free, wbn: b.wb_len, stop: false })
    }

    /// Delivers a frame of `len` bytes written into its buffer by `fill`, as [`Ixgbe::rx_put`]
    /// does: `None` if no descriptor is free (RDT read again first; the caller counts it
    /// missed), else whether the buffer was written (a fault and an RXE write-back if not).
    #[inline(always)]
    fn put(
        &mut self,
        m: &mut Ixgbe,
        xl: &mut Xlate<'d>,
        b: &mut RxBatch<'d>,
        len: usize,
        fill: impl FnOnce(&DmaView<'_>) -> bool,
    ) -> Option<bool> {
        if self.free == 0 {
            // RDT again (the driver refills while we deliver).
            (b.head, b.free) = (self.head, 0);
            if m.rx_refresh(b) {
                self.free = b.free;
            } else {
                self.stop = true;
            }
            if self.free == 0 {
                return None;
            }
        }
        if !self.taken {
            m.check_dma_allowed();
            b.descs = Some(self.ring);
            self.taken = true;
        }
        if self.wbn == WB_BATCH {
            b.wb_len = self.wbn;
            m.rx_flush(b);
            self.wbn = 0;
        }
        if self.wbn == 0 {
            b.wb_first = self.head;
        }
        let ro = self.head as usize * DESC as usize;
        prefetch_ahead(&self.ring, ro, self.free as usize, DESC as usize);
        // Inside the ring view by construction (head < count).
        let pkt = self.ring.load_u64(ro, Ordering::Relaxed).unwrap_or_default();
        let ok = xl.view(pkt, len as u64).is_some_and(|d| fill(&d));
        b.wb[self.wbn] = if ok {
            (0, u64::from(RXD_STAT_DD | RXD_STAT_EOP) | (len as u64) << 32)
        } else {
            m.faults.record(pkt, len as u64, "rx buffer write");
            (0, u64::from(RXD_STAT_DD | RXD_STAT_EOP | RXD_ERR_RXE))
        };
        self.wbn += 1;
        self.head = if self.head + 1 == self.count { 0 } else { self.head + 1 };
        self.free -= 1;
        b.moved = true;
        Some(ok)
    }

    /// How many of the next frames (at most `todo`, `tx_left` before the TX ring's end) can go
    /// as a span ([`Ixgbe::cut_span`]): the queue's ring taken, and that many descriptors free
    /// before the RX ring's end with write-back room for all of them.
    #[inline(always)]
    fn span(&self, todo: u32, tx_left: u32) -> u32 {
        if !self.taken {
            return 0;
        }
        todo.min(tx_left).min(self.free).min(self.count - self.head).min((WB_BATCH - self.wbn) as u32)
    }

    /// Counts `n` descriptors a span filled (their write-backs in `b.wb` after the held ones):
    /// the head past them, that many fewer free.
    #[inline(always)]
    fn took(&mut self, b: &mut RxBatch<'d>, n: u32) {
        if n > 0 {
            self.wbn += n as usize;
            self.head = if self.head + n == self.count { 0 } else { self.head + n };
            self.free -= n;
            b.moved = true;
        }
    }

    /// Writes the locals back to the queue.
    #[inline(always)]
    fn close(self, b: &mut RxBatch<'d>) {
        (b.head, b.free, b.wb_len) = (self.head, self.free, self.wbn);
    }
}

/// A transmit descriptor at `o` of `descs` that the cut-through loops take: a one-descriptor data
/// frame (not a context descriptor, EOP set) of 8 bytes or more whose length on the wire (padded
/// to 60 bytes if `pad`) is at most `max`. Its buffer address, command word, length and length on
/// the wire.
#[inline(always)]
fn cut_desc(descs: &DmaView<'_>, o: usize, pad: bool, max: usize) -> Option<(u64, u32, usize, usize)> {
    let (buf, qw1) = descs.load_u64_pair(o)?;
    let (ctl, len, wire_len) = cut_ctl(qw1, pad, max)?;
    Some((buf, ctl, len, wire_len))
}

/// [`cut_desc`] on a descriptor's second quadword `qw1`: its command word, length and length on
/// the wire.
#[inline(always)]
fn cut_ctl(qw1: u64, pad: bool, max: usize) -> Option<(u32, usize, usize)> {
    let ctl = qw1 as u32;
    let len = (ctl & TXD_DTALEN_MASK) as usize;
    let ctxt = ctl & TXD_CMD_DEXT != 0 && (ctl >> TXD_DTYP_SHIFT) & 0xf == TXD_DTYP_CTXT;
    let wire_len = if pad { len.max(MIN_FRAME) } else { len };
    (!ctxt && ctl & TXD_CMD_EOP != 0 && len >= 8 && wire_len <= max).then_some((ctl, len, wire_len))
}

/// Whether the transmit descriptor at `o` of `descs` is a context descriptor (out of line: the
/// burst loops ask only when a descriptor is not a plain frame).
#[inline(never)]
fn is_context(descs: &DmaView<'_>, o: usize) -> bool {
    let ctl = descs.load_u32(o + 8, Ordering::Relaxed).unwrap_or_default();
    ctl & TXD_CMD_DEXT != 0 && (ctl >> TXD_DTYP_SHIFT) & 0xf == TXD_DTYP_CTXT
}

/// Copies a frame of `len` bytes from `src` into `dst` and zero-fills it to `wire_len` (TXPADEN).
#[inline(always)]
fn pad_copy(dst: &DmaView<'_>, src: &DmaView<'_>, len: usize, wire_len: usize) -> bool {
    dst.copy_from(0, src, 0, len) && (wire_len == len || dst.fill(len, wire_len - len, 0))
}

/// The receive filter's verdict on a frame of `wire_len` bytes whose first 8 bytes are `w`
/// (little-endian), kept in `v` while the destination address repeats (FCTRL `fctrl`).
#[inline(always)]
fn judge(v: &mut Verdict<u64>, m: &Ixgbe, fctrl: u32, w: u64, wire_len: usize) -> (bool, Dest) {
    // The 48-bit address (never all-ones in 64 bits, the `none` of every verdict here); a runt's
    // verdict depends on its length: not kept.
    v.judge(w & 0xffff_ffff_ffff, wire_len >= 14, || {
        let hdr = w.to_le_bytes();
        (m.accept(&hdr, wire_len, fctrl), dest(&hdr[..6]))
    })
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
        let mut sent = Tally::default();
        let todo = ((tail + ring.count - head) % ring.count).min(BUDGET);
        // Whether the wire keeps a ring the burst loop can fill (`Wire::tx_ring`).
        let mut wire_ring = true;
        while n < todo {
            if rx.cut && link && self.tx_frame.is_empty() {
                let (k, rs) = if self.rss.on {
                    self.tx_cut_run_rss(xl, &descs, ring, head, todo - n, pad, rx, &mut sent)
                } else {
                    let b = self.batch(rx, 0);
                    if b.ready && b.usable && b.cfg.strip {
                        self.tx_cut_run(xl, &descs, ring, head, todo - n, pad, b, &mut sent)
                    } else {
                        (0, false)
                    }
                };
                head = (head + k) % ring.count;
                n += k;
                completed |= rs;
                if n == todo {
                    break;
                }
            } else if wire_ring && link && self.tx_frame.is_empty() {
                let (mut k, mut rs) = (0, false);
                wire_ring = wire.tx_ring(&mut |r| {
                    (k, rs) = self.tx_wire_run(xl, &descs, ring, head, todo - n, pad, r, &mut sent);
                });
                head = (head + k) % ring.count;
                n += k;
                completed |= rs;
                if n == todo {
                    break;
                }
            }
            let o = head as usize * DESC as usize;
            prefetch_ahead(&descs, o, (todo - n) as usize, DESC as usize);
            // Inside the ring view by construction (head < count).
            let (buf, qw1) = descs.load_u64_pair(o).unwrap_or_default();
            let ctl = qw1 as u32;
            let addr = ring.base.wrapping_add(o as u64);
            let dtyp = (ctl >> TXD_DTYP_SHIFT) & 0xf;
            if ctl & TXD_CMD_DEXT != 0 && dtyp == TXD_DTYP_CTXT {
                // Context descriptor: offload parameters we do not model; no write-back.
            } else {
                let len = (ctl & TXD_DTALEN_MASK) as usize;
                let whole = ctl & TXD_CMD_EOP != 0 && self.tx_frame.is_empty();
                if whole && link && len > 0 && len <= MAX_FRAME {
                    self.tx_direct(xl, wire, buf, len, pad, rx, &mut sent);
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
        self.count_tx(sent);
        if completed {
            self.queue_interrupt(q, true);
        }
        n > 0
    }

    /// The cut-through fast path of an idle loopback (RSS off): from descriptor `head` on, at
    /// most `todo`, as long as each is a one-descriptor data frame ([`cut_desc`]) whose TX buffer
    /// translates, it goes from its TX buffer straight into an RX buffer of queue 0 (`b`), with
    /// the filters, counters, misses, faults and write-backs of [`Ixgbe::tx_direct`] and
    /// [`Ixgbe::rx_cut_through`]: one loop with the per-burst decisions taken once (the filter
    /// verdict, [`Verdict`]) and the queue's state in locals ([`Ixgbe::rx_put`]'s work, written
    /// back to `b` before anything else looks at it). The first descriptor that is anything else
    /// is left to the general path. Returns how many descriptors it handled and whether one
    /// asked for a status write-back (RS).
    #[allow(clippy::too_many_arguments)]
    fn tx_cut_run<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        descs: &DmaView<'d>,
        ring: Ring,
        head: u32,
        todo: u32,
        pad: bool,
        b: &mut RxBatch<'d>,
        sent: &mut Tally,
    ) -> (u32, bool) {
        // The ring's translation, taken as the queue's (`rx_descs`: the bus master check) when
        // the first frame needs a descriptor, as in `rx_place`; a ring outside the DMA maps is
        // left to the general path, which records the fault when a frame needs it.
        let Some(mut q) = Q0Run::open(xl, b) else { return (0, false) };
        let max = b.cfg.bsize.min(MAX_FRAME);
        // Frames sent, and the ones of them not delivered (filtered, missed, a faulting buffer).
        let (mut tx, mut lost) = (Tally::default(), Tally::default());
        let (mut v, fctrl) = (Verdict::new(u64::MAX), b.cfg.fctrl);
        let (mut h, mut n, mut rs) = (head, 0, false);
        while n < todo {
            // A span first: the descriptors up to either ring's end, as many as are free, with
            // write-back room for them all, so no frame of it checks for a wrap, a refresh or a
            // flush. It stops at the first frame that needs anything else, which the per-frame
            // work below takes.
            let k = q.span(todo - n, ring.count - h);
            if k > 0 {
                let (done, span_rs) = Self::cut_span(xl, descs, h, k, &mut q, b, pad, max, &v, &mut tx);
                rs |= span_rs;
                n += done;
                h = if h + done == ring.count { 0 } else { h + done };
                if done == k {
                    continue;
                }
            }
            let o = h as usize * DESC as usize;
            prefetch_ahead(descs, o, (todo - n) as usize, DESC as usize);
            let Some((buf, ctl, len, wire_len)) = cut_desc(descs, o, pad, max) else { break };
            let Some(src) = xl.view(buf, len as u64) else { break };
            let Some(w) = src.load_u64(0, Ordering::Relaxed) else { break };
            let (keep, class) = judge(&mut v, self, fctrl, w, wire_len);
            tx.add(wire_len as u64, class);
            if !keep {
                self.totals.rx_filtered += 1;
                lost.add(wire_len as u64, class);
            } else {
                match q.put(self, xl, b, wire_len, |d| pad_copy(d, &src, len, wire_len)) {
                    Some(true) => {}
                    Some(false) => lost.add(wire_len as u64, class),
                    None => {
                        self.count_missed();
                        lost.add(wire_len as u64, class);
                    }
                }
            }
            rs |= self.tx_status(descs, ring, o, ctl);
            h = if h + 1 == ring.count { 0 } else { h + 1 };
            n += 1;
            if q.stop {
                // The queue is unusable now: the rest of the burst takes the general path, which
                // counts its frames missed.
                break;
            }
        }
        q.close(b);
        let got = tx.minus(lost);
        sent.merge(tx);
        b.got.merge(got);
        b.delivered |= got.frames > 0;
        (n, rs)
    }

    /// The cut-through loop's span ([`Q0Run::span`]): `k` frames from TX descriptor `h` on into
    /// the RX descriptors from `q.head` on, neither ring wrapping, every RX descriptor free and
    /// write-back room for all. Per frame: the descriptor loads, the filter's verdict (the
    /// last one, [`Verdict::hit`]), the translations (inside the map the last one fell in,
    /// [`Region`]), the copy and the write-back. No call and few live values, so the loop
    /// keeps its state in registers. Stops before the first frame that is not a plain kept
    /// one-buffer frame whose buffers lie in that map with the verdict repeating, leaving it
    /// untouched for the caller's per-frame work. Returns the frames done and whether one asked
    /// for a status write-back (RS).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn cut_span<'d>(
        xl: &Xlate<'d>,
        descs: &DmaView<'d>,
        h: u32,
        k: u32,
        q: &mut Q0Run<'d>,
        b: &mut RxBatch<'d>,
        pad: bool,
        max: usize,
        v: &Verdict<u64>,
        tx: &mut Tally,
    ) -> (u32, bool) {
        let (t0, r0) = (h as usize * DESC as usize, q.head as usize * DESC as usize);
        let bytes = k as usize * DESC as usize;
        // The span's descriptors as windows of their own, and no dirty log on the maps (stores
        // through them mark nothing): a map that logs leaves the frames to the caller.
        let (Some(map), Some(txd), Some(rxd)) = (
            xl.region(),
            descs.unlogged().and_then(|d| d.sub(t0, bytes)),
            q.ring.unlogged().and_then(|d| d.sub(r0, bytes)),
        ) else {
            return (0, false);
        };
        if q.wbn == 0 {
            b.wb_first = q.head;
        }
        let wb = &mut b.wb[q.wbn..q.wbn + k as usize];
        // All the span's descriptor lines asked for before the first is read (a device fetches
        // descriptors ahead in bursts too).
        for line in (0..bytes).step_by(64) {
            txd.prefetch(line);
            rxd.prefetch(line);
        }
        let (mut i, mut rs, mut bytes_sent) = (0, false, 0u64);
        while i < wb.len() {
            let o = i * DESC as usize;
            let Some((buf, ctl, len, wire_len)) = cut_desc(&txd, o, pad, max) else { break };
            let Some(src) = map.view(buf, len) else { break };
            let Some(w) = src.load_u64(0, Ordering::Relaxed) else { break };
            if v.hit(w & 0xffff_ffff_ffff, wire_len >= 14) != Some((true, Dest::Unicast)) {
                break;
            }
            let Some(pkt) = rxd.load_u64(o, Ordering::Relaxed) else { break };
            let Some(dst) = map.view(pkt, wire_len) else { break };
            if !pad_copy(&dst, &src, len, wire_len) {
                break;
            }
            wb[i] = (0, u64::from(RXD_STAT_DD | RXD_STAT_EOP) | (wire_len as u64) << 32);
            bytes_sent += wire_len as u64;
            // In range: the descriptor was just read at `o`.
            if ctl & TXD_CMD_RS != 0 && txd.store_u32(o + 12, TXD_STAT_DD, Ordering::Release) {
                rs = true;
            }
            i += 1;
        }
        let done = i as u32;
        tx.merge(Tally { frames: done, bytes: bytes_sent, bcast: 0, mcast: 0 });
        q.took(b, done);
        (done, rs)
    }

    /// [`Ixgbe::tx_wire_run`]'s span ([`tx_ring_span`]): `k` descriptors from `h` on, before the
    /// ring's end, onto the wire's ring `r`, each status write-back DD in the last dword.
    #[inline(never)]
    fn wire_tx_span(
        xl: &Xlate<'_>,
        descs: &DmaView<'_>,
        h: u32,
        k: u32,
        pad: bool,
        r: &mut FrameRing,
        tx: &mut Tally,
    ) -> (u32, bool) {
        let first = h as usize * DESC as usize;
        tx_ring_span(
            xl,
            descs,
            first,
            k as usize,
            r,
            tx,
            |qw1| cut_ctl(qw1, pad, MAX_FRAME).map(|(ctl, len, wire_len)| (len, wire_len, ctl & TXD_CMD_RS != 0)),
            |txd, o| _ = txd.store_u32(o + 12, TXD_STAT_DD, Ordering::Release),
        )
    }

    /// The wire path's burst loop: from descriptor `head` on, at most `todo`, each one-descriptor
    /// data frame ([`cut_desc`]) whose TX buffer translates goes from there into the wire's ring
    /// `r` (padded to 60 bytes if `pad`), one copy, with the counters and status write-backs of
    /// [`Ixgbe::tx_direct`]. The first descriptor that is anything else is left to the general
    /// path. Returns how many descriptors it handled and whether one asked for a status
    /// write-back (RS).
    #[allow(clippy::too_many_arguments)]
    fn tx_wire_run(
        &mut self,
        xl: &mut Xlate<'_>,
        descs: &DmaView<'_>,
        ring: Ring,
        head: u32,
        todo: u32,
        pad: bool,
        r: &mut FrameRing,
        sent: &mut Tally,
    ) -> (u32, bool) {
        let mut tx = Tally::default();
        let (mut h, mut n, mut rs) = (head, 0, false);
        while n < todo {
            // A span first (up to the ring's end, see `wire_tx_span`); the frame it stops at
            // takes the per-frame work below.
            let k = (todo - n).min(ring.count - h);
            let (done, span_rs) = Self::wire_tx_span(xl, descs, h, k, pad, r, &mut tx);
            rs |= span_rs;
            n += done;
            h = if h + done == ring.count { 0 } else { h + done };
            if done == k {
                continue;
            }
            let o = h as usize * DESC as usize;
            prefetch_ahead(descs, o, (todo - n) as usize, DESC as usize);
            match cut_desc(descs, o, pad, MAX_FRAME) {
                Some((buf, ctl, len, wire_len)) => {
                    let Some(src) = xl.view(buf, len as u64) else { break };
                    let Some(w) = push_padded(r, &src, len, wire_len) else { break };
                    tx.add(wire_len as u64, dest(&w.to_le_bytes()[..6]));
                    rs |= self.tx_status(descs, ring, o, ctl);
                }
                // Offloads we do not model, no write-back (as on the general path): a context
                // descriptor before each frame keeps the burst in this loop.
                None if is_context(descs, o) => {}
                None => break,
            }
            h = if h + 1 == ring.count { 0 } else { h + 1 };
            n += 1;
        }
        sent.merge(tx);
        (n, rs)
    }

    /// [`Ixgbe::tx_cut_run`] with RSS on: each frame goes to the queue RSS picks, through
    /// [`Ixgbe::rx_place`]; a frame whose queue cannot take it here (not ready, not stripping the
    /// FCS, a buffer too small) is left to the general path.
    #[allow(clippy::too_many_arguments)]
    fn tx_cut_run_rss<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        descs: &DmaView<'d>,
        ring: Ring,
        head: u32,
        todo: u32,
        pad: bool,
        rx: &mut RxSet<'d>,
        sent: &mut Tally,
    ) -> (u32, bool) {
        // FCTRL is one register for every queue (`rx_cfg`).
        let (mut v, fctrl) = (Verdict::new(u64::MAX), self.reg(FCTRL));
        let mut tx = Tally::default();
        let (mut h, mut n, mut rs) = (head, 0, false);
        while n < todo {
            // A span first (see `cut_span_rss`); the frame it stops at takes the per-frame work.
            let k = (todo - n).min(ring.count - h);
            let (done, span_rs) = self.cut_span_rss(xl, descs, h, k, pad, rx, &v, &mut tx);
            rs |= span_rs;
            n += done;
            h = if h + done == ring.count { 0 } else { h + done };
            if done == k {
                continue;
            }
            let o = h as usize * DESC as usize;
            prefetch_ahead(descs, o, (todo - n) as usize, DESC as usize);
            let Some((buf, ctl, len, wire_len)) = cut_desc(descs, o, pad, MAX_FRAME) else { break };
            let Some(src) = xl.view(buf, len as u64) else { break };
            let Some(w) = src.load_u64(0, Ordering::Relaxed) else { break };
            // The headers RSS hashes (zeros past a short frame, as padding).
            let Some(hn) = rss_head(&mut self.rss_head, &src, len, wire_len) else { break };
            let (q, qw0) = self.rss_pick(&self.rss_head[..hn]);
            let b = self.batch(rx, q);
            if !(b.ready && b.usable && b.cfg.strip && wire_len <= b.cfg.bsize) {
                break;
            }
            let (keep, class) = judge(&mut v, self, fctrl, w, wire_len);
            tx.add(wire_len as u64, class);
            if !keep {
                self.totals.rx_filtered += 1;
            } else if !self.rx_room(b, 1) {
                self.count_missed();
            } else if self.rx_place(xl, b, wire_len, true, qw0, |d| pad_copy(d, &src, len, wire_len)) {
                b.got.add(wire_len as u64, class);
                b.delivered = true;
            }
            rs |= self.tx_status(descs, ring, o, ctl);
            h = if h + 1 == ring.count { 0 } else { h + 1 };
            n += 1;
        }
        sent.merge(tx);
        (n, rs)
    }

    /// [`Ixgbe::tx_cut_run_rss`]'s span: `k` frames from TX descriptor `h` on (before the ring's
    /// end), each a plain one-buffer unicast frame kept by the last verdict, with its buffer in
    /// the map the last translation fell in, into the queue RSS picks, as long as that queue is
    /// set up this poll, takes the frame in one buffer as is, has a free descriptor known and
    /// write-back room, and a buffer in that map too. Per frame: the descriptor loads, the hash
    /// (over the headers, as the per-frame path), one copy and the write-back; the queue's state
    /// stays in its batch. Stops before the first other frame, leaving it for the per-frame
    /// work. Returns the frames done and whether one asked for a status write-back (RS).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn cut_span_rss<'d>(
        &mut self,
        xl: &Xlate<'d>,
        descs: &DmaView<'d>,
        h: u32,
        k: u32,
        pad: bool,
        rx: &mut RxSet<'d>,
        v: &Verdict<u64>,
        tx: &mut Tally,
    ) -> (u32, bool) {
        let (t0, k) = (h as usize * DESC as usize, k as usize);
        let (Some(map), Some(txd)) = (xl.region(), descs.unlogged().and_then(|d| d.sub(t0, k * DESC as usize))) else {
            return (0, false);
        };
        for line in (0..k * DESC as usize).step_by(64) {
            txd.prefetch(line);
        }
        let (mut i, mut rs, mut sent) = (0, false, Tally::default());
        while i < k {
            let o = i * DESC as usize;
            let Some((buf, qw1)) = txd.load_u64_pair(o) else { break };
            let Some((ctl, len, wire_len)) = cut_ctl(qw1, pad, MAX_FRAME) else { break };
            let Some(src) = map.view(buf, len) else { break };
            let Some(w) = src.load_u64(0, Ordering::Relaxed) else { break };
            if v.hit(w & 0xffff_ffff_ffff, wire_len >= 14) != Some((true, Dest::Unicast)) {
                break;
            }
            // The headers RSS hashes (zeros past a short frame, as padding).
            let Some(hn) = rss_head(&mut self.rss_head, &src, len, wire_len) else { break };
            let (q, qw0) = self.rss_pick(&self.rss_head[..hn]);
            let Some(b) = rx.batches.get_mut(usize::from(rx.index[q as usize % RSS_QUEUES])) else { break };
            let ready = b.ready && b.usable && b.cfg.strip && !b.cfg.legacy && wire_len <= b.cfg.bsize;
            let (Some(ring), true) = (b.descs.and_then(|d| d.unlogged()), ready && b.free > 0 && b.wb_len < WB_BATCH)
            else {
                break;
            };
            let ro = b.head as usize * DESC as usize;
            let Some(pkt) = ring.load_u64(ro, Ordering::Relaxed) else { break };
            let Some(dst) = map.view(pkt, wire_len) else { break };
            if !pad_copy(&dst, &src, len, wire_len) {
                break;
            }
            if b.wb_len == 0 {
                b.wb_first = b.head;
            }
            b.wb[b.wb_len] = (qw0, u64::from(RXD_STAT_DD | RXD_STAT_EOP) | (wire_len as u64) << 32);
            b.wb_len += 1;
            b.head = if b.head + 1 == b.ring.count { 0 } else { b.head + 1 };
            b.free -= 1;
            (b.moved, b.delivered) = (true, true);
            b.got.add(wire_len as u64, Dest::Unicast);
            sent.add(wire_len as u64, Dest::Unicast);
            if ctl & TXD_CMD_RS != 0 {
                // In range: the descriptor was just read at `o`.
                _ = txd.store_u32(o + 12, TXD_STAT_DD, Ordering::Release);
                rs = true;
            }
            i += 1;
        }
        tx.merge(sent);
        (i as u32, rs)
    }

    /// The status write-back of a transmitted descriptor at `o` if it asks for one (RS): DD,
    /// last, one Release store, so the buffer reads before it are done before the driver may
    /// free the buffer. Returns whether it asked.
    #[inline(always)]
    fn tx_status(&mut self, descs: &DmaView<'_>, ring: Ring, o: usize, ctl: u32) -> bool {
        if ctl & TXD_CMD_RS == 0 {
            return false;
        }
        if !descs.store_u32(o + 12, TXD_STAT_DD, Ordering::Release) {
            self.faults.record(ring.base.wrapping_add(o as u64 + 12), 4, "tx descriptor write-back");
        }
        true
    }

    /// A one-descriptor frame (padded to 60 bytes if TXPADEN): guest buffer -> wire buffer, one
    /// copy; or, on an idle loopback, guest buffer -> RX buffer (see [`Wire::loops_back_idle`]).
    #[allow(clippy::too_many_arguments)]
    fn tx_direct<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        wire: &mut dyn Wire,
        buf: u64,
        len: usize,
        pad: bool,
        rx: &mut RxSet<'d>,
        sent: &mut Tally,
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
        if rx.cut && self.rx_cut_through(xl, &src, len, wire_len, &hdr, class, rx) {
            sent.add(wire_len as u64, class);
            return;
        }
        rx.cut = false;
        let put = wire.transmit_with(wire_len, &mut |slot: &mut [u8]| {
            if !src.read(0, &mut slot[..len]) {
                return false;
            }
            if len < wire_len {
                slot[len..].fill(0);
            }
            true
        });
        if put {
            sent.add(wire_len as u64, class);
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
        let mut one = Tally::default();
        one.add(self.tx_frame.len() as u64, dest(&self.tx_frame));
        self.count_tx(one);
        if self.link_up() {
            wire.transmit(&self.tx_frame);
        }
        self.tx_frame.clear();
    }

    /// Adds a burst's transmitted frames to the counters (GPTC, TPT, GOTC with the FCS, BPTC,
    /// MPTC) and the totals.
    fn count_tx(&mut self, t: Tally) {
        if t.frames == 0 {
            return;
        }
        let c = &mut self.counters;
        c.gptc = c.gptc.wrapping_add(t.frames);
        c.tpt = c.tpt.wrapping_add(t.frames);
        c.gotc += t.bytes + FCS * u64::from(t.frames);
        c.bptc = c.bptc.wrapping_add(t.bcast);
        c.mptc = c.mptc.wrapping_add(t.mcast);
        self.totals.tx_packets += u64::from(t.frames);
        self.totals.tx_bytes += t.bytes;
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
        set.verdict = Verdict::new(u64::MAX);
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
            delivered: false,
            cfg: self.rx_cfg(q),
            wb: [(0, 0); WB_BATCH],
            wb_len: 0,
            wb_first: 0,
            got: Tally::default(),
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
    #[inline]
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
        if !wire.backpressure() {
            // Every frame is taken (delivered, filtered or missed): one burst, through the
            // wire's ring when it has one (one lock, no call per frame).
            let mut n = 0;
            if wire.rx_ring(&mut |r| n = self.rx_wire_run(xl, r, BUDGET as usize, set)) {
                return n > 0;
            }
            return wire.receive_burst(BUDGET as usize, &mut |frame: &[u8]| self.rx_frame_in(xl, frame, set)) > 0;
        }
        let queues = if self.rss.on { self.rss.queues } else { 1 };
        let mut did = false;
        for _ in 0..BUDGET {
            if !self.rx_room_all(set, queues) {
                break;
            }
            if !wire.receive_with(&mut |frame: &[u8]| self.rx_frame_in(xl, frame, set)) {
                break;
            }
            did = true;
        }
        did
    }

    /// Up to `max` frames from the wire's ring `r`, each taken (delivered, filtered or missed) as
    /// [`Ixgbe::rx_frame_in`] takes it: one-buffer frames for queue 0 (RSS off, the FCS
    /// stripped) by [`Ixgbe::rx_wire_run_q0`], any other through `rx_frame_in`. Returns how
    /// many it took.
    fn rx_wire_run<'d>(&mut self, xl: &mut Xlate<'d>, r: &mut FrameRing, max: usize, set: &mut RxSet<'d>) -> usize {
        if r.is_empty() {
            // The usual poll of a cut-through loopback: nothing to set up.
            return 0;
        }
        let (mut n, mut fast) = (0, !self.rss.on);
        while n < max {
            if fast {
                let (k, again) = self.rx_wire_run_q0(xl, r, max - n, set);
                n += k;
                fast = again;
                if n == max {
                    break;
                }
            }
            let Some(frame) = r.front() else { break };
            self.rx_frame_in(xl, frame, set);
            r.pop();
            n += 1;
        }
        n
    }

    /// [`Ixgbe::rx_wire_run`]'s loop for queue 0, [`Ixgbe::tx_cut_run`]'s receive half: while
    /// queue 0 is ready and strips the FCS, each frame of 8 bytes up to one buffer goes from the
    /// ring into an RX buffer, with the filter verdict taken once per destination and the
    /// queue's state in locals (written back to the queue before anything else looks at it).
    /// Stops at the first other frame, leaving it in `r`. Returns how many frames it took and
    /// whether the loop may take more this poll (false once the queue cannot).
    fn rx_wire_run_q0<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        r: &mut FrameRing,
        max: usize,
        set: &mut RxSet<'d>,
    ) -> (usize, bool) {
        let mut v = set.verdict;
        let b = self.batch(set, 0);
        if !(b.ready && b.usable && b.cfg.strip) {
            return (0, false);
        }
        // The ring's translation, as in `tx_cut_run`: taken as the queue's when the first frame
        // needs a descriptor; a ring outside the DMA maps is left to `rx_frame_in`'s fault.
        let Some(mut q) = Q0Run::open(xl, b) else { return (0, false) };
        let (bsize, fctrl) = (b.cfg.bsize, b.cfg.fctrl);
        let (mut got, mut n) = (Tally::default(), 0);
        while n < max {
            // A span first (see `wire_rx_span`); the frame it stops at takes the per-frame work.
            let k = q.span((max - n).min(r.len()) as u32, u32::MAX);
            if k > 0 {
                let done = Self::wire_rx_span(xl, r, k, &mut q, b, &v, &mut got);
                n += done as usize;
                if done == k {
                    continue;
                }
            }
            let Some(frame) = r.front() else { break };
            let len = frame.len();
            let Some(h8) = frame.first_chunk::<8>() else { break };
            if len > bsize {
                break;
            }
            let (keep, class) = judge(&mut v, self, fctrl, u64::from_le_bytes(*h8), len);
            if !keep {
                self.totals.rx_filtered += 1;
            } else {
                match q.put(self, xl, b, len, |d| d.write(0, frame)) {
                    Some(true) => got.add(len as u64, class),
                    Some(false) => {}
                    None => self.count_missed(),
                }
            }
            r.pop();
            n += 1;
            if q.stop {
                // The queue is unusable now: `rx_frame_in` takes the rest (missed).
                break;
            }
        }
        let again = !q.stop;
        q.close(b);
        b.got.merge(got);
        b.delivered |= got.frames > 0;
        set.verdict = v;
        (n, again)
    }

    /// [`Ixgbe::rx_wire_run_q0`]'s span: the `k` oldest frames of `r` into the RX descriptors
    /// from `q.head` on ([`Q0Run::span`]: free, before the ring's end, with write-back room),
    /// each of 8 bytes up to one buffer, kept by the last verdict (unicast) and with a buffer in
    /// the map the last translation fell in: descriptor load, one copy, the write-back, and the
    /// frames taken off the ring once at the end. Stops before the first other frame, leaving
    /// it in `r`. Returns the frames taken.
    #[inline(never)]
    fn wire_rx_span<'d>(
        xl: &Xlate<'d>,
        r: &mut FrameRing,
        k: u32,
        q: &mut Q0Run<'d>,
        b: &mut RxBatch<'d>,
        v: &Verdict<u64>,
        got: &mut Tally,
    ) -> u32 {
        let (r0, bytes) = (q.head as usize * DESC as usize, k as usize * DESC as usize);
        let (Some(map), Some(rxd)) = (xl.region(), q.ring.unlogged().and_then(|d| d.sub(r0, bytes))) else {
            return 0;
        };
        if q.wbn == 0 {
            b.wb_first = q.head;
        }
        let bsize = b.cfg.bsize;
        let wb = &mut b.wb[q.wbn..q.wbn + k as usize];
        for line in (0..bytes).step_by(64) {
            rxd.prefetch(line);
        }
        let (mut i, mut bytes_got) = (0, 0u64);
        while i < wb.len() {
            let Some(frame) = r.peek(i) else { break };
            let len = frame.len();
            let Some(h8) = frame.first_chunk::<8>() else { break };
            if len > bsize
                || v.hit(u64::from_le_bytes(*h8) & 0xffff_ffff_ffff, len >= 14) != Some((true, Dest::Unicast))
            {
                break;
            }
            let Some(pkt) = rxd.load_u64(i * DESC as usize, Ordering::Relaxed) else { break };
            let Some(dst) = map.view(pkt, len) else { break };
            if !dst.write(0, frame) {
                break;
            }
            wb[i] = (0, u64::from(RXD_STAT_DD | RXD_STAT_EOP) | (len as u64) << 32);
            bytes_got += len as u64;
            i += 1;
        }
        r.pop_n(i);
        let done = i as u32;
        got.merge(Tally { frames: done, bytes: bytes_got, bcast: 0, mcast: 0 });
        q.took(b, done);
        done
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
            self.count_rx(b.got.take());
            if b.delivered {
                self.queue_interrupt(b.q, false);
            }
        }
    }

    /// A frame this device just transmitted on an idle loopback, moved from its TX buffer `src`
    /// straight into an RX buffer. False if it must take the wire instead (receive not ready, the
    /// FCS is kept, or the frame needs more than one buffer): those cases stay on one path.
    #[allow(clippy::too_many_arguments)]
    fn rx_cut_through<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        src: &DmaView<'_>,
        len: usize,
        wire_len: usize,
        hdr: &[u8; 8],
        class: Dest,
        set: &mut RxSet<'d>,
    ) -> bool {
        let (q, qw0) = if self.rss.on {
            // The headers RSS hashes (zeros past a short frame, as padding).
            let Some(n) = rss_head(&mut self.rss_head, src, len, wire_len) else { return false };
            self.rss_pick(&self.rss_head[..n])
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
        if self.rx_place(xl, b, wire_len, true, qw0, |d| pad_copy(d, src, len, wire_len)) {
            b.delivered = true;
            b.got.add(wire_len as u64, class);
        }
        true
    }

    /// One frame off the wire: filtered, missed, or delivered (to queue 0, or the one RSS picks).
    #[inline(always)]
    fn rx_frame_in<'d>(&mut self, xl: &mut Xlate<'d>, frame: &[u8], set: &mut RxSet<'d>) {
        let (q, qw0) = if self.rss.on { self.rss_pick(frame) } else { (0, 0) };
        // The first 8 bytes (zeros past a shorter frame, which no filter accepts).
        let w = match frame.first_chunk::<8>() {
            Some(h) => u64::from_le_bytes(*h),
            None => frame.iter().rev().fold(0, |w, b| w << 8 | u64::from(*b)),
        };
        let (keep, class) = judge(&mut set.verdict, self, self.reg(FCTRL), w, frame.len());
        let b = self.batch(set, q);
        if !b.ready || !keep {
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
            b.got.add(frame.len() as u64, class);
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
    #[inline(always)]
    fn rx_deliver<'d>(&mut self, xl: &mut Xlate<'d>, data: &[u8], qw0: u64, b: &mut RxBatch<'d>) -> bool {
        let bsize = b.cfg.bsize;
        if data.len() <= bsize {
            // One buffer (the common case), without the division and the loop.
            if !self.rx_room(b, 1) {
                self.count_missed();
                return false;
            }
            return self.rx_place(xl, b, data.len(), true, qw0, |v| v.write(0, data));
        }
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
    #[inline(always)]
    fn rx_place<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        b: &mut RxBatch<'d>,
        len: usize,
        last: bool,
        qw0: u64,
        fill: impl FnOnce(&DmaView<'_>) -> bool,
    ) -> bool {
        let Some(descs) = self.rx_descs(xl, b) else { return false };
        self.rx_put(xl, &descs, b, len, last, qw0, fill)
    }

    /// The queue's descriptor ring, translated once per poll when the first frame needs it (a
    /// ring not wholly inside one DMA map faults before any of it is read, and the queue stalls;
    /// the frame is lost, not counted as missed).
    #[inline(always)]
    fn rx_descs<'d>(&mut self, xl: &mut Xlate<'d>, b: &mut RxBatch<'d>) -> Option<DmaView<'d>> {
        match b.descs {
            Some(d) => Some(d),
            None => self.rx_descs_translate(xl, b),
        }
    }

    /// [`Ixgbe::rx_descs`] the first time in a poll.
    #[inline(never)]
    fn rx_descs_translate<'d>(&mut self, xl: &mut Xlate<'d>, b: &mut RxBatch<'d>) -> Option<DmaView<'d>> {
        let Some(d) = xl.view(b.ring.base, u64::from(b.ring.count) * DESC) else {
            self.faults.record(b.ring.base.wrapping_add(u64::from(b.head) * DESC), DESC, "rx descriptor read");
            self.rxq[b.q as usize].stalled_at_tail = Some(b.tail);
            b.usable = false;
            return None;
        };
        self.check_dma_allowed();
        b.descs = Some(d);
        Some(d)
    }

    /// [`Ixgbe::rx_place`] on the ring `descs` ([`Ixgbe::rx_descs`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rx_put<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        descs: &DmaView<'d>,
        b: &mut RxBatch<'d>,
        len: usize,
        last: bool,
        qw0: u64,
        fill: impl FnOnce(&DmaView<'_>) -> bool,
    ) -> bool {
        if b.wb_len == WB_BATCH {
            self.rx_flush(b);
        }
        if b.wb_len == 0 {
            b.wb_first = b.head;
        }
        let pkt = Self::rx_buffer_addr(descs, b);
        let status = RXD_STAT_DD | if last { RXD_STAT_EOP } else { 0 };
        let ok = xl.view(pkt, len as u64).is_some_and(|v| fill(&v));
        b.wb[b.wb_len] = if ok {
            (qw0, u64::from(status) | (len as u64) << 32)
        } else {
            self.faults.record(pkt, len as u64, "rx buffer write");
            (qw0, u64::from(RXD_STAT_DD | RXD_STAT_EOP | RXD_ERR_RXE))
        };
        b.wb_len += 1;
        b.head = if b.head + 1 == b.ring.count { 0 } else { b.head + 1 };
        b.free -= 1;
        b.moved = true;
        ok
    }

    /// Stores the held-back write-backs, in ring order from `wb_first`, each with its DD word
    /// last (advanced: qw0, then status and length in one Release store; legacy: the length,
    /// then the status word).
    fn rx_flush(&mut self, b: &mut RxBatch<'_>) {
        let n = std::mem::take(&mut b.wb_len);
        let Some(descs) = b.descs else { return };
        let (first, count) = (b.wb_first as usize, b.ring.count as usize);
        let ok = if b.cfg.legacy {
            let mut ok = true;
            for (i, &(_, qw1)) in b.wb[..n].iter().enumerate() {
                let o = (first + i) % count * DESC as usize;
                ok &= Self::rx_writeback_legacy(&descs, o, (qw1 >> 32) as u16, qw1 as u32);
            }
            ok
        } else {
            // Advanced (7.1.6.2): qw0 (RSS type in bits 3:0, packet type 0, the RSS hash in the
            // upper dword), then STATUS/ERROR with DD together with the length (VLAN 0) as the
            // last store, one 64-bit Release store per descriptor (a driver that sees DD sees the
            // length in the same load or after it). In runs up to the ring's end.
            store_runs(&descs, first, count, DESC as usize, &b.wb[..n])
        };
        if !ok {
            // Only a ring view shorter than its descriptor count could do this.
            self.faults.record(b.ring.base.wrapping_add(first as u64 * DESC), DESC, "rx descriptor write-back");
        }
    }

    /// The buffer address of descriptor `b.head`: one load (lines ahead prefetched, see
    /// [`prefetch_ahead`]).
    #[inline]
    fn rx_buffer_addr(descs: &DmaView<'_>, b: &RxBatch<'_>) -> u64 {
        let o = b.head as usize * DESC as usize;
        prefetch_ahead(descs, o, b.free as usize, DESC as usize);
        // Inside the ring view by construction (head < count).
        descs.load_u64(o, Ordering::Relaxed).unwrap_or_default()
    }

    /// Adds a queue's received frames of a poll to the counters (GPRC, TPR, GORC and TOR with
    /// the FCS, BPRC, MPRC) and the totals.
    fn count_rx(&mut self, t: Tally) {
        if t.frames == 0 {
            return;
        }
        let c = &mut self.counters;
        let fcs = FCS * u64::from(t.frames);
        c.gprc = c.gprc.wrapping_add(t.frames);
        c.tpr = c.tpr.wrapping_add(t.frames);
        c.gorc += t.bytes + fcs;
        c.tor += t.bytes + fcs;
        c.bprc = c.bprc.wrapping_add(t.bcast);
        c.mprc = c.mprc.wrapping_add(t.mcast);
        self.totals.rx_packets += u64::from(t.frames);
        self.totals.rx_bytes += t.bytes;
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
