//! The provider supervisor: the `provider-launcher` process, each provider
//! launched through it, the socket providers connect to, and calls to and
//! from providers.
//!
//! A provider is identified by (provider key, link name): one running
//! instance each per host. Each launch gets a fresh instance id and a secret
//! token, handed to the provider on its stdin; only a connection presenting
//! that token becomes that provider's channel.
//!
//! The supervisor knows nothing of the host above it: links, routing and
//! the actors live there. It reports up through the [`ProviderOwner`] it is
//! given: the links a provider starts with, a provider's calls to actors,
//! and that a provider is ready.
//!
//! Its jobs, a file each: [`launcher`] (the launcher process and its
//! channel), [`lifecycle`] (starting, stopping and restarting providers),
//! [`archives`] (verified archives, cached by file), [`socket`] (the
//! provider socket and each provider's channel) and [`health`].

mod archives;
mod health;
mod launcher;
mod lifecycle;
mod socket;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use wire::calls::CallTable;
use wire::outbox::Outbox;
use wire::{
    control::{ProcessSummary, ProviderSummary},
    launcher::InstanceId,
    provider::{Link, ToProvider},
    Bytes, CallError, CallResult,
};

use crate::{
    child,
    events::Events,
    supervise::{self, FirstReady, StatusCell},
};

use self::{launcher::LauncherConn, lifecycle::ProviderRecord};

/// (provider key, link name)
pub type ProviderId = (String, String);

/// A provider has this long after its launch to connect and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running provider that can be given a direct channel to the worker.
pub struct DataPathTarget {
    pub key: String,
    pub link_name: String,
    pub contract_id: String,
    pub tx: Outbox<ToProvider>,
}

/// A provider calls an actor.
#[derive(Debug)]
pub struct ProviderCall {
    pub provider_id: String,
    pub link_name: String,
    pub contract_id: String,
    pub actor: String,
    pub operation: String,
    pub payload: Bytes,
}

/// What the provider supervisor needs from whoever owns it.
pub trait ProviderOwner: Send + Sync + 'static {
    /// The links that name this provider instance, for its start.
    fn links_for(&self, provider_id: &str, link_name: &str) -> Vec<Link>;

    /// Answers a provider's call to an actor.
    fn provider_call(&self, call: ProviderCall) -> BoxFuture<'_, CallResult<Bytes>>;

    /// The provider is ready and serving (first start or restart).
    fn provider_ready(&self, target: DataPathTarget);
}

/// A provider's channel, while it is connected.
pub(crate) struct ProviderConn {
    tx: Outbox<ToProvider>,
    calls: CallTable<Bytes>,
    health: CallTable<(bool, String)>,
}

/// Where the provider supervisor's processes, sockets and files are, and its policy.
pub struct ProviderSettings {
    pub launcher_binary: PathBuf,
    pub launcher_socket: PathBuf,
    pub provider_socket: PathBuf,
    /// Extracted provider binaries, by hash.
    pub cache_dir: PathBuf,
    /// Each provider's persistent data directory goes below this.
    pub data_dir: PathBuf,
    pub health_interval: Duration,
    pub allowed_issuers: Vec<String>,
}

pub struct ProviderSupervisor {
    settings: ProviderSettings,
    launcher: watch::Sender<Option<Arc<LauncherConn>>>,
    launcher_status: StatusCell,
    providers: Mutex<BTreeMap<ProviderId, ProviderRecord>>,
    /// Outstanding launch tokens: token -> (provider, instance).
    tokens: Mutex<HashMap<String, (ProviderId, InstanceId)>>,
    /// Stops waiting for the launcher to report that a provider they asked
    /// to shut down has exited; a list, because two stops of one instance
    /// (a stop-provider racing stop-host) each wait.
    exit_waiters: Mutex<HashMap<InstanceId, Vec<oneshot::Sender<()>>>>,
    archives: archives::Verified,
    next_instance: AtomicU64,
    events: Arc<Events>,
}

impl ProviderSupervisor {
    pub fn new(settings: ProviderSettings, events: Arc<Events>) -> Self {
        Self {
            settings,
            events,
            launcher: watch::Sender::new(None),
            launcher_status: StatusCell::default(),
            providers: Mutex::new(BTreeMap::new()),
            tokens: Mutex::new(HashMap::new()),
            exit_waiters: Mutex::new(HashMap::new()),
            archives: archives::Verified::default(),
            next_instance: AtomicU64::new(1),
        }
    }

