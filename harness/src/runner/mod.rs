//! Runs a scenario in a lab of its own: starts `lab-nic` and the `hotplug_mp` processes, drives
//! them step by step, checks after every step that every live process lists the same ports with
//! the same ids, and tears everything down (processes, runtime dir, shared memory file, sockets,
//! fake sysfs, TAP interfaces) however the run ends.
//!
//! Order of a lab's start: the primary (with `--vdev`s, SYSFS_PCI_DEVICES pointing at an empty
//! fake sysfs), then `lab-nic` populates the sysfs (so emulated functions appear after the primary
//! started: hot-added, and attached by the scenario's steps, not probed at start), then the
//! secondaries. Each run has its own file prefix and temporary directory, so runs go in parallel.
//!
//! In a fault case (the sweep) the scenario's own expectations are replaced by the invariant: all
//! live processes agree, and an attach or detach happened everywhere or nowhere (a failed one left
//! the state as it was before). A process that crashed on its injected fault is restarted without
//! the fault and must rejoin with the same view.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab_core::bus::pci::PciId;
use lab_core::ethdev::Registry;
use lab_core::telemetry::Client;

use crate::proc::{parse_list, AppProc, ProcError};
use crate::scenario::{process_names, Action, Expect, Scenario, Step};

/// Ports as a process lists them.
pub type View = Vec<(u16, String)>;

/// A process's name and its view, or why it has none.
type Listing = (String, Result<View, String>);

/// Errors that stop a lab from being built (as opposed to a scenario failing in it).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A binary the runner starts is missing.
    #[error("{name} not found at {path}: build it with `cargo build -p {package} --bin {name}` (same profile and target dir as lab)")]
    MissingBinary {
        /// Binary name.
        name: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Its package.
        package: &'static str,
    },
    /// Temporary directory trouble.
    #[error("cannot create the run's temporary directory: {0}")]
    TempDir(std::io::Error),
}

/// Where the binaries are and how runs are made.
#[derive(Clone)]
pub struct Env {
    /// Directory with `hotplug_mp` and `lab-nic`.
    pub bin_dir: PathBuf,
    /// Real PCI functions (bound to vfio-pci) instead of emulated ones.
    pub real: Option<Vec<String>>,
    /// Set by the signal handler: stop between steps and tear down.
    pub stop: Arc<AtomicBool>,
    /// The drivers hotplug_mp is built with (same crate build as this binary).
    pub registry: Registry,
}

impl Env {
    /// The directory of the running executable, the drivers of this build.
    pub fn from_current_exe(stop: Arc<AtomicBool>) -> std::io::Result<Env> {
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Env { bin_dir, real: None, stop, registry: lab_drivers::registry() })
    }

    /// Path of `hotplug_mp`, or why it is missing.
    pub fn hotplug_mp(&self) -> Result<PathBuf, RunnerError> {
        let path = self.bin_dir.join("hotplug_mp");
        if path.exists() {
            Ok(path)
        } else {
            Err(RunnerError::MissingBinary { name: "hotplug_mp", path, package: "lab-harness" })
        }
    }

    /// Path of `lab-nic`, or why it is missing.
    pub fn lab_nic(&self) -> Result<PathBuf, RunnerError> {
        let path = self.bin_dir.join("lab-nic");
        if path.exists() {
            Ok(path)
        } else {
            Err(RunnerError::MissingBinary { name: "lab-nic", path, package: "lab-emu" })
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One injected fault of the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultCase {
    /// Process that misbehaves.
    pub process: String,
    /// Protocol step: `attach`, `pre-detach`, `detach`.
    pub op: &'static str,
    /// `fail`, `hang`, `crash`.
    pub mode: &'static str,
}

impl std::fmt::Display for FaultCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.process, self.op, self.mode)
    }
}

/// Environment variable every process of a run carries, set to the run's file prefix
/// (`lab<pid of lab>-<run id>`): tests and people find a run's processes with it.
pub const RUN_ENV: &str = "HOTPLUG_LAB_RUN";

/// Hotplug timeout the sweep gives every process.
pub const SWEEP_HOTPLUG_TIMEOUT_MS: u64 = 300;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step and check passed.
    Passed,
    /// Something did not hold.
    Failed(Box<Failure>),
    /// Not run: why.
    Skipped(String),
    /// A signal stopped it.
    Interrupted,
}

