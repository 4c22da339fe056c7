//! The vfio-user client against a real server (the `vfio_user` crate's `Server` on a thread)
//! and against scripted misbehaving peers (silent, garbage, vanishing).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lab_vfio::proto::{self, HeaderRepr};
use lab_vfio::{Bar, DeviceIo, DmaRegion, SparseArea, UserDevice, VfioError};
use nix::sys::eventfd::EventFd;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vfio_bindings::bindings::vfio as vb;
use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend, ServerRegion};

const BAR0_SIZE: u64 = 0x1000;
const BAR1_SIZE: u64 = 0x4000;
const BAR1_FILE_OFFSET: u64 = 0x10000;
const DOORBELL: SparseArea = SparseArea { offset: 0x1000, size: 0x1000 };
/// A region write here makes the backend fail.
const MAGIC_FAIL: u64 = 0xbad & !3;
/// A DMA map at this IOVA makes the backend fail.
const FAIL_IOVA: u64 = 0xdead_0000;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct DeviceState {
    bar0: Vec<u8>,
    config: Vec<u8>,
    dma: BTreeMap<u64, (u64, u64, File)>,
    /// What the server read from each DMA map's memory right after mapping it.
    dma_seen: Vec<Vec<u8>>,
    irq_calls: Vec<(u32, u32, u32, u32, usize)>,
    irq_fds: BTreeMap<u32, File>,
    resets: u32,
}

struct Backend(Arc<Mutex<DeviceState>>);

fn bounds(len: usize, offset: u64, n: usize) -> std::io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(std::io::Error::other)?;
    let end = start.checked_add(n).filter(|&e| e <= len).ok_or_else(|| std::io::Error::other("oob"))?;
    Ok(start..end)
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let st = self.0.lock().unwrap();
        let src = match region {
            0 => &st.bar0,
            7 => &st.config,
            _ => return Err(std::io::Error::other("no such region")),
        };
        data.copy_from_slice(&src[bounds(src.len(), offset, data.len())?]);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if region == 0 && offset == MAGIC_FAIL {
            return Err(std::io::Error::other("injected failure"));
        }
        let mut st = self.0.lock().unwrap();
        let dst = match region {
            0 => &mut st.bar0,
            7 => &mut st.config,
            _ => return Err(std::io::Error::other("no such region")),
        };
        let r = bounds(dst.len(), offset, data.len())?;
        dst[r].copy_from_slice(data);
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        if address == FAIL_IOVA || flags != DmaMapFlags::READ_WRITE {
            return Err(std::io::Error::other("refused"));
        }
        let fd = fd.ok_or_else(|| std::io::Error::other("no fd"))?;
        let mut head = vec![0u8; 16];
        nix::sys::uio::pread(&fd, &mut head, offset as i64)?;
        let mut st = self.0.lock().unwrap();
        st.dma_seen.push(head);
        st.dma.insert(address, (size, offset, fd));
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        let mut st = self.0.lock().unwrap();
        match st.dma.get(&address) {
            Some((s, _, _)) if *s == size => {
                st.dma.remove(&address);
                Ok(())
            }
            _ => Err(std::io::Error::other("not mapped")),
        }
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().resets += 1;
        Ok(())
    }

    fn set_irqs(&mut self, index: u32, flags: u32, start: u32, count: u32, fds: Vec<File>) -> std::io::Result<()> {
        let mut st = self.0.lock().unwrap();
        st.irq_calls.push((index, flags, start, count, fds.len()));
        for (i, f) in fds.into_iter().enumerate() {
            st.irq_fds.insert(start + i as u32, f);
        }
        Ok(())
    }
}

struct TestServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    state: Arc<Mutex<DeviceState>>,
    bar1_mem: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

fn region(index: u32, flags: u32, size: u64, offset: u64) -> ServerRegion {
    ServerRegion {
        region_info: vb::vfio_region_info { argsz: 32, flags, index, cap_offset: 0, size, offset },
        sparse_areas: vec![],
        mmap_fd: None,
    }
}

