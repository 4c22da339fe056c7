//! vfio-user client: one connection to an emulated PCI function.
//!
//! Written over the protocol rather than on the `vfio_user` crate's `Client`, which ignores
//! error replies and can block forever on one. Here every reply is checked (message id, reply
//! type, command, Error flag, size) and waited for with a deadline. Messages are serialized by a
//! mutex, so the threads of one process can share a connection. A timeout or a malformed reply
//! poisons the connection: the stream may be out of sync, so later calls fail fast instead of
//! reading someone else's reply.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use vfio_bindings::bindings::vfio as vb;

use crate::device::{check_access, DmaTable, IrqInfo, RegionInfo, RegionMap};
use crate::proto::{self, Command, HeaderRepr, HEADER_LEN};
use crate::sys::{self, Mapping};
use crate::{DeviceIo, DmaRegion, VfioError};

/// Default reply timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Protocol version we propose.
const VERSION_MAJOR: u16 = 0;
const VERSION_MINOR: u16 = 1;
/// Most fds we accept in one message (what `recv_with_fds` has room for).
const OUR_MAX_MSG_FDS: u32 = 16;
/// Largest region read/write payload we send or accept.
const OUR_MAX_XFER: u32 = 1 << 20;
/// Longest `sun_path` we can pass directly (108 bytes including the NUL).
const SUN_PATH_MAX: usize = 107;

/// Connect to a unix socket, also when `path` is longer than `sun_path` allows: then the
/// directory is opened `O_PATH` and the socket reached through `/proc/self/fd/<dirfd>/<name>`.
pub fn connect_socket(path: &Path) -> std::io::Result<UnixStream> {
    with_short_path(path, |p| UnixStream::connect(p))
}

/// Bind a listening unix socket at `path`, with the same long-path handling as
/// [`connect_socket`] (for emulators and tests).
pub fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    with_short_path(path, |p| UnixListener::bind(p))
}

fn with_short_path<T>(path: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return f(path);
    }
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (if d.as_os_str().is_empty() { Path::new(".") } else { d }, n),
        _ => return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)),
    };
    let dirfd: OwnedFd =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(dir)?.into();
    let short = PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd())).join(name);
    f(&short)
}

#[derive(Debug)]
struct ConnState {
    next_id: u16,
    poisoned: Option<String>,
    /// The first id posted (sent with *No_reply*) since the last reply was read: a server may
    /// still answer a posted write that failed with an error reply, which then comes before
    /// the next reply and carries an id in `[posted_from, that request's id)`.
    posted_from: Option<u16>,
}

/// A reply: its body (after the header) and the fds that came with it.
struct Reply {
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// A PCI function served over vfio-user.
#[derive(Debug)]
pub struct UserDevice {
    name: String,
    sock: UnixStream,
    state: Mutex<ConnState>,
    alive: AtomicBool,
    timeout: Duration,
    max_send_fds: usize,
    max_xfer: usize,
    device_flags: u32,
    regions: Vec<RegionInfo>,
    region_fds: Vec<Option<OwnedFd>>,
    irqs: Vec<IrqInfo>,
    dma: Mutex<DmaTable>,
}

impl UserDevice {
    /// Connect to the server at `path`, negotiate the version and read the region and irq
    /// tables. `name` is the device name used in errors (its PCI address); `timeout` bounds every
    /// reply.
    pub fn connect(path: &Path, name: &str, timeout: Duration) -> Result<UserDevice, VfioError> {
        let sock = connect_socket(path).map_err(|source| VfioError::Connect { path: path.to_path_buf(), source })?;
        // Bounds a send to a server that stopped reading; replies are bounded with poll.
        sock.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|source| VfioError::Connect { path: path.to_path_buf(), source })?;
        let mut dev = UserDevice {
            name: name.to_string(),
            sock,
            state: Mutex::new(ConnState { next_id: 0, poisoned: None, posted_from: None }),
            alive: AtomicBool::new(true),
            timeout,
            max_send_fds: 1,
            max_xfer: proto::MAX_REGION_INFO_LEN as usize,
            device_flags: 0,
            regions: Vec::new(),
            region_fds: Vec::new(),
            irqs: Vec::new(),
            dma: Mutex::new(DmaTable::default()),
        };
        dev.negotiate()?;
        dev.load_tables()?;
        tracing::debug!(
            device = %dev.name,
            regions = dev.regions.len(),
            irqs = dev.irqs.len(),
            max_xfer = dev.max_xfer,
            max_fds = dev.max_send_fds,
            "vfio-user device connected"
        );
        Ok(dev)
    }

