//! `net_ixgbe`: the Intel 82599 poll-mode driver (8086:10fb and the other 82599 ids), over kernel
//! VFIO on a real NIC or vfio-user against `lab-nic`.
//!
//! Control path here, data path in [`rxtx`], registers in [`regs`]; the queue zones and the port
//! chores net_i40e does the same way (the port skeleton: transport, DMA map, device-state zone,
//! queue counters, release tail) are in the crate's `pci` module. Read [`IxgbeDriver::probe`]
//! top to bottom next to the datasheet (order no. 331520): the primary runs the initialisation of
//! section 4.6.3 to 4.6.8 as ixy orders it; a secondary only attaches (its own transport
//! connection, its own BAR mapping, its own DMA map of the lab's shared memory) and finds the
//! queues the primary built.
//!
//! Shared state (memzones the primary reserves, secondaries look up):
//! * `ixgbe_<port>_dev`: [`DevShared`]: MAC, MTU, queue counts, and the clear-on-read hardware
//!   counters accumulated by whichever process last read them (under the shared-memory lock);
//! * `ixgbe_<port>_rxq<q>` / `ixgbe_<port>_txq<q>`: one per queue, see [`rxtx`].
//!
//! Devargs keys: `promisc` (start in promiscuous mode, default off), `rxd` / `txd` (ring sizes,
//! default the port configuration's `nb_desc`). Queue counts come from the port configuration.

pub mod regs;
pub mod rss;
pub mod rxtx;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use lab_core::bus::pci::PciId;
use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::PortId;
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx};
use lab_core::mbuf::Mempool;
use lab_core::vfio::Bar;

use self::regs::*;
use self::rxtx::{RxQueue, TxQueue};
use crate::error::{Ctx, DriverError};
use crate::pci::{self, fmt_mac, DevState, PciPort};

const NAME: &str = "net_ixgbe";
/// Queues this driver sets up at most (SRRCTL and DCA_RXCTRL are addressed through their
/// queue 0..15 aliases).
pub const MAX_QUEUES: u16 = 16;
/// Smallest ring (RDLEN/TDLEN are multiples of 128 bytes; rings here are multiples of 32).
pub const MIN_DESC: u16 = 64;
/// Largest ring.
pub const MAX_DESC: u16 = 4096;
/// Frame overhead over the MTU: Ethernet header and CRC.
const FRAME_OVERHEAD: u32 = 14 + 4;
const DEFAULT_MTU: u16 = 1500;
const DEV_MAGIC: u64 = 0x4958_4742_4445_5601;

/// Every wait on the device: short interval, bounded (a trapped read over vfio-user is a round trip).
const POLL_INTERVAL: Duration = Duration::from_micros(500);
const RESET_TIMEOUT: Duration = Duration::from_secs(2);
const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
const LINK_TIMEOUT: Duration = Duration::from_secs(2);

/// 82599 device ids (Intel, vendor 8086), as the datasheet and the Linux/DPDK id tables list them.
static PCI_IDS: [PciId; 16] = [
    PciId { vendor: 0x8086, device: 0x10f7 }, // 82599 KX4
    PciId { vendor: 0x8086, device: 0x1514 }, // 82599 KX4 mezzanine
    PciId { vendor: 0x8086, device: 0x1517 }, // 82599 KR
    PciId { vendor: 0x8086, device: 0x10f8 }, // 82599 combo backplane
    PciId { vendor: 0x8086, device: 0x10f9 }, // 82599 CX4
    PciId { vendor: 0x8086, device: 0x10fb }, // 82599 SFP+ (X520)
    PciId { vendor: 0x8086, device: 0x152a }, // 82599 backplane FCoE
    PciId { vendor: 0x8086, device: 0x1529 }, // 82599 SFP+ FCoE
    PciId { vendor: 0x8086, device: 0x1507 }, // 82599 SFP+ EM
    PciId { vendor: 0x8086, device: 0x154d }, // 82599 SFP+ SF2
    PciId { vendor: 0x8086, device: 0x154a }, // 82599 SFP+ SF_QP
    PciId { vendor: 0x8086, device: 0x1558 }, // 82599 QSFP+ SF_QP
    PciId { vendor: 0x8086, device: 0x1557 }, // 82599EN SFP+
    PciId { vendor: 0x8086, device: 0x10fc }, // 82599 XAUI LOM
    PciId { vendor: 0x8086, device: 0x151c }, // 82599 T3 LOM
    PciId { vendor: 0x8086, device: 0x154f }, // 82599 LS
];