impl TestServer {
    fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.sock");
        let listener = UnixListener::bind(&path).unwrap();
        Self::start_on(dir, path, listener)
    }

    fn start_on(dir: tempfile::TempDir, path: PathBuf, listener: UnixListener) -> TestServer {
        let bar1_mem = memfd_create(c"bar1", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&bar1_mem, (BAR1_FILE_OFFSET + BAR1_SIZE) as i64).unwrap();
        let rw = vb::VFIO_REGION_INFO_FLAG_READ | vb::VFIO_REGION_INFO_FLAG_WRITE;
        let mut regions = vec![region(0, rw, BAR0_SIZE, 0)];
        let mut bar1 = region(1, rw | vb::VFIO_REGION_INFO_FLAG_MMAP, BAR1_SIZE, BAR1_FILE_OFFSET);
        bar1.sparse_areas = vec![vfio_user::SparseArea {
            area: vb::vfio_region_sparse_mmap_area { offset: DOORBELL.offset, size: DOORBELL.size },
        }];
        bar1.mmap_fd = Some(bar1_mem.as_raw_fd());
        regions.push(bar1);
        for i in 2..7 {
            regions.push(region(i, 0, 0, 0));
        }
        regions.push(region(7, rw, 256, 0));
        let irq = |index, count| vfio_user::IrqInfo { index, flags: vb::VFIO_IRQ_INFO_EVENTFD, count };
        let server = vfio_user::Server::from_owned_fd(
            OwnedFd::from(listener),
            true,
            vec![irq(0, 1), irq(1, 1), irq(2, 4)],
            regions,
        );
        let state = Arc::new(Mutex::new(DeviceState {
            bar0: vec![0; BAR0_SIZE as usize],
            config: vec![0; 256],
            ..Default::default()
        }));
        let mut backend = Backend(state.clone());
        // `bar1_mem` outlives the server thread: the thread is joined in Drop, before the memfd
        // is closed.
        let thread = std::thread::spawn(move || {
            let _ = server.run(&mut backend);
        });
        TestServer { _dir: dir, path, state, bar1_mem, thread: Some(thread) }
    }

    fn connect(&self) -> Arc<UserDevice> {
        Arc::new(UserDevice::connect(&self.path, "0000:00:05.0", TIMEOUT).unwrap())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The server thread ends when the client (dropped by the test before us) disconnects.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn handshake_reads_regions_sparse_cap_and_irqs() {
    let srv = TestServer::start();
    let dev = srv.connect();
    assert_eq!(dev.name(), "0000:00:05.0");
    assert_eq!(dev.regions().len(), 8);
    let bar1 = &dev.regions()[1];
    assert_eq!(bar1.size, BAR1_SIZE);
    assert_eq!(bar1.offset, BAR1_FILE_OFFSET);
    assert_eq!(bar1.sparse, vec![DOORBELL]);
    assert!(dev.regions()[0].sparse.is_empty());
    assert_eq!(dev.irqs().len(), 3);
    assert_eq!(dev.irqs()[2].count, 4);
    // The crate's server advertises max_msg_fds=1 and 1 MiB transfers.
    assert_eq!(dev.max_msg_fds(), 1);
    assert_eq!(dev.max_data_xfer_size(), 1 << 20);
    assert_ne!(dev.device_flags() & vb::VFIO_DEVICE_FLAGS_RESET, 0);
    assert!(dev.is_alive());
    drop(dev);
}

#[test]
fn trapped_reads_and_writes_round_trip() {
    let srv = TestServer::start();
    let dev = srv.connect();
    dev.region_write(0, 0x40, &0xcafe_f00du32.to_le_bytes()).unwrap();
    assert_eq!(&srv.state.lock().unwrap().bar0[0x40..0x44], &0xcafe_f00du32.to_le_bytes());
    let bar0 = Bar::open(dev.clone(), 0).unwrap();
    assert!(bar0.mapped_ptr(0x40).is_none());
    assert_eq!(bar0.read32(0x40), 0xcafe_f00d);
    bar0.write32(0x44, 7);
    bar0.set_bits(0x44, 0x100);
    assert_eq!(bar0.try_read32(0x44).unwrap(), 0x107);
    let mut whole = vec![0u8; BAR0_SIZE as usize];
    dev.region_read(0, 0, &mut whole).unwrap();
    assert_eq!(&whole[0x44..0x48], &0x107u32.to_le_bytes());
    dev.config_write(4, &[6, 0]).unwrap();
    let mut cmd = [0u8; 2];
    dev.config_read(4, &mut cmd).unwrap();
    assert_eq!(cmd, [6, 0]);
    // Out of range is refused locally, without a round trip.
    assert!(matches!(dev.region_read(0, BAR0_SIZE, &mut cmd), Err(VfioError::OutOfRange { .. })));
    drop(bar0);
    drop(dev);
}

#[test]
fn posted_writes_are_not_answered_and_a_later_read_sees_them_in_order() {
    let srv = TestServer::start();
    let dev = srv.connect();
    let bar0 = Bar::open(dev.clone(), 0).unwrap();
    // A thousand posted writes, each one message with No_reply, then one read: the read's
    // reply comes after all of them were applied, in order (the last value wins), and no stray
    // reply is left in the stream (the next transactions' ids and commands still match).
    for v in 0..1000u32 {
        bar0.write32_posted(0x80, v);
        dev.region_write_posted(0, 0x84 + 4 * (v % 4) as u64, &v.to_le_bytes()).unwrap();
    }
    assert_eq!(bar0.try_read32(0x80).unwrap(), 999);
    assert_eq!(bar0.try_read32(0x84 + 4 * (999 % 4)).unwrap(), 999);
    assert_eq!(bar0.try_read32(0x84).unwrap(), 996);
    dev.region_write(0, 0x90, &5u32.to_le_bytes()).unwrap();
    assert_eq!(bar0.try_read32(0x90).unwrap(), 5);
    assert!(dev.poisoned().is_none());
    // Writes and the read after them in one send: the read sees them.
    for v in 0..100u32 {
        assert_eq!(bar0.read32_after_posted(&[(0xa0, v), (0xa4, v + 1)], 0xa4), v + 1);
        assert_eq!(bar0.try_read32(0xa0).unwrap(), v);
    }
    assert_eq!(bar0.read32_after_posted(&[(0xa0, 7)], BAR0_SIZE), u32::MAX, "a read out of range");
    assert_eq!(bar0.try_read32(0xa0).unwrap(), 99, "and nothing of it was sent");
    // Out of range is still refused locally, before anything is sent.
    assert!(matches!(dev.region_write_posted(0, BAR0_SIZE, &[0; 4]), Err(VfioError::OutOfRange { .. })));
    // A posted write the backend fails: the crate's server still sends an error reply for it
    // (lab-nic's relay drops it unanswered). The client skips that reply, which comes before
    // the next request's, and stays in sync.
    dev.region_write_posted(0, MAGIC_FAIL, &[1; 4]).unwrap();
    bar0.write32_posted(0x80, 1234);
    assert_eq!(bar0.try_read32(0x80).unwrap(), 1234);
    assert_eq!(bar0.try_read32(0x90).unwrap(), 5);
    assert!(dev.poisoned().is_none());
    drop(bar0);
    drop(dev);
}

#[test]
fn sparse_area_is_mmapped_and_shared_with_the_server() {
    let srv = TestServer::start();
    let dev = srv.connect();
    let bar1 = Bar::open(dev.clone(), 1).unwrap();
    assert!(bar1.mapped_ptr(DOORBELL.offset).is_some());
    assert!(bar1.mapped_ptr(0).is_none());
    bar1.write32(DOORBELL.offset + 8, 0x1234_abcd);
    let mut b = [0u8; 4];
    let server_view = BAR1_FILE_OFFSET + DOORBELL.offset + 8;
    nix::sys::uio::pread(&srv.bar1_mem, &mut b, server_view as i64).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1234_abcd);
    // And the other way: the device updates a register, the driver sees it without a message.
    nix::sys::uio::pwrite(&srv.bar1_mem, &0x55u32.to_le_bytes(), (server_view + 4) as i64).unwrap();
    assert_eq!(bar1.read32(DOORBELL.offset + 12), 0x55);
    drop(bar1);
    drop(dev);
}

