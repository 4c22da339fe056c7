//! The hotplug protocol between real `hotplug_mp` processes: the four scenarios of the design,
//! rollback, the pre-detach veto, bad input, late and dying secondaries, and 100 cycles without a
//! leak.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lab_harness::proc::{entries, fd_count, parse_list, AppProc};
use rstest::rstest;

const APP: &str = env!("CARGO_BIN_EXE_hotplug_mp");

struct Lab {
    xdg: tempfile::TempDir,
    prefix: String,
}

impl Lab {
    fn new(test: &str) -> Lab {
        Lab { xdg: tempfile::tempdir().unwrap(), prefix: format!("hp{}-{test}", std::process::id()) }
    }
    fn start(&self, extra: &[&str]) -> AppProc {
        let mut p = self.begin(extra);
        p.started().expect("start hotplug_mp");
        p
    }
    /// Starts a process without waiting for its start-up to end.
    fn begin(&self, extra: &[&str]) -> AppProc {
        let mut c = Command::new(APP);
        c.arg("--proc-type=auto")
            .arg(format!("--file-prefix={}", self.prefix))
            .args(extra)
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .env("SYSFS_PCI_DEVICES", self.xdg.path().join("no-sysfs"))
            .env_remove("RUST_LOG");
        AppProc::start(c).expect("start hotplug_mp")
    }
    fn runtime_dir(&self) -> PathBuf {
        self.xdg.path().join("hotplug-lab").join(&self.prefix)
    }
    fn shm(&self) -> PathBuf {
        // Where the runtime put it: /dev/shm, or hugetlbfs when pages are free.
        let c = lab_core::mem::possible_files(&self.prefix);
        c.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| c[0].clone())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.shm());
    }
}

fn names(p: &mut AppProc) -> Vec<(u16, String)> {
    let a = p.cmd("list").unwrap();
    assert!(a.starts_with("list all etherdev"), "{a}");
    parse_list(&a)
}

fn ports(list: &[(u16, &str)]) -> Vec<(u16, String)> {
    list.iter().map(|(i, n)| (*i, n.to_string())).collect()
}

/// Every process lists exactly `want`.
fn all_list(procs: &mut [&mut AppProc], want: &[(u16, &str)]) {
    for p in procs.iter_mut() {
        assert_eq!(names(p), ports(want), "process {}", p.pid());
    }
}

