//! 82599 data path: queue-page doorbells, advanced TX/RX descriptors (datasheet 7.1.6, 7.2.3), the wire.
//!
//! Bounded work per poll: at most [`BUDGET`] descriptors per TX queue and [`BUDGET`] received frames.
//! Every DMA goes through [`Dma`]; a failed one is recorded as a fault and never stops the model.

use std::sync::atomic::{fence, Ordering};

use super::regs::*;
use super::{Ixgbe, Ring};
use crate::dma::{Dma, DmaError};
use crate::wire::MAX_FRAME;

/// Descriptors (TX) or frames (RX) handled per queue per poll.
pub const BUDGET: u32 = 256;
const DESC: u64 = 16;
const MIN_FRAME: usize = 60;
const FCS: u64 = 4;

/// CRC-32 (IEEE 802.3) of `data`, as the MAC appends it as FCS.
pub fn crc32(data: &[u8]) -> u32 {
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

impl Ixgbe {
    /// Latches ring configuration on ENABLE 0->1 and drops it on 1->0 (RXDCTL/TXDCTL in the pages).
    pub(super) fn scan_queue_enables(&mut self) -> bool {
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
                changed = true;
            }
        }
        changed
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
    pub(super) fn process_tx(&mut self, dma: &mut dyn Dma) -> bool {
        if self.reg(DMATXCTL) & DMATXCTL_TE == 0 {
            return false;
        }
        let mut did = false;
        for q in 0..TX_QUEUES {
            let ring = self.txq[q as usize];
            if !ring.enabled || ring.count == 0 {
                continue;
            }
            let tail = self.page32(tdt(q));
            if ring.stalled_at_tail == Some(tail) {
                continue;
            }
            let mut head = self.page32(tdh(q));
            if head >= ring.count || tail >= ring.count {
                self.faults.record(u64::from(tail), u64::from(head), "tx head/tail beyond ring");
                self.txq[q as usize].stalled_at_tail = Some(tail);
                continue;
            }
            if head == tail {
                continue;
            }
            self.check_dma_allowed();
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
                    self.tx_gather(dma, buf, (ctl & TXD_DTALEN_MASK) as usize);
                    if ctl & TXD_CMD_EOP != 0 {
                        self.tx_finish_frame();
                    }
                    if ctl & TXD_CMD_RS != 0 {
                        if dma.write(addr + 12, &TXD_STAT_DD.to_le_bytes()).is_err() {
                            self.faults.record(addr + 12, 4, "tx descriptor write-back");
                        }
                        completed = true;
                    }
                }
                head = (head + 1) % ring.count;
                n += 1;
            }
            if n > 0 {
                fence(Ordering::Release);
                self.set_page32(tdh(q), head);
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

    fn tx_finish_frame(&mut self) {
        let mut frame = std::mem::take(&mut self.tx_frame);
        if frame.is_empty() {
            self.tx_frame = frame;
            return;
        }
        if self.reg(HLREG0) & HLREG0_TXPADEN != 0 && frame.len() < MIN_FRAME {
            frame.resize(MIN_FRAME, 0);
        }
        let len = frame.len() as u64;
        let c = &mut self.counters;
        c.gptc = c.gptc.wrapping_add(1);
        c.tpt = c.tpt.wrapping_add(1);
        c.gotc += len + FCS;
        if is_broadcast(&frame[..6.min(frame.len())]) {
            c.bptc = c.bptc.wrapping_add(1);
        } else if frame[0] & 1 != 0 {
            c.mptc = c.mptc.wrapping_add(1);
        }
        self.totals.tx_packets += 1;
        self.totals.tx_bytes += len;
        if self.link_up() {
            self.wire.transmit(&frame);
        }
        frame.clear();
        self.tx_frame = frame;
    }

    fn rx_ready(&self) -> bool {
        self.reg(RXCTRL) & RXCTRL_RXEN != 0 && self.link_up() && self.rxq[0].enabled
    }

    fn rx_free(&self, q: u32) -> Option<(u32, u32)> {
        let ring = self.rxq[q as usize];
        let head = self.page32(rdh(q));
        let tail = self.page32(rdt(q));
        if ring.count == 0 || head >= ring.count || tail >= ring.count {
            return None;
        }
        Some((head, (tail + ring.count - head) % ring.count))
    }

    /// Moves frames from the wire into RX queue 0 (no RSS or pools are modelled).
    pub(super) fn process_rx(&mut self, dma: &mut dyn Dma) -> bool {
        let mut did = false;
        let mut delivered = false;
        let mut frame = std::mem::take(&mut self.rx_frame);
        for _ in 0..BUDGET {
            let ready = self.rx_ready();
            if !ready && self.wire.backpressure() {
                break;
            }
            if ready && self.wire.backpressure() {
                let need = self.buffers_needed(MAX_FRAME.min(1518));
                if !matches!(self.rx_free(0), Some((_, free)) if free >= need) {
                    break;
                }
            }
            if !self.wire.receive(&mut frame) {
                break;
            }
            did = true;
            if !ready || !self.accept(&frame) {
                self.totals.rx_filtered += 1;
                continue;
            }
            delivered |= self.rx_deliver(dma, &frame);
        }
        self.rx_frame = frame;
        if delivered {
            self.queue_interrupt(0, false);
        }
        did
    }

    fn buf_size(&self) -> usize {
        let kib = (self.reg(srrctl(0)) & SRRCTL_BSIZEPACKET_MASK) as usize;
        if kib == 0 {
            2048
        } else {
            kib * 1024
        }
    }

    fn buffers_needed(&self, len: usize) -> u32 {
        len.div_ceil(self.buf_size()).max(1) as u32
    }

    /// Receive filters (7.1.1): broadcast needs BAM, multicast MPE, unicast a valid RAR or UPE.
    fn accept(&self, frame: &[u8]) -> bool {
        if frame.len() < 14 {
            return false;
        }
        let fctrl = self.reg(FCTRL);
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

    /// Writes one frame into queue 0's free buffers. Returns true if it was delivered.
    fn rx_deliver(&mut self, dma: &mut dyn Dma, frame: &[u8]) -> bool {
        let q = 0u32;
        let ring = self.rxq[q as usize];
        let tail = self.page32(rdt(q));
        if ring.stalled_at_tail == Some(tail) {
            self.count_missed();
            return false;
        }
        let Some((mut head, free)) = self.rx_free(q) else {
            self.faults.record(u64::from(tail), 0, "rx head/tail beyond ring");
            self.rxq[q as usize].stalled_at_tail = Some(tail);
            self.count_missed();
            return false;
        };
        let strip = self.reg(HLREG0) & HLREG0_RXCRCSTRP != 0;
        let mut data = std::borrow::Cow::Borrowed(frame);
        if !strip {
            let mut v = frame.to_vec();
            v.extend_from_slice(&crc32(frame).to_le_bytes());
            data = std::borrow::Cow::Owned(v);
        }
        let bsize = self.buf_size();
        let legacy = self.reg(srrctl(0)) & SRRCTL_DESCTYPE_MASK == 0;
        let need = data.len().div_ceil(bsize).max(1) as u32;
        if free < need {
            self.count_missed();
            return false;
        }
        self.check_dma_allowed();
        let mut ok = true;
        for (i, chunk) in data.chunks(bsize).enumerate() {
            let addr = ring.base + u64::from(head) * DESC;
            let mut d = [0u8; 16];
            if dma.read(addr, &mut d).is_err() {
                self.faults.record(addr, DESC, "rx descriptor read");
                self.rxq[q as usize].stalled_at_tail = Some(tail);
                ok = false;
                break;
            }
            let pkt = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            let last = i as u32 + 1 == need;
            let mut status = RXD_STAT_DD | if last { RXD_STAT_EOP } else { 0 };
            let mut len = chunk.len() as u16;
            if dma.write(pkt, chunk).is_err() {
                self.faults.record(pkt, chunk.len() as u64, "rx buffer write");
                status = RXD_STAT_DD | RXD_STAT_EOP | RXD_ERR_RXE;
                len = 0;
                ok = false;
            }
            let wb = if legacy {
                Self::rx_writeback_legacy(dma, addr, len, status)
            } else {
                Self::rx_writeback_adv(dma, addr, len, status)
            };
            if wb.is_err() {
                self.faults.record(addr, DESC, "rx descriptor write-back");
            }
            head = (head + 1) % ring.count;
            if !ok {
                break;
            }
        }
        fence(Ordering::Release);
        self.set_page32(rdh(q), head);
        if !ok {
            return false;
        }
        let len = frame.len() as u64;
        let c = &mut self.counters;
        c.gprc = c.gprc.wrapping_add(1);
        c.tpr = c.tpr.wrapping_add(1);
        c.gorc += len + FCS;
        c.tor += len + FCS;
        if is_broadcast(&frame[..6]) {
            c.bprc = c.bprc.wrapping_add(1);
        } else if frame[0] & 1 != 0 {
            c.mprc = c.mprc.wrapping_add(1);
        }
        self.totals.rx_packets += 1;
        self.totals.rx_bytes += len;
        true
    }

    /// Advanced one-buffer write-back (7.1.6.2): info and length first, status with DD last.
    fn rx_writeback_adv(dma: &mut dyn Dma, addr: u64, len: u16, status: u32) -> Result<(), DmaError> {
        let mut wb = [0u8; 16];
        wb[12..14].copy_from_slice(&len.to_le_bytes());
        dma.write(addr, &wb[0..8])?;
        dma.write(addr + 12, &wb[12..16])?;
        fence(Ordering::Release);
        dma.write(addr + 8, &status.to_le_bytes())
    }

    /// Legacy write-back (7.1.5, SRRCTL.DESCTYPE = 0): length @8, checksum @10, status @12 (DD, EOP),
    /// errors @13 (RXE bit 7), VLAN @14; the status byte with DD goes last.
    fn rx_writeback_legacy(dma: &mut dyn Dma, addr: u64, len: u16, status: u32) -> Result<(), DmaError> {
        let mut wb = [0u8; 8];
        wb[0..2].copy_from_slice(&len.to_le_bytes());
        if status & RXD_ERR_RXE != 0 {
            wb[5] = 0x80;
        }
        dma.write(addr + 8, &wb[0..4])?;
        dma.write(addr + 13, &wb[5..8])?;
        fence(Ordering::Release);
        dma.write(addr + 12, &[(status & 0x3) as u8])
    }

    fn count_missed(&mut self) {
        self.counters.mpc[0] = self.counters.mpc[0].wrapping_add(1);
        self.totals.rx_missed += 1;
    }
}
