//! Scenario files: a lab (emulated NICs, vdevs, processes, EAL options, faults) and the steps
//! to run in it, in TOML.
//!
//! A full example (every key; most have defaults):
//!
//! ```toml
//! name = "attach from a secondary, traffic between two cabled NICs"   # default: file stem
//! description = "what this checks"
//!
//! [lab]
//! secondaries = 2                          # s1, s2 start after the primary (default 1)
//! vdevs = ["net_null0"]                    # --vdev=... given to the primary at start
//! eal = ["--hotplug-timeout-ms=500"]       # extra EAL options of every process
//! answer_timeout_ms = 20000                # how long a command may take to answer (default 20000)
//! settle_ms = 3000                         # how long the views may take to agree after a step (default 3000)
//! taps = ["lt${run}"]                      # interfaces to delete at teardown (net_tap iface= are added)
//! requires = ["net_ring"]                  # drivers needed beyond those the devices name
//! device_threads = "auto"                  # lab-nic --device-threads: auto | per-function | 1-256
//!
//! [[lab.nic]]                              # one emulated function each, all served by one lab-nic
//! bdf = "0000:00:05.0"
//! model = "ixgbe"                          # default ixgbe
//! wire = "peer=0000:00:06.0"               # loopback | none | peer=BDF | tap=NAME | pcap=RX:TX
//! mac = "02:00:00:00:05:00"                # optional
//!
//! [[lab.nic]]
//! bdf = "0000:00:06.0"
//! wire = "peer=0000:00:05.0"
//!
//! [lab.process.s2]                         # per-process extras
//! eal = ["--lab-fault=attach:net_null1:fail"]
//!
//! [lab.process.s3]
//! late = true                              # not started with the lab: a `start = "s3"` step starts it
//!
//! [lab.process.fwd]                        # your own lab-core binary as a secondary: it gets the
//! cmd = ["${bin}/lab-fwd", "--pair", "0000:00:05.0,0000:00:06.0"]  # EAL options, `--`, then these
//!                                          # (relative paths: to this file; ${bin}: lab's own dir)
//!
//! [[step]]
//! on = "s1"                                # primary (default) | s1 | s2 | ...
//! attach = "0000:00:05.0"                  # hotplug_mp `attach <devargs>`
//! ports = { 0 = "net_null0", 1 = "0000:00:05.0" }   # every live process lists exactly these
//!
//! [[step]]
//! attach = "net_null1"
//! failure = "injected fault"               # the answer must be a failure containing this
//!
//! [[step]]
//! on = "s2"
//! send = { port = 1, count = 32, size = 64 }        # `send 1 32 64`: all 32 must be sent
//!
//! [[step]]
//! recv = { port = 2, count = 32, timeout_ms = 2000 } # `recv`: at least 32 (or `expect = N` exactly)
//!
//! [[step]]
//! link_down = "0000:00:05.0"              # lab-nic control socket; also link_up, unplug
//!
//! [[step]]
//! wait_ms = 500
//!
//! [[step]]
//! kill = "s2"                              # SIGKILL; also quit, restart (same arguments), start (late ones)
//!
//! [[step]]                                 # a process's counters, read over its telemetry, reach
//! expect_stats = { on = "fwd", port = 0, rx_min = 32, tx_min = 0, within_ms = 5000 }   # these in time
//! ```
//!
//! Every step has exactly one action key: `attach`, `detach`, `lock`, `unlock`, `send`, `recv`,
//! `cmd` (any hotplug_mp command line), `link_down`, `link_up`, `unplug`, `kill`, `quit`, `restart`,
//! `start`, `wait_ms`, `join`, `expect_stats`. A `cmd` process takes no commands (it has no prompt):
//! it is observed through telemetry, in the consistency check after every step and by
//! `expect_stats`, and `lab sweep` injects its faults like any process's. `background = true` sends a process command without waiting (traffic
//! during an unplug); a later `join = "s1"` step collects and checks its answer. Expectations: `expect = "ok"` (the default for process commands), `expect =
//! "any"`, or `failure = "substring"`; `ports` checks every live process (port id and name); after
//! every step the runner checks anyway that every live process lists the same ports with the same
//! ids. `${run}` in any string becomes a short id unique to the run (for interface names), `${dir}`
//! the run's own temporary directory.
//!
//! A file that does not parse, has an unknown key, a step with no or two actions, or a process not
//! in the lab is refused with the file, the line and what was expected; nothing is started.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use lab_core::ethdev::PortId;
use serde::Deserialize;

