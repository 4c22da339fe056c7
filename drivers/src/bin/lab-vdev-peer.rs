//! A secondary lab process for the virtual-device tests and benches: starts a runtime from EAL
//! options, probes one device through its driver, then obeys one command per stdin line and
//! answers one line on stdout. Not a user tool.
//!
//! `lab-vdev-peer [EAL options] -- PORT DEVARGS [NB_RXQ [NB_TXQ]]`, then commands:
//! `rx N MS` (receive on every queue until N packets or MS milliseconds), `tx N LEN` (send N
//! frames of LEN bytes on queue 0, bursts of 32), `fwd N` (receive and send back what arrives,
//! N packets), `sink` (receive and free forever, for benches), `fds` (open descriptors),
//! `stats`, `link`, `close` (close(Local)), `probe` (probe again), `quit`.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use lab_core::devargs::Devargs;
use lab_core::ethdev::{EthDev, PortConf, PortId, ProbeCtx, Release, DEFAULT_POOL};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::options::Options;
use lab_core::runtime::{init_logging, Runtime};

/// Ethertype of test frames (IEEE local experimental).
const ETHERTYPE: u16 = 0x88b5;

struct Dev {
    port: u16,
    devargs: String,
    conf: PortConf,
}

fn probe(rt: &Runtime, d: &Dev) -> Result<Box<dyn EthDev>, String> {
    let reg = lab_drivers::registry();
    let da = Devargs::parse(&d.devargs).map_err(|e| e.to_string())?;
    let drv = reg.vdev_driver(da.name()).ok_or_else(|| format!("no driver for {}", da.name()))?;
    let kv = da.validate(drv.name(), drv.keys()).map_err(|e| e.to_string())?;
    let ctx = ProbeCtx {
        runtime: rt,
        port: PortId(d.port),
        name: da.name(),
        devargs: &da,
        kvargs: &kv,
        pci: None,
        conf: &d.conf,
        ports: None,
    };
    drv.probe(&ctx).map_err(|e| e.to_string())
}

fn main() {
    let (opts, rest) = match Options::parse(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("lab-vdev-peer: {e}");
            std::process::exit(2);
        }
    };
    init_logging(opts.log_level.as_deref());
    if rest.len() < 2 {
        eprintln!("usage: lab-vdev-peer [EAL options] -- PORT DEVARGS [NB_RXQ [NB_TXQ]]");
        std::process::exit(2);
    }
    let num = |i: usize, d: u16| rest.get(i).and_then(|s| s.parse::<u16>().ok()).unwrap_or(d);
    let nrx = num(2, 1);
    let dev = Dev {
        port: num(0, 0),
        devargs: rest[1].clone(),
        conf: PortConf { nb_rxq: nrx, nb_txq: num(3, nrx), ..PortConf::default() },
    };
    if let Some(cpu) = std::env::var("LAB_BENCH_CPU").ok().and_then(|c| c.parse::<usize>().ok()) {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
    let rt = match Runtime::init(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lab-vdev-peer: {e}");
            std::process::exit(1);
        }
    };
    let mut pool = match Mempool::lookup(rt.shm(), DEFAULT_POOL, 64) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lab-vdev-peer: {e}");
            std::process::exit(1);
        }
    };
    let mut port = match probe(&rt, &dev) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("error: {e}");
            std::process::exit(1);
        }
    };
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    say(format!("ready {}", std::process::id()));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        let arg = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let r = match (w.first().copied(), port.as_mut()) {
            (None, _) => continue,
            (Some("quit"), _) => break,
            (Some("fds"), _) => format!("fds={}", lab_core::sys::open_fd_count()),
            (Some("fdlist"), _) => std::fs::read_dir("/proc/self/fd")
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| std::fs::read_link(e.path()).ok())
                        .map(|l| l.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
            (Some("probe"), None) => match probe(&rt, &dev) {
                Ok(p) => {
                    port = Some(p);
                    "probed".into()
                }
                Err(e) => format!("error: {e}"),
            },
            (Some("close"), Some(_)) => {
                if let Some(p) = port.take() {
                    p.close(Release::Local);
                }
                "closed".into()
            }
            (Some("rx"), Some(p)) => {
                let (n, b) = rx(p.as_mut(), arg(1), Duration::from_millis(arg(2)));
                format!("rx pkts={n} bytes={b}")
            }
            (Some("tx"), Some(p)) => {
                let (n, b) = tx(p.as_mut(), &mut pool, arg(1), arg(2) as usize);
                format!("tx pkts={n} bytes={b}")
            }
            (Some("fwd"), Some(p)) => format!("fwd pkts={}", fwd(p.as_mut(), arg(1), Duration::from_secs(60))),
            (Some("sink"), Some(p)) => {
                say("sinking".into());
                loop {
                    rx(p.as_mut(), u64::MAX, Duration::from_secs(3600));
                }
            }
            (Some("link"), Some(p)) => format!("link up={}", u8::from(p.link().up)),
            (Some("stats"), Some(p)) => {
                let s = p.stats();
                format!("ipackets={} ibytes={} opackets={} obytes={}", s.ipackets, s.ibytes, s.opackets, s.obytes)
            }
            (Some(c), _) => format!("error: {c}: unknown command or no port"),
        };
        say(r);
    }
    if let Some(p) = port.take() {
        p.close(Release::Local);
    }
    drop(pool);
    drop(rt);
}

