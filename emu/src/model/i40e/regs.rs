//! X710 registers, admin-queue opcodes and structure offsets the emulator implements, transcribed from
//! the Intel Ethernet Controller X710/XXV710/XL710 Datasheet (order no. 332464): the PF register summary
//! for offsets and fields, the "Admin Queue" chapter for descriptors, return codes and command
//! structures, the "LAN HMC" chapter for segment descriptors and the queue-context bit layouts, and the
//! LAN receive and transmit descriptor formats. Section numbers differ between datasheet revisions, so
//! sections are named, not numbered. Written for the emulator only; the driver keeps its own copy
//! (ARCHITECTURE: neither side imports the other).

#![allow(missing_docs)] // datasheet names are the documentation

// General / reset.
pub const PFGEN_CTRL: u32 = 0x0009_2400;
pub const PFGEN_CTRL_PFSWR: u32 = 1 << 0;
pub const GLGEN_RSTAT: u32 = 0x000b_8188;
pub const GLGEN_RSTCTL: u32 = 0x000b_8180;
pub const PFGEN_PORTNUM: u32 = 0x001c_0480;
pub const PF_FUNC_RID: u32 = 0x0009_c000;
pub const GL_FWSTS: u32 = 0x0008_3048;

// PCIe.
pub const GLPCI_CNF2: u32 = 0x000b_e494;
pub const GLPCI_CNF2_MSI_X_PF_N_SHIFT: u32 = 2;
pub const GLPCI_CAPSUP: u32 = 0x000b_e4a8;
pub const PFLAN_QALLOC: u32 = 0x001c_0400;
pub const PFLAN_QALLOC_LASTQ_SHIFT: u32 = 16;
pub const PFLAN_QALLOC_VALID: u32 = 1 << 31;
pub const PF_VT_PFALLOC: u32 = 0x001c_0500;

// NVM / shadow RAM.
pub const GLNVM_ULD: u32 = 0x000b_6008;
/// PCIR, PCIRTL, LCB, CORE, GLOBAL, POR done (bits 0..5).
pub const GLNVM_ULD_ALL_DONE: u32 = 0x3f;
pub const GLNVM_ULD_CONF_CORE_DONE: u32 = 1 << 3;
pub const GLNVM_ULD_CONF_GLOBAL_DONE: u32 = 1 << 4;
pub const GLNVM_GENS: u32 = 0x000b_6100;
pub const GLNVM_GENS_NVM_PRES: u32 = 1 << 0;
pub const GLNVM_GENS_SR_SIZE_SHIFT: u32 = 5;
pub const GLNVM_FLA: u32 = 0x000b_6108;
pub const GLNVM_FLA_LOCKED: u32 = 1 << 6;
pub const GLNVM_SRCTL: u32 = 0x000b_6110;
pub const GLNVM_SRCTL_ADDR_SHIFT: u32 = 14;
pub const GLNVM_SRCTL_ADDR_MASK: u32 = 0x7fff;
pub const GLNVM_SRCTL_WRITE: u32 = 1 << 29;
pub const GLNVM_SRCTL_START: u32 = 1 << 30;
pub const GLNVM_SRCTL_DONE: u32 = 1 << 31;
pub const GLNVM_SRDATA: u32 = 0x000b_6114;
pub const GLNVM_SRDATA_RDDATA_SHIFT: u32 = 16;
/// Shadow-RAM words the drivers read ("NVM map").
pub const SR_NVM_CONTROL_WORD: u32 = 0x00;
pub const SR_BOOT_CONFIG_PTR: u32 = 0x17;
pub const SR_NVM_DEV_STARTER_VERSION: u32 = 0x18;
pub const SR_NVM_EETRACK_LO: u32 = 0x2d;
pub const SR_NVM_EETRACK_HI: u32 = 0x2e;

