use super::*;
use rstest::rstest;

fn parse(args: &[&str]) -> Result<(Options, Vec<String>), OptionsError> {
    Options::parse(args.iter().copied())
}

fn opts(args: &[&str]) -> Options {
    let (o, app) = parse(args).unwrap();
    assert!(app.is_empty(), "{args:?} left {app:?}");
    o
}

#[test]
fn no_arguments_give_the_defaults() {
    let (o, app) = parse(&[]).unwrap();
    assert_eq!(o, Options::default());
    assert!(app.is_empty());
    assert_eq!(o.proc_type, ProcType::Auto);
    assert_eq!(o.file_prefix, "lab");
    assert_eq!(o.hotplug_timeout_ms, 5000);
    assert_eq!(o.ipc_spin_us, 0);
}

#[rstest]
#[case(&["--proc-type=primary"], ProcType::Primary)]
#[case(&["--proc-type", "secondary"], ProcType::Secondary)]
#[case(&["--proc-type=auto"], ProcType::Auto)]
fn proc_type_is_parsed(#[case] args: &[&str], #[case] want: ProcType) {
    assert_eq!(opts(args).proc_type, want);
}

#[rstest]
#[case(&["--file-prefix=x"], "x")]
#[case(&["--file-prefix", "lab_1.test-a"], "lab_1.test-a")]
#[case(&["--file-prefix=..."], "...")]
fn file_prefix_is_parsed(#[case] args: &[&str], #[case] want: &str) {
    assert_eq!(opts(args).file_prefix, want);
}

#[test]
fn file_prefix_of_64_characters_is_accepted() {
    let p = "p".repeat(64);
    assert_eq!(opts(&[&format!("--file-prefix={p}")]).file_prefix, p);
}

#[rstest]
#[case(&["-m", "64"], 64)]
#[case(&["-m64"], 64)]
#[case(&["-m=64"], 64)]
#[case(&["-m", "1"], 1)]
#[case(&["-m", "65536"], 65536)]
#[case(&["-m", "0x40"], 64)]
fn mem_is_parsed_in_every_form(#[case] args: &[&str], #[case] want: u64) {
    assert_eq!(opts(args).mem_mb, Some(want));
}

#[rstest]
#[case("error", "error")]
#[case("warn", "warn")]
#[case("info", "info")]
#[case("debug", "debug")]
#[case("trace", "trace")]
#[case("DEBUG", "debug")]
#[case("warning", "warn")]
#[case("notice", "info")]
#[case("err", "error")]
#[case("1", "error")]
#[case("4", "error")]
#[case("5", "warn")]
#[case("6", "info")]
#[case("7", "debug")]
#[case("8", "trace")]
#[case("lib.eal:debug", "debug")]
#[case("lib.eal:8", "trace")]
#[case("pmd.net.*:info", "info")]
#[case("lib.eal,7", "debug")]
fn log_level_is_normalized(#[case] value: &str, #[case] want: &str) {
    let o = opts(&[&format!("--log-level={value}")]);
    assert_eq!(o.log_level.as_deref(), Some(want));
    let o = opts(&["--log-level", value]);
    assert_eq!(o.log_level.as_deref(), Some(want));
}

#[test]
fn later_log_level_wins() {
    let o = opts(&["--log-level=info", "--log-level=lib.eal:debug"]);
    assert_eq!(o.log_level.as_deref(), Some("debug"));
}

#[test]
fn lists_keep_every_occurrence_in_order() {
    let o = opts(&[
        "--vdev=net_null0,size=64",
        "--vdev",
        "net_ring0",
        "-a",
        "0000:00:05.0,key=v",
        "--allow=05.1",
        "-w",
        "00:06.0",
        "--pci-whitelist=0000:00:07.0",
        "-a0000:00:08.0",
        "-b",
        "0000:00:09.0",
        "--block=0000:00:0a.0",
        "--pci-blacklist",
        "0b.0",
    ]);
    assert_eq!(o.vdevs, ["net_null0,size=64", "net_ring0"]);
    assert_eq!(o.allow, ["0000:00:05.0,key=v", "05.1", "00:06.0", "0000:00:07.0", "0000:00:08.0"]);
    assert_eq!(o.block, ["0000:00:09.0", "0000:00:0a.0", "0b.0"]);
}

