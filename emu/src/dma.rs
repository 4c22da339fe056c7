//! Device DMA: IOVA translation through the clients' DMA maps.
//!
//! Each client connection registers DMA maps (vfio-user DMA_MAP with an fd). The device sees the union
//! of the live connections' maps: [`DmaTable`] translates an IOVA range that lies entirely inside one
//! map; anything else is a [`DmaError::Unmapped`] that the model records as a fault. [`FakeDma`] is a
//! `Vec`-backed stand-in so models are unit-tested without sockets.

use std::fs::File;

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
pub trait Dma {
    /// Reads `buf.len()` bytes at `iova`.
    fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Writes `data` at `iova`.
    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DmaError>;
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

    fn find(&self, iova: u64, len: usize) -> Option<(&Mapping, usize)> {
        let end = iova.checked_add(len as u64)?;
        self.maps.iter().find(|m| iova >= m.iova && end <= m.iova + m.size).map(|m| (&m.map, (iova - m.iova) as usize))
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
