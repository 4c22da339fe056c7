//! The telemetry commands of a process's ports and hotplug layer: DPDK's `/ethdev/list`,
//! `/ethdev/info`, `/ethdev/stats`, `/ethdev/xstats` and `/ethdev/link_status` (DPDK 22.11's
//! names and field names), DPDK's `/mempool/list` and `/mempool/info`, and the lab's
//! `/lab/ports`, `/lab/hotplug` and `/lab/mempool`.
//!
//! Counters are read where the drivers already keep them: nothing here runs on the data path. A
//! port is read under its local mutex, waited for at most [`PORT_WAIT`]: a process that holds a
//! port for a long receive loop makes the command answer null ("port busy"), never hangs the
//! telemetry thread. Every handler holds only a `Weak` to the process: a client's command racing
//! a shutdown gets a null answer.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{json, Value};

use crate::ethdev::{PortId, PortState, MAX_PORTS};
use crate::mbuf::Mempool;
use crate::telemetry::{CmdError, Telemetry};

use super::Inner;

/// How long a command waits for a port's local mutex.
pub(crate) const PORT_WAIT: Duration = Duration::from_millis(50);

/// DPDK's `RTE_ETH_DEV_ATTACHED`, the `state` `/ethdev/info` reports for a usable port.
const RTE_ETH_DEV_ATTACHED: u32 = 1;

/// The port id of a command's parameter, as DPDK parses it (decimal, below the port limit).
fn port_param(p: Option<&str>) -> Result<PortId, CmdError> {
    let p = p.ok_or(CmdError::MissingParam { what: "port id" })?;
    let bad = |why: String| CmdError::BadParam { param: p.into(), why };
    let id: u16 = p.trim().parse().map_err(|_| bad("not a port id".into()))?;
    if usize::from(id) >= MAX_PORTS {
        return Err(bad(format!("port ids are below {MAX_PORTS}")));
    }
    Ok(PortId(id))
}

