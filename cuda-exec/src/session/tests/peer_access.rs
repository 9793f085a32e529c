//! Peer access between two devices of one server over the wire: the questions, enabling and disabling, with the
//! driver's error codes for the cases it refuses.

use std::sync::Arc;

use vgpu_cuda_sys::driver::CUdevice_P2PAttribute;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::ContextId;
use vgpu_dataplane::wire::*;

use super::Client;
use crate::emulated::EmulatedBackend;
use crate::session::{Limits, Session};

#[test]
fn two_devices_of_one_server_answer_and_enable_peer_access_as_the_driver_does() {
    let backend = Arc::new(EmulatedBackend::with_devices(2));
    let session = Session::new(backend, Limits::default());
    let mut c = Client::connect_bare(&session);
    let (a, b) = (ContextId(0x51), ContextId(0x52));
    c.ok(&PrimaryCtxRetain {
        ctx: a,
        dev: 0,
        _pad: 0,
    });
    c.ok(&PrimaryCtxRetain {
        ctx: b,
        dev: 1,
        _pad: 0,
    });
    let can = |c: &mut Client, dev, peer| c.call(&DeviceCanAccessPeer { dev, peer }, &[]).map(|r| r.value);
    assert_eq!(can(&mut c, 0, 1), Ok(1));
    assert_eq!(can(&mut c, 1, 0), Ok(1));
    assert_eq!(can(&mut c, 0, 0), Ok(0), "a device is not its own peer");
    assert_eq!(can(&mut c, 0, 2), Err(CUDA_ERROR_INVALID_DEVICE));
    let attr = |c: &mut Client, a: CUdevice_P2PAttribute, src, dst| {
        c.call(
            &DeviceP2PAttribute {
                attr: a.0,
                src,
                dst,
                _pad: 0,
            },
            &[],
        )
        .map(|r| r.value)
    };
    let access = CUdevice_P2PAttribute::CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED;
    assert_eq!(attr(&mut c, access, 0, 1), Ok(1));
    assert_eq!(attr(&mut c, access, 1, 1), Err(CUDA_ERROR_INVALID_DEVICE));
    assert_eq!(
        attr(&mut c, CUdevice_P2PAttribute(99), 0, 1),
        Err(CUDA_ERROR_INVALID_VALUE)
    );

    // No current context yet.
    let enable = |c: &mut Client, peer, flags| c.call(&CtxEnablePeerAccess { peer, flags, _pad: 0 }, &[]);
    assert_eq!(enable(&mut c, b, 0).err(), Some(CUDA_ERROR_INVALID_CONTEXT));
    c.post(&CtxSetCurrent { ctx: a });
    assert_eq!(enable(&mut c, b, 1).err(), Some(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(
        enable(&mut c, a, 0).err(),
        Some(CUDA_ERROR_INVALID_CONTEXT),
        "its own context"
    );
    assert_eq!(
        enable(&mut c, ContextId(0x99), 0).err(),
        Some(CUDA_ERROR_INVALID_CONTEXT),
        "an unknown one"
    );
    assert!(enable(&mut c, b, 0).is_ok());
    assert_eq!(enable(&mut c, b, 0).err(), Some(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED));
    let disable = |c: &mut Client, peer| c.call(&CtxDisablePeerAccess { peer }, &[]);
    assert!(disable(&mut c, b).is_ok());
    assert_eq!(disable(&mut c, b).err(), Some(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED));
    // Enabled one way only: from b's side it was never enabled.
    assert!(enable(&mut c, b, 0).is_ok());
    c.post(&CtxSetCurrent { ctx: b });
    assert_eq!(disable(&mut c, a).err(), Some(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED));
    assert!(enable(&mut c, a, 0).is_ok());
}

/// NVML's peer status between two devices of one server over the wire: the emulator's answers (PCIe with atomics,
/// no NVLink), a device with itself, and the refusals of a device or an index that is not there.
#[test]
fn nvml_peer_status_answers_for_two_devices_of_one_server_and_refuses_what_is_not_there() {
    let backend = Arc::new(EmulatedBackend::with_devices(2));
    let session = Session::new(backend, Limits::default());
    let mut c = Client::connect_bare(&session);
    let status = |c: &mut Client, dev_a, dev_b, index| {
        c.call(
            &NvmlP2PStatus {
                dev_a,
                dev_b,
                index,
                _pad: 0,
            },
            &[],
        )
        .map(|r| r.value)
    };
    // READ, WRITE, NVLINK, ATOMICS, PCI: OK but NVLink (NVML_P2P_STATUS_NOT_SUPPORTED, 5).
    for (index, want) in [(0, 0), (1, 0), (2, 5), (3, 0), (4, 0)] {
        assert_eq!(status(&mut c, 0, 1, index), Ok(want), "index {index}");
        assert_eq!(status(&mut c, 1, 0, index), Ok(want), "index {index}");
    }
    assert_eq!(status(&mut c, 1, 1, 2), Ok(0), "a device reaches itself");
    assert_eq!(
        status(&mut c, 0, 2, 0),
        Err(CUDA_ERROR_INVALID_DEVICE),
        "no third device"
    );
    assert_eq!(
        status(&mut c, 0, 1, 9),
        Err(CUDA_ERROR_INVALID_VALUE),
        "no such capability"
    );
    // NVML questions leave the channel serving.
    assert_eq!(status(&mut c, 0, 1, 0), Ok(0));
    c.close();
}
