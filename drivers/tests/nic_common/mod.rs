//! Shared by the NIC driver tests: a real `lab-nic` process (built next to the test binary if it
//! is missing), a primary runtime with the default pool, and the test frames.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lab_core::bus::pci::scan_one;
use lab_core::devargs::Devargs;
use lab_core::ethdev::{Driver, EthDev, PortConf, PortId, ProbeCtx, DEFAULT_POOL};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::options::Options;
use lab_core::runtime::Runtime;

/// One XDG_RUNTIME_DIR for the whole test binary (tests run in parallel threads; the variable is
/// process-wide, so it is set once). Each test uses its own file prefix inside it.
pub fn xdg() -> &'static Path {
    static X: OnceLock<PathBuf> = OnceLock::new();
    X.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir").keep();
        std::env::set_var("XDG_RUNTIME_DIR", &d);
        d
    })
}

#[allow(unused_imports)]
pub use lab_testkit::{lab_nic_bin, LabNic};

/// A primary runtime with the default pool. Tests hold a process-wide lock: they count fds and
/// share two CPUs with busy emulator threads, so they run one at a time.
pub struct Lab {
    pub rt: Runtime,
    pub prefix: String,
    pub pool: Mempool,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Lab {
    pub fn new(prefix: &str) -> Lab {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        xdg();
        let prefix = format!("{prefix}-{}", std::process::id());
        let (opts, _) =
            Options::parse([format!("--file-prefix={prefix}"), "--proc-type=primary".into()]).expect("opts");
        let rt = Runtime::init(&opts).expect("runtime");
        let pool = Mempool::create(rt.shm(), DEFAULT_POOL, 4096, 2048, 0).expect("pool");
        Lab { rt, prefix, pool, _serial: serial }
    }

    /// Probes `bdf` of `nic` with `drv` as port `port`, in this (primary) process.
    pub fn probe_conf(&self, drv: &dyn Driver, nic: &LabNic, bdf: &str, port: u16, conf: &PortConf) -> Box<dyn EthDev> {
        let pci = scan_one(&nic.dir(bdf)).expect("scan");
        let devargs = Devargs::parse(bdf).expect("devargs");
        let kvargs = devargs.validate(drv.name(), drv.keys()).expect("kvargs");
        let ctx = ProbeCtx {
            runtime: &self.rt,
            port: PortId(port),
            name: bdf,
            devargs: &devargs,
            kvargs: &kvargs,
            pci: Some(&pci),
            conf,
            ports: None,
        };
        assert!(drv.pci_ids().contains(&pci.id()), "{} not a {} id", pci.id(), drv.name());
        drv.probe(&ctx).expect("probe")
    }
}

pub fn frame(dst: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xee, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    f
}

/// Mixed sizes 60..=1514 from a fixed pseudo-random sequence.
pub fn sizes(n: usize) -> Vec<usize> {
    let mut x = 0x1234_5678u32;
    (0..n)
        .map(|i| match i % 7 {
            0 => 60,
            1 => 1514,
            _ => {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                60 + (x as usize % (1514 - 60 + 1))
            }
        })
        .collect()
}

/// Runs `f` on a thread and returns what it returns; fails the test if `f` never returns (a hang
/// guard with a bound far beyond any healthy run, not a measure of speed).
pub fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_else(|_| panic!("{what} hung"))
}

/// Sends `lens.len()` frames from `tx` to `rx` (may be the same port) and checks each one arrives
/// byte-identical and in order. Keeps at most `window` frames in flight so no ring overflows.
pub fn pump(
    pool: &mut Mempool,
    tx: &mut dyn EthDev,
    rx: &mut Option<&mut dyn EthDev>,
    dst: [u8; 6],
    lens: &[usize],
    window: usize,
) {
    let (mut sent, mut got) = (0usize, 0usize);
    let mut txb: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut rxb: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut last_progress = Instant::now();
    while got < lens.len() {
        let room = window.saturating_sub(sent - got).min(32).min(lens.len() - sent);
        if room > 0 {
            for (k, slot) in txb[..room].iter_mut().enumerate() {
                let mut m = pool.alloc().expect("mbuf");
                assert!(m.copy_from(&frame(dst, (sent + k) as u32, lens[sent + k])));
                *slot = Some(m);
            }
            let mut off = 0;
            while off < room {
                off += tx.tx_burst(0, &mut txb[off..room]);
            }
            sent += room;
        }
        let n = match rx {
            Some(r) => r.rx_burst(0, &mut rxb),
            None => tx.rx_burst(0, &mut rxb),
        };
        for slot in &mut rxb[..n] {
            let m = slot.take().expect("received mbuf");
            let want = frame(dst, got as u32, lens[got]);
            assert_eq!(m.len(), want.len(), "frame {got}: length");
            assert!(m.data() == &want[..], "frame {got}: content differs");
            got += 1;
            pool.free(m);
            last_progress = Instant::now();
        }
        // A hang guard (no frame for a minute), not a measure of speed.
        assert!(last_progress.elapsed() < Duration::from_secs(60), "stuck: sent {sent}, received {got}");
    }
}

