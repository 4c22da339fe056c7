//! `net_pcap`: capture files and live interfaces as a port, DPDK's pcap PMD.
//!
//! Keys (one queue pair):
//! * `rx_pcap=FILE`: receive the frames of a classic pcap or a pcapng file, in order, then nothing
//!   (`infinite_rx=1`: start over, forever). The whole file is read and checked at probe, so a
//!   truncated or corrupt file fails the probe with the file and the byte offset named, and
//!   receiving never touches the file system.
//! * `tx_pcap=FILE`: write what is sent to a classic pcap file (nanosecond timestamps: the
//!   mbuf's `timestamp` when set, else the time of the burst; captured length = original
//!   length = the frame's length). Written through a buffer flushed once per burst.
//! * `rx_iface=IF` / `tx_iface=IF` / `iface=IF` (both): a live interface through an `AF_PACKET`
//!   socket, `recvmmsg`/`sendmmsg` of up to a burst per syscall. The receive socket ignores frames
//!   the host sends on the interface (DPDK's `rx_iface_in`).
//! * Without a receive source the port receives nothing; without a sink it drops what it sends
//!   (counted as sent, as DPDK's pcap does).
//!
//! Secondaries: sockets of live interfaces come from the primary over IPC (action
//! `net_pcap_fds`, as net_tap). Capture files are not shared: a secondary reads `rx_pcap` itself
//! and replays it from its own start, and writes what it sends to `FILE.<pid>` (its own complete
//! pcap file) instead of `FILE`, so two processes never interleave records in one file. DPDK lets
//! the primary's dumper take the secondary's packets; this lab keeps each writer single.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{DataLink, PcapError};

use crate::error::Ctx;
use crate::sys::packet::{live_rx, live_tx, open_live};
use crate::sys::{netif, share};

const NAME: &str = "net_pcap";
/// IPC action of the primary that hands live-interface sockets to secondaries.
pub const FDS_ACTION: &str = "net_pcap_fds";

static KEYS: [KeySpec; 6] = [
    KeySpec::new("rx_pcap", KeyKind::Path, "pcap or pcapng file to receive from"),
    KeySpec::new("tx_pcap", KeyKind::Path, "pcap file to write sent frames to"),
    KeySpec::new("rx_iface", KeyKind::Iface, "interface to receive from"),
    KeySpec::new("tx_iface", KeyKind::Iface, "interface to send to"),
    KeySpec::new("iface", KeyKind::Iface, "interface to receive from and send to"),
    KeySpec::new("infinite_rx", KeyKind::Bool, "replay rx_pcap forever (default 0)"),
];

/// Why a capture file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PcapFileError {
    /// The file could not be read or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file ends in the middle of a header or record.
    #[error("{path}: truncated at offset {offset}: {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Byte offset of the incomplete header or record.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A header or record holds impossible values.
    #[error("{path}: corrupt at offset {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad header or record.
        offset: usize,
        /// What is wrong.
        what: String,
    },
}

/// Every frame of a capture file, in one buffer: the form `rx_pcap` replays from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frames {
    data: Vec<u8>,
    /// (start in `data`, length, timestamp in ns since the epoch)
    index: Vec<(usize, usize, u64)>,
}

impl Frames {
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.index.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    /// Frame `i`: its bytes and its timestamp (ns).
    pub fn get(&self, i: usize) -> Option<(&[u8], u64)> {
        let (s, l, t) = *self.index.get(i)?;
        Some((self.data.get(s..s + l)?, t))
    }
    fn push(&mut self, d: &[u8], ts: u64) {
        self.index.push((self.data.len(), d.len(), ts));
        self.data.extend_from_slice(d);
    }
}

/// Reads a classic pcap or pcapng file completely. Errors name the file and the byte offset.
pub fn read_capture(path: &Path) -> Result<Frames, PcapFileError> {
    let buf = std::fs::read(path).map_err(|source| PcapFileError::Io { path: path.into(), source })?;
    parse_capture(path, &buf)
}

fn pcap_err(path: &Path, offset: usize, e: PcapError, what: &'static str) -> PcapFileError {
    match e {
        PcapError::IncompleteBuffer => PcapFileError::Truncated { path: path.into(), offset, what },
        e => PcapFileError::Corrupt { path: path.into(), offset, what: format!("{what}: {e}") },
    }
}

