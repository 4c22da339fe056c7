//! The admin queue, driver side (datasheet "Admin Queue"): the send queue (ATQ) carries commands to
//! the firmware, the receive queue (ARQ) brings events (link status changes) back.
//!
//! Both rings, one command buffer and the ARQ buffers live in one memzone (`i40e_<port>_aq`) that the
//! primary reserves, so a secondary can issue commands too (link status): the ring position is kept
//! in the zone and a command runs under the shared-memory lock, one at a time across processes.
//!
//! ```text
//! 0x0000  header: ATQ next-to-use (u32), ARQ next-to-clean (u32), magic (u64)
//! 0x1000  ATQ: ATQ_LEN x 32-byte descriptors
//! 0x1800  ARQ: ARQ_LEN x 32-byte descriptors
//! 0x2000  command buffer (4 KiB)
//! 0x3000  ARQ buffers: ARQ_LEN x 512 bytes
//! ```
//!
//! The firmware's completion (descriptor written back in place with DD) is untrusted input: the
//! returned datalen is bounded by the buffer we gave.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab_core::ethdev::PortId;
use lab_core::mem::{Shm, ShmOffset};
use lab_core::vfio::Bar;

use super::regs::*;
use crate::error::{Ctx, DriverError};

/// Send-queue entries.
pub const ATQ_LEN: u32 = 64;
/// Receive-queue entries.
pub const ARQ_LEN: u32 = 32;
/// Size of each ARQ buffer (no LB flag needed).
pub const ARQ_BUF: usize = 512;
/// Largest indirect buffer of a command.
pub const CMD_BUF: usize = 4096;
const OFF_ATQ: u64 = 0x1000;
const OFF_ARQ: u64 = 0x1800;
const OFF_BUF: u64 = 0x2000;
const OFF_ARQ_BUFS: u64 = 0x3000;
const ZONE_LEN: u64 = OFF_ARQ_BUFS + ARQ_LEN as u64 * ARQ_BUF as u64;
const MAGIC: u64 = 0x4934_3045_4151_0001;
/// How long a command may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(2);
const CMD_POLL: Duration = Duration::from_micros(20);

/// Admin queue failures.
#[derive(Debug, thiserror::Error)]
pub enum AqError {
    /// No completion within the deadline.
    #[error("admin command {opcode:#06x} got no completion within {waited:?}")]
    Timeout {
        /// The command.
        opcode: u16,
        /// How long we waited.
        waited: Duration,
    },
    /// The firmware completed the command with an error.
    #[error("admin command {opcode:#06x} failed: firmware return code {rc}")]
    Firmware {
        /// The command.
        opcode: u16,
        /// The return code (datasheet "Admin Queue return codes").
        rc: u16,
        /// The completion's datalen (for ENOMEM: the size needed).
        datalen: u16,
    },
    /// The queue memory is not where it should be.
    #[error("admin queue memory: {0}")]
    Memory(String),
    /// The doorbell write did not reach the device (removed, or the transport failed).
    #[error("admin command {opcode:#06x}: device unreachable: {reason}")]
    Transport {
        /// The command.
        opcode: u16,
        /// What the transport said.
        reason: String,
    },
}

impl AqError {
    /// The firmware return code, if the firmware answered.
    pub fn rc(&self) -> Option<u16> {
        match self {
            AqError::Firmware { rc, .. } => Some(*rc),
            _ => None,
        }
    }
}

/// An indirect buffer attached to a command.
pub enum Buf<'a> {
    /// Direct command.
    None,
    /// Input to the firmware (flag RD).
    In(&'a [u8]),
    /// Output from the firmware, this many bytes.
    Out(usize),
}

/// A completed command: its parameters as the firmware rewrote them, and the output buffer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Descriptor bytes 16..32.
    pub params: [u8; 16],
    /// Bytes the firmware reported in datalen.
    pub datalen: u16,
    /// The output buffer (truncated to datalen).
    pub buf: Vec<u8>,
}

impl Completion {
    /// Little-endian u16 at `off` of the parameters.
    pub fn p16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.params[off], self.params[off + 1]])
    }
    /// Little-endian u32 at `off` of the parameters.
    pub fn p32(&self, off: usize) -> u32 {
        u32::from_le_bytes([self.params[off], self.params[off + 1], self.params[off + 2], self.params[off + 3]])
    }
}

/// Builds the 16 parameter bytes from (offset, u16) pairs.
pub fn params16(pairs: &[(usize, u16)]) -> [u8; 16] {
    let mut p = [0u8; 16];
    for (off, v) in pairs {
        p[*off..*off + 2].copy_from_slice(&v.to_le_bytes());
    }
    p
}

