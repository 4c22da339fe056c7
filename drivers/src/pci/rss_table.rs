//! A redirection table as both Intel NICs keep it: registers of four one-byte entries (entry
//! 4n+k in byte k of register n), each entry's low bits a queue. The 82599's RETA (4-bit
//! entries) and the X710's PFQF_HLUT (6-bit) differ only in where, how many and how wide.

use lab_core::vfio::Bar;

use crate::error::DriverError;

/// One table: its register at `reg(n)`, `size` entries, `mask` of an entry's bits, `name` for
/// errors.
pub(crate) struct Table {
    pub(crate) reg: fn(u32) -> u64,
    pub(crate) size: u16,
    pub(crate) mask: u8,
    pub(crate) name: &'static str,
}

impl Table {
    /// The whole table.
    pub(crate) fn read(&self, bar: &Bar) -> Vec<u16> {
        (0..u32::from(self.size) / 4)
            .flat_map(|n| bar.read32((self.reg)(n)).to_le_bytes())
            .map(|b| u16::from(b & self.mask))
            .collect()
    }

    /// Writes the whole table (`table.len()` = `size`).
    pub(crate) fn write(&self, bar: &Bar, table: &[u16]) {
        for (n, e) in table.chunks_exact(4).enumerate() {
            let w = u32::from_le_bytes([e[0] as u8, e[1] as u8, e[2] as u8, e[3] as u8]);
            bar.write32((self.reg)(n as u32), w);
        }
    }

    /// Sets `(index, queue)` entries: all of them or, if one is out of range (an index past the
    /// table, a queue past `queues`), none.
    pub(crate) fn update(&self, bar: &Bar, entries: &[(u16, u16)], queues: u16) -> Result<(), DriverError> {
        if let Some((i, q)) = entries.iter().find(|(i, q)| *i >= self.size || *q >= queues) {
            return Err(DriverError::config(format!(
                "{} entry {i} -> queue {q}: entries 0..{}, queues 0..{queues}",
                self.name, self.size
            )));
        }
        let mut table = self.read(bar);
        for (i, q) in entries {
            table[usize::from(*i)] = *q;
        }
        self.write(bar, &table);
        Ok(())
    }
}
