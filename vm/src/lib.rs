//! lab-vm: the VM tier. A Debian kernel boots under QEMU (KVM when `/dev/kvm` is usable, TCG
//! otherwise) on a q35 machine with an Intel vIOMMU and hot-pluggable PCIe root ports; an
//! initramfs carries busybox, the kernel's VFIO modules and our guest suite (`lab-vm-guest`),
//! which binds QEMU's emulated functions to vfio-pci and drives them through our kernel VFIO
//! transport: the path real NICs take, against a real kernel instead of its fake.
//!
//! The guest speaks on the serial console, one line per event, each starting `LAB-VM `:
//! `check ok NAME MS`, `check fail NAME: WHY`, `ask QMP-JSON` (the host runs the QMP command,
//! e.g. a `device_del` for a hot-unplug, and answers nothing: the guest sees the effect), and
//! `rc N` before it powers off. [`run_suite`] is the host side.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cpio;
pub mod image;
pub mod kernel;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use image::Image;
pub use kernel::Kernel;
pub use qemu::{Accel, Vm, VmConfig};

/// Something the VM tier needs that this machine does not have, in words for a skip line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Missing(pub String);

/// Errors of building or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A prerequisite is missing.
    #[error("missing {0}")]
    Missing(#[from] Missing),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Something the image builder cannot carry.
    #[error("{0}")]
    Unsupported(String),
    /// QEMU refused a QMP command.
    #[error("QMP {command}: {error}")]
    Qmp {
        /// The command.
        command: String,
        /// QEMU's error object.
        error: String,
    },
}

impl VmError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> VmError {
        VmError::Io { path: path.to_path_buf(), source }
    }
}

impl From<std::io::Error> for VmError {
    fn from(source: std::io::Error) -> Self {
        VmError::Io { path: PathBuf::from("initramfs"), source }
    }
}

/// What the guest suite reported.
#[derive(Debug, Default)]
pub struct SuiteResult {
    /// Checks that passed, with their time in ms.
    pub passed: Vec<(String, u64)>,
    /// Checks that failed, with why.
    pub failed: Vec<(String, String)>,
    /// Checks that could not run here, with why.
    pub skipped: Vec<(String, String)>,
    /// The suite's exit code (`None`: the guest never said, it hung or crashed).
    pub rc: Option<i32>,
    /// From QEMU's start to the guest's `up` line.
    pub boot: Option<Duration>,
    /// From QEMU's start to its exit.
    pub total: Duration,
    /// QMP commands the guest asked for, with their outcome.
    pub asked: Vec<(String, Result<String, String>)>,
    /// The whole console.
    pub console: String,
    /// How the guest ran (after any fallback).
    pub accel: Option<Accel>,
    /// Why KVM was given up for TCG, when it was.
    pub fallback: Option<String>,
    /// The guest's `note` lines (measurements).
    pub notes: Vec<String>,
}

/// How long a KVM guest may take to print its first kernel line before KVM is given up (a
/// nested KVM that opens but cannot run a guest hangs in the boot stub).
const KVM_FIRST_LINE: Duration = Duration::from_secs(15);

impl SuiteResult {
    /// The checks as one JUnit `<testsuite>` (what CI dashboards read).
    pub fn junit(&self, name: &str) -> String {
        fn esc(s: &str) -> String {
            s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
        }
        let n = self.passed.len() + self.failed.len() + self.skipped.len();
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"{}\" tests=\"{n}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
            esc(name),
            self.failed.len(),
            self.skipped.len(),
            self.total.as_secs_f64()
        );
        for (c, ms) in &self.passed {
            x += &format!("  <testcase name=\"{}\" time=\"{:.3}\"/>\n", esc(c), *ms as f64 / 1000.0);
        }
        for (c, why) in &self.failed {
            x += &format!("  <testcase name=\"{}\"><failure message=\"{}\"/></testcase>\n", esc(c), esc(why));
        }
        for (c, why) in &self.skipped {
            x += &format!("  <testcase name=\"{}\"><skipped message=\"{}\"/></testcase>\n", esc(c), esc(why));
        }
        x + "</testsuite>\n"
    }
}