/// Default time a command may take to answer.
pub const DEFAULT_ANSWER_TIMEOUT_MS: u64 = 20_000;
/// Default time the processes' views may take to agree after a step.
pub const DEFAULT_SETTLE_MS: u64 = 3_000;
/// Most secondaries a lab may have.
pub const MAX_SECONDARIES: usize = 16;

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Could not read it.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Syntax or a value that does not fit.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong and what was expected.
        message: String,
    },
}

/// Which process a step runs in.
pub type ProcName = String;

/// One emulated PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// PCI address, `0000:00:05.0`.
    pub bdf: String,
    /// Emulated model (`ixgbe`, `i40e`).
    #[serde(default = "default_model")]
    pub model: String,
    /// Wire: `loopback`, `none`, `peer=BDF`, `tap=NAME`, `pcap=RX:TX`.
    #[serde(default)]
    pub wire: Option<String>,
    /// MAC address.
    #[serde(default)]
    pub mac: Option<String>,
}

fn default_model() -> String {
    "ixgbe".into()
}

/// Per-process extras.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcSpec {
    /// Extra EAL options (after the lab's).
    #[serde(default)]
    pub eal: Vec<String>,
    /// Started by a `start` step, not with the lab.
    #[serde(default)]
    pub late: bool,
    /// Your own lab-core binary and its app arguments: the process is that binary (a
    /// secondary), not `hotplug_mp`. The runner puts the EAL options (prefix, proc type, the
    /// lab's `eal`, a sweep's `--lab-fault`) before the app arguments, with `--` between. A
    /// relative path is relative to the scenario file; `${bin}` is the directory of `lab`'s own
    /// binaries (the build's target dir).
    #[serde(default)]
    pub cmd: Vec<String>,
}

/// The lab a scenario runs in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    /// Emulated functions.
    #[serde(default, rename = "nic")]
    pub nics: Vec<NicSpec>,
    /// `--vdev` of the primary.
    #[serde(default)]
    pub vdevs: Vec<String>,
    /// Secondaries started with the lab (s1..sN).
    #[serde(default = "one")]
    pub secondaries: usize,
    /// EAL options of every process.
    #[serde(default)]
    pub eal: Vec<String>,
    /// Per-process extras.
    #[serde(default)]
    pub process: BTreeMap<String, ProcSpec>,
    /// Answer timeout per command.
    #[serde(default = "default_answer")]
    pub answer_timeout_ms: u64,
    /// How long views may take to agree after a step.
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
    /// Interfaces removed at teardown.
    #[serde(default)]
    pub taps: Vec<String>,
    /// Drivers needed (beyond those named by the devices).
    #[serde(default)]
    pub requires: Vec<String>,
    /// lab-nic's `--device-threads` (`auto`, `per-function` or a count); default lab-nic's.
    #[serde(default, deserialize_with = "device_threads")]
    pub device_threads: Option<String>,
}

/// Largest `device_threads` count (lab-nic's limit).
pub const MAX_DEVICE_THREADS: i64 = 256;

/// `device_threads = "auto" | "per-function" | N` (N also as a string), checked here so a bad
/// value is an error at its line, not a lab-nic that refuses to start.
fn device_threads<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        N(i64),
    }
    let bad = |v: &dyn fmt::Display| {
        serde::de::Error::custom(format!(
            "device_threads = {v}: expected \"auto\", \"per-function\" or 1-{MAX_DEVICE_THREADS}"
        ))
    };
    let count = |n: i64| (1..=MAX_DEVICE_THREADS).contains(&n).then(|| n.to_string());
    match V::deserialize(d).map_err(|_: D::Error| bad(&"that"))? {
        V::S(s) if s == "auto" || s == "per-function" => Ok(Some(s)),
        V::S(s) => s.parse().ok().and_then(count).map(Some).ok_or_else(|| bad(&format!("{s:?}"))),
        V::N(n) => count(n).map(Some).ok_or_else(|| bad(&n)),
    }
}

