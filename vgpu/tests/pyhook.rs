//! `vgpu run`'s Python start-up hook: JAX's device-file check answers True under `vgpu run` on a machine without
//! /dev/nvidia*, and only there; the sitecustomize it hides still runs. A stand-in `jax` package plays JAX (the
//! check is a file test; the real JAX is exercised by tests/frameworks on the emulated backend).

use std::path::Path;
use std::process::Command;

const VGPU: &str = env!("CARGO_BIN_EXE_vgpu");

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("folder");
    }
    std::fs::write(path, text).expect("file");
}

#[test]
fn jax_sees_a_gpu_under_vgpu_run_without_device_nodes() {
    let root = std::env::temp_dir().join(format!("vgpu-pyhook-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // `vgpu run` needs a folder holding a libcuda.so.1 to put first; Python never loads it here.
    write(&root.join("shim/libcuda.so.1"), "");
    let fake = root.join("fake");
    write(&fake.join("jax/__init__.py"), "");
    write(&fake.join("jax/_src/__init__.py"), "");
    write(
        &fake.join("jax/_src/hardware_utils.py"),
        "def has_visible_nvidia_gpu():\n    return False\n",
    );
    let hidden = root.join("hidden");
    write(
        &hidden.join("sitecustomize.py"),
        "import sys\nsys.stderr.write('hidden sitecustomize ran\\n')\n",
    );
    let python_path = format!("{}:{}", fake.display(), hidden.display());
    let script = "import jax._src.hardware_utils as h; print(h.has_visible_nvidia_gpu())";
    let run = |through_vgpu: bool| {
        let mut cmd = if through_vgpu {
            let mut c = Command::new(VGPU);
            c.args(["run", "--server", "tcp://127.0.0.1:9", "--", "python3", "-c", script]);
            c
        } else {
            let mut c = Command::new("python3");
            c.args(["-c", script]);
            c
        };
        let out = cmd
            .env("VGPU_SHIM_DIR", root.join("shim"))
            .env("XDG_CACHE_HOME", root.join("cache"))
            .env("PYTHONPATH", &python_path)
            .env_remove("VGPU_RUN")
            .output()
            .expect("python3 runs (it is a build requirement of the repository)");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let nodes = ["/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"]
        .iter()
        .any(|d| Path::new(d).exists());
    let (plain, _) = run(false);
    assert_eq!(plain, "False", "without vgpu run the check is JAX's own");
    let (out, err) = run(true);
    assert!(
        err.contains("hidden sitecustomize ran"),
        "the hidden sitecustomize ran: {err}"
    );
    if nodes {
        assert_eq!(out, "False", "a machine with device nodes keeps JAX's own check");
        assert!(!err.contains("vgpu run: no /dev/nvidia*"), "{err}");
    } else {
        assert_eq!(out, "True", "stderr: {err}");
        assert!(
            err.contains("vgpu run: no /dev/nvidia* device node on this machine"),
            "{err}"
        );
    }
    assert!(root.join("cache/vgpu/python/sitecustomize.py").exists());
    let _ = std::fs::remove_dir_all(&root);
}
