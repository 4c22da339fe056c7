//! `net_vhost`: a vhost-user net back end as a port, DPDK's vhost PMD. The other end is any
//! vhost-user front end: DPDK's `net_virtio_user` (testpmd), QEMU's virtio-net, ours.
//!
//! `net_vhost0,iface=PATH[,queues=N][,client=0|1]`: with `client=0` (the default) we listen on
//! `iface` and take one front end at a time; with `client=1` we connect to the front end's socket,
//! and again every second while it is away (DPDK's reconnect).
//!
//! Built on rust-vmm's crates: `vhost` parses and answers the protocol (`BackendReqHandler` over
//! our [`VhostUserBackendReqHandlerMut`]) and `vm-memory` maps the front end's memory table
//! (`GuestMemoryMmap` over the region descriptors). The bursts walk the split virtqueues with
//! `devring.rs`: `virtio-queue`'s `Queue` did it first, through vm-memory's per-access
//! accessors, which measured a fifth of the back end's time (see the module).
//!
//! A control thread per port serves the socket: each message under the port's state lock.
//! The bursts only `try_lock` that lock, so a burst that meets a message being applied returns
//! 0 frames rather than wait; no peer can hold it. Receive queue `q` drains the front end's
//! transmit virtqueue `2q + 1`; transmit queue `q` fills its receive virtqueue `2q`, over as many
//! buffers as a frame needs when MRG_RXBUF is negotiated (`num_buffers` in the header), and
//! signals the call eventfd once per burst, only when the front end asks for it.
//!
//! Link state: up while a front end is connected and virtqueue pair 0 is ready (addresses,
//! kick, enabled); down when it hangs up or stops the rings (GET_VRING_BASE).
//!
//! Any process runs any queue. The primary serves the socket; after each message it publishes
//! (IPC action [`FDS_ACTION`]) duplicates of the front end's memory files and call eventfds with
//! a description of the live virtqueues, under a new generation in memzone `vhost_<port>`
//! (only when that description or its files changed: the messages of a steady connection leave
//! secondaries their mapping; a share that failed moves it too, so none keeps a stale one). A
//! secondary's follower thread sees the generation move, fetches them and maps the memory
//! itself; its bursts take the new mapping without waiting. Per virtqueue the zone holds the
//! device's two indices and an owner word: a burst (in any process) claims the queue with its pid
//! (a compare-and-swap, never a wait: a queue another process is in gives 0 frames, and so does
//! one another thread of the same process is in, the word being taken), takes the
//! indices, and leaves them for the next. While a message is applied the generation is odd and
//! the control thread owns every queue (it waits for a live process's burst inside to end, and
//! warns after 100 ms; a dead one's queue it takes at once, both indices set to the ring's used
//! index), so GET_VRING_BASE returns the index the last burst of whichever process reached. A
//! process that died inside a burst has its queue freed so within 50 ms. A secondary's detach drops its own mapping and descriptors only.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lab_core::devargs::{BusKind, KeyKind, KeySpec};
use lab_core::ethdev::{DevInfo, Driver, EthDev, EthError, LinkStatus, PortId, PortStats, ProbeCtx, Release};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::mem::{Shm, ShmOffset};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, BackendReqHandler, Error as VuError, GpuBackend, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::devring::{DevRing, F_INDIRECT, F_NEXT, F_WRITE};
use super::prefetch;
use crate::error::{Ctx, DriverError};
use crate::sys::share;

const NAME: &str = "net_vhost";
/// IPC action of the primary that hands secondaries the front end's memory and call eventfds.
pub const FDS_ACTION: &str = "net_vhost_fds";
/// Queue pairs at most.
pub const MAX_QUEUES: u16 = 8;
/// Virtqueue size the front end may ask for at most.
const MAX_QSIZE: u16 = 32768;
const MTU: u16 = 1500;
/// Longest frame taken from the front end (a larger chain is refused and counted).
const MAX_FRAME: usize = 9728;
/// How often the control thread looks at its stop flag.
const TICK: Duration = Duration::from_millis(50);
/// The virtio-net header we put in front of each received frame: no offloads.
static HDR_ZEROS: [u8; 12] = [0; 12];
/// The same over one buffer: `num_buffers` (bytes 10..12) 1.
static HDR_ONE: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

// Feature bits (virtio 1.2, 5.1.3 and 6; vhost-user's bit 30).
const F_MRG_RXBUF: u64 = 1 << 15;
const F_MQ: u64 = 1 << 22;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;

static KEYS: [KeySpec; 3] = [
    KeySpec::new("iface", KeyKind::Path, "the vhost-user socket: ours (client=0) or the front end's (client=1)"),
    KeySpec::new(
        "queues",
        KeyKind::U64 { min: 1, max: MAX_QUEUES as u64 },
        "queue pairs offered (default: the port configuration's receive queues)",
    ),
    KeySpec::new("client", KeyKind::Bool, "connect to the front end's socket instead of listening (default 0)"),
];

/// The net_vhost driver.
pub struct VhostDriver;

/// One virtqueue as the front end set it up.
struct Vring {
    /// SET_VRING_NUM.
    size: u16,
    /// SET_VRING_BASE: where the ring starts.
    base: u16,
    /// Front-end addresses from SET_VRING_ADDR (translated when the ring starts).
    addrs: Option<(u64, u64, u64)>,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    /// The started ring (after SET_VRING_KICK with everything else in place).
    ring: Option<DevRing>,
    /// Its parts' guest addresses (for secondaries, which map the memory themselves).
    gpas: (u64, u64, u64),
}

impl Vring {
    fn new() -> Vring {
        Vring { size: 256, base: 0, addrs: None, kick: None, call: None, enabled: false, ring: None, gpas: (0, 0, 0) }
    }
}

/// The port's vhost-user state: what the front end told us, under one lock shared by the
/// control thread (each message) and the bursts (`try_lock`).
struct Dev {
    pairs: u16,
    features: u64,
    protocol: u64,
    mem: Option<GuestMemoryMmap>,
    /// (guest address, size, front-end address) of each region, for ring address translation.
    regions: Vec<(u64, u64, u64)>,
    /// Where each region of `mem` is mapped here: (guest address, length, host address). The
    /// data copies go through these, once per descriptor, not through vm-memory's per-access
    /// region walk (a quarter of the back end's time when they did).
    hosts: Hosts,
    vrings: Vec<Vring>,
    connected: bool,
    /// (guest address, size, file offset) of each region, with a duplicate of its file: what
    /// secondaries map.
    shares: Vec<(u64, u64, u64)>,
    files: Vec<File>,
    /// Which files `shares` and the call eventfds are: a new value (never one seen before) at
    /// every memory table and call eventfd, so secondaries remap only when what they map changed.
    fds: u64,
}

/// The source of [`Dev::fds`] values.
fn next_fds() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The host mappings of the front end's regions (valid while `Dev::mem` holds them).
#[derive(Default)]
struct Hosts(Vec<(u64, u64, usize)>);

impl Hosts {
    /// The host address of guest range `[gpa, gpa + len)`, when one region holds all of it.
    #[inline]
    fn at(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        self.0.iter().find_map(|&(start, size, host)| {
            let off = gpa.checked_sub(start)?;
            (off.checked_add(len as u64)? <= size).then(|| (host + off as usize) as *mut u8)
        })
    }
}

