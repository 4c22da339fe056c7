//! A PCI port's transport in this process, as a multi-process lab needs it.
//!
//! vfio-user (an emulated function): every process has its own connection. Kernel VFIO (a real
//! function bound to vfio-pci): a group opens once system-wide, so, as DPDK does, the primary
//! opens the container and the group and every process shares them: the primary publishes
//! duplicates of both fds for the device over the IPC channel, a secondary fetches them, adopts
//! them into its process's one [`VfioContext`] and asks for its own device fd. Devices of one
//! group (the functions of a dual-port NIC) share the group in every process.

use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

use lab_core::bus::pci::PciDevice;
use lab_core::ethdev::ProbeCtx;
use lab_core::vfio::{open_pci, DeviceIo, OpenOptions, VfioContext};

use crate::error::{Ctx, DriverError};
use crate::sys::share::{self, Published};

/// The IPC action a secondary asks the primary's container and group fds with.
pub const VFIO_FDS_ACTION: &str = "lab_vfio_fds";

/// This process's kernel VFIO state: one container, each group once.
fn context() -> &'static Arc<VfioContext> {
    static C: OnceLock<Arc<VfioContext>> = OnceLock::new();
    C.get_or_init(|| Arc::new(VfioContext::new()))
}

/// The device and, in the primary over kernel VFIO, what keeps its fds published.
pub(crate) struct Transport {
    pub(crate) dev: Arc<dyn DeviceIo>,
    pub(crate) published: Option<Published>,
    /// A secondary over kernel VFIO: the container is the primary's, and so is its DMA map of
    /// the shared memory (one IOMMU context for the lab); mapping it again is EEXIST.
    pub(crate) dma_mapped_by_primary: bool,
}

/// Opens `pci` for this process over the transport it offers.
pub(crate) fn open(ctx: &ProbeCtx<'_>, pci: &PciDevice) -> Result<Transport, DriverError> {
    if pci.has_vfio_user_socket() {
        let dev = open_pci(&pci.path, &OpenOptions::default()).ctx("cannot open device")?;
        return Ok(Transport { dev: Arc::from(dev), published: None, dma_mapped_by_primary: false });
    }
    let vctx = context();
    let opts = OpenOptions { kernel: Some(vctx.clone()), ..OpenOptions::default() };
    if ctx.is_primary() {
        // open_pci says in one line why a function cannot be used (unbound, no group, ...).
        let dev: Arc<dyn DeviceIo> = Arc::from(open_pci(&pci.path, &opts).ctx("cannot open device")?);
        let group = pci.iommu_group.ok_or_else(|| DriverError::state("no IOMMU group"))?;
        let c = vctx.container().ctx("VFIO container")?;
        let g = vctx.group(group).ctx(format!("VFIO group {group}"))?;
        let fds: Vec<OwnedFd> =
            vec![c.as_fd().try_clone_to_owned().ctx("dup")?, g.as_fd().try_clone_to_owned().ctx("dup")?];
        let published = share::publish(ctx.runtime, VFIO_FDS_ACTION, ctx.name, &fds, group.to_string().into_bytes())?;
        return Ok(Transport { dev, published: Some(published), dma_mapped_by_primary: false });
    }
    let (mut fds, meta) = share::fetch(ctx.runtime, VFIO_FDS_ACTION, ctx.name)?;
    let group: u32 = String::from_utf8_lossy(&meta)
        .trim()
        .parse()
        .map_err(|_| DriverError::state("the primary's VFIO answer names no group"))?;
    if pci.iommu_group != Some(group) || fds.len() != 2 {
        return Err(DriverError::state(format!(
            "the primary's VFIO answer ({} fds, group {group}) does not fit group {:?}",
            fds.len(),
            pci.iommu_group
        )));
    }
    let (g, c) = (fds.pop().expect("two fds"), fds.pop().expect("two fds"));
    if !vctx.has_container() {
        vctx.adopt_container(c).ctx("adopting the primary's VFIO container")?;
    }
    // Held until the device is open; then the device holds it, and the group fd closes with
    // the last device of the group in this process.
    let _held = (!vctx.has_group(group)).then(|| vctx.adopt_group(group, g));
    let dev = open_pci(&pci.path, &opts).ctx("cannot open device through the primary's VFIO group")?;
    Ok(Transport { dev: Arc::from(dev), published: None, dma_mapped_by_primary: true })
}
