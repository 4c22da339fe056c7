//! A lab for your own tests: emulated NICs, virtual devices, `hotplug_mp` processes and your own
//! lab-core binaries, started with a prefix and temp dirs of their own, driven and observed from
//! a Rust test, and torn down on drop (children killed by pid, memory file, runtime dir, fake
//! sysfs, control socket and the interfaces you name removed), also when the test panics.
//!
//! Every process is observed the same way, through its telemetry socket (`/lab/ports`,
//! `/ethdev/stats`, ...): `hotplug_mp` processes and yours alike. Actions (attach, detach, lock)
//! go through a `hotplug_mp` process (its command line), device events through lab-nic's control
//! socket (`unplug`, `plug`, `link_down`, `link_up`).
//!
//! ```no_run
//! use std::time::Duration;
//! use lab_harness::Lab;
//!
//! let mut lab = Lab::builder()
//!     .nic("0000:00:05.0", "ixgbe", "loopback")
//!     .vdev("net_null0")
//!     .secondaries(1)                                    // hotplug_mp s1
//!     .app("fwd", "target/debug/my-app", &["--pair", "0000:00:05.0,net_null0"])
//!     .start()
//!     .unwrap();
//! let port = lab.attach("s1", "0000:00:05.0").unwrap();
//! lab.wait_until(Duration::from_secs(5), "fwd sees the NIC", |l| {
//!     l.ports("fwd").ok()?.iter().any(|(p, _)| *p == port).then_some(())
//! })
//! .unwrap();
//! lab.assert_consistent();
//! let s = lab.stats("fwd", port).unwrap();
//! println!("{} received", s.ipackets);
//! // dropped here: every process, file and socket of the lab is gone
//! ```
//!
//! With rstest, a fixture gives each test its own lab (prefixes are unique, tests run in
//! parallel):
//!
//! ```no_run
//! # use lab_harness::Lab;
//! #[rstest::fixture]
//! fn lab() -> Lab {
//!     Lab::builder().vdev("net_null0").secondaries(1).start().expect("lab")
//! }
//!
//! #[rstest::rstest]
//! fn my_test(mut lab: Lab) {
//!     lab.attach("s1", "net_null1").unwrap();
//!     lab.assert_consistent();
//! }
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab_core::ethdev::{PortId, PortStats};
use lab_core::telemetry::{self, Client, ClientError};
use serde_json::Value;

use crate::proc::{terminate, AppProc, ProcError};

/// How long a process may take to start (its telemetry socket to appear).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one telemetry answer may take.
const ANSWER: Duration = Duration::from_secs(5);

/// What went wrong in a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A binary the lab needs is not there.
    #[error("{name} not found at {path} (build it: {build})")]
    Missing {
        /// Binary name.
        name: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The command that builds it.
        build: &'static str,
    },
    /// Setting the lab up failed.
    #[error("lab set-up: {what}: {source}")]
    Setup {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A process of the lab failed to start, died or answered otherwise than expected.
    #[error("{process}: {message}")]
    Process {
        /// Its name in the lab.
        process: String,
        /// What happened (with its stderr when it died).
        message: String,
    },
    /// A `hotplug_mp` process did not answer.
    #[error("{process}: {source}")]
    Prompt {
        /// Its name in the lab.
        process: String,
        /// Cause.
        #[source]
        source: ProcError,
    },
    /// A process's telemetry could not be read.
    #[error("{process}: telemetry: {source}")]
    Telemetry {
        /// Its name in the lab.
        process: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// A name that is no process of this lab.
    #[error("no process {0:?} in this lab")]
    NoProcess(String),
    /// lab-nic refused a control command (or the lab has no emulated NIC).
    #[error("lab-nic: {0}")]
    Nic(String),
    /// A condition did not hold in time.
    #[error("{what}: not within {within:?}{last}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long it was waited for.
        within: Duration,
        /// The last state seen, if any.
        last: String,
    },
}

