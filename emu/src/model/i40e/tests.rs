//! Model unit tests: registers, admin queue, HMC and rings against a `FakeDma`, no sockets.

use super::*;
use crate::dma::FakeDma;
use crate::model::snapshot::SnapshotError;
use crate::model::DeviceModel;
use crate::wire::{FrameByFrame, Loopback, NullWire, QueuedLoopback};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x40, 0x01];
const BASE: u64 = 0x1_0000_0000;
const ATQ: u64 = BASE;
const ARQ: u64 = BASE + 0x1000;
const AQ_BUF: u64 = BASE + 0x2000;
const ARQ_BUFS: u64 = BASE + 0x4000;
const TX_RING: u64 = BASE + 0x1_0000;
const RX_RING: u64 = BASE + 0x1_1000;
const HEAD_WB: u64 = BASE + 0x1_2000;
const TX_BUFS: u64 = BASE + 0x2_0000;
const RX_BUFS: u64 = BASE + 0x8_0000;
const HMC_MEM: u64 = BASE + 0x20_0000;
const AQ_LEN: u32 = 32;
const ARQ_LEN: u32 = 8;
const N: u32 = 32;
/// RX contexts start 8 KiB into the FPM space (64 TX contexts of 128 bytes before them).
const RX_BASE_512: u32 = 16;

fn nic(wire: Box<dyn Wire>) -> I40e {
    I40e::new(ModelConfig { bdf: "0000:03:00.0".into(), function: 0, mac: MAC, wire }).unwrap()
}

fn dma() -> FakeDma {
    FakeDma::new(BASE, 0x40_0000)
}

fn rd(m: &mut I40e, off: u32) -> u32 {
    let mut b = [0u8; 4];
    m.bar_read(0, u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn wr(m: &mut I40e, off: u32, v: u32) {
    m.bar_write(0, u64::from(off), &v.to_le_bytes());
}

fn get_u64(dma: &mut FakeDma, iova: u64) -> u64 {
    let mut b = [0u8; 8];
    dma.read(iova, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn put_u64(dma: &mut FakeDma, iova: u64, v: u64) {
    dma.write(iova, &v.to_le_bytes()).unwrap();
}

fn set_field(buf: &mut [u8], (lsb, width): (usize, usize), v: u64) {
    for i in 0..width {
        let bit = lsb + i;
        if v >> i & 1 != 0 {
            buf[bit / 8] |= 1 << (bit % 8);
        }
    }
}

/// Programs both admin queues; ARQ descriptors are pre-posted with 512-byte buffers.
fn aq_init(m: &mut I40e, dma: &mut FakeDma) {
    m.config_write(4, &0x0006u16.to_le_bytes());
    wr(m, PF_ATQH, 0);
    wr(m, PF_ATQT, 0);
    wr(m, PF_ATQBAL, ATQ as u32);
    wr(m, PF_ATQBAH, (ATQ >> 32) as u32);
    wr(m, PF_ATQLEN, AQ_LEN | AQLEN_ENABLE);
    for i in 0..u64::from(ARQ_LEN) {
        let mut d = [0u8; 32];
        d[0..2].copy_from_slice(&AQ_FLAG_BUF.to_le_bytes());
        d[4..6].copy_from_slice(&512u16.to_le_bytes());
        let buf = ARQ_BUFS + i * 512;
        d[24..28].copy_from_slice(&((buf >> 32) as u32).to_le_bytes());
        d[28..32].copy_from_slice(&(buf as u32).to_le_bytes());
        dma.write(ARQ + i * 32, &d).unwrap();
    }
    wr(m, PF_ARQH, 0);
    wr(m, PF_ARQBAL, ARQ as u32);
    wr(m, PF_ARQBAH, (ARQ >> 32) as u32);
    wr(m, PF_ARQLEN, ARQ_LEN | AQLEN_ENABLE);
    wr(m, PF_ARQT, ARQ_LEN - 1);
}

/// A completed admin command.
struct Done {
    flags: u16,
    retval: u16,
    datalen: u16,
    params: [u8; 16],
    buf: Vec<u8>,
}

impl Done {
    fn p16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.params[off], self.params[off + 1]])
    }
}

/// Sends one command: `input` goes in an RD buffer; else an output buffer of `out_len` bytes.
fn aq(m: &mut I40e, dma: &mut FakeDma, opcode: u16, params: [u8; 16], input: Option<&[u8]>, out_len: usize) -> Done {
    let idx = rd(m, PF_ATQT);
    let addr = ATQ + u64::from(idx) * 32;
    let mut d = [0u8; 32];
    let mut flags = AQ_FLAG_SI;
    let len = input.map_or(out_len, |b| b.len());
    d[16..32].copy_from_slice(&params);
    if len > 0 {
        flags |= AQ_FLAG_BUF | if len > 512 { AQ_FLAG_LB } else { 0 };
        dma.write(AQ_BUF, &vec![0u8; 4096]).unwrap();
        if let Some(b) = input {
            flags |= AQ_FLAG_RD;
            dma.write(AQ_BUF, b).unwrap();
        }
        d[24..28].copy_from_slice(&((AQ_BUF >> 32) as u32).to_le_bytes());
        d[28..32].copy_from_slice(&(AQ_BUF as u32).to_le_bytes());
    }
    d[0..2].copy_from_slice(&flags.to_le_bytes());
    d[2..4].copy_from_slice(&opcode.to_le_bytes());
    d[4..6].copy_from_slice(&(len as u16).to_le_bytes());
    dma.write(addr, &d).unwrap();
    wr(m, PF_ATQT, (idx + 1) % AQ_LEN);
    m.poll(dma);
    assert_eq!(rd(m, PF_ATQH), (idx + 1) % AQ_LEN, "ATQH advanced");
    let mut w = [0u8; 32];
    dma.read(addr, &mut w).unwrap();
    let mut buf = vec![0u8; len];
    dma.read(AQ_BUF, &mut buf).unwrap();
    let mut params = [0u8; 16];
    params.copy_from_slice(&w[16..32]);
    Done {
        flags: u16::from_le_bytes([w[0], w[1]]),
        retval: u16::from_le_bytes([w[6], w[7]]),
        datalen: u16::from_le_bytes([w[4], w[5]]),
        params,
        buf,
    }
}

fn ok(d: &Done) {
    assert_eq!(d.flags & (AQ_FLAG_DD | AQ_FLAG_CMP | AQ_FLAG_ERR), AQ_FLAG_DD | AQ_FLAG_CMP, "rc {}", d.retval);
    assert_eq!(d.retval, AQ_RC_OK);
}

fn failed(d: &Done, rc: u16) {
    assert_eq!(d.flags & (AQ_FLAG_DD | AQ_FLAG_CMP | AQ_FLAG_ERR), AQ_FLAG_DD | AQ_FLAG_CMP | AQ_FLAG_ERR);
    assert_eq!(d.retval, rc);
}

fn params(pairs: &[(usize, u16)]) -> [u8; 16] {
    let mut p = [0u8; 16];
    for (off, v) in pairs {
        p[*off..*off + 2].copy_from_slice(&v.to_le_bytes());
    }
    p
}

/// HMC: one direct segment, LAN TX objects at FPM 0, RX at 8 KiB.
fn hmc_init(m: &mut I40e) {
    wr(m, glhmc_lantxbase(0), 0);
    wr(m, glhmc_lantxcnt(0), PF_QUEUES);
    wr(m, glhmc_lanrxbase(0), RX_BASE_512);
    wr(m, glhmc_lanrxcnt(0), PF_QUEUES);
    wr(m, PFHMC_SDDATAHIGH, (HMC_MEM >> 32) as u32);
    wr(m, PFHMC_SDDATALOW, HMC_MEM as u32 | PFHMC_SDDATALOW_VALID | PFHMC_SDDATALOW_TYPE_DIRECT | (512 << 2));
    wr(m, PFHMC_SDCMD, PFHMC_SDCMD_WR);
}

fn write_tx_ctx(dma: &mut FakeDma, q: u32, head_wb: bool) {
    let mut c = [0u8; TX_CTX_LEN];
    set_field(&mut c, TXC_NEW_CONTEXT, 1);
    set_field(&mut c, TXC_BASE, TX_RING / 128);
    set_field(&mut c, TXC_QLEN, u64::from(N));
    if head_wb {
        set_field(&mut c, TXC_HEAD_WB_ENA, 1);
        set_field(&mut c, TXC_HEAD_WB_ADDR, HEAD_WB);
    }
    dma.write(HMC_MEM + u64::from(q) * 128, &c).unwrap();
}

fn write_rx_ctx(dma: &mut FakeDma, q: u32, dsize32: bool, dbuff: u64) {
    write_rx_ctx_at(dma, q, RX_RING, N, dsize32, dbuff);
}

/// An RX context for a ring of `qlen` descriptors at `base`.
fn write_rx_ctx_at(dma: &mut FakeDma, q: u32, base: u64, qlen: u32, dsize32: bool, dbuff: u64) {
    let mut c = [0u8; RX_CTX_LEN];
    set_field(&mut c, RXC_BASE, base / 128);
    set_field(&mut c, RXC_QLEN, u64::from(qlen));
    set_field(&mut c, RXC_DBUFF, dbuff / 128);
    set_field(&mut c, RXC_DSIZE, u64::from(dsize32));
    set_field(&mut c, RXC_CRCSTRIP, 1);
    set_field(&mut c, RXC_RXMAX, 9728);
    dma.write(HMC_MEM + u64::from(RX_BASE_512) * 512 + u64::from(q) * 32, &c).unwrap();
}

fn rx_desc_len(dsize32: bool) -> u64 {
    if dsize32 {
        32
    } else {
        16
    }
}

/// Full bring-up of queue pair 0: admin queue, promiscuous broadcast, HMC, contexts, QENA handshake.
fn bring_up(m: &mut I40e, dma: &mut FakeDma, dsize32: bool, head_wb: bool) {
    aq_init(m, dma);
    hmc_init(m);
    write_tx_ctx(dma, 0, head_wb);
    write_rx_ctx(dma, 0, dsize32, 2048);
    let dl = rx_desc_len(dsize32);
    for i in 0..u64::from(N) {
        put_u64(dma, RX_RING + i * dl, RX_BUFS + i * 2048);
        put_u64(dma, RX_RING + i * dl + 8, 0);
    }
    wr(m, qtx_ctl(0), 2);
    wr(m, qrx_tail(0), N - 1);
    wr(m, qrx_ena(0), QENA_REQ);
    wr(m, qtx_ena(0), QENA_REQ);
    assert_eq!(rd(m, qrx_ena(0)) & QENA_STAT, 0, "status follows the device, not the write");
    m.poll(dma);
    assert_eq!(rd(m, qrx_ena(0)), QENA_REQ | QENA_STAT);
    assert_eq!(rd(m, qtx_ena(0)), QENA_REQ | QENA_STAT);
}

fn frame(dst: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(fill)).collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// Queues one frame on TX descriptor `idx` with EOP|RS and rings QTX_TAIL.
fn queue_tx(m: &mut I40e, dma: &mut FakeDma, idx: u32, data: &[u8]) {
    let buf = TX_BUFS + u64::from(idx) * 0x4000;
    dma.write(buf, data).unwrap();
    let d = TX_RING + u64::from(idx) * 16;
    put_u64(dma, d, buf);
    let cmd = (TXD_CMD_EOP | TXD_CMD_RS | 0x4) << TXD_CMD_SHIFT;
    put_u64(dma, d + 8, TXD_DTYPE_DATA | cmd | ((data.len() as u64) << TXD_BSZ_SHIFT));
    wr(m, qtx_tail(0), (idx + 1) % N);
}

/// Reads RX descriptor `idx`'s write-back: (DD, EOF, length).
fn rx_wb(dma: &mut FakeDma, idx: u32, dsize32: bool) -> (bool, bool, usize) {
    let qw1 = get_u64(dma, RX_RING + u64::from(idx) * rx_desc_len(dsize32) + 8);
    (qw1 & RXD_STATUS_DD != 0, qw1 & RXD_STATUS_EOF != 0, ((qw1 >> RXD_LEN_PBUF_SHIFT) & RXD_LEN_PBUF_MASK) as usize)
}

#[test]
fn pf_reset_self_clears_and_firmware_ready_bits_read_as_a_driver_expects() {
    let mut m = nic(Box::new(NullWire::default()));
    wr(&mut m, PFINT_ICR0_ENA, 0x4000_0000);
    wr(&mut m, PFGEN_CTRL, PFGEN_CTRL_PFSWR);
    assert_eq!(rd(&mut m, PFGEN_CTRL) & PFGEN_CTRL_PFSWR, 0, "PFSWR self-clears");
    assert_eq!(rd(&mut m, PFINT_ICR0_ENA), 0, "PF reset clears registers");
    assert_eq!(rd(&mut m, GLGEN_RSTAT) & 0x3, 0, "DEVSTATE idle");
    let uld = GLNVM_ULD_CONF_CORE_DONE | GLNVM_ULD_CONF_GLOBAL_DONE;
    assert_eq!(rd(&mut m, GLNVM_ULD) & uld, uld);
    assert_ne!(rd(&mut m, GLNVM_FLA) & GLNVM_FLA_LOCKED, 0);
    assert_eq!(rd(&mut m, GL_FWSTS) & 0x00ff_0000, 0, "FWS1B: not in recovery mode");
    assert_eq!(rd(&mut m, PFGEN_PORTNUM), 0);
    assert_eq!(rd(&mut m, PF_FUNC_RID), 3 << 8);
    assert_eq!(rd(&mut m, PFLAN_QALLOC), 0x8000_0000 | (63 << 16));
    assert_eq!((rd(&mut m, GLPCI_CNF2) >> 2) & 0x7ff, 64);
    assert_eq!(rd(&mut m, GLHMC_LANTXOBJSZ), 7);
    assert_eq!(rd(&mut m, GLHMC_LANRXOBJSZ), 5);
    assert_eq!(rd(&mut m, GLHMC_LANQMAX), 1536);
}

#[test]
fn shadow_ram_words_read_through_srctl_and_srdata() {
    let mut m = nic(Box::new(NullWire::default()));
    wr(&mut m, GLNVM_SRCTL, GLNVM_SRCTL_START | (SR_NVM_DEV_STARTER_VERSION << GLNVM_SRCTL_ADDR_SHIFT));
    assert_ne!(rd(&mut m, GLNVM_SRCTL) & GLNVM_SRCTL_DONE, 0);
    assert_eq!(rd(&mut m, GLNVM_SRDATA) >> 16, 0x0601);
    wr(&mut m, GLNVM_SRCTL, GLNVM_SRCTL_START | (SR_NVM_EETRACK_HI << GLNVM_SRCTL_ADDR_SHIFT));
    assert_eq!(rd(&mut m, GLNVM_SRDATA) >> 16, 0x8000);
}

#[test]
fn get_version_completes_with_dd_cmp_and_api_1_7() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    let d = aq(&mut m, &mut dma, AQC_GET_VERSION, [0; 16], None, 0);
    ok(&d);
    assert_eq!((d.p16(12), d.p16(14)), (1, 7));
    assert_eq!(d.p16(8), 6);
}

