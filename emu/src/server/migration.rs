//! vfio-user migration (the v2 protocol of linux/vfio.h, which vfio-user's DEVICE_FEATURE and
//! MIG_DATA_READ/WRITE carry): the device state machine and the data stream of one function.
//!
//! States offered: RUNNING, STOP, STOP_COPY, RESUMING, PRE_COPY (no P2P states). A SET names the
//! target; the server walks the direct arcs to it, as the kernel does for combination arcs
//! (RUNNING to RESUMING passes through STOP). Outside RUNNING and PRE_COPY the device thread does
//! not poll the model: no DMA, no interrupts, registers keep what they hold. Entering STOP_COPY
//! takes the model's snapshot, which MIG_DATA_READ hands out in chunks (a read of 0 bytes: all
//! given); PRE_COPY offers no early data (a NIC's state is small). In RESUMING, MIG_DATA_WRITE
//! collects a stream (at most [`MAX_STATE`] bytes), loaded into the model on the way to STOP; a
//! stream the model refuses puts the device in ERROR, left only by a DEVICE_RESET.

use super::DeviceState;

pub(super) const ERROR: u32 = 0;
pub(super) const STOP: u32 = 1;
pub(super) const RUNNING: u32 = 2;
pub(super) const STOP_COPY: u32 = 3;
pub(super) const RESUMING: u32 = 4;
pub(super) const PRE_COPY: u32 = 6;
/// Largest device state a destination accepts (per-connection memory stays bounded).
pub(super) const MAX_STATE: usize = 16 << 20;

/// A function's migration state and its data stream.
#[derive(Debug)]
pub(super) struct Migration {
    pub(super) state: u32,
    out: Vec<u8>,
    given: usize,
    incoming: Vec<u8>,
}

impl Default for Migration {
    fn default() -> Self {
        Migration { state: RUNNING, out: Vec::new(), given: 0, incoming: Vec::new() }
    }
}

fn arcs(s: u32) -> &'static [u32] {
    match s {
        RUNNING => &[STOP, PRE_COPY],
        STOP => &[RUNNING, STOP_COPY, RESUMING],
        STOP_COPY | RESUMING => &[STOP],
        PRE_COPY => &[RUNNING, STOP_COPY],
        _ => &[],
    }
}

/// The states from `from` to `to` along direct arcs (shortest), without `from`.
fn path(from: u32, to: u32) -> Option<Vec<u32>> {
    let mut prev = [u32::MAX; 8];
    let mut queue = std::collections::VecDeque::from([from]);
    prev[from as usize] = from;
    while let Some(s) = queue.pop_front() {
        if s == to {
            let mut p = vec![to];
            let mut c = to;
            while prev[c as usize] != from {
                c = prev[c as usize];
                p.push(c);
            }
            p.reverse();
            return Some(p);
        }
        for &n in arcs(s) {
            if prev[n as usize] == u32::MAX {
                prev[n as usize] = s;
                queue.push_back(n);
            }
        }
    }
    None
}

impl Migration {
    /// Whether the device runs (the device thread polls the model).
    pub(super) fn running(&self) -> bool {
        matches!(self.state, RUNNING | PRE_COPY)
    }
}

/// Moves `d` to `target`. Errors: EINVAL for a state not offered or not reachable (from ERROR
/// nothing is), ENOTSUP if the model cannot be migrated, EINVAL if the model refused the stream
/// (the device is then in ERROR).
pub(super) fn set_state(d: &mut DeviceState, bdf: &str, target: u32) -> Result<(), i32> {
    if !matches!(target, STOP | RUNNING | STOP_COPY | RESUMING | PRE_COPY) {
        return Err(libc::EINVAL);
    }
    if !d.model.can_migrate() {
        return Err(libc::ENOTSUP);
    }
    let cur = d.mig.state;
    if cur == target {
        return Ok(());
    }
    let steps = path(cur, target).ok_or(libc::EINVAL)?;
    for s in steps {
        let from = d.mig.state;
        match (from, s) {
            (_, STOP_COPY) => {
                d.mig.out = d.model.save().ok_or(libc::ENOTSUP)?;
                d.mig.given = 0;
            }
            (_, PRE_COPY) => {
                d.mig.out.clear();
                d.mig.given = 0;
            }
            (_, RESUMING) => d.mig.incoming.clear(),
            (RESUMING, STOP) => {
                let stream = std::mem::take(&mut d.mig.incoming);
                if let Err(why) = d.model.load(&stream) {
                    tracing::warn!(bdf, "migration stream refused ({} bytes): {why}", stream.len());
                    d.mig.state = ERROR;
                    return Err(libc::EINVAL);
                }
            }
            (STOP_COPY, STOP) => {
                d.mig.out = Vec::new();
                d.mig.given = 0;
            }
            _ => {}
        }
        tracing::info!(bdf, from, to = s, "migration state");
        d.mig.state = s;
    }
    Ok(())
}

/// Up to `max` bytes of the device state (PRE_COPY, STOP_COPY); empty when all was given.
pub(super) fn read(d: &mut DeviceState, max: usize) -> Result<Vec<u8>, i32> {
    if !matches!(d.mig.state, PRE_COPY | STOP_COPY) {
        return Err(libc::EINVAL);
    }
    let m = &mut d.mig;
    let n = max.min(m.out.len() - m.given);
    let chunk = m.out[m.given..m.given + n].to_vec();
    m.given += n;
    Ok(chunk)
}

/// Appends `data` to the incoming stream (RESUMING).
pub(super) fn write(d: &mut DeviceState, data: &[u8]) -> Result<(), i32> {
    if d.mig.state != RESUMING {
        return Err(libc::EINVAL);
    }
    if d.mig.incoming.len() + data.len() > MAX_STATE {
        return Err(libc::EFBIG);
    }
    d.mig.incoming.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combination_arcs_go_through_stop() {
        assert_eq!(path(RUNNING, RESUMING), Some(vec![STOP, RESUMING]));
        assert_eq!(path(PRE_COPY, STOP), Some(vec![RUNNING, STOP]));
        assert_eq!(path(RUNNING, STOP_COPY), Some(vec![STOP, STOP_COPY]));
        assert_eq!(path(STOP_COPY, RUNNING), Some(vec![STOP, RUNNING]));
        assert_eq!(path(ERROR, RUNNING), None, "ERROR is left only by a reset");
    }
}
