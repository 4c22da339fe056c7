//! A lock-free ring in shared memory, the analogue of DPDK's `rte_ring`.
//!
//! Layout in a memzone: [`RingHdr`] (name, size, element size, flags), then the producer and the
//! consumer head/tail pairs, each on its own cache line, then `size` slots of the element type.
//! Indices are free-running `u32`s (wrapping), masked on access. Producers reserve slots by moving
//! the producer head (a CAS when multi-producer), copy their elements, then publish by moving the
//! tail once every earlier producer has published; consumers mirror that. Works between processes
//! because it holds no pointers, only indices into its own slots.
//!
//! A process killed between its head move and its tail publish would wedge every later producer
//! (or consumer) for good: they wait for the tail to reach their own head. DPDK's ring has that
//! hazard; ours recovers from it. Every thread records the operation it has in flight (side, head,
//! count) in a lane of the ring's header (one 64-byte line per thread, claimed on first use, taken
//! over when its thread has died). A waiter that has waited long looks at the lanes: when the
//! range it waits behind belongs to a thread that no longer exists, it publishes that range itself,
//! a producer's slots holding [`RingElem::TOMBSTONE`] (what the dead producer wrote, if anything,
//! is not trusted), and consumers skip tombstones. What the dead thread held is lost (a leak, not
//! a wedge). Threads beyond the lanes run unrecorded and counted, which limits the recovery to
//! ranges whose owner is certain.
//!
//! The head/tail pairs are padded by our own `#[repr(C, align(64))]` `HeadTail`, not by
//! `crossbeam_utils::CachePadded`: the header lives in a file other processes map, so its layout
//! must be fixed and checked (`repr(C)`, size and offset asserts below), which `CachePadded` does
//! not promise; and on x86_64 it pads to 128 bytes, more than the memzone alignment every ring is
//! placed at. Process-local padding (the mempool's per-handle counters, if ever shared between
//! threads) is where `CachePadded` belongs.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::sync::{backoff, fence, AtomicU32, AtomicU64, Ordering};

use crate::mem::{MemError, Shm, ShmOffset};

/// Plain data that may live in a shared ring: `Copy`, no pointers, no padding with meaning.
///
/// # Safety
/// Implementors must be valid for any bit pattern and must not contain references or pointers
/// (a value is read by another process with another address space).
pub unsafe trait RingElem: Copy + Send + PartialEq + 'static {
    /// What a slot holds when a producer died holding it: consumers must skip it (never a value
    /// a producer enqueues).
    const TOMBSTONE: Self;
}
// SAFETY: integers are valid for every bit pattern and hold no pointers.
unsafe impl RingElem for u64 {
    const TOMBSTONE: u64 = u64::MAX;
}
// SAFETY: as above.
unsafe impl RingElem for u32 {
    const TOMBSTONE: u32 = u32::MAX;
}
// SAFETY: byte arrays are valid for every bit pattern.
unsafe impl<const N: usize> RingElem for [u8; N] {
    const TOMBSTONE: [u8; N] = [0xff; N];
}

/// Ring flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFlags {
    /// Single producer: enqueue does not CAS.
    pub single_producer: bool,
    /// Single consumer: dequeue does not CAS.
    pub single_consumer: bool,
}

impl RingFlags {
    /// Multi-producer, multi-consumer.
    pub const MPMC: RingFlags = RingFlags { single_producer: false, single_consumer: false };
    /// Single-producer, single-consumer.
    pub const SPSC: RingFlags = RingFlags { single_producer: true, single_consumer: true };
}

#[repr(C, align(64))]
struct HeadTail {
    head: AtomicU32,
    tail: AtomicU32,
}
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<HeadTail>() == 64);

/// Threads whose ring operations are recorded, per ring (loom: few, its state space is small).
#[cfg(not(loom))]
pub const LANES: usize = 32;
/// Threads whose ring operations are recorded, per ring (loom: few, its state space is small).
#[cfg(loom)]
pub const LANES: usize = 3;

/// One thread's record of its operation in flight on a ring, on a cache line of its own.
#[repr(C, align(64))]
struct Lane {
    /// Thread id (`gettid`) of the thread the lane is claimed by; 0: free.
    owner: AtomicU32,
    /// `head << 32 | n << 3 | phase`: [`IDLE`], or trying / holding `[head, head + n)` on a side.
    rec: AtomicU64,
}
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Lane>() == 64);

#[cfg(all(test, loom))]
impl Lane {
    fn new() -> Lane {
        Lane { owner: AtomicU32::new(0), rec: AtomicU64::new(IDLE) }
    }
}

/// A lane's record when no operation is in flight.
const IDLE: u64 = 0;
/// Operations this long or longer are not recorded (`n` has 29 bits in a record).
const MAX_RECORDED: u32 = 1 << 29;

/// The producer or the consumer side of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Prod,
    Cons,
}

impl Side {
    /// The phase of a record: trying (the head move may fail) or holding a reserved range.
    fn phase(self, holds: bool) -> u64 {
        match (self, holds) {
            (Side::Prod, false) => 1,
            (Side::Prod, true) => 2,
            (Side::Cons, false) => 3,
            (Side::Cons, true) => 4,
        }
    }
}

fn record(head: u32, n: u32, phase: u64) -> u64 {
    u64::from(head) << 32 | u64::from(n) << 3 | phase
}

