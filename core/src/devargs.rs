//! Device arguments (`bus:name,key=value`), parsed and validated against a driver's declared keys.
//!
//! Two steps, as DPDK's `rte_devargs` and `rte_kvargs`:
//!
//! 1. [`Devargs::parse`] checks the syntax only: an optional `pci:` / `vdev:` prefix, the device name
//!    (a PCI address in any of its three forms, or a vdev name of `[A-Za-z0-9_]`, at most 63
//!    characters), then `key=value` or bare `key` arguments separated by commas. A value that starts
//!    with `[` runs to the next `]` and may hold commas (`corelist=[1,2]`).
//! 2. [`Devargs::validate`] checks the arguments against the driver's [`KeySpec`] table and returns
//!    typed [`Kvargs`]. Unknown keys, bad values, duplicates and missing required keys are errors that
//!    name the driver, the key and the value; nothing falls back to a default silently.
//!
//! ```
//! use lab_core::devargs::{Devargs, KeyKind, KeySpec};
//! const KEYS: &[KeySpec] = &[
//!     KeySpec::new("size", KeyKind::U64 { min: 1, max: 9600 }, "packet size in bytes"),
//!     KeySpec::new("copy", KeyKind::Bool, "copy packet data"),
//! ];
//! let d = Devargs::parse("net_null0,size=128,copy").unwrap();
//! let kv = d.validate("net_null", KEYS).unwrap();
//! assert_eq!(kv.get_u64("size"), Some(128));
//! assert_eq!(kv.get_bool("copy"), Some(true));
//! ```

#![forbid(unsafe_code)]

use std::fmt;

pub use crate::addr::BusKind;
use crate::addr::PciAddr;

/// Longest vdev name (DPDK's `RTE_DEV_NAME_MAX_LEN` is 64 including the terminator).
pub const MAX_VDEV_NAME_LEN: usize = 63;

/// Longest Linux interface name (`IFNAMSIZ` is 16 including the terminator).
pub const MAX_IFACE_LEN: usize = 15;

/// What went wrong with a devargs string: every variant names what a user needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevargsError {
    /// Nothing was given.
    #[error("empty device arguments")]
    Empty,
    /// The string (or its canonical form) is longer than [`Devargs::MAX_LEN`].
    #[error("device arguments are {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The device name is not a PCI address or a valid vdev name.
    #[error("bad device name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `xxx:` before the name is not a known bus.
    #[error("unknown bus prefix {prefix:?}: expected \"pci:\" or \"vdev:\"")]
    BadBusPrefix {
        /// The prefix word as given.
        prefix: String,
    },
    /// An argument has no key (`,=5` or `,,`).
    #[error("device {device:?}: argument {position} ({arg:?}) has an empty key")]
    EmptyKey {
        /// The device name.
        device: String,
        /// 1-based position of the argument after the name.
        position: usize,
        /// The argument as given.
        arg: String,
    },
    /// A key holds characters other than `[A-Za-z0-9_.-]`.
    #[error("device {device:?}: bad key {key:?}: expected characters of [A-Za-z0-9_.-]")]
    BadKey {
        /// The device name.
        device: String,
        /// The key as given.
        key: String,
    },
    /// A `[...]` list value is not closed, or is followed by text other than `,`.
    #[error("device {device:?}: bad list value {value:?} for key {key:?}: {reason}")]
    BadList {
        /// The device name.
        device: String,
        /// The key.
        key: String,
        /// The value as given (up to the end of the text, or the next ',' after the list).
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The driver declares no such key.
    #[error("{driver}: unknown key {key:?}")]
    UnknownKey {
        /// The driver validating.
        driver: String,
        /// The key.
        key: String,
    },
    /// The value does not fit the key's kind.
    #[error("{driver}: bad value {value:?} for key {key:?}: expected {expected}")]
    BadValue {
        /// The driver validating.
        driver: String,
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// What the key accepts.
        expected: String,
    },
    /// A key that needs a value was given bare.
    #[error("{driver}: key {key:?} needs a value: expected {expected}")]
    MissingValue {
        /// The driver validating.
        driver: String,
        /// The key.
        key: String,
        /// What the key accepts.
        expected: String,
    },
    /// A required key is absent.
    #[error("{driver}: missing required key {key:?}")]
    MissingKey {
        /// The driver validating.
        driver: String,
        /// The key.
        key: String,
    },
    /// A non-repeatable key was given more than once.
    #[error("{driver}: key {key:?} given more than once")]
    DuplicateKey {
        /// The driver validating.
        driver: String,
        /// The key.
        key: String,
    },
}