static KEYS: [KeySpec; 3] = [
    KeySpec::new("promisc", KeyKind::Bool, "start in promiscuous mode: FCTRL.UPE|MPE (default 0)"),
    KeySpec::new(
        "rxd",
        KeyKind::U64 { min: MIN_DESC as u64, max: MAX_DESC as u64 },
        "receive descriptors per queue, a multiple of 32 (default: the port configuration)",
    ),
    KeySpec::new(
        "txd",
        KeyKind::U64 { min: MIN_DESC as u64, max: MAX_DESC as u64 },
        "transmit descriptors per queue, a multiple of 32 (default: the port configuration)",
    ),
];

/// The net_ixgbe driver.
pub struct IxgbeDriver;

/// Device state shared by every process attached to the port (memzone `ixgbe_<port>_dev`).
#[repr(C, align(64))]
pub struct DevShared {
    magic: AtomicU64,
    mac_lo: AtomicU32,
    mac_hi: AtomicU32,
    mtu: AtomicU32,
    nb_rxq: AtomicU32,
    nb_txq: AtomicU32,
    rxd: AtomicU32,
    buf_size: AtomicU32,
    txd: AtomicU32,
    /// Accumulated clear-on-read counters (written under the shared-memory lock).
    gprc: AtomicU64,
    gptc: AtomicU64,
    gorc: AtomicU64,
    gotc: AtomicU64,
    mpc: AtomicU64,
}
const _: () = assert!(std::mem::size_of::<DevShared>() == 128);
const _: () = assert!(std::mem::offset_of!(DevShared, gprc) == 40);

impl DevState for DevShared {
    fn magic(&self) -> &AtomicU64 {
        &self.magic
    }
    fn mac(&self) -> [u8; 6] {
        let lo = self.mac_lo.load(Ordering::Relaxed).to_le_bytes();
        let hi = self.mac_hi.load(Ordering::Relaxed).to_le_bytes();
        [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]]
    }
    fn mtu(&self) -> u16 {
        self.mtu.load(Ordering::Relaxed) as u16
    }
}

fn dev_zone(port: PortId) -> String {
    format!("ixgbe_{port}_dev")
}

impl Driver for IxgbeDriver {
    fn name(&self) -> &'static str {
        NAME
    }
    fn bus(&self) -> BusKind {
        BusKind::Pci
    }
    fn keys(&self) -> &'static [KeySpec] {
        &KEYS
    }
    fn pci_ids(&self) -> &'static [PciId] {
        &PCI_IDS
    }
    fn probe(&self, ctx: &ProbeCtx<'_>) -> Result<Box<dyn EthDev>, EthError> {
        let err = |e: DriverError| ctx.error(NAME, e);
        let pci = ctx.pci.ok_or_else(|| err(DriverError::config("not a PCI device")))?;
        let conf = ctx.conf;
        pci::check_queue_counts(conf, MAX_QUEUES).map_err(err)?;
        if let Some(r) = &conf.rss {
            rss::check(r).map_err(err)?;
        }
        let ring = |key: &str| -> Result<u32, EthError> {
            let n = ctx.kvargs.get_u64(key).unwrap_or(u64::from(conf.nb_desc));
            let m = u64::from(rxtx::TX_RS_THRESH);
            if !(u64::from(MIN_DESC)..=u64::from(MAX_DESC)).contains(&n) || !n.is_multiple_of(m) {
                return Err(err(DriverError::config(format!(
                    "{key}={n}: a multiple of {m} in {MIN_DESC}..={MAX_DESC}"
                ))));
            }
            Ok(n as u32)
        };
        let (rxd, txd) = (ring("rxd")?, ring("txd")?);
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(shm, &conf.pool, 256).ctx(format!("buffer pool {}", conf.pool)).map_err(err)?;

        // Transport, this process's DMA map (the whole shared memory at IOVA_BASE: rings and
        // buffers are in it) and BAR 0.
        let mut port = Port { pci: PciPort::open(ctx, pci).map_err(err)? };
        // From here on an error drops `port`, which unmaps, disconnects and (primary) frees zones.
        if port.pci.primary {
            // 9.3.3.3: memory space and bus master on (a secondary leaves the device alone).
            port.pci.bus_master().map_err(err)?;
            let promisc = ctx.kvargs.get_bool("promisc").unwrap_or(false);
            port.init_primary(&pool, conf.nb_rxq, conf.nb_txq, (rxd, txd), promisc, conf.rss.as_ref()).map_err(err)?;
        } else {
            port.attach_secondary(&pool).map_err(err)?;
        }
        // This process's link-status interrupt: its own eventfd on vector 0 (best effort: a
        // port without it still works, its link changes are then seen only by polling).
        match port.pci.link_irq() {
            Ok(()) => {
                let up = port.bar().read32(LINKS) & LINKS_UP != 0;
                port.pci.set_link_baseline(up);
            }
            Err(e) => tracing::warn!(port = %ctx.port, "no link-status interrupt in this process: {e}"),
        }
        let info = port.info();
        tracing::info!(device = %ctx.name, port = %ctx.port, role = if port.pci.primary { "primary" } else { "secondary" },
            mac = %fmt_mac(&info.mac), rxq = info.nb_rxq, txq = info.nb_txq, "ixgbe port ready");
        Ok(Box::new(port))
    }
}

