//! `mp_client`: a client of DPDK's client/server multi-process sample on lab-core.
//!
//! ```text
//! mp_client [EAL options] --proc-type=secondary -- -n CLIENT_ID
//! ```
//!
//! A secondary: it takes the packets `mp_server` hands it from its ring (`MProc_Client_<n>_RX`)
//! and sends each on the port paired with the one it came from (the server's ports in order,
//! paired first with second, third with fourth), on its own transmit queue (queue CLIENT_ID);
//! what a port does not take is dropped. On SIGINT or SIGTERM it prints `Client C: RX - n, TX -
//! n, Drop - n` and exits.

#[path = "../mp_common.rs"]
mod mp_common;

use std::time::Duration;

use lab_core::ethdev::PortId;
use lab_core::mbuf::Mbuf;
use lab_core::mem::ShmOffset;
use lab_core::process::Process;
use lab_core::ring::Ring;

const USAGE: &str = "usage: mp_client [EAL options] --proc-type=secondary -- -n CLIENT_ID";
const BURST: usize = 32;

fn parse_app(args: &[String]) -> Result<u16, mp_common::ArgError> {
    match args {
        [f, v] if f == "-n" => v.parse().map_err(|_| mp_common::ArgError::bad("-n", v, "expected a client id")),
        [] => Err(mp_common::ArgError::Missing("-n CLIENT_ID")),
        [other, ..] => Err(mp_common::ArgError::Unknown(other.clone())),
    }
}

fn main() {
    let (opts, id) = mp_common::parse_or_exit("mp_client", USAGE, parse_app);
    let stop = mp_common::Stop::on_signals();
    let p = match Process::init(&opts, lab_drivers::registry()) {
        Ok(p) if !p.runtime().is_primary() => p,
        Ok(_) => {
            eprintln!("mp_client: must run as a secondary process (start mp_server first)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("mp_client: {e}");
            std::process::exit(1);
        }
    };
    let shm = p.runtime().shm().clone();
    let ring: Ring<u64> = match Ring::lookup(&shm, &mp_common::client_ring(id)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mp_client: cannot get the ring of client {id} (is the server running with more clients?): {e}");
            std::process::exit(1);
        }
    };
    println!("Client process {id} handling packets");
    let (mut rx, mut tx, mut dropped) = (0u64, 0u64, 0u64);
    let mut offs = [0u64; BURST];
    let mut out: Vec<Option<Mbuf>> = (0..BURST).map(|_| None).collect();
    while !stop.raised() {
        let n = ring.dequeue_burst(&mut offs);
        if n == 0 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        rx += n as u64;
        let mut ports: Vec<u16> = p.list().iter().map(|(id, _)| id.0).collect();
        ports.sort_unstable();
        for off in &offs[..n] {
            let Some(m) = Mbuf::from_offset(&shm, ShmOffset(*off)) else { continue };
            let to = ports.iter().position(|q| *q == m.port()).and_then(|i| ports.get(i ^ 1)).copied();
            let Some(to) = to else {
                dropped += 1;
                continue;
            };
            out[0] = Some(m);
            let sent = p.with_port(PortId(to), |d| d.tx_burst(id, &mut out[..1])).unwrap_or(0);
            if sent == 1 {
                tx += 1;
            } else {
                out[0].take();
                dropped += 1;
            }
        }
    }
    println!("\nExiting on signal {}\n", stop.signum());
    println!("Client {id}: RX - {rx}, TX - {tx}, Drop - {dropped}");
    drop(ring);
    p.shutdown();
}
