//! The hotplug protocol model-checked: `lab_core::hotplug::machine`, the state machines every
//! lab process runs, wired to a network of processes and checked with stateright over every
//! interleaving of a bounded lab.
//!
//! What the model owns (the rest is the real code):
//! * **Processes**: a primary and up to three secondaries, some started late. Each holds its
//!   handles (port -> device and generation) and its locks; the primary runs one operation at a
//!   time from its queue, as its operation lock makes it; a secondary answers the primary's
//!   steps one at a time, in order, and runs at most one request of its own.
//! * **The port table** in shared memory: slots with device, generation and state, and the
//!   sequence counter that is odd while an operation runs.
//! * **The network**: AF_UNIX datagrams between processes of one machine, which the kernel
//!   neither loses nor reorders between one sender and one receiver socket; the model delivers
//!   the messages of different pairs in any order and at any time (a slow peer is a late
//!   delivery), and drops what is sent to a dead process.
//! * **Faults**: a local step (the attach in a process, a pre-detach check) fails; a step's
//!   timer fires whenever answers are still missing (a reply after its timeout is dropped); a
//!   process crashes at any step, the primary included; a question to the primary times out
//!   while it waits in the queue or when the primary is dead.
//!
//! The effects of the machines' actions (what Reserve, Probe, Release... do to the table and the
//! handles) are written here a second time from `hotplug.rs`: they are one line each there.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use lab_core::hotplug::machine::{
    admit, answer, Action, Ask, AskerOp, Command, Event, Failure, Kind, Local, Plan, PrimaryOp, Step,
};
use stateright::{Checker, Model, Path, Property};

/// A process: 0 the primary, 1.. the secondaries.
pub type Pid = u8;
/// A port id.
pub type Port = u8;
/// A device: 0 `net_null0`, 1 `net_null1`...
pub type Dev = u8;

/// A local error in the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Error {
    /// An injected failure of a local step.
    Fault,
    /// A locked port vetoed.
    Locked,
    /// Not attached.
    NotAttached,
    /// No free port id.
    Full,
    /// The request waited too long in the primary's queue.
    Expired,
    /// The primary failed the operation for the asker (its error, as text on the wire).
    Remote,
}

/// What a test or the command line asks the model to explore.
#[derive(Clone, Debug)]
pub struct Config {
    /// Secondaries (1..=3).
    pub secondaries: u8,
    /// Secondaries that start late (by index 1..), while operations may be under way.
    pub late: Vec<Pid>,
    /// Port ids in the table.
    pub ports: u8,
    /// Devices attached at start (by the primary, before any secondary runs).
    pub attached: Vec<Dev>,
    /// The operations, each asked once by its process at any moment: (process, op, device).
    pub ops: Vec<(Pid, Op)>,
    /// Failures of local steps allowed in one run.
    pub fails: u8,
    /// Crashes allowed in one run.
    pub crashes: u8,
    /// Steps the primary may fail to send to a live secondary (its queue full past the send
    /// timeout: it never gets the step; the primary counts it silent). With them, secondaries
    /// heal: they release handles the table no longer lists, as the driver's watcher does.
    pub losses: u8,
    /// Whether the primary may be the one that crashes.
    pub primary_crash: bool,
    /// Lock and unlock toggles allowed in one run (of the port of device 0).
    pub lock_toggles: u8,
    /// Step timers may fire (a silent peer).
    pub timeouts: bool,
    /// The search depth.
    pub depth: usize,
    /// A safeguard left out, to show what it prevents (the checker must find it).
    pub without: Option<Safeguard>,
}

/// A safeguard of the protocol that a run may leave out. Each one is there because the checker
/// found what goes wrong without it; a run without it must find that again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Safeguard {
    /// A step for an older generation than the handle a secondary holds changes nothing
    /// ([`answer`]'s rule): without it, a slow secondary's stale attach or detach step of an
    /// operation that timed out overrides the newer port.
    Generations,
    /// A port id whose detach a slow secondary did not confirm stays out of use until it says it
    /// released it: without it, the id names a new device while that secondary holds the old.
    Quarantine,
    /// A secondary's request that waited past its asker's deadline is refused unstarted
    /// ([`admit`]): without it, the primary does it after the asker gave up.
    Deadline,
    /// A secondary releases the handles the table no longer lists: without it, a rollback or
    /// detach step the primary could not send leaves a secondary with a port nobody else has.
    Heal,
}

impl Safeguard {
    /// By name: `generations`, `quarantine`, `deadline`, `heal`.
    pub fn parse(s: &str) -> Option<Safeguard> {
        match s {
            "generations" => Some(Safeguard::Generations),
            "quarantine" => Some(Safeguard::Quarantine),
            "deadline" => Some(Safeguard::Deadline),
            "heal" => Some(Safeguard::Heal),
            _ => None,
        }
    }
}

/// An operation a process asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Attach the device.
    Attach(Dev),
    /// Detach the device's port.
    Detach(Dev),
}

/// A port's table slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The device (meaningful when not Unused).
    pub dev: Dev,
    /// The generation of the last reservation.
    pub gen: u32,
    /// Its state.
    pub state: SlotState,
}

/// A slot's state, as `PortState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Free.
    Unused,
    /// Reserved by an attach under way.
    Attaching,
    /// Attached.
    Attached,
    /// Being detached.
    Detaching,
}

/// A message between processes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    /// The primary tells a secondary a step of operation `op`.
    Tell { op: u32, step: Step, port: Port, gen: u32, dev: Dev },
    /// The secondary's answer to a step.
    Told { op: u32, step: Step, refused: Option<Error> },
    /// A secondary asks the primary.
    Req { id: u32, ask: Ask, target: u8 },
    /// The primary's answer: the port and generation granted, or its error.
    Answer { id: u32, result: Result<(Port, u32), Error> },
    /// A secondary released a port whose detach step it answered late.
    Released { port: Port, gen: u32 },
}

/// Which socket of the receiver a message goes to: its IPC socket (requests, steps) or the
/// reply socket of the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chan {
    /// The receiver's IPC socket.
    Mp,
    /// The reply socket of the receiver's request.
    Reply,
}

type PMachine = PrimaryOp<Pid, Error>;
type AMachine = AskerOp<Pid, Error>;

/// The primary's operation under way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Running {
    /// The machine.
    pub m: PMachine,
    /// The operation's number (answers to other numbers are late and dropped).
    pub op: u32,
    /// Who asked: `None` the primary itself, else the secondary and its request id.
    pub from: Option<(Pid, u32)>,
    /// The device.
    pub dev: Dev,
    /// The port and generation, once known.
    pub port: Option<(Port, u32)>,
    /// The operation's record, if someone still waits for it.
    pub rec: Option<usize>,
}

