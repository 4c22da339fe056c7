//! The firmware behind the admin queues (datasheet 7.11): the admin send queue (ATQ) carries commands
//! from the driver, the admin receive queue (ARQ) carries firmware events (link status changes) back.
//!
//! Each 32-byte descriptor is read by DMA when ATQT moves past ATQH, executed, and written back in place
//! with DD|CMP (plus ERR and a return code on failure) before ATQH advances. Indirect buffers (flag BUF,
//! RD when they carry input, LB when over 512 bytes) are read and written by DMA. Everything the driver
//! wrote is untrusted: buffer lengths, element counts and SEIDs are checked and answered with the
//! firmware's return codes (EINVAL for a bad length, ENOSYS for an opcode the firmware does not know).

use super::regs::*;
use super::{I40e, MAIN_VSI_NUMBER, SEID_MAC, SEID_MAIN_VSI, SEID_PF};
use crate::dma::Dma;

/// One command as read from the ATQ: parameters (descriptor bytes 16..32) and the indirect buffer.
struct Cmd {
    opcode: u16,
    flags: u16,
    params: [u8; 16],
    has_buf: bool,
    buf: Vec<u8>,
}

impl Cmd {
    fn p16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.params[off], self.params[off + 1]])
    }
    fn set16(&mut self, off: usize, v: u16) {
        self.params[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.params[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// The command needs an indirect buffer of at least `min` bytes.
    fn need_buf(&self, min: usize) -> Result<(), u16> {
        if !self.has_buf || self.buf.len() < min {
            Err(AQ_RC_EINVAL)
        } else {
            Ok(())
        }
    }
    fn buf16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.buf[off], self.buf[off + 1]])
    }
}

/// What a command produced: the return code, whether the buffer goes back to the host, and the
/// descriptor's datalen on completion.
struct Reply {
    rc: u16,
    write_buf: bool,
    datalen: u16,
}

impl Reply {
    fn ok() -> Reply {
        Reply { rc: AQ_RC_OK, write_buf: false, datalen: 0 }
    }
    fn err(rc: u16) -> Reply {
        Reply { rc, write_buf: false, datalen: 0 }
    }
    fn data(len: usize) -> Reply {
        Reply { rc: AQ_RC_OK, write_buf: true, datalen: len as u16 }
    }
}

impl From<Result<Reply, u16>> for Reply {
    fn from(r: Result<Reply, u16>) -> Reply {
        r.unwrap_or_else(Reply::err)
    }
}

/// Opcode names for the debug trace.
fn opcode_name(op: u16) -> &'static str {
    match op {
        AQC_GET_VERSION => "get_version",
        AQC_DRIVER_VERSION => "driver_version",
        AQC_QUEUE_SHUTDOWN => "queue_shutdown",
        AQC_REQUEST_RESOURCE => "request_resource",
        AQC_RELEASE_RESOURCE => "release_resource",
        AQC_LIST_FUNC_CAPS => "list_func_capabilities",
        AQC_LIST_DEV_CAPS => "list_dev_capabilities",
        AQC_MAC_ADDRESS_READ => "mac_address_read",
        AQC_CLEAR_PXE_MODE => "clear_pxe_mode",
        AQC_GET_SWITCH_CONFIG => "get_switch_config",
        AQC_SET_SWITCH_CONFIG => "set_switch_config",
        AQC_UPDATE_VSI_PARAMS => "update_vsi_parameters",
        AQC_GET_VSI_PARAMS => "get_vsi_parameters",
        AQC_ADD_MACVLAN => "add_macvlan",
        AQC_REMOVE_MACVLAN => "remove_macvlan",
        AQC_SET_VSI_PROMISC => "set_vsi_promiscuous_modes",
        AQC_ADD_CONTROL_PACKET_FILTER => "add_control_packet_filter",
        AQC_CONFIGURE_VSI_TC_BW => "configure_vsi_tc_bw",
        AQC_QUERY_VSI_BW_CONFIG => "query_vsi_bw_config",
        AQC_QUERY_VSI_ETS_SLA_CONFIG => "query_vsi_ets_sla_config",
        AQC_GET_PHY_ABILITIES => "get_phy_abilities",
        AQC_SET_PHY_CONFIG => "set_phy_config",
        AQC_SET_MAC_CONFIG => "set_mac_config",
        AQC_SET_LINK_RESTART_AN => "set_link_restart_an",
        AQC_GET_LINK_STATUS => "get_link_status",
        AQC_SET_PHY_INT_MASK => "set_phy_int_mask",
        AQC_SET_LB_MODES => "set_lb_modes",
        AQC_LLDP_GET_MIB => "lldp_get_mib",
        AQC_LLDP_STOP => "lldp_stop",
        AQC_LLDP_START => "lldp_start",
        AQC_GET_CEE_DCB_CFG => "get_cee_dcb_cfg",
        AQC_SET_RSS_KEY => "set_rss_key",
        AQC_SET_RSS_LUT => "set_rss_lut",
        AQC_GET_RSS_KEY => "get_rss_key",
        AQC_GET_RSS_LUT => "get_rss_lut",
        0x0a01..=0x0a04 | 0x0a08..=0x0aff => "lldp/dcb",
        _ => "unknown",
    }
}

