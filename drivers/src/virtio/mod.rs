//! `net_virtio`: a virtio-net driver over the virtio 1.x PCI transport (modern only), for
//! 1af4:1041 and the transitional 1af4:1000 driven in modern mode, over kernel VFIO (QEMU's
//! virtio-net-pci in the VM tier, a cloud VM's NIC) or any `DeviceIo`.
//!
//! Control path here (virtio 1.2, sections 4.1.4 and 3.1.1), split virtqueues and the bursts in
//! [`vq`]. The primary walks the vendor capabilities (common, notify, ISR, device config),
//! resets the device, negotiates features (VERSION_1 required; MAC, STATUS, MRG_RXBUF when
//! offered), sets up receive queue 0 and transmit queue 1 in the lab's shared memory and sets
//! DRIVER_OK; a secondary only maps the BAR and finds the queues (it never writes
//! `queue_select`, whose effect is device-wide).
//!
//! Shared state (memzones the primary reserves): `virtio_<port>_dev` ([`DevShared`]: MAC, MTU,
//! features, where the registers are) and one zone per virtqueue ([`vq`]).
//!
//! Queue pairs: `nb_rxq` = `nb_txq` = N; more than one needs VIRTIO_NET_F_MQ, and the control
//! queue (VIRTIO_NET_F_CTRL_VQ) sets the pair count (VQ_PAIRS_SET) and, with
//! VIRTIO_NET_F_CTRL_RX, promiscuous mode. The control queue is used under the shared-memory
//! lock, so any process of the lab may issue a command.
//!
//! A frame the device spreads over several receive buffers (MRG_RXBUF, `num_buffers` over 1)
//! arrives as one chained packet; a chained packet to transmit is copied into one buffer.
//!
//! Not yet: offloads, RSS (the device's own steering spreads flows over the pairs), transmit
//! descriptor chains.

pub(crate) mod devring;
pub mod user;
pub mod vhost;

/// The socket (`key=`, required) and queue pairs (`queues=`, default the port's receive queues,
/// enough for its transmit queues too) of a vhost-user device, either end.
pub(crate) fn socket_and_pairs(
    ctx: &ProbeCtx<'_>,
    key: &str,
    max: u16,
) -> Result<(std::path::PathBuf, u16), DriverError> {
    let conf = ctx.conf;
    let path = ctx
        .kvargs
        .get_str(key)
        .map(std::path::PathBuf::from)
        .ok_or_else(|| DriverError::config(format!("{key}= is required (the vhost-user socket)")))?;
    let pairs = ctx.kvargs.get_u64("queues").map_or(conf.nb_rxq, |q| q as u16);
    if pairs == 0 || pairs > max || conf.nb_rxq > pairs || conf.nb_txq > pairs {
        return Err(DriverError::config(format!(
            "{} receive and {} transmit queues over queues={pairs} (1..={max} pairs)",
            conf.nb_rxq, conf.nb_txq
        )));
    }
    Ok((path, pairs))
}
pub mod vq;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab_core::bus::pci::PciId;
use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortId, PortStats, ProbeCtx};
use lab_core::mbuf::Mempool;
use lab_core::vfio::{Bar, DeviceIo};

use self::vq::{RxVq, TxVq, Vq};
use crate::error::{Ctx, DriverError};
use crate::pci::{fmt_mac, DevState, PciPort};

const NAME: &str = "net_virtio";
/// Queue pairs this driver sets up at most.
pub const MAX_QUEUES: u16 = 8;
/// Descriptors of the control queue.
const CTRL_QSIZE: u32 = 64;
/// Control commands wait at most this long for the device.
const CTRL_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_MTU: u16 = 1500;
const DEV_MAGIC: u64 = 0x5649_5254_4445_5601;
const RESET_TIMEOUT: Duration = Duration::from_secs(1);

