//! Starting a local `vgpu server` as a child process and running programs through the shim: shared by
//! `quickstart`, `bench` and the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A server child, killed when dropped.
pub struct LocalServer {
    child: Child,
    pub tcp: String,
    /// The `tls://host:port#sha256=…` endpoint (loopback, with the certificate's fingerprint to pin).
    pub tls: String,
    pub shm: String,
    /// The `rdma://` endpoint, when the server was asked for one (`--rdma`) and found an RDMA device.
    pub rdma: Option<String>,
    /// What the server printed before it was ready (backend and GPUs).
    pub banner: Vec<String>,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalServer {
    /// The SHA-256 of the server's TLS certificate (what `tls` pins).
    pub fn tls_sha256(&self) -> &str {
        self.tls.split_once("#sha256=").map_or("", |(_, pin)| pin)
    }

    /// The server's process id (its session workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `vgpu server` on a free loopback port and a fresh shared-memory name.
    pub fn start(backend: &str, extra_args: &[&str]) -> Result<LocalServer, String> {
        Self::start_with_env(backend, extra_args, &[])
    }

    /// Like `start`, with extra environment variables (secrets stay out of the process list).
    pub fn start_with_env(backend: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Result<LocalServer, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        Self::spawn(Command::new(exe), "127.0.0.1:0", backend, extra_args, env)
    }

    /// Starts `vgpu server` inside the network namespace `netns`, plain TCP on `ip` (a free port; TLS on the
    /// namespace's loopback only), as `ip netns exec NETNS vgpu server ...` does: for measurements across a
    /// packet-level wire.
    pub fn start_in_netns(netns: &str, ip: std::net::Ipv4Addr, backend: &str) -> Result<LocalServer, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(exe);
        // Plain TCP across the emulated wire is what is measured: allowed on that (non-loopback) address.
        Self::spawn(
            cmd,
            &format!("{ip}:0"),
            backend,
            &["--no-shm", "--allow-plain-tcp"],
            &[],
        )
    }

    /// Runs `cmd server --tcp TCP ...` (cmd: the vgpu binary, or a wrapper that ends with it) and waits until ready.
    fn spawn(
        mut cmd: Command,
        tcp: &str,
        backend: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<LocalServer, String> {
        let shm = format!("vgpu-{}-{}", std::process::id(), rand_suffix());
        let mut child = cmd
            .args([
                "server",
                "--tcp",
                tcp,
                "--tls",
                "127.0.0.1:0",
                "--shm",
                &shm,
                "--backend",
                backend,
            ])
            .args(extra_args)
            .envs(env.iter().copied())
            .env_remove("LD_LIBRARY_PATH")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start vgpu server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout from the server")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    return Err(format!(
                        "vgpu server did not become ready; it said: {}",
                        banner.join(" | ")
                    ));
                }
            };
            if let Some(rest) = line.split("ready on ").nth(1) {
                let tcp = rest
                    .split(", ")
                    .find(|e| e.starts_with("tcp://"))
                    .map(str::to_string)
                    .ok_or("server is ready but printed no tcp endpoint")?;
                let tls = rest
                    .split(", ")
                    .find(|e| e.starts_with("tls://"))
                    .map(|e| e.trim().to_string())
                    .ok_or("server is ready but printed no tls endpoint")?;
                let rdma = rest
                    .split(", ")
                    .find(|e| e.starts_with("rdma://"))
                    .map(|e| e.trim().to_string());
                // Keep draining the server's output so it never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return Ok(LocalServer {
                    child,
                    tcp,
                    tls,
                    shm: format!("shm://{shm}"),
                    rdma,
                    banner,
                });
            }
            banner.push(line);
        }
    }
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// The folder holding vGPU's `libcuda.so.1` (and `libnvidia-ml.so.1`, where built): `VGPU_SHIM_DIR`, `lib/`
/// beside the binary, or the cargo build output beside the binary (where `shim/libcuda.so.1` and
/// `shim/libnvidia-ml.so.1` links to `libcuda.so` and `libnvidia_ml.so` are made on first use).
pub fn shim_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("VGPU_SHIM_DIR") {
        let dir = PathBuf::from(dir);
        if dir.join("libcuda.so.1").exists() {
            return Ok(dir);
        }
        return Err(format!("VGPU_SHIM_DIR={} holds no libcuda.so.1", dir.display()));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin_dir = exe.parent().ok_or("binary has no folder")?;
    let lib = bin_dir.join("lib");
    if lib.join("libcuda.so.1").exists() {
        return Ok(lib);
    }
    let built = bin_dir.join("libcuda.so");
    if built.exists() {
        let shim = bin_dir.join("shim");
        std::fs::create_dir_all(&shim).map_err(|e| format!("cannot create {}: {e}", shim.display()))?;
        // Programs that load NVML (PyTorch, monitoring tools) must find vGPU's, which answers for the same
        // session and devices, not NVIDIA's: both go in the folder `vgpu run` puts first.
        for (built, soname) in [
            ("libcuda.so", "libcuda.so.1"),
            ("libnvidia_ml.so", "libnvidia-ml.so.1"),
            ("libnccl.so", "libnccl.so.2"),
        ] {
            let link = shim.join(soname);
            if bin_dir.join(built).exists() && !link.exists() {
                let _ = std::fs::remove_file(&link);
                // Another `vgpu run` starting at the same moment may have made it first.
                match std::os::unix::fs::symlink(Path::new("..").join(built), &link) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(format!("cannot link {}: {e}", link.display()));
                    }
                    _ => {}
                }
            }
        }
        return Ok(shim);
    }
    Err(format!(
        "vGPU's libcuda.so.1 is not next to {} (build it with `cargo build --release -p vgpu-client-shim`, \
         or set VGPU_SHIM_DIR)",
        exe.display()
    ))
}

/// A command that runs through the shim against `server` (`None`: the shim decides, from VGPU_SERVER or the
/// control plane's ticket).
pub fn through_shim(program: impl AsRef<std::ffi::OsStr>, server: Option<&str>) -> Result<Command, String> {
    let dir = shim_dir()?;
    let mut cmd = Command::new(program);
    let old = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let path = if old.is_empty() {
        dir.display().to_string()
    } else {
        format!("{}:{old}", dir.display())
    };
    cmd.env("LD_LIBRARY_PATH", path);
    // vGPU's NCCL must win over NVIDIA's, which PyTorch's libraries find through their RPATH (searched before
    // LD_LIBRARY_PATH): preloaded, its symbols come first. `VGPU_NCCL=off` leaves NCCL alone.
    let nccl = dir.join("libnccl.so.2");
    if nccl.exists() && std::env::var("VGPU_NCCL").map_or(true, |v| v != "off") {
        let old = std::env::var("LD_PRELOAD").unwrap_or_default();
        let preload = if old.is_empty() {
            nccl.display().to_string()
        } else {
            format!("{}:{old}", nccl.display())
        };
        cmd.env("LD_PRELOAD", preload);
    }
    if let Some(server) = server {
        cmd.env("VGPU_SERVER", server);
    }
    Ok(cmd)
}