impl I40e {
    /// Executes the commands between ATQH and ATQT.
    pub(super) fn process_atq(&mut self, dma: &mut dyn Dma) -> bool {
        let q = self.atq;
        let n = q.entries();
        if !q.enabled() || q.head == q.tail {
            return false;
        }
        if n == 0 || q.head >= n || q.tail >= n {
            if self.atq_bad_tail != Some(q.tail) {
                self.faults.record(u64::from(q.tail), u64::from(n), "atq head/tail beyond ring");
                self.atq_bad_tail = Some(q.tail);
            }
            return false;
        }
        self.check_dma_allowed();
        let mut head = q.head;
        while head != q.tail {
            let addr = q.base() + u64::from(head) * AQ_DESC_LEN;
            let mut d = [0u8; AQ_DESC_LEN as usize];
            if dma.read(addr, &mut d).is_err() {
                if self.atq_bad_tail != Some(q.tail) {
                    self.faults.record(addr, AQ_DESC_LEN, "atq descriptor read");
                    self.atq_bad_tail = Some(q.tail);
                }
                break;
            }
            self.exec_desc(dma, &mut d);
            // Bytes 4.. first, then the word with the flags (DD, CMP, ERR) and the opcode as one 32-bit
            // Release store, the last store to the descriptor.
            let word = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            if dma.write(addr + 4, &d[4..]).is_err() || dma.publish_u32(addr, word).is_err() {
                self.faults.record(addr, AQ_DESC_LEN, "atq descriptor write-back");
            }
            head = (head + 1) % n;
            self.atq.head = head;
        }
        true
    }

