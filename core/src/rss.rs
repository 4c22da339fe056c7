//! Receive-side scaling as an application asks for it, in DPDK's terms: the hash types
//! (`rss_hf`, the `RTE_ETH_RSS_*` bits and their names as testpmd's `port config all rss`
//! spells them), the key, and the redirection table (RETA) a driver programs into its NIC.

/// DPDK's `rss_hf` bits (`RTE_ETH_RSS_*`, rte_ethdev.h).
pub mod hf {
    /// IPv4 (any).
    pub const IPV4: u64 = 1 << 2;
    /// IPv4 fragments.
    pub const FRAG_IPV4: u64 = 1 << 3;
    /// IPv4 TCP, unfragmented.
    pub const NONFRAG_IPV4_TCP: u64 = 1 << 4;
    /// IPv4 UDP, unfragmented.
    pub const NONFRAG_IPV4_UDP: u64 = 1 << 5;
    /// IPv4 SCTP, unfragmented.
    pub const NONFRAG_IPV4_SCTP: u64 = 1 << 6;
    /// Other IPv4, unfragmented.
    pub const NONFRAG_IPV4_OTHER: u64 = 1 << 7;
    /// IPv6 (any).
    pub const IPV6: u64 = 1 << 8;
    /// IPv6 fragments.
    pub const FRAG_IPV6: u64 = 1 << 9;
    /// IPv6 TCP, unfragmented.
    pub const NONFRAG_IPV6_TCP: u64 = 1 << 10;
    /// IPv6 UDP, unfragmented.
    pub const NONFRAG_IPV6_UDP: u64 = 1 << 11;
    /// IPv6 SCTP, unfragmented.
    pub const NONFRAG_IPV6_SCTP: u64 = 1 << 12;
    /// Other IPv6, unfragmented.
    pub const NONFRAG_IPV6_OTHER: u64 = 1 << 13;
    /// Layer 2 payload (not IP).
    pub const L2_PAYLOAD: u64 = 1 << 14;
    /// IPv6 with extension headers.
    pub const IPV6_EX: u64 = 1 << 15;
    /// IPv6 TCP with extension headers.
    pub const IPV6_TCP_EX: u64 = 1 << 16;
    /// IPv6 UDP with extension headers.
    pub const IPV6_UDP_EX: u64 = 1 << 17;
    /// `RTE_ETH_RSS_IP`.
    pub const IP: u64 = IPV4 | FRAG_IPV4 | NONFRAG_IPV4_OTHER | IPV6 | FRAG_IPV6 | NONFRAG_IPV6_OTHER | IPV6_EX;
    /// `RTE_ETH_RSS_TCP`.
    pub const TCP: u64 = NONFRAG_IPV4_TCP | NONFRAG_IPV6_TCP | IPV6_TCP_EX;
    /// `RTE_ETH_RSS_UDP`.
    pub const UDP: u64 = NONFRAG_IPV4_UDP | NONFRAG_IPV6_UDP | IPV6_UDP_EX;
    /// `RTE_ETH_RSS_SCTP`.
    pub const SCTP: u64 = NONFRAG_IPV4_SCTP | NONFRAG_IPV6_SCTP;

    /// Names and bits, as testpmd's `port config all rss <types>` takes them.
    pub const NAMES: &[(&str, u64)] = &[
        ("ip", IP),
        ("tcp", TCP),
        ("udp", UDP),
        ("sctp", SCTP),
        ("ether", L2_PAYLOAD),
        ("ipv4", IPV4),
        ("ipv4-frag", FRAG_IPV4),
        ("ipv4-tcp", NONFRAG_IPV4_TCP),
        ("ipv4-udp", NONFRAG_IPV4_UDP),
        ("ipv4-sctp", NONFRAG_IPV4_SCTP),
        ("ipv4-other", NONFRAG_IPV4_OTHER),
        ("ipv6", IPV6),
        ("ipv6-frag", FRAG_IPV6),
        ("ipv6-tcp", NONFRAG_IPV6_TCP),
        ("ipv6-udp", NONFRAG_IPV6_UDP),
        ("ipv6-sctp", NONFRAG_IPV6_SCTP),
        ("ipv6-other", NONFRAG_IPV6_OTHER),
        ("l2-payload", L2_PAYLOAD),
        ("ipv6-ex", IPV6_EX),
        ("ipv6-tcp-ex", IPV6_TCP_EX),
        ("ipv6-udp-ex", IPV6_UDP_EX),
    ];
}

