//! The drivers' own error type. Every failure inside a driver is a [`DriverError`]: what we were
//! doing (`what`: "BAR0", "zone i40e_0_rxq1", "aq get_link_status") and, where something below
//! us failed, that error as the `source`, so the chain survives up to the user
//! ("net_i40e: 0000:00:05.0: aq get_link_status: admin command 0x0607 got no completion within
//! 500ms") and code can match on it (downcast the [`lab_core::ethdev::Cause`] of an
//! [`EthError`] to `DriverError`).
//!
//! `Ctx::ctx` attaches the `what` to any lower error; [`DriverError::config`] and
//! [`DriverError::state`] are the two kinds that start here (a value out of range; a device, zone
//! or peer in a state we cannot use).

use std::io;

use lab_core::ethdev::EthError;
use lab_core::ipc::IpcError;
use lab_core::mbuf::MbufError;
use lab_core::mem::MemError;
use lab_core::ring::RingError;
use lab_core::vfio::VfioError;

use crate::i40e::adminq::AqError;

/// A driver's error, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A device access failed: transport, BAR, DMA map, config space, a register poll.
    #[error("{what}: {source}")]
    Vfio {
        /// What we were doing.
        what: String,
        /// The transport's error.
        #[source]
        source: VfioError,
    },
    /// An i40e admin queue command failed.
    #[error("{what}: {source}")]
    AdminQueue {
        /// What we were doing (the command's name).
        what: String,
        /// The admin queue's error.
        #[source]
        source: AqError,
    },
    /// Shared memory: a zone could not be reserved or found.
    #[error("{what}: {source}")]
    Mem {
        /// The zone, or what it is for.
        what: String,
        /// The shared-memory error.
        #[source]
        source: MemError,
    },
    /// The buffer pool.
    #[error("{what}: {source}")]
    Pool {
        /// What we were doing.
        what: String,
        /// The pool's error.
        #[source]
        source: MbufError,
    },
    /// A shared ring.
    #[error("{what}: {source}")]
    Ring {
        /// The ring.
        what: String,
        /// The ring's error.
        #[source]
        source: RingError,
    },
    /// A vhost-user request to the back end failed (or the connection did).
    #[error("{what}: {source}")]
    VhostUser {
        /// The request ("SET_MEM_TABLE").
        what: String,
        /// The vhost crate's error.
        #[source]
        source: vhost::Error,
    },
    /// A kernel call: socket, ioctl, open, mmap.
    #[error("{what}: {source}")]
    Os {
        /// The call and its object ("TUNSETIFF tap0").
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// IPC with the other processes (fd sharing).
    #[error("{what}: {source}")]
    Ipc {
        /// What we asked.
        what: String,
        /// The channel's error.
        #[source]
        source: IpcError,
    },
    /// A driver error with what the caller was doing around it.
    #[error("{what}: {source}")]
    Context {
        /// What the caller was doing.
        what: String,
        /// The inner error.
        #[source]
        source: Box<DriverError>,
    },
    /// A value out of range: names the key or setting, the value and the limit.
    #[error("{0}")]
    Config(String),
    /// A device, zone or peer in a state we cannot use (wrong magic, fewer queues than asked).
    #[error("{0}")]
    State(String),
}

impl DriverError {
    /// A value out of range.
    pub fn config(what: impl Into<String>) -> DriverError {
        DriverError::Config(what.into())
    }

    /// A state we cannot use.
    pub fn state(what: impl Into<String>) -> DriverError {
        DriverError::State(what.into())
    }

    /// This error as a port's device error.
    pub(crate) fn device(self, driver: &'static str) -> EthError {
        EthError::Device { driver, source: Box::new(self) }
    }
}

/// Attaches what we were doing to a lower error.
pub(crate) trait Ctx<T> {
    /// `what`: the operation and its object.
    fn ctx(self, what: impl Into<String>) -> Result<T, DriverError>;
}

macro_rules! ctx_for {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl<T> Ctx<T> for Result<T, $ty> {
            fn ctx(self, what: impl Into<String>) -> Result<T, DriverError> {
                self.map_err(|source| DriverError::$variant { what: what.into(), source })
            }
        }
    )*};
}

impl<T> Ctx<T> for Result<T, DriverError> {
    fn ctx(self, what: impl Into<String>) -> Result<T, DriverError> {
        self.map_err(|e| DriverError::Context { what: what.into(), source: Box::new(e) })
    }
}

ctx_for! {
    VfioError => Vfio,
    AqError => AdminQueue,
    MemError => Mem,
    MbufError => Pool,
    RingError => Ring,
    io::Error => Os,
    IpcError => Ipc,
    vhost::Error => VhostUser,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn the_chain_survives_the_ethdev_boundary_and_can_be_matched() {
        let low = io::Error::from_raw_os_error(libc::ENODEV);
        let e: Result<(), _> = Err(low);
        let d = e.ctx("SIOCGIFINDEX tap9").unwrap_err();
        let eth = d.device("net_tap");
        let text = eth.to_string();
        assert!(text.starts_with("net_tap: device error: SIOCGIFINDEX tap9: "), "{text}");
        let cause = eth.source().expect("a cause");
        let d = cause.downcast_ref::<DriverError>().expect("a DriverError");
        assert!(matches!(d, DriverError::Os { source, .. } if source.raw_os_error() == Some(libc::ENODEV)));
        assert!(d.source().is_some(), "the kernel's error is the DriverError's source");
    }
}
