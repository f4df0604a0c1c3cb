//! Providers' direct channels: a provider that `host-core` admitted (see
//! [`WorkerRequest::AdmitProvider`](wire::worker::WorkerRequest)) connects to
//! the worker's data socket and calls actors without a hop through the host.
//!
//! The socket is owner-only inside the host's 0700 runtime directory, the
//! peer's uid must be ours, and the handshake must carry a provider key and
//! the single-use token `host-core` issued for it. Only `CallActor` is served,
//! and only to actors whose caps name the provider's contract.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wire::handshake::{self, Role};
use wire::provider::{FromProvider, ToProvider};
use wire::{Bytes, FrameReader, FrameWriter};

use crate::actors::Runtime;
use crate::host::lock;

/// Who may connect: single-use tokens, each for one provider instance.
#[derive(Default)]
pub(crate) struct Admissions {
    by_token: Mutex<HashMap<String, Admitted>>,
}

#[derive(Clone)]
struct Admitted {
    provider_key: String,
    link_name: String,
    contract_id: String,
}

impl Admissions {
    /// Admits one provider instance, replacing a token it was given before
    /// and never used.
    pub(crate) fn admit(
        &self,
        provider_key: String,
        link_name: String,
        contract_id: String,
        token: String,
    ) {
        let mut tokens = lock(&self.by_token);
        tokens.retain(|_, a| !(a.provider_key == provider_key && a.link_name == link_name));
        tokens.insert(
            token,
            Admitted {
                provider_key,
                link_name,
                contract_id,
            },
        );
    }

    /// Uses up `token`, if it was issued to `provider_key`.
    fn claim(&self, token: &str, provider_key: &str) -> Result<Admitted, String> {
        let mut tokens = lock(&self.by_token);
        match tokens.get(token) {
            Some(a) if a.provider_key == provider_key => Ok(tokens.remove(token).expect("present")),
            Some(a) => Err(format!(
                "this token was issued to provider {}, not `{provider_key}`",
                a.provider_key
            )),
            None => Err("unknown or used provider token".into()),
        }
    }
}

/// Binds the data socket (owner-only) and serves providers' direct
/// channels until the returned task is aborted; aborting it also ends every
/// channel it accepted.
pub(crate) fn listen(
    path: &str,
    runtime: Arc<Runtime>,
    admissions: Arc<Admissions>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // A socket file left by a worker that was killed.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::debug!(socket = path, "listening for providers' direct channels");
    Ok(tokio::spawn(accept_loop(listener, runtime, admissions)))
}

async fn accept_loop(listener: UnixListener, runtime: Arc<Runtime>, admissions: Arc<Admissions>) {
    let our_uid = nix_uid();
    let mut channels = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if stream.peer_cred().map(|c| c.uid()).ok() != Some(our_uid) {
                        tracing::warn!("refused a direct channel from another user");
                        continue;
                    }
                    channels.spawn(serve(stream, runtime.clone(), admissions.clone()));
                }
                Err(e) => {
                    tracing::warn!("data socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = channels.join_next(), if !channels.is_empty() => {}
        }
    }
}

fn nix_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// One provider's direct channel: the handshake, then its calls, each in its
/// own task, until it hangs up.
async fn serve(stream: UnixStream, runtime: Arc<Runtime>, admissions: Arc<Admissions>) {
    let (mut reader, mut writer) = stream.into_split();
    let mut admitted = None;
    let accepted = handshake::accept(&mut reader, &mut writer, |hello| {
        if hello.role != Role::Provider {
            return Err("this socket is for capability providers' direct channels".into());
        }
        admitted = Some(admissions.claim(&hello.token, &hello.key)?);
        Ok(())
    })
    .await;
    if let Err(e) = accepted {
        tracing::warn!("refused a direct channel: {e}");
        return;
    }
    let Admitted {
        provider_key,
        link_name,
        contract_id,
    } = admitted.expect("set by the accepted handshake");
    tracing::debug!(provider = %provider_key, link_name = %link_name, "direct channel open");

    let (tx, rx) = mpsc::channel(crate::OUTBOUND_QUEUE);
    let mut writer_task = tokio::spawn(crate::write_loop(FrameWriter::new(writer), rx));
    let mut frames = FrameReader::<_, FromProvider>::new(reader);
    let mut calls = JoinSet::new();
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            _ = &mut writer_task => break,
        };
        match frame {
            Ok(Some(FromProvider::CallActor {
                id,
                actor_id,
                operation,
                payload,
            })) => {
                let (runtime, tx) = (runtime.clone(), tx.clone());
                let (provider, contract) = (provider_key.clone(), contract_id.clone());
                calls.spawn(async move {
                    let result = match runtime.check_provider_call(&actor_id, &contract, &provider)
                    {
                        Ok(()) => runtime
                            .invoke(&actor_id, operation, payload.into_vec())
                            .await
                            .map(Bytes::from),
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(ToProvider::CallActorResult { id, result }).await;
                });
            }
            Ok(Some(_)) => {
                tracing::warn!(
                    provider = %provider_key,
                    "closing a direct channel: only CallActor is served on it"
                );
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(provider = %provider_key, "bad frame on a direct channel: {e}");
                break;
            }
        }
        while calls.try_join_next().is_some() {}
    }
    tracing::debug!(provider = %provider_key, link_name = %link_name, "direct channel closed");
    writer_task.abort();
}
