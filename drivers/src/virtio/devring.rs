//! The device side of a split virtqueue (virtio 1.2, 2.7) in memory another process owns:
//! net_vhost's data path. The ring parts are found once, as host addresses inside the front
//! end's mapped regions; each burst then reads the available index once, walks chains with
//! plain loads (every index from the front end bounded before use), writes used elements, and
//! publishes the used index once.
//!
//! (virtio-queue's `Queue` did this through vm-memory's per-access region walk, which was a
//! fifth of the back end's time at 64 bytes: the control path still keeps the crates, this does
//! the bursts.)

use std::sync::atomic::{fence, Ordering};

/// Descriptor flag: the chain goes on at `next`.
pub(crate) const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub(crate) const F_WRITE: u16 = 2;
/// Descriptor flag: an indirect table (not negotiated: refused).
pub(crate) const F_INDIRECT: u16 = 4;
const USED_F_NO_NOTIFY: u16 = 1;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One descriptor as the front end wrote it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Desc {
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) flags: u16,
    pub(crate) next: u16,
}

/// A started virtqueue: host addresses of its three parts, its size, and our two indices.
#[derive(Debug)]
pub(crate) struct DevRing {
    desc: usize,
    avail: usize,
    used: usize,
    n: u16,
    pub(crate) next_avail: u16,
    next_used: u16,
}

impl DevRing {
    /// `at(gpa, len)` gives the host address of a guest range inside one mapped region. None
    /// when a part of the ring is not (or the size is not a power of 2 up to 32768).
    pub(crate) fn new(
        at: impl Fn(u64, usize) -> Option<*mut u8>,
        (desc, avail, used): (u64, u64, u64),
        n: u16,
        base: u16,
    ) -> Option<DevRing> {
        if n == 0 || !n.is_power_of_two() || n > 32768 {
            return None;
        }
        let k = usize::from(n);
        let d = at(desc, 16 * k)? as usize;
        let a = at(avail, 6 + 2 * k)? as usize;
        let u = at(used, 6 + 8 * k)? as usize;
        if !d.is_multiple_of(16) || !a.is_multiple_of(2) || !u.is_multiple_of(4) {
            return None;
        }
        Some(DevRing { desc: d, avail: a, used: u, n, next_avail: base, next_used: base })
    }

    fn load16(p: usize) -> u16 {
        // SAFETY: every caller passes an address inside a ring part that `new` checked lies in a
        // mapped region (which the owner keeps mapped while this ring exists), 2-aligned.
        u16::from_le(unsafe { (p as *const u16).read_volatile() })
    }

    /// Frames the front end has made available past ours (0 when its index is impossible).
    #[inline]
    pub(crate) fn pending(&self) -> u16 {
        let idx = Self::load16(self.avail + 2);
        // Ring entries are read only after the index (2.7.13.3's order, seen from our side).
        fence(Ordering::Acquire);
        let k = idx.wrapping_sub(self.next_avail);
        if k > self.n {
            0
        } else {
            k
        }
    }

    /// The next available head (call only under `pending() > 0`).
    #[inline]
    pub(crate) fn pop(&mut self) -> u16 {
        let slot = usize::from(self.next_avail & (self.n - 1));
        self.next_avail = self.next_avail.wrapping_add(1);
        Self::load16(self.avail + 4 + 2 * slot)
    }

    /// The head `k` places after the next available one, without taking it (call only with
    /// `k < pending()`): what a burst prefetches ahead.
    #[inline]
    pub(crate) fn peek(&self, k: u16) -> u16 {
        let slot = usize::from(self.next_avail.wrapping_add(k) & (self.n - 1));
        Self::load16(self.avail + 4 + 2 * slot)
    }

    /// Our two indices (next available, next used): what a process that runs this queue after
    /// us starts from.
    #[inline]
    pub(crate) fn indices(&self) -> (u16, u16) {
        (self.next_avail, self.next_used)
    }

    /// Takes the indices another process left (see [`DevRing::indices`]).
    #[inline]
    pub(crate) fn set_indices(&mut self, (avail, used): (u16, u16)) {
        (self.next_avail, self.next_used) = (avail, used);
    }

    /// The ring's size.
    pub(crate) fn size(&self) -> u16 {
        self.n
    }

    /// Gives back the last `k` heads popped (they are taken again next time).
    pub(crate) fn unpop(&mut self, k: u16) {
        self.next_avail = self.next_avail.wrapping_sub(k);
    }

    /// Descriptor `i`, or None past the table.
    #[inline]
    pub(crate) fn desc(&self, i: u16) -> Option<Desc> {
        if i >= self.n {
            return None;
        }
        let p = self.desc + 16 * usize::from(i);
        // SAFETY: descriptor i < n inside the table `new` checked (16-aligned, mapped).
        let (addr, len) = unsafe { ((p as *const u64).read_volatile(), ((p + 8) as *const u32).read_volatile()) };
        Some(Desc {
            addr: u64::from_le(addr),
            len: u32::from_le(len),
            flags: Self::load16(p + 12),
            next: Self::load16(p + 14),
        })
    }

