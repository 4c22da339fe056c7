//! lab-benches
