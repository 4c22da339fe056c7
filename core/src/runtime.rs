//! The runtime: runtime dir, primary/secondary decision, shared memory, IPC channel, logging.
//!
//! `Runtime::init` does what DPDK's EAL init does for a multi-process application:
//! 1. the runtime dir `$XDG_RUNTIME_DIR/hotplug-lab/<prefix>` (else `/var/run/hotplug-lab/<prefix>`
//!    for root, else `/tmp/hotplug-lab-<uid>/<prefix>`), created 0700;
//! 2. an fcntl write lock on `<dir>/config`: whoever holds it is the primary (`auto` takes it when
//!    free); a secondary with no primary fails with one line naming the prefix;
//! 3. the primary reclaims what a crashed primary left (sockets of dead processes, the memory
//!    file) and creates the shared memory; a secondary maps it and checks it matches;
//! 4. the IPC channel.
//!
//! Dropping the runtime closes the channel and, in the primary, removes the memory file and the
//! config file; the runtime dir goes too once no other process has a socket in it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use crate::ipc::{Channel, ChannelConfig, IpcError};
use crate::mem::{self, MemError, Shm};
use crate::options::{Options, ProcType};
use crate::sys;
use crate::telemetry::{self, Telemetry, TelemetryError};

/// What this process is in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Owns the shared memory and the device resources.
    Primary,
    /// Attaches to the primary's memory.
    Secondary,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }
}

/// Errors of runtime start-up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The telemetry socket could not be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// `--proc-type=secondary` (or auto finding a stale lock) with no primary.
    #[error("no primary process is running with file prefix {prefix:?} (runtime dir {dir})")]
    NoPrimary {
        /// The prefix.
        prefix: String,
        /// The runtime dir.
        dir: PathBuf,
    },
    /// `--proc-type=primary` while a primary holds the lock.
    #[error("a primary process is already running with file prefix {prefix:?} (runtime dir {dir})")]
    PrimaryExists {
        /// The prefix.
        prefix: String,
        /// The runtime dir.
        dir: PathBuf,
    },
    /// Runtime dir or config file trouble.
    #[error("runtime dir {path}: {what}: {source}")]
    Dir {
        /// Path concerned.
        path: PathBuf,
        /// Step that failed.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// Shared memory trouble.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// IPC trouble.
    #[error(transparent)]
    Ipc(#[from] IpcError),
}

/// The runtime dir for a file prefix, following the rules in the module docs.
pub fn runtime_dir(prefix: &str) -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("hotplug-lab").join(prefix);
    }
    let uid = sys::euid();
    if uid == 0 {
        PathBuf::from("/var/run/hotplug-lab").join(prefix)
    } else {
        PathBuf::from(format!("/tmp/hotplug-lab-{uid}")).join(prefix)
    }
}

/// Sets up `tracing` once per process: `RUST_LOG` wins when set, else `level`, else `warn`.
/// `log` records (from crates that use it) are forwarded too. Logs go to stderr.
pub fn init_logging(level: Option<&str>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = match std::env::var("RUST_LOG") {
            Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
            _ => tracing_subscriber::EnvFilter::new(level.unwrap_or("warn")),
        };
        let _ = tracing_log::LogTracer::init();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    });
}

/// A process's runtime.
pub struct Runtime {
    opts: Options,
    dir: PathBuf,
    role: Role,
    _config: File,
    shm: Arc<Shm>,
    ipc: Channel,
    telemetry: Option<Telemetry>,
}

impl Runtime {
    /// Starts the runtime described by `opts` (see the module docs).
    pub fn init(opts: &Options) -> Result<Runtime, RuntimeError> {
        let rt = Runtime::init_paused(opts)?;
        rt.ipc.start();
        Ok(rt)
    }