    /// Runs the launcher until shutdown, restarting it (and every provider,
    /// with its links) whenever it dies; serves the provider socket and
    /// checks providers' health meanwhile.
    pub async fn supervise(
        self: Arc<Self>,
        owner: Arc<dyn ProviderOwner>,
        shutdown: watch::Receiver<bool>,
        first_ready: FirstReady,
    ) {
        let listeners = child::listen(&self.settings.launcher_socket)
            .and_then(|launcher| Ok((launcher, child::listen(&self.settings.provider_socket)?)));
        let (launcher_listener, provider_listener) = match listeners {
            Ok(listeners) => listeners,
            Err(e) => {
                let _ = first_ready.send(Err(e));
                return;
            }
        };
        let acceptor = tokio::spawn(self.clone().accept_providers(provider_listener, owner));
        let health = tokio::spawn(self.clone().health_loop());
        let life = launcher::LauncherLife {
            supervisor: self.clone(),
            listener: launcher_listener,
        };
        supervise::run_supervised(
            &life,
            supervise::LAUNCHER,
            &self.launcher_status,
            &self.events,
            shutdown,
            first_ready,
        )
        .await;
        acceptor.abort();
        health.abort();
        self.launcher.send_replace(None);
        let _ = std::fs::remove_file(&self.settings.launcher_socket);
        let _ = std::fs::remove_file(&self.settings.provider_socket);
    }

    /// An actor calls the provider `provider` (link name `link_name`), which
    /// its link names, within `timeout`.
    pub async fn invoke(
        &self,
        provider: &str,
        link_name: &str,
        actor: &str,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        let conn = {
            let providers = self.providers.lock();
            let record = providers
                .get(&(provider.to_owned(), link_name.to_owned()))
                .ok_or_else(|| {
                    CallError::unavailable(format!(
                        "provider {provider} (link name {link_name}) is not running"
                    ))
                })?;
            record.conn.clone().ok_or_else(|| {
                CallError::unavailable(format!(
                    "provider {provider} (link name {link_name}) is not ready: {}",
                    record.state
                ))
            })?
        };
        wire::check_payload("request", payload.len())?;
        let pending = conn.calls.register()?;
        let id = pending.id();
        conn.tx
            .send_now(ToProvider::Invoke {
                id,
                actor_id: actor.to_owned(),
                operation: operation.to_owned(),
                payload,
            })
            .map_err(|e| e.into_call_error("request"))?;
        let cancel = wire::calls::CancelOnDrop::new(&conn.tx, ToProvider::Cancel { id });
        let result = pending
            .wait_for(&format!("provider {provider}"), timeout)
            .await;
        if !matches!(&result, Err(e) if e.kind == wire::ErrorKind::Timeout) {
            cancel.disarm();
        }
        result.map_err(|e| e.context(format_args!("provider {provider}")))
    }

    /// Sends a running provider a message (a link change); a provider
    /// that is not connected gets every link again when it connects.
    pub fn deliver(&self, provider: &str, link_name: &str, message: ToProvider) {
        let conn = self
            .providers
            .lock()
            .get(&(provider.to_owned(), link_name.to_owned()))
            .and_then(|r| r.conn.clone());
        if let Some(conn) = conn {
            let _ = conn.tx.send_now(message);
        }
    }

    /// Whether this host runs provider `key` under `link_name` (starting,
    /// running or restarting: not failed).
    pub fn runs(&self, key: &str, link_name: &str) -> bool {
        self.providers
            .lock()
            .get(&(key.to_owned(), link_name.to_owned()))
            .is_some_and(|r| r.state != wire::control::ProcessState::Failed)
    }

    /// The contract a provider this host runs (or ran) implements.
    pub fn contract_of(&self, provider: &str) -> Option<String> {
        self.providers
            .lock()
            .iter()
            .find(|((key, _), _)| key == provider)
            .map(|(_, r)| r.contract_id.clone())
    }

    /// Every provider that is running now, to open direct channels for.
    pub fn data_path_targets(&self) -> Vec<DataPathTarget> {
        self.providers
            .lock()
            .iter()
            .filter_map(|(id, record)| {
                let conn = record.conn.as_ref()?;
                Some(DataPathTarget {
                    key: id.0.clone(),
                    link_name: id.1.clone(),
                    contract_id: record.contract_id.clone(),
                    tx: conn.tx.clone(),
                })
            })
            .collect()
    }

    pub fn summaries(&self) -> Vec<ProviderSummary> {
        self.providers
            .lock()
            .iter()
            .map(|((key, link_name), r)| ProviderSummary {
                key: key.clone(),
                name: r.name.clone(),
                link_name: link_name.clone(),
                contract_id: r.contract_id.clone(),
                pid: r.pid,
                state: r.state,
                health: r.health.clone(),
                restarts: r.restarts,
                image_ref: r.image_ref.clone(),
            })
            .collect()
    }

    pub fn launcher_summary(&self) -> ProcessSummary {
        self.launcher_status.summary("provider-launcher")
    }

    /// The launcher's pid while it runs: every provider process (and
    /// anything a provider forked) descends from it.
    pub fn launcher_pid(&self) -> Option<u32> {
        self.launcher_status.get().pid
    }
}
