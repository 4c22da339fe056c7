//! The scenario library through the `lab` binary: every scenario of harness/scenarios passes (or is
//! skipped for a missing driver), the reports parse, and the fault sweep holds on the smallest
//! scenario.

use std::process::Stdio;

mod lab_common;

use lab_common::{ensure_lab_nic, lab, leftovers, scenarios_dir};

#[test]
fn the_scenario_library_passes() {
    ensure_lab_nic();
    let tmp = tempfile::tempdir().unwrap();
    let junit = tmp.path().join("junit.xml");
    let json = tmp.path().join("report.json");
    let child = lab(tmp.path())
        .args(["run", "-j", "2", "--junit"])
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .arg(scenarios_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lab run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("01-attach-from-primary") && stdout.contains(" 0 failed"), "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cases = j["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "{j}");
    assert_eq!(j["failed"], 0);
    for c in cases {
        match c["result"].as_str().unwrap() {
            "passed" => {}
            "skipped" => assert!(c["skip_reason"].as_str().unwrap().starts_with("no driver for"), "{c}"),
            other => panic!("{other}: {c}"),
        }
    }
    let x = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(x.matches("<testcase ").count(), cases.len(), "{x}");
    assert_eq!(leftovers(tmp.path(), Some(pid)), Vec::<String>::new());
}

#[test]
fn the_fault_sweep_holds_on_the_smallest_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("sweep.json");
    let out = lab(tmp.path())
        .args(["sweep", "-j", "3", "--json"])
        .arg(&json)
        .arg(scenarios_dir().join("05-attach-detach-cycle.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lab sweep failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // primary and s1, x attach/pre-detach/detach, x fail/hang/crash.
    assert_eq!(j["cases"].as_array().unwrap().len(), 18, "{j}");
    assert_eq!(j["passed"], 18, "{stdout}");
    assert!(stdout.contains("[s1 attach crash]") && stdout.contains("[primary detach hang]"), "{stdout}");
    assert_eq!(leftovers(tmp.path(), None), Vec::<String>::new());
}
