//! `net_ring`: ports backed by rings of buffer offsets in shared memory, DPDK's ring PMD.
//!
//! Device `net_ringN[,peer=net_ringM]`. Every device owns one receive ring per queue, in a memzone
//! named after it (`net_ring_<name>_q<i>`). Transmitting on queue `i` enqueues the buffers'
//! shared-memory offsets on the peer's receive ring `i` (its own when no `peer` is given); receiving
//! dequeues from its own ring. Nothing is copied and no syscall is made: a buffer sent by one
//! process is received by another as the same bytes in the same pool. For two ports that talk
//! both ways give each the other as peer (`net_ring0,peer=net_ring1` and `net_ring1,peer=net_ring0`),
//! with the same queue counts.
//!
//! Lifetime: the primary creates a ring zone when the first port that uses it is probed (its owner
//! or a port that has it as peer, whichever comes first) and counts its users in the zone's header;
//! `close(Shared)` in the primary drops the count and, at zero, frees every buffer still queued and
//! then the zone. A secondary only looks the zones up; `close(Local)` drops its handles. Rings are
//! multi-producer/multi-consumer so two ports (or two processes) may share one; one queue used by
//! two processes at once works but does not keep the order between them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use lab_core::devargs::{BusKind, KeyKind, KeySpec, MAX_VDEV_NAME_LEN};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{MemError, Shm, ShmOffset};
use lab_core::ring::{Ring, RingFlags};

use crate::error::{Ctx, DriverError};

const NAME: &str = "net_ring";
const MAX_QUEUES: u16 = 16;
/// Offsets moved per ring operation: the stack buffer of a burst.
const CHUNK: usize = 64;
/// Bytes before the ring in a ring zone: the user count, on its own cache line.
const ZONE_HDR: u64 = 64;
const ZONE_MAGIC: u32 = 0x5249_4e47;

static KEYS: [KeySpec; 1] = [KeySpec::new(
    "peer",
    KeyKind::Str { max_len: MAX_VDEV_NAME_LEN },
    "device whose receive rings this port transmits to (default: itself)",
)];

/// The net_ring driver.
pub struct RingDriver;

/// Memzone of receive ring `q` of device `dev`.
pub fn zone_name(dev: &str, q: u16) -> String {
    format!("net_ring_{dev}_q{q}")
}

/// Header of a ring zone.
#[repr(C)]
struct ZoneHdr {
    magic: AtomicU32,
    users: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<ZoneHdr>() == 8);

/// One ring zone as this process sees it.
struct RingZone {
    name: String,
    ring: Ring<u64>,
    hdr_off: ShmOffset,
}

impl RingZone {
    fn users(&self, shm: &Shm) -> Option<&AtomicU32> {
        let p = shm.ptr(self.hdr_off, ZONE_HDR)?;
        // SAFETY: the zone starts with a ZoneHdr (written at creation, 64-aligned, inside the
        // mapping that is never unmapped); its fields are atomics shared by every process.
        let h = unsafe { &*p.as_ptr().cast::<ZoneHdr>() };
        Some(&h.users)
    }
}

fn ring_count(nb_desc: u16) -> u32 {
    (nb_desc as u32).next_power_of_two().clamp(64, 1 << 15)
}

/// Primary: finds or creates the zone and counts one more user.
fn acquire(shm: &Arc<Shm>, name: &str, count: u32) -> Result<RingZone, DriverError> {
    let len = ZONE_HDR + Ring::<u64>::mem_size(count);
    let (z, created) = match shm.reserve(name, len, 64) {
        Ok(z) => (z, true),
        Err(MemError::ZoneExists { .. }) => (shm.lookup(name).ctx(format!("memzone {name}"))?, false),
        Err(e) => return Err(e).ctx(format!("memzone {name}")),
    };
    let ring_off = ShmOffset(z.offset.0 + ZONE_HDR);
    if created {
        Ring::<u64>::init_at(shm, ring_off, count, RingFlags::MPMC);
    }
    let rz = attach(shm, name, z.offset, ring_off)?;
    if created {
        let p = shm
            .ptr(z.offset, ZONE_HDR)
            .ok_or_else(|| DriverError::state(format!("ring zone {name} outside the mapping")))?;
        // SAFETY: fresh zeroed zone of ours, header at its start (see RingZone::users).
        let h = unsafe { &*p.as_ptr().cast::<ZoneHdr>() };
        h.magic.store(ZONE_MAGIC, Ordering::Release);
    }
    if let Some(u) = rz.users(shm) {
        u.fetch_add(1, Ordering::AcqRel);
    }
    Ok(rz)
}

