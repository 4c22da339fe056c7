//! `lab-nic`: serves emulated NICs over vfio-user behind a fake sysfs tree.
//!
//! ```text
//! lab-nic --sysfs-root DIR --dev 0000:00:05.0,model=ixgbe|i40e[,wire=loopback|none|peer=BDF|tap=NAME|pcap=RX:TX]
//!         [,mac=02:00:00:00:00:01][,numa=N][,iommu_group=N] [--dev ...] [--control SOCK]
//!         [--pool N] [--device-threads auto|per-function|N]
//!         [--log-level LEVEL]   (LEVEL: a tracing filter, default "info,vfio_user=warn")
//!         [--exit-with-parent[=PID]]
//! ```
//! Prints `lab-nic ready` once every socket listens; SIGTERM/SIGINT remove sockets, sysfs entries and
//! TAP devices it created, then exit 0. Bad arguments: one error line, exit 2, nothing created.
//! `--device-threads`: how many threads poll the functions' rings and wires. `auto` (the default)
//! is half the cores lab-nic may run on, at least one and no more than the functions, so on a
//! 2-core machine one thread polls every function and the other core is the application's; `N`
//! shares N threads, each function on the one with the fewest; `per-function` gives each
//! function a thread of its own.
//! `--exit-with-parent`: the same clean shutdown when the process that started lab-nic dies, even
//! by SIGKILL (a harness that is killed leaves no emulator, socket or TAP device behind). The
//! parent is watched every 100 ms from before start-up; this is a poll of `getppid`, not
//! `PR_SET_PDEATHSIG`, which fires when the spawning *thread* exits. `=PID` names the parent (a
//! spawner passes its own pid), so a spawner that died before lab-nic even ran is noticed too.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use lab_emu::control::{ControlServer, PlugError, Plugger, Port, Ports};
use lab_emu::model::{self, ModelConfig};
use lab_emu::server::{DeviceThreads, Function, ThreadCount, DEFAULT_POOL};
use lab_emu::sysfs::{Bdf, FunctionSpec, SysfsFunction};
use lab_emu::wire::{self, Wire};
use nix::sys::signal::{SigSet, Signal};

const USAGE: &str = "usage: lab-nic --sysfs-root DIR --dev BDF,model=ixgbe|i40e[,wire=loopback|none|peer=BDF|tap=NAME|pcap=RX:TX][,mac=XX:XX:XX:XX:XX:XX][,numa=N][,iommu_group=N] [--dev ...] [--control SOCK] [--pool N] [--device-threads auto|per-function|N] [--log-level LEVEL] [--exit-with-parent[=PID]]";

#[derive(Debug, Clone, PartialEq)]
enum WireSpec {
    None,
    Loopback,
    Peer(String),
    Tap(String),
    Pcap(PathBuf, PathBuf),
}

#[derive(Debug, Clone)]
struct DevSpec {
    bdf: Bdf,
    model: String,
    wire: WireSpec,
    mac: [u8; 6],
    numa: i32,
    iommu_group: u32,
}