impl Dev {
    fn new(pairs: u16) -> Dev {
        Dev {
            pairs,
            features: 0,
            protocol: 0,
            mem: None,
            regions: Vec::new(),
            hosts: Hosts::default(),
            vrings: (0..2 * pairs).map(|_| Vring::new()).collect(),
            connected: false,
            shares: Vec::new(),
            files: Vec::new(),
            fds: next_fds(),
        }
    }

    /// Back to the state before any front end (its hang-up, or a new connection).
    fn reset(&mut self) {
        *self = Dev::new(self.pairs);
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring, VuError> {
        self.vrings.get_mut(index as usize).ok_or(VuError::InvalidParam)
    }

    fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions.iter().find(|(_, size, ua)| va >= *ua && va - ua < *size).map(|(gpa, _, ua)| gpa + (va - ua))
    }

    /// Whether virtqueue `i` can carry frames.
    fn live(&self, i: usize) -> bool {
        self.connected && self.vrings.get(i).is_some_and(|v| v.enabled && v.ring.is_some())
    }

    /// Takes the indices the processes' bursts left in the zone (before a message).
    fn sync_in(&mut self, link: &SharedLink) {
        for (i, v) in self.vrings.iter_mut().enumerate() {
            if let Some(r) = &mut v.ring {
                r.set_indices(link.indices(i));
            }
        }
    }

    /// Puts the rings' indices in the zone (after a message: a ring started, resumed, moved).
    fn sync_out(&self, link: &SharedLink) {
        for (i, v) in self.vrings.iter().enumerate() {
            if let Some(r) = &v.ring {
                link.set_indices(i, r.indices());
            }
        }
    }

    /// What a secondary needs to run the live queues: the regions' files and the call eventfds,
    /// and a description of them (see [`SecState::build`]).
    fn share(&self, gen: u32) -> std::io::Result<(Vec<std::os::fd::OwnedFd>, Vec<u8>)> {
        let mut fds: Vec<std::os::fd::OwnedFd> = Vec::new();
        if self.connected {
            for f in &self.files {
                fds.push(f.try_clone()?.into());
            }
            for (i, v) in self.vrings.iter().enumerate() {
                if let Some(c) = v.call.as_ref().filter(|_| v.ring.is_some() && self.live(i)) {
                    fds.push(c.try_clone()?.into());
                }
            }
        }
        Ok((fds, self.share_text(gen)))
    }

    /// The description [`Dev::share`] sends; the descriptors it names are the files in order,
    /// then the call eventfds of the live virtqueues in order.
    fn share_text(&self, gen: u32) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut meta = format!("gen {gen} features {}\n", self.features);
        if !self.connected {
            return meta.into_bytes();
        }
        for (gpa, size, off) in self.shares.iter().take(self.files.len()) {
            let _ = writeln!(meta, "region {gpa} {size} {off}");
        }
        let mut k = self.files.len();
        for (i, v) in self.vrings.iter().enumerate() {
            let Some(r) = v.ring.as_ref().filter(|_| self.live(i)) else { continue };
            let call = match &v.call {
                Some(_) => {
                    k += 1;
                    (k - 1).to_string()
                }
                None => "-".into(),
            };
            let (d, a, u) = v.gpas;
            let _ = writeln!(meta, "vring {i} {} {d} {a} {u} {call}", r.size());
        }
        meta.into_bytes()
    }

    /// Starts virtqueue `i` once it has its addresses, a size and a kick (vhost-user: a ring
    /// starts at SET_VRING_KICK; without protocol features it is enabled then too).
    fn try_start(&mut self, i: usize) {
        let no_pf = self.features & F_PROTOCOL_FEATURES == 0;
        let Some((d, a, u)) = self.vrings[i].addrs else { return };
        let (Some(d), Some(a), Some(u)) = (self.va_to_gpa(d), self.va_to_gpa(a), self.va_to_gpa(u)) else {
            tracing::warn!(vring = i, "net_vhost: ring addresses outside the memory table");
            return;
        };
        if self.vrings[i].kick.is_none() {
            return;
        }
        let (size, base) = (self.vrings[i].size, self.vrings[i].base);
        let mut ring = DevRing::new(|g, l| self.hosts.at(g, l), (d, a, u), size, base);
        if ring.is_none() {
            tracing::warn!(vring = i, size, "net_vhost: virtqueue refused (size or addresses)");
        }
        if let Some(r) = &mut ring {
            // A front end that stopped and started its device keeps its rings where they were
            // but says base 0 (DPDK's virtio_user does): the used index in the ring is the
            // truth, or every index it makes available looks impossible and the queue stalls.
            if let Some(u) = r.adopt_used() {
                tracing::info!(vring = i, base, used = u, "net_vhost: ring resumed at its used index");
            }
            // We poll: the front end need not kick (VRING_USED_F_NO_NOTIFY).
            r.no_notify();
        }
        let v = &mut self.vrings[i];
        v.ring = ring;
        v.gpas = (d, a, u);
        if no_pf {
            v.enabled = true;
        }
    }
}

