//! Intel X710 (8086:1572) model: config space, trapped registers, PF reset, link, interrupts. The
//! firmware side lives in `adminq.rs` (admin send/receive queues and the commands drivers issue), the LAN
//! HMC (segment table, queue contexts) in [`hmc`], the data path in `rxtx.rs`, offsets in [`regs`].
//!
//! BAR0 (8 MiB) is trapped except the doorbell pages QTX_TAIL 0x108000-0x109FFF and QRX_TAIL
//! 0x128000-0x129FFF, which live in a memfd the driver mmaps and [`I40e::poll`] reads. Unlike the 82599,
//! the ring configuration is not in registers: the driver writes queue contexts into HMC backing memory
//! and requests QTX_ENA/QRX_ENA.QENA_REQ; the next poll reads the context by DMA through the segment
//! table and sets QENA_STAT (or records a fault and leaves it clear). Admin-queue commands are executed
//! by the device thread when ATQT moves, as firmware would, and completed in place with DD|CMP.
//! BAR3 (32 KiB) holds the MSI-X table (64 vectors) at 0 and the PBA at 0x1000, trapped.
//!
//! Registers the data path reads (the PF queues' QINT_RQCTL and QINT_TQCTL) live in plain arrays, the enabled TX
//! queues in a list rebuilt when a queue starts or stops; the other trapped registers are in a map.

mod adminq;
pub mod hmc;
mod migrate;
mod regfile;
pub mod regs;
mod rss;
mod rxtx;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use self::hmc::{Hmc, RxContext, SegmentDesc, TxContext};
use self::regs::*;
use super::msix::Msix;
use super::pci::{BarDef, BarKind, ConfigSpace, PciIds};
use super::{DeviceModel, ModelConfig, ModelError, PortStats};
use crate::dma::{Dma, Xlate};
use crate::fault::FaultLog;
use crate::mem::Mapping;
use crate::wire::{FrameRing, Wire};

/// Identity of the emulated X710 for 10GbE SFP+ (subsystem: Intel Ethernet Converged Network Adapter
/// X710-DA2).
pub const IDS: PciIds = PciIds {
    vendor: 0x8086,
    device: 0x1572,
    subsystem_vendor: 0x8086,
    subsystem_device: 0x0007,
    class: 0x020000,
    revision: 0x02,
};

/// SEIDs of the switch elements the firmware reports.
pub const SEID_MAC: u16 = 2;
/// SEID of the PF.
pub const SEID_PF: u16 = 16;
/// SEID of the PF's main (LAN) VSI.
pub const SEID_MAIN_VSI: u16 = 390;
/// VSI number of the main VSI.
pub const MAIN_VSI_NUMBER: u16 = 0;

fn bar_defs(function: u8) -> [BarDef; 6] {
    let base = 0xe000_0000u64 + u64::from(function) * 0x0100_0000;
    let mut bars = [BarDef::UNUSED; 6];
    bars[0] = BarDef { kind: BarKind::Mem64 { prefetch: true }, size: BAR0_SIZE, addr: base };
    bars[3] = BarDef { kind: BarKind::Mem64 { prefetch: true }, size: BAR3_SIZE, addr: base + BAR0_SIZE };
    bars
}

/// One admin queue's registers (ATQ or ARQ).
#[derive(Debug, Clone, Copy, Default)]
struct AqRing {
    bal: u32,
    bah: u32,
    len: u32,
    head: u32,
    tail: u32,
}

impl AqRing {
    fn enabled(&self) -> bool {
        self.len & AQLEN_ENABLE != 0
    }
    fn entries(&self) -> u32 {
        self.len & AQLEN_LEN_MASK
    }
    fn base(&self) -> u64 {
        (u64::from(self.bah) << 32) | u64::from(self.bal)
    }
}

/// State of one LAN transmit queue.
#[derive(Debug, Clone, Copy, Default)]
struct TxQueue {
    /// QENA_REQ as last written.
    req: bool,
    /// QENA_STAT: the context was loaded.
    ctx: Option<TxContext>,
    /// The request failed (bad context): not retried until the driver rewrites QENA_REQ.
    failed: bool,
    head: u32,
    stalled_at_tail: Option<u32>,
}

/// State of one LAN receive queue.
#[derive(Debug, Clone, Copy, Default)]
struct RxQueue {
    req: bool,
    ctx: Option<RxContext>,
    failed: bool,
    head: u32,
    stalled_at_tail: Option<u32>,
}

