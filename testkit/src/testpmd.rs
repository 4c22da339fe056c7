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
            None => {
                let mut c = Command::new(bin);
                c.args(["-l", "0,1"]);
                c
            }
        };
        c.args(["--no-huge", "-m", "256", "--no-pci", "--vdev", "net_null0", "--file-prefix", prefix])
            .args(["--", "-i", "--no-mlockall", "--total-num-mbufs", "2048"])
            .env("XDG_RUNTIME_DIR", xdg)
            .stdin(Stdio::piped()) // held open: testpmd -i exits on end of input
            .stdout(Stdio::null())
            .stderr(Stdio::null());
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