impl VhostUserBackendReqHandlerMut for Dev {
    fn set_owner(&mut self) -> Result<(), VuError> {
        Ok(())
    }
    fn reset_owner(&mut self) -> Result<(), VuError> {
        self.reset();
        self.connected = true;
        Ok(())
    }
    fn reset_device(&mut self) -> Result<(), VuError> {
        self.reset_owner()
    }
    fn get_features(&mut self) -> Result<u64, VuError> {
        Ok(F_VERSION_1 | F_MRG_RXBUF | F_PROTOCOL_FEATURES | if self.pairs > 1 { F_MQ } else { 0 })
    }
    fn set_features(&mut self, features: u64) -> Result<(), VuError> {
        // VERSION_1 is required: the 12-byte header is the only one we write and skip.
        if features & !self.get_features()? != 0 || features & F_VERSION_1 == 0 {
            return Err(VuError::InvalidParam);
        }
        self.features = features;
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>, VuError> {
        if ctx.len() != files.len() || ctx.is_empty() {
            return Err(VuError::InvalidParam);
        }
        let mut ranges = Vec::with_capacity(ctx.len());
        let mut regions = Vec::with_capacity(ctx.len());
        let (mut shares, mut files_kept) = (Vec::with_capacity(ctx.len()), Vec::with_capacity(ctx.len()));
        for (r, f) in ctx.iter().zip(files) {
            let size = usize::try_from(r.memory_size).map_err(|_| VuError::InvalidParam)?;
            // A region past its file's end would fault (SIGBUS) when touched: refused here.
            let flen = f.metadata().map(|m| m.len()).map_err(|_| VuError::InvalidParam)?;
            if r.mmap_offset.checked_add(r.memory_size).is_none_or(|end| end > flen) {
                return Err(VuError::InvalidParam);
            }
            shares.push((r.guest_phys_addr, r.memory_size, r.mmap_offset));
            files_kept.push(f.try_clone().map_err(|_| VuError::InvalidParam)?);
            ranges.push((GuestAddress(r.guest_phys_addr), size, Some(FileOffset::new(f, r.mmap_offset))));
            regions.push((r.guest_phys_addr, r.memory_size, r.user_addr));
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|_| VuError::InvalidParam)?;
        self.hosts = Hosts(mem.iter().map(|r| (r.start_addr().0, r.len(), r.as_ptr() as usize)).collect());
        self.mem = Some(mem);
        self.regions = regions;
        (self.shares, self.files) = (shares, files_kept);
        self.fds = next_fds();
        // Rings started over the old map start again over this one.
        for i in 0..self.vrings.len() {
            if let Some(r) = self.vrings[i].ring.take() {
                self.vrings[i].base = r.next_avail;
                self.try_start(i);
            }
        }
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<(), VuError> {
        let n =
            u16::try_from(num).ok().filter(|n| n.is_power_of_two() && *n <= MAX_QSIZE).ok_or(VuError::InvalidParam)?;
        self.vring(index)?.size = n;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<(), VuError> {
        self.vring(index)?.addrs = Some((descriptor, available, used));
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<(), VuError> {
        let b = u16::try_from(base).map_err(|_| VuError::InvalidParam)?;
        tracing::debug!(vring = index, base, "net_vhost: SET_VRING_BASE");
        self.vring(index)?.base = b;
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState, VuError> {
        // The ring stops here (vhost-user: GET_VRING_BASE stops it) and says where it was.
        let v = self.vring(index)?;
        let next = v.ring.take().map_or(v.base, |r| r.next_avail);
        tracing::debug!(vring = index, next, "net_vhost: GET_VRING_BASE");
        v.base = next;
        v.enabled = false;
        v.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<(), VuError> {
        tracing::debug!(vring = index, "net_vhost: SET_VRING_KICK");
        let v = self.vring(u32::from(index))?;
        // A running ring given a new kick goes on where it is (not at the old SET_VRING_BASE).
        if let Some(r) = v.ring.take() {
            v.base = r.next_avail;
        }
        v.kick = Some(fd.unwrap_or_else(|| File::open("/dev/null").expect("/dev/null")));
        self.try_start(index as usize);
        Ok(())
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<(), VuError> {
        if let Some(f) = &fd {
            // A signal never waits in a burst: a peer that passed a full pipe loses it.
            let flags =
                nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(|_| VuError::InvalidParam)?;
            let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
                .map_err(|_| VuError::InvalidParam)?;
        }
        self.vring(u32::from(index))?.call = fd;
        self.fds = next_fds();
        Ok(())
    }
    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<(), VuError> {
        self.vring(u32::from(index)).map(|_| ())
    }
    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures, VuError> {
        Ok(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK)
    }
    fn set_protocol_features(&mut self, features: u64) -> Result<(), VuError> {
        self.protocol = features;
        Ok(())
    }
    fn get_queue_num(&mut self) -> Result<u64, VuError> {
        Ok(u64::from(self.pairs))
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<(), VuError> {
        tracing::debug!(vring = index, enable, "net_vhost: SET_VRING_ENABLE");
        self.vring(index)?.enabled = enable;
        Ok(())
    }
    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>, VuError> {
        Err(VuError::InvalidOperation("net_vhost has no config space"))
    }
    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> Result<(), VuError> {
        Err(VuError::InvalidOperation("net_vhost has no config space"))
    }
    fn set_backend_req_fd(&mut self, _backend: Backend) {}
    fn set_gpu_socket(&mut self, _: GpuBackend) -> Result<(), VuError> {
        Err(VuError::InvalidOperation("not a GPU"))
    }
    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> Result<File, VuError> {
        Err(VuError::InvalidOperation("no shared objects"))
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> Result<(VhostUserInflight, File), VuError> {
        Err(VuError::InvalidOperation("no inflight tracking"))
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> Result<(), VuError> {
        Err(VuError::InvalidOperation("no inflight tracking"))
    }
    fn get_max_mem_slots(&mut self) -> Result<u64, VuError> {
        Err(VuError::InvalidOperation("no memory slots"))
    }
    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>, VuError> {
        Err(VuError::InvalidOperation("no memory slots"))
    }
    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> Result<(), VuError> {
        Err(VuError::InvalidOperation("no memory slots"))
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> Result<Option<File>, VuError> {
        Err(VuError::InvalidOperation("no device state"))
    }
    fn check_device_state(&mut self) -> Result<(), VuError> {
        Err(VuError::InvalidOperation("no device state"))
    }
    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig, VuError> {
        Err(VuError::InvalidOperation("no shared memory regions"))
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> Result<(), VuError> {
        Err(VuError::InvalidOperation("no dirty logging"))
    }
}

/// What every process of the lab sees of the port (memzone `vhost_<port>`), written by the
/// primary's control thread: magic, the link, the layout generation (odd while the primary applies
/// a front-end message; it moves whenever what secondaries map changes), then per virtqueue its
/// owner word (0, the pid of a process inside a burst on it, or [`CONTROL`] while a message is
/// applied) and its two device indices (next available, next used), so that any process can run
/// any queue and the next one goes on where it stopped.
#[derive(Clone)]
struct SharedLink {
    shm: Arc<Shm>,
    off: ShmOffset,
}

const LINK_MAGIC: u32 = 0x5648_4f53;
/// Words of the zone: magic, link, generation, a spare, then (owner, indices) per virtqueue.
const ZONE_WORDS: usize = 4 + 2 * 2 * MAX_QUEUES as usize;
/// The owner word while the control thread applies a message.
const CONTROL: u32 = u32::MAX;
/// How long the control thread waits for a live process's burst to leave a queue before it
/// warns (it goes on waiting: a burst cut short would go on writing the ring).
const OWNER_WAIT: Duration = Duration::from_millis(100);

impl SharedLink {
    fn zone(port: PortId) -> String {
        format!("vhost_{port}")
    }

    fn open(shm: &Arc<Shm>, port: PortId, create: bool) -> Result<SharedLink, DriverError> {
        let name = SharedLink::zone(port);
        let len = 4 * ZONE_WORDS as u64;
        let z = if create { shm.reserve(&name, len, 64) } else { shm.lookup(&name) }.ctx(format!("memzone {name}"))?;
        if z.len < len || shm.ptr(z.offset, len).is_none() {
            return Err(DriverError::state(format!("memzone {name} is too small")));
        }
        let l = SharedLink { shm: shm.clone(), off: z.offset };
        if create {
            for k in 1..ZONE_WORDS {
                l.word(k).store(0, Ordering::Relaxed);
            }
            l.word(0).store(LINK_MAGIC, Ordering::Release);
        } else if l.word(0).load(Ordering::Acquire) != LINK_MAGIC {
            return Err(DriverError::state(format!("memzone {name} holds no net_vhost port")));
        }
        Ok(l)
    }

    fn word(&self, k: usize) -> &AtomicU32 {
        assert!(k < ZONE_WORDS);
        let p = self.shm.ptr(self.off, 4 * ZONE_WORDS as u64).expect("checked at open").cast::<AtomicU32>();
        // SAFETY: word k < ZONE_WORDS of the 64-aligned zone checked at open, inside the mapping
        // `self.shm` keeps alive; the zone is used only as u32 atomics.
        unsafe { &*p.as_ptr().add(k) }
    }

    fn set(&self, up: bool) {
        self.word(1).store(u32::from(up), Ordering::Release);
    }

    fn up(&self) -> bool {
        self.word(1).load(Ordering::Acquire) != 0
    }

    fn gen(&self) -> u32 {
        self.word(2).load(Ordering::SeqCst)
    }

    fn owner(&self, vq: usize) -> &AtomicU32 {
        self.word(4 + 2 * vq)
    }

    /// A burst's claim on virtqueue `vq` (never waits: false when another process, or a message
    /// being applied, has it).
    #[inline]
    fn try_own(&self, vq: usize, me: u32) -> bool {
        self.owner(vq).compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed).is_ok()
    }

    /// A burst's claim on virtqueue `vq`, with the indices to start from: None when another
    /// process (or a message being applied) has it, or when `gen` (the layout a secondary mapped)
    /// is not the zone's any more.
    #[inline]
    fn claim(&self, vq: usize, me: u32, gen: Option<u32>) -> Option<(u16, u16)> {
        if !self.try_own(vq, me) {
            return None;
        }
        if gen.is_some_and(|g| g != self.gen()) {
            self.release(vq, me);
            return None;
        }
        Some(self.indices(vq))
    }

    #[inline]
    fn indices(&self, vq: usize) -> (u16, u16) {
        let w = self.word(5 + 2 * vq).load(Ordering::Relaxed);
        (w as u16, (w >> 16) as u16)
    }

    fn set_indices(&self, vq: usize, (avail, used): (u16, u16)) {
        self.word(5 + 2 * vq).store(u32::from(avail) | u32::from(used) << 16, Ordering::Relaxed);
    }

    /// The end of a burst: its indices (unless the queue was taken from it meanwhile), then the
    /// queue let go.
    #[inline]
    fn put_back(&self, vq: usize, me: u32, idx: (u16, u16)) {
        if self.owner(vq).load(Ordering::Relaxed) == me {
            self.set_indices(vq, idx);
        }
        let _ = self.owner(vq).compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Lets go of a queue without touching its indices.
    #[inline]
    fn release(&self, vq: usize, me: u32) {
        let _ = self.owner(vq).compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Control thread, before a message: the generation goes odd (bursts that start now see it
    /// and carry nothing), then every queue is taken once the burst inside it, if any, is out (a
    /// dead process's claim at once, a live one's after [`OWNER_WAIT`]). Returns the generation
    /// before.
    fn fence(&self, nvq: usize) -> (u32, u32) {
        let (mut dead, mut warned) = (0u32, false);
        let g = self.gen() & !1;
        self.word(2).store(g | 1, Ordering::SeqCst);
        for vq in 0..nvq {
            let w = self.owner(vq);
            let start = Instant::now();
            loop {
                let h = match w.compare_exchange(0, CONTROL, Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(h) => h,
                };
                let waited = start.elapsed();
                // A live process's burst is never cut short (it would go on writing the ring);
                // a dead one's queue is taken, and its indices recovered from the ring.
                if waited > Duration::from_millis(1) && !lab_core::sys::pid_alive(h) {
                    if w.compare_exchange(h, CONTROL, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
                        tracing::warn!(vq, pid = h, "net_vhost: a process died inside a burst: its queue taken");
                        dead |= 1 << vq;
                        break;
                    }
                    continue;
                }
                if waited > OWNER_WAIT && !warned {
                    tracing::warn!(vq, pid = h, "net_vhost: a process stays inside a burst: the message waits");
                    warned = true;
                }
                std::thread::yield_now();
            }
        }
        (g, dead)
    }

    /// Control thread, after a message: the new generation, the queues let go.
    fn unfence(&self, nvq: usize, gen: u32) {
        self.word(2).store(gen, Ordering::SeqCst);
        for vq in 0..nvq {
            self.owner(vq).store(0, Ordering::Release);
        }
    }

    /// Whether a dead process holds a queue (it died inside a burst: a fence frees it).
    fn any_dead(&self, nvq: usize) -> bool {
        (0..nvq).any(|vq| {
            let h = self.owner(vq).load(Ordering::Relaxed);
            h != 0 && h != CONTROL && !lab_core::sys::pid_alive(h)
        })
    }
}

/// Where the control thread finds front ends.
enum Mode {
    Server(UnixListener),
    Client,
}

/// The control thread: takes a front end, serves its messages, and after a hang-up takes the
/// next one (server) or connects again every second (client).
#[allow(clippy::too_many_arguments)]
fn control(
    dev: Arc<Mutex<Dev>>,
    mode: Mode,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    port: PortId,
    link: SharedLink,
    conn: Arc<Mutex<Option<UnixStream>>>,
    published: share::Published,
) {
    let nvq = dev.lock().unwrap_or_else(|e| e.into_inner()).vrings.len();
    // What secondaries were last given (the description without its generation, and which
    // files): a message that leaves it as it was keeps the generation, so they keep their map.
    let mut shared: Option<(Vec<u8>, u64)> = None;
    // Every change of the port's state happens inside a fence (no burst of any process in a
    // queue meanwhile), and ends with what secondaries map published under a new generation
    // when it changed. A share that fails still moves the generation: secondaries then hold
    // no valid layout (their bursts carry nothing) rather than a stale one.
    let mut fenced = |f: &mut dyn FnMut()| {
        let (g, dead) = link.fence(nvq);
        {
            let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
            d.sync_in(&link);
            // A process that died inside a burst may have published more than it left in the
            // zone: every pop of a burst is pushed used (or given back), so the ring's used
            // index is where both indices are.
            for (_, v) in d.vrings.iter_mut().enumerate().filter(|(vq, _)| dead & (1 << vq) != 0) {
                if let Some(r) = &mut v.ring {
                    let u = r.used_idx();
                    r.set_indices((u, u));
                }
            }
        }
        f();
        let mut gen = g.wrapping_add(2);
        {
            let d = dev.lock().unwrap_or_else(|e| e.into_inner());
            d.sync_out(&link);
            link.set(d.live(0) && d.live(1));
            let key = (d.share_text(0), d.fds);
            if shared.as_ref() == Some(&key) {
                gen = g;
            } else {
                shared = None;
                match d.share(gen) {
                    Ok((fds, meta)) => match published.update(&fds, meta) {
                        Ok(()) => shared = Some(key),
                        Err(e) => {
                            tracing::warn!(port = %port, error = %e, "net_vhost: could not share the queues with secondaries")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(port = %port, error = %e, "net_vhost: could not share the queues with secondaries")
                    }
                }
            }
        }
        link.unfence(nvq, gen);
    };
    let mut last_connect: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let stream = match &mode {
            Mode::Server(l) => match l.accept() {
                Ok((s, _)) => Some(s),
                Err(_) => None,
            },
            Mode::Client => {
                if last_connect.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_connect = Some(Instant::now());
                    UnixStream::connect(&path).ok()
                } else {
                    None
                }
            }
        };
        let Some(s) = stream else {
            std::thread::sleep(TICK);
            continue;
        };
        if s.set_nonblocking(false).is_err() {
            continue;
        }
        let Ok(watch) = s.try_clone() else { continue };
        *conn.lock().unwrap_or_else(|e| e.into_inner()) = watch.try_clone().ok();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        fenced(&mut || {
            let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
            d.reset();
            d.connected = true;
        });
        tracing::info!(port = %port, path = %path.display(), "net_vhost: front end connected");
        let mut h = BackendReqHandler::from_stream(s, dev.clone());
        while !stop.load(Ordering::Relaxed) {
            let mut p = libc::pollfd { fd: watch.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd on the stack, a bounded timeout.
            let n = unsafe { libc::poll(&mut p, 1, TICK.as_millis() as i32) };
            if n <= 0 {
                if link.any_dead(nvq) {
                    fenced(&mut || {});
                }
                continue;
            }
            let mut r = Ok(());
            fenced(&mut || r = h.handle_request());
            if let Err(e) = r {
                match e {
                    VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_) => {}
                    e => tracing::warn!(port = %port, "net_vhost: front end message refused, connection closed: {e}"),
                }
                break;
            }
        }
        *conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        fenced(&mut || dev.lock().unwrap_or_else(|e| e.into_inner()).reset());
        tracing::info!(port = %port, path = %path.display(), "net_vhost: front end gone");
    }
}

#[derive(Default)]
struct Counters {
    pkts: u64,
    bytes: u64,
    errors: u64,
    nombuf: u64,
}

struct Port {
    info: DevInfo,
    port: PortId,
    dev: Arc<Mutex<Dev>>,
    pool: Mempool,
    rx: Vec<Counters>,
    tx: Vec<Counters>,
    hdr: usize,
    path: PathBuf,
    server: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    shm: Arc<Shm>,
    link: SharedLink,
    /// The live connection's socket, shut down at close so that a front end stalled in the
    /// middle of a message cannot hold the control thread (and so the close) forever.
    conn: Arc<Mutex<Option<UnixStream>>>,
    /// Our pid: a burst's claim on a queue (see [`SharedLink`]).
    me: u32,
}

impl Driver for VhostDriver {
    fn name(&self) -> &'static str {
        NAME
    }
    fn bus(&self) -> BusKind {
        BusKind::Vdev
    }
    fn keys(&self) -> &'static [KeySpec] {
        &KEYS
    }
    fn probe(&self, ctx: &ProbeCtx<'_>) -> Result<Box<dyn EthDev>, EthError> {
        let err = |e: DriverError| ctx.error(NAME, e);
        let conf = ctx.conf;
        let (path, pairs) = super::socket_and_pairs(ctx, "iface", MAX_QUEUES).map_err(err)?;
        let shm = ctx.runtime.shm();
        let pool = Mempool::lookup(ctx.runtime.shm(), &conf.pool, 64)
            .ctx(format!("buffer pool {}", conf.pool))
            .map_err(err)?;
        if !ctx.is_primary() {
            // The primary serves the socket; a secondary maps the front end's memory itself
            // (the files the primary hands over) and runs any queue no other process is in.
            let link = SharedLink::open(shm, ctx.port, false).map_err(err)?;
            let pending = Arc::new((Mutex::new(None), AtomicBool::new(false)));
            let stop = Arc::new(AtomicBool::new(false));
            {
                let (ch, t, name, l, p, st) = (
                    ctx.runtime.ipc().clone(),
                    share::fetch_timeout(ctx.runtime),
                    ctx.name.to_string(),
                    link.clone(),
                    pending.clone(),
                    stop.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("vhost-{}", ctx.port.0))
                    .spawn(move || follow(ch, t, name, l, p, st))
                    .ctx("follower thread")
                    .map_err(err)?;
            }
            tracing::info!(device = %ctx.name, port = %ctx.port, "net_vhost in a secondary: follows the primary's front end");
            return Ok(Box::new(Secondary {
                info: info(ctx, pairs),
                port: ctx.port,
                link,
                pool,
                rx: (0..conf.nb_rxq).map(|_| Counters::default()).collect(),
                tx: (0..conf.nb_txq).map(|_| Counters::default()).collect(),
                me: std::process::id(),
                state: None,
                pending,
                stop,
            }));
        }
        let client = ctx.kvargs.get_bool("client").unwrap_or(false);
        let mode = if client {
            Mode::Client
        } else {
            let l = UnixListener::bind(&path).ctx(format!("listening on {}", path.display())).map_err(err)?;
            l.set_nonblocking(true).ctx("non-blocking listener").map_err(err)?;
            Mode::Server(l)
        };
        let dev = Arc::new(Mutex::new(Dev::new(pairs)));
        let stop = Arc::new(AtomicBool::new(false));
        let link = match SharedLink::open(shm, ctx.port, true) {
            Ok(l) => l,
            Err(e) => {
                if !client {
                    let _ = std::fs::remove_file(&path);
                }
                return Err(err(e));
            }
        };
        let conn = Arc::new(Mutex::new(None));
        let published = match share::publish(ctx.runtime, FDS_ACTION, ctx.name, &[], b"gen 0 features 0\n".to_vec()) {
            Ok(p) => p,
            Err(e) => {
                if !client {
                    let _ = std::fs::remove_file(&path);
                }
                let _ = shm.free(&SharedLink::zone(ctx.port));
                return Err(err(e));
            }
        };
        let thread = {
            let (dev, stop, p, port, l, c) =
                (dev.clone(), stop.clone(), path.clone(), ctx.port, link.clone(), conn.clone());
            std::thread::Builder::new()
                .name(format!("vhost-{}", ctx.port.0))
                .spawn(move || control(dev, mode, p, stop, port, l, c, published))
                .ctx("control thread")
                .map_err(|e| {
                    if !client {
                        let _ = std::fs::remove_file(&path);
                    }
                    let _ = shm.free(&SharedLink::zone(ctx.port));
                    err(e)
                })?
        };
        tracing::info!(device = %ctx.name, port = %ctx.port, path = %path.display(), pairs, client, "net_vhost ready");
        Ok(Box::new(Port {
            info: info(ctx, pairs),
            port: ctx.port,
            dev,
            pool,
            rx: (0..conf.nb_rxq).map(|_| Counters::default()).collect(),
            tx: (0..conf.nb_txq).map(|_| Counters::default()).collect(),
            hdr: 12,
            path,
            server: !client,
            stop,
            thread: Some(thread),
            shm: shm.clone(),
            link,
            conn,
            me: std::process::id(),
        }))
    }
}

fn info(ctx: &ProbeCtx<'_>, pairs: u16) -> DevInfo {
    DevInfo {
        driver: NAME,
        mac: [0x56, 0x48, 0x4f, 0x53, 0x54, ctx.port.0 as u8],
        mtu: MTU,
        nb_rxq: ctx.conf.nb_rxq,
        nb_txq: ctx.conf.nb_txq,
        max_rxq: pairs,
        max_txq: pairs,
    }
}

/// What a secondary maps of the primary's front end, for one generation of the zone.
struct SecState {
    gen: u32,
    features: u64,
    _mem: Option<GuestMemoryMmap>,
    hosts: Hosts,
    /// Per virtqueue: the started ring over our mapping, and its call eventfd.
    rings: Vec<Option<(DevRing, Option<File>)>>,
}

impl SecState {
    /// From the primary's description (`Dev::share`): `gen G features F`, then `region GPA SIZE
    /// OFFSET` per region (its file is the descriptor of the same rank) and `vring I SIZE DESC
    /// AVAIL USED CALL` per live virtqueue (CALL a descriptor's rank, or `-`).
    fn build(fds: Vec<std::os::fd::OwnedFd>, meta: &[u8]) -> Result<SecState, DriverError> {
        let text = std::str::from_utf8(meta).map_err(|_| DriverError::state("net_vhost share: not UTF-8"))?;
        let bad = |l: &str| DriverError::state(format!("net_vhost share: bad line {l:?}"));
        let mut fds: Vec<Option<File>> = fds.into_iter().map(|f| Some(File::from(f))).collect();
        let (mut gen, mut features) = (None, 0u64);
        let mut ranges = Vec::new();
        let mut vrings = Vec::new();
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            let num = |k: usize| w.get(k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| bad(l));
            match w.first().copied() {
                Some("gen") => {
                    gen = Some(u32::try_from(num(1)?).map_err(|_| bad(l))?);
                    features = num(3)?;
                }
                Some("region") => {
                    let (gpa, size, off) = (num(1)?, num(2)?, num(3)?);
                    let f = fds.get_mut(ranges.len()).and_then(Option::take).ok_or_else(|| bad(l))?;
                    let flen = f.metadata().map(|m| m.len()).ctx("a region's file")?;
                    if off.checked_add(size).is_none_or(|e| e > flen) {
                        return Err(bad(l));
                    }
                    let len = usize::try_from(size).map_err(|_| bad(l))?;
                    ranges.push((GuestAddress(gpa), len, Some(FileOffset::new(f, off))));
                }
                Some("vring") => {
                    let (i, n) = (usize::try_from(num(1)?).map_err(|_| bad(l))?, num(2)?);
                    let n = u16::try_from(n).map_err(|_| bad(l))?;
                    let call = match w.get(6).copied() {
                        Some("-") => None,
                        Some(k) => {
                            let k: usize = k.parse().map_err(|_| bad(l))?;
                            Some(fds.get_mut(k).and_then(Option::take).ok_or_else(|| bad(l))?)
                        }
                        None => return Err(bad(l)),
                    };
                    if i >= 2 * usize::from(MAX_QUEUES) {
                        return Err(bad(l));
                    }
                    vrings.push((i, n, (num(3)?, num(4)?, num(5)?), call));
                }
                _ => return Err(bad(l)),
            }
        }
        let gen = gen.ok_or_else(|| bad("(no gen line)"))?;
        let mem = if ranges.is_empty() {
            None
        } else {
            Some(
                GuestMemoryMmap::from_ranges_with_files(ranges)
                    .map_err(|e| DriverError::state(format!("mapping the front end's memory: {e}")))?,
            )
        };
        let hosts = Hosts(
            mem.iter().flat_map(|m| m.iter().map(|r| (r.start_addr().0, r.len(), r.as_ptr() as usize))).collect(),
        );
        let mut rings: Vec<Option<(DevRing, Option<File>)>> = (0..2 * MAX_QUEUES).map(|_| None).collect();
        for (i, n, parts, call) in vrings {
            let r = DevRing::new(|g, l| hosts.at(g, l), parts, n, 0)
                .ok_or_else(|| DriverError::state(format!("net_vhost share: virtqueue {i} outside the memory")))?;
            rings[i] = Some((r, call));
        }
        Ok(SecState { gen, features, _mem: mem, hosts, rings })
    }
}

/// A secondary's follower thread: whenever the zone's generation moves (and is not mid-change),
/// asks the primary for what to map, and hands the new state to the bursts.
fn follow(
    ch: lab_core::ipc::Channel,
    timeout: Duration,
    name: String,
    link: SharedLink,
    pending: Arc<(Mutex<Option<SecState>>, AtomicBool)>,
    stop: Arc<AtomicBool>,
) {
    let mut have: Option<u32> = None;
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) && link.word(0).load(Ordering::Acquire) == LINK_MAGIC {
        let g = link.gen();
        if g & 1 == 0 && have != Some(g) {
            match share::fetch_on(&ch, timeout, FDS_ACTION, &name).and_then(|(fds, meta)| SecState::build(fds, &meta)) {
                Ok(s) if s.gen == g => {
                    tracing::debug!(device = %name, gen = g, "net_vhost: secondary follows a new layout");
                    let mut p = pending.0.lock().unwrap_or_else(|e| e.into_inner());
                    // The port closed meanwhile: its mapping goes now, not with this thread.
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    *p = Some(s);
                    pending.1.store(true, Ordering::Release);
                    (have, warned) = (Some(g), false);
                }
                Ok(_) => {} // moved meanwhile: asked again
                Err(e) => {
                    if !warned {
                        tracing::warn!(device = %name, error = %e, "net_vhost: secondary cannot follow the primary's front end");
                    }
                    warned = true;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A secondary's handle: the link as the primary sees it, and the queues over its own mapping of
/// the front end's memory.
struct Secondary {
    info: DevInfo,
    port: PortId,
    link: SharedLink,
    pool: Mempool,
    rx: Vec<Counters>,
    tx: Vec<Counters>,
    me: u32,
    state: Option<SecState>,
    pending: Arc<(Mutex<Option<SecState>>, AtomicBool)>,
    stop: Arc<AtomicBool>,
}

impl Secondary {
    /// Takes the follower's newer state, if any (never waits on it).
    fn take_pending(&mut self) {
        if self.pending.1.load(Ordering::Acquire) {
            if let Ok(mut p) = self.pending.0.try_lock() {
                if let Some(s) = p.take() {
                    self.state = Some(s);
                }
                self.pending.1.store(false, Ordering::Release);
            }
        }
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        // The follower ends on its own within its next round (not joined: it may be waiting on
        // an answer that this very thread would have to deliver); a mapping it fetched and the
        // bursts never took goes now (under the lock it stores with, after `stop`: none comes
        // after), so the front end's memory is unmapped with the port, not with the thread.
        self.stop.store(true, Ordering::Relaxed);
        drop(self.pending.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl EthDev for Secondary {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }
    fn link(&mut self) -> LinkStatus {
        let up = self.link.up();
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }
    fn stats(&mut self) -> PortStats {
        stats_of(&self.rx, &self.tx)
    }
    fn stats_reset(&mut self) {
        self.rx.iter_mut().chain(self.tx.iter_mut()).for_each(|c| *c = Counters::default());
    }
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        self.take_pending();
        let i = 2 * usize::from(queue) + 1;
        let (Some(c), Some(st)) = (self.rx.get_mut(usize::from(queue)), self.state.as_mut()) else { return 0 };
        let SecState { gen, rings, hosts, .. } = st;
        let Some(Some((r, call))) = rings.get_mut(i) else { return 0 };
        let Some(idx) = self.link.claim(i, self.me, Some(*gen)) else { return 0 };
        r.set_indices(idx);
        let n = rx_frames(Burst { r, hosts, call, pool: &mut self.pool, c, hdr: 12 }, self.port, pkts);
        self.link.put_back(i, self.me, r.indices());
        n
    }
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        self.take_pending();
        let i = 2 * usize::from(queue);
        let (Some(c), Some(st)) = (self.tx.get_mut(usize::from(queue)), self.state.as_mut()) else { return 0 };
        let SecState { gen, rings, hosts, features, .. } = st;
        let mrg = *features & F_MRG_RXBUF != 0;
        let Some(Some((r, call))) = rings.get_mut(i) else { return 0 };
        let Some(idx) = self.link.claim(i, self.me, Some(*gen)) else { return 0 };
        r.set_indices(idx);
        let n = tx_frames(Burst { r, hosts, call, pool: &mut self.pool, c, hdr: 12 }, mrg, pkts);
        self.link.put_back(i, self.me, r.indices());
        n
    }
    fn close(self: Box<Self>, _how: Release) {}
}

/// Publishes the used index and signals the call eventfd if the front end wants it.
fn finish(r: &DevRing, call: &mut Option<File>) {
    r.publish();
    if r.wants_interrupt() {
        if let Some(c) = call.as_mut() {
            let _ = c.write(&1u64.to_ne_bytes());
        }
    }
}

impl EthDev for Port {
    fn info(&self) -> DevInfo {
        self.info.clone()
    }

    fn link(&mut self) -> LinkStatus {
        // The control thread's view after its last message: no wait on it.
        let up = self.link.up();
        LinkStatus { up, speed_mbps: if up { 10_000 } else { 0 } }
    }

    fn stats(&mut self) -> PortStats {
        stats_of(&self.rx, &self.tx)
    }

    fn stats_reset(&mut self) {
        self.rx.iter_mut().chain(self.tx.iter_mut()).for_each(|c| *c = Counters::default());
    }

    fn set_promisc(&mut self, on: bool) -> Result<(), EthError> {
        if on {
            Ok(())
        } else {
            Err(EthError::Invalid { what: "promiscuous off: a vhost-user port delivers every frame".into() })
        }
    }

    /// Frames the front end transmitted on virtqueue `2q + 1`, header skipped.
    fn rx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(c) = self.rx.get_mut(usize::from(queue)) else { return 0 };
        let Ok(mut g) = self.dev.try_lock() else { return 0 };
        let i = 2 * usize::from(queue) + 1;
        if !g.live(i) {
            return 0;
        }
        let Dev { vrings, hosts, .. } = &mut *g;
        let v = &mut vrings[i];
        let Some(r) = v.ring.as_mut() else { return 0 };
        let Some(idx) = self.link.claim(i, self.me, None) else { return 0 };
        r.set_indices(idx);
        let n =
            rx_frames(Burst { r, hosts, call: &mut v.call, pool: &mut self.pool, c, hdr: self.hdr }, self.port, pkts);
        self.link.put_back(i, self.me, r.indices());
        n
    }

    /// Frames into the front end's receive virtqueue `2q`: the header (num_buffers), then the
    /// frame over one buffer, or over several with MRG_RXBUF.
    fn tx_burst(&mut self, queue: u16, pkts: &mut [Option<Mbuf>]) -> usize {
        let Some(c) = self.tx.get_mut(usize::from(queue)) else { return 0 };
        let Ok(mut g) = self.dev.try_lock() else { return 0 };
        let i = 2 * usize::from(queue);
        if !g.live(i) {
            return 0;
        }
        let mrg = g.features & F_MRG_RXBUF != 0;
        let Dev { vrings, hosts, .. } = &mut *g;
        let v = &mut vrings[i];
        let Some(r) = v.ring.as_mut() else { return 0 };
        let Some(idx) = self.link.claim(i, self.me, None) else { return 0 };
        r.set_indices(idx);
        let n = tx_frames(Burst { r, hosts, call: &mut v.call, pool: &mut self.pool, c, hdr: self.hdr }, mrg, pkts);
        self.link.put_back(i, self.me, r.indices());
        n
    }

    fn close(self: Box<Self>, how: Release) {
        let _ = how;
        drop(self);
    }
}

/// A frame over a chain of descriptors (the header skipped, wherever it ends) into `m`, more
/// buffers from `pool` chained on when it is over one buffer's room; false at a bad chain, one
/// longer than [`MAX_FRAME`], or no buffer left.
fn gather(r: &DevRing, head: u16, hosts: &Hosts, hdr: usize, m: &mut Mbuf, pool: &mut Mempool) -> bool {
    let mut skip = hdr;
    // The segment being filled after `m` (chained on when full, and at the end).
    let mut tail: Option<Mbuf> = None;
    let mut total = 0usize;
    let mut ok = true;
    'descs: for d in r.chain(head) {
        let Ok(d) = d else {
            ok = false;
            break;
        };
        let (mut addr, mut len) = (d.addr, d.len as usize);
        let s = skip.min(len);
        let Some(a) = addr.checked_add(s as u64) else {
            ok = false;
            break;
        };
        (skip, addr, len) = (skip - s, a, len - s);
        if len == 0 {
            continue;
        }
        total += len;
        let Some(mut src) = hosts.at(addr, len).filter(|_| total <= MAX_FRAME) else {
            ok = false;
            break;
        };
        while len > 0 {
            let seg = match tail.as_mut() {
                Some(t) => t,
                None => &mut *m,
            };
            let k = seg.tailroom().min(len);
            if k == 0 {
                let Some(fresh) = pool.alloc() else {
                    ok = false;
                    break 'descs;
                };
                if let Some(full) = tail.replace(fresh) {
                    if let Err(full) = m.chain(full) {
                        pool.free(full);
                        ok = false;
                        break 'descs;
                    }
                }
                continue;
            }
            let Some(dst) = seg.append(k) else {
                ok = false;
                break 'descs;
            };
            // SAFETY: `src..src + len` lies inside one mapped region of the front end's memory
            // (`Hosts::at`), which `Dev::mem` keeps mapped while the caller holds the lock;
            // `dst` is a distinct buffer of ours of exactly `k <= len` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), k);
                src = src.add(k);
            }
            len -= k;
        }
    }
    if let Some(t) = tail {
        if let Err(t) = m.chain(t) {
            pool.free(t);
            ok = false;
        }
    }
    ok
}

/// Frames a burst looks ahead: their descriptor's buffer is prefetched while earlier frames
/// are copied, so the misses on the front end's lines (written or read on the other core)
/// overlap instead of following one another.
const AHEAD: u16 = 4;

/// Prefetches the buffer of the head `k` places ahead in `r` (`k` under `left`, the heads
/// published and not taken): the line at `skip` bytes into it, and with `both` its first line
/// too (a transmit writes the header there, a receive skips it).
#[inline]
fn prefetch_ahead(r: &DevRing, hosts: &Hosts, k: u16, left: u16, skip: usize, both: bool) {
    if k >= left {
        return;
    }
    let Some(d) = r.desc(r.peek(k)) else { return };
    if let Some(p) = d.addr.checked_add(skip as u64).and_then(|a| hosts.at(a, 1)) {
        prefetch(p);
    }
    if both {
        if let Some(p) = hosts.at(d.addr, 1) {
            prefetch(p);
        }
    }
}

/// One virtqueue as a burst (in any process) has it: the ring it owns for the burst, the
/// mapping of the front end's memory, the call eventfd, the pool, the queue's counters.
struct Burst<'a> {
    r: &'a mut DevRing,
    hosts: &'a Hosts,
    call: &'a mut Option<File>,
    pool: &'a mut Mempool,
    c: &'a mut Counters,
    hdr: usize,
}

/// A receive burst's work.
fn rx_frames(b: Burst<'_>, port: PortId, pkts: &mut [Option<Mbuf>]) -> usize {
    let Burst { r, hosts, call, pool, c, hdr } = b;
    let avail = usize::from(r.pending()).min(pkts.len());
    if avail == 0 {
        return 0;
    }
    // The burst's buffers in one pool operation (one by one when the pool runs short).
    let bulk = pool.alloc_bulk(&mut pkts[..avail]);
    let mut n = 0;
    let left = avail as u16;
    for k in 0..AHEAD {
        prefetch_ahead(r, hosts, k, left, hdr, false);
    }
    for i in 0..avail as u16 {
        let Some(mut m) = (if bulk { pkts[n].take() } else { pool.alloc() }) else {
            c.nombuf += 1;
            break;
        };
        // `AHEAD` past this one (the ring's next is this one).
        prefetch_ahead(r, hosts, AHEAD, left - i, hdr, false);
        let head = r.pop();
        let ok = match r.desc(head) {
            // One buffer, header then frame (how DPDK's virtio_user and ours send).
            Some(d) if d.flags & (F_NEXT | F_INDIRECT) == 0 && (d.len as usize) <= hdr + m.tailroom() => (d.len
                as usize)
                .checked_sub(hdr)
                .filter(|&len| len > 0 && len <= MAX_FRAME)
                .and_then(|len| Some((hosts.at(d.addr.checked_add(hdr as u64)?, len)?, len)))
                .and_then(|(src, len)| Some((src, m.append(len)?)))
                .map(|(src, dst)| {
                    // SAFETY: `src..src + len` lies inside one mapped region of the front
                    // end's memory (`Hosts::at`), which `Dev::mem` keeps mapped while we hold
                    // the lock; `dst` is a distinct buffer of ours of exactly `len` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
                })
                .is_some(),
            _ => gather(r, head, hosts, hdr, &mut m, pool),
        };
        r.push_used(head, 0);
        if !ok || m.is_empty() {
            c.errors += 1;
            if bulk {
                m.reset();
                pkts[n] = Some(m); // taken again by the next frame, or freed below
            } else {
                pool.free(m);
            }
            continue;
        }
        m.set_port(port.0);
        c.bytes += m.pkt_len() as u64;
        pkts[n] = Some(m);
        n += 1;
    }
    if bulk {
        pool.free_bulk(&mut pkts[n..avail]);
    }
    c.pkts += n as u64;
    if avail > 0 {
        finish(r, call);
    }
    n
}

/// A transmit burst's work (over several buffers a frame with `mrg`, MRG_RXBUF negotiated).
fn tx_frames(b: Burst<'_>, mrg: bool, pkts: &mut [Option<Mbuf>]) -> usize {
    let Burst { r, hosts, call, pool, c, hdr } = b;
    let hdr_len = hdr;
    let mut left = r.pending();
    let mut taken = 0;
    let mut used_any = false;
    for k in 0..AHEAD {
        prefetch_ahead(r, hosts, k, left, hdr, true);
    }
    'frames: for slot in pkts.iter_mut() {
        let Some(m) = slot.as_ref() else { break };
        let data = m.data();
        let pkt_len = m.pkt_len();
        let total = hdr_len + pkt_len;
        if left == 0 {
            break;
        }
        prefetch_ahead(r, hosts, AHEAD, left, hdr, true);
        // The usual case first: one segment, and the next buffer is one writable descriptor the
        // frame fits.
        let head = r.pop();
        if let Some(dst) = r
            .desc(head)
            .filter(|d| d.flags & (F_NEXT | F_INDIRECT | F_WRITE) == F_WRITE && d.len as usize >= total)
            .filter(|_| m.nb_segs() == 1)
            .and_then(|d| hosts.at(d.addr, total))
        {
            // SAFETY: `dst .. dst + total` lies inside this descriptor's buffer, itself
            // inside one mapped region (`Hosts::at`); the header and the frame are ours.
            unsafe {
                std::ptr::copy_nonoverlapping(HDR_ONE.as_ptr(), dst, hdr_len);
                std::ptr::copy_nonoverlapping(data.as_ptr(), dst.add(hdr_len), data.len());
            }
            r.push_used(head, total as u32);
            left -= 1;
            used_any = true;
            c.pkts += 1;
            c.bytes += pkt_len as u64;
            taken += 1;
            continue;
        }
        r.unpop(1);
        // Buffers used for this frame: (head, bytes written), and where its header went.
        let mut heads: arrayvec::ArrayVec<(u16, u32), 64> = arrayvec::ArrayVec::new();
        let mut hdr_at: Option<*mut u8> = None;
        let mut off = 0usize; // bytes of (header + frame) placed
        let mut bad = false;
        // The frame's bytes not placed yet, segment by segment.
        let mut segs = m.segments();
        let mut cur: &[u8] = &[];
        while off < total {
            if left == 0 {
                // No buffer: give back what this frame took and stop (it stays with the caller).
                r.unpop(heads.len() as u16);
                break 'frames;
            }
            if heads.is_full() {
                bad = true; // over 64 buffers for one frame
                break;
            }
            left -= 1;
            let head = r.pop();
            let mut wrote = 0u32;
            for d in r.chain(head) {
                let Ok(d) = d else {
                    bad = true;
                    break;
                };
                let len = d.len as usize;
                let Some(dst) = hosts.at(d.addr, len).filter(|_| d.flags & F_WRITE != 0) else {
                    bad = true;
                    break;
                };
                let mut o = 0usize;
                while o < len && off < total {
                    let mut k = (len - o).min(total - off);
                    let src = if off < hdr_len {
                        k = k.min(hdr_len - off);
                        if off == 0 {
                            if k < hdr_len {
                                // The header split over descriptors: not placed (refused).
                                bad = true;
                                break;
                            }
                            // SAFETY: inside this descriptor's buffer (o < len).
                            hdr_at = Some(unsafe { dst.add(o) });
                        }
                        HDR_ZEROS[off..off + k].as_ptr()
                    } else {
                        while cur.is_empty() {
                            // The lengths add up to pkt_len, so a segment is there.
                            cur = segs.next().unwrap_or(&[0u8; 1]);
                        }
                        k = k.min(cur.len());
                        let p = cur.as_ptr();
                        cur = &cur[k..];
                        p
                    };
                    // SAFETY: `dst + o .. dst + o + k` is inside this descriptor's buffer,
                    // itself inside one mapped region (`Hosts::at` over its whole length);
                    // the source is ours and `k` bytes long.
                    unsafe { std::ptr::copy_nonoverlapping(src, dst.add(o), k) };
                    o += k;
                    off += k;
                    wrote += k as u32;
                }
                if off == total || bad {
                    break;
                }
            }
            // Room was checked before the pop.
            heads.push((head, wrote));
            if bad || !mrg {
                break; // without MRG_RXBUF a frame has one buffer
            }
        }
        if bad || off < total {
            // A bad chain, over 64 buffers, or one buffer too small without MRG_RXBUF: the
            // frame is dropped, its buffers given back used and empty.
            for (h, _) in &heads {
                r.push_used(*h, 0);
            }
            c.errors += 1;
            used_any = true;
            taken += 1;
            continue 'frames;
        }
        // num_buffers (header bytes 10..12), then the used elements.
        if let Some(h) = hdr_at {
            let nb = (heads.len() as u16).to_le_bytes();
            // SAFETY: bytes 10..12 of the 12-byte header written above, in the same buffer.
            unsafe { std::ptr::copy_nonoverlapping(nb.as_ptr(), h.add(10), 2) };
        }
        for (h, len) in &heads {
            r.push_used(*h, *len);
        }
        used_any = true;
        c.pkts += 1;
        c.bytes += pkt_len as u64;
        taken += 1;
    }
    // Every frame taken is in the front of `pkts` (a bad one's too): freed in one go.
    pool.free_bulk(&mut pkts[..taken]);
    if used_any {
        finish(r, call);
    }
    taken
}

fn stats_of(rx: &[Counters], tx: &[Counters]) -> PortStats {
    let mut s = PortStats::default();
    for c in rx {
        s.ipackets += c.pkts;
        s.ibytes += c.bytes;
        s.ierrors += c.errors;
        s.rx_nombuf += c.nombuf;
    }
    for c in tx {
        s.opackets += c.pkts;
        s.obytes += c.bytes;
        s.oerrors += c.errors;
    }
    s
}

impl Drop for Port {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.server {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = self.shm.free(&SharedLink::zone(self.port));
        tracing::info!(port = %self.port, "net_vhost closed");
    }
}
