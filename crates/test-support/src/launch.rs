//! A real provider binary, launched as the launcher would, connected to a
//! host's end over a Unix socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use wire::handshake::{self, Role};
use wire::provider::{Bootstrap, Link};
use wire::socket::{SocketReader, SocketWriter};

use crate::channel::{HostEnd, DEFAULT_STEP};

/// The host's end of a provider's socket.
pub type SocketHostEnd = HostEnd<SocketReader, SocketWriter>;

/// A provider process (killed when dropped) and the host's end of its channel.
pub struct Launched {
    pub child: Child,
    pub host: SocketHostEnd,
}

/// Starts `binary` with `bootstrap` on its standard input (a length-prefixed
/// MessagePack frame, then the end of the stream, as the launcher does).
/// Killed when dropped.
pub fn spawn_provider(binary: &Path, bootstrap: &Bootstrap, stderr: Stdio) -> Child {
    let mut child = Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let mut stdin = child.stdin.take().unwrap();
    let body = rmp_serde::to_vec_named(bootstrap).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    tokio::spawn(async move {
        // A provider that exits at once never reads it.
        let _ = stdin.write_all(&frame).await;
        // Dropping stdin closes it, as the launcher does.
    });
    child
}

/// Listens on `bootstrap.socket`, starts `binary`, accepts its connection
/// with the handshake (role `Provider`, `bootstrap.token`), sends `Init`
/// with `links` and waits for `Ready`.
pub async fn launch(
    binary: &Path,
    bootstrap: Bootstrap,
    links: Vec<Link>,
    stderr: Stdio,
) -> Launched {
    let socket = PathBuf::from(&bootstrap.socket);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", socket.display()));
    let child = spawn_provider(binary, &bootstrap, stderr);
    let (stream, _) = tokio::time::timeout(DEFAULT_STEP, listener.accept())
        .await
        .expect("provider connected in time")
        .unwrap();
    let (mut r, mut w) = stream.into_std().and_then(wire::socket::split).unwrap();
    let hello = handshake::accept(&mut r, &mut w, |h| {
        if h.role == Role::Provider && h.token == bootstrap.token {
            Ok(())
        } else {
            Err("bad provider hello".into())
        }
    })
    .await
    .unwrap();
    assert_eq!(hello.role, Role::Provider);
    let mut host = HostEnd::new(r, w);
    host.init(links).await;
    Launched { child, host }
}

/// A fresh directory `{temp}/{prefix}-{pid}-{tag}`, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
