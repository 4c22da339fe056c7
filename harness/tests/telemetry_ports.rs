//! The ethdev and lab telemetry commands in real `hotplug_mp` processes: a port's counters as
//! DPDK names them, the shared table with each port's owner, the record of hotplug operations with
//! every process's answer (a veto included), the pools, bad parameters answered with null, and
//! DPDK's own `dpdk-telemetry.py` reading the ports when it is installed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lab_core::telemetry::dpdk_runtime_directory;
use lab_harness::Lab;
use serde_json::Value;

/// Asks `cmd` of a process of the lab over its telemetry.
fn ask(lab: &Lab, process: &str, cmd: &str) -> Value {
    lab.telemetry(process, cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(lab: &mut Lab, on: &str, line: &str, want: &str) {
    let a = lab.cmd(on, line).unwrap();
    assert!(a.contains(want), "{line}: {a}");
}

/// The last operation of a process's record.
fn last_op(lab: &Lab, process: &str) -> Value {
    let h = ask(lab, process, "/lab/hotplug");
    h["operations"].as_array().and_then(|a| a.last()).cloned().unwrap_or_else(|| panic!("no operation: {h}"))
}

/// A lab whose s1 hangs releasing net_null0 (twice the 300 ms timeout and 500 ms), with
/// net_null0 attached everywhere.
fn slow_release_lab(secondaries: usize) -> Lab {
    let mut lab = Lab::builder()
        .secondaries(secondaries)
        .eal("--hotplug-timeout-ms=300")
        .process_eal("s1", "--lab-fault=detach:net_null0:hang")
        .start()
        .expect("lab");
    ok(&mut lab, "primary", "attach net_null0", "attached device net_null0");
    lab.assert_consistent();
    lab
}

/// Every process quits cleanly, the secondaries first.
fn quit_all(lab: &mut Lab) {
    for x in lab.processes().into_iter().rev() {
        assert!(lab.quit(&x).unwrap().is_some_and(|s| s.success()), "{x} quits cleanly");
    }
}

fn pname(lab: &Lab, p: &str) -> String {
    format!("process {}", lab.pid(p).unwrap())
}

fn answer_of<'a>(op: &'a Value, process: &str, step: &str) -> &'a str {
    op["answers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["process"] == process && a["step"] == step)
        .and_then(|a| a["answer"].as_str())
        .unwrap_or_else(|| panic!("no {step} answer of {process} in {op}"))
}

#[test]
fn ethdev_and_lab_commands_follow_ports_and_operations_in_every_process() {
    let mut lab = Lab::builder().vdev("net_null0").secondaries(2).start().expect("lab");
    assert_eq!(ask(&lab, "s1", "/lab/process")["pid"], lab.pid("s1").unwrap());
    assert_eq!(ask(&lab, "s2", "/lab/process")["pid"], lab.pid("s2").unwrap());

    // Counters of a port, DPDK's names, in the process that sent.
    ok(&mut lab, "primary", "send 0 100 64", "sent 100 packets");
    let st = ask(&lab, "primary", "/ethdev/stats,0");
    assert_eq!(st["opackets"], 100, "{st}");
    assert_eq!(st["obytes"], 6400, "{st}");
    let x = ask(&lab, "primary", "/ethdev/xstats,0");
    assert_eq!(x["tx_good_packets"], 100, "{x}");
    let info = ask(&lab, "primary", "/ethdev/info,0");
    assert_eq!(info["name"], "net_null0", "{info}");
    assert_eq!(info["port_id"], 0);
    let mac = info["mac_addr"].as_str().unwrap();
    assert!(mac.len() == 17 && mac.split(':').all(|b| u8::from_str_radix(b, 16).is_ok()), "{mac}");
    assert_eq!(ask(&lab, "primary", "/ethdev/link_status,0")["status"], "UP");

    // Attach from a secondary: every process lists it; the primary's record names the asker and
    // holds the other secondary's answer; the table names the asker as the owner.
    ok(&mut lab, "s1", "attach net_null1", "attached");
    for p in ["primary", "s1", "s2"] {
        assert_eq!(ask(&lab, p, "/ethdev/list"), serde_json::json!([0, 1]), "{p}");
    }
    let op = last_op(&lab, "primary");
    assert_eq!(op["op"], "attach", "{op}");
    assert_eq!(op["target"], "net_null1");
    assert_eq!(op["from"], pname(&lab, "s1"));
    assert_eq!(op["outcome"], "ok");
    assert_eq!(op["port"], 1);
    assert_eq!(answer_of(&op, &pname(&lab, "s2"), "attach"), "ok");
    assert!(op["answers"].as_array().unwrap().iter().all(|a| a["process"] != pname(&lab, "s1")));
    let asked = last_op(&lab, "s1");
    assert_eq!((asked["from"].as_str(), asked["outcome"].as_str()), (Some("this process"), Some("ok")), "{asked}");
    assert_eq!(answer_of(&asked, "the primary", "request"), "ok");
    let told = last_op(&lab, "s2");
    assert_eq!((told["op"].as_str(), told["from"].as_str()), (Some("attach"), Some("the primary")), "{told}");
    let ports = ask(&lab, "s2", "/lab/ports");
    let row = ports.as_array().unwrap().iter().find(|r| r["port_id"] == 1).unwrap_or_else(|| panic!("{ports}"));
    assert_eq!(row["owner_pid"], lab.pid("s1").unwrap(), "{row}");
    assert_eq!(row["devargs"], "net_null1");
    assert_eq!(row["driver"], "net_null");
    assert_eq!(row["state"], "attached");
    assert_eq!(row["local_handle"], "attached");

    // A veto: s2 holds a lock, the primary's detach fails, and its record says who refused and why.
    ok(&mut lab, "s2", "lock 1", "locked");
    let a = lab.cmd("primary", "detach 1").unwrap();
    assert!(a.starts_with("failed to detach"), "{a}");
    let op = last_op(&lab, "primary");
    assert_eq!((op["op"].as_str(), op["outcome"].as_str()), (Some("detach"), Some("failed")), "{op}");
    assert!(op["error"].as_str().unwrap().contains("locked"), "{op}");
    assert!(answer_of(&op, &pname(&lab, "s2"), "predetach").contains("locked"), "{op}");
    assert_eq!(
        ask(&lab, "s2", "/lab/ports").as_array().unwrap().iter().find(|r| r["port_id"] == 1).unwrap()["locks"],
        1
    );
    ok(&mut lab, "s2", "unlock 1", "unlocked");
    ok(&mut lab, "s2", "detach 1", "detached");
    assert_eq!(ask(&lab, "primary", "/ethdev/list"), serde_json::json!([0]));
    assert_eq!(last_op(&lab, "primary")["from"], pname(&lab, "s2"));

    // The pools: the default one, its size, and buffers in use within it.
    let pools = ask(&lab, "s1", "/lab/mempool");
    let d =
        pools.as_array().unwrap().iter().find(|m| m["name"] == "lab_mbuf_pool").unwrap_or_else(|| panic!("{pools}"));
    let size = d["size"].as_u64().unwrap();
    assert!(size >= 512 && d["in_use"].as_u64().unwrap() <= size, "{d}");
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("no {k} in {d}"));
    assert_eq!(n("common_pool_count") + n("cached") + n("in_use"), size, "{d}");
    assert!(n("cache_handles") >= 1, "the ports' pool handles have caches: {d}");
    assert_eq!(ask(&lab, "primary", "/mempool/list"), serde_json::json!(["lab_mbuf_pool"]));
    assert_eq!(ask(&lab, "primary", "/mempool/info,lab_mbuf_pool")["size"], size);

    // Bad parameters: null, as DPDK answers, and the process carries on.
    for bad in ["/ethdev/stats,9", "/ethdev/stats,x", "/ethdev/stats", "/ethdev/info,65535", "/mempool/info,nope"] {
        assert_eq!(ask(&lab, "primary", bad), Value::Null, "{bad}");
    }
    assert_eq!(ask(&lab, "primary", "/ethdev/stats,0")["opackets"], 100);

    quit_all(&mut lab);
}