/// This process's handle on one 82599 port: the PCI port skeleton, nothing more.
struct Port {
    pci: PciPort<DevShared, RxQueue, TxQueue>,
}

impl Port {
    fn bar(&self) -> &Bar {
        &self.pci.bar
    }

    fn sh(&self) -> Option<&DevShared> {
        self.pci.sh()
    }

    fn poll(&self, off: u64, mask: u32, value: u32, timeout: Duration, what: &str) -> Result<u32, DriverError> {
        self.bar().poll_until(off, mask, value, timeout, POLL_INTERVAL).ctx(what)
    }

    fn map_shared(&mut self, create: bool) -> Result<(), DriverError> {
        self.pci.map_shared(&dev_zone(self.pci.port), create)
    }

    /// Primary: full initialisation, as the datasheet orders it (4.6.3 .. 4.6.8).
    fn init_primary(
        &mut self,
        pool: &Mempool,
        nrx: u16,
        ntx: u16,
        (rxd, txd): (u32, u32),
        promisc: bool,
        rss_conf: Option<&lab_core::rss::RssConf>,
    ) -> Result<(), DriverError> {
        let bar = self.bar();

        // 4.6.3.1 Interrupts during initialisation: mask all, clear pending causes (read EICR).
        bar.write32(EIMC, EIMC_ALL);
        let _ = bar.read32(EICR);

        // 4.6.3.2 Global reset: CTRL.RST | CTRL.LNK_RST, wait until both clear, then 10 ms.
        bar.write32(CTRL, bar.read32(CTRL) | CTRL_RST_MASK);
        self.poll(CTRL, CTRL_RST_MASK, 0, RESET_TIMEOUT, "device reset")?;
        std::thread::sleep(Duration::from_millis(10));
        // 4.6.3.1 again: the reset re-enabled nothing, but a reset may leave causes pending.
        bar.write32(EIMC, EIMC_ALL);
        let _ = bar.read32(EICR);

        // 4.6.3: wait for EEPROM auto-read (EEC.ARD) and DMA init done (RDRXCTL.DMAIDONE).
        self.poll(EEC, EEC_ARD, EEC_ARD, RESET_TIMEOUT, "EEPROM auto-read")?;
        self.poll(RDRXCTL, RDRXCTL_DMAIDONE, RDRXCTL_DMAIDONE, RESET_TIMEOUT, "DMA init")?;

        // 4.6.4 Link setup: AUTOC.LMS = 10G serial, 10G PMA/PMD = XAUI, restart auto-negotiation.
        // No wait here: link comes up while the queues are set up.
        let autoc =
            (bar.read32(AUTOC) & !AUTOC_LMS_MASK & !AUTOC_10G_PMA_PMD_MASK) | AUTOC_LMS_10G_SERIAL | AUTOC_10G_XAUI;
        bar.write32(AUTOC, autoc);
        bar.write32(AUTOC, autoc | AUTOC_AN_RESTART);

        // 8.2.3.7.8 / 8.2.3.7.9: the MAC address the EEPROM loaded into receive address 0.
        let (lo, hi) = (bar.read32(ral(0)), bar.read32(rah(0)));
        if lo == u32::MAX && hi == u32::MAX {
            return Err(DriverError::state("device does not answer (registers read all-ones)"));
        }
        if hi & RAH_AV == 0 {
            tracing::warn!(port = %self.pci.port, "RAH(0).AV clear: the EEPROM loaded no MAC address");
        }

        // 4.6.5 Statistics: read the clear-on-read counters once.
        for r in [GPRC, GPTC, GORCL, GORCH, GOTCL, GOTCH, mpc(0)] {
            let _ = bar.read32(r);
        }

        // Buffer size the device may write per descriptor (SRRCTL.BSIZEPACKET, 1 KiB units).
        let buf_size = {
            let mut p = pool.new_handle();
            let m = p.alloc().ok_or_else(|| DriverError::state(format!("buffer pool {} is empty", pool.name())))?;
            let room = m.buf_len() - m.headroom();
            p.free(m);
            (room / 1024).min(16) * 1024
        };
        if buf_size < 2048 {
            return Err(DriverError::config(format!(
                "buffer pool {}: data room under 2 KiB cannot hold a frame",
                pool.name()
            )));
        }

        self.map_shared(true)?;
        let sh = self.sh().ok_or_else(|| DriverError::state("no shared state"))?;
        sh.mac_lo.store(lo, Ordering::Relaxed);
        sh.mac_hi.store(hi & 0xffff, Ordering::Relaxed);
        sh.mtu.store(u32::from(DEFAULT_MTU), Ordering::Relaxed);
        sh.nb_rxq.store(nrx.into(), Ordering::Relaxed);
        sh.nb_txq.store(ntx.into(), Ordering::Relaxed);
        sh.rxd.store(rxd, Ordering::Relaxed);
        sh.txd.store(txd, Ordering::Relaxed);
        sh.buf_size.store(buf_size as u32, Ordering::Relaxed);
        sh.magic.store(DEV_MAGIC, Ordering::Release);

        // Queue memory: the primary reserves every ring.
        self.open_queues(pool, nrx, ntx, (rxd, txd), buf_size, true)?;
        let bar = self.bar();

        // 4.6.7 Receive initialisation.
        // 4.6.7.1: RX off while configuring; one packet buffer of 128 KiB (no DCB).
        bar.clear_bits(RXCTRL, RXCTRL_RXEN);
        bar.write32(rxpbsize(0), RXPBSIZE_128KB);
        for i in 1..8 {
            bar.write32(rxpbsize(i), 0);
        }
        // CRC strip in both places that control it (HLREG0.RXCRCSTRP and RDRXCTL.CRCSTRIP).
        bar.set_bits(HLREG0, HLREG0_RXCRCSTRP);
        bar.set_bits(RDRXCTL, RDRXCTL_CRCSTRIP);
        // 8.2.3.7.1: accept broadcast; unicast to RAR[0]; promiscuous if asked.
        let fctrl = FCTRL_BAM | if promisc { FCTRL_UPE | FCTRL_MPE } else { 0 };
        bar.write32(FCTRL, (bar.read32(FCTRL) & !(FCTRL_UPE | FCTRL_MPE)) | fctrl);
        // 8.2.3.22.13: largest frame accepted (MTU + header + CRC).
        bar.write32(MAXFRS, (u32::from(DEFAULT_MTU) + FRAME_OVERHEAD) << MAXFRS_MFS_SHIFT);
        // 4.6.7.1 per queue: advanced one-buffer descriptors, drop when no descriptor, ring address.
        for (q, rx) in self.pci.rxq.iter().enumerate() {
            let q = q as u32;
            let s = bar.read32(srrctl(q)) & !(SRRCTL_DESCTYPE_MASK | SRRCTL_BSIZEPACKET_MASK);
            bar.write32(srrctl(q), s | SRRCTL_DESCTYPE_ADV_ONEBUF | SRRCTL_DROP_EN | (buf_size / 1024) as u32);
            let (iova, bytes) = rx.ring();
            bar.write32(rdbal(q), iova as u32);
            bar.write32(rdbah(q), (iova >> 32) as u32);
            bar.write32(rdlen(q), bytes);
            bar.write32(rdh(q), 0);
            bar.write32(rdt(q), 0);
        }
        // 4.6.7.1 / 7.1.2.8: RSS over the queues (key, redirection table, hash types), or none.
        match rss_conf {
            Some(c) => rss::configure(bar, c, nrx),
            None => bar.write32(MRQC, 0),
        }
        // 4.6.7: no-snoop disable (CTRL_EXT.NS_DIS); DCA_RXCTRL bit 12 cleared (must be 0).
        bar.set_bits(CTRL_EXT, CTRL_EXT_NS_DIS);
        for q in 0..u32::from(nrx) {
            bar.clear_bits(dca_rxctrl(q), DCA_RXCTRL_BIT12);
        }
        // 8.2.3.8.8 RDRXCTL: RSCFRSTSIZE 0, RSCACKC and FCOE_WRFIX set (datasheet: must be set).
        let rdrx = (bar.read32(RDRXCTL) & !RDRXCTL_RSCFRSTSIZE) | RDRXCTL_RSCACKC | RDRXCTL_FCOE_WRFIX;
        bar.write32(RDRXCTL, rdrx);
        // Receive on.
        bar.set_bits(RXCTRL, RXCTRL_RXEN);

        // 4.6.8 Transmit initialisation.
        // CRC insertion and short-frame padding (HLREG0.TXCRCEN, TXPADEN).
        bar.set_bits(HLREG0, HLREG0_TXCRCEN | HLREG0_TXPADEN);
        // 4.6.11.3.4: one transmit packet buffer of 40 KiB (no DCB), DTXMXSZRQ max request size.
        bar.write32(txpbsize(0), TXPBSIZE_40KB);
        for i in 1..8 {
            bar.write32(txpbsize(i), 0);
        }
        bar.write32(DTXMXSZRQ, 0xfff);
        // 8.2.3.10.2: transmit arbiter on (RTTDCS.ARBDIS cleared) once the buffers are set.
        bar.clear_bits(RTTDCS, RTTDCS_ARBDIS);
        for (q, tx) in self.pci.txq.iter().enumerate() {
            let q = q as u32;
            let (iova, bytes) = tx.ring();
            bar.write32(tdbal(q), iova as u32);
            bar.write32(tdbah(q), (iova >> 32) as u32);
            bar.write32(tdlen(q), bytes);
            // 8.2.3.9.10 thresholds as DPDK/ixy use them: PTHRESH 36, HTHRESH 8, WTHRESH 4.
            let t = (36 << TXDCTL_PTHRESH_SHIFT) | (8 << TXDCTL_HTHRESH_SHIFT) | (4 << TXDCTL_WTHRESH_SHIFT);
            bar.write32(txdctl(q), (bar.read32(txdctl(q)) & !0x7f7f7f) | t);
        }
        // 8.2.3.9.2: transmit DMA on.
        bar.set_bits(DMATXCTL, DMATXCTL_TE);

        // 4.6.7.1 (last steps) start each receive queue: buffers posted, ENABLE, wait, RDT = N-1.
        for q in 0..self.pci.rxq.len() {
            let pool = self.pci.pool.as_mut().ok_or_else(|| DriverError::state("no buffer pool handle"))?;
            self.pci.rxq[q].fill(pool)?;
            let q32 = q as u32;
            let bar = self.bar();
            bar.set_bits(rxdctl(q32), RXDCTL_ENABLE);
            self.poll(rxdctl(q32), RXDCTL_ENABLE, RXDCTL_ENABLE, QUEUE_TIMEOUT, "rx queue enable")?;
            bar.write32(rdh(q32), 0);
            bar.write32(rdt(q32), rxd - 1);
        }
        // 4.6.8 (last steps) start each transmit queue: TDH = TDT = 0, ENABLE, wait.
        for q in 0..self.pci.txq.len() as u32 {
            let bar = self.bar();
            bar.write32(tdh(q), 0);
            bar.write32(tdt(q), 0);
            bar.set_bits(txdctl(q), TXDCTL_ENABLE);
            self.poll(txdctl(q), TXDCTL_ENABLE, TXDCTL_ENABLE, QUEUE_TIMEOUT, "tx queue enable")?;
        }

        // 7.3 Interrupts: MSI-X, the link status change (and every other non-queue cause) on
        // vector 0, auto-mask and auto-clear off for it; no queue interrupts (polled). Best
        // effort: without it the port works, link changes are seen by polling.
        match self.pci.msix_enable_vector0() {
            Ok(()) => {
                let bar = self.bar();
                bar.set_bits(GPIE, GPIE_MSIX_MODE | GPIE_PBA_SUPPORT);
                bar.write32(IVAR_MISC, (IVAR_ALLOC_VAL) << 8);
                bar.write32(EIMS, EICR_LSC);
            }
            Err(e) => tracing::warn!(port = %self.pci.port, "no link-status interrupt: {e}"),
        }

        // 4.6.4: the link comes up after auto-negotiation; wait a bounded time, never fail on it.
        if self.poll(LINKS, LINKS_UP, LINKS_UP, LINK_TIMEOUT, "link").is_err() {
            tracing::warn!(
                port = %self.pci.port,
                "link still down after {LINK_TIMEOUT:?}; the port is usable when it comes up"
            );
        }
        Ok(())
    }

