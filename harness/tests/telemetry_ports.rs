//! The ethdev and lab telemetry commands in real `hotplug_mp` processes: a port's counters as
//! DPDK names them, the shared table with each port's owner, the record of hotplug operations with
//! every process's answer (a veto included), the pools, bad parameters answered with null, and
//! DPDK's own `dpdk-telemetry.py` reading the ports when it is installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lab_core::telemetry::{dpdk_runtime_directory, socket_path, Client};
use lab_harness::proc::AppProc;
use serde_json::Value;

const APP: &str = env!("CARGO_BIN_EXE_hotplug_mp");

struct Lab {
    xdg: tempfile::TempDir,
    prefix: String,
}

impl Lab {
    fn new(test: &str) -> Lab {
        Lab { xdg: tempfile::tempdir().unwrap(), prefix: format!("tp{}-{test}", std::process::id()) }
    }
    fn start(&self, extra: &[&str]) -> AppProc {
        let mut c = Command::new(APP);
        c.arg("--proc-type=auto")
            .arg(format!("--file-prefix={}", self.prefix))
            .args(extra)
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .env("SYSFS_PCI_DEVICES", self.xdg.path().join("no-sysfs"))
            .env_remove("RUST_LOG");
        AppProc::spawn(c).expect("start hotplug_mp")
    }
    fn runtime_dir(&self) -> PathBuf {
        self.xdg.path().join("hotplug-lab").join(&self.prefix)
    }
    fn sock(&self, instance: u32) -> PathBuf {
        socket_path(&self.runtime_dir(), instance)
    }
}

