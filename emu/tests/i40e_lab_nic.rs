//! Integration tests of the i40e model: the real `lab-nic` binary over real sockets, driven with the
//! `vfio_user` client as a driver would (register offsets written out from the X710 datasheet here).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab_emu::mem::Mapping;
use lab_testkit::LabNic;
use vfio_user::Client;

const BDF: &str = "0000:00:0b.0";
const IOVA: u64 = 0x1_0000_0000;

const PFGEN_PORTNUM: u64 = 0x001c_0480;
const PFLAN_QALLOC: u64 = 0x001c_0400;
const GLNVM_FLA: u64 = 0x000b_6108;
const PF_ATQBAL: u64 = 0x0008_0000;
const PF_ATQBAH: u64 = 0x0008_0100;
const PF_ATQLEN: u64 = 0x0008_0200;
const PF_ATQH: u64 = 0x0008_0300;
const PF_ATQT: u64 = 0x0008_0400;

/// lab-nic (stopped by pid on drop) and its sysfs root.
struct Lab {
    _nic: LabNic,
    root: PathBuf,
}

fn spawn(dev: &str) -> Lab {
    let nic = LabNic::builder().bin(env!("CARGO_BIN_EXE_lab-nic")).dev(dev).start();
    let root = nic.root().to_path_buf();
    Lab { _nic: nic, root }
}

fn rd32(c: &mut Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wr32(c: &mut Client, off: u64, v: u32) {
    c.region_write(0, off, &v.to_le_bytes()).unwrap();
}

#[test]
fn i40e_function_has_x710_identity_bars_and_tail_pages() {
    let lab = spawn(&format!("{BDF},model=i40e,wire=loopback"));
    let dir = lab.root.join(BDF);
    let rd = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert_eq!(rd("vendor"), "0x8086\n");
    assert_eq!(rd("device"), "0x1572\n");
    assert_eq!(rd("class"), "0x020000\n");
    let res = rd("resource");
    let size = |line: &str| {
        let f: Vec<u64> =
            line.split_whitespace().map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()).collect();
        f[1] - f[0] + 1
    };
    let lines: Vec<&str> = res.lines().collect();
    assert_eq!(size(lines[0]), 8 << 20, "BAR0 8 MiB");
    assert_eq!(size(lines[3]), 32 << 10, "BAR3 (MSI-X) 32 KiB");

    let mut c = Client::new(&dir.join("vfio-user.sock")).unwrap();
    let bar0 = c.region(0).unwrap();
    assert_eq!(bar0.size, 8 << 20);
    let areas: Vec<(u64, u64)> = bar0.sparse_areas.iter().map(|a| (a.offset, a.size)).collect();
    assert_eq!(areas, vec![(0x10_8000, 0x2000), (0x12_8000, 0x2000)], "QTX_TAIL and QRX_TAIL pages");
    assert_eq!(rd32(&mut c, PFGEN_PORTNUM), 0);
    assert_ne!(rd32(&mut c, PFLAN_QALLOC) & (1 << 31), 0);
    assert_ne!(rd32(&mut c, GLNVM_FLA) & (1 << 6), 0);
}

#[test]
fn admin_command_is_executed_by_the_device_thread_over_dma() {
    let lab = spawn(&format!("{BDF},model=i40e"));
    let mut c = Client::new(&lab.root.join(BDF).join("vfio-user.sock")).unwrap();
    c.region_write(7, 4, &6u16.to_le_bytes()).unwrap(); // memory + bus master
    let mem = Mapping::memfd("i40e-aq", 1 << 16).unwrap();
    c.dma_map(0, IOVA, 1 << 16, mem.raw_fd().unwrap()).unwrap();
    wr32(&mut c, PF_ATQH, 0);
    wr32(&mut c, PF_ATQT, 0);
    wr32(&mut c, PF_ATQBAL, IOVA as u32);
    wr32(&mut c, PF_ATQBAH, (IOVA >> 32) as u32);
    wr32(&mut c, PF_ATQLEN, 8 | (1 << 31));
    // Descriptor 0: get_version (0x0001), direct, SI.
    let mut d = [0u8; 32];
    d[0..2].copy_from_slice(&0x2000u16.to_le_bytes());
    d[2..4].copy_from_slice(&0x0001u16.to_le_bytes());
    assert!(mem.write(0, &d));
    wr32(&mut c, PF_ATQT, 1);
    let end = Instant::now() + Duration::from_secs(5);
    while rd32(&mut c, PF_ATQH) != 1 {
        assert!(Instant::now() < end, "ATQH did not advance");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(mem.read(0, &mut d));
    assert_eq!(u16::from_le_bytes([d[0], d[1]]) & 0x7, 0x3, "DD|CMP, no ERR");
    assert_eq!(u16::from_le_bytes([d[6], d[7]]), 0, "retval OK");
    assert_eq!(u16::from_le_bytes([d[28], d[29]]), 1, "API major 1");
}
