//! 802.3ad link aggregation (IEEE 802.1AX-2008, clause 6) for net_bonding mode 4: the LACPDU
//! and marker PDU formats (slow protocols, ethertype 0x8809), and per member the receive,
//! periodic transmission, selection and mux machines (coupled control: collecting and
//! distributing together, as Linux's bonding and DPDK's mode 4 do), and the marker responder.
//!
//! The machines are plain state, driven by [`Lacp::on_pdu`] for each LACPDU a member received
//! and [`Lacp::tick`] with the time and each member's link: no thread, no I/O, so the tests below
//! run two ends against each other frame by frame. The bond runs them in one process (the
//! primary's bond thread) and moves the PDUs through shared rings.

use std::time::{Duration, Instant};

/// Slow protocols ethertype.
pub(crate) const SLOW_ETHERTYPE: u16 = 0x8809;
/// Slow protocols multicast address (LACPDUs and markers go there).
pub(crate) const SLOW_MAC: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x02];
/// An LACPDU or marker PDU on the wire: 14 bytes of Ethernet header and 110 of PDU.
pub(crate) const PDU_LEN: usize = 124;
const SUBTYPE_LACP: u8 = 1;
const SUBTYPE_MARKER: u8 = 2;
const MARKER_INFO: u8 = 1;
const MARKER_RESPONSE: u8 = 2;

/// Port state bits (802.1AX 6.4.2.3 item m).
pub(crate) const ACTIVITY: u8 = 0x01;
/// Short timeout: the port wants LACPDUs every second.
pub(crate) const TIMEOUT: u8 = 0x02;
pub(crate) const AGGREGATION: u8 = 0x04;
pub(crate) const SYNC: u8 = 0x08;
pub(crate) const COLLECTING: u8 = 0x10;
pub(crate) const DISTRIBUTING: u8 = 0x20;
pub(crate) const DEFAULTED: u8 = 0x40;
pub(crate) const EXPIRED: u8 = 0x80;

const FAST_PERIODIC: Duration = Duration::from_secs(1);
const SLOW_PERIODIC: Duration = Duration::from_secs(30);
const SHORT_TIMEOUT: Duration = Duration::from_secs(3);
const LONG_TIMEOUT: Duration = Duration::from_secs(90);
const AGGREGATE_WAIT: Duration = Duration::from_secs(2);
/// LACPDUs per fast periodic time at most (6.4.16).
const MAX_TX_PER_PERIOD: usize = 3;

/// What one end says of a port (an actor or partner TLV, less its type and length).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortInfo {
    pub(crate) sys_prio: u16,
    pub(crate) system: [u8; 6],
    pub(crate) key: u16,
    pub(crate) port_prio: u16,
    pub(crate) port: u16,
    pub(crate) state: u8,
}

impl PortInfo {
    /// The same port of the same system with the same key (the state aside).
    fn same_port(&self, o: &PortInfo) -> bool {
        (self.sys_prio, self.system, self.key, self.port_prio, self.port)
            == (o.sys_prio, o.system, o.key, o.port_prio, o.port)
    }

    fn put(&self, b: &mut [u8]) {
        b[0..2].copy_from_slice(&self.sys_prio.to_be_bytes());
        b[2..8].copy_from_slice(&self.system);
        b[8..10].copy_from_slice(&self.key.to_be_bytes());
        b[10..12].copy_from_slice(&self.port_prio.to_be_bytes());
        b[12..14].copy_from_slice(&self.port.to_be_bytes());
        b[14] = self.state;
    }

    fn get(b: &[u8]) -> PortInfo {
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        PortInfo {
            sys_prio: u16_at(0),
            system: b[2..8].try_into().expect("6 bytes"),
            key: u16_at(8),
            port_prio: u16_at(10),
            port: u16_at(12),
            state: b[14],
        }
    }
}

/// A received slow-protocol PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slow {
    /// An LACPDU: the sender's view of itself and of us.
    Lacp { actor: PortInfo, partner: PortInfo },
    /// A marker information PDU (a response to one is made by [`marker_response`]).
    Marker,
    /// A marker response (to a marker we never send): ignored.
    MarkerResponse,
}