/// The type a driver argument accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An integer in `min..=max`, decimal or `0x` hex.
    U64 {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// `0|1|true|false|yes|no|on|off` (any case); a bare key means true.
    Bool,
    /// A string of 1..=`max_len` bytes.
    Str {
        /// Longest accepted value in bytes.
        max_len: usize,
    },
    /// A non-empty filesystem path.
    Path,
    /// A MAC address, six two-digit hex groups separated by `:` or `-`.
    Mac,
    /// A Linux interface name: 1..=15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
    Iface,
}

impl fmt::Display for KeyKind {
    /// What the kind accepts, as error messages say it ("an integer in 1..=9600").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::U64 { min, max } => write!(f, "an integer in {min}..={max}"),
            KeyKind::Bool => f.write_str("a boolean (0|1|true|false|yes|no|on|off)"),
            KeyKind::Str { max_len } => write!(f, "a string of 1..={max_len} bytes"),
            KeyKind::Path => f.write_str("a non-empty path"),
            KeyKind::Mac => f.write_str("a MAC address like aa:bb:cc:dd:ee:ff"),
            KeyKind::Iface => {
                write!(f, "an interface name of 1..={MAX_IFACE_LEN} bytes without '/', ':' or whitespace")
            }
        }
    }
}

/// One key a driver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// The key.
    pub name: &'static str,
    /// What values it takes.
    pub kind: KeyKind,
    /// The key must be given.
    pub required: bool,
    /// The key may be given more than once (read with [`Kvargs::get_all_str`] and friends).
    pub repeatable: bool,
    /// One line for `--help` style listings.
    pub help: &'static str,
}

impl KeySpec {
    /// An optional, non-repeatable key.
    pub const fn new(name: &'static str, kind: KeyKind, help: &'static str) -> KeySpec {
        KeySpec { name, kind, required: false, repeatable: false, help }
    }

    /// The same key, required.
    pub const fn required(mut self) -> KeySpec {
        self.required = true;
        self
    }

    /// The same key, repeatable.
    pub const fn repeatable(mut self) -> KeySpec {
        self.repeatable = true;
        self
    }
}

/// Parsed device arguments: the device name and its arguments in order, syntax-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devargs {
    raw: String,
    explicit_bus: Option<BusKind>,
    bus: BusKind,
    name: String,
    pci: Option<PciAddr>,
    args: Vec<(String, Option<String>)>,
}

/// Checks a device name; returns its bus, normalized name and PCI address.
pub(crate) fn parse_device_name(
    name: &str,
    bus: Option<BusKind>,
) -> Result<(BusKind, String, Option<PciAddr>), DevargsError> {
    let bad = |reason: String| DevargsError::BadName { name: name.to_string(), reason };
    if name.is_empty() {
        return Err(bad("the name is empty".into()));
    }
    match bus {
        Some(BusKind::Pci) => {
            let addr = name.parse::<PciAddr>().map_err(|e| bad(e.to_string()))?;
            Ok((BusKind::Pci, addr.to_string(), Some(addr)))
        }
        Some(BusKind::Vdev) => {
            check_vdev_name(name).map_err(bad)?;
            Ok((BusKind::Vdev, name.to_string(), None))
        }
        None => match name.parse::<PciAddr>() {
            Ok(addr) => Ok((BusKind::Pci, addr.to_string(), Some(addr))),
            Err(pci_err) => match check_vdev_name(name) {
                Ok(()) => Ok((BusKind::Vdev, name.to_string(), None)),
                // Looks like an address (has '.' or ':'): the PCI reason is the useful one.
                Err(_) if name.contains(['.', ':']) => Err(bad(pci_err.to_string())),
                Err(reason) => Err(bad(reason)),
            },
        },
    }
}

