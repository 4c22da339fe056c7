//! Group `ipc`: the multi-process channel against a raw unix datagram round trip between two
//! processes (its physical floor), and the shared ring between two processes.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use lab_benches::{print_ratio, PeerProc, BENCH_CPU};
use lab_core::ipc::Msg;
use lab_core::options::Options;
use lab_core::ring::{Ring, RingFlags};
use lab_core::runtime::Runtime;

const PEER: &str = env!("CARGO_BIN_EXE_lab-bench-peer");
/// Size of a request on the wire (88-byte header + 8-byte payload): the raw floor sends the same.
const WIRE: usize = 96;

fn main() {
    let xdg = tempfile::tempdir().expect("tempdir");
    // Set before any thread starts: the runtime and the peers use it for their runtime dir.
    std::env::set_var("XDG_RUNTIME_DIR", xdg.path());
    let prefix = format!("bench-ipc-{}", std::process::id());
    lab_benches::pin_to(lab_benches::BENCH_CPU);
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(4));
    let mut g = c.benchmark_group("ipc");

    // Floor: blocking datagram ping-pong between two processes.
    {
        let srv = xdg.path().join("raw-echo");
        let _peer = PeerProc::spawn(PEER, &["raw-echo".into(), srv.display().to_string()], xdg.path());
        let me = UnixDatagram::bind(xdg.path().join("raw-client")).expect("bind");
        let buf = [7u8; WIRE];
        let mut rb = [0u8; 8192];
        g.bench_function("raw_dgram_rtt", |b| {
            b.iter(|| {
                me.send_to(&buf, &srv).expect("send");
                me.recv(&mut rb).expect("recv")
            })
        });
    }

    // The same two paths with both processes on one core: no cross-core wake-up, so the
    // channel's own overhead (syscalls, dispatch) shows instead of the wake-up latency.
    {
        let srv = xdg.path().join("raw-echo-1core");
        let _peer = PeerProc::spawn_on(PEER, &["raw-echo".into(), srv.display().to_string()], xdg.path(), BENCH_CPU);
        let me = UnixDatagram::bind(xdg.path().join("raw-client-1core")).expect("bind");
        let buf = [7u8; WIRE];
        let mut rb = [0u8; 8192];
        g.bench_function("raw_dgram_rtt_1core", |b| {
            b.iter(|| {
                me.send_to(&buf, &srv).expect("send");
                me.recv(&mut rb).expect("recv")
            })
        });
    }

    let (opts, _) = Options::parse([format!("--file-prefix={prefix}"), "--proc-type=primary".into()]).expect("opts");
    let rt = Runtime::init(&opts).expect("bench runtime");
    let sec_args = vec!["secondary".to_string(), format!("--file-prefix={prefix}"), "--proc-type=secondary".into()];
    let mut peers: Vec<PeerProc> = Vec::new();
    let msg = Msg::new("echo", vec![1u8; WIRE - 88]);
    for n in [1usize, 2, 4] {
        while peers.len() < n {
            peers.push(PeerProc::spawn(PEER, &sec_args, xdg.path()));
        }
        g.bench_with_input(BenchmarkId::new("request_sync", n), &n, |b, &n| {
            b.iter(|| {
                let r = rt.ipc().request_sync(&msg, Duration::from_secs(2)).expect("request");
                assert_eq!(r.nb_received, n);
                r.nb_received
            })
        });
        if n == 1 {
            rt.ipc().set_spin_us(50);
            g.bench_with_input(BenchmarkId::new("request_sync_spin", 1), &n, |b, &n| {
                b.iter(|| {
                    let r = rt.ipc().request_sync(&msg, Duration::from_secs(2)).expect("request");
                    assert_eq!(r.nb_received, n);
                })
            });
            rt.ipc().set_spin_us(0);
        }
    }
    drop(peers);
    {
        let _p = PeerProc::spawn_on(PEER, &sec_args, xdg.path(), BENCH_CPU);
        g.bench_with_input(BenchmarkId::new("request_sync_1core", 1), &1, |b, _| {
            b.iter(|| {
                let r = rt.ipc().request_sync(&msg, Duration::from_secs(2)).expect("request");
                assert_eq!(r.nb_received, 1);
            })
        });
    }

    // 64-byte objects, bulk 32, from this process to a draining peer process.
    {
        let ring = Ring::<[u8; 64]>::create(rt.shm(), "bench-ring", 1024, RingFlags::SPSC).expect("ring");
        let mut args =
            vec!["ring-drain".to_string(), format!("--file-prefix={prefix}"), "--proc-type=secondary".into()];
        args.extend(["--".into(), "bench-ring".into()]);
        let _drain = PeerProc::spawn(PEER, &args, xdg.path());
        let objs = [[5u8; 64]; 32];
        g.throughput(Throughput::Elements(32));
        g.bench_function("ring_xproc", |b| {
            b.iter(|| {
                while !ring.enqueue_bulk(&objs) {
                    std::hint::spin_loop();
                }
            })
        });
    }
    g.finish();
    drop(rt);
    c.final_summary();
    println!();
    print_ratio("request_sync/1 vs floor", "ipc", "request_sync/1", "raw_dgram_rtt", Some(1.25));
    print_ratio("request_sync/4 vs request_sync/1", "ipc", "request_sync/4", "request_sync/1", Some(2.0));
    print_ratio("request_sync_spin/1 vs floor", "ipc", "request_sync_spin/1", "raw_dgram_rtt", None);
    print_ratio("one core: request_sync/1 vs floor", "ipc", "request_sync_1core/1", "raw_dgram_rtt_1core", None);
}