#[test]
fn flags_and_paths_and_numbers_are_parsed() {
    let o = opts(&["--no-pci", "--no-huge", "--hotplug-timeout-ms=250", "--ipc-spin-us", "1000"]);
    assert!(o.no_pci && o.no_huge);
    assert_eq!(o.hotplug_timeout_ms, 250);
    assert_eq!(o.ipc_spin_us, 1000);
    let o = opts(&["--huge-dir", "/mnt/huge", "--ipc-spin-us=0"]);
    assert_eq!(o.huge_dir, Some(PathBuf::from("/mnt/huge")));
    assert!(!o.no_huge);
    assert_eq!(opts(&["--hotplug-timeout-ms=600000"]).hotplug_timeout_ms, 600_000);
    assert_eq!(opts(&["--hotplug-timeout-ms=1"]).hotplug_timeout_ms, 1);
}

#[rstest]
#[case("attach:net_null0", FaultOp::Attach, "net_null0", FaultMode::Fail)]
#[case("detach:net_null0:hang", FaultOp::Detach, "net_null0", FaultMode::Hang)]
#[case("pre-detach:net_ring0:crash", FaultOp::PreDetach, "net_ring0", FaultMode::Crash)]
#[case("asked:net_null0:hang", FaultOp::Asked, "net_null0", FaultMode::Hang)]
#[case("sync:net_null0:hang", FaultOp::Sync, "net_null0", FaultMode::Hang)]
#[case("sync:0000:00:05.0:crash", FaultOp::Sync, "0000:00:05.0", FaultMode::Crash)]
#[case("attach:0000:00:05.0", FaultOp::Attach, "0000:00:05.0", FaultMode::Fail)]
#[case("detach:0000:00:05.0:hang", FaultOp::Detach, "0000:00:05.0", FaultMode::Hang)]
#[case("detach:0000:00:05.0:fail", FaultOp::Detach, "0000:00:05.0", FaultMode::Fail)]
#[case("attach:05.1:crash", FaultOp::Attach, "0000:00:05.1", FaultMode::Crash)]
#[case("attach:00:05.1", FaultOp::Attach, "0000:00:05.1", FaultMode::Fail)]
fn fault_spec_takes_op_from_the_front_and_mode_from_the_back(
    #[case] text: &str,
    #[case] op: FaultOp,
    #[case] device: &str,
    #[case] mode: FaultMode,
) {
    let want = FaultSpec { op, device: device.to_string(), mode };
    assert_eq!(text.parse::<FaultSpec>().unwrap(), want);
    assert_eq!(opts(&[&format!("--lab-fault={text}")]).faults, std::slice::from_ref(&want));
    assert_eq!(want.to_string().parse::<FaultSpec>().unwrap(), want);
}

#[rstest]
#[case("")]
#[case("attach")]
#[case("attach:")]
#[case("attach::hang")]
#[case("plug:net_null0")]
#[case("Attach:net_null0")]
#[case("attach:net_null0:bogus")]
#[case("attach:net_null0:HANG")]
#[case("attach:0000:00:05.0:bogus")]
#[case("attach:0000:00:20.0")]
#[case("attach:net-null0")]
#[case("attach:net_null0,size=1")]
#[case("sync:net_null0")]
#[case("sync:net_null0:fail")]
fn fault_spec_refuses(#[case] text: &str) {
    let err = parse(&["--lab-fault", text]).unwrap_err();
    match &err {
        OptionsError::BadValue { option, value, .. } => {
            assert_eq!((option.as_str(), value.as_str()), ("--lab-fault", text));
        }
        other => panic!("{text}: unexpected {other}"),
    }
}

