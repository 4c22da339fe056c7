use super::*;
use crate::fake::{FakeDevice, FakeVfio};
use crate::Bar;

const BDF: &str = "0000:01:00.0";

fn fake() -> Arc<FakeVfio> {
    Arc::new(FakeVfio::new().with_group(12, true, vec![FakeDevice::nic(BDF)]))
}

fn open(f: &Arc<FakeVfio>) -> KernelDevice {
    KernelDevice::open_with(f.clone(), BDF, 12, None).unwrap()
}

#[test]
fn primary_open_attaches_group_then_sets_type1v2() {
    let f = fake();
    let dev = open(&f);
    assert_eq!(f.iommu_type(), Some(vb::VFIO_TYPE1v2_IOMMU));
    let calls = f.calls();
    let pos = |c| calls.iter().position(|&x| x == c).unwrap();
    assert!(pos("GROUP_SET_CONTAINER") < pos("SET_IOMMU"));
    assert!(pos("SET_IOMMU") < pos("GROUP_GET_DEVICE_FD"));
    // Nine regions as vfio-pci reports them; the VGA one (EINVAL, no VGA) is absent, not fatal.
    assert_eq!(dev.regions().len(), 9);
    assert_eq!((dev.regions()[8].size, dev.regions()[8].flags), (0, 0));
    assert_eq!(dev.irqs()[2].count, 8);
    assert_eq!(dev.name(), BDF);
    assert!(dev.is_alive());
}

#[test]
fn a_removal_request_from_vfio_pci_makes_the_device_not_alive() {
    let f = fake();
    let dev = open(&f);
    // The primary wires the request irq at open.
    let req = f.irq_sets(BDF).into_iter().find(|s| s.index == vb::VFIO_PCI_REQ_IRQ_INDEX).expect("REQ wired");
    assert_eq!((req.start, req.count, req.fds), (0, 1, 1));
    assert!(dev.is_alive());
    assert!(f.request_removal(BDF));
    assert!(!dev.is_alive());
    // It stays so: the removal waits for the close.
    assert!(!dev.is_alive());
}

#[test]
fn a_secondary_leaves_the_request_irq_to_the_primary() {
    let f = fake();
    let primary = open(&f);
    let fds = AdoptedFds {
        container: primary.container().as_fd().try_clone_to_owned().unwrap(),
        group: primary.group().as_fd().try_clone_to_owned().unwrap(),
    };
    let before = f.irq_sets(BDF).len();
    let sec = KernelDevice::open_with(f.clone(), BDF, 12, Some(fds)).unwrap();
    assert_eq!(f.irq_sets(BDF).len(), before, "the secondary set an irq at open");
    assert!(f.request_removal(BDF));
    // Seen by the primary, whose monitor detaches the port everywhere.
    assert!(!primary.is_alive());
    assert!(sec.is_alive());
}

#[test]
fn falls_back_to_type1_and_refuses_no_type1() {
    let f = Arc::new(FakeVfio::new().with_extensions(vec![vb::VFIO_TYPE1_IOMMU]).with_group(
        12,
        true,
        vec![FakeDevice::nic(BDF)],
    ));
    let _dev = open(&f);
    assert_eq!(f.iommu_type(), Some(vb::VFIO_TYPE1_IOMMU));
    let f = Arc::new(FakeVfio::new().with_extensions(vec![]));
    assert!(matches!(Container::open_with(f), Err(VfioError::NoIommuType)));
}

#[test]
fn wrong_api_version_is_refused() {
    let f = Arc::new(FakeVfio::new().with_api_version(7));
    let e = Container::open_with(f).unwrap_err();
    assert!(matches!(e, VfioError::ApiVersion { version: 7, expected: 0 }), "{e}");
}

#[test]
fn group_not_viable_or_missing_is_reported_with_its_number() {
    let f = Arc::new(FakeVfio::new().with_group(12, false, vec![FakeDevice::nic(BDF)]));
    let e = KernelDevice::open_with(f.clone(), BDF, 12, None).unwrap_err();
    assert!(matches!(e, VfioError::GroupNotViable { group: 12 }), "{e}");
    let e = KernelDevice::open_with(f, BDF, 13, None).unwrap_err();
    assert!(matches!(e, VfioError::OpenGroup { group: 13, .. }), "{e}");
    assert!(e.to_string().contains("group 13"));
}

#[test]
fn unknown_device_name_is_an_ioctl_error_naming_the_device() {
    let f = fake();
    let e = KernelDevice::open_with(f, "0000:09:00.0", 12, None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("VFIO_GROUP_GET_DEVICE_FD") && msg.contains("0000:09:00.0"), "{msg}");
}

#[test]
fn missing_dev_vfio_gives_one_clear_line() {
    let f = Arc::new(FakeVfio::new().without_container());
    let e = KernelDevice::open_with(f, BDF, 12, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel VFIO unavailable: /dev/vfio/vfio does not exist (load vfio-pci and bind the device, see ci/real-nic.sh)"
    );
}

