//! Shared memory mappings: the one place lab-emu maps memory.
//!
//! Two kinds of memory are shared with client processes, and both are mapped here:
//! - BAR memory: one memfd per BAR region with sparse areas. The client mmaps the sparse areas of the
//!   same memfd, so the doorbell pages are written by the driver and polled by the device.
//! - DMA memory: the fd a client passes in DMA_MAP, mapped `MAP_SHARED` at the given offset.
//!
//! The memory is written concurrently by other processes, so this module never hands out Rust references
//! into it: every access is a bounds-checked copy (bulk: frame data) or one atomic 32/64-bit load or
//! store (registers, descriptor words), so a doorbell or a status word is never read or written torn.
//! Register reads are Acquire and register writes Release ([`Mapping::read32`], [`Mapping::write32`]);
//! [`Mapping::load_u32`] and [`Mapping::store_u32`] take the ordering for descriptor write-backs.

use std::ffi::CString;
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// Errors creating a mapping.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The requested length is zero or does not fit the address space.
    #[error("invalid mapping length {len}")]
    BadLength {
        /// Requested length in bytes.
        len: u64,
    },
    /// `memfd_create` or `ftruncate` failed.
    #[error("cannot create memfd {name}: {source}")]
    Memfd {
        /// memfd name.
        name: String,
        /// Underlying error.
        source: nix::Error,
    },
    /// `mmap` failed.
    #[error("mmap of {len} bytes at file offset {offset:#x} failed: {source}")]
    Mmap {
        /// Length requested.
        len: u64,
        /// File offset requested.
        offset: u64,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A `MAP_SHARED` read/write mapping of a file, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    /// The mmapped area (memmap2 aligns a file offset that is not page aligned and points
    /// `as_mut_ptr` at the caller's first byte; unmapped when dropped). Only raw pointers come
    /// out of it, never `&[u8]`, so mapping needs no unsafe here.
    map: memmap2::MmapRaw,
    /// Length of the caller's view.
    len: usize,
    /// The memfd, when this mapping created it (kept open for as long as the mapping is shared).
    fd: Option<OwnedFd>,
}

impl Mapping {
    /// Creates a memfd of `len` bytes (zero-filled) and maps it. The fd stays open in the mapping.
    pub fn memfd(name: &str, len: usize) -> Result<Self, MemError> {
        let cname = CString::new(name.replace('\0', "_")).unwrap_or_default();
        let fd = memfd_create(&cname, MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|source| MemError::Memfd { name: name.to_owned(), source })?;
        let flen = i64::try_from(len).map_err(|_| MemError::BadLength { len: len as u64 })?;
        nix::unistd::ftruncate(&fd, flen).map_err(|source| MemError::Memfd { name: name.to_owned(), source })?;
        let mut m = Self::map_fd(fd.as_fd(), 0, len as u64)?;
        m.fd = Some(fd);
        Ok(m)
    }

    /// Maps `len` bytes of `file` starting at `offset` (need not be page aligned), shared and read/write.
    pub fn map_file(file: &File, offset: u64, len: u64) -> Result<Self, MemError> {
        Self::map_fd(file.as_fd(), offset, len)
    }

    fn map_fd(fd: std::os::fd::BorrowedFd<'_>, offset: u64, len: u64) -> Result<Self, MemError> {
        let len_usize = usize::try_from(len).ok().filter(|l| *l > 0).ok_or(MemError::BadLength { len })?;
        i64::try_from(offset.checked_add(len).ok_or(MemError::BadLength { len })?)
            .map_err(|_| MemError::BadLength { len })?;
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(len_usize)
            .map_raw(fd.as_raw_fd())
            .map_err(|source| MemError::Mmap { len, offset, source })?;
        Ok(Self { map, len: len_usize, fd: None })
    }

