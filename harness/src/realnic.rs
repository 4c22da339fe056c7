//! Real PCI functions for `lab run --real`: checks that VFIO exists and that each function is
//! bound to vfio-pci, saying what to do when not (`ci/real-nic.sh` does the binding).

use std::path::Path;

use lab_core::bus::pci::PciAddr;

/// The one line printed (and exit status 77) when the machine has no VFIO.
pub const NO_VFIO: &str = "lab: skipped: /dev/vfio does not exist (no vfio-pci here: modprobe vfio-pci and bind the NICs, see ci/real-nic.sh)";

/// Why real functions cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RealNicError {
    /// No /dev/vfio at all.
    #[error("/dev/vfio does not exist")]
    NoVfio,
    /// Not a PCI address.
    #[error("--real {0:?}: expected PCI addresses such as 0000:03:00.0, comma-separated")]
    BadAddress(String),
    /// No such function.
    #[error("--real {0}: no such PCI function in /sys/bus/pci/devices")]
    NoDevice(String),
    /// Bound to another driver (or none).
    #[error("--real {bdf}: bound to {driver}, not vfio-pci: `driverctl set-override {bdf} vfio-pci` (or echo {bdf} > /sys/bus/pci/drivers/{driver}/unbind; echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers/vfio-pci/bind)")]
    NotVfio {
        /// The function.
        bdf: String,
        /// Its driver.
        driver: String,
    },
    /// No functions given.
    #[error("--real needs at least one PCI address")]
    Empty,
}

/// Checks the functions; returns them normalized (`0000:03:00.0`).
pub fn check(bdfs: &[String]) -> Result<Vec<String>, RealNicError> {
    if !Path::new("/dev/vfio").exists() {
        return Err(RealNicError::NoVfio);
    }
    if bdfs.is_empty() {
        return Err(RealNicError::Empty);
    }
    let mut out = Vec::new();
    for b in bdfs {
        let a: PciAddr = b.parse().map_err(|_| RealNicError::BadAddress(b.clone()))?;
        let s = a.to_string();
        let dir = Path::new("/sys/bus/pci/devices").join(&s);
        if !dir.exists() {
            return Err(RealNicError::NoDevice(s));
        }
        let driver = std::fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "no driver".into());
        if driver != "vfio-pci" {
            return Err(RealNicError::NotVfio { bdf: s, driver });
        }
        out.push(s);
    }
    Ok(out)
}
