//! Intel 82599 (8086:10FB) model: control path (config space, trapped registers, reset, link,
//! interrupts). The data path (descriptor rings, wire) is in `rxtx.rs`; offsets are in [`regs`].
//!
//! BAR0 (512 KiB) is trapped except the queue register pages 0x1000-0x1FFF (RX queues 0-63) and
//! 0x6000-0x7FFF (TX queues 0-127): those live in a memfd the driver mmaps, and [`Ixgbe::poll`] reads
//! them: ring configuration is latched on the RXDCTL/TXDCTL ENABLE 0->1 edge, RDT/TDT are doorbells,
//! and the device writes RDH/TDH back there. The per-queue counters QPRC/QBRC/QPTC in those pages stay 0.
//! Every access to those pages is one 32-bit atomic access ([`Mapping::read32`] is Acquire,
//! [`Mapping::write32`] Release), so a doorbell is never read torn.
//!
//! The enable bits of all 192 queues are scanned (for 0->1 edges) when a trapped access touched the
//! queue pages, after a poll that found nothing to do, and every `rxtx::SCAN_EVERY` busy polls; the
//! enabled queues' own bits are checked on every poll, so a 1->0 edge stops DMA at once. Trapped
//! registers live in a flat array indexed by offset (no hashing on the data path).
//! BAR4 (16 KiB) holds the MSI-X table (64 vectors) at 0 and the PBA at 0x2000, trapped.

mod migrate;
pub mod regs;
mod rss;
mod rxtx;

use std::collections::HashSet;
use std::sync::Arc;

use self::regs::*;
use super::msix::Msix;
use super::pci::{BarDef, BarKind, ConfigSpace, PciIds};
use super::{DeviceModel, ModelConfig, ModelError, PortStats};
use crate::dma::{Dma, Xlate};
use crate::fault::FaultLog;
use crate::mem::Mapping;
use crate::wire::Wire;

/// Latched state of one descriptor ring.
#[derive(Debug, Clone, Copy, Default)]
struct Ring {
    enabled: bool,
    base: u64,
    count: u32,
    /// Set after a fault that prevents progress; cleared when the tail register changes.
    stalled_at_tail: Option<u32>,
}

/// Clear-on-read hardware counters (8.2.3.23).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    crcerrs: u32,
    mpc: [u32; 8],
    gprc: u32,
    bprc: u32,
    mprc: u32,
    gptc: u32,
    gorc: u64,
    gotc: u64,
    tor: u64,
    tpr: u32,
    tpt: u32,
    mptc: u32,
    bptc: u32,
    gorc_latch: Option<u64>,
    gotc_latch: Option<u64>,
    tor_latch: Option<u64>,
}

/// The 82599 model.
pub struct Ixgbe {
    bdf: String,
    function: u8,
    mac: [u8; 6],
    cfg: ConfigSpace,
    bar0: Arc<Mapping>,
    /// Plain storage registers (known ones and unknown writes), one word per BAR0 offset / 4.
    regs: Box<[u32]>,
    unknown_logged: HashSet<u32>,
    rar: [(u32, u32); RAR_ENTRIES as usize],
    eicr: u32,
    eims: u32,
    link_cable: bool,
    link_trained: bool,
    link_reported: bool,
    counters: Counters,
    totals: PortStats,
    rxq: Vec<Ring>,
    txq: Vec<Ring>,
    /// TX queues latched enabled with a non-empty ring, in queue order (rebuilt by the scan).
    tx_active: Vec<u32>,
    /// Bumped when a trapped access or a reset touched the queue pages: the next poll rescans.
    queue_gen: u64,
    scanned_gen: u64,
    /// Polls since the last full enable scan, and whether the last poll found nothing to do.
    polls_since_scan: u32,
    last_poll_idle: bool,
    msix: Msix,
    pending_irqs: u64,
    /// RSS as MRQC, RXCSUM, RSSRK and RETA configure it (decoded on their writes).
    rss: rss::Rss,
    /// RX queues the driver stopped (ENABLE 1 -> 0) since the last reset, bit per queue.
    rx_stopped: u64,
    /// The wire; `None` only while `poll` holds it (the data path borrows it beside `self`).
    wire: Option<Box<dyn Wire>>,
    faults: FaultLog,
    tx_frame: Vec<u8>,
    rx_frame: Vec<u8>,
    /// The frame bytes RSS parses (`frame::rss_head`).
    rss_head: crate::model::frame::RssHead,
    dma_without_bme_recorded: bool,
}

