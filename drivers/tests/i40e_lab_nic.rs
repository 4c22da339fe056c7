//! net_i40e against a real `lab-nic` process: firmware bring-up over the admin queue, MAC, link up and
//! down from the control socket, 10,000 loopback frames byte for byte, an i40e function cabled to an
//! ixgbe function, and repeated release/probe without leaks.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lab_core::bus::pci::scan_one;
use lab_core::devargs::Devargs;
use lab_core::ethdev::{Driver, EthDev, PortConf, PortId, ProbeCtx, Release, DEFAULT_POOL};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::options::Options;
use lab_core::runtime::Runtime;
use lab_drivers::i40e::I40eDriver;
use lab_drivers::ixgbe::IxgbeDriver;

const BDF: &str = "0000:00:09.0";
const BDF2: &str = "0000:00:0a.0";

mod nic_common;
use nic_common::{frame, pump, queue_start_stop, sizes, wait_link, Lab, LabNic};

/// Frames in flight at most in `pump`.
const WINDOW: usize = 256;

/// This file's probes go to the i40e driver unless another is named.
trait I40eLab {
    fn probe(&self, nic: &LabNic, bdf: &str, port: u16) -> Box<dyn EthDev>;
    fn probe_with(&self, drv: &dyn Driver, nic: &LabNic, bdf: &str, port: u16) -> Box<dyn EthDev>;
}

impl I40eLab for Lab {
    fn probe(&self, nic: &LabNic, bdf: &str, port: u16) -> Box<dyn EthDev> {
        self.probe_conf(&I40eDriver, nic, bdf, port, &PortConf::default())
    }
    fn probe_with(&self, drv: &dyn Driver, nic: &LabNic, bdf: &str, port: u16) -> Box<dyn EthDev> {
        self.probe_conf(drv, nic, bdf, port, &PortConf::default())
    }
}

fn wait_link_down(port: &mut dyn EthDev) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while port.link().up {
        assert!(Instant::now() < deadline, "link did not go down");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn loopback_delivers_ten_thousand_mixed_frames_in_order_and_counts_them() {
    let mut lab = Lab::new("i40e-loop");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback,mac=02:40:22:33:44:55")]);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    assert_eq!(port.link().speed_mbps, 10_000);
    let info = port.info();
    assert_eq!(info.mac, [0x02, 0x40, 0x22, 0x33, 0x44, 0x55]);
    assert_eq!((info.driver, info.nb_rxq, info.nb_txq, info.mtu), ("net_i40e", 1, 1, 1500));

    port.stats_reset();
    let lens = sizes(10_000);
    pump(&mut lab.pool, port.as_mut(), &mut None, info.mac, &lens, WINDOW);
    let total: u64 = lens.iter().map(|l| *l as u64).sum();
    let s = port.stats();
    assert_eq!((s.opackets, s.ipackets), (10_000, 10_000), "{s:?}");
    assert_eq!((s.obytes, s.ibytes), (total, total), "{s:?}");
    assert_eq!((s.imissed, s.ierrors, s.oerrors, s.rx_nombuf), (0, 0, 0, 0), "{s:?}");
    assert!(nic.command(&format!("faults {BDF}")).starts_with("ok count=0"));

    // Promiscuous off: a frame to another unicast address is filtered; on: it arrives.
    let other = [0x02, 0x99, 0, 0, 0, 1];
    port.set_promisc(true).expect("promisc");
    pump(&mut lab.pool, port.as_mut(), &mut None, other, &[64, 128], WINDOW);
    port.set_promisc(false).expect("promisc off");
    pump(&mut lab.pool, port.as_mut(), &mut None, info.mac, &[64], WINDOW);
    assert!(port.set_mtu(9000).is_err(), "9000 does not fit a 2 KiB buffer");
    port.set_mtu(1400).expect("mtu");
    assert_eq!(port.info().mtu, 1400);
    port.close(Release::Shared);
}

#[test]
fn link_down_and_up_from_the_control_socket_is_seen_by_the_driver() {
    let lab = Lab::new("i40e-link");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    assert!(nic.command(&format!("link down {BDF}")).starts_with("ok"));
    wait_link_down(port.as_mut());
    assert_eq!(port.link().speed_mbps, 0);
    assert!(nic.command(&format!("link up {BDF}")).starts_with("ok"));
    wait_link(port.as_mut());
    port.close(Release::Shared);
}

#[test]
fn an_i40e_function_cabled_to_an_ixgbe_function_passes_traffic_both_ways() {
    let mut lab = Lab::new("i40e-peer");
    let nic = LabNic::start(&[
        &format!("{BDF},model=i40e,peer={BDF2},mac=02:00:00:00:09:00"),
        &format!("{BDF2},model=ixgbe,mac=02:00:00:00:0a:00"),
    ]);
    let mut a = lab.probe(&nic, BDF, 0);
    let mut b = lab.probe_with(&IxgbeDriver, &nic, BDF2, 1);
    wait_link(a.as_mut());
    wait_link(b.as_mut());
    let (ma, mb) = (a.info().mac, b.info().mac);
    assert_eq!((a.info().driver, b.info().driver), ("net_i40e", "net_ixgbe"));
    let lens = sizes(2_000);
    pump(&mut lab.pool, a.as_mut(), &mut Some(b.as_mut()), mb, &lens, WINDOW);
    pump(&mut lab.pool, b.as_mut(), &mut Some(a.as_mut()), ma, &lens, WINDOW);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.opackets, sa.ipackets, sb.opackets, sb.ipackets), (2_000, 2_000, 2_000, 2_000));
    a.close(Release::Shared);
    b.close(Release::Shared);
}

