//! A raw `AF_PACKET` socket bound to one interface: the kernel's side of a wire in tests (what a
//! veth or TAP end receives and sends). The product's own packet sockets are in lab-drivers'
//! `sys` module; this one only serves tests, so it panics with the OS error instead of returning it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A raw socket on one interface, every EtherType, a 50 ms receive timeout and an 8 MiB buffer.
pub struct RawSock(OwnedFd);

impl RawSock {
    /// Binds to `iface` (panics if it does not exist or the caller lacks CAP_NET_RAW).
    pub fn bind(iface: &str) -> RawSock {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
        assert!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(iface).expect("interface name without NUL");
        // SAFETY: c is NUL-terminated and lives across the call.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(idx != 0, "no interface {iface}");
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = idx as i32;
        // SAFETY: sa is a valid sockaddr_ll and its size is passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind to {iface}: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        set_opt(&fd, libc::SO_RCVTIMEO, &tv);
        // SO_RCVBUFFORCE: root may pass rmem_max, so bursts of test frames are not dropped.
        set_opt(&fd, libc::SO_RCVBUFFORCE, &((8 << 20) as libc::c_int));
        RawSock(fd)
    }

    /// Sends one frame whole (panics otherwise).
    pub fn send(&self, d: &[u8]) {
        // SAFETY: reads d.len() bytes from d, which lives across the call.
        let r = unsafe { libc::send(self.0.as_raw_fd(), d.as_ptr().cast(), d.len(), 0) };
        assert_eq!(r, d.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    /// Incoming frames that `keep` accepts (this socket's outgoing copies excluded), until `want`
    /// of them or `limit` has passed.
    pub fn recv(&self, want: usize, limit: Duration, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let end = Instant::now() + limit;
        while got.len() < want && Instant::now() < end {
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffer and address are ours, writable, and sized as passed.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sa as *mut libc::sockaddr_ll).cast(),
                    &mut sl,
                )
            };
            if n > 0 && sa.sll_pkttype != libc::PACKET_OUTGOING && keep(&buf[..n as usize]) {
                got.push(buf[..n as usize].to_vec());
            }
        }
        got
    }
}

fn set_opt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) {
    // SAFETY: the kernel reads size_of::<T>() bytes from v, a live reference of that size.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (v as *const T).cast(), std::mem::size_of::<T>() as u32)
    };
    assert_eq!(r, 0, "setsockopt {opt}: {}", std::io::Error::last_os_error());
}