#[test]
fn dma_map_hands_the_memory_to_the_server_and_unmap_must_match() {
    let srv = TestServer::start();
    let dev = srv.connect();
    let mem = memfd_create(c"dma", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&mem, 0x20000).unwrap();
    nix::sys::uio::pwrite(&mem, b"written by client", 0x1000).unwrap();
    let map = |iova, size| DmaRegion { iova, size, fd: mem.as_fd(), fd_offset: 0x1000, vaddr: std::ptr::null_mut() };
    dev.dma_map(&map(0x1_0000_0000, 0x10000)).unwrap();
    {
        let st = srv.state.lock().unwrap();
        assert_eq!(&st.dma_seen[0], b"written by clien");
        assert_eq!(st.dma.get(&0x1_0000_0000).map(|m| (m.0, m.1)), Some((0x10000, 0x1000)));
    }
    let e = dev.dma_map(&map(0x1_0000_8000, 0x1000)).unwrap_err();
    assert!(matches!(e, VfioError::DmaOverlap { .. }), "{e}");
    let e = dev.dma_unmap(0x1_0000_0000, 0x1000).unwrap_err();
    assert!(matches!(e, VfioError::DmaNotMapped { .. }), "{e}");
    dev.dma_unmap(0x1_0000_0000, 0x10000).unwrap();
    assert!(srv.state.lock().unwrap().dma.is_empty());
    // A map the server refuses is an error reply and is not recorded locally.
    let e = dev.dma_map(&map(FAIL_IOVA, 0x1000)).unwrap_err();
    assert!(matches!(e, VfioError::ErrorReply { command: "DMA_MAP", .. }), "{e}");
    dev.dma_map(&map(FAIL_IOVA + 0x1000, 0x1000)).unwrap();
    drop(dev);
}

