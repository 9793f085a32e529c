//! `vgpu server --device-identity N`: the server presents its devices as distinct virtual GPUs, each with its own
//! UUID and PCI identity, so that two servers sharing one physical GPU look like two GPUs to a client (a process
//! using both gets two devices on two servers). A test and partitioning feature: the GPU itself is shared.

use vgpu_cuda_sys::driver::CUdevice_attribute;
use vgpu_dataplane::handshake::DeviceFacts;

/// Identities run from 1 to this (0: the devices' own identity).
pub const MAX_IDENTITY: u8 = 7;

/// Parses a `--device-identity` value.
pub fn parse(text: &str) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(n) if (1..=MAX_IDENTITY).contains(&n) => Ok(n),
        _ => Err(format!(
            "--device-identity {text}: give a number from 1 to {MAX_IDENTITY}"
        )),
    }
}

/// Gives the devices identity `n`: byte 14 of each UUID is XORed with 0x76 ('v') and byte 15 with `n`, and `n` is
/// added to the PCI domain (so `cuDeviceGetPCIBusId` and NVML's bus id differ too). Identity 0 changes nothing.
pub fn apply(devices: &mut [DeviceFacts], n: u8) {
    if n == 0 {
        return;
    }
    let domain = CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID.0 as usize;
    for d in devices {
        d.uuid[14] ^= 0x76;
        d.uuid[15] ^= n;
        let old = d.attr(domain).unwrap_or(0);
        d.set_attr(domain, (old + i32::from(n)) & 0xffff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_from_each_other_and_from_the_device() {
        let mut base = DeviceFacts {
            uuid: *b"vgpu-emulated-00",
            ..Default::default()
        };
        let domain = CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID.0 as usize;
        base.set_attr(domain, 0);
        let with = |n| {
            let mut d = [base];
            apply(&mut d, n);
            d[0]
        };
        assert_eq!(with(0), base);
        let (one, two) = (with(1), with(2));
        assert_ne!(one.uuid, base.uuid);
        assert_ne!(one.uuid, two.uuid);
        assert_eq!(one.attr(domain), Some(1));
        assert_eq!(two.attr(domain), Some(2));
        assert_eq!(parse("2"), Ok(2));
        assert!(parse("0").is_err() && parse("8").is_err() && parse("x").is_err());
    }
}
