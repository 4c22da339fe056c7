//! Multi-process hotplug: attach or detach a device from any process, and every process of the
//! lab ends with the same ports, or none changed (DPDK's "enable hotplug on multi-process").
//!
//! The four scenarios of the design, as implemented here:
//!
//! * **Attach from the primary**: the primary probes the device (port id reserved in the shared
//!   table, state Attaching), then sends `hp_attach` to every secondary and collects the replies.
//!   All succeeded: state Attached. Any failure or a live peer that did not answer within the
//!   hotplug timeout: `hp_rollback` to every secondary, the primary releases its own handle and the
//!   slot, and the attach fails naming the peer and its reason.
//! * **Detach from the primary**: pre-detach check locally (a locked port vetoes), then
//!   `hp_predetach` to every secondary; any veto or silence fails the detach with nothing changed.
//!   Then state Detaching, `hp_detach` to every secondary (each releases only its own handle:
//!   `release_port_local`), and the primary releases the device and clears the slot.
//! * **Attach or detach from a secondary**: the secondary sends `hp_req` to the primary, which runs
//!   the same scenario for every other process and answers with the outcome; the asking secondary
//!   does its own part itself (its pre-detach check before asking; its attach or its release after
//!   the answer), which saves it the round trips of being told. If its own attach then fails, it
//!   asks the primary to undo the attach everywhere. A port it attaches is checked against the
//!   table afterwards, so an operation that overtook the answer (a detach right after) is not
//!   undone.
//!
//! Decisions the original design leaves open:
//! * A peer that does not answer within `--hotplug-timeout-ms` (default 5000) fails the attach
//!   (rollback) or the pre-detach (no change). A peer that dies while the request is pending is not
//!   waited for, and fails the step the same way: the operation could not be confirmed in every
//!   process. A peer already dead when the request goes out is skipped (its socket is removed), and
//!   a restarted process resynchronises from the shared table.
//! * The primary serialises operations: one at a time; a secondary handles the primary's requests
//!   one at a time too, so a rollback never overtakes the attach it undoes.
//! * Attaching a device that is attached succeeds with the existing port; detaching an unknown
//!   device fails with "not attached".
//! * `lock(port)`/`unlock(port)` per process: a locked port vetoes detach.
//! * A secondary that fails its part of a detach has still dropped its handle (releasing cannot
//!   be refused); the failure is reported, and the detach completes everywhere.
//! * A secondary that starts late attaches every port that exists, from a consistent snapshot of the
//!   table (the table's sequence counter is odd while an operation runs).
//! * A device that disappears (surprise removal, seen by the driver) is detached everywhere by the
//!   primary without a pre-detach check.
//!
//! Fault injection (`--lab-fault=OP:DEVICE:MODE`) makes this process fail, hang (twice the timeout,
//! then carry on) or crash (SIGKILL itself) at that step, so tests and the lab runner can check that
//! every process still agrees.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::pci::{self, PciDevice, PciFilter};
use crate::devargs::{BusKind, Devargs, DevargsError};
use crate::ethdev::{
    DevInfo, Driver, EthDev, EthError, LinkStatus, LocalPort, PortConf, PortEntry, PortEvent, PortId, PortState,
    PortStats, PortTable, Ports, ProbeCtx, Registry, Release, DEFAULT_POOL, MAX_PORTS,
};
use crate::ipc::{Dispatch, IpcError, Msg, Replies, Request};
use crate::mbuf::{Mbuf, Mempool};
use crate::options::{FaultMode, FaultOp, FaultSpec, Options};
use crate::runtime::{Runtime, RuntimeError};

