//! Device state as bytes, for vfio-user migration (the STOP_COPY data a source device gives and
//! a destination device loads in RESUMING): a little-endian stream of fields behind a magic that
//! names the model and the format version. Loading checks every length and index against the
//! model, so a stream from another model, another version or a hostile client is refused with a
//! message that names what was wrong, and leaves the device as it was.

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
    pub fn new(b: &'a [u8], magic: &[u8]) -> Result<Reader<'a>, String> {
        let mut r = Reader { b, at: 0 };
        let m = r.bytes("magic")?;
        if m != magic {
            return Err(format!(
                "not a {} snapshot (magic {:?})",
                String::from_utf8_lossy(magic),
                String::from_utf8_lossy(&m[..m.len().min(32)])
            ));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| format!("snapshot ends inside {what} (offset {}, {n} bytes)", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A `u8`.
    pub fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    /// A `bool` (0 or 1).
    pub fn bool(&mut self, what: &str) -> Result<bool, String> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("{what}: {v} is not a boolean")),
        }
    }

    /// A `u32`.
    pub fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    /// A `u64`.
    pub fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    /// A byte string that must be exactly `n` bytes long.
    pub fn exact(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let b = self.bytes(what)?;
        if b.len() != n {
            return Err(format!("{what}: {} bytes, this model has {n}", b.len()));
        }
        Ok(b)
    }

    /// Fails unless the whole stream was read.
    pub fn end(&self) -> Result<(), String> {
        if self.at != self.b.len() {
            return Err(format!("{} bytes after the end of the snapshot", self.b.len() - self.at));
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
        assert!(Reader::new(&s, b"m 2").unwrap_err().contains("not a m 2 snapshot"));
        let mut r = Reader::new(&s[..s.len() - 1], b"m 1").unwrap();
        r.u8("b").unwrap();
        r.u32("x").unwrap();
        r.u64("y").unwrap();
        assert!(r.bytes("s").unwrap_err().contains("ends inside s"));
    }
}
