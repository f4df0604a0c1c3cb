//! A real `nats-server` with JetStream for the lattice tests: on a
//! reserved port, its store in a directory of its own (kept across a
//! restart), killed when dropped.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, TempDir};

/// How long a starting server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: TempDir,
}

impl NatsServer {
    /// A new server with an empty JetStream store.
    pub fn start(tag: &str) -> Self {
        let store = TempDir::new("wh-nats", tag);
        let port = free_port();
        let child = spawn(port, store.path());
        Self {
            child: Some(child),
            port,
            store,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server (as a crash would: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, self.store.path()));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's binary: on PATH, or where Debian's package puts it.
fn binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        PathBuf::from("nats-server")
    } else if debian.exists() {
        debian
    } else {
        panic!("nats-server is not installed: `apt-get install nats-server` (cargo xtask test installs it)")
    }
}

fn spawn(port: u16, store: &Path) -> Child {
    let mut child = Command::new(binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited ({status}) before it listened on {port}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nats-server did not listen on {port} within {LISTEN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
