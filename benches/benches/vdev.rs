//! Group `rxtx`, virtual devices:
//!
//! * `null_io_fwd/32`: testpmd's io-forward on one core: receive a burst of 32 from one net_null
//!   port, send it on another. The figure to beat is DPDK 22.11 testpmd on this machine, 42.6 Mpps.
//! * `ring_xproc/64`: net_ring between two processes (this one sends bursts of 64 freshly
//!   allocated buffers, a secondary receives and frees them), beside its floor `ring_u64_xproc/64`:
//!   a raw lab_core `Ring<u64>` of 64 offsets per burst between the same two processes.
//! * `af_packet_veth/64`, `tap/64`: bursts of 64 60-byte frames sent into a veth pair / a TAP, for
//!   reference (the kernel's cost). They need CAP_NET_ADMIN and are skipped with a line otherwise.
//!
//! * `vhost_virtio_user/64`: our net_virtio_user in one lab (a primary of its own, started from
//!   this executable) forwarding back to our net_vhost here: 256 60-byte frames circulate, an
//!   iteration receives 64 and sends them out again (each frame crosses vhost-user twice, copied
//!   by the back end each way). Beside it `dpdk_vhost_virtio_user/64`: the same shape with DPDK
//!   22.11 testpmd on both ends (net_vhost0 and net_virtio_user0, io forward, 4 bursts of 64 put
//!   in flight with `start tx_first 4`), timed from the vhost side's telemetry counters; and the
//!   floor `ring_u64_xproc/64`.
//!
//! * `bonding_rr/64`: 64 frames out through net_bonding mode 0 over two net_ring members and
//!   back from the members' peers, in one process, beside `bonding_single_ring/64`: the same
//!   through one net_ring (the bonding overhead).
//!
//! The second process is this bench executable itself, started in a peer mode (`vdev-peer ...`),
//! so the bench needs no binary of another crate.

use std::io::{Read, Write};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use lab_benches::{pin_to, print_ratio, PeerProc, BENCH_CPU};
use lab_core::devargs::Devargs;
use lab_core::ethdev::{Driver, EthDev, LocalPort, PortConf, PortId, Ports, ProbeCtx, Release, DEFAULT_POOL};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::options::Options;
use lab_core::ring::{Ring, RingFlags};
use lab_core::runtime::Runtime;
use lab_drivers::af_packet::AfPacketDriver;
use lab_drivers::bonding::BondingDriver;
use lab_drivers::null::NullDriver;
use lab_drivers::ring::RingDriver;
use lab_drivers::tap::TapDriver;
use lab_drivers::virtio::user::VirtioUserDriver;
use lab_drivers::virtio::vhost::VhostDriver;

fn probe(rt: &Runtime, drv: &dyn Driver, devargs: &str, port: u16) -> Box<dyn EthDev> {
    probe_in(rt, drv, devargs, port, None)
}

/// As [`probe`], with a port table for a device over others (net_bonding).
fn probe_in(
    rt: &Runtime,
    drv: &dyn Driver,
    devargs: &str,
    port: u16,
    ports: Option<&std::sync::Arc<Ports>>,
) -> Box<dyn EthDev> {
    let da = Devargs::parse(devargs).expect("devargs");
    let kv = da.validate(drv.name(), drv.keys()).expect("keys");
    let conf = PortConf::default();
    let ctx = ProbeCtx {
        runtime: rt,
        port: PortId(port),
        name: da.name(),
        devargs: &da,
        kvargs: &kv,
        pci: None,
        conf: &conf,
        ports,
    };
    drv.probe(&ctx).unwrap_or_else(|e| panic!("probe {devargs}: {e}"))
}

/// Puts `window` bursts of 64 60-byte frames (locally administered MACs) in flight on `port`.
fn prime(port: &mut dyn EthDev, pool: &mut Mempool, b: &mut [Option<Mbuf>], window: usize) {
    for _ in 0..window {
        assert!(pool.alloc_bulk(b));
        for m in b.iter_mut().flatten() {
            m.set_len(60);
            m.data_mut()[..12].fill(0x02);
        }
        let mut sent = 0;
        while sent < b.len() {
            sent += port.tx_burst(0, &mut b[sent..]);
        }
    }
}

/// One iteration of a circulating window: a whole burst back from `port`, and out again.
fn bounce(port: &mut dyn EthDev, b: &mut [Option<Mbuf>]) {
    let mut got = 0;
    while got < b.len() {
        got += port.rx_burst(0, &mut b[got..]);
    }
    let mut sent = 0;
    while sent < b.len() {
        sent += port.tx_burst(0, &mut b[sent..]);
    }
}

