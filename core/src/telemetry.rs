//! Telemetry in every lab process, wire-compatible with DPDK's telemetry v2.
//!
//! Every lab-core process (primary and each secondary) serves a unix `SOCK_SEQPACKET` socket in
//! its runtime dir (mode 0600 in the 0700 dir): the primary `dpdk_telemetry.v2`, a secondary the
//! first free `dpdk_telemetry.v2:N` (N = 1, 2, ...), DPDK's names. On connect the server sends
//! `{"version": ..., "pid": ..., "max_output_len": 16384}`; each record a client sends is one
//! command, `/name` or `/name,param`, answered with one record `{"/name": value}`. `/` lists the
//! commands, `/help,/name` describes one, `/info` repeats the greeting. A command that is unknown,
//! malformed, longer than [`MAX_INPUT_LEN`], given a bad parameter, or whose answer would exceed
//! [`MAX_OUTPUT_LEN`] is answered as DPDK answers it: `{"<command>": null}`.
//!
//! # Finding the socket (and not colliding with DPDK)
//!
//! DPDK's `dpdk-telemetry.py -f PREFIX [-i N]` looks for
//! `$RUNTIME_DIRECTORY/dpdk/PREFIX/dpdk_telemetry.v2[:N]` (`RUNTIME_DIRECTORY` defaulting to
//! `/var/run` for root, else `$XDG_RUNTIME_DIR` or `/tmp`). A lab never writes in DPDK's own
//! runtime dirs, so a real DPDK application with the same prefix keeps its socket. Instead the
//! lab's base dir (the parent of every lab runtime dir, see [`crate::runtime`]) holds a symlink
//! `dpdk -> .`, which makes the base dir look like a DPDK `RUNTIME_DIRECTORY`:
//!
//! ```text
//! RUNTIME_DIRECTORY=/var/run/hotplug-lab dpdk-telemetry.py -f PREFIX        # the primary
//! RUNTIME_DIRECTORY=/var/run/hotplug-lab dpdk-telemetry.py -f PREFIX -i 1   # a secondary
//! ```
//!
//! ([`dpdk_runtime_directory`] gives the value; `lab status` prints it.) The prefix `dpdk` is
//! therefore reserved ([`DPDK_VIEW`]).
//!
//! # Robustness
//!
//! One thread serves every connection with `poll`; every socket is non-blocking. A client that
//! connects and says nothing costs a slot and nothing else; a client that never reads its answers
//! is closed when a send would block, so it stalls no one. At most [`MAX_CONNECTIONS`]
//! connections: when full, the one idle longest (if idle over [`IDLE_EVICT`]) is closed to make
//! room, else the newcomer is closed at once. Handlers read counters where they already are;
//! nothing here touches a data path.

#![forbid(unsafe_code)]

use crate::sys;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The socket's file name (DPDK's).
pub const SOCKET_NAME: &str = "dpdk_telemetry.v2";
/// The largest answer, as announced in the greeting (DPDK's 16384).
pub const MAX_OUTPUT_LEN: usize = 16384;
/// The longest command record read; a longer one is answered with null.
pub const MAX_INPUT_LEN: usize = 1024;
/// The longest command name (DPDK's `MAX_CMD_LEN`).
pub const MAX_CMD_LEN: usize = 56;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection idle this long may be closed to make room for a new one.
pub const IDLE_EVICT: Duration = Duration::from_secs(5);
/// Secondary instances tried (`dpdk_telemetry.v2:1` ..).
pub const MAX_INSTANCES: u32 = 128;
/// The name of the symlink in the lab base dir that lets DPDK's client find lab sockets, and so
/// a reserved file prefix.
pub const DPDK_VIEW: &str = "dpdk";

