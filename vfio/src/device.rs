//! The `DeviceIo` interface every transport implements, and the plain data it speaks in.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;

use crate::sys::Mapping;
use crate::VfioError;

/// Region flag: the region can be read (same bit as `VFIO_REGION_INFO_FLAG_READ`).
pub const REGION_READ: u32 = vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_READ;
/// Region flag: the region can be written.
pub const REGION_WRITE: u32 = vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_WRITE;
/// Region flag: (parts of) the region can be mmapped.
pub const REGION_MMAP: u32 = vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;
/// Region flag: the region info carries a capability chain.
pub const REGION_CAPS: u32 = vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_CAPS;
/// Region index of PCI config space.
pub const CONFIG_REGION_INDEX: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
/// IRQ index of MSI-X vectors.
pub const MSIX_IRQ_INDEX: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
/// IRQ info flag: the index can signal eventfds.
pub const IRQ_INFO_EVENTFD: u32 = vfio_bindings::bindings::vfio::VFIO_IRQ_INFO_EVENTFD;

/// One mmap-able window of a region, relative to the region start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset of the area within the region.
    pub offset: u64,
    /// Size of the area in bytes.
    pub size: u64,
}

/// What the device says about one region (BAR, config space, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index (`VFIO_PCI_BAR0_REGION_INDEX` .. `VFIO_PCI_CONFIG_REGION_INDEX`).
    pub index: u32,
    /// `REGION_READ | REGION_WRITE | REGION_MMAP | REGION_CAPS`, as VFIO.
    pub flags: u32,
    /// Size in bytes (0: the region does not exist).
    pub size: u64,
    /// Offset of the region in the device fd (kernel) or in the region fd (vfio-user).
    pub offset: u64,
    /// mmap-able areas from the sparse mmap capability; empty if there is none.
    pub sparse: Vec<SparseArea>,
}

impl RegionInfo {
    /// The areas `map_region` maps: the sparse areas, or the whole region if it is mmap-able
    /// without a sparse capability.
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        if self.flags & REGION_MMAP == 0 {
            return Vec::new();
        }
        if self.sparse.is_empty() {
            if self.size == 0 {
                return Vec::new();
            }
            return vec![SparseArea { offset: 0, size: self.size }];
        }
        self.sparse.iter().copied().filter(|a| a.size > 0).collect()
    }
}

/// What the device says about one interrupt index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// IRQ index (INTx 0, MSI 1, MSI-X 2, ...).
    pub index: u32,
    /// `VFIO_IRQ_INFO_*` flags.
    pub flags: u32,
    /// Number of vectors.
    pub count: u32,
}

/// Memory the device may DMA to, as seen by this process.
#[derive(Debug)]
pub struct DmaRegion<'a> {
    /// Device-visible address.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// File backing the memory (vfio-user passes it to the server).
    pub fd: BorrowedFd<'a>,
    /// Offset of the memory in `fd`.
    pub fd_offset: u64,
    /// This process's mapping of the same memory (kernel VFIO maps by virtual address).
    pub vaddr: *mut u8,
}

/// The mmapped areas of one region; unmapped on drop.
#[derive(Debug, Default)]
pub struct RegionMap {
    areas: Vec<(SparseArea, Mapping)>,
}

impl RegionMap {
    /// A map with no areas: every access is trapped.
    pub fn empty() -> Self {
        Self::default()
    }

    pub(crate) fn push(&mut self, area: SparseArea, mapping: Mapping) {
        self.areas.push((area, mapping));
    }

    /// The mapped areas, relative to the region start.
    pub fn areas(&self) -> impl Iterator<Item = SparseArea> + '_ {
        self.areas.iter().map(|(a, _)| *a)
    }

    /// The mapping holding `[offset, offset + len)` entirely, and the offset inside it.
    pub(crate) fn find(&self, offset: u64, len: u64) -> Option<(&Mapping, usize)> {
        self.areas.iter().find_map(|(area, m)| {
            let end = offset.checked_add(len)?;
            if offset >= area.offset && end <= area.offset.checked_add(area.size)? {
                let inner = usize::try_from(offset - area.offset).ok()?;
                (inner.checked_add(usize::try_from(len).ok()?)? <= m.len()).then_some((m, inner))
            } else {
                None
            }
        })
    }
}

