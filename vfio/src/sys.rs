//! The kernel, touched in one place: shared mmaps and the VFIO ioctls.
//!
//! [`VfioSys`] is the seam between the container/group/device logic in `kernel` and the
//! kernel: [`RealVfio`] issues the ioctls, `FakeVfio` (module `fake`, behind `cfg(test)` or the
//! `testing` feature) answers them from a table so that logic is tested where `/dev/vfio` does not
//! exist. Everything `unsafe` in this crate outside the BAR accessor lives in this file.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use vfio_bindings::bindings::vfio as vb;

use crate::VfioError;

/// A `MAP_SHARED` read/write mapping of part of a file (a BAR's sparse area, a DMA window);
/// unmapped on drop.
///
/// Built on `memmap2::MmapRaw`, which hands out raw pointers only (no `&[u8]` that another
/// process writing the same pages would make unsound), so mapping needs no `unsafe` here. The
/// owner (`RegionMap`, `Bar`) outlives every pointer handed out from it.
pub struct Mapping {
    map: memmap2::MmapRaw,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping").field("ptr", &self.map.as_mut_ptr()).field("len", &self.map.len()).finish()
    }
}

impl Mapping {
    /// mmap `len` bytes of `fd` at `offset`, shared, read/write.
    pub fn map_shared(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<Mapping> {
        let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
        let len = usize::try_from(len).ok().filter(|l| *l > 0).ok_or_else(invalid)?;
        libc::off_t::try_from(offset).map_err(|_| invalid())?;
        let map = memmap2::MmapOptions::new().offset(offset).len(len).map_raw(fd.as_raw_fd())?;
        Ok(Mapping { map })
    }

    /// Base address of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

/// `VFIO_DEVICE_GET_INFO` result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of irq indexes.
    pub num_irqs: u32,
}

/// The VFIO syscalls the kernel backend needs, as a seam for a fake.
///
/// File descriptors are passed borrowed; the backend owns them. Region reads, writes and mmaps
/// are plain `pread`/`pwrite`/`mmap` on the device fd and are not part of the seam.
pub trait VfioSys: Send + Sync + fmt::Debug {
    /// Open `/dev/vfio/vfio`; a missing node is `VfioError::KernelUnavailable`.
    fn open_container(&self) -> Result<OwnedFd, VfioError>;
    /// Open `/dev/vfio/<group>`.
    fn open_group(&self, group: u32) -> Result<OwnedFd, VfioError>;
    /// `VFIO_GET_API_VERSION`.
    fn api_version(&self, container: BorrowedFd<'_>) -> io::Result<i32>;
    /// `VFIO_CHECK_EXTENSION`.
    fn check_extension(&self, container: BorrowedFd<'_>, ext: u32) -> io::Result<bool>;
    /// `VFIO_SET_IOMMU`.
    fn set_iommu(&self, container: BorrowedFd<'_>, kind: u32) -> io::Result<()>;
    /// `VFIO_GROUP_GET_STATUS`: the group flags.
    fn group_status(&self, group: BorrowedFd<'_>) -> io::Result<u32>;
    /// `VFIO_GROUP_SET_CONTAINER`.
    fn group_set_container(&self, group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()>;
    /// `VFIO_GROUP_UNSET_CONTAINER`.
    fn group_unset_container(&self, group: BorrowedFd<'_>) -> io::Result<()>;
    /// `VFIO_GROUP_GET_DEVICE_FD` for the device named `name` (its BDF).
    fn group_device_fd(&self, group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd>;
    /// `VFIO_DEVICE_GET_INFO`.
    fn device_info(&self, device: BorrowedFd<'_>) -> io::Result<DeviceInfo>;
    /// `VFIO_DEVICE_GET_REGION_INFO` with a buffer of `argsz` bytes; returns the raw buffer
    /// (`vfio_region_info` followed by the capability chain, if it fit).
    fn region_info(&self, device: BorrowedFd<'_>, index: u32, argsz: u32) -> io::Result<Vec<u8>>;
    /// `VFIO_DEVICE_GET_IRQ_INFO`: the kernel's answer as it is (callers turn it into
    /// `device::IrqInfo`; this layer knows no type above the kernel ABI).
    fn irq_info(&self, device: BorrowedFd<'_>, index: u32) -> io::Result<vb::vfio_irq_info>;
    /// `VFIO_DEVICE_SET_IRQS`; `fds` is the eventfd payload for `DATA_EVENTFD`.
    fn set_irqs(
        &self,
        device: BorrowedFd<'_>,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[RawFd],
    ) -> io::Result<()>;
    /// `VFIO_DEVICE_RESET`.
    fn reset(&self, device: BorrowedFd<'_>) -> io::Result<()>;
    /// `VFIO_IOMMU_MAP_DMA` (read/write).
    fn map_dma(&self, container: BorrowedFd<'_>, vaddr: u64, iova: u64, size: u64) -> io::Result<()>;
    /// `VFIO_IOMMU_UNMAP_DMA`.
    fn unmap_dma(&self, container: BorrowedFd<'_>, iova: u64, size: u64) -> io::Result<()>;
}

const VFIO_TYPE: u8 = b';';
const VFIO_BASE: u8 = 100;

const fn vfio_io(nr: u8) -> libc::c_ulong {
    // _IO(';', VFIO_BASE + nr): no size/direction bits, as <linux/vfio.h> defines them.
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE + nr) as libc::c_ulong
}

const GET_API_VERSION: libc::c_ulong = vfio_io(0);
const CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const SET_IOMMU: libc::c_ulong = vfio_io(2);
const GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const GROUP_UNSET_CONTAINER: libc::c_ulong = vfio_io(5);
const GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
const DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const DEVICE_RESET: libc::c_ulong = vfio_io(11);
const IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

/// The real kernel interface under `/dev/vfio`.
#[derive(Debug, Clone)]
pub struct RealVfio {
    dir: PathBuf,
}

impl Default for RealVfio {
    fn default() -> Self {
        RealVfio { dir: PathBuf::from("/dev/vfio") }
    }
}

impl RealVfio {
    /// The kernel interface under `/dev/vfio`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kernel interface under another directory (containers in tests or chroots).
    pub fn with_dir(dir: &Path) -> Self {
        RealVfio { dir: dir.to_path_buf() }
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_rw(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl VfioSys for RealVfio {
    fn open_container(&self) -> Result<OwnedFd, VfioError> {
        let path = self.dir.join("vfio");
        match open_rw(&path) {
            Ok(fd) => Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(VfioError::KernelUnavailable {
                reason: format!(
                    "{} does not exist (load vfio-pci and bind the device, see ci/real-nic.sh)",
                    path.display()
                ),
            }),
            Err(source) => Err(VfioError::OpenContainer { path, source }),
        }
    }

    fn open_group(&self, group: u32) -> Result<OwnedFd, VfioError> {
        open_rw(&self.dir.join(group.to_string())).map_err(|source| VfioError::OpenGroup { group, source })
    }

    fn api_version(&self, container: BorrowedFd<'_>) -> io::Result<i32> {
        // SAFETY: VFIO_GET_API_VERSION takes no argument and touches no memory of ours.
        check(unsafe { libc::ioctl(container.as_raw_fd(), GET_API_VERSION as _) })
    }

    fn check_extension(&self, container: BorrowedFd<'_>, ext: u32) -> io::Result<bool> {
        // SAFETY: VFIO_CHECK_EXTENSION takes the extension number by value, no pointer.
        let r = check(unsafe { libc::ioctl(container.as_raw_fd(), CHECK_EXTENSION as _, ext as libc::c_ulong) })?;
        Ok(r > 0)
    }

    fn set_iommu(&self, container: BorrowedFd<'_>, kind: u32) -> io::Result<()> {
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value, no pointer.
        check(unsafe { libc::ioctl(container.as_raw_fd(), SET_IOMMU as _, kind as libc::c_ulong) })?;
        Ok(())
    }

    fn group_status(&self, group: BorrowedFd<'_>) -> io::Result<u32> {
        let mut st = vb::vfio_group_status { argsz: std::mem::size_of::<vb::vfio_group_status>() as u32, flags: 0 };
        // SAFETY: the kernel writes at most argsz bytes into `st`, a live, properly sized and
        // aligned vfio_group_status on our stack.
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_STATUS as _, &mut st) })?;
        Ok(st.flags)
    }

    fn group_set_container(&self, group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()> {
        let fd: libc::c_int = container.as_raw_fd();
        // SAFETY: the kernel reads one c_int (the container fd) through the pointer, which points
        // at a live local.
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_SET_CONTAINER as _, &fd) })?;
        Ok(())
    }

    fn group_unset_container(&self, group: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: VFIO_GROUP_UNSET_CONTAINER takes no argument.
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_UNSET_CONTAINER as _) })?;
        Ok(())
    }

    fn group_device_fd(&self, group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the kernel reads a NUL-terminated string through the pointer; `name` is a live
        // CString for the whole call.
        let fd = check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD as _, name.as_ptr()) })?;
        // SAFETY: on success the ioctl returns a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn device_info(&self, device: BorrowedFd<'_>) -> io::Result<DeviceInfo> {
        let mut info =
            vb::vfio_device_info { argsz: std::mem::size_of::<vb::vfio_device_info>() as u32, ..Default::default() };
        // SAFETY: the kernel writes at most argsz bytes into `info`, a live local of that size.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_INFO as _, &mut info) })?;
        Ok(DeviceInfo { flags: info.flags, num_regions: info.num_regions, num_irqs: info.num_irqs })
    }

    fn region_info(&self, device: BorrowedFd<'_>, index: u32, argsz: u32) -> io::Result<Vec<u8>> {
        let min = std::mem::size_of::<vb::vfio_region_info>();
        let len = (argsz as usize).max(min);
        // u64 storage keeps the buffer 8-byte aligned as vfio_region_info requires.
        let mut buf = vec![0u64; len.div_ceil(8)];
        let head = vb::vfio_region_info { argsz: len as u32, index, ..Default::default() };
        let dst = buf.as_mut_ptr().cast::<vb::vfio_region_info>();
        // SAFETY: `buf` holds at least size_of::<vfio_region_info>() bytes and is 8-byte aligned.
        unsafe { dst.write(head) };
        // SAFETY: argsz tells the kernel the buffer holds `len` bytes, which `buf` does; the
        // kernel writes no more than argsz.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_REGION_INFO as _, dst) })?;
        Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).take(len).collect())
    }

    fn irq_info(&self, device: BorrowedFd<'_>, index: u32) -> io::Result<vb::vfio_irq_info> {
        let mut info =
            vb::vfio_irq_info { argsz: std::mem::size_of::<vb::vfio_irq_info>() as u32, index, ..Default::default() };
        // SAFETY: the kernel writes at most argsz bytes into `info`, a live local of that size.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_IRQ_INFO as _, &mut info) })?;
        Ok(info)
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
        // vfio_irq_set (5 x u32) followed by the i32 eventfds, all 4-byte aligned.
        let mut words: Vec<u32> = Vec::with_capacity(5 + fds.len());
        let argsz = ((5 + fds.len()) * 4) as u32;
        words.extend_from_slice(&[argsz, flags, index, start, count]);
        words.extend(fds.iter().map(|&fd| fd as u32));
        // SAFETY: `words` is a live, 4-byte aligned buffer of exactly argsz bytes laid out as
        // vfio_irq_set plus its data array; the kernel only reads it.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_SET_IRQS as _, words.as_ptr()) })?;
        Ok(())
    }

    fn reset(&self, device: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_RESET as _) })?;
        Ok(())
    }

