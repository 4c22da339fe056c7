//! The control socket: one text command per line, one reply line starting with `ok` or `error: `.
//!
//! | command | effect / reply |
//! | --- | --- |
//! | `link up BDF`, `link down BDF` | cable state (LINKS, STATUS, LSC interrupt) |
//! | `unplug BDF` | surprise removal: sysfs entry and socket removed, every client connection closed |
//! | `plug BDF` | an unplugged function comes back in its power-on state (hot add; not for a peer-cabled one) |
//! | `stats BDF` | `ok rx_packets=.. rx_bytes=.. tx_packets=.. tx_bytes=.. rx_missed=.. connections=..` |
//! | `faults BDF` | `ok count=N` then the last few records `[time_us=.. iova=.. len=.. what=".."]` |
//! | `connections BDF` | `ok connections=N refused=M` and `id:AGEms:pid=PID` of each |
//! | `list` | `ok` and the served functions |
//! | `threads` | `ok` and `BDF=THREAD` for each served function: the device thread that polls it, `(dead)` after the model panicked |

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::server::Function;
use crate::sysfs::SysfsFunction;

/// Longest command line accepted.
const MAX_LINE: usize = 512;
/// Fault records shown by `faults`.
const FAULTS_SHOWN: usize = 5;

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be bound.
    #[error("cannot bind control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// One served function with its sysfs entry.
#[derive(Debug)]
pub struct Port {
    /// The vfio-user side (stopped on drop).
    pub function: Function,
    /// The sysfs entry (removed on drop).
    pub sysfs: SysfsFunction,
}

impl Port {
    /// Surprise removal: the sysfs entry and socket go first (no new client finds it), then every
    /// client connection is closed and the threads stop.
    pub fn unplug(mut self) {
        if let Err(e) = self.sysfs.remove() {
            tracing::warn!("{e}");
        }
        self.function.stop();
    }
}

/// The served functions by PCI address.
pub type Ports = Arc<Mutex<BTreeMap<String, Port>>>;

/// Makes a function anew for `plug BDF` (the emulator's start-up knows how), or says why not.
pub type Plugger = Arc<dyn Fn(&str) -> Result<Port, PlugError> + Send + Sync>;

