//! Byte layouts: vfio-user messages and the VFIO region-info capability chain.
//!
//! Every structure that comes from the peer (or the kernel) is read through a `parse` function
//! that checks the length first and returns a `Repr` holding only plain, validated values; none
//! of them can panic on short or garbled input. Requests are built by `emit`/`encode` functions.
//! Layouts follow QEMU's `docs/interop/vfio-user.rst` and `<linux/vfio.h>`; all integers are host
//! endian (the protocol is local).

use crate::device::{IrqInfo, RegionInfo, SparseArea};

/// Why some bytes could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(msg.into()))
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, WireError> {
    off.checked_add(2)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or_else(|| WireError(format!("truncated: need u16 at {off}, have {} bytes", b.len())))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, WireError> {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or_else(|| WireError(format!("truncated: need u32 at {off}, have {} bytes", b.len())))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, WireError> {
    off.checked_add(8)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
        .ok_or_else(|| WireError(format!("truncated: need u64 at {off}, have {} bytes", b.len())))
}

/// vfio-user command numbers (spec: "Commands").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    /// VFIO_USER_VERSION
    Version = 1,
    /// VFIO_USER_DMA_MAP
    DmaMap = 2,
    /// VFIO_USER_DMA_UNMAP
    DmaUnmap = 3,
    /// VFIO_USER_DEVICE_GET_INFO
    DeviceGetInfo = 4,
    /// VFIO_USER_DEVICE_GET_REGION_INFO
    DeviceGetRegionInfo = 5,
    /// VFIO_USER_DEVICE_GET_IRQ_INFO
    DeviceGetIrqInfo = 7,
    /// VFIO_USER_DEVICE_SET_IRQS
    DeviceSetIrqs = 8,
    /// VFIO_USER_REGION_READ
    RegionRead = 9,
    /// VFIO_USER_REGION_WRITE
    RegionWrite = 10,
    /// VFIO_USER_DEVICE_RESET
    DeviceReset = 13,
}

impl Command {
    /// The name used in errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Command::Version => "VERSION",
            Command::DmaMap => "DMA_MAP",
            Command::DmaUnmap => "DMA_UNMAP",
            Command::DeviceGetInfo => "DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            Command::DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "DEVICE_SET_IRQS",
            Command::RegionRead => "REGION_READ",
            Command::RegionWrite => "REGION_WRITE",
            Command::DeviceReset => "DEVICE_RESET",
        }
    }
}

/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// Header flags, bits 0-3: message type.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Message type: command.
pub const TYPE_COMMAND: u32 = 0;
/// Message type: reply.
pub const TYPE_REPLY: u32 = 1;
/// Header flag: no reply wanted.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// Header flag: the reply reports an error in the `error` field.
pub const FLAG_ERROR: u32 = 1 << 5;

/// DMA_MAP flags.
pub const DMA_READ: u32 = 1;
/// DMA_MAP flags.
pub const DMA_WRITE: u32 = 2;

/// The 16-byte header that starts every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRepr {
    /// Message id, echoed by the reply.
    pub id: u16,
    /// Command number.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type, No_reply and Error bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl HeaderRepr {
    /// Parse the first 16 bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<HeaderRepr, WireError> {
        if b.len() < HEADER_LEN {
            return err(format!("header needs {HEADER_LEN} bytes, have {}", b.len()));
        }
        let h = HeaderRepr {
            id: u16_at(b, 0)?,
            command: u16_at(b, 2)?,
            size: u32_at(b, 4)?,
            flags: u32_at(b, 8)?,
            error: u32_at(b, 12)?,
        };
        if (h.size as usize) < HEADER_LEN {
            return err(format!("message size {} is smaller than the header", h.size));
        }
        Ok(h)
    }

    /// The header bytes.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// Message type (command or reply).
    pub fn msg_type(&self) -> u32 {
        self.flags & FLAG_TYPE_MASK
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
}

/// A whole command message: header plus `body`.
pub fn command(id: u16, cmd: Command, body: &[u8]) -> Vec<u8> {
    command_with_flags(id, cmd, body, TYPE_COMMAND)
}

