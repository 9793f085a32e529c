//! Real backend: modules and libraries (loading, their functions' parameter layouts and attributes, globals),
//! launches and occupancy questions.

use std::ffi::{c_int, c_void, CStr};

use vgpu_cuda_sys::driver::*;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{FunctionInfo, LaunchShape, FUNC_ATTR_COUNT};

use super::{cstr_name, RealBackend, ToDriver};
use crate::backend::*;

thread_local! {
    /// The app's block-size-to-shared-memory answers, for the occupancy call running on this thread.
    static SMEM_BY_BLOCK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Stands in for the app's `CUoccupancyB2DSize` callback with the answers the client collected.
unsafe extern "C" fn smem_by_block(block: c_int) -> usize {
    SMEM_BY_BLOCK.with(|t| {
        let t = t.borrow();
        usize::try_from(block - 1)
            .ok()
            .and_then(|i| t.get(i))
            .copied()
            .unwrap_or(0) as usize
    })
}

/// Every function of a loaded module or library (their driver calls differ, the walk does not): the count,
/// the handles, then each one's name and parameter layout. Attributes are left for `FuncGetAttributes`: querying
/// them here would load every kernel of the image, which the driver otherwise does lazily.
fn list_functions<H: Copy + Default>(
    count: impl FnOnce(&mut u32) -> CUresult,
    enumerate: impl FnOnce(&mut [H]) -> CUresult,
    name: impl Fn(H, &mut *const std::ffi::c_char) -> CUresult,
    param: impl Fn(H, usize, &mut usize, &mut usize) -> CUresult,
    handle: impl Fn(H) -> Callable,
) -> CuResult<Vec<LoadedFunction>> {
    let mut n = 0u32;
    count(&mut n).result()?;
    let mut handles = vec![H::default(); n as usize];
    enumerate(&mut handles).result()?;
    Ok(handles
        .into_iter()
        .map(|h| {
            let mut text = std::ptr::null();
            let _ = name(h, &mut text);
            let mut params = Vec::new();
            loop {
                let (mut off, mut size) = (0usize, 0usize);
                if param(h, params.len(), &mut off, &mut size) != CUDA_SUCCESS {
                    break;
                }
                params.push((off as u32, size as u32));
            }
            LoadedFunction {
                info: FunctionInfo {
                    name: cstr_name(text),
                    params,
                    attrs: [i32::MIN; FUNC_ATTR_COUNT],
                },
                handle: handle(h),
            }
        })
        .collect())
}

/// `CUlaunchAttribute` with `id` and the first words of its value set from `words`.
fn launch_attribute(id: CUlaunchAttributeID, words: &[u32]) -> CUlaunchAttribute {
    let mut attr = CUlaunchAttribute {
        id,
        ..Default::default()
    };
    // SAFETY: the value is a 64-byte union of plain integers; writing its first words through the byte view
    // is what the driver reads for these attributes (the cooperative flag, the cluster dimensions).
    unsafe {
        let bytes = &mut attr.value.pad;
        for (i, w) in words.iter().enumerate() {
            for (j, b) in w.to_le_bytes().iter().enumerate() {
                bytes[i * 4 + j] = *b as std::ffi::c_char;
            }
        }
    }
    attr
}

impl RealBackend {
    pub(super) fn load_module(&self, image: &[u8]) -> CuResult<(Module, Vec<LoadedFunction>)> {
        let d = &self.driver;
        let mut m = std::ptr::null_mut();
        // SAFETY: the image was checked by the session (size, fat binary or ELF or NUL-terminated PTX).
        unsafe { d.cuModuleLoadData(&mut m, image.as_ptr() as *const c_void) }.result()?;
        // SAFETY (the calls below): out-pointers to locals, `m` just loaded, each `f` one of its functions.
        let functions = list_functions(
            |count| unsafe { d.cuModuleGetFunctionCount(count, m) },
            |handles| unsafe { d.cuModuleEnumerateFunctions(handles.as_mut_ptr(), handles.len() as u32, m) },
            |f, name| unsafe { d.cuFuncGetName(name, f) },
            |f, i, off, size| unsafe { d.cuFuncGetParamInfo(f, i, off, size) },
            |f| Callable::Function(f.into()),
        )?;
        Ok((m.into(), functions))
    }

    pub(super) fn load_library(&self, image: &[u8], device: i32) -> CuResult<(Library, Vec<LoadedFunction>)> {
        let d = &self.driver;
        let mut l = std::ptr::null_mut();
        // SAFETY: the image was checked by the session; no options (NULL arrays, zero counts).
        unsafe {
            d.cuLibraryLoadData(
                &mut l,
                image.as_ptr() as *const c_void,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        }
        .result()?;
        // Without a current context the driver cannot answer parameter queries, and a launch needs the layout.
        // The app makes the primary context current right after (the runtime loads libraries with `__managed__`
        // variables first): retain it now, for the worker's life, and borrow it on this thread for the queries.
        let mut current = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { d.cuCtxGetCurrent(&mut current) };
        let borrowed = current.is_null() && {
            let mut primary = std::ptr::null_mut();
            // SAFETY: out-pointer to a local; then the retained context is made current on this thread.
            unsafe {
                d.cuDevicePrimaryCtxRetain(&mut primary, device) == CUDA_SUCCESS
                    && d.cuCtxSetCurrent(primary) == CUDA_SUCCESS
            }
        };
        // SAFETY (the calls below): out-pointers to locals, `l` just loaded, each `k` one of its kernels.
        let kernels = list_functions(
            |count| unsafe { d.cuLibraryGetKernelCount(count, l) },
            |handles| unsafe { d.cuLibraryEnumerateKernels(handles.as_mut_ptr(), handles.len() as u32, l) },
            |k, name| unsafe { d.cuKernelGetName(name, k) },
            |k, i, off, size| unsafe { d.cuKernelGetParamInfo(k, i, off, size) },
            |k| Callable::Kernel(k.into()),
        );
        if borrowed {
            // SAFETY: gives the borrowed context back (NULL: no current context on this thread).
            unsafe { d.cuCtxSetCurrent(std::ptr::null_mut()) };
        }
        Ok((l.into(), kernels?))
    }

    pub(super) fn global(&self, image: Image, name: &CStr) -> CuResult<(DevicePtr, u64)> {
        let (mut dptr, mut size) = (0, 0usize);
        // SAFETY: out-pointers to locals; name is NUL-terminated; the image is this session's.
        unsafe {
            match image {
                Image::Module(m) => {
                    self.driver
                        .cuModuleGetGlobal_v2(&mut dptr, &mut size, m.to_driver(), name.as_ptr())
                }
                Image::Library(l) => self
                    .driver
                    .cuLibraryGetGlobal(&mut dptr, &mut size, l.to_driver(), name.as_ptr()),
            }
        }
        .result()?;
        Ok((DevicePtr(dptr), size as u64))
    }

    pub(super) fn attributes(&self, function: Callable) -> CuResult<[i32; FUNC_ATTR_COUNT]> {
        let d = &self.driver;
        if let Callable::Function(f) = function {
            // Functions enumerated from a lazily loaded module answer attribute queries with
            // CUDA_ERROR_FUNCTION_NOT_LOADED until loaded; the app's own cuModuleGetFunction handle would not.
            // SAFETY: a function handle this session's module load produced.
            let _ = unsafe { d.cuFuncLoad(f.to_driver()) };
        }
        let mut attrs = [i32::MIN; FUNC_ATTR_COUNT];
        for (i, a) in attrs.iter_mut().enumerate() {
            let mut v = 0;
            let attr = CUfunction_attribute(i as u32);
            // SAFETY: out-pointer to a local; the handle is this session's.
            let r = unsafe {
                match function {
                    Callable::Kernel(k) => d.cuKernelGetAttribute(&mut v, attr, k.to_driver(), self.current_device()),
                    Callable::Function(f) => d.cuFuncGetAttribute(&mut v, attr, f.to_driver()),
                }
            };
            if r == CUDA_SUCCESS {
                *a = v;
            } else if i == 0 {
                // The first attribute failing means the function itself is unusable: report the driver's error.
                return Err(r);
            }
        }
        Ok(attrs)
    }

    pub(super) fn lookup_name(&self, image: Image, name: &CStr) -> CuResult<()> {
        // SAFETY: out-pointers to locals; name is NUL-terminated; the image is this session's.
        let r = unsafe {
            match image {
                Image::Library(l) => {
                    let mut out = std::ptr::null_mut();
                    self.driver.cuLibraryGetKernel(&mut out, l.to_driver(), name.as_ptr())
                }
                Image::Module(m) => {
                    let mut out = std::ptr::null_mut();
                    self.driver.cuModuleGetFunction(&mut out, m.to_driver(), name.as_ptr())
                }
            }
        };
        match r {
            CUDA_SUCCESS => Err(CUDA_ERROR_NOT_FOUND),
            e => Err(e),
        }
    }

    pub(super) fn set_attribute(&self, function: Callable, attrib: i32, value: i32) -> CuResult<()> {
        let attr = CUfunction_attribute(attrib as u32);
        // SAFETY: plain values and a handle this session's load produced.
        unsafe {
            match function {
                Callable::Kernel(k) => {
                    self.driver
                        .cuKernelSetAttribute(attr, value, k.to_driver(), self.current_device())
                }
                Callable::Function(f) => self.driver.cuFuncSetAttribute(f.to_driver(), attr, value),
            }
        }
        .result()
    }

    /// The occupancy calls take a CUfunction: a library kernel's function in the current context.
    fn occupancy_function(&self, function: Callable) -> CuResult<CUfunction> {
        match function {
            Callable::Kernel(k) => self.kernel_get_function(k).map(|f| f.to_driver()),
            Callable::Function(f) => Ok(f.to_driver()),
        }
    }

    pub(super) fn active_blocks(&self, function: Callable, block_size: i32, smem: u64, flags: u32) -> CuResult<i32> {
        let f = self.occupancy_function(function)?;
        let mut n = 0;
        // SAFETY: out-pointer to a local; f is a function of this session.
        unsafe {
            self.driver.cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
                &mut n,
                f,
                block_size,
                smem as usize,
                flags,
            )
        }
        .result()?;
        Ok(n)
    }

    pub(super) fn potential_block_size(
        &self,
        function: Callable,
        smem: u64,
        table: Option<&[u64]>,
        block_limit: i32,
        flags: u32,
    ) -> CuResult<(i32, i32)> {
        let f = self.occupancy_function(function)?;
        let callback: CUoccupancyB2DSize = table.map(|t| {
            SMEM_BY_BLOCK.with(|s| *s.borrow_mut() = t.to_vec());
            smem_by_block as _
        });
        let (mut grid, mut block) = (0, 0);
        // SAFETY: out-pointers to locals; the callback reads this thread's table, set just above.
        unsafe {
            self.driver.cuOccupancyMaxPotentialBlockSizeWithFlags(
                &mut grid,
                &mut block,
                f,
                callback,
                smem as usize,
                block_limit,
                flags,
            )
        }
        .result()?;
        Ok((grid, block))
    }

    pub(super) fn available_smem(&self, function: Callable, num_blocks: i32, block_size: i32) -> CuResult<u64> {
        let f = self.occupancy_function(function)?;
        let mut n = 0usize;
        // SAFETY: out-pointer to a local.
        unsafe {
            self.driver
                .cuOccupancyAvailableDynamicSMemPerBlock(&mut n, f, num_blocks, block_size)
        }
        .result()?;
        Ok(n as u64)
    }

    pub(super) fn clusters(&self, function: Callable, shape: LaunchShape, potential_size: bool) -> CuResult<i32> {
        let f = self.occupancy_function(function)?;
        let mut attrs = [launch_attribute(
            CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
            &shape.cluster,
        )];
        let config = CUlaunchConfig {
            gridDimX: shape.grid[0],
            gridDimY: shape.grid[1],
            gridDimZ: shape.grid[2],
            blockDimX: shape.block[0],
            blockDimY: shape.block[1],
            blockDimZ: shape.block[2],
            sharedMemBytes: shape.shared_mem,
            hStream: std::ptr::null_mut(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: if shape.cluster == [0, 0, 0] { 0 } else { 1 },
        };
        let mut n = 0;
        // SAFETY: config and its attribute live across the call; out-pointer to a local.
        unsafe {
            if potential_size {
                self.driver.cuOccupancyMaxPotentialClusterSize(&mut n, f, &config)
            } else {
                self.driver.cuOccupancyMaxActiveClusters(&mut n, f, &config)
            }
        }
        .result()?;
        Ok(n)
    }

    pub(super) fn launch_kernel(
        &self,
        function: Callable,
        stream: Stream,
        shape: &LaunchShape,
        args: &mut [u8],
        params: &[(u32, u32)],
    ) -> CuResult<()> {
        // kernelParams: one pointer per parameter, into the packed buffer at that parameter's offset.
        let mut ptrs = PtrVec::new();
        for &(offset, _) in params {
            ptrs.push(args.as_mut_ptr().wrapping_add(offset as usize) as *mut c_void);
        }
        let kp = if params.is_empty() {
            std::ptr::null_mut()
        } else {
            ptrs.as_mut_ptr()
        };
        let f: CUfunction = function.to_driver();
        if !shape.cooperative && !shape.has_cluster() {
            // SAFETY: kernelParams points into `args`, packed at the offsets of the function's own parameter
            // layout (the session checked its size); the function and stream handles are this session's.
            return unsafe {
                self.driver.cuLaunchKernel(
                    f,
                    shape.grid[0],
                    shape.grid[1],
                    shape.grid[2],
                    shape.block[0],
                    shape.block[1],
                    shape.block[2],
                    shape.shared_mem,
                    stream.to_driver(),
                    kp,
                    std::ptr::null_mut(),
                )
            }
            .result();
        }
        let mut attrs = Vec::new();
        if shape.cooperative {
            attrs.push(launch_attribute(
                CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
                &[1],
            ));
        }
        if shape.has_cluster() {
            attrs.push(launch_attribute(
                CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                &shape.cluster,
            ));
        }
        let config = CUlaunchConfig {
            gridDimX: shape.grid[0],
            gridDimY: shape.grid[1],
            gridDimZ: shape.grid[2],
            blockDimX: shape.block[0],
            blockDimY: shape.block[1],
            blockDimZ: shape.block[2],
            sharedMemBytes: shape.shared_mem,
            hStream: stream.to_driver(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        };
        // SAFETY: config and its attributes live across the call; kernelParams as above.
        unsafe { self.driver.cuLaunchKernelEx(&config, f, kp, std::ptr::null_mut()) }.result()
    }
}

/// A pointer array that stays on the stack for the common case of few parameters (no allocation per launch).
struct PtrVec {
    inline: [*mut c_void; PtrVec::INLINE],
    len: usize,
    heap: Vec<*mut c_void>,
}

impl PtrVec {
    const INLINE: usize = 32;

    fn new() -> Self {
        PtrVec {
            inline: [std::ptr::null_mut(); PtrVec::INLINE],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, p: *mut c_void) {
        if self.len < PtrVec::INLINE {
            self.inline[self.len] = p;
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.inline);
            }
            self.heap.push(p);
        }
        self.len += 1;
    }

    fn as_mut_ptr(&mut self) -> *mut *mut c_void {
        if self.len <= PtrVec::INLINE {
            self.inline.as_mut_ptr()
        } else {
            self.heap.as_mut_ptr()
        }
    }
}
