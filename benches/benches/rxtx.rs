//! Group `rxtx`: packets through net_ixgbe and an emulated 82599, and through net_i40e and an
//! emulated X710, on loopback (driver tx -> lab-nic -> driver rx, bench process and emulator in
//! separate processes, burst 32), against their floors measured in the same run: the same 64-byte
//! objects moved to another process through a raw shared-memory ring (`shm_copy_floor`), and out
//! to it and back through two (`shm_echo_floor`).
//!
//! `ixgbe_loopback/N`, `i40e_loopback/N`: N is the frame size on the wire with its 4-byte FCS (the driver hands the
//! device N - 4 bytes; the device strips the FCS on receive). One iteration sends a burst of 32
//! and receives a burst's worth, with at most `WINDOW` frames in flight, so the figure is
//! steady-state throughput, not the latency of one round trip.
//!
//! `cabled/{per-function,shared}`: from one 82599 to another over a cable inside one lab-nic,
//! with a device thread per function and with one shared thread (`--device-threads`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lab_benches::{mean_ns, peer_cpu, pin_to, print_ratio, PeerProc, BENCH_CPU};
use lab_core::bus::pci::scan_one;
use lab_core::devargs::Devargs;
use lab_core::ethdev::{Driver, EthDev, PortConf, PortId, ProbeCtx, Release, DEFAULT_POOL};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::options::Options;
use lab_core::ring::{Ring, RingFlags};
use lab_core::runtime::Runtime;
use lab_drivers::i40e::I40eDriver;
use lab_drivers::ixgbe::IxgbeDriver;

const PEER: &str = env!("CARGO_BIN_EXE_lab-bench-peer");
const BDF: &str = "0000:00:05.0";
const BURST: usize = 32;
/// Frames in flight at most (the RX ring holds 1024).
const WINDOW: usize = 512;

fn lab_nic_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile.join("lab-nic");
    if !bin.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "lab-emu", "--bin", "lab-nic"])
            .status()
            .expect("cargo build lab-nic");
        assert!(st.success(), "building lab-nic failed");
    }
    bin
}

/// lab-nic on the peer CPU, stopped by pid on drop.
struct LabNic {
    child: Child,
}

impl LabNic {
    /// lab-nic serving one function, `dev` as its `--dev` argument.
    fn start(root: &Path, dev: &str) -> LabNic {
        Self::start_with(root, &["--dev", dev])
    }

