//! The X710's state as a migration snapshot (see [`crate::model::snapshot`]): config space, the
//! trapped registers, both admin queues' registers, the HMC segment table, the firmware's per-PF
//! settings (link events, PHY mask, loopback, max frame, pending ARQ events, the main VSI's
//! properties, promiscuity and MAC/VLAN filters), every queue's enable state with its loaded
//! context and current head, the interrupt causes and routing, the counters and totals, the tail
//! pages, a transmit frame half-gathered across descriptors, and the MSI-X table and PBA.
//!
//! Loaded contexts travel decoded, with the head the queue has reached: the context in HMC memory
//! still holds the head the driver started the queue at, so reading it again on the destination
//! would replay the ring. Frames inside the MAC loopback are in flight, as on a wire, and are not
//! carried. The cable is the destination's own (its wire), so its link follows that.

use super::hmc::{RxContext, SegmentDesc, TxContext};
use super::*;
use crate::model::snapshot::{load_mapping, mapping_bytes, Reader, SnapshotError, Writer};

const MAGIC: &[u8] = b"lab-nic X710 state v1";
/// Pending link events the firmware keeps (as [`I40e::update_link`] bounds them).
const MAX_EVENTS: usize = 16;
/// The largest ring a context's 13-bit QLEN field can describe.
const QLEN_MAX: u32 = (1 << TXC_QLEN.1) - 1;
/// The largest data buffer the RX context's DBUFF field (128-byte units) can describe.
const RX_DBUFF_MAX: usize = ((1 << RXC_DBUFF.1) - 1) * CTX_UNIT as usize;

fn put_ring(w: &mut Writer, r: &AqRing) {
    for v in [r.bal, r.bah, r.len, r.head, r.tail] {
        w.u32(v);
    }
}

fn get_ring(r: &mut Reader<'_>, what: &'static str) -> Result<AqRing, SnapshotError> {
    Ok(AqRing { bal: r.u32(what)?, bah: r.u32(what)?, len: r.u32(what)?, head: r.u32(what)?, tail: r.u32(what)? })
}

fn put_opt_u32(w: &mut Writer, v: Option<u32>) {
    w.u8(u8::from(v.is_some()));
    w.u32(v.unwrap_or(0));
}

fn get_opt_u32(r: &mut Reader<'_>, what: &'static str) -> Result<Option<u32>, SnapshotError> {
    let some = r.bool(what)?;
    let v = r.u32(what)?;
    Ok(some.then_some(v))
}

/// A ring base a context's BASE field can hold (128-byte units; 57 bits of them span all of u64).
fn ring_base(what: &'static str, base: u64) -> Result<u64, SnapshotError> {
    if !base.is_multiple_of(CTX_UNIT) {
        return Err(SnapshotError::Misfit { what, got: (base % CTX_UNIT) as usize, limit: 0 });
    }
    Ok(base)
}

/// A 16-bit field stored in 32 bits: refused, not truncated, when it does not fit.
fn u16_field(r: &mut Reader<'_>, what: &'static str, limit: u32) -> Result<u16, SnapshotError> {
    let v = r.u32(what)?;
    if v > limit {
        return Err(SnapshotError::Misfit { what, got: v as usize, limit: limit as usize });
    }
    Ok(v as u16)
}

/// A head or stall position must lie inside the ring its context describes.
fn in_ring(what: &'static str, v: u32, qlen: u32) -> Result<u32, SnapshotError> {
    if v >= qlen {
        return Err(SnapshotError::Misfit { what, got: v as usize, limit: qlen as usize });
    }
    Ok(v)
}

fn put_tx(w: &mut Writer, q: &TxQueue) {
    w.u8(u8::from(q.req));
    w.u8(u8::from(q.failed));
    w.u32(q.head);
    put_opt_u32(w, q.stalled_at_tail);
    w.u8(u8::from(q.ctx.is_some()));
    let c = q.ctx.unwrap_or(TxContext { base: 0, qlen: 0, head: 0, head_wb_ena: false, head_wb_addr: 0, rdylist: 0 });
    w.u64(c.base);
    w.u32(c.qlen);
    w.u32(c.head);
    w.u8(u8::from(c.head_wb_ena));
    w.u64(c.head_wb_addr);
    w.u32(u32::from(c.rdylist));
}

