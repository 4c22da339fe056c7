//! net_tap: frames between the port and the kernel side of a TAP interface, in the primary and
//! in a secondary that got the queue descriptors over IPC. Needs CAP_NET_ADMIN (skips otherwise).

mod vdev_common;

use std::time::Duration;

use lab_drivers::tap::TapDriver;
use vdev_common::*;

#[test]
fn unknown_keys_and_bad_names_are_refused_naming_the_key() {
    let lab = Lab::new("tapkeys");
    let e = lab.probe(&TapDriver, "net_tap0,ifname=x", 0, 1).err().unwrap().to_string();
    assert!(e.contains("ifname"), "{e}");
    let e = lab.probe(&TapDriver, "net_tap0,iface=waytoolonginterfacename", 0, 1).err().unwrap().to_string();
    assert!(e.contains("iface"), "{e}");
}

#[test]
fn frames_cross_between_the_port_and_the_kernel_both_ways() {
    if skip_without_net_admin("frames_cross_between_the_port_and_the_kernel_both_ways") {
        return;
    }
    let lab = Lab::new("tapio");
    let ifn = unique("lt");
    let _g = LinkGuard(ifn.clone());
    let mut p = lab.probe(&TapDriver, &format!("net_tap0,iface={ifn},mac=02:aa:bb:cc:dd:01"), 0, 2).unwrap();
    assert_eq!(p.info().mac, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01]);
    assert!(p.link().up);
    let raw = RawSock::bind(&ifn);
    let mut pool = lab.pool();
    let frames: Vec<Vec<u8>> = (0..50).map(|i| frame(i, 60 + 13 * i as usize)).collect();
    assert_eq!(send_all(p.as_mut(), &mut pool, &frames), 50);
    assert_eq!(raw.recv(50, Duration::from_secs(5)), frames);
    for f in &frames {
        raw.send(f);
    }
    let mut got = recv_frames(p.as_mut(), 50, Duration::from_secs(5));
    got.sort();
    let mut want = frames.clone();
    want.sort();
    assert_eq!(got, want);
    close(p);
    assert!(!link_exists(&ifn), "interface {ifn} left after close(Shared)");
}

#[test]
fn a_secondary_uses_the_queues_it_got_over_ipc() {
    if skip_without_net_admin("a_secondary_uses_the_queues_it_got_over_ipc") {
        return;
    }
    let lab = Lab::new("tapsec");
    let ifn = unique("lt");
    let _g = LinkGuard(ifn.clone());
    let dev = format!("net_tap1,iface={ifn}");
    let p = lab.probe(&TapDriver, &dev, 3, 1).unwrap();
    let raw = RawSock::bind(&ifn);
    let mut peer = lab.peer(3, &dev, 1);
    let ans = peer.cmd("tx 20 100");
    assert_eq!(field(&ans, "pkts"), 20, "{ans}");
    assert_eq!(raw.recv(20, Duration::from_secs(5)).len(), 20);
    peer.send("rx 20 5000");
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..20 {
        raw.send(&frame(i, 80));
    }
    let ans = peer.line();
    assert!(field(&ans, "pkts") >= 20, "{ans}");
    assert_eq!(peer.cmd("close"), "closed");
    peer.quit();
    close(p);
    assert!(!link_exists(&ifn));
}

#[test]
fn persist_keeps_the_interface_and_a_missing_tun_leaves_nothing() {
    if skip_without_net_admin("persist_keeps_the_interface_and_a_missing_tun_leaves_nothing") {
        return;
    }
    let lab = Lab::new("tappersist");
    let ifn = unique("lt");
    let _g = LinkGuard(ifn.clone());
    let p = lab.probe(&TapDriver, &format!("net_tap2,iface={ifn},persist"), 0, 1).unwrap();
    close(p);
    assert!(link_exists(&ifn), "persist: interface {ifn} was removed");
    // Attaching again to the persistent interface works, and removing it is the user's job.
    let p = lab.probe(&TapDriver, &format!("net_tap2,iface={ifn}"), 0, 1).unwrap();
    close(p);
    ip(&["link", "del", "dev", &ifn]);
    // A name taken by an interface that is not a TAP: a clear error, the interface untouched.
    let v = Veth::new("lp");
    let e = lab.probe(&TapDriver, &format!("net_tap3,iface={}", v.a), 0, 1).err().unwrap().to_string();
    assert!(e.contains(&v.a) && e.contains("TUNSETIFF"), "{e}");
    assert!(link_exists(&v.a));
}

#[test]
fn twenty_attach_detach_cycles_leak_no_fd_and_no_interface() {
    if skip_without_net_admin("twenty_attach_detach_cycles_leak_no_fd_and_no_interface") {
        return;
    }
    let lab = Lab::new("tapcycles");
    let ifn = unique("lt");
    let _g = LinkGuard(ifn.clone());
    let dev = format!("net_tap4,iface={ifn}");
    // One warm-up cycle: the IPC action and reply socket are created once per process.
    let p = lab.probe(&TapDriver, &dev, 0, 2).unwrap();
    close(p);
    let fds = fd_count();
    for _ in 0..20 {
        let p = lab.probe(&TapDriver, &dev, 0, 2).unwrap();
        let mut peer = lab.peer(0, &dev, 2);
        let before = field(&peer.cmd("fds"), "fds");
        assert_eq!(peer.cmd("close"), "closed");
        assert_eq!(field(&peer.cmd("fds"), "fds"), before - 2, "the secondary keeps queue descriptors");
        peer.quit();
        close(p);
        assert!(!link_exists(&ifn));
    }
    assert_eq!(fd_count(), fds);
    assert_eq!(leftover_links("lt"), Vec::<String>::new(), "interfaces of this test left");
}
