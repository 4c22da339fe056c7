//! Shared memory: one file per runtime, mapped by every process of the lab.
//!
//! The file lives on hugetlbfs when a mount with enough free pages exists (or `--huge-dir` names
//! one), else on `/dev/shm`. Its first page is a [`ShmHeader`] (magic, version, size, a
//! cross-process lock and the memzone table); the rest is handed out as named, aligned memzones.
//! Structures inside hold offsets ([`ShmOffset`]), never pointers, because every process maps the
//! file at its own address. The device-visible address of a byte is `IOVA_BASE + offset`
//! ([`Iova`]), the same in every process and for every device.
//!
//! A mapping is never unmapped before the process exits, so a pointer derived from it (an mbuf,
//! a ring) can never dangle.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// Base of the IOVA window: device address of offset 0 of the shared memory file.
/// 4 GiB, away from the x86 MSI window and below 39-bit IOMMU limits.
pub const IOVA_BASE: u64 = 0x1_0000_0000;
/// Magic number at the start of the file ("LABSHM" + format).
pub const MAGIC: u64 = 0x4c41_4253_484d_0001;
/// Layout version of the header; a secondary refuses a different one.
pub const VERSION: u32 = 1;
/// Number of memzone slots.
pub const MAX_ZONES: usize = 256;
/// Longest memzone name, in bytes.
pub const ZONE_NAME_MAX: usize = 63;
/// Default size of the shared memory, in MiB, when `-m` is not given.
pub const DEFAULT_MB: u64 = 64;

/// An offset into the shared memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShmOffset(pub u64);

/// A device-visible address (`IOVA_BASE + offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl ShmOffset {
    /// The IOVA of this offset.
    pub fn iova(self) -> Iova {
        Iova(IOVA_BASE + self.0)
    }
}

/// Errors of the shared memory layer.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The memory file could not be created, opened, sized or mapped.
    #[error("shared memory {path}: {what}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Step that failed.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The mount holding the memory file has no room for it (a full /dev/shm, a hugetlbfs
    /// mount out of pages or over its size limit).
    #[error("no room for the {mb} MiB shared memory file {path} on {mount} ({free_mb} MiB free there)")]
    MountFull {
        /// File concerned (removed again).
        path: PathBuf,
        /// The directory (mount) it was to live on.
        mount: PathBuf,
        /// Size asked, MiB.
        mb: u64,
        /// Free space found there, MiB.
        free_mb: u64,
    },
    /// A secondary found a mapping that is not the primary's (magic, version or size).
    #[error("shared memory {path} does not match this build: {field} is {found:#x}, expected {expected:#x}")]
    Mismatch {
        /// File concerned.
        path: PathBuf,
        /// Field that differs.
        field: &'static str,
        /// Value found.
        found: u64,
        /// Value expected.
        expected: u64,
    },
    /// The primary did not finish initialising the file in time.
    #[error("shared memory {path} was not initialised by the primary within {waited:?}")]
    NotReady {
        /// File concerned.
        path: PathBuf,
        /// Time waited.
        waited: Duration,
    },
    /// Requested size out of range.
    #[error("shared memory size {mb} MiB is out of range 2..=65536")]
    BadSize {
        /// Size asked.
        mb: u64,
    },
    /// Zone name empty or too long.
    #[error("memzone name {name:?} is invalid: 1..={max} bytes of printable ASCII")]
    BadZoneName {
        /// Name given.
        name: String,
        /// Limit.
        max: usize,
    },
    /// A zone of that name exists already.
    #[error("memzone {name:?} already exists")]
    ZoneExists {
        /// Name given.
        name: String,
    },
    /// No zone of that name.
    #[error("memzone {name:?} not found")]
    ZoneNotFound {
        /// Name given.
        name: String,
    },
    /// Not enough free space.
    #[error("memzone {name:?}: no room for {len} bytes (free {free} of {total})")]
    NoSpace {
        /// Name given.
        name: String,
        /// Bytes asked.
        len: u64,
        /// Bytes still free at the end of the file.
        free: u64,
        /// Total size.
        total: u64,
    },
    /// All zone slots used.
    #[error("memzone {name:?}: all {max} memzone slots are in use")]
    NoSlot {
        /// Name given.
        name: String,
        /// Limit.
        max: usize,
    },
    /// Alignment not a power of two or too large.
    #[error("memzone alignment {align} is not a power of two in 1..=2MiB")]
    BadAlign {
        /// Alignment asked.
        align: u64,
    },
}