/// What [`Lab::builder`] builds.
#[derive(Debug, Default)]
pub struct LabBuilder {
    nics: Vec<(String, String, String)>,
    vdevs: Vec<String>,
    secondaries: usize,
    apps: Vec<(String, PathBuf, Vec<String>)>,
    eal: Vec<String>,
    process_eal: Vec<(String, String)>,
    interfaces: Vec<String>,
    bin_dir: Option<PathBuf>,
    device_threads: Option<String>,
}

impl LabBuilder {
    /// An emulated function: `model` `ixgbe` or `i40e`, `wire` `loopback`, `none`, `peer=BDF`,
    /// `tap=NAME` or `pcap=RX:TX` (lab-nic's `--dev` syntax).
    pub fn nic(mut self, bdf: &str, model: &str, wire: &str) -> Self {
        self.nics.push((bdf.into(), model.into(), wire.into()));
        if let Some(t) = wire.strip_prefix("tap=") {
            self.interfaces.push(t.into());
        }
        self
    }
    /// lab-nic's `--device-threads` (`auto`, `per-function` or a count; default `auto`).
    pub fn device_threads(mut self, threads: &str) -> Self {
        self.device_threads = Some(threads.into());
        self
    }
    /// A `--vdev` the primary probes at start.
    pub fn vdev(mut self, devargs: &str) -> Self {
        self.vdevs.push(devargs.into());
        self
    }
    /// `hotplug_mp` secondaries, named `s1`, `s2`, ...
    pub fn secondaries(mut self, n: usize) -> Self {
        self.secondaries = n;
        self
    }
    /// Your lab-core binary as a secondary named `name`: it gets the lab's EAL options
    /// (`--proc-type=secondary --file-prefix=...` and [`LabBuilder::eal`]'s), then `--` and `args`.
    pub fn app(mut self, name: &str, bin: impl Into<PathBuf>, args: &[&str]) -> Self {
        self.apps.push((name.into(), bin.into(), args.iter().map(|a| a.to_string()).collect()));
        self
    }
    /// An EAL option every process gets (`--hotplug-timeout-ms=500`, `--lab-fault=...`).
    pub fn eal(mut self, opt: &str) -> Self {
        self.eal.push(opt.into());
        self
    }
    /// An EAL option of one process only (`"s1"`, `"--lab-fault=attach:net_null1:hang"`).
    pub fn process_eal(mut self, process: &str, opt: &str) -> Self {
        self.process_eal.push((process.into(), opt.into()));
        self
    }
    /// An interface to delete at teardown (a TAP your app or a vdev creates).
    pub fn interface(mut self, name: &str) -> Self {
        self.interfaces.push(name.into());
        self
    }
    /// Where `hotplug_mp` and `lab-nic` are (default: `$HOTPLUG_LAB_BIN_DIR`, else the target
    /// directory of the running test, `target/<profile>`).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Starts the primary (with the vdevs), lab-nic (its functions appear in the lab's sysfs
    /// once the primary runs: attach them with [`Lab::attach`]), the secondaries and the apps, in
    /// that order; each is up when its telemetry socket answers. Whatever started is stopped
    /// again if a later one fails.
    pub fn start(self) -> Result<Lab, LabError> {
        let bin_dir = match self.bin_dir.clone().or_else(|| std::env::var_os("HOTPLUG_LAB_BIN_DIR").map(PathBuf::from))
        {
            Some(d) => d,
            None => default_bin_dir()?,
        };
        let hotplug_mp = need(&bin_dir, "hotplug_mp", "cargo build -p lab-harness --bin hotplug_mp")?;
        let tmp = tempfile::Builder::new()
            .prefix("lab-api-")
            .tempdir()
            .map_err(|source| LabError::Setup { what: "temp dir".into(), source })?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("api{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let (xdg, sysfs) = (tmp.path().join("xdg"), tmp.path().join("sysfs"));
        for d in [&xdg, &sysfs] {
            std::fs::create_dir_all(d).map_err(|source| LabError::Setup { what: d.display().to_string(), source })?;
        }
        let mut lab = Lab {
            prefix,
            xdg,
            sysfs,
            control: tmp.path().join("nic.sock"),
            nic: None,
            procs: BTreeMap::new(),
            order: Vec::new(),
            interfaces: self.interfaces.clone(),
            eal: self.eal.clone(),
            process_eal: self.process_eal.clone(),
            hotplug_mp,
            mem_file: None,
            sockets: Mutex::new(BTreeMap::new()),
            _tmp: tmp,
        };
        let mut primary = vec!["--proc-type=primary".to_string()];
        primary.extend(self.vdevs.iter().map(|v| format!("--vdev={v}")));
        lab.spawn_prompt("primary", &primary)?;
        let mem = lab.telemetry("primary", "/lab/process")?;
        lab.mem_file = mem["mem_file"].as_str().map(PathBuf::from);
        if !self.nics.is_empty() {
            let bin = need(&bin_dir, "lab-nic", "cargo build -p lab-emu --bin lab-nic")?;
            let extra: Vec<String> = self.device_threads.iter().map(|t| format!("--device-threads={t}")).collect();
            lab.nic = Some(spawn_lab_nic(&bin, &lab.sysfs, &lab.control, &self.nics, &extra)?);
        }
        for i in 1..=self.secondaries {
            lab.spawn_prompt(&format!("s{i}"), &["--proc-type=secondary".to_string()])?;
        }
        for (name, bin, args) in &self.apps {
            lab.spawn_app(name, bin, args)?;
        }
        Ok(lab)
    }
}

fn default_bin_dir() -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Setup { what: "current exe".into(), source })?;
    // target/<profile>/deps/<test> (an integration test) or target/<profile>/<bin>.
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(if dir.ends_with("deps") { dir.parent().map(Path::to_path_buf).unwrap_or(dir) } else { dir })
}