// LAN receive control.
pub const GLLAN_RCTL_0: u32 = 0x0012_a500;
pub const GLLAN_RCTL_0_PXE_MODE: u32 = 1 << 0;
pub const GLLAN_TXPRE_QDIS_COUNT: u32 = 12;
pub const fn gllan_txpre_qdis(i: u32) -> u32 {
    0x000e_6500 + 4 * i
}

// Interrupts.
pub const PFINT_ICR0: u32 = 0x0003_8780;
pub const PFINT_ICR0_ENA: u32 = 0x0003_8800;
pub const PFINT_ICR0_LINK_STAT_CHANGE: u32 = 1 << 25;
pub const PFINT_ICR0_ADMINQ: u32 = 1 << 30;
pub const PFINT_DYN_CTL0: u32 = 0x0003_8480;
pub const PFINT_LNKLST0: u32 = 0x0003_8500;
pub const fn qint_rqctl(q: u32) -> u32 {
    0x0003_a000 + 4 * q
}
pub const fn qint_tqctl(q: u32) -> u32 {
    0x0003_c000 + 4 * q
}
pub const QINT_CTL_MSIX_INDX_MASK: u32 = 0xff;
pub const QINT_CTL_CAUSE_ENA: u32 = 1 << 30;
/// `QINT_[RT]QCTL.MSIX0_INDX` (bits 15:13): the PFINT_ICR0 queue bit a cause on vector 0 sets.
pub const QINT_CTL_MSIX0_INDX_SHIFT: u32 = 13;
/// PFINT_ICR0.INTEVENT: a vector-0 interrupt event happened.
pub const PFINT_ICR0_INTEVENT: u32 = 1 << 0;
/// PFINT_ICR0.QUEUE_0..QUEUE_7 (bits 8:1), set by queue causes routed to vector 0.
pub const PFINT_ICR0_QUEUE_SHIFT: u32 = 1;
/// All of PFINT_ICR0's queue bits.
pub const PFINT_ICR0_QUEUES: u32 = 0xff << PFINT_ICR0_QUEUE_SHIFT;

// Admin queue registers (PF).
pub const PF_ATQBAL: u32 = 0x0008_0000;
pub const PF_ATQBAH: u32 = 0x0008_0100;
pub const PF_ATQLEN: u32 = 0x0008_0200;
pub const PF_ATQH: u32 = 0x0008_0300;
pub const PF_ATQT: u32 = 0x0008_0400;
pub const PF_ARQBAL: u32 = 0x0008_0080;
pub const PF_ARQBAH: u32 = 0x0008_0180;
pub const PF_ARQLEN: u32 = 0x0008_0280;
pub const PF_ARQH: u32 = 0x0008_0380;
pub const PF_ARQT: u32 = 0x0008_0480;
pub const AQLEN_LEN_MASK: u32 = 0x3ff;
pub const AQLEN_OVFL: u32 = 1 << 29;
pub const AQLEN_ENABLE: u32 = 1 << 31;
pub const AQ_PTR_MASK: u32 = 0x3ff;

