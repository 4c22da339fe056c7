//! `lab status [--prefix P] [--watch] [--json]`: every process of a running lab, read over
//! telemetry (the same sockets DPDK's `dpdk-telemetry.py` reaches, see `lab_core::telemetry`).
//!
//! One row per process and port: role, pid, the port's id and name, link, rx/tx packets, their
//! rates (from the previous refresh; `--watch` refreshes in place every `--interval-ms`), and
//! drops (imissed + ierrors + rx_nombuf + oerrors). A process with no port gets one row. A
//! process that does not answer within the timeout is shown as such and does not hold up the
//! others.

use lab_core::ethdev::PortId;
use lab_core::telemetry::{self, Client, ClientError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long one process may take to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// One port as one process sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRow {
    /// Port id.
    pub port: PortId,
    /// Device name.
    pub name: String,
    /// Link status: "UP" or "DOWN" (DPDK's words), with speed in Mb/s.
    pub link: String,
    /// Packets received.
    pub rx: u64,
    /// Packets sent.
    pub tx: u64,
    /// Drops: imissed + ierrors + rx_nombuf + oerrors.
    pub drops: u64,
    /// Receive rate since the previous refresh, packets/s.
    pub rx_pps: Option<f64>,
    /// Transmit rate since the previous refresh, packets/s.
    pub tx_pps: Option<f64>,
}

/// One process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    /// Telemetry instance (0: the primary's socket).
    pub instance: u32,
    /// Pid (from the greeting), when it answered.
    pub pid: Option<u64>,
    /// "primary", "secondary", or what went wrong.
    pub role: String,
    /// Its ports.
    pub ports: Vec<PortRow>,
}

/// What `lab status` cannot do.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No lab process serves telemetry under that prefix.
    #[error("no lab process with telemetry under prefix {prefix:?} (looked in {dir})")]
    NoLab {
        /// The prefix.
        prefix: String,
        /// Its runtime dir.
        dir: PathBuf,
    },
}

fn read_process(path: &Path) -> Result<(u64, String, Vec<PortRow>), ClientError> {
    let mut c = Client::connect(path, ANSWER_TIMEOUT)?;
    let pid = c.greeting()["pid"].as_u64().unwrap_or(0);
    let me = c.query(path, "/lab/process")?;
    let role = me["role"].as_str().unwrap_or("?").to_string();
    let mut ports = Vec::new();
    let list = c.query(path, "/ethdev/list")?;
    // Ids outside u16 are not port ids: a confused or hostile peer's, skipped.
    for id in list.as_array().into_iter().flatten().filter_map(|v| v.as_u64().and_then(|i| u16::try_from(i).ok())) {
        let info = c.query(path, &format!("/ethdev/info,{id}"))?;
        let stats = c.query(path, &format!("/ethdev/stats,{id}"))?;
        let link = c.query(path, &format!("/ethdev/link_status,{id}"))?;
        let n = |k: &str| stats[k].as_u64().unwrap_or(0);
        let link = match link["status"].as_str() {
            Some("UP") => format!("UP {}", link["speed"].as_u64().unwrap_or(0)),
            Some(s) => s.to_string(),
            None => "?".into(),
        };
        ports.push(PortRow {
            port: PortId(id),
            name: info["name"].as_str().unwrap_or("?").to_string(),
            link,
            rx: n("ipackets"),
            tx: n("opackets"),
            drops: ["imissed", "ierrors", "rx_nombuf", "oerrors"].iter().fold(0u64, |a, k| a.saturating_add(n(k))),
            rx_pps: None,
            tx_pps: None,
        });
    }
    Ok((pid, role, ports))
}

/// Reads every process of the lab under `prefix` once.
pub fn snapshot(prefix: &str) -> Result<Vec<ProcRow>, StatusError> {
    let dir = lab_core::runtime::runtime_dir(prefix);
    let socks = telemetry::sockets_in(&dir);
    if socks.is_empty() {
        return Err(StatusError::NoLab { prefix: prefix.into(), dir });
    }
    Ok(socks
        .into_iter()
        .filter_map(|(instance, path)| match read_process(&path) {
            Ok((pid, role, ports)) => Some(ProcRow { instance, pid: Some(pid), role, ports }),
            // A socket nobody listens on is a process that just exited: not a row.
            Err(ClientError::Io { what: "connect", .. }) => None,
            Err(e) => Some(ProcRow { instance, pid: None, role: format!("no answer: {e}"), ports: Vec::new() }),
        })
        .collect())
}

