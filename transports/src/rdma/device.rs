//! GPUDirect RDMA: a server's device allocations (`pinned::DEVICE`), exported by its backend and registered with the
//! NIC, so a channel's host-device bytes skip the server's host memory: read straight into the GPU, offered from it.
//!
//! Only bytes the receiver *reads* can land in device memory: offered parts and pulled ring stretches (sends of at
//! least `pull_min`). Smaller sends arrive written into this side's ring and go to the caller's `inline` writer.
//! Device memory is offered only in parts larger than the ring (and of at least `OFFER_MIN`), as host memory is; a
//! smaller part goes through host staging as before.

use vgpu_dataplane::pinned;

use super::flow::{Target, OFFER_MIN};
use super::*;
use crate::rdma_stats::{add, COUNTERS};
use crate::sys::verbs::{DeviceRegistration, LocalMemory};

impl RdmaTransport {
    /// Whether this channel may move device memory directly: the process lists and exports it, and reads are on.
    pub(super) fn device_capable(&self) -> bool {
        self.pull_min > 0 && pinned::device_exporter().is_some()
    }

    /// The registration covering `len` bytes of listed device memory at `addr`, registering its range on first
    /// use: (local key, remote key, the address work requests name for `addr`, bytes from there to its end).
    fn device_registration(&mut self, addr: u64, len: usize) -> Option<(u32, u32, usize, usize)> {
        if !self.device_capable() {
            return None;
        }
        let exporter = pinned::device_exporter()?;
        let pd = self.pd.clone();
        let access = AccessFlags::LocalWrite | AccessFlags::RemoteRead;
        let addr = usize::try_from(addr).ok()?;
        let reg = self.dev_regs.get(addr, len, |base, size| {
            let export = exporter(base, size).map_err(io::Error::other)?;
            DeviceRegistration::new(&pd, export, base, size, access)
        })?;
        let into = addr.checked_sub(reg.device_addr())?;
        let local = reg.base().checked_add(into)?;
        let left = reg.size().checked_sub(into)?;
        Some((reg.lkey(), reg.rkey(), local, left))
    }

    /// Offers `len` bytes of device memory at `addr` for the peer to read; false when it cannot be (too small, not
    /// listed, not registrable), nothing sent then. As host memory, only a part larger than the ring is offered: it
    /// waits for the reader, which a part that fits the ring never does.
    pub(super) fn offer_device(&mut self, addr: u64, len: usize) -> Result<bool, TransportError> {
        if len < OFFER_MIN || len <= self.cap {
            return Ok(false);
        }
        let Some((_, rkey, local, left)) = self.device_registration(addr, len) else {
            return Ok(false);
        };
        if left < len {
            return Ok(false);
        }
        self.offer(local as u64, len, rkey, true)?;
        self.moved.device_offered += len as u64;
        add(&COUNTERS.device_offered, len as u64);
        Ok(true)
    }

    /// Receives the next `len` stream bytes into device memory at `addr`: read parts by RDMA READ into the
    /// registered device memory, written parts through `inline`. False when `addr` cannot be reached directly.
    pub(super) fn read_into_device(
        &mut self,
        addr: u64,
        len: usize,
        inline: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<bool, TransportError> {
        let Some((lkey, _, local, left)) = self.device_registration(addr, len) else {
            return Ok(false);
        };
        if left < len {
            return Ok(false);
        }
        let target = Target {
            lkey,
            base: local,
            size: len,
        };
        let mut written = Vec::new();
        self.receive(len, |t, step, off| {
            let (remote, rkey, n) = match step {
                Step::Skip(_) => return Ok(()),
                Step::Copy { pos, len } => {
                    written.resize(len, 0);
                    t.rx.map().read(pos, &mut written);
                    inline(off, &written);
                    t.moved.ring_copied_out += len as u64;
                    add(&COUNTERS.ring_copied_out, len as u64);
                    return Ok(());
                }
                Step::ReadRing { pos, len } => (t.peer_tx + pos as u64, t.peer_tx_rkey, len),
                Step::ReadOffer { addr, rkey, len, .. } => (addr, rkey, len),
            };
            t.read_pieces(remote, rkey, &target, off, n)?;
            t.moved.device_read_in_place += n as u64;
            add(&COUNTERS.device_read_in_place, n as u64);
            Ok(())
        })?;
        Ok(true)
    }
}
