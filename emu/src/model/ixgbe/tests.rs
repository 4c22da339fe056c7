//! Model unit tests: registers and rings against a `FakeDma`, no sockets.

use super::*;
use crate::dma::FakeDma;
use crate::model::DeviceModel;
use crate::wire::{FrameByFrame, Loopback, NullWire, QueuedLoopback};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DMA_BASE: u64 = 0x1_0000_0000;
const RX_RING: u64 = DMA_BASE;
const TX_RING: u64 = DMA_BASE + 0x1000;
const RX_BUFS: u64 = DMA_BASE + 0x10000;
const TX_BUFS: u64 = DMA_BASE + 0x40000;
const N: u32 = 8;

fn nic(wire: Box<dyn Wire>) -> Ixgbe {
    Ixgbe::new(ModelConfig { bdf: "0000:00:05.0".into(), function: 0, mac: MAC, wire }).unwrap()
}

fn rd(m: &mut Ixgbe, off: u32) -> u32 {
    let mut b = [0u8; 4];
    m.bar_read(0, u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn wr(m: &mut Ixgbe, off: u32, v: u32) {
    m.bar_write(0, u64::from(off), &v.to_le_bytes());
}

fn put_u64(dma: &mut FakeDma, iova: u64, v: u64) {
    dma.write(iova, &v.to_le_bytes()).unwrap();
}

fn get_u32(dma: &mut FakeDma, iova: u64) -> u32 {
    let mut b = [0u8; 4];
    dma.read(iova, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// The ixy bring-up (datasheet 4.6.3 - 4.6.8), with one RX and one TX ring of N descriptors.
fn bring_up(m: &mut Ixgbe, dma: &mut FakeDma) {
    m.config_write(4, &0x0006u16.to_le_bytes()); // memory + bus master
    wr(m, EIMC, 0x7fff_ffff);
    wr(m, CTRL, CTRL_RST | CTRL_LNK_RST);
    assert_eq!(rd(m, CTRL) & (CTRL_RST | CTRL_LNK_RST), 0);
    assert_ne!(rd(m, EEC) & EEC_ARD, 0);
    assert_ne!(rd(m, RDRXCTL) & RDRXCTL_DMAIDONE, 0);
    wr(m, AUTOC, (3 << 13) | AUTOC_AN_RESTART);
    let v = rd(m, HLREG0);
    wr(m, HLREG0, v | HLREG0_RXCRCSTRP | HLREG0_TXCRCEN | HLREG0_TXPADEN);
    wr(m, FCTRL, FCTRL_BAM);
    let v = rd(m, srrctl(0));
    wr(m, srrctl(0), (v & !SRRCTL_DESCTYPE_MASK) | (1 << SRRCTL_DESCTYPE_SHIFT));
    wr(m, rdbal(0), RX_RING as u32);
    wr(m, rdbah(0), (RX_RING >> 32) as u32);
    wr(m, rdlen(0), N * 16);
    wr(m, RXCTRL, RXCTRL_RXEN);
    wr(m, tdbal(0), TX_RING as u32);
    wr(m, tdbah(0), (TX_RING >> 32) as u32);
    wr(m, tdlen(0), N * 16);
    wr(m, DMATXCTL, DMATXCTL_TE);
    for i in 0..u64::from(N) {
        put_u64(dma, RX_RING + i * 16, RX_BUFS + i * 2048);
        put_u64(dma, RX_RING + i * 16 + 8, 0);
    }
    wr(m, rxdctl(0), RXDCTL_ENABLE);
    assert_ne!(rd(m, rxdctl(0)) & RXDCTL_ENABLE, 0);
    wr(m, rdh(0), 0);
    wr(m, rdt(0), N - 1);
    wr(m, txdctl(0), TXDCTL_ENABLE);
    wr(m, tdh(0), 0);
    wr(m, tdt(0), 0);
    m.poll(dma);
    assert_ne!(rd(m, LINKS) & LINKS_UP, 0);
}

fn frame(dst: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// Queues one frame on TX descriptor `idx` (advanced data descriptor with EOP|IFCS|RS).
fn queue_tx(m: &mut Ixgbe, dma: &mut FakeDma, idx: u32, data: &[u8]) {
    let buf = TX_BUFS + u64::from(idx) * 2048;
    dma.write(buf, data).unwrap();
    let d = TX_RING + u64::from(idx) * 16;
    put_u64(dma, d, buf);
    let ctl = data.len() as u32 | (0x3 << TXD_DTYP_SHIFT) | TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS | TXD_CMD_DEXT;
    dma.write(d + 8, &ctl.to_le_bytes()).unwrap();
    dma.write(d + 12, &((data.len() as u32) << 14).to_le_bytes()).unwrap();
    wr(m, tdt(0), (idx + 1) % N);
}

#[test]
fn reset_self_clears_and_done_bits_read_one() {
    let mut m = nic(Box::new(NullWire::default()));
    wr(&mut m, GPIE, 0x1234);
    wr(&mut m, CTRL, CTRL_RST);
    assert_eq!(rd(&mut m, CTRL) & CTRL_RST, 0);
    assert_eq!(rd(&mut m, GPIE), 0, "reset clears registers");
    assert_eq!(rd(&mut m, EEC) & (EEC_ARD | EEC_PRES), EEC_ARD | EEC_PRES);
    assert_eq!(rd(&mut m, RDRXCTL) & RDRXCTL_DMAIDONE, RDRXCTL_DMAIDONE);
    assert_eq!(rd(&mut m, ral(0)), 0x0000_0002);
    assert_eq!(rd(&mut m, rah(0)), 0x0100 | RAH_AV);
    assert_eq!(rd(&mut m, RAR_LEGACY_BASE + 4), 0x0100 | RAH_AV);
}

#[test]
fn autoc_restart_brings_links_up_and_link_down_follows_control() {
    let mut m = nic(Box::new(NullWire::default()));
    assert_eq!(rd(&mut m, LINKS) & LINKS_UP, 0);
    wr(&mut m, AUTOC, AUTOC_AN_RESTART);
    assert_eq!(rd(&mut m, AUTOC) & AUTOC_AN_RESTART, 0, "AN_RESTART self-clears");
    assert_eq!(rd(&mut m, LINKS), LINKS_UP | LINKS_SPEED_10G);
    assert_ne!(rd(&mut m, STATUS) & STATUS_LINK_UP, 0);
    m.link_set(false);
    assert_eq!(rd(&mut m, LINKS) & LINKS_UP, 0);
    assert_ne!(rd(&mut m, EICR) & EICR_LSC, 0, "link change sets LSC");
    assert_eq!(rd(&mut m, EICR), 0, "EICR is read-clear");
    m.link_set(true);
    assert_ne!(rd(&mut m, LINKS) & LINKS_UP, 0);
}

#[test]
fn eims_eimc_set_and_clear_the_mask() {
    let mut m = nic(Box::new(NullWire::default()));
    wr(&mut m, EIMS, 0x0000_00f0);
    wr(&mut m, EIMS, 0x0010_0000);
    assert_eq!(rd(&mut m, EIMS), 0x0010_00f0);
    wr(&mut m, EIMC, 0x0000_0030);
    assert_eq!(rd(&mut m, EIMS), 0x0010_00c0);
    wr(&mut m, EICS, 0x0000_0041);
    assert_eq!(rd(&mut m, EICR), 0x0000_0041);
    assert_eq!(rd(&mut m, EICR), 0);
}

#[test]
fn statistics_clear_on_read_and_octets_latch_low_clear_high() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    wr(&mut m, FCTRL, FCTRL_UPE | FCTRL_BAM);
    for i in 0..3 {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 100, 7));
        m.poll(&mut dma);
    }
    assert_eq!(rd(&mut m, GPTC), 3);
    assert_eq!(rd(&mut m, GPTC), 0);
    assert_eq!(rd(&mut m, GOTCL), 3 * 104);
    assert_eq!(rd(&mut m, GOTCH), 0);
    assert_eq!(rd(&mut m, GOTCL), 0, "high read clears");
    assert_eq!(rd(&mut m, GPRC), 3);
    assert_eq!(rd(&mut m, GORCL), 3 * 104);
    assert_eq!(rd(&mut m, GORCH), 0);
    assert_eq!(rd(&mut m, GORCL), 0);
    assert_eq!(rd(&mut m, TPT), 3);
    assert_eq!(rd(&mut m, TPR), 3);
}

#[test]
fn tx_writes_back_dd_and_advances_tdh() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    queue_tx(&mut m, &mut dma, 0, &frame([0xff; 6], 64, 1));
    assert_eq!(get_u32(&mut dma, TX_RING + 12) & TXD_STAT_DD, 0);
    assert!(m.poll(&mut dma));
    assert_eq!(get_u32(&mut dma, TX_RING + 12) & TXD_STAT_DD, TXD_STAT_DD);
    assert_eq!(rd(&mut m, tdh(0)), 1);
    assert_eq!(m.stats().tx_packets, 1);
    assert_eq!(rd(&mut m, BPTC), 1);
}

#[test]
fn loopback_frames_arrive_byte_identical_with_dd_eop_and_length() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    let f0 = frame(MAC, 60, 0x5a);
    let f1: Vec<u8> = (0..1514u32).map(|i| i as u8).collect::<Vec<_>>();
    let mut f1 = f1;
    f1[..6].copy_from_slice(&MAC);
    queue_tx(&mut m, &mut dma, 0, &f0);
    m.poll(&mut dma);
    queue_tx(&mut m, &mut dma, 1, &f1);
    m.poll(&mut dma);
    for (i, f) in [f0, f1].iter().enumerate() {
        let d = RX_RING + i as u64 * 16;
        let st = get_u32(&mut dma, d + 8);
        assert_eq!(st & (RXD_STAT_DD | RXD_STAT_EOP), RXD_STAT_DD | RXD_STAT_EOP);
        let len = (get_u32(&mut dma, d + 12) & 0xffff) as usize;
        assert_eq!(len, f.len());
        let mut got = vec![0u8; len];
        dma.read(RX_BUFS + i as u64 * 2048, &mut got).unwrap();
        assert_eq!(&got, f);
    }
    assert_eq!(rd(&mut m, rdh(0)), 2);
    let s = m.stats();
    assert_eq!((s.rx_packets, s.tx_packets), (2, 2));
    assert_eq!(s.rx_bytes, 60 + 1514);
}

