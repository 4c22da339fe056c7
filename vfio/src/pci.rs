//! Transport choice for a PCI function, from its sysfs directory.
//!
//! `<dir>/vfio-user.sock` exists: vfio-user. Else bound to vfio-pci and `/dev/vfio/<group>`
//! exists: kernel VFIO. Else the device cannot be used, said in one line, as DPDK does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::kernel::{AdoptedFds, KernelDevice, VfioContext};
use crate::sys::{RealVfio, VfioSys};
use crate::user::{UserDevice, DEFAULT_TIMEOUT};
use crate::{DeviceIo, VfioError};

/// The file in a sysfs device directory that marks an emulated (vfio-user) function.
pub const VFIO_USER_SOCKET: &str = "vfio-user.sock";

/// How to open a device.
#[derive(Debug)]
pub struct OpenOptions {
    /// Reply timeout for vfio-user.
    pub timeout: Duration,
    /// For kernel VFIO in a secondary: the primary's container and group fds.
    pub adopted: Option<AdoptedFds>,
    /// Where the VFIO device nodes live (`/dev/vfio`).
    pub vfio_dir: PathBuf,
    /// The syscall layer for kernel VFIO (`None`: the real kernel under `vfio_dir`).
    pub sys: Option<Arc<dyn VfioSys>>,
    /// The process's kernel VFIO context (one container, groups shared by their devices). With
    /// it, `adopted` and `sys` are ignored: a secondary adopts into the context beforehand.
    /// Without it, each kernel device gets a container of its own.
    pub kernel: Option<Arc<VfioContext>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            timeout: DEFAULT_TIMEOUT,
            adopted: None,
            vfio_dir: PathBuf::from("/dev/vfio"),
            sys: None,
            kernel: None,
        }
    }
}

/// Open the PCI function whose sysfs directory is `sysfs_dir` (named by its BDF) over the
/// transport it offers.
pub fn open_pci(sysfs_dir: &Path, opts: &OpenOptions) -> Result<Box<dyn DeviceIo>, VfioError> {
    let addr = sysfs_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| sysfs_dir.display().to_string());
    let not_usable = |reason: String| VfioError::NotUsable { addr: addr.clone(), reason };

    let sock = sysfs_dir.join(VFIO_USER_SOCKET);
    if sock.symlink_metadata().is_ok() {
        tracing::debug!(device = %addr, socket = %sock.display(), "using vfio-user");
        return Ok(Box::new(UserDevice::connect(&sock, &addr, opts.timeout)?));
    }

    if !sysfs_dir.is_dir() {
        return Err(not_usable(format!("{} does not exist", sysfs_dir.display())));
    }
    let driver = match std::fs::read_link(sysfs_dir.join("driver")) {
        Ok(target) => basename(&target),
        Err(_) => return Err(not_usable("not bound to any driver (bind it to vfio-pci)".into())),
    };
    if driver != "vfio-pci" {
        return Err(not_usable(format!("not bound to vfio-pci (driver: {driver})")));
    }
    let group = std::fs::read_link(sysfs_dir.join("iommu_group"))
        .ok()
        .and_then(|t| basename(&t).parse::<u32>().ok())
        .ok_or_else(|| not_usable("no iommu_group (is the IOMMU enabled?)".into()))?;
    let node = opts.vfio_dir.join(group.to_string());
    if node.symlink_metadata().is_err() {
        return Err(not_usable(format!("{} missing", node.display())));
    }
    tracing::debug!(device = %addr, group, "using kernel VFIO");
    if let Some(ctx) = &opts.kernel {
        return Ok(Box::new(ctx.open_device(&addr, group)?));
    }
    let sys: Arc<dyn VfioSys> = match &opts.sys {
        Some(s) => s.clone(),
        None => Arc::new(RealVfio::with_dir(&opts.vfio_dir)),
    };
    let adopted = match &opts.adopted {
        Some(fds) => Some(fds.try_clone().map_err(|source| VfioError::OpenGroup { group, source })?),
        None => None,
    };
    Ok(Box::new(KernelDevice::open_with(sys, &addr, group, adopted)?))
}

