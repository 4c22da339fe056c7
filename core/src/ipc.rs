//! The multi-process channel (DPDK's `rte_mp`): named actions over unix datagram sockets.
//!
//! Every process binds one socket in the runtime dir: `mp_socket` for the primary,
//! `mp_socket_<pid>_<n>` for each secondary. A process registers actions by name; a datagram
//! carries the action name, a payload and up to [`MAX_FDS`] descriptors (`SCM_RIGHTS`).
//!
//! * `send`: one-way; the primary sends to every live secondary, a secondary to the primary.
//! * `request_sync`: the same fan-out, then collect one reply per peer until the timeout. Every
//!   request is sent first, then replies are collected, so N peers cost one round trip, not N.
//!   Replies do not come back through the dispatch thread: each request is sent from a private
//!   reply socket (`mp_reply_<pid>_<n>`) and the requesting thread itself receives on it. That is
//!   why a handler may make a request of its own without deadlock, and why a round trip costs
//!   exactly two thread wake-ups, like a raw socket ping-pong.
//! * `request_async`: `request_sync` on a worker thread, then a callback.
//! * One thread receives on the main socket and dispatches. Handlers registered `Inline` run on
//!   it, on a request buffer the thread reuses (dispatch allocates nothing), and must not wait
//!   for other messages to this process; handlers registered `Worker` run on a worker pool and may
//!   block or make requests themselves.
//!
//! Input is untrusted: a short, oversized or malformed datagram, a sender of another uid, a reply
//! nobody waits for, or an unknown action is dropped and counted; descriptors that came with a
//! dropped datagram are closed. Nothing a peer sends can make the receiver panic.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys::{self, UnixAddr};

/// Longest action name, in bytes.
pub const MAX_NAME: usize = 64;
/// Largest payload, in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// Most descriptors one message may carry.
pub const MAX_FDS: usize = sys::MAX_FDS;

const MAGIC: u32 = 0x4c41_424d;
const WIRE_VERSION: u8 = 1;
const HDR_LEN: usize = 88;
const MAX_DGRAM: usize = HDR_LEN + MAX_PAYLOAD;
const PRIMARY_SOCKET: &str = "mp_socket";
const LIVENESS_POLL_MS: i32 = 20;

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// Action name empty or over the limit.
    #[error("action name {name:?} is {len} bytes: must be 1..={max}")]
    NameLength {
        /// Name given (clipped).
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Payload over the limit.
    #[error("payload of action {action:?} is {len} bytes, over the limit of {max}")]
    PayloadTooLong {
        /// Action.
        action: String,
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many descriptors.
    #[error("action {action:?} carries {count} file descriptors, over the limit of {max}")]
    TooManyFds {
        /// Action.
        action: String,
        /// Descriptors given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An action of that name is registered already.
    #[error("action {name:?} is already registered")]
    Duplicate {
        /// Action.
        name: String,
    },
    /// Socket setup failed.
    #[error("ipc socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Sending failed for a reason other than a dead peer.
    #[error("sending {action:?} to {peer}: {source}")]
    Send {
        /// Action.
        action: String,
        /// Peer socket.
        peer: String,
        /// Cause.
        source: io::Error,
    },
    /// The channel is closed.
    #[error("ipc channel is closed")]
    Closed,
}

/// A message: action name, payload, descriptors.
#[derive(Debug, Default)]
pub struct Msg {
    /// Action name (at most [`MAX_NAME`] bytes).
    pub name: String,
    /// Payload (at most [`MAX_PAYLOAD`] bytes).
    pub payload: Vec<u8>,
    /// Descriptors (at most [`MAX_FDS`]).
    pub fds: Vec<OwnedFd>,
}

impl Msg {
    /// A message without descriptors.
    pub fn new(name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Msg {
        Msg { name: name.into(), payload: payload.into(), fds: Vec::new() }
    }
    /// Adds descriptors.
    pub fn with_fds(mut self, fds: Vec<OwnedFd>) -> Msg {
        self.fds = fds;
        self
    }
    /// Checks the limits; the error names the one exceeded.
    pub fn check(&self) -> Result<(), IpcError> {
        check_parts(&self.name, self.payload.len(), self.fds.len())
    }
}

fn check_parts(name: &str, payload: usize, fds: usize) -> Result<(), IpcError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(IpcError::NameLength { name: name.chars().take(80).collect(), len: name.len(), max: MAX_NAME });
    }
    if payload > MAX_PAYLOAD {
        return Err(IpcError::PayloadTooLong { action: name.into(), len: payload, max: MAX_PAYLOAD });
    }
    if fds > MAX_FDS {
        return Err(IpcError::TooManyFds { action: name.into(), count: fds, max: MAX_FDS });
    }
    Ok(())
}

/// Who sent a message: the address to reply to.
#[derive(Clone, Copy)]
pub struct Peer {
    addr: UnixAddr,
}

impl Peer {
    /// Socket file name (`mp_socket`, `mp_socket_<pid>_<n>`, `mp_reply_<pid>_<n>`).
    pub fn name(&self) -> String {
        self.addr.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
    /// Pid encoded in a secondary or reply socket name.
    pub fn pid(&self) -> Option<u32> {
        pid_of(&self.name())
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())
    }
}

fn pid_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("mp_socket_").or_else(|| name.strip_prefix("mp_reply_"))?;
    rest.split('_').next()?.parse().ok()
}