fn check_vdev_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_VDEV_NAME_LEN {
        return Err(format!("a vdev name is at most {MAX_VDEV_NAME_LEN} characters, this one is {}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(format!("character {c:?} is not allowed in a vdev name (expected [A-Za-z0-9_])"));
    }
    Ok(())
}

fn key_is_valid(key: &str) -> bool {
    key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses an unsigned integer: decimal or `0x` hex, nothing else (no sign, no spaces).
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Splits the argument list after the name, honouring `[...]` values.
fn split_args(device: &str, s: &str) -> Result<Vec<(String, Option<String>)>, DevargsError> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut position = 0;
    loop {
        position += 1;
        let (arg, value, next) = match rest.find([',', '=']) {
            Some(i) if rest.as_bytes()[i] == b'=' => {
                let key = &rest[..i];
                let after = &rest[i + 1..];
                let end = if after.starts_with('[') {
                    match after.find(']') {
                        Some(j) => j + 1,
                        None => {
                            return Err(DevargsError::BadList {
                                device: device.to_string(),
                                key: key.to_string(),
                                value: after.to_string(),
                                reason: "'[' without a closing ']'",
                            })
                        }
                    }
                } else {
                    after.find(',').unwrap_or(after.len())
                };
                let value = &after[..end];
                let tail = &after[end..];
                if !tail.is_empty() && !tail.starts_with(',') {
                    let upto = tail.find(',').map_or(after.len(), |j| end + j);
                    return Err(DevargsError::BadList {
                        device: device.to_string(),
                        key: key.to_string(),
                        value: after[..upto].to_string(),
                        reason: "text after the closing ']' (expected ',' or the end)",
                    });
                }
                (key, Some(value), tail)
            }
            Some(i) => (&rest[..i], None, &rest[i..]),
            None => (rest, None, ""),
        };
        if arg.is_empty() {
            let whole = match value {
                Some(v) => format!("={v}"),
                None => String::new(),
            };
            return Err(DevargsError::EmptyKey { device: device.to_string(), position, arg: whole });
        }
        if !key_is_valid(arg) {
            return Err(DevargsError::BadKey { device: device.to_string(), key: arg.to_string() });
        }
        out.push((arg.to_string(), value.map(str::to_string)));
        match next.strip_prefix(',') {
            Some(n) => rest = n,
            // `next` is empty or starts with ',' by construction.
            None => return Ok(out),
        }
    }
}

impl Devargs {
    /// Longest devargs string accepted, in bytes (input and canonical form alike).
    pub const MAX_LEN: usize = 4096;

    /// Parses `[pci:|vdev:]name[,key[=value]]...`.
    ///
    /// The name is a PCI address (`0000:00:05.0`, `00:05.0`, `05.0`) or a vdev name; without a
    /// prefix the bus is PCI when the name parses as an address, else vdev.
    pub fn parse(s: &str) -> Result<Devargs, DevargsError> {
        if s.len() > Self::MAX_LEN {
            return Err(DevargsError::TooLong { len: s.len(), max: Self::MAX_LEN });
        }
        if s.is_empty() {
            return Err(DevargsError::Empty);
        }
        let (head, rest) = match s.split_once(',') {
            Some((h, r)) => (h, Some(r)),
            None => (s, None),
        };
        let (explicit_bus, name) = match head.split_once(':') {
            Some(("pci", n)) => (Some(BusKind::Pci), n),
            Some(("vdev", n)) => (Some(BusKind::Vdev), n),
            Some((prefix, _))
                if head.parse::<PciAddr>().is_err()
                    && !prefix.is_empty()
                    && prefix.chars().all(|c| c.is_ascii_alphabetic())
                    && !prefix.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                return Err(DevargsError::BadBusPrefix { prefix: prefix.to_string() })
            }
            _ => (None, head),
        };
        let (bus, name, pci) = parse_device_name(name, explicit_bus)?;
        let args = match rest {
            Some(r) => split_args(&name, r)?,
            None => Vec::new(),
        };
        let mut raw = name.clone();
        for (k, v) in &args {
            raw.push(',');
            raw.push_str(k);
            if let Some(v) = v {
                raw.push('=');
                raw.push_str(v);
            }
        }
        if raw.len() > Self::MAX_LEN {
            return Err(DevargsError::TooLong { len: raw.len(), max: Self::MAX_LEN });
        }
        Ok(Devargs { raw, explicit_bus, bus, name, pci, args })
    }

    /// The device name: `net_null0`, or a PCI address normalized to `0000:00:05.0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bus: the explicit prefix if any, else PCI when the name is an address, else vdev.
    pub fn bus(&self) -> BusKind {
        self.bus
    }

    /// The bus prefix as written (`pci:` / `vdev:`), if any.
    pub fn explicit_bus(&self) -> Option<BusKind> {
        self.explicit_bus
    }

    /// The PCI address, for a PCI device.
    pub fn pci_addr(&self) -> Option<PciAddr> {
        self.pci
    }

    /// The arguments in order: `(key, Some(value))`, or `(key, None)` for a bare key.
    pub fn args(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.args.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// The canonical text `name,k=v,...` (normalized name, no bus prefix); parses back to the same
    /// name, bus and arguments.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Checks the arguments against `keys` for `driver` and returns them typed.
    ///
    /// Errors, in this order: an unknown key, a repeated non-repeatable key or a bad value (the first
    /// offending argument), then the first missing required key.
    pub fn validate(&self, driver: &str, keys: &[KeySpec]) -> Result<Kvargs, DevargsError> {
        let mut out = Kvargs::default();
        for (key, value) in self.args() {
            let Some(spec) = keys.iter().find(|s| s.name == key) else {
                return Err(DevargsError::UnknownKey { driver: driver.to_string(), key: key.to_string() });
            };
            if !spec.repeatable && out.contains(key) {
                return Err(DevargsError::DuplicateKey { driver: driver.to_string(), key: key.to_string() });
            }
            let typed = typed_value(driver, key, value, spec.kind)?;
            out.values.push((spec.name.to_string(), typed));
        }
        if let Some(missing) = keys.iter().find(|s| s.required && !out.contains(s.name)) {
            return Err(DevargsError::MissingKey { driver: driver.to_string(), key: missing.name.to_string() });
        }
        Ok(out)
    }
}

impl fmt::Display for Devargs {
    /// Writes [`Devargs::raw`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Devargs {
    type Err = DevargsError;

    /// Same as [`Devargs::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Devargs::parse(s)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains(':') { ':' } else { '-' };
    let mut out = [0u8; 6];
    let mut groups = s.split(sep);
    for byte in &mut out {
        let g = groups.next()?;
        if g.len() != 2 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(g, 16).ok()?;
    }
    groups.next().is_none().then_some(out)
}

fn iface_is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IFACE_LEN
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn typed_value(driver: &str, key: &str, value: Option<&str>, kind: KeyKind) -> Result<Value, DevargsError> {
    let Some(v) = value else {
        return match kind {
            KeyKind::Bool => Ok(Value::Bool(true)),
            _ => Err(DevargsError::MissingValue {
                driver: driver.to_string(),
                key: key.to_string(),
                expected: kind.to_string(),
            }),
        };
    };
    let typed = match kind {
        KeyKind::U64 { min, max } => parse_u64(v).filter(|n| (min..=max).contains(n)).map(Value::U64),
        KeyKind::Bool => parse_bool(v).map(Value::Bool),
        KeyKind::Str { max_len } => (!v.is_empty() && v.len() <= max_len).then(|| Value::Str(v.to_string())),
        KeyKind::Path => (!v.is_empty()).then(|| Value::Str(v.to_string())),
        KeyKind::Mac => parse_mac(v).map(Value::Mac),
        KeyKind::Iface => iface_is_valid(v).then(|| Value::Str(v.to_string())),
    };
    typed.ok_or_else(|| DevargsError::BadValue {
        driver: driver.to_string(),
        key: key.to_string(),
        value: v.to_string(),
        expected: kind.to_string(),
    })
}

/// A validated argument value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// From [`KeyKind::U64`].
    U64(u64),
    /// From [`KeyKind::Bool`].
    Bool(bool),
    /// From [`KeyKind::Str`], [`KeyKind::Path`] and [`KeyKind::Iface`].
    Str(String),
    /// From [`KeyKind::Mac`].
    Mac([u8; 6]),
}

/// Validated, typed driver arguments, in the order given.
///
/// Getters return `None` when the key is absent or was declared with another kind; for a
/// repeatable key they return the first occurrence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kvargs {
    values: Vec<(String, Value)>,
}

impl Kvargs {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> impl Iterator<Item = &Value> {
        let key = key.to_string();
        self.values.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// An integer key.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Value::U64(n) => Some(*n),
            _ => None,
        }
    }

    /// A boolean key.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A string, path or interface key.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Every value of a repeatable string, path or interface key, in order.
    pub fn get_all_str(&self, key: &str) -> Vec<&str> {
        self.get_all(key)
            .filter_map(|v| match v {
                Value::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A MAC address key.
    pub fn get_mac(&self, key: &str) -> Option<[u8; 6]> {
        match self.get(key)? {
            Value::Mac(m) => Some(*m),
            _ => None,
        }
    }

    /// True when `key` was given.
    pub fn contains(&self, key: &str) -> bool {
        self.values.iter().any(|(k, _)| k == key)
    }

    /// All `(key, value)` pairs in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no argument was given.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests;
