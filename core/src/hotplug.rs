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
use std::sync::Arc;
use std::time::Duration;

use crate::devargs::{Devargs, DevargsError};
use crate::ethdev::{EthError, PortEntry, PortId, PortState, PortTable, Release, MAX_PORTS};
use crate::ipc::{Dispatch, IpcError, Msg, Replies, Request};
use crate::options::{FaultMode, FaultOp};
use crate::process::{Inner, Resolved};

mod history;
pub(crate) use history::History;
use history::Pending;

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
    /// The PCI function could not be read from sysfs.
    #[error("PCI device {name}: {source}")]
    PciScan {
        /// Device name.
        name: String,
        /// What the scan met.
        #[source]
        source: crate::bus::pci::PciError,
    },
    /// Detach (or lock) of something not attached.
    #[error("not attached")]
    NotAttached,
    /// A locked port vetoed the detach.
    #[error("port {port} is locked in {process}")]
    Locked {
        /// Port id.
        port: PortId,
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

const A_REQ: &str = "hp_req";
const A_ATTACH: &str = "hp_attach";
const A_ROLLBACK: &str = "hp_rollback";
const A_PREDETACH: &str = "hp_predetach";
const A_DETACH: &str = "hp_detach";

impl Inner {
    /// Registers this process's protocol actions (the primary's `hp_req`, a secondary's
    /// attach/rollback/pre-detach/detach) on its IPC channel.
    pub(crate) fn register_actions(self: &Arc<Self>) -> Result<(), IpcError> {
        let ch = self.rt.ipc();
        let w = Arc::downgrade(self);
        // The primary's handler of a secondary's request makes requests of its own and waits for
        // them: it runs on a worker, so the primary's receive thread stays free (drivers answer
        // descriptor requests there while a secondary probes). A secondary's handlers only probe or
        // release a local handle; whatever they ask of the primary is answered on the primary's
        // receive thread and comes back on a reply socket, so they run inline and save a thread
        // hand-off per step. With injected faults they go to a worker, keeping a hang off the
        // receive thread.
        let secondary_mode = if self.faults.is_empty() { Dispatch::Inline } else { Dispatch::Worker };
        let on = |name: &'static str, f: fn(&Inner, &Request) -> Result<String, HotplugError>| {
            let w = w.clone();
            let mode = if name == A_REQ { Dispatch::Worker } else { secondary_mode };
            ch.register_action(name, mode, move |ch, req| {
                let Some(inner) = w.upgrade() else { return };
                let started = (name != A_REQ).then(|| {
                    // The primary asks from a reply socket of its own: named by its pid.
                    let from = match req.peer.pid() {
                        Some(pid) if pid == inner.rt.shm().primary_pid() => "the primary".into(),
                        _ => process_name(&req.peer.name()),
                    };
                    Pending::new(step_name(name), &told_target(req), from)
                });
                let r = f(&inner, req);
                if let Some(mut p) = started {
                    p.answer("this process", step_name(name), &r);
                    inner.history.finish(p, decode_port(&req.msg.payload).ok().map(|d| d.0), &r);
                }
                let text = match r {
                    Ok(s) => format!("ok:{s}"),
                    Err(e) => format!("err:{e}"),
                };
                if req.wants_reply() {
                    let _ = ch.reply(req, &Msg::new(req.msg.name.clone(), text.into_bytes()));
                }
            })
        };
        if self.rt.is_primary() {
            on(A_REQ, Inner::handle_req)?;
        } else {
            on(A_ATTACH, Inner::handle_attach)?;
            on(A_ROLLBACK, Inner::handle_rollback)?;
            on(A_PREDETACH, Inner::handle_predetach)?;
            on(A_DETACH, Inner::handle_detach)?;
        }
        Ok(())
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

impl Inner {
    pub(crate) fn fault(&self, op: FaultOp, device: &str) -> Result<(), HotplugError> {
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

    /// Attach from the primary, of a device parsed and resolved once by the caller; recorded
    /// with every process's answers.
    pub(crate) fn attach_primary(
        &self,
        da: &Devargs,
        res: &Resolved,
        exclude: Option<&str>,
    ) -> Result<PortId, HotplugError> {
        let mut p = Pending::new("attach", da.raw(), exclude.map_or_else(|| "the primary".into(), process_name));
        let r = self.attach_primary_steps(da, res, exclude, &mut p);
        self.history.finish(p, r.as_ref().ok().copied(), &r);
        r
    }

    fn attach_primary_steps(
        &self,
        da: &Devargs,
        res: &Resolved,
        exclude: Option<&str>,
        p: &mut Pending,
    ) -> Result<PortId, HotplugError> {
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = self.table.find(da.name()) {
            if e.state == PortState::Attached {
                return Ok(e.port);
            }
        }
        self.fault(FaultOp::Attach, da.name())?;
        self.table.bump_seq();
        let _seq = SeqGuard(&self.table);
        let owner = exclude.and_then(crate::ipc::pid_of).unwrap_or_else(std::process::id);
        let port = self.table.allocate(da.name(), res.driver.name(), da.raw(), owner)?;
        let gen = self.table.entry(port.0 as usize).map(|e| e.gen).unwrap_or(0);
        let probed = self.probe_local(port, gen, da, res);
        p.answer("the primary", "attach", &probed);
        match probed {
            Ok(info) => self.table.set_info(port, &info),
            Err(e) => {
                self.table.set_state(port, PortState::Unused);
                return Err(e);
            }
        }
        let targets = self.targets(exclude);
        let r =
            self.rt.ipc().request_to(&targets, &Msg::new(A_ATTACH, encode_port(port, gen, da.raw())), self.timeout)?;
        p.replies("attach", &r);
        if let Some(err) = self.failures(&r) {
            tracing::warn!(device = da.name(), error = %err, "attach failed in a secondary: rolling back");
            let rb =
                self.rt.ipc().request_to(&targets, &Msg::new(A_ROLLBACK, encode_port(port, gen, "")), self.timeout)?;
            p.replies("rollback", &rb);
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

    /// Detach (or, `forced`, the undo of an attach) from the primary; recorded with every
    /// process's answers.
    pub(crate) fn detach_primary(
        &self,
        e: &PortEntry,
        forced: bool,
        exclude: Option<&str>,
    ) -> Result<(), HotplugError> {
        let op = if forced { "abort" } else { "detach" };
        let mut p = Pending::new(op, &e.name, exclude.map_or_else(|| "the primary".into(), process_name));
        let r = self.detach_primary_steps(e, forced, exclude, &mut p);
        self.history.finish(p, Some(e.port), &r);
        r
    }

    fn detach_primary_steps(
        &self,
        e: &PortEntry,
        forced: bool,
        exclude: Option<&str>,
        p: &mut Pending,
    ) -> Result<(), HotplugError> {
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.table.entry(e.port.0 as usize).filter(|c| c.gen == e.gen && c.state == PortState::Attached);
        let Some(e) = cur else { return Err(HotplugError::NotAttached) };
        if !forced {
            let locks = self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.locks)).unwrap_or(0);
            if locks > 0 {
                return Err(HotplugError::Locked { port: e.port, process: "the primary".into() });
            }
            self.fault(FaultOp::PreDetach, &e.name)?;
        }
        self.table.bump_seq();
        let _seq = SeqGuard(&self.table);
        let payload = encode_port(e.port, e.gen, "");
        let targets = self.targets(exclude);
        if !forced {
            let r = self.rt.ipc().request_to(&targets, &Msg::new(A_PREDETACH, payload.clone()), self.timeout)?;
            p.replies("predetach", &r);
            if let Some(err) = self.failures(&r) {
                return Err(err);
            }
        }
        self.table.set_state(e.port, PortState::Detaching);
        let r = self.rt.ipc().request_to(&targets, &Msg::new(A_DETACH, payload), self.timeout)?;
        p.replies("detach", &r);
        if let Some(err) = self.failures(&Replies { dead: Vec::new(), ..r }) {
            tracing::warn!(device = %e.name, error = %err, "a secondary reported a failed detach; its handle is released anyway");
        }
        if !forced {
            if let Err(err) = self.fault(FaultOp::Detach, &e.name) {
                tracing::warn!(device = %e.name, error = %err, "detach reported failure in the primary; releasing anyway");
            }
        }
        // Forced too (a removed device, the undo of an attach): the primary gives back the
        // device's shared state (the drivers skip the register writes of a device that is gone),
        // so the id can be attached again.
        self.release_local(e.port, Release::Shared);
        self.table.set_state(e.port, PortState::Unused);
        tracing::info!(port = %e.port, device = %e.name, "detached everywhere");
        Ok(())
    }

    pub(crate) fn find_target(&self, target: &str) -> Result<PortEntry, HotplugError> {
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
                let res = self.resolve(&da)?;
                let port = self.attach_primary(&da, &res, asker)?;
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
    pub(crate) fn attach_from_secondary(&self, da: &Devargs, res: &Resolved) -> Result<PortId, HotplugError> {
        let mut p = Pending::new("attach", da.raw(), "this process".into());
        let r = self.attach_from_secondary_steps(da, res, &mut p);
        self.history.finish(p, r.as_ref().ok().copied(), &r);
        r
    }

    fn attach_from_secondary_steps(
        &self,
        da: &Devargs,
        res: &Resolved,
        p: &mut Pending,
    ) -> Result<PortId, HotplugError> {
        let asked = self.ask_primary("attach", da.raw());
        p.answer("the primary", "request", &asked);
        let ans = asked?;
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
            // The primary answers with the devargs it stored; when they are what this process
            // parsed, its own parse and resolve are used as they are.
            let local = self.fault(FaultOp::Attach, da.name()).and_then(|_| {
                if devargs == da.raw() {
                    self.probe_local(port, gen, da, res)
                } else {
                    self.probe_devargs(port, gen, &devargs)
                }
            });
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
    pub(crate) fn detach_from_secondary(&self, e: &PortEntry) -> Result<(), HotplugError> {
        let mut p = Pending::new("detach", &e.name, "this process".into());
        let r = self.detach_from_secondary_steps(e, &mut p);
        self.history.finish(p, Some(e.port), &r);
        r
    }

    fn detach_from_secondary_steps(&self, e: &PortEntry, p: &mut Pending) -> Result<(), HotplugError> {
        {
            let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
            let locks = self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.locks)).unwrap_or(0);
            if locks > 0 {
                return Err(HotplugError::Locked { port: e.port, process: "this process".into() });
            }
            self.fault(FaultOp::PreDetach, &e.name)?;
        }
        let asked = self.ask_primary("detach", &e.port.0.to_string());
        p.answer("the primary", "request", &asked);
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
        let da = Devargs::parse(&devargs)?;
        self.fault(FaultOp::Attach, da.name())?;
        let res = self.resolve(&da)?;
        if have.is_some() {
            self.release_local(port, Release::Local);
        }
        self.probe_local(port, gen, &da, &res)?;
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
            return Err(HotplugError::Locked { port, process: format!("process {}", std::process::id()) });
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
}

/// Ends a hotplug operation (sequence back to even) however the operation leaves.
struct SeqGuard<'a>(&'a PortTable);

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        self.0.bump_seq();
    }
}

/// The step a secondary's handler of `action` carries out, for the record.
fn step_name(action: &str) -> &'static str {
    match action {
        A_ATTACH => "attach",
        A_ROLLBACK => "rollback",
        A_PREDETACH => "predetach",
        A_DETACH => "detach",
        _ => "request",
    }
}

/// What the primary's request names: the devargs of an attach, else the port.
fn told_target(req: &Request) -> String {
    match decode_port(&req.msg.payload) {
        Ok((_, _, d)) if !d.is_empty() => d,
        Ok((port, _, _)) => format!("port {port}"),
        Err(_) => "(malformed)".into(),
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
