//! The guest half of the VM tier: runs inside the VM as `/init`'s suite, binds QEMU's emulated
//! PCI functions to vfio-pci and drives them through lab-vfio's kernel transport, printing one
//! `LAB-VM check ...` line per check on the console (see the `lab-vm` crate).
//!
//! `lab-vm-guest suite` runs every check; `lab-vm-guest adopt SOCKET BDF GROUP` is the
//! secondary of the fd-passing check (a real second process, as a lab secondary is).

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab_vfio::{
    open_pci, AdoptedFds, Bar, DeviceIo, DmaRegion, KernelDevice, OpenOptions, RealVfio, VfioSys, CONFIG_REGION_INDEX,
    MSIX_IRQ_INDEX, REGION_MMAP,
};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// PCI ids the host puts in the guest for the suite.
const VIRTIO_NET: (u16, u16) = (0x1af4, 0x1041);
const E1000E: (u16, u16) = (0x8086, 0x10d3);
/// Left unbound on purpose: the "not bound" error.
const VIRTIO_RNG: (u16, u16) = (0x1af4, 0x1044);
const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;

type Check = Result<Option<String>, String>;

fn main() {
    // The lab's own logs (warnings up) go to the console with the checks.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAB_VM_LOG")
        .unwrap_or_else(|_| "warn,lab_drivers::virtio=info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).try_init();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("suite") => std::process::exit(suite()),
        Some("adopt") if args.len() == 5 => std::process::exit(adopt(&args[2], &args[3], &args[4])),
        Some("secondary") if args.len() == 3 => std::process::exit(secondary_loop(&args[2])),
        _ => {
            eprintln!("usage: lab-vm-guest suite | adopt SOCKET BDF GROUP | secondary PREFIX");
            std::process::exit(2);
        }
    }
}

fn say(line: &str) {
    println!("LAB-VM {line}");
}

struct Suite {
    failed: u32,
}

impl Suite {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Check) {
        let t = Instant::now();
        match f() {
            Ok(None) => say(&format!("check ok {name} {}", t.elapsed().as_millis())),
            Ok(Some(skip)) => say(&format!("check skip {name}: {skip}")),
            Err(e) => {
                self.failed += 1;
                say(&format!("check fail {name}: {}", e.replace('\n', " | ")));
            }
        }
    }
}

fn suite() -> i32 {
    let mut s = Suite { failed: 0 };
    let mut net = None;
    let mut nic = None;
    s.run("bind_to_vfio_pci", || {
        net = Some(bind(find(VIRTIO_NET)?)?);
        nic = Some(bind(find(E1000E)?)?);
        Ok(None)
    });
    let (Some(net), Some(nic)) = (net, nic) else {
        say("check fail suite: no vfio-bound functions, nothing more to check");
        return 1;
    };
    s.run("lab_core_pci_scan_reads_the_real_sysfs", || pci_scan(&[&net, &nic]));
    for (label, f) in [("virtio_net", &net), ("e1000e", &nic)] {
        s.run(&format!("{label}_open_pci_on_real_sysfs"), || {
            // The transport choice from the real sysfs directory: kernel VFIO.
            let dev = open_pci(&sysfs(&f.bdf), &OpenOptions::default()).map_err(|e| e.to_string())?;
            expect(dev.name() == f.bdf, || format!("name {} for {}", dev.name(), f.bdf))?;
            Ok(None)
        });
        let kd = match KernelDevice::open(&f.bdf, f.group) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                s.run(&format!("{label}_open"), || Err(e.to_string()));
                continue;
            }
        };
        let dev: Arc<dyn DeviceIo> = kd.clone();
        s.run(&format!("{label}_regions_and_irqs_as_vfio_pci_reports"), || regions_and_irqs(f, dev.as_ref()));
        s.run(&format!("{label}_config_space_matches_sysfs"), || config_matches(f, dev.as_ref()));
        s.run(&format!("{label}_bar_mmap_agrees_with_pread"), || bar_access(f, &dev));
        s.run(&format!("{label}_msix_eventfds_fire"), || msix_loopback(&kd));
        drop(dev);
        drop(kd);
    }
    s.run("device_flags_pci_and_reset", || {
        let d = KernelDevice::open(&net.bdf, net.group).map_err(|e| e.to_string())?;
        let fl = d.device_flags();
        expect(fl & VFIO_DEVICE_FLAGS_PCI != 0, || format!("flags {fl:#x} without PCI"))?;
        expect(fl & VFIO_DEVICE_FLAGS_RESET != 0, || format!("flags {fl:#x} without RESET"))?;
        d.reset().map_err(|e| e.to_string())?;
        let mut id = [0u8; 2];
        d.config_read(0, &mut id).map_err(|e| e.to_string())?;
        expect(u16::from_le_bytes(id) == VIRTIO_NET.0, || format!("vendor {id:?} after reset"))?;
        Ok(None)
    });
    s.run("dma_map_lab_memory_on_dev_shm", || dma_map(&net, false));
    s.run("dma_map_lab_memory_on_hugetlbfs", || dma_map(&net, true));
    s.run("kernel_refuses_an_overlapping_dma_map_with_eexist", || kernel_overlap(&net));
    s.run("second_open_of_a_group_is_busy", || {
        let _d = KernelDevice::open(&net.bdf, net.group).map_err(|e| e.to_string())?;
        match lab_vfio::Group::open(net.group) {
            Ok(_) => Err("a second open of an open group succeeded".into()),
            Err(e) => {
                let t = e.to_string();
                expect(t.contains(&net.group.to_string()), || format!("error does not name the group: {t}"))?;
                expect(io_errno(&e) == Some(libc::EBUSY), || format!("not EBUSY: {t}"))?;
                Ok(None)
            }
        }
    });
    s.run("secondary_adopts_container_and_group_fds", || secondary(&net));
    s.run("unbound_function_is_refused_in_one_line", || {
        let f = find(VIRTIO_RNG)?;
        match open_pci(&sysfs(&f), &OpenOptions::default()) {
            Ok(_) => Err("opened a function bound to no driver".into()),
            Err(e) => {
                let t = e.to_string();
                expect(t.contains(&f) && t.contains("not bound to any driver") && !t.contains('\n'), || t.clone())?;
                Ok(None)
            }
        }
    });
    s.run("hot_add_then_remove_while_open_asks_for_release", hotplug);
    let mut peer = None;
    s.run("bind_the_second_virtio_net", || {
        peer = Some(bind(find_nth(VIRTIO_NET, 1)?)?);
        Ok(None)
    });
    if let Some(peer) = &peer {
        s.run("net_virtio_frames_cross_the_cable_byte_identical", || virtio_traffic(&net, peer));
        s.run("lab_run_real_on_the_guest_functions", || lab_run_real(&net, peer));
        s.run("side_by_side_with_dpdk_hotplug_mp", || side_by_side(peer));
    }
    s.run("net_virtio_two_queue_pairs_over_a_multiqueue_tap", || match multiqueue_function() {
        Some(bdf) => multiqueue(&bind(bdf)?),
        None => Ok(Some("no multiqueue virtio-net in this guest (the host needs root and /dev/net/tun)".into())),
    });
    // Last: it loads the kernel's virtio_net and bonding, which the checks above must not meet.
    s.run("net_bonding_802_3ad_and_active_backup_against_linux_bonding_with_failover", lacp_with_linux);
    if s.failed > 0 {
        1
    } else {
        0
    }
}

/// lab-core's sysfs scan, which the fake sysfs has fed so far, over the real one: every
/// function the kernel lists, with the ids, class, driver, group and BARs the kernel gives.
fn pci_scan(bound: &[&Func]) -> Check {
    let root = Path::new("/sys/bus/pci/devices");
    let scanned = lab_core::bus::pci::scan(root).map_err(|e| e.to_string())?;
    let listed = list_functions();
    expect(scanned.len() == listed.len(), || format!("scan found {} of {} functions", scanned.len(), listed.len()))?;
    for f in bound {
        let d =
            scanned.iter().find(|d| d.addr.to_string() == f.bdf).ok_or_else(|| format!("{} not in the scan", f.bdf))?;
        expect((d.vendor, d.device) == f.id, || format!("{}: id {:04x}:{:04x}", f.bdf, d.vendor, d.device))?;
        expect(d.class == 0x020000, || format!("{}: class {:#08x}, want Ethernet", f.bdf, d.class))?;
        expect(d.driver.as_deref() == Some("vfio-pci"), || format!("{}: driver {:?}", f.bdf, d.driver))?;
        expect(d.iommu_group == Some(f.group), || format!("{}: group {:?}", f.bdf, d.iommu_group))?;
        let sizes = sysfs_bar_sizes(&f.bdf)?;
        for r in d.resources.iter().filter(|r| r.index < 6) {
            expect(r.len() == sizes[r.index], || {
                format!("{} BAR{}: {:#x} vs {:#x}", f.bdf, r.index, r.len(), sizes[r.index])
            })?;
        }
    }
    // The root ports are there as bridges.
    let bridges = scanned.iter().filter(|d| d.class >> 8 == 0x0604).count();
    expect(bridges >= 4, || format!("{bridges} PCI bridges, want the 4 root ports"))?;
    Ok(None)
}