// LAN HMC.
pub const GLHMC_LANTXOBJSZ: u32 = 0x000c_2004;
pub const GLHMC_LANQMAX: u32 = 0x000c_2008;
pub const GLHMC_LANRXOBJSZ: u32 = 0x000c_200c;
pub const fn glhmc_lantxbase(pf: u32) -> u32 {
    0x000c_6200 + 4 * pf
}
pub const fn glhmc_lantxcnt(pf: u32) -> u32 {
    0x000c_6300 + 4 * pf
}
pub const fn glhmc_lanrxbase(pf: u32) -> u32 {
    0x000c_6400 + 4 * pf
}
pub const fn glhmc_lanrxcnt(pf: u32) -> u32 {
    0x000c_6500 + 4 * pf
}
pub const fn glhmc_sdpart(pf: u32) -> u32 {
    0x000c_0800 + 4 * pf
}
pub const GLHMC_BASE_MASK: u32 = 0x00ff_ffff;
pub const GLHMC_CNT_MASK: u32 = 0x7ff;
pub const PFHMC_SDCMD: u32 = 0x000c_0000;
pub const PFHMC_SDCMD_IDX_MASK: u32 = 0xfff;
pub const PFHMC_SDCMD_WR: u32 = 1 << 31;
pub const PFHMC_SDDATALOW: u32 = 0x000c_0100;
pub const PFHMC_SDDATALOW_VALID: u32 = 1 << 0;
pub const PFHMC_SDDATALOW_TYPE_DIRECT: u32 = 1 << 1;
pub const PFHMC_SDDATALOW_BPCOUNT_SHIFT: u32 = 2;
pub const PFHMC_SDDATALOW_BPCOUNT_MASK: u32 = 0x3ff;
pub const PFHMC_SDDATALOW_ADDR_MASK: u32 = 0xffff_f000;
pub const PFHMC_SDDATAHIGH: u32 = 0x000c_0200;
pub const PFHMC_PDINV: u32 = 0x000c_0300;
pub const PFHMC_ERRORINFO: u32 = 0x000c_0400;
pub const PFHMC_ERRORDATA: u32 = 0x000c_0500;
/// PF queue filter control 0 (hash filter sizes, enables) and 2: outside the PFQF_/PRTQF_ block.
pub const PFQF_CTL_0: u32 = 0x001c_0ac0;
/// PFQF_CTL_0.HASHLUTSIZE: the PF's hash lookup table has 512 entries (else 128).
pub const PFQF_CTL_0_HASHLUTSIZE_512: u32 = 1 << 16;
/// RSS hash key: 13 registers, 52 bytes (40 standard, 12 extended); key byte 4n+k in bits
/// 8k+7:8k of PFQF_HKEY(n).
pub const fn pfqf_hkey(n: u32) -> u32 {
    0x0024_4800 + 128 * n
}
pub const PFQF_HKEY_REGS: u32 = 13;
/// RSS lookup table: 128 registers of four one-byte entries (6 bits used): entry 4n+k in byte k.
pub const fn pfqf_hlut(n: u32) -> u32 {
    0x0024_0000 + 128 * n
}
pub const PFQF_HLUT_REGS: u32 = 128;
pub const HLUT_ENTRY_MASK: u8 = 0x3f;
/// RSS hash enables: two registers, a 64-bit bitmap of packet classifier types (PCTYPEs).
pub const fn pfqf_hena(n: u32) -> u32 {
    0x0024_5900 + 128 * n
}
/// Packet classifier types (the bits of PFQF_HENA).
pub const PCTYPE_IPV4_UDP: u32 = 31;
pub const PCTYPE_IPV4_TCP: u32 = 33;
pub const PCTYPE_IPV4_SCTP: u32 = 34;
pub const PCTYPE_IPV4_OTHER: u32 = 35;
pub const PCTYPE_FRAG_IPV4: u32 = 36;
pub const PCTYPE_IPV6_UDP: u32 = 41;
pub const PCTYPE_IPV6_TCP: u32 = 43;
pub const PCTYPE_IPV6_SCTP: u32 = 44;
pub const PCTYPE_IPV6_OTHER: u32 = 45;
pub const PCTYPE_FRAG_IPV6: u32 = 46;
/// Frames that are not IP (hashed on their last ethertype, see `rss::rss_pick_l2`).
pub const PCTYPE_L2_PAYLOAD: u32 = 63;
/// Hardware packet types in the RX write-back's PTYPE field (qword1 bits 37:30).
/// L2, no IP (L2 MAC PAY2).
pub const PTYPE_L2: u64 = 1;
/// ARP (L2 ARP).
pub const PTYPE_L2_ARP: u64 = 11;
pub const PTYPE_IPV4_FRAG: u64 = 22;
pub const PTYPE_IPV4_OTHER: u64 = 23;
pub const PTYPE_IPV4_UDP: u64 = 24;
pub const PTYPE_IPV4_TCP: u64 = 26;
pub const PTYPE_IPV4_SCTP: u64 = 27;
pub const PTYPE_IPV6_FRAG: u64 = 88;
pub const PTYPE_IPV6_OTHER: u64 = 89;
pub const PTYPE_IPV6_UDP: u64 = 90;
pub const PTYPE_IPV6_TCP: u64 = 92;
pub const PTYPE_IPV6_SCTP: u64 = 93;
/// RX write-back qword1 FLTSTAT (bits 13:12): 3 = the RSS hash is in qword0 bits 63:32.
pub const RXD_FLTSTAT_SHIFT: u32 = 12;
pub const RXD_FLTSTAT_RSS: u64 = 3;
/// Admin queue: RSS key and lookup table (VSI number in params 0..2 with VALID bit 15; buffer:
/// 40-byte key + 12 extended bytes; LUT flags bit 0: the PF's table, else the VSI's).
pub const AQC_SET_RSS_KEY: u16 = 0x0b02;
pub const AQC_SET_RSS_LUT: u16 = 0x0b03;
pub const AQC_GET_RSS_KEY: u16 = 0x0b04;
pub const AQC_GET_RSS_LUT: u16 = 0x0b05;
pub const RSS_VSI_VALID: u16 = 1 << 15;
pub const RSS_VSI_ID_MASK: u16 = 0x3ff;
pub const RSS_LUT_TABLE_TYPE_PF: u16 = 1 << 0;
pub const RSS_KEY_LEN: usize = 52;
pub const PFQF_CTL_2: u32 = 0x0027_0300;
/// Segment descriptors the model keeps (PMSDIDX is 12 bits).
pub const HMC_SD_COUNT: usize = 4096;
/// One segment: 2 MiB (512 backing pages of 4 KiB).
pub const HMC_SD_SIZE: u64 = 2 * 1024 * 1024;
pub const HMC_PAGE: u64 = 4096;
/// log2 object sizes (`GLHMC_LAN[TR]XOBJSZ`): 128-byte TX, 32-byte RX contexts.
pub const LANTXOBJSZ_LOG2: u32 = 7;
pub const LANRXOBJSZ_LOG2: u32 = 5;
/// Queues the device has (GLHMC_LANQMAX) and the PF owns (PFLAN_QALLOC: 0..=63).
pub const LANQMAX: u32 = 1536;
pub const PF_QUEUES: u32 = 64;

