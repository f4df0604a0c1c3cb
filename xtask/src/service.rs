//! `cargo xtask install-service`: install the host as a systemd service.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run};

const LIB_DIR: &str = "/usr/local/lib/wasmhost";
const UNIT: &str = "/etc/systemd/system/wasmhost.service";
const MANIFEST: &str = "/etc/wasmhost/manifest.toml";
/// The unprivileged user the service runs as.
const USER: &str = "wasmhost";

pub(crate) fn install(args: &[String]) -> Result<()> {
    let dry_run = match args {
        [] => false,
        [flag] if flag == "--dry-run" => true,
        _ => bail!("usage: cargo xtask install-service [--dry-run]"),
    };
    run(cargo().args(["build", "--release", "--bins"]))?;
    let release = root().join("target").join("release");
    let steps: Vec<(std::path::PathBuf, std::path::PathBuf)> =
        ["host-core", "actor-runtime", "provider-launcher"]
            .iter()
            .map(|b| (release.join(b), Path::new(LIB_DIR).join(b)))
            .chain(std::iter::once((
                root().join("deploy").join("wasmhost.service"),
                Path::new(UNIT).to_path_buf(),
            )))
            .collect();
    for (from, to) in &steps {
        println!("xtask: install {} -> {}", from.display(), to.display());
        if !dry_run {
            std::fs::create_dir_all(to.parent().unwrap_or(Path::new("/")))?;
            std::fs::copy(from, to).with_context(|| format!("cannot install {}", to.display()))?;
        }
    }
    // The unit runs as this system user (deploy/wasmhost.service, User=).
    let has_user = std::process::Command::new("id")
        .args(["-u", USER])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_user {
        println!("xtask: create the system user {USER}");
        if !dry_run {
            run(std::process::Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/var/lib/wasmhost",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ]))?;
        }
    }
    if !Path::new(MANIFEST).exists() {
        println!(
            "xtask: write your manifest to {MANIFEST} (see demo/manifest.toml for the format; it and the archives it names must be readable by {USER})"
        );
    }
    if !dry_run {
        run(std::process::Command::new("systemctl").arg("daemon-reload"))?;
        println!("xtask: installed; start it with `systemctl enable --now wasmhost`");
    }
    Ok(())
}
