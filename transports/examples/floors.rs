//! Prints the transport floors on this host (`cargo run --release -p vgpu-transports --example floors`), the same
//! figures `vgpu bench` shows beside its ratios.

use vgpu_transports::floor;

fn main() -> std::io::Result<()> {
    let iters = 20_000;
    let bytes = 2usize << 30;
    println!(
        "tcp pingpong  {:8.2} µs (median of {iters})",
        floor::tcp_pingpong_us(iters)?
    );
    println!(
        "shm pingpong  {:8.2} µs (median of {iters})",
        floor::shm_pingpong_us(iters)?
    );
    println!(
        "tcp bulk      {:8.2} GB/s ({} MiB)",
        floor::tcp_bulk_gbps(bytes)?,
        bytes >> 20
    );
    println!(
        "shm bulk      {:8.2} GB/s ({} MiB)",
        floor::shm_bulk_gbps(bytes)?,
        bytes >> 20
    );
    Ok(())
}
