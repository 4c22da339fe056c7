//! Integration tests: the real `lab-nic` binary over real sockets, driven with the `vfio_user` client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab_emu::mem::Mapping;
use lab_testkit::LabNic;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vfio_user::Client;

const BDF: &str = "0000:00:05.0";
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A lab-nic (stopped by pid on drop, see lab_testkit::LabNic) and where it serves.
struct Lab {
    nic: LabNic,
    root: PathBuf,
    control: PathBuf,
}

fn lab_nic() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lab-nic"))
}

fn spawn(devs: &[&str], extra: &[&str]) -> Lab {
    let b = devs.iter().fold(LabNic::builder().bin(env!("CARGO_BIN_EXE_lab-nic")), |b, d| b.dev(*d));
    let nic = extra.iter().fold(b, |b, a| b.arg(*a)).start();
    let (root, control) = (nic.root().to_path_buf(), nic.control().to_path_buf());
    Lab { nic, root, control }
}

impl Lab {
    fn sock(&self, bdf: &str) -> PathBuf {
        self.root.join(bdf).join("vfio-user.sock")
    }

    fn ctl(&self, cmd: &str) -> String {
        let mut s = UnixStream::connect(&self.control).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    fn stat(&self, bdf: &str, key: &str) -> u64 {
        let r = self.ctl(&format!("stats {bdf}"));
        r.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {r:?}"))
    }
}

/// Runs `f` on another thread and fails the test if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("operation hung")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

// Register offsets, from the 82599 datasheet (8.2.3), written out here as a driver would.
const CTRL: u64 = 0x0;
const EIMC: u64 = 0x888;
const EITR0: u64 = 0x820;
const GPRC: u64 = 0x4074;
const GPTC: u64 = 0x4080;
const RXCTRL: u64 = 0x3000;
const FCTRL: u64 = 0x5080;
const AUTOC: u64 = 0x42a0;
const LINKS: u64 = 0x42a4;
const DMATXCTL: u64 = 0x4a80;
const EEC: u64 = 0x10010;

fn rd32(c: &mut Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wr32(c: &mut Client, off: u64, v: u32) {
    c.region_write(0, off, &v.to_le_bytes()).unwrap();
}

#[test]
fn sysfs_entry_has_linux_formats_and_a_socket() {
    let lab = spawn(&[&format!("{BDF},model=ixgbe,wire=loopback")], &[]);
    let dir = lab.root.join(BDF);
    let rd = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert_eq!(rd("vendor"), "0x8086\n");
    assert_eq!(rd("device"), "0x10fb\n");
    assert_eq!(rd("class"), "0x020000\n");
    let res = rd("resource");
    assert_eq!(res.lines().count(), 13);
    assert!(res.lines().next().unwrap().ends_with(" 0x000000000014220c"));
    assert_eq!(std::fs::read_link(dir.join("driver")).unwrap().file_name().unwrap(), "vfio-pci");
    assert!(lab.sock(BDF).exists());
}

const IOVA: u64 = 0x1_0000_0000;
const N: u32 = 16;
const RX_RING: usize = 0;
const TX_RING: usize = 0x1000;
const RX_BUFS: usize = 0x10000;
const TX_BUFS: usize = 0x40000;

/// A driver's view of one port: the mmapped queue pages and its DMA memory.
struct Port {
    rxp: Mapping,
    txp: Mapping,
    mem: Mapping,
    next_tx: u32,
}

/// Checks the region table, maps the queue pages and DMA memory, and runs the ixy-style bring-up
/// with one RX and one TX ring of N descriptors.
fn bring_up(c: &mut Client) -> Port {
    let bar0 = c.region(0).unwrap();
    assert_eq!(bar0.size, 512 * 1024);
    let areas: Vec<(u64, u64)> = bar0.sparse_areas.iter().map(|a| (a.offset, a.size)).collect();
    assert_eq!(areas, vec![(0x1000, 0x1000), (0x6000, 0x2000)]);
    let fo = bar0.file_offset.as_ref().expect("BAR0 fd");
    let rxp = Mapping::map_file(fo.file(), fo.start() + 0x1000, 0x1000).unwrap();
    let txp = Mapping::map_file(fo.file(), fo.start() + 0x6000, 0x2000).unwrap();

    c.region_write(7, 4, &6u16.to_le_bytes()).unwrap(); // memory + bus master
    wr32(c, EIMC, 0x7fff_ffff);
    wr32(c, CTRL, 1 << 26);
    assert_eq!(rd32(c, CTRL) & (1 << 26), 0);
    assert_ne!(rd32(c, EEC) & (1 << 9), 0);
    wr32(c, AUTOC, 1 << 12);

    let mem = Mapping::memfd("test-dma", 1 << 20).unwrap();
    c.dma_map(0, IOVA, 1 << 20, mem.raw_fd().unwrap()).unwrap();
    for i in 0..N as usize {
        mem.write(RX_RING + i * 16, &(IOVA + (RX_BUFS + i * 2048) as u64).to_le_bytes());
    }
    wr32(c, FCTRL, 1 << 10); // BAM; unicast to our MAC only
                             // SRRCTL(0): advanced one-buffer descriptors (DESCTYPE 001), 2 KiB buffers.
    let srrctl = rd32(c, 0x2100);
    wr32(c, 0x2100, (srrctl & !(7 << 25)) | (1 << 25));
    wr32(c, RXCTRL, 1);
    wr32(c, DMATXCTL, 1);
    // Queue 0 registers live in the mmapped pages: RX page base 0x1000, TX page base 0x6000.
    rxp.write32(0x00, IOVA as u32 + RX_RING as u32);
    rxp.write32(0x04, (IOVA >> 32) as u32);
    rxp.write32(0x08, N * 16);
    rxp.write32(0x28, 1 << 25);
    rxp.write32(0x10, 0);
    rxp.write32(0x18, N - 1);
    txp.write32(0x00, IOVA as u32 + TX_RING as u32);
    txp.write32(0x04, (IOVA >> 32) as u32);
    txp.write32(0x08, N * 16);
    txp.write32(0x10, 0);
    txp.write32(0x18, 0);
    txp.write32(0x28, 1 << 25);
    assert!(wait_until(Duration::from_secs(5), || rd32(c, LINKS) & (1 << 30) != 0));
    Port { rxp, txp, mem, next_tx: 0 }
}

impl Port {
    /// Queues frames on the TX ring (EOP|IFCS|RS|DEXT) and rings the TDT doorbell.
    fn send(&mut self, frames: &[Vec<u8>]) {
        for f in frames {
            let i = self.next_tx as usize;
            let buf = TX_BUFS + i * 2048;
            self.mem.write(buf, f);
            let d = TX_RING + i * 16;
            self.mem.write(d, &(IOVA + buf as u64).to_le_bytes());
            let ctl = f.len() as u32 | (3 << 20) | (1 << 24) | (1 << 25) | (1 << 27) | (1 << 29);
            self.mem.write(d + 8, &ctl.to_le_bytes());
            self.mem.write(d + 12, &((f.len() as u32) << 14).to_le_bytes());
            self.next_tx = (self.next_tx + 1) % N;
        }
        self.txp.write32(0x18, self.next_tx);
    }

    /// Reads back RX descriptor `i`: (status, length, data).
    fn received(&self, i: usize) -> (u32, Vec<u8>) {
        let mut st = [0u8; 8];
        self.mem.read(RX_RING + i * 16 + 8, &mut st);
        let status = u32::from_le_bytes([st[0], st[1], st[2], st[3]]);
        let len = u16::from_le_bytes([st[4], st[5]]) as usize;
        let mut got = vec![0u8; len];
        self.mem.read(RX_BUFS + i * 2048, &mut got);
        (status, got)
    }
}

fn test_frames(dst: [u8; 6], n: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            let mut f: Vec<u8> = (0..(60 + 200 * k as usize)).map(|i| i as u8 ^ k).collect();
            f[..6].copy_from_slice(&dst);
            f
        })
        .collect()
}

