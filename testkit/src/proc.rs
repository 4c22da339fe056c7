//! A spawned lab process for multi-process tests: its stdout lines and stderr collected by
//! threads, commands written to its stdin; killed by pid and reaped when dropped, so a failing
//! test leaves no process behind.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

/// Generous bound for one answer; a hung test fails instead of hanging CI.
pub const ANSWER: Duration = Duration::from_secs(30);

/// A spawned process (see the module docs).
pub struct Proc {
    /// The child.
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    errs: Receiver<String>,
}

impl Proc {
    /// Spawns `c` (its stdin, stdout and stderr must be piped).
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
    /// Pid.
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
    /// Next stdout line, or panic after [`ANSWER`].
    pub fn line(&mut self) -> String {
        self.line_within(ANSWER)
    }
    /// Next stdout line, or None when the process closed stdout.
    pub fn try_line(&mut self, t: Duration) -> Option<String> {
        self.lines.recv_timeout(t).ok()
    }
    /// Writes one line to stdin.
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
    /// What it wrote to stderr so far (not returned before).
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
