//! Shared memory mappings: the one place lab-emu maps memory.
//!
//! Two kinds of memory are shared with client processes, and both are mapped here:
//! - BAR memory: one memfd per BAR region with sparse areas. The client mmaps the sparse areas of the
//!   same memfd, so the doorbell pages are written by the driver and polled by the device.
//! - DMA memory: the fd a client passes in DMA_MAP, mapped `MAP_SHARED` at the given offset.
//!
//! The memory is written concurrently by other processes, so this module never hands out Rust references
//! into it: every access is a bounds-checked copy (bulk) or a volatile 32-bit load/store (registers).

use std::ffi::CString;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

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
        source: nix::Error,
    },
}

/// A `MAP_SHARED` read/write mapping of a file, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    /// Start of the mmapped area (page aligned).
    base: NonNull<u8>,
    /// Length of the mmapped area.
    map_len: usize,
    /// Offset of the caller's view inside the mmapped area (file offsets need not be page aligned).
    skew: usize,
    /// Length of the caller's view.
    len: usize,
    /// The memfd, when this mapping created it (kept open for as long as the mapping is shared).
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is plain shared memory owned by this value; all accesses go through raw-pointer
// copies and volatile loads/stores that tolerate concurrent writers, so sharing across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`: no method hands out references into the memory.
unsafe impl Sync for Mapping {}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        4096
    } else {
        v as usize
    }
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
        let page = page_size() as u64;
        let aligned = offset - offset % page;
        let skew = (offset - aligned) as usize;
        let len_usize = usize::try_from(len).map_err(|_| MemError::BadLength { len })?;
        let map_len = len_usize.checked_add(skew).and_then(NonZeroUsize::new).ok_or(MemError::BadLength { len })?;
        let off = i64::try_from(aligned).map_err(|_| MemError::BadLength { len })?;
        // SAFETY: we map a fresh area chosen by the kernel (addr = None), so no existing Rust object is
        // aliased; the result is only accessed through the bounds-checked methods below and unmapped once
        // in Drop.
        let ptr =
            unsafe { mmap(None, map_len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, fd, off) }
                .map_err(|source| MemError::Mmap { len, offset, source })?;
        Ok(Self { base: ptr.cast(), map_len: map_len.get(), skew, len: len_usize, fd: None })
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

    fn range_ok(&self, off: usize, n: usize) -> bool {
        off.checked_add(n).is_some_and(|end| end <= self.len)
    }

    fn ptr_at(&self, off: usize) -> *mut u8 {
        // SAFETY: callers checked `off` (+ access size) against `len`, and `skew + len <= map_len`, so the
        // pointer stays inside the mapping.
        unsafe { self.base.as_ptr().add(self.skew + off) }
    }

    /// Copies `buf.len()` bytes at `off` into `buf`. Returns false (and copies nothing) if out of range.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> bool {
        if !self.range_ok(off, buf.len()) {
            return false;
        }
        // SAFETY: range checked above; `buf` is a distinct Rust allocation, so the areas cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr_at(off), buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copies `data` to `off`. Returns false (and writes nothing) if out of range.
    pub fn write(&self, off: usize, data: &[u8]) -> bool {
        if !self.range_ok(off, data.len()) {
            return false;
        }
        // SAFETY: range checked above; `data` is a distinct Rust allocation, so the areas cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr_at(off), data.len()) };
        true
    }

    /// Fills `n` bytes at `off` with `byte`. Returns false if out of range.
    pub fn fill(&self, off: usize, n: usize, byte: u8) -> bool {
        if !self.range_ok(off, n) {
            return false;
        }
        // SAFETY: range checked above.
        unsafe { std::ptr::write_bytes(self.ptr_at(off), byte, n) };
        true
    }

    /// Volatile little-endian 32-bit load at a 4-byte aligned `off`; `None` if out of range or unaligned.
    pub fn read32(&self, off: usize) -> Option<u32> {
        if off & 3 != 0 || !self.range_ok(off, 4) {
            return None;
        }
        // SAFETY: in range; the mapping base is page aligned and `skew` is only non-zero for DMA views,
        // so we use an unaligned-tolerant read to stay sound in every case.
        let v = unsafe { std::ptr::read_volatile(self.ptr_at(off) as *const [u8; 4]) };
        Some(u32::from_le_bytes(v))
    }

    /// Volatile little-endian 32-bit store at a 4-byte aligned `off`; false if out of range or unaligned.
    pub fn write32(&self, off: usize, val: u32) -> bool {
        if off & 3 != 0 || !self.range_ok(off, 4) {
            return false;
        }
        // SAFETY: in range (checked above); a byte-array store has alignment 1.
        unsafe { std::ptr::write_volatile(self.ptr_at(off) as *mut [u8; 4], val.to_le_bytes()) };
        true
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` describe exactly the area mmapped in `map_fd`, unmapped only here.
        if let Err(e) = unsafe { munmap(self.base.cast(), self.map_len) } {
            tracing::warn!("munmap failed: {e}");
        }
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
