//! Group `events`: `lsc/N`, the link of an emulated 82599 taken down at lab-nic (a command on
//! its control socket, the session kept open) until the link-down callback has run in every one of N processes (this primary and
//! N-1 secondaries, each told through its own interrupt), beside `raw_dgram_rtt`, a raw unix
//! datagram round trip between two processes, in the same run (the floor: an event needs at
//! least one cross-process wake-up), and `raw_dgram_fanout/4`, datagrams to three processes and
//! their three answers (the floor of an event that reaches three other processes).

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use lab_benches::{pin_to, print_ratio, PeerProc, BENCH_CPU};
use lab_core::ethdev::PortEvent;
use lab_core::options::Options;
use lab_core::process::Process;
use lab_core::ring::{Ring, RingFlags};
use lab_testkit::LabNic;

const PEER: &str = env!("CARGO_BIN_EXE_lab-bench-peer");
const BDF: &str = "0000:00:05.0";

fn main() {
    let xdg = tempfile::tempdir().expect("tempdir");
    std::env::set_var("XDG_RUNTIME_DIR", xdg.path());
    pin_to(BENCH_CPU);
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(4));
    let mut g = c.benchmark_group("events");

    // Floor: blocking datagram ping-pong between two processes.
    {
        let srv = xdg.path().join("raw-echo");
        let _peer = PeerProc::spawn(PEER, &["raw-echo".into(), srv.display().to_string()], xdg.path());
        let me = UnixDatagram::bind(xdg.path().join("raw-client")).expect("bind");
        let (buf, mut rb) = ([7u8; 96], [0u8; 8192]);
        g.bench_function("raw_dgram_rtt", |b| {
            b.iter(|| {
                me.send_to(&buf, &srv).expect("send");
                me.recv(&mut rb).expect("recv")
            })
        });
    }

    // The same floor for four processes: one datagram to each of three echo processes and
    // their three answers (what any event reaching three other processes and reported back
    // costs at least, on this machine's cores).
    {
        let peers: Vec<_> = (0..3)
            .map(|i| {
                let srv = xdg.path().join(format!("raw-echo-{i}"));
                let p = PeerProc::spawn(PEER, &["raw-echo".into(), srv.display().to_string()], xdg.path());
                (srv, p)
            })
            .collect();
        let me = UnixDatagram::bind(xdg.path().join("raw-fanout")).expect("bind");
        let (buf, mut rb) = ([7u8; 96], [0u8; 8192]);
        g.bench_function(BenchmarkId::new("raw_dgram_fanout", 4), |b| {
            b.iter(|| {
                for (srv, _) in &peers {
                    me.send_to(&buf, srv).expect("send");
                }
                for _ in &peers {
                    me.recv(&mut rb).expect("recv");
                }
            })
        });
    }

    let nic = LabNic::builder().dev(format!("{BDF},model=ixgbe,wire=loopback")).start();
    std::env::set_var("SYSFS_PCI_DEVICES", nic.root());
    let prefix = format!("bench-ev-{}", std::process::id());
    let (opts, _) = Options::parse([format!("--file-prefix={prefix}"), "--proc-type=primary".into()]).expect("opts");
    let hp = Process::init(&opts, lab_drivers::registry()).expect("primary");
    let ring = Ring::<u64>::create(hp.runtime().shm(), "bench-events", 1024, RingFlags::MPMC).expect("ring");
    let mine = Arc::new(AtomicU64::new(0));
    let m = mine.clone();
    hp.on_event(move |_, ev| {
        if matches!(ev, PortEvent::LinkUp | PortEvent::LinkDown) {
            m.fetch_add(1, Ordering::Release);
        }
    });
    hp.attach(BDF).expect("attach the 82599");
    let peer_args = vec!["events".to_string(), format!("--file-prefix={prefix}"), "--proc-type=secondary".into()];
    let mut peers = Vec::new();
    // Every process saw the change: this one's callback, and one ring entry per secondary.
    let wait_all = |n: usize, before: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        let mut buf = [0u64; 16];
        while mine.load(Ordering::Acquire) == before || got < n - 1 {
            got += ring.dequeue_burst(&mut buf);
            assert!(
                Instant::now() < deadline,
                "events: {got} of {} secondaries, primary {}",
                n - 1,
                mine.load(Ordering::Acquire) != before
            );
            // Yield, not spin: this process's event thread shares the bench's core.
            std::thread::yield_now();
        }
    };
    // One control session for the whole run: a connect per command would put lab-nic's accept
    // and its session thread's start into every figure.
    let mut ctl = nic.session();
    for n in [1usize, 4] {
        while peers.len() + 1 < n {
            peers.push(PeerProc::spawn(PEER, &peer_args, xdg.path()));
        }
        // Let the secondaries' event threads watch the port (they pick ports up every 50 ms).
        std::thread::sleep(Duration::from_millis(300));
        g.bench_with_input(BenchmarkId::new("lsc", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let before = mine.load(Ordering::Acquire);
                    let t = Instant::now();
                    assert!(ctl.command(&format!("link down {BDF}")).starts_with("ok"));
                    wait_all(n, before);
                    spent += t.elapsed();
                    let before = mine.load(Ordering::Acquire);
                    assert!(ctl.command(&format!("link up {BDF}")).starts_with("ok"));
                    wait_all(n, before);
                }
                spent
            })
        });
    }
    g.finish();
    drop(peers);
    hp.shutdown();
    drop(nic);
    c.final_summary();
    println!();
    for n in [1, 4] {
        print_ratio(&format!("lsc/{n} vs floor"), "events", &format!("lsc/{n}"), "raw_dgram_rtt", Some(2.0));
    }
    print_ratio("lsc/4 vs fan-out floor", "events", "lsc/4", "raw_dgram_fanout/4", Some(2.0));
}
