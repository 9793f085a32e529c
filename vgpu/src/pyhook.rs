//! The Python start-up hook of `vgpu run` (`vgpu/python/sitecustomize.py`, built into this binary): written once
//! per user into a cache folder, which `vgpu run` puts first on PYTHONPATH. It lets JAX start its CUDA backend on
//! a client without /dev/nvidia* (see the file); it acts only where `VGPU_RUN=1`, which `vgpu run` sets.

use std::path::{Path, PathBuf};
use std::process::Command;

const SITECUSTOMIZE: &str = include_str!("../python/sitecustomize.py");

/// `$XDG_CACHE_HOME/vgpu/python`, `~/.cache/vgpu/python`, or a per-user folder in the temporary directory.
fn hook_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    match cache {
        Some(c) => c.join("vgpu").join("python"),
        None => {
            let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
            std::env::temp_dir().join(format!("vgpu-python-{user}"))
        }
    }
}

/// Writes the hook into `dir` unless it is there already, whole (written aside, then renamed into place, so a
/// Python starting meanwhile never reads half a file).
fn install(dir: &Path) -> Result<(), String> {
    let file = dir.join("sitecustomize.py");
    if std::fs::read_to_string(&file).is_ok_and(|text| text == SITECUSTOMIZE) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let aside = dir.join(format!(".sitecustomize.py.{}", std::process::id()));
    std::fs::write(&aside, SITECUSTOMIZE).map_err(|e| format!("cannot write {}: {e}", aside.display()))?;
    std::fs::rename(&aside, &file).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// Gives `cmd` the hook: its folder first on PYTHONPATH, and `VGPU_RUN=1`. A hook that cannot be written is
/// said on stderr and left out (a program that is not JAX needs none).
pub fn add_to(cmd: &mut Command) {
    cmd.env("VGPU_RUN", "1");
    let dir = hook_dir();
    if let Err(e) = install(&dir) {
        eprintln!("vgpu run: no Python start-up hook ({e}): JAX on a machine without /dev/nvidia* will use the CPU");
        return;
    }
    let path = match std::env::var("PYTHONPATH") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", dir.display()),
        _ => dir.display().to_string(),
    };
    cmd.env("PYTHONPATH", path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_is_written_once_and_rewritten_when_it_differs() {
        let dir = std::env::temp_dir().join(format!("vgpu-pyhook-test-{}", std::process::id()));
        install(&dir).expect("first write");
        let file = dir.join("sitecustomize.py");
        assert_eq!(std::fs::read_to_string(&file).ok().as_deref(), Some(SITECUSTOMIZE));
        std::fs::write(&file, "stale").expect("overwrite");
        install(&dir).expect("rewrite");
        assert_eq!(std::fs::read_to_string(&file).ok().as_deref(), Some(SITECUSTOMIZE));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