#[test]
fn release_and_probe_again_ten_times_leaks_no_zone_and_no_buffer() {
    let mut lab = Lab::new("i40e-cycle");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let zones_before = lab.rt.shm().zones().len();
    lab.probe(&nic, BDF, 0).close(Release::Shared);
    let avail = lab.pool.avail_count();
    for i in 0..10 {
        let mut port = lab.probe(&nic, BDF, 0);
        wait_link(port.as_mut());
        let mac = port.info().mac;
        pump(&mut lab.pool, port.as_mut(), &mut None, mac, &[60 + i, 1514], WINDOW);
        port.close(Release::Shared);
    }
    assert_eq!(lab.rt.shm().zones().len(), zones_before, "memzones freed at release");
    assert_eq!(lab.pool.avail_count(), avail, "every posted buffer back in the pool");
    assert!(nic.command(&format!("faults {BDF}")).starts_with("ok count=0"));
}

/// Environment variable that turns [`secondary_child`] from a no-op into the secondary process of
/// [`a_secondary_process_attaches_moves_traffic_and_leaves_the_port_to_the_primary`]: "prefix|sysfs dir".
const CHILD_ENV: &str = "LAB_I40E_SECONDARY";

#[test]
fn a_secondary_process_attaches_moves_traffic_and_leaves_the_port_to_the_primary() {
    let mut lab = Lab::new("i40e-mp");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback,mac=02:40:00:00:00:77")]);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    port.stats_reset();
    let mac = port.info().mac;
    pump(&mut lab.pool, port.as_mut(), &mut None, mac, &sizes(100), WINDOW);

    // The secondary: this test binary again, running only `secondary_child`.
    let out = Command::new(std::env::current_exe().expect("test exe"))
        .args(["--exact", "secondary_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{}", lab.prefix, nic.dir(BDF).display()))
        .output()
        .expect("spawn the secondary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("secondary ok"),
        "secondary failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its vfio-user connection is gone (the relay notices the close shortly after the exit).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = nic.command(&format!("connections {BDF}"));
        if r.starts_with("ok connections=1 ") {
            break;
        }
        assert!(Instant::now() < deadline, "secondary connection still open: {r}");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The primary continues where the secondary left the rings; the port counters saw everything.
    pump(&mut lab.pool, port.as_mut(), &mut None, mac, &sizes(1000), WINDOW);
    let s = port.stats();
    assert_eq!((s.opackets, s.ipackets), (1600, 1600), "{s:?}");
    assert!(nic.command(&format!("faults {BDF}")).starts_with("ok count=0"));
    port.close(Release::Shared);
}

/// The secondary half of the test above (does nothing unless started by it).
#[test]
fn secondary_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (prefix, dir) = spec.split_once('|').expect("prefix|dir");
    let (opts, _) = Options::parse([format!("--file-prefix={prefix}"), "--proc-type=secondary".into()]).expect("opts");
    let rt = Runtime::init(&opts).expect("secondary runtime");
    assert!(!rt.is_primary());
    let mut pool = Mempool::lookup(rt.shm(), DEFAULT_POOL, 0).expect("pool");
    let pci = scan_one(Path::new(dir)).expect("scan");
    let devargs = Devargs::parse(BDF).expect("devargs");
    let drv = I40eDriver;
    let kvargs = devargs.validate(drv.name(), drv.keys()).expect("kvargs");
    let conf = PortConf::default();
    let ctx = ProbeCtx {
        runtime: &rt,
        port: PortId(0),
        name: BDF,
        devargs: &devargs,
        kvargs: &kvargs,
        pci: Some(&pci),
        conf: &conf,
        ports: None,
    };
    let mut port = drv.probe(&ctx).expect("secondary attach");
    let info = port.info();
    assert_eq!(info.mac, [0x02, 0x40, 0, 0, 0, 0x77], "MAC from the primary's shared state");
    // Link status through the shared admin queue, from this process.
    wait_link(port.as_mut());
    assert_eq!(port.link().speed_mbps, 10_000);
    pump(&mut pool, port.as_mut(), &mut None, info.mac, &sizes(500), WINDOW);
    port.close(Release::Local);
    println!("secondary ok");
}

