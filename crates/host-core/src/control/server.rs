//! The control socket's server: `host-core ctl` talks to a running host
//! through it.
//!
//! The socket is owner-only (0600 in a 0700 directory) and every connection's
//! peer uid is checked against ours. A bad frame gets an error reply (when the
//! stream can still carry one) and the connection is closed; the host goes on.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use interprocess::local_socket::{
    tokio::{prelude::*, Stream},
    GenericFilePath, ListenerOptions, ToFsName,
};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use tokio::io::{AsyncRead, AsyncWrite};
use wire::{
    control::{ControlReply, ControlRequest, ControlResponse, CONTROL_MAX_FRAME_LEN},
    handshake::{self, Role},
    CallError, CallResult, FrameReader, FrameWriter, WireError,
};

use crate::host::Host;

/// Serves one control connection after its peer was vetted: the handshake,
/// then requests until the peer hangs up.
pub async fn run<R, W>(reader: R, writer: W, host: Arc<Host>) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = (reader, writer);
    let hello = handshake::accept(&mut reader, &mut writer, |hello| {
        if hello.role == Role::Control {
            Ok(())
        } else {
            Err("this is the control socket; only `host-core ctl` may connect".into())
        }
    });
    // A peer that connects and says nothing is not kept waiting on.
    tokio::time::timeout(crate::child::HANDSHAKE_TIMEOUT, hello)
        .await
        .map_err(|_| {
            WireError::Handshake(format!(
                "no handshake within {:?}",
                crate::child::HANDSHAKE_TIMEOUT
            ))
        })??;
    let mut requests =
        FrameReader::<_, ControlRequest>::with_max_len(reader, CONTROL_MAX_FRAME_LEN);
    let mut responses =
        FrameWriter::<_, ControlResponse>::with_max_len(writer, CONTROL_MAX_FRAME_LEN);
    loop {
        let request = match requests.recv().await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Tell the peer why, if the stream still takes it, then close.
                let _ = responses
                    .send(&ControlResponse::Err(CallError::internal(format!(
                        "bad request: {e}"
                    ))))
                    .await;
                return Err(e);
            }
        };
        if let ControlRequest::Events { follow } = request {
            // Subscribe before reading the backlog so nothing falls between.
            let mut live = host.events.subscribe();
            responses
                .send(&ControlResponse::Ok(ControlReply::Events(
                    host.events.recent(),
                )))
                .await?;
            if !follow {
                continue;
            }
            let mut shutdown = host.shutdown_signal();
            loop {
                let event = tokio::select! {
                    event = live.recv() => event,
                    _ = crate::supervise::stopped(&mut shutdown) => return Ok(()),
                };
                match event {
                    Ok(event) => {
                        responses
                            .send(&ControlResponse::Ok(ControlReply::Events(vec![event])))
                            .await?
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("an events follower fell {n} events behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        let stop_after = matches!(request, ControlRequest::StopHost);
        let response = match handle(&host, request).await {
            Ok(reply) => ControlResponse::Ok(reply),
            Err(reason) => ControlResponse::Err(reason),
        };
        match responses.send(&response).await {
            // Too large for the channel (an actor's reply near the cap):
            // the caller gets the error, and the connection goes on.
            Err(WireError::FrameTooLarge { len, max }) => {
                responses
                    .send(&ControlResponse::Err(CallError::oversized(
                        "reply", len, max,
                    )))
                    .await?
            }
            other => other?,
        }
        if stop_after {
            host.request_shutdown();
            return Ok(());
        }
    }
}

async fn handle(host: &Host, request: ControlRequest) -> CallResult<ControlReply> {
    Ok(match request {
        ControlRequest::Inventory => ControlReply::Inventory(host.inventory()),
        ControlRequest::StartActor { actor, count } => ControlReply::ActorStarted {
            key: host.start_actor_from(actor, count).await?,
        },
        ControlRequest::ScaleActor { key, count } => {
            host.scale_actor(&key, count).await?;
            ControlReply::Done
        }
        ControlRequest::UpdateActor { key, actor } => {
            host.update_actor_from(&key, actor).await?;
            ControlReply::Done
        }
        ControlRequest::StopActor { key } => {
            host.stop_actor(&key).await?;
            ControlReply::Done
        }
        ControlRequest::Call {
            key,
            operation,
            payload,
        } => ControlReply::CallResult(host.call_actor(&key, &operation, payload).await?),
        ControlRequest::StopHost => ControlReply::Done,
        ControlRequest::StartProvider {
            archive,
            link_name,
            config_json,
        } => ControlReply::ProviderStarted {
            key: host
                .start_provider_from(archive, link_name, config_json)
                .await?,
        },
        ControlRequest::StopProvider { key, link_name } => {
            host.stop_provider(&key, &link_name).await?;
            ControlReply::Done
        }
        ControlRequest::LinkPut(link) => {
            host.link_put(link).await?;
            ControlReply::Done
        }
        ControlRequest::LinkDel {
            actor_id,
            contract_id,
            link_name,
        } => {
            host.link_del(&actor_id, &contract_id, &link_name).await?;
            ControlReply::Done
        }
        ControlRequest::LinkList => ControlReply::Links(host.links()),
        ControlRequest::Events { .. } => ControlReply::Events(host.events.recent()),
    })
}

/// Listens on `path` until the host shuts down.
pub async fn serve(path: &Path, host: Arc<Host>) -> Result<()> {
    let name = path
        .to_fs_name::<GenericFilePath>()
        .context("bad control socket path")?;
    let listener = ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .try_overwrite(true)
        .create_tokio()
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let our_uid = nix::unistd::geteuid().as_raw();
    let mut shutdown = host.shutdown_signal();
    loop {
        let stream: Stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    continue;
                }
            },
            _ = crate::supervise::stopped(&mut shutdown) => break,
        };
        match stream.peer_creds().map(|c| c.euid()) {
            Ok(Some(uid)) if uid == our_uid => {}
            other => {
                tracing::warn!("refused a control connection from uid {other:?}");
                continue;
            }
        }
        if let Err(reason) = not_of_our_tree(&stream) {
            tracing::warn!("refused a control connection: {reason}");
            continue;
        }
        let host = host.clone();
        tokio::spawn(async move {
            let served = match wire::socket::split_local(stream) {
                Ok((recv, send)) => run(recv, send, host).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = served {
                tracing::warn!("control connection closed: {e}");
            }
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Providers run as our user, so the uid check lets them through: refuse
/// any peer that descends from this process (a provider, the worker, the
/// launcher, anything they started), or whose ancestry cannot be read.
fn not_of_our_tree(stream: &Stream) -> Result<(), String> {
    let peer = stream.peer_creds().ok().and_then(|c| c.pid());
    wire::peer::refuse_host_descendant(peer, std::process::id() as i32)
}
