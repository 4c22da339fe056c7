//! Device state as bytes, for vfio-user migration (the STOP_COPY data a source device gives and
//! a destination device loads in RESUMING): a little-endian stream of fields behind a magic that
//! names the model and the format version. Loading checks every length and index against the
//! model, so a stream from another model, another version or a hostile client is refused with a
//! message that names what was wrong, and leaves the device as it was.

/// Why a snapshot was refused; each names the field and the values involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The stream starts with another model's or version's magic.
    #[error("not a {expected} snapshot (magic {found:?})")]
    Magic {
        /// The magic this model writes.
        expected: String,
        /// What the stream starts with (at most 32 bytes, lossy UTF-8).
        found: String,
    },
    /// The stream ends inside a field.
    #[error("snapshot ends inside {what} (offset {at}, {need} bytes)")]
    Short {
        /// The field.
        what: &'static str,
        /// Offset of the field in the stream.
        at: usize,
        /// Bytes it needs.
        need: usize,
    },
    /// A boolean field that is neither 0 nor 1.
    #[error("{what}: {value} is not a boolean")]
    NotBool {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u8,
    },
    /// A field whose size or value does not fit this model (a length, a count, an index).
    #[error("{what}: {got}, this model has {limit}")]
    Misfit {
        /// The field.
        what: &'static str,
        /// The value in the stream.
        got: usize,
        /// What the model has (the exact length, or the limit).
        limit: usize,
    },
    /// Bytes after the last field.
    #[error("{0} bytes after the end of the snapshot")]
    Trailing(usize),
    /// The model cannot be migrated at all.
    #[error("the {0} model cannot be migrated")]
    Unsupported(&'static str),
}

/// The 32-bit words of `m` at `(offset, length)` (a BAR's shared pages), as bytes.
pub(crate) fn mapping_bytes(m: &crate::mem::Mapping, (off, len): (u64, u64)) -> Vec<u8> {
    (0..len / 4).flat_map(|i| m.read32((off + 4 * i) as usize).unwrap_or(0).to_le_bytes()).collect()
}

/// Writes `bytes` back into `m` at `off`, word by word ([`mapping_bytes`] in reverse).
pub(crate) fn load_mapping(m: &crate::mem::Mapping, off: u64, bytes: &[u8]) {
    for (i, w) in bytes.chunks_exact(4).enumerate() {
        m.write32(off as usize + 4 * i, u32::from_le_bytes(w.try_into().expect("4 bytes")));
    }
}

/// Builds a snapshot.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// A snapshot starting with `magic`.
    pub fn new(magic: &[u8]) -> Writer {
        let mut w = Writer(Vec::with_capacity(64 * 1024));
        w.bytes(magic);
        w
    }

    /// A `u8`.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A `u32`.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A `u64`.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }

    /// A port's lifetime totals.
    pub fn totals(&mut self, t: &super::PortStats) {
        for v in [t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes, t.rx_missed, t.rx_filtered] {
            self.u64(v);
        }
    }

    /// An MSI-X table and its PBA.
    pub(crate) fn msix(&mut self, m: &super::msix::Msix) {
        let (table, pba) = m.save();
        self.bytes(table);
        self.u64(pba);
    }

    /// The snapshot.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a snapshot; every read names the field it wanted when the stream ends early.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `b` that first checks the magic.
    pub fn new(b: &'a [u8], magic: &[u8]) -> Result<Reader<'a>, SnapshotError> {
        let mut r = Reader { b, at: 0 };
        let m = r.bytes("magic")?;
        if m != magic {
            return Err(SnapshotError::Magic {
                expected: String::from_utf8_lossy(magic).into_owned(),
                found: String::from_utf8_lossy(&m[..m.len().min(32)]).into_owned(),
            });
        }
        Ok(r)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or(SnapshotError::Short { what, at: self.at, need: n })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A `u8`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, SnapshotError> {
        Ok(self.take(1, what)?[0])
    }

    /// A `bool` (0 or 1).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, SnapshotError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(SnapshotError::NotBool { what, value }),
        }
    }

    /// A `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    /// A `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    /// A byte string that must be exactly `n` bytes long.
    pub fn exact(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let b = self.bytes(what)?;
        if b.len() != n {
            return Err(SnapshotError::Misfit { what, got: b.len(), limit: n });
        }
        Ok(b)
    }

    /// A port's lifetime totals.
    pub fn totals(&mut self) -> Result<super::PortStats, SnapshotError> {
        let mut t = super::PortStats::default();
        for v in [
            &mut t.rx_packets,
            &mut t.rx_bytes,
            &mut t.tx_packets,
            &mut t.tx_bytes,
            &mut t.rx_missed,
            &mut t.rx_filtered,
        ] {
            *v = self.u64("port totals")?;
        }
        Ok(t)
    }

    /// An MSI-X table the size of `m`'s and its PBA (for [`super::msix::Msix::load`]).
    pub(crate) fn msix(&mut self, m: &super::msix::Msix) -> Result<(&'a [u8], u64), SnapshotError> {
        let table = self.exact(m.save().0.len(), "MSI-X table")?;
        Ok((table, self.u64("MSI-X PBA")?))
    }

    /// Fails unless the whole stream was read.
    pub fn end(&self) -> Result<(), SnapshotError> {
        if self.at != self.b.len() {
            return Err(SnapshotError::Trailing(self.b.len() - self.at));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_short_or_foreign_streams_are_refused() {
        let mut w = Writer::new(b"m 1");
        w.u8(1);
        w.u32(7);
        w.u64(u64::MAX);
        w.bytes(b"abc");
        let s = w.finish();
        let mut r = Reader::new(&s, b"m 1").unwrap();
        assert!(r.bool("b").unwrap());
        assert_eq!(r.u32("x").unwrap(), 7);
        assert_eq!(r.u64("y").unwrap(), u64::MAX);
        assert_eq!(r.exact(3, "s").unwrap(), b"abc");
        r.end().unwrap();
        assert!(Reader::new(&s, b"m 2").unwrap_err().to_string().contains("not a m 2 snapshot"));
        let mut r = Reader::new(&s[..s.len() - 1], b"m 1").unwrap();
        r.u8("b").unwrap();
        r.u32("x").unwrap();
        r.u64("y").unwrap();
        assert_eq!(r.bytes("s").unwrap_err(), SnapshotError::Short { what: "s", at: s.len() - 3, need: 3 });
    }
}
