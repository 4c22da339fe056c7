//! `net_bonding`: one port over several member ports, DPDK's bonding PMD.
//!
//! `net_bonding0,mode=N,slave=DEV[,slave=DEV...][,primary=DEV][,xmit_policy=l2|l23|l34]`
//! (`member=` as DPDK 23.11 spells it). Members are ports already attached in this process
//! (any driver: emulated NICs, tap, af_packet, ring, vhost-user), named as they were attached;
//! the bond reaches them through the process's port table ([`ProbeCtx::ports`]), so it is
//! attached after them, in every process, like any port. Its queue `q` is queue `q` of each
//! member.
//!
//! Modes (DPDK's numbers): 0 round robin (frame by frame over the usable members), 1
//! active-backup (all traffic on one member: `primary` while it is usable, else the first usable
//! one), 2 balance-xor (a hash of the `xmit_policy` headers picks the member: l2 the MACs, l23
//! with the IPv4/IPv6 addresses, l34 with the TCP/UDP ports too), 3 broadcast (every frame on
//! every usable member, copied). Mode 4 (802.3ad, LACP) is refused by name: not built yet.
//!
//! A member is usable while it is attached (its slot holds the same generation) and its link is
//! up. A thread of the bond looks every 100 ms (the bursts only read what it saw, and never wait
//! on a member: one busy elsewhere is skipped for that burst), and a burst that finds a member's
//! slot empty stops using it at once, so a member whose link drops, or which is unplugged or
//! detached, stops carrying traffic in every process that polls the bond, each by its own look
//! at the same shared state. Frames a member did not take come back to the caller at the end of
//! its array (as DPDK's bonding does): the taken ones are the front `n`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use lab_core::devargs::{BusKind, KeyKind, KeySpec, MAX_VDEV_NAME_LEN};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortId, PortStats, Ports, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};

use crate::error::{Ctx, DriverError};

const NAME: &str = "net_bonding";
/// Members at most.
pub const MAX_MEMBERS: usize = 8;
/// Frames per member per burst (a longer burst is sent in parts).
const CHUNK: usize = 64;
/// How often member state is looked at.
const LOOK: Duration = Duration::from_millis(100);

static KEYS: [KeySpec; 6] = [
    KeySpec::new("mode", KeyKind::U64 { min: 0, max: 6 }, "0 round robin, 1 active-backup, 2 balance-xor, 3 broadcast"),
    KeySpec::new("slave", KeyKind::Str { max_len: MAX_VDEV_NAME_LEN }, "a member port, by device name").repeatable(),
    KeySpec::new("member", KeyKind::Str { max_len: MAX_VDEV_NAME_LEN }, "a member port (DPDK 23.11's name)")
        .repeatable(),
    KeySpec::new("primary", KeyKind::Str { max_len: MAX_VDEV_NAME_LEN }, "the preferred member (mode 1)"),
    KeySpec::new("xmit_policy", KeyKind::Str { max_len: 3 }, "l2|l23|l34: the headers mode 2 hashes (default l2)"),
    KeySpec::new("lacp_rate", KeyKind::Str { max_len: 4 }, "fast|slow (mode 4, not built yet)"),
];

/// The net_bonding driver.
pub struct BondingDriver;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    RoundRobin,
    ActiveBackup,
    BalanceXor,
    Broadcast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    L2,
    L23,
    L34,
}

struct Member {
    id: PortId,
    gen: u32,
    name: String,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    pkts: u64,
    bytes: u64,
}

struct Bond {
    info: DevInfo,
    ports: Arc<Ports>,
    members: Vec<Member>,
    mode: Mode,
    policy: Policy,
    primary: usize,
    /// Which members are usable, as the monitor thread last saw them.
    mon: Arc<Monitor>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// This process's copy of `mon.usable` for one burst.
    usable: [bool; MAX_MEMBERS],
    port: PortId,
    /// Round-robin position per transmit queue; first member polled per receive queue.
    rr: Vec<usize>,
    rx_start: Vec<usize>,
    rx: Vec<Counters>,
    tx: Vec<Counters>,
    pool: Mempool,
}

