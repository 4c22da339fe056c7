//! lab-vfio: device transports.
