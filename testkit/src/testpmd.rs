//! DPDK's `dpdk-testpmd` as a peer of a test or bench: interactive (`-i`, nothing forwarded until
//! told), no hugepages, one `net_null0` port, under a file prefix of its own. Stopped (killed by
//! pid, reaped) and its runtime dir removed on drop: DPDK leaves that dir behind, and this one is
//! ours. Only that dir: DPDK's others are never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// Why testpmd is not there to test against.
#[derive(Debug)]
pub enum TestpmdError {
    /// Not installed (the message names the Debian package).
    Missing,
    /// It would not start.
    Spawn(std::io::Error),
    /// It started but its telemetry socket never answered.
    NoTelemetry(PathBuf),
}

impl std::fmt::Display for TestpmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TestpmdError::Missing => f.write_str("dpdk-testpmd not installed (Debian package dpdk)"),
            TestpmdError::Spawn(e) => write!(f, "cannot start dpdk-testpmd: {e}"),
            TestpmdError::NoTelemetry(p) => write!(f, "dpdk-testpmd serves no telemetry at {}", p.display()),
        }
    }
}

impl std::error::Error for TestpmdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TestpmdError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// A port's counters as testpmd reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortCounters {
    /// Frames received.
    pub ipackets: u64,
    /// Frames sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
}

/// A running `dpdk-testpmd`.
pub struct Testpmd {
    child: Child,
    dir: PathBuf,
    /// Its telemetry socket (`<runtime dir>/dpdk_telemetry.v2`).
    pub sock: PathBuf,
}

fn answers(path: &Path) -> bool {
    let Ok(fd) = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None) else {
        return false;
    };
    UnixAddr::new(path).is_ok_and(|a| connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &a).is_ok())
}

impl Testpmd {
    /// Starts it with `XDG_RUNTIME_DIR=xdg` and `--file-prefix prefix`, pinned whole (lcores and
    /// control threads, telemetry's among them) to `cpu` when given; returns once its telemetry
    /// socket answers (30 s at most).
    pub fn start(xdg: &Path, prefix: &str, cpu: Option<usize>) -> Result<Testpmd, TestpmdError> {
        Testpmd::start_with(xdg, prefix, cpu, &["--vdev", "net_null0"], &[])
    }

