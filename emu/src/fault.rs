//! Recorded device faults: DMA outside every map, bad register accesses, malformed descriptors.
//!
//! A fault never stops the emulator. It is kept in a bounded list (oldest dropped first), counted, and
//! logged once per kind so a misbehaving driver cannot flood the log.

use std::collections::{HashSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many fault records are kept.
pub const FAULT_HISTORY: usize = 64;

/// One recorded fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Wall-clock time, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The address involved (an IOVA for DMA faults, a region offset for access faults).
    pub iova: u64,
    /// Length of the access in bytes.
    pub len: u64,
    /// What the device was doing (a static kind such as "rx descriptor read").
    pub what: &'static str,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "time_us={} iova={:#x} len={} what=\"{}\"", self.time_us, self.iova, self.len, self.what)
    }
}

/// Bounded fault history with a total count.
#[derive(Debug, Default)]
pub struct FaultLog {
    records: VecDeque<Fault>,
    total: u64,
    logged: HashSet<&'static str>,
}

impl FaultLog {
    /// Records a fault (logs the first one of each kind). Cold: the data path calls it only
    /// when something went wrong, and keeping it out of line keeps its loops tight.
    #[cold]
    #[inline(never)]
    pub fn record(&mut self, iova: u64, len: u64, what: &'static str) {
        let time_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        if self.logged.insert(what) {
            tracing::warn!(
                iova = format_args!("{iova:#x}"),
                len,
                "device fault: {what} (further faults of this kind are counted, not logged)"
            );
        }
        if self.records.len() == FAULT_HISTORY {
            self.records.pop_front();
        }
        self.records.push_back(Fault { time_us, iova, len, what });
        self.total += 1;
    }

    /// Total number of faults since creation.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The last `n` records, oldest first.
    pub fn last(&self, n: usize) -> Vec<Fault> {
        let skip = self.records.len().saturating_sub(n);
        self.records.iter().skip(skip).cloned().collect()
    }

    /// True if a fault of this kind was ever recorded.
    pub fn has(&self, what: &str) -> bool {
        self.records.iter().any(|f| f.what == what) || self.logged.contains(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_counted() {
        let mut l = FaultLog::default();
        for i in 0..(FAULT_HISTORY as u64 + 10) {
            l.record(i, 4, "x");
        }
        assert_eq!(l.total(), FAULT_HISTORY as u64 + 10);
        assert_eq!(l.last(1000).len(), FAULT_HISTORY);
        assert_eq!(l.last(1)[0].iova, FAULT_HISTORY as u64 + 9);
        assert!(l.has("x"));
    }
}
