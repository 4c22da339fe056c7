//! EAL-style options: one parser for every lab binary.
//!
//! A lab process is started as DPDK applications are, `app [EAL options] -- [application options]`.
//! [`Options::parse`] reads the EAL part and hands back the rest. It accepts:
//!
//! - the options the lab uses (`--proc-type`, `--file-prefix`, `-m`, `--log-level`, `--vdev`,
//!   `-a/--allow`, `-b/--block`, `--no-pci`, `--no-huge`, `--huge-dir`) and its own
//!   (`--hotplug-timeout-ms`, `--ipc-spin-us`, `--lab-fault`);
//! - the DPDK options a lab process has no use for (`-l`, `-n`, `--socket-mem`, ...), recorded in
//!   [`Options::ignored`] and logged at debug, so real DPDK command lines run unchanged.
//!
//! Long options take `--opt=value` or `--opt value`; short ones `-m 64`, `-m64` or `-m=64`. Long
//! options are matched exactly (no abbreviations). Parsing stops at `--` (dropped) or at the first
//! argument that is not an option (kept, with everything after it, as application arguments).
//! Every value is checked here, so a bad command line fails at start with the option, the value and
//! what was expected, never later and never by falling back to a default. Single-valued options
//! (`--proc-type`, `--file-prefix`, `-m`, `--huge-dir`, `--hotplug-timeout-ms`, `--ipc-spin-us`)
//! given twice are an error; `--log-level` may repeat (as in DPDK) and the last one wins; the list
//! options (`--vdev`, `-a`, `-b`, `--lab-fault`) accumulate in order. `--no-huge` with `--huge-dir`
//! is a conflict.
//!
//! [`Options::to_args`] renders the options back, to start another process on the same runtime.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tracing::debug;

use crate::addr::BusKind;
use crate::devargs::{self, Devargs, DevargsError};

/// Default `--file-prefix`.
pub const DEFAULT_FILE_PREFIX: &str = "lab";
/// Longest `--file-prefix`.
pub const MAX_FILE_PREFIX_LEN: usize = 64;
/// Largest `-m` in megabytes.
pub const MAX_MEM_MB: u64 = 65536;
/// Default `--hotplug-timeout-ms`.
pub const DEFAULT_HOTPLUG_TIMEOUT_MS: u64 = 5000;
/// Largest `--hotplug-timeout-ms` (ten minutes).
pub const MAX_HOTPLUG_TIMEOUT_MS: u64 = 600_000;
/// Largest `--ipc-spin-us`.
pub const MAX_IPC_SPIN_US: u64 = 1000;

/// What is wrong with a command line: every variant names the option as typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// No such option.
    #[error("unknown option {option:?} (see --help)")]
    UnknownOption {
        /// The option as typed.
        option: String,
    },
    /// The option needs a value and none followed.
    #[error("option {option} needs a value")]
    MissingValue {
        /// The option as typed.
        option: String,
    },
    /// A flag was given a value (`--no-pci=1`).
    #[error("option {option} takes no value, got {value:?}")]
    UnexpectedValue {
        /// The option as typed.
        option: String,
        /// The value given.
        value: String,
    },
    /// The value is out of range or malformed.
    #[error("{option}: bad value {value:?}: expected {expected}")]
    BadValue {
        /// The option as typed.
        option: String,
        /// The value given.
        value: String,
        /// What the option accepts.
        expected: String,
    },
    /// A `--vdev`, `--allow` or `--block` value is not valid device arguments.
    #[error("{option}: bad device arguments {value:?}: {source}")]
    BadDevargs {
        /// The option as typed.
        option: String,
        /// The value given.
        value: String,
        /// Why the devargs parser refused it.
        #[source]
        source: Box<DevargsError>,
    },
    /// A single-valued option was given twice.
    #[error("option {option} given more than once")]
    DuplicateOption {
        /// The option as typed the second time.
        option: String,
    },
    /// Two options that exclude each other were both given.
    #[error("options {option} and {other} cannot be used together")]
    Conflict {
        /// The option as typed.
        option: String,
        /// The option it conflicts with.
        other: String,
    },
    /// `-h` / `--help`: the caller prints [`usage`] and exits successfully.
    #[error("help requested")]
    HelpRequested,
}

