//! Starting, updating, scaling and stopping actors; restoring them on a
//! new worker; and their supervision: an actor that keeps crashing the
//! worker is stopped, and the others keep serving.

use std::{path::PathBuf, sync::Arc, time::Duration};

use wire::{control::Artifact, worker::WorkerRequest, CallError, CallResult};

use super::{
    artifacts::{ActorSource, ArchiveSource},
    registry::ActorRecord,
    router::{check_call_alias, not_running},
    Host, START_TIMEOUT,
};
use crate::{
    claims,
    supervise::{self, Exit, Supervisor, Verdict},
    worker::WorkerConn,
};

impl Host {
    /// Starts an actor from its wasm.
    pub async fn start_actor(&self, wasm: Vec<u8>, count: u32) -> CallResult<String> {
        self.start_actor_source(
            ActorSource {
                wasm,
                image_ref: None,
            },
            count,
        )
        .await
    }

    /// Starts an actor from bytes, a file or an OCI reference.
    pub async fn start_actor_from(&self, artifact: Artifact, count: u32) -> CallResult<String> {
        if count == 0 {
            return Err(CallError::denied("the instance count must be at least 1"));
        }
        let source = self.actor_source(artifact).await?;
        self.start_actor_source(source, count).await
    }

    /// Starts an actor whose wasm is at hand; `image_ref` is kept for the
    /// inventory.
    pub async fn start_actor_source(&self, source: ActorSource, count: u32) -> CallResult<String> {
        let ActorSource { wasm, image_ref } = source;
        if count == 0 {
            return Err(CallError::denied("the instance count must be at least 1"));
        }
        let verified = claims::verify(&wasm, &self.config.allowed_issuers)
            .map_err(|e| CallError::denied(format!("actor refused: {e}")))?;
        let _guard = self.lifecycle.lock().await;
        let key = verified.key().to_owned();
        if self.actors.contains(&key) {
            return Err(CallError::denied(format!(
                "actor {key} is already running; use scale-actor or update-actor"
            )));
        }
        self.check_alias(verified.metadata.call_alias.as_deref(), &key)?;
        let record = ActorRecord::new(&verified, wasm, count, image_ref);
        let conn = self.conn().await?;
        conn.request(
            WorkerRequest::StartActor(record.spec.clone()),
            START_TIMEOUT,
        )
        .await
        .map_err(|e| e.context(format_args!("actor {key} could not start")))?;
        tracing::info!(actor = %key, name = %record.summary.name, count, "actor started");
        let event = serde_json::json!({"public_key": key, "name": record.summary.name, "count": count, "issuer": record.summary.issuer});
        // Registered first: whoever hears the event finds it running.
        self.actors.insert(record);
        self.events.publish("actor_started", event);
        Ok(key)
    }

    /// Replaces a running actor with a higher revision of itself, from
    /// bytes, a file or an OCI reference.
    pub async fn update_actor_from(&self, key: &str, artifact: Artifact) -> CallResult<()> {
        let source = self.actor_source(artifact).await?;
        self.update_actor_source(key, source).await
    }

    pub async fn update_actor(&self, key: &str, wasm: Vec<u8>) -> CallResult<()> {
        self.update_actor_source(
            key,
            ActorSource {
                wasm,
                image_ref: None,
            },
        )
        .await
    }

    async fn update_actor_source(&self, key: &str, source: ActorSource) -> CallResult<()> {
        let ActorSource { wasm, image_ref } = source;
        let verified = claims::verify(&wasm, &self.config.allowed_issuers)
            .map_err(|e| CallError::denied(format!("update refused: {e}")))?;
        let _guard = self.lifecycle.lock().await;
        if verified.key() != key {
            return Err(CallError::denied(format!(
                "update refused: the new wasm is actor {}, not {key}",
                verified.key()
            )));
        }
        let (count, old_rev) = self
            .actors
            .with(key, |r| (r.summary.count, r.summary.rev.unwrap_or(0)))
            .ok_or_else(|| not_running(key))?;
        let new_rev = verified.metadata.rev.unwrap_or(0);
        if new_rev <= old_rev {
            return Err(CallError::denied(format!(
                "update refused: revision {new_rev} is not higher than the running revision {old_rev}"
            )));
        }
        self.check_alias(verified.metadata.call_alias.as_deref(), key)
            .map_err(|e| e.context("update refused"))?;
        let record = ActorRecord::new(&verified, wasm, count, image_ref);
        let conn = self.conn().await?;
        conn.request(
            WorkerRequest::UpdateActor(record.spec.clone()),
            START_TIMEOUT,
        )
        .await
        .map_err(|e| e.context(format_args!("actor {key} could not be updated")))?;
        tracing::info!(actor = %key, rev = new_rev, "actor updated");
        self.actors.insert(record);
        self.events.publish(
            "actor_updated",
            serde_json::json!({"public_key": key, "rev": new_rev}),
        );
        Ok(())
    }

    /// A call alias must be a plain name (never a contract id or a key)
    /// that no other actor of this host uses.
    fn check_alias(&self, alias: Option<&str>, key: &str) -> CallResult<()> {
        let Some(alias) = alias else {
            return Ok(());
        };
        check_call_alias(alias).map_err(CallError::denied)?;
        if let Some(owner) = self.actors.alias_owner(alias, key) {
            return Err(CallError::denied(format!(
                "call alias `{alias}` is already used by actor {owner}"
            )));
        }
        if alias != key && self.actors.contains(alias) {
            return Err(CallError::denied(format!(
                "call alias `{alias}` is the key of another actor"
            )));
        }
        Ok(())
    }

