//! The channel: sockets, the receive thread, sends, requests and replies.

use super::msg::{encode_header, raw_fds};
use super::pool::Workers;
use super::*;

pub(super) struct Inner {
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

pub(super) struct ReplySock {
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
            if self.send_to(self.inner.sock.as_fd(), &t, 0, 0, msg)? {
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
            Ok(_) => {
                self.inner.stats.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if is_dead_peer(&e) => {
                tracing::debug!(peer = ?req.peer, "reply to a peer that went away");
                Ok(())
            }
            Err(e) => Err(IpcError::Send { action: msg.name.clone(), peer: req.peer.name(), source: e }),
        }
    }

    /// Sends to one socket path. Ok(false) for a dead peer (whose socket is then unlinked).
    fn send_to(&self, from: BorrowedFd<'_>, to: &Path, kind: u8, id: u64, msg: &Msg) -> Result<bool, IpcError> {
        let addr = UnixAddr::new(to).map_err(|e| IpcError::Socket { path: to.into(), source: e })?;
        let (raw, n) = raw_fds(&msg.fds);
        let hdr = encode_header(kind, &msg.name, msg.payload.len(), n, id);
        match sys::dgram_send(from, &addr, &[&hdr, &msg.payload], &raw[..n], false) {
            Ok(_) => {
                self.inner.stats.sent.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
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
        // Bound and recorded under the lock `close` drains under, after it checked `closed`:
        // a socket bound while the channel closes would be left in the runtime dir (and keep
        // the last process out from removing it).
        let mut paths = self.inner.reply_paths.lock().unwrap_or_else(|e| e.into_inner());
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(IpcError::Closed);
        }
        let _ = std::fs::remove_file(&path);
        let fd = sys::dgram_bind(&path).map_err(|source| IpcError::Socket { path: path.clone(), source })?;
        let _ = sys::set_send_timeout(fd.as_fd(), 1000);
        let _ = sys::set_recv_timeout(fd.as_fd(), LIVENESS_POLL_MS as u64);
        paths.push(path);
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
            match self.send_to(rs.fd.as_fd(), t, 1, id, msg) {
                Ok(true) => {
                    let name = t.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let pid = if name == PRIMARY_SOCKET { Some(self.inner.cfg.primary_pid) } else { pid_of(&name) };
                    if let Ok(a) = UnixAddr::new(t) {
                        pending.push((a, pid));
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    // One peer that cannot take the message (a full queue past the send timeout)
                    // does not keep it from the others; the caller learns who never got it.
                    tracing::warn!(peer = %t.display(), action = %msg.name, error = %e, "request not sent");
                    let name = t.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    out.unsent.push((name, e.to_string()));
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
                        self.inner.stats.peer_deaths.fetch_add(1, Ordering::Relaxed);
                        out.dead.push(file_name(a));
                    }
                    alive
                });
            }
        }
        for (a, pid) in pending {
            if pid.is_none_or(sys::pid_alive) {
                tracing::debug!(peer = ?a, action = %msg.name, "no reply before the timeout");
                self.inner.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                out.missing.push(file_name(&a));
            } else {
                self.inner.stats.peer_deaths.fetch_add(1, Ordering::Relaxed);
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

pub(super) fn file_name(a: &UnixAddr) -> String {
    a.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub(super) fn cred_ok(info: &sys::RecvInfo) -> bool {
    matches!(info.cred, Some((_, uid)) if uid == sys::euid())
}

pub(super) fn is_dead_peer(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ENOTDIR))
}