#[test]
fn frames_larger_than_one_buffer_span_descriptors_with_eop_on_last() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    let v = rd(&mut m, srrctl(0));
    wr(&mut m, srrctl(0), (v & !SRRCTL_BSIZEPACKET_MASK) | 1); // 1 KiB
    let f = frame(MAC, 1500, 3);
    queue_tx(&mut m, &mut dma, 0, &f);
    m.poll(&mut dma);
    let st0 = get_u32(&mut dma, RX_RING + 8);
    let st1 = get_u32(&mut dma, RX_RING + 16 + 8);
    assert_eq!(st0 & (RXD_STAT_DD | RXD_STAT_EOP), RXD_STAT_DD);
    assert_eq!(st1 & (RXD_STAT_DD | RXD_STAT_EOP), RXD_STAT_DD | RXD_STAT_EOP);
    assert_eq!(get_u32(&mut dma, RX_RING + 12) & 0xffff, 1024);
    assert_eq!(get_u32(&mut dma, RX_RING + 16 + 12) & 0xffff, 1500 - 1024);
}

#[test]
fn srrctl_bsizepacket_is_bits_4_to_0_so_reserved_bits_do_not_grow_the_buffer() {
    // 8.2.3.8.7: BSIZEPACKET is bits 4:0 in 1 KB units (1..16 KB); bits 7:5 are reserved. With
    // bit 5 set beside 1 KB the buffer is still 1 KB: a 1500-byte frame takes two descriptors.
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    let v = rd(&mut m, srrctl(0));
    wr(&mut m, srrctl(0), (v & !0x7f) | 0x20 | 1);
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 1500, 3));
    m.poll(&mut dma);
    assert_eq!(get_u32(&mut dma, RX_RING + 12) & 0xffff, 1024, "first buffer 1 KB");
    assert_eq!(get_u32(&mut dma, RX_RING + 16 + 8) & (RXD_STAT_DD | RXD_STAT_EOP), RXD_STAT_DD | RXD_STAT_EOP);
}

#[test]
fn unicast_filter_drops_foreign_mac_unless_promiscuous() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    queue_tx(&mut m, &mut dma, 0, &frame([0x02, 9, 9, 9, 9, 9], 64, 0));
    m.poll(&mut dma);
    assert_eq!(m.stats().rx_packets, 0);
    assert_eq!(m.stats().rx_filtered, 1);
    wr(&mut m, FCTRL, FCTRL_UPE);
    queue_tx(&mut m, &mut dma, 1, &frame([0x02, 9, 9, 9, 9, 9], 64, 0));
    m.poll(&mut dma);
    assert_eq!(m.stats().rx_packets, 1);
}

#[test]
fn full_rx_ring_counts_mpc() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    wr(&mut m, rdt(0), 1); // only descriptor 0 is free
    for i in 0..3 {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 64, 0));
        m.poll(&mut dma);
    }
    assert_eq!(m.stats().rx_packets, 1);
    assert_eq!(rd(&mut m, mpc(0)), 2);
    assert_eq!(rd(&mut m, mpc(0)), 0);
    assert_eq!(m.stats().rx_missed, 2);
}

