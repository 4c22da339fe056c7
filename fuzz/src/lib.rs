//! Fuzz targets, one per untrusted input of the lab: each takes the fuzzer's bytes, feeds them
//! to the real parser or device model, and checks what must hold for any input (no panic, an
//! accepted input that reads back the same, an error that names what was wrong).
//!
//! The targets are plain functions, so the corpus under `fuzz/corpus/TARGET/` runs as an
//! ordinary test on stable (`cargo test -p lab-fuzz`, which CI runs), and `ci/fuzz.sh TARGET
//! SECONDS` builds them with cargo-afl (`fuzz/afl`, outside the workspace, so the workspace
//! never needs the fuzzer) and fuzzes one for real, adding what it finds to the corpus.
//!
//! Why AFL++ through cargo-afl rather than cargo fuzz: cargo fuzz's libFuzzer build needs
//! nightly's `-Zsanitizer=fuzzer` (on stable only by setting RUSTC_BOOTSTRAP, which pretends to
//! be nightly); cargo-afl instruments with flags stable rustc takes (LLVM's sancov passes) and
//! runs AFL++, whose fork server also survives a target that aborts, and whose corpus is plain
//! files, the same ones the replay test reads.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lab_emu::dma::FakeDma;
use lab_emu::model::{self, DeviceModel, ModelConfig};
use lab_emu::wire::Wire;

/// A fuzz target: the fuzzer's bytes in, a panic when something that must hold does not.
pub type Target = fn(&[u8]);

