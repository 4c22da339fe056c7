//! 82599 registers the emulator implements, transcribed from the Intel 82599 10 GbE Controller
//! Datasheet (order no. 331520), section 8.2.3 "Device Registers - PF" (offsets and bit positions),
//! section 7.1.6 / 7.2.3 (advanced receive / transmit descriptors) and section 9.3 (PCIe configuration
//! space, MSI-X table in BAR 4). Written for the emulator only; the driver keeps its own copy.

#![allow(missing_docs)] // datasheet names are the documentation

// 8.2.3.1 General control
pub const CTRL: u32 = 0x00000;
pub const CTRL_LNK_RST: u32 = 1 << 3;
pub const CTRL_RST: u32 = 1 << 26;
pub const STATUS: u32 = 0x00008;
pub const STATUS_LAN_ID_SHIFT: u32 = 2;
pub const STATUS_LINK_UP: u32 = 1 << 7;
pub const CTRL_EXT: u32 = 0x00018;

// 8.2.3.5 Interrupt registers
pub const EICR: u32 = 0x00800;
pub const EICS: u32 = 0x00808;
pub const EIMS: u32 = 0x00880;
pub const EIMC: u32 = 0x00888;
pub const EIAC: u32 = 0x00810;
pub const EIAM: u32 = 0x00890;
pub const GPIE: u32 = 0x00898;
pub const EICR_LSC: u32 = 1 << 20;
/// EICR bits 15:0 are the per-vector queue causes in MSI-X mode.
pub const EICR_RTXQ_MASK: u32 = 0xffff;
pub const EITR_BASE: u32 = 0x00820;
pub const EITR_COUNT: u32 = 24;
pub const IVAR_BASE: u32 = 0x00900;
pub const IVAR_COUNT: u32 = 64;
pub const IVAR_MISC: u32 = 0x00a00;
pub const IVAR_VALID: u32 = 1 << 7;
pub const fn eitr(n: u32) -> u32 {
    EITR_BASE + 4 * n
}
pub const fn ivar(n: u32) -> u32 {
    IVAR_BASE + 4 * n
}

// 8.2.3.8 Receive DMA registers
pub const RX_QUEUES: u32 = 64;
pub const fn rdbal(q: u32) -> u32 {
    0x01000 + 0x40 * q
}
pub const fn rdbah(q: u32) -> u32 {
    0x01004 + 0x40 * q
}
pub const fn rdlen(q: u32) -> u32 {
    0x01008 + 0x40 * q
}
pub const fn rdh(q: u32) -> u32 {
    0x01010 + 0x40 * q
}
pub const fn rdt(q: u32) -> u32 {
    0x01018 + 0x40 * q
}
pub const fn rxdctl(q: u32) -> u32 {
    0x01028 + 0x40 * q
}
pub const RXDCTL_ENABLE: u32 = 1 << 25;
pub const fn srrctl(q: u32) -> u32 {
    0x02100 + 4 * q
}
pub const SRRCTL_QUEUES: u32 = 16;
pub const SRRCTL_BSIZEPACKET_MASK: u32 = 0x1f;
pub const SRRCTL_DESCTYPE_SHIFT: u32 = 25;
pub const SRRCTL_DESCTYPE_MASK: u32 = 0x7 << SRRCTL_DESCTYPE_SHIFT;
pub const SRRCTL_DEFAULT: u32 = 0x0000_0402; // BSIZEPACKET 2 KiB, BSIZEHEADER 256 B
pub const fn dca_rxctrl(q: u32) -> u32 {
    0x02200 + 4 * q
}
pub const DCA_RXCTRL_DEFAULT: u32 = 1 << 12;
pub const RDRXCTL: u32 = 0x02f00;
pub const RDRXCTL_DMAIDONE: u32 = 1 << 3;
pub const RXCTRL: u32 = 0x03000;
pub const RXCTRL_RXEN: u32 = 1 << 0;
pub const fn rxpbsize(n: u32) -> u32 {
    0x03c00 + 4 * n
}
pub const RXPBSIZE_DEFAULT: u32 = 0x0002_0000; // 128 KiB (packet buffer 0)

// 8.2.3.23 Statistics (clear on read)
pub const CRCERRS: u32 = 0x04000;
pub const fn mpc(n: u32) -> u32 {
    0x03fa0 + 4 * n
}
pub const GPRC: u32 = 0x04074;
pub const BPRC: u32 = 0x04078;
pub const MPRC: u32 = 0x0407c;
pub const GPTC: u32 = 0x04080;
pub const GORCL: u32 = 0x04088;
pub const GORCH: u32 = 0x0408c;
pub const GOTCL: u32 = 0x04090;
pub const GOTCH: u32 = 0x04094;
pub const TORL: u32 = 0x040c0;
pub const TORH: u32 = 0x040c4;
pub const TPR: u32 = 0x040d0;
pub const TPT: u32 = 0x040d4;
pub const MPTC: u32 = 0x040f0;
pub const BPTC: u32 = 0x040f4;

