//! What both NIC models need of a frame and of a descriptor ring, whatever the device: the FCS,
//! the destination class for the counters, counters and filter verdicts per burst, and descriptor
//! lines prefetched ahead.

use std::sync::atomic::Ordering;

use crate::dma::DmaView;
use crate::wire::FrameRing;

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3) of `data`, as the MAC appends it as FCS.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc = (crc >> 8) ^ CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize];
    }
    !crc
}

/// True for the broadcast address (every byte 0xff).
pub fn is_broadcast(dst: &[u8]) -> bool {
    dst.iter().all(|b| *b == 0xff)
}

/// Destination class of a frame, for the broadcast/multicast/unicast counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Individual address.
    Unicast,
    /// Group address other than broadcast.
    Multicast,
    /// ff:ff:ff:ff:ff:ff.
    Broadcast,
}

/// The class of a frame by its first bytes (a frame shorter than an address counts by what it
/// has; an empty one as unicast).
#[inline]
pub fn dest(frame: &[u8]) -> Dest {
    if let Some(d) = frame.first_chunk::<6>() {
        // One compare for the common case of a whole address.
        let w =
            u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])) | u64::from(u16::from_le_bytes([d[4], d[5]])) << 32;
        return if w == 0xffff_ffff_ffff {
            Dest::Broadcast
        } else if w & 1 != 0 {
            Dest::Multicast
        } else {
            Dest::Unicast
        };
    }
    match frame.first() {
        None => Dest::Unicast,
        Some(_) if is_broadcast(frame) => Dest::Broadcast,
        Some(b) if b & 1 != 0 => Dest::Multicast,
        Some(_) => Dest::Unicast,
    }
}

/// Frames counted over a burst, added to the statistics registers once at its end rather than
/// one register at a time per frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames.
    pub frames: u32,
    /// Octets, without FCS.
    pub bytes: u64,
    /// Frames to the broadcast address.
    pub bcast: u32,
    /// Frames to other group addresses.
    pub mcast: u32,
}

impl Tally {
    /// One frame of `len` bytes to a `d` address.
    #[inline]
    pub fn add(&mut self, len: u64, d: Dest) {
        self.frames += 1;
        self.bytes += len;
        // A branch, not arithmetic on both: a burst's frames mostly share their class.
        match d {
            Dest::Unicast => {}
            Dest::Broadcast => self.bcast += 1,
            Dest::Multicast => self.mcast += 1,
        }
    }

    /// Adds another tally.
    #[inline]
    pub fn merge(&mut self, t: Tally) {
        self.frames += t.frames;
        self.bytes += t.bytes;
        self.bcast += t.bcast;
        self.mcast += t.mcast;
    }

    /// What this counted and `part` (a part of it) did not.
    #[inline]
    pub fn minus(self, part: Tally) -> Tally {
        Tally {
            frames: self.frames - part.frames,
            bytes: self.bytes - part.bytes,
            bcast: self.bcast - part.bcast,
            mcast: self.mcast - part.mcast,
        }
    }

    /// Takes what was counted, leaving zeros.
    #[inline]
    pub fn take(&mut self) -> Tally {
        std::mem::take(self)
    }
}

/// The receive filter's verdict (accepted, destination class) for the header key the last frame
/// had: frames of a burst mostly share their destination, so a model's filter runs once per key
/// rather than once per frame. Filters do not change within a poll (registers and admin
/// commands are handled between polls).
#[derive(Clone, Copy, Debug)]
pub struct Verdict<K> {
    /// The last key, or `none`.
    last: K,
    /// A value no frame's key takes.
    none: K,
    keep: bool,
    class: Dest,
}

impl<K: Copy + Eq> Verdict<K> {
    /// No verdict yet; `none` is a key no frame has (a plain value rather than an `Option`, so
    /// the repeat check is one compare).
    pub fn new(none: K) -> Self {
        Verdict { last: none, none, keep: false, class: Dest::Unicast }
    }

    /// The verdict kept for `key`, if it is the last key judged and `keep_key` (not a runt;
    /// see [`Verdict::judge`]): the fast path's one compare.
    #[inline(always)]
    pub fn hit(&self, key: K, keep_key: bool) -> Option<(bool, Dest)> {
        (keep_key && key == self.last).then_some((self.keep, self.class))
    }

    /// The verdict on a frame whose filter key is `key`, kept for the next frame if `keep_key`
    /// (not for a runt's, which depends on its length): the last one if the key repeats, else
    /// what `decide` says.
    #[inline(always)]
    pub fn judge(&mut self, key: K, keep_key: bool, decide: impl FnOnce() -> (bool, Dest)) -> (bool, Dest) {
        // A runt is judged afresh even when its key repeats: its verdict depends on its length.
        if !keep_key || key != self.last {
            (self.keep, self.class) = decide();
            self.last = if keep_key { key } else { self.none };
        }
        (self.keep, self.class)
    }
}