#[derive(Debug)]
struct Args {
    root: PathBuf,
    devs: Vec<DevSpec>,
    control: Option<PathBuf>,
    pool: usize,
    device_threads: ThreadCount,
    log_level: String,
    /// Shut down (as on SIGTERM) when the process that started us is gone.
    /// Watch the parent: `Some(None)` the one we find at start, `Some(Some(pid))` that pid (the
    /// spawner names itself, so a spawner that died before we even started is noticed too).
    exit_with_parent: Option<Option<i32>>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

fn parse_wire(key: &str, value: &str) -> Result<WireSpec, String> {
    let bad = || format!("invalid {key}={value}");
    match (key, value) {
        ("wire", "loopback") => Ok(WireSpec::Loopback),
        ("wire", "none") => Ok(WireSpec::None),
        ("wire", v) => match v.split_once(['=', ':']) {
            Some((k @ ("peer" | "tap" | "pcap"), rest)) => parse_wire(k, rest),
            _ => Err(format!("invalid wire={v} (expected loopback, none, peer=BDF, tap=NAME or pcap=RX:TX)")),
        },
        ("peer", v) => {
            Bdf::parse(v).map(|b| WireSpec::Peer(b.to_string())).map_err(|e| format!("invalid peer={v}: {e}"))
        }
        ("tap", v) => {
            if v.is_empty() || v.len() >= 16 || v.contains('/') || v.contains(char::is_whitespace) {
                Err(format!("invalid tap={v} (an interface name of 1-15 characters)"))
            } else {
                Ok(WireSpec::Tap(v.to_owned()))
            }
        }
        ("pcap", v) => match v.split_once(':') {
            Some((rx, tx)) if !rx.is_empty() && !tx.is_empty() => Ok(WireSpec::Pcap(rx.into(), tx.into())),
            _ => Err(format!("invalid pcap={v} (expected pcap=RX.pcap:TX.pcap)")),
        },
        _ => Err(bad()),
    }
}

fn parse_dev(s: &str, index: usize) -> Result<DevSpec, String> {
    let mut parts = s.split(',');
    let bdf_s = parts.next().unwrap_or("");
    let bdf = Bdf::parse(bdf_s).map_err(|e| format!("--dev {s}: {e}"))?;
    let mut model = None;
    let mut wire = None;
    let mut mac = None;
    let mut numa = -1;
    let mut iommu_group = index as u32;
    for kv in parts {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--dev {s}: \"{kv}\" is not key=value"))?;
        match k {
            "model" => {
                if !model::KNOWN_MODELS.split(',').any(|m| m == v) {
                    return Err(format!("--dev {s}: unknown model={v} (known: {})", model::KNOWN_MODELS));
                }
                model = Some(v.to_owned());
            }
            "wire" | "peer" | "tap" | "pcap" => {
                if wire.is_some() {
                    return Err(format!("--dev {s}: more than one wire given ({kv})"));
                }
                wire = Some(parse_wire(k, v).map_err(|e| format!("--dev {s}: {e}"))?);
            }
            "mac" => {
                let m = parse_mac(v).ok_or_else(|| format!("--dev {s}: invalid mac={v}"))?;
                if m[0] & 1 != 0 {
                    return Err(format!("--dev {s}: mac={v} is a multicast address"));
                }
                mac = Some(m);
            }
            "numa" => numa = v.parse().map_err(|_| format!("--dev {s}: invalid numa={v}"))?,
            "iommu_group" => iommu_group = v.parse().map_err(|_| format!("--dev {s}: invalid iommu_group={v}"))?,
            _ => {
                return Err(format!(
                    "--dev {s}: unknown key \"{k}\" (keys: model, wire, peer, tap, pcap, mac, numa, iommu_group)"
                ))
            }
        }
    }
    let model = model.ok_or_else(|| format!("--dev {s}: missing model= (known: {})", model::KNOWN_MODELS))?;
    let mac = mac.unwrap_or([0x02, 0, 0, bdf.bus, bdf.dev, bdf.func]);
    Ok(DevSpec { bdf, model, wire: wire.unwrap_or(WireSpec::None), mac, numa, iommu_group })
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut root = None;
    let mut devs = Vec::new();
    let mut control = None;
    let mut pool = DEFAULT_POOL;
    let mut device_threads = ThreadCount::Auto;
    let mut log_level = "info,vfio_user=warn".to_owned();
    let mut exit_with_parent = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{flag} needs a value"));
        match flag {
            "--sysfs-root" => root = Some(PathBuf::from(value()?)),
            "--dev" => {
                let v = value()?;
                devs.push(parse_dev(&v, devs.len())?);
            }
            "--control" => control = Some(PathBuf::from(value()?)),
            "--pool" => {
                let v = value()?;
                pool = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("invalid --pool {v} (1-1024)"))?;
            }
            "--device-threads" => device_threads = ThreadCount::parse(&value()?).map_err(|e| e.to_string())?,
            "--log-level" => log_level = value()?,
            "--exit-with-parent" => {
                exit_with_parent = Some(match &inline {
                    None => None,
                    Some(v) => Some(
                        v.parse::<i32>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| format!("invalid --exit-with-parent={v} (a process id)"))?,
                    ),
                })
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument \"{other}\"")),
        }
    }
    let root = root.ok_or("missing --sysfs-root DIR")?;
    if devs.is_empty() {
        return Err("at least one --dev is required".into());
    }
    let mut seen = HashMap::new();
    for d in &devs {
        if seen.insert(d.bdf.to_string(), d.wire.clone()).is_some() {
            return Err(format!("--dev {} given twice", d.bdf));
        }
    }
    // Peers must exist and must not contradict each other.
    for d in &devs {
        if let WireSpec::Peer(p) = &d.wire {
            let me = d.bdf.to_string();
            match seen.get(p) {
                None => return Err(format!("--dev {me}: peer={p} is not a --dev")),
                Some(_) if *p == me => return Err(format!("--dev {me}: peer={p} is itself")),
                Some(WireSpec::None) => {}
                Some(WireSpec::Peer(q)) if *q == me => {}
                Some(_) => return Err(format!("--dev {me}: peer={p} but {p} has a different wire")),
            }
        }
    }
    tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| format!("invalid --log-level {log_level}: {e}"))?;
    Ok(Args { root, devs, control, pool, device_threads, log_level, exit_with_parent })
}

