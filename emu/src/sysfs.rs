//! Fake sysfs: `<root>/<BDF>/` entries in the format Linux prints under `/sys/bus/pci/devices`, so a
//! DPDK-style PCI scan pointed at `<root>` (`SYSFS_PCI_DEVICES`) finds the emulated functions, plus our
//! extension `vfio-user.sock`, the function's vfio-user socket.
//!
//! Files: `vendor`, `device`, `subsystem_vendor`, `subsystem_device` (`0x8086\n`), `class`
//! (`0x020000\n`), `numa_node`, `sriov_numvfs`, `sriov_totalvfs`, `enable`, `irq`, `resource` (13 lines
//! `0x%016x 0x%016x 0x%016x`), `uevent`, `modalias`; symlinks `driver -> ../../../bus/pci/drivers/vfio-pci`
//! and `iommu_group -> ../../../kernel/iommu_groups/<n>` (dangling, only the basename matters).

use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Name of the socket file inside a function's directory.
pub const SOCKET_NAME: &str = "vfio-user.sock";
/// A listening stream socket at `path` that only its owner can connect to: bound, made 0600,
/// and only then listening, so no other user's connect can slip in between (a connect to a
/// socket that does not listen yet is refused). No umask games: other threads keep theirs.
pub fn listen_owner_only(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    listen(&fd, Backlog::new(128)?)?;
    Ok(UnixListener::from(fd))
}

/// Longest path `bind(2)` takes for an AF_UNIX socket.
const SUN_PATH_MAX: usize = 107;
/// Linux IORESOURCE_MEM, the bit DPDK checks to treat a BAR as memory.
pub const IORESOURCE_MEM: u64 = 0x200;

/// Fake sysfs errors.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// The PCI address is not `DDDD:BB:DD.F`.
    #[error("invalid PCI address \"{bdf}\": expected DDDD:BB:DD.F (hex domain, bus, device <= 1f; function 0-7)")]
    BadAddress {
        /// What was given.
        bdf: String,
    },
    /// The function directory already exists.
    #[error("{path} already exists (another lab-nic, or a stale tree: remove it)")]
    Exists {
        /// Directory.
        path: PathBuf,
    },
    /// A file could not be written or removed.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A PCI address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Domain (segment).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device (0..=0x1f).
    pub dev: u8,
    /// Function (0..=7).
    pub func: u8,
}

impl Bdf {
    /// Parses `DDDD:BB:DD.F`.
    pub fn parse(s: &str) -> Result<Self, SysfsError> {
        let bad = || SysfsError::BadAddress { bdf: s.to_owned() };
        let (dbd, f) = s.split_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = dbd.split(':').collect();
        if parts.len() != 3 || parts[0].len() != 4 || parts[1].len() != 2 || parts[2].len() != 2 || f.len() != 1 {
            return Err(bad());
        }
        let hex = |t: &str| {
            if t.chars().all(|c| c.is_ascii_hexdigit()) {
                u32::from_str_radix(t, 16).ok()
            } else {
                None
            }
        };
        let domain = hex(parts[0]).ok_or_else(bad)? as u16;
        let bus = hex(parts[1]).ok_or_else(bad)? as u8;
        let dev = hex(parts[2]).ok_or_else(bad)?;
        let func = f.parse::<u8>().map_err(|_| bad())?;
        if dev > 0x1f || func > 7 {
            return Err(bad());
        }
        Ok(Self { domain, bus, dev: dev as u8, func })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.domain, self.bus, self.dev, self.func)
    }
}

/// What a function's sysfs entry says about it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem_device: u16,
    /// Class code (24 bits).
    pub class: u32,
    /// NUMA node (-1 for none).
    pub numa_node: i32,
    /// Per BAR: (size, sysfs resource flags); size 0 = unused.
    pub bars: [(u64, u64); 6],
    /// IOMMU group number.
    pub iommu_group: u32,
}

/// One function's directory in the fake sysfs tree; removed on [`SysfsFunction::remove`] or drop.
#[derive(Debug)]
pub struct SysfsFunction {
    dir: PathBuf,
    bdf: Bdf,
    removed: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SysfsError + '_ {
    move |source| SysfsError::Io { path: path.to_owned(), source }
}