fn unrecord(r: u64) -> (u32, u32, u64) {
    ((r >> 32) as u32, ((r >> 3) as u32) & (MAX_RECORDED - 1), r & 7)
}

/// The ring's header in shared memory.
#[repr(C, align(64))]
pub struct RingHdr {
    magic: u32,
    size: u32,
    mask: u32,
    esize: u32,
    flags: u32,
    /// Operations in flight by threads that found no lane (or too long to record).
    unrecorded: AtomicU32,
    _pad: [u32; 10],
    prod: HeadTail,
    cons: HeadTail,
    lanes: [Lane; LANES],
}

const RING_MAGIC: u32 = 0x5249_4e48;
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingHdr>() == 192 + 64 * LANES);
#[cfg(not(loom))]
const _: () = assert!(std::mem::offset_of!(RingHdr, prod) == 64 && std::mem::offset_of!(RingHdr, cons) == 128);

/// A slot: the element itself in shared memory; under loom, a cell loom tracks, so a read that
/// races a write (a tail published too early) is reported.
#[cfg(not(loom))]
type Slot<T> = T;
#[cfg(loom)]
type Slot<T> = loom::cell::UnsafeCell<T>;

/// Errors creating or finding a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// Count not a power of two or out of range.
    #[error("ring {name:?}: count {count} must be a power of two in 2..=2^30")]
    BadCount {
        /// Ring name.
        name: String,
        /// Count asked.
        count: u32,
    },
    /// The zone exists but does not hold a ring of this element type.
    #[error("ring {name:?}: zone holds no ring of {esize}-byte elements")]
    NotARing {
        /// Ring name.
        name: String,
        /// Element size expected.
        esize: usize,
    },
    /// Memory layer failure.
    #[error(transparent)]
    Mem(#[from] MemError),
}

/// A process-local handle on a shared ring of `T`; keeps the mapping's owner alive.
pub struct Ring<T: RingElem> {
    _shm: Arc<Shm>,
    raw: RawRing<T>,
}

impl<T: RingElem> std::ops::Deref for Ring<T> {
    type Target = RawRing<T>;
    fn deref(&self) -> &RawRing<T> {
        &self.raw
    }
}

/// The ring operations on a header inside a mapping that is never unmapped (see `mem`).
pub struct RawRing<T: RingElem> {
    hdr: NonNull<RingHdr>,
    slots: NonNull<Slot<T>>,
    mask: u32,
    size: u32,
    sp: bool,
    sc: bool,
    _t: PhantomData<T>,
}

// SAFETY: the ring is designed for concurrent use from many threads and processes: all shared
// state is accessed through atomics, slots are written only between a successful head move and
// the tail publish; T is Send.
unsafe impl<T: RingElem> Send for RawRing<T> {}
// SAFETY: as above.
unsafe impl<T: RingElem> Sync for RawRing<T> {}

impl<T: RingElem> Clone for RawRing<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: RingElem> Copy for RawRing<T> {}

impl<T: RingElem> Clone for Ring<T> {
    fn clone(&self) -> Self {
        Ring { _shm: self._shm.clone(), raw: self.raw }
    }
}

impl<T: RingElem> Ring<T> {
    /// Bytes of shared memory a ring of `count` elements takes.
    pub fn mem_size(count: u32) -> u64 {
        std::mem::size_of::<RingHdr>() as u64 + count as u64 * std::mem::size_of::<T>() as u64
    }

    /// Creates a ring of `count` slots (a power of two) in a new memzone `name`.
    pub fn create(shm: &Arc<Shm>, name: &str, count: u32, flags: RingFlags) -> Result<Ring<T>, RingError> {
        if !count.is_power_of_two() || !(2..=1 << 30).contains(&count) {
            return Err(RingError::BadCount { name: name.into(), count });
        }
        let z = shm.reserve(name, Self::mem_size(count), 64)?;
        Self::init_at(shm, z.offset, count, flags);
        Self::attach(shm, name, z.offset)
    }

    /// Writes a ring header at `off` (memory must be zeroed and `mem_size(count)` long).
    pub fn init_at(shm: &Arc<Shm>, off: ShmOffset, count: u32, flags: RingFlags) {
        let p = shm.ptr(off, Self::mem_size(count)).expect("ring memory inside the mapping");
        // SAFETY: the caller reserved mem_size(count) zeroed bytes at off, 64-byte aligned, and
        // nobody else uses them before this header is written.
        unsafe {
            let h = p.as_ptr().cast::<RingHdr>();
            // Head/tail pairs, lanes and the unrecorded count start at zero, whatever the zone held.
            std::ptr::write_bytes(h.cast::<u8>().add(64), 0, std::mem::size_of::<RingHdr>() - 64);
            std::ptr::addr_of_mut!((*h).unrecorded).write(AtomicU32::new(0));
            (*h).size = count;
            (*h).mask = count - 1;
            (*h).esize = std::mem::size_of::<T>() as u32;
            (*h).flags = flags.single_producer as u32 | (flags.single_consumer as u32) << 1;
            fence(Ordering::Release);
            (*h).magic = RING_MAGIC;
        }
    }

