//! Ethernet ports: the driver interface, the shared port table and this process's handles.
//!
//! * [`Driver`] is what a poll-mode driver registers (name, bus, keys, PCI ids, `probe`).
//!   [`EthDev`] is a driver's per-process handle on one port: control operations and the
//!   `rx_burst`/`tx_burst` data path. A driver probed in the primary creates the device; probed in a
//!   secondary it attaches to what the primary created (its own connection, its own mappings).
//! * The port table lives in a memzone: one [`PortSlot`] per port id (32 by default) with name,
//!   devargs, state, driver, MAC, MTU, queue counts. Port ids are decided there, once, by the
//!   primary, so every process uses the same id for the same device.
//! * [`Ports`] holds this process's handles. Releasing a port is `release_port` in the primary
//!   (the driver resets the device and the shared slot is cleared) and `release_port_local` in a
//!   secondary (only its own handles: what the primary and the others use is left alone), the
//!   distinction DPDK's series introduced.
//!
//! The table is changed only under the shared-memory lock and only by the primary; a sequence
//! counter (odd while a hotplug operation runs) lets a late secondary take a consistent snapshot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::{AtomicU32, AtomicU64, Ordering};

use crate::addr::{BusKind, PciId};
use crate::bus::pci::PciDevice;
use crate::devargs::{Devargs, KeySpec, Kvargs};
use crate::mbuf::Mbuf;
use crate::mem::{MemError, Shm};
use crate::runtime::Runtime;

/// Number of port slots.
pub const MAX_PORTS: usize = 32;
/// Longest device name.
pub const NAME_MAX: usize = 63;
/// Memzone of the port table.
pub const PORTS_ZONE: &str = "lab_ethdev_ports";
/// The default packet buffer pool every port receives into (created by the primary).
pub const DEFAULT_POOL: &str = "lab_mbuf_pool";

/// A port id, the same in every process of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u16);

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mb/s (0 when down or unknown).
    pub speed_mbps: u32,
}

impl std::fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up {
            write!(f, "up {} Mbps", self.speed_mbps)
        } else {
            f.write_str("down")
        }
    }
}

/// Port counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets the device dropped for lack of descriptors.
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Receive buffer allocation failures.
    pub rx_nombuf: u64,
}

/// One queue's counters (DPDK's `q_ipackets`/`q_ibytes`/`q_errors` and their TX halves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Errors.
    pub errors: u64,
}

/// What a port is and can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    /// Driver name.
    pub driver: &'static str,
    /// MAC address.
    pub mac: [u8; 6],
    /// Current MTU.
    pub mtu: u16,
    /// Receive queues configured.
    pub nb_rxq: u16,
    /// Transmit queues configured.
    pub nb_txq: u16,
    /// Receive queues the device has.
    pub max_rxq: u16,
    /// Transmit queues the device has.
    pub max_txq: u16,
}

/// How a port is set up at attach (the lab configures and starts ports as it attaches them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConf {
    /// Receive queues.
    pub nb_rxq: u16,
    /// Transmit queues.
    pub nb_txq: u16,
    /// Descriptors per queue.
    pub nb_desc: u16,
    /// Pool to receive into.
    pub pool: String,
    /// Spread received frames over the receive queues by RSS (DPDK's `mq_mode` RSS with its
    /// `rss_conf`); `None`: everything to queue 0.
    pub rss: Option<crate::rss::RssConf>,
}

impl Default for PortConf {
    fn default() -> PortConf {
        PortConf { nb_rxq: 1, nb_txq: 1, nb_desc: 512, pool: DEFAULT_POOL.into(), rss: None }
    }
}

/// How a handle is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Primary: stop and reset the device, free shared driver state.
    Shared,
    /// Secondary (or rollback of a local attach): only this process's handles.
    Local,
}

