//! The provider's end of a direct channel to the actor-runtime worker
//! (`ToProvider::DataPath`): calls to actors go there instead of through the
//! host, which saves a hop each way, and actors' calls to the provider may
//! come in there. Out go `CallActor` and `InvokeResult`; in come
//! `CallActorResult` and `Invoke`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use wire::handshake::{self, Role};
use wire::provider::ToProvider;
use wire::FrameReader;

use crate::host::Channel;
use crate::{HostHandle, Provider};

/// Why a call fails when the worker's end closes under it (the worker died
/// or restarted; the next call goes through the host).
const WORKER_GONE: &str =
    "the actor-runtime worker closed the direct channel while handling this call";

/// Connects to the worker's data socket with the host-issued `token`, makes
/// the channel the provider's direct one and serves it until it closes; then
/// calls go through the host again. A failure to connect is only logged.
pub(crate) async fn run<P: Provider>(
    provider: Arc<P>,
    host: HostHandle,
    socket: String,
    token: String,
    timeout_ms: u64,
) {
    let stream = match UnixStream::connect(&socket).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(socket, "cannot open a direct channel to the worker: {e}");
            return;
        }
    };
    let (mut reader, mut writer) = match stream.into_std().and_then(wire::socket::split) {
        Ok(halves) => halves,
        Err(e) => {
            tracing::debug!(socket, "cannot use the direct channel: {e}");
            return;
        }
    };
    let key = host.provider_key().to_owned();
    if let Err(e) =
        handshake::connect_as(&mut reader, &mut writer, Role::Provider, &token, &key).await
    {
        tracing::debug!(socket, "the worker refused a direct channel: {e}");
        return;
    }
    drop(token);
    let direct = writer.direct().ok();
    let (out, writer_task) = crate::serve::spawn_outbox(writer, direct);
    let channel = Arc::new(Channel::new(
        out.clone(),
        Some(Duration::from_millis(timeout_ms)),
        WORKER_GONE,
    ));
    host.set_direct(channel.clone());
    tracing::debug!("direct channel to the worker open");
    let mut frames = FrameReader::<_, ToProvider>::new(reader);
    // Actors' calls in flight; their answers have nowhere to go once the
    // channel is gone, so they end with it.
    let mut invocations = crate::serve::Invocations::default();
    loop {
        invocations.reap();
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            // The writer died: the channel is half dead; end it.
            _ = out.closed() => break,
        };
        match frame {
            Ok(Some(ToProvider::CallActorResult { id, result })) => channel.complete(id, result),
            Ok(Some(ToProvider::Invoke {
                id,
                actor_id,
                operation,
                payload,
            })) => {
                let call = crate::serve::invoke(
                    provider.clone(),
                    out.clone(),
                    id,
                    actor_id,
                    operation,
                    payload,
                );
                invocations.start(id, call).await;
            }
            Ok(Some(ToProvider::Cancel { id })) => invocations.cancel(id),
            Ok(Some(_)) => {
                tracing::warn!("closing the direct channel: the worker sent something other than CallActorResult or Invoke");
                break;
            }
            Ok(None) => break,
            // The worker died or restarted; the host opens a new channel.
            Err(wire::WireError::Io(e)) => {
                tracing::debug!("the direct channel broke: {e}");
                break;
            }
            Err(e) => {
                tracing::warn!("bad frame on the direct channel: {e}");
                break;
            }
        }
    }
    tracing::debug!("direct channel to the worker closed");
    host.direct_closed(&channel);
    invocations.abort_all();
    writer_task.abort();
}
