//! The per-process handle: what a lab process is once it has started (DPDK's EAL plus ethdev
//! after `rte_eal_init`): its runtime, the shared port table, this process's own port handles,
//! and the hotplug protocol ([`crate::hotplug`]) that keeps them the same in every process.
//!
//! Start-up ([`Process::init`]): the runtime (primary or secondary), then in the primary the
//! default buffer pool, the port table, the probe of `--vdev` and permitted PCI devices, and the
//! removal monitor (a device that disappears is detached everywhere); in a secondary, the attach
//! of every port the table has, from a consistent snapshot. Then the control-path API:
//! attach, detach, lock, unlock, info, and [`Process::with_port`] for traffic.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::pci::{self, PciDevice, PciError, PciFilter};
use crate::devargs::{BusKind, Devargs, Kvargs};
use crate::ethdev::{
    DevInfo, Driver, EthDev, EthError, LinkStatus, LocalPort, PortConf, PortEntry, PortEvent, PortId, PortState,
    PortStats, PortTable, Ports, ProbeCtx, Registry, Release, DEFAULT_POOL,
};
use crate::hotplug::HotplugError;
use crate::ipc::IpcError;
use crate::mbuf::{MbufError, Mempool};
use crate::options::{FaultOp, FaultSpec, Options};
use crate::runtime::{Runtime, RuntimeError};