impl std::fmt::Debug for Ixgbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ixgbe")
            .field("bdf", &self.bdf)
            .field("wire", &self.wire.as_ref().map(|w| w.describe()))
            .finish_non_exhaustive()
    }
}

/// Identity of the emulated 82599 SFP+ (subsystem: Intel X520-DA2).
pub const IDS: PciIds = PciIds {
    vendor: 0x8086,
    device: 0x10fb,
    subsystem_vendor: 0x8086,
    subsystem_device: 0x000c,
    class: 0x020000,
    revision: 0x01,
};

fn bar_defs(function: u8) -> [BarDef; 6] {
    let base = 0xd000_0000u64 + u64::from(function) * 0x0010_0000;
    let mut bars = [BarDef::UNUSED; 6];
    bars[0] = BarDef { kind: BarKind::Mem64 { prefetch: true }, size: BAR0_SIZE, addr: base + 0x8_0000 };
    bars[4] = BarDef { kind: BarKind::Mem64 { prefetch: true }, size: BAR4_SIZE, addr: base + 0x0_4000 };
    bars
}

impl Ixgbe {
    /// Builds a powered-on, reset 82599.
    pub fn new(cfg: ModelConfig) -> Result<Self, ModelError> {
        let bar0 = Arc::new(Mapping::memfd(&format!("lab-nic {} bar0", cfg.bdf), BAR0_SIZE as usize)?);
        let mut space = ConfigSpace::new(IDS, &bar_defs(cfg.function));
        space.add_pm_cap();
        space.add_msix_cap(MSIX_VECTORS as u16, 4, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET);
        space.add_pcie_cap();
        let mut m = Self {
            bdf: cfg.bdf,
            function: cfg.function,
            mac: cfg.mac,
            cfg: space,
            bar0,
            regs: vec![0; (BAR0_SIZE / 4) as usize].into_boxed_slice(),
            unknown_logged: HashSet::new(),
            rar: [(0, 0); RAR_ENTRIES as usize],
            eicr: 0,
            eims: 0,
            link_cable: true,
            link_trained: false,
            link_reported: false,
            counters: Counters::default(),
            totals: PortStats::default(),
            rxq: vec![Ring::default(); RX_QUEUES as usize],
            txq: vec![Ring::default(); TX_QUEUES as usize],
            tx_active: Vec::with_capacity(TX_QUEUES as usize),
            queue_gen: 1,
            scanned_gen: 0,
            polls_since_scan: 0,
            last_poll_idle: true,
            msix: Msix::new(MSIX_VECTORS, MSIX_PBA_OFFSET),
            pending_irqs: 0,
            rss: rss::Rss::default(),
            rx_stopped: 0,
            wire: Some(cfg.wire),
            faults: FaultLog::default(),
            tx_frame: Vec::with_capacity(crate::wire::MAX_FRAME),
            rx_frame: Vec::with_capacity(crate::wire::MAX_FRAME + 4),
            rss_head: [0; crate::model::rss::HEADER_BYTES],
            dma_without_bme_recorded: false,
        };
        m.reset_state();
        Ok(m)
    }

    /// Global reset (CTRL.RST, CTRL.LNK_RST, DEVICE_RESET): registers, rings, queue pages, counters.
    fn reset_state(&mut self) {
        self.regs.fill(0);
        self.set_reg(HLREG0, HLREG0_DEFAULT);
        for q in 0..SRRCTL_QUEUES {
            self.set_reg(srrctl(q), SRRCTL_DEFAULT);
            self.set_reg(dca_rxctrl(q), DCA_RXCTRL_DEFAULT);
        }
        self.set_reg(rxpbsize(0), RXPBSIZE_DEFAULT);
        self.set_reg(txpbsize(0), TXPBSIZE_DEFAULT);
        self.rar = [(0, 0); RAR_ENTRIES as usize];
        let m = self.mac;
        self.rar[0] = (u32::from_le_bytes([m[0], m[1], m[2], m[3]]), u32::from_le_bytes([m[4], m[5], 0, 0]) | RAH_AV);
        self.eicr = 0;
        self.eims = 0;
        self.link_trained = false;
        self.link_reported = false;
        self.counters = Counters::default();
        self.rxq.iter_mut().for_each(|r| *r = Ring::default());
        self.txq.iter_mut().for_each(|r| *r = Ring::default());
        self.tx_active.clear();
        self.queue_gen += 1;
        self.bar0.fill(RX_QUEUE_PAGE.0 as usize, RX_QUEUE_PAGE.1 as usize, 0);
        self.bar0.fill(TX_QUEUE_PAGES.0 as usize, TX_QUEUE_PAGES.1 as usize, 0);
        self.pending_irqs = 0;
        self.msix.clear_pending();
        self.tx_frame.clear();
        self.rx_stopped = 0;
        self.rss_update();
    }

