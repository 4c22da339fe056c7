//! `net_i40e`: the Intel X710/XL710 poll-mode driver (PF, 8086:1572 and the other 700-series PF ids),
//! over kernel VFIO on a real NIC or vfio-user against `lab-nic`.
//!
//! Control path here, admin queue in [`adminq`], data path in [`rxtx`], registers in [`regs`]; the queue
//! zones and the port skeleton net_ixgbe shares (transport, DMA map, device-state zone, queue
//! counters, release tail) are in the crate's `pci` module, the LAN HMC in `hmc`. Read [`I40eDriver::probe`] and `Port::init_primary` top to bottom
//! next to the datasheet (order no. 332464):
//! the primary resets the PF, brings the admin queue up and asks the firmware for what the PF owns
//! (version, capabilities, MAC, switch configuration, the main VSI), sets the VSI's queue map, filters and
//! PHY, builds the LAN HMC (a paged segment in a memzone) and the queue contexts, and enables the queues
//! with the QENA request/status handshake. A secondary only attaches: its own transport connection, its
//! own BAR mapping and DMA map, and the queues, admin queue and HMC the primary built.
//!
//! Shared state (memzones the primary reserves, secondaries look up):
//! * `i40e_<port>_dev`: [`DevShared`]: MAC, MTU, queue layout, VSI, statistics offsets;
//! * `i40e_<port>_aq`: the admin queue rings and buffers ([`adminq`]), used by any process under the
//!   shared-memory lock (link status);
//! * `i40e_<port>_hmc`: the LAN HMC backing pages (one page of page descriptors, then the contexts);
//! * `i40e_<port>_rxq<q>` / `i40e_<port>_txq<q>`: one per queue, see [`rxtx`].
//!
//! Devargs keys: `promisc` (start in promiscuous mode, default off).

pub mod adminq;
mod firmware;
mod hmc;
pub mod regs;
pub mod rss;
pub mod rxtx;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lab_core::bus::pci::PciId;
use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::PortId;
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx};
use lab_core::mbuf::Mempool;
use lab_core::vfio::Bar;

use self::adminq::{params16, AdminQueue, AqError, Buf, Completion};
use self::hmc::HmcLayout;
use self::regs::*;
use self::rxtx::{RxQueue, TxQueue};
use crate::error::{Ctx, DriverError};
use crate::pci::{self, fmt_mac, DevState, PciPort};

const NAME: &str = "net_i40e";
/// Queue pairs this driver sets up at most.
pub const MAX_QUEUES: u16 = 16;
/// Smallest ring.
pub const MIN_DESC: u16 = 64;
/// Largest ring (the context's qlen is 13 bits; rings are a multiple of 32 descriptors).
pub const MAX_DESC: u16 = 4096;
/// Frame overhead over the MTU: Ethernet header, CRC and two VLAN tags.
const FRAME_OVERHEAD: u32 = 14 + 4 + 8;
const DEFAULT_MTU: u16 = 1500;
const DEV_MAGIC: u64 = 0x4934_3045_4445_5601;
/// Largest frame the MAC takes (set_mac_config).
const MAX_FRAME: u32 = 9728;

const POLL_INTERVAL: Duration = Duration::from_micros(200);
const RESET_TIMEOUT: Duration = Duration::from_secs(2);
const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
const LINK_TIMEOUT: Duration = Duration::from_secs(2);
const MASK48: u64 = (1 << 48) - 1;

/// X710/XL710/XXV710/X722 PF device ids (Intel, vendor 8086), as the Linux and DPDK id tables list them.
static PCI_IDS: [PciId; 18] = [
    PciId { vendor: 0x8086, device: 0x1572 }, // X710 10GbE SFP+
    PciId { vendor: 0x8086, device: 0x1580 }, // XL710 40GbE backplane (KX B)
    PciId { vendor: 0x8086, device: 0x1581 }, // X710 10GbE backplane (KX C)
    PciId { vendor: 0x8086, device: 0x1583 }, // XL710 40GbE QSFP+ (A)
    PciId { vendor: 0x8086, device: 0x1584 }, // XL710 40GbE QSFP+ (B)
    PciId { vendor: 0x8086, device: 0x1585 }, // XL710 QSFP+ (C)
    PciId { vendor: 0x8086, device: 0x1586 }, // X710 10GBASE-T
    PciId { vendor: 0x8086, device: 0x1587 }, // XL710 20G KR2
    PciId { vendor: 0x8086, device: 0x1588 }, // XL710 20G KR2 (A)
    PciId { vendor: 0x8086, device: 0x1589 }, // X710-T4 10GBASE-T
    PciId { vendor: 0x8086, device: 0x158a }, // XXV710 25G backplane
    PciId { vendor: 0x8086, device: 0x158b }, // XXV710 25G SFP28
    PciId { vendor: 0x8086, device: 0x104e }, // X710 10G SFP+ (N3000 family)
    PciId { vendor: 0x8086, device: 0x104f }, // X710 10G backplane
    PciId { vendor: 0x8086, device: 0x15ff }, // X710 10GBASE-T (BC)
    PciId { vendor: 0x8086, device: 0x37ce }, // X722 backplane
    PciId { vendor: 0x8086, device: 0x37cf }, // X722 QSFP
    PciId { vendor: 0x8086, device: 0x37d0 }, // X722 SFP+
];