    /// lab-nic with `args` (its `--dev`s and options).
    fn start_with(root: &Path, args: &[&str]) -> LabNic {
        // The child inherits this thread's affinity: pin to the peer CPU for the spawn only.
        pin_to(peer_cpu());
        let child = Command::new(lab_nic_bin())
            .arg("--sysfs-root")
            .arg(root)
            .args(args)
            .args(["--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        pin_to(BENCH_CPU);
        let mut child = child.expect("spawn lab-nic");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while line.trim() != "lab-nic ready" {
            line.clear();
            assert!(out.read_line(&mut line).expect("lab-nic stdout") > 0, "lab-nic exited before ready");
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        LabNic { child }
    }
}

impl Drop for LabNic {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Steady-state loopback traffic on one port.
struct Loop {
    pool: Mempool,
    txb: Vec<Option<Mbuf>>,
    rxb: Vec<Option<Mbuf>>,
    in_flight: usize,
    lost: u64,
    /// Empty polls in a row.
    empty: u64,
    /// Receive polls, and those that found nothing (the driver waiting for the device).
    polls: u64,
    empty_polls: u64,
    /// When the current run of empty polls reached 4096.
    last_rx: Instant,
    /// Receive queues polled, round robin (the RSS bench spreads over several).
    queues: u16,
    next_q: u16,
    /// Frames to send, in turn (the RSS bench's flow mix); empty: buffers as they come.
    flows: Vec<Vec<u8>>,
    next_flow: usize,
}

impl Loop {
    fn new(pool: &Mempool, queues: u16, flows: Vec<Vec<u8>>) -> Loop {
        Loop {
            pool: pool.new_handle(),
            txb: (0..BURST).map(|_| None).collect(),
            rxb: (0..BURST).map(|_| None).collect(),
            in_flight: 0,
            lost: 0,
            empty: 0,
            polls: 0,
            empty_polls: 0,
            last_rx: Instant::now(),
            queues,
            next_q: 0,
            flows,
            next_flow: 0,
        }
    }

    fn iter(&mut self, port: &mut dyn EthDev, len: usize) {
        self.iter_to(port, None, len)
    }

    /// One burst out of `tx` and a burst's worth in on `rx` (two cabled ports), or on `tx` itself.
    fn iter_to(&mut self, tx: &mut dyn EthDev, mut rx: Option<&mut dyn EthDev>, len: usize) {
        assert!(self.pool.alloc_bulk(&mut self.txb), "pool empty");
        for m in self.txb.iter_mut().flatten() {
            if self.flows.is_empty() {
                m.set_len(len);
            } else {
                m.copy_from(&self.flows[self.next_flow]);
                self.next_flow = (self.next_flow + 1) % self.flows.len();
            }
        }
        let mut off = 0;
        while off < BURST {
            off += tx.tx_burst(0, &mut self.txb[off..]);
            if off < BURST {
                self.drain_on(tx, rx.as_deref_mut());
            }
        }
        self.in_flight += BURST;
        while self.in_flight > WINDOW - BURST {
            self.drain_on(tx, rx.as_deref_mut());
        }
    }

    /// [`Loop::drain`] on `rx`, or on `tx` when there is no second port.
    fn drain_on(&mut self, tx: &mut dyn EthDev, rx: Option<&mut (dyn EthDev + '_)>) {
        match rx {
            Some(r) => self.drain(r),
            None => self.drain(tx),
        }
    }

    fn drain(&mut self, port: &mut dyn EthDev) {
        let q = self.next_q;
        self.next_q = (q + 1) % self.queues;
        let n = port.rx_burst(q, &mut self.rxb);
        self.polls += 1;
        if n > 0 {
            self.in_flight = self.in_flight.saturating_sub(n);
            self.pool.free_bulk(&mut self.rxb[..n]);
            self.empty = 0;
            return;
        }
        // Look at the clock only now and then: a clock read per empty poll would show up as
        // bench overhead in a profile.
        self.empty += 1;
        self.empty_polls += 1;
        if !self.empty.is_multiple_of(4096) {
            return;
        }
        if self.empty == 4096 {
            self.last_rx = Instant::now();
        } else if self.last_rx.elapsed() > Duration::from_secs(1) {
            // Frames the device dropped never come back: forget them rather than hang.
            self.lost += self.in_flight as u64;
            self.in_flight = 0;
            self.last_rx = Instant::now();
        }
    }
}

fn main() {
    let xdg = tempfile::tempdir().expect("tempdir");
    std::env::set_var("XDG_RUNTIME_DIR", xdg.path());
    let prefix = format!("bench-rxtx-{}", std::process::id());
    pin_to(BENCH_CPU);
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(4));

    let (opts, _) = Options::parse([format!("--file-prefix={prefix}"), "--proc-type=primary".into()]).expect("opts");
    let rt = Runtime::init(&opts).expect("bench runtime");
    let pool = Mempool::create(rt.shm(), DEFAULT_POOL, 8192, 2048, 256).expect("pool");

    let mut g = c.benchmark_group("rxtx");

    // Floor: 64-byte objects, bulk 32, to a peer process copying them out of a shared ring.
    {
        let ring = Ring::<[u8; 64]>::create(rt.shm(), "bench-rxtx-ring", 1024, RingFlags::SPSC).expect("ring");
        let mut args =
            vec!["ring-drain".to_string(), format!("--file-prefix={prefix}"), "--proc-type=secondary".into()];
        args.extend(["--".into(), "bench-rxtx-ring".into()]);
        let _drain = PeerProc::spawn(PEER, &args, xdg.path());
        let objs = [[5u8; 64]; BURST];
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_with_input(BenchmarkId::new("shm_copy_floor", 64), &64, |b, _| {
            b.iter(|| {
                while !ring.enqueue_bulk(&objs) {
                    std::hint::spin_loop();
                }
            })
        });
    }

    // The same objects out to a peer process and back (two raw rings, the peer echoing): what a
    // loopback costs with nothing in the way but shared memory. Same window as the NIC loop.
    {
        let out = Ring::<[u8; 64]>::create(rt.shm(), "bench-rxtx-out", 1024, RingFlags::SPSC).expect("ring");
        let back = Ring::<[u8; 64]>::create(rt.shm(), "bench-rxtx-back", 1024, RingFlags::SPSC).expect("ring");
        let mut args = vec!["ring-echo".to_string(), format!("--file-prefix={prefix}"), "--proc-type=secondary".into()];
        args.extend(["--".into(), "bench-rxtx-out".into(), "bench-rxtx-back".into()]);
        let _echo = PeerProc::spawn(PEER, &args, xdg.path());
        let objs = [[5u8; 64]; BURST];
        let mut got = [[0u8; 64]; BURST];
        let mut in_flight = 0usize;
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_with_input(BenchmarkId::new("shm_echo_floor", 64), &64, |b, _| {
            b.iter(|| {
                while !out.enqueue_bulk(&objs) {
                    in_flight -= back.dequeue_burst(&mut got);
                }
                in_flight += BURST;
                while in_flight > WINDOW - BURST {
                    in_flight -= back.dequeue_burst(&mut got);
                }
            })
        });
    }

    g.finish();

    // The drivers through the emulated NICs, one lab-nic each, one after the other.
    let mut report = Vec::new();
    report.extend(bench_nic(&mut c, &rt, &pool, NicCase { name: "ixgbe", bdf: BDF, port: 0, driver: &IxgbeDriver }));
    report.extend(bench_nic(
        &mut c,
        &rt,
        &pool,
        NicCase { name: "i40e", bdf: "0000:00:09.0", port: 1, driver: &I40eDriver },
    ));
    report.extend(bench_rss(&mut c, &rt, &pool));
    report.extend(bench_cabled(&mut c, &rt, &pool));
    drop(rt);

    c.final_summary();
    println!();
    for line in report {
        println!("{line}");
    }
    for id in ["shm_copy_floor/64", "shm_echo_floor/64"] {
        if let Some(ns) = mean_ns("rxtx", id) {
            println!("rate rxtx/{id}: {:.2} Mpps", BURST as f64 / ns * 1e3);
        }
    }
    for nic in ["ixgbe", "i40e"] {
        let id = format!("{nic}_loopback/64");
        print_ratio(&format!("{id} vs floor"), "rxtx", &id, "shm_copy_floor/64", Some(2.0));
        print_ratio(&format!("{id} vs echo"), "rxtx", &id, "shm_echo_floor/64", None);
    }
}

/// A lab-nic serving one `model` function on a loopback wire, and `driver` probed on it as port
/// `port` with devargs `bdf` + `extra`, its link up; the sysfs root lives as long as the first.
fn probe_loopback(
    rt: &Runtime,
    driver: &dyn Driver,
    model: &str,
    (bdf, extra): (&str, &str),
    port: u16,
    conf: &PortConf,
) -> (tempfile::TempDir, LabNic, Box<dyn EthDev>) {
    let sysfs = tempfile::tempdir().expect("sysfs root");
    let nic = LabNic::start(sysfs.path(), &format!("{bdf},model={model},wire=loopback"));
    let dev = probe_on(rt, driver, sysfs.path(), (bdf, extra), port, conf);
    (sysfs, nic, dev)
}

/// A 64-byte UDP/IPv4 frame of flow `f` (addresses and ports vary with it), broadcast.
fn flow_frame(f: u32) -> Vec<u8> {
    let mut x = vec![0u8; 60];
    x[..6].fill(0xff);
    x[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x55, 0x01]);
    x[12..14].copy_from_slice(&[0x08, 0x00]);
    x[14..24].copy_from_slice(&[0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17]);
    x[26..30].copy_from_slice(&[10, 0, (f >> 8) as u8, f as u8]);
    x[30..34].copy_from_slice(&[10, 1, 0, 1]);
    x[34..36].copy_from_slice(&(1024 + f as u16).to_be_bytes());
    x[36..38].copy_from_slice(&5000u16.to_be_bytes());
    x
}

/// `rss_queues/{1,2,4}`: an 82599 loopback carrying a mix of 256 UDP flows, RSS spreading them
/// over 1, 2 and 4 receive queues (polled round robin by this one thread): what RSS and the
/// spreading cost against the single queue, on the same lab-nic device thread.
fn bench_rss(c: &mut Criterion, rt: &Runtime, pool: &Mempool) -> Vec<String> {
    let mut out = Vec::new();
    let mut g = c.benchmark_group("rxtx");
    for (i, queues) in [1u16, 2, 4].into_iter().enumerate() {
        let conf = PortConf {
            nb_rxq: queues,
            nb_desc: 1024,
            rss: if std::env::var_os("NO_RSS").is_some() { None } else { Some(lab_core::rss::RssConf::default()) },
            ..PortConf::default()
        };
        let (_sysfs, nic, mut dev) = probe_loopback(rt, &IxgbeDriver, "ixgbe", (BDF, ""), 10 + i as u16, &conf);
        let mut lp = Loop::new(pool, queues, (0..256).map(flow_frame).collect());
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_with_input(BenchmarkId::new("rss_queues", queues), &queues, |b, _| {
            b.iter(|| lp.iter(dev.as_mut(), 60))
        });
        let until = Instant::now() + Duration::from_millis(500);
        while lp.in_flight > 0 && Instant::now() < until {
            lp.drain(dev.as_mut());
        }
        let (rxq, _) = dev.queue_stats();
        let spread: Vec<u64> = rxq.iter().map(|q| q.packets).collect();
        dev.close(Release::Shared);
        drop(nic);
        out.push(format!("rss_queues/{queues}: frames per queue {spread:?}, lost {}", lp.lost));
    }
    g.finish();
    let one = mean_ns("rxtx", "rss_queues/1");
    for q in [1, 2, 4] {
        if let Some(ns) = mean_ns("rxtx", &format!("rss_queues/{q}")) {
            let ratio = one.map(|o| format!(", {:.2}x the single queue's time", ns / o)).unwrap_or_default();
            out.push(format!("rate rxtx/rss_queues/{q}: {:.2} Mpps{ratio}", BURST as f64 / ns * 1e3));
        }
    }
    out
}

/// Probes `driver` on `bdf` of a running lab-nic under `root` as port `port`, with devargs
/// `bdf` + `extra`, and waits for its link.
fn probe_on(
    rt: &Runtime,
    driver: &dyn Driver,
    root: &Path,
    (bdf, extra): (&str, &str),
    port: u16,
    conf: &PortConf,
) -> Box<dyn EthDev> {
    let pci = scan_one(&root.join(bdf)).expect("scan");
    let devargs = Devargs::parse(&format!("{bdf}{extra}")).expect("devargs");
    let kvargs = devargs.validate(driver.name(), driver.keys()).expect("kvargs");
    let ctx = ProbeCtx {
        runtime: rt,
        port: PortId(port),
        name: bdf,
        devargs: &devargs,
        kvargs: &kvargs,
        pci: Some(&pci),
        conf,
        ports: None,
    };
    let mut dev = driver.probe(&ctx).unwrap_or_else(|e| panic!("probe {bdf}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dev.link().up {
        assert!(Instant::now() < deadline, "{bdf} link down");
        std::thread::sleep(Duration::from_millis(5));
    }
    dev
}

/// `cabled/{per-function,shared}`: 64-byte frames from one 82599 to another over a cable inside
/// one lab-nic (TX on port A, RX on port B), the two functions polled by a device thread each
/// (`--device-threads per-function`, what lab-nic did before the pool) and by one shared thread
/// (`--device-threads 1`, what `auto` picks on a 2-core machine). lab-nic runs on one core, as
/// on a 2-core machine where the other is the application's.
fn bench_cabled(c: &mut Criterion, rt: &Runtime, pool: &Mempool) -> Vec<String> {
    const A: &str = "0000:00:0a.0";
    const B: &str = "0000:00:0b.0";
    let mut out = Vec::new();
    let mut g = c.benchmark_group("rxtx");
    for (i, (name, threads)) in [("per-function", "per-function"), ("shared", "1")].into_iter().enumerate() {
        let sysfs = tempfile::tempdir().expect("sysfs root");
        let (da, db) = (format!("{A},model=ixgbe,peer={B}"), format!("{B},model=ixgbe"));
        let nic = LabNic::start_with(sysfs.path(), &["--dev", &da, "--dev", &db, "--device-threads", threads]);
        let conf = PortConf { nb_desc: 1024, ..PortConf::default() };
        let mut a = probe_on(rt, &IxgbeDriver, sysfs.path(), (A, ",promisc=1"), 20 + 2 * i as u16, &conf);
        let mut b = probe_on(rt, &IxgbeDriver, sysfs.path(), (B, ",promisc=1"), 21 + 2 * i as u16, &conf);
        let mut lp = Loop::new(pool, 1, Vec::new());
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_with_input(BenchmarkId::new("cabled", name), &name, |bch, _| {
            bch.iter(|| lp.iter_to(a.as_mut(), Some(b.as_mut()), 60))
        });
        let until = Instant::now() + Duration::from_millis(500);
        while lp.in_flight > 0 && Instant::now() < until {
            lp.drain(b.as_mut());
        }
        let (sa, sb) = (a.stats(), b.stats());
        a.close(Release::Shared);
        b.close(Release::Shared);
        drop(nic);
        out.push(format!(
            "cabled/{name}: A opackets={} B ipackets={} imissed={}; frames the bench loop gave up on: {}",
            sa.opackets, sb.ipackets, sb.imissed, lp.lost
        ));
    }
    g.finish();
    let per = mean_ns("rxtx", "cabled/per-function");
    for name in ["per-function", "shared"] {
        if let Some(ns) = mean_ns("rxtx", &format!("cabled/{name}")) {
            let ratio = per.map(|p| format!(", {:.2}x the per-function threads' rate", p / ns)).unwrap_or_default();
            out.push(format!("rate rxtx/cabled/{name}: {:.2} Mpps{ratio}", BURST as f64 / ns * 1e3));
        }
    }
    out
}

/// One emulated NIC to bench: `{name}_loopback/N` through `driver` and a lab-nic `model=name`.
struct NicCase<'a> {
    name: &'static str,
    bdf: &'static str,
    port: u16,
    driver: &'a dyn Driver,
}

/// `{name}_loopback/64` and `/1518` on a lab-nic of its own (stopped before it returns); the lines
/// to report: port statistics, how often the driver waited, the rates.
fn bench_nic(c: &mut Criterion, rt: &Runtime, pool: &Mempool, case: NicCase<'_>) -> Vec<String> {
    let NicCase { name, bdf, port, driver } = case;
    let conf = PortConf { nb_desc: 1024, ..PortConf::default() };
    let (_sysfs, nic, mut dev) = probe_loopback(rt, driver, name, (bdf, ",promisc=1"), port, &conf);
    let mut lp = Loop::new(pool, 1, Vec::new());
    let mut g = c.benchmark_group("rxtx");
    for size in [64usize, 1518] {
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_with_input(BenchmarkId::new(format!("{name}_loopback"), size), &size, |b, &size| {
            b.iter(|| lp.iter(dev.as_mut(), size - 4))
        });
    }
    g.finish();
    // Let the last frames come home, then check nothing was lost on the way.
    let until = Instant::now() + Duration::from_millis(500);
    while lp.in_flight > 0 && Instant::now() < until {
        lp.drain(dev.as_mut());
    }
    let stats = dev.stats();
    dev.close(Release::Shared);
    drop(nic);
    let mut out = vec![
        format!(
            "{name} port stats: opackets={} ipackets={} imissed={} ierrors={}; frames the bench loop gave up on: {}",
            stats.opackets, stats.ipackets, stats.imissed, stats.ierrors, lp.lost
        ),
        format!(
            "{name} driver rx polls: {}, {:.1}% found nothing (the driver waiting for lab-nic)",
            lp.polls,
            100.0 * lp.empty_polls as f64 / lp.polls.max(1) as f64
        ),
    ];
    for size in [64, 1518] {
        let id = format!("{name}_loopback/{size}");
        if let Some(ns) = mean_ns("rxtx", &id) {
            let mpps = BURST as f64 / ns * 1e3;
            let verdict = match size {
                64 if mpps >= 10.0 => " (floor 10 Mpps: met)",
                64 => " (floor 10 Mpps: NOT met)",
                _ => "",
            };
            out.push(format!("rate rxtx/{id}: {mpps:.2} Mpps{verdict}"));
        }
    }
    out
}