/// Where and how a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1-based step index (0: lab start-up or teardown).
    pub step: usize,
    /// The step as text.
    pub step_text: String,
    /// Line of the step in its file (0 if unknown).
    pub line: usize,
    /// The process concerned.
    pub process: String,
    /// What went wrong.
    pub message: String,
    /// Each process's `list` output (or why there is none) at the time.
    pub views: Vec<(String, String)>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.step == 0 {
            write!(f, "lab: {}", self.message)?;
        } else {
            write!(f, "step {} ({}", self.step, self.step_text)?;
            if self.line > 0 {
                write!(f, ", line {}", self.line)?;
            }
            write!(f, ") in {}: {}", self.process, self.message)?;
        }
        for (p, v) in &self.views {
            write!(f, "\n  {p} sees: {}", v.replace('\n', " | "))?;
        }
        Ok(())
    }
}

/// What one step did, for live output.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// 1-based index.
    pub index: usize,
    /// The step.
    pub step: Step,
    /// The answer (or what the runner did).
    pub answer: String,
    /// The view every process agreed on afterwards.
    pub view: View,
    /// Live processes afterwards.
    pub live: usize,
    /// Extra remarks (a restart, a crash).
    pub notes: Vec<String>,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case name (scenario name, plus the fault for a sweep case).
    pub name: String,
    /// Scenario file.
    pub file: PathBuf,
    /// Outcome.
    pub outcome: Outcome,
    /// Time taken.
    pub elapsed: Duration,
    /// Remarks (e.g. why a sweep case ended early).
    pub notes: Vec<String>,
}

/// Receives step reports as they happen.
pub type Observer<'a> = &'a (dyn Fn(&StepReport) + Sync);

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

fn run_id() -> String {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:05x}", (std::process::id() as u64 * 7919 + n * 104_729 + t as u64 / 1000) & 0xf_ffff)
}

/// Why a scenario cannot run with this build or on this machine, if it cannot.
pub fn skip_reason(sc: &Scenario, env: &Env) -> Option<String> {
    let reg = &env.registry;
    let prefix = |n: &str| n.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
    for d in sc.devices() {
        if d.parse::<lab_core::bus::pci::PciAddr>().is_ok() {
            continue;
        }
        if reg.vdev_driver(&d).is_none() {
            return Some(format!("no driver for {}", prefix(&d)));
        }
    }
    for r in &sc.lab.requires {
        if !reg.drivers().iter().any(|d| d.name() == r) {
            return Some(format!("no driver for {r}"));
        }
    }
    for n in &sc.lab.nics {
        let id = match n.model.as_str() {
            "ixgbe" => PciId { vendor: 0x8086, device: 0x10fb },
            "i40e" => PciId { vendor: 0x8086, device: 0x1572 },
            _ => continue,
        };
        let attached = sc.devices().contains(&n.bdf);
        if attached && reg.pci_driver(id).is_none() {
            return Some(format!("no driver for {} functions ({id})", n.model));
        }
    }
    if !sc.interfaces().is_empty() && !Path::new("/dev/net/tun").exists() {
        return Some("needs /dev/net/tun for its TAP interfaces".into());
    }
    if let Some(real) = &env.real {
        if sc.needs_emulator() {
            return Some("needs the emulator's control socket (link or unplug steps)".into());
        }
        if sc.lab.nics.len() > real.len() {
            return Some(format!("needs {} PCI functions, --real gave {}", sc.lab.nics.len(), real.len()));
        }
        if sc.lab.nics.iter().any(|n| n.wire.as_deref().is_some_and(|w| w.starts_with("peer="))) && real.len() < 2 {
            return Some("needs two cabled ports".into());
        }
        // A loopback, TAP or pcap wire is lab-nic's: a real port has a cable (or none).
        if let Some(w) =
            sc.lab.nics.iter().filter_map(|n| n.wire.as_deref()).find(|w| *w != "none" && !w.starts_with("peer="))
        {
            return Some(format!("needs the emulator's {w:?} wire"));
        }
    }
    None
}

mod check;
mod lab;
mod sweep;

pub use check::is_failure;
use check::*;
use lab::*;
pub use sweep::{run_parallel, sweep_cases};

