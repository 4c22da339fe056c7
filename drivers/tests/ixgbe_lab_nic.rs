//! net_ixgbe against a real `lab-nic` process: bring-up, MAC, loopback traffic byte for byte, two
//! cabled functions, a bad descriptor recorded as a device fault, and repeated detach/probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lab_core::bus::pci::scan_one;
use lab_core::devargs::Devargs;
use lab_core::ethdev::{Driver, EthDev, PortConf, PortId, ProbeCtx, Release};
use lab_core::mbuf::Mbuf;
use lab_core::mem::{ShmOffset, IOVA_BASE};
use lab_core::vfio::{open_pci, Bar, OpenOptions};
use lab_drivers::ixgbe::{regs, IxgbeDriver};

const BDF: &str = "0000:00:05.0";
const BDF2: &str = "0000:00:06.0";

mod nic_common;
use nic_common::{frame, pump, queue_start_stop, sizes, wait_link, Lab, LabNic};

/// Frames in flight at most in `pump`.
const WINDOW: usize = 96;

/// This file's probes go to the ixgbe driver.
trait IxgbeLab {
    fn probe(&self, nic: &LabNic, bdf: &str, port: u16) -> Box<dyn EthDev>;
    fn probe_with(&self, nic: &LabNic, bdf: &str, port: u16, conf: &PortConf) -> Box<dyn EthDev>;
}

impl IxgbeLab for Lab {
    fn probe(&self, nic: &LabNic, bdf: &str, port: u16) -> Box<dyn EthDev> {
        self.probe_conf(&IxgbeDriver, nic, bdf, port, &PortConf::default())
    }
    fn probe_with(&self, nic: &LabNic, bdf: &str, port: u16, conf: &PortConf) -> Box<dyn EthDev> {
        self.probe_conf(&IxgbeDriver, nic, bdf, port, conf)
    }
}

#[test]
fn loopback_delivers_ten_thousand_mixed_frames_in_order_and_counts_them() {
    let mut lab = Lab::new("ixgbe-loop");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback,mac=02:11:22:33:44:55")]);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    let link = port.link();
    assert_eq!(link.speed_mbps, 10_000);
    let info = port.info();
    assert_eq!(info.mac, [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    assert_eq!((info.driver, info.nb_rxq, info.nb_txq, info.mtu), ("net_ixgbe", 1, 1, 1500));

    port.stats_reset();
    let lens = sizes(10_000);
    pump(&mut lab.pool, port.as_mut(), &mut None, info.mac, &lens, WINDOW);
    let total: u64 = lens.iter().map(|l| *l as u64).sum();
    let s = port.stats();
    assert_eq!((s.opackets, s.ipackets), (10_000, 10_000), "{s:?}");
    assert_eq!((s.obytes, s.ibytes), (total, total), "{s:?}");
    assert_eq!((s.imissed, s.ierrors, s.oerrors, s.rx_nombuf), (0, 0, 0, 0), "{s:?}");

    // Promiscuous off: a frame to another unicast address is filtered; on: it arrives.
    let other = [0x02, 0x99, 0, 0, 0, 1];
    pump(&mut lab.pool, port.as_mut(), &mut None, info.mac, &[64], WINDOW);
    port.set_promisc(true).expect("promisc");
    pump(&mut lab.pool, port.as_mut(), &mut None, other, &[64, 128], WINDOW);
    port.set_promisc(false).expect("promisc off");
    assert!(port.set_mtu(9000).is_err(), "9000 does not fit a 2 KiB buffer");
    port.set_mtu(1400).expect("mtu");
    assert_eq!(port.info().mtu, 1400);
    port.close(Release::Shared);
}

#[test]
fn two_cabled_functions_pass_traffic_both_ways() {
    let mut lab = Lab::new("ixgbe-peer");
    let nic = LabNic::start(&[
        &format!("{BDF},model=ixgbe,peer={BDF2},mac=02:00:00:00:05:00"),
        &format!("{BDF2},model=ixgbe,mac=02:00:00:00:06:00"),
    ]);
    let mut a = lab.probe(&nic, BDF, 0);
    let mut b = lab.probe(&nic, BDF2, 1);
    wait_link(a.as_mut());
    wait_link(b.as_mut());
    let (ma, mb) = (a.info().mac, b.info().mac);
    assert_eq!(ma, [2, 0, 0, 0, 5, 0]);
    assert_eq!(mb, [2, 0, 0, 0, 6, 0]);
    let lens = sizes(2_000);
    pump(&mut lab.pool, a.as_mut(), &mut Some(b.as_mut()), mb, &lens, WINDOW);
    pump(&mut lab.pool, b.as_mut(), &mut Some(a.as_mut()), ma, &lens, WINDOW);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.opackets, sa.ipackets, sb.opackets, sb.ipackets), (2_000, 2_000, 2_000, 2_000));
    a.close(Release::Shared);
    b.close(Release::Shared);
}

