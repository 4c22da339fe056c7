//! The PCI bus: addresses, the sysfs scan and the allow/block filter.
//!
//! Read in this order:
//!
//! 1. [`PciAddr`]: a function's address (`0000:00:05.0`), parsed from the three forms DPDK accepts and
//!    ordered field by field (domain, bus, device, function); it lives in [`crate::addr`] and is
//!    re-exported here.
//! 2. [`scan`] / [`scan_one`]: read `<root>/<BDF>/{vendor,device,...}` the way Linux writes them. The
//!    root is [`sysfs_root`]: `$SYSFS_PCI_DEVICES` (the emulator's fake sysfs in CI) or
//!    `/sys/bus/pci/devices`. A malformed device is skipped with a warning, never a panic.
//! 3. [`PciFilter`]: which scanned functions this process may probe (`-a`, `-b`, `--no-pci`).

#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

pub use crate::addr::{PciAddr, PciAddrError, PciId, MAX_DEVID, MAX_FUNCTION};

/// Environment variable that points the scan at another sysfs tree (as DPDK's `SYSFS_PCI_DEVICES`).
pub const SYSFS_PCI_DEVICES_ENV: &str = "SYSFS_PCI_DEVICES";

/// Default location of the PCI devices directory.
pub const DEFAULT_SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Name of the vfio-user socket the emulator puts in an emulated function's sysfs directory.
pub const VFIO_USER_SOCKET: &str = "vfio-user.sock";

/// Largest sysfs attribute file the scan reads; anything longer is malformed (Linux attributes fit a page).
const MAX_ATTR_LEN: u64 = 64 * 1024;

/// What went wrong on the PCI bus: every variant names the text, path or file involved.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// A sysfs file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file was read but its content is not what Linux writes there.
    #[error("malformed {}: {value:?}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its content (or the offending line), as read.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A device directory's name is not a full PCI address (`DDDD:BB:DD.F`).
    #[error("{}: directory name is not a PCI address (DDDD:BB:DD.F)", path.display())]
    BadDeviceDir {
        /// The directory.
        path: PathBuf,
    },
    /// The devices directory exists but could not be listed.
    #[error("cannot list {}: {source}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An `--allow` / `--block` entry does not start with a PCI address.
    #[error("bad --{option} entry {entry:?}: {reason}")]
    BadFilterEntry {
        /// `allow` or `block`.
        option: &'static str,
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One line of a device's `resource` file with non-zero flags: a BAR, the ROM or a bridge window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciResource {
    /// Line number in `resource` (0..=5 are BAR0..BAR5, 6 is the expansion ROM).
    pub index: usize,
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
    /// Linux `IORESOURCE_*` flags.
    pub flags: u64,
}

impl PciResource {
    /// Size in bytes (`end - start + 1`), 0 when the line is inconsistent.
    pub fn len(&self) -> u64 {
        if self.end < self.start {
            0
        } else {
            (self.end - self.start).saturating_add(1)
        }
    }

    /// True when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A PCI function as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// Its address (the directory name).
    pub addr: PciAddr,
    /// `vendor`.
    pub vendor: u16,
    /// `device`.
    pub device: u16,
    /// `subsystem_vendor`.
    pub subsystem_vendor: u16,
    /// `subsystem_device`.
    pub subsystem_device: u16,
    /// `class`, low 24 bits (class, subclass, programming interface).
    pub class: u32,
    /// `numa_node`; `None` when absent or -1.
    pub numa_node: Option<i32>,
    /// Lines of `resource` with non-zero flags.
    pub resources: Vec<PciResource>,
    /// Basename of the `driver` link (`vfio-pci`), `None` when unbound.
    pub driver: Option<String>,
    /// Basename of the `iommu_group` link, `None` when absent.
    pub iommu_group: Option<u32>,
    /// The device directory (`<root>/<BDF>`).
    pub path: PathBuf,
}

impl PciDevice {
    /// Vendor and device id.
    pub fn id(&self) -> PciId {
        PciId { vendor: self.vendor, device: self.device }
    }

    /// Path of the vfio-user socket an emulated function has in its directory.
    pub fn vfio_user_socket(&self) -> PathBuf {
        self.path.join(VFIO_USER_SOCKET)
    }

    /// True when [`vfio_user_socket`](Self::vfio_user_socket) exists: the function is served over
    /// vfio-user rather than kernel VFIO.
    pub fn has_vfio_user_socket(&self) -> bool {
        self.vfio_user_socket().exists()
    }
}

