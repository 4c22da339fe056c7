use super::*;

fn parse(t: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(t, Path::new("x.toml"))
}

#[test]
fn a_full_scenario_parses_with_lines() {
    let s = parse(
        "[lab]\nsecondaries = 2\nvdevs = [\"net_null0\"]\n[[lab.nic]]\nbdf = \"0000:00:05.0\"\nwire = \"loopback\"\n\
         [lab.process.s3]\nlate = true\n\n[[step]]\non = \"s1\"\nattach = \"net_null1\"\nports = { 0 = \"net_null0\", 1 = \"net_null1\" }\n\
         [[step]]\ndetach = 1\nfailure = \"locked\"\n[[step]]\nstart = \"s3\"\n[[step]]\nlink_down = \"0000:00:05.0\"\n",
    )
    .unwrap();
    assert_eq!(s.steps.len(), 4);
    assert_eq!(s.steps[0].line, 10);
    assert_eq!(s.steps[0].on, "s1");
    assert_eq!(s.steps[0].ports.as_ref().unwrap()[1], (1, "net_null1".to_string()));
    assert_eq!(s.steps[1].action, Action::Detach("1".into()));
    assert_eq!(s.steps[1].expect, Expect::Failure("locked".into()));
    assert_eq!(s.name, "x");
    assert_eq!(s.devices(), vec!["net_null0".to_string(), "net_null1".to_string()]);
}

#[test]
fn odd_input_is_refused_without_panicking() {
    for t in [
        "",
        "\u{feff}",
        "[lab]\n[[step]]\nlock = -1\n",
        "[lab]\n[[step]]\nwait_ms = 1\nports = { 99999 = \"x\" }\n",
        "[lab]\nsecondaries = -3\n",
        "[lab]\nsecondaries = 99\n[[step]]\nwait_ms = 1\n",
        "[lab]\nanswer_timeout_ms = 0\n[[step]]\nwait_ms = 1\n",
        "[lab]\n[lab.process.x]\n[[step]]\nwait_ms = 1\n",
        "[lab]\n[[lab.nic]]\nbdf = \"zz\"\n[[step]]\nwait_ms = 1\n",
        "[lab]\n[[step]]\nkill = \"primary\"\nbackground = true\n",
        "[lab]\n[[step]]\ndetach = 1.5\n",
        "[lab]\n[[step]]\nwait_ms = 1\nexpect = \"ok\"\nfailure = \"x\"\n",
        "é[lab]\n[[step]]]\n",
        "[[step]]\nwait_ms = 1\n",
    ] {
        assert!(parse(t).is_err(), "{t:?} was accepted");
    }
}

#[test]
fn real_addresses_replace_emulated_ones_once() {
    let mut s = parse(
        "[lab]\n[[lab.nic]]\nbdf = \"0000:00:05.0\"\n[[lab.nic]]\nbdf = \"0000:00:06.0\"\n\
         [[step]]\nattach = \"0000:00:05.0\"\n[[step]]\nattach = \"0000:00:06.0,x=${run}\"\n",
    )
    .unwrap();
    let map =
        [("0000:00:05.0".to_string(), "0000:00:06.0".to_string()), ("0000:00:06.0".into(), "0000:03:00.1".into())];
    s.substitute("r1", Path::new("/d"), &map);
    assert_eq!(s.steps[0].action, Action::Attach("0000:00:06.0".into()));
    assert_eq!(s.steps[1].action, Action::Attach("0000:03:00.1,x=r1".into()));
}

#[test]
fn device_threads_take_lab_nics_forms_and_refuse_the_rest() {
    let lab = |v: &str| parse(&format!("[lab]\ndevice_threads = {v}\n[[step]]\nwait_ms = 1\n"));
    for (v, want) in [("\"auto\"", "auto"), ("\"per-function\"", "per-function"), ("2", "2"), ("\"3\"", "3")] {
        assert_eq!(lab(v).unwrap().lab.device_threads.as_deref(), Some(want), "{v}");
    }
    assert_eq!(parse("[lab]\n[[step]]\nwait_ms = 1\n").unwrap().lab.device_threads, None);
    for (v, want) in [
        ("0", "device_threads = 0: expected"),
        ("257", "device_threads = 257"),
        ("\"many\"", "device_threads = \"many\""),
        ("1.5", "device_threads = that"),
    ] {
        match lab(v) {
            Err(ScenarioError::Invalid { line: 2, message, .. }) => assert!(message.contains(want), "{v}: {message}"),
            other => panic!("{v}: {other:?}"),
        }
    }
}