/// Receives on every queue until `want` packets or `limit`; frees them. (packets, bytes)
fn rx(p: &mut dyn EthDev, want: u64, limit: Duration) -> (u64, u64) {
    let nq = p.info().nb_rxq;
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let (mut n, mut b) = (0u64, 0u64);
    let end = Instant::now() + limit;
    let mut idle = 0u32;
    while n < want && Instant::now() < end {
        let mut got = 0;
        for q in 0..nq {
            let k = p.rx_burst(q, &mut burst);
            for m in burst[..k].iter_mut().filter_map(Option::take) {
                b += m.pkt_len() as u64;
            }
            got += k;
        }
        n += got as u64;
        if got == 0 {
            idle += 1;
            if idle > 64 {
                std::thread::yield_now();
            }
        } else {
            idle = 0;
        }
    }
    (n, b)
}

/// A test frame: broadcast, locally administered source, ETHERTYPE, then the sequence number.
fn fill(m: &mut Mbuf, seq: u64, len: usize) -> bool {
    if !m.set_len(len.max(22)) {
        return false;
    }
    let d = m.data_mut();
    d[..6].fill(0xff);
    d[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    d[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    d[14..22].copy_from_slice(&seq.to_be_bytes());
    for (i, x) in d[22..].iter_mut().enumerate() {
        *x = (seq as usize + i) as u8;
    }
    true
}

/// Sends `count` frames of `len` bytes on queue 0 (60 s at most). (packets, bytes)
fn tx(p: &mut dyn EthDev, pool: &mut Mempool, count: u64, len: usize) -> (u64, u64) {
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let (mut n, mut b) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(60);
    while n < count && Instant::now() < end {
        let k = ((count - n) as usize).min(32);
        for (i, s) in burst[..k].iter_mut().enumerate() {
            if s.is_none() {
                *s = pool.alloc();
            }
            if let Some(m) = s {
                fill(m, n + i as u64, len);
            }
        }
        let ready = burst[..k].iter().take_while(|s| s.is_some()).count();
        let lens: Vec<u64> = burst[..ready].iter().flatten().map(|m| m.pkt_len() as u64).collect();
        let sent = p.tx_burst(0, &mut burst[..ready]);
        n += sent as u64;
        b += lens[..sent].iter().sum::<u64>();
        // Unsent buffers stay in their slots; compact them to the front for the next try.
        burst[..ready].rotate_left(sent);
        if sent == 0 {
            std::thread::yield_now();
        }
    }
    for s in burst.iter_mut().filter_map(Option::take) {
        pool.free(s);
    }
    (n, b)
}

/// Sends back on queue 0 what arrives on queue 0, until `count` packets. Returns how many.
fn fwd(p: &mut dyn EthDev, count: u64, limit: Duration) -> u64 {
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut n = 0;
    let end = Instant::now() + limit;
    while n < count && Instant::now() < end {
        let k = p.rx_burst(0, &mut burst);
        let mut done = 0;
        while done < k {
            done += p.tx_burst(0, &mut burst[done..k]);
        }
        n += k as u64;
    }
    n
}
