//! Crash and abuse faults beyond the hotplug protocol, with real processes: a foreign process
//! of the same user flooding every lab process's IPC socket while hotplug runs.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lab_harness::Lab;

/// A datagram with a well-formed header (the lab's wire format: magic, version 1, kind, name
/// length, descriptor count, request id, payload length, the name from byte 24 of 88) for an
/// action nobody registered, and `payload` bytes after it.
fn unknown_action(payload: usize) -> Vec<u8> {
    let name = b"zz_flood";
    let mut h = vec![0u8; 88];
    h[0..4].copy_from_slice(&0x4c41_424du32.to_le_bytes());
    h[4] = 1;
    h[6] = name.len() as u8;
    h[8..16].copy_from_slice(&7u64.to_le_bytes());
    h[16..20].copy_from_slice(&(payload as u32).to_le_bytes());
    h[24..24 + name.len()].copy_from_slice(name);
    h.resize(88 + payload, 0xab);
    h
}

/// The lab's IPC sockets (the primary's and each secondary's main socket).
fn ipc_sockets(lab: &Lab) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(lab.runtime_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == "mp_socket" || n.starts_with("mp_socket_")
        })
        .collect();
    v.sort();
    v
}

/// A process of the user that is not part of the lab sends datagrams as fast as the sockets
/// take them to every lab process (garbage, a truncated header, well-formed ones for an unknown
/// action, an empty one) while a secondary and the primary attach and detach five times: every
/// operation succeeds, both processes count what they dropped by reason (`/lab/ipc`), and the
/// lab ends consistent. The kernel bounds each socket's queue; the flooder's sends that do not
/// fit fail at its end, never blocking a lab process.
#[test]
fn an_ipc_flood_from_a_foreign_process_neither_blocks_nor_breaks_hotplug() {
    let mut lab = Lab::builder().secondaries(1).start().expect("lab");
    let targets = ipc_sockets(&lab);
    assert_eq!(targets.len(), 2, "{targets:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        // Bound, as a process that wants answers would be (an unbound sender has no address,
        // so everything it sends is dropped as malformed before its action is looked up).
        let dir = tempfile::tempdir().unwrap();
        std::thread::spawn(move || {
            let s = UnixDatagram::bind(dir.path().join("flood.sock")).unwrap();
            s.set_nonblocking(true).unwrap();
            let junk: Vec<Vec<u8>> = vec![
                vec![0x5a; 200],
                unknown_action(0)[..40].to_vec(),
                unknown_action(0),
                unknown_action(1000),
                vec![],
            ];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let d = &junk[i % junk.len()];
                if s.send_to(d, &targets[i / junk.len() % targets.len()]).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::yield_now();
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..5 {
        let a = lab.cmd("s1", "attach net_null0").unwrap();
        assert_eq!(a, "attached device net_null0", "round {round}");
        let d = lab.cmd("primary", "detach net_null0").unwrap();
        assert_eq!(d, "detached device net_null0", "round {round}");
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 100, "the flood sent {}", sent.load(Ordering::Relaxed));
    for p in ["primary", "s1"] {
        let s = lab.telemetry(p, "/lab/ipc").unwrap();
        let dropped = &s["dropped"];
        assert!(dropped["malformed"].as_u64().unwrap() > 0, "{p}: {s}");
        assert!(dropped["unknown_action"].as_u64().unwrap() > 0, "{p}: {s}");
        assert!(s["received"].as_u64().unwrap() >= dropped["malformed"].as_u64().unwrap(), "{p}: {s}");
    }
    lab.assert_consistent();
    assert_eq!(lab.cmd("s1", "attach net_null1").unwrap(), "attached device net_null1");
    lab.assert_consistent();
    for x in lab.processes().into_iter().rev() {
        assert!(lab.quit(&x).unwrap().is_some_and(|s| s.success()), "{x} quits cleanly");
    }
}