fn bad_value(option: &str, value: &str, expected: impl Into<String>) -> OptionsError {
    OptionsError::BadValue { option: option.to_string(), value: value.to_string(), expected: expected.into() }
}

/// Which role the process takes in the multi-process runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProcType {
    /// Creates the runtime (shared memory, config lock) and serves hotplug requests.
    Primary,
    /// Attaches to a running primary's runtime.
    Secondary,
    /// Primary if no primary holds the config lock, else secondary.
    #[default]
    Auto,
}

impl ProcType {
    /// The option word: `primary`, `secondary` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcType::Primary => "primary",
            ProcType::Secondary => "secondary",
            ProcType::Auto => "auto",
        }
    }
}

impl fmt::Display for ProcType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProcType {
    type Err = OptionsError;

    /// Parses `primary`, `secondary` or `auto`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(ProcType::Primary),
            "secondary" => Ok(ProcType::Secondary),
            "auto" => Ok(ProcType::Auto),
            _ => Err(bad_value("--proc-type", s, "primary|secondary|auto")),
        }
    }
}

/// The hotplug step a fault is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// Attaching the device.
    Attach,
    /// Detaching the device.
    Detach,
    /// The pre-detach check (each process may veto a detach).
    PreDetach,
    /// A secondary's own attach, between the primary's yes and its own part: a hang there lets
    /// other operations overtake it, a failure makes its own part fail.
    Asked,
    /// A secondary's sync of the port table (at start, and when its primary is gone), between
    /// its first reading of the table's sequence counter and its snapshot, when the table then
    /// lists the device: a hang there lets operations run in between. Hang or crash only.
    Sync,
}

impl FaultOp {
    /// The option word: `attach`, `detach`, `pre-detach`, `asked` or `sync`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultOp::Attach => "attach",
            FaultOp::Detach => "detach",
            FaultOp::PreDetach => "pre-detach",
            FaultOp::Asked => "asked",
            FaultOp::Sync => "sync",
        }
    }
}

impl fmt::Display for FaultOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultOp {
    type Err = OptionsError;

    /// Parses `attach`, `detach`, `pre-detach`, `asked` or `sync`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "attach" => Ok(FaultOp::Attach),
            "detach" => Ok(FaultOp::Detach),
            "pre-detach" => Ok(FaultOp::PreDetach),
            "asked" => Ok(FaultOp::Asked),
            "sync" => Ok(FaultOp::Sync),
            _ => Err(bad_value("--lab-fault", s, "OP attach|detach|pre-detach|asked|sync")),
        }
    }
}

/// How the faulty process misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FaultMode {
    /// Replies with a failure.
    #[default]
    Fail,
    /// Never replies (the requester's timeout fires).
    Hang,
    /// Exits abruptly (the requester sees a dead peer).
    Crash,
}

impl FaultMode {
    /// The option word: `fail`, `hang` or `crash`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::Fail => "fail",
            FaultMode::Hang => "hang",
            FaultMode::Crash => "crash",
        }
    }
}

impl fmt::Display for FaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultMode {
    type Err = OptionsError;

    /// Parses `fail`, `hang` or `crash`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(FaultMode::Fail),
            "hang" => Ok(FaultMode::Hang),
            "crash" => Ok(FaultMode::Crash),
            _ => Err(bad_value("--lab-fault", s, "MODE fail|hang|crash")),
        }
    }
}

/// One injected fault: `--lab-fault=OP:DEVICE[:MODE]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FaultSpec {
    /// The step that fails.
    pub op: FaultOp,
    /// The device name, normalized (`0000:00:05.0`, `net_null0`).
    pub device: String,
    /// How it fails.
    pub mode: FaultMode,
}

