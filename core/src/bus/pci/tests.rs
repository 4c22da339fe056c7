use super::*;
use rstest::rstest;
use std::os::unix::fs::symlink;

fn a(domain: u32, bus: u8, devid: u8, function: u8) -> PciAddr {
    PciAddr { domain, bus, devid, function }
}

#[rstest]
#[case("0x8086\n", Some(0x8086))]
#[case("0x8086", Some(0x8086))]
#[case("32902\n", Some(32902))]
#[case("0100\n", Some(64))]
#[case("0\n", Some(0))]
#[case("0X1F", Some(31))]
#[case("", None)]
#[case("0x", None)]
#[case("08", None)]
#[case("-1", None)]
#[case("0x8086 junk", None)]
#[case("0x10000000000000000", None)]
fn numbers_parse_like_strtoul(#[case] text: &str, #[case] want: Option<u64>) {
    assert_eq!(parse_c_u64(text), want);
}

/// Writes a device directory the way Linux (or the emulator's fake sysfs) does.
struct FakeDev<'a> {
    name: &'a str,
    files: Vec<(&'a str, String)>,
    driver: Option<&'a str>,
    group: Option<&'a str>,
}

impl<'a> FakeDev<'a> {
    fn new(name: &'a str) -> Self {
        FakeDev {
            name,
            files: vec![
                ("vendor", "0x8086\n".into()),
                ("device", "0x10fb\n".into()),
                ("subsystem_vendor", "0x8086\n".into()),
                ("subsystem_device", "0x000c\n".into()),
                ("class", "0x020000\n".into()),
                ("numa_node", "-1\n".into()),
                (
                    "resource",
                    format!(
                        "0x{:016x} 0x{:016x} 0x{:016x}\n0x{:016x} 0x{:016x} 0x{:016x}\n\
                         0x{:016x} 0x{:016x} 0x{:016x}\n",
                        0xfe00_0000u64,
                        0xfe07_ffffu64,
                        0x0014_0204u64,
                        0u64,
                        0u64,
                        0u64,
                        0xe000u64,
                        0xe01fu64,
                        0x0004_0101u64
                    ),
                ),
            ],
            driver: Some("../../../bus/pci/drivers/vfio-pci"),
            group: Some("../../../kernel/iommu_groups/7"),
        }
    }

    fn set(mut self, file: &'a str, content: &str) -> Self {
        self.files.retain(|(f, _)| *f != file);
        self.files.push((file, content.to_string()));
        self
    }

    fn without(mut self, file: &'a str) -> Self {
        self.files.retain(|(f, _)| *f != file);
        if file == "driver" {
            self.driver = None;
        }
        if file == "iommu_group" {
            self.group = None;
        }
        self
    }

    fn write(self, root: &Path) -> PathBuf {
        let dir = root.join(self.name);
        fs::create_dir_all(&dir).unwrap();
        for (f, c) in &self.files {
            fs::write(dir.join(f), c).unwrap();
        }
        if let Some(d) = self.driver {
            symlink(d, dir.join("driver")).unwrap();
        }
        if let Some(g) = self.group {
            symlink(g, dir.join("iommu_group")).unwrap();
        }
        dir
    }
}