/// A request or one-way message delivered to a handler.
#[derive(Debug)]
pub struct Request {
    /// The message.
    pub msg: Msg,
    /// Where it came from (reply there).
    pub peer: Peer,
    id: u64,
    wants_reply: bool,
}

impl Request {
    /// Whether the sender waits for a reply (`request_*`), as opposed to `send`.
    pub fn wants_reply(&self) -> bool {
        self.wants_reply
    }
}

/// One reply of a `request_sync`.
#[derive(Debug)]
pub struct Reply {
    /// The peer that answered.
    pub peer: Peer,
    /// Its message.
    pub msg: Msg,
}

/// Outcome of a request: how many peers were sent to and how many answered in time.
#[derive(Debug, Default)]
pub struct Replies {
    /// Live peers the request reached.
    pub nb_sent: usize,
    /// Replies received before the timeout.
    pub nb_received: usize,
    /// The replies.
    pub replies: Vec<Reply>,
    /// Live peers that got the request but did not answer in time, by socket name.
    pub missing: Vec<String>,
    /// Peers that got the request and died before answering, by socket name.
    pub dead: Vec<String>,
}

/// Where a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// On the receive thread: must be quick and must not wait for other messages.
    Inline,
    /// On a worker thread: may block, may make requests itself.
    Worker,
}

/// A registered action handler.
pub type Handler = Arc<dyn Fn(&Channel, &mut Request) + Send + Sync>;

/// Counters of what the receive side dropped.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams received on the main socket.
    pub received: AtomicU64,
    /// Dropped: shorter than a header, bad magic/version, lengths inconsistent.
    pub malformed: AtomicU64,
    /// Dropped: longer than the largest message.
    pub oversized: AtomicU64,
    /// Dropped: no handler for the action.
    pub unknown_action: AtomicU64,
    /// Dropped: sender of another uid, or no credentials.
    pub foreign: AtomicU64,
    /// Dropped: a reply nobody waits for (late, or stray).
    pub late_reply: AtomicU64,
}

/// Settings of a channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Runtime dir holding the sockets.
    pub dir: PathBuf,
    /// Whether this process is the primary.
    pub primary: bool,
    /// Pid of the primary (liveness of `mp_socket`).
    pub primary_pid: u32,
    /// Busy-poll a reply socket this long before blocking (0: never spin). At most 1000.
    pub spin_us: u64,
}

struct Inner {
    cfg: ChannelConfig,
    sock: OwnedFd,
    path: PathBuf,
    actions: RwLock<HashMap<String, (Dispatch, Handler)>>,
    reply_socks: Mutex<Vec<ReplySock>>,
    reply_paths: Mutex<Vec<PathBuf>>,
    peers_cache: Mutex<Option<(std::time::SystemTime, bool, Vec<PathBuf>)>>,
    /// The receive thread's reusable request (only that thread locks it).
    inline_req: Mutex<Option<Request>>,
    next_id: AtomicU64,
    next_reply: AtomicU32,
    stats: Stats,
    workers: Workers,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: std::sync::atomic::AtomicBool,
    gate: (Mutex<bool>, std::sync::Condvar),
}

struct ReplySock {
    fd: OwnedFd,
    buf: Box<[u8]>,
}

/// A process's end of the channel. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

static CHANNEL_SEQ: AtomicU32 = AtomicU32::new(0);

impl Channel {
    /// Binds this process's socket and starts the receive thread.
    pub fn open(cfg: ChannelConfig) -> Result<Channel, IpcError> {
        let ch = Channel::open_paused(cfg)?;
        ch.start();
        Ok(ch)
    }