#[test]
fn reset_reaches_the_backend() {
    let srv = TestServer::start();
    let dev = srv.connect();
    dev.reset().unwrap();
    dev.reset().unwrap();
    assert_eq!(srv.state.lock().unwrap().resets, 2);
    drop(dev);
}

#[test]
fn eventfds_are_batched_by_max_msg_fds_and_signalled_by_the_server() {
    let srv = TestServer::start();
    let dev = srv.connect();
    let efds: Vec<EventFd> = (0..3).map(|_| EventFd::new().unwrap()).collect();
    let fds: Vec<_> = efds.iter().map(|e| e.as_fd()).collect();
    dev.set_irq_eventfds(2, 1, &fds).unwrap();
    let flags = vb::VFIO_IRQ_SET_DATA_EVENTFD | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
    {
        let mut st = srv.state.lock().unwrap();
        assert_eq!(st.irq_calls, vec![(2, flags, 1, 1, 1), (2, flags, 2, 1, 1), (2, flags, 3, 1, 1)]);
        // The device raises vector 2: one 8-byte 1 written to its eventfd.
        st.irq_fds.get_mut(&2).unwrap().write_all(&1u64.to_ne_bytes()).unwrap();
    }
    assert_eq!(efds[1].read().unwrap(), 1);
    let e = dev.set_irq_eventfds(2, 2, &fds).unwrap_err();
    assert!(matches!(e, VfioError::InvalidArgument { .. }), "{e}");
    dev.disable_irqs(2).unwrap();
    let last = *srv.state.lock().unwrap().irq_calls.last().unwrap();
    assert_eq!(last, (2, vb::VFIO_IRQ_SET_DATA_NONE | vb::VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 0));
    drop(dev);
}