/// DPDK's `rte_ether_format_addr`: upper-case hex, colon-separated.
fn mac_text(m: &[u8; 6]) -> String {
    format!("{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Registers the commands on `t`, each holding a `Weak` to `inner`.
pub(super) fn register(t: &Telemetry, inner: &Arc<Inner>) {
    type Body = fn(&Inner, Option<&str>) -> Result<Value, CmdError>;
    let cmds: [(&str, &str, Body); 10] = [
        ("/ethdev/list", "Returns list of available ethdev ports. Takes no parameters", ethdev_list),
        ("/ethdev/info", "Returns the device info for a port. Parameters: int port_id", ethdev_info),
        ("/ethdev/stats", "Returns the common stats for a port. Parameters: int port_id", ethdev_stats),
        ("/ethdev/xstats", "Returns the extended stats for a port. Parameters: int port_id", ethdev_xstats),
        ("/ethdev/link_status", "Returns the link status for a port. Parameters: int port_id", ethdev_link),
        ("/mempool/list", "Returns list of available mempool. Takes no parameters", mempool_list),
        ("/mempool/info", "Returns mempool info. Parameters: pool_name", mempool_info),
        (
            "/lab/ports",
            "Returns the shared port table: id, name, devargs, driver, state, owner pid, and this process's handle. Takes no parameters",
            lab_ports,
        ),
        (
            "/lab/hotplug",
            "Returns the last hotplug operations: what, from whom, outcome, each process's answer; the port ids held until slow processes release them. Takes no parameters",
            lab_hotplug,
        ),
        (
            "/lab/mempool",
            "Returns every buffer pool: size, free in the ring, in the handles' caches, in use. Takes no parameters",
            lab_mempool,
        ),
    ];
    for (name, help, body) in cmds {
        let w: Weak<Inner> = Arc::downgrade(inner);
        let _ = t.register(name, help, move |p| {
            let inner = w.upgrade().ok_or_else(|| CmdError::Unavailable("process shutting down".into()))?;
            body(&inner, p)
        });
    }
}

/// Runs `f` on this process's handle of the port named by `p`.
fn with_port<R>(
    inner: &Inner,
    p: Option<&str>,
    f: impl FnOnce(&mut crate::ethdev::LocalPort) -> R,
) -> Result<R, CmdError> {
    let port = port_param(p)?;
    let mut s = inner.ports.slot_within(port, PORT_WAIT).map_err(|why| CmdError::Unavailable(why.into()))?;
    let lp = s.as_mut().ok_or_else(|| CmdError::BadParam { param: port.to_string(), why: "no such port".into() })?;
    Ok(f(lp))
}

fn ethdev_list(inner: &Inner, _: Option<&str>) -> Result<Value, CmdError> {
    // A port busy past the wait is one that has a handle (someone holds it): listed.
    let ids: Vec<u16> = inner
        .table
        .entries()
        .into_iter()
        .map(|e| e.port)
        .filter(|p| inner.ports.slot_within(*p, PORT_WAIT).map_or(true, |s| s.is_some()))
        .map(|p| p.0)
        .collect();
    Ok(json!(ids))
}

fn ethdev_info(inner: &Inner, p: Option<&str>) -> Result<Value, CmdError> {
    with_port(inner, p, |lp| {
        let i = lp.dev.info();
        json!({
            "name": lp.name, "state": RTE_ETH_DEV_ATTACHED, "nb_rx_queues": i.nb_rxq, "nb_tx_queues": i.nb_txq,
            "port_id": lp.port.0, "mtu": i.mtu, "mac_addr": mac_text(&i.mac), "dev_started": 1,
            "dev_configured": 1, "max_rx_queues": i.max_rxq, "max_tx_queues": i.max_txq, "driver_name": i.driver,
            "numa_node": -1,
        })
    })
}

/// Queues DPDK's `/ethdev/stats` reports counters for.
const QUEUE_STAT_CNTRS: usize = 16;

fn ethdev_stats(inner: &Inner, p: Option<&str>) -> Result<Value, CmdError> {
    with_port(inner, p, |lp| {
        let s = lp.dev.stats();
        // DPDK's per-queue arrays (RTE_ETHDEV_QUEUE_STAT_CNTRS = 16 entries, zeros past the
        // port's queues).
        let (rxq, txq) = lp.dev.queue_stats();
        let q = |v: &[crate::ethdev::QueueStats], f: fn(&crate::ethdev::QueueStats) -> u64| {
            (0..QUEUE_STAT_CNTRS).map(|i| v.get(i).map_or(0, f)).collect::<Vec<u64>>()
        };
        json!({
            "ipackets": s.ipackets, "opackets": s.opackets, "ibytes": s.ibytes, "obytes": s.obytes,
            "imissed": s.imissed, "ierrors": s.ierrors, "oerrors": s.oerrors, "rx_nombuf": s.rx_nombuf,
            "q_ipackets": q(&rxq, |x| x.packets), "q_opackets": q(&txq, |x| x.packets),
            "q_ibytes": q(&rxq, |x| x.bytes), "q_obytes": q(&txq, |x| x.bytes),
            "q_errors": q(&rxq, |x| x.errors),
        })
    })
}

fn ethdev_xstats(inner: &Inner, p: Option<&str>) -> Result<Value, CmdError> {
    // DPDK's basic extended statistics, the ones every port has, by their names.
    with_port(inner, p, |lp| {
        let s = lp.dev.stats();
        json!({
            "rx_good_packets": s.ipackets, "tx_good_packets": s.opackets, "rx_good_bytes": s.ibytes,
            "tx_good_bytes": s.obytes, "rx_missed_errors": s.imissed, "rx_errors": s.ierrors,
            "tx_errors": s.oerrors, "rx_mbuf_allocation_errors": s.rx_nombuf,
        })
    })
}

fn ethdev_link(inner: &Inner, p: Option<&str>) -> Result<Value, CmdError> {
    with_port(inner, p, |lp| {
        let l = lp.dev.link();
        if l.up {
            json!({ "status": "UP", "speed": l.speed_mbps, "duplex": "full-duplex" })
        } else {
            json!({ "status": "DOWN" })
        }
    })
}

fn lab_ports(inner: &Inner, _: Option<&str>) -> Result<Value, CmdError> {
    let rows: Vec<Value> = inner
        .table
        .entries()
        .into_iter()
        .map(|e| {
            let local = inner.ports.slot_within(e.port, PORT_WAIT);
            let (handle, locks) = match &local {
                Ok(s) => match s.as_ref() {
                    Some(lp) if lp.gen == e.gen => (json!("attached"), lp.locks),
                    Some(_) => (json!("stale"), 0),
                    None => (json!("none"), 0),
                },
                Err(why) => (json!(why), 0),
            };
            let state = match e.state {
                PortState::Unused => "unused",
                PortState::Attaching => "attaching",
                PortState::Attached => "attached",
                PortState::Detaching => "detaching",
            };
            json!({
                "port_id": e.port.0, "name": e.name, "devargs": e.devargs, "driver": e.driver, "state": state,
                "gen": e.gen, "owner_pid": e.owner_pid, "mac_addr": mac_text(&e.mac), "mtu": e.mtu,
                "nb_rx_queues": e.nb_rxq, "nb_tx_queues": e.nb_txq, "local_handle": handle, "locks": locks,
            })
        })
        .collect();
    Ok(json!(rows))
}

fn lab_hotplug(inner: &Inner, _: Option<&str>) -> Result<Value, CmdError> {
    let mut v = inner.history.to_json();
    // Port ids held out of use until slow secondaries release them (the primary's own record).
    let held: Vec<Value> = inner
        .held
        .ports()
        .into_iter()
        .map(|(p, pids, kept)| json!({"port": p.0, "waiting_for": pids, "handle_kept": kept}))
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("held".into(), Value::Array(held));
    }
    Ok(v)
}

/// The pools of the shared memory: every zone that holds one.
fn pools(inner: &Inner) -> Vec<Mempool> {
    let shm = inner.rt.shm();
    shm.zones().into_iter().filter_map(|z| Mempool::lookup(shm, &z.name, 0).ok()).collect()
}

fn pool_json(m: &Mempool) -> Value {
    let (common, cached) = (m.common_count(), m.cached_count());
    json!({
        "name": m.name(), "size": m.size(), "common_pool_count": common, "cached": cached,
        "in_use": m.size().saturating_sub(common).saturating_sub(cached),
        "cache_handles": m.cache_handles(),
    })
}

fn mempool_list(inner: &Inner, _: Option<&str>) -> Result<Value, CmdError> {
    Ok(json!(pools(inner).iter().map(|m| m.name().to_string()).collect::<Vec<_>>()))
}

fn mempool_info(inner: &Inner, p: Option<&str>) -> Result<Value, CmdError> {
    let name = p.ok_or(CmdError::MissingParam { what: "pool_name" })?;
    let m = Mempool::lookup(inner.rt.shm(), name, 0)
        .map_err(|e| CmdError::BadParam { param: name.into(), why: e.to_string() })?;
    Ok(pool_json(&m))
}

fn lab_mempool(inner: &Inner, _: Option<&str>) -> Result<Value, CmdError> {
    Ok(json!(pools(inner).iter().map(pool_json).collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_params_are_checked_as_dpdk_does() {
        assert_eq!(port_param(Some("3")).unwrap(), PortId(3));
        assert!(matches!(port_param(None), Err(CmdError::MissingParam { .. })));
        assert!(matches!(port_param(Some("x")), Err(CmdError::BadParam { .. })));
        let e = port_param(Some(&MAX_PORTS.to_string())).unwrap_err().to_string();
        assert!(e.contains(&format!("below {MAX_PORTS}")), "{e}");
        assert_eq!(mac_text(&[0x02, 0, 0xab, 1, 2, 0xff]), "02:00:AB:01:02:FF");
    }
}
