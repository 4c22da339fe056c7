//! The X710's register file as the driver sees it through BAR 0: plain storage for what only
//! needs to read back, side effects for the registers that act (resets, admin queue doorbells,
//! queue enables, HMC segment commands, interrupt causes), statistics computed from the model's
//! counters, and the shadow RAM behind GLNVM_SRCTL/SRDATA. A write to a register the model does
//! not emulate is kept (it reads back) and logged once per offset.

use super::regs::*;
use super::*;

impl I40e {
    pub(super) fn reg(&self, off: u32) -> u32 {
        self.regs.get(&off).copied().unwrap_or(0)
    }

    pub(super) fn page32(&self, off: u32) -> u32 {
        self.bar0.read32(off as usize).unwrap_or(0)
    }

    pub(super) fn in_tail_pages(off: u32) -> bool {
        let o = u64::from(off);
        (TX_TAIL_PAGES.0..TX_TAIL_PAGES.0 + TX_TAIL_PAGES.1).contains(&o)
            || (RX_TAIL_PAGES.0..RX_TAIL_PAGES.0 + RX_TAIL_PAGES.1).contains(&o)
    }

    /// Index of `off` in a per-queue register array at `base` (4 bytes apart), for the PF's queues.
    pub(super) fn queue_index(off: u32, base: u32) -> Option<usize> {
        let q = off.checked_sub(base)? / 4;
        (off >= base && q < PF_QUEUES && off.is_multiple_of(4)).then_some(q as usize)
    }

    /// Shadow-RAM contents: a small, consistent NVM image.
    pub(super) fn shadow_ram(&self, word: u32) -> u16 {
        match word {
            // Valid signature (bits 7:6 = 01).
            SR_NVM_CONTROL_WORD => 0x0040,
            SR_BOOT_CONFIG_PTR => 0,
            // NVM image version 6.01.
            SR_NVM_DEV_STARTER_VERSION => 0x0601,
            SR_NVM_EETRACK_LO => 0x3fd6,
            SR_NVM_EETRACK_HI => 0x8000,
            _ => 0,
        }
    }

    /// Reads a 48-bit counter half (`high`: bits 47:32).
    pub(super) fn counter(v: u64, high: bool) -> u32 {
        if high {
            ((v >> 32) & 0xffff) as u32
        } else {
            v as u32
        }
    }

    pub(super) fn read_stat(&self, off: u32) -> Option<u32> {
        let p = self.port();
        let c = &self.counters;
        let pairs = [
            (glprt_gorcl(p), c.gorc),
            (glprt_uprcl(p), c.uprc),
            (glprt_mprcl(p), c.mprc),
            (glprt_bprcl(p), c.bprc),
            (glprt_gotcl(p), c.gotc),
            (glprt_uptcl(p), c.uptc),
            (glprt_mptcl(p), c.mptc),
            (glprt_bptcl(p), c.bptc),
        ];
        for (base, v) in pairs {
            if off == base || off == base + 4 {
                return Some(Self::counter(v, off == base + 4));
            }
        }
        match off {
            o if o == glprt_rdpc(p) => Some(c.rdpc as u32),
            o if o == glprt_tdold(p) => Some(c.tdold as u32),
            o if o == glprt_roc(p) => Some(c.roc as u32),
            o if o == glprt_crcerrs(p) => Some(0),
            o if (0x0030_0000..0x0030_1000).contains(&o) => Some(0),
            _ => None,
        }
    }