#[test]
fn a_silent_secondary_is_recorded_as_no_answer_and_counted_as_a_timeout() {
    let mut lab = Lab::builder()
        .secondaries(1)
        .eal("--hotplug-timeout-ms=300")
        .process_eal("s1", "--lab-fault=attach:net_null5:hang")
        .start()
        .expect("lab");
    let before = ask(&lab, "primary", "/lab/ipc");
    let a = lab.cmd("primary", "attach net_null5").unwrap();
    assert!(a.starts_with("failed to attach"), "{a}");
    let op = last_op(&lab, "primary");
    assert_eq!(op["outcome"], "failed", "{op}");
    assert_eq!(answer_of(&op, &pname(&lab, "s1"), "attach"), "no answer", "{op}");
    assert!(
        op["answers"].as_array().unwrap().iter().any(|a| a["step"] == "rollback"),
        "the rollback is recorded: {op}"
    );
    let after = ask(&lab, "primary", "/lab/ipc");
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert!(n(&after, "timeouts") > n(&before, "timeouts"), "{before} -> {after}");
    assert!(n(&after, "sent") >= n(&before, "sent") + 2, "attach and rollback went out: {before} -> {after}");
    assert_eq!(ask(&lab, "primary", "/ethdev/list"), serde_json::json!([]), "nothing attached");
    // s1 carries on after its hang (twice the timeout) and quits cleanly.
    std::thread::sleep(Duration::from_millis(800));
    quit_all(&mut lab);
}

