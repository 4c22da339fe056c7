//! X710 data path: QTX_TAIL / QRX_TAIL doorbells (mmapped pages), transmit data descriptors with
//! descriptor or head write-back, receive descriptors of 16 or 32 bytes, the MAC/VSI
//! receive filters, internal loopback, the wire, and the GLPRT counters.
//!
//! Bounded work per poll: at most [`BUDGET`] descriptors per TX queue and [`BUDGET`] received frames.
//! Every DMA goes through [`Dma`]; a failed one is recorded as a fault and never stops the model.
//!
//! Per frame, nothing is allocated: a one-descriptor TX frame is read from guest memory straight
//! into the wire's buffer (or the internal loopback ring) with [`Wire::transmit_with`], and a
//! received frame goes from there straight into RX buffers ([`Wire::receive_with`]). Frames spanning
//! several TX descriptors, and the FCS appended when the RX context does not strip it, go through
//! the model's staging buffers (allocated once).
//!
//! Ordering against the driver (another process): a tail doorbell is one Acquire load, read once
//! per TX queue per poll and, for RX, once per poll and again only when the known free descriptors
//! run short; a write-back is the data, then the other fields, then the word holding DD (or the
//! done DTYPE, or the written-back head) as one Release store, the last store to that descriptor.

use super::hmc::RxContext;
use super::regs::*;
use super::{I40e, Links};
use crate::dma::{Dma, DmaError};
use crate::wire::{FrameRing, Wire, MAX_FRAME};

/// Descriptors (TX) or frames (RX) handled per queue per poll.
pub const BUDGET: u32 = 256;
const TX_DESC: u64 = 16;
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
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc = (crc >> 8) ^ CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize];
    }
    !crc
}

fn is_broadcast(dst: &[u8]) -> bool {
    dst.iter().all(|b| *b == 0xff)
}

/// Destination class of a frame (at least 6 bytes), for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dest {
    Unicast,
    Multicast,
    Broadcast,
}

fn dest(frame: &[u8]) -> Dest {
    if is_broadcast(&frame[..6]) {
        Dest::Broadcast
    } else if frame[0] & 1 != 0 {
        Dest::Multicast
    } else {
        Dest::Unicast
    }
}

/// Whether the RX ring's tail has been read this poll and what it allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TailState {
    Unread,
    Usable,
    /// Stalled or faulted: frames are missed until the driver moves the tail.
    Unusable,
}

