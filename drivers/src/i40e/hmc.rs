//! The LAN Host Memory Cache: where the X710 keeps its queue contexts, in host memory the driver
//! provides (datasheet 7.9). This driver uses one paged segment: a memzone holding a page of page
//! descriptors and then the 4 KiB backing pages, TX objects at FPM address 0 and RX objects after
//! them (512-byte aligned). Contexts are little-endian bit-packed structures, written with
//! [`set_field`] (the emulator's `model/i40e/hmc.rs` reads them back with the same field table).

use lab_core::ethdev::PortId;
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use super::regs::*;
use crate::error::{Ctx, DriverError};

/// Where the LAN HMC lives: FPM layout and the backing memzone.
pub(super) struct HmcLayout {
    /// Shared-memory offset of the first backing page (after the page-descriptor page).
    pages: ShmOffset,
    tx_objsz: u64,
    rx_objsz: u64,
    /// FPM address of RX object 0.
    rx_base: u64,
    /// Bytes of backing memory.
    len: u64,
}

/// The memzone of port `port`'s HMC.
pub(super) fn zone(port: PortId) -> String {
    format!("i40e_{port}_hmc")
}

impl HmcLayout {
    /// Object sizes from the device, the backing zone reserved (and recorded in `zones`), its
    /// page descriptors written, and segment descriptor 0 and the PF's object bases programmed.
    pub(super) fn set_up(
        bar: &Bar,
        shm: &Shm,
        port: PortId,
        pf: u32,
        nq: u32,
        zones: &mut Vec<String>,
    ) -> Result<HmcLayout, DriverError> {
        let tx_objsz = 1u64 << (bar.read32(GLHMC_LANTXOBJSZ) & GLHMC_OBJSZ_MASK);
        let rx_objsz = 1u64 << (bar.read32(GLHMC_LANRXOBJSZ) & GLHMC_OBJSZ_MASK);
        let qmax = bar.read32(GLHMC_LANQMAX) & 0x7ff;
        if tx_objsz < TX_CTX_LEN as u64 || rx_objsz < RX_CTX_LEN as u64 || tx_objsz > HMC_PAGE || rx_objsz > HMC_PAGE {
            return Err(DriverError::state(format!("HMC object sizes {tx_objsz}/{rx_objsz} bytes unusable")));
        }
        if nq > qmax {
            return Err(DriverError::state(format!("HMC holds {qmax} LAN queues, {nq} needed")));
        }
        let rx_base = (u64::from(nq) * tx_objsz).div_ceil(512) * 512;
        let len = (rx_base + u64::from(nq) * rx_objsz).div_ceil(HMC_PAGE) * HMC_PAGE;
        let pages = len / HMC_PAGE;
        if pages > u64::from(HMC_MAX_BP_COUNT) {
            return Err(DriverError::config(format!("HMC needs {pages} pages, one segment holds {HMC_MAX_BP_COUNT}")));
        }
        let name = zone(port);
        let z = shm.reserve(&name, HMC_PAGE + len, HMC_PAGE).ctx(format!("memzone {name}"))?;
        zones.push(name.clone());
        for p in 0..pages {
            let pd = ShmOffset(z.offset.0 + HMC_PAGE * (p + 1)).iova().0 | HMC_PD_VALID;
            if !shm.write_at(ShmOffset(z.offset.0 + 8 * p), &pd.to_le_bytes()) {
                return Err(DriverError::state(format!("memzone {name} outside shared memory")));
            }
        }
        bar.write32(glhmc_lantxbase(pf), 0);
        bar.write32(glhmc_lantxcnt(pf), nq);
        bar.write32(glhmc_lanrxbase(pf), (rx_base / 512) as u32);
        bar.write32(glhmc_lanrxcnt(pf), nq);
        // Segment descriptor 0: paged, valid, 512 page descriptors at the zone's first page.
        let pd_page = z.iova().0;
        bar.write32(PFHMC_SDDATAHIGH, (pd_page >> 32) as u32);
        bar.write32(
            PFHMC_SDDATALOW,
            (pd_page as u32 & 0xffff_f000)
                | PFHMC_SDDATALOW_PMSDVALID
                | (HMC_MAX_BP_COUNT << PFHMC_SDDATALOW_PMSDBPCOUNT_SHIFT),
        );
        bar.write32(PFHMC_SDCMD, PFHMC_SDCMD_PMSDWR);
        tracing::debug!(port = port.0, tx_objsz, rx_objsz, rx_base, pages, "HMC segment 0 (paged) set up");
        Ok(HmcLayout { pages: ShmOffset(z.offset.0 + HMC_PAGE), tx_objsz, rx_objsz, rx_base, len })
    }