    fn open_queues(
        &mut self,
        pool: &Mempool,
        nrx: u16,
        ntx: u16,
        (rxd, txd): (u32, u32),
        buf_size: usize,
        create: bool,
    ) -> Result<(), DriverError> {
        let p = &mut self.pci;
        p.pool.get_or_insert_with(|| pool.new_handle());
        for q in 0..nrx {
            let r = RxQueue::open(&p.shm, &p.bar, p.port, q, rxd, buf_size, create)?;
            if create {
                p.zones.push(r.q.zone().to_string());
            }
            p.rxq.push(r);
        }
        for q in 0..ntx {
            let t = TxQueue::open(&p.shm, &p.bar, p.port, q, txd, create)?;
            if create {
                p.zones.push(t.q.zone().to_string());
            }
            p.txq.push(t);
        }
        Ok(())
    }

    /// Secondary: find what the primary built; no register is written.
    fn attach_secondary(&mut self, pool: &Mempool) -> Result<(), DriverError> {
        self.map_shared(false)?;
        let sh = self.sh().ok_or_else(|| DriverError::state("no shared state"))?;
        if sh.magic.load(Ordering::Acquire) != DEV_MAGIC {
            return Err(DriverError::state(format!(
                "memzone {} holds no ixgbe port (primary not done?)",
                dev_zone(self.pci.port)
            )));
        }
        let (nrx, ntx) = (sh.nb_rxq.load(Ordering::Relaxed), sh.nb_txq.load(Ordering::Relaxed));
        let (rxd, txd) = (sh.rxd.load(Ordering::Relaxed), sh.txd.load(Ordering::Relaxed));
        let buf = sh.buf_size.load(Ordering::Relaxed);
        if nrx > u32::from(MAX_QUEUES) || ntx > u32::from(MAX_QUEUES) {
            return Err(DriverError::state(format!("shared port state is corrupt ({nrx}/{ntx} queues)")));
        }
        self.open_queues(pool, nrx as u16, ntx as u16, (rxd, txd), buf as usize, false)
    }