    /// Length of the view in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the view is empty (never, for a successful mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd backing this mapping, if it created one.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// The whole view as a [`Window`].
    #[inline]
    pub fn window(&self) -> Window<'_> {
        // SAFETY: memmap2 never returns a null mapping; the pointer and `len` describe the
        // caller's view, which lives as long as `self`.
        let base = unsafe { NonNull::new_unchecked(self.map.as_mut_ptr()) };
        Window { base, len: self.len, _map: PhantomData }
    }

    /// The `len` bytes at `off`, if inside the view.
    #[inline]
    pub fn sub(&self, off: usize, len: usize) -> Option<Window<'_>> {
        self.window().sub(off, len)
    }

    /// Copies `buf.len()` bytes at `off` into `buf`. Returns false (and copies nothing) if out of range.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> bool {
        self.window().read(off, buf)
    }

    /// Copies `data` to `off`. Returns false (and writes nothing) if out of range.
    pub fn write(&self, off: usize, data: &[u8]) -> bool {
        self.window().write(off, data)
    }

    /// Copies `n` bytes at `src_off` of `src` to `off` of this mapping (the two may be the same
    /// mapping, even overlapping ranges). Returns false (and copies nothing) if either range is out
    /// of bounds.
    pub fn copy_from(&self, off: usize, src: &Mapping, src_off: usize, n: usize) -> bool {
        self.window().copy_from(off, &src.window(), src_off, n)
    }

    /// Fills `n` bytes at `off` with `byte`. Returns false if out of range.
    pub fn fill(&self, off: usize, n: usize, byte: u8) -> bool {
        self.window().fill(off, n, byte)
    }

    /// One 32-bit little-endian load at a 4-byte aligned `off` with Acquire ordering (a doorbell or
    /// any register another process writes: later reads of what it guards see what was written
    /// before it). `None` if out of range or `off` is unaligned.
    pub fn read32(&self, off: usize) -> Option<u32> {
        if off & 3 != 0 {
            return None;
        }
        self.load_u32(off, Ordering::Acquire)
    }

    /// One 32-bit little-endian store at a 4-byte aligned `off` with Release ordering (everything
    /// this thread read or wrote before is visible to whoever reads this value). False if out of
    /// range or `off` is unaligned.
    pub fn write32(&self, off: usize, val: u32) -> bool {
        off & 3 == 0 && self.store_u32(off, val, Ordering::Release)
    }

    /// One 64-bit little-endian load at an 8-byte aligned `off`, Acquire. `None` if out of range or
    /// unaligned.
    pub fn read64(&self, off: usize) -> Option<u64> {
        if off & 7 != 0 {
            return None;
        }
        self.load_u64(off, Ordering::Acquire)
    }

    /// One 64-bit little-endian store at an 8-byte aligned `off`, Release. False if out of range or
    /// unaligned.
    pub fn write64(&self, off: usize, val: u64) -> bool {
        off & 7 == 0 && self.store_u64(off, val, Ordering::Release)
    }

    /// Little-endian 32-bit load at any `off` with `order` (see [`Window::load_u32`]).
    pub fn load_u32(&self, off: usize, order: Ordering) -> Option<u32> {
        self.window().load_u32(off, order)
    }

    /// Little-endian 32-bit store at any `off` with `order` (see [`Window::store_u32`]).
    pub fn store_u32(&self, off: usize, val: u32, order: Ordering) -> bool {
        self.window().store_u32(off, val, order)
    }

    /// Little-endian 64-bit load at any `off` with `order` (see [`Window::load_u64`]).
    pub fn load_u64(&self, off: usize, order: Ordering) -> Option<u64> {
        self.window().load_u64(off, order)
    }

    /// Little-endian 64-bit store at any `off` with `order` (see [`Window::store_u64`]).
    pub fn store_u64(&self, off: usize, val: u64, order: Ordering) -> bool {
        self.window().store_u64(off, val, order)
    }
}

/// A bounds-checked range of a [`Mapping`]: the one place that touches mapped memory.
///
/// Made once (one check against the mapping) and then used for many accesses, each checked only
/// against the window's own length: a descriptor ring for a poll, a packet buffer for a copy.
/// Every access is a copy or one atomic word access, never a Rust reference into the memory,
/// because other processes write it concurrently.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    base: NonNull<u8>,
    len: usize,
    _map: PhantomData<&'a Mapping>,
}