/// Runs a scenario once (normal run, or a sweep case when `fault` is given).
pub fn run_case(env: &Env, sc: &Scenario, fault: Option<FaultCase>, observer: Option<Observer<'_>>) -> CaseResult {
    let start = Instant::now();
    let name = match &fault {
        Some(f) => format!("{} [{f}]", sc.name),
        None => sc.name.clone(),
    };
    let mut notes = Vec::new();
    if let Some(r) = skip_reason(sc, env) {
        return CaseResult {
            name,
            file: sc.file.clone(),
            outcome: Outcome::Skipped(r),
            elapsed: start.elapsed(),
            notes,
        };
    }
    let mut lab = match Lab::new(env, sc.clone(), fault.clone()) {
        Ok(l) => l,
        Err(e) => {
            let outcome = Outcome::Failed(fail(0, None, "lab", e.to_string()));
            return CaseResult { name, file: sc.file.clone(), outcome, elapsed: start.elapsed(), notes };
        }
    };
    let mut outcome = match lab.start() {
        Ok(()) => drive(&mut lab, observer, &mut notes),
        Err(mut f) => {
            f.views = lab.snapshot();
            Outcome::Failed(f)
        }
    };
    let problems = lab.teardown();
    if matches!(outcome, Outcome::Passed) && !problems.is_empty() {
        outcome = Outcome::Failed(fail(0, None, "lab", format!("teardown: {}", problems.join("; "))));
    }
    drop(lab);
    CaseResult { name, file: sc.file.clone(), outcome, elapsed: start.elapsed(), notes }
}

fn drive(lab: &mut Lab<'_>, observer: Option<Observer<'_>>, notes: &mut Vec<String>) -> Outcome {
    let settle = Duration::from_millis(lab.sc.lab.settle_ms);
    let steps = lab.sc.steps.clone();
    let fault = lab.fault.clone();
    let hang_wait = Duration::from_millis(SWEEP_HOTPLUG_TIMEOUT_MS * 2 + 500 + 400);
    let mut before = match lab.settle(None, settle) {
        Ok(v) => v,
        Err(e) => {
            let mut f = fail(0, None, "lab", format!("processes disagree after start: {e}"));
            f.views = lab.snapshot();
            return Outcome::Failed(f);
        }
    };
    for (i, s) in steps.iter().enumerate() {
        let idx = i + 1;
        if lab.env.stopping() {
            return Outcome::Interrupted;
        }
        let result = lab.act(s);
        let mut step_notes = Vec::new();
        let failed = |lab: &mut Lab<'_>, who: &str, msg: String| {
            let mut f = fail(idx, Some(s), who, msg);
            f.views = lab.snapshot();
            Outcome::Failed(f)
        };
        let answer_text = match &result {
            Ok(a) => a.clone(),
            Err(e) => e.clone(),
        };
        match &fault {
            None => {
                let who = if s.action.command().is_some() { s.on.as_str() } else { "lab" };
                match &result {
                    Ok(_) if s.background || matches!(s.action, Action::Join(_)) => {}
                    Ok(a) => {
                        if let Err(e) = check_answer(s, a) {
                            return failed(lab, who, e);
                        }
                    }
                    Err(e) => {
                        let allowed = matches!(s.expect, Expect::Any)
                            || matches!(&s.expect, Expect::Failure(w) if e.contains(w.as_str()));
                        if !allowed {
                            return failed(lab, who, e.clone());
                        }
                    }
                }
                match lab.settle(s.ports.as_ref(), settle) {
                    Ok(v) => before = v,
                    Err(e) => return failed(lab, "every process", e),
                }
            }
            Some(fc) => {
                // The fault may fire in this step: wait out a hang before judging.
                let may_fire = matches!(
                    (&s.action, fc.op),
                    (Action::Attach(_), "attach") | (Action::Detach(_), "pre-detach" | "detach")
                );
                if may_fire && fc.mode == "hang" {
                    std::thread::sleep(hang_wait);
                }
                let within = settle + Duration::from_millis(SWEEP_HOTPLUG_TIMEOUT_MS * 4);
                let stable = if may_fire || result.is_err() {
                    Duration::from_millis(SWEEP_HOTPLUG_TIMEOUT_MS * 2)
                } else {
                    Duration::ZERO
                };
                let after = match lab.settle_stable(None, within, stable) {
                    Ok(v) => v,
                    Err(e) => return failed(lab, "every process", e),
                };
                // Judged after the settle, which has listed (and so reaped) every process.
                let primary_dead =
                    !lab.procs.get_mut("primary").is_some_and(|p| p.app.as_mut().is_some_and(|a| a.is_running()));
                // A failure answer from a secondary whose primary died during the step does not
                // say whether the operation was done: it is judged like no answer.
                let answered = match &result {
                    Ok(_) if primary_dead && s.on != "primary" => None,
                    Ok(a) if s.action.is_hotplug() => Some(!is_failure(a)),
                    Ok(_) => Some(true),
                    Err(_) => None,
                };
                if s.action.is_hotplug() {
                    if let Err(e) = check_all_or_nothing(&s.action, &before, &after, answered) {
                        return failed(lab, &s.on, e);
                    }
                }
                if primary_dead {
                    let note = format!(
                        "the primary crashed on its fault at step {idx}; every secondary kept {}; the case ends here (secondaries do not outlive the primary's runtime)",
                        fmt_view(&after)
                    );
                    notes.push(note.clone());
                    step_notes.push(note);
                    report(observer, idx, s, &answer_text, &after, lab, step_notes);
                    return Outcome::Passed;
                }
                let restarted = lab.restart_crashed();
                let after = if restarted.is_empty() {
                    after
                } else {
                    step_notes.extend(restarted.iter().cloned());
                    match lab.settle(Some(&after), within) {
                        Ok(v) => v,
                        Err(e) => {
                            return failed(lab, "restarted process", format!("did not rejoin with the same view: {e}"))
                        }
                    }
                };
                before = after;
            }
        }
        let view = before.clone();
        report(observer, idx, s, &answer_text, &view, lab, step_notes);
    }
    Outcome::Passed
}

