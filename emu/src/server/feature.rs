//! VFIO_USER_DEVICE_FEATURE (command 16), answered by the relay itself under the device lock (the
//! `vfio_user` crate's server does not know the command): dirty-page logging of the device's DMA
//! writes (DMA_LOGGING_START / STOP / REPORT, as linux/vfio.h defines them), migration
//! (MIGRATION: the flags; MIG_DEVICE_STATE: get and set the state, see [`super::migration`])
//! when the model can be migrated, PROBE of each; and MIG_DATA_READ / MIG_DATA_WRITE.
//!
//! Layout (little-endian): `argsz: u32, flags: u32, data[]`, flags = feature index (bits 15:0)
//! | GET (16) | SET (17) | PROBE (18). A SET and a PROBE are answered with the request echoed (as
//! libvfio-user does), a GET with the header and the feature's data.

use crate::dma::{ConnId, DirtyError};

use super::relay::{u32_at, u64_at};
use super::{migration, Shared};

/// Feature indexes (linux/vfio.h).
const MIGRATION: u32 = 1;
const MIG_DEVICE_STATE: u32 = 2;
const DMA_LOGGING_START: u32 = 6;
const DMA_LOGGING_STOP: u32 = 7;
const DMA_LOGGING_REPORT: u32 = 8;
const INDEX_MASK: u32 = 0xffff;
const GET: u32 = 1 << 16;
const SET: u32 = 1 << 17;
const PROBE: u32 = 1 << 18;
/// Most IOVA ranges one DMA_LOGGING_START may name (the request's memory stays bounded).
pub(super) const MAX_LOG_RANGES: u32 = 1024;

fn errno(e: &DirtyError) -> i32 {
    match e {
        DirtyError::State(true) => libc::EBUSY,
        DirtyError::State(false) | DirtyError::PageSize(_) | DirtyError::Range { .. } => libc::EINVAL,
    }
}