#[test]
fn fault_spec_error_names_the_bad_mode() {
    let msg = "attach:net_null0:hnag".parse::<FaultSpec>().unwrap_err().to_string();
    assert!(msg.contains("hnag") && msg.contains("fail|hang|crash"), "{msg}");
    let msg = "sync:net_null0".parse::<FaultSpec>().unwrap_err().to_string();
    assert!(msg.contains("OP sync takes MODE hang or crash, not fail"), "{msg}");
}

#[rstest]
#[case::proc_type(&["--proc-type=master"], "--proc-type", "master")]
#[case::proc_type_case(&["--proc-type", "Primary"], "--proc-type", "Primary")]
#[case::proc_type_empty(&["--proc-type="], "--proc-type", "")]
#[case::prefix_empty(&["--file-prefix="], "--file-prefix", "")]
#[case::prefix_slash(&["--file-prefix=a/b"], "--file-prefix", "a/b")]
#[case::prefix_space(&["--file-prefix", "a b"], "--file-prefix", "a b")]
#[case::prefix_dot(&["--file-prefix=."], "--file-prefix", ".")]
#[case::prefix_dotdot(&["--file-prefix=.."], "--file-prefix", "..")]
#[case::prefix_unicode(&["--file-prefix=ü"], "--file-prefix", "ü")]
#[case::mem_zero(&["-m", "0"], "-m", "0")]
#[case::mem_too_big(&["-m65537"], "-m", "65537")]
#[case::mem_word(&["-m", "lots"], "-m", "lots")]
#[case::mem_negative(&["-m", "-1"], "-m", "-1")]
#[case::mem_suffix(&["-m=64M"], "-m", "64M")]
#[case::log_word(&["--log-level=loud"], "--log-level", "loud")]
#[case::log_zero(&["--log-level=0"], "--log-level", "0")]
#[case::log_nine(&["--log-level=9"], "--log-level", "9")]
#[case::log_pattern_bad(&["--log-level=lib.eal:loud"], "--log-level", "lib.eal:loud")]
#[case::log_no_pattern(&["--log-level=:debug"], "--log-level", ":debug")]
#[case::log_empty(&["--log-level="], "--log-level", "")]
#[case::vdev_is_pci(&["--vdev=0000:00:05.0"], "--vdev", "0000:00:05.0")]
#[case::allow_is_vdev(&["-a", "net_null0"], "-a", "net_null0")]
#[case::block_is_vdev(&["--block=net_null0"], "--block", "net_null0")]
#[case::huge_dir_empty(&["--huge-dir="], "--huge-dir", "")]
#[case::timeout_zero(&["--hotplug-timeout-ms=0"], "--hotplug-timeout-ms", "0")]
#[case::timeout_too_big(&["--hotplug-timeout-ms=600001"], "--hotplug-timeout-ms", "600001")]
#[case::timeout_unit(&["--hotplug-timeout-ms=5s"], "--hotplug-timeout-ms", "5s")]
#[case::spin_too_big(&["--ipc-spin-us=1001"], "--ipc-spin-us", "1001")]
#[case::spin_word(&["--ipc-spin-us=off"], "--ipc-spin-us", "off")]
#[case::spin_overflow(&["--ipc-spin-us=99999999999999999999"], "--ipc-spin-us", "99999999999999999999")]
fn bad_values_name_option_and_value(#[case] args: &[&str], #[case] option: &str, #[case] value: &str) {
    let err = parse(args).unwrap_err();
    match &err {
        OptionsError::BadValue { option: o, value: v, expected } => {
            assert_eq!((o.as_str(), v.as_str()), (option, value));
            assert!(!expected.is_empty());
        }
        other => panic!("{args:?}: unexpected {other}"),
    }
}

#[test]
fn bad_value_message_says_what_is_expected() {
    assert_eq!(
        parse(&["-m", "0"]).unwrap_err().to_string(),
        r#"-m: bad value "0": expected an integer in 1..=65536 (megabytes)"#
    );
}

