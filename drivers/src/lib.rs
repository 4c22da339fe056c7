//! lab-drivers
