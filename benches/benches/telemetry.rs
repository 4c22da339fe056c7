//! Group `telemetry`: one `/ethdev/stats,0` round trip to a lab process (a primary with
//! net_null0, in another process), beside its physical floor, a SOCK_SEQPACKET ping-pong of the
//! same sizes (the command one way, an answer of the answer's length back) with a process that
//! serves it the same way (poll, receive, send); and the data path
//! (net_null0 rx+tx bursts of 32 in this process) with a telemetry client in another process
//! polling that port's stats every millisecond, beside the same data path without it.

use std::os::fd::AsFd;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use lab_benches::{print_ratio, PeerProc};
use lab_core::ethdev::PortId;
use lab_core::mbuf::Mbuf;
use lab_core::options::Options;
use lab_core::process::Process;
use lab_core::telemetry::{socket_path, Client};

const PEER: &str = env!("CARGO_BIN_EXE_lab-bench-peer");
const QUERY: &str = "/ethdev/stats,0";

fn main() {
    let xdg = tempfile::tempdir().expect("tempdir");
    // Set before any thread starts: the runtime and the peers use it for their runtime dir.
    std::env::set_var("XDG_RUNTIME_DIR", xdg.path());
    lab_benches::pin_to(lab_benches::BENCH_CPU);
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(4));
    let mut g = c.benchmark_group("telemetry");

    // The lab process being asked, and one answer: the floor echoes a request and an answer of
    // these sizes.
    let prefix = format!("bench-tel-{}", std::process::id());
    let eal = [format!("--file-prefix={prefix}"), "--proc-type=primary".into(), "--vdev=net_null0".into()];
    let mut args = vec!["hotplug".to_string()];
    args.extend(eal.iter().cloned());
    let _server = PeerProc::spawn(PEER, &args, xdg.path());
    let sock = socket_path(&xdg.path().join("hotplug-lab").join(&prefix), 0);
    let mut client = Client::connect(&sock, Duration::from_secs(5)).expect("telemetry");
    let answer = serde_json_len(&mut client, &sock);

    {
        let path = xdg.path().join("seqpacket-echo");
        let _echo = PeerProc::spawn(
            PEER,
            &["seqpacket-echo".into(), path.display().to_string(), answer.to_string()],
            xdg.path(),
        );
        let fd = lab_core::sys::seqpacket_connect(&path).expect("connect echo");
        let req = QUERY.as_bytes();
        let mut buf = vec![0u8; 16384];
        g.bench_function("raw_seqpacket_rtt", |b| {
            b.iter(|| {
                lab_core::sys::seqpacket_send(fd.as_fd(), req).expect("send");
                let (n, _) = lab_core::sys::seqpacket_recv(fd.as_fd(), &mut buf, false).expect("recv");
                assert_eq!(n, answer);
                n
            })
        });
    }
    g.bench_function("ethdev_stats", |b| {
        b.iter(|| {
            let v = client.query(&sock, QUERY).expect("stats");
            assert!(v["opackets"].is_u64());
        })
    });
    drop(client);
    drop(_server);

    // The same with the server on this process's core: no cross-core wake-up, the placement
    // DPDK's control threads get below (they inherit this core; its lcores take the others).
    {
        let prefix1 = format!("{prefix}-1core");
        let mut args = vec!["hotplug".to_string(), format!("--file-prefix={prefix1}")];
        args.extend(["--proc-type=primary".into(), "--vdev=net_null0".into()]);
        let _server = PeerProc::spawn_on(PEER, &args, xdg.path(), lab_benches::BENCH_CPU);
        let sock = socket_path(&xdg.path().join("hotplug-lab").join(&prefix1), 0);
        let mut c = Client::connect(&sock, Duration::from_secs(5)).expect("telemetry");
        g.bench_function("ethdev_stats_1core", |b| {
            b.iter(|| {
                let v = c.query(&sock, QUERY).expect("stats");
                assert!(v["opackets"].is_u64());
            })
        });
        let path = xdg.path().join("seqpacket-echo-1core");
        let _echo = PeerProc::spawn_on(
            PEER,
            &["seqpacket-echo".into(), path.display().to_string(), answer.to_string()],
            xdg.path(),
            lab_benches::BENCH_CPU,
        );
        let fd = lab_core::sys::seqpacket_connect(&path).expect("connect echo");
        let mut buf = vec![0u8; 16384];
        g.bench_function("raw_seqpacket_rtt_1core", |b| {
            b.iter(|| {
                lab_core::sys::seqpacket_send(fd.as_fd(), QUERY.as_bytes()).expect("send");
                lab_core::sys::seqpacket_recv(fd.as_fd(), &mut buf, false).expect("recv").0
            })
        });
    }

    // DPDK's own telemetry answering the same command, in dpdk-testpmd (interactive, idle,
    // net_null0) on the peers' core, when it is installed: the same client (compare with
    // ethdev_stats).
    match lab_testkit::Testpmd::start(
        xdg.path(),
        &format!("labbench{}", std::process::id()),
        Some(lab_benches::peer_cpu()),
    ) {
        Ok(dpdk) => {
            let mut c = Client::connect(&dpdk.sock, Duration::from_secs(5)).expect("DPDK telemetry");
            g.bench_function("dpdk_ethdev_stats", |b| {
                b.iter(|| {
                    let v = c.query(&dpdk.sock, QUERY).expect("stats");
                    assert!(v["opackets"].is_u64());
                })
            });
        }
        Err(why) => println!("telemetry/dpdk_ethdev_stats skipped: {why}"),
    }

    // The data path in this process, with and without a poller of its stats.
    let dp_prefix = format!("bench-teldp-{}", std::process::id());
    let (opts, _) = Options::parse([
        format!("--file-prefix={dp_prefix}"),
        "--proc-type=primary".to_string(),
        "--vdev=net_null0".to_string(),
    ])
    .expect("opts");
    let p = Process::init(&opts, lab_drivers::registry()).expect("process");
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut step = || {
        let n = p.with_port(PortId(0), |d| {
            let n = d.rx_burst(0, &mut burst);
            let sent = d.tx_burst(0, &mut burst[..n]);
            for m in burst[sent..n].iter_mut() {
                m.take();
            }
            n
        });
        n.expect("port 0")
    };
    g.throughput(Throughput::Elements(32));
    g.bench_function("datapath_null_burst32", |b| b.iter(&mut step));
    {
        let dp_sock = socket_path(&xdg.path().join("hotplug-lab").join(&dp_prefix), 0);
        let _poller =
            PeerProc::spawn(PEER, &["telemetry-poll".into(), dp_sock.display().to_string(), "1".into()], xdg.path());
        g.bench_function("datapath_null_burst32_polled_1ms", |b| b.iter(&mut step));
    }
    g.finish();
    p.shutdown();
    drop(c);
    print_ratio("telemetry query vs raw seqpacket", "telemetry", "ethdev_stats", "raw_seqpacket_rtt", None);
    print_ratio(
        "telemetry query vs raw seqpacket, one core",
        "telemetry",
        "ethdev_stats_1core",
        "raw_seqpacket_rtt_1core",
        None,
    );
    print_ratio("lab telemetry vs DPDK 22.11's", "telemetry", "ethdev_stats", "dpdk_ethdev_stats", None);
    print_ratio(
        "data path polled every 1 ms vs not",
        "telemetry",
        "datapath_null_burst32_polled_1ms",
        "datapath_null_burst32",
        None,
    );
}

/// The length of one `/ethdev/stats,0` answer as sent (its JSON text).
fn serde_json_len(c: &mut Client, sock: &std::path::Path) -> usize {
    let v = c.query(sock, QUERY).expect("stats");
    format!("{{\"{}\":{v}}}", QUERY.split(',').next().unwrap_or_default()).len()
}