#[test]
fn every_bring_up_command_succeeds() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    let v = AQC_SET_VSI_PROMISC;
    type Case = (u16, [u8; 16], Option<Vec<u8>>, usize);
    let cases: Vec<Case> = vec![
        (AQC_DRIVER_VERSION, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Some(b"lab\0".to_vec()), 0),
        (AQC_QUEUE_SHUTDOWN, [0; 16], None, 0),
        (AQC_REQUEST_RESOURCE, params(&[(0, 1), (2, 1)]), None, 0),
        (AQC_RELEASE_RESOURCE, params(&[(0, 1)]), None, 0),
        (AQC_CLEAR_PXE_MODE, [0; 16], None, 0),
        (AQC_SET_SWITCH_CONFIG, [0; 16], None, 0),
        (AQC_GET_PHY_ABILITIES, [0; 16], None, PHY_ABILITIES_LEN),
        (AQC_SET_PHY_CONFIG, [0, 0, 0, 0, 0, PHY_ENABLE_LINK, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, 0),
        (AQC_SET_PHY_INT_MASK, params(&[(8, !EVENT_LINK_UPDOWN)]), None, 0),
        (AQC_SET_MAC_CONFIG, params(&[(0, 1522)]), None, 0),
        (AQC_SET_LB_MODES, params(&[(0, 0)]), None, 0),
        (v, params(&[(0, PROMISC_BROADCAST), (2, PROMISC_BROADCAST), (4, SEID_MAIN_VSI)]), None, 0),
        (AQC_CONFIGURE_VSI_TC_BW, params(&[(0, SEID_MAIN_VSI)]), Some(vec![1; 32]), 0),
        (AQC_QUERY_VSI_BW_CONFIG, params(&[(0, SEID_MAIN_VSI)]), None, QUERY_VSI_BW_LEN),
        (AQC_QUERY_VSI_ETS_SLA_CONFIG, params(&[(0, SEID_MAIN_VSI)]), None, QUERY_VSI_ETS_SLA_LEN),
        (AQC_ADD_CONTROL_PACKET_FILTER, [0; 16], None, 0),
        (AQC_LLDP_STOP, [0; 16], None, 0),
    ];
    for (op, p, input, out) in cases {
        let d = aq(&mut m, &mut dma, op, p, input.as_deref(), out);
        assert_eq!(d.retval, AQ_RC_OK, "opcode {op:#06x}");
        ok(&d);
    }
    assert_eq!(rd(&mut m, GLLAN_RCTL_0) & GLLAN_RCTL_0_PXE_MODE, 0, "clear_pxe_mode clears PXE_MODE");
    assert_eq!(m.fw.max_frame, 1522);
}

#[test]
fn bad_lengths_answer_einval_and_unknown_opcodes_enosys() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    failed(&aq(&mut m, &mut dma, AQC_MAC_ADDRESS_READ, [0; 16], None, 8), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, AQC_MAC_ADDRESS_READ, [0; 16], None, 0), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, AQC_GET_VSI_PARAMS, params(&[(0, SEID_MAIN_VSI)]), None, 64), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, AQC_GET_PHY_ABILITIES, [0; 16], None, 16), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, AQC_ADD_MACVLAN, params(&[(0, 2)]), Some(&[0u8; 16]), 0), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, AQC_SET_MAC_CONFIG, params(&[(0, 20_000)]), None, 0), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, AQC_SET_LB_MODES, params(&[(0, 0x80)]), None, 0), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, 0x0fff, [0; 16], None, 0), AQ_RC_ENOSYS);
    failed(&aq(&mut m, &mut dma, 0x0900, [0; 16], None, 0), AQ_RC_ENOSYS);
    failed(&aq(&mut m, &mut dma, AQC_LLDP_GET_MIB, [0; 16], None, 512), AQ_RC_EPERM);
    failed(&aq(&mut m, &mut dma, AQC_GET_CEE_DCB_CFG, [0; 16], None, 64), AQ_RC_EPERM);
    failed(&aq(&mut m, &mut dma, AQC_GET_VSI_PARAMS, params(&[(0, 7)]), None, 128), AQ_RC_ENOENT);
    // A buffer over 512 bytes without LB is malformed.
    let idx = rd(&mut m, PF_ATQT);
    let mut d = [0u8; 32];
    d[0..2].copy_from_slice(&AQ_FLAG_BUF.to_le_bytes());
    d[2..4].copy_from_slice(&AQC_LIST_FUNC_CAPS.to_le_bytes());
    d[4..6].copy_from_slice(&1024u16.to_le_bytes());
    d[28..32].copy_from_slice(&(AQ_BUF as u32).to_le_bytes());
    d[24..28].copy_from_slice(&1u32.to_le_bytes());
    dma.write(ATQ + u64::from(idx) * 32, &d).unwrap();
    wr(&mut m, PF_ATQT, idx + 1);
    m.poll(&mut dma);
    dma.read(ATQ + u64::from(idx) * 32, &mut d).unwrap();
    assert_eq!(u16::from_le_bytes([d[6], d[7]]), AQ_RC_EINVAL);
    assert_eq!(m.faults().total(), 0, "bad commands are answered, not faults");
}