/// A secondary's own request under way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Asking {
    /// The machine.
    pub m: AMachine,
    /// The request id.
    pub id: u32,
    /// The device.
    pub dev: Dev,
    /// The port and generation: granted by the primary (attach) or looked up (detach).
    pub port: Option<(Port, u32)>,
    /// The operation's record.
    pub rec: usize,
}

/// One process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    /// Alive.
    pub alive: bool,
    /// Started (its socket exists: steps reach it).
    pub started: bool,
    /// Synchronised from the table after starting (late secondaries).
    pub synced: bool,
    /// Noticed that the primary died and followed the table.
    pub orphaned: bool,
    /// Handles: port -> (device, generation).
    pub ports: BTreeMap<Port, (Dev, u32)>,
    /// Locked ports.
    pub locks: BTreeSet<Port>,
    /// The primary's queue of requests: (from, request id, ask, target, the record of the
    /// primary's own).
    pub queue: VecDeque<(Pid, u32, Ask, u8, usize)>,
    /// The primary's operation under way.
    pub running: Option<Running>,
    /// A secondary's request under way.
    pub asking: Option<Asking>,
    /// The secondary's own request holds its operation lock (from Recheck to Probe): the
    /// primary's steps wait.
    pub holding: bool,
}

/// A record of one operation, for the properties.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// Who asked.
    pub by: Pid,
    /// What.
    pub op: Op,
    /// The reservation of an attach (port, generation), once made.
    pub reserved: Option<(Port, u32)>,
    /// The outcome, once reported.
    pub ok: Option<bool>,
    /// Reported failed without an answer from the primary: the outcome is unknown to the
    /// asker, which follows the table instead.
    pub unknown: bool,
}

/// The whole lab.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Processes.
    pub procs: Vec<Proc>,
    /// The port table.
    pub table: Vec<Slot>,
    /// The sequence counter is odd.
    pub seq_odd: bool,
    /// The next generation.
    pub next_gen: u32,
    /// The next operation number and request id.
    pub next_id: u32,
    /// Messages in flight, per (sender, receiver, socket), in order.
    pub net: BTreeMap<(Pid, Pid, Chan), VecDeque<Msg>>,
    /// Operations not asked yet: (process, op).
    pub todo: Vec<(Pid, Op)>,
    /// Requests whose asker stopped waiting.
    pub expired: BTreeSet<u32>,
    /// Port ids held out of use: generation and the processes that did not confirm.
    pub held: BTreeMap<Port, (u32, BTreeSet<Pid>)>,
    /// Every operation asked.
    pub records: Vec<Record>,
    /// A success reported while not done in every live process (property b), as text.
    pub bad_success: Option<String>,
    /// Budgets.
    pub fails: u8,
    /// Crashes left.
    pub crashes: u8,
    /// Refused sends left.
    pub losses: u8,
    /// Secondaries heal (the run has refused sends).
    pub heal: bool,
    /// Lock toggles left.
    pub locks: u8,
}

/// A step of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// A process asks for one of its operations.
    Start(Pid, Op),
    /// The primary takes the next request of its queue.
    Take,
    /// The local action a machine waits for, done (`fail`: it fails).
    Local(Pid, bool),
    /// The first message from `from` to `to` on `chan` is delivered (`fail`: the receiver's
    /// local step for it fails).
    Deliver(Pid, Pid, Chan, bool),
    /// The primary's step timer fires.
    StepTimeout,
    /// A secondary stops waiting for the primary's answer.
    AskTimeout(Pid),
    /// A process dies.
    Crash(Pid),
    /// A late secondary starts (its socket appears).
    Join(Pid),
    /// A started secondary reads the table (consistent snapshot, or the primary is dead).
    Sync(Pid),
    /// A secondary notices the primary is dead and follows the table.
    Orphan(Pid),
    /// A process toggles the lock of its handle of device 0's port.
    Lock(Pid),
    /// The primary's send of the first step queued to this secondary is refused: it never
    /// gets it.
    Refuse(Pid),
    /// A secondary releases the handles the table no longer lists, and says so.
    Heal(Pid),
}

/// The model.
#[derive(Clone, Debug)]
pub struct Lab {
    /// What is explored.
    pub cfg: Config,
}

const P: Pid = 0;

impl State {
    fn live(&self, p: Pid) -> bool {
        self.procs[p as usize].alive
    }

    fn send(&mut self, from: Pid, to: Pid, chan: Chan, m: Msg) {
        if self.live(to) {
            self.net.entry((from, to, chan)).or_default().push_back(m);
        }
    }

    /// The port of `dev` in the table, once held ports of processes that died are free.
    fn reclaimed_attached_of(&mut self, dev: Dev) -> Option<(Port, u32)> {
        let alive: Vec<bool> = self.procs.iter().map(|p| p.alive).collect();
        let dead: Vec<Port> = self
            .held
            .iter_mut()
            .filter_map(|(pt, (_, w))| {
                w.retain(|q| alive[*q as usize]);
                w.is_empty().then_some(*pt)
            })
            .collect();
        for pt in dead {
            self.held.remove(&pt);
            self.table[pt as usize].state = SlotState::Unused;
        }
        self.attached_of(dev)
    }

    fn attached_of(&self, dev: Dev) -> Option<(Port, u32)> {
        self.table
            .iter()
            .enumerate()
            .find(|(_, s)| s.state == SlotState::Attached && s.dev == dev)
            .map(|(i, s)| (i as Port, s.gen))
    }

    /// The secondaries whose sockets exist: started and alive (a dead one's socket is removed).
    fn peers(&self) -> Vec<Pid> {
        (1..self.procs.len() as Pid).filter(|p| self.procs[*p as usize].started && self.live(*p)).collect()
    }

