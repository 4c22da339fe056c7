//! 82599 receive-side scaling (datasheet 7.1.2.8, 8.2.3.7.12-15): the key in RSSRK, the
//! 128-entry redirection table in RETA (4-bit queue indices), the hash types in MRQC, and
//! RXCSUM.PCSD so the write-back carries the hash. DPDK's `rss_hf` bits map onto MRQC's fields
//! as the hardware can hash them: the IPv4 field covers fragments and other IPv4, the IPv6 field
//! other IPv6 and its fragments; SCTP ports and layer-2 payloads cannot be hashed.
//!
//! Every process may call these: the registers are the device's, and RETA and the key are read
//! back from it, so no process keeps a copy that could go stale.

use lab_core::rss::{hf, RssConf, DEFAULT_KEY};
use lab_core::vfio::Bar;

use super::regs::*;
use crate::error::DriverError;

/// The hash types the 82599 takes.
pub const OFFLOADS: u64 = hf::IP | hf::TCP | hf::UDP;

/// MRQC's hash fields for `rss_hf` bits (within [`OFFLOADS`]).
fn mrqc_fields(bits: u64) -> u32 {
    let map: [(u64, u32); 9] = [
        (hf::IPV4 | hf::FRAG_IPV4 | hf::NONFRAG_IPV4_OTHER, MRQC_RSS_FIELD_IPV4),
        (hf::NONFRAG_IPV4_TCP, MRQC_RSS_FIELD_IPV4_TCP),
        (hf::NONFRAG_IPV4_UDP, MRQC_RSS_FIELD_IPV4_UDP),
        (hf::IPV6 | hf::FRAG_IPV6 | hf::NONFRAG_IPV6_OTHER, MRQC_RSS_FIELD_IPV6),
        (hf::NONFRAG_IPV6_TCP, MRQC_RSS_FIELD_IPV6_TCP),
        (hf::NONFRAG_IPV6_UDP, MRQC_RSS_FIELD_IPV6_UDP),
        (hf::IPV6_EX, MRQC_RSS_FIELD_IPV6_EX),
        (hf::IPV6_TCP_EX, MRQC_RSS_FIELD_IPV6_EX_TCP),
        (hf::IPV6_UDP_EX, MRQC_RSS_FIELD_IPV6_EX_UDP),
    ];
    map.iter().filter(|(h, _)| bits & h != 0).fold(0, |m, (_, f)| m | f)
}

/// The `rss_hf` bits MRQC's fields stand for (the inverse of [`mrqc_fields`], each field
/// giving its widest meaning).
fn hf_of(mrqc: u32) -> u64 {
    let map: [(u32, u64); 9] = [
        (MRQC_RSS_FIELD_IPV4, hf::IPV4 | hf::FRAG_IPV4 | hf::NONFRAG_IPV4_OTHER),
        (MRQC_RSS_FIELD_IPV4_TCP, hf::NONFRAG_IPV4_TCP),
        (MRQC_RSS_FIELD_IPV4_UDP, hf::NONFRAG_IPV4_UDP),
        (MRQC_RSS_FIELD_IPV6, hf::IPV6 | hf::FRAG_IPV6 | hf::NONFRAG_IPV6_OTHER),
        (MRQC_RSS_FIELD_IPV6_TCP, hf::NONFRAG_IPV6_TCP),
        (MRQC_RSS_FIELD_IPV6_UDP, hf::NONFRAG_IPV6_UDP),
        (MRQC_RSS_FIELD_IPV6_EX, hf::IPV6_EX),
        (MRQC_RSS_FIELD_IPV6_EX_TCP, hf::IPV6_TCP_EX),
        (MRQC_RSS_FIELD_IPV6_EX_UDP, hf::IPV6_UDP_EX),
    ];
    map.iter().filter(|(f, _)| mrqc & f != 0).fold(0, |m, (_, h)| m | h)
}

/// Checks a configuration: hash types the 82599 takes, a 40-byte key.
pub fn check(conf: &RssConf) -> Result<(), DriverError> {
    lab_core::rss::check_hf("net_ixgbe", conf.hf, OFFLOADS).map_err(|e| DriverError::config(e.to_string()))?;
    if let Some(k) = &conf.key {
        if k.len() != RSS_KEY_LEN {
            return Err(DriverError::config(format!("RSS key of {} bytes: the 82599 takes {RSS_KEY_LEN}", k.len())));
        }
    }
    Ok(())
}

/// Writes the key (if given) and the hash types; hash types 0 turn RSS off (MRQC.MRQE 0: every
/// frame to queue 0). `conf` was [`check`]ed.
pub fn set_hash(bar: &Bar, conf: &RssConf) {
    if let Some(k) = &conf.key {
        for (n, w) in k.chunks_exact(4).enumerate() {
            bar.write32(rssrk(n as u32), u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    // The hash goes into the write-back instead of the IP identification and checksum.
    bar.set_bits(RXCSUM, RXCSUM_PCSD);
    let mrqc = if conf.hf == 0 { 0 } else { MRQC_RSSEN | mrqc_fields(conf.hf) };
    bar.write32(MRQC, mrqc);
}

/// Start of day (primary, receive off): the default key unless given, the table spread over
/// `queues` round robin, then the hash types.
pub fn configure(bar: &Bar, conf: &RssConf, queues: u16) {
    let mut c = conf.clone();
    c.key.get_or_insert_with(|| DEFAULT_KEY.to_vec());
    TABLE.write(bar, &lab_core::rss::default_reta(RETA_SIZE.into(), queues));
    set_hash(bar, &c);
}

/// The hash types and key in force.
pub fn get_hash(bar: &Bar) -> RssConf {
    let mrqc = bar.read32(MRQC);
    let key = (0..RSS_KEY_LEN as u32 / 4).flat_map(|n| bar.read32(rssrk(n)).to_le_bytes()).collect();
    let on = mrqc & 0xf == MRQC_RSSEN;
    RssConf { key: Some(key), hf: if on { hf_of(mrqc) } else { 0 } }
}

/// The redirection table: RETA, 128 entries of 4 bits.
pub(crate) const TABLE: crate::pci::rss_table::Table =
    crate::pci::rss_table::Table { reg: reta, size: RETA_SIZE, mask: 0xf, name: "RETA" };