static PCI_IDS: [PciId; 2] = [
    PciId { vendor: 0x1af4, device: 0x1041 }, // virtio 1.x network device
    PciId { vendor: 0x1af4, device: 0x1000 }, // transitional network device, driven in modern mode
];

static KEYS: [KeySpec; 2] = [
    KeySpec::new(
        "queue_size",
        KeyKind::U64 { min: 64, max: 32768 },
        "descriptors per virtqueue, a power of 2 up to the device's maximum (default: the port configuration's, capped there)",
    ),
    KeySpec::new(
        "queues",
        KeyKind::U64 { min: 1, max: MAX_QUEUES as u64 },
        "queue pairs (default: the port configuration's); more than one needs VIRTIO_NET_F_MQ",
    ),
];

// Virtio PCI capability (4.1.4): vendor-specific capability id, cfg_type values.
const PCI_CAP_ID_VNDR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

// Common configuration (4.1.4.3), offsets from the common cap.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const NO_VECTOR: u16 = 0xffff;

// Device status (2.1).
const S_ACKNOWLEDGE: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_FAILED: u8 = 0x80;

// Feature bits (5.1.3, 6).
const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_CTRL_RX: u64 = 1 << 18;
const F_MQ: u64 = 1 << 22;
const F_VERSION_1: u64 = 1 << 32;
/// The device's DMA goes through the platform's IOMMU (6.1): our addresses are IOVAs.
const F_ACCESS_PLATFORM: u64 = 1 << 33;
// Control commands (5.1.6.5): class, command.
const CTRL_RX: u8 = 0;
const CTRL_RX_PROMISC: u8 = 0;
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// Link up in the device config's status (5.1.4).
const NET_S_LINK_UP: u16 = 1;

/// Where the virtio structures are, as the capabilities say (all in one BAR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Caps {
    bar: u32,
    common: u64,
    notify: u64,
    notify_mult: u32,
    isr: u64,
    device: u64,
}

/// The net_virtio driver.
pub struct VirtioDriver;

/// Device state shared by every process attached to the port (memzone `virtio_<port>_dev`).
#[repr(C, align(64))]
pub struct DevShared {
    magic: AtomicU64,
    mac_lo: AtomicU32,
    mac_hi: AtomicU32,
    mtu: AtomicU32,
    qsize: AtomicU32,
    features: AtomicU64,
    bar: AtomicU32,
    device_off: AtomicU32,
    /// Queue pairs set up.
    pairs: AtomicU32,
    /// Notify register offsets: receive queue i at 2i, transmit queue i at 2i + 1.
    notify: [AtomicU32; 2 * MAX_QUEUES as usize],
    /// The control queue's virtqueue index and notify offset (index u32::MAX: none).
    ctrl_index: AtomicU32,
    ctrl_notify: AtomicU32,
    ctrl_qsize: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<DevShared>() == 128);

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
    format!("virtio_{port}_dev")
}