    /// The table's attached ports.
    fn want(&self) -> BTreeMap<Port, (Dev, u32)> {
        self.table
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SlotState::Attached)
            .map(|(i, s)| (i as Port, (s.dev, s.gen)))
            .collect()
    }

    /// Follows the table (`sync_from_table`): attach what it has, release what it does not.
    fn resync(&mut self, p: Pid) {
        let want = self.want();
        let pr = &mut self.procs[p as usize];
        pr.ports = want;
        pr.locks.retain(|l| pr.ports.contains_key(l));
    }

    /// A live secondary's handles that the table does not list as attached with their
    /// generation (when no operation runs): what its heal releases.
    pub fn leftovers(&self, p: Pid) -> Vec<(Port, u32)> {
        let pr = &self.procs[p as usize];
        if p == P || !pr.alive || !pr.started || !pr.synced || pr.holding || self.seq_odd {
            return Vec::new();
        }
        pr.ports
            .iter()
            .filter(|(pt, (_, g))| {
                let sl = self.table[**pt as usize];
                !(sl.gen == *g && sl.state == SlotState::Attached)
            })
            .map(|(pt, (_, g))| (*pt, *g))
            .collect()
    }

    /// No operation in flight anywhere, nothing left to deliver, and (when secondaries heal)
    /// nothing left to heal.
    pub fn quiescent(&self) -> bool {
        if self.heal && (1..self.procs.len() as Pid).any(|p| !self.leftovers(p).is_empty()) {
            return false;
        }
        let primary_alive = self.live(P);
        self.procs.iter().enumerate().all(|(i, pr)| {
            !pr.alive
                || !pr.started
                || (pr.running.is_none()
                    && pr.queue.is_empty()
                    && pr.asking.is_none()
                    && (!pr.started || pr.synced)
                    && (i == 0 || primary_alive || pr.orphaned))
        }) && self.net.values().all(|q| q.is_empty())
            && self.todo.iter().all(|(p, _)| !self.live(*p))
    }
}

impl Lab {
    /// The model for `cfg`.
    pub fn new(cfg: Config) -> Lab {
        Lab { cfg }
    }

    fn init(&self) -> State {
        let n = 1 + self.cfg.secondaries as usize;
        let mut table = vec![Slot { dev: 0, gen: 0, state: SlotState::Unused }; self.cfg.ports as usize];
        let mut ports = BTreeMap::new();
        let mut next_gen = 1;
        for (i, d) in self.cfg.attached.iter().enumerate() {
            table[i] = Slot { dev: *d, gen: next_gen, state: SlotState::Attached };
            ports.insert(i as Port, (*d, next_gen));
            next_gen += 1;
        }
        let procs = (0..n)
            .map(|i| {
                let late = self.cfg.late.contains(&(i as Pid));
                Proc {
                    alive: true,
                    started: !late,
                    synced: !late,
                    orphaned: false,
                    ports: if late { BTreeMap::new() } else { ports.clone() },
                    locks: BTreeSet::new(),
                    queue: VecDeque::new(),
                    running: None,
                    asking: None,
                    holding: false,
                }
            })
            .collect();
        State {
            procs,
            table,
            seq_odd: false,
            next_gen,
            next_id: 1,
            net: BTreeMap::new(),
            todo: self.cfg.ops.clone(),
            expired: BTreeSet::new(),
            held: BTreeMap::new(),
            records: Vec::new(),
            bad_success: None,
            fails: self.cfg.fails,
            crashes: self.cfg.crashes,
            losses: self.cfg.losses,
            heal: self.cfg.losses > 0 && self.cfg.without != Some(Safeguard::Heal),
            locks: self.cfg.lock_toggles,
        }
    }

    /// Carries the primary's machine forward to its next wait, doing its sends.
    fn advance_primary(&self, s: &mut State) {
        loop {
            let Some(run) = s.procs[0].running.as_mut() else { return };
            let Some(cmd) = run.m.poll() else { return };
            match cmd {
                Command::Do(_) => return,
                Command::Ask(_) => return,
                Command::Send(step, to) => {
                    let (op, dev) = (run.op, run.dev);
                    let (port, gen) = run.port.unwrap_or((0, 0));
                    for t in to {
                        if s.live(t) {
                            s.send(P, t, Chan::Mp, Msg::Tell { op, step, port, gen, dev });
                        } else if let Some(r) = s.procs[0].running.as_mut() {
                            r.m.handle(Event::Gone(t));
                        }
                    }
                }
                Command::Done => {
                    let run = s.procs[0].running.take().expect("running");
                    let ok = matches!(run.m.result(), Some(Ok(())));
                    let result = match run.m.into_result() {
                        Some(Ok(())) => run.port.ok_or(Error::NotAttached),
                        Some(Err(f)) => Err(error_of(f)),
                        None => Err(Error::Remote),
                    };
                    match run.from {
                        None => {
                            if let Some(rec) = run.rec {
                                self.report(s, rec, ok);
                            }
                        }
                        Some((asker, id)) => s.send(P, asker, Chan::Reply, Msg::Answer { id, result }),
                    }
                }
            }
        }
    }

    /// Carries a secondary's machine forward to its next wait.
    fn advance_asker(&self, s: &mut State, p: Pid) {
        loop {
            let Some(a) = s.procs[p as usize].asking.as_mut() else { return };
            let Some(cmd) = a.m.poll() else { return };
            match cmd {
                Command::Do(_) | Command::Send(..) => return,
                Command::Ask(ask) => {
                    let id = s.next_id;
                    s.next_id += 1;
                    a.id = id;
                    let target = match ask {
                        Ask::Attach => a.dev,
                        Ask::Detach | Ask::Abort => a.port.map(|x| x.0).unwrap_or(0),
                    };
                    if s.live(P) {
                        s.send(p, P, Chan::Mp, Msg::Req { id, ask, target });
                    }
                    return;
                }
                Command::Done => {
                    let a = s.procs[p as usize].asking.take().expect("asking");
                    let ok = matches!(a.m.result(), Some(Ok(())));
                    s.records[a.rec].unknown =
                        matches!(a.m.result(), Some(Err(Failure::Silent(_) | Failure::Unconfirmed(_))));
                    self.report(s, a.rec, ok);
                }
            }
        }
    }

