//! Telemetry v2 in real lab processes: the protocol DPDK's client speaks, bad input, many and
//! stalled clients, and DPDK's own `dpdk-telemetry.py` when it is installed.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Lab, Proc};
use lab_core::sys::{seqpacket_connect, seqpacket_recv, seqpacket_send};
use lab_core::telemetry::{MAX_CONNECTIONS, MAX_OUTPUT_LEN, SOCKET_NAME};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_lab-mp-peer");

fn start(lab: &Lab, args: &[&str]) -> Proc {
    let mut p = lab.spawn(PEER, args);
    let l = p.line();
    assert!(l.starts_with("ready "), "unexpected first line {l:?}; stderr: {}", p.stderr());
    p
}

struct Client {
    fd: OwnedFd,
    greeting: Value,
}

fn recv_json(fd: &OwnedFd) -> Value {
    let mut buf = vec![0u8; MAX_OUTPUT_LEN];
    let (n, _) = seqpacket_recv(fd.as_fd(), &mut buf, false).expect("recv");
    assert!(n > 0, "telemetry closed the connection");
    serde_json::from_slice(&buf[..n])
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&buf[..n])))
}

fn connect(path: &Path) -> Client {
    let fd = seqpacket_connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    lab_core::sys::set_recv_timeout(fd.as_fd(), 30_000).expect("timeout");
    let greeting = recv_json(&fd);
    Client { fd, greeting }
}

impl Client {
    fn ask(&self, cmd: &[u8]) -> Value {
        seqpacket_send(self.fd.as_fd(), cmd).expect("send");
        recv_json(&self.fd)
    }
    fn get(&self, cmd: &str) -> Value {
        let v = self.ask(cmd.as_bytes());
        let name = cmd.split(',').next().unwrap();
        let obj = v.as_object().unwrap_or_else(|| panic!("{cmd}: not an object: {v}"));
        assert_eq!(obj.len(), 1, "{cmd}: {v}");
        obj.get(name).unwrap_or_else(|| panic!("{cmd}: answer keyed otherwise: {v}")).clone()
    }
}

fn sock(lab: &Lab, instance: u32) -> PathBuf {
    let d = lab.runtime_dir();
    if instance == 0 {
        d.join(SOCKET_NAME)
    } else {
        d.join(format!("{SOCKET_NAME}:{instance}"))
    }
}

#[test]
fn every_process_serves_dpdk_telemetry_v2() {
    let lab = Lab::new("tel-shape");
    let p = start(&lab, &["--proc-type=auto", "--", "app-arg", "-x"]);
    let s = start(&lab, &["--proc-type=auto"]);

    let mode = std::fs::metadata(sock(&lab, 0)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "telemetry socket mode");
    for (instance, proc, role) in [(0, &p, "primary"), (1, &s, "secondary")] {
        let c = connect(&sock(&lab, instance));
        assert_eq!(c.greeting["pid"], proc.pid());
        assert_eq!(c.greeting["max_output_len"], MAX_OUTPUT_LEN);
        assert!(c.greeting["version"].is_string(), "{}", c.greeting);

        let list = c.get("/");
        let list: Vec<&str> = list.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for cmd in ["/", "/help", "/info", "/eal/params", "/eal/app_params", "/lab/process", "/lab/ipc"] {
            assert!(list.contains(&cmd), "{cmd} missing from {list:?}");
        }
        let help = c.get("/help,/eal/params");
        assert!(help["/eal/params"].as_str().unwrap().contains("EAL"), "{help}");
        assert_eq!(c.get("/info")["pid"], proc.pid());

        let params = c.get("/eal/params");
        let params: Vec<&str> = params.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(params.contains(&format!("--file-prefix={}", lab.prefix).as_str()), "{params:?}");
        assert!(params.contains(&format!("--proc-type={role}").as_str()), "{params:?}");

        let me = c.get("/lab/process");
        assert_eq!(me["role"], role);
        assert_eq!(me["pid"], proc.pid());
        assert_eq!(me["prefix"], lab.prefix.as_str());
        assert_eq!(me["telemetry_instance"], instance);
        assert_eq!(me["primary_pid"], p.pid());
        let ipc = c.get("/lab/ipc");
        assert!(ipc["received"].is_u64() && ipc["dropped"]["malformed"].is_u64(), "{ipc}");
    }
    let c = connect(&sock(&lab, 0));
    assert_eq!(c.get("/eal/app_params"), serde_json::json!(["app-arg", "-x"]));
    drop(c);

    assert!(s.quit().success());
    assert!(!sock(&lab, 1).exists(), "a secondary's telemetry socket outlives it");
    assert!(p.quit().success());
    lab.assert_clean();
}

#[test]
fn bad_commands_get_null_and_disturb_nothing() {
    let lab = Lab::new("tel-bad");
    let mut p = start(&lab, &["--proc-type=auto"]);
    let c = connect(&sock(&lab, 0));
    let null = |cmd: &[u8], key: &str| {
        let v = c.ask(cmd);
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        assert!(v[key].is_null(), "{:?} -> {v}", String::from_utf8_lossy(cmd));
    };
    null(b"/no/such/command", "/no/such/command");
    null(b"no-slash", "no-slash");
    null(b"/help", "/help"); // missing parameter
    null(b"/help,/nope", "/help"); // bad parameter
    let big = vec![b'/'; 10 * 1024];
    let v = c.ask(&big);
    assert!(v.as_object().unwrap().values().all(Value::is_null), "{v}");
    let v = c.ask(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2]);
    assert!(v.as_object().unwrap().values().all(Value::is_null), "{v}");
    // The same connection and the process both still work.
    assert_eq!(c.get("/info")["pid"], p.pid());
    assert_eq!(p.cmd("req echo hi 5000"), "sent=0 received=0 payloads=");
    let own = c.get("/lab/telemetry");
    assert!(own["null_answers"].as_u64().unwrap() >= 6, "{own}");
    drop(c);
    assert!(p.quit().success());
    lab.assert_clean();
}

