//! `vgpu`: the one user-facing binary. It only parses arguments and wires the library crates together:
//! `server` (cuda-exec), `run` (the shim), `quickstart`, `sample`, `bench`.

mod bench;
mod cuda;
mod local;
mod sample;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vgpu_cuda_exec::{BackendChoice, ServerConfig};

#[derive(Parser)]
#[command(
    name = "vgpu",
    version,
    about = "Run unmodified CUDA programs on GPUs in other machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a server on this machine and run the bundled sample through the shim over TCP and shared memory.
    Quickstart {
        /// Backend for the server: auto (a real GPU if the NVIDIA driver works, else emulated), real, emulated.
        #[arg(long, default_value = "auto")]
        backend: String,
    },
    /// Serve this machine's GPUs (or the emulated backend) to vGPU clients.
    Server {
        /// TCP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7070")]
        tcp: String,
        /// Do not listen on TCP.
        #[arg(long)]
        no_tcp: bool,
        /// Shared-memory endpoint name for clients on this host (shm://NAME).
        #[arg(long, default_value = "vgpu")]
        shm: String,
        /// Do not listen for shared-memory clients.
        #[arg(long)]
        no_shm: bool,
        /// auto, real or emulated.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Path to NVIDIA's libcuda.so.1 (default: the dynamic loader's choice).
        #[arg(long)]
        driver: Option<String>,
        /// Static key clients must present in VGPU_KEY (standalone mode). Also read from VGPU_SERVER_KEY.
        #[arg(long, env = "VGPU_SERVER_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Memory limit per session, in MiB (standalone mode).
        #[arg(long)]
        memory_limit_mib: Option<u64>,
    },
    /// Run a program with vGPU's libcuda.so.1, against the server in --server or VGPU_SERVER.
    Run {
        /// Server endpoint: tcp://host:port or shm://name.
        #[arg(long, env = "VGPU_SERVER", default_value = "tcp://127.0.0.1:7070")]
        server: String,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// The bundled sample (saxpy through the driver API, every result checked).
    Sample,
    /// Measure native against vGPU over TCP and shared memory, in one run, and print the ratios.
    Bench {
        /// Fewer repetitions (a smoke run).
        #[arg(long)]
        quick: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Backend for the vGPU side.
        #[arg(long, default_value = "auto")]
        backend: String,
    },
    #[command(name = "__worker", hide = true)]
    Worker,
    #[command(name = "__probe", hide = true)]
    Probe {
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let filter = std::env::var("VGPU_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpu: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Server {
            tcp,
            no_tcp,
            shm,
            no_shm,
            backend,
            driver,
            key,
            memory_limit_mib,
        } => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            vgpu_cuda_exec::run_server(ServerConfig {
                tcp: (!no_tcp).then_some(tcp),
                shm: (!no_shm).then_some(shm),
                backend: BackendChoice::parse(&backend)?,
                driver,
                key: key.filter(|k| !k.is_empty()),
                memory_limit: memory_limit_mib.map(|m| m << 20),
                worker_command: vec![exe.display().to_string(), "__worker".into()],
            })
        }
        Cmd::Worker => vgpu_cuda_exec::run_worker_from_env(),
        Cmd::Run { server, command } => {
            vgpu_dataplane::Endpoint::parse(&server)?;
            let (program, args) = command.split_first().ok_or("nothing to run")?;
            let err = local::through_shim(program, &server)?.args(args).exec();
            Err(format!("cannot run {}: {err}", program.to_string_lossy()))
        }
        Cmd::Sample => {
            println!("{}", sample::run()?);
            Ok(())
        }
        Cmd::Quickstart { backend } => quickstart(&backend),
        Cmd::Bench { quick, json, backend } => bench::run(quick, json.as_deref(), &backend),
        Cmd::Probe { quick } => bench::probe(quick),
    }
}

fn quickstart(backend: &str) -> Result<(), String> {
    BackendChoice::parse(backend)?;
    println!("vgpu quickstart: starting a GPU server on this machine");
    let server = local::LocalServer::start(backend, &[])?;
    for line in &server.banner {
        println!("  {line}");
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut failed = false;
    for endpoint in [&server.tcp, &server.shm] {
        println!("vgpu quickstart: running the bundled sample through the shim over {endpoint}");
        let out = local::through_shim(&exe, endpoint)?
            .arg("sample")
            .output()
            .map_err(|e| e.to_string())?;
        print!("  {}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            failed = true;
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    if failed {
        return Err("the sample failed through vGPU".into());
    }
    println!(
        "vgpu quickstart: done. Run your own program with: vgpu run --server {} -- ./your-app",
        server.tcp
    );
    Ok(())
}
