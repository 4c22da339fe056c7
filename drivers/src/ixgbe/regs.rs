//! 82599 registers the driver uses, transcribed from the Intel 82599 10 GbE Controller Datasheet
//! (order no. 331520): section 8.2.3 "Device Registers - PF" for offsets and bits, 7.1.6 / 7.2.3 for
//! the advanced receive / transmit descriptors, 9.3 for PCIe configuration space. Only what the code
//! uses; datasheet names kept. The emulator keeps its own copy (ARCHITECTURE: neither imports the other).

#![allow(missing_docs)] // datasheet names are the documentation

// 8.2.3.1 General control registers.
pub const CTRL: u64 = 0x00000;
pub const CTRL_LNK_RST: u32 = 1 << 3;
pub const CTRL_RST: u32 = 1 << 26;
pub const CTRL_RST_MASK: u32 = CTRL_LNK_RST | CTRL_RST;
pub const STATUS: u64 = 0x00008;
pub const CTRL_EXT: u64 = 0x00018;
pub const CTRL_EXT_NS_DIS: u32 = 1 << 16;

// 8.2.3.5 Interrupt registers.
pub const EICR: u64 = 0x00800;
pub const EIMC: u64 = 0x00888;
/// Extended Interrupt Mask Set (8.2.3.5.4).
pub const EIMS: u64 = 0x00880;
/// Link status change cause (EICR/EIMS bit 20).
pub const EICR_LSC: u32 = 1 << 20;
/// IVAR for the other causes (8.2.3.5.17): bits 15:8 = vector | valid.
pub const IVAR_MISC: u64 = 0x00a00;
pub const IVAR_ALLOC_VAL: u32 = 0x80;
/// IVAR(n) (8.2.3.10.15): RX queue 2n in byte 0, TX 2n in byte 1, RX 2n+1 in byte 2, TX 2n+1 in
/// byte 3; each vector | valid.
pub const fn ivar(n: u32) -> u64 {
    0x00900 + 4 * n as u64
}
/// Extended Interrupt Auto Clear: the vector's cause cleared when it fires (bits 0..15).
pub const EIAC: u64 = 0x00810;
/// General Purpose Interrupt Enable (8.2.3.5.18): MSI-X mode, PBA support.
pub const GPIE: u64 = 0x00898;
pub const GPIE_MSIX_MODE: u32 = 1 << 4;
pub const GPIE_PBA_SUPPORT: u32 = 1 << 31;
pub const EIMC_ALL: u32 = 0x7fff_ffff;

// 8.2.3.2.1 EEPROM/Flash control.
pub const EEC: u64 = 0x10010;
pub const EEC_ARD: u32 = 1 << 9;

// 8.2.3.8 Receive DMA registers (queues 0..63 in the 0x1000 page; 64..127 live at 0xD000).
pub const fn rdbal(q: u32) -> u64 {
    0x01000 + 0x40 * q as u64
}
pub const fn rdbah(q: u32) -> u64 {
    0x01004 + 0x40 * q as u64
}
pub const fn rdlen(q: u32) -> u64 {
    0x01008 + 0x40 * q as u64
}
pub const fn rdh(q: u32) -> u64 {
    0x01010 + 0x40 * q as u64
}
pub const fn rdt(q: u32) -> u64 {
    0x01018 + 0x40 * q as u64
}
pub const fn rxdctl(q: u32) -> u64 {
    0x01028 + 0x40 * q as u64
}
pub const RXDCTL_ENABLE: u32 = 1 << 25;
/// SRRCTL, the alias of queues 0..15 at 0x2100 (8.2.3.8.7).
pub const fn srrctl(q: u32) -> u64 {
    0x02100 + 4 * q as u64
}
pub const SRRCTL_BSIZEPACKET_MASK: u32 = 0x1f;
pub const SRRCTL_DESCTYPE_MASK: u32 = 0x7 << 25;
pub const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 0x1 << 25;
pub const SRRCTL_DROP_EN: u32 = 1 << 28;
/// DCA_RXCTRL, alias of queues 0..15 at 0x2200 (8.2.3.11.1).
pub const fn dca_rxctrl(q: u32) -> u64 {
    0x02200 + 4 * q as u64
}
/// Bit 12 of DCA_RXCTRL: reserved, must be cleared by software (ixy and DPDK do).
pub const DCA_RXCTRL_BIT12: u32 = 1 << 12;
pub const RDRXCTL: u64 = 0x02f00;
pub const RDRXCTL_CRCSTRIP: u32 = 1 << 1;
pub const RDRXCTL_DMAIDONE: u32 = 1 << 3;
pub const RDRXCTL_RSCFRSTSIZE: u32 = 0x1f << 17;
pub const RDRXCTL_RSCACKC: u32 = 1 << 25;
pub const RDRXCTL_FCOE_WRFIX: u32 = 1 << 26;
pub const fn rxpbsize(n: u32) -> u64 {
    0x03c00 + 4 * n as u64
}
pub const RXPBSIZE_128KB: u32 = 0x0002_0000;
pub const RXCTRL: u64 = 0x03000;
pub const RXCTRL_RXEN: u32 = 1 << 0;

