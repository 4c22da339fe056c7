//! The VM tier: a Debian kernel under QEMU with a vIOMMU, our guest suite driving real kernel
//! VFIO on QEMU's virtio-net and e1000e functions, and a PCIe hot-add/remove through QMP.
//! Skips with one line when QEMU, a kernel or busybox is missing (`ci/vm.sh` provides them).

use std::path::Path;
use std::time::Duration;

use lab_vm::image::busybox;
use lab_vm::qemu::qemu;
use lab_vm::{run_suite_with_host, Accel, Image, Kernel, VmConfig};

const GUEST: &str = env!("CARGO_BIN_EXE_lab-vm-guest");

/// Root ports 1 and 2 hold the functions the suite binds, 3 the unbound one, `hp` is empty for
/// the hot-add.
fn devices(mq_tap: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = [
        "-device pcie-root-port,id=rp1,chassis=1,slot=1,bus=pcie.0",
        "-device pcie-root-port,id=rp2,chassis=2,slot=2,bus=pcie.0",
        "-device pcie-root-port,id=rp3,chassis=3,slot=3,bus=pcie.0",
        "-device pcie-root-port,id=hp,chassis=4,slot=4,bus=pcie.0",
        "-device pcie-root-port,id=rp5,chassis=5,slot=5,bus=pcie.0",
        "-netdev hubport,id=n1,hubid=0",
        "-netdev hubport,id=n2,hubid=1",
        "-netdev hubport,id=nhot,hubid=2",
        // iommu_platform: the device's DMA goes through the vIOMMU (VIRTIO_F_ACCESS_PLATFORM).
        "-device virtio-net-pci,id=net1,bus=rp1,netdev=n1,disable-legacy=on,iommu_platform=on,mac=52:54:00:12:34:01",
        "-device e1000e,id=nic2,bus=rp2,netdev=n2,mac=52:54:00:12:34:02",
        "-device virtio-rng-pci,id=rng3,bus=rp3,disable-legacy=on",
        // On hub 0 with net1: the two virtio-nets are cabled to each other.
        "-netdev hubport,id=n5,hubid=0",
        "-device virtio-net-pci,id=net5,bus=rp5,netdev=n5,disable-legacy=on,iommu_platform=on,mq=on,mac=52:54:00:12:34:05",
        // rp6 holds the multiqueue function when there is a TAP for it (below), and stays so
        // that the bond's functions are on buses 7 to 10 either way.
        "-device pcie-root-port,id=rp6,chassis=6,slot=6,bus=pcie.0",
        // The 802.3ad check: our net_bonding over bonda1/bonda2 (vfio-pci, net_virtio) cabled
        // (hubs 3 and 4) to bondb1/bondb2, which the guest kernel's virtio_net drives as the
        // members of a Linux bond0. Full duplex at 10G: Linux aggregates only full-duplex ports.
        "-device pcie-root-port,id=rp7,chassis=7,slot=7,bus=pcie.0",
        "-device pcie-root-port,id=rp8,chassis=8,slot=8,bus=pcie.0",
        "-device pcie-root-port,id=rp9,chassis=9,slot=9,bus=pcie.0",
        "-device pcie-root-port,id=rp10,chassis=10,slot=10,bus=pcie.0",
        "-netdev hubport,id=la1,hubid=3",
        "-netdev hubport,id=lb1,hubid=3",
        "-netdev hubport,id=la2,hubid=4",
        "-netdev hubport,id=lb2,hubid=4",
        "-device virtio-net-pci,id=bonda1,bus=rp7,netdev=la1,disable-legacy=on,iommu_platform=on,mac=52:54:00:12:34:a1",
        "-device virtio-net-pci,id=bonda2,bus=rp8,netdev=la2,disable-legacy=on,iommu_platform=on,mac=52:54:00:12:34:a2",
        "-device virtio-net-pci,id=bondb1,bus=rp9,netdev=lb1,disable-legacy=on,speed=10000,duplex=full,mac=52:54:00:12:34:b1",
        "-device virtio-net-pci,id=bondb2,bus=rp10,netdev=lb2,disable-legacy=on,speed=10000,duplex=full,mac=52:54:00:12:34:b2",
    ]
    .iter()
    .flat_map(|a| a.splitn(2, ' ').map(str::to_string).collect::<Vec<_>>())
    .collect();
    // A two-queue TAP QEMU creates (and removes when it exits) behind a multiqueue virtio-net.
    if let Some(tap) = mq_tap {
        for a in [
            "-netdev".to_string(),
            format!("tap,id=nmq,ifname={tap},script=no,downscript=no,queues=2,vhost=off"),
            "-device".to_string(),
            "virtio-net-pci,id=netmq,bus=rp6,netdev=nmq,mq=on,vectors=6,disable-legacy=on,iommu_platform=on,mac=52:54:00:12:34:66"
                .to_string(),
        ] {
            v.push(a);
        }
    }
    v
}