    /// Runs one descriptor and rewrites it as the completion.
    fn exec_desc(&mut self, dma: &mut dyn Dma, d: &mut [u8; 32]) {
        let flags = u16::from_le_bytes([d[0], d[1]]);
        let opcode = u16::from_le_bytes([d[2], d[3]]);
        let datalen = usize::from(u16::from_le_bytes([d[4], d[5]]));
        let mut params = [0u8; 16];
        params.copy_from_slice(&d[16..32]);
        let addr = (u64::from(u32::from_le_bytes([d[24], d[25], d[26], d[27]])) << 32)
            | u64::from(u32::from_le_bytes([d[28], d[29], d[30], d[31]]));
        let has_buf = flags & AQ_FLAG_BUF != 0;
        let name = opcode_name(opcode);
        let mut cmd = Cmd { opcode, flags, params, has_buf, buf: Vec::new() };
        let reply = if has_buf && (datalen > AQ_MAX_BUF || (datalen > AQ_SMALL_BUF && flags & AQ_FLAG_LB == 0)) {
            Reply::err(AQ_RC_EINVAL)
        } else {
            cmd.buf = vec![0; if has_buf { datalen } else { 0 }];
            if has_buf && flags & AQ_FLAG_RD != 0 && dma.read(addr, &mut cmd.buf).is_err() {
                self.faults.record(addr, datalen as u64, "aq indirect buffer read");
                Reply::err(AQ_RC_BAD_ADDR)
            } else {
                self.exec(&mut cmd)
            }
        };
        let mut rc = reply.rc;
        if reply.write_buf && has_buf {
            let n = usize::from(reply.datalen).min(cmd.buf.len());
            if dma.write(addr, &cmd.buf[..n]).is_err() {
                self.faults.record(addr, n as u64, "aq indirect buffer write");
                rc = AQ_RC_BAD_ADDR;
            }
        }
        if rc == AQ_RC_OK {
            tracing::debug!(bdf = %self.bdf, "aq {name} ({opcode:#06x}): ok");
        } else {
            tracing::debug!(bdf = %self.bdf, "aq {name} ({opcode:#06x}): rc={rc} datalen={datalen}");
        }
        let mut out_params = cmd.params;
        if has_buf {
            // The buffer address stays as the driver wrote it.
            out_params[8..16].copy_from_slice(&d[24..32]);
        }
        let mut f = (flags & !AQ_FLAG_ERR) | AQ_FLAG_DD | AQ_FLAG_CMP;
        if rc != AQ_RC_OK {
            f |= AQ_FLAG_ERR;
        }
        let out_len = if reply.datalen != 0 || rc != AQ_RC_OK { reply.datalen } else { datalen as u16 };
        d[0..2].copy_from_slice(&f.to_le_bytes());
        d[4..6].copy_from_slice(&out_len.to_le_bytes());
        d[6..8].copy_from_slice(&rc.to_le_bytes());
        d[16..32].copy_from_slice(&out_params);
    }

