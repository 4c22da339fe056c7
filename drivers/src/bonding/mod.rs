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
//! every usable member, copied), 4 802.3ad (below).
//!
//! Mode 4 aggregates the members with LACP (the `lacp` module): a member carries traffic (balanced as
//! in mode 2) once it is distributing, and frames from a member that is not collecting are
//! dropped. As in DPDK, the slow-protocol frames travel through the bursts: a receive burst
//! (in any process) takes LACPDUs and markers aside into the member's shared receive ring, and a
//! transmit burst sends what waits in its shared transmit ring first, so the application calls
//! both at least every 100 ms. The machines run in the primary's bond thread, which reads those
//! rings, answers markers, and publishes each member's actor state in the bond's memzone, which
//! every process's bursts read: all processes distribute over the same members.
//!
//! A member is usable while it is attached (its slot holds the same generation) and its link is
//! up. A thread of the bond looks every 100 ms (the bursts only read what it saw, and never wait
//! on a member: one busy elsewhere is skipped for that burst), and a burst that finds a member's
//! slot empty stops using it at once, so a member whose link drops, or which is unplugged or
//! detached, stops carrying traffic in every process that polls the bond, each by its own look
//! at the same shared state. Frames a member did not take come back to the caller at the end of
//! its array (as DPDK's bonding does): the taken ones are the front `n`.

mod lacp;
mod members;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use lab_core::devargs::{BusKind, KeyKind, KeySpec, MAX_VDEV_NAME_LEN};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortId, PortStats, Ports, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{Shm, ShmOffset};
use lab_core::ring::{Ring, RingFlags};

use crate::error::{Ctx, DriverError};
use members::{MemberTable, Slots};

const NAME: &str = "net_bonding";
/// Members at most.
pub const MAX_MEMBERS: usize = 8;
/// Frames per member per burst (a longer burst is sent in parts).
const CHUNK: usize = 64;
/// How often member state is looked at.
const LOOK: Duration = Duration::from_millis(100);

static KEYS: [KeySpec; 6] = [
    KeySpec::new(
        "mode",
        KeyKind::U64 { min: 0, max: 6 },
        "0 round robin, 1 active-backup, 2 balance-xor, 3 broadcast, 4 802.3ad",
    ),
    KeySpec::new("slave", KeyKind::Str { max_len: MAX_VDEV_NAME_LEN }, "a member port, by device name").repeatable(),
    KeySpec::new("member", KeyKind::Str { max_len: MAX_VDEV_NAME_LEN }, "a member port (DPDK 23.11's name)")
        .repeatable(),
    KeySpec::new("primary", KeyKind::Str { max_len: MAX_VDEV_NAME_LEN }, "the preferred member (mode 1)"),
    KeySpec::new("xmit_policy", KeyKind::Str { max_len: 3 }, "l2|l23|l34: the headers mode 2 hashes (default l2)"),
    KeySpec::new(
        "lacp_rate",
        KeyKind::Str { max_len: 4 },
        "fast|slow: LACPDUs asked of the partner every 1 s or 30 s (mode 4; default slow)",
    ),
];

/// The net_bonding driver.
pub struct BondingDriver;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    RoundRobin,
    ActiveBackup,
    BalanceXor,
    Broadcast,
    Lacp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    L2,
    L23,
    L34,
}

#[derive(Clone)]
struct Member {
    id: PortId,
    gen: u32,
    name: String,
    mac: [u8; 6],
}

#[derive(Default, Clone, Copy)]
struct Counters {
    pkts: u64,
    bytes: u64,
}