const FAULT_FORM: &str =
    "OP:DEVICE[:MODE] with OP attach|detach|pre-detach|asked|sync and MODE fail|hang|crash (sync: hang|crash)";

impl FromStr for FaultSpec {
    type Err = OptionsError;

    /// Parses `OP:DEVICE[:MODE]`. DEVICE may contain `:` (a PCI address), so OP is taken from the
    /// front and MODE from the back only when the last `:` field is a mode.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| bad_value("--lab-fault", s, format!("{FAULT_FORM}; {why}"));
        let Some((op, rest)) = s.split_once(':') else {
            return Err(bad("no ':' after OP".into()));
        };
        let op =
            op.parse::<FaultOp>().map_err(|_| bad(format!("OP {op:?} is not attach|detach|pre-detach|asked|sync")))?;
        let (device, mode, last) = match rest.rsplit_once(':') {
            Some((d, m)) => match m.parse::<FaultMode>() {
                Ok(mode) => (d, mode, None),
                Err(_) => (rest, FaultMode::Fail, Some(m)),
            },
            None => (rest, FaultMode::Fail, None),
        };
        let (_, device, _) = devargs::parse_device_name(device, None).map_err(|e| match last {
            Some(m) if m.parse::<crate::bus::pci::PciAddr>().is_err() && !m.contains('.') => {
                bad(format!("DEVICE {device:?} is not a device name, or MODE {m:?} is not fail|hang|crash"))
            }
            _ => bad(format!("DEVICE: {e}")),
        })?;
        if op == FaultOp::Sync && mode == FaultMode::Fail {
            // A sync has no one to answer a failure to: it hangs or crashes.
            return Err(bad("OP sync takes MODE hang or crash, not fail".into()));
        }
        Ok(FaultSpec { op, device, mode })
    }
}

impl fmt::Display for FaultSpec {
    /// Writes `op:device:mode` (the mode always explicit).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.op, self.device, self.mode)
    }
}