fn get_tx(r: &mut Reader<'_>) -> Result<TxQueue, SnapshotError> {
    let req = r.bool("tx queue request")?;
    let failed = r.bool("tx queue failed")?;
    let head = r.u32("tx queue head")?;
    let stalled_at_tail = get_opt_u32(r, "tx queue stall")?;
    let loaded = r.bool("tx context loaded")?;
    let ctx = TxContext {
        base: r.u64("tx context base")?,
        qlen: r.u32("tx context qlen")?,
        head: r.u32("tx context head")?,
        head_wb_ena: r.bool("tx context head write-back")?,
        head_wb_addr: r.u64("tx context head write-back address")?,
        rdylist: u16_field(r, "tx context ready list", u32::from(u16::MAX))?,
    };
    if !loaded {
        return Ok(TxQueue { req, ctx: None, failed, head: 0, stalled_at_tail: None });
    }
    if ctx.qlen < 8 || ctx.qlen > QLEN_MAX {
        return Err(SnapshotError::Misfit {
            what: "tx context qlen",
            got: ctx.qlen as usize,
            limit: QLEN_MAX as usize,
        });
    }
    ring_base("tx context base (alignment remainder)", ctx.base)?;
    if ctx.head_wb_ena && !ctx.head_wb_addr.is_multiple_of(4) {
        return Err(SnapshotError::Misfit {
            what: "tx head write-back address",
            got: ctx.head_wb_addr as usize,
            limit: 4,
        });
    }
    in_ring("tx queue head", head, ctx.qlen)?;
    stalled_at_tail.map(|t| in_ring("tx queue stall", t, ctx.qlen)).transpose()?;
    Ok(TxQueue { req, ctx: Some(ctx), failed, head, stalled_at_tail })
}

fn put_rx(w: &mut Writer, q: &RxQueue) {
    w.u8(u8::from(q.req));
    w.u8(u8::from(q.failed));
    w.u32(q.head);
    put_opt_u32(w, q.stalled_at_tail);
    w.u8(u8::from(q.ctx.is_some()));
    let c = q.ctx.unwrap_or(RxContext {
        base: 0,
        qlen: 0,
        head: 0,
        dbuff: 0,
        hbuff: 0,
        dtype: 0,
        dsize32: false,
        crcstrip: false,
        rxmax: 0,
    });
    w.u64(c.base);
    w.u32(c.qlen);
    w.u32(c.head);
    w.u32(c.dbuff as u32);
    w.u32(c.hbuff as u32);
    w.u8(c.dtype);
    w.u8(u8::from(c.dsize32));
    w.u8(u8::from(c.crcstrip));
    w.u32(c.rxmax);
}

fn get_rx(r: &mut Reader<'_>) -> Result<RxQueue, SnapshotError> {
    let req = r.bool("rx queue request")?;
    let failed = r.bool("rx queue failed")?;
    let head = r.u32("rx queue head")?;
    let stalled_at_tail = get_opt_u32(r, "rx queue stall")?;
    let loaded = r.bool("rx context loaded")?;
    let ctx = RxContext {
        base: r.u64("rx context base")?,
        qlen: r.u32("rx context qlen")?,
        head: r.u32("rx context head")?,
        dbuff: r.u32("rx context data buffer")? as usize,
        hbuff: r.u32("rx context header buffer")? as usize,
        dtype: r.u8("rx context descriptor type")?,
        dsize32: r.bool("rx context descriptor size")?,
        crcstrip: r.bool("rx context CRC strip")?,
        rxmax: r.u32("rx context max frame")?,
    };
    if !loaded {
        return Ok(RxQueue { req, ctx: None, failed, head: 0, stalled_at_tail: None });
    }
    if ctx.qlen < 8 || ctx.qlen > QLEN_MAX {
        return Err(SnapshotError::Misfit {
            what: "rx context qlen",
            got: ctx.qlen as usize,
            limit: QLEN_MAX as usize,
        });
    }
    if ctx.dbuff == 0 || ctx.dbuff > RX_DBUFF_MAX {
        return Err(SnapshotError::Misfit { what: "rx context data buffer", got: ctx.dbuff, limit: RX_DBUFF_MAX });
    }
    if ctx.dtype != 0 {
        return Err(SnapshotError::Misfit { what: "rx context descriptor type", got: ctx.dtype.into(), limit: 0 });
    }
    ring_base("rx context base (alignment remainder)", ctx.base)?;
    in_ring("rx queue head", head, ctx.qlen)?;
    stalled_at_tail.map(|t| in_ring("rx queue stall", t, ctx.qlen)).transpose()?;
    Ok(RxQueue { req, ctx: Some(ctx), failed, head, stalled_at_tail })
}

fn put_counters(w: &mut Writer, c: &Counters) {
    for v in [c.gorc, c.uprc, c.mprc, c.bprc, c.gotc, c.uptc, c.mptc, c.bptc, c.roc, c.rdpc, c.tdold] {
        w.u64(v);
    }
}

