//! Multi-process hotplug: attach or detach a device from any process, and every process of the
//! lab ends with the same ports, or none changed (DPDK's "enable hotplug on multi-process").
//!
//! The protocol's decisions live in [`machine`] as pure state machines (no sockets, threads or
//! clocks): [`PrimaryOp`] for the primary's run of an operation, [`AskerOp`] for a secondary that
//! asks, [`answer`] for a secondary told a step, [`admit`](machine::admit) for a queued request. This module is the
//! driver: it feeds them what the channel, the table and the drivers report and carries out their
//! commands. The same machines run in `lab-model`, where stateright explores every interleaving
//! and fault of a bounded lab (README, "What is proven").
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
//!   asks the primary to undo the attach everywhere. Before it probes, it rechecks the table under
//!   its operation lock (held through the probe), so an operation that overtook the answer (a
//!   detach right after, the id reused) is neither undone nor raced. Its request carries its
//!   deadline; the primary refuses one that waited in its queue too long to finish in time.
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
//! * Every step names the port's generation; a step for an older generation than the handle a
//!   secondary holds (a slow secondary's stale step of an operation that timed out) changes nothing.
//! * A secondary that did not confirm the detach step in time may still hold the handle: the
//!   primary holds the port id out of use (state Detaching, `held` in `/lab/hotplug`) until that
//!   secondary says it released it (`hp_released`) or dies.
//! * A secondary whose primary died notices within 200 ms, follows the table the primary left (a
//!   port never published is released), refuses the dead primary's queued steps, fails hotplug
//!   requests naming the dead primary, keeps its ports running, and leaves the prefix's channel: a
//!   new primary of the prefix starts a lab of its own (new shared memory; the old file is unlinked,
//!   so what old secondaries map stays intact).
//! * A step that cannot be sent to one peer (its queue full past the send timeout) still goes to
//!   the others; that peer counts as silent. Every 200 ms while no operation runs, each secondary
//!   releases the handles the table no longer lists (a rollback or detach it never got) and says so
//!   (`hp_released`): a generation that is not attached is never attached again.
//!
//! Fault injection (`--lab-fault=OP:DEVICE:MODE`) makes this process fail, hang (twice the timeout,
//! then carry on) or crash (SIGKILL itself) at that step, so tests and the lab runner can check that
//! every process still agrees.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::devargs::{Devargs, DevargsError};
use crate::ethdev::{EthError, LocalPort, PortEntry, PortId, PortState, PortTable, Release, MAX_PORTS};
use crate::ipc::{Dispatch, IpcError, Msg, Request};
use crate::options::{FaultMode, FaultOp};
use crate::process::{Inner, Resolved};

mod history;
pub mod machine;
pub(crate) use history::History;
use history::Pending;
use machine::{answer, Action, Ask, AskerOp, Command, Event, Failure, Kind, Local, Plan, PrimaryOp, Step};

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
    /// This secondary's probe failed after the primary attached the port everywhere else, and
    /// the primary did not confirm the undo: the port may remain attached in the other processes.
    #[error("{0}; the primary did not confirm the undo: the port may remain attached in the other processes")]
    Unconfirmed(Box<HotplugError>),
    /// The operation failed in the primary, which ran it for this secondary (its message).
    #[error("{0}")]
    Remote(String),
    /// A secondary's request waited behind other operations until too little of its time was
    /// left to run it: refused unstarted, so it is not done after its asker stopped waiting.
    #[error("the request waited too long behind other operations: {left_ms} ms left of its asker's wait, {need_ms} ms needed")]
    Expired {
        /// Time left to the asker's deadline.
        left_ms: u64,
        /// The longest the operation can take.
        need_ms: u64,
    },
    /// This secondary's primary has died: no hotplug until a new primary runs.
    #[error("the primary (pid {pid}) is gone: hotplug needs a primary")]
    PrimaryGone {
        /// The dead primary's pid.
        pid: u32,
    },
    /// The primary's answer could not be understood.
    #[error("bad answer from the primary: {0}")]
    BadAnswer(String),
    /// The device's last port is held for processes that did not confirm its detach, with the
    /// primary's handle still open (its close would reset what a new port of it set up).
    #[error("device {name} is still held as port {port} for processes {pids:?} that did not confirm its detach")]
    StillHeld {
        /// Device name.
        name: String,
        /// The held port id.
        port: PortId,
        /// Who it waits for.
        pids: Vec<u32>,
    },
}

const A_REQ: &str = "hp_req";
const A_ATTACH: &str = "hp_attach";
const A_ROLLBACK: &str = "hp_rollback";
const A_PREDETACH: &str = "hp_predetach";
const A_DETACH: &str = "hp_detach";
/// A secondary to the primary, one way: it released a port whose detach step it answered late.
const A_RELEASED: &str = "hp_released";

/// The primary's port ids whose detach some secondaries did not confirm in time: held out of
/// use (state Detaching) until each of them says it released its handle (`hp_released`) or dies.
/// When one that did not ask for the detach is late, the primary's own handle is parked with the
/// id rather than closed: the late secondary may still run the port, and the close would take
/// its buffers, rings and zones from under it. A parked handle is out of the port table (the
/// application saw the port go) and is closed once nobody holds the id, under the operation
/// lock (never on the receive thread), before the id is free again.
#[derive(Default)]
pub(crate) struct Held {
    ports: std::sync::Mutex<Vec<HeldPort>>,
    /// Parked handles let go by every holder, waiting for the operation lock to be closed.
    closing: std::sync::Mutex<Vec<(PortId, u32, LocalPort)>>,
    /// Releases of ports not held (yet): (port, generation, pid).
    early: std::sync::Mutex<Vec<(PortId, u32, u32)>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("ports", &self.ports()).finish()
    }
}