struct Bond {
    info: DevInfo,
    ports: Arc<Ports>,
    /// Member slots (the shared table's, resolved in this process): MAX_MEMBERS of them.
    members: Vec<Option<Member>>,
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
    /// Mode 4's shared state.
    agg: Option<Shared>,
    /// Mode 4: member k collects and distributes, as the primary's machines last said.
    dist: [bool; MAX_MEMBERS],
    /// The member table (freed with the primary's bond).
    _table: MemberTable,
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
            4 => Mode::Lacp,
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
        let fast = match ctx.kvargs.get_str("lacp_rate").unwrap_or("slow") {
            "fast" => true,
            "slow" => false,
            r => return Err(err(DriverError::config(format!("lacp_rate={r}: fast or slow")))),
        };
        let conf = ctx.conf;
        for (k, n) in names.iter().enumerate() {
            if names[..k].contains(n) {
                return Err(err(DriverError::config(format!("member {n} given twice"))));
            }
            if *n == ctx.name {
                return Err(err(DriverError::config(format!("member {n}: the bond itself"))));
            }
            if n.len() >= members::NAME_LEN {
                return Err(err(DriverError::config(format!(
                    "member {n}: names are shorter than {}",
                    members::NAME_LEN
                ))));
            }
        }
        let shm = ctx.runtime.shm();
        // The member table: the primary writes the devargs' members; a secondary takes what the
        // table holds now (members may have come and gone since the primary's attach).
        let (table, slots, mac) = if ctx.is_primary() {
            let first = resolve(ports, names[0], conf).map_err(|e| err(DriverError::config(e)))?;
            let t = MemberTable::create(shm, ctx.port, first.mac, &names).map_err(err)?;
            let slots: Slots = std::array::from_fn(|k| names.get(k).map(|n| n.to_string()));
            (t, slots, first.mac)
        } else {
            let t = MemberTable::open(shm, ctx.port).map_err(err)?;
            let end = Instant::now() + Duration::from_secs(1);
            let slots = loop {
                match t.read() {
                    Some((_, s)) => break s,
                    None if Instant::now() < end => std::thread::sleep(Duration::from_millis(1)),
                    None => return Err(err(DriverError::state("the bond's member table stayed mid-write for 1 s"))),
                }
            };
            let mac = t.mac();
            (t, slots, mac)
        };
        let mut members: Vec<Option<Member>> = vec![None; MAX_MEMBERS];
        for (k, n) in slots.iter().enumerate() {
            if let Some(n) = n {
                members[k] = Some(resolve(ports, n, conf).map_err(|e| err(DriverError::config(e)))?);
            }
        }
        let primary = match ctx.kvargs.get_str("primary") {
            Some(p) => slots.iter().position(|n| n.as_deref() == Some(p)).ok_or_else(|| {
                err(DriverError::config(format!("primary={p}: not one of the members ({})", names.join(", "))))
            })?,
            None => 0,
        };
        let pool = Mempool::lookup(ctx.runtime.shm(), &conf.pool, 64)
            .ctx(format!("buffer pool {}", conf.pool))
            .map_err(err)?;
        let agg = if mode == Mode::Lacp {
            Some(Shared::open(shm, ctx.port, MAX_MEMBERS, ctx.is_primary()).map_err(err)?)
        } else {
            None
        };
        // The thread's own view of the table (the bond's handle frees it, in the primary).
        let watch = MemberTable::open(shm, ctx.port).map_err(err)?;
        let listed: Vec<&str> = slots.iter().flatten().map(String::as_str).collect();
        tracing::info!(device = %ctx.name, port = %ctx.port, ?mode, members = %listed.join(","), "net_bonding ready");
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
            agg,
            dist: [false; MAX_MEMBERS],
            _table: table,
        };
        if mode == Mode::Lacp {
            // LACPDUs go to a multicast address and traffic for the bond's MAC may come in on
            // any member: members receive everything (a driver without the mode still works
            // when its device takes those frames anyway).
            for k in 0..MAX_MEMBERS {
                b.promisc_for_lacp(k);
            }
        }
        let mut view = View::new(watch);
        view.targets = std::array::from_fn(|k| b.members[k].as_ref().map(|m| (m.id, m.gen)));
        // The names the members were resolved from; an epoch no stable table has (odd), so
        // that the first round reads the table again (it may have moved since).
        (view.epoch, view.slots) = (u32::MAX, slots);
        b.mon.look(&b.ports, &view.targets);
        b.look_if_due();
        let (mon, ports) = (b.mon.clone(), b.ports.clone());
        let mut heart = b.agg.as_ref().map(|a| Heart { shared: a.handle(), last: u32::MAX, still: 0 });
        // Mode 4's machines run in the primary only (one actor per member on the wire).
        let mut machines = match (&b.agg, ctx.is_primary()) {
            (Some(a), true) => Some(Machines {
                lacp: lacp::Lacp::new(mac, LACP_KEY, fast, MAX_MEMBERS),
                shared: a.handle(),
                macs: std::array::from_fn(|k| b.members[k].as_ref().map_or([0; 6], |m| m.mac)),
                names: std::array::from_fn(|k| b.members[k].as_ref().map_or(String::new(), |m| m.name.clone())),
            }),
            _ => None,
        };
        if let Some(m) = &mut machines {
            m.run(&mon.snapshot());
        }
        b.thread = Some(
            std::thread::Builder::new()
                .name(format!("bond-{}", ctx.port.0))
                .spawn(move || {
                    while !mon.stop.load(Ordering::Relaxed) {
                        let end = Instant::now() + LOOK;
                        while Instant::now() < end && !mon.stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        if let Some(members) = view.changed(&ports) {
                            if let Some(m) = &mut machines {
                                m.members_changed(&members);
                            }
                            mon.publish(members);
                        }
                        mon.look(&ports, &view.targets);
                        if let Some(m) = &mut machines {
                            m.run(&mon.snapshot());
                        }
                        if let Some(h) = &mut heart {
                            h.look(&mon);
                        }
                    }
                })
                .ctx("monitor thread")
                .map_err(err)?,
        );
        Ok(Box::new(b))
    }
}