    /// Lets the receive thread of a channel opened with `open_paused` dispatch. Idempotent.
    pub fn start(&self) {
        let (m, cv) = &self.inner.gate;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    /// Binds the socket (peers can send at once) but dispatches nothing until `start`:
    /// datagrams wait in the socket, so actions registered in between see every message.
    pub fn open_paused(cfg: ChannelConfig) -> Result<Channel, IpcError> {
        let seq = CHANNEL_SEQ.fetch_add(1, Ordering::Relaxed);
        let name =
            if cfg.primary { PRIMARY_SOCKET.to_string() } else { format!("mp_socket_{}_{}", std::process::id(), seq) };
        let path = cfg.dir.join(&name);
        let p2 = path.clone();
        let serr = |source| IpcError::Socket { path: p2.clone(), source };
        if cfg.primary {
            let _ = std::fs::remove_file(&path);
        }
        let sock = sys::dgram_bind(&path).map_err(serr)?;
        sys::set_send_timeout(sock.as_fd(), 1000).map_err(serr)?;
        let seed = (std::process::id() as u64) << 32 | (seq as u64) << 24;
        let inner = Arc::new(Inner {
            cfg: ChannelConfig { spin_us: cfg.spin_us.min(1000), ..cfg },
            sock,
            path,
            actions: RwLock::new(HashMap::new()),
            reply_socks: Mutex::new(Vec::new()),
            reply_paths: Mutex::new(Vec::new()),
            peers_cache: Mutex::new(None),
            inline_req: Mutex::new(None),
            next_id: AtomicU64::new(seed | 1),
            next_reply: AtomicU32::new(0),
            stats: Stats::default(),
            workers: Workers::new(64),
            thread: Mutex::new(None),
            closed: false.into(),
            gate: (Mutex::new(false), std::sync::Condvar::new()),
        });
        let ch = Channel { inner };
        let rx = ch.clone();
        let t = std::thread::Builder::new().name("lab-ipc".into()).spawn(move || rx.receive_loop()).map_err(serr)?;
        *ch.inner.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        tracing::debug!(socket = %ch.inner.path.display(), "ipc channel open");
        Ok(ch)
    }

    /// Path of this process's socket.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    /// Drop counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Sets the spin-before-block time of reply waits (0 turns it off; clipped to 1000 us).
    pub fn set_spin_us(&self, us: u64) {
        // Only read by request paths; a plain store through the config copy is enough.
        self.inner.workers.spin_us.store(us.min(1000), Ordering::Relaxed);
    }

    fn spin_us(&self) -> u64 {
        let s = self.inner.workers.spin_us.load(Ordering::Relaxed);
        if s == u64::MAX {
            self.inner.cfg.spin_us
        } else {
            s
        }
    }

    /// Registers a handler for `name`.
    pub fn register_action<F>(&self, name: &str, dispatch: Dispatch, handler: F) -> Result<(), IpcError>
    where
        F: Fn(&Channel, &mut Request) + Send + Sync + 'static,
    {
        check_parts(name, 0, 0)?;
        let mut a = self.inner.actions.write().unwrap_or_else(|e| e.into_inner());
        if a.contains_key(name) {
            return Err(IpcError::Duplicate { name: name.into() });
        }
        a.insert(name.to_string(), (dispatch, Arc::new(handler)));
        Ok(())
    }

    /// Removes a handler.
    pub fn unregister_action(&self, name: &str) {
        self.inner.actions.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// Sockets of the live secondaries (as seen in the runtime dir), excluding this process.
    pub fn secondaries(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.inner.cfg.dir) {
            for e in rd.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with("mp_socket_") && pid_of(&n).is_some() {
                    let p = e.path();
                    if p != self.inner.path {
                        v.push(p);
                    }
                }
            }
        }
        v.sort();
        v
    }