impl<'a> Window<'a> {
    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty window.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to `n` bytes at `off`, if inside the window.
    #[inline]
    fn at(&self, off: usize, n: usize) -> Option<*mut u8> {
        if off.checked_add(n)? > self.len {
            return None;
        }
        // SAFETY: `off + n <= len` (checked just now), and the window lies inside a live mapping.
        Some(unsafe { self.base.as_ptr().add(off) })
    }

    /// The `len` bytes at `off` of this window, if inside it.
    #[inline]
    pub fn sub(&self, off: usize, len: usize) -> Option<Window<'a>> {
        let p = self.at(off, len)?;
        // SAFETY: `at` returned a pointer into the window, derived from a non-null base.
        Some(Window { base: unsafe { NonNull::new_unchecked(p) }, len, _map: PhantomData })
    }

    /// Asks the CPU to start loading the cache line holding byte `off` (a hint: nothing happens
    /// if `off` is out of range or the CPU has no prefetch instruction).
    #[inline]
    pub fn prefetch(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.at(off, 1) {
            // SAFETY: a prefetch is a hint that never faults and loads nothing into the program;
            // SSE, which it needs, is part of the x86_64 baseline. The address is in range anyway.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Copies `buf.len()` bytes at `off` into `buf`. False (nothing copied) if out of range.
    #[inline]
    pub fn read(&self, off: usize, buf: &mut [u8]) -> bool {
        let Some(p) = self.at(off, buf.len()) else { return false };
        // SAFETY: source in range (checked by `at`); `buf` is a distinct Rust allocation.
        unsafe { copy_small(p, buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copies `data` to `off`. False (nothing written) if out of range.
    #[inline]
    pub fn write(&self, off: usize, data: &[u8]) -> bool {
        let Some(p) = self.at(off, data.len()) else { return false };
        // SAFETY: destination in range (checked by `at`); `data` is a distinct Rust allocation.
        unsafe { copy_small(data.as_ptr(), p, data.len()) };
        true
    }

    /// Copies `n` bytes at `src_off` of `src` to `off` of this window (mapped memory to mapped
    /// memory; the ranges may overlap). False (nothing copied) if either is out of range.
    #[inline]
    pub fn copy_from(&self, off: usize, src: &Window<'_>, src_off: usize, n: usize) -> bool {
        let (Some(d), Some(s)) = (self.at(off, n), src.at(src_off, n)) else { return false };
        if (d as usize).abs_diff(s as usize) >= n {
            // SAFETY: both ranges checked by `at`, and they do not overlap (distance >= n).
            unsafe { copy_small(s, d, n) };
        } else {
            // SAFETY: both ranges checked by `at`; `ptr::copy` allows overlap.
            unsafe { std::ptr::copy(s, d, n) };
        }
        true
    }

    /// Fills `n` bytes at `off` with `byte`. False if out of range.
    #[inline]
    pub fn fill(&self, off: usize, n: usize, byte: u8) -> bool {
        let Some(p) = self.at(off, n) else { return false };
        // SAFETY: range checked by `at`.
        unsafe { std::ptr::write_bytes(p, byte, n) };
        true
    }

    /// Little-endian 32-bit load at any `off` with `order` (`Relaxed`, `Acquire` or `SeqCst`).
    ///
    /// When the address is 4-byte aligned this is one atomic 32-bit load: another process's aligned
    /// 32-bit store is seen whole or not at all, never torn. An unaligned address (a DMA view of a
    /// file at an odd offset) takes the byte path, which can tear, followed by the fence `order` asks
    /// for. `None` if out of range.
    #[inline]
    pub fn load_u32(&self, off: usize, order: Ordering) -> Option<u32> {
        let p = self.at(off, 4)?;
        if (p as usize) & 3 == 0 {
            // SAFETY: in range (checked by `at`) and 4-byte aligned (checked just now); the memory
            // is a live shared mapping that other processes access concurrently, which is what
            // atomics are for; the `AtomicU32` does not outlive this expression.
            let v = unsafe { AtomicU32::from_ptr(p.cast::<u32>()) }.load(order);
            return Some(u32::from_le(v));
        }
        // SAFETY: in range (checked by `at`); a byte-array read has alignment 1.
        let b = unsafe { std::ptr::read_volatile(p as *const [u8; 4]) };
        acquire_after_load(order);
        Some(u32::from_le_bytes(b))
    }

    /// Little-endian 32-bit store at any `off` with `order` (`Relaxed`, `Release` or `SeqCst`).
    ///
    /// One atomic 32-bit store when the address is 4-byte aligned (see [`Window::load_u32`]), so a
    /// reader in another process sees the old or the new word, never a mix; with `Release`, every
    /// earlier read and write of this thread (to any mapping) is visible before it. Unaligned: the
    /// fence, then four byte stores. False if out of range.
    #[inline]
    pub fn store_u32(&self, off: usize, val: u32, order: Ordering) -> bool {
        let Some(p) = self.at(off, 4) else { return false };
        if (p as usize) & 3 == 0 {
            // SAFETY: in range and 4-byte aligned (checked above); shared memory that other processes
            // access concurrently, through atomics on our side; the reference does not escape.
            unsafe { AtomicU32::from_ptr(p.cast::<u32>()) }.store(val.to_le(), order);
            return true;
        }
        release_before_store(order);
        // SAFETY: in range (checked by `at`); a byte-array store has alignment 1.
        unsafe { std::ptr::write_volatile(p as *mut [u8; 4], val.to_le_bytes()) };
        true
    }

    /// Little-endian 64-bit load at any `off`: one atomic load when 8-byte aligned (see
    /// [`Window::load_u32`]), bytes then the fence otherwise. `None` if out of range.
    #[inline]
    pub fn load_u64(&self, off: usize, order: Ordering) -> Option<u64> {
        let p = self.at(off, 8)?;
        if (p as usize) & 7 == 0 {
            // SAFETY: in range and 8-byte aligned (checked above); concurrently accessed shared memory,
            // atomics on our side; the reference does not escape.
            let v = unsafe { AtomicU64::from_ptr(p.cast::<u64>()) }.load(order);
            return Some(u64::from_le(v));
        }
        // SAFETY: in range (checked by `at`); a byte-array read has alignment 1.
        let b = unsafe { std::ptr::read_volatile(p as *const [u8; 8]) };
        acquire_after_load(order);
        Some(u64::from_le_bytes(b))
    }

    /// Little-endian 64-bit store at any `off`: one atomic store when 8-byte aligned (see
    /// [`Window::store_u32`]), the fence then bytes otherwise. False if out of range.
    #[inline]
    pub fn store_u64(&self, off: usize, val: u64, order: Ordering) -> bool {
        let Some(p) = self.at(off, 8) else { return false };
        if (p as usize) & 7 == 0 {
            // SAFETY: in range and 8-byte aligned (checked above); concurrently accessed shared memory,
            // atomics on our side; the reference does not escape.
            unsafe { AtomicU64::from_ptr(p.cast::<u64>()) }.store(val.to_le(), order);
            return true;
        }
        release_before_store(order);
        // SAFETY: in range (checked by `at`); a byte-array store has alignment 1.
        unsafe { std::ptr::write_volatile(p as *mut [u8; 8], val.to_le_bytes()) };
        true
    }
}

impl Window<'_> {
    /// The two little-endian quadwords at `off` (a 16-byte descriptor), each one atomic load
    /// with `Relaxed` when 8-byte aligned: one bounds check and one alignment check for both.
    /// `None` if out of range.
    #[inline]
    pub fn load_u64_pair(&self, off: usize) -> Option<(u64, u64)> {
        let p = self.at(off, 16)?;
        if (p as usize) & 7 == 0 {
            // SAFETY: 16 bytes in range and 8-byte aligned (checked above); concurrently accessed
            // shared memory, atomics on our side; the references do not escape.
            let (a, b) = unsafe {
                (
                    AtomicU64::from_ptr(p.cast::<u64>()).load(Ordering::Relaxed),
                    AtomicU64::from_ptr(p.add(8).cast::<u64>()).load(Ordering::Relaxed),
                )
            };
            return Some((u64::from_le(a), u64::from_le(b)));
        }
        Some((self.load_u64(off, Ordering::Relaxed)?, self.load_u64(off + 8, Ordering::Relaxed)?))
    }

    /// Stores `a` at `off` (`Relaxed`), then `b` at `off + 8` with `order` (a descriptor
    /// write-back whose second quadword is the last store): one bounds check and one alignment
    /// check for both. False (nothing stored) if out of range.
    #[inline]
    pub fn store_u64_pair(&self, off: usize, a: u64, b: u64, order: Ordering) -> bool {
        let Some(p) = self.at(off, 16) else { return false };
        if (p as usize) & 7 == 0 {
            // SAFETY: 16 bytes in range and 8-byte aligned (checked above); concurrently accessed
            // shared memory, atomics on our side; the references do not escape.
            unsafe {
                AtomicU64::from_ptr(p.cast::<u64>()).store(a.to_le(), Ordering::Relaxed);
                AtomicU64::from_ptr(p.add(8).cast::<u64>()).store(b.to_le(), order);
            }
            return true;
        }
        self.store_u64(off, a, Ordering::Relaxed) && self.store_u64(off + 8, b, order)
    }

    /// [`Window::store_u64_pair`] for each of `pairs`, into consecutive 16-byte slots from `off`
    /// (a run of descriptor write-backs), in order: the bounds and the alignment are checked
    /// once for the run. False (nothing stored) if the run is out of range.
    #[inline]
    pub fn store_u64_pairs(&self, off: usize, pairs: &[(u64, u64)], order: Ordering) -> bool {
        let Some(p) = pairs.len().checked_mul(16).and_then(|n| self.at(off, n)) else { return false };
        if (p as usize) & 7 != 0 {
            return pairs.iter().enumerate().all(|(i, &(a, b))| self.store_u64_pair(off + 16 * i, a, b, order));
        }
        for (i, &(a, b)) in pairs.iter().enumerate() {
            // SAFETY: the run of 16 * pairs.len() bytes is in range and 8-byte aligned (checked
            // above), so both words of slot i are; concurrently accessed shared memory, atomics
            // on our side; the references do not escape.
            unsafe {
                let q = p.add(16 * i);
                AtomicU64::from_ptr(q.cast::<u64>()).store(a.to_le(), Ordering::Relaxed);
                AtomicU64::from_ptr(q.add(8).cast::<u64>()).store(b.to_le(), order);
            }
        }
        true
    }
}

// SAFETY: a window is a pointer into a `Mapping`, which is Send and Sync (see there); it only
// copies and makes atomic word accesses.
unsafe impl Send for Window<'_> {}
// SAFETY: as for Send.
unsafe impl Sync for Window<'_> {}

/// Copies `n` bytes from `src` to `dst` (not overlapping). Frames of up to 64 bytes, the common
/// case on the data path, are two overlapping fixed-size copies each, inlined, instead of a call.
///
/// # Safety
/// `src` is valid for `n` bytes of reads, `dst` for `n` bytes of writes, and they do not overlap.
#[inline]
unsafe fn copy_small(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller's contract (all arms); each pair of copies stays within [0, n).
    unsafe {
        match n {
            32..=64 => {
                std::ptr::copy_nonoverlapping(src, dst, 32);
                std::ptr::copy_nonoverlapping(src.add(n - 32), dst.add(n - 32), 32);
            }
            16..32 => {
                std::ptr::copy_nonoverlapping(src, dst, 16);
                std::ptr::copy_nonoverlapping(src.add(n - 16), dst.add(n - 16), 16);
            }
            _ => std::ptr::copy_nonoverlapping(src, dst, n),
        }
    }
}

/// The byte path of an Acquire (or stronger) load: the fence after it.
fn acquire_after_load(order: Ordering) {
    if matches!(order, Ordering::Acquire | Ordering::AcqRel | Ordering::SeqCst) {
        fence(Ordering::Acquire);
    }
}

/// The byte path of a Release (or stronger) store: the fence before it.
fn release_before_store(order: Ordering) {
    if matches!(order, Ordering::Release | Ordering::AcqRel | Ordering::SeqCst) {
        fence(Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_mapping_is_bounds_checked() {
        let m = Mapping::memfd("t", 8192).unwrap();
        assert!(m.write32(4096, 0xdead_beef));
        assert_eq!(m.read32(4096), Some(0xdead_beef));
        assert_eq!(m.read32(8190), None);
        assert_eq!(m.read32(2), None);
        assert!(!m.write(8190, &[0; 4]));
        let mut b = [0u8; 4];
        assert!(m.read(4096, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert!(m.raw_fd().is_some());
    }

    #[test]
    fn word_accesses_are_bounds_and_alignment_checked() {
        let m = Mapping::memfd("t3", 4096).unwrap();
        assert!(m.write64(8, 0x0102_0304_0506_0708));
        assert_eq!(m.read64(8), Some(0x0102_0304_0506_0708));
        assert_eq!(m.read32(8), Some(0x0506_0708), "little-endian");
        assert_eq!(m.read64(4), None, "read64 wants 8-byte alignment");
        assert!(!m.write64(4092, 0));
        assert_eq!(m.read64(4088).map(|_| ()), Some(()));
        assert_eq!(m.load_u64(4090, Ordering::Relaxed), None);
        // Unaligned offsets take the byte path and still read and write the right bytes.
        assert!(m.store_u32(13, 0xaabb_ccdd, Ordering::Release));
        assert_eq!(m.load_u32(13, Ordering::Acquire), Some(0xaabb_ccdd));
        let mut b = [0u8; 4];
        assert!(m.read(13, &mut b));
        assert_eq!(b, [0xdd, 0xcc, 0xbb, 0xaa]);
        assert!(m.store_u64(17, 0x1122_3344_5566_7788, Ordering::Relaxed));
        assert_eq!(m.load_u64(17, Ordering::Relaxed), Some(0x1122_3344_5566_7788));
        assert!(!m.store_u32(4094, 0, Ordering::Relaxed));
    }

    #[test]
    fn a_view_at_an_odd_file_offset_still_reads_whole_words() {
        let m = Mapping::memfd("t4", 8192).unwrap();
        let f = File::from(m.fd.as_ref().unwrap().try_clone().unwrap());
        let v = Mapping::map_file(&f, 4097, 64).unwrap();
        // Offset 3 of the view is 4-aligned in the file but the access is checked on the address.
        assert!(v.store_u32(3, 0x1234_5678, Ordering::Release));
        assert_eq!(m.read32(4100), Some(0x1234_5678));
        assert_eq!(v.read32(3), None, "read32 keeps its 4-aligned-offset contract");
        assert_eq!(v.load_u32(3, Ordering::Acquire), Some(0x1234_5678));
    }

    /// A doorbell that moves across a 256 boundary (0xff <-> 0x100) changes every byte of the word:
    /// a torn read would see 0x1ff or 0. One 32-bit load never does.
    #[test]
    fn doorbell_reads_are_never_torn() {
        let m = std::sync::Arc::new(Mapping::memfd("t5", 4096).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    m.write32(0x18, if i & 1 == 0 { 0xff } else { 0x100 });
                    i = i.wrapping_add(1);
                }
            })
        };
        for _ in 0..2_000_000 {
            let v = m.read32(0x18).unwrap();
            assert!(matches!(v, 0 | 0xff | 0x100), "torn doorbell read {v:#x}");
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[test]
    fn unaligned_file_offset_maps_the_right_bytes() {
        let m = Mapping::memfd("t2", 8192).unwrap();
        m.write(4100, &[1, 2, 3, 4]);
        let f = File::from(m.fd.as_ref().unwrap().try_clone().unwrap());
        let v = Mapping::map_file(&f, 4100, 16).unwrap();
        let mut b = [0u8; 4];
        assert!(v.read(0, &mut b));
        assert_eq!(b, [1, 2, 3, 4]);
    }
}
