//! One end's verbs objects (protection domain, completion queue and channel, queue pair, registered rings) from
//! creation to a connected queue pair, and the receive requests it keeps posted.

use super::*;

/// Verbs objects of one end, before its queue pair is connected.
pub(super) struct Verbs {
    pub(super) local: Local,
    pub(super) qp: BasicQueuePair,
    pub(super) cq: Arc<BasicCompletionQueue>,
    pub(super) channel: Arc<CompletionChannel>,
    pub(super) rx: Registered,
    pub(super) tx: Registered,
    pub(super) pd: Arc<ProtectionDomain>,
    /// Reads this end keeps in flight at most (set by `connect`, from the peer's setup).
    pub(super) read_depth: u32,
    pub(super) sq_depth: u32,
    pub(super) rq_depth: u32,
    pub(super) psn: u32,
}

impl Verbs {
    pub(super) fn new(ip: IpAddr, cap: usize, cfg: &RdmaConfig) -> Result<Verbs, TransportError> {
        let local = open_local(ip)?;
        let sq_depth = cfg.sq_depth.clamp(2, local.max_wr);
        let rq_depth = cfg.rq_depth.clamp(2, local.max_wr);
        let cqe = (sq_depth + rq_depth + 16).min(local.max_cqe);
        if cqe < sq_depth + rq_depth {
            return Err(rdma_err(
                "queue sizes",
                format!("the device's completion queues hold {cqe} entries, fewer than {sq_depth} + {rq_depth}"),
            ));
        }
        let pd = local
            .ctx
            .alloc_pd()
            .map_err(|e| rdma_err("allocate protection domain", e))?;
        let channel = local
            .ctx
            .create_comp_channel()
            .map_err(|e| rdma_err("create completion channel", e))?;
        channel.set_nonblocking(true)?;
        let cq = local
            .ctx
            .create_cq_builder()
            .setup_cqe(cqe)
            .setup_comp_channel(&channel, 0)
            .build()
            .map_err(|e| rdma_err("create completion queue", e))?;
        let mut qp = pd
            .create_qp_builder()
            .setup_max_send_wr(sq_depth)
            .setup_max_recv_wr(rq_depth)
            .setup_max_send_sge(1)
            .setup_max_recv_sge(1)
            .setup_send_cq(GenericCompletionQueue::from(cq.clone()))
            .setup_recv_cq(GenericCompletionQueue::from(cq.clone()))
            .build()
            .map_err(|e| rdma_err("create queue pair", e))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(local.port)
            // Remote read: the peer reads pulled bytes from this side's send ring, and offered ones in place.
            // Remote atomic: the counter word after the receive ring (`COUNTER_BYTES`), for the atomics probe only.
            .setup_access_flags(
                AccessFlags::LocalWrite
                    | AccessFlags::RemoteWrite
                    | AccessFlags::RemoteRead
                    | AccessFlags::RemoteAtomic,
            );
        qp.modify(&attr).map_err(|e| rdma_err("queue pair to INIT", e))?;
        let rx = Registered::new(
            &pd,
            cap + COUNTER_BYTES,
            AccessFlags::LocalWrite | AccessFlags::RemoteWrite | AccessFlags::RemoteAtomic,
        )?;
        let tx = Registered::new(&pd, cap, AccessFlags::LocalWrite | AccessFlags::RemoteRead)?;
        let mut ep = Verbs {
            local,
            qp,
            cq,
            channel,
            rx,
            tx,
            pd,
            read_depth: 1,
            sq_depth,
            rq_depth,
            psn: random_psn(),
        };
        post_recvs(&mut ep.qp, rq_depth)?;
        Ok(ep)
    }

    pub(super) fn setup(&self, cap: usize) -> Setup {
        Setup {
            cap: cap as u64,
            ring_addr: self.rx.addr(),
            rkey: self.rx.rkey(),
            qpn: self.qp.qp_number(),
            psn: self.psn,
            lid: self.local.lid,
            mtu: self.local.mtu as u8,
            read_depth: self.local.dest_read_depth as u8,
            gid: self.local.gid.raw,
            tx_addr: self.tx.addr(),
            tx_rkey: self.tx.rkey(),
        }
    }

    /// Moves the queue pair to ready-to-receive, then ready-to-send, towards `peer`.
    pub(super) fn connect(&mut self, peer: &Setup) -> Result<(), TransportError> {
        let mtu = mtu_of(peer.mtu.min(self.local.mtu as u8) as u32).unwrap_or(Mtu::Mtu1024);
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(mtu)
            .setup_dest_qp_num(peer.qpn)
            .setup_rq_psn(peer.psn)
            .setup_max_dest_read_atomic(self.local.dest_read_depth as u8)
            .setup_min_rnr_timer(12);
        let mut ah = AddressHandleAttribute::new();
        ah.setup_dest_lid(peer.lid)
            .setup_port(self.local.port)
            .setup_service_level(0)
            .setup_grh_src_gid_index(self.local.gid_index as u8)
            .setup_grh_dest_gid(&Gid { raw: peer.gid })
            .setup_grh_hop_limit(64);
        attr.setup_address_vector(&ah);
        self.qp
            .modify(&attr)
            .map_err(|e| rdma_err("queue pair to RTR (is the peer's address reachable over RDMA?)", e))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(self.psn)
            // 4.096 µs * 2^18 = 1.07 s per try, 7 tries: an unreachable peer is an error within about 8 s (a peer
            // process that dies is noticed at once on the setup connection). Not shorter: an acknowledgement later
            // than this makes the NIC resend, and Soft-RoCE (rdma_rxe, Debian 12's kernel) can resend a multi-packet
            // write with lengths its own responder refuses ("remote invalid request"), ending the channel; under
            // emulation 67 ms (2^14) was too short for a 4 MiB ring's worth of writes, so 64 MiB copies failed.
            .setup_timeout(18)
            .setup_retry_cnt(7)
            // 7: a peer that has no receive posted is retried without limit (it is busy, not gone).
            .setup_rnr_retry(7)
            .setup_max_read_atomic(self.read_depth_towards(peer) as u8);
        self.qp.modify(&attr).map_err(|e| rdma_err("queue pair to RTS", e))?;
        self.read_depth = self.read_depth_towards(peer);
        Ok(())
    }
}

impl Verbs {
    /// Reads in flight towards `peer`: what this device initiates and the peer serves, both at most.
    fn read_depth_towards(&self, peer: &Setup) -> u32 {
        self.local.init_read_depth.min(peer.read_depth as u32).max(1)
    }
}

pub(super) fn post_recvs(qp: &mut BasicQueuePair, n: u32) -> Result<(), TransportError> {
    let mut left = n;
    while left > 0 {
        let batch = left.min(256);
        let mut guard = qp.start_post_recv();
        for _ in 0..batch {
            // No scatter entry: writes with immediate place their data themselves and only consume the request.
            let _ = guard.construct_wr(WR_RECV);
        }
        guard.post().map_err(|e| rdma_err("post receive requests", e))?;
        left -= batch;
    }
    Ok(())
}
