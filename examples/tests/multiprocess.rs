//! DPDK's multi-process samples, run as the DTS `multiprocess` test plan runs them: real
//! processes of our `simple_mp` and `symmetric_mp` with DPDK's arguments and commands, reading
//! their output as DTS does.
//!
//! `simple_mp`: a primary and a secondary (`--proc-type=auto`) carry 5,000 strings each way;
//! a second primary is refused.
//!
//! A hotplug while symmetric_mp runs: the NIC the mix comes from is attached from a
//! `hotplug_mp` secondary once the processes run, every process starts polling it and takes its
//! RSS share; detached again, every process stops.
//!
//! `client_server_mp`: `mp_server` hands what the first 82599 receives to 2 `mp_client`s round
//! robin, each sends its half out of the second 82599.
//!
//! `symmetric_mp` with 2 and 4 processes: lab-nic replays a flow mix (a pcap) into the first
//! 82599; each process polls its own queue and forwards to the second 82599, whose wire records
//! what it sends. Every process must receive exactly its RSS share of the mix (the share is
//! computed here with a Toeplitz hash of this file's own, over DPDK's default key and the
//! round-robin redirection table), the shares must add up to what was sent, and every frame
//! must come out of the second port byte for byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_testkit::proc::Proc;
use lab_testkit::LabNic;

const SYMMETRIC_MP: &str = env!("CARGO_BIN_EXE_symmetric_mp");
const SIMPLE_MP: &str = env!("CARGO_BIN_EXE_simple_mp");
const MP_SERVER: &str = env!("CARGO_BIN_EXE_mp_server");
const MP_CLIENT: &str = env!("CARGO_BIN_EXE_mp_client");
const A: &str = "0000:00:05.0";
const B: &str = "0000:00:06.0";
const WAIT: Duration = Duration::from_secs(30);

/// The Toeplitz hash, bit by bit, as Microsoft's RSS documentation states it.
fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let bit = |k: usize| key.get(k / 8).is_some_and(|b| b & (0x80 >> (k % 8)) != 0);
    let mut h = 0u32;
    for i in 0..input.len() * 8 {
        if input[i / 8] & (0x80 >> (i % 8)) != 0 {
            h ^= (0..32).fold(0u32, |w, j| w << 1 | u32::from(bit(i + j)));
        }
    }
    h
}

/// A broadcast UDP/IPv4 frame of flow `f`, `seq` in its payload.
fn udp_frame(f: u32, seq: u32) -> Vec<u8> {
    let mut x = vec![0u8; 64];
    x[..6].fill(0xff);
    x[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x77, 0x01]);
    x[12..14].copy_from_slice(&[0x08, 0x00]);
    x[14..24].copy_from_slice(&[0x45, 0, 0, 50, 0, 1, 0, 0, 64, 17]);
    x[26..30].copy_from_slice(&[10, 0, (f >> 8) as u8, f as u8]);
    x[30..34].copy_from_slice(&[10, 1, 0, (f % 7) as u8]);
    x[34..36].copy_from_slice(&(1024 + f as u16).to_be_bytes());
    x[36..38].copy_from_slice(&(5000 + (f as u16 % 13)).to_be_bytes());
    x[42..46].copy_from_slice(&seq.to_be_bytes());
    x
}

/// The hash input of a frame made by [`udp_frame`]: addresses, then ports.
fn flow_input(x: &[u8]) -> Vec<u8> {
    [&x[26..34], &x[34..38]].concat()
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for f in frames {
        for v in [0u32, 0, f.len() as u32, f.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).expect("write pcap");
}

/// The frames of a classic pcap (as lab-nic writes them, little-endian).
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    let (mut o, mut out) = (24, Vec::new());
    while o + 16 <= b.len() {
        let n = u32::from_le_bytes([b[o + 8], b[o + 9], b[o + 10], b[o + 11]]) as usize;
        if o + 16 + n > b.len() {
            break;
        }
        out.push(b[o + 16..o + 16 + n].to_vec());
        o += 16 + n;
    }
    out
}

/// One test's lab: its runtime dir, file prefix, lab-nic; the processes it starts die with it.
struct MpLab {
    xdg: tempfile::TempDir,
    prefix: String,
    nic: Option<LabNic>,
}

impl MpLab {
    fn command(&self, bin: &str, eal: &[&str], app: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.arg(format!("--file-prefix={}", self.prefix))
            .args(eal)
            .arg("--")
            .args(app)
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(nic) = &self.nic {
            c.env("SYSFS_PCI_DEVICES", nic.root());
        }
        c
    }

