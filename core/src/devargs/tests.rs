use super::*;
use rstest::rstest;

fn args_of(d: &Devargs) -> Vec<(String, Option<String>)> {
    d.args().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect()
}

fn kv(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect()
}

#[rstest]
#[case("net_null0", BusKind::Vdev, "net_null0", None, &[], "net_null0")]
#[case(
    "net_null0,size=128,copy=1",
    BusKind::Vdev,
    "net_null0",
    None,
    &[("size", Some("128")), ("copy", Some("1"))],
    "net_null0,size=128,copy=1"
)]
#[case("0000:00:05.0", BusKind::Pci, "0000:00:05.0", Some(BusKind::Pci), &[], "0000:00:05.0")]
#[case("05.0", BusKind::Pci, "0000:00:05.0", Some(BusKind::Pci), &[], "0000:00:05.0")]
#[case("00:05.0", BusKind::Pci, "0000:00:05.0", Some(BusKind::Pci), &[], "0000:00:05.0")]
#[case("0000:AB:05.1", BusKind::Pci, "0000:ab:05.1", Some(BusKind::Pci), &[], "0000:ab:05.1")]
#[case("ab:05.1", BusKind::Pci, "0000:ab:05.1", Some(BusKind::Pci), &[], "0000:ab:05.1")]
#[case("pci:0000:00:05.0", BusKind::Pci, "0000:00:05.0", Some(BusKind::Pci), &[], "0000:00:05.0")]
#[case("pci:05.0,a=b", BusKind::Pci, "0000:00:05.0", Some(BusKind::Pci), &[("a", Some("b"))], "0000:00:05.0,a=b")]
#[case("vdev:net_null0", BusKind::Vdev, "net_null0", None, &[], "net_null0")]
#[case(
    "0000:00:05.0,key=v",
    BusKind::Pci,
    "0000:00:05.0",
    Some(BusKind::Pci),
    &[("key", Some("v"))],
    "0000:00:05.0,key=v"
)]
#[case(
    "net_tap0,iface=tap0,persist",
    BusKind::Vdev,
    "net_tap0",
    None,
    &[("iface", Some("tap0")), ("persist", None)],
    "net_tap0,iface=tap0,persist"
)]
#[case(
    "net_pcap0,rx_pcap=/tmp/a b.pcap,tx_pcap=/tmp/x=y.pcap",
    BusKind::Vdev,
    "net_pcap0",
    None,
    &[("rx_pcap", Some("/tmp/a b.pcap")), ("tx_pcap", Some("/tmp/x=y.pcap"))],
    "net_pcap0,rx_pcap=/tmp/a b.pcap,tx_pcap=/tmp/x=y.pcap"
)]
#[case(
    "net_x0,list=[1,2,3],k=",
    BusKind::Vdev,
    "net_x0",
    None,
    &[("list", Some("[1,2,3]")), ("k", Some(""))],
    "net_x0,list=[1,2,3],k="
)]
#[case("net_ring0,nodeaction=r1:0:CREATE", BusKind::Vdev, "net_ring0", None, &[("nodeaction", Some("r1:0:CREATE"))], "net_ring0,nodeaction=r1:0:CREATE")]
fn parse_accepts_every_form(
    #[case] text: &str,
    #[case] bus: BusKind,
    #[case] name: &str,
    #[case] pci: Option<BusKind>,
    #[case] args: &[(&str, Option<&str>)],
    #[case] raw: &str,
) {
    let d = Devargs::parse(text).unwrap();
    assert_eq!(d.bus(), bus);
    assert_eq!(d.name(), name);
    assert_eq!(d.pci_addr().is_some(), pci.is_some());
    if let Some(addr) = d.pci_addr() {
        assert_eq!(addr.to_string(), name);
    }
    assert_eq!(args_of(&d), kv(args));
    assert_eq!(d.raw(), raw);
    assert_eq!(d.to_string(), raw);
    // Round trip through the canonical form.
    let again = Devargs::parse(d.raw()).unwrap();
    assert_eq!(again.raw(), d.raw());
    assert_eq!(again.name(), d.name());
    assert_eq!(again.bus(), d.bus());
    assert_eq!(args_of(&again), args_of(&d));
}