// LAN transmit / receive queues.
pub const fn qtx_ena(q: u32) -> u32 {
    0x0010_0000 + 4 * q
}
pub const fn qrx_ena(q: u32) -> u32 {
    0x0012_0000 + 4 * q
}
pub const QENA_REQ: u32 = 1 << 0;
pub const QENA_FAST_QDIS: u32 = 1 << 1;
pub const QENA_STAT: u32 = 1 << 2;
pub const fn qtx_ctl(q: u32) -> u32 {
    0x0010_4000 + 4 * q
}
pub const fn qtx_tail(q: u32) -> u32 {
    0x0010_8000 + 4 * q
}
pub const fn qrx_tail(q: u32) -> u32 {
    0x0012_8000 + 4 * q
}
pub const fn qtx_head(q: u32) -> u32 {
    0x000e_4000 + 4 * q
}
pub const TAIL_MASK: u32 = 0x1fff;

// Port statistics (48-bit L/H pairs unless noted; p = port 0..3).
pub const fn glprt_gorcl(p: u32) -> u32 {
    0x0030_0000 + 8 * p
}
pub const fn glprt_crcerrs(p: u32) -> u32 {
    0x0030_0080 + 8 * p
}
pub const fn glprt_roc(p: u32) -> u32 {
    0x0030_0120 + 8 * p
}
pub const fn glprt_uprcl(p: u32) -> u32 {
    0x0030_05a0 + 8 * p
}
pub const fn glprt_mprcl(p: u32) -> u32 {
    0x0030_05c0 + 8 * p
}
pub const fn glprt_bprcl(p: u32) -> u32 {
    0x0030_05e0 + 8 * p
}
/// 32-bit: receive discards (no descriptor).
pub const fn glprt_rdpc(p: u32) -> u32 {
    0x0030_0600 + 8 * p
}
pub const fn glprt_gotcl(p: u32) -> u32 {
    0x0030_0680 + 8 * p
}
pub const fn glprt_uptcl(p: u32) -> u32 {
    0x0030_09c0 + 8 * p
}
pub const fn glprt_mptcl(p: u32) -> u32 {
    0x0030_09e0 + 8 * p
}
pub const fn glprt_bptcl(p: u32) -> u32 {
    0x0030_0a00 + 8 * p
}
/// 32-bit: transmit frames dropped because the link was down.
pub const fn glprt_tdold(p: u32) -> u32 {
    0x0030_0a20 + 8 * p
}

