//! The event thread of a process (DPDK's interrupt thread): it waits on the link-status
//! eventfds of this process's ports, and when one fires reads the port's link and tells the
//! callbacks what changed (`LinkUp`, `LinkDown`). Nothing of the data path runs here; a port
//! is locked only to read its link, and only if it is free within [`SLOT_WAIT`].
//!
//! The eventfds are watched through one epoll instance, edge-triggered (an eventfd signals an
//! edge at every write, so its counter need not be read). The thread keeps no descriptor of a
//! port: it registers a copy and closes the copy at once, so the registration lives exactly as
//! long as the driver's own eventfd, and goes (epoll drops it) when the port closes it, with no
//! descriptor left behind in this thread. Ports attached meanwhile are picked up every
//! [`RESYNC`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::Inner;
use crate::ethdev::{PortEvent, PortId};

/// How often the thread looks for ports attached or detached meanwhile.
const RESYNC: Duration = Duration::from_millis(50);
/// How long the thread waits for a port held by a burst loop before trying again later.
const SLOT_WAIT: Duration = Duration::from_millis(5);

struct Watched {
    gen: u32,
    up: bool,
    /// The fd fired but the port was busy (a long burst holds it): look again next round.
    pending: bool,
}

pub(super) fn start(inner: &Arc<Inner>) {
    let w: Weak<Inner> = Arc::downgrade(inner);
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("no event thread (epoll: {e}): link changes are not reported as events");
            return;
        }
    };
    let _ = std::thread::Builder::new().name("lab-events".into()).spawn(move || run(&w, &epoll));
}

fn run(w: &Weak<Inner>, epoll: &Epoll) {
    let mut watched: HashMap<PortId, Watched> = HashMap::new();
    let mut events = [EpollEvent::empty(); 16];
    loop {
        {
            let Some(inner) = w.upgrade() else { return };
            if inner.stop.load(Ordering::Relaxed) {
                return;
            }
            resync(&inner, epoll, &mut watched);
        }
        let timeout = EpollTimeout::try_from(RESYNC.as_millis() as i32).unwrap_or(EpollTimeout::NONE);
        let n = epoll.wait(&mut events, timeout).unwrap_or(0);
        for ev in &events[..n] {
            if let Some(wt) = watched.get_mut(&PortId(ev.data() as u16)) {
                wt.pending = true;
            }
        }
        let Some(inner) = w.upgrade() else { return };
        for (p, wt) in watched.iter_mut().filter(|(_, wt)| wt.pending) {
            // The port is read only if it is free within a moment: a burst loop holding it is
            // not waited for (the event is looked at again next round).
            let Ok(mut slot) = inner.ports.slot_within(*p, SLOT_WAIT) else { continue };
            wt.pending = false;
            let Some(l) = slot.as_mut() else { continue };
            // Acknowledged first, then read: a change after the read raises the interrupt
            // again (acknowledged after the read, it would be cleared unseen).
            let up = l.dev.link_after_irq().up;
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
fn resync(inner: &Inner, epoll: &Epoll, watched: &mut HashMap<PortId, Watched>) {
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
    // A port gone took its registration with it (its eventfd closed).
    watched.retain(|p, w| held.get(p) == Some(&w.gen));
    for (p, gen) in held {
        if watched.contains_key(&p) {
            continue;
        }
        let Ok(mut s) = inner.ports.slot_within(p, SLOT_WAIT) else { continue };
        let Some(l) = s.as_mut() else { continue };
        // The state as of the interrupt's setup: a change since has signalled the fd already,
        // so the first round reads the link (pending) and compares.
        if let Some((fd, up)) = l.dev.link_event_fd() {
            let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, u64::from(p.0));
            match epoll.add(&fd, ev) {
                Ok(()) => {
                    watched.insert(p, Watched { gen, up, pending: true });
                }
                Err(e) => tracing::warn!(port = %p, "cannot watch the link-status eventfd: {e}"),
            }
            // `fd` (the copy) closes here; the registration stays with the driver's eventfd.
        }
    }
}