/// The PF's main VSI as the firmware keeps it.
#[derive(Debug, Clone)]
struct Vsi {
    props: [u8; VSI_PROPS_LEN],
    promisc: u16,
    /// Perfect-match filters: MAC and VLAN (None = any VLAN).
    filters: Vec<([u8; 6], Option<u16>)>,
}

impl Vsi {
    fn new(mac: [u8; 6]) -> Self {
        let mut props = [0u8; VSI_PROPS_LEN];
        // Firmware defaults: one contiguous queue (PF queue 0) on TC0, queue-set handle 0, stat index 0.
        props[VSI_OFF_TC_MAPPING..VSI_OFF_TC_MAPPING + 2].copy_from_slice(&0u16.to_le_bytes());
        for i in 1..8 {
            let o = VSI_OFF_QS_HANDLE + 2 * i;
            props[o..o + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        }
        Vsi { props, promisc: PROMISC_BROADCAST, filters: vec![(mac, None)] }
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.props[off], self.props[off + 1]])
    }

    /// The PF queue receive traffic goes to without RSS (TC0's first queue of the VSI's mapping).
    fn rx_queue(&self) -> u32 {
        self.pf_queue(0)
    }

    /// The PF queue of TC0's queue `i` in the VSI's mapping (what an RSS lookup table entry
    /// names), `PF_QUEUES` or more if the mapping names none.
    fn pf_queue(&self, i: u32) -> u32 {
        let offset = u32::from(self.u16_at(VSI_OFF_TC_MAPPING) & 0x1ff) + i;
        let flags = self.u16_at(VSI_OFF_MAPPING_FLAGS);
        if flags & VSI_QUE_MAP_NONCONTIG != 0 {
            let i = (offset as usize).min(15);
            u32::from(self.u16_at(VSI_OFF_QUEUE_MAPPING + 2 * i) & VSI_QUEUE_MASK)
        } else {
            u32::from(self.u16_at(VSI_OFF_QUEUE_MAPPING) & VSI_QUEUE_MASK) + offset
        }
    }
}

/// Free-running 48-bit port counters (GLPRT_*), octets including the FCS.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    gorc: u64,
    uprc: u64,
    mprc: u64,
    bprc: u64,
    gotc: u64,
    uptc: u64,
    mptc: u64,
    bptc: u64,
    roc: u64,
    rdpc: u64,
    tdold: u64,
}

/// Firmware-owned settings the admin queue changes.
#[derive(Debug, Clone)]
struct Firmware {
    lse: bool,
    phy_int_mask: u16,
    phy_link_enabled: bool,
    max_frame: u16,
    lb_mode: u16,
    /// Link status events waiting for an ARQ slot.
    events: VecDeque<(u16, [u8; 16])>,
    vsi: Vsi,
}

impl Firmware {
    fn new(mac: [u8; 6]) -> Self {
        Firmware {
            lse: false,
            phy_int_mask: 0,
            phy_link_enabled: true,
            max_frame: MAX_FRAME_SIZE,
            lb_mode: 0,
            events: VecDeque::new(),
            vsi: Vsi::new(mac),
        }
    }
}

/// The X710 model.
pub struct I40e {
    bdf: String,
    function: u8,
    /// PCI device and bus numbers (PF_FUNC_RID).
    rid: u32,
    mac: [u8; 6],
    cfg: ConfigSpace,
    bar0: Arc<Mapping>,
    regs: HashMap<u32, u32>,
    unknown_logged: HashSet<u32>,
    atq: AqRing,
    arq: AqRing,
    /// ATQT value at which the ATQ stopped on a fault (retried when the driver moves it).
    atq_bad_tail: Option<u32>,
    hmc: Hmc,
    fw: Firmware,
    txq: Vec<TxQueue>,
    rxq: Vec<RxQueue>,
    /// A QENA_REQ is waiting for the device thread.
    qena_pending: bool,
    icr0: u32,
    link_cable: bool,
    link_reported: bool,
    counters: Counters,
    totals: PortStats,
    msix: Msix,
    pending_irqs: u64,
    /// RSS as PFQF_CTL_0, PFQF_HENA, PFQF_HKEY and PFQF_HLUT configure it (decoded on their writes).
    rss: rss::Rss,
    /// RX queues the driver stopped (QENA_REQ 1 -> 0) since the last PF reset, bit per queue.
    rx_stopped: u64,
    /// QINT_RQCTL / QINT_TQCTL of the PF's queues (the rest of the range is plain storage in `regs`).
    qint_rq: [u32; PF_QUEUES as usize],
    qint_tq: [u32; PF_QUEUES as usize],
    /// TX queues with a loaded context, in queue order; rebuilt when `tx_active_dirty`.
    tx_active: Vec<u32>,
    tx_active_dirty: bool,
    /// The wire and the MAC/PHY loopback; `None` only while `poll` holds them.
    links: Option<Links>,
    faults: FaultLog,
    tx_frame: Vec<u8>,
    rx_frame: Vec<u8>,
    /// The frame bytes RSS parses (`frame::rss_head`).
    rss_head: crate::model::frame::RssHead,
    dma_without_bme_recorded: bool,
}

