//! `lab-fwd` as a process of a scenario file (`[lab.process.fwd] cmd = [...]`): `lab run` drives
//! the lab around it and reads its counters over telemetry, and `lab sweep` injects faults into
//! it (lab-core parses `--lab-fault`, so the app needs nothing for that).

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>`, where cargo put `lab` and `lab-fwd` for this test run.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

fn lab(args: &[&str]) -> (bool, String) {
    let lab = bin_dir().join("lab");
    if !lab.exists() {
        panic!("{} missing: build it with cargo build -p lab-harness --bin lab", lab.display());
    }
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/fwd.toml");
    let out = Command::new(lab).args(args).arg(scenario).output().expect("run lab");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn lab_run_drives_a_scenario_around_lab_fwd() {
    let (ok, text) = lab(&["run", "-v"]);
    assert!(ok, "{text}");
    assert!(text.contains("1 passed, 0 failed"), "{text}");
}

#[test]
fn lab_sweep_injects_faults_into_lab_fwd() {
    let (ok, text) = lab(&["sweep", "--case", "fwd:pre-detach:fail", "--case", "fwd:detach:crash"]);
    assert!(ok, "{text}");
    assert!(text.contains("[fwd pre-detach fail]") && text.contains("[fwd detach crash]"), "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");
}
