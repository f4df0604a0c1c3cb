//! Link changes and what follows from them: providers hear of each change
//! in order, the worker's routes for actors' direct calls are derived from
//! the link store after each, and each running provider is opened a direct
//! channel to the worker.

use std::time::Duration;

use wire::{
    provider::{Link, ToProvider},
    worker::{Route, WorkerRequest},
    CallError, CallResult,
};

use super::{
    links::{LinkChange, LinkKey, Stored},
    router::{is_contract_id, looks_like_key},
    Host,
};
use crate::providers::DataPathTarget;

/// How often, and after what first pause, the host tries again to admit a
/// provider to the worker or to give the worker its routes.
const DATA_PATH_ATTEMPTS: u32 = 5;
const DATA_PATH_RETRY_FIRST: Duration = Duration::from_millis(100);

impl Host {
    /// Sets or replaces a link, then tells its provider and the worker, so
    /// the next call through the link takes the new route. Refused when the
    /// actor's claims (if it runs here) do not name the contract in their
    /// caps, or the provider (if it runs here) implements another contract.
    pub async fn link_put(&self, link: Link) -> CallResult<()> {
        self.check_link(&link)?;
        let stored = self
            .links
            .put(link)
            .await
            .map_err(|e| CallError::unavailable(e.to_string()))?;
        if let Stored::Applied(change) = stored {
            self.apply_link_change(change).await;
        }
        Ok(())
    }

    /// Deletes a link, then tells its provider and the worker, so no call
    /// after this returns takes the old route.
    pub async fn link_del(&self, actor: &str, contract: &str, link_name: &str) -> CallResult<()> {
        let key = LinkKey::new(actor, contract, link_name);
        let stored = self
            .links
            .delete(key.clone())
            .await
            .map_err(|e| CallError::unavailable(e.to_string()))?;
        match stored {
            Stored::Applied(change) => self.apply_link_change(change).await,
            Stored::Delivered => {}
            Stored::Missing => return Err(CallError::not_found(format!("no link for {key}"))),
        }
        Ok(())
    }

    pub fn links(&self) -> Vec<Link> {
        self.links.list()
    }

    fn check_link(&self, link: &Link) -> CallResult<()> {
        if !(looks_like_key(&link.actor_id) && link.actor_id.starts_with('M')) {
            return Err(CallError::denied(format!(
                "`{}` is not an actor key (M...)",
                link.actor_id
            )));
        }
        if !(looks_like_key(&link.provider_id) && link.provider_id.starts_with('V')) {
            return Err(CallError::denied(format!(
                "`{}` is not a provider key (V...)",
                link.provider_id
            )));
        }
        if link.link_name.is_empty() {
            return Err(CallError::denied("a link needs a link name"));
        }
        if !is_contract_id(&link.contract_id) {
            return Err(CallError::denied(format!(
                "`{}` is not a contract id (namespace:name, as wasmcloud:keyvalue)",
                link.contract_id
            )));
        }
        if self
            .actors
            .with(&link.actor_id, |r| r.has_cap(&link.contract_id))
            == Some(false)
        {
            return Err(CallError::denied(format!(
                "actor {} may not use {}: it is not in its claims' caps",
                link.actor_id, link.contract_id
            )));
        }
        if let Some(implemented) = self.providers.contract_of(&link.provider_id) {
            if implemented != link.contract_id {
                return Err(CallError::denied(format!(
                    "provider {} implements {implemented}, not {}",
                    link.provider_id, link.contract_id
                )));
            }
        }
        Ok(())
    }

