//! Wires: where transmitted frames go and received frames come from.
//!
//! A model owns one [`Wire`]. Frames carry no FCS (the model accounts for it in octet counters).
//! Kinds: [`NullWire`] (drops), [`Loopback`] (tx to own rx), [`PeerEnd`] (two functions cabled
//! together), [`TapWire`] (a Linux TAP device), [`PcapWire`] (replay a pcap, record tx to a pcap).

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
///
/// The data path uses [`Wire::transmit_with`] and [`Wire::receive_with`]: the model copies a frame
/// from guest memory straight into the wire's buffer and from there straight into guest memory, so
/// a frame is copied twice (or once, for wires that do not keep it) and nothing is allocated per
/// frame. `transmit` and `receive` stay for callers that hold the frame in a buffer already.
pub trait Wire: Send {
    /// Puts a frame on the wire (never blocks; drops if the far side is full).
    fn transmit(&mut self, frame: &[u8]);
    /// Takes the next received frame into `buf` (cleared first). False if none is waiting.
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool;
    /// Puts a frame of `len` bytes (at most [`MAX_FRAME`]) on the wire, written in place by `fill`.
    /// `fill` gets exactly `len` bytes to overwrite (stale contents) and returns false to abandon the
    /// frame (a DMA fault): nothing is sent then. Returns what `fill` returned, or false if `len` is
    /// too long (then `fill` is not called).
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        if len > MAX_FRAME {
            return false;
        }
        // Fallback for wires without a buffer of their own: one staging allocation per frame.
        let mut frame = vec![0u8; len];
        let ok = fill(&mut frame);
        if ok {
            self.transmit(&frame);
        }
        ok
    }
    /// Hands the next received frame to `deliver`, which consumes it, without copying it out of the
    /// wire. False (and `deliver` is not called) if none is waiting.
    fn receive_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        let mut frame = Vec::new();
        if !self.receive(&mut frame) {
            return false;
        }
        deliver(&frame);
        true
    }
    /// Hands up to `max` waiting frames to `deliver`, oldest first, which consumes each; returns
    /// how many. One call per burst, so a wire behind a lock takes it once per burst and the
    /// model's per-frame work is a closure call, not a trait call. A model calls it only when it
    /// takes every frame it is given (no [`Wire::backpressure`], or room checked for `max`).
    fn receive_burst(&mut self, max: usize, deliver: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max && self.receive_with(deliver) {
            n += 1;
        }
        n
    }
    /// Runs `burst` once with the ring frames transmitted now go onto, for a whole burst (a wire
    /// behind a lock takes it once, not per frame, and the model's loop puts each frame in with
    /// [`FrameRing::push_in`], inlined). False, without calling `burst`, on a wire that keeps no
    /// such ring (a TAP, a pcap, no cable): the model then uses [`Wire::transmit_with`].
    fn tx_ring(&mut self, _burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        false
    }
    /// Runs `burst` once with the ring received frames come from, for a whole burst: the model
    /// takes each frame with [`FrameRing::front`] and [`FrameRing::pop`] (and must take every
    /// frame it looks at, as with [`Wire::receive_burst`]). False, without calling `burst`, on a
    /// wire that keeps no such ring.
    fn rx_ring(&mut self, _burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        false
    }
    /// True if a frame transmitted now would be the very next frame this same device receives: a
    /// loopback wire with nothing queued. The model may then move the frame from its transmit
    /// buffer straight into its receive ring (cut-through) instead of through the wire's buffer;
    /// order, filters, counters and drops are the same either way.
    fn loops_back_idle(&self) -> bool {
        false
    }
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
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        if len > MAX_FRAME {
            return false;
        }
        // The device still reads the frame (its DMA faults are real), into a scratch buffer that
        // lives in the thread, not in the wire, so `NullWire` stays a plain counter.
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_FRAME]);
        }
        let ok = SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => fill(&mut s[..len]),
            Err(_) => fill(&mut vec![0u8; len]),
        });
        if ok {
            self.dropped += 1;
        }
        ok
    }
    fn receive_with(&mut self, _deliver: &mut dyn FnMut(&[u8])) -> bool {
        false
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// Frames in flight on a wire, oldest first, in one buffer allocated when the wire is made: a
/// byte ring holding each frame contiguously (64-byte aligned slots), and a ring of (offset, length)
/// records. Full (by frames or by bytes): the oldest frames are dropped, as a congested link would.
pub struct FrameRing {
    data: Box<[u8]>,
    /// (offset in `data`, length) per frame, `head` is the oldest.
    frames: Box<[(u32, u32)]>,
    head: usize,
    count: usize,
    /// Where the next frame goes (when it fits there).
    write: usize,
    dropped: u64,
}

/// A burst of frames appended to a [`FrameRing`] (see [`FrameRing::writer`]).
pub struct RingWriter<'r> {
    data: &'r mut [u8],
    frames: &'r mut [(u32, u32)],
    count: &'r mut usize,
    write: &'r mut usize,
    /// Where the next frame goes, and the end of the bytes free from there.
    at: usize,
    end: usize,
    /// The bytes free at the front (before the oldest frame) while the writer has not wrapped
    /// there yet: 0 once it has, or when the free bytes do not wrap.
    front: usize,
    /// The next frame's record, and the records free.
    slot: usize,
    room: usize,
    added: usize,
}