#[test]
fn explicit_bus_is_remembered() {
    assert_eq!(Devargs::parse("vdev:net_null0").unwrap().explicit_bus(), Some(BusKind::Vdev));
    assert_eq!(Devargs::parse("net_null0").unwrap().explicit_bus(), None);
}

#[rstest]
#[case::empty("", DevargsError::Empty)]
#[case::empty_name(",a=1", DevargsError::BadName { name: "".into(), reason: "the name is empty".into() })]
#[case::unknown_prefix("usb:foo", DevargsError::BadBusPrefix { prefix: "usb".into() })]
#[case::unknown_prefix_caps("PCI:0000:00:05.0", DevargsError::BadBusPrefix { prefix: "PCI".into() })]
#[case::trailing_comma(
    "net_null0,",
    DevargsError::EmptyKey { device: "net_null0".into(), position: 1, arg: "".into() }
)]
#[case::double_comma(
    "net_null0,a=1,,b=2",
    DevargsError::EmptyKey { device: "net_null0".into(), position: 2, arg: "".into() }
)]
#[case::value_without_key(
    "net_null0,=5",
    DevargsError::EmptyKey { device: "net_null0".into(), position: 1, arg: "=5".into() }
)]
#[case::bad_key("net_null0,si ze=1", DevargsError::BadKey { device: "net_null0".into(), key: "si ze".into() })]
#[case::junk_after_bracket(
    "net_x0,l=[1,2]x,k=1",
    DevargsError::BadList {
        device: "net_x0".into(),
        key: "l".into(),
        value: "[1,2]x".into(),
        reason: "text after the closing ']' (expected ',' or the end)"
    }
)]
#[case::unclosed_bracket(
    "net_x0,l=[1,2",
    DevargsError::BadList {
        device: "net_x0".into(),
        key: "l".into(),
        value: "[1,2".into(),
        reason: "'[' without a closing ']'"
    }
)]
fn parse_refuses(#[case] text: &str, #[case] want: DevargsError) {
    assert_eq!(Devargs::parse(text).unwrap_err(), want);
}

#[rstest]
#[case("net-null0")]
#[case("net null0")]
#[case("nét0")]
#[case("0000:00:20.0")]
#[case("0000:00:05.8")]
#[case("00:05")]
#[case("pci:net_null0")]
#[case("vdev:0000:00:05.0")]
#[case("pci:")]
#[case("vdev:")]
#[case("vdev:net/null")]
fn parse_refuses_bad_names(#[case] text: &str) {
    let err = Devargs::parse(text).unwrap_err();
    assert!(matches!(err, DevargsError::BadName { .. }), "{text}: {err}");
}

#[test]
fn vdev_names_are_limited_to_63_characters() {
    let ok = "a".repeat(63);
    assert_eq!(Devargs::parse(&ok).unwrap().name(), ok);
    let long = "a".repeat(64);
    let err = Devargs::parse(&long).unwrap_err();
    assert!(matches!(&err, DevargsError::BadName { name, .. } if *name == long));
    assert!(err.to_string().contains("63"), "{err}");
}

#[test]
fn length_limit_is_4096_bytes() {
    let at_limit = format!("net_null0,k={}", "v".repeat(Devargs::MAX_LEN - 12));
    assert_eq!(at_limit.len(), 4096);
    let d = Devargs::parse(&at_limit).unwrap();
    assert_eq!(d.raw(), at_limit);
    let over = format!("{at_limit}v");
    assert_eq!(Devargs::parse(&over).unwrap_err(), DevargsError::TooLong { len: 4097, max: 4096 });
    // Huge inputs are refused by length, before any scan.
    let huge = "x".repeat(1 << 20);
    assert!(matches!(Devargs::parse(&huge), Err(DevargsError::TooLong { .. })));
}

#[test]
fn canonical_form_is_also_held_to_the_limit() {
    // "05.0" grows to "0000:00:05.0" (8 more bytes) when normalized.
    let text = format!("05.0,k={}", "v".repeat(Devargs::MAX_LEN - 7));
    assert_eq!(text.len(), 4096);
    assert_eq!(Devargs::parse(&text).unwrap_err(), DevargsError::TooLong { len: 4104, max: 4096 });
}

