//! Kernel VFIO: container, group and device fd, in the DPDK shape.
//!
//! The primary opens the container (`/dev/vfio/vfio`) and the group (`/dev/vfio/<N>`), attaches
//! the group and sets the IOMMU type. A group can be open only once system-wide, so secondaries
//! receive both fds from the primary over the IPC channel and adopt them with
//! [`Container::from_fd`] and [`Group::from_fd`], then ask for the device fd themselves. All
//! syscalls go through [`VfioSys`], so this logic is tested against `FakeVfio`.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vfio_bindings::bindings::vfio as vb;

use crate::device::{check_access, DmaTable, IrqInfo, RegionInfo, RegionMap};
use crate::proto::{RegionInfoRepr, MAX_INDEXES, MAX_REGION_INFO_LEN, REGION_INFO_LEN};
use crate::sys::{Mapping, RealVfio, VfioSys};
use crate::{DeviceIo, DmaRegion, VfioError};

/// A VFIO container: one IOMMU context, shared by the groups attached to it.
#[derive(Debug)]
pub struct Container {
    sys: Arc<dyn VfioSys>,
    fd: OwnedFd,
    /// IOMMU type to set whenever a group is attached to an empty container; `None` for an
    /// adopted container (the primary owns its IOMMU setup).
    kind: Option<u32>,
    /// Groups this process attached and has not released. The kernel drops the IOMMU (and every
    /// DMA map) when the last group leaves, so the next attach must set it again.
    attached: Mutex<u32>,
    dma: Mutex<DmaTable>,
}

impl Container {
    /// Open `/dev/vfio/vfio` (primary).
    pub fn open() -> Result<Container, VfioError> {
        Self::open_with(Arc::new(RealVfio::new()))
    }

    /// Open a container through `sys`: check the API version and pick TYPE1v2 (else TYPE1).
    pub fn open_with(sys: Arc<dyn VfioSys>) -> Result<Container, VfioError> {
        let fd = sys.open_container()?;
        let ioctl = |op, source| VfioError::Ioctl { op, device: "container".into(), source };
        let version = sys.api_version(fd.as_fd()).map_err(|e| ioctl("VFIO_GET_API_VERSION", e))?;
        if version != vb::VFIO_API_VERSION as i32 {
            return Err(VfioError::ApiVersion { version, expected: vb::VFIO_API_VERSION as i32 });
        }
        let mut kind = None;
        for candidate in [vb::VFIO_TYPE1v2_IOMMU, vb::VFIO_TYPE1_IOMMU] {
            if sys.check_extension(fd.as_fd(), candidate).map_err(|e| ioctl("VFIO_CHECK_EXTENSION", e))? {
                kind = Some(candidate);
                break;
            }
        }
        let kind = kind.ok_or(VfioError::NoIommuType)?;
        tracing::debug!(iommu_type = kind, "VFIO container opened");
        Ok(Container { sys, fd, kind: Some(kind), attached: Mutex::new(0), dma: Mutex::new(DmaTable::default()) })
    }

    /// Adopt a container fd received from the primary (IOMMU already set).
    pub fn from_fd(fd: OwnedFd) -> Container {
        Self::from_fd_with(Arc::new(RealVfio::new()), fd)
    }

    /// Adopt a container fd, issuing syscalls through `sys`.
    pub fn from_fd_with(sys: Arc<dyn VfioSys>, fd: OwnedFd) -> Container {
        Container { sys, fd, kind: None, attached: Mutex::new(0), dma: Mutex::new(DmaTable::default()) }
    }