/// Why `plug BDF` cannot bring a function back.
#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    /// Not a function of this emulator's command line.
    #[error("no function {bdf} on lab-nic's command line (the ones it has: {known})")]
    Unknown {
        /// As asked.
        bdf: String,
        /// The functions it has.
        known: String,
    },
    /// Its cable's other end is another function's, which went on without it.
    #[error("{bdf} is cabled to {peer}: a peer-cabled function cannot be plugged back")]
    PeerCabled {
        /// The function.
        bdf: String,
        /// Its peer.
        peer: String,
    },
    /// Starting it again failed.
    #[error("{bdf}: {source}")]
    Start {
        /// The function.
        bdf: String,
        /// What failed (with its own causes).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn lock(p: &Ports) -> std::sync::MutexGuard<'_, BTreeMap<String, Port>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Executes one command line and returns the reply line (with its trailing newline).
pub fn execute(ports: &Ports, plug: Option<&Plugger>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["link", state @ ("up" | "down"), bdf] => with_port(ports, bdf, |p| {
            p.function.link_set(*state == "up");
            "ok".to_owned()
        }),
        ["unplug", bdf] => {
            let port = lock(ports).remove(*bdf);
            match port {
                Some(p) => {
                    tracing::info!(bdf, "surprise unplug");
                    p.unplug();
                    "ok".to_owned()
                }
                None => format!("error: no function {bdf}"),
            }
        }
        ["plug", bdf] => match plug {
            None => "error: this emulator cannot plug functions back".to_owned(),
            // The map's lock is held across the start-up, so two plugs of one function cannot race.
            Some(make) => {
                let mut map = lock(ports);
                if map.contains_key(*bdf) {
                    format!("error: {bdf} is plugged in")
                } else {
                    match make(bdf) {
                        Ok(p) => {
                            tracing::info!(bdf, "hot add");
                            map.insert(bdf.to_string(), p);
                            "ok".to_owned()
                        }
                        Err(e) => {
                            let mut s = format!("error: {e}");
                            let mut c = std::error::Error::source(&e);
                            while let Some(x) = c {
                                s += &format!(": {x}");
                                c = x.source();
                            }
                            s
                        }
                    }
                }
            }
        },
        ["stats", bdf] => with_port(ports, bdf, |p| {
            let s = p.function.stats();
            format!(
                "ok rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} rx_missed={} rx_filtered={} connections={} refused={}",
                s.rx_packets,
                s.rx_bytes,
                s.tx_packets,
                s.tx_bytes,
                s.rx_missed,
                s.rx_filtered,
                p.function.connections(),
                p.function.refused()
            )
        }),
        ["faults", bdf] => with_port(ports, bdf, |p| {
            let (total, last) = p.function.faults(FAULTS_SHOWN);
            let mut r = format!("ok count={total}");
            for f in last {
                r.push_str(&format!(" [{f}]"));
            }
            r
        }),
        ["connections", bdf] => with_port(ports, bdf, |p| {
            let mut r = format!(
                "ok connections={} refused={}",
                p.function.connections(),
                p.function.refused()
            );
            for (id, age, pid) in p.function.connection_ages() {
                r.push_str(&format!(" {id}:{}ms:pid={pid}", age.as_millis()));
            }
            r
        }),
        ["list"] => {
            let mut r = "ok".to_owned();
            for k in lock(ports).keys() {
                r.push(' ');
                r.push_str(k);
            }
            r
        }
        ["threads"] => {
            let mut r = "ok".to_owned();
            for (k, p) in lock(ports).iter() {
                let dead = if p.function.is_dead() { "(dead)" } else { "" };
                r.push_str(&format!(" {k}={}{dead}", p.function.device_thread()));
            }
            r
        }
        [] => "error: empty command".to_owned(),
        _ => format!(
            "error: unknown command \"{}\" (commands: link up|down BDF, unplug BDF, plug BDF, stats BDF, faults BDF, connections BDF, list, threads)",
            line.trim()
        ),
    };
    let mut reply = reply.replace('\n', " ");
    reply.push('\n');
    reply
}

fn with_port(ports: &Ports, bdf: &str, f: impl FnOnce(&Port) -> String) -> String {
    match lock(ports).get(bdf) {
        Some(p) => f(p),
        None => format!("error: no function {bdf}"),
    }
}

/// The control socket server.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket) and serves commands on `ports`; `plug` makes
    /// `plug BDF` possible.
    pub fn start(path: &Path, ports: Ports, plug: Option<Plugger>) -> Result<Self, ControlError> {
        let berr = |source| ControlError::Bind { path: path.to_owned(), source };
        if let Ok(md) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if md.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = crate::sysfs::listen_owner_only(path).map_err(berr)?;
        let (wake, wake_rx) = UnixStream::pair().map_err(berr)?;
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &wake_rx, &ports, plug))
            .map_err(berr)?;
        Ok(Self { path: path.to_owned(), wake, thread: Some(thread) })
    }

    /// Stops accepting, and removes the socket file.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = (&self.wake).write(&[1]);
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &UnixListener, wake: &UnixStream, ports: &Ports, plug: Option<Plugger>) {
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN), PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("control socket poll failed: {e}");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        if let Ok((stream, _)) = listener.accept() {
            let (ports, plug) = (ports.clone(), plug.clone());
            // Sessions are detached: they end when the peer closes; replies never block the lab.
            let _ = std::thread::Builder::new()
                .name("control-session".into())
                .spawn(move || session(stream, &ports, plug.as_ref()));
        }
    }
}

fn session(stream: UnixStream, ports: &Ports, plug: Option<&Plugger>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = if !line.ends_with('\n') && line.len() >= MAX_LINE {
            // Skip the rest of an over-long line.
            let mut sink = Vec::new();
            let _ = reader.read_until(b'\n', &mut sink);
            "error: command line too long\n".to_owned()
        } else {
            execute(ports, plug, &line)
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
