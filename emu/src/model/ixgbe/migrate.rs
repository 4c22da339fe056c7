//! The 82599's state as a migration snapshot (see [`crate::model::snapshot`]): what a driver
//! programmed and what the device holds for it. Config space, the trapped registers (non-zero
//! words only), the receive address table, the interrupt cause and mask registers, link training,
//! the clear-on-read counters and the lifetime totals, the queue register pages (ring bases,
//! heads, tails, enables), and the MSI-X table and PBA. Latched ring state is not in it: the
//! destination latches its rings again from the queue pages, as after a reset. The cable is the
//! destination's own (its wire), so its link follows that.

use super::*;
use crate::model::snapshot::{load_mapping, mapping_bytes, Reader, SnapshotError, Writer};

const MAGIC: &[u8] = b"lab-nic 82599 state v1";

fn put_counters(w: &mut Writer, c: &Counters) {
    for v in [c.crcerrs, c.gprc, c.bprc, c.mprc, c.gptc, c.tpr, c.tpt, c.mptc, c.bptc] {
        w.u32(v);
    }
    c.mpc.iter().for_each(|v| w.u32(*v));
    for v in [c.gorc, c.gotc, c.tor] {
        w.u64(v);
    }
    for l in [c.gorc_latch, c.gotc_latch, c.tor_latch] {
        w.u8(u8::from(l.is_some()));
        w.u64(l.unwrap_or(0));
    }
}

fn get_counters(r: &mut Reader<'_>) -> Result<Counters, SnapshotError> {
    let mut c = Counters::default();
    for v in [
        &mut c.crcerrs,
        &mut c.gprc,
        &mut c.bprc,
        &mut c.mprc,
        &mut c.gptc,
        &mut c.tpr,
        &mut c.tpt,
        &mut c.mptc,
        &mut c.bptc,
    ] {
        *v = r.u32("counters")?;
    }
    for v in c.mpc.iter_mut() {
        *v = r.u32("MPC")?;
    }
    for v in [&mut c.gorc, &mut c.gotc, &mut c.tor] {
        *v = r.u64("octet counters")?;
    }
    for l in [&mut c.gorc_latch, &mut c.gotc_latch, &mut c.tor_latch] {
        let some = r.bool("octet latch")?;
        let v = r.u64("octet latch")?;
        *l = some.then_some(v);
    }
    Ok(c)
}

impl Ixgbe {
    pub(super) fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC);
        w.bytes(self.cfg.raw());
        let live: Vec<(usize, u32)> = self.regs.iter().copied().enumerate().filter(|(_, v)| *v != 0).collect();
        w.u32(live.len() as u32);
        for (i, v) in live {
            w.u32(i as u32);
            w.u32(v);
        }
        for (lo, hi) in &self.rar {
            w.u32(*lo);
            w.u32(*hi);
        }
        w.u32(self.eicr);
        w.u32(self.eims);
        w.u8(u8::from(self.link_trained));
        w.u8(u8::from(self.link_reported));
        put_counters(&mut w, &self.counters);
        w.totals(&self.totals);
        w.bytes(&mapping_bytes(&self.bar0, RX_QUEUE_PAGE));
        w.bytes(&mapping_bytes(&self.bar0, TX_QUEUE_PAGES));
        w.msix(&self.msix);
        w.finish()
    }

    /// Loads a snapshot: everything is parsed and checked before anything changes.
    pub(super) fn restore(&mut self, state: &[u8]) -> Result<(), SnapshotError> {
        let mut r = Reader::new(state, MAGIC)?;
        let cfg = r.exact(self.cfg.raw().len(), "config space")?;
        let n = r.u32("register count")? as usize;
        if n > self.regs.len() {
            return Err(SnapshotError::Misfit { what: "register count", got: n, limit: self.regs.len() });
        }
        let mut regs = Vec::with_capacity(n);
        for _ in 0..n {
            let (i, v) = (r.u32("register index")? as usize, r.u32("register value")?);
            if i >= self.regs.len() {
                return Err(SnapshotError::Misfit { what: "register index", got: i, limit: self.regs.len() });
            }
            regs.push((i, v));
        }
        let mut rar = [(0u32, 0u32); RAR_ENTRIES as usize];
        for e in rar.iter_mut() {
            *e = (r.u32("RAL")?, r.u32("RAH")?);
        }
        let (eicr, eims) = (r.u32("EICR")?, r.u32("EIMS")?);
        let trained = r.bool("link trained")?;
        let reported = r.bool("link reported")?;
        let counters = get_counters(&mut r)?;
        let t = r.totals()?;
        let rxp = r.exact(RX_QUEUE_PAGE.1 as usize, "RX queue page")?;
        let txp = r.exact(TX_QUEUE_PAGES.1 as usize, "TX queue pages")?;
        let (table, pba) = r.msix(&self.msix)?;
        r.end()?;

        // Checked: apply.
        self.reset_state();
        self.cfg.load_raw(cfg);
        for (i, v) in regs {
            self.regs[i] = v;
        }
        self.rss_update();
        self.rar = rar;
        self.eicr = eicr;
        self.eims = eims;
        self.link_trained = trained;
        self.link_reported = reported;
        self.counters = counters;
        self.totals = t;
        for (page, (off, _)) in [(rxp, RX_QUEUE_PAGE), (txp, TX_QUEUE_PAGES)] {
            load_mapping(&self.bar0, off, page);
        }
        self.msix.load(table, pba);
        self.queue_gen += 1;
        self.update_link();
        tracing::info!(bdf = %self.bdf, bytes = state.len(), "device state loaded (migration)");
        Ok(())
    }
}
