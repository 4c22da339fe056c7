//! Device DMA: IOVA translation through the clients' DMA maps.
//!
//! Each client connection registers DMA maps (vfio-user DMA_MAP with an fd). The device sees the union
//! of the live connections' maps: [`DmaTable`] translates an IOVA range that lies entirely inside one
//! map; anything else is a [`DmaError::Unmapped`] that the model records as a fault. [`FakeDma`] is a
//! stand-in (one memfd window) so models are unit-tested without sockets.
//!
//! The data path translates once per batch, not once per access: [`Dma::view`] gives a
//! [`DmaView`], a window inside one map (a whole descriptor ring for one poll, one packet buffer
//! for one copy), whose accesses are bounds-checked against the window with no further lookup.

use std::cell::Cell;
use std::fs::File;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::mem::{Mapping, MemError, Window};

/// Identifies one client connection of a function.
pub type ConnId = u64;

/// DMA errors.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// The range is not inside any live DMA map.
    #[error("DMA to unmapped IOVA range {iova:#x}+{len}")]
    Unmapped {
        /// Start IOVA.
        iova: u64,
        /// Length in bytes.
        len: u64,
    },
    /// DMA_MAP of a range that runs past the end of the file it maps.
    #[error("DMA_MAP of {iova:#x}+{size} at file offset {offset:#x} runs past the file's {file_len} bytes")]
    BeyondFile {
        /// IOVA of the map.
        iova: u64,
        /// Size of the map.
        size: u64,
        /// File offset of the map.
        offset: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// DMA_MAP without an fd (message-based DMA is not supported).
    #[error("DMA_MAP of {iova:#x}+{size} carries no file descriptor")]
    NoFd {
        /// IOVA of the map.
        iova: u64,
        /// Size of the map.
        size: u64,
    },
    /// DMA_MAP overlapping an existing map of the same connection.
    #[error("DMA_MAP of {iova:#x}+{size} overlaps an existing map")]
    Overlap {
        /// IOVA of the map.
        iova: u64,
        /// Size of the map.
        size: u64,
    },
    /// DMA_UNMAP that matches no map exactly.
    #[error("DMA_UNMAP of {iova:#x}+{size} matches no map")]
    NoSuchMap {
        /// IOVA of the unmap.
        iova: u64,
        /// Size of the unmap.
        size: u64,
    },
    /// Zero-sized or wrapping range.
    #[error("invalid DMA range {iova:#x}+{size}")]
    BadRange {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// The fd could not be mapped.
    #[error(transparent)]
    Map(#[from] MemError),
}

/// Device-side DMA access.
///
/// `read` and `write` move bulk data (frames, whole descriptors) and promise nothing about how the
/// bytes are stored. Descriptor fields that a driver in another process polls go through the word
/// methods: each is one aligned 32- or 64-bit access when the IOVA is aligned, so it is never torn.
///
/// # Publishing a write-back (RX and TX descriptors, admin queue entries, head write-back)
///
/// 1. write the data (frame bytes) with [`Dma::write`];
/// 2. write every other field of the write-back with [`Dma::write_u32`] / [`Dma::write_u64`] (or
///    `write`), in any order;
/// 3. LAST, store the word that carries the done bit (DD, a done DTYPE, the AQ DD flag) with
///    [`Dma::publish_u32`] (or [`Dma::publish_u64`]): one store, Release ordering, so a driver
///    that sees the bit and then reads with Acquire sees everything from steps 1 and 2, and every
///    read the device made of the descriptor and its buffers happened before it.
///
/// Never store bytes of the done word again after publishing it: the driver may already have
/// recycled the descriptor.
pub trait Dma {
    /// The whole map holding the byte at `iova`: its first IOVA and a view of it. `None` if no map
    /// holds it. Valid while the borrow lasts: maps change only under `&mut self`.
    fn region(&self, iova: u64) -> Option<(u64, DmaView<'_>)>;

    /// The window `[iova, iova + len)` if it lies inside one map, for many accesses with one
    /// translation. `None` otherwise (the caller records a fault).
    fn view(&self, iova: u64, len: u64) -> Option<DmaView<'_>> {
        let (base, map) = self.region(iova)?;
        map.sub(usize::try_from(iova - base).ok()?, usize::try_from(len).ok()?)
    }
    /// Reads `buf.len()` bytes at `iova`.
    fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Writes `data` at `iova`.
    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError>;

    /// Reads the little-endian `u32` at `iova`: one 32-bit load when `iova` is 4-byte aligned.
    fn read_u32(&mut self, iova: u64) -> Result<u32, DmaError> {
        let mut b = [0u8; 4];
        self.read(iova, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Reads the little-endian `u64` at `iova`: one 64-bit load when `iova` is 8-byte aligned.
    fn read_u64(&mut self, iova: u64) -> Result<u64, DmaError> {
        let mut b = [0u8; 8];
        self.read(iova, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Writes a little-endian `u32` at `iova` (no ordering): one 32-bit store when 4-byte aligned.
    fn write_u32(&mut self, iova: u64, val: u32) -> Result<(), DmaError> {
        self.write(iova, &val.to_le_bytes())
    }
    /// Writes a little-endian `u64` at `iova` (no ordering): one 64-bit store when 8-byte aligned.
    fn write_u64(&mut self, iova: u64, val: u64) -> Result<(), DmaError> {
        self.write(iova, &val.to_le_bytes())
    }
    /// Publishes a write-back: one 32-bit store of `val` at `iova` with Release ordering, after every
    /// earlier DMA read and write of this device (see the trait docs). Use it for the word holding
    /// the done bit, and make it the last store to that descriptor.
    fn publish_u32(&mut self, iova: u64, val: u32) -> Result<(), DmaError> {
        fence(Ordering::Release);
        self.write(iova, &val.to_le_bytes())
    }
    /// As [`Dma::publish_u32`], for a done bit that lives in a 64-bit word.
    fn publish_u64(&mut self, iova: u64, val: u64) -> Result<(), DmaError> {
        fence(Ordering::Release);
        self.write(iova, &val.to_le_bytes())
    }
}

/// A window of client memory inside one DMA map, translated once (see [`Dma::view`]).
///
/// Every access is bounds-checked against the window and goes through [`Mapping`]'s copies and
/// atomic word accesses, so a client writing the same memory concurrently cannot make the device
/// read a torn word or touch anything outside the window.
#[derive(Clone, Copy, Debug)]
pub struct DmaView<'a> {
    win: Window<'a>,
    /// While dirty-page logging is on for the map: its log and this window's offset in the map.
    log: Option<(&'a DirtyLog, usize)>,
    /// Unit tests: the window's IOVA and a log of its stores (see [`RecordingDma`]).
    #[cfg(test)]
    rec: Option<(u64, &'a std::cell::RefCell<Vec<Store>>)>,
}

impl<'a> DmaView<'a> {
    /// `len` bytes at `off` of `map`, if inside it.
    pub fn new(map: &'a Mapping, off: usize, len: usize) -> Option<Self> {
        Some(Self {
            win: map.sub(off, len)?,
            log: None,
            #[cfg(test)]
            rec: None,
        })
    }

    /// Logs a store of `n` bytes at `o` (unit tests only).
    #[cfg(test)]
    fn note(&self, o: usize, n: usize, order: Ordering) {
        if let Some((iova, log)) = self.rec {
            log.borrow_mut().push((iova + o as u64, n, order == Ordering::Release));
        }
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> usize {
        self.win.len()
    }

    /// True for an empty window.
    pub fn is_empty(&self) -> bool {
        self.win.is_empty()
    }

    /// The `len` bytes at `o` of this window, if inside it.
    #[inline]
    pub fn sub(&self, o: usize, len: usize) -> Option<DmaView<'a>> {
        Some(DmaView {
            win: self.win.sub(o, len)?,
            log: self.log.map(|(l, base)| (l, base + o)),
            #[cfg(test)]
            rec: self.rec.map(|(iova, log)| (iova + o as u64, log)),
        })
    }

    /// This view as one whose stores are known to mark no dirty log (so a burst loop carries
    /// no check for one), if its map logs none; in unit tests, also none if it records stores.
    #[inline(always)]
    pub fn unlogged(&self) -> Option<DmaView<'a>> {
        #[cfg(test)]
        if self.rec.is_some() {
            return None;
        }
        self.log.is_none().then_some(DmaView {
            win: self.win,
            log: None,
            #[cfg(test)]
            rec: None,
        })
    }

    /// Fills `n` bytes at `o` with `byte`. False (nothing written) if outside.
    #[inline]
    pub fn fill(&self, o: usize, n: usize, byte: u8) -> bool {
        #[cfg(test)]
        self.note(o, n, Ordering::Relaxed);
        self.win.fill(o, n, byte) && self.dirtied(o, n)
    }

    /// Records a store of `n` bytes at `o` in the map's dirty log, if logging is on. Always true
    /// (so it chains after a store that succeeded).
    #[inline]
    fn dirtied(&self, o: usize, n: usize) -> bool {
        if let Some((log, base)) = self.log {
            log.mark(base + o, n);
        }
        true
    }

    /// Starts loading the cache line of byte `o` (a hint; see [`Window::prefetch`]).
    #[inline]
    pub fn prefetch(&self, o: usize) {
        self.win.prefetch(o)
    }

    /// Little-endian `u32` at `o` (one atomic load when aligned; see [`Window::load_u32`]).
    #[inline]
    pub fn load_u32(&self, o: usize, order: Ordering) -> Option<u32> {
        self.win.load_u32(o, order)
    }

    /// Little-endian `u64` at `o` (one atomic load when aligned).
    #[inline]
    pub fn load_u64(&self, o: usize, order: Ordering) -> Option<u64> {
        self.win.load_u64(o, order)
    }

    /// Little-endian `u32` store at `o` (one atomic store when aligned). False if outside.
    #[inline]
    pub fn store_u32(&self, o: usize, val: u32, order: Ordering) -> bool {
        #[cfg(test)]
        self.note(o, 4, order);
        self.win.store_u32(o, val, order) && self.dirtied(o, 4)
    }

    /// Little-endian `u64` store at `o` (one atomic store when aligned). False if outside.
    #[inline]
    pub fn store_u64(&self, o: usize, val: u64, order: Ordering) -> bool {
        #[cfg(test)]
        self.note(o, 8, order);
        self.win.store_u64(o, val, order) && self.dirtied(o, 8)
    }

    /// The two little-endian quadwords at `o` (see [`Window::load_u64_pair`]).
    #[inline]
    pub fn load_u64_pair(&self, o: usize) -> Option<(u64, u64)> {
        self.win.load_u64_pair(o)
    }

    /// `a` at `o`, then `b` at `o + 8` with `order` (see [`Window::store_u64_pair`]). False if
    /// outside.
    #[inline]
    pub fn store_u64_pair(&self, o: usize, a: u64, b: u64, order: Ordering) -> bool {
        #[cfg(test)]
        {
            self.note(o, 8, Ordering::Relaxed);
            self.note(o + 8, 8, order);
        }
        self.win.store_u64_pair(o, a, b, order) && self.dirtied(o, 16)
    }

    /// `pairs` into consecutive 16-byte slots from `o` (see [`Window::store_u64_pairs`]). False
    /// (nothing stored) if the run is outside.
    #[inline]
    pub fn store_u64_pairs(&self, o: usize, pairs: &[(u64, u64)], order: Ordering) -> bool {
        #[cfg(test)]
        if o.checked_add(16 * pairs.len()).is_some_and(|end| end <= self.len()) {
            for i in 0..pairs.len() {
                self.note(o + 16 * i, 8, Ordering::Relaxed);
                self.note(o + 16 * i + 8, 8, order);
            }
        }
        self.win.store_u64_pairs(o, pairs, order) && self.dirtied(o, 16 * pairs.len())
    }

    /// Copies `buf.len()` bytes at `o` into `buf`. False (nothing copied) if outside.
    #[inline]
    pub fn read(&self, o: usize, buf: &mut [u8]) -> bool {
        self.win.read(o, buf)
    }

    /// Copies `data` to `o`. False (nothing written) if outside.
    #[inline]
    pub fn write(&self, o: usize, data: &[u8]) -> bool {
        #[cfg(test)]
        self.note(o, data.len(), Ordering::Relaxed);
        self.win.write(o, data) && self.dirtied(o, data.len())
    }

    /// Copies `n` bytes at `src_o` of `src` to `o` of this window (client memory to client
    /// memory, no staging). False (nothing copied) if either range is outside its window.
    #[inline]
    pub fn copy_from(&self, o: usize, src: &DmaView<'_>, src_o: usize, n: usize) -> bool {
        #[cfg(test)]
        self.note(o, n, Ordering::Relaxed);
        self.win.copy_from(o, &src.win, src_o, n) && self.dirtied(o, n)
    }
}

/// The map an [`Xlate`] used last, as a burst loop holds it in registers (see
/// [`Xlate::region`]): a translation inside it is a subtraction and a compare, and its views
/// carry no dirty log (a region is only handed out while the map logs none).
#[derive(Clone, Copy, Debug)]
pub struct Region<'d> {
    base: u64,
    win: Window<'d>,
}

impl<'d> Region<'d> {
    /// The window `[iova, iova + len)` if it lies inside this map.
    #[inline(always)]
    pub fn view(&self, iova: u64, len: usize) -> Option<DmaView<'d>> {
        // An address below the base wraps to an offset past any window: `sub` refuses it.
        let o = usize::try_from(iova.wrapping_sub(self.base)).ok()?;
        Some(DmaView {
            win: self.win.sub(o, len)?,
            log: None,
            #[cfg(test)]
            rec: None,
        })
    }
}

/// Translates the addresses of one poll with as few [`Dma`] calls as possible: the map the last
/// address fell in is kept, and an address inside it becomes a sub-window with no call at all
/// (the runtime's shared memory is one map, so a whole burst of buffers costs one lookup).
/// The same bounds hold as for [`Dma::view`]: a window never spans two maps.
pub struct Xlate<'d> {
    dma: &'d dyn Dma,
    last: Option<(u64, DmaView<'d>)>,
}

impl<'d> Xlate<'d> {
    /// A translator over `dma` for one poll.
    pub fn new(dma: &'d dyn Dma) -> Self {
        Self { dma, last: None }
    }

    /// The window `[iova, iova + len)` if it lies inside one map.
    #[inline]
    pub fn view(&mut self, iova: u64, len: u64) -> Option<DmaView<'d>> {
        if let Some((base, map)) = self.last {
            if let (Some(o), Ok(len)) = (iova.checked_sub(base), usize::try_from(len)) {
                if let Some(v) = usize::try_from(o).ok().and_then(|o| map.sub(o, len)) {
                    return Some(v);
                }
            }
        }
        self.miss(iova, len)
    }

    /// The map the last translation fell in, as a [`Region`], unless it logs dirty pages (a
    /// store through a region marks nothing) or, in unit tests, records its stores.
    #[inline]
    pub fn region(&self) -> Option<Region<'d>> {
        let (base, map) = self.last?;
        #[cfg(test)]
        if map.rec.is_some() {
            return None;
        }
        map.log.is_none().then_some(Region { base, win: map.win })
    }

    #[cold]
    fn miss(&mut self, iova: u64, len: u64) -> Option<DmaView<'d>> {
        let (base, map) = self.dma.region(iova)?;
        self.last = Some((base, map));
        map.sub(usize::try_from(iova - base).ok()?, usize::try_from(len).ok()?)
    }
}

struct DmaEntry {
    conn: ConnId,
    iova: u64,
    size: u64,
    map: Mapping,
    /// The pages the device wrote, while the connection logs dirty pages.
    log: Option<Box<DirtyLog>>,
}

impl DmaEntry {
    fn view(&self, off: usize, len: usize) -> Option<DmaView<'_>> {
        let mut v = DmaView::new(&self.map, off, len)?;
        v.log = self.log.as_deref().map(|l| (l, off));
        Some(v)
    }

    #[inline]
    fn dirtied(&self, off: usize, n: usize) -> bool {
        if let Some(l) = &self.log {
            l.mark(off, n);
        }
        true
    }
}

