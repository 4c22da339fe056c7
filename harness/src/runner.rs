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
    }
    None
}

struct ProcSlot {
    args: Vec<String>,
    app: Option<AppProc>,
    pid: u32,
    /// May die: killed by a step, or has a crash fault.
    may_die: bool,
    /// A background command whose answer is not collected yet.
    pending: Option<Step>,
}

struct NicProc {
    child: Child,
    control: PathBuf,
}

/// A lab being run.
struct Lab<'e> {
    env: &'e Env,
    sc: Scenario,
    tmp: tempfile::TempDir,
    prefix: String,
    xdg: PathBuf,
    sysfs: PathBuf,
    nic: Option<NicProc>,
    procs: BTreeMap<String, ProcSlot>,
    interfaces: Vec<String>,
    answer_timeout: Duration,
    fault: Option<FaultCase>,
}

fn fail(step: usize, s: Option<&Step>, process: &str, message: impl Into<String>) -> Box<Failure> {
    Box::new(Failure {
        step,
        step_text: s.map(|s| s.to_string()).unwrap_or_default(),
        line: s.map(|s| s.line).unwrap_or(0),
        process: process.to_string(),
        message: strip_ansi(&message.into()),
        views: Vec::new(),
    })
}

/// Removes terminal colour sequences (`ESC [ ... m`) from captured output.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a hotplug_mp answer reports a failure.
pub fn is_failure(answer: &str) -> bool {
    let a = answer.trim_start();
    a.starts_with("failed") || a.starts_with("cannot") || a.starts_with("unknown command")
}

fn fmt_view(v: &View) -> String {
    if v.is_empty() {
        "(no ports)".into()
    } else {
        v.iter().map(|(i, n)| format!("{i} {n}")).collect::<Vec<_>>().join(", ")
    }
}

