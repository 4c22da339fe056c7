//! What the virtual-device tests share: a primary runtime in the test process, probing through
//! `ProbeCtx`, secondary peers (`lab-vdev-peer`) killed by pid on drop, unique interface names,
//! veth pairs removed on drop, and the CAP_NET_ADMIN check.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
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
        // LAB_LOG=debug (an env filter) shows the drivers' logs of a failing run.
        if let Ok(f) = std::env::var("LAB_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(f))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let prefix = format!("vd{}-{}-{}", std::process::id(), test, COUNTER.fetch_add(1, Ordering::Relaxed));
        let (opts, _) = Options::parse([format!("--file-prefix={prefix}"), "--proc-type=primary".into()]).unwrap();
        let rt = Runtime::init(&opts).expect("primary runtime");
        let pool = Mempool::create(rt.shm(), DEFAULT_POOL, 4096, 2048, 0).expect("pool");
        Lab { prefix, rt, pool, _serial: serial }
    }

    pub fn probe(&self, drv: &dyn Driver, devargs: &str, port: u16, nq: u16) -> Result<Box<dyn EthDev>, EthError> {
        self.probe_conf(drv, devargs, port, PortConf { nb_rxq: nq, nb_txq: nq, ..PortConf::default() })
    }

    /// `probe` with a port configuration of the test's own (another buffer pool, say).
    pub fn probe_conf(
        &self,
        drv: &dyn Driver,
        devargs: &str,
        port: u16,
        conf: PortConf,
    ) -> Result<Box<dyn EthDev>, EthError> {
        let da = Devargs::parse(devargs).map_err(|e| EthError::Invalid { what: e.to_string() })?;
        let kv = da.validate(drv.name(), drv.keys()).map_err(|e| EthError::Invalid { what: e.to_string() })?;
        let ctx = ProbeCtx {
            runtime: &self.rt,
            port: PortId(port),
            name: da.name(),
            devargs: &da,
            kvargs: &kv,
            pci: None,
            conf: &conf,
            ports: None,
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
    send_chunked(p, pool, frames, usize::MAX)
}

/// `send_all` with each frame over buffers of at most `seg` bytes: a chained packet.
pub fn send_chunked(p: &mut dyn EthDev, pool: &mut Mempool, frames: &[Vec<u8>], seg: usize) -> usize {
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(20);
    while sent < frames.len() && Instant::now() < end {
        let mut parts = frames[sent].chunks(seg);
        let mut m = pool.alloc().expect("buffer");
        assert!(m.copy_from(parts.next().unwrap_or(&[])));
        for part in parts {
            let mut s = pool.alloc().expect("buffer");
            assert!(s.copy_from(part));
            m.chain(s).expect("a chain of test segments");
        }
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
    recv_segmented(p, want, limit).into_iter().map(|(f, _)| f).collect()
}

/// `recv_frames`, each frame (every segment's bytes, in order) with its segment count.
pub fn recv_segmented(p: &mut dyn EthDev, want: usize, limit: Duration) -> Vec<(Vec<u8>, u16)> {
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
                    got.push((m.segments().flatten().copied().collect(), m.nb_segs()));
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

/// The testkit's raw socket, keeping only this suite's test frames.
pub struct RawSock(lab_testkit::RawSock);

impl RawSock {
    pub fn bind(iface: &str) -> RawSock {
        RawSock(lab_testkit::RawSock::bind(iface))
    }

    pub fn send(&self, d: &[u8]) {
        self.0.send(d)
    }

    /// Test frames received within `limit` (until `want`), outgoing copies excluded.
    pub fn recv(&self, want: usize, limit: Duration) -> Vec<Vec<u8>> {
        self.0.recv(want, limit, is_test_frame)
    }
}