/// Adds port `member` (by device name, attached in this process) to net_bonding port `bond`
/// at runtime, as DPDK's `rte_eth_bond_member_add` does: it goes into the bond's shared member
/// table, and every process's bond takes it within 100 ms (its thread looks at the table, then
/// its bursts use the new member). Returns the member's slot. A bad member is refused by name
/// and changes nothing.
pub fn member_add(p: &lab_core::process::Process, bond: PortId, member: &str) -> Result<usize, EthError> {
    let bad = |what: String| EthError::Invalid { what };
    let bi = bond_info(p, bond)?;
    if member.len() >= members::NAME_LEN {
        return Err(bad(format!("member {member}: names are shorter than {}", members::NAME_LEN)));
    }
    let e = p.find(member).ok_or_else(|| bad(format!("member {member}: no such port attached in this process")))?;
    if e.port == bond {
        return Err(bad(format!("member {member}: the bond itself")));
    }
    let mi = p.info(e.port).map_err(|e| bad(e.to_string()))?;
    if mi.dev.driver == NAME {
        return Err(bad(format!("member {member}: a bond (bonds of bonds are not built)")));
    }
    if mi.dev.nb_rxq < bi.nb_rxq || mi.dev.nb_txq < bi.nb_txq {
        return Err(bad(format!(
            "member {member} has {}/{} queues, the bond {}/{}",
            mi.dev.nb_rxq, mi.dev.nb_txq, bi.nb_rxq, bi.nb_txq
        )));
    }
    let t = MemberTable::open(p.runtime().shm(), bond).map_err(|e| bad(e.to_string()))?;
    let r = t
        .update(Duration::from_secs(1), |slots| {
            if slots.iter().flatten().any(|n| n == member) {
                return Err(DriverError::config(format!("member {member}: already a member of port {bond}")));
            }
            let k = slots.iter().position(Option::is_none).ok_or_else(|| {
                DriverError::config(format!("member {member}: port {bond} has {MAX_MEMBERS} members already"))
            })?;
            let mut new = slots.clone();
            new[k] = Some(member.to_string());
            Ok((new, k))
        })
        .map_err(|e| bad(e.to_string()));
    // Mode 4: a slot whose last member left with a farewell is not leaving any more (the same
    // member added back before the machines saw it go would otherwise stay quiet).
    if let (Ok(k), Some(sh)) = (&r, Shared::find(p.runtime().shm(), bond)) {
        if *k < sh.n {
            sh.leaving().fetch_and(!(1 << k), Ordering::AcqRel);
        }
    }
    r
}