/// Walks the capability list of config space for the four virtio structures.
fn read_caps(dev: &dyn DeviceIo) -> Result<Caps, DriverError> {
    let rd = |off: u64, n: usize| -> Result<Vec<u8>, DriverError> {
        let mut b = vec![0u8; n];
        dev.config_read(off, &mut b).ctx("config space")?;
        Ok(b)
    };
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let status = rd(0x06, 2)?;
    if u16::from_le_bytes([status[0], status[1]]) & 0x10 == 0 {
        return Err(DriverError::config("no PCI capability list: not a virtio 1.x (modern) device"));
    }
    let mut found: [Option<(u32, u64, u32)>; 5] = [None; 5];
    let mut mult = 0;
    let mut at = u64::from(rd(0x34, 1)?[0] & 0xfc);
    let mut seen = 0;
    while at != 0 {
        seen += 1;
        if seen > 48 || !(0x40..=0xf0).contains(&at) {
            return Err(DriverError::state(format!("capability list broken at {at:#x}")));
        }
        let c = rd(at, 20.min(256 - at as usize))?;
        if c[0] == PCI_CAP_ID_VNDR && c.len() >= 16 {
            let (ty, bar) = (c[3], u32::from(c[4]));
            let (off, len) = (u64::from(u32at(&c, 8)), u32at(&c, 12));
            // The first capability of each type is the one to use (4.1.4).
            if (1..=4).contains(&ty) && found[ty as usize].is_none() && bar <= 5 {
                found[ty as usize] = Some((bar, off, len));
                if ty == CAP_NOTIFY && c.len() >= 20 {
                    mult = u32at(&c, 16);
                }
            }
        }
        at = u64::from(c[1] & 0xfc);
    }
    let get = |ty: u8, what: &str| {
        found[ty as usize]
            .ok_or_else(|| DriverError::config(format!("no virtio {what} capability (legacy-only device?)")))
    };
    let (common, notify, isr, device) =
        (get(CAP_COMMON, "common")?, get(CAP_NOTIFY, "notify")?, get(CAP_ISR, "ISR")?, get(CAP_DEVICE, "device")?);
    if common.2 < 0x38 {
        return Err(DriverError::config(format!("common configuration of {} bytes, 56 needed", common.2)));
    }
    let bar = common.0;
    if [notify.0, isr.0, device.0].iter().any(|&b| b != bar) {
        return Err(DriverError::config(format!(
            "virtio structures in BARs {}/{}/{}/{}: this driver needs them in one",
            common.0, notify.0, isr.0, device.0
        )));
    }
    Ok(Caps { bar, common: common.1, notify: notify.1, notify_mult: mult, isr: isr.1, device: device.1 })
}

/// Receive queue `i` (virtqueue 2i) and transmit queue `i` (2i + 1) of a port: reserved
/// (primary, `create`) or found; `notify` holds every data queue's notify offset.
fn open_pair(
    p: &PciPort<DevShared, RxVq, TxVq>,
    i: u16,
    qsize: u32,
    notify: &[u64],
    create: bool,
) -> Result<(Vq, Vq), DriverError> {
    let open = |rx: bool, qi: u16| {
        let bell = notify
            .get(qi as usize)
            .copied()
            .ok_or_else(|| DriverError::state(format!("no notify offset for virtqueue {qi}")))?;
        Vq::open(&p.shm, &p.bar, vq::zone_name(p.port, rx, i), qi, qsize, bell, p.port, create)
    };
    Ok((open(true, 2 * i)?, open(false, 2 * i + 1)?))
}

/// Writes queue `qi`'s size and ring addresses, no MSI-X vector, and enables it (4.1.4.3).
fn enable_queue(b: &Bar, c: u64, qi: u16, size: u32, q: &Vq) {
    let (desc, avail, used) = q.addrs();
    b.write16(c + QUEUE_SELECT, qi);
    b.write16(c + QUEUE_SIZE, size as u16);
    for (off, v) in [(QUEUE_DESC, desc), (QUEUE_DRIVER, avail), (QUEUE_DEVICE, used)] {
        b.write32(c + off, v as u32);
        b.write32(c + off + 4, (v >> 32) as u32);
    }
    b.write16(c + QUEUE_MSIX_VECTOR, NO_VECTOR);
    b.write16(c + QUEUE_ENABLE, 1);
}

