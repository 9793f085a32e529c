//! Handlers: CUDA arrays (create, destroy, copies to and from host rows, device memory and other arrays) and the
//! texture and surface objects made from them or from device memory.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};
use crate::backend::*;

impl Channel {
    fn array(&self, id: ArrayId) -> CuResult<(Array, ArrayShape)> {
        self.s()
            .objects()
            .arrays
            .get(&id)
            .copied()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// `ArrayCopy`: checks the box against the array and the device side against the session's ranges; an
    /// array-to-host copy's rows come back in `out`.
    fn array_copy(&mut self, c: ArrayCopy, out: &mut Vec<u8>) -> CuResult<()> {
        let (real, shape) = self.array(c.array)?;
        let elem = shape.element_bytes().ok_or(CUDA_ERROR_NOT_SUPPORTED)?;
        let (rows, slices) = (shape.height.max(1), shape.depth.max(1));
        let inside = |start: u64, len: u64, limit: u64| start.checked_add(len).is_some_and(|end| end <= limit);
        if !inside(c.x_bytes, c.width_bytes, shape.width.saturating_mul(elem))
            || !inside(c.y, c.height, rows)
            || !inside(c.z, c.depth, slices)
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let packed = c
            .width_bytes
            .checked_mul(c.height)
            .and_then(|v| v.checked_mul(c.depth))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let region = ArrayBox {
            x_bytes: c.x_bytes,
            y: c.y,
            z: c.z,
            width_bytes: c.width_bytes,
            height: c.height,
            depth: c.depth,
        };
        let device_side = |s: &Self| -> CuResult<()> {
            if !s.tail.is_empty() || (c.height > 1 && c.device_pitch < c.width_bytes) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let slice = c.device_pitch.saturating_mul(c.device_height.max(c.height));
            let span = slice
                .saturating_mul(c.depth.saturating_sub(1))
                .saturating_add(c.device_pitch.saturating_mul(c.height.saturating_sub(1)))
                .saturating_add(c.width_bytes);
            s.check_range(c.device, span)
        };
        match c.direction {
            0 if self.tail.len() as u64 == packed => {
                let session = self.session.clone();
                session
                    .backend
                    .array_copy(real, region, ArrayTransfer::FromHost(&self.tail))
            }
            1 if self.tail.is_empty() && packed <= MAX_ARRAY_COPY as u64 => {
                out.resize(packed as usize, 0);
                self.b().array_copy(real, region, ArrayTransfer::ToHost(out))
            }
            2 => {
                device_side(self)?;
                let other = ArrayTransfer::FromDevice {
                    ptr: c.device,
                    pitch: c.device_pitch,
                    rows_per_slice: c.device_height,
                };
                self.b().array_copy(real, region, other)
            }
            3 => {
                device_side(self)?;
                let other = ArrayTransfer::ToDevice {
                    ptr: c.device,
                    pitch: c.device_pitch,
                    rows_per_slice: c.device_height,
                };
                self.b().array_copy(real, region, other)
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    /// `TexObjectCreate`: the resource's array (a client id) or memory (a session range) is checked first.
    fn tex_object_create(&self, c: TexObjectCreate) -> CuResult<u64> {
        self.s().check_cap(|o| o.tex_objects.len(), |c| c.tex_objects)?;
        let surface = c.surface != 0;
        let with_view = c.has_view != 0 && !surface;
        let want = RESOURCE_DESC_LEN
            + if surface { 0 } else { TEXTURE_DESC_LEN }
            + if with_view { RESOURCE_VIEW_DESC_LEN } else { 0 };
        let tail = &self.tail;
        if tail.len() != want {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut resource = tail[..RESOURCE_DESC_LEN].to_vec();
        let word = |b: &[u8], at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        match u32::from_le_bytes([resource[0], resource[1], resource[2], resource[3]]) {
            // CU_RESOURCE_TYPE_ARRAY: the array handle is the client's id.
            0 => {
                let (real, _) = self.array(ArrayId(word(&resource, 8)))?;
                resource[8..16].copy_from_slice(&real.0.to_le_bytes());
            }
            // CU_RESOURCE_TYPE_LINEAR and _PITCH2D: device memory of the session.
            2 | 3 if !surface => self.check_range(DevicePtr(word(&resource, 8)), 1)?,
            _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
        }
        let texture = if surface {
            &[][..]
        } else {
            &tail[RESOURCE_DESC_LEN..RESOURCE_DESC_LEN + TEXTURE_DESC_LEN]
        };
        let view = with_view.then(|| &tail[RESOURCE_DESC_LEN + TEXTURE_DESC_LEN..]);
        let object = self.b().tex_object_create(surface, &resource, texture, view)?;
        self.s().objects().tex_objects.insert(object, surface);
        Ok(object)
    }
}

/// The bytes an array of this shape holds (`None`: a format vGPU does not handle, or an overflowing size).
fn array_bytes(shape: &ArrayShape) -> Option<u64> {
    shape
        .element_bytes()?
        .checked_mul(shape.width)?
        .checked_mul(shape.height.max(1))?
        .checked_mul(shape.depth.max(1))
}

impl Serve<ArrayCreate> for Channel {
    fn serve(&mut self, c: ArrayCreate, _cx: &mut Cx<'_>) -> Served<Empty> {
        let shape = ArrayShape {
            width: c.width,
            height: c.height,
            depth: c.depth,
            format: c.format,
            channels: c.channels,
            flags: c.flags,
        };
        // An array is device memory: its bytes count against the memory limit while it lives.
        let bytes = array_bytes(&shape).ok_or(CUDA_ERROR_INVALID_VALUE);
        let r = bytes.and_then(|bytes| {
            self.s().check_cap(|o| o.arrays.len(), |c| c.arrays)?;
            self.s().reserve(bytes)?;
            let real = self
                .b()
                .array_create(shape)
                .inspect_err(|_| self.s().unreserve(bytes))?;
            self.s().objects().arrays.insert(c.array, (real, shape));
            Ok(Empty {})
        });
        Ok(r)
    }
}

impl Serve<ArrayDestroy> for Channel {
    fn serve(&mut self, c: ArrayDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        let real = self.s().objects().arrays.remove(&c.array);
        Ok(match real {
            Some((r, shape)) => {
                self.s().unreserve(array_bytes(&shape).unwrap_or(0));
                self.b().array_destroy(r).map(|_| Empty {})
            }
            None => Err(CUDA_ERROR_INVALID_HANDLE),
        })
    }
}

impl Serve<ArrayCopy> for Channel {
    fn serve(&mut self, c: ArrayCopy, cx: &mut Cx<'_>) -> Served<Empty> {
        let mut out = Vec::new();
        let r = self.array_copy(c, &mut out);
        if r.is_ok() && c.direction == 1 {
            cx.reply_tail = out;
        }
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<MemcpyAtoA> for Channel {
    fn serve(&mut self, c: MemcpyAtoA, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = (|| {
            let (dst, _) = self.array(c.dst)?;
            let (src, _) = self.array(c.src)?;
            self.b().memcpy_atoa(dst, c.dst_offset, src, c.src_offset, c.size)
        })();
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<TexObjectCreate> for Channel {
    fn serve(&mut self, c: TexObjectCreate, _cx: &mut Cx<'_>) -> Served<ObjectReply> {
        Ok(self.tex_object_create(c).map(|object| ObjectReply { object }))
    }
}

impl Serve<ObjectDestroy> for Channel {
    fn serve(&mut self, c: ObjectDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        let known = self.s().objects().tex_objects.remove(&c.object);
        Ok(match known {
            Some(surface) if surface == (c.surface != 0) => {
                self.b().object_destroy(c.object, surface).map(|_| Empty {})
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        })
    }
}