    /// Where `send` and `request_sync` go: every live secondary (in the primary) or the primary
    /// (in a secondary). The primary's list is re-read only when the runtime dir changes.
    pub fn peers(&self) -> Vec<PathBuf> {
        if self.inner.cfg.primary {
            // Re-list the dir only when it changed. A listing taken while the dir's mtime is very
            // recent is not reused: mtime granularity could hide a second change in that tick.
            let mtime = std::fs::metadata(&self.inner.cfg.dir).and_then(|m| m.modified()).ok();
            let mut cache = self.inner.peers_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(m), Some((cm, ok, list))) = (mtime, cache.as_ref()) {
                if *ok && *cm == m {
                    return list.clone();
                }
            }
            let list = self.secondaries();
            if let Some(m) = mtime {
                let settled =
                    std::time::SystemTime::now().duration_since(m).is_ok_and(|d| d > Duration::from_millis(100));
                *cache = Some((m, settled, list.clone()));
            }
            list
        } else {
            vec![self.inner.cfg.dir.join(PRIMARY_SOCKET)]
        }
    }

    /// One-way message to every peer; returns how many live peers it reached.
    pub fn send(&self, msg: &Msg) -> Result<usize, IpcError> {
        msg.check()?;
        let mut n = 0;
        for t in self.peers() {
            if self.send_to(self.inner.sock.as_raw_fd(), &t, 0, 0, msg)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Sends `msg` as a reply to `req`.
    pub fn reply(&self, req: &Request, msg: &Msg) -> Result<(), IpcError> {
        msg.check()?;
        let (raw, n) = raw_fds(&msg.fds);
        let hdr = encode_header(2, &msg.name, msg.payload.len(), n, req.id);
        match sys::dgram_send(self.inner.sock.as_fd(), &req.peer.addr, &[&hdr, &msg.payload], &raw[..n], false) {
            Ok(_) => Ok(()),
            Err(e) if is_dead_peer(&e) => {
                tracing::debug!(peer = ?req.peer, "reply to a peer that went away");
                Ok(())
            }
            Err(e) => Err(IpcError::Send { action: msg.name.clone(), peer: req.peer.name(), source: e }),
        }
    }

    /// Sends to one socket path. Ok(false) for a dead peer (whose socket is then unlinked).
    fn send_to(&self, from: RawFd, to: &Path, kind: u8, id: u64, msg: &Msg) -> Result<bool, IpcError> {
        let addr = UnixAddr::new(to).map_err(|e| IpcError::Socket { path: to.into(), source: e })?;
        let (raw, n) = raw_fds(&msg.fds);
        let hdr = encode_header(kind, &msg.name, msg.payload.len(), n, id);
        let fromfd = unsafe_borrow(from);
        match sys::dgram_send(fromfd, &addr, &[&hdr, &msg.payload], &raw[..n], false) {
            Ok(_) => Ok(true),
            Err(e) if is_dead_peer(&e) => {
                if e.raw_os_error() == Some(libc::ECONNREFUSED) && to.file_name().is_some_and(|n| n != PRIMARY_SOCKET) {
                    tracing::debug!(peer = %to.display(), "removing the socket of a dead peer");
                    let _ = std::fs::remove_file(to);
                }
                Ok(false)
            }
            Err(e) => Err(IpcError::Send {
                action: msg.name.clone(),
                peer: to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                source: e,
            }),
        }
    }

    fn take_reply_sock(&self) -> Result<ReplySock, IpcError> {
        if let Some(s) = self.inner.reply_socks.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(s);
        }
        let n = self.inner.next_reply.fetch_add(1, Ordering::Relaxed);
        let path = self.inner.cfg.dir.join(format!("mp_reply_{}_{}", std::process::id(), n));
        let _ = std::fs::remove_file(&path);
        let fd = sys::dgram_bind(&path).map_err(|source| IpcError::Socket { path: path.clone(), source })?;
        let _ = sys::set_send_timeout(fd.as_fd(), 1000);
        let _ = sys::set_recv_timeout(fd.as_fd(), LIVENESS_POLL_MS as u64);
        self.inner.reply_paths.lock().unwrap_or_else(|e| e.into_inner()).push(path);
        Ok(ReplySock { fd, buf: vec![0u8; MAX_DGRAM + 1].into_boxed_slice() })
    }

    fn give_reply_sock(&self, s: ReplySock) {
        self.inner.reply_socks.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// Sends a request to every peer and waits up to `timeout` for their replies.
    /// Dead peers are skipped at once (not counted in `nb_sent`); a live peer that does not
    /// answer counts as sent, not received; a peer that dies while we wait stops being waited for.
    pub fn request_sync(&self, msg: &Msg, timeout: Duration) -> Result<Replies, IpcError> {
        msg.check()?;
        let targets = self.peers();
        self.request_to(&targets, msg, timeout)
    }

    /// `request_sync` to an explicit list of peer sockets.
    pub fn request_to(&self, targets: &[PathBuf], msg: &Msg, timeout: Duration) -> Result<Replies, IpcError> {
        msg.check()?;
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(IpcError::Closed);
        }
        let mut rs = self.take_reply_sock()?;
        let id = self.inner.next_id.fetch_add(2, Ordering::Relaxed);
        let mut pending: Vec<(UnixAddr, Option<u32>)> = Vec::with_capacity(targets.len());
        let mut out = Replies::default();
        for t in targets {
            match self.send_to(rs.fd.as_raw_fd(), t, 1, id, msg) {
                Ok(true) => {
                    let name = t.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let pid = if name == PRIMARY_SOCKET { Some(self.inner.cfg.primary_pid) } else { pid_of(&name) };
                    if let Ok(a) = UnixAddr::new(t) {
                        pending.push((a, pid));
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    self.give_reply_sock(rs);
                    return Err(e);
                }
            }
        }
        out.nb_sent = pending.len();
        let deadline = Instant::now() + timeout;
        let spin = Duration::from_micros(self.spin_us());
        let mut fds = Vec::new();
        let mut last_check = Instant::now();
        while !pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let mut got = false;
            if !spin.is_zero() {
                let until = now + spin;
                loop {
                    match sys::dgram_recv(rs.fd.as_fd(), &mut rs.buf, &mut fds, true) {
                        Ok(info) => {
                            self.take_reply(&rs.buf, info, &mut fds, id, &mut pending, &mut out);
                            got = true;
                            break;
                        }
                        Err(_) if Instant::now() < until => std::hint::spin_loop(),
                        Err(_) => break,
                    }
                }
            }
            if !got {
                let left = deadline.saturating_duration_since(Instant::now());
                if left >= Duration::from_millis(LIVENESS_POLL_MS as u64) {
                    // Blocking receive; SO_RCVTIMEO wakes us for the liveness check.
                    if let Ok(info) = sys::dgram_recv(rs.fd.as_fd(), &mut rs.buf, &mut fds, false) {
                        self.take_reply(&rs.buf, info, &mut fds, id, &mut pending, &mut out);
                    }
                } else {
                    let wait = (left.as_millis() as i32).max(1);
                    let (readable, _) = sys::poll2(rs.fd.as_raw_fd(), None, wait).unwrap_or((false, false));
                    if readable {
                        if let Ok(info) = sys::dgram_recv(rs.fd.as_fd(), &mut rs.buf, &mut fds, true) {
                            self.take_reply(&rs.buf, info, &mut fds, id, &mut pending, &mut out);
                        }
                    }
                }
            }
            if last_check.elapsed() >= Duration::from_millis(LIVENESS_POLL_MS as u64) {
                last_check = Instant::now();
                pending.retain(|(a, pid)| {
                    let alive = pid.is_none_or(sys::pid_alive);
                    if !alive {
                        tracing::debug!(peer = ?a, "peer died while a request was pending");
                        out.dead.push(file_name(a));
                    }
                    alive
                });
            }
        }
        for (a, pid) in pending {
            if pid.is_none_or(sys::pid_alive) {
                tracing::debug!(peer = ?a, action = %msg.name, "no reply before the timeout");
                out.missing.push(file_name(&a));
            } else {
                out.dead.push(file_name(&a));
            }
        }
        self.give_reply_sock(rs);
        Ok(out)
    }

    fn take_reply(
        &self,
        buf: &[u8],
        info: sys::RecvInfo,
        fds: &mut Vec<OwnedFd>,
        id: u64,
        pending: &mut Vec<(UnixAddr, Option<u32>)>,
        out: &mut Replies,
    ) {
        let taken = std::mem::take(fds);
        let Some(from) = info.from else {
            self.inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !cred_ok(&info) {
            self.inner.stats.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(view) = MsgView::new_checked(&buf[..info.len], info.truncated, taken.len()) else {
            self.inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let pos = pending.iter().position(|(a, _)| a.as_bytes() == from.as_bytes());
        match (view.kind(), view.id() == id, pos) {
            (2, true, Some(i)) => {
                pending.swap_remove(i);
                out.nb_received += 1;
                out.replies.push(Reply {
                    peer: Peer { addr: from },
                    msg: Msg { name: view.name().into(), payload: view.payload().to_vec(), fds: taken },
                });
            }
            _ => {
                self.inner.stats.late_reply.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(from = ?from, action = view.name(), "dropping a late or stray reply");
            }
        }
    }

    /// `request_sync` on a worker thread; `callback` gets the outcome there.
    pub fn request_async<F>(&self, msg: Msg, timeout: Duration, callback: F) -> Result<(), IpcError>
    where
        F: FnOnce(Result<Replies, IpcError>) + Send + 'static,
    {
        msg.check()?;
        let ch = self.clone();
        self.inner.workers.submit(Box::new(move || callback(ch.request_sync(&msg, timeout))));
        Ok(())
    }

    /// Stops the receive thread and removes this process's sockets. Idempotent.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(me) = UnixAddr::new(&self.inner.path) {
            let _ = sys::dgram_send(self.inner.sock.as_fd(), &me, &[b"\0"], &[], false);
        }
        if let Some(t) = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.inner.path);
        for p in self.inner.reply_paths.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_file(p);
        }
        self.inner.actions.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.inner.workers.shutdown();
    }

    fn receive_loop(self) {
        let mut buf = vec![0u8; MAX_DGRAM + 1].into_boxed_slice();
        let mut fds: Vec<OwnedFd> = Vec::with_capacity(MAX_FDS);
        {
            let (m, cv) = &self.inner.gate;
            let mut open = m.lock().unwrap_or_else(|e| e.into_inner());
            while !*open && !self.inner.closed.load(Ordering::Acquire) {
                open = cv.wait_timeout(open, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        loop {
            // One blocking receive per datagram; `close` wakes us with a datagram to ourselves.
            let r = sys::dgram_recv(self.inner.sock.as_fd(), &mut buf, &mut fds, false);
            if self.inner.closed.load(Ordering::Acquire) {
                break;
            }
            let info = match r {
                Ok(i) => i,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "ipc receive failed; receive thread stops");
                    break;
                }
            };
            self.inner.stats.received.fetch_add(1, Ordering::Relaxed);
            self.dispatch(&buf, info, &mut fds);
            fds.clear(); // closes any descriptor a dropped message carried
        }
    }

    fn dispatch(&self, buf: &[u8], info: sys::RecvInfo, fds: &mut Vec<OwnedFd>) {
        let st = &self.inner.stats;
        if !cred_ok(&info) {
            st.foreign.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("dropping a datagram from another uid");
            return;
        }
        if info.truncated {
            st.oversized.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("dropping an oversized datagram");
            return;
        }
        let view = match MsgView::new_checked(&buf[..info.len], false, fds.len()) {
            Ok(v) if !info.ctrunc => v,
            _ => {
                st.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(len = info.len, "dropping a malformed datagram");
                return;
            }
        };
        if view.kind() == 2 {
            st.late_reply.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(peer) = info.from.map(|addr| Peer { addr }) else {
            st.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let handler = {
            let a = self.inner.actions.read().unwrap_or_else(|e| e.into_inner());
            a.get(view.name()).cloned()
        };
        let Some((mode, h)) = handler else {
            st.unknown_action.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(action = view.name(), "dropping a message for an unknown action");
            return;
        };
        match mode {
            Dispatch::Inline => {
                // Reuse this thread's request buffers: no allocation per message.
                let mut slot = self.inner.inline_req.lock().unwrap_or_else(|e| e.into_inner());
                let req = slot.get_or_insert_with(|| Request {
                    msg: Msg {
                        name: String::with_capacity(MAX_NAME),
                        payload: Vec::with_capacity(MAX_PAYLOAD),
                        fds: Vec::with_capacity(MAX_FDS),
                    },
                    peer,
                    id: 0,
                    wants_reply: false,
                });
                req.msg.name.clear();
                req.msg.name.push_str(view.name());
                req.msg.payload.clear();
                req.msg.payload.extend_from_slice(view.payload());
                req.msg.fds.clear();
                std::mem::swap(&mut req.msg.fds, fds);
                req.peer = peer;
                req.id = view.id();
                req.wants_reply = view.kind() == 1;
                h(self, req);
                req.msg.fds.clear(); // descriptors the handler did not take are closed
            }
            Dispatch::Worker => {
                let mut req = Request {
                    msg: Msg {
                        name: view.name().to_string(),
                        payload: view.payload().to_vec(),
                        fds: std::mem::take(fds),
                    },
                    peer,
                    id: view.id(),
                    wants_reply: view.kind() == 1,
                };
                let ch = self.clone();
                self.inner.workers.submit(Box::new(move || h(&ch, &mut req)));
            }
        }
    }
}

fn file_name(a: &UnixAddr) -> String {
    a.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn cred_ok(info: &sys::RecvInfo) -> bool {
    matches!(info.cred, Some((_, uid)) if uid == sys::euid())
}

fn is_dead_peer(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn unsafe_borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: callers pass one of the channel's own sockets, which outlive the borrow (the
    // borrow is used for one sendmsg call while the owning ReplySock/Inner is held).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// The raw descriptors of a checked message, without allocating.
fn raw_fds(fds: &[OwnedFd]) -> ([RawFd; MAX_FDS], usize) {
    let mut raw = [-1; MAX_FDS];
    let n = fds.len().min(MAX_FDS);
    for (r, f) in raw.iter_mut().zip(fds) {
        *r = f.as_raw_fd();
    }
    (raw, n)
}

fn encode_header(kind: u8, name: &str, payload: usize, nfds: usize, id: u64) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = WIRE_VERSION;
    h[5] = kind;
    h[6] = name.len() as u8;
    h[7] = nfds as u8;
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..20].copy_from_slice(&(payload as u32).to_le_bytes());
    h[24..24 + name.len()].copy_from_slice(name.as_bytes());
    h
}

/// A checked view of one datagram: header fields are read only after the lengths are verified.
pub struct MsgView<'a> {
    buf: &'a [u8],
}

/// Why a datagram was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header.
    Short,
    /// Longer than the largest message.
    Oversized,
    /// Wrong magic or version.
    BadMagic,
    /// Kind not 0, 1 or 2.
    BadKind,
    /// Name length 0, over 64, or not UTF-8.
    BadName,
    /// Payload length disagrees with the datagram length.
    BadLength,
    /// Declared descriptor count disagrees with the descriptors received.
    BadFds,
}