#[test]
fn scan_one_reads_every_attribute() {
    let root = tempfile::tempdir().unwrap();
    let dir = FakeDev::new("0000:00:05.0").set("numa_node", "1\n").set("class", "0xff020000\n").write(root.path());
    let dev = scan_one(&dir).unwrap();
    assert_eq!(dev.addr, a(0, 0, 5, 0));
    assert_eq!(dev.id(), PciId { vendor: 0x8086, device: 0x10fb });
    assert_eq!(dev.id().to_string(), "8086:10fb");
    assert_eq!((dev.subsystem_vendor, dev.subsystem_device), (0x8086, 0x000c));
    assert_eq!(dev.class, 0x020000);
    assert_eq!(dev.numa_node, Some(1));
    assert_eq!(
        dev.resources,
        vec![
            PciResource { index: 0, start: 0xfe00_0000, end: 0xfe07_ffff, flags: 0x0014_0204 },
            PciResource { index: 2, start: 0xe000, end: 0xe01f, flags: 0x0004_0101 },
        ]
    );
    assert_eq!(dev.resources[0].len(), 0x8_0000);
    assert_eq!(dev.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(dev.iommu_group, Some(7));
    assert_eq!(dev.path, dir);
    assert!(!dev.has_vfio_user_socket());
    fs::write(dir.join(VFIO_USER_SOCKET), "").unwrap();
    assert!(dev.has_vfio_user_socket());
    assert_eq!(dev.vfio_user_socket(), dir.join("vfio-user.sock"));
}

#[test]
fn scan_one_allows_missing_driver_group_and_numa_node() {
    let root = tempfile::tempdir().unwrap();
    let dir =
        FakeDev::new("0000:00:06.0").without("driver").without("iommu_group").without("numa_node").write(root.path());
    let dev = scan_one(&dir).unwrap();
    assert_eq!(dev.driver, None);
    assert_eq!(dev.iommu_group, None);
    assert_eq!(dev.numa_node, None);
}

#[rstest]
#[case::missing_vendor(FakeDev::new("0000:00:05.0").without("vendor"), "vendor")]
#[case::missing_device(FakeDev::new("0000:00:05.0").without("device"), "device")]
#[case::missing_subsystem_vendor(
    FakeDev::new("0000:00:05.0").without("subsystem_vendor"),
    "subsystem_vendor"
)]
#[case::missing_subsystem_device(
    FakeDev::new("0000:00:05.0").without("subsystem_device"),
    "subsystem_device"
)]
#[case::missing_class(FakeDev::new("0000:00:05.0").without("class"), "class")]
#[case::missing_resource(FakeDev::new("0000:00:05.0").without("resource"), "resource")]
#[case::vendor_not_a_number(FakeDev::new("0000:00:05.0").set("vendor", "intel\n"), "vendor")]
#[case::vendor_too_wide(FakeDev::new("0000:00:05.0").set("vendor", "0x18086\n"), "vendor")]
#[case::device_empty(FakeDev::new("0000:00:05.0").set("device", ""), "device")]
#[case::class_too_wide(FakeDev::new("0000:00:05.0").set("class", "0x100000000\n"), "class")]
#[case::numa_node_garbage(FakeDev::new("0000:00:05.0").set("numa_node", "x\n"), "numa_node")]
#[case::numa_node_below_minus_one(
    FakeDev::new("0000:00:05.0").set("numa_node", "-2\n"),
    "numa_node"
)]
#[case::resource_short_line(
    FakeDev::new("0000:00:05.0").set("resource", "0x0 0x0\n"),
    "resource"
)]
#[case::resource_garbage(
    FakeDev::new("0000:00:05.0").set("resource", "0x0 0x0 zz\n"),
    "resource"
)]
fn scan_one_names_the_bad_file(#[case] dev: FakeDev<'static>, #[case] file: &str) {
    let root = tempfile::tempdir().unwrap();
    let dir = dev.write(root.path());
    let err = scan_one(&dir).unwrap_err();
    let path = match &err {
        PciError::Read { path, .. } | PciError::Malformed { path, .. } => path,
        other => panic!("unexpected error {other}"),
    };
    assert_eq!(path, &dir.join(file), "{err}");
    assert!(err.to_string().contains(file), "{err}");
}

#[test]
fn scan_one_error_names_the_content() {
    let root = tempfile::tempdir().unwrap();
    let dir = FakeDev::new("0000:00:05.0").set("vendor", "intel\n").write(root.path());
    let msg = scan_one(&dir).unwrap_err().to_string();
    assert!(msg.contains("vendor") && msg.contains("intel"), "{msg}");
}

#[test]
fn scan_one_refuses_a_directory_not_named_by_address() {
    let root = tempfile::tempdir().unwrap();
    let dir = FakeDev::new("nic0").write(root.path());
    assert!(matches!(scan_one(&dir), Err(PciError::BadDeviceDir { .. })));
}