/// A secondary too slow to confirm a detach still holds the port's handle: the primary holds the
/// id out of use (`held` in `/lab/hotplug`, naming who it waits for) until that secondary says it
/// released it, so the id never names two devices at once (property (d) of `lab-model`, which
/// found the reuse).
#[test]
fn a_port_id_a_slow_secondary_still_holds_is_held_until_it_lets_go() {
    let mut lab = slow_release_lab(1);
    ok(&mut lab, "primary", "detach net_null0", "detached device net_null0");
    let h = ask(&lab, "primary", "/lab/hotplug");
    let s1 = u64::from(lab.pid("s1").unwrap());
    assert_eq!(h["held"], serde_json::json!([{"port": 0, "waiting_for": [s1], "handle_kept": true}]), "{h}");
    // s1 still holds port 0 as net_null0 while it hangs (twice the timeout and 500 ms).
    let rows = ask(&lab, "s1", "/lab/ports");
    let row = rows.as_array().and_then(|r| r.iter().find(|r| r["port_id"] == 0)).cloned().unwrap_or_default();
    assert_eq!((&row["local_handle"], &row["state"]), (&"attached".into(), &"detaching".into()), "{rows}");
    lab.wait_until(Duration::from_secs(5), "the primary frees port 0", |l| {
        (l.telemetry("primary", "/lab/hotplug").ok()?["held"] == serde_json::json!([])).then_some(())
    })
    .unwrap();
    let rows = ask(&lab, "s1", "/lab/ports");
    assert!(rows.as_array().unwrap().iter().all(|r| r["local_handle"] != "attached"), "{rows}");
    // The freed id is the next device's.
    assert_eq!(lab.cmd("primary", "attach net_null1").unwrap(), "attached device net_null1");
    assert_eq!(ask(&lab, "primary", "/ethdev/list"), serde_json::json!([0]));
    lab.assert_consistent();
    quit_all(&mut lab);
}

/// A secondary that did not confirm the detach may still run the port: the primary parks its
/// own handle with the held id instead of closing it, so the port's buffers, rings and zones
/// (net_ring's ring here) stay whole under that secondary; it is gone from the primary's port
/// table at once, and closed (its zones freed) when the secondary lets go.
#[test]
fn the_primary_closes_a_port_a_slow_secondary_still_holds_only_when_it_lets_go() {
    let zones = |lab: &Lab| ask(lab, "primary", "/lab/memory")["zones"].as_u64().expect("zones");
    let mut lab = Lab::builder()
        .secondaries(1)
        .eal("--hotplug-timeout-ms=300")
        .process_eal("s1", "--lab-fault=detach:net_ring0:hang")
        .start()
        .expect("lab");
    let before = zones(&lab);
    ok(&mut lab, "primary", "attach net_ring0", "attached device net_ring0");
    let attached = zones(&lab);
    assert!(attached > before, "net_ring0 has a zone");
    ok(&mut lab, "primary", "detach net_ring0", "detached device net_ring0");
    let h = ask(&lab, "primary", "/lab/hotplug");
    assert_eq!(h["held"][0]["handle_kept"], true, "{h}");
    assert_eq!(ask(&lab, "primary", "/ethdev/list"), serde_json::json!([]), "out of the primary's port table");
    assert_eq!(zones(&lab), attached, "nothing freed while s1 holds the port: {h}");
    // Attached again meanwhile, the device would be set up under a new id and then reset by
    // the parked handle's close: refused, naming why.
    let a = lab.cmd("primary", "attach net_ring0").unwrap();
    assert!(a.starts_with("failed to attach") && a.contains("still held as port 0"), "{a}");
    lab.wait_until(Duration::from_secs(5), "the primary frees port 0", |l| {
        (l.telemetry("primary", "/lab/hotplug").ok()?["held"] == serde_json::json!([])).then_some(())
    })
    .unwrap();
    assert_eq!(zones(&lab), before, "closed once s1 let go");
    // The id and the device name can be attached again.
    ok(&mut lab, "primary", "attach net_ring0", "attached device net_ring0");
    assert_eq!(ask(&lab, "primary", "/ethdev/list"), serde_json::json!([0]));
    lab.assert_consistent();
    quit_all(&mut lab);
}