fn need(dir: &Path, name: &'static str, build: &'static str) -> Result<PathBuf, LabError> {
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(LabError::Missing { name, path, build })
    }
}

/// Starts lab-nic serving `nics` (bdf, model, wire) under `sysfs` with its control socket at
/// `control` (and `extra` arguments), and waits for "lab-nic ready". It exits with the lab's
/// process if that is killed.
pub(crate) fn spawn_lab_nic(
    bin: &Path,
    sysfs: &Path,
    control: &Path,
    nics: &[(String, String, String)],
    extra: &[String],
) -> Result<Child, LabError> {
    let mut c = Command::new(bin);
    c.arg("--sysfs-root").arg(sysfs).arg("--control").arg(control).args(["--log-level", "warn"]).args(extra);
    c.arg(format!("--exit-with-parent={}", std::process::id()));
    for (bdf, model, wire) in nics {
        c.arg("--dev").arg(format!("{bdf},model={model},wire={wire}"));
    }
    c.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = c.spawn().map_err(|source| LabError::Setup { what: format!("start {}", bin.display()), source })?;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.trim() == "lab-nic ready" => break,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut e = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut e);
                }
                return Err(LabError::Process {
                    process: "lab-nic".into(),
                    message: format!("not ready: {}", e.trim()),
                });
            }
        }
    }
    // Keep draining its output.
    std::thread::spawn(move || for _ in rx {});
    if let Some(mut err) = child.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }
    Ok(child)
}

/// A child's stderr as read so far, and whether its reader reached the end.
#[derive(Default)]
struct Captured {
    text: Mutex<String>,
    closed: AtomicBool,
}

enum Proc {
    /// A `hotplug_mp` process, driven over its prompt.
    Prompt(AppProc),
    /// Your binary, observed through telemetry; its stderr kept for failure messages.
    App { child: Child, stderr: Arc<Captured> },
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Prompt(a) => a.pid(),
            Proc::App { child, .. } => child.id(),
        }
    }
}

/// A running lab. Dropping it stops everything it started and removes what it made.
pub struct Lab {
    prefix: String,
    xdg: PathBuf,
    sysfs: PathBuf,
    control: PathBuf,
    nic: Option<Child>,
    procs: BTreeMap<String, Proc>,
    order: Vec<String>,
    interfaces: Vec<String>,
    eal: Vec<String>,
    process_eal: Vec<(String, String)>,
    hotplug_mp: PathBuf,
    mem_file: Option<PathBuf>,
    /// Telemetry socket of each process, found by pid.
    sockets: Mutex<BTreeMap<String, PathBuf>>,
    _tmp: tempfile::TempDir,
}

