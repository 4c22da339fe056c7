//! The decisions of the hotplug protocol as pure state machines: no sockets, threads, clocks,
//! shared memory or sysfs (the split of quinn-proto, rustls and h2).
//!
//! * [`PrimaryOp`]: one operation run by the primary (an attach, a detach, the undo of an
//!   attach), from its first local step to its result.
//! * [`AskerOp`]: one operation a secondary asks the primary for, with its own part of it.
//! * [`answer`]: what a secondary does when the primary tells it a step.
//! * [`admit`]: whether the primary may still start a request that waited in its queue.
//!
//! A machine is driven by its owner: [`PrimaryOp::poll`] gives the next [`Command`] (a local
//! [`Action`] to carry out, a [`Step`] to send to some peers, a question for the primary, or
//! [`Command::Done`]); the owner carries it out and feeds what happened back as an [`Event`].
//! `hotplug.rs` is the owner in a real process (the IPC channel, the port table in shared memory,
//! the drivers); `lab-model` is the owner in the model checker (a network that delays and
//! reorders, processes that fail, stall and crash). Both run this same code.
//!
//! The machines are generic over `P`, how a peer is named (a socket path in a process, a small
//! number in the model), and `E`, a local error (`HotplugError` in a process).

use std::fmt::Debug;

/// A step the primary tells the secondaries to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// Attach your handle of the port.
    Attach,
    /// Undo the attach of the port (release your handle if it is the one of this attach).
    Rollback,
    /// May the port be detached? (a locked port vetoes).
    PreDetach,
    /// Release your handle of the port.
    Detach,
}

impl Step {
    /// The step's name in records and traces.
    pub fn name(self) -> &'static str {
        match self {
            Step::Attach => "attach",
            Step::Rollback => "rollback",
            Step::PreDetach => "predetach",
            Step::Detach => "detach",
        }
    }
}

/// A local step the owner of a machine carries out, then reports with [`Event::Ok`],
/// [`Event::No`] or [`Event::Failed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The table's sequence counter to odd: an operation runs (late secondaries wait). Then
    /// report the secondaries there are now with [`Event::Peers`]: one that starts later sees
    /// the odd counter and waits for the end before it reads the table.
    Begin,
    /// The sequence counter back to even: the operation has ended.
    End,
    /// Attach in the primary: the device attached already ([`Event::No`]: the operation
    /// succeeds with that port), else a port id reserved for it in the table (state Attaching).
    Reserve,
    /// This process's handle of the port (the primary's probe owns the device's shared state).
    Probe,
    /// The attach succeeded everywhere: the table says Attached.
    Publish,
    /// Detach: the port is still the one asked for and attached ([`Event::No`]: not attached),
    /// then (not for the undo of an attach) this process's pre-detach check (a lock vetoes).
    Check,
    /// The detach is decided: the table says Detaching.
    Commit,
    /// This process's handle released (the primary's release gives back the shared state). An
    /// asking secondary then tells the primary it let go (`hp_released`), which frees the id the
    /// primary held for it.
    Release,
    /// The port's table slot back to unused; when [`PrimaryOp::unconfirmed`] names peers that
    /// did not confirm their release in time, the slot is held out of use instead, until each
    /// of them says it released it (late) or dies: a port id is never given to a new device
    /// while a slow process still holds a handle of the old one.
    Free,
    /// A secondary: is the port still attached, as the operation left it? ([`Event::No`]: no).
    Recheck,
    /// A secondary that could not learn the outcome: follow the table (attach what it has,
    /// release what it does not), as a late secondary does at start.
    Resync,
}

/// What a secondary asks the primary for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ask {
    /// Attach the device in every other process.
    Attach,
    /// Detach the port in every other process.
    Detach,
    /// Undo the attach of the port everywhere (this process's own attach failed).
    Abort,
}

impl Ask {
    /// The operation's name on the wire and in records.
    pub fn name(self) -> &'static str {
        match self {
            Ask::Attach => "attach",
            Ask::Detach => "detach",
            Ask::Abort => "abort",
        }
    }
}