impl RingWriter<'_> {
    /// [`FrameRing::push_in`] within the writer's room: false (nothing written) if the frame
    /// does not fit there (the ring's own `push_in` makes room for it) or `fill` abandons it.
    #[inline(always)]
    pub fn push_in(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        let need = FrameRing::slot_bytes(len);
        if self.room == 0 || len > MAX_FRAME {
            return false;
        }
        // At the write position, or at the front (as `place` goes) if the frame fits before the
        // oldest one there; the wrap stands only once the frame is written.
        let wrap = need > self.end - self.at;
        if wrap && need > self.front {
            return false;
        }
        let off = if wrap { 0 } else { self.at };
        if !fill(&mut self.data[off..off + len]) {
            return false;
        }
        if wrap {
            (self.end, self.front) = (self.front, 0);
        }
        self.frames[self.slot] = (off as u32, len as u32);
        self.slot = if self.slot + 1 == self.frames.len() { 0 } else { self.slot + 1 };
        (self.at, self.room, self.added) = (off + need, self.room - 1, self.added + 1);
        true
    }
}

impl Drop for RingWriter<'_> {
    fn drop(&mut self) {
        if self.added > 0 {
            *self.count += self.added;
            *self.write = self.at;
        }
    }
}

impl std::fmt::Debug for FrameRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRing").field("frames", &self.count).field("dropped", &self.dropped).finish()
    }
}

/// Bytes of a [`FrameRing`]: room for [`WIRE_QUEUE`] full-size (1518-byte) frames. Allocated zeroed,
/// so the pages cost memory only once frames have been there.
pub const WIRE_BYTES: usize = WIRE_QUEUE * 1536;
const SLOT_ALIGN: usize = 64;

impl Default for FrameRing {
    fn default() -> Self {
        Self::new(WIRE_QUEUE, WIRE_BYTES)
    }
}

