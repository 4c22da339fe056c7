//! The other process of the benches: a raw datagram or SOCK_SEQPACKET echo server (the physical
//! floors), a lab secondary answering `echo`, a hotplug process, a ring drain or echo, or a
//! telemetry client polling a port's stats. Exits when its stdin closes (the bench ended).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;

use lab_core::ipc::{Dispatch, Msg};
use lab_core::options::Options;
use lab_core::ring::Ring;
use lab_core::runtime::Runtime;

fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let mut b = [0u8; 64];
        while let Ok(n) = std::io::stdin().read(&mut b) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
}

fn ready() {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "ready");
    let _ = o.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(cpu) = std::env::var("LAB_BENCH_CPU").ok().and_then(|c| c.parse().ok()) {
        lab_benches::pin_to(cpu);
    }
    exit_on_stdin_eof();
    match args.first().map(String::as_str) {
        Some("raw-echo") => {
            let path = &args[1];
            let _ = std::fs::remove_file(path);
            let s = UnixDatagram::bind(path).expect("bind raw echo socket");
            ready();
            let mut buf = [0u8; 8192];
            loop {
                let (n, from) = s.recv_from(&mut buf).expect("recv");
                if let Some(p) = from.as_pathname() {
                    let _ = s.send_to(&buf[..n], p);
                }
            }
        }
        Some("seqpacket-echo") => {
            // One connection, served as the telemetry server serves one: poll, receive, send.
            use std::os::fd::AsFd;
            let path = std::path::PathBuf::from(&args[1]);
            let _ = std::fs::remove_file(&path);
            let l = lab_core::sys::seqpacket_listen(&path, 4).expect("listen");
            ready();
            let wait = |fd: std::os::fd::BorrowedFd<'_>| {
                let mut p = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::NONE);
            };
            let c = loop {
                wait(l.as_fd());
                if let Ok(c) = lab_core::sys::seqpacket_accept(l.as_fd()) {
                    break c;
                }
            };
            // Answers every record with REPLY bytes (default: the record itself).
            let reply: Option<usize> = args.get(2).and_then(|n| n.parse().ok());
            let mut buf = vec![0u8; 16384];
            loop {
                wait(c.as_fd());
                match lab_core::sys::seqpacket_recv(c.as_fd(), &mut buf, true) {
                    Ok((0, _)) => std::process::exit(0),
                    Ok((n, _)) => {
                        let len = reply.unwrap_or(n).min(buf.len());
                        let _ = lab_core::sys::seqpacket_send(c.as_fd(), &buf[..len]);
                    }
                    Err(_) => continue,
                }
            }
        }
        Some("telemetry-poll") => {
            // `/ethdev/stats,0` of the process serving PATH every MS milliseconds.
            let path = std::path::PathBuf::from(&args[1]);
            let ms: u64 = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(1);
            let mut c =
                lab_core::telemetry::Client::connect(&path, std::time::Duration::from_secs(5)).expect("connect");
            ready();
            loop {
                let v = c.query(&path, "/ethdev/stats,0").expect("stats");
                assert!(v["opackets"].is_u64(), "{v}");
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        Some("secondary") => {
            let (opts, _) = Options::parse(args[1..].iter().cloned()).expect("options");
            let rt = Runtime::init(&opts).expect("runtime");
            rt.ipc()
                .register_action("echo", Dispatch::Inline, |ch, req| {
                    let _ = ch.reply(req, &Msg::new("echo", req.msg.payload.clone()));
                })
                .expect("register");
            ready();
            loop {
                std::thread::park();
            }
        }
        Some("hotplug") => {
            // A hotplug process (primary or secondary per --proc-type) with the lab's drivers, plus
            // an inline `echo` action for the request_sync floor.
            let (opts, _) = Options::parse(args[1..].iter().cloned()).expect("options");
            let hp = lab_core::process::Process::init(&opts, lab_drivers::registry()).expect("hotplug init");
            hp.runtime()
                .ipc()
                .register_action("echo", Dispatch::Inline, |ch, req| {
                    let _ = ch.reply(req, &Msg::new("echo", req.msg.payload.clone()));
                })
                .expect("register");
            ready();
            loop {
                std::thread::park();
            }
        }
        Some("events") => {
            // A secondary that tells the bench of each link event of its ports by putting the
            // port id on the shared ring `bench-events` (created by the bench's primary).
            let (opts, _) = Options::parse(args[1..].iter().cloned()).expect("options");
            let hp = lab_core::process::Process::init(&opts, lab_drivers::registry()).expect("hotplug init");
            let ring = lab_core::ring::Ring::<u64>::lookup(hp.runtime().shm(), "bench-events").expect("events ring");
            hp.on_event(move |port, ev| {
                if matches!(ev, lab_core::ethdev::PortEvent::LinkUp | lab_core::ethdev::PortEvent::LinkDown) {
                    while !ring.enqueue_bulk(&[u64::from(port.0)]) {
                        std::hint::spin_loop();
                    }
                }
            });
            ready();
            loop {
                std::thread::park();
            }
        }
        Some("ring-drain") => {
            let (opts, rest) = Options::parse(args[1..].iter().cloned()).expect("options");
            let rt = Runtime::init(&opts).expect("runtime");
            let name = rest.first().expect("ring name");
            let r = Ring::<[u8; 64]>::lookup(rt.shm(), name).expect("ring");
            ready();
            let mut buf = [[0u8; 64]; 32];
            loop {
                if r.dequeue_burst(&mut buf) == 0 {
                    std::hint::spin_loop();
                }
            }
        }
        Some("ring-echo") => {
            // Every object from ring IN back through ring OUT, as it came: the far end of a
            // loopback made of nothing but two shared-memory rings.
            let (opts, rest) = Options::parse(args[1..].iter().cloned()).expect("options");
            let rt = Runtime::init(&opts).expect("runtime");
            let (rx, tx) = (rest.first().expect("ring IN"), rest.get(1).expect("ring OUT"));
            let rx = Ring::<[u8; 64]>::lookup(rt.shm(), rx).expect("ring IN");
            let tx = Ring::<[u8; 64]>::lookup(rt.shm(), tx).expect("ring OUT");
            ready();
            let mut buf = [[0u8; 64]; 32];
            loop {
                let n = rx.dequeue_burst(&mut buf);
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                while !tx.enqueue_bulk(&buf[..n]) {
                    std::hint::spin_loop();
                }
            }
        }
        _ => {
            eprintln!("usage: lab-bench-peer raw-echo PATH | seqpacket-echo PATH [REPLY] | telemetry-poll PATH MS | secondary [EAL] | hotplug [EAL] | ring-drain [EAL] -- RING | ring-echo [EAL] -- IN OUT");
            std::process::exit(2);
        }
    }
}
