//! The virtual devices through the hotplug protocol, with real `hotplug_mp` processes: each
//! device is attached from one secondary, used from the primary, detached from another secondary,
//! 20 times; afterwards no process holds more descriptors than after the first cycle and no
//! interface of the test is left. Devices that need a kernel interface (tap, af_packet, pcap on
//! an interface) need CAP_NET_ADMIN and skip with one line without it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const HOTPLUG_MP: &str = env!("CARGO_BIN_EXE_hotplug_mp");
const CYCLES: usize = 20;
use lab_testkit::{link_exists, skip_without_net_admin, unique, LinkGuard, RawSock, Veth};

/// One `hotplug_mp` process; killed by pid and reaped on drop.
struct App {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl App {
    fn start(xdg: &Path, prefix: &str, role: &str) -> App {
        let mut child = Command::new(HOTPLUG_MP)
            .args([format!("--file-prefix={prefix}"), format!("--proc-type={role}"), "--no-pci".into()])
            .env("XDG_RUNTIME_DIR", xdg)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hotplug_mp");
        let stdin = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        App { child, stdin, lines }
    }

    /// Runs one command and returns its first output line (prompts stripped).
    fn cmd(&mut self, c: &str) -> String {
        let _ = writeln!(self.stdin, "{c}");
        let _ = self.stdin.flush();
        let l = self.lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| format!("<no answer to {c}>"));
        l.trim_start_matches("example> ").to_string()
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn veth(tag: &str) -> (String, String, Veth) {
    let v = Veth::new(tag);
    (v.a.clone(), v.b.clone(), v)
}

/// The testkit's raw socket on one interface: counts test frames (EtherType 0x88b5) arriving.
struct Raw(RawSock);

impl Raw {
    fn bind(iface: &str) -> Raw {
        Raw(RawSock::bind(iface))
    }

    fn count(&self, want: usize, limit: Duration) -> usize {
        self.0.recv(want, limit, |f| f.len() >= 14 && f[12..14] == [0x88, 0xb5]).len()
    }

    fn send(&self, count: usize) {
        let mut f = [0u8; 80];
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x09]);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        for _ in 0..count {
            self.0.send(&f);
        }
    }
}

fn field(s: &str, after: &str) -> u64 {
    s.split(after).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// The scenario: `cycles` times attach from A, use from the primary, detach from B; then no
/// process holds more descriptors than after the first cycle.
fn scenario(test: &str, devargs: &str, name: &str, mut use_it: impl FnMut(&mut App, usize)) {
    let xdg = tempfile::tempdir().unwrap();
    let prefix = unique(&format!("hp{test}"));
    let mut p = App::start(xdg.path(), &prefix, "primary");
    p.cmd("stats 0"); // answers once the primary is up
    let mut a = App::start(xdg.path(), &prefix, "secondary");
    let mut b = App::start(xdg.path(), &prefix, "secondary");
    a.cmd("stats 0");
    b.cmd("stats 0");
    let mut after_first = (0, 0, 0);
    for i in 0..CYCLES {
        assert_eq!(a.cmd(&format!("attach {devargs}")), format!("attached device {name}"), "cycle {i}");
        use_it(&mut p, i);
        assert_eq!(b.cmd(&format!("detach {name}")), format!("detached device {name}"), "cycle {i}");
        if i == 0 {
            after_first = (p.fds(), a.fds(), b.fds());
        }
    }
    assert_eq!((p.fds(), a.fds(), b.fds()), after_first, "descriptors grew (primary, A, B)");
}

#[test]
fn net_ring_attached_from_a_secondary_used_by_the_primary_detached_from_another() {
    scenario("ring", "net_ring0", "net_ring0", |p, i| {
        let s = p.cmd("send 0 100 64");
        assert_eq!(s, "sent 100 packets on port 0", "cycle {i}");
        let r = p.cmd("recv 0 100 5000");
        assert_eq!(field(&r, "received"), 100, "cycle {i}: {r}");
    });
}

#[test]
fn net_pcap_attached_from_a_secondary_used_by_the_primary_detached_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.pcap");
    let out = dir.path().join("out.pcap");
    // Classic pcap: header, then 10 records of 60 bytes.
    let mut f = Vec::new();
    f.extend(0xa1b2_c3d4u32.to_le_bytes());
    f.extend(2u16.to_le_bytes());
    f.extend(4u16.to_le_bytes());
    f.extend([0u8; 8]);
    f.extend(65535u32.to_le_bytes());
    f.extend(1u32.to_le_bytes());
    for i in 0..10u32 {
        f.extend(i.to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend(60u32.to_le_bytes());
        f.extend(60u32.to_le_bytes());
        f.extend([i as u8; 60]);
    }
    std::fs::write(&inp, f).unwrap();
    let dev = format!("net_pcap0,rx_pcap={},tx_pcap={}", inp.display(), out.display());
    scenario("pcap", &dev, "net_pcap0", |p, i| {
        let r = p.cmd("recv 0 10 2000");
        assert_eq!(field(&r, "received"), 10, "cycle {i}: {r}");
        assert_eq!(p.cmd("send 0 25 100"), "sent 25 packets on port 0", "cycle {i}");
        // Flushed per burst: on disk now, 24 + 25 * (16 + 100) bytes.
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 24 + 25 * 116, "cycle {i}");
    });
}

#[test]
fn net_tap_attached_from_a_secondary_used_by_the_primary_detached_from_another() {
    if skip_without_net_admin("net_tap_attached_from_a_secondary_used_by_the_primary_detached_from_another") {
        return;
    }
    let ifn = unique("ht");
    let _g = LinkGuard(ifn.clone());
    let dev = format!("net_tap0,iface={ifn}");
    scenario("tap", &dev, "net_tap0", |p, i| {
        let raw = Raw::bind(&ifn);
        assert_eq!(p.cmd("send 0 50 80"), "sent 50 packets on port 0", "cycle {i}");
        assert_eq!(raw.count(50, Duration::from_secs(5)), 50, "cycle {i}: kernel side");
        raw.send(30);
        let r = p.cmd("recv 0 30 5000");
        assert!(field(&r, "received") >= 30, "cycle {i}: {r}");
    });
    assert!(!link_exists(&ifn), "tap interface {ifn} left after detach");
}

#[test]
fn net_af_packet_attached_from_a_secondary_used_by_the_primary_detached_from_another() {
    if skip_without_net_admin("net_af_packet_attached_from_a_secondary_used_by_the_primary_detached_from_another") {
        return;
    }
    let (va, vb, _g) = veth("hv");
    let raw = Raw::bind(&vb);
    let dev = format!("net_af_packet0,iface={va},qpairs=2");
    scenario("afp", &dev, "net_af_packet0", |p, i| {
        assert_eq!(p.cmd("send 0 50 80"), "sent 50 packets on port 0", "cycle {i}");
        assert_eq!(raw.count(50, Duration::from_secs(5)), 50, "cycle {i}: kernel side");
    });
}