#[test]
fn loopback_frames_round_trip_through_mmapped_queue_pages_and_dma() {
    let lab = spawn(&[&format!("{BDF},model=ixgbe,wire=loopback,mac=02:00:00:00:00:01")], &[]);
    let mut c = Client::new(&lab.sock(BDF)).unwrap();
    assert_eq!(c.region(4).unwrap().size, 16 * 1024);
    assert_eq!(c.region(7).unwrap().size, 4096);
    let mut id = [0u8; 4];
    c.region_read(7, 0, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x10fb_8086);
    // Trapped register round trip.
    wr32(&mut c, EITR0, 0x0000_0c80);
    assert_eq!(rd32(&mut c, EITR0), 0x0000_0c80);

    let mut port = bring_up(&mut c);
    let frames = test_frames(MAC, 3);
    port.send(&frames);
    assert!(wait_until(Duration::from_secs(5), || port.rxp.read32(0x10) == Some(3)), "RDH did not advance");
    assert_eq!(port.txp.read32(0x10), Some(3), "TDH");
    for (i, f) in frames.iter().enumerate() {
        let (status, got) = port.received(i);
        assert_eq!(status & 3, 3, "DD|EOP");
        assert_eq!(&got, f, "frame {i} byte-identical");
        let mut dd = [0u8; 4];
        port.mem.read(TX_RING + i * 16 + 12, &mut dd);
        assert_eq!(dd[0] & 1, 1, "TX DD");
    }
    assert_eq!(rd32(&mut c, GPRC), 3);
    assert_eq!(rd32(&mut c, GPRC), 0, "clear on read");
    assert_eq!(rd32(&mut c, GPTC), 3);
    assert_eq!(lab.stat(BDF, "rx_packets"), 3);
    assert_eq!(lab.stat(BDF, "tx_packets"), 3);
    assert_eq!(lab.stat(BDF, "connections"), 1);

    // Link down from the control socket: LINKS follows, and back up.
    assert_eq!(lab.ctl(&format!("link down {BDF}")), "ok\n");
    assert_eq!(rd32(&mut c, LINKS) & (1 << 30), 0);
    assert_eq!(lab.ctl(&format!("link up {BDF}")), "ok\n");
    assert_ne!(rd32(&mut c, LINKS) & (1 << 30), 0);

    // A TX descriptor pointing outside the DMA map is a recorded fault; the device keeps working.
    let d = TX_RING + 3 * 16;
    port.mem.write(d, &0xdead_0000_0000u64.to_le_bytes());
    port.mem.write(d + 8, &(64u32 | (3 << 20) | (1 << 24) | (1 << 27) | (1 << 29)).to_le_bytes());
    port.txp.write32(0x18, 4);
    assert!(wait_until(Duration::from_secs(5), || port.txp.read32(0x10) == Some(4)));
    let faults = lab.ctl(&format!("faults {BDF}"));
    assert!(faults.starts_with("ok count=1 "), "{faults}");
    assert!(faults.contains("iova=0xdead00000000"), "{faults}");
    port.next_tx = 4;
    port.send(&test_frames(MAC, 1));
    assert!(wait_until(Duration::from_secs(5), || port.rxp.read32(0x10) == Some(4)));
    // (A trapped access past a region's end is an error reply: tests/vfio_user_spec.rs.)
    c.dma_unmap(IOVA, 1 << 20).unwrap();
}

