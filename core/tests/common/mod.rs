//! Spawning real lab processes for multi-process tests: each test gets its own XDG runtime dir
//! (a tempdir) and file prefix; every child is killed by pid and reaped when the test ends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

/// Generous bound for one answer; a hung test fails instead of hanging CI.
pub const ANSWER: Duration = Duration::from_secs(30);

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

pub struct Proc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    errs: Receiver<String>,
}

impl Proc {
    pub fn spawn(mut c: Command) -> Proc {
        let mut child = c.spawn().expect("spawn lab process");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (etx, errs) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = etx.send(l);
            }
        });
        Proc { child, stdin, lines, errs }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Next stdout line, or panic after `t`.
    pub fn line_within(&mut self, t: Duration) -> String {
        match self.lines.recv_timeout(t) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("pid {}: no output within {t:?}; stderr: {}", self.pid(), self.stderr())
            }
            Err(RecvTimeoutError::Disconnected) => panic!("pid {}: exited; stderr: {}", self.pid(), self.stderr()),
        }
    }
    pub fn line(&mut self) -> String {
        self.line_within(ANSWER)
    }
    /// Next stdout line, or None when the process closed stdout.
    pub fn try_line(&mut self, t: Duration) -> Option<String> {
        self.lines.recv_timeout(t).ok()
    }
    pub fn send(&mut self, cmd: &str) {
        let s = self.stdin.as_mut().expect("stdin open");
        writeln!(s, "{cmd}").expect("write command");
        s.flush().expect("flush");
    }
    /// Sends a command and returns its one-line answer.
    pub fn cmd(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.line()
    }
    pub fn stderr(&self) -> String {
        self.errs.try_iter().collect::<Vec<_>>().join("\n")
    }
    /// Waits for the process to exit on its own; returns its status and everything it wrote to stderr.
    pub fn exit_and_stderr(mut self) -> (std::process::ExitStatus, String) {
        let st = self.wait_exit();
        let mut err = Vec::new();
        while let Ok(l) = self.errs.recv_timeout(Duration::from_secs(5)) {
            err.push(l);
        }
        (st, err.join("\n"))
    }
    /// Closes stdin (the process quits) and waits for it to exit.
    pub fn quit(mut self) -> std::process::ExitStatus {
        self.stdin.take();
        self.wait_exit()
    }
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pid {} did not exit within 6 s", self.pid());
    }
    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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
