//! Device DMA: IOVA translation through the clients' DMA maps.
//!
//! Each client connection registers DMA maps (vfio-user DMA_MAP with an fd). The device sees the union
//! of the live connections' maps: [`DmaTable`] translates an IOVA range that lies entirely inside one
//! map; anything else is a [`DmaError::Unmapped`] that the model records as a fault. [`FakeDma`] is a
//! `Vec`-backed stand-in so models are unit-tested without sockets.

use std::fs::File;
use std::sync::atomic::{fence, Ordering};

use crate::mem::{Mapping, MemError};

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

struct DmaEntry {
    conn: ConnId,
    iova: u64,
    size: u64,
    map: Mapping,
}

/// The union of every live connection's DMA maps.
#[derive(Default)]
pub struct DmaTable {
    maps: Vec<DmaEntry>,
    /// Index of the map that translated the last access: a data path touches one or two maps (the
    /// runtime's shared memory), so this hits nearly always. Only a hint: checked on every use.
    last: usize,
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
        if self.maps.iter().any(|m| m.conn == conn && iova < m.iova + m.size && m.iova < end) {
            return Err(DmaError::Overlap { iova, size });
        }
        let map = Mapping::map_file(&file, offset, size)?;
        self.maps.push(DmaEntry { conn, iova, size, map });
        Ok(())
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
    fn find(&mut self, iova: u64, len: usize) -> Option<(&Mapping, usize)> {
        let end = iova.checked_add(len as u64)?;
        let inside = |m: &DmaEntry| iova >= m.iova && end <= m.iova + m.size;
        let i = match self.maps.get(self.last) {
            Some(m) if inside(m) => self.last,
            _ => {
                let i = self.maps.iter().position(inside)?;
                self.last = i;
                i
            }
        };
        let m = &self.maps[i];
        Some((&m.map, (iova - m.iova) as usize))
    }
}

impl Dma for DmaTable {
    fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        match self.find(iova, buf.len()) {
            Some((m, off)) if m.read(off, buf) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: buf.len() as u64 }),
        }
    }

    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        match self.find(iova, data.len()) {
            Some((m, off)) if m.write(off, data) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: data.len() as u64 }),
        }
    }

    fn read_u32(&mut self, iova: u64) -> Result<u32, DmaError> {
        self.find(iova, 4)
            .and_then(|(m, off)| m.load_u32(off, Ordering::Relaxed))
            .ok_or(DmaError::Unmapped { iova, len: 4 })
    }

    fn read_u64(&mut self, iova: u64) -> Result<u64, DmaError> {
        self.find(iova, 8)
            .and_then(|(m, off)| m.load_u64(off, Ordering::Relaxed))
            .ok_or(DmaError::Unmapped { iova, len: 8 })
    }

    fn write_u32(&mut self, iova: u64, val: u32) -> Result<(), DmaError> {
        match self.find(iova, 4) {
            Some((m, off)) if m.store_u32(off, val, Ordering::Relaxed) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 4 }),
        }
    }

    fn write_u64(&mut self, iova: u64, val: u64) -> Result<(), DmaError> {
        match self.find(iova, 8) {
            Some((m, off)) if m.store_u64(off, val, Ordering::Relaxed) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 8 }),
        }
    }

    fn publish_u32(&mut self, iova: u64, val: u32) -> Result<(), DmaError> {
        match self.find(iova, 4) {
            Some((m, off)) if m.store_u32(off, val, Ordering::Release) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 4 }),
        }
    }

    fn publish_u64(&mut self, iova: u64, val: u64) -> Result<(), DmaError> {
        match self.find(iova, 8) {
            Some((m, off)) if m.store_u64(off, val, Ordering::Release) => Ok(()),
            _ => Err(DmaError::Unmapped { iova, len: 8 }),
        }
    }
}

/// A `Vec`-backed DMA window `[base, base + len)` for unit tests and simulations.
#[derive(Debug, Clone)]
pub struct FakeDma {
    /// First IOVA of the window.
    pub base: u64,
    /// The memory.
    pub mem: Vec<u8>,
}

impl FakeDma {
    /// A zeroed window of `len` bytes at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        Self { base, mem: vec![0; len] }
    }

    fn range(&self, iova: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = usize::try_from(iova.checked_sub(self.base)?).ok()?;
        let end = off.checked_add(len)?;
        (end <= self.mem.len()).then_some(off..end)
    }
}

impl Dma for FakeDma {
    fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(iova, buf.len()).ok_or(DmaError::Unmapped { iova, len: buf.len() as u64 })?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(iova, data.len()).ok_or(DmaError::Unmapped { iova, len: data.len() as u64 })?;
        self.mem[r].copy_from_slice(data);
        Ok(())
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
        assert_eq!(f.mem[8..12], [4, 3, 2, 1]);
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
}
