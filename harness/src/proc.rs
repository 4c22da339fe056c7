//! Driving `hotplug_mp` processes over their stdin/stdout, as a person at a terminal would.
//!
//! Output is split at the `example> ` prompt: everything between two prompts is the answer to
//! the command sent in between. Every process is killed by pid and reaped on drop.

use crossbeam_channel::{unbounded as channel, Receiver, RecvTimeoutError};
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The prompt `hotplug_mp` prints before reading each command.
pub const PROMPT: &str = "example> ";

/// Errors talking to an app process.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Could not start it.
    #[error("cannot start {bin}: {source}")]
    Spawn {
        /// Binary.
        bin: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It exited (or closed stdout) before answering.
    #[error("process {pid} exited before answering; stderr: {stderr}")]
    Exited {
        /// Pid.
        pid: u32,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// No answer in time.
    #[error("process {pid} gave no answer within {waited:?}; stderr: {stderr}")]
    Timeout {
        /// Pid.
        pid: u32,
        /// Time waited.
        waited: Duration,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// Writing the command failed.
    #[error("process {pid}: cannot write command: {source}")]
    Write {
        /// Pid.
        pid: u32,
        /// Cause.
        source: std::io::Error,
    },
}

/// Stops `child`: SIGTERM, then SIGKILL once `grace` has passed (at once when `grace` is zero);
/// always reaped. Its exit status if it exited on its own within `grace`, else `None`.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let sig = if grace.is_zero() { nix::sys::signal::Signal::SIGKILL } else { nix::sys::signal::Signal::SIGTERM };
    let _ = nix::sys::signal::kill(pid, sig);
    let deadline = std::time::Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (!grace.is_zero()).then_some(st),
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A running `hotplug_mp` (or any program with the same prompt protocol).
pub struct AppProc {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
    errs: Receiver<String>,
    /// How long `cmd` waits for an answer.
    pub timeout: Duration,
}

impl AppProc {
    /// Starts `cmd` (stdin/stdout/stderr are piped here) and waits for its first prompt.
    pub fn spawn(cmd: Command) -> Result<AppProc, ProcError> {
        let mut p = AppProc::start(cmd)?;
        p.answer()?; // text before the first prompt (start-up)
        Ok(p)
    }

    /// Starts `cmd` without waiting for its first prompt: [`AppProc::started`] waits for it
    /// (meanwhile, [`AppProc::wait_stderr`] sees what its start-up logs).
    pub fn start(mut cmd: Command) -> Result<AppProc, ProcError> {
        let bin = format!("{:?}", cmd.get_program());
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ProcError::Spawn { bin, source })?;
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            let mut acc = String::new();
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => acc.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
                while let Some(i) = acc.find(PROMPT) {
                    let chunk = acc[..i].trim_end_matches('\n').to_string();
                    acc.drain(..i + PROMPT.len());
                    if tx.send(chunk).is_err() {
                        return;
                    }
                }
            }
        });
        let (etx, errs) = channel();
        std::thread::spawn(move || {
            // Line by line as they come, so a test can wait for a line while the process runs.
            for l in std::io::BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if etx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(AppProc { child, stdin, answers, errs, timeout: Duration::from_secs(60) })
    }

    /// Waits for the first prompt of a process begun with [`AppProc::start`]: the text before
    /// it (its start-up).
    pub fn started(&mut self) -> Result<String, ProcError> {
        self.answer()
    }

    /// Waits at most `within` for a line of stderr containing `needle` and returns it (the
    /// lines before it are passed over).
    pub fn wait_stderr(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let l = self.errs.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).ok()?;
            if l.contains(needle) {
                return Some(l);
            }
        }
    }

    /// Pid of the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn answer(&mut self) -> Result<String, ProcError> {
        match self.answers.recv_timeout(self.timeout) {
            Ok(a) => Ok(a),
            Err(RecvTimeoutError::Timeout) => {
                Err(ProcError::Timeout { pid: self.pid(), waited: self.timeout, stderr: self.stderr_now() })
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.child.wait();
                Err(ProcError::Exited { pid: self.pid(), stderr: self.stderr_to_end(Duration::from_secs(2)) })
            }
        }
    }

    /// Sends one command line and returns its answer (without the prompt).
    pub fn cmd(&mut self, line: &str) -> Result<String, ProcError> {
        let pid = self.pid();
        let s = self.stdin.as_mut().ok_or(ProcError::Exited { pid, stderr: String::new() })?;
        writeln!(s, "{line}").and_then(|_| s.flush()).map_err(|source| ProcError::Write { pid, source })?;
        self.answer()
    }

    /// Sends one command line without waiting for its answer (collect it with [`AppProc::answer_within`]).
    pub fn send_line(&mut self, line: &str) -> Result<(), ProcError> {
        let pid = self.pid();
        let s = self.stdin.as_mut().ok_or(ProcError::Exited { pid, stderr: String::new() })?;
        writeln!(s, "{line}").and_then(|_| s.flush()).map_err(|source| ProcError::Write { pid, source })
    }

    /// The answer to a command sent with [`AppProc::send_line`], waiting at most `wait`.
    pub fn answer_within(&mut self, wait: Duration) -> Result<String, ProcError> {
        let t = std::mem::replace(&mut self.timeout, wait);
        let r = self.answer();
        self.timeout = t;
        r
    }

    /// Whatever the process wrote to stderr so far.
    pub fn stderr_now(&self) -> String {
        self.errs.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Everything an exited process wrote to stderr: read until its reader ends, at most `within`
    /// (the exit can be seen before its last lines are read).
    fn stderr_to_end(&self, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        let mut lines = Vec::new();
        while let Ok(l) = self.errs.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            lines.push(l);
        }
        lines.join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `quit`, then waits (at most `wait`) for a clean exit; kills it otherwise.
    pub fn quit(mut self, wait: Duration) -> Option<ExitStatus> {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "quit");
        }
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AppProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The port list an answer to `list` shows, as (id, name).
pub fn parse_list(answer: &str) -> Vec<(u16, String)> {
    answer
        .lines()
        .filter_map(|l| {
            let (id, name) = l.split_once('\t')?;
            Some((id.trim().parse().ok()?, name.trim().to_string()))
        })
        .collect()
}

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Number of entries in a directory (0 if it does not exist).
pub fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