/// A driver's own error, carried by [`EthError::Probe`] and [`EthError::Device`]. Every driver
/// has its own error type; at this boundary it is boxed, so the chain stays (`source()`) and code
/// that knows the driver can downcast. A `String` converts too, for a driver with nothing to match.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of ports and drivers. The `Display` of each includes its cause, so `{e}` prints the
/// whole chain on one line ("net_i40e: 0000:00:05.0: admin queue get_link_status: timed out");
/// `source()` gives the cause to code that walks or matches it.
#[derive(Debug, thiserror::Error)]
pub enum EthError {
    /// A driver could not probe a device.
    #[error("{driver}: {device}: {source}")]
    Probe {
        /// Driver.
        driver: &'static str,
        /// Device name.
        device: String,
        /// What went wrong: the driver's own error (downcast it to match on it).
        #[source]
        source: Cause,
    },
    /// The operation is not supported by this driver.
    #[error("{driver}: {op} is not supported")]
    Unsupported {
        /// Driver.
        driver: &'static str,
        /// Operation.
        op: &'static str,
    },
    /// A parameter out of range.
    #[error("{what}")]
    Invalid {
        /// What was wrong, with the limit.
        what: String,
    },
    /// Device access failed.
    #[error("{driver}: device error: {source}")]
    Device {
        /// Driver.
        driver: &'static str,
        /// What went wrong: the driver's own error (downcast it to match on it).
        #[source]
        source: Cause,
    },
    /// No port with that id in this process.
    #[error("port {port} is not attached")]
    NoPort {
        /// Port id.
        port: PortId,
    },
    /// All port slots are used.
    #[error("no free port: all {max} port ids are in use")]
    NoFreePort {
        /// The limit.
        max: usize,
    },
    /// Shared memory trouble.
    #[error(transparent)]
    Mem(#[from] MemError),
}

/// A driver's per-process handle on one port.
pub trait EthDev: Send {
    /// Static and configured properties.
    fn info(&self) -> DevInfo;
    /// Link state (may query the device).
    fn link(&mut self) -> LinkStatus;
    /// Counters.
    fn stats(&mut self) -> PortStats;
    /// Resets the counters.
    fn stats_reset(&mut self) {}
    /// Promiscuous mode on or off.
    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        let _ = on;
        Err(EthError::Unsupported { driver: self.info().driver, op: "promiscuous mode" })
    }
    /// Changes the MTU.
    fn set_mtu(&mut self, mtu: u16) -> Result<(), EthError> {
        let _ = mtu;
        Err(EthError::Unsupported { driver: self.info().driver, op: "MTU change" })
    }
    /// Receives up to `pkts.len()` packets from `queue` into the empty slots at the front of
    /// `pkts`; returns how many. Never allocates, locks, logs or makes a syscall per packet.
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize;
    /// Sends packets from the front of `pkts` (taking them out of their slots); returns how many
    /// were taken. The rest stay with the caller.
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize;
    /// Whether the device went away under us (surprise removal).
    fn is_removed(&self) -> bool {
        false
    }
    /// Stops receive queue `queue` (`rte_eth_dev_rx_queue_stop`): the device stops filling it and
    /// bursts on it return nothing, in every process, until it is started again. As in DPDK,
    /// the caller sees to it that no process is inside a burst on that queue meanwhile.
    fn rx_queue_stop(&mut self, queue: u16) -> Result<(), EthError> {
        let _ = queue;
        Err(EthError::Unsupported { driver: self.info().driver, op: "queue stop" })
    }
    /// Starts a stopped receive queue again, with fresh buffers (`rte_eth_dev_rx_queue_start`).
    fn rx_queue_start(&mut self, queue: u16) -> Result<(), EthError> {
        let _ = queue;
        Err(EthError::Unsupported { driver: self.info().driver, op: "queue start" })
    }
    /// Stops transmit queue `queue`: what was in flight is dropped, bursts send nothing.
    fn tx_queue_stop(&mut self, queue: u16) -> Result<(), EthError> {
        let _ = queue;
        Err(EthError::Unsupported { driver: self.info().driver, op: "queue stop" })
    }
    /// Starts a stopped transmit queue again.
    fn tx_queue_start(&mut self, queue: u16) -> Result<(), EthError> {
        let _ = queue;
        Err(EthError::Unsupported { driver: self.info().driver, op: "queue start" })
    }
    /// Per-queue counters: receive queues, then transmit queues (empty if the driver keeps none).
    fn queue_stats(&mut self) -> (Vec<QueueStats>, Vec<QueueStats>) {
        (Vec::new(), Vec::new())
    }
    /// An eventfd this process's link-status interrupt signals (its own copy: the caller owns
    /// it) and whether the link was up when the interrupt was set up; `None` if the device gives
    /// this process none. Reading [`EthDev::link`] after it fires tells what changed since.
    fn link_event_fd(&mut self) -> Option<(std::os::fd::OwnedFd, bool)> {
        None
    }
    /// Acknowledges the link-status interrupt after [`EthDev::link_event_fd`] fired (clears
    /// the cause and arms it again), so the device signals the next change. Called before
    /// [`EthDev::link`] is read: a change after the read then signals again, where an
    /// acknowledgement after the read would clear a change that read did not see.
    fn link_irq_ack(&mut self) {}
    /// After [`EthDev::link_event_fd`] fired: [`EthDev::link_irq_ack`], then [`EthDev::link`]
    /// (a driver may do both in one exchange with the device).
    fn link_after_irq(&mut self) -> LinkStatus {
        self.link_irq_ack();
        self.link()
    }
    /// Arms receive queue `queue`'s interrupt (`rte_eth_dev_rx_intr_enable`) and gives an
    /// eventfd it signals when the queue receives, so the application can sleep on it instead
    /// of polling; the interrupt stays armed until [`EthDev::rx_intr_disable`].
    fn rx_intr_enable(&mut self, queue: u16) -> Result<std::os::fd::OwnedFd, EthError> {
        let _ = queue;
        Err(EthError::Unsupported { driver: self.info().driver, op: "receive interrupts" })
    }
    /// Disarms receive queue `queue`'s interrupt (`rte_eth_dev_rx_intr_disable`).
    fn rx_intr_disable(&mut self, queue: u16) -> Result<(), EthError> {
        let _ = queue;
        Err(EthError::Unsupported { driver: self.info().driver, op: "receive interrupts" })
    }
    /// Entries of the RSS redirection table (0: no RSS).
    fn reta_size(&self) -> u16 {
        0
    }
    /// The hash types the device can take (`flow_type_rss_offloads`, [`crate::rss::hf`] bits).
    fn rss_offloads(&self) -> u64 {
        0
    }
    /// Sets the hash types and, if given, the key (`rte_eth_dev_rss_hash_update`); hash types 0
    /// turn RSS off. Works in any process (the device's registers are shared).
    fn rss_hash_update(&mut self, conf: &crate::rss::RssConf) -> Result<(), EthError> {
        let _ = conf;
        Err(EthError::Unsupported { driver: self.info().driver, op: "RSS" })
    }
    /// The hash types and key in force (`rte_eth_dev_rss_hash_conf_get`).
    fn rss_hash_conf_get(&mut self) -> Result<crate::rss::RssConf, EthError> {
        Err(EthError::Unsupported { driver: self.info().driver, op: "RSS" })
    }
    /// Sets redirection table entries, `(index, queue)` (`rte_eth_dev_rss_reta_update`, whose
    /// masks select the entries); nothing changes if one is out of range.
    fn reta_update(&mut self, entries: &[(u16, u16)]) -> Result<(), EthError> {
        let _ = entries;
        Err(EthError::Unsupported { driver: self.info().driver, op: "RSS redirection table" })
    }
    /// The whole redirection table (`rte_eth_dev_rss_reta_query`).
    fn reta_query(&mut self) -> Result<Vec<u16>, EthError> {
        Err(EthError::Unsupported { driver: self.info().driver, op: "RSS redirection table" })
    }
    /// Releases this handle (see [`Release`]).
    fn close(self: Box<Self>, how: Release);
}