    /// The container fd, to send to secondaries.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Attach `group` to this container; attaching to an empty container sets the IOMMU type.
    /// The group detaches itself (VFIO_GROUP_UNSET_CONTAINER) when dropped.
    pub fn attach(self: &Arc<Self>, group: &Group) -> Result<(), VfioError> {
        let dev = format!("group {}", group.number);
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        self.sys.group_set_container(group.as_fd(), self.fd.as_fd()).map_err(|source| VfioError::Ioctl {
            op: "VFIO_GROUP_SET_CONTAINER",
            device: dev.clone(),
            source,
        })?;
        if let (0, Some(kind)) = (*attached, self.kind) {
            if let Err(source) = self.sys.set_iommu(self.fd.as_fd(), kind) {
                // Undo the attach so the group is left as we found it.
                let _ = self.sys.group_unset_container(group.as_fd());
                return Err(VfioError::Ioctl { op: "VFIO_SET_IOMMU", device: dev, source });
            }
        }
        *attached += 1;
        *group.attached_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(self));
        Ok(())
    }

    /// A group this process attached was released.
    fn detached(&self) {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        *attached = attached.saturating_sub(1);
        if *attached == 0 && self.kind.is_some() {
            // The kernel released the IOMMU with the last group, and every DMA map with it.
            *self.dma.lock().unwrap_or_else(|p| p.into_inner()) = DmaTable::default();
        }
    }

    /// Map `size` bytes at `vaddr` (this process) to `iova` for every device in the container.
    /// Mapping exactly the same memory at the same IOVA again (a second device of the container)
    /// shares the map; any other overlap is refused.
    pub fn dma_map(&self, vaddr: u64, iova: u64, size: u64) -> Result<(), VfioError> {
        let mut t = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        if t.share(iova, size, vaddr) {
            tracing::debug!(iova, size, "DMA map shared with another device of the container");
            return Ok(());
        }
        t.check_insert("container", iova, size)?;
        self.sys.map_dma(self.fd.as_fd(), vaddr, iova, size).map_err(|source| VfioError::Ioctl {
            op: "VFIO_IOMMU_MAP_DMA",
            device: "container".into(),
            source,
        })?;
        t.insert(iova, size, vaddr);
        Ok(())
    }

    /// Undo a `dma_map`; `iova` and `size` must match it exactly. The IOMMU mapping goes with
    /// its last user.
    pub fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        let mut t = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        if t.check_remove("container", iova, size)? > 1 {
            t.remove(iova);
            return Ok(());
        }
        self.sys.unmap_dma(self.fd.as_fd(), iova, size).map_err(|source| VfioError::Ioctl {
            op: "VFIO_IOMMU_UNMAP_DMA",
            device: "container".into(),
            source,
        })?;
        t.remove(iova);
        Ok(())
    }
}

/// A VFIO group (`/dev/vfio/<N>`).
#[derive(Debug)]
pub struct Group {
    sys: Arc<dyn VfioSys>,
    fd: OwnedFd,
    number: u32,
    /// The container this process attached the group to (none for an adopted group).
    attached_to: Mutex<Option<Weak<Container>>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        let attached = self.attached_to.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(container) = attached {
            match self.sys.group_unset_container(self.fd.as_fd()) {
                Ok(()) => {}
                // The last device of the group was hot-removed: the kernel took the group out of
                // the container itself (seen on a real kernel when the removal completes first).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENODEV)) => {
                    tracing::debug!(group = self.number, error = %e, "group already out of its container");
                }
                Err(e) => tracing::warn!(group = self.number, error = %e, "VFIO_GROUP_UNSET_CONTAINER failed"),
            }
            if let Some(c) = container.upgrade() {
                c.detached();
            }
        }
    }
}

impl Group {
    /// Open `/dev/vfio/<number>` and check that it is viable.
    pub fn open(number: u32) -> Result<Group, VfioError> {
        Self::open_with(Arc::new(RealVfio::new()), number)
    }

    /// Open a group through `sys` and check that it is viable.
    pub fn open_with(sys: Arc<dyn VfioSys>, number: u32) -> Result<Group, VfioError> {
        let fd = sys.open_group(number)?;
        let flags = sys.group_status(fd.as_fd()).map_err(|source| VfioError::Ioctl {
            op: "VFIO_GROUP_GET_STATUS",
            device: format!("group {number}"),
            source,
        })?;
        if flags & vb::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::GroupNotViable { group: number });
        }
        Ok(Group { sys, fd, number, attached_to: Mutex::new(None) })
    }

    /// Adopt a group fd received from the primary (already attached to its container).
    pub fn from_fd(fd: OwnedFd, number: u32) -> Group {
        Self::from_fd_with(Arc::new(RealVfio::new()), fd, number)
    }

    /// Adopt a group fd, issuing syscalls through `sys`.
    pub fn from_fd_with(sys: Arc<dyn VfioSys>, fd: OwnedFd, number: u32) -> Group {
        Group { sys, fd, number, attached_to: Mutex::new(None) }
    }

    /// The IOMMU group number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The group fd, to send to secondaries.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` for the device named `name` (its BDF).
    pub fn device_fd(&self, name: &str) -> Result<OwnedFd, VfioError> {
        self.sys.group_device_fd(self.fd.as_fd(), name).map_err(|source| VfioError::Ioctl {
            op: "VFIO_GROUP_GET_DEVICE_FD",
            device: name.to_string(),
            source,
        })
    }
}

