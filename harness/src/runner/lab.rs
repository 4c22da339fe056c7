//! A lab being run: its processes (lab-nic, the primary, the secondaries), start-up in order,
//! one step at a time, and teardown of everything it made however the run ends.

use super::*;

/// One of your binaries (`cmd = [...]`): no prompt, observed through its telemetry socket.
pub(super) struct UserProc {
    pub(super) child: Child,
    pub(super) stderr: Arc<std::sync::Mutex<String>>,
    pub(super) sock: PathBuf,
}

impl UserProc {
    pub(super) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stderr_now(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGTERM, then SIGKILL after `grace` (zero: SIGKILL at once); reaped. The exit status if it
    /// exited on its own within `grace`.
    pub(super) fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        crate::proc::terminate(&mut self.child, grace)
    }

    /// The ports it holds, from its `/lab/ports`.
    fn view(&self) -> Result<View, String> {
        let mut c = Client::connect(&self.sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let rows = c.query(&self.sock, "/lab/ports").map_err(|e| e.to_string())?;
        Ok(crate::lab::held_ports(&rows).into_iter().map(|(p, n)| (p.0, n)).collect())
    }
}

pub(super) struct ProcSlot {
    pub(super) args: Vec<String>,
    pub(super) app: Option<AppProc>,
    /// Set instead of `app` for one of your binaries.
    pub(super) user: Option<UserProc>,
    pub(super) pid: u32,
    /// May die: killed by a step, or has a crash fault.
    pub(super) may_die: bool,
    /// A background command whose answer is not collected yet.
    pub(super) pending: Option<Step>,
}

pub(super) struct NicProc {
    pub(super) child: Child,
    pub(super) control: PathBuf,
}

/// A lab being run.
pub(super) struct Lab<'e> {
    pub(super) env: &'e Env,
    pub(super) sc: Scenario,
    pub(super) tmp: tempfile::TempDir,
    pub(super) prefix: String,
    pub(super) xdg: PathBuf,
    pub(super) sysfs: PathBuf,
    pub(super) nic: Option<NicProc>,
    pub(super) procs: BTreeMap<String, ProcSlot>,
    pub(super) interfaces: Vec<String>,
    pub(super) answer_timeout: Duration,
    pub(super) fault: Option<FaultCase>,
}

pub(super) fn fail(step: usize, s: Option<&Step>, process: &str, message: impl Into<String>) -> Box<Failure> {
    Box::new(Failure {
        step,
        step_text: s.map(|s| s.to_string()).unwrap_or_default(),
        line: s.map(|s| s.line).unwrap_or(0),
        process: process.to_string(),
        message: strip_ansi(&message.into()),
        views: Vec::new(),
    })
}

