//! Group `hotplug`: attach + detach of a net_null device across real processes, beside
//! `request_sync/N` to the same processes in the same run (the floor: attach plus detach is
//! three protocol round trips, plus the driver's own work in every process).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use lab_benches::{pin_to, print_ratio, PeerProc, BENCH_CPU};
use lab_core::ipc::Msg;
use lab_core::options::Options;
use lab_core::process::Process;

const PEER: &str = env!("CARGO_BIN_EXE_lab-bench-peer");

fn opts(prefix: &str, role: &str) -> Options {
    Options::parse([format!("--file-prefix={prefix}"), format!("--proc-type={role}"), "--no-pci".into()])
        .expect("options")
        .0
}

fn peer_args(prefix: &str, role: &str) -> Vec<String> {
    vec!["hotplug".into(), format!("--file-prefix={prefix}"), format!("--proc-type={role}"), "--no-pci".into()]
}

fn main() {
    let xdg = tempfile::tempdir().expect("tempdir");
    // Set before any thread starts: the runtime and the peers use it for their runtime dir.
    std::env::set_var("XDG_RUNTIME_DIR", xdg.path());
    std::env::set_var("SYSFS_PCI_DEVICES", xdg.path().join("no-sysfs"));
    pin_to(BENCH_CPU);
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(4));
    let mut g = c.benchmark_group("hotplug");
    let echo = Msg::new("echo", vec![0u8; 8]);

    // From the primary (this process), N secondary processes running.
    {
        let prefix = format!("bench-hp-{}", std::process::id());
        let hp = Process::init(&opts(&prefix, "primary"), lab_drivers::registry()).expect("primary");
        let mut peers = Vec::new();
        for n in [0usize, 1, 2, 4] {
            while peers.len() < n {
                peers.push(PeerProc::spawn(PEER, &peer_args(&prefix, "secondary"), xdg.path()));
            }
            if n > 0 {
                g.bench_with_input(BenchmarkId::new("request_sync", n), &n, |b, &n| {
                    b.iter(|| {
                        let r = hp.runtime().ipc().request_sync(&echo, Duration::from_secs(2)).expect("request");
                        assert_eq!(r.nb_received, n);
                    })
                });
            }
            g.bench_with_input(BenchmarkId::new("attach_detach", n), &n, |b, _| {
                b.iter(|| {
                    let p = hp.attach("net_null0").expect("attach");
                    hp.detach(&p.0.to_string()).expect("detach");
                })
            });
        }
        drop(peers);
        hp.shutdown();
    }

    // From a secondary (this process), with a primary and N-1 other secondaries running.
    {
        let prefix = format!("bench-hps-{}", std::process::id());
        let _primary = PeerProc::spawn(PEER, &peer_args(&prefix, "primary"), xdg.path());
        let hp = Process::init(&opts(&prefix, "secondary"), lab_drivers::registry()).expect("secondary");
        let mut others = Vec::new();
        for n in [1usize, 2, 4] {
            while others.len() + 1 < n {
                others.push(PeerProc::spawn(PEER, &peer_args(&prefix, "secondary"), xdg.path()));
            }
            g.bench_with_input(BenchmarkId::new("from_secondary", n), &n, |b, _| {
                b.iter(|| {
                    let p = hp.attach("net_null0").expect("attach");
                    hp.detach(&p.0.to_string()).expect("detach");
                })
            });
        }
        drop(others);
        hp.shutdown();
        drop(hp);
        // The primary here is a peer process, killed at the end: remove what it leaves.
        drop(_primary);
        let mb = lab_core::mem::DEFAULT_MB;
        let _ = std::fs::remove_file(lab_core::mem::placement(&prefix, mb << 20, false, None).path);
    }
    g.finish();
    c.final_summary();
    println!();
    // The floor: attach + detach within 4 request_sync round trips to the same processes.
    for n in [1, 2, 4] {
        let rs = format!("request_sync/{n}");
        print_ratio(
            &format!("attach_detach/{n} vs request_sync/{n}"),
            "hotplug",
            &format!("attach_detach/{n}"),
            &rs,
            Some(4.0),
        );
        print_ratio(
            &format!("from_secondary/{n} vs request_sync/{n}"),
            "hotplug",
            &format!("from_secondary/{n}"),
            &rs,
            Some(4.0),
        );
    }
}