/// Container and group fds a secondary received from the primary.
#[derive(Debug)]
pub struct AdoptedFds {
    /// The primary's container fd.
    pub container: OwnedFd,
    /// The primary's group fd.
    pub group: OwnedFd,
}

impl AdoptedFds {
    /// Duplicate both fds (the originals stay with their owner).
    pub fn try_clone(&self) -> std::io::Result<AdoptedFds> {
        Ok(AdoptedFds { container: self.container.try_clone()?, group: self.group.try_clone()? })
    }
}

/// Kernel VFIO state of one process, as DPDK keeps it: one container, each group opened once
/// and shared by every device in it (the functions of a dual-port NIC often share a group).
///
/// A primary lets the context open the container and groups on demand; a secondary first
/// adopts the primary's container and group fds. Groups close when their last device goes.
#[derive(Debug)]
pub struct VfioContext {
    sys: Arc<dyn VfioSys>,
    container: Mutex<Option<Arc<Container>>>,
    /// Open groups, held by their devices: a group closes with its last device here, adopted
    /// ones too. A secondary that kept an adopted group fd open would keep the group open
    /// system-wide, and the primary could not open it again after a detach (EBUSY).
    groups: Mutex<HashMap<u32, Weak<Group>>>,
}

impl Default for VfioContext {
    fn default() -> Self {
        Self::new()
    }
}

impl VfioContext {
    /// A context over the real kernel (`/dev/vfio`).
    pub fn new() -> Self {
        Self::with_sys(Arc::new(RealVfio::new()))
    }

    /// A context issuing its syscalls through `sys`.
    pub fn with_sys(sys: Arc<dyn VfioSys>) -> Self {
        VfioContext { sys, container: Mutex::new(None), groups: Mutex::new(HashMap::new()) }
    }

    /// Secondary: use the primary's container fd (its IOMMU is already set). Replaces nothing:
    /// fails if this context already has a container.
    pub fn adopt_container(&self, fd: OwnedFd) -> Result<Arc<Container>, VfioError> {
        let mut c = self.container.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_some() {
            return Err(VfioError::InvalidArgument {
                device: "container".into(),
                reason: "this process already has a VFIO container".into(),
            });
        }
        let container = Arc::new(Container::from_fd_with(self.sys.clone(), fd));
        *c = Some(container.clone());
        Ok(container)
    }

    /// Secondary: use the primary's fd for group `number` (already attached to its container).
    /// Hold the returned group until a device of it is open: the context keeps only a weak
    /// reference, so the group closes with its last device.
    #[must_use = "the group closes when this is dropped without a device of it open"]
    pub fn adopt_group(&self, number: u32, fd: OwnedFd) -> Arc<Group> {
        let group = Arc::new(Group::from_fd_with(self.sys.clone(), fd, number));
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).insert(number, Arc::downgrade(&group));
        group
    }

    /// Whether this context has a container (opened or adopted).
    pub fn has_container(&self) -> bool {
        self.container.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Whether group `number` is open in this context (opened or adopted).
    pub fn has_group(&self, number: u32) -> bool {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).get(&number).is_some_and(|g| g.strong_count() > 0)
    }

    /// The container, opened on first use.
    pub fn container(&self) -> Result<Arc<Container>, VfioError> {
        let mut c = self.container.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let container = Arc::new(Container::open_with(self.sys.clone())?);
        *c = Some(container.clone());
        Ok(container)
    }

    /// Group `number`, opened and attached to the container on first use.
    pub fn group(&self, number: u32) -> Result<Arc<Group>, VfioError> {
        let container = self.container()?;
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.get(&number).and_then(Weak::upgrade) {
            return Ok(g);
        }
        let group = Arc::new(Group::open_with(self.sys.clone(), number)?);
        container.attach(&group)?;
        groups.insert(number, Arc::downgrade(&group));
        Ok(group)
    }

    /// Open device `name` (its BDF) of group `number`.
    pub fn open_device(&self, name: &str, number: u32) -> Result<KernelDevice, VfioError> {
        let group = self.group(number)?;
        KernelDevice::from_group(name, self.container()?, group)
    }
}