/// What a driver gets to probe a device in this process.
pub struct ProbeCtx<'a> {
    /// The runtime (shared memory, IPC channel, role, options).
    pub runtime: &'a Runtime,
    /// Port id decided by the primary.
    pub port: PortId,
    /// Device name (`net_null0`, `0000:00:05.0`).
    pub name: &'a str,
    /// The devargs as given.
    pub devargs: &'a Devargs,
    /// The validated arguments.
    pub kvargs: &'a Kvargs,
    /// The PCI function, for PCI drivers.
    pub pci: Option<&'a PciDevice>,
    /// Queue and pool setup.
    pub conf: &'a PortConf,
    /// This process's ports, for a device built over others (net_bonding's members); None where
    /// a device is probed outside a lab process (a driver test).
    pub ports: Option<&'a Arc<Ports>>,
}

impl ProbeCtx<'_> {
    /// Whether this process is the primary (creates the device) or a secondary (attaches).
    pub fn is_primary(&self) -> bool {
        self.runtime.is_primary()
    }
    /// A probe error for this device.
    pub fn error(&self, driver: &'static str, cause: impl Into<Cause>) -> EthError {
        EthError::Probe { driver, device: self.name.into(), source: cause.into() }
    }
}

/// A poll-mode driver.
pub trait Driver: Send + Sync {
    /// Driver name (`net_null`, `net_ixgbe`); vdev names start with it.
    fn name(&self) -> &'static str;
    /// Bus the driver's devices are on.
    fn bus(&self) -> BusKind;
    /// Keys its devargs accept.
    fn keys(&self) -> &'static [KeySpec];
    /// PCI ids it drives (PCI drivers).
    fn pci_ids(&self) -> &'static [PciId] {
        &[]
    }
    /// Probes the device in this process.
    fn probe(&self, ctx: &ProbeCtx<'_>) -> Result<Box<dyn EthDev>, EthError>;
}

