//! `Bar`: the one MMIO accessor drivers use.
//!
//! An offset inside an mmapped (sparse) area is a volatile load or store on the mapping: a
//! doorbell write costs a memory write, as on hardware. Any other offset is trapped: a
//! `region_read`/`region_write` through the transport (a socket round trip over vfio-user, a
//! `pread`/`pwrite` with kernel VFIO). Every wait has a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::{DeviceIo, RegionMap};
use crate::VfioError;

/// MMIO access to one region (BAR) of a device.
pub struct Bar {
    // Fields drop in declaration order: the mappings go before the device, because a mapping
    // holds the device file open; with kernel VFIO a device closed with its BAR still mapped is
    // not released, and its group cannot leave the container (UNSET_CONTAINER is EBUSY).
    map: RegionMap,
    dev: Arc<dyn DeviceIo>,
    index: u32,
    size: u64,
    dead_logged: AtomicBool,
}

impl std::fmt::Debug for Bar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bar")
            .field("device", &self.dev.name())
            .field("index", &self.index)
            .field("size", &self.size)
            .field("mapped", &self.map.areas().collect::<Vec<_>>())
            .finish()
    }
}

impl Bar {
    /// A BAR over region `index` of `dev`, using the areas already mapped in `map`.
    pub fn new(dev: Arc<dyn DeviceIo>, index: u32, map: RegionMap) -> Result<Bar, VfioError> {
        let size = dev
            .regions()
            .get(index as usize)
            .map(|r| r.size)
            .filter(|&s| s > 0)
            .ok_or_else(|| VfioError::NoSuchRegion { device: dev.name().to_string(), index })?;
        for area in map.areas() {
            if !matches!(area.offset.checked_add(area.size), Some(end) if end <= size) {
                return Err(VfioError::OutOfRange {
                    device: dev.name().to_string(),
                    index,
                    offset: area.offset,
                    len: area.size,
                    size,
                });
            }
        }
        Ok(Bar { dev, index, size, map, dead_logged: AtomicBool::new(false) })
    }

    /// Map region `index` of `dev` (every mmap-able area) and build its `Bar`.
    pub fn open(dev: Arc<dyn DeviceIo>, index: u32) -> Result<Bar, VfioError> {
        let map = dev.map_region(index)?;
        Bar::new(dev, index, map)
    }

    /// The device this BAR belongs to.
    pub fn device(&self) -> &Arc<dyn DeviceIo> {
        &self.dev
    }