impl<'e> Lab<'e> {
    pub(super) fn new(env: &'e Env, mut sc: Scenario, fault: Option<FaultCase>) -> Result<Lab<'e>, RunnerError> {
        let tmp = tempfile::Builder::new().prefix("lab-run-").tempdir().map_err(RunnerError::TempDir)?;
        let run = run_id();
        let bdf_map: Vec<(String, String)> = match &env.real {
            Some(real) => sc.lab.nics.iter().zip(real.iter()).map(|(n, r)| (n.bdf.clone(), r.clone())).collect(),
            None => Vec::new(),
        };
        sc.substitute(&run, tmp.path(), &bdf_map);
        let xdg = tmp.path().join("xdg");
        let sysfs = tmp.path().join("sysfs");
        std::fs::create_dir_all(&xdg).map_err(RunnerError::TempDir)?;
        std::fs::create_dir_all(&sysfs).map_err(RunnerError::TempDir)?;
        let interfaces = sc.interfaces();
        let answer_timeout = Duration::from_millis(sc.lab.answer_timeout_ms);
        Ok(Lab {
            env,
            prefix: format!("lab{}-{run}", std::process::id()),
            sc,
            tmp,
            xdg,
            sysfs,
            nic: None,
            procs: BTreeMap::new(),
            interfaces,
            answer_timeout,
            fault,
        })
    }

    pub(super) fn runtime_dir(&self) -> PathBuf {
        self.xdg.join("hotplug-lab").join(&self.prefix)
    }

    /// The arguments of a process (EAL options, its faults).
    pub(super) fn args_of(&self, name: &str) -> Vec<String> {
        let mut a = vec![
            format!("--proc-type={}", if name == "primary" { "primary" } else { "secondary" }),
            format!("--file-prefix={}", self.prefix),
        ];
        let sweep = self.fault.is_some();
        let keep = |o: &&String| !(sweep && (o.starts_with("--hotplug-timeout-ms") || o.starts_with("--lab-fault")));
        a.extend(self.sc.lab.eal.iter().filter(keep).cloned());
        if let Some(p) = self.sc.lab.process.get(name) {
            a.extend(p.eal.iter().filter(keep).cloned());
        }
        if sweep {
            a.push(format!("--hotplug-timeout-ms={SWEEP_HOTPLUG_TIMEOUT_MS}"));
        }
        if let Some(f) = self.fault.as_ref().filter(|f| f.process == name) {
            // Attach faults go on the devices the steps attach (not on the primary's start-up
            // vdevs); detach faults on every device, since steps may detach by port id.
            let devices = if f.op == "attach" { self.sc.attached_devices() } else { self.sc.devices() };
            for d in devices {
                a.push(format!("--lab-fault={}:{d}:{}", f.op, f.mode));
            }
        }
        if name == "primary" {
            a.extend(self.sc.lab.vdevs.iter().map(|v| format!("--vdev={v}")));
        }
        a
    }

    pub(super) fn spawn_proc(&mut self, name: &str, args: Vec<String>) -> Result<(), Box<Failure>> {
        if self.sc.lab.is_app(name) {
            return self.spawn_user(name, args);
        }
        let bin = self.env.hotplug_mp().map_err(|e| fail(0, None, name, e.to_string()))?;
        let mut c = Command::new(bin);
        c.args(&args)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("SYSFS_PCI_DEVICES", &self.sysfs)
            .env(RUN_ENV, &self.prefix)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .process_group(0);
        let mut app = AppProc::spawn(c).map_err(|e| fail(0, None, name, format!("cannot start {name}: {e}")))?;
        app.timeout = self.answer_timeout;
        let may_die = args.iter().any(|a| a.starts_with("--lab-fault") && a.ends_with(":crash"));
        tracing::debug!(process = name, pid = app.pid(), ?args, "started");
        self.procs.insert(
            name.to_string(),
            ProcSlot { pid: app.pid(), args, app: Some(app), user: None, may_die, pending: None },
        );
        Ok(())
    }

    /// Starts one of your binaries: `cmd[0]` with the lab's EAL options, `--`, then `cmd[1..]`;
    /// up when its telemetry socket answers with its pid.
    fn spawn_user(&mut self, name: &str, args: Vec<String>) -> Result<(), Box<Failure>> {
        let cmd = self.sc.lab.process.get(name).map(|p| p.cmd.clone()).unwrap_or_default();
        let bin_dir = self.env.bin_dir.display().to_string();
        let expand = |s: &str| s.replace("${bin}", &bin_dir);
        let mut bin = PathBuf::from(expand(&cmd[0]));
        if bin.is_relative() && cmd[0].contains('/') {
            if let Some(dir) = self.sc.file.parent() {
                bin = dir.join(bin);
            }
        }
        let mut c = Command::new(&bin);
        c.args(&args)
            .arg("--")
            .args(cmd[1..].iter().map(|a| expand(a)))
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("SYSFS_PCI_DEVICES", &self.sysfs)
            .env(RUN_ENV, &self.prefix)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child =
            c.spawn().map_err(|e| fail(0, None, name, format!("cannot start {name} ({}): {e}", bin.display())))?;
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let keep = stderr.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = keep.lock().unwrap_or_else(|e| e.into_inner());
                    if s.len() < 16 * 1024 {
                        s.push_str(&l);
                        s.push('\n');
                    }
                }
            });
        }
        let pid = child.id();
        let sock = match crate::lab::telemetry_socket(&self.runtime_dir(), pid, crate::lab::START_TIMEOUT) {
            Ok(s) => s,
            Err(why) => {
                let u = UserProc { child, stderr, sock: PathBuf::new() };
                let err = u.stderr_now();
                u.stop(Duration::ZERO);
                return Err(fail(0, None, name, format!("{name} (pid {pid}) {why}: {}", last_lines(&err))));
            }
        };
        let may_die = args.iter().any(|a| a.starts_with("--lab-fault") && a.ends_with(":crash"));
        tracing::debug!(process = name, pid, ?args, "started (your binary)");
        let user = UserProc { child, stderr, sock };
        self.procs
            .insert(name.to_string(), ProcSlot { pid, args, app: None, user: Some(user), may_die, pending: None });
        Ok(())
    }

    pub(super) fn start_nic(&mut self) -> Result<(), Box<Failure>> {
        if self.sc.lab.nics.is_empty() {
            return Ok(());
        }
        if let Some(real) = &self.env.real {
            // Real functions: a sysfs view with the given functions only, populated now that the
            // primary runs (as the emulator does), so they are attached by the steps.
            for r in real.iter().take(self.sc.lab.nics.len()) {
                let target = Path::new("/sys/bus/pci/devices").join(r);
                std::os::unix::fs::symlink(&target, self.sysfs.join(r))
                    .map_err(|e| fail(0, None, "lab", format!("cannot link {}: {e}", target.display())))?;
            }
            return Ok(());
        }
        let bin = self.env.lab_nic().map_err(|e| fail(0, None, "lab-nic", e.to_string()))?;
        let control = self.tmp.path().join("nic.sock");
        let mut c = Command::new(bin);
        c.arg("--sysfs-root").arg(&self.sysfs).arg("--control").arg(&control).arg("--log-level").arg("warn");
        // A killed `lab` must not leave the emulator (and its sockets, TAP devices) behind.
        c.arg(format!("--exit-with-parent={}", std::process::id()));
        if let Some(t) = &self.sc.lab.device_threads {
            c.arg(format!("--device-threads={t}"));
        }
        for n in &self.sc.lab.nics {
            let mut d = format!("{},model={}", n.bdf, n.model);
            if let Some(w) = &n.wire {
                d.push_str(&format!(",wire={w}"));
            }
            if let Some(m) = &n.mac {
                d.push_str(&format!(",mac={m}"));
            }
            c.arg("--dev").arg(d);
        }
        c.env(RUN_ENV, &self.prefix)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = c.spawn().map_err(|e| fail(0, None, "lab-nic", format!("cannot start lab-nic: {e}")))?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        if let Some(out) = out {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        let errs = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = err {
            let errs = errs.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut e = errs.lock().unwrap_or_else(|e| e.into_inner());
                    if e.len() < 16 * 1024 {
                        e.push_str(&l);
                        e.push('\n');
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        let nic = NicProc { child, control };
        self.nic = Some(nic);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.trim() == "lab-nic ready" => break,
                Ok(_) => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    let e = errs.lock().unwrap_or_else(|e| e.into_inner()).trim().to_string();
                    return Err(fail(0, None, "lab-nic", format!("lab-nic did not become ready: {e}")));
                }
            }
        }
        // Keep draining its stdout.
        std::thread::spawn(move || for _ in rx {});
        Ok(())
    }

    pub(super) fn start(&mut self) -> Result<(), Box<Failure>> {
        let names = process_names(&self.sc.lab);
        let args = self.args_of("primary");
        self.spawn_proc("primary", args)?;
        self.start_nic()?;
        for n in names.iter().skip(1) {
            if self.sc.lab.process.get(n).is_some_and(|p| p.late) {
                continue;
            }
            let args = self.args_of(n);
            self.spawn_proc(n, args)?;
        }
        Ok(())
    }

    /// The telemetry socket of a process (yours: found at start; hotplug_mp's: by its pid).
    fn telemetry_of(&self, name: &str) -> Result<PathBuf, String> {
        let slot = self.procs.get(name).ok_or_else(|| format!("{name} is not running"))?;
        if let Some(u) = &slot.user {
            return Ok(u.sock.clone());
        }
        crate::lab::telemetry_socket(&self.runtime_dir(), slot.pid, Duration::from_secs(5))
            .map_err(|why| format!("{name} (pid {}): {why}", slot.pid))
    }

    pub(super) fn nic_control(&self, line: &str) -> Result<String, String> {
        let nic = self.nic.as_ref().ok_or("this lab has no emulated NIC (no lab-nic control socket)")?;
        let mut s = UnixStream::connect(&nic.control).map_err(|e| format!("control socket: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        writeln!(s, "{line}").map_err(|e| format!("control socket: {e}"))?;
        let mut r = String::new();
        BufReader::new(s).read_line(&mut r).map_err(|e| format!("control socket: {e}"))?;
        let r = r.trim().to_string();
        if r.starts_with("ok") {
            Ok(r)
        } else {
            Err(r)
        }
    }

    pub(super) fn live_names(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|(n, s)| {
                let up = s.app.as_mut().is_some_and(|a| a.is_running()) || s.user.as_mut().is_some_and(|u| u.running());
                up.then(|| n.clone())
            })
            .collect()
    }

    /// Every process's `list` (or why there is none). Dead processes are reaped (their slot
    /// emptied) and reported in `died` unless they were allowed to die.
    pub(super) fn views(&mut self) -> (Vec<Listing>, Vec<String>) {
        let mut out = Vec::new();
        let mut died = Vec::new();
        for (name, slot) in self.procs.iter_mut() {
            if let Some(u) = slot.user.as_mut() {
                if u.running() {
                    out.push((name.clone(), u.view()));
                } else {
                    if !slot.may_die {
                        died.push(format!("{name} (pid {}) died: {}", slot.pid, last_lines(&u.stderr_now())));
                    }
                    if let Some(u) = slot.user.take() {
                        u.stop(Duration::ZERO);
                    }
                }
                continue;
            }
            let Some(app) = slot.app.as_mut() else { continue };
            if slot.pending.is_some() {
                continue;
            }
            match app.cmd("list") {
                Ok(a) if a.starts_with("list all etherdev") => out.push((name.clone(), Ok(parse_list(&a)))),
                Ok(a) => out.push((name.clone(), Err(format!("unexpected answer to list: {a}")))),
                Err(e) if matches!(e, ProcError::Exited { .. }) || !app.is_running() => {
                    if !slot.may_die {
                        died.push(format!("{name} (pid {}) died: {}", slot.pid, last_lines(&app.stderr_now())));
                    }
                    if let Some(a) = slot.app.take() {
                        a.kill();
                    }
                }
                Err(e) => out.push((name.clone(), Err(e.to_string()))),
            }
        }
        (out, died)
    }

    pub(super) fn snapshot(&mut self) -> Vec<(String, String)> {
        let (v, died) = self.views();
        let mut s: Vec<(String, String)> = v
            .into_iter()
            .map(|(n, r)| {
                (
                    n,
                    match r {
                        Ok(v) => fmt_view(&v),
                        Err(e) => e,
                    },
                )
            })
            .collect();
        for d in died {
            s.push(("dead".into(), d));
        }
        s
    }

    /// Polls until every live process lists the same ports (and `want`, if given), at most `within`.
    pub(super) fn settle(&mut self, want: Option<&View>, within: Duration) -> Result<View, String> {
        self.settle_stable(want, within, Duration::ZERO)
    }

    /// As `settle`, and the agreed view must stay the same for `stable` (an operation may still
    /// run in the primary when the process that asked for it died).
    pub(super) fn settle_stable(
        &mut self,
        want: Option<&View>,
        within: Duration,
        stable: Duration,
    ) -> Result<View, String> {
        let deadline = Instant::now() + within + stable;
        let mut since: Option<(View, Instant)> = None;
        loop {
            let (views, died) = self.views();
            if let Some(d) = died.first() {
                return Err(d.clone());
            }
            let problem = check_views(&views, want);
            match problem {
                Ok(v) => {
                    match &since {
                        Some((sv, t)) if *sv == v => {
                            if t.elapsed() >= stable {
                                return Ok(v);
                            }
                        }
                        _ => {
                            if stable.is_zero() {
                                return Ok(v);
                            }
                            since = Some((v, Instant::now()));
                        }
                    }
                    if Instant::now() >= deadline {
                        return Err("the processes' view kept changing".into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if Instant::now() >= deadline || self.env.stopping() => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub(super) fn proc_cmd(&mut self, name: &str, line: &str) -> Result<String, String> {
        let slot = self.procs.get_mut(name).ok_or_else(|| format!("{name} is not running"))?;
        let app = slot.app.as_mut().ok_or_else(|| format!("{name} is not running"))?;
        match app.cmd(line) {
            Ok(a) => Ok(a),
            Err(e) => {
                if matches!(e, ProcError::Exited { .. }) || !app.is_running() {
                    if let Some(a) = slot.app.take() {
                        a.kill();
                    }
                }
                Err(format!("{name} (pid {}): {e}", slot.pid))
            }
        }
    }

    /// Runs one step's action; returns the answer text, or an error when it could not be run or
    /// got no answer.
    pub(super) fn act(&mut self, s: &Step) -> Result<String, String> {
        match &s.action {
            Action::LinkDown(b) => self.nic_control(&format!("link down {b}")),
            Action::LinkUp(b) => self.nic_control(&format!("link up {b}")),
            Action::Unplug(b) => self.nic_control(&format!("unplug {b}")),
            Action::Wait(ms) => {
                let end = Instant::now() + Duration::from_millis(*ms);
                while Instant::now() < end && !self.env.stopping() {
                    std::thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
                }
                Ok(format!("waited {ms} ms"))
            }
            Action::ExpectStats { port, rx_min, tx_min, within_ms } => {
                let sock = self.telemetry_of(&s.on)?;
                let deadline = Instant::now() + Duration::from_millis(*within_ms);
                let mut last = String::from("no answer");
                loop {
                    if let Ok(mut c) = Client::connect(&sock, Duration::from_secs(5)) {
                        if let Ok(v) = c.query(&sock, &format!("/ethdev/stats,{port}")) {
                            let (rx, tx) = (v["ipackets"].as_u64(), v["opackets"].as_u64());
                            match (rx, tx) {
                                (Some(rx), Some(tx)) if rx >= *rx_min && tx >= *tx_min => {
                                    return Ok(format!("port {port}: ipackets={rx} opackets={tx}"));
                                }
                                (Some(rx), Some(tx)) => last = format!("ipackets={rx} opackets={tx}"),
                                _ => last = format!("no port {port} (answer {v})"),
                            }
                        }
                    }
                    if Instant::now() >= deadline || self.env.stopping() {
                        return Err(format!(
                            "{} port {port}: {last} after {within_ms} ms, expected rx >= {rx_min}, tx >= {tx_min}",
                            s.on
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Action::ExpectEvent { port, event, within_ms } => {
                let slot = self.procs.get_mut(&s.on).ok_or_else(|| format!("{} is not running", s.on))?;
                let app = slot.app.as_ref().ok_or_else(|| format!("{} is not running", s.on))?;
                let line = format!("event: port {port} {event}");
                match app.wait_stderr(&line, Duration::from_millis(*within_ms)) {
                    Some(l) => Ok(l.trim().to_string()),
                    None => Err(format!("{}: no {line:?} within {within_ms} ms", s.on)),
                }
            }
            Action::Kill(p) => {
                let slot = self.procs.get_mut(p).ok_or_else(|| format!("{p} was never started"))?;
                if let Some(u) = slot.user.take() {
                    u.stop(Duration::ZERO);
                    return Ok(format!("killed {p} (pid {})", slot.pid));
                }
                match slot.app.take() {
                    Some(a) => {
                        a.kill();
                        Ok(format!("killed {p} (pid {})", slot.pid))
                    }
                    None => Err(format!("{p} is not running")),
                }
            }
            Action::Quit(p) => {
                let slot = self.procs.get_mut(p).ok_or_else(|| format!("{p} was never started"))?;
                if let Some(u) = slot.user.take() {
                    // Your binary's quit is SIGTERM.
                    return match u.stop(Duration::from_secs(10)) {
                        Some(st) if st.success() => Ok(format!("{p} quit")),
                        Some(st) => Err(format!("{p} exited with {st} on SIGTERM")),
                        None => Err(format!("{p} did not exit within 10 s of SIGTERM")),
                    };
                }
                match slot.app.take() {
                    Some(a) => match a.quit(Duration::from_secs(10)) {
                        Some(st) if st.success() => Ok(format!("{p} quit")),
                        Some(st) => Err(format!("{p} quit with {st}")),
                        None => Err(format!("{p} did not quit within 10 s")),
                    },
                    None => Err(format!("{p} is not running")),
                }
            }
            Action::Restart(p) | Action::Start(p) => {
                if p == "primary" {
                    return Err("the primary cannot be restarted: secondaries do not outlive its runtime".into());
                }
                if let Some(a) = self.procs.get_mut(p).and_then(|s| s.app.take()) {
                    a.kill();
                }
                if let Some(u) = self.procs.get_mut(p).and_then(|s| s.user.take()) {
                    u.stop(Duration::ZERO);
                }
                let args = match self.procs.get(p) {
                    Some(s) => s.args.clone(),
                    None => self.args_of(p),
                };
                self.spawn_proc(p, args).map_err(|f| f.message)?;
                Ok(format!("started {p} (pid {})", self.procs.get(p).map(|s| s.pid).unwrap_or(0)))
            }
            Action::Join(p) => {
                let wait = self.answer_timeout;
                let slot = self.procs.get_mut(p).ok_or_else(|| format!("{p} was never started"))?;
                let pending = slot.pending.take().ok_or_else(|| format!("{p} has no background command"))?;
                let app = slot.app.as_mut().ok_or_else(|| format!("{p} is not running"))?;
                let answer = app.answer_within(wait).map_err(|e| format!("{p} (pid {}): {e}", slot.pid))?;
                check_answer(&pending, &answer).map_err(|e| format!("background step {pending}: {e}"))?;
                Ok(answer)
            }
            a if s.background => {
                let line = a.command().unwrap_or_default();
                let slot = self.procs.get_mut(&s.on).ok_or_else(|| format!("{} is not running", s.on))?;
                let app = slot.app.as_mut().ok_or_else(|| format!("{} is not running", s.on))?;
                app.send_line(&line).map_err(|e| format!("{} (pid {}): {e}", s.on, slot.pid))?;
                slot.pending = Some(s.clone());
                Ok("running in the background".into())
            }
            a => {
                let line = a.command().unwrap_or_default();
                self.proc_cmd(&s.on, &line)
            }
        }
    }

    /// Restarts processes that died on an injected crash, without the fault.
    pub(super) fn restart_crashed(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let dead: Vec<String> = self
            .procs
            .iter_mut()
            .filter_map(|(n, s)| {
                let up = s.app.as_mut().is_some_and(|a| a.is_running()) || s.user.as_mut().is_some_and(|u| u.running());
                (*n != "primary" && s.may_die && !up).then(|| n.clone())
            })
            .collect();
        for n in dead {
            if let Some(slot) = self.procs.get_mut(&n) {
                if let Some(a) = slot.app.take() {
                    a.kill();
                }
                if let Some(u) = slot.user.take() {
                    u.stop(Duration::ZERO);
                }
                slot.args.retain(|a| !a.starts_with("--lab-fault"));
                let args = slot.args.clone();
                match self.spawn_proc(&n, args) {
                    Ok(()) => notes.push(format!("{n} crashed on its fault and was restarted without it")),
                    Err(f) => notes.push(format!("{n} crashed and could not be restarted: {}", f.message)),
                }
            }
        }
        notes
    }

    pub(super) fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // Secondaries first, then the primary.
        let mut names: Vec<String> = self.procs.keys().filter(|n| *n != "primary").cloned().collect();
        names.push("primary".into());
        for n in names {
            if let Some(u) = self.procs.get_mut(&n).and_then(|s| s.user.take()) {
                let pid = u.child.id();
                if u.stop(Duration::from_secs(5)).is_none() {
                    problems.push(format!("{n} (pid {pid}) did not exit within 5 s of SIGTERM: killed"));
                }
            }
            if let Some(app) = self.procs.get_mut(&n).and_then(|s| s.app.take()) {
                let pid = app.pid();
                // `quit` consumes the handle; AppProc's drop kills it if it did not exit.
                if app.quit(Duration::from_secs(5)).is_none() {
                    problems.push(format!("{n} (pid {pid}) did not quit within 5 s: killed"));
                }
            }
        }
        if let Some(mut nic) = self.nic.take() {
            if crate::proc::terminate(&mut nic.child, Duration::from_secs(5)).is_none() {
                problems.push("lab-nic did not stop on SIGTERM within 5 s: killed".into());
            }
        }
        // The memory file: /dev/shm, or hugetlbfs when one is mounted with free pages.
        for f in lab_core::mem::possible_files(&self.prefix) {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(self.runtime_dir());
        for i in &self.interfaces {
            if Path::new("/sys/class/net").join(i).exists() {
                let _ = Command::new("ip").args(["link", "delete", i]).stderr(Stdio::null()).status();
            }
        }
        problems
    }
}
