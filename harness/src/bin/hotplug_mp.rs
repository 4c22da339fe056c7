//! `hotplug_mp`: DPDK's multi-process hotplug example, command for command.
//!
//! ```text
//! hotplug_mp [EAL options] [-- app options]
//! example> attach net_null0,size=128
//! attached device net_null0
//! example> list
//! list all etherdev
//! 0    net_null0
//! ```
//! Start it in two terminals (the first becomes the primary with `--proc-type=auto`) and attach or
//! detach from either: both lists agree. Besides DPDK's commands (help, list, attach, detach, quit)
//! it has `lock`, `unlock`, `info`, and for traffic `send`, `recv`, `stats`.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::time::Duration;

use lab_core::devargs::Devargs;
use lab_core::ethdev::PortId;
use lab_core::hotplug::HotplugError;
use lab_core::options::{usage, Options, OptionsError};
use lab_core::process::Process;
use lab_core::runtime::init_logging;

const HELP: &str = "\
help                                   show this help
list                                   list all ports of this process
attach <devargs>                       attach a device in every process
detach <devargs | name | port id>      detach a device from every process
lock <port id>                         lock a port here: its detach is vetoed
unlock <port id>                       undo one lock
info <port id>                         show a port
send <port id> <count> [size]          send test frames on queue 0
recv <port id> <count> [timeout ms]    receive frames on queue 0
poll <port id>[,<port id>...] <ms> [up] poll them (rx and tx bursts) for ms, or till all links are up
bond add|remove <bond id> <member>     add or remove a bond member at runtime, in every process
stats <port id>                        port counters in this process
quit                                   exit (end of input too)";

fn main() {
    let (opts, _app) = match Options::parse(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(OptionsError::HelpRequested) => {
            println!("usage: hotplug_mp [EAL options] [-- ]\n{}", usage());
            return;
        }
        Err(e) => {
            eprintln!("hotplug_mp: {e}");
            std::process::exit(2);
        }
    };
    init_logging(opts.log_level.as_deref());
    let hp = match Process::init(&opts, lab_drivers::registry()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("hotplug_mp: {e}");
            std::process::exit(1);
        }
    };
    // Port events as they come, on stderr (stdout carries the command answers):
    // `event: port 1 link down`, `event: port 1 removed`, `event: port 2 new`...
    hp.on_event(|port, ev| eprintln!("event: port {} {ev}", port.0));
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut line = String::new();
    loop {
        let _ = write!(out, "example> ");
        let _ = out.flush();
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let cmd = line.trim();
        if cmd.is_empty() {
            continue;
        }
        if cmd == "quit" {
            break;
        }
        let text = run(&hp, cmd);
        let _ = writeln!(out, "{text}");
    }
    let _ = writeln!(out);
    hp.shutdown();
}

fn port_arg(s: Option<&str>) -> Result<PortId, String> {
    let s = s.ok_or("missing port id")?;
    s.parse::<u16>().map(PortId).map_err(|_| format!("bad port id {s:?}"))
}

