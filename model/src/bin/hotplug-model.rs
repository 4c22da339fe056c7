//! `hotplug-model`: the deeper model check, by command.
//!
//! `cargo run -p lab-model --release --bin hotplug-model -- --secondaries 3 --faults all`
//!
//! Options: `--secondaries N` (1..=3), `--faults none|fail|timeout|crash|all|loss`, `--depth D`,
//! `--threads T`, `--scenario NAME` (one of `lab_model::scenarios`, default all of them),
//! `--without generations|quarantine|deadline|heal` (a safeguard left out: the check must fail).
//! Prints each scenario's state counts and time, and the shortest trace of every property found
//! false; exits 1 if one was.

use std::process::ExitCode;

use lab_model::{check, scenarios, Faults, Safeguard};

fn main() -> ExitCode {
    let mut secondaries = 2u8;
    let mut faults = Faults::All;
    let mut depth = None;
    let mut threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut only: Option<String> = None;
    let mut without = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |what: &str| match args.next() {
            Some(v) => v,
            None => {
                eprintln!("hotplug-model: {a} needs {what}");
                std::process::exit(2)
            }
        };
        match a.as_str() {
            "--secondaries" => match val("a number").parse() {
                Ok(n @ 1..=3) => secondaries = n,
                _ => return usage("--secondaries takes 1, 2 or 3"),
            },
            "--faults" => match Faults::parse(&val("none|fail|timeout|crash|all|loss")) {
                Some(f) => faults = f,
                None => return usage("--faults takes none, fail, timeout, crash, all or loss"),
            },
            "--depth" => match val("a number").parse() {
                Ok(d) => depth = Some(d),
                Err(_) => return usage("--depth takes a number"),
            },
            "--threads" => match val("a number").parse() {
                Ok(t) if t > 0 => threads = t,
                _ => return usage("--threads takes a number over 0"),
            },
            "--scenario" => only = Some(val("a name")),
            "--without" => match Safeguard::parse(&val("generations|quarantine|deadline|heal")) {
                Some(g) => without = Some(g),
                None => return usage("--without takes generations, quarantine, deadline or heal"),
            },
            "-h" | "--help" => {
                println!("usage: hotplug-model [--secondaries 1..3] [--faults none|fail|timeout|crash|all|loss] [--depth D] [--threads T] [--scenario NAME] [--without generations|quarantine|deadline|heal]");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown option {other:?}")),
        }
    }
    let mut bad = false;
    let all = scenarios(secondaries, faults);
    if let Some(o) = &only {
        if !all.iter().any(|(n, _)| n == o) {
            let names: Vec<_> = all.iter().map(|(n, _)| n.clone()).collect();
            return usage(&format!("no scenario {o:?}; there are {}", names.join(", ")));
        }
    }
    for (name, mut cfg) in all {
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        if let Some(d) = depth {
            cfg.depth = d;
        }
        cfg.without = without;
        let o = check(cfg, threads);
        println!(
            "{name}: {} states ({} unique), depth {}, {:.1} s: {}",
            o.states,
            o.unique,
            o.depth,
            o.elapsed.as_secs_f64(),
            if o.violations.is_empty() { "every property holds" } else { "PROPERTIES FOUND FALSE" }
        );
        for (prop, trace) in &o.violations {
            bad = true;
            println!("  {prop}: shortest trace\n{trace}");
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("hotplug-model: {msg}");
    ExitCode::from(2)
}
