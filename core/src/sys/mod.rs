//! The one place lab-core touches the kernel directly: shared mappings, record locks,
//! unix datagram sockets with `SCM_RIGHTS`/`SCM_CREDENTIALS`, and process liveness.
//!
//! Everything here is a thin, documented wrapper; policy lives in the callers (`mem`, `runtime`, `ipc`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

mod seqpacket;
pub use seqpacket::{seqpacket_accept, seqpacket_connect, seqpacket_listen, seqpacket_recv, seqpacket_send};

/// Allocates every block of `fd`'s first `len` bytes now, so a full mount fails here (ENOSPC)
/// and not with SIGBUS at a later first touch. A filesystem without fallocate is left sparse.
pub fn allocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    match nix::fcntl::fallocate(fd.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Free bytes on the filesystem holding `path` (for the caller without root: `f_bavail`).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Maps `len` bytes of `fd` shared and read-write. The mapping is never unmapped by lab-core
/// (see `mem::Shm`): pointers into it stay valid until the process exits.
///
/// Made by `memmap2` (`MmapRaw`: raw pointers only) and deliberately leaked: an mbuf or ring
/// pointer handed out from it may outlive any owner we could give the mapping, and an unmap
/// under such a pointer would be a use-after-free. The process's exit unmaps it.
pub fn mmap_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    let map = memmap2::MmapOptions::new().len(len).map_raw(fd.as_raw_fd())?;
    let map: &'static memmap2::MmapRaw = Box::leak(Box::new(map));
    NonNull::new(map.as_mut_ptr()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

/// Takes (`true`) or fails to take (`false`) an exclusive open-file-description write lock on
/// the whole file, without waiting. The lock lives as long as the descriptor.
pub fn try_write_lock(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the flock struct we own; fd is open.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // A killed child that its parent has not reaped yet still answers kill(0): look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => match s.rfind(')') {
            Some(i) => !matches!(s[i + 1..].trim_start().chars().next(), Some('Z') | Some('X')),
            None => true,
        },
        Err(_) => r == 0,
    }
}

/// The calling thread's id (unique among the live threads of every process of the namespace).
pub fn gettid() -> u32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// The caller's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Number of open descriptors of this process (from /proc/self/fd), for leak checks.
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(1)).unwrap_or(0)
}

/// Creates an eventfd (non-blocking, close-on-exec).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by eventfd and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd counter.
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local u64.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Reads and resets an eventfd counter (0 if not signalled).
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a local u64.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if r == 8 {
        v
    } else {
        0
    }
}

/// Waits until `fd` is readable or `stop` is signalled, at most `timeout_ms` (-1: forever).
/// Returns (fd readable, stop signalled).
pub fn poll2(fd: RawFd, stop: Option<RawFd>, timeout_ms: i32) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok((fds[0].revents != 0, fds[1].revents != 0));
    }
}

/// A unix address: a filesystem path of at most 107 bytes, kept inline (no allocation).
#[derive(Clone, Copy)]
pub struct UnixAddr {
    path: [u8; 108],
    len: u8,
}

impl UnixAddr {
    /// Address of a socket file. Fails when the path does not fit `sun_path`.
    pub fn new(p: &Path) -> io::Result<UnixAddr> {
        let b = p.as_os_str().as_bytes();
        if b.is_empty() || b.len() > 107 || b.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path {} is longer than 107 bytes (sun_path limit)", p.display()),
            ));
        }
        let mut path = [0u8; 108];
        path[..b.len()].copy_from_slice(b);
        Ok(UnixAddr { path, len: b.len() as u8 })
    }
    /// The path bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.path[..self.len as usize]
    }
    /// The path.
    pub fn path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(self.as_bytes()))
    }
    fn to_sockaddr(self) -> (libc::sockaddr_un, libc::socklen_t) {
        // SAFETY: sockaddr_un is plain data.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in sa.sun_path.iter_mut().zip(self.as_bytes()) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + self.len as usize + 1;
        (sa, len as libc::socklen_t)
    }
}

impl std::fmt::Debug for UnixAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path().display())
    }
}

