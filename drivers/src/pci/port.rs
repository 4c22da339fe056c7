//! The port skeleton both PCI drivers build on, and the PCI chores around it.
//!
//! A [`PciPort`] is one process's handle on one PCI port: its own transport connection (kernel
//! VFIO or vfio-user), its own BAR 0 mapping and its own DMA map of the lab's shared memory at
//! `IOVA_BASE`, plus pointers into the zones every process shares (the device-state zone, the
//! queue zones). What is the same for every driver is here: opening (transport, DMA map, BAR, in
//! that order, each undone if a later one fails), the release tail after the driver stopped its
//! device, and `Drop` (the DMA unmap; the BAR and the transport go with their fields).

use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lab_core::bus::pci::PciDevice;
use lab_core::ethdev::{DevInfo, PortConf, PortId, PortStats, ProbeCtx, QueueStats};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{Shm, IOVA_BASE};
use lab_core::vfio::{Bar, DeviceIo, DmaRegion, VfioError};

use super::queue::QueueHdr;
use crate::error::{Ctx, DriverError};

/// PCI configuration space: the command register.
pub const PCI_COMMAND: u64 = 0x04;
/// Command register: memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Configuration space: the first capability's offset.
pub const PCI_CAPABILITY_LIST: u64 = 0x34;
/// Capability id: MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// MSI-X message control: enable, function mask.
pub const MSIX_FLAGS_ENABLE: u16 = 1 << 15;
pub const MSIX_FLAGS_MASKALL: u16 = 1 << 14;
/// A table entry's vector control word (bit 0: masked).
pub const MSIX_ENTRY_VECTOR_CTRL: u64 = 12;
/// VFIO's irq index of MSI-X.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

/// What the skeleton reads from a driver's device-state zone (every field an atomic: the type
/// is shared by every process attached to the port).
pub(crate) trait DevState: Sync {
    /// Nonzero while the zone describes a live port.
    fn magic(&self) -> &AtomicU64;
    /// The port's MAC address.
    fn mac(&self) -> [u8; 6];
    /// The MTU.
    fn mtu(&self) -> u16;
}

/// What the skeleton needs of a driver's receive or transmit queue.
pub(crate) trait PortQueue: Send {
    /// The queue's shared header (its software counters).
    fn hdr(&self) -> &QueueHdr;
    /// Gives back every buffer the queue holds (primary release, device stopped).
    fn drain(&mut self, pool: &mut Mempool);
    /// One burst.
    fn burst(&mut self, bar: &Bar, pool: &mut Mempool, pkts: &mut [Option<Mbuf>]) -> usize;
    /// Makes a stopped queue new again (queue start at runtime): receive posts fresh buffers on
    /// every descriptor (the old ones go back), transmit drops what was in flight; the indices
    /// start at 0. Returns the ring size.
    fn restart(&mut self, pool: &mut Mempool) -> Result<u32, DriverError> {
        let _ = pool;
        Err(DriverError::state("this driver's queues cannot be restarted"))
    }
}

/// `PortQueue` for a driver's `RxQueue` and `TxQueue`: both hold a `q: Queue` and an inherent
/// `burst`; receive drains the buffers it posted, transmit the ones in flight.
macro_rules! port_queues {
    ($rx:ty, $tx:ty) => {
        $crate::pci::port_queues!(@one $rx, drain_posted, |q: &mut $rx, pool| q.fill(pool));
        $crate::pci::port_queues!(@one $tx, drain_in_flight, |q: &mut $tx, _pool| {
            q.q.v.reset_indices();
            Ok(())
        });
    };
    (@one $q:ty, $drain:ident, $renew:expr) => {
        impl $crate::pci::PortQueue for $q {
            fn hdr(&self) -> &$crate::pci::queue::QueueHdr {
                self.q.h()
            }
            fn drain(&mut self, pool: &mut lab_core::mbuf::Mempool) {
                self.q.$drain(pool)
            }
            #[inline]
            fn burst(
                &mut self,
                bar: &lab_core::vfio::Bar,
                pool: &mut lab_core::mbuf::Mempool,
                pkts: &mut [Option<lab_core::mbuf::Mbuf>],
            ) -> usize {
                <$q>::burst(self, bar, pool, pkts)
            }
            fn restart(
                &mut self,
                pool: &mut lab_core::mbuf::Mempool,
            ) -> Result<u32, $crate::error::DriverError> {
                self.q.$drain(pool);
                let renew: fn(&mut $q, &mut lab_core::mbuf::Mempool) -> Result<(), $crate::error::DriverError> = $renew;
                renew(self, pool)?;
                Ok(self.q.v.n())
            }
        }
    };
}
pub(crate) use port_queues;

