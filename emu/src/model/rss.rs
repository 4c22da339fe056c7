//! Receive-side scaling as both NICs compute it: the Toeplitz hash over a frame's addresses and
//! ports (82599 datasheet 7.1.2.8, X710 datasheet 7.1.10; Microsoft's "RSS hashing functions"), and
//! the header fields it is taken over. Each model decides which of them to hash (its own enable
//! bits) and where the hash sends the frame (its own redirection table).
//!
//! The hash is computed with one table of 256 entries per input byte, built when the key changes
//! (a key write, not the data path): a frame's hash is one lookup and one XOR per input byte, 12
//! for IPv4 with ports, 36 for IPv6 with ports.

/// Frame bytes the parse looks at: Ethernet, two VLAN tags, the IPv6 header and up to
/// [`MAX_EXT`] bytes of its extension headers (the longest IPv4 header, 60 with options, fits
/// too), the ports. A chain of extension headers longer than that hashes on the addresses.
pub const HEADER_BYTES: usize = 14 + 8 + 40 + MAX_EXT + 4;
/// IPv6 extension header bytes walked at most.
pub const MAX_EXT: usize = 160;

/// Input bytes at most: IPv6 source and destination addresses and the two ports.
pub const MAX_INPUT: usize = 36;
/// Key bytes the hash of [`MAX_INPUT`] bytes reads (the window slides one bit per input bit).
pub const KEY_LEN: usize = MAX_INPUT + 4;

/// The 32-bit window of `key` (most significant bit first) starting at bit `k`; zeros past its end.
fn window(key: &[u8], k: usize) -> u32 {
    let mut b = [0u8; 8];
    for (i, v) in b.iter_mut().enumerate() {
        *v = key.get(k / 8 + i).copied().unwrap_or(0);
    }
    ((u64::from_be_bytes(b) << (k % 8)) >> 32) as u32
}

/// The Toeplitz hash of `input` under `key`, bit by bit, as the datasheets state it: for each set
/// bit of the input (most significant first), the 32 key bits starting at that bit's position are
/// XORed into the result. The reference [`Toeplitz::hash`] is checked against.
pub fn toeplitz_bitwise(key: &[u8], input: &[u8]) -> u32 {
    let mut h = 0;
    for (i, byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                h ^= window(key, 8 * i + bit);
            }
        }
    }
    h
}

/// The Toeplitz hash for one key, by table.
pub struct Toeplitz {
    table: Box<[[u32; 256]; MAX_INPUT]>,
}

impl std::fmt::Debug for Toeplitz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toeplitz").finish_non_exhaustive()
    }
}

impl Toeplitz {
    /// The tables for `key` (bytes past its end count as zero).
    pub fn new(key: &[u8]) -> Toeplitz {
        let mut t = Toeplitz { table: Box::new([[0; 256]; MAX_INPUT]) };
        t.set_key(key);
        t
    }

    /// Rebuilds the tables for a new key.
    pub fn set_key(&mut self, key: &[u8]) {
        for (i, row) in self.table.iter_mut().enumerate() {
            let w: [u32; 8] = std::array::from_fn(|bit| window(key, 8 * i + bit));
            for (v, slot) in row.iter_mut().enumerate() {
                *slot = (0..8).filter(|bit| v & (0x80 >> bit) != 0).fold(0, |h, bit| h ^ w[bit]);
            }
        }
    }