    /// Tells the providers concerned and the worker of a change, made here
    /// or (in a lattice) elsewhere.
    pub(super) async fn apply_link_change(&self, change: LinkChange) {
        match change {
            LinkChange::Put { link, previous } => {
                // A link moved to another provider: the old one forgets it.
                if let Some(old) = previous.filter(|old| old.provider_id != link.provider_id) {
                    self.providers.deliver(
                        &old.provider_id,
                        &old.link_name,
                        ToProvider::LinkDel {
                            actor_id: old.actor_id.clone(),
                            contract_id: old.contract_id.clone(),
                            link_name: old.link_name.clone(),
                        },
                    );
                }
                self.events.publish(
                    "linkdef_set",
                    serde_json::to_value(&link).unwrap_or_default(),
                );
                let (provider, link_name) = (link.provider_id.clone(), link.link_name.clone());
                self.providers
                    .deliver(&provider, &link_name, ToProvider::LinkPut(link));
            }
            LinkChange::Deleted(link) => {
                self.events.publish(
                    "linkdef_deleted",
                    serde_json::json!({"actor_id": link.actor_id, "contract_id": link.contract_id, "link_name": link.link_name, "provider_id": link.provider_id}),
                );
                self.providers.deliver(
                    &link.provider_id,
                    &link.link_name,
                    ToProvider::LinkDel {
                        actor_id: link.actor_id.clone(),
                        contract_id: link.contract_id.clone(),
                        link_name: link.link_name.clone(),
                    },
                );
            }
        }
        self.push_routes().await;
    }

    /// Sends the worker every link as a route for actors' direct calls to
    /// providers. Without a worker there is nothing to update: the next one
    /// gets the routes when it starts.
    async fn push_routes(&self) {
        if self.worker.data_socket().is_none() {
            return;
        }
        let _serialised = self.routes_push.lock().await;
        let Some(conn) = self.worker.current() else {
            return;
        };
        let routes: Vec<Route> = self
            .links
            .list()
            .into_iter()
            .map(|l| Route {
                actor_id: l.actor_id,
                contract_id: l.contract_id,
                link_name: l.link_name,
                provider_key: l.provider_id,
            })
            .collect();
        let request = || WorkerRequest::SetRoutes {
            routes: routes.clone(),
        };
        let mut delay = DATA_PATH_RETRY_FIRST;
        for attempt in 1..=DATA_PATH_ATTEMPTS {
            match conn.request(request(), self.call_timeout()).await {
                Ok(_) => return,
                Err(e) if attempt == DATA_PATH_ATTEMPTS => {
                    tracing::warn!("cannot give the worker the routes to providers: {e}")
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// In the background: the worker's routes, then a direct channel for
    /// every running provider (after a worker start).
    pub(super) fn spawn_data_paths(&self) {
        let Some(host) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            host.push_routes().await;
            for provider in host.providers.data_path_targets() {
                host.open_data_path(provider).await;
            }
        });
    }

    /// In the background: a direct channel for one provider that is ready.
    pub(super) fn spawn_data_path(&self, target: DataPathTarget) {
        if let Some(host) = self.me.upgrade() {
            tokio::spawn(async move { host.open_data_path(target).await });
        }
    }

    /// Opens one provider a direct channel to the worker: the worker admits
    /// a fresh single-use token for it, then the provider is told where to
    /// connect. Until it has, and whenever the channel is down, its calls
    /// come through the host as before, so a failure here only costs speed.
    async fn open_data_path(&self, provider: DataPathTarget) {
        let Some(socket) = self.worker.data_socket() else {
            return;
        };
        // A request can fail without the worker dying (a reply that came
        // after its deadline, for instance), so try again a few times.
        let mut delay = DATA_PATH_RETRY_FIRST;
        for attempt in 1..=DATA_PATH_ATTEMPTS {
            if provider.tx.is_closed() {
                return; // the provider is gone
            }
            let Ok(conn) = self.conn().await else {
                return; // the next worker opens it
            };
            let token = format!("{:032x}", rand::random::<u128>());
            let admitted = conn
                .request(
                    WorkerRequest::AdmitProvider {
                        provider_key: provider.key.clone(),
                        link_name: provider.link_name.clone(),
                        contract_id: provider.contract_id.clone(),
                        token: token.clone(),
                    },
                    self.call_timeout(),
                )
                .await;
            match admitted {
                Ok(_) => {
                    let _ = provider.tx.send_now(ToProvider::DataPath {
                        socket,
                        token,
                        timeout_ms: self.call_timeout().as_millis() as u64,
                    });
                    return;
                }
                Err(e) => tracing::debug!(
                    provider = %provider.key,
                    attempt,
                    "no direct channel to the worker yet: {e}"
                ),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
}