    /// Files an outcome; a success must be done in every live, synced process (property b), unless
    /// the table already shows a later operation on the port.
    fn report(&self, s: &mut State, rec: usize, ok: bool) {
        s.records[rec].ok = Some(ok);
        if !ok || s.bad_success.is_some() {
            return;
        }
        let r = s.records[rec].clone();
        // Every live process but those with a request of their own under way (an asker does its
        // part after the primary's answer).
        let holders: Vec<Pid> = (0..s.procs.len() as Pid)
            .filter(|q| {
                let pr = &s.procs[*q as usize];
                pr.alive && pr.synced && !pr.orphaned && pr.asking.is_none()
            })
            .collect();
        match r.op {
            Op::Attach(d) => {
                let Some((port, gen)) = s.attached_of(d) else { return };
                if s.procs[P as usize].alive {
                    if let Some(q) = holders.iter().find(|q| s.procs[**q as usize].ports.get(&port) != Some(&(d, gen)))
                    {
                        s.bad_success =
                            Some(format!("attach of d{d} by {} reported done, not in {}", name(r.by), name(*q)));
                    }
                }
            }
            Op::Detach(d) => {
                // Excused: a peer whose detach step timed out and is still in its queue (it
                // handles the primary's steps in order, and releases when it gets there).
                let queued = |q: Pid, port: Port| {
                    s.net.get(&(P, q, Chan::Mp)).is_some_and(|m| {
                        m.iter().any(|x| matches!(x, Msg::Tell { step: Step::Detach, port: pt, .. } if *pt == port))
                    })
                };
                // And, when secondaries heal, a handle the table no longer lists (a step it never
                // got): its heal releases it.
                let healing = |pt: Port, g: u32| {
                    let sl = s.table[pt as usize];
                    s.heal && !(sl.gen == g && sl.state == SlotState::Attached)
                };
                if let Some(q) = holders.iter().filter(|_| s.live(P)).find(|q| {
                    s.procs[**q as usize]
                        .ports
                        .iter()
                        .any(|(pt, (dd, g))| *dd == d && !queued(**q, *pt) && !healing(*pt, *g))
                        && s.attached_of(d).is_none()
                }) {
                    s.bad_success =
                        Some(format!("detach of d{d} by {} reported done, still in {}", name(r.by), name(*q)));
                }
            }
        }
    }

    /// The effect of a primary's local action.
    fn primary_local(&self, s: &mut State, fail: bool) -> Option<()> {
        let pr = &s.procs[0];
        let run = pr.running.as_ref()?;
        let a = run.m.doing()?;
        let forced = run.m.kind() == Kind::Forced;
        let faultable = matches!(a, Action::Reserve | Action::Probe) || (a == Action::Check && !forced);
        if fail && (!faultable || s.fails == 0) {
            return None;
        }
        if fail {
            s.fails -= 1;
        }
        let (dev, port, rec) = (run.dev, run.port, run.rec);
        let ev = match a {
            Action::Begin => {
                s.seq_odd = true;
                Event::Peers(s.peers())
            }
            Action::End => {
                s.seq_odd = false;
                Event::Ok
            }
            Action::Reserve => match s.reclaimed_attached_of(dev) {
                Some(pg) => {
                    s.procs[0].running.as_mut()?.port = Some(pg);
                    Event::No
                }
                None if fail => Event::Failed(Error::Fault),
                None => match s.table.iter().position(|x| x.state == SlotState::Unused) {
                    None => Event::Failed(Error::Full),
                    Some(i) => {
                        let gen = s.next_gen;
                        s.next_gen += 1;
                        s.table[i] = Slot { dev, gen, state: SlotState::Attaching };
                        s.procs[0].running.as_mut()?.port = Some((i as Port, gen));
                        if let Some(rec) = rec {
                            s.records[rec].reserved = Some((i as Port, gen));
                        }
                        Event::Ok
                    }
                },
            },
            Action::Probe if fail => Event::Failed(Error::Fault),
            Action::Probe => {
                let (p, g) = port?;
                s.procs[0].ports.insert(p, (dev, g));
                Event::Ok
            }
            Action::Publish => {
                s.table[port?.0 as usize].state = SlotState::Attached;
                Event::Ok
            }
            Action::Check => {
                let (p, g) = port?;
                let slot = s.table[p as usize];
                if slot.gen != g || slot.state != SlotState::Attached {
                    Event::No
                } else if forced {
                    Event::Ok
                } else if s.procs[0].locks.contains(&p) {
                    Event::Failed(Error::Locked)
                } else if fail {
                    Event::Failed(Error::Fault)
                } else {
                    Event::Ok
                }
            }
            Action::Commit => {
                s.table[port?.0 as usize].state = SlotState::Detaching;
                Event::Ok
            }
            Action::Release => {
                let (p, _) = port?;
                s.procs[0].ports.remove(&p);
                s.procs[0].locks.remove(&p);
                Event::Ok
            }
            Action::Free => {
                let (pt, g) = port?;
                let waiting: BTreeSet<Pid> = run.m.unconfirmed().iter().copied().collect();
                if waiting.is_empty() || self.cfg.without == Some(Safeguard::Quarantine) {
                    s.table[pt as usize].state = SlotState::Unused;
                } else {
                    s.held.insert(pt, (g, waiting));
                }
                Event::Ok
            }
            Action::Recheck | Action::Resync => Event::Ok,
        };
        s.procs[0].running.as_mut()?.m.handle(ev);
        self.advance_primary(s);
        Some(())
    }

    /// The effect of a secondary's local action for its own request.
    fn asker_local(&self, s: &mut State, p: Pid, fail: bool) -> Option<()> {
        let a = s.procs[p as usize].asking.as_ref()?;
        let act = a.m.doing()?;
        let faultable = matches!(act, Action::Probe | Action::Check);
        if fail && (!faultable || s.fails == 0) {
            return None;
        }
        if act == Action::Resync && s.seq_odd && s.live(P) {
            return None; // waits for a consistent snapshot
        }
        if fail {
            s.fails -= 1;
        }
        let (dev, port, ask) = (a.dev, a.port, a.m.ask());
        let pr = &mut s.procs[p as usize];
        let ev = match act {
            Action::Probe if fail => {
                // As the driver: a handle of this generation held already is nothing to probe
                // (and cannot fail); one of another is released before the probe that fails.
                let (pt, g) = port?;
                if pr.ports.get(&pt).map(|x| x.1) == Some(g) {
                    return None;
                }
                if pr.ports.remove(&pt).is_some() {
                    pr.locks.remove(&pt);
                }
                pr.holding = false;
                Event::Failed(Error::Fault)
            }
            Action::Probe => {
                let (pt, g) = port?;
                pr.ports.insert(pt, (dev, g));
                pr.holding = false;
                Event::Ok
            }
            Action::Check => {
                let (pt, _) = port?;
                if pr.locks.contains(&pt) {
                    Event::Failed(Error::Locked)
                } else if fail {
                    Event::Failed(Error::Fault)
                } else {
                    Event::Ok
                }
            }
            Action::Recheck => {
                let (pt, g) = port?;
                let slot = s.table[pt as usize];
                if slot.gen == g && slot.state == SlotState::Attached {
                    // An attach keeps the lock for its probe.
                    pr.holding = matches!(ask, Ask::Attach);
                    Event::Ok
                } else {
                    Event::No
                }
            }
            Action::Release => {
                let (pt, g) = port?;
                if pr.ports.get(&pt).map(|x| x.1) == Some(g) {
                    pr.ports.remove(&pt);
                    pr.locks.remove(&pt);
                }
                // The primary holds the id until the asker says it let go.
                if s.live(P) {
                    s.send(p, P, Chan::Mp, Msg::Released { port: pt, gen: g });
                }
                Event::Ok
            }
            Action::Resync => {
                s.resync(p);
                Event::Ok
            }
            _ => Event::Ok,
        };
        s.procs[p as usize].asking.as_mut()?.m.handle(ev);
        self.advance_asker(s, p);
        Some(())
    }