#[test]
fn buffer_outside_dma_maps_answers_bad_addr_and_is_recorded() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    let idx = rd(&mut m, PF_ATQT);
    let mut d = [0u8; 32];
    d[0..2].copy_from_slice(&AQ_FLAG_BUF.to_le_bytes());
    d[2..4].copy_from_slice(&AQC_MAC_ADDRESS_READ.to_le_bytes());
    d[4..6].copy_from_slice(&24u16.to_le_bytes());
    d[24..28].copy_from_slice(&0xdeadu32.to_le_bytes());
    dma.write(ATQ + u64::from(idx) * 32, &d).unwrap();
    wr(&mut m, PF_ATQT, idx + 1);
    m.poll(&mut dma);
    dma.read(ATQ + u64::from(idx) * 32, &mut d).unwrap();
    assert_eq!(u16::from_le_bytes([d[6], d[7]]), AQ_RC_BAD_ADDR);
    assert!(m.faults().has("aq indirect buffer write"));
    // A ring outside every map stalls the queue with one fault, not a crash.
    wr(&mut m, PF_ATQBAL, 0x1000);
    wr(&mut m, PF_ATQBAH, 0);
    wr(&mut m, PF_ATQH, 0);
    wr(&mut m, PF_ATQT, 1);
    m.poll(&mut dma);
    m.poll(&mut dma);
    assert!(m.faults().has("atq descriptor read"));
    assert_eq!(rd(&mut m, PF_ATQH), 0);
}

#[test]
fn list_capabilities_reports_rss_512_and_queues_and_asks_for_room() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    let small = aq(&mut m, &mut dma, AQC_LIST_FUNC_CAPS, [0; 16], None, 64);
    failed(&small, AQ_RC_ENOMEM);
    let need = usize::from(small.datalen);
    assert_eq!(need % 32, 0);
    let d = aq(&mut m, &mut dma, AQC_LIST_FUNC_CAPS, [0; 16], None, need);
    ok(&d);
    let count = u32::from_le_bytes([d.params[4], d.params[5], d.params[6], d.params[7]]) as usize;
    assert_eq!(count * 32, need);
    let cap = |id: u16| {
        (0..count).find_map(|i| {
            let e = &d.buf[i * 32..(i + 1) * 32];
            (u16::from_le_bytes([e[0], e[1]]) == id).then(|| u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
        })
    };
    assert_eq!(cap(CAP_ID_RSS), Some(512));
    assert_eq!(cap(CAP_ID_RXQ), Some(64));
    assert_eq!(cap(CAP_ID_TXQ), Some(64));
    assert_eq!(cap(CAP_ID_MSIX), Some(64));
    assert!(cap(CAP_ID_VSI).is_some());
}

#[test]
fn mac_read_switch_config_and_vsi_parameters_round_trip() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    let d = aq(&mut m, &mut dma, AQC_MAC_ADDRESS_READ, [0; 16], None, 24);
    ok(&d);
    assert_eq!(&d.buf[0..6], &MAC);
    assert_ne!(d.p16(0) & LAN_ADDR_VALID, 0);

    let d = aq(&mut m, &mut dma, AQC_GET_SWITCH_CONFIG, [0; 16], None, 512);
    ok(&d);
    let n = u16::from_le_bytes([d.buf[0], d.buf[1]]) as usize;
    let vsi = (0..n)
        .map(|i| &d.buf[16 + i * 16..32 + i * 16])
        .find(|e| e[0] == SW_ELEM_TYPE_VSI)
        .map(|e| u16::from_le_bytes([e[2], e[3]]));
    assert_eq!(vsi, Some(SEID_MAIN_VSI));

    let mut props = [0u8; 128];
    props[0..2].copy_from_slice(&VSI_PROP_QUEUE_MAP_VALID.to_le_bytes());
    props[VSI_OFF_QUEUE_MAPPING..VSI_OFF_QUEUE_MAPPING + 2].copy_from_slice(&4u16.to_le_bytes());
    props[VSI_OFF_TC_MAPPING..VSI_OFF_TC_MAPPING + 2].copy_from_slice(&(2u16 << 9).to_le_bytes());
    props[10] = 0x55; // VLAN section, not flagged valid: ignored
    ok(&aq(&mut m, &mut dma, AQC_UPDATE_VSI_PARAMS, params(&[(0, SEID_MAIN_VSI)]), Some(&props), 0));
    let d = aq(&mut m, &mut dma, AQC_GET_VSI_PARAMS, params(&[(0, SEID_MAIN_VSI)]), None, 128);
    ok(&d);
    assert_eq!(d.p16(0), SEID_MAIN_VSI);
    assert_eq!(&d.buf[VSI_OFF_QUEUE_MAPPING..VSI_OFF_QUEUE_MAPPING + 2], &4u16.to_le_bytes());
    assert_eq!(d.buf[10], 0);
    assert_eq!(m.fw.vsi.rx_queue(), 4);
    // The switch section is 4 bytes (switch_id and 2 reserved), all of them taken.
    let mut sw = [0u8; VSI_PROPS_LEN];
    sw[0..2].copy_from_slice(&VSI_PROP_SWITCH_VALID.to_le_bytes());
    sw[2..6].copy_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    sw[6] = 0x77; // security section, not flagged valid
    ok(&aq(&mut m, &mut dma, AQC_UPDATE_VSI_PARAMS, params(&[(0, SEID_MAIN_VSI)]), Some(&sw), 0));
    let d = aq(&mut m, &mut dma, AQC_GET_VSI_PARAMS, params(&[(0, SEID_MAIN_VSI)]), None, 128);
    assert_eq!(&d.buf[2..7], &[0x11, 0x22, 0x33, 0x44, 0]);
}

#[test]
fn pfqf_ctl_0_and_2_are_kept_like_the_other_queue_filter_registers() {
    let mut m = nic(Box::new(NullWire::default()));
    for (reg, v) in [(PFQF_CTL_0, 0x0000_0003), (PFQF_CTL_2, 0x0000_0001)] {
        wr(&mut m, reg, v);
        assert_eq!(rd(&mut m, reg), v, "{reg:#x}");
        assert!(I40e::is_storage(reg), "{reg:#x} is a known register");
    }
}

#[test]
fn macvlan_add_and_remove_report_per_element_results() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    let seid = SEID_MAIN_VSI | MACVLAN_CMD_SEID_VALID;
    let mut e = [0u8; 16];
    e[0..6].copy_from_slice(&[0xff; 6]);
    e[8..10].copy_from_slice(&MACVLAN_ADD_IGNORE_VLAN.to_le_bytes());
    let d = aq(&mut m, &mut dma, AQC_ADD_MACVLAN, params(&[(0, 1), (2, seid)]), Some(&e), 0);
    ok(&d);
    assert_eq!(d.buf[12], MM_PERFECT_MATCH);
    let mut r = [0u8; 16];
    r[0..6].copy_from_slice(&MAC);
    r[8] = MACVLAN_DEL_IGNORE_VLAN;
    ok(&aq(&mut m, &mut dma, AQC_REMOVE_MACVLAN, params(&[(0, 1), (2, seid)]), Some(&r), 0));
    let d = aq(&mut m, &mut dma, AQC_REMOVE_MACVLAN, params(&[(0, 1), (2, seid)]), Some(&r), 0);
    failed(&d, AQ_RC_ENOENT);
    assert_eq!(d.buf[12], REMOVE_MACVLAN_FAIL);
}

#[test]
fn link_status_reports_10g_and_events_follow_the_cable() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    let d = aq(&mut m, &mut dma, AQC_GET_LINK_STATUS, params(&[(0, LSE_ENABLE)]), None, 0);
    ok(&d);
    assert_eq!(d.p16(0) & LSE_IS_ENABLED, LSE_IS_ENABLED);
    assert_ne!(d.params[4] & LINK_UP_FUNCTION, 0);
    assert_eq!(d.params[3], LINK_SPEED_10GB);
    wr(&mut m, PFINT_ICR0_ENA, PFINT_ICR0_ADMINQ);
    m.take_irqs();
    m.link_set(false);
    m.poll(&mut dma);
    assert_eq!(rd(&mut m, PF_ARQH), 1, "one event posted");
    let mut ev = [0u8; 32];
    dma.read(ARQ, &mut ev).unwrap();
    assert_eq!(u16::from_le_bytes([ev[0], ev[1]]) & AQ_FLAG_DD, AQ_FLAG_DD);
    assert_eq!(u16::from_le_bytes([ev[2], ev[3]]), AQC_GET_LINK_STATUS);
    assert_eq!(ev[16 + 4] & LINK_UP_FUNCTION, 0, "event says down");
    assert_ne!(rd(&mut m, PFINT_ICR0) & PFINT_ICR0_ADMINQ, 0);
    assert_eq!(rd(&mut m, PFINT_ICR0), 0, "ICR0 is read-clear");
    let d = aq(&mut m, &mut dma, AQC_GET_LINK_STATUS, [0; 16], None, 0);
    assert_eq!(d.params[4] & LINK_UP_FUNCTION, 0);
    // Masked events are not posted.
    ok(&aq(&mut m, &mut dma, AQC_SET_PHY_INT_MASK, params(&[(8, EVENT_LINK_UPDOWN)]), None, 0));
    m.link_set(true);
    m.poll(&mut dma);
    assert_eq!(rd(&mut m, PF_ARQH), 1);
}

#[test]
fn hmc_contexts_are_read_on_queue_enable_and_decoded() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, true, true);
    let t = m.txq[0].ctx.unwrap();
    assert_eq!((t.base, t.qlen, t.head_wb_ena, t.head_wb_addr), (TX_RING, N, true, HEAD_WB));
    let r = m.rxq[0].ctx.unwrap();
    assert_eq!((r.base, r.qlen, r.dbuff, r.dsize32, r.crcstrip, r.rxmax), (RX_RING, N, 2048, true, true, 9728));
    // Disable is immediate.
    wr(&mut m, qtx_ena(0), 0);
    assert_eq!(rd(&mut m, qtx_ena(0)), 0);
    // Queue 1 has no context (qlen 0): the request fails, the status never comes.
    wr(&mut m, qrx_ena(1), QENA_REQ);
    m.poll(&mut dma);
    assert_eq!(rd(&mut m, qrx_ena(1)), QENA_REQ);
    assert!(m.faults().has("rx context qlen under 8"));
}

#[test]
fn queue_enable_without_a_valid_segment_is_a_fault() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    aq_init(&mut m, &mut dma);
    wr(&mut m, glhmc_lantxcnt(0), 4);
    wr(&mut m, qtx_ena(0), QENA_REQ);
    m.poll(&mut dma);
    assert_eq!(rd(&mut m, qtx_ena(0)) & QENA_STAT, 0);
    assert!(m.faults().has("hmc segment descriptor not valid"));
}

