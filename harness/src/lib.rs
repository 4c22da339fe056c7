//! lab-harness: the `hotplug_mp` sample app and the tools that drive lab processes.
//!
//! `proc` drives `hotplug_mp` processes over stdin/stdout; the scenario runner builds on it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod demo;
pub mod proc;
pub mod realnic;
pub mod report;
pub mod runner;
pub mod scenario;
