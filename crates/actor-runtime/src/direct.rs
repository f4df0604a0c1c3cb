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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use wire::handshake::{self, Role};
use wire::outbox::Outbox;
use wire::provider::{FromProvider, ToProvider};
use wire::worker::{CallId, Route};
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

/// Calls waiting for their answers, by id; `None` once the channel is gone.
type Waiters = Option<HashMap<CallId, oneshot::Sender<Result<Bytes, String>>>>;

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
        *self.links.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The open channel of the provider linked to `actor` for `contract`
    /// under `link_name`, if there is one.
    pub(crate) fn channel(
        &self,
        actor: &str,
        contract: &str,
        link_name: &str,
    ) -> Option<Arc<ProviderChannel>> {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        let provider = links.get(&(actor.to_owned(), contract.to_owned(), link_name.to_owned()))?;
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(provider.clone(), link_name.to_owned()))
            .cloned()
    }

    fn open(&self, link_name: &str, channel: Arc<ProviderChannel>) {
        let key = (channel.provider_key.clone(), link_name.to_owned());
        self.channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, channel);
    }

    fn close(&self, link_name: &str, channel: &Arc<ProviderChannel>) {
        let key = (channel.provider_key.clone(), link_name.to_owned());
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
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
    next_id: AtomicU64,
    pending: Mutex<Waiters>,
}

impl ProviderChannel {
    /// Calls the provider for `actor`. Errors read as on the host path:
    /// `provider V...: reason`. The invocation's deadline bounds the wait.
    pub(crate) async fn invoke(
        &self,
        actor: &str,
        operation: String,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let alone = match lock(&self.pending).as_mut() {
            Some(pending) => {
                pending.insert(id, tx);
                pending.len() == 1
            }
            None => return Err(self.gone()),
        };
        // Forget the entry however this future ends (answered or dropped).
        let _entry = ForgetOnDrop { channel: self, id };
        let invoke = ToProvider::Invoke {
            id,
            actor_id: actor.to_owned(),
            operation,
            payload: Bytes::from(payload),
        };
        // The only call in flight (an actor making one get after another)
        // is written at once; under load the outbox batches as usual.
        let sent = if alone {
            self.tx.send_alone(invoke).await
        } else {
            self.tx.send(invoke).await
        };
        if sent.is_err() {
            return Err(self.gone());
        }
        match rx.await {
            Ok(Ok(bytes)) => Ok(bytes.into_vec()),
            Ok(Err(e)) => Err(format!("provider {}: {e}", self.provider_key)),
            Err(_) => Err(self.gone()),
        }
    }

    fn complete(&self, id: CallId, result: Result<Bytes, String>) {
        let waiter = lock(&self.pending).as_mut().and_then(|p| p.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    fn fail_all(&self) {
        // Dropping the senders wakes every waiter with `gone`.
        drop(lock(&self.pending).take());
    }

    fn gone(&self) -> String {
        format!(
            "provider {}: its channel closed while handling this call",
            self.provider_key
        )
    }
}

struct ForgetOnDrop<'a> {
    channel: &'a ProviderChannel,
    id: CallId,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(pending) = lock(&self.channel.pending).as_mut() {
            pending.remove(&self.id);
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
        next_id: AtomicU64::new(1),
        pending: Mutex::new(Some(HashMap::new())),
    });
    routes.open(&link_name, channel.clone());
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
                        // Boxed, like the host's calls: the future is large.
                        Ok(()) => {
                            Box::pin(runtime.invoke(&actor_id, operation, payload.into_vec()))
                                .await
                                .map(Bytes::from)
                        }
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(ToProvider::CallActorResult { id, result }).await;
                });
            }
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
        while calls.try_join_next().is_some() {}
    }
    tracing::debug!(provider = %provider_key, link_name = %link_name, "direct channel closed");
    routes.close(&link_name, &channel);
    writer_task.abort();
}
