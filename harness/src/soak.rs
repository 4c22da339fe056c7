//! `lab soak`: hotplug cycles for as long as you like, and proof that nothing leaks.
//!
//! The lab: lab-nic serving an emulated 82599 (A, `0000:00:05.0`) cabled to an X710 (B,
//! `0000:00:06.0`; a second 82599 in a build without the i40e driver) and an 82599 on a loopback
//! wire (C, `0000:00:07.0`), a primary and two secondaries (`hotplug_mp`), and `lab-fwd`, a
//! fourth process forwarding `net_null0` <-> A, B <-> `net_null1` and `net_null2` <-> C at
//! `--pps` frames per second in all, so frames cross the cable whenever both NICs are attached
//! and are in flight at every detach and unplug.
//!
//! Cycle `i` (processes P0..P2 = primary, s1, s2): A attached from P(i), B from P(i+1); every 7th
//! cycle A's cable is pulled and plugged back (the primary sees the link go down and come up);
//! every 5th C is attached from P(i+2) too and surprise-unplugged at the emulator while frames
//! loop through it (every process sees it go), then plugged back; B is detached from P(i+2) and A
//! from P(i+1). After each cycle every process lists the same ports: the three null vdevs only.
//!
//! Every `every` cycles (and after the last), with no NIC attached, it prints for every process
//! its open fds, RSS and emulator connections (lab-nic's, by the client pid the kernel reported),
//! and for the shared memory the zones, their bytes and the mbufs in use; the first of these
//! checkpoints is the baseline and any later one above it fails the soak. Of the RSS it is the
//! private part (`RssAnon`: heap, stacks) that is checked, since the whole RSS grows by design as
//! a process touches more pages of the shared memory file (lab-nic maps every client's), and it
//! may move by [`RSS_SLACK_KB`], the allocator's page-granular noise; a leak of a few hundred
//! bytes a cycle passes that within a few checkpoints. A checkpoint also fails when no frame
//! crossed the cable since the last one.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError};

/// RSS growth over the baseline that is not called a leak, in KiB.
pub const RSS_SLACK_KB: u64 = 1024;
/// How long a checkpoint waits for lagging releases (a connection still closing) before a
/// value above the baseline counts as grown.
const SETTLE: Duration = Duration::from_secs(5);
const A: &str = "0000:00:05.0";
const B: &str = "0000:00:06.0";
/// On a loopback wire (a peer-cabled function cannot be plugged back: its peer went on alone).
const C: &str = "0000:00:07.0";
const ACTORS: [&str; 3] = ["primary", "s1", "s2"];

/// What `lab soak` was asked.
#[derive(Debug, Clone)]
pub struct SoakArgs {
    /// Cycles to run (`None`: until `secs` or an interrupt).
    pub cycles: Option<u64>,
    /// Seconds to run at most.
    pub secs: Option<u64>,
    /// Cycles between checkpoints.
    pub every: u64,
    /// Frames per second lab-fwd moves.
    pub pps: u64,
    /// Where hotplug_mp, lab-nic and lab-fwd are.
    pub bin_dir: Option<PathBuf>,
}

impl Default for SoakArgs {
    fn default() -> Self {
        SoakArgs { cycles: Some(10_000), secs: None, every: 1000, pps: 20_000, bin_dir: None }
    }
}