fn expect(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

fn io_errno(e: &lab_vfio::VfioError) -> Option<i32> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        src = s.source();
    }
    None
}

fn sysfs(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

fn read_hex(p: &Path) -> Option<u16> {
    let s = std::fs::read_to_string(p).ok()?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The first function with `id` in sysfs.
fn find(id: (u16, u16)) -> Result<String, String> {
    find_nth(id, 0)
}

/// The `n`th function (by address) with `id` in sysfs.
fn find_nth(id: (u16, u16), n: usize) -> Result<String, String> {
    let mut all: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .map_err(|e| format!("/sys/bus/pci/devices: {e}"))?
        .flatten()
        .filter(|e| {
            read_hex(&e.path().join("vendor")) == Some(id.0) && read_hex(&e.path().join("device")) == Some(id.1)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    all.sort();
    all.into_iter().nth(n).ok_or_else(|| format!("no PCI function {:04x}:{:04x} number {n}", id.0, id.1))
}

struct Func {
    bdf: String,
    group: u32,
    id: (u16, u16),
}

/// Binds `bdf` to vfio-pci the way an administrator does (driver_override, drivers_probe) and
/// waits for its group node.
fn bind(bdf: String) -> Result<Func, String> {
    let dir = sysfs(&bdf);
    let w = |p: PathBuf, v: &str| std::fs::write(&p, v).map_err(|e| format!("{}: {e}", p.display()));
    if std::fs::read_link(dir.join("driver")).is_ok() {
        w(dir.join("driver/unbind"), &bdf)?;
    }
    w(dir.join("driver_override"), "vfio-pci")?;
    // A function just hot-added may not take a driver yet (the PCIe hotplug driver is still
    // adding it): probe again until it is bound, for a bounded time.
    let t = Instant::now();
    let driver = loop {
        let probed = w(PathBuf::from("/sys/bus/pci/drivers_probe"), &bdf);
        match std::fs::read_link(dir.join("driver")) {
            Ok(d) => break d,
            Err(e) if t.elapsed() > Duration::from_secs(5) => {
                return Err(format!("{bdf} not bound 5 s after drivers_probe ({probed:?}): {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    expect(driver.ends_with("vfio-pci"), || format!("{bdf} bound to {}", driver.display()))?;
    let group = std::fs::read_link(dir.join("iommu_group"))
        .map_err(|e| format!("{bdf}: no iommu_group: {e}"))?
        .file_name()
        .and_then(|n| n.to_str()?.parse().ok())
        .ok_or_else(|| format!("{bdf}: iommu_group not a number"))?;
    let node = PathBuf::from(format!("/dev/vfio/{group}"));
    wait(Duration::from_secs(5), || node.exists()).map_err(|_| format!("{} did not appear", node.display()))?;
    let id = (read_hex(&dir.join("vendor")).unwrap_or(0), read_hex(&dir.join("device")).unwrap_or(0));
    Ok(Func { bdf, group, id })
}

fn wait(within: Duration, mut f: impl FnMut() -> bool) -> Result<Duration, ()> {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return Ok(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(())
}

/// Sizes of BARs 0-5 from sysfs `resource` (start end flags per line).
fn sysfs_bar_sizes(bdf: &str) -> Result<Vec<u64>, String> {
    let p = sysfs(bdf).join("resource");
    let t = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(t.lines()
        .take(6)
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap_or(0))
                .collect();
            if v.len() >= 2 && v[1] > v[0] {
                v[1] - v[0] + 1
            } else {
                0
            }
        })
        .collect())
}

fn regions_and_irqs(f: &Func, dev: &dyn DeviceIo) -> Check {
    let regions = dev.regions();
    // VFIO_PCI_NUM_REGIONS: six BARs, ROM, config, VGA.
    expect(regions.len() >= 9, || format!("{} regions", regions.len()))?;
    let sizes = sysfs_bar_sizes(&f.bdf)?;
    for (i, want) in sizes.iter().enumerate() {
        let got = regions[i].size;
        expect(got == *want, || format!("BAR{i}: region size {got:#x}, sysfs resource {want:#x}"))?;
    }
    let cfg_len = std::fs::metadata(sysfs(&f.bdf).join("config")).map_err(|e| e.to_string())?.len();
    let cfg = &regions[CONFIG_REGION_INDEX as usize];
    expect(cfg.size == cfg_len, || format!("config region {:#x}, sysfs config {cfg_len:#x}", cfg.size))?;
    // INTx, MSI, MSI-X, ERR, REQ.
    expect(dev.irqs().len() == 5, || format!("{} irq indexes", dev.irqs().len()))?;
    let msix = dev.irqs()[MSIX_IRQ_INDEX as usize];
    expect(msix.count > 0, || "no MSI-X vectors".into())?;
    Ok(None)
}

fn config_matches(f: &Func, dev: &dyn DeviceIo) -> Check {
    let sys = std::fs::read(sysfs(&f.bdf).join("config")).map_err(|e| e.to_string())?;
    let mut ours = vec![0u8; 64];
    dev.config_read(0, &mut ours).map_err(|e| e.to_string())?;
    // Identity and class are not virtualised by vfio-pci: byte for byte what sysfs reads.
    for (what, r) in [("ids", 0..4), ("revision+class", 8..12), ("subsystem", 0x2c..0x30)] {
        expect(ours[r.clone()] == sys[r.clone()], || {
            format!("{what}: vfio {:02x?}, sysfs {:02x?}", &ours[r.clone()], &sys[r])
        })?;
    }
    let id = (u16::from_le_bytes([ours[0], ours[1]]), u16::from_le_bytes([ours[2], ours[3]]));
    expect(id == f.id, || format!("id {id:04x?}"))?;
    // The capability list walk ends, and finds MSI-X (id 0x11), as a driver's probe does.
    let mut at = ours[0x34] as u64;
    let mut seen = 0;
    let mut msix = false;
    while at != 0 && seen < 48 {
        let mut c = [0u8; 2];
        dev.config_read(at, &mut c).map_err(|e| e.to_string())?;
        msix |= c[0] == 0x11;
        at = (c[1] & 0xfc) as u64;
        seen += 1;
    }
    expect(at == 0, || "capability list does not end".into())?;
    expect(msix, || "no MSI-X capability in the list".into())?;
    Ok(None)
}

fn bar_access(f: &Func, dev: &Arc<dyn DeviceIo>) -> Check {
    // virtio-net's modern config (BAR 4: common cfg at 0) and e1000e's BAR 0 (CTRL, STATUS):
    // registers whose reads have no side effects.
    let (index, offsets): (u32, &[u64]) = if f.id == VIRTIO_NET { (4, &[0, 4, 0x10, 0x14]) } else { (0, &[0, 8]) };
    let r = &dev.regions()[index as usize];
    expect(r.flags & REGION_MMAP != 0, || format!("BAR{index} not mmap-able (flags {:#x})", r.flags))?;
    let bar = Bar::open(dev.clone(), index).map_err(|e| e.to_string())?;
    for &off in offsets {
        expect(bar.mapped_ptr(off).is_some(), || format!("BAR{index}+{off:#x} not in a mapped area"))?;
        let mapped = bar.try_read32(off).map_err(|e| e.to_string())?;
        let mut b = [0u8; 4];
        dev.region_read(index, off, &mut b).map_err(|e| e.to_string())?;
        let trapped = u32::from_le_bytes(b);
        expect(mapped == trapped, || format!("BAR{index}+{off:#x}: mmap {mapped:#x}, pread {trapped:#x}"))?;
    }
    if f.id == E1000E {
        // STATUS of a function QEMU models with its link up: LU (bit 1).
        let st = bar.read32(8);
        expect(st & 2 != 0, || format!("e1000e STATUS {st:#x} without link up"))?;
    }
    Ok(None)
}

fn msix_loopback(d: &KernelDevice) -> Check {
    let n = d.irqs()[MSIX_IRQ_INDEX as usize].count.min(3);
    let efds: Vec<EventFd> = (0..n)
        .map(|_| EventFd::from_flags(EfdFlags::EFD_NONBLOCK))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let fds: Vec<_> = efds.iter().map(|e| e.as_fd()).collect();
    d.set_irq_eventfds(MSIX_IRQ_INDEX, 0, &fds).map_err(|e| e.to_string())?;
    d.trigger_irqs(MSIX_IRQ_INDEX, 0, n).map_err(|e| e.to_string())?;
    for (i, e) in efds.iter().enumerate() {
        let v = e.read().map_err(|err| format!("vector {i}: not signalled ({err})"))?;
        expect(v == 1, || format!("vector {i}: counter {v}"))?;
    }
    // Past the table: refused by our side before the kernel sees it.
    expect(d.trigger_irqs(MSIX_IRQ_INDEX, n, d.irqs()[2].count).is_err(), || "trigger past the table accepted".into())?;
    d.disable_irqs(MSIX_IRQ_INDEX).map_err(|e| e.to_string())?;
    Ok(None)
}

fn dma_map(f: &Func, huge: bool) -> Check {
    let prefix = format!("vm{}", if huge { "huge" } else { "shm" });
    let place = lab_core::mem::placement(&prefix, 4 << 20, !huge, None);
    if huge && !place.hugepages {
        return Ok(Some("no hugetlbfs with free pages in the guest".into()));
    }
    let shm = lab_core::mem::Shm::create(place.clone(), 4).map_err(|e| e.to_string())?;
    let d = KernelDevice::open(&f.bdf, f.group).map_err(|e| e.to_string())?;
    let region = DmaRegion { iova: shm.iova_base().0, size: shm.len(), fd: shm.fd(), fd_offset: 0, vaddr: shm.base() };
    let r = (|| {
        d.dma_map(&region).map_err(|e| format!("map {}: {e}", place.path.display()))?;
        // The same map again (a second device of the process): shared, one kernel map.
        d.dma_map(&region).map_err(|e| format!("identical second map: {e}"))?;
        // An overlapping one: refused by our table before the kernel, naming the range.
        let inner = DmaRegion {
            iova: region.iova + 4096,
            size: 4096,
            fd: shm.fd(),
            fd_offset: 4096,
            vaddr: region.vaddr.wrapping_add(4096),
        };
        match d.dma_map(&inner) {
            Ok(()) => return Err("an overlapping map succeeded".into()),
            Err(e) => expect(e.to_string().contains(&format!("{:#x}", inner.iova)), || e.to_string())?,
        }
        d.dma_unmap(region.iova, region.size).map_err(|e| format!("unmap: {e}"))?;
        d.dma_unmap(region.iova, region.size).map_err(|e| format!("unmap of the shared map: {e}"))?;
        expect(d.dma_unmap(region.iova, region.size).is_err(), || "third unmap succeeded".into())?;
        // Mapped again after the unmap: the kernel really let go of it.
        d.dma_map(&region).map_err(|e| format!("map after unmap: {e}"))?;
        d.dma_unmap(region.iova, region.size).map_err(|e| format!("unmap: {e}"))
    })();
    drop(shm);
    let _ = std::fs::remove_file(&place.path);
    r.map(|_| None)
}

fn kernel_overlap(f: &Func) -> Check {
    let d = KernelDevice::open(&f.bdf, f.group).map_err(|e| e.to_string())?;
    let shm = lab_core::mem::Shm::create(lab_core::mem::placement("vmovl", 4 << 20, true, None), 4)
        .map_err(|e| e.to_string())?;
    let sys = RealVfio::new();
    let c = d.container().as_fd();
    let (va, iova) = (shm.base() as u64, 1u64 << 32);
    let r = (|| {
        sys.map_dma(c, va, iova, 2 << 20).map_err(|e| format!("first map: {e}"))?;
        let second = sys.map_dma(c, va + 4096, iova + 4096, 4096);
        expect(second.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EEXIST), || {
            format!("overlapping map: {second:?}, not EEXIST")
        })?;
        sys.unmap_dma(c, iova, 2 << 20).map_err(|e| format!("unmap: {e}"))
    })();
    let path = shm.placement().path.clone();
    drop(shm);
    let _ = std::fs::remove_file(path);
    r.map(|_| None)
}

fn secondary(f: &Func) -> Check {
    let d = KernelDevice::open(&f.bdf, f.group).map_err(|e| e.to_string())?;
    let sock = PathBuf::from("/tmp/lab-vm-adopt.sock");
    let _ = std::fs::remove_file(&sock);
    let l = UnixListener::bind(&sock).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args(["adopt", &sock.to_string_lossy(), &f.bdf, &f.group.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let r = (|| {
        let (s, _) = l.accept().map_err(|e| e.to_string())?;
        let fds = [d.container().as_fd().as_raw_fd(), d.group().as_fd().as_raw_fd()];
        lab_vfio::sys::send_with_fds(s.as_fd(), b"fds", &fds).map_err(|e| e.to_string())?;
        let out = std::io::read_to_string(child.stdout.take().expect("piped")).map_err(|e| e.to_string())?;
        let st = child.wait().map_err(|e| e.to_string())?;
        expect(st.success(), || format!("secondary exited {st}: {out}"))?;
        let want = format!("vendor {:04x} device {:04x}", f.id.0, f.id.1);
        expect(out.trim() == want, || format!("secondary read {:?}, want {want:?}", out.trim()))?;
        Ok(None)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock);
    r
}

/// The secondary: receives the primary's container and group fds, opens the device through
/// them (it could not open the group itself: a group opens once system-wide), reads its ids.
fn adopt(sock: &str, bdf: &str, group: &str) -> i32 {
    let run = || -> Result<String, String> {
        let group: u32 = group.parse().map_err(|_| format!("bad group {group}"))?;
        let s = UnixStream::connect(sock).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 8];
        let mut fds: Vec<OwnedFd> = Vec::new();
        lab_vfio::sys::recv_with_fds(s.as_fd(), &mut buf, &mut fds).map_err(|e| e.to_string())?;
        if fds.len() != 2 {
            return Err(format!("{} fds received", fds.len()));
        }
        let g = fds.pop().expect("two");
        let c = fds.pop().expect("two");
        let d =
            KernelDevice::open_with(Arc::new(RealVfio::new()), bdf, group, Some(AdoptedFds { container: c, group: g }))
                .map_err(|e| e.to_string())?;
        let mut id = [0u8; 4];
        d.config_read(0, &mut id).map_err(|e| e.to_string())?;
        Ok(format!(
            "vendor {:04x} device {:04x}",
            u16::from_le_bytes([id[0], id[1]]),
            u16::from_le_bytes([id[2], id[3]])
        ))
    };
    match run() {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            println!("error: {e}");
            1
        }
    }
}

/// QMP `device_add` of a virtio-net function on the empty root port `hp`, seen appear in sysfs;
/// bound and opened; QMP `device_del`: the kernel's PCIe hotplug driver starts the removal,
/// vfio-pci asks for the device back (its request irq, which our transport wires) and waits;
/// `is_alive` turns false, and once we close the device the function disappears.
fn hotplug() -> Check {
    let r = hotplug_steps();
    if r.is_err() {
        // Leave no hot-added function behind for the checks that follow.
        say(r#"ask {"execute":"device_del","arguments":{"id":"hot1"}}"#);
        std::thread::sleep(Duration::from_secs(1));
    }
    r
}

fn hotplug_steps() -> Check {
    let before: Vec<String> = list_functions();
    say(
        r#"ask {"execute":"device_add","arguments":{"driver":"virtio-net-pci","id":"hot1","bus":"hp","netdev":"nhot","disable-legacy":"on","mac":"52:54:00:12:34:99"}}"#,
    );
    let mut new = None;
    wait(Duration::from_secs(20), || {
        new = list_functions().into_iter().find(|b| !before.contains(b));
        new.is_some()
    })
    .map_err(|_| "the hot-added function did not appear in sysfs within 20 s".to_string())?;
    let bdf = new.expect("found");
    let f = bind(bdf)?;
    expect(f.id == VIRTIO_NET, || format!("hot-added function is {:04x?}", f.id))?;
    // Opened as a primary does: the transport wires vfio-pci's request irq itself.
    let d = KernelDevice::open(&f.bdf, f.group).map_err(|e| e.to_string())?;
    expect(d.is_alive(), || "alive before the removal".into())?;
    say(r#"ask {"execute":"device_del","arguments":{"id":"hot1"}}"#);
    // What the lab's removal monitor polls: is_alive turns false on the kernel's request.
    let asked = wait(Duration::from_secs(20), || !d.is_alive())
        .map_err(|_| "is_alive still true 20 s after device_del (no release request seen)".to_string())?;
    let still = sysfs(&f.bdf).exists();
    drop(d);
    let gone = wait(Duration::from_secs(10), || !sysfs(&f.bdf).exists())
        .map_err(|_| format!("{} still in sysfs 10 s after release", f.bdf))?;
    expect(still, || "removed before the device was released".into())?;
    say(&format!(
        "note hotplug release requested after {} ms, removed {} ms after close",
        asked.as_millis(),
        gone.as_millis()
    ));
    Ok(None)
}

/// A lab primary in this process: net_virtio drives the two cabled virtio-net functions (probed
/// at start, as DPDK probes what is bound), and frames of every size go out of one and come in
/// on the other, byte for byte, both ways; the counters agree.
fn virtio_traffic(a: &Func, b: &Func) -> Check {
    use lab_core::ethdev::DEFAULT_POOL;
    use lab_core::mbuf::{Mbuf, Mempool};
    let args = ["--proc-type=primary", "--file-prefix=vmnet", "-m", "64"];
    let (opts, _) = lab_core::options::Options::parse(args).map_err(|e| e.to_string())?;
    let p = lab_core::process::Process::init(&opts, lab_drivers::registry()).map_err(|e| e.to_string())?;
    let mut sec: Option<Secondary> = None;
    let r = (|| {
        let port_of = |bdf: &str| {
            p.find(bdf).map(|e| e.port).ok_or_else(|| format!("{bdf} not probed at start: ports {:?}", p.list()))
        };
        let (pa, pb) = (port_of(&a.bdf)?, port_of(&b.bdf)?);
        for (port, mac) in [(pa, "52:54:00:12:34:01"), (pb, "52:54:00:12:34:05")] {
            let i = p.info(port).map_err(|e| e.to_string())?;
            expect(i.dev.driver == "net_virtio", || format!("port {port} driver {}", i.dev.driver))?;
            let got = lab_drivers_mac(&i.dev.mac);
            expect(got == mac, || format!("port {port} MAC {got}, QEMU gave {mac}"))?;
            expect(i.link.up, || format!("port {port} link down"))?;
        }
        let mut pool = Mempool::lookup(p.runtime().shm(), DEFAULT_POOL, 64).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        for (from, to) in [(pa, pb), (pb, pa)] {
            let sizes: Vec<usize> = (0..200).map(|i| 60 + (i * 7) % 1455).collect();
            let mut want: Vec<Vec<u8>> = Vec::new();
            let mut sent = 0;
            while sent < sizes.len() {
                let n = (sizes.len() - sent).min(32);
                let mut burst: Vec<Option<Mbuf>> = (0..n).map(|_| None).collect();
                if !pool.alloc_bulk(&mut burst) {
                    return Err("buffer pool empty".into());
                }
                for (k, m) in burst.iter_mut().flatten().enumerate() {
                    let seq = sent + k;
                    let size = sizes[seq];
                    let mut f = vec![0xffu8; 6];
                    f.extend_from_slice(&[0x02, 0x4c, 0x41, 0x42, from.0 as u8, 1, 0x88, 0xb5]);
                    f.extend((0..size - 14).map(|i| (seq * 31 + i) as u8));
                    m.copy_from(&f);
                    want.push(f);
                }
                let k = p.with_port(from, |d| d.tx_burst(0, &mut burst)).map_err(|e| e.to_string())?;
                sent += k;
                pool.free_bulk(&mut burst);
                want.truncate(sent);
            }
            let mut got: Vec<Vec<u8>> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
            while got.len() < want.len() && Instant::now() < deadline {
                let n = p.with_port(to, |d| d.rx_burst(0, &mut burst)).map_err(|e| e.to_string())?;
                for m in burst[..n].iter_mut().filter_map(Option::take) {
                    got.push(m.data().to_vec());
                    pool.free(m);
                }
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            expect(got.len() == want.len(), || format!("port {to} received {} of {} frames", got.len(), want.len()))?;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                expect(g == w, || format!("frame {i} ({} bytes) differs: got {} bytes", w.len(), g.len()))?;
            }
            let (sa, sb) =
                (p.info(from).map_err(|e| e.to_string())?.stats, p.info(to).map_err(|e| e.to_string())?.stats);
            expect(sa.opackets >= want.len() as u64 && sb.ipackets >= want.len() as u64, || {
                format!("counters: {sa:?} / {sb:?}")
            })?;
        }
        say(&format!(
            "note net_virtio: 2 x 200 frames of 60-1514 bytes across the cable in {} ms",
            t0.elapsed().as_millis()
        ));

        // The control queue (VIRTIO_NET_F_CTRL_RX): promiscuous off, and only frames for the
        // port's own MAC come in; on again, and the others do too.
        let unicast = |dst: [u8; 6], seq: u8| -> Vec<u8> {
            let mut f = dst.to_vec();
            f.extend_from_slice(&[0x02, 0x4c, 0x41, 0x42, 0, 2, 0x88, 0xb5]);
            f.resize(100, seq);
            f
        };
        let mine = [0x52, 0x54, 0x00, 0x12, 0x34, 0x05];
        let other = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
        let mut exchange = |frames: Vec<Vec<u8>>| -> Result<usize, String> {
            let mut burst: Vec<Option<Mbuf>> = (0..frames.len()).map(|_| None).collect();
            if !pool.alloc_bulk(&mut burst) {
                return Err("buffer pool empty".into());
            }
            for (m, f) in burst.iter_mut().flatten().zip(&frames) {
                m.copy_from(f);
            }
            let k = p.with_port(pa, |d| d.tx_burst(0, &mut burst)).map_err(|e| e.to_string())?;
            pool.free_bulk(&mut burst);
            expect(k == frames.len(), || format!("sent {k} of {}", frames.len()))?;
            let mut got = 0;
            let deadline = Instant::now() + Duration::from_millis(1500);
            let mut rx: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
            while Instant::now() < deadline {
                let n = p.with_port(pb, |d| d.rx_burst(0, &mut rx)).map_err(|e| e.to_string())?;
                for m in rx[..n].iter_mut().filter_map(Option::take) {
                    got += 1;
                    pool.free(m);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(got)
        };
        let mixed = |n: u8| -> Vec<Vec<u8>> {
            (0..n).map(|i| if i % 2 == 0 { unicast(mine, i) } else { unicast(other, i) }).collect()
        };
        p.with_port(pb, |d| d.set_promisc(false))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("promisc off: {e}"))?;
        let off = exchange(mixed(20))?;
        p.with_port(pb, |d| d.set_promisc(true)).map_err(|e| e.to_string())?.map_err(|e| format!("promisc on: {e}"))?;
        let on = exchange(mixed(20))?;
        expect(off == 10 && on == 20, || {
            format!("promiscuous off: {off} of 20 in (want the 10 for its MAC), on: {on} (want 20)")
        })?;

        // A secondary (a real second process) attaches both ports through the primary's
        // container and group fds and transmits; the primary receives what it sent.
        let s = sec.insert(Secondary::start("vmnet")?);
        let listed = s.cmd("list")?;
        expect(listed.contains(&a.bdf) && listed.contains(&b.bdf), || format!("secondary lists {listed:?}"))?;
        let sent = s.cmd(&format!("send {} 100", pa.0))?;
        expect(sent == "sent 100", || format!("secondary: {sent}"))?;
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        while got < 100 && Instant::now() < deadline {
            let n = p.with_port(pb, |d| d.rx_burst(0, &mut burst)).map_err(|e| e.to_string())?;
            for m in burst[..n].iter_mut().filter_map(Option::take) {
                // The secondary's frames carry 0x5e in the last source byte.
                got += usize::from(m.data().get(11) == Some(&0x5e));
                pool.free(m);
            }
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        expect(got == 100, || format!("the primary received {got} of the secondary's 100 frames"))?;

        // A real hot-remove of a port attached in both: vfio-pci asks the primary for the device
        // back, its removal monitor detaches the port everywhere, and the kernel finishes.
        let before = list_functions();
        // The kernel's device events, as DPDK's event monitor reads them.
        let mut mon = lab_core::bus::uevent::Monitor::open().map_err(|e| e.to_string())?;
        say(
            r#"ask {"execute":"device_add","arguments":{"driver":"virtio-net-pci","id":"hot2","bus":"hp","netdev":"nhot","disable-legacy":"on","iommu_platform":"on","mac":"52:54:00:12:34:77"}}"#,
        );
        let mut new = None;
        wait(Duration::from_secs(20), || {
            new = list_functions().into_iter().find(|f| !before.contains(f));
            new.is_some()
        })
        .map_err(|_| "hot-added function did not appear".to_string())?;
        let h = bind(new.expect("found"))?;
        use lab_core::bus::uevent::DevAction;
        let mut seen = Vec::new();
        let saw =
            |seen: &mut Vec<(DevAction, Option<String>)>, mon: &mut lab_core::bus::uevent::Monitor, want: DevAction| {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if seen.iter().any(|(a, _)| *a == want) {
                        return true;
                    }
                    if let Some(e) = mon.next(Duration::from_millis(200)) {
                        if e.addr.to_string() == h.bdf {
                            seen.push((e.action, e.driver));
                        }
                    }
                }
                false
            };
        expect(saw(&mut seen, &mut mon, DevAction::Add), || format!("no add event for {}: {seen:?}", h.bdf))?;
        expect(saw(&mut seen, &mut mon, DevAction::Bind), || format!("no bind event for {}: {seen:?}", h.bdf))?;
        expect(seen.iter().any(|(a, d)| *a == DevAction::Bind && d.as_deref() == Some("vfio-pci")), || {
            format!("bind event without vfio-pci: {seen:?}")
        })?;
        let ph = p.attach(&h.bdf).map_err(|e| format!("attach {}: {e}", h.bdf))?;
        let listed = s.cmd("list")?;
        expect(listed.contains(&h.bdf), || format!("secondary does not list the hot-added port: {listed:?}"))?;
        // The removal comes while the secondary transmits on the port.
        let fl = s.cmd(&format!("flood {}", ph.0))?;
        expect(fl == "flooding", || format!("secondary: {fl}"))?;
        std::thread::sleep(Duration::from_millis(200));
        say(r#"ask {"execute":"device_del","arguments":{"id":"hot2"}}"#);
        let gone_everywhere = wait(Duration::from_secs(30), || {
            p.find(&h.bdf).is_none() && s.cmd("list").is_ok_and(|l| !l.contains(&h.bdf)) && !sysfs(&h.bdf).exists()
        });
        if gone_everywhere.is_err() {
            return Err(format!(
                "30 s after device_del: primary has it {}, secondary lists {:?}, sysfs has it {}",
                p.find(&h.bdf).is_some(),
                s.cmd("list"),
                sysfs(&h.bdf).exists()
            ));
        }
        let flooded = s.cmd("stop")?;
        expect(flooded.starts_with("flooded ") && !flooded.starts_with("flooded 0 "), || {
            format!("secondary's traffic during the removal: {flooded}")
        })?;
        expect(saw(&mut seen, &mut mon, DevAction::Remove), || format!("no remove event for {}: {seen:?}", h.bdf))?;
        // The secondary is alive and well after it.
        let listed = s.cmd("list")?;
        expect(listed.contains(&a.bdf), || format!("secondary after the removal lists {listed:?}"))?;
        say(&format!(
            "note hot-remove of attached port {ph} ({}) during the secondary's traffic ({flooded}): detached in both processes and gone from sysfs in {} ms; uevents {:?}",
            h.bdf,
            gone_everywhere.unwrap_or_default().as_millis(),
            seen.iter().map(|(a, _)| *a).collect::<Vec<_>>()
        ));
        drop(sec.take());
        p.detach(&a.bdf).map_err(|e| format!("detach {}: {e}", a.bdf))?;
        p.detach(&b.bdf).map_err(|e| format!("detach {}: {e}", b.bdf))?;
        Ok(None)
    })();
    drop(sec);
    p.shutdown();
    r
}

/// The scenario library on the guest's two cabled virtio-net functions (`lab run --real`): what
/// fits a pair of real functions runs and passes, the rest is skipped by the runner with why.
fn lab_run_real(a: &Func, b: &Func) -> Check {
    let lab = Path::new("/lab/lab");
    if !lab.exists() || !Path::new("/lab/hotplug_mp").exists() {
        return Ok(Some("lab and hotplug_mp not in the image (build the workspace's binaries)".into()));
    }
    let t = Instant::now();
    let out = std::process::Command::new(lab)
        .args(["run", "--real", &format!("{},{}", a.bdf, b.bdf), "--junit", "/tmp/real.xml", "/lab/scenarios"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let junit = std::fs::read_to_string("/tmp/real.xml").unwrap_or_default();
    let count = |tag: &str| junit.matches(tag).count();
    let (cases, skipped, failed) = (count("<testcase"), count("<skipped"), count("<failure"));
    let ran = cases.saturating_sub(skipped);
    say(&format!(
        "note lab run --real {},{}: {ran} scenarios ran, {skipped} skipped, {failed} failed, in {} ms",
        a.bdf,
        b.bdf,
        t.elapsed().as_millis()
    ));
    expect(out.status.success(), || {
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        format!("lab run --real exited {}: {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
    })?;
    expect(ran >= 5, || format!("only {ran} scenarios ran on the real functions: {text}"))?;
    Ok(None)
}

/// DPDK 22.11's own hotplug_mp and ours, side by side on the same vfio-bound function: the
/// seed's scenarios (attach from a secondary, detach from the primary, and the other way round)
/// with each, a primary and a secondary each; both must do them, and answer the same.
fn side_by_side(f: &Func) -> Check {
    let dpdk = Path::new("/lab/dpdk-hotplug_mp");
    if !dpdk.exists() {
        return Ok(Some("DPDK's hotplug_mp not in the image (ci/peers.sh builds it from dpdk-doc)".into()));
    }
    let script: [(&str, String); 8] = [
        ("s", format!("attach {}", f.bdf)),
        ("p", "list".into()),
        ("s", "list".into()),
        ("p", format!("detach {}", f.bdf)),
        ("s", "list".into()),
        ("p", format!("attach {}", f.bdf)),
        ("s", format!("detach {}", f.bdf)),
        ("p", "list".into()),
    ];
    let mut answers: Vec<Vec<Vec<String>>> = Vec::new();
    for (label, bin) in [("dpdk", dpdk), ("lab", Path::new("/lab/hotplug_mp"))] {
        let pfx = format!("--file-prefix=sbs{label}");
        let mut p = Prompt::start(bin, &["-l", "0", &pfx, "-a", "0000:00:00.0"])
            .map_err(|e| format!("{label} primary: {e}"))?;
        // The secondary gets the same allow-list: a DPDK secondary probes what it is allowed at
        // start, and one probing a device its primary has not attached panics.
        let mut s = Prompt::start(bin, &["-l", "0", "--proc-type=secondary", &pfx, "-a", "0000:00:00.0"])
            .map_err(|e| format!("{label} secondary: {e}"))?;
        let mut got = Vec::new();
        for (who, c) in &script {
            let out = if *who == "p" { p.cmd(c) } else { s.cmd(c) }.map_err(|e| format!("{label} {who}: {c}: {e}"))?;
            got.push(out);
        }
        drop(s);
        drop(p);
        answers.push(got);
    }
    let want = |i: usize, line: &str| answers.iter().all(|a| a[i].iter().any(|l| l == line));
    let port_line = |i: usize| answers.iter().all(|a| a[i].iter().any(|l| l.ends_with(&format!("\t{}", f.bdf))));
    let table: Vec<String> = answers.iter().map(|a| format!("{a:?}")).collect();
    let ctx = || format!("DPDK then ours: {}", table.join(" / "));
    expect(want(0, &format!("attached device {}", f.bdf)), || format!("attach from the secondary: {}", ctx()))?;
    expect(port_line(1) && port_line(2), || format!("both processes list the port: {}", ctx()))?;
    expect(want(3, &format!("detached device {}", f.bdf)), || format!("detach from the primary: {}", ctx()))?;
    expect(answers.iter().all(|a| !a[4].iter().any(|l| l.contains(&f.bdf))), || {
        format!("gone in the secondary: {}", ctx())
    })?;
    expect(want(5, &format!("attached device {}", f.bdf)), || format!("attach from the primary: {}", ctx()))?;
    expect(want(6, &format!("detached device {}", f.bdf)), || format!("detach from the secondary: {}", ctx()))?;
    expect(answers.iter().all(|a| !a[7].iter().any(|l| l.contains(&f.bdf))), || {
        format!("gone in the primary: {}", ctx())
    })?;
    // Line for line the same, where the two print the same thing (DPDK also prints progress such
    // as "detaching..." and EAL notices; ours prints none).
    let keep = |a: &Vec<String>| -> Vec<String> {
        a.iter()
            .filter(|l| {
                l.starts_with("attached device")
                    || l.starts_with("detached device")
                    || l.starts_with("list all")
                    || l.contains('\t')
            })
            .cloned()
            .collect()
    };
    for i in 0..script.len() {
        let (d, o) = (keep(&answers[0][i]), keep(&answers[1][i]));
        expect(d == o, || format!("step {i} ({}): DPDK {d:?}, ours {o:?}", script[i].1))?;
    }
    say(&format!("note side by side with DPDK 22.11's hotplug_mp on {}: {} steps, same answers", f.bdf, script.len()));
    Ok(None)
}

/// Takes DPDK's log lines (`EAL: ...`, `TELEMETRY: ...`, whole lines only) out of `buf`,
/// wherever they are: another thread of the process logs while the prompt is being written, so
/// a line can land in the middle of it (`exaEAL: ...\nmple> `).
fn scrub_logs(buf: &mut String) {
    for tag in ["EAL: ", "TELEMETRY: "] {
        while let Some(at) = buf.find(tag) {
            let Some(nl) = buf[at..].find('\n') else { break };
            buf.replace_range(at..at + nl + 1, "");
        }
    }
}

/// A `hotplug_mp` (DPDK's or ours) driven at its `example> ` prompt.
struct Prompt {
    child: std::process::Child,
    /// Its stdout, where the prompt and the answers are.
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: String,
    /// Its stderr (EAL's and the lab's logs), kept apart: a log line written in the middle of the
    /// prompt would split it.
    err: std::sync::Arc<std::sync::Mutex<String>>,
}

const PROMPT: &str = "example> ";

impl Prompt {
    fn start(bin: &Path, args: &[&str]) -> Result<Prompt, String> {
        let mut child = std::process::Command::new(bin)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut out, &mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (keep, mut e) = (err.clone(), child.stderr.take().expect("piped"));
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut e, &mut b) {
                if n == 0 {
                    break;
                }
                let mut s = keep.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() < 64 * 1024 {
                    s.push_str(&String::from_utf8_lossy(&b[..n]));
                }
            }
        });
        let mut p = Prompt { child, rx, buf: String::new(), err };
        p.until_prompt(Duration::from_secs(60)).map_err(|e| format!("no prompt: {e}"))?;
        Ok(p)
    }

    fn until_prompt(&mut self, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            scrub_logs(&mut self.buf);
            if let Some(at) = self.buf.find(PROMPT) {
                let out = self.buf[..at].to_string();
                self.buf.drain(..at + PROMPT.len());
                return Ok(out);
            }
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(b) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => {
                    let err = self.err.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    return Err(format!("no prompt within {within:?}; output: {:?}; stderr: {err:?}", self.buf));
                }
            }
        }
    }

    /// The answer's lines (the echo of the command, blank lines and EAL's log lines left out:
    /// those come as the hotplug broadcast reaches a process, not as answers).
    fn cmd(&mut self, c: &str) -> Result<Vec<String>, String> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{c}").map_err(|e| e.to_string())?;
        let out = self.until_prompt(Duration::from_secs(30))?;
        Ok(out
            .split(['\n', '\r'])
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && *l != c && !l.starts_with("EAL: "))
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Prompt {
    fn drop(&mut self) {
        use std::io::Write;
        if let Some(s) = self.child.stdin.as_mut() {
            let _ = writeln!(s, "quit");
        }
        drop(self.child.stdin.take());
        if wait(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_)))).is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Two queue pairs on a `mq=on` function whose backend is a two-queue TAP on the host: frames
/// sent on each transmit queue reach the host (it counts them per queue marker), and frames of
/// 64 flows the host injects arrive spread over both receive queues.
fn multiqueue(f: &Func) -> Check {
    use lab_core::ethdev::DEFAULT_POOL;
    use lab_core::mbuf::{Mbuf, Mempool};
    let args = ["--proc-type=primary", "--file-prefix=vmmq", "-m", "64", "-a", "0000:00:00.0"];
    let (opts, _) = lab_core::options::Options::parse(args).map_err(|e| e.to_string())?;
    let p = lab_core::process::Process::init(&opts, lab_drivers::registry()).map_err(|e| e.to_string())?;
    let r = (|| {
        let port = p.attach(&format!("{},queues=2", f.bdf)).map_err(|e| format!("attach with queues=2: {e}"))?;
        let i = p.info(port).map_err(|e| e.to_string())?;
        expect(i.dev.nb_rxq == 2 && i.dev.nb_txq == 2, || format!("queues {}/{}", i.dev.nb_rxq, i.dev.nb_txq))?;
        let mut pool = Mempool::lookup(p.runtime().shm(), DEFAULT_POOL, 64).map_err(|e| e.to_string())?;
        say("ask host capture-start 64");
        // The host's answer does not come back: give it time to bring the TAP up and listen.
        std::thread::sleep(Duration::from_millis(1500));
        for q in 0..2u16 {
            let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
            if !pool.alloc_bulk(&mut burst) {
                return Err("buffer pool empty".into());
            }
            for m in burst.iter_mut().flatten() {
                let mut fr = vec![0xffu8; 6];
                fr.extend_from_slice(&[0x02, 0x4c, 0x41, 0x42, 0, q as u8, 0x88, 0xb6]);
                fr.resize(80, q as u8);
                m.copy_from(&fr);
            }
            let k = p.with_port(port, |d| d.tx_burst(q, &mut burst)).map_err(|e| e.to_string())?;
            pool.free_bulk(&mut burst);
            expect(k == 32, || format!("tx queue {q} took {k} of 32"))?;
        }
        say("ask host capture-end");
        say("ask host inject 64");
        let mut per_queue = [0usize; 2];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        while per_queue.iter().sum::<usize>() < 64 && Instant::now() < deadline {
            for (q, n) in per_queue.iter_mut().enumerate() {
                let k = p.with_port(port, |d| d.rx_burst(q as u16, &mut burst)).map_err(|e| e.to_string())?;
                for m in burst[..k].iter_mut().filter_map(Option::take) {
                    // The host's frames: IPv4/UDP to port 9 (the host kernel sends its own too).
                    let d = m.data();
                    *n += usize::from(d.len() >= 38 && d[12..14] == [0x08, 0x00] && d[36..38] == [0, 9]);
                    pool.free(m);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        expect(per_queue.iter().sum::<usize>() == 64, || format!("received {per_queue:?} of the host's 64 frames"))?;
        expect(per_queue.iter().all(|&n| n > 0), || format!("the 64 flows all came in on one queue: {per_queue:?}"))?;
        say(&format!("note net_virtio 2 queue pairs: 32 frames out of each, the host's 64 flows in as {per_queue:?}"));
        p.detach(&f.bdf).map_err(|e| format!("detach: {e}"))?;
        Ok(None)
    })();
    p.shutdown();
    r
}

/// The multiqueue virtio-net function, when the host gave one: on root port rp6 (bus 6).
fn multiqueue_function() -> Option<String> {
    let bdf = "0000:06:00.0".to_string();
    (read_hex(&sysfs(&bdf).join("device")) == Some(VIRTIO_NET.1)).then_some(bdf)
}

/// A lab secondary in another process, driven over its stdin: `list`, `send PORT N`.
struct Secondary {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Secondary {
    fn start(prefix: &str) -> Result<Secondary, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(exe)
            .args(["secondary", prefix])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut s = Secondary { child, out };
        let hello = s.line()?;
        expect(hello == "ready", || format!("secondary said {hello:?}"))?;
        Ok(s)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match std::io::BufRead::read_line(&mut self.out, &mut l) {
            Ok(0) => Err("the secondary exited".into()),
            Ok(_) => Ok(l.trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn cmd(&mut self, c: &str) -> Result<String, String> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{c}").map_err(|e| e.to_string())?;
        self.line()
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if wait(Duration::from_secs(5), || matches!(self.child.try_wait(), Ok(Some(_)))).is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The secondary's side: a lab secondary of `prefix`; one answer line per command.
fn secondary_loop(prefix: &str) -> i32 {
    use lab_core::ethdev::{PortId, DEFAULT_POOL};
    use lab_core::mbuf::{Mbuf, Mempool};
    let pfx = format!("--file-prefix={prefix}");
    let args = ["--proc-type=secondary", pfx.as_str()];
    let p = match lab_core::options::Options::parse(args)
        .map_err(|e| e.to_string())
        .and_then(|(o, _)| lab_core::process::Process::init(&o, lab_drivers::registry()).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            println!("error: {e}");
            return 1;
        }
    };
    println!("ready");
    let send = |port: u16, n: usize| -> Result<usize, String> {
        let mut pool = Mempool::lookup(p.runtime().shm(), DEFAULT_POOL, 32).map_err(|e| e.to_string())?;
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent < n && Instant::now() < deadline {
            let mut burst: Vec<Option<Mbuf>> = (0..(n - sent).min(32)).map(|_| None).collect();
            if !pool.alloc_bulk(&mut burst) {
                return Err("pool empty".into());
            }
            for m in burst.iter_mut().flatten() {
                let mut f = vec![0xffu8; 6];
                f.extend_from_slice(&[0x02, 0x4c, 0x41, 0x42, 0, 0x5e, 0x88, 0xb5]);
                f.resize(128, 0xa5);
                m.copy_from(&f);
            }
            sent += p.with_port(PortId(port), |d| d.tx_burst(0, &mut burst)).map_err(|e| e.to_string())?;
            pool.free_bulk(&mut burst);
        }
        Ok(sent)
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let flooded = std::sync::atomic::AtomicUsize::new(0);
    let ended = std::sync::Mutex::new(String::from("stopped"));
    std::thread::scope(|sc| {
        let mut flood: Option<std::thread::ScopedJoinHandle<'_, ()>> = None;
        for line in std::io::stdin().lines().map_while(Result::ok) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let answer = match w.as_slice() {
                ["list"] => p.list().iter().map(|(id, n)| format!("{id}={n}")).collect::<Vec<_>>().join(" "),
                ["flood", port] => match port.parse::<u16>() {
                    Ok(port) if flood.is_none() => {
                        stop.store(false, std::sync::atomic::Ordering::Relaxed);
                        let (send, stop, flooded, ended) = (&send, &stop, &flooded, &ended);
                        flood = Some(sc.spawn(move || {
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                match send(port, 32) {
                                    Ok(k) => {
                                        flooded.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    Err(e) => {
                                        *ended.lock().unwrap_or_else(|e| e.into_inner()) = e;
                                        return;
                                    }
                                }
                            }
                        }));
                        "flooding".into()
                    }
                    _ => "error: flood PORT (one at a time)".into(),
                },
                ["stop"] => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    if let Some(h) = flood.take() {
                        let _ = h.join();
                    }
                    let n = flooded.swap(0, std::sync::atomic::Ordering::Relaxed);
                    format!("flooded {n} ({})", ended.lock().unwrap_or_else(|e| e.into_inner()))
                }
                ["send", port, n] => match (port.parse::<u16>(), n.parse::<usize>()) {
                    (Ok(port), Ok(n)) => match send(port, n) {
                        Ok(k) => format!("sent {k}"),
                        Err(e) => format!("error: {e}"),
                    },
                    _ => "error: send PORT N".into(),
                },
                _ => format!("error: unknown {line:?}"),
            };
            println!("{answer}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    p.shutdown();
    0
}

fn lab_drivers_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn list_functions() -> Vec<String> {
    std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The 802.3ad check's functions (vm/tests/vm.rs): ours on buses 7 and 8, the Linux bond's on 9
/// and 10, cabled 7-9 and 8-10.
const BOND_OURS: [&str; 2] = ["0000:07:00.0", "0000:08:00.0"];
const BOND_LINUX: [&str; 2] = ["0000:09:00.0", "0000:0a:00.0"];
/// QEMU's ids of the second cable's two ends (set_link).
const CABLE2: [&str; 2] = ["bonda2", "bondb2"];
const LINUX_IP: [u8; 4] = [10, 77, 0, 1];
/// Our flows: one source address each (Linux hashes its replies over them: layer3+4).
const FLOWS: u8 = 16;
const OUR_IP0: u8 = 10;

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An ICMP echo request (`id`, `seq`) from `src_ip` to Linux's bond.
fn echo_request(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src_ip);
    ip.extend_from_slice(&LINUX_IP);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(dst, src, 0x0800);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An ARP packet (`op` 1 request, 2 reply) from `src`/`sip` about `tip`.
fn arp(eth_dst: [u8; 6], op: u16, src: [u8; 6], sip: [u8; 4], tha: [u8; 6], tip: [u8; 4]) -> Vec<u8> {
    let mut f = eth(eth_dst, src, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tip);
    f.resize(60, 0);
    f
}

fn our_ip(flow: u8) -> [u8; 4] {
    [10, 77, 0, OUR_IP0 + flow]
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.trim().split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    v.try_into().ok()
}

/// Our side of the 802.3ad check: a lab primary with the bond over our two functions.
struct OurBond {
    p: lab_core::process::Process,
    pool: lab_core::mbuf::Mempool,
    bond: lab_core::ethdev::PortId,
    members: [lab_core::ethdev::PortId; 2],
    mac: [u8; 6],
    linux_mac: [u8; 6],
    replies: std::collections::HashSet<(u16, u16)>,
}

impl OurBond {
    /// Sends `frames` on the bond; returns how many it took.
    fn send(&mut self, frames: &[Vec<u8>]) -> Result<usize, String> {
        use lab_core::mbuf::Mbuf;
        if frames.is_empty() {
            // An empty burst still sends what the LACP machines queued.
            let mut none: [Option<Mbuf>; 0] = [];
            self.p.with_port(self.bond, |d| d.tx_burst(0, &mut none)).map_err(|e| e.to_string())?;
            return Ok(0);
        }
        let mut burst: Vec<Option<Mbuf>> = (0..frames.len()).map(|_| None).collect();
        if !self.pool.alloc_bulk(&mut burst) {
            return Err("buffer pool empty".into());
        }
        for (m, f) in burst.iter_mut().flatten().zip(frames) {
            m.copy_from(f);
        }
        let k = self.p.with_port(self.bond, |d| d.tx_burst(0, &mut burst)).map_err(|e| e.to_string())?;
        self.pool.free_bulk(&mut burst);
        Ok(k)
    }

    /// Polls the bond for `dur` (both bursts, as DPDK's mode 4 asks of an application): echo
    /// replies are recorded, ARP requests for our addresses answered.
    fn pump(&mut self, dur: Duration) -> Result<(), String> {
        use lab_core::mbuf::Mbuf;
        let end = Instant::now() + dur;
        let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
        while Instant::now() < end {
            let n = self.p.with_port(self.bond, |d| d.rx_burst(0, &mut burst)).map_err(|e| e.to_string())?;
            let mut answers = Vec::new();
            for m in burst[..n].iter_mut().filter_map(Option::take) {
                let d = m.data();
                if d.len() >= 42 && d[12..14] == [8, 6] && d[20..22] == [0, 1] {
                    let tip: [u8; 4] = d[38..42].try_into().expect("4");
                    if (0..FLOWS).any(|f| our_ip(f) == tip) {
                        let (sha, sip) = (d[22..28].try_into().expect("6"), d[28..32].try_into().expect("4"));
                        answers.push(arp(sha, 2, self.mac, tip, sha, sip));
                    }
                } else if d.len() >= 42 && d[12..14] == [8, 0] && d[23] == 1 && d[34] == 0 {
                    let l4 = 14 + usize::from(d[14] & 0xf) * 4;
                    // The flow is the address the reply goes to (one id for all: Linux's layer3+4
                    // hashes the ICMP id as a port, and ids that follow the addresses cancel out).
                    let flow = d[33].wrapping_sub(OUR_IP0);
                    if d.len() >= l4 + 8 && d[30..33] == our_ip(0)[..3] && flow < FLOWS {
                        let seq = u16::from_be_bytes([d[l4 + 6], d[l4 + 7]]);
                        self.replies.insert((u16::from(flow), seq));
                    }
                }
                self.pool.free(m);
            }
            self.send(&answers)?;
            if n == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    /// One round: an echo request per flow (sequence `seq`), then `wait` of polling; returns
    /// the flows answered.
    fn round(&mut self, seq: u16, wait: Duration) -> Result<usize, String> {
        let frames: Vec<Vec<u8>> =
            (0..FLOWS).map(|f| echo_request(self.linux_mac, self.mac, our_ip(f), 0x4c41, seq)).collect();
        let mut sent = 0;
        let t = Instant::now();
        while sent < frames.len() && t.elapsed() < Duration::from_secs(1) {
            sent += self.send(&frames[sent..])?;
            self.pump(Duration::from_millis(5))?;
        }
        self.pump(wait)?;
        Ok((0..FLOWS).filter(|&f| self.replies.contains(&(u16::from(f), seq))).count())
    }

    fn member_tx(&self) -> Result<[u64; 2], String> {
        let a = self.p.info(self.members[0]).map_err(|e| e.to_string())?.stats.opackets;
        let b = self.p.info(self.members[1]).map_err(|e| e.to_string())?.stats.opackets;
        Ok([a, b])
    }
}

/// What Linux's bond0 says of its active aggregator: (number of ports, partner MAC).
fn linux_aggregator() -> (usize, String) {
    let t = std::fs::read_to_string("/proc/net/bonding/bond0").unwrap_or_default();
    let active = t.split("Active Aggregator Info:").nth(1).unwrap_or("");
    let field = |k: &str| {
        active.lines().find_map(|l| l.trim().strip_prefix(k).map(|v| v.trim().to_string())).unwrap_or_default()
    };
    (field("Number of ports:").parse().unwrap_or(0), field("Partner Mac Address:"))
}

fn net_stat(iface: &str, what: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/{what}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// net_bonding mode 4 against the Linux bonding driver (802.3ad, fast LACP, layer3+4) over two
/// cables: the aggregation forms (the kernel shows our system as its partner, both ports in its
/// aggregator), ICMP echo over 16 flows is answered in full with both cables carrying traffic
/// each way, one cable's link dropped at both ends moves every flow to the other and the
/// answers are whole again, and the cable back rejoins the aggregate. Then mode 1 against
/// Linux's active-backup ([`active_backup_with_linux`]).
fn lacp_with_linux() -> Check {
    for b in BOND_OURS.iter().chain(&BOND_LINUX) {
        if read_hex(&sysfs(b).join("device")) != Some(VIRTIO_NET.1) {
            return Ok(Some(format!("no virtio-net at {b}: this guest has no bond cables")));
        }
    }
    let ours = [bind(BOND_OURS[0].to_string())?, bind(BOND_OURS[1].to_string())?];
    // The Linux side's drivers, now that ours are bound to vfio-pci.
    let later = std::fs::read_to_string("/etc/modules.later").unwrap_or_default();
    for m in later.lines().filter(|l| !l.is_empty()) {
        let out = std::process::Command::new("insmod").arg(format!("/lib/modules/{m}")).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("File exists") => {}
            other => return Err(format!("insmod {m}: {other:?}")),
        }
    }
    let mut ifaces = Vec::new();
    for b in BOND_LINUX {
        let mut name = None;
        wait(Duration::from_secs(10), || {
            name = std::fs::read_dir(sysfs(b))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
                .find_map(|e| std::fs::read_dir(e.path().join("net")).ok()?.flatten().next())
                .map(|e| e.file_name().to_string_lossy().into_owned());
            name.is_some()
        })
        .map_err(|_| format!("{b}: no network interface 10 s after virtio_net loaded"))?;
        ifaces.push(name.expect("found"));
    }
    let sh = |c: &str| -> Result<(), String> {
        let o = std::process::Command::new("sh").args(["-c", c]).output().map_err(|e| e.to_string())?;
        expect(o.status.success(), || format!("{c}: {}", String::from_utf8_lossy(&o.stderr).trim()))
    };
    let bonding = "/sys/class/net/bond0/bonding";
    // Loading bonding made bond0 already (its max_bonds=1 default).
    sh("[ -d /sys/class/net/bond0 ] || echo +bond0 > /sys/class/net/bonding_masters")?;
    sh(&format!(
        "echo 802.3ad > {bonding}/mode && echo fast > {bonding}/lacp_rate && echo 100 > {bonding}/miimon \
         && echo layer3+4 > {bonding}/xmit_hash_policy"
    ))?;
    for i in &ifaces {
        sh(&format!("ip link set {i} down && echo +{i} > {bonding}/slaves"))?;
    }
    sh("ip addr add 10.77.0.1/24 dev bond0 && ip link set bond0 up")?;
    let linux_mac = std::fs::read_to_string("/sys/class/net/bond0/address")
        .ok()
        .and_then(|m| parse_mac(&m))
        .ok_or("bond0 has no MAC")?;

    let args = ["--proc-type=primary", "--file-prefix=vmbond", "-m", "64", "-a", "0000:00:00.0"];
    let (opts, _) = lab_core::options::Options::parse(args).map_err(|e| e.to_string())?;
    let p = lab_core::process::Process::init(&opts, lab_drivers::registry()).map_err(|e| e.to_string())?;
    let r = (|| {
        let ma = p.attach(&ours[0].bdf).map_err(|e| format!("attach {}: {e}", ours[0].bdf))?;
        let mb = p.attach(&ours[1].bdf).map_err(|e| format!("attach {}: {e}", ours[1].bdf))?;
        let bond = p
            .attach(&format!(
                "net_bonding0,mode=4,slave={},slave={},lacp_rate=fast,xmit_policy=l34",
                ours[0].bdf, ours[1].bdf
            ))
            .map_err(|e| format!("attach the bond: {e}"))?;
        let mac = p.info(bond).map_err(|e| e.to_string())?.dev.mac;
        let pool = lab_core::mbuf::Mempool::lookup(p.runtime().shm(), lab_core::ethdev::DEFAULT_POOL, 64)
            .map_err(|e| e.to_string())?;
        let mut b = OurBond { p, pool, bond, members: [ma, mb], mac, linux_mac, replies: Default::default() };
        let r = lacp_rounds(&mut b, &ifaces).and_then(|_| active_backup_with_linux(&mut b, &ifaces, &ours, &sh));
        b.p.shutdown();
        r
    })();
    let _ = sh("echo -bond0 > /sys/class/net/bonding_masters");
    r
}

fn lacp_rounds(b: &mut OurBond, ifaces: &[String]) -> Check {
    let our_mac = lab_drivers_mac(&b.mac);
    let t0 = Instant::now();
    let formed = |b: &mut OurBond| -> Result<bool, String> {
        b.pump(Duration::from_millis(100))?;
        let (n, partner) = linux_aggregator();
        let up = b.p.info(b.bond).map_err(|e| e.to_string())?.link.up;
        Ok(n == 2 && partner == our_mac && up)
    };
    while !formed(b)? {
        if t0.elapsed() > Duration::from_secs(40) {
            let (n, partner) = linux_aggregator();
            return Err(format!(
                "no aggregate within 40 s: Linux has {n} ports with partner {partner:?} (we are {our_mac}); /proc/net/bonding/bond0:\n{}",
                std::fs::read_to_string("/proc/net/bonding/bond0").unwrap_or_default()
            ));
        }
    }
    let formed_in = t0.elapsed();
    // ARP settles in a first round that is not counted.
    b.round(0, Duration::from_millis(500))?;
    let (tx0, ltx0) = (b.member_tx()?, [net_stat(&ifaces[0], "tx_packets"), net_stat(&ifaces[1], "tx_packets")]);
    let mut answered = 0;
    for seq in 1..=8 {
        answered += b.round(seq, Duration::from_millis(300))?;
    }
    let (tx1, ltx1) = (b.member_tx()?, [net_stat(&ifaces[0], "tx_packets"), net_stat(&ifaces[1], "tx_packets")]);
    let ours = [tx1[0] - tx0[0], tx1[1] - tx0[1]];
    let linux = [ltx1[0] - ltx0[0], ltx1[1] - ltx0[1]];
    expect(answered == 8 * usize::from(FLOWS), || format!("{answered} of {} echo requests answered", 8 * FLOWS))?;
    // 128 requests and as many replies; LACPDUs are a few a second: each cable carried traffic.
    expect(ours.iter().all(|&n| n >= 16), || format!("our members sent {ours:?}: not spread over both"))?;
    expect(linux.iter().all(|&n| n >= 16), || format!("Linux's members sent {linux:?}: not spread over both"))?;

    // Cable 2 down at both ends: both sides see the link drop and move its flows.
    for id in CABLE2 {
        say(&format!(r#"ask {{"execute":"set_link","arguments":{{"name":"{id}","up":false}}}}"#));
    }
    let mut lost = 0;
    let mut seq = 100;
    let t1 = Instant::now();
    loop {
        let (n, _) = linux_aggregator();
        let ours_down = !b.p.info(b.members[1]).map_err(|e| e.to_string())?.link.up;
        lost += usize::from(FLOWS) - b.round(seq, Duration::from_millis(300))?;
        seq += 1;
        if n == 1 && ours_down {
            break;
        }
        if t1.elapsed() > Duration::from_secs(20) {
            return Err(format!("cable 2 still in use 20 s after its link went down (Linux: {n} ports)"));
        }
    }
    let moved_in = t1.elapsed();
    let before = b.member_tx()?;
    let mut answered = 0;
    for _ in 0..6 {
        answered += b.round(seq, Duration::from_millis(300))?;
        seq += 1;
    }
    let after = b.member_tx()?;
    expect(answered == 6 * usize::from(FLOWS), || {
        format!("after the failover {answered} of {} echo requests answered", 6 * FLOWS)
    })?;
    expect(after[1] == before[1], || format!("member 2 (link down) still sent {} frames", after[1] - before[1]))?;

    // Cable 2 back: it rejoins the aggregate.
    for id in CABLE2 {
        say(&format!(r#"ask {{"execute":"set_link","arguments":{{"name":"{id}","up":true}}}}"#));
    }
    let t2 = Instant::now();
    loop {
        b.round(seq, Duration::from_millis(200))?;
        seq += 1;
        let (n, _) = linux_aggregator();
        if n == 2 && b.p.info(b.members[1]).map_err(|e| e.to_string())?.link.up {
            break;
        }
        if t2.elapsed() > Duration::from_secs(30) {
            return Err(format!("cable 2 not back in the aggregate 30 s after its link came up (Linux: {n} ports)"));
        }
    }
    let back_in = t2.elapsed();
    let mut answered = 0;
    for _ in 0..4 {
        answered += b.round(seq, Duration::from_millis(300))?;
        seq += 1;
    }
    expect(answered == 4 * usize::from(FLOWS), || format!("after rejoining {answered} of {} answered", 4 * FLOWS))?;
    say(&format!(
        "note 802.3ad with Linux: aggregate in {} ms, traffic per member ours {ours:?} Linux {linux:?}; \
         failover in {} ms with {lost} of the echo requests meanwhile unanswered; rejoined in {} ms",
        formed_in.as_millis(),
        moved_in.as_millis(),
        back_in.as_millis()
    ));
    Ok(None)
}

/// Then mode 1 against Linux's active-backup on the same cables: all traffic on cable 1 (both
/// sides' primary), cable 1's link dropped at both ends, and both move to cable 2: every echo
/// request answered before and after, each side's backup member silent until then.
fn active_backup_with_linux(
    b: &mut OurBond,
    ifaces: &[String],
    ours: &[Func; 2],
    sh: &dyn Fn(&str) -> Result<(), String>,
) -> Check {
    b.p.detach("net_bonding0").map_err(|e| format!("detach the 802.3ad bond: {e}"))?;
    let bonding = "/sys/class/net/bond0/bonding";
    sh(&format!(
        "ip link set bond0 down && echo -{0} > {bonding}/slaves && echo -{1} > {bonding}/slaves",
        ifaces[0], ifaces[1]
    ))?;
    sh(&format!("echo active-backup > {bonding}/mode"))?;
    for i in ifaces {
        sh(&format!("ip link set {i} down && echo +{i} > {bonding}/slaves"))?;
    }
    sh(&format!("echo {} > {bonding}/primary && ip link set bond0 up", ifaces[0]))?;
    b.linux_mac = std::fs::read_to_string("/sys/class/net/bond0/address")
        .ok()
        .and_then(|m| parse_mac(&m))
        .ok_or("bond0 has no MAC")?;
    b.bond =
        b.p.attach(&format!("net_bonding0,mode=1,slave={0},slave={1},primary={0}", ours[0].bdf, ours[1].bdf))
            .map_err(|e| format!("attach the active-backup bond: {e}"))?;
    let active = || std::fs::read_to_string(format!("{bonding}/active_slave")).unwrap_or_default().trim().to_string();
    let t0 = Instant::now();
    while active() != ifaces[0] || !b.p.info(b.bond).map_err(|e| e.to_string())?.link.up {
        b.pump(Duration::from_millis(100))?;
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("Linux's active slave is {:?} 20 s on, not {}", active(), ifaces[0]));
        }
    }
    let mut seq = 1000;
    let mut rounds = |b: &mut OurBond, n: u16, what: &str| -> Result<[u64; 2], String> {
        b.round(seq, Duration::from_millis(500))?; // ARP and the switch settle
        seq += 1;
        let before = b.member_tx()?;
        let mut answered = 0;
        for _ in 0..n {
            answered += b.round(seq, Duration::from_millis(300))?;
            seq += 1;
        }
        let after = b.member_tx()?;
        expect(answered == usize::from(n * u16::from(FLOWS)), || {
            format!("{what}: {answered} of {} echo requests answered", n * u16::from(FLOWS))
        })?;
        Ok([after[0] - before[0], after[1] - before[1]])
    };
    let first = rounds(b, 4, "active-backup on cable 1")?;
    expect(first[0] >= 64 && first[1] == 0, || format!("active-backup on cable 1: our members sent {first:?}"))?;
    for id in ["bonda1", "bondb1"] {
        say(&format!(r#"ask {{"execute":"set_link","arguments":{{"name":"{id}","up":false}}}}"#));
    }
    let t1 = Instant::now();
    while active() != ifaces[1] || b.p.info(b.members[0]).map_err(|e| e.to_string())?.link.up {
        b.pump(Duration::from_millis(50))?;
        if t1.elapsed() > Duration::from_secs(20) {
            return Err(format!("20 s after cable 1 went down Linux's active slave is {:?}", active()));
        }
    }
    let moved_in = t1.elapsed();
    let second = rounds(b, 4, "active-backup after cable 1 went down")?;
    expect(second[1] >= 64 && second[0] == 0, || format!("after the failover our members sent {second:?}"))?;
    for id in ["bonda1", "bondb1"] {
        say(&format!(r#"ask {{"execute":"set_link","arguments":{{"name":"{id}","up":true}}}}"#));
    }
    say(&format!(
        "note active-backup with Linux: cable 1 carried {first:?}, then both sides moved to cable 2 in {} ms and it carried {second:?}",
        moved_in.as_millis()
    ));
    Ok(None)
}