/// A lock in shared memory, held by at most one process (by pid). A waiter that finds the holder
/// dead takes it over, so a crashed process cannot wedge the lab. Control path only.
#[repr(C)]
pub struct ShmLock {
    owner: crate::sync::AtomicU32,
}
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<ShmLock>() == 4);

impl ShmLock {
    /// Takes the lock; returns a guard that releases it.
    pub fn lock(&self) -> ShmLockGuard<'_> {
        let me = std::process::id();
        let mut spins = 0u32;
        loop {
            let cur = self.owner.load(Ordering::Relaxed);
            if cur == 0 {
                if self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return ShmLockGuard { lock: self };
                }
            } else if spins % 1024 == 1023
                && cur != me
                && !sys::pid_alive(cur)
                && self.owner.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                tracing::warn!(dead_pid = cur, "took over a shared-memory lock held by a dead process");
                return ShmLockGuard { lock: self };
            }
            crate::sync::backoff(&mut spins);
        }
    }

    /// A lock of its own, not in shared memory (loom's tests of what it guards).
    #[cfg(all(test, loom))]
    pub(crate) fn new() -> ShmLock {
        ShmLock { owner: crate::sync::AtomicU32::new(0) }
    }
}

/// Releases a [`ShmLock`] on drop.
pub struct ShmLockGuard<'a> {
    lock: &'a ShmLock,
}

impl Drop for ShmLockGuard<'_> {
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::Release);
    }
}

#[repr(C)]
struct ZoneEntry {
    name: [u8; 64],
    offset: u64,
    len: u64,
    /// 0 free slot, 1 in use, 2 hole (freed, reusable space).
    state: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<ZoneEntry>() == 88);

/// The header at offset 0 of the file.
#[repr(C)]
pub struct ShmHeader {
    magic: AtomicU64,
    version: u32,
    ready: AtomicU32,
    size: u64,
    page_size: u64,
    primary_pid: AtomicU32,
    _pad: u32,
    next_free: u64,
    /// Protects the zone table; also lent to other control-path users of shared state.
    pub lock: ShmLock,
    _pad2: u32,
    zones: [ZoneEntry; MAX_ZONES],
}

const HEADER_LEN: u64 = 64 * 1024;
const _: () = assert!(std::mem::size_of::<ShmHeader>() as u64 <= HEADER_LEN);
// A secondary of another build reads magic, version and size first: they stay where they are.
const _: () = assert!(std::mem::offset_of!(ShmHeader, magic) == 0);
const _: () = assert!(std::mem::offset_of!(ShmHeader, version) == 8);
const _: () = assert!(std::mem::offset_of!(ShmHeader, size) == 16);

/// Where the memory file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmPlacement {
    /// Full path of the memory file.
    pub path: PathBuf,
    /// Whether it is on hugetlbfs.
    pub hugepages: bool,
    /// Page size of the backing filesystem.
    pub page_size: u64,
}

/// Picks the memory file location: `huge_dir` if given, else a hugetlbfs mount with enough free
/// 2 MiB pages for `size`, else `/dev/shm`.
pub fn placement(prefix: &str, size: u64, no_huge: bool, huge_dir: Option<&Path>) -> ShmPlacement {
    let name = format!("hotplug-lab-{prefix}-mem");
    if !no_huge {
        if let Some(dir) = huge_dir {
            return ShmPlacement { path: dir.join(&name), hugepages: true, page_size: 2 << 20 };
        }
        if let Some((dir, page)) = hugetlbfs_mount() {
            let free = free_hugepages(page);
            let need = size.div_ceil(page);
            if free >= need {
                return ShmPlacement { path: dir.join(&name), hugepages: true, page_size: page };
            }
            tracing::debug!(free, need, "hugetlbfs mounted but not enough free pages: using /dev/shm");
        }
    }
    ShmPlacement { path: PathBuf::from("/dev/shm").join(name), hugepages: false, page_size: 4096 }
}

/// Every place [`placement`] may put the memory file of `prefix` without `--huge-dir`: /dev/shm
/// and each hugetlbfs mount. For tools and tests that must find (or remove) it after its
/// processes are gone; a live process says where it is in telemetry's `/lab/process`.
pub fn possible_files(prefix: &str) -> Vec<PathBuf> {
    let name = format!("hotplug-lab-{prefix}-mem");
    let mut v = vec![PathBuf::from("/dev/shm").join(&name)];
    for line in std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[2] == "hugetlbfs" {
            v.push(PathBuf::from(f[1]).join(&name));
        }
    }
    v
}