/// One process's handle on one PCI port: `S` is the driver's device-state zone, `R`/`T` its
/// queues.
pub(crate) struct PciPort<S, R, T> {
    /// The transport (the BAR holds another `Arc`).
    pub(crate) dev: Arc<dyn DeviceIo>,
    /// BAR 0, this process's mapping.
    pub(crate) bar: Bar,
    /// The lab's shared memory (rings, buffers, zones).
    pub(crate) shm: Arc<Shm>,
    /// The port id, the same in every process.
    pub(crate) port: PortId,
    /// This process is the primary (it initialised the device and owns the zones).
    pub(crate) primary: bool,
    shared: Option<NonNull<S>>,
    /// Receive queues, in queue order.
    pub(crate) rxq: Vec<R>,
    /// Transmit queues.
    pub(crate) txq: Vec<T>,
    /// This process's handle on the buffer pool, one for all the port's queues (its cache shared
    /// by all of them, so transmit completions feed receive refills warm); made with the queues.
    pub(crate) pool: Option<Mempool>,
    /// Zones this (primary) process reserved, freed at shared release or when a probe fails.
    pub(crate) zones: Vec<String>,
    /// The DMA map is in place.
    mapped: bool,
    /// Primary over kernel VFIO: the container and group fds published to secondaries, closed
    /// (withdrawn) with the port.
    _published: Option<crate::sys::share::Published>,
    /// This process's eventfd for the device's MSI-X vector 0 (link status and other causes),
    /// once the driver asked for it ([`PciPort::link_irq`]).
    pub(crate) link_irq: Option<(nix::sys::eventfd::EventFd, bool)>,
    /// This process's eventfds on other MSI-X vectors (receive interrupts), by vector.
    vector_fds: std::collections::HashMap<u32, nix::sys::eventfd::EventFd>,
}

// SAFETY: `shared` points into the shared-memory mapping, which `shm` keeps mapped for as long as
// the port lives; `S: DevState` has only atomic fields (so `S: Sync`), the rest of the fields are
// `Send` themselves.
unsafe impl<S: DevState, R: PortQueue, T: PortQueue> Send for PciPort<S, R, T> {}

impl<S: DevState, R: PortQueue, T: PortQueue> PciPort<S, R, T> {
    /// Opens the device at `sysfs_dir` for this process: transport (vfio-user when the sysfs dir
    /// has the socket, else kernel VFIO), DMA map of the whole shared memory at `IOVA_BASE`, BAR 0.
    /// On error whatever was done is undone (the port drops).
    pub(crate) fn open(ctx: &ProbeCtx<'_>, pci: &PciDevice) -> Result<Self, DriverError> {
        let t = super::transport::open(ctx, pci)?;
        Self::open_with(t, ctx.runtime.shm(), ctx.port, ctx.is_primary(), 0)
    }

    /// As [`PciPort::open`] over a transport the driver opened itself (to read config space
    /// first), with `bar` as the port's register BAR (virtio's is where its capabilities say).
    pub(crate) fn open_with(
        t: super::transport::Transport,
        shm: &Arc<Shm>,
        port: PortId,
        primary: bool,
        bar_index: u32,
    ) -> Result<Self, DriverError> {
        let super::transport::Transport { dev, published, dma_mapped_by_primary } = t;
        if !dma_mapped_by_primary {
            let region = DmaRegion { iova: IOVA_BASE, size: shm.len(), fd: shm.fd(), fd_offset: 0, vaddr: shm.base() };
            dev.dma_map(&region).ctx("DMA map of shared memory")?;
        }
        let bar = match Bar::open(dev.clone(), bar_index) {
            Ok(b) => b,
            Err(e) => {
                if !dma_mapped_by_primary {
                    if let Err(u) = dev.dma_unmap(IOVA_BASE, shm.len()) {
                        tracing::debug!(%port, "DMA unmap after a failed BAR map: {u}");
                    }
                }
                return Err(e).ctx(format!("BAR{bar_index}"));
            }
        };
        Ok(PciPort {
            dev,
            bar,
            shm: shm.clone(),
            port,
            primary,
            shared: None,
            rxq: Vec::new(),
            txq: Vec::new(),
            pool: None,
            zones: Vec::new(),
            mapped: !dma_mapped_by_primary,
            _published: published,
            link_irq: None,
            vector_fds: std::collections::HashMap::new(),
        })
    }

