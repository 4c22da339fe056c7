//! Device addresses: which bus a device is on ([`BusKind`]) and where a PCI function sits
//! ([`PciAddr`], with its vendor/device [`PciId`]).
//!
//! These are the words [`crate::devargs`] parses a device name into and [`crate::bus`] scans and
//! filters by; both import them from here, so neither imports the other.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// The bus a device lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BusKind {
    /// A PCI function, named by its address.
    Pci,
    /// A virtual device, named `<driver><suffix>`.
    Vdev,
}

impl BusKind {
    /// The prefix word: `pci` or `vdev`.
    pub fn as_str(self) -> &'static str {
        match self {
            BusKind::Pci => "pci",
            BusKind::Vdev => "vdev",
        }
    }
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest device number on a bus.
pub const MAX_DEVID: u8 = 31;

/// Largest function number of a device.
pub const MAX_FUNCTION: u8 = 7;

/// A PCI address that did not parse, or a field out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad PCI address {addr:?}: {reason}")]
pub struct PciAddrError {
    /// The text given.
    pub addr: String,
    /// What is wrong with it.
    pub reason: String,
}
/// The address of a PCI function: `domain:bus:devid.function`.
///
/// Ordering and equality compare domain, then bus, then device, then function: two addresses that
/// differ only in the function or only in the domain are different (the bug DPDK fixed in
/// "pci: fix PCI address compare").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    /// PCI segment (domain), `0000` on most machines.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, `0..=31`.
    pub devid: u8,
    /// Function number, `0..=7`.
    pub function: u8,
}

impl PciAddr {
    /// Builds an address, refusing a device number above 31 or a function above 7.
    pub fn new(domain: u32, bus: u8, devid: u8, function: u8) -> Result<PciAddr, PciAddrError> {
        let addr = PciAddr { domain, bus, devid, function };
        if devid > MAX_DEVID {
            return Err(PciAddrError {
                addr: addr.to_string(),
                reason: format!("device number {devid:#x} is above {MAX_DEVID:#x}"),
            });
        }
        if function > MAX_FUNCTION {
            return Err(PciAddrError {
                addr: addr.to_string(),
                reason: format!("function {function} is above {MAX_FUNCTION}"),
            });
        }
        Ok(addr)
    }

    /// Parses only the full form `DDDD:BB:DD.F`, as Linux names sysfs entries.
    pub fn parse_full(s: &str) -> Result<PciAddr, PciAddrError> {
        let (addr, had_domain) = parse_addr(s)?;
        if !had_domain {
            return Err(bad_addr(s, "expected the full form DDDD:BB:DD.F"));
        }
        Ok(addr)
    }
}

fn bad_addr(s: &str, reason: impl Into<String>) -> PciAddrError {
    PciAddrError { addr: s.to_string(), reason: reason.into() }
}

/// Parses a hex field of 1..=`max_digits` digits.
fn hex_field(s: &str, whole: &str, what: &str, max_digits: usize) -> Result<u32, PciAddrError> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_addr(whole, format!("{what} {s:?} is not 1 to {max_digits} hex digits")));
    }
    u32::from_str_radix(s, 16).map_err(|_| bad_addr(whole, format!("{what} {s:?} is not hex")))
}

/// Parses any of the three forms; also says whether a domain was given.
fn parse_addr(s: &str) -> Result<(PciAddr, bool), PciAddrError> {
    const FORMS: &str = "expected DDDD:BB:DD.F, BB:DD.F or DD.F";
    let Some((head, func)) = s.rsplit_once('.') else {
        return Err(bad_addr(s, format!("no '.' before the function; {FORMS}")));
    };
    let function = match func.as_bytes() {
        [d @ b'0'..=b'7'] => d - b'0',
        _ => return Err(bad_addr(s, format!("function {func:?} is not a digit 0-7"))),
    };
    let fields: Vec<&str> = head.split(':').collect();
    let (domain, bus, dev) = match fields.as_slice() {
        [dev] => (None, None, *dev),
        [bus, dev] => (None, Some(*bus), *dev),
        [domain, bus, dev] => (Some(*domain), Some(*bus), *dev),
        _ => return Err(bad_addr(s, format!("too many ':' fields; {FORMS}"))),
    };
    let domain_v = match domain {
        Some(d) => hex_field(d, s, "domain", 8)?,
        None => 0,
    };
    let bus_v = match bus {
        Some(b) => hex_field(b, s, "bus", 2)?,
        None => 0,
    };
    let dev_v = hex_field(dev, s, "device", 2)?;
    if dev_v > u32::from(MAX_DEVID) {
        return Err(bad_addr(s, format!("device {dev:?} is above {MAX_DEVID:#x}")));
    }
    // The fields were bounded to 2 hex digits above, so these conversions cannot fail.
    let bus_v = u8::try_from(bus_v).map_err(|_| bad_addr(s, "bus out of range"))?;
    let dev_v = u8::try_from(dev_v).map_err(|_| bad_addr(s, "device out of range"))?;
    Ok((PciAddr { domain: domain_v, bus: bus_v, devid: dev_v, function }, domain.is_some()))
}

impl FromStr for PciAddr {
    type Err = PciAddrError;

    /// Accepts `DDDD:BB:DD.F`, `BB:DD.F` and `DD.F` (hex fields, domain and bus 0 when absent,
    /// function a decimal digit 0-7).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_addr(s).map(|(a, _)| a)
    }
}

impl fmt::Display for PciAddr {
    /// Writes the canonical form `0000:00:05.0` (lower-case hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.domain, self.bus, self.devid, self.function)
    }
}