    /// Finds the ring in memzone `name`.
    pub fn lookup(shm: &Arc<Shm>, name: &str) -> Result<Ring<T>, RingError> {
        let z = shm.lookup(name)?;
        Self::attach(shm, name, z.offset)
    }

    /// Attaches to a ring whose header is at `off`.
    pub fn attach(shm: &Arc<Shm>, name: &str, off: ShmOffset) -> Result<Ring<T>, RingError> {
        let not = || RingError::NotARing { name: name.into(), esize: std::mem::size_of::<T>() };
        let hp = shm.ptr(off, std::mem::size_of::<RingHdr>() as u64).ok_or_else(not)?;
        // SAFETY: hp points at RingHdr-sized memory inside the mapping; the fields we read here are
        // written once before `magic` and never change.
        let (magic, size, esize, _flags) = unsafe {
            let h = hp.as_ptr().cast::<RingHdr>();
            ((*h).magic, (*h).size, (*h).esize, (*h).flags)
        };
        if magic != RING_MAGIC || esize as usize != std::mem::size_of::<T>() || !size.is_power_of_two() {
            return Err(not());
        }
        shm.ptr(off, Self::mem_size(size)).ok_or_else(not)?;
        // SAFETY: the header was validated above and the whole ring lies inside the mapping.
        let raw = unsafe { RawRing::from_hdr(hp.cast()) };
        Ok(Ring { _shm: shm.clone(), raw })
    }
}

impl<T: RingElem> RawRing<T> {
    /// A handle on an initialised ring header.
    ///
    /// # Safety
    /// `hdr` must point at a ring of `T` written by `Ring::init_at` (or `create`), whose header and
    /// slots lie inside a mapping that stays mapped for the life of the process.
    pub unsafe fn from_hdr(hdr: NonNull<RingHdr>) -> RawRing<T> {
        // SAFETY: the caller guarantees a valid, initialised header.
        let (size, flags) = unsafe { ((*hdr.as_ptr()).size, (*hdr.as_ptr()).flags) };
        // SAFETY: slots follow the header inside the same allocation.
        let slots = unsafe { hdr.as_ptr().cast::<u8>().add(std::mem::size_of::<RingHdr>()) }.cast::<Slot<T>>();
        RawRing {
            hdr,
            // SAFETY: derived from a non-null pointer by a small in-bounds offset.
            slots: unsafe { NonNull::new_unchecked(slots) },
            mask: size - 1,
            size,
            sp: flags & 1 != 0,
            sc: flags & 2 != 0,
            _t: PhantomData,
        }
    }

    /// Writes slot `idx`.
    ///
    /// # Safety
    /// `idx < size`, and the slot is reserved to this caller (between its head move and its
    /// tail publish).
    #[inline]
    unsafe fn put(&self, idx: usize, v: T) {
        // SAFETY: the caller guarantees idx is in bounds and the slot is ours.
        let s = unsafe { self.slots.as_ptr().add(idx) };
        #[cfg(not(loom))]
        // SAFETY: as above.
        unsafe {
            s.write(v)
        };
        #[cfg(loom)]
        // SAFETY: as above.
        unsafe {
            (*s).with_mut(|p| p.write(v))
        };
    }

    /// Reads slot `idx`.
    ///
    /// # Safety
    /// `idx < size`, and the slot was published to this caller (acquired through the producer
    /// tail) and reserved by its consumer head move.
    #[inline]
    unsafe fn get(&self, idx: usize) -> T {
        // SAFETY: the caller guarantees idx is in bounds and the slot is published and ours.
        let s = unsafe { self.slots.as_ptr().add(idx) };
        #[cfg(not(loom))]
        // SAFETY: as above.
        return unsafe { s.read() };
        #[cfg(loom)]
        // SAFETY: as above.
        return unsafe { (*s).with(|p| p.read()) };
    }

    pub(crate) fn h(&self) -> &RingHdr {
        // SAFETY: hdr points at a live RingHdr inside a mapping that is never unmapped.
        unsafe { self.hdr.as_ref() }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.size
    }

    /// Elements currently in the ring.
    pub fn count(&self) -> u32 {
        let h = self.h();
        h.prod.tail.load(Ordering::Acquire).wrapping_sub(h.cons.tail.load(Ordering::Acquire)).min(self.size)
    }

    /// Free slots.
    pub fn free_count(&self) -> u32 {
        self.size - self.count()
    }

    /// Enqueues all of `objs` or none.
    pub fn enqueue_bulk(&self, objs: &[T]) -> bool {
        self.enqueue::<false>(objs, true, &Who::me()) == objs.len()
    }

    /// Enqueues as many of `objs` as fit; returns how many.
    pub fn enqueue_burst(&self, objs: &[T]) -> usize {
        self.enqueue::<false>(objs, false, &Who::me())
    }

    /// Dequeues exactly `out.len()` elements or none.
    pub fn dequeue_bulk(&self, out: &mut [T]) -> bool {
        let n = out.len();
        self.dequeue::<false>(out, true, &Who::me()) == n
    }

    /// Dequeues up to `out.len()` elements; returns how many.
    pub fn dequeue_burst(&self, out: &mut [T]) -> usize {
        self.dequeue::<false>(out, false, &Who::me())
    }