    /// As [`Testpmd::start`] with these EAL device arguments (`--vdev ...`) in place of the null
    /// port, and `app` after testpmd's own (`--forward-mode=io`, `--auto-start`).
    pub fn start_with(
        xdg: &Path,
        prefix: &str,
        cpu: Option<usize>,
        devs: &[&str],
        app: &[&str],
    ) -> Result<Testpmd, TestpmdError> {
        let bin = ["/usr/bin/dpdk-testpmd", "/usr/local/bin/dpdk-testpmd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or(TestpmdError::Missing)?;
        // DPDK's runtime dir: /var/run/dpdk/<prefix> for root, else $XDG_RUNTIME_DIR/dpdk/<prefix>.
        let base = if nix::unistd::geteuid().is_root() { PathBuf::from("/var/run/dpdk") } else { xdg.join("dpdk") };
        let dir = base.join(prefix);
        let mut c = match cpu {
            // taskset gives the process that core and --lcores maps both lcores onto it, so the
            // control threads fall back to it too.
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), bin]).args(["--lcores", &format!("0@{cpu},1@{cpu}")]);
                c
            }
            // With $LAB_TESTPMD_LOG its output unbuffered (stdbuf), so a killed testpmd's last
            // lines are in the log too.
            None if std::env::var_os("LAB_TESTPMD_LOG").is_some() && Path::new("/usr/bin/stdbuf").exists() => {
                let mut c = Command::new("/usr/bin/stdbuf");
                c.args(["-o0", "-e0", bin, "-l", "0,1"]);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.args(["-l", "0,1"]);
                c
            }
        };
        // $LAB_TESTPMD_EAL: more EAL arguments, split on spaces (`--log-level=pmd.net.virtio.*:debug`).
        let extra = std::env::var("LAB_TESTPMD_EAL").unwrap_or_default();
        c.args(["--no-huge", "-m", "256", "--no-pci"])
            .args(extra.split_whitespace())
            .args(devs)
            .args(["--file-prefix", prefix])
            .args(["--", "-i", "--no-mlockall", "--total-num-mbufs", "2048"])
            .args(app)
            .env("XDG_RUNTIME_DIR", xdg)
            .stdin(Stdio::piped()); // held open: testpmd -i exits on end of input
                                    // $LAB_TESTPMD_LOG: its output appended there (to see why a peer misbehaves).
        match std::env::var_os("LAB_TESTPMD_LOG")
            .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok())
        {
            Some(f) => {
                let e = f.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null());
                c.stdout(Stdio::from(f)).stderr(e);
            }
            None => {
                c.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = c.spawn().map_err(TestpmdError::Spawn)?;
        let mut t = Testpmd { child, sock: dir.join("dpdk_telemetry.v2"), dir };
        let end = Instant::now() + Duration::from_secs(30);
        while !answers(&t.sock) {
            if Instant::now() > end || !t.is_running() {
                return Err(TestpmdError::NoTelemetry(t.sock.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(t)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its runtime dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One telemetry command's reply (the JSON text), or None when it does not answer.
    pub fn query(&self, cmd: &str) -> Option<String> {
        use nix::sys::socket::{recv, send, MsgFlags};
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).ok()?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        connect(raw, &UnixAddr::new(&self.sock).ok()?).ok()?;
        let tv = nix::sys::time::TimeVal::new(5, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv).ok()?;
        let mut buf = vec![0u8; 65536];
        recv(raw, &mut buf, MsgFlags::empty()).ok()?; // the greeting
        send(raw, cmd.as_bytes(), MsgFlags::empty()).ok()?;
        let n = recv(raw, &mut buf, MsgFlags::empty()).ok()?;
        String::from_utf8(buf[..n].to_vec()).ok()
    }

    /// Port `port`'s counters as telemetry's `/ethdev/stats` gives them.
    pub fn port_stats(&self, port: u16) -> Option<PortCounters> {
        let t = self.query(&format!("/ethdev/stats,{port}"))?;
        let num = |key: &str| -> Option<u64> {
            let k = format!("\"{key}\":");
            let at = t.find(&k)? + k.len();
            let rest = t[at..].trim_start();
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            rest[..end].parse().ok()
        };
        Some(PortCounters {
            ipackets: num("ipackets")?,
            opackets: num("opackets")?,
            ibytes: num("ibytes")?,
            obytes: num("obytes")?,
        })
    }

    /// Types one line at its prompt (`start tx_first 4`).
    pub fn command(&mut self, line: &str) -> bool {
        use std::io::Write;
        self.child.stdin.as_mut().is_some_and(|i| writeln!(i, "{line}").and_then(|_| i.flush()).is_ok())
    }

    /// Whether its port `port` says its link is up (telemetry's `/ethdev/link_status`).
    pub fn link_up(&self, port: u16) -> bool {
        self.query(&format!("/ethdev/link_status,{port}")).is_some_and(|t| t.contains("\"UP\""))
    }

    /// Waits (at most `within`) for port `port`'s link to be up.
    pub fn wait_link_up(&self, port: u16, within: Duration) -> bool {
        let end = Instant::now() + within;
        while !self.link_up(port) {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Whether its port `port` has started (telemetry's `/ethdev/info`, `"dev_started": 1`).
    pub fn port_started(&self, port: u16) -> bool {
        self.query(&format!("/ethdev/info,{port}"))
            .is_some_and(|t| t.split("\"dev_started\":").nth(1).is_some_and(|r| r.trim_start().starts_with('1')))
    }

    /// Waits (at most `within`) for port `port` to have started.
    pub fn wait_port_started(&self, port: u16, within: Duration) -> bool {
        let end = Instant::now() + within;
        while !self.port_started(port) {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stops it (SIGKILL, reaped) without removing its runtime dir: a crash, for a test of
    /// what its peers see.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
