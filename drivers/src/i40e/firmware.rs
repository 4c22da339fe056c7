//! Bring-up talks with the X710's firmware over the admin queue (datasheet 7.10 and the
//! admin-command chapters): the NVM version, the function's capabilities, the MAC address and the
//! switch configuration's main VSI, the VSI's queue map and filters, the PHY. Each command's error
//! names it ("aq get_switch_config: ..."); the ones whose failure is harmless are best effort.

use super::adminq::{self, params16, AqError, Buf};
use super::regs::*;
use super::{Port, FRAME_OVERHEAD, MAX_FRAME, RESET_TIMEOUT};
use crate::error::{Ctx, DriverError};
use crate::pci::fmt_mac;

/// What the firmware reported during bring-up.
pub(super) struct FwInfo {
    pub(super) mac: [u8; 6],
    pub(super) vsi_seid: u16,
    pub(super) qs_handle: u16,
}

impl Port {
    /// Reads one shadow-RAM word through GLNVM_SRCTL/SRDATA, holding the NVM resource.
    pub(super) fn read_nvm_word(&self, word: u32) -> Result<u16, DriverError> {
        let p = params16(&[(0, RESOURCE_NVM), (2, RESOURCE_READ)]);
        self.aq_cmd("request_resource nvm", AQC_REQUEST_RESOURCE, p, Buf::None)?;
        let bar = self.bar();
        bar.write32(GLNVM_SRCTL, GLNVM_SRCTL_START | (word << GLNVM_SRCTL_ADDR_SHIFT));
        let r = self.poll(GLNVM_SRCTL, GLNVM_SRCTL_DONE, GLNVM_SRCTL_DONE, RESET_TIMEOUT, "shadow RAM read");
        let v = (self.bar().read32(GLNVM_SRDATA) >> GLNVM_SRDATA_RDDATA_SHIFT) as u16;
        let _ = self.cmd("release_resource nvm", AQC_RELEASE_RESOURCE, params16(&[(0, RESOURCE_NVM)]), Buf::None);
        r.map(|_| v)
    }

    /// list_func_capabilities: the RSS table size must be 128 or 512; enough queues for the request.
    pub(super) fn check_capabilities(&self, nq: u16) -> Result<(), DriverError> {
        let mut len = 512;
        let caps = loop {
            match self.cmd("list_func_capabilities", AQC_LIST_FUNC_CAPS, [0; 16], Buf::Out(len)) {
                Ok(c) => break c,
                Err(AqError::Firmware { rc: AQ_RC_ENOMEM, datalen, .. }) if usize::from(datalen) > len => {
                    len = usize::from(datalen).min(adminq::CMD_BUF);
                }
                Err(e) => return Err(e).ctx("aq list_func_capabilities"),
            }
        };
        let count = (caps.p32(4) as usize).min(caps.buf.len() / CAP_ELEM_LEN);
        let (mut rss, mut rxq, mut txq, mut msix) = (0, 0, 0, 0);
        for e in caps.buf.chunks_exact(CAP_ELEM_LEN).take(count) {
            let number = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            match u16::from_le_bytes([e[0], e[1]]) {
                CAP_ID_RSS => rss = number,
                CAP_ID_RXQ => rxq = number,
                CAP_ID_TXQ => txq = number,
                CAP_ID_MSIX => msix = number,
                _ => {}
            }
        }
        tracing::debug!(port = %self.pci.port, rss, rxq, txq, msix, "function capabilities");
        if rss != 128 && rss != 512 {
            return Err(DriverError::state(format!(
                "firmware reports an RSS table of {rss} entries (128 or 512 expected)"
            )));
        }
        if rxq < u32::from(nq) || txq < u32::from(nq) {
            return Err(DriverError::state(format!("firmware grants {rxq}/{txq} queues, {nq} needed")));
        }
        Ok(())
    }

    /// MAC address, main VSI SEID and its queue-set handle.
    pub(super) fn discover(&self) -> Result<FwInfo, DriverError> {
        let r = self.aq_cmd("mac_address_read", AQC_MAC_ADDRESS_READ, [0; 16], Buf::Out(MAC_ADDRESS_READ_LEN))?;
        if r.p16(0) & LAN_ADDR_VALID == 0 || r.buf.len() < 6 {
            return Err(DriverError::state("firmware reports no valid LAN MAC address"));
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&r.buf[..6]);
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(DriverError::state(format!("firmware MAC {} is not a unicast address", fmt_mac(&mac))));
        }

        // The switch configuration names the PF's main VSI (element type VSI).
        let mut vsi_seid = None;
        let mut next = 0u16;
        for _ in 0..16 {
            let r = self.aq_cmd(
                "get_switch_config",
                AQC_GET_SWITCH_CONFIG,
                params16(&[(0, next)]),
                Buf::Out(AQ_LARGE_BUF),
            )?;
            let n = r.buf.get(0..2).map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
            for el in r.buf.get(SW_HDR_LEN..).unwrap_or(&[]).chunks_exact(SW_ELEM_LEN).take(n) {
                if el[0] == SW_ELEM_TYPE_VSI && vsi_seid.is_none() {
                    vsi_seid = Some(u16::from_le_bytes([el[2], el[3]]));
                }
            }
            next = r.p16(0);
            if next == 0 {
                break;
            }
        }
        let vsi_seid = vsi_seid.ok_or_else(|| DriverError::state("switch configuration has no VSI for this PF"))?;
        let r =
            self.aq_cmd("get_vsi_parameters", AQC_GET_VSI_PARAMS, params16(&[(0, vsi_seid)]), Buf::Out(VSI_PROPS_LEN))?;
        let qs = r.buf.get(VSI_OFF_QS_HANDLE..VSI_OFF_QS_HANDLE + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        Ok(FwInfo { mac, vsi_seid, qs_handle: qs & 0x3ff })
    }

