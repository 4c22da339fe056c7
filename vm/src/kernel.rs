//! The guest kernel: a Debian kernel image and its modules, found where `ci/vm.sh` unpacks
//! `linux-image-amd64` (no install, no initramfs-tools run) or where the package is installed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::Missing;

/// A kernel image with the module tree built for it.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub version: String,
    /// The bzImage (`boot/vmlinuz-VERSION`).
    pub image: PathBuf,
    /// `lib/modules/VERSION`.
    pub modules: PathBuf,
}

/// Where kernels are looked for, in order: `$LAB_VM_KERNEL_DIR` (a root holding `boot/` and
/// `lib/modules/`), `target/vm/kernel` of this workspace (what `ci/vm.sh` unpacks), then `/`.
pub fn search_roots() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("LAB_VM_KERNEL_DIR") {
        v.push(PathBuf::from(d));
    }
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm/kernel"));
    v.push(PathBuf::from("/"));
    v
}

impl Kernel {
    /// The newest kernel under the search roots whose image is readable and whose module tree
    /// has `modules.dep`.
    pub fn find() -> Result<Kernel, Missing> {
        for root in search_roots() {
            let mut found: Vec<Kernel> =
                std::fs::read_dir(root.join("boot"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let version = name.strip_prefix("vmlinuz-")?.to_string();
                        let modules = root.join("lib/modules").join(&version);
                        let image = e.path();
                        (std::fs::File::open(&image).is_ok() && modules.join("modules.dep").is_file())
                            .then_some(Kernel { version, image, modules })
                    })
                    .collect();
            found.sort_by(|a, b| a.version.cmp(&b.version));
            if let Some(k) = found.pop() {
                return Ok(k);
            }
        }
        Err(Missing("a Debian kernel (linux-image-amd64; ci/vm.sh unpacks one into target/vm/kernel)".into()))
    }

    /// Whether the kernel was built with `option` (`CONFIG_VFIO_NOIOMMU`) as `y` or `m`, from
    /// its `config-VERSION` next to the image.
    pub fn has_config(&self, option: &str) -> bool {
        let cfg = self.image.with_file_name(format!("config-{}", self.version));
        std::fs::read_to_string(cfg)
            .unwrap_or_default()
            .lines()
            .any(|l| l.strip_prefix(option).and_then(|r| r.strip_prefix('=')).is_some_and(|v| v == "y" || v == "m"))
    }

    /// The module files (relative to [`Kernel::modules`]) that loading `names` takes, each after
    /// the modules it depends on, from `modules.dep`.
    pub fn module_order(&self, names: &[&str]) -> Result<Vec<String>, Missing> {
        let dep = std::fs::read_to_string(self.modules.join("modules.dep"))
            .map_err(|e| Missing(format!("{}/modules.dep: {e}", self.modules.display())))?;
        resolve(&dep, names).map_err(|m| Missing(format!("module {m} in kernel {}", self.version)))
    }
}

/// `vfio-pci` and `vfio_pci` are one module.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    norm(base.split(".ko").next().unwrap_or(base))
}

/// Load order for `names` from the text of `modules.dep`; the error is the first name missing.
pub(crate) fn resolve(dep: &str, names: &[&str]) -> Result<Vec<String>, String> {
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else { continue };
        let list = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), list));
    }
    let mut order = Vec::new();
    fn visit(name: &str, deps: &HashMap<String, (String, Vec<String>)>, order: &mut Vec<String>) -> Result<(), String> {
        let (path, list) = deps.get(&norm(name)).ok_or_else(|| name.to_string())?;
        if order.contains(path) {
            return Ok(());
        }
        // modules.dep lists a module's whole closure, the deepest last.
        for d in list.iter().rev() {
            visit(&module_name(d), deps, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for n in names {
        visit(n, &deps, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/vfio/vfio.ko:
kernel/virt/lib/irqbypass.ko:
kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko
";

    #[test]
    fn dependencies_load_first_and_once() {
        let o = resolve(DEP, &["vfio_pci", "vfio-iommu-type1"]).unwrap();
        assert_eq!(
            o,
            [
                "kernel/virt/lib/irqbypass.ko",
                "kernel/drivers/vfio/vfio.ko",
                "kernel/drivers/vfio/pci/vfio-pci-core.ko",
                "kernel/drivers/vfio/pci/vfio-pci.ko",
                "kernel/drivers/vfio/vfio_iommu_type1.ko",
            ]
        );
    }

    #[test]
    fn a_missing_module_is_named() {
        assert_eq!(resolve(DEP, &["vfio-pci", "virtio_net"]).unwrap_err(), "virtio_net");
    }
}