/// A command message with `flags` in its header ([`FLAG_NO_REPLY`] for a posted write).
pub fn command_with_flags(id: u16, cmd: Command, body: &[u8], flags: u32) -> Vec<u8> {
    let size = (HEADER_LEN + body.len()) as u32;
    let h = HeaderRepr { id, command: cmd as u16, size, flags, error: 0 };
    let mut m = Vec::with_capacity(size as usize);
    m.extend_from_slice(&h.emit());
    m.extend_from_slice(body);
    m
}

/// Capabilities exchanged in VERSION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Most fds the sender of these capabilities accepts in one message.
    pub max_msg_fds: u32,
    /// Largest region read/write payload the sender accepts.
    pub max_data_xfer_size: u32,
}

impl Default for Capabilities {
    /// The spec's defaults when a capability is absent.
    fn default() -> Self {
        Capabilities { max_msg_fds: 1, max_data_xfer_size: 1 << 20 }
    }
}

/// VERSION payload: major, minor and the capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRepr {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Capabilities (defaults for the absent ones).
    pub caps: Capabilities,
}

impl VersionRepr {
    /// The VERSION body: major, minor, NUL-terminated JSON capabilities.
    pub fn emit(&self) -> Vec<u8> {
        let json = format!(
            "{{\"capabilities\":{{\"max_msg_fds\":{},\"max_data_xfer_size\":{}}}}}",
            self.caps.max_msg_fds, self.caps.max_data_xfer_size
        );
        let mut b = Vec::with_capacity(4 + json.len() + 1);
        b.extend_from_slice(&self.major.to_ne_bytes());
        b.extend_from_slice(&self.minor.to_ne_bytes());
        b.extend_from_slice(json.as_bytes());
        b.push(0);
        b
    }

    /// Parse a VERSION reply body.
    pub fn parse(b: &[u8]) -> Result<VersionRepr, WireError> {
        let major = u16_at(b, 0)?;
        let minor = u16_at(b, 2)?;
        let rest = b.get(4..).unwrap_or(&[]);
        // The JSON string is optional; if present it ends at the first NUL (or the message end).
        let json = match rest.iter().position(|&c| c == 0) {
            Some(n) => &rest[..n],
            None => rest,
        };
        let mut caps = Capabilities::default();
        if !json.is_empty() {
            let v: serde_json::Value =
                serde_json::from_slice(json).map_err(|e| WireError(format!("capabilities are not JSON: {e}")))?;
            let Some(obj) = v.as_object() else {
                return err("capabilities JSON is not an object");
            };
            if let Some(c) = obj.get("capabilities") {
                let c = c.as_object().ok_or_else(|| WireError("\"capabilities\" is not an object".into()))?;
                let num = |key: &str, default: u32| -> Result<u32, WireError> {
                    match c.get(key) {
                        None => Ok(default),
                        Some(v) => v
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| WireError(format!("capability {key} is not a u32: {v}"))),
                    }
                };
                caps.max_msg_fds = num("max_msg_fds", caps.max_msg_fds)?;
                caps.max_data_xfer_size = num("max_data_xfer_size", caps.max_data_xfer_size)?;
            }
        }
        Ok(VersionRepr { major, minor, caps })
    }
}

/// DEVICE_GET_INFO request body (argsz = 16).
pub fn device_info_request() -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0..4].copy_from_slice(&16u32.to_ne_bytes());
    b
}

/// DEVICE_GET_INFO reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfoRepr {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of irq indexes.
    pub num_irqs: u32,
}

/// Upper bound on regions/irqs we accept from a peer (PCI has 9 regions and 5 irq indexes;
/// device-specific regions add a few).
pub const MAX_INDEXES: u32 = 64;

impl DeviceInfoRepr {
    /// Parse `{argsz, flags, num_regions, num_irqs}`.
    pub fn parse(b: &[u8]) -> Result<DeviceInfoRepr, WireError> {
        let r = DeviceInfoRepr { flags: u32_at(b, 4)?, num_regions: u32_at(b, 8)?, num_irqs: u32_at(b, 12)? };
        if r.num_regions > MAX_INDEXES || r.num_irqs > MAX_INDEXES {
            return err(format!("implausible counts: {} regions, {} irqs", r.num_regions, r.num_irqs));
        }
        Ok(r)
    }
}

