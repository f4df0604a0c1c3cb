//! Providers' direct channels: a provider that `host-core` admitted (see
//! [`WorkerRequest::AdmitProvider`](wire::worker::WorkerRequest)) connects to
//! the worker's data socket and calls actors without a hop through the host.
//!
//! The socket is owner-only inside the host's 0700 runtime directory, the
//! peer's uid must be ours, and the handshake must carry a provider key and
//! the single-use token `host-core` issued for it. The provider's
//! `CallActor`s are served only to actors whose caps name its contract; the
//! other way, an actor's call to a linked provider goes out as `Invoke` when
//! [`Routes`] has a route and the provider's channel is open.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use wire::calls::{CallTable, CancelOnDrop};
use wire::handshake::{self, Role};
use wire::outbox::Outbox;
use wire::provider::{FromProvider, ToProvider};
use wire::tasks::CallTasks;
use wire::worker::{CallId, Route};
use wire::{Bytes, CallError, CallResult, FrameReader, FrameWriter};

use crate::actors::Runtime;

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
        let mut tokens = self.by_token.lock();
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
        let mut tokens = self.by_token.lock();
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

/// (actor, contract, link name) -> provider key.
type RouteTable = HashMap<(String, String, String), String>;

/// Where actors' calls to providers can go directly: the links `host-core`
/// sent, and the providers' open channels by (provider key, link name).
#[derive(Default)]
pub(crate) struct Routes {
    links: RwLock<RouteTable>,
    channels: RwLock<HashMap<(String, String), Arc<ProviderChannel>>>,
}

impl Routes {
    pub(crate) fn set(&self, routes: Vec<Route>) {
        let table = routes
            .into_iter()
            .map(|r| ((r.actor_id, r.contract_id, r.link_name), r.provider_key))
            .collect();
        *self.links.write() = table;
    }

    /// The open channel of the provider linked to `actor` for `contract`
    /// under `link_name`, if there is one.
    pub(crate) fn channel(
        &self,
        actor: &str,
        contract: &str,
        link_name: &str,
    ) -> Option<Arc<ProviderChannel>> {
        let links = self.links.read();
        let provider = links.get(&(actor.to_owned(), contract.to_owned(), link_name.to_owned()))?;
        self.channels
            .read()
            .get(&(provider.clone(), link_name.to_owned()))
            .cloned()
    }

    fn open(&self, link_name: &str, channel: Arc<ProviderChannel>) {
        let key = (channel.provider_key.clone(), link_name.to_owned());
        self.channels.write().insert(key, channel);
    }

    fn close(&self, link_name: &str, channel: &Arc<ProviderChannel>) {
        let key = (channel.provider_key.clone(), link_name.to_owned());
        let mut channels = self.channels.write();
        if channels.get(&key).is_some_and(|c| Arc::ptr_eq(c, channel)) {
            channels.remove(&key);
        }
        drop(channels);
        channel.fail_all();
    }
}

/// One provider's direct channel, as actors' calls to it see it.
pub(crate) struct ProviderChannel {
    provider_key: String,
    tx: Outbox<ToProvider>,
    calls: CallTable<Bytes>,
}

impl ProviderChannel {
    /// Calls the provider for `actor`. Errors read as on the host path:
    /// `provider V...: reason`. The invocation's deadline bounds the wait;
    /// a call given up before its answer tells the provider to stop it.
    pub(crate) async fn invoke(
        &self,
        actor: &str,
        operation: String,
        payload: Vec<u8>,
    ) -> CallResult<Vec<u8>> {
        wire::check_payload("request", payload.len())?;
        let pending = self.calls.register().map_err(|_| self.gone())?;
        let id = pending.id();
        let invoke = ToProvider::Invoke {
            id,
            actor_id: actor.to_owned(),
            operation,
            payload: Bytes::from(payload),
        };
        // The only call in flight (an actor making one get after another)
        // is written at once; under load the outbox batches as usual.
        let sent = if pending.alone() {
            self.tx.send_alone(invoke).await
        } else {
            self.tx.send(invoke).await
        };
        sent.map_err(|e| match e {
            wire::outbox::SendError::Closed => self.gone(),
            other => other.into_call_error("request"),
        })?;
        let cancel = CancelOnDrop::new(&self.tx, ToProvider::Cancel { id });
        let result = pending.wait().await;
        cancel.disarm();
        match result {
            Ok(bytes) => Ok(bytes.into_vec()),
            Err(e) if e.kind == wire::ErrorKind::Unavailable && !self.calls.is_open() => {
                Err(self.gone())
            }
            Err(e) => Err(e.context(format_args!("provider {}", self.provider_key))),
        }
    }

    fn complete(&self, id: CallId, result: CallResult<Bytes>) {
        self.calls.complete(id, result);
    }

    fn fail_all(&self) {
        self.calls.fail_all(self.gone());
    }

