//! `host-core run`: start-up (state directory, lock, children, manifest,
//! control socket), signals, systemd notification, and shutdown.

use std::{os::fd::AsRawFd, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Context, Result};

use host_core::{
    control,
    host::{artifacts::Artifacts, Host, HostConfig, HostPaths},
    keys::{self, KeyKind},
    lattice::{self, FileLoading, LatticeConfig},
    manifest,
    paths::{self, StatePaths},
};

use super::args::{LatticeArgs, RunArgs};

/// How long a stopping host waits to say `host_stopped` to the lattice.
const LATTICE_GOODBYE: Duration = Duration::from_secs(2);

/// What `--nats` and the flags beside it ask for, checked before anything
/// starts.
fn lattice_config(
    args: &LatticeArgs,
    url: &str,
    paths: &StatePaths,
    host_key: &nkeys::KeyPair,
) -> Result<LatticeConfig> {
    if !(url.starts_with("nats://") || url.starts_with("tls://") || !url.contains("://")) {
        bail!("--nats `{url}` is not a NATS URL (nats://host:port)");
    }
    if args.lattice.is_empty()
        || args
            .lattice
            .contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
    {
        bail!(
            "--lattice `{}` must be a non-empty name without spaces, `.`, `*` or `>`",
            args.lattice
        );
    }
    let cluster_key = match &args.cluster_seed {
        Some(seed) => {
            let key = nkeys::KeyPair::from_seed(seed.trim())
                .map_err(|e| anyhow!("--cluster-seed is not an nkey seed: {e}"))?;
            if !key.public_key().starts_with('C') {
                bail!(
                    "--cluster-seed must be a cluster seed (SC...), whose public key starts with C"
                );
            }
            key
        }
        None => keys::load_or_create(&paths.root, "cluster", KeyKind::Cluster)?,
    };
    let mut cluster_issuers = vec![cluster_key.public_key()];
    for issuer in &args.cluster_issuers {
        let issuer = issuer.trim();
        if !issuer.starts_with('C') || nkeys::KeyPair::from_public_key(issuer).is_err() {
            bail!("--cluster-issuers `{issuer}` is not a cluster public key (C...)");
        }
        if !cluster_issuers.iter().any(|i| i == issuer) {
            cluster_issuers.push(issuer.to_owned());
        }
    }
    let mut labels = std::collections::BTreeMap::new();
    for label in &args.labels {
        let Some((key, value)) = label.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            bail!("--label `{label}` is not KEY=VALUE");
        };
        if key.starts_with("hostcore.") {
            bail!("--label `{label}`: the hostcore.* labels are the host's own");
        }
        labels.insert(key.trim().to_owned(), value.to_owned());
    }
    if let Some(path) = &args.nats_creds {
        if !path.is_file() {
            bail!("--nats-creds {}: no such file", path.display());
        }
    }
    let public = host_key.public_key();
    Ok(LatticeConfig {
        nats_url: url.to_owned(),
        lattice: args.lattice.clone(),
        js_domain: args.js_domain.clone(),
        labels,
        cluster_key,
        cluster_issuers,
        nats_creds: args.nats_creds.clone(),
        file_loading: FileLoading {
            allowed: args.allow_file_load,
        },
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        friendly_name: format!("host-core-{}", public[public.len() - 6..].to_lowercase()),
    }
    .with_platform_labels())
}

