//! The relay between a client and the private socket of a worker: frames vfio-user messages,
//! checks sizes and strings before the crate sees them (it would panic on or lose sync over some),
//! answers what it refuses with an error reply itself, and passes fds through.

use super::*;

pub(super) fn start_relay(s: &Arc<Shared>, client: UnixStream) -> std::io::Result<JoinHandle<()>> {
    let worker = UnixStream::connect(&s.private)?;
    let id = s.next_conn.fetch_add(1, Ordering::Relaxed);
    // Introduce the relay to the worker that accepts it, so both know the connection by one id
    // (the relay answers DEVICE_FEATURE itself, on the connection's DMA maps).
    let mut intro = vec![0u8; HEADER];
    intro[2..4].copy_from_slice(&REGION_WRITE.to_le_bytes());
    intro[4..8].copy_from_slice(&((HEADER + 16 + 8) as u32).to_le_bytes());
    intro[8..12].copy_from_slice(&NO_REPLY.to_le_bytes());
    intro.extend_from_slice(&INTRO_OFFSET.to_le_bytes());
    intro.extend_from_slice(&8u32.to_le_bytes());
    intro.extend_from_slice(&8u32.to_le_bytes());
    intro.extend_from_slice(&id.to_le_bytes());
    send_message(&worker, &intro, &[]).map_err(|e| std::io::Error::other(e.to_string()))?;
    let pid = nix::sys::socket::getsockopt(&client, nix::sys::socket::sockopt::PeerCredentials).map_or(0, |c| c.pid());
    let rec = ConnRecord { client: client.try_clone()?, worker: worker.try_clone()?, since: Instant::now(), pid };
    lock(&s.conns).insert(id, rec);
    tracing::info!(bdf = %s.bdf, conn = id, "client connected");
    let s2 = s.clone();
    let spawned = std::thread::Builder::new().name(format!("relay-{id}")).spawn(move || {
        let mut check = ConnCheck::new(s2.region_sizes.clone(), s2.msix);
        let reason = relay(&s2, id, &client, &worker, &mut check);
        let _ = client.shutdown(std::net::Shutdown::Both);
        let _ = worker.shutdown(std::net::Shutdown::Both);
        lock(&s2.conns).remove(&id);
        tracing::info!(bdf = %s2.bdf, conn = id, "client disconnected ({reason})");
    });
    if spawned.is_err() {
        // Free the slot; dropping the record closes the connection.
        if let Some(c) = lock(&s.conns).remove(&id) {
            let _ = c.client.shutdown(std::net::Shutdown::Both);
            let _ = c.worker.shutdown(std::net::Shutdown::Both);
        }
    }
    spawned
}

/// Why a relay ended.
#[derive(Debug, thiserror::Error)]
enum RelayEnd {
    #[error("closed by client")]
    ClientClosed,
    #[error("closed by server")]
    ServerClosed,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0}")]
    Timeout(&'static str),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the device model panicked on a register access")]
    ModelPanic,
}

#[derive(Debug, Clone, Copy)]
struct MsgHeader {
    id: u16,
    command: u16,
    size: u32,
    flags: u32,
}