    fn runtime_dir(&self) -> PathBuf {
        self.xdg.path().join("hotplug-lab").join(&self.prefix)
    }
}

impl Drop for MpLab {
    fn drop(&mut self) {
        for f in lab_core::mem::possible_files(&self.prefix) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A lab of two 82599s: the first's wire replays a mix of 2,000 UDP frames (97 flows) from a
/// pcap, the second's records what it sends in another. The lab, the mix and that pcap.
fn pcap_lab(tag: &str) -> (MpLab, Vec<Vec<u8>>, PathBuf) {
    let xdg = tempfile::tempdir().expect("tempdir");
    let (input, empty) = (xdg.path().join("in.pcap"), xdg.path().join("empty.pcap"));
    let (out_a, out_b) = (xdg.path().join("out-a.pcap"), xdg.path().join("out-b.pcap"));
    let frames: Vec<Vec<u8>> = (0..2000u32).map(|i| udp_frame(i % 97, i)).collect();
    write_pcap(&input, &frames);
    write_pcap(&empty, &[]);
    let nic = LabNic::builder()
        .dev(format!("{A},model=ixgbe,wire=pcap={}:{}", input.display(), out_a.display()))
        .dev(format!("{B},model=ixgbe,wire=pcap={}:{}", empty.display(), out_b.display()))
        .start();
    (MpLab { prefix: format!("{tag}-{}", std::process::id()), xdg, nic: Some(nic) }, frames, out_b)
}

/// Waits for a stdout line of `p` containing `needle`; the lines before it are returned too.
fn wait_line(p: &mut Proc, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(l) = p.try_line(Duration::from_millis(200)) {
            let hit = l.contains(needle);
            seen.push(l);
            if hit {
                return seen;
            }
        }
    }
    panic!("pid {}: no line with {needle:?} in {WAIT:?}: {seen:?}; stderr: {}", p.pid(), p.stderr());
}

/// `Port P: RX - n, TX - n, Drop - n` lines, by port.
fn port_lines(lines: &[String]) -> HashMap<u16, (u64, u64, u64)> {
    let mut m = HashMap::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("Port ") else { continue };
        let nums: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("number"))
            .collect();
        if let [p, rx, tx, drop] = nums[..] {
            m.insert(p as u16, (rx, tx, drop));
        }
    }
    m
}

