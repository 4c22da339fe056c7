//! The guest's root file system: busybox, the kernel modules the suite needs, our binaries with
//! the shared libraries they link, and `/init`, packed as one initramfs. Faster than a debootstrap
//! tree (no package installs, nothing to mount: the kernel unpacks it into RAM) and enough for a
//! suite that needs a shell, sysfs and `/dev/vfio`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::Cpio;
use crate::kernel::Kernel;
use crate::{Missing, VmError};

/// Where the guest finds our binaries.
pub const GUEST_BIN_DIR: &str = "lab";

/// The static busybox of Debian's `busybox-static`, or `$LAB_VM_BUSYBOX`.
pub fn busybox() -> Result<PathBuf, Missing> {
    let candidates = std::env::var_os("LAB_VM_BUSYBOX").map(PathBuf::from).into_iter().chain([
        PathBuf::from("/bin/busybox"),
        PathBuf::from("/usr/bin/busybox"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm/busybox"),
    ]);
    for c in candidates {
        if is_static(&c) {
            return Ok(c);
        }
    }
    Err(Missing("a static busybox (busybox-static)".into()))
}

/// A static executable: no `PT_INTERP` program header.
fn is_static(p: &Path) -> bool {
    let Ok(b) = std::fs::read(p) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16le = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16le(54), u16le(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        b.get(at..at + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != 3)
    })
}

/// An initramfs being assembled.
pub struct Image {
    cpio: Cpio,
    modules: Vec<String>,
    later: Vec<String>,
}

impl Image {
    /// busybox as `/bin/busybox` (its applets are linked by `/init`), and the mount points.
    pub fn new(busybox: &Path) -> Result<Image, VmError> {
        let mut cpio = Cpio::new();
        let bb = read(busybox)?;
        cpio.file("bin/busybox", 0o755, &bb)?;
        cpio.symlink("bin/sh", "busybox")?;
        for d in ["proc", "sys", "dev", "tmp", "run", "etc", "root", "mnt"] {
            cpio.dir(d);
        }
        cpio.symlink("var/run", "/run")?;
        Ok(Image { cpio, modules: Vec::new(), later: Vec::new() })
    }

    /// The modules `names` need, with their dependencies, loaded by `/init` in order.
    pub fn modules(&mut self, kernel: &Kernel, names: &[&str]) -> Result<(), VmError> {
        self.add_modules(kernel, names, false)
    }

    /// As [`Image::modules`], listed in `/etc/modules.later` for the suite to load when it
    /// needs them (drivers that would take, at boot, functions the suite binds to vfio-pci).
    pub fn modules_later(&mut self, kernel: &Kernel, names: &[&str]) -> Result<(), VmError> {
        self.add_modules(kernel, names, true)
    }

    fn add_modules(&mut self, kernel: &Kernel, names: &[&str], later: bool) -> Result<(), VmError> {
        for rel in kernel.module_order(names)? {
            if self.modules.contains(&rel) || self.later.contains(&rel) {
                continue;
            }
            if !rel.ends_with(".ko") {
                return Err(VmError::Unsupported(format!("compressed module {rel} (busybox insmod reads plain .ko)")));
            }
            let data = read(&kernel.modules.join(&rel))?;
            self.cpio.file(&format!("lib/modules/{rel}"), 0o644, &data)?;
            if later {
                self.later.push(rel);
            } else {
                self.modules.push(rel);
            }
        }
        Ok(())
    }

    /// A dynamically linked executable at `/lab/NAME`, with every library `ldd` names at the
    /// same path as on this machine.
    pub fn binary(&mut self, host: &Path) -> Result<String, VmError> {
        let name = host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let guest = format!("{GUEST_BIN_DIR}/{name}");
        self.cpio.file(&guest, 0o755, &read(host)?)?;
        self.libraries_of(host)?;
        Ok(format!("/{guest}"))
    }

    /// A dynamically linked executable at `/lab/NAME` under another name (DPDK's `hotplug_mp`
    /// beside ours), with its libraries.
    pub fn binary_as(&mut self, host: &Path, name: &str) -> Result<String, VmError> {
        let guest = format!("{GUEST_BIN_DIR}/{name}");
        self.cpio.file(&guest, 0o755, &read(host)?)?;
        self.libraries_of(host)?;
        Ok(format!("/{guest}"))
    }

    /// A shared library at `guest` (its content: symlinks followed) and the libraries it needs,
    /// for one a program `dlopen`s (a DPDK driver plugin).
    pub fn library(&mut self, host: &Path, guest: &str) -> Result<(), VmError> {
        if !self.cpio.contains(guest) {
            self.cpio.file(guest, 0o755, &read(host)?)?;
        }
        self.libraries_of(host)
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), VmError> {
        Ok(self.cpio.symlink(path, target)?)
    }

    fn libraries_of(&mut self, host: &Path) -> Result<(), VmError> {
        for lib in shared_libs(host)? {
            let at = lib.to_string_lossy().into_owned();
            if !self.cpio.contains(&at) {
                self.cpio.file(&at, 0o755, &read(&lib)?)?;
            }
        }
        Ok(())
    }

    /// Any file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), VmError> {
        Ok(self.cpio.file(path, mode, data)?)
    }

    /// `/init` running `script` after the standard set-up (file systems, hugepages, modules);
    /// the guest powers off when the script ends, so QEMU exits.
    pub fn init(&mut self, script: &str) -> Result<(), VmError> {
        // One per line, each ending in a newline: `read` drops a last line without one.
        let order: String = self.modules.iter().map(|m| format!("{m}\n")).collect();
        self.cpio.file("etc/modules.order", 0o644, order.as_bytes())?;
        let later: String = self.later.iter().map(|m| format!("{m}\n")).collect();
        self.cpio.file("etc/modules.later", 0o644, later.as_bytes())?;
        let init = format!("{INIT_HEAD}{script}\n{INIT_TAIL}");
        Ok(self.cpio.file("init", 0o755, init.as_bytes())?)
    }

    /// The archive, written to `path`.
    pub fn write(self, path: &Path) -> Result<(), VmError> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| VmError::io(path, e))?);
        self.cpio.finish(&mut f).map_err(|e| VmError::io(path, e))?;
        std::io::Write::flush(&mut f).map_err(|e| VmError::io(path, e))
    }
}

const INIT_HEAD: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
# rootfs starts world-writable; DPDK's EAL refuses plugin paths under such a directory.
chmod 755 /
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/hugepages
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo 64 > /proc/sys/vm/nr_hugepages
mount -t hugetlbfs -o pagesize=2M hugetlbfs /dev/hugepages
while read -r m; do
  [ -n "$m" ] && { insmod "/lib/modules/$m" || echo "LAB-VM insmod failed: $m"; }
done < /etc/modules.order
echo "LAB-VM up $(cat /proc/uptime)"
"#;

const INIT_TAIL: &str = r#"echo "LAB-VM rc $?"
sync
poweroff -f
"#;

fn read(p: &Path) -> Result<Vec<u8>, VmError> {
    std::fs::read(p).map_err(|e| VmError::io(p, e))
}

/// The libraries (and loader) `ldd` lists for `bin`.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>, VmError> {
    let out = Command::new("ldd").arg(bin).output().map_err(|e| VmError::io(Path::new("ldd"), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(VmError::Unsupported(format!("ldd {}: {}", bin.display(), text.trim())));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            return Err(VmError::Unsupported(format!("{}: {}", bin.display(), line.trim())));
        }
    }
    Ok(libs)
}
