//! X710 registers, admin-queue opcodes and structure layouts the driver uses, transcribed from the Intel
//! Ethernet Controller X710/XXV710/XL710 Datasheet (order no. 332464): the PF register summary (offsets
//! and fields), the "Admin Queue" chapter (descriptor, flags, return codes, command structures), the
//! "LAN HMC" chapter (segment/page descriptors, TX and RX queue context layouts) and the LAN
//! descriptor formats. Only what the code uses; datasheet names kept. The emulator keeps its own copy
//! (ARCHITECTURE: neither imports the other).

#![allow(missing_docs)] // datasheet names are the documentation

// PCI configuration space.
pub use crate::pci::port::{PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY};

// General, reset, identity.
pub const PFGEN_CTRL: u64 = 0x0009_2400;
pub const PFGEN_CTRL_PFSWR: u32 = 1 << 0;
pub const GLGEN_RSTAT: u64 = 0x000b_8188;
pub const GLGEN_RSTAT_DEVSTATE_MASK: u32 = 0x3;
pub const GLNVM_ULD: u64 = 0x000b_6008;
pub const GLNVM_ULD_CONF_CORE_DONE: u32 = 1 << 3;
pub const GLNVM_ULD_CONF_GLOBAL_DONE: u32 = 1 << 4;
pub const GLNVM_FLA: u64 = 0x000b_6108;
pub const GLNVM_FLA_LOCKED: u32 = 1 << 6;
pub const GLNVM_SRCTL: u64 = 0x000b_6110;
pub const GLNVM_SRCTL_ADDR_SHIFT: u32 = 14;
pub const GLNVM_SRCTL_START: u32 = 1 << 30;
pub const GLNVM_SRCTL_DONE: u32 = 1 << 31;
pub const GLNVM_SRDATA: u64 = 0x000b_6114;
pub const GLNVM_SRDATA_RDDATA_SHIFT: u32 = 16;
pub const SR_NVM_DEV_STARTER_VERSION: u32 = 0x18;
pub const GL_FWSTS: u64 = 0x0008_3048;
pub const GL_FWSTS_FWS1B_MASK: u32 = 0xff << 16;
pub const PFGEN_PORTNUM: u64 = 0x001c_0480;
pub const PFGEN_PORTNUM_MASK: u32 = 0x3;
pub const PF_FUNC_RID: u64 = 0x0009_c000;
pub const PF_FUNC_RID_FUNCTION_MASK: u32 = 0x7;
pub const PFLAN_QALLOC: u64 = 0x001c_0400;
pub const PFLAN_QALLOC_FIRSTQ_MASK: u32 = 0x7ff;
pub const PFLAN_QALLOC_LASTQ_SHIFT: u32 = 16;
pub const PFLAN_QALLOC_LASTQ_MASK: u32 = 0x7ff;
pub const PFLAN_QALLOC_VALID: u32 = 1 << 31;
pub const GLLAN_RCTL_0: u64 = 0x0012_a500;
pub const GLLAN_RCTL_0_PXE_MODE: u32 = 1 << 0;
pub const fn gllan_txpre_qdis(i: u32) -> u64 {
    0x000e_6500 + 4 * i as u64
}
pub const GLLAN_TXPRE_QDIS_QINDX_MASK: u32 = 0x7ff;
pub const GLLAN_TXPRE_QDIS_SET_QDIS: u32 = 1 << 30;
pub const GLLAN_TXPRE_QDIS_CLEAR_QDIS: u32 = 1 << 31;