/// The drivers this process knows. Core hard-codes none: binaries register them.
#[derive(Default, Clone)]
pub struct Registry {
    drivers: Vec<Arc<dyn Driver>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }
    /// Adds a driver.
    pub fn register(&mut self, d: Arc<dyn Driver>) {
        self.drivers.push(d);
    }
    /// All drivers.
    pub fn drivers(&self) -> &[Arc<dyn Driver>] {
        &self.drivers
    }
    /// The vdev driver for a device name (longest prefix, `eth_` alias).
    pub fn vdev_driver(&self, name: &str) -> Option<&Arc<dyn Driver>> {
        let names: Vec<&str> = self.drivers.iter().filter(|d| d.bus() == BusKind::Vdev).map(|d| d.name()).collect();
        let n = crate::bus::vdev::driver_for(name, &names)?;
        self.drivers.iter().find(|d| d.name() == n)
    }
    /// The PCI driver for a vendor/device id.
    pub fn pci_driver(&self, id: PciId) -> Option<&Arc<dyn Driver>> {
        self.drivers.iter().find(|d| d.bus() == BusKind::Pci && d.pci_ids().contains(&id))
    }
}

/// State of a port slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PortState {
    /// Free.
    Unused = 0,
    /// The primary reserved the id and is attaching everywhere.
    Attaching = 1,
    /// Attached in every process.
    Attached = 2,
    /// The primary is detaching it everywhere.
    Detaching = 3,
}

impl PortState {
    fn from_u32(v: u32) -> PortState {
        match v {
            1 => PortState::Attaching,
            2 => PortState::Attached,
            3 => PortState::Detaching,
            _ => PortState::Unused,
        }
    }
}

/// One port in the shared table.
#[repr(C)]
pub struct PortSlot {
    state: AtomicU32,
    gen: AtomicU32,
    name: [u8; 64],
    driver: [u8; 32],
    devargs_len: u32,
    mtu: u16,
    nb_rxq: u16,
    nb_txq: u16,
    mac: [u8; 6],
    started: u32,
    /// Pid of the process whose request attached the port (the primary's for its own).
    owner: u32,
    devargs: [u8; 4096],
}
// Every process of a build maps this table: its layout is fixed here, not left to the compiler.
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<PortSlot>() == 4224);
#[cfg(not(loom))]
const _: () = assert!(std::mem::offset_of!(PortSlot, devargs) == 128);

