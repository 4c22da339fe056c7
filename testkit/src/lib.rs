//! lab-testkit: what the workspace's tests share (dev-only; no lab crate depends on it for real).
//!
//! * [`lab_nic_bin`]: the `lab-nic` binary of this build (built once if a test of another package
//!   runs before it exists), or `$LAB_NIC_BIN`.
//! * [`LabNic`]: a running `lab-nic` serving `--dev` functions under a temp sysfs root, with its
//!   control socket; SIGTERM (then SIGKILL) by pid and reaped on drop, so a failing test leaves no
//!   emulator, socket or sysfs entry behind.
//! * Interfaces: [`unique`] names, [`ip`], [`link_exists`], [`leftover_links`], [`LinkGuard`] and
//!   [`Veth`] (removed on drop), [`skip_without_net_admin`].
//! * [`Testpmd`]: DPDK's dpdk-testpmd as a peer (killed and its runtime dir removed on drop).
//! * [`RawSock`]: a raw AF_PACKET socket on one interface, the kernel side of a wire (the one
//!   module with `unsafe`).
//!
//! It depends on std, libc, nix and tempfile only, so any crate's tests (emu's too) may use it
//! without bending the dependency rules.
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[allow(unsafe_code)]
mod raw;
mod testpmd;
pub use raw::RawSock;
pub use testpmd::{PortCounters, Testpmd, TestpmdError};

pub mod proc;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// How long lab-nic may take to say `lab-nic ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `lab-nic` of this build: `$LAB_NIC_BIN`, else `target/<profile>/lab-nic` next to the
/// running test binary, built once (`cargo build -p lab-emu --bin lab-nic`) when missing.
pub fn lab_nic_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LAB_NIC_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>");
    ensure_lab_nic_in(profile)
}