/// A PCI function bound to vfio-pci.
#[derive(Debug)]
pub struct KernelDevice {
    // Fields drop in declaration order: the device fd must close before the group may leave
    // its container (the kernel refuses UNSET_CONTAINER while a device of the group is open).
    fd: OwnedFd,
    name: String,
    sys: Arc<dyn VfioSys>,
    flags: u32,
    regions: Vec<RegionInfo>,
    irqs: Vec<IrqInfo>,
    alive: AtomicBool,
    /// vfio-pci's request eventfd (`VFIO_PCI_REQ_IRQ_INDEX`), in the process that owns the
    /// container: the kernel signals it when the function is being removed and waits for every
    /// user to close the device. One per device in the kernel, so secondaries leave it alone.
    req: Option<nix::sys::eventfd::EventFd>,
    group: Arc<Group>,
    container: Arc<Container>,
}

/// `VFIO_PCI_REQ_IRQ_INDEX`.
const REQ_IRQ_INDEX: u32 = vb::VFIO_PCI_REQ_IRQ_INDEX;

impl KernelDevice {
    /// Open device `name` (its BDF) in IOMMU group `group` with a fresh container (primary).
    pub fn open(name: &str, group: u32) -> Result<KernelDevice, VfioError> {
        Self::open_with(Arc::new(RealVfio::new()), name, group, None)
    }

    /// Open device `name` of group `group_no` through `sys`. With `adopted` (a secondary), the
    /// primary's container and group fds are used as they are; otherwise a container and the
    /// group are opened and attached.
    pub fn open_with(
        sys: Arc<dyn VfioSys>,
        name: &str,
        group_no: u32,
        adopted: Option<AdoptedFds>,
    ) -> Result<KernelDevice, VfioError> {
        let ctx = VfioContext::with_sys(sys);
        let _held = match adopted {
            Some(fds) => {
                ctx.adopt_container(fds.container)?;
                Some(ctx.adopt_group(group_no, fds.group))
            }
            None => None,
        };
        ctx.open_device(name, group_no)
    }

    /// Open device `name` from an attached group (several devices may share one).
    pub fn from_group(name: &str, container: Arc<Container>, group: Arc<Group>) -> Result<KernelDevice, VfioError> {
        let sys = group.sys.clone();
        let fd = group.device_fd(name)?;
        let ioctl = |op, source| VfioError::Ioctl { op, device: name.to_string(), source };
        let info = sys.device_info(fd.as_fd()).map_err(|e| ioctl("VFIO_DEVICE_GET_INFO", e))?;
        if info.num_regions > MAX_INDEXES || info.num_irqs > MAX_INDEXES {
            return Err(ioctl(
                "VFIO_DEVICE_GET_INFO",
                std::io::Error::other(format!(
                    "implausible counts: {} regions, {} irqs",
                    info.num_regions, info.num_irqs
                )),
            ));
        }
        let mut regions = Vec::with_capacity(info.num_regions as usize);
        for index in 0..info.num_regions {
            match region_info(sys.as_ref(), fd.as_fd(), name, index) {
                // vfio-pci answers EINVAL for the VGA region of a function without VGA (every
                // NIC): the region does not exist, like a BAR of size 0.
                Err(VfioError::Ioctl { ref source, .. })
                    if index == vb::VFIO_PCI_VGA_REGION_INDEX && source.raw_os_error() == Some(libc::EINVAL) =>
                {
                    regions.push(RegionInfo { index, flags: 0, size: 0, offset: 0, sparse: Vec::new() });
                }
                r => regions.push(r?),
            }
        }
        let mut irqs = Vec::with_capacity(info.num_irqs as usize);
        for index in 0..info.num_irqs {
            let i = sys.irq_info(fd.as_fd(), index).map_err(|e| ioctl("VFIO_DEVICE_GET_IRQ_INFO", e))?;
            irqs.push(IrqInfo { index: i.index, flags: i.flags, count: i.count });
        }
        tracing::debug!(device = name, regions = regions.len(), irqs = irqs.len(), "VFIO device opened");
        let mut dev = KernelDevice {
            name: name.to_string(),
            sys,
            container,
            group,
            fd,
            flags: info.flags,
            regions,
            irqs,
            alive: AtomicBool::new(true),
            req: None,
        };
        if dev.container.kind.is_some() {
            dev.req = dev.wire_request();
        }
        Ok(dev)
    }

