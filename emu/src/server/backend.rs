//! The per-connection [`ServerBackend`] `vfio_user::Server::run` calls: region accesses go to the
//! device model under the device lock, DMA maps to the connection's slice of the DMA table,
//! interrupt fds to the device state. The relay has checked every request against the spec
//! before it gets here (ranges, flags, fds), so what is left to fail is rare; a bad access inside
//! a region (a register the model does not have) reads all-ones and is recorded as a fault.

use super::*;

/// Per-connection backend handed to `Server::run`.
pub(super) struct ConnBackend {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: ConnId,
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.to_owned())
}

impl ServerBackend for ConnBackend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.shared.kick();
        let mut d = self.shared.dev();
        match region {
            0..=5 => d.model.bar_read(region, offset, data),
            VFIO_PCI_CONFIG_REGION_INDEX => d.model.config_read(offset, data),
            _ => {
                data.fill(0xff);
                d.model.faults_mut().record(offset, data.len() as u64, "read of an empty region");
            }
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.shared.kick();
        let mut d = self.shared.dev();
        match region {
            0..=5 => d.model.bar_write(region, offset, data),
            VFIO_PCI_CONFIG_REGION_INDEX => d.model.config_write(offset, data),
            // The relay's introduction, its first message (no client can reach region 8: the
            // relay refuses every access to an empty region).
            8 if offset == super::relay::INTRO_OFFSET && data.len() == 8 => {
                self.conn = u64::from_le_bytes(data.try_into().expect("8 bytes"));
            }
            _ => d.model.faults_mut().record(offset, data.len() as u64, "write to an empty region"),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let mut d = self.shared.dev();
        match d.dma.map(self.conn, address, size, fd, offset) {
            Ok(()) => {
                tracing::debug!(bdf = %self.shared.bdf, iova = format_args!("{address:#x}"), size, "DMA_MAP");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(bdf = %self.shared.bdf, "DMA_MAP rejected: {e}");
                d.model.faults_mut().record(address, size, "DMA_MAP rejected");
                Err(invalid(&e.to_string()))
            }
        }
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        let mut d = self.shared.dev();
        // The crate passes the flag bits as sent; the relay let through only VFIO_DMA_UNMAP_FLAG_ALL
        // (bit 1, linux/vfio.h), which the crate's own constants put elsewhere.
        if flags.bits() & (1 << 1) != 0 {
            let n = d.dma.drop_conn(self.conn);
            tracing::debug!(bdf = %self.shared.bdf, maps = n, "DMA_UNMAP all");
            return Ok(());
        }
        d.dma.unmap(self.conn, address, size).map_err(|e| {
            tracing::warn!(bdf = %self.shared.bdf, "DMA_UNMAP rejected: {e}");
            d.model.faults_mut().record(address, size, "DMA_UNMAP of no map");
            std::io::Error::from_raw_os_error(libc::ENOENT)
        })
    }

    fn reset(&mut self) -> std::io::Result<()> {
        let mut d = self.shared.dev();
        d.model.reset();
        d.mig = Default::default(); // a reset device runs (and leaves ERROR)
        drop(d);
        Ok(())
    }

    fn set_irqs(&mut self, index: u32, flags: u32, start: u32, count: u32, fds: Vec<File>) -> std::io::Result<()> {
        if index == VFIO_PCI_INTX_IRQ_INDEX {
            return self.set_intx(flags, count, fds);
        }
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Ok(()); // MSI/ERR/REQ have no vectors here (the relay refused any range).
        }
        let mut d = self.shared.dev();
        let n = d.model.msix_count();
        let conn = self.conn;
        let end = start
            .checked_add(count)
            .filter(|e| *e <= n)
            .ok_or_else(|| invalid("vector range beyond the MSI-X table"))?;
        let table = d.irqs.entry(conn).or_insert_with(|| {
            let mut v = Vec::new();
            v.resize_with(n as usize, || None);
            v
        });
        match flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE if count == 0 && flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0 => {
                table.iter_mut().for_each(|f| *f = None)
            }
            VFIO_IRQ_SET_DATA_EVENTFD if flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0 => {
                if fds.is_empty() {
                    (start..end).for_each(|v| table[v as usize] = None);
                } else if fds.len() == count as usize {
                    for (v, f) in (start..end).zip(fds) {
                        table[v as usize] = Some(f);
                    }
                } else {
                    return Err(invalid("eventfd count does not match the vector count"));
                }
            }
            // A trigger by message: the vectors' eventfds are signalled (as vfio-pci does).
            VFIO_IRQ_SET_DATA_NONE if flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0 => {
                let bits = (start..end).fold(0u64, |b, v| b | (1u64 << (v & 63)));
                d.raise(bits);
            }
            VFIO_IRQ_SET_DATA_BOOL => return Err(invalid("DATA_BOOL not supported")),
            _ => return Err(invalid("unsupported SET_IRQS flags")),
        }
        Ok(())
    }
}

impl ConnBackend {
    /// SET_IRQS on the INTx index (one vector; the relay checked the range and the fds):
    /// TRIGGER with an eventfd sets it (none: released), with no data and count 0 tears INTx
    /// down, with count 1 signals it; MASK and UNMASK (no data) mask and unmask it, and an
    /// unmask while the function still asserts INTx signals again at the device thread's next poll.
    fn set_intx(&mut self, flags: u32, count: u32, fds: Vec<File>) -> std::io::Result<()> {
        let mut d = self.shared.dev();
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        match (data, flags & !VFIO_IRQ_SET_DATA_TYPE_MASK) {
            (VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                let x = d.intx.entry(self.conn).or_default();
                x.fd = fds.into_iter().next();
                x.masked = false;
            }
            (VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_ACTION_TRIGGER) if count == 0 => {
                d.intx.remove(&self.conn);
            }
            (VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                if let Some(mut f) = d.intx.get(&self.conn).and_then(|x| x.fd.as_ref()) {
                    let _ = f.write(&1u64.to_ne_bytes());
                }
            }
            (VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_ACTION_MASK) if count == 1 => {
                d.intx.entry(self.conn).or_default().masked = true;
            }
            (VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_ACTION_UNMASK) if count == 1 => {
                d.intx.entry(self.conn).or_default().masked = false;
                drop(d);
                self.shared.kick();
            }
            _ => return Err(invalid("unsupported SET_IRQS flags for INTx")),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// The relay: message framing between a client and a worker.