    /// What a producer killed inside an enqueue leaves behind, for tests of the recovery: reserves
    /// room for `objs`, writes half of them and returns without publishing. The caller's thread
    /// must end (be killed) next; the ring waits for it until it does.
    #[doc(hidden)]
    pub fn abandon_enqueue(&self, objs: &[T]) -> usize {
        self.enqueue::<true>(objs, true, &Who::me())
    }

    /// What a consumer killed inside a dequeue leaves behind (see [`RawRing::abandon_enqueue`]).
    #[doc(hidden)]
    pub fn abandon_dequeue(&self, out: &mut [T]) -> usize {
        self.dequeue::<true>(out, true, &Who::me())
    }

    fn side(&self, side: Side) -> &HeadTail {
        match side {
            Side::Prod => &self.h().prod,
            Side::Cons => &self.h().cons,
        }
    }

    /// The lane of thread `me`: the first one along its probe sequence that it already holds
    /// (idle) or that is free. Lanes are only ever taken over from dead threads, never freed, so a
    /// thread finds its own lane again at the same place.
    #[inline]
    fn lane(&self, who: &Who<'_>) -> Option<&Lane> {
        let lanes = &self.h().lanes;
        let home = who.id as usize % LANES;
        for k in 0..LANES {
            let l = &lanes[(home + k) % LANES];
            let o = l.owner.load(Ordering::Relaxed);
            // Our own id on a lane with a record in flight: a dead thread's whose id we reuse;
            // that record is someone's way out of a wedge, so leave it.
            if o == who.id && l.rec.load(Ordering::Relaxed) == IDLE {
                return Some(l);
            }
            if o == 0 && l.owner.compare_exchange(0, who.id, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                return Some(l);
            }
        }
        self.take_over_lane(who)
    }