// 8.2.3.7 Receive registers: filter control, MAC addresses, frame size.
pub const FCTRL: u64 = 0x05080;
pub const FCTRL_MPE: u32 = 1 << 8;
pub const FCTRL_UPE: u32 = 1 << 9;
pub const FCTRL_BAM: u32 = 1 << 10;
pub const fn ral(n: u32) -> u64 {
    0x0a200 + 8 * n as u64
}
pub const fn rah(n: u32) -> u64 {
    0x0a204 + 8 * n as u64
}
pub const RAH_AV: u32 = 1 << 31;

// 8.2.3.22 MAC registers.
pub const HLREG0: u64 = 0x04240;
pub const HLREG0_TXCRCEN: u32 = 1 << 0;
pub const HLREG0_RXCRCSTRP: u32 = 1 << 1;
pub const HLREG0_JUMBOEN: u32 = 1 << 2;
pub const HLREG0_TXPADEN: u32 = 1 << 10;
pub const MAXFRS: u64 = 0x04268;
pub const MAXFRS_MFS_SHIFT: u32 = 16;
pub const AUTOC: u64 = 0x042a0;
pub const AUTOC_LMS_MASK: u32 = 0x7 << 13;
pub const AUTOC_LMS_10G_SERIAL: u32 = 0x3 << 13;
pub const AUTOC_10G_PMA_PMD_MASK: u32 = 0x3 << 7;
pub const AUTOC_10G_XAUI: u32 = 0;
pub const AUTOC_AN_RESTART: u32 = 1 << 12;
pub const LINKS: u64 = 0x042a4;
pub const LINKS_UP: u32 = 1 << 30;
pub const LINKS_SPEED_SHIFT: u32 = 28;
pub const LINKS_SPEED_MASK: u32 = 0x3 << LINKS_SPEED_SHIFT;

// 8.2.3.9 Transmit registers.
pub const fn tdbal(q: u32) -> u64 {
    0x06000 + 0x40 * q as u64
}
pub const fn tdbah(q: u32) -> u64 {
    0x06004 + 0x40 * q as u64
}
pub const fn tdlen(q: u32) -> u64 {
    0x06008 + 0x40 * q as u64
}
pub const fn tdh(q: u32) -> u64 {
    0x06010 + 0x40 * q as u64
}
pub const fn tdt(q: u32) -> u64 {
    0x06018 + 0x40 * q as u64
}
pub const fn txdctl(q: u32) -> u64 {
    0x06028 + 0x40 * q as u64
}
pub const TXDCTL_ENABLE: u32 = 1 << 25;
pub const TXDCTL_PTHRESH_SHIFT: u32 = 0;
pub const TXDCTL_HTHRESH_SHIFT: u32 = 8;
pub const TXDCTL_WTHRESH_SHIFT: u32 = 16;
pub const fn txpbsize(n: u32) -> u64 {
    0x0cc00 + 4 * n as u64
}
pub const TXPBSIZE_40KB: u32 = 0x0000_a000;
pub const DTXMXSZRQ: u64 = 0x08100;
pub const RTTDCS: u64 = 0x04900;
pub const RTTDCS_ARBDIS: u32 = 1 << 6;
pub const DMATXCTL: u64 = 0x04a80;
pub const DMATXCTL_TE: u32 = 1 << 0;

// 8.2.3.23 Statistics registers (clear on read).
pub const fn mpc(n: u32) -> u64 {
    0x03fa0 + 4 * n as u64
}
pub const GPRC: u64 = 0x04074;
pub const GPTC: u64 = 0x04080;
pub const GORCL: u64 = 0x04088;
pub const GORCH: u64 = 0x0408c;
pub const GOTCL: u64 = 0x04090;
pub const GOTCH: u64 = 0x04094;

// 9.3.3 PCI configuration space: command register.
pub use crate::pci::port::{PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY};