    /// The hash of `input` (at most [`MAX_INPUT`] bytes; more are not hashed).
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        input.iter().zip(self.table.iter()).fold(0, |h, (b, row)| h ^ row[usize::from(*b)])
    }

    /// The hash of a flow: its addresses, then its ports if `with_ports` and it has them. The
    /// hash is linear in its input bytes, so the two parts are hashed where they lie in the
    /// frame and XORed, with no copy; the IPv4 and IPv6 lengths are fixed-size loops.
    #[inline(always)]
    pub fn hash_flow(&self, flow: &Flow<'_>, with_ports: bool) -> u32 {
        let a = flow.addrs;
        let h = if let (false, Some(a)) = (flow.v6, a.first_chunk::<8>()) {
            self.hash_at(0, a)
        } else if let Some(a) = a.first_chunk::<32>() {
            self.hash_at(0, a)
        } else {
            self.hash(a)
        };
        match flow.ports {
            Some(p) if with_ports => h ^ self.hash_at(a.len(), p),
            _ => h,
        }
    }

    /// The hash of a flow as the "IPv6 EX" types take it: [`Flow::ex_addrs`], then the ports
    /// if `with_ports` and it has them. For IPv4, [`Toeplitz::hash_flow`].
    pub fn hash_flow_ex(&self, flow: &Flow<'_>, with_ports: bool) -> u32 {
        let Some((src, dst)) = flow.ex_addrs() else { return self.hash_flow(flow, with_ports) };
        let h = self.hash_at(0, src) ^ self.hash_at(16, dst);
        match flow.ports {
            Some(p) if with_ports => h ^ self.hash_at(32, p),
            _ => h,
        }
    }

    /// The part of a hash that `N` input bytes `b` at input offset `at` contribute (0 past
    /// [`MAX_INPUT`]).
    #[inline(always)]
    fn hash_at<const N: usize>(&self, at: usize, b: &[u8; N]) -> u32 {
        let rows = self.table.get(at..).unwrap_or_default();
        rows.iter().zip(b).fold(0, |h, (row, &x)| h ^ row[usize::from(x)])
    }
}

/// The transport a flow's hash may cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP, with its ports.
    Tcp,
    /// UDP, with its ports.
    Udp,
    /// SCTP, with its ports.
    Sctp,
    /// Another protocol, or a transport header the frame does not hold whole: addresses only.
    Other,
    /// A fragment (IPv4 MF or offset, IPv6 fragment header): addresses only, as every fragment
    /// of a datagram must land on one queue.
    Fragment,
}

/// The fields of one frame's flow, in hash input order: source address, destination address,
/// source port, destination port (network byte order, as on the wire), where they lie in the
/// frame.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The transport.
    pub l4: L4,
    /// Source and destination address (8 or 32 bytes).
    addrs: &'a [u8],
    /// Source and destination port: TCP, UDP and SCTP whose ports the frame holds whole.
    ports: Option<&'a [u8; 4]>,
    /// IPv6 only: the addresses the "IPv6 EX" hashes take (Microsoft's NDIS_HASH_IPV6_EX): the
    /// Home Address option of a destination options header instead of the source, the address
    /// of a type 2 routing header instead of the destination, each when the frame has one.
    ex_src: Option<&'a [u8; 16]>,
    ex_dst: Option<&'a [u8; 16]>,
}

impl Flow<'_> {
    /// The addresses: the input of an IP-only hash.
    pub fn addrs(&self) -> &[u8] {
        self.addrs
    }

    /// The ports, which a TCP/UDP/SCTP hash takes after the addresses (`None` without ports).
    pub fn ports(&self) -> Option<&[u8; 4]> {
        self.ports
    }

    /// The source and destination addresses of an "IPv6 EX" hash: the Home Address option's
    /// and the type 2 routing header's where the frame has them, else the IPv6 header's.
    /// `None` for IPv4.
    pub fn ex_addrs(&self) -> Option<(&[u8; 16], &[u8; 16])> {
        let (src, dst) = (self.addrs.first_chunk::<16>()?, self.addrs.get(16..)?.first_chunk::<16>()?);
        self.v6.then(|| (self.ex_src.unwrap_or(src), self.ex_dst.unwrap_or(dst)))
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
const IPV6_MOBILITY: u8 = 135;
/// The Home Address destination option (RFC 6275 6.3) and its data length.
const OPT_HOME_ADDRESS: u8 = 0xc9;
/// Pad1, the one option without a length byte (RFC 8200 4.2).
const OPT_PAD1: u8 = 0;

fn be16(f: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?]))
}

fn l4_of(proto: u8) -> L4 {
    match proto {
        IPPROTO_TCP => L4::Tcp,
        IPPROTO_UDP => L4::Udp,
        IPPROTO_SCTP => L4::Sctp,
        _ => L4::Other,
    }
}