/// The next thing a machine needs done.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command<P> {
    /// Carry out a local action and report it.
    Do(Action),
    /// Send the step to these peers and report each answer ([`Event::Reply`], [`Event::Died`]),
    /// then [`Event::Timeout`] for those silent past the hotplug timeout. An empty list needs no
    /// report.
    Send(Step, Vec<P>),
    /// Ask the primary and report its answer ([`Event::Ok`] or [`Event::Failed`]).
    Ask(Ask),
    /// The operation has ended: read [`PrimaryOp::result`].
    Done,
}

/// What happened, fed back to the machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event<P, E> {
    /// The local action or the question succeeded.
    Ok,
    /// The local action found nothing to do (see [`Action`]).
    No,
    /// The local action or the question failed (the primary's answer to a question).
    Failed(E),
    /// A peer answered the step: `None` done, `Some(reason)` refused.
    Reply(P, Option<String>),
    /// A peer died before it answered the step.
    Died(P),
    /// A peer was gone before the step reached it: nothing to wait for, and no failure (its
    /// socket is gone; a restarted process resynchronises from the table).
    Gone(P),
    /// The timeout passed; peers that have not answered are silent.
    Timeout,
    /// The step could not be sent at all (the channel failed).
    SendFailed(E),
    /// [`Action::Begin`] done: the secondaries there are (the asker among them, if alive).
    Peers(Vec<P>),
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Failure<P, E> {
    /// A local action failed (the probe, the pre-detach check, a fault) or, for a secondary,
    /// the primary answered with this error.
    Local(E),
    /// The port is not attached (any more).
    NotAttached,
    /// A peer refused the step or failed its part.
    Refused(P, String),
    /// A peer died during the step.
    Died(P),
    /// These peers did not answer within the timeout.
    Silent(Vec<P>),
    /// An asking secondary's probe failed (E) after the primary had attached the port everywhere
    /// else, and the primary did not answer the undo: the port may stay attached, in every
    /// process alike (a dead primary cannot undo; the table says which).
    Unconfirmed(E),
}

/// Which operation a [`PrimaryOp`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Attach.
    Attach,
    /// Detach with the pre-detach check.
    Detach,
    /// The undo of an attach, or a device that is gone: detach without a check.
    Forced,
}

/// The answers to one step, collected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Collect<P> {
    step: Step,
    /// Peers that have not answered.
    pending: Vec<P>,
    refused: Option<(P, String)>,
    died: Option<P>,
    silent: Vec<P>,
    broken: bool,
}

impl<P: Clone + Eq> Collect<P> {
    fn new(step: Step, to: &[P]) -> Collect<P> {
        Collect { step, pending: to.to_vec(), refused: None, died: None, silent: Vec::new(), broken: false }
    }

    /// Takes one event; true when the step is complete.
    fn feed<E>(&mut self, ev: Event<P, E>) -> bool {
        match ev {
            Event::Reply(p, r) => {
                if let Some(i) = self.pending.iter().position(|q| *q == p) {
                    self.pending.remove(i);
                    if let (Some(reason), None) = (r, &self.refused) {
                        self.refused = Some((p, reason));
                    }
                }
            }
            Event::Died(p) => {
                if let Some(i) = self.pending.iter().position(|q| *q == p) {
                    self.pending.remove(i);
                    self.died.get_or_insert(p);
                }
            }
            Event::Gone(p) => self.pending.retain(|q| *q != p),
            Event::Timeout => self.silent = std::mem::take(&mut self.pending),
            Event::SendFailed(_) => {
                self.broken = true;
                self.pending.clear();
            }
            Event::Ok | Event::No | Event::Failed(_) | Event::Peers(_) => {}
        }
        self.pending.is_empty()
    }