/// Parses a capture held in memory (`path` is for messages).
pub fn parse_capture(path: &Path, buf: &[u8]) -> Result<Frames, PcapFileError> {
    let mut f = Frames::default();
    if buf.len() >= 4 && buf[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        let (mut rem, mut p) = PcapNgParser::new(buf).map_err(|e| pcap_err(path, 0, e, "section header block"))?;
        while !rem.is_empty() {
            let off = buf.len() - rem.len();
            let (r, block) = p.next_block(rem).map_err(|e| pcap_err(path, off, e, "block"))?;
            match block {
                Block::EnhancedPacket(epb) => {
                    // The crate reports the raw count of time units as nanoseconds; scale it by the
                    // interface's if_tsresol (default microseconds).
                    let units = epb.timestamp.as_nanos() as u64;
                    let resol = p
                        .packet_interface(&epb)
                        .and_then(|i| {
                            i.options.iter().find_map(|o| match o {
                                InterfaceDescriptionOption::IfTsResol(v) => Some(*v),
                                _ => None,
                            })
                        })
                        .unwrap_or(6);
                    f.push(&epb.data, units_to_ns(units, resol));
                }
                Block::SimplePacket(spb) => f.push(&spb.data, 0),
                Block::Packet(pb) => f.push(&pb.data, pb.timestamp.saturating_mul(1000)),
                _ => {}
            }
            rem = r;
        }
    } else {
        let (mut rem, p) = PcapParser::new(buf).map_err(|e| pcap_err(path, 0, e, "file header"))?;
        let h = p.header();
        if h.datalink != DataLink::ETHERNET {
            tracing::warn!(file = %path.display(), datalink = ?h.datalink, "capture is not Ethernet: frames replayed as they are");
        }
        while !rem.is_empty() {
            let off = buf.len() - rem.len();
            let (r, pkt) = p.next_packet(rem).map_err(|e| pcap_err(path, off, e, "packet record"))?;
            f.push(&pkt.data, pkt.timestamp.as_nanos() as u64);
            rem = r;
        }
    }
    Ok(f)
}

fn units_to_ns(units: u64, resol: u8) -> u64 {
    let exp = (resol & 0x7f) as u32;
    if resol & 0x80 != 0 {
        // 2^-exp seconds per unit.
        let per_s = 1u128.checked_shl(exp).unwrap_or(u128::MAX);
        (units as u128 * 1_000_000_000 / per_s.max(1)) as u64
    } else {
        match 10u128.checked_pow(exp) {
            Some(per_s) if per_s <= 1_000_000_000 => units.saturating_mul((1_000_000_000 / per_s) as u64),
            Some(per_s) => (units as u128 * 1_000_000_000 / per_s) as u64,
            None => 0,
        }
    }
}

/// Where `tx_pcap` goes in this process: `FILE` in the primary, `FILE.<pid>` in a secondary.
pub fn tx_path(file: &str, primary: bool) -> PathBuf {
    if primary {
        PathBuf::from(file)
    } else {
        PathBuf::from(format!("{file}.{}", std::process::id()))
    }
}

/// The net_pcap driver.
pub struct PcapDriver;

/// Magic of a little-endian, nanosecond-resolution classic pcap file.
const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
/// Largest frame a record holds whole (the file header's snaplen).
const SNAPLEN: u32 = 65535;

/// Creates `path` and writes the classic pcap file header (version 2.4, Ethernet, nanoseconds).
fn create_writer(path: &Path) -> Result<BufWriter<File>, PcapFileError> {
    let io = |source| PcapFileError::Io { path: path.into(), source };
    let f = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 16, f);
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&PCAP_MAGIC_NS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    w.write_all(&h).and_then(|_| w.flush()).map_err(io)?;
    Ok(w)
}

