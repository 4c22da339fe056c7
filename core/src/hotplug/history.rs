//! The last hotplug operations this process took part in, for telemetry's `/lab/hotplug`: what
//! was asked, from whom, the outcome, and at each step every process's answer (the primary sees
//! them all; a secondary records its own requests and what the primary told it to do).
//!
//! Control path only: one short mutex per finished operation, never touched by rx/tx. The record
//! keeps the last [`KEEP`] operations; a test or a user's tool reads it to check that a process
//! saw every change.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::ethdev::PortId;
use crate::ipc::Replies;

use super::{process_name, HotplugError};

/// Operations kept.
pub(crate) const KEEP: usize = 64;

/// One process's answer at one step.
#[derive(Debug, Clone)]
struct Answer {
    process: String,
    step: &'static str,
    /// "ok", the process's error text, "no answer" or "died".
    answer: String,
}

/// A finished operation.
#[derive(Debug, Clone)]
struct Op {
    seq: u64,
    op: &'static str,
    target: String,
    from: String,
    port: Option<PortId>,
    error: Option<String>,
    answers: Vec<Answer>,
    started_unix_ms: u64,
    duration_us: u64,
}

/// An operation under way: its answers are added step by step, then [`History::finish`] files it.
pub(crate) struct Pending {
    op: &'static str,
    target: String,
    from: String,
    started: Instant,
    started_unix_ms: u64,
    answers: Vec<Answer>,
}

impl Pending {
    /// Starts the record of `op` on `target`, asked by `from` (a process name).
    pub(crate) fn new(op: &'static str, target: &str, from: String) -> Pending {
        let started_unix_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
        Pending { op, target: target.into(), from, started: Instant::now(), started_unix_ms, answers: Vec::new() }
    }

    /// Every peer's answer to the request of `step`: replies, then the silent and the dead.
    pub(crate) fn replies(&mut self, step: &'static str, r: &Replies) {
        for rep in &r.replies {
            let t = String::from_utf8_lossy(&rep.msg.payload);
            let answer = match t.strip_prefix("err:") {
                Some(e) => e.to_string(),
                None => "ok".into(),
            };
            self.answers.push(Answer { process: process_name(&rep.peer.name()), step, answer });
        }
        for (names, what) in [(&r.missing, "no answer"), (&r.dead, "died")] {
            for n in names {
                self.answers.push(Answer { process: process_name(n), step, answer: what.into() });
            }
        }
        for (n, e) in &r.unsent {
            self.answers.push(Answer { process: process_name(n), step, answer: format!("not sent: {e}") });
        }
    }

    /// One answer (this process's own, or the primary's to a secondary's request).
    pub(crate) fn answer(&mut self, process: &str, step: &'static str, r: &Result<impl Sized, HotplugError>) {
        let answer = match r {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        };
        self.answers.push(Answer { process: process.into(), step, answer });
    }
}

/// The record.
#[derive(Debug, Default)]
pub(crate) struct History {
    ops: Mutex<(u64, VecDeque<Op>)>,
}

impl History {
    /// Files a finished operation (the oldest goes when [`KEEP`] are held).
    pub(crate) fn finish<T>(&self, p: Pending, port: Option<PortId>, outcome: &Result<T, HotplugError>) {
        let mut g = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let op = Op {
            seq: g.0,
            op: p.op,
            target: p.target,
            from: p.from,
            port,
            error: outcome.as_ref().err().map(|e| e.to_string()),
            answers: p.answers,
            started_unix_ms: p.started_unix_ms,
            duration_us: p.started.elapsed().as_micros() as u64,
        };
        if g.1.len() == KEEP {
            g.1.pop_front();
        }
        g.1.push_back(op);
    }

    /// `{"total": N, "operations": [...]}`, oldest first.
    pub(crate) fn to_json(&self) -> Value {
        let g = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let ops: Vec<Value> =
            g.1.iter()
                .map(|o| {
                    json!({
                        "seq": o.seq, "op": o.op, "target": o.target, "from": o.from,
                        "port": o.port.map(|p| p.0),
                        "outcome": if o.error.is_none() { "ok" } else { "failed" },
                        "error": o.error,
                        "answers": o.answers.iter().map(|a| json!({
                            "process": a.process, "step": a.step, "answer": a.answer,
                        })).collect::<Vec<_>>(),
                        "started_unix_ms": o.started_unix_ms, "duration_us": o.duration_us,
                    })
                })
                .collect();
        json!({ "total": g.0, "operations": ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_operations_with_their_answers_and_outcome() {
        let h = History::default();
        for i in 0..KEEP + 3 {
            let mut p = Pending::new("attach", &format!("net_null{i}"), "the primary".into());
            let r: Result<(), HotplugError> =
                if i % 2 == 0 { Ok(()) } else { Err(HotplugError::Remote("no memory".into())) };
            p.answer("process 7", "attach", &r);
            h.finish(p, Some(PortId(i as u16)), &r);
        }
        let v = h.to_json();
        assert_eq!(v["total"], (KEEP + 3) as u64);
        let ops = v["operations"].as_array().unwrap();
        assert_eq!(ops.len(), KEEP);
        assert_eq!(ops[0]["target"], "net_null3", "the oldest three went");
        assert_eq!(ops[0]["outcome"], "failed");
        assert_eq!(ops[0]["error"], "no memory");
        assert_eq!(ops[0]["answers"][0]["answer"], "no memory");
        assert_eq!(ops[1]["outcome"], "ok");
        assert_eq!(ops[1]["answers"][0]["process"], "process 7");
    }
}
