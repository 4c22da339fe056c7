//! The one place lab-drivers talks to the kernel for its virtual devices: interface ioctls
//! ([`netif`]), TAP queues ([`tun`]), AF_PACKET sockets and PACKET_MMAP rings ([`packet`]), and
//! descriptors handed from the primary to secondaries over the IPC channel ([`share`]).
//!
//! Every `unsafe` block here has a `// SAFETY:` comment; the driver files that use these wrappers
//! forbid `unsafe` themselves. What stays `unsafe` outside this module is memory, not the kernel:
//! descriptor rings and shared structs of the PCI drivers (`pci/`, `*/rxtx.rs`, the `DevShared`
//! views), the PACKET_MMAP frame views of `af_packet`, and the ring zone header of `ring`.

pub mod netif;
pub mod packet;
pub mod share;
pub mod tun;