impl FrameRing {
    /// A ring of at most `frames` frames in `bytes` bytes (at least one [`MAX_FRAME`] frame).
    pub fn new(frames: usize, bytes: usize) -> Self {
        let bytes = bytes.max(MAX_FRAME.next_multiple_of(SLOT_ALIGN)).min(u32::MAX as usize);
        Self {
            data: vec![0u8; bytes].into_boxed_slice(),
            frames: vec![(0u32, 0u32); frames.max(1)].into_boxed_slice(),
            head: 0,
            count: 0,
            write: 0,
            dropped: 0,
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no frame waits.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frames dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Drops the oldest frame.
    #[inline(always)]
    pub fn pop(&mut self) {
        if self.count == 0 {
            return;
        }
        self.head = if self.head + 1 == self.frames.len() { 0 } else { self.head + 1 };
        self.count -= 1;
        if self.count == 0 {
            // Start over at the front: the next frames land in cache-warm bytes.
            self.head = 0;
            self.write = 0;
        }
    }

    /// Drops the `n` oldest frames (all of them if fewer wait).
    #[inline(always)]
    pub fn pop_n(&mut self, n: usize) {
        let n = n.min(self.count);
        // head < len and n <= count <= len: one subtraction wraps it.
        let h = self.head + n;
        self.head = if h >= self.frames.len() { h - self.frames.len() } else { h };
        self.count -= n;
        if self.count == 0 {
            self.head = 0;
            self.write = 0;
        }
    }

    /// The `i`-th oldest frame (0 is [`FrameRing::front`]).
    #[inline(always)]
    pub fn peek(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count {
            return None;
        }
        let s = self.head + i;
        let (off, len) = self.frames[if s >= self.frames.len() { s - self.frames.len() } else { s }];
        self.data.get(off as usize..off as usize + len as usize)
    }

    /// The oldest frame.
    #[inline(always)]
    pub fn front(&self) -> Option<&[u8]> {
        if self.count == 0 {
            return None;
        }
        let (off, len) = self.frames[self.head];
        self.data.get(off as usize..off as usize + len as usize)
    }

    /// Finds room for `need` bytes (whole slots), dropping the oldest frames if needed. `None` if it can never fit.
    #[inline(always)]
    fn place(&mut self, need: usize) -> Option<usize> {
        if need > self.data.len() {
            return None;
        }
        loop {
            if self.count == 0 {
                self.head = 0;
                self.write = 0;
                return Some(0);
            }
            if self.count < self.frames.len() {
                let oldest = self.frames[self.head].0 as usize;
                let w = self.write;
                // Live bytes run from `oldest` to `w`, wrapping; w == oldest with frames in means full.
                if w > oldest {
                    if w + need <= self.data.len() {
                        return Some(w);
                    }
                    if need <= oldest {
                        return Some(0);
                    }
                } else if w < oldest && w + need <= oldest {
                    return Some(w);
                }
            }
            self.pop();
            self.dropped += 1;
        }
    }

    /// The bytes a frame of `len` bytes takes: a whole number of slots, at least one.
    #[inline(always)]
    fn slot_bytes(len: usize) -> usize {
        (len.max(1) + SLOT_ALIGN - 1) & !(SLOT_ALIGN - 1)
    }

    #[inline(always)]
    fn commit(&mut self, off: usize, len: usize, need: usize) {
        // head < len and count < len (`place` made room), so one subtraction wraps it.
        let slot = self.head + self.count;
        let slot = if slot >= self.frames.len() { slot - self.frames.len() } else { slot };
        self.frames[slot] = (off as u32, len as u32);
        self.count += 1;
        self.write = off + need;
    }

    /// Appends a frame written in place by `fill` (see [`Wire::transmit_with`]).
    #[inline(always)]
    pub fn push_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        self.push_in(len, fill)
    }

    /// A writer of a burst of frames: as many as fit now without dropping a frame (where
    /// [`FrameRing::push_in`] would put them: at the write position, or at the front once the
    /// bytes to the end run short), with the ring's state in the writer's locals (registers, in
    /// a burst loop), stored back once when it is dropped.
    #[inline(always)]
    pub fn writer(&mut self) -> RingWriter<'_> {
        let FrameRing { data, frames, head, count, write, .. } = self;
        let (end, front) = if *count == 0 {
            (*head, *write) = (0, 0);
            (data.len(), 0)
        } else {
            let oldest = frames[*head].0 as usize;
            // Live bytes run from `oldest` to `write`, wrapping (equal with frames in: full).
            if *write > oldest {
                (data.len(), oldest)
            } else {
                (oldest, 0)
            }
        };
        let slot = *head + *count;
        let slot = if slot >= frames.len() { slot - frames.len() } else { slot };
        RingWriter { room: frames.len() - *count, at: *write, end, front, slot, data, frames, count, write, added: 0 }
    }