/// The reply body to a DEVICE_FEATURE request `body` of connection `conn`, or the errno.
pub(super) fn device_feature(s: &Shared, conn: ConnId, body: &[u8]) -> Result<Vec<u8>, i32> {
    let (Some(argsz), Some(flags)) = (u32_at(body, 0), u32_at(body, 4)) else {
        return Err(libc::EINVAL);
    };
    let data = &body[8..];
    let (feature, ops) = (flags & INDEX_MASK, flags & !INDEX_MASK);
    if (argsz as usize) < body.len() || ops & !(GET | SET | PROBE) != 0 {
        return Err(libc::EINVAL);
    }
    let mut d = s.dev();
    let supported = match feature {
        DMA_LOGGING_START | DMA_LOGGING_STOP => SET,
        DMA_LOGGING_REPORT => GET,
        MIGRATION if d.model.can_migrate() => GET,
        MIG_DEVICE_STATE if d.model.can_migrate() => GET | SET,
        _ => return Err(libc::ENOTSUP),
    };
    if ops & PROBE != 0 {
        // PROBE may name the operations it asks about; each must be supported.
        return if ops & (GET | SET) & !supported == 0 { Ok(body.to_vec()) } else { Err(libc::ENOTSUP) };
    }
    if ops.count_ones() != 1 || ops & !supported != 0 {
        return Err(libc::EINVAL); // GET and SET together, neither, or one this feature lacks
    }
    match feature {
        MIGRATION => {
            // STOP_COPY (bit 0) and PRE_COPY (bit 2); no P2P states.
            let mut out = body.to_vec();
            out.truncate(8);
            out[0..4].copy_from_slice(&16u32.to_le_bytes());
            out.extend_from_slice(&(1u64 | (1 << 2)).to_le_bytes());
            Ok(out)
        }
        MIG_DEVICE_STATE if ops == GET => {
            let mut out = body[..8].to_vec();
            out[0..4].copy_from_slice(&16u32.to_le_bytes());
            out.extend_from_slice(&d.mig.state.to_le_bytes());
            out.extend_from_slice(&u32::MAX.to_le_bytes()); // data_fd: none, data comes by message
            Ok(out)
        }
        MIG_DEVICE_STATE => {
            let Some(target) = u32_at(data, 0).filter(|_| data.len() == 8) else {
                return Err(libc::EINVAL);
            };
            migration::set_state(&mut d, &s.bdf, target)?;
            Ok(body.to_vec())
        }
        DMA_LOGGING_START => {
            let (Some(page), Some(n)) = (u64_at(data, 0), u32_at(data, 8)) else {
                return Err(libc::EINVAL);
            };
            if n > MAX_LOG_RANGES || data.len() != 16 + 16 * n as usize {
                return Err(libc::EINVAL);
            }
            let mut ranges = Vec::with_capacity(n as usize);
            for i in 0..n as usize {
                let (iova, len) = (u64_at(data, 16 + 16 * i), u64_at(data, 24 + 16 * i));
                match (iova, len) {
                    (Some(a), Some(l)) if l > 0 && a.checked_add(l).is_some() => ranges.push((a, l)),
                    _ => return Err(libc::EINVAL),
                }
            }
            d.dma.dirty_start(conn, page, ranges).map_err(|e| errno(&e))?;
            tracing::info!(bdf = %s.bdf, conn, page, ranges = n, "dirty page logging started");
            Ok(body.to_vec())
        }
        DMA_LOGGING_STOP => {
            d.dma.dirty_stop(conn).map_err(|e| errno(&e))?;
            tracing::info!(bdf = %s.bdf, conn, "dirty page logging stopped");
            Ok(body.to_vec())
        }
        DMA_LOGGING_REPORT => {
            let (Some(iova), Some(len), Some(page)) = (u64_at(data, 0), u64_at(data, 8), u64_at(data, 16)) else {
                return Err(libc::EINVAL);
            };
            if data.len() != 24 || page == 0 {
                return Err(libc::EINVAL);
            }
            // The client's argsz says how much room it has for the bitmap (whole u64 words).
            let bitmap_len = len.div_ceil(page).div_ceil(64) * 8;
            let room = u64::from(argsz).saturating_sub(body.len() as u64);
            if bitmap_len > room || bitmap_len > u64::from(super::MAX_DATA_XFER) {
                return Err(libc::EINVAL);
            }
            let bitmap = d.dma.dirty_report(conn, iova, len, page).map_err(|e| errno(&e))?;
            let mut out = Vec::with_capacity(body.len() + bitmap.len());
            out.extend_from_slice(&((body.len() + bitmap.len()) as u32).to_le_bytes());
            out.extend_from_slice(&body[4..]);
            out.extend_from_slice(&bitmap);
            Ok(out)
        }
        _ => Err(libc::ENOTSUP),
    }
}

/// MIG_DATA_READ (`argsz, size`): up to `size` bytes of the device state, answered as
/// `argsz, size, data` with the size given (0: all of it was given).
pub(super) fn mig_data_read(s: &Shared, body: &[u8]) -> Result<Vec<u8>, i32> {
    let (Some(argsz), Some(size)) = (u32_at(body, 0), u32_at(body, 4)) else {
        return Err(libc::EINVAL);
    };
    if body.len() != 8 || size > super::MAX_DATA_XFER || u64::from(argsz) < 8 + u64::from(size) {
        return Err(libc::EINVAL);
    }
    let chunk = migration::read(&mut s.dev(), size as usize)?;
    let mut out = Vec::with_capacity(8 + chunk.len());
    out.extend_from_slice(&((8 + chunk.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(&chunk);
    Ok(out)
}

/// MIG_DATA_WRITE (`argsz, size, data`): appends to the stream being resumed; the reply has no
/// payload (the spec: "There is no reply payload for this message").
pub(super) fn mig_data_write(s: &Shared, body: &[u8]) -> Result<Vec<u8>, i32> {
    let (Some(argsz), Some(size)) = (u32_at(body, 0), u32_at(body, 4)) else {
        return Err(libc::EINVAL);
    };
    if body.len() != 8 + size as usize || (argsz as usize) < body.len() {
        return Err(libc::EINVAL);
    }
    migration::write(&mut s.dev(), &body[8..])?;
    Ok(Vec::new())
}
