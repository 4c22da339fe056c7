//! The virtual device bus.