/// The parsed EAL options of one lab process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--proc-type=primary|secondary|auto`, default auto.
    pub proc_type: ProcType,
    /// `--file-prefix=NAME`: names the runtime (its directory and shared memory), default `lab`.
    pub file_prefix: String,
    /// `-m MB`: shared memory size in megabytes, 1..=65536.
    pub mem_mb: Option<u64>,
    /// `--log-level`, normalized to a `tracing` level name: error, warn, info, debug or trace.
    /// DPDK forms are accepted: numbers 1..8 and `PATTERN:LEVEL` (the level is kept). The last
    /// `--log-level` given wins.
    pub log_level: Option<String>,
    /// `--vdev=ARGS`, in order, as given.
    pub vdevs: Vec<String>,
    /// `-a/--allow` (legacy `-w/--pci-whitelist`): the only PCI devices to probe, as given.
    pub allow: Vec<String>,
    /// `-b/--block` (legacy `--pci-blacklist`): PCI devices never to probe, as given.
    pub block: Vec<String>,
    /// `--no-pci`: probe no PCI device.
    pub no_pci: bool,
    /// `--no-huge`: never use hugetlbfs.
    pub no_huge: bool,
    /// `--huge-dir=DIR`: the hugetlbfs mount to use.
    pub huge_dir: Option<PathBuf>,
    /// `--hotplug-timeout-ms=N`: how long a hotplug request waits for every peer, default 5000.
    pub hotplug_timeout_ms: u64,
    /// `--ipc-spin-us=N`: bounded spin before blocking on IPC receive, 0 (off) to 1000.
    pub ipc_spin_us: u64,
    /// `--lab-fault=OP:DEVICE[:MODE]`, in order.
    pub faults: Vec<FaultSpec>,
    /// The application arguments after the EAL ones (what `parse` also returns), for telemetry's
    /// `/eal/app_params`.
    pub app_args: Vec<String>,
    /// `--no-telemetry`: serve no telemetry socket (`--telemetry`, the default, turns it back on).
    pub no_telemetry: bool,
    /// DPDK options accepted and ignored, one entry per occurrence as typed (`-l 0-3`,
    /// `--lcores=0@1`, `--in-memory`; a value given as a separate argument follows a space).
    pub ignored: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proc_type: ProcType::Auto,
            file_prefix: DEFAULT_FILE_PREFIX.to_string(),
            mem_mb: None,
            log_level: None,
            vdevs: Vec::new(),
            allow: Vec::new(),
            block: Vec::new(),
            no_pci: false,
            no_huge: false,
            huge_dir: None,
            hotplug_timeout_ms: DEFAULT_HOTPLUG_TIMEOUT_MS,
            ipc_spin_us: 0,
            faults: Vec::new(),
            app_args: Vec::new(),
            no_telemetry: false,
            ignored: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arity {
    Flag,
    Value,
    /// `--opt` or `--opt=value`; a separate value is taken only when it is a known word.
    Optional(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Id {
    ProcType,
    FilePrefix,
    Mem,
    LogLevel,
    Vdev,
    Allow,
    Block,
    NoPci,
    NoHuge,
    HugeDir,
    HotplugTimeout,
    IpcSpin,
    Fault,
    Help,
    Telemetry,
    NoTelemetry,
    Ignored,
}

/// Values `--syslog` may take as a separate argument: facilities (DPDK up to 23.11) and the
/// `when` words of later releases.
const SYSLOG_WORDS: &[&str] = &[
    "auth", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "security", "syslog", "user", "uucp", "local0",
    "local1", "local2", "local3", "local4", "local5", "local6", "local7", "auto", "always", "never",
];

/// Every option: name as typed (with dashes), arity, meaning.
const TABLE: &[(&str, Arity, Id)] = &[
    ("--proc-type", Arity::Value, Id::ProcType),
    ("--file-prefix", Arity::Value, Id::FilePrefix),
    ("-m", Arity::Value, Id::Mem),
    ("--log-level", Arity::Value, Id::LogLevel),
    ("--vdev", Arity::Value, Id::Vdev),
    ("-a", Arity::Value, Id::Allow),
    ("--allow", Arity::Value, Id::Allow),
    ("-w", Arity::Value, Id::Allow),
    ("--pci-whitelist", Arity::Value, Id::Allow),
    ("-b", Arity::Value, Id::Block),
    ("--block", Arity::Value, Id::Block),
    ("--pci-blacklist", Arity::Value, Id::Block),
    ("--no-pci", Arity::Flag, Id::NoPci),
    ("--no-huge", Arity::Flag, Id::NoHuge),
    ("--huge-dir", Arity::Value, Id::HugeDir),
    ("--hotplug-timeout-ms", Arity::Value, Id::HotplugTimeout),
    ("--ipc-spin-us", Arity::Value, Id::IpcSpin),
    ("--lab-fault", Arity::Value, Id::Fault),
    ("-h", Arity::Flag, Id::Help),
    ("--help", Arity::Flag, Id::Help),
    // DPDK options accepted and ignored, with DPDK's arity.
    ("-l", Arity::Value, Id::Ignored),
    ("-c", Arity::Value, Id::Ignored),
    ("-n", Arity::Value, Id::Ignored),
    ("-d", Arity::Value, Id::Ignored),
    ("-r", Arity::Value, Id::Ignored),
    ("-v", Arity::Flag, Id::Ignored),
    ("--main-lcore", Arity::Value, Id::Ignored),
    ("--master-lcore", Arity::Value, Id::Ignored),
    ("--lcores", Arity::Value, Id::Ignored),
    ("--socket-mem", Arity::Value, Id::Ignored),
    ("--socket-limit", Arity::Value, Id::Ignored),
    ("--in-memory", Arity::Flag, Id::Ignored),
    ("--iova-mode", Arity::Value, Id::Ignored),
    ("--base-virtaddr", Arity::Value, Id::Ignored),
    ("--legacy-mem", Arity::Flag, Id::Ignored),
    ("--single-file-segments", Arity::Flag, Id::Ignored),
    ("--match-allocations", Arity::Flag, Id::Ignored),
    ("--syslog", Arity::Optional(SYSLOG_WORDS), Id::Ignored),
    ("--telemetry", Arity::Flag, Id::Telemetry),
    ("--no-telemetry", Arity::Flag, Id::NoTelemetry),
    ("--no-shconf", Arity::Flag, Id::Ignored),
    ("--vfio-intr", Arity::Value, Id::Ignored),
    ("--create-uio-dev", Arity::Flag, Id::Ignored),
];

const USAGE: &str = "\
EAL options (app [EAL options] -- [application options]):
  --proc-type=primary|secondary|auto
                          role in the multi-process runtime (default auto)
  --file-prefix=NAME      runtime name, 1..=64 of [A-Za-z0-9_.-] (default lab)
  -m MB                   shared memory size in megabytes, 1..=65536
  --log-level=LEVEL       error|warn|info|debug|trace, DPDK 1..8, or PATTERN:LEVEL
  --vdev=DEVARGS          add a virtual device (net_null0,size=64); repeatable
  -a, --allow=DEVARGS     probe only this PCI device (0000:00:05.0[,key=value]); repeatable
                          (legacy -w, --pci-whitelist)
  -b, --block=ADDR        never probe this PCI device; repeatable (legacy --pci-blacklist)
  --no-pci                probe no PCI device
  --no-huge               never use hugetlbfs
  --huge-dir=DIR          hugetlbfs mount to use
  --hotplug-timeout-ms=N  how long a hotplug request waits for peers, 1..=600000 (default 5000)
  --ipc-spin-us=N         spin before blocking on IPC receive, 0..=1000 (default 0, off)
  --lab-fault=OP:DEVICE[:MODE]
                          inject a fault: OP attach|detach|pre-detach|asked|sync, MODE
                          fail|hang|crash (default fail; sync: hang|crash); repeatable
  --telemetry, --no-telemetry
                          serve (default) or not the DPDK telemetry v2 socket in the runtime dir
  -h, --help              print this help
DPDK options accepted and ignored:
  -l LIST, -c MASK, -n N, -d LIB, -r N, -v, --main-lcore=ID, --master-lcore=ID, --lcores=MAP,
  --socket-mem=LIST, --socket-limit=LIST, --in-memory, --iova-mode=MODE, --base-virtaddr=ADDR,
  --legacy-mem, --single-file-segments, --match-allocations, --syslog[=WHEN],
  --no-shconf, --vfio-intr=MODE, --create-uio-dev
";

/// The help text: every option, its values and default.
pub fn usage() -> &'static str {
    USAGE
}

fn parse_bounded(option: &str, value: &str, min: u64, max: u64, unit: &str) -> Result<u64, OptionsError> {
    devargs::parse_u64(value)
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| bad_value(option, value, format!("an integer in {min}..={max} ({unit})")))
}