    /// Reads the clear-on-read counters into the shared accumulators (caller holds the lock).
    fn accumulate(&self, sh: &DevShared) {
        let bar = self.bar();
        let add = |a: &AtomicU64, v: u64| a.store(a.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
        // A gone device reads all-ones: count nothing rather than garbage.
        let rd = |off| match bar.read32(off) {
            u32::MAX => 0u64,
            v => u64::from(v),
        };
        add(&sh.gprc, rd(GPRC));
        add(&sh.gptc, rd(GPTC));
        // 36-bit octet counters: low then high (the high read clears the pair).
        let gorc = rd(GORCL) | (rd(GORCH) & 0xf) << 32;
        let gotc = rd(GOTCL) | (rd(GOTCH) & 0xf) << 32;
        add(&sh.gorc, gorc);
        add(&sh.gotc, gotc);
        add(&sh.mpc, rd(mpc(0)));
    }

    /// Stops or starts one queue at runtime (any process, while no process polls that queue, as
    /// DPDK's queue start/stop requires: the registers and the queue zones are
    /// shared). Stop (4.6.7.1 / 4.6.8.1 in reverse): the stopped flag first, so later bursts of
    /// every process leave the queue alone, then ENABLE cleared, then a trapped register read: over
    /// vfio-user it is answered between two device polls, so no DMA of the queue is under way
    /// when it returns (a real 82599 clears ENABLE once the queue is idle, which the poll below
    /// waits for). Start: receive gets fresh buffers on every descriptor (the old ones go back to
    /// the pool) and RDT = N-1; transmit drops what was in flight; then ENABLE, and the flag.
    fn queue_enable(&mut self, queue: u16, rx: bool, on: bool) -> Result<(), DriverError> {
        let qi = self.pci.queue_index(rx, queue)?;
        let q = u32::from(queue);
        let (ctl, bit) = if rx { (rxdctl(q), RXDCTL_ENABLE) } else { (txdctl(q), TXDCTL_ENABLE) };
        if !on {
            self.pci.queue_hdr(rx, qi).set_stopped(true);
            self.bar().clear_bits(ctl, bit);
            self.poll(ctl, bit, 0, QUEUE_TIMEOUT, "queue disable")?;
            let _ = self.bar().read32(STATUS);
            return Ok(());
        }
        if !self.pci.queue_hdr(rx, qi).is_stopped() {
            return Ok(());
        }
        let n = self.pci.restart_queue(rx, qi)?;
        if rx {
            let bar = self.bar();
            bar.write32(rdh(q), 0);
            bar.write32(rdt(q), 0);
            bar.set_bits(ctl, bit);
            self.poll(ctl, bit, bit, QUEUE_TIMEOUT, "rx queue enable")?;
            self.bar().write32(rdt(q), n - 1);
        } else {
            let bar = self.bar();
            bar.write32(tdh(q), 0);
            bar.write32(tdt(q), 0);
            bar.set_bits(ctl, bit);
            self.poll(ctl, bit, bit, QUEUE_TIMEOUT, "tx queue enable")?;
        }
        self.pci.queue_hdr(rx, qi).set_stopped(false);
        Ok(())
    }

    /// The MSI-X vector of receive queue `queue`'s interrupt: queue n on vector n + 1 (vector 0
    /// is the link's), for the queues whose vector EIMS covers (vectors 1..15).
    fn rx_vector(&self, queue: u16) -> Result<u32, DriverError> {
        let n = self.pci.rxq.len();
        if usize::from(queue) >= n || queue >= 15 {
            return Err(DriverError::config(format!(
                "receive queue {queue}: interrupts for queues 0..{} (the port has {n})",
                n.min(15)
            )));
        }
        Ok(u32::from(queue) + 1)
    }

    /// Primary release: stop queues, reset the device; then the skeleton's tail (buffers back,
    /// zones freed).
    fn release_shared(&mut self) {
        let bar = self.bar();
        if self.pci.dev.is_alive() {
            // 4.6.7.1.2 / 4.6.8.1: disable queues, wait for the enable bits to read back clear.
            for q in 0..self.pci.rxq.len() as u32 {
                bar.clear_bits(rxdctl(q), RXDCTL_ENABLE);
                let _ = bar.poll_until(rxdctl(q), RXDCTL_ENABLE, 0, QUEUE_TIMEOUT, POLL_INTERVAL);
            }
            for q in 0..self.pci.txq.len() as u32 {
                bar.clear_bits(txdctl(q), TXDCTL_ENABLE);
                let _ = bar.poll_until(txdctl(q), TXDCTL_ENABLE, 0, QUEUE_TIMEOUT, POLL_INTERVAL);
            }
            bar.clear_bits(RXCTRL, RXCTRL_RXEN);
            bar.clear_bits(DMATXCTL, DMATXCTL_TE);
            // 4.6.3.2 Global reset: the device forgets the rings before their memory is reused.
            bar.write32(CTRL, bar.read32(CTRL) | CTRL_RST_MASK);
            if let Err(e) = bar.poll_until(CTRL, CTRL_RST_MASK, 0, RESET_TIMEOUT, POLL_INTERVAL) {
                tracing::warn!(port = %self.pci.port, "reset at release: {e}");
            }
        }
        self.pci.release_tail();
    }
}

crate::pci::pci_port_drop!(Port);

impl EthDev for Port {
    fn info(&self) -> DevInfo {
        self.pci.info(NAME, DEFAULT_MTU, MAX_QUEUES)
    }