    /// The main VSI: contiguous queue map from PF queue 0 on TC0, the MAC filter, promiscuous modes.
    pub(super) fn configure_vsi(&self, info: &FwInfo, nrx: u16, promisc: bool) -> Result<(), DriverError> {
        let seid = info.vsi_seid;
        let mut props = [0u8; VSI_PROPS_LEN];
        props[0..2].copy_from_slice(&VSI_PROP_QUEUE_MAP_VALID.to_le_bytes());
        props[VSI_OFF_MAPPING_FLAGS..VSI_OFF_MAPPING_FLAGS + 2].copy_from_slice(&VSI_QUE_MAP_CONTIG.to_le_bytes());
        props[VSI_OFF_QUEUE_MAPPING..VSI_OFF_QUEUE_MAPPING + 2].copy_from_slice(&0u16.to_le_bytes());
        let log2 = u16::BITS - (nrx.max(1) - 1).leading_zeros();
        let tc0 = (log2 as u16) << VSI_TC_QUE_NUMBER_SHIFT;
        props[VSI_OFF_TC_MAPPING..VSI_OFF_TC_MAPPING + 2].copy_from_slice(&tc0.to_le_bytes());
        self.aq_cmd("update_vsi_parameters", AQC_UPDATE_VSI_PARAMS, params16(&[(0, seid)]), Buf::In(&props))?;

        // Replace the firmware's default filter by ours (the same MAC, any VLAN); a missing default
        // filter is fine.
        let vs = seid | MACVLAN_CMD_SEID_VALID;
        let mut el = [0u8; MACVLAN_ELEM_LEN];
        el[0..6].copy_from_slice(&info.mac);
        el[8] = MACVLAN_DEL_PERFECT_MATCH | MACVLAN_DEL_IGNORE_VLAN;
        match self.cmd("remove_macvlan", AQC_REMOVE_MACVLAN, params16(&[(0, 1), (2, vs)]), Buf::In(&el)) {
            Ok(_) => {}
            Err(AqError::Firmware { rc: AQ_RC_ENOENT, .. }) => {}
            Err(x) => return Err(x).ctx("aq remove_macvlan"),
        }
        let mut el = [0u8; MACVLAN_ELEM_LEN];
        el[0..6].copy_from_slice(&info.mac);
        el[8..10].copy_from_slice(&(MACVLAN_ADD_PERFECT_MATCH | MACVLAN_ADD_IGNORE_VLAN).to_le_bytes());
        self.aq_cmd("add_macvlan", AQC_ADD_MACVLAN, params16(&[(0, 1), (2, vs)]), Buf::In(&el))?;
        self.promisc(seid, promisc).ctx("aq set_vsi_promiscuous_modes")
    }

    /// set_vsi_promiscuous_modes: broadcast always, unicast and multicast when `on`.
    pub(super) fn promisc(&self, seid: u16, on: bool) -> Result<(), AqError> {
        let valid = PROMISC_UNICAST | PROMISC_MULTICAST | PROMISC_BROADCAST;
        let flags = PROMISC_BROADCAST | if on { PROMISC_UNICAST | PROMISC_MULTICAST } else { 0 };
        self.cmd(
            "set_vsi_promiscuous_modes",
            AQC_SET_VSI_PROMISC,
            params16(&[(0, flags), (2, valid), (4, seid)]),
            Buf::None,
        )
        .map(|_| ())
    }

    /// PHY events, abilities, MAC frame size, no loopback, link status events on.
    pub(super) fn configure_phy(&self, mtu: u16) -> Result<(), DriverError> {
        self.aq_cmd("set_phy_int_mask", AQC_SET_PHY_INT_MASK, params16(&[(8, !EVENT_LINK_UPDOWN)]), Buf::None)?;
        self.aq_cmd("get_phy_abilities", AQC_GET_PHY_ABILITIES, [0; 16], Buf::Out(PHY_ABILITIES_LEN))?;
        let frame = (u32::from(mtu) + FRAME_OVERHEAD).min(MAX_FRAME) as u16;
        self.aq_cmd("set_mac_config", AQC_SET_MAC_CONFIG, params16(&[(0, frame)]), Buf::None)?;
        self.aq_cmd("set_lb_modes", AQC_SET_LB_MODES, params16(&[(0, 0)]), Buf::None)?;
        self.aq_cmd("get_link_status", AQC_GET_LINK_STATUS, params16(&[(0, LSE_ENABLE)]), Buf::None)?;
        Ok(())
    }
}