/// The pages of one DMA map the device has written since logging started or the last report
/// (vfio DMA_LOGGING_START / REPORT): a bit per page. A store checks its page's bit before
/// setting it, so a page written again costs a load, not an atomic read-modify-write.
#[derive(Debug)]
pub struct DirtyLog {
    shift: u32,
    bits: Box<[AtomicU64]>,
}

impl DirtyLog {
    fn new(size: u64, page_shift: u32) -> DirtyLog {
        let pages = size.div_ceil(1 << page_shift);
        DirtyLog { shift: page_shift, bits: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Marks the pages of `n` bytes at `off` of the map.
    #[inline]
    fn mark(&self, off: usize, n: usize) {
        if n == 0 {
            return;
        }
        let (first, last) = (off >> self.shift, (off + n - 1) >> self.shift);
        for p in first..=last {
            if let Some(w) = self.bits.get(p / 64) {
                let bit = 1u64 << (p % 64);
                if w.load(Ordering::Relaxed) & bit == 0 {
                    w.fetch_or(bit, Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether page `p` of the map was written; clears it.
    fn take(&self, p: u64) -> bool {
        let Some(w) = self.bits.get((p / 64) as usize) else { return false };
        let bit = 1u64 << (p % 64);
        w.fetch_and(!bit, Ordering::Relaxed) & bit != 0
    }
}

/// Why a dirty-page request was refused (each maps to an errno for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirtyError {
    /// Page size not a power of two in [4 KiB, 1 GiB].
    #[error("dirty page size {0:#x} is not a power of two between 4 KiB and 1 GiB")]
    PageSize(u64),
    /// Logging is already on (START twice) or not on (REPORT/STOP without START).
    #[error("dirty page logging is {}", if *.0 { "already on" } else { "not on" })]
    State(bool),
    /// The report's range is not inside the logged ranges, or not aligned to its page size (a
    /// power of two).
    #[error("report of {iova:#x}+{len:#x} is outside the logged ranges or not aligned to its page size")]
    Range {
        /// Start IOVA.
        iova: u64,
        /// Length.
        len: u64,
    },
}

/// One connection's dirty-page logging: page size and the IOVA ranges asked for (empty: all).
#[derive(Debug, Clone)]
struct Logging {
    shift: u32,
    ranges: Vec<(u64, u64)>,
}

/// The union of every live connection's DMA maps.
#[derive(Default)]
pub struct DmaTable {
    maps: Vec<DmaEntry>,
    /// Connections logging dirty pages.
    logging: std::collections::HashMap<ConnId, Logging>,
    /// Index of the map that translated the last access: a data path touches one or two maps (the
    /// runtime's shared memory), so this hits nearly always. Only a hint: checked on every use.
    last: Cell<usize>,
}

impl std::fmt::Debug for DmaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.maps.iter().map(|m| (m.conn, m.iova, m.size))).finish()
    }
}

impl DmaTable {
    /// Adds a map for `conn`: `size` bytes of `file` at `offset` appear at `iova`.
    pub fn map(&mut self, conn: ConnId, iova: u64, size: u64, file: Option<File>, offset: u64) -> Result<(), DmaError> {
        let end = iova.checked_add(size).filter(|_| size > 0).ok_or(DmaError::BadRange { iova, size })?;
        let file = file.ok_or(DmaError::NoFd { iova, size })?;
        // A map past the end of a regular file would turn a device access into SIGBUS: refuse it.
        // (A client that shrinks the file later can still do that; hugetlbfs and the runtime's
        // files are never shrunk while mapped.)
        if let Ok(meta) = file.metadata() {
            if meta.is_file() && offset.checked_add(size).is_none_or(|end| end > meta.len()) {
                return Err(DmaError::BeyondFile { iova, size, offset, file_len: meta.len() });
            }
        }
        if self.maps.iter().any(|m| m.conn == conn && iova < m.iova + m.size && m.iova < end) {
            return Err(DmaError::Overlap { iova, size });
        }
        let map = Mapping::map_file(&file, offset, size)?;
        let log = self.logging.get(&conn).map(|l| Box::new(DirtyLog::new(size, l.shift)));
        self.maps.push(DmaEntry { conn, iova, size, map, log });
        Ok(())
    }

    /// Starts logging the pages the device writes in `conn`'s maps, at `page_size` granularity,
    /// for `ranges` (IOVA, length; empty means every map, present and future).
    pub fn dirty_start(&mut self, conn: ConnId, page_size: u64, ranges: Vec<(u64, u64)>) -> Result<(), DirtyError> {
        if !page_size.is_power_of_two() || !(4096..=1 << 30).contains(&page_size) {
            return Err(DirtyError::PageSize(page_size));
        }
        if self.logging.contains_key(&conn) {
            return Err(DirtyError::State(true));
        }
        let shift = page_size.trailing_zeros();
        for m in self.maps.iter_mut().filter(|m| m.conn == conn) {
            m.log = Some(Box::new(DirtyLog::new(m.size, shift)));
        }
        self.logging.insert(conn, Logging { shift, ranges });
        Ok(())
    }

    /// Stops `conn`'s logging and forgets what was logged.
    pub fn dirty_stop(&mut self, conn: ConnId) -> Result<(), DirtyError> {
        self.logging.remove(&conn).ok_or(DirtyError::State(false))?;
        for m in self.maps.iter_mut().filter(|m| m.conn == conn) {
            m.log = None;
        }
        Ok(())
    }

    /// The pages of `[iova, iova + len)` the device wrote in `conn`'s maps since logging
    /// started or the last report of them, one bit per `page_size` page (LSB first) in whole
    /// little-endian u64 words (as linux/vfio.h's report bitmap, and libvfio-user, size it),
    /// cleared by the report. Pages no map of `conn` covers read clean. The report's page size
    /// need not be the logging's (the spec: it "doesn't have to match"): a larger one is dirty
    /// if any logged page in it is, a smaller one if the logged page holding it is.
    pub fn dirty_report(&self, conn: ConnId, iova: u64, len: u64, page_size: u64) -> Result<Vec<u8>, DirtyError> {
        let l = self.logging.get(&conn).ok_or(DirtyError::State(false))?;
        let end = iova.checked_add(len).filter(|_| len > 0);
        let inside = |a: u64, e: u64| l.ranges.is_empty() || l.ranges.iter().any(|&(r, n)| a >= r && e <= r + n);
        // The last report page must end inside the address space too (a page past 2^64 - 1 is
        // refused, not wrapped).
        let last_page_end = end.and_then(|e| e.div_ceil(page_size.max(1)).checked_mul(page_size));
        let ok = page_size.is_power_of_two()
            && iova.is_multiple_of(page_size)
            && last_page_end.is_some()
            && end.is_some_and(|e| inside(iova, e));
        let (Some(end), true) = (end, ok) else {
            return Err(DirtyError::Range { iova, len });
        };
        let pages = len.div_ceil(page_size);
        let mut bitmap = vec![0u8; (pages.div_ceil(64) * 8) as usize];
        for m in self.maps.iter().filter(|m| m.conn == conn && m.iova < end && iova < m.iova + m.size) {
            let Some(log) = &m.log else { continue };
            let mut taken: Option<(u64, bool)> = None;
            // Map pages are counted from the map's start; a map need not start on a page.
            for p in 0..pages {
                let a = iova + p * page_size;
                if a + page_size <= m.iova || a >= m.iova + m.size {
                    continue;
                }
                let first = a.saturating_sub(m.iova) >> l.shift;
                let last = (a + page_size - 1).min(m.iova + m.size - 1).saturating_sub(m.iova) >> l.shift;
                let mut d = false;
                for mp in first..=last {
                    // Report pages smaller than the logged ones share a logged page: it is
                    // taken (read and cleared) once, by the first, and its state reused.
                    let v = match taken {
                        Some((t, v)) if t == mp => v,
                        _ => log.take(mp),
                    };
                    taken = Some((mp, v));
                    d |= v;
                }
                if d {
                    bitmap[(p / 8) as usize] |= 1 << (p % 8);
                }
            }
        }
        Ok(bitmap)
    }

    /// Removes the map of `conn` that matches `iova`/`size` exactly.
    pub fn unmap(&mut self, conn: ConnId, iova: u64, size: u64) -> Result<(), DmaError> {
        let pos = self
            .maps
            .iter()
            .position(|m| m.conn == conn && m.iova == iova && m.size == size)
            .ok_or(DmaError::NoSuchMap { iova, size })?;
        self.maps.swap_remove(pos);
        Ok(())
    }

    /// Drops every map of `conn` (the connection closed). Returns how many were dropped.
    pub fn drop_conn(&mut self, conn: ConnId) -> usize {
        let before = self.maps.len();
        self.logging.remove(&conn);
        self.maps.retain(|m| m.conn != conn);
        before - self.maps.len()
    }

    /// Number of live maps.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True when no map is live.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// The map holding all of `[iova, iova + len)` and the offset of `iova` in it.
    #[inline]
    fn find(&self, iova: u64, len: usize) -> Option<(&DmaEntry, usize)> {
        let end = iova.checked_add(len as u64)?;
        let inside = |m: &DmaEntry| iova >= m.iova && end <= m.iova + m.size;
        let i = match self.maps.get(self.last.get()) {
            Some(m) if inside(m) => self.last.get(),
            _ => {
                let i = self.maps.iter().position(inside)?;
                self.last.set(i);
                i
            }
        };
        let m = &self.maps[i];
        Some((m, (iova - m.iova) as usize))
    }
}

impl Dma for DmaTable {
    fn region(&self, iova: u64) -> Option<(u64, DmaView<'_>)> {
        let (m, off) = self.find(iova, 1)?;
        Some((iova - off as u64, m.view(0, m.map.len())?))
    }

    fn view(&self, iova: u64, len: u64) -> Option<DmaView<'_>> {
        let len = usize::try_from(len).ok()?;
        let (m, off) = self.find(iova, len)?;
        m.view(off, len)
    }

    fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        match self.find(iova, buf.len()) {
            Some((m, off)) if m.map.read(off, buf) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: buf.len() as u64 }),
        }
    }

    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        match self.find(iova, data.len()) {
            Some((m, off)) if m.map.write(off, data) && m.dirtied(off, data.len()) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: data.len() as u64 }),
        }
    }

    fn read_u32(&mut self, iova: u64) -> Result<u32, DmaError> {
        self.find(iova, 4)
            .and_then(|(m, off)| m.map.load_u32(off, Ordering::Relaxed))
            .ok_or(DmaError::Unmapped { iova, len: 4 })
    }

    fn read_u64(&mut self, iova: u64) -> Result<u64, DmaError> {
        self.find(iova, 8)
            .and_then(|(m, off)| m.map.load_u64(off, Ordering::Relaxed))
            .ok_or(DmaError::Unmapped { iova, len: 8 })
    }

    fn write_u32(&mut self, iova: u64, val: u32) -> Result<(), DmaError> {
        match self.find(iova, 4) {
            Some((m, off)) if m.map.store_u32(off, val, Ordering::Relaxed) && m.dirtied(off, 4) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 4 }),
        }
    }

    fn write_u64(&mut self, iova: u64, val: u64) -> Result<(), DmaError> {
        match self.find(iova, 8) {
            Some((m, off)) if m.map.store_u64(off, val, Ordering::Relaxed) && m.dirtied(off, 8) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 8 }),
        }
    }

    fn publish_u32(&mut self, iova: u64, val: u32) -> Result<(), DmaError> {
        match self.find(iova, 4) {
            Some((m, off)) if m.map.store_u32(off, val, Ordering::Release) && m.dirtied(off, 4) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 4 }),
        }
    }

    fn publish_u64(&mut self, iova: u64, val: u64) -> Result<(), DmaError> {
        match self.find(iova, 8) {
            Some((m, off)) if m.map.store_u64(off, val, Ordering::Release) && m.dirtied(off, 8) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 8 }),
        }
    }
}

