//! What the virtual-device tests share: a primary runtime in the test process, probing through
//! `ProbeCtx`, secondary peers (`lab-vdev-peer`) killed by pid on drop, unique interface names,
//! veth pairs removed on drop, and the CAP_NET_ADMIN check.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lab_core::devargs::Devargs;
use lab_core::ethdev::{Driver, EthDev, EthError, PortConf, PortId, ProbeCtx, Release, DEFAULT_POOL};
use lab_core::mbuf::{Mbuf, Mempool};
use lab_core::options::Options;
use lab_core::runtime::Runtime;

pub const PEER: &str = env!("CARGO_BIN_EXE_lab-vdev-peer");
pub const ETHERTYPE: u16 = 0x88b5;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One XDG runtime dir for the whole test binary (set once, before any runtime starts: the
/// environment is process-wide and tests run on parallel threads). Prefixes keep tests apart.
pub fn xdg() -> &'static Path {
    static X: OnceLock<tempfile::TempDir> = OnceLock::new();
    X.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        std::env::set_var("XDG_RUNTIME_DIR", d.path());
        d
    })
    .path()
}

#[allow(unused_imports)]
pub use lab_testkit::{ip, leftover_links, link_exists, skip_without_net_admin, unique, LinkGuard, Veth};

pub struct Lab {
    pub prefix: String,
    pub rt: Runtime,
    pub pool: Mempool,
    /// Tests of one binary run one at a time: descriptor counts are per process.
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lab {
    pub fn new(test: &str) -> Lab {
        let serial = serial();
        let _ = xdg();
        let prefix = format!("vd{}-{}-{}", std::process::id(), test, COUNTER.fetch_add(1, Ordering::Relaxed));
        let (opts, _) = Options::parse([format!("--file-prefix={prefix}"), "--proc-type=primary".into()]).unwrap();
        let rt = Runtime::init(&opts).expect("primary runtime");
        let pool = Mempool::create(rt.shm(), DEFAULT_POOL, 4096, 2048, 0).expect("pool");
        Lab { prefix, rt, pool, _serial: serial }
    }

    pub fn probe(&self, drv: &dyn Driver, devargs: &str, port: u16, nq: u16) -> Result<Box<dyn EthDev>, EthError> {
        let da = Devargs::parse(devargs).map_err(|e| EthError::Invalid { what: e.to_string() })?;
        let kv = da.validate(drv.name(), drv.keys()).map_err(|e| EthError::Invalid { what: e.to_string() })?;
        let conf = PortConf { nb_rxq: nq, nb_txq: nq, ..PortConf::default() };
        let ctx = ProbeCtx {
            runtime: &self.rt,
            port: PortId(port),
            name: da.name(),
            devargs: &da,
            kvargs: &kv,
            pci: None,
            conf: &conf,
        };
        drv.probe(&ctx)
    }

    /// Starts a secondary that probes `devargs` as port `port` with `nq` queue pairs.
    pub fn peer(&self, port: u16, devargs: &str, nq: u16) -> Peer {
        Peer::spawn(&self.prefix, port, devargs, nq).unwrap_or_else(|e| panic!("peer: {e}"))
    }

    /// A pool handle with a cache, for test traffic.
    pub fn pool(&self) -> Mempool {
        Mempool::lookup(self.rt.shm(), DEFAULT_POOL, 64).unwrap()
    }
}

/// A test frame: broadcast, locally administered source, ETHERTYPE, sequence number, pattern.
pub fn frame(seq: u64, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len.max(22)];
    d[..6].fill(0xff);
    d[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    d[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    d[14..22].copy_from_slice(&seq.to_be_bytes());
    for (i, x) in d[22..].iter_mut().enumerate() {
        *x = (seq as usize + i) as u8;
    }
    d
}

pub fn is_test_frame(d: &[u8]) -> bool {
    d.len() >= 22 && d[12..14] == ETHERTYPE.to_be_bytes()
}

/// Sends every frame on queue 0 (retrying while the port is full, 20 s at most).
pub fn send_all(p: &mut dyn EthDev, pool: &mut Mempool, frames: &[Vec<u8>]) -> usize {
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(20);
    while sent < frames.len() && Instant::now() < end {
        let mut m = pool.alloc().expect("buffer");
        assert!(m.copy_from(&frames[sent]));
        let mut slot = [Some(m)];
        if p.tx_burst(0, &mut slot) == 1 {
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sent
}

/// Receives test frames on every queue until `want` or `limit`; returns their bytes.
pub fn recv_frames(p: &mut dyn EthDev, want: usize, limit: Duration) -> Vec<Vec<u8>> {
    let nq = p.info().nb_rxq;
    let mut burst: Vec<Option<Mbuf>> = (0..32).map(|_| None).collect();
    let mut got = Vec::new();
    let end = Instant::now() + limit;
    while got.len() < want && Instant::now() < end {
        let mut any = false;
        for q in 0..nq {
            let k = p.rx_burst(q, &mut burst);
            any |= k > 0;
            for m in burst[..k].iter_mut().filter_map(Option::take) {
                if is_test_frame(m.data()) {
                    got.push(m.data().to_vec());
                }
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

pub fn close(p: Box<dyn EthDev>) {
    p.close(Release::Shared);
}

/// A secondary process; killed by pid and reaped on drop.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Peer {
    pub fn spawn(prefix: &str, port: u16, devargs: &str, nq: u16) -> Result<Peer, String> {
        let mut child = Command::new(PEER)
            .arg(format!("--file-prefix={prefix}"))
            .arg("--proc-type=secondary")
            .args(["--", &port.to_string(), devargs, &nq.to_string()])
            .env("XDG_RUNTIME_DIR", xdg())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Peer { child, stdin, lines };
        let l = p.line();
        if !l.starts_with("ready") {
            return Err(format!("peer did not start: {l}"));
        }
        Ok(p)
    }

    pub fn line(&mut self) -> String {
        self.lines.recv_timeout(Duration::from_secs(90)).unwrap_or_else(|_| "<no answer>".into())
    }

    pub fn send(&mut self, cmd: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{cmd}");
            let _ = s.flush();
        }
    }

    pub fn cmd(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.line()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the peer to quit and waits for it (then Drop has nothing left to do).
    pub fn quit(mut self) {
        self.send("quit");
        self.stdin.take();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Parses `key=value` words of a peer answer.
pub fn field(answer: &str, key: &str) -> u64 {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {answer:?}"))
}

pub fn fd_count() -> usize {
    lab_core::sys::open_fd_count()
}

/// A raw AF_PACKET socket bound to one interface, for the kernel side of tests.
pub struct RawSock(OwnedFd);

impl RawSock {
    pub fn bind(iface: &str) -> RawSock {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto as i32) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let idx = lab_core_ifindex(iface);
        // SAFETY: sockaddr_ll is plain data.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = idx as i32;
        // SAFETY: sa is a valid sockaddr_ll for the call.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        // SAFETY: setsockopt reads one timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let big: libc::c_int = 8 << 20;
        // SAFETY: setsockopt reads one c_int (SO_RCVBUFFORCE: root may pass the rmem_max limit).
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        RawSock(fd)
    }

    pub fn send(&self, d: &[u8]) {
        // SAFETY: writes d.len() bytes from d.
        let r = unsafe { libc::send(self.0.as_raw_fd(), d.as_ptr().cast(), d.len(), 0) };
        assert_eq!(r as usize, d.len(), "send: {}", std::io::Error::last_os_error());
    }

    /// Test frames received within `limit` (until `want`), outgoing copies excluded.
    pub fn recv(&self, want: usize, limit: Duration) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let end = Instant::now() + limit;
        while got.len() < want && Instant::now() < end {
            // SAFETY: sockaddr_ll is plain data.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffer and address are ours and sized as passed.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sa as *mut libc::sockaddr_ll).cast(),
                    &mut sl,
                )
            };
            if n > 0 && sa.sll_pkttype != libc::PACKET_OUTGOING && is_test_frame(&buf[..n as usize]) {
                got.push(buf[..n as usize].to_vec());
            }
        }
        got
    }
}

fn lab_core_ifindex(iface: &str) -> u32 {
    let c = std::ffi::CString::new(iface).unwrap();
    // SAFETY: c is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {iface}");
    i
}
