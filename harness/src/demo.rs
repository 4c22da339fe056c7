//! `lab demo`: no arguments, no hardware. An emulated 82599 cabled to an emulated X710 (or to a
//! second 82599 in a build without the i40e driver), a
//! `net_null0` vdev, one primary and two secondaries; the design's four scenarios (attach and
//! detach, from the primary and from a secondary), each with traffic sent by one process on one
//! NIC and received by another process on the other NIC.
//!
//! Without a driver for the 82599 in this build (or when attaching a function answers "no
//! driver"), the demo says so in one line and runs the same scenarios on net_null ports.

use std::path::Path;
use std::process::ExitCode;

use lab_core::bus::pci::PciId;

use crate::report;
use crate::runner::{self, CaseResult, Env, Outcome, StepReport};
use crate::scenario::{Scenario, ScenarioError};

const LAB: &str = r#"
[lab]
secondaries = 2
vdevs = ["net_null0"]
[[lab.nic]]
bdf = "0000:00:05.0"
model = "ixgbe"
wire = "peer=0000:00:06.0"
[[lab.nic]]
bdf = "0000:00:06.0"
model = "SECOND"
wire = "peer=0000:00:05.0"
"#;

/// The model of the second NIC: an X710 when this build drives it, else a second 82599.
pub fn second_model() -> &'static str {
    let reg = lab_drivers::registry();
    if reg.pci_driver(PciId { vendor: 0x8086, device: 0x1572 }).is_some() {
        "i40e"
    } else {
        "ixgbe"
    }
}

/// The four scenarios; `A` and `B` stand for the two devices.
const SCENARIOS: [(&str, &str); 4] = [
    (
        "1. attach from the primary",
        r#"
[[step]]
attach = "A"
ports = { 0 = "net_null0", 1 = "A" }
[[step]]
attach = "B"
ports = { 0 = "net_null0", 1 = "A", 2 = "B" }
[[step]]
on = "s1"
send = { port = 1, count = 32 }
[[step]]
on = "s2"
recv = { port = 2, count = 32 }
"#,
    ),
    (
        "2. detach from the primary",
        r#"
[[step]]
attach = "A"
[[step]]
attach = "B"
ports = { 0 = "net_null0", 1 = "A", 2 = "B" }
[[step]]
detach = "B"
ports = { 0 = "net_null0", 1 = "A" }
[[step]]
on = "s2"
attach = "B"
ports = { 0 = "net_null0", 1 = "A", 2 = "B" }
[[step]]
on = "s2"
send = { port = 1, count = 32 }
[[step]]
on = "s1"
recv = { port = 2, count = 32 }
"#,
    ),
    (
        "3. attach from a secondary",
        r#"
[[step]]
on = "s1"
attach = "A"
ports = { 0 = "net_null0", 1 = "A" }
[[step]]
on = "s2"
attach = "B"
ports = { 0 = "net_null0", 1 = "A", 2 = "B" }
[[step]]
on = "s2"
send = { port = 2, count = 32 }
[[step]]
recv = { port = 1, count = 32 }
"#,
    ),
    (
        "4. detach from a secondary",
        r#"
[[step]]
attach = "A"
[[step]]
attach = "B"
ports = { 0 = "net_null0", 1 = "A", 2 = "B" }
[[step]]
on = "s2"
send = { port = 2, count = 32 }
[[step]]
on = "s1"
recv = { port = 1, count = 32 }
[[step]]
on = "s2"
detach = 1
ports = { 0 = "net_null0", 2 = "B" }
[[step]]
on = "s1"
detach = "B"
ports = { 0 = "net_null0" }
[[step]]
on = "s1"
send = { port = 0, count = 32 }
[[step]]
on = "s2"
recv = { port = 0, count = 32 }
"#,
    ),
];

