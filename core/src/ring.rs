//! A lock-free ring in shared memory, the analogue of DPDK's `rte_ring`.
//!
//! Layout in a memzone: [`RingHdr`] (name, size, element size, flags), then the producer and the
//! consumer head/tail pairs, each on its own cache line, then `size` slots of the element type.
//! Indices are free-running `u32`s (wrapping), masked on access. Producers reserve slots by moving
//! the producer head (a CAS when multi-producer), copy their elements, then publish by moving the
//! tail once every earlier producer has published; consumers mirror that. Works between processes
//! because it holds no pointers, only indices into its own slots.
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

use crate::sync::{backoff, fence, AtomicU32, Ordering};

use crate::mem::{MemError, Shm, ShmOffset};

/// Plain data that may live in a shared ring: `Copy`, no pointers, no padding with meaning.
///
/// # Safety
/// Implementors must be valid for any bit pattern and must not contain references or pointers
/// (a value is read by another process with another address space).
pub unsafe trait RingElem: Copy + Send + 'static {}
// SAFETY: integers are valid for every bit pattern and hold no pointers.
unsafe impl RingElem for u64 {}
// SAFETY: as above.
unsafe impl RingElem for u32 {}
// SAFETY: byte arrays are valid for every bit pattern.
unsafe impl<const N: usize> RingElem for [u8; N] {}

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

/// The ring's header in shared memory.
#[repr(C, align(64))]
pub struct RingHdr {
    magic: u32,
    size: u32,
    mask: u32,
    esize: u32,
    flags: u32,
    _pad: [u32; 11],
    prod: HeadTail,
    cons: HeadTail,
}

const RING_MAGIC: u32 = 0x5249_4e47;
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingHdr>() == 192);
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
        self.enqueue(objs, true) == objs.len()
    }

    /// Enqueues as many of `objs` as fit; returns how many.
    pub fn enqueue_burst(&self, objs: &[T]) -> usize {
        self.enqueue(objs, false)
    }

    /// Dequeues exactly `out.len()` elements or none.
    pub fn dequeue_bulk(&self, out: &mut [T]) -> bool {
        let n = out.len();
        self.dequeue(out, true) == n
    }

    /// Dequeues up to `out.len()` elements; returns how many.
    pub fn dequeue_burst(&self, out: &mut [T]) -> usize {
        self.dequeue(out, false)
    }

    #[inline]
    fn enqueue(&self, objs: &[T], fixed: bool) -> usize {
        let h = self.h();
        let want = objs.len().min(self.size as usize) as u32;
        if want == 0 || (fixed && want as usize != objs.len()) {
            return 0;
        }
        // Acquire on the head (and AcqRel on its CAS): the consumer tail read next is then at
        // least as new as the one the previous head mover saw. With Relaxed, a producer that lost
        // the CAS to one that had just dequeued and re-enqueued could read an older consumer tail
        // and find the ring full when it is not (loom found it: a mempool flush refused).
        let mut head = h.prod.head.load(Ordering::Acquire);
        let n = loop {
            let cons_tail = h.cons.tail.load(Ordering::Acquire);
            let free = self.size.wrapping_sub(head.wrapping_sub(cons_tail));
            let n = if want <= free {
                want
            } else if fixed {
                0
            } else {
                free
            };
            if n == 0 {
                return 0;
            }
            let next = head.wrapping_add(n);
            if self.sp {
                h.prod.head.store(next, Ordering::Relaxed);
                break n;
            }
            match h.prod.head.compare_exchange_weak(head, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break n,
                Err(cur) => head = cur,
            }
        };
        for (i, o) in objs[..n as usize].iter().enumerate() {
            let idx = (head.wrapping_add(i as u32) & self.mask) as usize;
            // SAFETY: idx < size; the slots [head, head+n) were reserved by the head move above and
            // no consumer reads them before the tail is published below.
            unsafe { self.put(idx, *o) };
        }
        // Publish in order: wait for earlier producers. Acquire: our release of the tail below
        // must carry their slot writes too, or a consumer acquiring our tail could read their
        // slots before their writes (loom found it with Relaxed here).
        let mut spins = 0u32;
        while h.prod.tail.load(Ordering::Acquire) != head {
            backoff(&mut spins);
        }
        h.prod.tail.store(head.wrapping_add(n), Ordering::Release);
        n as usize
    }

    #[inline]
    fn dequeue(&self, out: &mut [T], fixed: bool) -> usize {
        let h = self.h();
        let want = out.len().min(self.size as usize) as u32;
        if want == 0 || (fixed && want as usize != out.len()) {
            return 0;
        }
        // As for producers: the producer tail read next is at least the previous mover's.
        let mut head = h.cons.head.load(Ordering::Acquire);
        let n = loop {
            let prod_tail = h.prod.tail.load(Ordering::Acquire);
            let avail = prod_tail.wrapping_sub(head);
            let n = if want <= avail {
                want
            } else if fixed {
                0
            } else {
                avail
            };
            if n == 0 {
                return 0;
            }
            let next = head.wrapping_add(n);
            if self.sc {
                h.cons.head.store(next, Ordering::Relaxed);
                break n;
            }
            match h.cons.head.compare_exchange_weak(head, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break n,
                Err(cur) => head = cur,
            }
        };
        for (i, o) in out[..n as usize].iter_mut().enumerate() {
            let idx = (head.wrapping_add(i as u32) & self.mask) as usize;
            // SAFETY: idx < size; [head, head+n) was published by producers (acquire on prod.tail)
            // and reserved for us by the consumer head move.
            *o = unsafe { self.get(idx) };
        }
        // Acquire, as for producers: a producer that acquires our tail must also be ordered after
        // the earlier consumers' slot reads, or it could overwrite a slot still being read.
        let mut spins = 0u32;
        while h.cons.tail.load(Ordering::Acquire) != head {
            backoff(&mut spins);
        }
        h.cons.tail.store(head.wrapping_add(n), Ordering::Release);
        n as usize
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
            _pad: [0; 11],
            prod: ht(),
            cons: ht(),
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