#[test]
fn descriptor_outside_dma_maps_is_a_fault_and_the_model_keeps_working() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    // TX descriptor 0 points at a buffer far outside the DMA window.
    put_u64(&mut dma, TX_RING, 0xdead_0000_0000);
    let ctl = 64 | (0x3 << TXD_DTYP_SHIFT) | TXD_CMD_EOP | TXD_CMD_RS | TXD_CMD_DEXT;
    dma.write(TX_RING + 8, &ctl.to_le_bytes()).unwrap();
    wr(&mut m, tdt(0), 1);
    m.poll(&mut dma);
    assert!(m.faults().has("tx buffer read"));
    assert_eq!(m.faults().last(1)[0].iova, 0xdead_0000_0000);
    // RX descriptor 0 points outside too: the frame is dropped with an error write-back.
    put_u64(&mut dma, RX_RING, 0xbeef_0000_0000);
    queue_tx(&mut m, &mut dma, 1, &frame(MAC, 64, 1));
    m.poll(&mut dma);
    assert!(m.faults().has("rx buffer write"));
    assert_ne!(get_u32(&mut dma, RX_RING + 8) & RXD_ERR_RXE, 0);
    // The next frame goes through normally.
    let f = frame(MAC, 80, 2);
    queue_tx(&mut m, &mut dma, 2, &f);
    m.poll(&mut dma);
    let mut got = vec![0u8; 80];
    dma.read(RX_BUFS + 2048, &mut got).unwrap();
    assert_eq!(got, f);
    // A ring base outside every map stalls that queue with a fault, not a crash.
    wr(&mut m, txdctl(0), 0);
    m.poll(&mut dma);
    wr(&mut m, tdbal(0), 0x7000_0000);
    wr(&mut m, tdbah(0), 0);
    wr(&mut m, txdctl(0), TXDCTL_ENABLE);
    wr(&mut m, tdt(0), 1);
    m.poll(&mut dma);
    assert!(m.faults().has("tx descriptor read"));
    assert!(m.faults().total() >= 3);
}

#[test]
fn bad_accesses_read_all_ones_and_are_recorded() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut b = [0u8; 4];
    m.bar_read(0, BAR0_SIZE, &mut b);
    assert_eq!(b, [0xff; 4]);
    m.bar_read(0, 2, &mut b);
    assert_eq!(b, [0xff; 4]);
    m.bar_write(0, u64::MAX - 1, &[0; 4]);
    m.bar_read(2, 0, &mut b);
    assert_eq!(m.faults().total(), 4);
    m.bar_write(0, 0x0_1234 & !3, &7u32.to_le_bytes());
    assert_eq!(rd(&mut m, 0x1234), 7, "unknown registers keep their value");
}

#[test]
fn config_space_reports_82599_ids_and_msix() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut b = [0u8; 4];
    m.config_read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x10fb_8086);
    m.config_read(8, &mut b);
    assert_eq!(u32::from_le_bytes(b) >> 8, 0x020000);
    assert_eq!(m.msix_count(), 64);
}

/// Offset of the MSI-X capability in config space (the list starts after PM at 0x40).
fn msix_cap(m: &mut Ixgbe) -> u64 {
    let mut cap = 0x40u64;
    loop {
        let mut id = [0u8; 2];
        m.config_read(cap, &mut id);
        if id[0] == 0x11 {
            return cap;
        }
        cap = u64::from(id[1]);
    }
}

#[test]
fn msix_vector_fires_when_enabled_and_unmasked() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    // MSI-X enable in the capability (MSI-X is the first capability after PM at 0x40).
    let cap = msix_cap(&mut m);
    m.config_write(cap + 3, &[0x80]);
    m.bar_write(4, 3 * 16 + 12, &[0, 0, 0, 0]); // unmask vector 3
    wr(&mut m, GPIE, 0x10);
    wr(&mut m, ivar(0), IVAR_VALID | 3); // rx queue 0 -> vector 3
    wr(&mut m, EIMS, 1 << 3);
    m.take_irqs();
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 64, 0));
    m.poll(&mut dma);
    assert_eq!(m.take_irqs(), 1 << 3);
}

#[test]
fn legacy_descriptor_type_gets_legacy_write_back() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    let v = rd(&mut m, srrctl(0));
    wr(&mut m, srrctl(0), v & !SRRCTL_DESCTYPE_MASK);
    let f = frame(MAC, 70, 4);
    queue_tx(&mut m, &mut dma, 0, &f);
    m.poll(&mut dma);
    let w = get_u32(&mut dma, RX_RING + 8);
    assert_eq!(w & 0xffff, 70, "legacy length @8");
    assert_eq!(get_u32(&mut dma, RX_RING + 12) & 0xff, 0x3, "legacy status DD|EOP @12");
    assert_eq!(get_u32(&mut dma, RX_RING + 12) >> 8 & 0xff, 0, "no errors");
    // A buffer the device cannot write: the frame is reported as RXE (errors bit 0), not as an
    // IPv4 checksum error (bit 7).
    put_u64(&mut dma, RX_RING + 16, 0xdead_0000_0000);
    queue_tx(&mut m, &mut dma, 1, &f);
    m.poll(&mut dma);
    let w = get_u32(&mut dma, RX_RING + 16 + 12);
    assert_eq!(w & 0x3, 0x3, "DD|EOP");
    assert_eq!(w >> 8 & 0xff, LEGACY_RXD_ERR_RXE, "RXE, and nothing else");
}

#[test]
fn autoc2_is_storage_and_links2_is_read_only() {
    let mut m = nic(Box::new(Loopback::default()));
    wr(&mut m, AUTOC2, 0x0003_0000);
    assert_eq!(rd(&mut m, AUTOC2), 0x0003_0000, "AUTOC2 at 0x042a8 keeps what is written");
    wr(&mut m, LINKS2, 0xffff_ffff);
    assert_eq!(rd(&mut m, LINKS2), 0, "LINKS2 (0x04324) is status: a write does not stick");
}

#[test]
fn dma_without_bus_master_is_recorded_once_per_stretch() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    m.config_write(4, &0x0002u16.to_le_bytes());
    for i in 0..3 {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 64, 0));
        m.poll(&mut dma);
    }
    assert_eq!(m.stats().rx_packets, 3, "lenient: DMA still happens");
    assert_eq!(m.faults().total(), 1);
    assert!(m.faults().has("dma without bus master enable"));
}