/// Every target, by the name `ci/fuzz.sh` and the corpus directory use.
pub const TARGETS: &[(&str, Target)] = &[
    ("devargs", devargs),
    ("eal_options", eal_options),
    ("ipc_datagram", ipc_datagram),
    ("scenario_toml", scenario_toml),
    ("capture", capture),
    ("nic_device", nic_device),
    ("vfio_user", vfio_user),
    ("telemetry", telemetry),
    ("vfio_user_replies", vfio_user_replies),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Device arguments (`--vdev`, `attach`, scenario files, IPC requests from other processes):
/// an accepted string parses again to the same devargs from its display form.
pub fn devargs(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match lab_core::devargs::Devargs::parse(s) {
        Ok(d) => {
            assert!(!d.name().is_empty(), "{s:?}: accepted with no name");
            let shown = d.to_string();
            let again = lab_core::devargs::Devargs::parse(&shown)
                .unwrap_or_else(|e| panic!("{s:?} shows as {shown:?}, which is refused: {e}"));
            assert_eq!(again.name(), d.name(), "{s:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown, "{s:?}: display is not stable");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "{s:?}: an empty error"),
    }
}

/// EAL options (a user's command line, a scenario's `eal` list): arguments split at NUL bytes.
/// Accepted options rendered back with `to_args` parse to the same options.
pub fn eal_options(data: &[u8]) {
    let args: Vec<String> = data.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    match lab_core::options::Options::parse(args.clone()) {
        Ok((o, _app)) => {
            let back = o.to_args();
            match lab_core::options::Options::parse(back.clone()) {
                Ok((o2, _)) => assert_eq!(o2.to_args(), back, "{args:?}: to_args is not stable"),
                Err(e) => panic!("{args:?} renders as {back:?}, which is refused: {e}"),
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "{args:?}: an empty error"),
    }
}

/// An IPC datagram as the receive thread gets it from any process of the user: the first byte
/// says how many descriptors came with it (low nibble) and whether the kernel truncated it (bit
/// 7); the rest is the datagram. An accepted one has a name and payload within the limits.
pub fn ipc_datagram(data: &[u8]) {
    let Some((&head, buf)) = data.split_first() else { return };
    let nfds = (head & 0x0f) as usize;
    let truncated = head & 0x80 != 0;
    if let Ok(v) = lab_core::ipc::MsgView::new_checked(buf, truncated, nfds) {
        assert!(!truncated, "a truncated datagram was accepted");
        assert!(v.name().len() <= buf.len() && v.payload().len() <= buf.len());
        let _ = (v.kind(), v.id());
    }
}

/// A scenario file, as a user writes it.
pub fn scenario_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = lab_harness::scenario::Scenario::parse(&text, Path::new("fuzz.toml")) {
        let msg = e.to_string();
        assert!(msg.contains("fuzz.toml"), "the error does not name the file: {msg}");
    }
}

/// A pcap or pcapng capture (net_pcap's rx_pcap=, a scenario's traffic): every frame of an
/// accepted capture can be read.
pub fn capture(data: &[u8]) {
    if let Ok(f) = lab_drivers::pcap::parse_capture(Path::new("fuzz.pcap"), data) {
        for i in 0..f.len() {
            let (frame, _ts) = f.get(i).expect("a frame within len");
            assert!(frame.len() <= data.len());
        }
        assert!(f.get(f.len()).is_none());
    }
}

/// Frames the fuzzer puts on the wire, nothing kept of what the device sends.
struct FuzzWire {
    frames: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

impl Wire for FuzzWire {
    fn transmit(&mut self, _frame: &[u8]) {}
    fn describe(&self) -> String {
        "fuzz".into()
    }
    fn receive(&mut self, buf: &mut Vec<u8>) -> bool {
        match self.frames.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
            Some(f) => {
                buf.clear();
                buf.extend_from_slice(&f);
                true
            }
            None => false,
        }
    }
}

/// IOVA of the fuzz target's DMA window, and its size: what descriptors and ring bases point at.
const DMA_BASE: u64 = 0x10_0000;
const DMA_LEN: usize = 64 * 1024;

/// The device side of an emulated NIC, driven as a buggy or hostile driver would: the first byte
/// picks the model (82599 or X710), then a program of operations: register writes and reads on
/// every BAR, config space writes, bytes written into DMA memory (descriptor rings, admin queue
/// buffers, anywhere), frames arriving from the wire, device polls, link flaps and resets. The
/// model must never panic, and its counters only grow.
pub fn nic_device(data: &[u8]) {
    let mut r = Reader(data);
    let name = if r.u8() & 1 == 0 { "ixgbe" } else { "i40e" };
    let frames: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::default();
    let wire = FuzzWire { frames: frames.clone() };
    let cfg = ModelConfig { bdf: "0000:00:05.0".into(), function: 0, mac: [2, 0, 0, 0, 0, 1], wire: Box::new(wire) };
    let mut dev: Box<dyn DeviceModel> = model::create(name, cfg).expect("a model");
    let mut dma = FakeDma::new(DMA_BASE, DMA_LEN);
    let bars = dev.bars();
    let mut last = dev.stats();
    let mut ops = 0;
    while !r.0.is_empty() && ops < 512 {
        ops += 1;
        match r.u8() % 8 {
            0 | 1 => {
                let bar = (r.u8() % 6) as usize;
                let size = bars[bar].size.max(4);
                let off = (r.u32() as u64 % size) & !3;
                let v = r.u32();
                dev.bar_write(bar as u32, off, &v.to_le_bytes());
            }
            2 => {
                let bar = (r.u8() % 6) as usize;
                let off = r.u32() as u64 % bars[bar].size.max(4);
                let mut b = [0u8; 4];
                let n = [1, 2, 4][(r.u8() % 3) as usize];
                dev.bar_read(bar as u32, off, &mut b[..n]);
            }
            3 => {
                let off = r.u16() as u64 % DMA_LEN as u64;
                let n = (r.u8() as usize % 64).min(r.0.len());
                let bytes = r.take(n);
                let _ = lab_emu::dma::Dma::write(&mut dma, DMA_BASE + off, bytes);
            }
            4 => {
                let n = r.u16() as usize % 2048;
                let f = r.take(n).to_vec();
                let mut q = frames.lock().unwrap_or_else(|e| e.into_inner());
                if q.len() < 64 {
                    q.push_back(f);
                }
            }
            5 => {
                let off = r.u16() as u64 % dev.config_size().max(1);
                let v = r.u32();
                dev.config_write(off, &v.to_le_bytes()[..(1 << (r.u8() % 3)) as usize]);
            }
            6 => {
                match r.u8() % 8 {
                    0 => dev.link_set(false),
                    1 => dev.link_set(true),
                    2 => dev.reset(),
                    _ => {}
                }
                let _ = dev.take_irqs();
            }
            _ => {
                // Frames queued so far reach the wire the model reads before it polls.
                for _ in 0..4 {
                    let _ = dev.poll(&mut dma);
                }
            }
        }
        let now = dev.stats();
        assert!(
            now.rx_packets >= last.rx_packets && now.tx_packets >= last.tx_packets && now.rx_bytes >= last.rx_bytes,
            "{name}: counters went back: {last:?} -> {now:?}"
        );
        last = now;
    }
}

/// Little-endian reads from the fuzzer's bytes, zero past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let t = self.take(2);
        b[..t.len()].copy_from_slice(t);
        u16::from_le_bytes(b)
    }
    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let t = self.take(4);
        b[..t.len()].copy_from_slice(t);
        u32::from_le_bytes(b)
    }
}