// Interrupts.
pub const PFINT_ICR0: u64 = 0x0003_8780;
pub const PFINT_ICR0_ENA: u64 = 0x0003_8800;
/// PFINT_ICR0 / _ENA: an admin receive queue event (a link status event among them).
pub const PFINT_ICR0_ENA_ADMINQ: u32 = 1 << 30;
/// PFINT_DYN_CTL0: vector 0's interrupts on, its pending bit cleared.
pub const PFINT_DYN_CTL0: u64 = 0x0003_8480;
pub const PFINT_DYN_CTL0_INTENA: u32 = 1 << 0;
pub const PFINT_DYN_CTL0_CLEARPBA: u32 = 1 << 1;
/// QINT_RQCTL(q): receive queue q's interrupt cause: the MSI-X vector (bits 7:0), enabled (bit 30).
pub const fn qint_rqctl(q: u32) -> u64 {
    0x0003_a000 + 4 * q as u64
}
pub const QINT_RQCTL_CAUSE_ENA: u32 = 1 << 30;
/// PFINT_DYN_CTLN(v - 1): vector v's (v >= 1) interrupts on, its pending bit cleared.
pub const fn pfint_dyn_ctln(n: u32) -> u64 {
    0x0003_4800 + 4 * n as u64
}
pub const PFINT_DYN_CTLN_INTENA: u32 = 1 << 0;
pub const PFINT_DYN_CTLN_CLEARPBA: u32 = 1 << 1;

// Admin queue registers.
pub const PF_ATQBAL: u64 = 0x0008_0000;
pub const PF_ATQBAH: u64 = 0x0008_0100;
pub const PF_ATQLEN: u64 = 0x0008_0200;
pub const PF_ATQH: u64 = 0x0008_0300;
pub const PF_ATQT: u64 = 0x0008_0400;
pub const PF_ARQBAL: u64 = 0x0008_0080;
pub const PF_ARQBAH: u64 = 0x0008_0180;
pub const PF_ARQLEN: u64 = 0x0008_0280;
pub const PF_ARQH: u64 = 0x0008_0380;
pub const PF_ARQT: u64 = 0x0008_0480;
pub const AQLEN_ENABLE: u32 = 1 << 31;

// LAN HMC.
pub const GLHMC_LANTXOBJSZ: u64 = 0x000c_2004;
pub const GLHMC_LANQMAX: u64 = 0x000c_2008;
pub const GLHMC_LANRXOBJSZ: u64 = 0x000c_200c;
pub const GLHMC_OBJSZ_MASK: u32 = 0xf;
pub const fn glhmc_lantxbase(pf: u32) -> u64 {
    0x000c_6200 + 4 * pf as u64
}
pub const fn glhmc_lantxcnt(pf: u32) -> u64 {
    0x000c_6300 + 4 * pf as u64
}
pub const fn glhmc_lanrxbase(pf: u32) -> u64 {
    0x000c_6400 + 4 * pf as u64
}
pub const fn glhmc_lanrxcnt(pf: u32) -> u64 {
    0x000c_6500 + 4 * pf as u64
}
pub const PFHMC_SDCMD: u64 = 0x000c_0000;
pub const PFHMC_SDCMD_PMSDWR: u32 = 1 << 31;
pub const PFHMC_SDDATALOW: u64 = 0x000c_0100;
pub const PFHMC_SDDATALOW_PMSDVALID: u32 = 1 << 0;
/// PMSDTYPE: 0 = paged, 1 = direct.
pub const PFHMC_SDDATALOW_PMSDTYPE_DIRECT: u32 = 1 << 1;
pub const PFHMC_SDDATALOW_PMSDBPCOUNT_SHIFT: u32 = 2;
pub const PFHMC_SDDATAHIGH: u64 = 0x000c_0200;
pub const HMC_MAX_BP_COUNT: u32 = 512;
pub const HMC_PAGE: u64 = 4096;
/// Page descriptor valid bit.
pub const HMC_PD_VALID: u64 = 1;

// LAN queues.
pub const fn qtx_ena(q: u32) -> u64 {
    0x0010_0000 + 4 * q as u64
}
pub const fn qrx_ena(q: u32) -> u64 {
    0x0012_0000 + 4 * q as u64
}
pub const QENA_REQ: u32 = 1 << 0;
pub const QENA_STAT: u32 = 1 << 2;
pub const fn qtx_ctl(q: u32) -> u64 {
    0x0010_4000 + 4 * q as u64
}
pub const QTX_CTL_PF_QUEUE: u32 = 0x2;
pub const QTX_CTL_PF_INDX_SHIFT: u32 = 2;
pub const fn qtx_tail(q: u32) -> u64 {
    0x0010_8000 + 4 * q as u64
}
pub const fn qrx_tail(q: u32) -> u64 {
    0x0012_8000 + 4 * q as u64
}

