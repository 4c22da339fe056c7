//! lab-core: the runtime every hotplug-lab process links (DPDK's EAL plus ethdev, in Rust).
//!
//! Layers, in the order a process meets them:
//!
//! 1. [`options`]: EAL-style arguments, one parser for every lab binary.
//! 2. [`runtime`]: the runtime dir, the config-file lock that makes a process primary or
//!    secondary, logging, and the two shared things below.
//! 3. [`mem`]: one shared memory file per lab, cut into named memzones; offsets, never pointers;
//!    IOVA = base + offset in every process. [`ring`] and [`mbuf`] build the lock-free ring and
//!    the packet buffer pools on it.
//! 4. [`ipc`]: the multi-process channel (named actions over unix datagram sockets, requests with
//!    replies and timeouts, descriptors passed along).
//! 5. [`addr`], [`devargs`] and [`bus`]: bus kinds and PCI addresses, device arguments with typed
//!    keys, the PCI bus (sysfs scan) and the vdev bus; [`vfio`] (the lab-vfio crate) is how a PCI device is reached.
//! 6. [`ethdev`]: the driver interface, the shared port table and this process's port handles.
//! 7. [`hotplug`]: the multi-process protocol that attaches and detaches devices everywhere.
//!
//! Start reading at `hotplug` for the protocol, or at `ipc` for the channel it stands on.
//! `sys` is the one module that talks to the kernel directly.

#![deny(missing_docs)]

pub mod addr;
pub mod bus;
pub mod devargs;
pub mod ethdev;
pub mod hotplug;
pub mod ipc;
pub mod mbuf;
pub mod mem;
pub mod options;
pub mod process;
pub mod ring;
pub mod rss;
pub mod runtime;
pub(crate) mod sync;
pub mod sys;
pub mod telemetry;

pub use lab_vfio as vfio;
