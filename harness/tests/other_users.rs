//! Another user of the machine can neither connect to a lab's sockets (IPC, telemetry, lab-nic's
//! vfio-user and worker sockets, its control socket) nor read its shared memory.
//!
//! The probe runs in a forked child that drops to uid/gid 65534 (it needs root to do so), and the
//! same probe without dropping is the control: as the lab's own user every socket connects and the
//! memory file opens, so a refusal as the other user is the lab's permissions at work, not a
//! probe that cannot connect at all. The test's own temp dirs are opened up (0755) first, so
//! that only the modes the lab itself chose protect it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lab_harness::Lab;
use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

const OTHER: u32 = 65534;

/// What to try on one path.
enum Target {
    Socket(UnixAddr),
    File(std::ffi::CString),
}

/// 1: connected / opened; 0: refused with EACCES; 2: failed otherwise.
fn try_one(t: &Target) -> u8 {
    match t {
        Target::Socket(addr) => {
            let mut all_eacces = true;
            for ty in [SockType::Stream, SockType::SeqPacket, SockType::Datagram] {
                let Ok(fd) = socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None) else { return 2 };
                match connect(fd.as_raw_fd(), addr) {
                    Ok(()) => return 1,
                    Err(Errno::EACCES) => {}
                    Err(_) => all_eacces = false,
                }
            }
            if all_eacces {
                0
            } else {
                2
            }
        }
        Target::File(path) => {
            match nix::fcntl::open(path.as_c_str(), nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()) {
                Ok(fd) => {
                    let _ = nix::unistd::close(fd);
                    1
                }
                Err(Errno::EACCES) => 0,
                Err(_) => 2,
            }
        }
    }
}

/// Runs the probe in a forked child, as `uid` (both ids) when given; one result per target.
fn probe(targets: &[Target], uid: Option<u32>) -> Vec<u8> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only makes async-signal-safe calls (setgroups, setgid, setuid, socket,
    // connect, open, close, write, _exit) on data prepared before the fork, and never returns.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            drop(r);
            if let Some(id) = uid {
                let dropped = nix::unistd::setgroups(&[]).is_ok()
                    && nix::unistd::setgid(nix::unistd::Gid::from_raw(id)).is_ok()
                    && nix::unistd::setuid(nix::unistd::Uid::from_raw(id)).is_ok();
                if !dropped {
                    // SAFETY: _exit ends the child at once, without running the parent's handlers.
                    unsafe { libc::_exit(3) };
                }
            }
            for t in targets {
                let _ = nix::unistd::write(&w, &[try_one(t)]);
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut out = Vec::new();
            let mut f = std::fs::File::from(r);
            std::io::Read::read_to_end(&mut f, &mut out).expect("read the probe's results");
            let st = nix::sys::wait::waitpid(child, None).expect("waitpid");
            assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0), "the probe child failed");
            out
        }
    }
}

fn sockets_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            sockets_under(&e.path(), out);
        } else if ft.is_socket() {
            out.push(e.path());
        }
    }
}

#[test]
fn another_user_can_neither_connect_to_the_labs_sockets_nor_read_its_memory() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (to drop to uid {OTHER} in the probe)");
        return;
    }
    let lab =
        Lab::builder().nic("0000:00:05.0", "ixgbe", "loopback").vdev("net_null0").secondaries(1).start().expect("lab");
    let xdg = lab.xdg_runtime_dir().to_path_buf();
    let tmp = xdg.parent().expect("the lab's temp dir").to_path_buf();
    for d in [&tmp, &xdg, &tmp.join("sysfs")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("open up the test's own dir");
    }
    let mut paths = Vec::new();
    sockets_under(&lab.runtime_dir(), &mut paths);
    let (ipc_and_telemetry, mut nic) = (paths.len(), Vec::new());
    sockets_under(&tmp.join("sysfs"), &mut nic);
    assert!(ipc_and_telemetry >= 4, "two processes' IPC and telemetry sockets, found {paths:?}");
    assert!(
        nic.iter().any(|p| p.ends_with("vfio-user.sock")) && nic.iter().any(|p| p.ends_with("worker.sock")),
        "lab-nic's vfio-user and worker sockets, found {nic:?}"
    );
    paths.extend(nic);
    paths.push(tmp.join("nic.sock"));
    let mem = lab.telemetry("primary", "/lab/process").expect("/lab/process")["mem_file"]
        .as_str()
        .map(PathBuf::from)
        .expect("mem_file");
    let mut targets: Vec<Target> =
        paths.iter().map(|p| Target::Socket(UnixAddr::new(p).expect("a socket path that fits"))).collect();
    targets.push(Target::File(std::ffi::CString::new(mem.as_os_str().as_encoded_bytes()).unwrap()));
    paths.push(mem);

    let own = probe(&targets, None);
    let other = probe(&targets, Some(OTHER));
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(own[i], 1, "{}: the lab's own user cannot reach it (the probe is broken)", p.display());
        assert_eq!(
            other[i],
            0,
            "{}: uid {OTHER} {} (expected a refusal with EACCES)",
            p.display(),
            if other[i] == 1 { "got in" } else { "failed otherwise" }
        );
    }
    // No process of the lab listens on an abstract socket: those have no permissions at all, and
    // /proc/net/unix shows their names to every user (lab-nic's worker socket was one).
    let mut inodes = std::collections::HashSet::new();
    for pid in ["primary", "s1"].iter().filter_map(|p| lab.pid(p)).chain(lab.nic_pid()) {
        for e in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
            let l = std::fs::read_link(e.path()).unwrap_or_default();
            if let Some(i) = l.to_str().and_then(|s| s.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
            {
                inodes.insert(i);
            }
        }
    }
    assert!(!inodes.is_empty(), "the lab's processes hold sockets");
    for line in std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix").lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(inode), Some(name)) = (f.get(6).and_then(|i| i.parse::<u64>().ok()), f.get(7)) else { continue };
        assert!(
            !(inodes.contains(&inode) && name.starts_with('@')),
            "a lab process has the abstract socket {name}: any user can connect to it"
        );
    }
    // The other user cannot list the runtime dir either (it names the sockets).
    assert!(lab.runtime_dir().metadata().unwrap().permissions().mode() & 0o077 == 0);
}
