//! The LAN Host Memory Cache (datasheet 7.9): the PF's segment descriptor table, FPM address
//! translation, and the TX/RX queue contexts the driver writes into host memory.
//!
//! FPM address of queue q's context = LAN{TX,RX}BASE x 512 + q x 2^OBJSZ. Its segment descriptor is
//! FPM / 2 MiB; a direct segment maps the 2 MiB straight onto host memory, a paged one points at a page of
//! 512 page descriptors (u64, valid bit 0) each naming a 4 KiB page. Everything read from host memory is
//! untrusted: invalid descriptors, out-of-range offsets and unmapped IOVAs are errors the caller records.

use super::regs::*;
use crate::dma::Dma;

/// One segment descriptor as PFHMC_SDCMD wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentDesc {
    /// PFHMC_SDDATALOW.
    pub low: u32,
    /// PFHMC_SDDATAHIGH.
    pub high: u32,
}

impl SegmentDesc {
    fn valid(&self) -> bool {
        self.low & PFHMC_SDDATALOW_VALID != 0
    }
    fn direct(&self) -> bool {
        self.low & PFHMC_SDDATALOW_TYPE_DIRECT != 0
    }
    fn base(&self) -> u64 {
        (u64::from(self.high) << 32) | u64::from(self.low & PFHMC_SDDATALOW_ADDR_MASK)
    }
    fn pages(&self) -> u64 {
        u64::from((self.low >> PFHMC_SDDATALOW_BPCOUNT_SHIFT) & PFHMC_SDDATALOW_BPCOUNT_MASK)
    }
}

/// The PF's segment table.
#[derive(Debug, Clone)]
pub struct Hmc {
    sd: Vec<SegmentDesc>,
}

impl Default for Hmc {
    fn default() -> Self {
        Self { sd: vec![SegmentDesc::default(); HMC_SD_COUNT] }
    }
}

impl Hmc {
    /// Forgets every segment (PF reset).
    pub fn clear(&mut self) {
        self.sd.iter_mut().for_each(|s| *s = SegmentDesc::default());
    }

    /// PFHMC_SDCMD with WR: stores `desc` at `idx`.
    pub fn write_sd(&mut self, idx: usize, desc: SegmentDesc) {
        if let Some(s) = self.sd.get_mut(idx) {
            *s = desc;
        }
    }

    /// PFHMC_SDCMD without WR: the descriptor at `idx`.
    pub fn read_sd(&self, idx: usize) -> SegmentDesc {
        self.sd.get(idx).copied().unwrap_or_default()
    }

    /// Host IOVA of `len` bytes at FPM address `fpm` (must not cross a backing page of a paged segment,
    /// nor the end of a direct segment's backing pages).
    pub fn translate(&self, dma: &mut dyn Dma, fpm: u64, len: u64) -> Result<u64, &'static str> {
        let idx = usize::try_from(fpm / HMC_SD_SIZE).map_err(|_| "hmc address beyond segment table")?;
        let off = fpm % HMC_SD_SIZE;
        let sd = self.sd.get(idx).ok_or("hmc address beyond segment table")?;
        if !sd.valid() {
            return Err("hmc segment descriptor not valid");
        }
        if off + len > sd.pages() * HMC_PAGE {
            return Err("hmc address beyond the segment's backing pages");
        }
        if sd.direct() {
            return sd.base().checked_add(off).ok_or("hmc segment address wraps");
        }
        if off % HMC_PAGE + len > HMC_PAGE {
            return Err("hmc object crosses a backing page");
        }
        let pd_addr = sd.base() + (off / HMC_PAGE) * 8;
        let mut pd = [0u8; 8];
        dma.read(pd_addr, &mut pd).map_err(|_| "hmc page descriptor read")?;
        let pd = u64::from_le_bytes(pd);
        if pd & 1 == 0 {
            return Err("hmc page descriptor not valid");
        }
        Ok((pd & !(HMC_PAGE - 1)) + off % HMC_PAGE)
    }

    /// Reads one queue context object through the segment table.
    pub fn read_object(&self, dma: &mut dyn Dma, fpm: u64, buf: &mut [u8]) -> Result<u64, &'static str> {
        let iova = self.translate(dma, fpm, buf.len() as u64)?;
        dma.read(iova, buf).map_err(|_| "hmc context read")?;
        Ok(iova)
    }
}