impl MsgHeader {
    fn parse(b: &[u8; HEADER]) -> Self {
        Self {
            id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

const NO_REPLY: u32 = 1 << 4;
const ERROR: u32 = 1 << 5;

/// vfio-user commands (the spec's numbers).
const VERSION: u16 = 1;
const DMA_MAP: u16 = 2;
const DMA_UNMAP: u16 = 3;
const DEVICE_GET_INFO: u16 = 4;
const GET_REGION_INFO: u16 = 5;
const GET_IRQ_INFO: u16 = 7;
const SET_IRQS: u16 = 8;
const REGION_READ: u16 = 9;
const REGION_WRITE: u16 = 10;
const DEVICE_RESET: u16 = 13;
const DEVICE_FEATURE: u16 = 16;
const MIG_DATA_READ: u16 = 17;
const MIG_DATA_WRITE: u16 = 18;

/// Offset of the relay's introduction to its worker: a REGION_WRITE (no reply) of its
/// connection id to region 8, which is empty, so no client request can look like it.
pub(super) const INTRO_OFFSET: u64 = 0x1a6_0000_1e1a_0000;

/// DMA_MAP flags (READ, WRITE); DMA_UNMAP flags as in linux/vfio.h.
const DMA_MAP_FLAGS: u32 = 0b11;
const UNMAP_GET_DIRTY_BITMAP: u32 = 1 << 0;
const UNMAP_ALL: u32 = 1 << 1;
/// SET_IRQS: the data types (NONE, BOOL, EVENTFD) and actions (MASK, UNMASK, TRIGGER).
const IRQ_DATA_MASK: u32 = 0b111;
const IRQ_ACTION_MASK: u32 = 0b111 << 3;

/// How long a new connection may take to negotiate (VERSION), and a started message to arrive
/// whole: a client that connects, or sends part of a header, and stops is closed, so silent
/// clients cannot fill the function's connection pool.
pub(super) const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// DMA maps one connection may hold (per-connection memory stays bounded).
pub(super) const MAX_MAPS: usize = 1024;

enum Verdict {
    Forward,
    /// A region access: done by the relay itself on the model (one hop less each way than
    /// through the worker) while no forwarded request may still be in the worker's hands,
    /// otherwise forwarded behind them, so accesses keep their order with everything else.
    Access,
    /// Answered by the relay itself (DEVICE_FEATURE), after the worker's pending replies.
    Local,
    /// Forward this message instead (the request in the shape the crate's server reads).
    Rewrite(Vec<u8>),
    Reject(i32),
}

/// A forwarded request whose reply changes what the relay knows of the connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Version,
    /// GET_REGION_INFO with the request's argsz.
    RegionInfo(u32),
    Map(u64, u64),
    Unmap(u64, u64),
    UnmapAll,
    Other,
}

/// What the relay knows of one connection, to check every request as the vfio-user spec says
/// before the crate's server sees it, and to give every error reply its errno.
pub(super) struct ConnCheck {
    negotiated: bool,
    /// This connection's DMA maps (iova, size), as confirmed by the server's replies.
    maps: Vec<(u64, u64)>,
    /// Forwarded requests in order, by message id, until their replies pass; `true` for one
    /// the client sent with *No_reply*: forwarded asking for a reply, which the relay drops, so
    /// it knows when the worker has done it.
    pending: std::collections::VecDeque<(u16, Op, bool)>,
    region_sizes: Vec<u64>,
    msix: u32,
    /// The capability names the client's VERSION proposed: the reply's must be among them.
    proposed: Vec<String>,
}

pub(super) fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

pub(super) fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    b.get(o..o + 8).map(|x| u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]))
}

/// `buf` cut (or grown) to a body of `body` bytes, with the header's size updated.
fn resized(buf: &[u8], body: usize, extra: &[u8]) -> Vec<u8> {
    let mut v = buf[..(HEADER + body).min(buf.len())].to_vec();
    v.resize(HEADER + body, 0);
    v.extend_from_slice(extra);
    let n = v.len() as u32;
    v[4..8].copy_from_slice(&n.to_le_bytes());
    v
}

impl ConnCheck {
    pub(super) fn new(region_sizes: Vec<u64>, msix: u32) -> ConnCheck {
        ConnCheck {
            negotiated: false,
            maps: Vec::new(),
            pending: Default::default(),
            region_sizes,
            msix,
            proposed: Vec::new(),
        }
    }

