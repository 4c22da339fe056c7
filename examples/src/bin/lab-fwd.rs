//! `lab-fwd`: a forwarding secondary on lab-core, the "client" of the hotplug series' background
//! (the primary creates and destroys devices at runtime; this process deals with the network).
//!
//! ```text
//! lab-fwd [EAL options] -- --pair NAME,NAME [--pair NAME,NAME]... [--burst N] [--max-pps N]
//! ```
//!
//! Each pair is two devices, by name (`0000:00:05.0`, `net_tap0`): what one receives on queue 0
//! the other sends, both ways, for as long as both are attached. Pairs are named by device rather
//! than by port id because ids change when a device goes and comes back. The app reacts to the
//! lab's port events (NEW, DESTROY) without restarting: a pair with a device gone stops, the
//! other pairs go on, and a pair whose device is attached again resumes. It exits on SIGTERM or
//! SIGINT, releasing its own handles only.
//!
//! `--max-pps N` caps the frames moved per second, all pairs together (a token bucket checked once
//! per round of bursts), for a steady background load such as `lab soak`'s.
//!
//! Its counters are the ports' own: read them with telemetry (`/ethdev/stats,P`) or `lab status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lab_core::ethdev::{PortEvent, PortId};
use lab_core::mbuf::Mbuf;
use lab_core::options::{Options, OptionsError};
use lab_core::process::Process;

const USAGE: &str = "usage: lab-fwd [EAL options] -- --pair NAME,NAME [--pair NAME,NAME]... [--burst N] [--max-pps N]";
const MAX_BURST: usize = 256;

#[derive(Debug)]
struct Args {
    pairs: Vec<(String, String)>,
    burst: usize,
    /// `--max-pps`: frames moved per second, all pairs together (none: as fast as it can).
    max_pps: Option<u64>,
}

/// A token bucket refilled at `pps`, checked once per round of bursts (no call per frame).
struct Pace {
    pps: f64,
    tokens: f64,
    cap: f64,
    last: std::time::Instant,
}

impl Pace {
    fn new(pps: u64, burst: usize) -> Pace {
        let cap = (burst * 4) as f64;
        Pace { pps: pps as f64, tokens: cap, cap, last: std::time::Instant::now() }
    }

    fn refill(&mut self) {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.pps).min(self.cap);
        self.last = now;
    }

    /// Sleeps until one burst's worth of tokens is there (or `stop` is raised).
    fn wait(&mut self, need: usize, stop: &AtomicBool) {
        self.refill();
        while self.tokens < need as f64 && !stop.load(Ordering::Relaxed) {
            let short = (need as f64 - self.tokens) / self.pps;
            std::thread::sleep(Duration::from_secs_f64(short.clamp(50e-6, 0.1)));
            self.refill();
        }
    }

    fn spent(&mut self, n: u64) {
        self.tokens -= n as f64;
    }
}

fn parse_app(args: &[String]) -> Result<Args, String> {
    let mut a = Args { pairs: Vec::new(), burst: 32, max_pps: None };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
        match flag {
            "--pair" => {
                let v = value()?;
                match v.split_once(',') {
                    Some((x, y)) if !x.is_empty() && !y.is_empty() && x != y => a.pairs.push((x.into(), y.into())),
                    _ => return Err(format!("--pair {v:?}: expected two different device names, NAME,NAME")),
                }
            }
            "--burst" => {
                let v = value()?;
                a.burst = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BURST).contains(n))
                    .ok_or(format!("--burst {v}: expected 1..={MAX_BURST}"))?;
            }
            "--max-pps" => {
                let v = value()?;
                a.max_pps = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=1_000_000_000).contains(n))
                        .ok_or(format!("--max-pps {v}: expected 1..=1000000000 frames per second"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.pairs.is_empty() {
        return Err("at least one --pair is needed".into());
    }
    Ok(a)
}

/// The pairs whose two devices this process holds now, as port ids.
fn resolve(p: &Process, pairs: &[(String, String)]) -> Vec<(PortId, PortId)> {
    let ports = p.list();
    let id = |name: &str| ports.iter().find(|(_, n)| n == name).map(|(id, _)| *id);
    pairs.iter().filter_map(|(x, y)| Some((id(x)?, id(y)?))).collect()
}

/// One direction of one pair: a burst from `from` sent on `to`; what `to` did not take is freed.
fn forward(p: &Process, from: PortId, to: PortId, burst: &mut [Option<Mbuf>]) -> u64 {
    let n = p.with_port(from, |d| d.rx_burst(0, burst)).unwrap_or(0);
    if n == 0 {
        return 0;
    }
    let sent = p.with_port(to, |d| d.tx_burst(0, &mut burst[..n])).unwrap_or(0);
    // Unsent buffers (the other port gone or full) go back to their pool on drop.
    for m in burst[sent..n].iter_mut() {
        m.take();
    }
    sent as u64
}

fn main() {
    let (opts, app) = match Options::parse(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(OptionsError::HelpRequested) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("lab-fwd: {e}");
            std::process::exit(2);
        }
    };
    let args = match parse_app(&app) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lab-fwd: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(opts.log_level.as_deref().unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();

    // SIGTERM/SIGINT become a flag, checked between bursts (blocked before any thread starts).
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    if set.thread_block().is_ok() {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        });
    }

    let p = match Process::init(&opts, lab_drivers::registry()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lab-fwd: {e}");
            std::process::exit(1);
        }
    };
    // A port event only raises a flag: the loop re-pairs between bursts, never under a port lock.
    let changed = Arc::new(AtomicU64::new(1));
    let c = changed.clone();
    p.on_event(move |_, _: PortEvent| {
        c.fetch_add(1, Ordering::Relaxed);
    });

    let mut seen = 0;
    let mut active: Vec<(PortId, PortId)> = Vec::new();
    let mut burst: Vec<Option<Mbuf>> = (0..args.burst).map(|_| None).collect();
    let mut pace = args.max_pps.map(|pps| Pace::new(pps, args.burst));
    while !stop.load(Ordering::Relaxed) {
        let now = changed.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            let next = resolve(&p, &args.pairs);
            if next != active {
                tracing::info!(pairs = ?next, "forwarding between");
                active = next;
            }
        }
        let mut moved = 0;
        if let Some(pace) = pace.as_mut() {
            pace.wait(args.burst, &stop);
        }
        for &(a, b) in &active {
            moved += forward(&p, a, b, &mut burst);
            moved += forward(&p, b, a, &mut burst);
        }
        if let Some(pace) = pace.as_mut() {
            pace.spent(moved);
        }
        if moved == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    tracing::info!("stopping");
    p.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_app(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn pairs_and_burst_are_checked() {
        let a = args(&["--pair", "a,b", "--pair=c,d", "--burst", "64"]).unwrap();
        assert_eq!(a.pairs, vec![("a".into(), "b".into()), ("c".into(), "d".into())]);
        assert_eq!(a.burst, 64);
        assert!(args(&[]).unwrap_err().contains("--pair"));
        assert!(args(&["--pair", "a"]).unwrap_err().contains("NAME,NAME"));
        assert!(args(&["--pair", "a,a"]).unwrap_err().contains("two different"));
        assert!(args(&["--pair", "a,b", "--burst", "0"]).unwrap_err().contains("1..=256"));
        assert!(args(&["--pair", "a,b", "-x"]).unwrap_err().contains("\"-x\""));
        assert_eq!(args(&["--pair", "a,b", "--max-pps", "5000"]).unwrap().max_pps, Some(5000));
        assert!(args(&["--pair", "a,b", "--max-pps", "0"]).unwrap_err().contains("--max-pps 0"));
    }
}