#[test]
fn msix_vector_signals_the_registered_eventfd() {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsRawFd;
    let lab = spawn(&[&format!("{BDF},model=ixgbe,wire=loopback,mac=02:00:00:00:00:01")], &[]);
    let mut c = Client::new(&lab.sock(BDF)).unwrap();
    let info = c.get_irq_info(2).unwrap();
    assert_eq!(info.count, 64);
    let mut port = bring_up(&mut c);
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    // DATA_EVENTFD | ACTION_TRIGGER for vector 1.
    c.set_irqs(2, 4 | 32, 1, 1, &[efd.as_raw_fd()]).unwrap();
    // Find the MSI-X capability and set MSI-X enable; unmask vector 1 in the BAR4 table.
    let mut p = [0u8; 1];
    c.region_read(7, 0x34, &mut p).unwrap();
    let mut cap = p[0] as u64;
    loop {
        let mut h = [0u8; 2];
        c.region_read(7, cap, &mut h).unwrap();
        if h[0] == 0x11 {
            break;
        }
        assert_ne!(h[1], 0, "no MSI-X capability");
        cap = h[1] as u64;
    }
    c.region_write(7, cap + 3, &[0x80]).unwrap();
    c.region_write(4, 16 + 12, &0u32.to_le_bytes()).unwrap();
    wr32(&mut c, 0x898, 1 << 4); // GPIE: multiple MSI-X
    wr32(&mut c, 0x900, 0x80 | 1); // IVAR(0): RX queue 0 -> vector 1
    wr32(&mut c, 0x880, 1 << 1); // EIMS: vector 1
    port.send(&test_frames(MAC, 1));
    assert!(wait_until(Duration::from_secs(5), || efd.read().is_ok()), "eventfd not signalled");
}