// 7.1.6 Advanced receive descriptor (read format and write-back format).
/// Write-back `status_error` (byte 8): descriptor done.
pub const RXD_STAT_DD: u32 = 1 << 0;
/// Write-back `status_error`: end of packet.
pub const RXD_STAT_EOP: u32 = 1 << 1;
/// Write-back `status_error`: RX data error (bit 29 of the extended error field).
pub const RXD_ERR_RXE: u32 = 1 << 29;

// 7.2.3.2.4 Advanced transmit data descriptor.
pub const TXD_DTALEN_MASK: u32 = 0xffff;
pub const TXD_DTYP_DATA: u32 = 0x3 << 20;
pub const TXD_DCMD_EOP: u32 = 1 << 24;
pub const TXD_DCMD_IFCS: u32 = 1 << 25;
pub const TXD_DCMD_RS: u32 = 1 << 27;
pub const TXD_DCMD_DEXT: u32 = 1 << 29;
pub const TXD_PAYLEN_SHIFT: u32 = 14;
/// Write-back `status` (byte 12): descriptor done.
pub const TXD_STAT_DD: u32 = 1 << 0;

// 8.2.3.7.12-15, 7.1.2.8 Receive-side scaling.
/// Multiple Receive Queues Command: MRQE (bits 3:0) 0001 = RSS; hash types in bits 16..24.
pub const MRQC: u64 = 0x05818;
pub const MRQC_RSSEN: u32 = 0x1;
pub const MRQC_RSS_FIELD_IPV4_TCP: u32 = 1 << 16;
pub const MRQC_RSS_FIELD_IPV4: u32 = 1 << 17;
pub const MRQC_RSS_FIELD_IPV6_EX_TCP: u32 = 1 << 18;
pub const MRQC_RSS_FIELD_IPV6_EX: u32 = 1 << 19;
pub const MRQC_RSS_FIELD_IPV6: u32 = 1 << 20;
pub const MRQC_RSS_FIELD_IPV6_TCP: u32 = 1 << 21;
pub const MRQC_RSS_FIELD_IPV4_UDP: u32 = 1 << 22;
pub const MRQC_RSS_FIELD_IPV6_UDP: u32 = 1 << 23;
pub const MRQC_RSS_FIELD_IPV6_EX_UDP: u32 = 1 << 24;
/// RSS Random Key, 10 registers: key byte 4n+k in bits 8k+7:8k of RSSRK(n).
pub const fn rssrk(n: u32) -> u64 {
    0x05c80 + 4 * n as u64
}
pub const RSS_KEY_LEN: usize = 40;
/// Redirection Table, 32 registers of 4 one-byte entries (4-bit queue index each).
pub const fn reta(n: u32) -> u64 {
    0x05c00 + 4 * n as u64
}
pub const RETA_SIZE: u16 = 128;
/// Receive Checksum Control: PCSD puts the RSS hash in the write-back.
pub const RXCSUM: u64 = 0x05000;
pub const RXCSUM_PCSD: u32 = 1 << 13;
/// Advanced RX write-back dword 0: RSS type in bits 3:0 (0: no hash); dword 1 the hash.
pub const RXD_RSSTYPE_MASK: u32 = 0xf;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_datasheet_tables() {
        // Literal numbers from the 82599 datasheet register summary (table 8-3 and 8.2.3.x).
        assert_eq!(rdt(0), 0x01018);
        assert_eq!(rdt(3), 0x010d8);
        assert_eq!(rxdctl(1), 0x01068);
        assert_eq!(tdt(1), 0x06058);
        assert_eq!(txdctl(0), 0x06028);
        assert_eq!(srrctl(15), 0x0213c);
        assert_eq!(ral(0), 0x0a200);
        assert_eq!(rah(1), 0x0a20c);
        assert_eq!(LINKS, 0x042a4);
        assert_eq!(EEC, 0x10010);
        assert_eq!(mpc(7), 0x03fbc);
        assert_eq!(TXD_DCMD_EOP | TXD_DCMD_IFCS | TXD_DCMD_RS | TXD_DCMD_DEXT | TXD_DTYP_DATA, 0x2b30_0000);
        // 8.2.3.8.7 SRRCTL: BSIZEPACKET is bits 4:0 in 1 KB units (1..16 KB), bits 7:5 reserved
        // (the 0x7f of shared base-driver headers is the igb family's 7-bit field). The largest
        // buffer the driver programs, 16 KB, fits the field.
        assert_eq!(SRRCTL_BSIZEPACKET_MASK, 0b1_1111);
        assert_eq!((MRQC, reta(31), rssrk(9), RXCSUM), (0x05818, 0x05c7c, 0x05ca4, 0x05000));
        assert_eq!(16 & !SRRCTL_BSIZEPACKET_MASK, 0);
    }
}