#[test]
fn backend_error_is_an_error_reply_not_a_hang() {
    let srv = TestServer::start();
    let dev = srv.connect();
    let e = dev.region_write(0, MAGIC_FAIL, &[1, 2, 3, 4]).unwrap_err();
    // Answered with an error reply, not a Timeout waiting for one.
    assert!(matches!(e, VfioError::ErrorReply { command: "REGION_WRITE", .. }), "{e}");
    // An error reply keeps the stream in sync: the connection is still usable.
    dev.region_write(0, 0, &[9, 9, 9, 9]).unwrap();
    let bar0 = Bar::open(dev.clone(), 0).unwrap();
    assert_eq!(bar0.read32(0), 0x0909_0909);
    drop(bar0);
    drop(dev);
}

#[test]
fn long_socket_paths_are_reached_through_proc_self_fd() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = dir.path().to_path_buf();
    for i in 0..6 {
        deep.push(format!("a-rather-long-directory-name-{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let path = deep.join("vfio-user.sock");
    assert!(path.as_os_str().len() > 107);
    let listener = lab_vfio::user::bind_socket(&path).unwrap();
    let srv = TestServer::start_on(dir, path, listener);
    let dev = srv.connect();
    assert_eq!(dev.regions().len(), 8);
    drop(dev);
}

// ---- scripted peers -------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Read commands, never answer.
    Silent,
    /// Answer the next command with a header claiming a huge size.
    Garbage,
    /// Answer with the wrong message id.
    WrongId,
    /// Close the connection.
    Close,
    /// Answer with `n` pseudo-random bytes from `seed`, then close.
    Random(u64, usize),
    /// Behave: a 64-byte trapped region and 8 MSI-X-like vectors, with small capabilities.
    Device,
}

/// What a scripted peer saw: command, body length, fds received with it.
type Log = Arc<Mutex<Vec<(u16, usize, usize)>>>;

fn read_msg(s: &mut UnixStream) -> Option<(HeaderRepr, Vec<u8>, usize)> {
    let mut head = [0u8; 16];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < 16 {
        match lab_vfio::sys::recv_with_fds(s.as_fd(), &mut head[got..], &mut fds) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    let h = HeaderRepr::parse(&head).ok()?;
    let mut body = vec![0u8; h.size as usize - 16];
    s.read_exact(&mut body).ok()?;
    Some((h, body, fds.len()))
}

fn reply(s: &mut UnixStream, h: &HeaderRepr, body: &[u8]) {
    let r =
        HeaderRepr { id: h.id, command: h.command, size: (16 + body.len()) as u32, flags: proto::TYPE_REPLY, error: 0 };
    let _ = s.write_all(&r.emit());
    let _ = s.write_all(body);
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Answers the handshake (one trapped region, 0 or 1 irq index), then behaves as told.
fn scripted(after: After) -> (tempfile::TempDir, PathBuf, JoinHandle<()>, Log) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let l = UnixListener::bind(&path).unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let device = after == After::Device;
        let mut mem = [0u8; 64];
        while let Some((h, body, nfds)) = read_msg(&mut s) {
            seen.lock().unwrap().push((h.command, body.len(), nfds));
            match h.command {
                1 => {
                    let caps = if device {
                        proto::Capabilities { max_msg_fds: 2, max_data_xfer_size: 8 }
                    } else {
                        Default::default()
                    };
                    reply(&mut s, &h, &proto::VersionRepr { major: 0, minor: 0, caps }.emit());
                }
                4 => {
                    let mut b = vec![0u8; 16];
                    b[0..4].copy_from_slice(&16u32.to_ne_bytes());
                    b[8..12].copy_from_slice(&1u32.to_ne_bytes());
                    b[12..16].copy_from_slice(&u32::from(device).to_ne_bytes());
                    reply(&mut s, &h, &b);
                }
                5 => {
                    let mut b = body.clone();
                    b[0..4].copy_from_slice(&32u32.to_ne_bytes());
                    b[4..8].copy_from_slice(&3u32.to_ne_bytes());
                    let size: u64 = if device { 64 } else { 0x1000 };
                    b[16..24].copy_from_slice(&size.to_ne_bytes());
                    reply(&mut s, &h, &b);
                }
                7 if device => {
                    let mut b = body.clone();
                    b[4..8].copy_from_slice(&vb::VFIO_IRQ_INFO_EVENTFD.to_ne_bytes());
                    b[12..16].copy_from_slice(&8u32.to_ne_bytes());
                    reply(&mut s, &h, &b);
                }
                8 if device => reply(&mut s, &h, &[]),
                9 if device => {
                    let off = u64::from_ne_bytes(body[0..8].try_into().unwrap()) as usize;
                    let n = u32::from_ne_bytes(body[12..16].try_into().unwrap()) as usize;
                    let mut b = body[..16].to_vec();
                    b.extend_from_slice(&mem[off..off + n]);
                    reply(&mut s, &h, &b);
                }
                10 if device => {
                    let off = u64::from_ne_bytes(body[0..8].try_into().unwrap()) as usize;
                    let n = body.len() - 16;
                    mem[off..off + n].copy_from_slice(&body[16..]);
                    reply(&mut s, &h, &body[..16]);
                }
                _ => match after {
                    After::Silent | After::Device => {}
                    After::Garbage => {
                        let _ = s.write_all(&[0xff; 16]);
                    }
                    After::WrongId => {
                        let wrong = HeaderRepr { id: h.id.wrapping_add(1), ..h };
                        reply(&mut s, &wrong, &[0; 16]);
                    }
                    After::Close => return,
                    After::Random(seed, n) => {
                        let mut st = seed | 1;
                        let bytes: Vec<u8> = (0..n).map(|_| xorshift(&mut st) as u8).collect();
                        let _ = s.write_all(&bytes);
                        return;
                    }
                },
            }
        }
    });
    (dir, path, t, log)
}

