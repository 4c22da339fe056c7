//! net_ring: ports over shared-memory rings, within one process and between two.

mod vdev_common;

use std::time::Duration;

use lab_drivers::ring::{zone_name, RingDriver};
use vdev_common::*;

#[test]
fn a_port_without_peer_receives_what_it_sends() {
    let lab = Lab::new("ringself");
    let mut p = lab.probe(&RingDriver, "net_ring0", 0, 1).unwrap();
    let mut pool = lab.pool();
    let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(i, 60 + i as usize)).collect();
    assert_eq!(send_all(p.as_mut(), &mut pool, &frames), 100);
    assert_eq!(recv_frames(p.as_mut(), 100, Duration::from_secs(1)), frames);
    let s = p.stats();
    assert_eq!((s.ipackets, s.opackets, s.ibytes, s.obytes), (100, 100, s.obytes, s.ibytes));
    close(p);
    assert!(lab.rt.shm().lookup(&zone_name("net_ring0", 0)).is_err(), "zone left after close(Shared)");
}

#[test]
fn unknown_keys_are_refused_with_the_key_named() {
    let lab = Lab::new("ringkeys");
    let e = lab.probe(&RingDriver, "net_ring0,nodes=3", 0, 1).err().unwrap().to_string();
    assert!(e.contains("nodes"), "{e}");
    let e = lab.probe(&RingDriver, "net_ring0,peer=net_tap0", 0, 1).err().unwrap().to_string();
    assert!(e.contains("net_tap0"), "{e}");
    assert!(lab.rt.shm().lookup(&zone_name("net_ring0", 0)).is_err(), "half-created zone left");
}

#[test]
fn two_processes_exchange_a_million_packets_both_ways() {
    let lab = Lab::new("ringxproc");
    let mut a = lab.probe(&RingDriver, "net_ring0,peer=net_ring1", 0, 1).unwrap();
    let mut b_local = lab.probe(&RingDriver, "net_ring1,peer=net_ring0", 1, 1).unwrap();
    let mut peer = lab.peer(1, "net_ring1,peer=net_ring0", 1);
    let mut pool = lab.pool();
    const N: u64 = 1_000_000;

    // Primary -> secondary.
    peer.send(&format!("rx {N} 60000"));
    let (sent, bytes) = blast(a.as_mut(), &mut pool, N);
    let ans = peer.line();
    assert_eq!((field(&ans, "pkts"), field(&ans, "bytes")), (sent, bytes), "{ans}");
    assert_eq!(sent, N);

    // Secondary -> primary.
    peer.send(&format!("tx {N} 64"));
    let (got, gbytes) = drain(a.as_mut(), N);
    let ans = peer.line();
    assert_eq!((field(&ans, "pkts"), field(&ans, "bytes")), (got, gbytes), "{ans}");
    assert_eq!(got, N);

    // Every buffer came back to the pool (the primary's and the secondary's caches flushed).
    peer.cmd("close");
    peer.quit();
    drop(pool);
    let s = b_local.stats();
    assert_eq!(s.ipackets, 0);
    close(b_local);
    close(a);
    assert_eq!(lab.pool.avail_count(), 4096);
}

/// Sends n 64..=127-byte packets on queue 0. (packets, bytes)
fn blast(p: &mut dyn lab_core::ethdev::EthDev, pool: &mut lab_core::mbuf::Mempool, n: u64) -> (u64, u64) {
    let mut burst: Vec<Option<lab_core::mbuf::Mbuf>> = (0..32).map(|_| None).collect();
    let (mut sent, mut bytes) = (0u64, 0u64);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while sent < n && std::time::Instant::now() < end {
        let k = ((n - sent) as usize).min(32);
        if !pool.alloc_bulk(&mut burst[..k]) {
            std::thread::yield_now();
            continue;
        }
        let mut lens = [0u64; 32];
        for (i, m) in burst[..k].iter_mut().flatten().enumerate() {
            m.set_len(64 + ((sent as usize + i) % 64));
            lens[i] = m.len() as u64;
        }
        let mut done = 0;
        while done < k {
            let t = lab_drivers_tx(p, &mut burst[done..k]);
            done += t;
            if t == 0 {
                std::thread::yield_now();
            }
        }
        sent += k as u64;
        bytes += lens[..k].iter().sum::<u64>();
    }
    (sent, bytes)
}

fn lab_drivers_tx(p: &mut dyn lab_core::ethdev::EthDev, s: &mut [Option<lab_core::mbuf::Mbuf>]) -> usize {
    p.tx_burst(0, s)
}

fn drain(p: &mut dyn lab_core::ethdev::EthDev, n: u64) -> (u64, u64) {
    let mut burst: Vec<Option<lab_core::mbuf::Mbuf>> = (0..32).map(|_| None).collect();
    let (mut got, mut bytes) = (0u64, 0u64);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while got < n && std::time::Instant::now() < end {
        let k = p.rx_burst(0, &mut burst);
        for m in burst[..k].iter_mut().filter_map(Option::take) {
            bytes += m.len() as u64;
        }
        got += k as u64;
    }
    (got, bytes)
}

#[test]
fn twenty_probe_close_cycles_leak_nothing() {
    let lab = Lab::new("ringcycles");
    let before_zones = lab.rt.shm().zones().len();
    let fds = fd_count();
    for _ in 0..20 {
        let p = lab.probe(&RingDriver, "net_ring7", 0, 2).unwrap();
        let mut peer = lab.peer(0, "net_ring7", 2);
        assert_eq!(peer.cmd("close"), "closed");
        peer.quit();
        close(p);
    }
    assert_eq!(lab.rt.shm().zones().len(), before_zones);
    assert_eq!(fd_count(), fds);
}

#[test]
fn a_secondary_finds_the_primary_rings_and_its_close_frees_nothing() {
    let lab = Lab::new("ringsec");
    // Not attached in the primary: the secondary's probe fails, naming the ring it looked for.
    let err = Peer::spawn(&lab.prefix, 0, "net_ring5", 1).err().unwrap();
    assert!(err.contains("net_ring_net_ring5_q0") && err.contains("primary"), "{err}");
    let mut p = lab.probe(&RingDriver, "net_ring5", 0, 1).unwrap();
    let zones = lab.rt.shm().zones().len();
    let mut peer = lab.peer(0, "net_ring5", 1);
    assert_eq!(field(&peer.cmd("tx 10 100"), "pkts"), 10);
    assert_eq!(peer.cmd("close"), "closed");
    peer.quit();
    assert_eq!(lab.rt.shm().zones().len(), zones, "close(Local) in a secondary freed shared zones");
    // What the secondary sent is still there for the primary.
    assert_eq!(recv_frames(p.as_mut(), 10, Duration::from_secs(1)).len(), 10);
    close(p);
    assert_eq!(lab.rt.shm().zones().len(), zones - 1);
}