#[test]
fn every_transmit_queue_of_four_pairs_sends_and_the_vsi_receives_on_its_first_queue() {
    let mut lab = Lab::new("i40e-mq");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let conf = PortConf { nb_rxq: 4, nb_txq: 4, nb_desc: 128, ..PortConf::default() };
    let mut port = lab.probe_conf(&I40eDriver, &nic, BDF, 0, &conf);
    wait_link(port.as_mut());
    let info = port.info();
    assert_eq!((info.nb_rxq, info.nb_txq), (4, 4));
    let mut rxb: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    for q in 0..4u16 {
        let mut txb: Vec<Option<Mbuf>> = (0..20)
            .map(|i| {
                let mut m = lab.pool.alloc().expect("mbuf");
                assert!(m.copy_from(&frame(info.mac, u32::from(q) * 100 + i, 60 + 50 * i as usize)));
                Some(m)
            })
            .collect();
        assert_eq!(port.tx_burst(q, &mut txb), 20, "tx queue {q}");
        let (mut got, deadline) = (0u32, Instant::now() + Duration::from_secs(5));
        while got < 20 {
            assert!(Instant::now() < deadline, "tx queue {q}: {got} of 20 frames back");
            for other in 1..4 {
                assert_eq!(port.rx_burst(other, &mut rxb), 0, "nothing on rx queue {other}");
            }
            let n = port.rx_burst(0, &mut rxb);
            for slot in &mut rxb[..n] {
                let m = slot.take().expect("mbuf");
                assert!(m.data() == &frame(info.mac, u32::from(q) * 100 + got, 60 + 50 * got as usize)[..]);
                lab.pool.free(m);
                got += 1;
            }
        }
    }
    assert!(nic.command(&format!("faults {BDF}")).starts_with("ok count=0"));
    port.close(Release::Shared);
}

#[test]
fn surprise_unplug_reads_as_link_down_and_release_does_not_wait_on_the_admin_queue() {
    let lab = Lab::new("i40e-unplug");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let mut port = lab.probe(&nic, BDF, 0);
    wait_link(port.as_mut());
    assert!(nic.command(&format!("unplug {BDF}")).starts_with("ok"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !port.is_removed() {
        assert!(Instant::now() < deadline, "removal not noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!port.link().up);
    let zones = lab.rt.shm().zones().len();
    // Release finds the device gone and does not wait on its admin queue (it returns at all).
    nic_common::returns("release of an unplugged port", move || port.close(Release::Shared));
    assert!(lab.rt.shm().zones().len() < zones, "zones freed even without the device");
}

#[test]
fn rss_spreads_flows_over_four_queues_by_the_lookup_table_and_follows_runtime_updates() {
    use lab_core::rss::{hf, RssConf};
    let mut lab = Lab::new("i40e-rss");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let conf = PortConf { nb_rxq: 4, nb_txq: 1, nb_desc: 128, rss: Some(RssConf::default()), ..PortConf::default() };
    let mut port = lab.probe_conf(&I40eDriver, &nic, BDF, 0, &conf);
    nic_common::rss_over_four_queues(&mut lab.pool, port.as_mut(), 512, 0, 52);
    // Bad input names what was wrong.
    let e = port.rss_hash_update(&RssConf { key: Some(vec![0; 41]), hf: hf::NONFRAG_IPV4_TCP }).unwrap_err();
    assert!(e.to_string().contains("41 bytes"), "{e}");
    let e = port.rss_hash_update(&RssConf { key: None, hf: hf::IPV6_EX }).unwrap_err();
    assert!(e.to_string().contains("ipv6-ex"), "{e}");
    port.close(Release::Shared);
}

#[test]
fn queues_stop_and_start_at_runtime_as_dts_queue_start_stop() {
    let mut lab = Lab::new("i40e-qss");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let conf = PortConf { nb_desc: 128, ..PortConf::default() };
    let mut port = lab.probe_conf(&I40eDriver, &nic, BDF, 0, &conf);
    wait_link(port.as_mut());
    queue_start_stop(&mut lab.pool, port.as_mut());
    port.close(Release::Shared);
}

#[test]
fn the_link_status_interrupt_fires_on_each_link_change() {
    let lab = Lab::new("i40e-lsc");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let port = lab.probe(&nic, BDF, 0);
    nic_common::link_interrupt_on_each_change(&nic, BDF, port);
}

#[test]
fn rx_interrupt_mode_lets_the_application_sleep_until_a_frame_comes() {
    let mut lab = Lab::new("i40e-rxintr");
    let nic = LabNic::start(&[&format!("{BDF},model=i40e,wire=loopback")]);
    let conf = PortConf { nb_rxq: 2, nb_txq: 1, nb_desc: 128, ..PortConf::default() };
    let mut port = lab.probe_conf(&I40eDriver, &nic, BDF, 0, &conf);
    nic_common::rx_interrupt_mode(&mut lab.pool, port.as_mut());
    port.close(Release::Shared);
}