// Doorbell pages shared with the driver (sparse mmap): QTX_TAIL(0..1535), QRX_TAIL(0..1535).
pub const TX_TAIL_PAGES: (u64, u64) = (0x10_8000, 0x2000);
pub const RX_TAIL_PAGES: (u64, u64) = (0x12_8000, 0x2000);

// BARs (BAR0 64-bit 8 MiB, BAR3 MSI-X 32 KiB).
pub const BAR0_SIZE: u64 = 8 * 1024 * 1024;
pub const BAR3_SIZE: u64 = 32 * 1024;
pub const MSIX_VECTORS: u32 = 64;
pub const MSIX_TABLE_OFFSET: u32 = 0x0000;
pub const MSIX_PBA_OFFSET: u32 = 0x1000;

// Admin queue descriptor (32 bytes): flags @0, opcode @2, datalen @4, retval @6, cookies @8/@12,
// params @16 (addr_high @24, addr_low @28 when a buffer is attached).
pub const AQ_DESC_LEN: u64 = 32;
pub const AQ_FLAG_DD: u16 = 1 << 0;
pub const AQ_FLAG_CMP: u16 = 1 << 1;
pub const AQ_FLAG_ERR: u16 = 1 << 2;
pub const AQ_FLAG_LB: u16 = 1 << 9;
pub const AQ_FLAG_RD: u16 = 1 << 10;
pub const AQ_FLAG_BUF: u16 = 1 << 12;
pub const AQ_FLAG_SI: u16 = 1 << 13;
/// Largest buffer without LB; largest buffer at all.
pub const AQ_SMALL_BUF: usize = 512;
pub const AQ_MAX_BUF: usize = 4096;

// Admin queue return codes.
pub const AQ_RC_OK: u16 = 0;
pub const AQ_RC_EPERM: u16 = 1;
pub const AQ_RC_ENOENT: u16 = 2;
pub const AQ_RC_EIO: u16 = 5;
pub const AQ_RC_ENOMEM: u16 = 9;
pub const AQ_RC_EINVAL: u16 = 14;
pub const AQ_RC_ENOSPC: u16 = 16;
pub const AQ_RC_ENOSYS: u16 = 17;
pub const AQ_RC_BAD_ADDR: u16 = 20;