    fn map_dma(&self, container: BorrowedFd<'_>, vaddr: u64, iova: u64, size: u64) -> io::Result<()> {
        let map = vb::vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vb::vfio_iommu_type1_dma_map>() as u32,
            flags: vb::VFIO_DMA_MAP_FLAG_READ | vb::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        // SAFETY: the kernel reads the live local `map`; the memory at vaddr is pinned by the
        // kernel, which validates that it is mapped in this process.
        check(unsafe { libc::ioctl(container.as_raw_fd(), IOMMU_MAP_DMA as _, &map) })?;
        Ok(())
    }

    fn unmap_dma(&self, container: BorrowedFd<'_>, iova: u64, size: u64) -> io::Result<()> {
        let mut unmap = vb::vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vb::vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
            data: Default::default(),
        };
        // SAFETY: the kernel reads and updates (size unmapped) the live local `unmap`, whose
        // argsz excludes the flexible array.
        check(unsafe { libc::ioctl(container.as_raw_fd(), IOMMU_UNMAP_DMA as _, &mut unmap) })?;
        Ok(())
    }
}

/// `sendmsg` with `fds` as SCM_RIGHTS (none if empty), `MSG_NOSIGNAL` so a dead peer gives
/// `EPIPE` instead of a signal. Returns the bytes sent (possibly fewer than `data`).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// One `recvmsg` into `buf`; fds that arrive with the bytes are appended to `fds` (close-on-exec).
/// Returns the bytes received, 0 at end of stream. A truncated control message (more than 16
/// fds) is an error.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; 16]);
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => r.map_err(io::Error::from)?,
        };
        let bytes = msg.bytes;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS just installed this fd in our table; nothing else
                    // knows it, so the OwnedFd is its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        return Ok(bytes);
    }
}