fn loopback_round_trip(dsize32: bool) {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, dsize32, false);
    let frames = [frame(MAC, 60, 1), frame([0xff; 6], 1514, 2), frame(MAC, 64, 3)];
    for (i, f) in frames.iter().enumerate() {
        queue_tx(&mut m, &mut dma, i as u32, f);
        m.poll(&mut dma);
        let qw1 = get_u64(&mut dma, TX_RING + i as u64 * 16 + 8);
        assert_eq!(qw1 & TXD_DTYPE_MASK, TXD_DTYPE_DESC_DONE, "tx write-back DTYPE=0xF");
        let (dd, eof, len) = rx_wb(&mut dma, i as u32, dsize32);
        assert!(dd && eof, "frame {i}");
        assert_eq!(len, f.len());
        let mut got = vec![0u8; len];
        dma.read(RX_BUFS + i as u64 * 2048, &mut got).unwrap();
        assert_eq!(&got, f, "frame {i} byte-identical");
    }
    assert_eq!(rd(&mut m, qtx_head(0)), 3);
    let s = m.stats();
    assert_eq!((s.tx_packets, s.rx_packets), (3, 3));
    assert_eq!(rd(&mut m, glprt_uprcl(0)), 2);
    assert_eq!(rd(&mut m, glprt_bprcl(0)), 1);
    assert_eq!(rd(&mut m, glprt_uptcl(0)), 2);
    assert_eq!(rd(&mut m, glprt_gorcl(0)), (60 + 1514 + 64) + 3 * 4);
    assert_eq!(rd(&mut m, glprt_gotcl(0)) as u64 | (u64::from(rd(&mut m, glprt_gotcl(0) + 4)) << 32), 1638 + 12);
    assert_eq!(rd(&mut m, glprt_gorcl(0)), (60 + 1514 + 64) + 3 * 4, "free-running, not clear-on-read");
}

#[test]
fn tx_loopback_rx_is_byte_identical_with_16_byte_descriptors() {
    loopback_round_trip(false);
}

#[test]
fn tx_loopback_rx_is_byte_identical_with_32_byte_descriptors() {
    loopback_round_trip(true);
}

#[test]
fn head_write_back_replaces_descriptor_write_back() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, true);
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 100, 0));
    queue_tx(&mut m, &mut dma, 1, &frame(MAC, 100, 0));
    m.poll(&mut dma);
    assert_eq!(get_u64(&mut dma, HEAD_WB) as u32, 2);
    assert_ne!(get_u64(&mut dma, TX_RING + 8) & TXD_DTYPE_MASK, TXD_DTYPE_DESC_DONE);
}

#[test]
fn frames_larger_than_one_buffer_span_descriptors_with_eof_on_last() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    wr(&mut m, qrx_ena(0), 0);
    write_rx_ctx(&mut dma, 0, false, 1024);
    wr(&mut m, qrx_ena(0), QENA_REQ);
    m.poll(&mut dma);
    let f = frame(MAC, 2500, 9);
    queue_tx(&mut m, &mut dma, 0, &f);
    m.poll(&mut dma);
    assert_eq!(rx_wb(&mut dma, 0, false), (true, false, 1024));
    assert_eq!(rx_wb(&mut dma, 1, false), (true, false, 1024));
    assert_eq!(rx_wb(&mut dma, 2, false), (true, true, 2500 - 2048));
}

#[test]
fn unicast_filter_drops_foreign_mac_unless_promiscuous() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    queue_tx(&mut m, &mut dma, 0, &frame([0x02, 9, 9, 9, 9, 9], 64, 0));
    m.poll(&mut dma);
    assert_eq!(m.stats().rx_packets, 0);
    assert_eq!(m.stats().rx_filtered, 1);
    let p = params(&[(0, PROMISC_UNICAST), (2, PROMISC_UNICAST), (4, SEID_MAIN_VSI)]);
    ok(&aq(&mut m, &mut dma, AQC_SET_VSI_PROMISC, p, None, 0));
    queue_tx(&mut m, &mut dma, 1, &frame([0x02, 9, 9, 9, 9, 9], 64, 0));
    m.poll(&mut dma);
    assert_eq!(m.stats().rx_packets, 1);
}

/// A MAC+VLAN filter (VLAN 5 for a second address): within one poll, frames to that address
/// tagged 5, 6 and 5 again are taken, filtered and taken, on the cut-through path and on the
/// wire path alike (the filter's verdict is kept per header, the VLAN tag part of it).
#[test]
fn a_vlan_filter_decides_per_frame_within_a_burst() {
    const M2: [u8; 6] = [0x02, 0, 0, 0, 0x40, 0x02];
    for wire in [
        Box::new(Loopback::default()) as Box<dyn Wire>,
        Box::new(QueuedLoopback::default()),
        Box::new(FrameByFrame(QueuedLoopback::default())),
    ] {
        let mut m = nic(wire);
        let mut dma = dma();
        bring_up(&mut m, &mut dma, false, false);
        let mut e = [0u8; 16];
        e[0..6].copy_from_slice(&M2);
        e[6..8].copy_from_slice(&5u16.to_le_bytes());
        let seid = SEID_MAIN_VSI | MACVLAN_CMD_SEID_VALID;
        ok(&aq(&mut m, &mut dma, AQC_ADD_MACVLAN, params(&[(0, 1), (2, seid)]), Some(&e), 0));
        let tagged = |vlan: u16| {
            let mut f = frame(M2, 64, 7);
            f[12..14].copy_from_slice(&[0x81, 0x00]);
            f[14..16].copy_from_slice(&vlan.to_be_bytes());
            f
        };
        for (i, vlan) in [5u16, 6, 5].into_iter().enumerate() {
            queue_tx(&mut m, &mut dma, i as u32, &tagged(vlan));
        }
        m.poll(&mut dma);
        m.poll(&mut dma);
        let s = m.stats();
        assert_eq!((s.tx_packets, s.rx_packets, s.rx_filtered), (3, 2, 1), "{s:?}");
        assert_eq!(rx_wb(&mut dma, 0, false), (true, true, 64));
        assert_eq!(rx_wb(&mut dma, 1, false), (true, true, 64));
        assert!(!rx_wb(&mut dma, 2, false).0, "two frames delivered");
    }
}

#[test]
fn full_rx_ring_counts_discards() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    wr(&mut m, qrx_tail(0), 1);
    for i in 0..3 {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 64, 0));
        m.poll(&mut dma);
    }
    assert_eq!(m.stats().rx_packets, 1);
    assert_eq!(rd(&mut m, glprt_rdpc(0)), 2);
}

#[test]
fn mac_loopback_mode_turns_frames_around_inside_the_port() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    ok(&aq(&mut m, &mut dma, AQC_SET_LB_MODES, params(&[(0, LB_MAC_LOCAL)]), None, 0));
    let f = frame(MAC, 128, 5);
    queue_tx(&mut m, &mut dma, 0, &f);
    m.poll(&mut dma);
    assert_eq!(rx_wb(&mut dma, 0, false), (true, true, 128));
    let d = aq(&mut m, &mut dma, AQC_GET_LINK_STATUS, [0; 16], None, 0);
    assert_eq!(u16::from(d.params[7]), LB_MAC_LOCAL);
}

#[test]
fn oversize_frames_are_dropped_by_max_frame_size() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    ok(&aq(&mut m, &mut dma, AQC_SET_MAC_CONFIG, params(&[(0, 1518)]), None, 0));
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 1515, 0));
    queue_tx(&mut m, &mut dma, 1, &frame(MAC, 1514, 0));
    m.poll(&mut dma);
    assert_eq!(m.stats().rx_packets, 1);
    assert_eq!(rd(&mut m, glprt_roc(0)), 1);
}

#[test]
fn rings_wrap_and_bad_descriptors_are_faults_not_crashes() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    for i in 0..(3 * N) {
        let idx = i % N;
        let f = frame(MAC, 64 + i as usize, i as u8);
        queue_tx(&mut m, &mut dma, idx, &f);
        m.poll(&mut dma);
        let (dd, eof, len) = rx_wb(&mut dma, idx, false);
        assert!(dd && eof && len == f.len(), "frame {i}");
        put_u64(&mut dma, RX_RING + u64::from(idx) * 16, RX_BUFS + u64::from(idx) * 2048);
        put_u64(&mut dma, RX_RING + u64::from(idx) * 16 + 8, 0);
        wr(&mut m, qrx_tail(0), idx);
    }
    assert_eq!(m.stats().rx_packets, u64::from(3 * N));
    // A TX buffer outside the DMA window.
    let idx = rd(&mut m, qtx_head(0));
    put_u64(&mut dma, TX_RING + u64::from(idx) * 16, 0xdead_0000_0000);
    put_u64(
        &mut dma,
        TX_RING + u64::from(idx) * 16 + 8,
        ((TXD_CMD_EOP | TXD_CMD_RS) << TXD_CMD_SHIFT) | (64 << TXD_BSZ_SHIFT),
    );
    wr(&mut m, qtx_tail(0), (idx + 1) % N);
    m.poll(&mut dma);
    assert!(m.faults().has("tx buffer read"));
    // A tail beyond the ring.
    wr(&mut m, qtx_tail(0), 4000);
    m.poll(&mut dma);
    m.poll(&mut dma);
    assert!(m.faults().has("tx tail beyond ring"));
}

#[test]
fn config_space_reports_x710_ids_and_msix_in_bar3() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut b = [0u8; 4];
    m.config_read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1572_8086);
    m.config_read(8, &mut b);
    assert_eq!(u32::from_le_bytes(b) >> 8, 0x020000);
    assert_eq!(m.msix_count(), 64);
    assert_eq!(m.bars()[0].size, 8 * 1024 * 1024);
    assert_eq!(m.bars()[3].size, 32 * 1024);
    assert_eq!(m.sparse_areas(0), vec![(0x10_8000, 0x2000), (0x12_8000, 0x2000)]);
    let mut cap = 0x40u64;
    loop {
        let mut id = [0u8; 2];
        m.config_read(cap, &mut id);
        if id[0] == 0x11 {
            break;
        }
        cap = u64::from(id[1]);
    }
    m.config_read(cap + 4, &mut b);
    assert_eq!(u32::from_le_bytes(b) & 7, 3, "MSI-X table in BAR3");
}