// Admin queue opcodes.
pub const AQC_GET_VERSION: u16 = 0x0001;
pub const AQC_DRIVER_VERSION: u16 = 0x0002;
pub const AQC_QUEUE_SHUTDOWN: u16 = 0x0003;
pub const AQC_REQUEST_RESOURCE: u16 = 0x0008;
pub const AQC_RELEASE_RESOURCE: u16 = 0x0009;
pub const AQC_LIST_FUNC_CAPS: u16 = 0x000a;
pub const AQC_LIST_DEV_CAPS: u16 = 0x000b;
pub const AQC_MAC_ADDRESS_READ: u16 = 0x0107;
pub const AQC_CLEAR_PXE_MODE: u16 = 0x0110;
pub const AQC_GET_SWITCH_CONFIG: u16 = 0x0200;
pub const AQC_SET_SWITCH_CONFIG: u16 = 0x0205;
pub const AQC_UPDATE_VSI_PARAMS: u16 = 0x0211;
pub const AQC_GET_VSI_PARAMS: u16 = 0x0212;
pub const AQC_ADD_MACVLAN: u16 = 0x0250;
pub const AQC_REMOVE_MACVLAN: u16 = 0x0251;
pub const AQC_SET_VSI_PROMISC: u16 = 0x0254;
pub const AQC_ADD_CONTROL_PACKET_FILTER: u16 = 0x025a;
pub const AQC_CONFIGURE_VSI_TC_BW: u16 = 0x0407;
pub const AQC_QUERY_VSI_BW_CONFIG: u16 = 0x0408;
pub const AQC_QUERY_VSI_ETS_SLA_CONFIG: u16 = 0x040a;
pub const AQC_GET_PHY_ABILITIES: u16 = 0x0600;
pub const AQC_SET_PHY_CONFIG: u16 = 0x0601;
pub const AQC_SET_MAC_CONFIG: u16 = 0x0603;
pub const AQC_SET_LINK_RESTART_AN: u16 = 0x0605;
pub const AQC_GET_LINK_STATUS: u16 = 0x0607;
pub const AQC_SET_PHY_INT_MASK: u16 = 0x0613;
pub const AQC_SET_LB_MODES: u16 = 0x0618;
pub const AQC_LLDP_GET_MIB: u16 = 0x0a00;
pub const AQC_LLDP_STOP: u16 = 0x0a05;
pub const AQC_LLDP_START: u16 = 0x0a06;
pub const AQC_GET_CEE_DCB_CFG: u16 = 0x0a07;

// list capabilities: element ids (32-byte elements).
pub const CAP_ID_SWITCH_MODE: u16 = 0x0001;
pub const CAP_ID_FUNCTIONS_VALID: u16 = 0x0005;
pub const CAP_ID_VSI: u16 = 0x0017;
pub const CAP_ID_RSS: u16 = 0x0040;
pub const CAP_ID_RXQ: u16 = 0x0041;
pub const CAP_ID_TXQ: u16 = 0x0042;
pub const CAP_ID_MSIX: u16 = 0x0043;
pub const CAP_ELEM_LEN: usize = 32;
pub const RSS_TABLE_SIZE: u32 = 512;
pub const RSS_TABLE_ENTRY_WIDTH: u32 = 6;

// switch configuration elements.
pub const SW_ELEM_TYPE_MAC: u8 = 1;
pub const SW_ELEM_TYPE_PF: u8 = 2;
pub const SW_ELEM_TYPE_VSI: u8 = 19;
pub const SW_HDR_LEN: usize = 16;
pub const SW_ELEM_LEN: usize = 16;
pub const CONN_TYPE_REGULAR: u8 = 1;

// VSI properties (128 bytes): section valid bits and byte offsets.
pub const VSI_PROPS_LEN: usize = 128;
pub const VSI_PROP_SWITCH_VALID: u16 = 0x0001;
pub const VSI_PROP_SECURITY_VALID: u16 = 0x0002;
pub const VSI_PROP_VLAN_VALID: u16 = 0x0004;
pub const VSI_PROP_CAS_PV_VALID: u16 = 0x0008;
pub const VSI_PROP_INGRESS_UP_VALID: u16 = 0x0010;
pub const VSI_PROP_EGRESS_UP_VALID: u16 = 0x0020;
pub const VSI_PROP_QUEUE_MAP_VALID: u16 = 0x0040;
pub const VSI_PROP_QUEUE_OPT_VALID: u16 = 0x0080;
pub const VSI_PROP_OUTER_UP_VALID: u16 = 0x0100;
pub const VSI_PROP_SCHED_VALID: u16 = 0x0200;
pub const VSI_OFF_MAPPING_FLAGS: usize = 28;
pub const VSI_OFF_QUEUE_MAPPING: usize = 30;
pub const VSI_OFF_TC_MAPPING: usize = 62;
pub const VSI_OFF_QS_HANDLE: usize = 96;
pub const VSI_OFF_STAT_COUNTER_IDX: usize = 112;
pub const VSI_QUE_MAP_NONCONTIG: u16 = 0x1;
pub const VSI_QUEUE_MASK: u16 = 0x7ff;
/// Which bytes of the properties each valid bit covers (the first 96 bytes are written by software).
pub const VSI_SECTIONS: [(u16, usize, usize); 10] = [
    (VSI_PROP_SWITCH_VALID, 2, 6), // switch_id and 2 reserved bytes
    (VSI_PROP_SECURITY_VALID, 6, 8),
    (VSI_PROP_VLAN_VALID, 8, 16),
    (VSI_PROP_INGRESS_UP_VALID, 16, 20),
    (VSI_PROP_EGRESS_UP_VALID, 20, 24),
    (VSI_PROP_CAS_PV_VALID, 24, 28),
    (VSI_PROP_QUEUE_MAP_VALID, 28, 78),
    (VSI_PROP_QUEUE_OPT_VALID, 78, 82),
    (VSI_PROP_SCHED_VALID, 82, 84),
    (VSI_PROP_OUTER_UP_VALID, 84, 88),
];