const NULL_KEYS: &[KeySpec] = &[
    KeySpec::new("size", KeyKind::U64 { min: 1, max: 9600 }, "packet size"),
    KeySpec::new("copy", KeyKind::Bool, "copy data"),
    KeySpec::new("name", KeyKind::Str { max_len: 8 }, "a label"),
    KeySpec::new("path", KeyKind::Path, "a file"),
    KeySpec::new("mac", KeyKind::Mac, "MAC address"),
    KeySpec::new("iface", KeyKind::Iface, "interface"),
    KeySpec::new("rx", KeyKind::Path, "rx file").repeatable(),
];

#[rstest]
#[case("size=1", "size", Value::U64(1))]
#[case("size=9600", "size", Value::U64(9600))]
#[case("size=0x80", "size", Value::U64(128))]
#[case("size=0X80", "size", Value::U64(128))]
#[case("copy", "copy", Value::Bool(true))]
#[case("copy=1", "copy", Value::Bool(true))]
#[case("copy=0", "copy", Value::Bool(false))]
#[case("copy=true", "copy", Value::Bool(true))]
#[case("copy=FALSE", "copy", Value::Bool(false))]
#[case("copy=yes", "copy", Value::Bool(true))]
#[case("copy=no", "copy", Value::Bool(false))]
#[case("copy=on", "copy", Value::Bool(true))]
#[case("copy=off", "copy", Value::Bool(false))]
#[case("name=a", "name", Value::Str("a".into()))]
#[case("name=12345678", "name", Value::Str("12345678".into()))]
#[case("path=/tmp/x.pcap", "path", Value::Str("/tmp/x.pcap".into()))]
#[case("mac=02:00:00:aa:BB:0f", "mac", Value::Mac([2, 0, 0, 0xaa, 0xbb, 0x0f]))]
#[case("mac=02-00-00-aa-bb-0f", "mac", Value::Mac([2, 0, 0, 0xaa, 0xbb, 0x0f]))]
#[case("iface=tap0", "iface", Value::Str("tap0".into()))]
#[case("iface=abcdefghijklmno", "iface", Value::Str("abcdefghijklmno".into()))]
fn validate_types_good_values(#[case] arg: &str, #[case] key: &str, #[case] want: Value) {
    let d = Devargs::parse(&format!("net_null0,{arg}")).unwrap();
    let kv = d.validate("net_null", NULL_KEYS).unwrap();
    assert_eq!(kv.get(key), Some(&want));
    assert_eq!(kv.len(), 1);
    assert!(kv.contains(key));
}

#[rstest]
#[case("size=0", "size")]
#[case("size=9601", "size")]
#[case("size=abc", "size")]
#[case("size=-1", "size")]
#[case("size=+5", "size")]
#[case("size= 5", "size")]
#[case("size=0x", "size")]
#[case("size=1.5", "size")]
#[case("size=", "size")]
#[case("size=99999999999999999999999", "size")]
#[case("copy=2", "copy")]
#[case("copy=", "copy")]
#[case("copy=y", "copy")]
#[case("name=", "name")]
#[case("name=123456789", "name")]
#[case("path=", "path")]
#[case("mac=02:00:00:aa:bb", "mac")]
#[case("mac=02:00:00:aa:bb:0f:11", "mac")]
#[case("mac=02:00:00:aa:bb:0g", "mac")]
#[case("mac=2:00:00:aa:bb:0f", "mac")]
#[case("mac=02:00-00:aa:bb:0f", "mac")]
#[case("mac=0200.00aa.bb0f", "mac")]
#[case("iface=", "iface")]
#[case("iface=abcdefghijklmnop", "iface")]
#[case("iface=a/b", "iface")]
#[case("iface=a b", "iface")]
#[case("iface=a:1", "iface")]
#[case("iface=..", "iface")]
fn validate_refuses_bad_values_naming_driver_key_and_value(#[case] arg: &str, #[case] key: &str) {
    let d = Devargs::parse(&format!("net_null0,{arg}")).unwrap();
    let value = arg.split_once('=').unwrap().1;
    let err = d.validate("net_null", NULL_KEYS).unwrap_err();
    match &err {
        DevargsError::BadValue { driver, key: k, value: v, .. } => {
            assert_eq!((driver.as_str(), k.as_str(), v.as_str()), ("net_null", key, value));
        }
        other => panic!("{arg}: unexpected {other}"),
    }
}

