//! The GPU server's TLS identity: a certificate and key generated on first start and kept in the server's state
//! folder (the file 0600, a new folder 0700), or the operator's own files. Clients pin the certificate's SHA-256.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vgpu_transports::tls::pki_types::{CertificateDer, PrivateKeyDer};
use vgpu_transports::tls::{self, TlsAcceptor};

/// The file in the state folder holding the generated key and certificate (PEM, key first).
pub const IDENTITY_FILE: &str = "tls-server.pem";

/// A certificate chain, its key, and where they came from.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of `chain[0]`, lower-case hex: what clients pin.
    pub fingerprint: String,
    /// For the start-up banner: "generated …", "kept in …" or "from …".
    pub origin: String,
}

impl ServerIdentity {
    /// A TLS acceptor presenting this identity; `client_ca` (a PEM file) turns on mutual TLS.
    pub fn acceptor(&self, client_ca: Option<&Path>) -> Result<TlsAcceptor, String> {
        let cas = client_ca.map(tls::load_certs).transpose()?;
        TlsAcceptor::new(self.chain.clone(), self.key.clone_key(), cas)
    }
}

/// Where `vgpu server` keeps its state unless `--state-dir` says otherwise: `$XDG_STATE_HOME/vgpu`, else
/// `/var/lib/vgpu` for root, else `~/.local/state/vgpu`.
pub fn default_state_dir() -> Result<PathBuf, String> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("vgpu"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/vgpu"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/vgpu")),
        None => Err("no state folder: set --state-dir (or XDG_STATE_HOME or HOME)".into()),
    }
}

/// The operator's certificate chain and key (PEM files). A key file others can read is refused.
pub fn from_files(cert: &Path, key: &Path) -> Result<ServerIdentity, String> {
    check_private(key, false)?;
    let chain = tls::load_certs(cert)?;
    let key_der = tls::load_key(key)?;
    Ok(ServerIdentity {
        fingerprint: tls::fingerprint(&chain[0]),
        chain,
        key: key_der,
        origin: format!("from {} and {}", cert.display(), key.display()),
    })
}

/// The identity kept in `state_dir`, generated (self-signed ECDSA P-256) if there is none yet. Several servers
/// starting at once on one folder end up with the same identity: the first complete file wins.
pub fn load_or_generate(state_dir: &Path) -> Result<ServerIdentity, String> {
    let path = state_dir.join(IDENTITY_FILE);
    if path.exists() {
        return load_kept(&path);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| format!("cannot create the state folder {}: {e}", state_dir.display()))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let mut names = vec![host.clone()];
    if host != "localhost" {
        names.push("localhost".into());
    }
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let pem = format!("{}{}", generated.key_pair.serialize_pem(), generated.cert.pem());
    // Written whole to a private temporary file, then linked into place: a reader never sees half a file, and a
    // concurrent first start keeps whichever identity was linked first.
    let tmp = state_dir.join(format!(".{IDENTITY_FILE}.{:016x}.tmp", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    };
    let outcome = write().and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match outcome {
        Ok(()) => {
            let mut id = load_kept(&path)?;
            id.origin = format!("generated in {}", path.display());
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_kept(&path),
        Err(e) => Err(format!("cannot write {}: {e}", path.display())),
    }
}

/// A fresh identity kept nowhere (measurements and tests).
pub fn ephemeral() -> Result<ServerIdentity, String> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())?;
    let chain = vec![generated.cert.der().clone()];
    Ok(ServerIdentity {
        fingerprint: tls::fingerprint(&chain[0]),
        chain,
        key,
        origin: "generated for this process only".into(),
    })
}

fn load_kept(path: &Path) -> Result<ServerIdentity, String> {
    check_private(path, true)?;
    let chain = tls::load_certs(path)?;
    let key = tls::load_key(path)?;
    Ok(ServerIdentity {
        fingerprint: tls::fingerprint(&chain[0]),
        chain,
        key,
        origin: format!("kept in {}", path.display()),
    })
}

/// Refuses a key file that others may read. `strict` (a file vGPU made) also refuses group access and another
/// owner; an operator's file may be group-readable (a secrets mount), never world-readable.
fn check_private(path: &Path, strict: bool) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    let loose = if strict { mode & 0o077 != 0 } else { mode & 0o007 != 0 };
    if loose {
        return Err(format!(
            "{} holds a private key but has mode {mode:04o}: run `chmod 600 {}` (or delete it to have a new \
             identity generated, which changes the fingerprint clients pin)",
            path.display(),
            path.display()
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if strict && meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this server's uid {me}",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vgpu-identity-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generated_once_kept_private_and_reloaded_identically() {
        let dir = temp_dir("gen").join("nested");
        let first = load_or_generate(&dir).expect("generate");
        assert!(first.origin.starts_with("generated"), "{}", first.origin);
        let file = dir.join(IDENTITY_FILE);
        assert_eq!(std::fs::metadata(&file).expect("file").mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o700);
        let again = load_or_generate(&dir).expect("reload");
        assert_eq!(again.fingerprint, first.fingerprint);
        assert!(again.origin.starts_with("kept"), "{}", again.origin);
        assert_eq!(first.fingerprint.len(), 64);
        first.acceptor(None).expect("a usable identity");
        // Loosened permissions are refused with the fix in the message, not silently used.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_generate(&dir).err().expect("refused");
        assert!(err.contains("chmod 600"), "{err}");
        let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_identity() {
        let dir = temp_dir("race");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let d = dir.clone();
                std::thread::spawn(move || load_or_generate(&d).map(|id| id.fingerprint))
            })
            .collect();
        let prints: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("identity"))
            .collect();
        assert!(prints.windows(2).all(|w| w[0] == w[1]), "{prints:?}");
        let leftovers = std::fs::read_dir(&dir).expect("dir").count();
        assert_eq!(leftovers, 1, "temporary files must not stay behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn operator_files_are_used_and_a_world_readable_key_is_refused() {
        let dir = temp_dir("files");
        std::fs::create_dir_all(&dir).expect("dir");
        let ck = rcgen::generate_simple_self_signed(vec!["gpu.example".to_string()]).expect("rcgen");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let id = from_files(&cert, &key).expect("group-readable is allowed for operator files");
        assert_eq!(id.fingerprint, tls::fingerprint(ck.cert.der()));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(from_files(&cert, &key).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