/// The asker of a detach releases its own handle after the primary's yes; the primary holds the
/// id for it until it says it let go (`hp_released`), so a new device never gets the id while
/// the asker still holds the old one (`lab-model` found the reuse).
#[test]
fn a_detach_asked_by_a_secondary_holds_the_id_until_the_asker_lets_go() {
    let mut lab = slow_release_lab(2);
    // s1's own release hangs (twice the timeout and 500 ms) after the primary said yes.
    lab.send("s1", "detach net_null0").unwrap();
    let s1 = u64::from(lab.pid("s1").unwrap());
    lab.wait_until(Duration::from_secs(2), "port 0 held for s1", |l| {
        let h = l.telemetry("primary", "/lab/hotplug").ok()?;
        (h["held"] == serde_json::json!([{"port": 0, "waiting_for": [s1], "handle_kept": false}])).then_some(())
    })
    .unwrap();
    assert_eq!(ask(&lab, "primary", "/ethdev/list"), serde_json::json!([]), "detached in the primary");
    assert_eq!(lab.answer("s1", Duration::from_secs(5)).unwrap(), "detached device net_null0");
    lab.wait_until(Duration::from_secs(2), "the primary frees port 0", |l| {
        (l.telemetry("primary", "/lab/hotplug").ok()?["held"] == serde_json::json!([])).then_some(())
    })
    .unwrap();
    ok(&mut lab, "s2", "attach net_null1", "attached device net_null1");
    assert_eq!(ask(&lab, "primary", "/ethdev/list"), serde_json::json!([0]), "the freed id is the next device's");
    lab.assert_consistent();
    quit_all(&mut lab);
}