#[test]
fn a_descriptor_outside_the_dma_map_is_a_recorded_fault_and_the_device_keeps_serving() {
    let mut lab = Lab::new("ixgbe-fault");
    let mut nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    let mac = port.info().mac;
    pump(&mut lab.pool, port.as_mut(), &mut None, mac, &[60, 1000], WINDOW);
    assert!(nic.command(&format!("faults {BDF}")).starts_with("ok count=0"));

    // By hand, over a connection of our own: one TX descriptor whose buffer lies outside any DMA
    // map, then the doorbell.
    let dev: Arc<dyn lab_core::vfio::DeviceIo> =
        Arc::from(open_pci(&nic.dir(BDF), &OpenOptions::default()).expect("own connection"));
    let bar = Bar::open(dev, 0).expect("bar0");
    let t = bar.read32(regs::tdt(0));
    let base = u64::from(bar.read32(regs::tdbal(0))) | u64::from(bar.read32(regs::tdbah(0))) << 32;
    let n = bar.read32(regs::tdlen(0)) / 16;
    assert!(t < n && base >= IOVA_BASE);
    let off = ShmOffset(base - IOVA_BASE + u64::from(t) * 16);
    let cmd =
        64 | regs::TXD_DTYP_DATA | regs::TXD_DCMD_EOP | regs::TXD_DCMD_IFCS | regs::TXD_DCMD_RS | regs::TXD_DCMD_DEXT;
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&0x7f00_dead_0000u64.to_le_bytes());
    d[8..12].copy_from_slice(&cmd.to_le_bytes());
    d[12..16].copy_from_slice(&(64u32 << regs::TXD_PAYLEN_SHIFT).to_le_bytes());
    assert!(lab.rt.shm().write_at(off, &d));
    bar.write32(regs::tdt(0), (t + 1) % n);

    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let r = nic.command(&format!("faults {BDF}"));
        if !r.starts_with("ok count=0") {
            break r;
        }
        assert!(Instant::now() < deadline, "no fault recorded: {r}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(reply.contains("tx buffer read"), "{reply}");
    assert!(nic.alive(), "lab-nic died on a bad descriptor");
    drop(bar);

    // The device keeps serving: release, probe again, traffic flows.
    port.close(Release::Shared);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    pump(&mut lab.pool, port.as_mut(), &mut None, mac, &sizes(500), WINDOW);
    port.close(Release::Shared);
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn detach_and_probe_again_twenty_times_leaks_no_fd() {
    let mut lab = Lab::new("ixgbe-cycle");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let zones_before = lab.rt.shm().zones().len();
    // One cycle first: lazily created process-wide things (logging, thread pools) settle.
    lab.probe(&nic, BDF, 0).close(Release::Shared);
    let before = fd_count();
    let avail = lab.pool.avail_count();
    for i in 0..20 {
        let mut port = lab.probe(&nic, BDF, 0);
        wait_link(port.as_mut());
        let mac = port.info().mac;
        pump(&mut lab.pool, port.as_mut(), &mut None, mac, &[60 + i, 1514], WINDOW);
        port.close(Release::Shared);
    }
    // The tests of this binary run one at a time (Lab holds a lock), so the count is exact.
    let after = fd_count();
    assert!(after <= before, "fds grew from {before} to {after} over 20 cycles");
    assert_eq!(lab.rt.shm().zones().len(), zones_before, "ring memzones freed at release");
    assert_eq!(lab.pool.avail_count(), avail, "every posted buffer back in the pool");
}

/// Steady traffic for a while with `ring` descriptors and `window` frames in flight; every frame
/// must come back, no fault, no error.
fn sustained(prefix: &str, ring: u16, window: usize, secs: u64) {
    let lab = Lab::new(prefix);
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let pci = scan_one(&nic.dir(BDF)).expect("scan");
    let devargs = Devargs::parse(&format!("{BDF},promisc=1")).expect("devargs");
    let drv = IxgbeDriver;
    let kvargs = devargs.validate(drv.name(), drv.keys()).expect("kvargs");
    let conf = PortConf { nb_desc: ring, ..PortConf::default() };
    let ctx = ProbeCtx {
        runtime: &lab.rt,
        port: PortId(0),
        name: BDF,
        devargs: &devargs,
        kvargs: &kvargs,
        pci: Some(&pci),
        conf: &conf,
        ports: None,
    };
    let mut port = drv.probe(&ctx).expect("probe");
    wait_link(port.as_mut());
    let mut pool = lab.pool.new_handle();
    let mut txb: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut rxb: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let (mut in_flight, mut sent, mut got) = (0usize, 0u64, 0u64);
    let mut last = Instant::now();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        assert!(pool.alloc_bulk(&mut txb));
        for m in txb.iter_mut().flatten() {
            m.set_len(60);
        }
        let mut off = 0;
        while off < 32 {
            off += port.tx_burst(0, &mut txb[off..]);
        }
        in_flight += 32;
        sent += 32;
        while in_flight > window - 32 {
            let n = port.rx_burst(0, &mut rxb);
            in_flight -= n;
            got += n as u64;
            pool.free_bulk(&mut rxb[..n]);
            if n > 0 {
                last = Instant::now();
            }
            assert!(
                last.elapsed() < Duration::from_secs(2),
                "stalled after {got} of {sent}: {:?}; {}",
                port.stats(),
                nic.command(&format!("faults {BDF}"))
            );
        }
    }
    while in_flight > 0 && last.elapsed() < Duration::from_secs(2) {
        let n = port.rx_burst(0, &mut rxb);
        in_flight -= n;
        got += n as u64;
        pool.free_bulk(&mut rxb[..n]);
        if n > 0 {
            last = Instant::now();
        }
    }
    let s = port.stats();
    assert_eq!((got, s.ipackets, s.opackets, s.ierrors, s.imissed), (sent, sent, sent, 0, 0), "{s:?}");
    assert!(nic.command(&format!("faults {BDF}")).starts_with("ok count=0"));
    port.close(Release::Shared);
}