impl std::fmt::Debug for I40e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I40e")
            .field("bdf", &self.bdf)
            .field("wire", &self.links.as_ref().map(|l| l.wire.describe()))
            .finish_non_exhaustive()
    }
}

/// Where frames go and come from: the wire, and the frames looped back inside the MAC/PHY
/// (set_lb_modes), in a ring allocated once.
struct Links {
    wire: Box<dyn Wire>,
    internal: FrameRing,
}

/// Bus and device number of "DDDD:BB:DD.F" as PF_FUNC_RID reports them (0 if unparsable).
fn rid_of(bdf: &str, function: u8) -> u32 {
    let mut parts = bdf.rsplit([':', '.']);
    let _f = parts.next();
    let dev = parts.next().and_then(|d| u32::from_str_radix(d, 16).ok()).unwrap_or(0) & 0x1f;
    let bus = parts.next().and_then(|b| u32::from_str_radix(b, 16).ok()).unwrap_or(0) & 0xff;
    (bus << 8) | (dev << 3) | u32::from(function & 7)
}

impl I40e {
    /// Builds a powered-on X710 PF with firmware up and the link trained.
    pub fn new(cfg: ModelConfig) -> Result<Self, ModelError> {
        let bar0 = Arc::new(Mapping::memfd(&format!("lab-nic {} bar0", cfg.bdf), BAR0_SIZE as usize)?);
        let mut space = ConfigSpace::new(IDS, &bar_defs(cfg.function));
        space.add_pm_cap();
        space.add_msix_cap(MSIX_VECTORS as u16, 3, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET);
        space.add_pcie_cap();
        let mut m = Self {
            rid: rid_of(&cfg.bdf, cfg.function),
            bdf: cfg.bdf,
            function: cfg.function,
            mac: cfg.mac,
            cfg: space,
            bar0,
            regs: HashMap::new(),
            unknown_logged: HashSet::new(),
            atq: AqRing::default(),
            arq: AqRing::default(),
            atq_bad_tail: None,
            hmc: Hmc::default(),
            fw: Firmware::new(cfg.mac),
            txq: vec![TxQueue::default(); PF_QUEUES as usize],
            rxq: vec![RxQueue::default(); PF_QUEUES as usize],
            qena_pending: false,
            icr0: 0,
            link_cable: true,
            link_reported: true,
            counters: Counters::default(),
            totals: PortStats::default(),
            msix: Msix::new(MSIX_VECTORS, MSIX_PBA_OFFSET),
            pending_irqs: 0,
            rss: rss::Rss::default(),
            rx_stopped: 0,
            qint_rq: [0; PF_QUEUES as usize],
            qint_tq: [0; PF_QUEUES as usize],
            tx_active: Vec::with_capacity(PF_QUEUES as usize),
            tx_active_dirty: true,
            links: Some(Links { wire: cfg.wire, internal: FrameRing::default() }),
            faults: FaultLog::default(),
            tx_frame: Vec::with_capacity(crate::wire::MAX_FRAME),
            rx_frame: Vec::with_capacity(crate::wire::MAX_FRAME),
            rss_head: [0; crate::model::rss::HEADER_BYTES],
            dma_without_bme_recorded: false,
        };
        m.pf_reset();
        Ok(m)
    }