fn run(hp: &Process, cmd: &str) -> String {
    let (verb, rest) = cmd.split_once(char::is_whitespace).map(|(a, b)| (a, b.trim())).unwrap_or((cmd, ""));
    let mut args = rest.split_whitespace();
    match verb {
        "help" => HELP.to_string(),
        "list" => {
            let mut s = String::from("list all etherdev");
            for (p, name) in hp.list() {
                s.push_str(&format!("\n{p}\t{name}"));
            }
            s
        }
        "attach" => {
            let da = match Devargs::parse(rest) {
                Ok(d) => d,
                Err(e) => return format!("cannot parse devargs: {e}"),
            };
            match hp.attach(rest) {
                Ok(_) => format!("attached device {}", da.name()),
                Err(HotplugError::Devargs(e)) => format!("cannot parse devargs: {e}"),
                Err(e) => format!("failed to attach device {}: {e}", da.name()),
            }
        }
        "detach" => {
            if rest.is_empty() {
                return "failed to detach device: missing devargs, name or port id".into();
            }
            let name = hp.find(rest).map(|e| e.name).unwrap_or_else(|| rest.to_string());
            match hp.detach(rest) {
                Ok((_, name)) => format!("detached device {name}"),
                Err(e) => format!("failed to detach device {name}: {e}"),
            }
        }
        "lock" | "unlock" => match port_arg(args.next()) {
            Ok(p) => {
                let r = if verb == "lock" { hp.lock(p) } else { hp.unlock(p) };
                match r {
                    Ok(_) => format!("{verb}ed port {p}"),
                    Err(e) => format!("failed to {verb} port {p}: {e}"),
                }
            }
            Err(e) => format!("failed to {verb} port: {e}"),
        },
        "info" => match port_arg(args.next()).and_then(|p| hp.info(p).map_err(|e| e.to_string())) {
            Ok(i) => {
                let m = i.dev.mac;
                format!(
                    "port: {}\nname: {}\ndriver: {}\nstate: {:?}\nmac: {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\nmtu: {}\nlink: {}\nrx queues: {}\ntx queues: {}\nlocks: {}",
                    i.entry.port, i.entry.name, i.dev.driver, i.entry.state, m[0], m[1], m[2], m[3], m[4], m[5],
                    i.dev.mtu, i.link, i.dev.nb_rxq, i.dev.nb_txq, i.locks
                )
            }
            Err(e) => format!("failed to show port: {e}"),
        },
        "stats" => match port_arg(args.next()).and_then(|p| hp.info(p).map_err(|e| e.to_string())) {
            Ok(i) => {
                let s = i.stats;
                format!(
                    "rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} rx_missed={} rx_errors={} tx_errors={} rx_nombuf={}",
                    s.ipackets, s.ibytes, s.opackets, s.obytes, s.imissed, s.ierrors, s.oerrors, s.rx_nombuf
                )
            }
            Err(e) => format!("failed to show stats: {e}"),
        },
        "send" => {
            let p = match port_arg(args.next()) {
                Ok(p) => p,
                Err(e) => return format!("failed to send: {e}"),
            };
            let count = args.next().and_then(|c| c.parse::<u64>().ok()).unwrap_or(1);
            let size = args.next().and_then(|c| c.parse::<usize>().ok()).unwrap_or(64);
            match lab_harness::traffic::send_frames(hp, p, count, size) {
                Ok(n) => format!("sent {n} packets on port {p}"),
                Err(e) => format!("failed to send on port {p}: {e}"),
            }
        }
        "recv" => {
            let p = match port_arg(args.next()) {
                Ok(p) => p,
                Err(e) => return format!("failed to receive: {e}"),
            };
            let count = args.next().and_then(|c| c.parse::<u64>().ok()).unwrap_or(1);
            let ms = args.next().and_then(|c| c.parse::<u64>().ok()).unwrap_or(1000);
            match lab_harness::traffic::recv_frames(hp, p, count, Duration::from_millis(ms)) {
                Ok((n, b)) => format!("received {n} packets ({b} bytes) on port {p}"),
                Err(e) => format!("failed to receive on port {p}: {e}"),
            }
        }
        "bond" => {
            let (op, bond, member) = (args.next(), port_arg(args.next()), args.next());
            match (op, bond, member) {
                (Some("add"), Ok(b), Some(m)) => match lab_drivers::bonding::member_add(hp, b, m) {
                    Ok(k) => format!("added member {m} to bonding port {b} (slot {k})"),
                    Err(e) => format!("failed to add member {m} to port {b}: {e}"),
                },
                (Some("remove"), Ok(b), Some(m)) => match lab_drivers::bonding::member_remove(hp, b, m) {
                    Ok(k) => format!("removed member {m} from bonding port {b} (slot {k})"),
                    Err(e) => format!("failed to remove member {m} from port {b}: {e}"),
                },
                (_, Err(e), _) => format!("failed to change bond members: {e}"),
                _ => "failed to change bond members: bond add|remove <bond id> <member>".to_string(),
            }
        }
        "poll" => {
            let ports: Result<Vec<PortId>, String> =
                args.next().unwrap_or("").split(',').map(|p| port_arg(Some(p))).collect();
            let ports = match ports {
                Ok(p) => p,
                Err(e) => return format!("failed to poll: {e}"),
            };
            let Some(ms) = args.next().and_then(|c| c.parse::<u64>().ok()) else {
                return "failed to poll: missing or bad time in ms".to_string();
            };
            let until_up = match args.next() {
                None => false,
                Some("up") => true,
                Some(o) => return format!("failed to poll: {o:?}: only \"up\" may follow the time"),
            };
            let list = ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
            let t = std::time::Instant::now();
            let r = lab_harness::traffic::poll(hp, &ports, Duration::from_millis(ms), until_up);
            let took = t.elapsed().as_millis();
            match r {
                Ok((n, true)) => format!("polled ports {list} for {took} ms: {n} packets received, links up"),
                Ok((n, false)) if until_up => {
                    format!("failed to poll ports {list}: links not all up within {ms} ms ({n} packets received)")
                }
                Ok((n, false)) => {
                    format!("polled ports {list} for {took} ms: {n} packets received, links not all up")
                }
                Err(e) => format!("failed to poll ports {list}: {e}"),
            }
        }
        other => format!("unknown command {other:?}: try help"),
    }
}