/// A whole vfio-user conversation with lab-nic's server, as any local process can hold one: the
/// first byte picks the model, then chunks of `[flags u8][len u16][bytes]` are written to one
/// connection in order (flags bit 0: a 64 KiB memfd rides along, as DMA_MAP's file does; bit 1:
/// wait for the server to answer what it has before the next chunk). Then the client hangs up.
/// Whatever was said, the server stays up: a new client is served its VERSION.
pub fn vfio_user(data: &[u8]) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    let mut r = Reader(data);
    let name = if r.u8() & 1 == 0 { "ixgbe" } else { "i40e" };
    let wire = FuzzWire { frames: Arc::default() };
    let cfg = ModelConfig { bdf: "0000:00:05.0".into(), function: 0, mac: [2, 0, 0, 0, 0, 1], wire: Box::new(wire) };
    let dev = model::create(name, cfg).expect("a model");
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("vfio-user.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let mut f = lab_emu::server::Function::start("0000:00:05.0", dev, listener, 2, dir.path()).expect("a function");
    {
        let mut c = UnixStream::connect(&path).expect("connect");
        // A wait for answers is short: a request the server still reads has none yet.
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        c.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut sink = vec![0u8; 64 * 1024];
        while !r.0.is_empty() {
            let flags = r.u8();
            let n = r.u16() as usize;
            let bytes = r.take(n);
            let sent = if flags & 1 != 0 && !bytes.is_empty() {
                let file = tempfile::tempfile().expect("a file");
                file.set_len(64 * 1024).expect("its size");
                let fds = [file.as_raw_fd()];
                let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                let iov = [std::io::IoSlice::new(bytes)];
                nix::sys::socket::sendmsg::<()>(c.as_raw_fd(), &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
                    .ok()
                    .and_then(|k| c.write_all(&bytes[k..]).ok())
            } else {
                c.write_all(bytes).ok()
            };
            if sent.is_none() {
                break; // the server closed the connection: its right
            }
            if flags & 2 != 0 {
                let _ = c.read(&mut sink);
            }
        }
        let _ = c.shutdown(std::net::Shutdown::Write);
        // The server lets a client that hung up go: its answers, then its end closed.
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        loop {
            match c.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    panic!("the server kept the connection of a client that hung up")
                }
                Err(_) => break, // reset: closed too
            }
        }
    }
    let mut c = UnixStream::connect(&path).expect("the server still listens");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // VERSION 0.1 without its JSON: msg_id 1, command 1, size 20.
    let hello = [1, 0, 1, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    c.write_all(&hello).expect("a new client can write");
    let mut h = [0u8; 16];
    c.read_exact(&mut h).expect("a new client is answered after the conversation");
    assert_eq!((h[0], h[2], h[8] & 0xf, h[8] & 0x20), (1, 1, 1, 0), "VERSION answered without error: {h:?}");
    f.stop();
}

