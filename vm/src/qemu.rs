//! One guest under QEMU: q35 with an Intel vIOMMU (caching mode, interrupt remapping) and
//! PCIe root ports, the serial console as the guest's voice, QMP as the host's hand.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{Missing, VmError};

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`/dev/kvm` opens read-write).
    Kvm,
    /// Software emulation: slower, works everywhere.
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` opens read-write, else TCG (`LAB_VM_ACCEL=tcg` forces it).
    pub fn detect() -> Accel {
        if std::env::var("LAB_VM_ACCEL").is_ok_and(|v| v == "tcg") {
            return Accel::Tcg;
        }
        match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Ok(_) => Accel::Kvm,
            Err(_) => Accel::Tcg,
        }
    }
}

/// `qemu-system-x86_64` on the PATH (Debian's `qemu-system-x86`).
pub fn qemu() -> Result<PathBuf, Missing> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| Missing("qemu-system-x86_64 (qemu-system-x86)".into()))
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Extra kernel command line.
    pub append: String,
    /// Guest RAM in MiB.
    pub mem_mb: u32,
    /// vCPUs.
    pub cpus: u32,
    /// With the Intel vIOMMU (`intel_iommu=on`), else none (VFIO's noiommu mode).
    pub iommu: bool,
    /// Extra QEMU arguments: `-device`, `-netdev`, ...
    pub args: Vec<String>,
    /// Where QEMU's QMP socket and the console log go.
    pub dir: PathBuf,
}

/// A running guest; killed and reaped on drop.
pub struct Vm {
    child: Child,
    lines: Receiver<String>,
    console: Arc<Mutex<Vec<String>>>,
    qmp: Option<BufReader<UnixStream>>,
    qmp_path: PathBuf,
    started: Instant,
}

impl Vm {
    /// Starts QEMU with `cfg` under `accel`.
    pub fn boot(qemu: &Path, accel: Accel, cfg: &VmConfig) -> Result<Vm, VmError> {
        let qmp_path = cfg.dir.join("qmp.sock");
        let mut c = Command::new(qemu);
        let machine = match (accel, cfg.iommu) {
            (Accel::Kvm, true) => "q35,accel=kvm,kernel-irqchip=split",
            (Accel::Kvm, false) => "q35,accel=kvm",
            (Accel::Tcg, _) => "q35,accel=tcg",
        };
        c.args(["-machine", machine, "-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
        c.args(["-smp", &cfg.cpus.to_string(), "-m", &cfg.mem_mb.to_string()]);
        c.args(["-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio"]);
        c.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if cfg.iommu {
            c.args(["-device", "intel-iommu,intremap=on,caching-mode=on"]);
        }
        let iommu = if cfg.iommu { "intel_iommu=on" } else { "" };
        c.arg("-kernel").arg(&cfg.kernel).arg("-initrd").arg(&cfg.initrd);
        // earlyprintk: the first kernel line comes before the console is set up, so a guest that
        // hangs early is seen as such.
        c.arg("-append")
            .arg(format!("console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4 {iommu} {}", cfg.append));
        c.args(&cfg.args);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = c.spawn().map_err(|e| VmError::io(qemu, e))?;
        let (tx, lines) = channel();
        let console = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let keep = console.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let l = l.trim_end_matches('\r').to_string();
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(l.clone());
                let _ = tx.send(l);
            }
        });
        let err = child.stderr.take().expect("piped stderr");
        let keep = console.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(format!("qemu: {l}"));
            }
        });
        Ok(Vm { child, lines, console, qmp: None, qmp_path, started: Instant::now() })
    }

    /// Time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The next console line, waiting at most `within`; `None` when QEMU exited or time ran out.
    pub fn next_line(&mut self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Everything the console (and QEMU's stderr) printed so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// One QMP command; its `return` value, or the error QEMU gave.
    pub fn qmp(&mut self, execute: &str, arguments: Value) -> Result<Value, VmError> {
        if self.qmp.is_none() {
            let s = connect_retry(&self.qmp_path)?;
            let mut r = BufReader::new(s);
            read_qmp(&mut r)?; // greeting
            self.qmp = Some(r);
            self.qmp("qmp_capabilities", json!({}))?;
        }
        let r = self.qmp.as_mut().expect("connected");
        let cmd = json!({"execute": execute, "arguments": arguments});
        writeln!(r.get_mut(), "{cmd}").map_err(|e| VmError::io(&self.qmp_path, e))?;
        loop {
            let v = read_qmp(r)?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(VmError::Qmp { command: execute.into(), error: e.to_string() });
            }
            return Ok(v["return"].clone());
        }
    }

    /// QEMU's exit status once it exits within `within`.
    pub fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.qmp_path);
    }
}

fn connect_retry(path: &Path) -> Result<UnixStream, VmError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| VmError::io(path, e))?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => return Err(VmError::io(path, e)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn read_qmp(r: &mut BufReader<UnixStream>) -> Result<Value, VmError> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| VmError::io(Path::new("qmp"), e))?;
    if n == 0 {
        return Err(VmError::Qmp { command: "(read)".into(), error: "QMP closed".into() });
    }
    serde_json::from_str(&line).map_err(|e| VmError::Qmp { command: "(read)".into(), error: format!("{e}: {line}") })
}