    /// Like `init`, but the IPC channel dispatches nothing until `ipc().start()`: register the
    /// process's actions in between and no early message finds an unknown action.
    pub fn init_paused(opts: &Options) -> Result<Runtime, RuntimeError> {
        let dir = runtime_dir(&opts.file_prefix);
        let derr = |what, source, path: &Path| RuntimeError::Dir { path: path.into(), what, source };
        create_dir_0700(&dir).map_err(|e| derr("create", e, &dir))?;
        let cfg_path = dir.join("config");
        let config = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&cfg_path)
            .map_err(|e| derr("open config", e, &cfg_path))?;
        let got_lock = sys::try_write_lock(config.as_fd()).map_err(|e| derr("lock config", e, &cfg_path))?;
        let role = match (opts.proc_type, got_lock) {
            (ProcType::Primary | ProcType::Auto, true) => Role::Primary,
            (ProcType::Secondary | ProcType::Auto, false) => Role::Secondary,
            (ProcType::Secondary, true) => {
                drop(config);
                let _ = std::fs::remove_file(&cfg_path);
                let _ = std::fs::remove_dir(&dir);
                return Err(RuntimeError::NoPrimary { prefix: opts.file_prefix.clone(), dir });
            }
            (ProcType::Primary, false) => {
                return Err(RuntimeError::PrimaryExists { prefix: opts.file_prefix.clone(), dir })
            }
        };
        let mb = opts.mem_mb.unwrap_or(mem::DEFAULT_MB);
        if role == Role::Primary {
            // Holding the config lock, this is the only primary of the prefix: a memory file of
            // it anywhere is a dead primary's, and its pages count for this placement.
            let name = format!("hotplug-lab-{}-mem", opts.file_prefix);
            let own = opts.huge_dir.as_deref().map(|d| d.join(&name));
            for f in own.into_iter().chain(mem::possible_files(&opts.file_prefix)).filter(|f| f.exists()) {
                tracing::info!(path = %f.display(), "reclaiming shared memory left by a previous primary");
                let _ = std::fs::remove_file(f);
            }
        }
        let placement = mem::placement(&opts.file_prefix, mb << 20, opts.no_huge, opts.huge_dir.as_deref());
        let record = dir.join(MEM_RECORD);
        let shm = match role {
            Role::Primary => {
                reclaim_leftovers(&dir);
                let _ = std::fs::remove_file(&record);
                let huge = placement.hugepages && opts.huge_dir.is_none();
                let shm = match Shm::create(placement, mb) {
                    // The free pages counted a moment ago went to another process: /dev/shm.
                    Err(e) if huge => {
                        tracing::warn!(error = %e, "hugetlbfs memory file failed: using /dev/shm");
                        Shm::create(mem::placement(&opts.file_prefix, mb << 20, true, None), mb)
                    }
                    r => r,
                };
                // A primary that cannot start leaves nothing: its config (and lock) and the
                // runtime dir go with it (the memory file is already gone).
                let shm = shm.inspect_err(|_| {
                    let _ = std::fs::remove_file(&cfg_path);
                    let _ = std::fs::remove_dir(&dir);
                })?;
                // Where the file went, for the secondaries: they must not decide again (the pages
                // the primary took are no longer free, so they would look elsewhere).
                let _ = std::fs::write(&record, shm.placement().path.as_os_str().as_encoded_bytes());
                shm
            }
            Role::Secondary => {
                let found = recorded_placement(&record, &opts.file_prefix, opts.huge_dir.as_deref());
                Shm::open(found.unwrap_or(placement), Duration::from_secs(10))?
            }
        };
        let shm = Arc::new(shm);
        let ipc = Channel::open_paused(ChannelConfig {
            dir: dir.clone(),
            primary: role == Role::Primary,
            primary_pid: shm.primary_pid(),
            spin_us: opts.ipc_spin_us,
        })?;
        tracing::info!(role = %role, prefix = %opts.file_prefix, dir = %dir.display(), mem = %shm.placement().path.display(), hugepages = shm.placement().hugepages, "runtime up");
        let telemetry = if opts.no_telemetry {
            None
        } else {
            let t = Telemetry::start(&dir, role == Role::Primary, concat!("hotplug-lab ", env!("CARGO_PKG_VERSION")))?;
            register_runtime_commands(&t, opts, role, &dir, &shm, &ipc);
            Some(t)
        };
        Ok(Runtime { opts: opts.clone(), dir, role, _config: config, shm, ipc, telemetry })
    }

    /// Options the runtime was started with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Primary or secondary.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this is the primary.
    pub fn is_primary(&self) -> bool {
        self.role == Role::Primary
    }

    /// The runtime dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shared memory.
    pub fn shm(&self) -> &Arc<Shm> {
        &self.shm
    }

    /// The IPC channel.
    pub fn ipc(&self) -> &Channel {
        &self.ipc
    }

    /// The telemetry server (none with `--no-telemetry`): register a process's own commands here.
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_ref()
    }
}