    fn link_up(&self) -> bool {
        self.link_cable && self.link_trained
    }

    /// Raises LSC when the reported link state changes.
    fn update_link(&mut self) {
        let up = self.link_up();
        if up != self.link_reported {
            self.link_reported = up;
            tracing::info!(bdf = %self.bdf, "link {}", if up { "up" } else { "down" });
            self.set_cause(EICR_LSC);
        }
    }

    fn in_queue_pages(off: u32) -> bool {
        let o = u64::from(off);
        (RX_QUEUE_PAGE.0..RX_QUEUE_PAGE.0 + RX_QUEUE_PAGE.1).contains(&o)
            || (TX_QUEUE_PAGES.0..TX_QUEUE_PAGES.0 + TX_QUEUE_PAGES.1).contains(&o)
    }

    fn rar_index(off: u32) -> Option<(usize, bool)> {
        let legacy_end = RAR_LEGACY_BASE + 8 * RAR_LEGACY_ENTRIES;
        let end = ral(0) + 8 * RAR_ENTRIES;
        let (base, o) = if (RAR_LEGACY_BASE..legacy_end).contains(&off) {
            (RAR_LEGACY_BASE, off)
        } else if (ral(0)..end).contains(&off) {
            (ral(0), off)
        } else {
            return None;
        };
        let rel = o - base;
        Some(((rel / 8) as usize, rel % 8 == 4))
    }

    fn is_storage(off: u32) -> bool {
        matches!(
            off,
            CTRL_EXT
                | EIAC
                | EIAM
                | GPIE
                | IVAR_MISC
                | RDRXCTL
                | RXCTRL
                | HLREG0
                | AUTOC2
                | RTTDCS
                | DMATXCTL
                | DTXMXSZRQ
                | FCTRL
                | EEC
                | AUTOC
        ) || (eitr(0)..eitr(EITR_COUNT)).contains(&off)
            || (ivar(0)..ivar(IVAR_COUNT)).contains(&off)
            || (srrctl(0)..srrctl(SRRCTL_QUEUES)).contains(&off)
            || (dca_rxctrl(0)..dca_rxctrl(SRRCTL_QUEUES)).contains(&off)
            || (rxpbsize(0)..rxpbsize(8)).contains(&off)
            || (txpbsize(0)..txpbsize(8)).contains(&off)
            || rss::is_rss_reg(off)
    }

    #[inline]
    fn reg(&self, off: u32) -> u32 {
        self.regs.get((off >> 2) as usize).copied().unwrap_or(0)
    }

    fn set_reg(&mut self, off: u32, val: u32) {
        if let Some(r) = self.regs.get_mut((off >> 2) as usize) {
            *r = val;
        }
    }

    fn take(v: &mut u32) -> u32 {
        std::mem::take(v)
    }

    /// Reads a 36-bit octet counter half: the low read latches, the high read clears.
    fn octets(value: &mut u64, latch: &mut Option<u64>, high: bool) -> u32 {
        if high {
            let v = latch.take().unwrap_or(*value);
            *value = value.saturating_sub(v);
            ((v >> 32) & 0xf) as u32
        } else {
            *latch = Some(*value);
            *value as u32
        }
    }

    /// One 32-bit register read of BAR0 at a 4-byte aligned offset.
    fn read_reg(&mut self, off: u32) -> u32 {
        if Self::in_queue_pages(off) {
            return self.bar0.read32(off as usize).unwrap_or(0);
        }
        if let Some((n, high)) = Self::rar_index(off) {
            return if high { self.rar[n].1 } else { self.rar[n].0 };
        }
        let c = &mut self.counters;
        match off {
            CTRL => self.reg(CTRL),
            STATUS => {
                (u32::from(self.function & 1) << STATUS_LAN_ID_SHIFT) | if self.link_up() { STATUS_LINK_UP } else { 0 }
            }
            EICR => Self::take(&mut self.eicr),
            EICS => self.eicr,
            EIMS => self.eims,
            EIMC => 0,
            RDRXCTL => self.reg(RDRXCTL) | RDRXCTL_DMAIDONE,
            EEC => self.reg(EEC) | EEC_PRES | EEC_ARD,
            AUTOC => self.reg(AUTOC) & !AUTOC_AN_RESTART,
            LINKS => {
                if self.link_up() {
                    LINKS_UP | LINKS_SPEED_10G
                } else {
                    0
                }
            }
            // No auto-negotiation partner is modelled: nothing to report.
            LINKS2 => 0,
            CRCERRS => Self::take(&mut c.crcerrs),
            GPRC => Self::take(&mut c.gprc),
            BPRC => Self::take(&mut c.bprc),
            MPRC => Self::take(&mut c.mprc),
            GPTC => Self::take(&mut c.gptc),
            TPR => Self::take(&mut c.tpr),
            TPT => Self::take(&mut c.tpt),
            MPTC => Self::take(&mut c.mptc),
            BPTC => Self::take(&mut c.bptc),
            GORCL | GORCH => Self::octets(&mut c.gorc, &mut c.gorc_latch, off == GORCH),
            GOTCL | GOTCH => Self::octets(&mut c.gotc, &mut c.gotc_latch, off == GOTCH),
            TORL | TORH => Self::octets(&mut c.tor, &mut c.tor_latch, off == TORH),
            o if (mpc(0)..mpc(8)).contains(&o) => Self::take(&mut c.mpc[((o - mpc(0)) / 4) as usize]),
            o => self.reg(o),
        }
    }

