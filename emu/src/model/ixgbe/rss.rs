//! 82599 receive-side scaling (datasheet 7.1.2.8): MRQC selects RSS (MRQE 0001) and the hash
//! types, RSSRK holds the 40-byte key, RETA the 128-entry redirection table indexed by the
//! hash's 7 low bits, whose entries' 4 low bits name the queue. A frame no enabled type covers
//! (or not IP) gets hash 0, type 0, and so RETA entry 0. TCP and UDP hashes are taken on
//! unfragmented datagrams only; a fragment hashes as IP. SCTP ports are not hashed. IPv6
//! extension headers are skipped to the transport (`rss::walk_ipv6_ext`). The "IPv6 EX" types
//! (MRQC bits 18, 19, 24; Microsoft's NDIS_HASH_*IPV6_EX) hash every IPv6 frame, the source
//! taken from a Home Address option and the destination from a type 2 routing header where
//! the frame has them; enabled beside the plain IPv6 types, they win (checked first, as QEMU's
//! e1000e and igb models check them). The write-back carries the type in dword 0 and, with
//! RXCSUM.PCSD set, the hash in dword 1.
//!
//! The configuration is decoded when the driver writes one of those registers (never on the
//! data path); the Toeplitz tables are rebuilt only when the key changes.

use super::regs::*;
use super::Ixgbe;
use crate::model::rss::{parse, Toeplitz, L4};

/// The decoded RSS configuration.
pub(super) struct Rss {
    /// MRQE selects RSS.
    pub(super) on: bool,
    /// MRQC's hash type enables (bits 16..24).
    fields: u32,
    /// RXCSUM.PCSD: the hash goes into the write-back.
    pcsd: bool,
    /// RETA's entries (4 low bits each).
    reta: [u8; RETA_ENTRIES],
    /// The queues RETA names (bit n = queue n).
    pub(super) queues: u16,
    key: [u8; 40],
    hash: Toeplitz,
}

impl Default for Rss {
    fn default() -> Self {
        Rss {
            on: false,
            fields: 0,
            pcsd: false,
            reta: [0; RETA_ENTRIES],
            queues: 1,
            key: [0; 40],
            hash: Toeplitz::new(&[0; 40]),
        }
    }
}

impl std::fmt::Debug for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rss").field("on", &self.on).field("fields", &self.fields).finish_non_exhaustive()
    }
}

/// Whether `off` is one of the registers RSS is decoded from.
pub(super) fn is_rss_reg(off: u32) -> bool {
    matches!(off, MRQC | RXCSUM)
        || (rssrk(0)..rssrk(RSSRK_REGS)).contains(&off)
        || (reta(0)..reta(RETA_REGS)).contains(&off)
}

impl Ixgbe {
    /// Decodes RSS from MRQC, RXCSUM, RSSRK and RETA (after a write to one of them, a reset or a
    /// migration); the hash tables are rebuilt if the key changed.
    pub(super) fn rss_update(&mut self) {
        let mrqc = self.reg(MRQC);
        let mut key = [0u8; 40];
        for n in 0..RSSRK_REGS {
            key[4 * n as usize..4 * n as usize + 4].copy_from_slice(&self.reg(rssrk(n)).to_le_bytes());
        }
        let mut reta_b = [0u8; RETA_ENTRIES];
        for n in 0..RETA_REGS {
            for (k, b) in self.reg(reta(n)).to_le_bytes().iter().enumerate() {
                reta_b[4 * n as usize + k] = b & 0xf;
            }
        }
        let on = mrqc & MRQC_MRQE_MASK == MRQC_MRQE_RSS;
        if mrqc & MRQC_MRQE_MASK > MRQC_MRQE_RSS {
            tracing::warn!(bdf = %self.bdf, mrqc, "MRQC.MRQE {:#x}: DCB and VMDq are not modelled; no RSS", mrqc & 0xf);
        }
        let r = &mut self.rss;
        if key != r.key {
            r.hash.set_key(&key);
            r.key = key;
        }
        r.on = on;
        r.fields = mrqc;
        r.pcsd = self.regs.get((RXCSUM >> 2) as usize).is_some_and(|v| v & RXCSUM_PCSD != 0);
        r.reta = reta_b;
        r.queues = reta_b.iter().fold(0u16, |m, q| m | (1 << q));
    }

    /// The queue a frame goes to and the first 8 bytes of its write-back (RSS type in bits 3:0,
    /// the hash in bits 63:32 when PCSD is set). Only called with RSS on.
    #[inline]
    pub(super) fn rss_pick(&self, frame: &[u8]) -> (u32, u64) {
        let r = &self.rss;
        let (ty, hash) = match parse(frame) {
            Some(flow) if flow.v6 && r.fields & MRQC_RSS_IPV6_EX_ALL != 0 => {
                let f = r.fields;
                match (flow.l4, flow.ports().is_some()) {
                    (L4::Tcp, true) if f & MRQC_RSS_TCPIPV6_EX != 0 => {
                        (RSS_TYPE_TCPIPV6_EX, r.hash.hash_flow_ex(&flow, true))
                    }
                    (L4::Tcp, true) if f & MRQC_RSS_TCPIPV6 != 0 => (RSS_TYPE_TCPIPV6, r.hash.hash_flow(&flow, true)),
                    (L4::Udp, true) if f & MRQC_RSS_UDPIPV6_EX != 0 => {
                        (RSS_TYPE_UDPIPV6_EX, r.hash.hash_flow_ex(&flow, true))
                    }
                    (L4::Udp, true) if f & MRQC_RSS_UDPIPV6 != 0 => (RSS_TYPE_UDPIPV6, r.hash.hash_flow(&flow, true)),
                    _ if f & MRQC_RSS_IPV6_EX != 0 => (RSS_TYPE_IPV6_EX, r.hash.hash_flow_ex(&flow, false)),
                    _ if f & MRQC_RSS_IPV6 != 0 => (RSS_TYPE_IPV6, r.hash.hash_flow(&flow, false)),
                    _ => (RSS_TYPE_NONE, 0),
                }
            }
            Some(flow) => {
                let (tcp, udp, ip, t_tcp, t_udp, t_ip) = if flow.v6 {
                    (
                        MRQC_RSS_TCPIPV6,
                        MRQC_RSS_UDPIPV6,
                        MRQC_RSS_IPV6,
                        RSS_TYPE_TCPIPV6,
                        RSS_TYPE_UDPIPV6,
                        RSS_TYPE_IPV6,
                    )
                } else {
                    (
                        MRQC_RSS_TCPIPV4,
                        MRQC_RSS_UDPIPV4,
                        MRQC_RSS_IPV4,
                        RSS_TYPE_TCPIPV4,
                        RSS_TYPE_UDPIPV4,
                        RSS_TYPE_IPV4,
                    )
                };
                match (flow.l4, flow.ports().is_some()) {
                    (L4::Tcp, true) if r.fields & tcp != 0 => (t_tcp, r.hash.hash_flow(&flow, true)),
                    (L4::Udp, true) if r.fields & udp != 0 => (t_udp, r.hash.hash_flow(&flow, true)),
                    _ if r.fields & ip != 0 => (t_ip, r.hash.hash_flow(&flow, false)),
                    _ => (RSS_TYPE_NONE, 0),
                }
            }
            None => (RSS_TYPE_NONE, 0),
        };
        let q = u32::from(r.reta[(hash & 0x7f) as usize]);
        let hi = if r.pcsd { u64::from(hash) << 32 } else { 0 };
        (q, hi | u64::from(ty))
    }
}