impl Driver for VirtioDriver {
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
        crate::pci::check_queue_counts(conf, MAX_QUEUES).map_err(err)?;
        let pairs = ctx.kvargs.get_u64("queues").map_or(conf.nb_rxq, |q| q as u16);
        if ctx.kvargs.get_u64("queues").is_none() && conf.nb_rxq != conf.nb_txq {
            return Err(err(DriverError::config(format!(
                "virtio-net queues come in pairs: {} receive and {} transmit queues asked",
                conf.nb_rxq, conf.nb_txq
            ))));
        }
        let want = ctx.kvargs.get_u64("queue_size").unwrap_or(u64::from(conf.nb_desc));
        if !want.is_power_of_two() {
            return Err(err(DriverError::config(format!("queue_size={want}: a power of 2"))));
        }
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(shm, &conf.pool, 256).ctx(format!("buffer pool {}", conf.pool)).map_err(err)?;
        // Kernel VFIO in a secondary: through the primary's container and group (pci::transport).
        let t = crate::pci::transport::open(ctx, pci).map_err(err)?;
        let primary = ctx.is_primary();
        let mut port = if primary {
            let caps = read_caps(t.dev.as_ref()).map_err(err)?;
            let pci = PciPort::open_with(t, shm, ctx.port, true, caps.bar).map_err(err)?;
            let mut p = Port { pci, caps, ctrl: None };
            p.pci.bus_master().map_err(err)?;
            p.init_primary(&pool, want as u32, pairs).map_err(err)?;
            p
        } else {
            Port::attach_secondary(t, shm, ctx.port, &pool).map_err(err)?
        };
        let info = port.info();
        tracing::info!(device = %ctx.name, port = %ctx.port, role = if primary { "primary" } else { "secondary" },
            mac = %fmt_mac(&info.mac), qsize = port.sh().map(|s| s.qsize.load(Ordering::Relaxed)).unwrap_or(0),
            features = %format!("{:#x}", port.sh().map(|s| s.features.load(Ordering::Relaxed)).unwrap_or(0)),
            pairs = port.sh().map(|s| s.pairs.load(Ordering::Relaxed)).unwrap_or(0), control_queue = port.ctrl.is_some(),
            "virtio-net port ready");
        let _ = port.link();
        Ok(Box::new(port))
    }
}

/// This process's handle on one virtio-net port.
struct Port {
    pci: PciPort<DevShared, RxVq, TxVq>,
    caps: Caps,
    /// The control queue and its command buffer, when negotiated.
    ctrl: Option<Ctrl>,
}

/// The control virtqueue (5.1.6.5) and a 64-byte command buffer in its own zone: header
/// (class, command), data, and the ack byte the device writes.
struct Ctrl {
    q: Vq,
    buf: lab_core::mem::ShmOffset,
}

fn ctrl_zone(port: PortId) -> String {
    format!("virtio_{port}_ctrl")
}

fn ctrl_buf_zone(port: PortId) -> String {
    format!("virtio_{port}_ctrlbuf")
}

impl Port {
    fn bar(&self) -> &Bar {
        &self.pci.bar
    }

    fn sh(&self) -> Option<&DevShared> {
        self.pci.sh()
    }

    fn status(&self) -> u8 {
        self.bar().read8(self.caps.common + DEVICE_STATUS)
    }

    fn set_status(&self, bits: u8) {
        let s = self.status();
        self.bar().write8(self.caps.common + DEVICE_STATUS, s | bits);
    }

