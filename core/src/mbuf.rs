//! Packet buffers (`Mbuf`) and their pools (`Mempool`) in shared memory.
//!
//! A pool is one memzone: a [`PoolHdr`], a ring of free buffer offsets, then `n` elements, each a
//! 64-byte [`MbufHdr`] followed by headroom and data room. Any process of the lab can allocate a
//! buffer and any other can free it: the free list is the shared ring, and a buffer names its pool
//! by offset. Each `Mempool` handle keeps a small local cache in front of the ring (DPDK's
//! per-lcore cache), so a burst costs no shared-memory atomics in the common case.
//!
//! Each handle with a cache publishes the cache's length in one of the pool's [`MAX_CACHES`]
//! cache slots (a relaxed store to a line only it writes), so any process can tell free buffers
//! (ring and caches) from buffers in use, as DPDK reads its per-lcore caches. A handle that finds
//! no free slot runs without a cache, so the figures stay exact.
//!
//! An [`Mbuf`] is an owned handle (a pointer into the mapping, which is never unmapped). Dropping
//! one returns it to its pool's ring; data paths use `Mempool::free_bulk`, which goes through the
//! local cache instead.

use crate::sync::{backoff, AtomicU32, Ordering};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::mem::{Iova, MemError, Shm, ShmOffset, IOVA_BASE};
use crate::ring::{RawRing, Ring, RingElem, RingError, RingFlags, RingHdr};

/// Default headroom before packet data.
pub const HEADROOM: u16 = 128;
/// Default data room: one standard frame plus slack.
pub const DEFAULT_DATA_ROOM: u16 = 2048;
/// Port value of a buffer not received on any port.
pub const NO_PORT: u16 = u16::MAX;
/// Segments one packet may have at most (a 9,000-byte frame over 128-byte buffers fits).
pub const MAX_SEGS: u16 = 128;

/// `ol_flags` bit: `rss_hash` holds the device's RSS hash (DPDK's `RTE_MBUF_F_RX_RSS_HASH`).
pub const RX_RSS_HASH: u64 = 1 << 1;

/// Header of every packet buffer, in shared memory.
#[repr(C, align(64))]
pub struct MbufHdr {
    self_off: u64,
    pool_off: u64,
    buf_off: u64,
    buf_len: u32,
    data_off: u16,
    data_len: u16,
    pkt_len: u32,
    port: u16,
    /// Segments of the chain this buffer heads (1 for a single buffer; meaningful in the head).
    nb_segs: u16,
    /// Offload flags (driver-defined bits).
    pub ol_flags: u64,
    /// RSS hash reported by the device.
    pub rss_hash: u32,
    /// The next segment's header offset in 64-byte units (0: the last segment).
    next: u32,
    /// Receive or transmit timestamp in nanoseconds (pcap uses it).
    pub timestamp: u64,
}
const _: () = assert!(std::mem::size_of::<MbufHdr>() == 64);

/// Header of a pool.
#[repr(C, align(64))]
pub struct PoolHdr {
    magic: u64,
    n: u32,
    elt_size: u32,
    data_room: u16,
    headroom: u16,
    /// Cache slots after the header (`MAX_CACHES`).
    caches: u32,
    ring_off: u64,
    elts_off: u64,
    self_off: u64,
}

/// Cache slots a pool has: handles beyond this many (with a cache) run without one.
pub const MAX_CACHES: usize = 64;

/// One handle's published cache length, in shared memory after the pool header.
#[repr(C, align(64))]
struct CacheSlot {
    /// Pid of the process whose handle holds the slot (0: free).
    pid: AtomicU32,
    /// Buffers in that handle's cache.
    len: AtomicU32,
}
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<CacheSlot>() == 64);
const CACHES_LEN: u64 = 64 * MAX_CACHES as u64;
const _: () = assert!(std::mem::size_of::<PoolHdr>() == 64);
const _: () = assert!(std::mem::offset_of!(PoolHdr, ring_off) == 24);
const POOL_MAGIC: u64 = 0x504f_4f4c_4d42_5546;

