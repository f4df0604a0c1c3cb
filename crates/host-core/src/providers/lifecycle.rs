//! Starting, stopping and restarting providers: one record per (key, link
//! name), a launch per life, and the supervision of each under its own
//! restart policy.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;
use wire::{
    control::ProcessState,
    launcher::{InstanceId, LaunchSpec, LauncherRequest},
    provider::{Bootstrap, ToProvider},
    Bytes, CallError, CallResult, FrameWriter,
};

use super::{launcher::LauncherConn, ProviderConn, ProviderId, ProviderSupervisor, READY_TIMEOUT};
use crate::supervise::{self, Exit, Supervisor, Verdict};

/// SIGTERM to SIGKILL, for a provider's process group.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a provider has to exit after its shutdown message, before SIGTERM.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);
/// The environment of every provider: nothing of the host's but these.
const PROVIDER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub(crate) struct ProviderRecord {
    pub(crate) name: String,
    pub(crate) contract_id: String,
    binary: PathBuf,
    /// The binary's hash from the verified claims: the launcher runs these
    /// bytes or nothing.
    binary_sha256: String,
    config_json: String,
    /// The OCI reference the archive was pulled from.
    pub(crate) image_ref: Option<String>,
    pub(crate) instance: InstanceId,
    pub(crate) pid: Option<u32>,
    pub(crate) state: ProcessState,
    pub(crate) health: String,
    pub(crate) restarts: u32,
    supervisor: Supervisor,
    /// When the current instance was launched.
    launched: Instant,
    pub(crate) conn: Option<Arc<ProviderConn>>,
    /// Whoever waits for the first start to finish.
    pub(crate) ready: Option<oneshot::Sender<CallResult<()>>>,
}