    /// The transmit context of queue `q` (relative to the PF): ring at `iova`, `n` descriptors,
    /// scheduled on queue set `qs_handle`.
    pub(super) fn write_tx_context(
        &self,
        shm: &Shm,
        q: u32,
        iova: u64,
        n: u32,
        qs_handle: u16,
    ) -> Result<(), DriverError> {
        let mut c = [0u8; TX_CTX_LEN];
        set_field(&mut c, TXC_NEW_CONTEXT, 1);
        set_field(&mut c, TXC_BASE, iova / CTX_UNIT);
        set_field(&mut c, TXC_QLEN, u64::from(n));
        set_field(&mut c, TXC_RDYLIST, u64::from(qs_handle));
        self.write(shm, u64::from(q) * self.tx_objsz, &c)
    }

    /// The receive context of queue `q`: ring at `iova`, `n` 32-byte descriptors, `buf`-byte
    /// buffers, CRC stripped, frames up to `max_frame`.
    pub(super) fn write_rx_context(
        &self,
        shm: &Shm,
        q: u32,
        (iova, n): (u64, u32),
        buf: usize,
        max_frame: u32,
    ) -> Result<(), DriverError> {
        let mut c = [0u8; RX_CTX_LEN];
        set_field(&mut c, RXC_BASE, iova / CTX_UNIT);
        set_field(&mut c, RXC_QLEN, u64::from(n));
        set_field(&mut c, RXC_DBUFF, buf as u64 / CTX_UNIT);
        set_field(&mut c, RXC_DSIZE, 1);
        set_field(&mut c, RXC_CRCSTRIP, 1);
        set_field(&mut c, RXC_L2TSEL, 1);
        set_field(&mut c, RXC_SHOWIV, 0);
        set_field(&mut c, RXC_RXMAX, (buf as u64).min(u64::from(max_frame)));
        set_field(&mut c, RXC_PREFENA, 1);
        self.write(shm, self.rx_base + u64::from(q) * self.rx_objsz, &c)
    }

    fn write(&self, shm: &Shm, fpm: u64, ctx: &[u8]) -> Result<(), DriverError> {
        if fpm + ctx.len() as u64 > self.len {
            return Err(DriverError::state(format!(
                "HMC context at FPM {fpm:#x} beyond the {} bytes of backing memory",
                self.len
            )));
        }
        shm.write_at(ShmOffset(self.pages.0 + fpm), ctx)
            .then_some(())
            .ok_or_else(|| DriverError::state("HMC memory outside shared memory"))
    }
}

/// Sets bit field `(lsb, width)` of a little-endian bit-packed context to `v`.
pub(super) fn set_field(buf: &mut [u8], (lsb, width): (usize, usize), v: u64) {
    for i in 0..width.min(64) {
        let bit = lsb + i;
        if let Some(b) = buf.get_mut(bit / 8) {
            if v >> i & 1 != 0 {
                *b |= 1 << (bit % 8);
            } else {
                *b &= !(1 << (bit % 8));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_fields_pack_little_endian_across_bytes() {
        let mut c = [0u8; TX_CTX_LEN];
        set_field(&mut c, TXC_BASE, 0x1_0000_4000 / CTX_UNIT);
        set_field(&mut c, TXC_QLEN, 512);
        set_field(&mut c, TXC_RDYLIST, 0x2ab);
        // base starts at bit 32 = byte 4: 0x1_0000_4000 / 128 = 0x0200_0080.
        assert_eq!(&c[4..8], &[0x80, 0x00, 0x00, 0x02]);
        // qlen at bit 161: byte 20 bit 1.
        assert_eq!(c[20], (512u32 << 1) as u8);
        assert_eq!(c[21], ((512u32 << 1) >> 8) as u8);
        // rdylist at bit 980 = byte 122 bit 4.
        assert_eq!(c[122] >> 4, 0xb);
        assert_eq!(c[123], 0x2a);
        let mut r = [0u8; RX_CTX_LEN];
        set_field(&mut r, RXC_DSIZE, 1);
        assert_eq!(r[14], 1 << 4);
    }
}
