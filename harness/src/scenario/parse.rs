//! Reading a scenario file: the raw TOML shapes (serde, unknown keys refused) and their checks
//! into a [`Scenario`], each error naming the line, the key and what was expected.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: String,
    lab: LabSpec,
    #[serde(default)]
    step: Vec<toml::Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    port: u16,
    #[serde(default = "one_u64")]
    count: u64,
    #[serde(default = "sixty_four")]
    size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    #[serde(default)]
    on: Option<String>,
    port: u16,
    #[serde(default)]
    rx_min: u64,
    #[serde(default)]
    tx_min: u64,
    #[serde(default = "five_seconds")]
    within_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    port: u16,
    event: String,
    #[serde(default = "five_seconds")]
    within_ms: u64,
}

/// The events `hotplug_mp` reports, by the words it prints.
const EVENTS: [&str; 5] = ["new", "destroy", "link up", "link down", "removed"];

fn five_seconds() -> u64 {
    5000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecv {
    port: u16,
    #[serde(default = "one_u64")]
    count: u64,
    #[serde(default = "two_seconds")]
    timeout_ms: u64,
    #[serde(default)]
    expect: Option<u64>,
}

fn one_u64() -> u64 {
    1
}
fn sixty_four() -> u64 {
    64
}
fn two_seconds() -> u64 {
    2000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    on: Option<String>,
    attach: Option<String>,
    detach: Option<toml::Value>,
    lock: Option<u16>,
    unlock: Option<u16>,
    send: Option<RawSend>,
    recv: Option<RawRecv>,
    cmd: Option<String>,
    link_down: Option<String>,
    link_up: Option<String>,
    unplug: Option<String>,
    kill: Option<String>,
    quit: Option<String>,
    restart: Option<String>,
    start: Option<String>,
    wait_ms: Option<u64>,
    join: Option<String>,
    expect_stats: Option<RawStats>,
    expect_event: Option<RawEvent>,
    #[serde(default)]
    background: bool,
    expect: Option<String>,
    failure: Option<String>,
    ports: Option<BTreeMap<String, String>>,
}

const ACTIONS: &str = "attach, detach, lock, unlock, send, recv, cmd, link_down, link_up, unplug, kill, quit, restart, start, join, expect_stats, expect_event or wait_ms";

/// A name for an app process: lower-case letters, digits, `-` and `_`, not a hotplug_mp name.
fn is_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !is_proc_name(s)
}

/// Line and column (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

