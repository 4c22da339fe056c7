//! `FakeVfio`: a table-driven stand-in for the kernel's VFIO ioctls.
//!
//! Container, group and device fds are memfds, so the backend's `pread`/`pwrite`/`mmap` on a
//! device fd work for real (region `i` lives at offset `i << 20` of the device memfd), while the
//! ioctls are answered from the tables here with the kernel's rules: SET_IOMMU needs an
//! attached group, GET_DEVICE_FD needs the IOMMU set, overlapping MAP_DMA is `EEXIST`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vfio_bindings::bindings::vfio as vb;

use crate::device::{IrqInfo, RegionInfo, SparseArea, REGION_MMAP, REGION_READ, REGION_WRITE};
use crate::sys::{file_id, DeviceInfo, VfioSys};
use crate::VfioError;

type FileId = (u64, u64);

/// Spacing of regions in a fake device fd.
pub const FAKE_REGION_STRIDE: u64 = 1 << 20;

/// A region of a fake device.
#[derive(Clone, Debug)]
pub struct FakeRegion {
    /// Size in bytes (at most `FAKE_REGION_STRIDE`).
    pub size: u64,
    /// `REGION_*` flags.
    pub flags: u32,
    /// Sparse mmap areas (reported through the capability chain).
    pub sparse: Vec<SparseArea>,
}

/// A device in a fake group.
#[derive(Clone, Debug)]
pub struct FakeDevice {
    /// BDF name, as passed to GROUP_GET_DEVICE_FD.
    pub name: String,
    /// Regions by index.
    pub regions: Vec<FakeRegion>,
    /// IRQ indexes.
    pub irqs: Vec<IrqInfo>,
}

impl FakeDevice {
    /// A NIC-like function: BAR0 128 KiB with one mmap-able doorbell page at 0x1000, BARs 1-5
    /// and ROM absent, 256-byte config space, INTx/MSI/MSI-X(8) eventfd irqs.
    pub fn nic(name: &str) -> FakeDevice {
        let absent = FakeRegion { size: 0, flags: 0, sparse: vec![] };
        let mut regions = vec![FakeRegion {
            size: 0x20000,
            flags: REGION_READ | REGION_WRITE | REGION_MMAP,
            sparse: vec![SparseArea { offset: 0x1000, size: 0x1000 }],
        }];
        for _ in 0..6 {
            regions.push(absent.clone());
        }
        regions.push(FakeRegion { size: 256, flags: REGION_READ | REGION_WRITE, sparse: vec![] });
        let irq = |index, count| IrqInfo { index, flags: vb::VFIO_IRQ_INFO_EVENTFD, count };
        FakeDevice { name: name.to_string(), regions, irqs: vec![irq(0, 1), irq(1, 1), irq(2, 8)] }
    }
}

/// One recorded `VFIO_DEVICE_SET_IRQS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrqSetCall {
    /// IRQ index.
    pub index: u32,
    /// `VFIO_IRQ_SET_*` flags.
    pub flags: u32,
    /// First vector.
    pub start: u32,
    /// Vector count.
    pub count: u32,
    /// Number of eventfds passed.
    pub fds: usize,
}

#[derive(Debug, Default)]
struct FakeContainer {
    iommu: Option<u32>,
    groups: Vec<u32>,
    maps: BTreeMap<u64, (u64, u64)>,
}

#[derive(Debug)]
struct FakeGroup {
    viable: bool,
    devices: Vec<FakeDevice>,
    container: Option<FileId>,
}

#[derive(Debug)]
struct FakeDevState {
    device: FakeDevice,
    resets: u32,
    irq_sets: Vec<IrqSetCall>,
}

#[derive(Debug)]
struct State {
    container_exists: bool,
    api_version: i32,
    extensions: Vec<u32>,
    containers: HashMap<FileId, FakeContainer>,
    groups: BTreeMap<u32, FakeGroup>,
    group_files: HashMap<FileId, u32>,
    devices: HashMap<FileId, FakeDevState>,
    calls: Vec<&'static str>,
}

/// Table-driven VFIO for tests.
#[derive(Debug)]
pub struct FakeVfio {
    state: Mutex<State>,
}

