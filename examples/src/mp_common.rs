//! What the multi-process samples share: the EAL/app argument split with DPDK's exit codes, the
//! stop flag SIGINT and SIGTERM raise (with the signal's number), and logging to stderr.
//! Included by each sample binary (`#[path]`), which uses what it needs.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use lab_core::options::{Options, OptionsError};

/// A bad application argument, named with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// A flag without its value.
    #[error("{0} needs a value")]
    NoValue(String),
    /// A value out of range or unparsable.
    #[error("{flag} {value}: {expected}")]
    Bad {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What it must be.
        expected: String,
    },
    /// A required argument missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// An argument the application does not take.
    #[error("unknown argument {0:?}")]
    Unknown(String),
    /// Arguments that do not go together.
    #[error("{0}")]
    Conflict(String),
}

impl ArgError {
    /// [`ArgError::Bad`].
    pub fn bad(flag: &'static str, value: &str, expected: impl Into<String>) -> ArgError {
        ArgError::Bad { flag, value: value.into(), expected: expected.into() }
    }
}

/// Parses the command line: EAL options, and the application's after `--` checked by `app`.
/// Prints `usage` for `--help`; exits 2 on bad arguments, naming what was wrong.
pub fn parse_or_exit<A>(name: &str, usage: &str, app: impl FnOnce(&[String]) -> Result<A, ArgError>) -> (Options, A) {
    let (opts, rest) = match Options::parse(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(OptionsError::HelpRequested) => {
            println!("{usage}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(2);
        }
    };
    match app(&rest) {
        Ok(a) => {
            let filter = tracing_subscriber::EnvFilter::try_new(opts.log_level.as_deref().unwrap_or("warn"))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
            (opts, a)
        }
        Err(e) => {
            eprintln!("{name}: {e}\n{usage}");
            std::process::exit(2);
        }
    }
}

/// Raised by SIGINT or SIGTERM (blocked in every thread started after this call), with the
/// signal's number.
pub struct Stop {
    flag: Arc<AtomicBool>,
    signum: Arc<AtomicI32>,
}

impl Stop {
    /// Blocks the two signals and waits for them in a thread of its own.
    pub fn on_signals() -> Stop {
        let (flag, signum) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI32::new(0)));
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGTERM);
        set.add(nix::sys::signal::Signal::SIGINT);
        if set.thread_block().is_ok() {
            let (f, s) = (flag.clone(), signum.clone());
            std::thread::spawn(move || {
                if let Ok(sig) = set.wait() {
                    s.store(sig as i32, Ordering::Relaxed);
                    f.store(true, Ordering::Relaxed);
                }
            });
        }
        Stop { flag, signum }
    }

    /// Whether a signal came.
    pub fn raised(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The signal that came (0 if none).
    pub fn signum(&self) -> i32 {
        self.signum.load(Ordering::Relaxed)
    }
}

/// A hexadecimal, non-zero port mask (`-p 3`, `-p 0x3`).
pub fn portmask(v: &str) -> Result<u64, ArgError> {
    u64::from_str_radix(v.trim_start_matches("0x"), 16)
        .ok()
        .filter(|m| *m != 0)
        .ok_or_else(|| ArgError::bad("-p", v, "invalid portmask (a non-zero hexadecimal number)"))
}

/// The ring client `n` of `mp_server` receives from (DPDK's `MProc_Client_%u_RX`).
pub fn client_ring(n: u16) -> String {
    format!("MProc_Client_{n}_RX")
}
