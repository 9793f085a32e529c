//! Handlers: the NVML shim's questions (live device values, the driver's version), answered through the session's
//! limits. These come from the app's monitoring, not its CUDA work: an error latched by an earlier asynchronous
//! call stays for the app's next synchronizing CUDA call.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};

impl Channel {
    /// The backend's live reading, seen through the session's limits. With a memory limit the limit is the total
    /// and the session's own allocations are the memory used (another tenant's use of the same GPU is not this
    /// session's to see).
    fn nvml_status(&self, device: u32) -> CuResult<NvmlStatusReply> {
        let s = self.s();
        // NVML numbers the server's visible devices in their own order, whatever CUDA's numbering.
        let real = s.visible_device(device)?;
        let facts_total = usize::try_from(real)
            .ok()
            .and_then(|d| s.backend.devices().get(d))
            .map(|d| d.total_mem)
            .ok_or(CUDA_ERROR_INVALID_DEVICE)?;
        let reading = self.b().device_reading(real, std::process::id()).unwrap_or_default();
        let (allocated, active) = {
            let objs = s.objects();
            (objs.allocated_bytes, objs.context_devices.contains(&real))
        };
        let (total, free, used) =
            reading
                .memory
                .unwrap_or((facts_total, facts_total.saturating_sub(allocated), allocated));
        let (total, free, used) = match s.limits.memory_bytes {
            Some(limit) => {
                let total = total.min(limit);
                (total, total.saturating_sub(allocated).min(free), allocated)
            }
            None => (total, free, used),
        };
        let mut r = NvmlStatusReply {
            mem_total: total,
            mem_free: free,
            mem_used: used,
            process_used: reading.process_memory.unwrap_or(allocated),
            process_active: active as u32,
            ..Default::default()
        };
        if let Some((gpu, memory)) = reading.utilization {
            r.valid |= NVML_HAS_UTILIZATION;
            (r.util_gpu, r.util_memory) = (gpu, memory);
        }
        if let Some(t) = reading.temperature_c {
            r.valid |= NVML_HAS_TEMPERATURE;
            r.temperature_c = t;
        }
        if let Some(p) = reading.power_mw {
            r.valid |= NVML_HAS_POWER;
            r.power_mw = p;
        }
        if let Some((id, sub)) = reading.pci_ids {
            r.valid |= NVML_HAS_PCI_IDS;
            (r.pci_device_id, r.pci_subsystem_id) = (id, sub);
        }
        if let Some(m) = reading.minor_number {
            r.valid |= NVML_HAS_MINOR_NUMBER;
            r.minor_number = m;
        }
        if let Some(b) = reading.brand {
            r.valid |= NVML_HAS_BRAND;
            r.brand = b;
        }
        if let Some(a) = reading.architecture {
            r.valid |= NVML_HAS_ARCHITECTURE;
            r.architecture = a;
        }
        Ok(r)
    }
}

impl Serve<NvmlDeviceStatus> for Channel {
    fn serve(&mut self, c: NvmlDeviceStatus, cx: &mut Cx<'_>) -> Served<NvmlStatusReply> {
        cx.keep_latched = true;
        Ok(self.nvml_status(c.device))
    }
}

impl Serve<NvmlSystemInfo> for Channel {
    fn serve(&mut self, _c: NvmlSystemInfo, cx: &mut Cx<'_>) -> Served<Empty> {
        cx.keep_latched = true;
        let mut version = self.b().display_driver_version().into_bytes();
        // NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE is 80 with the NUL.
        version.truncate(79);
        cx.reply_tail = version;
        Ok(Ok(Empty {}))
    }
}

impl Channel {
    /// The server's ordinal of the client's device `device`, which must exist.
    fn known_device(&self, device: u32) -> CuResult<i32> {
        let real = self.s().real_device(device)?;
        let exists = usize::try_from(real).is_ok_and(|d| d < self.b().devices().len());
        if exists {
            Ok(real)
        } else {
            Err(CUDA_ERROR_INVALID_DEVICE)
        }
    }
}

impl Serve<NvmlDevicePcie> for Channel {
    fn serve(&mut self, c: NvmlDevicePcie, cx: &mut Cx<'_>) -> Served<NvmlPcieReply> {
        cx.keep_latched = true;
        let r = self.known_device(c.device).map(|real| {
            let link = self.b().device_pcie(real).unwrap_or_default();
            let mut r = NvmlPcieReply::default();
            for (value, bit, slot) in [
                (link.curr_gen, NVML_PCIE_CURR_GEN, &mut r.curr_gen),
                (link.curr_width, NVML_PCIE_CURR_WIDTH, &mut r.curr_width),
                (link.max_gen, NVML_PCIE_MAX_GEN, &mut r.max_gen),
                (link.max_width, NVML_PCIE_MAX_WIDTH, &mut r.max_width),
            ] {
                if let Some(v) = value {
                    *slot = v;
                    r.valid |= bit;
                }
            }
            r
        });
        Ok(r)
    }
}

impl Serve<NvmlP2PStatus> for Channel {
    fn serve(&mut self, c: NvmlP2PStatus, cx: &mut Cx<'_>) -> Served<PeerValueReply> {
        cx.keep_latched = true;
        let s = self.s();
        // NVML numbers the server's visible devices in their own order, whatever CUDA's numbering.
        let r = s.visible_device(c.dev_a).and_then(|a| {
            let b = s.visible_device(c.dev_b)?;
            match self.b().device_p2p_status(a, b, c.index) {
                Ok(status) => Ok(PeerValueReply {
                    value: i64::from(status),
                }),
                // NVML_ERROR_INVALID_ARGUMENT.
                Err(2) => Err(CUDA_ERROR_INVALID_VALUE),
                Err(_) => Err(CUDA_ERROR_NOT_SUPPORTED),
            }
        });
        Ok(r)
    }
}

impl Serve<NvmlFieldValues> for Channel {
    fn serve(&mut self, c: NvmlFieldValues, cx: &mut Cx<'_>) -> Served<Empty> {
        cx.keep_latched = true;
        let count = c.count as usize;
        let record = std::mem::size_of::<NvmlFieldRequest>();
        if count > MAX_NVML_FIELDS || self.tail.len() != count * record {
            return Err(super::ChannelEnd::Malformed(format!(
                "{count} NVML fields in {} bytes",
                self.tail.len()
            )));
        }
        let fields: Vec<NvmlFieldRequest> = self
            .tail
            .chunks_exact(record)
            .filter_map(|b| zerocopy::FromBytes::read_from_bytes(b).ok())
            .collect();
        let real = match self.known_device(c.device) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        // A failure of the whole call is every field's answer (the NVML shim reports it per field).
        let values = self.b().device_field_values(real, &fields).unwrap_or_else(|code| {
            fields
                .iter()
                .map(|f| NvmlFieldValue {
                    field_id: f.field_id,
                    scope_id: f.scope_id,
                    nvml_return: code,
                    ..Default::default()
                })
                .collect()
        });
        cx.reply_tail = values
            .iter()
            .take(count)
            .flat_map(|v| zerocopy::IntoBytes::as_bytes(v).to_vec())
            .collect();
        Ok(Ok(Empty {}))
    }
}