impl Default for FakeVfio {
    fn default() -> Self {
        Self::new()
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn memfd(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    Ok(memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC)?)
}

impl FakeVfio {
    /// A machine with `/dev/vfio/vfio`, API version 0, TYPE1v2 and TYPE1, and no groups.
    pub fn new() -> FakeVfio {
        FakeVfio {
            state: Mutex::new(State {
                container_exists: true,
                api_version: vb::VFIO_API_VERSION as i32,
                extensions: vec![vb::VFIO_TYPE1v2_IOMMU, vb::VFIO_TYPE1_IOMMU],
                containers: HashMap::new(),
                groups: BTreeMap::new(),
                group_files: HashMap::new(),
                devices: HashMap::new(),
                calls: Vec::new(),
            }),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No `/dev/vfio/vfio` on this fake machine.
    pub fn without_container(self) -> Self {
        self.st().container_exists = false;
        self
    }

    /// The IOMMU types the container claims to support.
    pub fn with_extensions(self, ext: Vec<u32>) -> Self {
        self.st().extensions = ext;
        self
    }

    /// The API version the container reports.
    pub fn with_api_version(self, v: i32) -> Self {
        self.st().api_version = v;
        self
    }

    /// Add IOMMU group `number` holding `devices`.
    pub fn with_group(self, number: u32, viable: bool, devices: Vec<FakeDevice>) -> Self {
        self.st().groups.insert(number, FakeGroup { viable, devices, container: None });
        self
    }

    /// Current IOMMU mappings of every container: `(iova, size, vaddr)`.
    pub fn iommu_maps(&self) -> Vec<(u64, u64, u64)> {
        let st = self.st();
        st.containers.values().flat_map(|c| c.maps.iter().map(|(&iova, &(size, vaddr))| (iova, size, vaddr))).collect()
    }

    /// The IOMMU type set on the containers (first one set).
    pub fn iommu_type(&self) -> Option<u32> {
        self.st().containers.values().find_map(|c| c.iommu)
    }

    /// How many times each device was reset, by name.
    pub fn resets(&self, name: &str) -> u32 {
        self.st().devices.values().filter(|d| d.device.name == name).map(|d| d.resets).sum()
    }

    /// Every SET_IRQS issued on devices named `name`.
    pub fn irq_sets(&self, name: &str) -> Vec<IrqSetCall> {
        self.st().devices.values().filter(|d| d.device.name == name).flat_map(|d| d.irq_sets.clone()).collect()
    }

    /// The ioctls issued so far, by name, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.st().calls.clone()
    }

    fn with_dev<T>(
        &self,
        device: BorrowedFd<'_>,
        call: &'static str,
        f: impl FnOnce(&mut FakeDevState) -> io::Result<T>,
    ) -> io::Result<T> {
        let id = file_id(device)?;
        let mut st = self.st();
        st.calls.push(call);
        let dev = st.devices.get_mut(&id).ok_or_else(|| errno(libc::ENOTTY))?;
        f(dev)
    }

    fn with_container<T>(
        &self,
        container: BorrowedFd<'_>,
        call: &'static str,
        f: impl FnOnce(&mut FakeContainer) -> io::Result<T>,
    ) -> io::Result<T> {
        let id = file_id(container)?;
        let mut st = self.st();
        st.calls.push(call);
        let c = st.containers.get_mut(&id).ok_or_else(|| errno(libc::ENOTTY))?;
        f(c)
    }
}

impl VfioSys for FakeVfio {
    fn open_container(&self) -> Result<OwnedFd, VfioError> {
        if !self.st().container_exists {
            return Err(VfioError::KernelUnavailable {
                reason: "/dev/vfio/vfio does not exist (load vfio-pci and bind the device, see ci/real-nic.sh)".into(),
            });
        }
        let open_err = |source| VfioError::OpenContainer { path: "/dev/vfio/vfio".into(), source };
        let fd = memfd(c"fake-vfio-container").map_err(open_err)?;
        let id = file_id(fd.as_fd()).map_err(open_err)?;
        self.st().containers.insert(id, FakeContainer::default());
        Ok(fd)
    }

