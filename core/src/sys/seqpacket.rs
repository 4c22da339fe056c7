//! Unix `SOCK_SEQPACKET` sockets, the transport of DPDK's telemetry v2 (record boundaries kept,
//! connection oriented). Listener and accepted sockets are non-blocking and close-on-exec.

use super::UnixAddr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

fn new_socket(nonblock: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking listening socket bound to `path`, created mode 0600 (umask 0177 while binding).
pub fn seqpacket_listen(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let addr = UnixAddr::new(path)?;
    let fd = new_socket(true)?;
    let (sa, len) = addr.to_sockaddr();
    // SAFETY: umask takes no pointers; it is process-wide but restored right away.
    let old = unsafe { libc::umask(0o177) };
    // SAFETY: sa is a valid sockaddr_un of length len.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) };
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Accepts one connection (non-blocking, close-on-exec); `WouldBlock` when none is pending.
pub fn seqpacket_accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers are allowed: the peer address is not wanted.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// A blocking connection to the listener at `path` (clients: `lab status`, tests).
pub fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let addr = UnixAddr::new(path)?;
    let fd = new_socket(false)?;
    let (sa, len) = addr.to_sockaddr();
    // SAFETY: sa is a valid sockaddr_un of length len.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends one record without blocking (`MSG_DONTWAIT | MSG_NOSIGNAL`): a peer that does not read
/// gets `WouldBlock`, never a stalled sender. Returns the bytes sent.
pub fn seqpacket_send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid readable slice for the duration of the call.
        let r = unsafe {
            libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Receives one record into `buf`; a record longer than `buf` is cut (`MSG_TRUNC` reports its
/// full length, returned as the second value). `Ok((0, 0))` is the peer's orderly close.
pub fn seqpacket_recv(fd: BorrowedFd<'_>, buf: &mut [u8], nonblock: bool) -> io::Result<(usize, usize)> {
    let flags = libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: buf is a valid writable slice for the duration of the call.
        let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if r >= 0 {
            let full = r as usize;
            return Ok((full.min(buf.len()), full));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}
