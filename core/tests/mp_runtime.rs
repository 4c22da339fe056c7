//! The runtime, shared memory and IPC channel between real processes (issue: lab-core foundation).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{fd_count, Lab, Proc};

const PEER: &str = env!("CARGO_BIN_EXE_lab-mp-peer");

fn start(lab: &Lab, args: &[&str]) -> Proc {
    let mut p = lab.spawn(PEER, args);
    let l = p.line();
    assert!(l.starts_with("ready "), "unexpected first line {l:?}; stderr: {}", p.stderr());
    p
}

fn role(p: &mut Proc) -> String {
    // The ready line was consumed; ask the process who it is through the socket name.
    let s = p.cmd("socket");
    if s.ends_with("/mp_socket") {
        "primary".into()
    } else {
        "secondary".into()
    }
}

/// A primary and `n` secondaries, all started with --proc-type=auto.
fn lab_with(test: &str, n: usize) -> (Lab, Proc, Vec<Proc>) {
    let lab = Lab::new(test);
    let mut p = start(&lab, &["--proc-type=auto"]);
    assert_eq!(role(&mut p), "primary");
    let secs = (0..n).map(|_| start(&lab, &["--proc-type=auto"])).collect();
    (lab, p, secs)
}

fn finish(lab: Lab, p: Proc, secs: Vec<Proc>) {
    for s in secs {
        assert!(s.quit().success());
    }
    assert!(p.quit().success());
    lab.assert_clean();
}

#[test]
fn auto_makes_one_primary_and_three_secondaries() {
    let (lab, p, mut secs) = lab_with("auto", 3);
    for s in &mut secs {
        assert_eq!(role(s), "secondary");
    }
    // An explicit second primary is refused, naming the prefix.
    let again = lab.spawn(PEER, &["--proc-type=primary"]);
    let (st, err) = again.exit_and_stderr();
    assert!(!st.success());
    assert!(err.contains("already running") && err.contains(&lab.prefix), "{err}");
    finish(lab, p, secs);
}