    /// Claims an idle lane whose thread has died (all lanes taken: a cold path, a syscall a lane).
    #[cold]
    fn take_over_lane(&self, who: &Who<'_>) -> Option<&Lane> {
        self.h().lanes.iter().find(|l| {
            let o = l.owner.load(Ordering::Relaxed);
            o != who.id
                && l.rec.load(Ordering::Acquire) == IDLE
                && !(who.alive)(o)
                && l.owner.compare_exchange(o, who.id, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        })
    }

    /// Starts recording an operation of `want` elements: a lane, or the unrecorded count.
    #[inline]
    fn begin(&self, want: u32, who: &Who<'_>) -> Held<'_> {
        match self.lane(who).filter(|_| want < MAX_RECORDED) {
            Some(l) => Held::Lane(l),
            None => {
                self.h().unrecorded.fetch_add(1, Ordering::AcqRel);
                Held::Unrecorded(&self.h().unrecorded)
            }
        }
    }

    /// Reserves up to `want` slots on `side` (exactly `want` when `fixed`) by moving its head;
    /// returns the range's first index, its length and its record, or None when there is no
    /// room (producers) or nothing (consumers). A lane is taken only once there is work.
    #[inline]
    fn reserve(&self, side: Side, want: u32, fixed: bool, who: &Who<'_>) -> Option<(u32, u32, Held<'_>)> {
        let h = self.h();
        let (mine, single) = match side {
            Side::Prod => (&h.prod, self.sp),
            Side::Cons => (&h.cons, self.sc),
        };
        let mut held: Option<Held<'_>> = None;
        // Acquire on the head (and AcqRel on its CAS): the other side's tail read next is then at
        // least as new as the one the previous head mover saw. With Relaxed, a producer that lost
        // the CAS to one that had just dequeued and re-enqueued could read an older consumer tail
        // and find the ring full when it is not (loom found it: a mempool flush refused).
        let mut head = mine.head.load(Ordering::Acquire);
        loop {
            let room = match side {
                Side::Prod => self.size.wrapping_sub(head.wrapping_sub(h.cons.tail.load(Ordering::Acquire))),
                Side::Cons => h.prod.tail.load(Ordering::Acquire).wrapping_sub(head),
            };
            let n = if want <= room {
                want
            } else if fixed {
                0
            } else {
                room
            };
            if n == 0 {
                if let Some(held) = held {
                    held.done();
                }
                return None;
            }
            // Recorded before the head move, which releases it: whoever moves the head after us
            // (a waiter behind us) sees whose range it waits for.
            let rec = held.get_or_insert_with(|| self.begin(want, who));
            rec.note(record(head, n, side.phase(false)));
            let next = head.wrapping_add(n);
            if single {
                mine.head.store(next, Ordering::Release);
            } else if let Err(cur) = mine.head.compare_exchange_weak(head, next, Ordering::AcqRel, Ordering::Acquire) {
                head = cur;
                continue;
            }
            let held = held?;
            held.note(record(head, n, side.phase(true)));
            return Some((head, n, held));
        }
    }

    #[inline]
    fn enqueue<const ABANDON: bool>(&self, objs: &[T], fixed: bool, who: &Who<'_>) -> usize {
        let want = objs.len().min(self.size as usize) as u32;
        if want == 0 || (fixed && want as usize != objs.len()) {
            return 0;
        }
        let Some((head, n, held)) = self.reserve(Side::Prod, want, fixed, who) else {
            return 0;
        };
        let written = if ABANDON { n / 2 } else { n };
        for (i, o) in objs[..written as usize].iter().enumerate() {
            let idx = (head.wrapping_add(i as u32) & self.mask) as usize;
            // SAFETY: idx < size; the slots [head, head+n) were reserved by the head move above and
            // no consumer reads them before the tail is published below.
            unsafe { self.put(idx, *o) };
        }
        if ABANDON {
            return n as usize;
        }
        self.publish(Side::Prod, head, n, who);
        held.done();
        n as usize
    }

    #[inline]
    fn dequeue<const ABANDON: bool>(&self, out: &mut [T], fixed: bool, who: &Who<'_>) -> usize {
        let want = out.len().min(self.size as usize) as u32;
        if want == 0 || (fixed && want as usize != out.len()) {
            return 0;
        }
        let Some((head, n, held)) = self.reserve(Side::Cons, want, fixed, who) else {
            return 0;
        };
        let read = if ABANDON { n / 2 } else { n };
        for (i, o) in out[..read as usize].iter_mut().enumerate() {
            let idx = (head.wrapping_add(i as u32) & self.mask) as usize;
            // SAFETY: idx < size; [head, head+n) was published by producers (acquire on prod.tail)
            // and reserved for us by the consumer head move.
            *o = unsafe { self.get(idx) };
        }
        if ABANDON {
            return n as usize;
        }
        self.publish(Side::Cons, head, n, who);
        held.done();
        n as usize
    }

    /// Publishes `[head, head + n)` on `side` once every earlier range is: waits for the tail to
    /// reach `head`, and when that takes long, looks for a dead owner of the range in the way.
    /// Acquire on the tail: our release below must carry the earlier ranges' slot accesses too,
    /// or a consumer acquiring our tail could read their slots before their writes (loom found it
    /// with Relaxed here), and a producer could overwrite a slot still being read.
    #[inline]
    fn publish(&self, side: Side, head: u32, n: u32, who: &Who<'_>) {
        let ht = self.side(side);
        let mut spins = 0u32;
        while ht.tail.load(Ordering::Acquire) != head {
            backoff(&mut spins);
            if spins.is_multiple_of(who.rescue_every) {
                self.rescue(side, who);
            }
        }
        ht.tail.store(head.wrapping_add(n), Ordering::Release);
    }

    /// Publishes the range the tail of `side` stops at when its owner has died; true if it did.
    /// The owner is the thread whose lane records that range; it is certain when it recorded
    /// holding it, or when every thread that recorded trying for it is dead, agrees on its length
    /// and no unrecorded operation is in flight. A live candidate (maybe only slow): no rescue.
    #[cold]
    fn rescue(&self, side: Side, who: &Who<'_>) -> bool {
        let h = self.h();
        let ht = self.side(side);
        let t = ht.tail.load(Ordering::Acquire);
        let mut held: Option<(&Lane, u64)> = None;
        let mut tried: Option<(&Lane, u64)> = None;
        let mut agree = true;
        for l in &h.lanes {
            let r = l.rec.load(Ordering::Acquire);
            let (head, n, phase) = unrecord(r);
            if head != t || (phase != side.phase(false) && phase != side.phase(true)) {
                continue;
            }
            let o = l.owner.load(Ordering::Relaxed);
            if o == who.id || (who.alive)(o) {
                return false;
            }
            if phase == side.phase(true) {
                held = Some((l, r));
            } else if let Some((_, r0)) = tried {
                agree &= unrecord(r0).1 == n;
            } else {
                tried = Some((l, r));
            }
        }
        let certain = held.or(tried.filter(|_| agree && h.unrecorded.load(Ordering::Acquire) == 0));
        let Some((lane, r)) = certain else {
            return false;
        };
        // One rescuer: the one that takes the record.
        if lane.rec.compare_exchange(r, IDLE, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        let (_, n, _) = unrecord(r);
        if side == Side::Prod {
            for i in 0..n {
                // SAFETY: idx < size; [t, t+n) was reserved by the dead producer, whose writes
                // are over (its death was seen), and is ours now that we took its record.
                unsafe { self.put((t.wrapping_add(i) & self.mask) as usize, T::TOMBSTONE) };
            }
        }
        let ok = ht.tail.compare_exchange(t, t.wrapping_add(n), Ordering::AcqRel, Ordering::Relaxed).is_ok();
        tracing::warn!(
            side = ?side,
            at = t,
            n,
            owner = lane.owner.load(Ordering::Relaxed),
            ok,
            "ring: published the range of a thread that died inside a ring operation"
        );
        ok
    }
}

/// An operation's record: a lane of its thread, or the ring's unrecorded count.
enum Held<'r> {
    Lane(&'r Lane),
    Unrecorded(&'r AtomicU32),
}

impl Held<'_> {
    #[inline]
    fn note(&self, r: u64) {
        if let Held::Lane(l) = self {
            l.rec.store(r, Ordering::Relaxed);
        }
    }

    #[inline]
    fn done(self) {
        match self {
            Held::Lane(l) => l.rec.store(IDLE, Ordering::Release),
            Held::Unrecorded(c) => {
                c.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// The thread doing a ring operation: its id (lanes are claimed by it), how to tell whether a
/// lane's thread still lives, and how often (in waiting turns) a waiter looks for a dead owner.
pub(crate) struct Who<'a> {
    pub(crate) id: u32,
    pub(crate) alive: &'a dyn Fn(u32) -> bool,
    pub(crate) rescue_every: u32,
}

/// Bumped in a child after `fork`, whose threads' cached ids are their parents'.
#[cfg(not(loom))]
static FORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[cfg(not(loom))]
extern "C" fn forked_child() {
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(loom))]
static THREAD_ALIVE: fn(u32) -> bool = crate::sys::pid_alive;

impl Who<'static> {
    /// The calling thread (its `gettid`, cached; again after a fork).
    #[cfg(not(loom))]
    #[inline]
    fn me() -> Who<'static> {
        use std::cell::Cell;
        thread_local! {
            static ME: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
        }
        let forks = FORKS.load(std::sync::atomic::Ordering::Relaxed);
        let id = ME.with(|c| match c.get() {
            (id, f) if id != 0 && f == forks => id,
            _ => {
                static HOOK: std::sync::Once = std::sync::Once::new();
                HOOK.call_once(|| {
                    // SAFETY: registers a child handler that only bumps an atomic
                    // (async-signal-safe); no prepare or parent handler.
                    unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
                });
                let id = crate::sys::gettid();
                c.set((id, FORKS.load(std::sync::atomic::Ordering::Relaxed)));
                id
            }
        });
        Who { id, alive: &THREAD_ALIVE, rescue_every: 1 << 12 }
    }

    /// Under loom: loom's thread index, every thread alive (the recovery has tests of its own).
    #[cfg(loom)]
    fn me() -> Who<'static> {
        let id = format!("{:?}", loom::thread::current().id());
        let id: u32 = id.trim_start_matches("ThreadId(").trim_end_matches(')').parse().expect("loom thread id");
        static ALWAYS: fn(u32) -> bool = |_| true;
        Who { id: id + 1, alive: &ALWAYS, rescue_every: u32::MAX }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mem::ShmPlacement;

    fn shm() -> (tempfile::TempDir, Arc<Shm>) {
        let d = tempfile::tempdir().unwrap();
        let p = ShmPlacement { path: d.path().join("mem"), hugepages: false, page_size: 4096 };
        (d, Arc::new(Shm::create(p, 8).unwrap()))
    }

    #[test]
    fn bulk_is_all_or_nothing_and_burst_takes_what_fits() {
        let (_d, shm) = shm();
        let r = Ring::<u64>::create(&shm, "r", 8, RingFlags::SPSC).unwrap();
        assert!(r.enqueue_bulk(&[1, 2, 3, 4, 5, 6]));
        assert!(!r.enqueue_bulk(&[7, 8, 9]));
        assert_eq!(r.enqueue_burst(&[7, 8, 9]), 2);
        assert_eq!(r.count(), 8);
        let mut out = [0u64; 10];
        assert!(!r.dequeue_bulk(&mut out));
        assert_eq!(r.dequeue_burst(&mut out), 8);
        assert_eq!(&out[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(r.dequeue_burst(&mut out), 0);
    }

    #[test]
    fn indices_wrap_around_u32() {
        let (_d, shm) = shm();
        let r = Ring::<u32>::create(&shm, "w", 4, RingFlags::SPSC).unwrap();
        // Move all indices near u32::MAX.
        for p in [&r.h().prod, &r.h().cons] {
            p.head.store(u32::MAX - 2, Ordering::Relaxed);
            p.tail.store(u32::MAX - 2, Ordering::Relaxed);
        }
        let mut out = [0u32; 4];
        for round in 0..10u32 {
            assert!(r.enqueue_bulk(&[round, round + 1, round + 2]));
            assert!(r.dequeue_bulk(&mut out[..3]));
            assert_eq!(&out[..3], &[round, round + 1, round + 2]);
        }
    }

    #[test]
    fn lookup_checks_the_element_size() {
        let (_d, shm) = shm();
        Ring::<u64>::create(&shm, "e", 16, RingFlags::MPMC).unwrap();
        assert!(Ring::<u64>::lookup(&shm, "e").is_ok());
        assert!(matches!(Ring::<u32>::lookup(&shm, "e"), Err(RingError::NotARing { .. })));
        assert!(matches!(Ring::<u64>::create(&shm, "bad", 12, RingFlags::MPMC), Err(RingError::BadCount { .. })));
    }

    /// Threads that end inside an enqueue and a dequeue (what a SIGKILL leaves) wedge nobody: the
    /// next producer and consumer publish the dead ranges (a producer's as tombstones) and go on.
    #[test]
    fn a_thread_that_ends_inside_an_operation_wedges_no_later_one() {
        let (_d, shm) = shm();
        let r = Ring::<u64>::create(&shm, "d", 16, RingFlags::MPMC).unwrap();
        let raw = *r;
        assert_eq!(std::thread::spawn(move || raw.abandon_enqueue(&[1, 2, 3, 4])).join().unwrap(), 4);
        assert!(r.enqueue_bulk(&[5, 6]), "the producer behind the dead one publishes");
        let mut out = [0u64; 6];
        assert!(r.dequeue_bulk(&mut out));
        let t = u64::TOMBSTONE;
        assert_eq!(out, [t, t, t, t, 5, 6], "the dead range holds tombstones, not its half-written values");
        assert!(r.enqueue_bulk(&[7, 8, 9]));
        let mut two = [0u64; 2];
        assert_eq!(std::thread::spawn(move || raw.abandon_dequeue(&mut two)).join().unwrap(), 2);
        let mut one = [0u64; 1];
        assert!(r.dequeue_bulk(&mut one), "the consumer behind the dead one publishes");
        assert_eq!(one, [9]);
        assert_eq!(r.count(), 0);
        // The dead threads' lanes are idle again; the ring goes on as before.
        assert!(r.enqueue_bulk(&[10]));
        assert!(r.dequeue_bulk(&mut one));
        assert_eq!(one, [10]);
    }

    #[test]
    fn many_producers_and_consumers_lose_and_duplicate_nothing() {
        let (_d, shm) = shm();
        let r = Ring::<u64>::create(&shm, "m", 64, RingFlags::MPMC).unwrap();
        let per = 20_000u64;
        let prods: Vec<_> = (0..2u64)
            .map(|p| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut i = 0;
                    while i < per {
                        let v = [p * per + i, p * per + i + 1];
                        if r.enqueue_bulk(&v) {
                            i += 2;
                        }
                    }
                })
            })
            .collect();
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cons: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                let total = total.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u64; 7];
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    while total.load(Ordering::Relaxed) < 2 * per && std::time::Instant::now() < deadline {
                        let n = r.dequeue_burst(&mut buf);
                        total.fetch_add(n as u64, Ordering::Relaxed);
                        got.extend_from_slice(&buf[..n]);
                    }
                    got
                })
            })
            .collect();
        for p in prods {
            p.join().unwrap();
        }
        let mut all: Vec<u64> = cons.into_iter().flat_map(|c| c.join().unwrap()).collect();
        let mut buf = [0u64; 64];
        loop {
            let n = r.dequeue_burst(&mut buf);
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all.sort_unstable();
        assert_eq!(all, (0..2 * per).collect::<Vec<_>>());
    }
}