    /// [`FrameRing::push_with`] for a burst loop ([`Wire::tx_ring`]): `fill` inlined, no call
    /// per frame. `fill` gets exactly `len` bytes (stale contents) and returns false to abandon
    /// the frame; false also if `len` is longer than [`MAX_FRAME`].
    #[inline(always)]
    pub fn push_in(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        if len > MAX_FRAME {
            return false;
        }
        let need = Self::slot_bytes(len);
        let Some(off) = self.place(need) else { return false };
        if !fill(&mut self.data[off..off + len]) {
            return false;
        }
        self.commit(off, len, need);
        true
    }

    /// Appends a copy of `frame` (longer than [`MAX_FRAME`]: dropped).
    pub fn push(&mut self, frame: &[u8]) {
        self.push_with(frame.len(), &mut |b| {
            b.copy_from_slice(frame);
            true
        });
    }

    /// Hands the oldest frame to `deliver` and drops it. False if there is none.
    pub fn pop_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        match self.front() {
            Some(f) => deliver(f),
            None => return false,
        }
        self.pop();
        true
    }

    /// Hands up to `max` of the oldest frames to `deliver`, oldest first, and drops them. Returns
    /// how many.
    pub fn pop_burst(&mut self, max: usize, deliver: &mut dyn FnMut(&[u8])) -> usize {
        self.drain_in(max, deliver)
    }

    /// [`FrameRing::pop_burst`] for a burst loop ([`Wire::rx_ring`]): `deliver` inlined, no
    /// call per frame.
    #[inline(always)]
    pub fn drain_in(&mut self, max: usize, mut deliver: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            match self.front() {
                Some(f) => deliver(f),
                None => break,
            }
            self.pop();
            n += 1;
        }
        n
    }

    /// Moves the oldest frame into `buf`. False if there is none.
    pub fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        self.pop_with(&mut |f| {
            buf.clear();
            buf.extend_from_slice(f);
        })
    }
}

/// Transmitted frames come back on the same port.
#[derive(Debug, Default)]
pub struct Loopback {
    q: FrameRing,
}

impl Wire for Loopback {
    fn transmit(&mut self, frame: &[u8]) {
        self.q.push(frame);
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.q.pop_into(buf) {
            return true;
        }
        buf.clear();
        false
    }
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        self.q.push_with(len, fill)
    }
    fn receive_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        self.q.pop_with(deliver)
    }
    fn receive_burst(&mut self, max: usize, deliver: &mut dyn FnMut(&[u8])) -> usize {
        self.q.pop_burst(max, deliver)
    }
    fn tx_ring(&mut self, burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        burst(&mut self.q);
        true
    }
    fn rx_ring(&mut self, burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        burst(&mut self.q);
        true
    }
    fn loops_back_idle(&self) -> bool {
        self.q.is_empty()
    }
    fn describe(&self) -> String {
        "loopback".into()
    }
}

/// A loopback that never reports idle, so every frame takes the wire's buffer and none cuts
/// through: the reference the cut-through path is compared with in the unit tests, and the wire
/// path `ci/instr-per-frame.sh --wire` counts.
#[derive(Default)]
pub struct QueuedLoopback(Loopback);

impl Wire for QueuedLoopback {
    fn transmit(&mut self, frame: &[u8]) {
        self.0.transmit(frame);
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        self.0.receive(buf)
    }
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        self.0.transmit_with(len, fill)
    }
    fn receive_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        self.0.receive_with(deliver)
    }
    fn receive_burst(&mut self, max: usize, deliver: &mut dyn FnMut(&[u8])) -> usize {
        self.0.receive_burst(max, deliver)
    }
    fn tx_ring(&mut self, burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        self.0.tx_ring(burst)
    }
    fn rx_ring(&mut self, burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        self.0.rx_ring(burst)
    }
    fn describe(&self) -> String {
        "queued loopback".into()
    }
}

