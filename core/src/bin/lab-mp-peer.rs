//! A lab process for the runtime's multi-process tests and benches: starts a runtime from EAL
//! options, registers a few test actions and obeys one command per stdin line, answering one
//! line per command on stdout. Not a user tool.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use lab_core::ipc::{Channel, Dispatch, Msg, Replies};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::ShmOffset;
use lab_core::options::Options;
use lab_core::ring::{Ring, RingFlags};
use lab_core::runtime::{init_logging, Runtime};

fn main() {
    let (opts, _rest) = match Options::parse(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("lab-mp-peer: {e}");
            std::process::exit(2);
        }
    };
    init_logging(opts.log_level.as_deref());
    let rt = match Runtime::init(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lab-mp-peer: {e}");
            std::process::exit(1);
        }
    };
    register(rt.ipc());
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    say(format!("ready {} {}", rt.role(), std::process::id()));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.is_empty() {
            continue;
        }
        if w[0] == "quit" {
            break;
        }
        let r = run(&rt, &w, &say);
        say(r.unwrap_or_else(|e| format!("error: {e}")));
    }
    drop(rt);
}

fn fmt_replies(r: &Replies) -> String {
    let mut p: Vec<String> = r.replies.iter().map(|x| String::from_utf8_lossy(&x.msg.payload).into_owned()).collect();
    p.sort();
    format!("sent={} received={} payloads={}", r.nb_sent, r.nb_received, p.join(","))
}

fn register(ch: &Channel) {
    let ok = |r: Result<(), lab_core::ipc::IpcError>| r.expect("register test action");
    ok(ch.register_action("echo", Dispatch::Inline, |ch, req| {
        let _ = ch.reply(req, &Msg::new("echo", req.msg.payload.clone()));
    }));
    ok(ch.register_action("pid", Dispatch::Inline, |ch, req| {
        let _ = ch.reply(req, &Msg::new("pid", std::process::id().to_string()));
    }));
    ok(ch.register_action("hang", Dispatch::Inline, |_, _| {}));
    ok(ch.register_action("slow", Dispatch::Worker, |ch, req| {
        let ms: u64 = String::from_utf8_lossy(&req.msg.payload).parse().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(ms));
        let _ = ch.reply(req, &Msg::new("slow", format!("slept{ms}")));
    }));
    ok(ch.register_action("nested", Dispatch::Worker, |ch, req| {
        let inner = ch.request_sync(&Msg::new("echo", req.msg.payload.clone()), Duration::from_secs(5));
        let text = match inner {
            Ok(r) => format!("nested:{}:{}", r.nb_received, fmt_replies(&r)),
            Err(e) => format!("nested-error:{e}"),
        };
        let _ = ch.reply(req, &Msg::new("nested", text));
    }));
    ok(ch.register_action("memfd-read", Dispatch::Inline, |ch, req| {
        let text = match req.msg.fds.first() {
            Some(fd) => {
                // Positional reads: every receiver's descriptor shares one open file description
                // (SCM_RIGHTS duplicates it), so a seek-and-read races with the other receivers.
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::from(fd.try_clone().expect("dup"));
                let len = f.metadata().map(|m| m.len()).unwrap_or(0).min(4096) as usize;
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    match f.read_at(&mut buf[got..], got as u64) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                String::from_utf8_lossy(&buf[..got]).into_owned()
            }
            None => "no-fd".into(),
        };
        let _ = ch.reply(req, &Msg::new("memfd-read", text));
    }));
}