/// Header of the port table.
#[repr(C)]
pub struct PortTableHdr {
    magic: u64,
    seq: AtomicU64,
    slots: [PortSlot; MAX_PORTS],
}
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<PortTableHdr>() == 16 + 4224 * MAX_PORTS);
#[cfg(not(loom))]
const _: () = assert!(std::mem::offset_of!(PortTableHdr, seq) == 8);
const PORTS_MAGIC: u64 = 0x504f_5254_5441_424c;

/// A snapshot of one shared port entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// Id.
    pub port: PortId,
    /// State.
    pub state: PortState,
    /// Generation: changes at every attach of this id.
    pub gen: u32,
    /// Device name.
    pub name: String,
    /// Driver.
    pub driver: String,
    /// Devargs as attached (canonical form).
    pub devargs: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u16,
    /// Receive queues.
    pub nb_rxq: u16,
    /// Transmit queues.
    pub nb_txq: u16,
    /// Pid of the process whose request attached it.
    pub owner_pid: u32,
}

/// The shared port table (a view of the memzone).
pub struct PortTable {
    /// The mapping the table and its lock live in, kept mapped (None: a table of loom's tests).
    _shm: Option<Arc<Shm>>,
    hdr: std::ptr::NonNull<PortTableHdr>,
    /// The shared-memory lock every change and every snapshot of a slot is made under.
    lock: std::ptr::NonNull<crate::mem::ShmLock>,
}

// SAFETY: the table is shared memory: atomics for state and sequence, other fields written only
// by the primary under the shared lock while the slot is not Attached.
unsafe impl Send for PortTable {}
// SAFETY: as above.
unsafe impl Sync for PortTable {}

