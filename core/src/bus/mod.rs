//! Buses: `pci` (sysfs scan) and `vdev` (virtual devices from devargs).
pub mod pci;
pub mod vdev;
