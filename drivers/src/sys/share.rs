//! Descriptors the primary hands to secondaries over the IPC channel.
//!
//! The primary [`publish`]es duplicates of a device's descriptors under its runtime dir and device
//! name and registers the driver's action once per channel (a second registration is refused by
//! the channel as a duplicate, which is what "once" means here). A secondary [`fetch`]es them:
//! one `request_sync` to the primary per 8 descriptors (the channel's limit). The published
//! duplicates are closed when the [`Published`] handle is dropped (port removed).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use lab_core::ipc::{Channel, Dispatch, IpcError, Msg, MAX_FDS};
use lab_core::runtime::Runtime;

use crate::error::{Ctx, DriverError};

struct Entry {
    fds: Vec<OwnedFd>,
    meta: Vec<u8>,
}

fn table() -> &'static Mutex<HashMap<String, Entry>> {
    static T: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn key(dir: &std::path::Path, dev: &str) -> String {
    format!("{}\n{dev}", dir.display())
}

/// Keeps a device's descriptors published; withdraws (closes the duplicates) on drop.
pub(crate) struct Published {
    key: String,
}

impl Published {
    /// Replaces what is published (a device whose descriptors change: a new front end's memory).
    pub(crate) fn update(&self, fds: &[OwnedFd], meta: Vec<u8>) -> Result<(), DriverError> {
        let dups =
            fds.iter().map(|f| f.try_clone()).collect::<Result<Vec<_>, _>>().ctx("dup of a shared descriptor")?;
        table().lock().unwrap_or_else(|e| e.into_inner()).insert(self.key.clone(), Entry { fds: dups, meta });
        Ok(())
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        table().lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// Primary: publishes duplicates of `fds` (and `meta`, returned to fetchers as is) for `dev`,
/// and makes sure `action` answers for them on this runtime's channel.
pub(crate) fn publish(
    rt: &Runtime,
    action: &'static str,
    dev: &str,
    fds: &[OwnedFd],
    meta: Vec<u8>,
) -> Result<Published, DriverError> {
    let dups = fds.iter().map(|f| f.try_clone()).collect::<Result<Vec<_>, _>>().ctx("dup of a shared descriptor")?;
    let dir = rt.dir().to_path_buf();
    let k = key(&dir, dev);
    table().lock().unwrap_or_else(|e| e.into_inner()).insert(k.clone(), Entry { fds: dups, meta });
    let published = Published { key: k };
    match rt.ipc().register_action(action, Dispatch::Inline, move |ch, req| {
        let text = String::from_utf8_lossy(&req.msg.payload).into_owned();
        let (dev, start) = match text.split_once('\n') {
            Some((d, s)) => (d.to_string(), s.trim().parse::<usize>().unwrap_or(0)),
            None => (text.clone(), 0),
        };
        let reply = {
            let t = table().lock().unwrap_or_else(|e| e.into_inner());
            match t.get(&key(&dir, &dev)) {
                Some(e) => {
                    let end = (start + MAX_FDS).min(e.fds.len());
                    let fds: Result<Vec<OwnedFd>, _> =
                        e.fds.get(start..end).unwrap_or(&[]).iter().map(|f| f.try_clone()).collect();
                    match fds {
                        Ok(fds) => {
                            let mut p = format!("ok {}\n", e.fds.len()).into_bytes();
                            p.extend_from_slice(&e.meta);
                            Msg::new(action, p).with_fds(fds)
                        }
                        Err(err) => Msg::new(action, format!("err dup: {err}")),
                    }
                }
                None => Msg::new(action, format!("err device {dev} is not attached in the primary")),
            }
        };
        if let Err(e) = ch.reply(req, &reply) {
            tracing::warn!(action, error = %e, "could not answer a descriptor request");
        }
    }) {
        Ok(()) | Err(IpcError::Duplicate { .. }) => Ok(published),
        Err(e) => Err(e).ctx(format!("registering {action}")),
    }
}

/// Secondary: asks the primary for `dev`'s descriptors; returns them and the primary's meta.
pub(crate) fn fetch(rt: &Runtime, action: &str, dev: &str) -> Result<(Vec<OwnedFd>, Vec<u8>), DriverError> {
    fetch_on(rt.ipc(), fetch_timeout(rt), action, dev)
}

/// How long a [`fetch`] waits for the primary: the hotplug timeout, at least a second.
pub(crate) fn fetch_timeout(rt: &Runtime) -> Duration {
    Duration::from_millis(rt.options().hotplug_timeout_ms.max(1000))
}

/// [`fetch`] over a channel (from a thread of the driver's, which holds no runtime).
pub(crate) fn fetch_on(
    ch: &Channel,
    timeout: Duration,
    action: &str,
    dev: &str,
) -> Result<(Vec<OwnedFd>, Vec<u8>), DriverError> {
    let mut fds = Vec::new();
    let mut meta = Vec::new();
    loop {
        let msg = Msg::new(action, format!("{dev}\n{}", fds.len()));
        let r = ch.request_sync(&msg, timeout).ctx(format!("asking the primary for {dev}'s descriptors ({action})"))?;
        let Some(rep) = r.replies.into_iter().next() else {
            return Err(DriverError::state(format!("the primary did not answer {action} within {timeout:?}")));
        };
        let p = rep.msg.payload;
        let nl = p.iter().position(|b| *b == b'\n').unwrap_or(p.len());
        let head = String::from_utf8_lossy(&p[..nl]).into_owned();
        let total = match head.strip_prefix("ok ").and_then(|n| n.trim().parse::<usize>().ok()) {
            Some(t) => t,
            None => {
                let why = head.strip_prefix("err ").unwrap_or(&head);
                return Err(DriverError::state(format!("the primary refused: {why}")));
            }
        };
        meta.clear();
        meta.extend_from_slice(p.get(nl + 1..).unwrap_or(&[]));
        let got = rep.msg.fds.len();
        fds.extend(rep.msg.fds);
        if fds.len() >= total {
            break;
        }
        if got == 0 {
            return Err(DriverError::state(format!("the primary sent {} of {total} descriptors", fds.len())));
        }
    }
    Ok((fds, meta))
}
