//! net_ixgbe and net_i40e across processes: `hotplug_mp` primary and secondary against one emulated 82599 or X710 in
//! `lab-nic`. A secondary attaches over its own vfio-user connection (no register init), moves
//! traffic on the queue the primary built, and 50 attach/detach cycles leave no fd, connection or
//! memory behind.

use std::process::Command;
use std::time::{Duration, Instant};

use lab_harness::proc::{fd_count, parse_list, AppProc};
use lab_testkit::LabNic;
use rstest::rstest;

const APP: &str = env!("CARGO_BIN_EXE_hotplug_mp");
const BDF: &str = "0000:00:05.0";

/// lab-nic serving one loopback 82599 under `<xdg>/sysfs`, stopped by pid on drop.
struct Lab {
    xdg: tempfile::TempDir,
    prefix: String,
    nic: Option<LabNic>,
    model: &'static str,
}

impl Lab {
    fn new(test: &str, model: &'static str) -> Lab {
        let xdg = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(xdg.path().join("sysfs")).expect("sysfs root");
        Lab { xdg, prefix: format!("mp{}-{model}-{test}", std::process::id()), nic: None, model }
    }

    /// Starts lab-nic. After the apps: a PCI device present at start-up is probed by every app as
    /// DPDK's EAL does; these tests attach it by hand.
    fn start_nic(&mut self) {
        let nic = LabNic::builder()
            .root(self.xdg.path().join("sysfs"))
            .control(self.xdg.path().join("nic.sock"))
            .dev(format!("{BDF},model={},wire=loopback", self.model))
            .start();
        self.nic = Some(nic);
    }

    fn start(&self) -> AppProc {
        let mut c = Command::new(APP);
        c.arg("--proc-type=auto")
            .arg(format!("--file-prefix={}", self.prefix))
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .env("SYSFS_PCI_DEVICES", self.xdg.path().join("sysfs"))
            .env_remove("RUST_LOG");
        AppProc::spawn(c).expect("start hotplug_mp")
    }

    fn nic(&self, line: &str) -> String {
        self.nic.as_ref().expect("lab-nic started").command(line).trim().to_string()
    }