fn cstr(b: &[u8]) -> String {
    let n = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

impl PortTable {
    /// Creates (primary) or finds (secondary) the table.
    pub fn open(shm: &Arc<Shm>, primary: bool) -> Result<PortTable, EthError> {
        let len = std::mem::size_of::<PortTableHdr>() as u64;
        let z = if primary { shm.reserve(PORTS_ZONE, len, 64)? } else { shm.lookup(PORTS_ZONE)? };
        let p = shm.ptr(z.offset, len).ok_or(EthError::Invalid { what: "port table outside shared memory".into() })?;
        let t = PortTable { _shm: Some(shm.clone()), hdr: p.cast(), lock: std::ptr::NonNull::from(shm.lock()) };
        if primary {
            let _g = shm.lock().lock();
            // SAFETY: fresh zeroed zone; we hold the lock.
            unsafe { (*t.hdr.as_ptr()).magic = PORTS_MAGIC };
        } else if t.h().magic != PORTS_MAGIC {
            return Err(EthError::Invalid { what: "memzone lab_ethdev_ports holds no port table".into() });
        }
        Ok(t)
    }

    fn lock(&self) -> &crate::mem::ShmLock {
        // SAFETY: the lock lives in the mapping (or the box) the table keeps for its lifetime.
        unsafe { self.lock.as_ref() }
    }

    fn h(&self) -> &PortTableHdr {
        // SAFETY: hdr points at the table inside a mapping never unmapped.
        unsafe { self.hdr.as_ref() }
    }

    #[allow(clippy::mut_from_ref)]
    fn slot_mut(&self, i: usize, _g: &crate::mem::ShmLockGuard<'_>) -> &mut PortSlot {
        // SAFETY: i < MAX_PORTS (callers index from the table); writers hold the shared lock.
        unsafe { &mut (*self.hdr.as_ptr()).slots[i] }
    }

    /// Hotplug sequence counter: odd while an operation runs.
    pub fn seq(&self) -> u64 {
        self.h().seq.load(Ordering::Acquire)
    }

    /// Marks the start (odd) or end (even) of a hotplug operation. Primary only.
    pub fn bump_seq(&self) {
        self.h().seq.fetch_add(1, Ordering::AcqRel);
    }

    /// A snapshot of slot `i`.
    pub fn entry(&self, i: usize) -> Option<PortEntry> {
        let s = self.h().slots.get(i)?;
        let _g = self.lock().lock();
        let state = PortState::from_u32(s.state.load(Ordering::Acquire));
        if state == PortState::Unused {
            return None;
        }
        let dl = (s.devargs_len as usize).min(s.devargs.len());
        Some(PortEntry {
            port: PortId(i as u16),
            state,
            gen: s.gen.load(Ordering::Relaxed),
            name: cstr(&s.name),
            driver: cstr(&s.driver),
            devargs: String::from_utf8_lossy(&s.devargs[..dl]).into_owned(),
            mac: s.mac,
            mtu: s.mtu,
            nb_rxq: s.nb_rxq,
            nb_txq: s.nb_txq,
            owner_pid: s.owner,
        })
    }

    /// Every used slot, in id order.
    pub fn entries(&self) -> Vec<PortEntry> {
        (0..MAX_PORTS).filter_map(|i| self.entry(i)).collect()
    }

    /// The slot holding device `name`, if any.
    pub fn find(&self, name: &str) -> Option<PortEntry> {
        self.entries().into_iter().find(|e| e.name == name)
    }

    /// Reserves the first free id for `name` in state Attaching. Primary only.
    pub fn allocate(&self, name: &str, driver: &str, devargs: &str, owner_pid: u32) -> Result<PortId, EthError> {
        if name.len() > NAME_MAX || devargs.len() > 4096 {
            return Err(EthError::Invalid { what: format!("device name {name:?} over {NAME_MAX} bytes") });
        }
        let g = self.lock().lock();
        let i = (0..MAX_PORTS)
            .find(|i| self.h().slots[*i].state.load(Ordering::Acquire) == PortState::Unused as u32)
            .ok_or(EthError::NoFreePort { max: MAX_PORTS })?;
        let s = self.slot_mut(i, &g);
        s.name = [0; 64];
        s.name[..name.len()].copy_from_slice(name.as_bytes());
        s.driver = [0; 32];
        let d = &driver.as_bytes()[..driver.len().min(31)];
        s.driver[..d.len()].copy_from_slice(d);
        s.devargs[..devargs.len()].copy_from_slice(devargs.as_bytes());
        s.devargs_len = devargs.len() as u32;
        s.mac = [0; 6];
        s.mtu = 0;
        s.nb_rxq = 0;
        s.nb_txq = 0;
        s.started = 0;
        s.owner = owner_pid;
        s.gen.fetch_add(1, Ordering::Relaxed);
        s.state.store(PortState::Attaching as u32, Ordering::Release);
        Ok(PortId(i as u16))
    }

    /// Records what the driver reported at probe. Primary only.
    pub fn set_info(&self, port: PortId, info: &DevInfo) {
        let g = self.lock().lock();
        if let Some(i) = Some(port.0 as usize).filter(|i| *i < MAX_PORTS) {
            let s = self.slot_mut(i, &g);
            s.mac = info.mac;
            s.mtu = info.mtu;
            s.nb_rxq = info.nb_rxq;
            s.nb_txq = info.nb_txq;
            s.started = 1;
        }
    }

    /// Moves a slot to `state` (Unused clears it). Primary only.
    pub fn set_state(&self, port: PortId, state: PortState) {
        let g = self.lock().lock();
        if (port.0 as usize) < MAX_PORTS {
            let s = self.slot_mut(port.0 as usize, &g);
            if state == PortState::Unused {
                s.name = [0; 64];
                s.devargs_len = 0;
            }
            s.state.store(state as u32, Ordering::Release);
        }
    }
}

/// Port events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEvent {
    /// A port appeared in this process.
    New,
    /// A port was removed from this process.
    Destroy,
    /// The link came up (DPDK's `RTE_ETH_EVENT_INTR_LSC`, the link then up), seen through the
    /// device's link-status interrupt in every process that holds the port.
    LinkUp,
    /// The link went down (`RTE_ETH_EVENT_INTR_LSC`, the link then down).
    LinkDown,
    /// The device went away under the port (`RTE_ETH_EVENT_INTR_RMV`), fired before the port's
    /// DESTROY in every process.
    Removed,
}