    /// PCI command register: memory space and bus master on, so the device may DMA.
    pub(crate) fn bus_master(&self) -> Result<(), DriverError> {
        let set = || -> Result<(), VfioError> {
            let mut b = [0u8; 2];
            self.dev.config_read(PCI_COMMAND, &mut b)?;
            let cmd = u16::from_le_bytes(b) | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY;
            self.dev.config_write(PCI_COMMAND, &cmd.to_le_bytes())
        };
        set().ctx("PCI command register")
    }

    /// Primary: MSI-X on in the function's capability (enable set, function mask clear) and
    /// vector 0 unmasked in the table (PCI 3.0 6.8.2), so the device can signal vector 0.
    pub(crate) fn msix_enable_vector0(&self) -> Result<(), DriverError> {
        self.msix(0, true)
    }

    /// Unmasks MSI-X vector `v` in the table (any process: the table is the device's).
    pub(crate) fn msix_unmask(&self, v: u32) -> Result<(), DriverError> {
        self.msix(v, false)
    }

    /// Finds the MSI-X capability, unmasks vector `v` in its table and, if `enable`, turns
    /// MSI-X on.
    fn msix(&self, v: u32, enable: bool) -> Result<(), DriverError> {
        let cfg = |off: u64, n: usize| -> Result<u32, VfioError> {
            let mut b = [0u8; 4];
            self.dev.config_read(off, &mut b[..n])?;
            Ok(u32::from_le_bytes(b))
        };
        let go = || -> Result<bool, VfioError> {
            // The capability list from 0x34; at most 48 entries (a looping list ends here).
            let mut at = cfg(PCI_CAPABILITY_LIST, 1)? as u64 & 0xfc;
            for _ in 0..48 {
                if at == 0 {
                    return Ok(false);
                }
                if at < 0x40 {
                    return Ok(false); // inside the standard header: a damaged list
                }
                if cfg(at, 1)? == u32::from(PCI_CAP_ID_MSIX) {
                    let ctl = cfg(at + 2, 2)?;
                    let vectors = (ctl & 0x7ff) + 1;
                    let table = cfg(at + 4, 4)?;
                    let (bir, off) = (table & 0x7, u64::from(table & !0x7));
                    if v >= vectors || bir > 5 {
                        return Ok(false);
                    }
                    let entry = off + 16 * u64::from(v) + MSIX_ENTRY_VECTOR_CTRL;
                    self.dev.region_write(bir, entry, &0u32.to_le_bytes())?;
                    if enable {
                        let ctl = cfg(at + 2, 2)? as u16;
                        let ctl = (ctl | MSIX_FLAGS_ENABLE) & !MSIX_FLAGS_MASKALL;
                        self.dev.config_write(at + 2, &ctl.to_le_bytes())?;
                    }
                    return Ok(true);
                }
                at = cfg(at + 1, 1)? as u64 & 0xfc;
            }
            Ok(false)
        };
        match go().ctx("MSI-X capability")? {
            true => Ok(()),
            false => Err(DriverError::state(format!(
                "no MSI-X capability with a vector {v} in a table of BARs 0-5 (capability list checked from 0x40)"
            ))),
        }
    }