/// A wire with its rings hidden ([`Wire::tx_ring`], [`Wire::rx_ring`]): the model moves every
/// frame through [`Wire::transmit_with`] and [`Wire::receive_burst`], as on a wire that keeps no
/// ring (a TAP). The reference the models' burst loops are compared with in the unit tests.
#[derive(Default)]
pub struct FrameByFrame<W>(pub W);

impl<W: Wire> Wire for FrameByFrame<W> {
    fn transmit(&mut self, frame: &[u8]) {
        self.0.transmit(frame);
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        self.0.receive(buf)
    }
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        self.0.transmit_with(len, fill)
    }
    fn receive_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        self.0.receive_with(deliver)
    }
    fn receive_burst(&mut self, max: usize, deliver: &mut dyn FnMut(&[u8])) -> usize {
        self.0.receive_burst(max, deliver)
    }
    fn loops_back_idle(&self) -> bool {
        self.0.loops_back_idle()
    }
    fn backpressure(&self) -> bool {
        self.0.backpressure()
    }
    fn describe(&self) -> String {
        format!("{} (frame by frame)", self.0.describe())
    }
}

type FrameQueue = Arc<Mutex<FrameRing>>;

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

fn lock(q: &FrameQueue) -> std::sync::MutexGuard<'_, FrameRing> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wire for PeerEnd {
    fn transmit(&mut self, frame: &[u8]) {
        lock(&self.to_peer).push(frame);
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        if lock(&self.from_peer).pop_into(buf) {
            return true;
        }
        buf.clear();
        false
    }
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        lock(&self.to_peer).push_with(len, fill)
    }
    fn receive_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        lock(&self.from_peer).pop_with(deliver)
    }
    fn receive_burst(&mut self, max: usize, deliver: &mut dyn FnMut(&[u8])) -> usize {
        lock(&self.from_peer).pop_burst(max, deliver)
    }
    fn tx_ring(&mut self, burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        burst(&mut lock(&self.to_peer));
        true
    }
    fn rx_ring(&mut self, burst: &mut dyn FnMut(&mut FrameRing)) -> bool {
        burst(&mut lock(&self.from_peer));
        true
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
    /// One frame, for the in-place transmit and receive (allocated once).
    scratch: Vec<u8>,
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
// `struct ifreq` is 40 bytes on Linux (16-byte name, then a 24-byte union).
const _: () = assert!(std::mem::size_of::<IfReq>() == 40);
const _: () = assert!(std::mem::offset_of!(IfReq, flags) == 16);

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
        Ok(Self { fd, name: name.to_owned(), scratch: vec![0; MAX_FRAME] })
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
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        if len > MAX_FRAME {
            return false;
        }
        self.scratch.resize(MAX_FRAME, 0);
        if !fill(&mut self.scratch[..len]) {
            return false;
        }
        let _ = nix::unistd::write(&self.fd, &self.scratch[..len]);
        true
    }
    fn receive_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        let mut buf = std::mem::take(&mut self.scratch);
        let got = self.receive(&mut buf);
        if got {
            deliver(&buf);
        }
        self.scratch = buf;
        got
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
    /// One frame, for the in-place transmit and receive (allocated once).
    scratch: Vec<u8>,
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
            scratch: Vec::with_capacity(MAX_FRAME),
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
    fn transmit_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> bool) -> bool {
        if len > MAX_FRAME {
            return false;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(len, 0);
        let ok = fill(&mut buf);
        if ok {
            self.transmit(&buf);
        }
        self.scratch = buf;
        ok
    }
    fn receive_with(&mut self, deliver: &mut dyn FnMut(&[u8])) -> bool {
        let mut buf = std::mem::take(&mut self.scratch);
        let got = self.receive(&mut buf);
        if got {
            deliver(&buf);
        }
        self.scratch = buf;
        got
    }
    fn backpressure(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("pcap={}:{}", self.rx_path.display(), self.tx_path.display())
    }
}

#[cfg(test)]
mod tests;