/// Size of `vfio_region_info`.
pub const REGION_INFO_LEN: usize = 32;
/// Largest region info (with capabilities) we ask for.
pub const MAX_REGION_INFO_LEN: u32 = 64 * 1024;
const CAP_SPARSE_MMAP: u16 = 1;
const MAX_CAPS: usize = 64;

/// DEVICE_GET_REGION_INFO request body: a `vfio_region_info` with `argsz` and `index`.
pub fn region_info_request(index: u32, argsz: u32) -> Vec<u8> {
    let mut b = vec![0u8; REGION_INFO_LEN];
    b[0..4].copy_from_slice(&argsz.to_ne_bytes());
    b[8..12].copy_from_slice(&index.to_ne_bytes());
    b
}

/// A parsed `vfio_region_info` with its capability chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfoRepr {
    /// Size the full info (with capabilities) needs; bigger than what we got means "ask again".
    pub argsz: u32,
    /// The region.
    pub info: RegionInfo,
    /// Whether the capability chain was present and parsed.
    pub caps_complete: bool,
}

impl RegionInfoRepr {
    /// Parse `vfio_region_info` (+ capability chain, offsets relative to its start).
    ///
    /// `expect_index` is the index we asked for; a different one is an error.
    pub fn parse(b: &[u8], expect_index: u32) -> Result<RegionInfoRepr, WireError> {
        if b.len() < REGION_INFO_LEN {
            return err(format!("region info needs {REGION_INFO_LEN} bytes, have {}", b.len()));
        }
        let argsz = u32_at(b, 0)?;
        let flags = u32_at(b, 4)?;
        let index = u32_at(b, 8)?;
        let cap_offset = u32_at(b, 12)?;
        let size = u64_at(b, 16)?;
        let offset = u64_at(b, 24)?;
        if index != expect_index {
            return err(format!("asked for region {expect_index}, got {index}"));
        }
        if offset.checked_add(size).is_none() {
            return err(format!("region offset {offset:#x} + size {size:#x} overflows"));
        }
        let mut info = RegionInfo { index, flags, size, offset, sparse: Vec::new() };
        let has_caps = flags & crate::device::REGION_CAPS != 0;
        let fits = (argsz as usize) <= b.len();
        // The chain is complete when there is none, or when everything the peer said it needs
        // arrived (a zero cap_offset then means an empty chain).
        let caps_complete = !has_caps || fits;
        if has_caps && fits && cap_offset != 0 {
            info.sparse = parse_caps(b, cap_offset as usize, size)?;
        }
        Ok(RegionInfoRepr { argsz, info, caps_complete })
    }
}

/// Walk the capability chain starting at `first`; return the sparse mmap areas.
fn parse_caps(b: &[u8], first: usize, region_size: u64) -> Result<Vec<SparseArea>, WireError> {
    let mut areas = Vec::new();
    let mut at = first;
    for _ in 0..MAX_CAPS {
        if at < REGION_INFO_LEN {
            return err(format!("capability at {at} overlaps the region info"));
        }
        if at >= b.len() {
            return err(format!("capability at {at} is past the end ({} bytes)", b.len()));
        }
        let id = u16_at(b, at)?;
        let _version = u16_at(b, at + 2)?;
        let next = u32_at(b, at + 4)? as usize;
        if id == CAP_SPARSE_MMAP {
            let nr = u32_at(b, at + 8)? as usize;
            let need = nr
                .checked_mul(16)
                .and_then(|n| n.checked_add(at + 16))
                .ok_or_else(|| WireError(format!("sparse cap with {nr} areas overflows")))?;
            if need > b.len() {
                return err(format!("sparse cap with {nr} areas needs {need} bytes, have {}", b.len()));
            }
            for i in 0..nr {
                let a = at + 16 + i * 16;
                let area = SparseArea { offset: u64_at(b, a)?, size: u64_at(b, a + 8)? };
                let end = area.offset.checked_add(area.size);
                if !matches!(end, Some(e) if e <= region_size) {
                    return err(format!(
                        "sparse area {:#x}+{:#x} is outside the region (size {region_size:#x})",
                        area.offset, area.size
                    ));
                }
                areas.push(area);
            }
        }
        if next == 0 {
            return Ok(areas);
        }
        if next <= at {
            return err(format!("capability chain goes backwards ({at} -> {next})"));
        }
        at = next;
    }
    err(format!("capability chain longer than {MAX_CAPS} entries"))
}