    /// One 32-bit register write of BAR0 at a 4-byte aligned offset.
    fn write_reg(&mut self, off: u32, val: u32) {
        if Self::in_queue_pages(off) {
            self.bar0.write32(off as usize, val);
            self.queue_gen += 1;
            return;
        }
        if let Some((n, high)) = Self::rar_index(off) {
            if high {
                self.rar[n].1 = val;
            } else {
                self.rar[n].0 = val;
            }
            return;
        }
        match off {
            CTRL => {
                if val & (CTRL_RST | CTRL_LNK_RST) != 0 {
                    tracing::info!(bdf = %self.bdf, "device reset (CTRL {val:#x})");
                    self.reset_state();
                    self.update_link();
                }
                self.set_reg(CTRL, val & !(CTRL_RST | CTRL_LNK_RST));
            }
            STATUS | LINKS | LINKS2 => {}
            EICR => self.eicr &= !val,
            EICS => self.set_cause(val),
            EIMS => {
                self.eims |= val & 0x7fff_ffff;
                self.fire_enabled_causes(val);
            }
            EIMC => self.eims &= !val,
            AUTOC => {
                self.set_reg(AUTOC, val & !AUTOC_AN_RESTART);
                if val & AUTOC_AN_RESTART != 0 {
                    self.link_trained = true;
                    self.update_link();
                }
            }
            o if (mpc(0)..mpc(8)).contains(&o) => {}
            CRCERRS | GPRC | BPRC | MPRC | GPTC | GORCL | GORCH | GOTCL | GOTCH | TORL | TORH | TPR | TPT | MPTC
            | BPTC => {}
            o => {
                if !Self::is_storage(o) && self.unknown_logged.insert(o) {
                    tracing::info!(bdf = %self.bdf, "write to unemulated register {o:#07x} = {val:#x} (kept)");
                }
                self.set_reg(o, val);
                if rss::is_rss_reg(o) {
                    self.rss_update();
                }
            }
        }
    }

    /// Sets interrupt causes and schedules the vectors they map to.
    fn set_cause(&mut self, causes: u32) {
        self.eicr |= causes;
        self.fire_enabled_causes(causes);
    }

    fn fire_enabled_causes(&mut self, causes: u32) {
        let active = causes & self.eicr & self.eims;
        for v in 0..16 {
            if active & (1 << v) != 0 {
                self.fire_vector(v);
            }
        }
        if active & !EICR_RTXQ_MASK != 0 {
            let misc = self.reg(IVAR_MISC) >> 8;
            if misc & IVAR_VALID != 0 {
                self.fire_vector(misc & 0x3f);
            }
        }
    }

    /// The legacy (INTx/MSI) interrupt condition (7.3.1.1): a cause set in EICR and enabled in
    /// EIMS. Reading EICR (which clears it) or masking the causes in EIMC deasserts it.
    fn intx_level(&self) -> bool {
        self.eicr & self.eims != 0
    }

    fn fire_vector(&mut self, v: u32) {
        self.pending_irqs |= 1u64 << (v & 63);
        // Auto-clear (EIAC) acts on MSI-X vectors only; in legacy mode the cause stays in EICR
        // until the driver reads it.
        let msix = self.cfg.msix_state().is_some_and(|(on, _)| on);
        if msix && v < 16 && self.reg(EIAC) & (1 << v) != 0 {
            self.eicr &= !(1 << v);
        }
    }