// MAC/VLAN filters (16-byte elements).
pub const MACVLAN_ELEM_LEN: usize = 16;
pub const MACVLAN_CMD_SEID_VALID: u16 = 0x8000;
pub const MACVLAN_CMD_SEID_MASK: u16 = 0x3ff;
pub const MACVLAN_ADD_IGNORE_VLAN: u16 = 0x0004;
pub const MACVLAN_DEL_IGNORE_VLAN: u8 = 0x08;
pub const MM_PERFECT_MATCH: u8 = 0x01;
pub const MM_ERR_NO_RES: u8 = 0xff;
pub const REMOVE_MACVLAN_FAIL: u8 = 0xff;
/// Perfect-match filters one VSI may hold in the model.
pub const MAX_MAC_FILTERS: usize = 64;

// promiscuous flags.
pub const PROMISC_UNICAST: u16 = 0x01;
pub const PROMISC_MULTICAST: u16 = 0x02;
pub const PROMISC_BROADCAST: u16 = 0x04;
pub const PROMISC_VLAN: u16 = 0x10;
pub const PROMISC_SEID_MASK: u16 = 0x3ff;

// PHY / link.
pub const PHY_TYPE_10GBASE_SR: u32 = 0x14;
pub const LINK_SPEED_10GB: u8 = 1 << 3;
pub const PHY_ABILITY_PAUSE_TX: u8 = 0x01;
pub const PHY_ABILITY_PAUSE_RX: u8 = 0x02;
pub const PHY_ENABLE_LINK: u8 = 0x08;
pub const PHY_AN_ENABLED: u8 = 0x10;
pub const PHY_ABILITIES_LEN: usize = 0x218;
pub const LSE_MASK: u16 = 0x3;
pub const LSE_DISABLE: u16 = 0x2;
pub const LSE_ENABLE: u16 = 0x3;
pub const LSE_IS_ENABLED: u16 = 0x1;
pub const LINK_UP_FUNCTION: u8 = 0x01;
pub const LINK_UP_PORT: u8 = 0x20;
pub const MEDIA_AVAILABLE: u8 = 0x40;
pub const AN_COMPLETED: u8 = 0x01;
pub const QUALIFIED_MODULE: u8 = 0x80;
pub const LINK_CONFIG_CRC_ENA: u8 = 0x04;
pub const EVENT_LINK_UPDOWN: u16 = 0x0002;
pub const LB_PHY_LOCAL: u16 = 0x01;
pub const LB_PHY_REMOTE: u16 = 0x02;
pub const LB_MAC_LOCAL: u16 = 0x04;
pub const MAX_FRAME_SIZE: u16 = 9728;
pub const MAC_ADDRESS_READ_LEN: usize = 24;
pub const LAN_ADDR_VALID: u16 = 0x10;
pub const PORT_ADDR_VALID: u16 = 0x40;
pub const QUERY_VSI_BW_LEN: usize = 0x40;
pub const QUERY_VSI_ETS_SLA_LEN: usize = 0x20;
pub const CONFIGURE_VSI_TC_BW_LEN: usize = 0x20;