    /// PF software reset (PFGEN_CTRL.PFSWR): queues, HMC segments, interrupt and LAN registers, firmware
    /// per-PF settings. The admin queue registers belong to the EMP reset domain and survive it.
    fn pf_reset(&mut self) {
        self.regs.clear();
        self.regs.insert(GLLAN_RCTL_0, GLLAN_RCTL_0_PXE_MODE);
        self.regs.insert(GLHMC_LANTXOBJSZ, LANTXOBJSZ_LOG2);
        self.regs.insert(GLHMC_LANRXOBJSZ, LANRXOBJSZ_LOG2);
        self.regs.insert(GLHMC_LANQMAX, LANQMAX);
        self.hmc.clear();
        self.fw = Firmware::new(self.mac);
        self.txq.iter_mut().for_each(|q| *q = TxQueue::default());
        self.rxq.iter_mut().for_each(|q| *q = RxQueue::default());
        self.qena_pending = false;
        self.icr0 = 0;
        self.bar0.fill(TX_TAIL_PAGES.0 as usize, TX_TAIL_PAGES.1 as usize, 0);
        self.bar0.fill(RX_TAIL_PAGES.0 as usize, RX_TAIL_PAGES.1 as usize, 0);
        if let Some(l) = self.links.as_mut() {
            while !l.internal.is_empty() {
                l.internal.pop();
            }
        }
        self.qint_rq = [0; PF_QUEUES as usize];
        self.qint_tq = [0; PF_QUEUES as usize];
        self.tx_active_dirty = true;
        self.tx_frame.clear();
        self.pending_irqs = 0;
        self.msix.clear_pending();
        self.rx_stopped = 0;
        self.rss_update();
    }

    fn port(&self) -> u32 {
        u32::from(self.function & 3)
    }

    fn link_up(&self) -> bool {
        self.link_cable && self.fw.phy_link_enabled
    }

    /// Queues a link status event when the reported link changes (if the driver enabled them).
    fn update_link(&mut self) {
        let up = self.link_up();
        if up == self.link_reported {
            return;
        }
        self.link_reported = up;
        tracing::info!(bdf = %self.bdf, "link {}", if up { "up" } else { "down" });
        if self.fw.lse && self.fw.phy_int_mask & EVENT_LINK_UPDOWN == 0 {
            let params = self.link_status_params();
            if self.fw.events.len() < 16 {
                self.fw.events.push_back((AQC_GET_LINK_STATUS, params));
            }
        }
    }

    /// QTX_ENA / QRX_ENA write: a request to start (loaded by the next poll) or stop (immediate).
    fn request_queue(&mut self, q: usize, tx: bool, req: bool) {
        let (was, enabled) = if tx {
            let t = &mut self.txq[q];
            let was = t.req;
            t.req = req;
            t.failed = false;
            (was, t.ctx.is_some())
        } else {
            let r = &mut self.rxq[q];
            let was = r.req;
            r.req = req;
            r.failed = false;
            if req {
                self.rx_stopped &= !(1u64 << (q % 64));
            } else if was {
                self.rx_stopped |= 1u64 << (q % 64);
            }
            (was, r.ctx.is_some())
        };
        self.tx_active_dirty |= tx;
        if req && !enabled {
            self.qena_pending = true;
        } else if !req && (was || enabled) {
            tracing::debug!(bdf = %self.bdf, q, "{} queue disabled", if tx { "tx" } else { "rx" });
            if tx {
                self.txq[q] = TxQueue::default();
            } else {
                self.rxq[q] = RxQueue::default();
            }
        }
    }

