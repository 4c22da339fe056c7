//! net_pcap: captures written by tx and read back by an independent reader (a few lines here that
//! follow the file format, and tshark when installed), rx replays of pcap and pcapng files,
//! truncated files, a secondary, and a live interface over a veth pair.

mod vdev_common;

use std::path::Path;
use std::time::Duration;

use lab_core::mbuf::Mbuf;
use lab_drivers::pcap::{tx_path, PcapDriver};
use vdev_common::*;

/// One record: (ts_ns, caplen, origlen, bytes).
type Record = (u64, u32, u32, Vec<u8>);

/// Classic pcap reader written from the format description, independent of the driver:
/// (magic, linktype, records of (ts_ns, caplen, origlen, bytes)).
fn read_pcap(p: &Path) -> (u32, u32, Vec<Record>) {
    let b = std::fs::read(p).unwrap();
    let u32le = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let magic = u32le(0);
    assert!(magic == 0xa1b2_3c4d || magic == 0xa1b2_c3d4, "magic {magic:#x}");
    let ns = magic == 0xa1b2_3c4d;
    let link = u32le(20);
    let mut o = 24;
    let mut recs = Vec::new();
    while o < b.len() {
        let (s, f, cap, orig) = (u32le(o), u32le(o + 4), u32le(o + 8), u32le(o + 12));
        let ts = s as u64 * 1_000_000_000 + if ns { f as u64 } else { f as u64 * 1000 };
        recs.push((ts, cap, orig, b[o + 16..o + 16 + cap as usize].to_vec()));
        o += 16 + cap as usize;
    }
    (magic, link, recs)
}

/// A microsecond classic pcap file, written by hand.
fn write_pcap(p: &Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    for v in [0xa1b2_c3d4u32.to_le_bytes().to_vec(), 2u16.to_le_bytes().to_vec(), 4u16.to_le_bytes().to_vec()] {
        b.extend(v);
    }
    b.extend([0u8; 8]);
    b.extend(65535u32.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        b.extend((1_700_000_000u32 + i as u32).to_le_bytes());
        b.extend((i as u32 * 10).to_le_bytes());
        b.extend((f.len() as u32).to_le_bytes());
        b.extend((f.len() as u32).to_le_bytes());
        b.extend(f);
    }
    std::fs::write(p, b).unwrap();
}

/// A little-endian pcapng file: SHB, IDB (Ethernet, default microseconds), one EPB per frame.
fn write_pcapng(p: &Path, frames: &[Vec<u8>]) {
    fn block(t: u32, body: &[u8]) -> Vec<u8> {
        let len = 12 + body.len().div_ceil(4) * 4;
        let mut v = Vec::new();
        v.extend(t.to_le_bytes());
        v.extend((len as u32).to_le_bytes());
        v.extend(body);
        v.resize(len - 4, 0);
        v.extend((len as u32).to_le_bytes());
        v
    }
    let mut shb = Vec::new();
    shb.extend(0x1a2b_3c4du32.to_le_bytes());
    shb.extend(1u16.to_le_bytes());
    shb.extend(0u16.to_le_bytes());
    shb.extend((-1i64).to_le_bytes());
    let mut idb = Vec::new();
    idb.extend(1u16.to_le_bytes());
    idb.extend(0u16.to_le_bytes());
    idb.extend(65535u32.to_le_bytes());
    let mut b = block(0x0a0d_0d0a, &shb);
    b.extend(block(1, &idb));
    for (i, f) in frames.iter().enumerate() {
        let ts: u64 = 1_700_000_000_000_000 + i as u64;
        let mut e = Vec::new();
        e.extend(0u32.to_le_bytes());
        e.extend(((ts >> 32) as u32).to_le_bytes());
        e.extend((ts as u32).to_le_bytes());
        e.extend((f.len() as u32).to_le_bytes());
        e.extend((f.len() as u32).to_le_bytes());
        e.extend(f);
        e.resize(20 + f.len().div_ceil(4) * 4, 0);
        b.extend(block(6, &e));
    }
    std::fs::write(p, b).unwrap();
}

fn rx_all(p: &mut dyn lab_core::ethdev::EthDev, limit: usize) -> Vec<(Vec<u8>, u64)> {
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut out = Vec::new();
    loop {
        let k = p.rx_burst(0, &mut burst);
        if k == 0 || out.len() >= limit {
            break;
        }
        for mut m in burst[..k].iter_mut().filter_map(Option::take) {
            let ts = m.hdr_mut().timestamp;
            out.push((m.data().to_vec(), ts));
        }
    }
    out
}