    /// The chain from `head`, at most `n` descriptors long (a loop in it ends there).
    #[inline]
    pub(crate) fn chain(&self, head: u16) -> Chain<'_> {
        Chain { r: self, at: Some(head), left: self.n }
    }

    /// Writes used element `(head, len)` (published by [`DevRing::publish`]).
    #[inline]
    pub(crate) fn push_used(&mut self, head: u16, len: u32) {
        let slot = usize::from(self.next_used & (self.n - 1));
        let p = self.used + 4 + 8 * slot;
        // SAFETY: element slot < n inside the used ring `new` checked (4-aligned, mapped).
        unsafe {
            (p as *mut u32).write_volatile(u32::from(head).to_le());
            ((p + 4) as *mut u32).write_volatile(len.to_le());
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Publishes the used index: the elements before it first (2.7.8).
    #[inline]
    pub(crate) fn publish(&self) {
        fence(Ordering::Release);
        // SAFETY: used.idx, 2-aligned inside the used ring.
        unsafe { ((self.used + 2) as *mut u16).write_volatile(self.next_used.to_le()) }
    }

    /// The used index as it stands in the ring.
    pub(crate) fn used_idx(&self) -> u16 {
        Self::load16(self.used + 2)
    }

    /// Starts from the used index the ring holds when it differs from ours (a front end that
    /// stopped and started its device without resetting its rings, then said base 0): both
    /// indices go there, as DPDK's vhost does. Returns the index taken, if it moved.
    pub(crate) fn adopt_used(&mut self) -> Option<u16> {
        let u = self.used_idx();
        (u != self.next_used).then(|| {
            self.next_used = u;
            self.next_avail = u;
            u
        })
    }

    /// Tells the front end not to kick: we poll.
    pub(crate) fn no_notify(&self) {
        // SAFETY: used.flags, 2-aligned at the start of the used ring.
        unsafe { (self.used as *mut u16).write_volatile(USED_F_NO_NOTIFY.to_le()) }
    }

    /// Whether the front end wants a used-buffer notification.
    pub(crate) fn wants_interrupt(&self) -> bool {
        fence(Ordering::SeqCst);
        Self::load16(self.avail) & AVAIL_F_NO_INTERRUPT == 0
    }
}

/// The descriptors of one chain.
pub(crate) struct Chain<'a> {
    r: &'a DevRing,
    at: Option<u16>,
    left: u16,
}

impl Iterator for Chain<'_> {
    /// A descriptor, or Err at a bad one (past the table, indirect, a loop).
    type Item = Result<Desc, ()>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let i = self.at.take()?;
        if self.left == 0 {
            return Some(Err(()));
        }
        self.left -= 1;
        let Some(d) = self.r.desc(i) else { return Some(Err(())) };
        if d.flags & F_INDIRECT != 0 {
            return Some(Err(()));
        }
        if d.flags & F_NEXT != 0 {
            self.at = Some(d.next);
        }
        Some(Ok(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of 8 in a buffer of ours, guest address = offset.
    struct Mem(Vec<u64>);
    impl Mem {
        fn at(&self) -> impl Fn(u64, usize) -> Option<*mut u8> + '_ {
            move |g, l| {
                let b = self.0.as_ptr() as *mut u8;
                ((g as usize + l) <= self.0.len() * 8).then(|| b.wrapping_add(g as usize))
            }
        }
        fn put16(&mut self, off: usize, v: u16) {
            let b = self.0.as_mut_ptr() as *mut u8;
            // SAFETY: off + 2 inside the buffer (the tests' offsets).
            unsafe { (b.add(off) as *mut u16).write_unaligned(v) }
        }
        fn put_desc(&mut self, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
            self.0[2 * i] = addr;
            self.0[2 * i + 1] = u64::from(len) | u64::from(flags) << 32 | u64::from(next) << 48;
        }
    }

    #[test]
    fn chains_are_walked_bounded_and_bad_indices_refused() {
        let mut m = Mem(vec![0; 512]);
        let (desc, avail, used) = (0u64, 128u64, 256u64);
        m.put_desc(0, 1000, 12, F_NEXT, 1);
        m.put_desc(1, 2000, 60, 0, 0);
        m.put_desc(2, 3000, 10, F_NEXT, 2); // a loop
        m.put_desc(3, 4000, 10, F_NEXT, 9); // next past the table
        m.put16(avail as usize + 4, 0);
        m.put16(avail as usize + 6, 2);
        m.put16(avail as usize + 8, 3);
        m.put16(avail as usize + 2, 3);
        let mut r = DevRing::new(m.at(), (desc, avail, used), 8, 0).unwrap();
        assert_eq!(r.pending(), 3);
        let h = r.pop();
        let c: Vec<_> = r.chain(h).collect();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].unwrap().addr, 2000);
        let h = r.pop();
        assert!(r.chain(h).any(|d| d.is_err()), "a loop ends in an error");
        let h = r.pop();
        assert!(r.chain(h).any(|d| d.is_err()), "a next past the table is refused");
        r.push_used(0, 72);
        r.publish();
        assert_eq!(m.0[256 / 8] >> 16 & 0xffff, 1, "used idx published");
        // An impossible available index (more than n ahead) gives nothing.
        m.put16(avail as usize + 2, 200);
        assert_eq!(r.pending(), 0);
        assert!(DevRing::new(m.at(), (desc, avail, used), 6, 0).is_none(), "size not a power of 2");
        assert!(DevRing::new(m.at(), (desc, avail, 4090), 8, 0).is_none(), "used ring outside memory");
    }
}
