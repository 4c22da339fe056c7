//! lab-emu: the emulated hardware of hotplug-lab.
//!
//! `lab-nic` serves emulated PCI functions (Intel 82599 `model=ixgbe` and X710 `model=i40e`) over
//! vfio-user, one unix socket per function, to a primary and its secondaries at once, and builds the fake sysfs tree the lab's PCI bus
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
//!
//! # Memory shared with drivers
//!
//! Registers in mmapped pages and descriptor words are read and written by another process while
//! the device runs, so [`mem::Mapping`] accesses them as single aligned atomic words, never byte by
//! byte: doorbells are Acquire loads ([`mem::Mapping::read32`]), RDH/TDH-style registers Release
//! stores ([`mem::Mapping::write32`]). A model publishes a descriptor write-back through
//! [`dma::Dma`]: data, then the other fields, then the word carrying the done bit with
//! [`dma::Dma::publish_u32`] (one Release store, the last store to that descriptor).
//! The data path allocates nothing per frame: frames go from a TX buffer into the wire's buffer and
//! from there into an RX buffer ([`wire::Wire::transmit_with`], [`wire::Wire::receive_with`]).
//!
//! # How a driver uses an emulated function
//!
//! The bullets below describe the 82599 model; [`model::i40e`]'s docs give the X710's regions,
//! queue pages and admin queue.
//!
//! - Find `<sysfs-root>/<BDF>/vfio-user.sock` and connect (vfio-user VERSION, GET_INFO, region info);
//!   at most `--pool` (default 8) processes at once; one more is refused (connection closed at once).
//! - Regions: 0 = BAR0 (82599: 512 KiB), 4 = BAR4 (MSI-X table at 0, PBA at 0x2000), 7 = config space
//!   (4 KiB, capability list PM -> MSI-X -> PCIe). Trapped accesses must be 4-byte aligned multiples of
//!   4 bytes in BAR0; anything else reads all-ones and is recorded as a fault, never an error reply.
//! - BAR0 carries the sparse-mmap capability and one fd: mmap `fd` at `region.offset + area.offset` for
//!   each area (82599: 0x1000+0x1000 RX queues 0-63, 0x6000+0x2000 TX queues 0-127). Queue registers
//!   (RDBAL..RXDCTL, TDBAL..TXDCTL, RDT/TDT doorbells) are written there; the device latches a ring on
//!   the ENABLE 0->1 edge and writes RDH/TDH back into the page. Per-queue counters in those pages
//!   stay 0; use the trapped port counters (GPRC, GORCL/H, ...).
//! - DMA: DMA_MAP an fd (e.g. the runtime's shared memory file) with offset, IOVA and size; descriptors
//!   and buffers use those IOVAs. Maps belong to the connection that made them and vanish when it
//!   closes; the device uses the union of all live connections' maps. DMA outside them is a fault.
//! - Interrupts: SET_IRQS on index 2 (MSI-X, 64 vectors) with DATA_EVENTFD|ACTION_TRIGGER, then
//!   enable MSI-X in config space, unmask the vector in the BAR4 table, map causes with IVAR and EIMS.
//! - Set SRRCTL.DESCTYPE to advanced one-buffer (001) for advanced RX write-back; DESCTYPE 0 (the
//!   reset value) gets the legacy write-back.
#![deny(missing_docs)]

pub mod control;
pub mod dma;
pub mod fault;
pub mod mem;
pub mod model;
pub mod server;
pub mod sysfs;
pub mod wire;
