//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong between a driver and its device.
///
/// Each variant carries what a user needs to act on it: which group, which command, which errno,
/// which device and why it cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// Kernel VFIO is not available on this machine at all.
    #[error("kernel VFIO unavailable: {reason}")]
    KernelUnavailable {
        /// One line: what is missing and what to do about it.
        reason: String,
    },
    /// `/dev/vfio/vfio` exists but could not be opened.
    #[error("cannot open VFIO container {path}: {source}")]
    OpenContainer {
        /// The container device node.
        path: PathBuf,
        /// The error from `open(2)`.
        source: io::Error,
    },
    /// The kernel speaks a VFIO API version we do not know.
    #[error("VFIO API version {version} is not supported (expected {expected})")]
    ApiVersion {
        /// What `VFIO_GET_API_VERSION` returned.
        version: i32,
        /// What we support.
        expected: i32,
    },
    /// The container supports neither TYPE1v2 nor TYPE1.
    #[error("VFIO container supports no type1 IOMMU (is the vfio_iommu_type1 module loaded?)")]
    NoIommuType,
    /// `/dev/vfio/<group>` could not be opened.
    #[error("cannot open VFIO group {group}: {source}")]
    OpenGroup {
        /// The IOMMU group number.
        group: u32,
        /// The error from `open(2)`.
        source: io::Error,
    },
    /// Not every device of the group is bound to vfio-pci (or unbound).
    #[error("VFIO group {group} is not viable (bind every device of the group to vfio-pci)")]
    GroupNotViable {
        /// The IOMMU group number.
        group: u32,
    },
    /// A VFIO ioctl failed.
    #[error("{op} failed on {device}: {source}")]
    Ioctl {
        /// The ioctl, e.g. `VFIO_GROUP_GET_DEVICE_FD`.
        op: &'static str,
        /// The device, group or container it was issued on.
        device: String,
        /// The errno.
        source: io::Error,
    },
    /// Connecting to a vfio-user socket failed.
    #[error("cannot connect to vfio-user socket {path}: {source}")]
    Connect {
        /// The socket path as given.
        path: PathBuf,
        /// The error from `connect(2)` (or opening the directory of a long path).
        source: io::Error,
    },
    /// Sending or receiving a vfio-user message failed.
    #[error("vfio-user {command}: transport error: {source}")]
    Transport {
        /// The command in flight.
        command: &'static str,
        /// The socket error.
        source: io::Error,
    },
    /// The vfio-user server closed the connection (surprise unplug or emulator gone).
    #[error("vfio-user {command}: server closed the connection")]
    PeerClosed {
        /// The command in flight.
        command: &'static str,
    },
    /// No reply within the configured timeout.
    #[error("vfio-user {command}: no reply within {waited:?}")]
    Timeout {
        /// The command in flight.
        command: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// The server answered with an error reply.
    #[error("vfio-user {command}: server replied with error (errno {errno}: {})", errno_name(*errno))]
    ErrorReply {
        /// The command that was refused.
        command: &'static str,
        /// The errno the server sent (0 when it did not say).
        errno: u32,
    },
    /// A reply did not make sense (wrong id, type, command or size; garbled payload).
    #[error("vfio-user {command}: malformed reply: {reason}")]
    BadReply {
        /// The command in flight.
        command: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// An earlier timeout or malformed reply left the stream out of sync; reconnect.
    #[error("vfio-user connection to {device} is unusable after an earlier failure: {reason}")]
    Poisoned {
        /// The device name.
        device: String,
        /// The failure that poisoned it.
        reason: String,
    },
    /// Version negotiation failed.
    #[error("vfio-user version negotiation failed: {reason}")]
    Version {
        /// What was wrong.
        reason: String,
    },
    /// The device has no such region.
    #[error("{device}: no region {index}")]
    NoSuchRegion {
        /// The device name.
        device: String,
        /// The requested region index.
        index: u32,
    },
    /// The device has no such interrupt index.
    #[error("{device}: no irq index {index}")]
    NoSuchIrq {
        /// The device name.
        device: String,
        /// The requested irq index.
        index: u32,
    },
    /// An access falls outside its region.
    #[error("{device}: access of {len} bytes at {offset:#x} is outside region {index} (size {size:#x})")]
    OutOfRange {
        /// The device name.
        device: String,
        /// The region index.
        index: u32,
        /// Offset of the access within the region.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of the region.
        size: u64,
    },
    /// A register access is not naturally aligned.
    #[error("{device}: misaligned {width}-byte register access at {offset:#x}")]
    Misaligned {
        /// The device name.
        device: String,
        /// The offset.
        offset: u64,
        /// The access width in bytes.
        width: u8,
    },
    /// mmap of a region area failed.
    #[error("{device}: cannot mmap region {index} area at {offset:#x} (+{size:#x}): {source}")]
    Mmap {
        /// The device name.
        device: String,
        /// The region index.
        index: u32,
        /// Offset of the area within the region.
        offset: u64,
        /// Size of the area.
        size: u64,
        /// The error from `mmap(2)`.
        source: io::Error,
    },
    /// A DMA map overlaps an existing one.
    #[error("{device}: DMA map iova {iova:#x} size {size:#x} overlaps an existing map")]
    DmaOverlap {
        /// The device or container.
        device: String,
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// A DMA unmap does not match a previous map exactly.
    #[error("{device}: DMA unmap iova {iova:#x} size {size:#x} matches no map exactly")]
    DmaNotMapped {
        /// The device or container.
        device: String,
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// A register did not reach the expected value before the deadline.
    #[error("{device}: register {offset:#x} & {mask:#x} != {value:#x} after {waited:?} (last read {last:#x})")]
    PollTimeout {
        /// The device name.
        device: String,
        /// Register offset in the BAR.
        offset: u64,
        /// Mask applied to the register.
        mask: u32,
        /// Expected value under the mask.
        value: u32,
        /// Last value read.
        last: u32,
        /// How long we polled.
        waited: Duration,
    },
    /// An argument is invalid (too many fds, zero size, ...).
    #[error("{device}: invalid argument: {reason}")]
    InvalidArgument {
        /// The device name.
        device: String,
        /// What was wrong.
        reason: String,
    },
    /// The PCI device cannot be used by this process, said in one line.
    #[error("PCI device {addr} cannot be used: {reason}")]
    NotUsable {
        /// The PCI address (BDF).
        addr: String,
        /// Why, e.g. "not bound to vfio-pci (driver: ixgbe)".
        reason: String,
    },
}

impl VfioError {
    /// True when the error means the device (or its emulator) has gone away.
    pub fn is_gone(&self) -> bool {
        matches!(self, VfioError::PeerClosed { .. })
            || matches!(self, VfioError::Transport { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)))
    }
}

fn errno_name(errno: u32) -> String {
    if errno == 0 {
        return "unspecified".to_string();
    }
    i32::try_from(errno).map(|e| io::Error::from_raw_os_error(e).to_string()).unwrap_or_else(|_| "unknown".to_string())
}