#[test]
fn device_state_is_shared_and_a_closed_connection_loses_only_its_dma_maps() {
    let lab = spawn(&[&format!("{BDF},model=ixgbe,wire=loopback,mac=02:00:00:00:00:01")], &[]);
    let mut primary = Client::new(&lab.sock(BDF)).unwrap();
    let mut secondary = Client::new(&lab.sock(BDF)).unwrap();
    let mut port = bring_up(&mut primary);
    wr32(&mut primary, EITR0, 0x111);
    assert_eq!(rd32(&mut secondary, EITR0), 0x111, "one device behind both connections");
    port.send(&test_frames(MAC, 1));
    assert!(wait_until(Duration::from_secs(5), || lab.stat(BDF, "rx_packets") == 1));
    assert_eq!(rd32(&mut secondary, GPRC), 1);
    // The primary goes away: its DMA maps go with it, the device (and the secondary) stay.
    drop(primary);
    assert!(wait_until(Duration::from_secs(5), || lab.stat(BDF, "connections") == 1));
    std::thread::sleep(Duration::from_millis(50));
    port.send(&test_frames(MAC, 1));
    assert!(wait_until(Duration::from_secs(5), || {
        lab.ctl(&format!("faults {BDF}")).contains("tx descriptor read")
    }));
    assert_ne!(rd32(&mut secondary, LINKS) & (1 << 30), 0, "device state kept");
}

#[test]
fn peer_ports_exchange_frames() {
    let a = "0000:00:05.0";
    let b = "0000:00:06.0";
    let lab = spawn(
        &[
            &format!("{a},model=ixgbe,peer={b},mac=02:00:00:00:00:0a"),
            &format!("{b},model=ixgbe,mac=02:00:00:00:00:0b"),
        ],
        &[],
    );
    let mut ca = Client::new(&lab.sock(a)).unwrap();
    let mut cb = Client::new(&lab.sock(b)).unwrap();
    let mut pa = bring_up(&mut ca);
    let mut pb = bring_up(&mut cb);
    let to_b = test_frames([0x02, 0, 0, 0, 0, 0x0b], 2);
    pa.send(&to_b);
    assert!(wait_until(Duration::from_secs(5), || pb.rxp.read32(0x10) == Some(2)));
    assert_eq!(pb.received(1).1, to_b[1]);
    let to_a = test_frames([0x02, 0, 0, 0, 0, 0x0a], 1);
    pb.send(&to_a);
    assert!(wait_until(Duration::from_secs(5), || pa.rxp.read32(0x10) == Some(1)));
    assert_eq!(pa.received(0).1, to_a[0]);
    assert_eq!(lab.stat(a, "tx_packets"), 2);
    assert_eq!(lab.stat(b, "rx_packets"), 2);
}

/// Names of lab-nic's device threads (`/proc/PID/task/*/comm`), sorted.
fn device_thread_names(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .filter(|c| c == "device" || c.starts_with("device-"))
        .collect();
    v.sort();
    v
}

#[test]
fn device_threads_run_as_many_as_asked_and_carry_cabled_traffic() {
    let (a, b, c) = ("0000:00:05.0", "0000:00:06.0", "0000:00:07.0");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let auto = (cores / 2).clamp(1, 3);
    let pool = |n: usize| (0..n).map(|i| format!("device-{i}")).collect::<Vec<_>>();
    // The thread each function polls on: the one with the fewest functions when it started.
    let cases: [(&str, Vec<String>, [&str; 3]); 4] = [
        ("1", pool(1), ["device-0"; 3]),
        ("2", pool(2), ["device-0", "device-1", "device-0"]),
        ("per-function", vec!["device".into(); 3], ["device"; 3]),
        ("auto", pool(auto), ["0", "1", "2"]),
    ];
    for (arg, threads, on) in cases {
        // auto: function i on device-(i mod threads).
        let auto_on = (0..3).map(|i| format!("device-{}", i % auto)).collect::<Vec<_>>();
        let on: Vec<&str> = if arg == "auto" { auto_on.iter().map(String::as_str).collect() } else { on.to_vec() };
        let lab = spawn(
            &[
                &format!("{a},model=ixgbe,peer={b},mac=02:00:00:00:00:0a"),
                &format!("{b},model=ixgbe,mac=02:00:00:00:00:0b"),
                &format!("{c},model=ixgbe,wire=loopback"),
            ],
            &["--device-threads", arg],
        );
        assert_eq!(device_thread_names(lab.nic.pid()), threads, "--device-threads {arg}");
        assert_eq!(lab.ctl("threads"), format!("ok {a}={} {b}={} {c}={}\n", on[0], on[1], on[2]), "{arg}");
        let mut ca = Client::new(&lab.sock(a)).unwrap();
        let mut cb = Client::new(&lab.sock(b)).unwrap();
        let mut pa = bring_up(&mut ca);
        let mut pb = bring_up(&mut cb);
        let to_b = test_frames([0x02, 0, 0, 0, 0, 0x0b], 3);
        pa.send(&to_b);
        assert!(wait_until(Duration::from_secs(5), || pb.rxp.read32(0x10) == Some(3)), "{arg}: a -> b");
        assert_eq!(pb.received(2).1, to_b[2], "{arg}");
        let to_a = test_frames([0x02, 0, 0, 0, 0, 0x0a], 2);
        pb.send(&to_a);
        assert!(wait_until(Duration::from_secs(5), || pa.rxp.read32(0x10) == Some(2)), "{arg}: b -> a");
        assert_eq!(pa.received(1).1, to_a[1], "{arg}");
        assert_eq!((lab.stat(a, "tx_packets"), lab.stat(b, "rx_packets")), (3, 3), "{arg}");
    }
}

