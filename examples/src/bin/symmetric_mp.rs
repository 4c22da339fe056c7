//! `symmetric_mp`: DPDK's symmetric multi-process sample on lab-core, with its arguments and
//! output, so scripts written for DPDK's (the DTS `multiprocess` test plan) run it as they are.
//!
//! ```text
//! symmetric_mp [EAL options] -- -p PORTMASK --num-procs N --proc-id I
//! ```
//!
//! N copies run, one with `--proc-id 0` as the primary (or all with `--proc-type=auto`, the
//! first one started becoming primary). The primary sets every port up with N receive and N
//! transmit queues and RSS over them; every process then polls its own queue I of every port
//! in PORTMASK and forwards what it receives to the port paired with it (the first and second
//! port of the mask, the third and fourth...) on its own queue I. So the NIC spreads flows over
//! the processes and no two processes touch one queue. On SIGINT or SIGTERM each prints, as
//! DPDK's does, `Port P: RX - n, TX - n, Drop - n` for each of its ports and exits.
//!
//! A port that is detached while the processes run stops being polled (`Lcore 0 has no port
//! pair to forward`); one attached meanwhile (by any process: the hotplug protocol brings it
//! to every one, set up by the primary with the N queues) is polled from then on (`Lcore 0
//! using ports P and Q, queue I`).

#[path = "../mp_common.rs"]
mod mp_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lab_core::ethdev::{PortConf, PortEvent, PortId};
use lab_core::mbuf::Mbuf;
use lab_core::process::Process;
use lab_core::rss::RssConf;
use mp_common::ArgError;

const USAGE: &str = "usage: symmetric_mp [EAL options] -- -p PORTMASK --num-procs N --proc-id I";
const BURST: usize = 32;
/// Processes (and so queues per port) at most: the 82599's RSS spreads over 16 queues.
const MAX_PROCS: u16 = 16;

#[derive(Debug, PartialEq, Eq)]
struct Args {
    portmask: u64,
    num_procs: u16,
    proc_id: u16,
}

fn parse_app(args: &[String]) -> Result<Args, ArgError> {
    let (mut portmask, mut num_procs, mut proc_id) = (None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| ArgError::NoValue(flag.into()));
        match flag {
            "-p" => portmask = Some(mp_common::portmask(&value()?)?),
            "--num-procs" => {
                let v = value()?;
                num_procs = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|n| (1..=MAX_PROCS).contains(n))
                        .ok_or_else(|| ArgError::bad("--num-procs", &v, format!("expected 1..={MAX_PROCS}")))?,
                );
            }
            "--proc-id" => {
                let v = value()?;
                proc_id = Some(v.parse::<u16>().map_err(|_| ArgError::bad("--proc-id", &v, "expected a number"))?);
            }
            other => return Err(ArgError::Unknown(other.into())),
        }
    }
    let portmask = portmask.ok_or(ArgError::Missing("-p PORTMASK"))?;
    let num_procs = num_procs.ok_or(ArgError::Missing("--num-procs"))?;
    let proc_id = proc_id.ok_or(ArgError::Missing("--proc-id"))?;
    if proc_id >= num_procs {
        return Err(ArgError::Conflict(format!("--proc-id {proc_id}: must be below --num-procs {num_procs}")));
    }
    if portmask.count_ones() % 2 != 0 {
        return Err(ArgError::Conflict(format!(
            "-p {portmask:x}: an even number of ports is needed (they are paired)"
        )));
    }
    Ok(Args { portmask, num_procs, proc_id })
}

/// Per port: frames received, sent, dropped (the other port refused them).
#[derive(Default, Clone, Copy)]
struct Counts {
    rx: u64,
    tx: u64,
    drop: u64,
}

/// The port pairs of the mask among the ports this process holds now.
fn pairs(p: &Process, mask: u64) -> Vec<(PortId, PortId)> {
    let mut held: Vec<u16> = p.list().iter().map(|(id, _)| id.0).filter(|id| *id < 64 && mask >> id & 1 != 0).collect();
    held.sort_unstable();
    // Pairs follow the mask's order: its 1st and 2nd bit, 3rd and 4th...; a pair needs both.
    let in_mask: Vec<u16> = (0..64).filter(|b| mask >> b & 1 != 0).collect();
    in_mask
        .chunks_exact(2)
        .filter(|c| held.contains(&c[0]) && held.contains(&c[1]))
        .map(|c| (PortId(c[0]), PortId(c[1])))
        .collect()
}