/// The PCI devices directory: `$SYSFS_PCI_DEVICES` if set and non-empty, else `/sys/bus/pci/devices`.
pub fn sysfs_root() -> PathBuf {
    match std::env::var_os(SYSFS_PCI_DEVICES_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_SYSFS_PCI_DEVICES),
    }
}

/// Scans `root` (see [`sysfs_root`]) and returns every readable device, sorted by address.
///
/// Entries whose name is not a full PCI address, and dot-files, are skipped. A device whose
/// required files are missing or malformed is skipped with a warning naming the file. A missing
/// `root` gives an empty list (a machine or container without PCI).
pub fn scan(root: &Path) -> Result<Vec<PciDevice>, PciError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            debug!(root = %root.display(), "PCI devices directory absent: no PCI devices");
            return Ok(Vec::new());
        }
        Err(source) => return Err(PciError::ReadDir { path: root.to_path_buf(), source }),
    };
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PciError::ReadDir { path: root.to_path_buf(), source })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            debug!(root = %root.display(), "skipping non-UTF-8 entry");
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if PciAddr::parse_full(name).is_err() {
            debug!(root = %root.display(), entry = name, "skipping entry that is not a PCI address");
            continue;
        }
        match scan_one(&entry.path()) {
            Ok(dev) => devices.push(dev),
            Err(e) => warn!(device = name, "skipping PCI device: {e}"),
        }
    }
    devices.sort_by_key(|d| d.addr);
    Ok(devices)
}

/// Reads one device directory, named by its full PCI address.
///
/// `vendor`, `device`, `subsystem_vendor`, `subsystem_device`, `class` and `resource` are required;
/// `numa_node`, `driver` and `iommu_group` may be absent but must be well-formed when present.
pub fn scan_one(dir: &Path) -> Result<PciDevice, PciError> {
    let addr = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| PciAddr::parse_full(n).ok())
        .ok_or_else(|| PciError::BadDeviceDir { path: dir.to_path_buf() })?;
    let vendor = read_u16(dir, "vendor")?;
    let device = read_u16(dir, "device")?;
    let subsystem_vendor = read_u16(dir, "subsystem_vendor")?;
    let subsystem_device = read_u16(dir, "subsystem_device")?;
    let class = read_number(dir, "class").and_then(|(v, path, text)| {
        u32::try_from(v).map(|c| c & 0x00ff_ffff).map_err(|_| malformed(path, text, "a 32-bit class code"))
    })?;
    let numa_node = read_numa_node(dir)?;
    let resources = read_resources(dir)?;
    let driver = read_link_basename(dir, "driver")?;
    let iommu_group =
        match read_link_basename(dir, "iommu_group")? {
            None => None,
            Some(g) => Some(g.parse::<u32>().map_err(|_| {
                malformed(dir.join("iommu_group"), g.clone(), "a link whose basename is a group number")
            })?),
        };
    Ok(PciDevice {
        addr,
        vendor,
        device,
        subsystem_vendor,
        subsystem_device,
        class,
        numa_node,
        resources,
        driver,
        iommu_group,
        path: dir.to_path_buf(),
    })
}

fn malformed(path: PathBuf, value: impl Into<String>, expected: &str) -> PciError {
    PciError::Malformed { path, value: value.into(), reason: format!("expected {expected}") }
}

