//! net_af_packet over a veth pair (each test creates its own, removed on drop): frames both ways
//! with two queue pairs in the primary and in a secondary that got the sockets over IPC.
//! Needs CAP_NET_ADMIN (skips otherwise).

mod vdev_common;

use std::time::Duration;

use lab_core::mbuf::Mbuf;
use lab_drivers::af_packet::AfPacketDriver;
use vdev_common::*;

#[test]
fn bad_keys_and_a_missing_interface_are_clear_errors() {
    let lab = Lab::new("afpkeys");
    let e = lab.probe(&AfPacketDriver, "net_af_packet0,iface=lo,qpair=2", 0, 1).err().unwrap().to_string();
    assert!(e.contains("qpair"), "{e}");
    let e = lab.probe(&AfPacketDriver, "net_af_packet0,iface=lo,qpairs=17", 0, 1).err().unwrap().to_string();
    assert!(e.contains("qpairs") && e.contains("1..=16"), "{e}");
    let e = lab.probe(&AfPacketDriver, "net_af_packet0,iface=lo,framesz=1000", 0, 1).err().unwrap().to_string();
    assert!(e.contains("framesz=1000"), "{e}");
    let e = lab.probe(&AfPacketDriver, "net_af_packet0,iface=nosuchif0", 0, 1).err().unwrap().to_string();
    assert!(e.contains("nosuchif0") && e.contains("not found"), "{e}");
    assert!(lab.rt.shm().lookup("net_af_packet_net_af_packet0").is_err(), "half-created zone left");
}