impl std::fmt::Display for PortEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortEvent::New => "new",
            PortEvent::Destroy => "destroy",
            PortEvent::LinkUp => "link up",
            PortEvent::LinkDown => "link down",
            PortEvent::Removed => "removed",
        })
    }
}

type EventCb = Arc<dyn Fn(PortId, PortEvent) + Send + Sync>;

/// This process's handle on one port.
pub struct LocalPort {
    /// Id.
    pub port: PortId,
    /// Generation of the slot it was attached as.
    pub gen: u32,
    /// Device name.
    pub name: String,
    /// The driver's handle.
    pub dev: Box<dyn EthDev>,
    /// Lock count (`lock`/`unlock`): a locked port vetoes detach.
    pub locks: u32,
}

/// This process's ports: one slot per id, each behind its own mutex (never shared with peers).
pub struct Ports {
    /// parking_lot's mutex: eventually fair, so a control-path waiter (a hotplug handler,
    /// telemetry) gets a port that a busy loop re-locks burst after burst (std's may starve it).
    slots: Vec<parking_lot::Mutex<Option<LocalPort>>>,
    callbacks: Mutex<Vec<EventCb>>,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports {
            slots: (0..MAX_PORTS).map(|_| parking_lot::Mutex::new(None)).collect(),
            callbacks: Mutex::new(Vec::new()),
        }
    }
}

impl Ports {
    /// Locks one port's slot.
    pub fn slot(&self, port: PortId) -> Option<parking_lot::MutexGuard<'_, Option<LocalPort>>> {
        self.slots.get(port.0 as usize).map(|m| m.lock())
    }

    /// Locks one port's slot, waiting at most `wait`: for control-path readers (telemetry) that
    /// must not hang behind a caller holding the port for a long burst loop. `Err` says why
    /// ("no such port id", "port busy").
    pub fn slot_within(
        &self,
        port: PortId,
        wait: Duration,
    ) -> Result<parking_lot::MutexGuard<'_, Option<LocalPort>>, &'static str> {
        let m = self.slots.get(port.0 as usize).ok_or("no such port id")?;
        m.try_lock_for(wait).ok_or("port busy")
    }

    /// Installs a handle and fires NEW.
    pub fn insert(&self, lp: LocalPort) {
        let port = lp.port;
        if let Some(mut s) = self.slot(port) {
            if let Some(old) = s.replace(lp) {
                tracing::warn!(port = %port, "replacing a stale local port handle");
                old.dev.close(Release::Local);
            }
        }
        self.fire(port, PortEvent::New);
    }

    /// Removes the handle (returning it) and fires DESTROY, after RMV if the device went away.
    pub fn take(&self, port: PortId) -> Option<LocalPort> {
        let lp = self.slot(port)?.take();
        if let Some(l) = &lp {
            if l.dev.is_removed() {
                self.fire(port, PortEvent::Removed);
            }
            self.fire(port, PortEvent::Destroy);
        }
        lp
    }

    /// Ids with a local handle, in order.
    pub fn ids(&self) -> Vec<PortId> {
        (0..MAX_PORTS as u16).map(PortId).filter(|p| self.slot(*p).is_some_and(|s| s.is_some())).collect()
    }

    /// Registers an event callback (called from whichever thread changes the port).
    pub fn on_event(&self, cb: impl Fn(PortId, PortEvent) + Send + Sync + 'static) {
        self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::new(cb));
    }

    pub(crate) fn fire(&self, port: PortId, ev: PortEvent) {
        let cbs: Vec<EventCb> = self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for cb in cbs {
            cb(port, ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_held_elsewhere_is_busy_within_the_wait_and_free_after() {
        let ports = Arc::new(Ports::default());
        let (held, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                let _g = ports.slot(PortId(3)).unwrap();
                held.wait();
                release.wait();
            });
            held.wait();
            assert_eq!(ports.slot_within(PortId(3), Duration::from_millis(20)).err(), Some("port busy"));
            assert!(ports.slot_within(PortId(4), Duration::ZERO).is_ok(), "another port is not held");
            release.wait();
        });
        assert!(ports.slot_within(PortId(3), Duration::from_millis(20)).is_ok());
        assert_eq!(ports.slot_within(PortId(MAX_PORTS as u16), Duration::ZERO).err(), Some("no such port id"));
    }
}