/// DEVICE_GET_IRQ_INFO request body.
pub fn irq_info_request(index: u32) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0..4].copy_from_slice(&16u32.to_ne_bytes());
    b[8..12].copy_from_slice(&index.to_ne_bytes());
    b
}

/// Parse a DEVICE_GET_IRQ_INFO reply `{argsz, flags, index, count}`.
pub fn parse_irq_info(b: &[u8], expect_index: u32) -> Result<IrqInfo, WireError> {
    let info = IrqInfo { flags: u32_at(b, 4)?, index: u32_at(b, 8)?, count: u32_at(b, 12)? };
    if info.index != expect_index {
        return err(format!("asked for irq index {expect_index}, got {}", info.index));
    }
    Ok(info)
}

/// DEVICE_SET_IRQS request body (without the fds, which travel as SCM_RIGHTS).
pub fn set_irqs_request(flags: u32, index: u32, start: u32, count: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    for w in [20u32, flags, index, start, count] {
        b.extend_from_slice(&w.to_ne_bytes());
    }
    b
}

/// REGION_READ / REGION_WRITE body `{offset, region, count}` (+ data for writes).
pub fn region_access_request(region: u32, offset: u64, count: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&offset.to_ne_bytes());
    b.extend_from_slice(&region.to_ne_bytes());
    b.extend_from_slice(&count.to_ne_bytes());
    b.extend_from_slice(data);
    b
}

/// A REGION_READ / REGION_WRITE reply.
#[derive(Debug, PartialEq, Eq)]
pub struct RegionAccessRepr<'a> {
    /// Offset echoed.
    pub offset: u64,
    /// Region echoed.
    pub region: u32,
    /// Byte count.
    pub count: u32,
    /// Data (REGION_READ replies), exactly `count` bytes; empty for writes.
    pub data: &'a [u8],
}

impl<'a> RegionAccessRepr<'a> {
    /// Parse a reply body; `with_data` for REGION_READ (the data must be exactly `count` bytes).
    pub fn parse(b: &'a [u8], with_data: bool) -> Result<RegionAccessRepr<'a>, WireError> {
        let offset = u64_at(b, 0)?;
        let region = u32_at(b, 8)?;
        let count = u32_at(b, 12)?;
        let rest = b.get(16..).unwrap_or(&[]);
        let data = if with_data {
            if rest.len() != count as usize {
                return err(format!("read reply says {count} bytes, carries {}", rest.len()));
            }
            rest
        } else {
            &[]
        };
        Ok(RegionAccessRepr { offset, region, count, data })
    }
}

/// DMA_MAP body `{argsz, flags, offset, address, size}`.
pub fn dma_map_request(flags: u32, fd_offset: u64, iova: u64, size: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&32u32.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&fd_offset.to_ne_bytes());
    b.extend_from_slice(&iova.to_ne_bytes());
    b.extend_from_slice(&size.to_ne_bytes());
    b
}

/// DMA_UNMAP body `{argsz, flags, address, size}`.
pub fn dma_unmap_request(iova: u64, size: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&24u32.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&iova.to_ne_bytes());
    b.extend_from_slice(&size.to_ne_bytes());
    b
}