/// A new fd for the open file behind `fd` (`dup`, close-on-exec); EBADF if `fd` is not open.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn dup_raw(fd: RawFd) -> io::Result<OwnedFd> {
    let new = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Identity of an open file (device and inode), the same for every dup of an fd.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn file_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_vfio_h() {
        // _IO(';', 100) = 0x3b64 ... _IO(';', 114) = 0x3b72
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(DEVICE_RESET, 0x3b6f);
        assert_eq!(IOMMU_UNMAP_DMA, 0x3b72);
    }

    #[test]
    fn missing_dev_vfio_is_one_clear_line() {
        let dir = tempfile::tempdir().unwrap();
        let err = RealVfio::with_dir(dir.path()).open_container().unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("kernel VFIO unavailable: "), "{msg}");
        assert!(msg.contains("vfio does not exist (load vfio-pci and bind the device, see ci/real-nic.sh)"));
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn mapping_shares_memory_with_the_file() {
        let fd = nix::sys::memfd::memfd_create(c"m", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 8192).unwrap();
        let m = Mapping::map_shared(std::os::fd::AsFd::as_fd(&fd), 4096, 4096).unwrap();
        assert_eq!(m.len(), 4096);
        nix::sys::uio::pwrite(&fd, b"abcd", 4096).unwrap();
        // SAFETY: the mapping is live and at least 4 bytes long.
        let got = unsafe { std::slice::from_raw_parts(m.as_ptr(), 4) };
        assert_eq!(got, b"abcd");
        assert!(Mapping::map_shared(std::os::fd::AsFd::as_fd(&fd), 0, 0).is_err());
    }
}
