//! A real `docker-registry` (Debian's distribution 2.8) on loopback, in a
//! private directory, killed and reaped when dropped.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::free_port;

/// The registry must listen within this, and exit within this once killed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub const NOT_INSTALLED: &str = "docker-registry is not installed: run `cargo xtask test`, which installs it, or `apt-get install docker-registry`";

/// A fresh private directory for one test; the caller removes it.
pub fn temp_dir(tag: &str) -> PathBuf {
    temp_dir_in(&std::env::temp_dir(), tag)
}

fn temp_dir_in(parent: &std::path::Path, tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = parent.join(format!(
        "oci-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running registry; its storage survives [`Registry::stop`] and
/// [`Registry::start_again`].
pub struct Registry {
    /// `127.0.0.1:PORT`, the registry part of references.
    pub addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// A registry that lets anyone push and pull.
    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// A registry behind HTTP basic authentication for one user.
    pub fn start_with_user(username: &str, password: &str) -> Registry {
        Self::start_with(Some((username, password)))
    }

    fn start_with(user: Option<(&str, &str)>) -> Registry {
        ensure_installed();
        let dir = temp_dir("registry");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage = dir.join("storage").display(),
        );
        if let Some((username, password)) = user {
            let hash = bcrypt::hash(password, 4).unwrap();
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{username}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: oci-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let mut registry = Registry {
            addr,
            dir,
            child: None,
        };
        registry.start_again();
        registry
    }

    /// Starts the registry (again) on the same address and storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the registry is already running");
        let log = std::fs::File::create(self.dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            // No REGISTRY_* overrides from the environment.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                panic!(
                    "docker-registry exited ({status}) before listening: {}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "docker-registry did not listen on {} within {START_TIMEOUT:?}: {}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the registry and reaps it; its address then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if wait_for(&mut child, STOP_TIMEOUT).is_none() {
                panic!("docker-registry did not exit within {STOP_TIMEOUT:?} of SIGKILL");
            }
        }
    }

    /// A fresh directory for a client's cache, removed with the registry's.
    pub fn new_cache_dir(&self) -> PathBuf {
        temp_dir_in(&self.dir, "cache")
    }

    /// The file the registry serves a blob from.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails the test, saying what to install, when the registry is missing.
fn ensure_installed() {
    let spawned = Command::new("docker-registry")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            if wait_for(&mut child, START_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = wait_for(&mut child, STOP_TIMEOUT);
                panic!("`docker-registry --version` hung for {START_TIMEOUT:?}");
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{NOT_INSTALLED}"),
        Err(e) => panic!("cannot run docker-registry: {e}"),
    }
}

/// The child's exit status, or `None` if it is still running after `timeout`.
fn wait_for(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => return None,
            Err(e) => panic!("cannot wait for docker-registry: {e}"),
        }
    }
}