impl<'e> Lab<'e> {
    fn new(env: &'e Env, mut sc: Scenario, fault: Option<FaultCase>) -> Result<Lab<'e>, RunnerError> {
        let tmp = tempfile::Builder::new().prefix("lab-run-").tempdir().map_err(RunnerError::TempDir)?;
        let run = run_id();
        let bdf_map: Vec<(String, String)> = match &env.real {
            Some(real) => sc.lab.nics.iter().zip(real.iter()).map(|(n, r)| (n.bdf.clone(), r.clone())).collect(),
            None => Vec::new(),
        };
        sc.substitute(&run, tmp.path(), &bdf_map);
        let xdg = tmp.path().join("xdg");
        let sysfs = tmp.path().join("sysfs");
        std::fs::create_dir_all(&xdg).map_err(RunnerError::TempDir)?;
        std::fs::create_dir_all(&sysfs).map_err(RunnerError::TempDir)?;
        let interfaces = sc.interfaces();
        let answer_timeout = Duration::from_millis(sc.lab.answer_timeout_ms);
        Ok(Lab {
            env,
            prefix: format!("lab{}-{run}", std::process::id()),
            sc,
            tmp,
            xdg,
            sysfs,
            nic: None,
            procs: BTreeMap::new(),
            interfaces,
            answer_timeout,
            fault,
        })
    }

    fn runtime_dir(&self) -> PathBuf {
        self.xdg.join("hotplug-lab").join(&self.prefix)
    }

    fn shm(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm/hotplug-lab-{}-mem", self.prefix))
    }

    /// The arguments of a process (EAL options, its faults).
    fn args_of(&self, name: &str) -> Vec<String> {
        let mut a = vec![
            format!("--proc-type={}", if name == "primary" { "primary" } else { "secondary" }),
            format!("--file-prefix={}", self.prefix),
        ];
        let sweep = self.fault.is_some();
        let keep = |o: &&String| !(sweep && (o.starts_with("--hotplug-timeout-ms") || o.starts_with("--lab-fault")));
        a.extend(self.sc.lab.eal.iter().filter(keep).cloned());
        if let Some(p) = self.sc.lab.process.get(name) {
            a.extend(p.eal.iter().filter(keep).cloned());
        }
        if sweep {
            a.push(format!("--hotplug-timeout-ms={SWEEP_HOTPLUG_TIMEOUT_MS}"));
        }
        if let Some(f) = self.fault.as_ref().filter(|f| f.process == name) {
            // Attach faults go on the devices the steps attach (not on the primary's start-up
            // vdevs); detach faults on every device, since steps may detach by port id.
            let devices = if f.op == "attach" { self.sc.attached_devices() } else { self.sc.devices() };
            for d in devices {
                a.push(format!("--lab-fault={}:{d}:{}", f.op, f.mode));
            }
        }
        if name == "primary" {
            a.extend(self.sc.lab.vdevs.iter().map(|v| format!("--vdev={v}")));
        }
        a
    }

    fn spawn_proc(&mut self, name: &str, args: Vec<String>) -> Result<(), Box<Failure>> {
        let bin = self.env.hotplug_mp().map_err(|e| fail(0, None, name, e.to_string()))?;
        let mut c = Command::new(bin);
        c.args(&args)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("SYSFS_PCI_DEVICES", &self.sysfs)
            .env(RUN_ENV, &self.prefix)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .process_group(0);
        let mut app = AppProc::spawn(c).map_err(|e| fail(0, None, name, format!("cannot start {name}: {e}")))?;
        app.timeout = self.answer_timeout;
        let may_die = args.iter().any(|a| a.starts_with("--lab-fault") && a.ends_with(":crash"));
        tracing::debug!(process = name, pid = app.pid(), ?args, "started");
        self.procs.insert(name.to_string(), ProcSlot { pid: app.pid(), args, app: Some(app), may_die, pending: None });
        Ok(())
    }

    fn start_nic(&mut self) -> Result<(), Box<Failure>> {
        if self.sc.lab.nics.is_empty() {
            return Ok(());
        }
        if let Some(real) = &self.env.real {
            // Real functions: a sysfs view with the given functions only, populated now that the
            // primary runs (as the emulator does), so they are attached by the steps.
            for r in real.iter().take(self.sc.lab.nics.len()) {
                let target = Path::new("/sys/bus/pci/devices").join(r);
                std::os::unix::fs::symlink(&target, self.sysfs.join(r))
                    .map_err(|e| fail(0, None, "lab", format!("cannot link {}: {e}", target.display())))?;
            }
            return Ok(());
        }
        let bin = self.env.lab_nic().map_err(|e| fail(0, None, "lab-nic", e.to_string()))?;
        let control = self.tmp.path().join("nic.sock");
        let mut c = Command::new(bin);
        c.arg("--sysfs-root").arg(&self.sysfs).arg("--control").arg(&control).arg("--log-level").arg("warn");
        // A killed `lab` must not leave the emulator (and its sockets, TAP devices) behind.
        c.arg(format!("--exit-with-parent={}", std::process::id()));
        for n in &self.sc.lab.nics {
            let mut d = format!("{},model={}", n.bdf, n.model);
            if let Some(w) = &n.wire {
                d.push_str(&format!(",wire={w}"));
            }
            if let Some(m) = &n.mac {
                d.push_str(&format!(",mac={m}"));
            }
            c.arg("--dev").arg(d);
        }
        c.env(RUN_ENV, &self.prefix)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = c.spawn().map_err(|e| fail(0, None, "lab-nic", format!("cannot start lab-nic: {e}")))?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        if let Some(out) = out {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        let errs = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = err {
            let errs = errs.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut e = errs.lock().unwrap_or_else(|e| e.into_inner());
                    if e.len() < 16 * 1024 {
                        e.push_str(&l);
                        e.push('\n');
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        let nic = NicProc { child, control };
        self.nic = Some(nic);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.trim() == "lab-nic ready" => break,
                Ok(_) => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    let e = errs.lock().unwrap_or_else(|e| e.into_inner()).trim().to_string();
                    return Err(fail(0, None, "lab-nic", format!("lab-nic did not become ready: {e}")));
                }
            }
        }
        // Keep draining its stdout.
        std::thread::spawn(move || for _ in rx {});
        Ok(())
    }

    fn start(&mut self) -> Result<(), Box<Failure>> {
        let names = process_names(&self.sc.lab);
        let args = self.args_of("primary");
        self.spawn_proc("primary", args)?;
        self.start_nic()?;
        for n in names.iter().skip(1) {
            if self.sc.lab.process.get(n).is_some_and(|p| p.late) {
                continue;
            }
            let args = self.args_of(n);
            self.spawn_proc(n, args)?;
        }
        Ok(())
    }

    fn nic_control(&self, line: &str) -> Result<String, String> {
        let nic = self.nic.as_ref().ok_or("this lab has no emulated NIC (no lab-nic control socket)")?;
        let mut s = UnixStream::connect(&nic.control).map_err(|e| format!("control socket: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        writeln!(s, "{line}").map_err(|e| format!("control socket: {e}"))?;
        let mut r = String::new();
        BufReader::new(s).read_line(&mut r).map_err(|e| format!("control socket: {e}"))?;
        let r = r.trim().to_string();
        if r.starts_with("ok") {
            Ok(r)
        } else {
            Err(r)
        }
    }

    fn live_names(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|(n, s)| s.app.as_mut().is_some_and(|a| a.is_running()).then(|| n.clone()))
            .collect()
    }

    /// Every process's `list` (or why there is none). Dead processes are reaped (their slot
    /// emptied) and reported in `died` unless they were allowed to die.
    fn views(&mut self) -> (Vec<Listing>, Vec<String>) {
        let mut out = Vec::new();
        let mut died = Vec::new();
        for (name, slot) in self.procs.iter_mut() {
            let Some(app) = slot.app.as_mut() else { continue };
            if slot.pending.is_some() {
                continue;
            }
            match app.cmd("list") {
                Ok(a) if a.starts_with("list all etherdev") => out.push((name.clone(), Ok(parse_list(&a)))),
                Ok(a) => out.push((name.clone(), Err(format!("unexpected answer to list: {a}")))),
                Err(e) if matches!(e, ProcError::Exited { .. }) || !app.is_running() => {
                    if !slot.may_die {
                        died.push(format!("{name} (pid {}) died: {}", slot.pid, last_lines(&app.stderr_now())));
                    }
                    if let Some(a) = slot.app.take() {
                        a.kill();
                    }
                }
                Err(e) => out.push((name.clone(), Err(e.to_string()))),
            }
        }
        (out, died)
    }

    fn snapshot(&mut self) -> Vec<(String, String)> {
        let (v, died) = self.views();
        let mut s: Vec<(String, String)> = v
            .into_iter()
            .map(|(n, r)| {
                (
                    n,
                    match r {
                        Ok(v) => fmt_view(&v),
                        Err(e) => e,
                    },
                )
            })
            .collect();
        for d in died {
            s.push(("dead".into(), d));
        }
        s
    }

    /// Polls until every live process lists the same ports (and `want`, if given), at most `within`.
    fn settle(&mut self, want: Option<&View>, within: Duration) -> Result<View, String> {
        self.settle_stable(want, within, Duration::ZERO)
    }

    /// As `settle`, and the agreed view must stay the same for `stable` (an operation may still
    /// run in the primary when the process that asked for it died).
    fn settle_stable(&mut self, want: Option<&View>, within: Duration, stable: Duration) -> Result<View, String> {
        let deadline = Instant::now() + within + stable;
        let mut since: Option<(View, Instant)> = None;
        loop {
            let (views, died) = self.views();
            if let Some(d) = died.first() {
                return Err(d.clone());
            }
            let problem = check_views(&views, want);
            match problem {
                Ok(v) => {
                    match &since {
                        Some((sv, t)) if *sv == v => {
                            if t.elapsed() >= stable {
                                return Ok(v);
                            }
                        }
                        _ => {
                            if stable.is_zero() {
                                return Ok(v);
                            }
                            since = Some((v, Instant::now()));
                        }
                    }
                    if Instant::now() >= deadline {
                        return Err("the processes' view kept changing".into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if Instant::now() >= deadline || self.env.stopping() => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn proc_cmd(&mut self, name: &str, line: &str) -> Result<String, String> {
        let slot = self.procs.get_mut(name).ok_or_else(|| format!("{name} is not running"))?;
        let app = slot.app.as_mut().ok_or_else(|| format!("{name} is not running"))?;
        match app.cmd(line) {
            Ok(a) => Ok(a),
            Err(e) => {
                if matches!(e, ProcError::Exited { .. }) || !app.is_running() {
                    if let Some(a) = slot.app.take() {
                        a.kill();
                    }
                }
                Err(format!("{name} (pid {}): {e}", slot.pid))
            }
        }
    }

    /// Runs one step's action; returns the answer text, or an error when it could not be run or
    /// got no answer.
    fn act(&mut self, s: &Step) -> Result<String, String> {
        match &s.action {
            Action::LinkDown(b) => self.nic_control(&format!("link down {b}")),
            Action::LinkUp(b) => self.nic_control(&format!("link up {b}")),
            Action::Unplug(b) => self.nic_control(&format!("unplug {b}")),
            Action::Wait(ms) => {
                let end = Instant::now() + Duration::from_millis(*ms);
                while Instant::now() < end && !self.env.stopping() {
                    std::thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
                }
                Ok(format!("waited {ms} ms"))
            }
            Action::Kill(p) => {
                let slot = self.procs.get_mut(p).ok_or_else(|| format!("{p} was never started"))?;
                match slot.app.take() {
                    Some(a) => {
                        a.kill();
                        Ok(format!("killed {p} (pid {})", slot.pid))
                    }
                    None => Err(format!("{p} is not running")),
                }
            }
            Action::Quit(p) => {
                let slot = self.procs.get_mut(p).ok_or_else(|| format!("{p} was never started"))?;
                match slot.app.take() {
                    Some(a) => match a.quit(Duration::from_secs(10)) {
                        Some(st) if st.success() => Ok(format!("{p} quit")),
                        Some(st) => Err(format!("{p} quit with {st}")),
                        None => Err(format!("{p} did not quit within 10 s")),
                    },
                    None => Err(format!("{p} is not running")),
                }
            }
            Action::Restart(p) | Action::Start(p) => {
                if p == "primary" {
                    return Err("the primary cannot be restarted: secondaries do not outlive its runtime".into());
                }
                if let Some(a) = self.procs.get_mut(p).and_then(|s| s.app.take()) {
                    a.kill();
                }
                let args = match self.procs.get(p) {
                    Some(s) => s.args.clone(),
                    None => self.args_of(p),
                };
                self.spawn_proc(p, args).map_err(|f| f.message)?;
                Ok(format!("started {p} (pid {})", self.procs.get(p).map(|s| s.pid).unwrap_or(0)))
            }
            Action::Join(p) => {
                let wait = self.answer_timeout;
                let slot = self.procs.get_mut(p).ok_or_else(|| format!("{p} was never started"))?;
                let pending = slot.pending.take().ok_or_else(|| format!("{p} has no background command"))?;
                let app = slot.app.as_mut().ok_or_else(|| format!("{p} is not running"))?;
                let answer = app.answer_within(wait).map_err(|e| format!("{p} (pid {}): {e}", slot.pid))?;
                check_answer(&pending, &answer).map_err(|e| format!("background step {pending}: {e}"))?;
                Ok(answer)
            }
            a if s.background => {
                let line = a.command().unwrap_or_default();
                let slot = self.procs.get_mut(&s.on).ok_or_else(|| format!("{} is not running", s.on))?;
                let app = slot.app.as_mut().ok_or_else(|| format!("{} is not running", s.on))?;
                app.send_line(&line).map_err(|e| format!("{} (pid {}): {e}", s.on, slot.pid))?;
                slot.pending = Some(s.clone());
                Ok("running in the background".into())
            }
            a => {
                let line = a.command().unwrap_or_default();
                self.proc_cmd(&s.on, &line)
            }
        }
    }

    /// Restarts processes that died on an injected crash, without the fault.
    fn restart_crashed(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let dead: Vec<String> = self
            .procs
            .iter_mut()
            .filter_map(|(n, s)| {
                (*n != "primary" && s.may_die && !s.app.as_mut().is_some_and(|a| a.is_running())).then(|| n.clone())
            })
            .collect();
        for n in dead {
            if let Some(slot) = self.procs.get_mut(&n) {
                if let Some(a) = slot.app.take() {
                    a.kill();
                }
                slot.args.retain(|a| !a.starts_with("--lab-fault"));
                let args = slot.args.clone();
                match self.spawn_proc(&n, args) {
                    Ok(()) => notes.push(format!("{n} crashed on its fault and was restarted without it")),
                    Err(f) => notes.push(format!("{n} crashed and could not be restarted: {}", f.message)),
                }
            }
        }
        notes
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // Secondaries first, then the primary.
        let mut names: Vec<String> = self.procs.keys().filter(|n| *n != "primary").cloned().collect();
        names.push("primary".into());
        for n in names {
            if let Some(app) = self.procs.get_mut(&n).and_then(|s| s.app.take()) {
                let pid = app.pid();
                // `quit` consumes the handle; AppProc's drop kills it if it did not exit.
                if app.quit(Duration::from_secs(5)).is_none() {
                    problems.push(format!("{n} (pid {pid}) did not quit within 5 s: killed"));
                }
            }
        }
        if let Some(mut nic) = self.nic.take() {
            let pid = nix::unistd::Pid::from_raw(nic.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = nic.child.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    problems.push("lab-nic did not stop on SIGTERM within 5 s: killed".into());
                    let _ = nic.child.kill();
                    let _ = nic.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_file(self.shm());
        // The memory file lives on hugetlbfs when one is mounted with free pages.
        let name = format!("hotplug-lab-{}-mem", self.prefix);
        for m in std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines() {
            let f: Vec<&str> = m.split_whitespace().collect();
            if f.len() > 2 && f[2] == "hugetlbfs" {
                let _ = std::fs::remove_file(Path::new(f[1]).join(&name));
            }
        }
        let _ = std::fs::remove_dir_all(self.runtime_dir());
        for i in &self.interfaces {
            if Path::new("/sys/class/net").join(i).exists() {
                let _ = Command::new("ip").args(["link", "delete", i]).stderr(Stdio::null()).status();
            }
        }
        problems
    }
}

fn last_lines(s: &str) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let k = v.len().saturating_sub(3);
    let t = v[k..].join(" | ");
    if t.is_empty() {
        "no output on stderr".into()
    } else {
        t
    }
}

fn check_views(views: &[Listing], want: Option<&View>) -> Result<View, String> {
    let mut first: Option<(&str, &View)> = None;
    for (n, v) in views {
        let v = v.as_ref().map_err(|e| format!("{n}: {e}"))?;
        match first {
            None => first = Some((n, v)),
            Some((fname, fv)) if fv != v => {
                return Err(format!("{fname} lists {} but {n} lists {}", fmt_view(fv), fmt_view(v)))
            }
            _ => {}
        }
    }
    let view = first.map(|(_, v)| v.clone()).unwrap_or_default();
    if let Some(w) = want {
        if *w != view {
            return Err(format!("every process lists {}, expected {}", fmt_view(&view), fmt_view(w)));
        }
    }
    Ok(view)
}

/// Checks an answer against what the step expects (normal runs).
fn check_answer(s: &Step, answer: &str) -> Result<(), String> {
    match (&s.expect, &s.action) {
        (Expect::Any, _) => Ok(()),
        (Expect::Failure(want), _) => {
            if !is_failure(answer) {
                Err(format!("answered {answer:?}, expected a failure containing {want:?}"))
            } else if !answer.contains(want.as_str()) {
                Err(format!("answered {answer:?}, expected it to contain {want:?}"))
            } else {
                Ok(())
            }
        }
        (Expect::Ok, Action::Send { port, count, .. }) => {
            let want = format!("sent {count} packets on port {port}");
            if answer == want {
                Ok(())
            } else {
                Err(format!("answered {answer:?}, expected {want:?}"))
            }
        }
        (Expect::Ok, Action::Recv { count, exact, .. }) => {
            let n = answer
                .strip_prefix("received ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("answered {answer:?}, expected \"received N packets ...\""))?;
            match exact {
                Some(e) if n != *e => Err(format!("received {n} packets, expected exactly {e}")),
                None if n < *count => Err(format!("received {n} packets, expected at least {count}")),
                _ => Ok(()),
            }
        }
        (Expect::Ok, _) => {
            if is_failure(answer) {
                Err(format!("answered {answer:?}, expected success"))
            } else {
                Ok(())
            }
        }
    }
}

/// The state an attach or detach leads to when it happens (names only: ids are the protocol's).
fn names_of(v: &View) -> Vec<String> {
    let mut n: Vec<String> = v.iter().map(|(_, n)| n.clone()).collect();
    n.sort();
    n
}

fn device_of(action: &Action, before: &View) -> Option<String> {
    let t = match action {
        Action::Attach(a) | Action::Detach(a) => a,
        _ => return None,
    };
    if let Ok(id) = t.trim().parse::<u16>() {
        return before.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone());
    }
    lab_core::devargs::Devargs::parse(t).ok().map(|d| d.name().to_string())
}

/// The sweep invariant for one hotplug step: `after` is `before` (nothing happened) or the
/// operation's result (it happened everywhere); a failed answer allows only `before`.
fn check_all_or_nothing(action: &Action, before: &View, after: &View, answered: Option<bool>) -> Result<(), String> {
    let same_ids = after.iter().all(|(i, n)| before.iter().all(|(bi, bn)| bn != n || bi == i));
    if !same_ids {
        return Err(format!("a port changed its id: before {}, after {}", fmt_view(before), fmt_view(after)));
    }
    if after == before {
        return Ok(());
    }
    if answered == Some(false) {
        return Err(format!(
            "the step failed but the ports changed: before {}, after {}",
            fmt_view(before),
            fmt_view(after)
        ));
    }
    let Some(dev) = device_of(action, before) else {
        return Err(format!("ports changed on a step that is no hotplug operation: {}", fmt_view(after)));
    };
    let mut want = names_of(before);
    match action {
        Action::Attach(_) => {
            if !want.contains(&dev) {
                want.push(dev);
                want.sort();
            }
        }
        _ => want.retain(|n| *n != dev),
    }
    if names_of(after) == want {
        Ok(())
    } else {
        Err(format!(
            "partial operation: before {}, after {}, expected {} or no change",
            fmt_view(before),
            fmt_view(after),
            want.join(", ")
        ))
    }
}

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

/// The sweep's cases for a scenario: every process x {attach, pre-detach, detach} x {fail,
/// hang, crash}.
pub fn sweep_cases(sc: &Scenario) -> Vec<FaultCase> {
    let mut v = Vec::new();
    for p in process_names(&sc.lab) {
        for op in ["attach", "pre-detach", "detach"] {
            for mode in ["fail", "hang", "crash"] {
                v.push(FaultCase { process: p.clone(), op, mode });
            }
        }
    }
    v
}

/// Runs `jobs` in parallel on `threads` workers; results in input order.
pub fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    stop: &AtomicBool,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<Option<R>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<R>>> = std::sync::Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                let r = f(i, item);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
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
        let recv = Action::Recv { port: 0, count: 32, timeout_ms: 100, exact: None };
        assert!(check_answer(&step(recv.clone(), Expect::Ok), "received 32 packets (2048 bytes) on port 0").is_ok());
        assert!(check_answer(&step(recv, Expect::Ok), "received 3 packets (192 bytes) on port 0").is_err());
        let at = Action::Attach("x".into());
        assert!(check_answer(&step(at.clone(), Expect::Ok), "failed to attach device x: no").is_err());
        assert!(check_answer(&step(at.clone(), Expect::Failure("locked".into())), "failed: locked").is_ok());
        assert!(check_answer(&step(at, Expect::Failure("locked".into())), "attached device x").is_err());
    }
}
