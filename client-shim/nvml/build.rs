//! Build script: names the library `libnvidia-ml.so.1` (SONAME), and lists the entry points `src/api.rs`
//! implements so that `exports.rs` exports an `NVML_ERROR_NOT_SUPPORTED` stub for every other name of nvml.h.

#[path = "../build_exports.rs"]
mod build_exports;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo:rerun-if-changed=src/api.rs");
    println!("cargo:rerun-if-changed=../build_exports.rs");
    let text = std::fs::read_to_string("src/api.rs").expect("src/api.rs is readable");
    let mut implemented = Vec::new();
    for line in text.lines() {
        // An entry! item starts with `[names] (`.
        let t = line.trim_start();
        if !t.starts_with("[nvml") {
            continue;
        }
        let Some(end) = t.find("] (") else { continue };
        for name in t[1..end].split(',').map(str::trim).filter(|n| n.starts_with("nvml")) {
            implemented.push(name.to_string());
        }
    }
    // nvmlErrorString returns a string, not an nvmlReturn_t: it is written out by hand in api.rs.
    implemented.push("nvmlErrorString".into());
    build_exports::write_implemented(implemented, "src/api.rs");
}
