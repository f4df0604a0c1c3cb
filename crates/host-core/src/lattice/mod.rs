//! Membership of a lattice of hosts over NATS, speaking wasmCloud 0.82's
//! control interface, events and RPC (the protocol itself is the `lattice`
//! crate's; this module is the host's side of it).
//!
//! The lattice sits above the virtual host: it drives the [`Host`] through
//! the same API as the control socket, and the host reaches it only through
//! the [`Remote`](crate::host::remote::Remote) interface the host defines
//! (for calls whose target no part of this host can take) and the
//! [`LinkStore`] it was built with. Its parts: [`store`] (links and claims
//! in `LATTICEDATA_{lattice}`), [`ctl`] (the control interface), [`rpc`]
//! (invocations to and from other hosts), [`publish`] (events and the
//! heartbeat), [`artifacts`] (what `scale` and `lp` references name).
//!
//! A host started without `--nats` never comes here and opens no network
//! connection of its own.

mod artifacts;
mod ctl;
mod describe;
mod publish;
mod rpc;
mod store;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use lattice::ctl::Annotations;
use nkeys::KeyPair;
use parking_lot::{Mutex, RwLock};

use crate::host::{links::LinkStore, Host};

pub use artifacts::FileLoading;

/// Everything `host-core run --nats` was told about the lattice.
#[derive(Debug)]
pub struct LatticeConfig {
    pub nats_url: String,
    pub lattice: String,
    pub js_domain: Option<String>,
    /// Labels given with `--label`; the `hostcore.*` ones are added.
    pub labels: BTreeMap<String, String>,
    /// Signs this host's invocations (`SC...`).
    pub cluster_key: KeyPair,
    /// Cluster keys whose invocations this host accepts (its own included).
    pub cluster_issuers: Vec<String>,
    pub nats_creds: Option<PathBuf>,
    pub file_loading: FileLoading,
    pub heartbeat_interval: Duration,
    /// The host's friendly name (`ping.hosts`, inventory).
    pub friendly_name: String,
}

impl LatticeConfig {
    /// The labels every host has, as wasmCloud's (`hostcore.arch`, ...).
    pub fn with_platform_labels(mut self) -> Self {
        let platform = [
            ("hostcore.arch", std::env::consts::ARCH),
            ("hostcore.os", std::env::consts::OS),
            ("hostcore.osfamily", std::env::consts::FAMILY),
        ];
        for (key, value) in platform {
            self.labels.insert(key.to_owned(), value.to_owned());
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LatticeError {
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("cannot subscribe to {subject}: {message}")]
    Subscribe { subject: String, message: String },
    #[error("the host has joined a lattice already")]
    Joined,
}

/// A connection to the lattice's NATS, made before the host is built (the
/// host's link store lives in it).
pub struct Connection {
    client: async_nats::Client,
    js: jetstream::Context,
    links: Arc<store::NatsLinks>,
}

impl Connection {
    /// Connects to NATS. When the server cannot be reached yet, this
    /// resolves at once and the client keeps trying with backoff; calls to
    /// other hosts fail with "unavailable" until it is connected.
    pub async fn open(config: &LatticeConfig) -> Result<Self, LatticeError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("host-core {}", config.friendly_name))
            .retry_on_initial_connect()
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS: connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS: disconnected; reconnecting")
                    }
                    other => tracing::warn!("NATS: {other}"),
                }
            });
        if let Some(path) = &config.nats_creds {
            options = options.credentials_file(path).await.map_err(|source| {
                LatticeError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let client = options
            .connect(config.nats_url.as_str())
            .await
            .map_err(|e| LatticeError::Connect {
                url: config.nats_url.clone(),
                message: e.to_string(),
            })?;
        let js = match &config.js_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        let links = store::NatsLinks::new(js.clone(), &config.lattice);
        tokio::spawn(links.clone().run());
        Ok(Self { client, js, links })
    }

    /// The link store to build the host with: the lattice's bucket.
    pub fn link_store(&self) -> Box<dyn LinkStore> {
        Box::new(self.links.clone())
    }
}

/// Backoff between reconnects: 0, then doubling from 100 ms up to 5 s.
fn reconnect_delay(attempt: usize) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempt.min(6)).unwrap_or(6);
    Duration::from_millis(100 * 2u64.pow(exp - 1)).min(Duration::from_secs(5))
}

/// What the control interface was told about an actor or provider it
/// started: its reference and annotations (the host itself knows keys).
#[derive(Debug, Clone, Default)]
struct Started {
    image_ref: String,
    annotations: Annotations,
    /// The instance id the inventory shows (one per start).
    instance_id: String,
}

/// What the lattice's tasks share.
struct Member {
    host: Arc<Host>,
    client: async_nats::Client,
    js: jetstream::Context,
    links: Arc<store::NatsLinks>,
    lattice: String,
    host_id: String,
    /// The cluster key's public half: the `issuer` of this host.
    cluster_id: String,
    friendly_name: String,
    labels: RwLock<BTreeMap<String, String>>,
    cluster_issuers: Vec<String>,
    js_domain: Option<String>,
    heartbeat_interval: Duration,
    started: Instant,
    artifacts: artifacts::Artifacts,
    /// Actors started through the control interface, by key.
    actors: Mutex<HashMap<String, Started>>,
    /// Providers started through the control interface, by (key, link name).
    providers: Mutex<HashMap<(String, String), Started>>,
}

/// Joins the lattice: the host takes calls from and makes calls to other
/// hosts, answers the control interface and publishes its events, until
/// it shuts down (then it says `host_stopped`).
pub async fn join(
    host: Arc<Host>,
    connection: Connection,
    config: LatticeConfig,
) -> Result<tokio::task::JoinHandle<()>, LatticeError> {
    let host_id = host.key.public_key();
    let cluster_id = config.cluster_key.public_key();
    let client_side = rpc::RpcClient::new(
        connection.client.clone(),
        connection.js.clone(),
        &config.lattice,
        host_id.clone(),
        config.cluster_key,
        connection.links.clone(),
    );
    host.set_remote(Arc::new(client_side))
        .map_err(|_| LatticeError::Joined)?;
    let member = Arc::new(Member {
        artifacts: artifacts::Artifacts::new(config.file_loading),
        host,
        cluster_id,
        client: connection.client,
        js: connection.js,
        links: connection.links,
        lattice: config.lattice,
        host_id,
        friendly_name: config.friendly_name,
        labels: RwLock::new(config.labels),
        cluster_issuers: config.cluster_issuers,
        js_domain: config.js_domain,
        heartbeat_interval: config.heartbeat_interval,
        started: Instant::now(),
        actors: Mutex::new(HashMap::new()),
        providers: Mutex::new(HashMap::new()),
    });
    let ctl = ctl::serve(member.clone()).await?;
    let rpc = rpc::serve(member.clone());
    let events = publish::run(member.clone());
    tracing::info!(lattice = %member.lattice, host = %member.host_id, "joined the lattice");
    Ok(tokio::spawn(async move {
        let mut shutdown = member.host.shutdown_signal();
        crate::host::stopped(&mut shutdown).await;
        // Subscriptions go first, so nothing reaches this host once the
        // lattice has heard it stop.
        for task in [ctl, rpc, events] {
            task.abort();
            let _ = task.await;
        }
        publish::host_stopped(&member).await;
    }))
}