/// Builds the wires: peers are cabled in pairs (a function named as a peer gets the other end).
/// A start-up failure: what was being set up, and the typed cause (printed as a chain by `main`).
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
struct StartError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn ctx<E: std::error::Error + Send + Sync + 'static>(what: impl Into<String>) -> impl FnOnce(E) -> StartError {
    let what = what.into();
    move |e| StartError { what, source: Box::new(e) }
}

/// The wire of one function that has no peer (a peer pair is made for both ends at once).
fn lone_wire(d: &DevSpec) -> Result<Box<dyn Wire>, StartError> {
    let me = d.bdf.to_string();
    Ok(match &d.wire {
        WireSpec::None | WireSpec::Peer(_) => Box::new(wire::NullWire::default()),
        WireSpec::Loopback => Box::new(wire::Loopback::default()),
        WireSpec::Tap(name) => Box::new(wire::TapWire::open(name).map_err(ctx(format!("{me}: wire tap={name}")))?),
        WireSpec::Pcap(rx, tx) => Box::new(wire::PcapWire::open(rx, tx).map_err(ctx(format!(
            "{me}: wire pcap={}:{}",
            rx.display(),
            tx.display()
        )))?),
    })
}

fn make_wires(devs: &[DevSpec]) -> Result<BTreeMap<String, Box<dyn Wire>>, StartError> {
    let mut wires: BTreeMap<String, Box<dyn Wire>> = BTreeMap::new();
    for d in devs {
        let me = d.bdf.to_string();
        if wires.contains_key(&me) {
            continue;
        }
        let w: Box<dyn Wire> = match &d.wire {
            WireSpec::Peer(p) => {
                let (a, b) = wire::peer_pair(&me, p);
                wires.insert(p.clone(), Box::new(b));
                Box::new(a)
            }
            _ => lone_wire(d)?,
        };
        wires.insert(me, w);
    }
    Ok(wires)
}

/// One function: its model on `wire`, its fake sysfs entry and vfio-user socket, its threads.
/// The device threads of this lab-nic: a shared pool, or none (each function starts its own).
type Pool = Option<Arc<DeviceThreads>>;

/// The device threads `args` ask for (`--device-threads`), sized for the functions on the
/// command line and the cores this process may use.
fn device_threads(args: &Args) -> Result<Pool, StartError> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match args.device_threads.resolve(args.devs.len(), cores) {
        None => Ok(None),
        Some(n) => {
            let t = DeviceThreads::start(n).map_err(ctx(format!("{n} device threads")))?;
            tracing::info!(threads = n, functions = args.devs.len(), cores, "device threads");
            Ok(Some(Arc::new(t)))
        }
    }
}

fn serve(root: &Path, d: &DevSpec, wire: Box<dyn Wire>, pool: usize, threads: &Pool) -> Result<Port, StartError> {
    let bdf = d.bdf.to_string();
    let describe = wire.describe();
    let m = model::create(&d.model, ModelConfig { bdf: bdf.clone(), function: d.bdf.func, mac: d.mac, wire })
        .map_err(ctx(format!("{bdf}: model={}", d.model)))?;
    let ids = m.ids();
    let bars = m.bars().map(|b| (b.size, b.sysfs_flags()));
    let spec = FunctionSpec {
        vendor: ids.vendor,
        device: ids.device,
        subsystem_vendor: ids.subsystem_vendor,
        subsystem_device: ids.subsystem_device,
        class: ids.class,
        numa_node: d.numa,
        bars,
        iommu_group: d.iommu_group,
    };
    let sysfs = SysfsFunction::create(root, &bdf, &spec).map_err(ctx(format!("{bdf}: fake sysfs entry")))?;
    let listener = sysfs.bind_socket().map_err(ctx(format!("{bdf}: vfio-user socket")))?;
    let function = match threads {
        Some(t) => Function::start_on(&bdf, m, listener, pool, sysfs.dir(), t),
        None => Function::start(&bdf, m, listener, pool, sysfs.dir()),
    }
    .map_err(ctx(format!("{bdf}: device threads")))?;
    tracing::info!(bdf, model = %d.model, wire = %describe, socket = %sysfs.socket_path().display(), "serving");
    Ok(Port { function, sysfs })
}