struct HeldPort {
    port: PortId,
    gen: u32,
    pids: Vec<u32>,
    /// The primary's handle, parked.
    dev: Option<LocalPort>,
}

/// `hp_released` messages that came before their port was held (a secondary that answered just
/// after the primary stopped waiting), at most this many kept.
const EARLY_MAX: usize = 64;

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HeldPort>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the id for `pids` (less those that already said they let go), with the primary's
    /// parked handle if any; when nobody is left, nothing is held and the handle comes back.
    fn hold(
        &self,
        port: PortId,
        gen: u32,
        mut pids: Vec<u32>,
        dev: Option<LocalPort>,
    ) -> Result<(), Option<LocalPort>> {
        let mut g = self.lock();
        self.early.lock().unwrap_or_else(|e| e.into_inner()).retain(|&(p, gn, pid)| {
            let mine = p == port && gn == gen;
            if mine {
                pids.retain(|x| *x != pid);
            }
            !mine
        });
        if pids.is_empty() {
            return Err(dev);
        }
        g.push(HeldPort { port, gen, pids, dev });
        Ok(())
    }

    /// A device name whose held port has the primary's handle parked (or waiting to be closed):
    /// the port and who it waits for.
    fn parked_named(&self, name: &str) -> Option<(PortId, Vec<u32>)> {
        let held = self
            .lock()
            .iter()
            .find(|h| h.dev.as_ref().is_some_and(|d| d.name == name))
            .map(|h| (h.port, h.pids.clone()));
        held.or_else(|| {
            let c = self.closing.lock().unwrap_or_else(|e| e.into_inner());
            c.iter().find(|c| c.2.name == name).map(|c| (c.0, Vec::new()))
        })
    }

    /// Takes `pid` off the port's list; when nobody is left (the id can be reused), its parked
    /// handle, if any.
    fn released(&self, port: PortId, gen: u32, pid: u32) -> Option<Option<LocalPort>> {
        let mut g = self.lock();
        let Some(i) = g.iter().position(|h| h.port == port && h.gen == gen) else {
            // Not held yet (or not any more): kept for a hold that may follow.
            let mut e = self.early.lock().unwrap_or_else(|e| e.into_inner());
            if e.len() >= EARLY_MAX {
                e.remove(0);
            }
            e.push((port, gen, pid));
            return None;
        };
        g[i].pids.retain(|p| *p != pid);
        g[i].pids.is_empty().then(|| g.remove(i).dev)
    }

    /// Drops the processes that died; the ports nobody holds any more, with their parked handles.
    fn reclaim(&self) -> Vec<(PortId, Option<LocalPort>)> {
        let alive = |pid: u32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        let mut g = self.lock();
        let mut free = Vec::new();
        g.retain_mut(|h| {
            h.pids.retain(|p| alive(*p));
            if h.pids.is_empty() {
                free.push((h.port, h.dev.take()));
            }
            !h.pids.is_empty()
        });
        free
    }

    /// Every parked handle, held or let go (the primary shutting down).
    fn take_all(&self) -> Vec<LocalPort> {
        let mut v: Vec<LocalPort> = self.lock().iter_mut().filter_map(|h| h.dev.take()).collect();
        v.extend(self.closing.lock().unwrap_or_else(|e| e.into_inner()).drain(..).map(|c| c.2));
        v
    }

    /// The ports held, for `/lab/hotplug`: who each waits for, whether the primary's handle is
    /// parked with it.
    pub(crate) fn ports(&self) -> Vec<(PortId, Vec<u32>, bool)> {
        let mut v: Vec<_> = self.lock().iter().map(|h| (h.port, h.pids.clone(), h.dev.is_some())).collect();
        // Let go of, the handle not closed yet: the id is not free yet either.
        v.extend(self.closing.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|c| (c.0, Vec::new(), true)));
        v
    }
}

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
            let w = w.clone();
            // Inline: quick (no operation lock), and so taken before any later request of the
            // same secondary, which finds the id free.
            ch.register_action(A_RELEASED, Dispatch::Inline, move |_, req| {
                if let Some(inner) = w.upgrade() {
                    inner.handle_released(req);
                }
            })?;
        } else {
            on(A_ATTACH, Inner::handle_attach)?;
            on(A_ROLLBACK, Inner::handle_rollback)?;
            on(A_PREDETACH, Inner::handle_predetach)?;
            on(A_DETACH, Inner::handle_detach)?;
        }
        Ok(())
    }
}

