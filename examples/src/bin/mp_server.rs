//! `mp_server`: the server of DPDK's client/server multi-process sample on lab-core, with its
//! arguments and its counters' words.
//!
//! ```text
//! mp_server [EAL options] -- -p PORTMASK -n NUM_CLIENTS
//! ```
//!
//! The primary: it sets every port up with one receive queue and one transmit queue per client,
//! creates one ring per client (`MProc_Client_<n>_RX`), receives from every port in PORTMASK and
//! hands the packets to the clients round robin, one by one; a client whose ring is full loses
//! the packet (its `rx_drop`). The clients (`mp_client`) send them on. On SIGINT or SIGTERM it
//! prints `Port P - rx: n` per port and `Client C - rx: n, rx_drop: n` per client, and exits.

#[path = "../mp_common.rs"]
mod mp_common;

use std::time::Duration;

use lab_core::ethdev::{PortConf, PortId};
use lab_core::mbuf::Mbuf;
use lab_core::process::Process;
use lab_core::ring::{Ring, RingFlags};
use mp_common::ArgError;

const USAGE: &str = "usage: mp_server [EAL options] -- -p PORTMASK -n NUM_CLIENTS";
const BURST: usize = 32;
const RING_SIZE: u32 = 2048;
const MAX_CLIENTS: u16 = 16;

#[derive(Debug, PartialEq, Eq)]
struct Args {
    portmask: u64,
    clients: u16,
}

fn parse_app(args: &[String]) -> Result<Args, ArgError> {
    let (mut portmask, mut clients) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| ArgError::NoValue(flag.clone()));
        match flag.as_str() {
            "-p" => portmask = Some(mp_common::portmask(&value()?)?),
            "-n" => {
                let v = value()?;
                clients = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|n| (1..=MAX_CLIENTS).contains(n))
                        .ok_or_else(|| ArgError::bad("-n", &v, format!("expected 1..={MAX_CLIENTS} clients")))?,
                );
            }
            other => return Err(ArgError::Unknown(other.into())),
        }
    }
    Ok(Args {
        portmask: portmask.ok_or(ArgError::Missing("-p PORTMASK"))?,
        clients: clients.ok_or(ArgError::Missing("-n NUM_CLIENTS"))?,
    })
}

fn main() {
    let (opts, args) = mp_common::parse_or_exit("mp_server", USAGE, parse_app);
    let stop = mp_common::Stop::on_signals();
    let conf = PortConf { nb_rxq: 1, nb_txq: args.clients, ..PortConf::default() };
    let p = match Process::init_with(&opts, lab_drivers::registry(), conf) {
        Ok(p) if p.runtime().is_primary() => p,
        Ok(_) => {
            eprintln!("mp_server: must run as the primary process");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("mp_server: {e}");
            std::process::exit(1);
        }
    };
    let shm = p.runtime().shm().clone();
    let rings: Vec<Ring<u64>> = match (0..args.clients)
        .map(|c| Ring::create(&shm, &mp_common::client_ring(c), RING_SIZE, RingFlags::SPSC))
        .collect::<Result<_, _>>()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mp_server: cannot create the client rings: {e}");
            std::process::exit(1);
        }
    };
    let ports: Vec<PortId> =
        p.list().iter().map(|(id, _)| *id).filter(|id| id.0 < 64 && args.portmask >> id.0 & 1 != 0).collect();
    println!("Server ready: ports {:?}, {} clients", ports.iter().map(|p| p.0).collect::<Vec<_>>(), args.clients);

    let (mut port_rx, mut client_rx, mut client_drop) =
        (vec![0u64; 64], vec![0u64; usize::from(args.clients)], vec![0u64; usize::from(args.clients)]);
    let mut burst: Vec<Option<Mbuf>> = (0..BURST).map(|_| None).collect();
    let mut next = 0usize;
    while !stop.raised() {
        let mut got = 0;
        for port in &ports {
            let n = p.with_port(*port, |d| d.rx_burst(0, &mut burst)).unwrap_or(0);
            port_rx[usize::from(port.0)] += n as u64;
            got += n;
            for slot in burst[..n].iter_mut() {
                let Some(m) = slot.take() else { continue };
                let off = m.into_offset().0;
                if rings[next].enqueue_bulk(&[off]) {
                    client_rx[next] += 1;
                } else {
                    client_drop[next] += 1;
                    drop(Mbuf::from_offset(&shm, lab_core::mem::ShmOffset(off)));
                }
                next = (next + 1) % rings.len();
            }
        }
        if got == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    println!("\nExiting on signal {}\n", stop.signum());
    println!("PORTS\n-----");
    for port in &ports {
        println!("Port {} - rx: {}", port.0, port_rx[usize::from(port.0)]);
    }
    println!("\nCLIENTS\n-------");
    for c in 0..usize::from(args.clients) {
        println!("Client {c} - rx: {}, rx_drop: {}", client_rx[c], client_drop[c]);
    }
    drop(rings);
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
        assert_eq!(args(&["-p", "3", "-n", "2"]).unwrap(), Args { portmask: 3, clients: 2 });
        assert!(args(&["-p", "3", "-n", "0"]).unwrap_err().to_string().contains("1..=16"));
        assert!(args(&["-n", "2"]).unwrap_err().to_string().contains("-p PORTMASK"));
        assert!(args(&["-p", "g", "-n", "2"]).unwrap_err().to_string().contains("invalid portmask"));
    }
}
