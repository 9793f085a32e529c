//! A session's virtual memory management (`cuMemAddressReserve`, `cuMemCreate`, `cuMemMap`, ...): the checks
//! and books that keep a client inside its own reservations, physical memory and memory limit.

use std::collections::{BTreeMap, HashMap};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::{MemAccessDesc, MemAddressReserve, MemAllocProp, MemCreate, MemMap, MEM_LOCATION_DEVICE};

use super::Session;

/// What the session knows of its VMM objects. Physical memory is named by client-chosen ids (the session maps
/// them to the driver's handles); addresses are the driver's, as for every device pointer.
#[derive(Default)]
pub(super) struct VmmObjects {
    /// Address reservations: base → size as the client asked for it (`cuMemAddressFree` must repeat it).
    reservations: BTreeMap<u64, u64>,
    /// Physical memory (`cuMemCreate`) by client id.
    physical: HashMap<u64, Physical>,
    /// Mappings: address → what is mapped there.
    mappings: BTreeMap<u64, Mapping>,
}

/// Physical memory the session created. Natively it lives until its last reference is released and its last
/// mapping unmapped, whichever comes last; its bytes count against the memory limit until then.
struct Physical {
    real: u64,
    size: u64,
    /// References not yet released: cuMemCreate's, and one per cuMemRetainAllocationHandle.
    refs: u32,
    mappings: u32,
}

#[derive(Clone, Copy)]
struct Mapping {
    /// The client id of the physical memory mapped here.
    handle: u64,
    size: u64,
}

impl VmmObjects {
    /// The addresses of the mappings that exactly tile [ptr, ptr+size): whole mappings, back to back.
    fn whole_mappings(&self, ptr: u64, size: u64) -> CuResult<Vec<u64>> {
        vgpu_dataplane::ranges::tiling(&self.mappings, |m| m.size, ptr, size)
    }

    /// The mapping holding `addr`: (its address, the mapping).
    fn mapping_at(&self, addr: u64) -> Option<(u64, Mapping)> {
        let (&va, &m) = self.mappings.range(..=addr).next_back()?;
        (addr < va.saturating_add(m.size)).then_some((va, m))
    }
}

