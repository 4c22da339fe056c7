//! A PCI/PCIe type-0 configuration space with a capability list (PCI Local Bus 3.0 ch. 6, PCIe Base 3.0
//! ch. 7), shared by the NIC models.
//!
//! Bytes plus a per-byte write mask: read-only fields ignore writes, BARs answer the all-ones sizing
//! probe with their size mask, and the MSI-X message control's enable/mask bits are writable.

/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Command register: memory space enable.
pub const COMMAND_MEM: u16 = 1 << 1;
/// Command register: bus master enable (the device may DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disable (the function may not assert its INTx line).
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Offset of the status register.
pub const STATUS: usize = 0x06;
/// Status register bit: the function's INTx is pending (read-only, whatever Interrupt Disable says).
pub const STATUS_INTX: u16 = 1 << 3;
/// Offset of the first BAR.
pub const BAR0: usize = 0x10;
/// Status register bit: capability list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Capability id of power management.
pub const CAP_ID_PM: u8 = 0x01;
/// Capability id of PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Capability id of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Size of the extended (PCIe) configuration space.
pub const CONFIG_SIZE: usize = 4096;

/// How a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Not implemented (reads 0).
    Unused,
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR (uses the next BAR slot for the high half).
    Mem64 {
        /// Prefetchable.
        prefetch: bool,
    },
}

/// One BAR: kind, size (power of two) and a fake base address.
#[derive(Debug, Clone, Copy)]
pub struct BarDef {
    /// Decode kind.
    pub kind: BarKind,
    /// Size in bytes (power of two, >= 16).
    pub size: u64,
    /// Initial (fake) bus address.
    pub addr: u64,
}

impl BarDef {
    /// An unused BAR.
    pub const UNUSED: BarDef = BarDef { kind: BarKind::Unused, size: 0, addr: 0 };

    /// The flags Linux prints for this BAR in sysfs `resource` (IORESOURCE_* bits).
    pub fn sysfs_flags(&self) -> u64 {
        match self.kind {
            BarKind::Unused => 0,
            BarKind::Mem32 => 0x40200,
            BarKind::Mem64 { prefetch: true } => 0x14220c,
            BarKind::Mem64 { prefetch: false } => 0x140204,
        }
    }
}

/// Identity fields of a function.
#[derive(Debug, Clone, Copy)]
pub struct PciIds {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem_device: u16,
    /// Class code (base class, sub class, prog-if), e.g. 0x020000.
    pub class: u32,
    /// Revision id.
    pub revision: u8,
}

/// The configuration space of one function.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    last_cap: usize,
    next_free: usize,
    msix_cap: Option<usize>,
}

impl ConfigSpace {
    /// A header with `ids` and `bars` and an empty capability list.
    pub fn new(ids: PciIds, bars: &[BarDef; 6]) -> Self {
        let mut c = Self {
            bytes: vec![0; CONFIG_SIZE],
            wmask: vec![0; CONFIG_SIZE],
            last_cap: 0,
            next_free: 0x40,
            msix_cap: None,
        };
        c.set16(0x00, ids.vendor);
        c.set16(0x02, ids.device);
        c.set8(0x08, ids.revision);
        c.set8(0x09, ids.class as u8);
        c.set8(0x0a, (ids.class >> 8) as u8);
        c.set8(0x0b, (ids.class >> 16) as u8);
        c.set16(0x2c, ids.subsystem_vendor);
        c.set16(0x2e, ids.subsystem_device);
        c.set8(0x3d, 1); // interrupt pin INTA
                         // command: I/O, memory, bus master, parity, SERR, INTx disable
        c.wmask16(COMMAND, 0x0547);
        c.wmask16(0x0c, 0xffff); // cache line size, latency timer
        c.wmask16(0x3c, 0x00ff); // interrupt line
        let mut i = 0;
        while i < 6 {
            let b = bars[i];
            let off = BAR0 + 4 * i;
            match b.kind {
                BarKind::Unused => i += 1,
                BarKind::Mem32 => {
                    c.set32(off, (b.addr as u32) & !0xf);
                    c.wmask32(off, !(b.size as u32).wrapping_sub(1) & !0xf);
                    i += 1;
                }
                BarKind::Mem64 { prefetch } => {
                    let flags = 0x4 | if prefetch { 0x8 } else { 0 };
                    c.set32(off, ((b.addr as u32) & !0xf) | flags);
                    c.wmask32(off, !(b.size.wrapping_sub(1) as u32) & !0xf);
                    if i + 1 < 6 {
                        c.set32(off + 4, (b.addr >> 32) as u32);
                        c.wmask32(off + 4, !((b.size.wrapping_sub(1) >> 32) as u32));
                    }
                    i += 2;
                }
            }
        }
        c
    }