    /// The firmware's answer to one command.
    fn exec(&mut self, c: &mut Cmd) -> Reply {
        let _ = c.flags;
        match c.opcode {
            AQC_GET_VERSION => {
                c.set32(0, 0x0000_0000); // rom_ver
                c.set32(4, 0x0000_b3f0); // fw_build
                c.set16(8, 6); // fw 6.1
                c.set16(10, 1);
                c.set16(12, 1); // API 1.7
                c.set16(14, 7);
                Reply::ok()
            }
            AQC_DRIVER_VERSION
            | AQC_SET_SWITCH_CONFIG
            | AQC_ADD_CONTROL_PACKET_FILTER
            | AQC_RELEASE_RESOURCE
            | AQC_LLDP_STOP => Reply::ok(),
            AQC_QUEUE_SHUTDOWN => {
                if c.params[0] & 1 != 0 {
                    self.fw.lse = false;
                }
                Reply::ok()
            }
            AQC_REQUEST_RESOURCE => {
                c.set32(4, 3000); // timeout (ms) the driver may hold it
                Reply::ok()
            }
            AQC_LIST_FUNC_CAPS | AQC_LIST_DEV_CAPS => self.list_caps(c),
            AQC_MAC_ADDRESS_READ => (|| {
                c.need_buf(MAC_ADDRESS_READ_LEN)?;
                c.buf[..MAC_ADDRESS_READ_LEN].fill(0);
                c.buf[0..6].copy_from_slice(&self.mac);
                c.buf[12..18].copy_from_slice(&self.mac);
                c.set16(0, LAN_ADDR_VALID | PORT_ADDR_VALID);
                Ok(Reply::data(MAC_ADDRESS_READ_LEN))
            })()
            .into(),
            AQC_CLEAR_PXE_MODE => {
                let v = self.reg(GLLAN_RCTL_0) & !GLLAN_RCTL_0_PXE_MODE;
                self.regs.insert(GLLAN_RCTL_0, v);
                Reply::ok()
            }
            AQC_GET_SWITCH_CONFIG => Self::switch_config(c).into(),
            AQC_UPDATE_VSI_PARAMS => self.update_vsi(c).into(),
            AQC_GET_VSI_PARAMS => (|| {
                c.need_buf(VSI_PROPS_LEN)?;
                Self::check_vsi_seid(c.p16(0))?;
                c.buf[..VSI_PROPS_LEN].copy_from_slice(&self.fw.vsi.props);
                Self::vsi_completion(c);
                Ok(Reply::data(VSI_PROPS_LEN))
            })()
            .into(),
            AQC_SET_RSS_KEY | AQC_GET_RSS_KEY => (|| {
                Self::check_rss_vsi(c.p16(0))?;
                c.need_buf(RSS_KEY_LEN)?;
                if c.opcode == AQC_SET_RSS_KEY {
                    let key: [u8; RSS_KEY_LEN] = c.buf[..RSS_KEY_LEN].try_into().expect("checked length");
                    self.set_rss_key(&key);
                    Ok(Reply::ok())
                } else {
                    c.buf[..RSS_KEY_LEN].copy_from_slice(&self.rss_key());
                    Ok(Reply::data(RSS_KEY_LEN))
                }
            })()
            .into(),
            AQC_SET_RSS_LUT | AQC_GET_RSS_LUT => (|| {
                Self::check_rss_vsi(c.p16(0))?;
                // The PF's table is 128 or 512 entries; a VSI's table (64 entries on the X710)
                // is the PF's here. The buffer's length is the table's.
                let n = c.buf.len();
                if !c.has_buf || n == 0 || n > super::rss::LUT_MAX {
                    return Err(AQ_RC_EINVAL);
                }
                let _pf_table = c.p16(2) & RSS_LUT_TABLE_TYPE_PF != 0;
                if c.opcode == AQC_SET_RSS_LUT {
                    let entries = c.buf.clone();
                    self.set_rss_lut(&entries);
                    Ok(Reply::ok())
                } else {
                    let lut = self.rss_lut(n).to_vec();
                    c.buf[..lut.len()].copy_from_slice(&lut);
                    Ok(Reply::data(n))
                }
            })()
            .into(),
            AQC_ADD_MACVLAN => self.add_macvlan(c).into(),
            AQC_REMOVE_MACVLAN => self.remove_macvlan(c).into(),
            AQC_SET_VSI_PROMISC => {
                let (flags, valid, seid) = (c.p16(0), c.p16(2), c.p16(4) & PROMISC_SEID_MASK);
                if seid != SEID_MAIN_VSI {
                    return Reply::err(AQ_RC_EINVAL);
                }
                let p = &mut self.fw.vsi.promisc;
                *p = (*p & !valid) | (flags & valid);
                tracing::debug!(bdf = %self.bdf, "vsi {seid} promiscuous flags {:#x}", *p);
                Reply::ok()
            }
            AQC_CONFIGURE_VSI_TC_BW => (|| {
                c.need_buf(CONFIGURE_VSI_TC_BW_LEN)?;
                Self::check_vsi_seid(c.p16(0))?;
                Ok(Reply::ok())
            })()
            .into(),
            AQC_QUERY_VSI_BW_CONFIG => (|| {
                c.need_buf(QUERY_VSI_BW_LEN)?;
                Self::check_vsi_seid(c.p16(0))?;
                c.buf[..QUERY_VSI_BW_LEN].fill(0);
                c.buf[0] = 1; // TC0 valid
                for i in 0..8 {
                    let qs: u16 = if i == 0 { 0 } else { 0xffff };
                    c.buf[16 + 2 * i..18 + 2 * i].copy_from_slice(&qs.to_le_bytes());
                }
                Ok(Reply::data(QUERY_VSI_BW_LEN))
            })()
            .into(),
            AQC_QUERY_VSI_ETS_SLA_CONFIG => (|| {
                c.need_buf(QUERY_VSI_ETS_SLA_LEN)?;
                Self::check_vsi_seid(c.p16(0))?;
                c.buf[..QUERY_VSI_ETS_SLA_LEN].fill(0);
                c.buf[0] = 1;
                Ok(Reply::data(QUERY_VSI_ETS_SLA_LEN))
            })()
            .into(),
            AQC_GET_PHY_ABILITIES => (|| {
                c.need_buf(PHY_ABILITIES_LEN)?;
                c.buf[..PHY_ABILITIES_LEN].fill(0);
                c.buf[0..4].copy_from_slice(&(1u32 << PHY_TYPE_10GBASE_SR).to_le_bytes());
                c.buf[4] = LINK_SPEED_10GB;
                let link = if self.fw.phy_link_enabled { PHY_ENABLE_LINK } else { 0 };
                c.buf[5] = PHY_ABILITY_PAUSE_TX | PHY_ABILITY_PAUSE_RX | PHY_AN_ENABLED | link;
                Ok(Reply::data(PHY_ABILITIES_LEN))
            })()
            .into(),
            AQC_SET_PHY_CONFIG => {
                let abilities = c.params[5];
                self.fw.phy_link_enabled = abilities & PHY_ENABLE_LINK != 0;
                tracing::debug!(bdf = %self.bdf, "phy config: link {}", if self.fw.phy_link_enabled { "enabled" } else { "disabled" });
                self.update_link();
                Reply::ok()
            }
            AQC_SET_LINK_RESTART_AN => {
                // command byte: RESTART_AN 0x02, LINK_ENABLE 0x04.
                self.fw.phy_link_enabled = c.params[0] & 0x04 != 0;
                self.update_link();
                Reply::ok()
            }
            AQC_SET_MAC_CONFIG => {
                let mfs = c.p16(0);
                if !(64..=MAX_FRAME_SIZE).contains(&mfs) {
                    return Reply::err(AQ_RC_EINVAL);
                }
                self.fw.max_frame = mfs;
                tracing::debug!(bdf = %self.bdf, "mac config: max frame {mfs}");
                Reply::ok()
            }
            AQC_GET_LINK_STATUS => {
                match c.p16(0) & LSE_MASK {
                    LSE_ENABLE => self.fw.lse = true,
                    LSE_DISABLE => self.fw.lse = false,
                    _ => {}
                }
                c.params = self.link_status_params();
                Reply::ok()
            }
            AQC_SET_PHY_INT_MASK => {
                self.fw.phy_int_mask = c.p16(8);
                Reply::ok()
            }
            AQC_SET_LB_MODES => {
                let mode = c.p16(0);
                if ![0, LB_PHY_LOCAL, LB_PHY_REMOTE, LB_MAC_LOCAL].contains(&mode) {
                    return Reply::err(AQ_RC_EINVAL);
                }
                self.fw.lb_mode = mode;
                tracing::debug!(bdf = %self.bdf, "loopback mode {mode:#x}");
                Reply::ok()
            }
            // The LLDP agent is stopped and DCB is not supported: what firmware configured without DCB says.
            0x0a00..=0x0aff => Reply::err(AQ_RC_EPERM),
            op => {
                tracing::debug!(bdf = %self.bdf, "aq opcode {op:#06x} not supported");
                Reply::err(AQ_RC_ENOSYS)
            }
        }
    }

