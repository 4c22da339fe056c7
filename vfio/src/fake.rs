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
    /// A NIC-like function as vfio-pci reports one: BAR0 128 KiB with one mmap-able doorbell
    /// page at 0x1000, BARs 1-5 and ROM absent, 256-byte config space, no VGA (its region info
    /// is EINVAL); INTx/MSI/MSI-X(8) eventfd irqs, then ERR and REQ (one each).
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
        regions.push(absent);
        let irq = |index, count| IrqInfo { index, flags: vb::VFIO_IRQ_INFO_EVENTFD, count };
        FakeDevice {
            name: name.to_string(),
            regions,
            irqs: vec![irq(0, 1), irq(1, 1), irq(2, 8), irq(3, 1), irq(4, 1)],
        }
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
    /// The eventfd set on the request irq (index 4), as vfio-pci keeps it.
    req: Option<OwnedFd>,
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

    /// What vfio-pci does when a function is being removed while open: signal the request
    /// eventfd of every open device named `name`. False when none has one.
    pub fn request_removal(&self, name: &str) -> bool {
        let st = self.st();
        let mut any = false;
        for d in st.devices.values().filter(|d| d.device.name == name) {
            if let Some(fd) = &d.req {
                any |= nix::unistd::write(fd, &1u64.to_ne_bytes()).is_ok();
            }
        }
        any
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
        self.st().devices.insert(id, FakeDevState { device, resets: 0, irq_sets: Vec::new(), req: None });
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
            // As vfio-pci: the VGA region of a function without VGA is EINVAL, not size 0.
            if index == vb::VFIO_PCI_VGA_REGION_INDEX && r.size == 0 {
                return Err(errno(libc::EINVAL));
            }
            let info = RegionInfo {
                index,
                flags: r.flags,
                size: r.size,
                offset: u64::from(index) * FAKE_REGION_STRIDE,
                sparse: r.sparse.clone(),
            };
            let mut b = crate::proto::region_info_bytes(&info, argsz, true);
            b.resize((argsz as usize).max(crate::proto::REGION_INFO_LEN), 0);
            Ok(b)
        })
    }

    fn irq_info(&self, device: BorrowedFd<'_>, index: u32) -> io::Result<vb::vfio_irq_info> {
        self.with_dev(device, "DEVICE_GET_IRQ_INFO", |d| {
            let i = d.device.irqs.get(index as usize).copied().ok_or_else(|| errno(libc::EINVAL))?;
            Ok(vb::vfio_irq_info {
                argsz: std::mem::size_of::<vb::vfio_irq_info>() as u32,
                flags: i.flags,
                index: i.index,
                count: i.count,
            })
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
            if index == vb::VFIO_PCI_REQ_IRQ_INDEX && flags & vb::VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                d.req = Some(crate::sys::dup_raw(fds[0])?);
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

/// Hook called on a trapped region access: `(region, offset, data)`. A read hook may rewrite
/// `data` (what the driver reads); a write hook sees what the driver wrote after it is stored.
/// Hooks run under a lock: use `MemDevice::poke`/`peek` inside them, never `region_read`/`write`.
pub type AccessHook = Box<dyn Fn(u32, u64, &mut [u8]) + Send + Sync>;

/// A `DeviceIo` whose registers are plain memory, for driver unit tests.
///
/// Regions live in one memfd (region `i` at `i << 20`), so trapped accesses (`pread`/`pwrite`)
/// and mmapped sparse areas see the same bytes. Hooks add register behaviour (self-clearing
/// bits, read-to-clear); `unplug` makes it behave like a device that vanished. DMA maps,
/// resets and irq eventfds are recorded; `signal_irq` raises a vector.
pub struct MemDevice {
    name: String,
    mem: OwnedFd,
    regions: Vec<RegionInfo>,
    irqs: Vec<IrqInfo>,
    alive: std::sync::atomic::AtomicBool,
    read_hook: Mutex<Option<AccessHook>>,
    write_hook: Mutex<Option<AccessHook>>,
    record: Mutex<MemRecord>,
}

#[derive(Default)]
struct MemRecord {
    dma: crate::device::DmaTable,
    resets: u32,
    irq_fds: BTreeMap<(u32, u32), OwnedFd>,
}

impl std::fmt::Debug for MemDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDevice").field("name", &self.name).field("regions", &self.regions).finish()
    }
}

impl MemDevice {
    /// A device with `regions` (sizes up to `FAKE_REGION_STRIDE`; `offset` is assigned) and
    /// `irqs`.
    pub fn new(name: &str, regions: Vec<FakeRegion>, irqs: Vec<IrqInfo>) -> io::Result<MemDevice> {
        let mem = memfd(c"mem-device")?;
        nix::unistd::ftruncate(&mem, (regions.len() as u64 * FAKE_REGION_STRIDE) as i64)?;
        let regions = regions
            .into_iter()
            .enumerate()
            .map(|(i, r)| RegionInfo {
                index: i as u32,
                flags: r.flags,
                size: r.size.min(FAKE_REGION_STRIDE),
                offset: i as u64 * FAKE_REGION_STRIDE,
                sparse: r.sparse,
            })
            .collect();
        Ok(MemDevice {
            name: name.to_string(),
            mem,
            regions,
            irqs,
            alive: std::sync::atomic::AtomicBool::new(true),
            read_hook: Mutex::new(None),
            write_hook: Mutex::new(None),
            record: Mutex::new(MemRecord::default()),
        })
    }

    /// A NIC-like device, as [`FakeDevice::nic`] describes it.
    pub fn nic(name: &str) -> io::Result<MemDevice> {
        let d = FakeDevice::nic(name);
        MemDevice::new(name, d.regions, d.irqs)
    }

    /// Called on every trapped read, after the bytes are read from memory.
    pub fn set_read_hook(&self, hook: AccessHook) {
        *self.read_hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Called on every trapped write, after the bytes are stored.
    pub fn set_write_hook(&self, hook: AccessHook) {
        *self.write_hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Store `data` in region `index` without going through the hooks (the device side).
    pub fn poke(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let at = self.file_offset(index, offset)?;
        nix::sys::uio::pwrite(&self.mem, data, at)?;
        Ok(())
    }

    /// Read region `index` without going through the hooks (the device side).
    pub fn peek(&self, index: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.file_offset(index, offset)?;
        nix::sys::uio::pread(&self.mem, buf, at)?;
        Ok(())
    }

    /// From now on the device is gone: every call fails and `is_alive` is false.
    pub fn unplug(&self) {
        self.alive.store(false, std::sync::atomic::Ordering::Release);
    }

    /// How many times the device was reset.
    pub fn resets(&self) -> u32 {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).resets
    }

    /// Raise vector `vector` of irq `index` if an eventfd is set for it; true if signalled.
    pub fn signal_irq(&self, index: u32, vector: u32) -> bool {
        let rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
        match rec.irq_fds.get(&(index, vector)) {
            Some(fd) => nix::unistd::write(fd, &1u64.to_ne_bytes()).is_ok(),
            None => false,
        }
    }

    fn file_offset(&self, index: u32, offset: u64) -> io::Result<i64> {
        let r = self.regions.get(index as usize).ok_or_else(|| errno(libc::EINVAL))?;
        r.offset.checked_add(offset).and_then(|o| i64::try_from(o).ok()).ok_or_else(|| errno(libc::EINVAL))
    }

    fn check_alive(&self, command: &'static str) -> Result<(), VfioError> {
        if self.alive.load(std::sync::atomic::Ordering::Acquire) {
            Ok(())
        } else {
            Err(VfioError::PeerClosed { command })
        }
    }

    fn io(&self, command: &'static str, source: io::Error) -> VfioError {
        VfioError::Transport { command, source }
    }
}

impl crate::DeviceIo for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    fn irqs(&self) -> &[IrqInfo] {
        &self.irqs
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VfioError> {
        self.check_alive("REGION_READ")?;
        crate::device::check_access(&self.name, &self.regions, index, offset, buf.len())?;
        self.peek(index, offset, buf).map_err(|e| self.io("REGION_READ", e))?;
        if let Some(h) = self.read_hook.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            h(index, offset, buf);
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        self.check_alive("REGION_WRITE")?;
        crate::device::check_access(&self.name, &self.regions, index, offset, data.len())?;
        self.poke(index, offset, data).map_err(|e| self.io("REGION_WRITE", e))?;
        if let Some(h) = self.write_hook.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let mut copy = data.to_vec();
            h(index, offset, &mut copy);
        }
        Ok(())
    }

    fn map_region(&self, index: u32) -> Result<crate::RegionMap, VfioError> {
        self.check_alive("map_region")?;
        let region = self
            .regions
            .get(index as usize)
            .ok_or_else(|| VfioError::NoSuchRegion { device: self.name.clone(), index })?;
        let mut map = crate::RegionMap::empty();
        for area in region.mmap_areas() {
            let m = crate::sys::Mapping::map_shared(self.mem.as_fd(), region.offset + area.offset, area.size).map_err(
                |source| VfioError::Mmap {
                    device: self.name.clone(),
                    index,
                    offset: area.offset,
                    size: area.size,
                    source,
                },
            )?;
            map.push(area, m);
        }
        Ok(map)
    }

    fn dma_map(&self, region: &crate::DmaRegion<'_>) -> Result<(), VfioError> {
        self.check_alive("DMA_MAP")?;
        let mut rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
        rec.dma.check_insert(&self.name, region.iova, region.size)?;
        rec.dma.insert(region.iova, region.size, 0);
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        self.check_alive("DMA_UNMAP")?;
        let mut rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
        rec.dma.check_remove(&self.name, iova, size)?;
        rec.dma.remove(iova);
        Ok(())
    }

    fn reset(&self) -> Result<(), VfioError> {
        self.check_alive("DEVICE_RESET")?;
        self.record.lock().unwrap_or_else(|p| p.into_inner()).resets += 1;
        Ok(())
    }

    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[BorrowedFd<'_>]) -> Result<(), VfioError> {
        self.check_alive("DEVICE_SET_IRQS")?;
        let irq =
            self.irqs.get(index as usize).ok_or_else(|| VfioError::NoSuchIrq { device: self.name.clone(), index })?;
        let end = u32::try_from(fds.len()).ok().and_then(|n| start.checked_add(n));
        if !matches!(end, Some(e) if e <= irq.count) {
            return Err(VfioError::InvalidArgument {
                device: self.name.clone(),
                reason: format!("irq index {index} has {} vectors, asked {start}+{}", irq.count, fds.len()),
            });
        }
        let mut rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
        for (i, fd) in fds.iter().enumerate() {
            let owned = fd.try_clone_to_owned().map_err(|e| self.io("DEVICE_SET_IRQS", e))?;
            rec.irq_fds.insert((index, start + i as u32), owned);
        }
        Ok(())
    }

    fn disable_irqs(&self, index: u32) -> Result<(), VfioError> {
        self.check_alive("DEVICE_SET_IRQS")?;
        self.record.lock().unwrap_or_else(|p| p.into_inner()).irq_fds.retain(|&(i, _), _| i != index);
        Ok(())
    }

    fn is_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bar, DeviceIo};
    use std::sync::Arc;

    #[test]
    fn mem_device_backs_a_bar_with_hooks_irqs_and_unplug() {
        let dev = Arc::new(MemDevice::nic("0000:00:05.0").unwrap());
        // CTRL.RST (bit 26 at 0x0) self-clears, as the device side would make it.
        let d2 = Arc::downgrade(&dev);
        dev.set_write_hook(Box::new(move |region, offset, data| {
            if region == 0 && offset == 0 && data.len() == 4 {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & !(1 << 26);
                if let Some(d) = d2.upgrade() {
                    let _ = d.poke(0, 0, &v.to_le_bytes());
                }
            }
        }));
        let io: Arc<dyn DeviceIo> = dev.clone();
        let bar = Bar::open(io, 0).unwrap();
        bar.write32(0, (1 << 26) | 1);
        assert_eq!(
            bar.poll_until(0, 1 << 26, 0, std::time::Duration::from_millis(10), std::time::Duration::from_millis(1))
                .unwrap(),
            1
        );
        // Doorbell page is mapped and visible to the device side.
        assert!(bar.mapped_ptr(0x1018).is_some());
        bar.write32(0x1018, 42);
        let mut b = [0u8; 4];
        dev.peek(0, 0x1018, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 42);
        // Interrupts.
        let efd = nix::sys::eventfd::EventFd::new().unwrap();
        dev.set_irq_eventfds(2, 3, &[efd.as_fd()]).unwrap();
        assert!(dev.signal_irq(2, 3));
        assert_eq!(efd.read().unwrap(), 1);
        // Surprise unplug: trapped reads read all-ones, calls fail, is_alive is false.
        dev.unplug();
        assert!(!dev.is_alive());
        assert_eq!(bar.read32(0), u32::MAX);
        assert!(dev.reset().unwrap_err().is_gone());
    }
}