/// What a command handler can fail with; the client sees `null`, the log says why.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The command needs a parameter.
    #[error("missing parameter: {what}")]
    MissingParam {
        /// What the parameter is.
        what: &'static str,
    },
    /// The parameter is not valid.
    #[error("bad parameter {param:?}: {why}")]
    BadParam {
        /// As given.
        param: String,
        /// Why it is refused.
        why: String,
    },
    /// The answer cannot be had now (a port busy past the wait, a process shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Setting telemetry up failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The socket could not be created.
    #[error("telemetry socket {path}: {source}")]
    Socket {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every instance name is taken.
    #[error("telemetry: every instance {SOCKET_NAME}:1..={MAX_INSTANCES} in {dir} is in use")]
    NoInstance {
        /// The runtime dir.
        dir: PathBuf,
    },
    /// A command name is not of the form DPDK allows.
    #[error("telemetry command {name:?}: must start with '/', be at most {MAX_CMD_LEN} bytes of [A-Za-z0-9_/]")]
    BadName {
        /// As given.
        name: String,
    },
    /// The thread could not be started.
    #[error("telemetry thread: {0}")]
    Thread(#[source] io::Error),
}

/// A command handler: the parameter (after the first comma, if any) to the answer.
pub type Handler = Arc<dyn Fn(Option<&str>) -> Result<Value, CmdError> + Send + Sync>;

struct Cmd {
    help: String,
    handler: Handler,
}

/// Counters of the telemetry server itself (`/lab/telemetry`).
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    stalled: AtomicU64,
    commands: AtomicU64,
    null_answers: AtomicU64,
}

struct Shared {
    cmds: RwLock<BTreeMap<String, Cmd>>,
    greeting: String,
    counters: Counters,
    stop: AtomicBool,
}

/// The telemetry server of one process. Dropping it stops the thread and removes the socket.
pub struct Telemetry {
    shared: Arc<Shared>,
    path: PathBuf,
    instance: u32,
    wake: Arc<OwnedFd>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The `RUNTIME_DIRECTORY` under which DPDK's `dpdk-telemetry.py` finds the lab process whose
/// runtime dir is `runtime_dir` (its parent, the lab base dir).
pub fn dpdk_runtime_directory(runtime_dir: &Path) -> PathBuf {
    runtime_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"))
}

/// The socket path of `instance` (0: the primary's name) in `dir`.
pub fn socket_path(dir: &Path, instance: u32) -> PathBuf {
    if instance == 0 {
        dir.join(SOCKET_NAME)
    } else {
        dir.join(format!("{SOCKET_NAME}:{instance}"))
    }
}

fn valid_name(name: &str) -> bool {
    name.starts_with('/')
        && name.len() <= MAX_CMD_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/')
}

/// A port id parameter (`/ethdev/stats,1`).
pub fn param_port(param: Option<&str>) -> Result<u16, CmdError> {
    let p = param.ok_or(CmdError::MissingParam { what: "port id" })?;
    p.trim().parse::<u16>().map_err(|_| CmdError::BadParam { param: p.into(), why: "not a port id (0..=65535)".into() })
}

impl Telemetry {
    /// Starts serving in `dir`: the primary takes instance 0 (a stale socket of a dead primary is
    /// replaced), a secondary the first free instance from 1. `version` goes in the greeting.
    pub fn start(dir: &Path, primary: bool, version: &str) -> Result<Telemetry, TelemetryError> {
        let (fd, path, instance) = bind_instance(dir, primary)?;
        link_dpdk_view(dir);
        let greeting =
            json!({"version": version, "pid": std::process::id(), "max_output_len": MAX_OUTPUT_LEN}).to_string();
        let shared = Arc::new(Shared {
            cmds: RwLock::new(BTreeMap::new()),
            greeting,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        });
        let wake = Arc::new(sys::eventfd().map_err(TelemetryError::Thread)?);
        let t = Telemetry { shared: shared.clone(), path, instance, wake: wake.clone(), thread: Mutex::new(None) };
        t.register_builtins();
        let handle = std::thread::Builder::new()
            .name("lab-telemetry".into())
            .spawn(move || serve(fd, &shared, &wake))
            .map_err(TelemetryError::Thread)?;
        *t.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        tracing::debug!(path = %t.path.display(), instance, "telemetry up");
        Ok(t)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The instance number (`-i N` of `dpdk-telemetry.py`; 0 for the primary).
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// Registers (or replaces) a command.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        handler: impl Fn(Option<&str>) -> Result<Value, CmdError> + Send + Sync + 'static,
    ) -> Result<(), TelemetryError> {
        if !valid_name(name) {
            return Err(TelemetryError::BadName { name: name.into() });
        }
        let mut cmds = self.shared.cmds.write().unwrap_or_else(|e| e.into_inner());
        cmds.insert(name.to_string(), Cmd { help: help.to_string(), handler: Arc::new(handler) });
        Ok(())
    }

    /// Runs a command as a client would (the record text), returning the answer record. For
    /// in-process use (tests, the lab's own reports).
    pub fn query(&self, record: &[u8]) -> String {
        answer(&self.shared, record)
    }