    /// The region index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The region size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn check_aligned(&self, off: u64) -> Result<(), VfioError> {
        if off & 3 != 0 {
            return Err(VfioError::Misaligned { device: self.dev.name().to_string(), offset: off, width: 4 });
        }
        Ok(())
    }

    /// The address of the 32-bit register at `off` if it lies in an mmapped area, for drivers
    /// that batch doorbell writes. Valid as long as this `Bar` lives; access it volatile.
    pub fn mapped_ptr(&self, off: u64) -> Option<*mut u32> {
        if off & 3 != 0 {
            return None;
        }
        let (m, inner) = self.map.find(off, 4)?;
        // `find` checked inner + 4 <= m.len(); mmap returns page-aligned bases, so base + inner
        // is 4-byte aligned because `off` and the area offset (page-sized) are.
        let base = m.as_ptr() as usize;
        let addr = base.checked_add(inner)?;
        (addr & 3 == 0).then_some(m.as_ptr().wrapping_add(inner).cast::<u32>())
    }

    /// Read the 32-bit register at `off`, reporting transport errors.
    pub fn try_read32(&self, off: u64) -> Result<u32, VfioError> {
        self.check_aligned(off)?;
        if let Some(p) = self.mapped_ptr(off) {
            // SAFETY: `mapped_ptr` returned a 4-byte aligned pointer with 4 bytes inside a live
            // shared mapping owned by `self.map`; volatile because the device changes it.
            return Ok(u32::from_le(unsafe { p.read_volatile() }));
        }
        let mut b = [0u8; 4];
        self.dev.region_read(self.index, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Write the 32-bit register at `off`, reporting transport errors.
    pub fn try_write32(&self, off: u64, value: u32) -> Result<(), VfioError> {
        self.check_aligned(off)?;
        if let Some(p) = self.mapped_ptr(off) {
            // SAFETY: as in `try_read32`: aligned, in bounds, mapping alive; volatile so the store
            // is neither elided nor merged.
            unsafe { p.write_volatile(value.to_le()) };
            return Ok(());
        }
        self.dev.region_write(self.index, off, &value.to_le_bytes())
    }

    /// Writes the register at `off` as a posted write ([`DeviceIo::region_write_posted`]):
    /// over vfio-user a trapped write then costs a message, not a round trip; the next read of
    /// this device flushes it, as a PCI read does. For writes a read follows (an interrupt's
    /// acknowledgement before the status read); a failed access is dropped and logged once.
    pub fn write32_posted(&self, off: u64, value: u32) {
        let r = self.check_aligned(off).and_then(|()| match self.mapped_ptr(off) {
            Some(_) => self.try_write32(off, value),
            None => self.dev.region_write_posted(self.index, off, &value.to_le_bytes()),
        });
        if let Err(e) = r {
            self.log_once("register write", off, &e);
        }
    }

    /// Posted writes of `writes` (offset, value) and then a read of the register at `off`,
    /// which sees them ([`DeviceIo::posted_writes_then_read`]: one round trip over vfio-user
    /// for all of them). An interrupt's acknowledgement and the status read after it. If any of
    /// them is an mmapped offset (a store, which a message cannot order), each write is done
    /// and waited for in turn instead. A failed access reads `0xFFFF_FFFF`, logged once.
    pub fn read32_after_posted(&self, writes: &[(u64, u32)], off: u64) -> u32 {
        let r = (|| {
            self.check_aligned(off)?;
            for &(o, _) in writes {
                self.check_aligned(o)?;
            }
            if self.mapped_ptr(off).is_some() || writes.iter().any(|&(o, _)| self.mapped_ptr(o).is_some()) {
                for &(o, v) in writes {
                    self.try_write32(o, v)?;
                }
                return self.try_read32(off);
            }
            let trapped: Vec<(u32, u64, [u8; 4])> =
                writes.iter().map(|&(o, v)| (self.index, o, v.to_le_bytes())).collect();
            let w: Vec<(u32, u64, &[u8])> = trapped.iter().map(|(i, o, d)| (*i, *o, &d[..])).collect();
            let mut b = [0u8; 4];
            self.dev.posted_writes_then_read(&w, self.index, off, &mut b)?;
            Ok(u32::from_le_bytes(b))
        })();
        r.unwrap_or_else(|e: VfioError| {
            self.log_once("register read", off, &e);
            u32::MAX
        })
    }

    /// Reads the `N`-byte register at `off` (`N` = 1 or 2, naturally aligned): virtio's common
    /// configuration has 8- and 16-bit fields a 32-bit access would spill over.
    fn try_read_small<const N: usize>(&self, off: u64) -> Result<[u8; N], VfioError> {
        const { assert!(N == 1 || N == 2) };
        if !off.is_multiple_of(N as u64) {
            return Err(VfioError::Misaligned { device: self.dev.name().to_string(), offset: off, width: N as u8 });
        }
        let mut b = [0u8; N];
        if let Some((m, inner)) = self.map.find(off, N as u64) {
            let p = m.as_ptr().wrapping_add(inner);
            // SAFETY: `find` checked [inner, inner + N) lies inside the live mapping; `off` is
            // N-aligned and the mapping page-aligned, so `p` is N-aligned; volatile: device memory.
            unsafe {
                if N == 1 {
                    b[0] = p.read_volatile();
                } else {
                    b.copy_from_slice(&p.cast::<u16>().read_volatile().to_ne_bytes()[..N]);
                }
            }
            return Ok(b);
        }
        self.dev.region_read(self.index, off, &mut b)?;
        Ok(b)
    }

    /// Writes the `N`-byte register at `off` (see `try_read_small`).
    fn try_write_small<const N: usize>(&self, off: u64, v: [u8; N]) -> Result<(), VfioError> {
        const { assert!(N == 1 || N == 2) };
        if !off.is_multiple_of(N as u64) {
            return Err(VfioError::Misaligned { device: self.dev.name().to_string(), offset: off, width: N as u8 });
        }
        if let Some((m, inner)) = self.map.find(off, N as u64) {
            let p = m.as_ptr().wrapping_add(inner);
            // SAFETY: as in `try_read_small`: in bounds, aligned, mapping alive; one volatile
            // store of the register's width.
            unsafe {
                if N == 1 {
                    p.write_volatile(v[0]);
                } else {
                    p.cast::<u16>().write_volatile(u16::from_ne_bytes([v[0], v[N - 1]]));
                }
            }
            return Ok(());
        }
        self.dev.region_write(self.index, off, &v)
    }

    /// Read the 16-bit register at `off`; a failed access reads `0xFFFF` and is logged once.
    pub fn read16(&self, off: u64) -> u16 {
        match self.try_read_small::<2>(off) {
            Ok(b) => u16::from_le_bytes(b),
            Err(e) => {
                self.log_once("register read", off, &e);
                u16::MAX
            }
        }
    }

    /// Write the 16-bit register at `off`; a failed access is dropped and logged once.
    pub fn write16(&self, off: u64, value: u16) {
        if let Err(e) = self.try_write_small::<2>(off, value.to_le_bytes()) {
            self.log_once("register write", off, &e);
        }
    }

    /// Read the 8-bit register at `off`; a failed access reads `0xFF` and is logged once.
    pub fn read8(&self, off: u64) -> u8 {
        match self.try_read_small::<1>(off) {
            Ok(b) => b[0],
            Err(e) => {
                self.log_once("register read", off, &e);
                u8::MAX
            }
        }
    }

    /// Write the 8-bit register at `off`; a failed access is dropped and logged once.
    pub fn write8(&self, off: u64, value: u8) {
        if let Err(e) = self.try_write_small::<1>(off, [value]) {
            self.log_once("register write", off, &e);
        }
    }

    /// The address of the 16-bit register at `off` if it lies in an mmapped area (a virtio
    /// queue's notify register), for doorbells written on the data path. Valid while this `Bar`
    /// lives; access it volatile.
    pub fn mapped_ptr16(&self, off: u64) -> Option<*mut u16> {
        if off & 1 != 0 {
            return None;
        }
        let (m, inner) = self.map.find(off, 2)?;
        Some(m.as_ptr().wrapping_add(inner).cast::<u16>())
    }

    fn log_once(&self, what: &str, off: u64, e: &VfioError) {
        if !self.dead_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(device = %self.dev.name(), bar = self.index, offset = off, error = %e,
                "{what} failed; device treated as gone (reads return 0xffffffff)");
        }
    }

    /// Read the register at `off`; a failed access reads `0xFFFF_FFFF`, as a PCI read from a
    /// device that has gone away does, and is logged once.
    pub fn read32(&self, off: u64) -> u32 {
        match self.try_read32(off) {
            Ok(v) => v,
            Err(e) => {
                self.log_once("register read", off, &e);
                u32::MAX
            }
        }
    }

    /// Write the register at `off`; a failed access is dropped and logged once.
    pub fn write32(&self, off: u64, value: u32) {
        if let Err(e) = self.try_write32(off, value) {
            self.log_once("register write", off, &e);
        }
    }

    /// Read-modify-write: set `bits`.
    pub fn set_bits(&self, off: u64, bits: u32) {
        let v = self.read32(off);
        self.write32(off, v | bits);
    }

    /// Read-modify-write: clear `bits`.
    pub fn clear_bits(&self, off: u64, bits: u32) {
        let v = self.read32(off);
        self.write32(off, v & !bits);
    }

    /// Poll until `read32(off) & mask == value`, every `interval`, for at most `timeout`.
    /// Returns the last value read; a transport error ends the wait at once.
    pub fn poll_until(
        &self,
        off: u64,
        mask: u32,
        value: u32,
        timeout: Duration,
        interval: Duration,
    ) -> Result<u32, VfioError> {
        let start = Instant::now();
        loop {
            let v = self.try_read32(off)?;
            if v & mask == value {
                return Ok(v);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(VfioError::PollTimeout {
                    device: self.dev.name().to_string(),
                    offset: off,
                    mask,
                    value,
                    last: v,
                    waited,
                });
            }
            std::thread::sleep(interval.min(timeout - waited));
        }
    }
}
