//! A throwaway PostgreSQL for tests: Debian's server binaries, a cluster under the test's own temp folder, on
//! its own port, killed with the test process. One cluster per test binary; each caller gets a fresh database.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
}

/// `initdb` and `postgres` from Debian's package (`/usr/lib/postgresql/<version>/bin`, newest first), else
/// from PATH. scripts/test.sh installs the package when neither exists; a test never skips for want of it.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").exists() && d.join("postgres").exists());
    found.sort();
    if let Some(d) = found.pop() {
        return d;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if let Ok(real) = std::fs::canonicalize(dir.join("initdb")) {
            if let Some(d) = real.parent() {
                if d.join("postgres").exists() {
                    return d.to_path_buf();
                }
            }
        }
    }
    panic!("PostgreSQL server binaries (initdb, postgres) not found: install Debian's postgresql package (scripts/test.sh does)");
}

/// (uid, gid) of the `postgres` user: the server refuses to run as root.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres")).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn as_postgres(cmd: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt;
    if is_root() {
        let (uid, gid) =
            postgres_user().expect("running as root needs the `postgres` user (Debian's postgresql package)");
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
        cmd.uid(uid).gid(gid);
    }
}

pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!("vgpu-pg-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut init = Command::new(bin.join("initdb"));
        init.args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"]);
        as_postgres(&mut init, &dir);
        as_postgres(&mut init, &data);
        let out = init.output().unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let bin2 = bin.clone();
        let data2 = data.clone();
        let dir2 = dir.clone();
        // The server is a child of a thread that never ends, with a parent-death signal: it dies with the test
        // process, however that ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(bin2.join("postgres"));
            cmd.arg("-D")
                .arg(&data2)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&dir2)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=64MB",
                    "-c",
                    "fsync=on",
                ]);
            as_postgres(&mut cmd, &dir2);
            let log = std::fs::File::create(dir2.join("log")).map(std::process::Stdio::from);
            cmd.stdout(std::process::Stdio::null())
                .stderr(log.unwrap_or_else(|_| std::process::Stdio::null()));
            // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the child between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn();
            let _ = tx.send(child.is_ok());
            if let Ok(mut c) = child {
                let _ = c.wait();
            }
            loop {
                std::thread::park();
            }
        });
        assert!(rx.recv().unwrap(), "postgres did not start");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if postgres::Client::connect(
                &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                postgres::NoTls,
            )
            .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections (log in {})",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Cluster { port, dir }
    })
}

/// A new empty database in the cluster; returns its URL.
pub fn fresh_db() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let c = cluster();
    let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let mut admin = postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:{}/postgres", c.port),
        postgres::NoTls,
    )
    .unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    format!("postgres://postgres@127.0.0.1:{}/{name}", c.port)
}