#[test]
fn sustained_loopback_traffic_comes_back_without_loss_or_fault() {
    sustained("ixgbe-sustained", 256, 192, 2);
}

/// Rings over 256 descriptors under load: a tail crossing a 256 boundary must be read whole by
/// the device (lab-nic reads doorbells as one 32-bit Acquire load).
#[test]
fn sustained_loopback_traffic_with_a_1024_ring() {
    sustained("ixgbe-sustained-1k", 1024, 512, 3);
}

#[test]
fn surprise_unplug_is_seen_and_release_does_not_hang() {
    let mut lab = Lab::new("ixgbe-unplug");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    let mac = port.info().mac;
    pump(&mut lab.pool, port.as_mut(), &mut None, mac, &[60, 600], WINDOW);
    assert!(!port.is_removed());
    assert!(nic.command(&format!("unplug {BDF}")).starts_with("ok"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !port.is_removed() {
        assert!(Instant::now() < deadline, "unplug not noticed");
        // A register access finds the connection closed.
        let _ = port.link();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!port.link().up, "a gone device has no link");
    // The data path keeps working on memory only: nothing arrives, nothing panics.
    let mut rx: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    assert_eq!(port.rx_burst(0, &mut rx), 0);
    nic_common::returns("release of an unplugged port", move || port.close(Release::Shared));
}

#[test]
fn every_transmit_queue_is_programmed_and_sends() {
    let mut lab = Lab::new("ixgbe-queues");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let conf = PortConf { nb_rxq: 4, nb_txq: 4, nb_desc: 128, ..PortConf::default() };
    let mut port = lab.probe_with(&nic, BDF, 0, &conf);
    wait_link(port.as_mut());
    let info = port.info();
    assert_eq!((info.nb_rxq, info.nb_txq), (4, 4));
    // Without RSS (the configuration's `rss` None) every frame lands on RX queue 0, whichever TX
    // queue sent it.
    let mut rx: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    for q in 0..4u16 {
        let mut tx: Vec<Option<Mbuf>> = (0..8).map(|_| None).collect();
        for (k, slot) in tx.iter_mut().enumerate() {
            let mut m = lab.pool.alloc().expect("mbuf");
            assert!(m.copy_from(&frame(info.mac, u32::from(q) * 100 + k as u32, 60 + usize::from(q))));
            *slot = Some(m);
        }
        assert_eq!(port.tx_burst(q, &mut tx), 8, "queue {q}");
        let (mut got, deadline) = (0, Instant::now() + Duration::from_secs(5));
        while got < 8 {
            assert!(Instant::now() < deadline, "queue {q}: {got} of 8 back");
            let n = port.rx_burst(0, &mut rx);
            for m in rx[..n].iter_mut().filter_map(Option::take) {
                assert_eq!(m.len(), 60 + usize::from(q));
                lab.pool.free(m);
                got += 1;
            }
        }
    }
    let mut one = vec![lab.pool.alloc()];
    assert_eq!(port.tx_burst(4, &mut one), 0, "there is no queue 4");
    assert!(one[0].is_some(), "the caller keeps the packet");
    lab.pool.free_bulk(&mut one);
    let bad = PortConf { nb_desc: 100, ..PortConf::default() };
    let pci = scan_one(&nic.dir(BDF)).expect("scan");
    let devargs = Devargs::parse(BDF).expect("devargs");
    let kvargs = devargs.validate("net_ixgbe", IxgbeDriver.keys()).expect("kvargs");
    let ctx = ProbeCtx {
        runtime: &lab.rt,
        port: PortId(1),
        name: BDF,
        devargs: &devargs,
        kvargs: &kvargs,
        pci: Some(&pci),
        conf: &bad,
        ports: None,
    };
    let e = IxgbeDriver.probe(&ctx).err().expect("100 descriptors refused");
    assert!(e.to_string().contains("multiple of 32"), "{e}");
    port.close(Release::Shared);
}

#[test]
fn rxd_and_txd_devargs_size_the_rings() {
    let mut lab = Lab::new("ixgbe-rings");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let pci = scan_one(&nic.dir(BDF)).expect("scan");
    let devargs = Devargs::parse(&format!("{BDF},rxd=128,txd=256")).expect("devargs");
    let kvargs = devargs.validate("net_ixgbe", IxgbeDriver.keys()).expect("kvargs");
    let conf = PortConf::default();
    let ctx = ProbeCtx {
        runtime: &lab.rt,
        port: PortId(0),
        name: BDF,
        devargs: &devargs,
        kvargs: &kvargs,
        pci: Some(&pci),
        conf: &conf,
        ports: None,
    };
    let mut port = IxgbeDriver.probe(&ctx).expect("probe");
    let shm = lab.rt.shm();
    assert_eq!(shm.lookup("ixgbe_0_rxq0").expect("rx zone").len, lab_drivers::ixgbe::rxtx::zone_len(128));
    assert_eq!(shm.lookup("ixgbe_0_txq0").expect("tx zone").len, lab_drivers::ixgbe::rxtx::zone_len(256));
    wait_link(port.as_mut());
    let mac = port.info().mac;
    pump(&mut lab.pool, port.as_mut(), &mut None, mac, &sizes(1000), WINDOW);
    port.close(Release::Shared);
    let bad = Devargs::parse(&format!("{BDF},rxd=100")).expect("devargs");
    let kvargs = bad.validate("net_ixgbe", IxgbeDriver.keys()).expect("in range for the parser");
    let ctx = ProbeCtx { devargs: &bad, kvargs: &kvargs, ..ctx };
    let e = IxgbeDriver.probe(&ctx).err().expect("not a multiple of 32");
    assert!(e.to_string().contains("rxd=100: a multiple of 32"), "{e}");
}

#[test]
fn rss_spreads_flows_over_four_queues_with_the_datasheet_hash_and_follows_runtime_updates() {
    use lab_core::rss::{hf, RssConf};
    let mut lab = Lab::new("ixgbe-rss");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let conf = PortConf { nb_rxq: 4, nb_txq: 1, nb_desc: 128, rss: Some(RssConf::default()), ..PortConf::default() };
    let mut port = lab.probe_conf(&IxgbeDriver, &nic, BDF, 0, &conf);
    nic_common::rss_over_four_queues(&mut lab.pool, port.as_mut(), 128, 1, 40);
    // Bad input names what was wrong.
    let e = port.rss_hash_update(&RssConf { key: Some(vec![0; 52]), hf: hf::TCP }).unwrap_err();
    assert!(e.to_string().contains("52 bytes"), "{e}");
    let e = port.rss_hash_update(&RssConf { key: None, hf: hf::SCTP }).unwrap_err();
    assert!(e.to_string().contains("ipv4-sctp"), "{e}");
    port.close(Release::Shared);
}

/// A TCP/IPv6 frame to `dst`, its header carrying `hdr` (source, destination), then a
/// hop-by-hop header, a type 2 routing header with `routed` and a destination options header
/// with the Home Address option `home` (Mobile IPv6, RFC 6275), then TCP `sport` -> `dport`.
fn mip6_tcp_frame(
    dst: [u8; 6],
    hdr: ([u8; 16], [u8; 16]),
    home: [u8; 16],
    routed: [u8; 16],
    ports: (u16, u16),
) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0xee, 0x01, 0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8 + 24 + 24 + 20, 0, 64]); // next: hop-by-hop
    f.extend_from_slice(&hdr.0);
    f.extend_from_slice(&hdr.1);
    f.extend_from_slice(&[43, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop (PadN), next: routing
    f.extend_from_slice(&[60, 2, 2, 1, 0, 0, 0, 0]); // routing type 2, one segment left
    f.extend_from_slice(&routed);
    f.extend_from_slice(&[6, 2, 0, 1, 1, 0, 0xc9, 16]); // Pad1, PadN, Home Address; next: TCP
    f.extend_from_slice(&home);
    f.extend_from_slice(&ports.0.to_be_bytes());
    f.extend_from_slice(&ports.1.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0]);
    f
}