/// The host side of the multiqueue check: capture what the guest sends on the TAP, inject 64
/// flows into it.
struct TapHost {
    tap: String,
    capture: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl TapHost {
    fn up(&self) -> Result<(), String> {
        let st = std::process::Command::new("ip").args(["link", "set", &self.tap, "up"]).status();
        match st {
            Ok(s) if s.success() => {}
            other => return Err(format!("ip link set {} up: {other:?}", self.tap)),
        }
        // Up means up: frames sent or received before that are dropped by the kernel.
        let state = format!("/sys/class/net/{}/operstate", self.tap);
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() != "down") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{} still down 2 s after ip link set up", self.tap))
    }

    fn ask(&mut self, a: &str) -> Result<String, String> {
        let w: Vec<&str> = a.split_whitespace().collect();
        match w.as_slice() {
            ["capture-start", n] => {
                self.up()?;
                let n: usize = n.parse().map_err(|_| "bad count")?;
                let sock = lab_testkit::RawSock::bind(&self.tap);
                self.capture = Some(std::thread::spawn(move || {
                    sock.recv(n, Duration::from_secs(10), |f| f.len() >= 14 && f[12..14] == [0x88, 0xb6])
                }));
                Ok("capturing".into())
            }
            ["capture-end"] => {
                let got = self.capture.take().ok_or("no capture running")?.join().map_err(|_| "capture panicked")?;
                let per: Vec<usize> = (0..2u8).map(|q| got.iter().filter(|f| f[11] == q).count()).collect();
                if per == [32, 32] {
                    Ok("32 frames from each transmit queue".to_string())
                } else {
                    Err(format!("the host saw {per:?} frames from transmit queues 0 and 1, want 32 each"))
                }
            }
            ["inject", n] => {
                self.up()?;
                let n: u16 = n.parse().map_err(|_| "bad count")?;
                let sock = lab_testkit::RawSock::bind(&self.tap);
                for i in 0..n {
                    sock.send(&udp_frame(i));
                }
                Ok(format!("{n} flows injected"))
            }
            _ => Err(format!("unknown host request {a:?}")),
        }
    }
}

