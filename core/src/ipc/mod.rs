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

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
pub(crate) const PRIMARY_SOCKET: &str = "mp_socket";
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

pub(crate) fn pid_of(name: &str) -> Option<u32> {
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
    /// Live peers the request could not be sent to (their queue stayed full past the send
    /// timeout), by socket name, with the error: they never got it. The others were still sent it.
    pub unsent: Vec<(String, String)>,
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

/// Counters of the channel: what went out, what came in, what was dropped and why.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams sent (one-way messages, requests and replies; one per live peer reached).
    pub sent: AtomicU64,
    /// Requests sent to a peer that neither answered nor died before the timeout (one per peer).
    pub timeouts: AtomicU64,
    /// Requests to a peer that died while they waited (one per peer).
    pub peer_deaths: AtomicU64,
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

mod channel;
mod msg;
mod pool;

pub use channel::Channel;
pub use msg::{MsgView, WireError};

#[cfg(test)]
mod tests {
    use super::msg::encode_header;
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
