//! Build script: names the library `libnccl.so.2` (SONAME), so a preloaded copy stands in for NVIDIA's wherever a
//! program or library asks for that name.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnccl.so.2");
    println!("cargo:rerun-if-changed=build.rs");
}
