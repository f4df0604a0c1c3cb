//! Calls into and out of the worker and providers, each resolved by the
//! [`Router`], and the owner interfaces the supervisors report up through.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use wire::{provider::Link, Bytes, CallError, CallResult};

use super::{
    remote::{Origin, RemoteCall},
    router::{ProviderDirectory, Router, Target},
    Host, REPLY_MARGIN,
};
use crate::{
    providers::{DataPathTarget, ProviderCall, ProviderOwner, ProviderSupervisor},
    supervise::Exit,
    worker::{ForwardedCall, HostCall, WorkerConn, WorkerOwner},
};

impl Host {
    pub(super) fn router(&self) -> Router<'_> {
        Router {
            actors: &self.actors,
            links: &*self.links,
            providers: &*self.providers,
            remote: self.remote.get().map(|r| &**r),
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
            Origin::Control,
            operation,
            payload,
            self.config.invocation_timeout,
        )
        .await
    }

    /// Carries a call from `origin` to where the router said it goes,
    /// within `timeout`.
    async fn deliver(
        &self,
        target: Target,
        origin: Origin,
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
                let Origin::Actor(actor) = &origin else {
                    return Err(CallError::denied("only actors call providers"));
                };
                self.providers
                    .invoke(&provider_id, &link_name, actor, operation, payload, timeout)
                    .await
            }
            Target::Builtin(builtin) => Err(CallError::internal(format!(
                "{builtin} is answered by the actor-runtime worker, not the host"
            ))),
            Target::Remote(target) => {
                let remote = self.remote.get().ok_or_else(|| {
                    CallError::internal("a remote target on a host that joined no lattice")
                })?;
                remote
                    .invoke(RemoteCall {
                        origin,
                        target,
                        operation: operation.to_owned(),
                        payload,
                        timeout,
                    })
                    .await
            }
        }
    }

    /// Another host of the lattice calls an actor of this one. Checked as
    /// a local call would be: a provider's call only reaches an actor whose
    /// caps name its contract.
    pub async fn serve_actor_call(
        &self,
        origin: Origin,
        actor: &str,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        let key = self
            .actors
            .resolve(actor)
            .ok_or_else(|| super::router::not_running(actor))?;
        if let Origin::Provider {
            key: provider,
            contract_id,
            ..
        } = &origin
        {
            if self.actors.with(&key, |r| r.has_cap(contract_id)) != Some(true) {
                return Err(CallError::denied(format!(
                    "actor {key} does not accept calls from {contract_id} (provider {provider}): the contract is not in its claims' caps"
                )));
            }
        }
        self.deliver(Target::Actor(key), origin, operation, payload, timeout)
            .await
    }

    /// Another host's actor calls a provider of this one. Checked as a
    /// local call would be: the contract must be in the actor's caps
    /// (`actor_caps`, from its claims in the lattice) and a link must join
    /// the actor to this provider for the contract and link name.
    #[expect(clippy::too_many_arguments, reason = "one call's parts, all needed")]
    pub async fn serve_provider_call(
        &self,
        actor: &str,
        actor_caps: &[String],
        provider_id: &str,
        link_name: &str,
        contract_id: &str,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        if !actor_caps.iter().any(|c| c == contract_id) {
            return Err(CallError::denied(format!(
                "actor {actor} is not allowed to call {contract_id}: the contract is not in its claims' caps"
            )));
        }
        let key = super::links::LinkKey::new(actor, contract_id, link_name);
        match self.links.get(&key) {
            Some(link) if link.provider_id == provider_id => {}
            _ => {
                return Err(CallError::not_found(format!(
                    "no link joins {key} to provider {provider_id}"
                )))
            }
        }
        let target = Target::Provider {
            provider_id: provider_id.to_owned(),
            link_name: link_name.to_owned(),
            contract_id: contract_id.to_owned(),
        };
        self.deliver(
            target,
            Origin::Actor(actor.to_owned()),
            operation,
            payload,
            timeout,
        )
        .await
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
                Origin::Actor(call.actor),
                &call.operation,
                call.payload,
                call.timeout,
            ))
            .await
        })
    }

    fn forwarded_call(&self, call: ForwardedCall) -> BoxFuture<'_, CallResult<Bytes>> {
        self.provider_call(ProviderCall {
            provider_id: call.provider_key,
            link_name: call.link_name,
            contract_id: call.contract_id,
            actor: call.actor,
            operation: call.operation,
            payload: call.payload,
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
            let origin = Origin::Provider {
                key: call.provider_id,
                link_name: call.link_name,
                contract_id: call.contract_id,
            };
            self.deliver(
                target,
                origin,
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

impl ProviderDirectory for ProviderSupervisor {
    fn runs(&self, key: &str, link_name: &str) -> bool {
        ProviderSupervisor::runs(self, key, link_name)
    }
}