/// A DMA window `[base, base + len)` of one memfd, for unit tests and simulations.
#[derive(Debug)]
pub struct FakeDma {
    /// First IOVA of the window.
    pub base: u64,
    /// The memory.
    pub mem: Mapping,
}

impl FakeDma {
    /// A zeroed window of `len` bytes at `base`.
    ///
    /// # Panics
    /// If the memfd cannot be created (test helper).
    pub fn new(base: u64, len: usize) -> Self {
        Self { base, mem: Mapping::memfd("fake-dma", len).expect("memfd for FakeDma") }
    }

    fn offset(&self, iova: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(iova.checked_sub(self.base)?).ok()?;
        (off.checked_add(len)? <= self.mem.len()).then_some(off)
    }
}

impl Dma for FakeDma {
    fn region(&self, iova: u64) -> Option<(u64, DmaView<'_>)> {
        self.offset(iova, 1)?;
        Some((self.base, DmaView::new(&self.mem, 0, self.mem.len())?))
    }

    fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        match self.offset(iova, buf.len()) {
            Some(off) if self.mem.read(off, buf) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: buf.len() as u64 }),
        }
    }

    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        match self.offset(iova, data.len()) {
            Some(off) if self.mem.write(off, data) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: data.len() as u64 }),
        }
    }
}