/// Errors of pool creation or lookup.
#[derive(Debug, thiserror::Error)]
pub enum MbufError {
    /// Parameters out of range.
    #[error("mempool {name:?}: {what}")]
    BadParam {
        /// Pool name.
        name: String,
        /// What was wrong, with the limit.
        what: String,
    },
    /// Zone exists but holds no pool.
    #[error("memzone {name:?} holds no mempool")]
    NotAPool {
        /// Zone name.
        name: String,
    },
    /// Memory layer failure.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// Ring failure.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// An owned packet buffer. Dropping it returns it to its pool.
pub struct Mbuf(NonNull<MbufHdr>);

// SAFETY: an Mbuf is a unique owner of its buffer (allocation handed it out exactly once); the
// memory is shared memory that outlives the process's use of it.
unsafe impl Send for Mbuf {}

impl Mbuf {
    #[inline]
    fn h(&self) -> &MbufHdr {
        // SAFETY: self.0 points at a live header inside a mapping that is never unmapped.
        unsafe { self.0.as_ref() }
    }
    #[inline]
    fn hm(&mut self) -> &mut MbufHdr {
        // SAFETY: as above, and this handle is the unique owner of the buffer.
        unsafe { self.0.as_mut() }
    }
    #[inline]
    fn buf(&self) -> *mut u8 {
        // SAFETY: the data buffer starts right after the 64-byte header, inside the element.
        unsafe { self.0.as_ptr().cast::<u8>().add(64) }
    }
    /// Packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let h = self.h();
        // SAFETY: data_off + data_len <= buf_len is kept by every setter.
        unsafe { std::slice::from_raw_parts(self.buf().add(h.data_off as usize), h.data_len as usize) }
    }
    /// Packet bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (off, len) = (self.h().data_off as usize, self.h().data_len as usize);
        // SAFETY: as in `data`; &mut self makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.buf().add(off), len) }
    }
    /// Length of this (the first) segment; the whole packet's is `pkt_len`.
    #[inline]
    pub fn len(&self) -> usize {
        self.h().data_len as usize
    }
    /// Whether the packet is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.h().data_len == 0
    }
    /// Sets the length of this (the first) segment, the packet's length following; false
    /// (nothing changed) when it does not fit the tailroom.
    #[inline]
    pub fn set_len(&mut self, len: usize) -> bool {
        let h = self.hm();
        if h.data_off as usize + len > h.buf_len as usize {
            return false;
        }
        h.pkt_len = h.pkt_len - u32::from(h.data_len) + len as u32;
        h.data_len = len as u16;
        true
    }
    /// Grows the packet by `n` bytes at the end (of its last segment, as `rte_pktmbuf_append`)
    /// and returns them, or None if they do not fit that segment.
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        if self.h().next == 0 {
            let old = self.len();
            if !self.set_len(old + n) {
                return None;
            }
            return Some(&mut self.data_mut()[old..]);
        }
        let last = self.last_seg();
        // SAFETY: a segment of this chain (which this handle owns), inside the same mapping.
        let l = unsafe { &mut *last.as_ptr() };
        let old = l.data_len as usize;
        if l.data_off as usize + old + n > l.buf_len as usize {
            return None;
        }
        l.data_len += n as u16;
        self.hm().pkt_len += n as u32;
        // SAFETY: as in `data_mut`, for the last segment: `old..old + n` is inside its buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(seg_buf(last).add(l.data_off as usize + old), n) })
    }
    /// Grows the packet by `n` bytes at the front (into the headroom) and returns them, or None
    /// if the headroom is smaller: where a driver puts a header the device reads before the
    /// frame (virtio-net's), as `rte_pktmbuf_prepend` does.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let h = self.hm();
        if n > h.data_off as usize {
            return None;
        }
        h.data_off -= n as u16;
        h.data_len += n as u16;
        h.pkt_len += n as u32;
        Some(&mut self.data_mut()[..n])
    }
    /// Replaces the content with `bytes` (in this one buffer: other segments are freed); false
    /// (nothing changed) when they do not fit.
    pub fn copy_from(&mut self, bytes: &[u8]) -> bool {
        if self.h().next != 0 && bytes.len() <= self.buf_len() - self.headroom() {
            drop(self.unlink());
        }
        if !self.set_len(bytes.len()) {
            return false;
        }
        self.data_mut().copy_from_slice(bytes);
        true
    }
    /// Bytes free before the data.
    pub fn headroom(&self) -> usize {
        self.h().data_off as usize
    }
    /// Bytes free after the data.
    pub fn tailroom(&self) -> usize {
        let h = self.h();
        h.buf_len as usize - h.data_off as usize - h.data_len as usize
    }
    /// Whole buffer size (headroom + data room).
    pub fn buf_len(&self) -> usize {
        self.h().buf_len as usize
    }
    /// Device address of the start of the buffer.
    #[inline]
    pub fn buf_iova(&self) -> Iova {
        Iova(IOVA_BASE + self.h().buf_off)
    }
    /// Device address of the first packet byte.
    #[inline]
    pub fn data_iova(&self) -> Iova {
        Iova(IOVA_BASE + self.h().buf_off + self.h().data_off as u64)
    }
    /// Port the packet arrived on, or `NO_PORT`.
    pub fn port(&self) -> u16 {
        self.h().port
    }
    /// Sets the arrival port.
    pub fn set_port(&mut self, port: u16) {
        self.hm().port = port;
    }
    /// Header fields drivers set (offload flags, RSS hash, timestamp).
    pub fn hdr(&self) -> &MbufHdr {
        self.h()
    }
    /// Header fields drivers may set directly (offload flags, RSS hash, timestamp).
    pub fn hdr_mut(&mut self) -> &mut MbufHdr {
        self.hm()
    }
    /// Resets length, offsets and metadata as after allocation; the segments after the first
    /// go back to their pool.
    #[inline]
    pub fn reset(&mut self) {
        if self.h().next != 0 {
            drop(self.unlink());
        }
        self.reset_head();
    }
    /// `reset` of a buffer known to have no next segment (fresh from its pool).
    #[inline]
    fn reset_head(&mut self) {
        let h = self.hm();
        h.next = 0;
        h.nb_segs = 1;
        h.data_off = HEADROOM.min(h.buf_len as u16);
        h.data_len = 0;
        h.pkt_len = 0;
        h.port = NO_PORT;
        h.ol_flags = 0;
        // A recycled buffer must not carry the receive time of its previous packet (pcap writes it).
        h.timestamp = 0;
    }
    /// Offset of the buffer in shared memory: the form in which buffers cross processes
    /// through rings. Ownership goes with it; rebuild with `Mbuf::from_offset`.
    pub fn into_offset(self) -> ShmOffset {
        let off = ShmOffset(self.h().self_off);
        std::mem::forget(self);
        off
    }
    /// Offset of this buffer's header.
    pub fn offset(&self) -> ShmOffset {
        ShmOffset(self.h().self_off)
    }
    /// Takes ownership of the buffer at `off` (as produced by `into_offset`), after checking that
    /// a buffer header really is there. `None` for anything else.
    pub fn from_offset(shm: &Shm, off: ShmOffset) -> Option<Mbuf> {
        let p = shm.ptr(off, 64)?;
        if !(p.as_ptr() as usize).is_multiple_of(64) {
            return None;
        }
        let h = p.cast::<MbufHdr>();
        // SAFETY: 64 bytes inside the mapping, 64-aligned; MbufHdr is plain data.
        let hr = unsafe { h.as_ref() };
        let sane = |hr: &MbufHdr, off: u64| {
            hr.self_off == off
                && hr.buf_off == off + 64
                && shm.ptr(ShmOffset(off), 64 + hr.buf_len as u64).is_some()
                && hr.data_off as u32 + hr.data_len as u32 <= hr.buf_len
        };
        if !sane(hr, off.0) {
            return None;
        }
        // Every segment (another process built the chain): in the mapping, a buffer header,
        // as many as the head says, their lengths summing to the packet's.
        let (mut next, mut segs, mut bytes) = (hr.next, 1u16, u64::from(hr.data_len));
        while next != 0 {
            let o = u64::from(next) * 64;
            let s = shm.ptr(ShmOffset(o), 64)?.cast::<MbufHdr>();
            // SAFETY: as for the head: 64 bytes inside the mapping, 64-aligned, plain data.
            let sr = unsafe { s.as_ref() };
            if segs >= hr.nb_segs.min(MAX_SEGS) || !sane(sr, o) {
                return None;
            }
            (next, segs, bytes) = (sr.next, segs + 1, bytes + u64::from(sr.data_len));
        }
        if segs != hr.nb_segs || bytes != u64::from(hr.pkt_len) {
            return None;
        }
        Some(Mbuf(h))
    }
    /// Segments in the chain this buffer heads (1 for a single buffer).
    #[inline]
    pub fn nb_segs(&self) -> u16 {
        self.h().nb_segs
    }
    /// Bytes of the whole packet, over every segment (`len` is the first segment's).
    #[inline]
    pub fn pkt_len(&self) -> usize {
        self.h().pkt_len as usize
    }
    /// Each segment's bytes, in order.
    pub fn segments(&self) -> Segments<'_> {
        Segments { cur: Some(self.0), base: self.base(), left: MAX_SEGS, _m: std::marker::PhantomData }
    }
    /// Each segment's device address (of its first byte) and length, in order: a transmit
    /// path's descriptors.
    #[inline]
    pub fn seg_iovas(&self) -> impl Iterator<Item = (Iova, usize)> + '_ {
        let mut s = self.segments();
        std::iter::from_fn(move || {
            s.step().map(|(_, h)| (Iova(IOVA_BASE + h.buf_off + u64::from(h.data_off)), h.data_len as usize))
        })
    }
    /// Copies the whole packet into the front of `out`: its length, or None (nothing
    /// meaningful written) when `out` is shorter.
    pub fn copy_to(&self, out: &mut [u8]) -> Option<usize> {
        let n = self.pkt_len();
        if n > out.len() {
            return None;
        }
        let mut at = 0;
        for s in self.segments() {
            out.get_mut(at..at + s.len())?.copy_from_slice(s);
            at += s.len();
        }
        Some(at)
    }
    /// Appends `tail` (a buffer or a chain) after this chain's last segment. `tail` comes back
    /// unchanged when the chain would have over [`MAX_SEGS`] segments or over `u32::MAX`
    /// bytes, or when it lies in another mapping.
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), Mbuf> {
        let (t_off, t_segs, t_len) = (tail.h().self_off, tail.h().nb_segs, tail.h().pkt_len);
        let units = u32::try_from(t_off / 64).ok().filter(|&u| u != 0 && u64::from(u) * 64 == t_off);
        let fits = u32::from(self.h().nb_segs) + u32::from(t_segs) <= u32::from(MAX_SEGS)
            && self.h().pkt_len.checked_add(t_len).is_some();
        let (Some(units), true, true) = (units, fits, tail.base() == self.base()) else {
            return Err(tail);
        };
        let last = self.last_seg();
        // SAFETY: the last segment of this chain, which this handle owns.
        unsafe { (*last.as_ptr()).next = units };
        let h = self.hm();
        h.nb_segs += t_segs;
        h.pkt_len += t_len;
        std::mem::forget(tail);
        Ok(())
    }
    /// Takes the segments after the first off the chain, as a packet of their own; this one is
    /// a single buffer again.
    pub fn take_next(&mut self) -> Option<Mbuf> {
        let mut rest = self.unlink()?;
        let (mut segs, mut bytes) = (0u16, 0u32);
        for s in rest.segments() {
            segs += 1;
            bytes += s.len() as u32;
        }
        let h = rest.hm();
        (h.nb_segs, h.pkt_len) = (segs, bytes);
        Some(rest)
    }
    /// Detaches the next segment (with those after it) as an owned handle, its head fields
    /// not recomputed (enough to free it); this one becomes a single buffer.
    #[inline]
    fn unlink(&mut self) -> Option<Mbuf> {
        let next = self.h().next;
        if next == 0 {
            return None;
        }
        let base = self.base();
        let h = self.hm();
        h.next = 0;
        h.nb_segs = 1;
        h.pkt_len = u32::from(h.data_len);
        // SAFETY: `next` names a segment header of this chain in the same mapping (checked when
        // the chain was built or came from another process); the chain is ours, so is it.
        Some(Mbuf(unsafe { NonNull::new_unchecked(base.add(next as usize * 64).cast::<MbufHdr>()) }))
    }
    /// Start of the mapping this buffer is in.
    #[inline]
    fn base(&self) -> *mut u8 {
        // SAFETY: the header is `self_off` bytes into the mapping.
        unsafe { self.0.as_ptr().cast::<u8>().sub(self.h().self_off as usize) }
    }
    /// The chain's last segment (this one for a single buffer).
    fn last_seg(&self) -> NonNull<MbufHdr> {
        let base = self.base();
        let mut p = self.0;
        // At most MAX_SEGS steps, whatever the links say (`chain` and `from_offset` keep to it).
        let mut hops = MAX_SEGS;
        // SAFETY: each `next` names a segment header of this chain inside the same mapping.
        while let n @ 1.. = unsafe { p.as_ref() }.next {
            hops -= 1;
            if hops == 0 {
                break;
            }
            // SAFETY: as above.
            p = unsafe { NonNull::new_unchecked(base.add(n as usize * 64).cast::<MbufHdr>()) };
        }
        p
    }
    #[inline]
    fn pool_ring(&self) -> RawRing<u64> {
        let h = self.h();
        let base = self.0.as_ptr() as usize - h.self_off as usize;
        // SAFETY: the pool header sits at base + pool_off in the same mapping (written at pool
        // creation and never changed); its ring header at base + ring_off.
        unsafe {
            let pool = &*((base + h.pool_off as usize) as *const PoolHdr);
            RawRing::from_hdr(NonNull::new_unchecked((base + pool.ring_off as usize) as *mut RingHdr))
        }
    }
}