/// A ring on the heap for loom's tests (loom's atomics cannot live in a zeroed file), its indices
/// starting at `start` (near the wrap, say).
#[cfg(all(test, loom))]
pub(crate) struct HeapRing<T: RingElem> {
    _hdr: Box<RingHdr>,
    _slots: Box<[Slot<T>]>,
    pub(crate) raw: RawRing<T>,
}

// SAFETY: the raw ring points into the boxes it travels with.
#[cfg(all(test, loom))]
unsafe impl<T: RingElem> Send for HeapRing<T> {}
// SAFETY: as RawRing.
#[cfg(all(test, loom))]
unsafe impl<T: RingElem> Sync for HeapRing<T> {}

#[cfg(all(test, loom))]
impl<T: RingElem + Default> HeapRing<T> {
    pub(crate) fn new(count: u32, flags: RingFlags, start: u32) -> HeapRing<T> {
        let ht = || HeadTail { head: AtomicU32::new(start), tail: AtomicU32::new(start) };
        let mut hdr = Box::new(RingHdr {
            magic: RING_MAGIC,
            size: count,
            mask: count - 1,
            esize: std::mem::size_of::<T>() as u32,
            flags: flags.single_producer as u32 | (flags.single_consumer as u32) << 1,
            unrecorded: AtomicU32::new(0),
            _pad: [0; 10],
            prod: ht(),
            cons: ht(),
            lanes: std::array::from_fn(|_| Lane::new()),
        });
        let mut slots: Box<[Slot<T>]> = (0..count).map(|_| loom::cell::UnsafeCell::new(T::default())).collect();
        let raw = RawRing {
            hdr: NonNull::from(&mut *hdr),
            slots: NonNull::new(slots.as_mut_ptr()).expect("boxed slots"),
            mask: count - 1,
            size: count,
            sp: flags.single_producer,
            sc: flags.single_consumer,
            _t: PhantomData,
        };
        HeapRing { _hdr: hdr, _slots: slots, raw }
    }
}