fn attach(shm: &Arc<Shm>, name: &str, hdr_off: ShmOffset, ring_off: ShmOffset) -> Result<RingZone, DriverError> {
    let ring = Ring::<u64>::attach(shm, name, ring_off).ctx(format!("ring {name}"))?;
    Ok(RingZone { name: name.into(), ring, hdr_off })
}

/// Secondary: looks the zone up, leaves the count alone.
fn lookup(shm: &Arc<Shm>, name: &str) -> Result<RingZone, DriverError> {
    let z = shm.lookup(name).ctx(format!("memzone {name} (is the device attached in the primary?)"))?;
    attach(shm, name, z.offset, ShmOffset(z.offset.0 + ZONE_HDR))
}

/// Primary: one user less; the last one drains the ring into the pool and frees the zone.
fn release(shm: &Arc<Shm>, rz: RingZone) {
    let last = rz.users(shm).is_some_and(|u| u.fetch_sub(1, Ordering::AcqRel) == 1);
    if !last {
        return;
    }
    let mut buf = [0u64; CHUNK];
    let mut dropped = 0usize;
    loop {
        let n = rz.ring.dequeue_burst(&mut buf);
        if n == 0 {
            break;
        }
        for off in &buf[..n] {
            // Dropping returns the buffer to its own pool's ring.
            if Mbuf::from_offset(shm, ShmOffset(*off)).is_some() {
                dropped += 1;
            }
        }
    }
    if dropped > 0 {
        tracing::debug!(zone = %rz.name, dropped, "freed buffers left in a ring");
    }
    let name = rz.name.clone();
    drop(rz);
    if let Err(e) = shm.free(&name) {
        tracing::warn!(zone = %name, error = %e, "could not free ring memzone");
    }
}

impl Driver for RingDriver {
    fn name(&self) -> &'static str {
        NAME
    }
    fn bus(&self) -> BusKind {
        BusKind::Vdev
    }
    fn keys(&self) -> &'static [KeySpec] {
        &KEYS
    }
    fn probe(&self, ctx: &ProbeCtx<'_>) -> Result<Box<dyn EthDev>, EthError> {
        let (nrx, ntx) = (ctx.conf.nb_rxq, ctx.conf.nb_txq);
        if nrx == 0 || nrx > MAX_QUEUES || ntx == 0 || ntx > MAX_QUEUES {
            return Err(ctx.error(NAME, format!("queue counts {nrx}/{ntx} out of range 1..={MAX_QUEUES}")));
        }
        let peer = ctx.kvargs.get_str("peer").unwrap_or(ctx.name).to_string();
        if !peer.starts_with(NAME) && !peer.starts_with("eth_ring") {
            return Err(ctx.error(NAME, format!("peer {peer:?} is not a net_ring device")));
        }
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(shm, &ctx.conf.pool, 0)
            .ctx(format!("buffer pool {}", ctx.conf.pool))
            .map_err(|e| ctx.error(NAME, e))?;
        let count = ring_count(ctx.conf.nb_desc);
        let primary = ctx.is_primary();
        // Zones taken so far, given back on any error (the guard), kept on success.
        let mut guard = Zones { shm: shm.clone(), primary, rx: Vec::new(), tx: Vec::new() };
        for q in 0..nrx {
            let n = zone_name(ctx.name, q);
            let rz = if primary { acquire(shm, &n, count) } else { lookup(shm, &n) };
            guard.rx.push(rz.ctx(format!("receive ring {n}")).map_err(|e| ctx.error(NAME, e))?);
        }
        for q in 0..ntx {
            let n = zone_name(&peer, q);
            let rz = if primary { acquire(shm, &n, count) } else { lookup(shm, &n) };
            guard.tx.push(rz.ctx(format!("peer ring {n}")).map_err(|e| ctx.error(NAME, e))?);
        }
        let mut mac = [0x02, 0x72, 0x69, 0x6e, 0, 0];
        mac[4..6].copy_from_slice(&ctx.port.0.to_be_bytes());
        tracing::info!(device = ctx.name, peer = %peer, nb_rxq = nrx, nb_txq = ntx, ring = count, primary, "net_ring probed");
        let (rx, tx) = (std::mem::take(&mut guard.rx), std::mem::take(&mut guard.tx));
        Ok(Box::new(RingPort {
            info: DevInfo {
                driver: NAME,
                mac,
                mtu: 1500,
                nb_rxq: nrx,
                nb_txq: ntx,
                max_rxq: MAX_QUEUES,
                max_txq: MAX_QUEUES,
            },
            shm: shm.clone(),
            _pool: pool,
            rx: rx.into_iter().map(|z| RxQ { z, pkts: 0, bytes: 0, errs: 0 }).collect(),
            tx: tx.into_iter().map(|z| TxQ { z, pkts: 0, bytes: 0 }).collect(),
        }))
    }
}