    /// The step's failure, if any: a refusal first, then a death, then silence. `deaths` false:
    /// a peer that died is not a failure (a detach: it has no handle left).
    fn failure<E>(&mut self, deaths: bool, send_error: Option<E>) -> Option<Failure<P, E>> {
        if let Some((p, r)) = self.refused.take() {
            return Some(Failure::Refused(p, r));
        }
        if let (true, Some(p)) = (deaths, self.died.take()) {
            return Some(Failure::Died(p));
        }
        if !self.silent.is_empty() {
            return Some(Failure::Silent(std::mem::take(&mut self.silent)));
        }
        send_error.filter(|_| self.broken).map(Failure::Local)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase<P> {
    /// Waiting for the result of this action.
    Doing(Action),
    /// Waiting for the answers to a step.
    Collecting(Collect<P>),
    /// Waiting for the primary's answer.
    Asking(Ask),
    Done,
}

impl<P: Clone> Phase<P> {
    /// The command this phase gives, once (`sent` remembers): both machines poll this way.
    fn poll(&self, sent: &mut bool) -> Option<Command<P>> {
        if std::mem::replace(sent, true) {
            return None;
        }
        Some(match self {
            Phase::Doing(a) => Command::Do(*a),
            Phase::Collecting(c) => Command::Send(c.step, c.pending.clone()),
            Phase::Asking(a) => Command::Ask(*a),
            Phase::Done => Command::Done,
        })
    }

    fn doing(&self) -> Option<Action> {
        match self {
            Phase::Doing(a) => Some(*a),
            _ => None,
        }
    }
}

/// One operation run by the primary.
///
/// Attach: Begin, Reserve (attached already: End, done), Probe, `Attach` to every peer; all
/// done: Publish, End. A refusal, a death or silence: `Rollback` to every peer, Release, Free,
/// End, and the operation fails with that first failure. A failed probe: Free, End.
///
/// Detach: Check (not attached, locked or a fault here: done, nothing changed), Begin,
/// `PreDetach` to every peer (a veto, a death or silence: End, nothing changed), Commit,
/// `Detach` to every peer (a refusal is reported but a handle is gone whatever the peer says),
/// Release, Free, End. Forced: the same without the pre-detach step.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrimaryOp<P, E> {
    kind: Kind,
    peers: Vec<P>,
    asker: Option<P>,
    phase: Phase<P>,
    sent: bool,
    begun: bool,
    failure: Option<Failure<P, E>>,
    result: Option<Result<(), Failure<P, E>>>,
    /// The refusal of a detach step, kept for the owner to log.
    detach_refused: Option<Failure<P, E>>,
    /// Peers silent at the detach step.
    unconfirmed: Vec<P>,
}

impl<P: Clone + Eq + Debug, E: Debug> PrimaryOp<P, E> {
    /// A new operation asked by `asker` (a secondary; `None`: the primary itself). It tells the
    /// secondaries there are at [`Action::Begin`], less the asker: an asker does its own attach,
    /// pre-detach check and release. The asker of a detach releases its handle after the answer,
    /// so it is among the [`PrimaryOp::unconfirmed`] at Free: the id stays held until it says it
    /// let go (one message, not a round trip the operation waits for).
    pub fn new(kind: Kind, asker: Option<P>) -> PrimaryOp<P, E> {
        let first = match kind {
            Kind::Attach => Action::Begin,
            Kind::Detach | Kind::Forced => Action::Check,
        };
        PrimaryOp {
            kind,
            peers: Vec::new(),
            asker,
            phase: Phase::Doing(first),
            sent: false,
            begun: false,
            failure: None,
            result: None,
            detach_refused: None,
            unconfirmed: Vec::new(),
        }
    }

    /// The operation's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The next command, once per phase (`None` while the machine waits for events).
    pub fn poll(&mut self) -> Option<Command<P>> {
        self.phase.poll(&mut self.sent)
    }

    /// The step being collected and who has not answered, if any (for the model's timers).
    pub fn waiting_on(&self) -> Option<(Step, &[P])> {
        match &self.phase {
            Phase::Collecting(c) => Some((c.step, &c.pending)),
            _ => None,
        }
    }

    /// The action being waited for, if any.
    pub fn doing(&self) -> Option<Action> {
        self.phase.doing()
    }

    /// The result, once [`Command::Done`] was given.
    pub fn result(&self) -> Option<&Result<(), Failure<P, E>>> {
        self.result.as_ref()
    }

    /// The result, taken.
    pub fn into_result(self) -> Option<Result<(), Failure<P, E>>> {
        self.result
    }

    /// The peers that did not answer the detach step in time: they may still hold a handle of
    /// the port (see [`Action::Free`]).
    pub fn unconfirmed(&self) -> &[P] {
        &self.unconfirmed
    }