    /// A message delivered.
    fn deliver(&self, s: &mut State, from: Pid, to: Pid, chan: Chan, fail: bool) -> Option<()> {
        let m = s.net.get(&(from, to, chan))?.front()?.clone();
        match (&m, chan) {
            (Msg::Tell { .. }, Chan::Mp) if s.procs[to as usize].orphaned => {
                // A secondary that knows the primary is dead takes no more of its steps.
                if fail {
                    return None;
                }
                s.net.get_mut(&(from, to, chan))?.pop_front();
            }
            (Msg::Tell { op, step, port, gen, dev }, Chan::Mp) => {
                let pr = &s.procs[to as usize];
                let have = pr.ports.get(port).map(|x| x.1);
                let plan = match self.cfg.without {
                    Some(Safeguard::Generations) => answer_any_generation(*step, have, *gen),
                    _ => answer(*step, Local { have }, *gen),
                };
                let faultable = matches!(plan, Plan::Probe { .. } | Plan::Check);
                if fail && (!faultable || s.fails == 0) {
                    return None;
                }
                if fail {
                    s.fails -= 1;
                }
                let pr = &mut s.procs[to as usize];
                let refused = match plan {
                    Plan::Nothing => None,
                    Plan::Probe { .. } if fail => Some(Error::Fault),
                    Plan::Probe { .. } => {
                        pr.ports.insert(*port, (*dev, *gen));
                        None
                    }
                    Plan::Release => {
                        pr.ports.remove(port);
                        pr.locks.remove(port);
                        None
                    }
                    Plan::Check if pr.locks.contains(port) && have.is_some() => Some(Error::Locked),
                    Plan::Check if fail => Some(Error::Fault),
                    Plan::Check => None,
                };
                s.net.get_mut(&(from, to, chan))?.pop_front();
                s.send(to, from, Chan::Reply, Msg::Told { op: *op, step: *step, refused });
                // A detach answered after the primary stopped waiting: say so once released.
                let waited = s.procs[0].running.as_ref().is_some_and(|r| {
                    r.op == *op && r.m.waiting_on().is_some_and(|(st, w)| st == Step::Detach && w.contains(&to))
                });
                if *step == Step::Detach && !waited {
                    s.send(to, P, Chan::Mp, Msg::Released { port: *port, gen: *gen });
                }
            }
            (Msg::Released { port, gen }, Chan::Mp) => {
                if fail {
                    return None;
                }
                s.net.get_mut(&(from, to, chan))?.pop_front();
                if let Some((g, w)) = s.held.get_mut(port) {
                    if g == gen {
                        w.remove(&from);
                        if w.is_empty() {
                            s.held.remove(port);
                            s.table[*port as usize].state = SlotState::Unused;
                        }
                    }
                }
            }
            (Msg::Told { op, step, refused }, Chan::Reply) => {
                if fail {
                    return None;
                }
                s.net.get_mut(&(from, to, chan))?.pop_front();
                if let Some(run) = s.procs[0].running.as_mut() {
                    if run.op == *op && run.m.waiting_on().is_some_and(|(st, _)| st == *step) {
                        run.m.handle(Event::Reply(from, refused.as_ref().map(|e| format!("{e:?}"))));
                        self.advance_primary(s);
                    }
                }
            }
            (Msg::Req { id, ask, target }, Chan::Mp) => {
                if fail {
                    return None;
                }
                s.net.get_mut(&(from, to, chan))?.pop_front();
                s.procs[0].queue.push_back((from, *id, *ask, *target, usize::MAX));
            }
            (Msg::Answer { id, result }, Chan::Reply) => {
                if fail {
                    return None;
                }
                s.net.get_mut(&(from, to, chan))?.pop_front();
                // An answer to a request its asker gave up on is dropped (its reply socket is gone).
                let Some(a) = s.procs[to as usize].asking.as_mut() else { return Some(()) };
                if a.id != *id || a.m.asking().is_none() {
                    return Some(());
                }
                match result {
                    Ok(pg) => {
                        if a.m.asking() == Some(Ask::Attach) {
                            a.port = Some(*pg);
                        }
                        a.m.handle(Event::Ok);
                    }
                    Err(e) => a.m.handle(Event::Failed(e.clone())),
                }
                self.advance_asker(s, to);
            }
            _ => return None,
        }
        Some(())
    }

    /// The primary takes its next request.
    fn take(&self, s: &mut State) -> Option<()> {
        if s.procs[0].running.is_some() {
            return None;
        }
        let (from, id, ask, target, rec) = s.procs[0].queue.pop_front()?;
        let op = s.next_id;
        s.next_id += 1;
        // The asker's deadline passed while the request waited: refused unstarted.
        let left = if s.expired.contains(&id) { 0 } else { 1 };
        if from != P && !admit(left, 1) && self.cfg.without != Some(Safeguard::Deadline) {
            s.send(P, from, Chan::Reply, Msg::Answer { id, result: Err(Error::Expired) });
            return Some(());
        }
        let asker = (from != P).then_some((from, id));
        let (kind, dev, port) = match ask {
            Ask::Attach => (Kind::Attach, target, None),
            Ask::Detach | Ask::Abort => {
                // The primary finds the port by its id (what the asker sends).
                let slot = s.table.get(target as usize).copied();
                match slot.filter(|x| x.state == SlotState::Attached) {
                    None => {
                        let r = Err(Error::NotAttached);
                        match asker {
                            Some((a, id)) => s.send(P, a, Chan::Reply, Msg::Answer { id, result: r }),
                            None => self.report(s, rec, false),
                        }
                        return Some(());
                    }
                    Some(x) => {
                        (if ask == Ask::Abort { Kind::Forced } else { Kind::Detach }, x.dev, Some((target, x.gen)))
                    }
                }
            }
        };
        let m = PMachine::new(kind, asker.map(|a| a.0));
        // The record of the asker's operation (none if it gave up or died: its answer is lost).
        let rec = match asker {
            None => Some(rec),
            Some((a, id)) => s.procs[a as usize].asking.as_ref().filter(|x| x.id == id).map(|x| x.rec),
        };
        s.procs[0].running = Some(Running { m, op, from: asker, dev, port, rec });
        self.advance_primary(s);
        Some(())
    }

