//! X710 receive-side scaling by the PF's registers, as the PF drivers program an X710 (the admin
//! queue's RSS commands are the X722's way): the 52-byte key in PFQF_HKEY, the 512-entry lookup
//! table in PFQF_HLUT (PFQF_CTL_0.HASHLUTSIZE), whose entries are queues of the main VSI, and
//! the packet classifier types to hash in PFQF_HENA. DPDK's `rss_hf` bits map onto PCTYPEs one
//! to one, with `ipv4` (`ipv6`) standing for the fragment and other-IPv4 (IPv6) types; IPv6
//! extension-header types are not the X710's.
//!
//! Every process may call these: the registers are the device's, read back rather than copied.

use lab_core::rss::{hf, RssConf, DEFAULT_KEY};
use lab_core::vfio::Bar;

use super::regs::*;
use crate::error::DriverError;

/// `rss_hf` bits and the PCTYPEs they enable.
const MAP: [(u64, &[u32]); 13] = [
    (hf::IPV4, &[PCTYPE_FRAG_IPV4, PCTYPE_NONF_IPV4_OTHER]),
    (hf::FRAG_IPV4, &[PCTYPE_FRAG_IPV4]),
    (hf::NONFRAG_IPV4_TCP, &[PCTYPE_NONF_IPV4_TCP]),
    (hf::NONFRAG_IPV4_UDP, &[PCTYPE_NONF_IPV4_UDP]),
    (hf::NONFRAG_IPV4_SCTP, &[PCTYPE_NONF_IPV4_SCTP]),
    (hf::NONFRAG_IPV4_OTHER, &[PCTYPE_NONF_IPV4_OTHER]),
    (hf::IPV6, &[PCTYPE_FRAG_IPV6, PCTYPE_NONF_IPV6_OTHER]),
    (hf::FRAG_IPV6, &[PCTYPE_FRAG_IPV6]),
    (hf::NONFRAG_IPV6_TCP, &[PCTYPE_NONF_IPV6_TCP]),
    (hf::NONFRAG_IPV6_UDP, &[PCTYPE_NONF_IPV6_UDP]),
    (hf::NONFRAG_IPV6_SCTP, &[PCTYPE_NONF_IPV6_SCTP]),
    (hf::NONFRAG_IPV6_OTHER, &[PCTYPE_NONF_IPV6_OTHER]),
    (hf::L2_PAYLOAD, &[PCTYPE_L2_PAYLOAD]),
];

/// The hash types the X710 takes.
pub const OFFLOADS: u64 = {
    let mut m = 0;
    let mut i = 0;
    while i < MAP.len() {
        m |= MAP[i].0;
        i += 1;
    }
    m
};

fn hena_of(bits: u64) -> u64 {
    MAP.iter().filter(|(h, _)| bits & h != 0).flat_map(|(_, p)| p.iter()).fold(0, |m, p| m | 1 << p)
}

/// The `rss_hf` bits the enabled PCTYPEs stand for (single types only: `ipv4` comes back as
/// its fragment and other types).
fn hf_of(hena: u64) -> u64 {
    MAP.iter()
        .filter(|(h, p)| p.len() == 1 && hena & (1 << p[0]) != 0 && h.count_ones() == 1)
        .fold(0, |m, (h, _)| m | h)
}

/// Checks a configuration: hash types the X710 takes, a key of 52 bytes (or 40, the standard
/// part, the extended 12 then zero).
pub fn check(conf: &RssConf) -> Result<(), DriverError> {
    lab_core::rss::check_hf("net_i40e", conf.hf, OFFLOADS).map_err(|e| DriverError::config(e.to_string()))?;
    if let Some(k) = &conf.key {
        if k.len() != RSS_KEY_LEN && k.len() != 40 {
            return Err(DriverError::config(format!(
                "RSS key of {} bytes: the X710 takes {RSS_KEY_LEN} (or 40)",
                k.len()
            )));
        }
    }
    Ok(())
}

/// Writes the key (if given) and the hash types (0: no hashing, every frame to the VSI's first
/// queue). `conf` was [`check`]ed.
pub fn set_hash(bar: &Bar, conf: &RssConf) {
    if let Some(k) = &conf.key {
        let mut key = [0u8; RSS_KEY_LEN];
        key[..k.len()].copy_from_slice(k);
        for (n, w) in key.chunks_exact(4).enumerate() {
            bar.write32(pfqf_hkey(n as u32), u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let hena = hena_of(conf.hf);
    bar.write32(pfqf_hena(0), hena as u32);
    bar.write32(pfqf_hena(1), (hena >> 32) as u32);
}

/// Start of day (primary): a 512-entry table spread over `queues` round robin, the default key
/// unless given, then the hash types.
pub fn configure(bar: &Bar, conf: &RssConf, queues: u16) {
    bar.set_bits(PFQF_CTL_0, PFQF_CTL_0_HASHLUTSIZE_512);
    TABLE.write(bar, &lab_core::rss::default_reta(LUT_SIZE.into(), queues));
    let mut c = conf.clone();
    c.key.get_or_insert_with(|| DEFAULT_KEY.to_vec());
    set_hash(bar, &c);
}

/// The hash types and key in force.
pub fn get_hash(bar: &Bar) -> RssConf {
    let hena = u64::from(bar.read32(pfqf_hena(0))) | u64::from(bar.read32(pfqf_hena(1))) << 32;
    let key = (0..RSS_KEY_LEN as u32 / 4).flat_map(|n| bar.read32(pfqf_hkey(n)).to_le_bytes()).collect();
    RssConf { key: Some(key), hf: hf_of(hena) }
}

/// The redirection table: PFQF_HLUT, 512 entries of 6 bits (VSI queues).
pub(crate) const TABLE: crate::pci::rss_table::Table =
    crate::pci::rss_table::Table { reg: pfqf_hlut, size: LUT_SIZE, mask: 0x3f, name: "RETA" };
