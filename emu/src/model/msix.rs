//! The MSI-X table and pending-bit array of a function, as both NIC models expose them in a BAR
//! (PCI Local Bus 6.8.2): 16 bytes per vector (message address, data, vector control with the
//! mask bit at byte 12), then the PBA, a bit per vector.

/// Byte offset of the vector-control word in a table entry; bit 0 of it masks the vector.
const VECTOR_CTRL: usize = 12;

/// A function's MSI-X table and PBA (up to 64 vectors).
#[derive(Debug)]
pub struct Msix {
    table: Vec<u8>,
    pba: u64,
    /// Offset of the PBA in the BAR region that holds both.
    pba_off: u64,
}

impl Msix {
    /// `vectors` entries (at most 64), every vector masked, as after reset; the PBA at `pba_off`.
    pub fn new(vectors: u32, pba_off: u32) -> Self {
        let n = vectors.min(64) as usize;
        let mut table = vec![0u8; n * 16];
        for v in 0..n {
            table[v * 16 + VECTOR_CTRL] = 1;
        }
        Self { table, pba: 0, pba_off: u64::from(pba_off) }
    }

    /// Table and PBA (migration).
    pub fn save(&self) -> (&[u8], u64) {
        (&self.table, self.pba)
    }

    /// Restores what [`Msix::save`] gave; false if the table size differs.
    pub fn load(&mut self, table: &[u8], pba: u64) -> bool {
        if table.len() != self.table.len() {
            return false;
        }
        self.table.copy_from_slice(table);
        self.pba = pba;
        true
    }

    /// Forgets pending vectors (function reset; the table keeps what software wrote).
    pub fn clear_pending(&mut self) {
        self.pba = 0;
    }

    fn masked(&self, v: usize) -> bool {
        self.table[v * 16 + VECTOR_CTRL] & 1 != 0
    }

    /// Reads table or PBA bytes at `off` of the region (anything else reads 0).
    pub fn read(&self, off: u64, data: &mut [u8]) {
        let table_end = self.table.len() as u64;
        for (i, b) in data.iter_mut().enumerate() {
            let o = off + i as u64;
            *b = if o < table_end {
                self.table[o as usize]
            } else if (self.pba_off..self.pba_off + 8).contains(&o) {
                (self.pba >> ((o - self.pba_off) * 8)) as u8
            } else {
                0
            };
        }
    }

    /// Writes table bytes at `off` (the PBA is read-only). Returns the vectors to signal now:
    /// unmasking a vector delivers its pending bit.
    #[must_use]
    pub fn write(&mut self, off: u64, data: &[u8]) -> u64 {
        let mut fire = 0;
        for (i, b) in data.iter().enumerate() {
            let o = off + i as u64;
            if o < self.table.len() as u64 {
                self.table[o as usize] = *b;
                if o % 16 == VECTOR_CTRL as u64 && b & 1 == 0 {
                    let bit = 1u64 << (o / 16);
                    if self.pba & bit != 0 {
                        self.pba &= !bit;
                        fire |= bit;
                    }
                }
            }
        }
        fire
    }

    /// Of the vectors `pending` the device raised, those to signal now, given the MSI-X control
    /// state `(enabled, function mask)` from config space: masked vectors (or all of them under
    /// the function mask) go to the PBA instead; nothing is signalled with MSI-X off.
    pub fn deliver(&mut self, pending: u64, state: Option<(bool, bool)>) -> u64 {
        match state {
            Some((true, false)) => {
                let mut out = 0;
                for v in 0..self.table.len() / 16 {
                    let bit = 1u64 << v;
                    if pending & bit == 0 {
                        continue;
                    }
                    if self.masked(v) {
                        self.pba |= bit;
                    } else {
                        out |= bit;
                    }
                }
                out
            }
            Some((true, true)) => {
                self.pba |= pending;
                0
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_vectors_wait_in_the_pba_until_unmasked() {
        let mut m = Msix::new(4, 0x800);
        assert_eq!(m.deliver(0b11, Some((true, false))), 0, "all masked after reset");
        let mut pba = [0u8; 8];
        m.read(0x800, &mut pba);
        assert_eq!(pba[0], 0b11);
        assert_eq!(m.write(16 + 12, &[0, 0, 0, 0]), 0b10, "unmasking vector 1 delivers it");
        assert_eq!(m.deliver(0b10, Some((true, false))), 0b10);
        assert_eq!(m.deliver(0b10, Some((true, true))), 0, "function mask");
        assert_eq!(m.deliver(0b10, None), 0, "MSI-X off");
        m.clear_pending();
        m.read(0x800, &mut pba);
        assert_eq!(pba[0], 0);
    }
}