fn symmetric_mp_spreads_the_flow_mix_by_rss(procs: u16) {
    let (lab, frames, out_b) = pcap_lab(&format!("smp{procs}"));
    let n = procs.to_string();
    let eal = ["--proc-type=auto", "--allow", A, "--allow", B];
    let start = |id: u16| {
        let id = id.to_string();
        Proc::spawn(lab.command(SYMMETRIC_MP, &eal, &["-p", "3", "--num-procs", &n, "--proc-id", &id]))
    };
    let mut ps = vec![start(0)];
    wait_line(&mut ps[0], "using ports 0 and 1, queue 0");
    for id in 1..procs {
        let mut p = start(id);
        wait_line(&mut p, &format!("using ports 0 and 1, queue {id}"));
        ps.push(p);
    }
    // Until the processes received the whole mix: port 0's receive queues, as DPDK's
    // telemetry (`/ethdev/stats`, q_ipackets) reports them from the primary.
    let sock = lab.runtime_dir().join(lab_core::telemetry::SOCKET_NAME);
    let mut t = lab_core::telemetry::Client::connect(&sock, WAIT).expect("telemetry");
    let received = |t: &mut lab_core::telemetry::Client| {
        let v = t.query(&sock, "/ethdev/stats,0").expect("stats");
        let q: Vec<u64> = v["q_ipackets"].as_array().expect("q_ipackets").iter().map(|x| x.as_u64().unwrap()).collect();
        q
    };
    let deadline = Instant::now() + WAIT;
    while received(&mut t).iter().sum::<u64>() < frames.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "queues received {:?} of {}; A: {}",
            received(&mut t),
            frames.len(),
            lab.nic.as_ref().unwrap().command(&format!("stats {A}"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let per_queue = received(&mut t);
    drop(t);
    // SIGINT, secondaries first; each prints its counters as DPDK's does and exits.
    let mut shares = Vec::new();
    for p in ps.iter_mut().rev() {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
        let lines = wait_line(p, "Port 1:");
        shares.push(port_lines(&lines));
    }
    shares.reverse();
    for p in ps.iter_mut() {
        let deadline = Instant::now() + WAIT;
        while p.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "pid {} did not exit after SIGINT", p.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Each process's share is the flows whose hash its queue's entries hold.
    let key = lab_core::rss::DEFAULT_KEY;
    let mut want = vec![0u64; usize::from(procs)];
    for f in &frames {
        want[(toeplitz(&key, &flow_input(f)) & 127) as usize % usize::from(procs)] += 1;
    }
    let got: Vec<u64> = shares.iter().map(|s| s[&0].0).collect();
    assert_eq!(got, want, "port 0 RX per process: each its RSS share");
    assert_eq!(&per_queue[..usize::from(procs)], &want[..], "and per queue, as the queues counted it");
    assert!(want.iter().all(|w| *w > 0), "the mix reaches every process: {want:?}");
    assert_eq!(got.iter().sum::<u64>(), frames.len() as u64);
    // What each process took off port 0 it sent on port 1 or, when port 1's ring was full (its
    // wire, a pcap file, is slower than the forwarding), dropped, as DPDK's sample does.
    let mut sent_total = 0;
    for (i, s) in shares.iter().enumerate() {
        assert_eq!(s[&1].1 + s[&1].2, s[&0].0, "process {i}: TX + Drop on port 1 = RX on port 0");
        sent_total += s[&1].1;
    }
    assert!(sent_total > 0);
    let deadline = Instant::now() + WAIT;
    while read_pcap(&out_b).len() < sent_total as usize {
        assert!(Instant::now() < deadline, "{} of {sent_total} sent frames on B's wire", read_pcap(&out_b).len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = read_pcap(&out_b);
    assert_eq!(out.len() as u64, sent_total, "B's wire carries exactly what the processes sent");
    let mut seqs: Vec<u32> = out.iter().map(|f| u32::from_be_bytes([f[42], f[43], f[44], f[45]])).collect();
    assert!(
        out.iter().all(|f| *f == frames[u32::from_be_bytes([f[42], f[43], f[44], f[45]]) as usize]),
        "byte for byte"
    );
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), out.len(), "no frame sent twice");
    drop(ps);
    let left = lab.runtime_dir();
    assert!(!left.exists(), "runtime dir left: {}", left.display());
}

#[test]
fn symmetric_mp_with_two_processes_receives_each_its_rss_share() {
    symmetric_mp_spreads_the_flow_mix_by_rss(2);
}

#[test]
fn symmetric_mp_with_four_processes_receives_each_its_rss_share() {
    symmetric_mp_spreads_the_flow_mix_by_rss(4);
}

#[test]
fn symmetric_mp_refuses_bad_arguments_as_dpdks_does() {
    for (args, needle) in [
        (&["-p", "1", "--num-procs", "2", "--proc-id", "0"][..], "even number"),
        (&["-p", "3", "--num-procs", "2", "--proc-id", "5"][..], "below --num-procs"),
        (&["-p", "zz", "--num-procs", "2", "--proc-id", "0"][..], "invalid portmask"),
    ] {
        let out = Command::new(SYMMETRIC_MP).arg("--no-pci").arg("--").args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// The strings `p` printed as received, until `n` of them came (or [`WAIT`] passed).
fn received_strings(p: &mut Proc, n: usize) -> Vec<String> {
    let (mut got, deadline) = (Vec::new(), Instant::now() + WAIT);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "pid {}: {} of {n} strings received; stderr: {}",
            p.pid(),
            got.len(),
            p.stderr()
        );
        let Some(l) = p.try_line(Duration::from_millis(200)) else { continue };
        if let Some(i) = l.find("Received '") {
            let rest = &l[i + "Received '".len()..];
            got.push(rest.strip_suffix('\'').unwrap_or(rest).to_string());
        }
    }
    got
}

#[test]
fn simple_mp_carries_five_thousand_strings_each_way_and_refuses_a_second_primary() {
    let lab = MpLab {
        xdg: tempfile::tempdir().expect("tempdir"),
        prefix: format!("simple-{}", std::process::id()),
        nic: None,
    };
    let mut pri = Proc::spawn(lab.command(SIMPLE_MP, &["--proc-type=primary"], &[]));
    wait_line(&mut pri, "Finished Process Init.");
    let mut sec = Proc::spawn(lab.command(SIMPLE_MP, &["--proc-type=auto"], &[]));
    wait_line(&mut sec, "Finished Process Init.");
    // A second primary on the same prefix is refused, and changes nothing for the others.
    let out = lab.command(SIMPLE_MP, &["--proc-type=primary"], &[]).stdin(Stdio::null()).output().expect("run");
    assert!(!out.status.success(), "a second primary must not start");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("primary"), "the refusal names the primary: {err}");
    // 5,000 strings each way, 50 at a time (the rings hold 64), every one received once, in order.
    let mut ps = [pri, sec];
    for (from, tag) in [(0usize, "p"), (1, "s")] {
        let mut all = Vec::new();
        for batch in 0..100 {
            let want: Vec<String> = (0..50).map(|i| format!("{tag}{}", batch * 50 + i)).collect();
            for w in &want {
                ps[from].send(&format!("send {w}"));
            }
            let got = received_strings(&mut ps[1 - from], 50);
            assert_eq!(got, want, "batch {batch} from {tag}");
            all.extend(got);
        }
        assert_eq!(all.len(), 5000);
    }
    let [mut pri, mut sec] = ps;
    sec.send("quit");
    let deadline = Instant::now() + WAIT;
    while sec.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the secondary did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    pri.send("quit");
    while pri.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the primary did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!lab.runtime_dir().exists(), "runtime dir left: {}", lab.runtime_dir().display());
    for f in lab_core::mem::possible_files(&lab.prefix) {
        assert!(!f.exists(), "memory file left: {}", f.display());
    }
}

/// A port's `/ethdev/stats` array `key` (`q_ipackets`, `q_opackets`) from the primary.
fn queue_counts(lab: &MpLab, port: u16, key: &str) -> Vec<u64> {
    let sock = lab.runtime_dir().join(lab_core::telemetry::SOCKET_NAME);
    let mut t = lab_core::telemetry::Client::connect(&sock, WAIT).expect("telemetry");
    let v = t.query(&sock, &format!("/ethdev/stats,{port}")).expect("stats");
    v[key].as_array().expect(key).iter().map(|x| x.as_u64().unwrap()).collect()
}

/// `Key N - rx: n, rx_drop: n` / `Key N: RX - n, TX - n, Drop - n`: the numbers of the line
/// starting with `prefix`.
fn numbers_of(lines: &[String], prefix: &str) -> Vec<u64> {
    let l = lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"));
    l[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

fn sigint(p: &Proc) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
}

#[test]
fn client_server_mp_hands_each_of_two_clients_its_round_robin_half() {
    let (lab, frames, out_b) = pcap_lab("csmp");
    let eal = ["--proc-type=primary", "--allow", A, "--allow", B];
    let mut server = Proc::spawn(lab.command(MP_SERVER, &eal, &["-p", "1", "-n", "2"]));
    wait_line(&mut server, "Server ready");
    let mut clients: Vec<Proc> = (0..2)
        .map(|c: u16| {
            let mut p = Proc::spawn(lab.command(MP_CLIENT, &["--proc-type=secondary"], &["-n", &c.to_string()]));
            wait_line(&mut p, &format!("Client process {c} handling packets"));
            p
        })
        .collect();
    // The server received the mix (its queue's counter), then the clients' sending settles.
    let deadline = Instant::now() + WAIT;
    while queue_counts(&lab, 0, "q_ipackets")[0] < frames.len() as u64 {
        assert!(Instant::now() < deadline, "the server received {:?}", queue_counts(&lab, 0, "q_ipackets"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut last = (Vec::new(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline + WAIT, "the clients kept sending");
        let now = queue_counts(&lab, 1, "q_opackets");
        if now != last.0 {
            last = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let per_client_tx = last.0;
    let mut client_lines = Vec::new();
    for (c, p) in clients.iter_mut().enumerate() {
        sigint(p);
        client_lines.push(wait_line(p, &format!("Client {c}: RX")));
    }
    sigint(&server);
    let server_lines = wait_line(&mut server, "Client 1 - rx");
    assert_eq!(numbers_of(&server_lines, "Port 0 - rx:"), vec![frames.len() as u64]);
    let mut sent = 0;
    for c in 0..2u16 {
        let s = numbers_of(&server_lines, &format!("Client {c} - rx:"));
        assert_eq!(s, vec![1000, 0], "client {c}: half the mix, nothing dropped at its ring");
        let own = numbers_of(&client_lines[usize::from(c)], &format!("Client {c}:"));
        let (rx, tx, drop) = (own[0], own[1], own[2]);
        assert_eq!(rx, 1000, "client {c} took all its ring held");
        assert_eq!(tx + drop, rx, "client {c}: TX + Drop = RX");
        assert_eq!(tx, per_client_tx[usize::from(c)], "client {c} sent on its own queue {c}");
        sent += tx;
    }
    let deadline = Instant::now() + WAIT;
    while (read_pcap(&out_b).len() as u64) < sent {
        assert!(Instant::now() < deadline, "{} of {sent} on B's wire", read_pcap(&out_b).len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = read_pcap(&out_b);
    assert_eq!(out.len() as u64, sent);
    assert!(
        out.iter().all(|f| *f == frames[u32::from_be_bytes([f[42], f[43], f[44], f[45]]) as usize]),
        "byte for byte"
    );
    for p in clients.iter_mut().chain(std::iter::once(&mut server)) {
        let deadline = Instant::now() + WAIT;
        while p.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "pid {} did not exit after SIGINT", p.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(!lab.runtime_dir().exists(), "runtime dir left: {}", lab.runtime_dir().display());
}

/// Our `hotplug_mp` (the harness's), built next to this test if it is missing.
fn hotplug_mp_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).expect("target dir");
    let bin = dir.join("hotplug_mp");
    if !bin.exists() {
        let st = Command::new(env!("CARGO")).args(["build", "-p", "lab-harness", "--bin", "hotplug_mp"]).status();
        assert!(st.is_ok_and(|s| s.success()), "building hotplug_mp failed");
    }
    bin
}

#[test]
fn symmetric_mp_polls_a_nic_attached_while_it_runs_and_lets_go_when_it_is_detached() {
    let (lab, frames, out_b) = pcap_lab("smp-hp");
    let hotplug_mp = hotplug_mp_bin();
    let eal = ["--proc-type=auto", "--allow", B];
    let start = |id: u16| {
        let id = id.to_string();
        Proc::spawn(lab.command(SYMMETRIC_MP, &eal, &["-p", "3", "--num-procs", "2", "--proc-id", &id]))
    };
    let mut ps = vec![start(0)];
    wait_line(&mut ps[0], "Process 0 of 2 ready, 1 port(s)");
    ps.push(start(1));
    wait_line(&mut ps[1], "Process 1 of 2 ready, 1 port(s)");
    // The source NIC comes now, attached from another secondary: it is port 1, paired with 0.
    let mut op = Proc::spawn(lab.command(hotplug_mp.to_str().unwrap(), &["--proc-type=secondary"], &[]));
    op.send(&format!("attach {A}"));
    wait_line(&mut op, &format!("attached device {A}"));
    for (i, p) in ps.iter_mut().enumerate() {
        wait_line(p, &format!("using ports 0 and 1, queue {i}"));
    }
    let deadline = Instant::now() + WAIT;
    while queue_counts(&lab, 1, "q_ipackets").iter().sum::<u64>() < frames.len() as u64 {
        assert!(Instant::now() < deadline, "received {:?}", queue_counts(&lab, 1, "q_ipackets"));
        std::thread::sleep(Duration::from_millis(50));
    }
    op.send(&format!("detach {A}"));
    wait_line(&mut op, &format!("detached device {A}"));
    for (i, p) in ps.iter_mut().enumerate() {
        wait_line(p, &format!("has no port pair to forward, queue {i}"));
    }
    let mut shares = Vec::new();
    for p in ps.iter_mut().rev() {
        sigint(p);
        shares.push(port_lines(&wait_line(p, "Port 1:")));
    }
    shares.reverse();
    let key = lab_core::rss::DEFAULT_KEY;
    let mut want = vec![0u64; 2];
    for f in &frames {
        want[(toeplitz(&key, &flow_input(f)) & 127) as usize % 2] += 1;
    }
    let got: Vec<u64> = shares.iter().map(|s| s[&1].0).collect();
    assert_eq!(got, want, "port 1 (attached while running) RX per process: each its RSS share");
    let sent: u64 = shares.iter().map(|s| s[&0].1).sum();
    assert!(shares.iter().all(|s| s[&0].1 + s[&0].2 == s[&1].0), "TX + Drop on port 0 = RX on port 1");
    let deadline = Instant::now() + WAIT;
    while (read_pcap(&out_b).len() as u64) < sent {
        assert!(Instant::now() < deadline, "{} of {sent} on B's wire", read_pcap(&out_b).len());
        std::thread::sleep(Duration::from_millis(50));
    }
    op.send("quit");
    for p in ps.iter_mut().chain(std::iter::once(&mut op)) {
        let deadline = Instant::now() + WAIT;
        while p.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "pid {} did not exit", p.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(!lab.runtime_dir().exists(), "runtime dir left: {}", lab.runtime_dir().display());
}