#[test]
fn a_secondary_without_primary_fails_with_one_line_naming_the_prefix() {
    let lab = Lab::new("noprim");
    let s = lab.spawn(PEER, &["--proc-type=secondary"]);
    let (st, err) = s.exit_and_stderr();
    assert!(!st.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no primary process") && err.contains(&lab.prefix), "{err}");
    lab.assert_clean();
}

#[test]
fn a_new_primary_reclaims_what_a_killed_primary_left() {
    let lab = Lab::new("reclaim");
    let p = start(&lab, &[]);
    p.kill();
    assert!(lab.shm_file().exists() && lab.runtime_dir().join("mp_socket").exists());
    let mut p = start(&lab, &["--proc-type=primary"]);
    let mut s = start(&lab, &[]);
    assert_eq!(s.cmd("req echo hi 5000"), "sent=1 received=1 payloads=hi");
    assert_eq!(p.cmd("req echo hi 5000"), "sent=1 received=1 payloads=hi");
    finish(lab, p, vec![s]);
}

#[test]
fn sync_and_async_requests_reach_every_secondary() {
    let (lab, mut p, mut secs) = lab_with("sync", 3);
    assert_eq!(p.cmd("req echo hello 5000"), "sent=3 received=3 payloads=hello,hello,hello");
    let pids: Vec<String> = secs.iter().map(|s| s.pid().to_string()).collect();
    let mut want = pids.clone();
    want.sort();
    assert_eq!(p.cmd("req pid x 5000"), format!("sent=3 received=3 payloads={}", want.join(",")));
    assert_eq!(p.cmd("areq echo a 5000"), "async-submitted");
    assert_eq!(p.line(), "async sent=3 received=3 payloads=a,a,a");
    // Secondaries talk to the primary only.
    assert_eq!(secs[1].cmd("req pid x 5000"), format!("sent=1 received=1 payloads={}", p.pid()));
    assert_eq!(secs[2].cmd("areq echo b 5000"), "async-submitted");
    assert_eq!(secs[2].line(), "async sent=1 received=1 payloads=b");
    assert_eq!(p.cmd("send echo oneway"), "sent=3");
    finish(lab, p, secs);
}

#[test]
fn a_hung_peer_times_out_and_counts_as_sent_not_received() {
    let (lab, mut p, secs) = lab_with("hung", 2);
    assert_eq!(p.cmd("req hang x 300"), "sent=2 received=0 payloads=");
    // A slow handler answers after the timeout: its reply is dropped as late, and the next
    // request on the same reply socket is not confused by it.
    assert_eq!(p.cmd("req slow 600 200"), "sent=2 received=0 payloads=");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(p.cmd("req echo again 5000"), "sent=2 received=2 payloads=again,again");
    finish(lab, p, secs);
}

#[test]
fn a_killed_peer_is_skipped_at_once_and_not_counted() {
    let (lab, mut p, mut secs) = lab_with("killed", 3);
    let victim = secs.remove(0);
    let sock = lab.runtime_dir().join(format!("mp_socket_{}_0", victim.pid()));
    assert!(sock.exists());
    victim.kill();
    // The request timeout is a minute; the answer must come long before.
    p.send("req echo x 60000");
    assert_eq!(p.line_within(Duration::from_secs(20)), "sent=2 received=2 payloads=x,x");
    assert!(!sock.exists(), "the dead peer's socket is unlinked");
    // A peer that dies while the request is pending stops being waited for.
    assert!(secs.pop().unwrap().quit().success());
    let victim = secs.remove(0);
    p.send("req slow 120000 60000");
    std::thread::sleep(Duration::from_millis(300));
    victim.kill();
    assert_eq!(p.line_within(Duration::from_secs(40)), "sent=1 received=0 payloads=");
    finish(lab, p, secs);
}

#[test]
fn a_handler_may_itself_make_a_sync_request() {
    let (lab, mut p, mut secs) = lab_with("nested", 3);
    // Primary -> each secondary's worker -> request to the primary -> replies flow back.
    assert_eq!(
        p.cmd("req nested n1 10000"),
        "sent=3 received=3 payloads=nested:1:sent=1 received=1 payloads=n1,nested:1:sent=1 received=1 payloads=n1,nested:1:sent=1 received=1 payloads=n1"
    );
    // Secondary -> primary's worker -> request to all secondaries, the asker included.
    assert_eq!(
        secs[0].cmd("req nested n2 10000"),
        "sent=1 received=1 payloads=nested:3:sent=3 received=3 payloads=n2,n2,n2"
    );
    finish(lab, p, secs);
}

#[test]
fn a_memfd_travels_with_the_message_and_is_read_by_the_peer() {
    let (lab, mut p, mut secs) = lab_with("memfd", 2);
    // Warm up: the first request creates the primary's reply socket.
    assert_eq!(p.cmd("req echo w 5000"), "sent=2 received=2 payloads=w,w");
    let before = fd_count(p.pid());
    assert_eq!(p.cmd("memfd-req hello-fd"), "sent=2 received=2 payloads=hello-fd,hello-fd");
    assert_eq!(secs[1].cmd("memfd-req from-secondary"), "sent=1 received=1 payloads=from-secondary");
    // The primary closes a received descriptor right after it replies: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fd_count(p.pid()) != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fd_count(p.pid()), before, "no descriptor leaked in the primary");
    finish(lab, p, secs);
}

fn header(kind: u8, name: &str, payload_len: u32, nfds: u8) -> Vec<u8> {
    let mut h = vec![0u8; 88];
    h[0..4].copy_from_slice(&0x4c41_424du32.to_le_bytes());
    h[4] = 1;
    h[5] = kind;
    h[6] = name.len() as u8;
    h[7] = nfds;
    h[8..16].copy_from_slice(&42u64.to_le_bytes());
    h[16..20].copy_from_slice(&payload_len.to_le_bytes());
    h[24..24 + name.len()].copy_from_slice(name.as_bytes());
    h
}

#[test]
fn garbage_datagrams_are_dropped_and_the_receiver_keeps_serving() {
    let (lab, mut p, mut secs) = lab_with("garbage", 1);
    let target = lab.runtime_dir().join("mp_socket");
    let fds_before = fd_count(p.pid());
    let dir = tempfile::tempdir().unwrap();
    let me = UnixDatagram::bind(dir.path().join("g")).unwrap();
    let mut sent = 0;
    let mut send = |b: &[u8]| {
        me.send_to(b, &target).unwrap();
        sent += 1;
    };
    send(b"");
    send(b"short");
    send(&[0xffu8; 88]);
    send(&vec![0u8; 5000]);
    let mut bad_len = header(1, "echo", 10, 0);
    bad_len.extend_from_slice(b"abc");
    send(&bad_len);
    let mut unknown = header(1, "no-such-action", 0, 0);
    send(&unknown);
    unknown[5] = 2; // a reply nobody waits for
    send(&unknown);
    // Descriptors attached to a malformed message are closed by the receiver.
    {
        use std::os::fd::AsRawFd;
        let files: Vec<std::fs::File> = (0..3).map(|_| tempfile::tempfile().unwrap()).collect();
        let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let msg = header(1, "echo", 0, 1); // declares 1 fd, carries 3
        nix::sys::socket::sendmsg(
            me_raw(&me),
            &[std::io::IoSlice::new(&msg)],
            &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
            nix::sys::socket::MsgFlags::empty(),
            Some(&nix::sys::socket::UnixAddr::new(&target).unwrap()),
        )
        .unwrap();
        sent += 1;
    }
    for i in 0..200u32 {
        me.send_to(&i.to_le_bytes().repeat(1 + (i as usize % 40)), &target).unwrap();
        sent += 1;
    }
    // The primary still answers, and counted every datagram it dropped.
    assert_eq!(secs[0].cmd("req echo alive 5000"), "sent=1 received=1 payloads=alive");
    let stats = p.cmd("stats");
    let get = |k: &str| -> u64 {
        stats.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap().parse().unwrap()
    };
    assert_eq!(get("oversized"), 1, "{stats}");
    assert_eq!(get("unknown"), 1, "{stats}");
    assert_eq!(get("late"), 1, "{stats}");
    assert_eq!(get("malformed"), sent - 3, "{stats}");
    assert_eq!(fd_count(p.pid()), fds_before, "descriptors of dropped messages were closed");
    finish(lab, p, secs);
}

fn me_raw(s: &UnixDatagram) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    s.as_raw_fd()
}