/// Asks `cmd` of the process serving `path`.
fn ask(path: &Path, cmd: &str) -> Value {
    let mut c = Client::connect(path, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    c.query(path, cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(p: &mut AppProc, line: &str, want: &str) {
    let a = p.cmd(line).unwrap();
    assert!(a.contains(want), "{line}: {a}");
}

/// The last operation of a process's record.
fn last_op(path: &Path) -> Value {
    let h = ask(path, "/lab/hotplug");
    h["operations"].as_array().and_then(|a| a.last()).cloned().unwrap_or_else(|| panic!("no operation: {h}"))
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
    let lab = Lab::new("cmds");
    let mut p = lab.start(&["--vdev=net_null0"]);
    let mut s1 = lab.start(&[]);
    let mut s2 = lab.start(&[]);
    let (pp, s1p, s2p) = (lab.sock(0), lab.sock(1), lab.sock(2));
    assert_eq!(ask(&s1p, "/lab/process")["pid"], s1.pid());
    assert_eq!(ask(&s2p, "/lab/process")["pid"], s2.pid());

    // Counters of a port, DPDK's names, in the process that sent.
    ok(&mut p, "send 0 100 64", "sent 100 packets");
    let st = ask(&pp, "/ethdev/stats,0");
    assert_eq!(st["opackets"], 100, "{st}");
    assert_eq!(st["obytes"], 6400, "{st}");
    let x = ask(&pp, "/ethdev/xstats,0");
    assert_eq!(x["tx_good_packets"], 100, "{x}");
    let info = ask(&pp, "/ethdev/info,0");
    assert_eq!(info["name"], "net_null0", "{info}");
    assert_eq!(info["port_id"], 0);
    let mac = info["mac_addr"].as_str().unwrap();
    assert!(mac.len() == 17 && mac.split(':').all(|b| u8::from_str_radix(b, 16).is_ok()), "{mac}");
    assert_eq!(ask(&pp, "/ethdev/link_status,0")["status"], "UP");

    // Attach from a secondary: every process lists it; the primary's record names the asker and
    // holds the other secondary's answer; the table names the asker as the owner.
    ok(&mut s1, "attach net_null1", "attached");
    for path in [&pp, &s1p, &s2p] {
        assert_eq!(ask(path, "/ethdev/list"), serde_json::json!([0, 1]), "{}", path.display());
    }
    let op = last_op(&pp);
    assert_eq!(op["op"], "attach", "{op}");
    assert_eq!(op["target"], "net_null1");
    assert_eq!(op["from"], format!("process {}", s1.pid()));
    assert_eq!(op["outcome"], "ok");
    assert_eq!(op["port"], 1);
    assert_eq!(answer_of(&op, &format!("process {}", s2.pid()), "attach"), "ok");
    assert!(op["answers"].as_array().unwrap().iter().all(|a| a["process"] != format!("process {}", s1.pid())));
    let asked = last_op(&s1p);
    assert_eq!((asked["from"].as_str(), asked["outcome"].as_str()), (Some("this process"), Some("ok")), "{asked}");
    assert_eq!(answer_of(&asked, "the primary", "request"), "ok");
    let told = last_op(&s2p);
    assert_eq!((told["op"].as_str(), told["from"].as_str()), (Some("attach"), Some("the primary")), "{told}");
    let ports = ask(&s2p, "/lab/ports");
    let row = ports.as_array().unwrap().iter().find(|r| r["port_id"] == 1).unwrap_or_else(|| panic!("{ports}"));
    assert_eq!(row["owner_pid"], s1.pid(), "{row}");
    assert_eq!(row["devargs"], "net_null1");
    assert_eq!(row["driver"], "net_null");
    assert_eq!(row["state"], "attached");
    assert_eq!(row["local_handle"], "attached");

    // A veto: s2 holds a lock, the primary's detach fails, and its record says who refused and why.
    ok(&mut s2, "lock 1", "locked");
    let a = p.cmd("detach 1").unwrap();
    assert!(a.starts_with("failed to detach"), "{a}");
    let op = last_op(&pp);
    assert_eq!((op["op"].as_str(), op["outcome"].as_str()), (Some("detach"), Some("failed")), "{op}");
    assert!(op["error"].as_str().unwrap().contains("locked"), "{op}");
    assert!(answer_of(&op, &format!("process {}", s2.pid()), "predetach").contains("locked"), "{op}");
    assert_eq!(ask(&s2p, "/lab/ports").as_array().unwrap().iter().find(|r| r["port_id"] == 1).unwrap()["locks"], 1);
    ok(&mut s2, "unlock 1", "unlocked");
    ok(&mut s2, "detach 1", "detached");
    assert_eq!(ask(&pp, "/ethdev/list"), serde_json::json!([0]));
    assert_eq!(last_op(&pp)["from"], format!("process {}", s2.pid()));

    // The pools: the default one, its size, and buffers in use within it.
    let pools = ask(&s1p, "/lab/mempool");
    let d =
        pools.as_array().unwrap().iter().find(|m| m["name"] == "lab_mbuf_pool").unwrap_or_else(|| panic!("{pools}"));
    let size = d["size"].as_u64().unwrap();
    assert!(size >= 512 && d["in_use"].as_u64().unwrap() <= size, "{d}");
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("no {k} in {d}"));
    assert_eq!(n("common_pool_count") + n("cached") + n("in_use"), size, "{d}");
    assert!(n("cache_handles") >= 1, "the ports' pool handles have caches: {d}");
    assert_eq!(ask(&pp, "/mempool/list"), serde_json::json!(["lab_mbuf_pool"]));
    assert_eq!(ask(&pp, "/mempool/info,lab_mbuf_pool")["size"], size);

    // Bad parameters: null, as DPDK answers, and the process carries on.
    for bad in ["/ethdev/stats,9", "/ethdev/stats,x", "/ethdev/stats", "/ethdev/info,65535", "/mempool/info,nope"] {
        assert_eq!(ask(&pp, bad), Value::Null, "{bad}");
    }
    assert_eq!(ask(&pp, "/ethdev/stats,0")["opackets"], 100);

    for x in [s2, s1, p] {
        assert!(x.quit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }
}

#[test]
fn a_silent_secondary_is_recorded_as_no_answer_and_counted_as_a_timeout() {
    let lab = Lab::new("silent");
    let mut p = lab.start(&["--hotplug-timeout-ms=300"]);
    let s1 = lab.start(&["--hotplug-timeout-ms=300", "--lab-fault=attach:net_null5:hang"]);
    let pp = lab.sock(0);
    let before = ask(&pp, "/lab/ipc");
    let a = p.cmd("attach net_null5").unwrap();
    assert!(a.starts_with("failed to attach"), "{a}");
    let op = last_op(&pp);
    assert_eq!(op["outcome"], "failed", "{op}");
    assert_eq!(answer_of(&op, &format!("process {}", s1.pid()), "attach"), "no answer", "{op}");
    assert!(
        op["answers"].as_array().unwrap().iter().any(|a| a["step"] == "rollback"),
        "the rollback is recorded: {op}"
    );
    let after = ask(&pp, "/lab/ipc");
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert!(n(&after, "timeouts") > n(&before, "timeouts"), "{before} -> {after}");
    assert!(n(&after, "sent") >= n(&before, "sent") + 2, "attach and rollback went out: {before} -> {after}");
    assert_eq!(ask(&pp, "/ethdev/list"), serde_json::json!([]), "nothing attached");
    // s1 carries on after its hang (twice the timeout) and quits cleanly.
    std::thread::sleep(Duration::from_millis(800));
    for x in [s1, p] {
        assert!(x.quit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }
}

#[test]
fn lab_status_shows_every_process_and_its_ports() {
    let lab = Lab::new("status");
    let mut p = lab.start(&["--vdev=net_null0"]);
    let s = lab.start(&[]);
    ok(&mut p, "send 0 5 64", "sent 5 packets");
    let status = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lab"))
            .arg("status")
            .args(args)
            .env("XDG_RUNTIME_DIR", lab.xdg.path())
            .output()
            .expect("run lab status")
    };
    let out = status(&["--prefix", &lab.prefix, "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{text}");
    let prim = rows.iter().find(|r| r["role"] == "primary").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(prim["pid"], p.pid());
    assert_eq!(prim["ports"][0]["name"], "net_null0");
    assert_eq!(prim["ports"][0]["tx_packets"], 5);
    assert_eq!(prim["ports"][0]["link"], "UP 10000");
    let sec = rows.iter().find(|r| r["role"] == "secondary").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(sec["pid"], s.pid());
    assert_eq!(sec["ports"][0]["port"], 0, "the secondary has the port too: {text}");
    let table = status(&["--prefix", &lab.prefix]);
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(t.starts_with("ROLE") && t.contains("net_null0") && t.contains(&p.pid().to_string()), "{t}");
    let none = status(&["--prefix", "no-such-lab"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no-such-lab"), "{none:?}");
    let bad = status(&["--interval-ms", "1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--interval-ms 1"), "{bad:?}");
    for x in [s, p] {
        assert!(x.quit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }
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
    let lab = Lab::new("py");
    let mut p = lab.start(&["--vdev=net_null0"]);
    let s = lab.start(&[]);
    ok(&mut p, "send 0 7 100", "sent 7 packets");
    let out = Command::new("python3")
        .arg(&script)
        .args(["-f", &lab.prefix])
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
    assert_eq!(answers[3]["/lab/ports"][0]["owner_pid"], p.pid(), "{text}");
    for x in [s, p] {
        assert!(x.quit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    }
}