/// The flow of an Ethernet frame: IPv4 or IPv6 behind up to two VLAN tags (802.1Q, 802.1ad), the
/// hash taken on the inner header as the hardware does. `None` for other frames (no hash).
#[inline]
pub fn parse(frame: &[u8]) -> Option<Flow<'_>> {
    // The common frame first, at fixed offsets: untagged IPv4 without options, the ports whole.
    if let Some(h) = frame.get(12..38) {
        if h[..3] == [0x08, 0x00, 0x45] {
            let frag = u16::from_be_bytes([h[8], h[9]]) & 0x3fff != 0;
            let l4 = if frag { L4::Fragment } else { l4_of(h[11]) };
            let ports = if matches!(l4, L4::Tcp | L4::Udp | L4::Sctp) { h[22..].first_chunk::<4>() } else { None };
            return Some(Flow { v6: false, l4, addrs: &h[14..22], ports, ex_src: None, ex_dst: None });
        }
    }
    parse_any(frame)
}

/// The frame's last ethertype, after up to two VLAN tags (802.1Q, 802.1ad), and its offset.
pub fn last_ethertype(frame: &[u8]) -> Option<(u16, usize)> {
    let mut o = 12;
    let mut ethertype = be16(frame, o)?;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        o += 4;
        ethertype = be16(frame, o)?;
    }
    Some((ethertype, o))
}

/// Whether `ethertype` is IPv4's or IPv6's.
pub fn is_ip(ethertype: u16) -> bool {
    ethertype == ETH_P_IPV4 || ethertype == ETH_P_IPV6
}

/// [`parse`] for any frame: VLAN tags, IPv4 options, IPv6, ports not whole.
fn parse_any(frame: &[u8]) -> Option<Flow<'_>> {
    let (ethertype, o) = last_ethertype(frame)?;
    let ip = o + 2;
    let (mut ex_src, mut ex_dst) = (None, None);
    let (v6, mut l4, addrs, l4_at) = match ethertype {
        ETH_P_IPV4 => {
            let h = frame.get(ip..ip + 20)?;
            if h[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(h[0] & 0xf) * 4;
            if ihl < 20 {
                return None;
            }
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
            (false, if frag { L4::Fragment } else { l4_of(h[9]) }, &h[12..20], ip + ihl)
        }
        ETH_P_IPV6 => {
            let h = frame.get(ip..ip + 40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let ext = walk_ipv6_ext(frame, h[6], ip + 40);
            (ex_src, ex_dst) = (ext.home, ext.routed);
            (true, ext.l4, &h[8..40], ext.at)
        }
        _ => return None,
    };
    let mut ports = None;
    if matches!(l4, L4::Tcp | L4::Udp | L4::Sctp) {
        match frame.get(l4_at..).and_then(|p| p.first_chunk::<4>()) {
            Some(p) => ports = Some(p),
            None => l4 = L4::Other,
        }
    }
    Some(Flow { v6, l4, addrs, ports, ex_src, ex_dst })
}

/// What a walk over an IPv6 header's extension headers found.
struct Ext<'a> {
    /// The transport after them (a fragment header anywhere: [`L4::Fragment`]; a chain not whole
    /// within [`MAX_EXT`] bytes: [`L4::Other`], so the addresses alone are hashed).
    l4: L4,
    /// Where the transport header starts.
    at: usize,
    /// A Home Address option's address, and a type 2 routing header's.
    home: Option<&'a [u8; 16]>,
    routed: Option<&'a [u8; 16]>,
}