    /// Wires the request irq to an eventfd [`DeviceIo::is_alive`] reads. Without it the kernel
    /// blocks a hot-remove until the process happens to close the device; with it the removal
    /// monitor sees the request and detaches the port everywhere, which closes the device.
    fn wire_request(&self) -> Option<nix::sys::eventfd::EventFd> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let irq = self.irqs.get(REQ_IRQ_INDEX as usize).filter(|i| i.count >= 1)?;
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).ok()?;
        let flags = vb::VFIO_IRQ_SET_DATA_EVENTFD | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
        match self.sys.set_irqs(self.fd.as_fd(), irq.index, flags, 0, 1, &[efd.as_fd().as_raw_fd()]) {
            Ok(()) => Some(efd),
            Err(e) => {
                tracing::warn!(device = %self.name, error = %e, "no removal requests from vfio-pci (request irq refused)");
                None
            }
        }
    }

    /// The container (send `container().as_fd()` to secondaries).
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// The group (send `group().as_fd()` to secondaries).
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// `VFIO_DEVICE_FLAGS_*`.
    pub fn device_flags(&self) -> u32 {
        self.flags
    }

    /// Has the kernel signal vectors `start..start + count` of irq index `index` as if the
    /// device had raised them (`VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER`): a
    /// loopback check of the eventfds set with [`DeviceIo::set_irq_eventfds`].
    pub fn trigger_irqs(&self, index: u32, start: u32, count: u32) -> Result<(), VfioError> {
        let irq = self.irq(index)?;
        if start.checked_add(count).is_none_or(|e| e > irq.count) || count == 0 {
            return Err(VfioError::InvalidArgument {
                device: self.name.clone(),
                reason: format!("irq index {index} has {} vectors, asked {start}+{count}", irq.count),
            });
        }
        let flags = vb::VFIO_IRQ_SET_DATA_NONE | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
        self.sys
            .set_irqs(self.fd.as_fd(), index, flags, start, count, &[])
            .map_err(|e| self.io_err("VFIO_DEVICE_SET_IRQS", e))
    }

    fn io_err(&self, op: &'static str, e: std::io::Error) -> VfioError {
        if e.raw_os_error() == Some(libc::ENODEV) {
            self.alive.store(false, Ordering::Release);
        }
        VfioError::Ioctl { op, device: self.name.clone(), source: e }
    }

    fn file_offset(&self, index: u32, offset: u64) -> Result<libc::off_t, VfioError> {
        let base = self.regions.get(index as usize).map(|r| r.offset).unwrap_or(0);
        base.checked_add(offset).and_then(|o| libc::off_t::try_from(o).ok()).ok_or_else(|| VfioError::OutOfRange {
            device: self.name.clone(),
            index,
            offset,
            len: 0,
            size: 0,
        })
    }

    fn irq(&self, index: u32) -> Result<&IrqInfo, VfioError> {
        self.irqs.get(index as usize).ok_or_else(|| VfioError::NoSuchIrq { device: self.name.clone(), index })
    }
}

