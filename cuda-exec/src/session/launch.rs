//! Handlers: kernel launches (the argument buffer must match the function's parameter layout exactly) and the
//! occupancy questions the server's driver answers.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};

impl Channel {
    fn launch(&mut self, function: FunctionId, stream: StreamId, shape: LaunchShape, per_thread: bool) -> CuResult<()> {
        let f = self.function(function)?;
        if self.tail.len() != f.args_size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let stream = self.stream(stream, per_thread)?;
        self.gate.submit(stream.0, crate::sched::Work::Launch);
        let session = self.session.clone();
        session
            .backend
            .launch(f.callable, stream, &shape, &mut self.tail, &f.params)
    }
}

impl Serve<LaunchKernel> for Channel {
    fn serve(&mut self, c: LaunchKernel, cx: &mut Cx<'_>) -> Served<Empty> {
        let shape = LaunchShape::from_dims(c.dims, [1, 1, 1]);
        Ok(self
            .launch(c.function, c.stream, shape, cx.per_thread)
            .map(|_| Empty {}))
    }
}

impl Serve<LaunchKernelEx> for Channel {
    fn serve(&mut self, c: LaunchKernelEx, cx: &mut Cx<'_>) -> Served<Empty> {
        let shape = LaunchShape::from_dims(c.dims, c.cluster);
        Ok(self
            .launch(c.function, c.stream, shape, cx.per_thread)
            .map(|_| Empty {}))
    }
}

impl Serve<OccupancyActiveBlocks> for Channel {
    fn serve(&mut self, c: OccupancyActiveBlocks, _cx: &mut Cx<'_>) -> Served<OccupancyReply> {
        Ok(self.function(c.function).and_then(|f| {
            self.b()
                .occupancy_active_blocks(f.callable, c.block_size, c.dynamic_smem, c.flags)
                .map(|v| OccupancyReply { value: v as i64 })
        }))
    }
}

impl Serve<OccupancyPotentialBlockSize> for Channel {
    fn serve(&mut self, c: OccupancyPotentialBlockSize, _cx: &mut Cx<'_>) -> Served<OccupancyPotentialReply> {
        let table: Vec<u64> = self
            .tail
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
            .collect();
        Ok(self.function(c.function).and_then(|f| {
            let by_block = (!table.is_empty()).then_some(&table[..]);
            self.b()
                .occupancy_potential_block_size(f.callable, c.dynamic_smem, by_block, c.block_limit, c.flags)
                .map(|(min_grid, block)| OccupancyPotentialReply { min_grid, block })
        }))
    }
}

impl Serve<OccupancyAvailableSmem> for Channel {
    fn serve(&mut self, c: OccupancyAvailableSmem, _cx: &mut Cx<'_>) -> Served<OccupancyReply> {
        Ok(self.function(c.function).and_then(|f| {
            self.b()
                .occupancy_available_smem(f.callable, c.num_blocks, c.block_size)
                .map(|v| OccupancyReply { value: v as i64 })
        }))
    }
}

impl Serve<OccupancyClusters> for Channel {
    fn serve(&mut self, c: OccupancyClusters, _cx: &mut Cx<'_>) -> Served<OccupancyReply> {
        Ok(self.function(c.function).and_then(|f| {
            let shape = LaunchShape {
                grid: [c.grid_x, c.grid_y, c.grid_z],
                block: [c.block_x, c.block_y, c.block_z],
                shared_mem: c.shared_mem,
                cooperative: false,
                cluster: [c.cluster_x, c.cluster_y, c.cluster_z],
            };
            self.b()
                .occupancy_clusters(f.callable, shape, c.potential_size != 0)
                .map(|v| OccupancyReply { value: v as i64 })
        }))
    }
}