/// Fills the rates of `now` from `before`, taken `dt` earlier (matched by pid and port).
pub fn rates(now: &mut [ProcRow], before: &[ProcRow], dt: Duration) {
    let secs = dt.as_secs_f64();
    if secs <= 0.0 {
        return;
    }
    let old: HashMap<(Option<u64>, PortId), &PortRow> =
        before.iter().flat_map(|p| p.ports.iter().map(move |r| ((p.pid, r.port), r))).collect();
    for p in now {
        for r in &mut p.ports {
            if let Some(o) = old.get(&(p.pid, r.port)) {
                r.rx_pps = Some(r.rx.saturating_sub(o.rx) as f64 / secs);
                r.tx_pps = Some(r.tx.saturating_sub(o.tx) as f64 / secs);
            }
        }
    }
}

fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(x) if x >= 1e6 => format!("{:.2}M", x / 1e6),
        Some(x) if x >= 1e3 => format!("{:.1}k", x / 1e3),
        Some(x) => format!("{x:.0}"),
    }
}

/// The table, one line per process and port.
pub fn table(rows: &[ProcRow]) -> String {
    let mut out = format!(
        "{:<10} {:>8} {:>4} {:>4} {:<20} {:<10} {:>12} {:>12} {:>9} {:>9} {:>8}\n",
        "ROLE", "PID", "INST", "PORT", "NAME", "LINK", "RX-PKTS", "TX-PKTS", "RX-PPS", "TX-PPS", "DROPS"
    );
    for p in rows {
        let pid = p.pid.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
        if p.ports.is_empty() {
            out += &format!("{:<10} {:>8} {:>4} {:>4}\n", p.role, pid, p.instance, "-");
        }
        for r in &p.ports {
            out += &format!(
                "{:<10} {:>8} {:>4} {:>4} {:<20} {:<10} {:>12} {:>12} {:>9} {:>9} {:>8}\n",
                p.role,
                pid,
                p.instance,
                r.port,
                r.name,
                r.link,
                r.rx,
                r.tx,
                rate(r.rx_pps),
                rate(r.tx_pps),
                r.drops
            );
        }
    }
    out
}

/// The rows as JSON (for scripts).
pub fn to_json(rows: &[ProcRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|p| {
                json!({
                    "instance": p.instance, "pid": p.pid, "role": p.role,
                    "ports": p.ports.iter().map(|r| json!({
                        "port": r.port.0, "name": r.name, "link": r.link, "rx_packets": r.rx, "tx_packets": r.tx,
                        "rx_pps": r.rx_pps, "tx_pps": r.tx_pps, "drops": r.drops,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// Runs `lab status`: once, or with `watch` every `interval` until `stop` says so (the caller's
/// Ctrl-C flag). Prints to stdout.
pub fn run(
    prefix: &str,
    watch: bool,
    json_out: bool,
    interval: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), StatusError> {
    let mut prev: Option<(Instant, Vec<ProcRow>)> = None;
    loop {
        let t = Instant::now();
        let mut rows = snapshot(prefix)?;
        if let Some((t0, before)) = &prev {
            rates(&mut rows, before, t.duration_since(*t0));
        }
        if json_out {
            println!("{}", to_json(&rows));
        } else if watch {
            // Refresh in place: home, clear to the end of the screen.
            print!("\x1b[H\x1b[J{}", table(&rows));
        } else {
            print!("{}", table(&rows));
        }
        if !watch {
            return Ok(());
        }
        prev = Some((t, rows));
        let until = t + interval;
        while Instant::now() < until {
            if stop() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u64, rx: u64, tx: u64) -> ProcRow {
        ProcRow {
            instance: 0,
            pid: Some(pid),
            role: "primary".into(),
            ports: vec![PortRow {
                port: PortId(1),
                name: "net_null0".into(),
                link: "UP 10000".into(),
                rx,
                tx,
                drops: 0,
                rx_pps: None,
                tx_pps: None,
            }],
        }
    }

    #[test]
    fn rates_come_from_the_previous_refresh_of_the_same_process_and_port() {
        let before = vec![row(7, 100, 50)];
        let mut now = vec![row(7, 1100, 50), row(8, 5, 5)];
        rates(&mut now, &before, Duration::from_millis(500));
        assert_eq!(now[0].ports[0].rx_pps, Some(2000.0));
        assert_eq!(now[0].ports[0].tx_pps, Some(0.0));
        assert_eq!(now[1].ports[0].rx_pps, None, "another pid has no previous figure");
        let t = table(&now);
        assert!(t.contains("2.0k") && t.contains("net_null0"), "{t}");
    }
}