#[test]
fn rings_wrap_around_under_sustained_traffic() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    for i in 0..(5 * N) {
        let idx = i % N;
        let f = frame(MAC, 64 + i as usize, i as u8);
        queue_tx(&mut m, &mut dma, idx, &f);
        m.poll(&mut dma);
        let d = RX_RING + u64::from(idx) * 16;
        assert_eq!(get_u32(&mut dma, d + 8) & 3, 3, "frame {i}");
        let mut got = vec![0u8; f.len()];
        dma.read(RX_BUFS + u64::from(idx) * 2048, &mut got).unwrap();
        assert_eq!(got, f);
        // Driver: refill the descriptor and hand it back.
        put_u64(&mut dma, d, RX_BUFS + u64::from(idx) * 2048);
        put_u64(&mut dma, d + 8, 0);
        wr(&mut m, rdt(0), idx);
    }
    assert_eq!(m.stats().rx_packets, u64::from(5 * N));
    assert_eq!(m.stats().rx_missed, 0);
    assert_eq!(rd(&mut m, tdh(0)), 0);
}

use crate::dma::RecordingDma as Recording;

#[test]
fn write_backs_publish_the_dd_word_last_as_one_release_store() {
    for legacy in [false, true] {
        let mut m = nic(Box::new(Loopback::default()));
        let mut dma = FakeDma::new(DMA_BASE, 0x80000);
        bring_up(&mut m, &mut dma);
        if legacy {
            let v = rd(&mut m, srrctl(0));
            wr(&mut m, srrctl(0), v & !SRRCTL_DESCTYPE_MASK);
        }
        let f = frame(MAC, 64, 9);
        queue_tx(&mut m, &mut dma, 0, &f);
        let mut rec = Recording::new(dma);
        m.poll(&mut rec);
        // RX: the frame first, then the other fields, then the DD word, once, as a Release store.
        let dd_word = if legacy { RX_RING + 12 } else { RX_RING + 8 };
        let rx = rec.touching(RX_RING, 16);
        // Advanced: DD @8 and the length @12 go in one 64-bit store; legacy: the word @12.
        let last = if legacy { (dd_word, 4, true) } else { (dd_word, 8, true) };
        assert_eq!(rx.last(), Some(&last), "legacy={legacy}: {rx:x?}");
        assert_eq!(rx.iter().filter(|s| s.2).count(), 1, "one publish per descriptor");
        assert!(rx[..rx.len() - 1].iter().all(|(a, n, _)| *a + *n as u64 <= dd_word || *a >= dd_word + 4));
        let buf_store = rec.all().iter().position(|s| s.0 == RX_BUFS).expect("frame written");
        let first_wb = rec.all().iter().position(|s| (RX_RING..RX_RING + 16).contains(&s.0)).unwrap();
        assert!(buf_store < first_wb, "data before the write-back");
        // TX: the DD word is published, nothing else of the descriptor is written.
        assert_eq!(rec.touching(TX_RING, 16), vec![(TX_RING + 12, 4, true)]);
        let (st, len) =
            (get_u32(&mut rec.inner, dd_word), get_u32(&mut rec.inner, RX_RING + if legacy { 8 } else { 12 }));
        assert_eq!((st & 3, len & 0xffff), (3, 64));
    }
}

#[test]
fn queues_enabled_through_the_mapped_page_are_latched_and_a_disable_stops_dma_at_once() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    let page = m.bar_memory(0).unwrap();
    // TX queue 1, written the way a driver does it: stores into the mmapped page, no trapped access.
    let ring1 = DMA_BASE + 0x2000;
    page.write32(tdbal(1) as usize, ring1 as u32);
    page.write32(tdbah(1) as usize, (ring1 >> 32) as u32);
    page.write32(tdlen(1) as usize, N * 16);
    page.write32(txdctl(1) as usize, TXDCTL_ENABLE);
    // Keep the device busy so that only the periodic scan can see the new queue.
    let f = frame(MAC, 64, 1);
    dma.write(TX_BUFS, &f).unwrap();
    put_u64(&mut dma, ring1, TX_BUFS);
    let ctl = 64 | (0x3 << TXD_DTYP_SHIFT) | TXD_CMD_EOP | TXD_CMD_RS | TXD_CMD_DEXT;
    dma.write(ring1 + 8, &ctl.to_le_bytes()).unwrap();
    page.write32(tdt(1) as usize, 1);
    let mut polls = 0;
    while get_u32(&mut dma, ring1 + 12) & TXD_STAT_DD == 0 {
        m.poll(&mut dma);
        polls += 1;
        assert!(polls <= super::rxtx::SCAN_EVERY + 1, "queue 1 never latched");
    }
    assert_eq!(page.read32(tdh(1) as usize), Some(1));
    // A disable in the page stops DMA on the next poll, before any scan.
    page.write32(txdctl(1) as usize, 0);
    dma.write(ring1 + 16, &TX_BUFS.to_le_bytes()).unwrap();
    dma.write(ring1 + 24, &ctl.to_le_bytes()).unwrap();
    dma.write(ring1 + 28, &0u32.to_le_bytes()).unwrap();
    page.write32(tdt(1) as usize, 2);
    m.poll(&mut dma);
    assert_eq!(get_u32(&mut dma, ring1 + 16 + 12) & TXD_STAT_DD, 0, "no DMA on a disabled ring");
    assert_eq!(page.read32(tdh(1) as usize), Some(1));
    // The same for RX queue 0: frames are dropped as filtered, the ring is not touched.
    page.write32(rxdctl(0) as usize, 0);
    let before = m.stats();
    let next = RX_RING + u64::from(page.read32(rdh(0) as usize).unwrap()) * 16;
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 64, 2));
    m.poll(&mut dma);
    assert_eq!(m.stats().rx_packets, before.rx_packets);
    assert_eq!(m.stats().rx_filtered, before.rx_filtered + 1);
    assert_eq!(get_u32(&mut dma, next + 8), 0, "the next RX descriptor is untouched");
}

#[test]
fn a_torn_or_stale_tail_cannot_make_the_device_pass_it() {
    // RDT is read once per batch and again only when the known free descriptors run out.
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    wr(&mut m, rdt(0), 2); // descriptors 0 and 1 free
    for i in 0..4 {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 64, i as u8));
    }
    m.poll(&mut dma);
    assert_eq!(m.stats().rx_packets, 2);
    assert_eq!(m.stats().rx_missed, 2);
    assert_eq!(rd(&mut m, rdh(0)), 2);
    assert_eq!(get_u32(&mut dma, RX_RING + 2 * 16 + 8), 0, "descriptor 2 (the tail) untouched");
}

use crate::model::frame::{alike_on_every_path, Outcome};