#[test]
fn bad_accesses_read_all_ones_and_are_recorded() {
    let mut m = nic(Box::new(NullWire::default()));
    let mut b = [0u8; 4];
    m.bar_read(0, BAR0_SIZE, &mut b);
    assert_eq!(b, [0xff; 4]);
    m.bar_read(0, 2, &mut b);
    m.bar_write(0, u64::MAX - 1, &[0; 4]);
    m.bar_read(1, 0, &mut b);
    assert_eq!(m.faults().total(), 4);
}

fn enable_msix(m: &mut I40e) {
    let mut cap = 0x40u64;
    loop {
        let mut id = [0u8; 2];
        m.config_read(cap, &mut id);
        if id[0] == 0x11 {
            break;
        }
        cap = u64::from(id[1]);
    }
    m.config_write(cap + 3, &[0x80]);
    for v in 0..4u64 {
        m.bar_write(3, v * 16 + 12, &[0, 0, 0, 0]);
    }
}

#[test]
fn queue_and_admin_interrupts_reach_their_msix_vectors() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    enable_msix(&mut m);
    wr(&mut m, qint_rqctl(0), QINT_CTL_CAUSE_ENA | 2);
    wr(&mut m, PFINT_ICR0_ENA, PFINT_ICR0_ADMINQ);
    ok(&aq(&mut m, &mut dma, AQC_GET_LINK_STATUS, params(&[(0, LSE_ENABLE)]), None, 0));
    m.take_irqs();
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 64, 0));
    m.poll(&mut dma);
    assert_eq!(m.take_irqs(), 1 << 2, "rx queue 0 -> vector 2");
    m.link_set(false);
    m.poll(&mut dma);
    assert_eq!(m.take_irqs(), 1 << 0, "link event on the ARQ -> vector 0");
}

use crate::dma::RecordingDma as Recording;

#[test]
fn write_backs_publish_the_dd_word_last_as_one_release_store() {
    for (dsize32, head_wb) in [(true, false), (false, false), (false, true)] {
        let mut m = nic(Box::new(Loopback::default()));
        let mut dma = dma();
        bring_up(&mut m, &mut dma, dsize32, head_wb);
        queue_tx(&mut m, &mut dma, 0, &frame(MAC, 64, 0));
        let mut rec = Recording::new(dma);
        m.poll(&mut rec);
        // RX: the frame, then the other qwords, then qword1 (DD, length) once, as an 8-byte Release store.
        let dl = rx_desc_len(dsize32);
        let rx = rec.touching(RX_RING, dl);
        assert_eq!(rx.last(), Some(&(RX_RING + 8, 8, true)), "RX ({dl}-byte): {rx:x?}");
        assert_eq!(rx.iter().filter(|s| s.2).count(), 1, "one publish per descriptor");
        assert!(rx[..rx.len() - 1].iter().all(|(a, n, _)| *a + *n as u64 <= RX_RING + 8 || *a >= RX_RING + 16));
        let buf_store = rec.all().iter().position(|s| s.0 == RX_BUFS).expect("frame written");
        let first_wb = rec.all().iter().position(|s| (RX_RING..RX_RING + dl).contains(&s.0)).unwrap();
        assert!(buf_store < first_wb, "data before the write-back");
        if head_wb {
            // TX: the head is published, the descriptor is left alone.
            assert_eq!(rec.touching(TX_RING, 16), vec![]);
            assert_eq!(rec.touching(HEAD_WB, 4), vec![(HEAD_WB, 4, true)]);
        } else {
            // TX: the done DTYPE is published, nothing else of the descriptor is written.
            assert_eq!(rec.touching(TX_RING, 16), vec![(TX_RING + 8, 8, true)]);
        }
        let (dd, eof, len) = rx_wb(&mut rec.inner, 0, dsize32);
        assert!(dd && eof && len == 64);
        // Admin queue: bytes 4.. first, then the flags/opcode word as one 4-byte Release store.
        let mut dma = rec.inner;
        let idx = rd(&mut m, PF_ATQT);
        let at = ATQ + u64::from(idx) * 32;
        let mut d = [0u8; 32];
        d[2..4].copy_from_slice(&AQC_GET_VERSION.to_le_bytes());
        dma.write(at, &d).unwrap();
        wr(&mut m, PF_ATQT, (idx + 1) % AQ_LEN);
        let mut rec = Recording::new(dma);
        m.poll(&mut rec);
        assert_eq!(rec.touching(at, 32), vec![(at + 4, 28, false), (at, 4, true)]);
        let w = get_u64(&mut rec.inner, at);
        assert_eq!(w as u16 & (AQ_FLAG_DD | AQ_FLAG_CMP), AQ_FLAG_DD | AQ_FLAG_CMP);
        assert_eq!((w >> 16) as u16, AQC_GET_VERSION);
    }
}

/// xorshift64: a fixed pseudo-random sequence.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn random_admin_descriptors_contexts_and_ring_descriptors_never_panic() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, true, false);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let opcodes = [
        AQC_GET_VERSION,
        AQC_LIST_FUNC_CAPS,
        AQC_MAC_ADDRESS_READ,
        AQC_GET_SWITCH_CONFIG,
        AQC_UPDATE_VSI_PARAMS,
        AQC_GET_VSI_PARAMS,
        AQC_ADD_MACVLAN,
        AQC_REMOVE_MACVLAN,
        AQC_SET_VSI_PROMISC,
        AQC_GET_PHY_ABILITIES,
        AQC_SET_MAC_CONFIG,
        AQC_GET_LINK_STATUS,
        AQC_QUERY_VSI_BW_CONFIG,
        AQC_SET_LB_MODES,
    ];
    for i in 0..3000u64 {
        // An admin descriptor with random flags, length, parameters and buffer address (inside or
        // outside the DMA window), for a real or random opcode.
        let idx = rd(&mut m, PF_ATQT);
        let mut d = [0u8; 32];
        for c in d.chunks_mut(8) {
            c.copy_from_slice(&next(&mut x).to_le_bytes());
        }
        let op = if i % 2 == 0 { opcodes[(next(&mut x) % opcodes.len() as u64) as usize] } else { next(&mut x) as u16 };
        d[2..4].copy_from_slice(&op.to_le_bytes());
        d[4..6].copy_from_slice(&((next(&mut x) % 5000) as u16).to_le_bytes());
        if i % 3 == 0 {
            d[24..28].copy_from_slice(&((AQ_BUF >> 32) as u32).to_le_bytes());
            d[28..32].copy_from_slice(&(AQ_BUF as u32).to_le_bytes());
        }
        dma.write(ATQ + u64::from(idx) * 32, &d).unwrap();
        wr(&mut m, PF_ATQT, (idx + 1) % AQ_LEN);
        m.poll(&mut dma);
        let mut w = [0u8; 32];
        dma.read(ATQ + u64::from(idx) * 32, &mut w).unwrap();
        assert_eq!(
            w[0] & (AQ_FLAG_DD | AQ_FLAG_CMP) as u8,
            (AQ_FLAG_DD | AQ_FLAG_CMP) as u8,
            "every command completes"
        );
        // Random TX descriptors and a random tail; random contexts re-requested now and then.
        let slot = (next(&mut x) % u64::from(N)) as u32;
        put_u64(&mut dma, TX_RING + u64::from(slot) * 16, next(&mut x));
        put_u64(&mut dma, TX_RING + u64::from(slot) * 16 + 8, next(&mut x));
        wr(&mut m, qtx_tail(0), (next(&mut x) % 64) as u32);
        if i % 97 == 0 {
            let mut c = [0u8; 128];
            for ch in c.chunks_mut(8) {
                ch.copy_from_slice(&next(&mut x).to_le_bytes());
            }
            dma.write(HMC_MEM, &c).unwrap();
            dma.write(HMC_MEM + u64::from(RX_BASE_512) * 512, &c[..32]).unwrap();
            wr(&mut m, qtx_ena(0), 0);
            wr(&mut m, qtx_ena(0), QENA_REQ);
            wr(&mut m, qrx_ena(0), 0);
            wr(&mut m, qrx_ena(0), QENA_REQ);
        }
        m.poll(&mut dma);
    }
    // Still a working device after a PF reset.
    wr(&mut m, PFGEN_CTRL, PFGEN_CTRL_PFSWR);
    let mut dma = self::dma();
    bring_up(&mut m, &mut dma, false, false);
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 100, 1));
    m.poll(&mut dma);
    assert_eq!(rx_wb(&mut dma, 0, false), (true, true, 100));
}

use crate::model::frame::{alike_on_every_path, Outcome};

/// Mixed traffic over `wire`: what the driver can observe afterwards (stats, GLPRT counters,
/// faults, rings and buffers).
fn mixed_traffic(wire: Box<dyn Wire>, dsize32: bool) -> Outcome {
    let mut m = nic(wire);
    let mut dma = dma();
    bring_up(&mut m, &mut dma, dsize32, false);
    wr(&mut m, qrx_tail(0), 6);
    // Poll 1: see `mixed_frames`.
    let frames = crate::model::frame::mixed_frames(MAC, frame);
    for (i, f) in frames.iter().enumerate() {
        queue_tx(&mut m, &mut dma, i as u32, f);
    }
    m.poll(&mut dma);
    // Poll 2: a TX buffer outside the DMA window, then more frames than free descriptors.
    put_u64(&mut dma, TX_RING + 6 * 16, 0xdead_0000_0000);
    put_u64(
        &mut dma,
        TX_RING + 6 * 16 + 8,
        TXD_DTYPE_DATA | ((TXD_CMD_EOP | TXD_CMD_RS) << TXD_CMD_SHIFT) | (64 << TXD_BSZ_SHIFT),
    );
    for i in 7..10 {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 64, i as u8));
    }
    m.poll(&mut dma);
    // Poll 3: the driver gives buffers back; unicast, multicast.
    wr(&mut m, qrx_tail(0), 12);
    queue_tx(&mut m, &mut dma, 10, &frame(MAC, 100, 10));
    let p = params(&[(0, PROMISC_MULTICAST), (2, PROMISC_MULTICAST), (4, SEID_MAIN_VSI)]);
    ok(&aq(&mut m, &mut dma, AQC_SET_VSI_PROMISC, p, None, 0));
    queue_tx(&mut m, &mut dma, 11, &frame([0x01, 0, 0x5e, 0, 0, 1], 80, 11));
    m.poll(&mut dma);
    // Poll 4: the RX ring moved so that it straddles the end of the DMA window.
    wr(&mut m, qrx_ena(0), 0);
    write_rx_ctx_at(&mut dma, 0, BASE + 0x40_0000 - 256, N, dsize32, 2048);
    wr(&mut m, qrx_ena(0), QENA_REQ);
    m.poll(&mut dma);
    wr(&mut m, qrx_tail(0), 4);
    for i in 12..14 {
        queue_tx(&mut m, &mut dma, i, &frame(MAC, 64, i as u8));
    }
    m.poll(&mut dma);
    let regs = [
        glprt_gorcl(0),
        glprt_uprcl(0),
        glprt_mprcl(0),
        glprt_bprcl(0),
        glprt_rdpc(0),
        glprt_roc(0),
        glprt_gotcl(0),
        glprt_uptcl(0),
        glprt_mptcl(0),
        glprt_bptcl(0),
        glprt_tdold(0),
        qtx_head(0),
    ]
    .map(|r| rd(&mut m, r));
    let faults = m.faults().last(100).iter().map(|f| (f.iova, f.len, f.what)).collect();
    // TX and RX rings, TX and RX buffers.
    let mut mem = vec![0u8; 0x10_0000];
    dma.read(TX_RING, &mut mem).unwrap();
    (m.stats(), regs.to_vec(), faults, mem)
}