/// A telemetry command record, as any local client (`dpdk-telemetry.py`, a script) sends it:
/// the answer is one JSON object within DPDK's output limit, whatever the record. Besides the
/// built-in commands, one takes a port parameter as the ethdev commands do and one echoes its
/// parameter back (so the answer's escaping is exercised).
pub fn telemetry(data: &[u8]) {
    use lab_core::telemetry::{param_port, Telemetry, MAX_OUTPUT_LEN};
    let dir = tempfile::tempdir().expect("a temp dir");
    let t = Telemetry::start(dir.path(), true, "fuzz").expect("telemetry");
    t.register("/fuzz/port", "a port id", |p| param_port(p).map(|n| serde_json::json!(n))).unwrap();
    t.register("/fuzz/echo", "its parameter", |p| Ok(serde_json::json!(p))).unwrap();
    let a = t.query(data);
    assert!(a.len() <= MAX_OUTPUT_LEN, "an answer of {} bytes", a.len());
    let v: serde_json::Value = serde_json::from_str(&a).unwrap_or_else(|e| panic!("not JSON ({e}): {a:?}"));
    assert!(v.is_object(), "{a}");
}

/// What a vfio-user server answers our client (lab-vfio's `UserDevice`, which every lab process
/// uses for an emulated NIC): a server of the fuzzer's that answers each request with the next
/// chunk `[flags u8][len u16][body]`: a reply to that request (flags bit 0: an error, errno the
/// flags' high bits) with that body, or (bit 7) the chunk's bytes as they are, header and all.
/// When the chunks run out it hangs up. The client connects (negotiation, region and irq
/// tables), then reads and writes a register and config space: every step ends, in an error or
/// not (a step that waits past its timeout is a hang, which the fuzzer reports as such).
pub fn vfio_user_replies(data: &[u8]) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    use lab_vfio::DeviceIo;

    let chunks: Vec<(u8, Vec<u8>)> = {
        let mut r = Reader(data);
        let mut v = Vec::new();
        while !r.0.is_empty() {
            let flags = r.u8();
            let n = r.u16() as usize;
            v.push((flags, r.take(n).to_vec()));
        }
        v
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("server.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        for (flags, body) in chunks {
            let mut h = [0u8; 16];
            if s.read_exact(&mut h).is_err() {
                return;
            }
            let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
            let mut rest = vec![0u8; size.saturating_sub(16).min(1 << 20)];
            if s.read_exact(&mut rest).is_err() {
                return;
            }
            let out = if flags & 0x80 != 0 {
                body
            } else {
                let mut m = Vec::with_capacity(16 + body.len());
                m.extend_from_slice(&h[0..4]);
                m.extend_from_slice(&((16 + body.len()) as u32).to_le_bytes());
                let err = if flags & 1 != 0 { 0x20 } else { 0 };
                m.extend_from_slice(&(1u32 | err).to_le_bytes());
                m.extend_from_slice(&u32::from((flags >> 1) & 0x3f).to_le_bytes());
                m.extend_from_slice(&body);
                m
            };
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    let timeout = Duration::from_millis(300);
    if let Ok(dev) = lab_vfio::user::UserDevice::connect(&path, "0000:00:05.0", timeout) {
        let mut b = [0u8; 4];
        let _ = dev.region_read(0, 0, &mut b);
        let _ = dev.config_read(0, &mut b);
        let _ = dev.region_write(0, 8, &1u32.to_le_bytes());
        let _ = (dev.regions().len(), dev.irqs().len(), dev.is_alive());
    }
    server.join().expect("the fake server");
}