    fn open_group(&self, group: u32) -> Result<OwnedFd, VfioError> {
        let open_err = |source| VfioError::OpenGroup { group, source };
        if !self.st().groups.contains_key(&group) {
            return Err(open_err(errno(libc::ENOENT)));
        }
        let fd = memfd(c"fake-vfio-group").map_err(open_err)?;
        let id = file_id(fd.as_fd()).map_err(open_err)?;
        self.st().group_files.insert(id, group);
        Ok(fd)
    }

    fn api_version(&self, container: BorrowedFd<'_>) -> io::Result<i32> {
        let v = self.st().api_version;
        self.with_container(container, "GET_API_VERSION", |_| Ok(v))
    }

    fn check_extension(&self, container: BorrowedFd<'_>, ext: u32) -> io::Result<bool> {
        let has = self.st().extensions.contains(&ext);
        self.with_container(container, "CHECK_EXTENSION", |_| Ok(has))
    }

    fn set_iommu(&self, container: BorrowedFd<'_>, kind: u32) -> io::Result<()> {
        let supported = self.st().extensions.contains(&kind);
        self.with_container(container, "SET_IOMMU", |c| {
            if c.groups.is_empty() || !supported {
                return Err(errno(libc::EINVAL));
            }
            if c.iommu.is_some() {
                return Err(errno(libc::EBUSY));
            }
            c.iommu = Some(kind);
            Ok(())
        })
    }

    fn group_status(&self, group: BorrowedFd<'_>) -> io::Result<u32> {
        let id = file_id(group)?;
        let mut st = self.st();
        st.calls.push("GROUP_GET_STATUS");
        let n = *st.group_files.get(&id).ok_or_else(|| errno(libc::ENOTTY))?;
        let g = st.groups.get(&n).ok_or_else(|| errno(libc::ENODEV))?;
        let mut flags = if g.viable { vb::VFIO_GROUP_FLAGS_VIABLE } else { 0 };
        if g.container.is_some() {
            flags |= vb::VFIO_GROUP_FLAGS_CONTAINER_SET;
        }
        Ok(flags)
    }