/// Bit field `(lsb, width)` (width <= 64) of a little-endian bit-packed context.
pub fn field(buf: &[u8], (lsb, width): (usize, usize)) -> u64 {
    let mut v = 0u64;
    for i in 0..width.min(64) {
        let bit = lsb + i;
        let byte = buf.get(bit / 8).copied().unwrap_or(0);
        if byte >> (bit % 8) & 1 != 0 {
            v |= 1 << i;
        }
    }
    v
}

/// Decoded TX queue context, the fields the model acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxContext {
    /// Ring base IOVA (bytes).
    pub base: u64,
    /// Descriptors in the ring.
    pub qlen: u32,
    /// Head to start from.
    pub head: u32,
    /// Head write-back instead of descriptor write-back.
    pub head_wb_ena: bool,
    /// Where the head is written back.
    pub head_wb_addr: u64,
    /// Queue-set handle (ready list).
    pub rdylist: u16,
}

impl TxContext {
    /// Decodes and validates a context object.
    pub fn decode(b: &[u8]) -> Result<TxContext, &'static str> {
        let ctx = TxContext {
            base: field(b, TXC_BASE).checked_mul(CTX_UNIT).ok_or("tx context base overflows")?,
            qlen: field(b, TXC_QLEN) as u32,
            head: field(b, TXC_HEAD) as u32,
            head_wb_ena: field(b, TXC_HEAD_WB_ENA) != 0,
            head_wb_addr: field(b, TXC_HEAD_WB_ADDR),
            rdylist: field(b, TXC_RDYLIST) as u16,
        };
        let _ = field(b, TXC_NEW_CONTEXT);
        if ctx.qlen < 8 {
            return Err("tx context qlen under 8");
        }
        if ctx.head >= ctx.qlen {
            return Err("tx context head beyond qlen");
        }
        if ctx.head_wb_ena && !ctx.head_wb_addr.is_multiple_of(4) {
            return Err("tx context head write-back address unaligned");
        }
        Ok(ctx)
    }
}

/// Decoded RX queue context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxContext {
    /// Ring base IOVA (bytes).
    pub base: u64,
    /// Descriptors in the ring.
    pub qlen: u32,
    /// Head to start from.
    pub head: u32,
    /// Data buffer size in bytes.
    pub dbuff: usize,
    /// Header buffer size in bytes (split is not modelled).
    pub hbuff: usize,
    /// Descriptor type (0 = one buffer; split types are not modelled).
    pub dtype: u8,
    /// 32-byte descriptors (else 16).
    pub dsize32: bool,
    /// Strip the FCS.
    pub crcstrip: bool,
    /// Largest frame accepted.
    pub rxmax: u32,
}