fn connect(path: &Path, timeout: Duration) -> Arc<UserDevice> {
    Arc::new(UserDevice::connect(path, "0000:00:06.0", timeout).unwrap())
}

#[test]
fn a_server_that_never_answers_times_out_within_the_configured_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let l = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let e = UserDevice::connect(&path, "0000:00:07.0", Duration::from_millis(200)).unwrap_err();
    // It gave up on its own (no reply can come), after the whole timeout it was given.
    assert!(
        matches!(e, VfioError::Timeout { command: "VERSION", waited } if waited >= Duration::from_millis(200)),
        "{e}"
    );
    t.join().unwrap();
}

#[test]
fn a_timeout_mid_session_poisons_the_connection() {
    let (_dir, path, t, _) = scripted(After::Silent);
    let dev = connect(&path, Duration::from_millis(150));
    let e = dev.region_write(0, 0, &[1, 2, 3, 4]).unwrap_err();
    assert!(matches!(e, VfioError::Timeout { command: "REGION_WRITE", .. }), "{e}");
    let e = dev.reset().unwrap_err();
    // Refused before anything is sent: Poisoned, not a second Timeout waiting for a reply.
    assert!(matches!(e, VfioError::Poisoned { .. }), "{e}");
    assert!(dev.poisoned().unwrap().contains("REGION_WRITE"));
    // A Bar on a poisoned device reads all-ones, as a dead PCI device does.
    let bar = Bar::open(dev.clone(), 0).unwrap();
    assert_eq!(bar.read32(0), u32::MAX);
    drop(bar);
    drop(dev);
    t.join().unwrap();
}

#[test]
fn garbage_replies_give_a_clean_error() {
    for after in [After::Garbage, After::WrongId] {
        let (_dir, path, t, _) = scripted(after);
        let dev = connect(&path, Duration::from_secs(2));
        let mut b = [0u8; 4];
        let e = dev.region_read(0, 0, &mut b).unwrap_err();
        assert!(matches!(e, VfioError::BadReply { command: "REGION_READ", .. }), "{e}");
        assert!(matches!(dev.region_read(0, 0, &mut b), Err(VfioError::Poisoned { .. })));
        drop(dev);
        t.join().unwrap();
    }
    // Garbage instead of a VERSION reply.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    let l = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink);
    });
    let e = UserDevice::connect(&path, "x", Duration::from_secs(2)).unwrap_err();
    assert!(matches!(e, VfioError::BadReply { command: "VERSION", .. }), "{e}");
    t.join().unwrap();
}