fn is_proc_name(s: &str) -> bool {
    s == "primary" || s.strip_prefix('s').is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n >= 1))
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(file: &Path) -> Result<Scenario, ScenarioError> {
        let text =
            std::fs::read_to_string(file).map_err(|source| ScenarioError::Read { file: file.to_path_buf(), source })?;
        Scenario::parse(&text, file)
    }

    /// Parses and checks scenario text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Scenario, ScenarioError> {
        let err_at = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            ScenarioError::Invalid { file: file.to_path_buf(), line, column, message }
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let off = e.span().map(|s| s.start).unwrap_or(0);
            err_at(off, e.message().trim().replace('\n', "; "))
        })?;
        // Lab-level errors point at the line naming the value, else at the [lab] table.
        let lab_at = |what: &str| text.find(what).or_else(|| text.find("[lab]")).unwrap_or(0);
        let lab = raw.lab;
        if lab.secondaries > MAX_SECONDARIES {
            return Err(err_at(
                lab_at("secondaries"),
                format!("secondaries = {}: expected at most {MAX_SECONDARIES}", lab.secondaries),
            ));
        }
        if !(100..=600_000).contains(&lab.answer_timeout_ms) {
            return Err(err_at(
                lab_at("answer_timeout_ms"),
                format!("answer_timeout_ms = {}: expected 100..=600000", lab.answer_timeout_ms),
            ));
        }
        if lab.settle_ms > 600_000 {
            return Err(err_at(lab_at("settle_ms"), format!("settle_ms = {}: expected at most 600000", lab.settle_ms)));
        }
        for (k, p) in &lab.process {
            let at = lab_at(&format!("process.{k}"));
            if p.cmd.is_empty() && !is_proc_name(k) {
                return Err(err_at(
                    at,
                    format!(
                        "process name {k:?}: expected primary or s1, s2, ... (or give it cmd = [...]: your binary)"
                    ),
                ));
            }
            if !p.cmd.is_empty() && !is_app_name(k) {
                return Err(err_at(
                    at,
                    format!("process {k:?} with cmd: expected a name of a-z, 0-9, - and _ that is not primary or sN (those are hotplug_mp)"),
                ));
            }
            if p.cmd.first().is_some_and(|b| b.is_empty()) {
                return Err(err_at(at, format!("process {k:?}: cmd = [\"\", ...]: expected the binary first")));
            }
        }
        let mut bdfs = Vec::new();
        for n in &lab.nics {
            if n.bdf.parse::<lab_core::bus::pci::PciAddr>().is_err() {
                return Err(err_at(
                    lab_at(&n.bdf),
                    format!("nic bdf {:?}: expected a PCI address such as 0000:00:05.0", n.bdf),
                ));
            }
            if bdfs.contains(&n.bdf) {
                return Err(err_at(lab_at(&n.bdf), format!("nic {} given twice", n.bdf)));
            }
            bdfs.push(n.bdf.clone());
        }
        let names = process_names(&lab);
        let mut steps = Vec::new();
        for s in raw.step {
            let off = s.span().start;
            let line = line_col(text, off).0;
            let r = s.into_inner();
            let bad = |m: String| err_at(off, m);
            let mut actions: Vec<Action> = Vec::new();
            if let Some(a) = r.attach {
                actions.push(Action::Attach(a));
            }
            if let Some(d) = r.detach {
                let t = match d {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) if (0..=u16::MAX as i64).contains(&i) => i.to_string(),
                    other => return Err(bad(format!("detach = {other}: expected a port id, a name or devargs"))),
                };
                actions.push(Action::Detach(t));
            }
            if let Some(p) = r.lock {
                actions.push(Action::Lock(PortId(p)));
            }
            if let Some(p) = r.unlock {
                actions.push(Action::Unlock(PortId(p)));
            }
            if let Some(s) = r.send {
                actions.push(Action::Send { port: PortId(s.port), count: s.count, size: s.size });
            }
            if let Some(s) = r.recv {
                actions.push(Action::Recv {
                    port: PortId(s.port),
                    count: s.count,
                    timeout_ms: s.timeout_ms,
                    exact: s.expect,
                });
            }
            if let Some(c) = r.cmd {
                actions.push(Action::Cmd(c));
            }
            for (v, f) in [
                (r.link_down, Action::LinkDown as fn(String) -> Action),
                (r.link_up, Action::LinkUp),
                (r.unplug, Action::Unplug),
            ] {
                if let Some(b) = v {
                    if !bdfs.contains(&b) {
                        return Err(bad(format!("{b:?} is not a [[lab.nic]] of this lab (expected one of {bdfs:?})")));
                    }
                    actions.push(f(b));
                }
            }
            for (v, f) in [
                (r.kill, Action::Kill as fn(String) -> Action),
                (r.quit, Action::Quit),
                (r.restart, Action::Restart),
                (r.start, Action::Start),
                (r.join, Action::Join),
            ] {
                if let Some(p) = v {
                    if !names.contains(&p) {
                        return Err(bad(format!("process {p:?} is not in the lab (expected one of {names:?})")));
                    }
                    actions.push(f(p));
                }
            }
            if let Some(ms) = r.wait_ms {
                actions.push(Action::Wait(ms));
            }
            let mut stats_on = None;
            if let Some(st) = r.expect_stats {
                if st.within_ms > 600_000 {
                    return Err(bad(format!("expect_stats within_ms = {}: expected at most 600000", st.within_ms)));
                }
                stats_on = st.on;
                actions.push(Action::ExpectStats {
                    port: PortId(st.port),
                    rx_min: st.rx_min,
                    tx_min: st.tx_min,
                    within_ms: st.within_ms,
                });
            }
            if let Some(ev) = r.expect_event {
                if !EVENTS.contains(&ev.event.as_str()) {
                    return Err(bad(format!("expect_event event = {:?}: expected one of {EVENTS:?}", ev.event)));
                }
                if ev.within_ms > 600_000 {
                    return Err(bad(format!("expect_event within_ms = {}: expected at most 600000", ev.within_ms)));
                }
                actions.push(Action::ExpectEvent { port: PortId(ev.port), event: ev.event, within_ms: ev.within_ms });
            }
            let action = match actions.len() {
                1 => actions.remove(0),
                0 => return Err(bad(format!("step has no action: expected one of {ACTIONS}"))),
                _ => return Err(bad(format!("step has {} actions: expected exactly one of {ACTIONS}", actions.len()))),
            };
            if let (Some(a), Some(b)) = (&r.on, &stats_on) {
                if a != b {
                    return Err(bad(format!("on = {a:?} and expect_stats.on = {b:?}: expected one of them")));
                }
            }
            let on = r.on.or(stats_on).unwrap_or_else(|| "primary".into());
            if !names.contains(&on) {
                return Err(bad(format!("on = {on:?}: expected one of {names:?}")));
            }
            if lab.is_app(&on) && matches!(action, Action::ExpectEvent { .. }) {
                return Err(bad(format!(
                    "on = {on:?}: {on} is your binary; events are reported by hotplug_mp processes (primary, sN)"
                )));
            }
            if lab.is_app(&on) && action.command().is_some() {
                return Err(bad(format!(
                    "on = {on:?}: {on} is your binary (cmd = [...]): it takes no commands; act from primary or sN and observe {on} with expect_stats"
                )));
            }
            let expect = match (r.expect.as_deref(), r.failure) {
                (_, Some(f)) if r.expect.as_deref().is_some_and(|e| e != "failure") => {
                    return Err(bad(format!(
                        "expect = {:?} and failure = {f:?}: expected one of them",
                        r.expect.unwrap_or_default()
                    )))
                }
                (_, Some(f)) => Expect::Failure(f),
                (None | Some("ok"), None) => Expect::Ok,
                (Some("any"), None) => Expect::Any,
                (Some(e), None) => {
                    return Err(bad(format!("expect = {e:?}: expected \"ok\", \"any\" or failure = \"text\"")))
                }
            };
            let ports = match r.ports {
                None => None,
                Some(m) => {
                    let mut v = Vec::new();
                    for (k, name) in m {
                        let id = k
                            .parse::<u16>()
                            .map_err(|_| bad(format!("ports key {k:?}: expected a port id (0, 1, ...)")))?;
                        v.push((id, name));
                    }
                    v.sort();
                    Some(v)
                }
            };
            if r.background && action.command().is_none() {
                return Err(bad(
                    "background = true: expected a process command (attach, detach, send, recv, ...)".into()
                ));
            }
            steps.push(Step { line, on, action, expect, ports, background: r.background });
        }
        if steps.is_empty() {
            return Err(err_at(text.len(), "no [[step]]: expected at least one".into()));
        }
        let name =
            raw.name.unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        Ok(Scenario { name, file: file.to_path_buf(), description: raw.description, lab, steps })
    }
}