    /// A detach step's refusal (the detach went ahead; the owner logs it).
    pub fn take_detach_refusal(&mut self) -> Option<Failure<P, E>> {
        self.detach_refused.take()
    }

    fn go(&mut self, phase: Phase<P>) {
        // A step to nobody needs no answers.
        if let Phase::Collecting(c) = &phase {
            if c.pending.is_empty() {
                let c = c.clone();
                self.phase = Phase::Collecting(c.clone());
                self.step_done(c, None);
                return;
            }
        }
        self.phase = phase;
        self.sent = false;
    }

    fn doing_next(&mut self, a: Action) {
        self.go(Phase::Doing(a));
    }

    fn finish(&mut self, r: Result<(), Failure<P, E>>) {
        if self.begun {
            self.begun = false;
            self.result = Some(r);
            self.doing_next(Action::End);
        } else {
            self.result = Some(r);
            self.go(Phase::Done);
        }
    }

    fn send(&mut self, step: Step) {
        let c = Collect::new(step, &self.peers);
        self.go(Phase::Collecting(c));
    }

    /// Feeds what happened.
    pub fn handle(&mut self, ev: Event<P, E>) {
        match self.phase.clone() {
            Phase::Doing(a) => self.action_done(a, ev),
            Phase::Collecting(mut c) => {
                if let Event::SendFailed(e) = ev {
                    c.broken = true;
                    c.pending.clear();
                    self.step_done(c, Some(e));
                } else if c.feed(ev) {
                    self.step_done(c, None);
                } else {
                    self.phase = Phase::Collecting(c);
                }
            }
            Phase::Asking(_) | Phase::Done => {}
        }
    }

    fn action_done(&mut self, a: Action, ev: Event<P, E>) {
        let (no, failed, peers) = match ev {
            Event::Failed(e) => (false, Some(e), None),
            Event::No => (true, None, None),
            Event::Peers(ps) => (false, None, Some(ps)),
            _ => (false, None, None),
        };
        match (a, self.kind) {
            (Action::Begin, _) => {
                self.begun = true;
                if let Some(ps) = peers {
                    let asker_there = self.asker.as_ref().is_some_and(|a| ps.contains(a));
                    self.peers = ps.into_iter().filter(|p| Some(p) != self.asker.as_ref()).collect();
                    if !asker_there {
                        self.asker = None;
                    }
                }
                match self.kind {
                    Kind::Attach => self.doing_next(Action::Reserve),
                    Kind::Detach => self.send(Step::PreDetach),
                    Kind::Forced => self.doing_next(Action::Commit),
                }
            }
            (Action::Reserve, _) => match (no, failed) {
                (_, Some(e)) => self.finish(Err(Failure::Local(e))),
                (true, None) => self.finish(Ok(())),
                (false, None) => self.doing_next(Action::Probe),
            },
            (Action::Probe, _) => match failed {
                Some(e) => {
                    self.failure = Some(Failure::Local(e));
                    self.doing_next(Action::Free);
                }
                None => self.send(Step::Attach),
            },
            (Action::Publish, _) => self.finish(Ok(())),
            (Action::Check, _) => match (no, failed) {
                (_, Some(e)) => self.finish(Err(Failure::Local(e))),
                (true, None) => self.finish(Err(Failure::NotAttached)),
                (false, None) => self.doing_next(Action::Begin),
            },
            (Action::Commit, _) => self.send(Step::Detach),
            // Releasing cannot be refused: a failure is the owner's to log.
            (Action::Release, _) => self.doing_next(Action::Free),
            (Action::Free, _) => {
                let r = match self.failure.take() {
                    Some(f) => Err(f),
                    None => Ok(()),
                };
                self.finish(r);
            }
            (Action::End, _) => self.go(Phase::Done),
            (Action::Recheck | Action::Resync, _) => {}
        }
    }

