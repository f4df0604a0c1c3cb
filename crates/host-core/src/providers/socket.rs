//! The provider socket: providers connect to it with their launch token,
//! and each connection becomes that provider's channel: its links, the
//! actors' calls to it, its calls to actors, its health.

use std::{sync::Arc, time::Duration};

use anyhow::{anyhow, Result};
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use wire::calls::CallTable;
use wire::tasks::CallTasks;
use wire::{
    control::ProcessState,
    handshake::{self, Role},
    provider::{FromProvider, ToProvider},
    CallError, FrameReader,
};

use super::{
    DataPathTarget, ProviderCall, ProviderConn, ProviderOwner, ProviderSupervisor, READY_TIMEOUT,
};
use crate::child;

impl ProviderSupervisor {
    pub(crate) async fn accept_providers(
        self: Arc<Self>,
        listener: Listener,
        owner: Arc<dyn ProviderOwner>,
    ) {
        let our_uid = nix::unistd::geteuid().as_raw();
        loop {
            let stream: Stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("provider socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if stream.peer_creds().ok().and_then(|c| c.euid()) != Some(our_uid) {
                tracing::warn!("refused a provider connection from another user");
                continue;
            }
            let this = self.clone();
            let owner = owner.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_provider(stream, owner).await {
                    tracing::warn!("provider connection: {e}");
                }
            });
        }
    }

    async fn serve_provider(
        self: Arc<Self>,
        stream: Stream,
        owner: Arc<dyn ProviderOwner>,
    ) -> Result<()> {
        let (mut reader, mut writer) = wire::socket::split_local(stream)?;
        let mut claimed = None;
        // A peer that connects and says nothing is not kept waiting on.
        let hello = handshake::accept(&mut reader, &mut writer, |hello| {
            if hello.role != Role::Provider {
                return Err("this socket is for capability providers".into());
            }
            match self.tokens.lock().remove(&hello.token) {
                Some(found) if found.0 .0 == hello.key => {
                    claimed = Some(found);
                    Ok(())
                }
                Some(found) => Err(format!(
                    "this token was issued to provider {}, not `{}`",
                    found.0 .0, hello.key
                )),
                None => Err("unknown provider token".into()),
            }
        });
        tokio::time::timeout(child::HANDSHAKE_TIMEOUT, hello)
            .await
            .map_err(|_| anyhow!("no handshake within {:?}", child::HANDSHAKE_TIMEOUT))??;
        let (id, instance) = claimed.expect("set by the accepted handshake");
        let links = owner.links_for(&id.0, &id.1);
        let (tx, mut writer_task) = child::outbox(writer, "a provider");
        let conn = Arc::new(ProviderConn {
            tx: tx.clone(),
            calls: CallTable::default(),
            health: CallTable::default(),
        });
        tx.send_now(ToProvider::Init { links })?;
        let mut frames = FrameReader::<_, FromProvider>::new(reader);
        // A provider may already call actors while it starts (an HTTP request
        // reaching a listener its links just opened), so everything it sends
        // is served from the start; `Ready` marks it running.
        let ready_by = tokio::time::sleep(READY_TIMEOUT);
        tokio::pin!(ready_by);
        let mut ready = false;
        // Its calls to actors, so it can cancel one.
        let mut calls = CallTasks::default();
        let contract = self
            .providers
            .lock()
            .get(&id)
            .map(|r| r.contract_id.clone())
            .unwrap_or_default();
        loop {
            calls.reap();
            let frame = tokio::select! {
                frame = frames.recv() => frame,
                // A write to the provider failed: the channel is half dead.
                _ = &mut writer_task => break,
                _ = &mut ready_by, if !ready => {
                    writer_task.abort();
                    return Err(anyhow!("provider {} did not get ready within {READY_TIMEOUT:?}", id.0));
                }
            };
            match frame {
                Ok(Some(FromProvider::Ready)) if !ready => {
                    ready = true;
                    let mut providers = self.providers.lock();
                    let Some(record) = providers.get_mut(&id).filter(|r| r.instance == instance)
                    else {
                        break; // stopped meanwhile
                    };
                    record.conn = Some(conn.clone());
                    record.state = ProcessState::Running;
                    record.health = "healthy".into();
                    owner.provider_ready(DataPathTarget {
                        key: id.0.clone(),
                        link_name: id.1.clone(),
                        contract_id: record.contract_id.clone(),
                        tx: conn.tx.clone(),
                    });
                    if let Some(waiter) = record.ready.take() {
                        let _ = waiter.send(Ok(()));
                    } else {
                        self.events.publish(
                            "provider_restarted",
                            serde_json::json!({"public_key": id.0, "link_name": id.1, "pid": record.pid, "restarts": record.restarts}),
                        );
                    }
                }
                Ok(Some(FromProvider::InvokeResult { id, result })) => {
                    conn.calls.complete(id, result);
                }
                Ok(Some(FromProvider::Health {
                    id,
                    healthy,
                    message,
                })) => {
                    conn.health.complete(id, Ok((healthy, message)));
                }
                // A call the provider gave up on.
                Ok(Some(FromProvider::CancelCall { id })) => calls.cancel(id),
                Ok(Some(FromProvider::CallActor {
                    id: call_id,
                    actor_id,
                    operation,
                    payload,
                })) => {
                    let call = ProviderCall {
                        provider_id: id.0.clone(),
                        link_name: id.1.clone(),
                        contract_id: contract.clone(),
                        actor: actor_id,
                        operation,
                        payload,
                    };
                    let (owner, conn) = (owner.clone(), conn.clone());
                    calls.spawn(call_id, async move {
                        let result = owner.provider_call(call).await;
                        let _ = conn.tx.send_reply_now(ToProvider::CallActorResult {
                            id: call_id,
                            result,
                        });
                    });
                }
                Ok(Some(FromProvider::Ready)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(provider = %id.0, "bad frame from the provider: {e}");
                    break;
                }
            }
        }
        calls.abort_all();
        conn.calls.fail_all(CallError::unavailable(format!(
            "provider {} closed its connection",
            id.0
        )));
        if let Some(record) = self.providers.lock().get_mut(&id) {
            if record.instance == instance {
                record.conn = None;
            }
        }
        writer_task.abort();
        Ok(())
    }
}
