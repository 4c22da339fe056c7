//! Device models: the hardware behind a vfio-user function.
//!
//! A model implements [`DeviceModel`]: PCI config space, trapped BAR accesses, the BAR memory shared
//! with clients (sparse-mmapped doorbell pages), and `poll`, where the device thread moves packets by
//! DMA. The server framework ([`crate::server`]) owns sockets, DMA maps and interrupts; models never
//! see a socket, so they are unit-tested with [`crate::dma::FakeDma`].
//!
//! Adding a model: a folder `model/<name>/`, and one arm in [`create`].

pub(crate) mod frame;
pub mod i40e;
pub mod ixgbe;
pub(crate) mod msix;
pub mod pci;
pub mod rss;
pub mod snapshot;

use std::sync::Arc;

use crate::dma::Dma;
use crate::fault::FaultLog;
use crate::mem::Mapping;
use crate::wire::Wire;

pub use pci::{BarDef, PciIds};

/// Model errors (construction).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No model with this name.
    #[error("unknown model \"{name}\" (known: {known})")]
    UnknownModel {
        /// Requested name.
        name: String,
        /// Known names, comma separated.
        known: &'static str,
    },
    /// BAR memory could not be created.
    #[error(transparent)]
    Mem(#[from] crate::mem::MemError),
}

/// Names accepted by [`create`].
pub const KNOWN_MODELS: &str = "ixgbe,i40e";

/// What a model is built from.
pub struct ModelConfig {
    /// PCI address, for logs and memfd names.
    pub bdf: String,
    /// PCI function number (the 82599 reports it as its LAN id).
    pub function: u8,
    /// Permanent MAC address ("EEPROM" contents).
    pub mac: [u8; 6],
    /// Where frames go.
    pub wire: Box<dyn Wire>,
}

/// Port counters as the control socket reports them (lifetime totals, never cleared by reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames delivered to the host.
    pub rx_packets: u64,
    /// Octets delivered (without FCS).
    pub rx_bytes: u64,
    /// Frames put on the wire.
    pub tx_packets: u64,
    /// Octets transmitted (without FCS).
    pub tx_bytes: u64,
    /// Frames dropped for lack of receive descriptors.
    pub rx_missed: u64,
    /// Frames dropped by the receive filters or while reception was off.
    pub rx_filtered: u64,
}

/// The hardware behind one emulated PCI function.
pub trait DeviceModel: Send {
    /// Model name (`ixgbe`).
    fn name(&self) -> &'static str;
    /// Identity.
    fn ids(&self) -> PciIds;
    /// BAR layout (size, kind, fake address) for the region table and sysfs `resource`.
    fn bars(&self) -> [BarDef; 6];
    /// Size of the config region.
    fn config_size(&self) -> u64;
    /// Config space read (out of range: all-ones, recorded).
    fn config_read(&mut self, off: u64, data: &mut [u8]);
    /// Config space write (out of range or read-only: ignored).
    fn config_write(&mut self, off: u64, data: &[u8]);
    /// Trapped BAR read. Never fails: unknown or out-of-range reads return all-ones and are recorded.
    fn bar_read(&mut self, bar: u32, off: u64, data: &mut [u8]);
    /// Trapped BAR write. Never fails: unknown writes are kept or ignored, and recorded.
    fn bar_write(&mut self, bar: u32, off: u64, data: &[u8]);
    /// Areas of `bar` (offset, size) that clients mmap from [`DeviceModel::bar_memory`].
    fn sparse_areas(&self, bar: u32) -> Vec<(u64, u64)>;
    /// The memfd-backed memory of `bar`, when it has sparse areas.
    fn bar_memory(&self, bar: u32) -> Option<Arc<Mapping>>;
    /// Number of MSI-X vectors.
    fn msix_count(&self) -> u32;
    /// Device work: doorbells, descriptor rings, the wire. Returns true if it did anything.
    fn poll(&mut self, dma: &mut dyn Dma) -> bool;
    /// MSI-X vectors to signal (bit n = vector n), cleared by the call.
    /// With MSI-X off, nothing: the function signals through [`DeviceModel::intx_asserted`].
    fn take_irqs(&mut self) -> u64;
    /// True while the function asserts its INTx line (PCI legacy interrupt, level-sensitive): an
    /// enabled cause is pending, MSI-X is off and the Command register's Interrupt Disable is
    /// clear. It stays asserted until the driver clears the cause, as a wire-OR'ed line does.
    fn intx_asserted(&self) -> bool;
    /// The device's state for migration (the vfio-user STOP_COPY data), taken while the device
    /// is stopped; `None` if this model cannot be migrated.
    fn save(&self) -> Option<Vec<u8>> {
        None
    }
    /// Whether [`DeviceModel::save`] gives a state (the model supports migration).
    fn can_migrate(&self) -> bool {
        false
    }
    /// Loads a state [`DeviceModel::save`] gave on a function of the same model (vfio-user
    /// RESUMING to STOP). On an error, which names what was wrong, nothing changed.
    fn load(&mut self, _state: &[u8]) -> Result<(), snapshot::SnapshotError> {
        Err(snapshot::SnapshotError::Unsupported(self.name()))
    }
    /// Function-level reset (vfio-user DEVICE_RESET): registers, rings and queue pages to defaults.
    fn reset(&mut self);
    /// Sets the cable state (control socket `link up|down`).
    fn link_set(&mut self, up: bool);
    /// Lifetime counters.
    fn stats(&self) -> PortStats;
    /// Recorded faults.
    fn faults(&self) -> &FaultLog;
    /// Recorded faults, for the framework to add access faults.
    fn faults_mut(&mut self) -> &mut FaultLog;
}

/// Builds the model called `name`.
pub fn create(name: &str, cfg: ModelConfig) -> Result<Box<dyn DeviceModel>, ModelError> {
    match name {
        "ixgbe" => Ok(Box::new(ixgbe::Ixgbe::new(cfg)?)),
        "i40e" => Ok(Box::new(i40e::I40e::new(cfg)?)),
        other => Err(ModelError::UnknownModel { name: other.to_owned(), known: KNOWN_MODELS }),
    }
}