/// loom over the port table as a late secondary reads it while the primary runs an attach and a
/// detach: a snapshot taken between two equal, even readings of the sequence counter shows the
/// port whole and attached, or not at all, never half-made. `ci/run.sh` runs it
/// (`RUSTFLAGS="--cfg loom" cargo test -p lab-core --release --lib loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::mem::ShmLock;

    /// A table and its lock on the heap (loom's atomics cannot live in a zeroed file).
    struct HeapTable {
        _hdr: Box<PortTableHdr>,
        _lock: Box<ShmLock>,
        t: PortTable,
    }

    // SAFETY: the table points into the boxes it travels with; PortTable is Send + Sync.
    unsafe impl Send for HeapTable {}
    // SAFETY: as above.
    unsafe impl Sync for HeapTable {}

    fn heap() -> HeapTable {
        let slot = || PortSlot {
            state: AtomicU32::new(0),
            gen: AtomicU32::new(0),
            name: [0; 64],
            driver: [0; 32],
            devargs_len: 0,
            mtu: 0,
            nb_rxq: 0,
            nb_txq: 0,
            mac: [0; 6],
            started: 0,
            owner: 0,
            devargs: [0; 4096],
        };
        let mut hdr = Box::new(PortTableHdr {
            magic: PORTS_MAGIC,
            seq: AtomicU64::new(0),
            slots: std::array::from_fn(|_| slot()),
        });
        let lock = Box::new(ShmLock::new());
        let t =
            PortTable { _shm: None, hdr: std::ptr::NonNull::from(&mut *hdr), lock: std::ptr::NonNull::from(&*lock) };
        HeapTable { _hdr: hdr, _lock: lock, t }
    }

    #[test]
    fn loom_a_late_secondarys_stable_snapshot_is_never_half_an_operation() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.check(|| {
            // 135 KB of slots, built on a thread with the stack for them.
            let built = loom::thread::Builder::new().stack_size(8 << 20).spawn(heap).unwrap();
            let h = loom::sync::Arc::new(built.join().unwrap());
            let primary = {
                let h = h.clone();
                loom::thread::spawn(move || {
                    let t = &h.t;
                    t.bump_seq();
                    let p = t.allocate("net_null0", "net_null", "net_null0,size=64", 1).unwrap();
                    t.set_state(p, PortState::Attached);
                    t.bump_seq();
                    t.bump_seq();
                    t.set_state(p, PortState::Detaching);
                    t.set_state(p, PortState::Unused);
                    t.bump_seq();
                })
            };
            let mut spins = 0;
            for _ in 0..3 {
                let s1 = h.t.seq();
                if s1 % 2 == 1 {
                    crate::sync::backoff(&mut spins);
                    continue;
                }
                // What `entries` reads, for the slots this operation can touch (all 32 take loom
                // minutes, not a second).
                let e: Vec<PortEntry> = (0..2).filter_map(|i| h.t.entry(i)).collect();
                if h.t.seq() != s1 {
                    continue;
                }
                match e.as_slice() {
                    [] => {}
                    [x] => {
                        assert_eq!(x.state, PortState::Attached, "{x:?}");
                        assert_eq!((x.name.as_str(), x.devargs.as_str()), ("net_null0", "net_null0,size=64"));
                        assert_eq!(x.gen, 1);
                    }
                    more => panic!("{more:?}"),
                }
                break;
            }
            primary.join().unwrap();
            assert!(h.t.entries().is_empty());
        });
    }
}