    /// `VFIO_DEVICE_FLAGS_*` the server reported.
    pub fn device_flags(&self) -> u32 {
        self.device_flags
    }

    /// The largest region read/write payload per message, after negotiation.
    pub fn max_data_xfer_size(&self) -> usize {
        self.max_xfer
    }

    /// The most fds per message the server accepts, after negotiation.
    pub fn max_msg_fds(&self) -> usize {
        self.max_send_fds
    }

    /// Why the connection is unusable, if an earlier timeout or malformed reply poisoned it.
    pub fn poisoned(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).poisoned.clone()
    }

    fn negotiate(&mut self) -> Result<(), VfioError> {
        let ours = proto::VersionRepr {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            caps: proto::Capabilities { max_msg_fds: OUR_MAX_MSG_FDS, max_data_xfer_size: OUR_MAX_XFER },
        };
        let reply = self.transact(Command::Version, &ours.emit(), &[])?;
        let theirs =
            proto::VersionRepr::parse(&reply.body).map_err(|e| self.bad_reply(Command::Version, e.to_string()))?;
        if theirs.major != VERSION_MAJOR || theirs.minor > VERSION_MINOR {
            return Err(VfioError::Version {
                reason: format!(
                    "we propose {VERSION_MAJOR}.{VERSION_MINOR}, server answered {}.{}",
                    theirs.major, theirs.minor
                ),
            });
        }
        if theirs.caps.max_data_xfer_size < 8 {
            return Err(VfioError::Version {
                reason: format!("server max_data_xfer_size {} is too small", theirs.caps.max_data_xfer_size),
            });
        }
        self.max_xfer = theirs.caps.max_data_xfer_size.min(OUR_MAX_XFER) as usize;
        self.max_send_fds = theirs.caps.max_msg_fds.clamp(1, OUR_MAX_MSG_FDS) as usize;
        Ok(())
    }

    fn load_tables(&mut self) -> Result<(), VfioError> {
        let reply = self.transact(Command::DeviceGetInfo, &proto::device_info_request(), &[])?;
        let info = proto::DeviceInfoRepr::parse(&reply.body)
            .map_err(|e| self.bad_reply(Command::DeviceGetInfo, e.to_string()))?;
        self.device_flags = info.flags;
        for index in 0..info.num_regions {
            let (region, fd) = self.get_region_info(index)?;
            self.regions.push(region);
            self.region_fds.push(fd);
        }
        for index in 0..info.num_irqs {
            let reply = self.transact(Command::DeviceGetIrqInfo, &proto::irq_info_request(index), &[])?;
            let irq = proto::parse_irq_info(&reply.body, index)
                .map_err(|e| self.bad_reply(Command::DeviceGetIrqInfo, e.to_string()))?;
            self.irqs.push(irq);
        }
        Ok(())
    }

    fn get_region_info(&self, index: u32) -> Result<(RegionInfo, Option<OwnedFd>), VfioError> {
        let cmd = Command::DeviceGetRegionInfo;
        let mut argsz = proto::REGION_INFO_LEN as u32;
        // At most one re-ask: the second reply must fit what it asked for.
        for _ in 0..2 {
            let mut reply = self.transact(cmd, &proto::region_info_request(index, argsz), &[])?;
            let parsed = proto::RegionInfoRepr::parse(&reply.body, index)
                .map_err(|e| self.bad_reply(cmd, format!("region {index}: {e}")))?;
            if parsed.caps_complete {
                let fd = if reply.fds.is_empty() { None } else { Some(reply.fds.swap_remove(0)) };
                return Ok((parsed.info, fd));
            }
            if parsed.argsz <= argsz || parsed.argsz > proto::MAX_REGION_INFO_LEN {
                return Err(
                    self.bad_reply(cmd, format!("region {index}: capabilities missing with argsz {}", parsed.argsz))
                );
            }
            argsz = parsed.argsz;
        }
        Err(self.bad_reply(cmd, format!("region {index}: capabilities still missing after re-ask")))
    }

    fn poison(&self, state: &mut ConnState, reason: &str) {
        if state.poisoned.is_none() {
            tracing::warn!(device = %self.name, reason, "vfio-user connection poisoned");
            state.poisoned = Some(reason.to_string());
        }
    }

    fn bad_reply(&self, cmd: Command, reason: String) -> VfioError {
        if let Ok(mut st) = self.state.lock() {
            self.poison(&mut st, &format!("malformed {} reply: {reason}", cmd.name()));
        }
        VfioError::BadReply { command: cmd.name(), reason }
    }

    fn mark_dead(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            tracing::warn!(device = %self.name, "vfio-user server went away");
        }
    }

    fn io_error(&self, cmd: Command, e: std::io::Error, waited: Duration) -> VfioError {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => VfioError::Timeout { command: cmd.name(), waited },
            Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                self.mark_dead();
                VfioError::PeerClosed { command: cmd.name() }
            }
            _ => VfioError::Transport { command: cmd.name(), source: e },
        }
    }

    /// Send one command and wait for its reply, all under the connection lock.
    fn transact(&self, cmd: Command, body: &[u8], fds: &[RawFd]) -> Result<Reply, VfioError> {
        self.transact_after(&[], cmd, body, fds)
    }

    /// [`UserDevice::transact`] with the region writes `posted` (region, offset, data) sent
    /// with *No_reply* before the command, in the same send.
    fn transact_after(
        &self,
        posted: &[(u32, u64, &[u8])],
        cmd: Command,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<Reply, VfioError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &st.poisoned {
            return Err(VfioError::Poisoned { device: self.name.clone(), reason: reason.clone() });
        }
        let mut prefix = Vec::new();
        for (i, o, d) in posted {
            prefix.extend_from_slice(&Self::posted_write(&mut st, *i, *o, d));
        }
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1);
        let started = Instant::now();
        let deadline = started + self.timeout;
        let posted_from = st.posted_from.take();
        let r = self.exchange(prefix, (cmd, id, body, fds), posted_from, (deadline, started));
        match &r {
            Ok(_) | Err(VfioError::ErrorReply { .. }) => {}
            Err(e) => self.poison(&mut st, &e.to_string()),
        }
        r
    }

    /// Sends one whole message (the fds with its first byte).
    fn send_message(&self, cmd: Command, msg: &[u8], fds: &[RawFd], started: Instant) -> Result<(), VfioError> {
        let mut sent = 0;
        while sent < msg.len() {
            let fds_now = if sent == 0 { fds } else { &[] };
            match sys::send_with_fds(self.sock.as_fd(), &msg[sent..], fds_now) {
                Ok(0) => {
                    self.mark_dead();
                    return Err(VfioError::PeerClosed { command: cmd.name() });
                }
                Ok(n) => sent += n,
                Err(e) => return Err(self.io_error(cmd, e, started.elapsed())),
            }
        }
        Ok(())
    }

    /// Sends one command with *No_reply* set, under the connection lock, and returns at once.
    /// A failed or partial send poisons the connection (the stream may hold half a message).
    fn post(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &st.poisoned {
            return Err(VfioError::Poisoned { device: self.name.clone(), reason: reason.clone() });
        }
        let msg = Self::posted_write(&mut st, index, offset, data);
        let r = self.send_message(Command::RegionWrite, &msg, &[], Instant::now());
        if let Err(e) = &r {
            self.poison(&mut st, &e.to_string());
        }
        r
    }

    /// A REGION_WRITE with *No_reply*, its id taken from `st` (and remembered as posted).
    fn posted_write(st: &mut ConnState, index: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1);
        st.posted_from.get_or_insert(id);
        let body = proto::region_access_request(index, offset, data.len() as u32, data);
        proto::command_with_flags(id, Command::RegionWrite, &body, proto::TYPE_COMMAND | proto::FLAG_NO_REPLY)
    }

    /// Checks a REGION_READ reply against the request (region `index`, `off`, `chunk.len()`
    /// bytes) and copies its data into `chunk`.
    fn read_reply_into(&self, reply: &Reply, index: u32, off: u64, chunk: &mut [u8]) -> Result<(), VfioError> {
        let cmd = Command::RegionRead;
        let count = chunk.len() as u32;
        let r = proto::RegionAccessRepr::parse(&reply.body, true).map_err(|e| self.bad_reply(cmd, e.to_string()))?;
        if r.count != count || r.region != index || r.offset != off {
            return Err(self.bad_reply(
                cmd,
                format!(
                    "asked region {index} {off:#x}+{count}, reply says region {} {:#x}+{}",
                    r.region, r.offset, r.count
                ),
            ));
        }
        chunk.copy_from_slice(r.data);
        Ok(())
    }

    /// Sends `prefix` (whole messages sent with *No_reply*, or nothing) and the command in one
    /// send, then waits for the command's reply.
    fn exchange(
        &self,
        mut prefix: Vec<u8>,
        (cmd, id, body, fds): (Command, u16, &[u8], &[RawFd]),
        posted_from: Option<u16>,
        (deadline, started): (Instant, Instant),
    ) -> Result<Reply, VfioError> {
        prefix.extend_from_slice(&proto::command(id, cmd, body));
        self.send_message(cmd, &prefix, fds, started)?;
        tracing::trace!(device = %self.name, command = cmd.name(), id, "sent");

        let bad = |reason: String| VfioError::BadReply { command: cmd.name(), reason };
        let (h, mut fds_in) = loop {
            let mut fds_in = Vec::new();
            let mut head = [0u8; HEADER_LEN];
            self.recv_exact(cmd, &mut head, &mut fds_in, deadline, started)?;
            let h = HeaderRepr::parse(&head).map_err(|e| bad(e.to_string()))?;
            if h.id == id {
                break (h, fds_in);
            }
            // An error reply (header only) to a posted write sent before this request.
            let stray = posted_from.is_some_and(|first| {
                h.is_error()
                    && h.command == Command::RegionWrite as u16
                    && h.size as usize == HEADER_LEN
                    && h.id.wrapping_sub(first) < id.wrapping_sub(first)
            });
            if !stray {
                return Err(bad(format!("reply id {} does not match request id {id}", h.id)));
            }
            tracing::warn!(device = %self.name, id = h.id, errno = h.error, "a posted register write failed at the device");
        };
        // Servers before rust-vmm/vfio#144 sent error replies with the command type; the Error
        // flag alone identifies those.
        if h.msg_type() != proto::TYPE_REPLY && !h.is_error() {
            return Err(bad(format!("message type {} is not a reply", h.msg_type())));
        }
        if h.command != cmd as u16 {
            return Err(bad(format!("reply is for command {}, not {}", h.command, cmd as u16)));
        }
        let max = HEADER_LEN + 16 + self.max_xfer.max(proto::MAX_REGION_INFO_LEN as usize);
        if h.size as usize > max {
            return Err(bad(format!("reply size {} exceeds the limit {max}", h.size)));
        }
        let mut rest = vec![0u8; h.size as usize - HEADER_LEN];
        self.recv_exact(cmd, &mut rest, &mut fds_in, deadline, started)?;
        if h.is_error() {
            tracing::debug!(device = %self.name, command = cmd.name(), errno = h.error, "error reply");
            return Err(VfioError::ErrorReply { command: cmd.name(), errno: h.error });
        }
        Ok(Reply { body: rest, fds: fds_in })
    }

    fn recv_exact(
        &self,
        cmd: Command,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        deadline: Instant,
        started: Instant,
    ) -> Result<(), VfioError> {
        let mut got = 0;
        while got < buf.len() {
            let now = Instant::now();
            if now >= deadline {
                return Err(VfioError::Timeout { command: cmd.name(), waited: started.elapsed() });
            }
            let left = deadline - now;
            // Round up so a sub-millisecond remainder still waits.
            let ms = u16::try_from(left.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
            let mut pfd = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut pfd, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.io_error(cmd, e.into(), started.elapsed())),
            }
            match sys::recv_with_fds(self.sock.as_fd(), &mut buf[got..], fds) {
                Ok(0) => {
                    self.mark_dead();
                    return Err(VfioError::PeerClosed { command: cmd.name() });
                }
                Ok(n) => got += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) => return Err(self.io_error(cmd, e, started.elapsed())),
            }
        }
        Ok(())
    }

    fn region(&self, index: u32) -> Result<&RegionInfo, VfioError> {
        self.regions.get(index as usize).ok_or_else(|| VfioError::NoSuchRegion { device: self.name.clone(), index })
    }

    fn irq(&self, index: u32) -> Result<&IrqInfo, VfioError> {
        self.irqs.get(index as usize).ok_or_else(|| VfioError::NoSuchIrq { device: self.name.clone(), index })
    }

    fn set_irqs(&self, index: u32, flags: u32, start: u32, count: u32, fds: &[RawFd]) -> Result<(), VfioError> {
        let body = proto::set_irqs_request(flags, index, start, count);
        self.transact(Command::DeviceSetIrqs, &body, fds).map(drop)
    }
}