#[test]
fn a_function_plugged_back_joins_the_least_busy_shared_thread_and_works() {
    let (a, b, c) = ("0000:00:05.0", "0000:00:06.0", "0000:00:07.0");
    let lab = spawn(
        &[
            &format!("{a},model=ixgbe,wire=loopback,mac=02:00:00:00:00:01"),
            &format!("{b},model=ixgbe,wire=loopback"),
            &format!("{c},model=ixgbe,wire=loopback"),
        ],
        &["--device-threads", "2"],
    );
    assert_eq!(lab.ctl("threads"), format!("ok {a}=device-0 {b}=device-1 {c}=device-0\n"));
    // A thread that loses a function keeps polling the others.
    assert_eq!(lab.ctl(&format!("unplug {c}")), "ok\n");
    assert_eq!(lab.ctl("threads"), format!("ok {a}=device-0 {b}=device-1\n"));
    let mut ca = Client::new(&lab.sock(a)).unwrap();
    let mut pa = bring_up(&mut ca);
    pa.send(&test_frames(MAC, 2));
    assert!(wait_until(Duration::from_secs(5), || pa.rxp.read32(0x10) == Some(2)), "device-0 still polls {a}");
    // Back in: on the thread with the fewest functions (a tie: the first), no thread more.
    assert_eq!(lab.ctl(&format!("unplug {b}")), "ok\n");
    assert_eq!(lab.ctl(&format!("plug {c}")), "ok\n");
    assert_eq!(lab.ctl("threads"), format!("ok {a}=device-0 {c}=device-1\n"));
    assert_eq!(device_thread_names(lab.nic.pid()), ["device-0", "device-1"]);
    let mut cc = Client::new(&lab.sock(c)).unwrap();
    let mut pc = bring_up(&mut cc);
    let own = [0x02, 0, 0, 0, 7, 0];
    pc.send(&test_frames(own, 3));
    assert!(wait_until(Duration::from_secs(5), || pc.rxp.read32(0x10) == Some(3)), "device-1 polls {c}");
    assert_eq!(lab.stat(c, "rx_packets"), 3);
}

#[test]
fn ninth_client_is_refused_quickly_and_a_freed_slot_is_reused() {
    let lab = spawn(&[&format!("{BDF},model=ixgbe")], &[]);
    let sock = lab.sock(BDF);
    let mut clients: Vec<Client> = (0..8).map(|_| Client::new(&sock).unwrap()).collect();
    assert!(wait_until(Duration::from_secs(5), || lab.stat(BDF, "connections") == 8));
    let s2 = sock.clone();
    let ninth = within(Duration::from_secs(5), move || Client::new(&s2).is_err());
    assert!(ninth, "the ninth client must be refused");
    assert_eq!(lab.stat(BDF, "refused"), 1);
    // Every admitted client is served concurrently.
    for c in clients.iter_mut() {
        let mut id = [0u8; 2];
        c.region_read(7, 0, &mut id).unwrap();
        assert_eq!(id, [0x86, 0x80]);
    }
    drop(clients.pop());
    assert!(wait_until(Duration::from_secs(5), || lab.stat(BDF, "connections") == 7));
    let s3 = sock.clone();
    assert!(within(Duration::from_secs(5), move || Client::new(&s3).is_ok()));
}