#[test]
fn ipv6_tcp_ex_hashes_the_home_and_routed_addresses_into_the_mbuf() {
    use lab_core::rss::{hf, RssConf};
    use std::net::Ipv6Addr;
    // Microsoft's RSS verification suite, TCP/IPv6 (destination, port, source, port, hash
    // with the default key).
    const V6: [(&str, u16, &str, u16, u32); 3] = [
        ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x4020_7d3d),
        ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0xdde5_1bbf),
        ("fe80::200:f8ff:fe21:67cf", 38024, "3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, 0x02d1_feef),
    ];
    let mut lab = Lab::new("ixgbe-rss-ex");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let rss = RssConf { key: None, hf: hf::IPV6_TCP_EX | hf::NONFRAG_IPV6_TCP };
    let conf = PortConf { nb_rxq: 1, nb_txq: 1, nb_desc: 128, rss: Some(rss), ..PortConf::default() };
    let mut port = lab.probe_conf(&IxgbeDriver, &nic, BDF, 0, &conf);
    wait_link(port.as_mut());
    let mac = port.info().mac;
    let other: ([u8; 16], [u8; 16]) = ([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0x20; 16]);
    let mut rx: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    for (dst, dport, src, sport, want) in V6 {
        let (s, d) = (src.parse::<Ipv6Addr>().unwrap().octets(), dst.parse::<Ipv6Addr>().unwrap().octets());
        let mut m = lab.pool.alloc().expect("mbuf");
        assert!(m.copy_from(&mip6_tcp_frame(mac, other, s, d, (sport, dport))));
        assert_eq!(port.tx_burst(0, &mut [Some(m)]), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        let n = loop {
            let n = port.rx_burst(0, &mut rx);
            if n > 0 || Instant::now() > deadline {
                break n;
            }
        };
        assert_eq!(n, 1, "{src} -> {dst}: the frame came back");
        let h = rx[0].as_mut().unwrap().hdr_mut();
        assert_ne!(h.ol_flags & lab_core::mbuf::RX_RSS_HASH, 0, "{src} -> {dst}: hashed");
        assert_eq!(h.rss_hash, want, "{src}:{sport} -> {dst}:{dport} by the home and routed addresses");
        lab.pool.free_bulk(&mut rx[..n]);
    }
    port.close(Release::Shared);
}