/// Reads a sysfs attribute (bounded), `Ok(None)` when the file does not exist.
fn read_attr(path: &Path) -> Result<Option<String>, PciError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PciError::Read { path: path.to_path_buf(), source }),
    };
    let mut bytes = Vec::new();
    file.take(MAX_ATTR_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PciError::Read { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > MAX_ATTR_LEN {
        return Err(malformed(
            path.to_path_buf(),
            format!("{} bytes or more", bytes.len()),
            "a sysfs attribute of at most 64 KiB",
        ));
    }
    String::from_utf8(bytes).map(Some).map_err(|e| malformed(path.to_path_buf(), format!("{e}"), "UTF-8 text"))
}

/// Reads a required attribute.
fn read_required(dir: &Path, file: &str) -> Result<(String, PathBuf), PciError> {
    let path = dir.join(file);
    match read_attr(&path)? {
        Some(t) => Ok((t, path)),
        None => Err(PciError::Read { path, source: io::Error::from(io::ErrorKind::NotFound) }),
    }
}

/// Parses an unsigned number as C's `strtoul(s, NULL, 0)` would: `0x` hex, leading `0` octal,
/// else decimal. Surrounding whitespace (the trailing newline) is ignored.
pub(crate) fn parse_c_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Reads a required numeric attribute, returning the value, the path and the text read.
fn read_number(dir: &Path, file: &str) -> Result<(u64, PathBuf, String), PciError> {
    let (text, path) = read_required(dir, file)?;
    match parse_c_u64(&text) {
        Some(v) => Ok((v, path, text)),
        None => Err(malformed(path, text, "a number (0x hex, 0 octal or decimal)")),
    }
}

fn read_u16(dir: &Path, file: &str) -> Result<u16, PciError> {
    let (v, path, text) = read_number(dir, file)?;
    u16::try_from(v).map_err(|_| malformed(path, text, "a 16-bit id (at most 0xffff)"))
}

fn read_numa_node(dir: &Path) -> Result<Option<i32>, PciError> {
    let path = dir.join("numa_node");
    let Some(text) = read_attr(&path)? else {
        return Ok(None);
    };
    match text.trim().parse::<i32>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n)),
        _ => Err(malformed(path, text, "a node number or -1")),
    }
}

fn read_resources(dir: &Path) -> Result<Vec<PciResource>, PciError> {
    let (text, path) = read_required(dir, "resource")?;
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<Option<u64>> = line.split_whitespace().map(parse_c_u64).collect();
        let [Some(start), Some(end), Some(flags)] = fields.as_slice() else {
            return Err(PciError::Malformed {
                path,
                value: line.to_string(),
                reason: format!("line {index}: expected three numbers: start end flags"),
            });
        };
        if *flags != 0 {
            out.push(PciResource { index, start: *start, end: *end, flags: *flags });
        }
    }
    Ok(out)
}

/// Basename of a symlink in `dir`, `Ok(None)` when there is no such entry.
fn read_link_basename(dir: &Path, link: &str) -> Result<Option<String>, PciError> {
    let path = dir.join(link);
    let target = match fs::read_link(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PciError::Read { path, source }),
    };
    match target.file_name().and_then(|n| n.to_str()) {
        Some(n) => Ok(Some(n.to_string())),
        None => Err(malformed(path, target.display().to_string(), "a link with a UTF-8 basename")),
    }
}

/// Which PCI functions this process may probe: built from `-a`, `-b` and `--no-pci`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciFilter {
    allow: Vec<PciAddr>,
    block: Vec<PciAddr>,
    no_pci: bool,
}

impl PciFilter {
    /// Builds the filter from the option lists. Entries may carry devargs after a comma
    /// (`0000:00:05.0,key=v`) and an optional `pci:` prefix; only the address is kept.
    pub fn from_options(allow: &[String], block: &[String], no_pci: bool) -> Result<PciFilter, PciError> {
        fn addrs(option: &'static str, list: &[String]) -> Result<Vec<PciAddr>, PciError> {
            list.iter()
                .map(|entry| {
                    let head = entry.split(',').next().unwrap_or_default();
                    let head = head.strip_prefix("pci:").unwrap_or(head);
                    head.parse::<PciAddr>().map_err(|e| PciError::BadFilterEntry {
                        option,
                        entry: entry.clone(),
                        reason: e.reason,
                    })
                })
                .collect()
        }
        Ok(PciFilter { allow: addrs("allow", allow)?, block: addrs("block", block)?, no_pci })
    }

    /// True when `addr` may be probed: nothing with `--no-pci`; only allowed addresses when the allow
    /// list is non-empty; never a blocked address.
    pub fn permits(&self, addr: &PciAddr) -> bool {
        if self.no_pci {
            return false;
        }
        if !self.allow.is_empty() && !self.allow.contains(addr) {
            return false;
        }
        !self.block.contains(addr)
    }

    /// The allow list.
    pub fn allowed(&self) -> &[PciAddr] {
        &self.allow
    }

    /// The block list.
    pub fn blocked(&self) -> &[PciAddr] {
        &self.block
    }

    /// True with `--no-pci`.
    pub fn no_pci(&self) -> bool {
        self.no_pci
    }
}

#[cfg(test)]
mod tests {
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
        let dir = FakeDev::new("0000:00:06.0")
            .without("driver")
            .without("iommu_group")
            .without("numa_node")
            .write(root.path());
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
}