/// Why a slow-protocol frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadPdu {
    Short(usize),
    NotSlow,
    Subtype(u8),
    Tlv { at: usize, kind: u8, len: u8 },
}

impl std::fmt::Display for BadPdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadPdu::Short(n) => write!(f, "{n} bytes, an LACPDU or marker is {PDU_LEN}"),
            BadPdu::NotSlow => write!(f, "not a slow-protocols frame (ethertype 0x8809)"),
            BadPdu::Subtype(s) => write!(f, "slow-protocols subtype {s}: only 1 (LACP) and 2 (marker)"),
            BadPdu::Tlv { at, kind, len } => write!(f, "TLV at byte {at}: type {kind} length {len}"),
        }
    }
}

/// Whether a frame is a slow-protocols frame.
#[inline]
pub(crate) fn is_slow(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == SLOW_ETHERTYPE.to_be_bytes()
}

/// Whether a frame is an LACPDU or a marker PDU (what the bond's receive path takes aside:
/// other slow protocols, OAM or ESMC, go to the application).
#[inline]
pub(crate) fn is_lacp_or_marker(frame: &[u8]) -> bool {
    is_slow(frame) && frame.len() > 14 && matches!(frame[14], SUBTYPE_LACP | SUBTYPE_MARKER)
}

/// Parses an LACPDU or marker PDU (the whole frame). Every TLV type and length is checked.
pub(crate) fn parse(frame: &[u8]) -> Result<Slow, BadPdu> {
    if !is_slow(frame) {
        return Err(BadPdu::NotSlow);
    }
    if frame.len() < PDU_LEN {
        return Err(BadPdu::Short(frame.len()));
    }
    let p = &frame[14..];
    let tlv = |at: usize, kind: u8, len: u8| {
        if p[at] == kind && p[at + 1] == len {
            Ok(())
        } else {
            Err(BadPdu::Tlv { at: 14 + at, kind: p[at], len: p[at + 1] })
        }
    };
    match p[0] {
        SUBTYPE_LACP => {
            // The actor and partner TLVs are where version 1 puts them; what follows them is
            // not read (a later version's TLVs are ignored, as 802.1AX-2014 6.4.2.3 asks).
            tlv(2, 1, 20)?;
            tlv(22, 2, 20)?;
            Ok(Slow::Lacp { actor: PortInfo::get(&p[4..]), partner: PortInfo::get(&p[24..]) })
        }
        SUBTYPE_MARKER => match p[2] {
            MARKER_INFO => tlv(2, MARKER_INFO, 16).map(|_| Slow::Marker),
            MARKER_RESPONSE => tlv(2, MARKER_RESPONSE, 16).map(|_| Slow::MarkerResponse),
            k => Err(BadPdu::Tlv { at: 16, kind: k, len: p[3] }),
        },
        s => Err(BadPdu::Subtype(s)),
    }
}

fn header(src: [u8; 6]) -> [u8; PDU_LEN] {
    let mut f = [0u8; PDU_LEN];
    f[0..6].copy_from_slice(&SLOW_MAC);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&SLOW_ETHERTYPE.to_be_bytes());
    f
}

/// An LACPDU from `src` saying `actor` and `partner` (6.4.2.3).
pub(crate) fn lacpdu(src: [u8; 6], actor: &PortInfo, partner: &PortInfo) -> [u8; PDU_LEN] {
    let mut f = header(src);
    let p = &mut f[14..];
    p[0] = SUBTYPE_LACP;
    p[1] = 1;
    p[2..4].copy_from_slice(&[1, 20]);
    actor.put(&mut p[4..]);
    p[22..24].copy_from_slice(&[2, 20]);
    partner.put(&mut p[24..]);
    p[42..44].copy_from_slice(&[3, 16]);
    // Collector max delay 0: frames are delivered as they come.
    p[58..60].copy_from_slice(&[0, 0]);
    f
}

