//! Debian packages the tests and the demo run (`docker-registry`,
//! `nats-server`): installed with apt-get when missing and we are root (or
//! `sudo -n` needs no password), or a stop that says exactly what to
//! install.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::run;

/// A program from a Debian package of the same name.
pub(crate) struct Package {
    /// The program, and the package it comes in.
    pub(crate) name: &'static str,
    /// What needs it, for the messages.
    pub(crate) needed_by: &'static str,
}

pub(crate) const DOCKER_REGISTRY: Package = Package {
    name: "docker-registry",
    needed_by: "the OCI tests",
};

pub(crate) const NATS_SERVER: Package = Package {
    name: "nats-server",
    needed_by: "the lattice tests and the NATS baseline",
};

impl Package {
    fn installed(&self) -> bool {
        Command::new(self.name)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn missing(&self) -> String {
        format!(
            "{0} is not installed: run `apt-get install {0}` as root ({1} run it)",
            self.name, self.needed_by
        )
    }

    /// Installs the package if its program is missing, or says why not.
    pub(crate) fn ensure(&self) -> Result<()> {
        if self.installed() {
            println!("xtask: {} is installed", self.name);
            return Ok(());
        }
        // SAFETY: geteuid has no preconditions, touches no memory and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let sudo = !root
            && Command::new("sudo")
                .args(["-n", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !root && !sudo {
            bail!("{}", self.missing());
        }
        println!(
            "xtask: {} is missing; installing it with apt-get ({} need it)",
            self.name, self.needed_by
        );
        let apt_get = |args: &[&str]| {
            let mut cmd = if root {
                Command::new("apt-get")
            } else {
                let mut sudo = Command::new("sudo");
                sudo.args(["-n", "apt-get"]);
                sudo
            };
            run(cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive"))
        };
        let install = ["install", "-y", self.name];
        // A fresh machine's package lists may be empty: update once, retry.
        if apt_get(&install).is_err() {
            apt_get(&["update"])
                .and_then(|()| apt_get(&install))
                .with_context(|| self.missing())?;
        }
        if !self.installed() {
            bail!("{}", self.missing());
        }
        Ok(())
    }
}