#[test]
fn queues_stop_and_start_at_runtime_as_dts_queue_start_stop() {
    let mut lab = Lab::new("ixgbe-qss");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let conf = PortConf { nb_desc: 128, ..PortConf::default() };
    let mut port = lab.probe_conf(&IxgbeDriver, &nic, BDF, 0, &conf);
    wait_link(port.as_mut());
    queue_start_stop(&mut lab.pool, port.as_mut());
    port.close(Release::Shared);
}

#[test]
fn the_link_status_interrupt_fires_on_each_link_change() {
    let lab = Lab::new("ixgbe-lsc");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let port = lab.probe(&nic, BDF, 0);
    nic_common::link_interrupt_on_each_change(&nic, BDF, port);
}

#[test]
fn rx_interrupt_mode_lets_the_application_sleep_until_a_frame_comes() {
    let mut lab = Lab::new("ixgbe-rxintr");
    let nic = LabNic::start(&[&format!("{BDF},model=ixgbe,wire=loopback")]);
    let conf = PortConf { nb_rxq: 2, nb_txq: 1, nb_desc: 128, ..PortConf::default() };
    let mut port = lab.probe_with(&nic, BDF, 0, &conf);
    nic_common::rx_interrupt_mode(&mut lab.pool, port.as_mut());
    port.close(Release::Shared);
}