    fn step_done(&mut self, mut c: Collect<P>, send_err: Option<E>) {
        match c.step {
            Step::Attach => match c.failure(true, send_err) {
                Some(f) => {
                    self.failure = Some(f);
                    self.send(Step::Rollback);
                }
                None => self.doing_next(Action::Publish),
            },
            // Unconfirmed rollbacks are undone by the peers themselves: they handle the primary's
            // steps in order, so a rollback never overtakes the attach it undoes.
            Step::Rollback => self.doing_next(Action::Release),
            Step::PreDetach => match c.failure(true, send_err) {
                Some(f) => self.finish(Err(f)),
                None => self.doing_next(Action::Commit),
            },
            Step::Detach => {
                self.unconfirmed = c.silent.clone();
                if let (Kind::Detach, Some(a)) = (self.kind, &self.asker) {
                    self.unconfirmed.push(a.clone());
                }
                self.detach_refused = c.failure(false, send_err);
                self.doing_next(Action::Release);
            }
        }
    }
}

/// One operation a secondary asks the primary for.
///
/// Attach: ask; refused: done. Granted: Recheck that the port is still the one granted (an
/// operation that overtook the answer, a detach right after, leaves nothing to attach: done),
/// then Probe its own handle, the two under one hold of the process's operation lock, so no
/// step of a later operation comes between; a failed probe asks the primary to undo the attach
/// everywhere (Abort), and fails.
///
/// Detach: Check (a lock here vetoes), ask, Release (and say so: the primary holds the id until
/// then). Refused, or no answer: Recheck; the table says the port is gone (the primary did it and
/// the answer was lost): Release, done.
///
/// An attach without an answer (the primary is silent or died): the primary may have done it or
/// not. The secondary follows the table (Resync), and reports the failure.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AskerOp<P, E> {
    ask: Ask,
    phase: Phase<P>,
    sent: bool,
    failure: Option<Failure<P, E>>,
    result: Option<Result<(), Failure<P, E>>>,
}

impl<P: Clone + Eq + Debug, E: Debug> AskerOp<P, E> {
    /// A new request; `ask` is [`Ask::Attach`] or [`Ask::Detach`].
    pub fn new(ask: Ask) -> AskerOp<P, E> {
        let phase = match ask {
            Ask::Detach => Phase::Doing(Action::Check),
            Ask::Attach | Ask::Abort => Phase::Asking(ask),
        };
        AskerOp { ask, phase, sent: false, failure: None, result: None }
    }

    /// What was asked.
    pub fn ask(&self) -> Ask {
        self.ask
    }

    /// The next command, once per phase.
    pub fn poll(&mut self) -> Option<Command<P>> {
        self.phase.poll(&mut self.sent)
    }

    /// The question waiting for its answer, if any.
    pub fn asking(&self) -> Option<Ask> {
        match self.phase {
            Phase::Asking(a) => Some(a),
            _ => None,
        }
    }

    /// The action being waited for, if any.
    pub fn doing(&self) -> Option<Action> {
        self.phase.doing()
    }

    /// The result, once [`Command::Done`] was given.
    pub fn result(&self) -> Option<&Result<(), Failure<P, E>>> {
        self.result.as_ref()
    }

    /// The result, taken.
    pub fn into_result(self) -> Option<Result<(), Failure<P, E>>> {
        self.result
    }

    fn go(&mut self, phase: Phase<P>) {
        self.phase = phase;
        self.sent = false;
    }

    fn done(&mut self, r: Result<(), Failure<P, E>>) {
        self.result = Some(r);
        self.go(Phase::Done);
    }