pub(crate) fn run_host(args: RunArgs) -> Result<()> {
    wire::peer::hide_from_same_user().context("cannot make the host undumpable")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .with_context(|| format!("bad --log-level `{}`", args.log_level))?,
        )
        .with_writer(std::io::stderr)
        .init();
    // A watchdog period systemd gave us that we cannot keep up with is an
    // error now, before anything starts.
    let watchdog = watchdog_period()?;
    for issuer in &args.allowed_issuers {
        if !issuer.starts_with('A') || nkeys::KeyPair::from_public_key(issuer).is_err() {
            bail!("--allowed-issuer `{issuer}` is not an account public key");
        }
    }
    let state = paths::state_dir(args.state_dir.clone())?;
    let run = paths::runtime_dir(args.runtime_dir.clone(), &state);
    let paths = StatePaths::new(state, run);
    paths::ensure_private_dir(&paths.root)?;
    paths::ensure_private_dir(&paths.run)?;
    let _lock = lock_state_dir(&paths)?;
    let host_paths = HostPaths {
        runtime_binary: sibling_binary("actor-runtime", "WASMHOST_ACTOR_RUNTIME")?,
        launcher_binary: sibling_binary("provider-launcher", "WASMHOST_PROVIDER_LAUNCHER")?,
        worker_socket: paths.worker_socket(),
        launcher_socket: paths.launcher_socket(),
        provider_socket: paths.provider_socket(),
        compile_cache: Some(paths.compile_cache()),
        provider_cache: paths.provider_cache(),
        provider_data: paths.root.join("data"),
    };
    let config = HostConfig {
        allowed_issuers: args.allowed_issuers,
        invocation_timeout: Duration::from_millis(args.invocation_timeout_ms),
        max_memory_bytes: args.max_memory_mb * 1024 * 1024,
        max_instances: args.max_instances,
        max_queued_calls: args.max_queued_calls,
        health_interval: Duration::from_millis(args.health_interval_ms),
    };
    let rt = super::tokio_runtime()?;
    let artifacts = Arc::new(Artifacts::new(super::registry::host_client(
        &args.oci, &paths,
    )?));
    // A bad manifest stops us before anything starts.
    let manifest = match &args.manifest {
        Some(path) => {
            let pull = |reference: &str, kind| rt.block_on(artifacts.pull(reference, kind));
            Some(manifest::load(
                path,
                &config.allowed_issuers,
                &paths.provider_cache(),
                &pull,
            )?)
        }
        None => None,
    };
    // The host keeps its identity across restarts.
    let host_key = match &args.lattice.host_seed {
        Some(seed) => {
            let key = nkeys::KeyPair::from_seed(seed.trim())
                .map_err(|e| anyhow!("--host-seed is not an nkey seed: {e}"))?;
            if !key.public_key().starts_with('N') {
                bail!("--host-seed must be a server seed (SN...), whose public key starts with N");
            }
            key
        }
        None => keys::load_or_create(&paths.root, "host", KeyKind::Server)?,
    };
    // Only with --nats: without it the host opens no network connection.
    let lattice_config = match &args.lattice.nats {
        Some(url) => Some(lattice_config(&args.lattice, url, &paths, &host_key)?),
        None => None,
    };
    rt.block_on(async move {
        let connection = match &lattice_config {
            Some(config) => Some(lattice::Connection::open(config).await?),
            None => None,
        };
        let links: Box<dyn host_core::host::links::LinkStore> = match &connection {
            Some(connection) => connection.link_store(),
            None => Box::new(host_core::host::links::MemoryLinks::default()),
        };
        let host = Host::with_parts(config, host_paths, host_key, links);
        host.set_artifacts(artifacts);
        let supervisor = host.start().await?;
        let member = match (connection, lattice_config) {
            (Some(connection), Some(config)) => {
                match lattice::join(host.clone(), connection, config).await {
                    Ok(member) => Some(member),
                    Err(e) => {
                        host.request_shutdown();
                        let _ = supervisor.await;
                        return Err(e.into());
                    }
                }
            }
            _ => None,
        };
        if let Some(manifest) = manifest {
            let summary = manifest.summary();
            if let Err(e) = manifest.apply(&host).await {
                host.request_shutdown();
                let _ = supervisor.await;
                return Err(e);
            }
            tracing::info!("manifest applied: {summary}");
        }
        let control_path = paths.control_socket();
        let control = tokio::spawn({
            let host = host.clone();
            async move { control::serve(&control_path, host).await }
        });
        tracing::info!(
            host = %host.key.public_key(),
            state_dir = %paths.root.display(),
            "host ready"
        );
        host.events.publish(
            "host_started",
            serde_json::json!({"host_id": host.key.public_key(), "state_dir": paths.root.display().to_string()}),
        );
        notify_systemd(&host, watchdog);
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut shutdown = host.shutdown_signal();
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
            _ = host_core::host::stopped(&mut shutdown) => tracing::info!("stop requested: stopping"),
        }
        host.events.publish("host_stopped", serde_json::json!({"host_id": host.key.public_key()}));
        host.request_shutdown();
        if let Some(member) = member {
            // It says host_stopped to the lattice, then lets go.
            let _ = tokio::time::timeout(LATTICE_GOODBYE, member).await;
        }
        supervisor.await?;
        control.await??;
        tracing::info!("host stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Under systemd (`Type=notify`): READY=1 now that the manifest is applied,
/// then WATCHDOG=1 pings at half the watchdog interval while the host's
/// children are up. Outside systemd this does nothing.
fn notify_systemd(host: &Arc<Host>, watchdog: Option<Duration>) {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!("sd_notify: {e}");
    }
    if let Some(period) = watchdog {
        let host = host.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                if host.is_healthy() {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
        });
    }
}

/// The shortest watchdog timeout the host can keep fed (it pings at half).
const MIN_WATCHDOG: Duration = Duration::from_millis(20);

/// Half the watchdog timeout systemd set (`WATCHDOG_USEC`), if it set one.
fn watchdog_period() -> Result<Option<Duration>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return Ok(None);
    }
    let timeout = Duration::from_micros(usec);
    if timeout < MIN_WATCHDOG {
        bail!(
            "the watchdog timeout WATCHDOG_USEC={usec} is shorter than {} ms: the host cannot ping that often (raise WatchdogSec=)",
            MIN_WATCHDOG.as_millis()
        );
    }
    Ok(Some(timeout / 2))
}

/// One host per state directory: a second one would take over the sockets.
fn lock_state_dir(paths: &StatePaths) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(paths.lock_file())
        .with_context(|| format!("cannot open {}", paths.lock_file().display()))?;
    let mut lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, _)| {
            let other = std::fs::read_to_string(paths.lock_file()).unwrap_or_default();
            anyhow!(
                "another host is already running with runtime dir {} (pid {})",
                paths.run.display(),
                other.trim()
            )
        })?;
    lock.set_len(0)?;
    write!(lock, "{}", std::process::id())?;
    let _ = lock.as_raw_fd();
    Ok(lock)
}

/// A binary installed next to this one, unless the environment names another.
fn sibling_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing (build it with `cargo build --workspace`, or set {env})",
            path.display()
        );
    }
    Ok(path)
}
