//! The relay between a client and the private socket of a worker: frames vfio-user messages,
//! checks sizes and strings before the crate sees them (it would panic on or lose sync over some),
//! answers what it refuses with an error reply itself, and passes fds through.

use super::*;

pub(super) fn start_relay(s: &Arc<Shared>, client: UnixStream) -> std::io::Result<JoinHandle<()>> {
    let addr = SocketAddr::from_abstract_name(s.private.as_bytes())?;
    let worker = UnixStream::connect_addr(&addr)?;
    let id = s.next_conn.fetch_add(1, Ordering::Relaxed);
    lock(&s.conns)
        .insert(id, ConnRecord { client: client.try_clone()?, worker: worker.try_clone()?, since: Instant::now() });
    tracing::info!(bdf = %s.bdf, conn = id, "client connected");
    let s2 = s.clone();
    let spawned = std::thread::Builder::new().name(format!("relay-{id}")).spawn(move || {
        let reason = relay(&client, &worker);
        let _ = client.shutdown(std::net::Shutdown::Both);
        let _ = worker.shutdown(std::net::Shutdown::Both);
        lock(&s2.conns).remove(&id);
        tracing::info!(bdf = %s2.bdf, conn = id, "client disconnected ({reason})");
    });
    if spawned.is_err() {
        // Free the slot; dropping the record closes the connection.
        if let Some(c) = lock(&s.conns).remove(&id) {
            let _ = c.client.shutdown(std::net::Shutdown::Both);
            let _ = c.worker.shutdown(std::net::Shutdown::Both);
        }
    }
    spawned
}

/// Why a relay ended.
#[derive(Debug, thiserror::Error)]
enum RelayEnd {
    #[error("closed by client")]
    ClientClosed,
    #[error("closed by server")]
    ServerClosed,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy)]
struct MsgHeader {
    id: u16,
    command: u16,
    size: u32,
    flags: u32,
}

