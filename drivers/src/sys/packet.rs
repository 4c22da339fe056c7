//! AF_PACKET sockets: the PACKET_MMAP (TPACKET_V2) queue sockets of `net_af_packet`, with
//! their rings and fanout, and the plain live-interface sockets of `net_pcap` (`recvmmsg` /
//! `sendmmsg` in batches, so no packet costs a syscall of its own).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use lab_core::ethdev::PortStats;
use lab_core::mbuf::{Mbuf, Mempool};

use super::netif;
use crate::error::{Ctx, DriverError};

// <linux/if_packet.h>
const SOL_PACKET: libc::c_int = 263;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_LOSS: libc::c_int = 14;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V2: libc::c_int = 1;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
/// Frames moved per `recvmmsg`/`sendmmsg`.
const BATCH: usize = 32;

/// `struct tpacket_req`.
#[repr(C)]
pub(crate) struct TpacketReq {
    pub(crate) tp_block_size: u32,
    pub(crate) tp_block_nr: u32,
    pub(crate) tp_frame_size: u32,
    pub(crate) tp_frame_nr: u32,
}
// `struct tpacket_req` of <linux/if_packet.h>.
const _: () = assert!(std::mem::size_of::<TpacketReq>() == 16);

/// The PACKET_MMAP transmit kick: the kernel sends every SEND_REQUEST frame of the ring.
#[inline]
pub(crate) fn kick_tx(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: send with a null buffer of length 0 is the documented PACKET_MMAP kick.
    let r = unsafe { libc::send(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The last kernel error, as the error of `what`.
fn os_err(what: impl Into<String>) -> DriverError {
    DriverError::Os { what: what.into(), source: std::io::Error::last_os_error() }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: &T, what: &str) -> Result<(), DriverError> {
    // SAFETY: setsockopt reads size_of::<T>() bytes from a value we own for the call.
    let r = unsafe { libc::setsockopt(fd, level, opt, (v as *const T).cast(), std::mem::size_of::<T>() as u32) };
    if r != 0 {
        return Err(os_err(what));
    }
    Ok(())
}

/// One mapping of a socket's rx ring followed by its tx ring (`memmap2::MmapRaw`, raw pointers
/// only); unmapped on drop, after the queue that borrows frames from it.
pub(crate) struct RingMap {
    map: memmap2::MmapRaw,
}

impl RingMap {
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> Result<RingMap, DriverError> {
        memmap2::MmapOptions::new()
            .len(len)
            .map_raw(fd.as_raw_fd())
            .map(|map| RingMap { map })
            .ctx("mmap of the packet rings")
    }

    /// The first byte of the rx ring (the tx ring follows it).
    #[inline]
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

/// Opens, configures and binds one queue socket (primary).
pub(crate) fn open_ring_socket(ifindex: u32, req: &TpacketReq, bypass: bool) -> Result<OwnedFd, DriverError> {
    // Protocol 0 until bound: nothing is queued from other interfaces in between.
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = os_err("socket(AF_PACKET)");
        return Err(match e {
            DriverError::Os { source, .. } if source.raw_os_error() == Some(libc::EPERM) => {
                DriverError::Os { what: "socket(AF_PACKET) (needs CAP_NET_RAW)".into(), source }
            }
            e => e,
        });
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    setsockopt(raw, SOL_PACKET, PACKET_VERSION, &TPACKET_V2, "PACKET_VERSION TPACKET_V2")?;
    setsockopt(raw, SOL_PACKET, PACKET_LOSS, &1i32, "PACKET_LOSS")?;
    if bypass {
        setsockopt(raw, SOL_PACKET, PACKET_QDISC_BYPASS, &1i32, "PACKET_QDISC_BYPASS")?;
    }
    setsockopt(raw, SOL_PACKET, PACKET_RX_RING, req, "PACKET_RX_RING")?;
    setsockopt(raw, SOL_PACKET, PACKET_TX_RING, req, "PACKET_TX_RING")?;
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: bind reads one sockaddr_ll we own.
    let r = unsafe {
        libc::bind(raw, (&sa as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
    };
    if r != 0 {
        return Err(os_err("bind"));
    }
    Ok(fd)
}

/// Puts every socket in one hash fanout group whose id the kernel picks.
pub(crate) fn join_fanout(fds: &[OwnedFd]) -> Result<(), DriverError> {
    let Some(first) = fds.first() else { return Ok(()) };
    let arg: u32 = (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16;
    setsockopt(first.as_raw_fd(), SOL_PACKET, PACKET_FANOUT, &arg, "PACKET_FANOUT")?;
    let mut got: u32 = 0;
    let mut len = 4u32;
    // SAFETY: getsockopt writes at most `len` (4) bytes into `got`.
    let r = unsafe {
        libc::getsockopt(first.as_raw_fd(), SOL_PACKET, PACKET_FANOUT, (&mut got as *mut u32).cast(), &mut len)
    };
    if r != 0 {
        return Err(os_err("getsockopt PACKET_FANOUT"));
    }
    let arg = (got & 0xffff) | (PACKET_FANOUT_HASH << 16);
    for fd in &fds[1..] {
        setsockopt(fd.as_raw_fd(), SOL_PACKET, PACKET_FANOUT, &arg, "PACKET_FANOUT (join)")?;
    }
    Ok(())
}

pub(crate) fn open_live(iface: &str, rx: bool) -> Result<OwnedFd, DriverError> {
    let idx = netif::index(iface).ctx(format!("interface {iface} not found"))?;
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(os_err("socket(AF_PACKET)"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if rx {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int.
        let r = unsafe {
            libc::setsockopt(fd.as_raw_fd(), SOL_PACKET, PACKET_IGNORE_OUTGOING, (&one as *const libc::c_int).cast(), 4)
        };
        if r != 0 {
            return Err(os_err("PACKET_IGNORE_OUTGOING"));
        }
    }
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    // A send-only socket binds with protocol 0: it never queues received frames.
    sa.sll_protocol = if rx { (libc::ETH_P_ALL as u16).to_be() } else { 0 };
    sa.sll_ifindex = idx as i32;
    // SAFETY: bind reads one sockaddr_ll we own.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(os_err(format!("bind to {iface}")));
    }
    Ok(fd)
}

/// `recvmmsg` into buffers taken from `pool`, into the front of `pkts`. Returns how many.
pub(crate) fn live_rx(
    fd: RawFd,
    pool: &mut Mempool,
    pkts: &mut [Option<Mbuf>],
    st: &mut PortStats,
    port: u16,
) -> usize {
    let k = pkts.len().min(BATCH);
    if k == 0 {
        return 0;
    }
    if !pool.alloc_bulk(&mut pkts[..k]) {
        st.rx_nombuf += 1;
        return 0;
    }
    // SAFETY: iovec and mmsghdr are plain data; zero is a valid value for both.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, m) in pkts[..k].iter_mut().enumerate() {
        if let Some(m) = m {
            let room = m.buf_len() - m.headroom();
            m.set_len(room);
            let d = m.data_mut();
            iov[i] = libc::iovec { iov_base: d.as_mut_ptr().cast(), iov_len: d.len() };
        }
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: msgs[..k] point at iovecs that point into buffers we own until the call returns.
    let r = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), k as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
    let got = if r < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        if e != Some(libc::EAGAIN) {
            st.ierrors += 1;
        }
        0
    } else {
        r as usize
    };
    for (i, slot) in pkts[..k].iter_mut().enumerate() {
        if i < got {
            if let Some(m) = slot {
                m.set_len(msgs[i].msg_len as usize);
                m.set_port(port);
                st.ibytes += m.len() as u64;
            }
        } else if let Some(m) = slot.take() {
            pool.free(m);
        }
    }
    st.ipackets += got as u64;
    got
}

/// `sendmmsg` of the front of `pkts`; returns how many were taken (sent or refused).
pub(crate) fn live_tx(fd: RawFd, pool: &mut Mempool, pkts: &mut [Option<Mbuf>], st: &mut PortStats) -> usize {
    let mut k = pkts.iter().take(BATCH).take_while(|s| s.is_some()).count();
    // One iovec per frame: a chained packet is copied into one buffer first. One that cannot be
    // ends the batch; first in it, it is dropped and counted.
    for (i, slot) in pkts[..k].iter_mut().enumerate() {
        if slot.as_ref().is_none_or(|m| m.nb_segs() == 1) {
            continue;
        }
        match slot.take().map(|m| pool.linearize(m)) {
            Some(Ok(one)) => *slot = Some(one),
            Some(Err(m)) if i == 0 => {
                st.oerrors += 1;
                pool.free(m);
                return 1;
            }
            Some(Err(m)) => {
                *slot = Some(m);
                k = i;
                break;
            }
            None => {}
        }
    }
    if k == 0 {
        return 0;
    }
    // SAFETY: plain data, zero is valid.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, m) in pkts[..k].iter().enumerate() {
        if let Some(m) = m {
            let d = m.data();
            iov[i] = libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() };
        }
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the kernel only reads the buffers, which we own until the call returns.
    let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), k as u32, libc::MSG_DONTWAIT) };
    let sent = if r < 0 {
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => return 0,
            // The first frame was refused (too long, interface down): drop it, count it.
            _ => {
                st.oerrors += 1;
                if let Some(m) = pkts[0].take() {
                    pool.free(m);
                }
                return 1;
            }
        }
    } else {
        r as usize
    };
    for slot in &mut pkts[..sent] {
        if let Some(m) = slot.take() {
            st.obytes += m.pkt_len() as u64;
            pool.free(m);
        }
    }
    st.opackets += sent as u64;
    sent
}