fn run(rt: &Runtime, w: &[&str], say: &dyn Fn(String)) -> Result<String, String> {
    let arg = |i: usize| w.get(i).copied().ok_or_else(|| format!("missing argument {i}"));
    let num = |i: usize| -> Result<u64, String> { arg(i)?.parse().map_err(|e| format!("{e}")) };
    let shm = rt.shm();
    match w[0] {
        "req" => {
            let r = rt
                .ipc()
                .request_sync(&Msg::new(arg(1)?, arg(2)?.as_bytes().to_vec()), Duration::from_millis(num(3)?))
                .map_err(|e| e.to_string())?;
            Ok(fmt_replies(&r))
        }
        "areq" => {
            let (tx, rx) = std::sync::mpsc::channel();
            rt.ipc()
                .request_async(
                    Msg::new(arg(1)?, arg(2)?.as_bytes().to_vec()),
                    Duration::from_millis(num(3)?),
                    move |r| {
                        let _ = tx.send(r);
                    },
                )
                .map_err(|e| e.to_string())?;
            say("async-submitted".into());
            let r = rx.recv().map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            Ok(format!("async {}", fmt_replies(&r)))
        }
        "send" => {
            let n = rt.ipc().send(&Msg::new(arg(1)?, arg(2)?.as_bytes().to_vec())).map_err(|e| e.to_string())?;
            Ok(format!("sent={n}"))
        }
        "memfd-req" => {
            let fd = nix::sys::memfd::memfd_create(c"lab-test", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
                .map_err(|e| e.to_string())?;
            let mut f = std::fs::File::from(fd);
            f.write_all(arg(1)?.as_bytes()).map_err(|e| e.to_string())?;
            let owned = std::os::fd::OwnedFd::from(f);
            let dup = owned.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
            drop(owned);
            let r = rt
                .ipc()
                .request_sync(&Msg::new("memfd-read", vec![]).with_fds(vec![dup]), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            Ok(fmt_replies(&r))
        }
        "stats" => {
            let s = rt.ipc().stats();
            let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            Ok(format!(
                "received={} malformed={} oversized={} unknown={} foreign={} late={}",
                g(&s.received),
                g(&s.malformed),
                g(&s.oversized),
                g(&s.unknown_action),
                g(&s.foreign),
                g(&s.late_reply)
            ))
        }
        "fds" => Ok(format!("fds={}", lab_core::sys::open_fd_count())),
        "socket" => Ok(rt.ipc().socket_path().display().to_string()),
        "lock-hold" => {
            // Takes the shared-memory lock and keeps it until killed (the crash-fault test).
            let _g = shm.lock().lock();
            say("holding the shared lock".into());
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "zone-reserve" => {
            let text = arg(2)?.as_bytes();
            let z = shm.reserve(arg(1)?, 4096, 64).map_err(|e| e.to_string())?;
            write_zone(shm, z.offset, text);
            Ok(format!("zone {} at {:#x}", z.name, z.offset.0))
        }
        "zone-write" => {
            let z = shm.lookup(arg(1)?).map_err(|e| e.to_string())?;
            write_zone(shm, z.offset, arg(2)?.as_bytes());
            Ok("written".into())
        }
        "zone-read" => {
            let z = shm.lookup(arg(1)?).map_err(|e| e.to_string())?;
            Ok(format!("text={}", read_zone(shm, z.offset)))
        }
        "ring-create" => {
            Ring::<u64>::create(shm, arg(1)?, 1024, RingFlags::MPMC).map_err(|e| e.to_string())?;
            Ok("ring created".into())
        }
        "ring-produce" => {
            let r = Ring::<u64>::lookup(shm, arg(1)?).map_err(|e| e.to_string())?;
            let (start, count) = (num(2)?, num(3)?);
            let mut i = start;
            while i < start + count {
                let n = (start + count - i).min(32);
                let v: Vec<u64> = (i..i + n).collect();
                if r.enqueue_bulk(&v) {
                    i += n;
                } else {
                    std::thread::yield_now();
                }
            }
            Ok(format!("produced={count}"))
        }
        "ring-die-enqueue" | "ring-die-dequeue" => {
            // Killed inside a ring operation: reserved, half done, never published.
            let r = Ring::<u64>::lookup(shm, arg(1)?).map_err(|e| e.to_string())?;
            if w[0] == "ring-die-enqueue" {
                r.abandon_enqueue(&[1, 2, 3, 4, 5, 6, 7, 8]);
            } else {
                r.abandon_dequeue(&mut [0u64; 8]);
            }
            let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
            loop {
                std::thread::park();
            }
        }
        "ring-consume" => {
            let r = Ring::<u64>::lookup(shm, arg(1)?).map_err(|e| e.to_string())?;
            let count = num(2)?;
            let (mut got, mut sum) = (0u64, 0u64);
            let mut buf = [0u64; 32];
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while got < count && std::time::Instant::now() < deadline {
                let n = r.dequeue_burst(&mut buf[..(count - got).min(32) as usize]);
                // Tombstones (a dead producer's slots) are no values.
                let real = buf[..n].iter().filter(|v| **v != u64::MAX);
                got += real.clone().count() as u64;
                sum = real.fold(sum, |a, b| a.wrapping_add(*b));
            }
            Ok(format!("consumed={got} sum={sum}"))
        }
        "pool-create" => {
            Mempool::create(shm, arg(1)?, num(2)? as u32, 2048, 32).map_err(|e| e.to_string())?;
            Ok("pool created".into())
        }
        "pool-avail" => {
            let p = Mempool::lookup(shm, arg(1)?, 0).map_err(|e| e.to_string())?;
            Ok(format!("avail={}", p.avail_count()))
        }
        "pool-send" => {
            // Allocate N buffers here, fill them, and hand them to another process through a ring.
            let mut p = Mempool::lookup(shm, arg(1)?, 32).map_err(|e| e.to_string())?;
            let r = Ring::<u64>::lookup(shm, arg(2)?).map_err(|e| e.to_string())?;
            let count = num(3)?;
            for i in 0..count {
                let mut m = loop {
                    if let Some(m) = p.alloc() {
                        break m;
                    }
                    std::thread::yield_now();
                };
                let len = 60 + (i % 1000) as usize;
                m.set_len(len);
                for (k, b) in m.data_mut().iter_mut().enumerate() {
                    *b = (i as usize + k) as u8;
                }
                let off = m.into_offset().0;
                while !r.enqueue_bulk(&[off]) {
                    std::thread::yield_now();
                }
            }
            Ok(format!("pool-sent={count}"))
        }
        "pool-recv" => {
            // Take N buffers from the ring, check their bytes, free them into this process's cache.
            let mut p = Mempool::lookup(shm, arg(1)?, 32).map_err(|e| e.to_string())?;
            let r = Ring::<u64>::lookup(shm, arg(2)?).map_err(|e| e.to_string())?;
            let count = num(3)?;
            let (mut got, mut bad) = (0u64, 0u64);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut buf = [0u64; 1];
            while got < count && std::time::Instant::now() < deadline {
                if r.dequeue_burst(&mut buf) == 0 {
                    std::thread::yield_now();
                    continue;
                }
                let Some(m) = Mbuf::from_offset(shm, ShmOffset(buf[0])) else {
                    bad += 1;
                    continue;
                };
                let i = got;
                let ok = m.len() == 60 + (i % 1000) as usize
                    && m.data().iter().enumerate().all(|(k, b)| *b == (i as usize + k) as u8);
                if !ok {
                    bad += 1;
                }
                p.free(m);
                got += 1;
            }
            drop(p);
            Ok(format!("pool-received={got} bad={bad}"))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn write_zone(shm: &Arc<lab_core::mem::Shm>, off: ShmOffset, text: &[u8]) {
    let n = text.len().min(4000);
    shm.write_at(off, &(n as u16).to_le_bytes());
    shm.write_at(ShmOffset(off.0 + 2), &text[..n]);
}

fn read_zone(shm: &Arc<lab_core::mem::Shm>, off: ShmOffset) -> String {
    let mut len = [0u8; 2];
    shm.read_at(off, &mut len);
    let mut buf = vec![0u8; (u16::from_le_bytes(len) as usize).min(4000)];
    shm.read_at(ShmOffset(off.0 + 2), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