impl ProviderSupervisor {
    /// Starts a provider from the archive at `path` under `link_name`;
    /// resolves once it is ready, with its key.
    pub async fn start_provider(
        self: &Arc<Self>,
        path: PathBuf,
        image_ref: Option<String>,
        link_name: String,
        config_json: String,
    ) -> CallResult<String> {
        if serde_json::from_str::<serde_json::Value>(&config_json).is_err() {
            return Err(CallError::denied(
                "the provider configuration is not valid JSON",
            ));
        }
        let extracted = self.verified_archive(path).await?;
        let id: ProviderId = (extracted.key.clone(), link_name.clone());
        let (ready_tx, ready_rx) = oneshot::channel();
        {
            let mut providers = self.providers.lock();
            if providers.contains_key(&id) {
                return Err(CallError::denied(format!(
                    "provider {} is already running with link name {link_name}",
                    id.0
                )));
            }
            providers.insert(
                id.clone(),
                ProviderRecord {
                    name: extracted
                        .metadata
                        .name
                        .clone()
                        .unwrap_or_else(|| "Unnamed Provider".into()),
                    contract_id: extracted.metadata.capid.clone(),
                    binary: extracted.binary.clone(),
                    binary_sha256: extracted.sha256.clone(),
                    config_json,
                    image_ref,
                    instance: 0,
                    pid: None,
                    state: ProcessState::Starting,
                    health: "unknown".into(),
                    restarts: 0,
                    supervisor: Supervisor::new(supervise::PROVIDER),
                    launched: Instant::now(),
                    conn: None,
                    ready: Some(ready_tx),
                },
            );
        }
        let started = async {
            self.launch(&id).await?;
            match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CallError::unavailable("the provider start was abandoned")),
                Err(_) => Err(CallError::timeout(format!(
                    "the provider did not connect within {READY_TIMEOUT:?}"
                ))),
            }
        }
        .await;
        match started {
            Ok(()) => {
                tracing::info!(provider = %id.0, link_name = %id.1, "provider started");
                let pid = self.providers.lock().get(&id).and_then(|r| r.pid);
                self.events.publish(
                    "provider_started",
                    serde_json::json!({"public_key": id.0, "link_name": id.1, "contract_id": extracted.metadata.capid, "pid": pid}),
                );
                Ok(id.0)
            }
            Err(reason) => {
                self.remove_and_stop(&id).await;
                self.events.publish(
                    "provider_start_failed",
                    serde_json::json!({"public_key": id.0, "link_name": id.1, "error": reason.message}),
                );
                Err(reason.context(format_args!("provider {} could not start", id.0)))
            }
        }
    }

    pub async fn stop_provider(&self, key: &str, link_name: &str) -> CallResult<()> {
        let id = (key.to_owned(), link_name.to_owned());
        if !self.providers.lock().contains_key(&id) {
            return Err(CallError::not_found(format!(
                "no provider {key} with link name {link_name} is running on this host"
            )));
        }
        self.remove_and_stop(&id).await;
        tracing::info!(provider = %key, link_name, "provider stopped");
        self.events.publish(
            "provider_stopped",
            serde_json::json!({"public_key": key, "link_name": link_name, "reason": "stop requested"}),
        );
        Ok(())
    }

    /// Launches a new instance of a registered provider.
    async fn launch(&self, id: &ProviderId) -> CallResult<()> {
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let token = format!("{:032x}", rand::random::<u128>());
        let (binary, binary_sha256, contract_id, config_json) = {
            let mut providers = self.providers.lock();
            let record = providers
                .get_mut(id)
                .ok_or_else(|| CallError::unavailable("the provider was stopped"))?;
            record.instance = instance;
            record.pid = None;
            record.launched = Instant::now();
            (
                record.binary.clone(),
                record.binary_sha256.clone(),
                record.contract_id.clone(),
                record.config_json.clone(),
            )
        };
        let data_dir = self.settings.data_dir.join(&id.0).join(&id.1);
        // Its sandbox lets a provider write its data directory and nothing
        // else, so its temporary files go in there too.
        let tmp_dir = data_dir.join("tmp");
        crate::paths::ensure_private_dir(&tmp_dir).map_err(|e| {
            CallError::internal(format!(
                "cannot prepare the provider's data directory: {e:#}"
            ))
        })?;
        let bootstrap = Bootstrap {
            data_dir: data_dir.display().to_string(),
            socket: self.settings.provider_socket.display().to_string(),
            token: token.clone(),
            host_id: String::new(),
            provider_key: id.0.clone(),
            link_name: id.1.clone(),
            contract_id,
            config_json,
        };
        let mut stdin = Vec::new();
        FrameWriter::<_, Bootstrap>::new(&mut stdin)
            .send(&bootstrap)
            .await
            .map_err(|e| CallError::internal(e.to_string()))?;
        self.tokens.lock().insert(token, (id.clone(), instance));
        let env = vec![
            ("PATH".to_string(), PROVIDER_PATH.to_string()),
            ("TMPDIR".to_string(), tmp_dir.display().to_string()),
            (
                "RUST_LOG".to_string(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        let launcher = self.launcher_conn(READY_TIMEOUT).await?;
        let pid = launcher
            .request(
                LauncherRequest::Launch(LaunchSpec {
                    instance,
                    provider_key: id.0.clone(),
                    link_name: id.1.clone(),
                    binary: binary.display().to_string(),
                    binary_sha256,
                    data_dir: data_dir.display().to_string(),
                    env,
                    stdin: Bytes::from(stdin),
                }),
                READY_TIMEOUT,
            )
            .await?;
        if let Some(record) = self.providers.lock().get_mut(id) {
            if record.instance == instance {
                record.pid = Some(pid);
            }
        }
        Ok(())
    }

    pub(crate) async fn relaunch(self: Arc<Self>, id: ProviderId) {
        if let Err(e) = self.launch(&id).await {
            tracing::warn!(provider = %id.0, "relaunch failed: {e}");
            let instance = self.providers.lock().get(&id).map(|r| r.instance);
            if let Some(instance) = instance {
                self.on_exit(instance, 0, Exit::Unknown);
            }
        }
    }

    /// Forgets a provider, then asks it to shut down and has the launcher end
    /// its process group.
    async fn remove_and_stop(&self, id: &ProviderId) {
        let Some(record) = self.providers.lock().remove(id) else {
            return;
        };
        if let Some(conn) = &record.conn {
            self.shut_down_in_order(record.instance, conn).await;
        }
        if let Ok(launcher) = self.launcher_conn(Duration::from_millis(100)).await {
            if record.pid.is_some() {
                let _ = launcher
                    .request(
                        LauncherRequest::Stop {
                            instance: record.instance,
                            grace_ms: STOP_GRACE.as_millis() as u64,
                        },
                        STOP_GRACE + Duration::from_secs(3),
                    )
                    .await;
            }
        }
        if let Some(conn) = record.conn {
            conn.calls
                .fail_all(CallError::unavailable("the provider was stopped"));
        }
    }

    /// Sends a provider its Shutdown and waits, at most [`SHUTDOWN_WAIT`], for
    /// the launcher to report its exit. A closed channel is not enough: a
    /// provider closes it and then winds down (an HTTP server drains its
    /// connections), and the launcher's stop would signal it mid-way.
    async fn shut_down_in_order(&self, instance: InstanceId, conn: &ProviderConn) {
        let (exited, exit_reported) = oneshot::channel();
        self.exit_waiters
            .lock()
            .entry(instance)
            .or_default()
            .push(exited);
        if conn.tx.send_now(ToProvider::Shutdown).is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, exit_reported).await;
        } else {
            drop(exit_reported);
        }
        // Our receiver is gone now, so our sender reads as closed; forget it
        // (and any left by a stop that was dropped mid-wait).
        let mut waiters = self.exit_waiters.lock();
        if let Some(waiting) = waiters.get_mut(&instance) {
            waiting.retain(|w| !w.is_closed());
            if waiting.is_empty() {
                waiters.remove(&instance);
            }
        }
    }

    /// Every provider gets its shutdown message first, then its group ends.
    pub(crate) async fn stop_all(&self, launcher: &LauncherConn) {
        let records: Vec<(InstanceId, Option<Arc<ProviderConn>>)> = {
            let mut providers = self.providers.lock();
            providers
                .values_mut()
                .map(|r| {
                    r.state = ProcessState::Stopping;
                    (r.instance, r.conn.clone())
                })
                .collect()
        };
        // Every provider gets its Shutdown at once and a moment to exit on its own.
        futures::future::join_all(
            records
                .iter()
                .filter_map(|(instance, conn)| Some((*instance, conn.as_ref()?)))
                .map(|(instance, conn)| self.shut_down_in_order(instance, conn)),
        )
        .await;
        let stops = records.iter().map(|(instance, _)| {
            launcher.request(
                LauncherRequest::Stop {
                    instance: *instance,
                    grace_ms: STOP_GRACE.as_millis() as u64,
                },
                STOP_GRACE + Duration::from_secs(3),
            )
        });
        futures::future::join_all(stops).await;
        self.providers.lock().clear();
    }

    /// The launcher reaped a provider.
    pub(crate) fn on_exit(self: Arc<Self>, instance: InstanceId, pid: u32, exit: Exit) {
        for stop in self
            .exit_waiters
            .lock()
            .remove(&instance)
            .unwrap_or_default()
        {
            let _ = stop.send(());
        }
        let mut providers = self.providers.lock();
        let Some((id, record)) = providers.iter_mut().find(|(_, r)| r.instance == instance) else {
            return; // a planned stop: already forgotten
        };
        let id = id.clone();
        if record.state == ProcessState::Stopping {
            return;
        }
        tracing::warn!(provider = %id.0, link_name = %id.1, pid, "provider {exit}");
        if let Some(conn) = record.conn.take() {
            conn.calls.fail_all(CallError::provider_fault(format!(
                "provider {} {exit}",
                id.0
            )));
        }
        record.pid = None;
        if let Some(ready) = record.ready.take() {
            let _ = ready.send(Err(CallError::provider_fault(format!(
                "it {exit} before it was ready"
            ))));
            return;
        }
        let (code, signal) = match exit {
            Exit::Code(code) => (Some(code), None),
            Exit::Signal(signal) => (None, Some(signal)),
            Exit::Unknown => (None, None),
        };
        self.events.publish(
            "provider_exited",
            serde_json::json!({"public_key": id.0, "link_name": id.1, "pid": pid, "code": code, "signal": signal}),
        );
        let delay = match record.supervisor.exited(record.launched.elapsed()) {
            Verdict::Restart(delay) => delay,
            Verdict::GiveUp => {
                let why = format!("more than {}", record.supervisor.describe());
                record.state = ProcessState::Failed;
                record.health = format!("failed: it {exit}; {why}");
                tracing::error!(provider = %id.0, "provider failed: {why}");
                self.events.publish(
                    "provider_failed",
                    serde_json::json!({"public_key": id.0, "link_name": id.1, "reason": record.health}),
                );
                return;
            }
        };
        record.restarts += 1;
        record.state = ProcessState::Restarting;
        drop(providers);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let still = this
                .providers
                .lock()
                .get(&id)
                .is_some_and(|r| r.state == ProcessState::Restarting && r.instance == instance);
            if still {
                this.relaunch(id).await;
            }
        });
    }

    /// The key of the provider whose current instance is `instance`.
    pub(crate) fn key_of(&self, instance: InstanceId) -> Option<String> {
        self.providers
            .lock()
            .iter()
            .find(|(_, r)| r.instance == instance)
            .map(|((key, _), _)| key.clone())
    }
}