/// IPv4/UDP frames with varying source ports: the fanout hash spreads them over the queues.
fn udp_frame(seq: u64) -> Vec<u8> {
    let mut d = vec![0u8; 60];
    d[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    d[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    d[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    d[14] = 0x45;
    d[16..18].copy_from_slice(&46u16.to_be_bytes());
    d[22] = 64;
    d[23] = 17;
    d[26..30].copy_from_slice(&[10, 0, 0, 1]);
    d[30..34].copy_from_slice(&[10, 0, 0, 2]);
    d[34..36].copy_from_slice(&(1000 + seq as u16).to_be_bytes());
    d[36..38].copy_from_slice(&9u16.to_be_bytes());
    d[38..40].copy_from_slice(&26u16.to_be_bytes());
    d[42..50].copy_from_slice(&seq.to_be_bytes());
    d
}

#[test]
fn frames_cross_a_veth_pair_both_ways_with_two_queue_pairs() {
    if skip_without_net_admin("frames_cross_a_veth_pair_both_ways_with_two_queue_pairs") {
        return;
    }
    let lab = Lab::new("afpio");
    let v = Veth::new("la");
    let mut p = lab.probe(&AfPacketDriver, &format!("net_af_packet0,iface={},qpairs=2", v.a), 0, 2).unwrap();
    let raw = RawSock::bind(&v.b);
    let mut pool = lab.pool();
    // Port -> kernel, from both tx queues.
    let frames: Vec<Vec<u8>> = (0..200).map(|i| frame(i, 60 + 7 * i as usize)).collect();
    for (i, f) in frames.iter().enumerate() {
        let mut m = pool.alloc().unwrap();
        assert!(m.copy_from(f));
        let mut s = [Some(m)];
        let q = (i % 2) as u16;
        while p.tx_burst(q, &mut s) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut got = raw.recv(200, Duration::from_secs(5));
    got.sort();
    let mut want = frames.clone();
    want.sort();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.len(), &g[..22]), (w.len(), &w[..22]));
        assert!(g == w, "payload differs: {:?}", &g[..22]);
    }
    // Kernel -> port: flows spread over both rx queues.
    let mut per_q = [0usize; 2];
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    for i in 0..200 {
        raw.send(&udp_frame(i));
    }
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut seqs = Vec::new();
    while seqs.len() < 200 && std::time::Instant::now() < end {
        for q in 0..2u16 {
            let k = p.rx_burst(q, &mut burst);
            for mut m in burst[..k].iter_mut().filter_map(Option::take) {
                assert!(m.hdr_mut().timestamp > 0);
                let d = m.data();
                if d.len() >= 50 && d[12..14] == [8, 0] && d[23] == 17 {
                    seqs.push(u64::from_be_bytes(d[42..50].try_into().unwrap()));
                    per_q[q as usize] += 1;
                }
            }
        }
    }
    seqs.sort();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    assert!(per_q[0] > 0 && per_q[1] > 0, "fanout used one queue only: {per_q:?}");
    // A VLAN-tagged frame arrives with its tag where it was, even if the kernel took it out.
    let mut tagged = frame(7, 80);
    tagged.splice(12..12, [0x81, 0x00, 0x20, 0x05]);
    raw.send(&tagged);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut found = None;
    while found.is_none() && std::time::Instant::now() < end {
        for q in 0..2u16 {
            let k = p.rx_burst(q, &mut burst);
            for m in burst[..k].iter_mut().filter_map(Option::take) {
                if m.data().get(12..14) == Some(&[0x81, 0x00][..]) {
                    found = Some(m.data().to_vec());
                }
            }
        }
    }
    assert_eq!(found.as_deref(), Some(&tagged[..]));
    close(p);
}

#[test]
fn a_secondary_maps_the_rings_of_sockets_it_got_over_ipc() {
    if skip_without_net_admin("a_secondary_maps_the_rings_of_sockets_it_got_over_ipc") {
        return;
    }
    let lab = Lab::new("afpsec");
    let v = Veth::new("la");
    let dev = format!("net_af_packet1,iface={},qpairs=2", v.a);
    let mut p = lab.probe(&AfPacketDriver, &dev, 2, 2).unwrap();
    let raw = RawSock::bind(&v.b);
    // The primary uses the rings first, so the secondary must pick up where it left them.
    let mut pool = lab.pool();
    let frames: Vec<Vec<u8>> = (0..30).map(|i| frame(i, 100)).collect();
    assert_eq!(send_all(p.as_mut(), &mut pool, &frames), 30);
    assert_eq!(raw.recv(30, Duration::from_secs(5)).len(), 30);
    for f in &frames {
        raw.send(f);
    }
    assert_eq!(recv_frames(p.as_mut(), 30, Duration::from_secs(5)).len(), 30);

    let mut peer = lab.peer(2, &dev, 2);
    let ans = peer.cmd("tx 300 200");
    assert_eq!(field(&ans, "pkts"), 300, "{ans}");
    assert_eq!(raw.recv(300, Duration::from_secs(5)).len(), 300);
    peer.send("rx 300 10000");
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..300 {
        raw.send(&frame(i, 90));
    }
    let ans = peer.line();
    assert!(field(&ans, "pkts") >= 300, "{ans}");
    assert_eq!(peer.cmd("close"), "closed");
    peer.quit();
    // And back in the primary, after the secondary moved the rings on.
    for f in &frames {
        raw.send(f);
    }
    assert_eq!(recv_frames(p.as_mut(), 30, Duration::from_secs(5)).len(), 30);
    close(p);
}

#[test]
fn twenty_attach_detach_cycles_leak_no_fd_and_no_zone() {
    if skip_without_net_admin("twenty_attach_detach_cycles_leak_no_fd_and_no_zone") {
        return;
    }
    let lab = Lab::new("afpcycles");
    let v = Veth::new("la");
    let dev = format!("net_af_packet2,iface={},qpairs=2", v.a);
    let p = lab.probe(&AfPacketDriver, &dev, 0, 2).unwrap();
    close(p);
    let fds = fd_count();
    let zones = lab.rt.shm().zones().len();
    for _ in 0..20 {
        let p = lab.probe(&AfPacketDriver, &dev, 0, 2).unwrap();
        let mut peer = lab.peer(0, &dev, 2);
        let before = field(&peer.cmd("fds"), "fds");
        let l1 = peer.cmd("fdlist");
        assert_eq!(peer.cmd("close"), "closed");
        let l2 = peer.cmd("fdlist");
        assert_eq!(field(&peer.cmd("fds"), "fds"), before - 2, "{l1}\n{l2}");
        peer.quit();
        close(p);
    }
    assert_eq!(fd_count(), fds);
    assert_eq!(lab.rt.shm().zones().len(), zones);
}