mod commands;
mod events;

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Runtime start-up failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The default buffer pool could not be created.
    #[error("default buffer pool: {0}")]
    Pool(#[source] MbufError),
    /// The shared port table could not be opened.
    #[error("port table: {0}")]
    PortTable(#[source] EthError),
    /// `-a`/`-b` did not parse.
    #[error(transparent)]
    PciFilter(#[from] PciError),
    /// The hotplug actions could not be registered.
    #[error("ipc actions: {0}")]
    Actions(#[source] IpcError),
}

/// A device's driver, validated arguments and PCI function: what an attach resolves once.
pub(crate) struct Resolved {
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) kvargs: Kvargs,
    pub(crate) pci: Option<PciDevice>,
}

pub(crate) struct Inner {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) table: PortTable,
    pub(crate) ports: Arc<Ports>,
    pub(crate) registry: Registry,
    pub(crate) timeout: Duration,
    pub(crate) faults: Vec<FaultSpec>,
    pub(crate) op_lock: Mutex<()>,
    pub(crate) pci_root: PathBuf,
    pub(crate) filter: PciFilter,
    pub(crate) conf: PortConf,
    pub(crate) stop: AtomicBool,
    /// The last hotplug operations (`/lab/hotplug`).
    pub(crate) history: crate::hotplug::History,
    /// The primary's port ids held out of use until slow secondaries release them.
    pub(crate) held: crate::hotplug::Held,
    /// A secondary whose primary died: it follows the port table as the primary left it, asks
    /// nothing more and ignores what the dead primary had still queued for it.
    pub(crate) orphaned: AtomicBool,
}

/// A lab process: its runtime, the shared port table and its own port handles, kept the same as
/// every other process's by the hotplug protocol. Cheap to clone.
#[derive(Clone)]
pub struct Process {
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

impl Process {
    /// Starts the runtime and the hotplug layer with the given drivers. The primary creates the
    /// default buffer pool and the port table and probes `--vdev` and permitted PCI devices; a
    /// secondary attaches every port that exists.
    pub fn init(opts: &Options, registry: Registry) -> Result<Process, InitError> {
        Process::init_with(opts, registry, PortConf::default())
    }

    /// [`Process::init`], the primary setting ports up as `conf` says (queue counts, RSS: what
    /// an application gives `rte_eth_dev_configure`): the ports it probes at start and every
    /// port attached later, from any process. A secondary's `conf` is not used (it attaches
    /// ports as the primary set them up).
    pub fn init_with(opts: &Options, registry: Registry, conf: PortConf) -> Result<Process, InitError> {
        let rt = Arc::new(Runtime::init_paused(opts)?);
        if rt.is_primary() {
            let mb = opts.mem_mb.unwrap_or(crate::mem::DEFAULT_MB);
            let n = ((mb << 20) / 3 / 2304).clamp(512, 262_143) as u32;
            Mempool::create(rt.shm(), DEFAULT_POOL, n, crate::mbuf::DEFAULT_DATA_ROOM, 0).map_err(InitError::Pool)?;
        }
        let table = PortTable::open(rt.shm(), rt.is_primary()).map_err(InitError::PortTable)?;
        let filter = PciFilter::from_options(&opts.allow, &opts.block, opts.no_pci)?;
        let inner = Arc::new(Inner {
            rt: rt.clone(),
            table,
            ports: Arc::new(Ports::default()),
            registry,
            timeout: Duration::from_millis(opts.hotplug_timeout_ms),
            faults: opts.faults.clone(),
            op_lock: Mutex::new(()),
            pci_root: pci::sysfs_root(),
            filter,
            conf,
            stop: AtomicBool::new(false),
            history: Default::default(),
            held: Default::default(),
            orphaned: AtomicBool::new(false),
        });
        inner.register_actions().map_err(InitError::Actions)?;
        if let Some(t) = rt.telemetry() {
            commands::register(t, &inner);
        }
        let hp = Process { inner };
        rt.ipc().start();
        if rt.is_primary() {
            hp.probe_at_start(opts);
            hp.start_monitor();
        } else {
            hp.inner.sync_from_table();
            hp.watch_primary();
        }
        events::start(&hp.inner);
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
        // Parsed and resolved once here (a PCI resolve reads the function's sysfs directory);
        // every later step of this attach in this process uses the result.
        let da = Devargs::parse(devargs)?;
        let res = self.inner.resolve(&da)?;
        if self.inner.rt.is_primary() {
            self.inner.attach_primary(&da, &res, None, None)
        } else {
            self.inner.attach_from_secondary(&da, &res)
        }
    }

    /// Detaches a device, named by port id, device name or devargs, in every process.
    /// Returns the port id and name it had.
    pub fn detach(&self, target: &str) -> Result<(PortId, String), HotplugError> {
        let e = self.inner.find_target(target)?;
        if self.inner.rt.is_primary() {
            self.inner.detach_primary(&e, false, None, None)?;
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

    /// Releases this process's ports (secondary: local handles only; primary: the devices) and
    /// stops the runtime. Also done on drop of the last handle.
    pub fn shutdown(&self) {
        self.inner.shutdown();
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

    /// A secondary: once the primary is gone, no step of its operations will come and none of
    /// its queued ones may be carried out (the operation they belong to ended with it). The
    /// table is what it left, consistent or not: the secondary follows it, without waiting for an
    /// operation the dead primary began to end, and keeps its ports running.
    ///
    /// Meanwhile, at every turn while no operation runs, it releases the handles the table no
    /// longer lists: a rollback or detach step the primary could not send it ([`Inner::heal`]).
    /// At every turn, not only when the table changed: the step it did get (an attach) may be
    /// taken after the operation ended and after the last look.
    fn watch_primary(&self) {
        let w = Arc::downgrade(&self.inner);
        let pid = self.inner.rt.shm().primary_pid();
        let _ = std::thread::Builder::new().name("lab-primary-watch".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some(inner) = w.upgrade() else { return };
            if inner.stop.load(Ordering::Relaxed) {
                return;
            }
            inner.heal();
            if !crate::sys::pid_alive(pid) {
                tracing::warn!(pid, "the primary is gone: following its port table; hotplug needs a primary");
                inner.orphaned.store(true, Ordering::Release);
                inner.sync_from_table();
                // Out of the prefix's channel: a new primary of the prefix starts a lab of its own
                // (new shared memory; the old file this one maps is unlinked, not truncated) and
                // must not wait on, or be refused by, the old primary's secondaries.
                inner.rt.ipc().close();
                return;
            }
        });
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
                        if let Err(err) = inner.detach_primary(&e, true, None, None) {
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

impl Inner {
    /// A secondary: releases its handles whose port the table does not list as attached with
    /// their generation, a rollback or detach step it never got (the primary could not send it),
    /// and says so to the primary (`hp_released`), which may hold the id for it. A generation
    /// not attached is never attached again, so the release is right whenever it runs; it runs
    /// under the operation lock, when no operation runs.
    pub(crate) fn heal(&self) {
        if self.ports.ids().is_empty() || self.table.seq() % 2 == 1 {
            return;
        }
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.table.seq() % 2 == 1 || self.orphaned.load(Ordering::Acquire) {
            return;
        }
        for p in self.ports.ids() {
            let Some(gen) = self.ports.slot(p).and_then(|s| s.as_ref().map(|l| l.gen)) else { continue };
            let listed = self.table.entry(p.0 as usize).is_some_and(|e| e.gen == gen && e.state == PortState::Attached);
            if !listed {
                tracing::warn!(port = %p, gen, "the table no longer lists this port (a step that never came): releasing it");
                self.release_local(p, Release::Local);
                crate::hotplug::say_released(self, p, gen);
            }
        }
    }

    /// A late secondary: attach every port of the table, from a consistent snapshot; release local
    /// ports that are gone. Loops until no operation ran meanwhile.
    ///
    /// Its channel is already open, so an operation that begins after the first reading of the
    /// sequence counter tells this process its steps (and waits for them); the snapshot, taken
    /// after that reading and under the operation lock, sees every operation that ended before
    /// it; and one that ran in between changes the counter, so the loop looks again. A fault
    /// `sync:DEVICE:hang` (the test of this window) waits between the reading and the snapshot.
    pub(crate) fn sync_from_table(&self) {
        let inner = self;
        let deadline = Instant::now() + inner.timeout * 4;
        let mut faulted = false;
        loop {
            let s1 = inner.table.seq();
            if s1 % 2 == 1 && Instant::now() < deadline && !inner.orphaned.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if !faulted && inner.faults.iter().any(|f| f.op == FaultOp::Sync) {
                faulted = true;
                for e in inner.table.entries().into_iter().filter(|e| e.state == PortState::Attached) {
                    // Hang or crash: the parser refuses `fail` for a sync.
                    let _ = inner.fault(FaultOp::Sync, &e.name);
                }
            }
            {
                let _g = inner.op_lock.lock().unwrap_or_else(|e| e.into_inner());
                let want: Vec<PortEntry> =
                    inner.table.entries().into_iter().filter(|e| e.state == PortState::Attached).collect();
                // A port over others (a bond) may have a lower id than its members: what fails
                // in id order is tried again once the rest is attached.
                let mut again = Vec::new();
                for e in &want {
                    let have = inner.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.gen));
                    if have != Some(e.gen) {
                        if let Some(old) = inner.ports.take(e.port) {
                            old.dev.close(Release::Local);
                        }
                        if inner.probe_devargs(e.port, e.gen, &e.devargs).is_err() {
                            again.push(e);
                        }
                    }
                }
                for e in again {
                    if let Err(err) = inner.probe_devargs(e.port, e.gen, &e.devargs) {
                        tracing::error!(port = %e.port, device = %e.name, error = %err, "cannot attach existing port");
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

    /// The driver, validated arguments and PCI function of a device (a PCI device's sysfs
    /// directory is read here, once per attach).
    pub(crate) fn resolve(&self, da: &Devargs) -> Result<Resolved, HotplugError> {
        match da.bus() {
            BusKind::Vdev => {
                let d = self
                    .registry
                    .vdev_driver(da.name())
                    .ok_or_else(|| HotplugError::NoDriver { name: da.name().into() })?;
                let kvargs = da.validate(d.name(), d.keys())?;
                Ok(Resolved { driver: d.clone(), kvargs, pci: None })
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
                let dev =
                    pci::scan_one(&dir).map_err(|source| HotplugError::PciScan { name: da.name().into(), source })?;
                let d = self.registry.pci_driver(dev.id()).ok_or_else(|| HotplugError::Pci {
                    name: da.name().into(),
                    reason: format!("no driver for PCI id {}", dev.id()),
                })?;
                let kvargs = da.validate(d.name(), d.keys())?;
                Ok(Resolved { driver: d.clone(), kvargs, pci: Some(dev) })
            }
        }
    }

    /// Probes a parsed and resolved device as port `port` in this process and installs the handle.
    pub(crate) fn probe_local(
        &self,
        port: PortId,
        gen: u32,
        da: &Devargs,
        res: &Resolved,
    ) -> Result<DevInfo, HotplugError> {
        let ctx = ProbeCtx {
            runtime: &self.rt,
            port,
            name: da.name(),
            devargs: da,
            kvargs: &res.kvargs,
            pci: res.pci.as_ref(),
            conf: &self.conf,
            ports: Some(&self.ports),
        };
        let dev = res.driver.probe(&ctx)?;
        let info = dev.info();
        self.ports.insert(LocalPort { port, gen, name: da.name().to_string(), dev, locks: 0 });
        Ok(info)
    }

    /// Parses, resolves and probes devargs that come from the table or another process.
    pub(crate) fn probe_devargs(&self, port: PortId, gen: u32, devargs: &str) -> Result<DevInfo, HotplugError> {
        let da = Devargs::parse(devargs)?;
        let res = self.resolve(&da)?;
        self.probe_local(port, gen, &da, &res)
    }

    pub(crate) fn release_local(&self, port: PortId, how: Release) {
        if let Some(lp) = self.ports.take(port) {
            lp.dev.close(how);
        }
    }

    pub(crate) fn shutdown(&self) {
        if self.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        let how = if self.rt.is_primary() { Release::Shared } else { Release::Local };
        self.close_all_parked();
        for p in self.ports.ids() {
            self.release_local(p, how);
            if self.rt.is_primary() {
                self.table.set_state(p, PortState::Unused);
            }
        }
        self.rt.ipc().close();
    }
}