#[test]
fn unplug_closes_clients_and_removes_the_entry() {
    let lab = spawn(&[&format!("{BDF},model=ixgbe,peer=0000:00:06.0"), "0000:00:06.0,model=ixgbe"], &[]);
    let mut c = Client::new(&lab.sock(BDF)).unwrap();
    assert_eq!(rd32(&mut c, EEC) & (1 << 8), 1 << 8);
    assert_eq!(lab.ctl(&format!("unplug {BDF}")), "ok\n");
    assert!(!lab.root.join(BDF).exists());
    assert!(lab.root.join("0000:00:06.0").exists());
    let failed = within(Duration::from_secs(5), move || {
        let mut b = [0u8; 4];
        c.region_read(0, 0, &mut b).is_err()
    });
    assert!(failed, "a client of an unplugged function sees the connection closed");
    assert!(lab.ctl(&format!("stats {BDF}")).starts_with("error: "));
    assert!(lab.ctl("frobnicate").starts_with("error: unknown command"));
}

#[test]
fn plug_brings_an_unplugged_function_back_fresh() {
    let lab = spawn(
        &[
            &format!("{BDF},model=ixgbe,wire=loopback"),
            "0000:00:06.0,model=ixgbe,peer=0000:00:07.0",
            "0000:00:07.0,model=ixgbe",
        ],
        &[],
    );
    assert_eq!(lab.ctl(&format!("plug {BDF}")), format!("error: {BDF} is plugged in\n"));
    let mut c = Client::new(&lab.sock(BDF)).unwrap();
    // RDBAL(0): plain read/write, zero at power-on.
    let rdbal0 = 0x01000;
    wr32(&mut c, rdbal0, 0x1234_5000);
    assert_eq!(rd32(&mut c, rdbal0), 0x1234_5000);
    assert_eq!(lab.ctl(&format!("unplug {BDF}")), "ok\n");
    assert!(!lab.root.join(BDF).exists());
    drop(c);
    assert_eq!(lab.ctl(&format!("plug {BDF}")), "ok\n");
    assert!(lab.root.join(BDF).join("vendor").exists(), "the sysfs entry is back");
    let mut c = Client::new(&lab.sock(BDF)).expect("a new client reaches the plugged function");
    assert_eq!(rd32(&mut c, EEC) & (1 << 8), 1 << 8, "EEC.PRES: the model answers");
    assert_eq!(rd32(&mut c, rdbal0), 0, "power-on state again");
    assert!(lab.ctl("list").contains(BDF));
    // Refused, with what was wrong: a peer-cabled function, one lab-nic never had.
    assert_eq!(lab.ctl("unplug 0000:00:06.0"), "ok\n");
    let r = lab.ctl("plug 0000:00:06.0");
    assert!(r.starts_with("error: 0000:00:06.0 is cabled to 0000:00:07.0"), "{r}");
    assert!(!lab.root.join("0000:00:06.0").exists(), "a refused plug changes nothing");
    let r = lab.ctl("plug 0000:00:09.0");
    assert!(r.starts_with("error: no function 0000:00:09.0") && r.contains(BDF), "{r}");
}

#[test]
fn sigterm_removes_sockets_and_sysfs_entries() {
    let mut lab = spawn(&[&format!("{BDF},model=ixgbe"), "0000:00:06.0,model=ixgbe,wire=loopback"], &[]);
    let _c = Client::new(&lab.sock(BDF)).unwrap();
    let status = lab.nic.terminate(Duration::from_secs(10)).expect("lab-nic exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!lab.root.join(BDF).exists());
    assert!(!lab.root.join("0000:00:06.0").exists());
    assert!(!lab.control.exists());
}

/// `--exit-with-parent`: the parent (a shell standing in for `lab`) is SIGKILLed; lab-nic, now
/// orphaned, shuts down cleanly on its own.
#[test]
fn a_killed_parent_takes_lab_nic_down_cleanly_with_exit_with_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("devices");
    let control = tmp.path().join("ctl.sock");
    let script = format!(
        "{} --sysfs-root {} --control {} --dev {BDF},model=ixgbe --log-level warn --exit-with-parent & echo $!; wait",
        env!("CARGO_BIN_EXE_lab-nic"),
        root.display(),
        control.display()
    );
    let mut sh = Command::new("sh").arg("-c").arg(&script).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let nic = Pid::from_raw(line.trim().parse().unwrap());
    let guard = KillOnDrop(nic);
    assert!(wait_until(Duration::from_secs(15), || control.exists()), "lab-nic never came up");
    kill(Pid::from_raw(sh.id() as i32), Signal::SIGKILL).unwrap();
    sh.wait().unwrap();
    // Orphaned lab-nic is reaped by init (or a subreaper): watch /proc for it to go.
    let gone = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{nic}/stat"))
            .map(|st| st.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
            .unwrap_or(true)
    });
    assert!(gone, "lab-nic {nic} still running after its parent died");
    assert!(!root.join(BDF).exists(), "sysfs entry left behind");
    assert!(!control.exists(), "control socket left behind");
    // Gone: its pid may already belong to another process, which must not be killed.
    std::mem::forget(guard);
}

