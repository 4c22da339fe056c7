//! `lab-fwd` in a lab, tested as its user would: through `lab_harness::Lab` and telemetry only.
//!
//! Four emulated 82599s, each cabled to a TAP interface of the kernel (the test's side of the
//! wire): the app forwards between the first two and between the last two. The primary attaches
//! them (asked from a `hotplug_mp` secondary); frames sent into one TAP come out of its pair's.
//! One NIC is surprise-unplugged while the other pair carries traffic: that pair loses nothing,
//! the app drops the broken pair without restarting, and when the NIC is plugged back and
//! attached again, its pair forwards again.

use std::time::Duration;

use lab_core::ethdev::PortId;
use lab_harness::Lab;
use lab_testkit::{ip, skip_without_net_admin, unique, RawSock};

const FWD: &str = env!("CARGO_BIN_EXE_lab-fwd");
const NICS: [&str; 4] = ["0000:00:05.0", "0000:00:06.0", "0000:00:07.0", "0000:00:08.0"];
const WAIT: Duration = Duration::from_secs(10);

/// A test frame: broadcast, EtherType 0x88b5, then the pair's tag and a sequence number.
fn frame(tag: u8, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 80];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, tag]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14] = tag;
    f[15..19].copy_from_slice(&seq.to_le_bytes());
    f
}

fn tagged(tag: u8) -> impl Fn(&[u8]) -> bool {
    move |f| f.len() >= 19 && f[12..14] == [0x88, 0xb5] && f[14] == tag
}

/// Brings a TAP up (IPv6 off: no router solicitations on the test's wire) and binds to it.
fn wire(tap: &str) -> RawSock {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
    ip(&["link", "set", "dev", tap, "up"]);
    RawSock::bind(tap)
}

/// The app's port of device `name`.
fn port_of(lab: &Lab, name: &str) -> Option<PortId> {
    lab.ports("fwd").ok()?.into_iter().find(|(_, n)| n == name).map(|(p, _)| p)
}

/// Sends `n` frames of `tag` into `into` and returns how many came out of `out`.
fn through(into: &RawSock, out: &RawSock, tag: u8, n: u32) -> usize {
    for i in 0..n {
        into.send(&frame(tag, i));
    }
    out.recv(n as usize, WAIT, tagged(tag)).len()
}

#[test]
fn forwards_two_pairs_drops_the_one_unplugged_and_resumes_when_it_is_back() {
    if skip_without_net_admin("forwards_two_pairs_drops_the_one_unplugged_and_resumes_when_it_is_back") {
        return;
    }
    let taps: Vec<String> = (0..4).map(|i| unique(&format!("fw{i}"))).collect();
    let mut b = Lab::builder().secondaries(1);
    for (bdf, tap) in NICS.iter().zip(&taps) {
        b = b.nic(bdf, "ixgbe", &format!("tap={tap}"));
    }
    let pairs = [format!("{},{}", NICS[0], NICS[1]), format!("{},{}", NICS[2], NICS[3])];
    let mut lab = b.app("fwd", FWD, &["--pair", &pairs[0], "--pair", &pairs[1]]).start().expect("lab");

    for bdf in NICS {
        lab.attach("s1", bdf).expect("attach");
    }
    lab.assert_consistent();
    lab.wait_until(WAIT, "fwd holds the four NICs", |l| (l.ports("fwd").ok()?.len() == 4).then_some(())).unwrap();
    let mut w: Vec<RawSock> = taps.iter().map(|t| wire(t)).collect();

    // Both pairs forward, both ways.
    assert_eq!(through(&w[0], &w[1], 1, 50), 50, "pair 1, 05.0 -> 06.0");
    assert_eq!(through(&w[1], &w[0], 2, 50), 50, "pair 1, 06.0 -> 05.0");
    assert_eq!(through(&w[2], &w[3], 3, 50), 50, "pair 2, 07.0 -> 08.0");
    let a = port_of(&lab, NICS[0]).unwrap();
    let s = lab.stats("fwd", a).unwrap();
    assert!(s.ipackets >= 50 && s.opackets >= 50, "the app's own counters of 05.0: {s:?}");

    // Surprise unplug of 05.0 while pair 2 carries traffic: pair 2 loses nothing.
    let sender = {
        let into = RawSock::bind(&taps[2]);
        std::thread::spawn(move || {
            for i in 0..300u32 {
                into.send(&frame(4, i));
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(60));
    lab.unplug(NICS[0]).unwrap();
    let got = w[3].recv(300, WAIT, tagged(4)).len();
    sender.join().unwrap();
    assert_eq!(got, 300, "pair 2 forwarded every frame across the unplug");
    lab.wait_until(WAIT, "05.0 gone from every process", |l| {
        let v = l.consistent().ok()?;
        (v.len() == 3 && !v.iter().any(|(_, n)| n == NICS[0])).then_some(())
    })
    .unwrap();
    assert!(lab.is_running("fwd"), "the app survived the unplug: {}", lab.stderr("fwd"));
    // Pair 1 is down: nothing from 06.0 goes anywhere, and pair 2 still works.
    for i in 0..20 {
        w[1].send(&frame(5, i));
    }
    let stray =
        [&w[0], &w[2], &w[3]].iter().map(|r| r.recv(1, Duration::from_millis(300), tagged(5)).len()).sum::<usize>();
    assert_eq!(stray, 0, "a broken pair forwards nothing");
    assert_eq!(through(&w[2], &w[3], 6, 50), 50, "pair 2 after the unplug");
    let told = lab.telemetry("fwd", "/lab/hotplug").unwrap();
    let last = told["operations"].as_array().and_then(|o| o.last()).cloned().unwrap_or_default();
    assert_eq!((last["op"].as_str(), last["from"].as_str()), (Some("detach"), Some("the primary")), "{told}");

    // The NIC comes back: plugged, attached again, its pair forwards again (the app re-pairs on
    // the NEW event, without a restart).
    let pid = lab.pid("fwd");
    lab.plug(NICS[0]).unwrap();
    w[0] = wire(&taps[0]);
    lab.attach("s1", NICS[0]).expect("attach again");
    lab.wait_until(WAIT, "fwd holds 05.0 again", |l| port_of(l, NICS[0])).unwrap();
    lab.assert_consistent();
    assert_eq!(through(&w[0], &w[1], 7, 50), 50, "pair 1 resumed");
    assert_eq!(through(&w[2], &w[3], 8, 50), 50, "pair 2 still");
    assert_eq!(lab.pid("fwd"), pid, "same app process throughout");
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let mut seen = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::builder()
            .vdev("net_null0")
            .secondaries(1)
            .app("fwd", FWD, &["--pair", "net_null0,net_null1"])
            .start()
            .expect("lab");
        let pids: Vec<u32> = lab.processes().iter().filter_map(|p| lab.pid(p)).collect();
        let mem = lab.telemetry("primary", "/lab/process").unwrap()["mem_file"].as_str().unwrap().to_string();
        seen = Some((pids, lab.runtime_dir(), mem, lab.xdg_runtime_dir().to_path_buf()));
        panic!("a test failing with the lab up");
    }));
    assert!(r.is_err());
    let (pids, dir, mem, xdg) = seen.expect("the lab started");
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} left running");
    }
    assert!(!dir.exists(), "runtime dir {} left", dir.display());
    assert!(!std::path::Path::new(&mem).exists(), "memory file {mem} left");
    assert!(!xdg.exists(), "temp dir {} left", xdg.display());
}

