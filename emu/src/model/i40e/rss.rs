//! X710 receive-side scaling (datasheet 7.1.10): a frame's packet classifier type (PCTYPE) is
//! hashed if its bit is set in PFQF_HENA, with the Toeplitz hash over the key in PFQF_HKEY
//! (addresses and ports for TCP, UDP and SCTP; addresses for other IP and fragments); the hash's
//! low bits index the PF's lookup table (PFQF_HLUT, 128 or 512 entries as PFQF_CTL_0.HASHLUTSIZE
//! says), whose entry is a queue of the main VSI (counted from TC0's first queue in the VSI's
//! queue map); a frame whose type is not enabled goes to that first queue. A frame that is not IP
//! is of type L2_PAYLOAD (63) and is hashed on its last ethertype (after its VLAN tags): the input
//! set DPDK programs for that type at start-up (GLQF_HASH_INSET: LAST_ETHER_TYPE), as the
//! register that selects it is not modelled; all frames of one ethertype go to one queue. The
//! write-back carries the hash in qword0 bits 63:32 with FLTSTAT 3, and the packet type (PTYPE)
//! in either case (L2 PAY2, or ARP). The key and table can also be set and read through the
//! admin queue (set/get_rss_key, set/get_rss_lut; the PF and VSI tables are one table here),
//! which writes the same registers.
//!
//! The configuration is decoded when the driver writes one of those registers or commands (never
//! on the data path); the Toeplitz tables are rebuilt only when the key changes.

use super::regs::*;
use super::I40e;
use crate::model::rss::{is_ip, last_ethertype, parse, Toeplitz, L4};

/// Lookup table entries at most.
pub(super) const LUT_MAX: usize = 512;

/// The decoded RSS configuration.
pub(super) struct Rss {
    /// Some PCTYPE is enabled.
    pub(super) on: bool,
    hena: u64,
    lut: [u8; LUT_MAX],
    /// 128 or 512.
    lut_size: usize,
    /// The VSI queues the table names (bit n = VSI queue n).
    pub(super) queues: u64,
    key: [u8; RSS_KEY_LEN],
    hash: Toeplitz,
}

impl Default for Rss {
    fn default() -> Self {
        Rss {
            on: false,
            hena: 0,
            lut: [0; LUT_MAX],
            lut_size: 128,
            queues: 1,
            key: [0; RSS_KEY_LEN],
            hash: Toeplitz::new(&[0; RSS_KEY_LEN]),
        }
    }
}

impl std::fmt::Debug for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rss").field("hena", &self.hena).field("lut_size", &self.lut_size).finish_non_exhaustive()
    }
}

/// Whether `off` is one of the registers RSS is decoded from.
pub(super) fn is_rss_reg(off: u32) -> bool {
    off == PFQF_CTL_0
        || off == pfqf_hena(0)
        || off == pfqf_hena(1)
        || (pfqf_hkey(0)..pfqf_hkey(PFQF_HKEY_REGS)).contains(&off) && off.is_multiple_of(128)
        || (pfqf_hlut(0)..pfqf_hlut(PFQF_HLUT_REGS)).contains(&off) && off.is_multiple_of(128)
}

impl I40e {
    /// Decodes RSS from PFQF_CTL_0, PFQF_HENA, PFQF_HKEY and PFQF_HLUT (after a write to one of
    /// them, an admin command, a reset or a migration).
    pub(super) fn rss_update(&mut self) {
        let mut key = [0u8; RSS_KEY_LEN];
        for n in 0..PFQF_HKEY_REGS {
            key[4 * n as usize..4 * n as usize + 4].copy_from_slice(&self.reg(pfqf_hkey(n)).to_le_bytes());
        }
        let lut_size = if self.reg(PFQF_CTL_0) & PFQF_CTL_0_HASHLUTSIZE_512 != 0 { 512 } else { 128 };
        let mut lut = [0u8; LUT_MAX];
        for n in 0..PFQF_HLUT_REGS {
            for (k, b) in self.reg(pfqf_hlut(n)).to_le_bytes().iter().enumerate() {
                lut[4 * n as usize + k] = b & HLUT_ENTRY_MASK;
            }
        }
        let hena = u64::from(self.reg(pfqf_hena(0))) | u64::from(self.reg(pfqf_hena(1))) << 32;
        let r = &mut self.rss;
        if key != r.key {
            r.hash.set_key(&key);
            r.key = key;
        }
        r.hena = hena;
        r.on = hena != 0;
        r.lut = lut;
        r.lut_size = lut_size;
        r.queues = lut[..lut_size].iter().fold(0u64, |m, q| m | (1 << q));
    }

    /// The key as the registers hold it (admin queue get_rss_key).
    pub(super) fn rss_key(&self) -> [u8; RSS_KEY_LEN] {
        self.rss.key
    }