    fn start(&self, s: &mut State, p: Pid, op: Op) -> Option<()> {
        let i = s.todo.iter().position(|x| *x == (p, op))?;
        let pr = &s.procs[p as usize];
        if !pr.alive || !pr.synced || pr.asking.is_some() {
            return None;
        }
        s.todo.remove(i);
        let rec = s.records.len();
        s.records.push(Record { by: p, op, reserved: None, ok: None, unknown: false });
        if p == P {
            let (ask, target) = match op {
                Op::Attach(d) => (Ask::Attach, d),
                Op::Detach(d) => match s.attached_of(d) {
                    Some((port, _)) => (Ask::Detach, port),
                    None => {
                        s.records[rec].ok = Some(false);
                        return Some(());
                    }
                },
            };
            let id = s.next_id;
            s.next_id += 1;
            s.procs[0].queue.push_back((P, id, ask, target, rec));
            return Some(());
        }
        if !s.live(P) || s.procs[p as usize].orphaned {
            // The primary is gone: refused at once.
            s.records[rec].ok = Some(false);
            return Some(());
        }
        let (ask, dev, port) = match op {
            Op::Attach(d) => (Ask::Attach, d, None),
            Op::Detach(d) => {
                // `find_target` in this process: the table's attached port of the device.
                match s.attached_of(d) {
                    Some(pg) => (Ask::Detach, d, Some(pg)),
                    None => {
                        s.records[rec].ok = Some(false);
                        return Some(());
                    }
                }
            }
        };
        s.procs[p as usize].asking = Some(Asking { m: AMachine::new(ask), id: 0, dev, port, rec });
        self.advance_asker(s, p);
        Some(())
    }

    fn crash(&self, s: &mut State, p: Pid) -> Option<()> {
        if s.crashes == 0 || !s.live(p) || (p == P && !self.cfg.primary_crash) {
            return None;
        }
        s.crashes -= 1;
        let pr = &mut s.procs[p as usize];
        pr.alive = false;
        pr.running = None;
        pr.asking = None;
        pr.holding = false;
        pr.queue.clear();
        s.net.retain(|(_, to, _), _| *to != p);
        if p != P {
            if let Some(run) = s.procs[0].running.as_mut() {
                if run.m.waiting_on().is_some_and(|(_, w)| w.contains(&p)) {
                    run.m.handle(Event::Died(p));
                }
            }
            self.advance_primary(s);
        }
        Some(())
    }
}

fn error_of(f: Failure<Pid, Error>) -> Error {
    match f {
        Failure::Local(e) => e,
        Failure::NotAttached => Error::NotAttached,
        Failure::Refused(..) | Failure::Died(_) | Failure::Silent(_) | Failure::Unconfirmed(_) => Error::Remote,
    }
}

/// A process's name in traces.
pub fn name(p: Pid) -> String {
    if p == P {
        "P".into()
    } else {
        format!("S{p}")
    }
}

impl Model for Lab {
    type State = State;
    type Action = Act;

    fn init_states(&self) -> Vec<State> {
        vec![self.init()]
    }

    fn actions(&self, s: &State, out: &mut Vec<Act>) {
        for (p, op) in &s.todo {
            let pr = &s.procs[*p as usize];
            if pr.alive && pr.synced && pr.asking.is_none() {
                out.push(Act::Start(*p, *op));
            }
        }
        let pr0 = &s.procs[0];
        if pr0.alive && pr0.running.is_none() && !pr0.queue.is_empty() {
            out.push(Act::Take);
        }
        for p in 0..s.procs.len() as Pid {
            let pr = &s.procs[p as usize];
            if !pr.alive {
                continue;
            }
            let doing = if p == P {
                pr.running.as_ref().and_then(|r| r.m.doing())
            } else {
                pr.asking.as_ref().and_then(|a| a.m.doing())
            };
            if doing.is_some() {
                out.push(Act::Local(p, false));
                if s.fails > 0 {
                    out.push(Act::Local(p, true));
                }
            }
            if let Some(a) = pr.asking.as_ref() {
                if a.m.asking().is_some() {
                    let queued = s
                        .net
                        .get(&(p, P, Chan::Mp))
                        .is_some_and(|q| q.iter().any(|m| matches!(m, Msg::Req { id, .. } if *id == a.id)))
                        || s.procs[0].queue.iter().any(|q| q.1 == a.id);
                    let answered = s.net.get(&(P, p, Chan::Reply)).is_some_and(|q| !q.is_empty());
                    if (!s.live(P) || (queued && self.cfg.timeouts)) && !answered {
                        out.push(Act::AskTimeout(p));
                    }
                }
            }
            if p != P && !pr.started && s.live(P) {
                out.push(Act::Join(p));
            }
            if p != P && pr.started && !pr.synced && (!s.seq_odd || !s.live(P)) {
                out.push(Act::Sync(p));
            }
            if p != P && !s.live(P) && !pr.orphaned && pr.synced && !pr.holding {
                out.push(Act::Orphan(p));
            }
            if p != P
                && s.losses > 0
                && s.net.get(&(P, p, Chan::Mp)).is_some_and(|q| matches!(q.front(), Some(Msg::Tell { .. })))
            {
                out.push(Act::Refuse(p));
            }
            if s.heal && !s.leftovers(p).is_empty() {
                out.push(Act::Heal(p));
            }
            if s.locks > 0 && pr.ports.values().any(|(d, _)| *d == 0) {
                out.push(Act::Lock(p));
            }
            if s.crashes > 0 && (p != P || self.cfg.primary_crash) {
                out.push(Act::Crash(p));
            }
        }
        if pr0.alive && self.cfg.timeouts && pr0.running.as_ref().is_some_and(|r| r.m.waiting_on().is_some()) {
            out.push(Act::StepTimeout);
        }
        for ((from, to, chan), q) in &s.net {
            if !q.is_empty() && s.live(*to) && !(s.procs[*to as usize].holding && *chan == Chan::Mp) {
                out.push(Act::Deliver(*from, *to, *chan, false));
                if s.fails > 0 && *chan == Chan::Mp && matches!(q.front(), Some(Msg::Tell { .. })) {
                    out.push(Act::Deliver(*from, *to, *chan, true));
                }
            }
        }
    }