fn get_counters(r: &mut Reader<'_>) -> Result<Counters, SnapshotError> {
    let mut c = Counters::default();
    for v in [
        &mut c.gorc,
        &mut c.uprc,
        &mut c.mprc,
        &mut c.bprc,
        &mut c.gotc,
        &mut c.uptc,
        &mut c.mptc,
        &mut c.bptc,
        &mut c.roc,
        &mut c.rdpc,
        &mut c.tdold,
    ] {
        *v = r.u64("port counters")?;
    }
    Ok(c)
}

/// The firmware's settings, checked.
fn get_firmware(r: &mut Reader<'_>, mac: [u8; 6]) -> Result<Firmware, SnapshotError> {
    let mut fw = Firmware::new(mac);
    fw.lse = r.bool("link status events")?;
    fw.phy_int_mask = u16_field(r, "PHY interrupt mask", u32::from(u16::MAX))?;
    fw.phy_link_enabled = r.bool("PHY link enabled")?;
    fw.max_frame = u16_field(r, "max frame size", u32::from(u16::MAX))?;
    fw.lb_mode = u16_field(r, "loopback mode", u32::from(u16::MAX))?;
    let n = r.u32("pending event count")? as usize;
    if n > MAX_EVENTS {
        return Err(SnapshotError::Misfit { what: "pending event count", got: n, limit: MAX_EVENTS });
    }
    for _ in 0..n {
        let opcode = u16_field(r, "event opcode", u32::from(u16::MAX))?;
        let params = r.exact(16, "event parameters")?;
        fw.events.push_back((opcode, params.try_into().expect("16 bytes")));
    }
    fw.vsi.props.copy_from_slice(r.exact(VSI_PROPS_LEN, "VSI properties")?);
    fw.vsi.promisc = u16_field(r, "VSI promiscuity", u32::from(u16::MAX))?;
    let n = r.u32("MAC filter count")? as usize;
    if n > MAX_MAC_FILTERS {
        return Err(SnapshotError::Misfit { what: "MAC filter count", got: n, limit: MAX_MAC_FILTERS });
    }
    fw.vsi.filters.clear();
    for _ in 0..n {
        let mac: [u8; 6] = r.exact(6, "MAC filter address")?.try_into().expect("6 bytes");
        let vlan = match get_opt_u32(r, "MAC filter VLAN")? {
            Some(v) if v > 4095 => {
                return Err(SnapshotError::Misfit { what: "MAC filter VLAN", got: v as usize, limit: 4095 })
            }
            v => v.map(|v| v as u16),
        };
        fw.vsi.filters.push((mac, vlan));
    }
    Ok(fw)
}

