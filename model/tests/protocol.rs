//! The hotplug protocol's state machines (`lab_core::hotplug::machine`), model-checked: every
//! scenario with two secondaries and every fault (a local step failing, a timer firing on a
//! silent peer, a process crashing, the primary included, one of each per run), each of them
//! with three secondaries and crashes, every scenario with a step the primary cannot send (the
//! secondaries heal), and each safeguard of the protocol left out in turn, where
//! the checker must find what that safeguard prevents. The deeper run is the `hotplug-model`
//! command (README, "What is proven").

use lab_model::{check, scenarios, Config, Faults, Safeguard};

fn scenario(secondaries: u8, faults: Faults, name: &str) -> Config {
    scenarios(secondaries, faults)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

/// Every property holds in every state reachable in `name`, and the search was not trivial.
fn holds(secondaries: u8, faults: Faults, name: &str, at_least: usize) {
    let o = check(scenario(secondaries, faults, name), 1);
    let found: Vec<String> = o.violations.iter().map(|(p, t)| format!("{p}\n{t}")).collect();
    assert!(found.is_empty(), "{name}: {}", found.join("\n"));
    assert!(o.unique >= at_least, "{name}: only {} states explored", o.unique);
    eprintln!("{name}: {} unique states, depth {}, {:.1} s", o.unique, o.depth, o.elapsed.as_secs_f64());
}

#[test]
fn two_processes_attaching_one_device_with_every_fault() {
    holds(2, Faults::All, "same-device-attach", 200_000);
}

#[test]
fn an_attach_racing_a_detach_with_every_fault() {
    holds(2, Faults::All, "attach-detach-race", 35_000);
}

#[test]
fn two_devices_at_once_with_every_fault() {
    holds(2, Faults::All, "two-devices", 350_000);
}

#[test]
fn a_lock_vetoing_a_detach_with_every_fault() {
    holds(2, Faults::All, "lock-veto", 4_000);
}

#[test]
fn a_secondary_joining_during_operations_with_every_fault() {
    holds(2, Faults::All, "late-joiner", 600_000);
}

#[test]
fn three_secondaries_with_crashes_in_every_scenario() {
    for (name, cfg) in scenarios(3, Faults::Crash) {
        let o = check(cfg, 1);
        assert!(o.violations.is_empty(), "{name}: {:?}", o.violations);
        assert!(o.unique > 3_000, "{name}: only {} states", o.unique);
    }
}

#[test]
fn every_scenario_with_a_step_the_primary_cannot_send() {
    for (name, cfg) in scenarios(2, Faults::Loss) {
        let o = check(cfg, 1);
        assert!(o.violations.is_empty(), "{name}: {:?}", o.violations);
        assert!(o.unique > 1_000, "{name}: only {} states", o.unique);
    }
}

/// Leaving `without` out of `name` breaks `property`: the checker finds it, with a trace.
fn found_without(without: Safeguard, name: &str, property: &str) {
    found_without_in(Faults::Timeout, without, name, property)
}

fn found_without_in(faults: Faults, without: Safeguard, name: &str, property: &str) {
    let mut cfg = scenario(2, faults, name);
    cfg.without = Some(without);
    let o = check(cfg, 1);
    let hit = o.violations.iter().find(|(p, _)| p.starts_with(property));
    let (_, trace) =
        hit.unwrap_or_else(|| panic!("{name} without {without:?}: {property} not found: {:?}", o.violations));
    assert!(trace.contains(" 1. "), "a numbered trace: {trace}");
}

#[test]
fn without_the_generation_rule_a_stale_step_overrides_a_newer_port() {
    found_without(Safeguard::Generations, "same-device-attach", "(a)");
}

#[test]
fn without_the_quarantine_a_port_id_names_two_devices() {
    found_without(Safeguard::Quarantine, "two-devices", "(d)");
}

#[test]
fn without_the_heal_a_step_that_was_never_sent_leaves_a_handle_behind() {
    found_without_in(Faults::Loss, Safeguard::Heal, "attach-detach-race", "(a)");
}

#[test]
fn without_the_deadline_an_expired_request_is_done_behind_its_askers_back() {
    found_without(Safeguard::Deadline, "attach-detach-race", "(a)");
}