    fn next_state(&self, last: &State, act: Act) -> Option<State> {
        let mut s = last.clone();
        match act {
            Act::Start(p, op) => self.start(&mut s, p, op)?,
            Act::Take => self.take(&mut s)?,
            Act::Local(p, fail) if p == P => self.primary_local(&mut s, fail)?,
            Act::Local(p, fail) => self.asker_local(&mut s, p, fail)?,
            Act::Deliver(from, to, chan, fail) => self.deliver(&mut s, from, to, chan, fail)?,
            Act::StepTimeout => {
                s.procs[0].running.as_mut()?.m.handle(Event::Timeout);
                self.advance_primary(&mut s);
            }
            Act::AskTimeout(p) => {
                let a = s.procs[p as usize].asking.as_mut()?;
                let id = a.id;
                a.m.handle(Event::Timeout);
                s.expired.insert(id);
                self.advance_asker(&mut s, p);
            }
            Act::Crash(p) => self.crash(&mut s, p)?,
            Act::Join(p) => s.procs[p as usize].started = true,
            Act::Sync(p) => {
                s.resync(p);
                s.procs[p as usize].synced = true;
            }
            Act::Orphan(p) => {
                s.resync(p);
                s.procs[p as usize].orphaned = true;
            }
            Act::Refuse(p) => {
                s.losses -= 1;
                s.net.get_mut(&(P, p, Chan::Mp))?.pop_front();
            }
            Act::Heal(p) => {
                for (pt, g) in s.leftovers(p) {
                    let pr = &mut s.procs[p as usize];
                    pr.ports.remove(&pt);
                    pr.locks.remove(&pt);
                    if s.live(P) {
                        s.send(p, P, Chan::Mp, Msg::Released { port: pt, gen: g });
                    }
                }
            }
            Act::Lock(p) => {
                s.locks -= 1;
                let port = s.procs[p as usize].ports.iter().find(|(_, (d, _))| *d == 0).map(|(pt, _)| *pt)?;
                let l = &mut s.procs[p as usize].locks;
                if !l.remove(&port) {
                    l.insert(port);
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("(a) quiescent: every live process lists the table's ports", |_, s: &State| {
                !s.quiescent() || inconsistency(s).is_none()
            }),
            Property::always("(b) success done everywhere, failure leaves nothing", |_, s: &State| {
                s.bad_success.is_none() && (!s.quiescent() || failed_trace(s).is_none())
            }),
            Property::always("(c) no operation waits on a dead process", |_, s: &State| {
                s.procs[0]
                    .running
                    .as_ref()
                    .and_then(|r| r.m.waiting_on())
                    .is_none_or(|(_, w)| w.iter().all(|p| s.live(*p)))
            }),
            Property::always("(c) nothing is stuck: every end state is quiescent", |m: &Lab, s: &State| {
                let mut a = Vec::new();
                m.actions(s, &mut a);
                !a.is_empty() || s.quiescent()
            }),
            Property::always("(d) a port id is never two devices at once", |_, s: &State| double_port(s).is_none()),
            Property::eventually("(e) eventually quiescent", |_, s: &State| s.quiescent()),
            Property::sometimes("an operation succeeds", |_, s: &State| s.records.iter().any(|r| r.ok == Some(true))),
        ]
    }

    fn within_boundary(&self, _s: &State) -> bool {
        true
    }
}

/// [`answer`] without its generation rule ([`Safeguard::Generations`] left out).
fn answer_any_generation(step: Step, have: Option<u32>, gen: u32) -> Plan {
    match step {
        Step::Attach if have == Some(gen) => Plan::Nothing,
        Step::Attach => Plan::Probe { release_first: have.is_some() },
        Step::Rollback if have == Some(gen) => Plan::Release,
        Step::Rollback => Plan::Nothing,
        Step::PreDetach => Plan::Check,
        Step::Detach => Plan::Release,
    }
}

/// The first live process whose ports differ from the table's, as text.
pub fn inconsistency(s: &State) -> Option<String> {
    let want = s.want();
    (0..s.procs.len() as Pid).find_map(|p| {
        let pr = &s.procs[p as usize];
        (pr.alive && pr.started && pr.ports != want)
            .then(|| format!("{} has {:?}, the table {:?}", name(p), pr.ports, want))
    })
}

/// A failed attach that left a handle or a table entry behind, as text.
pub fn failed_trace(s: &State) -> Option<String> {
    s.records.iter().find_map(|r| {
        let (Op::Attach(d), Some(false), Some((port, gen)), false) = (r.op, r.ok, r.reserved, r.unknown) else {
            return None;
        };
        let held = (0..s.procs.len() as Pid)
            .find(|p| s.procs[*p as usize].alive && s.procs[*p as usize].ports.get(&port) == Some(&(d, gen)));
        let in_table = s.table[port as usize].gen == gen && s.table[port as usize].state == SlotState::Attached;
        (held.is_some() || in_table)
            .then(|| format!("failed attach of d{d} by {} left port {port} gen {gen}", name(r.by)))
    })
}

/// A port id held for two devices, as text.
pub fn double_port(s: &State) -> Option<String> {
    let mut seen: BTreeMap<Port, Dev> = BTreeMap::new();
    for (i, sl) in s.table.iter().enumerate() {
        if sl.state != SlotState::Unused {
            seen.insert(i as Port, sl.dev);
        }
    }
    for (p, pr) in s.procs.iter().enumerate() {
        if !pr.alive {
            continue;
        }
        for (port, (d, _)) in &pr.ports {
            if let Some(o) = seen.insert(*port, *d) {
                if o != *d {
                    return Some(format!("port {port} is d{o} and d{d} (in {})", name(p as Pid)));
                }
            }
        }
    }
    None
}

/// A path as a readable sequence of what each process did and sent.
pub fn trace(lab: &Lab, path: &Path<State, Act>) -> String {
    let mut out = String::new();
    let states = path.clone().into_states();
    let actions = path.clone().into_actions();
    for (i, act) in actions.iter().enumerate() {
        let s = &states[i];
        let line = match act {
            Act::Start(p, op) => format!("{} asks {op:?}", name(*p)),
            Act::Take => match s.procs[0].queue.front() {
                Some((f, id, ask, t, _)) => format!(
                    "P starts {} {} {t} (request {id} of {})",
                    ask.name(),
                    if *ask == Ask::Attach { "device" } else { "port" },
                    name(*f)
                ),
                None => "P takes a request".into(),
            },
            Act::Local(p, fail) => {
                let a = if *p == P {
                    s.procs[0].running.as_ref().and_then(|r| r.m.doing())
                } else {
                    s.procs[*p as usize].asking.as_ref().and_then(|a| a.m.doing())
                };
                format!(
                    "{} does {:?}{}",
                    name(*p),
                    a.map_or("?".into(), |a| format!("{a:?}")),
                    if *fail { " and it FAILS" } else { "" }
                )
            }
            Act::Deliver(f, t, c, fail) => {
                let m = s.net.get(&(*f, *t, *c)).and_then(|q| q.front()).map_or("?".into(), |m| format!("{m:?}"));
                format!("{} -> {}: {m}{}", name(*f), name(*t), if *fail { " (its local step FAILS)" } else { "" })
            }
            Act::StepTimeout => "P's step timer fires".into(),
            Act::AskTimeout(p) => format!("{} stops waiting for P's answer", name(*p)),
            Act::Crash(p) => format!("{} CRASHES", name(*p)),
            Act::Join(p) => format!("{} starts late", name(*p)),
            Act::Sync(p) => format!("{} reads the table", name(*p)),
            Act::Orphan(p) => format!("{} notices P is dead and follows the table", name(*p)),
            Act::Refuse(p) => format!("P's send to {} is REFUSED (its queue full): it never gets the step", name(*p)),
            Act::Heal(p) => format!("{} releases the handles the table no longer lists", name(*p)),
            Act::Lock(p) => format!("{} toggles its lock of d0's port", name(*p)),
        };
        let _ = writeln!(out, "{:>3}. {line}", i + 1);
    }
    if let Some(last) = states.last() {
        let _ = writeln!(
            out,
            "     end: table {:?}",
            last.table.iter().map(|x| (x.dev, x.gen, x.state)).collect::<Vec<_>>()
        );
        for (p, pr) in last.procs.iter().enumerate() {
            let _ =
                writeln!(out, "          {}{}: {:?}", name(p as Pid), if pr.alive { "" } else { " (dead)" }, pr.ports);
        }
        for why in
            [inconsistency(last), failed_trace(last), double_port(last), last.bad_success.clone()].into_iter().flatten()
        {
            let _ = writeln!(out, "     broken: {why}");
        }
    }
    let _ = lab;
    out
}

/// The outcome of one check.
#[derive(Debug)]
pub struct Outcome {
    /// States generated.
    pub states: usize,
    /// Unique states.
    pub unique: usize,
    /// Maximum depth reached.
    pub depth: usize,
    /// Each property found false, with its shortest trace.
    pub violations: Vec<(String, String)>,
    /// How long it took.
    pub elapsed: std::time::Duration,
}

/// Runs the checker breadth first (shortest traces first) on `threads` threads.
pub fn check(cfg: Config, threads: usize) -> Outcome {
    let t0 = std::time::Instant::now();
    let depth = cfg.depth;
    let lab = Lab::new(cfg);
    let checker = lab.clone().checker().threads(threads).target_max_depth(depth).spawn_bfs().join();
    let mut violations = Vec::new();
    for (name, path) in checker.discoveries() {
        if name.starts_with("an operation") {
            continue;
        }
        violations.push((name.to_string(), trace(&lab, &path)));
    }
    if checker.discovery("an operation succeeds").is_none() {
        violations.push(("sanity: no operation ever succeeded".into(), String::new()));
    }
    violations.sort();
    Outcome {
        states: checker.state_count(),
        unique: checker.unique_state_count(),
        depth: checker.max_depth(),
        violations,
        elapsed: t0.elapsed(),
    }
}

/// Which faults a run explores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    /// None: every interleaving of correct processes.
    None,
    /// Local steps fail.
    Fail,
    /// Timers fire while answers are missing.
    Timeout,
    /// Processes crash, the primary included.
    Crash,
    /// All of them (one of each per run).
    All,
    /// Timers, and a step the primary cannot send to a live secondary (which then heals).
    Loss,
}

impl Faults {
    /// From the command line.
    pub fn parse(s: &str) -> Option<Faults> {
        Some(match s {
            "none" => Faults::None,
            "fail" => Faults::Fail,
            "timeout" => Faults::Timeout,
            "crash" => Faults::Crash,
            "all" => Faults::All,
            "loss" => Faults::Loss,
            _ => return None,
        })
    }