#[test]
fn region_caps_are_parsed_after_a_re_ask() {
    let f = fake();
    let dev = open(&f);
    let bar0 = &dev.regions()[0];
    assert_eq!(bar0.size, 0x20000);
    assert_eq!(bar0.sparse, vec![crate::SparseArea { offset: 0x1000, size: 0x1000 }]);
    // Two GET_REGION_INFO for BAR0 (fixed part, then with caps), one each for the others.
    let n = f.calls().iter().filter(|&&c| c == "DEVICE_GET_REGION_INFO").count();
    assert_eq!(n, 10);
    assert_eq!(dev.regions()[7].size, 256);
    assert!(dev.regions()[7].sparse.is_empty());
}

#[test]
fn config_space_round_trips_and_bounds_are_checked() {
    let dev = open(&fake());
    dev.config_write(4, &[0x06, 0x04]).unwrap();
    let mut b = [0u8; 2];
    dev.config_read(4, &mut b).unwrap();
    assert_eq!(b, [0x06, 0x04]);
    assert!(matches!(dev.config_read(255, &mut b), Err(VfioError::OutOfRange { .. })));
    assert!(matches!(dev.region_read(3, 0, &mut b), Err(VfioError::NoSuchRegion { .. })));
}

#[test]
fn bar_uses_the_mapping_for_sparse_pages_and_traps_the_rest() {
    let dev: Arc<dyn DeviceIo> = Arc::new(open(&fake()));
    let bar = Bar::open(dev.clone(), 0).unwrap();
    assert!(bar.mapped_ptr(0x1000).is_some());
    assert!(bar.mapped_ptr(0x1ffc).is_some());
    assert!(bar.mapped_ptr(0x2000).is_none());
    assert!(bar.mapped_ptr(0x0).is_none());
    assert!(bar.mapped_ptr(0x1002).is_none());
    // A mapped write is visible through the trapped path (same file), and vice versa.
    bar.write32(0x1010, 0xdead_beef);
    let mut b = [0u8; 4];
    dev.region_read(0, 0x1010, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
    bar.write32(0x10, 0x1234_5678);
    assert_eq!(bar.read32(0x10), 0x1234_5678);
    bar.set_bits(0x10, 0x8000_0000);
    bar.clear_bits(0x10, 0x0000_0078);
    assert_eq!(bar.read32(0x10), 0x9234_5600);
    assert!(matches!(bar.try_read32(0x11), Err(VfioError::Misaligned { .. })));
    assert!(matches!(bar.try_read32(0x20000), Err(VfioError::OutOfRange { .. })));
    assert_eq!(bar.read32(0x20000), u32::MAX);
    let v =
        bar.poll_until(0x10, 0x8000_0000, 0x8000_0000, Duration::from_millis(10), Duration::from_millis(1)).unwrap();
    assert_eq!(v, 0x9234_5600);
    let e = bar.poll_until(0x10, 0x1, 0x1, Duration::from_millis(30), Duration::from_millis(5)).unwrap_err();
    // It polled until its deadline and reports what it last read.
    assert!(
        matches!(e, VfioError::PollTimeout { last: 0x9234_5600, waited, .. } if waited >= Duration::from_millis(30)),
        "{e}"
    );
}

use std::time::Duration;

#[test]
fn dma_bookkeeping_refuses_overlap_and_inexact_unmap() {
    let f = fake();
    let dev = open(&f);
    let mem = nix::sys::memfd::memfd_create(c"dma", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    let region =
        |iova, size| DmaRegion { iova, size, fd: mem.as_fd(), fd_offset: 0, vaddr: 0x7000_0000usize as *mut u8 };
    dev.dma_map(&region(0x1_0000_0000, 0x20_0000)).unwrap();
    let e = dev.dma_map(&region(0x1_0010_0000, 0x1000)).unwrap_err();
    assert!(matches!(e, VfioError::DmaOverlap { .. }), "{e}");
    assert_eq!(f.iommu_maps(), vec![(0x1_0000_0000, 0x20_0000, 0x7000_0000)]);
    let e = dev.dma_unmap(0x1_0000_0000, 0x1000).unwrap_err();
    assert!(matches!(e, VfioError::DmaNotMapped { .. }), "{e}");
    dev.dma_unmap(0x1_0000_0000, 0x20_0000).unwrap();
    assert!(f.iommu_maps().is_empty());
    // The ioctl was never issued for the refused requests.
    let maps = f.calls().iter().filter(|&&c| c == "IOMMU_MAP_DMA").count();
    let unmaps = f.calls().iter().filter(|&&c| c == "IOMMU_UNMAP_DMA").count();
    assert_eq!((maps, unmaps), (1, 1));
}

#[test]
fn secondary_adopts_container_and_group_fds_without_reattaching() {
    let f = fake();
    let primary = open(&f);
    let adopted = AdoptedFds {
        container: primary.container().as_fd().try_clone_to_owned().unwrap(),
        group: primary.group().as_fd().try_clone_to_owned().unwrap(),
    };
    let attaches_before = f.calls().iter().filter(|&&c| c == "GROUP_SET_CONTAINER").count();
    let secondary = KernelDevice::open_with(f.clone(), BDF, 12, Some(adopted)).unwrap();
    let calls = f.calls();
    assert_eq!(calls.iter().filter(|&&c| c == "GROUP_SET_CONTAINER").count(), attaches_before);
    assert_eq!(calls.iter().filter(|&&c| c == "SET_IOMMU").count(), 1);
    assert_eq!(secondary.regions(), primary.regions());
    // A second primary-style open of the same group is refused by the "kernel".
    assert!(KernelDevice::open_with(f, BDF, 12, None).is_err());
}

#[test]
fn irqs_and_reset_reach_the_kernel() {
    let f = fake();
    let dev = open(&f);
    let e1 = nix::sys::eventfd::EventFd::new().unwrap();
    let e2 = nix::sys::eventfd::EventFd::new().unwrap();
    dev.set_irq_eventfds(2, 6, &[e1.as_fd(), e2.as_fd()]).unwrap();
    let e = dev.set_irq_eventfds(2, 7, &[e1.as_fd(), e2.as_fd()]).unwrap_err();
    assert!(matches!(e, VfioError::InvalidArgument { .. }), "{e}");
    assert!(matches!(dev.disable_irqs(9), Err(VfioError::NoSuchIrq { index: 9, .. })));
    dev.disable_irqs(2).unwrap();
    dev.reset().unwrap();
    // The first set is the request irq the primary wires at open.
    let sets: Vec<_> = f.irq_sets(BDF).into_iter().filter(|s| s.index != vb::VFIO_PCI_REQ_IRQ_INDEX).collect();
    assert_eq!(sets.len(), 2);
    assert_eq!((sets[0].start, sets[0].count, sets[0].fds), (6, 2, 2));
    assert_eq!(sets[0].flags, vb::VFIO_IRQ_SET_DATA_EVENTFD | vb::VFIO_IRQ_SET_ACTION_TRIGGER);
    assert_eq!((sets[1].count, sets[1].fds), (0, 0));
    assert_eq!(f.resets(BDF), 1);
}

#[test]
fn releasing_the_last_device_detaches_the_group_and_a_reattach_starts_afresh() {
    let f = fake();
    let ctx = VfioContext::with_sys(f.clone());
    let mem = nix::sys::memfd::memfd_create(c"dma", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    let r = DmaRegion { iova: 0x1_0000_0000, size: 0x1000, fd: mem.as_fd(), fd_offset: 0, vaddr: std::ptr::null_mut() };
    let dev = ctx.open_device(BDF, 12).unwrap();
    dev.dma_map(&r).unwrap();
    drop(dev);
    // The group left the container: the kernel dropped the IOMMU and the map.
    assert_eq!(f.iommu_type(), None);
    assert!(f.iommu_maps().is_empty());
    assert!(f.calls().contains(&"GROUP_UNSET_CONTAINER"));
    // Hotplug the same device again: group re-opened, IOMMU set again, same map accepted.
    let dev = ctx.open_device(BDF, 12).unwrap();
    assert_eq!(f.calls().iter().filter(|&&c| c == "SET_IOMMU").count(), 2);
    dev.dma_map(&r).unwrap();
    assert_eq!(f.iommu_maps().len(), 1);
}

#[test]
fn a_second_device_of_an_open_group_reuses_it() {
    const BDF2: &str = "0000:01:00.1";
    let f = Arc::new(FakeVfio::new().with_group(12, true, vec![FakeDevice::nic(BDF), FakeDevice::nic(BDF2)]));
    let ctx = VfioContext::with_sys(f.clone());
    let a = ctx.open_device(BDF, 12).unwrap();
    let b = ctx.open_device(BDF2, 12).unwrap();
    assert!(Arc::ptr_eq(a.group(), b.group()));
    drop(a);
    // The group stays attached while b uses it.
    assert!(!f.calls().contains(&"GROUP_UNSET_CONTAINER"));
    assert_eq!(f.iommu_type(), Some(vb::VFIO_TYPE1v2_IOMMU));
    drop(b);
    assert!(f.calls().contains(&"GROUP_UNSET_CONTAINER"));
}

#[test]
fn adopted_groups_are_not_detached_by_the_secondary() {
    let f = fake();
    let primary = open(&f);
    let secondary = KernelDevice::open_with(
        f.clone(),
        BDF,
        12,
        Some(AdoptedFds {
            container: primary.container().as_fd().try_clone_to_owned().unwrap(),
            group: primary.group().as_fd().try_clone_to_owned().unwrap(),
        }),
    )
    .unwrap();
    drop(secondary);
    assert!(!f.calls().contains(&"GROUP_UNSET_CONTAINER"));
    assert_eq!(f.iommu_type(), Some(vb::VFIO_TYPE1v2_IOMMU));
}

#[test]
fn kernel_device_open_on_a_machine_without_vfio_says_so_in_one_line() {
    if std::path::Path::new("/dev/vfio/vfio").exists() {
        return; // a VFIO host: nothing to check here
    }
    let e = KernelDevice::open(BDF, 12).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel VFIO unavailable: /dev/vfio/vfio does not exist (load vfio-pci and bind the device, see ci/real-nic.sh)"
    );
}