    fn check_vsi_seid(seid: u16) -> Result<(), u16> {
        if seid & MACVLAN_CMD_SEID_MASK == SEID_MAIN_VSI {
            Ok(())
        } else {
            Err(AQ_RC_ENOENT)
        }
    }

    /// The RSS commands name a VSI by number (bits 9:0) with VALID (bit 15): the main VSI.
    fn check_rss_vsi(id: u16) -> Result<(), u16> {
        if id & RSS_VSI_VALID != 0 && id & RSS_VSI_ID_MASK == MAIN_VSI_NUMBER {
            Ok(())
        } else {
            Err(AQ_RC_EINVAL)
        }
    }

    fn vsi_completion(c: &mut Cmd) {
        c.set16(0, SEID_MAIN_VSI);
        c.set16(2, MAIN_VSI_NUMBER);
        c.set16(4, 1);
        c.set16(6, 383);
    }

    /// 0x000A / 0x000B: 32-byte capability elements; a short buffer gets ENOMEM and the size needed.
    fn list_caps(&self, c: &mut Cmd) -> Reply {
        if !c.has_buf {
            return Reply::err(AQ_RC_EINVAL);
        }
        let caps: [(u16, u32, u32, u32); 7] = [
            (CAP_ID_SWITCH_MODE, 0, 0, 0),
            (CAP_ID_FUNCTIONS_VALID, 1 << (self.function & 7), 0, 0),
            (CAP_ID_VSI, 384, 0, 0),
            (CAP_ID_RSS, RSS_TABLE_SIZE, RSS_TABLE_ENTRY_WIDTH, 0),
            (CAP_ID_RXQ, PF_QUEUES, 0, 0),
            (CAP_ID_TXQ, PF_QUEUES, 0, 0),
            (CAP_ID_MSIX, MSIX_VECTORS, 0, 0),
        ];
        let need = caps.len() * CAP_ELEM_LEN;
        c.set32(4, caps.len() as u32);
        if c.buf.len() < need {
            return Reply { rc: AQ_RC_ENOMEM, write_buf: false, datalen: need as u16 };
        }
        for (i, (id, number, logical, phys)) in caps.iter().enumerate() {
            let e = &mut c.buf[i * CAP_ELEM_LEN..(i + 1) * CAP_ELEM_LEN];
            e.fill(0);
            e[0..2].copy_from_slice(&id.to_le_bytes());
            e[2] = 1; // major revision
            e[4..8].copy_from_slice(&number.to_le_bytes());
            e[8..12].copy_from_slice(&logical.to_le_bytes());
            e[12..16].copy_from_slice(&phys.to_le_bytes());
        }
        Reply::data(need)
    }