fn check_file_prefix(option: &str, value: &str) -> Result<String, OptionsError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_FILE_PREFIX_LEN
        && value != "."
        && value != ".."
        && value != crate::telemetry::DPDK_VIEW
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(bad_value(
            option,
            value,
            format!(
                "1..={MAX_FILE_PREFIX_LEN} characters of [A-Za-z0-9_.-], not \".\", \"..\" or \"{}\" (reserved for the telemetry view)",
                crate::telemetry::DPDK_VIEW
            ),
        ))
    }
}

/// Maps a level word or DPDK number to a `tracing` level name.
fn level_name(s: &str) -> Option<&'static str> {
    if let Ok(n) = s.parse::<u8>() {
        return match n {
            1..=4 => Some("error"),
            5 => Some("warn"),
            6 => Some("info"),
            7 => Some("debug"),
            8 => Some("trace"),
            _ => None,
        };
    }
    match s.to_ascii_lowercase().as_str() {
        "error" | "err" | "emerg" | "alert" | "crit" => Some("error"),
        "warn" | "warning" => Some("warn"),
        "info" | "notice" => Some("info"),
        "debug" => Some("debug"),
        "trace" => Some("trace"),
        _ => None,
    }
}

/// Normalizes `--log-level`: a level, a DPDK number 1..8, or DPDK's `PATTERN:LEVEL` / `PATTERN,LEVEL`.
fn normalize_log_level(option: &str, value: &str) -> Result<String, OptionsError> {
    let level = match value.rfind([':', ',']) {
        Some(i) if i > 0 => level_name(&value[i + 1..]),
        Some(_) => None,
        None => level_name(value),
    };
    level
        .map(str::to_string)
        .ok_or_else(|| bad_value(option, value, "error|warn|info|debug|trace, a DPDK level 1..8, or PATTERN:LEVEL"))
}

