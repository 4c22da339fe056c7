//! The virtual device bus: devices that exist only because `--vdev` named them.
//!
//! A vdev's name starts with its driver's name (`net_null0` is driven by `net_null`), so finding the
//! driver is a longest-prefix match over the registered driver names, as DPDK's vdev bus does. The
//! old `eth_` names are accepted as aliases of `net_` (`eth_null0` -> `net_null`).

#![forbid(unsafe_code)]

/// Legacy prefix of virtual PMD names, an alias of [`NET_PREFIX`].
pub const LEGACY_PREFIX: &str = "eth_";

/// Prefix of virtual PMD names.
pub const NET_PREFIX: &str = "net_";

/// The registered driver whose name is the longest prefix of the device `name`.
///
/// A name starting with `eth_` also matches the `net_` driver of the same rest (`eth_ring0` ->
/// `net_ring`); a driver that matches the name as written wins over an alias match of the same length.
/// Empty driver names never match.
pub fn driver_for<'a>(name: &str, drivers: &[&'a str]) -> Option<&'a str> {
    let alias = name.strip_prefix(LEGACY_PREFIX).map(|rest| format!("{NET_PREFIX}{rest}"));
    drivers
        .iter()
        .copied()
        .filter(|d| !d.is_empty())
        .filter_map(|d| {
            if name.starts_with(d) {
                Some((d.len(), true, d))
            } else if alias.as_deref().is_some_and(|a| a.starts_with(d)) {
                Some((d.len(), false, d))
            } else {
                None
            }
        })
        .max_by_key(|(len, direct, _)| (*len, *direct))
        .map(|(_, _, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const DRIVERS: &[&str] = &["net_null", "net_ring", "net_pcap", "net_tap", "net_af_packet", "net_ring_ext"];

    #[rstest]
    #[case("net_null0", Some("net_null"))]
    #[case("net_null", Some("net_null"))]
    #[case("net_ring0", Some("net_ring"))]
    #[case("net_ring_ext1", Some("net_ring_ext"))]
    #[case("net_af_packet3", Some("net_af_packet"))]
    #[case("net_tap_lab", Some("net_tap"))]
    #[case("eth_null0", Some("net_null"))]
    #[case("eth_ring_ext0", Some("net_ring_ext"))]
    #[case("eth_pcap1", Some("net_pcap"))]
    #[case("net_nul0", None)]
    #[case("net_", None)]
    #[case("eth_", None)]
    #[case("", None)]
    #[case("crypto_null0", None)]
    #[case("NET_NULL0", None)]
    fn driver_is_the_longest_registered_prefix(#[case] name: &str, #[case] want: Option<&str>) {
        assert_eq!(driver_for(name, DRIVERS), want);
    }

    #[test]
    fn driver_matching_as_written_beats_an_alias_of_the_same_length() {
        assert_eq!(driver_for("eth_null0", &["net_null", "eth_null"]), Some("eth_null"));
        assert_eq!(driver_for("eth_null0", &["eth_", "net_null"]), Some("net_null"));
    }

    #[test]
    fn empty_driver_names_never_match() {
        assert_eq!(driver_for("net_null0", &[""]), None);
        assert_eq!(driver_for("x", &[]), None);
    }
}
