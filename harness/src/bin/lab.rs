//! `lab`: the hotplug lab runner.
//!
//! ```text
//! lab run [--real BDF[,BDF...]] [-j N] [-v] [--partition K/N] [--junit FILE] [--json FILE] SCENARIO|DIR...
//!                                  --partition K/N: only the scenarios whose name hashes to part
//!                                  K of N (stable FNV-1a hash, as nextest's hash:K/N)
//! lab sweep [-j N] [-v] [--case PROC:OP:MODE]... [--junit FILE] [--json FILE] SCENARIO...
//!                                  every process x attach|pre-detach|detach x fail|hang|crash
//!                                  (--case: only those, e.g. --case s1:attach:crash)
//! lab check SCENARIO|DIR...        parse only
//! lab demo                         two cabled emulated 82599s, net_null0, the four scenarios
//! lab report merge OUT.xml IN.xml...  one JUnit report from the parts of a partitioned run
//! lab status [--prefix P] [--watch] [--interval-ms N] [--json]
//!                                  every process of a running lab (any lab-core app), its ports,
//!                                  link, rx/tx and rates, read over telemetry
//! lab soak [--cycles N] [--secs S] [--every N] [--pps N]
//!                                  attach/detach cycles from rotating processes over two
//!                                  cabled emulated NICs with traffic, link flaps and surprise
//!                                  unplugs; every N cycles (1000) each process's fds, RSS and
//!                                  emulator connections, the memzones and mbufs in use; fails
//!                                  if any grows (default 10000 cycles, 20000 frames/s)
//! ```
//! Exit status: 0 when every case passed (skipped ones do not count), 1 when one failed, 2 on bad
//! arguments or scenario files (nothing is started then), 77 when `--real` finds no /dev/vfio,
//! 130 when interrupted (every process is stopped and its files removed first).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lab_harness::report::{self, Totals};
use lab_harness::runner::{self, CaseResult, Env, FaultCase, Outcome, StepReport};
use lab_harness::scenario::{self, Scenario};
use lab_harness::{demo, realnic};

const USAGE: &str = "\
usage: lab run [--real BDF[,BDF...]] [-j N] [-v] [--partition K/N] [--junit FILE] [--json FILE] SCENARIO|DIR...
       lab sweep [-j N] [-v] [--partition K/N] [--case PROC:OP:MODE]... [--junit FILE] [--json FILE] SCENARIO...
       lab check SCENARIO|DIR...
       lab demo
       lab report merge OUT.xml IN.xml...
       lab status [--prefix P] [--watch] [--interval-ms N] [--json]
       lab soak [--cycles N] [--secs S] [--every N] [--pps N]";

/// `lab status`'s arguments.
struct StatusArgs {
    prefix: String,
    watch: bool,
    json: bool,
    interval: std::time::Duration,
}

fn parse_status(mut it: impl Iterator<Item = String>) -> Result<StatusArgs, String> {
    let mut a = StatusArgs {
        prefix: lab_core::options::DEFAULT_FILE_PREFIX.into(),
        watch: false,
        json: false,
        interval: std::time::Duration::from_secs(1),
    };
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--prefix" | "--file-prefix" => a.prefix = value()?,
            "--watch" => a.watch = true,
            "--json" => a.json = true,
            "--interval-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| (50..=60_000).contains(n))
                    .ok_or(format!("--interval-ms {v}: expected 50..=60000"))?;
                a.interval = std::time::Duration::from_millis(ms);
            }
            "-h" | "--help" => return Err(String::new()),
            f => return Err(format!("lab status: unknown argument {f}")),
        }
    }
    Ok(a)
}

fn status_main() -> ExitCode {
    let a = match args_or_exit(parse_status(std::env::args().skip(2))) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let stop = install_stop_handler();
    match lab_harness::status::run(&a.prefix, a.watch, a.json, a.interval, &|| stop.load(Ordering::Relaxed)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::from(1)
        }
    }
}

struct Args {
    cmd: String,
    paths: Vec<PathBuf>,
    real: Option<Vec<String>>,
    jobs: usize,
    /// `-j` was given (else the default: 2, or 1 with `--real`).
    jobs_given: bool,
    verbose: bool,
    junit: Option<PathBuf>,
    json: Option<PathBuf>,
    cases: Vec<String>,
    /// `--partition K/N`: (K-1, N).
    partition: Option<(u64, u64)>,
}