/// Parses `lab soak`'s flags: `--cycles N`, `--secs S`, `--every N`, `--pps N`.
pub fn parse_args(mut it: impl Iterator<Item = String>) -> Result<SoakArgs, String> {
    let mut a = SoakArgs::default();
    let (mut cycles, mut secs) = (None, None);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut num = |lo: u64, hi: u64| -> Result<u64, String> {
            let v = inline.clone().or_else(|| it.next()).ok_or(format!("{flag} needs a value"))?;
            v.parse().ok().filter(|n| (lo..=hi).contains(n)).ok_or(format!("{flag} {v}: expected {lo}..={hi}"))
        };
        match flag.as_str() {
            "--cycles" => cycles = Some(num(1, 100_000_000)?),
            "--secs" => secs = Some(num(1, 30 * 86_400)?),
            "--every" => a.every = num(1, 100_000_000)?,
            "--pps" => a.pps = num(1, 10_000_000)?,
            "-h" | "--help" => return Err(String::new()),
            f => return Err(format!("lab soak: unknown argument {f}")),
        }
    }
    // --secs alone runs for that long; both: whichever ends first.
    a.cycles = match (cycles, secs) {
        (Some(c), _) => Some(c),
        (None, Some(_)) => None,
        (None, None) => a.cycles,
    };
    a.secs = secs;
    Ok(a)
}

/// One process's resources at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSample {
    /// Its name in the lab (`primary`, `s1`, `s2`, `fwd`, `lab-nic`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Open file descriptors.
    pub fds: u64,
    /// Resident set, KiB (shared memory pages it touched included).
    pub rss_kb: u64,
    /// Its private anonymous resident memory (heap, stacks), KiB: what a leak grows.
    pub anon_kb: u64,
    /// lab-nic connections it holds (for lab-nic: all of them).
    pub nic_conns: u64,
}

/// A checkpoint: every process, the shared memory, the traffic.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Cycles done.
    pub cycle: u64,
    /// Since the soak began.
    pub elapsed: Duration,
    /// Every process.
    pub procs: Vec<ProcSample>,
    /// Zones in the memory file.
    pub zones: u64,
    /// Their bytes.
    pub zone_bytes: u64,
    /// Mbufs out of every pool's ring and caches.
    pub mbufs_in_use: u64,
    /// Frames A sent on the cable so far (lab-nic's count).
    pub a_tx: u64,
}

/// The soak's counts.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Attaches done.
    pub attaches: u64,
    /// Detaches done.
    pub detaches: u64,
    /// Surprise unplugs (each seen by every process).
    pub unplugs: u64,
    /// Link flaps (each seen by the primary).
    pub flaps: u64,
    /// The slowest cycle since the last checkpoint: how long, and which.
    pub slowest: (Duration, u64),
}

fn proc_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// A `Key:   N kB` line of /proc/PID/status.
fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Client pids of a function's connections, from `connections BDF` (`id:AGEms:pid=PID` each).
fn conn_pids(lab: &Lab, bdf: &str) -> Result<Vec<u32>, LabError> {
    let r = lab.nic_command(&format!("connections {bdf}"))?;
    Ok(r.split_whitespace().filter_map(|w| w.rsplit_once(":pid=").and_then(|(_, p)| p.parse().ok())).collect())
}