    /// The verdict on one request (`buf` is the whole message, `nfds` the fds that came with it).
    fn check(&mut self, h: &MsgHeader, buf: &[u8], fds: &[OwnedFd]) -> (Verdict, Op) {
        use Verdict::{Forward, Reject};
        let body = &buf[HEADER..];
        let n = body.len();
        let einval = (Reject(libc::EINVAL), Op::Other);
        let needs_reply = matches!(h.command, VERSION | DEVICE_GET_INFO | GET_REGION_INFO | GET_IRQ_INFO | REGION_READ);
        if needs_reply && h.flags & NO_REPLY != 0 {
            return einval;
        }
        if h.flags & 0xf != 0 {
            return einval; // a reply (or an unknown type) sent as a request
        }
        // Connection initiation: negotiation comes first, once.
        if (h.command == VERSION) == self.negotiated {
            return einval;
        }
        if h.command != DMA_MAP && h.command != SET_IRQS && !fds.is_empty() {
            return einval;
        }
        match h.command {
            VERSION => {
                if n < 4 {
                    return einval;
                }
                let json = &body[4..];
                // The capabilities (the JSON, and each key in it) are optional; the crate's server
                // insists on a `capabilities` object, so it is given one when the client sent none.
                let caps = if json.is_empty() {
                    Some(serde_json::Map::new())
                } else {
                    match json.split_last() {
                        Some((0, rest)) => std::str::from_utf8(rest)
                            .ok()
                            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                            .and_then(|v| v.as_object().cloned()),
                        _ => None,
                    }
                };
                if let Some(p) = caps.as_ref().and_then(|c| c.get("capabilities")).and_then(|v| v.as_object()) {
                    self.proposed = p.keys().cloned().collect();
                } else {
                    self.proposed.clear();
                }
                match caps {
                    Some(c) if c.get("capabilities").is_some_and(|v| v.is_object()) => (Forward, Op::Version),
                    Some(mut c) if !c.contains_key("capabilities") => {
                        c.insert("capabilities".into(), serde_json::Value::Object(Default::default()));
                        let mut text = serde_json::Value::Object(c).to_string().into_bytes();
                        text.push(0);
                        (Verdict::Rewrite(resized(buf, 4, &text)), Op::Version)
                    }
                    _ => einval,
                }
            }
            DMA_MAP => {
                let (Some(argsz), Some(flags), Some(off), Some(iova), Some(size)) =
                    (u32_at(body, 0), u32_at(body, 4), u64_at(body, 8), u64_at(body, 16), u64_at(body, 24))
                else {
                    return einval;
                };
                if (argsz as usize) < 32 || flags & !DMA_MAP_FLAGS != 0 || size == 0 || iova.checked_add(size).is_none()
                {
                    return einval;
                }
                // This server reaches guest memory only through a mapped file, not DMA_READ/WRITE.
                let [fd] = fds else {
                    return (Reject(if fds.is_empty() { libc::ENOTSUP } else { libc::EINVAL }), Op::Other);
                };
                let end = off.checked_add(size);
                let len = nix::sys::stat::fstat(fd.as_raw_fd()).map(|st| st.st_size as u64).unwrap_or(0);
                if end.is_none_or(|e| e > len) {
                    return einval;
                }
                if self.maps.iter().any(|&(a, s)| iova < a + s && a < iova + size) {
                    return (Reject(libc::EEXIST), Op::Other);
                }
                if self.maps.len() >= MAX_MAPS {
                    return (Reject(libc::ENOSPC), Op::Other);
                }
                (Verdict::Rewrite(resized(buf, 32, &[])), Op::Map(iova, size))
            }
            DMA_UNMAP => {
                let (Some(argsz), Some(flags), Some(iova), Some(size)) =
                    (u32_at(body, 0), u32_at(body, 4), u64_at(body, 8), u64_at(body, 16))
                else {
                    return einval;
                };
                if (argsz as usize) < 24 || flags & !(UNMAP_GET_DIRTY_BITMAP | UNMAP_ALL) != 0 {
                    return einval;
                }
                if flags & UNMAP_GET_DIRTY_BITMAP != 0 {
                    // Dirty pages are reported through DEVICE_FEATURE DMA_LOGGING_REPORT instead.
                    return (Reject(libc::ENOTSUP), Op::Other);
                }
                if flags & UNMAP_ALL != 0 {
                    return if iova == 0 && size == 0 {
                        (Verdict::Rewrite(resized(buf, 24, &[])), Op::UnmapAll)
                    } else {
                        einval
                    };
                }
                if !self.maps.contains(&(iova, size)) {
                    return (Reject(libc::ENOENT), Op::Other);
                }
                (Verdict::Rewrite(resized(buf, 24, &[])), Op::Unmap(iova, size))
            }
            DEVICE_GET_INFO if n >= 16 => (Verdict::Rewrite(resized(buf, 16, &[])), Op::Other),
            GET_REGION_INFO if n >= 32 => {
                // A re-ask carries a payload as large as the argsz it asks for: the reply's
                // capability chain depends on argsz, not on the payload's length.
                match u32_at(body, 8) {
                    Some(i) if (i as usize) < self.region_sizes.len() => {
                        (Verdict::Rewrite(resized(buf, 32, &[])), Op::RegionInfo(u32_at(body, 0).unwrap_or(0)))
                    }
                    _ => einval,
                }
            }
            GET_IRQ_INFO if n >= 16 => match u32_at(body, 8) {
                Some(i) if i < NUM_IRQS as u32 => (Verdict::Rewrite(resized(buf, 16, &[])), Op::Other),
                _ => einval,
            },
            SET_IRQS => {
                let (Some(flags), Some(index), Some(start), Some(count)) =
                    (u32_at(body, 4), u32_at(body, 8), u32_at(body, 12), u32_at(body, 16))
                else {
                    return einval;
                };
                let data = flags & IRQ_DATA_MASK;
                let action = flags & IRQ_ACTION_MASK;
                if flags & !(IRQ_DATA_MASK | IRQ_ACTION_MASK) != 0 || data.count_ones() != 1 || action.count_ones() != 1
                {
                    return einval;
                }
                if data == VFIO_IRQ_SET_DATA_BOOL {
                    return (Reject(libc::ENOTSUP), Op::Other);
                }
                if n != 20 || index >= NUM_IRQS as u32 {
                    return einval;
                }
                // Not offered (as vfio-pci): per-vector MSI-X masking through SET_IRQS, and an
                // INTx unmask eventfd (resamplefd).
                let intx = index == VFIO_PCI_INTX_IRQ_INDEX;
                if (index == VFIO_PCI_MSIX_IRQ_INDEX && action != VFIO_IRQ_SET_ACTION_TRIGGER)
                    || (intx && data == VFIO_IRQ_SET_DATA_EVENTFD && action != VFIO_IRQ_SET_ACTION_TRIGGER)
                {
                    return (Reject(libc::ENOTSUP), Op::Other);
                }
                let vectors = match index {
                    VFIO_PCI_MSIX_IRQ_INDEX => self.msix,
                    VFIO_PCI_INTX_IRQ_INDEX => 1,
                    _ => 0,
                };
                if start.checked_add(count).is_none_or(|e| e > vectors)
                    && !(count == 0 && data == VFIO_IRQ_SET_DATA_NONE)
                {
                    return einval;
                }
                let eventfds = data == VFIO_IRQ_SET_DATA_EVENTFD;
                if (eventfds && !fds.is_empty() && fds.len() != count as usize) || (!eventfds && !fds.is_empty()) {
                    return einval;
                }
                (Forward, Op::Other)
            }
            REGION_READ | REGION_WRITE => {
                let (Some(off), Some(region), Some(count)) = (u64_at(body, 0), u32_at(body, 8), u32_at(body, 12))
                else {
                    return einval;
                };
                let data = if h.command == REGION_WRITE { count as usize } else { 0 };
                if count > MAX_DATA_XFER || n != 16 + data {
                    return einval;
                }
                let size = self.region_sizes.get(region as usize).copied().unwrap_or(0);
                if off.checked_add(u64::from(count)).is_none_or(|e| e > size) {
                    return einval; // past the region's end (or an empty region)
                }
                (Verdict::Access, Op::Other)
            }
            DEVICE_RESET if n == 0 => (Forward, Op::Other),
            DEVICE_FEATURE | MIG_DATA_READ | MIG_DATA_WRITE if n >= 8 && h.flags & NO_REPLY == 0 => {
                (Verdict::Local, Op::Other)
            }
            DEVICE_FEATURE | MIG_DATA_READ | MIG_DATA_WRITE => einval,
            DEVICE_GET_INFO | GET_REGION_INFO | GET_IRQ_INFO | DEVICE_RESET => einval,
            _ => (Reject(libc::ENOTSUP), Op::Other),
        }
    }