    fn register_builtins(&self) {
        let s = Arc::downgrade(&self.shared);
        let list = move |_: Option<&str>| {
            let Some(s) = s.upgrade() else { return Ok(Value::Null) };
            let cmds = s.cmds.read().unwrap_or_else(|e| e.into_inner());
            Ok(Value::Array(cmds.keys().map(|k| Value::String(k.clone())).collect()))
        };
        let s = Arc::downgrade(&self.shared);
        let help = move |p: Option<&str>| {
            let Some(s) = s.upgrade() else { return Ok(Value::Null) };
            let p = p.ok_or(CmdError::MissingParam { what: "command" })?;
            let cmds = s.cmds.read().unwrap_or_else(|e| e.into_inner());
            let c = cmds.get(p).ok_or_else(|| CmdError::BadParam { param: p.into(), why: "no such command".into() })?;
            let mut m = Map::new();
            m.insert(p.to_string(), Value::String(c.help.clone()));
            Ok(Value::Object(m))
        };
        let s = Arc::downgrade(&self.shared);
        let info = move |_: Option<&str>| {
            let Some(s) = s.upgrade() else { return Ok(Value::Null) };
            Ok(serde_json::from_str(&s.greeting).unwrap_or(Value::Null))
        };
        let s = Arc::downgrade(&self.shared);
        let own = move |_: Option<&str>| {
            let Some(s) = s.upgrade() else { return Ok(Value::Null) };
            let c = &s.counters;
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            Ok(json!({
                "connections": g(&c.connections), "refused": g(&c.refused), "evicted": g(&c.evicted),
                "stalled_closed": g(&c.stalled), "commands": g(&c.commands), "null_answers": g(&c.null_answers),
                "max_connections": MAX_CONNECTIONS,
            }))
        };
        for (name, text, h) in [
            ("/", "Returns list of available commands, Takes no parameters", Arc::new(list) as Handler),
            ("/help", "Returns help text for a command. Parameters: string command", Arc::new(help)),
            ("/info", "Returns DPDK Telemetry information. Takes no parameters", Arc::new(info)),
            ("/lab/telemetry", "Returns this telemetry server's own counters. Takes no parameters", Arc::new(own)),
        ] {
            let _ = self.register(name, text, move |p| h(p));
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        sys::eventfd_signal(self.wake.as_fd());
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind_instance(dir: &Path, primary: bool) -> Result<(OwnedFd, PathBuf, u32), TelemetryError> {
    let range = if primary { 0..=0 } else { 1..=MAX_INSTANCES };
    for instance in range {
        let path = socket_path(dir, instance);
        if path.exists() {
            // In use when someone answers; a socket nobody listens on is stale (its process died).
            if sys::seqpacket_connect(&path).is_ok() && !primary {
                continue;
            }
            let _ = std::fs::remove_file(&path);
        }
        match sys::seqpacket_listen(&path, 16) {
            Ok(fd) => return Ok((fd, path, instance)),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && !primary => continue,
            Err(source) => return Err(TelemetryError::Socket { path, source }),
        }
    }
    Err(TelemetryError::NoInstance { dir: dir.into() })
}

/// `<base>/dpdk -> .`, so `RUNTIME_DIRECTORY=<base>` shows every lab prefix to DPDK's client.
fn link_dpdk_view(dir: &Path) {
    let Some(base) = dir.parent() else { return };
    let link = base.join(DPDK_VIEW);
    if std::fs::symlink_metadata(&link).is_err() {
        if let Err(e) = std::os::unix::fs::symlink(".", &link) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                tracing::debug!(link = %link.display(), error = %e, "telemetry: no DPDK view link");
            }
        }
    }
}

/// One command record to its answer record.
fn answer(s: &Shared, record: &[u8]) -> String {
    s.counters.commands.fetch_add(1, Ordering::Relaxed);
    let text = String::from_utf8_lossy(record);
    let text = text.trim_end_matches(['\0', '\n', '\r']);
    let (name, param) = match text.split_once(',') {
        Some((n, p)) => (n, Some(p)),
        None => (text, None),
    };
    let key: String = name.chars().take(MAX_CMD_LEN).collect();
    let null = |why: &dyn std::fmt::Display| {
        s.counters.null_answers.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(command = %key, %why, "telemetry: null answer");
        let mut m = Map::new();
        m.insert(key.clone(), Value::Null);
        Value::Object(m).to_string()
    };
    if record.len() > MAX_INPUT_LEN {
        return null(&format_args!("command longer than {MAX_INPUT_LEN} bytes"));
    }
    if !valid_name(name) {
        return null(&"not a command name");
    }
    let handler = {
        let cmds = s.cmds.read().unwrap_or_else(|e| e.into_inner());
        match cmds.get(name) {
            Some(c) => c.handler.clone(),
            None => return null(&"unknown command"),
        }
    };
    match handler(param) {
        Ok(v) => {
            let mut m = Map::new();
            m.insert(name.to_string(), v);
            let out = Value::Object(m).to_string();
            if out.len() > MAX_OUTPUT_LEN {
                return null(&format_args!("answer of {} bytes is over {MAX_OUTPUT_LEN}", out.len()));
            }
            out
        }
        Err(e) => null(&e),
    }
}

struct Conn {
    fd: OwnedFd,
    last: Instant,
}

fn serve(listener: OwnedFd, s: &Shared, wake: &OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut conns: Vec<Conn> = Vec::new();
    let mut buf = vec![0u8; MAX_INPUT_LEN + 1];
    while !s.stop.load(Ordering::Acquire) {
        let (ready_listener, ready_wake, ready): (bool, bool, Vec<bool>) = {
            let mut fds = Vec::with_capacity(conns.len() + 2);
            fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            fds.extend(conns.iter().map(|c| PollFd::new(c.fd.as_fd(), PollFlags::POLLIN)));
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry: poll failed, telemetry stops");
                    return;
                }
            }
            let r = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (r(&fds[1]), r(&fds[0]), fds[2..].iter().map(r).collect())
        };
        if ready_wake {
            sys::eventfd_drain(wake.as_fd());
            continue;
        }
        // Serve the ready connections; drop the ones that closed, failed or stalled.
        let mut keep = Vec::with_capacity(conns.len());
        for (c, ready) in conns.drain(..).zip(ready) {
            if !ready {
                keep.push(c);
                continue;
            }
            match sys::seqpacket_recv(c.fd.as_fd(), &mut buf, true) {
                Ok((0, 0)) => {}
                Ok((_, full)) => {
                    let out = answer(s, &buf[..full.min(buf.len())]);
                    // A record cut by the buffer is over MAX_INPUT_LEN: `answer` sees it so.
                    match sys::seqpacket_send(c.fd.as_fd(), out.as_bytes()) {
                        Ok(_) => keep.push(Conn { last: Instant::now(), ..c }),
                        Err(e) => {
                            if e.kind() == io::ErrorKind::WouldBlock {
                                s.counters.stalled.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!("telemetry: client does not read its answers, closed");
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => keep.push(c),
                Err(_) => {}
            }
        }
        conns = keep;
        if ready_listener {
            accept_all(&listener, s, &mut conns);
        }
    }
}

fn accept_all(listener: &OwnedFd, s: &Shared, conns: &mut Vec<Conn>) {
    loop {
        let fd = match sys::seqpacket_accept(listener.as_fd()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::debug!(error = %e, "telemetry: accept failed");
                return;
            }
        };
        if conns.len() >= MAX_CONNECTIONS {
            reap_closed(conns);
        }
        if conns.len() >= MAX_CONNECTIONS {
            let oldest = conns.iter().enumerate().min_by_key(|(_, c)| c.last).map(|(i, c)| (i, c.last.elapsed()));
            match oldest {
                Some((i, idle)) if idle >= IDLE_EVICT => {
                    conns.swap_remove(i);
                    s.counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    s.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(limit = MAX_CONNECTIONS, "telemetry: connection refused, at the limit");
                    continue; // dropping fd closes it: the client reads end of file
                }
            }
        }
        s.counters.connections.fetch_add(1, Ordering::Relaxed);
        if sys::seqpacket_send(fd.as_fd(), s.greeting.as_bytes()).is_ok() {
            conns.push(Conn { fd, last: Instant::now() });
        }
    }
}

/// Drops connections whose client has gone (hang-up seen without waiting): at the limit, a slot
/// freed since the last poll is found before a newcomer is refused.
fn reap_closed(conns: &mut Vec<Conn>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let gone: Vec<bool> = {
        let mut fds: Vec<PollFd> = conns.iter().map(|c| PollFd::new(c.fd.as_fd(), PollFlags::empty())).collect();
        if poll(&mut fds, PollTimeout::ZERO).is_err() {
            return;
        }
        fds.iter().map(|f| f.revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))).collect()
    };
    let mut i = 0;
    conns.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
}

/// A telemetry client (what `lab status` and tests use; DPDK's `dpdk-telemetry.py` does the same).
pub struct Client {
    fd: OwnedFd,
    greeting: Value,
    buf: Vec<u8>,
}

/// A client's trouble.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, sending or receiving failed.
    #[error("telemetry {path}: {what}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection (it was at its connection limit, or exited).
    #[error("telemetry {path}: the server closed the connection")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// An answer that is not the JSON object the protocol promises.
    #[error("telemetry {path}: bad answer {text:?}")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What came (cut to 200 bytes).
        text: String,
    },
}

