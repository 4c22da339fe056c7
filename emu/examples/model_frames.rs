//! The 82599 model's work per frame, without threads, sockets or a driver process: a loopback
//! port brought up through its registers, then `FRAMES` 64-byte frames sent 32 at a time, each
//! `poll` moving a burst from TX descriptors straight into RX buffers (cut-through) and writing
//! both back. The "driver" side here (descriptors written, indices rung) runs outside `poll`, so
//! a profiler that collects only inside `<Ixgbe as DeviceModel>::poll` (callgrind's
//! `--toggle-collect`, see `ci/instr-per-frame.sh`) counts the device's instructions alone.
//!
//! ```text
//! model_frames [FRAMES] [--rss] [--wire]
//! ```
//!
//! FRAMES defaults to 20000; `--rss` spreads a UDP mix over four queues by RSS; `--wire` takes
//! every frame through the wire's buffer (a loopback that never reports idle, so no cut-through):
//! the path of frames between two ports.

use std::sync::atomic::Ordering;

use lab_emu::dma::{Dma, FakeDma};
use lab_emu::model::ixgbe::regs::*;
use lab_emu::model::ixgbe::Ixgbe;
use lab_emu::model::{DeviceModel, ModelConfig};
use lab_emu::wire::{Loopback, QueuedLoopback, Wire};

const BASE: u64 = 0x1_0000_0000;
const N: u32 = 512;
const BURST: u32 = 32;
const QUEUES: u32 = 4;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

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

fn main() {
    let mut args = std::env::args().skip(1);
    let mut frames: u32 = 20_000;
    let (mut rss, mut through_wire) = (false, false);
    for a in args.by_ref() {
        match a.as_str() {
            "--rss" => rss = true,
            "--wire" => through_wire = true,
            n => {
                frames =
                    n.parse().unwrap_or_else(|_| panic!("usage: model_frames [FRAMES] [--rss] [--wire]; got {n:?}"))
            }
        }
    }
    let wire: Box<dyn Wire> =
        if through_wire { Box::new(QueuedLoopback::default()) } else { Box::new(Loopback::default()) };
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
        let key = [
            0x6d5a_56dau32,
            0x255b_0ec2,
            0x4167_253d,
            0x43a3_8fb0,
            0xd0ca_2bcb,
            0xae7b_30b4,
            0x77cb_2da3,
            0x8030_f20c,
            0x6a42_b73b,
            0xbeac_01fa,
        ];
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
    let flows: Vec<Vec<u8>> = (0..256).map(frame).collect();
    for i in 0..BURST {
        dma.write(tx_buf(i), &flows[0]).expect("tx buffer");
    }

    // Per burst: 32 TX descriptors (one buffer each), TDT rung, one poll, then each RX queue's
    // consumed descriptors given back (buffer address again, DD cleared) and RDT moved.
    let (mut sent, mut tail, mut next) = (0u32, 0u32, [0u32; QUEUES as usize]);
    while sent < frames {
        for k in 0..BURST {
            let i = (tail + k) % N;
            if rss {
                dma.write(tx_buf(i), &flows[((sent + k) % 256) as usize]).expect("tx buffer");
            }
            let d = ring(0, true) + u64::from(i) * 16;
            put(&mut dma, d, tx_buf(i));
            // Report status on the burst's last descriptor only, as the driver does (every 32nd).
            let rs = if k == BURST - 1 { TXD_CMD_RS } else { 0 };
            let cmd = 60u32 | (0x3 << TXD_DTYP_SHIFT) | TXD_CMD_EOP | TXD_CMD_IFCS | rs | TXD_CMD_DEXT;
            put(&mut dma, d + 8, u64::from(cmd) | (60u64 << 46));
        }
        tail = (tail + BURST) % N;
        page.write32(tdt(0) as usize, tail);
        m.poll(&mut dma);
        for q in 0..queues {
            let head = page.read32(rdh(q) as usize).unwrap_or(0);
            let mut i = next[q as usize];
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
    let s = m.stats();
    assert_eq!(s.rx_packets, u64::from(sent), "every frame received ({s:?})");
    std::sync::atomic::fence(Ordering::SeqCst);
    println!("{sent} frames through the 82599 model ({} queue{})", queues, if queues > 1 { "s, RSS" } else { "" });
}