fn burst(n: usize) -> Vec<Option<Mbuf>> {
    (0..n).map(|_| None).collect()
}

fn runtime(prefix: &str, role: &str) -> Runtime {
    let (opts, _) = Options::parse([format!("--file-prefix={prefix}"), format!("--proc-type={role}")]).expect("opts");
    Runtime::init(&opts).expect("runtime")
}

/// Peer mode: `vdev-peer ring-sink|ring-fwd PREFIX DEVARGS PORT` or `vdev-peer u64-echo PREFIX RING_IN RING_OUT`.
fn peer_main(args: &[String]) -> ! {
    if let Some(cpu) = std::env::var("LAB_BENCH_CPU").ok().and_then(|c| c.parse().ok()) {
        pin_to(cpu);
    }
    std::thread::spawn(|| {
        let mut b = [0u8; 64];
        while let Ok(n) = std::io::stdin().read(&mut b) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    let ready = || {
        let mut o = std::io::stdout();
        let _ = writeln!(o, "ready");
        let _ = o.flush();
    };
    if args[0] == "vu-fwd" {
        peer_primary(args);
    }
    let rt = runtime(&args[1], "secondary");
    match args[0].as_str() {
        "ring-sink" => {
            let mut port = probe(&rt, &RingDriver, &args[2], args[3].parse().expect("port"));
            let mut pool = Mempool::lookup(rt.shm(), DEFAULT_POOL, 256).expect("pool");
            let mut b = burst(64);
            ready();
            loop {
                let n = port.rx_burst(0, &mut b);
                pool.free_bulk(&mut b[..n]);
            }
        }
        "ring-fwd" => {
            let mut port = probe(&rt, &RingDriver, &args[2], args[3].parse().expect("port"));
            let mut b = burst(64);
            ready();
            loop {
                let n = port.rx_burst(0, &mut b);
                let mut sent = 0;
                while sent < n {
                    sent += port.tx_burst(0, &mut b[sent..n]);
                }
            }
        }
        "u64-echo" => {
            let a = Ring::<u64>::lookup(rt.shm(), &args[2]).expect("ring");
            let z = Ring::<u64>::lookup(rt.shm(), &args[3]).expect("ring");
            let mut b = [0u64; 64];
            ready();
            loop {
                let n = a.dequeue_burst(&mut b);
                let mut sent = 0;
                while sent < n {
                    sent += z.enqueue_burst(&b[sent..n]);
                }
            }
        }
        m => panic!("unknown peer mode {m}"),
    }
}

/// Peer mode `vu-fwd PREFIX DEVARGS`: a lab of its own (PREFIX) whose net_virtio_user forwards
/// what it receives.
fn peer_primary(args: &[String]) -> ! {
    let ready = || {
        let mut o = std::io::stdout();
        let _ = writeln!(o, "ready");
        let _ = o.flush();
    };
    {
        // A lab of its own (args[1] is its prefix): net_virtio_user forwarding what it gets.
        let rt = runtime(&args[1], "primary");
        // No file left behind when killed: the mapping and the descriptor outlive the name.
        rt.shm().unlink();
        let _pool = Mempool::create(rt.shm(), DEFAULT_POOL, 4096, 2048, 0).expect("pool");
        let mut port = probe(&rt, &VirtioUserDriver, &args[2], 0);
        let mut b = burst(64);
        ready();
        loop {
            let n = port.rx_burst(0, &mut b);
            let mut sent = 0;
            while sent < n {
                sent += port.tx_burst(0, &mut b[sent..n]);
            }
        }
    }
}

fn net_admin() -> bool {
    lab_drivers::tap::has_net_admin() && std::path::Path::new("/dev/net/tun").exists()
}

fn sh(args: &[&str]) -> bool {
    std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

/// Deletes a link on drop.
struct Link(String);
impl Drop for Link {
    fn drop(&mut self) {
        sh(&["link", "del", "dev", &self.0]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("vdev-peer") {
        peer_main(&args[1..]);
    }
    let me = std::env::current_exe().expect("current exe").display().to_string();
    let xdg = tempfile::tempdir().expect("tempdir");
    // Set before any thread starts: the runtime and the peers use it for their runtime dir.
    std::env::set_var("XDG_RUNTIME_DIR", xdg.path());
    pin_to(BENCH_CPU);
    let prefix = format!("bench-vdev-{}", std::process::id());
    let rt = runtime(&prefix, "primary");
    let _pool = Mempool::create(rt.shm(), DEFAULT_POOL, 8192, 2048, 0).expect("pool");
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(4));
    let mut g = c.benchmark_group("rxtx");

    // testpmd io-forward over two null ports, one core.
    {
        let mut p0 = probe(&rt, &NullDriver, "net_null0", 0);
        let mut p1 = probe(&rt, &NullDriver, "net_null1", 1);
        let mut b = burst(32);
        g.throughput(Throughput::Elements(32));
        g.bench_with_input(BenchmarkId::new("null_io_fwd", 32), &32, |bch, _| {
            bch.iter(|| {
                let n = p0.rx_burst(0, &mut b);
                let mut sent = 0;
                while sent < n {
                    sent += p1.tx_burst(0, &mut b[sent..n]);
                }
                n
            })
        });
        p0.close(Release::Shared);
        p1.close(Release::Shared);
    }

    // Floor: 256 u64s circulating between two processes through two raw rings (the secondary
    // echoes ring a into ring b); an iteration takes 64 back and sends them out again.
    const WINDOW: usize = 4;
    {
        let a = Ring::<u64>::create(rt.shm(), "bench_a", 1024, RingFlags::MPMC).expect("ring");
        let z = Ring::<u64>::create(rt.shm(), "bench_b", 1024, RingFlags::MPMC).expect("ring");
        let args = vec!["vdev-peer".into(), "u64-echo".into(), prefix.clone(), "bench_a".into(), "bench_b".into()];
        let _peer = PeerProc::spawn(&me, &args, xdg.path());
        let mut objs: Vec<u64> = (0..64).collect();
        for _ in 0..WINDOW {
            assert!(a.enqueue_bulk(&objs));
        }
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("ring_u64_xproc", 64), &64, |bch, _| {
            bch.iter(|| {
                let mut got = 0;
                while got < 64 {
                    got += z.dequeue_burst(&mut objs[got..]);
                }
                let mut sent = 0;
                while sent < 64 {
                    sent += a.enqueue_burst(&objs[sent..]);
                }
            })
        });
    }

    // net_ring, the same shape: 256 buffers circulating (net_ring0 here, net_ring1 forwarding in a
    // secondary); zero copy, the pool is not involved.
    {
        let mut port = probe(&rt, &RingDriver, "net_ring0,peer=net_ring1", 2);
        let other = probe(&rt, &RingDriver, "net_ring1,peer=net_ring0", 3);
        let args =
            vec!["vdev-peer".into(), "ring-fwd".into(), prefix.clone(), "net_ring1,peer=net_ring0".into(), "3".into()];
        let peer = PeerProc::spawn(&me, &args, xdg.path());
        let mut pool = Mempool::lookup(rt.shm(), DEFAULT_POOL, 256).expect("pool");
        let mut b = burst(64);
        prime(port.as_mut(), &mut pool, &mut b, WINDOW);
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("ring_xproc", 64), &64, |bch, _| {
            bch.iter(|| bounce(port.as_mut(), &mut b))
        });
        drop(peer);
        drop(pool);
        port.close(Release::Shared);
        other.close(Release::Shared);
    }

    // vhost-user: our front end in a lab of its own forwarding back to our back end here.
    {
        let sock = xdg.path().join("bench-vhost.sock");
        let mut port = probe(&rt, &VhostDriver, &format!("net_vhost0,iface={}", sock.display()), 8);
        let args = vec![
            "vdev-peer".into(),
            "vu-fwd".into(),
            format!("{prefix}-vu"),
            format!("net_virtio_user0,path={}", sock.display()),
        ];
        let peer = PeerProc::spawn(&me, &args, xdg.path());
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !port.link().up && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut pool = Mempool::lookup(rt.shm(), DEFAULT_POOL, 256).expect("pool");
        let mut b = burst(64);
        prime(port.as_mut(), &mut pool, &mut b, WINDOW);
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("vhost_virtio_user", 64), &64, |bch, _| {
            bch.iter(|| bounce(port.as_mut(), &mut b))
        });
        drop(peer);
        drop(pool);
        port.close(Release::Shared);
    }
    bench_dpdk_vhost(&mut g, xdg.path(), &prefix);

    // Bonding overhead, one process: 64 frames out through net_bonding (round robin over two
    // net_ring members) and back from the members' peers, beside the same through one net_ring.
    {
        let ports = std::sync::Arc::new(Ports::default());
        for (id, dev) in [(10u16, "net_ring10,peer=net_ring12"), (11, "net_ring11,peer=net_ring13")] {
            let d = probe(&rt, &RingDriver, dev, id);
            let name = dev.split(',').next().unwrap_or(dev).to_string();
            ports.insert(LocalPort { port: PortId(id), gen: 1, name, dev: d, locks: 0 });
        }
        let mut obs = [
            probe(&rt, &RingDriver, "net_ring12,peer=net_ring10", 12),
            probe(&rt, &RingDriver, "net_ring13,peer=net_ring11", 13),
        ];
        let mut bond =
            probe_in(&rt, &BondingDriver, "net_bonding0,mode=0,slave=net_ring10,slave=net_ring11", 14, Some(&ports));
        let mut one = probe(&rt, &RingDriver, "net_ring14,peer=net_ring15", 15);
        let mut one_obs = probe(&rt, &RingDriver, "net_ring15,peer=net_ring14", 16);
        let mut pool = Mempool::lookup(rt.shm(), DEFAULT_POOL, 256).expect("pool");
        let mut b = burst(64);
        assert!(pool.alloc_bulk(&mut b));
        for m in b.iter_mut().flatten() {
            m.set_len(60);
        }
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("bonding_rr", 64), &64, |bch, _| {
            bch.iter(|| {
                let mut sent = 0;
                while sent < 64 {
                    sent += bond.tx_burst(0, &mut b[sent..]);
                }
                let mut got = 0;
                while got < 64 {
                    for o in obs.iter_mut() {
                        got += o.rx_burst(0, &mut b[got..]);
                    }
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("bonding_single_ring", 64), &64, |bch, _| {
            bch.iter(|| {
                let mut sent = 0;
                while sent < 64 {
                    sent += one.tx_burst(0, &mut b[sent..]);
                }
                let mut got = 0;
                while got < 64 {
                    got += one_obs.rx_burst(0, &mut b[got..]);
                }
            })
        });
        pool.free_bulk(&mut b);
        drop(pool);
        bond.close(Release::Shared);
        for o in obs {
            o.close(Release::Shared);
        }
        one.close(Release::Shared);
        one_obs.close(Release::Shared);
        for id in [10u16, 11] {
            if let Some(lp) = ports.take(PortId(id)) {
                lp.dev.close(Release::Shared);
            }
        }
    }

    // net_ring one way with the pool in the loop: this process allocates and sends, a secondary
    // receives and frees (buffers return through the shared pool ring), for information.
    {
        let mut tx = probe(&rt, &RingDriver, "net_ring2,peer=net_ring3", 6);
        let rx_local = probe(&rt, &RingDriver, "net_ring3,peer=net_ring2", 7);
        let args =
            vec!["vdev-peer".into(), "ring-sink".into(), prefix.clone(), "net_ring3,peer=net_ring2".into(), "7".into()];
        let peer = PeerProc::spawn(&me, &args, xdg.path());
        let mut pool = Mempool::lookup(rt.shm(), DEFAULT_POOL, 256).expect("pool");
        let mut b = burst(64);
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("ring_xproc_alloc_free", 64), &64, |bch, _| {
            bch.iter(|| {
                while !pool.alloc_bulk(&mut b) {
                    std::hint::spin_loop();
                }
                for m in b.iter_mut().flatten() {
                    m.set_len(60);
                }
                let mut sent = 0;
                while sent < 64 {
                    sent += tx.tx_burst(0, &mut b[sent..]);
                }
            })
        });
        drop(peer);
        drop(pool);
        tx.close(Release::Shared);
        rx_local.close(Release::Shared);
    }

    // Kernel interfaces, for reference.
    if net_admin() {
        let tag = std::process::id() % 100_000;
        let (a, bname) = (format!("lbva{tag}"), format!("lbvb{tag}"));
        if sh(&["link", "add", &a, "type", "veth", "peer", "name", &bname]) {
            let _l = Link(a.clone());
            for n in [&a, &bname] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{n}/disable_ipv6"), "1");
                sh(&["link", "set", "dev", n, "up"]);
            }
            let mut p = probe(&rt, &AfPacketDriver, &format!("net_af_packet0,iface={a},qdisc_bypass=1"), 4);
            bench_tx(&mut g, "af_packet_veth", p.as_mut(), &rt);
            p.close(Release::Shared);
        }
        let t = format!("lbt{tag}");
        let _l = Link(t.clone());
        let mut p = probe(&rt, &TapDriver, &format!("net_tap0,iface={t}"), 5);
        bench_tx(&mut g, "tap", p.as_mut(), &rt);
        p.close(Release::Shared);
    } else {
        println!("skipping rxtx/af_packet_veth and rxtx/tap: needs CAP_NET_ADMIN and /dev/net/tun");
    }
    g.finish();
    drop(rt);
    c.final_summary();
    println!();
    let mpps = lab_benches::mean_ns("rxtx", "null_io_fwd/32").map(|ns| 32.0 / ns * 1e3);
    match mpps {
        Some(m) => println!(
            "null_io_fwd/32: {m:.1} Mpps (DPDK 22.11 testpmd io-fwd over two null ports here: 42.6 Mpps: {})",
            if m >= 42.6 { "met" } else { "NOT met" }
        ),
        None => println!("null_io_fwd/32 not measured in this run"),
    }
    print_ratio("net_ring vs raw ring, two processes", "rxtx", "ring_xproc/64", "ring_u64_xproc/64", None);
    print_ratio(
        "bonding round robin over two net_rings vs one net_ring",
        "rxtx",
        "bonding_rr/64",
        "bonding_single_ring/64",
        None,
    );
    print_ratio(
        "vhost-user (ours) vs raw ring, two processes",
        "rxtx",
        "vhost_virtio_user/64",
        "ring_u64_xproc/64",
        None,
    );
    print_ratio(
        "vhost-user: ours vs DPDK's (time per 64 frames; under 1 is faster)",
        "rxtx",
        "vhost_virtio_user/64",
        "dpdk_vhost_virtio_user/64",
        Some(1.0),
    );
}

/// Bursts of 64 60-byte frames sent on queue 0 (retrying while the device is full).
/// `dpdk_vhost_virtio_user/64`: testpmd with net_vhost0 (io forward) and testpmd with
/// net_virtio_user0 (io forward, 4 bursts of 64 put in flight), each on its own core; an
/// iteration is 64 more frames forwarded by the vhost side, as its telemetry counts them.
fn bench_dpdk_vhost(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    xdg: &std::path::Path,
    prefix: &str,
) {
    use lab_testkit::{Testpmd, TestpmdError};
    let sock = xdg.join("bench-dpdk-vhost.sock");
    let vhost = format!("net_vhost0,iface={}", sock.display());
    let app = ["--forward-mode=io", "--auto-start", "--burst=64"];
    let back = match Testpmd::start_with(xdg, &format!("{prefix}-dv"), Some(0), &["--vdev", &vhost], &app) {
        Ok(t) => t,
        Err(TestpmdError::Missing) => {
            println!("skipping rxtx/dpdk_vhost_virtio_user: {}", TestpmdError::Missing);
            return;
        }
        Err(e) => {
            println!("skipping rxtx/dpdk_vhost_virtio_user: {e}");
            return;
        }
    };
    let vu = format!("net_virtio_user0,path={}", sock.display());
    let mut front = match Testpmd::start_with(
        xdg,
        &format!("{prefix}-du"),
        Some(1),
        &["--vdev", &vu],
        &["--forward-mode=io", "--burst=64"],
    ) {
        Ok(t) => t,
        Err(e) => {
            println!("skipping rxtx/dpdk_vhost_virtio_user: {e}");
            return;
        }
    };
    front.command("start tx_first 4");
    let forwarded = |t: &Testpmd| t.port_stats(0).map(|s| s.opackets).unwrap_or(0);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while forwarded(&back) == 0 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    if forwarded(&back) == 0 {
        println!("skipping rxtx/dpdk_vhost_virtio_user: no frames forwarded by testpmd's net_vhost");
        return;
    }
    g.throughput(Throughput::Elements(64));
    g.bench_with_input(BenchmarkId::new("dpdk_vhost_virtio_user", 64), &64, |bch, _| {
        bch.iter_custom(|iters| {
            let start = forwarded(&back);
            let t = std::time::Instant::now();
            let want = start + iters * 64;
            while forwarded(&back) < want {
                std::thread::sleep(Duration::from_micros(500));
            }
            t.elapsed()
        })
    });
    drop(front);
    drop(back);
}

fn bench_tx(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    p: &mut dyn EthDev,
    rt: &Runtime,
) {
    let mut pool = Mempool::lookup(rt.shm(), DEFAULT_POOL, 256).expect("pool");
    let mut b = burst(64);
    g.throughput(Throughput::Elements(64));
    g.bench_with_input(BenchmarkId::new(id, 64), &64, |bch, _| {
        bch.iter(|| {
            while !pool.alloc_bulk(&mut b) {
                std::hint::spin_loop();
            }
            for m in b.iter_mut().flatten() {
                m.set_len(60);
                m.data_mut()[..6].fill(0xff);
            }
            let mut sent = 0;
            while sent < 64 {
                sent += p.tx_burst(0, &mut b[sent..]);
            }
        })
    });
}