#[test]
fn cut_through_on_an_idle_loopback_matches_the_wire_path() {
    for dsize32 in [false, true] {
        let cut = alike_on_every_path(&format!("dsize32 {dsize32}"), |w| mixed_traffic(w, dsize32));
        // And the traffic did what it says.
        let s = cut.0;
        assert_eq!((s.tx_packets, s.rx_packets, s.rx_filtered, s.rx_missed), (13, 7, 1, 4), "{s:?}");
        let what: Vec<_> = cut.2.iter().map(|f| f.2).collect();
        assert_eq!(what, ["tx buffer read", "rx descriptor read"]);
        assert_eq!(cut.2[1].0, BASE + 0x40_0000 - 256, "the head descriptor of the ring");
    }
}

/// Bursts of the common case (unicast frames to the port, one buffer each, an IPv4 header
/// after the ethertype so the filter key repeats), broken up by what a burst loop must not
/// take on trust: a broadcast, a frame the filter drops, a multicast (dropped: no multicast
/// promiscuity), a 14-byte frame, and both rings wrapping. Three polls of 20 frames over
/// `wire`; what the driver can observe afterwards.
fn unicast_bursts(wire: Box<dyn Wire>, dsize32: bool) -> Outcome {
    let mut m = nic(wire);
    let mut dma = dma();
    bring_up(&mut m, &mut dma, dsize32, false);
    let dl = rx_desc_len(dsize32);
    let (foreign, group) = ([0x02, 9, 9, 9, 9, 9], [0x01, 0, 0x5e, 0, 0, 1]);
    let mut idx = 0u32;
    for p in 0..3u8 {
        for j in 0..20usize {
            let (dst, len) = match (p, j) {
                (0, 5) => ([0xff; 6], 64),
                (0, 9) => (foreign, 64),
                (0, 14) => (MAC, 14),
                (1, 3) => (group, 64),
                _ => (MAC, 60 + j),
            };
            let mut f = frame(dst, len, p * 32 + j as u8);
            if len >= 16 {
                f[14..16].copy_from_slice(&[0x45, 0]);
            }
            // `queue_tx`'s buffers 16 KiB apart would run into the RX buffers past descriptor
            // 23: 2 KiB apart here.
            let buf = TX_BUFS + u64::from(idx) * 2048;
            dma.write(buf, &f).unwrap();
            let d = TX_RING + u64::from(idx) * 16;
            put_u64(&mut dma, d, buf);
            let cmd = (TXD_CMD_EOP | TXD_CMD_RS | 0x4) << TXD_CMD_SHIFT;
            put_u64(&mut dma, d + 8, TXD_DTYPE_DATA | cmd | ((f.len() as u64) << TXD_BSZ_SHIFT));
            idx = (idx + 1) % N;
            wr(&mut m, qtx_tail(0), idx);
        }
        m.poll(&mut dma);
        // The driver takes what arrived and gives every descriptor but one back; before the
        // last poll only ten, so that the queue runs out of descriptors in the middle of it.
        let head = (m.stats().rx_packets % u64::from(N)) as u32;
        for i in 0..u64::from(N) {
            put_u64(&mut dma, RX_RING + i * dl, RX_BUFS + i * 2048);
            put_u64(&mut dma, RX_RING + i * dl + 8, 0);
        }
        wr(&mut m, qrx_tail(0), (head + if p == 1 { 10 } else { N - 1 }) % N);
    }
    let regs = [glprt_gorcl(0), glprt_uprcl(0), glprt_bprcl(0), glprt_gotcl(0), glprt_uptcl(0), qtx_head(0)]
        .map(|r| rd(&mut m, r));
    let faults = m.faults().last(100).iter().map(|f| (f.iova, f.len, f.what)).collect();
    let mut mem = vec![0u8; 0x10_0000];
    dma.read(TX_RING, &mut mem).unwrap();
    (m.stats(), regs.to_vec(), faults, mem)
}

#[test]
fn bursts_of_unicast_frames_match_the_wire_path() {
    for dsize32 in [false, true] {
        let cut = alike_on_every_path(&format!("dsize32 {dsize32}"), |w| unicast_bursts(w, dsize32));
        let s = cut.0;
        // The last poll's frames after the tenth are missed.
        assert_eq!((s.tx_packets, s.rx_packets, s.rx_filtered, s.rx_missed), (60, 48, 2, 10), "{s:?}");
        assert!(cut.2.is_empty(), "no faults: {:?}", cut.2);
        // The last frame delivered (the last poll's tenth, 69 bytes, the 48th received) landed
        // whole in descriptor 47 % N.
        let d = 47 % N;
        let got = &cut.3[(RX_BUFS - TX_RING) as usize + d as usize * 2048..][..69];
        let mut sent = frame(MAC, 69, 2 * 32 + 9);
        sent[14..16].copy_from_slice(&[0x45, 0]);
        assert_eq!(got, &sent[..], "dsize32 {dsize32}");
    }
}

#[test]
fn write_backs_of_a_burst_longer_than_one_batch_each_publish_dd_last() {
    const LEN: u32 = 128;
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    wr(&mut m, qrx_ena(0), 0);
    write_rx_ctx_at(&mut dma, 0, RX_RING, LEN, false, 1024);
    for i in 0..u64::from(LEN) {
        put_u64(&mut dma, RX_RING + i * 16, RX_BUFS + i * 1024);
        put_u64(&mut dma, RX_RING + i * 16 + 8, 0);
    }
    wr(&mut m, qrx_tail(0), LEN - 1);
    wr(&mut m, qrx_ena(0), QENA_REQ);
    m.poll(&mut dma);
    // 20 frames of 3 buffers each: 60 write-backs in one poll.
    let f = frame(MAC, 2500, 7);
    for i in 0..20 {
        queue_tx(&mut m, &mut dma, i, &f);
    }
    let mut rec = Recording::new(dma);
    m.poll(&mut rec);
    assert_eq!(m.stats().rx_packets, 20);
    for d in 0..60u64 {
        let at = RX_RING + d * 16;
        let s = rec.touching(at, 16);
        assert_eq!(s.last(), Some(&(at + 8, 8, true)), "descriptor {d}: {s:x?}");
        assert_eq!(s.iter().filter(|s| s.2).count(), 1, "descriptor {d}: one publish");
        let last = d % 3 == 2;
        let want = (true, last, if last { 2500 - 2048 } else { 1024 });
        assert_eq!(rx_wb(&mut rec.inner, d as u32, false), want, "descriptor {d}");
    }
    assert_eq!(rec.touching(RX_RING + 60 * 16, 16), vec![], "nothing past the frames");
    // Every frame's data is stored before its descriptors are written back.
    let all = rec.all();
    for d in 0..60u64 {
        let data = all.iter().position(|s| s.0 == RX_BUFS + d * 1024).expect("buffer written");
        let wb = all.iter().position(|s| s.0 == RX_RING + d * 16 + 8).expect("written back");
        assert!(data < wb, "descriptor {d}");
    }
}

#[test]
fn intx_follows_icr0_causes_and_queue_causes_on_vector_0() {
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut m, &mut dma, false, false);
    assert!(!m.intx_asserted());
    // RX queue 0's cause on vector 0, reporting as PFINT_ICR0.QUEUE_2 (MSIX0_INDX 2).
    wr(&mut m, qint_rqctl(0), QINT_CTL_CAUSE_ENA | (2 << QINT_CTL_MSIX0_INDX_SHIFT));
    queue_tx(&mut m, &mut dma, 0, &frame(MAC, 64, 0));
    m.poll(&mut dma);
    assert!(m.intx_asserted(), "the received frame asserts INTx");
    let mut st = [0u8; 2];
    m.config_read(0x06, &mut st);
    assert_ne!(u16::from_le_bytes(st) & (1 << 3), 0, "status: interrupt pending");
    assert_eq!(rd(&mut m, PFINT_ICR0), PFINT_ICR0_INTEVENT | (1 << 3), "INTEVENT and QUEUE_2");
    assert!(!m.intx_asserted(), "reading PFINT_ICR0 acknowledges");
    // An admin-queue cause asserts INTx only when enabled in PFINT_ICR0_ENA.
    aq_init(&mut m, &mut dma);
    ok(&aq(&mut m, &mut dma, AQC_GET_LINK_STATUS, params(&[(0, LSE_ENABLE)]), None, 0));
    m.link_set(false);
    m.poll(&mut dma);
    assert_ne!(rd(&mut m, PF_ARQH), 0, "a link event posted");
    assert!(!m.intx_asserted(), "ADMINQ not enabled");
    wr(&mut m, PFINT_ICR0_ENA, PFINT_ICR0_ADMINQ);
    assert!(m.intx_asserted(), "enabled: the pending ADMINQ cause asserts it");
    m.config_write(0x05, &[0x04]);
    assert!(!m.intx_asserted(), "Interrupt Disable");
}

