//! What the PCI poll-mode drivers (`net_ixgbe`, `net_i40e`) share, written once:
//!
//! * [`queue`]: the queue memzone and its bookkeeping (header, descriptor ring, software ring,
//!   doorbell, software counters);
//! * [`port`]: the port skeleton ([`port::PciPort`]: transport, BAR 0, DMA map of the shared
//!   memory, the device-state zone, the queues, the buffer pool handle, the zones to free) with
//!   its release tail, its `Drop` and the burst wrappers; and the PCI chores around it (command
//!   register, queue-count checks);
//! * [`rss_table`]: the RSS redirection table both keep the same way.
//!
//! Each driver keeps what differs: register offsets, descriptor formats, device initialisation
//! and reset, the receive burst and the transmit clean-up rule, the hardware counters.

pub(crate) mod port;
pub(crate) mod queue;
pub(crate) mod rss_table;
pub(crate) mod transport;

pub(crate) use self::port::{check_queue_counts, fmt_mac, DevState, PciPort, PortQueue};
pub(crate) use self::port::{pci_ethdev_common, pci_port_drop, pci_rss_and_queues, port_queues};