    /// One 32-bit register read of BAR0 at a 4-byte aligned offset.
    pub(super) fn read_reg(&mut self, off: u32) -> u32 {
        if Self::in_tail_pages(off) {
            return self.page32(off);
        }
        if let Some(q) = Self::queue_index(off, qtx_ena(0)) {
            let t = &self.txq[q];
            return (u32::from(t.req) * QENA_REQ) | if t.ctx.is_some() { QENA_STAT } else { 0 };
        }
        if let Some(q) = Self::queue_index(off, qrx_ena(0)) {
            let r = &self.rxq[q];
            return (u32::from(r.req) * QENA_REQ) | if r.ctx.is_some() { QENA_STAT } else { 0 };
        }
        if let Some(q) = Self::queue_index(off, qtx_head(0)) {
            return self.txq[q].head;
        }
        if let Some(q) = Self::queue_index(off, qint_rqctl(0)) {
            return self.qint_rq[q];
        }
        if let Some(q) = Self::queue_index(off, qint_tqctl(0)) {
            return self.qint_tq[q];
        }
        if let Some(v) = self.read_stat(off) {
            return v;
        }
        match off {
            PFGEN_CTRL => self.reg(PFGEN_CTRL) & !PFGEN_CTRL_PFSWR,
            GLGEN_RSTAT => 0,
            GLNVM_ULD => GLNVM_ULD_ALL_DONE,
            GLNVM_FLA => GLNVM_FLA_LOCKED,
            GLNVM_GENS => GLNVM_GENS_NVM_PRES | (7 << GLNVM_GENS_SR_SIZE_SHIFT),
            GL_FWSTS => 0,
            PFGEN_PORTNUM => self.port(),
            PF_FUNC_RID => self.rid,
            GLPCI_CNF2 => MSIX_VECTORS << GLPCI_CNF2_MSI_X_PF_N_SHIFT,
            GLPCI_CAPSUP => 0,
            PFLAN_QALLOC => ((PF_QUEUES - 1) << PFLAN_QALLOC_LASTQ_SHIFT) | PFLAN_QALLOC_VALID,
            PF_VT_PFALLOC => 0,
            PF_ATQBAL => self.atq.bal,
            PF_ATQBAH => self.atq.bah,
            PF_ATQLEN => self.atq.len,
            PF_ATQH => self.atq.head,
            PF_ATQT => self.atq.tail,
            PF_ARQBAL => self.arq.bal,
            PF_ARQBAH => self.arq.bah,
            PF_ARQLEN => self.arq.len,
            PF_ARQH => self.arq.head,
            PF_ARQT => self.arq.tail,
            PFINT_ICR0 => std::mem::take(&mut self.icr0),
            o => self.reg(o),
        }
    }

