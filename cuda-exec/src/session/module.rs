//! Handlers: modules and libraries (load, unload), binding their functions and kernels to client ids, globals
//! and `__managed__` variables (which become device ranges the client may name), function attributes.

use bytes::BytesMut;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};
use super::objects::{BoundFunction, LoadedImage};
use crate::backend::*;

impl Channel {
    fn load(&mut self, id: ModuleId, is_library: bool, cx: &mut Cx<'_>) -> CuResult<Empty> {
        self.s().check_cap(|o| o.modules.len(), |c| c.modules)?;
        let loaded = if is_library {
            let device = self.s().real_device(0).unwrap_or(0);
            self.b()
                .library_load(&self.tail, device)
                .map(|(l, f)| (Image::Library(l), f))
        } else {
            self.b().module_load(&self.tail).map(|(m, f)| (Image::Module(m), f))
        };
        let (image, functions) = loaded?;
        let infos: Vec<FunctionInfo> = functions.iter().map(|f| f.info.clone()).collect();
        let mut table = BytesMut::new();
        encode_function_table(&mut table, &infos);
        cx.reply_tail = table.to_vec();
        let functions = functions.into_iter().map(|f| (f.info.name.clone(), f)).collect();
        self.s().objects().modules.insert(id, LoadedImage { image, functions });
        Ok(Empty {})
    }

    fn unload(&mut self, id: ModuleId, is_library: bool) -> CuResult<Empty> {
        let mut objs = self.s().objects();
        match objs.modules.get(&id) {
            Some(m) if m.is_library() == is_library => {}
            _ => return Err(CUDA_ERROR_INVALID_HANDLE),
        }
        let Some(m) = objs.modules.remove(&id) else {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        };
        let reals: Vec<Callable> = m.functions.values().map(|f| f.handle).collect();
        objs.functions.retain(|_, f| !reals.contains(&f.callable));
        drop(objs);
        match m.image {
            Image::Library(l) => self.b().library_unload(l),
            Image::Module(m) => self.b().module_unload(m),
        }
        .map(|_| Empty {})
    }

    /// Binds client id `function` to the function or kernel `name` the load listed.
    fn bind(&mut self, module: ModuleId, function: FunctionId) -> CuResult<Empty> {
        self.s().check_cap(|o| o.functions.len(), |c| c.functions)?;
        let name = String::from_utf8_lossy(&self.tail).into_owned();
        let mut objs = self.s().objects();
        let found = objs
            .modules
            .get(&module)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?
            .functions
            .get(&name)
            .cloned()
            .ok_or(CUDA_ERROR_NOT_FOUND)?;
        objs.functions.insert(
            function,
            BoundFunction {
                callable: found.handle,
                args_size: found.info.args_size(),
                params: found.info.params.into(),
            },
        );
        Ok(Empty {})
    }

    /// A global (or, with `managed`, a `__managed__` variable) of a loaded image: it joins the session's ranges.
    fn global(&self, id: ModuleId, managed: bool) -> Result<CuResult<GlobalReply>, super::ChannelEnd> {
        let name = self.name_from_tail()?;
        let image = self.s().objects().modules.get(&id).map(|m| m.image);
        let r = match (image, managed) {
            (Some(Image::Library(l)), true) => self.b().library_get_managed(l, &name),
            (Some(image), false) => self.b().image_global(image, &name),
            _ => Err(CUDA_ERROR_INVALID_HANDLE),
        };
        Ok(r.map(|(dptr, size)| {
            self.s().objects().ranges.insert(dptr.0, size);
            GlobalReply { dptr, size }
        }))
    }
}

impl Serve<ModuleLoad> for Channel {
    fn serve(&mut self, c: ModuleLoad, cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.load(c.module, false, cx))
    }
}

impl Serve<LibraryLoad> for Channel {
    fn serve(&mut self, c: LibraryLoad, cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.load(c.library, true, cx))
    }
}

impl Serve<ModuleUnload> for Channel {
    fn serve(&mut self, c: ModuleUnload, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.unload(c.module, false))
    }
}

impl Serve<LibraryUnload> for Channel {
    fn serve(&mut self, c: LibraryUnload, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.unload(c.library, true))
    }
}

impl Serve<ModuleGetFunction> for Channel {
    fn serve(&mut self, c: ModuleGetFunction, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.bind(c.module, c.function))
    }
}

impl Serve<LibraryGetKernel> for Channel {
    fn serve(&mut self, c: LibraryGetKernel, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.bind(c.library, c.kernel))
    }
}

impl Serve<ModuleGetGlobal> for Channel {
    fn serve(&mut self, c: ModuleGetGlobal, _cx: &mut Cx<'_>) -> Served<GlobalReply> {
        self.global(c.module, false)
    }
}

impl Serve<LibraryGetGlobal> for Channel {
    fn serve(&mut self, c: LibraryGetGlobal, _cx: &mut Cx<'_>) -> Served<GlobalReply> {
        self.global(c.library, false)
    }
}

impl Serve<LibraryGetManaged> for Channel {
    fn serve(&mut self, c: LibraryGetManaged, _cx: &mut Cx<'_>) -> Served<GlobalReply> {
        self.global(c.library, true)
    }
}

impl Serve<KernelGetFunction> for Channel {
    fn serve(&mut self, c: KernelGetFunction, _cx: &mut Cx<'_>) -> Served<Empty> {
        let kernel = self
            .s()
            .check_cap(|o| o.functions.len(), |c| c.functions)
            .and_then(|_| self.function(c.kernel));
        let r = kernel.and_then(|k| match k.callable {
            Callable::Kernel(kernel) => {
                let real = self.b().kernel_get_function(kernel)?;
                self.s().objects().functions.insert(
                    c.function,
                    BoundFunction {
                        callable: Callable::Function(real),
                        ..k
                    },
                );
                Ok(Empty {})
            }
            Callable::Function(_) => Err(CUDA_ERROR_INVALID_HANDLE),
        });
        Ok(r)
    }
}

impl Serve<FuncGetAttributes> for Channel {
    fn serve(&mut self, c: FuncGetAttributes, _cx: &mut Cx<'_>) -> Served<FuncAttrsReply> {
        Ok(self
            .function(c.function)
            .and_then(|f| self.b().func_attributes(f.callable))
            .map(|attrs| FuncAttrsReply { attrs, _pad: 0 }))
    }
}

impl Serve<FuncSetAttribute> for Channel {
    fn serve(&mut self, c: FuncSetAttribute, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .function(c.function)
            .and_then(|f| self.b().func_set_attribute(f.callable, c.attrib, c.value))
            .map(|_| Empty {}))
    }
}

impl Serve<LookupName> for Channel {
    fn serve(&mut self, c: LookupName, _cx: &mut Cx<'_>) -> Served<Empty> {
        let name = self.name_from_tail()?;
        let image = self.s().objects().modules.get(&c.module).map(|m| m.image);
        Ok(match image {
            Some(image) => self.b().lookup(image, &name).map(|_| Empty {}),
            None => Err(CUDA_ERROR_INVALID_HANDLE),
        })
    }
}