/// The key DPDK's Intel drivers start with (`rss_intel_key`, also the 82599 datasheet's and
/// Microsoft's verification key): 40 bytes.
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// What RSS hashes, with which key (`rte_eth_rss_conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssConf {
    /// The key; `None`: the driver's (or, on update, the current one).
    pub key: Option<Vec<u8>>,
    /// Hash types, [`hf`] bits; 0 turns RSS off (everything to queue 0).
    pub hf: u64,
}

impl Default for RssConf {
    /// IP, TCP and UDP without IPv6 extension headers (what both Intel NICs take) with the
    /// default key.
    fn default() -> RssConf {
        let ex = hf::IPV6_EX | hf::IPV6_TCP_EX | hf::IPV6_UDP_EX;
        RssConf { key: None, hf: (hf::IP | hf::TCP | hf::UDP) & !ex }
    }
}

/// A hash type name not in [`hf::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown RSS hash type \"{name}\" (known: {known})")]
pub struct UnknownHashType {
    /// The name given.
    pub name: String,
    /// The known names, comma separated.
    pub known: String,
}

/// `rss_hf` bits of a comma-separated list of names (`ip,udp`, `ipv4-tcp`, `none`).
pub fn parse_hf(names: &str) -> Result<u64, UnknownHashType> {
    names.split(',').map(str::trim).filter(|n| !n.is_empty()).try_fold(0u64, |acc, n| {
        if n == "none" {
            return Ok(acc);
        }
        hf::NAMES.iter().find(|(k, _)| *k == n).map(|(_, v)| acc | v).ok_or_else(|| UnknownHashType {
            name: n.into(),
            known: hf::NAMES.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        })
    })
}

/// Hash types asked for that the device cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{driver}: RSS hash types {} not supported (supported: {})", hf_names(*.asked), hf_names(*.supported))]
pub struct UnsupportedHashTypes {
    /// The driver.
    pub driver: &'static str,
    /// The bits it cannot take.
    pub asked: u64,
    /// The bits it can (`flow_type_rss_offloads`).
    pub supported: u64,
}

/// The single-type names of `bits` (`ipv4-tcp,ipv6`), comma separated.
pub fn hf_names(bits: u64) -> String {
    hf::NAMES.iter().skip(5).filter(|(_, b)| bits & b != 0).map(|(n, _)| *n).collect::<Vec<_>>().join(",")
}

/// `Ok` if the device (`driver`, taking `offloads`) can hash every type in `hf`.
pub fn check_hf(driver: &'static str, hf: u64, offloads: u64) -> Result<(), UnsupportedHashTypes> {
    match hf & !offloads {
        0 => Ok(()),
        asked => Err(UnsupportedHashTypes { driver, asked, supported: offloads }),
    }
}

/// A redirection table of `size` entries spreading over `queues` queues round robin (entry n
/// is queue n % queues), as DPDK's drivers fill it at start.
pub fn default_reta(size: usize, queues: u16) -> Vec<u16> {
    (0..size).map(|n| (n % usize::from(queues.max(1))) as u16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_dpdk_bits_and_unknown_names_are_named() {
        assert_eq!(parse_hf("ip,udp").unwrap(), hf::IP | hf::UDP);
        assert_eq!(parse_hf("ipv4-tcp").unwrap(), 1 << 4);
        assert_eq!(parse_hf("none").unwrap(), 0);
        let e = parse_hf("ip,bogus").unwrap_err();
        assert_eq!(e.name, "bogus");
        assert!(e.to_string().contains("ipv4-tcp"), "{e}");
        assert_eq!(default_reta(8, 3), [0, 1, 2, 0, 1, 2, 0, 1]);
    }
}