/// The data buffer of the segment whose header is at `h`: right after the 64-byte header.
#[inline]
fn seg_buf(h: NonNull<MbufHdr>) -> *mut u8 {
    // SAFETY: every element is a 64-byte header followed by its buffer.
    unsafe { h.as_ptr().cast::<u8>().add(64) }
}

/// The segments of a packet, each as its bytes ([`Mbuf::segments`]).
pub struct Segments<'a> {
    cur: Option<NonNull<MbufHdr>>,
    base: *mut u8,
    /// Segments it may still give (MAX_SEGS at most, whatever the links say).
    left: u16,
    _m: std::marker::PhantomData<&'a Mbuf>,
}

impl<'a> Segments<'a> {
    /// The next segment's header.
    #[inline]
    fn step(&mut self) -> Option<(NonNull<MbufHdr>, &'a MbufHdr)> {
        let p = self.cur?;
        // SAFETY: a segment header of the chain the borrowed Mbuf owns, in its mapping.
        let h = unsafe { p.as_ref() };
        self.left -= 1;
        self.cur = (h.next != 0 && self.left > 0)
            // SAFETY: `next` names the following segment's header in the same mapping.
            .then(|| unsafe { NonNull::new_unchecked(self.base.add(h.next as usize * 64).cast::<MbufHdr>()) });
        Some((p, h))
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];
    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let (p, h) = self.step()?;
        // SAFETY: data_off + data_len <= buf_len, as in `Mbuf::data`.
        Some(unsafe { std::slice::from_raw_parts(seg_buf(p).add(h.data_off as usize), h.data_len as usize) })
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // The other segments first, one by one (each a single buffer by then: no recursion).
        let mut next = self.unlink();
        while let Some(mut m) = next {
            next = m.unlink();
            drop(m);
        }
        let off = self.h().self_off;
        // The pool ring has room for every buffer of the pool, so this cannot fail.
        let ok = self.pool_ring().enqueue_bulk(&[off]);
        debug_assert!(ok, "pool ring full on free: a buffer was freed twice");
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mbuf(off={:#x}, len={}, segs={})", self.h().self_off, self.pkt_len(), self.nb_segs())
    }
}

/// A process-local handle on a shared packet buffer pool, with its own cache.
pub struct Mempool {
    shm: Arc<Shm>,
    pool_off: u64,
    name: String,
    n: u32,
    ring: Ring<u64>,
    cache: Cache,
    /// Cache slots of the pool.
    caches: u32,
    /// This handle's cache slot, if it has a cache.
    slot: Option<NonNull<CacheSlot>>,
}

// SAFETY: the handle owns its cache; shared state is the ring (thread- and process-safe) and
// its cache slot, touched only through atomics.
unsafe impl Send for Mempool {}

impl Mempool {
    /// Creates pool `name` of `n` buffers with `data_room` bytes each (plus headroom), in a memzone
    /// of the same name. `cache_size` is this handle's local cache (0 for none; at most 512).
    pub fn create(shm: &Arc<Shm>, name: &str, n: u32, data_room: u16, cache_size: usize) -> Result<Mempool, MbufError> {
        let bad = |what: String| MbufError::BadParam { name: name.into(), what };
        if !(1..=1 << 22).contains(&n) {
            return Err(bad(format!("{n} buffers is out of range 1..=4194304")));
        }
        if !(64..=16384).contains(&data_room) {
            return Err(bad(format!("data room {data_room} is out of range 64..=16384")));
        }
        if cache_size > 512 {
            return Err(bad(format!("cache size {cache_size} is over the limit 512")));
        }
        let ring_count = (n + 1).next_power_of_two();
        let elt_size = (64 + HEADROOM as u64 + data_room as u64).div_ceil(64) * 64;
        let ring_len = Ring::<u64>::mem_size(ring_count).div_ceil(64) * 64;
        let total = 64 + CACHES_LEN + ring_len + elt_size * n as u64;
        let z = shm.reserve(name, total, 64)?;
        let off = z.offset.0;
        // Free cache slots: the zone is fresh, but reserve() does not promise zeroes.
        for i in 0..MAX_CACHES as u64 {
            shm.write_at(ShmOffset(off + 64 + 64 * i), &[0u8; 64]);
        }
        let ring_off = off + 64 + CACHES_LEN;
        let elts_off = ring_off + ring_len;
        Ring::<u64>::init_at(shm, ShmOffset(ring_off), ring_count, RingFlags::MPMC);
        let ring = Ring::<u64>::attach(shm, name, ShmOffset(ring_off))?;
        let p = shm.ptr(z.offset, total).ok_or_else(|| bad("zone outside the mapping".into()))?;
        // SAFETY: the zone [off, off+total) is ours alone until the pool is published by name
        // (creation holds no lock, but lookups check the magic written last).
        unsafe {
            for i in 0..n as u64 {
                let e_off = elts_off + i * elt_size;
                let h = p.as_ptr().add((e_off - off) as usize).cast::<MbufHdr>();
                h.write(MbufHdr {
                    self_off: e_off,
                    pool_off: off,
                    buf_off: e_off + 64,
                    buf_len: (elt_size - 64) as u32,
                    data_off: HEADROOM,
                    data_len: 0,
                    pkt_len: 0,
                    port: NO_PORT,
                    nb_segs: 1,
                    ol_flags: 0,
                    rss_hash: 0,
                    next: 0,
                    timestamp: 0,
                });
            }
            let ph = p.as_ptr().cast::<PoolHdr>();
            ph.write(PoolHdr {
                magic: 0,
                n,
                elt_size: elt_size as u32,
                data_room,
                headroom: HEADROOM,
                caches: MAX_CACHES as u32,
                ring_off,
                elts_off,
                self_off: off,
            });
        }
        let mut offs = Vec::with_capacity(n as usize);
        offs.extend((0..n as u64).map(|i| elts_off + i * elt_size));
        for c in offs.chunks(256) {
            let ok = ring.enqueue_bulk(c);
            debug_assert!(ok);
        }
        // SAFETY: publish: the header is complete.
        unsafe {
            let ph = p.as_ptr().cast::<PoolHdr>();
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::addr_of_mut!((*ph).magic).write_volatile(POOL_MAGIC);
        }
        Ok(Mempool::handle(shm, name, off, n, ring, cache_size, MAX_CACHES as u32))
    }

