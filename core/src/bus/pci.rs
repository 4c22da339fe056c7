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
mod tests;