/// Vendor and device id of a PCI function, the key drivers match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciId {
    /// Vendor id (`0x8086` for Intel).
    pub vendor: u16,
    /// Device id (`0x10fb` for an 82599).
    pub device: u16,
}

impl fmt::Display for PciId {
    /// Writes `8086:10fb`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn a(domain: u32, bus: u8, devid: u8, function: u8) -> PciAddr {
        PciAddr { domain, bus, devid, function }
    }

    #[rstest]
    #[case("0000:00:05.0", a(0, 0, 5, 0))]
    #[case("0000:af:1f.7", a(0, 0xaf, 0x1f, 7))]
    #[case("0000:AF:1F.7", a(0, 0xaf, 0x1f, 7))]
    #[case("10000:01:00.1", a(0x10000, 1, 0, 1))]
    #[case("ffff:ff:1f.7", a(0xffff, 0xff, 0x1f, 7))]
    #[case("00:05.0", a(0, 0, 5, 0))]
    #[case("3b:00.1", a(0, 0x3b, 0, 1))]
    #[case("05.0", a(0, 0, 5, 0))]
    #[case("5.3", a(0, 0, 5, 3))]
    fn address_parses_every_form(#[case] text: &str, #[case] want: PciAddr) {
        assert_eq!(text.parse::<PciAddr>().unwrap(), want);
    }

    #[rstest]
    #[case("")]
    #[case("0000:00:05")]
    #[case("0000:00:05.8")]
    #[case("0000:00:05.a")]
    #[case("0000:00:05.")]
    #[case("0000:00:20.0")]
    #[case("0000:100:05.0")]
    #[case("000000000:00:05.0")]
    #[case("0:0000:00:05.0")]
    #[case("0000::05.0")]
    #[case("g000:00:05.0")]
    #[case("0000:00:05.0 ")]
    #[case("+1:00:05.0")]
    #[case("net_null0")]
    #[case(".0")]
    #[case("0000:00:05.00")]
    fn address_refuses_malformed_text(#[case] text: &str) {
        let err = text.parse::<PciAddr>().unwrap_err();
        assert!(matches!(&err, PciAddrError { addr, .. } if addr == text), "{err}");
    }

    #[rstest]
    #[case("0000:00:05.0")]
    #[case("00:05.0")]
    #[case("05.0")]
    fn address_displays_canonically(#[case] text: &str) {
        assert_eq!(text.parse::<PciAddr>().unwrap().to_string(), "0000:00:05.0");
        assert_eq!(a(0x1a, 0xbc, 0x1f, 7).to_string(), "001a:bc:1f.7");
    }

    #[test]
    fn parse_full_refuses_short_forms() {
        assert!(PciAddr::parse_full("00:05.0").is_err());
        assert!(PciAddr::parse_full("05.0").is_err());
        assert_eq!(PciAddr::parse_full("0000:00:05.0").unwrap(), a(0, 0, 5, 0));
    }

    #[rstest]
    #[case(0, 0, 32, 0)]
    #[case(0, 0, 0, 8)]
    fn new_refuses_out_of_range_fields(#[case] d: u32, #[case] b: u8, #[case] dev: u8, #[case] f: u8) {
        assert!(PciAddr::new(d, b, dev, f).is_err());
    }

    // Regression for DPDK's "fix PCI address compare": addresses differing only in function or
    // only in domain must differ and order field by field.
    #[rstest]
    #[case("0000:00:05.0", "0000:00:05.1", std::cmp::Ordering::Less)]
    #[case("0000:00:05.7", "0000:00:05.1", std::cmp::Ordering::Greater)]
    #[case("0001:00:05.0", "0000:00:05.0", std::cmp::Ordering::Greater)]
    #[case("0000:00:05.0", "10000:00:05.0", std::cmp::Ordering::Less)]
    #[case("0000:01:00.0", "0000:00:1f.7", std::cmp::Ordering::Greater)]
    #[case("0000:00:1f.0", "0000:00:05.7", std::cmp::Ordering::Greater)]
    #[case("0001:00:00.0", "0000:ff:1f.7", std::cmp::Ordering::Greater)]
    #[case("0000:00:05.0", "05.0", std::cmp::Ordering::Equal)]
    fn addresses_compare_domain_bus_device_function(
        #[case] x: &str,
        #[case] y: &str,
        #[case] want: std::cmp::Ordering,
    ) {
        let (x, y) = (x.parse::<PciAddr>().unwrap(), y.parse::<PciAddr>().unwrap());
        assert_eq!(x.cmp(&y), want);
        assert_eq!(x == y, want == std::cmp::Ordering::Equal);
    }

    #[test]
    fn shuffled_addresses_sort_in_field_order() {
        let sorted = [
            "0000:00:00.0",
            "0000:00:00.1",
            "0000:00:00.7",
            "0000:00:01.0",
            "0000:00:1f.3",
            "0000:01:00.0",
            "0000:01:00.1",
            "0000:ff:1f.7",
            "0001:00:00.0",
            "0001:00:00.1",
            "ffff:00:00.0",
            "10000:00:00.0",
        ];
        let want: Vec<PciAddr> = sorted.iter().map(|s| s.parse().unwrap()).collect();
        let mut shuffled = want.clone();
        // A fixed permutation, so the test is deterministic.
        for (i, j) in [(0, 11), (1, 7), (2, 9), (3, 5), (4, 10), (6, 8), (2, 3)] {
            shuffled.swap(i, j);
        }
        assert_ne!(shuffled, want);
        shuffled.sort();
        assert_eq!(shuffled, want);
        let set: std::collections::HashSet<PciAddr> = want.iter().copied().collect();
        assert_eq!(set.len(), want.len());
    }
}
