//! Test traffic for `hotplug_mp`'s `send` and `recv` commands (and the scenarios that use
//! them): frames with a recognisable pattern on queue 0 of a port, through the process's own
//! handle.

use std::time::{Duration, Instant};

use lab_core::ethdev::{PortId, DEFAULT_POOL};
use lab_core::hotplug::HotplugError;
use lab_core::mbuf::{Mbuf, MbufError, Mempool};
use lab_core::process::Process;

/// What stopped a send or a receive.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The default pool is not there.
    #[error("default buffer pool: {0}")]
    Pool(#[source] MbufError),
    /// The port is not attached in this process.
    #[error(transparent)]
    Port(#[from] HotplugError),
}

/// Sends `count` frames of `size` bytes on `port` queue 0 (a test pattern); returns how many
/// the driver took.
pub fn send_frames(p: &Process, port: PortId, count: u64, size: usize) -> Result<u64, TrafficError> {
    let mut pool = Mempool::lookup(p.runtime().shm(), DEFAULT_POOL, 64).map_err(TrafficError::Pool)?;
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    while sent < count && Instant::now() < deadline {
        let n = (count - sent).min(32) as usize;
        if !pool.alloc_bulk(&mut burst[..n]) {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        for (i, m) in burst[..n].iter_mut().flatten().enumerate() {
            fill_frame(m, size, sent + i as u64);
        }
        let k = p.with_port(port, |d| d.tx_burst(0, &mut burst[..n]))?;
        sent += k as u64;
        pool.free_bulk(&mut burst[..n]);
        if k < n {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    Ok(sent)
}

/// Receives on `port` queue 0 until `want` frames arrived or `timeout` passed; returns
/// (frames, bytes).
pub fn recv_frames(p: &Process, port: PortId, want: u64, timeout: Duration) -> Result<(u64, u64), TrafficError> {
    let mut pool = Mempool::lookup(p.runtime().shm(), DEFAULT_POOL, 64).map_err(TrafficError::Pool)?;
    let (mut got, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + timeout;
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    while got < want && Instant::now() < deadline {
        let n = p.with_port(port, |d| d.rx_burst(0, &mut burst))?;
        for m in burst[..n].iter_mut().filter_map(Option::take) {
            bytes += m.len() as u64;
            got += 1;
            pool.free(m);
        }
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok((got, bytes))
}

/// Polls `ports` on queue 0 for `dur` (a receive burst and an empty transmit burst each, as a
/// forwarding loop does: what DPDK's bonding mode 4 needs of an application for its LACPDUs),
/// or, with `until_up`, until every port's link is up; frames received are dropped. Returns the
/// frames received and whether every link was up at the end.
pub fn poll(p: &Process, ports: &[PortId], dur: Duration, until_up: bool) -> Result<(u64, bool), TrafficError> {
    let mut pool = Mempool::lookup(p.runtime().shm(), DEFAULT_POOL, 64).map_err(TrafficError::Pool)?;
    let deadline = Instant::now() + dur;
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut got = 0;
    let mut next_look = Instant::now();
    loop {
        for &port in ports {
            let n = p.with_port(port, |d| {
                let n = d.rx_burst(0, &mut burst);
                d.tx_burst(0, &mut []);
                n
            })?;
            for m in burst[..n].iter_mut().filter_map(Option::take) {
                got += 1;
                pool.free(m);
            }
        }
        let now = Instant::now();
        if now >= next_look || now >= deadline {
            next_look = now + Duration::from_millis(50);
            let all_up = ports.iter().all(|&port| p.with_port(port, |d| d.link().up).unwrap_or(false));
            if (until_up && all_up) || now >= deadline {
                return Ok((got, all_up));
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Fills a test frame: broadcast destination, locally administered source, EtherType 0x88b5
/// (local experimental), then a counter and a pattern.
pub fn fill_frame(m: &mut Mbuf, size: usize, seq: u64) {
    let size = size.clamp(60, m.buf_len().saturating_sub(m.headroom()));
    if !m.set_len(size) {
        return;
    }
    let d = m.data_mut();
    d[..6].fill(0xff);
    d[6..12].copy_from_slice(&[0x02, 0x4c, 0x41, 0x42, 0, 1]);
    d[12..14].copy_from_slice(&[0x88, 0xb5]);
    d[14..22].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in d[22..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
}