    /// One 32-bit register write of BAR0 at a 4-byte aligned offset.
    pub(super) fn write_reg(&mut self, off: u32, val: u32) {
        if Self::in_tail_pages(off) {
            self.bar0.write32(off as usize, val);
            return;
        }
        if let Some(q) = Self::queue_index(off, qtx_ena(0)) {
            self.request_queue(q, true, val & QENA_REQ != 0);
            return;
        }
        if let Some(q) = Self::queue_index(off, qrx_ena(0)) {
            self.request_queue(q, false, val & QENA_REQ != 0);
            return;
        }
        if let Some(q) = Self::queue_index(off, qint_rqctl(0)) {
            self.qint_rq[q] = val;
            return;
        }
        if let Some(q) = Self::queue_index(off, qint_tqctl(0)) {
            self.qint_tq[q] = val;
            return;
        }
        if Self::queue_index(off, qtx_head(0)).is_some() || self.read_stat(off).is_some() {
            return;
        }
        match off {
            PFGEN_CTRL => {
                if val & PFGEN_CTRL_PFSWR != 0 {
                    tracing::info!(bdf = %self.bdf, "PF reset (PFGEN_CTRL.PFSWR)");
                    self.pf_reset();
                    self.update_link();
                }
            }
            GLGEN_RSTAT | GLNVM_ULD | GLNVM_FLA | GLNVM_GENS | GL_FWSTS | PFGEN_PORTNUM | PF_FUNC_RID | GLPCI_CNF2
            | GLPCI_CAPSUP | PFLAN_QALLOC | PF_VT_PFALLOC | GLHMC_LANTXOBJSZ | GLHMC_LANRXOBJSZ | GLHMC_LANQMAX
            | PFINT_ICR0 => {}
            PF_ATQBAL => self.atq.bal = val,
            PF_ATQBAH => self.atq.bah = val,
            PF_ATQLEN => self.atq.len = val & !AQLEN_OVFL,
            PF_ATQH => self.atq.head = val & AQ_PTR_MASK,
            PF_ATQT => {
                self.atq.tail = val & AQ_PTR_MASK;
                self.atq_bad_tail = None;
            }
            PF_ARQBAL => self.arq.bal = val,
            PF_ARQBAH => self.arq.bah = val,
            PF_ARQLEN => self.arq.len = val,
            PF_ARQH => self.arq.head = val & AQ_PTR_MASK,
            PF_ARQT => self.arq.tail = val & AQ_PTR_MASK,
            GLNVM_SRCTL => {
                let mut v = val & !(GLNVM_SRCTL_START | GLNVM_SRCTL_DONE);
                if val & GLNVM_SRCTL_START != 0 {
                    let word = (val >> GLNVM_SRCTL_ADDR_SHIFT) & GLNVM_SRCTL_ADDR_MASK;
                    if val & GLNVM_SRCTL_WRITE != 0 {
                        self.faults.record(u64::from(word), 2, "shadow RAM write refused (NVM locked)");
                    } else {
                        let data = u32::from(self.shadow_ram(word)) << GLNVM_SRDATA_RDDATA_SHIFT;
                        self.regs.insert(GLNVM_SRDATA, data);
                    }
                    v |= GLNVM_SRCTL_DONE;
                }
                self.regs.insert(GLNVM_SRCTL, v);
            }
            PFHMC_SDCMD => {
                let idx = (val & PFHMC_SDCMD_IDX_MASK) as usize;
                if val & PFHMC_SDCMD_WR != 0 {
                    let sd = SegmentDesc { low: self.reg(PFHMC_SDDATALOW), high: self.reg(PFHMC_SDDATAHIGH) };
                    tracing::debug!(bdf = %self.bdf, "hmc sd {idx}: low={:#x} high={:#x}", sd.low, sd.high);
                    self.hmc.write_sd(idx, sd);
                } else {
                    let sd = self.hmc.read_sd(idx);
                    self.regs.insert(PFHMC_SDDATALOW, sd.low);
                    self.regs.insert(PFHMC_SDDATAHIGH, sd.high);
                }
                self.regs.insert(PFHMC_SDCMD, val & !PFHMC_SDCMD_WR);
            }
            o => {
                if !Self::is_storage(o) && self.unknown_logged.insert(o) {
                    tracing::info!(bdf = %self.bdf, "write to unemulated register {o:#08x} = {val:#x} (kept)");
                }
                self.regs.insert(o, val);
                if super::rss::is_rss_reg(o) {
                    self.rss_update();
                }
            }
        }
    }

    /// Registers that are plain storage in the model (no side effects).
    pub(super) fn is_storage(off: u32) -> bool {
        matches!(
            off,
            PFINT_ICR0_ENA
                | PFINT_DYN_CTL0
                | PFINT_LNKLST0
                | GLLAN_RCTL_0
                | GLNVM_SRDATA
                | PFHMC_SDDATALOW
                | PFHMC_SDDATAHIGH
                | PFHMC_PDINV
                | PFHMC_ERRORINFO
                | PFHMC_ERRORDATA
                | GLGEN_RSTCTL
        ) || (glhmc_sdpart(0)..glhmc_sdpart(16)).contains(&off)
            || (glhmc_lantxbase(0)..glhmc_lanrxcnt(16)).contains(&off)
            || (gllan_txpre_qdis(0)..gllan_txpre_qdis(GLLAN_TXPRE_QDIS_COUNT)).contains(&off)
            || (qint_rqctl(0)..qint_rqctl(LANQMAX)).contains(&off)
            || (qint_tqctl(0)..qint_tqctl(LANQMAX)).contains(&off)
            || (qtx_ctl(0)..qtx_ctl(LANQMAX)).contains(&off)
            // PFINT_DYN_CTLN, PFINT_LNKLSTN, PFINT_ITRN, PFINT_RATEN (vectors 1..)
            || (0x0003_0000..0x0003_8000).contains(&off)
            // PFQF_* / PRTQF_* filter control, hash key and LUT; PFQF_CTL_0 and _2 lie apart.
            || (0x0024_0000..0x0026_0000).contains(&off)
            || off == PFQF_CTL_0
            || off == PFQF_CTL_2
    }
}