    fn group_set_container(&self, group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()> {
        let gid = file_id(group)?;
        let cid = file_id(container)?;
        let mut st = self.st();
        st.calls.push("GROUP_SET_CONTAINER");
        let n = *st.group_files.get(&gid).ok_or_else(|| errno(libc::ENOTTY))?;
        if !st.containers.contains_key(&cid) {
            return Err(errno(libc::EBADF));
        }
        let g = st.groups.get_mut(&n).ok_or_else(|| errno(libc::ENODEV))?;
        if !g.viable {
            return Err(errno(libc::EPERM));
        }
        if g.container.is_some() {
            return Err(errno(libc::EBUSY));
        }
        g.container = Some(cid);
        if let Some(c) = st.containers.get_mut(&cid) {
            c.groups.push(n);
        }
        Ok(())
    }

    fn group_unset_container(&self, group: BorrowedFd<'_>) -> io::Result<()> {
        let gid = file_id(group)?;
        let mut st = self.st();
        st.calls.push("GROUP_UNSET_CONTAINER");
        let n = *st.group_files.get(&gid).ok_or_else(|| errno(libc::ENOTTY))?;
        let g = st.groups.get_mut(&n).ok_or_else(|| errno(libc::ENODEV))?;
        let cid = g.container.take().ok_or_else(|| errno(libc::EINVAL))?;
        if let Some(c) = st.containers.get_mut(&cid) {
            c.groups.retain(|&x| x != n);
            if c.groups.is_empty() {
                // As the kernel does: the last group takes the IOMMU and its mappings along.
                c.iommu = None;
                c.maps.clear();
            }
        }
        Ok(())
    }

    fn group_device_fd(&self, group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
        let gid = file_id(group)?;
        let device = {
            let mut st = self.st();
            st.calls.push("GROUP_GET_DEVICE_FD");
            let n = *st.group_files.get(&gid).ok_or_else(|| errno(libc::ENOTTY))?;
            let g = st.groups.get(&n).ok_or_else(|| errno(libc::ENODEV))?;
            let cid = g.container.ok_or_else(|| errno(libc::EINVAL))?;
            let iommu_set = st.containers.get(&cid).is_some_and(|c| c.iommu.is_some());
            if !iommu_set {
                return Err(errno(libc::EINVAL));
            }
            g.devices.iter().find(|d| d.name == name).cloned().ok_or_else(|| errno(libc::ENODEV))?
        };
        let fd = memfd(c"fake-vfio-device")?;
        nix::unistd::ftruncate(&fd, (device.regions.len() as u64 * FAKE_REGION_STRIDE) as i64)?;
        let id = file_id(fd.as_fd())?;
        self.st().devices.insert(id, FakeDevState { device, resets: 0, irq_sets: Vec::new() });
        Ok(fd)
    }

    fn device_info(&self, device: BorrowedFd<'_>) -> io::Result<DeviceInfo> {
        self.with_dev(device, "DEVICE_GET_INFO", |d| {
            Ok(DeviceInfo {
                flags: vb::VFIO_DEVICE_FLAGS_PCI | vb::VFIO_DEVICE_FLAGS_RESET,
                num_regions: d.device.regions.len() as u32,
                num_irqs: d.device.irqs.len() as u32,
            })
        })
    }

    fn region_info(&self, device: BorrowedFd<'_>, index: u32, argsz: u32) -> io::Result<Vec<u8>> {
        self.with_dev(device, "DEVICE_GET_REGION_INFO", |d| {
            let r = d.device.regions.get(index as usize).ok_or_else(|| errno(libc::EINVAL))?;
            let info = RegionInfo {
                index,
                flags: r.flags,
                size: r.size,
                offset: u64::from(index) * FAKE_REGION_STRIDE,
                sparse: r.sparse.clone(),
            };
            let mut b = crate::wire::region_info_bytes(&info, argsz, true);
            b.resize((argsz as usize).max(crate::wire::REGION_INFO_LEN), 0);
            Ok(b)
        })
    }

    fn irq_info(&self, device: BorrowedFd<'_>, index: u32) -> io::Result<IrqInfo> {
        self.with_dev(device, "DEVICE_GET_IRQ_INFO", |d| {
            d.device.irqs.get(index as usize).copied().ok_or_else(|| errno(libc::EINVAL))
        })
    }

    fn set_irqs(
        &self,
        device: BorrowedFd<'_>,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[RawFd],
    ) -> io::Result<()> {
        self.with_dev(device, "DEVICE_SET_IRQS", |d| {
            let irq = d.device.irqs.get(index as usize).ok_or_else(|| errno(libc::EINVAL))?;
            if !matches!(start.checked_add(count), Some(e) if e <= irq.count) {
                return Err(errno(libc::EINVAL));
            }
            if flags & vb::VFIO_IRQ_SET_DATA_EVENTFD != 0 && fds.len() != count as usize {
                return Err(errno(libc::EINVAL));
            }
            d.irq_sets.push(IrqSetCall { index, flags, start, count, fds: fds.len() });
            Ok(())
        })
    }

    fn reset(&self, device: BorrowedFd<'_>) -> io::Result<()> {
        self.with_dev(device, "DEVICE_RESET", |d| {
            d.resets += 1;
            Ok(())
        })
    }

    fn map_dma(&self, container: BorrowedFd<'_>, vaddr: u64, iova: u64, size: u64) -> io::Result<()> {
        self.with_container(container, "IOMMU_MAP_DMA", |c| {
            if c.iommu.is_none() || size == 0 {
                return Err(errno(libc::EINVAL));
            }
            let end = iova.checked_add(size).ok_or_else(|| errno(libc::EINVAL))?;
            if c.maps.range(..end).next_back().is_some_and(|(&s, &(l, _))| s + l > iova) {
                return Err(errno(libc::EEXIST));
            }
            c.maps.insert(iova, (size, vaddr));
            Ok(())
        })
    }

    fn unmap_dma(&self, container: BorrowedFd<'_>, iova: u64, size: u64) -> io::Result<()> {
        self.with_container(container, "IOMMU_UNMAP_DMA", |c| match c.maps.get(&iova) {
            Some(&(s, _)) if s == size => {
                c.maps.remove(&iova);
                Ok(())
            }
            _ => Err(errno(libc::EINVAL)),
        })
    }
}
