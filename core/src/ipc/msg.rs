//! The wire format: a fixed header (magic, version, kind, lengths, request id, name), then the
//! payload; descriptors ride along as `SCM_RIGHTS`. [`MsgView`] checks a datagram before any
//! field is read.

use super::*;

/// The raw descriptors of a checked message, without allocating.
pub(super) fn raw_fds(fds: &[OwnedFd]) -> ([RawFd; MAX_FDS], usize) {
    let mut raw = [-1; MAX_FDS];
    let n = fds.len().min(MAX_FDS);
    for (r, f) in raw.iter_mut().zip(fds) {
        *r = f.as_raw_fd();
    }
    (raw, n)
}

pub(super) fn encode_header(kind: u8, name: &str, payload: usize, nfds: usize, id: u64) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = WIRE_VERSION;
    h[5] = kind;
    h[6] = name.len() as u8;
    h[7] = nfds as u8;
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..20].copy_from_slice(&(payload as u32).to_le_bytes());
    h[24..24 + name.len()].copy_from_slice(name.as_bytes());
    h
}

/// A checked view of one datagram: header fields are read only after the lengths are verified.
pub struct MsgView<'a> {
    buf: &'a [u8],
}

/// Why a datagram was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header.
    Short,
    /// Longer than the largest message.
    Oversized,
    /// Wrong magic or version.
    BadMagic,
    /// Kind not 0, 1 or 2.
    BadKind,
    /// Name length 0, over 64, or not UTF-8.
    BadName,
    /// Payload length disagrees with the datagram length.
    BadLength,
    /// Declared descriptor count disagrees with the descriptors received.
    BadFds,
}

impl<'a> MsgView<'a> {
    /// Checks a received datagram (`truncated`: the kernel said it was longer than the buffer;
    /// `nfds`: descriptors that arrived with it).
    pub fn new_checked(buf: &'a [u8], truncated: bool, nfds: usize) -> Result<MsgView<'a>, WireError> {
        if truncated || buf.len() > MAX_DGRAM {
            return Err(WireError::Oversized);
        }
        if buf.len() < HDR_LEN {
            return Err(WireError::Short);
        }
        if u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) != MAGIC || buf[4] != WIRE_VERSION {
            return Err(WireError::BadMagic);
        }
        if buf[5] > 2 {
            return Err(WireError::BadKind);
        }
        let nl = buf[6] as usize;
        if nl == 0 || nl > MAX_NAME || std::str::from_utf8(&buf[24..24 + nl]).is_err() {
            return Err(WireError::BadName);
        }
        let pl = u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
        if pl > MAX_PAYLOAD || HDR_LEN + pl != buf.len() {
            return Err(WireError::BadLength);
        }
        if buf[7] as usize != nfds || nfds > MAX_FDS {
            return Err(WireError::BadFds);
        }
        Ok(MsgView { buf })
    }
    /// 0 message, 1 request, 2 reply.
    pub fn kind(&self) -> u8 {
        self.buf[5]
    }
    /// Request id.
    pub fn id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[8..16]);
        u64::from_le_bytes(b)
    }
    /// Action name.
    pub fn name(&self) -> &'a str {
        std::str::from_utf8(&self.buf[24..24 + self.buf[6] as usize]).unwrap_or("")
    }
    /// Payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[HDR_LEN..]
    }
}