/// A step the primary cannot send (the secondary's socket queue stays full past the send timeout)
/// still reaches the others, and the one that never got it heals: here s2, stopped with a queue
/// one short of full, takes the attach step but never the rollback; once running again it
/// releases the port the table no longer lists (`lab-model --faults loss` found the handle left).
#[test]
fn a_rollback_that_could_not_be_sent_is_healed_by_the_secondary() {
    use std::os::unix::net::UnixDatagram;
    let mut lab = Lab::builder().secondaries(2).eal("--hotplug-timeout-ms=300").start().expect("lab");
    let s2 = lab.pid("s2").unwrap();
    // How many datagrams a socket nobody reads takes before a send would block.
    let tmp = tempfile::tempdir().unwrap();
    let probe = UnixDatagram::bind(tmp.path().join("probe")).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    tx.set_nonblocking(true).unwrap();
    let mut room = 0;
    while tx.send_to(b"x", tmp.path().join("probe")).is_ok() {
        room += 1;
        assert!(room < 100_000, "a socket that never fills");
    }
    drop(probe);
    let sock = std::fs::read_dir(lab.runtime_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("mp_socket_{s2}_"))))
        .expect("s2's socket");
    let signal = |sig: &str| {
        assert!(Command::new("kill").args([sig, &s2.to_string()]).status().unwrap().success());
    };
    signal("-STOP");
    // Stopped for real, every thread of it (the signal is asynchronous): it reads nothing more.
    let stopped = || {
        std::fs::read_dir(format!("/proc/{s2}/task")).unwrap().filter_map(Result::ok).all(|t| {
            let st = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            st.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T') || r.starts_with('t'))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stopped() {
        assert!(std::time::Instant::now() < deadline, "s2 does not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..room - 1 {
        tx.send_to(b"x", &sock).expect("room for it");
    }
    // The attach step fills the last place; the rollback cannot be sent.
    let a = lab.cmd("primary", "attach net_null0").unwrap();
    signal("-CONT");
    assert!(a.starts_with("failed to attach device net_null0: no answer within 300 ms from"), "{a}");
    let op = last_op(&lab, "primary");
    assert!(
        answer_of(&op, &pname(&lab, "s2"), "rollback").starts_with("not sent: "),
        "the record names the send that failed: {op}"
    );
    assert!(lab.ports("s1").unwrap().is_empty(), "s1 got the rollback");
    // s2 takes the junk (counted, dropped), then the attach step, probes, and heals.
    // It took the attach step it was sent (it answered late), then healed: its own list (the
    // handles it holds, whatever the table says) ends empty.
    let ipc = ask(&lab, "s2", "/lab/ipc");
    assert!(ipc["sent"].as_u64().unwrap_or(0) >= 1, "its late answer to the attach step: {ipc}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = lab.cmd("s2", "list").unwrap();
        if lab_harness::proc::parse_list(&list).is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "s2 still holds a port nobody else has: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ipc = ask(&lab, "s2", "/lab/ipc");
    assert!(ipc["dropped"]["malformed"].as_u64().unwrap_or(0) >= (room - 1) as u64, "{ipc}");
    ok(&mut lab, "s2", "attach net_null1", "attached device net_null1");
    lab.assert_consistent();
    quit_all(&mut lab);
}

#[test]
fn lab_status_shows_every_process_and_its_ports() {
    let mut lab = Lab::builder().vdev("net_null0").secondaries(1).start().expect("lab");
    ok(&mut lab, "primary", "send 0 5 64", "sent 5 packets");
    let status = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lab"))
            .arg("status")
            .args(args)
            .env("XDG_RUNTIME_DIR", lab.xdg_runtime_dir())
            .output()
            .expect("run lab status")
    };
    let out = status(&["--prefix", lab.prefix(), "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{text}");
    let prim = rows.iter().find(|r| r["role"] == "primary").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(prim["pid"], lab.pid("primary").unwrap());
    assert_eq!(prim["ports"][0]["name"], "net_null0");
    assert_eq!(prim["ports"][0]["tx_packets"], 5);
    assert_eq!(prim["ports"][0]["link"], "UP 10000");
    let sec = rows.iter().find(|r| r["role"] == "secondary").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(sec["pid"], lab.pid("s1").unwrap());
    assert_eq!(sec["ports"][0]["port"], 0, "the secondary has the port too: {text}");
    let table = status(&["--prefix", lab.prefix()]);
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.starts_with("ROLE") && t.contains("net_null0") && t.contains(&lab.pid("primary").unwrap().to_string()),
        "{t}"
    );
    let none = status(&["--prefix", "no-such-lab"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no-such-lab"), "{none:?}");
    let bad = status(&["--interval-ms", "1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--interval-ms 1"), "{bad:?}");
    quit_all(&mut lab);
}

#[test]
fn dpdk_telemetry_py_reads_the_ports_of_a_lab_process() {
    let Some(script) = ["/usr/bin/dpdk-telemetry.py", "/usr/local/bin/dpdk-telemetry.py"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("skipped: dpdk-telemetry.py not installed (Debian package dpdk)");
        return;
    };
    let mut lab = Lab::builder().vdev("net_null0").secondaries(1).start().expect("lab");
    ok(&mut lab, "primary", "send 0 7 100", "sent 7 packets");
    let out = Command::new("python3")
        .arg(&script)
        .args(["-f", lab.prefix()])
        .env("RUNTIME_DIRECTORY", dpdk_runtime_directory(&lab.runtime_dir()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"/ethdev/list\n/ethdev/stats,0\n/ethdev/info,0\n/lab/ports\nquit\n")?;
            c.wait_with_output()
        })
        .expect("run dpdk-telemetry.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(answers.len(), 4, "{text}");
    assert_eq!(answers[0]["/ethdev/list"], serde_json::json!([0]), "{text}");
    assert_eq!(answers[1]["/ethdev/stats"]["opackets"], 7, "{text}");
    assert_eq!(answers[1]["/ethdev/stats"]["obytes"], 700, "{text}");
    assert_eq!(answers[2]["/ethdev/info"]["name"], "net_null0", "{text}");
    assert_eq!(answers[3]["/lab/ports"][0]["owner_pid"], lab.pid("primary").unwrap(), "{text}");
    quit_all(&mut lab);
}

/// A row of a process's `/lab/ports` by device name.
fn port_row(lab: &Lab, process: &str, name: &str) -> Value {
    let rows = ask(lab, process, "/lab/ports");
    rows.as_array().and_then(|a| a.iter().find(|r| r["name"] == name)).cloned().unwrap_or_else(|| panic!("{rows}"))
}

/// The steps of an operation that ended long ago, as a slow network or a backed-up queue hands
/// them to a secondary after it took a newer device on the same port id (the stale step the
/// model checker found, `lab-model --without generations`): the older generation's attach,
/// rollback, pre-detach and detach each change nothing there, answered as done, and its port
/// keeps its device and its traffic. This test sends them from a socket of its own in the lab's
/// runtime dir, as the primary's queue would have sent them (the wire form of a step: port u16,
/// generation u32, little-endian, then its text).
#[test]
fn a_stale_generations_steps_leave_a_secondarys_newer_port_alone() {
    use lab_core::ipc::{Channel, ChannelConfig, Msg};
    let mut lab = Lab::builder().secondaries(1).start().expect("lab");
    ok(&mut lab, "primary", "attach net_null0", "attached device net_null0");
    let old = port_row(&lab, "s1", "net_null0");
    ok(&mut lab, "primary", "detach net_null0", "detached device net_null0");
    lab.wait_until(Duration::from_secs(10), "the id is free again", |lab| {
        ask(lab, "primary", "/lab/hotplug")["held"].as_array().is_some_and(|h| h.is_empty()).then_some(())
    })
    .unwrap();
    ok(&mut lab, "primary", "attach net_null1", "attached device net_null1");
    let new = port_row(&lab, "s1", "net_null1");
    assert_eq!(new["port_id"], old["port_id"], "the freed id is used again: {new}");
    assert!(new["gen"].as_u64() > old["gen"].as_u64(), "{old} {new}");
    assert_eq!(new["local_handle"], "attached", "{new}");
    let (port, gen) = (old["port_id"].as_u64().unwrap() as u16, old["gen"].as_u64().unwrap() as u32);
    let step = |text: &str| {
        let mut v = port.to_le_bytes().to_vec();
        v.extend_from_slice(&gen.to_le_bytes());
        v.extend_from_slice(text.as_bytes());
        v
    };
    let s1_pid = lab.pid("s1").unwrap();
    /// Closes the test's channel (its socket file and thread) also when an assertion fails.
    struct Closing(Channel);
    impl Drop for Closing {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let ch = Closing(
        Channel::open(ChannelConfig {
            dir: lab.runtime_dir(),
            primary: false,
            primary_pid: lab.pid("primary").unwrap(),
            spin_us: 0,
        })
        .expect("a channel in the lab's runtime dir"),
    );
    let ch = &ch.0;
    let s1_sock: Vec<PathBuf> = ch
        .secondaries()
        .into_iter()
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("mp_socket_{s1_pid}_")))
        })
        .collect();
    assert_eq!(s1_sock.len(), 1, "{:?}", ch.secondaries());
    for (action, text) in [("hp_attach", "net_null0"), ("hp_rollback", ""), ("hp_predetach", ""), ("hp_detach", "")] {
        let r = ch.request_to(&s1_sock, &Msg::new(action, step(text)), Duration::from_secs(5));
        let r = r.unwrap_or_else(|e| panic!("{action}: {e}"));
        assert_eq!(r.replies.len(), 1, "{action}: {r:?}");
        let answer = String::from_utf8_lossy(&r.replies[0].msg.payload).into_owned();
        assert!(answer.starts_with("ok:"), "{action}: {answer}");
        let now = port_row(&lab, "s1", "net_null1");
        assert_eq!((&now["gen"], &now["local_handle"]), (&new["gen"], &new["local_handle"]), "after {action}: {now}");
    }
    ch.close();
    assert!(!ch.socket_path().exists(), "the test's socket is gone");
    let send = format!("send {port} 5");
    ok(&mut lab, "s1", &send, &format!("sent 5 packets on port {port}"));
    lab.assert_consistent();
    ok(&mut lab, "s1", "detach net_null1", "detached device net_null1");
    lab.assert_consistent();
    quit_all(&mut lab);
}