/// `K/N` or `hash:K/N` (nextest's spelling), 1 <= K <= N.
fn parse_partition(v: &str) -> Result<(u64, u64), String> {
    let s = v.strip_prefix("hash:").unwrap_or(v);
    let bad = || format!("--partition {v}: expected K/N with 1 <= K <= N (e.g. 2/4)");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (u64, u64) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k - 1, n))
}

/// FNV-1a, 64 bits: the same on every machine and build (std's hasher is not).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn in_partition(name: &str, p: Option<(u64, u64)>) -> bool {
    p.is_none_or(|(k, n)| stable_hash(name) % n == k)
}

fn report_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let (out, inputs) = match args.split_first() {
        Some((sub, rest)) if sub == "merge" && rest.len() >= 2 => (&rest[0], &rest[1..]),
        _ => {
            eprintln!("lab: report: expected `lab report merge OUT.xml IN.xml...`\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut files = Vec::new();
    for i in inputs {
        match std::fs::read_to_string(i) {
            Ok(t) => files.push((i.clone(), t)),
            Err(e) => {
                eprintln!("lab: {i}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    match report::merge_junit(&files) {
        Ok(x) => match report::write(std::path::Path::new(out), &x) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lab: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or("missing command")?;
    if !["run", "sweep", "check", "demo"].contains(&cmd.as_str()) {
        if cmd == "-h" || cmd == "--help" || cmd == "help" {
            return Err(String::new());
        }
        return Err(format!("unknown command {cmd:?}"));
    }
    let mut a = Args {
        cmd,
        paths: Vec::new(),
        real: None,
        jobs: 2,
        jobs_given: false,
        verbose: false,
        junit: None,
        json: None,
        cases: Vec::new(),
        partition: None,
    };
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ if arg.len() > 2 && arg.starts_with("-j") => ("-j".to_string(), Some(arg[2..].to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--real" => a.real = Some(value()?.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()),
            "-j" | "--jobs" => {
                let v = value()?;
                a.jobs = v.parse().ok().filter(|n| (1..=64).contains(n)).ok_or(format!("-j {v}: expected 1..64"))?;
                a.jobs_given = true;
            }
            "-v" | "--verbose" => a.verbose = true,
            "--partition" => a.partition = Some(parse_partition(&value()?)?),
            "--junit" => a.junit = Some(value()?.into()),
            "--json" => a.json = Some(value()?.into()),
            "--case" => {
                let v = value()?;
                let parts: Vec<&str> = v.split(':').collect();
                let ok = parts.len() == 3
                    && ["attach", "pre-detach", "detach"].contains(&parts[1])
                    && ["fail", "hang", "crash"].contains(&parts[2]);
                if !ok {
                    return Err(format!(
                        "--case {v}: expected PROC:OP:MODE, OP attach|pre-detach|detach, MODE fail|hang|crash"
                    ));
                }
                a.cases.push(v);
            }
            "-h" | "--help" => return Err(String::new()),
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            _ => a.paths.push(arg.into()),
        }
    }
    if a.cmd == "demo" && !a.paths.is_empty() {
        return Err("demo takes no scenario".into());
    }
    if a.cmd != "demo" && a.paths.is_empty() {
        return Err(format!("{} needs at least one scenario file or directory", a.cmd));
    }
    if !a.cases.is_empty() && a.cmd != "sweep" {
        return Err("--case goes with lab sweep".into());
    }
    if a.partition.is_some() && !["run", "sweep"].contains(&a.cmd.as_str()) {
        return Err("--partition goes with lab run and lab sweep".into());
    }
    if a.real.is_some() && a.cmd != "run" {
        return Err("--real goes with lab run".into());
    }
    // Every scenario of a --real run uses the same functions: two at once would fight over
    // them (a VFIO group opens once system-wide).
    if a.real.is_some() {
        if a.jobs_given && a.jobs > 1 {
            return Err(format!("-j {}: --real runs one scenario at a time (they share the functions)", a.jobs));
        }
        a.jobs = 1;
    }
    Ok(a)
}

/// A subcommand's parsed arguments, or how `lab` ends: the usage for `--help` (an empty
/// error), the error and the usage with status 2 otherwise.
fn args_or_exit<T>(r: Result<T, String>) -> Result<T, ExitCode> {
    match r {
        Ok(a) => Ok(a),
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("lab: {e}\n{USAGE}");
            Err(ExitCode::from(2))
        }
    }
}

fn soak_main() -> ExitCode {
    let a = match args_or_exit(lab_harness::soak::parse_args(std::env::args().skip(2))) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let stop = install_stop_handler();
    let mut out = std::io::stdout();
    match lab_harness::soak::run(&a, &stop, &mut out) {
        lab_harness::soak::SoakEnd::Passed { cycles } => {
            println!("lab soak: passed: {cycles} cycles, nothing grew");
            ExitCode::SUCCESS
        }
        lab_harness::soak::SoakEnd::Interrupted { cycles } => {
            println!("lab soak: interrupted after {cycles} cycles (those passed)");
            ExitCode::from(130)
        }
        lab_harness::soak::SoakEnd::Failed(e) => {
            println!("lab soak: FAILED: {e}");
            ExitCode::from(1)
        }
    }
}

/// Blocks SIGINT/SIGTERM in every thread (children get a clean mask from std) and turns them into
/// a flag the runner checks between steps.
fn install_stop_handler() -> Arc<AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_ok() {
        let flag = stop.clone();
        let _ = std::thread::Builder::new().name("lab-signals".into()).spawn(move || loop {
            if let Ok(sig) = set.wait() {
                if !flag.swap(true, Ordering::SeqCst) {
                    eprintln!("\nlab: {} received: stopping and cleaning up", sig.as_str());
                }
            }
        });
    }
    stop
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<Scenario>, Vec<String>> {
    let files = scenario::collect(paths).map_err(|e| vec![e.to_string()])?;
    if files.is_empty() {
        return Err(vec!["no scenario files (*.toml) found".into()]);
    }
    let mut errs = Vec::new();
    let mut out = Vec::new();
    for f in files {
        match Scenario::load(&f) {
            Ok(s) => out.push(s),
            Err(e) => errs.push(e.to_string()),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

struct Progress {
    tty: bool,
    total: usize,
    done: AtomicUsize,
    lock: Mutex<()>,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress { tty: std::io::stderr().is_terminal(), total, done: AtomicUsize::new(0), lock: Mutex::new(()) }
    }
    fn started(&self, name: &str) {
        if self.tty {
            let _g = self.lock.lock();
            let d = self.done.load(Ordering::Relaxed);
            let n: String = name.chars().take(60).collect();
            eprint!("\r\x1b[K[{d}/{}] {n}", self.total);
        }
    }
    fn finished(&self, r: &CaseResult, verbose: bool) {
        let d = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let _g = self.lock.lock();
        if self.tty {
            eprint!("\r\x1b[K[{d}/{}] {}", self.total, r.name.chars().take(60).collect::<String>());
            if d == self.total {
                eprint!("\r\x1b[K");
            }
        }
        if verbose {
            let w = match &r.outcome {
                Outcome::Passed => "passed".to_string(),
                Outcome::Failed(f) => format!("FAILED: {f}"),
                Outcome::Skipped(s) => format!("skipped: {s}"),
                Outcome::Interrupted => "interrupted".into(),
            };
            if self.tty {
                eprint!("\r\x1b[K");
            }
            println!("{}: {w}", r.name);
        }
    }
}

fn print_step(r: &StepReport) {
    let mut line = format!("  {:>2}. {}", r.index, r.step);
    if !r.answer.is_empty() {
        line.push_str(&format!(" -> {}", r.answer.replace('\n', " | ")));
    }
    println!("{line}");
    for n in &r.notes {
        println!("      note: {n}");
    }
}

fn finish(suite: &str, results: &[CaseResult], a: &Args, stop: &AtomicBool) -> ExitCode {
    println!("{}", report::table(results));
    if let Some(p) = &a.junit {
        if let Err(e) = report::write(p, &report::junit(suite, results)) {
            eprintln!("lab: {e}");
        }
    }
    if let Some(p) = &a.json {
        if let Err(e) = report::write(p, &report::json(suite, results)) {
            eprintln!("lab: {e}");
        }
    }
    let t = Totals::of(results);
    if stop.load(Ordering::Relaxed) {
        ExitCode::from(130)
    } else if t.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run_cases(env: &Env, cases: &[(Scenario, Option<FaultCase>)], a: &Args) -> Vec<CaseResult> {
    let progress = Progress::new(cases.len());
    let steps = |r: &StepReport| print_step(r);
    let observer: Option<runner::Observer<'_>> = if a.verbose && a.jobs == 1 { Some(&steps) } else { None };
    let results = runner::run_parallel(cases, a.jobs, &env.stop, |_, (sc, fault)| {
        let label = match fault {
            Some(f) => format!("{} [{f}]", sc.name),
            None => sc.name.clone(),
        };
        progress.started(&label);
        if observer.is_some() {
            println!("{label}:");
        }
        let r = runner::run_case(env, sc, fault.clone(), observer);
        progress.finished(&r, a.verbose);
        r
    });
    results
        .into_iter()
        .zip(cases)
        .map(|(r, (sc, f))| {
            r.unwrap_or_else(|| CaseResult {
                name: match f {
                    Some(f) => format!("{} [{f}]", sc.name),
                    None => sc.name.clone(),
                },
                file: sc.file.clone(),
                outcome: Outcome::Interrupted,
                elapsed: std::time::Duration::ZERO,
                notes: Vec::new(),
            })
        })
        .collect()
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    match std::env::args().nth(1).as_deref() {
        Some("status") => return status_main(),
        Some("report") => return report_main(),
        Some("soak") => return soak_main(),
        _ => {}
    }
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("lab: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = install_stop_handler();
    let mut env = match Env::from_current_exe(stop.clone()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("lab: cannot find my own executable: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = env.hotplug_mp() {
        eprintln!("lab: {e}");
        return ExitCode::from(2);
    }
    if a.cmd == "demo" {
        return demo::run(&env);
    }
    let scenarios = match load_all(&a.paths) {
        Ok(s) => s,
        Err(errs) => {
            for e in errs {
                eprintln!("lab: {e}");
            }
            eprintln!("lab: nothing was started");
            return ExitCode::from(2);
        }
    };
    match a.cmd.as_str() {
        "check" => {
            for s in &scenarios {
                let skip =
                    runner::skip_reason(s, &env).map(|r| format!(" (would be skipped: {r})")).unwrap_or_default();
                println!("{}: ok, {} steps{skip}", s.file.display(), s.steps.len());
            }
            ExitCode::SUCCESS
        }
        "run" => {
            if let Some(real) = &a.real {
                match realnic::check(real) {
                    Ok(bdfs) => env.real = Some(bdfs),
                    Err(realnic::RealNicError::NoVfio) => {
                        println!("{}", realnic::NO_VFIO);
                        return ExitCode::from(77);
                    }
                    Err(e) => {
                        eprintln!("lab: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let cases: Vec<(Scenario, Option<FaultCase>)> =
                scenarios.into_iter().filter(|s| in_partition(&s.name, a.partition)).map(|s| (s, None)).collect();
            if let Some((k, n)) = a.partition {
                println!("partition {}/{n}: {} scenarios", k + 1, cases.len());
            }
            let results = run_cases(&env, &cases, &a);
            finish("lab run", &results, &a, &stop)
        }
        _ => {
            let mut cases = Vec::new();
            for s in scenarios {
                for f in runner::sweep_cases(&s) {
                    if !a.cases.is_empty() && !a.cases.contains(&format!("{}:{}:{}", f.process, f.op, f.mode)) {
                        continue;
                    }
                    if !in_partition(&format!("{} [{f}]", s.name), a.partition) {
                        continue;
                    }
                    cases.push((s.clone(), Some(f)));
                }
            }
            if cases.is_empty() && a.partition.is_some() {
                println!("this partition has no sweep case");
                return ExitCode::SUCCESS;
            }
            if cases.is_empty() {
                eprintln!("lab: no sweep case matches {:?} (processes are primary, s1, s2, ...)", a.cases);
                return ExitCode::from(2);
            }
            let results = run_cases(&env, &cases, &a);
            finish("lab sweep", &results, &a, &stop)
        }
    }
}