/// Takes port `member` out of net_bonding port `bond` at runtime (DPDK's
/// `rte_eth_bond_member_remove`), in every process within 100 ms. In mode 4 its farewell
/// LACPDU goes first (the removal waits up to a second for a transmit burst of any
/// process to send it). Returns the slot it had.
pub fn member_remove(p: &lab_core::process::Process, bond: PortId, member: &str) -> Result<usize, EthError> {
    let bad = |what: String| EthError::Invalid { what };
    bond_info(p, bond)?;
    let t = MemberTable::open(p.runtime().shm(), bond).map_err(|e| bad(e.to_string()))?;
    let slot = t.read().and_then(|(_, slots)| slots.iter().position(|n| n.as_deref() == Some(member)));
    // Mode 4: first the member's farewell LACPDU (the primary's machines write it, a transmit
    // burst of any process sends it), so the partner stops sending on the link now.
    let farewell = slot.zip(Shared::find(p.runtime().shm(), bond)).filter(|(k, sh)| *k < sh.n);
    if let Some((k, sh)) = &farewell {
        let beat = sh.beat().load(Ordering::Acquire);
        sh.leaving().fetch_or(1 << k, Ordering::AcqRel);
        let end = Instant::now() + FAREWELL_WAIT;
        // Two rounds of the machines (the bit seen), then the member's slow ring emptied.
        while Instant::now() < end
            && (sh.beat().load(Ordering::Acquire).wrapping_sub(beat) < 2 || sh.tx[*k].count() > 0)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let r = t
        .update(Duration::from_secs(1), |slots| {
            let k = slots
                .iter()
                .position(|n| n.as_deref() == Some(member))
                .ok_or_else(|| DriverError::config(format!("member {member}: not a member of port {bond}")))?;
            let mut new = slots.clone();
            new[k] = None;
            Ok((new, k))
        })
        .map_err(|e| bad(e.to_string()));
    if let Some((k, sh)) = &farewell {
        if r.as_ref().ok() != Some(k) {
            // Still a member (the removal failed), or the table moved meanwhile and slot k is
            // another member's: it carries on, its machines started again.
            sh.leaving().fetch_and(!(1 << k), Ordering::AcqRel);
        }
    }
    r
}

fn bond_info(p: &lab_core::process::Process, bond: PortId) -> Result<DevInfo, EthError> {
    let bi = p.info(bond).map_err(|e| EthError::Invalid { what: e.to_string() })?;
    if bi.dev.driver != NAME {
        return Err(EthError::Invalid { what: format!("port {bond} is {}, not a net_bonding port", bi.dev.driver) });
    }
    Ok(bi.dev)
}

/// Member `name` as this process has it attached, checked for the bond's queues.
fn resolve(ports: &Ports, name: &str, conf: &lab_core::ethdev::PortConf) -> Result<Member, String> {
    let (id, gen, info) = find_member(ports, name)
        .ok_or_else(|| format!("member {name}: no such port attached in this process (attach it first)"))?;
    if info.nb_rxq < conf.nb_rxq || info.nb_txq < conf.nb_txq {
        return Err(format!(
            "member {name} has {}/{} queues, the bond {}/{}",
            info.nb_rxq, info.nb_txq, conf.nb_rxq, conf.nb_txq
        ));
    }
    Ok(Member { id, gen, name: name.to_string(), mac: info.mac })
}

/// Mode 4, in every process: whether the primary's machines still run (their heartbeat moves).
struct Heart {
    shared: Shared,
    last: u32,
    still: u32,
}

impl Heart {
    fn look(&mut self, mon: &Monitor) {
        let b = self.shared.beat().load(Ordering::Acquire);
        if b == self.last {
            self.still = self.still.saturating_add(1);
        } else {
            (self.last, self.still) = (b, 0);
        }
        let stale = self.still > STALE_ROUNDS || !self.shared.alive();
        if stale != mon.machines_gone.swap(stale, Ordering::Relaxed) {
            tracing::warn!(
                stale,
                "net_bonding 802.3ad: the primary's LACP machines {}",
                if stale { "stopped: nothing distributes" } else { "run again" }
            );
        }
    }
}

/// The bond thread's view of the member table.
struct View {
    table: MemberTable,
    epoch: u32,
    /// The names as the table last gave them.
    slots: members::Slots,
    targets: [Option<(PortId, u32)>; MAX_MEMBERS],
    rounds: u32,
}

/// Rounds of the bond thread (100 ms each) between two looks for a member name this process
/// has not resolved (not attached here yet, or detached since, maybe attached again).
const RESOLVE_ROUNDS: u32 = 10;

impl View {
    fn new(table: MemberTable) -> View {
        View { table, epoch: 0, slots: Default::default(), targets: [None; MAX_MEMBERS], rounds: 0 }
    }

    /// When the table moved, or a member name this process had not resolved is now attached
    /// here (or one it had was detached, maybe attached again): its members as this process
    /// resolves them. A name not attached here stays empty (named in a warning when the table
    /// moved) and is looked for again every second.
    fn changed(&mut self, ports: &Ports) -> Option<Vec<Option<Member>>> {
        if self.table.epoch() != self.epoch {
            let (e, slots) = self.table.read()?;
            self.epoch = e;
            self.slots = slots;
            return Some(self.resolve(ports, true));
        }
        self.rounds = self.rounds.wrapping_add(1);
        if !self.rounds.is_multiple_of(RESOLVE_ROUNDS) || (0..MAX_MEMBERS).all(|k| self.current(ports, k)) {
            return None;
        }
        let before = self.targets;
        let members = self.resolve(ports, false);
        (self.targets != before).then_some(members)
    }

    /// Slot `k` is empty, or names the port this process resolved it to, still attached (a
    /// port slot busy in a burst counts as attached).
    fn current(&self, ports: &Ports, k: usize) -> bool {
        if self.slots[k].is_none() {
            return true;
        }
        let Some((id, gen)) = self.targets[k] else { return false };
        match ports.slot_within(id, Duration::from_millis(5)) {
            Ok(mut s) => s.as_mut().is_some_and(|lp| lp.gen == gen),
            Err(_) => true,
        }
    }

    fn resolve(&mut self, ports: &Ports, warn: bool) -> Vec<Option<Member>> {
        let members: Vec<Option<Member>> = self
            .slots
            .iter()
            .map(|n| {
                let n = n.as_deref()?;
                let m =
                    find_member(ports, n).map(|(id, gen, info)| Member { id, gen, name: n.to_string(), mac: info.mac });
                if m.is_none() && warn {
                    tracing::warn!(member = n, "net_bonding: a member named in the bond is not attached here (yet)");
                }
                m
            })
            .collect();
        self.targets = std::array::from_fn(|k| members[k].as_ref().map(|m| (m.id, m.gen)));
        let names: Vec<&str> = members.iter().flatten().map(|m| m.name.as_str()).collect();
        tracing::info!(members = %names.join(","), epoch = self.epoch, "net_bonding: members changed");
        members
    }
}

/// Member state, looked at by the bond's own thread (each member's `link()` may take a while:
/// a reconnect, an ioctl) so that bursts only read it.
#[derive(Default)]
struct Monitor {
    usable: [AtomicBool; MAX_MEMBERS],
    stop: AtomicBool,
    /// A new member list from the table, for the bursts to take (`try_lock`: never waited on).
    pending: std::sync::Mutex<Option<Vec<Option<Member>>>>,
    has_pending: AtomicBool,
    /// Mode 4: the primary's machines stopped (no heartbeat): nothing distributes.
    machines_gone: AtomicBool,
}

impl Monitor {
    /// Looks at every member: attached with the same generation, and its link up. A member
    /// whose slot is busy (a burst in another thread) keeps what was known.
    fn look(&self, ports: &Ports, members: &[Option<(PortId, u32)>]) {
        for (k, t) in members.iter().enumerate() {
            let Some((id, gen)) = *t else {
                self.usable[k].store(false, Ordering::Relaxed);
                continue;
            };
            if let Ok(mut s) = ports.slot_within(id, Duration::from_millis(5)) {
                let up = s.as_mut().is_some_and(|lp| lp.gen == gen && lp.dev.link().up);
                self.usable[k].store(up, Ordering::Relaxed);
            }
        }
    }

    /// Hands a new member list to the bursts.
    fn publish(&self, members: Vec<Option<Member>>) {
        let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(members);
        self.has_pending.store(true, Ordering::Release);
    }

    fn snapshot(&self) -> [bool; MAX_MEMBERS] {
        std::array::from_fn(|k| self.usable[k].load(Ordering::Relaxed))
    }
}

/// Mode 4's actor key (every member has it: one aggregator).
const LACP_KEY: u16 = 0x21;
/// Slow-protocol frames each shared ring holds (one member's LACPDUs and markers in flight).
const SLOW_RING: u32 = 16;
/// Slow frames a burst moves per member at most.
const SLOW_BURST: usize = 4;
const AGG_MAGIC: u32 = 0x4c41_4350;
/// magic, member count, heartbeat, each member's actor state, then the leaving members (a mask).
const WORDS_LEN: u64 = 4 * (4 + MAX_MEMBERS as u64);
/// How long a member's removal waits for its farewell LACPDU to go out (a bond nobody transmits
/// on sends none: the removal goes ahead, and the partner finds out at its timeout).
const FAREWELL_WAIT: Duration = Duration::from_secs(1);
/// Rounds (of 100 ms) without a heartbeat after which the machines count as gone (the primary
/// died): nothing distributes, as the partner soon stops collecting.
const STALE_ROUNDS: u32 = 10;

/// A slow frame in a shared ring: its bytes (at most an LACPDU's), then its length (u16 LE).
type SlowFrame = [u8; SLOW_ELEM];
const SLOW_ELEM: usize = 128;

fn pack(frame: &[u8]) -> SlowFrame {
    let mut f = [0u8; SLOW_ELEM];
    let len = frame.len().min(lacp::PDU_LEN);
    f[..len].copy_from_slice(&frame[..len]);
    f[lacp::PDU_LEN..lacp::PDU_LEN + 2].copy_from_slice(&(len as u16).to_le_bytes());
    f
}

/// The frame a ring element holds (its length bounded: the ring is shared memory).
fn unpack(f: &SlowFrame) -> &[u8] {
    let len = usize::from(u16::from_le_bytes([f[lacp::PDU_LEN], f[lacp::PDU_LEN + 1]]));
    &f[..len.min(lacp::PDU_LEN)]
}

/// Mode 4's state shared by every process: memzone `bond_<port>` holds a magic word and each
/// member's actor state (written by the primary's machines, read by every burst), and per
/// member two rings of slow-protocol frames: `bond_<port>_rx<k>` (bursts to the machines) and
/// `bond_<port>_tx<k>` (machines to bursts).
struct Shared {
    shm: Arc<Shm>,
    port: PortId,
    off: ShmOffset,
    n: usize,
    rx: Vec<Ring<SlowFrame>>,
    tx: Vec<Ring<SlowFrame>>,
    owner: bool,
}

impl Shared {
    fn zone(port: PortId) -> String {
        format!("bond_{}", port.0)
    }

    fn ring(port: PortId, dir: &str, k: usize) -> String {
        format!("bond_{}_{dir}{k}", port.0)
    }

    fn names(port: PortId, n: usize) -> Vec<String> {
        let mut v = vec![Shared::zone(port)];
        for k in 0..n {
            v.push(Shared::ring(port, "rx", k));
            v.push(Shared::ring(port, "tx", k));
        }
        v
    }

    /// Creates (the primary) or finds (a secondary) the bond's shared state; a failed create
    /// leaves nothing behind.
    fn open(shm: &Arc<Shm>, port: PortId, n: usize, create: bool) -> Result<Shared, DriverError> {
        let r = Shared::open_inner(shm, port, n, create);
        if r.is_err() && create {
            for name in Shared::names(port, n) {
                let _ = shm.free(&name);
            }
        }
        r
    }

    fn open_inner(shm: &Arc<Shm>, port: PortId, n: usize, create: bool) -> Result<Shared, DriverError> {
        let name = Shared::zone(port);
        let len = WORDS_LEN;
        let z = if create { shm.reserve(&name, len, 64) } else { shm.lookup(&name) }
            .ctx(format!("memzone {name} (mode 4's shared state{})", if create { "" } else { ": the primary's" }))?;
        if z.len < len || shm.ptr(z.offset, len).is_none() {
            return Err(DriverError::state(format!("memzone {name} is too small for mode 4's state")));
        }
        let mut sh = Shared { shm: shm.clone(), port, off: z.offset, n, rx: Vec::new(), tx: Vec::new(), owner: false };
        let ring = |dir: &str, k: usize| {
            let name = Shared::ring(port, dir, k);
            let r =
                if create { Ring::create(shm, &name, SLOW_RING, RingFlags::MPMC) } else { Ring::lookup(shm, &name) };
            r.ctx(format!("ring {name}"))
        };
        for k in 0..n {
            sh.rx.push(ring("rx", k)?);
            sh.tx.push(ring("tx", k)?);
        }
        if create {
            for k in 0..MAX_MEMBERS {
                sh.state(k).store(0, Ordering::Relaxed);
            }
            sh.words()[1].store(n as u32, Ordering::Relaxed);
            sh.words()[0].store(AGG_MAGIC, Ordering::Release);
        } else if sh.words()[0].load(Ordering::Acquire) != AGG_MAGIC
            || sh.words()[1].load(Ordering::Relaxed) != n as u32
        {
            return Err(DriverError::state(format!(
                "memzone {name} holds no mode 4 bond of {n} members (the primary's bond differs)"
            )));
        }
        sh.owner = create;
        Ok(sh)
    }

    #[allow(unsafe_code)]
    fn words(&self) -> &[AtomicU32] {
        let p = self.shm.ptr(self.off, WORDS_LEN).expect("checked at open").cast::<AtomicU32>();
        // SAFETY: WORDS_LEN bytes at a 64-aligned zone inside the mapping `self.shm` keeps
        // alive, used only as u32 atomics by every process.
        unsafe { std::slice::from_raw_parts(p.as_ptr(), 4 + MAX_MEMBERS) }
    }

    /// The members being removed (bit k: slot k), set by `member_remove` in any process: the
    /// machines send each one's farewell and stop distributing on it; they clear the bit when
    /// the slot changes.
    fn leaving(&self) -> &AtomicU32 {
        &self.words()[3 + MAX_MEMBERS]
    }

    /// The primary's mode 4 state of bond `port`, if it has one.
    fn find(shm: &Arc<Shm>, port: PortId) -> Option<Shared> {
        Shared::open(shm, port, MAX_MEMBERS, false).ok()
    }

    /// Member `k`'s actor state (802.1AX state bits).
    fn state(&self, k: usize) -> &AtomicU32 {
        &self.words()[3 + k]
    }

    /// The machines' heartbeat: one more at every round.
    fn beat(&self) -> &AtomicU32 {
        &self.words()[2]
    }

    /// Whether the zone still holds the bond (the primary clears the magic when it frees it).
    fn alive(&self) -> bool {
        self.words()[0].load(Ordering::Acquire) == AGG_MAGIC
    }
}

impl Shared {
    /// Another handle on the same state (the bond thread's), which frees nothing.
    fn handle(&self) -> Shared {
        Shared {
            shm: self.shm.clone(),
            port: self.port,
            off: self.off,
            n: self.n,
            rx: self.rx.clone(),
            tx: self.tx.clone(),
            owner: false,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The primary's bond frees it (its thread, which holds a handle too, has stopped).
        if self.owner {
            self.words()[0].store(0, Ordering::Release);
            for name in Shared::names(self.port, self.n) {
                let _ = self.shm.free(&name);
            }
        }
    }
}

/// Mode 4's machines with their view of the shared rings (the primary's bond thread).
struct Machines {
    lacp: lacp::Lacp,
    shared: Shared,
    macs: [[u8; 6]; MAX_MEMBERS],
    names: [String; MAX_MEMBERS],
}

impl Machines {
    /// One round: the slow frames the bursts took aside, the timers, the LACPDUs and marker
    /// responses to send, and each member's actor state published.
    fn run(&mut self, usable: &[bool; MAX_MEMBERS]) {
        let now = Instant::now();
        let mut frames = [[0u8; SLOW_ELEM]; SLOW_RING as usize];
        let mut responses: Vec<(usize, [u8; lacp::PDU_LEN])> = Vec::new();
        for k in 0..self.shared.n {
            let got = self.shared.rx[k].dequeue_burst(&mut frames);
            for f in frames[..got].iter().map(unpack) {
                match lacp::parse(f) {
                    Ok(lacp::Slow::Lacp { actor, partner }) => self.lacp.on_pdu(k, &actor, &partner, now),
                    Ok(lacp::Slow::Marker) => responses.extend(lacp::marker_response(f, self.macs[k]).map(|r| (k, r))),
                    Ok(lacp::Slow::MarkerResponse) => {}
                    Err(e) => tracing::debug!(member = %self.names[k], error = %e, "net_bonding: slow frame refused"),
                }
            }
        }
        // Members being removed say goodbye (once); one whose removal failed carries on afresh.
        let leaving = self.shared.leaving().load(Ordering::Acquire);
        for k in 0..self.shared.n {
            if leaving & (1 << k) != 0 && !self.names[k].is_empty() {
                if let Some(f) = self.lacp.leave(k, self.macs[k]) {
                    tracing::info!(member = %self.names[k], "net_bonding 802.3ad: member leaving: farewell LACPDU");
                    responses.push((k, f));
                }
            } else if leaving & (1 << k) == 0 && self.lacp.ports[k].leaving {
                self.lacp.reset_port(k);
            }
        }
        let (mut out, mut changes) = (Vec::new(), Vec::new());
        self.lacp.tick(now, &usable[..self.shared.n], &self.macs, &mut out, &mut changes);
        for c in changes {
            let p = &self.lacp.ports[c.member];
            tracing::info!(
                member = %self.names[c.member],
                mux = ?c.mux,
                rx = ?c.rx,
                actor_state = format_args!("{:#04x}", p.actor.state),
                partner_state = format_args!("{:#04x}", p.partner.state),
                partner = %p.partner.system.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                "net_bonding 802.3ad: member state"
            );
        }
        for (lacpdu, (k, f)) in responses.into_iter().map(|r| (false, r)).chain(out.into_iter().map(|o| (true, o))) {
            let q = &self.shared.tx[k];
            // At most two wait: after a pause without transmit bursts the newest state goes out,
            // not a backlog of old ones.
            let mut old = [[0u8; SLOW_ELEM]; 1];
            while q.count() >= 2 && q.dequeue_burst(&mut old) == 1 {}
            if q.enqueue_burst(&[pack(&f)]) == 0 {
                tracing::debug!(member = %self.names[k], "net_bonding: slow transmit ring full");
                if lacpdu {
                    self.lacp.not_sent(k);
                }
            }
        }
        for k in 0..self.shared.n {
            self.shared.state(k).store(u32::from(self.lacp.ports[k].actor.state), Ordering::Release);
        }
        self.shared.beat().fetch_add(1, Ordering::Release);
    }

    /// Member slots whose device changed start their machines again, their rings emptied.
    fn members_changed(&mut self, members: &[Option<Member>]) {
        for (k, slot) in members.iter().enumerate() {
            let name = slot.as_ref().map_or(String::new(), |s| s.name.clone());
            if name != self.names[k] {
                self.lacp.reset_port(k);
                self.shared.leaving().fetch_and(!(1 << k), Ordering::AcqRel);
                let mut f = [[0u8; SLOW_ELEM]; SLOW_RING as usize];
                while self.shared.rx[k].dequeue_burst(&mut f) > 0 {}
                while self.shared.tx[k].dequeue_burst(&mut f) > 0 {}
            }
            self.macs[k] = slot.as_ref().map_or([0; 6], |s| s.mac);
            self.names[k] = name;
        }
    }
}

/// The hash that picks a frame's member under balance-xor and 802.3ad (modulo the members in
/// use): the `policy`'s headers folded, then mixed (murmur3's finaliser), so that flows which
/// differ in one address byte spread over the members (the fold alone left the low bits to the
/// last byte folded: 16 flows from 16 sources all took one member of two).
fn xor_hash(d: &[u8], policy: Policy) -> u32 {
    let mut h = fold_headers(d, policy);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

fn fold_headers(d: &[u8], policy: Policy) -> u32 {
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
        if self.mon.has_pending.load(Ordering::Acquire) {
            let mon = self.mon.clone();
            let taken = mon.pending.try_lock().ok().map(|mut g| {
                mon.has_pending.store(false, Ordering::Release);
                g.take()
            });
            if let Some(Some(m)) = taken {
                self.members = m;
                if self.mode == Mode::Lacp {
                    for k in 0..MAX_MEMBERS {
                        self.promisc_for_lacp(k);
                    }
                }
            }
        }
        self.usable = self.mon.snapshot();
        for (u, m) in self.usable.iter_mut().zip(&self.members) {
            *u &= m.is_some();
        }
        if let Some(a) = &self.agg {
            let gone = self.mon.machines_gone.load(Ordering::Relaxed);
            for k in 0..MAX_MEMBERS {
                self.dist[k] = !gone && a.state(k).load(Ordering::Acquire) & u32::from(lacp::DISTRIBUTING) != 0;
            }
        }
    }

    /// Mode 4: member `k` receives everything (LACPDUs go to a multicast address, and traffic
    /// for the bond's MAC may come in on any member); a driver without the mode still works
    /// when its device takes those frames anyway.
    fn promisc_for_lacp(&mut self, k: usize) {
        if let Some(Err(e)) = self.with_member(k, |d| d.set_promisc(true)) {
            let name = self.members[k].as_ref().map_or("", |m| m.name.as_str()).to_string();
            tracing::warn!(member = %name, error = %e, "net_bonding mode 4: member not promiscuous");
        }
    }

    /// Mode 4: sends what the machines left in member `k`'s transmit ring on its queue `q`
    /// (a frame the member does not take is lost: the machines send again).
    fn send_slow(&mut self, k: usize, q: u16) {
        let (Some(a), Some(m)) = (&self.agg, &self.members[k]) else { return };
        if a.tx[k].count() == 0 || self.mon.machines_gone.load(Ordering::Relaxed) {
            return;
        }
        // The member first: frames are taken from the ring only when they can go now.
        let ports = self.ports.clone();
        let Ok(mut slot) = ports.slot_within(m.id, Duration::ZERO) else { return };
        let Some(lp) = slot.as_mut().filter(|lp| lp.gen == m.gen) else { return };
        let mut frames = [[0u8; SLOW_ELEM]; SLOW_BURST];
        let got = a.tx[k].dequeue_burst(&mut frames);
        let mut burst: [Option<Mbuf>; SLOW_BURST] = Default::default();
        let mut n = 0;
        for f in frames[..got].iter().map(unpack) {
            if let Some(mut mb) = self.pool.alloc() {
                if mb.copy_from(f) {
                    burst[n] = Some(mb);
                    n += 1;
                } else {
                    self.pool.free(mb);
                }
            }
        }
        lp.dev.tx_burst(q, &mut burst[..n]);
        for mb in burst.iter_mut().filter_map(Option::take) {
            self.pool.free(mb);
        }
    }

    /// Mode 4: of the `n` frames member `k` just put at `pkts[at..]`, slow-protocol frames go to
    /// the machines' ring and frames from a member not collecting are dropped; the rest close
    /// up. Returns how many are left.
    fn sort_received(&mut self, k: usize, pkts: &mut [Option<Mbuf>], at: usize, n: usize) -> usize {
        let Some(a) = &self.agg else { return n };
        let collecting = self.dist[k];
        let mut kept = 0;
        for i in at..at + n {
            let Some(m) = pkts[i].take() else { continue };
            if lacp::is_lacp_or_marker(m.data()) {
                // A full ring (the machines are behind) drops it: the partner sends again.
                let _ = a.rx[k].enqueue_burst(&[pack(m.data())]);
                self.pool.free(m);
            } else if !collecting {
                self.pool.free(m);
            } else {
                pkts[at + kept] = Some(m);
                kept += 1;
            }
        }
        kept
    }

    /// The member mode 1 uses.
    fn active(&self) -> Option<usize> {
        if self.usable[self.primary] {
            return Some(self.primary);
        }
        (0..MAX_MEMBERS).find(|&k| self.usable[k])
    }

    /// Runs `f` on member `k`'s device, or marks it unusable when it is gone.
    fn with_member<R>(&mut self, k: usize, f: impl FnOnce(&mut dyn EthDev) -> R) -> Option<R> {
        let m = self.members[k].as_ref()?;
        // Never wait on a member: one busy elsewhere is skipped this burst.
        let mut s = self.ports.slot_within(m.id, Duration::ZERO).ok()?;
        match s.as_mut() {
            Some(lp) if lp.gen == m.gen => Some(f(lp.dev.as_mut())),
            _ => {
                drop(s);
                self.usable[k] = false;
                self.mon.usable[k].store(false, Ordering::Relaxed);
                tracing::warn!(member = %self.members[k].as_ref().map_or("", |m| m.name.as_str()), "net_bonding: member gone");
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
            Mode::Lacp => (0..MAX_MEMBERS).any(|k| self.usable[k] && self.dist[k]),
            _ => self.usable.iter().any(|u| *u),
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
        for k in 0..MAX_MEMBERS {
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
        let nm = MAX_MEMBERS;
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
                let n = self.with_member(k, |d| d.rx_burst(queue, &mut pkts[got..])).unwrap_or(0);
                got += if self.mode == Mode::Lacp { self.sort_received(k, pkts, got, n) } else { n };
            }
        }
        for m in pkts[..got].iter_mut().flatten() {
            m.set_port(self.port.0);
        }
        let c = &mut self.rx[q];
        c.pkts += got as u64;
        c.bytes += pkts[..got].iter().flatten().map(|m| m.pkt_len() as u64).sum::<u64>();
        got
    }

    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let q = usize::from(queue);
        if q >= self.tx.len() {
            return 0;
        }
        self.look_if_due();
        let nm = MAX_MEMBERS;
        if self.mode == Mode::Lacp {
            for k in 0..nm {
                if self.usable[k] {
                    self.send_slow(k, queue);
                }
            }
        }
        let lacp = self.mode == Mode::Lacp;
        let usable: ArrayVec<usize, MAX_MEMBERS> =
            (0..nm).filter(|&k| self.usable[k] && (!lacp || self.dist[k])).collect();
        if usable.is_empty() {
            return 0;
        }
        if self.mode == Mode::ActiveBackup {
            let Some(k) = self.active() else { return 0 };
            let bytes: u64 = pkts.iter().map_while(|m| m.as_ref()).map(|m| m.pkt_len() as u64).sum();
            let sent = self.with_member(k, |d| d.tx_burst(queue, pkts)).unwrap_or(0);
            let left: u64 = pkts[sent..].iter().map_while(|m| m.as_ref()).map(|m| m.pkt_len() as u64).sum();
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
            bytes += m.pkt_len() as u64;
            match self.mode {
                Mode::RoundRobin => {
                    let j = self.rr[q] % usable.len();
                    self.rr[q] = self.rr[q].wrapping_add(1);
                    batches[j][fill[j]] = Some(m);
                    fill[j] += 1;
                }
                Mode::BalanceXor | Mode::Lacp => {
                    let j = xor_hash(m.data(), self.policy) as usize % usable.len();
                    batches[j][fill[j]] = Some(m);
                    fill[j] += 1;
                }
                Mode::Broadcast => {
                    // A copy for every usable member after the first; a copy that cannot be
                    // made is that member's loss.
                    for j in 1..usable.len() {
                        if let Some(mut c) = self.pool.alloc() {
                            // Every segment of a chained frame, into one buffer.
                            if c.append(m.pkt_len()).is_some_and(|d| m.copy_to(d).is_some()) {
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
            bytes -= m.pkt_len() as u64;
            pkts[taken + i] = Some(m);
        }
        self.tx[q].pkts += taken as u64;
        self.tx[q].bytes += bytes;
        taken
    }

    fn close(self: Box<Self>, how: Release) {
        let n = self.members.iter().flatten().count();
        tracing::info!(members = n, shared = how == Release::Shared, "net_bonding closed");
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
        assert_eq!(xor_hash(&[0u8; 10], Policy::L34), xor_hash(&[1u8; 12], Policy::L34), "a runt: one member");
        // 16 sources differing in their last byte spread over two members.
        let on_first = (0..16).filter(|i| xor_hash(&udp(9, 10 + i), Policy::L23).is_multiple_of(2)).count();
        assert!((3..=13).contains(&on_first), "{on_first} of 16 flows on the first of two members");
    }
}