/// This process's view of the port's admin queue memzone.
pub struct AdminQueue {
    shm: Arc<Shm>,
    base: ShmOffset,
    zone: String,
}

/// The memzone name.
pub fn zone_name(port: PortId) -> String {
    format!("i40e_{port}_aq")
}

impl AdminQueue {
    /// Reserves (primary) or finds (secondary) the admin queue zone.
    pub fn open(shm: &Arc<Shm>, port: PortId, create: bool) -> Result<AdminQueue, DriverError> {
        let name = zone_name(port);
        let z = if create { shm.reserve(&name, ZONE_LEN, 4096) } else { shm.lookup(&name) }
            .ctx(format!("memzone {name}"))?;
        if z.len < ZONE_LEN {
            return Err(DriverError::state(format!("memzone {name} is {} bytes, {ZONE_LEN} needed", z.len)));
        }
        let aq = AdminQueue { shm: shm.clone(), base: z.offset, zone: name };
        if create {
            aq.put(0x8, &MAGIC.to_le_bytes()).ctx("admin queue")?;
        } else if aq.get_u64(0x8).ctx("admin queue")? != MAGIC {
            return Err(DriverError::state(format!("memzone {} holds no i40e admin queue", aq.zone)));
        }
        Ok(aq)
    }

    /// The zone's name.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    fn at(&self, off: u64) -> ShmOffset {
        ShmOffset(self.base.0 + off)
    }

    fn iova(&self, off: u64) -> u64 {
        self.at(off).iova().0
    }

    fn put(&self, off: u64, data: &[u8]) -> Result<(), AqError> {
        self.shm
            .write_at(self.at(off), data)
            .then_some(())
            .ok_or_else(|| AqError::Memory(format!("{} outside shared memory", self.zone)))
    }

    fn get(&self, off: u64, buf: &mut [u8]) -> Result<(), AqError> {
        self.shm
            .read_at(self.at(off), buf)
            .then_some(())
            .ok_or_else(|| AqError::Memory(format!("{} outside shared memory", self.zone)))
    }

    fn get_u32(&self, off: u64) -> Result<u32, AqError> {
        let mut b = [0u8; 4];
        self.get(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn get_u64(&self, off: u64) -> Result<u64, AqError> {
        let mut b = [0u8; 8];
        self.get(off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn arq_desc(&self, i: u32) -> [u8; 32] {
        let mut d = [0u8; 32];
        let buf = self.iova(OFF_ARQ_BUFS + u64::from(i) * ARQ_BUF as u64);
        d[0..2].copy_from_slice(&AQ_FLAG_BUF.to_le_bytes());
        d[4..6].copy_from_slice(&(ARQ_BUF as u16).to_le_bytes());
        d[24..28].copy_from_slice(&((buf >> 32) as u32).to_le_bytes());
        d[28..32].copy_from_slice(&(buf as u32).to_le_bytes());
        d
    }

    /// Admin queue initialisation (primary, after the PF reset): both queues off, rings programmed,
    /// ARQ buffers posted, queues on. Checks the base register reads back (a dead device reads 0/~0).
    pub fn start(&self, bar: &Bar) -> Result<(), AqError> {
        bar.write32(PF_ATQLEN, 0);
        bar.write32(PF_ARQLEN, 0);
        self.put(0, &[0u8; 8])?;
        self.put(OFF_ATQ, &vec![0u8; ATQ_LEN as usize * 32])?;
        let atq = self.iova(OFF_ATQ);
        bar.write32(PF_ATQH, 0);
        bar.write32(PF_ATQT, 0);
        bar.write32(PF_ATQBAL, atq as u32);
        bar.write32(PF_ATQBAH, (atq >> 32) as u32);
        bar.write32(PF_ATQLEN, ATQ_LEN | AQLEN_ENABLE);
        if bar.read32(PF_ATQBAL) != atq as u32 {
            return Err(AqError::Memory("ATQ base address does not read back (device gone?)".into()));
        }
        for i in 0..ARQ_LEN {
            self.put(OFF_ARQ + u64::from(i) * 32, &self.arq_desc(i))?;
        }
        let arq = self.iova(OFF_ARQ);
        bar.write32(PF_ARQH, 0);
        bar.write32(PF_ARQT, 0);
        bar.write32(PF_ARQBAL, arq as u32);
        bar.write32(PF_ARQBAH, (arq >> 32) as u32);
        bar.write32(PF_ARQLEN, ARQ_LEN | AQLEN_ENABLE);
        fence(Ordering::Release);
        bar.write32(PF_ARQT, ARQ_LEN - 1);
        Ok(())
    }

    /// Turns both queues off (primary, at release).
    pub fn shutdown(&self, bar: &Bar) {
        for r in [PF_ATQLEN, PF_ARQLEN, PF_ATQH, PF_ATQT, PF_ARQH, PF_ARQT, PF_ATQBAL, PF_ATQBAH, PF_ARQBAL, PF_ARQBAH]
        {
            bar.write32(r, 0);
        }
    }

    /// Runs one command and waits for its completion. Takes the shared-memory lock for the duration.
    pub fn send(&self, bar: &Bar, opcode: u16, params: [u8; 16], buf: Buf<'_>) -> Result<Completion, AqError> {
        let _g = self.shm.lock().lock();
        let ntu = self.get_u32(0)? % ATQ_LEN;
        let mut d = [0u8; 32];
        let mut flags = AQ_FLAG_SI;
        let len = match buf {
            Buf::None => 0,
            Buf::In(b) => b.len().min(CMD_BUF),
            Buf::Out(n) => n.min(CMD_BUF),
        };
        d[16..32].copy_from_slice(&params);
        if len > 0 {
            flags |= AQ_FLAG_BUF;
            if len > AQ_LARGE_BUF {
                flags |= AQ_FLAG_LB;
            }
            match buf {
                Buf::In(b) => {
                    flags |= AQ_FLAG_RD;
                    self.put(OFF_BUF, &b[..len])?;
                }
                _ => self.put(OFF_BUF, &vec![0u8; len])?,
            }
            let a = self.iova(OFF_BUF);
            d[24..28].copy_from_slice(&((a >> 32) as u32).to_le_bytes());
            d[28..32].copy_from_slice(&(a as u32).to_le_bytes());
        }
        d[0..2].copy_from_slice(&flags.to_le_bytes());
        d[2..4].copy_from_slice(&opcode.to_le_bytes());
        d[4..6].copy_from_slice(&(len as u16).to_le_bytes());
        let slot = OFF_ATQ + u64::from(ntu) * AQ_DESC_LEN;
        self.put(slot, &d)?;
        let next = (ntu + 1) % ATQ_LEN;
        self.put(0, &next.to_le_bytes())?;
        fence(Ordering::Release);
        bar.try_write32(PF_ATQT, next).map_err(|e| AqError::Transport { opcode, reason: e.to_string() })?;

        // The firmware writes the descriptor back with DD set, then moves ATQH.
        let start = Instant::now();
        let mut w = [0u8; 32];
        loop {
            self.get(slot, &mut w)?;
            if u16::from_le_bytes([w[0], w[1]]) & AQ_FLAG_DD != 0 {
                break;
            }
            let waited = start.elapsed();
            if waited >= CMD_TIMEOUT {
                return Err(AqError::Timeout { opcode, waited });
            }
            std::thread::sleep(CMD_POLL);
        }
        fence(Ordering::Acquire);
        self.get(slot, &mut w)?;
        let f = u16::from_le_bytes([w[0], w[1]]);
        let datalen = u16::from_le_bytes([w[4], w[5]]);
        let rc = u16::from_le_bytes([w[6], w[7]]);
        if f & AQ_FLAG_ERR != 0 {
            return Err(AqError::Firmware { opcode, rc, datalen });
        }
        let mut out = Vec::new();
        if let Buf::Out(_) = buf {
            out = vec![0u8; usize::from(datalen).min(len)];
            self.get(OFF_BUF, &mut out)?;
        }
        let mut p = [0u8; 16];
        p.copy_from_slice(&w[16..32]);
        Ok(Completion { params: p, datalen, buf: out })
    }

    /// Takes the events the firmware posted on the ARQ (opcode and parameters) and gives the
    /// descriptors back.
    pub fn events(&self, bar: &Bar) -> Vec<(u16, [u8; 16])> {
        let mut out = Vec::new();
        let _g = self.shm.lock().lock();
        let Ok(mut ntc) = self.get_u32(4) else { return out };
        ntc %= ARQ_LEN;
        for _ in 0..ARQ_LEN {
            let slot = OFF_ARQ + u64::from(ntc) * AQ_DESC_LEN;
            let mut d = [0u8; 32];
            if self.get(slot, &mut d).is_err() || u16::from_le_bytes([d[0], d[1]]) & AQ_FLAG_DD == 0 {
                break;
            }
            fence(Ordering::Acquire);
            let mut p = [0u8; 16];
            p.copy_from_slice(&d[16..32]);
            out.push((u16::from_le_bytes([d[2], d[3]]), p));
            if self.put(slot, &self.arq_desc(ntc)).is_err() {
                break;
            }
            fence(Ordering::Release);
            bar.write32(PF_ARQT, ntc);
            ntc = (ntc + 1) % ARQ_LEN;
        }
        let _ = self.put(4, &ntc.to_le_bytes());
        out
    }
}