#[rstest]
#[case(&["--vdev="], "--vdev")]
#[case(&["--vdev", "net-null0"], "--vdev")]
#[case(&["--vdev=net_null0,"], "--vdev")]
#[case(&["-a", "0000:00:20.0"], "-a")]
#[case(&["--allow=usb:1"], "--allow")]
#[case(&["-b", ""], "-b")]
fn bad_devargs_name_option_and_cause(#[case] args: &[&str], #[case] option: &str) {
    let err = parse(args).unwrap_err();
    assert!(matches!(&err, OptionsError::BadDevargs { option: o, .. } if o == option), "{err}");
}

#[rstest]
#[case(&["--bogus"], "--bogus")]
#[case(&["--bogus=1"], "--bogus")]
#[case(&["-x"], "-x")]
#[case(&["-p", "0x3"], "-p")]
#[case(&["--no-pcix"], "--no-pcix")]
#[case(&["--no"], "--no")]
#[case(&["---"], "---")]
#[case(&["-é"], "-é")]
fn unknown_options_are_named(#[case] args: &[&str], #[case] option: &str) {
    assert_eq!(parse(args).unwrap_err(), OptionsError::UnknownOption { option: option.into() });
}

#[rstest]
#[case(&["--proc-type"], "--proc-type")]
#[case(&["--file-prefix"], "--file-prefix")]
#[case(&["-m"], "-m")]
#[case(&["--log-level"], "--log-level")]
#[case(&["--vdev"], "--vdev")]
#[case(&["-a"], "-a")]
#[case(&["--allow"], "--allow")]
#[case(&["-w"], "-w")]
#[case(&["-b"], "-b")]
#[case(&["--huge-dir"], "--huge-dir")]
#[case(&["--hotplug-timeout-ms"], "--hotplug-timeout-ms")]
#[case(&["--ipc-spin-us"], "--ipc-spin-us")]
#[case(&["--lab-fault"], "--lab-fault")]
#[case(&["--no-pci", "-l"], "-l")]
#[case(&["--lcores"], "--lcores")]
fn missing_values_are_named(#[case] args: &[&str], #[case] option: &str) {
    assert_eq!(parse(args).unwrap_err(), OptionsError::MissingValue { option: option.into() });
}

#[rstest]
#[case("--no-pci=1", "--no-pci", "1")]
#[case("--no-huge=yes", "--no-huge", "yes")]
#[case("--in-memory=1", "--in-memory", "1")]
#[case("-vv", "-v", "v")]
#[case("--help=me", "--help", "me")]
fn flags_refuse_values(#[case] arg: &str, #[case] option: &str, #[case] value: &str) {
    assert_eq!(
        parse(&[arg]).unwrap_err(),
        OptionsError::UnexpectedValue { option: option.into(), value: value.into() }
    );
}

#[rstest]
#[case(&["--proc-type=primary", "--proc-type=secondary"], "--proc-type")]
#[case(&["--file-prefix=a", "--file-prefix", "b"], "--file-prefix")]
#[case(&["-m", "64", "-m128"], "-m")]
#[case(&["--huge-dir=/a", "--huge-dir=/b"], "--huge-dir")]
#[case(&["--hotplug-timeout-ms=1", "--hotplug-timeout-ms=2"], "--hotplug-timeout-ms")]
#[case(&["--ipc-spin-us=1", "--ipc-spin-us=2"], "--ipc-spin-us")]
fn single_valued_options_given_twice_are_refused(#[case] args: &[&str], #[case] option: &str) {
    assert_eq!(parse(args).unwrap_err(), OptionsError::DuplicateOption { option: option.into() });
}

#[test]
fn no_huge_conflicts_with_huge_dir() {
    assert_eq!(
        parse(&["--huge-dir", "/mnt/huge", "--no-huge"]).unwrap_err(),
        OptionsError::Conflict { option: "--huge-dir".into(), other: "--no-huge".into() }
    );
}