    fn link(&mut self) -> LinkStatus {
        links_status(self.bar().read32(LINKS))
    }

    fn link_after_irq(&mut self) -> LinkStatus {
        // The acknowledgement (`link_irq_ack`'s two writes, posted) and the LINKS read in one
        // exchange: one send, one round trip.
        links_status(self.bar().read32_after_posted(&[(EICR, EICR_LSC), (EIMS, EICR_LSC)], LINKS))
    }

    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        if let Some(sh) = self.sh() {
            let _g = self.pci.shm.lock().lock();
            self.accumulate(sh);
            let (gprc, gptc) = (sh.gprc.load(Ordering::Relaxed), sh.gptc.load(Ordering::Relaxed));
            s.ipackets = gprc;
            s.opackets = gptc;
            // Octet counters include the 4-byte CRC of every frame (8.2.3.23.26); ports report payload.
            s.ibytes = sh.gorc.load(Ordering::Relaxed).saturating_sub(4 * gprc);
            s.obytes = sh.gotc.load(Ordering::Relaxed).saturating_sub(4 * gptc);
            s.imissed = sh.mpc.load(Ordering::Relaxed);
        }
        self.pci.add_queue_stats(&mut s);
        s
    }

    fn stats_reset(&mut self) {
        if let Some(sh) = self.sh() {
            let _g = self.pci.shm.lock().lock();
            self.accumulate(sh);
            for a in [&sh.gprc, &sh.gptc, &sh.gorc, &sh.gotc, &sh.mpc] {
                a.store(0, Ordering::Relaxed);
            }
        }
        self.pci.reset_queue_stats();
    }

    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        // 8.2.3.7.1 FCTRL: unicast and multicast promiscuous.
        let bar = self.bar();
        if on {
            bar.set_bits(FCTRL, FCTRL_UPE | FCTRL_MPE);
        } else {
            bar.clear_bits(FCTRL, FCTRL_UPE | FCTRL_MPE);
        }
        Ok(())
    }

    fn set_mtu(&mut self, mtu: u16) -> Result<(), EthError> {
        let sh = self.sh().ok_or_else(|| DriverError::state("port released").device(NAME))?;
        // Frames are received into one buffer: the largest frame must fit it (CRC is stripped).
        let buf = sh.buf_size.load(Ordering::Relaxed);
        let max = buf.saturating_sub(14).min(9710) as u16;
        if !(68..=max).contains(&mtu) {
            return Err(EthError::Invalid {
                what: format!("MTU {mtu} out of range 68..={max} (one {buf}-byte buffer)"),
            });
        }
        let frame = u32::from(mtu) + FRAME_OVERHEAD;
        let bar = self.bar();
        // 8.2.3.22.13 MAXFRS.MFS; 8.2.3.22.8 HLREG0.JUMBOEN for frames over 1518 bytes.
        bar.write32(MAXFRS, frame << MAXFRS_MFS_SHIFT);
        if frame > 1518 {
            bar.set_bits(HLREG0, HLREG0_JUMBOEN);
        } else {
            bar.clear_bits(HLREG0, HLREG0_JUMBOEN);
        }
        sh.mtu.store(mtu.into(), Ordering::Relaxed);
        Ok(())
    }

    fn rx_intr_enable(&mut self, queue: u16) -> Result<std::os::fd::OwnedFd, EthError> {
        let v = self.rx_vector(queue).map_err(|e| e.device(NAME))?;
        let fd = self.pci.vector_fd(v).map_err(|e| e.device(NAME))?;
        self.pci.msix_unmask(v).map_err(|e| e.device(NAME))?;
        // 7.3.4: the queue's cause to vector v (IVAR), auto-cleared when it fires, enabled.
        // IVAR and EIAC are shared by queues (and processes): changed under the lab's lock.
        let _g = self.pci.shm.lock().lock();
        let (q, bar) = (u32::from(queue), self.bar());
        let shift = (q % 2) * 16;
        let ivar_v = (bar.read32(ivar(q / 2)) & !(0xff << shift)) | ((v | IVAR_ALLOC_VAL) << shift);
        bar.write32(ivar(q / 2), ivar_v);
        bar.set_bits(EIAC, 1 << v);
        bar.write32(EIMS, 1 << v);
        Ok(fd)
    }

    fn rx_intr_disable(&mut self, queue: u16) -> Result<(), EthError> {
        let v = self.rx_vector(queue).map_err(|e| e.device(NAME))?;
        self.bar().write32(EIMC, 1 << v);
        Ok(())
    }

    fn link_irq_ack(&mut self) {
        // 7.3.1: the LSC cause cleared (write 1 to clear) and enabled again. Waited for: a
        // caller may do anything next (`link_after_irq` posts them before its LINKS read).
        let bar = self.bar();
        bar.write32(EICR, EICR_LSC);
        bar.write32(EIMS, EICR_LSC);
    }

    crate::pci::pci_rss_and_queues!(NAME);

    crate::pci::pci_ethdev_common!("ixgbe");
}

/// The link as LINKS says (8.2.3.22.20: LINK_UP, speed 01 = 100 Mb/s, 10 = 1 Gb/s, 11 =
/// 10 Gb/s); all-ones (a device gone) is down.
fn links_status(v: u32) -> LinkStatus {
    if v == u32::MAX || v & LINKS_UP == 0 {
        return LinkStatus::default();
    }
    let speed_mbps = match (v & LINKS_SPEED_MASK) >> LINKS_SPEED_SHIFT {
        1 => 100,
        2 => 1000,
        3 => 10_000,
        _ => 0,
    };
    LinkStatus { up: true, speed_mbps }
}