/// Appends one record: timestamp (s, ns), captured length, original length, then the bytes.
#[inline]
fn write_record(w: &mut BufWriter<File>, ts_ns: u64, d: &[u8]) -> std::io::Result<()> {
    let cap = d.len().min(SNAPLEN as usize);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&((ts_ns % 1_000_000_000) as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(cap as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(d.len() as u32).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(&d[..cap])
}

impl Driver for PcapDriver {
    fn name(&self) -> &'static str {
        NAME
    }
    fn bus(&self) -> BusKind {
        BusKind::Vdev
    }
    fn keys(&self) -> &'static [KeySpec] {
        &KEYS
    }
    fn probe(&self, ctx: &ProbeCtx<'_>) -> Result<Box<dyn EthDev>, EthError> {
        let kv = ctx.kvargs;
        if ctx.conf.nb_rxq != 1 || ctx.conf.nb_txq != 1 {
            return Err(ctx.error(
                NAME,
                format!("queue counts {}/{} out of range: one queue pair", ctx.conf.nb_rxq, ctx.conf.nb_txq),
            ));
        }
        let both = kv.get_str("iface");
        if both.is_some() && (kv.contains("rx_iface") || kv.contains("tx_iface")) {
            return Err(ctx.error(NAME, "iface excludes rx_iface and tx_iface"));
        }
        let rx_iface = kv.get_str("rx_iface").or(both);
        let tx_iface = kv.get_str("tx_iface").or(both);
        if rx_iface.is_some() && kv.contains("rx_pcap") {
            return Err(ctx.error(NAME, "rx_pcap excludes rx_iface and iface"));
        }
        if tx_iface.is_some() && kv.contains("tx_pcap") {
            return Err(ctx.error(NAME, "tx_pcap excludes tx_iface and iface"));
        }
        if !(rx_iface.is_some() || tx_iface.is_some() || kv.contains("rx_pcap") || kv.contains("tx_pcap")) {
            return Err(ctx.error(NAME, "needs one of rx_pcap, tx_pcap, rx_iface, tx_iface, iface"));
        }
        let infinite = kv.get_bool("infinite_rx").unwrap_or(false);
        let pool = Mempool::lookup(ctx.runtime.shm(), &ctx.conf.pool, 64)
            .ctx(format!("buffer pool {}", ctx.conf.pool))
            .map_err(|e| ctx.error(NAME, e))?;
        // Files are read before anything is created, so a bad rx_pcap leaves no tx_pcap behind.
        let frames = match kv.get_str("rx_pcap") {
            Some(p) => Some(read_capture(Path::new(p)).map_err(|e| ctx.error(NAME, e))?),
            None => None,
        };
        if infinite && frames.as_ref().is_some_and(Frames::is_empty) {
            return Err(ctx.error(NAME, "infinite_rx with an rx_pcap that holds no frame"));
        }
        // Live sockets: opened by the primary, fetched by secondaries. Order: [rx][tx].
        let (mut socks, published) = if rx_iface.is_none() && tx_iface.is_none() {
            (Vec::new(), None)
        } else if ctx.is_primary() {
            let mut v = Vec::new();
            if let Some(i) = rx_iface {
                v.push(open_live(i, true).map_err(|e| ctx.error(NAME, e))?);
            }
            if let Some(i) = tx_iface {
                v.push(open_live(i, false).map_err(|e| ctx.error(NAME, e))?);
            }
            let p = share::publish(ctx.runtime, FDS_ACTION, ctx.name, &v, Vec::new())
                .ctx("sharing interface sockets")
                .map_err(|e| ctx.error(NAME, e))?;
            (v, Some(p))
        } else {
            let want = rx_iface.is_some() as usize + tx_iface.is_some() as usize;
            let (v, _) = share::fetch(ctx.runtime, FDS_ACTION, ctx.name)
                .ctx("interface sockets")
                .map_err(|e| ctx.error(NAME, e))?;
            if v.len() != want {
                return Err(ctx.error(NAME, format!("the primary has {} interface sockets, {want} expected", v.len())));
            }
            (v, None)
        };
        let tx_sock = if tx_iface.is_some() { socks.pop() } else { None };
        let rx_sock = if rx_iface.is_some() { socks.pop() } else { None };
        let rx = match (frames, rx_sock) {
            (Some(f), _) => RxSrc::File { frames: f, next: 0, infinite },
            (None, Some(s)) => RxSrc::Live(s),
            (None, None) => RxSrc::None,
        };
        let tx = match (kv.get_str("tx_pcap"), tx_sock) {
            (Some(file), _) => {
                let path = tx_path(file, ctx.is_primary());
                let w = create_writer(&path).map_err(|e| ctx.error(NAME, e))?;
                TxSink::File { w, path }
            }
            (None, Some(s)) => TxSink::Live(s),
            (None, None) => TxSink::Drop,
        };
        let mac = match rx_iface.or(tx_iface) {
            Some(i) => netif::mac(i).unwrap_or([0; 6]),
            None => [0x02, 0x70, 0x63, 0x61, 0x70, ctx.port.0 as u8],
        };
        tracing::info!(device = ctx.name, rx = rx.describe(), tx = tx.describe(), "net_pcap probed");
        Ok(Box::new(PcapPort {
            info: DevInfo { driver: NAME, mac, mtu: 1500, nb_rxq: 1, nb_txq: 1, max_rxq: 1, max_txq: 1 },
            port: ctx.port.0,
            live: rx_iface.or(tx_iface).map(str::to_string),
            rx,
            tx,
            pool,
            st: PortStats::default(),
            _published: published,
        }))
    }
}

enum RxSrc {
    None,
    File { frames: Frames, next: usize, infinite: bool },
    Live(OwnedFd),
}

enum TxSink {
    Drop,
    File { w: BufWriter<File>, path: PathBuf },
    Live(OwnedFd),
}

impl RxSrc {
    fn describe(&self) -> String {
        match self {
            RxSrc::None => "none".into(),
            RxSrc::File { frames, infinite, .. } => {
                format!("{} frames{}", frames.len(), if *infinite { ", looped" } else { "" })
            }
            RxSrc::Live(_) => "interface".into(),
        }
    }
}

impl TxSink {
    fn describe(&self) -> String {
        match self {
            TxSink::Drop => "drop".into(),
            TxSink::File { path, .. } => path.display().to_string(),
            TxSink::Live(_) => "interface".into(),
        }
    }
}

