//! lab-vfio: device transports for hotplug-lab's poll-mode drivers.
//!
//! A driver talks to its PCI function through one interface, [`DeviceIo`], whatever carries
//! it: the kernel's VFIO (a real NIC bound to vfio-pci) or vfio-user (an emulated NIC in a
//! `lab-nic` process, reached over a unix socket). The layers, in the order data flows from a
//! driver down to the device:
//!
//! 1. [`Bar`] (`bar.rs`): the one MMIO accessor. `read32`/`write32`/`set_bits`/`clear_bits`/
//!    `poll_until`. An offset inside an mmapped sparse area (doorbell pages) is a volatile access
//!    on shared memory; any other offset is trapped into `region_read`/`region_write`. A read
//!    from a device that has gone away returns `0xFFFF_FFFF`, as on PCI.
//! 2. [`DeviceIo`] (`device.rs`): regions, irqs, trapped region access, `map_region`, DMA
//!    map/unmap, reset, eventfd interrupts, `is_alive` for surprise-unplug detection. It
//!    stands on `sys` (mappings), never the other way: `sys` knows only the kernel ABI.
//! 3. The two backends:
//!    - [`UserDevice`] (`user.rs`): our own vfio-user client over the protocol (QEMU's
//!      `docs/interop/vfio-user.rst`), with checked replies, a deadline on every reply and a
//!      poisoned state after a desync. The message layouts it reads and writes are checked views
//!      in `proto.rs`.
//!    - [`KernelDevice`] (`kernel.rs`): container, group and device fd, in the DPDK shape: a
//!      [`VfioContext`] per process holds one container and opens each group once (devices of
//!      one group share it, and identical DMA maps are shared); secondaries adopt the primary's
//!      container and group fds. Syscalls go through the [`VfioSys`] seam (`sys.rs`), with
//!      `FakeVfio` (`fake.rs`, feature `testing`) standing in for `/dev/vfio` in tests.
//!      The same module has `MemDevice`, a `DeviceIo` over plain memory for driver unit tests.
//! 4. [`open_pci`] (`pci.rs`): picks the transport from a sysfs device directory, or says in
//!    one line why the device cannot be used.
//!
//! Where to start reading: `device.rs` for the interface, then `user.rs` for the path CI uses,
//! then `bar.rs` for what drivers see. `unsafe` lives only in `sys.rs` (mmap, ioctls, fds from
//! SCM_RIGHTS) and `bar.rs` (volatile access to mapped registers).

#![deny(missing_docs)]

mod bar;
mod device;
mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod kernel;
mod pci;
pub mod proto;
pub mod sys;
pub mod user;

pub use bar::Bar;
pub use device::{
    DeviceIo, DmaRegion, IrqInfo, RegionInfo, RegionMap, SparseArea, CONFIG_REGION_INDEX, IRQ_INFO_EVENTFD,
    MSIX_IRQ_INDEX, REGION_CAPS, REGION_MMAP, REGION_READ, REGION_WRITE,
};
pub use error::VfioError;
pub use kernel::{AdoptedFds, Container, Group, KernelDevice, VfioContext};
pub use pci::{open_pci, OpenOptions, VFIO_USER_SOCKET};
pub use sys::{RealVfio, VfioSys};
pub use user::UserDevice;