/// A secondary tells the primary it released `port` of `gen` (one datagram): the primary may be
/// holding the id until it does.
pub(crate) fn say_released(inner: &Inner, port: PortId, gen: u32) {
    let _ = inner.rt.ipc().send(&Msg::new(A_RELEASED, encode_port(port, gen, "")));
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

    /// The socket of the secondary that asked (`exclude`), if it is still there.
    fn asker_path(&self, exclude: Option<&str>) -> Option<PathBuf> {
        let x = exclude?;
        self.rt.ipc().peers().into_iter().find(|p| p.file_name().is_some_and(|n| n == x))
    }

    /// Sends `step` to `to` and feeds the machine every answer: replies, deaths, peers gone
    /// before it reached them, then a timeout for the silent.
    fn broadcast(&self, m: &mut Machine, step: Step, to: &[PathBuf], payload: Vec<u8>, p: &mut Pending) {
        let r = match self.rt.ipc().request_to(to, &Msg::new(action_of(step), payload), self.timeout) {
            Ok(r) => r,
            Err(e) => return m.handle(Event::SendFailed(e.into())),
        };
        p.replies(step.name(), &r);
        if step == Step::Rollback && !r.missing.is_empty() {
            tracing::warn!(peers = ?r.missing, "rollback not confirmed (they undo it when their attach ends)");
        }
        let path = |name: &str| to.iter().find(|t| t.file_name().is_some_and(|n| n == name)).cloned();
        let mut heard: Vec<String> = Vec::with_capacity(to.len());
        for rep in &r.replies {
            let name = rep.peer.name();
            let t = String::from_utf8_lossy(&rep.msg.payload);
            let refused = t.strip_prefix("err:").map(str::to_string);
            if let Some(t) = path(&name) {
                m.handle(Event::Reply(t, refused));
            }
            heard.push(name);
        }
        for d in &r.dead {
            if let Some(t) = path(d) {
                m.handle(Event::Died(t));
            }
            heard.push(d.clone());
        }
        heard.extend(r.missing.iter().cloned());
        // A peer the step could not be sent to never got it: left pending, it counts as silent
        // below (not as gone), so a detach holds its id and an attach rolls back.
        heard.extend(r.unsent.iter().map(|(n, _)| n.clone()));
        for t in to {
            if !t.file_name().is_some_and(|n| heard.iter().any(|h| n == h.as_str())) {
                m.handle(Event::Gone(t.clone()));
            }
        }
        // Still collecting this step (not already on to the next): the rest are silent.
        if m.waiting_on().is_some_and(|(s, _)| s == step) {
            m.handle(Event::Timeout);
        }
    }

    /// The error a failed operation reports.
    fn error_of(&self, f: Failure<PathBuf, HotplugError>) -> HotplugError {
        if matches!(&f, Failure::Silent(ps) if ps.is_empty()) {
            // Unanswered: the primary may have died since (the watcher's flag comes within 200 ms).
            let pid = self.rt.shm().primary_pid();
            if let Some(gone) = self.primary_gone().or_else(|| {
                (!self.rt.is_primary() && !crate::sys::pid_alive(pid)).then_some(HotplugError::PrimaryGone { pid })
            }) {
                return gone;
            }
        }
        let name =
            |p: &PathBuf| process_name(&p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        match f {
            Failure::Local(e) => e,
            Failure::NotAttached => HotplugError::NotAttached,
            Failure::Refused(p, reason) => HotplugError::Refused { process: name(&p), reason },
            Failure::Died(p) => HotplugError::Refused { process: name(&p), reason: "died during the request".into() },
            Failure::Unconfirmed(e) => HotplugError::Unconfirmed(Box::new(e)),
            Failure::Silent(ps) if ps.is_empty() => HotplugError::Timeout {
                processes: "the primary".into(),
                timeout_ms: self.ask_wait().as_millis() as u64,
            },
            Failure::Silent(ps) => HotplugError::Timeout {
                processes: ps.iter().map(name).collect::<Vec<_>>().join(", "),
                timeout_ms: self.timeout.as_millis() as u64,
            },
        }
    }

    /// Attach from the primary, of a device parsed and resolved once by the caller; recorded
    /// with every process's answers. `deadline`: the asking secondary's, on the monotonic clock.
    pub(crate) fn attach_primary(
        &self,
        da: &Devargs,
        res: &Resolved,
        exclude: Option<&str>,
        deadline: Option<Duration>,
    ) -> Result<PortId, HotplugError> {
        let mut p = Pending::new("attach", da.raw(), exclude.map_or_else(|| "the primary".into(), process_name));
        let r = self.attach_primary_steps(da, res, exclude, deadline, &mut p);
        self.history.finish(p, r.as_ref().ok().copied(), &r);
        r
    }

    /// Carries out the primary's [`PrimaryOp`] for an attach.
    fn attach_primary_steps(
        &self,
        da: &Devargs,
        res: &Resolved,
        exclude: Option<&str>,
        deadline: Option<Duration>,
        p: &mut Pending,
    ) -> Result<PortId, HotplugError> {
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.close_parked();
        self.admit(deadline)?;
        let mut m = Machine::new(Kind::Attach, self.asker_path(exclude));
        let mut seq = SeqGuard(&self.table, false);
        let mut port: Option<(PortId, u32)> = None;
        while let Some(cmd) = m.poll() {
            // Reserve, the machine's first step after Begin, sets the port.
            let (pt, gen) = port.unwrap_or((PortId(0), 0));
            let ev = match cmd {
                Command::Done => break,
                Command::Send(step, to) => {
                    if step == Step::Rollback {
                        tracing::warn!(device = da.name(), "attach failed in a secondary: rolling back");
                    }
                    let text = if step == Step::Attach { da.raw() } else { "" };
                    self.broadcast(&mut m, step, &to, encode_port(pt, gen, text), p);
                    continue;
                }
                Command::Ask(_) => Event::Ok,
                Command::Do(a) => match a {
                    Action::Begin | Action::End => self.bracket(&mut seq, a),
                    Action::Reserve => match self.reclaimed_find(da.name()) {
                        Some(e) => {
                            port = Some((e.port, e.gen));
                            Event::No
                        }
                        None => match self.fault(FaultOp::Attach, da.name()).and_then(|_| {
                            if let Some((port, pids)) = self.held.parked_named(da.name()) {
                                return Err(HotplugError::StillHeld { name: da.name().to_string(), port, pids });
                            }
                            let owner = exclude.and_then(crate::ipc::pid_of).unwrap_or_else(std::process::id);
                            Ok(self.table.allocate(da.name(), res.driver.name(), da.raw(), owner)?)
                        }) {
                            Ok(pt) => {
                                port = Some((pt, self.table.entry(pt.0 as usize).map(|e| e.gen).unwrap_or(0)));
                                Event::Ok
                            }
                            Err(e) => Event::Failed(e),
                        },
                    },
                    Action::Probe => {
                        let probed = self.probe_local(pt, gen, da, res);
                        p.answer("the primary", "attach", &probed);
                        match probed {
                            Ok(info) => {
                                self.table.set_info(pt, &info);
                                Event::Ok
                            }
                            Err(e) => Event::Failed(e),
                        }
                    }
                    Action::Publish => {
                        self.table.set_state(pt, PortState::Attached);
                        tracing::info!(port = %pt, device = da.name(), "attached everywhere");
                        Event::Ok
                    }
                    Action::Release => {
                        self.release_local(pt, Release::Shared);
                        Event::Ok
                    }
                    Action::Free => {
                        self.table.set_state(pt, PortState::Unused);
                        Event::Ok
                    }
                    Action::Check | Action::Commit | Action::Recheck | Action::Resync => Event::Ok,
                },
            };
            m.handle(ev);
        }
        match m.into_result() {
            Some(Ok(())) => port.map(|(pt, _)| pt).ok_or(HotplugError::NotAttached),
            Some(Err(f)) => Err(self.error_of(f)),
            None => Err(HotplugError::BadAnswer("the attach did not finish".into())),
        }
    }

    /// Detach (or, `forced`, the undo of an attach) from the primary; recorded with every
    /// process's answers.
    pub(crate) fn detach_primary(
        &self,
        e: &PortEntry,
        forced: bool,
        exclude: Option<&str>,
        deadline: Option<Duration>,
    ) -> Result<(), HotplugError> {
        let op = if forced { "abort" } else { "detach" };
        let mut p = Pending::new(op, &e.name, exclude.map_or_else(|| "the primary".into(), process_name));
        let r = self.detach_primary_steps(e, forced, exclude, deadline, &mut p);
        self.history.finish(p, Some(e.port), &r);
        r
    }

    /// Carries out the primary's [`PrimaryOp`] for a detach.
    fn detach_primary_steps(
        &self,
        e: &PortEntry,
        forced: bool,
        exclude: Option<&str>,
        deadline: Option<Duration>,
        p: &mut Pending,
    ) -> Result<(), HotplugError> {
        let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.close_parked();
        self.admit(deadline)?;
        let kind = if forced { Kind::Forced } else { Kind::Detach };
        let mut m = Machine::new(kind, self.asker_path(exclude));
        let mut seq = SeqGuard(&self.table, false);
        // Some secondaries did not confirm: the id held for them (`Held`), freed when they let go.
        let mut held = false;
        while let Some(cmd) = m.poll() {
            let ev = match cmd {
                Command::Done => break,
                Command::Send(step, to) => {
                    // A detach step carries its deadline: a secondary that answers it late
                    // says so once it has released (`hp_released`).
                    let text = match step {
                        Step::Detach => (monotonic() + self.timeout).as_millis().to_string(),
                        _ => String::new(),
                    };
                    self.broadcast(&mut m, step, &to, encode_port(e.port, e.gen, &text), p);
                    continue;
                }
                Command::Ask(_) => Event::Ok,
                Command::Do(a) => match a {
                    Action::Begin | Action::End => self.bracket(&mut seq, a),
                    Action::Check => self.check_primary(e, forced),
                    Action::Commit => {
                        self.table.set_state(e.port, PortState::Detaching);
                        Event::Ok
                    }
                    Action::Release => {
                        if !forced {
                            if let Err(err) = self.fault(FaultOp::Detach, &e.name) {
                                tracing::warn!(device = %e.name, error = %err, "detach reported failure in the primary; releasing anyway");
                            }
                        }
                        if let Some(f) = m.take_detach_refusal() {
                            let err = self.error_of(f);
                            tracing::warn!(device = %e.name, error = %err, "a secondary reported a failed detach; its handle is released anyway");
                        }
                        // Forced too (a removed device, the undo of an attach): the primary gives
                        // back the device's shared state (the drivers skip the register writes of
                        // a device that is gone), so the id can be attached again. A secondary
                        // that did not confirm may still run the port: the id is held for it,
                        // and the primary's handle parked unless that one is the asker (`Held`).
                        let pids: Vec<u32> = m
                            .unconfirmed()
                            .iter()
                            .filter_map(|p| p.file_name().and_then(|n| crate::ipc::pid_of(&n.to_string_lossy())))
                            .collect();
                        let asker = exclude.and_then(crate::ipc::pid_of);
                        if pids.is_empty() {
                            self.release_local(e.port, Release::Shared);
                        } else if pids.iter().all(|p| Some(*p) == asker) {
                            // Only the asker, which stopped using the port before it asked and
                            // releases its handle on the answer: the id held, the handle closed.
                            held = self.held.hold(e.port, e.gen, pids, None).is_ok();
                            self.release_local(e.port, Release::Shared);
                        } else {
                            tracing::warn!(port = %e.port, device = %e.name, ?pids, "detached; the port id and the primary's handle are held until these processes release it");
                            // Out of the table first, then held and parked in one step.
                            let lp = self.ports.take(e.port);
                            match self.held.hold(e.port, e.gen, pids, lp) {
                                Ok(()) => held = true,
                                // Every one of them let go already.
                                Err(lp) => {
                                    if let Some(lp) = lp {
                                        lp.dev.close(Release::Shared);
                                    }
                                }
                            }
                        }
                        Event::Ok
                    }
                    Action::Free => {
                        if !held {
                            self.table.set_state(e.port, PortState::Unused);
                            tracing::info!(port = %e.port, device = %e.name, "detached everywhere");
                        }
                        Event::Ok
                    }
                    Action::Reserve | Action::Probe | Action::Publish | Action::Recheck | Action::Resync => Event::Ok,
                },
            };
            m.handle(ev);
        }
        match m.into_result() {
            Some(r) => r.map_err(|f| self.error_of(f)),
            None => Err(HotplugError::BadAnswer("the detach did not finish".into())),
        }
    }

    /// The primary's check before a detach: still the port asked for and attached, then (not
    /// forced) no lock here and no injected pre-detach fault.
    fn check_primary(&self, e: &PortEntry, forced: bool) -> Event<PathBuf, HotplugError> {
        let cur = self.table.entry(e.port.0 as usize).filter(|c| c.gen == e.gen && c.state == PortState::Attached);
        if cur.is_none() {
            return Event::No;
        }
        if forced {
            return Event::Ok;
        }
        let locks = self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.locks)).unwrap_or(0);
        if locks > 0 {
            return Event::Failed(HotplugError::Locked { port: e.port, process: "the primary".into() });
        }
        match self.fault(FaultOp::PreDetach, &e.name) {
            Ok(()) => Event::Ok,
            Err(err) => Event::Failed(err),
        }
    }

    /// Refuses a secondary's request that waited too long behind other operations to finish
    /// before its asker stops waiting ([`machine::admit`]).
    fn admit(&self, deadline: Option<Duration>) -> Result<(), HotplugError> {
        let Some(deadline) = deadline else { return Ok(()) };
        let left = deadline.saturating_sub(monotonic());
        let worst = self.worst_op();
        if machine::admit(left.as_millis() as u64, worst.as_millis() as u64) {
            return Ok(());
        }
        Err(HotplugError::Expired { left_ms: left.as_millis() as u64, need_ms: worst.as_millis() as u64 })
    }

    /// The longest an operation takes once started: two steps of the timeout, and local work.
    fn worst_op(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(2)
    }

    /// How long a secondary waits for the primary's answer: an operation started in time
    /// ([`Inner::admit`]) always ends before.
    fn ask_wait(&self) -> Duration {
        self.timeout * 4 + Duration::from_secs(2)
    }

    pub(crate) fn find_target(&self, target: &str) -> Result<PortEntry, HotplugError> {
        let t = target.trim();
        let attached = |e: &PortEntry| e.state == PortState::Attached;
        if let Ok(id) = t.parse::<u16>() {
            return self.table.entry(id as usize).filter(attached).ok_or(HotplugError::NotAttached);
        }
        // By name, the attached slot: an id held for a slow secondary after a detach keeps the
        // name too, and may come first.
        let by_name = |name: &str| self.table.entries().into_iter().find(|e| e.name == name && attached(e));
        if let Some(e) = by_name(t) {
            return Ok(e);
        }
        let da = Devargs::parse(t)?;
        by_name(da.name()).ok_or(HotplugError::NotAttached)
    }

    /// Asks the primary to run `op` on `arg` for everyone else; the answer, recorded in `p`, as
    /// the asker's machine takes it (no answer: a timeout; a channel failure: unsent).
    fn ask_primary(&self, op: Ask, arg: &str, p: &mut Pending) -> (Event<PathBuf, HotplugError>, String) {
        if let Some(gone) = self.primary_gone() {
            // Nothing asked. An undo that cannot be asked is unconfirmed: unanswered.
            let ev = match op {
                Ask::Abort => Event::Died(self.rt.ipc().socket_path().with_file_name(crate::ipc::PRIMARY_SOCKET)),
                Ask::Attach | Ask::Detach => Event::Failed(gone),
            };
            return (ev, String::new());
        }
        let me = self.rt.ipc().socket_path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let wait = self.ask_wait();
        let deadline = (monotonic() + wait).as_millis();
        let text = format!("{}\n{me}\n{arg}\n{deadline}", op.name());
        let asked: Result<String, HotplugError> =
            match self.rt.ipc().request_sync(&Msg::new(A_REQ, text.into_bytes()), wait) {
                Err(e) => Err(e.into()),
                Ok(r) => match r.replies.first() {
                    None => Err(HotplugError::Timeout {
                        processes: "the primary".into(),
                        timeout_ms: wait.as_millis() as u64,
                    }),
                    Some(rep) => {
                        let t = String::from_utf8_lossy(&rep.msg.payload).into_owned();
                        if let Some(ok) = t.strip_prefix("ok:") {
                            Ok(ok.to_string())
                        } else if let Some(err) = t.strip_prefix("err:") {
                            Err(if err == "not attached" {
                                HotplugError::NotAttached
                            } else {
                                HotplugError::Remote(err.to_string())
                            })
                        } else {
                            Err(HotplugError::BadAnswer(t))
                        }
                    }
                },
            };
        if op != Ask::Abort {
            p.answer("the primary", "request", &asked);
        }
        match asked {
            Ok(s) => (Event::Ok, s),
            Err(HotplugError::Timeout { .. }) => (Event::Timeout, String::new()),
            Err(e @ HotplugError::Ipc(_)) => (Event::SendFailed(e), String::new()),
            Err(e) => (Event::Failed(e), String::new()),
        }
    }

    // --- handlers (run on IPC workers) ---

    fn handle_req(&self, req: &Request) -> Result<String, HotplugError> {
        let t =
            std::str::from_utf8(&req.msg.payload).map_err(|_| HotplugError::BadAnswer("request not UTF-8".into()))?;
        let mut it = t.splitn(4, '\n');
        let (Some(op), Some(asker), Some(arg)) = (it.next(), it.next(), it.next()) else {
            return Err(HotplugError::BadAnswer("malformed hotplug request".into()));
        };
        let deadline = match it.next().map(str::parse::<u64>) {
            None => None,
            Some(Ok(ms)) => Some(Duration::from_millis(ms)),
            Some(Err(_)) => return Err(HotplugError::BadAnswer("malformed hotplug request deadline".into())),
        };
        // The asking secondary does its own part after this answer; everyone else is told here.
        let asker = Some(asker).filter(|a| a.starts_with("mp_socket_"));
        match op {
            "attach" => {
                let da = Devargs::parse(arg)?;
                let res = self.resolve(&da)?;
                let port = self.attach_primary(&da, &res, asker, deadline)?;
                let e = self.table.entry(port.0 as usize).ok_or(HotplugError::NotAttached)?;
                Ok(format!("{}:{}:{}", port.0, e.gen, e.devargs))
            }
            "detach" | "abort" => {
                let e = self.find_target(arg)?;
                self.detach_primary(&e, op == "abort", asker, deadline)?;
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

    /// Carries out the secondary's [`AskerOp`] for an attach.
    fn attach_from_secondary_steps(
        &self,
        da: &Devargs,
        res: &Resolved,
        p: &mut Pending,
    ) -> Result<PortId, HotplugError> {
        let mut m = AskerMachine::new(Ask::Attach);
        let mut granted: Option<(PortId, u32, String)> = None;
        let mut lock = None;
        // An injected failure between the primary's yes and this process's own part.
        let mut asked_failed = None;
        while let Some(cmd) = m.poll() {
            let ev = match (cmd, &granted) {
                (Command::Done, _) => break,
                (Command::Ask(Ask::Attach), _) => {
                    let (ev, ans) = self.ask_primary(Ask::Attach, da.raw(), p);
                    if !matches!(ev, Event::Ok) {
                        ev
                    } else {
                        let mut f = ans.splitn(3, ':');
                        match (f.next().map(str::parse::<u16>), f.next().map(str::parse::<u32>), f.next()) {
                            (Some(Ok(pt)), Some(Ok(g)), Some(d)) if (pt as usize) < MAX_PORTS => {
                                granted = Some((PortId(pt), g, d.to_string()));
                                Event::Ok
                            }
                            _ => Event::Failed(HotplugError::BadAnswer(ans)),
                        }
                    }
                }
                (Command::Do(Action::Probe), Some((port, gen, devargs))) => {
                    // Under the lock taken by Recheck: no step of a later operation between.
                    let have = self.ports.slot(*port).and_then(|s| s.as_ref().map(|l| l.gen));
                    let local = if let Some(e) = asked_failed.take() {
                        Err(e)
                    } else if have == Some(*gen) {
                        Ok(())
                    } else {
                        if have.is_some() {
                            self.release_local(*port, Release::Local);
                        }
                        // The primary answers with the devargs it stored; when they are what this
                        // process parsed, its own parse and resolve are used as they are.
                        self.fault(FaultOp::Attach, da.name()).and_then(|_| {
                            if devargs == da.raw() {
                                self.probe_local(*port, *gen, da, res).map(drop)
                            } else {
                                self.probe_devargs(*port, *gen, devargs).map(drop)
                            }
                        })
                    };
                    lock = None;
                    match local {
                        Ok(()) => Event::Ok,
                        Err(err) => {
                            tracing::warn!(device = da.name(), error = %err, "local attach failed: undoing it everywhere");
                            Event::Failed(err)
                        }
                    }
                }
                (Command::Ask(Ask::Abort), Some((port, _, _))) => {
                    let (ev, _) = self.ask_primary(Ask::Abort, &port.0.to_string(), p);
                    if let Event::Failed(e) | Event::SendFailed(e) = &ev {
                        tracing::warn!(device = da.name(), error = %e, "undo of the attach failed");
                    }
                    ev
                }
                (Command::Do(Action::Recheck), Some((port, gen, _))) => {
                    if let Err(e) = self.fault(FaultOp::Asked, da.name()) {
                        asked_failed = Some(e);
                    }
                    lock = Some(self.op_lock.lock().unwrap_or_else(|e| e.into_inner()));
                    let still = self
                        .table
                        .entry(port.0 as usize)
                        .is_some_and(|e| e.gen == *gen && e.state == PortState::Attached);
                    if still {
                        Event::Ok
                    } else {
                        lock = None;
                        Event::No
                    }
                }
                (Command::Do(Action::Resync), _) => {
                    lock = None;
                    tracing::warn!(device = da.name(), "no answer from the primary: following the port table");
                    self.sync_from_table();
                    Event::Ok
                }
                _ => Event::Failed(HotplugError::BadAnswer("no port granted".into())),
            };
            m.handle(ev);
        }
        drop(lock);
        match m.into_result() {
            Some(Ok(())) => granted.map(|(pt, _, _)| pt).ok_or(HotplugError::NotAttached),
            Some(Err(f)) => Err(self.error_of(f)),
            None => Err(HotplugError::BadAnswer("the attach did not finish".into())),
        }
    }

    /// Detach asked by this secondary: its own pre-detach check first (a lock here vetoes), then
    /// the primary runs the protocol for everyone else, then this process drops its handle.
    pub(crate) fn detach_from_secondary(&self, e: &PortEntry) -> Result<(), HotplugError> {
        let mut p = Pending::new("detach", &e.name, "this process".into());
        let r = self.detach_from_secondary_steps(e, &mut p);
        self.history.finish(p, Some(e.port), &r);
        r
    }

    /// Carries out the secondary's [`AskerOp`] for a detach.
    fn detach_from_secondary_steps(&self, e: &PortEntry, p: &mut Pending) -> Result<(), HotplugError> {
        let mut m = AskerMachine::new(Ask::Detach);
        while let Some(cmd) = m.poll() {
            let ev = match cmd {
                Command::Done => break,
                Command::Ask(a) => self.ask_primary(a, &e.port.0.to_string(), p).0,
                Command::Do(Action::Check) => {
                    let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
                    let locks = self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.locks)).unwrap_or(0);
                    if locks > 0 {
                        Event::Failed(HotplugError::Locked { port: e.port, process: "this process".into() })
                    } else {
                        match self.fault(FaultOp::PreDetach, &e.name) {
                            Ok(()) => Event::Ok,
                            Err(err) => Event::Failed(err),
                        }
                    }
                }
                Command::Do(Action::Recheck) => {
                    // No yes from the primary, but the table says the detach went ahead (the
                    // primary died after telling the others): this process follows them rather
                    // than keep a port nobody else has.
                    let gone = self
                        .table
                        .entry(e.port.0 as usize)
                        .is_none_or(|c| c.gen != e.gen || c.state != PortState::Attached);
                    if gone {
                        tracing::warn!(device = %e.name, "no yes from the primary, but the detach went ahead");
                        Event::No
                    } else {
                        Event::Ok
                    }
                }
                Command::Do(Action::Release) => {
                    let _g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(err) = self.fault(FaultOp::Detach, &e.name) {
                        tracing::warn!(device = %e.name, error = %err, "detach reported failure here; releasing anyway");
                    }
                    if self.ports.slot(e.port).and_then(|s| s.as_ref().map(|l| l.gen)) == Some(e.gen) {
                        self.release_local(e.port, Release::Local);
                    }
                    // The primary holds the id until this process says it let go: one datagram,
                    // ahead of any later request of ours (the primary takes it on its receive thread).
                    say_released(self, e.port, e.gen);
                    Event::Ok
                }
                Command::Do(_) | Command::Send(..) => Event::Ok,
            };
            m.handle(ev);
        }
        match m.into_result() {
            Some(r) => r.map_err(|f| self.error_of(f)),
            None => Err(HotplugError::BadAnswer("the detach did not finish".into())),
        }
    }

    /// This process's handle of `port`: its generation.
    fn local_of(&self, port: PortId) -> Local {
        Local { have: self.ports.slot(port).and_then(|s| s.as_ref().map(|l| l.gen)) }
    }

    /// A secondary whose primary is gone (its watcher said so): its error. A flag, no syscall:
    /// read before every request.
    fn primary_gone(&self) -> Option<HotplugError> {
        let pid = self.rt.shm().primary_pid();
        let gone = !self.rt.is_primary() && self.orphaned.load(Ordering::Acquire);
        gone.then_some(HotplugError::PrimaryGone { pid })
    }

    /// The operation lock for a step the primary told; refused once the primary is gone.
    fn step_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, HotplugError> {
        let g = self.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.orphaned.load(Ordering::Acquire) {
            true => Err(HotplugError::PrimaryGone { pid: self.rt.shm().primary_pid() }),
            false => Ok(g),
        }
    }

    fn handle_attach(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, gen, devargs) = decode_port(&req.msg.payload)?;
        let _g = self.step_lock()?;
        match answer(Step::Attach, self.local_of(port), gen) {
            Plan::Probe { release_first } => {
                let da = Devargs::parse(&devargs)?;
                self.fault(FaultOp::Attach, da.name())?;
                let res = self.resolve(&da)?;
                if release_first {
                    self.release_local(port, Release::Local);
                }
                self.probe_local(port, gen, &da, &res)?;
            }
            Plan::Nothing | Plan::Release | Plan::Check => {}
        }
        Ok(String::new())
    }

    fn handle_rollback(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, gen, _) = decode_port(&req.msg.payload)?;
        let _g = self.step_lock()?;
        if answer(Step::Rollback, self.local_of(port), gen) == Plan::Release {
            self.release_local(port, Release::Local);
        }
        Ok(String::new())
    }

    fn handle_predetach(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, gen, _) = decode_port(&req.msg.payload)?;
        let _g = self.step_lock()?;
        if answer(Step::PreDetach, self.local_of(port), gen) != Plan::Check {
            return Ok(String::new());
        }
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

    /// The primary: a secondary released a port it answered late, or whose detach it asked; the
    /// id is free once nobody holds it. Runs on the receive thread, without the operation lock:
    /// it only moves a held slot (Detaching, no handle anywhere) to Unused under the table's lock,
    /// which no snapshot of attached ports sees; a parked handle goes to a closer instead.
    fn handle_released(self: &Arc<Self>, req: &Request) {
        let (Ok((port, gen, _)), Some(pid)) = (decode_port(&req.msg.payload), req.peer.pid()) else { return };
        match self.held.released(port, gen, pid) {
            None => {}
            Some(None) => self.free_held(port, gen),
            Some(Some(lp)) => {
                // Closed under the operation lock, off this thread: by a closer, or by the next
                // operation first, whichever takes the lock first; the id is free after.
                self.held.closing.lock().unwrap_or_else(|e| e.into_inner()).push((port, gen, lp));
                let me = Arc::downgrade(self);
                let closer = std::thread::Builder::new().name("hp-close".into()).spawn(move || {
                    if let Some(inner) = me.upgrade() {
                        let _g = inner.op_lock.lock().unwrap_or_else(|e| e.into_inner());
                        inner.close_parked();
                    }
                });
                if closer.is_err() {
                    tracing::warn!(port = %port, "no closer thread: the parked handle closes at the next operation");
                }
            }
        }
    }

    /// The attached entry of `name`, once the held ports of dead processes are freed.
    fn reclaimed_find(&self, name: &str) -> Option<PortEntry> {
        self.reclaim();
        self.table.entries().into_iter().find(|e| e.name == name && e.state == PortState::Attached)
    }

    /// Held ports whose late processes have died, freed.
    fn reclaim(&self) {
        for (port, dev) in self.held.reclaim() {
            let gen = self.table.entry(port.0 as usize).map(|e| e.gen).unwrap_or(0);
            if let Some(lp) = dev {
                lp.dev.close(Release::Shared);
            }
            self.free_held(port, gen);
        }
    }

    /// Closes the parked handles every holder let go of, then frees their ids. Under the
    /// operation lock (see [`Held`]).
    fn close_parked(&self) {
        let ready: Vec<_> = std::mem::take(&mut *self.held.closing.lock().unwrap_or_else(|e| e.into_inner()));
        for (port, gen, lp) in ready {
            lp.dev.close(Release::Shared);
            self.free_held(port, gen);
            tracing::info!(port = %port, "the parked handle of a held port closed");
        }
    }

    /// The primary shutting down: every parked handle closed.
    pub(crate) fn close_all_parked(&self) {
        for lp in self.held.take_all() {
            lp.dev.close(Release::Shared);
        }
    }

    fn free_held(&self, port: PortId, gen: u32) {
        if self.table.entry(port.0 as usize).is_some_and(|e| e.gen == gen && e.state == PortState::Detaching) {
            self.table.set_state(port, PortState::Unused);
            tracing::info!(port = %port, "released by every process: the port id is free");
        }
    }

    fn handle_detach(&self, req: &Request) -> Result<String, HotplugError> {
        let (port, gen, deadline) = decode_port(&req.msg.payload)?;
        let r = self.handle_detach_step(port, gen);
        let late =
            deadline.parse::<u64>().is_ok_and(|d| (monotonic() + Duration::from_millis(100)).as_millis() as u64 >= d);
        if late {
            // Answered too late for the primary's wait: it holds the id until this says so.
            say_released(self, port, gen);
        }
        r
    }

    fn handle_detach_step(&self, port: PortId, gen: u32) -> Result<String, HotplugError> {
        let _g = self.step_lock()?;
        if answer(Step::Detach, self.local_of(port), gen) != Plan::Release {
            return Ok(String::new());
        }
        let name = self.ports.slot(port).and_then(|s| s.as_ref().map(|l| l.name.clone()));
        let fault = match &name {
            Some(n) => self.fault(FaultOp::Detach, n),
            None => Ok(()),
        };
        self.release_local(port, Release::Local);
        fault.map(|_| String::new())
    }
}