// TX queue context (128 bytes): (lsb, width) of the fields the model uses.
pub const TXC_HEAD: (usize, usize) = (0, 13);
pub const TXC_NEW_CONTEXT: (usize, usize) = (30, 1);
pub const TXC_BASE: (usize, usize) = (32, 57);
pub const TXC_HEAD_WB_ENA: (usize, usize) = (160, 1);
pub const TXC_QLEN: (usize, usize) = (161, 13);
pub const TXC_HEAD_WB_ADDR: (usize, usize) = (192, 64);
pub const TXC_RDYLIST: (usize, usize) = (980, 10);
pub const TX_CTX_LEN: usize = 128;
// RX queue context (32 bytes).
pub const RXC_HEAD: (usize, usize) = (0, 13);
pub const RXC_BASE: (usize, usize) = (32, 57);
pub const RXC_QLEN: (usize, usize) = (89, 13);
pub const RXC_DBUFF: (usize, usize) = (102, 7);
pub const RXC_HBUFF: (usize, usize) = (109, 5);
pub const RXC_DTYPE: (usize, usize) = (114, 2);
pub const RXC_DSIZE: (usize, usize) = (116, 1);
pub const RXC_CRCSTRIP: (usize, usize) = (117, 1);
pub const RXC_RXMAX: (usize, usize) = (174, 14);
pub const RX_CTX_LEN: usize = 32;
/// Ring base and buffer sizes are in 128-byte units.
pub const CTX_UNIT: u64 = 128;

// Transmit data descriptor (16 bytes): buffer address @0, cmd_type_offset_bsz @8.
pub const TXD_DTYPE_MASK: u64 = 0xf;
pub const TXD_DTYPE_DATA: u64 = 0x0;
pub const TXD_DTYPE_CONTEXT: u64 = 0x1;
pub const TXD_DTYPE_FDIR: u64 = 0x8;
pub const TXD_DTYPE_DESC_DONE: u64 = 0xf;
pub const TXD_CMD_SHIFT: u32 = 4;
pub const TXD_CMD_EOP: u64 = 0x1;
pub const TXD_CMD_RS: u64 = 0x2;
pub const TXD_BSZ_SHIFT: u32 = 34;
pub const TXD_BSZ_MASK: u64 = 0x3fff;
// Receive descriptor write-back, qword1 @8.
pub const RXD_STATUS_DD: u64 = 1 << 0;
pub const RXD_STATUS_EOF: u64 = 1 << 1;
pub const RXD_ERROR_SHIFT: u32 = 19;
/// Receive error "RXE" (MAC error) in the error field.
pub const RXD_ERROR_RXE: u64 = 1 << 0;
pub const RXD_PTYPE_SHIFT: u32 = 30;
pub const RXD_LEN_PBUF_SHIFT: u32 = 38;
pub const RXD_LEN_PBUF_MASK: u64 = 0x3fff;

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets against the literal numbers of the datasheet's register summary.
    #[test]
    fn offsets_match_datasheet_literals() {
        assert_eq!(PFGEN_CTRL, 0x00092400);
        assert_eq!(PF_ATQT, 0x00080400);
        assert_eq!(PF_ARQLEN, 0x00080280);
        assert_eq!(qtx_tail(1), 0x00108004);
        assert_eq!(qrx_tail(1535), 0x0012_97fc);
        assert_eq!(qtx_ena(2), 0x00100008);
        assert_eq!(qrx_ena(0), 0x00120000);
        assert_eq!(qtx_ctl(1), 0x00104004);
        assert_eq!(glhmc_lanrxbase(1), 0x000c6404);
        assert_eq!(glprt_gotcl(1), 0x00300688);
        assert_eq!(glprt_uprcl(0), 0x003005a0);
        assert_eq!(GLNVM_SRDATA, 0x000b6114);
        assert_eq!(gllan_txpre_qdis(11), 0x000e652c);
    }
}