struct PcapPort {
    info: DevInfo,
    port: u16,
    live: Option<String>,
    rx: RxSrc,
    tx: TxSink,
    pool: Mempool,
    st: PortStats,
    _published: Option<share::Published>,
}

impl EthDev for PcapPort {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }
    fn link(&mut self) -> LinkStatus {
        let up = self.live.as_deref().is_none_or(netif::is_running);
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }
    fn stats(&mut self) -> PortStats {
        self.st
    }
    fn stats_reset(&mut self) {
        self.st = PortStats::default();
    }
    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        match self.live.as_deref() {
            Some(i) => netif::set_promisc(i, on).ctx("set promiscuous mode").map_err(|e| e.device(NAME)),
            None => Ok(()),
        }
    }
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        if queue != 0 {
            return 0;
        }
        match &mut self.rx {
            RxSrc::None => 0,
            RxSrc::Live(fd) => live_rx(fd.as_raw_fd(), &mut self.pool, pkts, &mut self.st, self.port),
            RxSrc::File { frames, next, infinite } => {
                let mut n = 0;
                while n < pkts.len() {
                    if *next >= frames.len() {
                        if !*infinite || frames.is_empty() {
                            break;
                        }
                        *next = 0;
                    }
                    let Some((d, ts)) = frames.get(*next) else { break };
                    let Some(mut m) = self.pool.alloc() else {
                        self.st.rx_nombuf += 1;
                        break;
                    };
                    *next += 1;
                    if !m.copy_from(d) {
                        // Larger than a buffer: skipped, counted.
                        self.st.ierrors += 1;
                        self.pool.free(m);
                        continue;
                    }
                    m.set_port(self.port);
                    m.hdr_mut().timestamp = ts;
                    self.st.ibytes += d.len() as u64;
                    pkts[n] = Some(m);
                    n += 1;
                }
                self.st.ipackets += n as u64;
                n
            }
        }
    }
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        if queue != 0 {
            return 0;
        }
        match &mut self.tx {
            TxSink::Live(fd) => live_tx(fd.as_raw_fd(), &mut self.pool, pkts, &mut self.st),
            TxSink::Drop => {
                let mut n = 0;
                for slot in pkts.iter_mut() {
                    let Some(m) = slot.take() else { break };
                    self.st.obytes += m.pkt_len() as u64;
                    self.pool.free(m);
                    n += 1;
                }
                self.st.opackets += n as u64;
                n
            }
            TxSink::File { w, .. } => {
                // One clock read per burst, for buffers that carry no timestamp.
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
                let mut n = 0;
                for slot in pkts.iter_mut() {
                    let Some(m) = slot.take() else { break };
                    // One record from one slice: a chained packet is copied into one buffer.
                    let Ok(mut m) = self.pool.linearize(m) else {
                        self.st.oerrors += 1;
                        n += 1;
                        continue;
                    };
                    let ts = match m.hdr_mut().timestamp {
                        0 => now,
                        t => t,
                    };
                    let d = m.data();
                    match write_record(w, ts, d) {
                        Ok(()) => {
                            self.st.opackets += 1;
                            self.st.obytes += d.len() as u64;
                        }
                        Err(_) => self.st.oerrors += 1,
                    }
                    self.pool.free(m);
                    n += 1;
                }
                // One write(2) per burst: the records stay whole on disk between bursts.
                if n > 0 && w.flush().is_err() {
                    self.st.oerrors += 1;
                }
                n
            }
        }
    }
    fn close(self: Box<Self>, how: Release) {
        let mut me = *self;
        if let TxSink::File { w, path } = &mut me.tx {
            if let Err(e) = w.flush() {
                tracing::warn!(file = %path.display(), error = %e, "could not flush the capture");
            }
        }
        tracing::info!(shared = how == Release::Shared, stats = ?me.st, "net_pcap closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_time_units_follow_if_tsresol() {
        assert_eq!(units_to_ns(5, 6), 5_000);
        assert_eq!(units_to_ns(5, 9), 5);
        assert_eq!(units_to_ns(1 << 10, 0x80 | 10), 1_000_000_000);
        assert_eq!(units_to_ns(7, 0), 7_000_000_000);
    }

    #[test]
    fn a_file_that_is_no_capture_is_corrupt_at_offset_zero() {
        let e = parse_capture(Path::new("x.pcap"), &[1u8; 64]).unwrap_err().to_string();
        assert!(e.contains("x.pcap") && e.contains("offset 0"), "{e}");
        let e = parse_capture(Path::new("y.pcap"), &[0xd4, 0xc3, 0xb2]).unwrap_err().to_string();
        assert!(e.contains("truncated at offset 0"), "{e}");
    }
}
