//! The kernel's device events (uevents over `NETLINK_KOBJECT_UEVENT`), as DPDK's
//! `rte_dev_event_monitor_start` reads them: a PCI function that appears (`add`), is bound to a
//! driver (`bind`: attachable once bound to vfio-pci), is unbound or disappears (`remove`).
//!
//! Only the kernel's multicast group is read, and only datagrams whose sender is the kernel
//! (netlink port id 0): udev's re-broadcasts and any process of the machine sending look-alikes
//! are dropped. Every field is bounded; a malformed event is skipped, never an error.

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::addr::PciAddr;

/// What happened to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevAction {
    /// It appeared.
    Add,
    /// It went away.
    Remove,
    /// A driver took it.
    Bind,
    /// Its driver let go of it.
    Unbind,
    /// Anything else (`change`, `online`, ...).
    Other,
}

/// One PCI device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevEvent {
    /// What happened.
    pub action: DevAction,
    /// The function (`PCI_SLOT_NAME`).
    pub addr: PciAddr,
    /// `DRIVER`, on a bind.
    pub driver: Option<String>,
}

/// Errors of opening the monitor.
#[derive(Debug, thiserror::Error)]
#[error("uevent monitor: {what}: {source}")]
pub struct UeventError {
    what: &'static str,
    #[source]
    source: nix::Error,
}

/// A socket on the kernel's uevent group.
pub struct Monitor {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;
/// The kernel's own events are under 8 KiB (`UEVENT_BUFFER_SIZE` is 2048 for the environment).
const MAX_EVENT: usize = 8192;

impl Monitor {
    /// Opens the monitor (any user may; the events are the same for all).
    pub fn open() -> Result<Monitor, UeventError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(|source| UeventError { what: "socket", source })?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))
            .map_err(|source| UeventError { what: "bind", source })?;
        // Bursts of events (a hot-add brings several) must not be lost to a small buffer.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
        Ok(Monitor { fd, buf: vec![0u8; MAX_EVENT] })
    }

    /// The next PCI event, waiting at most `within`; `None` when none came.
    pub fn next(&mut self, within: Duration) -> Option<DevEvent> {
        let deadline = Instant::now() + within;
        loop {
            match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut self.buf) {
                Ok((n, from)) => {
                    // Only the kernel (port id 0) speaks on its group for real.
                    if from.is_some_and(|a| a.pid() == 0) {
                        if let Some(e) = parse(&self.buf[..n.min(self.buf.len())]) {
                            return Some(e);
                        }
                    }
                    continue;
                }
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let mut p = [nix::poll::PollFd::new(self.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ =
                nix::poll::poll(&mut p, nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX));
        }
    }
}

/// A kernel uevent: `ACTION@DEVPATH\0KEY=VALUE\0...`; the PCI ones with their slot name.
pub fn parse(b: &[u8]) -> Option<DevEvent> {
    let mut fields = b.split(|&c| c == 0).filter(|f| !f.is_empty());
    let head = std::str::from_utf8(fields.next()?).ok()?;
    // udev's re-broadcasts start "libudev"; the kernel's with ACTION@DEVPATH.
    let (_, _) = head.split_once('@')?;
    let (mut action, mut subsystem, mut slot, mut driver) = (None, None, None, None);
    for f in fields {
        let Ok(kv) = std::str::from_utf8(f) else { continue };
        let Some((k, v)) = kv.split_once('=') else { continue };
        match k {
            "ACTION" => action = Some(v),
            "SUBSYSTEM" => subsystem = Some(v),
            "PCI_SLOT_NAME" => slot = Some(v),
            "DRIVER" if v.len() <= 64 => driver = Some(v.to_string()),
            _ => {}
        }
    }
    if subsystem != Some("pci") {
        return None;
    }
    let addr = PciAddr::parse_full(slot?).ok()?;
    let action = match action? {
        "add" => DevAction::Add,
        "remove" => DevAction::Remove,
        "bind" => DevAction::Bind,
        "unbind" => DevAction::Unbind,
        _ => DevAction::Other,
    };
    Some(DevEvent { action, addr, driver })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(parts: &[&str]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
    }

    #[test]
    fn kernel_pci_events_parse() {
        let add = ev(&[
            "add@/devices/pci0000:00/0000:00:04.0/0000:04:00.0",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:00/0000:00:04.0/0000:04:00.0",
            "SUBSYSTEM=pci",
            "PCI_ID=1AF4:1041",
            "PCI_SLOT_NAME=0000:04:00.0",
            "SEQNUM=1234",
        ]);
        let e = parse(&add).unwrap();
        assert_eq!(e.action, DevAction::Add);
        assert_eq!(e.addr.to_string(), "0000:04:00.0");
        let bind =
            ev(&["bind@/devices/x", "ACTION=bind", "SUBSYSTEM=pci", "DRIVER=vfio-pci", "PCI_SLOT_NAME=0000:04:00.0"]);
        assert_eq!(parse(&bind).unwrap().driver.as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn other_subsystems_udev_and_garbage_are_skipped() {
        assert!(parse(&ev(&["add@/devices/virtual/net/tap0", "ACTION=add", "SUBSYSTEM=net"])).is_none());
        assert!(parse(&ev(&["libudev", "ACTION=add", "SUBSYSTEM=pci", "PCI_SLOT_NAME=0000:04:00.0"])).is_none());
        assert!(parse(&ev(&["add@/x", "ACTION=add", "SUBSYSTEM=pci", "PCI_SLOT_NAME=not-a-bdf"])).is_none());
        assert!(parse(b"").is_none());
        assert!(parse(&[0xff, 0xfe, 0, 0]).is_none());
    }
}
