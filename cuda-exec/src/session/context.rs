//! Handlers: contexts (primary and created), their limits, the private export table sizes, and `Ping`.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::ContextId;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};
use super::ChannelEnd;
use crate::backend::*;

impl Serve<PrimaryCtxRetain> for Channel {
    fn serve(&mut self, c: PrimaryCtxRetain, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.s().real_device(c.dev).and_then(|d| {
            self.s().check_cap(|o| o.contexts.len(), |c| c.contexts)?;
            let real = self.b().primary_ctx_retain(d)?;
            let mut objs = self.s().objects();
            objs.primary.insert(d, real);
            objs.contexts.insert(c.ctx, real);
            objs.context_device.insert(c.ctx, d);
            objs.context_devices.insert(d);
            Ok(Empty {})
        });
        Ok(r)
    }
}

impl Serve<PrimaryCtxRelease> for Channel {
    fn serve(&mut self, c: PrimaryCtxRelease, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .s()
            .real_device(c.dev)
            .and_then(|d| {
                // The context may go with its last reference.
                self.s().sched_forget_device(d);
                self.b().primary_ctx_release(d).map(|_| d)
            })
            .map(|d| {
                // With the last reference (the worker may hold one of its own) the driver destroyed the context, as
                // a reset does: its memory and pinned buffers went with it. Unknown: kept (a leak at worst).
                if self.b().primary_ctx_active(d) == Some(false) {
                    self.s().forget_reset_context(d);
                }
                Empty {}
            }))
    }
}