impl MsgHeader {
    fn parse(b: &[u8; HEADER]) -> Self {
        Self {
            id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

const NO_REPLY: u32 = 1 << 4;

enum Verdict {
    Forward,
    Reject(i32),
}

/// Checks a client request against the sizes the crate's server reads (vfio-user spec commands).
fn check_request(h: &MsgHeader, body: &[u8]) -> Result<Verdict, String> {
    let size = h.size as usize;
    let u32_at = |o: usize| body.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let exact = |n: usize| {
        if size == n {
            Verdict::Forward
        } else {
            Verdict::Reject(libc::EINVAL)
        }
    };
    let needs_reply = matches!(h.command, 1 | 4 | 5 | 7 | 9);
    if needs_reply && h.flags & NO_REPLY != 0 {
        return Ok(Verdict::Reject(libc::EINVAL));
    }
    Ok(match h.command {
        1 => {
            // VERSION: major, minor, then a NUL-terminated JSON string (the crate unwraps on it).
            let json = body.get(4..).unwrap_or(&[]);
            match json.split_last() {
                Some((0, rest)) if !rest.contains(&0) => Verdict::Forward,
                _ => return Err("VERSION without a NUL-terminated capability string".into()),
            }
        }
        2 => exact(48),
        3 => exact(40),
        4 => exact(32),
        5 => exact(48),
        7 => exact(32),
        8 => match u32_at(4) {
            Some(f) if f & VFIO_IRQ_SET_DATA_BOOL == 0 => exact(36),
            _ => Verdict::Reject(libc::ENOTSUP),
        },
        9 => match u32_at(12) {
            Some(c) if c <= MAX_DATA_XFER && size == 32 => Verdict::Forward,
            _ => Verdict::Reject(libc::EINVAL),
        },
        10 => match u32_at(12) {
            Some(c) if c <= MAX_DATA_XFER && size == 32 + c as usize => Verdict::Forward,
            _ => Verdict::Reject(libc::EINVAL),
        },
        13 => exact(16),
        _ => Verdict::Reject(libc::ENOTSUP),
    })
}

fn read_exact_or(stream: &UnixStream, buf: &mut [u8], eof: fn() -> RelayEnd) -> Result<(), RelayEnd> {
    let mut s = stream;
    match s.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(eof()),
        Err(e) => Err(e.into()),
    }
}

/// Reads one message (header + body) and the fds that came with it.
fn read_message(
    from: &UnixStream,
    max: usize,
    eof: fn() -> RelayEnd,
) -> Result<(MsgHeader, Vec<u8>, Vec<OwnedFd>), RelayEnd> {
    let mut hdr = [0u8; HEADER];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let msg = recvmsg::<()>(from.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` in our table for this message; we
                        // are its only owner.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Err(eof());
    }
    if got < HEADER {
        read_exact_or(from, &mut hdr[got..], eof)?;
    }
    let h = MsgHeader::parse(&hdr);
    let size = h.size as usize;
    if size < HEADER || size > max {
        return Err(RelayEnd::Malformed(format!("command {} with message size {size}", h.command)));
    }
    let mut buf = vec![0u8; size];
    buf[..HEADER].copy_from_slice(&hdr);
    read_exact_or(from, &mut buf[HEADER..], eof)?;
    Ok((h, buf, fds))
}

fn send_message(to: &UnixStream, buf: &[u8], fds: &[OwnedFd]) -> Result<(), RelayEnd> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let sent = loop {
        match sendmsg::<()>(to.as_raw_fd(), &[IoSlice::new(buf)], cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    };
    let mut w = to;
    w.write_all(&buf[sent..])?;
    Ok(())
}

fn error_reply(h: &MsgHeader, errno: i32) -> [u8; HEADER] {
    let mut r = [0u8; HEADER];
    r[0..2].copy_from_slice(&h.id.to_le_bytes());
    r[2..4].copy_from_slice(&h.command.to_le_bytes());
    r[4..8].copy_from_slice(&(HEADER as u32).to_le_bytes());
    r[8..12].copy_from_slice(&(1u32 | (1 << 5)).to_le_bytes()); // reply | error
    r[12..16].copy_from_slice(&(errno as u32).to_le_bytes());
    r
}

/// Moves messages both ways until either side closes. Returns why it ended.
fn relay(client: &UnixStream, worker: &UnixStream) -> RelayEnd {
    let max = HEADER + 16 + MAX_DATA_XFER as usize + 4096;
    loop {
        let mut fds = [PollFd::new(client.as_fd(), PollFlags::POLLIN), PollFd::new(worker.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return RelayEnd::Io(e.into()),
        }
        let c_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let w_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if c_ready {
            let step = read_message(client, max, || RelayEnd::ClientClosed).and_then(|(h, buf, fds)| {
                match check_request(&h, &buf[HEADER..]).map_err(RelayEnd::Malformed)? {
                    Verdict::Forward => send_message(worker, &buf, &fds),
                    Verdict::Reject(errno) => {
                        tracing::debug!(command = h.command, "rejected a request in the relay");
                        if h.flags & NO_REPLY != 0 && !matches!(h.command, 1 | 4 | 5 | 7 | 9) {
                            Ok(())
                        } else {
                            send_message(client, &error_reply(&h, errno), &[])
                        }
                    }
                }
            });
            if let Err(e) = step {
                return e;
            }
        }
        if w_ready {
            let step = read_message(worker, max, || RelayEnd::ServerClosed)
                .and_then(|(_, buf, fds)| send_message(client, &buf, &fds));
            if let Err(e) = step {
                return e;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(command: u16, size: u32) -> MsgHeader {
        MsgHeader { id: 1, command, size, flags: 0 }
    }

    #[test]
    fn relay_checks_request_sizes_and_strings() {
        assert!(matches!(check_request(&hdr(2, 48), &[0; 32]), Ok(Verdict::Forward)));
        assert!(matches!(check_request(&hdr(2, 40), &[0; 24]), Ok(Verdict::Reject(_))));
        assert!(matches!(check_request(&hdr(11, 16), &[]), Ok(Verdict::Reject(_))));
        let mut v = vec![0, 0, 1, 0];
        v.extend_from_slice(b"{}\0");
        assert!(matches!(check_request(&hdr(1, 16 + v.len() as u32), &v), Ok(Verdict::Forward)));
        assert!(check_request(&hdr(1, 20), &[0, 0, 1, 0]).is_err());
        assert!(check_request(&hdr(1, 23), &[0, 0, 1, 0, b'a', 0, b'b']).is_err());
        let mut w = vec![0u8; 16];
        w[12..16].copy_from_slice(&4u32.to_le_bytes());
        w.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(check_request(&hdr(10, 36), &w), Ok(Verdict::Forward)));
        assert!(matches!(check_request(&hdr(10, 35), &w[..19]), Ok(Verdict::Reject(_))));
    }
}