/// The commands every lab process serves: DPDK's `/eal/params` and `/eal/app_params`, and the
/// lab's `/lab/process`, `/lab/memory` and `/lab/ipc`.
fn register_runtime_commands(t: &Telemetry, opts: &Options, role: Role, dir: &Path, shm: &Arc<Shm>, ipc: &Channel) {
    let mut params = opts.to_args();
    params.push(format!("--proc-type={role}"));
    params.extend(opts.ignored.iter().cloned());
    let _ = t.register("/eal/params", "Returns EAL commandline parameters used. Takes no parameters", move |_| {
        Ok(serde_json::json!(params))
    });
    let app = opts.app_args.clone();
    let _ = t.register("/eal/app_params", "Returns app commandline parameters used. Takes no parameters", move |_| {
        Ok(serde_json::json!(app))
    });
    let mem = shm.clone();
    let _ = t.register(
        "/lab/memory",
        "Returns the memory file's use: zones, their bytes, the high-water mark, the size. Takes no parameters",
        move |_| {
            let u = mem.usage();
            Ok(serde_json::json!({
                "zones": u.zones, "zone_bytes": u.zone_bytes, "high_water": u.high_water, "total": u.total,
            }))
        },
    );
    let (prefix, dir, shm, chan) = (opts.file_prefix.clone(), dir.to_path_buf(), shm.clone(), ipc.clone());
    let instance = t.instance();
    let _ = t.register(
        "/lab/process",
        "Returns this process: role, prefix, pid, telemetry instance, runtime dir, memory file, IPC peers. Takes no parameters",
        move |_| {
            let peers: Vec<String> =
                chan.peers().iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
            Ok(serde_json::json!({
                "role": role.to_string(), "prefix": prefix, "pid": std::process::id(),
                "telemetry_instance": instance, "runtime_dir": dir.display().to_string(),
                "primary_pid": shm.primary_pid(),
                "mem_file": shm.placement().path.display().to_string(), "hugepages": shm.placement().hugepages,
                "peers": peers,
            }))
        },
    );
    let chan = ipc.clone();
    let _ = t.register(
        "/lab/ipc",
        "Returns the IPC channel's counters: sent, received, dropped by reason, timeouts, peer deaths. Takes no parameters",
        move |_| {
            let s = chan.stats();
            let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            Ok(serde_json::json!({
                "sent": g(&s.sent), "timeouts": g(&s.timeouts), "peer_deaths": g(&s.peer_deaths),
                "received": g(&s.received),
                "dropped": {
                    "malformed": g(&s.malformed), "oversized": g(&s.oversized),
                    "unknown_action": g(&s.unknown_action), "foreign": g(&s.foreign), "late_reply": g(&s.late_reply),
                },
            }))
        },
    );
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // First, so its socket is gone before the dir is removed below.
        drop(self.telemetry.take());
        self.ipc.close();
        if self.role == Role::Primary {
            self.shm.unlink();
            let _ = std::fs::remove_file(self.dir.join(MEM_RECORD));
            let _ = std::fs::remove_file(self.dir.join("config"));
            reclaim_leftovers(&self.dir);
        }
        // Succeeds only when no other process still has a socket here.
        if std::fs::remove_dir(&self.dir).is_ok() {
            tracing::debug!(dir = %self.dir.display(), "runtime dir removed");
        }
    }
}

fn create_dir_0700(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Removes sockets of processes that are gone (left by a crash of the previous primary or of its
/// secondaries). Sockets of live processes stay.
/// The file in the runtime dir where the primary records its memory file's path.
const MEM_RECORD: &str = "mem_file";

/// The primary's memory file as it recorded it (waited for up to 10 s), if it is one of the
/// places a runtime of this prefix may use (a record pointing anywhere else is ignored).
fn recorded_placement(record: &Path, prefix: &str, huge_dir: Option<&Path>) -> Option<mem::ShmPlacement> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let path = loop {
        match std::fs::read(record) {
            Ok(b) if !b.is_empty() => break PathBuf::from(String::from_utf8_lossy(&b).into_owned()),
            _ if std::time::Instant::now() >= deadline => return None,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let name = format!("hotplug-lab-{prefix}-mem");
    let allowed = huge_dir.map(|d| d.join(&name)).into_iter().chain(mem::possible_files(prefix)).any(|p| p == path);
    if !allowed {
        tracing::warn!(record = %record.display(), path = %path.display(), "memory file record ignored: not a place of this prefix");
        return None;
    }
    Some(mem::placement_of(&path))
}

fn reclaim_leftovers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = if name == "mp_socket" {
            true
        } else if name.starts_with(telemetry::SOCKET_NAME) {
            // A telemetry socket nobody listens on any more.
            sys::seqpacket_connect(&e.path()).is_err()
        } else if let Some(rest) = name.strip_prefix("mp_socket_").or_else(|| name.strip_prefix("mp_reply_")) {
            rest.split('_').next().and_then(|p| p.parse::<u32>().ok()).is_none_or(|pid| !sys::pid_alive(pid))
        } else {
            false
        };
        if stale {
            tracing::info!(file = %name, "reclaiming a socket left by a dead process");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