static KEYS: [KeySpec; 1] = [KeySpec::new(
    "promisc",
    KeyKind::Bool,
    "start in promiscuous mode: VSI unicast/multicast promiscuous (default 0)",
)];

/// The net_i40e driver.
pub struct I40eDriver;

/// Device state shared by every process attached to the port (memzone `i40e_<port>_dev`).
#[repr(C, align(64))]
pub struct DevShared {
    magic: AtomicU64,
    mac_lo: AtomicU32,
    mac_hi: AtomicU32,
    mtu: AtomicU32,
    nb_rxq: AtomicU32,
    nb_txq: AtomicU32,
    nb_desc: AtomicU32,
    buf_size: AtomicU32,
    /// GLPRT_* index (PFGEN_PORTNUM).
    port_num: AtomicU32,
    /// PF number (PF_FUNC_RID).
    pf_id: AtomicU32,
    /// First PF queue (PFLAN_QALLOC).
    first_q: AtomicU32,
    /// SEID of the main VSI.
    vsi_seid: AtomicU32,
    _r: u32,
    /// Counter values at the last stats reset (48-bit, written under the shared-memory lock):
    /// uprc, mprc, bprc, uptc, mptc, bptc, gorc, gotc, rdpc.
    offsets: [AtomicU64; 9],
}
const _: () = assert!(std::mem::size_of::<DevShared>() == 128);
const _: () = assert!(std::mem::offset_of!(DevShared, offsets) == 56);

fn dev_zone(port: PortId) -> String {
    format!("i40e_{port}_dev")
}

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

impl Driver for I40eDriver {
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
        if !(MIN_DESC..=MAX_DESC).contains(&conf.nb_desc) || !conf.nb_desc.is_multiple_of(32) {
            return Err(err(DriverError::config(format!(
                "{} descriptors: a multiple of 32 in {MIN_DESC}..={MAX_DESC}",
                conf.nb_desc
            ))));
        }
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(shm, &conf.pool, 256).ctx(format!("buffer pool {}", conf.pool)).map_err(err)?;

        // Transport, this process's DMA map (the whole shared memory at IOVA_BASE: rings and
        // buffers are in it, the HMC too) and BAR 0.
        let mut port = Port { aq: None, pci: PciPort::open(ctx, pci).map_err(err)? };
        // From here on an error drops `port`, which unmaps, disconnects and (primary) frees zones.
        port.pci.bus_master().map_err(err)?;
        if port.pci.primary {
            let promisc = ctx.kvargs.get_bool("promisc").unwrap_or(false);
            port.init_primary(&pool, conf.nb_rxq, conf.nb_txq, conf.nb_desc, promisc, conf.rss.as_ref())
                .map_err(err)?;
        } else {
            port.attach_secondary(&pool).map_err(err)?;
        }
        // This process's link-status interrupt: its own eventfd on vector 0, where the firmware's
        // link status events (admin receive queue) signal (best effort, as for net_ixgbe).
        match port.pci.link_irq() {
            Ok(()) => {
                let up = port.link_status().up;
                port.pci.set_link_baseline(up);
            }
            Err(e) => tracing::warn!(port = %ctx.port, "no link-status interrupt in this process: {e}"),
        }
        let info = port.info();
        tracing::info!(device = %ctx.name, port = %ctx.port, role = if port.pci.primary { "primary" } else { "secondary" },
            mac = %fmt_mac(&info.mac), rxq = info.nb_rxq, txq = info.nb_txq, "i40e port ready");
        Ok(Box::new(port))
    }
}

/// This process's handle on one X710 port: the PCI port skeleton and the admin queue.
struct Port {
    /// Dropped before the skeleton (its zone is among the skeleton's to free).
    aq: Option<AdminQueue>,
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

