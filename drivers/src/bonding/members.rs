//! The bond's member table in shared memory (memzone `bond_<port>_m`): one slot per member
//! (its device name, or empty), so that a member added or removed at runtime, from any process,
//! reaches every process's bond: each one's thread sees the table's epoch move and resolves the
//! names in its own port table.
//!
//! Writers (a `member_add`/`member_remove` in any process) take the table's lock word with their
//! pid, and take it over from a dead one (a writer that crashed holding it never blocks the
//! others); readers never wait: the epoch is odd while a write is in progress, and a read that
//! saw it move is taken again (a seqlock).

use std::sync::atomic::{fence, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab_core::ethdev::PortId;
use lab_core::mem::{Shm, ShmOffset};

use super::MAX_MEMBERS;
use crate::error::{Ctx, DriverError};

/// Bytes of a member's name at most (with room for the terminating zero).
pub(crate) const NAME_LEN: usize = 64;
const MAGIC: u32 = 0x424f_4e44;
/// magic, lock, epoch, the bond's MAC (two words), then the names.
const HDR: usize = 20;
const LEN: u64 = (HDR + MAX_MEMBERS * NAME_LEN) as u64;

/// The member slots as a table read gives them.
pub(crate) type Slots = [Option<String>; MAX_MEMBERS];

/// A handle on one bond's table.
pub(crate) struct MemberTable {
    shm: Arc<Shm>,
    off: ShmOffset,
    name: String,
    owner: bool,
}

impl MemberTable {
    fn zone(port: PortId) -> String {
        format!("bond_{}_m", port.0)
    }

    /// Creates the table of the primary's bond with its first members.
    pub(crate) fn create(
        shm: &Arc<Shm>,
        port: PortId,
        mac: [u8; 6],
        members: &[&str],
    ) -> Result<MemberTable, DriverError> {
        let name = MemberTable::zone(port);
        let z = shm.reserve(&name, LEN, 64).ctx(format!("memzone {name} (the bond's member table)"))?;
        let t = MemberTable { shm: shm.clone(), off: z.offset, name, owner: true };
        if z.len < LEN || shm.ptr(z.offset, LEN).is_none() {
            return Err(DriverError::state(format!("memzone {} is too small", t.name)));
        }
        for (k, m) in members.iter().enumerate() {
            t.put_name(k, Some(m));
        }
        for k in members.len()..MAX_MEMBERS {
            t.put_name(k, None);
        }
        t.word(1).store(0, Ordering::Relaxed);
        t.word(2).store(2, Ordering::Relaxed);
        t.word(3).store(u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]), Ordering::Relaxed);
        t.word(4).store(u32::from(u16::from_le_bytes([mac[4], mac[5]])), Ordering::Relaxed);
        t.word(0).store(MAGIC, Ordering::Release);
        Ok(t)
    }

    /// Finds the table of the primary's bond on port `port`.
    pub(crate) fn open(shm: &Arc<Shm>, port: PortId) -> Result<MemberTable, DriverError> {
        let name = MemberTable::zone(port);
        let z = shm.lookup(&name).ctx(format!("memzone {name} (the primary's bond member table)"))?;
        let t = MemberTable { shm: shm.clone(), off: z.offset, name, owner: false };
        if z.len < LEN || shm.ptr(z.offset, LEN).is_none() || t.word(0).load(Ordering::Acquire) != MAGIC {
            return Err(DriverError::state(format!("memzone {} holds no bond member table", t.name)));
        }
        Ok(t)
    }

    fn base(&self) -> *mut u8 {
        self.shm.ptr(self.off, LEN).expect("checked at open").as_ptr()
    }

    #[allow(unsafe_code)]
    fn word(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the first HDR bytes of a 64-aligned zone of LEN bytes inside the mapping
        // `self.shm` keeps alive, used only as u32 atomics by every process.
        unsafe { &*self.base().add(4 * i).cast::<AtomicU32>() }
    }

    #[allow(unsafe_code)]
    fn byte(&self, k: usize, i: usize) -> &AtomicU8 {
        debug_assert!(k < MAX_MEMBERS && i < NAME_LEN);
        // SAFETY: slot k's byte i lies inside the zone (HDR + k * NAME_LEN + i < LEN), inside
        // the mapping; bytes are only accessed as atomics (a reader may race a writer: the
        // seqlock discards such a read).
        unsafe { &*self.base().add(HDR + k * NAME_LEN + i).cast::<AtomicU8>() }
    }

    fn put_name(&self, k: usize, name: Option<&str>) {
        let b = name.unwrap_or("").as_bytes();
        for i in 0..NAME_LEN {
            self.byte(k, i).store(b.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
    }

    fn get_name(&self, k: usize) -> Option<String> {
        let b: Vec<u8> =
            (0..NAME_LEN).map(|i| self.byte(k, i).load(Ordering::Relaxed)).take_while(|&c| c != 0).collect();
        // Untrusted memory: a name that is not UTF-8 is no member.
        (!b.is_empty()).then(|| String::from_utf8(b).ok()).flatten()
    }

    /// The bond's MAC, as the primary chose it (its first member's at probe).
    pub(crate) fn mac(&self) -> [u8; 6] {
        let (a, b) = (self.word(3).load(Ordering::Relaxed).to_le_bytes(), self.word(4).load(Ordering::Relaxed));
        [a[0], a[1], a[2], a[3], b as u8, (b >> 8) as u8]
    }

    /// The table's epoch (even; it moves on every change).
    pub(crate) fn epoch(&self) -> u32 {
        self.word(2).load(Ordering::Acquire)
    }

    /// The slots and the epoch they are of; None while a write is in progress (try again).
    pub(crate) fn read(&self) -> Option<(u32, Slots)> {
        let e = self.epoch();
        if e % 2 == 1 {
            return None;
        }
        let slots: Slots = std::array::from_fn(|k| self.get_name(k));
        fence(Ordering::Acquire);
        (self.word(2).load(Ordering::Relaxed) == e).then_some((e, slots))
    }

    /// Changes the slots with `f` under the table's lock (taken from a dead holder; at most
    /// `within` waiting for a live one). `f` returns the new slots, or an error that changes
    /// nothing.
    pub(crate) fn update<R>(
        &self,
        within: Duration,
        f: impl FnOnce(&Slots) -> Result<(Slots, R), DriverError>,
    ) -> Result<R, DriverError> {
        let me = std::process::id();
        let lock = self.word(1);
        let end = Instant::now() + within;
        loop {
            let holder = lock.load(Ordering::Relaxed);
            let free = holder == 0 || !pid_alive(holder);
            if free && lock.compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                break;
            }
            if Instant::now() > end {
                return Err(DriverError::state(format!("{}: locked by pid {holder} for {within:?}", self.name)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // A writer that died mid-write left the epoch odd: its slots are rewritten whole here.
        let e = self.word(2).load(Ordering::Relaxed) | 1;
        let now: Slots = std::array::from_fn(|k| self.get_name(k));
        let r = f(&now).map(|(new, r)| {
            self.word(2).store(e, Ordering::Relaxed);
            fence(Ordering::Release);
            for (k, n) in new.iter().enumerate() {
                self.put_name(k, n.as_deref());
            }
            self.word(2).store(e.wrapping_add(1), Ordering::Release);
            r
        });
        lock.store(0, Ordering::Release);
        r
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else { return false };
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None), Err(nix::errno::Errno::ESRCH))
}

impl Drop for MemberTable {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.shm.free(&self.name);
        }
    }
}