impl<'a> MsgView<'a> {
    /// Checks a received datagram (`truncated`: the kernel said it was longer than the buffer;
    /// `nfds`: descriptors that arrived with it).
    pub fn new_checked(buf: &'a [u8], truncated: bool, nfds: usize) -> Result<MsgView<'a>, WireError> {
        if truncated || buf.len() > MAX_DGRAM {
            return Err(WireError::Oversized);
        }
        if buf.len() < HDR_LEN {
            return Err(WireError::Short);
        }
        if u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) != MAGIC || buf[4] != WIRE_VERSION {
            return Err(WireError::BadMagic);
        }
        if buf[5] > 2 {
            return Err(WireError::BadKind);
        }
        let nl = buf[6] as usize;
        if nl == 0 || nl > MAX_NAME || std::str::from_utf8(&buf[24..24 + nl]).is_err() {
            return Err(WireError::BadName);
        }
        let pl = u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
        if pl > MAX_PAYLOAD || HDR_LEN + pl != buf.len() {
            return Err(WireError::BadLength);
        }
        if buf[7] as usize != nfds || nfds > MAX_FDS {
            return Err(WireError::BadFds);
        }
        Ok(MsgView { buf })
    }
    /// 0 message, 1 request, 2 reply.
    pub fn kind(&self) -> u8 {
        self.buf[5]
    }
    /// Request id.
    pub fn id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[8..16]);
        u64::from_le_bytes(b)
    }
    /// Action name.
    pub fn name(&self) -> &'a str {
        std::str::from_utf8(&self.buf[24..24 + self.buf[6] as usize]).unwrap_or("")
    }
    /// Payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[HDR_LEN..]
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A pool of worker threads that grows on demand up to a cap.
struct Workers {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    idle: Arc<AtomicUsize>,
    total: AtomicUsize,
    max: usize,
    spin_us: AtomicU64,
}