/// Ring lines prefetched ahead of the descriptor the device reads (see [`prefetch_ahead`]).
pub const PREFETCH_LINES: usize = 2;

/// Before reading the descriptor at byte `o` of `ring` (descriptors of `desc_len` bytes): on the
/// first descriptor of a cache line, starts loading the line [`PREFETCH_LINES`] ahead, if at
/// least `owned` descriptors past this one belong to the device (so the driver is done writing
/// it). One descriptor load at a time then does not wait for each line the driver wrote.
#[inline]
pub fn prefetch_ahead(ring: &DmaView<'_>, o: usize, owned: usize, desc_len: usize) {
    if o.is_multiple_of(64) && owned * desc_len > PREFETCH_LINES * 64 {
        // Past the ring's end this is a no-op: only a hint is lost at the wrap.
        ring.prefetch(o + PREFETCH_LINES * 64);
    }
}

/// Stores write-backs `wb` (quadword pairs) into the descriptors of `desc_len` bytes from index
/// `first` of a ring of `count` in `descs`, in ring order: runs up to the ring's end, as many as
/// it takes (a batch is longer than the ring only if the driver handed descriptors back before
/// their write-backs; each one is still stored, a later one over an earlier).
#[inline]
pub fn store_runs(descs: &DmaView<'_>, first: usize, count: usize, desc_len: usize, wb: &[(u64, u64)]) -> bool {
    let (mut i, mut d, mut ok) = (0, first, true);
    while i < wb.len() && count > 0 {
        let run = (wb.len() - i).min(count - d);
        ok &= descs.store_u64_pairs(d * desc_len, &wb[i..i + run], Ordering::Release);
        (i, d) = (i + run, 0);
    }
    ok
}

