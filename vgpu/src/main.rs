//! `vgpu`: the one user-facing binary. It only parses arguments and wires the library crates together:
//! `server` (cuda-exec), `control` and `admin` (the control plane), `run` and `smi` (the shims), `quickstart`,
//! `sample`, `bench`.

mod bench;
mod bench_peer;
mod controlled;
mod copydata;
mod cuda;
mod fairness;
mod ipccheck;
mod links;
mod local;
mod multicheck;
mod ncclcheck;
mod nvml;
mod pyhook;
mod quickstart;
mod sample;
mod serve;
mod smi;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use vgpu_cuda_exec::{Authority, BackendChoice, ServerConfig, StaticKey};

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
    /// Start a control plane and a GPU server on this machine, give a tenant a key and a GPU slice, and run the
    /// bundled sample with that key through the shim over TCP and shared memory; then show its metered usage.
    Quickstart {
        /// Backend for the server: auto (a real GPU if the NVIDIA driver works, else emulated), real, emulated.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// No control plane: a server without a key, and the sample against it.
        #[arg(long)]
        standalone: bool,
    },
    /// Serve this machine's GPUs (or the emulated backend) to vGPU clients: over TLS to other hosts, plain TCP
    /// on loopback, shared memory on this host.
    Server {
        /// Plain TCP address to listen on (loopback unless --allow-plain-tcp).
        #[arg(long, default_value = "127.0.0.1:7070")]
        tcp: String,
        /// Do not listen on plain TCP.
        #[arg(long)]
        no_tcp: bool,
        #[command(flatten)]
        security: Box<serve::SecurityArgs>,
        #[command(flatten)]
        admission: Box<serve::AdmissionArgs>,
        /// Shared-memory endpoint name for clients on this host (shm://NAME).
        #[arg(long, default_value = "vgpu")]
        shm: String,
        /// Do not listen for shared-memory clients.
        #[arg(long)]
        no_shm: bool,
        /// Also serve RDMA clients (rdma://ADDR): ADDR is the TCP address where queue pairs are exchanged, e.g.
        /// 0.0.0.0:7071. Served only when this host has an active RDMA port (the server says why not otherwise).
        #[arg(long)]
        rdma: Option<String>,
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
        /// Keys with plans (standalone mode): one per line, `KEY SHARE [guaranteed|burst|preemptible] [cap]`;
        /// a client presents its key in VGPU_KEY and gets that compute share, class and cap on every GPU.
        #[arg(long, conflicts_with = "key")]
        plans: Option<std::path::PathBuf>,
        /// Control plane URL(s), comma-separated replicas (`https://host:8470#sha256=<certificate hash>`):
        /// register there, admit sessions by its tickets, report usage.
        #[arg(long, conflicts_with_all = ["key", "memory_limit_mib", "plans"])]
        control: Option<String>,
        /// Token the control plane's operator gave this server (with --control) to enroll once; afterwards the
        /// server uses its own credential (see --credential-file). Also read from VGPU_NODE_TOKEN.
        #[arg(long, env = "VGPU_NODE_TOKEN", hide_env_values = true)]
        node_token: Option<String>,
        /// Where the server keeps the credential the control plane gave it at enrollment (mode 0600; default:
        /// $XDG_STATE_HOME or ~/.local/state, vgpu/<name>.credential).
        #[arg(long, env = "VGPU_SERVER_CREDENTIAL")]
        credential_file: Option<std::path::PathBuf>,
        /// Name to register under (with --control; default: this host's name).
        #[arg(long)]
        name: Option<String>,
        /// Endpoint clients should dial (with --control; default: tls://this host's name:the --tls port, or
        /// host:port of --tcp without TLS).
        #[arg(long)]
        advertise: Option<String>,
        /// Present this server's devices as distinct virtual GPUs with identity N (1 to 7): own UUIDs and PCI
        /// domain. For testing several servers on one GPU and for partitioning a GPU between servers.
        #[arg(long, value_parser = vgpu_cuda_exec::identity::parse)]
        device_identity: Option<u8>,
        /// Another GPU server this one may send copies to directly (a process using GPUs of both copies device
        /// memory server to server, not through itself). As clients name it (tcp://host:port, tls://host:port,
        /// shm://name, rdma://host:port); repeat or separate by commas. Without any, copies between servers go
        /// through the client. Also read from VGPU_PEERS.
        #[arg(long = "peer", env = "VGPU_PEERS", value_delimiter = ',', value_parser = vgpu_dataplane::Endpoint::parse)]
        peers: Vec<vgpu_dataplane::Endpoint>,
        /// Refuse compressed channels (clients' VGPU_COMPRESS=lz4): compression costs this server's CPU.
        #[arg(long)]
        no_compress: bool,
    },
    /// Start the control plane: REST API, web UI and store of tenants, keys, GPUs, assignments and usage.
    Control(vgpu_control::ControlArgs),
    /// Manage the control plane from the command line (everything the web UI does).
    Admin(vgpu_control::AdminArgs),
    /// Run a program with vGPU's libcuda.so.1. With VGPU_KEY and VGPU_CONTROL_URL set, the shim exchanges the
    /// key for a session ticket and connects to the server holding the tenant's GPU.
    Run {
        /// Server endpoint: tls://host:port[#sha256=FINGERPRINT], tcp://host:port, shm://name or rdma://host:port,
        /// or several separated by commas (one process using the GPUs of every server, numbered in this order)
        /// (default: the ticket's servers, or tcp://127.0.0.1:7070).
        #[arg(long, env = "VGPU_SERVER")]
        server: Option<String>,
        /// Control plane URL, for a tenant key in VGPU_KEY.
        #[arg(long, env = "VGPU_CONTROL_URL")]
        control: Option<String>,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Show the GPUs a session sees (name, UUID, PCI bus id, memory, utilization, processes), read through
    /// vGPU's libnvidia-ml.so.1 against the server as `vgpu run` would reach it.
    Smi {
        /// Server endpoint: tcp://host:port, shm://name or rdma://host:port (default: the ticket's server, or
        /// tcp://127.0.0.1:7070).
        #[arg(long, env = "VGPU_SERVER")]
        server: Option<String>,
        /// Control plane URL, for a tenant key in VGPU_KEY.
        #[arg(long, env = "VGPU_CONTROL_URL")]
        control: Option<String>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The bundled sample (saxpy through the driver API, every result checked).
    Sample,
    /// Measure native against vGPU over TCP, TLS and shared memory (and RDMA where a device exists), in one run,
    /// and print the ratios.
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
        /// Runs of each probe; the table shows medians.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// `fairness`: several tenants on one GPU instead (see `vgpu bench fairness --help`).
        #[command(subcommand)]
        what: Option<fairness::BenchWhat>,
        /// Instead: the probe over TCP through each of these link shapes (a shaping relay on this host), beside
        /// loopback and the unshaped relay, with each row's round trips and the predicted time. Comma-separated
        /// RATE-RTT shapes (100g-10us, 1g-5ms, ...); `standard` is the four of issue 21.
        #[arg(long)]
        links: Option<String>,
        /// With --links: shapes go across the packet-level wire (TUN devices and a network namespace; needs root)
        /// instead of through the relay, so TCP meets the round trip end to end with the kernel's windows.
        #[arg(long, requires = "links")]
        wire: bool,
    },
    /// Relay TCP connections to a server through a link shape: each direction delayed by half the round trip and
    /// limited to the rate, with at most one bandwidth-delay product plus a cap queued (for measurements).
    LinkRelay {
        /// Where clients connect (host:port; port 0 picks one, printed on the ready line).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The server's TCP address (host:port, or tcp://host:port).
        #[arg(long)]
        to: String,
        /// RATE-RTT, e.g. 10g-500us; `relay` forwards without shaping.
        #[arg(long, conflicts_with_all = ["rtt_us", "gbit"])]
        shape: Option<String>,
        /// Round-trip time in µs (with --gbit, instead of --shape).
        #[arg(long)]
        rtt_us: Option<f64>,
        /// Rate in Gb/s each direction (0: unlimited).
        #[arg(long)]
        gbit: Option<f64>,
        /// Bytes the relay may queue per direction beyond the bandwidth-delay product.
        #[arg(long, default_value_t = vgpu_transports::link::relay::DEFAULT_QUEUE_CAP)]
        queue_cap: usize,
        /// Print the relay's counters every this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        report_s: u64,
    },
    #[command(name = "__worker", hide = true)]
    Worker,
    #[command(name = "__memcheck", hide = true)]
    Memcheck {
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Pageable round trip of this many MiB before holding (the server's staging buffers come into use).
        #[arg(long, default_value_t = 0)]
        copy_mib: u64,
        alloc_mib: Vec<u64>,
    },
    #[command(name = "__fair-tenant", hide = true)]
    FairTenant(fairness::TenantArgs),
    /// One side of a CUDA IPC exchange (`export`, or `open HANDLE_HEX`), for the IPC tests.
    #[command(name = "__ipccheck", hide = true)]
    IpcCheck { mode: String, handle: Option<String> },
    #[command(name = "__launch-rate", hide = true)]
    LaunchRate { launches: u64, start_at_ms: u64 },
    #[command(name = "__probe", hide = true)]
    Probe {
        #[arg(long)]
        quick: bool,
        /// The link shape between this probe and the server (sizes the loops).
        #[arg(long)]
        link: Option<String>,
    },
    /// Pageable copies of one kind of data to the device and back, timed and checked (compression measurements).
    #[command(name = "__copy-data", hide = true)]
    CopyData {
        /// zeros, ids, floats or periodic.
        #[arg(long)]
        kind: String,
        #[arg(long, default_value_t = 64)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        reps: u32,
    },
    /// A walk over every device the process sees (identities, unified addressing, peer answers and copies).
    #[command(name = "__multi-check", hide = true)]
    MultiCheck {
        /// Also time device 0 → device 1 copies of this many MiB.
        #[arg(long, default_value_t = 0)]
        bench_mib: u64,
    },
    /// One rank of a communicator over vGPU's NCCL: every collective checked on known data.
    #[command(name = "__nccl-check", hide = true)]
    NcclCheck {
        #[arg(long, required_unless_present = "all_devices")]
        rank: Option<u32>,
        #[arg(long, required_unless_present = "all_devices")]
        nranks: Option<u32>,
        /// Rank 0 writes the unique id here; the others read it.
        #[arg(long, required_unless_present = "all_devices")]
        id_file: Option<std::path::PathBuf>,
        /// Instead: one thread drives every visible device as one communicator (ncclCommInitAll).
        #[arg(long, conflicts_with_all = ["rank", "nranks", "id_file", "bench_mib", "exit_after_init"])]
        all_devices: bool,
        /// Also time all-reduces of this many MiB.
        #[arg(long, default_value_t = 0)]
        bench_mib: u64,
        /// Leave right after the communicator is ready (the other ranks' collectives then fail).
        #[arg(long)]
        exit_after_init: bool,
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
            security,
            admission,
            shm,
            no_shm,
            rdma,
            backend,
            driver,
            key,
            memory_limit_mib,
            plans,
            control,
            node_token,
            credential_file,
            name,
            advertise,
            device_identity,
            peers,
            no_compress,
        } => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let key = key.filter(|k| !k.is_empty());
            if !no_tcp {
                serve::check_plain_tcp(&tcp, security.allow_plain_tcp)?;
            }
            let admission = admission.limits()?;
            let tls = serve::tls_listen(&security)?;
            let (authority, auth_description): (Arc<dyn Authority>, String) = match control {
                Some(url) => {
                    let node_token = node_token.filter(|t| !t.is_empty());
                    let name = name.unwrap_or_else(|| {
                        std::fs::read_to_string("/proc/sys/kernel/hostname")
                            .map(|h| h.trim().to_string())
                            .unwrap_or_else(|_| "vgpu-server".into())
                    });
                    let credential_file = credential_file.or_else(|| controlled::default_credential_file(&name));
                    let has_credential = credential_file.as_ref().is_some_and(|p| p.exists());
                    if node_token.is_none() && !has_credential {
                        return Err(
                            "--control needs the node token (--node-token or VGPU_NODE_TOKEN) to enroll \
                                    this server"
                                .into(),
                        );
                    }
                    let link = controlled::ControlLink {
                        url: url.clone(),
                        node_token,
                        name,
                        advertise,
                        credential_file,
                        // Registered with the control plane, which puts it in tickets: clients pin it.
                        tls_cert_sha256: tls.as_ref().map(|t| t.acceptor.fingerprint().to_string()),
                    };
                    (
                        controlled::TicketAuthority::new(link),
                        format!("session tickets from the control plane at {url}"),
                    )
                }
                None => {
                    let plans = match &plans {
                        Some(path) => vgpu_cuda_exec::sched::plans::parse(
                            &std::fs::read_to_string(path)
                                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                        )?,
                        None => Vec::new(),
                    };
                    let described = match (&key, memory_limit_mib, plans.len()) {
                        (_, _, n) if n > 0 => format!("{n} keys with plans (--plans; VGPU_KEY)"),
                        (Some(_), Some(m), _) => format!("a static key (VGPU_KEY); {m} MiB per session"),
                        (Some(_), None, _) => "a static key (VGPU_KEY)".into(),
                        (None, _, _) => {
                            "nothing: no key set, any client that can reach these endpoints may connect".into()
                        }
                    };
                    let authority = StaticKey {
                        key,
                        memory_limit: memory_limit_mib.map(|m| m << 20),
                        plans,
                    };
                    (Arc::new(authority), described)
                }
            };
            vgpu_cuda_exec::run_server(ServerConfig {
                tcp: (!no_tcp).then_some(tcp),
                tls,
                admission,
                shm: (!no_shm).then_some(shm),
                rdma,
                backend: BackendChoice::parse(&backend)?,
                driver,
                authority,
                auth_description,
                worker_command: vec![exe.display().to_string(), "__worker".into()],
                identity: device_identity.unwrap_or(0),
                peers,
                compress: !no_compress,
            })
        }
        Cmd::Control(args) => vgpu_control::run_control(args),
        Cmd::Admin(args) => vgpu_control::run_admin(args),
        Cmd::Worker => vgpu_cuda_exec::run_worker_from_env(),
        Cmd::Memcheck {
            hold_ms,
            copy_mib,
            alloc_mib,
        } => sample::memcheck(&alloc_mib, copy_mib, hold_ms),
        Cmd::Run {
            server,
            control,
            command,
        } => {
            let (program, args) = command.split_first().ok_or("nothing to run")?;
            let mut cmd = local::through_shim(program, server.as_deref())?;
            if let Some(server) = &server {
                vgpu_dataplane::Endpoint::parse_list(server)?;
            }
            pyhook::add_to(&mut cmd);
            if let Some(url) = control {
                if std::env::var_os("VGPU_KEY").is_none() && std::env::var_os("VGPU_TICKET").is_none() {
                    return Err("--control needs the tenant's key in VGPU_KEY".into());
                }
                cmd.env("VGPU_CONTROL_URL", url);
            }
            let err = cmd.args(args).exec();
            Err(format!("cannot run {}: {err}", program.to_string_lossy()))
        }
        Cmd::Smi { server, control, json } => {
            if control.is_some() && std::env::var_os("VGPU_KEY").is_none() && std::env::var_os("VGPU_TICKET").is_none()
            {
                return Err("--control needs the tenant's key in VGPU_KEY".into());
            }
            let report = smi::query(server.as_deref(), control.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
            } else {
                print!("{}", smi::render(&report));
            }
            Ok(())
        }
        Cmd::Sample => {
            println!("{}", sample::run()?);
            Ok(())
        }
        Cmd::Quickstart { backend, standalone } => quickstart::run(&backend, standalone),
        Cmd::Bench {
            what: Some(fairness::BenchWhat::Fairness(args)),
            ..
        } => fairness::run(args),
        Cmd::Bench {
            quick,
            json,
            backend,
            repeat,
            links: Some(shapes),
            wire,
            what: None,
        } => links::run(&shapes, quick, json.as_deref(), &backend, repeat, wire),
        Cmd::Bench {
            quick,
            json,
            backend,
            repeat,
            links: None,
            what: None,
            ..
        } => bench::run(quick, json.as_deref(), &backend, repeat),
        Cmd::LinkRelay {
            listen,
            to,
            shape,
            rtt_us,
            gbit,
            queue_cap,
            report_s,
        } => links::relay(&listen, &to, shape, rtt_us, gbit, queue_cap, report_s),
        Cmd::FairTenant(args) => fairness::tenant(args),
        Cmd::IpcCheck { mode, handle } => match (mode.as_str(), handle) {
            ("export", None) => ipccheck::export(),
            ("open", Some(h)) => ipccheck::open(&h),
            _ => Err("usage: vgpu __ipccheck export | open HANDLE_HEX".into()),
        },
        Cmd::LaunchRate { launches, start_at_ms } => bench::launch_rate(launches, start_at_ms),
        Cmd::Probe { quick, link } => bench::probe(&bench::ProbeOptions {
            quick,
            link: link
                .as_deref()
                .map(vgpu_transports::link::LinkShape::parse)
                .transpose()?,
        }),
        Cmd::MultiCheck { bench_mib } => multicheck::run(bench_mib),
        Cmd::NcclCheck { all_devices: true, .. } => ncclcheck::run_all_devices(),
        Cmd::NcclCheck {
            rank: Some(rank),
            nranks: Some(nranks),
            id_file: Some(id_file),
            bench_mib,
            exit_after_init,
            ..
        } => ncclcheck::run(
            rank,
            nranks,
            &id_file,
            &ncclcheck::Extra {
                bench_mib,
                exit_after_init,
            },
        ),
        Cmd::NcclCheck { .. } => Err("__nccl-check needs --rank, --nranks and --id-file, or --all-devices".into()),
        Cmd::CopyData { kind, mib, reps } => copydata::run(&kind, mib, reps),
    }
}