/// The placement of an existing memory file: hugetlbfs (with its page size) or not, from the
/// filesystem it is on.
pub fn placement_of(path: &Path) -> ShmPlacement {
    let (hugepages, page_size) = match nix::sys::statfs::statfs(path) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC => (true, s.block_size() as u64),
        _ => (false, 4096),
    };
    ShmPlacement { path: path.to_path_buf(), hugepages, page_size }
}

fn hugetlbfs_mount() -> Option<(PathBuf, u64)> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4 && f[2] == "hugetlbfs" {
            let page = f[3]
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="))
                .and_then(|v| match v.strip_suffix('M') {
                    Some(m) => m.parse::<u64>().ok().map(|m| m << 20),
                    None => v.strip_suffix('G').and_then(|g| g.parse::<u64>().ok()).map(|g| g << 30),
                })
                .unwrap_or(2 << 20);
            return Some((PathBuf::from(f[1]), page));
        }
    }
    None
}

fn free_hugepages(page: u64) -> u64 {
    let p = format!("/sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages", page >> 10);
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// One process's mapping of the lab's shared memory.
pub struct Shm {
    base: NonNull<u8>,
    len: u64,
    file: File,
    placement: ShmPlacement,
    primary: bool,
}

// SAFETY: the mapping is shared memory accessed only through atomics or under ShmLock / by
// structures that document their own synchronisation; the raw base pointer itself is immutable.
unsafe impl Send for Shm {}
// SAFETY: as above; &Shm hands out only offsets, atomics and raw pointers for checked views.
unsafe impl Sync for Shm {}

impl Shm {
    /// Creates (primary) the memory file, replacing any leftover of a crashed primary.
    pub fn create(placement: ShmPlacement, mb: u64) -> Result<Shm, MemError> {
        if !(2..=65536).contains(&mb) {
            return Err(MemError::BadSize { mb });
        }
        let path = placement.path.clone();
        let io = |what, source| MemError::Io { path: path.clone(), what, source };
        let len = (mb << 20).div_ceil(placement.page_size) * placement.page_size;
        if path.exists() {
            tracing::info!(path = %path.display(), "reclaiming shared memory left by a previous primary");
            let _ = std::fs::remove_file(&path);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io("create", e))?;
        // A file that cannot be sized or mapped (hugetlbfs out of pages) is not left behind.
        let gone = |e: MemError| {
            let _ = std::fs::remove_file(&path);
            e
        };
        file.set_len(len).map_err(|e| gone(io("set size", e)))?;
        sys::allocate(file.as_fd(), len).map_err(|e| {
            let mount = path.parent().map(Path::to_path_buf).unwrap_or_default();
            gone(match e.raw_os_error() {
                Some(libc::ENOSPC) => MemError::MountFull {
                    free_mb: sys::free_bytes(&mount).unwrap_or(0) >> 20,
                    path: path.clone(),
                    mount,
                    mb: len >> 20,
                },
                _ => io("allocate", e),
            })
        })?;
        let base = sys::mmap_shared(file.as_fd(), len as usize).map_err(|e| gone(io("mmap", e)))?;
        let shm = Shm { base, len, file, placement, primary: true };
        // SAFETY: the file is fresh (zero-filled) and at least HEADER_LEN long; nobody else maps it
        // yet because `ready` is 0 and secondaries wait for it.
        let h = unsafe { &mut *shm.base.as_ptr().cast::<ShmHeader>() };
        h.version = VERSION;
        h.size = len;
        h.page_size = shm.placement.page_size;
        h.next_free = HEADER_LEN;
        h.primary_pid.store(std::process::id(), Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Relaxed);
        h.ready.store(1, Ordering::Release);
        Ok(shm)
    }

    /// Opens and maps the primary's file (secondary), checking magic, version and size.
    pub fn open(placement: ShmPlacement, wait: Duration) -> Result<Shm, MemError> {
        let path = placement.path.clone();
        let io = |what, source| MemError::Io { path: path.clone(), what, source };
        let start = Instant::now();
        let (file, len) = loop {
            match OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path) {
                Ok(f) => {
                    let len = f.metadata().map_err(|e| io("stat", e))?.len();
                    if len >= HEADER_LEN {
                        break (f, len);
                    }
                }
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("open", e)),
                Err(_) => {}
            }
            if start.elapsed() > wait {
                return Err(MemError::NotReady { path, waited: wait });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let base = sys::mmap_shared(file.as_fd(), len as usize).map_err(|e| io("mmap", e))?;
        let shm = Shm { base, len, file, placement, primary: false };
        let h = shm.header();
        while h.ready.load(Ordering::Acquire) == 0 {
            if start.elapsed() > wait {
                return Err(MemError::NotReady { path, waited: wait });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mism = |field, found: u64, expected: u64| MemError::Mismatch { path: path.clone(), field, found, expected };
        let magic = h.magic.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(mism("magic", magic, MAGIC));
        }
        if h.version != VERSION {
            return Err(mism("version", h.version as u64, VERSION as u64));
        }
        if h.size != len {
            return Err(mism("size", h.size, len));
        }
        Ok(shm)
    }

    fn header(&self) -> &ShmHeader {
        // SAFETY: the mapping is at least HEADER_LEN bytes and page aligned; ShmHeader is repr(C)
        // plain data whose mutable parts are atomics or written only under `lock`.
        unsafe { &*self.base.as_ptr().cast::<ShmHeader>() }
    }

    #[allow(clippy::mut_from_ref)]
    fn header_mut(&self, _g: &ShmLockGuard<'_>) -> &mut ShmHeader {
        // SAFETY: called only with the zone lock held, which serialises every writer of the
        // non-atomic fields across processes.
        unsafe { &mut *self.base.as_ptr().cast::<ShmHeader>() }
    }

    /// The cross-process control-path lock of this shared memory.
    pub fn lock(&self) -> &ShmLock {
        &self.header().lock
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a mapping has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Where the file is.
    pub fn placement(&self) -> &ShmPlacement {
        &self.placement
    }

    /// Whether this process created the file.
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Pid of the primary that created the file.
    pub fn primary_pid(&self) -> u32 {
        self.header().primary_pid.load(Ordering::Relaxed)
    }

    /// The file, for handing to a device (vfio-user DMA_MAP sends this descriptor).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// This process's address of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// IOVA of the first byte.
    pub fn iova_base(&self) -> Iova {
        Iova(IOVA_BASE)
    }

    /// Local pointer for `off`, checked to leave `len` bytes inside the mapping.
    pub fn ptr(&self, off: ShmOffset, len: u64) -> Option<NonNull<u8>> {
        let end = off.0.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: off + len <= mapping length, so the result stays inside the mapping.
        NonNull::new(unsafe { self.base.as_ptr().add(off.0 as usize) })
    }

    /// Copies bytes out of shared memory at `off`; false when the range leaves the mapping.
    pub fn read_at(&self, off: ShmOffset, buf: &mut [u8]) -> bool {
        let Some(p) = self.ptr(off, buf.len() as u64) else { return false };
        // SAFETY: the range is inside the mapping (checked); raw copy, as other processes may
        // write the same bytes concurrently (no reference to shared memory is formed).
        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copies bytes into shared memory at `off`; false when the range leaves the mapping.
    pub fn write_at(&self, off: ShmOffset, data: &[u8]) -> bool {
        let Some(p) = self.ptr(off, data.len() as u64) else { return false };
        // SAFETY: as in read_at.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
        true
    }

    /// Offset of a local pointer into the mapping, if it points inside.
    pub fn offset_of(&self, p: *const u8) -> Option<ShmOffset> {
        let b = self.base.as_ptr() as usize;
        let a = p as usize;
        (a >= b && a < b + self.len as usize).then(|| ShmOffset((a - b) as u64))
    }

    /// Reserves a zone of `len` bytes aligned to `align`, zero-filled.
    pub fn reserve(&self, name: &str, len: u64, align: u64) -> Result<Zone, MemError> {
        check_name(name)?;
        if !align.is_power_of_two() || align > (2 << 20) {
            return Err(MemError::BadAlign { align });
        }
        let g = self.lock().lock();
        let h = self.header_mut(&g);
        if find(h, name).is_some() {
            return Err(MemError::ZoneExists { name: name.into() });
        }
        let len = len.max(1).div_ceil(64) * 64;
        // First fit among holes left by freed zones, else bump allocation at the end.
        let hole = h.zones.iter().position(|z| z.state == 2 && z.offset % align == 0 && z.len >= len);
        let (slot, off) = if let Some(i) = hole {
            (i, h.zones[i].offset)
        } else {
            let off = h.next_free.div_ceil(align) * align;
            let end = off.checked_add(len).filter(|e| *e <= self.len);
            if end.is_none() {
                return Err(MemError::NoSpace {
                    name: name.into(),
                    len,
                    free: self.len.saturating_sub(h.next_free),
                    total: self.len,
                });
            }
            let slot = h
                .zones
                .iter()
                .position(|z| z.state == 0)
                .ok_or(MemError::NoSlot { name: name.into(), max: MAX_ZONES })?;
            h.next_free = off + len;
            (slot, off)
        };
        let z = &mut h.zones[slot];
        let keep_len = if z.state == 2 { z.len } else { len };
        z.name = [0; 64];
        z.name[..name.len()].copy_from_slice(name.as_bytes());
        z.offset = off;
        z.len = keep_len;
        z.state = 1;
        // SAFETY: [off, off+keep_len) is inside the mapping (checked at allocation) and owned by
        // this new zone only; nobody can look it up before we release the lock.
        unsafe { std::ptr::write_bytes(self.base.as_ptr().add(off as usize), 0, keep_len as usize) };
        Ok(Zone { name: name.into(), offset: ShmOffset(off), len: keep_len })
    }

    /// Finds a zone by name.
    pub fn lookup(&self, name: &str) -> Result<Zone, MemError> {
        check_name(name)?;
        let g = self.lock().lock();
        let h = self.header_mut(&g);
        find(h, name)
            .map(|i| Zone { name: name.into(), offset: ShmOffset(h.zones[i].offset), len: h.zones[i].len })
            .ok_or_else(|| MemError::ZoneNotFound { name: name.into() })
    }

    /// Frees a zone; its space can be reused by a later zone that fits.
    pub fn free(&self, name: &str) -> Result<(), MemError> {
        check_name(name)?;
        let g = self.lock().lock();
        let h = self.header_mut(&g);
        let i = find(h, name).ok_or_else(|| MemError::ZoneNotFound { name: name.into() })?;
        h.zones[i].state = 2;
        h.zones[i].name = [0; 64];
        Ok(())
    }

    /// Takes zone `name` out of use for good without freeing it: it is renamed (`~PID.N`), so
    /// the name can be reserved again while memory someone may still write (a peer that did not
    /// confirm it stopped) is never handed out. Returns the new name.
    pub fn retire(&self, name: &str) -> Result<String, MemError> {
        check_name(name)?;
        let g = self.lock().lock();
        let h = self.header_mut(&g);
        let i = find(h, name).ok_or_else(|| MemError::ZoneNotFound { name: name.into() })?;
        let kept = retired_name();
        set_name(&mut h.zones[i], &kept);
        Ok(kept)
    }

    /// Names of all zones in use.
    pub fn zones(&self) -> Vec<Zone> {
        let g = self.lock().lock();
        let h = self.header_mut(&g);
        h.zones
            .iter()
            .filter(|z| z.state == 1)
            .map(|z| Zone { name: zone_name(z), offset: ShmOffset(z.offset), len: z.len })
            .collect()
    }

    /// What the zones take: how many, their bytes, the allocation high-water mark and the size.
    pub fn usage(&self) -> MemUsage {
        let g = self.lock().lock();
        let h = self.header_mut(&g);
        let live = h.zones.iter().filter(|z| z.state == 1);
        MemUsage {
            zones: live.clone().count(),
            zone_bytes: live.map(|z| z.len).sum(),
            high_water: h.next_free,
            total: self.len,
        }
    }

    /// Removes the memory file (primary at clean shutdown). The mapping stays valid.
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.placement.path);
    }
}

fn zone_name(z: &ZoneEntry) -> String {
    let n = z.name.iter().position(|b| *b == 0).unwrap_or(64);
    String::from_utf8_lossy(&z.name[..n]).into_owned()
}

fn find(h: &ShmHeader, name: &str) -> Option<usize> {
    h.zones.iter().position(|z| {
        z.state == 1 && &z.name[..name.len()] == name.as_bytes() && (name.len() == 64 || z.name[name.len()] == 0)
    })
}

/// A name no zone has: this process's next retired one.
fn retired_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("~{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn set_name(z: &mut ZoneEntry, name: &str) {
    z.name = [0; 64];
    z.name[..name.len()].copy_from_slice(name.as_bytes());
}

fn check_name(name: &str) -> Result<(), MemError> {
    if name.is_empty() || name.len() > ZONE_NAME_MAX || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(MemError::BadZoneName { name: name.into(), max: ZONE_NAME_MAX });
    }
    Ok(())
}

/// The memory file's use by zones ([`Shm::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemUsage {
    /// Zones in use.
    pub zones: usize,
    /// Their bytes (a zone placed in a freed hole keeps the hole's length).
    pub zone_bytes: u64,
    /// End of the highest zone ever placed (holes below it are reused first).
    pub high_water: u64,
    /// Size of the memory file.
    pub total: u64,
}