    fn set8(&mut self, off: usize, v: u8) {
        self.bytes[off] = v;
    }
    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn wmask16(&mut self, off: usize, m: u16) {
        self.wmask[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }
    fn wmask32(&mut self, off: usize, m: u32) {
        self.wmask[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }

    /// Reads a little-endian u16 (0 out of range).
    pub fn get16(&self, off: usize) -> u16 {
        self.bytes.get(off..off + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).unwrap_or(0)
    }

    /// Reads a little-endian u32 (0 out of range).
    pub fn get32(&self, off: usize) -> u32 {
        self.bytes.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0)
    }

    /// Appends a capability of `len` bytes (including its 2-byte header) and returns its offset.
    fn add_cap(&mut self, id: u8, len: usize) -> usize {
        let off = self.next_free;
        self.next_free = (off + len + 3) & !3;
        self.set8(off, id);
        if self.last_cap == 0 {
            self.set8(0x34, off as u8);
            let st = self.get16(0x06) | STATUS_CAP_LIST;
            self.set16(0x06, st);
        } else {
            self.set8(self.last_cap + 1, off as u8);
        }
        self.last_cap = off;
        off
    }

    /// Adds a power management capability (D0 only).
    pub fn add_pm_cap(&mut self) {
        let off = self.add_cap(CAP_ID_PM, 8);
        self.set16(off + 2, 0x0003); // PM spec 1.2
        self.wmask16(off + 4, 0x0003); // power state
    }

    /// Adds an MSI-X capability: `table_size` vectors, table and PBA in `bir` at the given offsets.
    pub fn add_msix_cap(&mut self, table_size: u16, bir: u8, table_off: u32, pba_off: u32) {
        let off = self.add_cap(CAP_ID_MSIX, 12);
        self.set16(off + 2, table_size.saturating_sub(1) & 0x7ff);
        self.wmask16(off + 2, 0xc000); // MSI-X enable (15), function mask (14)
        self.set32(off + 4, table_off | u32::from(bir & 7));
        self.set32(off + 8, pba_off | u32::from(bir & 7));
        self.msix_cap = Some(off);
    }

    /// Adds a PCIe v2 endpoint capability reporting a x8 5 GT/s link.
    pub fn add_pcie_cap(&mut self) {
        let off = self.add_cap(CAP_ID_PCIE, 0x3c);
        self.set16(off + 2, 0x0002); // version 2, endpoint
        self.set32(off + 4, 0x0000_8002); // device caps: 512-byte max payload, FLR-less
        self.wmask16(off + 8, 0x7fff); // device control
        self.set32(off + 0x0c, 0x0000_3c82); // link caps: 5 GT/s, x8
        self.wmask16(off + 0x10, 0x0fff); // link control
        self.set16(off + 0x12, 0x1082); // link status: 5 GT/s, x8, slot clock
    }

    /// True if bus mastering (DMA) is enabled in the command register.
    pub fn bus_master(&self) -> bool {
        self.get16(COMMAND) & COMMAND_BUS_MASTER != 0
    }

    /// The configuration space's bytes (migration).
    pub fn raw(&self) -> &[u8] {
        &self.bytes
    }

    /// Replaces the bytes with `b` (migration, same layout); false if the length differs.
    pub fn load_raw(&mut self, b: &[u8]) -> bool {
        if b.len() != self.bytes.len() {
            return false;
        }
        self.bytes.copy_from_slice(b);
        true
    }

    /// True if the function may signal INTx: MSI-X is off and Interrupt Disable is clear
    /// (PCI Local Bus 6.2.2 and 6.8.2: with MSI-X enabled the function does not use INTx).
    pub fn intx_allowed(&self) -> bool {
        self.get16(COMMAND) & COMMAND_INTX_DISABLE == 0 && !self.msix_state().is_some_and(|(on, _)| on)
    }

    /// Sets the status register's Interrupt Status bit to the function's INTx condition `level`.
    pub fn set_intx_status(&mut self, level: bool) {
        let st = self.get16(STATUS) & !STATUS_INTX;
        self.set16(STATUS, st | if level { STATUS_INTX } else { 0 });
    }

    /// MSI-X (enabled, function masked), or `None` without an MSI-X capability.
    pub fn msix_state(&self) -> Option<(bool, bool)> {
        self.msix_cap.map(|o| {
            let mc = self.get16(o + 2);
            (mc & 0x8000 != 0, mc & 0x4000 != 0)
        })
    }

    /// Config read: out-of-range bytes read as all-ones. Returns false if any byte was out of range.
    pub fn read(&self, off: u64, data: &mut [u8]) -> bool {
        let mut ok = true;
        for (i, b) in data.iter_mut().enumerate() {
            match off.checked_add(i as u64).and_then(|o| self.bytes.get(o as usize)) {
                Some(v) => *b = *v,
                None => {
                    *b = 0xff;
                    ok = false;
                }
            }
        }
        ok
    }

    /// Config write through the write mask. Returns false if any byte was out of range.
    pub fn write(&mut self, off: u64, data: &[u8]) -> bool {
        let mut ok = true;
        for (i, v) in data.iter().enumerate() {
            match off.checked_add(i as u64).map(|o| o as usize) {
                Some(o) if o < CONFIG_SIZE => {
                    let m = self.wmask[o];
                    self.bytes[o] = (self.bytes[o] & !m) | (v & m);
                }
                _ => ok = false,
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let mut bars = [BarDef::UNUSED; 6];
        bars[0] = BarDef { kind: BarKind::Mem64 { prefetch: true }, size: 512 * 1024, addr: 0xd008_0000 };
        let mut c = ConfigSpace::new(
            PciIds {
                vendor: 0x8086,
                device: 0x10fb,
                subsystem_vendor: 0x8086,
                subsystem_device: 0x000c,
                class: 0x020000,
                revision: 1,
            },
            &bars,
        );
        c.add_msix_cap(64, 4, 0, 0x2000);
        c.add_pcie_cap();
        c
    }

    #[test]
    fn bar_sizing_probe_returns_the_size_mask() {
        let mut c = space();
        c.write(0x10, &[0xff; 4]);
        assert_eq!(c.get32(0x10), 0xfff8_000c);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(c.get32(0x14), 0xffff_ffff);
    }

    #[test]
    fn capability_list_links_msix_then_pcie() {
        let c = space();
        assert_ne!(c.get16(0x06) & STATUS_CAP_LIST, 0);
        let first = c.bytes[0x34] as usize;
        assert_eq!(c.bytes[first], CAP_ID_MSIX);
        assert_eq!(c.get16(first + 2) & 0x7ff, 63);
        let next = c.bytes[first + 1] as usize;
        assert_eq!(c.bytes[next], CAP_ID_PCIE);
        assert_eq!(c.bytes[next + 1], 0);
    }

    #[test]
    fn read_only_fields_ignore_writes_and_oob_reads_all_ones() {
        let mut c = space();
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.get32(0), 0x10fb_8086);
        c.write(4, &[0x06, 0]);
        assert!(c.bus_master());
        let mut b = [0u8; 4];
        assert!(!c.read(4094, &mut b));
        assert_eq!(&b[2..], &[0xff, 0xff]);
    }
}