    /// Feeds what happened. For a question, [`Event::Timeout`] or [`Event::Died`] mean no answer.
    pub fn handle(&mut self, ev: Event<P, E>) {
        let unanswered = matches!(ev, Event::Timeout | Event::Died(_) | Event::SendFailed(_));
        let (no, failed, lost) = match ev {
            Event::Failed(e) => (false, Some(e), None),
            Event::No => (true, None, None),
            Event::SendFailed(e) => (false, None, Some(e)),
            _ => (false, None, None),
        };
        let silent = |lost: Option<E>| Some(lost.map_or(Failure::Silent(Vec::new()), Failure::Local));
        match self.phase.clone() {
            Phase::Asking(Ask::Attach) => match (failed, unanswered) {
                (_, true) => {
                    self.failure = silent(lost);
                    self.go(Phase::Doing(Action::Resync));
                }
                (Some(e), false) => self.done(Err(Failure::Local(e))),
                (None, false) => self.go(Phase::Doing(Action::Recheck)),
            },
            Phase::Asking(Ask::Abort) => {
                // Answered or not, the attach failed here; without an answer, follow the table.
                if unanswered {
                    self.failure = self.failure.take().map(|f| match f {
                        Failure::Local(e) => Failure::Unconfirmed(e),
                        f => f,
                    });
                    self.go(Phase::Doing(Action::Resync));
                } else {
                    let f = self.failure.take().unwrap_or(Failure::NotAttached);
                    self.done(Err(f));
                }
            }
            Phase::Asking(Ask::Detach) => match (failed, unanswered) {
                (None, false) => self.go(Phase::Doing(Action::Release)),
                (Some(e), false) => {
                    self.failure = Some(Failure::Local(e));
                    self.go(Phase::Doing(Action::Recheck));
                }
                (_, true) => {
                    self.failure = silent(lost);
                    self.go(Phase::Doing(Action::Recheck));
                }
            },
            Phase::Doing(a) => self.action_done(a, no, failed),
            Phase::Collecting(_) | Phase::Done => {}
        }
    }

    fn action_done(&mut self, a: Action, no: bool, failed: Option<E>) {
        match (self.ask, a) {
            (_, Action::Check) => match (no, failed) {
                (_, Some(e)) => self.done(Err(Failure::Local(e))),
                (true, None) => self.done(Err(Failure::NotAttached)),
                (false, None) => self.go(Phase::Asking(Ask::Detach)),
            },
            (_, Action::Probe) => match failed {
                Some(e) => {
                    self.failure = Some(Failure::Local(e));
                    self.go(Phase::Asking(Ask::Abort));
                }
                None => self.done(Ok(())),
            },
            (Ask::Attach | Ask::Abort, Action::Recheck) => match no {
                true => self.done(Ok(())),
                false => self.go(Phase::Doing(Action::Probe)),
            },
            (Ask::Detach, Action::Recheck) => match no {
                true => self.go(Phase::Doing(Action::Release)),
                false => {
                    let f = self.failure.take().unwrap_or(Failure::NotAttached);
                    self.done(Err(f));
                }
            },
            // Released after the primary's yes, or because the table shows the port gone (the
            // primary did the detach and its answer was lost or refused late): done.
            (_, Action::Release) => self.done(Ok(())),
            (_, Action::Resync) => {
                let f = self.failure.take().unwrap_or(Failure::Silent(Vec::new()));
                self.done(Err(f));
            }
            _ => self.done(Ok(())),
        }
    }
}

/// What a secondary's local handle of the port is, as [`answer`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Local {
    /// The generation of the handle this process holds for the port, if any.
    pub have: Option<u32>,
}

/// A secondary's plan for a step the primary told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Plan {
    /// Nothing to do: answer done.
    Nothing,
    /// Probe the port's handle (release the stale one of an older generation first); answer
    /// with the probe's result.
    Probe {
        /// A handle of another generation is held.
        release_first: bool,
    },
    /// Release the handle; answer done (or with the failure a fault reports).
    Release,
    /// The pre-detach check (a lock vetoes); answer with its result.
    Check,
}

/// What a secondary does with `step` for the port's generation `gen`.
///
/// A port's generations only grow, and a slow secondary may find a step of an operation that
/// ended long ago (timed out) behind the steps of newer ones, or after its own attach of a newer
/// generation: a step for an older generation than the handle held changes nothing.
pub fn answer(step: Step, local: Local, gen: u32) -> Plan {
    let newer_held = local.have.is_some_and(|h| h > gen);
    match step {
        Step::Attach if local.have == Some(gen) || newer_held => Plan::Nothing,
        Step::Attach => Plan::Probe { release_first: local.have.is_some() },
        Step::Rollback if local.have == Some(gen) => Plan::Release,
        Step::Rollback => Plan::Nothing,
        Step::PreDetach | Step::Detach if newer_held => Plan::Nothing,
        Step::PreDetach => Plan::Check,
        Step::Detach => Plan::Release,
    }
}