    fn gone(&self) -> CallError {
        CallError::unavailable(format!(
            "provider {}: its channel closed while handling this call",
            self.provider_key
        ))
    }
}

/// Binds the data socket (owner-only) and serves providers' direct
/// channels until the returned task is aborted; aborting it also ends every
/// channel it accepted.
pub(crate) fn listen(
    path: &str,
    runtime: Arc<Runtime>,
    admissions: Arc<Admissions>,
    routes: Arc<Routes>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // A socket file left by a worker that was killed.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::debug!(socket = path, "listening for providers' direct channels");
    Ok(tokio::spawn(accept_loop(
        listener, runtime, admissions, routes,
    )))
}

async fn accept_loop(
    listener: UnixListener,
    runtime: Arc<Runtime>,
    admissions: Arc<Admissions>,
    routes: Arc<Routes>,
) {
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
                    channels.spawn(serve(
                        stream,
                        runtime.clone(),
                        admissions.clone(),
                        routes.clone(),
                    ));
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
/// own task, and the answers to actors' calls to it, until it hangs up.
async fn serve(
    stream: UnixStream,
    runtime: Arc<Runtime>,
    admissions: Arc<Admissions>,
    routes: Arc<Routes>,
) {
    let halves = stream.into_std().and_then(wire::socket::split);
    let (mut reader, mut writer) = match halves {
        Ok(halves) => halves,
        Err(e) => {
            tracing::warn!("cannot serve a direct channel: {e}");
            return;
        }
    };
    let mut admitted = None;
    let accepted = handshake::accept(&mut reader, &mut writer, |hello| {
        if hello.role != Role::Provider {
            return Err("this socket is for capability providers' direct channels".into());
        }
        admitted = Some(admissions.claim(&hello.token, &hello.key)?);
        Ok(())
    });
    match tokio::time::timeout(handshake::HANDSHAKE_TIMEOUT, accepted).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!("refused a direct channel: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(
                "closed a connection to the data socket: no handshake within {} s",
                handshake::HANDSHAKE_TIMEOUT.as_secs()
            );
            return;
        }
    }
    let Admitted {
        provider_key,
        link_name,
        contract_id,
    } = admitted.expect("set by the accepted handshake");
    tracing::debug!(provider = %provider_key, link_name = %link_name, "direct channel open");

    // Without the duplicate descriptor every message goes through the pump.
    let direct = writer.direct().ok();
    let (tx, pump) = Outbox::new(
        FrameWriter::new(writer),
        direct,
        Some(crate::OUTBOUND_QUEUE),
    );
    let mut writer_task = tokio::spawn(pump.run());
    let channel = Arc::new(ProviderChannel {
        provider_key: provider_key.clone(),
        tx: tx.clone(),
        calls: CallTable::default(),
    });
    routes.open(&link_name, channel.clone());
    let mut frames = FrameReader::<_, FromProvider>::new(reader);
    let mut calls = CallTasks::default();
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
                let link = link_name.clone();
                calls.spawn(id, async move {
                    let result = match runtime.check_provider_call(&actor_id, &contract, &provider)
                    {
                        // Boxed, like the host's calls: the future is large.
                        Ok(()) => {
                            Box::pin(runtime.invoke(&actor_id, operation, payload.into_vec(), None))
                                .await
                                .map(Bytes::from)
                        }
                        // Not here: the host knows where (another host of
                        // its lattice), or says it is nowhere.
                        Err(e) if e.kind == wire::ErrorKind::NotFound => runtime
                            .outbound
                            .forward_provider_call(
                                &provider,
                                &link,
                                &contract,
                                &actor_id,
                                operation,
                                payload.into_vec(),
                            )
                            .await
                            .map(Bytes::from),
                        Err(e) => Err(e),
                    };
                    let _ = tx
                        .send_reply(ToProvider::CallActorResult { id, result })
                        .await;
                });
            }
            Ok(Some(FromProvider::CancelCall { id })) => calls.cancel(id),
            Ok(Some(FromProvider::InvokeResult { id, result })) => channel.complete(id, result),
            Ok(Some(_)) => {
                tracing::warn!(
                    provider = %provider_key,
                    "closing a direct channel: only CallActor and InvokeResult are served on it"
                );
                break;
            }
            Ok(None) => break,
            // A provider that dies resets its channel; its supervisor reports that.
            Err(wire::WireError::Io(e)) => {
                tracing::debug!(provider = %provider_key, "direct channel broke: {e}");
                break;
            }
            Err(e) => {
                tracing::warn!(provider = %provider_key, "bad frame on a direct channel: {e}");
                break;
            }
        }
        calls.reap();
    }
    tracing::debug!(provider = %provider_key, link_name = %link_name, "direct channel closed");
    routes.close(&link_name, &channel);
    writer_task.abort();
}