impl RxContext {
    /// Decodes and validates a context object.
    pub fn decode(b: &[u8]) -> Result<RxContext, &'static str> {
        let ctx = RxContext {
            base: field(b, RXC_BASE).checked_mul(CTX_UNIT).ok_or("rx context base overflows")?,
            qlen: field(b, RXC_QLEN) as u32,
            head: field(b, RXC_HEAD) as u32,
            dbuff: (field(b, RXC_DBUFF) * CTX_UNIT) as usize,
            hbuff: (field(b, RXC_HBUFF) * 64) as usize,
            dtype: field(b, RXC_DTYPE) as u8,
            dsize32: field(b, RXC_DSIZE) != 0,
            crcstrip: field(b, RXC_CRCSTRIP) != 0,
            rxmax: field(b, RXC_RXMAX) as u32,
        };
        if ctx.qlen < 8 {
            return Err("rx context qlen under 8");
        }
        if ctx.head >= ctx.qlen {
            return Err("rx context head beyond qlen");
        }
        if ctx.dbuff == 0 {
            return Err("rx context data buffer size 0");
        }
        if ctx.dtype != 0 {
            return Err("rx context header split not modelled");
        }
        Ok(ctx)
    }

    /// Descriptor size in bytes.
    pub fn desc_len(&self) -> u64 {
        if self.dsize32 {
            32
        } else {
            16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::FakeDma;

    fn set(buf: &mut [u8], (lsb, width): (usize, usize), v: u64) {
        for i in 0..width {
            let bit = lsb + i;
            if v >> i & 1 != 0 {
                buf[bit / 8] |= 1 << (bit % 8);
            } else {
                buf[bit / 8] &= !(1 << (bit % 8));
            }
        }
    }

    #[test]
    fn fields_round_trip_across_byte_boundaries() {
        let mut b = [0u8; 128];
        set(&mut b, TXC_BASE, 0x1_2345_6789_abcd >> 7);
        set(&mut b, TXC_QLEN, 1024);
        set(&mut b, TXC_HEAD_WB_ADDR, 0xdead_beef_0000_1230);
        set(&mut b, TXC_RDYLIST, 0x3ff);
        assert_eq!(field(&b, TXC_BASE), 0x1_2345_6789_abcd >> 7);
        assert_eq!(field(&b, TXC_QLEN), 1024);
        assert_eq!(field(&b, TXC_HEAD_WB_ADDR), 0xdead_beef_0000_1230);
        assert_eq!(field(&b, TXC_RDYLIST), 0x3ff);
        assert_eq!(field(&b, TXC_HEAD_WB_ENA), 0);
        assert_eq!(field(&b, (1020, 64)), 0, "reads past the end are zero");
    }

    #[test]
    fn direct_and_paged_segments_translate() {
        let mut dma = FakeDma::new(0x1_0000_0000, 0x40_0000);
        let mut h = Hmc::default();
        assert!(h.translate(&mut dma, 0, 32).is_err(), "invalid SD");
        let low = 0x1_0000_0000u64 as u32 | PFHMC_SDDATALOW_VALID | PFHMC_SDDATALOW_TYPE_DIRECT | (512 << 2);
        h.write_sd(0, SegmentDesc { low, high: 1 });
        assert_eq!(h.translate(&mut dma, 0x1000, 32), Ok(0x1_0000_1000));
        assert!(h.translate(&mut dma, HMC_SD_SIZE - 16, 32).is_err());
        // Paged SD 1: PD page at +0x20_0000, PD 2 -> page at +0x30_0000.
        h.write_sd(1, SegmentDesc { low: 0x0020_0000 | PFHMC_SDDATALOW_VALID | (512 << 2), high: 1 });
        dma.write(0x1_0020_0010, &(0x1_0030_0000u64 | 1).to_le_bytes()).unwrap();
        assert_eq!(h.translate(&mut dma, HMC_SD_SIZE + 2 * HMC_PAGE + 64, 32), Ok(0x1_0030_0040));
        assert_eq!(h.translate(&mut dma, HMC_SD_SIZE + HMC_PAGE, 32), Err("hmc page descriptor not valid"));
    }

    #[test]
    fn bad_contexts_are_refused() {
        let mut b = [0u8; 32];
        assert!(RxContext::decode(&b).is_err());
        set(&mut b, RXC_QLEN, 64);
        set(&mut b, RXC_DBUFF, 16);
        let c = RxContext::decode(&b).unwrap();
        assert_eq!(c.dbuff, 2048);
        set(&mut b, RXC_HEAD, 64);
        assert_eq!(RxContext::decode(&b), Err("rx context head beyond qlen"));
    }
}