/// The 13 lines of a sysfs `resource` file: 6 BARs, ROM, 6 bridge windows (zero here).
pub fn resource_text(bdf: &Bdf, bars: &[(u64, u64); 6]) -> String {
    // A 16 MiB window per function, BARs packed in it at their natural alignment.
    let slot = (u64::from(bdf.bus) << 8) | (u64::from(bdf.dev) << 3) | u64::from(bdf.func);
    let mut next = 0x8000_0000u64 + (slot << 24);
    let mut out = String::new();
    for (size, flags) in bars {
        if *size == 0 {
            out.push_str(&format!("0x{:016x} 0x{:016x} 0x{:016x}\n", 0, 0, 0));
            continue;
        }
        let align = size.next_power_of_two();
        let start = next.div_ceil(align) * align;
        next = start + size;
        out.push_str(&format!("0x{:016x} 0x{:016x} 0x{:016x}\n", start, start + size - 1, flags));
    }
    for _ in 6..13 {
        out.push_str(&format!("0x{:016x} 0x{:016x} 0x{:016x}\n", 0, 0, 0));
    }
    out
}

impl SysfsFunction {
    /// Writes `<root>/<bdf>/` (creating `root` if needed).
    pub fn create(root: &Path, bdf: &str, spec: &FunctionSpec) -> Result<Self, SysfsError> {
        let bdf = Bdf::parse(bdf)?;
        fs::create_dir_all(root).map_err(io(root))?;
        let dir = root.join(bdf.to_string());
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(SysfsError::Exists { path: dir }),
            Err(e) => return Err(io(&dir)(e)),
        }
        let mut me = Self { dir, bdf, removed: false };
        // On any error below, `me` is dropped and the half-written directory removed.
        me.write_all(spec)?;
        Ok(me)
    }

    fn write_all(&mut self, spec: &FunctionSpec) -> Result<(), SysfsError> {
        let class = spec.class & 0xff_ffff;
        let modalias = format!(
            "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}",
            spec.vendor,
            spec.device,
            spec.subsystem_vendor,
            spec.subsystem_device,
            class >> 16,
            (class >> 8) & 0xff,
            class & 0xff
        );
        let files = [
            ("vendor", format!("0x{:04x}\n", spec.vendor)),
            ("device", format!("0x{:04x}\n", spec.device)),
            ("subsystem_vendor", format!("0x{:04x}\n", spec.subsystem_vendor)),
            ("subsystem_device", format!("0x{:04x}\n", spec.subsystem_device)),
            ("class", format!("0x{class:06x}\n")),
            ("numa_node", format!("{}\n", spec.numa_node)),
            ("sriov_numvfs", "0\n".to_owned()),
            ("sriov_totalvfs", "0\n".to_owned()),
            ("enable", "1\n".to_owned()),
            ("irq", "0\n".to_owned()),
            ("resource", resource_text(&self.bdf, &spec.bars)),
            (
                "uevent",
                format!(
                    "DRIVER=vfio-pci\nPCI_CLASS={class:X}\nPCI_ID={:04X}:{:04X}\nPCI_SUBSYS_ID={:04X}:{:04X}\nPCI_SLOT_NAME={}\nMODALIAS={modalias}\n",
                    spec.vendor, spec.device, spec.subsystem_vendor, spec.subsystem_device, self.bdf
                ),
            ),
            ("modalias", format!("{modalias}\n")),
        ];
        for (name, text) in files {
            let p = self.dir.join(name);
            fs::write(&p, text).map_err(io(&p))?;
        }
        let links = [
            ("driver", "../../../bus/pci/drivers/vfio-pci".to_owned()),
            ("iommu_group", format!("../../../kernel/iommu_groups/{}", spec.iommu_group)),
        ];
        for (name, target) in links {
            let p = self.dir.join(name);
            std::os::unix::fs::symlink(target, &p).map_err(io(&p))?;
        }
        Ok(())
    }

    /// Binds and listens on `<dir>/vfio-user.sock`. Paths longer than `sun_path` are bound through an
    /// `O_PATH` descriptor of the directory (`/proc/self/fd/<fd>/vfio-user.sock`).
    pub fn bind_socket(&self) -> Result<UnixListener, SysfsError> {
        let path = self.socket_path();
        if let Ok(md) = fs::symlink_metadata(&path) {
            if md.file_type().is_socket() {
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return listen_owner_only(&path).map_err(io(&path));
        }
        let dirf = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&self.dir)
            .map_err(io(&self.dir))?;
        let short = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET_NAME}", std::os::fd::AsRawFd::as_raw_fd(&dirf)));
        listen_owner_only(&short).map_err(io(&path))
    }

    /// The function's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PCI address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// `<dir>/vfio-user.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(SOCKET_NAME)
    }

    /// Deletes the directory (socket included). Idempotent.
    pub fn remove(&mut self) -> Result<(), SysfsError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }
}