/// Mixed traffic over `wire`: what a driver can observe afterwards (stats, counters, faults,
/// rings and buffers).
fn mixed_traffic(wire: Box<dyn Wire>) -> Outcome {
    let mut m = nic(wire);
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    // Poll 1: see `mixed_frames`.
    let frames = crate::model::frame::mixed_frames(MAC, frame);
    for (i, f) in frames.iter().enumerate() {
        queue_tx(&mut m, &mut dma, i as u32, f);
    }
    m.poll(&mut dma);
    // Poll 2: a TX buffer outside the DMA window, then more frames than free descriptors.
    let d = TX_RING + 6 * 16;
    put_u64(&mut dma, d, 0xdead_0000_0000);
    let ctl = 64 | (0x3 << TXD_DTYP_SHIFT) | TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS | TXD_CMD_DEXT;
    dma.write(d + 8, &ctl.to_le_bytes()).unwrap();
    dma.write(d + 12, &(64u32 << 14).to_le_bytes()).unwrap();
    for i in [7, 0, 1] {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 64, 10 + i as u8));
    }
    m.poll(&mut dma);
    // Poll 3: the driver gives descriptors 0..6 back; unicast, then multicast once MPE is on.
    for i in 0..7u64 {
        put_u64(&mut dma, RX_RING + i * 16, RX_BUFS + i * 2048);
        put_u64(&mut dma, RX_RING + i * 16 + 8, 0);
    }
    wr(&mut m, rdt(0), 6);
    queue_tx(&mut m, &mut dma, 2, &frame(MAC, 100, 20));
    let f = rd(&mut m, FCTRL);
    wr(&mut m, FCTRL, f | FCTRL_MPE);
    queue_tx(&mut m, &mut dma, 3, &frame([0x01, 0, 0x5e, 0, 0, 1], 80, 21));
    m.poll(&mut dma);
    let regs = [GPRC, BPRC, MPRC, GPTC, GORCL, GOTCL, TORL, TPR, TPT, MPTC, BPTC, mpc(0), rdh(0), tdh(0)]
        .map(|r| rd(&mut m, r));
    let faults = m.faults().last(100).iter().map(|f| (f.iova, f.len, f.what)).collect();
    let mut mem = vec![0u8; 0x80000];
    dma.read(DMA_BASE, &mut mem).unwrap();
    (m.stats(), regs.to_vec(), faults, mem)
}

#[test]
fn cut_through_on_an_idle_loopback_matches_the_wire_path() {
    let cut = alike_on_every_path("mixed traffic", mixed_traffic);
    // And the traffic did what it says.
    let s = cut.0;
    assert_eq!((s.tx_packets, s.rx_packets, s.rx_filtered, s.rx_missed), (11, 8, 1, 2), "{s:?}");
    let what: Vec<_> = cut.2.iter().map(|f| f.2).collect();
    assert_eq!(what, ["tx buffer read"]);
}

/// Bursts of the common case (unicast frames to the port, one buffer each), broken up by what a
/// burst loop must not take on trust: a runt (TXPADEN off) to the same address as the frame
/// before it, a broadcast, a frame the filter drops, and both rings wrapping. Three polls of
/// seven frames each over `wire`; what a driver can observe afterwards.
fn unicast_bursts(wire: Box<dyn Wire>) -> Outcome {
    let mut m = nic(wire);
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    let v = rd(&mut m, HLREG0);
    wr(&mut m, HLREG0, v & !HLREG0_TXPADEN);
    let foreign = [0x02, 9, 9, 9, 9, 9];
    let polls: [[(_, usize); 7]; 3] = [
        [(MAC, 60), (MAC, 61), (MAC, 12), (MAC, 62), (MAC, 63), ([0xff; 6], 64), (MAC, 65)],
        [(MAC, 66), (MAC, 67), (foreign, 68), (MAC, 69), (MAC, 13), (MAC, 70), (MAC, 71)],
        [(MAC, 72), (MAC, 73), (MAC, 74), (MAC, 75), (MAC, 76), (MAC, 77), (MAC, 78)],
    ];
    let mut idx = 0u32;
    for (p, burst) in polls.iter().enumerate() {
        for &(dst, len) in burst {
            let mut f = frame(dst, len.max(14), p as u8 * 16 + idx as u8);
            f.truncate(len);
            queue_tx(&mut m, &mut dma, idx, &f);
            idx = (idx + 1) % N;
        }
        m.poll(&mut dma);
        if p == polls.len() - 1 {
            break;
        }
        // The driver takes what arrived and gives every descriptor but one back.
        let head = rd(&mut m, rdh(0));
        for i in 0..u64::from(N) {
            if i != u64::from(head) {
                put_u64(&mut dma, RX_RING + i * 16, RX_BUFS + i * 2048);
                put_u64(&mut dma, RX_RING + i * 16 + 8, 0);
            }
        }
        wr(&mut m, rdt(0), (head + N - 1) % N);
    }
    let regs = [GPRC, BPRC, GPTC, GORCL, GOTCL, TORL, TPR, TPT, BPTC, mpc(0), rdh(0), tdh(0)].map(|r| rd(&mut m, r));
    let faults = m.faults().last(100).iter().map(|f| (f.iova, f.len, f.what)).collect();
    let mut mem = vec![0u8; 0x80000];
    dma.read(DMA_BASE, &mut mem).unwrap();
    (m.stats(), regs.to_vec(), faults, mem)
}

#[test]
fn bursts_of_unicast_frames_match_the_wire_path_and_a_runt_to_a_repeated_address_is_dropped() {
    let cut = alike_on_every_path("unicast bursts", unicast_bursts);
    let s = cut.0;
    // 21 sent; the two runts and the foreign frame filtered, the broadcast kept (BAM).
    assert_eq!((s.tx_packets, s.rx_packets, s.rx_filtered, s.rx_missed), (21, 18, 3, 0), "{s:?}");
    assert!(cut.2.is_empty(), "no faults: {:?}", cut.2);
    // The last poll's frames landed in order, byte for byte, after the wraps: descriptor d of
    // the ring holds the frame that was received there.
    let head = cut.1[10];
    for (k, len) in (72..=78).rev().enumerate() {
        let d = (head + N - 1 - k as u32) % N;
        let o = (RX_RING - DMA_BASE) as usize + d as usize * 16;
        let wb = u64::from_le_bytes(cut.3[o + 8..o + 16].try_into().unwrap());
        assert_eq!(wb & 0xffff_ffff, u64::from(RXD_STAT_DD | RXD_STAT_EOP), "descriptor {d}");
        assert_eq!(wb >> 32 & 0xffff, len as u64, "descriptor {d}");
        let b = (RX_BUFS - DMA_BASE) as usize + d as usize * 2048;
        let sent = frame(MAC, len, 2 * 16 + ((14 + len - 72) % N as usize) as u8);
        assert_eq!(&cut.3[b..b + len], &sent[..], "frame of {len} bytes in descriptor {d}");
    }
}