    /// 0x0200: the MAC, the PF and the main VSI (uplink: MAC, downlink: PF).
    fn switch_config(c: &mut Cmd) -> Result<Reply, u16> {
        c.need_buf(SW_HDR_LEN + SW_ELEM_LEN)?;
        let elems: [(u8, u16, u16, u16); 3] = [
            (SW_ELEM_TYPE_MAC, SEID_MAC, 0, 0),
            (SW_ELEM_TYPE_PF, SEID_PF, 0, 0),
            (SW_ELEM_TYPE_VSI, SEID_MAIN_VSI, SEID_MAC, SEID_PF),
        ];
        let start = usize::from(c.p16(0)).min(elems.len());
        let room = (c.buf.len() - SW_HDR_LEN) / SW_ELEM_LEN;
        let n = (elems.len() - start).min(room);
        c.buf.fill(0);
        c.buf[0..2].copy_from_slice(&(n as u16).to_le_bytes());
        c.buf[2..4].copy_from_slice(&(elems.len() as u16).to_le_bytes());
        for (i, (ty, seid, up, down)) in elems[start..start + n].iter().enumerate() {
            let e = &mut c.buf[SW_HDR_LEN + i * SW_ELEM_LEN..SW_HDR_LEN + (i + 1) * SW_ELEM_LEN];
            e[0] = *ty;
            e[1] = 1; // revision
            e[2..4].copy_from_slice(&seid.to_le_bytes());
            e[4..6].copy_from_slice(&up.to_le_bytes());
            e[6..8].copy_from_slice(&down.to_le_bytes());
            e[11] = CONN_TYPE_REGULAR;
        }
        // Next SEID to ask for, 0 when everything was reported.
        let next = if start + n < elems.len() { (start + n) as u16 } else { 0 };
        c.set16(0, next);
        Ok(Reply::data(SW_HDR_LEN + n * SW_ELEM_LEN))
    }