#[rstest]
#[case(&["-h"])]
#[case(&["--help"])]
#[case(&["--no-pci", "--help", "--bogus"])]
fn help_is_reported(#[case] args: &[&str]) {
    assert_eq!(parse(args).unwrap_err(), OptionsError::HelpRequested);
}

#[test]
fn usage_lists_every_option() {
    for (name, _, _) in TABLE {
        assert!(USAGE.contains(name), "usage misses {name}");
    }
}

#[rstest]
#[case(&["-l", "0-3"], "-l 0-3")]
#[case(&["-l0-3"], "-l0-3")]
#[case(&["-c", "0xf"], "-c 0xf")]
#[case(&["-n", "4"], "-n 4")]
#[case(&["-d", "librte_net_ixgbe.so"], "-d librte_net_ixgbe.so")]
#[case(&["-r", "2"], "-r 2")]
#[case(&["-v"], "-v")]
#[case(&["--main-lcore=1"], "--main-lcore=1")]
#[case(&["--master-lcore", "1"], "--master-lcore 1")]
#[case(&["--lcores=0@1,1@2"], "--lcores=0@1,1@2")]
#[case(&["--socket-mem", "1024,1024"], "--socket-mem 1024,1024")]
#[case(&["--socket-limit=2048"], "--socket-limit=2048")]
#[case(&["--in-memory"], "--in-memory")]
#[case(&["--iova-mode=va"], "--iova-mode=va")]
#[case(&["--base-virtaddr", "0x100000000"], "--base-virtaddr 0x100000000")]
#[case(&["--legacy-mem"], "--legacy-mem")]
#[case(&["--single-file-segments"], "--single-file-segments")]
#[case(&["--match-allocations"], "--match-allocations")]
#[case(&["--syslog"], "--syslog")]
#[case(&["--syslog=daemon"], "--syslog=daemon")]
#[case(&["--syslog", "local0"], "--syslog local0")]
#[case(&["--no-shconf"], "--no-shconf")]
#[case(&["--vfio-intr", "msix"], "--vfio-intr msix")]
#[case(&["--create-uio-dev"], "--create-uio-dev")]
fn dpdk_options_are_accepted_and_recorded(#[case] args: &[&str], #[case] recorded: &str) {
    let o = opts(args);
    assert_eq!(o.ignored, [recorded]);
    assert_eq!(Options { ignored: vec![], ..o }, Options::default());
}

#[test]
fn telemetry_is_on_unless_turned_off_and_the_last_word_wins() {
    assert!(!opts(&[]).no_telemetry);
    assert!(opts(&["--no-telemetry"]).no_telemetry);
    assert!(!opts(&["--no-telemetry", "--telemetry"]).no_telemetry);
    assert!(opts(&["--no-telemetry"]).to_args().contains(&"--no-telemetry".to_string()));
}

#[test]
fn syslog_does_not_swallow_an_application_argument() {
    let (o, app) = parse(&["--syslog", "app-arg"]).unwrap();
    assert_eq!(o.ignored, ["--syslog"]);
    assert_eq!(app, ["app-arg"]);
}

#[test]
fn real_dpdk_command_line_parses() {
    let (o, app) =
        parse(&["-l", "0-3", "-n", "4", "--proc-type=secondary", "--file-prefix=x", "--", "-p", "0x3"]).unwrap();
    assert_eq!(o.proc_type, ProcType::Secondary);
    assert_eq!(o.file_prefix, "x");
    assert_eq!(o.ignored, ["-l 0-3", "-n 4"]);
    assert_eq!(app, ["-p", "0x3"]);
}