/// Build a region info buffer with a sparse-mmap capability (used by fakes and tests).
#[cfg(any(test, feature = "testing"))]
pub fn region_info_bytes(info: &RegionInfo, argsz_given: u32, extra_cap_first: bool) -> Vec<u8> {
    let mut caps = Vec::new();
    let base = REGION_INFO_LEN;
    if !info.sparse.is_empty() {
        if extra_cap_first {
            // An unknown capability (id 0xff) in front, to exercise chain walking.
            let next = (base + 16) as u32;
            caps.extend_from_slice(&0xffu16.to_ne_bytes());
            caps.extend_from_slice(&1u16.to_ne_bytes());
            caps.extend_from_slice(&next.to_ne_bytes());
            caps.extend_from_slice(&[0u8; 8]);
        }
        caps.extend_from_slice(&CAP_SPARSE_MMAP.to_ne_bytes());
        caps.extend_from_slice(&1u16.to_ne_bytes());
        caps.extend_from_slice(&0u32.to_ne_bytes());
        caps.extend_from_slice(&(info.sparse.len() as u32).to_ne_bytes());
        caps.extend_from_slice(&0u32.to_ne_bytes());
        for a in &info.sparse {
            caps.extend_from_slice(&a.offset.to_ne_bytes());
            caps.extend_from_slice(&a.size.to_ne_bytes());
        }
    }
    let full = (base + caps.len()) as u32;
    let fits = argsz_given >= full;
    let mut flags = info.flags;
    if !caps.is_empty() {
        flags |= crate::device::REGION_CAPS;
    }
    let mut b = vec![0u8; base];
    b[0..4].copy_from_slice(&full.to_ne_bytes());
    b[4..8].copy_from_slice(&flags.to_ne_bytes());
    b[8..12].copy_from_slice(&info.index.to_ne_bytes());
    let cap_offset = if fits && !caps.is_empty() { base as u32 } else { 0 };
    b[12..16].copy_from_slice(&cap_offset.to_ne_bytes());
    b[16..24].copy_from_slice(&info.size.to_ne_bytes());
    b[24..32].copy_from_slice(&info.offset.to_ne_bytes());
    if fits {
        b.extend_from_slice(&caps);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn region(sparse: Vec<SparseArea>) -> RegionInfo {
        RegionInfo { index: 2, flags: 0x7, size: 0x10000, offset: 0x2000_0000, sparse }
    }

    #[test]
    fn header_round_trip() {
        let h = HeaderRepr { id: 7, command: 9, size: 40, flags: TYPE_REPLY | FLAG_ERROR, error: 22 };
        let p = HeaderRepr::parse(&h.emit()).unwrap();
        assert_eq!(p, h);
        assert!(p.is_error());
        assert_eq!(p.msg_type(), TYPE_REPLY);
    }

    #[rstest]
    #[case(&[])]
    #[case(&[1, 2, 3])]
    #[case(&[0; 15])]
    #[case(&[0; 16])] // size 0 < header
    fn header_rejects_short_or_garbled(#[case] b: &[u8]) {
        assert!(HeaderRepr::parse(b).is_err());
    }

    #[test]
    fn version_round_trip_and_defaults() {
        let v = VersionRepr { major: 0, minor: 1, caps: Capabilities { max_msg_fds: 16, max_data_xfer_size: 4096 } };
        assert_eq!(VersionRepr::parse(&v.emit()).unwrap(), v);
        // No JSON at all: defaults.
        let p = VersionRepr::parse(&[0, 0, 0, 0]).unwrap();
        assert_eq!(p.caps, Capabilities::default());
        // Unknown keys are ignored, missing ones default.
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":3,\"migration\":{\"pgsize\":4096}}}\0");
        let p = VersionRepr::parse(&b).unwrap();
        assert_eq!(p.caps.max_msg_fds, 3);
        assert_eq!(p.caps.max_data_xfer_size, 1 << 20);
    }

    #[rstest]
    #[case(b"" as &[u8])]
    #[case(b"\x00")]
    #[case(b"\x00\x00\x00\x00{not json")]
    #[case(b"\x00\x00\x00\x00[1,2]")]
    #[case(b"\x00\x00\x00\x00{\"capabilities\":7}")]
    #[case(b"\x00\x00\x00\x00{\"capabilities\":{\"max_msg_fds\":-1}}")]
    #[case(b"\x00\x00\x00\x00{\"capabilities\":{\"max_data_xfer_size\":99999999999}}")]
    #[case(b"\x00\x00\x00\x00\xff\xfe\xfd")]
    fn version_rejects_garbage(#[case] b: &[u8]) {
        assert!(VersionRepr::parse(b).is_err());
    }

    #[test]
    fn device_info_checks_counts() {
        let mut b = vec![0u8; 16];
        b[8..12].copy_from_slice(&9u32.to_ne_bytes());
        b[12..16].copy_from_slice(&5u32.to_ne_bytes());
        let d = DeviceInfoRepr::parse(&b).unwrap();
        assert_eq!((d.num_regions, d.num_irqs), (9, 5));
        b[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(DeviceInfoRepr::parse(&b).is_err());
        assert!(DeviceInfoRepr::parse(&b[..15]).is_err());
    }

    #[rstest]
    #[case(false)]
    #[case(true)]
    fn region_info_with_sparse_cap_parses(#[case] extra_cap_first: bool) {
        let r = region(vec![SparseArea { offset: 0x1000, size: 0x1000 }, SparseArea { offset: 0x6000, size: 0x2000 }]);
        let b = region_info_bytes(&r, MAX_REGION_INFO_LEN, extra_cap_first);
        let p = RegionInfoRepr::parse(&b, 2).unwrap();
        assert!(p.caps_complete);
        assert_eq!(p.info.sparse, r.sparse);
        assert_eq!(p.info.size, r.size);
        assert_eq!(p.info.offset, r.offset);
        assert_eq!(p.argsz as usize, b.len());
    }

    #[test]
    fn region_info_too_small_asks_for_more() {
        let r = region(vec![SparseArea { offset: 0, size: 0x1000 }]);
        let b = region_info_bytes(&r, 32, false);
        assert_eq!(b.len(), 32);
        let p = RegionInfoRepr::parse(&b, 2).unwrap();
        assert!(!p.caps_complete);
        assert!(p.argsz > 32);
    }

    #[test]
    fn region_info_rejects_garbled_input_without_panicking() {
        let r = region(vec![SparseArea { offset: 0x1000, size: 0x1000 }]);
        let good = region_info_bytes(&r, MAX_REGION_INFO_LEN, true);
        // Every truncation and every single-byte corruption must give Ok or Err, never panic.
        for n in 0..good.len() {
            let _ = RegionInfoRepr::parse(&good[..n], 2);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = RegionInfoRepr::parse(&b, 2);
            }
        }
        // Wrong index.
        assert!(RegionInfoRepr::parse(&good, 3).is_err());
        // A cycle in the chain: first cap points to itself.
        let mut b = good.clone();
        b[32 + 4..32 + 8].copy_from_slice(&32u32.to_ne_bytes());
        assert!(RegionInfoRepr::parse(&b, 2).is_err());
        // nr_areas huge.
        let mut b = good.clone();
        b[48 + 8..48 + 12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(RegionInfoRepr::parse(&b, 2).is_err());
        // Area outside the region.
        let mut b = good;
        b[48 + 16..48 + 24].copy_from_slice(&0xffffu64.to_ne_bytes());
        assert!(RegionInfoRepr::parse(&b, 2).is_err());
    }

    #[test]
    fn irq_info_and_region_access_views() {
        let mut b = vec![0u8; 16];
        b[4..8].copy_from_slice(&1u32.to_ne_bytes());
        b[8..12].copy_from_slice(&2u32.to_ne_bytes());
        b[12..16].copy_from_slice(&64u32.to_ne_bytes());
        assert_eq!(parse_irq_info(&b, 2).unwrap(), IrqInfo { index: 2, flags: 1, count: 64 });
        assert!(parse_irq_info(&b, 1).is_err());
        assert!(parse_irq_info(&b[..10], 2).is_err());

        let body = region_access_request(0, 0x10, 4, &[1, 2, 3, 4]);
        let p = RegionAccessRepr::parse(&body, true).unwrap();
        assert_eq!((p.offset, p.region, p.count, p.data), (0x10, 0, 4, &[1u8, 2, 3, 4][..]));
        assert!(RegionAccessRepr::parse(&body[..19], true).is_err());
        assert!(RegionAccessRepr::parse(&body[..15], false).is_err());
        let mut lying = body.clone();
        lying[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(RegionAccessRepr::parse(&lying, true).is_err());
    }

    #[test]
    fn request_layouts_have_spec_sizes() {
        assert_eq!(dma_map_request(3, 0, 0, 0).len(), 32);
        assert_eq!(dma_unmap_request(0, 0).len(), 24);
        assert_eq!(set_irqs_request(0, 0, 0, 0).len(), 20);
        assert_eq!(region_info_request(0, 32).len(), 32);
        let m = command(5, Command::DeviceReset, &[]);
        assert_eq!(HeaderRepr::parse(&m).unwrap().size, 16);
    }
}