#[test]
fn errors_name_the_line_and_what_was_expected() {
    let cases = [
        ("[lab]\n[[step]]\nattach = \"a\"\ndetach = \"b\"\n", 2, "exactly one"),
        ("[lab]\n[[step]]\non = \"s5\"\nattach = \"a\"\n", 2, "expected one of"),
        ("[lab]\n[[step]]\nattahc = \"a\"\n", 3, "unknown field"),
        ("[lab]\n[[step]]\nattach = \n", 3, ""),
        ("[lab]\n\n[[step]]\nwait_ms = 1\nports = { x = \"a\" }\n", 3, "port id"),
        ("[lab]\n[[step]]\nexpect = \"maybe\"\nwait_ms = 1\n", 2, "\"ok\""),
        ("[lab]\n[[step]]\nlink_down = \"0000:00:09.0\"\n", 2, "lab.nic"),
        ("[lab]\n", 2, "at least one"),
    ];
    for (text, line, want) in cases {
        match parse(text) {
            Err(ScenarioError::Invalid { line: l, message, .. }) => {
                assert_eq!(l, line, "{text:?}: {message}");
                assert!(message.contains(want), "{text:?}: {message}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn your_binary_is_a_process_observed_not_commanded() {
    let app = "[lab]\n[lab.process.fwd]\ncmd = [\"${bin}/lab-fwd\", \"--pair\", \"a,b\"]\n";
    let s = parse(&format!("{app}[[step]]\nexpect_stats = {{ on = \"fwd\", port = 1, rx_min = 32 }}\n")).unwrap();
    assert_eq!(process_names(&s.lab), vec!["primary", "s1", "fwd"]);
    assert!(s.lab.is_app("fwd") && !s.lab.is_app("s1"));
    assert_eq!(s.steps[0].on, "fwd");
    assert_eq!(s.steps[0].action, Action::ExpectStats { port: PortId(1), rx_min: 32, tx_min: 0, within_ms: 5000 });
    assert_eq!(s.steps[0].to_string(), "fwd: port 1 counters rx >= 32, tx >= 0 within 5000 ms");
    for (step, want) in [
        ("on = \"fwd\"\nattach = \"net_null0\"\n", "takes no commands"),
        ("on = \"s1\"\nexpect_stats = { on = \"fwd\", port = 0 }\n", "expected one of them"),
        ("expect_stats = { port = 0, within_ms = 9999999 }\n", "at most 600000"),
        ("expect_stats = { on = \"nope\", port = 0 }\n", "expected one of"),
    ] {
        let e = parse(&format!("{app}[[step]]\n{step}")).unwrap_err().to_string();
        assert!(e.contains(want), "{step}: {e}");
    }
    for (proc, want) in [
        ("[lab.process.s2]\ncmd = [\"x\"]\n", "not primary or sN"),
        ("[lab.process.Bad]\ncmd = [\"x\"]\n", "a-z, 0-9"),
        ("[lab.process.app]\ncmd = [\"\"]\n", "the binary first"),
        ("[lab.process.app]\neal = []\n", "give it cmd"),
    ] {
        let e = parse(&format!("[lab]\n{proc}[[step]]\nwait_ms = 1\n")).unwrap_err().to_string();
        assert!(e.contains(want), "{proc}: {e}");
    }
}

#[test]
fn expect_event_names_a_port_event_a_hotplug_mp_process_reports() {
    let app = "[lab]\n[lab.process.fwd]\ncmd = [\"${bin}/lab-fwd\", \"--pair\", \"a,b\"]\n";
    let s =
        parse(&format!("{app}[[step]]\non = \"s1\"\nexpect_event = {{ port = 0, event = \"link down\" }}\n")).unwrap();
    assert_eq!(s.steps[0].action, Action::ExpectEvent { port: PortId(0), event: "link down".into(), within_ms: 5000 });
    assert_eq!(s.steps[0].to_string(), "s1: port 0 event \"link down\" within 5000 ms");
    for (step, want) in [
        ("expect_event = { port = 0, event = \"link sideways\" }\n", "expected one of [\"new\""),
        ("on = \"fwd\"\nexpect_event = { port = 0, event = \"removed\" }\n", "events are reported by hotplug_mp"),
        ("expect_event = { port = 0, event = \"new\", within_ms = 9999999 }\n", "at most 600000"),
    ] {
        let e = parse(&format!("{app}[[step]]\n{step}")).unwrap_err().to_string();
        assert!(e.contains(want), "{step}: {e}");
    }
}
