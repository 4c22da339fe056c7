//! The `lab` runner itself: a failing scenario is reported where it failed, bad files are refused
//! before anything starts, nothing survives a run (Ctrl-C included), reports have their structure,
//! missing drivers skip, `--real` without VFIO exits 77, and the demo runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod lab_common;

use lab_common::{ensure_lab_nic, lab, leftovers, run_processes, LAB};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A short interface name unique to this test process.
fn ifname(tag: &str) -> String {
    format!("l{tag}{}", std::process::id() % 100_000)
}

fn iface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Elements of an XML document as paths (`testsuites/testsuite/testcase/failure`), checking that
/// every tag is closed in order.
fn xml_paths(x: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut rest = x;
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
            continue;
        }
        let name = tag.split_whitespace().next().unwrap().trim_end_matches('/').to_string();
        stack.push(name);
        out.push(stack.join("/"));
        if tag.ends_with('/') {
            stack.pop();
        }
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
    out
}

const FAILING: &str = r#"
[lab]
secondaries = 2
vdevs = ["net_null0"]

[[step]]
on = "s1"
attach = "net_null1"

[[step]]
on = "s2"
detach = 0
ports = { 0 = "net_null0", 1 = "net_null1" }
"#;

#[test]
fn a_failing_scenario_says_which_step_which_process_and_what_each_saw() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "wrong-expectation.toml", FAILING);
    let ok = write(tmp.path(), "fine.toml", "[lab]\n[[step]]\nattach = \"net_null3\"\n");
    let bad_answer =
        write(tmp.path(), "bad-answer.toml", "[lab]\n[[step]]\non = \"s1\"\nattach = \"net_null0,size=99999\"\n");
    let (junit, json) = (tmp.path().join("j.xml"), tmp.path().join("r.json"));
    let child = lab(tmp.path())
        .args(["run", "--junit"])
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .args([&f, &ok, &bad_answer])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("step 2 (s2: detach 0, line 10) in every process"), "{stdout}");
    assert!(stdout.contains("every process lists 1 net_null1, expected 0 net_null0, 1 net_null1"), "{stdout}");
    assert!(stdout.contains("s1 sees: 1 net_null1") && stdout.contains("primary sees: 1 net_null1"), "{stdout}");
    // A wrong answer names the process and the answer.
    assert!(
        stdout.contains("step 1 (s1: attach net_null0,size=99999, line 2) in s1: answered \"cannot parse devargs"),
        "{stdout}"
    );

    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let c = &j["cases"][0];
    assert_eq!(c["result"], "failed");
    assert_eq!(c["failure"]["step"], 2);
    assert_eq!(c["failure"]["line"], 10);
    assert_eq!(c["failure"]["views"].as_array().unwrap().len(), 3, "{c}");
    assert_eq!(j["cases"][1]["result"], "passed");

    let x = std::fs::read_to_string(&junit).unwrap();
    let paths = xml_paths(&x);
    assert_eq!(paths.iter().filter(|p| *p == "testsuites/testsuite").count(), 1, "{x}");
    assert_eq!(paths.iter().filter(|p| *p == "testsuites/testsuite/testcase").count(), 3, "{x}");
    assert!(paths.iter().any(|p| p == "testsuites/testsuite/testcase/failure"), "{x}");
    assert!(x.contains("line 10") && x.contains("failures=\""), "{x}");
    assert_eq!(leftovers(tmp.path(), Some(pid)), Vec::<String>::new());
}

#[test]
fn a_scenario_needing_a_missing_driver_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "foo.toml", "[lab]\nvdevs = [\"net_foo0\"]\n[[step]]\ndetach = 0\n");
    let out = lab(tmp.path()).args(["run"]).arg(&f).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("skipped: no driver for net_foo"), "{stdout}");
}

