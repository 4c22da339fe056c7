//! A NIC model's work per frame (the 82599, or with `--i40e` the X710), without threads, sockets
//! or a driver process: a loopback port brought up through its registers, then `FRAMES` 64-byte
//! frames sent 32 at a time, each `poll` moving a burst from TX descriptors straight into RX
//! buffers (cut-through) and writing both back. The "driver" side here (descriptors written, indices rung) runs outside `poll`, so
//! a profiler that collects only inside `<Ixgbe as DeviceModel>::poll` (callgrind's
//! `--toggle-collect`, see `ci/instr-per-frame.sh`) counts the device's instructions alone.
//!
//! ```text
//! model_frames [FRAMES] [--rss] [--wire] [--i40e]
//! ```
//!
//! FRAMES defaults to 20000; `--rss` spreads a UDP mix over four queues by RSS; `--wire` takes
//! every frame through the wire's buffer (a loopback that never reports idle, so no cut-through):
//! the path of frames between two ports.

use std::sync::atomic::Ordering;

use lab_emu::dma::{Dma, FakeDma};
use lab_emu::model::i40e::regs as x7;
use lab_emu::model::i40e::I40e;
use lab_emu::model::ixgbe::regs::*;
use lab_emu::model::ixgbe::Ixgbe;
use lab_emu::model::{DeviceModel, ModelConfig};
use lab_emu::wire::{Loopback, QueuedLoopback, Wire};

const BASE: u64 = 0x1_0000_0000;
const N: u32 = 512;
const BURST: u32 = 32;
const QUEUES: u32 = 4;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The RSS key of Microsoft's verification suite.
const MS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

fn ring(q: u32, tx: bool) -> u64 {
    BASE + if tx { 0x10_0000 } else { 0 } + u64::from(q) * 0x4000
}

fn rx_buf(q: u32, i: u32) -> u64 {
    BASE + 0x20_0000 + u64::from(q) * 0x10_0000 + u64::from(i) * 2048
}

fn tx_buf(i: u32) -> u64 {
    BASE + 0x80_0000 + u64::from(i % BURST) * 2048
}

fn wr(m: &mut dyn DeviceModel, off: u32, v: u32) {
    m.bar_write(0, u64::from(off), &v.to_le_bytes());
}