    pub async fn scale_actor(&self, key: &str, count: u32) -> CallResult<()> {
        if count == 0 {
            return self.stop_actor(key).await;
        }
        let _guard = self.lifecycle.lock().await;
        if !self.actors.contains(key) {
            return Err(not_running(key));
        }
        let conn = self.conn().await?;
        conn.request(
            WorkerRequest::ScaleActor {
                key: key.to_owned(),
                instances: count,
            },
            self.call_timeout(),
        )
        .await?;
        self.actors.set_count(key, count);
        tracing::info!(actor = %key, count, "actor scaled");
        self.events.publish(
            "actor_scaled",
            serde_json::json!({"public_key": key, "count": count}),
        );
        Ok(())
    }

    pub async fn stop_actor(&self, key: &str) -> CallResult<()> {
        let _guard = self.lifecycle.lock().await;
        if !self.actors.contains(key) {
            return Err(not_running(key));
        }
        // Forget it first: if the worker dies now, it is not restored.
        self.actors.remove(key);
        self.strikes.lock().remove(key);
        if let Ok(conn) = self.conn().await {
            if let Err(e) = conn
                .request(
                    WorkerRequest::StopActor {
                        key: key.to_owned(),
                    },
                    self.call_timeout(),
                )
                .await
            {
                tracing::warn!(actor = %key, "stopping on the worker: {e}");
            }
        }
        tracing::info!(actor = %key, "actor stopped");
        self.events
            .publish("actor_stopped", serde_json::json!({"public_key": key}));
        Ok(())
    }

    /// Re-creates every registered actor on a new worker. An actor whose
    /// claims expired since it started is not restored, but stopped.
    /// Other failures are logged and the actor stays registered, so the
    /// next restart tries again.
    pub(super) async fn restore_actors(&self, conn: &WorkerConn) {
        for key in self.actors.keys() {
            if self.actors.with(&key, ActorRecord::expired) == Some(true) {
                self.actors.remove(&key);
                tracing::error!(actor = %key, "actor not restored: its claims have expired");
                self.events.publish(
                    "actor_stopped",
                    serde_json::json!({"public_key": key, "reason": "its claims have expired"}),
                );
            }
        }
        let specs = self.actors.specs();
        let restores = specs.into_iter().map(|spec| async move {
            let key = spec.key.clone();
            if let Err(e) = conn
                .request(WorkerRequest::StartActor(spec), START_TIMEOUT)
                .await
            {
                tracing::error!(actor = %key, "could not restore the actor: {e}");
            }
        });
        let count = restores.len();
        futures::future::join_all(restores).await;
        if count > 0 {
            tracing::info!("restored {count} actor(s) on the new worker");
        }
    }

    /// The worker died of a fault with these actors' calls in flight: each
    /// gets a strike, and one past its restart intensity is stopped (not
    /// restored), with an event and a log line naming it. True if any
    /// actor was in flight, so the crash does not count against the worker.
    pub(super) fn actors_crashed_worker(&self, exit: Exit, in_flight: Vec<Arc<str>>) -> bool {
        if !exit.is_fault() || in_flight.is_empty() {
            return false;
        }
        let mut suspects: Vec<Arc<str>> = in_flight;
        suspects.sort();
        suspects.dedup();
        let mut given_up = Vec::new();
        {
            let mut strikes = self.strikes.lock();
            for key in &suspects {
                let record = strikes
                    .entry(key.to_string())
                    .or_insert_with(|| Supervisor::new(supervise::ACTOR));
                if record.exited(Duration::ZERO) == Verdict::GiveUp {
                    given_up.push((key.to_string(), record.describe()));
                }
            }
            for (key, _) in &given_up {
                strikes.remove(key);
            }
        }
        tracing::warn!(
            actors = ?suspects,
            "the worker {exit} with calls of these actors in flight"
        );
        for (key, limit) in given_up {
            if self.actors.remove(&key).is_none() {
                continue;
            }
            let reason = format!("it crashed the actor-runtime worker more than {limit}");
            tracing::error!(actor = %key, "actor stopped: {reason}");
            self.events.publish(
                "actor_failed",
                serde_json::json!({"public_key": key, "reason": reason}),
            );
            self.events.publish(
                "actor_stopped",
                serde_json::json!({"public_key": key, "reason": reason}),
            );
        }
        true
    }

    /// Starts a provider from its archive (see
    /// [`ProviderSupervisor::start_provider`](crate::providers::ProviderSupervisor::start_provider)).
    pub async fn start_provider(
        &self,
        path: PathBuf,
        link_name: String,
        config_json: String,
    ) -> CallResult<String> {
        self.start_provider_source(
            ArchiveSource {
                path,
                image_ref: None,
            },
            link_name,
            config_json,
        )
        .await
    }

    /// Starts a provider from an archive's path or an OCI reference.
    pub async fn start_provider_from(
        &self,
        archive: Artifact,
        link_name: String,
        config_json: String,
    ) -> CallResult<String> {
        let source = self.archive_source(archive).await?;
        self.start_provider_source(source, link_name, config_json)
            .await
    }

    pub async fn start_provider_source(
        &self,
        source: ArchiveSource,
        link_name: String,
        config_json: String,
    ) -> CallResult<String> {
        self.providers
            .start_provider(source.path, source.image_ref, link_name, config_json)
            .await
    }

    pub async fn stop_provider(&self, key: &str, link_name: &str) -> CallResult<()> {
        self.providers.stop_provider(key, link_name).await
    }
}