/// The demo's scenarios, on the two NICs or (`nics == false`) on net_null1/net_null2.
pub fn scenarios(nics: bool) -> Result<Vec<Scenario>, ScenarioError> {
    let (a, b) = if nics { ("0000:00:05.0", "0000:00:06.0") } else { ("net_null1", "net_null2") };
    SCENARIOS
        .iter()
        .map(|(name, steps)| {
            let steps = steps.replace("\"A\"", &format!("\"{a}\"")).replace("\"B\"", &format!("\"{b}\""));
            let lab = if nics {
                LAB.replace("SECOND", second_model())
            } else {
                "[lab]\nsecondaries = 2\nvdevs = [\"net_null0\"]\n".into()
            };
            Scenario::parse(&format!("name = \"{name}\"\n{lab}{steps}"), Path::new("demo"))
        })
        .collect()
}

fn print_step(r: &StepReport) {
    println!("  {}  ->  {}", r.step, r.answer.replace('\n', " | "));
    let who = if r.live == 3 { "primary, s1 and s2".to_string() } else { format!("all {} processes", r.live) };
    let ports = if r.view.is_empty() {
        "no ports".to_string()
    } else {
        r.view.iter().map(|(i, n)| format!("{i}:{n}")).collect::<Vec<_>>().join("  ")
    };
    println!("      {who} list  {ports}");
    for n in &r.notes {
        println!("      note: {n}");
    }
}

fn no_driver(r: &CaseResult) -> bool {
    matches!(&r.outcome, Outcome::Failed(f) if f.message.contains("no driver"))
        || matches!(&r.outcome, Outcome::Skipped(s) if s.contains("no driver"))
}

/// Runs the demo and prints it; exit status 0 when every scenario passed.
pub fn run(env: &Env) -> ExitCode {
    let ixgbe = PciId { vendor: 0x8086, device: 0x10fb };
    let mut nics = env.registry.pci_driver(ixgbe).is_some();
    if nics {
        if let Err(e) = env.lab_nic() {
            println!("NIC traffic skipped: {e}; the scenarios run on net_null ports instead");
            nics = false;
        }
    } else {
        println!("NIC traffic skipped: no driver for the 82599 ({ixgbe}) in this build; the scenarios run on net_null ports instead");
    }
    println!(
        "lab: primary + 2 secondaries, net_null0 as --vdev{}\n",
        if nics {
            if second_model() == "i40e" {
                ", an emulated 82599 (0000:00:05.0) cabled to an emulated X710 (0000:00:06.0)"
            } else {
                ", two emulated 82599 functions 0000:00:05.0 <-> 0000:00:06.0 cabled together"
            }
        } else {
            ""
        }
    );
    let observer = |r: &StepReport| print_step(r);
    let (nic_sc, null_sc) = match (scenarios(true), scenarios(false)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            println!("lab demo: {e}");
            return ExitCode::from(1);
        }
    };
    let mut results = Vec::new();
    for i in 0..nic_sc.len() {
        if env.stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let sc = if nics { &nic_sc[i] } else { &null_sc[i] };
        println!("{}", sc.name);
        let mut r = runner::run_case(env, sc, None, Some(&observer));
        if nics && no_driver(&r) {
            println!(
                "NIC traffic skipped: attaching the 82599 answered \"no driver\"; running on net_null ports instead"
            );
            nics = false;
            r = runner::run_case(env, &null_sc[i], None, Some(&observer));
        }
        match &r.outcome {
            Outcome::Passed => println!("  passed in {:.2} s\n", r.elapsed.as_secs_f64()),
            Outcome::Failed(f) => println!("  FAILED: {f}\n"),
            Outcome::Skipped(s) => println!("  skipped: {s}\n"),
            Outcome::Interrupted => println!("  interrupted\n"),
        }
        results.push(r);
    }
    println!("{}", report::table(&results));
    if report::Totals::of(&results).ok() && results.len() == SCENARIOS.len() {
        ExitCode::SUCCESS
    } else if env.stop.load(std::sync::atomic::Ordering::Relaxed) {
        ExitCode::from(130)
    } else {
        ExitCode::from(1)
    }
}