/// One interface to a PCI function, whatever carries it (kernel VFIO or vfio-user).
pub trait DeviceIo: Send + Sync {
    /// The device name, e.g. `0000:00:05.0`.
    fn name(&self) -> &str;
    /// Region table, indexed by region index.
    fn regions(&self) -> &[RegionInfo];
    /// IRQ table, indexed by irq index.
    fn irqs(&self) -> &[IrqInfo];
    /// Trapped read of `buf.len()` bytes at `offset` in region `index`.
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VfioError>;
    /// Trapped write of `data` at `offset` in region `index`.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VfioError>;
    /// Posted trapped write: returns once the write is on its way, not once the device took it
    /// (PCI memory writes are posted). A later `region_read` on the same device sees it. A
    /// transport without posting (kernel VFIO's `pwrite` returns when the device has it) writes
    /// as [`DeviceIo::region_write`] does.
    fn region_write_posted(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        self.region_write(index, offset, data)
    }
    /// Posted writes `writes` (region, offset, data) and then a read of `buf.len()` bytes at
    /// `offset` in region `index`, which sees them: over vfio-user all in one send and one
    /// round trip.
    fn posted_writes_then_read(
        &self,
        writes: &[(u32, u64, &[u8])],
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), VfioError> {
        for (i, o, d) in writes {
            self.region_write_posted(*i, *o, d)?;
        }
        self.region_read(index, offset, buf)
    }
    /// Read PCI config space (region 7).
    fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VfioError> {
        self.region_read(CONFIG_REGION_INDEX, offset, buf)
    }
    /// Write PCI config space (region 7).
    fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        self.region_write(CONFIG_REGION_INDEX, offset, data)
    }
    /// mmap every mmap-able (sparse) area of region `index`.
    fn map_region(&self, index: u32) -> Result<RegionMap, VfioError>;
    /// Let the device DMA to `region`.
    fn dma_map(&self, region: &DmaRegion<'_>) -> Result<(), VfioError>;
    /// Undo a `dma_map` with exactly the same `iova` and `size`.
    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), VfioError>;
    /// Reset the device.
    fn reset(&self) -> Result<(), VfioError>;
    /// Route vectors `start..start + fds.len()` of irq `index` to eventfds.
    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[BorrowedFd<'_>]) -> Result<(), VfioError>;
    /// Disable every vector of irq `index`.
    fn disable_irqs(&self, index: u32) -> Result<(), VfioError>;
    /// False once the transport saw the device go away (surprise unplug).
    fn is_alive(&self) -> bool;
    /// Whether interrupt eventfds set here are this process's own (vfio-user: per connection,
    /// every process gets the vector), rather than the device's one set (kernel VFIO: a
    /// secondary sharing the primary's device fd would take the primary's away).
    fn irqs_per_process(&self) -> bool {
        false
    }
}

/// Region lookup and bounds check shared by the backends.
pub(crate) fn check_access(
    device: &str,
    regions: &[RegionInfo],
    index: u32,
    offset: u64,
    len: usize,
) -> Result<(), VfioError> {
    let region = usize::try_from(index)
        .ok()
        .and_then(|i| regions.get(i))
        .filter(|r| r.size > 0)
        .ok_or_else(|| VfioError::NoSuchRegion { device: device.to_string(), index })?;
    let len64 = len as u64;
    match offset.checked_add(len64) {
        Some(end) if end <= region.size => Ok(()),
        _ => Err(VfioError::OutOfRange { device: device.to_string(), index, offset, len: len64, size: region.size }),
    }
}

/// IOVA bookkeeping: maps never overlap, unmaps match a map exactly.
///
/// Each map carries a user count so that devices sharing one kernel VFIO container can each
/// map the same memory: an identical map is shared (`share`), and only the last unmap reaches
/// the IOMMU. vfio-user connections never share (every map is its own).
#[derive(Debug, Default)]
pub(crate) struct DmaTable {
    /// iova -> (size, tag, users); the tag is the host address for kernel VFIO (a shared map
    /// must be of the same memory), 0 for vfio-user.
    maps: BTreeMap<u64, (u64, u64, u32)>,
}

impl DmaTable {
    /// Refuses a zero-sized, wrapping or overlapping range.
    pub(crate) fn check_insert(&self, device: &str, iova: u64, size: u64) -> Result<(), VfioError> {
        let overlap = || VfioError::DmaOverlap { device: device.to_string(), iova, size };
        let end = iova.checked_add(size).filter(|_| size > 0).ok_or_else(|| VfioError::InvalidArgument {
            device: device.to_string(),
            reason: format!("DMA range iova {iova:#x} size {size:#x} is empty or wraps"),
        })?;
        if let Some((&start, &(len, _, _))) = self.maps.range(..end).next_back() {
            if start.saturating_add(len) > iova {
                return Err(overlap());
            }
        }
        Ok(())
    }