/// An IPv4/UDP frame to the multiqueue function, flow `i` (source port 1000 + i, dest port 9).
fn udp_frame(i: u16) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0x00, 0x12, 0x34, 0x66, 0x02, 0x4c, 0x41, 0x42, 0x00, 0x07, 0x08, 0x00];
    let (ip_len, udp_len) = (20u16 + 8 + 32, 8u16 + 32);
    f.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let sport = 1000 + i;
    f.extend_from_slice(&[(sport >> 8) as u8, sport as u8, 0, 9, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    f.resize(14 + ip_len as usize, 0x5a);
    f
}

/// DPDK 22.11's own hotplug_mp (built by ci/peers.sh from Debian's dpdk-doc into target/dpdk)
/// as `/lab/dpdk-hotplug_mp`, with the driver plugins it needs for a virtio-net function; the
/// guest's side-by-side check skips without it.
fn dpdk_hotplug_mp(img: &mut Image) {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dpdk/hotplug_mp/build/hotplug_mp");
    let pmds = Path::new("/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0");
    if !bin.is_file() || !pmds.is_dir() {
        return;
    }
    img.binary_as(&bin, "dpdk-hotplug_mp").unwrap();
    // EAL loads every driver in its plugin directory: only these, as links to the one copy of
    // each library (a second copy would register its bus twice).
    for p in ["librte_bus_pci.so.23", "librte_bus_vdev.so.23", "librte_mempool_ring.so.23", "librte_net_virtio.so.23"] {
        let lib = format!("lib/x86_64-linux-gnu/{p}");
        img.library(&pmds.join(p), &lib).unwrap();
        // Named `.so`: EAL loads `*.so` and `*.so.23.0` from the directory, not `*.so.23`.
        let link = p.trim_end_matches(".23");
        img.symlink(&format!("usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0/{link}"), &format!("/{lib}")).unwrap();
    }
}

#[test]
fn kernel_vfio_on_a_real_kernel_with_a_viommu() {
    let (qemu, kernel, bb) = match (qemu(), Kernel::find(), busybox()) {
        (Ok(q), Ok(k), Ok(b)) => (q, k, b),
        (q, k, b) => {
            let missing: Vec<String> =
                [q.err(), k.err(), b.err()].into_iter().flatten().map(|m| m.to_string()).collect();
            eprintln!("skipped: the VM tier needs {} (ci/vm.sh installs them as root)", missing.join(", "));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut img = Image::new(&bb).unwrap();
    img.modules(&kernel, &["vfio-pci", "vfio_iommu_type1"]).unwrap();
    // The Linux side of the 802.3ad check, loaded by that check (virtio_pci at boot would take
    // every virtio function before the suite binds them to vfio-pci).
    img.modules_later(&kernel, &["virtio_pci", "virtio_net", "bonding"]).unwrap();
    let guest = img.binary(Path::new(GUEST)).unwrap();
    // `lab run --real` in the guest needs lab and hotplug_mp (built by `cargo test --workspace`,
    // next to the guest binary) and the scenario library; without them that check skips.
    let bins = Path::new(GUEST).parent().unwrap();
    if ["lab", "hotplug_mp"].iter().all(|b| bins.join(b).is_file()) {
        for b in ["lab", "hotplug_mp"] {
            img.binary(&bins.join(b)).unwrap();
        }
        dpdk_hotplug_mp(&mut img);
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../harness/scenarios");
        for e in std::fs::read_dir(&lib).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") {
                img.file(&format!("lab/scenarios/{name}"), 0o644, &std::fs::read(e.path()).unwrap()).unwrap();
            }
        }
    }
    // LAB_VM_DEBUG: shell commands the guest runs before the suite (`lsmod; dmesg | tail`).
    img.init(&format!("{}{guest} suite", std::env::var("LAB_VM_DEBUG").unwrap_or_default())).unwrap();
    let initrd = dir.path().join("initrd.cpio");
    img.write(&initrd).unwrap();
    let accel = Accel::detect();
    // The multiqueue function needs a TAP: root and /dev/net/tun (its check skips otherwise).
    let mq_tap = (nix::unistd::geteuid().is_root() && Path::new("/dev/net/tun").exists())
        .then(|| format!("labmq{}", std::process::id() % 100_000));
    let cfg = VmConfig {
        kernel: kernel.image.clone(),
        initrd,
        append: String::new(),
        mem_mb: 1024,
        cpus: 2,
        iommu: true,
        args: devices(mq_tap.as_deref()),
        dir: dir.path().to_path_buf(),
    };
    let within = if accel == Accel::Kvm { Duration::from_secs(180) } else { Duration::from_secs(600) };
    let mut host = TapHost { tap: mq_tap.clone().unwrap_or_default(), capture: None };
    let r = run_suite_with_host(&qemu, accel, &cfg, within, &mut |a| host.ask(a)).unwrap();
    eprintln!(
        "VM tier ({:?}{}, kernel {}): boot {:?}, total {:?}; {} checks passed {:?}; skipped {:?}; notes {:?}",
        r.accel,
        r.fallback.as_deref().map(|f| format!(", {f}")).unwrap_or_default(),
        kernel.version,
        r.boot,
        r.total,
        r.passed.len(),
        r.passed,
        r.skipped,
        r.notes
    );
    for (a, o) in &r.asked {
        eprintln!("asked {a}: {o:?}");
    }
    // The guest's checks as JUnit, next to the unpacked kernel.
    let junit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm/lab-vm-guest.junit.xml");
    if std::fs::create_dir_all(junit.parent().unwrap()).is_ok() {
        let _ = std::fs::write(&junit, r.junit("lab-vm-guest"));
        let _ = std::fs::write(junit.with_file_name("lab-vm-guest.console.log"), &r.console);
    }
    let ctx = || format!("console:\n{}", r.console);
    assert!(r.boot.is_some(), "the guest never came up; {}", ctx());
    assert!(r.failed.is_empty(), "failed in the guest: {:#?}\n{}", r.failed, ctx());
    assert_eq!(r.rc, Some(0), "guest suite exit code; {}", ctx());
    assert!(r.asked.iter().all(|(_, o)| o.is_ok()), "QMP: {:?}", r.asked);
    // The lab logged no error, and every group left its container cleanly (a BAR still mapped
    // when its device closed kept the device open: UNSET_CONTAINER failed with EBUSY).
    // net_virtio negotiated the control queue, and on net5 (mq=on) multiqueue (bit 22), whose
    // VQ_PAIRS_SET went through the control queue.
    let ready: Vec<&str> =
        r.console.lines().filter(|l| l.contains("virtio-net port ready") && l.contains("role=\"primary\"")).collect();
    assert!(ready.iter().all(|l| l.contains("control_queue=true")), "{ready:#?}");
    assert!(
        ready.iter().any(|l| l.contains("0000:05:00.0")
            && l.split("features=0x")
                .nth(1)
                .and_then(|f| u64::from_str_radix(f.split_whitespace().next()?, 16).ok())
                .is_some_and(|f| f & (1 << 22) != 0)),
        "net5 without VIRTIO_NET_F_MQ: {ready:#?}"
    );
    for bad in ["VFIO_GROUP_UNSET_CONTAINER failed", " ERROR "] {
        assert!(!r.console.contains(bad), "the guest logged {bad:?}; {}", ctx());
    }
    for name in [
        "bind_to_vfio_pci",
        "lab_core_pci_scan_reads_the_real_sysfs",
        "virtio_net_config_space_matches_sysfs",
        "e1000e_bar_mmap_agrees_with_pread",
        "dma_map_lab_memory_on_dev_shm",
        "secondary_adopts_container_and_group_fds",
        "net_virtio_frames_cross_the_cable_byte_identical",
        "hot_add_then_remove_while_open_asks_for_release",
        "net_bonding_802_3ad_and_active_backup_against_linux_bonding_with_failover",
    ] {
        assert!(r.passed.iter().any(|(n, _)| n == name), "check {name} did not pass; {}", ctx());
    }
}