fn one() -> usize {
    1
}
fn default_answer() -> u64 {
    DEFAULT_ANSWER_TIMEOUT_MS
}
fn default_settle() -> u64 {
    DEFAULT_SETTLE_MS
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `attach <devargs>` in the step's process.
    Attach(String),
    /// `detach <target>`.
    Detach(String),
    /// `lock <port>`.
    Lock(PortId),
    /// `unlock <port>`.
    Unlock(PortId),
    /// `send <port> <count> <size>`.
    Send {
        /// Port.
        port: PortId,
        /// Frames.
        count: u64,
        /// Frame size.
        size: u64,
    },
    /// `recv <port> <count> <timeout>`.
    Recv {
        /// Port.
        port: PortId,
        /// Frames waited for.
        count: u64,
        /// Wait.
        timeout_ms: u64,
        /// Exact number expected (default: at least `count`).
        exact: Option<u64>,
    },
    /// Any command line.
    Cmd(String),
    /// Cable down (lab-nic control socket).
    LinkDown(String),
    /// Cable up.
    LinkUp(String),
    /// Surprise removal.
    Unplug(String),
    /// SIGKILL a process.
    Kill(ProcName),
    /// `quit` a process.
    Quit(ProcName),
    /// Start a stopped or dead process again with its arguments.
    Restart(ProcName),
    /// Start a late process.
    Start(ProcName),
    /// Pause.
    Wait(u64),
    /// Wait for the answer of a process's background command and check it.
    Join(ProcName),
    /// The step's process's counters of `port` (its telemetry) reach these, within the time.
    ExpectStats {
        /// Port.
        port: PortId,
        /// Packets received, at least.
        rx_min: u64,
        /// Packets sent, at least.
        tx_min: u64,
        /// How long it may take.
        within_ms: u64,
    },
    /// The step's `hotplug_mp` reports a port event (`event: port P <event>` on its stderr);
    /// what it reported before is passed over.
    ExpectEvent {
        /// Port.
        port: PortId,
        /// `new`, `destroy`, `link up`, `link down` or `removed`.
        event: String,
        /// How long it may take.
        within_ms: u64,
    },
}

impl Action {
    /// The hotplug_mp command line, for actions run inside a process.
    pub fn command(&self) -> Option<String> {
        Some(match self {
            Action::Attach(a) => format!("attach {a}"),
            Action::Detach(a) => format!("detach {a}"),
            Action::Lock(p) => format!("lock {p}"),
            Action::Unlock(p) => format!("unlock {p}"),
            Action::Send { port, count, size } => format!("send {port} {count} {size}"),
            Action::Recv { port, count, timeout_ms, .. } => format!("recv {port} {count} {timeout_ms}"),
            Action::Cmd(c) => c.clone(),
            _ => return None,
        })
    }

    /// Whether the action is a hotplug operation (attach or detach).
    pub fn is_hotplug(&self) -> bool {
        matches!(self, Action::Attach(_) | Action::Detach(_))
    }

    fn map_strings(&mut self, f: &dyn Fn(&str) -> String) {
        match self {
            Action::Attach(s)
            | Action::Detach(s)
            | Action::Cmd(s)
            | Action::LinkDown(s)
            | Action::LinkUp(s)
            | Action::Unplug(s) => *s = f(s),
            _ => {}
        }
    }
}

/// What the answer must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Not a failure.
    Ok,
    /// Anything.
    Any,
    /// A failure containing this text.
    Failure(String),
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of the step in its file (0 when built in code).
    pub line: usize,
    /// The process it runs in.
    pub on: ProcName,
    /// What it does.
    pub action: Action,
    /// What the answer must be.
    pub expect: Expect,
    /// The ports every live process must list afterwards.
    pub ports: Option<Vec<(u16, String)>>,
    /// The command runs in the background: its answer is checked by a later `join` step, and
    /// the process is left out of the checks until then.
    pub background: bool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::LinkDown(b) => write!(f, "link down {b}"),
            Action::LinkUp(b) => write!(f, "link up {b}"),
            Action::Unplug(b) => write!(f, "unplug {b}"),
            Action::Kill(p) => write!(f, "kill {p}"),
            Action::Quit(p) => write!(f, "quit {p}"),
            Action::Restart(p) => write!(f, "restart {p}"),
            Action::Start(p) => write!(f, "start {p}"),
            Action::Wait(ms) => write!(f, "wait {ms} ms"),
            Action::Join(p) => write!(f, "join {p}"),
            Action::ExpectStats { port, rx_min, tx_min, within_ms } => {
                write!(f, "{}: port {port} counters rx >= {rx_min}, tx >= {tx_min} within {within_ms} ms", self.on)
            }
            Action::ExpectEvent { port, event, within_ms } => {
                write!(f, "{}: port {port} event {event:?} within {within_ms} ms", self.on)
            }
            a => {
                write!(f, "{}: {}", self.on, a.command().unwrap_or_default())?;
                if self.background {
                    f.write_str(" (background)")?;
                }
                Ok(())
            }
        }
    }
}

/// A parsed, checked scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Name (file stem by default).
    pub name: String,
    /// File it came from (empty when built in code).
    pub file: PathBuf,
    /// What it checks.
    pub description: String,
    /// The lab.
    pub lab: LabSpec,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Process names a lab has: primary, s1..sN, the apps (`cmd`), then the late ones.
