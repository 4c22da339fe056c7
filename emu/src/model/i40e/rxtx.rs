//! X710 data path: QTX_TAIL / QRX_TAIL doorbells (mmapped pages), transmit data descriptors with
//! descriptor or head write-back, receive descriptors of 16 or 32 bytes, the MAC/VSI
//! receive filters, internal loopback, the wire, and the GLPRT counters.
//!
//! Bounded work per poll: at most [`BUDGET`] descriptors per TX queue and [`BUDGET`] frames received
//! from the internal loopback and the wire (frames cut through on an idle loopback, below, come with
//! the transmit work instead). Every DMA of a poll goes through one [`Xlate`]: a descriptor ring is
//! one [`DmaView`] for the whole poll (a ring not wholly inside one DMA map is a descriptor-read
//! fault and the queue stalls until the driver moves its tail), a packet buffer one view for its
//! copy. A failed access is recorded as a fault and never stops the model.
//!
//! Per frame, nothing is allocated: a one-descriptor TX frame is read from guest memory straight
//! into the wire's ring (or the internal loopback ring), and a received frame goes from there
//! straight into RX buffers; a wire with a ring hands it over once per burst ([`Wire::tx_ring`],
//! [`Wire::rx_ring`]) and burst loops fill and drain it, one without goes frame by frame
//! ([`Wire::transmit_with`], [`Wire::receive_burst`]). On an idle
//! loopback wire ([`Wire::loops_back_idle`], and nothing waiting in the internal loopback ring) a
//! one-descriptor frame goes from its TX buffer straight into an RX buffer (cut-through), with the
//! same filters, counters and misses as on the wire; a frame the receive queue cannot take that way
//! (no receive context, FCS kept, more than one RX buffer needed) takes the wire. Frames spanning
//! several TX descriptors, and the FCS appended when the RX context does not strip it, go through
//! the model's staging buffers (allocated once).
//!
//! Ordering against the driver (another process): a tail doorbell is one Acquire load, read once
//! per TX queue per poll and, for RX, once per poll and again only when the known free descriptors
//! run short; a write-back is the data, then the other fields, then the word holding DD (or the
//! done DTYPE, or the written-back head) as one Release store, the last store to that descriptor.
//! RX write-backs are held back and stored in bursts (up to `WB_BATCH` descriptors, in ring order),
//! all of them before the queue's head moves and before the poll returns.

use std::sync::atomic::Ordering;

use super::hmc::{RxContext, TxContext};
use super::regs::*;
use super::{I40e, Links};
use crate::dma::{DmaView, Xlate};
use crate::model::frame::{
    crc32, dest, is_broadcast, prefetch_ahead, push_padded, rss_head, store_runs, tx_ring_span, Dest, Tally, Verdict,
};
use crate::wire::{FrameRing, Wire, MAX_FRAME};

/// Descriptors (TX) or frames (RX) handled per queue per poll.
pub const BUDGET: u32 = 256;
const TX_DESC: u64 = 16;
/// RX write-backs held back and then stored together (see [`RxBatch::wb`]).
const WB_BATCH: usize = 32;
/// Header bytes the receive filters look at: the destination address and a VLAN tag's TCI.
const HDR: usize = 16;
const MIN_FRAME: usize = 60;
const FCS: u64 = 4;

/// What [`I40e::cut_span`] works within: the TX ring's context and the span's first descriptor
/// `h` and length `k`, the receive queue's context `c` and write-back words (`qw0`, the RSS bits
/// `qw1_rss`), and the port's largest frame (with FCS).
#[derive(Clone, Copy)]
struct Span<'a> {
    ctx: &'a TxContext,
    h: u32,
    k: u32,
    c: &'a RxContext,
    qw0: u64,
    qw1_rss: u64,
    max_frame: u64,
}

/// Whether the RX ring's tail has been read this poll and what it allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TailState {
    Unread,
    Usable,
    /// Stalled or faulted: frames are missed until the driver moves the tail.
    Unusable,
}

/// The receive queues one poll delivers to (made before the transmit work, which may deliver
/// into them, and finished after the receive work: [`I40e::rx_finish`]): the VSI's first queue,
/// set up when the poll starts, and the others RSS sends frames to, each set up when its first
/// frame of the poll comes. By PF queue.
pub(super) struct RxSet<'d> {
    /// The queues set up this poll, in the order they were (storage not initialised until
    /// used: a poll that touches one queue pays for one), and by queue their index there.
    pub(super) batches: arrayvec::ArrayVec<RxBatch<'d>, { PF_QUEUES as usize }>,
    pub(super) index: [u8; PF_QUEUES as usize],
    /// The VSI's first queue (where frames go without RSS).
    pub(super) first: u32,
    /// The receive filter's verdict on the last header off the wire ([`filter_key`]).
    pub(super) verdict: Verdict<(u64, u32)>,
}

/// The command bits and length of a transmit descriptor (qword1 `qw1`) that the burst loops
/// take: a one-descriptor data frame (EOP) of 14 bytes up to [`MAX_FRAME`].
#[inline(always)]
fn one_desc_frame(qw1: u64) -> Option<(u64, usize)> {
    let cmd = (qw1 >> TXD_CMD_SHIFT) & 0x3ff;
    let len = ((qw1 >> TXD_BSZ_SHIFT) & TXD_BSZ_MASK) as usize;
    (qw1 & TXD_DTYPE_MASK == TXD_DTYPE_DATA && cmd & TXD_CMD_EOP != 0 && (14..=MAX_FRAME).contains(&len))
        .then_some((cmd, len))
}

/// What the receive filters look at of a frame whose first `HDR` bytes are `hdr` (zeros past a
/// shorter one): the destination address and the bytes of a VLAN tag (12..16). No frame has the
/// key `(u64::MAX, 0)` (the address is 48 bits), which is [`Verdict`]'s `none` here.
#[inline(always)]
pub(super) fn filter_key(hdr: &[u8; HDR]) -> (u64, u32) {
    let w = u64::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7]]);
    (w & 0xffff_ffff_ffff, u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]))
}

/// The `none` key of the filter verdicts ([`filter_key`]).
pub(super) const NO_KEY: (u64, u32) = (u64::MAX, 0);

/// One receive queue as one poll sees it.
pub(super) struct RxBatch<'d> {
    q: u32,
    ctx: Option<RxContext>,
    /// The descriptor ring, translated once, at the poll's first descriptor read.
    descs: Option<DmaView<'d>>,
    state: TailState,
    head: u32,
    tail: u32,
    /// Descriptors the device owns from `head` on, as of the last tail read.
    free: u32,
    /// The head moved (stored back after the batch).
    moved: bool,
    delivered: bool,
    /// Write-backs not yet stored, for the descriptors from `wb_first` on: (qword0, qword1). A
    /// device writes completed descriptors back in bursts, whole cache lines at a time; one store
    /// per descriptor as each frame lands would hand the line the driver is polling back and forth
    /// once per frame instead of once per burst.
    wb: [(u64, u64); WB_BATCH],
    wb_len: usize,
    wb_first: u32,
    /// Frames delivered to this queue this poll, counted into the registers by `rx_finish`.
    got: Tally,
}