fn rd(m: &mut dyn DeviceModel, off: u32) -> u32 {
    let mut b = [0u8; 4];
    m.bar_read(0, u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn put(dma: &mut FakeDma, iova: u64, v: u64) {
    dma.write(iova, &v.to_le_bytes()).expect("inside the window");
}

/// A 60-byte UDP/IPv4 frame of flow `f`, to the port's address.
fn frame(f: u32) -> Vec<u8> {
    let mut x = vec![0u8; 60];
    x[..6].copy_from_slice(&MAC);
    x[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x55, 0x01]);
    x[12..14].copy_from_slice(&[0x08, 0x00]);
    x[14..24].copy_from_slice(&[0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17]);
    x[26..30].copy_from_slice(&[10, 0, (f >> 8) as u8, f as u8]);
    x[30..34].copy_from_slice(&[10, 1, 0, 1]);
    x[34..36].copy_from_slice(&(1024 + f as u16).to_be_bytes());
    x
}

/// The flow mix (256 UDP flows), the first written into every TX buffer.
fn flows(dma: &mut FakeDma) -> Vec<Vec<u8>> {
    let flows: Vec<Vec<u8>> = (0..256).map(frame).collect();
    for i in 0..BURST {
        dma.write(tx_buf(i), &flows[0]).expect("tx buffer");
    }
    flows
}

/// A burst of 32 one-buffer TX descriptors from `tail` on, in both models' 16-byte layout (buffer
/// address, then `qw1`, whose argument says the burst's last: status is reported there only, as
/// the drivers do). With `rss`, each buffer gets the next flow of the mix.
fn post_tx(dma: &mut FakeDma, flows: &[Vec<u8>], tail: u32, sent: u32, rss: bool, qw1: impl Fn(bool) -> u64) {
    for k in 0..BURST {
        let i = (tail + k) % N;
        if rss {
            dma.write(tx_buf(i), &flows[((sent + k) % 256) as usize]).expect("tx buffer");
        }
        let d = ring(0, true) + u64::from(i) * 16;
        put(dma, d, tx_buf(i));
        put(dma, d + 8, qw1(k == BURST - 1));
    }
}

/// The run's checks: every frame received and written back, and each queue with its share.
fn finish(m: &dyn DeviceModel, model: &str, sent: u32, per_queue: &[u32]) {
    let s = m.stats();
    assert_eq!(s.rx_packets, u64::from(sent), "every frame received ({s:?})");
    assert_eq!(per_queue.iter().sum::<u32>(), sent, "every frame written back");
    assert!(per_queue.iter().all(|&n| n > 0), "every queue has its share: {per_queue:?}");
    std::sync::atomic::fence(Ordering::SeqCst);
    let queues = per_queue.len();
    println!("{sent} frames through the {model} model ({queues} queue{})", if queues > 1 { "s, RSS" } else { "" });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut frames: u32 = 20_000;
    let (mut rss, mut through_wire, mut x710) = (false, false, false);
    for a in args.by_ref() {
        match a.as_str() {
            "--rss" => rss = true,
            "--wire" => through_wire = true,
            "--i40e" => x710 = true,
            n => {
                frames = n
                    .parse()
                    .unwrap_or_else(|_| panic!("usage: model_frames [FRAMES] [--rss] [--wire] [--i40e]; got {n:?}"))
            }
        }
    }
    let wire: Box<dyn Wire> =
        if through_wire { Box::new(QueuedLoopback::default()) } else { Box::new(Loopback::default()) };
    if x710 {
        return i40e(frames, rss, wire);
    }
    let queues = if rss { QUEUES } else { 1 };
    let mut dma = FakeDma::new(BASE, 0x100_0000);
    // Behind a trait object the profiler sees `poll` as a function of its own (not inlined).
    let model = Ixgbe::new(ModelConfig { bdf: "0000:00:05.0".into(), function: 0, mac: MAC, wire }).expect("model");
    let mut m: Box<dyn DeviceModel> = std::hint::black_box(Box::new(model));
    let m = m.as_mut();
    // The ixy bring-up (datasheet 4.6.3 - 4.6.8).
    m.config_write(4, &0x0006u16.to_le_bytes());
    wr(m, EIMC, 0x7fff_ffff);
    wr(m, CTRL, CTRL_RST | CTRL_LNK_RST);
    wr(m, AUTOC, (3 << 13) | AUTOC_AN_RESTART);
    let v = rd(m, HLREG0);
    wr(m, HLREG0, v | HLREG0_RXCRCSTRP | HLREG0_TXCRCEN | HLREG0_TXPADEN);
    wr(m, FCTRL, FCTRL_BAM);
    for q in 0..queues {
        let v = rd(m, srrctl(q));
        wr(m, srrctl(q), (v & !SRRCTL_DESCTYPE_MASK) | (1 << SRRCTL_DESCTYPE_SHIFT));
        wr(m, rdbal(q), ring(q, false) as u32);
        wr(m, rdbah(q), (ring(q, false) >> 32) as u32);
        wr(m, rdlen(q), N * 16);
        for i in 0..N {
            put(&mut dma, ring(q, false) + u64::from(i) * 16, rx_buf(q, i));
            put(&mut dma, ring(q, false) + u64::from(i) * 16 + 8, 0);
        }
    }
    if rss {
        let key: [u32; 10] = std::array::from_fn(|n| u32::from_be_bytes(MS_KEY[4 * n..4 * n + 4].try_into().unwrap()));
        for (n, k) in key.iter().enumerate() {
            wr(m, rssrk(n as u32), k.swap_bytes());
        }
        for n in 0..RETA_REGS {
            let e = |k: u32| ((4 * n + k) % QUEUES) << (8 * k);
            wr(m, reta(n), e(0) | e(1) | e(2) | e(3));
        }
        wr(m, RXCSUM, RXCSUM_PCSD);
        wr(m, MRQC, MRQC_MRQE_RSS | MRQC_RSS_IPV4 | MRQC_RSS_UDPIPV4);
    }
    wr(m, RXCTRL, RXCTRL_RXEN);
    wr(m, tdbal(0), ring(0, true) as u32);
    wr(m, tdbah(0), (ring(0, true) >> 32) as u32);
    wr(m, tdlen(0), N * 16);
    wr(m, DMATXCTL, DMATXCTL_TE);
    for q in 0..queues {
        wr(m, rxdctl(q), RXDCTL_ENABLE);
        wr(m, rdh(q), 0);
        wr(m, rdt(q), N - 1);
    }
    wr(m, txdctl(0), TXDCTL_ENABLE);
    wr(m, tdh(0), 0);
    wr(m, tdt(0), 0);
    m.poll(&mut dma);
    assert_ne!(rd(m, LINKS) & LINKS_UP, 0, "link up");
    // Tails and heads in the loop go through the queue pages, as a driver's mmapped doorbells
    // do (a trapped write would also make the device rescan its queue enables).
    let page = m.bar_memory(0).expect("BAR0 memory");
    let flows = flows(&mut dma);

    // Per burst: 32 TX descriptors (one buffer each), TDT rung, one poll, then each RX queue's
    // consumed descriptors given back (buffer address again, DD cleared) and RDT moved.
    let (mut sent, mut tail, mut next) = (0u32, 0u32, [0u32; QUEUES as usize]);
    let mut per_queue = [0u32; QUEUES as usize];
    while sent < frames {
        post_tx(&mut dma, &flows, tail, sent, rss, |last| {
            let rs = if last { TXD_CMD_RS } else { 0 };
            let cmd = 60u32 | (0x3 << TXD_DTYP_SHIFT) | TXD_CMD_EOP | TXD_CMD_IFCS | rs | TXD_CMD_DEXT;
            u64::from(cmd) | (60u64 << 46)
        });
        tail = (tail + BURST) % N;
        page.write32(tdt(0) as usize, tail);
        m.poll(&mut dma);
        for q in 0..queues {
            let head = page.read32(rdh(q) as usize).unwrap_or(0);
            let mut i = next[q as usize];
            per_queue[q as usize] += (head + N - i) % N;
            while i != head {
                let d = ring(q, false) + u64::from(i) * 16;
                put(&mut dma, d, rx_buf(q, i));
                put(&mut dma, d + 8, 0);
                i = (i + 1) % N;
            }
            next[q as usize] = head;
            page.write32(rdt(q) as usize, (head + N - 1) % N);
        }
        sent += BURST;
    }
    finish(m, "82599", sent, &per_queue[..queues as usize]);
}

/// Sets the `width` bits of `v` at bit `lsb` of a context image (X710 HMC contexts).
fn set_field(buf: &mut [u8], (lsb, width): (usize, usize), v: u64) {
    for i in 0..width {
        let bit = lsb + i;
        if v >> i & 1 != 0 {
            buf[bit / 8] |= 1 << (bit % 8);
        }
    }
}

/// HMC memory of the X710 run: LAN TX contexts at FPM 0, RX contexts 8 KiB in.
const HMC: u64 = BASE + 0xc0_0000;
const RX_CTX_512: u32 = 16;

/// The same run on the X710 model: HMC contexts for the rings, QENA handshakes, and with `rss`
/// RSS by the hash key, lookup table and PFQF_HENA registers (UDP over IPv4).
fn i40e(frames: u32, rss: bool, wire: Box<dyn Wire>) {
    use x7::*;
    let queues = if rss { QUEUES } else { 1 };
    let mut dma = FakeDma::new(BASE, 0x100_0000);
    let model = I40e::new(ModelConfig { bdf: "0000:00:06.0".into(), function: 0, mac: MAC, wire }).expect("model");
    let mut m: Box<dyn DeviceModel> = std::hint::black_box(Box::new(model));
    let m = m.as_mut();
    m.config_write(4, &0x0006u16.to_le_bytes());
    wr(m, glhmc_lantxbase(0), 0);
    wr(m, glhmc_lantxcnt(0), PF_QUEUES);
    wr(m, glhmc_lanrxbase(0), RX_CTX_512);
    wr(m, glhmc_lanrxcnt(0), PF_QUEUES);
    wr(m, PFHMC_SDDATAHIGH, (HMC >> 32) as u32);
    wr(m, PFHMC_SDDATALOW, HMC as u32 | PFHMC_SDDATALOW_VALID | PFHMC_SDDATALOW_TYPE_DIRECT | (512 << 2));
    wr(m, PFHMC_SDCMD, PFHMC_SDCMD_WR);
    let mut c = [0u8; TX_CTX_LEN];
    set_field(&mut c, TXC_NEW_CONTEXT, 1);
    set_field(&mut c, TXC_BASE, ring(0, true) / 128);
    set_field(&mut c, TXC_QLEN, u64::from(N));
    dma.write(HMC, &c).expect("tx context");
    for q in 0..queues {
        let mut c = [0u8; RX_CTX_LEN];
        set_field(&mut c, RXC_BASE, ring(q, false) / 128);
        set_field(&mut c, RXC_QLEN, u64::from(N));
        set_field(&mut c, RXC_DBUFF, 2048 / 128);
        set_field(&mut c, RXC_CRCSTRIP, 1);
        set_field(&mut c, RXC_RXMAX, 9728);
        dma.write(HMC + u64::from(RX_CTX_512) * 512 + u64::from(q) * 32, &c).expect("rx context");
        for i in 0..N {
            put(&mut dma, ring(q, false) + u64::from(i) * 16, rx_buf(q, i));
            put(&mut dma, ring(q, false) + u64::from(i) * 16 + 8, 0);
        }
        wr(m, qrx_tail(q), N - 1);
        wr(m, qrx_ena(q), QENA_REQ);
    }
    if rss {
        // Microsoft's verification key, then filler to the X710's 52 bytes.
        let key: [u8; 52] = std::array::from_fn(|i| match i {
            0..40 => MS_KEY[i],
            _ => i as u8,
        });
        for n in 0..13u32 {
            let k = 4 * n as usize;
            wr(m, pfqf_hkey(n), u32::from_le_bytes([key[k], key[k + 1], key[k + 2], key[k + 3]]));
        }
        for n in 0..PFQF_HLUT_REGS {
            let e = |k: u32| ((4 * n + k) % QUEUES) << (8 * k);
            wr(m, pfqf_hlut(n), e(0) | e(1) | e(2) | e(3));
        }
        wr(m, pfqf_hena(0), 1 << PCTYPE_IPV4_UDP);
    }
    wr(m, qtx_ctl(0), 2);
    wr(m, qtx_ena(0), QENA_REQ);
    m.poll(&mut dma);
    for q in 0..queues {
        assert_eq!(rd(m, qrx_ena(q)) & QENA_STAT, QENA_STAT, "rx queue {q} enabled");
    }
    assert_eq!(rd(m, qtx_ena(0)) & QENA_STAT, QENA_STAT, "tx queue enabled");
    let page = m.bar_memory(0).expect("BAR0 memory");
    let flows = flows(&mut dma);
    // Per burst: 32 TX descriptors, QTX_TAIL rung, one poll, then the descriptors each RX queue
    // wrote back (DD) given back and QRX_TAIL moved, as a driver does.
    let (mut sent, mut tail, mut next) = (0u32, 0u32, [0u32; QUEUES as usize]);
    let mut per_queue = [0u32; QUEUES as usize];
    while sent < frames {
        post_tx(&mut dma, &flows, tail, sent, rss, |last| {
            let rs = if last { TXD_CMD_RS } else { 0 };
            TXD_DTYPE_DATA | (TXD_CMD_EOP | rs | 0x4) << TXD_CMD_SHIFT | (60u64 << TXD_BSZ_SHIFT)
        });
        tail = (tail + BURST) % N;
        page.write32(qtx_tail(0) as usize, tail);
        m.poll(&mut dma);
        for q in 0..queues {
            let mut i = next[q as usize];
            loop {
                let d = ring(q, false) + u64::from(i) * 16;
                if dma.read_u64(d + 8).expect("rx descriptor") & RXD_STATUS_DD == 0 {
                    break;
                }
                put(&mut dma, d, rx_buf(q, i));
                put(&mut dma, d + 8, 0);
                i = (i + 1) % N;
                per_queue[q as usize] += 1;
            }
            next[q as usize] = i;
            page.write32(qrx_tail(q) as usize, (i + N - 1) % N);
        }
        sent += BURST;
    }
    finish(m, "X710", sent, &per_queue[..queues as usize]);
}