// Port statistics: 48-bit L/H pairs, free-running (p = port 0..3).
pub const fn glprt_gorcl(p: u32) -> u64 {
    0x0030_0000 + 8 * p as u64
}
pub const fn glprt_uprcl(p: u32) -> u64 {
    0x0030_05a0 + 8 * p as u64
}
pub const fn glprt_mprcl(p: u32) -> u64 {
    0x0030_05c0 + 8 * p as u64
}
pub const fn glprt_bprcl(p: u32) -> u64 {
    0x0030_05e0 + 8 * p as u64
}
/// 32-bit: receive discards.
pub const fn glprt_rdpc(p: u32) -> u64 {
    0x0030_0600 + 8 * p as u64
}
pub const fn glprt_gotcl(p: u32) -> u64 {
    0x0030_0680 + 8 * p as u64
}
pub const fn glprt_uptcl(p: u32) -> u64 {
    0x0030_09c0 + 8 * p as u64
}
pub const fn glprt_mptcl(p: u32) -> u64 {
    0x0030_09e0 + 8 * p as u64
}
pub const fn glprt_bptcl(p: u32) -> u64 {
    0x0030_0a00 + 8 * p as u64
}

// Admin queue descriptor (32 bytes) and flags.
pub const AQ_DESC_LEN: u64 = 32;
pub const AQ_FLAG_DD: u16 = 1 << 0;
pub const AQ_FLAG_CMP: u16 = 1 << 1;
pub const AQ_FLAG_ERR: u16 = 1 << 2;
pub const AQ_FLAG_LB: u16 = 1 << 9;
pub const AQ_FLAG_RD: u16 = 1 << 10;
pub const AQ_FLAG_BUF: u16 = 1 << 12;
pub const AQ_FLAG_SI: u16 = 1 << 13;
pub const AQ_LARGE_BUF: usize = 512;
pub const AQ_RC_ENOENT: u16 = 2;
pub const AQ_RC_ENOMEM: u16 = 9;

// Admin queue opcodes.
pub const AQC_GET_VERSION: u16 = 0x0001;
pub const AQC_DRIVER_VERSION: u16 = 0x0002;
pub const AQC_QUEUE_SHUTDOWN: u16 = 0x0003;
pub const AQC_REQUEST_RESOURCE: u16 = 0x0008;
pub const AQC_RELEASE_RESOURCE: u16 = 0x0009;
pub const AQC_LIST_FUNC_CAPS: u16 = 0x000a;
pub const AQC_MAC_ADDRESS_READ: u16 = 0x0107;
pub const AQC_CLEAR_PXE_MODE: u16 = 0x0110;
pub const AQC_GET_SWITCH_CONFIG: u16 = 0x0200;
pub const AQC_UPDATE_VSI_PARAMS: u16 = 0x0211;
pub const AQC_GET_VSI_PARAMS: u16 = 0x0212;
pub const AQC_ADD_MACVLAN: u16 = 0x0250;
pub const AQC_REMOVE_MACVLAN: u16 = 0x0251;
pub const AQC_SET_VSI_PROMISC: u16 = 0x0254;
pub const AQC_GET_PHY_ABILITIES: u16 = 0x0600;
pub const AQC_SET_MAC_CONFIG: u16 = 0x0603;
pub const AQC_GET_LINK_STATUS: u16 = 0x0607;
pub const AQC_SET_PHY_INT_MASK: u16 = 0x0613;
pub const AQC_SET_LB_MODES: u16 = 0x0618;
pub const AQC_LLDP_STOP: u16 = 0x0a05;