pub fn wait_link(port: &mut dyn EthDev) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !port.link().up {
        assert!(Instant::now() < deadline, "link did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One flow: source, destination, source port, destination port, and its hash with the ports
/// under the default key.
pub type RssFlow = ([u8; 4], [u8; 4], u16, u16, u32);

/// Microsoft's RSS verification flows (IPv4, TCP).
pub const RSS_FLOWS: [RssFlow; 5] = [
    ([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766, 0x51cc_c178),
    ([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739, 0xc626_b0ea),
    ([24, 19, 198, 95], [12, 22, 207, 184], 12898, 38024, 0x5c2b_394a),
    ([38, 27, 205, 30], [209, 142, 163, 6], 48228, 2217, 0xafc7_327f),
    ([153, 39, 163, 191], [202, 188, 127, 2], 44251, 1303, 0x10e8_28a2),
];

/// A 74-byte TCP/IPv4 frame to `dst` of one flow, `seq` in its payload.
pub fn tcp4_frame(dst: [u8; 6], (src_ip, dst_ip, sport, dport): ([u8; 4], [u8; 4], u16, u16), seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 74];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xee, 0x01]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14..24].copy_from_slice(&[0x45, 0, 0, 60, 0, 1, 0, 0, 64, 6]);
    f[26..30].copy_from_slice(&src_ip);
    f[30..34].copy_from_slice(&dst_ip);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[46] = 0x50;
    f[54..58].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Sends `frames` on TX queue 0 and collects them from RX queues `0..nq`: per frame (in order
/// of arrival per queue), `(queue, its seq, its rss_hash if the RSS flag is set)`.
pub fn send_and_sort(
    pool: &mut Mempool,
    port: &mut dyn EthDev,
    frames: &[Vec<u8>],
    nq: u16,
) -> Vec<(u16, u32, Option<u32>)> {
    let mut tx: Vec<Option<Mbuf>> = frames
        .iter()
        .map(|f| {
            let mut m = pool.alloc().expect("mbuf");
            assert!(m.copy_from(f));
            Some(m)
        })
        .collect();
    let mut sent = 0;
    let mut out = Vec::new();
    let mut rx: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < frames.len() {
        assert!(Instant::now() < deadline, "{} of {} frames back: {out:?}", out.len(), frames.len());
        if sent < tx.len() {
            sent += port.tx_burst(0, &mut tx[sent..]);
        }
        for q in 0..nq {
            let n = port.rx_burst(q, &mut rx);
            for mut m in rx[..n].iter_mut().filter_map(Option::take) {
                let d = m.data();
                let seq = u32::from_be_bytes([d[54], d[55], d[56], d[57]]);
                let h = m.hdr_mut();
                let hash = (h.ol_flags & lab_core::mbuf::RX_RSS_HASH != 0).then_some(h.rss_hash);
                out.push((q, seq, hash));
                pool.free(m);
            }
        }
    }
    out
}

/// DTS `queue_start_stop`, on a loopback port with one queue pair: a stopped receive queue
/// receives nothing (what came meanwhile is gone), started again it receives; a stopped
/// transmit queue sends nothing, started again it sends; queue numbers out of range are refused.
pub fn queue_start_stop(pool: &mut Mempool, port: &mut dyn EthDev) {
    let mac = port.info().mac;
    let frames: Vec<Vec<u8>> = (0..8u32).map(|i| frame(mac, i, 64)).collect();
    let round = |pool: &mut Mempool, port: &mut dyn EthDev| {
        let mut tx: Vec<Option<Mbuf>> = frames
            .iter()
            .map(|f| {
                let mut m = pool.alloc().expect("mbuf");
                assert!(m.copy_from(f));
                Some(m)
            })
            .collect();
        let sent = port.tx_burst(0, &mut tx);
        pool.free_bulk(&mut tx);
        sent
    };
    // Waits for `want` frames (up to 5 s; for none, a quarter second after the device is done).
    let receive = |pool: &mut Mempool, port: &mut dyn EthDev, want: usize| {
        let mut rx: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        let wait = if want == 0 { Duration::from_millis(250) } else { Duration::from_secs(5) };
        let (mut got, deadline) = (Vec::new(), Instant::now() + wait);
        while (want == 0 || got.len() < want) && Instant::now() < deadline {
            let n = port.rx_burst(0, &mut rx);
            for m in rx[..n].iter_mut().filter_map(Option::take) {
                got.push(m.data().to_vec());
                pool.free(m);
            }
        }
        got
    };
    assert_eq!(round(pool, port), 8);
    assert_eq!(receive(pool, port, 8), frames, "running: all back, byte-identical");

    port.rx_queue_stop(0).expect("rx queue stop");
    let before = port.stats();
    assert_eq!(round(pool, port), 8);
    // The device sent them (its own transmit counter) onto the loopback, where the stopped
    // queue cannot take them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while port.stats().opackets < before.opackets + 8 {
        assert!(Instant::now() < deadline, "the device did not send the 8 frames");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(receive(pool, port, 0).is_empty(), "a stopped queue receives nothing");
    assert_eq!(port.stats().ipackets, before.ipackets, "and the device delivered nothing");
    port.rx_queue_start(0).expect("rx queue start");
    assert_eq!(round(pool, port), 8);
    assert_eq!(receive(pool, port, 8), frames, "started again: only the new frames, all back");

    port.tx_queue_stop(0).expect("tx queue stop");
    assert_eq!(round(pool, port), 0, "a stopped queue sends nothing");
    port.tx_queue_start(0).expect("tx queue start");
    assert_eq!(round(pool, port), 8);
    assert_eq!(receive(pool, port, 8), frames, "transmit started again");

    let e = port.rx_queue_stop(9).unwrap_err();
    assert!(e.to_string().contains("receive queue 9"), "{e}");
    let e = port.tx_queue_start(1).unwrap_err();
    assert!(e.to_string().contains("transmit queue 1"), "{e}");
}

/// The port's link-status interrupt fires on each link change at the emulator (cable out,
/// cable in, three times), and the link reads as it changed.
pub fn link_interrupt_on_each_change(nic: &LabNic, bdf: &str, mut port: Box<dyn EthDev>) {
    use std::os::fd::AsRawFd;
    wait_link(port.as_mut());
    let (fd, up) = port.link_event_fd().expect("a link-status eventfd");
    assert!(up, "the link was up when the interrupt was set up");
    let fired = |fd: &std::os::fd::OwnedFd| {
        use std::os::fd::AsFd;
        let mut p = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let n = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(5000u16)).unwrap_or(0);
        n == 1 && nix::unistd::read(fd.as_raw_fd(), &mut [0u8; 8]) == Ok(8)
    };
    for _ in 0..3 {
        assert!(nic.command(&format!("link down {bdf}")).starts_with("ok"));
        assert!(fired(&fd), "vector 0 on link down");
        assert!(!port.link().up);
        assert!(nic.command(&format!("link up {bdf}")).starts_with("ok"));
        assert!(fired(&fd), "vector 0 on link up");
        assert!(port.link().up);
    }
    port.close(lab_core::ethdev::Release::Shared);
}

/// RSS on a loopback port of four receive queues (set up with the default RSS configuration),
/// as both drivers must do it: at start the table spreads round robin and each verification
/// flow lands on the queue its entry names with the published hash, counted per queue; the
/// table, the hash types and the key change at runtime; a refused update changes nothing.
/// `table` is the table's size, `unhashed` the queue a frame no enabled type covers goes to
/// once every entry names queue 1 (the 82599: entry 0's queue; the X710: the VSI's first),
/// `key_len` the key's length.
pub fn rss_over_four_queues(pool: &mut Mempool, port: &mut dyn EthDev, table: u16, unhashed: u16, key_len: u8) {
    use lab_core::rss::{hf, RssConf};
    wait_link(port);
    let mac = port.info().mac;
    assert_eq!(port.reta_size(), table);
    assert_eq!(port.reta_query().unwrap(), lab_core::rss::default_reta(table.into(), 4), "round robin at start");
    let frames: Vec<Vec<u8>> =
        RSS_FLOWS.iter().enumerate().map(|(i, f)| tcp4_frame(mac, (f.0, f.1, f.2, f.3), i as u32)).collect();
    // Each flow on queue TABLE[hash & (size - 1)] = that % 4, with the published hash.
    let got = send_and_sort(pool, port, &frames, 4);
    for (q, seq, hash) in &got {
        let want = RSS_FLOWS[*seq as usize].4;
        assert_eq!(*hash, Some(want), "flow {seq}: the Toeplitz hash of the verification suite");
        assert_eq!(u32::from(*q), (want & (u32::from(table) - 1)) % 4, "flow {seq} on the queue its entry names");
    }
    assert!(got.iter().map(|g| g.0).collect::<std::collections::HashSet<_>>().len() >= 3, "{got:?}");
    // Per-queue counters: each queue counted what it received.
    let (rxs, _) = port.queue_stats();
    assert_eq!(rxs.len(), 4);
    for q in 0..4u16 {
        let n = got.iter().filter(|g| g.0 == q).count() as u64;
        assert_eq!((rxs[usize::from(q)].packets, rxs[usize::from(q)].bytes), (n, 74 * n), "queue {q}");
    }
    // The table at runtime: every entry to queue 1; a refused update changes nothing.
    let all: Vec<(u16, u16)> = (0..table).map(|i| (i, 1)).collect();
    port.reta_update(&all).unwrap();
    assert!(send_and_sort(pool, port, &frames, 4).iter().all(|g| g.0 == 1));
    let e = port.reta_update(&[(0, 2), (3, 4)]).unwrap_err();
    assert!(e.to_string().contains("queue 4"), "{e}");
    let e = port.reta_update(&[(table, 0)]).unwrap_err();
    assert!(e.to_string().contains(&format!("entry {table}")), "{e}");
    assert_eq!(port.reta_query().unwrap()[0], 1, "a refused update changes nothing");
    // Hash types at runtime: UDP only, so these TCP frames are not hashed; then none at all.
    port.rss_hash_update(&RssConf { key: None, hf: hf::NONFRAG_IPV4_UDP }).unwrap();
    assert_eq!(port.rss_hash_conf_get().unwrap().hf, hf::NONFRAG_IPV4_UDP);
    assert!(send_and_sort(pool, port, &frames, 4).iter().all(|g| g.0 == unhashed && g.2.is_none()));
    // No hash types: RSS off, everything to queue 0.
    port.rss_hash_update(&RssConf { key: None, hf: 0 }).unwrap();
    assert!(send_and_sort(pool, port, &frames, 4).iter().all(|g| g.0 == 0 && g.2.is_none()));
    // Another key: the hashes change, and the key reads back.
    let key: Vec<u8> = (0..key_len).collect();
    port.rss_hash_update(&RssConf { key: Some(key.clone()), hf: hf::NONFRAG_IPV4_TCP }).unwrap();
    assert_eq!(port.rss_hash_conf_get().unwrap().key, Some(key));
    let got = send_and_sort(pool, port, &frames, 4);
    assert!(got.iter().all(|g| g.2.is_some_and(|h| h != RSS_FLOWS[g.1 as usize].4)), "{got:?}");
}

/// RX interrupt mode on a loopback port with two receive queues: no traffic, no interrupt; each
/// frame sent wakes the application waiting on queue 0's eventfd and is there to receive;
/// disarmed, the queue is silent; a queue past the port's is named in the error.
pub fn rx_interrupt_mode(pool: &mut Mempool, port: &mut dyn EthDev) {
    use std::os::fd::{AsFd, AsRawFd};
    wait_link(port);
    let mac = port.info().mac;
    let fd = port.rx_intr_enable(0).expect("rx interrupt on queue 0");
    let wait = |ms: u16| {
        let mut p = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let n = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(ms)).unwrap_or(0);
        n == 1 && nix::unistd::read(fd.as_raw_fd(), &mut [0u8; 8]) == Ok(8)
    };
    let mut rx: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    assert!(!wait(200), "no traffic, no interrupt");
    for round in 0..5u32 {
        let mut m = pool.alloc().expect("mbuf");
        assert!(m.copy_from(&frame(mac, round, 64)));
        assert_eq!(port.tx_burst(0, &mut [Some(m)]), 1);
        assert!(wait(5000), "round {round}: the queue's vector fired");
        let n = port.rx_burst(0, &mut rx);
        assert_eq!(n, 1, "round {round}: the frame is there once awake");
        pool.free_bulk(&mut rx[..n]);
    }
    port.rx_intr_disable(0).unwrap();
    let mut m = pool.alloc().expect("mbuf");
    assert!(m.copy_from(&frame(mac, 99, 64)));
    assert_eq!(port.tx_burst(0, &mut [Some(m)]), 1);
    assert!(!wait(300), "disarmed: no interrupt");
    let e = port.rx_intr_enable(2).unwrap_err();
    assert!(e.to_string().contains("receive queue 2"), "{e}");
}