impl I40e {
    pub(super) fn check_dma_allowed(&mut self) {
        let bme = self.cfg.bus_master();
        if !bme && !self.dma_without_bme_recorded {
            self.faults.record(0, 0, "dma without bus master enable");
        }
        self.dma_without_bme_recorded = !bme;
    }

    /// Walks every enabled TX queue from its head to QTX_TAIL.
    pub(super) fn process_tx<'d>(&mut self, xl: &mut Xlate<'d>, links: &mut Links, rx: &mut RxSet<'d>) -> bool {
        if self.tx_active_dirty {
            self.tx_active_dirty = false;
            self.tx_active.clear();
            for q in 0..PF_QUEUES {
                if self.txq[q as usize].ctx.is_some() {
                    self.tx_active.push(q);
                }
            }
        }
        let mut did = false;
        let mut i = 0;
        while i < self.tx_active.len() {
            let q = self.tx_active[i];
            i += 1;
            did |= self.tx_queue(xl, links, q, rx);
        }
        did
    }

    fn tx_queue<'d>(&mut self, xl: &mut Xlate<'d>, links: &mut Links, q: u32, rx: &mut RxSet<'d>) -> bool {
        let t = self.txq[q as usize];
        let Some(ctx) = t.ctx else { return false };
        let tail = self.page32(qtx_tail(q));
        if tail == t.head || t.stalled_at_tail == Some(tail) {
            return false;
        }
        if tail >= ctx.qlen {
            self.faults.record(u64::from(tail), u64::from(ctx.qlen), "tx tail beyond ring");
            self.txq[q as usize].stalled_at_tail = Some(tail);
            return false;
        }
        self.check_dma_allowed();
        let mut head = t.head;
        // One translation for the whole ring this poll; a ring not wholly inside one DMA map
        // faults before any of it is read.
        let Some(descs) = xl.view(ctx.base, u64::from(ctx.qlen) * TX_DESC) else {
            self.faults.record(ctx.base.wrapping_add(u64::from(head) * TX_DESC), TX_DESC, "tx descriptor read");
            self.txq[q as usize].stalled_at_tail = Some(tail);
            return false;
        };
        let (mut n, mut completed) = (0, false);
        let mut sent = Tally::default();
        let todo = ((tail + ctx.qlen - head) % ctx.qlen).min(BUDGET);
        // Whether the frames' ring (the internal loopback's, or the wire's) can take a burst loop.
        let mut ringed = true;
        let internal = self.fw.lb_mode & (LB_PHY_LOCAL | LB_MAC_LOCAL) != 0;
        let sends = self.link_up() || self.fw.lb_mode != 0;
        while n < todo {
            if self.tx_frame.is_empty() && links.internal.is_empty() && links.wire.loops_back_idle() {
                let (k, rs) = self.tx_cut_run(xl, &descs, &ctx, head, todo - n, rx, &mut sent);
                head = (head + k) % ctx.qlen;
                n += k;
                completed |= rs;
                if n == todo {
                    break;
                }
            } else if ringed && sends && self.tx_frame.is_empty() {
                let (mut k, mut rs) = (0, false);
                let mut run = |r: &mut FrameRing| {
                    (k, rs) = self.tx_ring_run(xl, &descs, &ctx, head, todo - n, r, &mut sent);
                };
                if internal {
                    run(&mut links.internal);
                } else {
                    ringed = links.wire.tx_ring(&mut run);
                }
                head = (head + k) % ctx.qlen;
                n += k;
                completed |= rs;
                if n == todo {
                    break;
                }
            }
            let o = head as usize * TX_DESC as usize;
            prefetch_ahead(&descs, o, (todo - n) as usize, TX_DESC as usize);
            // Inside the ring view by construction (head < qlen).
            let (buf, qw1) = descs.load_u64_pair(o).unwrap_or_default();
            let addr = ctx.base.wrapping_add(o as u64);
            let cmd = (qw1 >> TXD_CMD_SHIFT) & 0x3ff;
            match qw1 & TXD_DTYPE_MASK {
                TXD_DTYPE_DATA => {
                    let len = ((qw1 >> TXD_BSZ_SHIFT) & TXD_BSZ_MASK) as usize;
                    if cmd & TXD_CMD_EOP != 0 && self.tx_frame.is_empty() && self.tx_direct_ok(len) {
                        self.tx_direct(xl, links, buf, len, rx, &mut sent);
                    } else {
                        self.tx_gather(xl, buf, len);
                        if cmd & TXD_CMD_EOP != 0 {
                            self.tx_finish_frame(links);
                        }
                    }
                    if cmd & TXD_CMD_RS != 0 {
                        if !ctx.head_wb_ena && !Self::tx_writeback(&descs, o) {
                            self.faults.record(addr + 8, 8, "tx descriptor write-back");
                        }
                        completed = true;
                    }
                }
                // Context and flow-director programming descriptors: offloads we do not model.
                TXD_DTYPE_CONTEXT | TXD_DTYPE_FDIR => {}
                _ => self.faults.record(addr, TX_DESC, "tx descriptor type invalid"),
            }
            head = if head + 1 == ctx.qlen { 0 } else { head + 1 };
            n += 1;
        }
        self.count_tx(sent);
        if n > 0 {
            self.txq[q as usize].head = head;
            // The written-back head: one 32-bit Release store after the buffer reads.
            if ctx.head_wb_ena
                && completed
                && !xl.view(ctx.head_wb_addr, 4).is_some_and(|v| v.store_u32(0, head, Ordering::Release))
            {
                self.faults.record(ctx.head_wb_addr, 4, "tx head write-back");
            }
        }
        if completed {
            self.queue_interrupt(q, true);
        }
        n > 0
    }

    /// The cut-through fast path of an idle loopback wire (nothing waiting in the internal
    /// loopback ring either, no internal loopback mode, the link up): from descriptor `head` on,
    /// at most `todo`, as long as each is a one-descriptor data frame of 14 bytes or more whose TX
    /// buffer translates and whose receive queue takes it as is (a context stripping the FCS, one
    /// buffer, a usable ring, within the largest frame), it goes from its TX buffer straight into
    /// an RX buffer, with the filters, counters, misses, faults and write-backs of
    /// [`I40e::tx_direct`] and [`I40e::rx_cut_through`]: one loop, the filter verdict kept while
    /// the header repeats ([`Verdict`]). The first descriptor that is anything else is left to
    /// the general path. Returns how many descriptors it handled and whether one asked for a
    /// status write-back (RS).
    #[allow(clippy::too_many_arguments)]
    fn tx_cut_run<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        descs: &DmaView<'d>,
        ctx: &TxContext,
        head: u32,
        todo: u32,
        rx: &mut RxSet<'d>,
        sent: &mut Tally,
    ) -> (u32, bool) {
        if self.fw.lb_mode & (LB_PHY_LOCAL | LB_MAC_LOCAL) != 0 || !self.link_up() {
            return (0, false);
        }
        let max_frame = u64::from(self.fw.max_frame);
        // Without RSS every frame goes to the VSI's first queue.
        let fixed = (!self.rss.on).then(|| self.rx_target(&[], rx));
        // The receive context of the last frame's queue, checked for this path (copied once per
        // queue change, not per frame).
        let mut cur: Option<(u32, RxContext)> = None;
        let mut tx = Tally::default();
        // The filters look at the destination address and a VLAN tag (bytes 12..16).
        let mut v = Verdict::new(NO_KEY);
        let (mut h, mut n, mut rs) = (head, 0, false);
        while n < todo {
            // Without RSS, once the queue is known to take frames this way, a span first (see
            // `cut_span`); the frame it stops at takes the per-frame work below.
            if let (Some((Some(q), qw0, qw1_rss)), Some((cq, c))) = (fixed, cur) {
                let b = self.batch(rx, q);
                if cq == q && b.state == TailState::Usable && b.descs.is_some() {
                    let k =
                        (todo - n).min(ctx.qlen - h).min(b.free).min(c.qlen - b.head).min((WB_BATCH - b.wb_len) as u32);
                    // None free known (the tail is read again below) or the write-backs held
                    // are a whole batch (flushed below): the per-frame work.
                    if k > 0 {
                        let span = Span { ctx, h, k, c: &c, qw0, qw1_rss, max_frame };
                        let (done, span_rs) = Self::cut_span(xl, descs, span, b, &v, &mut tx);
                        rs |= span_rs;
                        n += done;
                        h = if h + done == ctx.qlen { 0 } else { h + done };
                        if done == k {
                            continue;
                        }
                    }
                }
            }
            let o = h as usize * TX_DESC as usize;
            prefetch_ahead(descs, o, (todo - n) as usize, TX_DESC as usize);
            let Some((buf, qw1)) = descs.load_u64_pair(o) else { break };
            let Some((cmd, len)) = one_desc_frame(qw1) else { break };
            let wire_len = len.max(MIN_FRAME);
            let Some(src) = xl.view(buf, len as u64) else { break };
            let mut hdr = [0u8; HDR];
            if !src.read(0, &mut hdr[..len.min(HDR)]) {
                break;
            }
            let (q, qw0, qw1_rss) = match fixed {
                Some(t) => t,
                None => {
                    // The headers RSS hashes (zeros past a short frame, as padding).
                    let Some(n) = rss_head(&mut self.rss_head, &src, len, wire_len) else { break };
                    self.rx_target(&self.rss_head[..n], rx)
                }
            };
            let Some(q) = q else { break };
            let b = self.batch(rx, q);
            let c = match cur {
                Some((cq, c)) if cq == q => c,
                _ => {
                    let Some(c) = b.ctx else { break };
                    cur = Some((q, c));
                    c
                }
            };
            // Within the port's and the queue's largest frame (RXMAX 0: no limit of its own).
            let len_fcs = wire_len as u64 + FCS;
            let fits = len_fcs <= max_frame && (c.rxmax == 0 || len_fcs <= u64::from(c.rxmax));
            if !(c.crcstrip && wire_len <= c.dbuff && fits) {
                break;
            }
            let (keep, class) =
                v.judge(filter_key(&hdr), wire_len >= HDR, || (self.accept(&hdr, wire_len), dest(&hdr)));
            // The tail is read for a frame the filters take (as `rx_admit` does).
            let b = self.batch(rx, q);
            if keep && b.state == TailState::Unread {
                self.rx_read_tail(b, &c);
            }
            if keep && b.state != TailState::Usable {
                break;
            }
            tx.add(wire_len as u64, class);
            if !keep {
                self.totals.rx_filtered += 1;
            } else if !self.rx_room(b, &c, 1) {
                self.count_missed();
            } else if self.rx_place(xl, b, &c, wire_len, (true, qw0, qw1_rss), |d| {
                d.copy_from(0, &src, 0, len) && (wire_len == len || d.fill(len, wire_len - len, 0))
            }) {
                b.got.add(wire_len as u64, class);
                b.delivered = true;
            }
            if cmd & TXD_CMD_RS != 0 {
                if !ctx.head_wb_ena && !Self::tx_writeback(descs, o) {
                    self.faults.record(ctx.base.wrapping_add(o as u64 + 8), 8, "tx descriptor write-back");
                }
                rs = true;
            }
            h = if h + 1 == ctx.qlen { 0 } else { h + 1 };
            n += 1;
        }
        sent.merge(tx);
        (n, rs)
    }

    /// [`I40e::tx_cut_run`]'s span without RSS: `k` frames from TX descriptor `h` on (before the
    /// ring's end) into the fixed queue's descriptors from `b.head` on (free, before the ring's
    /// end, with write-back room for all), each a one-descriptor data frame of 16 bytes or more
    /// that fits the queue as is, kept by the last verdict (unicast), with both buffers in the
    /// map the last translation fell in ([`crate::dma::Region`]). Per frame: the descriptor
    /// loads, one copy, the write-back. No call and few live values. Stops before the first
    /// other frame, leaving it for the per-frame work. Returns the frames done and whether one
    /// asked for a status write-back (RS).
    #[inline(never)]
    fn cut_span<'d>(
        xl: &Xlate<'d>,
        descs: &DmaView<'d>,
        sp: Span<'_>,
        b: &mut RxBatch<'d>,
        v: &Verdict<(u64, u32)>,
        tx: &mut Tally,
    ) -> (u32, bool) {
        // The caller keeps `c` only once it passed the per-frame checks (FCS stripped).
        debug_assert!(sp.c.crcstrip);
        let Some(ring) = b.descs else { return (0, false) };
        let dlen = sp.c.desc_len() as usize;
        let (t0, r0, k) = (sp.h as usize * TX_DESC as usize, b.head as usize * dlen, sp.k as usize);
        let (Some(map), Some(txd), Some(rxd)) = (
            xl.region(),
            descs.unlogged().and_then(|d| d.sub(t0, k * TX_DESC as usize)),
            ring.unlogged().and_then(|d| d.sub(r0, k * dlen)),
        ) else {
            return (0, false);
        };
        // The largest frame the port and the queue take as is, and a buffer holds, FCS stripped.
        let mut lim = sp.c.dbuff.min((sp.max_frame.saturating_sub(FCS)) as usize);
        if sp.c.rxmax != 0 {
            lim = lim.min((u64::from(sp.c.rxmax).saturating_sub(FCS)) as usize);
        }
        if b.wb_len == 0 {
            b.wb_first = b.head;
        }
        let wb = &mut b.wb[b.wb_len..b.wb_len + k];
        for line in (0..k * TX_DESC as usize).step_by(64) {
            txd.prefetch(line);
        }
        for line in (0..k * dlen).step_by(64) {
            rxd.prefetch(line);
        }
        let (mut i, mut rs, mut bytes) = (0, false, 0u64);
        while i < wb.len() {
            let o = i * TX_DESC as usize;
            let Some((buf, qw1)) = txd.load_u64_pair(o) else { break };
            let Some((cmd, len)) = one_desc_frame(qw1) else { break };
            let wire_len = len.max(MIN_FRAME);
            if len < HDR || wire_len > lim {
                break;
            }
            let Some(src) = map.view(buf, len) else { break };
            let (Some(w0), Some(w1)) = (src.load_u64(0, Ordering::Relaxed), src.load_u64(8, Ordering::Relaxed)) else {
                break;
            };
            // `filter_key` of the header's 16 bytes.
            if v.hit((w0 & 0xffff_ffff_ffff, (w1 >> 32) as u32), true) != Some((true, Dest::Unicast)) {
                break;
            }
            let Some(pkt) = rxd.load_u64(i * dlen, Ordering::Relaxed) else { break };
            let Some(dst) = map.view(pkt, wire_len) else { break };
            if !(dst.copy_from(0, &src, 0, len) && (wire_len == len || dst.fill(len, wire_len - len, 0))) {
                break;
            }
            wb[i] = (
                sp.qw0,
                RXD_STATUS_DD
                    | RXD_STATUS_EOF
                    | sp.qw1_rss
                    | ((wire_len as u64 & RXD_LEN_PBUF_MASK) << RXD_LEN_PBUF_SHIFT),
            );
            bytes += wire_len as u64;
            if cmd & TXD_CMD_RS != 0 {
                // In range: the descriptor was just read at `o`.
                if !sp.ctx.head_wb_ena {
                    Self::tx_writeback(&txd, o);
                }
                rs = true;
            }
            i += 1;
        }
        let done = i as u32;
        if done > 0 {
            let t = Tally { frames: done, bytes, bcast: 0, mcast: 0 };
            tx.merge(t);
            b.got.merge(t);
            b.delivered = true;
            b.wb_len += i;
            b.head = if b.head + done == sp.c.qlen { 0 } else { b.head + done };
            b.free -= done;
            b.moved = true;
        }
        (done, rs)
    }

    /// The burst loop of frames that go onto a ring (the wire's, [`Wire::tx_ring`], or the
    /// internal loopback's): from descriptor `head` on, at most `todo`, each one-descriptor data
    /// frame of 14 bytes or more whose TX buffer translates goes from there into `r`, padded to
    /// 60 bytes, one copy, with the counters and write-backs of [`I40e::tx_direct`]. The caller
    /// checked that frames go out (the link, or a loopback mode). The first descriptor that is
    /// anything else is left to the general path. Returns how many descriptors it handled and
    /// whether one asked for a status write-back (RS).
    #[allow(clippy::too_many_arguments)]
    fn tx_ring_run(
        &mut self,
        xl: &mut Xlate<'_>,
        descs: &DmaView<'_>,
        ctx: &TxContext,
        head: u32,
        todo: u32,
        r: &mut FrameRing,
        sent: &mut Tally,
    ) -> (u32, bool) {
        let mut tx = Tally::default();
        let (mut h, mut n, mut rs) = (head, 0, false);
        while n < todo {
            // A span first (up to the ring's end, see `tx_ring_span`); the descriptor it stops
            // at takes the per-descriptor work below.
            let k = (todo - n).min(ctx.qlen - h);
            let (done, span_rs) = Self::wire_tx_span(xl, descs, ctx, h, k, r, &mut tx);
            rs |= span_rs;
            n += done;
            h = if h + done == ctx.qlen { 0 } else { h + done };
            if done == k {
                continue;
            }
            let o = h as usize * TX_DESC as usize;
            prefetch_ahead(descs, o, (todo - n) as usize, TX_DESC as usize);
            let Some((buf, qw1)) = descs.load_u64_pair(o) else { break };
            if let Some((cmd, len)) = one_desc_frame(qw1) {
                let wire_len = len.max(MIN_FRAME);
                let Some(src) = xl.view(buf, len as u64) else { break };
                let Some(w) = push_padded(r, &src, len, wire_len) else { break };
                tx.add(wire_len as u64, dest(&w.to_le_bytes()[..6]));
                if cmd & TXD_CMD_RS != 0 {
                    if !ctx.head_wb_ena && !Self::tx_writeback(descs, o) {
                        self.faults.record(ctx.base.wrapping_add(o as u64 + 8), 8, "tx descriptor write-back");
                    }
                    rs = true;
                }
            } else if !matches!(qw1 & TXD_DTYPE_MASK, TXD_DTYPE_CONTEXT | TXD_DTYPE_FDIR) {
                break;
            }
            // (A context or flow director descriptor: offloads we do not model, no write-back,
            // as on the general path; one before each frame keeps the burst in this loop.)
            h = if h + 1 == ctx.qlen { 0 } else { h + 1 };
            n += 1;
        }
        sent.merge(tx);
        (n, rs)
    }

    /// [`I40e::tx_ring_run`]'s span ([`tx_ring_span`]): `k` descriptors from `h` on, before the
    /// ring's end, onto `r`, each status write-back the done DTYPE (none with head write-back).
    #[inline(never)]
    fn wire_tx_span(
        xl: &Xlate<'_>,
        descs: &DmaView<'_>,
        ctx: &TxContext,
        h: u32,
        k: u32,
        r: &mut FrameRing,
        tx: &mut Tally,
    ) -> (u32, bool) {
        let head_wb = ctx.head_wb_ena;
        tx_ring_span(
            xl,
            descs,
            h as usize * TX_DESC as usize,
            k as usize,
            r,
            tx,
            |qw1| one_desc_frame(qw1).map(|(cmd, len)| (len, len.max(MIN_FRAME), cmd & TXD_CMD_RS != 0)),
            |txd, o| {
                if !head_wb {
                    Self::tx_writeback(txd, o);
                }
            },
        )
    }

    /// True if a one-descriptor frame of `len` bytes goes out (on the wire or looped back) as is.
    fn tx_direct_ok(&self, len: usize) -> bool {
        (14..=MAX_FRAME).contains(&len) && (self.link_up() || self.fw.lb_mode != 0)
    }

    /// A one-descriptor frame (14 bytes or more), padded to 60: guest buffer -> wire buffer (or
    /// internal loopback ring), one copy; or, on an idle loopback wire, guest buffer -> RX buffer
    /// (see [`Wire::loops_back_idle`] and [`I40e::rx_cut_through`]).
    fn tx_direct<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        links: &mut Links,
        buf: u64,
        len: usize,
        rx: &mut RxSet<'d>,
        sent: &mut Tally,
    ) {
        let wire_len = len.max(MIN_FRAME);
        let src = xl.view(buf, len as u64);
        let internal = self.fw.lb_mode & (LB_PHY_LOCAL | LB_MAC_LOCAL) != 0;
        if let Some(src) = &src {
            // The frame would be the next one this device receives from the wire, and received
            // at all (frames arriving while the link is down are dropped unseen).
            if !internal && links.internal.is_empty() && links.wire.loops_back_idle() && self.link_up() {
                // The header decides filters and counters (zeros past a short frame, as padding).
                let mut hdr = [0u8; HDR];
                src.read(0, &mut hdr[..len.min(HDR)]);
                if self.rx_cut_through(xl, src, len, wire_len, &hdr, rx) {
                    sent.add(wire_len as u64, dest(&hdr));
                    return;
                }
            }
        }
        let mut read_ok = true;
        let mut class = None;
        let mut fill = |slot: &mut [u8]| {
            if !src.as_ref().is_some_and(|s| s.read(0, &mut slot[..len])) {
                read_ok = false;
                return false;
            }
            if len < wire_len {
                slot[len..].fill(0);
            }
            class = Some(dest(slot));
            true
        };
        if internal {
            links.internal.push_with(wire_len, &mut fill);
        } else {
            links.wire.transmit_with(wire_len, &mut fill);
        }
        if !read_ok {
            self.faults.record(buf, len as u64, "tx buffer read");
        }
        if let Some(d) = class {
            sent.add(wire_len as u64, d);
        }
    }

    /// Adds a burst's transmitted frames to the counters (GOTC with the FCS, UPTC, MPTC, BPTC)
    /// and the totals.
    fn count_tx(&mut self, t: Tally) {
        if t.frames == 0 {
            return;
        }
        let c = &mut self.counters;
        c.gotc += t.bytes + FCS * u64::from(t.frames);
        c.bptc += u64::from(t.bcast);
        c.mptc += u64::from(t.mcast);
        c.uptc += u64::from(t.frames - t.bcast - t.mcast);
        self.totals.tx_packets += u64::from(t.frames);
        self.totals.tx_bytes += t.bytes;
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

    fn tx_finish_frame(&mut self, links: &mut Links) {
        let mut frame = std::mem::take(&mut self.tx_frame);
        if frame.len() >= 14 {
            if frame.len() < MIN_FRAME {
                frame.resize(MIN_FRAME, 0);
            }
            if !self.link_up() && self.fw.lb_mode == 0 {
                self.counters.tdold += 1;
            } else {
                let mut one = Tally::default();
                one.add(frame.len() as u64, dest(&frame));
                self.count_tx(one);
                if self.fw.lb_mode & (LB_PHY_LOCAL | LB_MAC_LOCAL) != 0 {
                    links.internal.push(&frame);
                } else {
                    links.wire.transmit(&frame);
                }
            }
        }
        frame.clear();
        self.tx_frame = frame;
    }

    /// Receive filters: promiscuous modes of the VSI, else a perfect MAC filter. `head` is the
    /// first `len.min(HDR)` bytes of a frame of `len` bytes.
    fn accept(&self, head: &[u8], len: usize) -> bool {
        if len < 14 || head.len() < 14 {
            return false;
        }
        let vsi = &self.fw.vsi;
        let dst = &head[..6];
        let mcast = dst[0] & 1 != 0;
        if is_broadcast(dst) && vsi.promisc & PROMISC_BROADCAST != 0 {
            return true;
        }
        if mcast && !is_broadcast(dst) && vsi.promisc & PROMISC_MULTICAST != 0 {
            return true;
        }
        if !mcast && vsi.promisc & PROMISC_UNICAST != 0 {
            return true;
        }
        let vlan = if head[12..14] == [0x81, 0x00] && len >= 16 && head.len() >= 16 {
            u16::from_be_bytes([head[14], head[15]]) & 0xfff
        } else {
            0
        };
        vsi.filters.iter().any(|(m, v)| m == dst && v.is_none_or(|v| v == vlan))
    }

    /// The receive queues for this poll: the VSI's first set up now, the others when RSS picks
    /// them; nothing is read from the driver until a frame comes.
    pub(super) fn rx_start(&self, set: &mut RxSet<'_>) {
        let first = self.fw.vsi.rx_queue();
        set.first = first;
        if first < PF_QUEUES {
            set.index[first as usize] = 0;
            set.batches.push(self.rx_batch(first));
        }
    }

    /// Where a frame goes: its PF queue (`None` if the VSI's mapping names no queue for it), the
    /// write-back's qword0 and the qword1 bits RSS sets (PTYPE, FLTSTAT).
    #[inline(always)]
    fn rx_target(&self, head: &[u8], set: &RxSet<'_>) -> (Option<u32>, u64, u64) {
        let (q, qw0, qw1) = if self.rss.on {
            let (vq, qw0, qw1) = self.rss_pick(head);
            (if vq == 0 { set.first } else { self.fw.vsi.pf_queue(vq) }, qw0, qw1)
        } else {
            (set.first, 0, PTYPE_L2 << RXD_PTYPE_SHIFT)
        };
        ((q < PF_QUEUES).then_some(q), qw0, qw1)
    }

    /// PF queue `q` of `set` (below `PF_QUEUES`), set up on first use.
    #[inline]
    fn batch<'s, 'd>(&self, set: &'s mut RxSet<'d>, q: u32) -> &'s mut RxBatch<'d> {
        let q = q as usize % PF_QUEUES as usize;
        let mut i = usize::from(set.index[q]);
        if i >= set.batches.len() {
            // At most one batch per queue: the set never fills.
            i = set.batches.len();
            set.batches.push(self.rx_batch(q as u32));
            set.index[q] = i as u8;
        }
        &mut set.batches[i]
    }

    /// PF queue `q` for this poll.
    fn rx_batch<'d>(&self, q: u32) -> RxBatch<'d> {
        RxBatch {
            q,
            ctx: self.rxq.get(q as usize).and_then(|r| r.ctx),
            descs: None,
            state: TailState::Unread,
            head: self.rxq.get(q as usize).map_or(0, |r| r.head),
            tail: 0,
            free: 0,
            moved: false,
            delivered: false,
            wb: [(0, 0); WB_BATCH],
            wb_len: 0,
            wb_first: 0,
            got: Tally::default(),
        }
    }

    /// Moves frames from the internal loopback and the wire into the VSI's receive queues.
    pub(super) fn process_rx<'d>(&mut self, xl: &mut Xlate<'d>, links: &mut Links, set: &mut RxSet<'d>) -> bool {
        let internal: &mut FrameRing = &mut links.internal;
        let mut n = internal.drain_in(BUDGET as usize, |f: &[u8]| self.rx_frame_in(xl, f, set));
        let link = self.link_up();
        let wire: &mut dyn Wire = links.wire.as_mut();
        if !wire.backpressure() && n < BUDGET as usize {
            // Every frame is taken (delivered, filtered or missed): one burst through the
            // wire's ring when it has one (one lock, no call per frame).
            let ringed = wire.rx_ring(&mut |r| {
                // An empty ring (the usual poll of a cut-through loopback) sets nothing up.
                let mut fast = link && !r.is_empty();
                while n < BUDGET as usize {
                    if fast {
                        let (k, again) = self.rx_ring_run_first(xl, r, BUDGET as usize - n, set);
                        n += k;
                        fast = again;
                        if n == BUDGET as usize {
                            break;
                        }
                    }
                    let Some(f) = r.front() else { break };
                    if link {
                        self.rx_frame_in(xl, f, set);
                    }
                    r.pop();
                    n += 1;
                }
            });
            if ringed {
                return n > 0;
            }
        }
        // Nothing can be received now: leave frames on a wire that can hold them.
        let hold = wire.backpressure() && !(link && self.rx_contexts_loaded(set));
        let mut take = |f: &[u8]| {
            if link {
                self.rx_frame_in(xl, f, set)
            }
        };
        if !wire.backpressure() {
            // Every frame is taken (delivered, filtered or missed): one burst.
            n += wire.receive_burst(BUDGET as usize - n, &mut take);
            return n > 0;
        }
        while !hold && n < BUDGET as usize && wire.receive_with(&mut take) {
            n += 1;
        }
        n > 0
    }

    /// The receive burst loop off a ring ([`Wire::rx_ring`]) for the VSI's first queue (RSS off,
    /// the link up, a receive context that strips the FCS, a usable ring): each frame of 16
    /// bytes or more that fits one buffer and the largest frame goes from the ring into an RX
    /// buffer as [`I40e::rx_frame_in`] takes it, with the filter verdict kept while the header
    /// repeats and the queue's state in locals (written back before anything else looks at
    /// it). Stops at the first other frame, leaving it in `r`. Returns how many frames it took
    /// and whether the loop may take more this poll (false once the queue cannot).
    fn rx_ring_run_first<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        r: &mut FrameRing,
        max: usize,
        set: &mut RxSet<'d>,
    ) -> (usize, bool) {
        let first = set.first;
        if self.rss.on || first >= PF_QUEUES {
            return (0, false);
        }
        let (mut v, port_max) = (set.verdict, u64::from(self.fw.max_frame));
        let b = self.batch(set, first);
        let Some(c) = b.ctx.filter(|c| c.crcstrip) else { return (0, false) };
        // The tail is read for the first frame the filters take, as `rx_admit` reads it (not
        // before: an empty or wholly filtered burst reads nothing from the driver).
        if b.state == TailState::Unusable {
            return (0, false);
        }
        // The ring's translation, taken as the queue's (`rx_descs`: the bus master check) when
        // the first frame needs a descriptor; a ring outside the DMA maps is left to the
        // general path, which records the fault when a frame needs it.
        let dlen = c.desc_len() as usize;
        let mut taken = b.descs.is_some();
        let Some(ring) = b.descs.or_else(|| xl.view(c.base, u64::from(c.qlen) * dlen as u64)) else {
            return (0, false);
        };
        // The largest frame this loop takes: one buffer, within the port's and the queue's
        // largest frame with the FCS (RXMAX 0: no limit of its own).
        let mut limit = (c.dbuff as u64).min(port_max.saturating_sub(FCS));
        if c.rxmax != 0 {
            limit = limit.min(u64::from(c.rxmax).saturating_sub(FCS));
        }
        let qw1_fixed = RXD_STATUS_DD | RXD_STATUS_EOF | PTYPE_L2 << RXD_PTYPE_SHIFT;
        let (mut rh, mut free, mut wbn) = (b.head, b.free, b.wb_len);
        let (mut got, mut n, mut stop) = (Tally::default(), 0, false);
        while n < max {
            // A span first, once the ring is the queue's and descriptors are known free (see
            // `wire_rx_span`); the frame it stops at takes the per-frame work below.
            let k = (max - n).min(r.len()).min(free as usize).min((c.qlen - rh) as usize).min(WB_BATCH - wbn);
            if taken && k > 0 {
                if wbn == 0 {
                    b.wb_first = rh;
                }
                let wb = &mut b.wb[wbn..wbn + k];
                let (done, bytes) =
                    Self::wire_rx_span(xl, r, &ring, rh as usize * dlen, dlen, limit, qw1_fixed, &v, wb);
                if done > 0 {
                    got.merge(Tally { frames: done as u32, bytes, bcast: 0, mcast: 0 });
                    wbn += done;
                    rh = if rh as usize + done == c.qlen as usize { 0 } else { rh + done as u32 };
                    free -= done as u32;
                    b.moved = true;
                    n += done;
                }
                if done == k {
                    continue;
                }
            }
            let Some(frame) = r.front() else { break };
            let len = frame.len();
            let Some(hdr) = frame.first_chunk::<HDR>() else { break };
            if len as u64 > limit {
                break;
            }
            let (accepted, class) = v.judge(filter_key(hdr), true, || (self.accept(hdr, len), dest(frame)));
            if !accepted {
                self.totals.rx_filtered += 1;
            } else {
                if free == 0 {
                    // QRX_TAIL, the first time this poll or again (the driver refills while
                    // we deliver).
                    (b.head, b.free) = (rh, free);
                    if self.rx_room(b, &c, 1) {
                        free = b.free;
                    }
                    stop = b.state != TailState::Usable;
                }
                if free == 0 {
                    self.count_missed();
                } else {
                    if !taken {
                        self.check_dma_allowed();
                        b.descs = Some(ring);
                        taken = true;
                    }
                    if wbn == WB_BATCH {
                        b.wb_len = wbn;
                        self.rx_flush(b);
                        wbn = 0;
                    }
                    if wbn == 0 {
                        b.wb_first = rh;
                    }
                    let o = rh as usize * dlen;
                    prefetch_ahead(&ring, o, free as usize, dlen);
                    // Inside the ring view by construction (rh < qlen).
                    let pkt = ring.load_u64(o, Ordering::Relaxed).unwrap_or_default();
                    b.wb[wbn] = if xl.view(pkt, len as u64).is_some_and(|d| d.write(0, frame)) {
                        got.add(len as u64, class);
                        (0, qw1_fixed | (len as u64 & RXD_LEN_PBUF_MASK) << RXD_LEN_PBUF_SHIFT)
                    } else {
                        self.faults.record(pkt, len as u64, "rx buffer write");
                        (0, RXD_STATUS_DD | RXD_STATUS_EOF | (RXD_ERROR_RXE << RXD_ERROR_SHIFT))
                    };
                    wbn += 1;
                    rh = if rh + 1 == c.qlen { 0 } else { rh + 1 };
                    free -= 1;
                    b.moved = true;
                }
            }
            r.pop();
            n += 1;
            if stop {
                // The queue is unusable now: `rx_frame_in` takes the rest (missed).
                break;
            }
        }
        (b.head, b.free, b.wb_len) = (rh, free, wbn);
        b.got.merge(got);
        b.delivered |= got.frames > 0;
        set.verdict = v;
        (n, !stop)
    }

    /// [`I40e::rx_ring_run_first`]'s span: the oldest frames of `r` (as many as `wb` holds) into
    /// the ring `ring`'s descriptors of `dlen` bytes from byte `first` on (free, before the
    /// ring's end), each of one buffer up to `limit` bytes, kept by the last verdict (unicast),
    /// with a buffer in the map the last translation fell in: descriptor load, one copy, the
    /// write-back into `wb` (`qw1_fixed` and the length), the frames taken off the ring once at
    /// the end. Stops before the first other frame, leaving it in `r`. Returns the frames taken
    /// and their bytes.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn wire_rx_span(
        xl: &Xlate<'_>,
        r: &mut FrameRing,
        ring: &DmaView<'_>,
        first: usize,
        dlen: usize,
        limit: u64,
        qw1_fixed: u64,
        v: &Verdict<(u64, u32)>,
        wb: &mut [(u64, u64)],
    ) -> (usize, u64) {
        let (Some(map), Some(rxd)) = (xl.region(), ring.unlogged().and_then(|d| d.sub(first, wb.len() * dlen))) else {
            return (0, 0);
        };
        for line in (0..wb.len() * dlen).step_by(64) {
            rxd.prefetch(line);
        }
        let (mut i, mut bytes) = (0, 0u64);
        while i < wb.len() {
            let Some(frame) = r.peek(i) else { break };
            let len = frame.len();
            let Some(hdr) = frame.first_chunk::<HDR>() else { break };
            if len as u64 > limit || v.hit(filter_key(hdr), true) != Some((true, Dest::Unicast)) {
                break;
            }
            let Some(pkt) = rxd.load_u64(i * dlen, Ordering::Relaxed) else { break };
            let Some(dst) = map.view(pkt, len) else { break };
            if !dst.write(0, frame) {
                break;
            }
            wb[i] = (0, qw1_fixed | (len as u64 & RXD_LEN_PBUF_MASK) << RXD_LEN_PBUF_SHIFT);
            bytes += len as u64;
            i += 1;
        }
        r.pop_n(i);
        (i, bytes)
    }

    /// Whether every queue a frame may go to (the first, and those the RSS table names) has its
    /// receive context; a queue the driver stopped (QENA_REQ cleared) does not hold the others
    /// back (frames for it are missed).
    fn rx_contexts_loaded(&self, set: &mut RxSet<'_>) -> bool {
        let mut m = if self.rss.on { self.rss.queues | 1 } else { 1 };
        while m != 0 {
            let vq = m.trailing_zeros();
            m &= m - 1;
            let q = if vq == 0 { set.first } else { self.fw.vsi.pf_queue(vq) };
            // A queue the driver stopped does not hold the others back; one not started yet (the
            // port coming up) does.
            let stopped = q < PF_QUEUES && self.rx_stopped & (1u64 << q) != 0;
            if !stopped && (q >= PF_QUEUES || self.batch(set, q).ctx.is_none()) {
                return false;
            }
        }
        true
    }

    /// Ends the poll's receive work: per queue, write-backs stored, then the head moved and the
    /// queue's interrupt raised.
    pub(super) fn rx_finish(&mut self, set: &mut RxSet<'_>) {
        for b in set.batches.iter_mut() {
            self.rx_flush(b);
            self.count_rx(b.got.take());
            if b.moved {
                self.rxq[b.q as usize].head = b.head;
            }
            if b.delivered {
                self.queue_interrupt(b.q, false);
            }
        }
    }

    /// A frame this device is transmitting on an idle loopback wire, moved from its TX buffer `src`
    /// (`len` bytes, `wire_len` with padding, `hdr` its first bytes) straight into an RX buffer, as
    /// [`I40e::rx_frame_in`] would take it off the wire. False (nothing done) if it must take the
    /// wire instead: no receive context, the FCS is kept, or the frame needs more than one buffer.
    fn rx_cut_through<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        src: &DmaView<'_>,
        len: usize,
        wire_len: usize,
        hdr: &[u8; HDR],
        set: &mut RxSet<'d>,
    ) -> bool {
        let (q, qw0, qw1) = if self.rss.on {
            // The headers RSS hashes (zeros past a short frame, as padding).
            let Some(n) = rss_head(&mut self.rss_head, src, len, wire_len) else { return false };
            self.rx_target(&self.rss_head[..n], set)
        } else {
            self.rx_target(hdr, set)
        };
        let Some(q) = q else {
            // No queue in the VSI's map: missed if the filters take it, as off the wire.
            if self.accept(hdr, wire_len) {
                self.count_missed();
            } else {
                self.totals.rx_filtered += 1;
            }
            return true;
        };
        let b = self.batch(set, q);
        match b.ctx {
            Some(c) if c.crcstrip && wire_len <= c.dbuff => {}
            _ => return false,
        }
        let Some(ctx) = self.rx_admit(self.accept(hdr, wire_len), wire_len, b) else {
            return true;
        };
        if !self.rx_room(b, &ctx, 1) {
            self.count_missed();
            return true;
        }
        let fill =
            |dst: &DmaView<'_>| dst.copy_from(0, src, 0, len) && (wire_len == len || dst.fill(len, wire_len - len, 0));
        if self.rx_place(xl, b, &ctx, wire_len, (true, qw0, qw1), fill) {
            b.delivered = true;
            b.got.add(wire_len as u64, dest(hdr));
        }
        true
    }

    /// One frame for the VSI: filtered, dropped as oversize, missed, or delivered (to the VSI's
    /// first queue, or the one RSS picks).
    #[inline(always)]
    fn rx_frame_in<'d>(&mut self, xl: &mut Xlate<'d>, frame: &[u8], set: &mut RxSet<'d>) {
        let len = frame.len();
        let (q, qw0, qw1) = self.rx_target(frame, set);
        // The filters' verdict, kept while the header repeats (zeros past a short frame).
        let mut hdr = [0u8; HDR];
        hdr[..len.min(HDR)].copy_from_slice(&frame[..len.min(HDR)]);
        let (accepted, class) =
            set.verdict.judge(filter_key(&hdr), len >= HDR, || (self.accept(&frame[..len.min(HDR)], len), dest(frame)));
        let Some(q) = q else {
            if accepted {
                self.count_missed();
            } else {
                self.totals.rx_filtered += 1;
            }
            return;
        };
        let b = self.batch(set, q);
        let Some(ctx) = self.rx_admit(accepted, len, b) else {
            return;
        };
        let wb = (qw0, qw1);
        let ok = if ctx.crcstrip {
            self.rx_write(xl, frame, b, &ctx, wb)
        } else {
            let mut with_fcs = std::mem::take(&mut self.rx_frame);
            with_fcs.clear();
            with_fcs.extend_from_slice(frame);
            with_fcs.extend_from_slice(&crc32(frame).to_le_bytes());
            let ok = self.rx_write(xl, &with_fcs, b, &ctx, wb);
            self.rx_frame = with_fcs;
            ok
        };
        if ok {
            b.delivered = true;
            b.got.add(len as u64, class);
        }
    }

    /// The checks before a frame of `len` bytes is written: the receive filters (`accepted`,
    /// their verdict), the port's and the queue's largest frame, a receive context and a usable
    /// ring. Counts a frame that fails one (filtered, oversize or missed); the context otherwise.
    #[inline(always)]
    fn rx_admit(&mut self, accepted: bool, len: usize, b: &mut RxBatch<'_>) -> Option<RxContext> {
        if !accepted {
            self.totals.rx_filtered += 1;
            return None;
        }
        let len = len as u64;
        if len + FCS > u64::from(self.fw.max_frame) {
            self.counters.roc += 1;
            self.totals.rx_filtered += 1;
            return None;
        }
        let Some(ctx) = b.ctx else {
            self.count_missed();
            return None;
        };
        let usable = match b.state {
            TailState::Unread => self.rx_read_tail(b, &ctx),
            s => s == TailState::Usable,
        };
        if !usable {
            self.count_missed();
            return None;
        }
        if ctx.rxmax != 0 && len + FCS > u64::from(ctx.rxmax) {
            self.counters.roc += 1;
            self.totals.rx_filtered += 1;
            return None;
        }
        Some(ctx)
    }

    /// Adds a queue's received frames of a poll to the counters (GORC with the FCS, UPRC, MPRC,
    /// BPRC) and the totals.
    fn count_rx(&mut self, t: Tally) {
        if t.frames == 0 {
            return;
        }
        let c = &mut self.counters;
        c.gorc += t.bytes + FCS * u64::from(t.frames);
        c.bprc += u64::from(t.bcast);
        c.mprc += u64::from(t.mcast);
        c.uprc += u64::from(t.frames - t.bcast - t.mcast);
        self.totals.rx_packets += u64::from(t.frames);
        self.totals.rx_bytes += t.bytes;
    }

    fn count_missed(&mut self) {
        self.counters.rdpc += 1;
        self.totals.rx_missed += 1;
    }

    /// Reads QRX_TAIL (first use this poll, or the known free descriptors ran short). False if the
    /// ring cannot be used.
    fn rx_read_tail(&mut self, b: &mut RxBatch<'_>, ctx: &RxContext) -> bool {
        let tail = self.page32(qrx_tail(b.q));
        if b.state != TailState::Unread && tail == b.tail {
            return b.state == TailState::Usable;
        }
        b.tail = tail;
        let rq = &mut self.rxq[b.q as usize];
        if rq.stalled_at_tail == Some(tail) {
            b.state = TailState::Unusable;
        } else if tail >= ctx.qlen {
            rq.stalled_at_tail = Some(tail);
            self.faults.record(u64::from(tail), u64::from(ctx.qlen), "rx tail beyond ring");
            b.state = TailState::Unusable;
        } else {
            b.state = TailState::Usable;
            b.free = (tail + ctx.qlen - b.head) % ctx.qlen;
        }
        b.state == TailState::Usable
    }

    /// True if `need` descriptors are free, looking at QRX_TAIL again when the known ones run short.
    fn rx_room(&mut self, b: &mut RxBatch<'_>, ctx: &RxContext, need: u32) -> bool {
        if b.free >= need {
            return true;
        }
        self.rx_read_tail(b, ctx) && b.free >= need
    }

    /// Writes `data` (the frame, with its FCS unless stripped) into descriptors from `b.head` on.
    #[inline(always)]
    fn rx_write<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        data: &[u8],
        b: &mut RxBatch<'d>,
        ctx: &RxContext,
        wb: (u64, u64),
    ) -> bool {
        let need = data.len().div_ceil(ctx.dbuff).max(1);
        if !self.rx_room(b, ctx, need as u32) {
            self.count_missed();
            return false;
        }
        for (i, chunk) in data.chunks(ctx.dbuff).enumerate() {
            if !self.rx_place(xl, b, ctx, chunk.len(), (i + 1 == need, wb.0, wb.1), |v| v.write(0, chunk)) {
                return false;
            }
        }
        true
    }

    /// Fills the buffer of descriptor `b.head` with `len` bytes written by `fill` and holds back
    /// its write-back (DD, EOF if `last`, the length, `qw0` and the RSS bits `qw1_rss`; RXE and
    /// length 0 if the buffer is not writable). The caller checked there is a free descriptor.
    /// Returns whether the buffer was written; false without using the descriptor if the ring
    /// cannot be read (a fault; the queue stalls).
    #[inline(always)]
    fn rx_place<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        b: &mut RxBatch<'d>,
        ctx: &RxContext,
        len: usize,
        wb: (bool, u64, u64),
        fill: impl FnOnce(&DmaView<'_>) -> bool,
    ) -> bool {
        let Some(descs) = self.rx_descs(xl, b, ctx) else { return false };
        self.rx_put(xl, &descs, b, ctx, len, wb, fill)
    }

    /// The queue's descriptor ring, translated once per poll when the first frame needs it (a
    /// ring not wholly inside one DMA map faults before any of it is read, and the queue stalls).
    #[inline(always)]
    fn rx_descs<'d>(&mut self, xl: &mut Xlate<'d>, b: &mut RxBatch<'d>, ctx: &RxContext) -> Option<DmaView<'d>> {
        match b.descs {
            Some(d) => Some(d),
            None => self.rx_descs_translate(xl, b, ctx),
        }
    }

    /// [`I40e::rx_descs`] the first time in a poll.
    #[inline(never)]
    fn rx_descs_translate<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        b: &mut RxBatch<'d>,
        ctx: &RxContext,
    ) -> Option<DmaView<'d>> {
        self.check_dma_allowed();
        let dlen = ctx.desc_len();
        let Some(d) = xl.view(ctx.base, u64::from(ctx.qlen) * dlen) else {
            self.faults.record(ctx.base.wrapping_add(u64::from(b.head) * dlen), dlen, "rx descriptor read");
            self.rxq[b.q as usize].stalled_at_tail = Some(b.tail);
            b.state = TailState::Unusable;
            return None;
        };
        b.descs = Some(d);
        Some(d)
    }

    /// [`I40e::rx_place`] on the ring `descs` ([`I40e::rx_descs`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rx_put<'d>(
        &mut self,
        xl: &mut Xlate<'d>,
        descs: &DmaView<'d>,
        b: &mut RxBatch<'d>,
        ctx: &RxContext,
        len: usize,
        (last, qw0, qw1_rss): (bool, u64, u64),
        fill: impl FnOnce(&DmaView<'_>) -> bool,
    ) -> bool {
        if b.wb_len == WB_BATCH {
            self.rx_flush(b);
        }
        if b.wb_len == 0 {
            b.wb_first = b.head;
        }
        let dlen = ctx.desc_len() as usize;
        let o = b.head as usize * dlen;
        prefetch_ahead(descs, o, b.free as usize, dlen);
        // Inside the ring view by construction (head < qlen).
        let pkt = descs.load_u64(o, Ordering::Relaxed).unwrap_or_default();
        let ok = xl.view(pkt, len as u64).is_some_and(|v| fill(&v));
        b.wb[b.wb_len] = if ok {
            let qw1 = RXD_STATUS_DD
                | if last { RXD_STATUS_EOF } else { 0 }
                | qw1_rss
                | ((len as u64 & RXD_LEN_PBUF_MASK) << RXD_LEN_PBUF_SHIFT);
            (qw0, qw1)
        } else {
            self.faults.record(pkt, len as u64, "rx buffer write");
            (0, RXD_STATUS_DD | RXD_STATUS_EOF | (RXD_ERROR_RXE << RXD_ERROR_SHIFT))
        };
        b.wb_len += 1;
        b.head = if b.head + 1 == ctx.qlen { 0 } else { b.head + 1 };
        b.free -= 1;
        b.moved = true;
        ok
    }

    /// Stores the held-back write-backs, in ring order from `wb_first`, each with its DD qword
    /// last: qword0 (the RSS hash in bits 63:32; and qwords 2/3 of 32-byte descriptors), then
    /// qword1 with DD and the length as one 64-bit Release store. 16-byte descriptors go as runs
    /// of quadword pairs (two where the ring wraps).
    fn rx_flush(&mut self, b: &mut RxBatch<'_>) {
        let n = std::mem::take(&mut b.wb_len);
        let (Some(descs), Some(ctx)) = (b.descs, b.ctx) else { return };
        let dlen = ctx.desc_len();
        let (first, qlen) = (b.wb_first as usize, ctx.qlen as usize);
        let ok = if dlen == 16 {
            store_runs(&descs, first, qlen, 16, &b.wb[..n])
        } else {
            let mut ok = true;
            for (i, &(qw0, qw1)) in b.wb[..n].iter().enumerate() {
                let o = (first + i) % qlen * dlen as usize;
                ok &= descs.store_u64(o, qw0, Ordering::Relaxed)
                    && descs.store_u64(o + 16, 0, Ordering::Relaxed)
                    && descs.store_u64(o + 24, 0, Ordering::Relaxed)
                    && descs.store_u64(o + 8, qw1, Ordering::Release);
            }
            ok
        };
        if !ok {
            // Only a ring view shorter than its descriptor count could do this.
            self.faults.record(ctx.base.wrapping_add(first as u64 * dlen), dlen, "rx descriptor write-back");
        }
    }

    /// Descriptor write-back of the transmit descriptor at `o` of the ring: qword1 becomes DTYPE 0xF
    /// (done), one 64-bit Release store after the buffer reads, the only store to the descriptor.
    fn tx_writeback(descs: &DmaView<'_>, o: usize) -> bool {
        descs.store_u64(o + 8, TXD_DTYPE_DESC_DONE, Ordering::Release)
    }
}
