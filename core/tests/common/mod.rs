//! Spawning real lab processes for multi-process tests: each test gets its own XDG runtime dir
//! (a tempdir) and file prefix; every child is killed by pid and reaped when the test ends.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use lab_testkit::proc::Proc;

pub struct Lab {
    pub xdg: tempfile::TempDir,
    pub prefix: String,
}

impl Lab {
    pub fn new(test: &str) -> Lab {
        let xdg = tempfile::tempdir().expect("tempdir");
        Lab { xdg, prefix: format!("t{}-{}", std::process::id(), test) }
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.xdg.path().join("hotplug-lab").join(&self.prefix)
    }
    /// Where the runtime may put this lab's memory file: /dev/shm, or any hugetlbfs mount (it
    /// picks one with enough free pages).
    pub fn shm_candidates(&self) -> Vec<PathBuf> {
        lab_core::mem::possible_files(&self.prefix)
    }
    /// The memory file as the runtime placed it (the /dev/shm path when there is none yet).
    pub fn shm_file(&self) -> PathBuf {
        let c = self.shm_candidates();
        c.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| c[0].clone())
    }
    pub fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.arg(format!("--file-prefix={}", self.prefix))
            .args(args)
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
    pub fn spawn(&self, bin: &str, args: &[&str]) -> Proc {
        Proc::spawn(self.command(bin, args))
    }
    /// Checks that nothing of this lab is left: runtime dir and memory file.
    pub fn assert_clean(&self) {
        assert!(
            !self.runtime_dir().exists(),
            "runtime dir left: {:?}",
            std::fs::read_dir(self.runtime_dir()).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        for f in self.shm_candidates() {
            assert!(!f.exists(), "shared memory file left: {}", f.display());
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for f in self.shm_candidates() {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Open descriptors of a process, from /proc.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}
