//! `simple_mp`: DPDK's simple multi-process sample on lab-core, with its commands and output.
//!
//! ```text
//! simple_mp [EAL options]            (one primary, then a secondary: --proc-type=secondary|auto)
//! simple_mp > send <string>          the other process prints: core 1: Received '<string>'
//! simple_mp > quit
//! ```
//!
//! The primary creates two rings, `PRI_2_SEC` and `SEC_2_PRI`, and a pool of message buffers,
//! `MSG_POOL`; the secondary finds them and uses the rings the other way round. A message is a
//! buffer from the pool holding the string: its handle goes through the ring, the receiver
//! prints it and gives the buffer back to the pool. A full ring or an empty pool discards the
//! message, with DPDK's words for it. End of input quits as `quit` does.

#[path = "../mp_common.rs"]
mod mp_common;

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::ShmOffset;
use lab_core::ring::{Ring, RingFlags};
use lab_core::runtime::Runtime;

const PROMPT: &str = "simple_mp > ";
const RING_SIZE: u32 = 64;
const POOL_SIZE: u32 = 1024;
/// DPDK's STR_TOKEN_SIZE: the longest message.
const STR_TOKEN_SIZE: usize = 128;
const HELP: &str = "Simple demo example of multi-process in RTE\n\n\
This is a readline-like interface that can be used to\n\
send commands to the simple app. Commands supported are:\n\n\
- send [string]\n- help\n- quit\n";

/// Why the rings or the message pool could not be had.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Ring(#[from] lab_core::ring::RingError),
    #[error(transparent)]
    Pool(#[from] lab_core::mbuf::MbufError),
}

fn main() {
    let (opts, ()) = mp_common::parse_or_exit("simple_mp", "usage: simple_mp [EAL options]", |rest| match rest {
        [] => Ok(()),
        [other, ..] => Err(mp_common::ArgError::Unknown(other.clone())),
    });
    let rt = match Runtime::init(&opts) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simple_mp: Cannot init EAL: {e}");
            std::process::exit(1);
        }
    };
    let shm = rt.shm().clone();
    let setup = || -> Result<(Ring<u64>, Ring<u64>, Mempool), SetupError> {
        if rt.is_primary() {
            let flags = RingFlags::SPSC;
            let s = Ring::create(&shm, "PRI_2_SEC", RING_SIZE, flags)?;
            let r = Ring::create(&shm, "SEC_2_PRI", RING_SIZE, flags)?;
            let p = Mempool::create(&shm, "MSG_POOL", POOL_SIZE, STR_TOKEN_SIZE as u16, 32)?;
            Ok((s, r, p))
        } else {
            let s = Ring::lookup(&shm, "SEC_2_PRI")?;
            let r = Ring::lookup(&shm, "PRI_2_SEC")?;
            let p = Mempool::lookup(&shm, "MSG_POOL", 32)?;
            Ok((s, r, p))
        }
    };
    let (send_ring, recv_ring, mut pool) = match setup() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("simple_mp: Problem getting sending/receiving rings or message pool: {e}");
            std::process::exit(1);
        }
    };
    println!("Finished Process Init.");

    // The receiving "lcore": prints each message and gives its buffer back.
    let stop = Arc::new(AtomicBool::new(false));
    let recv = {
        let (stop, shm) = (stop.clone(), shm.clone());
        let mut pool = pool.new_handle();
        std::thread::spawn(move || {
            println!("Starting core 1");
            let mut offs = [0u64; 32];
            let out = std::io::stdout();
            while !stop.load(Ordering::Relaxed) {
                let n = recv_ring.dequeue_burst(&mut offs);
                if n == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                let mut o = out.lock();
                for off in &offs[..n] {
                    if let Some(m) = Mbuf::from_offset(&shm, ShmOffset(*off)) {
                        let _ = writeln!(o, "core 1: Received '{}'", String::from_utf8_lossy(m.data()));
                        pool.free(m);
                    }
                }
                let _ = o.flush();
            }
        })
    };

    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        print!("{PROMPT}");
        let _ = std::io::stdout().flush();
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let cmd = line.trim_end_matches(['\r', '\n']);
        match cmd.split_once(' ').map_or((cmd, ""), |(c, r)| (c, r)) {
            ("send", msg) => {
                let msg = &msg.as_bytes()[..msg.len().min(STR_TOKEN_SIZE)];
                let Some(mut m) = pool.alloc() else {
                    println!("Failed to get message buffer");
                    continue;
                };
                if !m.copy_from(msg) {
                    println!("Failed to copy the message");
                    pool.free(m);
                    continue;
                }
                let off = m.into_offset().0;
                if !send_ring.enqueue_bulk(&[off]) {
                    println!("Failed to send message - message discarded");
                    if let Some(m) = Mbuf::from_offset(&shm, ShmOffset(off)) {
                        pool.free(m);
                    }
                }
            }
            ("help", _) => print!("{HELP}"),
            ("quit", _) => break,
            ("", _) => {}
            (other, _) => println!("Bad arguments: unknown command {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = recv.join();
    drop((pool, send_ring, shm));
    // The runtime goes last (a primary removes the lab's files with it).
    drop(rt);
}