// 8.2.3.22 MAC registers
pub const HLREG0: u32 = 0x04240;
pub const HLREG0_TXCRCEN: u32 = 1 << 0;
pub const HLREG0_RXCRCSTRP: u32 = 1 << 1;
pub const HLREG0_TXPADEN: u32 = 1 << 10;
pub const HLREG0_DEFAULT: u32 = 0x0000_2001 | HLREG0_RXCRCSTRP | HLREG0_TXPADEN;
pub const AUTOC: u32 = 0x042a0;
pub const AUTOC_AN_RESTART: u32 = 1 << 12;
pub const LINKS: u32 = 0x042a4;
pub const LINKS_UP: u32 = 1 << 30;
pub const LINKS_SPEED_10G: u32 = 3 << 28;
/// 8.2.3.22.20 AUTOC2, beside AUTOC and LINKS.
pub const AUTOC2: u32 = 0x042a8;
/// 8.2.3.22.21 LINKS2: link partner status, read-only (not AUTOC2, as this model had it).
pub const LINKS2: u32 = 0x04324;

// 8.2.3.10 Transmit DMA / DCB
pub const RTTDCS: u32 = 0x04900;
pub const DMATXCTL: u32 = 0x04a80;
pub const DMATXCTL_TE: u32 = 1 << 0;
pub const DTXMXSZRQ: u32 = 0x08100;
pub const fn txpbsize(n: u32) -> u32 {
    0x0cc00 + 4 * n
}
pub const TXPBSIZE_DEFAULT: u32 = 0x0000_a000; // 40 KiB

// 8.2.3.7 Receive filters
pub const FCTRL: u32 = 0x05080;
pub const FCTRL_MPE: u32 = 1 << 8;
pub const FCTRL_UPE: u32 = 1 << 9;
pub const FCTRL_BAM: u32 = 1 << 10;
pub const RAR_ENTRIES: u32 = 128;
pub const fn ral(n: u32) -> u32 {
    0x0a200 + 8 * n
}
pub const fn rah(n: u32) -> u32 {
    0x0a204 + 8 * n
}
pub const RAH_AV: u32 = 1 << 31;
/// Entries 0..15 are also reachable at their 82598 offsets 0x05400 + 8n.
pub const RAR_LEGACY_BASE: u32 = 0x05400;
pub const RAR_LEGACY_ENTRIES: u32 = 16;

// 8.2.3.7.12-8.2.3.7.15, 7.1.2.8 Receive-side scaling
/// Multiple Receive Queues Command: MRQE (bits 3:0) selects the queueing scheme; 0001 is RSS
/// alone (16 queues), 0000 no RSS. Bits 16..24 enable the hash types.
pub const MRQC: u32 = 0x05818;
pub const MRQC_MRQE_MASK: u32 = 0xf;
pub const MRQC_MRQE_RSS: u32 = 0x1;
pub const MRQC_RSS_TCPIPV4: u32 = 1 << 16;
pub const MRQC_RSS_IPV4: u32 = 1 << 17;
pub const MRQC_RSS_IPV6: u32 = 1 << 20;
pub const MRQC_RSS_TCPIPV6: u32 = 1 << 21;
pub const MRQC_RSS_UDPIPV4: u32 = 1 << 22;
pub const MRQC_RSS_UDPIPV6: u32 = 1 << 23;
pub const MRQC_RSS_TCPIPV6_EX: u32 = 1 << 18;
pub const MRQC_RSS_IPV6_EX: u32 = 1 << 19;
pub const MRQC_RSS_UDPIPV6_EX: u32 = 1 << 24;
/// Any of the three "IPv6 EX" hash types.
pub const MRQC_RSS_IPV6_EX_ALL: u32 = MRQC_RSS_TCPIPV6_EX | MRQC_RSS_IPV6_EX | MRQC_RSS_UDPIPV6_EX;
/// RSS Random Key: 10 registers, 40 bytes, key byte 4n+k in bits 8k+7:8k of RSSRK(n).
pub const fn rssrk(n: u32) -> u32 {
    0x05c80 + 4 * n
}
pub const RSSRK_REGS: u32 = 10;
/// Redirection Table: 32 registers of four one-byte entries (entry 4n+k in byte k of RETA(n)),
/// 128 entries indexed by the hash's 7 low bits; the 82599 uses each entry's 4 low bits.
pub const fn reta(n: u32) -> u32 {
    0x05c00 + 4 * n
}
pub const RETA_REGS: u32 = 32;
pub const RETA_ENTRIES: usize = 128;
/// Receive Checksum Control: PCSD (bit 13) puts the RSS hash in the write-back instead of the
/// fragment checksum and IP identification.
pub const RXCSUM: u32 = 0x05000;
pub const RXCSUM_PCSD: u32 = 1 << 13;
/// RSS types in the advanced write-back (dword 0, bits 3:0).
pub const RSS_TYPE_NONE: u32 = 0x0;
pub const RSS_TYPE_TCPIPV4: u32 = 0x1;
pub const RSS_TYPE_IPV4: u32 = 0x2;
pub const RSS_TYPE_TCPIPV6: u32 = 0x3;
pub const RSS_TYPE_IPV6: u32 = 0x5;
pub const RSS_TYPE_UDPIPV4: u32 = 0x7;
pub const RSS_TYPE_UDPIPV6: u32 = 0x8;
pub const RSS_TYPE_IPV6_EX: u32 = 0x4;
pub const RSS_TYPE_TCPIPV6_EX: u32 = 0x6;
pub const RSS_TYPE_UDPIPV6_EX: u32 = 0x9;
/// Queues RSS can spread over.
pub const RSS_QUEUES: usize = 16;