    fn apply(self, mut c: Config) -> Config {
        let (f, t, k) = match self {
            Faults::None => (0, false, 0),
            Faults::Fail => (1, false, 0),
            Faults::Timeout | Faults::Loss => (0, true, 0),
            Faults::Crash => (0, false, 1),
            Faults::All => (1, true, 1),
        };
        c.losses = u8::from(self == Faults::Loss);
        c.fails = f;
        c.timeouts = t;
        c.crashes = k;
        c
    }
}

/// The scenarios the checker explores, by name: a primary and `secondaries` secondaries.
pub fn scenarios(secondaries: u8, faults: Faults) -> Vec<(String, Config)> {
    let n = secondaries.clamp(1, 3);
    let last = n;
    let base = Config {
        secondaries: n,
        late: Vec::new(),
        ports: 2,
        attached: Vec::new(),
        ops: Vec::new(),
        fails: 0,
        crashes: 0,
        losses: 0,
        primary_crash: true,
        lock_toggles: 0,
        timeouts: false,
        depth: 60,
        without: None,
    };
    let mk = |ops: Vec<(Pid, Op)>, attached: Vec<Dev>, late: Vec<Pid>, locks: u8| {
        faults.apply(Config { ops, attached, late, lock_toggles: locks, ..base.clone() })
    };
    let mut v = vec![
        // Two processes attach the same device at once: one port, in everyone.
        ("same-device-attach".to_string(), mk(vec![(1, Op::Attach(0)), (last, Op::Attach(0))], vec![], vec![], 0)),
        // An attach and a detach of one device race from different processes.
        ("attach-detach-race".into(), mk(vec![(1, Op::Attach(0)), (0, Op::Detach(0))], vec![], vec![], 0)),
        // Two devices, attached and detached from different processes at once.
        ("two-devices".into(), mk(vec![(1, Op::Attach(1)), (last, Op::Detach(0))], vec![0], vec![], 0)),
        // A detach from a secondary while another holds a lock and lets go.
        ("lock-veto".into(), mk(vec![(1, Op::Detach(0))], vec![0], vec![], 2)),
        // A secondary starts while an attach and a detach are under way.
        ("late-joiner".into(), mk(vec![(0, Op::Attach(1)), (1, Op::Detach(0))], vec![0], vec![last], 0)),
    ];
    if n == 1 {
        v.retain(|(name, _)| name != "late-joiner");
    }
    v
}