#[test]
fn a_vanished_server_makes_is_alive_false() {
    let (_dir, path, t, _) = scripted(After::Close);
    let dev = connect(&path, Duration::from_secs(2));
    assert!(dev.is_alive());
    // The next command makes the server hang up; the client sees EOF.
    let e = dev.reset().unwrap_err();
    assert!(e.is_gone(), "{e}");
    assert!(!dev.is_alive());
    t.join().unwrap();
}

#[test]
fn a_server_that_closes_while_idle_is_detected_by_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bye.sock");
    let l = UnixListener::bind(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        for _ in 0..3 {
            let Some((h, body, _)) = read_msg(&mut s) else { return };
            match h.command {
                1 => reply(&mut s, &h, &proto::VersionRepr { major: 0, minor: 0, caps: Default::default() }.emit()),
                4 => reply(&mut s, &h, &[0u8; 16]),
                _ => reply(&mut s, &h, &body),
            }
            if h.command == 4 {
                break;
            }
        }
        let _ = rx.recv();
        // Dropping the stream is the emulator going away.
    });
    let dev = connect(&path, Duration::from_secs(2));
    assert!(dev.is_alive());
    tx.send(()).unwrap();
    t.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while dev.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!dev.is_alive());
}

#[test]
fn transfers_and_fd_batches_follow_the_negotiated_capabilities() {
    let (_dir, path, t, log) = scripted(After::Device);
    let dev = connect(&path, Duration::from_secs(2));
    assert_eq!((dev.max_data_xfer_size(), dev.max_msg_fds()), (8, 2));
    let data: Vec<u8> = (0..20).collect();
    dev.region_write(0, 4, &data).unwrap();
    let mut back = [0u8; 20];
    dev.region_read(0, 4, &mut back).unwrap();
    assert_eq!(&back[..], &data[..]);
    let efds: Vec<EventFd> = (0..5).map(|_| EventFd::new().unwrap()).collect();
    let fds: Vec<_> = efds.iter().map(|e| e.as_fd()).collect();
    dev.set_irq_eventfds(0, 3, &fds).unwrap();
    let log = log.lock().unwrap().clone();
    // Writes: 16-byte access header + 8, 8, 4 bytes of data; reads: three 16-byte requests.
    let writes: Vec<usize> = log.iter().filter(|e| e.0 == 10).map(|e| e.1 - 16).collect();
    let reads = log.iter().filter(|e| e.0 == 9).count();
    assert_eq!((writes, reads), (vec![8, 8, 4], 3));
    let irq_fds: Vec<usize> = log.iter().filter(|e| e.0 == 8).map(|e| e.2).collect();
    assert_eq!(irq_fds, vec![2, 2, 1]);
    drop(dev);
    t.join().unwrap();
}

#[test]
fn random_replies_never_panic_and_always_fail_cleanly() {
    for seed in 1..=24u64 {
        let n = [1, 15, 16, 17, 40, 200][seed as usize % 6];
        let (_dir, path, t, _) = scripted(After::Random(seed * 0x9e37_79b9, n));
        let dev = connect(&path, Duration::from_millis(300));
        let mut b = [0u8; 4];
        let e = dev.region_read(0, 0, &mut b).unwrap_err();
        assert!(
            matches!(e, VfioError::BadReply { .. } | VfioError::PeerClosed { .. } | VfioError::Timeout { .. }),
            "seed {seed}: {e}"
        );
        assert!(dev.region_read(0, 0, &mut b).is_err());
        drop(dev);
        t.join().unwrap();
    }
}

#[test]
fn threads_share_one_connection() {
    let srv = TestServer::start();
    let dev = srv.connect();
    let workers: Vec<_> = (0..4u64)
        .map(|i| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let bar = Bar::open(dev, 0).unwrap();
                for n in 0..50u32 {
                    let off = 0x100 * i + 4 * u64::from(n % 8);
                    let v = (i as u32) << 24 | n;
                    bar.try_write32(off, v).unwrap();
                    assert_eq!(bar.try_read32(off).unwrap(), v);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(dev.is_alive());
    drop(dev);
}