fn region_info(sys: &dyn VfioSys, fd: BorrowedFd<'_>, name: &str, index: u32) -> Result<RegionInfo, VfioError> {
    let bad = |e: String| VfioError::Ioctl {
        op: "VFIO_DEVICE_GET_REGION_INFO",
        device: name.to_string(),
        source: std::io::Error::other(format!("region {index}: {e}")),
    };
    let mut argsz = REGION_INFO_LEN as u32;
    for _ in 0..2 {
        let raw = sys.region_info(fd, index, argsz).map_err(|source| VfioError::Ioctl {
            op: "VFIO_DEVICE_GET_REGION_INFO",
            device: format!("{name} region {index}"),
            source,
        })?;
        let parsed = RegionInfoRepr::parse(&raw, index).map_err(|e| bad(e.to_string()))?;
        if parsed.caps_complete {
            return Ok(parsed.info);
        }
        if parsed.argsz <= argsz || parsed.argsz > MAX_REGION_INFO_LEN {
            return Err(bad(format!("capabilities missing with argsz {}", parsed.argsz)));
        }
        argsz = parsed.argsz;
    }
    Err(bad("capabilities still missing after re-ask".into()))
}

impl DeviceIo for KernelDevice {
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
        check_access(&self.name, &self.regions, index, offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = self.file_offset(index, offset + done as u64)?;
            match nix::sys::uio::pread(self.fd.as_fd(), &mut buf[done..], at) {
                Ok(0) => return Err(self.io_err("pread", std::io::Error::from_raw_os_error(libc::EIO))),
                Ok(n) => done += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.io_err("pread", e.into())),
            }
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        check_access(&self.name, &self.regions, index, offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let at = self.file_offset(index, offset + done as u64)?;
            match nix::sys::uio::pwrite(self.fd.as_fd(), &data[done..], at) {
                Ok(0) => return Err(self.io_err("pwrite", std::io::Error::from_raw_os_error(libc::EIO))),
                Ok(n) => done += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.io_err("pwrite", e.into())),
            }
        }
        Ok(())
    }

    fn map_region(&self, index: u32) -> Result<RegionMap, VfioError> {
        let region = self
            .regions
            .get(index as usize)
            .ok_or_else(|| VfioError::NoSuchRegion { device: self.name.clone(), index })?;
        let mut map = RegionMap::empty();
        for area in region.mmap_areas() {
            let mmap_err = |source| VfioError::Mmap {
                device: self.name.clone(),
                index,
                offset: area.offset,
                size: area.size,
                source,
            };
            let at = region
                .offset
                .checked_add(area.offset)
                .ok_or_else(|| mmap_err(std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
            map.push(area, Mapping::map_shared(self.fd.as_fd(), at, area.size).map_err(mmap_err)?);
        }
        Ok(map)
    }

    fn dma_map(&self, region: &DmaRegion<'_>) -> Result<(), VfioError> {
        self.container.dma_map(region.vaddr as u64, region.iova, region.size)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        self.container.dma_unmap(iova, size)
    }

    fn reset(&self) -> Result<(), VfioError> {
        self.sys.reset(self.fd.as_fd()).map_err(|e| self.io_err("VFIO_DEVICE_RESET", e))
    }

    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[BorrowedFd<'_>]) -> Result<(), VfioError> {
        let irq = self.irq(index)?;
        let count = u32::try_from(fds.len()).ok();
        let end = count.and_then(|n| start.checked_add(n));
        if !matches!(end, Some(e) if e <= irq.count) {
            return Err(VfioError::InvalidArgument {
                device: self.name.clone(),
                reason: format!("irq index {index} has {} vectors, asked {start}+{}", irq.count, fds.len()),
            });
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let flags = vb::VFIO_IRQ_SET_DATA_EVENTFD | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
        self.sys
            .set_irqs(self.fd.as_fd(), index, flags, start, raw.len() as u32, &raw)
            .map_err(|e| self.io_err("VFIO_DEVICE_SET_IRQS", e))
    }

    fn disable_irqs(&self, index: u32) -> Result<(), VfioError> {
        self.irq(index)?;
        let flags = vb::VFIO_IRQ_SET_DATA_NONE | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
        self.sys.set_irqs(self.fd.as_fd(), index, flags, 0, 0, &[]).map_err(|e| self.io_err("VFIO_DEVICE_SET_IRQS", e))
    }

    /// False once a call met ENODEV or vfio-pci asked for the device back (a hot-remove in
    /// progress: the kernel waits until every user has closed it).
    fn is_alive(&self) -> bool {
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        if let Some(req) = &self.req {
            if req.read().is_ok() {
                tracing::warn!(device = %self.name, "vfio-pci asks for the device back: it is being removed");
                self.alive.store(false, Ordering::Release);
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