/// Zones acquired during a probe; released again if the probe fails.
struct Zones {
    shm: Arc<Shm>,
    primary: bool,
    rx: Vec<RingZone>,
    tx: Vec<RingZone>,
}

impl Drop for Zones {
    fn drop(&mut self) {
        if self.primary {
            for z in self.rx.drain(..).chain(self.tx.drain(..)) {
                release(&self.shm, z);
            }
        }
    }
}

struct RxQ {
    z: RingZone,
    pkts: u64,
    bytes: u64,
    errs: u64,
}

struct TxQ {
    z: RingZone,
    pkts: u64,
    bytes: u64,
}

struct RingPort {
    info: DevInfo,
    shm: Arc<Shm>,
    /// Keeps the pool looked up (the probe checked it exists); buffers carry their own pool.
    _pool: Mempool,
    rx: Vec<RxQ>,
    tx: Vec<TxQ>,
}

impl EthDev for RingPort {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }
    fn link(&mut self) -> LinkStatus {
        LinkStatus { up: true, speed_mbps: 10_000 }
    }
    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        for q in &self.rx {
            s.ipackets += q.pkts;
            s.ibytes += q.bytes;
            s.ierrors += q.errs;
        }
        for q in &self.tx {
            s.opackets += q.pkts;
            s.obytes += q.bytes;
        }
        s
    }
    fn stats_reset(&mut self) {
        for q in &mut self.rx {
            (q.pkts, q.bytes, q.errs) = (0, 0, 0);
        }
        for q in &mut self.tx {
            (q.pkts, q.bytes) = (0, 0);
        }
    }
    fn set_promisc(&mut self, _on: bool) -> Result<(), EthError> {
        Ok(())
    }
    #[inline]
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(q) = self.rx.get_mut(queue as usize) else { return 0 };
        let mut offs = [0u64; CHUNK];
        let mut filled = 0;
        while filled < pkts.len() {
            let want = (pkts.len() - filled).min(CHUNK);
            let n = q.z.ring.dequeue_burst(&mut offs[..want]);
            for off in &offs[..n] {
                match Mbuf::from_offset(&self.shm, ShmOffset(*off)) {
                    Some(m) => {
                        q.bytes += m.pkt_len() as u64;
                        pkts[filled] = Some(m);
                        filled += 1;
                    }
                    // Not a buffer: a peer wrote garbage into the ring. Count it, never touch it.
                    None => q.errs += 1,
                }
            }
            if n < want {
                break;
            }
        }
        q.pkts += filled as u64;
        filled
    }
    #[inline]
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(q) = self.tx.get_mut(queue as usize) else { return 0 };
        let mut offs = [0u64; CHUNK];
        let mut done = 0;
        while done < pkts.len() {
            let mut k = 0;
            let mut bytes = 0u64;
            for slot in pkts[done..].iter().take(CHUNK) {
                let Some(m) = slot else { break };
                offs[k] = m.offset().0;
                bytes += m.pkt_len() as u64;
                k += 1;
            }
            if k == 0 {
                break;
            }
            let n = q.z.ring.enqueue_burst(&offs[..k]);
            if n < k {
                // The first n may already belong to the receiver: subtract the ones still ours.
                for m in pkts[done + n..done + k].iter().flatten() {
                    bytes -= m.pkt_len() as u64;
                }
            }
            for slot in &mut pkts[done..done + n] {
                // Ownership went with the offset into the ring.
                if let Some(m) = slot.take() {
                    let _ = m.into_offset();
                }
            }
            q.bytes += bytes;
            done += n;
            if n < k {
                break;
            }
        }
        q.pkts += done as u64;
        done
    }
    fn close(self: Box<Self>, how: Release) {
        let me = *self;
        match how {
            Release::Shared => {
                for z in me.rx.into_iter().map(|q| q.z).chain(me.tx.into_iter().map(|q| q.z)) {
                    release(&me.shm, z);
                }
            }
            Release::Local => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_follow_the_descriptor_count() {
        assert_eq!(ring_count(512), 512);
        assert_eq!(ring_count(1), 64);
        assert_eq!(ring_count(1000), 1024);
        assert_eq!(zone_name("net_ring0", 3), "net_ring_net_ring0_q3");
    }
}