/// `plug BDF` of the control socket: a function of the command line, unplugged before, comes back
/// fresh (power-on state, a new wire of the same kind). A peer-cabled one cannot: the other end
/// of its cable is the peer's and went on without it.
fn plugger(args: &Args, threads: &Pool) -> Plugger {
    let (root, devs, pool, threads) = (args.root.clone(), args.devs.clone(), args.pool, threads.clone());
    Arc::new(move |bdf: &str| {
        let d = devs.iter().find(|d| d.bdf.to_string() == bdf).ok_or_else(|| PlugError::Unknown {
            bdf: bdf.into(),
            known: devs.iter().map(|d| d.bdf.to_string()).collect::<Vec<_>>().join(", "),
        })?;
        if let WireSpec::Peer(p) = &d.wire {
            return Err(PlugError::PeerCabled { bdf: bdf.into(), peer: p.clone() });
        }
        let start = |e: StartError| PlugError::Start { bdf: bdf.into(), source: Box::new(e) };
        let wire = lone_wire(d).map_err(start)?;
        serve(&root, d, wire, pool, &threads).map_err(start)
    })
}

fn start(args: &Args, threads: &Pool) -> Result<Ports, StartError> {
    let ports: Ports = Arc::new(Mutex::new(BTreeMap::new()));
    let mut wires = make_wires(&args.devs)?;
    for d in &args.devs {
        let bdf = d.bdf.to_string();
        let wire = wires.remove(&bdf).unwrap_or_else(|| Box::new(wire::NullWire::default()));
        let port = serve(&args.root, d, wire, args.pool, threads)?;
        ports.lock().unwrap_or_else(|e| e.into_inner()).insert(bdf, port);
    }
    Ok(ports)
}

fn shutdown(ports: &Ports) {
    let all = std::mem::take(&mut *ports.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, p) in all {
        p.unplug();
    }
}

/// One malloc arena for the whole process. glibc gives threads arenas of their own (up to 8 per
/// core), and what a thread frees stays in its arena; every plugged function starts its own
/// threads, so each unplug and plug left a few MiB more behind (74 MiB after 50 re-plugs of one
/// function, found by `lab soak`), where one arena reuses them (7 MiB, flat). Nothing here
/// allocates on the data path, so the arenas' lock is never contended there.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    // Who started us, read before anything else: a parent that dies during start-up must still be
    // noticed (`--exit-with-parent`).
    let parent = nix::unistd::getppid();
    one_malloc_arena();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lab-nic: error: {e}");
            if e != USAGE {
                eprintln!("{USAGE}");
            }
            return ExitCode::from(2);
        }
    };
    let _ = tracing_log::LogTracer::init();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();

    // Block the termination signals before any thread starts, so every thread inherits the mask and
    // only `sigwait` below sees them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    if let Err(e) = signals.thread_block() {
        eprintln!("lab-nic: error: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    if let Some(named) = args.exit_with_parent {
        let parent = named.map(nix::unistd::Pid::from_raw).unwrap_or(parent);
        // Before start-up, with the signals already blocked: a SIGTERM the watcher sends early
        // waits for the `sigwait` below, and shutdown then removes whatever start-up made.
        watch_parent(parent);
    }

    // The device threads first: every function joins one of them (a function still in the pool
    // when it stops is simply no longer polled, so the drop order does not matter).
    let started = device_threads(&args).and_then(|t| Ok((start(&args, &t)?, t)));
    let (ports, threads) = match started {
        Ok(p) => p,
        Err(e) => {
            let mut chain = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                chain += &format!(": {c}");
                cause = c.source();
            }
            eprintln!("lab-nic: error: {chain}");
            return ExitCode::from(1);
        }
    };
    let mut control = match &args.control {
        Some(path) => match ControlServer::start(path, ports.clone(), Some(plugger(&args, &threads))) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("lab-nic: error: {e}");
                shutdown(&ports);
                return ExitCode::from(1);
            }
        },
        None => None,
    };

    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "lab-nic ready");
    let _ = out.flush();
    drop(out);

    let sig = signals.wait();
    tracing::info!("{} received, shutting down", sig.map(|s| s.as_str()).unwrap_or("signal"));
    if let Some(c) = control.as_mut() {
        c.stop();
    }
    shutdown(&ports);
    ExitCode::SUCCESS
}