impl Client {
    /// Connects and reads the greeting; every later receive waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let io = |what| move |source| ClientError::Io { path: path.into(), what, source };
        let fd = sys::seqpacket_connect(path).map_err(io("connect"))?;
        sys::set_recv_timeout(fd.as_fd(), timeout.as_millis().max(1) as u64).map_err(io("set timeout"))?;
        let mut c = Client { fd, greeting: Value::Null, buf: vec![0; MAX_OUTPUT_LEN] };
        c.greeting = c.recv(path)?;
        Ok(c)
    }

    /// The greeting (`version`, `pid`, `max_output_len`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    fn recv(&mut self, path: &Path) -> Result<Value, ClientError> {
        let (n, _) = sys::seqpacket_recv(self.fd.as_fd(), &mut self.buf, false).map_err(|source| ClientError::Io {
            path: path.into(),
            what: "receive",
            source,
        })?;
        if n == 0 {
            return Err(ClientError::Closed { path: path.into() });
        }
        serde_json::from_slice(&self.buf[..n]).map_err(|_| ClientError::BadAnswer {
            path: path.into(),
            text: String::from_utf8_lossy(&self.buf[..n.min(200)]).into_owned(),
        })
    }

    /// Sends `cmd` (`/name` or `/name,param`) and returns the value under the command's name
    /// (`Null` when the server refused the command).
    pub fn query(&mut self, path: &Path, cmd: &str) -> Result<Value, ClientError> {
        sys::seqpacket_send(self.fd.as_fd(), cmd.as_bytes()).map_err(|source| ClientError::Io {
            path: path.into(),
            what: "send",
            source,
        })?;
        let mut v = self.recv(path)?;
        let name = cmd.split(',').next().unwrap_or(cmd);
        match v.as_object_mut().and_then(|o| o.remove(name)) {
            Some(v) => Ok(v),
            None => Err(ClientError::BadAnswer { path: path.into(), text: v.to_string().chars().take(200).collect() }),
        }
    }
}

