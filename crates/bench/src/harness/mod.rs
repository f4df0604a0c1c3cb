//! What every group stands on: the bench's private work directory, fixtures
//! signed and providers packed into it, hosts started in it (`host`), and
//! child processes that die with the bench (`process`).

mod host;
mod process;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use test_support::cli;

pub(crate) use host::{Client, Host};
pub(crate) use process::{cpu_secs, dies_with_bench, rss_mb, Baseline};

pub(crate) fn bin_dir() -> Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("no bin dir")?
        .to_path_buf())
}

fn fixtures_dir() -> Result<PathBuf> {
    // target/{debug,release}/bench -> target/fixtures
    let dir = bin_dir()?
        .parent()
        .context("no target dir")?
        .join("fixtures");
    if !dir.join("echo.wasm").exists() {
        bail!(
            "{} has no fixtures: run `cargo xtask fixtures` first",
            dir.display()
        );
    }
    Ok(dir)
}

/// The bench's private directory: signed fixtures, archives, and each
/// host's state directory. Removed at the end of a run.
pub(crate) struct Work {
    pub(crate) dir: PathBuf,
    keys: PathBuf,
}

/// A bench killed outright (its hosts die with it) cannot remove its work
/// directory; the next run removes those whose bench is gone.
fn remove_dead_benches_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wasmhost-bench-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Work {
    pub(crate) fn new() -> Result<Self> {
        remove_dead_benches_dirs();
        let dir = std::env::temp_dir().join(format!("wasmhost-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            keys: dir.join("keys"),
            dir,
        })
    }

    pub(crate) fn host_core(&self, args: &[String]) -> Result<String> {
        let out = Command::new(bin_dir()?.join("host-core"))
            .args(args)
            .env("WASMHOST_KEYS_DIR", &self.keys)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "host-core {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Signs a fixture under `name` (a new module key per name).
    pub(crate) fn sign(&self, fixture: &str, name: &str, caps: &[&str]) -> Result<PathBuf> {
        let out = self.dir.join(format!("{name}.wasm"));
        let input = fixtures_dir()?.join(fixture);
        self.host_core(&cli::sign_args(&input, &out, name, &cli::caps(caps)))?;
        Ok(out)
    }

    pub(crate) fn par(&self, binary: &str, capid: &str) -> Result<PathBuf> {
        let out = self.dir.join(format!("{binary}.par"));
        let program = bin_dir()?.join(binary);
        self.host_core(&cli::par_args(binary, "bench", capid, &program, &out))?;
        Ok(out)
    }
}

/// The echo component with `count` instances, linked to a fresh keyvalue
/// provider: (actor key, provider key).
pub(crate) async fn kv_component(
    work: &Work,
    client: &mut Client,
    name: &str,
    count: u32,
) -> Result<(String, String)> {
    let component = work.sign("echo_component.wasm", name, &["wasmcloud:keyvalue"])?;
    let key = client.start_actor(&component, count).await?;
    let par = work.par("keyvalue-provider", "wasmcloud:keyvalue")?;
    let provider = client.start_provider(&par).await?;
    client
        .link(&key, &provider, "wasmcloud:keyvalue", &[])
        .await?;
    Ok((key, provider))
}

/// The component's `Forward` payload for one `KeyValue.Get`.
pub(crate) fn kv_get_payload() -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(&serde_json::json!({
        "target": "wasmcloud:keyvalue",
        "operation": "KeyValue.Get",
        "payload": serde_bytes::ByteBuf::from(rmp_serde::to_vec_named("k")?),
    }))?)
}

/// `n` echo actors, each signed under its own name: their keys.
pub(crate) async fn start_many(
    work: &Work,
    client: &mut Client,
    n: usize,
    prefix: &str,
) -> Result<Vec<String>> {
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let wasm = work.sign("echo.wasm", &format!("{prefix}{i}"), &[])?;
        keys.push(client.start_actor(&wasm, 1).await?);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_directories_of_gone_benches_are_removed_and_live_ones_kept() {
        // Above the kernel's largest pid (2^22), so no process has it.
        let gone = std::env::temp_dir().join("wasmhost-bench-4194305");
        let live = std::env::temp_dir().join(format!("wasmhost-bench-{}", std::process::id()));
        std::fs::create_dir_all(gone.join("http")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        remove_dead_benches_dirs();
        assert!(!gone.exists(), "the gone bench's directory was removed");
        assert!(live.exists(), "a running bench's directory was kept");
        std::fs::remove_dir_all(live).unwrap();
    }
}
