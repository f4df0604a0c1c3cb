//! Calls into and out of the worker and providers, each resolved by the
//! [`Router`], and the owner interfaces the supervisors report up through.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use wire::{provider::Link, Bytes, CallError, CallResult};

use super::{
    router::{Router, Target},
    Host, REPLY_MARGIN,
};
use crate::{
    providers::{DataPathTarget, ProviderCall, ProviderOwner},
    supervise::Exit,
    worker::{HostCall, WorkerConn, WorkerOwner},
};

impl Host {
    pub(super) fn router(&self) -> Router<'_> {
        Router {
            actors: &self.actors,
            links: &*self.links,
        }
    }

    /// Invokes an actor by key or call alias (`ctl call`).
    pub async fn call_actor(
        &self,
        target: &str,
        operation: &str,
        payload: Bytes,
    ) -> CallResult<Bytes> {
        let target = self.router().actor(target)?;
        self.deliver(
            target,
            None,
            operation,
            payload,
            self.config.invocation_timeout,
        )
        .await
    }

    /// Carries a call to where the router said it goes, within `timeout`.
    /// `caller` is the calling actor, for calls to providers.
    async fn deliver(
        &self,
        target: Target,
        caller: Option<&str>,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        let timeout = timeout.min(self.config.invocation_timeout);
        match target {
            Target::Actor(key) => {
                let conn = self.conn().await?;
                conn.invoke(&key, operation, payload, timeout, REPLY_MARGIN)
                    .await
            }
            Target::Provider {
                provider_id,
                link_name,
                ..
            } => {
                self.providers
                    .invoke(
                        &provider_id,
                        &link_name,
                        caller.unwrap_or_default(),
                        operation,
                        payload,
                        timeout,
                    )
                    .await
            }
            Target::Builtin(builtin) => Err(CallError::internal(format!(
                "{builtin} is answered by the actor-runtime worker, not the host"
            ))),
        }
    }
}

impl WorkerOwner for Host {
    fn worker_started<'a>(&'a self, conn: &'a Arc<WorkerConn>) -> BoxFuture<'a, ()> {
        Box::pin(self.restore_actors(conn))
    }

    fn worker_serving(&self, _conn: Arc<WorkerConn>) {
        self.spawn_data_paths();
    }

    fn host_call(&self, call: HostCall) -> BoxFuture<'_, CallResult<Bytes>> {
        Box::pin(async move {
            let target = self
                .router()
                .host_call(&call.actor, &call.binding, &call.namespace)?;
            // Boxed: an actor's call to an actor comes back through here.
            Box::pin(self.deliver(
                target,
                Some(&call.actor),
                &call.operation,
                call.payload,
                call.timeout,
            ))
            .await
        })
    }

    fn worker_died(&self, exit: Exit, in_flight: Vec<Arc<str>>) -> bool {
        self.actors_crashed_worker(exit, in_flight)
    }
}

impl ProviderOwner for Host {
    fn links_for(&self, provider_id: &str, link_name: &str) -> Vec<Link> {
        self.links.for_provider(provider_id, link_name)
    }

    fn provider_call(&self, call: ProviderCall) -> BoxFuture<'_, CallResult<Bytes>> {
        Box::pin(async move {
            let target =
                self.router()
                    .from_provider(&call.provider_id, &call.contract_id, &call.actor)?;
            self.deliver(
                target,
                None,
                &call.operation,
                call.payload,
                self.config.invocation_timeout,
            )
            .await
        })
    }

    fn provider_ready(&self, target: DataPathTarget) {
        self.spawn_data_path(target);
    }
}