    /// Loads the contexts of queues whose QENA_REQ is set (the enable handshake).
    fn load_requested_queues(&mut self, dma: &mut dyn Dma) -> bool {
        if !std::mem::take(&mut self.qena_pending) {
            return false;
        }
        let pf = u32::from(self.function);
        let tx_base = u64::from(self.reg(glhmc_lantxbase(pf)) & GLHMC_BASE_MASK) * 512;
        let rx_base = u64::from(self.reg(glhmc_lanrxbase(pf)) & GLHMC_BASE_MASK) * 512;
        let tx_cnt = self.reg(glhmc_lantxcnt(pf)) & GLHMC_CNT_MASK;
        let rx_cnt = self.reg(glhmc_lanrxcnt(pf)) & GLHMC_CNT_MASK;
        for q in 0..PF_QUEUES as usize {
            let t = self.txq[q];
            if t.req && t.ctx.is_none() && !t.failed {
                let fpm = tx_base + (q as u64) * TX_CTX_LEN as u64;
                let mut b = [0u8; TX_CTX_LEN];
                let res = if q as u32 >= tx_cnt {
                    Err("tx queue beyond GLHMC_LANTXCNT")
                } else {
                    self.hmc.read_object(dma, fpm, &mut b).and_then(|_| TxContext::decode(&b))
                };
                match res {
                    Ok(ctx) => {
                        tracing::debug!(bdf = %self.bdf,
                            "hmc tx context q{q}: base={:#x} qlen={} head={} head_wb={} wb_addr={:#x} rdylist={}",
                            ctx.base, ctx.qlen, ctx.head, ctx.head_wb_ena, ctx.head_wb_addr, ctx.rdylist);
                        self.txq[q] =
                            TxQueue { req: true, ctx: Some(ctx), failed: false, head: ctx.head, stalled_at_tail: None };
                        self.tx_active_dirty = true;
                    }
                    Err(what) => {
                        self.faults.record(fpm, TX_CTX_LEN as u64, what);
                        self.txq[q].failed = true;
                    }
                }
            }
            let r = self.rxq[q];
            if r.req && r.ctx.is_none() && !r.failed {
                let fpm = rx_base + (q as u64) * RX_CTX_LEN as u64;
                let mut b = [0u8; RX_CTX_LEN];
                let res = if q as u32 >= rx_cnt {
                    Err("rx queue beyond GLHMC_LANRXCNT")
                } else {
                    self.hmc.read_object(dma, fpm, &mut b).and_then(|_| RxContext::decode(&b))
                };
                match res {
                    Ok(ctx) => {
                        tracing::debug!(bdf = %self.bdf,
                            "hmc rx context q{q}: base={:#x} qlen={} head={} dbuff={} dsize={} crcstrip={} rxmax={}",
                            ctx.base, ctx.qlen, ctx.head, ctx.dbuff, ctx.desc_len(), ctx.crcstrip, ctx.rxmax);
                        self.rxq[q] =
                            RxQueue { req: true, ctx: Some(ctx), failed: false, head: ctx.head, stalled_at_tail: None };
                    }
                    Err(what) => {
                        self.faults.record(fpm, RX_CTX_LEN as u64, what);
                        self.rxq[q].failed = true;
                    }
                }
            }
        }
        true
    }

    /// Sets PFINT_ICR0 causes and fires vector 0 for the enabled ones.
    fn set_icr0(&mut self, causes: u32) {
        self.icr0 |= causes;
        if causes & self.reg(PFINT_ICR0_ENA) != 0 {
            self.pending_irqs |= 1;
        }
    }

    /// Queue interrupt through `QINT_[RT]QCTL`: cause enabled -> its MSI-X vector.
    fn queue_interrupt(&mut self, q: u32, tx: bool) {
        let ctl = if tx { self.qint_tq.get(q as usize) } else { self.qint_rq.get(q as usize) };
        let ctl = ctl.copied().unwrap_or(0);
        if ctl & QINT_CTL_CAUSE_ENA != 0 {
            let v = ctl & QINT_CTL_MSIX_INDX_MASK;
            if v == 0 {
                // A queue on vector 0 (the only vector in INTx/MSI mode) reports in PFINT_ICR0.
                let bit = (ctl >> QINT_CTL_MSIX0_INDX_SHIFT) & 7;
                self.icr0 |= PFINT_ICR0_INTEVENT | (1 << (PFINT_ICR0_QUEUE_SHIFT + bit));
            }
            self.pending_irqs |= 1u64 << (v & 63);
        }
    }

    /// The legacy (INTx) interrupt condition: a PFINT_ICR0 cause enabled in PFINT_ICR0_ENA, or a
    /// queue cause routed to vector 0; reading PFINT_ICR0 (which clears it) deasserts it.
    fn intx_level(&self) -> bool {
        self.icr0 & (self.reg(PFINT_ICR0_ENA) | PFINT_ICR0_QUEUES) != 0
    }

    fn msix_read(&mut self, off: u64, data: &mut [u8]) {
        self.msix.read(off, data);
    }

    fn msix_write(&mut self, off: u64, data: &[u8]) {
        self.pending_irqs |= self.msix.write(off, data);
    }

    fn bar0_ok(off: u64, len: usize) -> bool {
        off & 3 == 0 && len & 3 == 0 && len > 0 && off.checked_add(len as u64).is_some_and(|e| e <= BAR0_SIZE)
    }
}

