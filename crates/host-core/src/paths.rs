//! Where a host keeps its sockets, lock and caches.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// `--state-dir`, else `$WASMHOST_STATE_DIR`, else `$XDG_STATE_HOME/wasmhost`,
/// else `~/.local/state/wasmhost`.
pub fn state_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os("WASMHOST_STATE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return Ok(PathBuf::from(dir).join("wasmhost"));
    }
    let home = dirs::home_dir().context("cannot find the home directory; set --state-dir")?;
    Ok(home.join(".local").join("state").join("wasmhost"))
}

/// Creates `dir` owner-only (0700), or checks that an existing one is ours
/// and tightens its mode: sockets inside must not be reachable by others.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = fs::metadata(dir)?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        bail!(
            "{} belongs to another user (uid {}); refusing to use it",
            dir.display(),
            meta.uid()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `--runtime-dir`, else `$WASMHOST_RUNTIME_DIR`, else the state directory.
/// Sockets and the lock live here (systemd's `RuntimeDirectory=`).
pub fn runtime_dir(explicit: Option<PathBuf>, state: &Path) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("WASMHOST_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(|| state.to_path_buf())
}

pub struct StatePaths {
    /// Data: caches, provider data.
    pub root: PathBuf,
    /// Sockets and the lock.
    pub run: PathBuf,
}

impl StatePaths {
    pub fn new(root: PathBuf, run: PathBuf) -> Self {
        Self { root, run }
    }
    pub fn control_socket(&self) -> PathBuf {
        self.run.join("host.sock")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.run.join("host.lock")
    }
    pub fn worker_socket(&self) -> PathBuf {
        self.run.join("worker.sock")
    }
    pub fn launcher_socket(&self) -> PathBuf {
        self.run.join("launcher.sock")
    }
    pub fn provider_socket(&self) -> PathBuf {
        self.run.join("provider.sock")
    }
    pub fn provider_cache(&self) -> PathBuf {
        self.root.join("cache").join("providers")
    }
    pub fn compile_cache(&self) -> PathBuf {
        self.root.join("cache").join("compiled")
    }
    /// Actors and archives pulled from registries, by content digest.
    pub fn oci_cache(&self) -> PathBuf {
        self.root.join("cache").join("oci")
    }
}