/// A reserved memzone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Its name.
    pub name: String,
    /// Offset of its first byte.
    pub offset: ShmOffset,
    /// Length in bytes.
    pub len: u64,
}

impl Zone {
    /// IOVA of the first byte.
    pub fn iova(&self) -> Iova {
        self.offset.iova()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_shm(mb: u64) -> (tempfile::TempDir, Shm) {
        let d = tempfile::tempdir().unwrap();
        let p = ShmPlacement { path: d.path().join("mem"), hugepages: false, page_size: 4096 };
        (d, Shm::create(p, mb).unwrap())
    }

    #[test]
    fn zones_are_aligned_zeroed_and_found_by_name() {
        let (_d, shm) = tmp_shm(4);
        let a = shm.reserve("a", 100, 4096).unwrap();
        assert_eq!(a.offset.0 % 4096, 0);
        let b = shm.reserve("b", 10, 64).unwrap();
        assert!(b.offset.0 >= a.offset.0 + 100);
        assert_eq!(shm.lookup("a").unwrap(), a);
        assert!(matches!(shm.reserve("a", 1, 64), Err(MemError::ZoneExists { .. })));
        assert!(matches!(shm.lookup("c"), Err(MemError::ZoneNotFound { .. })));
        shm.free("a").unwrap();
        assert!(matches!(shm.lookup("a"), Err(MemError::ZoneNotFound { .. })));
        let c = shm.reserve("c", 64, 64).unwrap();
        assert_eq!(c.offset, a.offset, "freed space is reused");
    }

    #[test]
    fn a_retired_zone_stays_reserved_under_a_new_name_and_its_old_one_is_free() {
        let (_d, shm) = tmp_shm(4);
        let r = shm.reserve("r", 64, 64).unwrap();
        let kept = shm.retire("r").unwrap();
        assert!(kept.starts_with('~'), "{kept}");
        assert!(shm.lookup("r").is_err());
        assert_eq!(shm.lookup(&kept).unwrap().offset, r.offset, "the same memory, still reserved");
        let again = shm.reserve("r", 64, 64).unwrap();
        assert_ne!(again.offset, r.offset, "a new zone of that name gets other memory");
        assert!(matches!(shm.retire("nope"), Err(MemError::ZoneNotFound { .. })));
        assert_ne!(shm.retire("r").unwrap(), kept, "every retired name is new");
    }

    #[test]
    fn full_memory_names_the_sizes() {
        let (_d, shm) = tmp_shm(2);
        let e = shm.reserve("big", 3 << 20, 64).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
    }

    #[test]
    fn bad_names_and_alignments_are_refused() {
        let (_d, shm) = tmp_shm(2);
        assert!(matches!(shm.reserve("", 1, 64), Err(MemError::BadZoneName { .. })));
        assert!(matches!(shm.reserve(&"x".repeat(64), 1, 64), Err(MemError::BadZoneName { .. })));
        assert!(matches!(shm.reserve("x", 1, 3), Err(MemError::BadAlign { .. })));
    }

    #[test]
    fn a_second_mapping_sees_the_first_and_checks_the_header() {
        let (_d, shm) = tmp_shm(2);
        let z = shm.reserve("z", 8, 8).unwrap();
        let p = shm.ptr(z.offset, 8).unwrap();
        // SAFETY: zone z is 8 bytes inside the mapping.
        unsafe { p.as_ptr().cast::<u64>().write(0xfeed) };
        let other = Shm::open(shm.placement().clone(), Duration::from_secs(1)).unwrap();
        let q = other.ptr(other.lookup("z").unwrap().offset, 8).unwrap();
        // SAFETY: same zone in the second mapping.
        assert_eq!(unsafe { q.as_ptr().cast::<u64>().read() }, 0xfeed);
        // Corrupt the magic: a new opener refuses.
        // SAFETY: header magic is the first 8 bytes.
        unsafe { shm.base().cast::<u64>().write(0) };
        let e = Shm::open(shm.placement().clone(), Duration::from_secs(1)).err().unwrap();
        assert!(e.to_string().contains("magic"), "{e}");
    }
}