impl Lab {
    /// A lab to describe, then [`LabBuilder::start`].
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The lab's `--file-prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The runtime directory of the lab's processes (`$XDG_RUNTIME_DIR/hotplug-lab/<prefix>`).
    pub fn runtime_dir(&self) -> PathBuf {
        self.xdg.join("hotplug-lab").join(&self.prefix)
    }

    /// The lab's `XDG_RUNTIME_DIR` (for a tool you run against it, such as `lab status`).
    pub fn xdg_runtime_dir(&self) -> &Path {
        &self.xdg
    }

    /// Pid of the lab's lab-nic, when it has emulated NICs.
    pub fn nic_pid(&self) -> Option<u32> {
        self.nic.as_ref().map(Child::id)
    }

    /// Pid of a process.
    pub fn pid(&self, process: &str) -> Option<u32> {
        self.procs.get(process).map(Proc::pid)
    }

    /// The processes, in start order.
    pub fn processes(&self) -> Vec<String> {
        self.order.iter().filter(|n| self.procs.contains_key(*n)).cloned().collect()
    }

    fn command(&self, name: &str, bin: &Path, role_args: &[String]) -> Command {
        let mut c = Command::new(bin);
        c.args(role_args)
            .arg(format!("--file-prefix={}", self.prefix))
            .args(&self.eal)
            .args(self.process_eal.iter().filter(|(p, _)| p == name).map(|(_, o)| o))
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("SYSFS_PCI_DEVICES", &self.sysfs)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .process_group(0);
        c
    }

    fn spawn_prompt(&mut self, name: &str, role_args: &[String]) -> Result<(), LabError> {
        let c = self.command(name, &self.hotplug_mp, role_args);
        let app = AppProc::spawn(c).map_err(|source| LabError::Prompt { process: name.into(), source })?;
        self.procs.insert(name.into(), Proc::Prompt(app));
        self.order.push(name.into());
        self.socket(name).map(|_| ())
    }