    /// This process's eventfd on MSI-X vector 0, set on its own transport connection; only
    /// where that is this process's own (vfio-user, or the primary over kernel VFIO, see
    /// `DeviceIo::irqs_per_process`). Kept in `link_irq`, with the link state the driver reads
    /// right after and records with [`PciPort::set_link_baseline`] (a change after the setup
    /// signals the fd).
    pub(crate) fn link_irq(&mut self) -> Result<(), DriverError> {
        if !self.primary && !self.dev.irqs_per_process() {
            return Ok(());
        }
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| DriverError::state(format!("eventfd: {e}")))?;
        self.dev.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, &[fd.as_fd()]).ctx("MSI-X vector 0 eventfd")?;
        self.link_irq = Some((fd, false));
        Ok(())
    }

    /// Records the link state as of the link-status interrupt's setup.
    pub(crate) fn set_link_baseline(&mut self, up: bool) {
        if let Some((_, b)) = self.link_irq.as_mut() {
            *b = up;
        }
    }

    /// A copy of this process's eventfd on MSI-X vector `v`, set on its transport connection
    /// the first time (where interrupts are this process's own, as for [`PciPort::link_irq`]).
    pub(crate) fn vector_fd(&mut self, v: u32) -> Result<std::os::fd::OwnedFd, DriverError> {
        if !self.primary && !self.dev.irqs_per_process() {
            return Err(DriverError::state("interrupts in a secondary need a transport of its own (vfio-user)"));
        }
        if !self.vector_fds.contains_key(&v) {
            use nix::sys::eventfd::{EfdFlags, EventFd};
            let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| DriverError::state(format!("eventfd: {e}")))?;
            self.dev
                .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, v, &[fd.as_fd()])
                .ctx(format!("MSI-X vector {v} eventfd"))?;
            self.vector_fds.insert(v, fd);
        }
        let fd = &self.vector_fds[&v];
        fd.as_fd().try_clone_to_owned().map_err(|e| DriverError::state(format!("dup eventfd: {e}")))
    }

    /// A copy of the link-status eventfd, for the process's event thread.
    pub(crate) fn link_event_fd(&self) -> Option<(std::os::fd::OwnedFd, bool)> {
        self.link_irq.as_ref().and_then(|(e, up)| Some((e.as_fd().try_clone_to_owned().ok()?, *up)))
    }

    /// The device-state zone, while mapped.
    pub(crate) fn sh(&self) -> Option<&S> {
        // SAFETY: points at an `S` inside the mapping (bounds checked by `map_shared`); all its
        // fields are atomics, so a shared reference is sound while other processes write them.
        self.shared.map(|p| unsafe { p.as_ref() })
    }

    /// Maps the device-state zone `name` (reserving it, and recording it for release, when
    /// `create`).
    pub(crate) fn map_shared(&mut self, name: &str, create: bool) -> Result<(), DriverError> {
        let len = std::mem::size_of::<S>() as u64;
        let shm = &self.shm;
        let z = if create { shm.reserve(name, len, 64) } else { shm.lookup(name) }.ctx(format!("memzone {name}"))?;
        if create {
            self.zones.push(name.to_string());
        }
        if z.len < len {
            return Err(DriverError::state(format!("memzone {name} is {} bytes, {len} needed", z.len)));
        }
        let p = shm
            .ptr(z.offset, len)
            .ok_or_else(|| DriverError::state(format!("memzone {name} outside shared memory")))?;
        self.shared = Some(p.cast());
        Ok(())
    }

    /// This process reserved zones it still has to free: the primary, before its shared release.
    pub(crate) fn owns_zones(&self) -> bool {
        !self.zones.is_empty()
    }

    /// The end of a primary's shared release, after the driver stopped and reset its device:
    /// buffers back to the pool, the device-state zone marked dead, the queues dropped, the zones
    /// freed.
    pub(crate) fn release_tail(&mut self) {
        if let Some(pool) = self.pool.as_mut() {
            for q in &mut self.rxq {
                q.drain(pool);
            }
            for q in &mut self.txq {
                q.drain(pool);
            }
        }
        if let Some(sh) = self.sh() {
            sh.magic().store(0, Ordering::Release);
        }
        self.rxq.clear();
        self.txq.clear();
        self.shared = None;
        for z in self.zones.drain(..) {
            if let Err(e) = self.shm.free(&z) {
                tracing::warn!(zone = %z, "free: {e}");
            }
        }
    }

    /// A close that is not the primary's shared release: this process only forgets the zones
    /// (they stay for the other processes); its own mappings go with the port.
    pub(crate) fn forget_zones(&mut self) {
        self.zones.clear();
    }

    /// The port's description, from the device-state zone.
    pub(crate) fn info(&self, driver: &'static str, default_mtu: u16, max_queues: u16) -> DevInfo {
        let (mut mac, mut mtu, mut nrx, mut ntx) = ([0u8; 6], default_mtu, 0, 0);
        if let Some(sh) = self.sh() {
            mac = sh.mac();
            mtu = sh.mtu();
            nrx = self.rxq.len() as u16;
            ntx = self.txq.len() as u16;
        }
        DevInfo { driver, mac, mtu, nb_rxq: nrx, nb_txq: ntx, max_rxq: max_queues, max_txq: max_queues }
    }

    /// Adds the software queue counters to port statistics: receive errors and allocation
    /// failures, transmit errors.
    pub(crate) fn add_queue_stats(&self, s: &mut PortStats) {
        for q in &self.rxq {
            let c = q.hdr().counters();
            s.ierrors += c.errors;
            s.rx_nombuf += c.nombuf;
        }
        for q in &self.txq {
            s.oerrors += q.hdr().counters().errors;
        }
    }

    /// Per-queue counters, receive then transmit, from the queues' shared headers (whichever
    /// process ran a queue counted into it).
    pub(crate) fn queue_stats(&self) -> (Vec<QueueStats>, Vec<QueueStats>) {
        let one = |h: &QueueHdr| {
            let c = h.counters();
            QueueStats { packets: c.pkts, bytes: c.bytes, errors: c.errors }
        };
        (self.rxq.iter().map(|q| one(q.hdr())).collect(), self.txq.iter().map(|q| one(q.hdr())).collect())
    }

    /// Receive (`rx`) or transmit queue `queue` as an index, if the port has it; the error names
    /// the queue and the range.
    pub(crate) fn queue_index(&self, rx: bool, queue: u16) -> Result<usize, DriverError> {
        let (n, what) = if rx { (self.rxq.len(), "receive") } else { (self.txq.len(), "transmit") };
        if usize::from(queue) >= n {
            return Err(DriverError::config(format!("{what} queue {queue}: the port has queues 0..{n}")));
        }
        Ok(usize::from(queue))
    }

    /// Restarts stopped queue `i` ([`PortQueue::restart`]); its ring size.
    pub(crate) fn restart_queue(&mut self, rx: bool, i: usize) -> Result<u32, DriverError> {
        let pool = self.pool.as_mut().ok_or_else(|| DriverError::state("no buffer pool handle"))?;
        if rx {
            self.rxq[i].restart(pool)
        } else {
            self.txq[i].restart(pool)
        }
    }

    /// The shared header of receive (`rx`) or transmit queue `i` (in range).
    pub(crate) fn queue_hdr(&self, rx: bool, i: usize) -> &QueueHdr {
        if rx {
            self.rxq[i].hdr()
        } else {
            self.txq[i].hdr()
        }
    }

    /// Zeroes the software counters of every queue.
    pub(crate) fn reset_queue_stats(&self) {
        self.rxq.iter().map(|q| q.hdr()).chain(self.txq.iter().map(|q| q.hdr())).for_each(QueueHdr::reset_counters);
    }

    /// One receive burst on `queue` (none on a queue this process does not have).
    #[inline]
    pub(crate) fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        match (self.rxq.get_mut(queue as usize), self.pool.as_mut()) {
            (Some(q), Some(pool)) if !q.hdr().is_stopped() => q.burst(&self.bar, pool, pkts),
            _ => 0,
        }
    }

    /// One transmit burst on `queue`.
    #[inline]
    pub(crate) fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        match (self.txq.get_mut(queue as usize), self.pool.as_mut()) {
            (Some(q), Some(pool)) if !q.hdr().is_stopped() => q.burst(&self.bar, pool, pkts),
            _ => 0,
        }
    }

    /// The device went away (surprise removal, the emulator died).
    pub(crate) fn is_removed(&self) -> bool {
        !self.dev.is_alive()
    }
}