    /// A reply from the server: what it confirms is recorded; an error reply the crate left
    /// without an errno gets one; a VERSION reply keeps only the capabilities the client
    /// proposed (the spec: "a subset of those proposed"); a region info whose capability chain
    /// did not fit the client's argsz says so with cap_offset 0, as vfio-pci does.
    /// Returns whether the reply goes to the client (not for a request it sent with
    /// *No_reply*).
    fn reply(&mut self, buf: &mut Vec<u8>) -> bool {
        let h = MsgHeader::parse(buf[..HEADER].try_into().expect("a whole header"));
        // The worker answers in order: the oldest pending request with this id.
        let pos = self.pending.iter().position(|(id, _, _)| *id == h.id);
        let (op, silent) = pos.and_then(|p| self.pending.remove(p)).map_or((None, false), |(_, op, s)| (Some(op), s));
        if h.flags & ERROR != 0 {
            if u32_at(buf, 12) == Some(0) {
                buf[12..16].copy_from_slice(&(libc::EINVAL as u32).to_le_bytes());
            }
            if silent {
                tracing::debug!(command = h.command, "a request sent with No_reply failed in the server");
            }
            return !silent;
        }
        match op {
            Some(Op::Version) => {
                self.negotiated = true;
                self.keep_proposed(buf);
            }
            Some(Op::RegionInfo(argsz)) => {
                if u32_at(buf, HEADER).is_some_and(|need| need > argsz) && buf.len() >= HEADER + 16 {
                    buf[HEADER + 12..HEADER + 16].fill(0);
                }
            }
            Some(Op::Map(a, s)) => self.maps.push((a, s)),
            Some(Op::Unmap(a, s)) => self.maps.retain(|m| *m != (a, s)),
            Some(Op::UnmapAll) => self.maps.clear(),
            Some(Op::Other) | None => {}
        }
        !silent
    }