    /// 0x0211: the sections flagged valid replace the VSI's; the firmware-owned last 32 bytes stay.
    fn update_vsi(&mut self, c: &mut Cmd) -> Result<Reply, u16> {
        c.need_buf(VSI_PROPS_LEN)?;
        Self::check_vsi_seid(c.p16(0))?;
        let valid = c.buf16(0);
        for (bit, from, to) in VSI_SECTIONS {
            if valid & bit != 0 {
                self.fw.vsi.props[from..to].copy_from_slice(&c.buf[from..to]);
            }
        }
        let v = &self.fw.vsi;
        tracing::debug!(bdf = %self.bdf,
            "vsi {SEID_MAIN_VSI} update: sections {valid:#x}, queue map flags {:#x} q0 {} tc0 {:#x} -> rx queue {}",
            v.u16_at(VSI_OFF_MAPPING_FLAGS), v.u16_at(VSI_OFF_QUEUE_MAPPING), v.u16_at(VSI_OFF_TC_MAPPING), v.rx_queue());
        Self::vsi_completion(c);
        Ok(Reply::ok())
    }

    fn macvlan_elems(c: &Cmd) -> Result<usize, u16> {
        let n = usize::from(c.p16(0));
        if n == 0 || !c.has_buf || c.buf.len() < n * MACVLAN_ELEM_LEN || c.flags & AQ_FLAG_RD == 0 {
            return Err(AQ_RC_EINVAL);
        }
        let seid = c.p16(2);
        if seid & MACVLAN_CMD_SEID_VALID != 0 {
            Self::check_vsi_seid(seid)?;
        }
        Ok(n)
    }