impl<S, R, T> Drop for PciPort<S, R, T> {
    fn drop(&mut self) {
        // The driver's Drop ran first (a primary that still owns zones released them). This
        // process's DMA map goes now, if the device is still there; then the fields: the BAR
        // mapping, and the transport with the last Arc.
        if std::mem::take(&mut self.mapped) && self.dev.is_alive() {
            if let Err(e) = self.dev.dma_unmap(IOVA_BASE, self.shm.len()) {
                tracing::debug!(port = %self.port, "DMA unmap: {e}");
            }
        }
    }
}

/// Checks the port configuration's queue counts against `1..=max`.
pub(crate) fn check_queue_counts(conf: &PortConf, max: u16) -> Result<(), DriverError> {
    if conf.nb_rxq == 0 || conf.nb_rxq > max || conf.nb_txq == 0 || conf.nb_txq > max {
        return Err(DriverError::config(format!(
            "queue counts {}/{} out of range 1..={max}",
            conf.nb_rxq, conf.nb_txq
        )));
    }
    Ok(())
}

/// The MAC address as `aa:bb:cc:dd:ee:ff`.
pub(crate) fn fmt_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// The `EthDev` methods every PCI driver's port delegates to its [`PciPort`] (field `pci`) the
/// same way: the two bursts, `is_removed`, and `close` (the primary's shared release through the
/// driver's own `release_shared`, else only this process's view: the device and the rings stay
/// for the others; the DMA unmap, BAR unmap and transport disconnect follow in `Drop`). Expanded
/// inside `impl EthDev for Port`; `$what` names the driver in the logs.
macro_rules! pci_ethdev_common {
    ($what:literal) => {
        #[inline]
        fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<lab_core::mbuf::Mbuf>]) -> usize {
            self.pci.rx_burst(queue, pkts)
        }

        #[inline]
        fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<lab_core::mbuf::Mbuf>]) -> usize {
            self.pci.tx_burst(queue, pkts)
        }

        fn is_removed(&self) -> bool {
            self.pci.is_removed()
        }

        fn queue_stats(&mut self) -> (Vec<lab_core::ethdev::QueueStats>, Vec<lab_core::ethdev::QueueStats>) {
            self.pci.queue_stats()
        }

        fn link_event_fd(&mut self) -> Option<(std::os::fd::OwnedFd, bool)> {
            self.pci.link_event_fd()
        }

        fn close(mut self: Box<Self>, how: lab_core::ethdev::Release) {
            if how == lab_core::ethdev::Release::Shared && self.pci.primary {
                self.release_shared();
                tracing::info!(port = %self.pci.port, "{} port released (device reset, rings freed)", $what);
            } else {
                self.pci.forget_zones();
                tracing::info!(port = %self.pci.port, "{} port closed in this process", $what);
            }
        }
    };
}
pub(crate) use pci_ethdev_common;

