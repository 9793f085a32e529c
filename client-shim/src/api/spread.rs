//! Modules and libraries in a session of several servers: a module lives where its context does; a library
//! belongs to no context, so it is loaded on each server the first time something of it is used there (a launch,
//! a kernel's function, a global), with the kernel handles already given out bound there too.

use std::sync::Arc;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use crate::client::{self, Route};
use crate::state;

/// Where calls about function or kernel `f` go when it is used with `stream`: a module's function on its
/// module's device (a library kernel's function on the device it was made for), a library kernel where the
/// stream (or, for the NULL stream, the current context) is, after loading its library there.
pub(crate) fn route_of_function(f: FunctionId, stream: StreamId) -> CuResult<Route> {
    let (module, is_kernel, owner) = {
        let reg = state::read();
        let e = reg.functions.get(&f).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        (e.module, e.is_kernel, reg.owners.get(&f.get()).copied())
    };
    if let Some(dev) = owner {
        return Ok(Route::Device(dev));
    }
    let module_device = state::read().modules.get(&module).and_then(|m| m.device);
    if let (false, Some(dev)) = (is_kernel, module_device) {
        return Ok(Route::Device(dev));
    }
    let route = super::route_of_stream(stream);
    ensure_library(module, route)?;
    Ok(route)
}

/// Loads library `id` on the server `route` names if it is not there yet.
pub(crate) fn ensure_library(id: ModuleId, route: Route) -> CuResult<()> {
    let s = client::session()?;
    let server = match route {
        Route::Current => client::current_server(),
        Route::Device(d) => s.server_of(d)?,
        Route::Server(i) => i,
    };
    let (image, bound, attrs) = {
        let reg = state::read();
        let Some(m) = reg.modules.get(&id) else {
            return Ok(());
        };
        if !m.is_library || m.deferred_error.is_some() || m.loaded_on & (1 << server) != 0 {
            return Ok(());
        }
        let Some(image) = m.image.clone() else {
            crate::log::log!(
                crate::log::ERROR,
                "library {id} is needed on server {server} but its image was not kept; loaded where it was first"
            );
            return Err(CUDA_ERROR_INVALID_HANDLE);
        };
        let bound: Vec<(String, FunctionId)> = m.bound.iter().map(|(n, f)| (n.clone(), *f)).collect();
        let attrs: Vec<(FunctionId, i32, i32)> = bound
            .iter()
            .flat_map(|(_, f)| {
                reg.kernel_attrs_set
                    .get(f)
                    .into_iter()
                    .flatten()
                    .map(move |&(a, v)| (*f, a, v))
            })
            .collect();
        (image, bound, attrs)
    };
    let mut table = Vec::new();
    client::call_with_tail_to(
        Route::Server(server),
        0,
        &LibraryLoad { library: id },
        &image,
        &mut table,
    )?;
    for (name, kernel) in bound {
        client::post_now_to(
            Route::Server(server),
            0,
            &LibraryGetKernel { library: id, kernel },
            name.as_bytes(),
        )?;
    }
    for (function, attrib, value) in attrs {
        let call = FuncSetAttribute {
            function,
            attrib,
            value,
        };
        client::post_to(Route::Server(server), 0, &call, &[])?;
    }
    if let Some(m) = state::write().modules.get_mut(&id) {
        m.loaded_on |= 1 << server;
    }
    Ok(())
}

/// The servers a library or module is loaded on, by index.
pub(crate) fn servers_of(id: ModuleId) -> Vec<usize> {
    let loaded = state::read().modules.get(&id).map_or(0, |m| m.loaded_on);
    (0..64).filter(|i| loaded & (1u64 << i) != 0).collect()
}

/// Where a new module or library lives: (its device, the bitmask of servers it is loaded on, its kept image).
pub(crate) type Placement = (Option<i32>, u64, Option<Arc<[u8]>>);

/// What a new module or library records about where it lives: its device (modules), the server it was loaded
/// on, and for a library in a session of several servers its image, for the next server.
pub(crate) fn placement_of_load(is_library: bool, image: &[u8]) -> CuResult<Placement> {
    let s = client::session()?;
    let server = client::current_server();
    let device = if is_library { None } else { state::current_device() };
    let keep = is_library && s.multi_server();
    Ok((device, 1 << server, keep.then(|| Arc::from(image))))
}