fn check_devargs(option: &str, value: &str, bus: BusKind) -> Result<String, OptionsError> {
    let d = Devargs::parse(value).map_err(|source| OptionsError::BadDevargs {
        option: option.to_string(),
        value: value.to_string(),
        source: Box::new(source),
    })?;
    if d.bus() != bus {
        let expected = match bus {
            BusKind::Vdev => "a virtual device (net_null0[,key=value...]), not a PCI address",
            BusKind::Pci => "a PCI address (0000:00:05.0[,key=value...])",
        };
        return Err(bad_value(option, value, expected));
    }
    Ok(value.to_string())
}

impl Options {
    /// Parses EAL arguments (without argv\[0\]). Stops at `--` (dropped) or at the first non-option
    /// argument (kept); returns the remaining application arguments.
    ///
    /// `-h`/`--help` returns [`OptionsError::HelpRequested`]; the caller prints [`usage`].
    pub fn parse<I, S>(args: I) -> Result<(Options, Vec<String>), OptionsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut args = args.into_iter().map(Into::into).peekable();
        let mut opts = Options::default();
        let mut seen: HashSet<Id> = HashSet::new();
        let mut first_name: Vec<(Id, String)> = Vec::new();
        let mut app = Vec::new();

        while let Some(arg) = args.next() {
            if arg == "--" {
                break;
            }
            if !arg.starts_with('-') || arg == "-" {
                app.push(arg);
                break;
            }
            // Split into the option name and an attached value, if any.
            let (name, attached): (String, Option<String>) = if arg.starts_with("--") {
                match arg.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (arg.clone(), None),
                }
            } else {
                let mut chars = arg.char_indices().skip(1);
                let end = match chars.next() {
                    Some((i, c)) => i + c.len_utf8(),
                    None => arg.len(),
                };
                let rest = &arg[end..];
                let rest = rest.strip_prefix('=').unwrap_or(rest);
                (arg[..end].to_string(), (end < arg.len()).then(|| rest.to_string()))
            };
            let Some(&(_, arity, id)) = TABLE.iter().find(|(n, _, _)| *n == name) else {
                return Err(OptionsError::UnknownOption { option: name });
            };
            let mut separate = false;
            let value = match (arity, attached) {
                (Arity::Flag, Some(v)) => return Err(OptionsError::UnexpectedValue { option: name, value: v }),
                (Arity::Flag, None) => None,
                (_, Some(v)) => Some(v),
                (Arity::Value, None) => {
                    separate = true;
                    Some(args.next().ok_or_else(|| OptionsError::MissingValue { option: name.clone() })?)
                }
                (Arity::Optional(words), None) => match args.peek() {
                    Some(next) if words.contains(&next.as_str()) => {
                        separate = true;
                        args.next()
                    }
                    _ => None,
                },
            };
            let v = value.as_deref().unwrap_or_default();

            if matches!(id, Id::ProcType | Id::FilePrefix | Id::Mem | Id::HugeDir | Id::HotplugTimeout | Id::IpcSpin)
                && !seen.insert(id)
            {
                return Err(OptionsError::DuplicateOption { option: name });
            }
            if !first_name.iter().any(|(i, _)| *i == id) {
                first_name.push((id, name.clone()));
            }