// 8.2.3.9 Transmit registers
pub const TX_QUEUES: u32 = 128;
pub const fn tdbal(q: u32) -> u32 {
    0x06000 + 0x40 * q
}
pub const fn tdbah(q: u32) -> u32 {
    0x06004 + 0x40 * q
}
pub const fn tdlen(q: u32) -> u32 {
    0x06008 + 0x40 * q
}
pub const fn tdh(q: u32) -> u32 {
    0x06010 + 0x40 * q
}
pub const fn tdt(q: u32) -> u32 {
    0x06018 + 0x40 * q
}
pub const fn txdctl(q: u32) -> u32 {
    0x06028 + 0x40 * q
}
pub const TXDCTL_ENABLE: u32 = 1 << 25;

// 8.2.3.3 EEPROM/flash
pub const EEC: u32 = 0x10010;
pub const EEC_PRES: u32 = 1 << 8;
pub const EEC_ARD: u32 = 1 << 9;

// Queue register pages shared with the driver (sparse mmap).
pub const RX_QUEUE_PAGE: (u64, u64) = (0x1000, 0x1000);
pub const TX_QUEUE_PAGES: (u64, u64) = (0x6000, 0x2000);

// BAR sizes (9.3.6.1 / 9.3.11: memory BAR 512 KiB, MSI-X BAR 16 KiB)
pub const BAR0_SIZE: u64 = 512 * 1024;
pub const BAR4_SIZE: u64 = 16 * 1024;
pub const MSIX_VECTORS: u32 = 64;
pub const MSIX_TABLE_OFFSET: u32 = 0x0000;
pub const MSIX_PBA_OFFSET: u32 = 0x2000;

// 7.1.6 advanced receive descriptor write-back (status_error @8, length @12)
pub const RXD_STAT_DD: u32 = 1 << 0;
pub const RXD_STAT_EOP: u32 = 1 << 1;
// 7.2.3.2.4 advanced transmit data descriptor (cmd_type_len @8, olinfo_status @12)
pub const TXD_DTALEN_MASK: u32 = 0xffff;
pub const TXD_DTYP_SHIFT: u32 = 20;
pub const TXD_DTYP_CTXT: u32 = 0x2;
pub const TXD_CMD_EOP: u32 = 1 << 24;
pub const TXD_CMD_IFCS: u32 = 1 << 25;
pub const TXD_CMD_RS: u32 = 1 << 27;
pub const TXD_CMD_DEXT: u32 = 1 << 29;
pub const TXD_STAT_DD: u32 = 1 << 0;
pub const RXD_ERR_RXE: u32 = 1 << 29;
/// 7.1.5 legacy receive descriptor, errors byte: RXE (frame error) is bit 0; bit 7 is IPE.
pub const LEGACY_RXD_ERR_RXE: u32 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets checked against the literal numbers printed in the datasheet's register summary.
    #[test]
    fn offsets_match_datasheet_literals() {
        assert_eq!(rdt(0), 0x01018);
        assert_eq!(rdt(63), 0x01fd8);
        assert_eq!(tdt(127), 0x07fd8);
        assert_eq!(rxdctl(1), 0x01068);
        assert_eq!(srrctl(15), 0x0213c);
        assert_eq!(mpc(7), 0x03fbc);
        assert_eq!(ral(0), 0x0a200);
        assert_eq!(rah(1), 0x0a20c);
        assert_eq!(eitr(23), 0x0087c);
        assert_eq!(GORCH, 0x0408c);
        assert_eq!(LINKS, 0x042a4);
        assert_eq!(EEC, 0x10010);
        assert_eq!(MRQC, 0x05818);
        assert_eq!(reta(31), 0x05c7c);
        assert_eq!(rssrk(9), 0x05ca4);
        assert_eq!(RXCSUM, 0x05000);
    }
}