#[test]
fn many_and_stalled_clients_block_nobody() {
    let lab = Lab::new("tel-many");
    let p = start(&lab, &["--proc-type=auto"]);
    let path = sock(&lab, 0);

    // A client that sends commands and never reads its answers is closed, not waited for.
    let stalled = seqpacket_connect(&path).unwrap();
    let mut sent = 0;
    for _ in 0..100_000 {
        match seqpacket_send(stalled.as_fd(), b"/eal/params") {
            Ok(_) => sent += 1,
            Err(_) => break, // the server closed it (EPIPE) or our buffer is full
        }
    }
    assert!(sent > 0);
    // Meanwhile others are served.
    let c = connect(&path);
    assert_eq!(c.get("/info")["pid"], p.pid());
    drop(c);

    // 100 connections at once: up to the limit get a greeting, the rest are closed cleanly.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let fd = seqpacket_connect(&path).unwrap();
        lab_core::sys::set_recv_timeout(fd.as_fd(), 30_000).unwrap();
        let mut buf = vec![0u8; 1024];
        match seqpacket_recv(fd.as_fd(), &mut buf, false) {
            Ok((n, _)) if n > 0 => open.push(fd),
            _ => refused += 1,
        }
    }
    drop(stalled);
    assert!(open.len() <= MAX_CONNECTIONS && open.len() >= MAX_CONNECTIONS - 2, "{} served", open.len());
    assert!(refused >= 100 - MAX_CONNECTIONS, "{refused} refused");
    drop(open);
    // Once they are gone, a new client gets in (the server notices closed ones on its next poll).
    let c = connect(&path);
    assert_eq!(c.get("/info")["pid"], p.pid());
    let own = c.get("/lab/telemetry");
    assert!(own["refused"].as_u64().unwrap() + own["evicted"].as_u64().unwrap() >= 80, "{own}");
    drop(c);
    assert!(p.quit().success());
    lab.assert_clean();
}

#[test]
fn dpdk_telemetry_py_reaches_a_primary_and_a_secondary() {
    let Some(script) = ["/usr/bin/dpdk-telemetry.py", "/usr/local/bin/dpdk-telemetry.py"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("skipped: dpdk-telemetry.py not installed (Debian package dpdk-dev)");
        return;
    };
    let lab = Lab::new("tel-dpdk");
    let p = start(&lab, &["--proc-type=auto"]);
    let s = start(&lab, &["--proc-type=auto"]);
    let base = lab_core::telemetry::dpdk_runtime_directory(&lab.runtime_dir());
    for (instance, proc, role) in [(0, &p, "primary"), (1, &s, "secondary")] {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args(["-f", &lab.prefix, "-i", &instance.to_string()])
            .env("RUNTIME_DIRECTORY", &base)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"/lab/process\n/eal/params\nquit\n")?;
                c.wait_with_output()
            })
            .expect("run dpdk-telemetry.py");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        let answers: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(answers.len(), 2, "{text}");
        assert_eq!(answers[0]["/lab/process"]["pid"], proc.pid());
        assert_eq!(answers[0]["/lab/process"]["role"], role);
        assert!(answers[1]["/eal/params"].is_array(), "{text}");
    }
    // A DPDK application's own runtime dir is not where the lab puts anything.
    assert!(!base.join("dpdk").join(&lab.prefix).join(SOCKET_NAME).starts_with("/var/run/dpdk"));
    assert!(s.quit().success());
    assert!(p.quit().success());
    lab.assert_clean();
}

/// A real DPDK application (dpdk-testpmd) under the same user and the same file prefix as a lab:
/// both serve telemetry, each answers as itself, and the lab leaves DPDK's runtime dir as it was.
#[test]
fn a_dpdk_application_with_the_same_prefix_is_left_alone() {
    let lab = Lab::new("dpdk-beside");
    let mut dpdk = match lab_testkit::Testpmd::start(lab.xdg.path(), &lab.prefix, None) {
        Ok(t) => t,
        Err(lab_testkit::TestpmdError::Missing) => {
            eprintln!("skipped: {}", lab_testkit::TestpmdError::Missing);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let (dpdk_dir, dpdk_sock) = (dpdk.dir().to_path_buf(), dpdk.sock.clone());
    let listing = |d: &Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect();
        v.sort();
        v
    };
    let before = listing(&dpdk_dir);

    let p = start(&lab, &["--proc-type=auto"]);
    let s = start(&lab, &["--proc-type=auto"]);
    let mine = connect(&sock(&lab, 0));
    assert_eq!(mine.greeting["pid"], p.pid(), "the lab's socket is the lab's");
    assert_eq!(mine.get("/lab/process")["prefix"], lab.prefix.as_str());
    let theirs = connect(&dpdk_sock);
    assert_eq!(theirs.greeting["pid"], dpdk.pid(), "DPDK's socket is still DPDK's");
    assert!(theirs.get("/ethdev/list").is_array());
    drop((mine, theirs));
    assert!(s.quit().success());
    assert!(p.quit().success());
    lab.assert_clean();
    assert_eq!(listing(&dpdk_dir), before, "DPDK's runtime dir as it was");
    assert!(dpdk.is_running(), "dpdk-testpmd still runs");
}
