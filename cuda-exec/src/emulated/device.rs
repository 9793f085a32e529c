//! The emulated device's immutable facts: a Hopper-like shape, so that programs sizing launches from attributes
//! behave sensibly on the emulated backend.

use vgpu_dataplane::handshake::DeviceFacts;

use super::EMULATED_TOTAL_MEM;

/// Most devices an emulated server may present (`VGPU_EMULATED_DEVICES`).
const MAX_EMULATED_DEVICES: usize = 8;

/// How many identical devices the emulated server presents: `VGPU_EMULATED_DEVICES` (1 to 8; default 1), for
/// tests of several GPUs in one server (peer access between them).
pub(super) fn count_from_env() -> usize {
    let Ok(text) = std::env::var("VGPU_EMULATED_DEVICES") else {
        return 1;
    };
    match text.trim().parse::<usize>() {
        Ok(n @ 1..=MAX_EMULATED_DEVICES) => n,
        _ => {
            tracing::warn!("VGPU_EMULATED_DEVICES={text}: expected 1 to {MAX_EMULATED_DEVICES}; presenting one device");
            1
        }
    }
}

/// Emulated device `index`: its UUID ends in the index's digit (device 0's is the single device's).
pub(super) fn numbered(index: usize) -> DeviceFacts {
    let mut d = emulated_device();
    d.uuid[15] = b'0' + index as u8;
    d
}

pub(super) fn emulated_device() -> DeviceFacts {
    let mut d = DeviceFacts::default();
    d.set_name("vGPU Emulated Device");
    d.uuid = *b"vgpu-emulated-00";
    d.total_mem = EMULATED_TOTAL_MEM;
    // A Hopper-like shape, so that programs sizing launches from attributes behave sensibly.
    let attrs: &[(usize, i32)] = &[
        (1, 1024),
        (2, 1024),
        (3, 1024),
        (4, 64),
        (5, 2147483647),
        (6, 65535),
        (7, 65535),
        (8, 49152),
        (9, 65536),
        (10, 32),
        (11, 2147483647),
        (12, 65536),
        (13, 1980000),
        (14, 512),
        (15, 1),
        (16, 132),
        (17, 0),
        (18, 0),
        (19, 1),
        (20, 0),
        (30, 512),
        (31, 1),
        (32, 0),
        (33, 0),
        (34, 0),
        (35, 0),
        (36, 2619000),
        (37, 5120),
        (38, 52428800),
        (39, 2048),
        (40, 3),
        (41, 1),
        (50, 0),
        (75, 9),
        (76, 0),
        (78, 1),
        (79, 1),
        (80, 1),
        (81, 233472),
        (82, 65536),
        (83, 1),
        (84, 0),
        (85, 0),
        (86, 0),
        (87, 1),
        (88, 1),
        (89, 0),
        (90, 0),
        (91, 0),
        (95, 1),
        (96, 1),
        (97, 232448),
        (98, 1),
        (99, 1),
        (100, 1),
        (101, 1),
        (102, 1),
        // Allocations may be exported to a POSIX file descriptor (shared with another process of the tenant). No
        // fabric handles (128 stays 0).
        (103, 1),
        (104, 0),
        (105, 0),
        (106, 32),
        (107, 1),
        // H100's persisting-L2 maximum and access policy window limit.
        (108, 32768000),
        (109, 134217728),
        (111, 1024),
        (112, 1),
        (113, 0),
        (114, 0),
        (115, 1),
        (116, 0),
        (117, 0),
        (118, 0),
        (119, 0),
        (120, 1),
        (121, 0),
        (122, 1),
        (123, 1),
        (124, 0),
        // IPC events (cuIpcGetEventHandle), as on the H100.
        (125, 1),
        (126, 0),
    ];
    for &(a, v) in attrs {
        d.set_attr(a, v);
    }
    // Texture and surface limits of a Hopper GPU: the runtime reads all of them for cudaDeviceProp.
    let textures: &[(usize, i32)] = &[
        (21, 131072),
        (22, 131072),
        (23, 65536),
        (24, 16384),
        (25, 16384),
        (26, 16384),
        (27, 32768),
        (28, 32768),
        (29, 2048),
        (42, 32768),
        (43, 2048),
        (45, 32768),
        (46, 32768),
        (47, 8192),
        (48, 8192),
        (49, 32768),
        (51, 32),
        (52, 32768),
        (53, 32768),
        (54, 2046),
        (55, 32768),
        (56, 131072),
        (57, 65536),
        (58, 16384),
        (59, 16384),
        (60, 16384),
        (61, 32768),
        (62, 2048),
        (63, 32768),
        (64, 32768),
        (65, 2048),
        (66, 32768),
        (67, 32768),
        (68, 2046),
        (69, 268435456),
        (70, 131072),
        (71, 65000),
        (72, 2097120),
        (73, 32768),
        (74, 32768),
        (77, 32768),
        (93, 1),
        (127, 1),
        (130, 0),
        (131, -1),
        (134, -1),
    ];
    for &(a, v) in textures {
        d.set_attr(a, v);
    }
    // Every other attribute CUDA 13.0 defines is a capability this device lacks: 0, but answered, as the
    // real driver answers every one of them.
    for a in 1..=147 {
        if d.attr(a).is_none() {
            d.set_attr(a, 0);
        }
    }
    d
}

/// What `nvmlSystemGetDriverVersion` answers: the display driver release CUDA 13.0 shipped with (580.65.06), in
/// NVML's `X.Y.Z` form, which programs parse (XLA does). A fixed value of the emulated device, like its shape.
pub(super) const EMULATED_DISPLAY_DRIVER: &str = "580.65.06";

/// The emulated device's PCIe link: Gen 5 x16 now and at most, as an H100's.
pub(super) const EMULATED_PCIE: crate::nvml::PcieLink = crate::nvml::PcieLink {
    curr_gen: Some(5),
    curr_width: Some(16),
    max_gen: Some(5),
    max_width: Some(16),
};

/// One NVML field of the emulated device: the link counts a PCIe board without NVLink or C2C has (0), and
/// `NVML_ERROR_NOT_SUPPORTED` for every other field (it has no sensors or counters).
pub(super) fn field_value(f: &vgpu_dataplane::wire::NvmlFieldRequest) -> vgpu_dataplane::wire::NvmlFieldValue {
    use vgpu_cuda_sys::nvml::{
        nvmlReturn_t, nvmlValueType_t, NVML_FI_DEV_C2C_LINK_COUNT, NVML_FI_DEV_NVLINK_LINK_COUNT,
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let known = matches!(f.field_id, NVML_FI_DEV_NVLINK_LINK_COUNT | NVML_FI_DEV_C2C_LINK_COUNT);
    vgpu_dataplane::wire::NvmlFieldValue {
        field_id: f.field_id,
        scope_id: f.scope_id,
        timestamp_us: now_us,
        latency_us: 0,
        value_type: nvmlValueType_t::NVML_VALUE_TYPE_UNSIGNED_INT.0,
        nvml_return: if known {
            nvmlReturn_t::NVML_SUCCESS.0
        } else {
            nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED.0
        },
        value: 0,
    }
}