fn find_member(ports: &Ports, name: &str) -> Option<(PortId, u32, DevInfo)> {
    (0..lab_core::ethdev::MAX_PORTS as u16).map(PortId).find_map(|p| {
        let mut s = ports.slot_within(p, Duration::from_millis(50)).ok()?;
        let lp = s.as_mut()?;
        (lp.name == name).then(|| (lp.port, lp.gen, lp.dev.info()))
    })
}

impl Driver for BondingDriver {
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
        let err = |e: DriverError| ctx.error(NAME, e);
        let ports = ctx.ports.ok_or_else(|| {
            err(DriverError::config(
                "net_bonding needs the process's ports: attach it in a lab process (the hotplug layer)",
            ))
        })?;
        let mode = match ctx.kvargs.get_u64("mode").unwrap_or(0) {
            0 => Mode::RoundRobin,
            1 => Mode::ActiveBackup,
            2 => Mode::BalanceXor,
            3 => Mode::Broadcast,
            4 => return Err(err(DriverError::config("mode=4 (802.3ad, LACP): not built yet"))),
            m => return Err(err(DriverError::config(format!("mode={m}: modes 5 and 6 (tlb, alb) are not built")))),
        };
        let policy = match ctx.kvargs.get_str("xmit_policy").unwrap_or("l2") {
            "l2" => Policy::L2,
            "l23" => Policy::L23,
            "l34" => Policy::L34,
            p => return Err(err(DriverError::config(format!("xmit_policy={p}: one of l2, l23, l34")))),
        };
        let mut names: Vec<&str> = ctx.kvargs.get_all_str("slave");
        names.extend(ctx.kvargs.get_all_str("member"));
        if names.is_empty() || names.len() > MAX_MEMBERS {
            return Err(err(DriverError::config(format!(
                "{} members given: 1..={MAX_MEMBERS} (slave=DEV or member=DEV)",
                names.len()
            ))));
        }
        let conf = ctx.conf;
        let mut members = Vec::with_capacity(names.len());
        let mut mac = [0u8; 6];
        for (k, n) in names.iter().enumerate() {
            if names[..k].contains(n) {
                return Err(err(DriverError::config(format!("member {n} given twice"))));
            }
            if *n == ctx.name {
                return Err(err(DriverError::config(format!("member {n}: the bond itself"))));
            }
            let (id, gen, info) = find_member(ports, n).ok_or_else(|| {
                err(DriverError::config(format!("member {n}: no such port attached in this process (attach it first)")))
            })?;
            if info.nb_rxq < conf.nb_rxq || info.nb_txq < conf.nb_txq {
                return Err(err(DriverError::config(format!(
                    "member {n} has {}/{} queues, the bond {}/{}",
                    info.nb_rxq, info.nb_txq, conf.nb_rxq, conf.nb_txq
                ))));
            }
            if k == 0 {
                mac = info.mac;
            }
            members.push(Member { id, gen, name: n.to_string() });
        }
        let primary = match ctx.kvargs.get_str("primary") {
            Some(p) => names.iter().position(|n| *n == p).ok_or_else(|| {
                err(DriverError::config(format!("primary={p}: not one of the members ({})", names.join(", "))))
            })?,
            None => 0,
        };
        let pool = Mempool::lookup(ctx.runtime.shm(), &conf.pool, 64)
            .ctx(format!("buffer pool {}", conf.pool))
            .map_err(err)?;
        tracing::info!(device = %ctx.name, port = %ctx.port, ?mode, members = %names.join(","), "net_bonding ready");
        let mut b = Bond {
            info: DevInfo {
                driver: NAME,
                mac,
                mtu: 1500,
                nb_rxq: conf.nb_rxq,
                nb_txq: conf.nb_txq,
                max_rxq: conf.nb_rxq,
                max_txq: conf.nb_txq,
            },
            ports: ports.clone(),
            members,
            mode,
            policy,
            primary,
            mon: Arc::new(Monitor::default()),
            thread: None,
            usable: [false; MAX_MEMBERS],
            port: ctx.port,
            rr: vec![0; usize::from(conf.nb_txq)],
            rx_start: vec![0; usize::from(conf.nb_rxq)],
            rx: vec![Counters::default(); usize::from(conf.nb_rxq)],
            tx: vec![Counters::default(); usize::from(conf.nb_txq)],
            pool,
        };
        let targets: Vec<(PortId, u32)> = b.members.iter().map(|m| (m.id, m.gen)).collect();
        b.mon.look(&b.ports, &targets);
        b.usable = b.mon.snapshot();
        let (mon, ports) = (b.mon.clone(), b.ports.clone());
        b.thread = Some(
            std::thread::Builder::new()
                .name(format!("bond-{}", ctx.port.0))
                .spawn(move || {
                    while !mon.stop.load(Ordering::Relaxed) {
                        let end = Instant::now() + LOOK;
                        while Instant::now() < end && !mon.stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        mon.look(&ports, &targets);
                    }
                })
                .ctx("monitor thread")
                .map_err(err)?,
        );
        Ok(Box::new(b))
    }
}