impl DeviceModel for I40e {
    fn name(&self) -> &'static str {
        "i40e"
    }

    fn ids(&self) -> PciIds {
        IDS
    }

    fn bars(&self) -> [BarDef; 6] {
        bar_defs(self.function)
    }

    fn config_size(&self) -> u64 {
        super::pci::CONFIG_SIZE as u64
    }

    fn config_read(&mut self, off: u64, data: &mut [u8]) {
        self.cfg.set_intx_status(self.intx_level());
        if !self.cfg.read(off, data) {
            self.faults.record(off, data.len() as u64, "config read out of range");
        }
    }

    fn config_write(&mut self, off: u64, data: &[u8]) {
        if !self.cfg.write(off, data) {
            self.faults.record(off, data.len() as u64, "config write out of range");
        }
    }

    fn bar_read(&mut self, bar: u32, off: u64, data: &mut [u8]) {
        match bar {
            0 if Self::bar0_ok(off, data.len()) => {
                for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
                    let v = self.read_reg((off as u32) + 4 * i as u32);
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
            3 if off.checked_add(data.len() as u64).is_some_and(|e| e <= BAR3_SIZE) => self.msix_read(off, data),
            _ => {
                data.fill(0xff);
                self.faults.record(off, data.len() as u64, "bar read unaligned, out of range or unimplemented");
            }
        }
    }

    fn bar_write(&mut self, bar: u32, off: u64, data: &[u8]) {
        match bar {
            0 if Self::bar0_ok(off, data.len()) => {
                for (i, chunk) in data.chunks_exact(4).enumerate() {
                    let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    self.write_reg((off as u32) + 4 * i as u32, v);
                }
            }
            3 if off.checked_add(data.len() as u64).is_some_and(|e| e <= BAR3_SIZE) => self.msix_write(off, data),
            _ => self.faults.record(off, data.len() as u64, "bar write unaligned, out of range or unimplemented"),
        }
    }

    fn sparse_areas(&self, bar: u32) -> Vec<(u64, u64)> {
        if bar == 0 {
            vec![TX_TAIL_PAGES, RX_TAIL_PAGES]
        } else {
            Vec::new()
        }
    }

    fn bar_memory(&self, bar: u32) -> Option<Arc<Mapping>> {
        (bar == 0).then(|| self.bar0.clone())
    }

    fn msix_count(&self) -> u32 {
        MSIX_VECTORS
    }

    fn poll(&mut self, dma: &mut dyn Dma) -> bool {
        self.update_link();
        let mut did = self.process_atq(dma);
        did |= self.post_events(dma);
        did |= self.load_requested_queues(dma);
        if let Some(mut l) = self.links.take() {
            // One translator and one receive batch for the data path of the poll: transmit may
            // deliver straight into the receive ring (an idle loopback), receive then takes what the
            // internal loopback and the wire hold, and the batch's write-backs are stored at the end.
            let mut xl = Xlate::new(&*dma);
            let mut rx = rxtx::RxSet {
                batches: arrayvec::ArrayVec::new(),
                index: [u8::MAX; PF_QUEUES as usize],
                first: 0,
                verdict: crate::model::frame::Verdict::new(rxtx::NO_KEY),
            };
            self.rx_start(&mut rx);
            did |= self.process_tx(&mut xl, &mut l, &mut rx);
            did |= self.process_rx(&mut xl, &mut l, &mut rx);
            self.rx_finish(&mut rx);
            self.links = Some(l);
        }
        did
    }

    fn intx_asserted(&self) -> bool {
        self.cfg.intx_allowed() && self.intx_level()
    }

    fn save(&self) -> Option<Vec<u8>> {
        Some(self.snapshot())
    }

    fn can_migrate(&self) -> bool {
        true
    }

    fn load(&mut self, state: &[u8]) -> Result<(), crate::model::snapshot::SnapshotError> {
        self.restore(state)
    }

    fn take_irqs(&mut self) -> u64 {
        match std::mem::take(&mut self.pending_irqs) {
            0 => 0,
            pending => self.msix.deliver(pending, self.cfg.msix_state()),
        }
    }

    fn reset(&mut self) {
        tracing::info!(bdf = %self.bdf, "function reset");
        self.atq = AqRing::default();
        self.arq = AqRing::default();
        self.pf_reset();
        self.update_link();
    }

    fn link_set(&mut self, up: bool) {
        self.link_cable = up;
        self.update_link();
    }

    fn stats(&self) -> PortStats {
        self.totals
    }

    fn faults(&self) -> &FaultLog {
        &self.faults
    }

    fn faults_mut(&mut self) -> &mut FaultLog {
        &mut self.faults
    }
}

#[cfg(test)]
mod tests;