    /// A new handle (with its own empty cache) on the existing pool `name`.
    pub fn lookup(shm: &Arc<Shm>, name: &str, cache_size: usize) -> Result<Mempool, MbufError> {
        let z = shm.lookup(name)?;
        let not = || MbufError::NotAPool { name: name.into() };
        let p = shm.ptr(z.offset, 64).ok_or_else(not)?;
        // SAFETY: 64 bytes inside the mapping; PoolHdr is plain data written before the magic.
        let ph = unsafe { p.cast::<PoolHdr>().as_ref() };
        // SAFETY: volatile read of the publish flag.
        if unsafe { std::ptr::addr_of!(ph.magic).read_volatile() } != POOL_MAGIC || ph.self_off != z.offset.0 {
            return Err(not());
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let ring = Ring::<u64>::attach(shm, name, ShmOffset(ph.ring_off))?;
        let caches = ph.caches.min(MAX_CACHES as u32);
        Ok(Mempool::handle(shm, name, z.offset.0, ph.n, ring, cache_size.min(512), caches))
    }

    fn handle(
        shm: &Arc<Shm>,
        name: &str,
        pool_off: u64,
        n: u32,
        ring: Ring<u64>,
        cache_size: usize,
        caches: u32,
    ) -> Mempool {
        let slots = Self::slots(shm, pool_off, caches);
        let slot = if cache_size > 0 { Self::claim(&slots) } else { None };
        // No slot, no cache: a cache nobody can see would make the pool's figures wrong.
        let cache_size = if slot.is_some() { cache_size } else { 0 };
        Mempool { shm: shm.clone(), pool_off, name: name.into(), n, ring, cache: Cache::new(cache_size), caches, slot }
    }

    /// The cache slots of the pool at `pool_off`.
    fn slots(shm: &Shm, pool_off: u64, caches: u32) -> Vec<NonNull<CacheSlot>> {
        (0..u64::from(caches))
            .filter_map(|i| shm.ptr(ShmOffset(pool_off + 64 + 64 * i), 64).map(NonNull::cast))
            .collect()
    }

    /// Takes a free slot, or else one whose process died. Free ones first: whether a process
    /// lives costs a syscall and a read of its /proc stat, which a probe in every process of a
    /// hotplug step paid once per slot taken by the others (a third of a secondary's time in an
    /// attach with four secondaries, by perf).
    fn claim(slots: &[NonNull<CacheSlot>]) -> Option<NonNull<CacheSlot>> {
        let me = std::process::id();
        let take = |s: &NonNull<CacheSlot>, dead_ok: bool| {
            // SAFETY: a 64-byte slot inside the mapping (never unmapped); only atomics are used.
            let s = unsafe { s.as_ref() };
            let p = s.pid.load(Ordering::Relaxed);
            let free = p == 0 || (dead_ok && p != me && !crate::sys::pid_alive(p));
            if free && s.pid.compare_exchange(p, me, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                s.len.store(0, Ordering::Relaxed);
                return true;
            }
            false
        };
        slots.iter().copied().find(|s| take(s, false)).or_else(|| slots.iter().copied().find(|s| take(s, true)))
    }

    /// Publishes this handle's cache length (a relaxed store to its own line).
    #[inline]
    fn publish(&self) {
        if let Some(s) = self.slot {
            // SAFETY: our claimed slot inside the mapping; atomics only.
            unsafe { s.as_ref() }.len.store(self.cache.len as u32, Ordering::Relaxed);
        }
    }

    /// Another handle on the same pool, with its own cache.
    pub fn new_handle(&self) -> Mempool {
        Mempool::handle(&self.shm, &self.name, self.pool_off, self.n, self.ring.clone(), self.cache.size, self.caches)
    }

    /// Buffers in the shared free ring (DPDK's `common_pool_count`).
    pub fn common_count(&self) -> u32 {
        self.ring.count()
    }

    /// Buffers in the caches of every live handle, in any process.
    pub fn cached_count(&self) -> u32 {
        Self::slots(&self.shm, self.pool_off, self.caches)
            .iter()
            .map(|s| {
                // SAFETY: a slot inside the mapping; atomics only.
                let s = unsafe { s.as_ref() };
                let p = s.pid.load(Ordering::Relaxed);
                if p != 0 && crate::sys::pid_alive(p) {
                    s.len.load(Ordering::Relaxed)
                } else {
                    0
                }
            })
            .sum()
    }

    /// Handles with a cache on this pool, in every live process.
    pub fn cache_handles(&self) -> u32 {
        Self::slots(&self.shm, self.pool_off, self.caches)
            .iter()
            .filter(|s| {
                // SAFETY: a slot inside the mapping; atomics only.
                let p = unsafe { s.as_ref() }.pid.load(Ordering::Relaxed);
                p != 0 && crate::sys::pid_alive(p)
            })
            .count() as u32
    }

    /// This handle's cache size (0 when it runs without one).
    pub fn cache_size(&self) -> usize {
        self.cache.size
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of buffers in the pool.
    pub fn size(&self) -> u32 {
        self.n
    }

    /// Free buffers: in the shared ring plus this handle's cache (other handles' caches unseen).
    pub fn avail_count(&self) -> u32 {
        self.ring.count() + self.cache.len as u32
    }

    /// The buffer at `off` of `shm`: an offset the pool's free ring or a cache gave.
    #[inline]
    fn to_mbuf(shm: &Shm, off: u64) -> Mbuf {
        // SAFETY: offsets in the free ring and cache are element header offsets of this pool,
        // written at creation; they lie inside the mapping.
        Mbuf(unsafe { NonNull::new_unchecked(shm.base().add(off as usize).cast::<MbufHdr>()) })
    }

    /// Allocates one buffer (reset, empty).
    #[inline]
    pub fn alloc(&mut self) -> Option<Mbuf> {
        let off = self.cache.pop(&self.ring)?;
        self.publish();
        let mut m = Self::to_mbuf(&self.shm, off);
        m.reset_head();
        Some(m)
    }

    /// Fills every slot of `out` with a fresh buffer, or none of them (returns false).
    #[inline]
    pub fn alloc_bulk(&mut self, out: &mut [Option<Mbuf>]) -> bool {
        let n = out.len();
        if n > self.cache.objs.len() {
            let mut i = 0;
            while i < n {
                let k = (n - i).min(64);
                if !self.alloc_bulk(&mut out[i..i + k]) {
                    for s in &mut out[..i] {
                        *s = None;
                    }
                    return false;
                }
                i += k;
            }
            return true;
        }
        let Some(offs) = self.cache.take(&self.ring, n) else {
            self.publish();
            return false;
        };
        for (slot, &off) in out.iter_mut().zip(offs.iter().rev()) {
            let mut m = Self::to_mbuf(&self.shm, off);
            m.reset_head();
            *slot = Some(m);
        }
        self.publish();
        true
    }

    /// Returns a buffer: into this handle's cache when it belongs to this pool, else to its own
    /// pool's ring.
    #[inline]
    pub fn free(&mut self, mut m: Mbuf) {
        if m.h().next != 0 {
            let mut next = m.unlink();
            while let Some(mut s) = next {
                next = s.unlink();
                self.free_one(s);
            }
        }
        self.free_one(m);
    }

    /// `free` of one buffer with no next segment.
    #[inline]
    fn free_one(&mut self, m: Mbuf) {
        if m.h().pool_off != self.pool_off || self.cache.size == 0 {
            drop(m);
            return;
        }
        self.cache.push(&self.ring, m.into_offset().0);
        self.publish();
    }

    /// Frees every buffer in `ms` (taking them out of the slice).
    #[inline]
    pub fn free_bulk(&mut self, ms: &mut [Option<Mbuf>]) {
        for m in ms.iter_mut().filter_map(Option::take) {
            self.free(m);
        }
    }

    /// The packet `m` in one buffer of this pool: `m` itself when it has one segment, else a
    /// copy (bytes and metadata; `m` freed), for a transmit path that takes single buffers.
    /// `m` comes back when no buffer is free or the packet is over one buffer's room.
    #[inline]
    pub fn linearize(&mut self, m: Mbuf) -> Result<Mbuf, Mbuf> {
        if m.nb_segs() == 1 {
            return Ok(m);
        }
        self.linearize_chain(m)
    }

    #[cold]
    fn linearize_chain(&mut self, m: Mbuf) -> Result<Mbuf, Mbuf> {
        let Some(mut one) = self.alloc() else { return Err(m) };
        let n = m.pkt_len();
        let Some(dst) = one.append(n) else {
            self.free(one);
            return Err(m);
        };
        let _ = m.copy_to(dst);
        let (src, h) = (m.h(), one.hm());
        (h.port, h.ol_flags, h.rss_hash, h.timestamp) = (src.port, src.ol_flags, src.rss_hash, src.timestamp);
        self.free(m);
        Ok(one)
    }
}

/// A handle's local cache of free buffer offsets in front of the pool's shared ring (DPDK's
/// per-lcore cache). Process-local: all it shares is the ring, so loom runs this very code over a
/// ring of loom's atomics (`loom_tests` below).
struct Cache {
    objs: Box<[u64]>,
    len: usize,
    /// The fill it keeps after a flush (0: no cache); it flushes above twice that.
    size: usize,
}

impl Cache {
    fn new(size: usize) -> Cache {
        Cache { objs: vec![0u64; size * 2 + 64].into_boxed_slice(), len: 0, size }
    }

    /// Takes at least `need` (when the ring has them) plus the cache's size from the ring.
    fn refill(&mut self, ring: &RawRing<u64>, need: usize) -> usize {
        let want = (need + self.size).min(self.objs.len() - self.len);
        loop {
            let got = ring.dequeue_burst(&mut self.objs[self.len..self.len + want]);
            // Slots a producer killed inside its enqueue held come back as tombstones: no buffer.
            let mut kept = 0;
            for i in self.len..self.len + got {
                if self.objs[i] != u64::TOMBSTONE {
                    self.objs[self.len + kept] = self.objs[i];
                    kept += 1;
                }
            }
            self.len += kept;
            if kept > 0 || got == 0 {
                return kept;
            }
        }
    }

    /// One offset, refilling first when empty.
    #[inline]
    fn pop(&mut self, ring: &RawRing<u64>) -> Option<u64> {
        if self.len == 0 && self.refill(ring, 1) == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.objs[self.len])
    }

    /// `n` offsets (at most the cache's capacity), or none when the ring cannot make them up;
    /// the most recently cached last.
    #[inline]
    fn take(&mut self, ring: &RawRing<u64>, n: usize) -> Option<&[u64]> {
        if self.len < n {
            self.refill(ring, n - self.len);
            if self.len < n {
                return None;
            }
        }
        self.len -= n;
        Some(&self.objs[self.len..self.len + n])
    }

    /// Caches `off`, flushing down to the cache's size when over twice that.
    #[inline]
    fn push(&mut self, ring: &RawRing<u64>, off: u64) {
        let mut spins = 0;
        while self.len == self.objs.len() {
            // Refused only while another handle's dequeue is being published: a moment.
            self.flush(ring, self.size);
            backoff(&mut spins);
        }
        self.objs[self.len] = off;
        self.len += 1;
        if self.len > self.size * 2 {
            self.flush(ring, self.size);
        }
    }

    /// Returns the cache's buffers beyond `keep` to the ring. The ring holds every buffer of the
    /// pool, so they fit; what a stale view of the consumer tail refuses stays cached (never
    /// dropped: a lost buffer is a leak no one sees) and goes at the next flush.
    fn flush(&mut self, ring: &RawRing<u64>, keep: usize) {
        if self.len > keep {
            let n = ring.enqueue_burst(&self.objs[keep..self.len]);
            self.objs.copy_within(keep + n..self.len, keep);
            self.len -= n;
        }
    }

    /// Returns everything to the ring, waiting a bounded while for a stale tail to move.
    fn drain(&mut self, ring: &RawRing<u64>) -> bool {
        let mut spins = 0;
        for _ in 0..1000 {
            self.flush(ring, 0);
            if self.len == 0 {
                return true;
            }
            backoff(&mut spins);
        }
        false
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        if !self.cache.drain(&self.ring) {
            tracing::warn!(pool = %self.name, left = self.cache.len, "mempool handle dropped with buffers it could not return");
        }
        if let Some(s) = self.slot.take() {
            // SAFETY: our claimed slot inside the mapping; atomics only. Emptied, then freed.
            let s = unsafe { s.as_ref() };
            s.len.store(0, Ordering::Relaxed);
            s.pid.store(0, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mem::ShmPlacement;

    fn shm() -> (tempfile::TempDir, Arc<Shm>) {
        let d = tempfile::tempdir().unwrap();
        let p = ShmPlacement { path: d.path().join("mem"), hugepages: false, page_size: 4096 };
        (d, Arc::new(Shm::create(p, 16).unwrap()))
    }

    #[test]
    fn alloc_until_empty_then_free_brings_them_back() {
        let (_d, shm) = shm();
        let mut p = Mempool::create(&shm, "p", 100, 2048, 8).unwrap();
        let mut v: Vec<Mbuf> = std::iter::from_fn(|| p.alloc()).collect();
        assert_eq!(v.len(), 100);
        assert!(p.alloc().is_none());
        let m = &mut v[0];
        assert!(m.copy_from(b"hello"));
        assert_eq!(m.data(), b"hello");
        assert_eq!(m.headroom(), HEADROOM as usize);
        assert!(!m.set_len(100_000));
        assert_eq!(m.data_iova().0, m.buf_iova().0 + HEADROOM as u64);
        for m in v.drain(..50) {
            p.free(m);
        }
        drop(v); // the rest through Drop, straight to the ring
        assert_eq!(p.avail_count(), 100);
    }

    /// A packet over three buffers: lengths, bytes in order, append into the last segment,
    /// the offset round trip (checked segment by segment), take_next, linearize, and every
    /// buffer back in the pool whichever way the chain is freed.
    #[test]
    fn a_chain_of_segments_keeps_its_bytes_and_frees_every_buffer() {
        let (_d, shm) = shm();
        let mut p = Mempool::create(&shm, "c", 16, 256, 4).unwrap();
        let mk = |p: &mut Mempool, fill: u8, n: usize| {
            let mut m = p.alloc().unwrap();
            assert!(m.copy_from(&vec![fill; n]));
            m
        };
        let mut head = mk(&mut p, 1, 200);
        head.chain(mk(&mut p, 2, 250)).unwrap();
        let mut tail = mk(&mut p, 3, 10);
        tail.append(5).unwrap().fill(4);
        head.chain(tail).unwrap();
        assert_eq!((head.nb_segs(), head.pkt_len(), head.len()), (3, 465, 200));
        head.append(6).unwrap().fill(5); // into the last segment
        let mut want = vec![1u8; 200];
        want.extend([2; 250].iter().chain(&[3; 10]).chain(&[4; 5]).chain(&[5; 6]));
        let lens: Vec<usize> = head.segments().map(<[u8]>::len).collect();
        assert_eq!(lens, [200, 250, 21]);
        let mut out = vec![0u8; 600];
        assert_eq!(head.copy_to(&mut out), Some(471));
        assert_eq!(&out[..471], &want[..]);
        assert_eq!(head.copy_to(&mut out[..470]), None);
        assert_eq!(p.avail_count(), 13);
        // Across processes as an offset: every segment checked; a broken count is refused.
        let off = head.into_offset();
        let hdr = shm.ptr(off, 64).unwrap().cast::<MbufHdr>();
        // SAFETY: the head's header, which nobody else uses in this test.
        unsafe { (*hdr.as_ptr()).nb_segs = 2 };
        assert!(Mbuf::from_offset(&shm, off).is_none(), "a chain longer than its head says");
        // SAFETY: as above.
        unsafe { (*hdr.as_ptr()).nb_segs = 3 };
        let mut head = Mbuf::from_offset(&shm, off).unwrap();
        let single = mk(&mut p, 7, 20);
        let single = p.linearize(single).unwrap(); // a single buffer: as it is
        assert_eq!(single.data(), &[7; 20][..]);
        p.free(single);
        // A packet over one buffer's room cannot be made one buffer: it comes back whole.
        head = p.linearize(head).unwrap_err();
        assert_eq!(head.pkt_len(), 471);
        let rest = head.take_next().unwrap();
        assert_eq!((head.nb_segs(), head.pkt_len()), (1, 200));
        assert_eq!((rest.nb_segs(), rest.pkt_len()), (2, 271));
        head.chain(rest).unwrap();
        drop(head); // through Drop: three buffers to the ring
        assert_eq!(p.avail_count(), 16);
        // Small enough for one buffer: linearized, bytes and metadata kept, the chain freed.
        let mut a = mk(&mut p, 9, 100);
        a.set_port(3);
        a.hdr_mut().rss_hash = 0xabcd;
        a.chain(mk(&mut p, 8, 100)).unwrap();
        let one = p.linearize(a).unwrap();
        assert_eq!((one.nb_segs(), one.len(), one.port(), one.hdr().rss_hash), (1, 200, 3, 0xabcd));
        assert_eq!(&one.data()[99..101], &[9, 8]);
        p.free(one);
        // Freed through the pool (its cache), and reset: every buffer back.
        let mut b = mk(&mut p, 1, 10);
        b.chain(mk(&mut p, 1, 10)).unwrap();
        b.chain(mk(&mut p, 1, 10)).unwrap();
        p.free(b);
        let mut c = mk(&mut p, 1, 10);
        c.chain(mk(&mut p, 1, 10)).unwrap();
        c.reset();
        assert_eq!((c.nb_segs(), c.pkt_len()), (1, 0));
        p.free(c);
        assert_eq!(p.avail_count(), 16);
    }

    #[test]
    fn bulk_allocation_is_all_or_nothing() {
        let (_d, shm) = shm();
        let mut p = Mempool::create(&shm, "b", 40, 256, 16).unwrap();
        let mut a: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        assert!(p.alloc_bulk(&mut a));
        let mut b: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        assert!(!p.alloc_bulk(&mut b));
        assert!(b.iter().all(Option::is_none));
        p.free_bulk(&mut a);
        assert!(p.alloc_bulk(&mut b));
    }

    #[test]
    fn a_buffer_survives_the_offset_round_trip_and_bad_offsets_are_refused() {
        let (_d, shm) = shm();
        let mut p = Mempool::create(&shm, "o", 4, 256, 0).unwrap();
        let mut m = p.alloc().unwrap();
        m.copy_from(&[7; 60]);
        let off = m.into_offset();
        let m2 = Mbuf::from_offset(&shm, off).unwrap();
        assert_eq!(m2.data(), &[7; 60][..]);
        assert!(Mbuf::from_offset(&shm, ShmOffset(off.0 + 64)).is_none());
        assert!(Mbuf::from_offset(&shm, ShmOffset(u64::MAX - 8)).is_none());
        drop(m2);
        let other = Mempool::lookup(&shm, "o", 0).unwrap();
        assert_eq!(other.avail_count(), 4);
    }

    #[test]
    fn bad_parameters_name_the_limit() {
        let (_d, shm) = shm();
        let e = Mempool::create(&shm, "x", 0, 2048, 0).err().unwrap();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = Mempool::create(&shm, "y", 10, 2048, 9999).err().unwrap();
        assert!(e.to_string().contains("512"), "{e}");
        assert!(matches!(Mempool::lookup(&shm, "nope", 0), Err(MbufError::Mem(_))));
    }

    #[test]
    fn caches_are_published_so_free_cached_and_in_use_add_up() {
        let (_d, shm) = shm();
        let mut a = Mempool::create(&shm, "c", 256, 2048, 16).unwrap();
        let mut b = Mempool::lookup(&shm, "c", 16).unwrap();
        let held: Vec<Mbuf> = (0..10).filter_map(|_| a.alloc()).collect();
        let x = b.alloc().unwrap();
        b.free(x);
        let cached = a.cached_count();
        assert!(cached > 0, "both caches hold buffers");
        assert_eq!(a.common_count() + cached + held.len() as u32, 256);
        assert_eq!(a.cache_handles(), 2);
        drop(b);
        assert_eq!(a.cache_handles(), 1, "a dropped handle frees its slot");
        assert_eq!(a.common_count() + a.cached_count() + held.len() as u32, 256, "its cache went back to the ring");
        // Slots run out: a handle beyond them works without a cache, so the figures stay exact.
        let many: Vec<Mempool> = (0..MAX_CACHES).map(|_| a.new_handle()).collect();
        assert_eq!(many.iter().filter(|h| h.cache_size() == 0).count(), 1);
        let mut last = many.into_iter().last().unwrap();
        let m = last.alloc().unwrap();
        last.free(m);
        assert_eq!(a.common_count() + a.cached_count() + held.len() as u32, 256);
    }
}

/// loom over the pool's own code: two handles' caches refilling from and flushing to one ring, and
/// two handles claiming cache slots at once (`RUSTFLAGS="--cfg loom" cargo test -p lab-core
/// --release --lib loom`, run by `ci/run.sh`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::ring::{loom_model, HeapRing};
    use loom::sync::Arc as LArc;

    /// Drains `n` offsets from the ring, yielding while a publish is pending.
    fn take_all(r: &RawRing<u64>, n: usize) -> Vec<u64> {
        let mut got = vec![0u64; n];
        let mut have = 0;
        let mut spins = 0;
        while have < n {
            let k = r.dequeue_burst(&mut got[have..]);
            have += k;
            if k == 0 {
                backoff(&mut spins);
            }
        }
        got
    }

    /// What a handle does on a burst: a bulk allocation (refill), the buffers freed back one by
    /// one (flush past twice the cache size), then its drop (drain).
    fn burst_and_drop(r: &RawRing<u64>) -> usize {
        let mut c = Cache::new(1);
        let got: Vec<u64> = c.take(r, 2).map(<[u64]>::to_vec).unwrap_or_default();
        for off in &got {
            c.push(r, *off);
        }
        assert!(c.drain(r), "a drop returns every cached buffer");
        got.len()
    }

    #[test]
    fn loom_two_caches_refilling_and_flushing_lose_and_duplicate_no_buffer() {
        loom_model(|| {
            let r = LArc::new(HeapRing::<u64>::new(8, RingFlags::MPMC, u32::MAX - 2));
            assert!(r.raw.enqueue_bulk(&[64, 128, 192, 256]));
            let other = {
                let r = r.clone();
                loom::thread::spawn(move || burst_and_drop(&r.raw))
            };
            let mine = burst_and_drop(&r.raw);
            let theirs = other.join().unwrap();
            assert!(mine + theirs >= 2, "at least one burst found its two buffers ({mine}, {theirs})");
            let mut all = take_all(&r.raw, 4);
            all.sort();
            assert_eq!(all, [64, 128, 192, 256]);
            assert_eq!(r.raw.count(), 0, "no buffer came back twice");
        });
    }

    /// Heap cache slots shared by the model's threads.
    struct Slots(Box<[CacheSlot]>);
    // SAFETY: CacheSlot holds atomics only.
    unsafe impl Send for Slots {}
    // SAFETY: as above.
    unsafe impl Sync for Slots {}

    impl Slots {
        fn new(n: usize) -> Slots {
            Slots((0..n).map(|_| CacheSlot { pid: AtomicU32::new(0), len: AtomicU32::new(0) }).collect())
        }
        fn ptrs(&self) -> Vec<NonNull<CacheSlot>> {
            self.0.iter().map(NonNull::from).collect()
        }
        fn index(&self, p: NonNull<CacheSlot>) -> usize {
            self.0.iter().position(|s| std::ptr::eq(s, p.as_ptr())).expect("a slot of this pool")
        }
    }

    #[test]
    fn loom_two_handles_never_share_a_cache_slot() {
        loom_model(|| {
            let s = LArc::new(Slots::new(2));
            let other = {
                let s = s.clone();
                loom::thread::spawn(move || Mempool::claim(&s.ptrs()).map(|p| s.index(p)))
            };
            let mine = Mempool::claim(&s.ptrs()).map(|p| s.index(p));
            let theirs = other.join().unwrap();
            assert!(mine.is_some() && theirs.is_some(), "two free slots, two handles: both get one");
            assert_ne!(mine, theirs, "one slot given to two handles");
            assert!(Mempool::claim(&s.ptrs()).is_none(), "both slots are taken");
        });
    }

    #[test]
    fn loom_a_slot_is_given_once_and_again_after_its_release() {
        loom_model(|| {
            let s = LArc::new(Slots::new(1));
            let other = {
                let s = s.clone();
                loom::thread::spawn(move || {
                    let got = Mempool::claim(&s.ptrs());
                    if let Some(p) = got {
                        // SAFETY: a slot of the heap table, atomics only; released as Drop does.
                        let p = unsafe { p.as_ref() };
                        p.len.store(0, Ordering::Relaxed);
                        p.pid.store(0, Ordering::Release);
                    }
                    got.is_some()
                })
            };
            let mine = Mempool::claim(&s.ptrs()).is_some();
            let theirs = other.join().unwrap();
            assert!(mine || theirs, "a free slot went to nobody");
            if mine {
                assert!(Mempool::claim(&s.ptrs()).is_none(), "a held slot was given again");
            } else {
                assert!(Mempool::claim(&s.ptrs()).is_some(), "a released slot is free again");
            }
        });
    }
}
