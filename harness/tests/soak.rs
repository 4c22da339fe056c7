//! CI's soak: `lab soak --cycles 300 --every 100`, the real command (processes, emulated NICs,
//! traffic, link flaps, surprise unplugs); it fails if a process's fds, private RSS or emulator
//! connections, or the memzones or mbufs in use, grow between checkpoints.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Kills the soak's process group (lab and everything it started) if the test ends early.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn three_hundred_cycles_with_traffic_flaps_and_unplugs_grow_nothing() {
    let lab = Path::new(env!("CARGO_BIN_EXE_lab"));
    let dir = lab.parent().expect("bin dir");
    for bin in ["lab-fwd", "lab-nic", "hotplug_mp"] {
        if !dir.join(bin).exists() {
            eprintln!("skipped: {bin} not built in {} (cargo build --workspace --bins)", dir.display());
            return;
        }
    }
    let mut child = Command::new(lab)
        .args(["soak", "--cycles", "300", "--every", "100"])
        .env("HOTPLUG_LAB_BIN_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start lab soak");
    let _group = Group(child.id() as i32);
    let mut out = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    let st = child.wait().expect("wait");
    assert!(st.success(), "lab soak failed ({st}):\n{out}\n{err}");
    assert!(out.contains("lab soak: passed: 300 cycles, nothing grew"), "{out}");
    // Three checkpoints, each with every process, and traffic crossed the cable.
    assert_eq!(out.matches("\ncycle ").count() + usize::from(out.starts_with("cycle ")), 3, "{out}");
    for p in ["primary", "s1", "s2", "fwd", "lab-nic"] {
        assert_eq!(out.lines().filter(|l| l.trim_start().starts_with(&format!("{p} "))).count(), 3, "{p}: {out}");
    }
    assert!(out.contains("surprise unplugs 60"), "{out}");
}
