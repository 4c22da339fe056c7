//! `lab-afl TARGET`: the lab-fuzz target named TARGET under AFL++ (persistent mode).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = lab_fuzz::target(&name) else {
        let names: Vec<&str> = lab_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("lab-afl: unknown target {name:?}; targets: {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