impl Drop for SysfsFunction {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("cannot remove fake sysfs entry: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        let mut bars = [(0, 0); 6];
        bars[0] = (512 * 1024, 0x14220c);
        bars[4] = (16 * 1024, 0x14220c);
        FunctionSpec {
            vendor: 0x8086,
            device: 0x10fb,
            subsystem_vendor: 0x8086,
            subsystem_device: 0x000c,
            class: 0x020000,
            numa_node: -1,
            bars,
            iommu_group: 7,
        }
    }

    #[test]
    fn addresses_parse_and_print_like_linux() {
        let b = Bdf::parse("0000:00:05.0").unwrap();
        assert_eq!(b.to_string(), "0000:00:05.0");
        assert_eq!(Bdf::parse("0001:af:1f.7").unwrap().to_string(), "0001:af:1f.7");
        for bad in ["00:05.0", "0000:00:20.0", "0000:00:05.8", "0000:0g:05.0", "", "0000:00:05.00"] {
            assert!(Bdf::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_has_linux_formats_and_is_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let dir;
        {
            let f = SysfsFunction::create(root.path(), "0000:00:05.0", &spec()).unwrap();
            dir = f.dir().to_owned();
            let rd = |n: &str| fs::read_to_string(dir.join(n)).unwrap();
            assert_eq!(rd("vendor"), "0x8086\n");
            assert_eq!(rd("device"), "0x10fb\n");
            assert_eq!(rd("subsystem_device"), "0x000c\n");
            assert_eq!(rd("class"), "0x020000\n");
            assert_eq!(rd("numa_node"), "-1\n");
            assert_eq!(rd("sriov_numvfs"), "0\n");
            let res = rd("resource");
            let lines: Vec<&str> = res.lines().collect();
            assert_eq!(lines.len(), 13);
            let f0: Vec<u64> =
                lines[0].split(' ').map(|t| u64::from_str_radix(t.trim_start_matches("0x"), 16).unwrap()).collect();
            assert_ne!(f0[0], 0);
            assert_eq!(f0[1] - f0[0] + 1, 512 * 1024);
            assert_eq!(f0[2], 0x14220c);
            assert_eq!(f0[0] % (512 * 1024), 0);
            assert_eq!(lines[1], format!("0x{:016x} 0x{:016x} 0x{:016x}", 0, 0, 0));
            assert_eq!(fs::read_link(dir.join("driver")).unwrap(), Path::new("../../../bus/pci/drivers/vfio-pci"));
            assert_eq!(fs::read_link(dir.join("iommu_group")).unwrap().file_name().unwrap(), "7");
            assert!(rd("uevent").contains("PCI_ID=8086:10FB\n"));
            assert!(rd("modalias").starts_with("pci:v00008086d000010FB"));
            let _l = f.bind_socket().unwrap();
            assert!(f.socket_path().exists());
            assert!(matches!(
                SysfsFunction::create(root.path(), "0000:00:05.0", &spec()),
                Err(SysfsError::Exists { .. })
            ));
        }
        assert!(!dir.exists());
    }

    #[test]
    fn long_paths_bind_through_an_o_path_descriptor() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("x".repeat(60)).join("y".repeat(60));
        let f = SysfsFunction::create(&deep, "0000:00:06.0", &spec()).unwrap();
        assert!(f.socket_path().as_os_str().len() > SUN_PATH_MAX);
        let _l = f.bind_socket().unwrap();
        assert!(fs::symlink_metadata(f.socket_path()).unwrap().file_type().is_socket());
    }
}
