//! Module and library images in the emulator: parsed (fatbin, cubin, PTX), their functions' parameter layouts
//! and `__device__` globals placed in emulated device memory, and unloaded with them.

use super::*;

impl EmulatedBackend {
    /// Loads a module (into the current context: `need_ctx`) or a library (context-free, as natively).
    pub(super) fn load(&self, image: &[u8], need_ctx: bool) -> CuResult<(u64, Vec<LoadedFunction>)> {
        // Modules need a context and hold functions; libraries are context-free and hold kernels.
        let is_library = !need_ctx;
        if need_ctx {
            self.require_ctx()?;
        }
        let mut variables = Vec::new();
        let infos = match fatbin::classify(image) {
            fatbin::Image::Ptx(text) => {
                if !ptx::looks_compilable(text) {
                    return Err(CUDA_ERROR_INVALID_PTX);
                }
                variables = ptx::globals(text);
                ptx::entries(text).map_err(|_| CUDA_ERROR_INVALID_PTX)?
            }
            fatbin::Image::FatBinary(entries) => {
                // PTX gives names, layouts and globals; without it (nvcc's default is SASS only for one
                // architecture), the cubins' .nv.info sections do. Entries are decompressed as needed.
                let texts: Vec<String> = entries.iter().filter_map(|e| e.ptx()).collect();
                if texts.is_empty() {
                    let elf = entries
                        .iter()
                        .filter(|e| e.kind == 2)
                        .find_map(|e| e.content().ok())
                        .ok_or(CUDA_ERROR_INVALID_IMAGE)?;
                    let (infos, globals) = cubin_layouts(&elf)?;
                    variables = globals;
                    infos
                } else {
                    let mut all: Vec<_> = Vec::new();
                    for t in &texts {
                        for g in ptx::globals(t) {
                            if !variables.iter().any(|v: &(String, u64)| v.0 == g.0) {
                                variables.push(g);
                            }
                        }
                        for f in ptx::entries(t).map_err(|_| CUDA_ERROR_INVALID_PTX)? {
                            if !all.iter().any(|g: &FunctionInfo| g.name == f.name) {
                                all.push(f);
                            }
                        }
                    }
                    all
                }
            }
            fatbin::Image::Elf => {
                let (infos, globals) = cubin_layouts(image)?;
                variables = globals;
                infos
            }
            fatbin::Image::Invalid => return Err(CUDA_ERROR_INVALID_IMAGE),
        };
        // The emulator keeps a module's globals in host memory: sizes come from the image, so their sum is
        // bounded like any allocation (a PTX `.global .b8 x[2^60]` made the fuzzer's loader abort).
        // A kernel whose parameters reach past the argument buffer could never be launched, and its table would
        // be refused by the client (a cubin's `.nv.info` says where parameters are; found by fuzzing).
        if infos.iter().any(|f| f.args_size() > vgpu_dataplane::wire::MAX_ARGS) {
            return Err(CUDA_ERROR_INVALID_IMAGE);
        }
        variables
            .iter()
            .try_fold(0u64, |sum, (_, size)| sum.checked_add((*size).max(1)))
            .filter(|&total| total <= MAX_MODULE_GLOBALS)
            .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        let module = self.handle();
        let functions: Vec<LoadedFunction> = infos
            .into_iter()
            .map(|info| {
                let h = self.handle();
                LoadedFunction {
                    info,
                    handle: if is_library {
                        Callable::Kernel(Kernel(h))
                    } else {
                        Callable::Function(Function(h))
                    },
                }
            })
            .collect();
        let mut st = self.state();
        for f in &functions {
            st.functions.insert(f.handle.raw(), f.info.args_size());
        }
        st.modules.insert(module, functions.clone());
        let mut table = HashMap::new();
        for (name, size) in variables {
            let addr = Self::place(&mut st, size.max(1));
            table.insert(name, (addr, size));
        }
        st.globals.insert(module, table);
        Ok((module, functions))
    }

    /// Reserves device addresses for `size` bytes, with a guard gap so that distinct allocations are never
    /// adjacent (a copy running off one must not land in the next, as on a real GPU).
    pub(super) fn place(st: &mut State, size: u64) -> u64 {
        let addr = Self::next_address(st, size);
        st.allocations.insert(addr, state::Bytes::zeroed(size as usize));
        addr
    }

    /// The address `place` would give `size` bytes, taken.
    pub(super) fn next_address(st: &mut State, size: u64) -> u64 {
        let addr = st.next_addr;
        st.next_addr = (addr + size).div_ceil(ALLOC_ALIGN) * ALLOC_ALIGN + ALLOC_ALIGN;
        addr
    }

    pub(super) fn unload(&self, module: u64) -> CuResult<()> {
        let mut st = self.state();
        let functions = st.modules.remove(&module).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        for (addr, _) in st.globals.remove(&module).unwrap_or_default().into_values() {
            st.allocations.remove(&addr);
        }
        for f in functions {
            st.functions.remove(&f.handle.raw());
        }
        Ok(())
    }
}

pub(super) fn image_key(image: Image) -> u64 {
    match image {
        Image::Module(m) => m.0,
        Image::Library(l) => l.0,
    }
}
