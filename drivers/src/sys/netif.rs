//! Interface ioctls on a throw-away socket: index, flags, MAC, MTU, existence.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct ifreq`: the name and a 24-byte union.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct IfReq {
    pub(crate) name: [u8; 16],
    pub(crate) data: [u8; 24],
}
const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    pub(crate) fn new(iface: &str) -> io::Result<IfReq> {
        let b = iface.as_bytes();
        if b.is_empty() || b.len() > 15 || b.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {iface:?}")));
        }
        let mut r = IfReq { name: [0; 16], data: [0; 24] };
        r.name[..b.len()].copy_from_slice(b);
        Ok(r)
    }
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs an interface ioctl (`SIOC*IF*`) on a control socket.
pub(crate) fn ioctl(req: libc::c_ulong, r: &mut IfReq) -> io::Result<()> {
    let s = ctl_socket()?;
    // SAFETY: every SIOC[GS]IF* request used here reads/writes one struct ifreq (40 bytes), which
    // `r` is, for the duration of the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), req as _, r as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Interface index, or an error when there is no such interface.
pub(crate) fn index(iface: &str) -> io::Result<u32> {
    let c = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}

/// Whether an interface of that name exists.
pub(crate) fn exists(iface: &str) -> bool {
    index(iface).is_ok()
}

/// Sets IFF_UP (and, for `promisc`, IFF_PROMISC).
pub(crate) fn set_up(iface: &str, promisc: bool) -> io::Result<()> {
    let mut r = IfReq::new(iface)?;
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    let mut flags = i16::from_ne_bytes([r.data[0], r.data[1]]);
    flags |= libc::IFF_UP as i16;
    if promisc {
        flags |= libc::IFF_PROMISC as i16;
    }
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(libc::SIOCSIFFLAGS, &mut r)
}

/// Turns IFF_PROMISC on or off.
pub(crate) fn set_promisc(iface: &str, on: bool) -> io::Result<()> {
    let mut r = IfReq::new(iface)?;
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    let mut flags = i16::from_ne_bytes([r.data[0], r.data[1]]);
    if on {
        flags |= libc::IFF_PROMISC as i16;
    } else {
        flags &= !(libc::IFF_PROMISC as i16);
    }
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(libc::SIOCSIFFLAGS, &mut r)
}

/// Whether the interface is up and running (carrier).
pub(crate) fn is_running(iface: &str) -> bool {
    let Ok(mut r) = IfReq::new(iface) else { return false };
    if ioctl(libc::SIOCGIFFLAGS, &mut r).is_err() {
        return false;
    }
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) as i32;
    flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}

/// The interface's MAC address.
pub(crate) fn mac(iface: &str) -> io::Result<[u8; 6]> {
    let mut r = IfReq::new(iface)?;
    ioctl(libc::SIOCGIFHWADDR, &mut r)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(&r.data[2..8]);
    Ok(m)
}

/// Sets the interface's MAC address.
pub(crate) fn set_mac(iface: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut r = IfReq::new(iface)?;
    r.data[..2].copy_from_slice(&(libc::ARPHRD_ETHER).to_ne_bytes());
    r.data[2..8].copy_from_slice(&mac);
    ioctl(libc::SIOCSIFHWADDR, &mut r)
}

/// The interface's MTU.
pub(crate) fn mtu(iface: &str) -> io::Result<u16> {
    let mut r = IfReq::new(iface)?;
    ioctl(libc::SIOCGIFMTU, &mut r)?;
    Ok(i32::from_ne_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]).clamp(0, u16::MAX as i32) as u16)
}

/// Formats a MAC address.
pub(crate) fn mac_str(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}