// Command structures.
pub const RESOURCE_NVM: u16 = 1;
pub const RESOURCE_READ: u16 = 1;
pub const CAP_ELEM_LEN: usize = 32;
pub const CAP_ID_RSS: u16 = 0x0040;
pub const CAP_ID_RXQ: u16 = 0x0041;
pub const CAP_ID_TXQ: u16 = 0x0042;
pub const CAP_ID_MSIX: u16 = 0x0043;
pub const MAC_ADDRESS_READ_LEN: usize = 24;
pub const LAN_ADDR_VALID: u16 = 0x10;
pub const SW_HDR_LEN: usize = 16;
pub const SW_ELEM_LEN: usize = 16;
pub const SW_ELEM_TYPE_VSI: u8 = 19;
pub const VSI_PROPS_LEN: usize = 128;
pub const VSI_PROP_QUEUE_MAP_VALID: u16 = 0x0040;
pub const VSI_OFF_MAPPING_FLAGS: usize = 28;
pub const VSI_OFF_QUEUE_MAPPING: usize = 30;
pub const VSI_OFF_TC_MAPPING: usize = 62;
pub const VSI_OFF_QS_HANDLE: usize = 96;
pub const VSI_QUE_MAP_CONTIG: u16 = 0x0;
pub const VSI_TC_QUE_NUMBER_SHIFT: u32 = 9;
pub const MACVLAN_ELEM_LEN: usize = 16;
pub const MACVLAN_CMD_SEID_VALID: u16 = 0x8000;
pub const MACVLAN_ADD_PERFECT_MATCH: u16 = 0x0001;
pub const MACVLAN_ADD_IGNORE_VLAN: u16 = 0x0004;
pub const MACVLAN_DEL_PERFECT_MATCH: u8 = 0x01;
pub const MACVLAN_DEL_IGNORE_VLAN: u8 = 0x08;
pub const PROMISC_UNICAST: u16 = 0x01;
pub const PROMISC_MULTICAST: u16 = 0x02;
pub const PROMISC_BROADCAST: u16 = 0x04;
pub const PHY_ABILITIES_LEN: usize = 0x218;
pub const LSE_ENABLE: u16 = 0x3;
pub const LINK_UP_FUNCTION: u8 = 0x01;
pub const EVENT_LINK_UPDOWN: u16 = 0x0002;
pub const LINK_SPEED_100MB: u8 = 1 << 1;
pub const LINK_SPEED_1GB: u8 = 1 << 2;
pub const LINK_SPEED_10GB: u8 = 1 << 3;
pub const LINK_SPEED_40GB: u8 = 1 << 4;
pub const LINK_SPEED_20GB: u8 = 1 << 5;
pub const LINK_SPEED_25GB: u8 = 1 << 6;

// TX queue context (128 bytes): (lsb, width).
pub const TXC_NEW_CONTEXT: (usize, usize) = (30, 1);
pub const TXC_BASE: (usize, usize) = (32, 57);
pub const TXC_QLEN: (usize, usize) = (161, 13);
pub const TXC_RDYLIST: (usize, usize) = (980, 10);
pub const TX_CTX_LEN: usize = 128;
// RX queue context (32 bytes).
pub const RXC_BASE: (usize, usize) = (32, 57);
pub const RXC_QLEN: (usize, usize) = (89, 13);
pub const RXC_DBUFF: (usize, usize) = (102, 7);
pub const RXC_DSIZE: (usize, usize) = (116, 1);
pub const RXC_CRCSTRIP: (usize, usize) = (117, 1);
pub const RXC_L2TSEL: (usize, usize) = (119, 1);
pub const RXC_SHOWIV: (usize, usize) = (127, 1);
pub const RXC_RXMAX: (usize, usize) = (174, 14);
pub const RXC_PREFENA: (usize, usize) = (201, 1);
pub const RX_CTX_LEN: usize = 32;
pub const CTX_UNIT: u64 = 128;