impl Session {
    /// `prop` with its device location turned into the server's ordinal. Only device memory is remoted: host
    /// (NUMA) memory would be the server's, which the client's CPU cannot reach.
    fn real_prop(&self, mut prop: MemAllocProp) -> CuResult<MemAllocProp> {
        if prop.location_type != MEM_LOCATION_DEVICE {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let dev = u32::try_from(prop.location_id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
        prop.location_id = self.real_device(dev)?;
        Ok(prop)
    }

    pub(super) fn mem_granularity(&self, prop: MemAllocProp, option: u32) -> CuResult<u64> {
        let prop = self.real_prop(prop)?;
        self.backend.mem_granularity(&prop, option)
    }

    pub(super) fn mem_address_reserve(&self, c: MemAddressReserve) -> CuResult<u64> {
        // The hint only guides the driver's choice: the range it returns is new, whatever the hint named.
        let ptr = self.backend.mem_address_reserve(c.size, c.alignment, c.addr, c.flags)?;
        self.objects().vmm.reservations.insert(ptr, c.size);
        Ok(ptr)
    }

    /// `cuMemAddressFree` of one of the session's reservations, as it was reserved. A reservation that still
    /// holds mappings is refused before the driver sees it (the documented order is unmap, then free), so the
    /// session's books never name mappings outside a reservation.
    pub(super) fn mem_address_free(&self, ptr: u64, size: u64) -> CuResult<()> {
        {
            let mut objs = self.objects();
            let vmm = &mut objs.vmm;
            if vmm.reservations.get(&ptr) != Some(&size) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if vmm.mappings.range(ptr..ptr.saturating_add(size)).next().is_some() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            // Taken out first, so that no other thread maps into it meanwhile.
            vmm.reservations.remove(&ptr);
        }
        self.backend.mem_address_free(ptr, size).inspect_err(|_| {
            self.objects().vmm.reservations.insert(ptr, size);
        })
    }

    /// `cuMemCreate`, synchronous: its size counts against the memory limit before the driver allocates.
    pub(super) fn mem_create(&self, c: MemCreate) -> CuResult<()> {
        let prop = self.real_prop(c.prop)?;
        if self.objects().vmm.physical.contains_key(&c.handle) {
            // Ids are the client's to choose, once each.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.reserve(c.size)?;
        let real = self
            .backend
            .mem_create(c.size, &prop, c.flags)
            .inspect_err(|_| self.unreserve(c.size))?;
        self.objects().vmm.physical.insert(
            c.handle,
            Physical {
                real,
                size: c.size,
                refs: 1,
                mappings: 0,
            },
        );
        Ok(())
    }

    /// Forgets physical memory with no reference and no mapping left, returning its bytes to the limit (the
    /// driver freed it at the same moment).
    fn drop_if_unused(&self, handle: u64) {
        let mut objs = self.objects();
        let unused = objs
            .vmm
            .physical
            .get(&handle)
            .is_some_and(|p| p.refs == 0 && p.mappings == 0);
        if unused {
            if let Some(p) = objs.vmm.physical.remove(&handle) {
                objs.allocated_bytes = objs.allocated_bytes.saturating_sub(p.size);
            }
        }
    }

    pub(super) fn mem_release(&self, handle: u64) -> CuResult<()> {
        let real = {
            let mut objs = self.objects();
            let p = objs
                .vmm
                .physical
                .get_mut(&handle)
                .filter(|p| p.refs > 0)
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            p.refs -= 1;
            p.real
        };
        match self.backend.mem_release(real) {
            Ok(()) => {
                self.drop_if_unused(handle);
                Ok(())
            }
            Err(e) => {
                if let Some(p) = self.objects().vmm.physical.get_mut(&handle) {
                    p.refs += 1;
                }
                Err(e)
            }
        }
    }

    /// `cuMemMap`: the range must lie inside one reservation of the session, unmapped, and the memory must be the
    /// session's (with a reference left) and hold `offset + size` bytes. The driver checks the granularity.
    pub(super) fn mem_map(&self, c: MemMap) -> CuResult<()> {
        let end = c
            .ptr
            .checked_add(c.size)
            .filter(|_| c.size > 0)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let real = {
            let mut objs = self.objects();
            let vmm = &mut objs.vmm;
            let p = vmm
                .physical
                .get(&c.handle)
                .filter(|p| p.refs > 0)
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if c.offset.checked_add(c.size).is_none_or(|last| last > p.size) {
                // The driver's answer (H200, driver 580): a range past the handle's end is "not supported".
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
            let real = p.real;
            let reserved = vmm
                .reservations
                .range(..=c.ptr)
                .next_back()
                .is_some_and(|(&base, &size)| end <= base.saturating_add(size));
            let mapped = vmm
                .mappings
                .range(..end)
                .next_back()
                .is_some_and(|(&va, m)| va.saturating_add(m.size) > c.ptr);
            if !reserved || mapped {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            // Claimed before the driver maps, so that two threads cannot map the same addresses.
            vmm.mappings.insert(
                c.ptr,
                Mapping {
                    handle: c.handle,
                    size: c.size,
                },
            );
            if let Some(p) = vmm.physical.get_mut(&c.handle) {
                p.mappings += 1;
            }
            real
        };
        match self.backend.mem_map(c.ptr, c.size, c.offset, real, c.flags) {
            Ok(()) => {
                // Now copies, memsets and kernels may name it.
                self.objects().ranges.insert(c.ptr, c.size);
                Ok(())
            }
            Err(e) => {
                let mut objs = self.objects();
                objs.vmm.mappings.remove(&c.ptr);
                if let Some(p) = objs.vmm.physical.get_mut(&c.handle) {
                    p.mappings = p.mappings.saturating_sub(1);
                }
                Err(e)
            }
        }
    }

    /// `cuMemUnmap` of whole mappings of the session: one, or several back to back in one call.
    pub(super) fn mem_unmap(&self, ptr: u64, size: u64) -> CuResult<()> {
        let taken: Vec<(u64, Mapping)> = {
            let mut objs = self.objects();
            let vas = objs.vmm.whole_mappings(ptr, size)?;
            // Taken out first: from here on no copy may name them.
            vas.into_iter()
                .filter_map(|va| {
                    objs.ranges.remove(&va);
                    objs.vmm.mappings.remove(&va).map(|m| (va, m))
                })
                .collect()
        };
        match self.backend.mem_unmap(ptr, size) {
            Ok(()) => {
                for (_, m) in &taken {
                    if let Some(p) = self.objects().vmm.physical.get_mut(&m.handle) {
                        p.mappings = p.mappings.saturating_sub(1);
                    }
                    self.drop_if_unused(m.handle);
                }
                Ok(())
            }
            Err(e) => {
                let mut objs = self.objects();
                for (va, m) in taken {
                    objs.ranges.insert(va, m.size);
                    objs.vmm.mappings.insert(va, m);
                }
                Err(e)
            }
        }
    }

    /// `cuMemSetAccess` over whole mappings of the session, for devices the client may name.
    pub(super) fn mem_set_access(&self, ptr: u64, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        let mut real = Vec::with_capacity(descs.len());
        for d in descs {
            if d.location_type != MEM_LOCATION_DEVICE {
                // Host access to device memory would be the server's host.
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let dev = u32::try_from(d.location_id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
            real.push(MemAccessDesc {
                location_id: self.real_device(dev)?,
                ..*d
            });
        }
        self.objects().vmm.whole_mappings(ptr, size)?;
        self.backend.mem_set_access(ptr, size, &real)
    }

    pub(super) fn mem_get_access(&self, location_type: u32, location_id: i32, ptr: u64) -> CuResult<u64> {
        if location_type != MEM_LOCATION_DEVICE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dev = u32::try_from(location_id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
        let real = self.real_device(dev)?;
        if self.objects().vmm.mapping_at(ptr).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.backend.mem_get_access(location_type, real, ptr)
    }

    /// `cuMemGetAllocationPropertiesFromHandle`, its device given back in the client's numbering.
    pub(super) fn mem_allocation_properties(&self, handle: u64) -> CuResult<MemAllocProp> {
        let real = self
            .objects()
            .vmm
            .physical
            .get(&handle)
            .map(|p| p.real)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut prop = self.backend.mem_allocation_properties(real)?;
        if prop.location_type == MEM_LOCATION_DEVICE {
            prop.location_id = self.client_device(prop.location_id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        }
        Ok(prop)
    }

    /// `cuMemRetainAllocationHandle`: the id the client mapped at `addr`, with one more reference.
    pub(super) fn mem_retain_allocation_handle(&self, addr: u64) -> CuResult<u64> {
        let (_, m) = self.objects().vmm.mapping_at(addr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let real = self.backend.mem_retain_allocation_handle(addr)?;
        let mut objs = self.objects();
        match objs.vmm.physical.get_mut(&m.handle) {
            Some(p) if p.real == real => {
                p.refs += 1;
                Ok(m.handle)
            }
            _ => {
                // The driver named other memory than the session's books: keep the books, undo the retain.
                drop(objs);
                tracing::warn!(
                    addr,
                    "cuMemRetainAllocationHandle: the driver's handle differs from the session's"
                );
                let _ = self.backend.mem_release(real);
                Err(CUDA_ERROR_UNKNOWN)
            }
        }
    }

    /// Unmaps, releases and frees every VMM object the session still holds. A worker process ends with its
    /// session and the driver frees everything then; this returns them where a session ends inside a process
    /// that goes on.
    pub(super) fn release_vmm(&mut self) {
        let vmm = std::mem::take(&mut self.objects.get_mut().unwrap_or_else(|p| p.into_inner()).vmm);
        for (va, m) in &vmm.mappings {
            let _ = self.backend.mem_unmap(*va, m.size);
        }
        for p in vmm.physical.values() {
            for _ in 0..p.refs {
                let _ = self.backend.mem_release(p.real);
            }
        }
        for (&base, &size) in &vmm.reservations {
            let _ = self.backend.mem_address_free(base, size);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release_vmm();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    use bytes::BytesMut;
    use vgpu_dataplane::cuerr::*;
    use vgpu_dataplane::wire::*;
    use vgpu_dataplane::Transport;
    use vgpu_transports::tcp::TcpTransport;
    use zerocopy::{FromBytes, IntoBytes};

    use crate::backend::Backend;
    use crate::emulated::EmulatedBackend;
    use crate::session::{Limits, Session};

    const G: u64 = 2 << 20;

    /// One client thread speaking the wire protocol to a channel of `session`, served on its own thread over
    /// loopback TCP, as a worker serves a connection.
    struct Client {
        t: TcpTransport,
        seq: u32,
        server: Option<std::thread::JoinHandle<()>>,
    }

    impl Client {
        fn connect(session: &Arc<Session>) -> Client {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("address");
            let s = session.clone();
            let server = std::thread::spawn(move || {
                let (stream, _) = listener.accept().expect("accept");
                let mut t = TcpTransport::from_stream(stream).expect("server transport");
                let _ = s.serve_channel(&mut t);
            });
            let t = TcpTransport::from_stream(TcpStream::connect(addr).expect("connect")).expect("transport");
            let mut c = Client {
                t,
                seq: 0,
                server: Some(server),
            };
            // The primary context of device 0, current on this channel's thread (copies need one).
            c.ok(&PrimaryCtxRetain {
                ctx: 0x1000,
                dev: 0,
                _pad: 0,
            });
            c.post(&CtxSetCurrent { ctx: 0x1000 });
            c
        }

        fn send<C: Call>(&mut self, c: &C, tail: &[u8]) {
            self.seq += 1;
            let mut buf = BytesMut::new();
            encode_request(&mut buf, self.seq, 0, c, tail);
            self.t.send(&[&buf]).expect("send");
        }

        /// The next result frame (pushed copies and printed output skipped): its code and payload.
        fn reply(&mut self) -> (u32, Vec<u8>) {
            loop {
                let mut head = [0u8; std::mem::size_of::<ReplyHeader>()];
                self.t.recv_exact(&mut head).expect("reply header");
                let h = ReplyHeader::read_from_bytes(&head[..]).expect("header layout");
                let mut payload = vec![0u8; h.len as usize];
                self.t.recv_exact(&mut payload).expect("reply payload");
                if h.kind == REPLY_KIND_RESULT {
                    return (h.result, payload);
                }
            }
        }

        fn post<C: Call>(&mut self, c: &C) {
            assert!(!C::SYNC);
            self.send(c, &[]);
        }

        /// A synchronous call: its CUresult and, on success, its reply body.
        fn call<C: Call>(&mut self, c: &C, tail: &[u8]) -> CuResult<C::Reply> {
            assert!(C::SYNC);
            self.send(c, tail);
            match self.reply() {
                (0, body) => Ok(C::Reply::read_from_prefix(&body).expect("reply body").0),
                (code, _) => Err(CUresult::from_code(code)),
            }
        }

        fn ok<C: Call + std::fmt::Debug>(&mut self, c: &C) -> C::Reply {
            self.call(c, &[]).unwrap_or_else(|e| panic!("{c:?} failed with {e}"))
        }

        fn err<C: Call + std::fmt::Debug>(&mut self, c: &C) -> CUresult {
            match self.call(c, &[]) {
                Ok(_) => panic!("{c:?} succeeded"),
                Err(e) => e,
            }
        }

        fn htod(&mut self, dst: u64, data: &[u8]) -> CuResult<()> {
            self.call(
                &MemcpyHtoD {
                    dst,
                    size: data.len() as u64,
                },
                data,
            )
            .map(|_| ())
        }

        /// `cuMemcpyDtoH`: the reply carries the bytes, then a final status word.
        fn dtoh(&mut self, src: u64, size: u64) -> CuResult<Vec<u8>> {
            self.send(&MemcpyDtoH { src, size }, &[]);
            let (code, mut payload) = self.reply();
            if code != 0 {
                return Err(CUresult::from_code(code));
            }
            let status = payload.split_off(payload.len() - 4);
            CUresult::from_code(u32::from_le_bytes([status[0], status[1], status[2], status[3]])).result()?;
            Ok(payload)
        }

        fn reserve(&mut self, size: u64) -> u64 {
            self.ok(&MemAddressReserve {
                size,
                alignment: 0,
                addr: 0,
                flags: 0,
            })
            .dptr
        }

        fn create(&mut self, handle: u64, size: u64) -> CuResult<()> {
            self.call(
                &MemCreate {
                    handle,
                    size,
                    flags: 0,
                    prop: device_prop(0),
                },
                &[],
            )
            .map(|_| ())
        }

        fn map(&mut self, ptr: u64, size: u64, handle: u64) -> CuResult<()> {
            let c = MemMap {
                ptr,
                size,
                offset: 0,
                handle,
                flags: 0,
            };
            self.call(&c, &[]).map(|_| ())
        }

        fn unmap(&mut self, ptr: u64, size: u64) -> CuResult<()> {
            self.call(&MemUnmap { ptr, size }, &[]).map(|_| ())
        }

        fn release(&mut self, handle: u64) -> CuResult<()> {
            self.call(&MemRelease { handle }, &[]).map(|_| ())
        }

        fn set_access(&mut self, ptr: u64, size: u64, device: i32) -> CuResult<()> {
            let desc = MemAccessDesc {
                location_type: MEM_LOCATION_DEVICE,
                location_id: device,
                flags: 3,
            };
            let c = MemSetAccess {
                ptr,
                size,
                count: 1,
                _pad: 0,
            };
            self.call(&c, desc.as_bytes()).map(|_| ())
        }

        /// Closes the channel and waits for its server thread, which drops its reference to the session.
        fn close(mut self) {
            drop(self.t);
            if let Some(s) = self.server.take() {
                s.join().expect("server thread");
            }
        }
    }

    fn device_prop(device: i32) -> MemAllocProp {
        MemAllocProp {
            alloc_type: 1,
            handle_types: 1,
            location_type: MEM_LOCATION_DEVICE,
            location_id: device,
            ..Default::default()
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn emulated_session(limits: Limits) -> (Arc<EmulatedBackend>, Arc<Session>) {
        let backend = Arc::new(EmulatedBackend::new());
        let session = Session::new(backend.clone(), limits);
        (backend, session)
    }

    /// What PyTorch's expandable segments do: handles mapped back to back in one reservation, copies and
    /// memsets across the seams, a hole unmapped and filled again, everything released at the end.
    #[test]
    fn expandable_segment_round_trip() {
        let (backend, session) = emulated_session(Limits::default());
        let mut c = Client::connect(&session);
        let g = c.ok(&MemGetAllocationGranularity {
            prop: device_prop(0),
            option: 1,
            _pad: 0,
        });
        assert_eq!(g.granularity, G);
        let base = c.reserve(8 * G);
        for (i, h) in [0x100u64, 0x110, 0x120].into_iter().enumerate() {
            c.create(h, G).expect("cuMemCreate");
            c.map(base + i as u64 * G, G, h).expect("cuMemMap");
        }
        c.set_access(base, 3 * G, 0)
            .expect("cuMemSetAccess over three mappings");

        // A copy over the first seam, a memset over the second, a device-to-device copy over both.
        let data = pattern((G / 2) as usize, 7);
        let seam = base + G - G / 4;
        c.htod(seam, &data).expect("copy across the first seam");
        let memset = Memset {
            dst: base + 2 * G - 100,
            pitch: 200,
            width: 200,
            height: 1,
            value: 0xab,
            elem_size: 1,
        };
        c.ok(&memset);
        let back = c.dtoh(base, 3 * G).expect("read back all three mappings");
        let at = (seam - base) as usize;
        assert!(back[at..at + data.len()] == data[..], "copy across the seam read back");
        assert!(back[(2 * G - 100) as usize..(2 * G + 100) as usize]
            .iter()
            .all(|&b| b == 0xab));
        c.ok(&MemcpyDtoD {
            dst: base + G + G / 2,
            src: seam,
            size: data.len() as u64,
        });
        let moved = c
            .dtoh(base + G + G / 2, data.len() as u64)
            .expect("read the moved copy");
        assert!(moved == data, "device-to-device copy across both seams");
        let middle = c.dtoh(base + G, G).expect("read the middle mapping");

        // Unmapping the middle one leaves a hole copies may not name.
        c.unmap(base + G, G).expect("cuMemUnmap of the middle mapping");
        assert_eq!(c.htod(base + G + 16, &[1; 16]), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(c.htod(base + G - 8, &[1; 16]), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(c.err(&MemFree { dptr: base }), CUDA_ERROR_INVALID_VALUE);
        // A new handle fills the hole (fresh memory), then the old one again: its bytes were kept.
        c.create(0x130, G).expect("cuMemCreate");
        c.map(base + G, G, 0x130).expect("map a new handle into the hole");
        c.set_access(base + G, G, 0).expect("set access");
        assert!(c.dtoh(base + G, 64).expect("read").iter().all(|&b| b == 0));
        c.unmap(base + G, G).expect("unmap");
        c.map(base + G, G, 0x110).expect("map the old handle again");
        let kept = c.dtoh(base + G, G).expect("read the old handle's bytes");
        assert!(kept == middle, "unmapping kept the handle's bytes");

        // The handle mapped at an address, with one more reference.
        let retained = c.ok(&MemRetainAllocationHandle { addr: base + 2 * G + 5 });
        assert_eq!(retained.handle, 0x120);
        c.release(0x120).expect("release the retained reference");
        let prop = c.ok(&MemGetAllocationProperties { handle: 0x100 }).prop;
        assert_eq!((prop.location_type, prop.location_id, prop.handle_types), (1, 0, 1));

        for h in [0x100, 0x110, 0x120, 0x130] {
            c.release(h).expect("cuMemRelease");
        }
        assert_eq!(c.release(0x130), Err(CUDA_ERROR_INVALID_VALUE), "released twice");
        // Three mappings in one cuMemUnmap, then the reservation.
        c.unmap(base, 3 * G).expect("cuMemUnmap of three mappings at once");
        c.ok(&MemAddressFree { ptr: base, size: 8 * G });
        assert_eq!(session.usage().allocated_bytes, 0);
        assert_eq!(backend.used(), 0, "every physical allocation freed");
        c.close();
    }

    #[test]
    fn memory_limit_counts_physical_memory_until_released_and_unmapped() {
        let (backend, session) = emulated_session(Limits {
            memory_bytes: Some(3 * G),
            devices: None,
            ..Default::default()
        });
        let mut c = Client::connect(&session);
        let base = c.reserve(4 * G);
        c.create(1, G).expect("create");
        c.create(2, G).expect("create");
        c.map(base, G, 1).expect("map");
        c.release(1).expect("release while mapped");
        c.release(2).expect("release");
        // The mapped handle's memory is alive natively, so it still counts.
        assert_eq!(session.usage().allocated_bytes, G);
        c.create(3, G).expect("create");
        c.create(4, G).expect("create up to the limit");
        assert_eq!(c.create(5, G), Err(CUDA_ERROR_OUT_OF_MEMORY), "over the limit");
        // Unmapping the released handle frees it: room for one more.
        c.unmap(base, G).expect("unmap");
        assert_eq!(session.usage().allocated_bytes, 2 * G);
        c.create(5, G).expect("create after the unmap");
        assert_eq!(backend.used(), 3 * G);
        c.close();
    }

    #[test]
    fn foreign_and_misplaced_objects_are_refused() {
        let backend = Arc::new(EmulatedBackend::new());
        let a_session = Session::new(backend.clone(), Limits::default());
        let b_session = Session::new(backend.clone(), Limits::default());
        let mut a = Client::connect(&a_session);
        let mut b = Client::connect(&b_session);
        let a_base = a.reserve(4 * G);
        a.create(0x500, 2 * G).expect("create");
        let b_base = b.reserve(4 * G);
        b.create(0x600, G).expect("create");

        // Another session's handle, and another session's reservation (which the driver alone would accept).
        assert_eq!(b.map(b_base, G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(b.map(a_base, G, 0x600), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(b.release(0x500), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(
            b.err(&MemGetAllocationProperties { handle: 0x500 }),
            CUDA_ERROR_INVALID_VALUE
        );
        // Outside any reservation, running off its end, past the handle's size, over an existing mapping.
        assert_eq!(a.map(a_base + 64 * G, G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(a.map(a_base + 3 * G, 2 * G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(a.map(a_base, 4 * G, 0x500), Err(CUDA_ERROR_NOT_SUPPORTED));
        a.map(a_base, 2 * G, 0x500).expect("map");
        assert_eq!(a.map(a_base + G, G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
        // The other session cannot copy into, unmap or retain what this one mapped.
        b.set_access(b_base, G, 0).expect_err("nothing mapped there");
        assert_eq!(b.htod(a_base, &[0; 8]), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(b.unmap(a_base, 2 * G), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(
            b.err(&MemRetainAllocationHandle { addr: a_base }),
            CUDA_ERROR_INVALID_VALUE
        );
        // Half a mapping cannot be unmapped; a reservation with mappings cannot be freed, nor freed by another size.
        assert_eq!(a.unmap(a_base, G), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(
            a.err(&MemAddressFree {
                ptr: a_base,
                size: 4 * G
            }),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            b.err(&MemAddressFree {
                ptr: b_base,
                size: 2 * G
            }),
            CUDA_ERROR_INVALID_VALUE
        );
        // Host memory and unknown devices are not remoted.
        let host = MemAllocProp {
            location_type: 2,
            ..device_prop(0)
        };
        let create_host = MemCreate {
            handle: 0x700,
            size: G,
            flags: 0,
            prop: host,
        };
        assert_eq!(a.err(&create_host), CUDA_ERROR_NOT_SUPPORTED);
        let create_dev1 = MemCreate {
            prop: device_prop(1),
            ..create_host
        };
        assert_eq!(a.err(&create_dev1), CUDA_ERROR_INVALID_DEVICE);
        assert_eq!(a.set_access(a_base, 2 * G, 1), Err(CUDA_ERROR_INVALID_DEVICE));
        a.close();
        b.close();
    }

    #[test]
    fn device_ordinals_are_translated_both_ways() {
        // The client's device 0 is the server's device 1.
        let backend = Arc::new(EmulatedBackend::with_devices(2));
        let session = Session::new(
            backend.clone(),
            Limits {
                memory_bytes: None,
                devices: Some(vec![1]),
                ..Default::default()
            },
        );
        let mut c = Client::connect(&session);
        c.create(0x40, G).expect("create on the client's device 0");
        assert_eq!(
            backend.physical_devices(),
            vec![1],
            "the driver saw the server's ordinal"
        );
        let prop = c.ok(&MemGetAllocationProperties { handle: 0x40 }).prop;
        assert_eq!(prop.location_id, 0, "the client sees its own ordinal");
        let create_dev1 = MemCreate {
            handle: 0x50,
            size: G,
            flags: 0,
            prop: device_prop(1),
        };
        assert_eq!(c.err(&create_dev1), CUDA_ERROR_INVALID_DEVICE, "not the client's");
        c.close();
    }

    #[test]
    fn session_end_releases_its_vmm_objects() {
        let (backend, session) = emulated_session(Limits::default());
        let mut c = Client::connect(&session);
        let base = c.reserve(2 * G);
        c.create(1, G).expect("create");
        c.create(2, G).expect("create");
        c.map(base, G, 1).expect("map");
        c.ok(&MemRetainAllocationHandle { addr: base });
        assert_eq!(backend.used(), 2 * G);
        c.close();
        drop(session);
        assert_eq!(backend.used(), 0, "mapped, retained and unmapped memory all freed");
        // The reservation went too: the same range can be reserved again.
        let again = backend.mem_address_reserve(2 * G, 0, base, 0).expect("reserve again");
        assert_eq!(again, base);
    }
}