/// Boots `cfg`, serves the guest's `ask` lines over QMP, and collects its checks, waiting at
/// most `within` for the guest to power off.
/// With KVM, a guest that prints no kernel line within 15 s is killed and booted again under TCG
/// (the result says so).
pub fn run_suite(qemu: &Path, accel: Accel, cfg: &VmConfig, within: Duration) -> Result<SuiteResult, VmError> {
    run_suite_with_host(qemu, accel, cfg, within, &mut |a: &str| Err(format!("no host hook for {a:?}")))
}

/// As [`run_suite`], with `host` answering the guest's `ask host ...` lines (work on the host
/// side of a wire: capture or inject frames on a TAP device QEMU uses); its outcome goes to
/// [`SuiteResult::asked`] like a QMP command's.
pub fn run_suite_with_host(
    qemu: &Path,
    accel: Accel,
    cfg: &VmConfig,
    within: Duration,
    host: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<SuiteResult, VmError> {
    let mut r = SuiteResult::default();
    let mut vm = Vm::boot(qemu, accel, cfg)?;
    let mut accel = accel;
    if accel == Accel::Kvm {
        let t = Instant::now();
        let mut kernel_up = false;
        while let Some(line) = vm.next_line(KVM_FIRST_LINE.saturating_sub(t.elapsed())) {
            if line.contains("Linux version") || line.contains("LAB-VM ") {
                kernel_up = true;
                break;
            }
        }
        if !kernel_up {
            r.fallback = Some(format!(
                "KVM did not boot the guest within {KVM_FIRST_LINE:?} (last console line: {:?}); rebooted under TCG",
                vm.console().lines().last().unwrap_or("")
            ));
            drop(vm);
            accel = Accel::Tcg;
            vm = Vm::boot(qemu, accel, cfg)?;
        }
    }
    r.accel = Some(accel);
    let deadline = Instant::now() + within;
    while let Some(line) = vm.next_line(deadline.saturating_duration_since(Instant::now())) {
        let Some(ev) = line.split_once("LAB-VM ").map(|(_, e)| e.to_string()) else { continue };
        if ev.starts_with("up ") {
            r.boot = Some(vm.uptime());
        } else if let Some(rest) = ev.strip_prefix("check ok ") {
            let (name, ms) = rest.rsplit_once(' ').unwrap_or((rest, "0"));
            r.passed.push((name.to_string(), ms.parse().unwrap_or(0)));
        } else if let Some(rest) = ev.strip_prefix("check fail ") {
            let (name, why) = rest.split_once(": ").unwrap_or((rest, ""));
            r.failed.push((name.to_string(), why.to_string()));
        } else if let Some(rest) = ev.strip_prefix("check skip ") {
            let (name, why) = rest.split_once(": ").unwrap_or((rest, ""));
            r.skipped.push((name.to_string(), why.to_string()));
        } else if let Some(h) = ev.strip_prefix("ask host ") {
            let outcome = host(h);
            r.asked.push((format!("host {h}"), outcome));
        } else if let Some(q) = ev.strip_prefix("ask ") {
            let outcome = match serde_json::from_str::<serde_json::Value>(q) {
                Ok(v) => {
                    let exec = v["execute"].as_str().unwrap_or_default().to_string();
                    vm.qmp(&exec, v["arguments"].clone()).map(|v| v.to_string()).map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("not JSON: {e}")),
            };
            r.asked.push((q.to_string(), outcome));
        } else if let Some(n) = ev.strip_prefix("note ") {
            r.notes.push(n.to_string());
        } else if let Some(rc) = ev.strip_prefix("rc ") {
            r.rc = rc.trim().parse().ok();
        }
    }
    vm.wait(Duration::from_secs(10));
    r.total = vm.uptime();
    r.console = vm.console();
    Ok(r)
}
