//! Peer access between the emulated server's devices, by the driver's rules: two distinct devices of one server
//! reach each other; enabling twice, disabling what was never enabled, or naming the current context fails.

use vgpu_cuda_sys::driver::CUdevice_P2PAttribute;
use vgpu_dataplane::cuerr::*;

use super::EmulatedBackend;
use crate::backend::Context;

impl EmulatedBackend {
    pub(super) fn can_access_peer(&self, dev: i32, peer: i32) -> CuResult<i32> {
        self.check_device(dev)?;
        self.check_device(peer)?;
        Ok(i32::from(dev != peer))
    }

    /// NVML's peer status, as the CUDA answers here: every two devices of this server have peer access over PCIe,
    /// with atomics; there is no NVLink. NVML_ERROR_INVALID_ARGUMENT (2) for a device or index not there.
    pub(super) fn nvml_p2p_status(&self, a: i32, b: i32, index: u32) -> Result<u32, u32> {
        const NVLINK: u32 = 2;
        const STATUS_OK: u32 = 0;
        const STATUS_NOT_SUPPORTED: u32 = 5;
        if self.check_device(a).is_err() || self.check_device(b).is_err() || index > 4 {
            return Err(2);
        }
        Ok(if a != b && index == NVLINK {
            STATUS_NOT_SUPPORTED
        } else {
            STATUS_OK
        })
    }

    pub(super) fn p2p_attribute(&self, attr: u32, src: i32, dst: i32) -> CuResult<i32> {
        self.check_device(src)?;
        self.check_device(dst)?;
        if src == dst {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        match CUdevice_P2PAttribute(attr) {
            CUdevice_P2PAttribute::CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK => Ok(0),
            CUdevice_P2PAttribute::CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED
            | CUdevice_P2PAttribute::CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED
            | CUdevice_P2PAttribute::CU_DEVICE_P2P_ATTRIBUTE_CUDA_ARRAY_ACCESS_SUPPORTED => Ok(1),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    /// The current context and `peer`, both live and distinct, with their devices.
    fn peer_pair(&self, peer: Context) -> CuResult<((u64, i32), (u64, i32))> {
        let me = self.current();
        let st = self.state();
        let (Some(&mine), Some(&theirs)) = (st.contexts.get(&me), st.contexts.get(&peer.0)) else {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        };
        if me == peer.0 {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        Ok(((me, mine), (peer.0, theirs)))
    }

    pub(super) fn enable_peer_access(&self, peer: Context, flags: u32) -> CuResult<()> {
        let ((me, mine), (_, theirs)) = self.peer_pair(peer)?;
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if self.can_access_peer(mine, theirs)? == 0 {
            return Err(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED);
        }
        if !self.state().peer_access.insert((me, peer.0)) {
            return Err(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED);
        }
        Ok(())
    }

    pub(super) fn disable_peer_access(&self, peer: Context) -> CuResult<()> {
        let ((me, _), _) = self.peer_pair(peer)?;
        if !self.state().peer_access.remove(&(me, peer.0)) {
            return Err(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED);
        }
        Ok(())
    }
}