/// One store a [`RecordingDma`] saw: address, length, Release ordering.
#[cfg(test)]
pub(crate) type Store = (u64, usize, bool);

/// A [`FakeDma`] that records every store, through the trait or through views, for tests of
/// write-back ordering.
#[cfg(test)]
pub(crate) struct RecordingDma {
    pub inner: FakeDma,
    pub stores: std::cell::RefCell<Vec<Store>>,
}

#[cfg(test)]
impl RecordingDma {
    pub fn new(inner: FakeDma) -> Self {
        Self { inner, stores: Default::default() }
    }

    /// The stores that touched `[from, from + len)`, in order.
    pub fn touching(&self, from: u64, len: u64) -> Vec<Store> {
        self.stores.borrow().iter().filter(|(a, n, _)| *a < from + len && from < *a + *n as u64).copied().collect()
    }

    /// Every store, in order.
    pub fn all(&self) -> Vec<Store> {
        self.stores.borrow().clone()
    }
}

#[cfg(test)]
impl Dma for RecordingDma {
    fn region(&self, iova: u64) -> Option<(u64, DmaView<'_>)> {
        let (base, mut v) = self.inner.region(iova)?;
        v.rec = Some((base, &self.stores));
        Some((base, v))
    }
    fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.inner.read(iova, buf)
    }
    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        self.stores.get_mut().push((iova, data.len(), false));
        self.inner.write(iova, data)
    }
    fn publish_u32(&mut self, iova: u64, val: u32) -> Result<(), DmaError> {
        self.stores.get_mut().push((iova, 4, true));
        self.inner.write(iova, &val.to_le_bytes())
    }
    fn publish_u64(&mut self, iova: u64, val: u64) -> Result<(), DmaError> {
        self.stores.get_mut().push((iova, 8, true));
        self.inner.write(iova, &val.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd_file(len: usize) -> File {
        let m = Mapping::memfd("dma-test", len).unwrap();
        let fd = m.raw_fd().unwrap();
        // Re-open through /proc so the file outlives the mapping.
        let f = File::options().read(true).write(true).open(format!("/proc/self/fd/{fd}")).unwrap();
        drop(m);
        f
    }

    #[test]
    fn table_translates_inside_maps_only() {
        let mut t = DmaTable::default();
        t.map(1, 0x10_0000, 0x2000, Some(memfd_file(0x3000)), 0x1000).unwrap();
        t.write(0x10_0ff0, &[7; 16]).unwrap();
        let mut b = [0u8; 16];
        t.read(0x10_0ff0, &mut b).unwrap();
        assert_eq!(b, [7; 16]);
        assert!(matches!(t.read(0x10_1ff8, &mut b), Err(DmaError::Unmapped { .. })));
        assert!(t.write(u64::MAX - 2, &[0; 8]).is_err());
        assert!(matches!(t.map(1, 0x10_1000, 0x1000, Some(memfd_file(0x1000)), 0), Err(DmaError::Overlap { .. })));
        assert!(matches!(t.unmap(1, 0x10_0000, 0x1000), Err(DmaError::NoSuchMap { .. })));
        assert!(matches!(t.map(2, 0, 0x1000, None, 0), Err(DmaError::NoFd { .. })));
        // Past the end of the file (0x1000 bytes): refused, nothing mapped.
        let before = t.len();
        assert!(matches!(t.map(3, 0x40_0000, 0x2000, Some(memfd_file(0x1000)), 0), Err(DmaError::BeyondFile { .. })));
        assert!(matches!(t.map(3, 0x40_0000, 0x1000, Some(memfd_file(0x1000)), 8), Err(DmaError::BeyondFile { .. })));
        assert_eq!(t.len(), before);
        t.unmap(1, 0x10_0000, 0x2000).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn word_accesses_translate_like_bulk_ones() {
        let mut t = DmaTable::default();
        t.map(1, 0x10_0000, 0x1000, Some(memfd_file(0x1000)), 0).unwrap();
        t.map(2, 0x20_0000, 0x1000, Some(memfd_file(0x1000)), 0).unwrap();
        t.write_u64(0x10_0008, 0x1122_3344_5566_7788).unwrap();
        t.write_u32(0x20_0004, 7).unwrap();
        t.publish_u32(0x10_0010, 0xdd).unwrap();
        t.publish_u64(0x20_0ff8, 9).unwrap();
        assert_eq!(t.read_u64(0x10_0008).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(t.read_u32(0x10_000c).unwrap(), 0x1122_3344);
        assert_eq!(t.read_u32(0x20_0004).unwrap(), 7);
        assert_eq!(t.read_u32(0x10_0010).unwrap(), 0xdd);
        assert_eq!(t.read_u64(0x20_0ff8).unwrap(), 9);
        // Unaligned IOVAs work (byte path); ranges crossing a map's end or outside every map fault.
        t.write_u32(0x10_0003, 0xabcd).unwrap();
        assert_eq!(t.read_u32(0x10_0003).unwrap(), 0xabcd);
        assert!(matches!(t.read_u64(0x10_0ffc), Err(DmaError::Unmapped { len: 8, .. })));
        assert!(t.publish_u32(0x30_0000, 1).is_err());
        assert!(t.write_u64(u64::MAX - 3, 1).is_err());
        // The cached map is only a hint: after its connection is gone the range faults.
        t.drop_conn(2);
        assert!(t.read_u32(0x20_0004).is_err());
        assert_eq!(t.read_u32(0x10_0010).unwrap(), 0xdd);
        // FakeDma gets the same words through the provided methods.
        let mut f = FakeDma::new(0x1000, 64);
        f.publish_u32(0x1008, 0x0102_0304).unwrap();
        let mut b4 = [0u8; 4];
        assert!(f.mem.read(8, &mut b4));
        assert_eq!(b4, [4, 3, 2, 1]);
        assert_eq!(f.read_u64(0x1008).unwrap(), 0x0102_0304);
        assert!(f.write_u32(0x103e, 0).is_err());
    }

    #[test]
    fn dropping_a_connection_drops_its_maps_only() {
        let mut t = DmaTable::default();
        t.map(1, 0, 0x1000, Some(memfd_file(0x1000)), 0).unwrap();
        t.map(2, 0x1000, 0x1000, Some(memfd_file(0x1000)), 0).unwrap();
        assert_eq!(t.drop_conn(1), 1);
        assert_eq!(t.len(), 1);
        assert!(t.read(0, &mut [0u8; 4]).is_err());
        assert!(t.read(0x1000, &mut [0u8; 4]).is_ok());
    }

    #[test]
    fn dirty_logging_reports_the_pages_the_device_wrote_once() {
        let mut t = DmaTable::default();
        t.map(1, 0x10_0000, 0x4000, Some(memfd_file(0x4000)), 0).unwrap();
        t.map(2, 0x10_0000, 0x4000, Some(memfd_file(0x4000)), 0).unwrap();
        assert_eq!(t.dirty_report(1, 0x10_0000, 0x4000, 4096), Err(DirtyError::State(false)));
        assert_eq!(t.dirty_start(1, 3000, vec![]), Err(DirtyError::PageSize(3000)));
        t.dirty_start(1, 4096, vec![]).unwrap();
        assert_eq!(t.dirty_start(1, 4096, vec![]), Err(DirtyError::State(true)));
        // Through a view (the data path), a sub-window of it, and a word store.
        let v = t.view(0x10_0000, 0x4000).unwrap();
        assert!(v.write(0x10, &[1, 2, 3]));
        assert!(v.sub(0x2ffe, 4).unwrap().store_u32(0, 7, Ordering::Relaxed), "spans pages 2 and 3");
        assert!(t.read(0x10_1000, &mut [0u8; 4]).is_ok(), "reads dirty nothing");
        // A later map of the connection is logged too; another connection's maps are not.
        t.map(1, 0x20_0000, 0x1000, Some(memfd_file(0x1000)), 0).unwrap();
        t.write_u32(0x20_0000, 9).unwrap();
        assert_eq!(t.dirty_report(1, 0x10_0000, 0x4000, 4096), Ok(vec![0b1101, 0, 0, 0, 0, 0, 0, 0]), "u64 words");
        assert_eq!(t.dirty_report(1, 0x10_0000, 0x4000, 4096), Ok(vec![0; 8]), "a report clears");
        assert_eq!(t.dirty_report(1, 0x20_0000, 0x1000, 4096), Ok(vec![1, 0, 0, 0, 0, 0, 0, 0]));
        // Another page size than the logging's: larger pages are dirty if any logged page in
        // them is, smaller ones if the logged page holding them is.
        let v = t.view(0x10_0000, 0x4000).unwrap();
        assert!(v.write(0x10, &[1]) && v.write(0x3000, &[1]));
        assert_eq!(t.dirty_report(1, 0x10_0000, 0x4000, 8192), Ok(vec![0b11, 0, 0, 0, 0, 0, 0, 0]), "8 KiB pages");
        assert!(t.view(0x10_0000, 0x4000).unwrap().write(0x1000, &[1]));
        assert_eq!(t.dirty_report(1, 0x10_0000, 0x4000, 2048), Ok(vec![0b1100, 0, 0, 0, 0, 0, 0, 0]), "2 KiB pages");
        assert_eq!(t.dirty_report(1, 0x10_0000, 0x4000, 4096), Ok(vec![0; 8]), "both cleared the logged pages");
        assert_eq!(t.dirty_report(1, 0x10_0000, 0x4000, 3000), Err(DirtyError::Range { iova: 0x10_0000, len: 0x4000 }));
        // A last page past the end of the address space is refused, not wrapped around.
        assert_eq!(t.dirty_report(1, 1 << 63, 1, 1 << 63), Err(DirtyError::Range { iova: 1 << 63, len: 1 }));
        assert_eq!(t.dirty_report(1, 0x10_1000, 0x4000, 8192), Err(DirtyError::Range { iova: 0x10_1000, len: 0x4000 }));
        assert_eq!(t.dirty_report(2, 0x10_0000, 0x4000, 4096), Err(DirtyError::State(false)));
        t.dirty_stop(1).unwrap();
        assert_eq!(t.dirty_stop(1), Err(DirtyError::State(false)));
        // Ranges limit what may be reported.
        t.dirty_start(1, 4096, vec![(0x10_0000, 0x2000)]).unwrap();
        assert!(t.dirty_report(1, 0x10_0000, 0x2000, 4096).is_ok());
        assert!(t.dirty_report(1, 0x10_0000, 0x3000, 4096).is_err(), "beyond the logged range");
    }
}