/// The telemetry sockets in a runtime dir, primary first then by instance.
pub fn sockets_in(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let rest = name.strip_prefix(SOCKET_NAME)?;
                    let instance = if rest.is_empty() { 0 } else { rest.strip_prefix(':')?.parse().ok()? };
                    Some((instance, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            cmds: RwLock::new(BTreeMap::new()),
            greeting: "{}".into(),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        }
    }

    #[test]
    fn unknown_malformed_and_oversized_commands_get_dpdks_null() {
        let s = shared();
        assert_eq!(answer(&s, b"/nope"), r#"{"/nope":null}"#);
        assert_eq!(answer(&s, b"nope"), r#"{"nope":null}"#);
        assert_eq!(answer(&s, &[0xff, 0xfe, b'/']), "{\"\u{fffd}\u{fffd}/\":null}");
        let long = vec![b'/'; MAX_INPUT_LEN + 1];
        let out = answer(&s, &long);
        let v: Value = serde_json::from_str(&out).unwrap();
        let (k, val) = v.as_object().unwrap().iter().next().unwrap();
        assert_eq!(k.len(), MAX_CMD_LEN);
        assert!(val.is_null());
        assert_eq!(s.counters.null_answers.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_port_parameter_is_checked() {
        assert_eq!(param_port(Some("3")).unwrap(), 3);
        assert!(matches!(param_port(None), Err(CmdError::MissingParam { .. })));
        let e = param_port(Some("x")).unwrap_err().to_string();
        assert!(e.contains("\"x\""), "{e}");
    }

    #[test]
    fn names_follow_dpdks_rules() {
        assert!(valid_name("/ethdev/stats"));
        assert!(!valid_name("ethdev"));
        assert!(!valid_name("/a,b"));
        assert!(!valid_name(&format!("/{}", "a".repeat(MAX_CMD_LEN))));
    }
}