/// A receive ring outside every DMA map (here at the very top of the address space, where the
/// fault address arithmetic must not overflow) is not read, and faults nothing, until a frame
/// needs a descriptor; then one fault, the ring stalls, the model keeps serving.
#[test]
fn an_unmapped_rx_ring_faults_only_when_a_frame_needs_it() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    wr(&mut m, rxdctl(0), 0);
    m.poll(&mut dma);
    wr(&mut m, rdbal(0), 0xffff_ff80);
    wr(&mut m, rdbah(0), 0xffff_ffff);
    wr(&mut m, rxdctl(0), RXDCTL_ENABLE);
    wr(&mut m, rdh(0), N - 1);
    wr(&mut m, rdt(0), N - 2);
    for _ in 0..3 {
        m.poll(&mut dma);
    }
    assert!(m.faults().last(10).is_empty(), "no traffic, no fault: {:?}", m.faults().last(10));
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 64, 1));
    m.poll(&mut dma);
    m.poll(&mut dma);
    let f = m.faults().last(10);
    assert_eq!(f.iter().map(|f| f.what).collect::<Vec<_>>(), ["rx descriptor read"]);
    assert_eq!(f[0].iova, 0xffff_ffff_ffff_ff80u64.wrapping_add(u64::from(N - 1) * 16));
    assert_eq!(m.stats().tx_packets, 1, "transmit goes on");
}

#[test]
fn intx_follows_an_enabled_cause_until_eicr_is_read_and_yields_to_msix() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut m, &mut dma);
    let mut cmd = [0u8; 4];
    m.config_read(0x3c, &mut cmd);
    assert_eq!(cmd[1], 1, "interrupt pin INTA");
    let status_intx = |m: &mut Ixgbe| {
        let mut b = [0u8; 2];
        m.config_read(0x06, &mut b);
        u16::from_le_bytes(b) & (1 << 3) != 0
    };
    // Legacy mode (MSI-X off): an RX queue cause through IVAR, enabled in EIMS.
    wr(&mut m, ivar(0), IVAR_VALID);
    wr(&mut m, EIMS, 1);
    assert!(!m.intx_asserted());
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 64, 0));
    m.poll(&mut dma);
    assert!(m.intx_asserted(), "the completed frame asserts INTx");
    assert_eq!(m.take_irqs(), 0, "no MSI-X message with MSI-X off");
    assert!(status_intx(&mut m), "status: interrupt pending");
    // Interrupt Disable hides the line, not the status.
    m.config_write(0x05, &[0x04]);
    assert!(!m.intx_asserted());
    assert!(status_intx(&mut m));
    m.config_write(0x05, &[0x00]);
    assert!(m.intx_asserted(), "a level: still asserted when allowed again");
    // EICS on a masked cause does not assert it; reading EICR acknowledges (deasserts).
    assert_eq!(rd(&mut m, EICR) & 1, 1);
    assert!(!m.intx_asserted() && !status_intx(&mut m));
    wr(&mut m, EICS, 1 << 4);
    assert!(!m.intx_asserted(), "cause 4 is not enabled");
    wr(&mut m, EIMS, 1 << 4);
    assert!(m.intx_asserted(), "enabling a pending cause asserts it");
    wr(&mut m, EIMC, 1 << 4);
    assert!(!m.intx_asserted(), "masking it deasserts it");
    // With MSI-X on, the function does not use INTx, and EIAC auto-clears again.
    wr(&mut m, EIMS, 1 << 4);
    let cap = msix_cap(&mut m);
    m.config_write(cap + 3, &[0x80]);
    assert!(!m.intx_asserted(), "MSI-X enabled");
}

#[test]
fn a_saved_state_loads_into_another_function_and_traffic_goes_on_from_there() {
    let mut a = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up(&mut a, &mut dma);
    wr(&mut a, eitr(0), 0x0c80);
    wr(&mut a, EIMS, 1 << 4);
    for i in 0..3 {
        queue_tx(&mut a, &mut dma, i, &frame(MAC, 64, i as u8));
        a.poll(&mut dma);
    }
    assert_eq!(rd(&mut a, rdh(0)), 3);
    let state = a.save().expect("the 82599 model migrates");

    let mut b = nic(Box::new(Loopback::default()));
    wr(&mut b, eitr(0), 0x42);
    // Refused streams change nothing.
    assert!(b.load(&state[..state.len() - 3]).unwrap_err().to_string().contains("ends inside"));
    let mut foreign = state.clone();
    foreign[4] ^= 0xff;
    assert!(b.load(&foreign).unwrap_err().to_string().contains("not a"));
    let mut long = state.clone();
    long.push(0);
    assert!(b.load(&long).unwrap_err().to_string().contains("after the end"));
    assert_eq!(rd(&mut b, eitr(0)), 0x42, "untouched by the refused loads");

    b.load(&state).unwrap();
    assert_eq!(rd(&mut b, eitr(0)), 0x0c80);
    assert_eq!(rd(&mut b, EIMS), 1 << 4);
    assert_eq!((rd(&mut b, rdh(0)), rd(&mut b, tdh(0))), (3, 3), "ring heads came along");
    assert_eq!(rd(&mut b, ral(0)), rd(&mut a, ral(0)));
    let (mut ca, mut cb) = ([0u8; 64], [0u8; 64]);
    a.config_read(0, &mut ca);
    b.config_read(0, &mut cb);
    assert_eq!(ca, cb, "config space (bus master on)");
    assert_eq!(b.stats(), a.stats(), "lifetime totals");
    assert_eq!(rd(&mut b, GPRC), 3, "clear-on-read counters came along unread");
    // The next frame goes on where the source stopped: descriptor 3.
    queue_tx(&mut b, &mut dma, 3, &frame(MAC, 64, 9));
    b.poll(&mut dma);
    assert_eq!(rd(&mut b, rdh(0)), 4);
    let mut got = vec![0u8; 64];
    dma.read(RX_BUFS + 3 * 2048, &mut got).unwrap();
    assert_eq!(got, frame(MAC, 64, 9));
}

/// RX queue `q` (1..4) beside queue 0: its own ring and buffers.
fn rx_ring_q(q: u32) -> u64 {
    DMA_BASE + 0x2000 + u64::from(q) * 0x100
}

fn rx_buf_q(q: u32, i: u64) -> u64 {
    if q == 0 {
        RX_BUFS + i * 2048
    } else {
        DMA_BASE + 0x20000 + u64::from(q) * 0x4000 + i * 2048
    }
}