/// Whether the primary may start a secondary's request that waited in its queue: the asker
/// gives up at its deadline, so a request started too late could finish after the asker stopped
/// waiting, done everywhere but in the asker. `left` is the time to the asker's deadline and
/// `worst` the longest the operation can take (two steps of the hotplug timeout, and the local
/// work), in the same unit.
pub fn admit(left: u64, worst: u64) -> bool {
    left >= worst
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = PrimaryOp<u8, &'static str>;
    type Script<'a> = &'a mut dyn FnMut(&Command<u8>) -> Vec<Event<u8, &'static str>>;

    fn run(op: &mut Op, peers: &[u8], script: Script) -> Vec<Command<u8>> {
        let mut seen = Vec::new();
        while let Some(c) = op.poll() {
            seen.push(c.clone());
            if c == Command::Done {
                break;
            }
            if c == Command::Do(Action::Begin) {
                op.handle(Event::Peers(peers.to_vec()));
                continue;
            }
            for ev in script(&c) {
                op.handle(ev);
            }
        }
        seen
    }

    #[test]
    fn an_attach_refused_by_one_peer_is_rolled_back_everywhere_and_fails_with_its_reason() {
        let mut op = Op::new(Kind::Attach, None);
        let cmds = run(&mut op, &[1, 2], &mut |c| match c {
            Command::Send(Step::Attach, _) => vec![Event::Reply(1, None), Event::Reply(2, Some("no memory".into()))],
            Command::Send(Step::Rollback, _) => vec![Event::Reply(1, None), Event::Timeout],
            _ => vec![Event::Ok],
        });
        use Action::*;
        assert_eq!(
            cmds,
            vec![
                Command::Do(Begin),
                Command::Do(Reserve),
                Command::Do(Probe),
                Command::Send(Step::Attach, vec![1, 2]),
                Command::Send(Step::Rollback, vec![1, 2]),
                Command::Do(Release),
                Command::Do(Free),
                Command::Do(End),
                Command::Done
            ]
        );
        assert_eq!(op.result(), Some(&Err(Failure::Refused(2, "no memory".into()))));
    }

    #[test]
    fn a_refusal_wins_over_a_death_and_a_death_over_silence() {
        let mut op = Op::new(Kind::Detach, None);
        run(&mut op, &[1, 2, 3], &mut |c| match c {
            Command::Send(Step::PreDetach, _) => {
                vec![Event::Died(1), Event::Reply(3, Some("locked".into())), Event::Timeout]
            }
            _ => vec![Event::Ok],
        });
        assert_eq!(op.result(), Some(&Err(Failure::Refused(3, "locked".into()))));
        let mut op = Op::new(Kind::Detach, None);
        run(&mut op, &[1, 2], &mut |c| match c {
            Command::Send(Step::PreDetach, _) => vec![Event::Timeout],
            _ => vec![Event::Ok],
        });
        assert_eq!(op.result(), Some(&Err(Failure::Silent(vec![1, 2]))));
    }

    #[test]
    fn a_detach_goes_ahead_when_a_peer_dies_or_refuses_its_release() {
        let mut op = Op::new(Kind::Detach, None);
        let cmds = run(&mut op, &[1, 2], &mut |c| match c {
            Command::Send(Step::Detach, _) => vec![Event::Died(1), Event::Reply(2, Some("fault".into()))],
            Command::Send(_, to) => to.iter().map(|p| Event::Reply(*p, None)).collect(),
            _ => vec![Event::Ok],
        });
        assert!(cmds.contains(&Command::Do(Action::Free)));
        assert_eq!(op.result(), Some(&Ok(())));
        assert_eq!(op.take_detach_refusal(), Some(Failure::Refused(2, "fault".into())));
        assert!(op.unconfirmed().is_empty());
    }

    #[test]
    fn a_detach_names_the_peers_that_did_not_confirm_their_release() {
        let mut op = Op::new(Kind::Detach, None);
        run(&mut op, &[1, 2], &mut |c| match c {
            Command::Send(Step::Detach, _) => vec![Event::Reply(1, None), Event::Timeout],
            Command::Send(_, to) => to.iter().map(|p| Event::Reply(*p, None)).collect(),
            _ => vec![Event::Ok],
        });
        assert_eq!(op.result(), Some(&Ok(())));
        assert_eq!(op.unconfirmed(), &[2]);
    }

    #[test]
    fn a_detach_asked_by_a_secondary_holds_the_id_until_the_asker_lets_go() {
        let mut op = Op::new(Kind::Detach, Some(3));
        let cmds = run(&mut op, &[1, 3], &mut |c| match c {
            Command::Send(_, to) => to.iter().map(|p| Event::Reply(*p, None)).collect(),
            _ => vec![Event::Ok],
        });
        // The asker does its own check and release: told nothing, waited for at no step.
        assert!(cmds.iter().all(|c| !matches!(c, Command::Send(_, to) if to.contains(&3))), "{cmds:?}");
        assert_eq!(op.result(), Some(&Ok(())));
        assert_eq!(op.unconfirmed(), &[3]);
        // The undo of an asker's failed attach: it holds no handle, nothing is held for it.
        let mut op = Op::new(Kind::Forced, Some(3));
        run(&mut op, &[1, 3], &mut |c| match c {
            Command::Send(_, to) => to.iter().map(|p| Event::Reply(*p, None)).collect(),
            _ => vec![Event::Ok],
        });
        assert!(op.unconfirmed().is_empty());
    }

    #[test]
    fn a_check_that_finds_nothing_fails_before_the_operation_begins() {
        let mut op = Op::new(Kind::Forced, None);
        let cmds = run(&mut op, &[1], &mut |_| vec![Event::No]);
        assert_eq!(cmds, vec![Command::Do(Action::Check), Command::Done]);
        assert_eq!(op.result(), Some(&Err(Failure::NotAttached)));
    }

    #[test]
    fn with_no_peers_a_step_needs_no_answers() {
        let mut op = Op::new(Kind::Attach, None);
        let cmds = run(&mut op, &[], &mut |_| vec![Event::Ok]);
        assert!(!cmds.iter().any(|c| matches!(c, Command::Send(..))));
        assert_eq!(op.result(), Some(&Ok(())));
    }

    #[test]
    fn a_secondary_whose_question_goes_unanswered_follows_the_table_and_fails() {
        let mut op: AskerOp<u8, &str> = AskerOp::new(Ask::Attach);
        assert_eq!(op.poll(), Some(Command::Ask(Ask::Attach)));
        op.handle(Event::Timeout);
        assert_eq!(op.poll(), Some(Command::Do(Action::Resync)));
        op.handle(Event::Ok);
        assert_eq!(op.poll(), Some(Command::Done));
        assert_eq!(op.result(), Some(&Err(Failure::Silent(vec![]))));
    }

    #[test]
    fn a_refused_detach_the_table_shows_done_is_followed() {
        let mut op: AskerOp<u8, &str> = AskerOp::new(Ask::Detach);
        assert_eq!(op.poll(), Some(Command::Do(Action::Check)));
        op.handle(Event::Ok);
        assert_eq!(op.poll(), Some(Command::Ask(Ask::Detach)));
        op.handle(Event::Failed("busy"));
        assert_eq!(op.poll(), Some(Command::Do(Action::Recheck)));
        op.handle(Event::No);
        assert_eq!(op.poll(), Some(Command::Do(Action::Release)));
        op.handle(Event::Ok);
        assert_eq!(op.poll(), Some(Command::Done));
        assert_eq!(op.result(), Some(&Ok(())));
    }

    #[test]
    fn a_secondary_answers_a_repeated_attach_with_nothing_and_replaces_a_stale_handle() {
        assert_eq!(answer(Step::Attach, Local { have: Some(3) }, 3), Plan::Nothing);
        assert_eq!(answer(Step::Attach, Local { have: Some(2) }, 3), Plan::Probe { release_first: true });
        assert_eq!(answer(Step::Rollback, Local { have: Some(2) }, 3), Plan::Nothing);
        assert_eq!(answer(Step::Rollback, Local { have: Some(3) }, 3), Plan::Release);
        // Stale steps of an operation that timed out, found after a newer attach: nothing.
        assert_eq!(answer(Step::Attach, Local { have: Some(4) }, 3), Plan::Nothing);
        assert_eq!(answer(Step::Detach, Local { have: Some(4) }, 3), Plan::Nothing);
        assert_eq!(answer(Step::Detach, Local { have: Some(2) }, 3), Plan::Release);
    }
}