    /// One admin command; errors name the command.
    fn cmd(&self, what: &str, opcode: u16, params: [u8; 16], buf: Buf<'_>) -> Result<Completion, AqError> {
        let aq = self.aq.as_ref().ok_or_else(|| AqError::Memory("admin queue not set up".into()))?;
        if !self.pci.dev.is_alive() {
            return Err(AqError::Transport { opcode, reason: "device removed".into() });
        }
        let r = aq.send(self.bar(), opcode, params, buf);
        match &r {
            Ok(_) => tracing::debug!(port = %self.pci.port, "aq {what}: ok"),
            Err(e) => tracing::debug!(port = %self.pci.port, "aq {what}: {e}"),
        }
        r
    }

    /// One admin command whose failure fails the caller; the error names the command.
    fn aq_cmd(&self, what: &str, opcode: u16, params: [u8; 16], buf: Buf<'_>) -> Result<Completion, DriverError> {
        self.cmd(what, opcode, params, buf).ctx(format!("aq {what}"))
    }

    fn map_shared(&mut self, create: bool) -> Result<(), DriverError> {
        self.pci.map_shared(&dev_zone(self.pci.port), create)
    }

    /// Primary: full initialisation.
    fn init_primary(
        &mut self,
        pool: &Mempool,
        nrx: u16,
        ntx: u16,
        ndesc: u16,
        promisc: bool,
        rss_conf: Option<&lab_core::rss::RssConf>,
    ) -> Result<(), DriverError> {
        let bar = self.bar();

        // Firmware state: FWS1B non-zero means the firmware is in recovery mode; nothing works then.
        let fw = bar.read32(GL_FWSTS);
        if fw == u32::MAX || fw & GL_FWSTS_FWS1B_MASK != 0 {
            return Err(DriverError::state(format!(
                "firmware not operational (GL_FWSTS {fw:#x}: recovery mode or device gone)"
            )));
        }
        // Interrupts off during initialisation; clear pending causes (PFINT_ICR0 is read-clear).
        bar.write32(PFINT_ICR0_ENA, 0);
        let _ = bar.read32(PFINT_ICR0);

        // PF reset: wait for a global reset in progress to end and the NVM configuration to be loaded,
        // then PFGEN_CTRL.PFSWR, which the device clears when done.
        self.poll(GLGEN_RSTAT, GLGEN_RSTAT_DEVSTATE_MASK, 0, RESET_TIMEOUT, "global reset in progress")?;
        let uld = GLNVM_ULD_CONF_CORE_DONE | GLNVM_ULD_CONF_GLOBAL_DONE;
        self.poll(GLNVM_ULD, uld, uld, RESET_TIMEOUT, "NVM configuration load")?;
        let bar = self.bar();
        bar.write32(PFGEN_CTRL, bar.read32(PFGEN_CTRL) | PFGEN_CTRL_PFSWR);
        self.poll(PFGEN_CTRL, PFGEN_CTRL_PFSWR, 0, RESET_TIMEOUT, "PF reset")?;
        let bar = self.bar();

        // What this PF is: port (statistics index), PF number, the queues it owns, NVM mode.
        let port_num = bar.read32(PFGEN_PORTNUM) & PFGEN_PORTNUM_MASK;
        let pf_id = bar.read32(PF_FUNC_RID) & PF_FUNC_RID_FUNCTION_MASK;
        let qalloc = bar.read32(PFLAN_QALLOC);
        if qalloc & PFLAN_QALLOC_VALID == 0 {
            return Err(DriverError::state(format!("PFLAN_QALLOC {qalloc:#x}: no queues allocated to this PF")));
        }
        let first_q = qalloc & PFLAN_QALLOC_FIRSTQ_MASK;
        let last_q = (qalloc >> PFLAN_QALLOC_LASTQ_SHIFT) & PFLAN_QALLOC_LASTQ_MASK;
        let owned = last_q.saturating_sub(first_q) + 1;
        if u32::from(nrx.max(ntx)) > owned {
            return Err(DriverError::state(format!("{} queue pairs asked, the PF owns {owned}", nrx.max(ntx))));
        }
        if bar.read32(GLNVM_FLA) & GLNVM_FLA_LOCKED == 0 {
            return Err(DriverError::state("NVM in blank mode (GLNVM_FLA.LOCKED clear)"));
        }

        // Admin queue.
        let aq = AdminQueue::open(&self.pci.shm, self.pci.port, true)?;
        self.pci.zones.push(aq.zone().to_string());
        aq.start(self.bar()).ctx("admin queue start")?;
        self.aq = Some(aq);
        let v = self.aq_cmd("get_version", AQC_GET_VERSION, [0; 16], Buf::None)?;
        let (fw_maj, fw_min, api_maj, api_min) = (v.p16(8), v.p16(10), v.p16(12), v.p16(14));
        if api_maj != 1 {
            return Err(DriverError::state(format!("firmware admin API {api_maj}.{api_min} not supported (need 1.x)")));
        }
        let _ = self.cmd(
            "driver_version",
            AQC_DRIVER_VERSION,
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Buf::In(b"lab-i40e\0"),
        );

        // NVM image version from the shadow RAM, read under the NVM resource.
        let nvm = self.read_nvm_word(SR_NVM_DEV_STARTER_VERSION).unwrap_or(0);
        tracing::info!(
            port = %self.pci.port,
            "i40e firmware {fw_maj}.{fw_min}, API {api_maj}.{api_min}, NVM {:x}.{:02x}",
            nvm >> 12,
            nvm & 0xff
        );

        // PXE mode left by a boot ROM keeps receive queues from working.
        if self.bar().read32(GLLAN_RCTL_0) & GLLAN_RCTL_0_PXE_MODE != 0 {
            self.aq_cmd("clear_pxe_mode", AQC_CLEAR_PXE_MODE, [0; 16], Buf::None)?;
        }
        // The firmware LLDP agent would consume LLDP frames; stopping it is best effort.
        let _ = self.cmd("lldp_stop", AQC_LLDP_STOP, params16(&[(0, 1)]), Buf::None);

        self.check_capabilities(nrx.max(ntx))?;
        let info = self.discover()?;
        self.configure_vsi(&info, nrx, promisc)?;
        // RSS over the VSI's queues (key, lookup table, hash types), or no hashing at all.
        match rss_conf {
            Some(c) => rss::configure(self.bar(), c, nrx),
            None => rss::set_hash(self.bar(), &lab_core::rss::RssConf { key: None, hf: 0 }),
        }
        self.configure_phy(DEFAULT_MTU)?;

        // Buffer size the device may write per descriptor (context dbuff, 128-byte units).
        let buf_size = {
            let mut p = pool.new_handle();
            let m = p.alloc().ok_or_else(|| DriverError::state(format!("buffer pool {} is empty", pool.name())))?;
            let room = m.buf_len() - m.headroom();
            p.free(m);
            (room / 128 * 128).min(16 * 1024 - 128)
        };
        if buf_size < 2048 {
            return Err(DriverError::state(format!(
                "buffer pool {}: data room under 2 KiB cannot hold a frame",
                pool.name()
            )));
        }

        self.map_shared(true)?;
        let sh = self.sh().ok_or_else(|| DriverError::state("no shared state"))?;
        let m = info.mac;
        sh.mac_lo.store(u32::from_le_bytes([m[0], m[1], m[2], m[3]]), Ordering::Relaxed);
        sh.mac_hi.store(u32::from(u16::from_le_bytes([m[4], m[5]])), Ordering::Relaxed);
        sh.mtu.store(u32::from(DEFAULT_MTU), Ordering::Relaxed);
        sh.nb_rxq.store(nrx.into(), Ordering::Relaxed);
        sh.nb_txq.store(ntx.into(), Ordering::Relaxed);
        sh.nb_desc.store(ndesc.into(), Ordering::Relaxed);
        sh.buf_size.store(buf_size as u32, Ordering::Relaxed);
        sh.port_num.store(port_num, Ordering::Relaxed);
        sh.pf_id.store(pf_id, Ordering::Relaxed);
        sh.first_q.store(first_q, Ordering::Relaxed);
        sh.vsi_seid.store(info.vsi_seid.into(), Ordering::Relaxed);

        // LAN HMC and queues.
        let hmc = self.setup_hmc(pf_id, nrx.max(ntx).into())?;
        self.open_queues(pool, nrx, ntx, ndesc.into(), buf_size, first_q, true)?;
        self.start_queues(&hmc, pf_id, first_q, info.qs_handle, buf_size)?;
        self.stats_snapshot();
        if let Some(sh) = self.sh() {
            sh.magic.store(DEV_MAGIC, Ordering::Release);
        }

        // Interrupts: MSI-X, vector 0 for the admin receive queue (link status events, enabled
        // with get_link_status LSE above); queues are polled. Best effort.
        match self.pci.msix_enable_vector0() {
            Ok(()) => {
                let bar = self.bar();
                bar.write32(PFINT_ICR0_ENA, PFINT_ICR0_ENA_ADMINQ);
                bar.write32(PFINT_DYN_CTL0, PFINT_DYN_CTL0_INTENA | PFINT_DYN_CTL0_CLEARPBA);
            }
            Err(e) => tracing::warn!(port = %self.pci.port, "no link-status interrupt: {e}"),
        }

        // Link: comes up on its own; wait a bounded time, never fail on it.
        let deadline = Instant::now() + LINK_TIMEOUT;
        while !self.link_status().up {
            if Instant::now() >= deadline {
                tracing::warn!(port = %self.pci.port, "link still down after {LINK_TIMEOUT:?}; usable when it comes up");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// LAN HMC for `nq` queue pairs, see [`hmc`].
    fn setup_hmc(&mut self, pf: u32, nq: u32) -> Result<HmcLayout, DriverError> {
        let p = &mut self.pci;
        HmcLayout::set_up(&p.bar, &p.shm, p.port, pf, nq, &mut p.zones)
    }

    #[allow(clippy::too_many_arguments)]
    fn open_queues(
        &mut self,
        pool: &Mempool,
        nrx: u16,
        ntx: u16,
        ndesc: u32,
        buf_size: usize,
        first_q: u32,
        create: bool,
    ) -> Result<(), DriverError> {
        let p = &mut self.pci;
        p.pool.get_or_insert_with(|| pool.new_handle());
        for q in 0..nrx {
            let abs = first_q + u32::from(q);
            let r = RxQueue::open(&p.shm, &p.bar, p.port, q, abs, ndesc, buf_size, create)?;
            if create {
                p.zones.push(r.q.zone().to_string());
            }
            p.rxq.push(r);
        }
        for q in 0..ntx {
            let abs = first_q + u32::from(q);
            let t = TxQueue::open(&p.shm, &p.bar, p.port, q, abs, ndesc, create)?;
            if create {
                p.zones.push(t.q.zone().to_string());
            }
            p.txq.push(t);
        }
        Ok(())
    }

    /// Queue contexts into the HMC, then the enable handshake: QENA_REQ, wait for QENA_STAT.
    fn start_queues(
        &mut self,
        hmc: &HmcLayout,
        pf: u32,
        first_q: u32,
        qs_handle: u16,
        buf: usize,
    ) -> Result<(), DriverError> {
        for q in 0..self.pci.txq.len() as u32 {
            let (iova, n) = self.pci.txq[q as usize].ring();
            hmc.write_tx_context(&self.pci.shm, q, iova, n, qs_handle)?;
            let abs = first_q + q;
            let bar = self.bar();
            // The queue belongs to this PF; pre-queue disable cleared; tail at 0.
            bar.write32(qtx_ctl(abs), QTX_CTL_PF_QUEUE | (pf << QTX_CTL_PF_INDX_SHIFT));
            bar.write32(gllan_txpre_qdis(abs / 128), GLLAN_TXPRE_QDIS_CLEAR_QDIS | (abs % 128));
            bar.write32(qtx_tail(abs), 0);
            bar.write32(qtx_ena(abs), QENA_REQ);
            self.poll(qtx_ena(abs), QENA_STAT, QENA_STAT, QUEUE_TIMEOUT, "tx queue enable")?;
            tracing::debug!(port = %self.pci.port, q, "tx queue enabled");
        }
        for q in 0..self.pci.rxq.len() {
            let pool = self.pci.pool.as_mut().ok_or_else(|| DriverError::state("no buffer pool handle"))?;
            self.pci.rxq[q].fill(pool)?;
            let (iova, n) = self.pci.rxq[q].ring();
            hmc.write_rx_context(&self.pci.shm, q as u32, (iova, n), buf, MAX_FRAME)?;
            let abs = first_q + q as u32;
            let bar = self.bar();
            bar.write32(qrx_tail(abs), 0);
            bar.write32(qrx_ena(abs), QENA_REQ);
            self.poll(qrx_ena(abs), QENA_STAT, QENA_STAT, QUEUE_TIMEOUT, "rx queue enable")?;
            self.bar().write32(qrx_tail(abs), n - 1);
            tracing::debug!(port = %self.pci.port, q, "rx queue enabled");
        }
        Ok(())
    }

    /// Secondary: find what the primary built; no register is written.
    fn attach_secondary(&mut self, pool: &Mempool) -> Result<(), DriverError> {
        self.map_shared(false)?;
        let sh = self.sh().ok_or_else(|| DriverError::state("no shared state"))?;
        if sh.magic.load(Ordering::Acquire) != DEV_MAGIC {
            return Err(DriverError::state(format!(
                "memzone {} holds no i40e port (primary not done?)",
                dev_zone(self.pci.port)
            )));
        }
        let (nrx, ntx) = (sh.nb_rxq.load(Ordering::Relaxed), sh.nb_txq.load(Ordering::Relaxed));
        let (ndesc, buf) = (sh.nb_desc.load(Ordering::Relaxed), sh.buf_size.load(Ordering::Relaxed));
        let first_q = sh.first_q.load(Ordering::Relaxed);
        if nrx > u32::from(MAX_QUEUES) || ntx > u32::from(MAX_QUEUES) {
            return Err(DriverError::state(format!("shared port state is corrupt ({nrx}/{ntx} queues)")));
        }
        self.aq = Some(AdminQueue::open(&self.pci.shm, self.pci.port, false)?);
        self.open_queues(pool, nrx as u16, ntx as u16, ndesc, buf as usize, first_q, false)
    }

    /// A 48-bit GLPRT counter (low then high half).
    fn read48(&self, low: u64) -> u64 {
        let bar = self.bar();
        let lo = bar.read32(low);
        let hi = bar.read32(low + 4);
        if lo == u32::MAX && hi == u32::MAX {
            return 0;
        }
        u64::from(lo) | (u64::from(hi & 0xffff) << 32)
    }

    /// Current values of the counters kept in [`DevShared::offsets`].
    fn counters(&self, p: u32) -> [u64; 9] {
        let rdpc = match self.bar().read32(glprt_rdpc(p)) {
            u32::MAX => 0,
            v => u64::from(v),
        };
        [
            self.read48(glprt_uprcl(p)),
            self.read48(glprt_mprcl(p)),
            self.read48(glprt_bprcl(p)),
            self.read48(glprt_uptcl(p)),
            self.read48(glprt_mptcl(p)),
            self.read48(glprt_bptcl(p)),
            self.read48(glprt_gorcl(p)),
            self.read48(glprt_gotcl(p)),
            rdpc,
        ]
    }

    /// Takes the current counters as the new zero (counters are free-running, never cleared).
    fn stats_snapshot(&self) {
        if let Some(sh) = self.sh() {
            let now = self.counters(sh.port_num.load(Ordering::Relaxed));
            let _g = self.pci.shm.lock().lock();
            for (o, v) in sh.offsets.iter().zip(now) {
                o.store(v, Ordering::Relaxed);
            }
        }
    }

    /// Link state from the firmware (get_link_status); events on the ARQ are taken and logged.
    fn link_status(&self) -> LinkStatus {
        if let Some(aq) = self.aq.as_ref() {
            for (op, p) in aq.events(self.bar()) {
                tracing::debug!(
                    port = %self.pci.port,
                    "arq event {op:#06x}: link {}",
                    if p[4] & LINK_UP_FUNCTION != 0 { "up" } else { "down" }
                );
            }
        }
        let Ok(r) = self.cmd("get_link_status", AQC_GET_LINK_STATUS, [0; 16], Buf::None) else {
            return LinkStatus::default();
        };
        if r.params[4] & LINK_UP_FUNCTION == 0 {
            return LinkStatus::default();
        }
        let speed_mbps = match r.params[3] {
            LINK_SPEED_100MB => 100,
            LINK_SPEED_1GB => 1000,
            LINK_SPEED_10GB => 10_000,
            LINK_SPEED_20GB => 20_000,
            LINK_SPEED_25GB => 25_000,
            LINK_SPEED_40GB => 40_000,
            _ => 0,
        };
        LinkStatus { up: true, speed_mbps }
    }

    /// Stops or starts one queue at runtime (any process, while no process polls that queue, as
    /// DPDK's queue start/stop requires: the registers, the queue zones and the
    /// contexts in HMC memory are shared). Stop: the stopped flag first, so later bursts of
    /// every process leave the queue alone, then QENA_REQ cleared and QENA_STAT awaited (the device has
    /// let go of the ring). Start: the queue's context, written at start of day with head 0,
    /// is loaded again on QENA_REQ; receive gets fresh buffers on every descriptor and its tail
    /// at N-1, transmit drops what was in flight; then the flag.
    fn queue_enable(&mut self, queue: u16, rx: bool, on: bool) -> Result<(), DriverError> {
        let qi = self.pci.queue_index(rx, queue)?;
        let first_q = self.sh().ok_or_else(|| DriverError::state("port released"))?.first_q.load(Ordering::Relaxed);
        let abs = first_q + u32::from(queue);
        let ena = if rx { qrx_ena(abs) } else { qtx_ena(abs) };
        if !on {
            self.pci.queue_hdr(rx, qi).set_stopped(true);
            if !rx {
                // A transmit queue is pre-disabled before its QENA_REQ is cleared (as the PF
                // drivers do, i40e_pre_tx_queue_cfg), with a moment for the scheduler.
                let q = GLLAN_TXPRE_QDIS_SET_QDIS | ((abs % 128) & GLLAN_TXPRE_QDIS_QINDX_MASK);
                self.bar().write32(gllan_txpre_qdis(abs / 128), q);
                std::thread::sleep(Duration::from_micros(400));
            }
            self.bar().write32(ena, 0);
            self.poll(ena, QENA_STAT, 0, QUEUE_TIMEOUT, "queue disable")?;
            return Ok(());
        }
        if !self.pci.queue_hdr(rx, qi).is_stopped() {
            return Ok(());
        }
        let n = self.pci.restart_queue(rx, qi)?;
        if rx {
            self.bar().write32(qrx_tail(abs), 0);
            self.bar().write32(ena, QENA_REQ);
            self.poll(ena, QENA_STAT, QENA_STAT, QUEUE_TIMEOUT, "rx queue enable")?;
            self.bar().write32(qrx_tail(abs), n - 1);
        } else {
            let q = GLLAN_TXPRE_QDIS_CLEAR_QDIS | ((abs % 128) & GLLAN_TXPRE_QDIS_QINDX_MASK);
            self.bar().write32(gllan_txpre_qdis(abs / 128), q);
            self.bar().write32(qtx_tail(abs), 0);
            self.bar().write32(ena, QENA_REQ);
            self.poll(ena, QENA_STAT, QENA_STAT, QUEUE_TIMEOUT, "tx queue enable")?;
        }
        self.pci.queue_hdr(rx, qi).set_stopped(false);
        Ok(())
    }

    /// The MSI-X vector of receive queue `queue`'s interrupt (queue n on vector n + 1; vector 0
    /// is the admin queue's) and the queue's absolute index.
    fn rx_vector(&self, queue: u16) -> Result<(u32, u32), DriverError> {
        let n = self.pci.rxq.len();
        // (A vector past the function's MSI-X table is refused when it is unmasked.)
        if usize::from(queue) >= n {
            return Err(DriverError::config(format!("receive queue {queue}: the port has queues 0..{n}")));
        }
        let first_q = self.sh().ok_or_else(|| DriverError::state("port released"))?.first_q.load(Ordering::Relaxed);
        Ok((u32::from(queue) + 1, first_q + u32::from(queue)))
    }

    /// Primary release: queues off, admin queue shut down, PF reset; then the skeleton's tail
    /// (buffers back, zones freed).
    fn release_shared(&mut self) {
        if self.pci.dev.is_alive() {
            let bar = self.bar();
            if let Some(sh) = self.sh() {
                let first_q = sh.first_q.load(Ordering::Relaxed);
                for q in 0..self.pci.txq.len() as u32 {
                    let abs = first_q + q;
                    bar.write32(gllan_txpre_qdis(abs / 128), GLLAN_TXPRE_QDIS_SET_QDIS | (abs % 128));
                    bar.write32(qtx_ena(abs), 0);
                    let _ = bar.poll_until(qtx_ena(abs), QENA_STAT, 0, QUEUE_TIMEOUT, POLL_INTERVAL);
                }
                for q in 0..self.pci.rxq.len() as u32 {
                    let abs = first_q + q;
                    bar.write32(qrx_ena(abs), 0);
                    let _ = bar.poll_until(qrx_ena(abs), QENA_STAT, 0, QUEUE_TIMEOUT, POLL_INTERVAL);
                }
            }
            if let Some(aq) = self.aq.as_ref() {
                let _ = self.cmd(
                    "queue_shutdown",
                    AQC_QUEUE_SHUTDOWN,
                    [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    Buf::None,
                );
                aq.shutdown(bar);
            }
            // PF reset: the device forgets contexts and segments before their memory is reused.
            bar.write32(PFGEN_CTRL, bar.read32(PFGEN_CTRL) | PFGEN_CTRL_PFSWR);
            if let Err(e) = bar.poll_until(PFGEN_CTRL, PFGEN_CTRL_PFSWR, 0, RESET_TIMEOUT, POLL_INTERVAL) {
                tracing::warn!(port = %self.pci.port, "PF reset at release: {e}");
            }
        }
        // The admin queue's zone is freed with the others: drop our view of it first.
        self.aq = None;
        self.pci.release_tail();
    }

    fn vsi_seid(&self) -> Result<u16, EthError> {
        self.sh()
            .map(|s| s.vsi_seid.load(Ordering::Relaxed) as u16)
            .ok_or_else(|| DriverError::state("port released").device(NAME))
    }
}

crate::pci::pci_port_drop!(Port);

impl EthDev for Port {
    fn info(&self) -> DevInfo {
        self.pci.info(NAME, DEFAULT_MTU, MAX_QUEUES)
    }

    fn link(&mut self) -> LinkStatus {
        self.link_status()
    }

    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        if let Some(sh) = self.sh() {
            let now = self.counters(sh.port_num.load(Ordering::Relaxed));
            let d: Vec<u64> = {
                let _g = self.pci.shm.lock().lock();
                sh.offsets.iter().zip(now).map(|(o, v)| v.wrapping_sub(o.load(Ordering::Relaxed)) & MASK48).collect()
            };
            s.ipackets = d[0] + d[1] + d[2];
            s.opackets = d[3] + d[4] + d[5];
            // Octet counters include the 4-byte CRC of every frame; ports report what software sees.
            s.ibytes = d[6].saturating_sub(4 * s.ipackets);
            s.obytes = d[7].saturating_sub(4 * s.opackets);
            s.imissed = d[8] & 0xffff_ffff;
        }
        self.pci.add_queue_stats(&mut s);
        s
    }

    fn stats_reset(&mut self) {
        self.stats_snapshot();
        self.pci.reset_queue_stats();
    }

    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        let seid = self.vsi_seid()?;
        self.promisc(seid, on).ctx("aq set_vsi_promiscuous_modes").map_err(|e| e.device(NAME))
    }

    fn set_mtu(&mut self, mtu: u16) -> Result<(), EthError> {
        let sh = self.sh().ok_or_else(|| DriverError::state("port released").device(NAME))?;
        // Frames are received into one buffer: the largest frame must fit it.
        let buf = sh.buf_size.load(Ordering::Relaxed).min(MAX_FRAME);
        let max = buf.saturating_sub(FRAME_OVERHEAD) as u16;
        if !(68..=max).contains(&mtu) {
            return Err(EthError::Invalid {
                what: format!("MTU {mtu} out of range 68..={max} (one {buf}-byte buffer)"),
            });
        }
        let frame = (u32::from(mtu) + FRAME_OVERHEAD) as u16;
        self.cmd("set_mac_config", AQC_SET_MAC_CONFIG, params16(&[(0, frame)]), Buf::None)
            .ctx("aq set_mac_config")
            .map_err(|e| e.device(NAME))?;
        sh.mtu.store(mtu.into(), Ordering::Relaxed);
        Ok(())
    }

    fn rx_intr_enable(&mut self, queue: u16) -> Result<std::os::fd::OwnedFd, EthError> {
        let (v, abs) = self.rx_vector(queue).map_err(|e| e.device(NAME))?;
        let fd = self.pci.vector_fd(v).map_err(|e| e.device(NAME))?;
        self.pci.msix_unmask(v).map_err(|e| e.device(NAME))?;
        // The queue's cause to vector v, enabled; the vector's interrupts on.
        let bar = self.bar();
        bar.write32(qint_rqctl(abs), QINT_RQCTL_CAUSE_ENA | v);
        bar.write32(pfint_dyn_ctln(v - 1), PFINT_DYN_CTLN_INTENA | PFINT_DYN_CTLN_CLEARPBA);
        Ok(fd)
    }

    fn rx_intr_disable(&mut self, queue: u16) -> Result<(), EthError> {
        let (_, abs) = self.rx_vector(queue).map_err(|e| e.device(NAME))?;
        self.bar().write32(qint_rqctl(abs), 0);
        Ok(())
    }

    fn link_irq_ack(&mut self) {
        // The causes read (and so cleared), vector 0 enabled again with its pending bit cleared.
        let bar = self.bar();
        let _ = bar.read32(PFINT_ICR0);
        bar.write32(PFINT_DYN_CTL0, PFINT_DYN_CTL0_INTENA | PFINT_DYN_CTL0_CLEARPBA);
    }

    fn link_after_irq(&mut self) -> LinkStatus {
        // The re-arm posted: the get_link_status command's trapped PF_ATQT write after it
        // (only the queue tail pages are mmapped) comes after it on the same connection.
        let bar = self.bar();
        let _ = bar.read32(PFINT_ICR0);
        bar.write32_posted(PFINT_DYN_CTL0, PFINT_DYN_CTL0_INTENA | PFINT_DYN_CTL0_CLEARPBA);
        self.link_status()
    }

    crate::pci::pci_rss_and_queues!(NAME);

    crate::pci::pci_ethdev_common!("i40e");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x710_ids_are_in_the_table() {
        assert!(PCI_IDS.contains(&PciId { vendor: 0x8086, device: 0x1572 }));
        assert!(PCI_IDS.contains(&PciId { vendor: 0x8086, device: 0x1583 }));
    }
}
