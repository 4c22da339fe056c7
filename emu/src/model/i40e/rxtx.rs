//! X710 data path: QTX_TAIL / QRX_TAIL doorbells (mmapped pages), transmit data descriptors with
//! descriptor or head write-back, receive descriptors of 16 or 32 bytes, the MAC/VSI
//! receive filters, internal loopback, the wire, and the GLPRT counters.
//!
//! Bounded work per poll: at most [`BUDGET`] descriptors per TX queue and [`BUDGET`] received frames.
//! Every DMA goes through [`Dma`]; a failed one is recorded as a fault and never stops the model.

use super::regs::*;
use super::I40e;
use crate::dma::{Dma, DmaError};
use crate::wire::MAX_FRAME;

/// Descriptors (TX) or frames (RX) handled per queue per poll.
pub const BUDGET: u32 = 256;
const TX_DESC: u64 = 16;
const MIN_FRAME: usize = 60;
const FCS: u64 = 4;

/// CRC-32 (IEEE 802.3) of `data`, as the MAC appends it as FCS.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn is_broadcast(dst: &[u8]) -> bool {
    dst.iter().all(|b| *b == 0xff)
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
    pub(super) fn process_tx(&mut self, dma: &mut dyn Dma) -> bool {
        let mut did = false;
        for q in 0..PF_QUEUES {
            let t = self.txq[q as usize];
            let Some(ctx) = t.ctx else { continue };
            let tail = self.page32(qtx_tail(q));
            if tail == t.head || t.stalled_at_tail == Some(tail) {
                continue;
            }
            if tail >= ctx.qlen {
                self.faults.record(u64::from(tail), u64::from(ctx.qlen), "tx tail beyond ring");
                self.txq[q as usize].stalled_at_tail = Some(tail);
                continue;
            }
            self.check_dma_allowed();
            let mut head = t.head;
            let (mut n, mut completed) = (0, false);
            while head != tail && n < BUDGET {
                let addr = ctx.base + u64::from(head) * TX_DESC;
                let mut d = [0u8; 16];
                if dma.read(addr, &mut d).is_err() {
                    self.faults.record(addr, TX_DESC, "tx descriptor read");
                    self.txq[q as usize].stalled_at_tail = Some(tail);
                    break;
                }
                let buf = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
                let qw1 = u64::from_le_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
                let cmd = (qw1 >> TXD_CMD_SHIFT) & 0x3ff;
                match qw1 & TXD_DTYPE_MASK {
                    TXD_DTYPE_DATA => {
                        let len = ((qw1 >> TXD_BSZ_SHIFT) & TXD_BSZ_MASK) as usize;
                        self.tx_gather(dma, buf, len);
                        if cmd & TXD_CMD_EOP != 0 {
                            self.tx_finish_frame(q);
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
                head = (head + 1) % ctx.qlen;
                n += 1;
            }
            if n > 0 {
                self.txq[q as usize].head = head;
                if ctx.head_wb_ena && completed && dma.publish_u32(ctx.head_wb_addr, head).is_err() {
                    self.faults.record(ctx.head_wb_addr, 4, "tx head write-back");
                }
                did = true;
            }
            if completed {
                self.queue_interrupt(q, true);
            }
        }
        did
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

    fn tx_finish_frame(&mut self, _q: u32) {
        let mut frame = std::mem::take(&mut self.tx_frame);
        if frame.len() < 14 {
            frame.clear();
            self.tx_frame = frame;
            return;
        }
        if frame.len() < MIN_FRAME {
            frame.resize(MIN_FRAME, 0);
        }
        let len = frame.len() as u64;
        if !self.link_up() && self.fw.lb_mode == 0 {
            self.counters.tdold += 1;
            frame.clear();
            self.tx_frame = frame;
            return;
        }
        let c = &mut self.counters;
        c.gotc += len + FCS;
        if is_broadcast(&frame[..6]) {
            c.bptc += 1;
        } else if frame[0] & 1 != 0 {
            c.mptc += 1;
        } else {
            c.uptc += 1;
        }
        self.totals.tx_packets += 1;
        self.totals.tx_bytes += len;
        if self.fw.lb_mode & (LB_PHY_LOCAL | LB_MAC_LOCAL) != 0 {
            if self.internal.len() < crate::wire::WIRE_QUEUE {
                self.internal.push_back(frame.clone());
            }
        } else {
            self.wire.transmit(&frame);
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
    pub(super) fn process_rx(&mut self, dma: &mut dyn Dma) -> bool {
        let mut did = false;
        let mut delivered = false;
        let mut frame = std::mem::take(&mut self.rx_frame);
        let q = self.fw.vsi.rx_queue();
        for _ in 0..BUDGET {
            frame.clear();
            if let Some(f) = self.internal.pop_front() {
                frame = f;
            } else {
                let ready = self.link_up() && self.rxq.get(q as usize).is_some_and(|r| r.ctx.is_some());
                if !ready && self.wire.backpressure() {
                    // Nothing can be received now; leave frames on a wire that can hold them.
                    break;
                }
                if !self.wire.receive(&mut frame) {
                    break;
                }
                if !self.link_up() {
                    did = true;
                    continue;
                }
            }
            did = true;
            if !self.accept(&frame) {
                self.totals.rx_filtered += 1;
                continue;
            }
            let len = frame.len() as u64;
            if len + FCS > u64::from(self.fw.max_frame) {
                self.counters.roc += 1;
                self.totals.rx_filtered += 1;
                continue;
            }
            if self.rx_deliver(dma, q, &frame) {
                delivered = true;
                let c = &mut self.counters;
                c.gorc += len + FCS;
                if is_broadcast(&frame[..6]) {
                    c.bprc += 1;
                } else if frame[0] & 1 != 0 {
                    c.mprc += 1;
                } else {
                    c.uprc += 1;
                }
                self.totals.rx_packets += 1;
                self.totals.rx_bytes += len;
            }
        }
        self.rx_frame = frame;
        if delivered {
            self.queue_interrupt(q, false);
        }
        did
    }

    fn count_missed(&mut self) {
        self.counters.rdpc += 1;
        self.totals.rx_missed += 1;
    }

    /// Writes one frame into queue `q`'s free buffers. Returns true if it was delivered.
    fn rx_deliver(&mut self, dma: &mut dyn Dma, q: u32, frame: &[u8]) -> bool {
        let Some(rq) = self.rxq.get(q as usize).copied() else {
            self.count_missed();
            return false;
        };
        let Some(ctx) = rq.ctx else {
            self.count_missed();
            return false;
        };
        let tail = self.page32(qrx_tail(q));
        if rq.stalled_at_tail == Some(tail) {
            self.count_missed();
            return false;
        }
        if tail >= ctx.qlen {
            self.faults.record(u64::from(tail), u64::from(ctx.qlen), "rx tail beyond ring");
            self.rxq[q as usize].stalled_at_tail = Some(tail);
            self.count_missed();
            return false;
        }
        if ctx.rxmax != 0 && frame.len() as u64 + FCS > u64::from(ctx.rxmax) {
            self.counters.roc += 1;
            self.totals.rx_filtered += 1;
            return false;
        }
        let mut data = std::borrow::Cow::Borrowed(frame);
        if !ctx.crcstrip {
            let mut v = frame.to_vec();
            v.extend_from_slice(&crc32(frame).to_le_bytes());
            data = std::borrow::Cow::Owned(v);
        }
        let free = (tail + ctx.qlen - rq.head) % ctx.qlen;
        let need = data.len().div_ceil(ctx.dbuff).max(1) as u32;
        if free < need {
            self.count_missed();
            return false;
        }
        self.check_dma_allowed();
        let dlen = ctx.desc_len();
        let mut head = rq.head;
        let mut ok = true;
        for (i, chunk) in data.chunks(ctx.dbuff).enumerate() {
            let addr = ctx.base + u64::from(head) * dlen;
            let mut d = [0u8; 8];
            if dma.read(addr, &mut d).is_err() {
                self.faults.record(addr, dlen, "rx descriptor read");
                self.rxq[q as usize].stalled_at_tail = Some(tail);
                ok = false;
                break;
            }
            let pkt = u64::from_le_bytes(d);
            let last = i as u32 + 1 == need;
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
            head = (head + 1) % ctx.qlen;
            if !ok {
                break;
            }
        }
        self.rxq[q as usize].head = head;
        ok
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