/// Waits until a process lists `want` (a hung process catches up after its hang).
fn eventually_lists(p: &mut AppProc, want: &[(u16, &str)], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = names(p);
        if got == ports(want) {
            return;
        }
        assert!(Instant::now() < deadline, "process {} lists {got:?}, want {want:?}", p.pid());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn quit_all(lab: &Lab, procs: Vec<AppProc>) {
    let mut it = procs.into_iter();
    let primary = it.next();
    for p in it {
        assert!(p.quit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }
    if let Some(p) = primary {
        assert!(p.quit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }
    assert!(!lab.runtime_dir().exists(), "runtime dir left behind");
    assert!(!lab.shm().exists(), "shared memory file left behind");
}

#[test]
fn the_four_scenarios_keep_every_process_in_agreement() {
    let lab = Lab::new("four");
    let mut p = lab.start(&[]);
    let mut s1 = lab.start(&[]);
    let mut s2 = lab.start(&[]);
    // 1. attach from the primary
    assert_eq!(p.cmd("attach net_null0").unwrap(), "attached device net_null0");
    all_list(&mut [&mut p, &mut s1, &mut s2], &[(0, "net_null0")]);
    // 3. attach from a secondary
    assert_eq!(s1.cmd("attach net_null1,size=128,copy=1").unwrap(), "attached device net_null1");
    all_list(&mut [&mut p, &mut s1, &mut s2], &[(0, "net_null0"), (1, "net_null1")]);
    // 2. detach from the primary, by name
    assert_eq!(p.cmd("detach net_null1").unwrap(), "detached device net_null1");
    all_list(&mut [&mut p, &mut s1, &mut s2], &[(0, "net_null0")]);
    // 4. detach from a secondary, by port id
    assert_eq!(s2.cmd("detach 0").unwrap(), "detached device net_null0");
    all_list(&mut [&mut p, &mut s1, &mut s2], &[]);
    // Ports work in every process after an attach from a secondary.
    assert_eq!(s2.cmd("attach net_null2,size=100").unwrap(), "attached device net_null2");
    assert_eq!(p.cmd("recv 0 64").unwrap(), "received 64 packets (6400 bytes) on port 0");
    assert_eq!(s1.cmd("send 0 10").unwrap(), "sent 10 packets on port 0");
    let info = s1.cmd("info 0").unwrap();
    assert!(info.contains("name: net_null2") && info.contains("driver: net_null"), "{info}");
    quit_all(&lab, vec![p, s1, s2]);
}

#[rstest]
#[case::fail("fail")]
#[case::hang("hang")]
#[case::crash("crash")]
fn an_attach_that_fails_in_a_secondary_is_rolled_back_everywhere(#[case] mode: &str) {
    let lab = Lab::new(&format!("rb-{mode}"));
    let t = "--hotplug-timeout-ms=1000";
    let mut p = lab.start(&[t]);
    let mut s1 = lab.start(&[t]);
    let fault = format!("--lab-fault=attach:net_null0:{mode}");
    let mut s2 = lab.start(&[t, &fault]);
    let a = p.cmd("attach net_null0").unwrap();
    assert!(a.starts_with("failed to attach device net_null0: "), "{a}");
    match mode {
        "fail" => assert!(a.contains("injected fault"), "{a}"),
        "hang" => assert!(a.contains("no answer within 1000 ms"), "{a}"),
        _ => assert!(a.contains("died during the request"), "{a}"),
    }
    all_list(&mut [&mut p, &mut s1], &[]);
    if mode == "crash" {
        assert!(!s2.is_running());
    } else {
        // The hung secondary finishes its attach after the hang (2.5 s), then the rollback queued
        // behind it: once both are through, it lists nothing.
        if mode == "hang" {
            std::thread::sleep(Duration::from_millis(3000));
        }
        eventually_lists(&mut s2, &[], Duration::from_secs(10));
    }
    // The device attaches fine without the faulty process in the way.
    if mode == "crash" {
        assert_eq!(s1.cmd("attach net_null0").unwrap(), "attached device net_null0");
        all_list(&mut [&mut p, &mut s1], &[(0, "net_null0")]);
        s2.kill();
        quit_all(&lab, vec![p, s1]);
    } else {
        quit_all(&lab, vec![p, s1, s2]);
    }
}

#[test]
fn a_locked_port_or_a_pre_detach_fault_vetoes_the_detach() {
    let lab = Lab::new("veto");
    let mut p = lab.start(&[]);
    let mut s1 = lab.start(&[]);
    let mut s2 = lab.start(&["--lab-fault=pre-detach:net_null1:fail"]);
    assert_eq!(p.cmd("attach net_null0").unwrap(), "attached device net_null0");
    assert_eq!(p.cmd("attach net_null1").unwrap(), "attached device net_null1");
    assert_eq!(s1.cmd("lock 0").unwrap(), "locked port 0");
    let a = p.cmd("detach 0").unwrap();
    assert!(a.starts_with("failed to detach device net_null0: ") && a.contains("locked"), "{a}");
    let a = s2.cmd("detach net_null0").unwrap();
    assert!(a.starts_with("failed to detach device net_null0: ") && a.contains("locked"), "{a}");
    all_list(&mut [&mut p, &mut s1, &mut s2], &[(0, "net_null0"), (1, "net_null1")]);
    assert_eq!(s1.cmd("unlock 0").unwrap(), "unlocked port 0");
    assert_eq!(p.cmd("lock 0").unwrap(), "locked port 0");
    let a = s1.cmd("detach 0").unwrap();
    assert!(a.contains("locked in the primary"), "{a}");
    assert_eq!(p.cmd("unlock 0").unwrap(), "unlocked port 0");
    assert_eq!(s1.cmd("detach 0").unwrap(), "detached device net_null0");
    let a = p.cmd("detach net_null1").unwrap();
    assert!(a.contains("injected fault"), "{a}");
    all_list(&mut [&mut p, &mut s1, &mut s2], &[(1, "net_null1")]);
    quit_all(&lab, vec![p, s1, s2]);
}

#[test]
fn bad_devargs_twice_attached_and_unknown_detach_change_nothing() {
    let lab = Lab::new("bad");
    let mut p = lab.start(&[]);
    let mut s = lab.start(&[]);
    let a = s.cmd("attach net_foo0").unwrap();
    assert_eq!(a, "failed to attach device net_foo0: no driver for device net_foo0");
    let a = p.cmd("attach net_null0,bogus=1").unwrap();
    assert!(a.starts_with("cannot parse devargs: ") && a.contains("bogus"), "{a}");
    let a = s.cmd("attach net_null0,size=abc").unwrap();
    assert!(a.starts_with("cannot parse devargs: ") && a.contains("size") && a.contains("abc"), "{a}");
    let a = p.cmd("attach net_null0,size=99999").unwrap();
    assert!(a.contains("99999") && a.contains("9600"), "{a}");
    let a = p.cmd(&format!("attach net_null0,x={}", "a".repeat(5000))).unwrap();
    assert!(a.starts_with("cannot parse devargs: ") && a.contains("4096"), "{a}");
    all_list(&mut [&mut p, &mut s], &[]);
    assert_eq!(s.cmd("attach net_null0").unwrap(), "attached device net_null0");
    assert_eq!(p.cmd("attach net_null0").unwrap(), "attached device net_null0");
    all_list(&mut [&mut p, &mut s], &[(0, "net_null0")]);
    assert_eq!(p.cmd("detach net_foo9").unwrap(), "failed to detach device net_foo9: not attached");
    assert_eq!(s.cmd("detach 7").unwrap(), "failed to detach device 7: not attached");
    assert_eq!(s.cmd("lock 7").unwrap(), "failed to lock port 7: not attached");
    all_list(&mut [&mut p, &mut s], &[(0, "net_null0")]);
    quit_all(&lab, vec![p, s]);
}

#[test]
fn a_late_secondary_sees_existing_ports_and_a_dead_one_blocks_nothing() {
    let lab = Lab::new("late");
    let mut p = lab.start(&["--vdev=net_null5"]);
    let mut s1 = lab.start(&[]);
    assert_eq!(s1.cmd("attach net_null1").unwrap(), "attached device net_null1");
    let mut late = lab.start(&[]);
    all_list(&mut [&mut p, &mut s1, &mut late], &[(0, "net_null5"), (1, "net_null1")]);
    s1.kill();
    assert_eq!(late.cmd("attach net_null2").unwrap(), "attached device net_null2");
    assert_eq!(p.cmd("detach 0").unwrap(), "detached device net_null5");
    all_list(&mut [&mut p, &mut late], &[(1, "net_null1"), (2, "net_null2")]);
    quit_all(&lab, vec![p, late]);
}

/// A secondary's request that waited behind a long operation until too little of its asker's
/// wait was left is refused unstarted, and nothing of it is done anywhere (`lab-model` found a
/// request done everywhere after its asker had given up waiting).
#[test]
fn a_request_that_waited_too_long_in_the_primarys_queue_is_refused_unstarted() {
    let lab = Lab::new("expired");
    // Asker's wait 4 x 300 + 2000 ms; an operation may take 2 x 300 + 2000 ms; the primary's
    // own attach hangs 2 x 300 + 500 ms holding the queue.
    let t = "--hotplug-timeout-ms=300";
    let mut p = lab.start(&[t, "--lab-fault=attach:net_null0:hang"]);
    let mut s1 = lab.start(&[t]);
    p.send_line("attach net_null0").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let a = s1.cmd("attach net_null1").unwrap();
    assert!(
        a.starts_with("failed to attach device net_null1: the request waited too long behind other operations"),
        "{a}"
    );
    assert!(a.contains("2600 ms needed"), "{a}");
    assert_eq!(p.answer_within(Duration::from_secs(5)).unwrap(), "attached device net_null0");
    all_list(&mut [&mut p, &mut s1], &[(0, "net_null0")]);
    // Not a lasting refusal: asked again with nothing ahead, it is done.
    assert_eq!(s1.cmd("attach net_null1").unwrap(), "attached device net_null1");
    all_list(&mut [&mut p, &mut s1], &[(0, "net_null0"), (1, "net_null1")]);
    quit_all(&lab, vec![p, s1]);
}

/// A secondary's attach overtaken between the primary's yes and its own part (a hang there): a
/// detach of the port and an attach of another device that reuses its id run meanwhile. The
/// secondary rechecks the table before its probe, finds the id taken by the newer device, and
/// keeps the newer handle (`lab-model` found the old probe replacing it).
/// A secondary starting while operations run: between its first reading of the table's
/// sequence counter and its snapshot (`--lab-fault=sync:net_null9:hang`, 2 x 1000 + 500 ms), an
/// attach and a detach both finish (its channel is already open: it answers their steps), and it
/// ends listing what the primary lists, the port attached meanwhile working. The late joiner the
/// model checker found (a table read before an operation's Begin, then applied over it, or a
/// channel opened after the read) would keep net_null9 and miss net_null0, or fail the attach.
#[test]
fn a_secondary_syncing_while_an_attach_and_a_detach_run_ends_with_their_result() {
    let lab = Lab::new("joiner");
    let t = "--hotplug-timeout-ms=1000";
    let mut p = lab.start(&[t]);
    assert_eq!(p.cmd("attach net_null9").unwrap(), "attached device net_null9");
    // Its start-up ends after the hang: not waited for until the two operations ran.
    let mut late = lab.begin(&[t, "--lab-fault=sync:net_null9:hang"]);
    let hang = late.wait_stderr("injected fault: hanging", Duration::from_secs(10));
    assert!(hang.is_some_and(|l| l.contains("sync")), "the late secondary's sync never hung");
    assert_eq!(p.cmd("attach net_null0").unwrap(), "attached device net_null0");
    assert_eq!(p.cmd("detach net_null9").unwrap(), "detached device net_null9");
    late.started().expect("the late secondary starts after its hang");
    all_list(&mut [&mut late, &mut p], &[(1, "net_null0")]);
    assert_eq!(late.cmd("send 1 5").unwrap(), "sent 5 packets on port 1");
    assert_eq!(late.cmd("detach net_null0").unwrap(), "detached device net_null0");
    all_list(&mut [&mut p, &mut late], &[]);
    quit_all(&lab, vec![p, late]);
}

#[test]
fn an_attach_overtaken_before_the_askers_own_part_leaves_the_newer_port_alone() {
    let lab = Lab::new("overtaken");
    let t = "--hotplug-timeout-ms=300";
    let mut p = lab.start(&[t]);
    let mut s1 = lab.start(&[t, "--lab-fault=asked:net_null0:hang"]);
    s1.send_line("attach net_null0").unwrap();
    eventually_lists(&mut p, &[(0, "net_null0")], Duration::from_secs(2));
    // s1 hangs (2 x 300 + 500 ms) before its own part; its handlers still answer.
    assert_eq!(p.cmd("detach net_null0").unwrap(), "detached device net_null0");
    assert_eq!(p.cmd("attach net_null1").unwrap(), "attached device net_null1");
    all_list(&mut [&mut p], &[(0, "net_null1")]);
    assert_eq!(s1.answer_within(Duration::from_secs(5)).unwrap(), "attached device net_null0");
    all_list(&mut [&mut p, &mut s1], &[(0, "net_null1")]);
    assert_eq!(s1.cmd("send 0 3").unwrap(), "sent 3 packets on port 0");
    quit_all(&lab, vec![p, s1]);
}

/// The primary dies in the middle of an attach, after one secondary attached its handle and
/// while another is still at it: neither keeps the port the table never published (the model's
/// orphan rule, `lab-model`), both keep the port they had and its traffic, hotplug from them
/// fails at once naming the dead primary, and a new primary of the prefix runs a lab of its own
/// beside them, neither blocking the other.
#[test]
fn secondaries_of_a_dead_primary_follow_the_table_it_left() {
    let lab = Lab::new("orphan");
    let t = "--hotplug-timeout-ms=1000";
    let mut p = lab.start(&[t]);
    let mut s1 = lab.start(&[t]);
    let mut s2 = lab.start(&[t, "--lab-fault=attach:net_null0:hang"]);
    assert_eq!(p.cmd("attach net_null9").unwrap(), "attached device net_null9");
    let primary = p.pid();
    p.send_line("attach net_null0").unwrap();
    // s1 answered the attach step; s2 hangs in it (2.5 s), so the primary has not published.
    eventually_lists(&mut s1, &[(0, "net_null9"), (1, "net_null0")], Duration::from_secs(5));
    p.kill();
    eventually_lists(&mut s1, &[(0, "net_null9")], Duration::from_secs(5));
    // s2 finishes its step after the hang (2.5 s from the step), then follows the table too.
    std::thread::sleep(Duration::from_millis(3000));
    eventually_lists(&mut s2, &[(0, "net_null9")], Duration::from_secs(10));
    let gone = format!("the primary (pid {primary}) is gone");
    let a = s1.cmd("attach net_null1").unwrap();
    assert!(a.starts_with("failed to attach device net_null1: ") && a.contains(&gone), "{a}");
    let d = s2.cmd("detach 0").unwrap();
    assert!(d.starts_with("failed to detach device net_null9: ") && d.contains(&gone), "{d}");
    assert_eq!(s1.cmd("send 0 10").unwrap(), "sent 10 packets on port 0");
    // A new primary of the prefix: its own lab, not held up by the old one's secondaries.
    let mut p2 = lab.start(&[t]);
    assert_eq!(p2.cmd("attach net_null3").unwrap(), "attached device net_null3");
    let mut s3 = lab.start(&[t]);
    all_list(&mut [&mut p2, &mut s3], &[(0, "net_null3")]);
    all_list(&mut [&mut s1, &mut s2], &[(0, "net_null9")]);
    assert_eq!(s2.cmd("recv 0 64").unwrap(), "received 64 packets (4096 bytes) on port 0");
    for s in [s1, s2] {
        assert!(s.quit(Duration::from_secs(10)).is_some_and(|st| st.success()));
    }
    quit_all(&lab, vec![p2, s3]);
}

#[test]
fn a_hundred_cycles_across_processes_leak_nothing() {
    let lab = Lab::new("cycles");
    let mut procs = vec![lab.start(&[]), lab.start(&[]), lab.start(&[])];
    // Warm up every path once (reply sockets, worker threads, pool handles).
    for i in 0..3 {
        assert_eq!(procs[i].cmd("attach net_null0").unwrap(), "attached device net_null0");
        assert_eq!(procs[(i + 1) % 3].cmd("detach net_null0").unwrap(), "detached device net_null0");
    }
    let fds: Vec<usize> = procs.iter().map(|p| fd_count(p.pid())).collect();
    let files = entries(&lab.runtime_dir());
    for i in 0..100 {
        let a = i % 3;
        let d = (i + 1 + i / 3) % 3;
        assert_eq!(procs[a].cmd("attach net_null0,size=64").unwrap(), "attached device net_null0", "cycle {i}");
        // By id every other cycle: the id the detaching process lists, not 0, since an id stays
        // held after a detach until every secondary has said it let go (a slow one under load).
        let target = if i % 2 == 0 {
            let id = names(&mut procs[d]).into_iter().find(|(_, n)| n == "net_null0").map(|(id, _)| id);
            id.unwrap_or_else(|| panic!("cycle {i}: process {d} does not list net_null0")).to_string()
        } else {
            "net_null0".to_string()
        };
        assert_eq!(procs[d].cmd(&format!("detach {target}")).unwrap(), "detached device net_null0", "cycle {i}");
    }
    for p in procs.iter_mut() {
        assert_eq!(names(p), vec![]);
    }
    let after: Vec<usize> = procs.iter().map(|p| fd_count(p.pid())).collect();
    assert_eq!(after, fds, "open descriptors per process");
    assert_eq!(entries(&lab.runtime_dir()), files, "files in the runtime dir");
    quit_all(&lab, procs);
}
