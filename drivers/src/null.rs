//! `net_null`: a device that receives empty (or template-filled) buffers and drops what it
//! sends, DPDK's null PMD. Keys: `size` (packet length, default 64), `copy` (copy a template into
//! every received buffer and every sent packet out of it), `no-rx` (receive nothing).
//!
//! Nothing is shared between processes but the buffer pool, so a secondary's detach only drops
//! its own handle.

use std::sync::Arc;

use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};

use crate::error::Ctx;

const NAME: &str = "net_null";
/// Largest `size`: a jumbo frame.
pub const MAX_SIZE: u64 = 9600;
const MAX_QUEUES: u16 = 16;

static KEYS: [KeySpec; 3] = [
    KeySpec::new("size", KeyKind::U64 { min: 1, max: MAX_SIZE }, "packet length in bytes (default 64)"),
    KeySpec::new("copy", KeyKind::Bool, "copy packet data on rx and tx (default 0)"),
    KeySpec::new("no-rx", KeyKind::Bool, "receive nothing (default 0)"),
];

/// The net_null driver.
pub struct NullDriver;

impl Driver for NullDriver {
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
        let size = ctx.kvargs.get_u64("size").unwrap_or(64) as usize;
        let copy = ctx.kvargs.get_bool("copy").unwrap_or(false);
        let no_rx = ctx.kvargs.get_bool("no-rx").unwrap_or(false);
        let (nrx, ntx) = (ctx.conf.nb_rxq, ctx.conf.nb_txq);
        if nrx == 0 || nrx > MAX_QUEUES || ntx == 0 || ntx > MAX_QUEUES {
            return Err(ctx.error(NAME, format!("queue counts {nrx}/{ntx} out of range 1..={MAX_QUEUES}")));
        }
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(shm, &ctx.conf.pool, 256)
            .ctx(format!("buffer pool {}", ctx.conf.pool))
            .map_err(|e| ctx.error(NAME, e))?;
        let mut mac = [0x02, 0, 0, 0, 0, 0];
        mac[5] = ctx.port.0 as u8;
        Ok(Box::new(NullPort {
            info: DevInfo {
                driver: NAME,
                mac,
                mtu: 1500,
                nb_rxq: nrx,
                nb_txq: ntx,
                max_rxq: MAX_QUEUES,
                max_txq: MAX_QUEUES,
            },
            size,
            copy,
            no_rx,
            template: Arc::from(vec![0u8; size]),
            sink: vec![0u8; MAX_SIZE as usize].into_boxed_slice(),
            rx: (0..nrx).map(|_| RxQ { pool: pool.new_handle(), pkts: 0, bytes: 0, nombuf: 0 }).collect(),
            tx: (0..ntx).map(|_| TxQ { pool: pool.new_handle(), pkts: 0, bytes: 0 }).collect(),
        }))
    }
}

struct RxQ {
    pool: Mempool,
    pkts: u64,
    bytes: u64,
    nombuf: u64,
}

struct TxQ {
    pool: Mempool,
    pkts: u64,
    bytes: u64,
}

struct NullPort {
    info: DevInfo,
    size: usize,
    copy: bool,
    no_rx: bool,
    template: Arc<[u8]>,
    sink: Box<[u8]>,
    rx: Vec<RxQ>,
    tx: Vec<TxQ>,
}

impl EthDev for NullPort {
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
            s.rx_nombuf += q.nombuf;
        }
        for q in &self.tx {
            s.opackets += q.pkts;
            s.obytes += q.bytes;
        }
        s
    }
    fn stats_reset(&mut self) {
        for q in &mut self.rx {
            (q.pkts, q.bytes, q.nombuf) = (0, 0, 0);
        }
        for q in &mut self.tx {
            (q.pkts, q.bytes) = (0, 0);
        }
    }
    fn set_promisc(&mut self, _on: bool) -> Result<(), EthError> {
        Ok(())
    }
    fn set_mtu(&mut self, mtu: u16) -> Result<(), EthError> {
        if !(68..=9600).contains(&mtu) {
            return Err(EthError::Invalid { what: format!("MTU {mtu} out of range 68..=9600") });
        }
        self.info.mtu = mtu;
        Ok(())
    }
    #[inline]
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        if self.no_rx {
            return 0;
        }
        let Some(q) = self.rx.get_mut(queue as usize) else { return 0 };
        let n = pkts.len();
        if !q.pool.alloc_bulk(pkts) {
            q.nombuf += n as u64;
            return 0;
        }
        for m in pkts.iter_mut().flatten() {
            if !m.set_len(self.size) {
                continue;
            }
            if self.copy {
                m.data_mut().copy_from_slice(&self.template);
            }
        }
        q.pkts += n as u64;
        q.bytes += (n * self.size) as u64;
        n
    }
    #[inline]
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(q) = self.tx.get_mut(queue as usize) else { return 0 };
        let mut n = 0;
        for slot in pkts.iter_mut() {
            let Some(m) = slot.take() else { break };
            if self.copy {
                let mut at = 0;
                for s in m.segments() {
                    let l = s.len().min(self.sink.len() - at);
                    self.sink[at..at + l].copy_from_slice(&s[..l]);
                    at += l;
                }
            }
            q.bytes += m.pkt_len() as u64;
            q.pool.free(m);
            n += 1;
        }
        q.pkts += n as u64;
        n
    }
    fn close(self: Box<Self>, _how: Release) {}
}
