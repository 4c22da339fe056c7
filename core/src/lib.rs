//! lab-core: the runtime every hotplug-lab process links.
//!
//! (The crate essay is written in full once the layers settle; see `../shared/ARCHITECTURE.md`.)

#![deny(missing_docs)]

pub mod bus;
pub mod devargs;
pub mod ethdev;
pub mod hotplug;
pub mod ipc;
pub mod mbuf;
pub mod mem;
pub mod options;
pub mod ring;
pub mod runtime;
pub mod sys;

pub use lab_vfio as vfio;