/// Errors of hotplug operations. Messages are what `hotplug_mp` prints after "failed to ...: ".
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The devargs did not parse or validate.
    #[error("cannot parse devargs: {0}")]
    Devargs(#[from] DevargsError),
    /// No registered driver for the device.
    #[error("no driver for device {name}")]
    NoDriver {
        /// Device name.
        name: String,
    },
    /// The PCI function is not in sysfs or not usable.
    #[error("PCI device {name}: {reason}")]
    Pci {
        /// Device name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Detach (or lock) of something not attached.
    #[error("not attached")]
    NotAttached,
    /// A locked port vetoed the detach.
    #[error("port {port} is locked in {process}")]
    Locked {
        /// Port id.
        port: u16,
        /// Which process holds the lock.
        process: String,
    },
    /// A process refused the pre-detach check or failed its part of an attach.
    #[error("{process} refused: {reason}")]
    Refused {
        /// Which process.
        process: String,
        /// Its reason.
        reason: String,
    },
    /// Live processes did not answer in time.
    #[error("no answer within {timeout_ms} ms from {processes}")]
    Timeout {
        /// Socket names of the silent processes.
        processes: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The driver failed in this process.
    #[error(transparent)]
    Driver(#[from] EthError),
    /// An injected fault.
    #[error("injected fault: {op} failed for {device}")]
    Fault {
        /// Protocol step.
        op: &'static str,
        /// Device.
        device: String,
    },
    /// The channel failed.
    #[error(transparent)]
    Ipc(#[from] IpcError),
    /// The operation failed in the primary, which ran it for this secondary (its message).
    #[error("{0}")]
    Remote(String),
    /// The primary's answer could not be understood.
    #[error("bad answer from the primary: {0}")]
    BadAnswer(String),
}

/// Errors starting the hotplug layer.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Runtime start-up failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Pool, port table or PCI filter trouble.
    #[error("{0}")]
    Setup(String),
}

/// A device's driver, validated arguments and PCI function.
type Resolved = (Arc<dyn Driver>, crate::devargs::Kvargs, Option<PciDevice>);

const A_REQ: &str = "hp_req";
const A_ATTACH: &str = "hp_attach";
const A_ROLLBACK: &str = "hp_rollback";
const A_PREDETACH: &str = "hp_predetach";
const A_DETACH: &str = "hp_detach";

struct Inner {
    rt: Arc<Runtime>,
    table: PortTable,
    ports: Ports,
    registry: Registry,
    timeout: Duration,
    faults: Vec<FaultSpec>,
    op_lock: Mutex<()>,
    pci_root: PathBuf,
    filter: PciFilter,
    conf: PortConf,
    stop: AtomicBool,
}

/// A process's hotplug layer: its runtime, the shared port table and its own port handles.
#[derive(Clone)]
pub struct Hotplug {
    inner: Arc<Inner>,
}

/// One port as `info` reports it.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// Shared entry.
    pub entry: PortEntry,
    /// What this process's driver handle reports.
    pub dev: DevInfo,
    /// Link.
    pub link: LinkStatus,
    /// This process's counters for the port.
    pub stats: PortStats,
    /// Lock count in this process.
    pub locks: u32,
}

impl Hotplug {
    /// Starts the runtime and the hotplug layer with the given drivers. The primary creates the
    /// default buffer pool and the port table and probes `--vdev` and permitted PCI devices; a
    /// secondary attaches every port that exists.
    pub fn init(opts: &Options, registry: Registry) -> Result<Hotplug, InitError> {
        let rt = Arc::new(Runtime::init_paused(opts)?);
        let setup = |e: String| InitError::Setup(e);
        if rt.is_primary() {
            let mb = opts.mem_mb.unwrap_or(crate::mem::DEFAULT_MB);
            let n = ((mb << 20) / 3 / 2304).clamp(512, 262_143) as u32;
            Mempool::create(rt.shm(), DEFAULT_POOL, n, crate::mbuf::DEFAULT_DATA_ROOM, 0)
                .map_err(|e| setup(format!("default buffer pool: {e}")))?;
        }
        let table = PortTable::open(rt.shm(), rt.is_primary()).map_err(|e| setup(format!("port table: {e}")))?;
        let filter =
            PciFilter::from_options(&opts.allow, &opts.block, opts.no_pci).map_err(|e| setup(format!("{e}")))?;
        let inner = Arc::new(Inner {
            rt: rt.clone(),
            table,
            ports: Ports::default(),
            registry,
            timeout: Duration::from_millis(opts.hotplug_timeout_ms),
            faults: opts.faults.clone(),
            op_lock: Mutex::new(()),
            pci_root: pci::sysfs_root(),
            filter,
            conf: PortConf::default(),
            stop: AtomicBool::new(false),
        });
        let hp = Hotplug { inner };
        hp.register_actions().map_err(|e| setup(format!("ipc actions: {e}")))?;
        rt.ipc().start();
        if rt.is_primary() {
            hp.probe_at_start(opts);
            hp.start_monitor();
        } else {
            hp.sync_from_table();
        }
        Ok(hp)
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.rt
    }

    /// The shared port table.
    pub fn table(&self) -> &PortTable {
        &self.inner.table
    }

    /// Registers a port event callback (NEW/DESTROY in this process).
    pub fn on_event(&self, cb: impl Fn(PortId, PortEvent) + Send + Sync + 'static) {
        self.inner.ports.on_event(cb);
    }

    /// Ports attached in this process, with their names, in id order.
    pub fn list(&self) -> Vec<(PortId, String)> {
        self.inner
            .ports
            .ids()
            .into_iter()
            .filter_map(|p| self.inner.ports.slot(p).and_then(|s| s.as_ref().map(|l| (p, l.name.clone()))))
            .collect()
    }

    /// Attaches a device in every process. Returns its port id.
    pub fn attach(&self, devargs: &str) -> Result<PortId, HotplugError> {
        let da = Devargs::parse(devargs)?;
        self.inner.resolve(&da)?;
        if self.inner.rt.is_primary() {
            self.inner.attach_primary(&da, None)
        } else {
            self.inner.attach_from_secondary(&da)
        }
    }

    /// Detaches a device, named by port id, device name or devargs, in every process.
    /// Returns the port id and name it had.
    pub fn detach(&self, target: &str) -> Result<(PortId, String), HotplugError> {
        let e = self.inner.find_target(target)?;
        if self.inner.rt.is_primary() {
            self.inner.detach_primary(&e, false, None)?;
        } else {
            self.inner.detach_from_secondary(&e)?;
        }
        Ok((e.port, e.name))
    }

    /// The entry a detach target names (port id, device name or devargs), if attached.
    pub fn find(&self, target: &str) -> Option<PortEntry> {
        self.inner.find_target(target).ok()
    }

    /// Locks a port in this process: detach is vetoed until `unlock`.
    pub fn lock(&self, port: PortId) -> Result<u32, HotplugError> {
        let mut s = self.inner.ports.slot(port).ok_or(HotplugError::NotAttached)?;
        let lp = s.as_mut().ok_or(HotplugError::NotAttached)?;
        lp.locks += 1;
        Ok(lp.locks)
    }

    /// Undoes one `lock`.
    pub fn unlock(&self, port: PortId) -> Result<u32, HotplugError> {
        let mut s = self.inner.ports.slot(port).ok_or(HotplugError::NotAttached)?;
        let lp = s.as_mut().ok_or(HotplugError::NotAttached)?;
        if lp.locks == 0 {
            return Err(HotplugError::Refused {
                process: "this process".into(),
                reason: format!("port {port} is not locked"),
            });
        }
        lp.locks -= 1;
        Ok(lp.locks)
    }

    /// What this process knows of a port.
    pub fn info(&self, port: PortId) -> Result<PortInfo, HotplugError> {
        let entry = self.inner.table.entry(port.0 as usize).ok_or(HotplugError::NotAttached)?;
        let mut s = self.inner.ports.slot(port).ok_or(HotplugError::NotAttached)?;
        let lp = s.as_mut().ok_or(HotplugError::NotAttached)?;
        Ok(PortInfo { entry, dev: lp.dev.info(), link: lp.dev.link(), stats: lp.dev.stats(), locks: lp.locks })
    }

    /// Runs `f` on this process's handle of `port` (control path: takes the port's local mutex).
    pub fn with_port<R>(&self, port: PortId, f: impl FnOnce(&mut dyn EthDev) -> R) -> Result<R, HotplugError> {
        let mut s = self.inner.ports.slot(port).ok_or(HotplugError::NotAttached)?;
        let lp = s.as_mut().ok_or(HotplugError::NotAttached)?;
        Ok(f(lp.dev.as_mut()))
    }

    /// Sends `count` frames of `size` bytes on `port` queue 0 (a test pattern); returns how many
    /// the driver took.
    pub fn send_frames(&self, port: PortId, count: u64, size: usize) -> Result<u64, HotplugError> {
        let mut pool = Mempool::lookup(self.inner.rt.shm(), DEFAULT_POOL, 64)
            .map_err(|e| HotplugError::Driver(EthError::Invalid { what: e.to_string() }))?;
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        while sent < count && Instant::now() < deadline {
            let n = (count - sent).min(32) as usize;
            if !pool.alloc_bulk(&mut burst[..n]) {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            for (i, m) in burst[..n].iter_mut().flatten().enumerate() {
                fill_frame(m, size, sent + i as u64);
            }
            let k = self.with_port(port, |d| d.tx_burst(0, &mut burst[..n]))?;
            sent += k as u64;
            pool.free_bulk(&mut burst[..n]);
            if k < n {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(sent)
    }

    /// Receives on `port` queue 0 until `want` frames arrived or `timeout` passed; returns
    /// (frames, bytes).
    pub fn recv_frames(&self, port: PortId, want: u64, timeout: Duration) -> Result<(u64, u64), HotplugError> {
        let mut pool = Mempool::lookup(self.inner.rt.shm(), DEFAULT_POOL, 64)
            .map_err(|e| HotplugError::Driver(EthError::Invalid { what: e.to_string() }))?;
        let (mut got, mut bytes) = (0u64, 0u64);
        let deadline = Instant::now() + timeout;
        let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        while got < want && Instant::now() < deadline {
            let n = self.with_port(port, |d| d.rx_burst(0, &mut burst))?;
            for m in burst[..n].iter_mut().filter_map(Option::take) {
                bytes += m.len() as u64;
                got += 1;
                pool.free(m);
            }
            if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok((got, bytes))
    }

    /// Releases this process's ports (secondary: local handles only; primary: the devices) and
    /// stops the runtime. Also done on drop of the last handle.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn register_actions(&self) -> Result<(), IpcError> {
        let ch = self.inner.rt.ipc();
        let w = Arc::downgrade(&self.inner);
        // The primary's handler of a secondary's request makes requests of its own and waits for
        // them: it runs on a worker, so the primary's receive thread stays free (drivers answer
        // descriptor requests there while a secondary probes). A secondary's handlers only probe or
        // release a local handle; whatever they ask of the primary is answered on the primary's
        // receive thread and comes back on a reply socket, so they run inline and save a thread
        // hand-off per step. With injected faults they go to a worker, keeping a hang off the
        // receive thread.
        let secondary_mode = if self.inner.faults.is_empty() { Dispatch::Inline } else { Dispatch::Worker };
        let on = |name: &str, f: fn(&Inner, &Request) -> Result<String, HotplugError>| {
            let w = w.clone();
            let mode = if name == A_REQ { Dispatch::Worker } else { secondary_mode };
            ch.register_action(name, mode, move |ch, req| {
                let Some(inner) = w.upgrade() else { return };
                let text = match f(&inner, req) {
                    Ok(s) => format!("ok:{s}"),
                    Err(e) => format!("err:{e}"),
                };
                if req.wants_reply() {
                    let _ = ch.reply(req, &Msg::new(req.msg.name.clone(), text.into_bytes()));
                }
            })
        };
        if self.inner.rt.is_primary() {
            on(A_REQ, Inner::handle_req)?;
        } else {
            on(A_ATTACH, Inner::handle_attach)?;
            on(A_ROLLBACK, Inner::handle_rollback)?;
            on(A_PREDETACH, Inner::handle_predetach)?;
            on(A_DETACH, Inner::handle_detach)?;
        }
        Ok(())
    }

    fn probe_at_start(&self, opts: &Options) {
        for v in &opts.vdevs {
            if let Err(e) = self.attach(v) {
                tracing::error!(vdev = %v, error = %e, "cannot probe --vdev device");
            }
        }
        if opts.no_pci {
            return;
        }
        let devs = match pci::scan(&self.inner.pci_root) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "PCI scan failed");
                return;
            }
        };
        for d in devs {
            let driver_ok = d.driver.as_deref() == Some("vfio-pci");
            if !self.inner.filter.permits(&d.addr) || !driver_ok || self.inner.registry.pci_driver(d.id()).is_none() {
                continue;
            }
            let args = opts
                .allow
                .iter()
                .find(|a| Devargs::parse(a).ok().and_then(|x| x.pci_addr()) == Some(d.addr))
                .cloned()
                .unwrap_or_else(|| d.addr.to_string());
            if let Err(e) = self.attach(&args) {
                tracing::error!(device = %d.addr, error = %e, "cannot probe PCI device");
            }
        }
    }

    /// A late secondary: attach every port of the table, from a consistent snapshot; release local
    /// ports that are gone. Loops until no operation ran meanwhile.
    fn sync_from_table(&self) {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.timeout * 4;
        loop {
            let s1 = inner.table.seq();
            if s1 % 2 == 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            {
                let _g = inner.op_lock.lock().unwrap_or_else(|e| e.into_inner());
                let want: Vec<PortEntry> =
                    inner.table.entries().into_iter().filter(|e| e.state == PortState::Attached).collect();
                for e in &want {
                    let have = inner.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.gen));
                    if have != Some(e.gen) {
                        if let Some(old) = inner.ports.take(e.port) {
                            old.dev.close(Release::Local);
                        }
                        if let Err(err) = inner.probe_local(e.port, e.gen, &e.devargs) {
                            tracing::error!(port = %e.port, device = %e.name, error = %err, "cannot attach existing port");
                        }
                    }
                }
                for p in inner.ports.ids() {
                    if !want.iter().any(|e| e.port == p) {
                        if let Some(old) = inner.ports.take(p) {
                            old.dev.close(Release::Local);
                        }
                    }
                }
            }
            if inner.table.seq() == s1 || Instant::now() >= deadline {
                break;
            }
        }
    }

    fn start_monitor(&self) {
        let w = Arc::downgrade(&self.inner);
        let _ = std::thread::Builder::new().name("lab-hotplug-mon".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some(inner) = w.upgrade() else { return };
            if inner.stop.load(Ordering::Relaxed) {
                return;
            }
            for p in inner.ports.ids() {
                let removed = inner.ports.slot(p).and_then(|s| s.as_ref().map(|l| l.dev.is_removed())).unwrap_or(false);
                if removed {
                    if let Some(e) = inner.table.entry(p.0 as usize) {
                        tracing::warn!(port = %p, device = %e.name, "device removed: detaching it everywhere");
                        if let Err(err) = inner.detach_primary(&e, true, None) {
                            tracing::error!(port = %p, error = %err, "detach of a removed device failed");
                        }
                    }
                }
            }
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn encode_port(port: PortId, gen: u32, text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + text.len());
    v.extend_from_slice(&port.0.to_le_bytes());
    v.extend_from_slice(&gen.to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

fn decode_port(b: &[u8]) -> Result<(PortId, u32, String), HotplugError> {
    if b.len() < 6 {
        return Err(HotplugError::BadAnswer("short hotplug message".into()));
    }
    let port = u16::from_le_bytes([b[0], b[1]]);
    if port as usize >= MAX_PORTS {
        return Err(HotplugError::BadAnswer(format!("port {port} out of range")));
    }
    let gen = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let text = std::str::from_utf8(&b[6..]).map_err(|_| HotplugError::BadAnswer("devargs not UTF-8".into()))?;
    Ok((PortId(port), gen, text.to_string()))
}

/// Fills a test frame: broadcast destination, locally administered source, EtherType 0x88b5
/// (local experimental), then a counter and a pattern.
pub fn fill_frame(m: &mut Mbuf, size: usize, seq: u64) {
    let size = size.clamp(60, m.buf_len().saturating_sub(m.headroom()));
    if !m.set_len(size) {
        return;
    }
    let d = m.data_mut();
    d[..6].fill(0xff);
    d[6..12].copy_from_slice(&[0x02, 0x4c, 0x41, 0x42, 0, 1]);
    d[12..14].copy_from_slice(&[0x88, 0xb5]);
    d[14..22].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in d[22..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
}

impl Inner {
    fn resolve(&self, da: &Devargs) -> Result<Resolved, HotplugError> {
        match da.bus() {
            BusKind::Vdev => {
                let d = self
                    .registry
                    .vdev_driver(da.name())
                    .ok_or_else(|| HotplugError::NoDriver { name: da.name().into() })?;
                let kv = da.validate(d.name(), d.keys())?;
                Ok((d.clone(), kv, None))
            }
            BusKind::Pci => {
                let addr = da.pci_addr().ok_or_else(|| HotplugError::NoDriver { name: da.name().into() })?;
                // -a/-b choose what is probed at start; an explicit attach names its device, as
                // DPDK's hotplug does. Only --no-pci turns the bus off.
                if self.filter.no_pci() {
                    return Err(HotplugError::Pci {
                        name: da.name().into(),
                        reason: "the PCI bus is off (--no-pci)".into(),
                    });
                }
                let dir = self.pci_root.join(addr.to_string());
                let dev = pci::scan_one(&dir)
                    .map_err(|e| HotplugError::Pci { name: da.name().into(), reason: e.to_string() })?;
                let d = self.registry.pci_driver(dev.id()).ok_or_else(|| HotplugError::Pci {
                    name: da.name().into(),
                    reason: format!("no driver for PCI id {}", dev.id()),
                })?;
                let kv = da.validate(d.name(), d.keys())?;
                Ok((d.clone(), kv, Some(dev)))
            }
        }
    }

    fn fault(&self, op: FaultOp, device: &str) -> Result<(), HotplugError> {
        let Some(f) = self.faults.iter().find(|f| f.op == op && f.device == device) else { return Ok(()) };
        let op_name = op.as_str();
        match f.mode {
            FaultMode::Fail => Err(HotplugError::Fault { op: op_name, device: device.into() }),
            FaultMode::Hang => {
                let d = self.timeout * 2 + Duration::from_millis(500);
                tracing::warn!(op = op_name, device, ?d, "injected fault: hanging");
                std::thread::sleep(d);
                Ok(())
            }
            FaultMode::Crash => {
                tracing::warn!(op = op_name, device, "injected fault: crashing");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
                std::thread::sleep(Duration::from_secs(60));
                Ok(())
            }
        }
    }

    /// Probes `devargs` as port `port` in this process and installs the handle.
    fn probe_local(&self, port: PortId, gen: u32, devargs: &str) -> Result<DevInfo, HotplugError> {
        let da = Devargs::parse(devargs)?;
        let (driver, kv, pci) = self.resolve(&da)?;
        let ctx = ProbeCtx {
            runtime: &self.rt,
            port,
            name: da.name(),
            devargs: &da,
            kvargs: &kv,
            pci: pci.as_ref(),
            conf: &self.conf,
        };
        let dev = driver.probe(&ctx)?;
        let info = dev.info();
        self.ports.insert(LocalPort { port, gen, name: da.name().to_string(), dev, locks: 0 });
        Ok(info)
    }

    fn release_local(&self, port: PortId, how: Release) {
        if let Some(lp) = self.ports.take(port) {
            lp.dev.close(how);
        }
    }

    fn failures(&self, r: &Replies) -> Option<HotplugError> {
        for rep in &r.replies {
            let t = String::from_utf8_lossy(&rep.msg.payload);
            if let Some(reason) = t.strip_prefix("err:") {
                return Some(HotplugError::Refused { process: process_name(&rep.peer.name()), reason: reason.into() });
            }
        }
        if let Some(d) = r.dead.first() {
            return Some(HotplugError::Refused { process: process_name(d), reason: "died during the request".into() });
        }
        if !r.missing.is_empty() {
            return Some(HotplugError::Timeout {
                processes: r.missing.iter().map(|m| process_name(m)).collect::<Vec<_>>().join(", "),
                timeout_ms: self.timeout.as_millis() as u64,
            });
        }
        None
    }

    /// The secondaries to broadcast to: all but `exclude` (a secondary that asked for the
    /// operation does its own part itself).
    fn targets(&self, exclude: Option<&str>) -> Vec<PathBuf> {
        let all = self.rt.ipc().peers();
        match exclude {
            Some(x) => all.into_iter().filter(|p| p.file_name().is_none_or(|n| n != x)).collect(),
            None => all,
        }
    }

    fn attach_primary(&self, da: &Devargs, exclude: Option<&str>) -> Result<PortId, HotplugError> {
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = self.table.find(da.name()) {
            if e.state == PortState::Attached {
                return Ok(e.port);
            }
        }
        let (driver, _, _) = self.resolve(da)?;
        self.fault(FaultOp::Attach, da.name())?;
        self.table.bump_seq();
        let _seq = SeqGuard(&self.table);
        let port = self.table.allocate(da.name(), driver.name(), da.raw())?;
        let gen = self.table.entry(port.0 as usize).map(|e| e.gen).unwrap_or(0);
        match self.probe_local(port, gen, da.raw()) {
            Ok(info) => self.table.set_info(port, &info),
            Err(e) => {
                self.table.set_state(port, PortState::Unused);
                return Err(e);
            }
        }
        let targets = self.targets(exclude);
        let r =
            self.rt.ipc().request_to(&targets, &Msg::new(A_ATTACH, encode_port(port, gen, da.raw())), self.timeout)?;
        if let Some(err) = self.failures(&r) {
            tracing::warn!(device = da.name(), error = %err, "attach failed in a secondary: rolling back");
            let rb =
                self.rt.ipc().request_to(&targets, &Msg::new(A_ROLLBACK, encode_port(port, gen, "")), self.timeout)?;
            if !rb.missing.is_empty() {
                tracing::warn!(peers = ?rb.missing, "rollback not confirmed (they undo it when their attach ends)");
            }
            self.release_local(port, Release::Shared);
            self.table.set_state(port, PortState::Unused);
            return Err(err);
        }
        self.table.set_state(port, PortState::Attached);
        tracing::info!(port = %port, device = da.name(), secondaries = r.nb_received, "attached everywhere");
        Ok(port)
    }

    fn detach_primary(&self, e: &PortEntry, forced: bool, exclude: Option<&str>) -> Result<(), HotplugError> {
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.table.entry(e.port.0 as usize).filter(|c| c.gen == e.gen && c.state == PortState::Attached);
        let Some(e) = cur else { return Err(HotplugError::NotAttached) };
        if !forced {
            let locks = self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.locks)).unwrap_or(0);
            if locks > 0 {
                return Err(HotplugError::Locked { port: e.port.0, process: "the primary".into() });
            }
            self.fault(FaultOp::PreDetach, &e.name)?;
        }
        self.table.bump_seq();
        let _seq = SeqGuard(&self.table);
        let payload = encode_port(e.port, e.gen, "");
        let targets = self.targets(exclude);
        if !forced {
            let r = self.rt.ipc().request_to(&targets, &Msg::new(A_PREDETACH, payload.clone()), self.timeout)?;
            if let Some(err) = self.failures(&r) {
                return Err(err);
            }
        }
        self.table.set_state(e.port, PortState::Detaching);
        let r = self.rt.ipc().request_to(&targets, &Msg::new(A_DETACH, payload), self.timeout)?;
        if let Some(err) = self.failures(&Replies { dead: Vec::new(), ..r }) {
            tracing::warn!(device = %e.name, error = %err, "a secondary reported a failed detach; its handle is released anyway");
        }
        if !forced {
            if let Err(err) = self.fault(FaultOp::Detach, &e.name) {
                tracing::warn!(device = %e.name, error = %err, "detach reported failure in the primary; releasing anyway");
            }
        }
        self.release_local(e.port, if forced { Release::Local } else { Release::Shared });
        self.table.set_state(e.port, PortState::Unused);
        tracing::info!(port = %e.port, device = %e.name, "detached everywhere");
        Ok(())
    }

    fn find_target(&self, target: &str) -> Result<PortEntry, HotplugError> {
        let t = target.trim();
        let attached = |e: &PortEntry| e.state == PortState::Attached;
        if let Ok(id) = t.parse::<u16>() {
            return self.table.entry(id as usize).filter(attached).ok_or(HotplugError::NotAttached);
        }
        if let Some(e) = self.table.find(t).filter(attached) {
            return Ok(e);
        }
        let da = Devargs::parse(t)?;
        self.table.find(da.name()).filter(attached).ok_or(HotplugError::NotAttached)
    }

    fn ask_primary(&self, op: &str, arg: &str) -> Result<String, HotplugError> {
        let me = self.rt.ipc().socket_path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = format!("{op}\n{me}\n{arg}");
        let wait = self.timeout * 4 + Duration::from_secs(2);
        let r = self.rt.ipc().request_sync(&Msg::new(A_REQ, text.into_bytes()), wait)?;
        let Some(rep) = r.replies.first() else {
            return Err(HotplugError::Timeout { processes: "the primary".into(), timeout_ms: wait.as_millis() as u64 });
        };
        let t = String::from_utf8_lossy(&rep.msg.payload).into_owned();
        if let Some(ok) = t.strip_prefix("ok:") {
            Ok(ok.to_string())
        } else if let Some(err) = t.strip_prefix("err:") {
            Err(if err == "not attached" { HotplugError::NotAttached } else { HotplugError::Remote(err.to_string()) })
        } else {
            Err(HotplugError::BadAnswer(t))
        }
    }

    // --- handlers (run on IPC workers) ---

    fn handle_req(&self, req: &Request) -> Result<String, HotplugError> {
        let t =
            std::str::from_utf8(&req.msg.payload).map_err(|_| HotplugError::BadAnswer("request not UTF-8".into()))?;
        let mut it = t.splitn(3, '\n');
        let (Some(op), Some(asker), Some(arg)) = (it.next(), it.next(), it.next()) else {
            return Err(HotplugError::BadAnswer("malformed hotplug request".into()));
        };
        // The asking secondary does its own part after this answer; everyone else is told here.
        let asker = Some(asker).filter(|a| a.starts_with("mp_socket_"));
        match op {
            "attach" => {
                let da = Devargs::parse(arg)?;
                self.resolve(&da)?;
                let port = self.attach_primary(&da, asker)?;
                let e = self.table.entry(port.0 as usize).ok_or(HotplugError::NotAttached)?;
                Ok(format!("{}:{}:{}", port.0, e.gen, e.devargs))
            }
            "detach" | "abort" => {
                let e = self.find_target(arg)?;
                self.detach_primary(&e, op == "abort", asker)?;
                Ok(e.port.0.to_string())
            }
            other => Err(HotplugError::BadAnswer(format!("unknown hotplug operation {other:?}"))),
        }
    }

    /// Attach asked by this secondary: the primary attaches everywhere else, then this process
    /// attaches its own handle (one round trip less per process than being told to). If that
    /// fails, the primary undoes the attach everywhere. The port is checked against the table once
    /// attached, so an operation that overtook ours (a detach right after) is not undone here.
    fn attach_from_secondary(&self, da: &Devargs) -> Result<PortId, HotplugError> {
        let ans = self.ask_primary("attach", da.raw())?;
        let mut f = ans.splitn(3, ':');
        let (port, gen, devargs) = match (f.next().map(str::parse::<u16>), f.next().map(str::parse::<u32>), f.next()) {
            (Some(Ok(p)), Some(Ok(g)), Some(d)) if (p as usize) < MAX_PORTS => (PortId(p), g, d.to_string()),
            _ => return Err(HotplugError::BadAnswer(ans)),
        };
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        let have = self.ports.slot(port).and_then(|s| s.as_ref().map(|l| l.gen));
        if have != Some(gen) {
            if have.is_some() {
                self.release_local(port, Release::Local);
            }
            let local = self.fault(FaultOp::Attach, da.name()).and_then(|_| self.probe_local(port, gen, &devargs));
            if let Err(err) = local {
                tracing::warn!(device = da.name(), error = %err, "local attach failed: undoing it everywhere");
                if let Err(e2) = self.ask_primary("abort", &port.0.to_string()) {
                    tracing::warn!(device = da.name(), error = %e2, "undo of the attach failed");
                }
                return Err(err);
            }
        }
        let still = self.table.entry(port.0 as usize).is_some_and(|e| e.gen == gen && e.state == PortState::Attached);
        if !still {
            self.release_local(port, Release::Local);
        }
        Ok(port)
    }

    /// Detach asked by this secondary: its own pre-detach check first (a lock here vetoes), then
    /// the primary runs the protocol for everyone else, then this process drops its handle.
    fn detach_from_secondary(&self, e: &PortEntry) -> Result<(), HotplugError> {
        {
            let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
            let locks = self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.locks)).unwrap_or(0);
            if locks > 0 {
                return Err(HotplugError::Locked { port: e.port.0, process: "this process".into() });
            }
            self.fault(FaultOp::PreDetach, &e.name)?;
        }
        let asked = self.ask_primary("detach", &e.port.0.to_string());
        if let Err(err) = asked {
            // No answer, but the table says the detach went ahead (the primary died after telling
            // the others): this process follows them rather than keep a port nobody else has.
            let gone =
                self.table.entry(e.port.0 as usize).is_none_or(|c| c.gen != e.gen || c.state != PortState::Attached);
            if !gone {
                return Err(err);
            }
            tracing::warn!(device = %e.name, error = %err, "no answer from the primary, but the detach went ahead");
        }
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = self.fault(FaultOp::Detach, &e.name) {
            tracing::warn!(device = %e.name, error = %err, "detach reported failure here; releasing anyway");
        }
        if self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.gen)) == Some(e.gen) {
            self.release_local(e.port, Release::Local);
        }
        Ok(())
    }

    fn handle_attach(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, gen, devargs) = decode_port(&req.msg.payload)?;
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        let have = self.ports.slot(port).and_then(|s| s.as_ref().map(|l| l.gen));
        if have == Some(gen) {
            return Ok(String::new());
        }
        let name = Devargs::parse(&devargs)?.name().to_string();
        self.fault(FaultOp::Attach, &name)?;
        if have.is_some() {
            self.release_local(port, Release::Local);
        }
        self.probe_local(port, gen, &devargs)?;
        Ok(String::new())
    }

    fn handle_rollback(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, gen, _) = decode_port(&req.msg.payload)?;
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.ports.slot(port).and_then(|s| s.as_ref().map(|l| l.gen)) == Some(gen) {
            self.release_local(port, Release::Local);
        }
        Ok(String::new())
    }

    fn handle_predetach(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, _gen, _) = decode_port(&req.msg.payload)?;
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (locks, name) = self
            .ports
            .slot(port)
            .and_then(|s| s.as_ref().map(|l| (l.locks, l.name.clone())))
            .unwrap_or((0, String::new()));
        if !name.is_empty() {
            self.fault(FaultOp::PreDetach, &name)?;
        }
        if locks > 0 {
            return Err(HotplugError::Locked { port: port.0, process: format!("process {}", std::process::id()) });
        }
        Ok(String::new())
    }

    fn handle_detach(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, _gen, _) = decode_port(&req.msg.payload)?;
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.ports.slot(port).and_then(|s| s.as_ref().map(|l| l.name.clone()));
        let fault = match &name {
            Some(n) => self.fault(FaultOp::Detach, n),
            None => Ok(()),
        };
        self.release_local(port, Release::Local);
        fault.map(|_| String::new())
    }

    fn shutdown(&self) {
        if self.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        let how = if self.rt.is_primary() { Release::Shared } else { Release::Local };
        for p in self.ports.ids() {
            self.release_local(p, how);
            if self.rt.is_primary() {
                self.table.set_state(p, PortState::Unused);
            }
        }
        self.rt.ipc().close();
    }
}

/// Ends a hotplug operation (sequence back to even) however the operation leaves.
struct SeqGuard<'a>(&'a PortTable);

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        self.0.bump_seq();
    }
}

/// "process <pid>" from a socket name, or "the primary".
fn process_name(sock: &str) -> String {
    match sock.strip_prefix("mp_socket_").and_then(|r| r.split('_').next()) {
        Some(pid) => format!("process {pid}"),
        None if sock == "mp_socket" => "the primary".into(),
        None => sock.to_string(),
    }
}