impl Workers {
    fn new(max: usize) -> Workers {
        let (tx, rx) = mpsc::channel();
        Workers {
            tx: Mutex::new(Some(tx)),
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            total: AtomicUsize::new(0),
            max,
            spin_us: AtomicU64::new(u64::MAX),
        }
    }

    fn submit(&self, job: Job) {
        if self.idle.load(Ordering::Acquire) == 0 && self.total.load(Ordering::Relaxed) < self.max {
            self.total.fetch_add(1, Ordering::Relaxed);
            let rx = self.rx.clone();
            let idle = self.idle.clone();
            let spawned = std::thread::Builder::new().name("lab-ipc-worker".into()).spawn(move || loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                idle.fetch_sub(1, Ordering::AcqRel);
                match job {
                    Ok(j) => j(),
                    Err(_) => break,
                }
            });
            if spawned.is_err() {
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(job);
        }
    }

    fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn pair() -> (tempfile::TempDir, Channel, Channel) {
        let d = tempfile::tempdir().unwrap();
        let p = Channel::open(ChannelConfig {
            dir: d.path().into(),
            primary: true,
            primary_pid: std::process::id(),
            spin_us: 0,
        })
        .unwrap();
        let s = Channel::open(ChannelConfig {
            dir: d.path().into(),
            primary: false,
            primary_pid: std::process::id(),
            spin_us: 0,
        })
        .unwrap();
        (d, p, s)
    }