    /// Client connections lab-nic has on the function.
    fn connections(&self) -> usize {
        let r = self.nic(&format!("connections {BDF}"));
        r.split_whitespace()
            .find_map(|w| w.strip_prefix("connections="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad reply {r}"))
    }

    /// Waits until lab-nic counts `n` connections (a closed one is noticed asynchronously).
    fn wait_connections(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.connections() != n {
            assert!(Instant::now() < deadline, "lab-nic has {} connections, want {n}", self.connections());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.nic.take());
        for f in lab_core::mem::possible_files(&self.prefix) {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn list(p: &mut AppProc) -> Vec<(u16, String)> {
    let a = p.cmd("list").expect("list");
    assert!(a.starts_with("list all etherdev"), "{a}");
    parse_list(&a)
}

/// Waits (10 s at most) until every process lists exactly `want`.
fn eventually_list(procs: &mut [&mut AppProc], want: &[(u16, &str)]) {
    let want: Vec<(u16, String)> = want.iter().map(|(i, n)| (*i, n.to_string())).collect();
    for p in procs.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = list(p);
            if l == want {
                break;
            }
            assert!(Instant::now() < deadline, "process {} still lists {l:?}", p.pid());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn field<'a>(answer: &'a str, key: &str) -> &'a str {
    answer.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or_else(|| panic!("no {key} in {answer}"))
}

#[rstest]
#[case::ixgbe("ixgbe")]
#[case::i40e("i40e")]
fn a_secondary_attaches_over_its_own_connection_and_moves_traffic(#[case] model: &'static str) {
    let mut lab = Lab::new("traffic", model);
    let mut primary = lab.start();
    let mut secondary = lab.start();
    lab.start_nic();
    assert_eq!(lab.connections(), 0);

    let a = secondary.cmd(&format!("attach {BDF}")).expect("attach");
    assert_eq!(a, format!("attached device {BDF}"));
    let want = vec![(0u16, BDF.to_string())];
    assert_eq!(list(&mut primary), want);
    assert_eq!(list(&mut secondary), want);
    // One connection per process: the primary's and the secondary's own.
    lab.wait_connections(2);

    let info = secondary.cmd("info 0").expect("info");
    assert_eq!(field(&info, "driver:"), format!("net_{model}"));
    assert_eq!(field(&info, "mac:"), "02:00:00:00:05:00");
    assert_eq!(field(&info, "link:"), "up 10000 Mbps");

    // The secondary runs queue 0 (broadcast frames, accepted with FCTRL.BAM), then hands it back.
    // Each `send` completes before its `recv` starts, so a batch stays under the 512-descriptor ring.
    assert_eq!(secondary.cmd("send 0 300 128").expect("send"), "sent 300 packets on port 0");
    assert_eq!(secondary.cmd("recv 0 300 3000").expect("recv"), "received 300 packets (38400 bytes) on port 0");
    // The primary continues where the secondary stopped (descriptor state is in shared memory).
    assert_eq!(primary.cmd("send 0 400 60").expect("send"), "sent 400 packets on port 0");
    assert_eq!(primary.cmd("recv 0 400 3000").expect("recv"), "received 400 packets (24000 bytes) on port 0");
    // And the secondary again.
    assert_eq!(secondary.cmd("send 0 300 1514").expect("send"), "sent 300 packets on port 0");
    assert_eq!(secondary.cmd("recv 0 300 3000").expect("recv"), "received 300 packets (454200 bytes) on port 0");
    let s = primary.cmd("stats 0").expect("stats");
    assert!(s.starts_with("rx_packets=1000 rx_bytes=516600 tx_packets=1000 tx_bytes=516600 rx_missed=0"), "{s}");
    assert!(lab.nic(&format!("faults {BDF}")).starts_with("ok count=0"));

    // A secondary that leaves releases only its own handle: the primary keeps the device working.
    let mut late = lab.start();
    assert_eq!(list(&mut late), want, "a late secondary attaches what is there");
    lab.wait_connections(3);
    late.quit(Duration::from_secs(5));
    lab.wait_connections(2);
    assert_eq!(primary.cmd("send 0 100 60").expect("send"), "sent 100 packets on port 0");
    assert_eq!(primary.cmd("recv 0 100 3000").expect("recv"), "received 100 packets (6000 bytes) on port 0");

    // Detach from the secondary: every process lets go, the device has no client left.
    assert_eq!(secondary.cmd(&format!("detach {BDF}")).expect("detach"), format!("detached device {BDF}"));
    assert!(list(&mut primary).is_empty());
    assert!(list(&mut secondary).is_empty());
    lab.wait_connections(0);
    secondary.quit(Duration::from_secs(5));
    primary.quit(Duration::from_secs(5));
}

#[rstest]
#[case::ixgbe("ixgbe")]
#[case::i40e("i40e")]
fn fifty_attach_detach_cycles_from_both_processes_leave_nothing_behind(#[case] model: &'static str) {
    let mut lab = Lab::new("cycles", model);
    let mut primary = lab.start();
    let mut secondary = lab.start();
    lab.start_nic();
    // Warm-up: one attach and one detach from each side, so lazily created things (worker
    // threads, reply sockets) exist before counting.
    assert_eq!(primary.cmd(&format!("attach {BDF}")).expect("attach"), format!("attached device {BDF}"));
    assert_eq!(secondary.cmd(&format!("detach {BDF}")).expect("detach"), format!("detached device {BDF}"));
    assert_eq!(secondary.cmd(&format!("attach {BDF}")).expect("attach"), format!("attached device {BDF}"));
    assert_eq!(primary.cmd(&format!("detach {BDF}")).expect("detach"), format!("detached device {BDF}"));
    lab.wait_connections(0);
    let fds = (fd_count(primary.pid()), fd_count(secondary.pid()));
    for i in 0..50 {
        let (at, de) = if i % 2 == 0 { (&mut primary, &mut secondary) } else { (&mut secondary, &mut primary) };
        assert_eq!(at.cmd(&format!("attach {BDF}")).expect("attach"), format!("attached device {BDF}"), "cycle {i}");
        if i % 10 == 0 {
            lab.wait_connections(2);
            assert_eq!(de.cmd("send 0 64 60").expect("send"), "sent 64 packets on port 0");
            assert_eq!(de.cmd("recv 0 64 3000").expect("recv"), "received 64 packets (3840 bytes) on port 0");
        }
        assert_eq!(de.cmd(&format!("detach {BDF}")).expect("detach"), format!("detached device {BDF}"), "cycle {i}");
        assert!(list(at).is_empty() && list(de).is_empty(), "cycle {i}");
    }
    lab.wait_connections(0);
    assert_eq!((fd_count(primary.pid()), fd_count(secondary.pid())), fds, "fds grew over 50 cycles");
    assert!(lab.nic(&format!("faults {BDF}")).starts_with("ok count=0"));
    secondary.quit(Duration::from_secs(5));
    primary.quit(Duration::from_secs(5));
}

#[rstest]
#[case::ixgbe("ixgbe")]
#[case::i40e("i40e")]
fn link_down_from_the_control_socket_is_seen_by_every_process(#[case] model: &'static str) {
    let mut lab = Lab::new("link", model);
    let mut primary = lab.start();
    let mut secondary = lab.start();
    lab.start_nic();
    assert_eq!(primary.cmd(&format!("attach {BDF}")).expect("attach"), format!("attached device {BDF}"));
    let link = |p: &mut AppProc| field(&p.cmd("info 0").expect("info"), "link:").to_string();
    assert_eq!(link(&mut primary), "up 10000 Mbps");
    assert_eq!(link(&mut secondary), "up 10000 Mbps");
    assert!(lab.nic(&format!("link down {BDF}")).starts_with("ok"));
    for p in [&mut primary, &mut secondary] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while link(p) != "down" {
            assert!(Instant::now() < deadline, "process {} still sees the link up", p.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(lab.nic(&format!("link up {BDF}")).starts_with("ok"));
    for p in [&mut primary, &mut secondary] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while link(p) != "up 10000 Mbps" {
            assert!(Instant::now() < deadline, "process {} still sees the link down", p.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(secondary.cmd(&format!("detach {BDF}")).expect("detach"), format!("detached device {BDF}"));
    secondary.quit(Duration::from_secs(5));
    primary.quit(Duration::from_secs(5));
}

#[rstest]
#[case::ixgbe("ixgbe")]
#[case::i40e("i40e")]
fn a_surprise_unplug_removes_the_port_from_every_process(#[case] model: &'static str) {
    let mut lab = Lab::new("unplug", model);
    let mut primary = lab.start();
    let mut secondary = lab.start();
    lab.start_nic();
    assert_eq!(secondary.cmd(&format!("attach {BDF}")).expect("attach"), format!("attached device {BDF}"));
    assert_eq!(primary.cmd("attach net_null0").expect("attach"), "attached device net_null0");
    assert!(lab.nic(&format!("unplug {BDF}")).starts_with("ok"));
    eventually_list(&mut [&mut primary, &mut secondary], &[(1, "net_null0")]);
    secondary.quit(Duration::from_secs(5));
    primary.quit(Duration::from_secs(5));
}

/// lab-nic SIGKILLed while both processes use its NIC and one is sending: every process sees
/// the port removed, as after a surprise unplug, nothing hangs, and the other ports go on.
#[rstest]
#[case::ixgbe("ixgbe")]
#[case::i40e("i40e")]
fn lab_nic_killed_mid_traffic_is_a_surprise_unplug_everywhere(#[case] model: &'static str) {
    let mut lab = Lab::new("nicdeath", model);
    let mut primary = lab.start();
    let mut secondary = lab.start();
    lab.start_nic();
    assert_eq!(primary.cmd(&format!("attach {BDF}")).expect("attach"), format!("attached device {BDF}"));
    assert_eq!(secondary.cmd("attach net_null0").expect("attach"), "attached device net_null0");
    let d = lab.nic.as_ref().unwrap().pid();
    assert_eq!(list(&mut secondary), vec![(0u16, BDF.to_string()), (1u16, "net_null0".to_string())]);
    primary.send_line("send 0 5000000").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    lab.nic.as_mut().unwrap().kill();
    // The send in flight ends (sent what it could, or failed): it does not hang.
    let a = primary.answer_within(Duration::from_secs(30)).expect("the send ends");
    assert!(a.starts_with("sent ") || a.starts_with("failed to send"), "lab-nic {d} killed: {a}");
    eventually_list(&mut [&mut primary, &mut secondary], &[(1, "net_null0")]);
    assert_eq!(secondary.cmd("send 1 5").unwrap(), "sent 5 packets on port 1");
    assert!(secondary.quit(Duration::from_secs(5)).is_some_and(|s| s.success()));
    assert!(primary.quit(Duration::from_secs(5)).is_some_and(|s| s.success()));
}
