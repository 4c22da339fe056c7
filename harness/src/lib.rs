//! lab-harness: the `hotplug_mp` sample app and `lab`, the scenario runner.
//!
//! Layers, bottom up:
//! * [`proc`]: drives one `hotplug_mp` process over stdin/stdout (answers split at the prompt).
//! * [`scenario`]: the TOML scenario format, parsed and checked before anything starts.
//! * [`runner`]: starts a lab (lab-nic, a primary, secondaries) with its own prefix and temp dirs,
//!   runs the steps, checks after every step that every live process lists the same ports, and
//!   tears everything down (Ctrl-C included); also the fault sweep.
//! * [`report`]: progress line, table, JUnit and JSON.
//! * [`demo`]: `lab demo`; [`realnic`]: `lab run --real` on functions bound to vfio-pci.
//! * [`traffic`]: the test frames of `send`/`recv`.
//! * [`status`]: `lab status`, every process of a running lab read over telemetry.
//! * [`lab`]: [`Lab`], the test API: a lab for your own tests and your own binaries.
//!
//! Start reading at `runner`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod demo;
pub mod lab;
pub mod proc;
pub mod realnic;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod soak;
pub mod status;
pub mod traffic;

pub use lab::{Lab, LabBuilder, LabError};