/// `--exit-with-parent=PID` where PID died before lab-nic started: lab-nic notices at once and
/// shuts down cleanly instead of running on, re-parented, forever.
#[test]
fn a_parent_gone_before_start_up_takes_lab_nic_down_with_exit_with_parent_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("devices");
    // A pid that is certainly not our parent (and gone): a child we started and reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let mut child = lab_nic()
        .arg("--sysfs-root")
        .arg(&root)
        .args(["--dev", &format!("{BDF},model=ixgbe"), "--log-level", "warn"])
        .arg(format!("--exit-with-parent={gone_pid}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        // Still ours, unreaped: kill it before failing.
        let _ = child.kill();
        let _ = child.wait();
        panic!("lab-nic still running with its parent long gone");
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(!root.join(BDF).exists(), "sysfs entry left behind");
}

/// Kills a process by pid when dropped (a test that fails half-way leaves nothing running).
struct KillOnDrop(Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
    }
}

#[test]
fn bad_arguments_exit_2_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("devices");
    let cases: &[&[&str]] = &[
        &["--dev", "0000:00:05.0,model=e1000"],
        &["--dev", "0000:00:05.0,model=ixgbe,mac=zz"],
        &["--dev", "0000:00:05.0,model=ixgbe,speed=10"],
        &["--dev", "0000:00:05.0,model=ixgbe,peer=0000:00:09.0"],
        &["--dev", "00:05.0,model=ixgbe"],
        &["--dev", "0000:00:05.0"],
        &["--bogus"],
    ];
    for args in cases {
        let out = lab_nic().arg("--sysfs-root").arg(&root).args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("lab-nic: error: "), "{err}");
        assert!(!root.exists(), "{args:?} created {}", root.display());
    }
    let out = lab_nic()
        .args(["--sysfs-root", "/nonexistent-dir-for-lab", "--dev", "0000:00:05.0,model=ixgbe,mac=zz"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("mac=zz"));
}

#[test]
fn long_sysfs_paths_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("d".repeat(80)).join("devices");
    let mut child = lab_nic()
        .arg("--sysfs-root")
        .arg(&root)
        .args(["--dev", "0000:00:05.0,model=ixgbe", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take().unwrap();
    let line = within(Duration::from_secs(15), move || {
        let mut l = String::new();
        let _ = BufReader::new(stdout).read_line(&mut l);
        l
    });
    let sock = root.join(BDF).join("vfio-user.sock");
    assert!(sock.as_os_str().len() > 107);
    let ok = line == "lab-nic ready\n" && {
        // Connect the same way: through an O_PATH descriptor of the directory.
        let dir = std::fs::File::open(root.join(BDF)).unwrap();
        let short =
            Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string()).join("vfio-user.sock");
        Client::new(&short).is_ok()
    };
    let _ = kill(pid, Signal::SIGTERM);
    let _ = child.wait();
    assert!(ok, "ready line {line:?}");
}

fn pcap_file(path: &Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&65535u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    for f in frames {
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn pcap_wire_replays_rx_and_records_tx() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = tmp.path().join("rx.pcap");
    let tx = tmp.path().join("tx.pcap");
    let incoming = test_frames(MAC, 2);
    pcap_file(&rx, &incoming);
    let lab = spawn(&[&format!("{BDF},model=ixgbe,pcap={}:{},mac=02:00:00:00:00:01", rx.display(), tx.display())], &[]);
    let mut c = Client::new(&lab.sock(BDF)).unwrap();
    let mut port = bring_up(&mut c);
    assert!(wait_until(Duration::from_secs(5), || port.rxp.read32(0x10) == Some(2)));
    assert_eq!(port.received(0).1, incoming[0]);
    assert_eq!(port.received(1).1, incoming[1]);
    let out = test_frames([0xff; 6], 1);
    port.send(&out);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::metadata(&tx).map(|m| m.len()).unwrap_or(0) == 24 + 16 + out[0].len() as u64
    }));
    let bytes = std::fs::read(&tx).unwrap();
    assert_eq!(&bytes[40..], &out[0][..]);
}