    /// Queue completion interrupt through IVAR (7.3.4): byte 0/2 RX queue 2n/2n+1, byte 1/3 TX.
    fn queue_interrupt(&mut self, q: u32, tx: bool) {
        let shift = (q % 2) * 16 + if tx { 8 } else { 0 };
        let entry = (self.reg(ivar(q / 2)) >> shift) & 0xff;
        if entry & IVAR_VALID == 0 {
            return;
        }
        let v = entry & 0x3f;
        if v < 16 {
            self.eicr |= 1 << v;
            if self.eims & (1 << v) != 0 {
                self.fire_vector(v);
            }
        } else {
            self.fire_vector(v);
        }
    }

    /// A queue-page register: one 32-bit Acquire load (a doorbell read sees the descriptors the
    /// driver wrote before ringing it).
    #[inline]
    fn page32(&self, off: u32) -> u32 {
        self.bar0.read32(off as usize).unwrap_or(0)
    }

    /// A queue-page register write (RDH/TDH): one 32-bit Release store, after every DMA before it.
    #[inline]
    fn set_page32(&self, off: u32, v: u32) {
        self.bar0.write32(off as usize, v);
    }

    /// A trapped BAR0 access: whole aligned 32-bit registers inside the BAR.
    fn bar0_ok(off: u64, len: usize) -> bool {
        off & 3 == 0 && len & 3 == 0 && len > 0 && off.checked_add(len as u64).is_some_and(|e| e <= BAR0_SIZE)
    }

    fn msix_read(&mut self, off: u64, data: &mut [u8]) {
        self.msix.read(off, data);
    }

    fn msix_write(&mut self, off: u64, data: &[u8]) {
        self.pending_irqs |= self.msix.write(off, data);
    }
}

impl DeviceModel for Ixgbe {
    fn name(&self) -> &'static str {
        "ixgbe"
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
            0 => {
                let ok = Self::bar0_ok(off, data.len());
                if !ok {
                    data.fill(0xff);
                    self.faults.record(off, data.len() as u64, "bar0 read unaligned or out of range");
                    return;
                }
                for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
                    let v = self.read_reg((off as u32) + 4 * i as u32);
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
            4 if off.checked_add(data.len() as u64).is_some_and(|e| e <= BAR4_SIZE) => self.msix_read(off, data),
            _ => {
                data.fill(0xff);
                self.faults.record(off, data.len() as u64, "read of unimplemented BAR or out of range");
            }
        }
    }

    fn bar_write(&mut self, bar: u32, off: u64, data: &[u8]) {
        match bar {
            0 => {
                let ok = Self::bar0_ok(off, data.len());
                if !ok {
                    self.faults.record(off, data.len() as u64, "bar0 write unaligned or out of range");
                    return;
                }
                for (i, chunk) in data.chunks_exact(4).enumerate() {
                    let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    self.write_reg((off as u32) + 4 * i as u32, v);
                }
            }
            4 if off.checked_add(data.len() as u64).is_some_and(|e| e <= BAR4_SIZE) => self.msix_write(off, data),
            _ => self.faults.record(off, data.len() as u64, "write to unimplemented BAR or out of range"),
        }
    }

    fn sparse_areas(&self, bar: u32) -> Vec<(u64, u64)> {
        if bar == 0 {
            vec![RX_QUEUE_PAGE, TX_QUEUE_PAGES]
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
        let mut did = false;
        if self.scan_due() {
            did |= self.scan_queue_enables();
        }
        self.polls_since_scan = self.polls_since_scan.saturating_add(1);
        if let Some(mut wire) = self.wire.take() {
            // One translator and one receive batch for the poll: transmit may deliver straight
            // into the receive ring (an idle loopback), receive then takes what the wire holds.
            let mut xl = Xlate::new(dma);
            let mut rx = rxtx::RxSet {
                cut: wire.loops_back_idle(),
                batches: arrayvec::ArrayVec::new(),
                index: [u8::MAX; RSS_QUEUES],
                verdict: crate::model::frame::Verdict::new(u64::MAX),
            };
            self.rx_start(&mut rx);
            did |= self.process_tx(&mut xl, wire.as_mut(), &mut rx);
            did |= self.process_rx(&mut xl, wire.as_mut(), &mut rx);
            self.rx_finish(&mut rx);
            self.wire = Some(wire);
        }
        self.last_poll_idle = !did;
        did
    }

    fn take_irqs(&mut self) -> u64 {
        match std::mem::take(&mut self.pending_irqs) {
            0 => 0,
            pending => self.msix.deliver(pending, self.cfg.msix_state()),
        }
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

    fn reset(&mut self) {
        tracing::info!(bdf = %self.bdf, "function reset");
        self.reset_state();
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