/// Skips the extension headers starting at `at` with next header `nh`, as the hashes of
/// TCP/UDP over IPv6 require (Microsoft: skip any extension headers; hash on the addresses when
/// that cannot be done). Hop-by-hop, routing, destination options and mobility headers are
/// (length + 1) * 8 bytes (RFC 8200 4.3-4.6, RFC 6275 6.1), a fragment header 8, an AH
/// (length + 2) * 4 (RFC 4302 2.2). ESP, "no next header" and anything else end the walk as the
/// transport. A type 2 routing header (RFC 6275 6.4: length 2, one segment left) gives the
/// destination an EX hash takes, a destination options header's Home Address option the
/// source (a later destination options header without one drops it, as QEMU's e1000e does).
fn walk_ipv6_ext(frame: &[u8], mut nh: u8, start: usize) -> Ext<'_> {
    let (mut at, mut frag) = (start, false);
    let (mut home, mut routed) = (None, None);
    let end = frame.len().min(start + MAX_EXT);
    while let IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_MOBILITY | IPV6_FRAGMENT | IPPROTO_AH = nh {
        let (next, len) = match frame.get(at..at + 2) {
            Some(e) if nh == IPV6_FRAGMENT => (e[0], 8),
            Some(e) if nh == IPPROTO_AH => (e[0], (usize::from(e[1]) + 2) * 4),
            Some(e) => (e[0], (usize::from(e[1]) + 1) * 8),
            None => (0, usize::MAX),
        };
        let Some(hdr) = at.checked_add(len).filter(|&e| e <= end).and_then(|e| frame.get(at..e)) else {
            return Ext { l4: L4::Other, at, home: None, routed: None };
        };
        match nh {
            // What follows is a fragment's payload (the headers every fragment carries, the
            // home address option's among them, come before it: RFC 8200 4.5, RFC 6275 6.3).
            IPV6_FRAGMENT => {
                frag = true;
                break;
            }
            IPV6_ROUTING if hdr[1] == 2 && hdr[2] == 2 && hdr[3] == 1 => routed = hdr[8..].first_chunk::<16>(),
            IPV6_DEST_OPTS => home = home_address(&hdr[2..]),
            _ => {}
        }
        nh = next;
        at += len;
    }
    Ext { l4: if frag { L4::Fragment } else { l4_of(nh) }, at, home, routed }
}