#[test]
fn a_saved_state_loads_into_another_function_and_traffic_goes_on_from_there() {
    let mut a = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up(&mut a, &mut dma, false, false);
    // Firmware state the driver set up: unicast promiscuity (a foreign MAC gets in).
    let p = params(&[(0, PROMISC_UNICAST), (2, PROMISC_UNICAST), (4, SEID_MAIN_VSI)]);
    ok(&aq(&mut a, &mut dma, AQC_SET_VSI_PROMISC, p, None, 0));
    wr(&mut a, PFINT_ICR0_ENA, PFINT_ICR0_ADMINQ);
    for i in 0..3 {
        queue_tx(&mut a, &mut dma, i, &frame([0x02, 9, 9, 9, 9, i as u8], 64, i as u8));
        a.poll(&mut dma);
    }
    assert_eq!(a.stats().rx_packets, 3);
    let state = a.save().expect("the X710 model migrates");

    let mut b = nic(Box::new(Loopback::default()));
    wr(&mut b, PFINT_ICR0_ENA, 0x42 << 2);
    // Refused streams change nothing.
    assert!(b.load(&state[..state.len() - 3]).unwrap_err().to_string().contains("ends inside"));
    let mut foreign = state.clone();
    foreign[4] ^= 0xff;
    assert!(b.load(&foreign).unwrap_err().to_string().contains("not a"));
    let mut long = state.clone();
    long.push(0);
    assert!(b.load(&long).unwrap_err().to_string().contains("after the end"));
    assert_eq!(rd(&mut b, PFINT_ICR0_ENA), 0x42 << 2, "untouched by the refused loads");
    assert_eq!(rd(&mut b, qtx_ena(0)) & QENA_STAT, 0);

    b.load(&state).unwrap();
    assert_eq!(rd(&mut b, PFINT_ICR0_ENA), PFINT_ICR0_ADMINQ);
    assert_eq!(rd(&mut b, qtx_ena(0)), QENA_REQ | QENA_STAT, "the queue stays enabled");
    assert_eq!(rd(&mut b, qrx_ena(0)), QENA_REQ | QENA_STAT);
    assert_eq!(rd(&mut b, qtx_head(0)), 3, "the head the queue reached, not the context's");
    for r in [PF_ATQBAL, PF_ATQLEN, PF_ATQH, PF_ARQT, glhmc_lanrxbase(0), PFHMC_SDDATALOW] {
        assert_eq!(rd(&mut b, r), rd(&mut a, r), "register {r:#x}");
    }
    let (mut ca, mut cb) = ([0u8; 64], [0u8; 64]);
    a.config_read(0, &mut ca);
    b.config_read(0, &mut cb);
    assert_eq!(ca, cb, "config space (bus master on)");
    assert_eq!(b.stats(), a.stats(), "lifetime totals");
    assert_eq!(rd(&mut b, glprt_uprcl(0)), 3, "port counters");
    // The admin queue goes on at the source's slot, with the firmware's state (still promiscuous).
    ok(&aq(&mut b, &mut dma, AQC_GET_VERSION, [0; 16], None, 0));
    queue_tx(&mut b, &mut dma, 3, &frame([0x02, 9, 9, 9, 9, 9], 64, 7));
    b.poll(&mut dma);
    let (dd, eof, len) = rx_wb(&mut dma, 3, false);
    assert!(dd && eof && len == 64, "descriptor 3 carries the next frame");
    let mut got = vec![0u8; 64];
    dma.read(RX_BUFS + 3 * 2048, &mut got).unwrap();
    assert_eq!(got, frame([0x02, 9, 9, 9, 9, 9], 64, 7));
    assert_eq!(b.stats().rx_packets, 4);

    // A hostile stream: a loaded queue whose head lies outside its ring is refused by name.
    a.txq[0].head = N + 5;
    let bad = a.save().unwrap();
    let mut c = nic(Box::new(Loopback::default()));
    assert_eq!(
        c.load(&bad).unwrap_err(),
        SnapshotError::Misfit { what: "tx queue head", got: N as usize + 5, limit: N as usize }
    );
}

fn rss_ring(q: u32) -> u64 {
    if q == 0 {
        RX_RING
    } else {
        BASE + 0x1_3000 + u64::from(q) * 0x400
    }
}

fn rss_buf(q: u32, i: u64) -> u64 {
    if q == 0 {
        RX_BUFS + i * 2048
    } else {
        BASE + 0x10_0000 + u64::from(q) * 0x1_0000 + i * 2048
    }
}

/// Queue pairs 0..4 up (RX 1..4 beside `bring_up`'s pair 0), unicast promiscuous.
fn bring_up_queues(m: &mut I40e, dma: &mut FakeDma) {
    bring_up(m, dma, false, false);
    for q in 1..4u32 {
        write_rx_ctx_at(dma, q, rss_ring(q), N, false, 2048);
        for i in 0..u64::from(N) {
            put_u64(dma, rss_ring(q) + i * 16, rss_buf(q, i));
            put_u64(dma, rss_ring(q) + i * 16 + 8, 0);
        }
        wr(m, qrx_tail(q), N - 1);
        wr(m, qrx_ena(q), QENA_REQ);
    }
    m.poll(dma);
    for q in 1..4u32 {
        assert_eq!(rd(m, qrx_ena(q)), QENA_REQ | QENA_STAT, "rx queue {q}");
    }
    let p = params(&[(0, PROMISC_UNICAST), (2, PROMISC_UNICAST), (4, SEID_MAIN_VSI)]);
    ok(&aq(m, dma, AQC_SET_VSI_PROMISC, p, None, 0));
}

/// Per RX queue 0..4: (qword0 bits 63:32, FLTSTAT, PTYPE) of each frame it received, in order.
fn rss_received(m: &I40e, dma: &mut FakeDma) -> Vec<Vec<(u32, u64, u64)>> {
    (0..4u32)
        .map(|q| {
            (0..m.rxq[q as usize].head)
                .map(|i| {
                    let d = rss_ring(q) + u64::from(i) * 16;
                    let (qw0, qw1) = (get_u64(dma, d), get_u64(dma, d + 8));
                    ((qw0 >> 32) as u32, (qw1 >> RXD_FLTSTAT_SHIFT) & 3, (qw1 >> RXD_PTYPE_SHIFT) & 0xff)
                })
                .collect()
        })
        .collect()
}

/// Microsoft's key in PFQF_HKEY, and a lookup table spreading over queues 0..3 by registers.
fn rss_key_and_lut_by_registers(m: &mut I40e) {
    use crate::model::rss::tests::MS_KEY;
    for n in 0..10u32 {
        let k = 4 * n as usize;
        wr(m, pfqf_hkey(n), u32::from_le_bytes([MS_KEY[k], MS_KEY[k + 1], MS_KEY[k + 2], MS_KEY[k + 3]]));
    }
    for n in 0..PFQF_HLUT_REGS {
        let e = |k: u32| ((4 * n + k) % 3) << (8 * k);
        wr(m, pfqf_hlut(n), e(0) | e(1) | e(2) | e(3));
    }
}

#[test]
fn rss_by_registers_hashes_the_enabled_types_and_spreads_them_by_the_lookup_table() {
    use crate::model::rss::tests::{ipv4_frame, V4};
    let mut m = nic(Box::new(QueuedLoopback::default()));
    let mut dma = dma();
    bring_up_queues(&mut m, &mut dma);
    rss_key_and_lut_by_registers(&mut m);
    wr(&mut m, pfqf_hena(1), 1 << (PCTYPE_IPV4_TCP - 32));
    let mut want = vec![Vec::new(); 4];
    for (i, (dst, dport, src, sport, _, with_ports)) in V4.iter().enumerate() {
        // TCP is hashed with its ports; UDP (its type not enabled) is not hashed: queue 0.
        let tcp = i % 2 == 0;
        let f = ipv4_frame(src.parse().unwrap(), dst.parse().unwrap(), if tcp { 6 } else { 17 }, *sport, *dport, i % 3);
        if tcp {
            want[(with_ports & 0x7f) as usize % 3].push((*with_ports, RXD_FLTSTAT_RSS, PTYPE_IPV4_TCP));
        } else {
            want[0].push((0, 0, PTYPE_IPV4_UDP));
        }
        queue_tx(&mut m, &mut dma, i as u32, &f);
        m.poll(&mut dma);
    }
    queue_tx(&mut m, &mut dma, 5, &frame(MAC, 64, 0));
    m.poll(&mut dma);
    want[0].push((0, 0, PTYPE_L2));
    let got = rss_received(&m, &mut dma);
    assert_eq!(got, want, "per queue: (hash, FLTSTAT, PTYPE)");
    assert!(got.iter().filter(|q| !q.is_empty()).count() >= 2, "{got:?}");
    assert_eq!(m.stats().rx_packets, 6);
    // UDP enabled too: hashed with its ports now.
    wr(&mut m, pfqf_hena(0), 1 << PCTYPE_IPV4_UDP);
    let (dst, dport, src, sport, _, with_ports) = V4[1];
    queue_tx(&mut m, &mut dma, 6, &ipv4_frame(src.parse().unwrap(), dst.parse().unwrap(), 17, sport, dport, 0));
    m.poll(&mut dma);
    let q = (with_ports & 0x7f) as usize % 3;
    assert_eq!(rss_received(&m, &mut dma)[q].last(), Some(&(with_ports, RXD_FLTSTAT_RSS, PTYPE_IPV4_UDP)));
}

