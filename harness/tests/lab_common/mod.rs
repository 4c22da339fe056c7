//! Helpers of the `lab` binary's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const LAB: &str = env!("CARGO_BIN_EXE_lab");

/// harness/scenarios.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Builds lab-nic (another package) next to `lab` if it is not there, keeping CARGO_TARGET_DIR.
pub fn ensure_lab_nic() {
    lab_testkit::ensure_lab_nic_in(Path::new(LAB).parent().unwrap());
}

/// `lab` with its temporary directories under `tmp` (so leftovers can be counted) and quiet logs.
pub fn lab(tmp: &Path) -> Command {
    let mut c = Command::new(LAB);
    c.env("TMPDIR", tmp).env_remove("RUST_LOG");
    c
}

/// Pids of processes whose environment has `HOTPLUG_LAB_RUN=lab<pid>-` (any lab when `pid` is None
/// and the process's TMPDIR-made directories are under `tmp`).
pub fn run_processes(lab_pid: Option<u32>) -> Vec<u32> {
    let want = match lab_pid {
        Some(p) => format!("HOTPLUG_LAB_RUN=lab{p}-"),
        None => "HOTPLUG_LAB_RUN=lab".to_string(),
    };
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        if env.split(|b| *b == 0).any(|kv| kv.starts_with(want.as_bytes())) {
            v.push(pid);
        }
    }
    v
}

/// What a run left behind: its temporary dirs under `tmp`, shared memory files and processes of
/// lab `pid`.
pub fn leftovers(tmp: &Path, lab_pid: Option<u32>) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(tmp).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("lab-run-") {
            v.push(format!("temporary dir {n}"));
        }
    }
    if let Some(pid) = lab_pid {
        // The memory files' directories: /dev/shm and any hugetlbfs mount.
        for dir in lab_core::mem::possible_files("x").iter().filter_map(|f| f.parent()) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("hotplug-lab-lab{pid}-")) {
                    v.push(format!("shared memory {}", dir.join(n).display()));
                }
            }
        }
        for p in run_processes(Some(pid)) {
            v.push(format!("process {p}"));
        }
    }
    v
}
