//! The event thread of a process (DPDK's interrupt thread): it waits on the link-status
//! eventfds of this process's ports, and when one fires reads the port's link and tells the
//! callbacks what changed (`LinkUp`, `LinkDown`). Ports come and go: the set of fds is brought
//! up to date every [`RESYNC`] and whenever one fires. Nothing of the data path runs here; the
//! port is locked only to read its link.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::Inner;
use crate::ethdev::{PortEvent, PortId};

/// How often the thread looks for ports attached or detached meanwhile.
const RESYNC: Duration = Duration::from_millis(50);

struct Watched {
    fd: OwnedFd,
    gen: u32,
    up: bool,
    /// The fd fired but the port was busy (a long burst holds it): look again next round.
    pending: bool,
}

/// How long the thread waits for a port held by a burst loop before trying again later.
const SLOT_WAIT: Duration = Duration::from_millis(5);

pub(super) fn start(inner: &Arc<Inner>) {
    let w: Weak<Inner> = Arc::downgrade(inner);
    let _ = std::thread::Builder::new().name("lab-events".into()).spawn(move || run(&w));
}

fn run(w: &Weak<Inner>) {
    let mut watched: HashMap<PortId, Watched> = HashMap::new();
    loop {
        {
            let Some(inner) = w.upgrade() else { return };
            if inner.stop.load(Ordering::Relaxed) {
                return;
            }
            resync(&inner, &mut watched);
        }
        let ports: Vec<PortId> = watched.keys().copied().collect();
        let mut fds: Vec<PollFd<'_>> =
            ports.iter().map(|p| PollFd::new(watched[p].fd.as_fd(), PollFlags::POLLIN)).collect();
        let timeout = PollTimeout::try_from(RESYNC.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        let n = poll(&mut fds, timeout).unwrap_or(0);
        let fired: Vec<PortId> = ports
            .iter()
            .zip(&fds)
            .filter(|(_, f)| n > 0 && f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
            .map(|(p, _)| *p)
            .collect();
        drop(fds);
        let Some(inner) = w.upgrade() else { return };
        for (p, wt) in watched.iter_mut() {
            if fired.contains(p) {
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(wt.fd.as_raw_fd(), &mut b);
                wt.pending = true;
            }
            if !wt.pending {
                continue;
            }
            // The port is read only if it is free within a moment: a burst loop holding it is
            // not waited for (the event is looked at again next round).
            let Ok(mut slot) = inner.ports.slot_within(*p, SLOT_WAIT) else { continue };
            wt.pending = false;
            let Some(l) = slot.as_mut() else { continue };
            let up = l.dev.link().up;
            l.dev.link_irq_ack();
            drop(slot);
            if up != wt.up {
                wt.up = up;
                tracing::info!(port = %p, "link {}", if up { "up" } else { "down" });
                inner.ports.fire(*p, if up { PortEvent::LinkUp } else { PortEvent::LinkDown });
            }
        }
    }
}

/// Watches the ports this process holds now (a port attached again is a new generation).
fn resync(inner: &Inner, watched: &mut HashMap<PortId, Watched>) {
    let mut held = HashMap::new();
    for p in inner.ports.ids() {
        match inner.ports.slot_within(p, SLOT_WAIT) {
            Ok(s) => {
                if let Some(l) = s.as_ref() {
                    held.insert(p, l.gen);
                }
            }
            // Busy: keep watching it as it was.
            Err(_) => {
                if let Some(w) = watched.get(&p) {
                    held.insert(p, w.gen);
                }
            }
        }
    }
    watched.retain(|p, w| held.get(p) == Some(&w.gen));
    for (p, gen) in held {
        if watched.contains_key(&p) {
            continue;
        }
        let Ok(mut s) = inner.ports.slot_within(p, SLOT_WAIT) else { continue };
        let Some(l) = s.as_mut() else { continue };
        // The state as of the interrupt's setup: a change since has signalled the fd already.
        if let Some((fd, up)) = l.dev.link_event_fd() {
            watched.insert(p, Watched { fd, gen, up, pending: false });
        }
    }
}