#[rstest]
#[case(&["--no-pci", "--", "-p", "--", "x"], &["-p", "--", "x"])]
#[case(&["--no-pci", "--"], &[])]
#[case(&["--no-pci", "run", "--vdev=x", "--", "y"], &["run", "--vdev=x", "--", "y"])]
#[case(&["-", "--no-pci"], &["-", "--no-pci"])]
#[case(&["app_arg"], &["app_arg"])]
fn parsing_stops_at_double_dash_or_first_non_option(#[case] args: &[&str], #[case] want: &[&str]) {
    let (_, app) = parse(args).unwrap();
    assert_eq!(app, want);
}

#[test]
fn value_taken_as_separate_argument_may_start_with_a_dash() {
    assert_eq!(opts(&["--file-prefix", "-x"]).file_prefix, "-x");
}

#[test]
fn parse_accepts_owned_strings() {
    let args = vec![String::from("--no-pci")];
    assert!(Options::parse(args).unwrap().0.no_pci);
}

#[test]
fn to_args_round_trips_without_proc_type_and_ignored_options() {
    let (o, _) = parse(&[
        "--proc-type=primary",
        "--file-prefix=t1",
        "-m",
        "128",
        "--log-level=lib.eal:7",
        "--vdev=net_null0,size=64",
        "--vdev=net_ring0",
        "-a",
        "0000:00:05.0,rxq=2",
        "-b",
        "06.0",
        "--no-pci",
        "--huge-dir=/mnt/huge",
        "--hotplug-timeout-ms=1234",
        "--ipc-spin-us=50",
        "--lab-fault=detach:0000:00:05.0:hang",
        "--lab-fault=attach:net_null0",
        "-l",
        "0-3",
    ])
    .unwrap();
    let args = o.to_args();
    assert_eq!(
        args,
        [
            "--file-prefix=t1",
            "-m",
            "128",
            "--log-level=debug",
            "--vdev=net_null0,size=64",
            "--vdev=net_ring0",
            "--allow=0000:00:05.0,rxq=2",
            "--block=06.0",
            "--no-pci",
            "--huge-dir=/mnt/huge",
            "--hotplug-timeout-ms=1234",
            "--ipc-spin-us=50",
            "--lab-fault=detach:0000:00:05.0:hang",
            "--lab-fault=attach:net_null0:fail",
        ]
    );
    let (again, app) = Options::parse(args).unwrap();
    assert!(app.is_empty());
    assert_eq!(again, Options { proc_type: ProcType::Auto, ignored: vec![], ..o });
}

#[test]
fn to_args_of_defaults_names_only_the_runtime() {
    assert_eq!(Options::default().to_args(), ["--file-prefix=lab"]);
    let o = opts(&["--no-huge"]);
    assert_eq!(Options::parse(o.to_args()).unwrap().0, o);
}

#[rstest]
#[case(ProcType::Primary, "primary")]
#[case(ProcType::Secondary, "secondary")]
#[case(ProcType::Auto, "auto")]
fn proc_type_displays_and_parses(#[case] p: ProcType, #[case] text: &str) {
    assert_eq!(p.to_string(), text);
    assert_eq!(text.parse::<ProcType>().unwrap(), p);
}

#[rstest]
#[case(FaultOp::Attach, "attach")]
#[case(FaultOp::Detach, "detach")]
#[case(FaultOp::PreDetach, "pre-detach")]
#[case(FaultOp::Asked, "asked")]
#[case(FaultOp::Sync, "sync")]
fn fault_op_displays_and_parses(#[case] op: FaultOp, #[case] text: &str) {
    assert_eq!(op.to_string(), text);
    assert_eq!(text.parse::<FaultOp>().unwrap(), op);
}

#[rstest]
#[case(FaultMode::Fail, "fail")]
#[case(FaultMode::Hang, "hang")]
#[case(FaultMode::Crash, "crash")]
fn fault_mode_displays_and_parses(#[case] m: FaultMode, #[case] text: &str) {
    assert_eq!(m.to_string(), text);
    assert_eq!(text.parse::<FaultMode>().unwrap(), m);
    assert_eq!(FaultMode::default(), FaultMode::Fail);
}