fn report(
    observer: Option<Observer<'_>>,
    index: usize,
    s: &Step,
    answer: &str,
    view: &View,
    lab: &mut Lab<'_>,
    notes: Vec<String>,
) {
    if let Some(o) = observer {
        let live = lab.live_names().len();
        o(&StepReport { index, step: s.clone(), answer: answer.to_string(), view: view.clone(), live, notes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(p: &[(u16, &str)]) -> View {
        p.iter().map(|(i, n)| (*i, n.to_string())).collect()
    }

    #[test]
    fn all_or_nothing_accepts_no_change_or_the_whole_operation() {
        let a = Action::Attach("net_null1,size=64".into());
        let before = v(&[(0, "net_null0")]);
        let done = v(&[(0, "net_null0"), (1, "net_null1")]);
        assert!(check_all_or_nothing(&a, &before, &before, Some(false)).is_ok());
        assert!(check_all_or_nothing(&a, &before, &done, Some(true)).is_ok());
        assert!(check_all_or_nothing(&a, &before, &done, None).is_ok());
        assert!(check_all_or_nothing(&a, &before, &done, Some(false)).is_err());
        let d = Action::Detach("0".into());
        assert!(check_all_or_nothing(&d, &done, &v(&[(1, "net_null1")]), Some(true)).is_ok());
        assert!(check_all_or_nothing(&d, &done, &v(&[(0, "net_null1")]), Some(true)).is_err());
        assert!(check_all_or_nothing(&d, &done, &v(&[]), Some(true)).is_err());
    }

    #[test]
    fn processes_that_disagree_are_named_with_what_they_list() {
        let views: Vec<Listing> = vec![
            ("primary".into(), Ok(v(&[(0, "net_null0")]))),
            ("s1".into(), Ok(v(&[(0, "net_null0")]))),
            ("s2".into(), Ok(v(&[(1, "net_null0")]))),
        ];
        let e = check_views(&views, None).unwrap_err();
        assert_eq!(e, "primary lists 0 net_null0 but s2 lists 1 net_null0");
        let e = check_views(&views[..2], Some(&v(&[]))).unwrap_err();
        assert!(e.contains("expected (no ports)"), "{e}");
        assert_eq!(check_views(&views[..2], None).unwrap(), v(&[(0, "net_null0")]));
    }

    #[test]
    fn colour_sequences_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"), "2026  WARN x");
    }

    #[test]
    fn answers_are_judged_by_the_expectation() {
        let step =
            |action, expect| Step { line: 1, on: "primary".into(), action, expect, ports: None, background: false };
        let recv = Action::Recv { port: lab_core::ethdev::PortId(0), count: 32, timeout_ms: 100, exact: None };
        assert!(check_answer(&step(recv.clone(), Expect::Ok), "received 32 packets (2048 bytes) on port 0").is_ok());
        assert!(check_answer(&step(recv, Expect::Ok), "received 3 packets (192 bytes) on port 0").is_err());
        let at = Action::Attach("x".into());
        assert!(check_answer(&step(at.clone(), Expect::Ok), "failed to attach device x: no").is_err());
        assert!(check_answer(&step(at.clone(), Expect::Failure("locked".into())), "failed: locked").is_ok());
        assert!(check_answer(&step(at, Expect::Failure("locked".into())), "attached device x").is_err());
    }
}