fn main() {
    let (opts, args) = mp_common::parse_or_exit("symmetric_mp", USAGE, parse_app);
    let stop = mp_common::Stop::on_signals();

    // The primary's port setup: N queue pairs, RSS over them (IP, TCP, UDP).
    let conf = PortConf {
        nb_rxq: args.num_procs,
        nb_txq: args.num_procs,
        rss: Some(RssConf::default()),
        ..PortConf::default()
    };
    let p = match Process::init_with(&opts, lab_drivers::registry(), conf) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("symmetric_mp: {e}");
            std::process::exit(1);
        }
    };
    let changed = Arc::new(AtomicU64::new(1));
    let c = changed.clone();
    p.on_event(move |_, _: PortEvent| {
        c.fetch_add(1, Ordering::Relaxed);
    });

    let q = args.proc_id;
    println!("Process {q} of {} ready, {} port(s)", args.num_procs, p.list().len());
    let mut counts = [Counts::default(); 64];
    let mut seen = 0;
    let mut active: Vec<(PortId, PortId)> = Vec::new();
    let mut burst: Vec<Option<Mbuf>> = (0..BURST).map(|_| None).collect();
    while !stop.raised() {
        let now = changed.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            let next = pairs(&p, args.portmask);
            if next != active {
                for (a, b) in &next {
                    println!("Lcore 0 using ports {} and {}, queue {q}", a.0, b.0);
                }
                if next.is_empty() {
                    println!("Lcore 0 has no port pair to forward, queue {q}");
                }
                active = next;
            }
        }
        let mut moved = 0;
        for &(a, b) in &active {
            for (from, to) in [(a, b), (b, a)] {
                let n = p.with_port(from, |d| d.rx_burst(q, &mut burst)).unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let sent = p.with_port(to, |d| d.tx_burst(q, &mut burst[..n])).unwrap_or(0);
                for m in burst[sent..n].iter_mut() {
                    m.take();
                }
                counts[usize::from(from.0)].rx += n as u64;
                counts[usize::from(to.0)].tx += sent as u64;
                counts[usize::from(to.0)].drop += (n - sent) as u64;
                moved += n;
            }
        }
        if moved == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    println!("\nExiting on signal {}\n", stop.signum());
    for port in (0..64u16).filter(|b| args.portmask >> b & 1 != 0) {
        let c = counts[usize::from(port)];
        println!("Port {port}: RX - {}, TX - {}, Drop - {}", c.rx, c.tx, c.drop);
    }
    p.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, ArgError> {
        parse_app(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments_are_dpdks_and_checked() {
        assert_eq!(
            args(&["-p", "3", "--num-procs", "2", "--proc-id", "1"]).unwrap(),
            Args { portmask: 3, num_procs: 2, proc_id: 1 }
        );
        assert_eq!(args(&["-p", "0xc", "--num-procs=4", "--proc-id=0"]).unwrap().portmask, 0xc);
        assert!(args(&["-p", "1", "--num-procs", "2", "--proc-id", "0"])
            .unwrap_err()
            .to_string()
            .contains("even number"));
        assert!(args(&["-p", "3", "--num-procs", "2", "--proc-id", "2"])
            .unwrap_err()
            .to_string()
            .contains("below --num-procs 2"));
        assert!(args(&["-p", "0", "--num-procs", "2", "--proc-id", "0"])
            .unwrap_err()
            .to_string()
            .contains("invalid portmask"));
        assert!(args(&["-p", "3", "--num-procs", "17", "--proc-id", "0"]).unwrap_err().to_string().contains("1..=16"));
        assert!(args(&["-p", "3", "--proc-id", "0"]).unwrap_err().to_string().contains("--num-procs is required"));
        assert!(args(&["-p", "3", "--num-procs", "2", "--proc-id", "0", "-x"])
            .unwrap_err()
            .to_string()
            .contains("\"-x\""));
    }
}
