//! The PCI bus.