impl DeviceIo for UserDevice {
    fn irqs_per_process(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    fn irqs(&self) -> &[IrqInfo] {
        &self.irqs
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VfioError> {
        check_access(&self.name, &self.regions, index, offset, buf.len())?;
        let cmd = Command::RegionRead;
        let mut done = 0usize;
        for chunk in buf.chunks_mut(self.max_xfer) {
            let off = offset + done as u64;
            let count = chunk.len() as u32;
            let reply = self.transact(cmd, &proto::region_access_request(index, off, count, &[]), &[])?;
            self.read_reply_into(&reply, index, off, chunk)?;
            done += chunk.len();
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        check_access(&self.name, &self.regions, index, offset, data.len())?;
        let cmd = Command::RegionWrite;
        let mut done = 0usize;
        for chunk in data.chunks(self.max_xfer) {
            let off = offset + done as u64;
            let count = chunk.len() as u32;
            let reply = self.transact(cmd, &proto::region_access_request(index, off, count, chunk), &[])?;
            let r =
                proto::RegionAccessRepr::parse(&reply.body, false).map_err(|e| self.bad_reply(cmd, e.to_string()))?;
            if r.count != count {
                return Err(self.bad_reply(cmd, format!("wrote {count} bytes, reply says {}", r.count)));
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// A posted write: REGION_WRITE with *No_reply*, not waited for. The server processes a
    /// connection's commands in order (the spec's Command Concurrency), so any later command's
    /// reply, a read's say, comes after this write took effect, as a PCI read flushes the
    /// posted writes before it. An access the server refuses is dropped there unanswered, as a
    /// posted write to nowhere is on a bus.
    fn region_write_posted(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        check_access(&self.name, &self.regions, index, offset, data.len())?;
        let mut done = 0usize;
        for chunk in data.chunks(self.max_xfer) {
            let off = offset + done as u64;
            self.post(index, off, chunk)?;
            done += chunk.len();
        }
        Ok(())
    }

    /// The writes as *No_reply* messages and the read, in one send: one round trip, and the
    /// server sees all of them at once.
    fn posted_writes_then_read(
        &self,
        writes: &[(u32, u64, &[u8])],
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), VfioError> {
        for (i, o, d) in writes {
            check_access(&self.name, &self.regions, *i, *o, d.len())?;
        }
        check_access(&self.name, &self.regions, index, offset, buf.len())?;
        if buf.len() > self.max_xfer || writes.iter().any(|w| w.2.len() > self.max_xfer) {
            for (i, o, d) in writes {
                self.region_write_posted(*i, *o, d)?;
            }
            return self.region_read(index, offset, buf);
        }
        let body = proto::region_access_request(index, offset, buf.len() as u32, &[]);
        let reply = self.transact_after(writes, Command::RegionRead, &body, &[])?;
        self.read_reply_into(&reply, index, offset, buf)
    }

    fn map_region(&self, index: u32) -> Result<RegionMap, VfioError> {
        let region = self.region(index)?;
        let areas = region.mmap_areas();
        let mut map = RegionMap::empty();
        if areas.is_empty() {
            return Ok(map);
        }
        let Some(fd) = self.region_fds.get(index as usize).and_then(Option::as_ref) else {
            tracing::info!(device = %self.name, index, "region is mmap-able but the server sent no fd; all accesses trapped");
            return Ok(map);
        };
        for area in areas {
            let mmap_err = |source| VfioError::Mmap {
                device: self.name.clone(),
                index,
                offset: area.offset,
                size: area.size,
                source,
            };
            let file_off = region
                .offset
                .checked_add(area.offset)
                .ok_or_else(|| mmap_err(std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
            let m = Mapping::map_shared(fd.as_fd(), file_off, area.size).map_err(mmap_err)?;
            map.push(area, m);
        }
        Ok(map)
    }

    fn dma_map(&self, region: &DmaRegion<'_>) -> Result<(), VfioError> {
        let mut table = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        table.check_insert(&self.name, region.iova, region.size)?;
        let body =
            proto::dma_map_request(proto::DMA_READ | proto::DMA_WRITE, region.fd_offset, region.iova, region.size);
        self.transact(Command::DmaMap, &body, &[region.fd.as_raw_fd()])?;
        table.insert(region.iova, region.size, 0);
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        let mut table = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        table.check_remove(&self.name, iova, size)?;
        self.transact(Command::DmaUnmap, &proto::dma_unmap_request(iova, size), &[])?;
        table.remove(iova);
        Ok(())
    }

    fn reset(&self) -> Result<(), VfioError> {
        self.transact(Command::DeviceReset, &[], &[]).map(drop)
    }

    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[BorrowedFd<'_>]) -> Result<(), VfioError> {
        let irq = self.irq(index)?;
        let end = u32::try_from(fds.len()).ok().and_then(|n| start.checked_add(n));
        if !matches!(end, Some(e) if e <= irq.count) {
            return Err(VfioError::InvalidArgument {
                device: self.name.clone(),
                reason: format!("irq index {index} has {} vectors, asked {start}+{}", irq.count, fds.len()),
            });
        }
        let flags = vb::VFIO_IRQ_SET_DATA_EVENTFD | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        for (i, batch) in raw.chunks(self.max_send_fds).enumerate() {
            let first = start + (i * self.max_send_fds) as u32;
            self.set_irqs(index, flags, first, batch.len() as u32, batch)?;
        }
        Ok(())
    }

    fn disable_irqs(&self, index: u32) -> Result<(), VfioError> {
        self.irq(index)?;
        let flags = vb::VFIO_IRQ_SET_DATA_NONE | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
        self.set_irqs(index, flags, 0, 0, &[])
    }

    fn is_alive(&self) -> bool {
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        // A unix stream whose peer has closed polls POLLHUP (both directions shut down).
        // POLLRDHUP is not asked for: nix drops revents it has no name for.
        let mut pfd = [PollFd::new(self.sock.as_fd(), PollFlags::empty())];
        if let Ok(n) = nix::poll::poll(&mut pfd, PollTimeout::ZERO) {
            let gone = PollFlags::POLLHUP | PollFlags::POLLERR;
            if n > 0 && pfd[0].revents().is_some_and(|r| r.intersects(gone)) {
                self.mark_dead();
                return false;
            }
        }
        true
    }
}