// Transmit data descriptor (16 bytes).
pub const TXD_DTYPE_DATA: u64 = 0x0;
pub const TXD_DTYPE_MASK: u64 = 0xf;
pub const TXD_DTYPE_DESC_DONE: u64 = 0xf;
pub const TXD_CMD_SHIFT: u32 = 4;
pub const TXD_CMD_EOP: u64 = 0x1;
pub const TXD_CMD_RS: u64 = 0x2;
pub const TXD_CMD_ICRC: u64 = 0x4;
pub const TXD_BSZ_SHIFT: u32 = 34;
// Receive descriptor write-back (32-byte format), qword1 @8.
pub const RXD_STATUS_DD: u64 = 1 << 0;
pub const RXD_STATUS_EOF: u64 = 1 << 1;
pub const RXD_ERROR_SHIFT: u32 = 19;
pub const RXD_ERROR_MASK: u64 = 0xff;
pub const RXD_LEN_PBUF_SHIFT: u32 = 38;
pub const RXD_LEN_PBUF_MASK: u64 = 0x3fff;

// Receive-side scaling (datasheet 7.1.10, PF registers).
/// PF queue filter control 0: HASHLUTSIZE (bit 16) selects a 512-entry lookup table.
pub const PFQF_CTL_0: u64 = 0x001c_0ac0;
pub const PFQF_CTL_0_HASHLUTSIZE_512: u32 = 1 << 16;
/// Hash key: 13 registers (52 bytes), key byte 4n+k in bits 8k+7:8k of PFQF_HKEY(n).
pub const fn pfqf_hkey(n: u32) -> u64 {
    0x0024_4800 + 128 * n as u64
}
pub const RSS_KEY_LEN: usize = 52;
/// Lookup table: 128 registers of four one-byte entries (6-bit VSI queue indices).
pub const fn pfqf_hlut(n: u32) -> u64 {
    0x0024_0000 + 128 * n as u64
}
pub const LUT_SIZE: u16 = 512;
/// Hash enables: a 64-bit bitmap of packet classifier types over two registers.
pub const fn pfqf_hena(n: u32) -> u64 {
    0x0024_5900 + 128 * n as u64
}
/// Packet classifier types (bits of PFQF_HENA).
pub const PCTYPE_NONF_IPV4_UDP: u32 = 31;
pub const PCTYPE_NONF_IPV4_TCP: u32 = 33;
pub const PCTYPE_NONF_IPV4_SCTP: u32 = 34;
pub const PCTYPE_NONF_IPV4_OTHER: u32 = 35;
pub const PCTYPE_FRAG_IPV4: u32 = 36;
pub const PCTYPE_NONF_IPV6_UDP: u32 = 41;
pub const PCTYPE_NONF_IPV6_TCP: u32 = 43;
pub const PCTYPE_NONF_IPV6_SCTP: u32 = 44;
pub const PCTYPE_NONF_IPV6_OTHER: u32 = 45;
pub const PCTYPE_FRAG_IPV6: u32 = 46;
pub const PCTYPE_L2_PAYLOAD: u32 = 63;
/// RX write-back qword1 FLTSTAT (bits 13:12): 3 = qword0 bits 63:32 hold the RSS hash.
pub const RXD_FLTSTAT_SHIFT: u32 = 12;
pub const RXD_FLTSTAT_MASK: u64 = 0x3;
pub const RXD_FLTSTAT_RSS_HASH: u64 = 0x3;

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets against the literal numbers of the datasheet's register summary.
    #[test]
    fn offsets_match_datasheet_literals() {
        assert_eq!(
            (pfqf_hkey(12), pfqf_hlut(127), pfqf_hena(1), PFQF_CTL_0),
            (0x0024_4e00, 0x0024_3f80, 0x0024_5980, 0x001c_0ac0)
        );
        assert_eq!(PF_ATQBAH, 0x00080100);
        assert_eq!(PF_ARQT, 0x00080480);
        assert_eq!(qtx_tail(3), 0x0010800c);
        assert_eq!(qrx_tail(2), 0x00128008);
        assert_eq!(qtx_ena(1), 0x00100004);
        assert_eq!(qtx_ctl(0), 0x00104000);
        assert_eq!(glhmc_lantxcnt(2), 0x000c6308);
        assert_eq!(PFHMC_SDDATALOW, 0x000c0100);
        assert_eq!(glprt_bptcl(3), 0x00300a18);
        assert_eq!(GLNVM_SRCTL, 0x000b6110);
        assert_eq!(gllan_txpre_qdis(1), 0x000e6504);
    }
}