#[test]
fn a_datagram_from_another_uid_is_dropped() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to send from another uid");
        return;
    }
    let (lab, mut p, secs) = lab_with("foreign", 0);
    use std::os::unix::fs::PermissionsExt;
    let dir = lab.runtime_dir();
    // Open the way for uid 65534 (the channel itself still refuses it).
    for d in [lab.xdg.path().to_path_buf(), lab.xdg.path().join("hotplug-lab"), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(dir.join("mp_socket"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut msg = header(0, "echo", 0, 0);
    msg.truncate(88);
    let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        "import socket;s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);s.sendto(bytes.fromhex('{hex}'),'{}')",
        dir.join("mp_socket").display()
    );
    use std::os::unix::process::CommandExt;
    let st = std::process::Command::new("python3").arg("-c").arg(script).uid(65534).gid(65534).status();
    match st {
        Ok(s) if s.success() => {}
        other => panic!("could not send as uid 65534: {other:?}"),
    }
    let mut stats = String::new();
    for _ in 0..50 {
        stats = p.cmd("stats");
        if stats.contains("foreign=1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stats.contains("foreign=1"), "{stats}");
    finish(lab, p, secs);
}

#[test]
fn a_zone_reserved_by_the_primary_is_read_and_written_by_a_secondary() {
    let (lab, mut p, mut secs) = lab_with("zone", 1);
    assert!(p.cmd("zone-reserve shared hello").starts_with("zone shared at "));
    assert_eq!(secs[0].cmd("zone-read shared"), "text=hello");
    assert_eq!(secs[0].cmd("zone-write shared from-secondary"), "written");
    assert_eq!(p.cmd("zone-read shared"), "text=from-secondary");
    assert_eq!(secs[0].cmd("zone-read missing"), "error: memzone \"missing\" not found");
    finish(lab, p, secs);
}

/// A secondary SIGKILLed while it holds the shared-memory lock (the memzone table's) wedges
/// nobody: the primary's next reservation takes the lock over from the dead pid, and a new
/// secondary starts and reads the zone.
#[test]
fn a_secondary_killed_holding_the_shared_lock_wedges_nobody() {
    let (lab, mut p, mut secs) = lab_with("lockdeath", 1);
    let mut s = secs.pop().unwrap();
    s.send("lock-hold");
    assert_eq!(s.line_within(Duration::from_secs(10)), "holding the shared lock");
    s.kill();
    p.send("zone-reserve after hello");
    let a = p.line_within(Duration::from_secs(10));
    assert!(a.starts_with("zone after at "), "{a}");
    let mut s2 = start(&lab, &["--proc-type=auto"]);
    assert_eq!(s2.cmd("zone-read after"), "text=hello");
    finish(lab, p, vec![s2]);
}

#[test]
fn ring_and_pool_work_across_processes() {
    let (lab, mut p, mut secs) = lab_with("ringpool", 2);
    assert_eq!(p.cmd("ring-create r"), "ring created");
    // Two producer processes, one consumer process.
    secs[0].send("ring-produce r 0 100000");
    secs[1].send("ring-produce r 100000 100000");
    let want: u64 = (0..200000u64).sum();
    assert_eq!(p.cmd("ring-consume r 200000"), format!("consumed=200000 sum={want}"));
    assert_eq!(secs[0].line(), "produced=100000");
    assert_eq!(secs[1].line(), "produced=100000");
    // Buffers allocated in one process, checked and freed in another.
    assert_eq!(p.cmd("pool-create pool 512"), "pool created");
    assert_eq!(p.cmd("ring-create handoff"), "ring created");
    secs[0].send("pool-send pool handoff 20000");
    assert_eq!(secs[1].cmd("pool-recv pool handoff 20000"), "pool-received=20000 bad=0");
    assert_eq!(secs[0].line(), "pool-sent=20000");
    assert_eq!(p.cmd("pool-avail pool"), "avail=512");
    finish(lab, p, secs);
}

/// Processes SIGKILLed inside a ring enqueue and a dequeue (reserved, half done, never
/// published) wedge no other process: the next producer publishes the dead range as tombstones,
/// the next consumer the dead consumer's, and values flow between the survivors as before.
#[test]
fn processes_killed_inside_ring_operations_wedge_no_other() {
    let (lab, mut p, mut secs) = lab_with("ringdeath", 3);
    assert_eq!(p.cmd("ring-create r"), "ring created");
    let killed = |mut s: Proc, cmd: &str| {
        s.send(cmd);
        let (st, _) = s.exit_and_stderr();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL), "{cmd}");
    };
    killed(secs.remove(0), "ring-die-enqueue r");
    secs[0].send("ring-produce r 0 1000");
    let want: u64 = (0..1000u64).sum();
    assert_eq!(p.cmd("ring-consume r 1000"), format!("consumed=1000 sum={want}"));
    assert_eq!(secs[0].line(), "produced=1000");
    // A consumer dies holding the first 8 of 16 values: those are lost, the rest come through.
    assert_eq!(secs[0].cmd("ring-produce r 0 16"), "produced=16");
    killed(secs.remove(1), "ring-die-dequeue r");
    let want: u64 = (8..16u64).sum();
    assert_eq!(p.cmd("ring-consume r 8"), format!("consumed=8 sum={want}"));
    finish(lab, p, secs);
}

#[test]
fn a_secondary_refuses_a_mapping_that_is_not_the_primarys() {
    let (lab, p, secs) = lab_with("mismatch", 0);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(lab.shm_file()).unwrap();
    // Mapped, not read with pread: on hugetlbfs (where the runtime puts the file when pages are
    // free) read(2)/write(2) are refused. 2 MiB: a whole huge page, within the file either way.
    // SAFETY: the file is the lab's memory file, at least 2 MiB; this map is dropped below, and
    // the bytes poked (the header's version) are plain data.
    let mut m = unsafe { memmap2::MmapOptions::new().len(2 << 20).map_mut(&f) }.unwrap();
    let version: [u8; 4] = m[8..12].try_into().unwrap();
    m[8..12].copy_from_slice(&99u32.to_le_bytes());
    let (st, err) = lab.spawn(PEER, &["--proc-type=secondary"]).exit_and_stderr();
    assert!(!st.success());
    assert!(err.contains("version is 0x63, expected 0x1"), "{err}");
    m[8..12].copy_from_slice(&version);
    drop(m);
    let s = start(&lab, &["--proc-type=secondary"]);
    finish(lab, p, vec![s]);
    drop(secs);
}

/// A primary whose /dev/shm is full (a 4 MiB tmpfs over it, in a mount namespace of its own, so
/// the machine's /dev/shm is untouched) refuses to start with one error naming the mount and
/// the sizes, and leaves no memory file there and no runtime dir. Before, the file was sized
/// sparse and the first touch of a page past the mount's room was a SIGBUS.
#[test]
fn a_full_dev_shm_at_start_is_a_clear_error_and_leaves_nothing() {
    let root = nix::unistd::geteuid().is_root();
    let unshare = std::process::Command::new("unshare").arg("--version").output().is_ok_and(|o| o.status.success());
    if !root || !unshare {
        eprintln!("skipped: needs root and unshare (util-linux) for a mount namespace");
        return;
    }
    let lab = Lab::new("shmfull");
    let script = format!(
        "mount -t tmpfs -o size=4m lab-full /dev/shm || exit 97; \
         {PEER} --file-prefix={} --proc-type=primary --no-huge -m 64 </dev/null; echo rc=$?; ls -A /dev/shm",
        lab.prefix
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("XDG_RUNTIME_DIR", lab.xdg.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("unshare");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(97) {
        eprintln!("skipped: cannot mount a tmpfs in a mount namespace here: {stderr}");
        return;
    }
    let file = lab.shm_candidates()[0].clone();
    let want = format!("no room for the 64 MiB shared memory file {}", file.display());
    assert!(stderr.contains(&want) && stderr.contains("on /dev/shm (4 MiB free there)"), "{stderr}");
    let mut lines = stdout.lines();
    let rc = lines.next().unwrap_or_default();
    assert!(rc.starts_with("rc=") && rc != "rc=0", "{stdout}");
    assert_eq!(lines.collect::<Vec<_>>(), Vec::<&str>::new(), "left in the full /dev/shm: {stdout}");
    lab.assert_clean();
}