/// A `key=value` of a lab-nic reply.
fn field(reply: &str, key: &str) -> u64 {
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sample(lab: &Lab, cycle: u64, started: Instant) -> Result<Sample, LabError> {
    let mut pids = conn_pids(lab, A)?;
    pids.extend(conn_pids(lab, B)?);
    pids.extend(conn_pids(lab, C)?);
    let mut procs = Vec::new();
    for name in lab.processes() {
        let pid = lab.pid(&name).unwrap_or(0);
        let nic_conns = pids.iter().filter(|p| **p == pid).count() as u64;
        procs.push(ProcSample {
            name,
            pid,
            fds: proc_fds(pid),
            rss_kb: proc_status_kb(pid, "VmRSS"),
            anon_kb: proc_status_kb(pid, "RssAnon"),
            nic_conns,
        });
    }
    if let Some(pid) = lab.nic_pid() {
        procs.push(ProcSample {
            name: "lab-nic".into(),
            pid,
            fds: proc_fds(pid),
            rss_kb: proc_status_kb(pid, "VmRSS"),
            anon_kb: proc_status_kb(pid, "RssAnon"),
            nic_conns: pids.len() as u64,
        });
    }
    let mem = lab.telemetry("primary", "/lab/memory")?;
    let pools = lab.telemetry("primary", "/lab/mempool")?;
    let mbufs_in_use = pools.as_array().into_iter().flatten().filter_map(|p| p["in_use"].as_u64()).sum();
    Ok(Sample {
        cycle,
        elapsed: started.elapsed(),
        procs,
        zones: mem["zones"].as_u64().unwrap_or(0),
        zone_bytes: mem["zone_bytes"].as_u64().unwrap_or(0),
        mbufs_in_use,
        a_tx: field(&lab.nic_command(&format!("stats {A}"))?, "tx_packets"),
    })
}

/// What grew in `now` over `base`, one line each (empty: nothing).
pub fn grown(base: &Sample, now: &Sample) -> Vec<String> {
    let mut v = Vec::new();
    for p in &now.procs {
        let Some(b) = base.procs.iter().find(|b| b.name == p.name) else { continue };
        if p.fds > b.fds {
            v.push(format!("{} (pid {}): open fds {} -> {}", p.name, p.pid, b.fds, p.fds));
        }
        if p.anon_kb > b.anon_kb + RSS_SLACK_KB {
            v.push(format!("{} (pid {}): private RSS {} KiB -> {} KiB", p.name, p.pid, b.anon_kb, p.anon_kb));
        }
        if p.nic_conns > b.nic_conns {
            v.push(format!("{} (pid {}): emulator connections {} -> {}", p.name, p.pid, b.nic_conns, p.nic_conns));
        }
    }
    if now.zones > base.zones || now.zone_bytes > base.zone_bytes {
        v.push(format!(
            "memzones {} ({} bytes) -> {} ({} bytes)",
            base.zones, base.zone_bytes, now.zones, now.zone_bytes
        ));
    }
    if now.mbufs_in_use > base.mbufs_in_use {
        v.push(format!("mbufs in use {} -> {}", base.mbufs_in_use, now.mbufs_in_use));
    }
    v
}

/// The checkpoint as a table.
pub fn table(s: &Sample, base: Option<&Sample>) -> String {
    let mut t = format!(
        "cycle {:>6}  {:>8.1} s  memzones {} ({} KiB)  mbufs in use {}  frames A->cable {}\n",
        s.cycle,
        s.elapsed.as_secs_f64(),
        s.zones,
        s.zone_bytes >> 10,
        s.mbufs_in_use,
        s.a_tx
    );
    let _ =
        writeln!(t, "  {:<8} {:>8} {:>5} {:>9} {:>9} {:>9}", "process", "pid", "fds", "rss_kb", "anon_kb", "nic_conns");
    for p in &s.procs {
        let d = base.and_then(|b| b.procs.iter().find(|b| b.name == p.name));
        let delta = d.map(|b| format!("  (anon {:+} KiB)", p.anon_kb as i64 - b.anon_kb as i64)).unwrap_or_default();
        let _ = writeln!(
            t,
            "  {:<8} {:>8} {:>5} {:>9} {:>9} {:>9}{delta}",
            p.name, p.pid, p.fds, p.rss_kb, p.anon_kb, p.nic_conns
        );
    }
    t
}

/// How the soak ended.
#[derive(Debug)]
pub enum SoakEnd {
    /// Every cycle and checkpoint passed.
    Passed {
        /// Cycles done.
        cycles: u64,
    },
    /// Stopped by an interrupt after this many cycles (what ran passed).
    Interrupted {
        /// Cycles done.
        cycles: u64,
    },
    /// A cycle failed or something grew.
    Failed(SoakError),
}

/// Why a soak failed.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// A step of a cycle (or of a checkpoint) failed.
    #[error("cycle {cycle}: {what}: {source}{}", exited_text(.exited))]
    Step {
        /// Cycles done before it.
        cycle: u64,
        /// The step.
        what: String,
        /// What the lab said.
        #[source]
        source: Box<LabError>,
        /// Processes of the lab found dead afterwards, with their stderr.
        exited: Vec<(String, String)>,
    },
    /// My own executable's directory (where the lab's binaries are) is unknown.
    #[error("cannot find my own executable: {0}")]
    Exe(#[source] std::io::Error),
    /// lab-fwd is not built.
    #[error("lab-fwd not found at {} (build it: cargo build -p lab-examples --bin lab-fwd)", .0.display())]
    NoForwarder(PathBuf),
    /// The lab did not start.
    #[error("starting the lab: {0}")]
    Start(#[source] Box<LabError>),
    /// Something is above the first checkpoint.
    #[error("cycle {cycle}: grew since the first checkpoint: {}", .what.join("; "))]
    Grew {
        /// Cycles done.
        cycle: u64,
        /// What grew, one line each.
        what: Vec<String>,
    },
    /// No frame crossed the cable between two checkpoints.
    #[error("cycle {cycle}: no frame crossed the cable since the last checkpoint ({A} sent {sent} in all)")]
    NoTraffic {
        /// Cycles done.
        cycle: u64,
        /// Frames A sent in all.
        sent: u64,
    },
}

fn exited_text(exited: &[(String, String)]) -> String {
    exited.iter().map(|(p, e)| format!("; {p} exited: {e}")).collect()
}

fn step<T>(cycle: u64, what: &str, r: Result<T, LabError>) -> Result<T, SoakError> {
    r.map_err(|source| SoakError::Step { cycle, what: what.into(), source: Box::new(source), exited: Vec::new() })
}

/// Waits until every process lists exactly the null vdevs (an operation may still be ending).
fn settled(lab: &Lab, cycle: u64) -> Result<(), SoakError> {
    step(
        cycle,
        "every process lists net_null0..2 only",
        lab.wait_until(Duration::from_secs(10), "every process lists the null vdevs only", |l| {
            let v = l.consistent().ok()?;
            (v.len() == 3 && v.iter().all(|(_, n)| n.starts_with("net_null"))).then_some(())
        }),
    )
}

fn link_is(lab: &Lab, on: &str, port: lab_core::ethdev::PortId, up: bool, cycle: u64) -> Result<(), SoakError> {
    let want = if up { "UP" } else { "DOWN" };
    step(
        cycle,
        &format!("{on} sees port {port} link {want}"),
        lab.wait_until(Duration::from_secs(10), &format!("port {port} link {want} in {on}"), |l| {
            let v = l.telemetry(on, &format!("/ethdev/link_status,{port}")).ok()?;
            (v["status"] == want).then_some(())
        }),
    )
}

fn cycle(lab: &mut Lab, i: u64, n: &mut Counts) -> Result<(), SoakError> {
    let p = |k: u64| ACTORS[((i + k) % 3) as usize];
    let a = step(i, &format!("attach {A} from {}", p(0)), lab.attach(p(0), A))?;
    step(i, &format!("attach {B} from {}", p(1)), lab.attach(p(1), B))?;
    n.attaches += 2;
    if i % 7 == 3 {
        step(i, "link down A", lab.link_down(A))?;
        link_is(lab, "primary", a, false, i)?;
        step(i, "link up A", lab.link_up(A))?;
        link_is(lab, "primary", a, true, i)?;
        n.flaps += 1;
    }
    if i % 5 == 1 {
        step(i, &format!("attach {C} from {}", p(2)), lab.attach(p(2), C))?;
        n.attaches += 1;
        step(i, &format!("unplug {C}"), lab.unplug(C))?;
        step(
            i,
            &format!("every process drops {C}"),
            lab.wait_until(Duration::from_secs(10), "every process drops the unplugged NIC", |l| {
                let v = l.consistent().ok()?;
                (!v.iter().any(|(_, name)| name == C)).then_some(())
            }),
        )?;
        step(i, &format!("plug {C}"), lab.plug(C))?;
        n.unplugs += 1;
    }
    step(i, &format!("detach {B} from {}", p(2)), lab.detach(p(2), B))?;
    n.detaches += 1;
    step(i, &format!("detach {A} from {}", p(1)), lab.detach(p(1), A))?;
    n.detaches += 1;
    settled(lab, i)
}

/// A checkpoint: samples until nothing is above the baseline or [`SETTLE`] passed.
fn checkpoint(lab: &Lab, i: u64, started: Instant, base: Option<&Sample>) -> Result<(Sample, Vec<String>), SoakError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = step(i, "checkpoint", sample(lab, i, started))?;
        let g = match base {
            Some(b) => grown(b, &s),
            // The baseline: wait for lab-nic to see every connection closed.
            None if s.procs.iter().any(|p| p.nic_conns > 0) => vec!["emulator connections still open".into()],
            None => Vec::new(),
        };
        if g.is_empty() || Instant::now() >= deadline {
            return Ok((s, g));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Builds the soak's lab (see the module docs).
pub fn start_lab(a: &SoakArgs) -> Result<Lab, SoakError> {
    let dir = match a.bin_dir.clone().or_else(|| std::env::var_os("HOTPLUG_LAB_BIN_DIR").map(PathBuf::from)) {
        Some(d) => d,
        None => std::env::current_exe()
            .map_err(SoakError::Exe)?
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
    };
    let fwd = dir.join("lab-fwd");
    if !fwd.exists() {
        return Err(SoakError::NoForwarder(fwd));
    }
    let pps = a.pps.to_string();
    Lab::builder()
        .bin_dir(&dir)
        .nic(A, "ixgbe", &format!("peer={B}"))
        .nic(B, crate::demo::second_model(), &format!("peer={A}"))
        .nic(C, "ixgbe", "loopback")
        .vdev("net_null0")
        .vdev("net_null1")
        .vdev("net_null2")
        .secondaries(2)
        .app(
            "fwd",
            &fwd,
            &[
                "--pair",
                &format!("net_null0,{A}"),
                "--pair",
                &format!("{B},net_null1"),
                "--pair",
                &format!("net_null2,{C}"),
                "--max-pps",
                &pps,
            ],
        )
        .start()
        .map_err(|e| SoakError::Start(Box::new(e)))
}

/// Runs the soak, printing each checkpoint to `out`.
pub fn run(a: &SoakArgs, stop: &AtomicBool, out: &mut dyn std::io::Write) -> SoakEnd {
    let mut lab = match start_lab(a) {
        Ok(l) => l,
        Err(e) => return SoakEnd::Failed(e),
    };
    let _ = writeln!(
        out,
        "lab soak: {} cycles{}, checkpoint every {}; primary, s1, s2 (hotplug_mp) and fwd (lab-fwd, {} frames/s \
         net_null0 <-> {A} = cable = {B} <-> net_null1, net_null2 <-> {C} on a loopback); {A} and {C} ixgbe, {B} {}",
        a.cycles.map_or("unbounded".to_string(), |c| c.to_string()),
        a.secs.map(|s| format!(" or {s} s")).unwrap_or_default(),
        a.every,
        a.pps,
        crate::demo::second_model()
    );
    if let Err(e) = settled(&lab, 0) {
        return SoakEnd::Failed(e);
    }
    let started = Instant::now();
    let mut counts = Counts::default();
    let mut base: Option<Sample> = None;
    let mut last_tx = 0;
    let mut i = 0u64;
    loop {
        let end_by_count = a.cycles.is_some_and(|c| i >= c);
        let end_by_time = a.secs.is_some_and(|s| started.elapsed() >= Duration::from_secs(s));
        let interrupted = stop.load(Ordering::Relaxed);
        let at_checkpoint = i > 0 && (i.is_multiple_of(a.every) || end_by_count || end_by_time || interrupted);
        if at_checkpoint {
            let (s, g) = match checkpoint(&lab, i, started, base.as_ref()) {
                Ok(v) => v,
                Err(e) => return SoakEnd::Failed(e),
            };
            let _ = write!(out, "{}", table(&s, base.as_ref()));
            let _ = writeln!(
                out,
                "  attaches {}  detaches {}  surprise unplugs {}  link flaps {}  slowest cycle {} ms (#{})",
                counts.attaches,
                counts.detaches,
                counts.unplugs,
                counts.flaps,
                counts.slowest.0.as_millis(),
                counts.slowest.1
            );
            counts.slowest = (Duration::ZERO, 0);
            if !g.is_empty() {
                return SoakEnd::Failed(SoakError::Grew { cycle: i, what: g });
            }
            if s.a_tx <= last_tx {
                return SoakEnd::Failed(SoakError::NoTraffic { cycle: i, sent: s.a_tx });
            }
            last_tx = s.a_tx;
            if base.is_none() {
                base = Some(s);
            }
        }
        if interrupted {
            return SoakEnd::Interrupted { cycles: i };
        }
        if end_by_count || end_by_time {
            return SoakEnd::Passed { cycles: i };
        }
        let t0 = Instant::now();
        let r = cycle(&mut lab, i, &mut counts);
        if t0.elapsed() > counts.slowest.0 {
            counts.slowest = (t0.elapsed(), i);
        }
        if let Err(mut e) = r {
            if let SoakError::Step { exited, .. } = &mut e {
                for p in lab.processes() {
                    if !lab.is_running(&p) {
                        exited.push((p.clone(), lab.stderr(&p).trim().to_string()));
                    }
                }
            }
            return SoakEnd::Failed(e);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<SoakArgs, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_are_checked_and_secs_alone_is_unbounded_in_cycles() {
        let a = args(&["--cycles", "300", "--every=100"]).unwrap();
        assert_eq!((a.cycles, a.every, a.secs), (Some(300), 100, None));
        let a = args(&["--secs", "60"]).unwrap();
        assert_eq!((a.cycles, a.secs), (None, Some(60)));
        assert_eq!(args(&[]).unwrap().cycles, Some(10_000));
        assert!(args(&["--cycles", "0"]).unwrap_err().contains("--cycles 0: expected 1..="));
        assert!(args(&["--every"]).unwrap_err().contains("--every needs a value"));
        assert!(args(&["--bogus"]).unwrap_err().contains("unknown argument --bogus"));
    }

    fn s(fds: u64, rss: u64, conns: u64, zones: u64, mbufs: u64) -> Sample {
        Sample {
            cycle: 0,
            elapsed: Duration::ZERO,
            procs: vec![ProcSample { name: "s1".into(), pid: 7, fds, rss_kb: rss * 2, anon_kb: rss, nic_conns: conns }],
            zones,
            zone_bytes: zones * 64,
            mbufs_in_use: mbufs,
            a_tx: 0,
        }
    }

    #[test]
    fn any_growth_but_rss_noise_is_named() {
        let base = s(10, 5000, 0, 4, 0);
        assert!(grown(&base, &s(10, 5000 + RSS_SLACK_KB, 0, 4, 0)).is_empty());
        assert!(grown(&base, &s(9, 4000, 0, 3, 0)).is_empty());
        let g = grown(&base, &s(11, 5000 + RSS_SLACK_KB + 1, 1, 5, 32));
        assert_eq!(g.len(), 5, "{g:?}");
        assert!(g[0].contains("open fds 10 -> 11"), "{g:?}");
        assert!(g[1].contains("RSS"), "{g:?}");
        assert!(g[2].contains("emulator connections 0 -> 1"), "{g:?}");
        assert!(g[3].contains("memzones 4"), "{g:?}");
        assert!(g[4].contains("mbufs in use 0 -> 32"), "{g:?}");
    }
}
