//! Buses: where devices come from.
//!
//! - [`pci`]: physical (or emulated) PCI functions, found by scanning sysfs (`$SYSFS_PCI_DEVICES`),
//!   addressed by [`PciAddr`] and filtered by `-a`/`-b`/`--no-pci` through [`pci::PciFilter`].
//! - [`vdev`]: virtual devices named by `--vdev` devargs, matched to their driver by name prefix.
//! - [`uevent`]: the kernel's PCI device events (add, bind, unbind, remove) over netlink.
//!
//! Which bus a devargs string targets is decided in [`crate::devargs`]; the words both use
//! ([`BusKind`], [`PciAddr`], [`PciId`]) live in [`crate::addr`].

#![forbid(unsafe_code)]

pub mod pci;
pub mod uevent;
pub mod vdev;

pub use crate::addr::{BusKind, PciAddr, PciId};
pub use pci::PciDevice;
