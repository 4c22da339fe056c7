//! lab-emu: the emulated hardware of hotplug-lab.
//!
//! `lab-nic` serves emulated PCI functions (an Intel 82599 today) over vfio-user, one unix socket per
//! function, to a primary and its secondaries at once, and builds the fake sysfs tree the lab's PCI bus
//! scans. This crate is the hardware: it shares no code or constants with the driver side.
//!
//! Layers, in the order data flows:
//! 1. [`sysfs`] writes `<root>/<BDF>/` (ids, `resource`, `driver`/`iommu_group` links) and binds the
//!    function's `vfio-user.sock` there.
//! 2. [`server`] owns the vfio-user side: a gatekeeper accepts client connections (refusing those beyond
//!    the pool), relays each to one of a pool of threads running the `vfio_user` crate's `Server::run`
//!    with a per-connection backend (region accesses, DMA_MAP bookkeeping, eventfds), and a device
//!    thread that polls the model.
//! 3. [`model`] holds the devices ([`model::DeviceModel`]): config space, registers, rings. Models see
//!    DMA only through [`dma::Dma`] and the wire only through [`wire::Wire`].
//! 4. [`control`] is the text control socket (link up/down, unplug, stats, faults).
//!
//! Start reading at [`server::Function`], then [`model::ixgbe`].
#![deny(missing_docs)]

pub mod control;
pub mod dma;
pub mod fault;
pub mod mem;
pub mod model;
pub mod server;
pub mod sysfs;
pub mod wire;
