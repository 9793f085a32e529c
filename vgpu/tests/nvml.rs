//! vGPU's `libnvidia-ml.so.1` end to end on the emulated backend: a child process started by `vgpu run` loads the
//! built NVML and CUDA shims and checks that NVML agrees with CUDA and follows NVML's contracts; `vgpu smi`.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::process::Command;

use vgpu_cuda_sys::driver::{CUdevice_attribute, CUuuid};
use vgpu_cuda_sys::nvml::*;
use vgpu_cuda_sys::{DriverLibrary, NvmlLibrary};

mod common;

use common::{rand_tag, start, VGPU};

const LIMIT_MIB: u64 = 512;

/// The folder `vgpu run` puts first on LD_LIBRARY_PATH (where the cargo build's shims are linked).
fn shim_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(VGPU).parent().expect("bin dir").to_path_buf();
    assert!(
        dir.join("libnvidia_ml.so").exists() && dir.join("libcuda.so").exists(),
        "build both shims first: cargo build -p vgpu-client-shim -p vgpu-nvml-shim"
    );
    dir.join("shim")
}

/// Runs the `child` test of this binary through `vgpu run` against `endpoint`.
fn run_child(endpoint: &str, child: &str, env: &[(&str, &str)]) -> (bool, String) {
    let me = std::env::current_exe().expect("test binary");
    let out = Command::new(VGPU)
        .args(["run", "--server", endpoint, "--"])
        .arg(me)
        .args([child, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("VGPU_NVML_TEST_CHILD", "1")
        .envs(env.iter().copied())
        .output()
        .expect("vgpu run");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn nvml_agrees_with_cuda_and_follows_nvml_contracts() {
    let _ = shim_dir();
    let server = start(&["--memory-limit-mib", &LIMIT_MIB.to_string()]);
    for endpoint in [&server.tcp_url(), &server.shm] {
        let (ok, text) = run_child(endpoint, "child_checks", &[]);
        assert!(ok && text.contains("nvml checks passed"), "{endpoint}: {text}");
    }
}

#[test]
fn foreign_libcuda_gives_driver_not_loaded() {
    // A folder holding vGPU's NVML beside a libcuda.so.1 that is not vGPU's (any other library will do).
    let dir = std::env::temp_dir().join(format!("vgpu-nvml-foreign-{}-{}", std::process::id(), rand_tag()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let built = shim_dir().join("..").join("libnvidia_ml.so");
    std::fs::copy(&built, dir.join("libnvidia-ml.so.1")).expect("copy the NVML shim");
    let other = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("a libm to stand in for a foreign libcuda.so.1");
    std::os::unix::fs::symlink(other, dir.join("libcuda.so.1")).expect("link");
    let me = std::env::current_exe().expect("test binary");
    let out = Command::new(me)
        .args([
            "child_foreign",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VGPU_NVML_TEST_CHILD", "1")
        .env("VGPU_NVML_TEST_DIR", &dir)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("child");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("foreign checks passed"), "{text}");
}

#[test]
fn smi_shows_the_session_through_the_nvml_shim() {
    let _ = shim_dir();
    let server = start(&["--memory-limit-mib", &LIMIT_MIB.to_string()]);
    let out = Command::new(VGPU)
        .args(["smi", "--server", &server.tcp_url()])
        .output()
        .expect("vgpu smi");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/vgpu"),
        prepend_module_to_snapshot => true,
    }, { insta::assert_snapshot!(text) });

    let out = Command::new(VGPU)
        .args(["smi", "--json"])
        .env("VGPU_SERVER", &server.shm)
        .output()
        .expect("vgpu smi --json");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["backend"], "emulated");
    assert_eq!(v["gpus"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["gpus"][0]["memory"]["total_bytes"], LIMIT_MIB << 20);
    assert_eq!(v["gpus"][0]["memory"]["used_bytes"], 0);

    // An unreachable server is an NVML error, not a crash.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = Command::new(VGPU)
        .args(["smi", "--server", &format!("tcp://127.0.0.1:{port}")])
        .output()
        .expect("vgpu smi");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Driver Not Loaded"), "{err}");
}

// ---- What the children run (inside `vgpu run`, or with a foreign libcuda.so.1) ----

const NVML_SUCCESS: u32 = 0;
const UNINITIALIZED: u32 = 1;
const INVALID_ARGUMENT: u32 = 2;
const NOT_SUPPORTED: u32 = 3;
const NOT_FOUND: u32 = 6;
const INSUFFICIENT_SIZE: u32 = 7;
const DRIVER_NOT_LOADED: u32 = 9;
const ARGUMENT_VERSION_MISMATCH: u32 = 25;

type Dev = nvmlDevice_t;

fn c_text(buf: &[c_char]) -> String {
    // SAFETY: the library NUL-terminated the buffer (checked callers pass buffers it filled).
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

#[test]
#[ignore = "run by nvml_agrees_with_cuda_and_follows_nvml_contracts through vgpu run"]
fn child_checks() {
    if std::env::var_os("VGPU_NVML_TEST_CHILD").is_none() {
        return;
    }
    // SAFETY (this test): loading the shims `vgpu run` put first on LD_LIBRARY_PATH, and calling their
    // entry points with out-pointers to locals, as nvml.h and cuda.h document.
    unsafe {
        let nvml = NvmlLibrary::load_any("libnvidia-ml.so.1").expect("load libnvidia-ml.so.1");
        nvml.library()
            .get::<*const u32>(b"vgpu_nvml_shim_marker\0")
            .expect("the libnvidia-ml.so.1 loaded is vGPU's");
        // Each entry point through nvml.h's own declaration, its nvmlReturn_t compared as a number.
        let init = || nvml.nvmlInit_v2().0;
        let shutdown = || nvml.nvmlShutdown().0;
        let count = |n: *mut c_uint| nvml.nvmlDeviceGetCount_v2(n).0;
        let by_index = |i: c_uint, h: *mut Dev| nvml.nvmlDeviceGetHandleByIndex_v2(i, h).0;
        let by_uuid = |u: *const c_char, h: *mut Dev| nvml.nvmlDeviceGetHandleByUUID(u, h).0;
        let by_pci = |b: *const c_char, h: *mut Dev| nvml.nvmlDeviceGetHandleByPciBusId_v2(b, h).0;
        let get_name = |h: Dev, b: *mut c_char, n: c_uint| nvml.nvmlDeviceGetName(h, b, n).0;
        let get_uuid = |h: Dev, b: *mut c_char, n: c_uint| nvml.nvmlDeviceGetUUID(h, b, n).0;
        let get_index = |h: Dev, i: *mut c_uint| nvml.nvmlDeviceGetIndex(h, i).0;
        let get_pci = |h: Dev, p: *mut nvmlPciInfo_t| nvml.nvmlDeviceGetPciInfo_v3(h, p).0;
        let mem_info = |h: Dev, m: *mut nvmlMemory_t| nvml.nvmlDeviceGetMemoryInfo(h, m).0;
        let mem_info_v2 = |h: Dev, m: *mut nvmlMemory_v2_t| nvml.nvmlDeviceGetMemoryInfo_v2(h, m).0;
        let procs_v1 =
            |h: Dev, n: *mut c_uint, l: *mut nvmlProcessInfo_v1_t| nvml.nvmlDeviceGetComputeRunningProcesses(h, n, l).0;
        let procs_v3 =
            |h: Dev, n: *mut c_uint, l: *mut nvmlProcessInfo_t| nvml.nvmlDeviceGetComputeRunningProcesses_v3(h, n, l).0;
        let cuda_version = |v: *mut c_int| nvml.nvmlSystemGetCudaDriverVersion_v2(v).0;
        let cc = |h: Dev, a: *mut c_int, b: *mut c_int| nvml.nvmlDeviceGetCudaComputeCapability(h, a, b).0;
        let nvlink = |h: Dev, link: c_uint, t: *mut c_uint| {
            nvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, link, t as *mut nvmlIntNvLinkDeviceType_t)
                .0
        };
        let p2p = |a: Dev, b: Dev, index: c_uint, status: *mut c_uint| {
            nvml.nvmlDeviceGetP2PStatus(a, b, nvmlGpuP2PCapsIndex_t(index), status as *mut nvmlGpuP2PStatus_t)
                .0
        };
        let fan = |h: Dev, t: *mut c_uint| nvml.nvmlDeviceGetFanSpeed(h, t).0;
        let error_string = |code: u32| nvml.nvmlErrorString(nvmlReturn_t(code));

        // Before nvmlInit every call is NVML_ERROR_UNINITIALIZED.
        let mut n: c_uint = 99;
        assert_eq!(count(&mut n), UNINITIALIZED);
        assert_eq!(shutdown(), UNINITIALIZED);
        assert_eq!(fan(std::ptr::null_mut(), &mut n), UNINITIALIZED);
        assert_eq!(init(), NVML_SUCCESS);

        let cuda = DriverLibrary::load_any("libcuda.so.1").expect("load libcuda.so.1");
        let cu_init = |f: c_uint| cuda.cuInit(f).0;
        let cu_count = |n: *mut c_int| cuda.cuDeviceGetCount(n).0;
        let cu_uuid = |u: *mut [u8; 16], d: c_int| cuda.cuDeviceGetUuid_v2(u as *mut CUuuid, d).0;
        let cu_name = |b: *mut c_char, n: c_int, d: c_int| cuda.cuDeviceGetName(b, n, d).0;
        let cu_attr =
            |v: *mut c_int, a: c_int, d: c_int| cuda.cuDeviceGetAttribute(v, CUdevice_attribute(a as u32), d).0;
        let cu_bus_id = |b: *mut c_char, n: c_int, d: c_int| cuda.cuDeviceGetPCIBusId(b, n, d).0;
        let cu_version = |v: *mut c_int| cuda.cuDriverGetVersion(v).0;
        let cu_retain = |c: *mut vgpu_cuda_sys::driver::CUcontext, d: c_int| cuda.cuDevicePrimaryCtxRetain(c, d).0;
        let cu_set_current = |c: vgpu_cuda_sys::driver::CUcontext| cuda.cuCtxSetCurrent(c).0;
        let cu_alloc = |p: *mut u64, n: usize| cuda.cuMemAlloc_v2(p, n).0;
        let cu_free = |p: u64| cuda.cuMemFree_v2(p).0;
        assert_eq!(cu_init(0), 0);

        let mut cu_n: c_int = 0;
        assert_eq!(cu_count(&mut cu_n), 0);
        assert_eq!(count(&mut n), NVML_SUCCESS);
        assert_eq!(n as c_int, cu_n, "NVML and CUDA must see the same devices");
        assert!(n >= 1);
        let mut v: c_int = 0;
        let mut cv: c_int = 0;
        assert_eq!(cuda_version(&mut v), NVML_SUCCESS);
        assert_eq!(cu_version(&mut cv), 0);
        assert_eq!(v, cv);

        let mut handles = Vec::new();
        for i in 0..n {
            let mut h: Dev = std::ptr::null_mut();
            assert_eq!(by_index(i, &mut h), NVML_SUCCESS);
            let mut again: Dev = std::ptr::null_mut();
            assert_eq!(by_index(i, &mut again), NVML_SUCCESS);
            assert_eq!(h, again, "handles are stable");
            let mut idx: c_uint = 99;
            assert_eq!(get_index(h, &mut idx), NVML_SUCCESS);
            assert_eq!(idx, i);

            // UUID: CUDA's 16 bytes in NVIDIA's GPU-8-4-4-4-12 form.
            let mut raw = [0u8; 16];
            assert_eq!(cu_uuid(&mut raw, i as c_int), 0);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let want = format!(
                "GPU-{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            let mut buf = [0 as c_char; 96];
            assert_eq!(get_uuid(h, buf.as_mut_ptr(), 96), NVML_SUCCESS);
            assert_eq!(c_text(&buf), want);

            let mut cu_buf = [0 as c_char; 256];
            assert_eq!(cu_name(cu_buf.as_mut_ptr(), 256, i as c_int), 0);
            assert_eq!(get_name(h, buf.as_mut_ptr(), 96), NVML_SUCCESS);
            assert_eq!(c_text(&buf), c_text(&cu_buf));

            // PCI: NVML's "%08X:%02X:%02X.0" from CUDA's domain, bus and device attributes.
            let attr = |a: c_int| {
                let mut v: c_int = -1;
                assert_eq!(cu_attr(&mut v, a, i as c_int), 0);
                v as u32
            };
            let (domain, bus, dev) = (attr(50), attr(33), attr(34));
            let mut pci = nvmlPciInfo_t::default();
            assert_eq!(get_pci(h, &mut pci), NVML_SUCCESS);
            let bus_id = c_text(&pci.busId);
            assert_eq!(bus_id, format!("{domain:08X}:{bus:02X}:{dev:02X}.0"));
            assert_eq!(bus_id.len(), 16);
            assert_eq!(c_text(&pci.busIdLegacy), format!("{domain:04X}:{bus:02X}:{dev:02X}.0"));
            assert_eq!((pci.domain, pci.bus, pci.device), (domain, bus, dev));

            // Handle round trips: by UUID, by NVML's bus id, by CUDA's form of it.
            let mut found: Dev = std::ptr::null_mut();
            let c = CString::new(want.clone()).expect("uuid");
            assert_eq!(by_uuid(c.as_ptr(), &mut found), NVML_SUCCESS);
            assert_eq!(found, h);
            let c = CString::new(bus_id.clone()).expect("bus id");
            found = std::ptr::null_mut();
            assert_eq!(by_pci(c.as_ptr(), &mut found), NVML_SUCCESS);
            assert_eq!(found, h);
            assert_eq!(cu_bus_id(cu_buf.as_mut_ptr(), 64, i as c_int), 0);
            found = std::ptr::null_mut();
            assert_eq!(by_pci(cu_buf.as_ptr(), &mut found), NVML_SUCCESS);
            assert_eq!(found, h);

            let (mut major, mut minor) = (0, 0);
            assert_eq!(cc(h, &mut major, &mut minor), NVML_SUCCESS);
            assert_eq!((major as u32, minor as u32), (attr(75), attr(76)));
            handles.push(h);
        }
        let h = handles[0];

        // Memory: the session's limit is the total; a cuMemAlloc in this process shows as used.
        let want_total = std::env::var("VGPU_NVML_LIMIT_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(LIMIT_MIB)
            << 20;
        let mut m = nvmlMemory_t::default();
        assert_eq!(mem_info(h, &mut m), NVML_SUCCESS);
        assert_eq!(m.total, want_total);
        assert_eq!(m.used + m.free, m.total);
        let used_before = m.used;
        let mut listed: c_uint = 0;
        assert_eq!(procs_v3(h, &mut listed, std::ptr::null_mut()), NVML_SUCCESS);
        assert_eq!(listed, 0, "no context yet: no process");

        let mut ctx = std::ptr::null_mut();
        assert_eq!(cu_retain(&mut ctx, 0), 0);
        assert_eq!(cu_set_current(ctx), 0);
        let mut dptr = 0u64;
        assert_eq!(cu_alloc(&mut dptr, 64 << 20), 0);
        assert_eq!(mem_info(h, &mut m), NVML_SUCCESS);
        assert_eq!(m.used, used_before + (64 << 20), "{m:?}");
        assert_eq!(m.free, m.total - m.used);
        let mut m2 = nvmlMemory_v2_t {
            version: 1,
            ..Default::default()
        };
        assert_eq!(mem_info_v2(h, &mut m2), ARGUMENT_VERSION_MISMATCH);
        m2.version = std::mem::size_of::<nvmlMemory_v2_t>() as c_uint | (2 << 24);
        assert_eq!(mem_info_v2(h, &mut m2), NVML_SUCCESS);
        assert_eq!((m2.total, m2.used, m2.free), (m.total, m.used, m.free));

        // Processes: this process, with its memory; a too-small array is INSUFFICIENT_SIZE with the count.
        listed = 0;
        assert_eq!(procs_v3(h, &mut listed, std::ptr::null_mut()), INSUFFICIENT_SIZE);
        assert_eq!(listed, 1);
        let mut list = [nvmlProcessInfo_t::default(); 4];
        listed = 4;
        assert_eq!(procs_v3(h, &mut listed, list.as_mut_ptr()), NVML_SUCCESS);
        assert_eq!(listed, 1);
        assert_eq!(list[0].pid, std::process::id());
        assert!(list[0].usedGpuMemory >= 64 << 20, "{:?}", list[0]);
        assert_eq!((list[0].gpuInstanceId, list[0].computeInstanceId), (u32::MAX, u32::MAX));
        let mut list1 = [nvmlProcessInfo_v1_t::default(); 2];
        listed = 2;
        assert_eq!(procs_v1(h, &mut listed, list1.as_mut_ptr()), NVML_SUCCESS);
        assert_eq!((listed, list1[0].pid), (1, std::process::id()));
        assert_eq!(procs_v3(h, std::ptr::null_mut(), list.as_mut_ptr()), INVALID_ARGUMENT);
        assert_eq!(cu_free(dptr), 0);
        assert_eq!(mem_info(h, &mut m), NVML_SUCCESS);
        assert_eq!(m.used, used_before);

        // Bad arguments.
        let mut bad: Dev = std::ptr::null_mut();
        assert_eq!(count(std::ptr::null_mut()), INVALID_ARGUMENT);
        assert_eq!(by_index(n, &mut bad), INVALID_ARGUMENT);
        assert_eq!(by_index(0, std::ptr::null_mut()), INVALID_ARGUMENT);
        let mut small = [0 as c_char; 4];
        assert_eq!(get_name(h, small.as_mut_ptr(), 4), INSUFFICIENT_SIZE);
        assert_eq!(get_uuid(h, small.as_mut_ptr(), 4), INSUFFICIENT_SIZE);
        assert_eq!(get_uuid(h, std::ptr::null_mut(), 80), INVALID_ARGUMENT);
        let bogus = &mut m as *mut nvmlMemory_t as Dev;
        assert_eq!(mem_info(bogus, &mut m), INVALID_ARGUMENT);
        assert_eq!(mem_info(std::ptr::null_mut(), &mut m), INVALID_ARGUMENT);
        assert_eq!(mem_info(h, std::ptr::null_mut()), INVALID_ARGUMENT);
        let c = CString::new("GPU-00000000-0000-0000-0000-000000000000").expect("uuid");
        assert_eq!(by_uuid(c.as_ptr(), &mut bad), NOT_FOUND);
        let c = CString::new("not a bus id").expect("text");
        assert_eq!(by_pci(c.as_ptr(), &mut bad), INVALID_ARGUMENT);
        assert_eq!(by_uuid(std::ptr::null(), &mut bad), INVALID_ARGUMENT);

        // Unremoted features answer as a GPU without them does.
        let mut t: c_uint = 0;
        assert_eq!(nvlink(h, 0, &mut t), NOT_SUPPORTED);
        // NCCL asks every pair, a device with itself included, and fails its set-up on an error.
        let mut p2p_status: c_uint = 99;
        assert_eq!(p2p(h, h, 0, &mut p2p_status), NVML_SUCCESS);
        assert_eq!(p2p_status, 0, "a GPU reaches itself (NVML_P2P_STATUS_OK)");
        assert_eq!(p2p(h, h, 9, &mut p2p_status), INVALID_ARGUMENT);
        assert_eq!(fan(h, &mut t), NOT_SUPPORTED);
        assert_eq!(
            CStr::from_ptr(error_string(INSUFFICIENT_SIZE)).to_str(),
            Ok("Insufficient Size")
        );

        // Init and shutdown nest; after the last shutdown, calls are UNINITIALIZED again.
        assert_eq!(init(), NVML_SUCCESS);
        assert_eq!(shutdown(), NVML_SUCCESS);
        assert_eq!(count(&mut n), NVML_SUCCESS);
        assert_eq!(shutdown(), NVML_SUCCESS);
        assert_eq!(count(&mut n), UNINITIALIZED);
        assert_eq!(shutdown(), UNINITIALIZED);
        println!("nvml checks passed");
    }
}

#[test]
#[ignore = "run by foreign_libcuda_gives_driver_not_loaded"]
fn child_foreign() {
    let Some(dir) = std::env::var_os("VGPU_NVML_TEST_DIR") else {
        return;
    };
    let path = std::path::Path::new(&dir).join("libnvidia-ml.so.1");
    // SAFETY: loading the NVML shim and calling its entry points with out-pointers to locals.
    unsafe {
        let nvml = NvmlLibrary::load_any(&path.display().to_string()).expect("load the NVML shim");
        let init = || nvml.nvmlInit_v2().0;
        let count = |n: *mut c_uint| nvml.nvmlDeviceGetCount_v2(n).0;
        assert_eq!(init(), DRIVER_NOT_LOADED);
        let mut n: c_uint = 0;
        assert_eq!(count(&mut n), UNINITIALIZED);
        assert_eq!(init(), DRIVER_NOT_LOADED);
    }
    println!("foreign checks passed");
}