#[test]
fn malformed_messages_are_answered_or_dropped_without_hurting_the_server() {
    let lab = spawn(&[&format!("{BDF},model=ixgbe")], &[]);
    let header = |cmd: u16, size: u32| {
        let mut h = Vec::new();
        h.extend_from_slice(&7u16.to_le_bytes());
        h.extend_from_slice(&cmd.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&[0; 8]);
        h
    };
    // Negotiation first; then an unsupported command (DMA_READ) gets an error reply with its
    // errno and the connection stays usable.
    let mut s = UnixStream::connect(lab.sock(BDF)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = [0u8; 16];
    let err = |r: &[u8; 16]| {
        (u32::from_le_bytes([r[8], r[9], r[10], r[11]]) & (1 << 5) != 0)
            .then(|| u32::from_le_bytes([r[12], r[13], r[14], r[15]]))
    };
    s.write_all(&header(13, 16)).unwrap(); // DEVICE_RESET before VERSION
    std::io::Read::read_exact(&mut s, &mut r).unwrap();
    assert_eq!(err(&r), Some(libc::EINVAL as u32), "negotiation comes first");
    // A VERSION whose capability string is not NUL-terminated is refused with EINVAL.
    let mut v = header(1, 16 + 6);
    v.extend_from_slice(&[0, 0, 1, 0, b'{', b'}']);
    s.write_all(&v).unwrap();
    std::io::Read::read_exact(&mut s, &mut r).unwrap();
    assert_eq!(err(&r), Some(libc::EINVAL as u32));
    let mut v = header(1, 16 + 4);
    v.extend_from_slice(&[0, 0, 1, 0]); // no JSON: the capabilities are optional
    s.write_all(&v).unwrap();
    std::io::Read::read_exact(&mut s, &mut r).unwrap();
    assert_eq!(err(&r), None);
    let mut rest = vec![0u8; u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as usize - 16];
    std::io::Read::read_exact(&mut s, &mut rest).unwrap();
    s.write_all(&header(11, 16)).unwrap();
    std::io::Read::read_exact(&mut s, &mut r).unwrap();
    assert_eq!(u16::from_le_bytes([r[2], r[3]]), 11);
    assert_eq!(err(&r), Some(libc::ENOTSUP as u32), "DMA_READ is not supported");
    s.write_all(&header(13, 16)).unwrap(); // DEVICE_RESET
    std::io::Read::read_exact(&mut s, &mut r).unwrap();
    assert_eq!(err(&r), None);
    // A message claiming 4 GiB is refused outright.
    let mut s2 = UnixStream::connect(lab.sock(BDF)).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s2.write_all(&header(10, u32::MAX)).unwrap();
    assert_eq!(std::io::Read::read(&mut s2, &mut r).unwrap_or(0), 0);
    // The function still serves well-formed clients.
    let mut c = Client::new(&lab.sock(BDF)).unwrap();
    assert_ne!(rd32(&mut c, EEC) & (1 << 9), 0);
}

#[test]
fn tap_wire_creates_and_removes_its_interface() {
    if !Path::new("/dev/net/tun").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs /dev/net/tun and root");
        return;
    }
    let name = format!("labemu{}", std::process::id() % 100_000);
    let mut lab = spawn(&[&format!("{BDF},model=ixgbe,tap={name},mac=02:00:00:00:00:01")], &[]);
    let sys = PathBuf::from("/sys/class/net").join(&name);
    assert!(sys.exists(), "TAP {name} exists while lab-nic runs");
    let up =
        Command::new("ip").args(["link", "set", "dev", &name, "up"]).status().map(|s| s.success()).unwrap_or(false);
    if up {
        let mut c = Client::new(&lab.sock(BDF)).unwrap();
        let mut port = bring_up(&mut c);
        let rx_stat = sys.join("statistics/rx_packets");
        let before: u64 = std::fs::read_to_string(&rx_stat).unwrap().trim().parse().unwrap();
        port.send(&test_frames([0xff; 6], 2));
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&rx_stat)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= before + 2)
        }));
    }
    let status = lab.nic.terminate(Duration::from_secs(10)).expect("lab-nic exits on SIGTERM");
    assert!(status.success());
    assert!(!sys.exists(), "TAP {name} removed on exit");
}