#[test]
fn scan_one_refuses_an_iommu_group_that_is_not_a_number() {
    let root = tempfile::tempdir().unwrap();
    let mut dev = FakeDev::new("0000:00:05.0");
    dev.group = Some("../../../kernel/iommu_groups/seven");
    let dir = dev.write(root.path());
    let msg = scan_one(&dir).unwrap_err().to_string();
    assert!(msg.contains("iommu_group") && msg.contains("seven"), "{msg}");
}

#[test]
fn scan_skips_bad_devices_and_foreign_entries_and_sorts() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    FakeDev::new("0000:00:06.0").write(r);
    FakeDev::new("0000:00:05.1").write(r);
    FakeDev::new("0001:00:00.0").write(r);
    FakeDev::new("0000:00:05.0").without("driver").write(r);
    FakeDev::new("0000:00:07.0").without("vendor").write(r);
    FakeDev::new("0000:00:08.0").set("resource", "garbage\n").write(r);
    fs::create_dir(r.join(".hidden")).unwrap();
    fs::create_dir(r.join("00:09.0")).unwrap();
    fs::write(r.join("not-a-device"), "x").unwrap();
    let found: Vec<String> = scan(r).unwrap().iter().map(|d| d.addr.to_string()).collect();
    assert_eq!(found, ["0000:00:05.0", "0000:00:05.1", "0000:00:06.0", "0001:00:00.0"]);
}

#[test]
fn scan_of_a_missing_root_is_empty() {
    let root = tempfile::tempdir().unwrap();
    assert!(scan(&root.path().join("absent")).unwrap().is_empty());
}

#[test]
fn scan_of_a_file_root_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("file");
    fs::write(&file, "").unwrap();
    let err = scan(&file).unwrap_err();
    assert!(matches!(&err, PciError::ReadDir { path, .. } if path == &file));
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[rstest]
#[case::empty_lists_permit_all(&[], &[], false, "0000:00:05.0", true)]
#[case::no_pci_permits_nothing(&[], &[], true, "0000:00:05.0", false)]
#[case::no_pci_beats_allow(&["0000:00:05.0"], &[], true, "0000:00:05.0", false)]
#[case::allowed(&["0000:00:05.0,key=v"], &[], false, "0000:00:05.0", true)]
#[case::not_in_allow(&["0000:00:05.0"], &[], false, "0000:00:05.1", false)]
#[case::short_allow(&["05.1"], &[], false, "0000:00:05.1", true)]
#[case::prefixed_allow(&["pci:0000:00:05.1"], &[], false, "0000:00:05.1", true)]
#[case::blocked(&[], &["0000:00:05.0"], false, "0000:00:05.0", false)]
#[case::other_domain_not_blocked(&[], &["0000:00:05.0"], false, "0001:00:05.0", true)]
#[case::block_beats_allow(&["05.0"], &["05.0"], false, "0000:00:05.0", false)]
fn filter_permits(
    #[case] allow: &[&str],
    #[case] block: &[&str],
    #[case] no_pci: bool,
    #[case] addr: &str,
    #[case] want: bool,
) {
    let f = PciFilter::from_options(&strings(allow), &strings(block), no_pci).unwrap();
    assert_eq!(f.permits(&addr.parse().unwrap()), want);
}

#[rstest]
#[case(&["net_null0"], &[], "allow", "net_null0")]
#[case(&["0000:00:05.0", "0000:00:99.0,x=1"], &[], "allow", "0000:00:99.0,x=1")]
#[case(&[], &[""], "block", "")]
fn filter_names_the_bad_entry(
    #[case] allow: &[&str],
    #[case] block: &[&str],
    #[case] option: &str,
    #[case] entry: &str,
) {
    let err = PciFilter::from_options(&strings(allow), &strings(block), false).unwrap_err();
    assert!(
        matches!(&err, PciError::BadFilterEntry { option: o, entry: e, .. } if *o == option && e == entry),
        "{err}"
    );
}