impl I40e {
    pub(super) fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC);
        w.bytes(self.cfg.raw());
        let mut regs: Vec<(u32, u32)> = self.regs.iter().map(|(k, v)| (*k, *v)).collect();
        regs.sort_unstable();
        w.u32(regs.len() as u32);
        for (off, v) in regs {
            w.u32(off);
            w.u32(v);
        }
        put_ring(&mut w, &self.atq);
        put_ring(&mut w, &self.arq);
        put_opt_u32(&mut w, self.atq_bad_tail);
        for i in 0..HMC_SD_COUNT {
            let sd = self.hmc.read_sd(i);
            w.u32(sd.low);
            w.u32(sd.high);
        }
        let fw = &self.fw;
        w.u8(u8::from(fw.lse));
        w.u32(u32::from(fw.phy_int_mask));
        w.u8(u8::from(fw.phy_link_enabled));
        w.u32(u32::from(fw.max_frame));
        w.u32(u32::from(fw.lb_mode));
        w.u32(fw.events.len() as u32);
        for (opcode, params) in &fw.events {
            w.u32(u32::from(*opcode));
            w.bytes(params);
        }
        w.bytes(&fw.vsi.props);
        w.u32(u32::from(fw.vsi.promisc));
        w.u32(fw.vsi.filters.len() as u32);
        for (mac, vlan) in &fw.vsi.filters {
            w.bytes(mac);
            put_opt_u32(&mut w, vlan.map(u32::from));
        }
        self.txq.iter().for_each(|q| put_tx(&mut w, q));
        self.rxq.iter().for_each(|q| put_rx(&mut w, q));
        w.u8(u8::from(self.qena_pending));
        w.u32(self.icr0);
        w.u8(u8::from(self.link_reported));
        self.qint_rq.iter().chain(&self.qint_tq).for_each(|v| w.u32(*v));
        put_counters(&mut w, &self.counters);
        w.totals(&self.totals);
        w.bytes(&mapping_bytes(&self.bar0, TX_TAIL_PAGES));
        w.bytes(&mapping_bytes(&self.bar0, RX_TAIL_PAGES));
        w.bytes(&self.tx_frame);
        w.u64(self.pending_irqs);
        w.msix(&self.msix);
        w.finish()
    }

    /// Loads a snapshot: everything is parsed and checked before anything changes.
    pub(super) fn restore(&mut self, state: &[u8]) -> Result<(), SnapshotError> {
        let mut r = Reader::new(state, MAGIC)?;
        let cfg = r.exact(self.cfg.raw().len(), "config space")?;
        let n = r.u32("register count")? as usize;
        let limit = (BAR0_SIZE / 4) as usize;
        if n > limit {
            return Err(SnapshotError::Misfit { what: "register count", got: n, limit });
        }
        let mut regs = HashMap::with_capacity(n);
        for _ in 0..n {
            let (off, v) = (r.u32("register offset")?, r.u32("register value")?);
            if !Self::bar0_ok(off.into(), 4) {
                return Err(SnapshotError::Misfit {
                    what: "register offset",
                    got: off as usize,
                    limit: BAR0_SIZE as usize,
                });
            }
            regs.insert(off, v);
        }
        let atq = get_ring(&mut r, "ATQ registers")?;
        let arq = get_ring(&mut r, "ARQ registers")?;
        let atq_bad_tail = get_opt_u32(&mut r, "ATQ stop")?;
        let mut sds = Vec::with_capacity(HMC_SD_COUNT);
        for _ in 0..HMC_SD_COUNT {
            sds.push(SegmentDesc { low: r.u32("segment descriptor")?, high: r.u32("segment descriptor")? });
        }
        let fw = get_firmware(&mut r, self.mac)?;
        let txq = (0..PF_QUEUES).map(|_| get_tx(&mut r)).collect::<Result<Vec<_>, _>>()?;
        let rxq = (0..PF_QUEUES).map(|_| get_rx(&mut r)).collect::<Result<Vec<_>, _>>()?;
        let qena_pending = r.bool("queue enable pending")?;
        let icr0 = r.u32("PFINT_ICR0")?;
        let reported = r.bool("link reported")?;
        let mut qint_rq = [0u32; PF_QUEUES as usize];
        let mut qint_tq = [0u32; PF_QUEUES as usize];
        for v in qint_rq.iter_mut().chain(qint_tq.iter_mut()) {
            *v = r.u32("QINT_[RT]QCTL")?;
        }
        let counters = get_counters(&mut r)?;
        let t = r.totals()?;
        let txp = r.exact(TX_TAIL_PAGES.1 as usize, "TX tail pages")?;
        let rxp = r.exact(RX_TAIL_PAGES.1 as usize, "RX tail pages")?;
        let tx_frame = r.bytes("transmit frame in progress")?;
        if tx_frame.len() > crate::wire::MAX_FRAME {
            return Err(SnapshotError::Misfit {
                what: "transmit frame in progress",
                got: tx_frame.len(),
                limit: crate::wire::MAX_FRAME,
            });
        }
        let pending_irqs = r.u64("pending interrupts")?;
        let (table, pba) = r.msix(&self.msix)?;
        r.end()?;

        // Checked: apply. The admin queue registers are not touched by a PF reset; set them here.
        self.pf_reset();
        self.cfg.load_raw(cfg);
        self.regs = regs;
        self.rss_update();
        self.atq = atq;
        self.arq = arq;
        self.atq_bad_tail = atq_bad_tail;
        for (i, sd) in sds.into_iter().enumerate() {
            self.hmc.write_sd(i, sd);
        }
        self.fw = fw;
        self.txq = txq;
        self.rxq = rxq;
        self.qena_pending = qena_pending;
        self.icr0 = icr0;
        self.link_reported = reported;
        self.qint_rq = qint_rq;
        self.qint_tq = qint_tq;
        self.counters = counters;
        self.totals = t;
        for (page, (off, _)) in [(txp, TX_TAIL_PAGES), (rxp, RX_TAIL_PAGES)] {
            load_mapping(&self.bar0, off, page);
        }
        self.tx_frame.clear();
        self.tx_frame.extend_from_slice(tx_frame);
        self.pending_irqs = pending_irqs;
        self.msix.load(table, pba);
        self.tx_active_dirty = true;
        self.update_link();
        tracing::info!(bdf = %self.bdf, bytes = state.len(), "device state loaded (migration)");
        Ok(())
    }
}
