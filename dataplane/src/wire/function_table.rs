//! The function table that follows a module or library load reply: every kernel's name, parameter layout
//! (offset and size of each parameter in the packed argument buffer) and attributes.

use bytes::{BufMut, BytesMut};

use super::WireError;

/// Number of `CUfunction_attribute` values (0..=15 in CUDA 13.0: up to the cluster attributes) returned
/// with every function. The runtime's cudaFuncGetAttributes reads every one of them.
pub const FUNC_ATTR_COUNT: usize = 16;

/// One kernel of a loaded module or library, as the server reports it with the load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FunctionInfo {
    pub name: String,
    /// (offset, size) of each parameter in the packed argument buffer, in order.
    pub params: Vec<(u32, u32)>,
    /// `cuFuncGetAttribute` values, indexed by attribute; `i32::MIN` where the driver gave an error or the
    /// value is not known yet (`ATTRS_UNKNOWN`: ask with `FuncGetAttributes`).
    pub attrs: [i32; FUNC_ATTR_COUNT],
}

/// Attributes of a function whose module was loaded lazily: fetched on first use.
pub const ATTRS_UNKNOWN: [i32; FUNC_ATTR_COUNT] = [i32::MIN; FUNC_ATTR_COUNT];

impl FunctionInfo {
    /// Bytes of the packed argument buffer: the end of the last parameter.
    pub fn args_size(&self) -> usize {
        self.params
            .iter()
            .map(|&(o, s)| o as usize + s as usize)
            .max()
            .unwrap_or(0)
    }
}

/// Largest number of functions accepted in a function table.
const MAX_TABLE_ENTRIES: u32 = 1 << 20;
/// Longest kernel name accepted (mangled template names reach a few KiB).
const MAX_TABLE_NAME: usize = 64 << 10;

/// Encodes the function table that follows a module or library load reply.
pub fn encode_function_table(buf: &mut BytesMut, functions: &[FunctionInfo]) {
    buf.put_u32_le(functions.len() as u32);
    for f in functions {
        buf.put_u32_le(f.name.len() as u32);
        buf.put_slice(f.name.as_bytes());
        buf.put_u32_le(f.params.len() as u32);
        for &(offset, size) in &f.params {
            buf.put_u32_le(offset);
            buf.put_u32_le(size);
        }
        for a in f.attrs {
            buf.put_i32_le(a);
        }
    }
}

/// Decodes a function table, refusing truncated or absurd input.
pub fn decode_function_table(mut data: &[u8]) -> Result<Vec<FunctionInfo>, WireError> {
    fn take_u32(d: &mut &[u8]) -> Result<u32, WireError> {
        let (head, rest) = d
            .split_first_chunk::<4>()
            .ok_or(WireError::Malformed("function table truncated"))?;
        *d = rest;
        Ok(u32::from_le_bytes(*head))
    }
    let count = take_u32(&mut data)?;
    if count > MAX_TABLE_ENTRIES {
        return Err(WireError::Malformed("function table too long"));
    }
    let mut out = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let name_len = take_u32(&mut data)? as usize;
        if name_len > MAX_TABLE_NAME {
            return Err(WireError::Malformed("function name too long"));
        }
        if name_len > data.len() {
            return Err(WireError::Malformed("function name truncated"));
        }
        let (name, rest) = data.split_at(name_len);
        data = rest;
        let name = String::from_utf8(name.to_vec()).map_err(|_| WireError::Malformed("function name not UTF-8"))?;
        let nparams = take_u32(&mut data)?;
        if nparams as usize > super::MAX_ARGS {
            return Err(WireError::Malformed("parameter list too long"));
        }
        let mut params = Vec::with_capacity(nparams.min(4096) as usize);
        for _ in 0..nparams {
            let offset = take_u32(&mut data)?;
            let size = take_u32(&mut data)?;
            // The client packs arguments at these offsets: every parameter lies inside the largest argument
            // buffer a launch may carry.
            if u64::from(offset) + u64::from(size) > super::MAX_ARGS as u64 {
                return Err(WireError::Malformed("parameter outside the argument buffer"));
            }
            params.push((offset, size));
        }
        let mut attrs = [0i32; FUNC_ATTR_COUNT];
        for a in attrs.iter_mut() {
            *a = take_u32(&mut data)? as i32;
        }
        out.push(FunctionInfo { name, params, attrs });
    }
    if !data.is_empty() {
        return Err(WireError::Malformed("trailing bytes after function table"));
    }
    Ok(out)
}