    fn spawn_app(&mut self, name: &str, bin: &Path, args: &[String]) -> Result<(), LabError> {
        let mut c = self.command(name, bin, &["--proc-type=secondary".to_string()]);
        c.arg("--").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| LabError::Process {
            process: name.into(),
            message: format!("cannot start {}: {e}", bin.display()),
        })?;
        let stderr = Arc::new(Captured::default());
        if let Some(mut err) = child.stderr.take() {
            let keep = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut s = keep.text.lock().unwrap_or_else(|e| e.into_inner());
                    if s.len() < 64 * 1024 {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
                keep.closed.store(true, Ordering::Release);
            });
        } else {
            stderr.closed.store(true, Ordering::Release);
        }
        self.procs.insert(name.into(), Proc::App { child, stderr });
        self.order.push(name.into());
        self.socket(name).map(|_| ())
    }

    /// What a process wrote to stderr so far (your apps; `hotplug_mp`'s too).
    pub fn stderr(&self, process: &str) -> String {
        match self.procs.get(process) {
            Some(Proc::Prompt(a)) => a.stderr_now(),
            Some(Proc::App { stderr, .. }) => stderr.text.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            None => String::new(),
        }
    }

    /// All a process that exited wrote to stderr: waits (at most `within`) for its reader to
    /// reach the end, since the exit can be seen before the last bytes are read.
    fn stderr_of_exited(&self, process: &str, within: Duration) -> String {
        if let Some(Proc::App { stderr, .. }) = self.procs.get(process) {
            let deadline = Instant::now() + within;
            while !stderr.closed.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.stderr(process)
    }

    /// Whether a process still runs.
    pub fn is_running(&mut self, process: &str) -> bool {
        match self.procs.get_mut(process) {
            Some(Proc::Prompt(a)) => a.is_running(),
            Some(Proc::App { child, .. }) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The telemetry socket of `process`: the one whose greeting carries its pid.
    fn socket(&self, process: &str) -> Result<PathBuf, LabError> {
        if let Some(p) = self.sockets.lock().unwrap_or_else(|e| e.into_inner()).get(process) {
            return Ok(p.clone());
        }
        let pid = self.pid(process).ok_or_else(|| LabError::NoProcess(process.into()))?;
        match telemetry_socket(&self.runtime_dir(), pid, START_TIMEOUT) {
            Ok(path) => {
                self.sockets.lock().unwrap_or_else(|e| e.into_inner()).insert(process.into(), path.clone());
                Ok(path)
            }
            Err(why) => Err(LabError::Process {
                process: process.into(),
                message: format!(
                    "{why} (pid {pid}); stderr: {}",
                    self.stderr_of_exited(process, Duration::from_secs(2)).trim()
                ),
            }),
        }
    }

    /// Asks `process` a telemetry command (`/ethdev/stats,1`); the value under its name (`Null`
    /// when the process refused it).
    pub fn telemetry(&self, process: &str, cmd: &str) -> Result<Value, LabError> {
        let path = self.socket(process)?;
        let tel = |source| LabError::Telemetry { process: process.into(), source };
        let mut c = Client::connect(&path, ANSWER).map_err(tel)?;
        c.query(&path, cmd).map_err(tel)
    }

    /// A `hotplug_mp` command line in `process`; its answer.
    pub fn cmd(&mut self, process: &str, line: &str) -> Result<String, LabError> {
        let a = self.prompt(process)?;
        a.cmd(line).map_err(|source| LabError::Prompt { process: process.into(), source })
    }

    /// Sends a `hotplug_mp` command line to `process` without waiting for its answer, so that a
    /// test can act elsewhere while it runs (two operations at once); collect the answer with
    /// [`Lab::answer`].
    pub fn send(&mut self, process: &str, line: &str) -> Result<(), LabError> {
        let a = self.prompt(process)?;
        a.send_line(line).map_err(|source| LabError::Prompt { process: process.into(), source })
    }

    /// The answer to the command [`Lab::send`] gave `process`, waiting at most `within`.
    pub fn answer(&mut self, process: &str, within: Duration) -> Result<String, LabError> {
        let a = self.prompt(process)?;
        a.answer_within(within).map_err(|source| LabError::Prompt { process: process.into(), source })
    }

    fn prompt(&mut self, process: &str) -> Result<&mut AppProc, LabError> {
        match self.procs.get_mut(process) {
            Some(Proc::Prompt(a)) => Ok(a),
            Some(Proc::App { .. }) => Err(LabError::Process {
                process: process.into(),
                message: "is your app, not a hotplug_mp process: it takes no commands (observe it with telemetry)"
                    .into(),
            }),
            None => Err(LabError::NoProcess(process.into())),
        }
    }

    fn expect(&mut self, on: &str, line: &str, ok: &str) -> Result<String, LabError> {
        let a = self.cmd(on, line)?;
        if a.starts_with(ok) {
            Ok(a)
        } else {
            Err(LabError::Process { process: on.into(), message: format!("{line}: {a}") })
        }
    }

    /// Attaches `devargs` in every process, asked from `on` (a `hotplug_mp` process); its port id.
    pub fn attach(&mut self, on: &str, devargs: &str) -> Result<PortId, LabError> {
        let a = self.expect(on, &format!("attach {devargs}"), "attached device ")?;
        let name = a.trim_start_matches("attached device ").trim().to_string();
        let rows = self.telemetry(on, "/lab/ports")?;
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name.as_str())
            .and_then(|r| r["port_id"].as_u64())
            .map(|p| PortId(p as u16))
            .ok_or_else(|| LabError::Process {
                process: on.into(),
                message: format!("{name} attached but not in /lab/ports"),
            })
    }

    /// Detaches a port (id, name or devargs) in every process, asked from `on`.
    pub fn detach(&mut self, on: &str, target: &str) -> Result<(), LabError> {
        self.expect(on, &format!("detach {target}"), "detached device ").map(|_| ())
    }

    /// Locks a port in `on` (its detach is vetoed until unlocked).
    pub fn lock(&mut self, on: &str, port: PortId) -> Result<(), LabError> {
        self.expect(on, &format!("lock {port}"), "locked").map(|_| ())
    }

    /// Undoes one lock.
    pub fn unlock(&mut self, on: &str, port: PortId) -> Result<(), LabError> {
        self.expect(on, &format!("unlock {port}"), "unlocked").map(|_| ())
    }

    fn nic_control(&self, line: &str) -> Result<(), LabError> {
        self.nic_command(line).map(|_| ())
    }

    /// A line of lab-nic's control protocol (`stats BDF`, `connections BDF`, `list`, ...); the
    /// reply after its `ok`, or the error it gave.
    pub fn nic_command(&self, line: &str) -> Result<String, LabError> {
        if self.nic.is_none() {
            return Err(LabError::Nic("this lab has no emulated NIC".into()));
        }
        let io = |e: std::io::Error| LabError::Nic(format!("control socket: {e}"));
        let mut s = UnixStream::connect(&self.control).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
        writeln!(s, "{line}").map_err(io)?;
        let mut r = String::new();
        BufReader::new(s).read_line(&mut r).map_err(io)?;
        if let Some(rest) = r.strip_prefix("ok") {
            Ok(rest.trim().to_string())
        } else {
            Err(LabError::Nic(format!("{line}: {}", r.trim())))
        }
    }

    /// Surprise removal of an emulated function (the drivers see it gone; the primary detaches
    /// it everywhere).
    pub fn unplug(&self, bdf: &str) -> Result<(), LabError> {
        self.nic_control(&format!("unplug {bdf}"))
    }

    /// An unplugged function comes back (attach it again to use it).
    pub fn plug(&self, bdf: &str) -> Result<(), LabError> {
        self.nic_control(&format!("plug {bdf}"))
    }

    /// Pulls a function's cable.
    pub fn link_down(&self, bdf: &str) -> Result<(), LabError> {
        self.nic_control(&format!("link down {bdf}"))
    }

    /// Plugs a function's cable back.
    pub fn link_up(&self, bdf: &str) -> Result<(), LabError> {
        self.nic_control(&format!("link up {bdf}"))
    }

    /// The ports `process` holds a handle for, with their names (from its `/lab/ports`).
    pub fn ports(&self, process: &str) -> Result<Vec<(PortId, String)>, LabError> {
        Ok(held_ports(&self.telemetry(process, "/lab/ports")?))
    }

    /// `process`'s counters of `port` (its `/ethdev/stats`).
    pub fn stats(&self, process: &str, port: PortId) -> Result<PortStats, LabError> {
        let v = self.telemetry(process, &format!("/ethdev/stats,{port}"))?;
        if v.is_null() {
            return Err(LabError::Process { process: process.into(), message: format!("has no port {port}") });
        }
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(PortStats {
            ipackets: n("ipackets"),
            opackets: n("opackets"),
            ibytes: n("ibytes"),
            obytes: n("obytes"),
            imissed: n("imissed"),
            ierrors: n("ierrors"),
            oerrors: n("oerrors"),
            rx_nombuf: n("rx_nombuf"),
        })
    }

    /// Every live process's ports, or what differs.
    pub fn consistent(&self) -> Result<Vec<(PortId, String)>, String> {
        let mut views: Vec<(String, Vec<(PortId, String)>)> = Vec::new();
        for name in self.processes() {
            match self.ports(&name) {
                Ok(v) => views.push((name, v)),
                Err(e) => return Err(e.to_string()),
            }
        }
        let first = views.first().map(|(_, v)| v.clone()).unwrap_or_default();
        if views.iter().all(|(_, v)| *v == first) {
            Ok(first)
        } else {
            Err(views.iter().map(|(n, v)| format!("{n}: {v:?}")).collect::<Vec<_>>().join("; "))
        }
    }

    /// Panics unless every live process lists the same ports with the same ids (waiting up to
    /// 5 s for an operation in flight to end).
    pub fn assert_consistent(&self) {
        if let Err(e) =
            self.wait_until(Duration::from_secs(5), "every process lists the same ports", |l| l.consistent().ok())
        {
            panic!("{e}");
        }
    }

    /// Polls `f` every 20 ms until it returns `Some`, at most `within`; the error names `what`
    /// and, for a consistency wait, the views last seen.
    pub fn wait_until<T>(
        &self,
        within: Duration,
        what: &str,
        mut f: impl FnMut(&Lab) -> Option<T>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                let last = match self.consistent() {
                    Ok(v) => format!(" (ports everywhere: {v:?})"),
                    Err(e) => format!(" (views: {e})"),
                };
                return Err(LabError::Timeout { what: what.into(), within, last });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops a process cleanly (`quit` for hotplug_mp, SIGTERM for yours) and forgets it; its exit
    /// status, or `None` when it had to be killed after 10 s.
    pub fn quit(&mut self, process: &str) -> Result<Option<std::process::ExitStatus>, LabError> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).remove(process);
        match self.procs.remove(process) {
            Some(Proc::Prompt(a)) => Ok(a.quit(Duration::from_secs(10))),
            Some(Proc::App { mut child, .. }) => Ok(terminate(&mut child, Duration::from_secs(10))),
            None => Err(LabError::NoProcess(process.into())),
        }
    }

    /// Kills a process (SIGKILL) and forgets it.
    pub fn kill(&mut self, process: &str) -> Result<(), LabError> {
        match self.procs.remove(process) {
            Some(p) => {
                stop(p, Duration::ZERO);
                self.sockets.lock().unwrap_or_else(|e| e.into_inner()).remove(process);
                Ok(())
            }
            None => Err(LabError::NoProcess(process.into())),
        }
    }
}