/// `dir/lab-nic`, built into the same target dir once if missing.
pub fn ensure_lab_nic_in(dir: &Path) -> PathBuf {
    let bin = dir.join("lab-nic");
    if !bin.exists() {
        static BUILD: OnceLock<bool> = OnceLock::new();
        let ok = *BUILD.get_or_init(|| {
            Command::new(env!("CARGO"))
                .args(["build", "-p", "lab-emu", "--bin", "lab-nic"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        assert!(ok, "building lab-nic failed (cargo build -p lab-emu --bin lab-nic)");
    }
    assert!(bin.exists(), "lab-nic not found at {}", bin.display());
    bin
}

/// A running lab-nic; stopped by pid on drop.
pub struct LabNic {
    child: Child,
    root: PathBuf,
    control: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start a [`LabNic`].
pub struct LabNicBuilder {
    bin: PathBuf,
    root: Option<PathBuf>,
    control: Option<PathBuf>,
    devs: Vec<String>,
    args: Vec<String>,
}

impl LabNicBuilder {
    /// The sysfs root to serve under (default: a temp dir owned by the LabNic).
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }
    /// The control socket path (default: `control.sock` beside the root).
    pub fn control(mut self, control: impl Into<PathBuf>) -> Self {
        self.control = Some(control.into());
        self
    }
    /// One `--dev` (`BDF,model=...,wire=...`).
    pub fn dev(mut self, dev: impl Into<String>) -> Self {
        self.devs.push(dev.into());
        self
    }
    /// More arguments (`--pool 2`, `--exit-with-parent`, ...).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Another binary (emu's own tests pass `env!("CARGO_BIN_EXE_lab-nic")`).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = bin.into();
        self
    }

    /// Starts it and waits for `lab-nic ready`; `Err` carries what it printed instead (a test of
    /// a refused command line wants that).
    pub fn try_start(self) -> Result<LabNic, String> {
        let tmp = if self.root.is_none() { Some(tempfile::tempdir().expect("tempdir")) } else { None };
        let root = self.root.unwrap_or_else(|| tmp.as_ref().map(|t| t.path().join("devices")).unwrap_or_default());
        let control = self.control.unwrap_or_else(|| root.parent().unwrap_or(Path::new("/tmp")).join("control.sock"));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--sysfs-root").arg(&root).arg("--control").arg(&control);
        for d in &self.devs {
            cmd.arg("--dev").arg(d);
        }
        cmd.args(["--log-level", "warn"]).args(&self.args).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("stdout");
        let mut nic = LabNic { child, root, control, _tmp: tmp };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            let mut line = String::new();
            let mut seen = String::new();
            loop {
                line.clear();
                match out.read_line(&mut line) {
                    Ok(n) if n > 0 => {
                        if line.trim() == "lab-nic ready" {
                            let _ = tx.send(Ok(()));
                            break;
                        }
                        seen += &line;
                    }
                    _ => {
                        let _ = tx.send(Err(seen));
                        return;
                    }
                }
            }
            // Keep draining so lab-nic never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => Ok(nic),
            Ok(Err(out)) => {
                nic.stop();
                Err(format!("lab-nic exited before it was ready: {out}"))
            }
            Err(_) => {
                nic.stop();
                Err(format!("lab-nic not ready within {READY_TIMEOUT:?}"))
            }
        }
    }

    /// [`try_start`](Self::try_start), panicking on failure.
    pub fn start(self) -> LabNic {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl LabNic {
    /// A builder with this build's lab-nic.
    pub fn builder() -> LabNicBuilder {
        LabNicBuilder { bin: lab_nic_bin(), root: None, control: None, devs: Vec::new(), args: Vec::new() }
    }

    /// lab-nic serving `devs` under a temp root.
    pub fn start(devs: &[&str]) -> LabNic {
        devs.iter().fold(LabNic::builder(), |b, d| b.dev(*d)).start()
    }

    /// The sysfs root (`SYSFS_PCI_DEVICES` for the lab's processes).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<bdf>`.
    pub fn dir(&self, bdf: &str) -> PathBuf {
        self.root.join(bdf)
    }

    /// The function's vfio-user socket.
    pub fn socket(&self, bdf: &str) -> PathBuf {
        self.dir(bdf).join("vfio-user.sock")
    }

    /// The control socket.
    pub fn control(&self) -> &Path {
        &self.control
    }

    /// Pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A control session kept open: commands one after another on one connection, without a
    /// connect (and lab-nic's session thread) per command.
    pub fn session(&self) -> ControlSession {
        let w = UnixStream::connect(&self.control).expect("control socket");
        w.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let r = BufReader::new(w.try_clone().expect("control socket clone"));
        ControlSession { w, r }
    }

    /// One control command, its one-line answer (trimmed).
    pub fn command(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.control).expect("control socket");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        writeln!(s, "{line}").expect("send command");
        let mut r = String::new();
        BufReader::new(s).read_line(&mut r).expect("reply");
        r.trim_end().to_string()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL now (a crash), and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait up to `limit` for the exit; `None` if it did not exit by then (it is then
    /// killed, so nothing is left running).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        None
    }

    /// SIGTERM (clean shutdown: sockets, sysfs entries, TAPs removed), SIGKILL after 3 s; reaped.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

/// An open control connection to a lab-nic ([`LabNic::session`]).
pub struct ControlSession {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl ControlSession {
    /// One control command, its one-line answer (trimmed).
    pub fn command(&mut self, line: &str) -> String {
        writeln!(self.w, "{line}").expect("send command");
        let mut r = String::new();
        self.r.read_line(&mut r).expect("reply");
        r.trim_end().to_string()
    }
}

impl Drop for LabNic {
    fn drop(&mut self) {
        self.stop();
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique interface name of at most 15 bytes: `<tag><pid % 100000><counter>`.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let s = format!("{tag}{}{}", std::process::id() % 100_000, n);
    assert!(s.len() <= 15, "{s} is too long for an interface name");
    s
}

/// Whether this process may create interfaces (CAP_NET_ADMIN in its effective set).
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// True (and one line on stderr) when interfaces cannot be created here.
pub fn skip_without_net_admin(test: &str) -> bool {
    if has_net_admin() && Path::new("/dev/net/tun").exists() {
        return false;
    }
    eprintln!("skipping {test}: needs CAP_NET_ADMIN and /dev/net/tun");
    true
}

/// Runs `ip ARGS`; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
}

/// Whether interface `name` exists.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", "dev", name]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Interfaces of this test binary (names starting with `tag` and holding our pid tag) still present.
pub fn leftover_links(tag: &str) -> Vec<String> {
    let o = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link show");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_string()))
        .filter(|n| n.starts_with(tag) && n.contains(&(std::process::id() % 100_000).to_string()))
        .collect()
}

/// Deletes an interface on drop (by name; a veth takes its peer with it).
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", "dev", &self.0]).output();
    }
}

/// A veth pair, both ends up, IPv6 off (no router solicitations on the wire); removed on drop.
pub struct Veth {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    _g: LinkGuard,
}

impl Veth {
    /// Creates `<tag>a…` and `<tag>b…`.
    pub fn new(tag: &str) -> Veth {
        let a = unique(&format!("{tag}a"));
        let b = unique(&format!("{tag}b"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        let g = LinkGuard(a.clone());
        for n in [&a, &b] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{n}/disable_ipv6"), "1");
            ip(&["link", "set", "dev", n, "up"]);
        }
        Veth { a, b, _g: g }
    }
}