    /// 4.1.4.3.1: writing 0 resets; the driver waits until it reads back 0.
    fn reset(&self) -> Result<(), DriverError> {
        let c = self.caps.common;
        self.bar().write8(c + DEVICE_STATUS, 0);
        let t = Instant::now();
        while self.bar().read8(c + DEVICE_STATUS) != 0 {
            if t.elapsed() > RESET_TIMEOUT {
                return Err(DriverError::state(format!("device status still {:#x} after reset", self.status())));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    fn features(&self) -> u64 {
        let (b, c) = (self.bar(), self.caps.common);
        b.write32(c + DEVICE_FEATURE_SELECT, 0);
        let lo = b.read32(c + DEVICE_FEATURE);
        b.write32(c + DEVICE_FEATURE_SELECT, 1);
        let hi = b.read32(c + DEVICE_FEATURE);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Primary: 3.1.1 driver initialisation.
    fn init_primary(&mut self, pool: &Mempool, want: u32, pairs: u16) -> Result<(), DriverError> {
        let r = self.init_steps(pool, want, pairs);
        if r.is_err() {
            // 3.1.1 step 8: tell the device the driver gave up.
            self.set_status(S_FAILED);
        }
        r
    }

    fn init_steps(&mut self, pool: &Mempool, want: u32, pairs: u16) -> Result<(), DriverError> {
        let c = self.caps.common;
        self.reset()?;
        self.set_status(S_ACKNOWLEDGE);
        self.set_status(S_DRIVER);
        let offered = self.features();
        if offered & F_VERSION_1 == 0 {
            return Err(DriverError::config(format!("device features {offered:#x} lack VERSION_1: legacy device")));
        }
        // Buffers are given as IOVAs of the lab's DMA map: a device that bypasses the IOMMU
        // would take them for physical addresses and write anywhere (QEMU: iommu_platform=on).
        if offered & F_ACCESS_PLATFORM == 0 {
            return Err(DriverError::config(
                "device lacks VIRTIO_F_ACCESS_PLATFORM: its DMA bypasses the IOMMU, our IOVAs would be taken for physical addresses (QEMU: iommu_platform=on)",
            ));
        }
        let mut features = F_VERSION_1 | F_ACCESS_PLATFORM | (offered & (F_MAC | F_STATUS | F_MRG_RXBUF | F_CTRL_VQ));
        if features & F_CTRL_VQ != 0 {
            features |= offered & (F_CTRL_RX | F_MQ);
        }
        let max_pairs = if features & F_MQ != 0 { self.bar().read16(self.caps.device + 8).max(1) } else { 1 };
        if pairs > max_pairs {
            return Err(DriverError::config(format!(
                "{pairs} queue pairs asked, the device offers {max_pairs}{}",
                if features & F_MQ == 0 { " (no VIRTIO_NET_F_MQ with a control queue)" } else { "" }
            )));
        }
        let b = self.bar();
        b.write32(c + DRIVER_FEATURE_SELECT, 0);
        b.write32(c + DRIVER_FEATURE, features as u32);
        b.write32(c + DRIVER_FEATURE_SELECT, 1);
        b.write32(c + DRIVER_FEATURE, (features >> 32) as u32);
        self.set_status(S_FEATURES_OK);
        if self.status() & S_FEATURES_OK == 0 {
            return Err(DriverError::config(format!("device refused features {features:#x}")));
        }
        let nq = b.read16(c + NUM_QUEUES);
        let ctrl_index = (features & F_CTRL_VQ != 0).then_some(2 * max_pairs);
        let need = ctrl_index.map_or(2 * pairs, |i| i + 1);
        if nq < need {
            return Err(DriverError::state(format!("device has {nq} virtqueues, {need} needed")));
        }
        b.write16(c + CONFIG_MSIX_VECTOR, NO_VECTOR);

        // MAC from the device config (5.1.4) when offered, else a locally administered one.
        let mac = if features & F_MAC != 0 {
            let d = self.caps.device;
            let mut m = [0u8; 6];
            for (i, x) in m.iter_mut().enumerate() {
                *x = b.read8(d + i as u64);
            }
            m
        } else {
            [0x02, 0, 0, 0, 0, self.pci.port.0 as u8]
        };

        self.pci.map_shared(&dev_zone(self.pci.port), true)?;
        // Every data queue (receive 2i, transmit 2i + 1) gets the same size: the smallest
        // maximum, capped at what was asked, a power of 2.
        let data: Vec<u16> = (0..2 * pairs).collect();
        let mut qsize = want;
        let mut notify = vec![0u64; data.len()];
        for (&qi, bell) in data.iter().zip(notify.iter_mut()) {
            let (max, n) = self.queue_limits(qi)?;
            qsize = qsize.min(max);
            *bell = n;
        }
        if !qsize.is_power_of_two() {
            qsize = qsize.next_power_of_two() / 2;
        }
        let p = &mut self.pci;
        p.pool.get_or_insert_with(|| pool.new_handle());
        for i in 0..pairs {
            let (rx, tx) = open_pair(p, i, qsize, &notify, true)?;
            p.zones.push(rx.zone().to_string());
            p.zones.push(tx.zone().to_string());
            enable_queue(&p.bar, c, 2 * i, qsize, &rx);
            enable_queue(&p.bar, c, 2 * i + 1, qsize, &tx);
            let mut rx = RxVq { q: rx, mergeable: features & F_MRG_RXBUF != 0 };
            let pool_h = p.pool.as_mut().ok_or_else(|| DriverError::state("no buffer pool handle"))?;
            rx.fill(pool_h)?;
            p.rxq.push(rx);
            p.txq.push(TxVq { q: tx });
        }
        let (mut ctrl_notify, mut ctrl_qsize) = (0u64, 0u32);
        if let Some(ci) = ctrl_index {
            let (max, n) = self.queue_limits(ci)?;
            let size = CTRL_QSIZE.min(max);
            (ctrl_notify, ctrl_qsize) = (n, size);
            let p = &mut self.pci;
            let q = Vq::open(&p.shm, &p.bar, ctrl_zone(p.port), ci, size, n, p.port, true)?;
            p.zones.push(q.zone().to_string());
            let bz = ctrl_buf_zone(p.port);
            let z = p.shm.reserve(&bz, 64, 64).ctx(format!("memzone {bz}"))?;
            p.zones.push(bz);
            enable_queue(&p.bar, c, ci, size, &q);
            self.ctrl = Some(Ctrl { q, buf: z.offset });
        }

        let sh = self.sh().ok_or_else(|| DriverError::state("no shared state"))?;
        sh.mac_lo.store(u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]), Ordering::Relaxed);
        sh.mac_hi.store(u32::from(u16::from_le_bytes([mac[4], mac[5]])), Ordering::Relaxed);
        sh.mtu.store(u32::from(DEFAULT_MTU), Ordering::Relaxed);
        sh.qsize.store(qsize, Ordering::Relaxed);
        sh.features.store(features, Ordering::Relaxed);
        sh.bar.store(self.caps.bar, Ordering::Relaxed);
        sh.device_off.store(self.caps.device as u32, Ordering::Relaxed);
        sh.pairs.store(u32::from(pairs), Ordering::Relaxed);
        for (a, n) in sh.notify.iter().zip(&notify) {
            a.store(*n as u32, Ordering::Relaxed);
        }
        sh.ctrl_index.store(ctrl_index.map_or(u32::MAX, u32::from), Ordering::Relaxed);
        sh.ctrl_notify.store(ctrl_notify as u32, Ordering::Relaxed);
        sh.ctrl_qsize.store(ctrl_qsize, Ordering::Relaxed);
        sh.magic.store(DEV_MAGIC, Ordering::Release);

        self.set_status(S_DRIVER_OK);
        if self.status() & S_FAILED != 0 {
            return Err(DriverError::state("device set FAILED after DRIVER_OK"));
        }
        // 5.1.6.5.5: with MQ the device starts with one pair; ask for all of them.
        if features & F_MQ != 0 {
            self.ctrl_cmd(CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, &pairs.to_le_bytes())?;
        }
        for q in &self.pci.rxq {
            q.kick(&self.pci.bar);
        }
        Ok(())
    }

    /// Queue `qi`'s maximum size (a power of 2 at most) and notify register offset.
    fn queue_limits(&self, qi: u16) -> Result<(u32, u64), DriverError> {
        let (b, c) = (self.bar(), self.caps.common);
        b.write16(c + QUEUE_SELECT, qi);
        let max = u32::from(b.read16(c + QUEUE_SIZE));
        if max == 0 || max == 0xffff {
            return Err(DriverError::state(format!("virtqueue {qi} not available (size {max})")));
        }
        let bell = self.caps.notify + u64::from(b.read16(c + QUEUE_NOTIFY_OFF)) * u64::from(self.caps.notify_mult);
        Ok((max, bell))
    }

    /// One control command (5.1.6.5), under the shared-memory lock (any process may send one):
    /// header, data and ack in the command buffer, three chained descriptors, wait for the device.
    fn ctrl_cmd(&self, class: u8, cmd: u8, data: &[u8]) -> Result<(), DriverError> {
        let ctrl = self.ctrl.as_ref().ok_or_else(|| DriverError::config("no control queue negotiated"))?;
        if data.len() > 32 {
            return Err(DriverError::config("control command data over 32 bytes"));
        }
        let shm = &self.pci.shm;
        let _g = shm.lock().lock();
        let off = |o: u64| lab_core::mem::ShmOffset(ctrl.buf.0 + o);
        let ok = shm.write_at(off(0), &[class, cmd]) && shm.write_at(off(8), data) && shm.write_at(off(48), &[0xff]);
        if !ok {
            return Err(DriverError::state("control buffer outside shared memory"));
        }
        let iova = |o: u64| off(o).iova().0;
        let done = ctrl.q.command(
            &self.pci.bar,
            [(iova(0), 2, false), (iova(8), data.len() as u32, false), (iova(48), 1, true)],
            CTRL_TIMEOUT,
        );
        if !done {
            return Err(DriverError::state(format!(
                "control command {class}.{cmd}: no answer within {CTRL_TIMEOUT:?}"
            )));
        }
        let mut ack = [0xffu8];
        shm.read_at(off(48), &mut ack);
        if ack[0] != 0 {
            return Err(DriverError::state(format!(
                "control command {class}.{cmd} refused by the device (ack {})",
                ack[0]
            )));
        }
        Ok(())
    }

    /// Secondary: the BAR the primary recorded, the queues it built; no register written.
    fn attach_secondary(
        t: crate::pci::transport::Transport,
        shm: &Arc<lab_core::mem::Shm>,
        port: PortId,
        pool: &Mempool,
    ) -> Result<Port, DriverError> {
        let zone = dev_zone(port);
        let z = shm.lookup(&zone).ctx(format!("memzone {zone}"))?;
        // Which BAR to map comes from the zone, before the port (and its view of it) exists.
        let mut b = [0u8; 4];
        let at = lab_core::mem::ShmOffset(z.offset.0 + std::mem::offset_of!(DevShared, bar) as u64);
        if !shm.read_at(at, &mut b) {
            return Err(DriverError::state(format!("memzone {zone} outside shared memory")));
        }
        let bar = u32::from_le_bytes(b);
        if bar > 5 {
            return Err(DriverError::state(format!("memzone {zone}: no virtio port (BAR {bar}; primary not done?)")));
        }
        let mut port = Port {
            pci: PciPort::open_with(t, shm, port, false, bar)?,
            caps: Caps { bar, ..Caps::default() },
            ctrl: None,
        };
        port.pci.map_shared(&zone, false)?;
        let sh = port.sh().ok_or_else(|| DriverError::state("no shared state"))?;
        if sh.magic.load(Ordering::Acquire) != DEV_MAGIC {
            return Err(DriverError::state(format!("memzone {zone} holds no virtio port (primary not done?)")));
        }
        let qsize = sh.qsize.load(Ordering::Relaxed);
        let pairs = sh.pairs.load(Ordering::Relaxed);
        if pairs == 0 || pairs > u32::from(MAX_QUEUES) {
            return Err(DriverError::state(format!("shared port state is corrupt ({pairs} queue pairs)")));
        }
        let notify: Vec<u64> = sh.notify.iter().map(|n| u64::from(n.load(Ordering::Relaxed))).collect();
        let (ci, cn) = (sh.ctrl_index.load(Ordering::Relaxed), u64::from(sh.ctrl_notify.load(Ordering::Relaxed)));
        let cs = sh.ctrl_qsize.load(Ordering::Relaxed);
        let mergeable = sh.features.load(Ordering::Relaxed) & F_MRG_RXBUF != 0;
        port.caps.device = u64::from(sh.device_off.load(Ordering::Relaxed));
        let p = &mut port.pci;
        p.pool.get_or_insert_with(|| pool.new_handle());
        for i in 0..pairs as u16 {
            let (rx, tx) = open_pair(p, i, qsize, &notify, false)?;
            p.rxq.push(RxVq { q: rx, mergeable });
            p.txq.push(TxVq { q: tx });
        }
        if let Ok(ci) = u16::try_from(ci) {
            let q = Vq::open(&p.shm, &p.bar, ctrl_zone(p.port), ci, cs, cn, p.port, false)?;
            let bz = ctrl_buf_zone(p.port);
            let z = p.shm.lookup(&bz).ctx(format!("memzone {bz}"))?;
            port.ctrl = Some(Ctrl { q, buf: z.offset });
        }
        Ok(port)
    }

    /// Primary release: reset (the device forgets the queues), then buffers back, zones freed.
    fn release_shared(&mut self) {
        if self.pci.dev.is_alive() {
            if let Err(e) = self.reset() {
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
        let Some(sh) = self.sh() else { return LinkStatus::default() };
        if !self.pci.dev.is_alive() {
            return LinkStatus::default();
        }
        // 5.1.4: with VIRTIO_NET_F_STATUS the device config says; without it the link is up.
        let up = sh.features.load(Ordering::Relaxed) & F_STATUS == 0
            || self.bar().read16(u64::from(sh.device_off.load(Ordering::Relaxed)) + 6) & NET_S_LINK_UP != 0;
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }

    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        for q in &self.pci.rxq {
            let c = q.q.h().counters();
            s.ipackets += c.pkts;
            s.ibytes += c.bytes;
        }
        for q in &self.pci.txq {
            let c = q.q.h().counters();
            s.opackets += c.pkts;
            s.obytes += c.bytes;
        }
        self.pci.add_queue_stats(&mut s);
        s
    }

    fn stats_reset(&mut self) {
        self.pci.reset_queue_stats();
    }

    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        let rx = self.sh().is_some_and(|s| s.features.load(Ordering::Relaxed) & F_CTRL_RX != 0);
        if !rx {
            // Without VIRTIO_NET_F_CTRL_RX the device delivers what it delivers (QEMU's starts
            // promiscuous).
            return if on {
                Ok(())
            } else {
                Err(EthError::Invalid { what: "promiscuous off needs VIRTIO_NET_F_CTRL_RX (not negotiated)".into() })
            };
        }
        self.ctrl_cmd(CTRL_RX, CTRL_RX_PROMISC, &[u8::from(on)]).map_err(|e| e.device(NAME))
    }

    fn set_mtu(&mut self, mtu: u16) -> Result<(), EthError> {
        if mtu == DEFAULT_MTU {
            return Ok(());
        }
        Err(EthError::Invalid { what: format!("MTU {mtu}: net_virtio keeps {DEFAULT_MTU} (one buffer per frame)") })
    }

    crate::pci::pci_ethdev_common!("virtio-net");
}

/// A hint to the CPU: the line at `p` will be used soon (no fault, whatever `p` is). The
/// bursts look a few frames ahead with it, so the misses on lines the other side wrote on its
/// core overlap instead of following one another.
#[inline]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a prefetch is a hint: it never faults and reads nothing architecturally; SSE
        // is in every x86_64 CPU.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_bits_are_the_specs() {
        assert_eq!(F_VERSION_1, 1 << 32);
        assert_eq!(F_MAC | F_MRG_RXBUF | F_STATUS, (1 << 5) | (1 << 15) | (1 << 16));
        assert_eq!((CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE), (1, 2, 3, 4));
        assert_eq!((QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE), (0x20, 0x28, 0x30));
    }
}