/// The primary's machine in a process: peers by socket path, errors as [`HotplugError`].
type Machine = PrimaryOp<PathBuf, HotplugError>;
/// A secondary's machine for its own requests.
type AskerMachine = AskerOp<PathBuf, HotplugError>;

/// The table's sequence counter, odd while an operation runs: flipped by the machine's Begin and
/// End, and back to even however the operation leaves.
struct SeqGuard<'a>(&'a PortTable, bool);

impl Inner {
    /// An operation's Begin (the sequence odd; the secondaries there are now, who are told) or
    /// End (even again).
    fn bracket(&self, seq: &mut SeqGuard<'_>, a: Action) -> Event<PathBuf, HotplugError> {
        seq.flip();
        match a {
            Action::Begin => Event::Peers(self.rt.ipc().peers()),
            _ => Event::Ok,
        }
    }
}

impl SeqGuard<'_> {
    fn flip(&mut self) {
        self.0.bump_seq();
        self.1 = !self.1;
    }
}

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.bump_seq();
        }
    }
}

/// The monotonic clock, the same in every process of the machine: a request's deadline.
fn monotonic() -> Duration {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// The IPC action of a step the primary tells.
fn action_of(step: Step) -> &'static str {
    match step {
        Step::Attach => A_ATTACH,
        Step::Rollback => A_ROLLBACK,
        Step::PreDetach => A_PREDETACH,
        Step::Detach => A_DETACH,
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