/// The address of a Home Address option among a destination options header's options.
fn home_address(mut opts: &[u8]) -> Option<&[u8; 16]> {
    while let Some((&ty, rest)) = opts.split_first() {
        if ty == OPT_PAD1 {
            opts = rest;
            continue;
        }
        let len = usize::from(*rest.first()?);
        let data = rest.get(1..1 + len)?;
        if ty == OPT_HOME_ADDRESS && len == 16 {
            return data.first_chunk::<16>();
        }
        opts = &rest[1 + len..];
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The key of Microsoft's RSS verification suite (also the 82599 and X710 datasheets' example).
    pub(crate) const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
        0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
        0xbe, 0xac, 0x01, 0xfa,
    ];

    /// (destination, destination port, source, source port, IP-only hash, with-ports hash).
    pub(crate) const V4: [(&str, u16, &str, u16, u32, u32); 5] = [
        ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323e_8fc2, 0x51cc_c178),
        ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xd718_262a, 0xc626_b0ea),
        ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xd2d0_a5de, 0x5c2b_394a),
        ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x8298_9176, 0xafc7_327f),
        ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5d18_09c5, 0x10e8_28a2),
    ];
    pub(crate) const V6: [(&str, u16, &str, u16, u32, u32); 3] = [
        ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x2cc1_8cd5, 0x4020_7d3d),
        ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0x0f0c_461c, 0xdde5_1bbf),
        ("fe80::200:f8ff:fe21:67cf", 38024, "3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, 0x4b61_e985, 0x02d1_feef),
    ];

    /// An Ethernet frame carrying `ip` (a whole IP header) and `l4` after it, behind `vlans` tags.
    fn eth(ethertype: u16, vlans: usize, ip: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for i in 0..vlans {
            f.extend_from_slice(&(if i == 0 && vlans == 2 { ETH_P_8021AD } else { ETH_P_8021Q }).to_be_bytes());
            f.extend_from_slice(&[0, 5]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f.extend_from_slice(l4);
        f
    }

    pub(crate) fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16, vlans: usize) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0, 0, 64, proto, 0, 0];
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let mut l4 = [sport.to_be_bytes(), dport.to_be_bytes()].concat();
        l4.resize(20, 0);
        eth(ETH_P_IPV4, vlans, &ip, &l4)
    }

    pub(crate) fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0, 0, 20, nh, 64];
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let mut l4 = [sport.to_be_bytes(), dport.to_be_bytes()].concat();
        l4.resize(20, 0);
        eth(ETH_P_IPV6, 0, &ip, &l4)
    }

    /// Extension headers for [`ipv6_ext_frame`]: (its type, the whole header; byte 0, its next
    /// header, is filled in).
    pub(crate) fn hop_by_hop() -> (u8, Vec<u8>) {
        (IPV6_HOP_BY_HOP, vec![0, 0, 1, 4, 0, 0, 0, 0]) // a PadN option of 4
    }
    pub(crate) fn home_address_opt(a: Ipv6Addr) -> (u8, Vec<u8>) {
        // Pad1, PadN of 2, then the option at 8n+6 as RFC 6275 aligns it: 24 bytes, length 2.
        let mut h = vec![0, 2, OPT_PAD1, 1, 1, 0, OPT_HOME_ADDRESS, 16];
        h.extend_from_slice(&a.octets());
        (IPV6_DEST_OPTS, h)
    }
    pub(crate) fn routing_type2(a: Ipv6Addr, ty: u8) -> (u8, Vec<u8>) {
        let mut h = vec![0, 2, ty, 1, 0, 0, 0, 0];
        h.extend_from_slice(&a.octets());
        (IPV6_ROUTING, h)
    }

    /// An IPv6 frame with the extension headers `ext`, in order, before the transport.
    pub(crate) fn ipv6_ext_frame(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ext: &[(u8, Vec<u8>)],
        nh: u8,
        sport: u16,
        dport: u16,
    ) -> Vec<u8> {
        let mut f = ipv6_frame(src, dst, ext.first().map_or(nh, |e| e.0), sport, dport);
        let mut chain = Vec::new();
        for (i, (_, h)) in ext.iter().enumerate() {
            let mut h = h.clone();
            h[0] = ext.get(i + 1).map_or(nh, |e| e.0);
            chain.extend_from_slice(&h);
        }
        f.splice(14 + 40..14 + 40, chain);
        f
    }

    #[test]
    fn ipv6_extension_headers_are_skipped_to_the_ports() {
        let t = Toeplitz::new(&MS_KEY);
        let pad = (IPV6_DEST_OPTS, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let auth = (IPPROTO_AH, vec![0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for (dst, dport, src, sport, ip_only, with_ports) in V6 {
            let (s, d) = (src.parse().unwrap(), dst.parse().unwrap());
            for ext in [vec![hop_by_hop()], vec![hop_by_hop(), pad.clone(), auth.clone()], vec![auth.clone()]] {
                let f = ipv6_ext_frame(s, d, &ext, IPPROTO_TCP, sport, dport);
                let flow = parse(&f).unwrap();
                assert_eq!((flow.v6, flow.l4), (true, L4::Tcp), "{} extension headers", ext.len());
                assert_eq!(t.hash_flow(&flow, true), with_ports, "{src}:{sport} -> {dst}:{dport}, ports after them");
                assert_eq!(t.hash_flow(&flow, false), ip_only);
                assert_eq!(t.hash_flow_ex(&flow, true), with_ports, "no EX addresses: the header's");
            }
        }
        let (s, d) = ("3ffe:2501:200:1fff::7".parse().unwrap(), "3ffe:2501:200:3::1".parse().unwrap());
        // A fragment header anywhere in the chain: addresses only.
        let frag = (IPV6_FRAGMENT, vec![0, 0, 0, 1, 0, 0, 0, 9]);
        let f = ipv6_ext_frame(s, d, &[hop_by_hop(), frag], IPPROTO_UDP, 1, 2);
        assert_eq!((parse(&f).unwrap().l4, parse(&f).unwrap().ports()), (L4::Fragment, None));
        // A chain cut short, or longer than the walk looks: addresses only, never a panic.
        let f = ipv6_ext_frame(s, d, &[hop_by_hop(), home_address_opt(s)], IPPROTO_TCP, 1, 2);
        for cut in 14 + 40..f.len() {
            let flow = parse(&f[..cut]).unwrap();
            assert!(flow.ports().is_none() || cut >= 14 + 40 + 32 + 4, "cut at {cut}");
        }
        let long: Vec<_> = (0..(MAX_EXT / 8 + 1)).map(|_| hop_by_hop()).collect();
        let f = ipv6_ext_frame(s, d, &long, IPPROTO_TCP, 1, 2);
        assert_eq!(parse(&f).unwrap().l4, L4::Other, "past MAX_EXT");
    }

    #[test]
    fn the_ex_hash_takes_the_home_address_and_the_type_2_routing_address() {
        let t = Toeplitz::new(&MS_KEY);
        // The header carries other addresses; the EX hash must give the vector's hash for the
        // home address (source) and the routed address (destination).
        let (hs, hd) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        for (dst, dport, src, sport, ip_only, with_ports) in V6 {
            let (s, d) = (src.parse().unwrap(), dst.parse().unwrap());
            let ext = [hop_by_hop(), routing_type2(d, 2), home_address_opt(s)];
            let f = ipv6_ext_frame(hs, hd, &ext, IPPROTO_UDP, sport, dport);
            let flow = parse(&f).unwrap();
            assert_eq!(flow.l4, L4::Udp);
            assert_eq!(t.hash_flow_ex(&flow, true), with_ports, "{src}:{sport} -> {dst}:{dport}");
            assert_eq!(t.hash_flow_ex(&flow, false), ip_only, "{src} -> {dst}");
            assert_ne!(t.hash_flow(&flow, true), with_ports, "the plain hash takes the header's addresses");
            // Only one of the two: the other from the header.
            let f = ipv6_ext_frame(hs, d, &[home_address_opt(s)], IPPROTO_UDP, sport, dport);
            assert_eq!(t.hash_flow_ex(&parse(&f).unwrap(), true), with_ports, "home address only");
            let f = ipv6_ext_frame(s, hd, &[routing_type2(d, 2)], IPPROTO_UDP, sport, dport);
            assert_eq!(t.hash_flow_ex(&parse(&f).unwrap(), true), with_ports, "routed address only");
            // A routing header of another type gives no address.
            let f = ipv6_ext_frame(s, hd, &[routing_type2(d, 0)], IPPROTO_UDP, sport, dport);
            assert_ne!(t.hash_flow_ex(&parse(&f).unwrap(), true), with_ports, "type 0 routing header");
        }
    }

    #[test]
    fn the_hash_matches_microsofts_verification_vectors_for_ipv4() {
        let t = Toeplitz::new(&MS_KEY);
        for (dst, dport, src, sport, ip_only, with_ports) in V4 {
            let f = ipv4_frame(src.parse().unwrap(), dst.parse().unwrap(), IPPROTO_TCP, sport, dport, 0);
            let flow = parse(&f).unwrap();
            assert_eq!((flow.v6, flow.l4), (false, L4::Tcp));
            assert_eq!(t.hash(flow.addrs()), ip_only, "{src} -> {dst}");
            assert_eq!(t.hash_flow(&flow, false), ip_only, "{src} -> {dst}");
            assert_eq!(t.hash_flow(&flow, true), with_ports, "{src}:{sport} -> {dst}:{dport}");
            let input = [flow.addrs(), flow.ports().unwrap()].concat();
            assert_eq!(t.hash(&input), with_ports, "{src}:{sport} -> {dst}:{dport}, one input");
            assert_eq!(toeplitz_bitwise(&MS_KEY, &input), with_ports, "the bitwise reference");
        }
    }

    #[test]
    fn the_hash_matches_microsofts_verification_vectors_for_ipv6() {
        let t = Toeplitz::new(&MS_KEY);
        for (dst, dport, src, sport, ip_only, with_ports) in V6 {
            let f = ipv6_frame(src.parse().unwrap(), dst.parse().unwrap(), IPPROTO_TCP, sport, dport);
            let flow = parse(&f).unwrap();
            assert_eq!((flow.v6, flow.l4), (true, L4::Tcp));
            assert_eq!(t.hash(flow.addrs()), ip_only, "{src} -> {dst}");
            assert_eq!(t.hash_flow(&flow, false), ip_only, "{src} -> {dst}");
            assert_eq!(t.hash_flow(&flow, true), with_ports, "{src}:{sport} -> {dst}:{dport}");
            assert_eq!(t.hash(&[flow.addrs(), flow.ports().unwrap()].concat()), with_ports, "one input");
            assert_eq!(toeplitz_bitwise(&MS_KEY, flow.addrs()), ip_only, "the bitwise reference");
        }
    }

    #[test]
    fn vlan_tags_are_looked_through_and_fragments_and_other_frames_hash_on_addresses_or_not_at_all() {
        let (s, d) = ("66.9.149.187".parse().unwrap(), "161.142.100.80".parse().unwrap());
        for vlans in 0..=2 {
            let f = ipv4_frame(s, d, IPPROTO_UDP, 2794, 1766, vlans);
            let flow = parse(&f).unwrap();
            assert_eq!(flow.l4, L4::Udp, "{vlans} tags");
            assert_eq!(Toeplitz::new(&MS_KEY).hash_flow(&flow, true), 0x51cc_c178, "{vlans} tags");
        }
        let mut frag = ipv4_frame(s, d, IPPROTO_TCP, 2794, 1766, 0);
        frag[14 + 6] = 0x20; // MF
        let flow = parse(&frag).unwrap();
        assert_eq!((flow.l4, flow.ports()), (L4::Fragment, None));
        assert_eq!(Toeplitz::new(&MS_KEY).hash_flow(&flow, true), 0x323e_8fc2, "addresses only");
        let icmp = ipv4_frame(s, d, 1, 0, 0, 0);
        assert_eq!(parse(&icmp).unwrap().l4, L4::Other);
        let short = &ipv4_frame(s, d, IPPROTO_TCP, 2794, 1766, 0)[..14 + 20 + 2];
        assert_eq!(parse(short).unwrap().l4, L4::Other, "ports not whole: addresses only");
        assert!(parse(&[0u8; 60]).is_none(), "not IP");
        assert!(parse(&ipv4_frame(s, d, IPPROTO_TCP, 1, 2, 0)[..20]).is_none(), "IP header not whole");
        let v6frag =
            ipv6_frame("3ffe:2501:200:1fff::7".parse().unwrap(), "3ffe:2501:200:3::1".parse().unwrap(), 44, 1, 2);
        assert_eq!(parse(&v6frag).unwrap().l4, L4::Fragment);
    }

    #[test]
    fn the_fixed_offset_path_agrees_with_the_general_parse() {
        let (s, d) = ("66.9.149.187".parse().unwrap(), "161.142.100.80".parse().unwrap());
        let t = Toeplitz::new(&MS_KEY);
        let mut frag = ipv4_frame(s, d, IPPROTO_TCP, 2794, 1766, 0);
        frag[14 + 7] = 1; // offset 8
        let frames = [
            ipv4_frame(s, d, IPPROTO_TCP, 2794, 1766, 0),
            ipv4_frame(s, d, IPPROTO_UDP, 1, 2, 0),
            ipv4_frame(s, d, IPPROTO_SCTP, 3, 4, 0),
            ipv4_frame(s, d, 1, 0, 0, 0),
            frag,
            ipv4_frame(s, d, IPPROTO_TCP, 2794, 1766, 0)[..14 + 20 + 4].to_vec(),
        ];
        for f in &frames {
            let (a, b) = (parse(f).unwrap(), parse_any(f).unwrap());
            assert_eq!((a.v6, a.l4, a.addrs(), a.ports()), (b.v6, b.l4, b.addrs(), b.ports()));
            assert_eq!(t.hash_flow(&a, true), t.hash_flow(&b, true));
        }
    }

    #[test]
    fn a_new_key_rebuilds_the_tables() {
        let mut t = Toeplitz::new(&[0u8; KEY_LEN]);
        let input = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(t.hash(&input), 0);
        t.set_key(&MS_KEY);
        assert_eq!(t.hash(&input), toeplitz_bitwise(&MS_KEY, &input));
    }
}
