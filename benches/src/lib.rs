//! lab-benches: criterion benches of hotplug-lab, each beside its physical floor.
//!
//! Shared helpers: spawning peer processes, a private runtime for the bench process, and the
//! ratio report printed at the end of a run (read back from criterion's own estimates).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// CPU the bench process runs on; peers go to the other one (when the machine has two), so
/// every floor and every measured path pays the same cross-core wake-ups.
pub const BENCH_CPU: usize = 0;

/// Pins the calling thread (and threads it spawns later) to `cpu`, if that CPU exists.
pub fn pin_to(cpu: usize) {
    // Online CPUs of the machine, not of our (possibly inherited, pinned) affinity mask.
    let n =
        nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN).ok().flatten().unwrap_or(1).max(1) as usize;
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu % n).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// CPU for peer processes: the one after `BENCH_CPU`.
pub fn peer_cpu() -> usize {
    BENCH_CPU + 1
}

/// A spawned peer, killed (by pid) and reaped on drop.
pub struct PeerProc {
    child: Child,
}

impl PeerProc {
    /// Spawns `bin args...` with `XDG_RUNTIME_DIR=xdg` and waits for its `ready` line.
    pub fn spawn(bin: &str, args: &[String], xdg: &std::path::Path) -> PeerProc {
        Self::spawn_on(bin, args, xdg, peer_cpu())
    }

    /// Like `spawn`, pinned to `cpu`.
    pub fn spawn_on(bin: &str, args: &[String], xdg: &std::path::Path, cpu: usize) -> PeerProc {
        let mut child = Command::new(bin)
            .args(args)
            .env("XDG_RUNTIME_DIR", xdg)
            .env("LAB_BENCH_CPU", cpu.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bench peer");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).expect("peer ready line");
        assert_eq!(line.trim(), "ready", "bench peer did not start");
        PeerProc { child }
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Time per iteration (ns) criterion measured for `group/id` in this run, from its estimates file.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.join("target")).unwrap_or_default()
    });
    let p = dir.join("criterion").join(group).join(id).join("new").join("estimates.json");
    let s = std::fs::read_to_string(p).ok()?;
    // {"mean":{"confidence_interval":{...},"point_estimate":123.4,...}, ..., "slope":{...}}
    // The slope (what criterion prints as "time") when present, else the mean.
    let i = s.find("\"slope\":{").or_else(|| s.find("\"mean\""))?;
    let j = s[i..].find("\"point_estimate\":")? + i + "\"point_estimate\":".len();
    let end = s[j..].find([',', '}'])? + j;
    s[j..end].trim().parse().ok()
}

/// Prints `name: a / b = ratio (limit)` for a pair of measured benches.
pub fn print_ratio(label: &str, group: &str, a: &str, b: &str, limit: Option<f64>) {
    match (mean_ns(group, a), mean_ns(group, b)) {
        (Some(x), Some(y)) if y > 0.0 => {
            let r = x / y;
            let verdict = match limit {
                Some(l) if r <= l => format!(" (floor {l}x: met)"),
                Some(l) => format!(" (floor {l}x: NOT met)"),
                None => String::new(),
            };
            println!("ratio {label}: {group}/{a} {:.1} us / {group}/{b} {:.1} us = {r:.2}x{verdict}", x / 1e3, y / 1e3);
        }
        _ => println!("ratio {label}: {group}/{a} or {group}/{b} not measured in this run"),
    }
}