/// A 64-byte frame to the port with `ethertype` (behind an 802.1Q tag if `tagged`), payload `fill`.
fn l2_frame(ethertype: u16, tagged: bool, fill: u8) -> Vec<u8> {
    let mut f = frame(MAC, 64, fill);
    let mut o = 12;
    if tagged {
        f[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        o = 16;
    }
    f[o..o + 2].copy_from_slice(&ethertype.to_be_bytes());
    f
}

/// On every path (cut-through, the ring loops, frame by frame).
#[test]
fn frames_that_are_not_ip_hash_on_their_last_ethertype_when_l2_payload_is_enabled() {
    use crate::model::rss::tests::MS_KEY;
    use crate::model::rss::Toeplitz;
    let (arp, custom) = (0x0806u16, 0x88b5u16);
    let h = |et: u16| Toeplitz::new(&MS_KEY).hash(&et.to_be_bytes());
    assert_ne!(h(arp), h(custom));
    for (path, wire) in every_path() {
        let mut m = nic(wire);
        let mut dma = dma();
        bring_up_queues(&mut m, &mut dma);
        rss_key_and_lut_by_registers(&mut m);
        let mut sent = 0;
        let mut send = |m: &mut I40e, dma: &mut FakeDma, f: &[u8]| {
            queue_tx(m, dma, sent, f);
            m.poll(dma);
            sent += 1;
        };
        // L2_PAYLOAD off (TCP on): not hashed, the first queue; ARP typed as ARP.
        wr(&mut m, pfqf_hena(1), 1 << (PCTYPE_IPV4_TCP - 32));
        send(&mut m, &mut dma, &l2_frame(arp, false, 0));
        send(&mut m, &mut dma, &l2_frame(custom, false, 0));
        let mut want = vec![Vec::new(); 4];
        want[0].extend([(0, 0, PTYPE_L2_ARP), (0, 0, PTYPE_L2)]);
        assert_eq!(rss_received(&m, &mut dma), want, "{path}: L2_PAYLOAD off");
        // On (bit 63, PFQF_HENA(1) bit 31): the hash of the ethertype alone, in wire order; a
        // VLAN tag or other payload bytes change nothing. An IPv4 ethertype whose header does
        // not parse (version 0) is not hashed.
        wr(&mut m, pfqf_hena(1), 1 << (PCTYPE_IPV4_TCP - 32) | 1 << (PCTYPE_L2_PAYLOAD - 32));
        for (et, tagged, fill, ptype) in [
            (arp, false, 1, PTYPE_L2_ARP),
            (arp, true, 2, PTYPE_L2_ARP),
            (custom, false, 3, PTYPE_L2),
            (custom, true, 9, PTYPE_L2),
        ] {
            send(&mut m, &mut dma, &l2_frame(et, tagged, fill));
            want[(h(et) & 0x7f) as usize % 3].push((h(et), RXD_FLTSTAT_RSS, ptype));
        }
        let mut bad_ip = frame(MAC, 64, 0);
        bad_ip[14..].fill(0);
        send(&mut m, &mut dma, &bad_ip);
        want[0].push((0, 0, PTYPE_L2));
        assert_eq!(rss_received(&m, &mut dma), want, "{path}: L2_PAYLOAD on: per queue (hash, FLTSTAT, PTYPE)");
        assert_eq!(m.stats().rx_packets, 7, "{path}");
    }
}

#[test]
fn tcp_over_ipv6_behind_extension_headers_is_hashed_with_its_ports() {
    use crate::model::rss::tests::{hop_by_hop, ipv6_ext_frame, V6};
    let mut m = nic(Box::new(QueuedLoopback::default()));
    let mut dma = dma();
    bring_up_queues(&mut m, &mut dma);
    rss_key_and_lut_by_registers(&mut m);
    wr(&mut m, pfqf_hena(PCTYPE_IPV6_TCP / 32), 1 << (PCTYPE_IPV6_TCP % 32));
    let mut want = vec![Vec::new(); 4];
    for (i, (dst, dport, src, sport, _, with_ports)) in V6.iter().enumerate() {
        let f = ipv6_ext_frame(src.parse().unwrap(), dst.parse().unwrap(), &[hop_by_hop()], 6, *sport, *dport);
        want[(with_ports & 0x7f) as usize % 3].push((*with_ports, RXD_FLTSTAT_RSS, PTYPE_IPV6_TCP));
        queue_tx(&mut m, &mut dma, i as u32, &f);
        m.poll(&mut dma);
    }
    assert_eq!(rss_received(&m, &mut dma), want, "per queue: (hash, FLTSTAT, PTYPE)");
}

#[test]
fn rss_key_and_lut_set_through_the_admin_queue_read_back_and_steer() {
    use crate::model::rss::tests::{ipv4_frame, MS_KEY, V4};
    let mut m = nic(Box::new(Loopback::default()));
    let mut dma = dma();
    bring_up_queues(&mut m, &mut dma);
    let vsi = RSS_VSI_VALID | MAIN_VSI_NUMBER;
    let mut key = [0u8; RSS_KEY_LEN];
    key[..40].copy_from_slice(&MS_KEY);
    ok(&aq(&mut m, &mut dma, AQC_SET_RSS_KEY, params(&[(0, vsi)]), Some(&key), 0));
    let lut: Vec<u8> = (0..128).map(|i| (i % 4) as u8).collect();
    ok(&aq(&mut m, &mut dma, AQC_SET_RSS_LUT, params(&[(0, vsi), (2, RSS_LUT_TABLE_TYPE_PF)]), Some(&lut), 0));
    let d = aq(&mut m, &mut dma, AQC_GET_RSS_KEY, params(&[(0, vsi)]), None, RSS_KEY_LEN);
    ok(&d);
    assert_eq!(d.buf, key.to_vec(), "get_rss_key");
    let d = aq(&mut m, &mut dma, AQC_GET_RSS_LUT, params(&[(0, vsi), (2, RSS_LUT_TABLE_TYPE_PF)]), None, 128);
    ok(&d);
    assert_eq!(d.buf, lut, "get_rss_lut");
    assert_eq!(rd(&mut m, pfqf_hkey(0)), u32::from_le_bytes([MS_KEY[0], MS_KEY[1], MS_KEY[2], MS_KEY[3]]));
    assert_eq!(rd(&mut m, pfqf_hlut(0)), 0x0302_0100, "the registers hold what the command set");
    failed(&aq(&mut m, &mut dma, AQC_SET_RSS_KEY, params(&[(0, 5)]), Some(&key), 0), AQ_RC_EINVAL);
    failed(&aq(&mut m, &mut dma, AQC_SET_RSS_KEY, params(&[(0, vsi)]), Some(&key[..40]), 0), AQ_RC_EINVAL);
    wr(&mut m, pfqf_hena(1), 1 << (PCTYPE_IPV4_TCP - 32));
    // Cut-through path (idle loopback): each flow in the queue the table names.
    for (i, (dst, dport, src, sport, _, with_ports)) in V4.iter().enumerate() {
        let f = ipv4_frame(src.parse().unwrap(), dst.parse().unwrap(), 6, *sport, *dport, 0);
        queue_tx(&mut m, &mut dma, i as u32, &f);
        m.poll(&mut dma);
        let q = (with_ports & 0x7f) % 4;
        let got = rss_received(&m, &mut dma);
        assert_eq!(got[q as usize].last().map(|e| e.0), Some(*with_ports), "flow {i} in queue {q}");
    }
}

/// Every path a frame can take into the first queue: cut-through, the burst loops over the
/// wire's ring, frame by frame.
fn every_path() -> [(&'static str, Box<dyn Wire>); 3] {
    [
        ("cut-through", Box::new(Loopback::default())),
        ("wire ring", Box::new(QueuedLoopback::default())),
        ("frame by frame", Box::new(FrameByFrame(QueuedLoopback::default()))),
    ]
}

/// Context and flow director descriptors (no write-back, offloads not modelled) before every
/// frame are skipped alike on every path: the same frames, counters, faults and memory.
#[test]
fn context_descriptors_before_each_frame_are_skipped_alike_on_every_path() {
    let mut outcomes: Vec<(&str, Outcome)> = Vec::new();
    for (name, wire) in every_path() {
        let mut m = nic(wire);
        let mut dma = dma();
        bring_up(&mut m, &mut dma, false, false);
        for k in 0..3u32 {
            let d = TX_RING + u64::from(2 * k) * 16;
            put_u64(&mut dma, d, 0);
            let dtype = if k == 1 { TXD_DTYPE_FDIR } else { TXD_DTYPE_CONTEXT };
            put_u64(&mut dma, d + 8, dtype | (TXD_CMD_RS << TXD_CMD_SHIFT));
            queue_tx(&mut m, &mut dma, 2 * k + 1, &frame(MAC, 64 + k as usize, k as u8));
        }
        m.poll(&mut dma);
        m.poll(&mut dma);
        let faults = m.faults().last(100).iter().map(|f| (f.iova, f.len, f.what)).collect();
        let mut mem = vec![0u8; 0x10_0000];
        dma.read(TX_RING, &mut mem).unwrap();
        for k in 0..3u64 {
            let qw1 = get_u64(&mut dma, TX_RING + 2 * k * 16 + 8);
            assert_ne!(qw1 & TXD_DTYPE_MASK, 0xf, "no write-back of descriptor {} ({name})", 2 * k);
        }
        outcomes.push((name, (m.stats(), Vec::new(), faults, mem)));
    }
    let (_, cut) = &outcomes[0];
    assert_eq!((cut.0.tx_packets, cut.0.rx_packets), (3, 3), "{:?}", cut.0);
    for (name, other) in &outcomes[1..] {
        assert_eq!(cut.0, other.0, "stats, {name}");
        assert_eq!(cut.2, other.2, "faults, {name}");
        assert!(cut.3 == other.3, "rings and buffers, {name}");
    }
}

/// A receive tail beyond the ring is read, and recorded as a fault, only when a frame the
/// filters take needs a descriptor, on every path: frames for another address read nothing.
#[test]
fn an_rx_tail_beyond_the_ring_faults_only_for_a_frame_the_filters_take() {
    for (name, wire) in every_path() {
        let mut m = nic(wire);
        let mut dma = dma();
        bring_up(&mut m, &mut dma, false, false);
        wr(&mut m, qrx_tail(0), N + 3);
        queue_tx(&mut m, &mut dma, 0, &frame([0x02, 9, 9, 9, 9, 9], 64, 1));
        m.poll(&mut dma);
        m.poll(&mut dma);
        assert!(m.faults().last(10).is_empty(), "{name}: {:?}", m.faults().last(10));
        assert_eq!(m.stats().rx_filtered, 1, "{name}");
        queue_tx(&mut m, &mut dma, 1, &frame(MAC, 64, 2));
        m.poll(&mut dma);
        m.poll(&mut dma);
        let what: Vec<_> = m.faults().last(10).iter().map(|f| f.what).collect();
        assert_eq!(what, ["rx tail beyond ring"], "{name}");
        assert_eq!((m.stats().rx_missed, m.stats().rx_packets), (1, 0), "{name}");
    }
}