/// Creates a unix datagram socket bound to `path` (mode 0600) with `SO_PASSCRED` set.
pub fn dgram_bind(path: &Path) -> io::Result<OwnedFd> {
    let addr = UnixAddr::new(path)?;
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int we own.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let (sa, len) = addr.to_sockaddr();
    // Bind under a restrictive umask so the socket file is created 0600 at once.
    // SAFETY: umask takes no pointers; it is process-wide but restored right away.
    let old = unsafe { libc::umask(0o177) };
    // SAFETY: sa is a valid sockaddr_un of length len.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) };
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sets the receive timeout of a socket (a blocking receive then fails with EAGAIN after `ms`).
pub fn set_recv_timeout(fd: BorrowedFd<'_>, ms: u64) -> io::Result<()> {
    set_timeout(fd, libc::SO_RCVTIMEO, ms)
}

/// Sets the send timeout of a socket.
pub fn set_send_timeout(fd: BorrowedFd<'_>, ms: u64) -> io::Result<()> {
    set_timeout(fd, libc::SO_SNDTIMEO, ms)
}

fn set_timeout(fd: BorrowedFd<'_>, opt: libc::c_int, ms: u64) -> io::Result<()> {
    let tv = libc::timeval { tv_sec: (ms / 1000) as libc::time_t, tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t };
    // SAFETY: setsockopt reads one timeval we own.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Largest number of descriptors one datagram may carry.
pub const MAX_FDS: usize = 8;

/// Ancillary buffer sized for `MAX_FDS` descriptors plus credentials, aligned for cmsghdr.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

/// Sends one datagram with optional descriptors (`SCM_RIGHTS`) to `to`.
pub fn dgram_send(
    fd: BorrowedFd<'_>,
    to: &UnixAddr,
    bufs: &[&[u8]],
    fds: &[RawFd],
    nonblock: bool,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    let (sa, salen) = to.to_sockaddr();
    let mut iov: [libc::iovec; 2] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
    let niov = bufs.len().min(2);
    for (v, b) in iov.iter_mut().zip(bufs) {
        v.iov_base = b.as_ptr() as *mut libc::c_void;
        v.iov_len = b.len();
    }
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: msghdr is plain data.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = (&sa as *const libc::sockaddr_un) as *mut libc::c_void;
    mh.msg_namelen = salen;
    mh.msg_iov = iov.as_mut_ptr();
    mh.msg_iovlen = niov as _;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        mh.msg_control = cbuf.0.as_mut_ptr().cast();
        mh.msg_controllen = space as _;
        // SAFETY: msg_control points at a buffer of at least `space` bytes (<= 128 for 8 fds),
        // aligned for cmsghdr; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload as usize);
        }
    }
    let flags = libc::MSG_NOSIGNAL | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: mh and everything it points to live until the call returns.
        let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &mh, flags) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// What `dgram_recv` got besides the bytes.
pub struct RecvInfo {
    /// Bytes received (clipped to the buffer).
    pub len: usize,
    /// The datagram was longer than the buffer.
    pub truncated: bool,
    /// Ancillary data did not fit (descriptors beyond the limit were closed by the kernel).
    pub ctrunc: bool,
    /// Sender address (empty path when the sender was unbound).
    pub from: Option<UnixAddr>,
    /// Sender credentials (pid, uid) when the kernel attached them.
    pub cred: Option<(u32, u32)>,
}

/// Receives one datagram, its descriptors (appended to `fds`) and the sender's credentials.
/// `nonblock` uses MSG_DONTWAIT. Descriptors are close-on-exec.
pub fn dgram_recv(fd: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>, nonblock: bool) -> io::Result<RecvInfo> {
    // SAFETY: sockaddr_un and msghdr are plain data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: plain data.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = (&mut sa as *mut libc::sockaddr_un).cast();
    mh.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.0.as_mut_ptr().cast();
    mh.msg_controllen = cbuf.0.len() as _;
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    let r = loop {
        // SAFETY: mh points at buffers that live across the call; sizes are set above.
        let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut mh, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    };
    let mut cred = None;
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed cmsgs;
    // CMSG_FIRSTHDR/CMSG_NXTHDR never step past msg_controllen, and we read each payload by its
    // declared length with unaligned reads.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let dlen = (*c).cmsg_len as usize - (data as usize - c as usize);
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let n = dlen / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let uc = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                cred = Some((uc.pid as u32, uc.uid));
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    let from = {
        let off = std::mem::size_of::<libc::sa_family_t>();
        let n = (mh.msg_namelen as usize).saturating_sub(off).min(107);
        let mut path = [0u8; 108];
        let mut len = 0usize;
        for (d, s) in path.iter_mut().zip(&sa.sun_path[..n]) {
            if *s == 0 {
                break;
            }
            *d = *s as u8;
            len += 1;
        }
        (len > 0).then_some(UnixAddr { path, len: len as u8 })
    };
    Ok(RecvInfo {
        len: r.min(buf.len()),
        truncated: r > buf.len() || mh.msg_flags & libc::MSG_TRUNC != 0,
        ctrunc: mh.msg_flags & libc::MSG_CTRUNC != 0,
        from,
        cred,
    })
}

/// A C string from a path, for libc calls.
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}
