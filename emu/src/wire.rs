//! Wires: where transmitted frames go and received frames come from.
//!
//! A model owns one [`Wire`]. Frames carry no FCS (the model accounts for it in octet counters).
//! Kinds: [`NullWire`] (drops), [`Loopback`] (tx to own rx), [`PeerEnd`] (two functions cabled
//! together), [`TapWire`] (a Linux TAP device), [`PcapWire`] (replay a pcap, record tx to a pcap).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Frames queued on a wire before the oldest are dropped.
pub const WIRE_QUEUE: usize = 4096;
/// Largest frame a wire carries.
pub const MAX_FRAME: usize = 16 * 1024;

/// Wire errors (opening).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A TAP device could not be opened or attached.
    #[error("cannot open TAP device {name}: {source}")]
    Tap {
        /// Interface name.
        name: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A pcap file could not be opened or is not a classic pcap.
    #[error("pcap file {path}: {reason}")]
    Pcap {
        /// File path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// One end of a link.
pub trait Wire: Send {
    /// Puts a frame on the wire (never blocks; drops if the far side is full).
    fn transmit(&mut self, frame: &[u8]);
    /// Takes the next received frame into `buf` (cleared first). False if none is waiting.
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool;
    /// True if frames should stay on the wire until the device has a free descriptor
    /// (a pcap replay); false if the device drops them as a real link would.
    fn backpressure(&self) -> bool {
        false
    }
    /// Short description for logs and stats.
    fn describe(&self) -> String;
}

/// No cable: transmitted frames are dropped, nothing is received.
#[derive(Debug, Default)]
pub struct NullWire {
    /// Frames dropped.
    pub dropped: u64,
}

impl Wire for NullWire {
    fn transmit(&mut self, _frame: &[u8]) {
        self.dropped += 1;
    }
    fn receive(&mut self, _buf: &mut Vec<u8>) -> bool {
        false
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// Transmitted frames come back on the same port.
#[derive(Debug, Default)]
pub struct Loopback {
    q: VecDeque<Vec<u8>>,
}

impl Wire for Loopback {
    fn transmit(&mut self, frame: &[u8]) {
        if self.q.len() >= WIRE_QUEUE {
            self.q.pop_front();
        }
        self.q.push_back(frame.to_vec());
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        match self.q.pop_front() {
            Some(f) => {
                *buf = f;
                true
            }
            None => false,
        }
    }
    fn describe(&self) -> String {
        "loopback".into()
    }
}

type FrameQueue = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// One end of a cable between two emulated ports.
#[derive(Debug)]
pub struct PeerEnd {
    to_peer: FrameQueue,
    from_peer: FrameQueue,
    peer: String,
}

/// Makes both ends of a cable between ports `a` and `b` (names for logs).
pub fn peer_pair(a: &str, b: &str) -> (PeerEnd, PeerEnd) {
    let ab: FrameQueue = Arc::default();
    let ba: FrameQueue = Arc::default();
    (
        PeerEnd { to_peer: ab.clone(), from_peer: ba.clone(), peer: b.to_owned() },
        PeerEnd { to_peer: ba, from_peer: ab, peer: a.to_owned() },
    )
}

fn lock(q: &FrameQueue) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wire for PeerEnd {
    fn transmit(&mut self, frame: &[u8]) {
        let mut q = lock(&self.to_peer);
        if q.len() >= WIRE_QUEUE {
            q.pop_front();
        }
        q.push_back(frame.to_vec());
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        match lock(&self.from_peer).pop_front() {
            Some(f) => {
                *buf = f;
                true
            }
            None => false,
        }
    }
    fn describe(&self) -> String {
        format!("peer={}", self.peer)
    }
}

/// A Linux TAP interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`), non-blocking.
#[derive(Debug)]
pub struct TapWire {
    fd: OwnedFd,
    name: String,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca; // _IOW('T', 202, int)
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl TapWire {
    /// Opens (creating if needed) the TAP interface `name`. A TAP created here disappears when the
    /// wire is dropped (it is not made persistent).
    pub fn open(name: &str) -> Result<Self, WireError> {
        let err = |source| WireError::Tap { name: name.to_owned(), source };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
        }
        let file = File::options().read(true).write(true).open("/dev/net/tun").map_err(err)?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes, our `IfReq` has that layout and
        // lives on the stack for the duration of the call); the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let fd = OwnedFd::from(file);
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| err(std::io::Error::from(e)))?;
        Ok(Self { fd, name: name.to_owned() })
    }
}

impl Wire for TapWire {
    fn transmit(&mut self, frame: &[u8]) {
        // A full TAP queue drops the frame, as a congested link would.
        let _ = nix::unistd::write(&self.fd, frame);
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        buf.resize(MAX_FRAME, 0);
        match nix::unistd::read(self.fd.as_raw_fd(), buf) {
            Ok(n) if n > 0 => {
                buf.truncate(n);
                true
            }
            _ => {
                buf.clear();
                false
            }
        }
    }
    fn describe(&self) -> String {
        format!("tap={}", self.name)
    }
}

/// Replays a classic pcap as received frames and appends transmitted frames to another pcap.
pub struct PcapWire {
    rx: Option<BufReader<File>>,
    rx_swapped: bool,
    tx: BufWriter<File>,
    rx_path: PathBuf,
    tx_path: PathBuf,
}

impl std::fmt::Debug for PcapWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;

impl PcapWire {
    /// Opens `rx` for replay (must be a classic pcap) and `tx` for appending (created with a header if
    /// missing or empty).
    pub fn open(rx: &Path, tx: &Path) -> Result<Self, WireError> {
        let perr = |path: &Path, reason: String| WireError::Pcap { path: path.to_owned(), reason };
        let mut r = BufReader::new(File::open(rx).map_err(|e| perr(rx, e.to_string()))?);
        let mut hdr = [0u8; 24];
        r.read_exact(&mut hdr).map_err(|e| perr(rx, format!("cannot read header: {e}")))?;
        let magic = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let swapped = if magic == PCAP_MAGIC || magic == PCAP_MAGIC_NS {
            false
        } else if magic.swap_bytes() == PCAP_MAGIC || magic.swap_bytes() == PCAP_MAGIC_NS {
            true
        } else {
            return Err(perr(rx, format!("bad magic {magic:#x}")));
        };
        let mut txf = File::options().create(true).append(true).open(tx).map_err(|e| perr(tx, e.to_string()))?;
        let len = txf.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            let mut h = Vec::with_capacity(24);
            h.extend_from_slice(&PCAP_MAGIC.to_le_bytes());
            h.extend_from_slice(&2u16.to_le_bytes());
            h.extend_from_slice(&4u16.to_le_bytes());
            h.extend_from_slice(&0i32.to_le_bytes());
            h.extend_from_slice(&0u32.to_le_bytes());
            h.extend_from_slice(&(MAX_FRAME as u32).to_le_bytes());
            h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
            txf.write_all(&h).map_err(|e| perr(tx, e.to_string()))?;
        }
        Ok(Self {
            rx: Some(r),
            rx_swapped: swapped,
            tx: BufWriter::new(txf),
            rx_path: rx.to_owned(),
            tx_path: tx.to_owned(),
        })
    }

    fn next_record(&mut self, buf: &mut Vec<u8>) -> Option<()> {
        let r = self.rx.as_mut()?;
        let mut rec = [0u8; 16];
        r.read_exact(&mut rec).ok()?;
        let field = |i: usize| {
            let v = u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
            if self.rx_swapped {
                v.swap_bytes()
            } else {
                v
            }
        };
        let incl = field(8) as usize;
        if incl > MAX_FRAME {
            return None;
        }
        buf.resize(incl, 0);
        r.read_exact(buf).ok()?;
        Some(())
    }
}

impl Wire for PcapWire {
    fn transmit(&mut self, frame: &[u8]) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&(now.as_secs() as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&now.subsec_micros().to_le_bytes());
        rec[8..12].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        let ok = self.tx.write_all(&rec).is_ok() && self.tx.write_all(frame).is_ok() && self.tx.flush().is_ok();
        if !ok {
            tracing::warn!("cannot append to {}", self.tx_path.display());
        }
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.next_record(buf).is_some() {
            return true;
        }
        if self.rx.take().is_some() {
            tracing::info!("pcap replay of {} finished", self.rx_path.display());
        }
        buf.clear();
        false
    }
    fn backpressure(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("pcap={}:{}", self.rx_path.display(), self.tx_path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_peer_carry_frames_in_order() {
        let mut l = Loopback::default();
        l.transmit(&[1, 2, 3]);
        l.transmit(&[4]);
        let mut b = Vec::new();
        assert!(l.receive(&mut b));
        assert_eq!(b, [1, 2, 3]);
        assert!(l.receive(&mut b));
        assert_eq!(b, [4]);
        assert!(!l.receive(&mut b));

        let (mut a, mut z) = peer_pair("a", "z");
        a.transmit(&[9; 60]);
        assert!(!a.receive(&mut b));
        assert!(z.receive(&mut b));
        assert_eq!(b.len(), 60);
        assert_eq!(z.describe(), "peer=a");
    }

    #[test]
    fn pcap_tx_output_replays_as_rx_input() {
        let d = tempfile::tempdir().unwrap();
        let first = d.path().join("a.pcap");
        let second = d.path().join("b.pcap");
        // Create a pcap by transmitting into it (rx side needs any valid pcap: bootstrap one).
        {
            let mut boot = File::create(&first).unwrap();
            let mut h = Vec::new();
            h.extend_from_slice(&PCAP_MAGIC.to_le_bytes());
            h.extend_from_slice(&[2, 0, 4, 0]);
            h.extend_from_slice(&[0; 8]);
            h.extend_from_slice(&65535u32.to_le_bytes());
            h.extend_from_slice(&1u32.to_le_bytes());
            boot.write_all(&h).unwrap();
        }
        let mut w = PcapWire::open(&first, &second).unwrap();
        w.transmit(&[0xab; 64]);
        w.transmit(&[0xcd; 100]);
        drop(w);
        let mut r = PcapWire::open(&second, &d.path().join("c.pcap")).unwrap();
        let mut b = Vec::new();
        assert!(r.receive(&mut b));
        assert_eq!(b, vec![0xab; 64]);
        assert!(r.receive(&mut b));
        assert_eq!(b, vec![0xcd; 100]);
        assert!(!r.receive(&mut b));
        assert!(PcapWire::open(&d.path().join("missing"), &second).is_err());
    }
}
