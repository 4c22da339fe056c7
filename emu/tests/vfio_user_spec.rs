//! vfio-user conformance of lab-nic, written from the spec (QEMU's docs/interop/vfio-user.rst)
//! with a raw client of its own: messages are built and parsed here byte by byte, so a mistake
//! our client (lab-vfio) and our server share cannot pass. Every command, each error path with
//! its errno, the region-info re-ask, the two-phase DMA map and unmap (unmap-all included),
//! SET_IRQS for MSI-X and for INTx (automasked, level-sensitive) with the eventfds firing on an
//! interrupt cause, several clients at once, and
//! clients that stall (half-open, never negotiating) not holding the function's slots.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab_testkit::LabNic;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

const BDF: &str = "0000:00:05.0";
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
const NO_REPLY: u32 = 1 << 4;
const ERROR: u32 = 1 << 5;
const MSIX: u32 = 2; // VFIO_PCI_MSIX_IRQ_INDEX
const INTX: u32 = 0; // VFIO_PCI_INTX_IRQ_INDEX
const EVENTFD_TRIGGER: u64 = (1 << 2) | (1 << 5);

fn start() -> LabNic {
    start_model("ixgbe")
}

fn start_model(model: &str) -> LabNic {
    LabNic::builder().bin(env!("CARGO_BIN_EXE_lab-nic")).dev(format!("{BDF},model={model},wire=loopback")).start()
}

fn sock(nic: &LabNic) -> PathBuf {
    nic.socket(BDF)
}

