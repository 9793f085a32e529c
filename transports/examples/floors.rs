//! Prints the transport floors of this host side by side (loopback TCP, TLS, shared memory): a 64-byte round trip
//! and one-way bulk, each the median of several runs. `cargo run --release -p vgpu-transports --example floors`.

use vgpu_transports::floor;
use vgpu_transports::tls::pki_types::PrivateKeyDer;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::io::Result<()> {
    let runs = 5;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).map_err(std::io::Error::other)?;
    let key = || PrivateKeyDer::try_from(ck.key_pair.serialize_der()).map_err(std::io::Error::other);
    let chain = || vec![ck.cert.der().clone()];
    let bulk = 1usize << 30;
    // Columns: tcp, tls, shm round trips (µs), then tcp, tls, shm bulk (GB/s).
    let mut cols: [Vec<f64>; 6] = Default::default();
    for _ in 0..runs {
        cols[0].push(floor::tcp_pingpong_us(5000)?);
        cols[1].push(floor::tls_pingpong_us(chain(), key()?, 5000)?);
        cols[2].push(floor::shm_pingpong_us(20000)?);
        cols[3].push(floor::tcp_bulk_gbps(bulk)?);
        cols[4].push(floor::tls_bulk_gbps(chain(), key()?, bulk)?);
        cols[5].push(floor::shm_bulk_gbps(bulk)?);
    }
    let [tcp_rt, tls_rt, shm_rt, tcp_bw, tls_bw, shm_bw] = cols.map(median);
    println!(
        "TLS connection set-up (µs, median of 20): {:.0}",
        floor::tls_connect_us(chain(), key()?, 20)?
    );
    println!(
        "64 B round trip (µs, median of {runs}): tcp {tcp_rt:.2}  tls {tls_rt:.2} (+{:.2})  shm {shm_rt:.2}",
        tls_rt - tcp_rt
    );
    println!(
        "bulk 1 GiB (GB/s, median of {runs}):   tcp {tcp_bw:.2}  tls {tls_bw:.2} ({:.2} × tcp)  shm {shm_bw:.2}",
        tls_bw / tcp_bw
    );
    Ok(())
}