#[test]
fn bad_scenario_files_are_refused_with_file_line_and_expectation_and_nothing_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(tmp.path(), "typo.toml", "[lab]\nsecondaries = 2\n\n[[step]]\nattahc = \"net_null0\"\n");
    let b = write(tmp.path(), "two.toml", "[lab]\n[[step]]\nattach = \"x\"\ndetach = 0\n");
    let c = write(tmp.path(), "syntax.toml", "[lab]\n[[step]]\nattach = \n");
    let d = write(tmp.path(), "who.toml", "[lab]\nsecondaries = 1\n[[step]]\non = \"s4\"\nattach = \"x\"\n");
    let good = write(tmp.path(), "good.toml", "[lab]\n[[step]]\nattach = \"net_null0\"\n");
    let child = lab(tmp.path())
        .arg("run")
        .args([&good, &a, &b, &c, &d])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("typo.toml:5:1: unknown field `attahc`, expected one of"), "{err}");
    assert!(err.contains("two.toml:2:") && err.contains("expected exactly one of attach"), "{err}");
    assert!(err.contains("syntax.toml:3:"), "{err}");
    assert!(err.contains("who.toml:3:") && err.contains("on = \"s4\": expected one of"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    assert_eq!(leftovers(tmp.path(), Some(pid)), Vec::<String>::new());
}

#[test]
fn nothing_survives_a_run_with_nics_and_taps() {
    ensure_lab_nic();
    let tmp = tempfile::tempdir().unwrap();
    let (tap, wire) = (ifname("t"), ifname("w"));
    let f = write(
        tmp.path(),
        "full.toml",
        &format!(
            r#"
[lab]
secondaries = 2
vdevs = ["net_null0"]
[[lab.nic]]
bdf = "0000:00:05.0"
wire = "tap={wire}"
[[step]]
on = "s1"
attach = "net_tap0,iface={tap}"
[[step]]
on = "s2"
attach = "0000:00:05.0"
ports = {{ 0 = "net_null0", 1 = "net_tap0", 2 = "0000:00:05.0" }}
"#
        ),
    );
    let child = lab(tmp.path()).arg("run").arg(&f).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(leftovers(tmp.path(), Some(pid)), Vec::<String>::new());
    assert!(!iface_exists(&tap) && !iface_exists(&wire), "interfaces left behind");
}

#[test]
fn ctrl_c_mid_run_stops_every_process_and_removes_everything() {
    ensure_lab_nic();
    let tmp = tempfile::tempdir().unwrap();
    let tap = ifname("c");
    let f = write(
        tmp.path(),
        "long.toml",
        &format!(
            r#"
[lab]
secondaries = 2
[[lab.nic]]
bdf = "0000:00:05.0"
wire = "loopback"
[[step]]
on = "s1"
attach = "net_tap0,iface={tap}"
[[step]]
attach = "0000:00:05.0"
[[step]]
wait_ms = 60000
[[step]]
on = "s2"
detach = 0
"#
        ),
    );
    let junit = tmp.path().join("j.xml");
    let child = lab(tmp.path())
        .args(["run", "--junit"])
        .arg(&junit)
        .arg(&f)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Mid-run: the three hotplug_mp processes and lab-nic are up and the TAP exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(run_processes(Some(pid)).len() >= 4 && iface_exists(&tap)) {
        assert!(Instant::now() < deadline, "the run did not get going: {:?}", run_processes(Some(pid)));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    // Teardown must finish (a hang guard far beyond a healthy run, not a measure of speed).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            panic!("teardown after SIGINT hung");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert_eq!(leftovers(tmp.path(), Some(pid)), Vec::<String>::new());
    assert!(!iface_exists(&tap), "TAP {tap} left behind");
    assert!(
        xml_paths(&std::fs::read_to_string(&junit).unwrap()).contains(&"testsuites/testsuite/testcase/failure".into())
    );
}

#[test]
fn real_runs_without_vfio_exit_77_with_one_line() {
    if Path::new("/dev/vfio").exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "x.toml", "[lab]\n[[step]]\nattach = \"net_null0\"\n");
    let out = lab(tmp.path()).args(["run", "--real", "0000:03:00.0"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(77));
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(s.lines().count(), 1, "{s}");
    assert!(s.contains("/dev/vfio"), "{s}");
}

#[test]
fn real_runs_refuse_parallel_jobs_on_the_shared_functions() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "x.toml", "[lab]\n[[step]]\nattach = \"net_null0\"\n");
    let out = lab(tmp.path()).args(["run", "-j", "2", "--real", "0000:03:00.0"]).arg(&f).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("-j 2: --real runs one scenario at a time"), "{err}");
}

#[test]
fn a_missing_hotplug_mp_is_named_with_how_to_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lone = tmp.path().join("lab");
    std::fs::copy(LAB, &lone).unwrap();
    let out = Command::new(&lone).args(["check", "x.toml"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&tmp.path().join("hotplug_mp").display().to_string()), "{err}");
    assert!(err.contains("cargo build -p lab-harness --bin hotplug_mp"), "{err}");
}