/// The bounds every loom test of the crate runs under.
#[cfg(all(test, loom))]
pub(crate) fn loom_model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.max_branches = 1_000_000;
    b.check(f);
}

/// loom explores every interleaving (and every outcome the memory model allows) of the ring's
/// own code with its atomics swapped for loom's; a slot read that races a write is an error.
/// Run by `ci/run.sh`: `RUSTFLAGS="--cfg loom" cargo test -p lab-core --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc as LArc;

    fn heap(count: u32, flags: RingFlags, start: u32) -> HeapRing<u32> {
        HeapRing::new(count, flags, start)
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        loom_model(f)
    }

    /// Dequeues until `n` elements came, yielding to the producers meanwhile.
    fn take(r: &RawRing<u32>, n: usize) -> Vec<u32> {
        let mut got = Vec::new();
        let mut out = [0u32; 4];
        let mut spins = 0;
        while got.len() < n {
            let k = r.dequeue_burst(&mut out[..n - got.len()]);
            got.extend_from_slice(&out[..k]);
            if k == 0 {
                backoff(&mut spins);
            }
        }
        got
    }

    #[test]
    fn loom_two_producers_across_the_wrap_lose_and_duplicate_nothing() {
        model(|| {
            let r = LArc::new(heap(4, RingFlags::MPMC, u32::MAX - 1));
            let p1 = {
                let r = r.clone();
                loom::thread::spawn(move || assert!(r.raw.enqueue_bulk(&[1, 2])))
            };
            let p2 = {
                let r = r.clone();
                loom::thread::spawn(move || assert!(r.raw.enqueue_bulk(&[3])))
            };
            // A few looks while they run (what it sees must be published), the rest after.
            let mut got = Vec::new();
            let mut out = [0u32; 3];
            for _ in 0..3 {
                let n = r.raw.dequeue_burst(&mut out[..3 - got.len()]);
                got.extend_from_slice(&out[..n]);
                loom::thread::yield_now();
            }
            p1.join().unwrap();
            p2.join().unwrap();
            let left = 3 - got.len();
            got.extend(take(&r.raw, left));
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, [1, 2, 3], "{got:?}");
            let i1 = got.iter().position(|&x| x == 1).unwrap();
            assert_eq!(got.get(i1 + 1), Some(&2), "a bulk stays contiguous and in order: {got:?}");
            assert_eq!(r.raw.count(), 0);
        });
    }

    #[test]
    fn loom_two_consumers_split_what_was_published() {
        model(|| {
            let r = LArc::new(heap(4, RingFlags::MPMC, u32::MAX - 2));
            assert!(r.raw.enqueue_bulk(&[1, 2, 3]));
            let c = {
                let r = r.clone();
                loom::thread::spawn(move || {
                    let mut out = [0u32; 2];
                    let n = r.raw.dequeue_burst(&mut out);
                    out[..n].to_vec()
                })
            };
            let mut out = [0u32; 2];
            let n = r.raw.dequeue_burst(&mut out);
            let mut all = out[..n].to_vec();
            let theirs = c.join().unwrap();
            for w in [&all, &theirs] {
                assert!(w.windows(2).all(|p| p[0] < p[1]), "each consumer's share is in order: {w:?}");
            }
            all.extend(theirs);
            all.extend(take(&r.raw, 3 - all.len()));
            all.sort();
            assert_eq!(all, [1, 2, 3]);
        });
    }

    /// What the mempool's per-handle caches do: refill (a bulk dequeue) and flush (a bulk
    /// enqueue) from two handles at once, on a full ring: no buffer lost, none twice.
    #[test]
    fn loom_cache_refill_and_flush_from_two_handles_conserve_every_buffer() {
        model(|| {
            let r = LArc::new(heap(4, RingFlags::MPMC, u32::MAX));
            assert!(r.raw.enqueue_bulk(&[10, 11, 12, 13]));
            let h = {
                let r = r.clone();
                loom::thread::spawn(move || {
                    let mut cache = [0u32; 2];
                    assert!(r.raw.dequeue_bulk(&mut cache), "refill");
                    assert!(r.raw.enqueue_bulk(&cache), "flush");
                })
            };
            let mut cache = [0u32; 2];
            if r.raw.dequeue_bulk(&mut cache) {
                assert!(r.raw.enqueue_bulk(&cache));
            }
            h.join().unwrap();
            let mut all = take(&r.raw, 4);
            all.sort();
            assert_eq!(all, [10, 11, 12, 13]);
        });
    }

    /// A producer dies between its head move and its tail publish (it wrote half its slots); a
    /// producer behind it, told the thread is dead only once it is, publishes the dead range as
    /// tombstones and then its own: nothing wedges, nothing is read that was not published.
    #[test]
    fn loom_a_producer_dead_inside_its_enqueue_wedges_no_later_producer() {
        model(|| {
            let r = LArc::new(heap(4, RingFlags::MPMC, u32::MAX));
            let dead = LArc::new(crate::sync::AtomicU32::new(0));
            let d = {
                let (r, dead) = (r.clone(), dead.clone());
                loom::thread::spawn(move || {
                    let who = Who { id: 7, alive: &|_| true, rescue_every: u32::MAX };
                    assert_eq!(r.raw.enqueue::<true>(&[1, 2], true, &who), 2);
                    dead.store(1, Ordering::Release);
                })
            };
            let alive = |id: u32| id != 7 || dead.load(Ordering::Acquire) == 0;
            let me = Who { id: 9, alive: &alive, rescue_every: 1 };
            assert_eq!(r.raw.enqueue::<false>(&[3], true, &me), 1);
            d.join().unwrap();
            // Behind the dead range now, whichever won the head first: this one waits and rescues.
            assert_eq!(r.raw.enqueue::<false>(&[4], true, &me), 1);
            let mut out = [0u32; 4];
            let n = r.raw.dequeue::<false>(&mut out, false, &me);
            let t = u32::TOMBSTONE;
            assert!(out[..n] == [t, t, 3, 4] || out[..n] == [3, t, t, 4], "{:?}", &out[..n]);
        });
    }

    #[test]
    fn loom_a_full_ring_refuses_until_a_consumer_frees_a_slot() {
        model(|| {
            let r = LArc::new(heap(2, RingFlags::MPMC, u32::MAX));
            assert!(r.raw.enqueue_bulk(&[1, 2]));
            let p = {
                let r = r.clone();
                loom::thread::spawn(move || {
                    let mut spins = 0;
                    while !r.raw.enqueue_bulk(&[3]) {
                        backoff(&mut spins);
                    }
                })
            };
            let first = take(&r.raw, 1);
            p.join().unwrap();
            let rest = take(&r.raw, 2);
            assert_eq!((first, rest), (vec![1], vec![2, 3]));
        });
    }
}