#[test]
fn bad_value_message_names_driver_key_value_and_range() {
    let d = Devargs::parse("net_null0,size=abc").unwrap();
    assert_eq!(
        d.validate("net_null", NULL_KEYS).unwrap_err().to_string(),
        r#"net_null: bad value "abc" for key "size": expected an integer in 1..=9600"#
    );
}

#[rstest]
#[case("size")]
#[case("name")]
#[case("path")]
#[case("mac")]
#[case("iface")]
fn bare_key_needs_a_value_unless_bool(#[case] key: &str) {
    let d = Devargs::parse(&format!("net_null0,{key}")).unwrap();
    assert!(matches!(
        d.validate("net_null", NULL_KEYS).unwrap_err(),
        DevargsError::MissingValue { key: ref k, .. } if k == key
    ));
}

#[test]
fn unknown_key_is_named() {
    let d = Devargs::parse("net_null0,size=64,bogus=1").unwrap();
    let err = d.validate("net_null", NULL_KEYS).unwrap_err();
    assert_eq!(err, DevargsError::UnknownKey { driver: "net_null".into(), key: "bogus".into() });
    assert_eq!(err.to_string(), r#"net_null: unknown key "bogus""#);
}

#[test]
fn repeated_key_is_refused_unless_repeatable() {
    let d = Devargs::parse("net_null0,size=64,size=65").unwrap();
    assert_eq!(
        d.validate("net_null", NULL_KEYS).unwrap_err(),
        DevargsError::DuplicateKey { driver: "net_null".into(), key: "size".into() }
    );
    let d = Devargs::parse("net_null0,rx=/a,rx=/b,size=64").unwrap();
    let kv = d.validate("net_null", NULL_KEYS).unwrap();
    assert_eq!(kv.get_all_str("rx"), ["/a", "/b"]);
    assert_eq!(kv.get_str("rx"), Some("/a"));
}

#[test]
fn missing_required_key_is_named() {
    const KEYS: &[KeySpec] = &[
        KeySpec::new("iface", KeyKind::Iface, "interface").required(),
        KeySpec::new("persist", KeyKind::Bool, "keep it"),
    ];
    let d = Devargs::parse("net_tap0,persist").unwrap();
    let err = d.validate("net_tap", KEYS).unwrap_err();
    assert_eq!(err, DevargsError::MissingKey { driver: "net_tap".into(), key: "iface".into() });
    assert_eq!(err.to_string(), r#"net_tap: missing required key "iface""#);
    let kv = Devargs::parse("net_tap0,iface=tap0").unwrap().validate("net_tap", KEYS).unwrap();
    assert_eq!(kv.get_str("iface"), Some("tap0"));
    assert_eq!(kv.get_bool("persist"), None);
}

#[test]
fn getters_of_another_kind_return_none() {
    let kv = Devargs::parse("net_null0,size=5,copy,mac=02:00:00:00:00:01,name=x")
        .unwrap()
        .validate("net_null", NULL_KEYS)
        .unwrap();
    assert_eq!(kv.get_u64("size"), Some(5));
    assert_eq!(kv.get_bool("size"), None);
    assert_eq!(kv.get_str("size"), None);
    assert_eq!(kv.get_mac("mac"), Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(kv.get_u64("mac"), None);
    assert_eq!(kv.get_bool("copy"), Some(true));
    assert_eq!(kv.get_str("name"), Some("x"));
    assert_eq!(kv.get_all_str("size"), Vec::<&str>::new());
    assert_eq!(kv.get_u64("absent"), None);
    assert!(!kv.contains("absent"));
    let keys: Vec<&str> = kv.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["size", "copy", "mac", "name"]);
}

#[test]
fn pci_devargs_validate_like_vdev_ones() {
    const KEYS: &[KeySpec] = &[KeySpec::new("rxq", KeyKind::U64 { min: 1, max: 64 }, "rx queues")];
    let d = Devargs::parse("pci:00:05.0,rxq=0x10").unwrap();
    assert_eq!(d.validate("ixgbe", KEYS).unwrap().get_u64("rxq"), Some(16));
}

#[test]
fn key_kind_describes_itself() {
    assert_eq!(KeyKind::U64 { min: 1, max: 9600 }.to_string(), "an integer in 1..=9600");
    assert_eq!(KeyKind::Str { max_len: 8 }.to_string(), "a string of 1..=8 bytes");
}