#[test]
fn a_capture_written_by_tx_reads_back_equal_with_timestamps_and_lengths() {
    let lab = Lab::new("pcaptx");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.pcap");
    let mut p = lab.probe(&PcapDriver, &format!("net_pcap0,tx_pcap={}", file.display()), 0, 1).unwrap();
    let mut pool = lab.pool();
    let frames: Vec<Vec<u8>> = (0..300).map(|i| frame(i, 60 + (i as usize * 37) % 1400)).collect();
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    // One frame carries its own timestamp: it must be written as given.
    let mut m = pool.alloc().unwrap();
    m.copy_from(&frames[0]);
    m.hdr_mut().timestamp = 1_234_567_890_123_456_789;
    assert_eq!(p.tx_burst(0, &mut [Some(m)]), 1);
    assert_eq!(send_all(p.as_mut(), &mut pool, &frames[1..]), 299);
    let t1 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    // Records are on disk after each burst, before close.
    assert_eq!(read_pcap(&file).2.len(), 300);
    close(p);
    let (magic, link, recs) = read_pcap(&file);
    assert_eq!((magic, link), (0xa1b2_3c4d, 1));
    assert_eq!(recs.len(), 300);
    assert_eq!(recs[0].0, 1_234_567_890_123_456_789);
    for (r, f) in recs.iter().zip(&frames) {
        assert_eq!((r.1 as usize, r.2 as usize, &r.3), (f.len(), f.len(), f));
    }
    assert!(recs[1..].iter().all(|r| r.0 >= t0 && r.0 <= t1), "timestamps outside the send window");
    // tshark, when installed, agrees on the count and the lengths.
    if let Ok(o) =
        std::process::Command::new("tshark").args(["-r"]).arg(&file).args(["-T", "fields", "-e", "frame.len"]).output()
    {
        if o.status.success() {
            let lens: Vec<usize> =
                String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
            assert_eq!(lens, frames.iter().map(Vec::len).collect::<Vec<_>>());
        }
    }
}

#[test]
fn rx_replays_every_frame_of_pcap_and_pcapng_then_nothing_or_loops() {
    let lab = Lab::new("pcaprx");
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(i, 60 + i as usize * 9)).collect();
    let classic = dir.path().join("in.pcap");
    let ng = dir.path().join("in.pcapng");
    write_pcap(&classic, &frames);
    write_pcapng(&ng, &frames);
    for (f, ts0) in [(&classic, 1_700_000_000_000_000_000u64), (&ng, 1_700_000_000_000_000_000u64)] {
        let mut p = lab.probe(&PcapDriver, &format!("net_pcap1,rx_pcap={}", f.display()), 0, 1).unwrap();
        let got = rx_all(p.as_mut(), 1000);
        assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), frames, "{}", f.display());
        assert_eq!(got[0].1, ts0, "{}", f.display());
        assert_eq!(rx_all(p.as_mut(), 10).len(), 0);
        assert_eq!(p.stats().ipackets, 100);
        close(p);
    }
    let mut p = lab.probe(&PcapDriver, &format!("net_pcap1,rx_pcap={},infinite_rx=1", ng.display()), 0, 1).unwrap();
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut seen = Vec::new();
    while seen.len() < 350 {
        let k = p.rx_burst(0, &mut burst);
        assert!(k > 0);
        seen.extend(burst[..k].iter_mut().filter_map(Option::take).map(|m| m.data().to_vec()));
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, &frames[i % 100]);
    }
    close(p);
}

#[test]
fn truncated_corrupt_and_missing_files_are_errors_naming_file_and_offset() {
    let lab = Lab::new("pcapbad");
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<Vec<u8>> = (0..10).map(|i| frame(i, 100)).collect();
    let f = dir.path().join("cut.pcap");
    write_pcap(&f, &frames);
    let full = std::fs::read(&f).unwrap();
    // Cut inside the 6th record's data: the record starts at 24 + 5 * 116.
    std::fs::write(&f, &full[..24 + 5 * 116 + 40]).unwrap();
    let out = dir.path().join("never.pcap");
    let dev = format!("net_pcap2,rx_pcap={},tx_pcap={}", f.display(), out.display());
    let e = lab.probe(&PcapDriver, &dev, 0, 1).err().unwrap().to_string();
    assert!(e.contains(&f.display().to_string()) && e.contains("offset 604"), "{e}");
    assert!(!out.exists(), "a tx capture was created by a probe that failed");
    // A record whose length is impossible (larger than the snaplen).
    let mut bad = full.clone();
    bad[24 + 116 + 8..24 + 116 + 12].copy_from_slice(&100_000u32.to_le_bytes());
    std::fs::write(&f, &bad).unwrap();
    let e = lab.probe(&PcapDriver, &dev, 0, 1).err().unwrap().to_string();
    assert!(e.contains("offset 140"), "{e}");
    // pcapng cut inside a block.
    let ng = dir.path().join("cut.pcapng");
    write_pcapng(&ng, &frames);
    let b = std::fs::read(&ng).unwrap();
    std::fs::write(&ng, &b[..b.len() - 10]).unwrap();
    let e = lab.probe(&PcapDriver, &format!("net_pcap2,rx_pcap={}", ng.display()), 0, 1).err().unwrap().to_string();
    assert!(e.contains("cut.pcapng") && e.contains("offset"), "{e}");
    let e = lab.probe(&PcapDriver, "net_pcap2,rx_pcap=/nonexistent/x.pcap", 0, 1).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/x.pcap"), "{e}");
    let e = lab.probe(&PcapDriver, "net_pcap2,rx_pcap=/dev/null,rx_file=1", 0, 1).err().unwrap().to_string();
    assert!(e.contains("rx_file"), "{e}");
    let e = lab.probe(&PcapDriver, "net_pcap2,tx_pcap=/nonexistent/dir/o.pcap", 0, 1).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/dir/o.pcap"), "{e}");
}