/// A reply: its header fields, body and fds.
struct Reply {
    id: u16,
    command: u16,
    flags: u32,
    errno: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Reply {
    fn err(&self) -> Option<u32> {
        (self.flags & ERROR != 0).then_some(self.errno)
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Little-endian fields, concatenated.
fn le(fields: &[(u64, usize)]) -> Vec<u8> {
    fields.iter().flat_map(|(v, n)| v.to_le_bytes()[..*n].to_vec()).collect()
}

struct Raw {
    s: UnixStream,
    next: u16,
}

impl Raw {
    fn connect(nic: &LabNic) -> Raw {
        let s = UnixStream::connect(sock(nic)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, next: 1 }
    }

    fn send(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> u16 {
        self.send_flags(command, body, fds, 0)
    }

    fn send_flags(&mut self, command: u16, body: &[u8], fds: &[RawFd], flags: u32) -> u16 {
        let id = self.next;
        self.next += 1;
        let mut m =
            le(&[(id as u64, 2), (command as u64, 2), ((16 + body.len()) as u64, 4), (flags as u64, 4), (0, 4)]);
        m.extend_from_slice(body);
        let cmsg = [ControlMessage::ScmRights(fds)];
        let c: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        let n = sendmsg::<()>(self.s.as_raw_fd(), &[std::io::IoSlice::new(&m)], c, MsgFlags::empty(), None).unwrap();
        self.s.write_all(&m[n..]).unwrap();
        id
    }

    fn recv(&mut self) -> Reply {
        let mut h = [0u8; 16];
        let mut fds = Vec::new();
        let n = {
            let mut iov = [std::io::IoSliceMut::new(&mut h)];
            let mut space = nix::cmsg_space!([RawFd; 8]);
            let msg =
                recvmsg::<()>(self.s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(v) = c {
                    // SAFETY: the kernel installed these descriptors for us; we own them now.
                    fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            msg.bytes
        };
        assert!(n > 0, "server closed the connection");
        self.s.read_exact(&mut h[n..]).unwrap();
        let size = u32_at(&h, 4) as usize;
        let mut body = vec![0u8; size - 16];
        self.s.read_exact(&mut body).unwrap();
        Reply {
            id: u16::from_le_bytes([h[0], h[1]]),
            command: u16::from_le_bytes([h[2], h[3]]),
            flags: u32_at(&h, 8),
            errno: u32_at(&h, 12),
            body,
            fds,
        }
    }

    fn call(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> Reply {
        let id = self.send(command, body, fds);
        let r = self.recv();
        assert_eq!((r.id, r.command), (id, command), "the reply answers the request");
        assert_eq!(r.flags & 0xf, 1, "a reply");
        r
    }

    fn negotiate(&mut self) -> serde_json::Value {
        let mut b = le(&[(0, 2), (1, 2)]);
        b.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":8}}\0");
        let r = self.call(VERSION, &b, &[]);
        assert_eq!(r.err(), None);
        assert_eq!(u16::from_le_bytes([r.body[0], r.body[1]]), 0, "major 0");
        let json = &r.body[4..];
        assert_eq!(json.last(), Some(&0), "NUL-terminated");
        serde_json::from_slice(&json[..json.len() - 1]).expect("JSON")
    }

    fn read32(&mut self, region: u32, off: u64) -> Result<u32, u32> {
        let r = self.call(REGION_READ, &le(&[(off, 8), (region as u64, 4), (4, 4)]), &[]);
        match r.err() {
            Some(e) => Err(e),
            None => Ok(u32_at(&r.body, 16)),
        }
    }

    fn write32(&mut self, region: u32, off: u64, v: u32) -> Option<u32> {
        self.call(REGION_WRITE, &le(&[(off, 8), (region as u64, 4), (4, 4), (v as u64, 4)]), &[]).err()
    }
}

/// Waits (up to 5 s) for `ev` to be signalled, and consumes the signal.
fn fired(ev: &nix::sys::eventfd::EventFd) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if ev.read().is_ok_and(|n| n >= 1) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn memfd(len: u64) -> OwnedFd {
    let f = tempfile::tempfile().unwrap();
    f.set_len(len).unwrap();
    OwnedFd::from(f)
}

#[test]
fn negotiation_comes_first_and_its_json_is_optional() {
    let nic = start();
    let mut c = Raw::connect(&nic);
    let r = c.call(DEVICE_GET_INFO, &le(&[(16, 4), (0, 4), (0, 4), (0, 4)]), &[]);
    assert_eq!(r.err(), Some(libc::EINVAL as u32), "a command before VERSION");
    let r = c.call(VERSION, &le(&[(0, 2), (1, 2)]), &[]);
    assert_eq!(r.err(), None, "VERSION without its JSON");
    let r = c.call(VERSION, &le(&[(0, 2), (1, 2)]), &[]);
    assert_eq!(r.err(), Some(libc::EINVAL as u32), "negotiation happens once");
    let mut bad = Raw::connect(&nic);
    let mut b = le(&[(0, 2), (1, 2)]);
    b.extend_from_slice(b"{not json\0");
    assert_eq!(bad.call(VERSION, &b, &[]).err(), Some(libc::EINVAL as u32));
    let caps = bad.negotiate();
    assert!(caps["capabilities"]["max_msg_fds"].as_u64().is_some_and(|n| n >= 1), "{caps}");
    // "The capability list must be a subset of those proposed."
    let keys: Vec<&String> = caps["capabilities"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["max_msg_fds"], "only what the client proposed: {caps}");
    let mut other = Raw::connect(&nic);
    let mut b = le(&[(0, 2), (1, 2)]);
    b.extend_from_slice(b"{\"capabilities\":{\"pgsizes\":4096,\"max_data_xfer_size\":65536}}\0");
    let r = other.call(VERSION, &b, &[]);
    assert_eq!(r.err(), None);
    let json: serde_json::Value = serde_json::from_slice(&r.body[4..r.body.len() - 1]).unwrap();
    assert!(
        json["capabilities"].as_object().unwrap().keys().all(|k| k == "pgsizes" || k == "max_data_xfer_size"),
        "{json}"
    );
}

#[test]
fn device_region_and_irq_info_with_the_capability_chain_on_the_re_ask() {
    let nic = start();
    let mut c = Raw::connect(&nic);
    c.negotiate();
    let r = c.call(DEVICE_GET_INFO, &le(&[(16, 4), (0, 4), (0, 4), (0, 4)]), &[]);
    assert_eq!(r.err(), None);
    let (flags, regions, irqs) = (u32_at(&r.body, 4), u32_at(&r.body, 8), u32_at(&r.body, 12));
    assert_ne!(flags & 2, 0, "VFIO_DEVICE_FLAGS_PCI");
    assert!(regions >= 9 && irqs >= 5, "{regions} regions, {irqs} irqs");
    // BAR0, asked with the bare 32 bytes: the reply says how much the capability chain needs.
    let ask = |argsz: u64| {
        let mut b = le(&[(argsz, 4), (0, 4), (0, 4), (0, 4), (0, 8), (0, 8)]);
        b.resize(argsz.max(32) as usize, 0);
        b
    };
    let r = c.call(GET_REGION_INFO, &ask(32), &[]);
    assert_eq!(r.err(), None);
    let need = u32_at(&r.body, 0) as u64;
    assert!(need > 32, "BAR0 has a sparse-mmap capability: argsz {need}");
    assert_eq!(u32_at(&r.body, 4) & 8, 8, "VFIO_REGION_INFO_FLAG_CAPS");
    assert_eq!(u32_at(&r.body, 12), 0, "cap_offset 0: the chain is not in this reply (as vfio-pci)");
    assert_eq!(u64_at(&r.body, 16), 512 * 1024, "BAR0 size");
    // The re-ask, padded to that argsz as libvfio-user's client sends it.
    let r = c.call(GET_REGION_INFO, &ask(need), &[]);
    assert_eq!(r.err(), None);
    assert_eq!(r.body.len() as u64, need, "the whole chain");
    let cap = u32_at(&r.body, 12) as usize;
    assert!(cap >= 32, "cap_offset {cap}");
    assert_eq!(u16::from_le_bytes([r.body[cap], r.body[cap + 1]]), 1, "VFIO_REGION_INFO_CAP_SPARSE_MMAP");
    let areas = u32_at(&r.body, cap + 8);
    assert!(areas >= 1 && cap + 16 + 16 * areas as usize <= r.body.len(), "{areas} areas");
    assert_eq!(r.fds.len(), 1, "the mappable region comes with its fd");
    // A region that does not exist.
    let mut b = ask(32);
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    assert_eq!(c.call(GET_REGION_INFO, &b, &[]).err(), Some(libc::EINVAL as u32));
    // MSI-X has vectors (INTx: its own test); an unknown IRQ index is refused.
    let r = c.call(GET_IRQ_INFO, &le(&[(16, 4), (0, 4), (MSIX as u64, 4), (0, 4)]), &[]);
    assert_eq!(r.err(), None);
    assert!(u32_at(&r.body, 12) >= 1, "MSI-X vectors: {:?}", r.body);
    assert_eq!(c.call(GET_IRQ_INFO, &le(&[(16, 4), (0, 4), (77, 4), (0, 4)]), &[]).err(), Some(libc::EINVAL as u32));
}

#[test]
fn region_accesses_are_bounded_by_the_region() {
    let nic = start();
    let mut c = Raw::connect(&nic);
    c.negotiate();
    assert_eq!(c.read32(7, 0), Ok(0x10fb_8086), "config space: 82599 ids");
    assert_eq!(c.read32(0, 512 * 1024 - 4).map(|_| ()), Ok(()), "the last word of BAR0");
    assert_eq!(c.read32(0, 512 * 1024), Err(libc::EINVAL as u32), "past BAR0's end");
    assert_eq!(c.read32(1, 0), Err(libc::EINVAL as u32), "an empty region");
    assert_eq!(c.read32(42, 0), Err(libc::EINVAL as u32), "no such region");
    assert_eq!(c.write32(0, 512 * 1024 + 8, 1), Some(libc::EINVAL as u32));
    let r = c.call(REGION_READ, &le(&[(0, 8), (0, 4), (2 << 20, 4)]), &[]);
    assert_eq!(r.err(), Some(libc::EINVAL as u32), "over max_data_xfer_size");
    // EITR0 round trip: the connection is fine after the refusals.
    assert_eq!(c.write32(0, 0x00820, 0x0c80), None);
    assert_eq!(c.read32(0, 0x00820), Ok(0x0c80));
    assert_eq!(c.call(DEVICE_RESET, &[], &[]).err(), None);
    assert_eq!(c.read32(0, 0x00820), Ok(0), "reset clears it");
}

#[test]
fn posted_and_pipelined_requests_keep_their_order() {
    let nic = start();
    let mut c = Raw::connect(&nic);
    c.negotiate();
    let eitr0 = |v: u32| le(&[(0x00820, 8), (0, 4), (4, 4), (v as u64, 4)]);
    for i in 1..=50u32 {
        // A posted write (No_reply: never answered), then a reset with No_reply, which the
        // server does elsewhere than the register accesses: the read after both must see the
        // reset done, and its reply is the next message on the stream.
        c.send_flags(REGION_WRITE, &eitr0(0x0c80), &[], NO_REPLY);
        assert_eq!(c.read32(0, 0x00820), Ok(0x0c80), "round {i}: the posted write was done");
        c.send_flags(DEVICE_RESET, &[], &[], NO_REPLY);
        assert_eq!(c.read32(0, 0x00820), Ok(0), "round {i}: a read does not overtake the reset");
        c.send_flags(REGION_WRITE, &eitr0(8 * i), &[], NO_REPLY);
        assert_eq!(c.read32(0, 0x00820), Ok(8 * i), "round {i}");
    }
    // A request that wants a reply, then a No_reply reset, both forwarded to the server: the
    // first one's reply must not let a read after it overtake the reset.
    let irq_info = le(&[(16, 4), (0, 4), (MSIX as u64, 4), (0, 4)]);
    for i in 1..=50u32 {
        c.send_flags(REGION_WRITE, &eitr0(0x0c80), &[], NO_REPLY);
        let id = c.send(GET_IRQ_INFO, &irq_info, &[]);
        c.send_flags(DEVICE_RESET, &[], &[], NO_REPLY);
        let r = c.recv();
        assert_eq!((r.id, r.command, r.err()), (id, GET_IRQ_INFO, None), "round {i}");
        assert_eq!(c.read32(0, 0x00820), Ok(0), "round {i}: the read came after the reset");
    }
    // Pipelined: requests sent without waiting are answered in order, the ones the relay does
    // itself (region accesses) and the ones the server does (GET_IRQ_INFO) interleaved.
    let read = le(&[(0x00820, 8), (0, 4), (4, 4)]);
    let ids = [
        c.send(REGION_READ, &read, &[]),
        c.send(GET_IRQ_INFO, &le(&[(16, 4), (0, 4), (MSIX as u64, 4), (0, 4)]), &[]),
        c.send(REGION_WRITE, &eitr0(0x40), &[]),
        c.send(REGION_READ, &read, &[]),
    ];
    let replies: Vec<Reply> = ids.iter().map(|_| c.recv()).collect();
    assert_eq!(replies.iter().map(|r| r.id).collect::<Vec<_>>(), ids, "replies in request order");
    assert!(replies.iter().all(|r| r.err().is_none()));
    assert_eq!(u32_at(&replies[0].body, 16), 0, "as the last reset left it");
    assert_eq!(u32_at(&replies[1].body, 12), 64, "the 82599's 64 MSI-X vectors");
    assert_eq!(u32_at(&replies[3].body, 16), 0x40);
}

#[test]
fn dma_map_and_unmap_in_two_phases_with_unmap_all() {
    let nic = start();
    let mut c = Raw::connect(&nic);
    c.negotiate();
    let map = |c: &mut Raw, flags: u64, off: u64, iova: u64, size: u64, fd: Option<&OwnedFd>| {
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        c.call(DMA_MAP, &le(&[(32, 4), (flags, 4), (off, 8), (iova, 8), (size, 8)]), &fds).err()
    };
    let unmap = |c: &mut Raw, flags: u64, iova: u64, size: u64| {
        c.call(DMA_UNMAP, &le(&[(24, 4), (flags, 4), (iova, 8), (size, 8)]), &[]).err()
    };
    let f = memfd(1 << 20);
    assert_eq!(map(&mut c, 3, 0, 0x1_0000_0000, 1 << 20, None), Some(libc::ENOTSUP as u32), "no fd");
    assert_eq!(map(&mut c, 3, 4096, 0x1_0000_0000, 1 << 20, Some(&f)), Some(libc::EINVAL as u32), "past the file");
    assert_eq!(map(&mut c, 1 << 9, 0, 0x1_0000_0000, 1 << 20, Some(&f)), Some(libc::EINVAL as u32), "unknown flag");
    assert_eq!(map(&mut c, 3, 0, 0x1_0000_0000, 0, Some(&f)), Some(libc::EINVAL as u32), "empty");
    assert_eq!(map(&mut c, 3, 0, 0x1_0000_0000, 1 << 19, Some(&f)), None);
    assert_eq!(map(&mut c, 3, 1 << 19, 0x1_0008_0000, 1 << 19, Some(&f)), None, "adjacent is fine");
    assert_eq!(map(&mut c, 3, 0, 0x1_0004_0000, 4096, Some(&f)), Some(libc::EEXIST as u32), "overlapping");
    assert_eq!(unmap(&mut c, 0, 0x2_0000_0000, 4096), Some(libc::ENOENT as u32), "never mapped");
    assert_eq!(unmap(&mut c, 0, 0x1_0000_0000, 4096), Some(libc::ENOENT as u32), "not a whole map");
    assert_eq!(unmap(&mut c, 1, 0x1_0000_0000, 1 << 19), Some(libc::ENOTSUP as u32), "dirty bitmap");
    assert_eq!(unmap(&mut c, 2, 0x1_0000_0000, 1 << 19), Some(libc::EINVAL as u32), "ALL with a range");
    assert_eq!(unmap(&mut c, 1 << 7, 0x1_0000_0000, 1 << 19), Some(libc::EINVAL as u32), "unknown flag");
    assert_eq!(unmap(&mut c, 0, 0x1_0000_0000, 1 << 19), None);
    assert_eq!(unmap(&mut c, 0, 0x1_0000_0000, 1 << 19), Some(libc::ENOENT as u32), "already gone");
    assert_eq!(unmap(&mut c, 2, 0, 0), None, "unmap all");
    assert_eq!(unmap(&mut c, 0, 0x1_0008_0000, 1 << 19), Some(libc::ENOENT as u32), "all means all");
    assert_eq!(map(&mut c, 3, 0, 0x1_0000_0000, 1 << 20, Some(&f)), None, "the range is free again");
    // Another client maps the same file at the same IOVA: maps are per connection.
    let mut d = Raw::connect(&nic);
    d.negotiate();
    assert_eq!(map(&mut d, 3, 0, 0x1_0000_0000, 1 << 20, Some(&f)), None);
    assert_eq!(nic.command(&format!("connections {BDF}")).split_whitespace().nth(1), Some("connections=2"));
}

#[test]
fn msix_eventfds_fire_on_an_interrupt_cause() {
    let nic = start();
    let mut c = Raw::connect(&nic);
    c.negotiate();
    let set_irqs = |c: &mut Raw, flags: u64, start: u64, count: u64, fds: &[RawFd]| {
        c.call(SET_IRQS, &le(&[(20, 4), (flags, 4), (MSIX as u64, 4), (start, 4), (count, 4)]), fds).err()
    };
    let ev = nix::sys::eventfd::EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_NONBLOCK).unwrap();
    assert_eq!(set_irqs(&mut c, EVENTFD_TRIGGER, 60, 10, &[]), Some(libc::EINVAL as u32), "beyond the table");
    assert_eq!(set_irqs(&mut c, (1 << 1) | (1 << 5), 0, 1, &[]), Some(libc::ENOTSUP as u32), "DATA_BOOL");
    assert_eq!(
        set_irqs(&mut c, (1 << 2) | (1 << 0) | (1 << 5), 0, 1, &[]),
        Some(libc::EINVAL as u32),
        "two data types"
    );
    assert_eq!(set_irqs(&mut c, EVENTFD_TRIGGER, 0, 2, &[ev.as_raw_fd()]), Some(libc::EINVAL as u32), "fd count");
    assert_eq!(set_irqs(&mut c, EVENTFD_TRIGGER, 0, 1, &[ev.as_raw_fd()]), None);
    // MSI-X on in config space, vector 0 unmasked in the table (BAR4), its cause enabled, then
    // the cause set by software (EICS): the device signals the eventfd.
    let mut cap = c.read32(7, 0x34).unwrap() as u64 & 0xff;
    while c.read32(7, cap).unwrap() & 0xff != 0x11 {
        cap = (c.read32(7, cap).unwrap() >> 8) as u64 & 0xff;
        assert_ne!(cap, 0, "no MSI-X capability");
    }
    let ctl = c.read32(7, cap).unwrap();
    assert_eq!(c.write32(7, cap, ctl | (1 << 31)), None, "MSI-X enable");
    assert_eq!(c.write32(4, 12, 0), None, "vector 0 unmasked");
    assert_eq!(c.write32(0, 0x00898, 0x10), None, "GPIE: MSI-X mode");
    assert_eq!(c.write32(0, 0x00880, 1), None, "EIMS bit 0");
    assert_eq!(c.write32(0, 0x00808, 1), None, "EICS bit 0");
    assert!(fired(&ev), "the eventfd of vector 0 was signalled");
    assert_eq!(set_irqs(&mut c, 1 | (1 << 5), 0, 0, &[]), None, "DATA_NONE, count 0: all released");
}

#[test]
fn stalled_clients_do_not_hold_the_functions_slots() {
    let nic = start();
    // The pool is 8 connections. Eight clients that send two header bytes and stop...
    let stalled: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut s = UnixStream::connect(sock(&nic)).unwrap();
            s.write_all(&[1, 0]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...fill it: a new client is refused (closed) while they hold it.
    let mut refused = UnixStream::connect(sock(&nic)).unwrap();
    refused.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(refused.read(&mut b).unwrap_or(0), 0, "pool full: closed");
    // Within the message deadline they are closed, and a client gets in and is served.
    let end = Instant::now() + Duration::from_secs(15);
    let served = loop {
        let mut c = Raw::connect(&nic);
        let mut v = le(&[(1, 2), (VERSION as u64, 2), (20, 4), (0, 4), (0, 4), (0, 2), (1, 2)]);
        let ok = c.s.write_all(&v).is_ok() && c.s.read(&mut v[..1]).is_ok_and(|n| n == 1);
        if ok || Instant::now() > end {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(served, "the stalled clients were closed and a new one served");
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "a stalled client was closed");
    }
}

#[test]
fn intx_is_one_automasked_line_that_follows_the_interrupt_cause() {
    let nic = start();
    let mut c = Raw::connect(&nic);
    c.negotiate();
    let r = c.call(GET_IRQ_INFO, &le(&[(16, 4), (0, 4), (INTX as u64, 4), (0, 4)]), &[]);
    assert_eq!(r.err(), None);
    assert_eq!(u32_at(&r.body, 12), 1, "one INTx line");
    assert_eq!(u32_at(&r.body, 4) & 0b111, 0b111, "EVENTFD | MASKABLE | AUTOMASKED");
    assert_eq!((c.read32(7, 0x3c).unwrap() >> 8) & 0xff, 1, "interrupt pin INTA");
    let set_irqs = |c: &mut Raw, flags: u64, start: u64, count: u64, fds: &[RawFd]| {
        c.call(SET_IRQS, &le(&[(20, 4), (flags, 4), (INTX as u64, 4), (start, 4), (count, 4)]), fds).err()
    };
    const NONE_MASK: u64 = 1 | (1 << 3);
    const NONE_UNMASK: u64 = 1 | (1 << 4);
    const NONE_TRIGGER: u64 = 1 | (1 << 5);
    let ev = nix::sys::eventfd::EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_NONBLOCK).unwrap();
    assert_eq!(set_irqs(&mut c, EVENTFD_TRIGGER, 0, 2, &[ev.as_raw_fd(), ev.as_raw_fd()]), Some(libc::EINVAL as u32));
    assert_eq!(set_irqs(&mut c, EVENTFD_TRIGGER, 1, 1, &[ev.as_raw_fd()]), Some(libc::EINVAL as u32), "start 1");
    assert_eq!(
        set_irqs(&mut c, (1 << 2) | (1 << 4), 0, 1, &[ev.as_raw_fd()]),
        Some(libc::ENOTSUP as u32),
        "an unmask eventfd (resamplefd) is not offered"
    );
    assert_eq!(set_irqs(&mut c, EVENTFD_TRIGGER, 0, 1, &[ev.as_raw_fd()]), None);
    assert_eq!(set_irqs(&mut c, NONE_TRIGGER, 0, 1, &[]), None, "a trigger by message");
    assert!(fired(&ev), "signalled by the message");
    // MSI-X stays off: the cause (EIMS + EICS bit 0) asserts INTx, the eventfd fires once.
    const EICR: u64 = 0x00800;
    assert_eq!(c.write32(0, 0x00880, 1), None, "EIMS bit 0");
    assert_eq!(c.write32(0, 0x00808, 1), None, "EICS bit 0");
    assert!(fired(&ev), "INTx signalled");
    assert_ne!(c.read32(7, 4).unwrap() & (1 << 19), 0, "status: interrupt pending");
    // Automasked: the line stays asserted, and nothing more comes until the client unmasks.
    for _ in 0..20 {
        assert_eq!(c.read32(0, 0x00880), Ok(1), "EIMS");
    }
    assert!(ev.read().is_err(), "no second signal while masked");
    assert_eq!(set_irqs(&mut c, NONE_UNMASK, 0, 1, &[]), None);
    assert!(fired(&ev), "unmasked while still asserted: signalled again (a level, not an edge)");
    // Acknowledge (read EICR), unmask: deasserted, quiet; a new cause fires again.
    assert_eq!(c.read32(0, EICR).map(|v| v & 1), Ok(1));
    assert_eq!(c.read32(7, 4).unwrap() & (1 << 19), 0, "status: nothing pending");
    assert_eq!(set_irqs(&mut c, NONE_UNMASK, 0, 1, &[]), None);
    assert_eq!(c.write32(0, 0x00808, 1), None, "EICS bit 0");
    assert!(fired(&ev), "a new cause after the acknowledgement");
    assert_eq!(c.read32(0, EICR).map(|v| v & 1), Ok(1));
    // Masked by the client, or by the Command register's Interrupt Disable: held back, then
    // delivered when allowed again, as the level is still there.
    assert_eq!(set_irqs(&mut c, NONE_UNMASK, 0, 1, &[]), None);
    assert_eq!(set_irqs(&mut c, NONE_MASK, 0, 1, &[]), None);
    let cmd = c.read32(7, 4).unwrap() & 0xffff;
    assert_eq!(c.write32(7, 4, cmd | (1 << 10)), None, "Interrupt Disable");
    assert_eq!(c.write32(0, 0x00808, 1), None, "EICS bit 0");
    assert_eq!(set_irqs(&mut c, NONE_UNMASK, 0, 1, &[]), None);
    assert_ne!(c.read32(7, 4).unwrap() & (1 << 19), 0, "pending, though disabled");
    assert_eq!(c.write32(7, 4, cmd), None, "Interrupt Disable cleared");
    assert!(fired(&ev), "delivered once allowed");
    assert_eq!(c.read32(0, EICR).map(|v| v & 1), Ok(1), "acknowledged");
    // Torn down (no data, count 0): a trigger by message has nothing to signal.
    assert_eq!(set_irqs(&mut c, NONE_TRIGGER, 0, 0, &[]), None);
    assert_eq!(set_irqs(&mut c, NONE_TRIGGER, 0, 1, &[]), None);
    assert_eq!(set_irqs(&mut c, EVENTFD_TRIGGER, 0, 1, &[ev.as_raw_fd()]), None, "set again");
    assert_eq!(set_irqs(&mut c, NONE_TRIGGER, 0, 1, &[]), None);
    assert_eq!(ev.read().ok(), Some(1), "one signal: the torn-down trigger reached nothing");
}

const DMA_IOVA: u64 = 0x1_0000_0000;

/// A driver's bring-up of the 82599 over trapped accesses (8.2.3) with the DMA memory `mem`
/// mapped at [`DMA_IOVA`]: RX ring (16 descriptors) at page 0, TX ring at page 1, RX buffers
/// from page 16 (2 KiB each), TX buffers from page 64; promiscuous loopback.
fn bring_up_loopback(c: &mut Raw, mem: &std::fs::File) {
    use std::os::unix::fs::FileExt;
    const IOVA: u64 = DMA_IOVA;
    assert_eq!(c.write32(7, 4, 6), None, "memory + bus master");
    assert_eq!(c.write32(0, 0x888, 0x7fff_ffff), None, "EIMC");
    assert_eq!(c.write32(0, 0x0, 1 << 26), None, "CTRL.RST");
    assert_eq!(c.write32(0, 0x42a0, 1 << 12), None, "AUTOC.RESTART_AN");
    assert_eq!(c.write32(0, 0x5080, (1 << 8) | (1 << 9) | (1 << 10)), None, "FCTRL: promiscuous");
    let srrctl = c.read32(0, 0x2100).unwrap();
    assert_eq!(c.write32(0, 0x2100, (srrctl & !(7 << 25)) | (1 << 25)), None, "advanced one-buffer");
    for i in 0..16u64 {
        mem.write_at(&[(IOVA + 0x10000 + i * 2048).to_le_bytes(), [0; 8]].concat(), i * 16).unwrap();
    }
    for (off, v) in [
        (0x3000, 1),
        (0x4a80, 1),
        (0x1000, IOVA as u32),
        (0x1004, (IOVA >> 32) as u32),
        (0x1008, 16 * 16),
        (0x1028, 1 << 25),
        (0x1018, 15),
        (0x6000, (IOVA + 0x1000) as u32),
        (0x6004, (IOVA >> 32) as u32),
        (0x6008, 16 * 16),
        (0x6028, 1 << 25),
    ] {
        assert_eq!(c.write32(0, off, v), None, "{off:#x}");
    }
    let end = Instant::now() + Duration::from_secs(10);
    while c.read32(0, 0x42a4).unwrap() & (1 << 30) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends a 64-byte frame from TX descriptor `i` and waits for it in RX descriptor `i`.
fn send_and_receive(c: &mut Raw, mem: &std::fs::File, i: u64) {
    use std::os::unix::fs::FileExt;
    let frame: Vec<u8> = (0..64u8).map(|b| b ^ i as u8).collect();
    mem.write_at(&frame, 0x40000 + i * 2048).unwrap();
    let ctl = 64u32 | (3 << 20) | (1 << 24) | (1 << 25) | (1 << 27) | (1 << 29);
    let desc = [(DMA_IOVA + 0x40000 + i * 2048).to_le_bytes(), (u64::from(ctl) | (64u64 << 46)).to_le_bytes()];
    mem.write_at(&desc.concat(), 0x1000 + i * 16).unwrap();
    assert_eq!(c.write32(0, 0x6018, i as u32 + 1), None, "TDT");
    let mut wb = [0u8; 16];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        mem.read_at(&mut wb, i * 16).unwrap();
        if wb[8] & 1 != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wb[8] & 1, 1, "frame {i} was received (DD)");
    let mut got = [0u8; 64];
    mem.read_at(&mut got, 0x10000 + i * 2048).unwrap();
    assert_eq!(&got[..], &frame[..], "frame {i} byte-identical");
}

/// DEVICE_FEATURE (command 16) with `flags` and `data`; `argsz` defaults to the message's size.
fn feature(c: &mut Raw, flags: u32, data: &[u8], argsz: Option<u32>) -> Reply {
    let argsz = argsz.unwrap_or(8 + data.len() as u32);
    let mut b = le(&[(argsz as u64, 4), (flags as u64, 4)]);
    b.extend_from_slice(data);
    c.call(16, &b, &[])
}

#[test]
fn dirty_page_logging_reports_the_pages_the_device_wrote() {
    const GET: u32 = 1 << 16;
    const SET: u32 = 1 << 17;
    const PROBE: u32 = 1 << 18;
    const START: u32 = 6;
    const STOP: u32 = 7;
    const REPORT: u32 = 8;
    const IOVA: u64 = 0x1_0000_0000;
    const MEM: u64 = 1 << 20;
    let nic = start();
    let mut c = Raw::connect(&nic);
    c.negotiate();
    let mem = tempfile::tempfile().unwrap();
    mem.set_len(MEM).unwrap();
    let r = c.call(DMA_MAP, &le(&[(32, 4), (3, 4), (0, 8), (IOVA, 8), (MEM, 8)]), &[mem.as_raw_fd()]);
    assert_eq!(r.err(), None);
    let r = c.call(DMA_MAP, &le(&[(32, 4), (3, 4), (0, 8), (IOVA + MEM, 8), (4096, 8)]), &[mem.as_raw_fd()]);
    assert_eq!(r.err(), None, "a one-page map");
    // Probing and refusals first.
    let control = |page: u64| le(&[(page, 8), (0, 4), (0, 4)]);
    assert_eq!(feature(&mut c, PROBE | SET | START, &control(4096), None).err(), None, "START can be SET");
    assert_eq!(feature(&mut c, PROBE | GET | START, &control(4096), None).err(), Some(libc::ENOTSUP as u32));
    assert_eq!(feature(&mut c, SET | START, &control(1000), None).err(), Some(libc::EINVAL as u32), "page size");
    assert_eq!(feature(&mut c, SET | GET | START, &control(4096), None).err(), Some(libc::EINVAL as u32));
    let report = le(&[(IOVA, 8), (MEM, 8), (4096, 8)]);
    let room = Some(8 + 24 + 32);
    assert_eq!(feature(&mut c, GET | REPORT, &report, room).err(), Some(libc::EINVAL as u32), "not logging");
    let r = feature(&mut c, SET | START, &control(4096), None);
    assert_eq!(r.err(), None);
    assert_eq!(r.body, [le(&[(24, 4), ((SET | START) as u64, 4)]), control(4096)].concat(), "echoed");
    assert_eq!(feature(&mut c, SET | START, &control(4096), None).err(), Some(libc::EBUSY as u32), "twice");
    assert_eq!(feature(&mut c, GET | REPORT, &report, Some(8 + 24 + 31)).err(), Some(libc::EINVAL as u32), "room");
    // Nothing written yet: a clean bitmap of 256 pages.
    let r = feature(&mut c, GET | REPORT, &report, room);
    assert_eq!(r.err(), None);
    assert_eq!(&r.body[32..], &[0u8; 32]);

    bring_up_loopback(&mut c, &mem);
    send_and_receive(&mut c, &mem, 0);
    let r = feature(&mut c, GET | REPORT, &report, room);
    assert_eq!(r.err(), None);
    let dirty: Vec<usize> = (0..256).filter(|p| r.body[32 + p / 8] & (1 << (p % 8)) != 0).collect();
    assert_eq!(dirty, vec![0, 1, 16], "RX write-back, TX write-back, the RX buffer; the TX buffer was only read");
    let r = feature(&mut c, GET | REPORT, &report, room);
    assert_eq!(&r.body[32..], &[0u8; 32], "a report clears what it reported");
    // One page: the bitmap is still a whole u64 (linux/vfio.h; libvfio-user's client insists).
    let one = le(&[(IOVA + MEM, 8), (4096, 8), (4096, 8)]);
    assert_eq!(feature(&mut c, GET | REPORT, &one, Some(8 + 24 + 1)).err(), Some(libc::EINVAL as u32), "room");
    let r = feature(&mut c, GET | REPORT, &one, Some(8 + 24 + 8));
    assert_eq!((r.err(), r.body.len()), (None, 8 + 24 + 8));
    assert_eq!(feature(&mut c, SET | STOP, &control(4096), None).err(), None);
    assert_eq!(feature(&mut c, GET | REPORT, &report, room).err(), Some(libc::EINVAL as u32), "stopped");
}

#[test]
fn a_running_port_migrates_to_another_lab_nic_with_its_queued_frame() {
    use std::os::unix::fs::FileExt;
    const GET: u32 = 1 << 16;
    const SET: u32 = 1 << 17;
    const MIGRATION: u32 = 1;
    const STATE: u32 = 2;
    const STOP: u64 = 1;
    const RUNNING: u64 = 2;
    const STOP_COPY: u64 = 3;
    const RESUMING: u64 = 4;
    const PRE_COPY: u64 = 6;
    const MIG_DATA_READ: u16 = 17;
    const MIG_DATA_WRITE: u16 = 18;
    let set = |c: &mut Raw, s: u64| feature(c, SET | STATE, &le(&[(s, 4), (u32::MAX as u64, 4)]), None).err();
    let state = |c: &mut Raw| {
        let r = feature(c, GET | STATE, &[0; 8], None);
        assert_eq!(r.err(), None);
        u32_at(&r.body, 8) as u64
    };
    let read = |c: &mut Raw, n: u64| c.call(MIG_DATA_READ, &le(&[(8 + n, 4), (n, 4)]), &[]);
    let write = |c: &mut Raw, data: &[u8]| {
        let mut b = le(&[(8 + data.len() as u64, 4), (data.len() as u64, 4)]);
        b.extend_from_slice(data);
        c.call(MIG_DATA_WRITE, &b, &[]).err()
    };
    let mem = tempfile::tempfile().unwrap();
    mem.set_len(1 << 20).unwrap();
    let map = |c: &mut Raw| {
        let r = c.call(DMA_MAP, &le(&[(32, 4), (3, 4), (0, 8), (DMA_IOVA, 8), (1 << 20, 8)]), &[mem.as_raw_fd()]);
        assert_eq!(r.err(), None);
    };

    // Source: a port that has carried two frames.
    let src = start();
    let mut a = Raw::connect(&src);
    a.negotiate();
    map(&mut a);
    bring_up_loopback(&mut a, &mem);
    send_and_receive(&mut a, &mem, 0);
    send_and_receive(&mut a, &mem, 1);
    assert_eq!(a.write32(0, 0x820, 0x0c80), None, "EITR0");
    let r = feature(&mut a, GET | MIGRATION, &[0; 8], None);
    assert_eq!(r.err(), None);
    assert_eq!(u64_at(&r.body, 8), 1 | 4, "STOP_COPY and PRE_COPY");
    assert_eq!(state(&mut a), RUNNING);
    assert_eq!(read(&mut a, 4096).err(), Some(libc::EINVAL as u32), "no data while running");
    assert_eq!(set(&mut a, 5), Some(libc::EINVAL as u32), "RUNNING_P2P is not offered");
    assert_eq!(set(&mut a, PRE_COPY), None);
    let r = read(&mut a, 4096);
    assert_eq!((r.err(), u32_at(&r.body, 4)), (None, 0), "no early data");
    assert_eq!(set(&mut a, RUNNING), None);
    // Stopped, the device moves nothing: a frame rung now stays queued (TDH stays at 2).
    assert_eq!(set(&mut a, STOP), None);
    let frame: Vec<u8> = (0..64u8).map(|b| b ^ 2).collect();
    mem.write_at(&frame, 0x40000 + 2 * 2048).unwrap();
    let ctl = 64u32 | (3 << 20) | (1 << 24) | (1 << 25) | (1 << 27) | (1 << 29);
    let desc = [(DMA_IOVA + 0x40000 + 2 * 2048).to_le_bytes(), (u64::from(ctl) | (64u64 << 46)).to_le_bytes()];
    mem.write_at(&desc.concat(), 0x1000 + 2 * 16).unwrap();
    assert_eq!(a.write32(0, 0x6018, 3), None, "TDT: frame 2");
    for _ in 0..20 {
        assert_eq!(a.read32(0, 0x6010), Ok(2), "TDH: nothing sent while stopped");
    }
    assert_eq!(set(&mut a, STOP_COPY), None);
    assert_eq!(write(&mut a, &[0; 8]), Some(libc::EINVAL as u32), "writes are for RESUMING");
    let mut stream = Vec::new();
    loop {
        let r = read(&mut a, 64 * 1024);
        assert_eq!(r.err(), None);
        let n = u32_at(&r.body, 4) as usize;
        assert_eq!(r.body.len(), 8 + n);
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&r.body[8..]);
    }
    assert!(stream.len() > 12 * 1024, "config space, registers, queue pages: {} bytes", stream.len());
    assert_eq!(set(&mut a, STOP), None);

    // Destination: a fresh lab-nic. A corrupt stream is refused and leaves the device in
    // ERROR until a reset; the real one resumes the port.
    let dst = start();
    let mut b = Raw::connect(&dst);
    b.negotiate();
    map(&mut b);
    assert_eq!(set(&mut b, RESUMING), None, "from RUNNING through STOP");
    let mut bad = stream.clone();
    bad.truncate(stream.len() / 2);
    assert_eq!(write(&mut b, &bad), None);
    assert_eq!(set(&mut b, STOP), Some(libc::EINVAL as u32), "a truncated stream");
    assert_eq!(state(&mut b), 0, "ERROR");
    assert_eq!(set(&mut b, RUNNING), Some(libc::EINVAL as u32), "ERROR is left by a reset only");
    assert_eq!(b.call(DEVICE_RESET, &[], &[]).err(), None);
    assert_eq!(state(&mut b), RUNNING);
    assert_eq!(set(&mut b, RESUMING), None);
    for chunk in stream.chunks(100_000) {
        assert_eq!(write(&mut b, chunk), None);
    }
    let mut last = le(&[(8, 4), (0, 4)]);
    last.truncate(8);
    let r = b.call(MIG_DATA_WRITE, &last, &[]);
    assert_eq!((r.err(), r.body.len()), (None, 0), "no reply payload (spec: MIG_DATA_WRITE reply)");
    assert_eq!(set(&mut b, STOP), None);
    assert_eq!(b.read32(0, 0x820), Ok(0x0c80), "EITR0 came along");
    assert_eq!(set(&mut b, RUNNING), None);
    // The frame rung on the source is sent by the destination, into RX descriptor 2.
    let mut wb = [0u8; 16];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        mem.read_at(&mut wb, 2 * 16).unwrap();
        if wb[8] & 1 != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wb[8] & 1, 1, "the queued frame arrived after the migration");
    let mut got = [0u8; 64];
    mem.read_at(&mut got, 0x10000 + 2 * 2048).unwrap();
    assert_eq!(&got[..], &frame[..]);
    send_and_receive(&mut b, &mem, 3);
}

#[test]
fn an_x710_migrates_its_admin_queue_and_interrupt_setup() {
    const GET: u32 = 1 << 16;
    const SET: u32 = 1 << 17;
    const MIGRATION: u32 = 1;
    const STATE: u32 = 2;
    const STOP: u64 = 1;
    const STOP_COPY: u64 = 3;
    const RESUMING: u64 = 4;
    const MIG_DATA_READ: u16 = 17;
    const MIG_DATA_WRITE: u16 = 18;
    // X710 registers (BAR0): admin send queue base/length, the interrupt cause enables, queue
    // 0's receive interrupt routing (cause enable, vector 1).
    const PF_ATQBAL: u64 = 0x080000;
    const PF_ATQLEN: u64 = 0x080200;
    const PFINT_ICR0_ENA: u64 = 0x038800;
    const QINT_RQCTL_0: u64 = 0x03a000;
    let set = |c: &mut Raw, s: u64| feature(c, SET | STATE, &le(&[(s, 4), (u32::MAX as u64, 4)]), None).err();

    let src = start_model("i40e");
    let mut a = Raw::connect(&src);
    a.negotiate();
    let r = feature(&mut a, GET | MIGRATION, &[0; 8], None);
    assert_eq!((r.err(), u64_at(&r.body, 8)), (None, 1 | 4), "the X710 offers STOP_COPY and PRE_COPY");
    let setup = [(PF_ATQBAL, 0x1234_5000), (PF_ATQLEN, 32), (PFINT_ICR0_ENA, 1 << 30), (QINT_RQCTL_0, (1 << 30) | 1)];
    for (off, v) in setup {
        assert_eq!(a.write32(0, off, v), None, "{off:#x}");
    }
    assert_eq!(set(&mut a, STOP_COPY), None);
    let mut stream = Vec::new();
    loop {
        let r = a.call(MIG_DATA_READ, &le(&[(8 + 65536, 4), (65536, 4)]), &[]);
        assert_eq!(r.err(), None);
        let n = u32_at(&r.body, 4) as usize;
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&r.body[8..8 + n]);
    }
    assert_eq!(set(&mut a, STOP), None);

    let dst = start_model("i40e");
    let mut b = Raw::connect(&dst);
    b.negotiate();
    assert_eq!(b.read32(0, PFINT_ICR0_ENA), Ok(0));
    // An 82599's stream is not an X710's: refused, the device in ERROR until a reset.
    assert_eq!(set(&mut b, RESUMING), None);
    let mut foreign = stream.clone();
    foreign[4..16].copy_from_slice(b"lab-nic 8259");
    let mut msg = le(&[(8 + foreign.len() as u64, 4), (foreign.len() as u64, 4)]);
    msg.extend_from_slice(&foreign);
    assert_eq!(b.call(MIG_DATA_WRITE, &msg, &[]).err(), None);
    assert_eq!(set(&mut b, STOP), Some(libc::EINVAL as u32), "a foreign stream");
    assert_eq!(b.call(DEVICE_RESET, &[], &[]).err(), None);
    assert_eq!(set(&mut b, RESUMING), None);
    let mut msg = le(&[(8 + stream.len() as u64, 4), (stream.len() as u64, 4)]);
    msg.extend_from_slice(&stream);
    assert_eq!(b.call(MIG_DATA_WRITE, &msg, &[]).err(), None);
    assert_eq!(set(&mut b, STOP), None);
    for (off, v) in setup {
        assert_eq!(b.read32(0, off), Ok(v), "{off:#x} came along");
    }
}
