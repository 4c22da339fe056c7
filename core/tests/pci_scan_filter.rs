//! End to end on the control path a lab process takes at start: EAL options, then the PCI filter,
//! then a scan of a fake sysfs named by `SYSFS_PCI_DEVICES`, then the devargs of an allowed device
//! validated against a driver's keys.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use lab_core::bus::pci::{scan, sysfs_root, PciFilter};
use lab_core::devargs::{BusKind, Devargs, KeyKind, KeySpec};
use lab_core::options::Options;

fn fake_function(root: &Path, bdf: &str, device: &str, emulated: bool) {
    let dir = root.join(bdf);
    fs::create_dir_all(&dir).unwrap();
    for (file, content) in [
        ("vendor", "0x8086\n"),
        ("device", device),
        ("subsystem_vendor", "0x8086\n"),
        ("subsystem_device", "0x0000\n"),
        ("class", "0x020000\n"),
        ("numa_node", "0\n"),
        (
            "resource",
            "0x00000000fe000000 0x00000000fe07ffff 0x0000000000140204\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
        ),
    ] {
        fs::write(dir.join(file), content).unwrap();
    }
    symlink("../../../bus/pci/drivers/vfio-pci", dir.join("driver")).unwrap();
    symlink("../../../kernel/iommu_groups/3", dir.join("iommu_group")).unwrap();
    if emulated {
        fs::write(dir.join("vfio-user.sock"), "").unwrap();
    }
}

// One test in this binary: it sets a process-wide environment variable.
#[test]
fn options_filter_scan_and_devargs_agree_on_which_device_is_probed() {
    let sysfs = tempfile::tempdir().unwrap();
    fake_function(sysfs.path(), "0000:00:05.0", "0x10fb\n", true);
    fake_function(sysfs.path(), "0000:00:05.1", "0x10fb\n", true);
    fake_function(sysfs.path(), "0000:00:06.0", "0x1572\n", false);
    std::env::set_var("SYSFS_PCI_DEVICES", sysfs.path());
    assert_eq!(sysfs_root(), sysfs.path());

    let (opts, app) = Options::parse([
        "-l",
        "0-1",
        "--file-prefix=it",
        "-a",
        "00:05.1,rxq=4",
        "-a",
        "0000:00:06.0",
        "-b",
        "06.0",
        "--",
        "--app-flag",
    ])
    .unwrap();
    assert_eq!(app, ["--app-flag"]);

    let filter = PciFilter::from_options(&opts.allow, &opts.block, opts.no_pci).unwrap();
    let probed: Vec<_> = scan(&sysfs_root()).unwrap().into_iter().filter(|d| filter.permits(&d.addr)).collect();
    assert_eq!(probed.len(), 1);
    let dev = &probed[0];
    assert_eq!(dev.addr.to_string(), "0000:00:05.1");
    assert_eq!(dev.id().to_string(), "8086:10fb");
    assert!(dev.has_vfio_user_socket());
    assert_eq!(dev.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(dev.iommu_group, Some(3));

    const IXGBE_KEYS: &[KeySpec] = &[KeySpec::new("rxq", KeyKind::U64 { min: 1, max: 64 }, "rx queues")];
    let devargs = Devargs::parse(&opts.allow[0]).unwrap();
    assert_eq!(devargs.bus(), BusKind::Pci);
    assert_eq!(devargs.pci_addr(), Some(dev.addr));
    let kv = devargs.validate("net_ixgbe", IXGBE_KEYS).unwrap();
    assert_eq!(kv.get_u64("rxq"), Some(4));

    // With --no-pci nothing is probed, whatever the lists say.
    let (opts, _) = Options::parse(["--no-pci", "-a", "00:05.1"]).unwrap();
    let filter = PciFilter::from_options(&opts.allow, &opts.block, opts.no_pci).unwrap();
    assert!(scan(&sysfs_root()).unwrap().iter().all(|d| !filter.permits(&d.addr)));
}