/// The telemetry socket in `dir` whose greeting carries `pid`, waited for at most `within`;
/// else why not ("exited", "serves no telemetry").
pub(crate) fn telemetry_socket(dir: &Path, pid: u32, within: Duration) -> Result<PathBuf, &'static str> {
    let deadline = Instant::now() + within;
    loop {
        for (_, path) in telemetry::sockets_in(dir) {
            let Ok(c) = Client::connect(&path, ANSWER) else { continue };
            if c.greeting()["pid"].as_u64() == Some(u64::from(pid)) {
                return Ok(path);
            }
        }
        if !alive(pid) {
            return Err("exited");
        }
        if Instant::now() >= deadline {
            return Err("serves no telemetry");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ports a process holds a handle for, from its `/lab/ports` answer.
pub(crate) fn held_ports(rows: &Value) -> Vec<(PortId, String)> {
    rows.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["local_handle"] == "attached" && r["state"] == "attached")
        .filter_map(|r| Some((PortId(r["port_id"].as_u64()? as u16), r["name"].as_str()?.to_string())))
        .collect()
}

/// Whether `pid` runs (a zombie, exited but not reaped yet, does not).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// `quit` (hotplug_mp) or SIGTERM (yours), killed after `grace` (at once when it is zero); reaped.
fn stop(p: Proc, grace: Duration) {
    match p {
        Proc::Prompt(a) if grace.is_zero() => a.kill(),
        // `quit` kills it if it does not exit within `grace`.
        Proc::Prompt(a) => drop(a.quit(grace)),
        Proc::App { mut child, .. } => drop(terminate(&mut child, grace)),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Apps and secondaries first (newest first), the primary last, then the emulator.
        let mut names = self.processes();
        names.reverse();
        for n in names {
            if let Some(p) = self.procs.remove(&n) {
                stop(p, Duration::from_secs(5));
            }
        }
        if let Some(mut nic) = self.nic.take() {
            terminate(&mut nic, Duration::from_secs(5));
        }
        // The memory file where the primary said it is (hugetlbfs or /dev/shm; --huge-dir too),
        // and wherever else the runtime may have put it.
        let files = self.mem_file.iter().cloned().chain(lab_core::mem::possible_files(&self.prefix));
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(self.runtime_dir());
        for i in &self.interfaces {
            if Path::new("/sys/class/net").join(i).exists() {
                let _ = Command::new("ip").args(["link", "delete", i]).stderr(Stdio::null()).status();
            }
        }
        // The temp dir (sysfs, control socket) goes with `_tmp`.
    }
}