/// What a unit test's driver can observe after a run of traffic: stats, counter registers,
/// faults (address, length, what), and the rings and buffers.
#[cfg(test)]
pub(crate) type Outcome = (crate::model::PortStats, Vec<u32>, Vec<(u64, u64, &'static str)>, Vec<u8>);

/// Runs `traffic` three ways: cut-through on an idle loopback, the burst loops over the wire's
/// ring, and frame by frame (the ring hidden); asserts every observable matches the
/// cut-through run (`what` names the case in messages), and returns that run.
#[cfg(test)]
pub(crate) fn alike_on_every_path(what: &str, traffic: impl Fn(Box<dyn crate::wire::Wire>) -> Outcome) -> Outcome {
    use crate::wire::{FrameByFrame, Loopback, QueuedLoopback};
    let cut = traffic(Box::new(Loopback::default()));
    let wire = traffic(Box::new(QueuedLoopback::default()));
    let single = traffic(Box::new(FrameByFrame(QueuedLoopback::default())));
    for (name, other) in [("wire ring", &wire), ("frame by frame", &single)] {
        assert_eq!(cut.0, other.0, "stats ({what}, {name})");
        assert_eq!(cut.1, other.1, "counters ({what}, {name})");
        assert_eq!(cut.2, other.2, "faults ({what}, {name})");
        assert!(cut.3 == other.3, "rings and buffers ({what}, {name})");
    }
    cut
}

/// Unit tests of both models: the first poll of their mixed traffic, built with the test's own
/// `frame(dst, len, fill)`: delivered, padded from 20 bytes, broadcast, filtered (another
/// address), a frame spanning two buffers (which takes the wire path, so what follows it in the
/// poll queues behind it), one more.
#[cfg(test)]
pub(crate) fn mixed_frames(mac: [u8; 6], frame: impl Fn([u8; 6], usize, u8) -> Vec<u8>) -> [Vec<u8>; 6] {
    [
        frame(mac, 60, 1),
        frame(mac, 20, 2),
        frame([0xff; 6], 1514, 3),
        frame([0x02, 9, 9, 9, 9, 9], 64, 4),
        frame(mac, 2500, 5),
        frame(mac, 70, 6),
    ]
}

/// Either model's span of transmit descriptors onto a wire's ring `r`: the `k` 16-byte
/// descriptors from byte `first` of the ring `descs` on (none past its end), each a plain
/// one-buffer frame as `frame` decodes its second quadword (length, length on the wire, whether
/// it asks for a status write-back) with a buffer in the map the last translation fell in
/// ([`Region`](crate::dma::Region)): descriptor load, one copy onto the ring (zero-filled to
/// its length on the wire), the tallies, and `done` for the status write-back of the descriptor
/// at a byte offset of the span. No call per frame and few live values. Stops before the first
/// other descriptor, leaving it to the model's per-frame work; a map or ring that logs dirty
/// pages leaves them all. Returns the frames done and whether one asked for a status
/// write-back.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn tx_ring_span(
    xl: &crate::dma::Xlate<'_>,
    descs: &DmaView<'_>,
    first: usize,
    k: usize,
    r: &mut FrameRing,
    tx: &mut Tally,
    frame: impl Fn(u64) -> Option<(usize, usize, bool)>,
    done: impl Fn(&DmaView<'_>, usize),
) -> (u32, bool) {
    let (Some(map), Some(txd)) = (xl.region(), descs.unlogged().and_then(|d| d.sub(first, k * 16))) else {
        return (0, false);
    };
    for line in (0..k * 16).step_by(64) {
        txd.prefetch(line);
    }
    let (mut i, mut rs, mut sent) = (0, false, Tally::default());
    let mut r = r.writer();
    while i < k {
        let o = i * 16;
        let Some((buf, qw1)) = txd.load_u64_pair(o) else { break };
        let Some((len, wire_len, status)) = frame(qw1) else { break };
        let Some(src) = map.view(buf, len) else { break };
        let Some(w) = push_padded(&mut r, &src, len, wire_len) else { break };
        sent.add(wire_len as u64, dest(&w.to_le_bytes()[..6]));
        if status {
            // In range: the descriptor was just read at `o`.
            done(&txd, o);
            rs = true;
        }
        i += 1;
    }
    tx.merge(sent);
    (i as u32, rs)
}

/// Where [`push_padded`] appends: a wire's ring, or a burst's writer of one.
pub(crate) trait PushIn {
    /// Appends a frame of `len` bytes written in place by `fill` (false abandons it).
    fn push_in(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool;
}

impl PushIn for FrameRing {
    #[inline(always)]
    fn push_in(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        FrameRing::push_in(self, len, fill)
    }
}

impl PushIn for crate::wire::RingWriter<'_> {
    #[inline(always)]
    fn push_in(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        crate::wire::RingWriter::push_in(self, len, fill)
    }
}

/// Puts the frame in `src` (`len` bytes) onto the wire's ring `r`, zero-filled to `wire_len`
/// (the padding of a short frame): one copy. Its first 8 bytes (little-endian; zeros past a
/// shorter frame), which hold the destination address; `None` if it did not go (`src`
/// unreadable).
#[inline(always)]
pub(crate) fn push_padded(r: &mut impl PushIn, src: &DmaView<'_>, len: usize, wire_len: usize) -> Option<u64> {
    let mut head = 0;
    let put = r.push_in(wire_len, |slot| {
        let (data, pad) = slot.split_at_mut(len);
        if !pad.is_empty() {
            pad.fill(0);
        }
        if !src.read(0, data) {
            return false;
        }
        head = slot.first_chunk::<8>().map_or(0, |h| u64::from_le_bytes(*h));
        true
    });
    put.then_some(head)
}

/// A model's buffer for the first bytes of a frame RSS parses, reused frame after frame (no
/// zeroing per frame).
pub(crate) type RssHead = [u8; crate::model::rss::HEADER_BYTES];

/// Reads the first bytes of the frame in `src` (`len` bytes in memory, `wire_len` on the wire)
/// into `buf`, zeros past the frame up to `wire_len` (a short frame's padding), and returns how
/// many bytes of `buf` RSS parses; `None` if `src` cannot be read.
#[inline]
pub(crate) fn rss_head(buf: &mut RssHead, src: &DmaView<'_>, len: usize, wire_len: usize) -> Option<usize> {
    let n = len.min(buf.len());
    if !src.read(0, &mut buf[..n]) {
        return None;
    }
    let w = wire_len.min(buf.len());
    if w > n {
        buf[n..w].fill(0);
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_the_check_string() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn destination_classes() {
        assert_eq!(dest(&[0xff; 14]), Dest::Broadcast);
        assert_eq!(dest(&[0x01, 0, 0x5e, 0, 0, 1, 0, 0]), Dest::Multicast);
        assert_eq!(dest(&[0x02, 0, 0, 0, 0, 1]), Dest::Unicast);
        assert_eq!(dest(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]), Dest::Multicast, "a group address, not broadcast");
        assert_eq!(dest(&[0xff, 0xff]), Dest::Broadcast);
        assert_eq!(dest(&[0x03]), Dest::Multicast);
        assert_eq!(dest(&[]), Dest::Unicast);
    }
}
