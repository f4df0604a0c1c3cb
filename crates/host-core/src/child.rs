//! Starting a supervised child process that connects back over a local socket.
//!
//! The child gets a clean environment, a per-launch token in one variable, and
//! the socket path on its command line. Only the connection from that child's
//! pid, with that token and the expected role, is accepted. The returned
//! `Child` is killed when dropped; callers reap it on every path.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use interprocess::local_socket::{
    tokio::{prelude::*, Listener, Stream},
    GenericFilePath, ListenerOptions, ToFsName,
};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use wire::handshake::{self, Role};
use wire::outbox::Outbox;
use wire::socket::{SocketReader, SocketWriter};
use wire::FrameWriter;

/// How long a freshly started child has to connect and say hello.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long any peer of an accepting socket (control, provider) has to
/// finish its handshake; one that connects and stays silent is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// An owner-only listening socket at `path` (a stale file is replaced: the
/// state directory's lock says no other host uses it).
pub fn listen(path: &Path) -> Result<Listener> {
    let name = path
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("bad socket path {}", path.display()))?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .try_overwrite(true)
        .create_tokio()
        .with_context(|| format!("cannot listen on {}", path.display()))
}

pub struct Connected {
    pub child: tokio::process::Child,
    pub reader: SocketReader,
    pub writer: SocketWriter,
}

/// Starts `binary --socket SOCKET` and waits for it to connect and pass the
/// handshake as `role` with a fresh token.
pub async fn spawn_and_accept(
    listener: &Listener,
    binary: &Path,
    socket: &Path,
    token_env: &str,
    role: Role,
) -> Result<Connected> {
    let token = format!("{:032x}", rand::random::<u128>());
    let mut child = tokio::process::Command::new(binary)
        .arg("--socket")
        .arg(socket)
        // A clean environment: nothing of the host's but what logging needs.
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k == "RUST_LOG" || k == "PATH"))
        .env(token_env, &token)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id();
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(CONNECT_TIMEOUT, accept_from(listener, pid, &token, role)) => {
            accepted.map_err(|_| anyhow!("{} did not connect within {CONNECT_TIMEOUT:?}", binary.display()))?
        }
        status = child.wait() => bail!("{} exited before connecting: it {}", binary.display(), crate::supervise::Exit::from_status(status?)),
    };
    match accepted {
        Ok((reader, writer)) => Ok(Connected {
            child,
            reader,
            writer,
        }),
        Err(e) => {
            let _ = child.kill().await;
            Err(e)
        }
    }
}

async fn accept_from(
    listener: &Listener,
    pid: Option<u32>,
    token: &str,
    role: Role,
) -> Result<(SocketReader, SocketWriter)> {
    loop {
        let stream: Stream = listener.accept().await?;
        let peer_pid = stream.peer_creds().ok().and_then(|c| c.pid());
        if pid.is_some() && peer_pid.map(|p| p as u32) != pid {
            tracing::warn!("refused a {role:?} connection from pid {peer_pid:?}: not our child");
            continue;
        }
        let (mut reader, mut writer) = match wire::socket::split_local(stream) {
            Ok(halves) => halves,
            Err(e) => {
                tracing::warn!("cannot use a {role:?} connection: {e}");
                continue;
            }
        };
        let checked = handshake::accept(&mut reader, &mut writer, |hello| {
            if hello.role != role {
                Err(format!("this socket is for the {role:?}"))
            } else if hello.token != token {
                Err("wrong token".into())
            } else {
                Ok(())
            }
        })
        .await;
        match checked {
            Ok(_) => return Ok((reader, writer)),
            Err(e) => tracing::warn!("refused a {role:?} connection: {e}"),
        }
    }
}

/// The outbox of a channel to a child on `writer`, with its pump spawned;
/// `peer` names the child in the log if writing fails. Once the task ends
/// (or its abort takes effect), sends fail and the outbox no longer holds
/// the socket open.
pub fn outbox<T: wire::WireMessage + Send + 'static>(
    writer: SocketWriter,
    peer: &'static str,
) -> (Outbox<T>, tokio::task::JoinHandle<()>) {
    // Without the duplicate descriptor every message goes through the pump.
    let direct = writer.direct().ok();
    let (outbox, pump) = Outbox::new(FrameWriter::new(writer), direct, None);
    let task = tokio::spawn(async move {
        if let Err(e) = pump.run().await {
            tracing::warn!("writing to {peer} failed: {e}");
        }
    });
    (outbox, task)
}