#[test]
fn a_secondary_replays_rx_pcap_and_writes_its_own_capture() {
    let lab = Lab::new("pcapsec");
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(i, 70)).collect();
    let inp = dir.path().join("in.pcap");
    write_pcap(&inp, &frames);
    let out = dir.path().join("out.pcap");
    let dev = format!("net_pcap3,rx_pcap={},tx_pcap={}", inp.display(), out.display());
    let p = lab.probe(&PcapDriver, &dev, 0, 1).unwrap();
    let mut peer = lab.peer(0, &dev, 1);
    let ans = peer.cmd("rx 40 2000");
    assert_eq!((field(&ans, "pkts"), field(&ans, "bytes")), (40, 40 * 70), "{ans}");
    let ans = peer.cmd("tx 25 90");
    assert_eq!(field(&ans, "pkts"), 25, "{ans}");
    let pid = peer.pid();
    assert_eq!(peer.cmd("close"), "closed");
    peer.quit();
    close(p);
    // The secondary's capture is FILE.<its pid>; tx_path says so for this process.
    assert_eq!(tx_path("f", false), Path::new(&format!("f.{}", std::process::id())));
    let theirs = format!("{}.{pid}", out.display());
    let (_, _, recs) = read_pcap(Path::new(&theirs));
    assert_eq!(recs.len(), 25);
    assert!(recs.iter().all(|r| r.1 == 90 && r.2 == 90));
    assert_eq!(read_pcap(&out).2.len(), 0, "the primary's capture holds only what the primary sent");
}

#[test]
fn a_live_interface_sends_and_receives_over_a_veth_pair() {
    if skip_without_net_admin("a_live_interface_sends_and_receives_over_a_veth_pair") {
        return;
    }
    let lab = Lab::new("pcaplive");
    let v = Veth::new("lc");
    let dev = format!("net_pcap4,iface={}", v.a);
    let mut p = lab.probe(&PcapDriver, &dev, 0, 1).unwrap();
    let raw = RawSock::bind(&v.b);
    let mut pool = lab.pool();
    let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(i, 64 + i as usize)).collect();
    assert_eq!(send_all(p.as_mut(), &mut pool, &frames), 100);
    assert_eq!(raw.recv(100, Duration::from_secs(5)), frames);
    for f in &frames {
        raw.send(f);
    }
    assert_eq!(recv_frames(p.as_mut(), 100, Duration::from_secs(5)), frames);
    // The same from a secondary that got the sockets over IPC.
    let mut peer = lab.peer(0, &dev, 1);
    assert_eq!(field(&peer.cmd("tx 50 100"), "pkts"), 50);
    assert_eq!(raw.recv(50, Duration::from_secs(5)).len(), 50);
    peer.send("rx 50 5000");
    std::thread::sleep(Duration::from_millis(50));
    for f in &frames[..50] {
        raw.send(f);
    }
    assert!(field(&peer.line(), "pkts") >= 50);
    assert_eq!(peer.cmd("close"), "closed");
    peer.quit();
    close(p);
}

#[test]
fn twenty_probe_close_cycles_leak_no_fd() {
    let lab = Lab::new("pcapcycles");
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.pcap");
    write_pcap(&inp, &[frame(1, 60)]);
    let dev = format!("net_pcap5,rx_pcap={},tx_pcap={}", inp.display(), dir.path().join("o.pcap").display());
    let p = lab.probe(&PcapDriver, &dev, 0, 1).unwrap();
    close(p);
    let fds = fd_count();
    for _ in 0..20 {
        let p = lab.probe(&PcapDriver, &dev, 0, 1).unwrap();
        let mut peer = lab.peer(0, &dev, 1);
        assert_eq!(peer.cmd("close"), "closed");
        peer.quit();
        close(p);
    }
    assert_eq!(fd_count(), fds);
}