    /// Sets the key (admin queue set_rss_key): the registers, then the decoded state.
    pub(super) fn set_rss_key(&mut self, key: &[u8; RSS_KEY_LEN]) {
        for n in 0..PFQF_HKEY_REGS as usize {
            let w = u32::from_le_bytes([key[4 * n], key[4 * n + 1], key[4 * n + 2], key[4 * n + 3]]);
            self.regs.insert(pfqf_hkey(n as u32), w);
        }
        self.rss_update();
    }

    /// The table's first `n` entries (admin queue get_rss_lut).
    pub(super) fn rss_lut(&self, n: usize) -> &[u8] {
        &self.rss.lut[..n.min(LUT_MAX)]
    }

    /// Sets the table's first `entries.len()` entries (admin queue set_rss_lut).
    pub(super) fn set_rss_lut(&mut self, entries: &[u8]) {
        let mut lut = self.rss.lut;
        for (d, s) in lut.iter_mut().zip(entries) {
            *d = s & HLUT_ENTRY_MASK;
        }
        for n in 0..PFQF_HLUT_REGS as usize {
            self.regs.insert(
                pfqf_hlut(n as u32),
                u32::from_le_bytes([lut[4 * n], lut[4 * n + 1], lut[4 * n + 2], lut[4 * n + 3]]),
            );
        }
        self.rss_update();
    }

    /// The VSI queue a frame goes to and its write-back's qword0 (hash in bits 63:32) and
    /// qword1 bits (FLTSTAT and PTYPE). Only called with RSS on.
    #[inline]
    pub(super) fn rss_pick(&self, frame: &[u8]) -> (u32, u64, u64) {
        let r = &self.rss;
        let Some(flow) = parse(frame) else {
            return self.rss_pick_l2(frame);
        };
        let (pctype, ptype) = match (flow.v6, flow.l4) {
            (false, L4::Tcp) => (PCTYPE_IPV4_TCP, PTYPE_IPV4_TCP),
            (false, L4::Udp) => (PCTYPE_IPV4_UDP, PTYPE_IPV4_UDP),
            (false, L4::Sctp) => (PCTYPE_IPV4_SCTP, PTYPE_IPV4_SCTP),
            (false, L4::Other) => (PCTYPE_IPV4_OTHER, PTYPE_IPV4_OTHER),
            (false, L4::Fragment) => (PCTYPE_FRAG_IPV4, PTYPE_IPV4_FRAG),
            (true, L4::Tcp) => (PCTYPE_IPV6_TCP, PTYPE_IPV6_TCP),
            (true, L4::Udp) => (PCTYPE_IPV6_UDP, PTYPE_IPV6_UDP),
            (true, L4::Sctp) => (PCTYPE_IPV6_SCTP, PTYPE_IPV6_SCTP),
            (true, L4::Other) => (PCTYPE_IPV6_OTHER, PTYPE_IPV6_OTHER),
            (true, L4::Fragment) => (PCTYPE_FRAG_IPV6, PTYPE_IPV6_FRAG),
        };
        let qw1 = ptype << RXD_PTYPE_SHIFT;
        if r.hena & (1 << pctype) == 0 {
            return (0, 0, qw1);
        }
        let hash = r.hash.hash_flow(&flow, true);
        let q = u32::from(r.lut[hash as usize & (r.lut_size - 1)]);
        (q, u64::from(hash) << 32, qw1 | RXD_FLTSTAT_RSS << RXD_FLTSTAT_SHIFT)
    }

    /// [`I40e::rss_pick`] for a frame that is not IP (or an IP frame too short to parse, which
    /// the hash does not cover): L2_PAYLOAD, hashed on its last ethertype in wire order when
    /// PFQF_HENA enables that type; ARP (0x0806) gets PTYPE ARP, the rest PTYPE L2 PAY2.
    #[cold]
    fn rss_pick_l2(&self, frame: &[u8]) -> (u32, u64, u64) {
        let r = &self.rss;
        let Some((ethertype, _)) = last_ethertype(frame) else {
            return (0, 0, PTYPE_L2 << RXD_PTYPE_SHIFT);
        };
        if is_ip(ethertype) {
            return (0, 0, PTYPE_L2 << RXD_PTYPE_SHIFT);
        }
        let ptype = if ethertype == 0x0806 { PTYPE_L2_ARP } else { PTYPE_L2 };
        let qw1 = ptype << RXD_PTYPE_SHIFT;
        if r.hena & (1 << PCTYPE_L2_PAYLOAD) == 0 {
            return (0, 0, qw1);
        }
        let hash = r.hash.hash(&ethertype.to_be_bytes());
        let q = u32::from(r.lut[hash as usize & (r.lut_size - 1)]);
        (q, u64::from(hash) << 32, qw1 | RXD_FLTSTAT_RSS << RXD_FLTSTAT_SHIFT)
    }
}