            match id {
                Id::ProcType => {
                    opts.proc_type = v.parse().map_err(|_| bad_value(&name, v, "primary|secondary|auto"))?
                }
                Id::FilePrefix => opts.file_prefix = check_file_prefix(&name, v)?,
                Id::Mem => opts.mem_mb = Some(parse_bounded(&name, v, 1, MAX_MEM_MB, "megabytes")?),
                Id::LogLevel => opts.log_level = Some(normalize_log_level(&name, v)?),
                Id::Vdev => opts.vdevs.push(check_devargs(&name, v, BusKind::Vdev)?),
                Id::Allow => opts.allow.push(check_devargs(&name, v, BusKind::Pci)?),
                Id::Block => opts.block.push(check_devargs(&name, v, BusKind::Pci)?),
                Id::NoPci => opts.no_pci = true,
                Id::Telemetry => opts.no_telemetry = false,
                Id::NoTelemetry => opts.no_telemetry = true,
                Id::NoHuge => opts.no_huge = true,
                Id::HugeDir => {
                    if v.is_empty() {
                        return Err(bad_value(&name, v, "a non-empty directory path"));
                    }
                    opts.huge_dir = Some(PathBuf::from(v));
                }
                Id::HotplugTimeout => {
                    opts.hotplug_timeout_ms = parse_bounded(&name, v, 1, MAX_HOTPLUG_TIMEOUT_MS, "milliseconds")?
                }
                Id::IpcSpin => opts.ipc_spin_us = parse_bounded(&name, v, 0, MAX_IPC_SPIN_US, "microseconds")?,
                Id::Fault => opts.faults.push(v.parse().map_err(|e| match e {
                    OptionsError::BadValue { value, expected, .. } => {
                        OptionsError::BadValue { option: name.clone(), value, expected }
                    }
                    other => other,
                })?),
                Id::Help => return Err(OptionsError::HelpRequested),
                Id::Ignored => {
                    let text = match (&value, separate) {
                        (Some(v), true) => format!("{name} {v}"),
                        _ => arg.clone(),
                    };
                    debug!(option = %text, "DPDK option accepted and ignored");
                    opts.ignored.push(text);
                }
            }
        }
        app.extend(args);

        if opts.no_huge && opts.huge_dir.is_some() {
            let name_of =
                |id: Id| first_name.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()).unwrap_or_default();
            return Err(OptionsError::Conflict { option: name_of(Id::HugeDir), other: name_of(Id::NoHuge) });
        }
        opts.app_args = app.clone();
        Ok((opts, app))
    }

    /// The options rendered back as arguments, suitable to start another lab process on the same
    /// runtime. `--proc-type` and the ignored DPDK options are omitted; defaults are omitted except
    /// `--file-prefix`, which names the runtime.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec![format!("--file-prefix={}", self.file_prefix)];
        if let Some(mb) = self.mem_mb {
            out.push("-m".into());
            out.push(mb.to_string());
        }
        if let Some(level) = &self.log_level {
            out.push(format!("--log-level={level}"));
        }
        out.extend(self.vdevs.iter().map(|v| format!("--vdev={v}")));
        out.extend(self.allow.iter().map(|a| format!("--allow={a}")));
        out.extend(self.block.iter().map(|b| format!("--block={b}")));
        if self.no_pci {
            out.push("--no-pci".into());
        }
        if self.no_huge {
            out.push("--no-huge".into());
        }
        if self.no_telemetry {
            out.push("--no-telemetry".into());
        }
        if let Some(dir) = &self.huge_dir {
            out.push(format!("--huge-dir={}", dir.display()));
        }
        if self.hotplug_timeout_ms != DEFAULT_HOTPLUG_TIMEOUT_MS {
            out.push(format!("--hotplug-timeout-ms={}", self.hotplug_timeout_ms));
        }
        if self.ipc_spin_us != 0 {
            out.push(format!("--ipc-spin-us={}", self.ipc_spin_us));
        }
        out.extend(self.faults.iter().map(|f| format!("--lab-fault={f}")));
        out
    }
}

#[cfg(test)]
mod tests;