/// Queues 1..4 set up like queue 0; RSS with Microsoft's key, RETA entry n = n % 3, the given
/// hash types and PCSD.
fn bring_up_rss(m: &mut Ixgbe, dma: &mut FakeDma, fields: u32) {
    bring_up(m, dma);
    for q in 1..4u32 {
        let v = rd(m, srrctl(q));
        wr(m, srrctl(q), (v & !SRRCTL_DESCTYPE_MASK) | (1 << SRRCTL_DESCTYPE_SHIFT));
        wr(m, rdbal(q), rx_ring_q(q) as u32);
        wr(m, rdbah(q), (rx_ring_q(q) >> 32) as u32);
        wr(m, rdlen(q), N * 16);
        for i in 0..u64::from(N) {
            put_u64(dma, rx_ring_q(q) + i * 16, rx_buf_q(q, i));
            put_u64(dma, rx_ring_q(q) + i * 16 + 8, 0);
        }
        wr(m, rxdctl(q), RXDCTL_ENABLE);
        wr(m, rdh(q), 0);
        wr(m, rdt(q), N - 1);
    }
    let key = crate::model::rss::tests::MS_KEY;
    for n in 0..RSSRK_REGS {
        let k = 4 * n as usize;
        wr(m, rssrk(n), u32::from_le_bytes([key[k], key[k + 1], key[k + 2], key[k + 3]]));
    }
    for n in 0..RETA_REGS {
        let e = |k: u32| ((4 * n + k) % 3) << (8 * k);
        wr(m, reta(n), e(0) | e(1) | e(2) | e(3));
    }
    wr(m, RXCSUM, RXCSUM_PCSD);
    wr(m, MRQC, MRQC_MRQE_RSS | fields);
}

/// Per queue 0..4, the (write-back dword 0, RSS hash) of each frame it received, in order.
fn received(dma: &mut FakeDma, m: &mut Ixgbe) -> Vec<Vec<(u32, u32)>> {
    (0..4u32)
        .map(|q| {
            let ring = if q == 0 { RX_RING } else { rx_ring_q(q) };
            (0..rd(m, rdh(q)))
                .map(|i| (get_u32(dma, ring + 16 * u64::from(i)), get_u32(dma, ring + 16 * u64::from(i) + 4)))
                .collect()
        })
        .collect()
}

fn rss_spreads_flows_by_the_datasheet_hash(wire: Box<dyn Wire>) {
    use crate::model::rss::tests::{ipv4_frame, V4};
    let mut m = nic(wire);
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up_rss(&mut m, &mut dma, MRQC_RSS_TCPIPV4 | MRQC_RSS_IPV4);
    let mut want = vec![Vec::new(); 4];
    for (i, (dst, dport, src, sport, ip_only, with_ports)) in V4.iter().enumerate() {
        // TCP hashes with the ports; UDP (its type not enabled) falls back to the IPv4 hash.
        let tcp = i % 2 == 0;
        let f = ipv4_frame(src.parse().unwrap(), dst.parse().unwrap(), if tcp { 6 } else { 17 }, *sport, *dport, i % 3);
        let (ty, hash) = if tcp { (RSS_TYPE_TCPIPV4, *with_ports) } else { (RSS_TYPE_IPV4, *ip_only) };
        want[(hash & 0x7f) as usize % 3].push((ty, hash));
        queue_tx(&mut m, &mut dma, i as u32, &f);
        m.poll(&mut dma);
    }
    // Not IP: hash 0, type 0, RETA entry 0.
    queue_tx(&mut m, &mut dma, 5, &frame(MAC, 64, 0));
    m.poll(&mut dma);
    want[0].push((0, 0));
    let got = received(&mut dma, &mut m);
    assert_eq!(got, want, "per queue: (type, hash)");
    assert_eq!(got.iter().filter(|q| !q.is_empty()).count(), 3, "the five flows reach three queues");
    assert_eq!(m.stats().rx_packets, 6);
    // Every frame in its queue's own buffers, byte-identical.
    let (q, hash) = (0..4).find(|q| !want[*q].is_empty() && want[*q][0].1 != 0).map(|q| (q, want[q][0].1)).unwrap();
    let mut b = [0u8; 4];
    dma.read(rx_buf_q(q as u32, 0) + 26, &mut b).unwrap();
    assert_ne!(hash, 0);
    assert_ne!(b, [0; 4], "queue {q}'s first buffer holds the frame (its source address)");
}

/// Bursts of UDP flows spread by RSS over three queues, broken up by a VLAN-tagged frame, a
/// frame to another address and a queue that runs out of descriptors (the driver gives it two
/// and none back before the third poll): three polls of seven frames over `wire`; what a driver
/// can observe afterwards.
fn rss_bursts(wire: Box<dyn Wire>) -> Outcome {
    use crate::model::rss::tests::ipv4_frame;
    let mut m = nic(wire);
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up_rss(&mut m, &mut dma, MRQC_RSS_UDPIPV4 | MRQC_RSS_TCPIPV4 | MRQC_RSS_IPV4);
    let mut idx = 0u32;
    for p in 0..3u16 {
        for j in 0..7u16 {
            let (src, dst) = ([10, 0, p as u8, j as u8].into(), [10, 1, 0, 1].into());
            let mut f = ipv4_frame(src, dst, 17, 1000 + 7 * p + j, 53, usize::from((p, j) == (0, 3)));
            if (p, j) == (1, 2) {
                f[5] = 0x99;
            }
            queue_tx(&mut m, &mut dma, idx, &f);
            idx = (idx + 1) % N;
        }
        m.poll(&mut dma);
        if p == 1 {
            continue;
        }
        // The driver takes what arrived on each queue and gives every descriptor but one back,
        // but only two to queue 1.
        for q in 0..4u32 {
            let (ring, head) = (if q == 0 { RX_RING } else { rx_ring_q(q) }, rd(&mut m, rdh(q)));
            for i in 0..u64::from(N) {
                let buf = if q == 0 { RX_BUFS + i * 2048 } else { rx_buf_q(q, i) };
                put_u64(&mut dma, ring + i * 16, buf);
                put_u64(&mut dma, ring + i * 16 + 8, 0);
            }
            wr(&mut m, rdt(q), (head + if q == 1 { 2 } else { N - 1 }) % N);
        }
    }
    let regs =
        [GPRC, GPTC, GORCL, GOTCL, TPR, TPT, mpc(0), rdh(0), rdh(1), rdh(2), rdh(3), tdh(0)].map(|r| rd(&mut m, r));
    let faults = m.faults().last(100).iter().map(|f| (f.iova, f.len, f.what)).collect();
    let mut mem = vec![0u8; 0x80000];
    dma.read(DMA_BASE, &mut mem).unwrap();
    (m.stats(), regs.to_vec(), faults, mem)
}

#[test]
fn rss_bursts_match_the_wire_path_and_a_queue_out_of_descriptors_misses_alone() {
    let cut = alike_on_every_path("rss bursts", rss_bursts);
    let s = cut.0;
    assert_eq!((s.tx_packets, s.rx_filtered), (21, 1), "{s:?}");
    assert!(s.rx_missed > 0, "a queue ran out in the third poll: {s:?}");
    assert_eq!(s.rx_packets + s.rx_filtered + s.rx_missed, 21, "{s:?}");
    assert!(cut.2.is_empty(), "no faults: {:?}", cut.2);
    let heads = &cut.1[7..11];
    assert_eq!(heads[3], 0, "RETA spreads over queues 0..3 only");
    assert!(heads[..3].iter().all(|&h| h > 0), "three queues took frames: {heads:?}");
}