#[test]
fn a_missing_lab_nic_fails_the_case_naming_the_path_and_the_build_command() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(LAB, bin.join("lab")).unwrap();
    std::fs::copy(Path::new(LAB).with_file_name("hotplug_mp"), bin.join("hotplug_mp")).unwrap();
    let f = write(
        tmp.path(),
        "nic.toml",
        "[lab]\n[[lab.nic]]\nbdf = \"0000:00:05.0\"\n[[step]]\nattach = \"0000:00:05.0\"\n",
    );
    let out = Command::new(bin.join("lab")).env("TMPDIR", tmp.path()).arg("run").arg(&f).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains(&bin.join("lab-nic").display().to_string()), "{s}");
    assert!(s.contains("cargo build -p lab-emu --bin lab-nic"), "{s}");
    assert_eq!(leftovers(tmp.path(), None), Vec::<String>::new());
}

#[test]
fn the_demo_runs_the_four_scenarios_without_hardware() {
    ensure_lab_nic();
    let tmp = tempfile::tempdir().unwrap();
    let out = lab(tmp.path()).arg("demo").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}\n{}", String::from_utf8_lossy(&out.stderr));
    for n in [
        "1. attach from the primary",
        "2. detach from the primary",
        "3. attach from a secondary",
        "4. detach from a secondary",
    ] {
        assert!(s.contains(n), "{s}");
    }
    assert!(s.contains("4 passed, 0 failed"), "{s}");
    assert!(s.contains("received 32 packets"), "{s}");
    assert_eq!(leftovers(tmp.path(), None), Vec::<String>::new());
}

/// `--partition K/N` splits a library over CI runners by a stable hash of the scenario name: the
/// parts are disjoint and together the whole; `lab report merge` makes their JUnit files one.
#[test]
fn partitions_are_disjoint_and_complete_and_their_reports_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    std::fs::create_dir(&dir).unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("part case {i}")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&dir, &format!("{i}.toml"), &format!("name = \"{n}\"\n[lab]\nsecondaries = 0\n[[step]]\nwait_ms = 1\n"));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    for k in 1..=3 {
        let junit = tmp.path().join(format!("part{k}.xml"));
        let out = lab(tmp.path())
            .args(["run", "--partition", &format!("{k}/3"), "--junit"])
            .arg(&junit)
            .arg(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let x = std::fs::read_to_string(&junit).unwrap();
        for n in &names {
            if x.contains(&format!("name=\"{n}\"")) {
                assert!(!seen.contains(n), "{n} in two partitions");
                seen.push(n.clone());
            }
        }
        parts.push(junit);
    }
    seen.sort();
    assert_eq!(seen, names, "every scenario in exactly one partition");
    // The same split every time (a stable hash, not a per-process one).
    let again = lab(tmp.path()).args(["run", "--partition", "hash:1/3"]).arg(&dir).output().unwrap();
    let first = std::fs::read_to_string(&parts[0]).unwrap();
    let n1 = first.matches("<testcase ").count();
    assert!(String::from_utf8_lossy(&again.stdout).contains(&format!("partition 1/3: {n1} scenarios")));

    let merged = tmp.path().join("all.xml");
    let out = lab(tmp.path()).args(["report", "merge"]).arg(&merged).args(&parts).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = std::fs::read_to_string(&merged).unwrap();
    assert!(m.contains("<testsuites name=\"lab\" tests=\"6\" failures=\"0\" skipped=\"0\""), "{m}");
    assert_eq!(m.matches("<testsuite ").count(), 1, "{m}");
    assert_eq!(xml_paths(&m).iter().filter(|p| *p == "testsuites/testsuite/testcase").count(), 6, "{m}");

    for (args, want) in [
        (vec!["run", "--partition", "4/3", "x.toml"], "--partition 4/3: expected K/N"),
        (vec!["run", "--partition", "0/3", "x.toml"], "expected K/N"),
        (vec!["check", "--partition", "1/2", "x.toml"], "--partition goes with lab run and lab sweep"),
        (vec!["report", "merge", "out.xml"], "expected `lab report merge OUT.xml IN.xml...`"),
    ] {
        let out = lab(tmp.path()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    write(tmp.path(), "bad.xml", "<testsuites><testsuite name=\"x\"><testcase>");
    let out = lab(tmp.path())
        .args(["report", "merge"])
        .arg(tmp.path().join("o.xml"))
        .arg(tmp.path().join("bad.xml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.xml"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!tmp.path().join("o.xml").exists(), "nothing written on bad input");
}
