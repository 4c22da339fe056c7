//! lab-harness