    /// Record a new map with one user.
    pub(crate) fn insert(&mut self, iova: u64, size: u64, tag: u64) {
        self.maps.insert(iova, (size, tag, 1));
    }

    /// If exactly this range is mapped (same tag), add a user and return true.
    pub(crate) fn share(&mut self, iova: u64, size: u64, tag: u64) -> bool {
        match self.maps.get_mut(&iova) {
            Some((s, t, users)) if *s == size && *t == tag => {
                *users = users.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Refuses an unmap that does not match a map exactly; returns the map's user count.
    pub(crate) fn check_remove(&self, device: &str, iova: u64, size: u64) -> Result<u32, VfioError> {
        match self.maps.get(&iova) {
            Some(&(s, _, users)) if s == size => Ok(users),
            _ => Err(VfioError::DmaNotMapped { device: device.to_string(), iova, size }),
        }
    }

    /// Drop one user of the map at `iova`; the entry goes with its last user.
    pub(crate) fn remove(&mut self, iova: u64) {
        if let Some((_, _, users)) = self.maps.get_mut(&iova) {
            *users = users.saturating_sub(1);
            if *users == 0 {
                self.maps.remove(&iova);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.maps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(0x1000, 0x1000, true)] // exact duplicate
    #[case(0x1800, 0x100, true)] // inside
    #[case(0x0, 0x1001, true)] // overlaps start
    #[case(0x1fff, 0x10, true)] // overlaps end
    #[case(0x0, 0x1000, false)] // just below
    #[case(0x2000, 0x1000, false)] // just above
    fn dma_table_refuses_overlaps(#[case] iova: u64, #[case] size: u64, #[case] overlaps: bool) {
        let mut t = DmaTable::default();
        t.insert(0x1000, 0x1000, 0);
        let r = t.check_insert("d", iova, size);
        assert_eq!(matches!(r, Err(VfioError::DmaOverlap { .. })), overlaps, "{r:?}");
    }

    #[test]
    fn dma_table_refuses_empty_and_wrapping_ranges() {
        let t = DmaTable::default();
        assert!(matches!(t.check_insert("d", 0, 0), Err(VfioError::InvalidArgument { .. })));
        assert!(matches!(t.check_insert("d", u64::MAX, 2), Err(VfioError::InvalidArgument { .. })));
    }

    #[test]
    fn dma_unmap_must_match_exactly() {
        let mut t = DmaTable::default();
        t.insert(0x1000, 0x2000, 0);
        assert!(t.check_remove("d", 0x1000, 0x1000).is_err());
        assert!(t.check_remove("d", 0x2000, 0x1000).is_err());
        assert_eq!(t.check_remove("d", 0x1000, 0x2000).unwrap(), 1);
        t.remove(0x1000);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn identical_maps_are_shared_until_the_last_unmap() {
        let mut t = DmaTable::default();
        t.insert(0x1000, 0x2000, 0);
        assert!(!t.share(0x1000, 0x1000, 0));
        assert!(!t.share(0x1000, 0x2000, 0x7000));
        assert!(t.share(0x1000, 0x2000, 0));
        assert_eq!(t.check_remove("d", 0x1000, 0x2000).unwrap(), 2);
        t.remove(0x1000);
        assert_eq!(t.check_remove("d", 0x1000, 0x2000).unwrap(), 1);
        t.remove(0x1000);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn access_checks_catch_overflow_and_missing_regions() {
        let regions = vec![RegionInfo { index: 0, flags: 3, size: 0x100, offset: 0, sparse: vec![] }];
        assert!(check_access("d", &regions, 0, 0xfc, 4).is_ok());
        assert!(check_access("d", &regions, 0, 0xfd, 4).is_err());
        assert!(check_access("d", &regions, 0, u64::MAX, 4).is_err());
        assert!(matches!(check_access("d", &regions, 3, 0, 4), Err(VfioError::NoSuchRegion { .. })));
    }

    #[test]
    fn whole_region_is_one_area_without_sparse_cap() {
        let r = RegionInfo { index: 0, flags: REGION_MMAP, size: 0x4000, offset: 0, sparse: vec![] };
        assert_eq!(r.mmap_areas(), vec![SparseArea { offset: 0, size: 0x4000 }]);
        let r = RegionInfo { flags: 0, ..r };
        assert!(r.mmap_areas().is_empty());
    }
}