/// The response to marker information PDU `frame`, from `src` (6.5.3.3: the same fields with
/// the response TLV type).
pub(crate) fn marker_response(frame: &[u8], src: [u8; 6]) -> Option<[u8; PDU_LEN]> {
    (parse(frame).ok()? == Slow::Marker).then(|| {
        let mut f = header(src);
        f[14..PDU_LEN].copy_from_slice(&frame[14..PDU_LEN]);
        f[16] = MARKER_RESPONSE;
        f
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxState {
    /// Link down.
    Disabled,
    /// No LACPDU within the timeout: the partner is asked for fast ones.
    Expired,
    /// No partner: the defaults stand in for one (never aggregated).
    Defaulted,
    /// The partner's LACPDUs arrive.
    Current,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MuxState {
    Detached,
    Waiting,
    Attached,
    CollectingDistributing,
}

/// One member's machines.
#[derive(Clone, Debug)]
pub(crate) struct Port {
    pub(crate) actor: PortInfo,
    pub(crate) partner: PortInfo,
    pub(crate) rx: RxState,
    pub(crate) mux: MuxState,
    selected: bool,
    current_while: Option<Instant>,
    wait_while: Option<Instant>,
    periodic_at: Option<Instant>,
    ntt: bool,
    sent: [Option<Instant>; MAX_TX_PER_PERIOD],
    /// Leaving the bond ([`Lacp::leave`]): its machines stay still until [`Lacp::reset_port`].
    pub(crate) leaving: bool,
}

/// The bond's aggregation: one aggregator (every member has the bond's key), joined by the
/// members whose partner is the same system and key as the first one's.
#[derive(Debug)]
pub(crate) struct Lacp {
    pub(crate) ports: Vec<Port>,
    /// The partner (priority, system, key) the aggregator is bound to while it has members.
    agg_partner: Option<(u16, [u8; 6], u16)>,
}

/// What the machines changed that the bond logs (not per frame: per state change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) member: usize,
    pub(crate) mux: MuxState,
    pub(crate) rx: RxState,
}

impl Lacp {
    /// `n` members of a bond whose system id is `system` (its MAC); `fast`: `lacp_rate=fast`
    /// (the partner is asked for an LACPDU every second, and a silent one expires after 3).
    pub(crate) fn new(system: [u8; 6], key: u16, fast: bool, n: usize) -> Lacp {
        let ports = (0..n)
            .map(|k| Port {
                actor: PortInfo {
                    sys_prio: 0xffff,
                    system,
                    key,
                    port_prio: 0xff,
                    port: k as u16 + 1,
                    state: ACTIVITY | AGGREGATION | if fast { TIMEOUT } else { 0 } | DEFAULTED,
                },
                partner: PortInfo::default(),
                rx: RxState::Disabled,
                mux: MuxState::Detached,
                selected: false,
                current_while: None,
                wait_while: None,
                periodic_at: None,
                ntt: false,
                sent: [None; MAX_TX_PER_PERIOD],
                leaving: false,
            })
            .collect();
        Lacp { ports, agg_partner: None }
    }

    /// Whether member `k` carries the bond's traffic (distributing, so collecting too).
    #[cfg(test)]
    pub(crate) fn distributing(&self, k: usize) -> bool {
        self.ports[k].actor.state & DISTRIBUTING != 0
    }

    /// An LACPDU `tick` gave for member `k` could not be queued: it is sent again at the next
    /// tick (the transmission is not counted against the rate limit).
    pub(crate) fn not_sent(&mut self, k: usize) {
        let p = &mut self.ports[k];
        p.ntt = true;
        if let Some(i) = p.sent.iter().rposition(Option::is_some) {
            p.sent[i] = None;
        }
    }

    /// Member slot `k` holds another device now: its machines start again from a port that was
    /// never up (nothing of the old device's partner or state carries over).
    pub(crate) fn reset_port(&mut self, k: usize) {
        let p = &mut self.ports[k];
        // Every port of ours is aggregatable (a leaving one said it was not).
        let state = p.actor.state & (ACTIVITY | TIMEOUT) | AGGREGATION | DEFAULTED;
        p.actor.state = state;
        p.leaving = false;
        p.partner = PortInfo::default();
        p.rx = RxState::Disabled;
        p.mux = MuxState::Detached;
        p.selected = false;
        p.current_while = None;
        p.wait_while = None;
        p.periodic_at = None;
        p.ntt = false;
        p.sent = [None; MAX_TX_PER_PERIOD];
    }

    /// Member `k` leaves the bond (taken out at runtime): it is out of the aggregator at once,
    /// and its actor says it is no longer in sync, collecting, distributing or aggregatable, as
    /// Linux's bonding says of a port it releases, so that the partner takes the link out of
    /// its aggregation now rather than when its timer runs out (3 or 90 s of frames sent to a
    /// port that no longer collects). The farewell LACPDU (from `src`), once, when the link is
    /// up; the port's machines then stay still until [`Lacp::reset_port`].
    pub(crate) fn leave(&mut self, k: usize, src: [u8; 6]) -> Option<[u8; PDU_LEN]> {
        let p = &mut self.ports[k];
        if p.leaving {
            return None;
        }
        p.leaving = true;
        p.selected = false;
        p.mux = MuxState::Detached;
        (p.wait_while, p.periodic_at, p.ntt) = (None, None, false);
        p.actor.state &= !(SYNC | COLLECTING | DISTRIBUTING | AGGREGATION);
        (p.rx != RxState::Disabled).then(|| lacpdu(src, &p.actor, &p.partner))
    }

    /// The receive machine's CURRENT state on an LACPDU member `k` received (6.4.12).
    pub(crate) fn on_pdu(&mut self, k: usize, actor: &PortInfo, partner: &PortInfo, now: Instant) {
        let p = &mut self.ports[k];
        // Our own LACPDU come back (two members cabled together, a loopback): never a partner.
        if p.rx == RxState::Disabled || p.leaving || actor.system == p.actor.system {
            return;
        }
        // update_Selected: another partner port (or its aggregation) means a new selection.
        if !actor.same_port(&p.partner) || (actor.state ^ p.partner.state) & AGGREGATION != 0 {
            p.selected = false;
        }
        // update_NTT: the partner's view of us is out of date.
        let bits = ACTIVITY | TIMEOUT | SYNC | AGGREGATION;
        if !partner.same_port(&p.actor) || (partner.state ^ p.actor.state) & bits != 0 {
            p.ntt = true;
        }
        // recordPDU: the partner is what it says; it is in sync with us when it says so of the
        // port we are (an individual partner is in sync on its own say).
        let matched = partner.same_port(&p.actor) && (partner.state & AGGREGATION) == (p.actor.state & AGGREGATION);
        let in_sync = actor.state & SYNC != 0 && (matched || actor.state & AGGREGATION == 0);
        p.partner = *actor;
        if !in_sync {
            p.partner.state &= !SYNC;
        }
        p.actor.state &= !(DEFAULTED | EXPIRED);
        p.rx = RxState::Current;
        let timeout = if p.actor.state & TIMEOUT != 0 { SHORT_TIMEOUT } else { LONG_TIMEOUT };
        p.current_while = Some(now + timeout);
    }

    /// Runs every member's timers and machines at `now` with their links (`up[k]`); returns the
    /// LACPDUs to send (member, frame from `macs[k]`) and the state changes.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        up: &[bool],
        macs: &[[u8; 6]],
        out: &mut Vec<(usize, [u8; PDU_LEN])>,
        changes: &mut Vec<Change>,
    ) {
        for k in 0..self.ports.len() {
            if self.ports[k].leaving {
                continue;
            }
            let before = (self.ports[k].mux, self.ports[k].rx);
            self.receive_timers(k, up[k], now);
            self.select(k);
            self.mux(k, now);
            self.periodic(k, now);
            let p = &mut self.ports[k];
            if p.ntt && p.rx != RxState::Disabled {
                // At most 3 LACPDUs in any fast periodic time; the rest wait (6.4.16).
                if let Some(slot) = p.sent.iter().position(|t| t.is_none_or(|t| now >= t + FAST_PERIODIC)) {
                    p.sent[slot] = Some(now);
                    p.ntt = false;
                    out.push((k, lacpdu(macs[k], &p.actor, &p.partner)));
                }
            }
            if (p.mux, p.rx) != before {
                changes.push(Change { member: k, mux: p.mux, rx: p.rx });
            }
        }
        // The aggregator lets go of its partner once no member is left in it.
        if self.ports.iter().all(|p| !p.selected) {
            self.agg_partner = None;
        }
    }

    fn receive_timers(&mut self, k: usize, up: bool, now: Instant) {
        let p = &mut self.ports[k];
        if !up {
            if p.rx != RxState::Disabled {
                // PORT_DISABLED: the partner is out of sync, and the port leaves the aggregator.
                p.rx = RxState::Disabled;
                p.partner.state &= !SYNC;
                p.selected = false;
                p.current_while = None;
            }
            return;
        }
        let expired = p.current_while.is_some_and(|t| now >= t);
        match p.rx {
            RxState::Disabled => self.expire(k, now),
            RxState::Current if expired => self.expire(k, now),
            RxState::Expired if expired => {
                // DEFAULTED: no partner; the default one (nobody) cannot be aggregated with.
                let p = &mut self.ports[k];
                p.rx = RxState::Defaulted;
                p.partner = PortInfo::default();
                p.selected = false;
                p.actor.state = (p.actor.state | DEFAULTED) & !EXPIRED;
                p.current_while = None;
            }
            _ => {}
        }
    }

    /// EXPIRED: the partner is out of sync and asked (short timeout) for LACPDUs every second.
    fn expire(&mut self, k: usize, now: Instant) {
        let p = &mut self.ports[k];
        p.rx = RxState::Expired;
        p.partner.state = (p.partner.state & !SYNC) | TIMEOUT;
        p.actor.state |= EXPIRED;
        p.current_while = Some(now + SHORT_TIMEOUT);
        p.ntt = true;
    }

    /// Selection logic (6.4.14): a member with a current, aggregatable partner joins the
    /// aggregator when the aggregator is free or bound to that partner system and key.
    fn select(&mut self, k: usize) {
        let p = &self.ports[k];
        // A port joins from Detached only, so that it always waits and syncs anew (a partner
        // port that changed under a running one goes back through Detached first).
        if p.selected || p.mux != MuxState::Detached || p.rx != RxState::Current || p.partner.state & AGGREGATION == 0 {
            return;
        }
        let theirs = (p.partner.sys_prio, p.partner.system, p.partner.key);
        match self.agg_partner {
            Some(a) if a != theirs => {} // another system: this member stands by
            _ => {
                self.agg_partner = Some(theirs);
                self.ports[k].selected = true;
            }
        }
    }

    /// The mux machine, coupled control (6.4.15, figure 6-22).
    fn mux(&mut self, k: usize, now: Instant) {
        let p = &mut self.ports[k];
        let partner_sync = p.partner.state & SYNC != 0;
        let set = |p: &mut Port, bits: u8, on: bool| {
            let s = if on { p.actor.state | bits } else { p.actor.state & !bits };
            if s != p.actor.state {
                p.actor.state = s;
                p.ntt = true;
            }
        };
        match p.mux {
            MuxState::Detached if p.selected => {
                p.mux = MuxState::Waiting;
                p.wait_while = Some(now + AGGREGATE_WAIT);
            }
            MuxState::Waiting if !p.selected => {
                p.mux = MuxState::Detached;
                p.wait_while = None;
            }
            MuxState::Waiting if p.wait_while.is_some_and(|t| now >= t) => {
                p.mux = MuxState::Attached;
                p.wait_while = None;
                set(p, SYNC, true);
            }
            MuxState::Attached if !p.selected => {
                p.mux = MuxState::Detached;
                set(p, SYNC | COLLECTING | DISTRIBUTING, false);
            }
            MuxState::Attached if partner_sync => {
                p.mux = MuxState::CollectingDistributing;
                set(p, COLLECTING | DISTRIBUTING, true);
            }
            MuxState::CollectingDistributing if !p.selected || !partner_sync => {
                p.mux = MuxState::Attached;
                set(p, COLLECTING | DISTRIBUTING, false);
                if !p.selected {
                    p.mux = MuxState::Detached;
                    set(p, SYNC, false);
                }
            }
            _ => {}
        }
    }

    /// Periodic transmission (6.4.13): every second when the partner asked for short
    /// timeouts, else every 30 s; none while the link is down.
    fn periodic(&mut self, k: usize, now: Instant) {
        let p = &mut self.ports[k];
        if p.rx == RxState::Disabled {
            p.periodic_at = None;
            return;
        }
        let period = if p.partner.state & TIMEOUT != 0 { FAST_PERIODIC } else { SLOW_PERIODIC };
        match p.periodic_at {
            // Due (or never run): transmit, and again a period from now.
            None => p.ntt = true,
            Some(t) if now >= t => p.ntt = true,
            // The partner asked for short timeouts: transmit now, then every second.
            Some(t) if t > now + period => p.ntt = true,
            Some(_) => return,
        }
        p.periodic_at = Some(now + period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn lacpdus_and_markers_round_trip_and_bad_ones_are_named() {
        let actor = PortInfo { sys_prio: 0x8000, system: A, key: 33, port_prio: 255, port: 2, state: 0x3d };
        let partner = PortInfo { sys_prio: 1, system: B, key: 9, port_prio: 7, port: 1, state: 0x05 };
        let f = lacpdu(A, &actor, &partner);
        assert_eq!(f.len(), 124);
        assert_eq!(&f[..6], &SLOW_MAC);
        assert_eq!(f[14..16], [1, 1], "subtype LACP, version 1");
        assert_eq!(parse(&f), Ok(Slow::Lacp { actor, partner }));
        // 802.1AX figure 6-7 offsets: actor system at PDU byte 6, partner key at 32, terminator at 58.
        assert_eq!(&f[14 + 6..14 + 12], &A);
        assert_eq!(u16::from_be_bytes([f[14 + 32], f[14 + 33]]), 9);
        let mut bad = f;
        bad[14 + 23] = 19;
        assert_eq!(parse(&bad), Err(BadPdu::Tlv { at: 14 + 22, kind: 2, len: 19 }));
        assert_eq!(parse(&f[..100]), Err(BadPdu::Short(100)));
        // A later version's extra TLVs after the partner's are not read.
        let mut v2 = f;
        v2[15] = 2;
        v2[14 + 42] = 0x55;
        assert_eq!(parse(&v2), Ok(Slow::Lacp { actor, partner }));
        assert!(
            is_lacp_or_marker(&f)
                && !is_lacp_or_marker(&{
                    let mut o = f;
                    o[14] = 3; // OAM: the application's
                    o
                })
        );
        let mut other = f;
        other[14] = 10;
        assert_eq!(parse(&other), Err(BadPdu::Subtype(10)));
        assert!(BadPdu::Subtype(10).to_string().contains("subtype 10"));

        let mut m = header(B);
        m[14..20].copy_from_slice(&[SUBTYPE_MARKER, 1, MARKER_INFO, 16, 0, 3]);
        m[20..26].copy_from_slice(&B);
        m[26..30].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        let r = marker_response(&m, A).expect("a response");
        assert_eq!(&r[6..12], &A, "from us");
        assert_eq!(r[16], MARKER_RESPONSE);
        assert_eq!(r[17..PDU_LEN], m[17..PDU_LEN], "the requester's port, system and transaction as sent");
        assert_eq!(parse(&r), Ok(Slow::MarkerResponse));
        assert!(marker_response(&r, A).is_none(), "a response is not answered");
        assert!(marker_response(&f, A).is_none(), "nor an LACPDU");
    }

    /// Two bonds of two members each, member k cabled to member k; frames cross at each tick.
    /// `up_a`/`up_b`: the link as each end sees it (a PDU reaches a disabled port and is ignored).
    struct Pair {
        a: Lacp,
        b: Lacp,
        now: Instant,
        up_a: [bool; 2],
        up_b: [bool; 2],
        sent: usize,
    }

    impl Pair {
        fn new() -> Pair {
            let (a, b) = (Lacp::new(A, 1, true, 2), Lacp::new(B, 7, true, 2));
            Pair { a, b, now: Instant::now(), up_a: [true; 2], up_b: [true; 2], sent: 0 }
        }
        fn step(&mut self) {
            self.now += Duration::from_millis(100);
            let (mut fa, mut fb, mut ch) = (Vec::new(), Vec::new(), Vec::new());
            self.a.tick(self.now, &self.up_a, &[A, A], &mut fa, &mut ch);
            self.b.tick(self.now, &self.up_b, &[B, B], &mut fb, &mut ch);
            self.sent += fa.len() + fb.len();
            for (to, frames) in [(&mut self.b, fa), (&mut self.a, fb)] {
                for (k, f) in frames {
                    let Ok(Slow::Lacp { actor, partner }) = parse(&f) else { panic!("we sent a bad LACPDU") };
                    to.on_pdu(k, &actor, &partner, self.now);
                }
            }
        }
        fn run(&mut self, secs: u64) {
            for _ in 0..secs * 10 {
                self.step();
            }
        }
        fn both(&self, k: usize) -> (bool, bool) {
            (self.a.distributing(k), self.b.distributing(k))
        }
    }

    #[test]
    fn two_ends_aggregate_then_a_silent_member_expires_and_comes_back() {
        let mut p = Pair::new();
        p.step();
        assert_eq!(p.both(0), (false, false), "nothing before the aggregate wait");
        p.run(3);
        for k in 0..2 {
            assert_eq!(p.both(k), (true, true), "member {k} distributing at both ends");
            assert_eq!(p.a.ports[k].partner.system, B);
            assert_eq!(p.a.ports[k].mux, MuxState::CollectingDistributing);
            let bits = SYNC | COLLECTING | DISTRIBUTING | DEFAULTED | EXPIRED;
            assert_eq!(p.a.ports[k].actor.state & bits, SYNC | COLLECTING | DISTRIBUTING);
        }
        // Steady state with short timeouts: about one LACPDU per member per second each way.
        let before = p.sent;
        p.run(10);
        let per_s = (p.sent - before) as f64 / 10.0;
        assert!((3.0..=6.0).contains(&per_s), "{per_s} LACPDUs per second for 2 x 2 members");

        // Member 1's link drops at b only: b stops at once; a, whose link stays up, hears
        // nothing more and stops when its partner expires (3 s), then defaults (3 s later).
        p.up_b[1] = false;
        p.step();
        assert_eq!(p.both(1), (true, false), "b's member 1 left at once");
        p.run(4);
        assert_eq!((p.a.ports[1].rx, p.a.distributing(1)), (RxState::Expired, false), "a's member 1 expired");
        assert_eq!(p.both(0), (true, true), "member 0 carries on");
        p.run(3);
        assert_eq!(p.a.ports[1].rx, RxState::Defaulted);
        assert_eq!(p.a.ports[1].partner, PortInfo::default(), "no partner");
        p.up_b[1] = true;
        p.run(4);
        assert_eq!(p.both(1), (true, true), "member 1 back in the aggregate");
        // Down at both ends: out of the aggregate on both sides at the next tick.
        p.up_a[0] = false;
        p.up_b[0] = false;
        p.step();
        assert_eq!(p.both(0), (false, false));
        assert_eq!(p.both(1), (true, true));
    }

    #[test]
    fn a_member_leaving_says_so_and_the_partner_lets_go_of_it_at_once() {
        let mut p = Pair::new();
        p.run(3);
        assert_eq!((p.both(0), p.both(1)), ((true, true), (true, true)));
        let f = p.a.leave(1, A).expect("a farewell on a live link");
        assert!(p.a.leave(1, A).is_none(), "said once");
        assert!(!p.a.distributing(1), "out of a's aggregator at once");
        let Ok(Slow::Lacp { actor, partner }) = parse(&f) else { panic!("a bad farewell") };
        assert_eq!(actor.state & (SYNC | COLLECTING | DISTRIBUTING | AGGREGATION), 0, "{:#x}", actor.state);
        assert_eq!(partner, p.a.ports[1].partner, "it names the partner as it knew it");
        p.b.on_pdu(1, &actor, &partner, p.now);
        let sent = p.sent;
        p.step();
        // Long before b's 3 s timeout: b's member 1 is out of its aggregate too, member 0 stays.
        assert_eq!(p.both(1), (false, false), "b let go of member 1 at its next tick");
        assert_eq!(p.both(0), (true, true), "member 0 carries on");
        p.run(5);
        assert_eq!(p.both(1), (false, false), "a's leaving member stays out (b's LACPDUs to it change nothing)");
        assert!(p.sent > sent, "the others go on talking");
        // The slot taken by a device again: its machines start afresh, aggregatable.
        p.a.reset_port(1);
        assert_ne!(p.a.ports[1].actor.state & AGGREGATION, 0);
        p.run(4);
        assert_eq!(p.both(1), (true, true), "back in the aggregate");
    }

    #[test]
    fn our_own_lacpdus_looped_back_are_no_partner_and_an_unsent_one_goes_again() {
        let mut a = Lacp::new(A, 1, true, 2);
        let now = Instant::now();
        let (mut out, mut ch) = (Vec::new(), Vec::new());
        a.tick(now, &[true, true], &[A, A], &mut out, &mut ch);
        assert_eq!(out.len(), 2, "one LACPDU per member on the way up");
        // Member 0's LACPDU comes back on member 1 (the two cabled together).
        let Ok(Slow::Lacp { actor, partner }) = parse(&out[0].1) else { panic!() };
        a.on_pdu(1, &actor, &partner, now);
        assert_eq!(a.ports[1].rx, RxState::Expired, "our own system is never a partner");
        // A member's LACPDU that could not be queued goes at the next tick, not at the next period.
        a.not_sent(0);
        out.clear();
        a.tick(now + Duration::from_millis(100), &[true, true], &[A, A], &mut out, &mut ch);
        assert_eq!(out.iter().filter(|(k, _)| *k == 0).count(), 1);
        // A slot that holds another device starts again from down.
        a.reset_port(0);
        assert_eq!(
            (a.ports[0].rx, a.ports[0].mux, a.ports[0].partner),
            (RxState::Disabled, MuxState::Detached, PortInfo::default())
        );
    }

    #[test]
    fn a_member_facing_another_system_stands_by() {
        let mut a = Lacp::new(A, 1, true, 2);
        let now = Instant::now();
        let them = |sys: [u8; 6], port| PortInfo {
            sys_prio: 1,
            system: sys,
            key: 5,
            port_prio: 1,
            port,
            state: ACTIVITY | AGGREGATION | TIMEOUT,
        };
        let (mut out, mut ch) = (Vec::new(), Vec::new());
        a.tick(now, &[true, true], &[A, A], &mut out, &mut ch);
        a.on_pdu(0, &them(B, 1), &PortInfo::default(), now);
        a.on_pdu(1, &them([2, 0, 0, 0, 0, 0xc], 1), &PortInfo::default(), now);
        for i in 1..=30 {
            a.tick(now + Duration::from_millis(100 * i), &[true, true], &[A, A], &mut out, &mut ch);
        }
        assert_eq!(a.ports[0].mux, MuxState::Attached, "selected, waiting for its partner's sync");
        assert_eq!(a.ports[1].mux, MuxState::Detached, "another system's port is not aggregated with B's");
        assert!(out.iter().all(|(_, f)| parse(f).is_ok()));
        assert!(ch.iter().any(|c| c.member == 0 && c.mux == MuxState::Attached));
    }
}