fn basename(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDevice, FakeVfio};
    use rstest::rstest;
    use std::os::unix::fs::symlink;

    const BDF: &str = "0000:01:00.0";

    /// `<root>/<BDF>/` with optional `driver` and `iommu_group` links, plus a fake `/dev/vfio`.
    struct FakeSysfs {
        _root: tempfile::TempDir,
        dev: PathBuf,
        vfio_dir: PathBuf,
    }

    fn sysfs(driver: Option<&str>, group: Option<u32>, node: bool) -> FakeSysfs {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("devices").join(BDF);
        std::fs::create_dir_all(&dev).unwrap();
        if let Some(d) = driver {
            symlink(format!("../../bus/pci/drivers/{d}"), dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            symlink(format!("../../kernel/iommu_groups/{g}"), dev.join("iommu_group")).unwrap();
        }
        let vfio_dir = root.path().join("dev-vfio");
        std::fs::create_dir_all(&vfio_dir).unwrap();
        if let (true, Some(g)) = (node, group) {
            std::fs::write(vfio_dir.join(g.to_string()), b"").unwrap();
        }
        FakeSysfs { _root: root, dev, vfio_dir }
    }

    fn opts(s: &FakeSysfs, sys: Option<Arc<dyn VfioSys>>) -> OpenOptions {
        OpenOptions { vfio_dir: s.vfio_dir.clone(), sys, ..Default::default() }
    }

    #[rstest]
    #[case(None, Some(12), true, "not bound to any driver")]
    #[case(Some("ixgbe"), Some(12), true, "not bound to vfio-pci (driver: ixgbe)")]
    #[case(Some("vfio-pci"), None, true, "no iommu_group")]
    #[case(Some("vfio-pci"), Some(12), false, "dev-vfio/12 missing")]
    fn unusable_devices_are_reported_in_one_line(
        #[case] driver: Option<&str>,
        #[case] group: Option<u32>,
        #[case] node: bool,
        #[case] reason: &str,
    ) {
        let s = sysfs(driver, group, node);
        let Err(e) = open_pci(&s.dev, &opts(&s, None)) else { panic!("opened") };
        let msg = e.to_string();
        assert!(matches!(&e, VfioError::NotUsable { addr, .. } if addr == BDF), "{msg}");
        assert!(msg.starts_with(&format!("PCI device {BDF} cannot be used: ")), "{msg}");
        assert!(msg.contains(reason), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn a_missing_sysfs_dir_is_not_usable() {
        let s = sysfs(None, None, false);
        let e = open_pci(&s.dev.join("nope"), &opts(&s, None)).err().unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn vfio_pci_with_a_group_node_uses_kernel_vfio() {
        let s = sysfs(Some("vfio-pci"), Some(12), true);
        let fake = Arc::new(FakeVfio::new().with_group(12, true, vec![FakeDevice::nic(BDF)]));
        let dev = open_pci(&s.dev, &opts(&s, Some(fake.clone()))).unwrap();
        assert_eq!(dev.name(), BDF);
        assert_eq!(dev.regions().len(), 9);
        assert!(fake.calls().contains(&"GROUP_GET_DEVICE_FD"));
    }

    #[test]
    fn a_secondary_opens_kernel_vfio_with_the_primary_fds() {
        let s = sysfs(Some("vfio-pci"), Some(12), true);
        let fake: Arc<dyn VfioSys> = Arc::new(FakeVfio::new().with_group(12, true, vec![FakeDevice::nic(BDF)]));
        let primary = KernelDevice::open_with(fake.clone(), BDF, 12, None).unwrap();
        let adopted = AdoptedFds {
            container: primary.container().as_fd().try_clone_to_owned().unwrap(),
            group: primary.group().as_fd().try_clone_to_owned().unwrap(),
        };
        // Without the primary's fds the group is busy; with them the secondary gets the device.
        assert!(open_pci(&s.dev, &opts(&s, Some(fake.clone()))).is_err());
        let o = OpenOptions { adopted: Some(adopted), ..opts(&s, Some(fake)) };
        let dev = open_pci(&s.dev, &o).unwrap();
        assert_eq!(dev.regions(), primary.regions());
    }

    #[test]
    fn devices_of_one_group_share_the_process_context_and_its_dma_maps() {
        const BDF2: &str = "0000:01:00.1";
        let s = sysfs(Some("vfio-pci"), Some(12), true);
        let root = s.dev.parent().unwrap().to_path_buf();
        let dev2_dir = root.join(BDF2);
        std::fs::create_dir_all(&dev2_dir).unwrap();
        symlink("../../bus/pci/drivers/vfio-pci", dev2_dir.join("driver")).unwrap();
        symlink("../../kernel/iommu_groups/12", dev2_dir.join("iommu_group")).unwrap();
        let fake = Arc::new(FakeVfio::new().with_group(12, true, vec![FakeDevice::nic(BDF), FakeDevice::nic(BDF2)]));
        let ctx = Arc::new(VfioContext::with_sys(fake.clone()));
        let o = OpenOptions { kernel: Some(ctx), ..opts(&s, None) };
        let a = open_pci(&s.dev, &o).unwrap();
        let b = open_pci(&dev2_dir, &o).unwrap();
        assert_eq!((a.name(), b.name()), (BDF, BDF2));
        let count = |c: &str| fake.calls().iter().filter(|&&x| x == c).count();
        assert_eq!((count("GROUP_SET_CONTAINER"), count("SET_IOMMU")), (1, 1));
        // Both ports map the same shared memory: one IOMMU map, removed with its last user.
        let mem = nix::sys::memfd::memfd_create(c"m", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        let r = crate::DmaRegion {
            iova: 0x1_0000_0000,
            size: 0x20_0000,
            fd: std::os::fd::AsFd::as_fd(&mem),
            fd_offset: 0,
            vaddr: 0x7f00_0000_0000usize as *mut u8,
        };
        a.dma_map(&r).unwrap();
        b.dma_map(&r).unwrap();
        assert_eq!(count("IOMMU_MAP_DMA"), 1);
        let other = crate::DmaRegion { vaddr: 0x7e00_0000_0000usize as *mut u8, ..r };
        assert!(matches!(b.dma_map(&other), Err(VfioError::DmaOverlap { .. })));
        a.dma_unmap(r.iova, r.size).unwrap();
        assert_eq!((count("IOMMU_UNMAP_DMA"), fake.iommu_maps().len()), (0, 1));
        b.dma_unmap(r.iova, r.size).unwrap();
        assert_eq!((count("IOMMU_UNMAP_DMA"), fake.iommu_maps().len()), (1, 0));
        // Dropping every device of the group closes it; the next open re-opens and re-attaches.
        drop((a, b));
    }

    #[test]
    fn missing_dev_vfio_vfio_is_reported_by_the_kernel_backend() {
        let s = sysfs(Some("vfio-pci"), Some(12), true);
        // Real syscall layer over a /dev/vfio that has the group node but no container node.
        let e = open_pci(&s.dev, &opts(&s, None)).err().unwrap();
        let msg = e.to_string();
        assert!(msg.starts_with("kernel VFIO unavailable: "), "{msg}");
        assert!(msg.ends_with("vfio does not exist (load vfio-pci and bind the device, see ci/real-nic.sh)"));
    }

    struct NullBackend;

    impl vfio_user::ServerBackend for NullBackend {
        fn region_read(&mut self, _: u32, _: u64, data: &mut [u8]) -> std::io::Result<()> {
            data.fill(0xab);
            Ok(())
        }
        fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn dma_map(
            &mut self,
            _: vfio_user::DmaMapFlags,
            _: u64,
            _: u64,
            _: u64,
            _: Option<std::fs::File>,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn dma_unmap(&mut self, _: vfio_user::DmaUnmapFlags, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn reset(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn set_irqs(&mut self, _: u32, _: u32, _: u32, _: u32, _: Vec<std::fs::File>) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_vfio_user_socket_wins_over_the_driver_link() {
        // Even bound to another driver: the emulator's socket decides.
        let s = sysfs(Some("ixgbe"), Some(12), false);
        let region = vfio_user::ServerRegion {
            region_info: vfio_bindings::bindings::vfio::vfio_region_info {
                argsz: 32,
                flags: crate::REGION_READ | crate::REGION_WRITE,
                index: 0,
                cap_offset: 0,
                size: 0x100,
                offset: 0,
            },
            sparse_areas: vec![],
            mmap_fd: None,
        };
        let server = vfio_user::Server::new(&s.dev.join(VFIO_USER_SOCKET), false, vec![], vec![region]).unwrap();
        let t = std::thread::spawn(move || {
            let _ = server.run(&mut NullBackend);
        });
        let dev = open_pci(&s.dev, &opts(&s, None)).unwrap();
        assert_eq!(dev.name(), BDF);
        let mut b = [0u8; 4];
        dev.region_read(0, 0, &mut b).unwrap();
        assert_eq!(b, [0xab; 4]);
        drop(dev);
        t.join().unwrap();
    }

    #[test]
    fn a_stale_vfio_user_socket_is_a_connect_error() {
        let s = sysfs(Some("vfio-pci"), Some(12), true);
        let sock = s.dev.join(VFIO_USER_SOCKET);
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let e = open_pci(&s.dev, &opts(&s, None)).err().unwrap();
        assert!(matches!(e, VfioError::Connect { .. }), "{e}");
    }
}
