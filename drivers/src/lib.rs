//! lab-drivers: the poll-mode drivers of hotplug-lab.
//!
//! Each driver implements `lab_core::ethdev::Driver` (probe) and `EthDev` (its per-process port
//! handle). Start reading at `null.rs`, the smallest one. [`register_all`] adds every driver to a
//! registry; lab-core itself knows none of them.

#![deny(missing_docs)]
// Kernel calls live in `sys`; the other modules that keep `unsafe` hold memory views only
// (descriptor rings, shared structs, PACKET_MMAP frames) and say so with `allow`.
#![deny(unsafe_code)]

use std::sync::Arc;

use lab_core::ethdev::Registry;

#[allow(unsafe_code)]
pub mod af_packet;
pub mod bonding;
pub mod error;
#[allow(unsafe_code)]
pub mod i40e;
#[allow(unsafe_code)]
pub mod ixgbe;
pub mod null;
pub mod pcap;
#[allow(unsafe_code)]
mod pci;
#[allow(unsafe_code)]
pub mod ring;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod tap;
#[allow(unsafe_code)]
pub mod virtio;

/// Registers every driver of this crate.
pub fn register_all(reg: &mut Registry) {
    reg.register(Arc::new(null::NullDriver));
    reg.register(Arc::new(ixgbe::IxgbeDriver));
    reg.register(Arc::new(i40e::I40eDriver));
    reg.register(Arc::new(ring::RingDriver));
    reg.register(Arc::new(tap::TapDriver));
    reg.register(Arc::new(af_packet::AfPacketDriver));
    reg.register(Arc::new(pcap::PcapDriver));
    reg.register(Arc::new(virtio::VirtioDriver));
    reg.register(Arc::new(virtio::user::VirtioUserDriver));
    reg.register(Arc::new(virtio::vhost::VhostDriver));
    reg.register(Arc::new(bonding::BondingDriver));
}

/// A registry with every driver of this crate.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r);
    r
}