#[test]
fn rss_spreads_flows_by_the_datasheet_hash_on_the_wire_path() {
    rss_spreads_flows_by_the_datasheet_hash(Box::new(QueuedLoopback::default()));
}

#[test]
fn rss_spreads_flows_by_the_datasheet_hash_on_the_cut_through_path() {
    rss_spreads_flows_by_the_datasheet_hash(Box::new(Loopback::default()));
}

#[test]
fn ipv6_ex_types_hash_the_home_and_routed_addresses_and_plain_types_skip_extension_headers() {
    use crate::model::rss::tests::{home_address_opt, hop_by_hop, ipv6_ext_frame, routing_type2, V6};
    let (hs, hd) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
    for ex in [false, true] {
        let mut m = nic(Box::new(Loopback::default()));
        let mut dma = FakeDma::new(DMA_BASE, 0x80000);
        let plain = MRQC_RSS_TCPIPV6 | MRQC_RSS_UDPIPV6 | MRQC_RSS_IPV6;
        bring_up_rss(&mut m, &mut dma, if ex { plain | MRQC_RSS_IPV6_EX_ALL } else { plain });
        let mut want = vec![Vec::new(); 4];
        for (i, (dst, dport, src, sport, ip_only, with_ports)) in V6.iter().enumerate() {
            let (s, d) = (src.parse().unwrap(), dst.parse().unwrap());
            let nh = [6u8, 17, 58][i % 3]; // TCP, UDP, ICMPv6
                                           // With EX on, the header carries other addresses: the vector's come from the
                                           // options. With EX off, the header carries the vector's, behind a hop-by-hop header.
            let f = if ex {
                let ext = [hop_by_hop(), routing_type2(d, 2), home_address_opt(s)];
                ipv6_ext_frame(hs, hd, &ext, nh, *sport, *dport)
            } else {
                ipv6_ext_frame(s, d, &[hop_by_hop()], nh, *sport, *dport)
            };
            let (ty, hash) = match (nh, ex) {
                (6, true) => (RSS_TYPE_TCPIPV6_EX, *with_ports),
                (17, true) => (RSS_TYPE_UDPIPV6_EX, *with_ports),
                (_, true) => (RSS_TYPE_IPV6_EX, *ip_only),
                (6, false) => (RSS_TYPE_TCPIPV6, *with_ports),
                (17, false) => (RSS_TYPE_UDPIPV6, *with_ports),
                _ => (RSS_TYPE_IPV6, *ip_only),
            };
            want[(hash & 0x7f) as usize % 3].push((ty, hash));
            queue_tx(&mut m, &mut dma, i as u32, &f);
            m.poll(&mut dma);
        }
        assert_eq!(received(&mut dma, &mut m), want, "EX {ex}: per queue (type, hash)");
    }
}

#[test]
fn without_pcsd_the_hash_stays_out_of_the_write_back_and_mrqe_0_keeps_queue_0() {
    use crate::model::rss::tests::{ipv4_frame, V4};
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = FakeDma::new(DMA_BASE, 0x80000);
    bring_up_rss(&mut m, &mut dma, MRQC_RSS_TCPIPV4);
    wr(&mut m, RXCSUM, 0);
    let (dst, dport, src, sport, _, with_ports) = V4[0];
    let f = ipv4_frame(src.parse().unwrap(), dst.parse().unwrap(), 6, sport, dport, 0);
    queue_tx(&mut m, &mut dma, 0, &f);
    m.poll(&mut dma);
    let q = (with_ports & 0x7f) as usize % 3;
    assert_eq!(received(&mut dma, &mut m)[q], vec![(RSS_TYPE_TCPIPV4, 0)], "type, no hash");
    // RSS off again: everything to queue 0, nothing in dword 0/1.
    wr(&mut m, MRQC, MRQC_RSS_TCPIPV4);
    queue_tx(&mut m, &mut dma, 1, &f);
    m.poll(&mut dma);
    let got = received(&mut dma, &mut m);
    assert_eq!(got[0].last(), Some(&(0, 0)));
    assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 2);
}

/// Context descriptors (offloads the model does not carry out, no write-back even with RS)
/// before every frame are skipped alike on the cut-through path, in the burst loop over the
/// wire's ring and frame by frame: the same frames delivered, counters, faults and memory.
#[test]
fn context_descriptors_before_each_frame_are_skipped_alike_on_every_path() {
    let run = |wire: Box<dyn Wire>| -> Outcome {
        let mut m = nic(wire);
        let mut dma = FakeDma::new(DMA_BASE, 0x80000);
        bring_up(&mut m, &mut dma);
        for k in 0..3u32 {
            let d = TX_RING + u64::from(2 * k) * 16;
            put_u64(&mut dma, d, 0);
            let ctl = (TXD_DTYP_CTXT << TXD_DTYP_SHIFT) | TXD_CMD_DEXT | TXD_CMD_RS;
            put_u64(&mut dma, d + 8, u64::from(ctl));
            queue_tx(&mut m, &mut dma, 2 * k + 1, &frame(MAC, 64 + k as usize, k as u8));
        }
        m.poll(&mut dma);
        m.poll(&mut dma);
        let regs = [GPRC, GPTC, GOTCL, GORCL, rdh(0), tdh(0)].map(|r| rd(&mut m, r));
        let faults = m.faults().last(100).iter().map(|f| (f.iova, f.len, f.what)).collect();
        let mut mem = vec![0u8; 0x80000];
        dma.read(DMA_BASE, &mut mem).unwrap();
        (m.stats(), regs.to_vec(), faults, mem)
    };
    let cut = run(Box::<Loopback>::default());
    assert_eq!((cut.0.tx_packets, cut.0.rx_packets), (3, 3), "{:?}", cut.0);
    assert_eq!(cut.1[5], 6, "TDH past the three context descriptors and the three frames");
    for k in 0..3u64 {
        let ctx_status =
            u32::from_le_bytes(cut.3[(TX_RING - DMA_BASE + 2 * k * 16 + 12) as usize..][..4].try_into().unwrap());
        assert_eq!(ctx_status & TXD_STAT_DD, 0, "no write-back of context descriptor {}", 2 * k);
    }
    for (name, wire) in [
        ("wire ring", Box::new(QueuedLoopback::default()) as Box<dyn Wire>),
        ("frame by frame", Box::new(FrameByFrame(QueuedLoopback::default()))),
    ] {
        let other = run(wire);
        assert_eq!(cut.0, other.0, "stats, {name}");
        assert_eq!(cut.1, other.1, "counters, {name}");
        assert_eq!(cut.2, other.2, "faults, {name}");
        assert!(cut.3 == other.3, "rings and buffers, {name}");
    }
}
