//! Transport choice for a PCI function, from its sysfs directory.
//!
//! `<dir>/vfio-user.sock` exists: vfio-user. Else bound to vfio-pci and `/dev/vfio/<group>`
//! exists: kernel VFIO. Else the device cannot be used, said in one line, as DPDK does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::kernel::{AdoptedFds, KernelDevice};
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
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            timeout: DEFAULT_TIMEOUT,
            adopted: None,
            vfio_dir: PathBuf::from("/dev/vfio"),
            sys: None,
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
    let sys: Arc<dyn VfioSys> = match &opts.sys {
        Some(s) => s.clone(),
        None => Arc::new(RealVfio::with_dir(&opts.vfio_dir)),
    };
    let adopted = match &opts.adopted {
        Some(fds) => Some(fds.try_clone().map_err(|source| VfioError::OpenGroup { group, source })?),
        None => None,
    };
    tracing::debug!(device = %addr, group, "using kernel VFIO");
    Ok(Box::new(KernelDevice::open_with(sys, &addr, group, adopted)?))
}

fn basename(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