impl Serve<PrimaryCtxReset> for Channel {
    fn serve(&mut self, c: PrimaryCtxReset, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.s().real_device(c.dev).and_then(|d| {
            // The reset frees the events the scheduler measures with in that context.
            self.s().sched_forget_device(d);
            self.b().primary_ctx_reset(d).map(|_| d)
        });
        if let Ok(d) = r {
            // The reset destroyed the context an earlier asynchronous call failed in (a launch after a kernel
            // fault, say): the reset itself succeeded, as the native call does.
            self.latched = None;
            self.s().forget_reset_context(d);
        }
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<CtxCreate> for Channel {
    fn serve(&mut self, c: CtxCreate, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.s().real_device(c.dev).and_then(|d| {
            self.s().check_cap(|o| o.contexts.len(), |c| c.contexts)?;
            let real = self.b().ctx_create(c.flags, d)?;
            let mut objs = self.s().objects();
            objs.contexts.insert(c.ctx, real);
            objs.context_device.insert(c.ctx, d);
            objs.context_devices.insert(d);
            Ok(Empty {})
        });
        if r.is_ok() {
            // cuCtxCreate makes the new context current on the calling thread.
            self.current = c.ctx;
        }
        Ok(r)
    }
}

impl Serve<CtxDestroy> for Channel {
    fn serve(&mut self, c: CtxDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        let real = {
            let mut objs = self.s().objects();
            objs.context_device.remove(&c.ctx);
            objs.contexts.remove(&c.ctx)
        };
        if self.current == c.ctx {
            self.current = ContextId(0);
        }
        Ok(match real {
            Some(real) => {
                if let Some(sched) = &self.s().sched {
                    // The context's events go with it.
                    sched.forget_context(real.0);
                }
                let destroyed = self.b().ctx_destroy(real);
                if destroyed.is_ok() {
                    // So do pinned buffers a channel or lane made while it was current.
                    self.s().end_context(real.0);
                }
                destroyed.map(|_| Empty {})
            }
            None => Err(CUDA_ERROR_INVALID_CONTEXT),
        })
    }
}

impl Serve<CtxSetCurrent> for Channel {
    fn serve(&mut self, c: CtxSetCurrent, _cx: &mut Cx<'_>) -> Served<Empty> {
        let real = if c.ctx == ContextId(0) {
            Some(Context(0))
        } else {
            self.s().objects().contexts.get(&c.ctx).copied()
        };
        Ok(match real {
            Some(real) => self.b().ctx_set_current(real).map(|_| {
                self.current = c.ctx;
                Empty {}
            }),
            None => Err(CUDA_ERROR_INVALID_CONTEXT),
        })
    }
}

impl Serve<CtxSynchronize> for Channel {
    fn serve(&mut self, _c: CtxSynchronize, _cx: &mut Cx<'_>) -> Served<Empty> {
        let synced = self.b().ctx_synchronize();
        if synced.is_ok() {
            self.free_retired();
        }
        Ok(synced.map(|_| Empty {}))
    }
}

impl Serve<CtxGetLimit> for Channel {
    fn serve(&mut self, c: CtxGetLimit, _cx: &mut Cx<'_>) -> Served<LimitReply> {
        Ok(self.b().ctx_get_limit(c.limit).map(|value| LimitReply { value }))
    }
}

impl Serve<CtxSetLimit> for Channel {
    fn serve(&mut self, c: CtxSetLimit, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.b().ctx_set_limit(c.limit, c.value).map(|_| Empty {}))
    }
}

impl Serve<ExportTableSize> for Channel {
    fn serve(&mut self, c: ExportTableSize, _cx: &mut Cx<'_>) -> Served<ExportTableSizeReply> {
        Ok(self
            .b()
            .export_table_first_word(&c.uuid)
            .map(|first_word| ExportTableSizeReply { first_word }))
    }
}

impl Serve<SetDeviceNumbering> for Channel {
    fn serve(&mut self, c: SetDeviceNumbering, _cx: &mut Cx<'_>) -> Served<Empty> {
        if self.tail.len() != c.count as usize * 8 {
            return Err(ChannelEnd::Malformed(format!(
                "device numbering of {} pairs in {} bytes",
                c.count,
                self.tail.len()
            )));
        }
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let pairs = self
            .tail
            .chunks_exact(8)
            .map(|p| (word(&p[..4]), word(&p[4..])))
            .collect();
        Ok(self.s().set_numbering(pairs).map(|_| Empty {}))
    }
}

impl Serve<VaWindow> for Channel {
    fn serve(&mut self, c: VaWindow, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self
            .s()
            .real_device(c.device)
            .and_then(|d| self.s().windows().configure(d, c.base, c.size));
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<Ping> for Channel {
    fn serve(&mut self, _c: Ping, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(Ok(Empty {}))
    }
}

impl Serve<DeviceCanAccessPeer> for Channel {
    fn serve(&mut self, c: DeviceCanAccessPeer, _cx: &mut Cx<'_>) -> Served<PeerValueReply> {
        let s = self.s();
        Ok(s.real_device(c.dev).and_then(|dev| {
            let peer = s.real_device(c.peer)?;
            let value = self.b().device_can_access_peer(dev, peer)?;
            Ok(PeerValueReply { value: value.into() })
        }))
    }
}

impl Serve<DeviceP2PAttribute> for Channel {
    fn serve(&mut self, c: DeviceP2PAttribute, _cx: &mut Cx<'_>) -> Served<PeerValueReply> {
        let s = self.s();
        Ok(s.real_device(c.src).and_then(|src| {
            let dst = s.real_device(c.dst)?;
            let value = self.b().device_p2p_attribute(c.attr, src, dst)?;
            Ok(PeerValueReply { value: value.into() })
        }))
    }
}

impl Serve<CtxEnablePeerAccess> for Channel {
    fn serve(&mut self, c: CtxEnablePeerAccess, _cx: &mut Cx<'_>) -> Served<Empty> {
        let peer = self.s().objects().contexts.get(&c.peer).copied();
        Ok(match peer {
            Some(peer) => self.b().ctx_enable_peer_access(peer, c.flags).map(|_| Empty {}),
            None => Err(CUDA_ERROR_INVALID_CONTEXT),
        })
    }
}

impl Serve<CtxDisablePeerAccess> for Channel {
    fn serve(&mut self, c: CtxDisablePeerAccess, _cx: &mut Cx<'_>) -> Served<Empty> {
        let peer = self.s().objects().contexts.get(&c.peer).copied();
        Ok(match peer {
            Some(peer) => self.b().ctx_disable_peer_access(peer).map(|_| Empty {}),
            None => Err(CUDA_ERROR_INVALID_CONTEXT),
        })
    }
}