/// `Drop` for a PCI driver's port: reached by `close` after its work, or by a failed probe, in
/// which case the primary gives back what it reserved (`release_shared`); then the fields drop
/// (the skeleton's DMA unmap, BAR, transport).
macro_rules! pci_port_drop {
    ($t:ty) => {
        impl Drop for $t {
            fn drop(&mut self) {
                if self.pci.owns_zones() {
                    self.release_shared();
                }
            }
        }
    };
}
pub(crate) use pci_port_drop;

/// The `EthDev` RSS and queue start/stop methods of a PCI driver's port, the same in both
/// drivers: they call the driver's `rss` module (`check`, `set_hash`, `get_hash`, `TABLE`,
/// `OFFLOADS`) and its port's `queue_enable(queue, rx, on)`. Expanded inside `impl EthDev for
/// Port`; `$name` is the driver's name.
macro_rules! pci_rss_and_queues {
    ($name:expr) => {
        fn rx_queue_stop(&mut self, queue: u16) -> Result<(), lab_core::ethdev::EthError> {
            self.queue_enable(queue, true, false).map_err(|e| e.device($name))
        }

        fn rx_queue_start(&mut self, queue: u16) -> Result<(), lab_core::ethdev::EthError> {
            self.queue_enable(queue, true, true).map_err(|e| e.device($name))
        }

        fn tx_queue_stop(&mut self, queue: u16) -> Result<(), lab_core::ethdev::EthError> {
            self.queue_enable(queue, false, false).map_err(|e| e.device($name))
        }

        fn tx_queue_start(&mut self, queue: u16) -> Result<(), lab_core::ethdev::EthError> {
            self.queue_enable(queue, false, true).map_err(|e| e.device($name))
        }

        fn reta_size(&self) -> u16 {
            rss::TABLE.size
        }

        fn rss_offloads(&self) -> u64 {
            rss::OFFLOADS
        }

        fn rss_hash_update(&mut self, conf: &lab_core::rss::RssConf) -> Result<(), lab_core::ethdev::EthError> {
            rss::check(conf).map_err(|e| e.device($name))?;
            rss::set_hash(&self.pci.bar, conf);
            Ok(())
        }

        fn rss_hash_conf_get(&mut self) -> Result<lab_core::rss::RssConf, lab_core::ethdev::EthError> {
            Ok(rss::get_hash(&self.pci.bar))
        }

        fn reta_update(&mut self, entries: &[(u16, u16)]) -> Result<(), lab_core::ethdev::EthError> {
            let queues = self.info().nb_rxq;
            rss::TABLE.update(&self.pci.bar, entries, queues).map_err(|e| e.device($name))
        }

        fn reta_query(&mut self) -> Result<Vec<u16>, lab_core::ethdev::EthError> {
            Ok(rss::TABLE.read(&self.pci.bar))
        }
    };
}
pub(crate) use pci_rss_and_queues;
