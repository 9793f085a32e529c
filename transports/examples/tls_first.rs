//! Times the first TLS client set-up in a fresh process (one-time initialisation of the crypto library included),
//! then a second one: `cargo run --example tls_first [HOST:PORT [FINGERPRINT]]` also times two connections.
fn main() {
    let t0 = std::time::Instant::now();
    let s = vgpu_transports::tls::ClientSettings::new(vgpu_transports::tls::ServerCheck::Pin([0; 32]), None);
    println!("first ClientSettings::new: {:?} ({})", t0.elapsed(), s.is_ok());
    let t1 = std::time::Instant::now();
    let _ = vgpu_transports::tls::ClientSettings::new(vgpu_transports::tls::ServerCheck::Pin([0; 32]), None);
    println!("second: {:?}", t1.elapsed());
    let addr = std::env::args().nth(1).unwrap_or_default();
    if !addr.is_empty() {
        let t2 = std::time::Instant::now();
        let r = vgpu_transports::tls::connect(&addr, std::env::args().nth(2).as_deref(), &0u32.to_le_bytes());
        println!("first connect: {:?} ({})", t2.elapsed(), r.is_ok());
        let t3 = std::time::Instant::now();
        let r = vgpu_transports::tls::connect(&addr, std::env::args().nth(2).as_deref(), &0u32.to_le_bytes());
        println!("second connect: {:?} ({})", t3.elapsed(), r.is_ok());
    }
}