    fn add_macvlan(&mut self, c: &mut Cmd) -> Result<Reply, u16> {
        let n = Self::macvlan_elems(c)?;
        let mut rc = AQ_RC_OK;
        for i in 0..n {
            let e = &mut c.buf[i * MACVLAN_ELEM_LEN..(i + 1) * MACVLAN_ELEM_LEN];
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&e[0..6]);
            let vlan = u16::from_le_bytes([e[6], e[7]]) & 0xfff;
            let flags = u16::from_le_bytes([e[8], e[9]]);
            let key = (mac, if flags & MACVLAN_ADD_IGNORE_VLAN != 0 { None } else { Some(vlan) });
            let filters = &mut self.fw.vsi.filters;
            e[12] = if filters.contains(&key) {
                MM_PERFECT_MATCH
            } else if filters.len() < MAX_MAC_FILTERS {
                filters.push(key);
                MM_PERFECT_MATCH
            } else {
                rc = AQ_RC_ENOSPC;
                MM_ERR_NO_RES
            };
            tracing::debug!(bdf = %self.bdf, "mac filter add {:02x?} vlan {:?}", key.0, key.1);
        }
        Ok(Reply { rc, write_buf: true, datalen: (n * MACVLAN_ELEM_LEN) as u16 })
    }

    fn remove_macvlan(&mut self, c: &mut Cmd) -> Result<Reply, u16> {
        let n = Self::macvlan_elems(c)?;
        let mut rc = AQ_RC_OK;
        for i in 0..n {
            let e = &mut c.buf[i * MACVLAN_ELEM_LEN..(i + 1) * MACVLAN_ELEM_LEN];
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&e[0..6]);
            let vlan = u16::from_le_bytes([e[6], e[7]]) & 0xfff;
            let ignore_vlan = e[8] & MACVLAN_DEL_IGNORE_VLAN != 0;
            let filters = &mut self.fw.vsi.filters;
            let before = filters.len();
            filters.retain(|(m, v)| !(*m == mac && (ignore_vlan || *v == Some(vlan))));
            e[12] = if filters.len() < before { 0 } else { REMOVE_MACVLAN_FAIL };
            if filters.len() == before {
                rc = AQ_RC_ENOENT;
            }
            tracing::debug!(bdf = %self.bdf, "mac filter remove {mac:02x?} (removed {})", before - filters.len());
        }
        Ok(Reply { rc, write_buf: true, datalen: (n * MACVLAN_ELEM_LEN) as u16 })
    }

    /// Parameters of a get_link_status completion or link status event.
    pub(super) fn link_status_params(&self) -> [u8; 16] {
        let up = self.link_up();
        let mut p = [0u8; 16];
        let lse = if self.fw.lse { LSE_IS_ENABLED } else { 0 };
        p[0..2].copy_from_slice(&lse.to_le_bytes());
        p[2] = PHY_TYPE_10GBASE_SR as u8;
        p[3] = if up { LINK_SPEED_10GB } else { 0 };
        p[4] = if up { LINK_UP_FUNCTION | LINK_UP_PORT } else { 0 } | if self.link_cable { MEDIA_AVAILABLE } else { 0 };
        p[5] = if up { AN_COMPLETED | QUALIFIED_MODULE } else { 0 };
        p[7] = (self.fw.lb_mode & 0x7) as u8;
        p[8..10].copy_from_slice(&self.fw.max_frame.to_le_bytes());
        p[10] = LINK_CONFIG_CRC_ENA;
        p
    }

    /// Posts pending firmware events on the ARQ (into the descriptors the driver pre-posted).
    pub(super) fn post_events(&mut self, dma: &mut dyn Dma) -> bool {
        if self.fw.events.is_empty() {
            return false;
        }
        let q = self.arq;
        let n = q.entries();
        if !q.enabled() || n == 0 || q.head >= n || q.tail >= n {
            // Nobody listens: events are discarded, as firmware does with the ARQ off.
            self.fw.events.clear();
            return false;
        }
        let mut did = false;
        while let Some((opcode, params)) = self.fw.events.front().copied() {
            if self.arq.head == self.arq.tail {
                // The device owns [ARQH, ARQT): head caught up with tail, no free descriptor. Overflow.
                self.arq.len |= AQLEN_OVFL;
                self.fw.events.pop_front();
                continue;
            }
            let head = self.arq.head;
            let addr = q.base() + u64::from(head) * AQ_DESC_LEN;
            let mut d = [0u8; AQ_DESC_LEN as usize];
            if dma.read(addr, &mut d).is_err() {
                self.faults.record(addr, AQ_DESC_LEN, "arq descriptor read");
                self.fw.events.clear();
                break;
            }
            self.fw.events.pop_front();
            let posted = u16::from_le_bytes([d[0], d[1]]);
            let flags = AQ_FLAG_DD | AQ_FLAG_CMP | (posted & (AQ_FLAG_BUF | AQ_FLAG_LB));
            d[2..4].copy_from_slice(&opcode.to_le_bytes());
            d[4..8].fill(0); // datalen 0 (no event data), retval 0
            d[8..16].fill(0);
            d[16..32].copy_from_slice(&params);
            // Bytes 4.. first, then flags (DD) and opcode as one 32-bit Release store, the last store.
            if dma.write(addr + 4, &d[4..]).is_err()
                || dma.publish_u32(addr, u32::from(flags) | (u32::from(opcode) << 16)).is_err()
            {
                self.faults.record(addr, AQ_DESC_LEN, "arq descriptor write");
                break;
            }
            tracing::debug!(bdf = %self.bdf, "arq event {} posted at {head}", opcode_name(opcode));
            self.arq.head = (head + 1) % n;
            self.set_icr0(PFINT_ICR0_ADMINQ);
            did = true;
        }
        did
    }
}