#[test]
fn a_bad_app_argument_fails_the_start_with_its_message_and_stops_the_rest() {
    let e = Lab::builder().secondaries(1).app("fwd", FWD, &["--pair", "onlyone"]).start().err().expect("refused");
    let t = e.to_string();
    assert!(t.starts_with("fwd: exited") && t.contains("NAME,NAME"), "{t}");
}

/// A forwarder SIGKILLed at full rate, inside its rx/tx bursts (it is in one nearly all the time:
/// buffers taken from the shared pool, descriptors half-written), wedges nobody: the NICs detach
/// and attach again across the other processes, and frames flow between them through the same
/// shared pool. What the dead process held (its cache, its burst) is lost to the pool, and says
/// so in `/lab/mempool`.
#[test]
fn a_forwarder_sigkilled_inside_rx_and_tx_wedges_nobody() {
    const A: &str = "0000:00:05.0";
    const B: &str = "0000:00:06.0";
    let mut lab = Lab::builder()
        .nic(A, "ixgbe", &format!("peer={B}"))
        .nic(B, "ixgbe", &format!("peer={A}"))
        .vdev("net_null0")
        .vdev("net_null1")
        .secondaries(1)
        .app("fwd", FWD, &["--pair", &format!("net_null0,{A}"), "--pair", &format!("{B},net_null1")])
        .start()
        .expect("lab");
    lab.attach("s1", A).expect("attach A");
    lab.attach("s1", B).expect("attach B");
    let a = lab
        .wait_until(WAIT, "fwd holds both NICs", |l| {
            let p = port_of(l, A)?;
            port_of(l, B)?;
            Some(p)
        })
        .unwrap();
    lab.wait_until(WAIT, "fwd forwards at full rate", |l| (l.stats("fwd", a).ok()?.opackets > 20_000).then_some(()))
        .unwrap();
    let pid = lab.pid("fwd").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    lab.kill("fwd").unwrap();

    // Hotplug goes on without it, from either process.
    lab.detach("primary", A).expect("detach A after the kill");
    lab.detach("s1", B).expect("detach B after the kill");
    lab.assert_consistent();
    let a = lab.attach("primary", A).expect("attach A again");
    let b = lab.attach("s1", B).expect("attach B again");
    lab.assert_consistent();
    // And frames cross the cable through the pool the dead process was taking from and giving to.
    let r = lab.cmd("s1", &format!("recv {b} 64 100")).unwrap();
    assert!(r.starts_with("received"), "{r}");
    let sent = lab.cmd("primary", &format!("send {a} 64")).unwrap();
    assert_eq!(sent, format!("sent 64 packets on port {a}"));
    let got = lab.cmd("s1", &format!("recv {b} 64 5000")).unwrap();
    assert!(got.starts_with("received 64 packets"), "{got}");
    let pools = lab.telemetry("primary", "/lab/mempool").unwrap();
    assert!(pools.as_array().is_some_and(|p| !p.is_empty()), "{pools}");
}