/// Member state, looked at by the bond's own thread (each member's `link()` may take a while:
/// a reconnect, an ioctl) so that bursts only read it.
#[derive(Default)]
struct Monitor {
    usable: [AtomicBool; MAX_MEMBERS],
    stop: AtomicBool,
}

impl Monitor {
    /// Looks at every member: attached with the same generation, and its link up. A member
    /// whose slot is busy (a burst in another thread) keeps what was known.
    fn look(&self, ports: &Ports, members: &[(PortId, u32)]) {
        for (k, &(id, gen)) in members.iter().enumerate() {
            if let Ok(mut s) = ports.slot_within(id, Duration::from_millis(5)) {
                let up = s.as_mut().is_some_and(|lp| lp.gen == gen && lp.dev.link().up);
                self.usable[k].store(up, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> [bool; MAX_MEMBERS] {
        std::array::from_fn(|k| self.usable[k].load(Ordering::Relaxed))
    }
}

/// The member index a frame goes to under balance-xor (`n` usable members).
fn xor_hash(d: &[u8], policy: Policy) -> u32 {
    let word = |b: &[u8]| b.iter().fold(0u32, |h, x| h.rotate_left(5) ^ u32::from(*x));
    if d.len() < 14 {
        return 0;
    }
    let mut h = word(&d[0..6]) ^ word(&d[6..12]);
    if policy == Policy::L2 {
        return h;
    }
    let (mut et, mut l3) = (u16::from_be_bytes([d[12], d[13]]), 14);
    if et == 0x8100 && d.len() >= 18 {
        et = u16::from_be_bytes([d[16], d[17]]);
        l3 = 18;
    }
    let (proto, l4) = match et {
        0x0800 if d.len() >= l3 + 20 => {
            h ^= word(&d[l3 + 12..l3 + 20]);
            let frag = u16::from_be_bytes([d[l3 + 6], d[l3 + 7]]) & 0x3fff != 0;
            (if frag { 0 } else { d[l3 + 9] }, l3 + usize::from(d[l3] & 0xf) * 4)
        }
        0x86dd if d.len() >= l3 + 40 => {
            h ^= word(&d[l3 + 8..l3 + 40]);
            (d[l3 + 6], l3 + 40)
        }
        _ => return h,
    };
    if policy == Policy::L34 && matches!(proto, 6 | 17) && d.len() >= l4 + 4 {
        h ^= word(&d[l4..l4 + 4]);
    }
    h
}

impl Bond {
    /// This burst's view of the members.
    fn look_if_due(&mut self) {
        self.usable = self.mon.snapshot();
    }

    /// The member mode 1 uses.
    fn active(&self) -> Option<usize> {
        if self.usable[self.primary] {
            return Some(self.primary);
        }
        (0..self.members.len()).find(|&k| self.usable[k])
    }

    /// Runs `f` on member `k`'s device, or marks it unusable when it is gone.
    fn with_member<R>(&mut self, k: usize, f: impl FnOnce(&mut dyn EthDev) -> R) -> Option<R> {
        let m = &self.members[k];
        // Never wait on a member: one busy elsewhere is skipped this burst.
        let mut s = self.ports.slot_within(m.id, Duration::ZERO).ok()?;
        match s.as_mut() {
            Some(lp) if lp.gen == m.gen => Some(f(lp.dev.as_mut())),
            _ => {
                drop(s);
                self.usable[k] = false;
                self.mon.usable[k].store(false, Ordering::Relaxed);
                tracing::warn!(member = %self.members[k].name, "net_bonding: member gone");
                None
            }
        }
    }

    /// Sends `batch` (all of it taken by the caller already) on member `k`'s queue `q`; what it
    /// does not take goes to `left`.
    fn send_on(
        &mut self,
        k: usize,
        q: u16,
        batch: &mut [Option<Mbuf>],
        left: &mut ArrayVec<Mbuf, { CHUNK * MAX_MEMBERS }>,
    ) -> usize {
        let n = batch.iter().take_while(|m| m.is_some()).count();
        let sent = self.with_member(k, |d| d.tx_burst(q, &mut batch[..n])).unwrap_or(0);
        for m in batch[..n].iter_mut().filter_map(Option::take) {
            let _ = left.try_push(m);
        }
        sent
    }
}

impl EthDev for Bond {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }

    fn link(&mut self) -> LinkStatus {
        self.look_if_due();
        let up = match self.mode {
            Mode::ActiveBackup => self.active().is_some(),
            _ => self.usable.iter().take(self.members.len()).any(|u| *u),
        };
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }

    fn stats(&mut self) -> PortStats {
        let mut s = PortStats::default();
        for c in &self.rx {
            s.ipackets += c.pkts;
            s.ibytes += c.bytes;
        }
        for c in &self.tx {
            s.opackets += c.pkts;
            s.obytes += c.bytes;
        }
        s
    }

    fn stats_reset(&mut self) {
        self.rx.iter_mut().chain(self.tx.iter_mut()).for_each(|c| *c = Counters::default());
    }

    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        for k in 0..self.members.len() {
            if let Some(Err(e)) = self.with_member(k, |d| d.set_promisc(on)) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Mode 1 receives on the active member only; the others on every usable member, starting
    /// with the next one each burst.
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let q = usize::from(queue);
        if q >= self.rx.len() {
            return 0;
        }
        self.look_if_due();
        let nm = self.members.len();
        let mut got = 0;
        if self.mode == Mode::ActiveBackup {
            if let Some(k) = self.active() {
                got = self.with_member(k, |d| d.rx_burst(queue, pkts)).unwrap_or(0);
            }
        } else {
            let start = self.rx_start[q];
            self.rx_start[q] = (start + 1) % nm;
            for i in 0..nm {
                let k = (start + i) % nm;
                if !self.usable[k] || got == pkts.len() {
                    continue;
                }
                got += self.with_member(k, |d| d.rx_burst(queue, &mut pkts[got..])).unwrap_or(0);
            }
        }
        for m in pkts[..got].iter_mut().flatten() {
            m.set_port(self.port.0);
        }
        let c = &mut self.rx[q];
        c.pkts += got as u64;
        c.bytes += pkts[..got].iter().flatten().map(|m| m.len() as u64).sum::<u64>();
        got
    }

    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let q = usize::from(queue);
        if q >= self.tx.len() {
            return 0;
        }
        self.look_if_due();
        let nm = self.members.len();
        let usable: ArrayVec<usize, MAX_MEMBERS> = (0..nm).filter(|&k| self.usable[k]).collect();
        if usable.is_empty() {
            return 0;
        }
        if self.mode == Mode::ActiveBackup {
            let Some(k) = self.active() else { return 0 };
            let bytes: u64 = pkts.iter().map_while(|m| m.as_ref()).map(|m| m.len() as u64).sum();
            let sent = self.with_member(k, |d| d.tx_burst(queue, pkts)).unwrap_or(0);
            let left: u64 = pkts[sent..].iter().map_while(|m| m.as_ref()).map(|m| m.len() as u64).sum();
            self.tx[q].pkts += sent as u64;
            self.tx[q].bytes += bytes - left;
            return sent;
        }
        let n = pkts.iter().take(CHUNK).take_while(|m| m.is_some()).count();
        // Spread the first `n` over per-member batches (indexed by position in `usable`).
        let mut batches: ArrayVec<[Option<Mbuf>; CHUNK], MAX_MEMBERS> =
            usable.iter().map(|_| std::array::from_fn(|_| None)).collect();
        let mut fill = [0usize; MAX_MEMBERS];
        // Broadcast: which of the caller's frames each copy is of.
        let mut src = [[0u8; CHUNK]; MAX_MEMBERS];
        let mut bytes = 0u64;
        for (i, slot) in pkts[..n].iter_mut().enumerate() {
            let Some(m) = slot.take() else { break };
            bytes += m.len() as u64;
            match self.mode {
                Mode::RoundRobin => {
                    let j = self.rr[q] % usable.len();
                    self.rr[q] = self.rr[q].wrapping_add(1);
                    batches[j][fill[j]] = Some(m);
                    fill[j] += 1;
                }
                Mode::BalanceXor => {
                    let j = xor_hash(m.data(), self.policy) as usize % usable.len();
                    batches[j][fill[j]] = Some(m);
                    fill[j] += 1;
                }
                Mode::Broadcast => {
                    // A copy for every usable member after the first; a copy that cannot be
                    // made is that member's loss.
                    for j in 1..usable.len() {
                        if let Some(mut c) = self.pool.alloc() {
                            if c.copy_from(m.data()) {
                                batches[j][fill[j]] = Some(c);
                                src[j][fill[j]] = i as u8;
                                fill[j] += 1;
                            } else {
                                self.pool.free(c);
                            }
                        }
                    }
                    batches[0][fill[0]] = Some(m);
                    fill[0] += 1;
                }
                Mode::ActiveBackup => unreachable!("handled above"),
            }
        }
        let mut left: ArrayVec<Mbuf, { CHUNK * MAX_MEMBERS }> = ArrayVec::new();
        let mut sent = 0;
        for (j, &k) in usable.iter().enumerate() {
            if fill[j] == 0 {
                continue;
            }
            if self.mode == Mode::Broadcast && j != 0 {
                // Copies of the frames the first member took only: the others come back to the
                // caller, whose retry brings their copies again.
                let keep = src[j][..fill[j]].iter().take_while(|&&i| usize::from(i) < sent).count();
                for c in batches[j][keep..fill[j]].iter_mut().filter_map(Option::take) {
                    self.pool.free(c);
                }
                let mut spare: ArrayVec<Mbuf, { CHUNK * MAX_MEMBERS }> = ArrayVec::new();
                self.send_on(k, queue, &mut batches[j][..keep], &mut spare);
                for c in spare {
                    self.pool.free(c); // a copy this member did not take is its loss
                }
                continue;
            }
            sent += self.send_on(k, queue, &mut batches[j][..fill[j]], &mut left);
        }
        // The taken ones are the front `sent`; what no member took goes back after them.
        let taken = n - left.len();
        for (i, m) in left.into_iter().enumerate() {
            bytes -= m.len() as u64;
            pkts[taken + i] = Some(m);
        }
        self.tx[q].pkts += taken as u64;
        self.tx[q].bytes += bytes;
        taken
    }

    fn close(self: Box<Self>, how: Release) {
        tracing::info!(members = self.members.len(), shared = how == Release::Shared, "net_bonding closed");
    }
}

impl Drop for Bond {
    fn drop(&mut self) {
        self.mon.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(src_port: u16, ip_last: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, ip_last]);
        f[30..34].copy_from_slice(&[10, 0, 1, 1]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f
    }

    #[test]
    fn the_policies_hash_what_they_name() {
        // l2 ignores addresses and ports; l23 sees addresses, not ports; l34 sees both.
        assert_eq!(xor_hash(&udp(1, 1), Policy::L2), xor_hash(&udp(2, 9), Policy::L2));
        assert_ne!(xor_hash(&udp(1, 1), Policy::L23), xor_hash(&udp(1, 9), Policy::L23));
        assert_eq!(xor_hash(&udp(1, 1), Policy::L23), xor_hash(&udp(2, 1), Policy::L23));
        assert_ne!(xor_hash(&udp(1, 1), Policy::L34), xor_hash(&udp(2, 1), Policy::L34));
        assert_eq!(xor_hash(&[0u8; 10], Policy::L34), 0, "a runt hashes to 0");
    }
}