    /// Drops from a VERSION reply's JSON the capabilities the client did not propose.
    fn keep_proposed(&self, buf: &mut Vec<u8>) {
        let Some(json) = buf.get(HEADER + 4..) else { return };
        let text = json.strip_suffix(&[0]).unwrap_or(json);
        let Ok(serde_json::Value::Object(mut v)) = serde_json::from_slice::<serde_json::Value>(text) else { return };
        let Some(serde_json::Value::Object(caps)) = v.get_mut("capabilities") else { return };
        let before = caps.len();
        caps.retain(|k, _| self.proposed.iter().any(|p| p == k));
        if caps.len() == before {
            return;
        }
        let mut out = serde_json::Value::Object(v).to_string().into_bytes();
        out.push(0);
        buf.truncate(HEADER + 4);
        buf.extend_from_slice(&out);
        let n = buf.len() as u32;
        buf[4..8].copy_from_slice(&n.to_le_bytes());
    }
}

/// Fills `buf`, each read bounded by the socket's receive timeout and all of them by `deadline`.
fn read_exact_or(
    stream: &UnixStream,
    buf: &mut [u8],
    eof: fn() -> RelayEnd,
    deadline: Option<Instant>,
) -> Result<(), RelayEnd> {
    let mut s = stream;
    let mut got = 0;
    while got < buf.len() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(RelayEnd::Timeout("a message did not arrive whole within 5 s"));
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(eof()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(RelayEnd::Timeout("a message did not arrive whole within 5 s"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one message (header + body) and the fds that came with it.
fn read_message(
    from: &UnixStream,
    max: usize,
    eof: fn() -> RelayEnd,
    deadline: Option<Instant>,
) -> Result<(MsgHeader, Vec<u8>, Vec<OwnedFd>), RelayEnd> {
    let mut hdr = [0u8; HEADER];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let msg = recvmsg::<()>(from.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` in our table for this message; we
                        // are its only owner.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Err(eof());
    }
    if got < HEADER {
        read_exact_or(from, &mut hdr[got..], eof, deadline)?;
    }
    let h = MsgHeader::parse(&hdr);
    let size = h.size as usize;
    if size < HEADER || size > max {
        return Err(RelayEnd::Malformed(format!("command {} with message size {size}", h.command)));
    }
    let mut buf = vec![0u8; size];
    buf[..HEADER].copy_from_slice(&hdr);
    read_exact_or(from, &mut buf[HEADER..], eof, deadline)?;
    Ok((h, buf, fds))
}

fn send_message(to: &UnixStream, buf: &[u8], fds: &[OwnedFd]) -> Result<(), RelayEnd> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let sent = loop {
        match sendmsg::<()>(to.as_raw_fd(), &[IoSlice::new(buf)], cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    };
    let mut w = to;
    w.write_all(&buf[sent..])?;
    Ok(())
}

/// Does a region access the relay checked (`buf`: a whole REGION_READ or REGION_WRITE, its
/// range inside the region) on the model, as the worker would, and returns the reply.
fn access(local: &mut ConnBackend, h: &MsgHeader, buf: &[u8]) -> Vec<u8> {
    let body = &buf[HEADER..];
    let (off, region, count) =
        (u64_at(body, 0).unwrap_or(0), u32_at(body, 8).unwrap_or(0), u32_at(body, 12).unwrap_or(0) as usize);
    let mut out = body[..16].to_vec();
    // The backend never fails (an access it cannot do reads all-ones and is recorded).
    if h.command == REGION_READ {
        out.resize(16 + count, 0);
        let _ = local.region_read(region, off, &mut out[16..]);
    } else {
        let _ = local.region_write(region, off, &body[16..]);
    }
    reply(h, &out)
}

/// A successful reply to `h` carrying `body`.
fn reply(h: &MsgHeader, body: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; HEADER];
    r[0..2].copy_from_slice(&h.id.to_le_bytes());
    r[2..4].copy_from_slice(&h.command.to_le_bytes());
    r[4..8].copy_from_slice(&((HEADER + body.len()) as u32).to_le_bytes());
    r[8..12].copy_from_slice(&1u32.to_le_bytes()); // reply
    r.extend_from_slice(body);
    r
}

fn error_reply(h: &MsgHeader, errno: i32) -> [u8; HEADER] {
    let mut r = [0u8; HEADER];
    r[0..2].copy_from_slice(&h.id.to_le_bytes());
    r[2..4].copy_from_slice(&h.command.to_le_bytes());
    r[4..8].copy_from_slice(&(HEADER as u32).to_le_bytes());
    r[8..12].copy_from_slice(&(1u32 | (1 << 5)).to_le_bytes()); // reply | error
    r[12..16].copy_from_slice(&(errno as u32).to_le_bytes());
    r
}

/// Moves messages both ways until either side closes or the client misses a deadline (no
/// VERSION within [`NEGOTIATE_TIMEOUT`], a message not whole within [`MESSAGE_TIMEOUT`]).
/// Returns why it ended.
fn relay(s: &Arc<Shared>, conn: u64, client: &UnixStream, worker: &UnixStream, check: &mut ConnCheck) -> RelayEnd {
    // The relay's own way to the model, for the region accesses it does itself.
    let mut local = ConnBackend { shared: s.clone(), conn };
    let max = HEADER + 16 + MAX_DATA_XFER as usize + 4096;
    // Each read of a started message waits at most this long (the deadline bounds them all).
    if let Err(e) = client.set_read_timeout(Some(MESSAGE_TIMEOUT)) {
        return RelayEnd::Io(e);
    }
    let negotiate_by = Instant::now() + NEGOTIATE_TIMEOUT;
    loop {
        let wait = if check.negotiated {
            PollTimeout::NONE
        } else {
            let left = negotiate_by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return RelayEnd::Timeout("no VERSION within 10 s of connecting");
            }
            PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1).unwrap_or(PollTimeout::MAX)
        };
        let mut fds = [PollFd::new(client.as_fd(), PollFlags::POLLIN), PollFd::new(worker.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return RelayEnd::Io(e.into()),
        }
        let c_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let w_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if c_ready {
            let deadline = Some(Instant::now() + MESSAGE_TIMEOUT);
            let step = read_message(client, max, || RelayEnd::ClientClosed, deadline).and_then(|(h, buf, fds)| {
                let (verdict, op) = check.check(&h, &buf, &fds);
                // Nothing forwarded is still in the worker's hands (a No_reply request too is
                // pending until its dropped reply): an access cannot overtake one.
                let may_overtake = check.pending.is_empty();
                let mut forward = |msg: &[u8]| {
                    if op == Op::Version {
                        check.negotiated = true; // until an error reply says otherwise
                    }
                    let silent = h.flags & NO_REPLY != 0;
                    check.pending.push_back((h.id, op, silent));
                    if silent {
                        // Forwarded asking for a reply (dropped here), so the relay knows when
                        // it is done.
                        let mut m = msg.to_vec();
                        let flags = u32_at(&m, 8).unwrap_or(0) & !NO_REPLY;
                        m[8..12].copy_from_slice(&flags.to_le_bytes());
                        return send_message(worker, &m, &fds);
                    }
                    send_message(worker, msg, &fds)
                };
                match verdict {
                    Verdict::Forward => forward(&buf),
                    Verdict::Access if may_overtake => {
                        // A model that panics ends this connection, as it would in the worker.
                        let answer =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| access(&mut local, &h, &buf)))
                                .map_err(|_| RelayEnd::ModelPanic)?;
                        if h.flags & NO_REPLY == 0 {
                            send_message(client, &answer, &[])
                        } else {
                            Ok(())
                        }
                    }
                    Verdict::Access => forward(&buf),
                    Verdict::Rewrite(msg) => forward(&msg),
                    Verdict::Local => {
                        // Replies keep the order of the requests: the worker's come first.
                        while !check.pending.is_empty() {
                            let (_, mut r, rfds) = read_message(worker, max, || RelayEnd::ServerClosed, None)?;
                            if check.reply(&mut r) {
                                send_message(client, &r, &rfds)?;
                            }
                        }
                        let body = &buf[HEADER..];
                        let answer = match h.command {
                            MIG_DATA_READ => super::feature::mig_data_read(s, body),
                            MIG_DATA_WRITE => super::feature::mig_data_write(s, body),
                            _ => super::feature::device_feature(s, conn, body),
                        };
                        match answer {
                            Ok(body) => send_message(client, &reply(&h, &body), &[]),
                            Err(errno) => send_message(client, &error_reply(&h, errno), &[]),
                        }
                    }
                    Verdict::Reject(errno) => {
                        tracing::debug!(command = h.command, errno, "refused a request in the relay");
                        if h.flags & NO_REPLY != 0 {
                            Ok(())
                        } else {
                            send_message(client, &error_reply(&h, errno), &[])
                        }
                    }
                }
            });
            if let Err(e) = step {
                return e;
            }
        }
        if w_ready {
            let step = read_message(worker, max, || RelayEnd::ServerClosed, None).and_then(|(_, mut buf, fds)| {
                if let Some((_, Op::Version, _)) = check.pending.front() {
                    if u32_at(&buf, 8).is_some_and(|f| f & ERROR != 0) {
                        check.negotiated = false;
                    }
                }
                if check.reply(&mut buf) {
                    send_message(client, &buf, &fds)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = step {
                return e;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(command: u16, body: &[u8]) -> (MsgHeader, Vec<u8>) {
        let mut v = vec![0u8; HEADER];
        v[0..2].copy_from_slice(&7u16.to_le_bytes());
        v[2..4].copy_from_slice(&command.to_le_bytes());
        v[4..8].copy_from_slice(&((HEADER + body.len()) as u32).to_le_bytes());
        v.extend_from_slice(body);
        (MsgHeader::parse(v[..HEADER].try_into().unwrap()), v)
    }

    fn errno(v: &Verdict) -> i32 {
        match v {
            Verdict::Reject(e) => *e,
            _ => 0,
        }
    }

    #[test]
    fn negotiation_first_and_the_optional_json_optional() {
        let mut c = ConnCheck::new(vec![4096; 9], 64);
        let (h, m) = msg(GET_IRQ_INFO, &[16, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::EINVAL, "a command before VERSION");
        let (h, m) = msg(VERSION, &[0, 0, 1, 0]);
        let (v, op) = c.check(&h, &m, &[]);
        assert_eq!(op, Op::Version);
        match v {
            Verdict::Rewrite(r) => assert_eq!(&r[HEADER + 4..], b"{\"capabilities\":{}}\0"),
            _ => panic!("VERSION without JSON is given {{}}"),
        }
        let (h, m) = msg(VERSION, b"\0\0\x01\0{\"x\"\0");
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::EINVAL, "bad JSON");
    }

    #[test]
    fn ranges_flags_and_re_asks_are_checked() {
        let mut c = ConnCheck::new(vec![4096, 0, 0, 0, 0, 0, 0, 256, 0], 8);
        c.negotiated = true;
        // REGION_READ past the end, of an empty region, and in range.
        let rd = |off: u64, region: u32, count: u32| {
            let mut b = off.to_le_bytes().to_vec();
            b.extend_from_slice(&region.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
            msg(REGION_READ, &b)
        };
        let (h, m) = rd(4092, 0, 8);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::EINVAL);
        let (h, m) = rd(0, 1, 4);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::EINVAL);
        let (h, m) = rd(4092, 0, 4);
        assert!(matches!(c.check(&h, &m, &[]).0, Verdict::Access));
        // GET_REGION_INFO re-ask padded to argsz 80: cut to the 32 bytes the server reads.
        let mut b = vec![0u8; 80];
        b[0] = 80;
        b[8] = 7;
        let (h, m) = msg(GET_REGION_INFO, &b);
        match c.check(&h, &m, &[]).0 {
            Verdict::Rewrite(r) => {
                assert_eq!(r.len(), HEADER + 32);
                assert_eq!(r[HEADER], 80, "argsz kept");
            }
            _ => panic!("a padded re-ask is accepted"),
        }
        // DMA_UNMAP: dirty bitmap refused, ALL needs a zero range, an unknown range is ENOENT.
        let unmap = |flags: u32, iova: u64, size: u64| {
            let mut b = 24u32.to_le_bytes().to_vec();
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&iova.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            msg(DMA_UNMAP, &b)
        };
        let (h, m) = unmap(UNMAP_GET_DIRTY_BITMAP, 0x1000, 0x1000);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::ENOTSUP);
        let (h, m) = unmap(UNMAP_ALL, 0x1000, 0);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::EINVAL);
        let (h, m) = unmap(UNMAP_ALL, 0, 0);
        assert_eq!(c.check(&h, &m, &[]).1, Op::UnmapAll);
        let (h, m) = unmap(0, 0x1000, 0x1000);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::ENOENT);
        let (h, m) = unmap(1 << 7, 0x1000, 0x1000);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::EINVAL, "unknown flag");
        // SET_IRQS beyond the MSI-X table.
        let mut b = 20u32.to_le_bytes().to_vec();
        for v in [VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 6, 4] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let (h, m) = msg(SET_IRQS, &b);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::EINVAL);
        // Replies: a confirmed map is known; an error reply without errno gets one.
        c.pending.push_back((9, Op::Map(0x1000, 0x2000), false));
        let mut r = error_reply(&MsgHeader { id: 9, command: DMA_MAP, size: 16, flags: 0 }, 0).to_vec();
        r[8..12].copy_from_slice(&1u32.to_le_bytes());
        c.reply(&mut r);
        assert_eq!(c.maps, vec![(0x1000, 0x2000)], "the server confirmed the map");
        c.pending.push_back((10, Op::Map(0x8000, 0x1000), false));
        let mut e = error_reply(&MsgHeader { id: 10, command: DMA_MAP, size: 16, flags: 0 }, 0).to_vec();
        c.reply(&mut e);
        assert_eq!(u32_at(&e, 12), Some(libc::EINVAL as u32), "errno filled in");
        assert_eq!(c.maps, vec![(0x1000, 0x2000)], "a refused map is not recorded");
        // Now an overlapping map is EEXIST (the fd check comes first: give it a file).
        let f = tempfile::tempfile().unwrap();
        f.set_len(0x10000).unwrap();
        let mut b = 32u32.to_le_bytes().to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        for v in [0u64, 0x2000, 0x1000] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let (h, m) = msg(DMA_MAP, &b);
        let fd = OwnedFd::from(f);
        assert_eq!(errno(&c.check(&h, &m, std::slice::from_ref(&fd)).0), libc::EEXIST);
        assert_eq!(errno(&c.check(&h, &m, &[]).0), libc::ENOTSUP, "no fd");
    }
}
