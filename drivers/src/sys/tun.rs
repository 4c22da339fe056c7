//! TAP queues: `/dev/net/tun` opened with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE`),
//! persistence, one frame read or written per call (a TAP queue has no batch interface).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use lab_core::mbuf::Mbuf;

use super::netif;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

pub(crate) fn open_queue(iface: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: the path is a NUL-terminated literal.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut r = netif::IfReq::new(iface)?;
    r.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `r` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut r as *mut netif::IfReq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

pub(crate) fn set_persist(fd: &OwnedFd, on: bool) -> std::io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, on as libc::c_ulong) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process may create interfaces (CAP_NET_ADMIN in its effective set).
pub fn has_net_admin() -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return false };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Reads one frame into `m` (its whole data room); the frame length, or None (nothing or error).
#[inline]
pub(crate) fn read_into(fd: RawFd, m: &mut Mbuf) -> Result<usize, std::io::Error> {
    let room = m.buf_len() - m.headroom();
    m.set_len(room);
    let b = m.data_mut();
    // SAFETY: reads at most b.len() bytes into the buffer we own mutably.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes one frame; `Err` carries the errno (EAGAIN/ENOBUFS: the queue is full).
#[inline]
pub(crate) fn write_frame(fd: RawFd, d: &[u8]) -> Result<usize, std::io::Error> {
    // SAFETY: writes d.len() bytes from a buffer we borrow for the duration of the call.
    let w = unsafe { libc::write(fd, d.as_ptr().cast(), d.len()) };
    if w < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(w as usize)
}