pub fn process_names(lab: &LabSpec) -> Vec<String> {
    let mut v = vec!["primary".to_string()];
    v.extend((1..=lab.secondaries).map(|i| format!("s{i}")));
    for (k, p) in &lab.process {
        if !p.cmd.is_empty() && !p.late && !v.contains(k) {
            v.push(k.clone());
        }
    }
    for (k, p) in &lab.process {
        if p.late && !v.contains(k) {
            v.push(k.clone());
        }
    }
    v
}

impl LabSpec {
    /// Whether `name` is one of your binaries (observed through telemetry, takes no commands).
    pub fn is_app(&self, name: &str) -> bool {
        self.process.get(name).is_some_and(|p| !p.cmd.is_empty())
    }
}

impl Scenario {
    /// Replaces `${run}` and `${dir}` everywhere, and maps emulated PCI addresses onto others
    /// (real-NIC runs).
    pub fn substitute(&mut self, run: &str, dir: &Path, bdf_map: &[(String, String)]) {
        let dir = dir.display().to_string();
        let f = |s: &str| {
            let mut s = s.replace("${run}", run).replace("${dir}", &dir);
            // Two passes, so that a target address that is also a source is not mapped twice.
            for (i, (from, _)) in bdf_map.iter().enumerate() {
                s = s.replace(from.as_str(), &format!("\u{0}{i}\u{0}"));
            }
            for (i, (_, to)) in bdf_map.iter().enumerate() {
                s = s.replace(&format!("\u{0}{i}\u{0}"), to);
            }
            s
        };
        let lab = &mut self.lab;
        for v in lab.vdevs.iter_mut().chain(lab.eal.iter_mut()).chain(lab.taps.iter_mut()) {
            *v = f(v);
        }
        for p in lab.process.values_mut() {
            for v in p.eal.iter_mut().chain(p.cmd.iter_mut()) {
                *v = f(v);
            }
        }
        for n in lab.nics.iter_mut() {
            n.wire = n.wire.as_deref().map(f);
            n.bdf = f(&n.bdf);
        }
        for s in self.steps.iter_mut() {
            s.action.map_strings(&f);
            if let Some(p) = s.ports.as_mut() {
                for (_, n) in p.iter_mut() {
                    *n = f(n);
                }
            }
        }
    }

    /// Device names (as hotplug_mp names them) that the steps attach or detach by devargs or
    /// name, and the vdevs of the lab.
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            if let Ok(d) = lab_core::devargs::Devargs::parse(s) {
                let n = d.name().to_string();
                if !v.contains(&n) {
                    v.push(n);
                }
            }
        };
        for d in &self.lab.vdevs {
            add(d);
        }
        for s in &self.steps {
            match &s.action {
                Action::Attach(a) => add(a),
                Action::Detach(a) if a.parse::<u16>().is_err() => add(a),
                _ => {}
            }
        }
        v
    }

    /// Device names the steps attach (the lab's `--vdev`s are not among them).
    pub fn attached_devices(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for s in &self.steps {
            if let Action::Attach(a) = &s.action {
                if let Ok(d) = lab_core::devargs::Devargs::parse(a) {
                    if !v.iter().any(|x| x == d.name()) {
                        v.push(d.name().to_string());
                    }
                }
            }
        }
        v
    }

    /// Interfaces the lab may create: `taps`, `iface=` of net_tap devices, `tap=` wires.
    pub fn interfaces(&self) -> Vec<String> {
        let mut v = self.lab.taps.clone();
        let mut add = |s: &str| {
            if !v.iter().any(|x| x == s) {
                v.push(s.to_string());
            }
        };
        for d in self.lab.vdevs.iter().chain(self.steps.iter().filter_map(|s| match &s.action {
            Action::Attach(a) => Some(a),
            _ => None,
        })) {
            if d.starts_with("net_tap") || d.starts_with("eth_tap") {
                for kv in d.split(',').skip(1) {
                    if let Some(i) = kv.strip_prefix("iface=") {
                        add(i);
                    }
                }
            }
        }
        for n in &self.lab.nics {
            if let Some(t) = n.wire.as_deref().and_then(|w| w.strip_prefix("tap=")) {
                add(t);
            }
        }
        v
    }

    /// Whether any step needs the emulator's control socket.
    pub fn needs_emulator(&self) -> bool {
        self.steps.iter().any(|s| matches!(s.action, Action::LinkDown(_) | Action::LinkUp(_) | Action::Unplug(_)))
    }
}

/// Every `*.toml` under a file or directory, sorted.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|source| ScenarioError::Read { file: p.clone(), source })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

mod parse;
#[cfg(test)]
mod tests;