/// The VSI's receive queue as one poll sees it.
struct RxBatch {
    q: u32,
    ctx: Option<RxContext>,
    state: TailState,
    head: u32,
    tail: u32,
    /// Descriptors the device owns from `head` on, as of the last tail read.
    free: u32,
    /// The head moved (stored back after the batch).
    moved: bool,
    dma_checked: bool,
    delivered: bool,
    /// Buffer addresses of the descriptors from `head` on, read ahead in one go (loads only), so
    /// reading descriptors does not interleave with writing them back on lines the driver polls.
    ahead: [u64; READ_AHEAD],
    /// `ahead[next..len]` are valid, for descriptors `head..`.
    ahead_next: usize,
    ahead_len: usize,
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
    pub(super) fn process_tx(&mut self, dma: &mut dyn Dma, links: &mut Links) -> bool {
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
            did |= self.tx_queue(dma, links, q);
        }
        did
    }

    fn tx_queue(&mut self, dma: &mut dyn Dma, links: &mut Links, q: u32) -> bool {
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
        let (mut n, mut completed) = (0, false);
        while head != tail && n < BUDGET {
            let addr = ctx.base + u64::from(head) * TX_DESC;
            let (Ok(buf), Ok(qw1)) = (dma.read_u64(addr), dma.read_u64(addr + 8)) else {
                self.faults.record(addr, TX_DESC, "tx descriptor read");
                self.txq[q as usize].stalled_at_tail = Some(tail);
                break;
            };
            let cmd = (qw1 >> TXD_CMD_SHIFT) & 0x3ff;
            match qw1 & TXD_DTYPE_MASK {
                TXD_DTYPE_DATA => {
                    let len = ((qw1 >> TXD_BSZ_SHIFT) & TXD_BSZ_MASK) as usize;
                    if cmd & TXD_CMD_EOP != 0 && self.tx_frame.is_empty() && self.tx_direct_ok(len) {
                        self.tx_direct(dma, links, buf, len);
                    } else {
                        self.tx_gather(dma, buf, len);
                        if cmd & TXD_CMD_EOP != 0 {
                            self.tx_finish_frame(links);
                        }
                    }
                    if cmd & TXD_CMD_RS != 0 {
                        if !ctx.head_wb_ena && Self::tx_writeback(dma, addr).is_err() {
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
        if n > 0 {
            self.txq[q as usize].head = head;
            if ctx.head_wb_ena && completed && dma.publish_u32(ctx.head_wb_addr, head).is_err() {
                self.faults.record(ctx.head_wb_addr, 4, "tx head write-back");
            }
        }
        if completed {
            self.queue_interrupt(q, true);
        }
        n > 0
    }

    /// True if a one-descriptor frame of `len` bytes goes out (on the wire or looped back) as is.
    fn tx_direct_ok(&self, len: usize) -> bool {
        (14..=MAX_FRAME).contains(&len) && (self.link_up() || self.fw.lb_mode != 0)
    }

    /// A one-descriptor frame: guest buffer -> wire buffer (or loopback ring), one copy, padded to 60.
    fn tx_direct(&mut self, dma: &mut dyn Dma, links: &mut Links, buf: u64, len: usize) {
        let wire_len = len.max(MIN_FRAME);
        let mut read_ok = true;
        let mut class = None;
        let mut fill = |slot: &mut [u8]| {
            if dma.read(buf, &mut slot[..len]).is_err() {
                read_ok = false;
                return false;
            }
            slot[len..].fill(0);
            class = Some(dest(slot));
            true
        };
        if self.fw.lb_mode & (LB_PHY_LOCAL | LB_MAC_LOCAL) != 0 {
            links.internal.push_with(wire_len, &mut fill);
        } else {
            links.wire.transmit_with(wire_len, &mut fill);
        }
        if !read_ok {
            self.faults.record(buf, len as u64, "tx buffer read");
        }
        if let Some(d) = class {
            self.count_tx(wire_len as u64, d);
        }
    }

    fn count_tx(&mut self, len: u64, d: Dest) {
        let c = &mut self.counters;
        c.gotc += len + FCS;
        match d {
            Dest::Broadcast => c.bptc += 1,
            Dest::Multicast => c.mptc += 1,
            Dest::Unicast => c.uptc += 1,
        }
        self.totals.tx_packets += 1;
        self.totals.tx_bytes += len;
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

    fn tx_finish_frame(&mut self, links: &mut Links) {
        let mut frame = std::mem::take(&mut self.tx_frame);
        if frame.len() >= 14 {
            if frame.len() < MIN_FRAME {
                frame.resize(MIN_FRAME, 0);
            }
            if !self.link_up() && self.fw.lb_mode == 0 {
                self.counters.tdold += 1;
            } else {
                self.count_tx(frame.len() as u64, dest(&frame));
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

    /// Receive filters: promiscuous modes of the VSI, else a perfect MAC filter.
    fn accept(&self, frame: &[u8]) -> bool {
        if frame.len() < 14 {
            return false;
        }
        let vsi = &self.fw.vsi;
        let dst = &frame[..6];
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
        let vlan = if frame[12..14] == [0x81, 0x00] && frame.len() >= 16 {
            u16::from_be_bytes([frame[14], frame[15]]) & 0xfff
        } else {
            0
        };
        vsi.filters.iter().any(|(m, v)| m == dst && v.is_none_or(|v| v == vlan))
    }

    /// Moves frames from the internal loopback and the wire into the VSI's receive queue.
    pub(super) fn process_rx(&mut self, dma: &mut dyn Dma, links: &mut Links) -> bool {
        let q = self.fw.vsi.rx_queue();
        let mut b = RxBatch {
            q,
            ctx: self.rxq.get(q as usize).and_then(|r| r.ctx),
            state: TailState::Unread,
            head: self.rxq.get(q as usize).map_or(0, |r| r.head),
            tail: 0,
            free: 0,
            moved: false,
            dma_checked: false,
            delivered: false,
            ahead: [0; READ_AHEAD],
            ahead_next: 0,
            ahead_len: 0,
        };
        let mut n = 0;
        let internal: &mut FrameRing = &mut links.internal;
        while n < BUDGET && internal.pop_with(&mut |f: &[u8]| self.rx_frame_in(dma, f, &mut b)) {
            n += 1;
        }
        let link = self.link_up();
        let wire: &mut dyn Wire = links.wire.as_mut();
        // Nothing can be received now: leave frames on a wire that can hold them.
        let hold = !(link && b.ctx.is_some()) && wire.backpressure();
        while !hold
            && n < BUDGET
            && wire.receive_with(&mut |f: &[u8]| {
                if link {
                    self.rx_frame_in(dma, f, &mut b)
                }
            })
        {
            n += 1;
        }
        if b.moved {
            self.rxq[q as usize].head = b.head;
        }
        if b.delivered {
            self.queue_interrupt(q, false);
        }
        n > 0
    }

    /// One frame for the VSI: filtered, dropped as oversize, missed, or delivered.
    fn rx_frame_in(&mut self, dma: &mut dyn Dma, frame: &[u8], b: &mut RxBatch) {
        if !self.accept(frame) {
            self.totals.rx_filtered += 1;
            return;
        }
        let len = frame.len() as u64;
        if len + FCS > u64::from(self.fw.max_frame) {
            self.counters.roc += 1;
            self.totals.rx_filtered += 1;
            return;
        }
        if self.rx_deliver(dma, frame, b) {
            b.delivered = true;
            let c = &mut self.counters;
            c.gorc += len + FCS;
            match dest(frame) {
                Dest::Broadcast => c.bprc += 1,
                Dest::Multicast => c.mprc += 1,
                Dest::Unicast => c.uprc += 1,
            }
            self.totals.rx_packets += 1;
            self.totals.rx_bytes += len;
        }
    }

    fn count_missed(&mut self) {
        self.counters.rdpc += 1;
        self.totals.rx_missed += 1;
    }

    /// Reads QRX_TAIL (first use this poll, or the known free descriptors ran short). False if the
    /// ring cannot be used.
    fn rx_read_tail(&mut self, b: &mut RxBatch, ctx: &RxContext) -> bool {
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

    /// Writes one frame into the queue's free buffers. Returns true if it was delivered.
    fn rx_deliver(&mut self, dma: &mut dyn Dma, frame: &[u8], b: &mut RxBatch) -> bool {
        let Some(ctx) = b.ctx else {
            self.count_missed();
            return false;
        };
        let usable = match b.state {
            TailState::Unread => self.rx_read_tail(b, &ctx),
            s => s == TailState::Usable,
        };
        if !usable {
            self.count_missed();
            return false;
        }
        if ctx.rxmax != 0 && frame.len() as u64 + FCS > u64::from(ctx.rxmax) {
            self.counters.roc += 1;
            self.totals.rx_filtered += 1;
            return false;
        }
        if ctx.crcstrip {
            return self.rx_write(dma, frame, b, &ctx);
        }
        let mut with_fcs = std::mem::take(&mut self.rx_frame);
        with_fcs.clear();
        with_fcs.extend_from_slice(frame);
        with_fcs.extend_from_slice(&crc32(frame).to_le_bytes());
        let ok = self.rx_write(dma, &with_fcs, b, &ctx);
        self.rx_frame = with_fcs;
        ok
    }

    /// True if `need` descriptors are free, looking at QRX_TAIL again when the known ones run short.
    fn rx_room(&mut self, b: &mut RxBatch, ctx: &RxContext, need: u32) -> bool {
        if b.free >= need {
            return true;
        }
        self.rx_read_tail(b, ctx) && b.free >= need
    }

    /// Writes `data` (the frame, with its FCS unless stripped) into descriptors from `b.head` on.
    fn rx_write(&mut self, dma: &mut dyn Dma, data: &[u8], b: &mut RxBatch, ctx: &RxContext) -> bool {
        let need = data.len().div_ceil(ctx.dbuff).max(1) as u32;
        if !self.rx_room(b, ctx, need) {
            self.count_missed();
            return false;
        }
        if !b.dma_checked {
            self.check_dma_allowed();
            b.dma_checked = true;
        }
        let dlen = ctx.desc_len();
        for (i, chunk) in data.chunks(ctx.dbuff).enumerate() {
            let addr = ctx.base + u64::from(b.head) * dlen;
            let Some(pkt) = Self::rx_buffer_addr(dma, b, ctx) else {
                self.faults.record(addr, dlen, "rx descriptor read");
                self.rxq[b.q as usize].stalled_at_tail = Some(b.tail);
                b.state = TailState::Unusable;
                return false;
            };
            let last = i as u32 + 1 == need;
            let mut ok = true;
            let mut qw1 = RXD_STATUS_DD
                | if last { RXD_STATUS_EOF } else { 0 }
                | (1 << RXD_PTYPE_SHIFT)
                | ((chunk.len() as u64 & RXD_LEN_PBUF_MASK) << RXD_LEN_PBUF_SHIFT);
            if dma.write(pkt, chunk).is_err() {
                self.faults.record(pkt, chunk.len() as u64, "rx buffer write");
                qw1 = RXD_STATUS_DD | RXD_STATUS_EOF | (RXD_ERROR_RXE << RXD_ERROR_SHIFT);
                ok = false;
            }
            if Self::rx_writeback(dma, addr, dlen, qw1).is_err() {
                self.faults.record(addr, dlen, "rx descriptor write-back");
            }
            b.head = if b.head + 1 == ctx.qlen { 0 } else { b.head + 1 };
            b.free -= 1;
            b.moved = true;
            if !ok {
                return false;
            }
        }
        true
    }

    /// The buffer address of descriptor `b.head`: from the read-ahead, refilled with up to
    /// [`READ_AHEAD`] descriptors the device owns. `None` if it cannot be read.
    fn rx_buffer_addr(dma: &mut dyn Dma, b: &mut RxBatch, ctx: &RxContext) -> Option<u64> {
        if b.ahead_next == b.ahead_len {
            let n = (b.free as usize).clamp(1, READ_AHEAD);
            let dlen = ctx.desc_len();
            let (mut d, mut len) = (b.head, 0);
            while len < n {
                match dma.read_u64(ctx.base + u64::from(d) * dlen) {
                    Ok(a) => b.ahead[len] = a,
                    Err(_) => break,
                }
                len += 1;
                d = if d + 1 == ctx.qlen { 0 } else { d + 1 };
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

    /// Write-back: qword0 (and qwords 2/3 of 32-byte descriptors), then qword1 with DD and the length
    /// as one 64-bit Release store, the last store to the descriptor ([`Dma::publish_u64`]).
    fn rx_writeback(dma: &mut dyn Dma, addr: u64, dlen: u64, qw1: u64) -> Result<(), DmaError> {
        dma.write_u64(addr, 0)?;
        if dlen == 32 {
            dma.write_u64(addr + 16, 0)?;
            dma.write_u64(addr + 24, 0)?;
        }
        dma.publish_u64(addr + 8, qw1)
    }

    /// Descriptor write-back of a transmit descriptor: qword1 becomes DTYPE 0xF (done), one 64-bit
    /// Release store after the buffer reads, the only store to the descriptor.
    fn tx_writeback(dma: &mut dyn Dma, addr: u64) -> Result<(), DmaError> {
        dma.publish_u64(addr + 8, TXD_DTYPE_DESC_DONE)
    }
}