    #[rstest]
    #[case::short(vec![0u8; 10], 0, WireError::Short)]
    #[case::magic(vec![0u8; HDR_LEN], 0, WireError::BadMagic)]
    fn garbage_is_refused_by_the_checked_view(#[case] buf: Vec<u8>, #[case] nfds: usize, #[case] e: WireError) {
        assert_eq!(MsgView::new_checked(&buf, false, nfds).err(), Some(e));
    }

    #[test]
    fn header_fields_are_checked_one_by_one() {
        let good = encode_header(1, "abc", 3, 0, 7);
        let mut b = good.to_vec();
        b.extend_from_slice(b"xyz");
        let v = MsgView::new_checked(&b, false, 0).unwrap();
        assert_eq!((v.kind(), v.id(), v.name(), v.payload()), (1, 7, "abc", &b"xyz"[..]));
        assert_eq!(MsgView::new_checked(&b, false, 1).err(), Some(WireError::BadFds));
        assert_eq!(MsgView::new_checked(&b[..b.len() - 1], false, 0).err(), Some(WireError::BadLength));
        assert_eq!(MsgView::new_checked(&b, true, 0).err(), Some(WireError::Oversized));
        let mut k = b.clone();
        k[5] = 9;
        assert_eq!(MsgView::new_checked(&k, false, 0).err(), Some(WireError::BadKind));
        let mut n = b.clone();
        n[6] = 65;
        assert_eq!(MsgView::new_checked(&n, false, 0).err(), Some(WireError::BadName));
        n[6] = 0;
        assert_eq!(MsgView::new_checked(&n, false, 0).err(), Some(WireError::BadName));
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic_the_view() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut good = encode_header(1, "echo", 16, 0, 3).to_vec();
        good.extend_from_slice(&[5u8; 16]);
        for i in 0..20_000 {
            let mut b = if i % 2 == 0 { good.clone() } else { vec![0u8; (next() % 5000) as usize] };
            for _ in 0..(next() % 8) {
                if !b.is_empty() {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
            }
            if let Ok(v) = MsgView::new_checked(&b, false, (next() % 3) as usize) {
                // Accessors are total once the view is checked.
                let _ = (v.kind(), v.id(), v.name().len(), v.payload().len());
            }
        }
    }

    #[test]
    fn limits_are_errors_that_name_the_limit() {
        let (_d, p, _s) = pair();
        let e = p.request_sync(&Msg::new("x".repeat(65), vec![]), Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("1..=64"), "{e}");
        let e = p.send(&Msg::new("a", vec![0u8; 4097])).unwrap_err();
        assert!(e.to_string().contains("4096"), "{e}");
        let fds = (0..9).map(|_| sys::eventfd().unwrap()).collect();
        let e = p.send(&Msg::new("a", vec![]).with_fds(fds)).unwrap_err();
        assert!(e.to_string().contains("limit of 8"), "{e}");
        assert!(p.send(&Msg::new("a", vec![0u8; 4096])).is_ok());
    }

    #[test]
    fn request_and_reply_between_two_channels() {
        let (_d, p, s) = pair();
        s.register_action("echo", Dispatch::Inline, |ch, req| {
            let m = Msg::new("echo", req.msg.payload.clone());
            ch.reply(req, &m).unwrap();
        })
        .unwrap();
        let r = p.request_sync(&Msg::new("echo", b"ping".to_vec()), Duration::from_secs(2)).unwrap();
        assert_eq!((r.nb_sent, r.nb_received), (1, 1));
        assert_eq!(r.replies[0].msg.payload, b"ping");
        assert_eq!(
            s.register_action("echo", Dispatch::Inline, |_, _| {}).unwrap_err().to_string(),
            "action \"echo\" is already registered"
        );
        // Unknown action: sent, never answered, counted as dropped on the receiver.
        let r = p.request_sync(&Msg::new("nope", vec![]), Duration::from_millis(100)).unwrap();
        assert_eq!((r.nb_sent, r.nb_received), (1, 0));
        assert_eq!(s.stats().unknown_action.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn closing_removes_the_sockets() {
        let (d, p, s) = pair();
        s.register_action("e", Dispatch::Inline, |ch, r| ch.reply(r, &Msg::new("e", vec![])).unwrap()).unwrap();
        p.request_sync(&Msg::new("e", vec![]), Duration::from_secs(1)).unwrap();
        s.close();
        p.close();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        assert!(matches!(p.request_sync(&Msg::new("e", vec![]), Duration::from_secs(1)), Err(IpcError::Closed)));
    }
}