/// Sends ourselves SIGTERM (taken by the `sigwait` in `main`) once `parent`, the process that
/// started us, is gone (we have been re-parented), checking at once and then every 100 ms.
fn watch_parent(parent: nix::unistd::Pid) {
    std::thread::spawn(move || loop {
        if nix::unistd::getppid() != parent {
            tracing::warn!(parent = parent.as_raw(), "parent process gone, shutting down");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGTERM);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        let mut a = vec!["--sysfs-root".to_owned(), "/tmp/x".to_owned()];
        a.extend(v.iter().map(|s| s.to_string()));
        parse_args(&a)
    }

    #[test]
    fn wire_forms_are_accepted() {
        let a = args(&[
            "--dev",
            "0000:00:05.0,model=ixgbe,wire=loopback,mac=02:00:00:00:00:01",
            "--dev",
            "0000:00:06.0,model=ixgbe,wire=peer=0000:00:07.0",
            "--dev",
            "0000:00:07.0,model=ixgbe,peer=0000:00:06.0",
            "--dev",
            "0000:00:08.0,model=ixgbe,pcap=a.pcap:b.pcap",
            "--dev=0000:00:09.0,model=ixgbe,tap=lab0",
            "--pool",
            "4",
            "--device-threads",
            "per-function",
        ])
        .unwrap();
        assert_eq!(a.pool, 4);
        assert_eq!(a.device_threads, ThreadCount::PerFunction);
        assert_eq!(args(&["--dev", "0000:00:05.0,model=ixgbe"]).unwrap().device_threads, ThreadCount::Auto);
        assert_eq!(
            args(&["--dev", "0000:00:05.0,model=ixgbe", "--device-threads=3"]).unwrap().device_threads,
            ThreadCount::Fixed(3)
        );
        assert_eq!(a.devs[0].wire, WireSpec::Loopback);
        assert_eq!(a.devs[0].mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(a.devs[1].wire, WireSpec::Peer("0000:00:07.0".into()));
        assert_eq!(a.devs[3].wire, WireSpec::Pcap("a.pcap".into(), "b.pcap".into()));
        assert_eq!(a.devs[4].wire, WireSpec::Tap("lab0".into()));
        assert_eq!(a.devs[4].mac, [2, 0, 0, 0, 9, 0], "default MAC from the address");
    }

    #[test]
    fn errors_name_the_offending_key_or_value() {
        let cases = [
            (vec!["--dev", "0000:00:05.0,model=e1000"], "model=e1000"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe,wire=fibre"], "wire=fibre"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe,mac=01:00:00:00:00:01"], "multicast"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe,wire=loopback,tap=x"], "more than one wire"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe,peer=0000:00:05.0"], "itself"),
            (
                vec![
                    "--dev",
                    "0000:00:05.0,model=ixgbe,peer=0000:00:06.0",
                    "--dev",
                    "0000:00:06.0,model=ixgbe,wire=loopback",
                ],
                "different wire",
            ),
            (vec!["--dev", "0000:00:05.0,model=ixgbe", "--dev", "0000:00:05.0,model=ixgbe"], "twice"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe", "--pool", "0"], "--pool"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe", "--device-threads", "0"], "--device-threads 0"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe", "--device-threads=many"], "--device-threads many"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe", "--log-level", "[["], "--log-level"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe", "--exit-with-parent=me"], "--exit-with-parent=me"),
            (vec!["--dev", "0000:00:05.0,model=ixgbe", "--exit-with-parent=0"], "--exit-with-parent=0"),
            (vec![], "--dev"),
        ];
        for (v, want) in cases {
            let e = args(&v).unwrap_err();
            assert!(e.contains(want), "{v:?}: {e}");
        }
        assert!(parse_args(&["--dev".into(), "0000:00:05.0,model=ixgbe".into()]).unwrap_err().contains("--sysfs-root"));
    }
}
